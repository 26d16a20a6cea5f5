"""Importing the BrainMVP authors' checkpoint layout by key mapping, on synthetic state dicts (no download)."""

import sys

import pytest
import torch
from conftest import REPO

from common.engines.checkpoint import load_encoder
from common.networks.brainmvp import build_backbone, load_templates

sys.path.insert(0, str(REPO / "tools"))
import import_brainmvp_weights as tool  # noqa: E402


def official(backbone: str, canvas=(24, 24, 16)) -> dict:
    """A file shaped like theirs: DDP 'module.' keys, encoder under uniformer./encoder., rep_template [8, *canvas]."""
    encoder = build_backbone(backbone, "tiny").encoder.state_dict()
    prefix = tool.ENCODER_PREFIXES[backbone]
    state = {f"module.{prefix}{k}": v + 1.0 if v.is_floating_point() else v for k, v in encoder.items()}
    state["module.rep_template"] = torch.arange(8.0).view(8, 1, 1, 1).expand(8, *canvas).clone()
    return {"epoch": 1500, "state_dict": state}


@pytest.mark.parametrize("backbone", ["uniformer", "unet3d"])
def test_official_layout_imports_and_feeds_the_downstream_loaders(tmp_path, backbone):
    src = official(backbone)
    torch.save(src, tmp_path / "official.pt")
    tool.main(str(tmp_path / "official.pt"), str(tmp_path / "ours.pt"), backbone=backbone, size="tiny")
    ours = torch.load(tmp_path / "ours.pt", weights_only=True)
    prefix = tool.ENCODER_PREFIXES[backbone]
    for key, value in src["state_dict"].items():
        if key.startswith(f"module.{prefix}"):
            assert torch.equal(ours["backbone.encoder." + key[len(f"module.{prefix}") :]], value)
    assert ours["templates._extra_state"]["modalities"] == ["flair", "t1", "t1ce", "t2", "mra", "pd", "dwi", "adc"]
    templates, found = load_templates(str(tmp_path / "ours.pt"), ["t1", "t1ce", "t2", "flair"])
    assert found == ["t1", "t1ce", "t2", "flair"]
    assert [templates.templates[i].unique().item() for i in range(4)] == [1.0, 2.0, 3.0, 0.0]
    down = build_backbone(backbone, "tiny", in_channels=4, out_channels=3, skip_connections=True)
    assert load_encoder(down, str(tmp_path / "ours.pt"), prefix="encoder.", source_prefix="backbone.encoder.") > 0


def test_unmatched_keys_are_refused_and_listed(tmp_path):
    src = official("uniformer")
    src["state_dict"]["module.uniformer.extra_head.weight"] = torch.zeros(3)
    src["state_dict"]["module.decoder.final.weight"] = torch.zeros(3)
    with pytest.raises(tool.UnmatchedKeysError) as err:
        tool.convert(torch.load(_save(src, tmp_path), weights_only=True), "uniformer", "tiny")
    text = str(err.value)
    assert "uniformer.extra_head.weight" in text and "decoder.final.weight" in text and "nothing imported" in text


def _save(obj, tmp_path):
    torch.save(obj, tmp_path / "x.pt")
    return tmp_path / "x.pt"
