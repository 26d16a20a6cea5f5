"""The demo sets of the five MRM downstream tasks: deterministic, written in each dataset's own layout (read by the
same readers as real data), and with labels the images visibly carry (checked on the written pixels)."""

from __future__ import annotations

import csv
import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from scipy.stats import spearmanr

from common.data import tasks2d
from common.data.demo_mrm import fundus_anatomy
from common.data.demo_transfer import (
    CRP_TARGETS,
    RFMID_DEMO_LABELS,
    TILES_PER_CASE,
    build_demo_transfer,
    demo_transfer_dir,
    optic_disc,
    task_data_dir,
)

SIZE = 48


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> dict[str, Path]:
    """Every task built once, small (a few seconds in all)."""
    root = tmp_path_factory.mktemp("demo_transfer")
    counts = {"aptos": 60, "rfmid": 60, "palm": 24, "crp": 80, "glioma": 24}
    return {t: Path(build_demo_transfer(t, root / t, n, SIZE)) for t, n in counts.items()}


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}  # fmt: skip


@pytest.mark.parametrize("task", ["aptos", "palm"])
def test_builds_are_deterministic_and_reused(tmp_path, task):
    a = Path(build_demo_transfer(task, tmp_path / "a", 8, 32, seed=1))
    b = Path(build_demo_transfer(task, tmp_path / "b", 8, 32, seed=1))
    assert digest(a) == digest(b) and len(digest(a)) > 8
    before = (a / "demo.json").stat().st_mtime_ns
    assert build_demo_transfer(task, a, 8, 32, seed=1) == str(a)
    assert (a / "demo.json").stat().st_mtime_ns == before  # a complete build is reused
    c = Path(build_demo_transfer(task, tmp_path / "c", 8, 32, seed=2))
    assert digest(c) != digest(a)


def test_cache_folder_per_parameter_set(tmp_path, monkeypatch):
    monkeypatch.setenv("MMPT_CACHE_DIR", str(tmp_path))
    folder = Path(demo_transfer_dir("glioma", num_subjects=6, image_size=32))
    assert folder.parent == tmp_path and folder.name == "demo_glioma_v1_n6_s32_seed0"
    assert task_data_dir("glioma", demo={"num_subjects": 6, "image_size": 32}) == str(folder)
    assert task_data_dir("glioma", dataset_dir=str(tmp_path)) == str(tmp_path)  # a user's folder wins
    assert task_data_dir("glioma", datalist="x.json") is None  # a datalist needs no folder
    before = sorted(tmp_path.iterdir())
    assert task_data_dir("aptos", input_dir=str(tmp_path)) is None  # nor does inference on a folder of images
    assert sorted(tmp_path.iterdir()) == before  # and no demo set was built for it
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        task_data_dir("glioma", dataset_dir=str(tmp_path / "nope"))


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown demo task 'mnist'"):
        build_demo_transfer("mnist", tmp_path)
    with pytest.raises(ValueError, match="at least 32"):
        build_demo_transfer("aptos", tmp_path, 8, 16)
    with pytest.raises(ValueError, match="at least 5"):
        build_demo_transfer("aptos", tmp_path, 4, 32)


def test_optic_disc_is_the_moment_ellipse_of_the_bright_region():
    """A synthetic fundus with a uniformly bright disc of radius 6: the moment ellipse of a filled circle of radius
    r has covariance r^2 / 4 per axis, so (p - c)^T cov^-1 (p - c) <= 4 is the circle itself."""
    size, r, centre = 64, 6.0, (30, 20)
    rows_, cols = np.indices((size, size))
    circle = np.hypot(rows_ - centre[0], cols - centre[1]) <= r
    rgb = np.where(circle[..., None], 0.9, 0.4) * np.ones(3)
    anatomy = {"rgb": rgb, "fov": np.ones((size, size), bool), "disc": np.array(centre)}
    mask = optic_disc(anatomy)
    assert abs(int(mask.sum()) - math.pi * r**2) < 0.12 * math.pi * r**2
    assert (mask & circle).sum() / (mask | circle).sum() > 0.85
    real = optic_disc(fundus_anatomy(96))  # the photograph's disc: about 6.5 % of the image in radius
    assert 0.05 < math.sqrt(real.sum() / math.pi) / 96 < 0.08


