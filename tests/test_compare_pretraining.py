"""tools/compare_pretraining.py builds the right bundle commands: both arms of a task get the same budget and
seed, the pre-trained arm the checkpoint and the scratch arm ``""``; the 2D mrm runs get no 3D keys; one
pre-training serves several downstream tasks (or none runs with ``--pretrained_ckpt``). No training: the
runner call ``_run`` is replaced by a recorder that writes the metrics file an evaluation would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
import compare_pretraining as cp  # noqa: E402

MRM_TASKS = ["mrm_aptos", "mrm_rfmid", "mrm_palm", "mrm_crp", "mrm_glioma"]
KEYS_3D = {"roi_size", "hidden_size", "mlp_dim", "num_heads", "backbone_size", "size", "num_layers", "image_size"}


@pytest.fixture
def calls(monkeypatch):
    """Record every ``_run``; an evaluation writes metrics.csv with a value that tells the arms apart."""
    recorded = []

    def fake_run(config_files, overrides, log):
        recorded.append({"files": [Path(f) for f in config_files], "overrides": dict(overrides), "log": log})
        if any(f.endswith("evaluate.json") for f in config_files):
            out = Path(overrides["output_dir"])
            out.mkdir(parents=True)
            value = 0.75 if "_pretrained" in out.parent.name else 0.5
            (out / "metrics.csv").write_text(f"val_metric,{value}\nval_other,0.1\n")
        return {"wall_s": 2.0, "cpu_s": 1.0}

    monkeypatch.setattr(cp, "_run", fake_run)
    return recorded


def _bundle(call) -> str:
    return call["files"][0].parent.parent.name


def _split(calls):
    pre = [c for c in calls if len(c["files"]) == 1 and "pretrained_ckpt" not in c["overrides"]]
    train = [c for c in calls if len(c["files"]) == 1 and "pretrained_ckpt" in c["overrides"]]
    evals = [c for c in calls if len(c["files"]) == 2]
    return pre, train, evals


def test_mrm_pretrains_once_for_five_tasks_and_both_arms_match(calls, tmp_path):
    report = cp.compare(
        pretrain="mrm",
        downstream=",".join(MRM_TASKS),
        work_dir=str(tmp_path),
        pretrain_epochs=7,
        finetune_epochs=3,
        seed=5,
    )
    pre, train, evals = _split(calls)
    assert len(pre) == 1 and _bundle(pre[0]) == "mrm" and pre[0]["files"][0].name == "train.json"
    assert pre[0]["overrides"]["epochs"] == 7 and pre[0]["overrides"]["seed"] == 5
    ckpt = str(Path(pre[0]["overrides"]["ckpt_dir"]) / "model.pt")
    assert calls[0] is pre[0]  # pre-training first, before any fine-tuning
    assert len(train) == 10 and len(evals) == 10
    for task in MRM_TASKS:
        arms = [c for c in train if _bundle(c) == task]
        assert [c["overrides"]["pretrained_ckpt"] for c in arms] == [ckpt, ""]
        for c in arms:
            assert c["overrides"]["epochs"] == 3 and c["overrides"]["seed"] == 5
        assert arms[0]["overrides"]["ckpt_dir"] != arms[1]["overrides"]["ckpt_dir"]
        # each evaluation reads the model its own arm trained
        ev = [c for c in evals if _bundle(c) == task]
        assert [c["files"][1].name for c in ev] == ["evaluate.json", "evaluate.json"]
        assert [c["overrides"]["ckpt_dir"] for c in ev] == [c["overrides"]["ckpt_dir"] for c in arms]
        assert report["tasks"][task]["results"]["pretrained"]["val_metric"] == 0.75
        assert report["tasks"][task]["results"]["scratch"]["val_metric"] == 0.5
        assert report["tasks"][task]["settings"]["finetune_epochs"] == 3
        assert json.loads((tmp_path / f"comparison_{task}.json").read_text())["results"]["scratch"]["val_metric"] == 0.5
    for c in calls:  # 2D: no crop or encoder-size key reaches any mrm config
        assert not KEYS_3D & set(c["overrides"]), c["overrides"]
    assert json.loads((tmp_path / "comparison.json").read_text())["tasks"].keys() == set(MRM_TASKS)


def test_existing_checkpoint_skips_pretraining_and_per_task_budgets(calls, tmp_path):
    ckpt = tmp_path / "given.pt"
    ckpt.write_bytes(b"x")
    cp.compare(
        pretrain="mrm",
        downstream=("mrm_palm", "mrm_glioma"),
        work_dir=str(tmp_path / "w"),
        finetune_epochs={"mrm_palm": 4, "mrm_glioma": 2},
        pretrained_ckpt=str(ckpt),
    )
    pre, train, _ = _split(calls)
    assert pre == []
    assert [(_bundle(c), c["overrides"]["epochs"], c["overrides"]["pretrained_ckpt"]) for c in train] == [
        ("mrm_palm", 4, str(ckpt)),
        ("mrm_palm", 4, ""),
        ("mrm_glioma", 2, str(ckpt)),
        ("mrm_glioma", 2, ""),
    ]


def test_refusals(calls, tmp_path):
    with pytest.raises(SystemExit, match="3D knobs"):
        cp.compare(pretrain="mrm", downstream="mrm_aptos", work_dir=str(tmp_path), roi_size=64)
    with pytest.raises(SystemExit, match="3D knobs"):
        cp.compare(pretrain="mrm", downstream="mrm_aptos", work_dir=str(tmp_path), size="base")
    with pytest.raises(SystemExit, match="not a downstream bundle of mrm"):
        cp.compare(pretrain="mrm", downstream="m2mae_seg", work_dir=str(tmp_path))
    with pytest.raises(SystemExit, match="does not exist"):
        cp.compare(pretrain="mrm", downstream="mrm_aptos", work_dir=str(tmp_path), pretrained_ckpt="/nonexistent.pt")
    assert calls == []


def test_3d_behaviour_unchanged(calls, tmp_path):
    """m2mae -> m2mae_seg, as its docs run it: crop and sizes reach both stages, data too."""
    report = cp.compare(work_dir=str(tmp_path), pretrain_epochs=2, finetune_epochs=1, dataset_dir="/data/x")
    pre, train, evals = _split(calls)
    assert len(pre) == 1 and _bundle(pre[0]) == "m2mae"
    for c in pre + train + evals:
        o = c["overrides"]
        assert o["roi_size"] == [64, 64, 64] and o["hidden_size"] == 96 and o["num_heads"] == 4
        assert o["dataset_dir"] == "/data/x"
    assert [c["overrides"]["pretrained_ckpt"] for c in train] == [str(tmp_path / "m2mae" / "models" / "model.pt"), ""]
    assert report["downstream"] == "m2mae_seg" and set(report["results"]) == {"pretrained", "scratch"}
    assert report["settings"]["roi_size"] == [64, 64, 64] and report["settings"]["size"] == "tiny"


def test_run_passes_empty_checkpoint_as_its_own_argument(monkeypatch, tmp_path):
    """The scratch arm's ``""`` reaches the runner as an empty argument (not dropped, not the text '""')."""
    seen = {}

    def fake(cmd, **kwargs):
        seen["cmd"] = cmd
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(cp.subprocess, "run", fake)
    times = cp._run(["a/train.json"], {"pretrained_ckpt": "", "epochs": 3, "roi_size": [8, 8]}, tmp_path / "log")
    cmd = seen["cmd"]
    assert cmd[1:6] == ["-m", "monai.bundle", "run", "--config_file", "['a/train.json']"]
    assert cmd[6:] == ["--pretrained_ckpt", "", "--epochs", "3", "--roi_size", "[8, 8]"]
    assert set(times) == {"wall_s", "cpu_s"}
