"""Wiring of the 3D methods: which tensor feeds which branch, and that every configured weight and ratio is used.

The equations have hand-computed tests of their own; these tests fail when the right equation is fed the wrong
tensor (the decoder reading the unmasked view, Barlow Twins comparing a view with itself, shifted PBT taps,
swapped CMR / MD fillers, the discriminator's real and fake inputs swapped), when a trainer ignores a loss weight
(``loss_weights``, ``lambda_cons``), or when a bundle's configured ratio, cube size or temperature is not what the
network uses.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import LinearDiscriminator as _LinearD
from monai.bundle import ConfigParser
from monai.engines.utils import IterationEvents

from common.engines.template_trainer import TemplateConsistencyTrainer
from common.engines.trainer import SelfSupervisedTrainer
from common.losses.barlow import barlow_twins_loss
from common.masking.hybrid import apply_mask
from common.networks.brainmvp import BrainMVP, build_backbone
from common.networks.m2mae import m2mae_vit_tiny
from common.networks.templates import ModalityTemplates, translation_map


@pytest.fixture(scope="module")
def m2mae():
    torch.manual_seed(0)
    return m2mae_vit_tiny(in_channels=4, img_size=32).eval()


def _mask(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 4, 8, generator=g) < 0.5


# ---------------------------------------------------------------- M2-MAE: which view feeds what


def test_m2mae_decoder_reads_the_masked_view(m2mae):
    x, mask = torch.randn(2, 4, 32, 32, 32), _mask()
    out = m2mae(x, mask=mask)
    x_m = apply_mask(x, mask, (16, 16, 16), m2mae.mask_token)
    assert torch.equal(out["masked"], x_m)
    tokens_m, _ = m2mae.forward_encoder(x_m)
    tokens, _ = m2mae.forward_encoder(x)
    assert torch.allclose(out["pred"], m2mae.forward_decoder(tokens_m), atol=1e-6)
    assert not torch.allclose(out["pred"], m2mae.forward_decoder(tokens), atol=1e-3)


def test_m2mae_pbt_compares_the_original_and_masked_views_at_blocks_3_6_9_12(m2mae):
    x, mask = torch.randn(2, 4, 32, 32, 32), _mask(1)
    out = m2mae(x, mask=mask)
    _, hidden = m2mae.vit(x)
    _, hidden_m = m2mae.vit(out["masked"])

    def pbt(levels_a, levels_b):
        return sum(
            barlow_twins_loss(a.reshape(-1, 48), b.reshape(-1, 48), normalize="matrix")
            for a, b in zip(levels_a, levels_b)
        )

    taps = [2, 5, 8, 11]  # 1-based 3, 6, 9, 12
    want = pbt([hidden[i] for i in taps], [hidden_m[i] for i in taps])
    assert out["loss_pbt"].item() == pytest.approx(want.item(), rel=1e-5)
    shifted = pbt([hidden[i + 1 if i < 11 else i] for i in taps], [hidden_m[i + 1 if i < 11 else i] for i in taps])
    with_itself = pbt([hidden[i] for i in taps], [hidden[i] for i in taps])
    assert out["loss_pbt"].item() != pytest.approx(shifted.item(), rel=1e-3)
    assert out["loss_pbt"].item() != pytest.approx(with_itself.item(), rel=1e-3)


def test_m2mae_pbt_normalisation_divides_eq5_by_the_width():
    torch.manual_seed(0)
    nets = {n: m2mae_vit_tiny(in_channels=4, img_size=32, pbt_normalize=n).eval() for n in ("none", "width", "matrix")}
    for net in nets.values():
        net.load_state_dict(nets["none"].state_dict())
    x, mask = torch.randn(2, 4, 32, 32, 32), _mask(2)
    values = {n: net(x, mask=mask)["loss_pbt"].item() for n, net in nets.items()}
    assert values["width"] == pytest.approx(values["none"] / 48, rel=1e-5)
    assert values["matrix"] == pytest.approx(values["none"] / 48**2, rel=1e-5)


def test_m2mae_mask_token_fills_masked_patches_and_learns():
    torch.manual_seed(0)
    net = m2mae_vit_tiny(in_channels=4, img_size=32)
    with torch.no_grad():
        net.mask_token.copy_(torch.arange(4.0).view(4, 1, 1, 1).expand(4, 16, 16, 16) + 7)
    x, mask = torch.randn(2, 4, 32, 32, 32), _mask(3)
    out = net(x, mask=mask)
    b, c, p = mask.nonzero()[0].tolist()
    gd, gh, gw = p // 4, (p // 2) % 2, p % 2
    patch = out["masked"][b, c, gd * 16 : gd * 16 + 16, gh * 16 : gh * 16 + 16, gw * 16 : gw * 16 + 16]
    assert (patch == 7 + c).all()
    (out["loss_mse"] + out["loss_pbt"]).backward()
    assert net.mask_token.grad.abs().sum() > 0
    assert m2mae_vit_tiny(in_channels=4, img_size=32, mask_fill="zero").mask_token is None


# ---------------------------------------------------------------- SelfSupervisedTrainer: weights and the GAN step


class _Terms(nn.Module):
    """A stand-in network with three loss terms of known values: a * 1, a * 2, a * 3 (a a learnable scalar), and
    ``pred`` = a * x for the discriminator."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(1.5))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pred": self.a * x, "loss_one": self.a * 1.0, "loss_two": self.a * 2.0, "loss_three": self.a * 3.0}


