"""The official-layout UNet3D computes what the BrainMVP authors' pre-training UNet encoder computes, once their
weights are imported by ``tools/import_brainmvp_weights.py``; the collection layout is unchanged.

``ReferenceRecModel`` below is an independent, minimal re-implementation of the authors' UNet (their ``RecModel``,
written from its description, with their state-dict names, all at the top level), used only as a reference:
pre-activation residual blocks (group norm of 8 groups, ReLU, 3x3x3 convolution, twice, plus the input), a 3x3x3
stem convolution and one block, then three stride-2 3x3x3 convolutions doubling the channels, followed by two, two
and four blocks; its features are ``c1d``, ``c2d``, ``c3d`` (the down-sampled outputs) and ``c4d`` (after the last
four blocks). It also holds their decoder modules and ``rep_template``, so its state dict has the keys of their
checkpoints.
"""

import hashlib
import sys

import pytest
import torch
import torch.nn as nn
from conftest import REPO

from common.engines.checkpoint import load_encoder
from common.networks.brainmvp import BrainMVP, EncoderClassifier, build_backbone
from common.networks.templates import translation_map
from common.networks.unet3d import UNet3DOfficial, unet3d, unet3d_tiny

sys.path.insert(0, str(REPO / "tools"))
import import_brainmvp_weights as tool  # noqa: E402

C = 8  # their init_channels is 32 ("small"); "tiny" is 8
ENCODER = ["conv1a", "conv1b", "ds1", "conv2a", "conv2b", "ds2", "conv3a", "conv3b", "ds3"] + [
    f"conv4{s}" for s in "abcd"
]
DECODER = ["up4conva", "up4convb", "up3conva", "up3convb", "up2conva", "up2convb", "up1conv"]


class _Block(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.gn1, self.relu1 = nn.GroupNorm(8, ch), nn.ReLU()
        self.conv1 = nn.Conv3d(ch, ch, (3, 3, 3), padding=(1, 1, 1))
        self.gn2, self.relu2 = nn.GroupNorm(8, ch), nn.ReLU()
        self.conv2 = nn.Conv3d(ch, ch, (3, 3, 3), padding=(1, 1, 1))

    def forward(self, x):
        h = self.conv1(self.relu1(self.gn1(x)))
        h = self.conv2(self.relu2(self.gn2(h)))
        return h + x


def _down(cin: int, cout: int) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, (3, 3, 3), stride=(2, 2, 2), padding=(1, 1, 1))


class ReferenceRecModel(nn.Module):
    """Reference: the authors' pre-training UNet (their key names, top level), encoder forward only."""

    def __init__(self, c: int = C, canvas=(24, 24, 16)) -> None:
        super().__init__()
        self.conv1a = nn.Conv3d(1, c, (3, 3, 3), padding=(1, 1, 1))
        self.conv1b = _Block(c)
        self.ds1 = _down(c, 2 * c)
        self.conv2a, self.conv2b = _Block(2 * c), _Block(2 * c)
        self.ds2 = _down(2 * c, 4 * c)
        self.conv3a, self.conv3b = _Block(4 * c), _Block(4 * c)
        self.ds3 = _down(4 * c, 8 * c)
        self.conv4a, self.conv4b, self.conv4c, self.conv4d = (_Block(8 * c) for _ in range(4))
        # their decoder: only its keys matter here
        self.up4conva, self.up4convb = nn.Conv3d(8 * c, 4 * c, 1), _Block(4 * c)
        self.up3conva, self.up3convb = nn.Conv3d(4 * c, 2 * c, 1), _Block(2 * c)
        self.up2conva, self.up2convb = nn.Conv3d(2 * c, c, 1), _Block(c)
        self.up1conv = nn.Conv3d(c, 1, 1)
        self.rep_template = nn.Parameter(torch.arange(8.0).view(8, 1, 1, 1).expand(8, *canvas).clone())

    def features(self, x):
        c1d = self.ds1(self.conv1b(self.conv1a(x)))
        c2d = self.ds2(self.conv2b(self.conv2a(c1d)))
        c3d = self.ds3(self.conv3b(self.conv3a(c2d)))
        c4 = c3d
        for block in (self.conv4a, self.conv4b, self.conv4c, self.conv4d):
            c4 = block(c4)
        return [c1d, c2d, c3d, c4]