def test_aptos_layout_and_lesions_grow_with_the_grade(demos):
    entries = tasks2d.read_aptos(demos["aptos"])
    truth = rows(demos["aptos"] / "ground_truth.csv")
    assert len(entries) == 60 and all(len(e["subject_id"]) == 12 for e in entries)
    assert {e["label"] for e in entries} == {0, 1, 2, 3, 4}
    grade = np.array([int(t["diagnosis"]) for t in truth])
    lesions = np.array([int(t["lesion_pixels"]) for t in truth])
    assert (lesions[grade == 0] == 0).all() and (lesions[grade >= 1] > 0).all()
    assert spearmanr(grade, lesions)[0] > 0.8
    assert lesions[grade == 4].mean() > 0.2 * SIZE**2  # LESION_SCALE 5: a third of a grade-4 image (3: about 0.12)
    # the written pixels: dark red spots on the green channel (darker than their 9 x 9 neighbourhood's median: the
    # lesions are drawn LESION_SCALE times their size in a 224 px photograph), more with the grade
    dark = []
    for t in truth:
        img = pixels(demos["aptos"] / "train_images" / f"{t['id_code']}.png")[..., 1]
        local = ndimage.median_filter(img, 9)
        dark.append(int(((local - img) > 20).sum()))
    assert spearmanr(grade, dark)[0] > 0.6


def test_rfmid_layout_labels_and_their_pictures(demos):
    entries = tasks2d.read_rfmid(demos["rfmid"])
    names = tasks2d.rfmid_label_names(demos["rfmid"])
    assert names == ["Disease_Risk", *RFMID_DEMO_LABELS]
    assert sorted({e["set"] for e in entries}) == ["Testing", "Training", "Validation"] and len(entries) == 60
    labels = np.array([e["label"] for e in entries])
    assert (labels[:, names.index("ODE")] == 0).all()  # constant in every split: the evaluation must exclude it
    assert (labels[:, 0] == labels[:, 1:].max(1)).all()  # Disease_Risk = any finding
    assert all(0 < labels[:, names.index(k)].sum() < 60 for k in ("DR", "DN", "MH", "TSLN"))
    sharp, bright = [], []
    for e in entries:
        img = pixels(Path(e["image"]))
        inside = img.sum(-1) > 60
        sharp.append(np.abs(ndimage.laplace(img[..., 1]))[ndimage.binary_erosion(inside, iterations=3)].mean())
        bright.append(img[..., 1][inside].mean())
    sharp, bright = np.array(sharp), np.array(bright)
    mh, tsln = labels[:, names.index("MH")] == 1, labels[:, names.index("TSLN")] == 1
    assert sharp[mh].max() < sharp[~mh].min()  # media haze blurs every image it is in
    assert np.median(bright[tsln]) < 0.8 * np.median(bright[~tsln])  # tessellation: a darker fundus


