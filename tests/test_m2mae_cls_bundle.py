"""m2mae_cls through the real runner: linear probe leaves the encoder untouched, fine-tuning changes it."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch
from conftest import REPO, TINY_VIT, run_bundle

from common.networks.m2mae import m2mae_vit_tiny

TRAIN = "bundles/m2mae_cls/configs/train.json"
TINY = [
    "--demo",
    "{'num_cases': 6, 'spacing': 3.0}",
    "--resize",
    "[32,32,32]",
    *TINY_VIT,
    "--num_workers",
    "0",
]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("m2mae") / "model.pt"
    torch.save(m2mae_vit_tiny(in_channels=4, img_size=32).state_dict(), path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("probe", [True, False])
def test_probe_freezes_and_finetune_updates_the_encoder(tmp_path, pretrained, probe):
    out = tmp_path / "run"
    run_bundle(
        TRAIN,
        *TINY,
        "--epochs",
        "2",
        "--linear_probe",
        str(probe),
        "--pretrained_ckpt",
        str(pretrained),
        "--ckpt_dir",
        str(out / "models"),
        "--output_dir",
        str(out / "logs"),
    )
    before = torch.load(pretrained, weights_only=True)
    after = torch.load(out / "models" / "checkpoints" / "checkpoint_epoch=2.pt", weights_only=True)["network"]
    same = all(torch.equal(before[k], after[k]) for k in after if k.startswith("vit."))
    assert same is probe
    assert not torch.equal(
        after["head.weight"],
        torch.load(out / "models" / "checkpoints" / "checkpoint_epoch=1.pt", weights_only=True)["network"][
            "head.weight"
        ],
    )
    if probe:
        run_bundle(
            [TRAIN, "bundles/m2mae_cls/configs/evaluate.json"],
            *TINY,
            "--ckpt_dir",
            str(out / "models"),
            "--output_dir",
            str(out / "eval"),
        )
        rows = dict(csv.reader((out / "eval" / "metrics.csv").open()))
        assert set(rows) == {"val_auc", "val_acc", "val_f1"}
        run_bundle(
            "bundles/m2mae_cls/configs/inference.json",
            *TINY,
            "--ckpt_dir",
            str(out / "models"),
            "--output_dir",
            str(out / "inf"),
        )
        assert list(csv.reader((out / "inf" / "predictions.csv").open()))


@pytest.mark.slow
def test_wrong_encoder_keys_fail_with_their_names(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"encoder.stem.weight": torch.zeros(1)}, bad)
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        TRAIN,
        *TINY,
        "--epochs",
        "1",
        "--pretrained_ckpt",
        str(bad),
        "--ckpt_dir",
        str(tmp_path / "m"),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "vit.patch_embedding.patch_embeddings.weight" in proc.stderr
