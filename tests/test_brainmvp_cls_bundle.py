"""brainmvp_cls through the real runner: train with templates, evaluate (AUC/acc/F1), inference CSV."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import run_bundle, run_dirs

from common.networks.brainmvp import BrainMVP, build_backbone

TRAIN = "bundles/brainmvp_cls/configs/train.json"
TINY = ["--backbone_size", "tiny", "--resize", "[40,40,40]", "--roi_size", "[32,32,32]", "--num_workers", "0"]


@pytest.mark.slow
def test_train_evaluate_infer(tmp_path):
    torch.manual_seed(0)
    pre = BrainMVP(build_backbone("uniformer", "tiny"), ["t1", "t1ce", "t2", "flair"], (96, 96, 96))
    torch.save(pre.state_dict(), tmp_path / "pre.pt")
    # the demo set (no dataset_dir): its grade lives in class_label, which label_key picks by default;
    # 6 subjects leave 2 for validation, one of each grade, so the AUC is defined
    demo = ["--demo", "{'num_cases': 6, 'spacing': 3.0}"]
    common = [*TINY, *demo, "--ckpt_dir", str(tmp_path / "models")]
    proc = run_bundle(
        TRAIN,
        *common,
        "--epochs",
        "2",
        "--pretrained_ckpt",
        str(tmp_path / "pre.pt"),
        "--output_dir",
        str(tmp_path / "logs"),
    )
    log = proc.stdout + proc.stderr
    assert "loaded frozen templates" in log and "val_auc" in log
    run_bundle([TRAIN, "bundles/brainmvp_cls/configs/evaluate.json"], *common, "--output_dir", str(tmp_path / "eval"))
    rows = dict(csv.reader((tmp_path / "eval" / "metrics.csv").open()))
    assert set(rows) == {"val_auc", "val_acc", "val_f1"} and all(0 <= float(v) <= 1 for v in rows.values())
    run_bundle(
        "bundles/brainmvp_cls/configs/inference.json",
        *TINY,
        *demo,
        *run_dirs(tmp_path / "models", tmp_path / "inf"),
    )
    preds = list(csv.reader((tmp_path / "inf" / "predictions.csv").open()))
    assert preds and all(abs(float(r[1]) + float(r[2]) - 1) < 1e-5 for r in preds)
