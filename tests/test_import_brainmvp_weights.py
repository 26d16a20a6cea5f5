"""Importing the BrainMVP authors' checkpoint layout by key mapping, on synthetic state dicts (no download)."""

import sys

import pytest
import torch
from conftest import REPO
from test_unet3d_official import ENCODER, reference
from test_uniformer_official import TINY, OfficialUniFormer, randomised

from common.engines.checkpoint import load_encoder
from common.networks.brainmvp import build_backbone, load_templates

sys.path.insert(0, str(REPO / "tools"))
import import_brainmvp_weights as tool  # noqa: E402

DEFAULT_PREFIXES = {"uniformer": "uniformer.", "unet3d": ""}  # where their released files keep the encoder


def official(backbone: str, canvas=(24, 24, 16), prefix: str | None = None) -> dict:
    """A file shaped like theirs: DDP 'module.' keys, rep_template [8, *canvas], and the encoder with the authors'
    own names (reference re-implementations of their networks, tiny widths): their UniFormer under
    ``uniformer.``, their UNet's encoder modules at the top level."""
    if backbone == "uniformer":
        encoder = randomised(OfficialUniFormer(**TINY)).state_dict()
    else:
        encoder = {k: v for k, v in reference().state_dict().items() if k.split(".")[0] in ENCODER}
    prefix = DEFAULT_PREFIXES[backbone] if prefix is None else prefix
    state = {f"module.{prefix}{k}": v.clone() for k, v in encoder.items()}
    state["module.rep_template"] = torch.arange(8.0).view(8, 1, 1, 1).expand(8, *canvas).clone()
    return {"epoch": 1500, "state_dict": state}


def ours_for(backbone: str, key: str, value: torch.Tensor, prefix: str) -> tuple[str, torch.Tensor]:
    """Where the tool must put one source tensor, and how it must look there."""
    name = key[len(f"module.{prefix}") :]
    if backbone == "uniformer":
        return "backbone.encoder." + tool.official_uniformer_name(name), tool.official_uniformer_tensor(value)
    return "backbone.encoder." + name, value


@pytest.mark.parametrize("backbone", ["uniformer", "unet3d"])
def test_official_layout_imports_and_feeds_the_downstream_loaders(tmp_path, backbone, capsys):
    src = official(backbone)
    torch.save(src, tmp_path / "official.pt")
    tool.main(str(tmp_path / "official.pt"), str(tmp_path / "ours.pt"), backbone=backbone, size="tiny")
    printed = capsys.readouterr().out
    ours = torch.load(tmp_path / "ours.pt", weights_only=True)
    layout = "official"
    assert ours[tool.LAYOUT_KEY] == layout and f"--backbone {backbone} --backbone_layout {layout}" in printed
    prefix = DEFAULT_PREFIXES[backbone]
    n = 0
    for key, value in src["state_dict"].items():
        if key.startswith(f"module.{prefix}") and key != "module.rep_template":
            name, expected = ours_for(backbone, key, value, prefix)
            assert torch.equal(ours[name], expected), key
            n += 1
    assert n == sum(k.startswith("backbone.encoder.") for k in ours)  # every encoder tensor came from the source
    assert ours["templates._extra_state"]["modalities"] == ["flair", "t1", "t1ce", "t2", "mra", "pd", "dwi", "adc"]
    templates, found = load_templates(str(tmp_path / "ours.pt"), ["t1", "t1ce", "t2", "flair"])
    assert found == ["t1", "t1ce", "t2", "flair"]
    assert [templates.templates[i].unique().item() for i in range(4)] == [1.0, 2.0, 3.0, 0.0]
    down = build_backbone(backbone, "tiny", in_channels=4, out_channels=3, skip_connections=True, layout=layout)
    assert load_encoder(down, str(tmp_path / "ours.pt"), prefix="encoder.", source_prefix="backbone.encoder.") > 0
    # a downstream network left in the collection layout refuses the weights
    wrong = build_backbone(backbone, "tiny", in_channels=4, out_channels=3, skip_connections=True, layout="collection")
    with pytest.raises(KeyError, match="does not match the encoder"):
        load_encoder(wrong, str(tmp_path / "ours.pt"), prefix="encoder.", source_prefix="backbone.encoder.")


