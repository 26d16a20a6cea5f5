"""BrainMVP parts: cube masking (Alg. 1), templates, losses Eq. 2-6 by hand, backbones, transforms."""

import math

import pytest
import torch

from common.losses.brainmvp import (
    brainmvp_loss,
    cross_modal_reconstruction_loss,
    distillation_loss,
    info_nce,
    modality_contrastive_loss,
)
from common.masking.cross_modal import cross_modal_mask, cube_mask
from common.networks.brainmvp import BrainMVP, build_backbone
from common.networks.decoders import UpDecoder, linear_patch_head
from common.networks.templates import ModalityTemplates, translation_map
from common.transforms.modality import RandCropWithBoxd, SampleModalityPaird


def test_cube_mask_fraction_whole_cubes_and_per_sample():
    m = cube_mask((96, 96, 96), batch=3, cube=8, ratio=0.875, generator=torch.Generator().manual_seed(0))
    assert m.shape == (3, 1, 96, 96, 96)
    frac = m.float().mean(dim=(1, 2, 3, 4))
    assert torch.all((frac - 0.875).abs() < 0.01)
    cells = m.view(3, 12, 8, 12, 8, 12, 8).permute(0, 1, 3, 5, 2, 4, 6).reshape(3, 1728, 512)
    assert torch.all(cells.all(-1) | ~cells.any(-1))  # every cube is all-masked or all-kept
    assert not torch.equal(m[0], m[1])


def test_cube_mask_handles_edges_not_divisible_by_r():
    m = cube_mask((20, 17, 9), batch=2, cube=8, ratio=0.5)
    assert m.shape == (2, 1, 20, 17, 9)
    cells = 3 * 3 * 2
    # whole cells on the ceil grid, cropped: the count of masked cells is exact
    grid = m[:, :, ::8, ::8, ::8]
    assert grid.flatten(1).sum(1).tolist() == [round(0.5 * cells)] * 2


def test_cube_mask_is_drawn_on_the_requested_device():
    # the meta device stands in for a GPU on this CPU machine: a mask drawn elsewhere would come back on the CPU
    m = cube_mask((8, 8, 8), 2, 4, 0.5, device="meta")
    assert m.device.type == "meta" and m.shape == (2, 1, 8, 8, 8) and m.dtype == torch.bool


def test_cross_modal_mask_fills_from_the_other_modality_and_keeps_the_rest():
    x_m, x_n = torch.rand(2, 1, 16, 16, 16), torch.rand(2, 1, 16, 16, 16) + 5
    mask = cube_mask((16, 16, 16), 2, 8, 0.5)
    y = cross_modal_mask(x_m, x_n, mask)
    assert torch.equal(y[mask], x_n[mask]) and torch.equal(y[~mask], x_m[~mask])


def test_template_sample_matches_hand_indexing_and_gradients_stay_in_the_box():
    t = ModalityTemplates(["t1", "t2", "flair"], (10, 12, 14))
    with torch.no_grad():
        t.templates.copy_(torch.randn_like(t.templates))
    idx, box = torch.tensor([2, 0]), torch.tensor([[1, 2, 3], [6, 7, 8]])
    crop = t.sample(idx, translation_map(box), (4, 5, 6))
    assert torch.equal(crop[0, 0], t.templates[2, 0, 1:5, 2:7, 3:9])
    assert torch.equal(crop[1, 0], t.templates[0, 0, 6:10, 7:12, 8:14])
    crop.sum().backward()
    grad = t.templates.grad
    assert grad[2, 0, 1:5, 2:7, 3:9].eq(1).all() and grad[0, 0, 6:10, 7:12, 8:14].eq(1).all()
    assert grad.sum() == 2 * 4 * 5 * 6 and grad[1].abs().sum() == 0
    # a box reaching past the canvas (low side and high side): the template is 0 there, the image's padding value
    out = t.sample(idx, translation_map(torch.tensor([[-2, 0, 0], [8, 0, 0]])), (4, 5, 6))
    assert out[0, 0, :2].abs().sum() == 0 and torch.equal(out[0, 0, 2:], t.templates[2, 0, 0:2, 0:5, 0:6])
    assert torch.equal(out[1, 0, :2], t.templates[0, 0, 8:10, 0:5, 0:6]) and out[1, 0, 2:].abs().sum() == 0