def _run_ssl(weights: dict, discriminator: bool = False, grad_norm_interval: int = 0):
    net = _Terms()
    d = _LinearD() if discriminator else None
    x = torch.full((2, 1, 2, 2, 2), 2.0)
    x[1] = 4.0
    trainer = SelfSupervisedTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=[{"image": x}],
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_weights=weights,
        discriminator=d,
        d_optimizer=torch.optim.SGD(d.parameters(), lr=0.1) if d is not None else None,
        grad_norm_interval=grad_norm_interval,
    )
    trainer.run()
    return trainer.state.output, net, d


def test_ssl_trainer_honours_every_loss_weight():
    out, net, _ = _run_ssl({"loss_one": 0.5, "loss_two": 0.0, "loss_three": 2.0})
    # total at a = 1.5: 0.5 * 1.5 + 0 + 2 * 4.5 = 9.75; gradient d/da = 0.5 + 0 + 6 = 6.5; SGD: 1.5 - 0.65
    assert out["loss"] == pytest.approx(9.75) and out["loss_two"] == pytest.approx(3.0)
    assert net.a.item() == pytest.approx(1.5 - 0.1 * 6.5)


def test_ssl_trainer_logs_each_weighted_terms_gradient_norm():
    out, _, _ = _run_ssl({"loss_one": 0.5, "loss_two": 0.0, "loss_three": 2.0}, grad_norm_interval=1)
    assert out["grad_norm_one"] == pytest.approx(0.5) and out["grad_norm_two"] == pytest.approx(0.0)
    assert out["grad_norm_three"] == pytest.approx(6.0)


def test_ssl_trainer_adversarial_terms_by_hand():
    out, net, d = _run_ssl({"loss_one": 0.0, "loss_two": 0.0, "loss_three": 0.0, "loss_adv": 1.0}, discriminator=True)
    # generator step: pred = 1.5 * x, D(pred) = 0.5 * mean = 0.5 * (3, 6) -> logits (1.5, 3)
    # L_adv for the generator (Eq. 8, the part it controls) = log(1 - sigmoid(l)) = -softplus(l), averaged
    assert out["loss_adv"] == pytest.approx(-(F.softplus(torch.tensor(1.5)) + F.softplus(torch.tensor(3.0))).item() / 2)
    # dL/da = mean(-sigmoid(l) * dl/da), dl/da = 0.5 * mean(x) = (1, 2)
    grad_a = -(torch.sigmoid(torch.tensor(1.5)) * 1 + torch.sigmoid(torch.tensor(3.0)) * 2).item() / 2
    a = 1.5 - 0.1 * grad_a
    assert net.a.item() == pytest.approx(a, rel=1e-6)
    # discriminator step on real x (logits 0.5 * (2, 4) = (1, 2)) and the detached fake (logits (1.5, 3)):
    # -log D(x) - log(1 - D(fake)) = softplus(-real) + softplus(fake), each averaged
    real, fake = torch.tensor([1.0, 2.0]), torch.tensor([1.5, 3.0])
    assert out["loss_d"] == pytest.approx((F.softplus(-real).mean() + F.softplus(fake).mean()).item(), rel=1e-6)
    # and D moved to separate them: dLd/dw = mean(-sigmoid(-r) r/w) + mean(sigmoid(f) f/w)
    grad_w = (-(torch.sigmoid(-real) * real / 0.5).mean() + (torch.sigmoid(fake) * fake / 0.5).mean()).item()
    assert d.w.item() == pytest.approx(0.5 - 0.1 * grad_w, rel=1e-6)


# ---------------------------------------------------------------- BrainMVP: fillers, templates, contrastive