def test_pretraining_model_nesting_is_accepted_and_its_decoder_skipped():
    """Their pre-training script's RecModel keeps the UniFormer under encoder.uniformer. next to its decoder."""
    src = official("uniformer", prefix="encoder.uniformer.")
    src["state_dict"]["module.decoder.decoder5.transp_conv.conv.weight"] = torch.zeros(64, 48, 2, 2, 2)
    src["state_dict"]["module.decoder.proj1.proj.weight"] = torch.zeros(64, 1, 3, 3, 3)
    src["state_dict"]["module.decoder.out_1.conv.conv.weight"] = torch.zeros(1, 64, 1, 1, 1)
    plain = tool.convert(official("uniformer"), "uniformer", "tiny")[0]
    state, report = tool.convert(src, "uniformer", "tiny")
    assert all(torch.equal(state[k], plain[k]) for k in plain if k.startswith("backbone.encoder."))
    assert any("skipped: 3 tensors of the authors' pre-training decoder" in line for line in report)


def test_unmatched_keys_are_refused_and_listed(tmp_path):
    src = official("uniformer")
    src["state_dict"]["module.uniformer.extra_head.weight"] = torch.zeros(3)
    src["state_dict"]["module.uniformer.blocks3.0.gamma_1"] = torch.zeros(48)  # layer scale: not in the network
    src["state_dict"]["module.decoder.final.weight"] = torch.zeros(3)
    with pytest.raises(tool.UnmatchedKeysError) as err:
        tool.convert(torch.load(_save(src, tmp_path), weights_only=True), "uniformer", "tiny")
    text = str(err.value)
    assert "uniformer.extra_head.weight" in text and "decoder.final.weight" in text and "nothing imported" in text
    assert "uniformer.blocks3.0.gamma_1" in text


def test_collection_names_and_missing_or_misshapen_tensors_are_refused():
    """This collection's own UniFormer names are not the authors': refused, listing them; so are gaps and shapes."""
    ours = build_backbone("uniformer", "tiny", layout="collection").encoder.state_dict()
    src = {"state_dict": {f"module.uniformer.{k}": v for k, v in ours.items()}}
    with pytest.raises(tool.UnmatchedKeysError, match=r"uniformer\.embeds\.0\.0\.weight"):
        tool.convert(src, "uniformer", "tiny")
    src = official("uniformer")
    del src["state_dict"]["module.uniformer.norm.running_var"]
    src["state_dict"]["module.uniformer.patch_embed1.proj.weight"] = torch.zeros(16, 1, 4, 4, 4)
    with pytest.raises(tool.UnmatchedKeysError) as err:
        tool.convert(src, "uniformer", "tiny")
    assert "backbone.encoder.norm.running_var" in str(err.value) and "patch_embed1.proj.weight (shape" in str(err.value)


def test_unet_import_refuses_collection_and_renamed_names():
    """The unet3d import maps the authors' UNet only: this collection's UNet3D names and renamed ones are listed."""
    ours = build_backbone("unet3d", "tiny", layout="collection").encoder.state_dict()
    with pytest.raises(tool.UnmatchedKeysError, match="UNet, their RecModel, onto the official-layout"):
        tool.convert({"state_dict": {f"module.encoder.{k}": v for k, v in ours.items()}}, "unet3d", "tiny")
    src = official("unet3d")
    src["state_dict"] = {k.replace(".conv", ".conv_official"): v for k, v in src["state_dict"].items()}
    with pytest.raises(tool.UnmatchedKeysError, match=r"conv_official1a\.weight"):
        tool.convert(src, "unet3d", "tiny")


def _save(obj, tmp_path):
    torch.save(obj, tmp_path / "x.pt")
    return tmp_path / "x.pt"