def test_template_sample_follows_flips_permutations_and_resizes_by_hand():
    t = ModalityTemplates(["t1"], (4, 5, 6))
    with torch.no_grad():
        t.templates.copy_(torch.arange(120.0).reshape(1, 1, 4, 5, 6))
    flip_permute = torch.tensor([[[0, 0, -1, 3], [1, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 1]]], dtype=torch.float64)
    got = t.sample(torch.tensor([0]), flip_permute, (5, 2, 4))[0, 0]
    # crop voxel (i, j, k) -> canvas (3 - k, i, j + 1): canvas value (3 - k) * 30 + i * 6 + (j + 1)
    i, j, k = torch.meshgrid(torch.arange(5), torch.arange(2), torch.arange(4), indexing="ij")
    assert torch.equal(got, ((3 - k) * 30 + i * 6 + j + 1).float())
    half = torch.diag(torch.tensor([0.5, 1.0, 1.0, 1.0], dtype=torch.float64))[None]
    half[0, 0, 3] = 0.25  # crop voxel i -> canvas 0.5 i + 0.25: a linear blend of two canvas slices
    got = t.sample(torch.tensor([0]), half, (3, 5, 6))[0, 0]
    assert torch.allclose(got[1], 0.25 * t.templates[0, 0, 0] + 0.75 * t.templates[0, 0, 1])
    beyond = half.clone()
    beyond[0, 0, 3] = -1.0  # crop voxel 0 sits a whole canvas voxel before the canvas: padding, 0
    assert t.sample(torch.tensor([0]), beyond, (3, 5, 6))[0, 0, 0].abs().sum() == 0


def test_reconstruction_losses_are_mean_squared_error():
    pred, x = torch.tensor([[1.0, 2.0], [3.0, 5.0]]), torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    assert cross_modal_reconstruction_loss(pred, x).item() == pytest.approx((0 + 1 + 4 + 16) / 4)
    assert distillation_loss(pred, x).item() == pytest.approx(21 / 4)


def test_info_nce_and_symmetric_contrastive_by_hand():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # normalised: [1/sqrt2, 1/sqrt2], [0, 1]
    tau = 0.5
    s = 1 / math.sqrt(2)
    # f -> g logits: row0 [s, 0] / tau, row1 [s, 1] / tau
    l0 = -math.log(math.exp(s / tau) / (math.exp(s / tau) + math.exp(0)))
    l1 = -math.log(math.exp(1 / tau) / (math.exp(s / tau) + math.exp(1 / tau)))
    assert info_nce(f, g, tau).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    # g -> f logits: row0 [s, s] / tau, row1 [0, 1] / tau
    m0 = -math.log(0.5)
    m1 = -math.log(math.exp(1 / tau) / (1 + math.exp(1 / tau)))
    expected = 0.5 * ((l0 + l1) / 2 + (m0 + m1) / 2)
    assert modality_contrastive_loss(f, g, tau).item() == pytest.approx(expected, rel=1e-6)
    assert brainmvp_loss(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0), 0.5, 0.25).item() == pytest.approx(
        2.75
    )


def test_contrastive_temperature_defaults_to_0_1():
    # same f, g as above with tau = 0.1: both directions' row losses written out
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    s, tau = 1 / math.sqrt(2), 0.1
    f_to_g = [math.log(1 + math.exp(-s / tau)), math.log(1 + math.exp((s - 1) / tau))]
    g_to_f = [math.log(2), math.log(1 + math.exp(-1 / tau))]
    expected = 0.5 * (sum(f_to_g) / 2 + sum(g_to_f) / 2)
    assert modality_contrastive_loss(f, g).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", ["uniformer", "unet3d"])
def test_backbones_shapes_skips_and_encoder_keys(name):
    pre = build_backbone(name, "tiny", skip_connections=False)
    x = torch.randn(1, 1, 32, 32, 32)
    assert pre(x).shape == x.shape and pre.embed(torch.randn(2, 1, 32, 32, 32)).shape == (2, pre.embed_dim)
    # without skips the decoder sees only the deepest feature: changing shallow features changes nothing
    feats = pre.encode(x)
    changed = [f + 1.0 for f in feats[:-1]] + [feats[-1]]
    assert torch.equal(pre.decoder(feats), pre.decoder(changed))
    down = build_backbone(name, "tiny", in_channels=1, out_channels=3, skip_connections=True)
    assert down(x).shape == (1, 3, 32, 32, 32)
    assert not torch.equal(
        down.decoder(down.encode(x)), down.decoder([f + 1.0 for f in down.encode(x)[:-1]] + [down.encode(x)[-1]])
    )
    enc = {k: v for k, v in pre.state_dict().items() if k.startswith("encoder.")}
    result = down.load_state_dict(enc, strict=False)
    assert [k for k in result.missing_keys if k.startswith("encoder.")] == []