def test_brainmvp_cmr_view_is_filled_from_the_other_modality_and_md_view_from_the_template():
    torch.manual_seed(0)
    net = BrainMVP(build_backbone("unet3d", "tiny"), ["t1", "t2"], (16, 16, 16))
    with torch.no_grad():
        net.templates.templates.fill_(7.0)
    image = torch.stack([torch.zeros(2, 16, 16, 16), torch.full((2, 16, 16, 16), 3.0)], 1)  # X_im = 0, X_in = 3
    out = net(image, torch.tensor([[0, 1], [1, 0]]), translation_map(torch.zeros(2, 3)), use_contrastive=False)
    cmr, md = out["masked"], out["masked_md"]
    assert set(cmr.unique().tolist()) == {0.0, 3.0} and set(md.unique().tolist()) == {0.0, 7.0}
    assert (cmr == 3).float().mean().item() == pytest.approx(0.875) and (
        md == 7
    ).float().mean().item() == pytest.approx(0.875)
    assert torch.equal(out["image"], image[:, :1])  # reconstruction target: X_im


def test_brainmvp_reads_the_template_of_x_im_not_x_in():
    net = BrainMVP(build_backbone("unet3d", "tiny"), ["t1", "t2"], (16, 16, 16))
    with torch.no_grad():
        net.templates.templates[0].fill_(5.0)
        net.templates.templates[1].fill_(9.0)
    image = torch.zeros(1, 2, 16, 16, 16)
    out = net(image, torch.tensor([[1, 0]]), translation_map(torch.zeros(1, 3)), use_contrastive=False)
    assert set(out["masked_md"].unique().tolist()) == {0.0, 9.0}


@pytest.mark.parametrize("bundle", ["brainmvp"])
def test_brainmvp_config_values_reach_the_network_and_the_trainer(bundle):
    parser = ConfigParser()
    parser.read_config(f"bundles/{bundle}/configs/train.json")
    parser["template_canvas"] = [32, 32, 32]
    parser["backbone_size"] = "tiny"
    for key, value in {"cube": 4, "mask_ratio": 0.5, "temperature": 0.37, "lambda_md": 0.25, "lambda_cl": 0.75}.items():
        parser[key] = value
    net = parser.get_parsed_content("network_def")
    assert (net.cube, net.mask_ratio, net.temperature) == (4, 0.5, 0.37)
    weights = parser.get_parsed_content("train#trainer#loss_weights")
    assert weights == {"loss_cmr": 1.0, "loss_md": 0.25, "loss_cl": 0.75}
    # and the network draws with them: 4^3 cubes, half of them, the configured temperature in Eq. 4
    out = net(torch.rand(1, 2, 32, 32, 32), torch.tensor([[0, 1]]), translation_map(torch.zeros(1, 3)))
    filled = (out["masked"] != out["image"]).float()
    assert filled.mean().item() == pytest.approx(0.5, abs=0.02)
    blocks = filled[0, 0].reshape(8, 4, 8, 4, 8, 4).permute(0, 2, 4, 1, 3, 5).reshape(512, 64)
    assert ((blocks.mean(1) > 0.9) | (blocks.mean(1) < 0.1)).all()  # whole 4^3 cells, not 8^3


def test_brainmvp_defaults_are_the_papers():
    parser = ConfigParser()
    parser.read_config("bundles/brainmvp/configs/train.json")
    assert (parser["cube"], parser["mask_ratio"]) == (8, 0.875)  # paper 3.1
    assert parser["temperature"] == 0.1  # the collection's choice (public code: 1.0), see the bundle's docs


def test_m2mae_config_values_reach_the_network():
    parser = ConfigParser()
    parser.read_config("bundles/m2mae/configs/train.json")
    overrides = {"roi_size": [32, 32, 32], "hidden_size": 48, "mlp_dim": 96, "num_heads": 4, "position_ratio": 0.25}
    overrides.update({"patch_ratio": 0.5, "pbt_layers": [2, 4], "pbt_normalize": "width", "mask_fill": "zero"})
    for key, value in overrides.items():
        parser[key] = value
    net = parser.get_parsed_content("network_def")
    assert net.mask_kwargs == {"use_modality_mask": True, "position_ratio": 0.25, "patch_ratio": 0.5}
    assert net.pbt_layers == (2, 4) and net.pbt_normalize == "width" and net.mask_token is None
    mask = net(torch.randn(1, 4, 32, 32, 32))["mask"]
    # 1 modality of 4 (8 patches) + 25% of 8 positions in the other 3 (2 x 3) + half of the 3 x 6 left (9) = 23
    assert mask.sum().item() == 8 + 6 + 9


# ---------------------------------------------------------------- template fine-tuning: Eq. 8 by hand


