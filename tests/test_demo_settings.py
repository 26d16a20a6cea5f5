"""The demo switch: a run given real data gets the paper's settings, the embedded demo gets its own."""

import ast
import json
from pathlib import Path

import pytest
from conftest import TINY_VIT, run_bundle, run_dirs
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]
SWITCHED = sorted(
    p
    for p in REPO.glob("bundles/*/configs/*.json")
    if "if @demo_data else" in p.read_text() and p.name != "metadata.json"
)


def _parse(path: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(path))
    for k, v in overrides.items():
        parser[k] = v
    return parser


def _switched_keys(path: Path) -> dict[str, str]:
    """Top-level (and one level down) keys whose value is ``"$<demo> if @demo_data else <paper>"``."""
    out = {}
    for key, value in json.loads(path.read_text()).items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, v in items:
            if isinstance(v, str) and v.startswith("$") and " if @demo_data else " in v:
                out[key if sub is None else f"{key}#{sub}"] = v
    return out


@pytest.mark.parametrize("path", SWITCHED, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_real_data_gets_the_paper_column_and_the_demo_its_own(path):
    keys = _switched_keys(path)
    assert keys, path
    real = _parse(path, datalist="/data/datalist.json")  # every switched config reads a datalist
    demo = _parse(path)
    assert real.get_parsed_content("demo_data") is False and demo.get_parsed_content("demo_data") is True
    for key, expr in keys.items():
        demo_src, paper_src = expr[1:].split(" if @demo_data else ")
        if "@" in paper_src or "@" in demo_src:
            continue  # depends on other knobs; their own entries are checked
        assert real.get_parsed_content(key) == ast.literal_eval(paper_src.strip()), key
        assert demo.get_parsed_content(key) == ast.literal_eval(demo_src.strip()), key


def test_m2mae_real_runs_keep_the_papers_network_and_loss_balance():
    real = _parse(REPO / "bundles/m2mae/configs/train.json", dataset_dir="/data/brats")
    assert real.get_parsed_content("roi_size") == [96, 96, 96]
    assert [real.get_parsed_content(k) for k in ("hidden_size", "mlp_dim", "num_heads", "num_layers")] == [
        768,
        3072,
        12,
        12,
    ]
    assert real.get_parsed_content("learning_rate") == 1.5e-4
    assert real.get_parsed_content("loss_weights") == {"loss_mse": 1.0, "loss_pbt": 1.0, "loss_adv": 1.0}
    demo = _parse(REPO / "bundles/m2mae/configs/train.json")
    assert demo.get_parsed_content("loss_weights")["loss_adv"] == 0.01


def test_a_short_m2mae_seg_demo_run_still_validates_and_writes_a_model():
    """model.pt is written by validation: a demo run shorter than the demo's 10-epoch interval validates at its end."""
    path = REPO / "bundles/m2mae_seg/configs/train.json"
    assert _parse(path).get_parsed_content("val_interval") == 10
    assert _parse(path, epochs=3).get_parsed_content("val_interval") == 3
    assert _parse(path, epochs=3, datalist="/d.json").get_parsed_content("val_interval") == 1


def test_the_m2mae_demo_network_is_the_one_its_downstream_demos_build():
    keys = ("roi_size", "hidden_size", "mlp_dim", "num_heads")
    pre = _parse(REPO / "bundles/m2mae/configs/train.json")
    for b in ("m2mae_seg", "m2mae_cls"):
        for cfg in ("train", "inference"):
            down = _parse(REPO / f"bundles/{b}/configs/{cfg}.json")
            assert [down.get_parsed_content(k) for k in keys] == [pre.get_parsed_content(k) for k in keys], (b, cfg)


def test_the_brainmvp_demo_backbone_is_the_one_its_downstream_demos_build():
    keys = ("backbone", "backbone_size", "backbone_layout")
    pre = _parse(REPO / "bundles/brainmvp/configs/train.json")
    assert pre.get_parsed_content("backbone_size") == "tiny"
    assert (
        _parse(REPO / "bundles/brainmvp/configs/train.json", datalist="/d.json").get_parsed_content("backbone_size")
        == "small"
    )
    for b in ("brainmvp_seg", "brainmvp_cls"):
        for cfg in ("train", "inference"):
            down = _parse(REPO / f"bundles/{b}/configs/{cfg}.json")
            assert [down.get_parsed_content(k) for k in keys] == [pre.get_parsed_content(k) for k in keys], (b, cfg)


@pytest.mark.slow
def test_the_m2mae_demo_chain_runs_through_the_bundle_runner(tmp_path, monkeypatch):
    """No data of the user's: m2mae pre-trains on the demo, m2mae_seg fine-tunes from it (contract checked) and
    segments the demo's testing list, each on its demo branch (sizes shrunk by overrides so CI stays short)."""
    monkeypatch.setenv("MMPT_CACHE_DIR", str(tmp_path / "cache"))
    demo = ["--demo", "{'num_cases': 4, 'spacing': 3.0}"]
    pre = run_bundle("bundles/m2mae/configs/train.json", *TINY_VIT, *demo, "--epochs", "1",
                     *run_dirs(tmp_path / "pre", tmp_path / "pre_logs"))  # fmt: skip
    assert "training: 3 case(s) from the embedded demo set" in pre.stdout + pre.stderr
    assert (tmp_path / "pre" / "model.pt").is_file()
    ckpt = str(tmp_path / "pre" / "model.pt")
    seg = run_bundle("bundles/m2mae_seg/configs/train.json", *TINY_VIT, *demo, "--epochs", "1", "--val_interval", "1",
                     "--pretrained_ckpt", ckpt, *run_dirs(tmp_path / "seg", tmp_path / "seg_logs"))  # fmt: skip
    assert "loaded 161 of 161 pre-trained encoder tensors" in seg.stdout + seg.stderr
    run_bundle("bundles/m2mae_seg/configs/inference.json", *TINY_VIT, *demo,
               *run_dirs(tmp_path / "seg", tmp_path / "inf"))  # fmt: skip
    assert len(list((tmp_path / "inf").glob("*_seg.nii.gz"))) >= 1
