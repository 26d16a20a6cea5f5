"""timm / MAE ViT checkpoints into MONAI's 2D ViT: key map, class token, qkv bias, grid resize, clear refusals.

The source is a synthetic state dict in timm's layout (key names and shapes as ``timm.models.vision_transformer``
and MAE's ``models_mae`` define them; timm is not importable beside this torch), and a forward of that layout is
written here by hand, so equivalence is proven without either library.
"""

import argparse
import collections
import math

import pytest
import torch
import torch.nn.functional as F

from common.networks.mrm import mrm_tiny
from common.networks.vit import unetr_vit
from common.networks.vit_import import (
    convert_timm_vit_state_dict,
    interpolate_position_embeddings,
    load_timm_vit,
    timm_vit_key,
)

D, HEADS, MLP, DEPTH, P = 48, 4, 96, 2, 16


def timm_state(grid: int = 2, depth: int = DEPTH, seed: int = 0, cls: bool = True) -> dict[str, torch.Tensor]:
    """A timm ``VisionTransformer`` state dict (class token, qkv bias, classifier head), random weights."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.1):
        return torch.randn(*shape, generator=g) * scale

    sd = {
        "patch_embed.proj.weight": r(D, 3, P, P, scale=0.02),
        "patch_embed.proj.bias": r(D),
        "pos_embed": r(1, grid * grid + (1 if cls else 0), D),
        "norm.weight": 1 + r(D),
        "norm.bias": r(D),
        "head.weight": r(10, D),
        "head.bias": r(10),
    }
    if cls:
        sd["cls_token"] = r(1, 1, D)
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update({
            b + "norm1.weight": 1 + r(D), b + "norm1.bias": r(D),
            b + "attn.qkv.weight": r(3 * D, D), b + "attn.qkv.bias": r(3 * D),
            b + "attn.proj.weight": r(D, D), b + "attn.proj.bias": r(D),
            b + "norm2.weight": 1 + r(D), b + "norm2.bias": r(D),
            b + "mlp.fc1.weight": r(MLP, D), b + "mlp.fc1.bias": r(MLP),
            b + "mlp.fc2.weight": r(D, MLP), b + "mlp.fc2.bias": r(D),
        })  # fmt: skip
    return sd


def timm_forward(sd: dict, x: torch.Tensor, eps: float = 1e-6, use_cls: bool = False) -> torch.Tensor:
    """timm's ViT forward written out: conv patch embed, (+ class token), + pos_embed, pre-norm blocks, final norm.

    Returns the patch tokens ``[B, N, D]``. ``use_cls=False`` runs the network without its class token (what the
    import keeps); ``eps`` is the LayerNorm epsilon (timm: 1e-6)."""
    tokens = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=P)
    tokens = tokens.flatten(2).transpose(1, 2)  # [B, N, D]
    pos = sd["pos_embed"]
    if use_cls:
        cls = sd["cls_token"].expand(x.shape[0], -1, -1) + pos[:, :1]
        tokens = torch.cat([cls, tokens + pos[:, 1:]], dim=1)
    else:
        tokens = tokens + pos[:, 1:]
    b, n, _ = tokens.shape
    for i in range(sum(k.endswith("attn.qkv.weight") for k in sd)):
        p = f"blocks.{i}."
        h = F.layer_norm(tokens, (D,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps)
        qkv = (h @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]).reshape(b, n, 3, HEADS, D // HEADS)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # timm: [3, B, heads, N, d]
        attn = (q @ k.transpose(-2, -1) / math.sqrt(D // HEADS)).softmax(-1)
        h = (attn @ v).transpose(1, 2).reshape(b, n, D)
        tokens = tokens + h @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        h = F.layer_norm(tokens, (D,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps)
        h = F.gelu(h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        tokens = tokens + h @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    tokens = F.layer_norm(tokens, (D,), sd["norm.weight"], sd["norm.bias"], eps)
    return tokens[:, 1:] if use_cls else tokens


def monai_vit(img: int = 32, depth: int = DEPTH, qkv_bias: bool = True):
    return unetr_vit(3, img, P, D, MLP, depth, HEADS, qkv_bias=qkv_bias, spatial_dims=2).eval()


def test_key_map():
    assert timm_vit_key("patch_embed.proj.weight") == "patch_embedding.patch_embeddings.weight"
    assert timm_vit_key("pos_embed") == "patch_embedding.position_embeddings"
    assert timm_vit_key("blocks.11.attn.qkv.bias") == "blocks.11.attn.qkv.bias"
    assert timm_vit_key("blocks.0.attn.proj.bias") == "blocks.0.attn.out_proj.bias"
    assert timm_vit_key("blocks.7.mlp.fc1.weight") == "blocks.7.mlp.linear1.weight"
    assert timm_vit_key("blocks.7.mlp.fc2.bias") == "blocks.7.mlp.linear2.bias"
    assert timm_vit_key("blocks.2.norm2.weight") == "blocks.2.norm2.weight"
    assert timm_vit_key("norm.bias") == "norm.bias"
    assert timm_vit_key("fc_norm.weight") is None and timm_vit_key("cls_token") is None


def test_imported_vit_equals_timm_forward_without_class_token():
    sd = timm_state()
    vit = monai_vit()
    converted = convert_timm_vit_state_dict(sd, vit)
    missing = vit.load_state_dict(converted, strict=False).missing_keys
    assert all("norm_cross_attn" in k for k in missing)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = vit(x)[0]
        # the same LayerNorm epsilon: the same network
        assert torch.allclose(ours, timm_forward(sd, x, eps=1e-5), atol=1e-5)
        # timm's own epsilon (1e-6): differences far below the features' scale
        assert torch.allclose(ours, timm_forward(sd, x, eps=1e-6), atol=1e-3)
        # the class token takes part in attention: with it, the patch tokens differ (documented)
        assert not torch.allclose(ours, timm_forward(sd, x, eps=1e-5, use_cls=True), atol=1e-3)


def test_mae_wrapper_and_decoder_keys_and_local_file(tmp_path):
    sd = timm_state()
    sd.update({"mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.zeros(32, D)})
    path = tmp_path / "mae_pretrain.pth"
    torch.save({"model": sd, "epoch": 3}, path)
    vit = monai_vit()
    report = load_timm_vit(vit, path)
    assert "patch_embedding.position_embeddings" in report["loaded"]
    assert all("norm_cross_attn" in k for k in report["kept_initial"])
    assert torch.equal(vit.blocks[1].attn.out_proj.weight, sd["blocks.1.attn.proj.weight"])
    assert torch.equal(vit.patch_embedding.position_embeddings, sd["pos_embed"][:, 1:])  # class slot dropped


def test_into_the_mrm_network(tmp_path):
    torch.manual_seed(0)
    net = mrm_tiny(None, num_layers=DEPTH, qkv_bias=True)
    path = tmp_path / "vit.pth"
    torch.save(timm_state(), path)
    load_timm_vit(net.vit, path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net.vit(x)[0], timm_forward(timm_state(), x, eps=1e-5), atol=1e-5)


def test_unmatched_and_unfed_keys_are_refused_with_their_list():
    sd = timm_state()
    sd["dist_token"] = torch.zeros(1, 1, D)
    sd["blocks.0.ls1.gamma"] = torch.ones(D)
    del sd["blocks.1.mlp.fc2.bias"]
    with pytest.raises(ValueError) as err:
        convert_timm_vit_state_dict(sd, monai_vit(), source="weights.pth")
    msg = str(err.value)
    assert "weights.pth" in msg and "'dist_token'" in msg and "'blocks.0.ls1.gamma'" in msg
    assert "'blocks.1.mlp.linear2.bias'" in msg


def test_qkv_bias_mismatch_is_refused():
    with pytest.raises(ValueError, match="qkv_bias=True"):
        convert_timm_vit_state_dict(timm_state(), monai_vit(qkv_bias=False))
    sd = {k: v for k, v in timm_state().items() if not k.endswith("qkv.bias")}
    with pytest.raises(ValueError, match="blocks.0.attn.qkv.bias"):  # target expects a bias the source lacks
        convert_timm_vit_state_dict(sd, monai_vit(qkv_bias=True))


def test_depth_and_width_mismatches_are_refused():
    with pytest.raises(ValueError, match="blocks.2"):
        convert_timm_vit_state_dict(timm_state(depth=3), monai_vit(depth=2))
    with pytest.raises(ValueError, match="does not provide"):
        convert_timm_vit_state_dict(timm_state(depth=2), monai_vit(depth=3))
    bad = timm_state()
    bad["blocks.0.mlp.fc1.weight"] = torch.zeros(2 * MLP, D)
    with pytest.raises(ValueError, match=r"blocks.0.mlp.linear1.weight: source \[192, 48\] vs target \[96, 48\]"):
        convert_timm_vit_state_dict(bad, monai_vit())


def test_position_grid_resize():
    pos = torch.randn(1, 16, 8)
    assert interpolate_position_embeddings(pos, (4, 4), (4, 4)) is pos
    const = torch.ones(1, 16, 8) * torch.arange(8.0)
    assert torch.allclose(
        interpolate_position_embeddings(const, (4, 4), (2, 2)), torch.ones(1, 4, 8) * torch.arange(8.0)
    )
    # the grid layout is row-major (h, w): resizing a map that varies along w only keeps it constant along h
    ramp_w = torch.arange(4.0).repeat(4).reshape(1, 16, 1)  # value = column index
    out = interpolate_position_embeddings(ramp_w, (4, 4), (3, 3)).reshape(3, 3)
    assert torch.allclose(out, out[:1].expand(3, 3), atol=1e-6) and (out[0, 1:] > out[0, :-1]).all()
    # a 4x4-grid checkpoint (64 px) into a 2x2-grid ViT (32 px): the class slot dropped, then resized
    sd = timm_state(grid=4)
    converted = convert_timm_vit_state_dict(sd, monai_vit(img=32))
    expected = (
        F.interpolate(
            sd["pos_embed"][:, 1:].reshape(1, 4, 4, D).permute(0, 3, 1, 2),
            size=(2, 2),
            mode="bicubic",
            align_corners=False,
        )
        .permute(0, 2, 3, 1)
        .reshape(1, 4, D)
    )
    assert torch.allclose(converted["patch_embedding.position_embeddings"], expected, atol=1e-6)


def test_a_source_without_class_token():
    sd = timm_state(cls=False)
    vit = monai_vit()
    vit.load_state_dict(convert_timm_vit_state_dict(sd, vit), strict=False)
    assert torch.equal(vit.patch_embedding.position_embeddings, sd["pos_embed"])


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_timm_vit(monai_vit(), tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read ViT checkpoint"):
        load_timm_vit(monai_vit(), bad)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        load_timm_vit(monai_vit(), listed)
    # an MAE training checkpoint pickles its argparse namespace: read safely (weights_only, Namespace allowed) ...
    pickled = tmp_path / "checkpoint-399.pth"
    torch.save({"model": timm_state(), "args": argparse.Namespace(lr=1e-3)}, pickled)
    vit = monai_vit()
    load_timm_vit(vit, pickled)
    plain = tmp_path / "plain.pth"
    torch.save(timm_state(), plain)
    reference = monai_vit()
    load_timm_vit(reference, plain)
    assert all(torch.equal(a, b) for a, b in zip(vit.state_dict().values(), reference.state_dict().values()))
    # ... while any other pickled object is refused, naming the file
    other = tmp_path / "other.pth"
    torch.save({"model": timm_state(), "fn": collections.OrderedDict(a=slice(1, 2))}, other)
    with pytest.raises(ValueError, match=r"cannot read ViT checkpoint .*other.pth with weights_only=True"):
        load_timm_vit(monai_vit(), other)


def test_error_names_the_file_and_custom_drops_pass_through(tmp_path):
    sd = timm_state()
    sd["dist_token"] = torch.zeros(1, 1, D)
    path = tmp_path / "deit.pth"
    torch.save({"state_dict": sd}, path)  # the other common wrapper
    with pytest.raises(ValueError, match=r"cannot import .*deit.pth into the MONAI ViT:\n  source keys without"):
        load_timm_vit(monai_vit(), path)
    vit = monai_vit()
    load_timm_vit(vit, path, dropped=(r"cls_token", r"head\..*", r"dist_token"))
    assert torch.equal(vit.norm.weight, sd["norm.weight"])
    with pytest.raises(ValueError, match="cannot import the checkpoint into"):
        convert_timm_vit_state_dict(sd, monai_vit())


def test_target_may_be_a_state_dict():
    vit = monai_vit()
    converted = convert_timm_vit_state_dict(timm_state(), vit.state_dict())
    assert set(converted) == {k for k in vit.state_dict() if "norm_cross_attn" not in k}


def test_grids_that_do_not_fit_are_refused():
    sd = timm_state(cls=False)
    sd["pos_embed"] = torch.zeros(1, 5, D)  # 5 patch positions: no square grid
    with pytest.raises(ValueError, match="hold 5 patch positions, not a square grid"):
        convert_timm_vit_state_dict(sd, monai_vit())
    wide = unetr_vit(3, (32, 48), P, D, MLP, DEPTH, HEADS, qkv_bias=True, spatial_dims=2)  # 2 x 3 grid
    with pytest.raises(ValueError, match="target has 6 patch positions"):
        convert_timm_vit_state_dict(timm_state(grid=4), wide)
    half = interpolate_position_embeddings(torch.randn(1, 16, D).half(), (4, 4), (2, 2))
    assert half.dtype == torch.float16  # resized in float32, returned in the checkpoint's dtype
    # the function itself resizes to any grid
    assert interpolate_position_embeddings(torch.randn(1, 16, D), (4, 4), (2, 3)).shape == (1, 6, D)