class _Linear3D(nn.Module):
    """out = w * x, deepest feature = 3 w * (x averaged over space): a network whose Eq. 8 is computable by hand
    (the factor 3 keeps a consistency term on the outputs from matching the one on the features)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(2.0))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        out = self.w * x
        return (out, 3 * out.mean(dim=(2, 3, 4))) if return_features else out


@pytest.mark.parametrize("lambda_cons", [None, 3.0])  # None: the default, the paper's 0.1
def test_template_trainer_eq8_by_hand(monkeypatch, lambda_cons):
    # a batch of three equal samples: every mean below is the one-sample value, and the copies are split correctly
    x = torch.ones(3, 2, 2, 2, 2)
    y = torch.zeros(3, 2, 2, 2, 2)
    first = x.clone()
    first[:, 0] = 5.0  # X': channel 0 replaced by its template (value 5)
    second = x.clone()
    second[:, 1] = 9.0  # X'': channel 1 replaced (value 9)
    import common.engines.template_trainer as tt

    monkeypatch.setattr(tt, "template_copies", lambda *a, **k: (first, second))
    net = _Linear3D()
    trainer = TemplateConsistencyTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=[{"image": x, "label": y}],
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01),
        loss_function=nn.MSELoss(),
        templates=ModalityTemplates(["t1", "t2"], (2, 2, 2)),
        template_modalities=["t1", "t2"],
        modalities=["t1", "t2"],
        **({} if lambda_cons is None else {"lambda_cons": lambda_cons}),
        decollate=False,
    )
    seen = {}
    trainer.add_event_handler(IterationEvents.FORWARD_COMPLETED, lambda e: seen.update(pred=e.state.output["pred"]))
    trainer.add_event_handler(IterationEvents.LOSS_COMPLETED, lambda e: seen.update(loss=e.state.output["loss"]))
    trainer.run()
    lambda_cons = 0.1 if lambda_cons is None else lambda_cons
    w = 2.0
    # L_sl(F(X'), Y) = mean((w X')^2) = w^2 (25 + 1) / 2; L_sl(F(X''), Y) = w^2 (1 + 81) / 2
    supervised = w**2 * (26 / 2 + 82 / 2)
    # features: 3 w * channel means, X' -> (15w, 3w), X'' -> (3w, 27w); L_cons = mean((12w)^2, (24w)^2) = 360 w^2
    cons = 360 * w**2
    assert trainer.state.output["loss"].item() == pytest.approx(supervised + lambda_cons * cons)
    assert trainer.state.output["loss_cons"] == pytest.approx(cons)
    grad = 2 * w * (26 / 2 + 82 / 2) + lambda_cons * 720 * w
    assert net.w.item() == pytest.approx(w - 0.01 * grad, rel=1e-6)
    # the output: X's prediction (detached), the input and label, the loss as a tensor
    out = trainer.state.output
    assert torch.allclose(out["pred"], w * first) and not out["pred"].requires_grad
    assert torch.equal(out["image"], x) and torch.equal(out["label"], y) and torch.is_tensor(out["loss"])
    # handlers at FORWARD_COMPLETED / LOSS_COMPLETED see X's prediction and the loss, as in SupervisedTrainer
    assert torch.allclose(seen["pred"], w * first) and seen["loss"].item() == pytest.approx(
        supervised + lambda_cons * cons
    )


def test_template_trainer_reads_each_channels_own_template_through_the_map():
    """The copies are built from the templates of each channel's modality, cut at the crop's canvas place."""
    captured = {}
    import common.engines.template_trainer as tt

    real = tt.template_copies

    def spy(x, templates, *a, **k):
        captured["templates"] = templates
        return real(x, templates, *a, **k)

    t = ModalityTemplates(["t1", "t2"], (6, 6, 6))
    with torch.no_grad():
        t.templates.copy_(torch.arange(2 * 216.0).view(2, 1, 6, 6, 6))
    net = _Linear3D()
    trainer = TemplateConsistencyTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=[
            {
                "image": torch.ones(1, 2, 2, 3, 2),
                "label": torch.zeros(1, 2, 2, 3, 2),
                "canvas_map": translation_map(torch.tensor([[1, 2, 3]])),
            }
        ],
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01),
        loss_function=nn.MSELoss(),
        templates=t.requires_grad_(False),
        template_modalities=["t1", "t2"],
        modalities=["t1", "t2"],
        decollate=False,
    )
    try:
        tt.template_copies = spy
        trainer.run()
    finally:
        tt.template_copies = real
    got = captured["templates"][0]
    assert torch.equal(got[0], t.templates[0, 0, 1:3, 2:5, 3:5]) and torch.equal(
        got[1], t.templates[1, 0, 1:3, 2:5, 3:5]
    )
    assert math.isfinite(trainer.state.output["loss"].item())
