"""BrainMVP downstream: template copies (appendix A), consistency on encoder features (Eq. 7), box tracking."""

import numpy as np
import pytest
import torch

from common.engines.template_trainer import consistency_loss
from common.masking.template_replace import replacement_masks, template_copies
from common.networks.brainmvp import BrainMVP, build_backbone, load_templates


def test_replacement_counts_differ_and_respect_availability():
    avail = torch.tensor([True, False, True, True]).expand(400, 4)
    first, second = replacement_masks(avail, torch.Generator().manual_seed(0))
    assert not (first & ~avail).any() and not (second & ~avail).any()
    assert (first.sum(1) != second.sum(1)).all()
    assert first.sum(1).max() <= 3 and set(first.sum(1).tolist()) == {0, 1, 2, 3}


def test_replacement_masks_by_hand_from_the_generators_draws():
    """m = floor(u0 (k + 1)), n = floor(u1 k) shifted past m; the replaced modalities are the available ones with
    the lowest scores, all from the generator's draws (two per sample, then one per modality)."""
    avail = torch.tensor(
        [[1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0], [1, 1, 0, 1], [0, 1, 1, 1]] * 5, dtype=torch.bool
    )
    b, c = avail.shape
    g = torch.Generator().manual_seed(5)
    u, s = torch.rand(b, 2, generator=g).double().numpy(), torch.rand(b, c, generator=g).numpy()
    first, second = replacement_masks(avail, torch.Generator().manual_seed(5))
    for i in range(b):
        available = np.flatnonzero(avail[i].numpy())
        k = min(len(available), c - 1)  # one modality always stays real
        m = int(u[i, 0] * (k + 1))
        n = int(u[i, 1] * k)
        n = min(n + 1 if n >= m else n, k)
        by_score = available[np.argsort(s[i, available])]
        assert set(np.flatnonzero(first[i].numpy())) == set(by_score[:m]), i
        assert set(np.flatnonzero(second[i].numpy())) == set(by_score[:n]), i


def test_copies_are_made_on_the_inputs_device():
    # the meta device stands in for a GPU on this CPU machine; the availability vector may come from the CPU
    first, second = replacement_masks(torch.ones(3, 4, dtype=torch.bool, device="meta"))
    assert first.device.type == second.device.type == "meta"
    for c in (4, 1):
        x, t = torch.zeros(2, c, 8, 8, 8, device="meta"), torch.ones(1, c, 8, 8, 8, device="meta", dtype=torch.float64)
        for copy in template_copies(x, t, torch.ones(c, dtype=torch.bool), 4, 0.5):
            assert copy.device.type == "meta" and copy.dtype == torch.float32 and copy.shape == x.shape


def test_copies_replace_channels_in_place_never_interleave():
    """Channel c of a copy is the input's channel c or template c, never another channel (public-code defect)."""
    x = torch.stack([torch.full((8, 8, 8), float(c)) for c in range(4)])[None].repeat(16, 1, 1, 1, 1)
    t = torch.stack([torch.full((8, 8, 8), 10.0 + c) for c in range(4)])[None]
    a, b = template_copies(x, t, torch.ones(4, dtype=torch.bool), generator=torch.Generator().manual_seed(1))
    for copy in (a, b):
        values = copy[:, :, 0, 0, 0]
        channel = torch.arange(4).float()
        assert ((values == channel) | (values == channel + 10)).all()
        assert ((values >= 10).sum(1) < 4).all()  # at least one real modality remains
    assert ((a[:, :, 0, 0, 0] >= 10).sum(1) != (b[:, :, 0, 0, 0] >= 10).sum(1)).all()


def test_unimodal_copies_are_cube_masked_from_the_template():
    x, t = torch.zeros(2, 1, 32, 32, 32), torch.ones(1, 1, 32, 32, 32)
    a, b = template_copies(x, t, torch.ones(1, dtype=torch.bool))
    for copy in (a, b):
        assert abs(copy.mean().item() - 0.875) < 0.01
    assert not torch.equal(a, b)


def test_consistency_loss_is_on_features_by_hand():
    f1, f2 = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])
    assert consistency_loss(f1, f2).item() == pytest.approx((1 + 4) / 2)


def test_load_templates_by_modality_name(tmp_path):
    pre = BrainMVP(build_backbone("unet3d", "tiny"), ["flair", "t1", "t1c", "t2"], (8, 8, 8))
    with torch.no_grad():
        pre.templates.templates.copy_(torch.arange(4.0).view(4, 1, 1, 1, 1).expand(4, 1, 8, 8, 8))
    torch.save(pre.state_dict(), tmp_path / "m.pt")
    templates, found = load_templates(str(tmp_path / "m.pt"), ["t1", "t2", "adc"])
    assert found == ["t1", "t2"]
    assert templates.templates[0].unique().item() == 1.0 and templates.templates[1].unique().item() == 3.0
    assert templates.templates[2].abs().sum() == 0 and not templates.templates.requires_grad
    torch.save({"encoder.w": torch.zeros(1)}, tmp_path / "no_templates.pt")
    assert load_templates(str(tmp_path / "no_templates.pt"), ["t1"]) == (None, [])
    assert load_templates(None, ["t1"]) == (None, [])


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
def test_template_trainer_amp_path_matches_fp32_where_autocast_is_off():
    """``amp`` takes the autocast + scaler branch (bf16 on CUDA via ``amp_kwargs``); without CUDA both are off, so
    the step must equal the fp32 one exactly."""
    from monai.losses import DiceCELoss

    from common.engines.template_trainer import TemplateConsistencyTrainer
    from common.networks.templates import ModalityTemplates

    batch = {"image": torch.rand(2, 2, 16, 16, 16), "label": (torch.rand(2, 2, 16, 16, 16) > 0.5).float()}
    weights = []
    for amp in (False, True):
        torch.manual_seed(0)
        net = build_backbone("unet3d", "tiny", in_channels=2, out_channels=2, skip_connections=True)
        templates = ModalityTemplates(["t1", "t2"], (16, 16, 16)).requires_grad_(False)
        trainer = TemplateConsistencyTrainer(
            device=torch.device("cpu"),
            max_epochs=1,
            train_data_loader=[batch],
            network=net,
            optimizer=torch.optim.SGD(net.parameters(), 0.1),
            loss_function=DiceCELoss(sigmoid=True),
            amp=amp,
            amp_kwargs={"dtype": torch.bfloat16},
            templates=templates,
            template_modalities=["t1", "t2"],
            modalities=["t1", "t2"],
        )
        before = torch.cat([p.detach().flatten() for p in net.parameters()])
        trainer.run()
        weights.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
        assert not torch.equal(weights[-1], before)  # a step was taken
    assert torch.equal(weights[0], weights[1])
