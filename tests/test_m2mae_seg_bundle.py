"""The m2mae_seg bundle through the real runner: pre-trained start, train, evaluate, infer (NIfTI and DICOM)."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import REPO, TINY_VIT, bundle_command, run_bundle, run_dirs

TRAIN = "bundles/m2mae_seg/configs/train.json"
EVALUATE = "bundles/m2mae_seg/configs/evaluate.json"
INFERENCE = "bundles/m2mae_seg/configs/inference.json"
TINY = [
    *TINY_VIT,
    "--feature_size",
    "8",
    "--num_workers",
    "0",
    "--sw_batch_size",
    "1",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_dataset, tiny_m2mae_ckpt) -> Path:
    out = tmp_path_factory.mktemp("m2mae_seg")
    proc = run_bundle(
        TRAIN,
        *TINY,
        "--dataset_dir",
        str(demo_dataset.parent),
        "--epochs",
        "2",
        *run_dirs(out / "models", out / "logs"),
        "--pretrained_ckpt",
        str(tiny_m2mae_ckpt),
    )
    (out / "train.log").write_text(proc.stdout + proc.stderr)
    return out


@pytest.mark.slow
def test_train_loads_the_pretrained_encoder_and_saves_the_best_model(trained):
    log = (trained / "train.log").read_text()
    assert "loaded 161 of 161 pre-trained encoder tensors ('vit.*')" in log
    assert "val_mean_dice" in log
    state = torch.load(trained / "models" / "model.pt", weights_only=True)
    assert "vit.patch_embedding.patch_embeddings.weight" in state and "out.conv.conv.weight" in state


@pytest.mark.slow
def test_mismatched_pretrained_checkpoint_fails_naming_the_keys(tmp_path, demo_dataset):
    bad = tmp_path / "bad.pt"
    torch.save({"encoder.weight": torch.zeros(1)}, bad)
    cmd = bundle_command(
        TRAIN,
        *TINY,
        "--dataset_dir",
        str(demo_dataset.parent),
        "--epochs",
        "1",
        "--ckpt_dir",
        str(tmp_path / "m"),
        "--pretrained_ckpt",
        str(bad),
    )
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "does not match the encoder" in proc.stderr and "vit.patch_embedding.patch_embeddings.weight" in proc.stderr
    assert not (tmp_path / "m" / "model.pt").exists()


@pytest.mark.slow
def test_evaluate_writes_dice_and_hd95_per_region(trained, demo_dataset):
    run_bundle(
        [TRAIN, EVALUATE],
        *TINY,
        "--dataset_dir",
        str(demo_dataset.parent),
        *run_dirs(trained / "models", trained / "eval"),
    )
    rows = dict(csv.reader((trained / "eval" / "metrics.csv").open()))
    for region in ("tc", "wt", "et"):
        assert 0.0 <= float(rows[f"val_dice_{region}"]) <= 1.0
        assert f"val_hd95_{region}" in rows
    per_case = list(csv.reader((trained / "eval" / "val_dice_wt_raw.csv").open()))
    validation = json.loads(demo_dataset.read_text())["validation"]
    assert len(per_case) == 1 + len(validation) and per_case[0] == ["filename", "value", "mean"]
    # rows named by subject id, columns by region (not class0/1/2)
    regions = list(csv.reader((trained / "eval" / "val_mean_dice_raw.csv").open()))
    assert regions[0] == ["filename", "TC", "WT", "ET", "mean"]
    assert sorted(r[0] for r in regions[1:]) == sorted(e["subject_id"] for e in validation)


def _infer(trained: Path, datalist: Path, out: Path) -> list[Path]:
    """Run inference.json with the trained tiny model on ``datalist``; the written segmentations."""
    run_bundle(INFERENCE, *TINY, "--datalist", str(datalist), *run_dirs(trained / "models", out))
    return list(out.glob("*.nii.gz"))


def _write_case(folder: Path, shape, affine, rng) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"subject_id": folder.name}
    for m in ("t1", "t1ce", "t2", "flair"):
        path = folder / f"{folder.name}_{m}.nii.gz"
        nib.save(nib.Nifti1Image(rng.random(shape).astype(np.float32) * 100, affine), path)
        entry[m] = str(path)
    return entry


@pytest.mark.slow
def test_inference_writes_labels_in_the_input_space(trained, tmp_path):
    """An oblique, anisotropic, oddly sized input (LPS-ish axes) comes back with its own affine and shape."""
    rng = np.random.default_rng(0)
    affine = np.array([[-1.2, 0.1, 0, 90], [0.0, -1.0, 0.2, 120], [0, 0.1, 2.0, -60], [0, 0, 0, 1]])
    entry = _write_case(tmp_path / "data" / "case7", (41, 37, 23), affine, rng)
    datalist = tmp_path / "data" / "datalist.json"
    datalist.write_text(json.dumps({"testing": [entry]}))
    outputs = _infer(trained, datalist, tmp_path / "out")
    assert len(outputs) == 1
    seg, src = nib.load(outputs[0]), nib.load(entry["t1"])
    assert seg.shape == src.shape
    assert np.allclose(seg.affine, src.affine, atol=1e-4)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2, 3}


@pytest.mark.slow
def test_inference_reads_dicom_series(trained, tmp_path):
    pydicom = pytest.importorskip("pydicom", reason="DICOM input needs pydicom (in requirements.txt)")
    from dicom_utils import write_dicom_series

    entry = {"subject_id": "dcm1"}
    for i, m in enumerate(("t1", "t1ce", "t2", "flair")):
        entry[m] = str(write_dicom_series(tmp_path / "dcm1" / m, np.random.default_rng(i).random((24, 36, 36)) * 500))
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"testing": [entry]}))
    outputs = _infer(trained, datalist, tmp_path / "out")
    assert len(outputs) == 1 and nib.load(outputs[0]).shape == (36, 36, 24)
    del pydicom


@pytest.mark.slow
def test_inference_names_outputs_by_subject_and_skips_a_bad_case(trained, tmp_path):
    """S1/t1.nii.gz and S2/t1.nii.gz no longer overwrite each other; a truncated case is skipped by name; a BraTS
    folder without splits runs every subject."""
    rng = np.random.default_rng(1)
    entries = []
    for s in ("S1", "S2", "S3"):
        entry = {"subject_id": s}
        for m in ("t1", "t1ce", "t2", "flair"):
            path = tmp_path / "data" / s / f"{m}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(rng.random((33, 34, 32)).astype(np.float32) * 100, np.eye(4)), path)
            entry[m] = str(path)
        entries.append(entry)
    raw = open(entries[2]["t2"], "rb").read()
    open(entries[2]["t2"], "wb").write(raw[: len(raw) // 2])
    datalist = tmp_path / "data" / "datalist.json"
    datalist.write_text(json.dumps({"testing": entries}))
    out = tmp_path / "out"
    proc = run_bundle(INFERENCE, *TINY, "--datalist", str(datalist), *run_dirs(trained / "models", out))
    log = proc.stdout + proc.stderr
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["S1_seg.nii.gz", "S2_seg.nii.gz"]
    assert "skipped: ERROR S3" in log and "S3/t2.nii.gz" in log and "2 case(s) from datalist" in log
    assert [r[:2] for r in csv.reader((out / "index.csv").open())][1:] == [
        ["S1", "S1_seg.nii.gz"],
        ["S2", "S2_seg.nii.gz"],
    ]
    # a scanned BraTS folder has no 'testing' split: every subject is segmented, and the log says so
    brats = tmp_path / "brats" / "BraTS_7"
    brats.mkdir(parents=True)
    for m in ("t1", "t1ce", "t2", "flair"):
        (brats / f"BraTS_7_{m}.nii.gz").write_bytes(open(entries[0][m], "rb").read())
    proc = run_bundle(
        INFERENCE, *TINY, "--dataset_dir", str(brats.parent), *run_dirs(trained / "models", tmp_path / "o2")
    )
    assert [p.name for p in (tmp_path / "o2").glob("*.nii.gz")] == ["BraTS_7_seg.nii.gz"]
    assert "all subjects: no splits" in proc.stdout + proc.stderr
