"""M2MAE network: shapes, masking of the encoder input, Eq. 7 and the UNETR key contract."""

import inspect
import json
from pathlib import Path

import pytest
import torch
from monai.networks.nets import UNETR

from common.losses.barlow import pyramid_barlow_loss
from common.networks.m2mae import M2MAE, m2mae_vit_tiny


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return m2mae_vit_tiny(in_channels=4, img_size=32)


def test_patchify_roundtrip_and_token_order(net):
    x = torch.randn(2, 4, 32, 32, 32)
    assert torch.equal(net.unpatchify(net.patchify(x)), x)
    # token 1 is grid position (0, 0, 1): voxels [0:16, 0:16, 16:32] of every modality
    assert torch.equal(net.patchify(x)[0, 1].view(4, 16, 16, 16), x[0, :, 0:16, 0:16, 16:32])


def test_forward_outputs_and_masked_input(net):
    x = torch.randn(2, 4, 32, 32, 32) + 5
    out = net(x)
    assert out["pred"].shape == x.shape and out["mask"].shape == (2, 4, 8)
    vox = out["mask"].view(2, 4, 2, 2, 2).repeat_interleave(16, 2).repeat_interleave(16, 3).repeat_interleave(16, 4)
    assert (out["masked"][vox] == 0).all() and torch.equal(out["masked"][~vox], x[~vox])
    assert out["loss_mse"].item() == pytest.approx((out["pred"] - x).pow(2).mean().item(), rel=1e-5)  # Eq. 7
    assert out["loss_pbt"].item() > 0


def test_mse_on_masked_patches_only():
    torch.manual_seed(0)
    net = m2mae_vit_tiny(img_size=32, mse_on="masked")
    x = torch.randn(1, 4, 32, 32, 32)
    mask = torch.zeros(1, 4, 8, dtype=torch.bool)
    mask[0, 2, 3] = mask[0, 0, 5] = True
    out = net(x, mask=mask)
    p3 = (slice(0, 16), slice(16, 32), slice(16, 32))  # position 3 = grid (0, 1, 1)
    p5 = (slice(16, 32), slice(0, 16), slice(16, 32))  # position 5 = grid (1, 0, 1)
    err3 = (out["pred"][0, 2][p3] - x[0, 2][p3]).pow(2).mean()
    err5 = (out["pred"][0, 0][p5] - x[0, 0][p5]).pow(2).mean()
    expected = (err3 + err5) / 2  # the mean over the two masked (modality, patch) pairs
    assert out["loss_mse"].item() == pytest.approx(expected.item(), rel=1e-5)
    mask[0, 0, 5] = False  # one pair: its own error, not half of it
    out = net(x, mask=mask)
    alone = (out["pred"][0, 2][p3] - x[0, 2][p3]).pow(2).mean()
    assert out["loss_mse"].item() == pytest.approx(alone.item(), rel=1e-5)


def test_gradients_reach_encoder_and_decoder(net):
    out = net(torch.randn(2, 4, 32, 32, 32))
    (out["loss_mse"] + out["loss_pbt"]).backward()
    assert net.vit.patch_embedding.patch_embeddings.weight.grad.abs().sum() > 0
    assert net.decoder.weight.grad.abs().sum() > 0
    net.zero_grad()


def test_unetr_loads_every_vit_key_from_the_checkpoint(net, tmp_path):
    torch.save(net.state_dict(), tmp_path / "model.pt")
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    unetr = UNETR(in_channels=4, out_channels=3, img_size=32, feature_size=8, hidden_size=48, mlp_dim=96, num_heads=4)
    result = unetr.load_state_dict(state, strict=False)
    assert [k for k in result.missing_keys if k.startswith("vit.")] == []
    assert set(result.unexpected_keys) == {"decoder.weight", "decoder.bias", "mask_token"}
    assert torch.equal(unetr.vit.blocks[11].mlp.linear1.weight, net.vit.blocks[11].mlp.linear1.weight)


def test_bad_configuration_and_input_are_named():
    with pytest.raises(ValueError, match="divisible"):
        M2MAE(img_size=40, patch_size=16)
    with pytest.raises(ValueError, match="pbt_layers"):
        M2MAE(num_layers=4, pbt_layers=(3, 6))
    with pytest.raises(ValueError, match="mse_on must be 'all' or 'masked', got 'some'"):
        m2mae_vit_tiny(img_size=32, mse_on="some")
    with pytest.raises(ValueError, match="mask_fill must be 'token' or 'zero', got 'noise'"):
        m2mae_vit_tiny(img_size=32, mask_fill="noise")
    net = m2mae_vit_tiny(img_size=32)
    with pytest.raises(ValueError, match=r"expected input \[B, 4, 32, 32, 32\]"):
        net(torch.randn(1, 3, 32, 32, 32))


