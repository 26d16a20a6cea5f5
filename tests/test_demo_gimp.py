"""The GiMP demo set: CLAM layout, CSVs, datalist, determinism, caching, and class signal in both modalities."""

import csv
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from common.data.demo_gimp import CLASSES, build_demo_gimp

SMALL = dict(num_patients=12, num_genes=30, min_patches=40, max_patches=400, two_slide_fraction=0.5)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return Path(build_demo_gimp(str(tmp_path_factory.mktemp("demo_gimp")), **SMALL))


def _entries(datalist: dict) -> list[dict]:
    return datalist["training"] + datalist["validation"] + datalist["testing"]


def test_clam_files_and_csvs(demo):
    root = demo.parent
    dl = json.loads(demo.read_text())
    entries = _entries(dl)
    assert len(entries) == 12 and dl["classes"] == list(CLASSES) and dl["num_genes"] == 30
    assert any(len(e["slide_ids"]) == 2 for e in entries)
    clam = list(csv.DictReader(open(root / dl["clam_csv"])))
    assert set(clam[0]) == {"case_id", "slide_id", "label"}
    assert len(clam) == sum(len(e["slide_ids"]) for e in entries)
    for e in entries:
        for slide_id, h5_path, pt_path in zip(e["slide_ids"], e["h5_files"], e["pt_files"]):
            with h5py.File(root / h5_path) as f:
                features, coords = f["features"][:], f["coords"][:]
                attrs = dict(f["coords"].attrs)
            assert features.dtype == np.float32 and features.shape[1] == 1024 and (features >= 0).all()
            assert 40 <= len(features) <= 400 and coords.shape == (len(features), 2)
            assert attrs["patch_size"] == 256 and attrs["patch_level"] == 0 and attrs["name"] == slide_id
            assert {"downsample", "level_dim", "patch_size_level0"} <= set(attrs)
            assert torch.equal(torch.load(root / pt_path, weights_only=True), torch.from_numpy(features))
            # CLAM order on a 256-px grid: x outer, y inner, so the sequence neighbour is mostly the one below
            step = np.diff(coords, axis=0)
            assert (coords % 256 == 0).all() and (step[:, 0] >= 0).all()
            assert ((step[:, 0] == 0) & (step[:, 1] == 256)).mean() > 0.7
            assert {"case_id": e["case_id"], "slide_id": slide_id, "label": CLASSES[e["label"]]} in clam
    rows = list(csv.reader(open(root / dl["expression"])))
    assert rows[0][0] == "case_id" and len(rows[0]) == 31 and len(rows) == 13
    assert sorted(r[0] for r in rows[1:]) == sorted(e["case_id"] for e in entries)
    assert (np.array([r[1:] for r in rows[1:]], float) >= 0).all()


def test_split_is_stratified_disjoint_and_in_the_clam_split_csv(demo):
    dl = json.loads(demo.read_text())
    ids = {p: [e["case_id"] for e in dl[p]] for p in ("training", "validation", "testing")}
    assert sum(map(len, ids.values())) == len(set().union(*ids.values())) == 12
    for p in ids:
        assert {e["label"] for e in dl[p]} == {0, 1}
    split = list(csv.DictReader(open(demo.parent / dl["splits"])))
    train = {r["train"] for r in split if r["train"]}
    assert train == {s for e in dl["training"] for s in e["slide_ids"]}


def test_deterministic_and_cached(demo, tmp_path):
    again = Path(build_demo_gimp(str(tmp_path / "again"), **SMALL))
    a, b = json.loads(demo.read_text()), json.loads(again.read_text())
    assert a == b
    first = a["training"][0]["h5_files"][0]
    with h5py.File(demo.parent / first) as f, h5py.File(again.parent / first) as g:
        assert np.array_equal(f["features"][:], g["features"][:])
    stamp = os.stat(again).st_mtime_ns
    assert build_demo_gimp(str(tmp_path / "again"), **SMALL) == str(again) and os.stat(again).st_mtime_ns == stamp
    other = json.loads(Path(build_demo_gimp(str(tmp_path / "again"), **{**SMALL, "seed": 1})).read_text())
    assert other["build"]["seed"] == 1  # another parameter set rebuilds


def _accuracy(x: np.ndarray, y: np.ndarray, reps: int = 40) -> tuple[float, np.ndarray]:
    """Nearest-centroid read-out on standardised features, half/half splits: (mean accuracy, test scores)."""
    rng = np.random.default_rng(0)
    accs, scores = [], []
    for _ in range(reps):
        perm = rng.permutation(len(y))
        tr, te = perm[: len(y) // 2], perm[len(y) // 2 :]
        z = (x - x[tr].mean(0)) / (x[tr].std(0) + 1e-6)
        s = z @ (z[tr][y[tr] == 1].mean(0) - z[tr][y[tr] == 0].mean(0))
        s = (s - s[tr].mean()) / s[tr].std()
        accs.append(((s[te] > 0) == (y[te] == 1)).mean())
        scores.append(s)
    return float(np.mean(accs)), np.stack(scores)


def test_class_signal_in_both_modalities_and_both_beat_either(tmp_path):
    # many patients with small bags, to measure the signal the default build carries
    path = Path(build_demo_gimp(str(tmp_path / "many"), num_patients=240, num_genes=100, min_patches=30,
                                max_patches=60, write_pt=False))  # fmt: skip
    dl = json.loads(path.read_text())
    entries = _entries(dl)
    rows = {r[0]: np.array(r[1:], float) for r in list(csv.reader(open(path.parent / dl["expression"])))[1:]}
    img = np.stack([np.concatenate([h5py.File(path.parent / f)["features"][:] for f in e["h5_files"]]).mean(0)
                    for e in entries])  # fmt: skip
    genes = np.log2(np.stack([rows[e["case_id"]] for e in entries]) + 1)
    y = np.array([e["label"] for e in entries])
    acc_img, s_img = _accuracy(img, y)
    acc_ge, s_ge = _accuracy(genes, y)
    rng = np.random.default_rng(0)
    both = []
    for r in range(40):
        perm = rng.permutation(len(y))
        te = perm[len(y) // 2 :]
        both.append((((s_img[r] + s_ge[r])[te] > 0) == (y[te] == 1)).mean())
    acc_both = float(np.mean(both))
    assert 0.65 < acc_img < 0.95 and 0.65 < acc_ge < 0.95, (acc_img, acc_ge)
    assert acc_both > max(acc_img, acc_ge) + 0.02, (acc_img, acc_ge, acc_both)