def test_linear_patch_head_is_a_transposed_convolution_with_kernel_equal_to_stride():
    """Each input voxel's c_in values map linearly to its own s^3 output patch: the transposed convolution whose
    kernel [c_in, c_out, i, j, k] is the 1x1x1 convolution's row c_out * s^3 + i * s^2 + j * s + k."""
    torch.manual_seed(0)
    c_in, c_out, s = 5, 2, 3
    head = linear_patch_head(c_in, c_out, s).double()
    conv = head.conv_block
    reference = torch.nn.ConvTranspose3d(c_in, c_out, kernel_size=s, stride=s).double()
    with torch.no_grad():
        w = conv.weight[:, :, 0, 0, 0].reshape(c_out, s, s, s, c_in)  # [c_out, i, j, k, c_in]
        reference.weight.copy_(w.permute(4, 0, 1, 2, 3))
        reference.bias.copy_(conv.bias.reshape(c_out, s**3)[:, 0])
        conv.bias.copy_(conv.bias.reshape(c_out, s**3)[:, :1].expand(c_out, s**3).reshape(-1))
    x = torch.randn(2, c_in, 4, 3, 2, dtype=torch.float64)
    out = head(x)
    assert out.shape == (2, c_out, 12, 9, 6)
    torch.testing.assert_close(out, reference(x))
    # by hand: output voxel (1, 4, 2) lies in patch (0, 1, 0) at offset (1, 1, 2)
    row = torch.arange(c_out) * s**3 + 1 * s**2 + 1 * s + 2
    by_hand = conv.weight[row, :, 0, 0, 0] @ x[0, :, 0, 1, 0] + conv.bias[row]
    torch.testing.assert_close(out[0, :, 1, 4, 2], by_hand)


def test_pretraining_decoder_has_no_full_resolution_block_and_downstream_keeps_it():
    """Pre-training (no skips) ends in the linear patch head; segmentation (skips) keeps its full-resolution
    residual block; with stride 1 (U-Net) both end in a 1x1x1 convolution."""
    pre, down = UpDecoder([8, 16], 1, skip=False, final_stride=4), UpDecoder([8, 16], 3, skip=True, final_stride=4)
    assert not any(p.dim() == 5 and p.shape[-1] > 1 for n, p in pre.named_parameters() if n.startswith("head"))
    assert isinstance(pre.final_block, torch.nn.Identity) and not isinstance(down.final_block, torch.nn.Identity)
    feats = [torch.randn(1, 8, 4, 4, 4), torch.randn(1, 16, 2, 2, 2)]
    assert pre(feats).shape == (1, 1, 16, 16, 16) and down(feats).shape == (1, 3, 16, 16, 16)
    unet = UpDecoder([8, 16], 1, skip=False, final_stride=1)
    assert isinstance(unet.head, torch.nn.Conv3d) and unet(feats).shape == (1, 1, 4, 4, 4)


def test_brainmvp_forward_losses_and_template_gradient():
    torch.manual_seed(0)
    net = BrainMVP(build_backbone("unet3d", "tiny"), ["t1", "t2", "flair"], (40, 40, 40))
    image = torch.rand(2, 2, 32, 32, 32)
    maps = translation_map(torch.tensor([[0, 0, 0], [8, 8, 8]]))
    out = net(image, torch.tensor([[0, 1], [2, 0]]), maps, use_contrastive=True)
    assert {"loss_cmr", "loss_md", "loss_cl"} <= set(out) and out["pred"].shape == (2, 1, 32, 32, 32)
    (out["loss_cmr"] + out["loss_md"] + out["loss_cl"]).backward()
    g = net.templates.templates.grad
    assert g[0].abs().sum() > 0 and g[2].abs().sum() > 0 and g[1].abs().sum() == 0  # only the drawn X_im modalities
    assert "loss_cl" not in net(image, torch.tensor([[0, 1], [2, 0]]), maps, use_contrastive=False)


def test_sample_modality_pair_draws_per_sample_from_what_is_present():
    t = SampleModalityPaird(["t1", "t1ce", "t2", "flair"])
    t.set_random_state(0)
    seen = set()
    for _ in range(30):
        d = t(
            {
                "subject_id": "S",
                "t1": torch.zeros(1, 4, 4, 4),
                "t2": torch.ones(1, 4, 4, 4),
                "flair": 2 * torch.ones(1, 4, 4, 4),
            }
        )
        m, n = d["modality_index"].tolist()
        assert m != n and {m, n} <= {0, 2, 3} and d["image"].shape == (2, 4, 4, 4)
        assert d["image"][0].mean().item() == {0: 0, 2: 1, 3: 2}[m]
        seen.add((m, n))
    assert len(seen) > 3
    with pytest.raises(ValueError, match="needs two modalities"):
        t({"subject_id": "S9", "t1": torch.zeros(1, 4, 4, 4)})


def test_crop_with_box_reports_where_it_cut():
    vol = torch.arange(20 * 20 * 20, dtype=torch.float32).view(1, 20, 20, 20)
    t = RandCropWithBoxd("image", (8, 8, 8), fg_prob=0.5)
    t.set_random_state(1)
    for _ in range(5):
        d = t({"image": vol})
        s = d["box_start"].tolist()
        assert torch.equal(d["image"], vol[:, s[0] : s[0] + 8, s[1] : s[1] + 8, s[2] : s[2] + 8])