def test_decoder_starts_from_maes_xavier_initialisation():
    # fan_in 48, fan_out 4 * 16^3 = 16384: xavier-uniform bound sqrt(6 / (48 + 16384)) = 0.01911, std = bound / sqrt(3)
    torch.manual_seed(0)
    decoder = m2mae_vit_tiny(in_channels=4, img_size=32).decoder
    w, b = decoder.weight, decoder.bias
    bound = (6.0 / (48 + 16384)) ** 0.5
    assert float(w.detach().abs().max()) <= bound and float(w.detach().abs().max()) > 0.99 * bound
    assert abs(float(w.detach().std()) - bound / 3**0.5) < 1e-4
    assert torch.count_nonzero(b) == 0  # PyTorch's default would draw U(+-1/sqrt(48)) = U(+-0.144): 7.5x wider


def test_a_non_cubic_crop_has_one_token_per_patch_position():
    # 32 x 48 x 64 voxels in 16^3 patches: a 2 x 3 x 4 grid, 24 tokens; token 5 = grid (0, 1, 1)
    torch.manual_seed(0)
    net = m2mae_vit_tiny(in_channels=2, img_size=(32, 48, 64))
    assert net.grid == (2, 3, 4) and net.num_patches == 24
    x = torch.randn(1, 2, 32, 48, 64)
    assert torch.equal(net.patchify(x)[0, 5].view(2, 16, 16, 16), x[0, :, 0:16, 16:32, 16:32])
    assert torch.equal(net.unpatchify(net.patchify(x)), x)
    out = net(x)
    assert out["mask"].shape == (1, 2, 24) and out["pred"].shape == x.shape


def test_default_network_scores_eq7_over_all_voxels_and_centred_unit_weight_pbt():
    torch.manual_seed(0)
    net = m2mae_vit_tiny(img_size=32)  # built here: every default of M2MAE.__init__ is the one under test
    x = torch.randn(2, 4, 32, 32, 32)
    mask = torch.zeros(2, 4, 8, dtype=torch.bool)
    mask[:, 1, :4] = True
    out = net(x, mask=mask)
    assert out["loss_mse"].item() == pytest.approx((out["pred"] - x).pow(2).mean().item(), rel=1e-5)  # Eq. 7
    _, z = net.forward_encoder(x)
    _, z_m = net.forward_encoder(out["masked"])
    assert [t.shape[1] for t in z] == [8] * 4 and len(z) == 4
    expected = pyramid_barlow_loss(z, z_m, redundancy_weight=1.0, center=True, normalize="matrix")
    assert out["loss_pbt"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_zero_fill_puts_zeros_in_the_masked_patches_and_the_seeded_mask_repeats():
    torch.manual_seed(0)
    net = m2mae_vit_tiny(img_size=32, mask_fill="zero")
    x = torch.randn(1, 4, 32, 32, 32) + 5
    mask = torch.zeros(1, 4, 8, dtype=torch.bool)
    mask[0, 3, 0] = True
    masked = net(x, mask=mask)["masked"]
    assert (masked[0, 3, :16, :16, :16] == 0).all() and torch.equal(masked[0, :3], x[0, :3])
    draws = [net.random_masking(x, generator=torch.Generator().manual_seed(3))[0] for _ in range(2)]
    assert torch.equal(draws[0], draws[1])


def test_pbt_taps_may_include_the_first_block_and_not_block_0():
    assert m2mae_vit_tiny(img_size=32, pbt_layers=(1, 12)).pbt_layers == (1, 12)
    with pytest.raises(ValueError, match="pbt_layers"):
        m2mae_vit_tiny(img_size=32, pbt_layers=(0, 12))


def test_constructor_defaults_are_the_bundles_real_run_settings():
    cfg = json.loads((Path(__file__).resolve().parents[1] / "bundles/m2mae/configs/train.json").read_text())
    defaults = {k: v.default for k, v in inspect.signature(M2MAE).parameters.items()}
    assert defaults["in_channels"] == len(cfg["modalities"])
    # the paper columns of the demo switch ("$<demo> if @demo_data else <paper>")
    paper = {k: float(cfg[k].rsplit("else", 1)[1]) for k in ("hidden_size", "mlp_dim", "num_heads")}
    assert {k: defaults[k] for k in paper} == paper and defaults["num_layers"] == cfg["num_layers"] == 12
    for k in (
        "use_modality_mask",
        "position_ratio",
        "redundancy_weight",
        "fused_attention",
        "pbt_normalize",
        "mask_fill",
    ):
        assert defaults[k] == cfg[k], k
    assert defaults["patch_ratio"] == pytest.approx(cfg["patch_ratio"], abs=1e-4) and defaults["pbt_center"] is True
