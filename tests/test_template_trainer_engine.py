"""TemplateConsistencyTrainer's wiring beyond Eq. 8 (tests/test_wiring_3d.py): which channels have templates and
the Algorithm 1 settings reach the copies, the plain supervised step without templates, the paper's defaults, the
non-finite stop. Written from mutmut's survivors (docs/TESTING.md)."""

from __future__ import annotations

import inspect
import logging

import pytest
import torch
import torch.nn as nn

import common.engines.template_trainer as tt
from common.engines.template_trainer import TemplateConsistencyTrainer
from common.networks.templates import ModalityTemplates


class _Linear3D(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(2.0))

    def forward(self, x, return_features: bool = False):
        out = self.w * x
        return (out, 3 * out.mean(dim=(2, 3, 4))) if return_features else out


def _trainer(net, templates=None, **kwargs):
    return TemplateConsistencyTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=[{"image": torch.ones(2, 2, 2, 2, 2), "label": torch.zeros(2, 2, 2, 2, 2)}],
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01),
        loss_function=nn.MSELoss(),
        templates=templates,
        modalities=["t1", "t2"],
        decollate=False,
        **kwargs,
    )


def test_the_papers_defaults():
    sig = inspect.signature(TemplateConsistencyTrainer.__init__).parameters
    assert sig["lambda_cons"].default == 0.1 and sig["cube"].default == 8 and sig["mask_ratio"].default == 0.875
    assert sig["map_key"].default == "canvas_map"


@pytest.mark.parametrize("settings", [{}, {"cube": 4, "mask_ratio": 0.5}])
def test_template_channels_and_algorithm_1_settings_reach_the_copies(monkeypatch, settings):
    seen = {}

    def spy(x, templates, available, cube, mask_ratio):
        seen.update(available=available, cube=cube, mask_ratio=mask_ratio, templates=templates.shape)
        return x, x

    monkeypatch.setattr(tt, "template_copies", spy)
    templates = ModalityTemplates(["t1", "t2"], (2, 2, 2)).requires_grad_(False)  # in channel order
    trainer = _trainer(_Linear3D(), templates, template_modalities=["t2"], **settings)
    trainer.run()
    assert seen["available"].dtype == torch.bool and seen["available"].tolist() == [False, True]  # only t2 has one
    expected = {"cube": 8, "mask_ratio": 0.875, **settings}  # Algorithm 1's defaults
    assert seen["cube"] == expected["cube"] and seen["mask_ratio"] == expected["mask_ratio"]
    assert seen["templates"] == (2, 2, 2, 2, 2)


def test_without_templates_it_is_a_plain_supervised_step(caplog):
    net = _Linear3D()
    with caplog.at_level(logging.INFO):
        trainer = _trainer(net)
    assert [r.getMessage() for r in caplog.records if r.name == tt.__name__] == [
        "template augmentation off: plain supervised fine-tuning"
    ]
    trainer.run()
    # loss = mean((w x - 0)^2) = w^2 = 4; d/dw = 2 w = 4; SGD: 2 - 0.01 * 4
    assert trainer.state.output["loss"].item() == pytest.approx(4.0)
    assert net.w.item() == pytest.approx(2.0 - 0.04) and "loss_cons" not in trainer.state.output


def test_a_non_finite_loss_stops_naming_both_terms(monkeypatch):
    monkeypatch.setattr(tt, "template_copies", lambda x, *a, **k: (x * float("nan"), x))
    trainer = _trainer(_Linear3D(), ModalityTemplates(["t1", "t2"], (2, 2, 2)), template_modalities=["t1", "t2"])
    with pytest.raises(FloatingPointError) as err:
        trainer.run()
    assert str(err.value) == "non-finite loss at epoch 1, iteration 1: supervised nan, consistency nan"


def test_positional_arguments_reach_supervised_trainer():
    net = _Linear3D()
    data = [{"image": torch.ones(1, 2, 2, 2, 2), "label": torch.zeros(1, 2, 2, 2, 2)}]
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    trainer = TemplateConsistencyTrainer("cpu", 2, data, net, opt, nn.MSELoss(), decollate=False)
    trainer.run()
    assert trainer.state.max_epochs == 2 and trainer.state.iteration == 2


def test_a_prepare_batch_with_extra_network_inputs_still_gives_image_and_label():
    # MONAI's prepare_batch may return (image, label, args, kwargs): the template step reads the first two
    def prepare(batch, device=None, non_blocking=False, **kwargs):
        return batch["image"], batch["label"], (), {}

    net = _Linear3D()
    templates = ModalityTemplates(["t1", "t2"], (2, 2, 2)).requires_grad_(False)
    trainer = _trainer(net, templates, template_modalities=["t1"], prepare_batch=prepare)
    trainer.run()
    assert trainer.state.iteration == 1 and torch.isfinite(trainer.state.output["loss"])


def test_the_cuda_amp_path_autocasts_and_uses_the_grad_scaler(monkeypatch):
    """With ``amp`` MONAI gives the trainer a GradScaler (CUDA only); the step must autocast with the bundle's
    ``amp_kwargs`` and go through the scaler. On this CPU machine both are stood in for by recorders."""
    calls = []

    class _Scaler:
        def scale(self, loss):
            calls.append("scale")
            return loss

        def step(self, optimizer):
            calls.append("step")
            optimizer.step()

        def update(self):
            calls.append("update")

    class _Autocast:
        def __init__(self, device_type, **kwargs):
            calls.append(("autocast", device_type, kwargs))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    net = _Linear3D()
    templates = ModalityTemplates(["t1", "t2"], (2, 2, 2)).requires_grad_(False)
    trainer = _trainer(net, templates, template_modalities=["t1", "t2"], amp=True, amp_kwargs={"dtype": torch.bfloat16})
    monkeypatch.setattr(torch.cuda.amp, "GradScaler", _Scaler)  # MONAI makes the scaler at run()
    monkeypatch.setattr(tt.torch, "autocast", _Autocast)
    trainer.run()
    assert calls == [("autocast", "cuda", {"dtype": torch.bfloat16}), "scale", "step", "update"]
    assert net.w.item() != 2.0  # the scaler's step is the optimiser's step
    # without amp: no autocast, no scaler
    calls.clear()
    _trainer(_Linear3D(), templates, template_modalities=["t1", "t2"]).run()
    assert calls == []