def reference(seed: int = 0) -> ReferenceRecModel:
    """All weights random, group-norm scales and shifts non-trivial."""
    torch.manual_seed(seed)
    ref = ReferenceRecModel()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.copy_(1.0 + 0.3 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
            elif isinstance(m, nn.Conv3d):
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    return ref.eval()


def official_file(ref: nn.Module, encoder_prefix: str = "module.", decoder_prefix: str = "module.") -> dict:
    """A checkpoint shaped like theirs: ``{"state_dict": {module.conv1a.weight, ..., module.rep_template}}``."""
    state = {}
    for k, v in ref.state_dict().items():
        top = k.split(".")[0]
        prefix = "module." if top == "rep_template" else decoder_prefix if top in DECODER else encoder_prefix
        state[prefix + k] = v.clone()
    return {"epoch": 1500, "state_dict": state}


def imported(source: dict, size: str = "tiny") -> tuple[BrainMVP, list[str]]:
    state, report = tool.convert(source, "unet3d", size)
    assert state.pop(tool.LAYOUT_KEY) == "official"
    modalities = [tool.RENAME.get(m, m) for m in tool.OFFICIAL_MODALITIES]
    net = BrainMVP(
        build_backbone("unet3d", size, layout="official"), modalities, state["templates.templates"].shape[2:]
    )
    net.load_state_dict(state)
    return net.eval(), report


@pytest.mark.parametrize(
    "prefixes",
    [("module.", "module."), ("module.encoder.", "module.decoder."), ("", "")],
    ids=["top", "nested", "bare"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_imported_official_weights_compute_the_authors_features(prefixes, dtype):
    ref = reference()
    net, report = imported(official_file(ref, *prefixes))
    encoder = net.encoder.to(dtype)
    ref = ref.to(dtype)
    x = torch.randn(1, 1, 32, 48, 16, generator=torch.Generator().manual_seed(1), dtype=dtype)  # distinct sides
    with torch.no_grad():
        c1d, c2d, _, c4d = ref.features(x)
        ours = encoder(x)
    assert [tuple(f.shape) for f in ours] == [(1, 16, 16, 24, 8), (1, 32, 8, 12, 4), (1, 64, 4, 6, 2)]
    for i, (o, t) in enumerate(zip(ours, (c1d, c2d, c4d))):
        torch.testing.assert_close(o, t, atol=1e-5, rtol=1e-5, msg=f"feature {i}")
    n_decoder = sum(k.split(".")[0] in DECODER for k in ref.state_dict())
    assert any(f"skipped: {n_decoder} tensors of the authors' pre-training decoder" in line for line in report)
    assert any("--backbone unet3d --backbone_layout official" in line for line in report)
    assert torch.equal(net.templates.templates[:, 0], ref.rep_template.detach().float())


def test_every_tensor_is_copied_unchanged(tmp_path, capsys):
    ref = reference()
    src = official_file(ref)
    torch.save(src, tmp_path / "theirs.pt")
    tool.main(str(tmp_path / "theirs.pt"), str(tmp_path / "ours.pt"), backbone="unet3d", size="tiny")
    assert "--backbone unet3d --backbone_layout official" in capsys.readouterr().out
    ours = torch.load(tmp_path / "ours.pt", weights_only=True)
    assert ours[tool.LAYOUT_KEY] == "official"
    encoder_keys = [k for k in ref.state_dict() if k.split(".")[0] in ENCODER]
    assert sorted("backbone.encoder." + k for k in encoder_keys) == sorted(
        k for k in ours if k.startswith("backbone.encoder.")
    )
    for k in encoder_keys:
        assert torch.equal(ours["backbone.encoder." + k], src["state_dict"]["module." + k]), k


def test_missing_renamed_unknown_and_misshapen_keys_are_refused():
    src = official_file(reference())
    del src["state_dict"]["module.conv4d.gn2.bias"]
    src["state_dict"]["module.conv2a.conv_1.weight"] = src["state_dict"].pop("module.conv2a.conv1.weight")
    src["state_dict"]["module.projector.weight"] = torch.zeros(3)
    src["state_dict"]["module.encoder.up4conva.weight"] = torch.zeros(3)  # a decoder name inside the encoder
    with pytest.raises(tool.UnmatchedKeysError) as err:
        tool.convert(src, "unet3d", "tiny")
    text = str(err.value)
    assert "nothing imported" in text
    for key in ("backbone.encoder.conv4d.gn2.bias", "conv2a.conv_1.weight", "projector.weight", "encoder.up4conva"):
        assert key in text, key
    with pytest.raises(tool.UnmatchedKeysError, match=r"conv1a\.weight \(shape \(8, 1, 3, 3, 3\) vs \(32,"):
        tool.convert(official_file(reference()), "unet3d", "small")  # their c = 8 file into the c = 32 network
    both = official_file(reference())
    both["state_dict"]["module.encoder.ds1.bias"] = both["state_dict"]["module.ds1.bias"]
    with pytest.raises(tool.UnmatchedKeysError, match="a second source for backbone.encoder.ds1.bias"):
        tool.convert(both, "unet3d", "tiny")


def test_collection_named_unet_files_are_refused():
    """This collection's own UNet3D names are not the authors': the unet3d import refuses them, listing them."""
    ours = build_backbone("unet3d", "tiny", layout="collection").encoder.state_dict()
    src = {"state_dict": {f"module.encoder.{k}": v for k, v in ours.items()}}
    with pytest.raises(tool.UnmatchedKeysError, match=r"encoder\.stem\.conv_0\.conv\.weight"):
        tool.convert(src, "unet3d", "tiny")


def test_downstream_network_loads_the_import_with_stem_inflation(tmp_path):
    ref = reference()
    state, _ = tool.convert(official_file(ref), "unet3d", "tiny")
    torch.save(state, tmp_path / "ours.pt")
    down = build_backbone("unet3d", "tiny", in_channels=4, out_channels=3, skip_connections=True, layout="official")
    n = load_encoder(down, str(tmp_path / "ours.pt"), prefix="encoder.", source_prefix="backbone.encoder.")
    assert n == len(down.encoder.state_dict()) == sum(k.split(".")[0] in ENCODER for k in ref.state_dict())
    torch.testing.assert_close(down.encoder.conv1a.weight, ref.conv1a.weight.repeat(1, 4, 1, 1, 1) / 4)
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():  # identical modalities: the inflated stem responds as the uni-modal one
        torch.testing.assert_close(down.encoder(x.repeat(1, 4, 1, 1, 1))[-1], ref.features(x)[-1], atol=1e-4, rtol=1e-4)
        assert down(torch.randn(2, 4, 32, 32, 32)).shape == (2, 3, 32, 32, 32)
    wrong = build_backbone("unet3d", "tiny", in_channels=4, out_channels=3, skip_connections=True, layout="collection")
    with pytest.raises(KeyError, match="does not match the encoder"):
        load_encoder(wrong, str(tmp_path / "ours.pt"), prefix="encoder.", source_prefix="backbone.encoder.")


def test_official_layout_structure_and_interface():
    net = build_backbone("unet3d", "small", layout="official")
    enc = net.encoder
    assert isinstance(net, UNet3DOfficial) and [n for n, _ in enc.named_children()] == ENCODER
    assert [getattr(enc, f"ds{i}").stride for i in (1, 2, 3)] == [(2, 2, 2)] * 3
    assert enc.conv1a.out_channels == 32 and enc.conv4d.conv2.out_channels == 256
    assert all(m.num_groups == 8 for m in enc.modules() if isinstance(m, nn.GroupNorm))
    assert {n for n, _ in enc.conv2a.named_children()} == {"gn1", "conv1", "gn2", "conv2"}
    tiny = unet3d_tiny(layout="official", skip_connections=False, proj_dim=16).eval()
    x = torch.randn(2, 1, 32, 48, 16)
    feats = tiny.encode(x)
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 16, 24, 8), (32, 8, 12, 4), (64, 4, 6, 2)]
    assert tiny(x).shape == x.shape and tiny.embed(x).shape == (2, 16)
    # without skips only the deepest feature reaches the decoder; with them the shallow ones do too
    assert torch.equal(tiny.decode(feats), tiny.decode([f + 1.0 for f in feats[:-1]] + [feats[-1]]))
    skip = unet3d_tiny(in_channels=4, out_channels=3, layout="official", skip_connections=True).eval()
    f = skip.encode(torch.randn(1, 4, 32, 32, 32))
    assert not torch.equal(skip.decode(f), skip.decode([g + 1.0 for g in f[:-1]] + [f[-1]]))
    cls = EncoderClassifier(unet3d_tiny(in_channels=4, layout="official"), num_classes=2)
    assert cls(torch.randn(2, 4, 32, 32, 32)).shape == (2, 2)


def test_pretraining_with_the_official_layout():
    torch.manual_seed(0)
    net = BrainMVP(build_backbone("unet3d", "tiny", layout="official"), ["t1", "t2", "flair"], (40, 40, 40))
    boxes = translation_map(torch.tensor([[0, 0, 0], [8, 8, 8]]))
    out = net(torch.rand(2, 2, 32, 32, 32), torch.tensor([[0, 1], [2, 0]]), boxes)
    assert out["pred"].shape == (2, 1, 32, 32, 32)
    (out["loss_cmr"] + out["loss_md"] + out["loss_cl"]).backward()
    assert net.encoder.conv1a.weight.grad.abs().sum() > 0


def test_collection_layout_unchanged():
    """Keys, shapes and sizes of the collection UNet3D as before the official layout existed (measured at HEAD)."""
    expected = {  # (factory, skips): (keys, parameters, encoder parameters, listing hash)
        (unet3d, True): (58, 22751937, 14134944, "ca74d28f655c5c36"),
        (unet3d, False): (54, 20227777, 14134944, "d30570f4fd92737e"),
        (unet3d_tiny, True): (46, 353457, 220392, "fb9f36cdafb22f1a"),
        (unet3d_tiny, False): (43, 314481, 220392, "1d5114452564336b"),
    }
    for (factory, skips), (keys, params, enc_params, digest) in expected.items():
        for net in (factory(skip_connections=skips), factory(skip_connections=skips, layout="collection")):
            state = net.state_dict()
            listing = ";".join(f"{k}:{tuple(v.shape)}" for k, v in state.items())
            assert len(state) == keys and sum(p.numel() for p in net.parameters()) == params
            assert sum(p.numel() for p in net.encoder.parameters()) == enc_params
            assert hashlib.sha256(listing.encode()).hexdigest().startswith(digest)
    assert (
        build_backbone("unet3d", "tiny", layout="collection").state_dict().keys()
        == unet3d_tiny(skip_connections=False).state_dict().keys()
    )


def test_layout_arguments_are_checked():
    with pytest.raises(ValueError, match="layout"):
        unet3d_tiny(layout="theirs")
    with pytest.raises(ValueError, match="layout"):
        build_backbone("unet3d", "tiny", layout="theirs")
    with pytest.raises(ValueError, match="layout"):
        build_backbone("uniformer", "tiny", layout="theirs")
    assert isinstance(build_backbone("unet3d", "tiny", layout="official"), UNet3DOfficial)