def test_palm_layout_masks_in_palm_convention_and_crescents_next_to_the_disc(demos, tmp_path):
    folder = demos["palm"]
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["Testing", "Training", "Validation"]
    images = sorted(folder.glob("*/Images/*.jpg"))
    assert len(images) == 24
    for image in images:
        w, h = Image.open(image).size
        assert (w, h) == (SIZE + 2 * (SIZE // 16), SIZE)  # wider than tall, as PALM's photographs
        disc = np.asarray(Image.open(image.parent.parent / "Disc Masks" / f"{image.stem}.bmp"))
        assert disc.shape == (h, w) and set(np.unique(disc)) == {0, 255}  # 0 = structure
        atrophy = image.parent.parent / "Lesion Masks" / "Atrophy" / f"{image.stem}.bmp"
        assert atrophy.is_file() == image.stem.startswith("P")  # atrophy masks only where there is atrophy
        if atrophy.is_file():
            a = np.asarray(Image.open(atrophy)) == 0
            assert a.any() and not (a & (disc == 0)).any()  # a crescent outside the disc ...
            assert (ndimage.binary_dilation(disc == 0, iterations=2) & a).any()  # ... touching it
            img = pixels(image)
            ring = ndimage.binary_dilation(a | (disc == 0), iterations=3) & ~a & (disc > 0)
            assert img[a].mean() > img[ring].mean()  # pale
    entries = tasks2d.task_datalist("palm", folder, tmp_path / "split.json", "validation")
    assert {e["set"] for e in entries} == {"Testing"}  # PALM's own test set is the test split


def test_crp_targets_drive_what_the_image_shows(demos):
    folder = demos["crp"]
    entries = tasks2d.read_crp(folder, CRP_TARGETS)
    assert len(entries) == 80
    written = rows(folder / "labels.csv")
    assert list(written[0]) == ["id", *CRP_TARGETS]
    truth = {t["id"]: t for t in rows(folder / "ground_truth.csv")}
    assert any(r["bmi"] == "NA" or r["smoking"] == "NA" for r in written)  # missing values, as in real tables
    age = np.array([float(truth[e["subject_id"]]["age"]) for e in entries])
    sbp = np.array([float(truth[e["subject_id"]]["sbp"]) for e in entries])
    assert 50 < age.mean() < 64 and spearmanr(age, sbp)[0] > 0.2
    disc = optic_disc(fundus_anatomy(SIZE))
    brightness, disc_gain, blue, sharp = [], [], [], []
    for e in entries:
        img = pixels(Path(e["image"]))
        inside = img.sum(-1) > 60
        brightness.append(img[inside].mean())
        disc_gain.append(img[..., 1][ndimage.binary_dilation(disc, iterations=3)].max() / img[..., 1][inside].mean())
        blue.append(img[..., 2][inside].mean() / img[..., 1][inside].mean())
        sharp.append(np.abs(ndimage.laplace(img[..., 1]))[ndimage.binary_erosion(inside, iterations=3)].mean())
    sex = np.array([float(truth[e["subject_id"]]["sex"]) for e in entries])
    smoking = np.array([float(truth[e["subject_id"]]["smoking"]) for e in entries])
    dbp = np.array([float(truth[e["subject_id"]]["dbp"]) for e in entries])
    assert spearmanr(age, brightness)[0] < -0.3  # older: darker
    assert spearmanr(dbp, blue)[0] > 0.3  # DBP: bluer
    assert np.median(np.array(sharp)[smoking == 1]) < 0.8 * np.median(np.array(sharp)[smoking == 0])  # haze
    assert np.median(np.array(disc_gain)[sex == 1]) > np.median(np.array(disc_gain)[sex == 0])  # brighter disc


def test_glioma_tiles_per_case_and_nuclei_darken_with_the_grade(demos, tmp_path):
    folder = demos["glioma"]
    entries = tasks2d.read_glioma(folder)
    assert len(entries) == 24 * TILES_PER_CASE and {e["label"] for e in entries} == {0, 1, 2}
    assert {r["grade"] for r in rows(folder / "labels.csv")} == {"II", "III", "IV"}  # WHO grades as written
    dark = np.array([(pixels(Path(e["image"]))[..., 0] < 110).mean() for e in entries])
    grade = np.array([e["label"] for e in entries])
    assert dark[grade == 0].mean() < dark[grade == 1].mean() < dark[grade == 2].mean()
    split = tasks2d.fixed_split(entries, tmp_path / "s.json", group_key="case_id")
    cases = {s: {e["case_id"] for e in split[s]} for s in split}
    assert not cases["training"] & cases["validation"]  # the tiles of a case stay together
