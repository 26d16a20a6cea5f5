"""The official-layout UniFormer computes what the BrainMVP authors' UniFormer computes, once their weights are
imported by ``tools/import_brainmvp_weights.py``; the collection layout is unchanged.

``OfficialUniFormer`` below is an independent, minimal re-implementation of the authors' encoder forward (written
from its description, with their state-dict names), used only as a reference: it permutes its input from
(H, W, D) to (D, H, W), embeds patches with kernel-2 stride-2 convolutions followed by a per-voxel layer norm,
runs local blocks (batch norm, 1x1x1 / depth-wise 5^3 / 1x1x1 convolutions, convolutional MLP) and global blocks
(layer norm eps 1e-6, multi-head self-attention with a fused qkv split as (3, heads, head_dim), MLP), and batch
normalises the deepest feature.
"""

import hashlib
import sys

import pytest
import torch
import torch.nn as nn
from conftest import REPO

from common.networks.brainmvp import BrainMVP, build_backbone
from common.networks.uniformer import uniformer_small, uniformer_tiny

sys.path.insert(0, str(REPO / "tools"))
import import_brainmvp_weights as tool  # noqa: E402

TINY = {"dims": (16, 32, 48, 64), "depths": (1, 1, 1, 1), "head_dim": 16}


class _Embed(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(cin, cout, kernel_size=2, stride=2)
        self.norm = nn.LayerNorm(cout)

    def forward(self, x):
        x = self.proj(x)
        b, c, d, h, w = x.shape
        tokens = self.norm(x.reshape(b, c, d * h * w).permute(0, 2, 1))
        return tokens.permute(0, 2, 1).reshape(b, c, d, h, w)


class _ConvMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Conv3d(dim, hidden, 1), nn.GELU(), nn.Conv3d(hidden, dim, 1)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _Local(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.pos_embed = nn.Conv3d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.BatchNorm3d(dim)
        self.conv1 = nn.Conv3d(dim, dim, 1)
        self.attn = nn.Conv3d(dim, dim, 5, padding=2, groups=dim)
        self.conv2 = nn.Conv3d(dim, dim, 1)
        self.norm2 = nn.BatchNorm3d(dim)
        self.mlp = _ConvMlp(dim, 4 * dim)

    def forward(self, x):
        x = x + self.pos_embed(x)
        x = x + self.conv2(self.attn(self.conv1(self.norm1(x))))
        return x + self.mlp(self.norm2(x))


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, c // self.heads)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # [B, heads, N, head_dim]
        weights = torch.softmax(q @ k.transpose(-1, -2) / (c // self.heads) ** 0.5, dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, c))


class _Global(nn.Module):
    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.pos_embed = nn.Conv3d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, dim // head_dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, 4 * dim)

    def forward(self, x):
        x = x + self.pos_embed(x)
        b, c, d, h, w = x.shape
        t = x.reshape(b, c, -1).permute(0, 2, 1)
        t = t + self.attn(self.norm1(t))
        t = t + self.mlp(self.norm2(t))
        return t.permute(0, 2, 1).reshape(b, c, d, h, w)


class OfficialUniFormer(nn.Module):
    """Reference: the authors' UniFormer encoder (their key names, their (D, H, W) axis order)."""

    def __init__(self, in_channels=1, dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), head_dim=16) -> None:
        super().__init__()
        prev = in_channels
        for i, (dim, depth) in enumerate(zip(dims, depths), start=1):
            setattr(self, f"patch_embed{i}", _Embed(prev, dim))
            blocks = [_Local(dim) if i <= 2 else _Global(dim, head_dim) for _ in range(depth)]
            setattr(self, f"blocks{i}", nn.ModuleList(blocks))
            prev = dim
        self.norm = nn.BatchNorm3d(prev)

    def forward(self, x):  # x: [B, C, H, W, D] -> features [B, C_i, D_i, H_i, W_i]
        x = x.permute(0, 1, 4, 2, 3)
        feats = []
        for i in range(1, 5):
            x = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"blocks{i}"):
                x = block(x)
            feats.append(x)
        feats[-1] = self.norm(feats[-1])
        return feats


def randomised(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter and batch-norm statistic random (norm scales near 1, variances positive), eval mode."""
    gen = torch.Generator().manual_seed(seed)
    norms = (nn.LayerNorm, nn.BatchNorm3d)
    with torch.no_grad():
        for m in module.modules():
            for name, p in m.named_parameters(recurse=False):
                scale = 1.0 if isinstance(m, norms) and name == "weight" else 0.0
                p.copy_(torch.randn(p.shape, generator=gen) * (0.1 if p.ndim == 1 else 0.05) + scale)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
            elif name.endswith("num_batches_tracked"):
                b.fill_(7)
    return module.eval()


def official_file(reference: nn.Module, canvas=(24, 24, 16), prefix="module.uniformer.") -> dict:
    """A checkpoint shaped like the authors': ``{"state_dict": {module.uniformer.*, module.rep_template}}``."""
    state = {prefix + k: v.clone() for k, v in reference.state_dict().items()}
    state["module.rep_template"] = torch.arange(8.0).view(8, 1, 1, 1).expand(8, *canvas).clone()
    return {"epoch": 1500, "state_dict": state}


def imported_encoder(source: dict, size: str = "tiny") -> nn.Module:
    state, _ = tool.convert(source, "uniformer", size)
    assert state.pop(tool.LAYOUT_KEY) == "official"
    canvas = tuple(state["templates.templates"].shape[2:])
    modalities = [tool.RENAME.get(m, m) for m in tool.OFFICIAL_MODALITIES]
    net = BrainMVP(build_backbone("uniformer", size, layout="official"), modalities, canvas)
    net.load_state_dict(state)
    return net.encoder.eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_imported_official_weights_compute_the_authors_features(dtype):
    reference = randomised(OfficialUniFormer(**TINY))
    encoder = imported_encoder(official_file(reference))
    reference, encoder = reference.to(dtype), encoder.to(dtype)
    x = torch.randn(2, 1, 32, 48, 16, generator=torch.Generator().manual_seed(1), dtype=dtype)  # (H, W, D), distinct
    with torch.no_grad():
        theirs, ours = reference(x), encoder(x)
    assert len(theirs) == len(ours) == 4
    for i, (t, o) in enumerate(zip(theirs, ours)):
        t = t.permute(0, 1, 3, 4, 2)  # their (D, H, W) back to the input's (H, W, D)
        assert o.shape == t.shape == (2, TINY["dims"][i], 32 >> (i + 1), 48 >> (i + 1), 16 >> (i + 1))
        torch.testing.assert_close(o, t, atol=1e-5, rtol=1e-5, msg=f"stage {i + 1}")


def test_conv_kernels_are_permuted_not_copied():
    """Without the kernel permutation the features differ: the test above is sensitive to the axis order."""
    reference = randomised(OfficialUniFormer(**TINY))
    encoder = imported_encoder(official_file(reference))
    with torch.no_grad():
        encoder.embeds[0][0].weight.copy_(reference.patch_embed1.proj.weight)
        x = torch.randn(1, 1, 32, 48, 16, generator=torch.Generator().manual_seed(2))
        assert not torch.allclose(encoder(x)[0], reference(x)[0].permute(0, 1, 3, 4, 2), atol=1e-3)


def test_official_layout_structure():
    enc = uniformer_tiny(layout="official").encoder
    assert [e[0].stride for e in enc.embeds] == [(2, 2, 2)] * 4 and [e[0].kernel_size for e in enc.embeds] == [
        (2, 2, 2)
    ] * 4
    assert all(isinstance(e[1], nn.LayerNorm) and e[1].eps == 1e-5 for e in enc.embeds)  # theirs: nn.LayerNorm(dim)
    norms = [m for s in enc.stages[2:] for b in s for m in (b.norm1, b.norm2)]
    assert norms and all(n.eps == 1e-6 for n in norms)
    assert isinstance(enc.norm, nn.BatchNorm3d) and enc.norm.num_features == 64
    net = uniformer_tiny(layout="official", skip_connections=True).eval()
    x = torch.randn(1, 1, 32, 48, 16)
    assert [tuple(f.shape[2:]) for f in net.encode(x)] == [(16, 24, 8), (8, 12, 4), (4, 6, 2), (2, 3, 1)]
    assert net(x).shape == x.shape  # the decoder's last up-sampling is 2, not 4


def test_collection_layout_unchanged():
    """Keys, shapes and sizes of the default network as before the official layout existed (measured then)."""
    net = uniformer_small()
    state = net.state_dict()
    listing = ";".join(f"{k}:{tuple(v.shape)}" for k, v in state.items())
    assert len(state) == 341
    assert sum(p.numel() for p in net.parameters()) == 34427393
    assert sum(p.numel() for p in net.encoder.parameters()) == 22041024
    assert hashlib.sha256(listing.encode()).hexdigest().startswith("df4679e58988d359")
    pre = uniformer_small(skip_connections=False)
    # the pre-training decoder ends in the linear patch head since brainmvp 0.3.0 (338 keys, 30863873 parameters
    # before: transposed convolution + 64-channel residual block at full resolution + 1x1x1 head)
    assert len(pre.state_dict()) == 335 and sum(p.numel() for p in pre.parameters()) == 30384640
    assert sum(p.numel() for p in pre.decoder.head.parameters()) == 64 * 4**3 + 4**3
    assert uniformer_small(layout="collection").state_dict().keys() == state.keys()
    enc = uniformer_tiny().encoder
    assert [e[0].stride for e in enc.embeds] == [(4, 4, 4), (2, 2, 2), (2, 2, 2), (2, 2, 2)]
    assert all(isinstance(e[1], nn.GroupNorm) for e in enc.embeds) and isinstance(enc.norm, nn.Identity)
    assert all(b.norm1.eps == 1e-5 for s in enc.stages[2:] for b in s)
    assert not any(k.startswith("norm.") for k in enc.state_dict())


def test_layout_arguments_are_checked():
    with pytest.raises(ValueError, match="layout"):
        uniformer_tiny(layout="theirs")
    with pytest.raises(ValueError, match="layout"):
        build_backbone("unet3d", "tiny", layout="theirs")
    assert len(build_backbone("unet3d", "tiny", layout="collection").state_dict()) > 0
    net = build_backbone("uniformer", "tiny", layout="official")
    assert isinstance(net.encoder.norm, nn.BatchNorm3d)


@pytest.mark.parametrize("layout", ["official", "collection"])
def test_checkpointed_mlps_compute_the_same_and_keep_no_hidden_activations(layout):
    """``checkpoint_mlp``: outputs and every gradient bitwise equal, and the autograd graph stores exactly the two
    hidden activations (fc1's output, GELU's output) and the two 1x1x1 weights of each local block fewer."""

    def run(ck: bool):
        torch.manual_seed(0)
        net = uniformer_tiny(layout=layout, checkpoint_mlp=ck)
        x = torch.rand(2, 1, 32, 32, 32)
        stored = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: stored.append(t.numel()) or t, lambda t: t):
            out = net(x)
        out.sum().backward()
        return sum(stored), out.detach(), [p.grad for p in net.parameters()]

    plain, out_plain, grads_plain = run(False)
    ck, out_ck, grads_ck = run(True)
    assert torch.equal(out_plain, out_ck) and all(torch.equal(a, b) for a, b in zip(grads_plain, grads_ck))
    # tiny UniFormer (16-32 channels in stages 1-2, MLP ratio 4, one block each), batch 2 of 32^3:
    # official layout: stage 1 at 16^3, stage 2 at 8^3; collection layout: 8^3 and 4^3
    edge1, edge2 = (16, 8) if layout == "official" else (8, 4)
    hidden = 2 * 2 * (64 * edge1**3 + 128 * edge2**3)  # two [B, 4C, *spatial] tensors per local block
    weights = 2 * (16 * 64) + 2 * (32 * 128)  # fc1 and fc2 kernels (C x 4C) per local block
    assert plain - ck == hidden + weights
    # no recomputation without gradients (inference): the flag does not change eval-mode outputs either
    with torch.no_grad():
        torch.manual_seed(0)
        a = uniformer_tiny(layout=layout, checkpoint_mlp=True).eval()(torch.ones(1, 1, 32, 32, 32))
        torch.manual_seed(0)
        b = uniformer_tiny(layout=layout).eval()(torch.ones(1, 1, 32, 32, 32))
    assert torch.equal(a, b)


def test_build_backbone_passes_checkpoint_mlp_to_every_local_block_of_a_uniformer_only():
    from common.networks.uniformer import CBlock

    def flags(net):
        return [m.checkpoint_mlp for m in net.modules() if isinstance(m, CBlock)]

    assert flags(build_backbone("uniformer", "tiny")) == [False, False]
    assert flags(build_backbone("uniformer", "tiny", checkpoint_mlp=True)) == [True, True]
    assert flags(build_backbone("uniformer", "small", checkpoint_mlp=True)) == [True] * 7  # UniFormer-S: 3 + 4
    with pytest.raises(ValueError) as err:
        build_backbone("unet3d", "tiny", checkpoint_mlp=True)
    assert str(err.value) == "checkpoint_mlp applies to the uniformer backbone only, not 'unet3d'"


@pytest.mark.parametrize("bundle, key", [("brainmvp", "backbone_def"), ("brainmvp_seg", "network_def"),
                                         ("brainmvp_cls", "network_def#backbone")])  # fmt: skip
def test_the_brainmvp_bundles_checkpoint_uniformer_mlps_by_default_and_honour_the_knob(bundle, key):
    from monai.bundle import ConfigParser

    from common.networks.uniformer import CBlock

    def flags(**overrides):
        parser = ConfigParser()
        parser.read_config(str(REPO / "bundles" / bundle / "configs" / "train.json"))
        parser["backbone_size"] = "tiny"
        for k, v in overrides.items():
            parser[k] = v
        return [m.checkpoint_mlp for m in parser.get_parsed_content(key).modules() if isinstance(m, CBlock)]

    assert flags() == [True, True]
    assert flags(checkpoint_mlp=False) == [False, False]
    assert flags(backbone="unet3d") == []  # UNet3D has no local blocks: the default switches itself off
