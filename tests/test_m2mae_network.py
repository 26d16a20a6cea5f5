"""M2MAE network: shapes, masking of the encoder input, Eq. 7 and the UNETR key contract."""

import pytest
import torch
from monai.networks.nets import UNETR

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
    mask[0, 2, 3] = True
    out = net(x, mask=mask)
    patch = (slice(0, 16), slice(16, 32), slice(16, 32))  # position 3 = grid (0, 1, 1)
    expected = (out["pred"][0, 2][patch] - x[0, 2][patch]).pow(2).mean()
    assert out["loss_mse"].item() == pytest.approx(expected.item(), rel=1e-5)


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
    net = m2mae_vit_tiny(img_size=32)
    with pytest.raises(ValueError, match=r"expected input \[B, 4, 32, 32, 32\]"):
        net(torch.randn(1, 3, 32, 32, 32))


def test_decoder_starts_from_maes_xavier_initialisation():
    # fan_in 48, fan_out 4 * 16^3 = 16384: xavier-uniform bound sqrt(6 / (48 + 16384)) = 0.01911, std = bound / sqrt(3)
    torch.manual_seed(0)
    decoder = m2mae_vit_tiny(in_channels=4, img_size=32).decoder
    w, b = decoder.weight, decoder.bias
    bound = (6.0 / (48 + 16384)) ** 0.5
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.99 * bound
    assert abs(float(w.std()) - bound / 3**0.5) < 1e-4
    assert torch.count_nonzero(b) == 0  # PyTorch's default would draw U(+-1/sqrt(48)) = U(+-0.144): 7.5x wider
