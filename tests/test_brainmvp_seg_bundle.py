"""brainmvp_seg through the real runner: pre-trained encoder + templates, from scratch, evaluate, infer."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import run_bundle, run_dirs

from common.networks.brainmvp import build_backbone

TRAIN = "bundles/brainmvp_seg/configs/train.json"
EVALUATE = "bundles/brainmvp_seg/configs/evaluate.json"
INFERENCE = "bundles/brainmvp_seg/configs/inference.json"
TINY = ["--backbone_size", "tiny", "--roi_size", "[32,32,32]", "--num_workers", "0", "--sw_batch_size", "1"]


@pytest.fixture(scope="module")
def pretrained(tiny_brainmvp_ckpt) -> Path:
    return tiny_brainmvp_ckpt


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_dataset, pretrained) -> Path:
    out = tmp_path_factory.mktemp("brainmvp_seg")
    proc = run_bundle(
        TRAIN,
        *TINY,
        "--dataset_dir",
        str(demo_dataset.parent),
        "--epochs",
        "2",
        "--pretrained_ckpt",
        str(pretrained),
        *run_dirs(out / "models", out / "logs"),
    )
    (out / "train.log").write_text(proc.stdout + proc.stderr)
    return out


@pytest.mark.slow
def test_train_with_templates_and_inflated_encoder(trained):
    log = (trained / "train.log").read_text()
    n = len(
        build_backbone("uniformer", "tiny", in_channels=4, out_channels=3, skip_connections=True).encoder.state_dict()
    )
    assert f"loaded {n} of {n} pre-trained encoder tensors" in log and "inflated" in log
    assert "loaded frozen templates for ['t1', 't1ce', 't2', 'flair']" in log
    assert (trained / "models" / "model.pt").is_file()


@pytest.mark.slow
def test_from_scratch_switches_augmentation_off_with_a_log_line(tmp_path, demo_dataset):
    proc = run_bundle(
        TRAIN,
        *TINY,
        "--dataset_dir",
        str(demo_dataset.parent),
        "--epochs",
        "1",
        "--pretrained_ckpt",
        "",
        *run_dirs(tmp_path / "models", tmp_path / "logs"),
    )
    log = proc.stdout + proc.stderr
    assert "template augmentation is off" in log and "training from scratch" in log


@pytest.mark.slow
def test_evaluate_and_inference(trained, demo_dataset, tmp_path):
    run_bundle(
        [TRAIN, EVALUATE],
        *TINY,
        "--dataset_dir",
        str(demo_dataset.parent),
        *run_dirs(trained / "models", trained / "eval"),
    )
    rows = dict(csv.reader((trained / "eval" / "metrics.csv").open()))
    assert {"val_dice_tc", "val_dice_wt", "val_dice_et", "val_hd95_wt"} <= set(rows)
    run_bundle(
        INFERENCE,
        *TINY,
        "--dataset_dir",
        str(demo_dataset.parent),
        *run_dirs(trained / "models", tmp_path / "seg"),
    )
    testing = json.loads(demo_dataset.read_text())["testing"]
    outputs = sorted((tmp_path / "seg").glob("*.nii.gz"))
    assert len(outputs) == len(testing)
    src = nib.load(demo_dataset.parent / testing[0]["t1"])
    seg = nib.load(outputs[0])
    assert seg.shape == src.shape and np.allclose(seg.affine, src.affine, atol=1e-4)
