"""The MRM demo set: deterministic, written in formats our readers read, and its genetics carry real signal."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.stats import spearmanr

from common.data.demo_mrm import NUM_CAUSAL_GRADE, NUM_CAUSAL_PIGMENT, build_demo_mrm, demo_mrm_datalist
from common.data.genetics import read_plink, read_table
from common.data.images2d import load_image2d, read_image_datalist
from common.data.validate import validate_paired_datalist


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """48 subjects at 96 px: enough subjects for correlations, a second or two to build."""
    return Path(build_demo_mrm(str(tmp_path_factory.mktemp("mrm")), num_subjects=48, image_size=96, num_snps=60))


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}  # fmt: skip


def test_build_is_deterministic_cached_and_per_subject(tmp_path):
    a = Path(build_demo_mrm(str(tmp_path / "a"), num_subjects=6, image_size=48, num_snps=20, seed=3))
    b = Path(build_demo_mrm(str(tmp_path / "b"), num_subjects=6, image_size=48, num_snps=20, seed=3))
    assert digest(a.parent) == digest(b.parent)
    assert len(digest(a.parent)) == 2 * 6 + 3 + 4  # images, masks; .bed/.bim/.fam; scores, truth, datalist .csv/.json
    before = a.stat().st_mtime_ns
    assert build_demo_mrm(str(tmp_path / "a"), num_subjects=6, image_size=48, num_snps=20, seed=3) == str(a)
    assert a.stat().st_mtime_ns == before  # reused, not rebuilt
    other = Path(build_demo_mrm(str(tmp_path / "c"), num_subjects=6, image_size=48, num_snps=20, seed=4))
    assert digest(other.parent)["images/DemoMRM_000.png"] != digest(a.parent)["images/DemoMRM_000.png"]
    # subject i depends on (seed, i), not on how many subjects are built
    more = Path(build_demo_mrm(str(tmp_path / "d"), num_subjects=8, image_size=48, num_snps=20, seed=3))
    assert digest(more.parent)["images/DemoMRM_004.png"] == digest(a.parent)["images/DemoMRM_004.png"]


def test_cache_folder_follows_MMPT_CACHE_DIR(tmp_path, monkeypatch):
    monkeypatch.setenv("MMPT_CACHE_DIR", str(tmp_path))
    path = Path(demo_mrm_datalist(num_subjects=5, image_size=32, num_snps=12))
    assert path.parent.parent == tmp_path and path.is_file()


def test_written_files_read_with_the_collection_readers(demo):
    content = json.loads(demo.read_text())
    train, val = read_image_datalist(demo, "training"), read_image_datalist(demo, "validation")
    assert (len(train), len(val)) == (38, 10)
    ids = [e["subject_id"] for e in train + val]
    genotypes = read_plink(demo.parent / content["genetics"]["plink"])
    assert genotypes.ids == ids and genotypes.values.shape == (48, 60)
    observed = genotypes.values[~np.isnan(genotypes.values)]
    assert set(np.unique(observed)) <= {0.0, 1.0, 2.0} and 0 < np.isnan(genotypes.values).mean() < 0.05
    scores = read_table(demo.parent / "scores.csv")
    assert scores.ids == ids and scores.features == ["prs_retinopathy", "prs_pigmentation", "prs_null"]
    x = load_image2d(train[0]["image"])
    assert x.shape == (3, 96, 96) and 0 <= x.min() and x.max() <= 255
    assert len(content["causal_snps"]["grade"]) == NUM_CAUSAL_GRADE
    assert len(content["causal_snps"]["pigmentation"]) == NUM_CAUSAL_PIGMENT
    problems = validate_paired_datalist(str(demo), str(demo.parent / "genotypes.bed"), num_features=60)
    assert not [p for p in problems if p.severity == "error"], problems


def truth(demo: Path) -> list[dict]:
    with open(demo.parent / "ground_truth.csv") as f:
        return list(csv.DictReader(f))


def genetic_score(demo: Path, which: str) -> np.ndarray:
    """The causal SNPs' effects times their standardised dosages, from the WRITTEN .bed (missing -> mean)."""
    content = json.loads(demo.read_text())
    table = read_plink(demo.parent / "genotypes.bed")
    effects = content["causal_snps"][which]
    d = table.values[:, [table.features.index(s) for s in effects]]
    d = np.where(np.isnan(d), np.nanmean(d, 0), d)
    return ((d - d.mean(0)) / d.std(0)) @ np.array(list(effects.values()))


def test_lesions_follow_the_causal_dosages(demo):
    rows = truth(demo)
    lesions = np.array([int(r["lesion_pixels"]) for r in rows])
    score = genetic_score(demo, "grade")
    assert spearmanr(score, lesions)[0] > 0.45
    grades = np.array([int(r["grade"]) for r in rows])
    assert spearmanr(score, grades)[0] > 0.45
    # a non-causal SNP carries no such signal: the mean |rho| over all of them stays small
    table = read_plink(demo.parent / "genotypes.bed")
    causal = set(json.loads(demo.read_text())["causal_snps"]["grade"])
    null = [abs(spearmanr(np.nan_to_num(table.values[:, j], nan=1.0), lesions)[0])
            for j, f in enumerate(table.features) if f not in causal and np.nanstd(table.values[:, j]) > 0]  # fmt: skip
    assert np.mean(null) < 0.2
    # the grade sets the lesion types: none at grade 0, microaneurysms from 1, haemorrhages from 2, exudates from 3
    for r in rows:
        g = int(r["grade"])
        assert (int(r["microaneurysms"]) > 0) == (g >= 1) and (int(r["haemorrhages"]) > 0) == (g >= 2)
        assert (int(r["exudates"]) > 0) == (g >= 3)


def test_the_images_show_the_lesions_and_the_pigmentation(demo):
    from PIL import Image

    rows = truth(demo)
    contrast, brightness = [], []
    for r in rows:
        img = np.asarray(Image.open(demo.parent / "images" / f"{r['subject_id']}.png"), dtype=np.float64)
        mask = np.asarray(Image.open(demo.parent / "masks" / f"{r['subject_id']}.png"))
        assert int((mask > 0).sum()) == int(r["lesion_pixels"])  # the mask and the ground truth agree
        red = (mask == 1) | (mask == 2)  # microaneurysms and haemorrhages are dark red on the green channel
        if red.any():
            ring = ndimage.binary_dilation(red, iterations=3) & ~ndimage.binary_dilation(red) & (mask == 0)
            contrast.append(img[..., 1][red].mean() / img[..., 1][ring].mean())
        brightness.append(img[..., 1][img.sum(-1) > 60].mean())
    assert len(contrast) > 10 and np.median(contrast) < 0.8  # lesions are visibly darker than their surroundings
    assert spearmanr(genetic_score(demo, "pigmentation"), brightness)[0] < -0.3  # genetics -> fundus colour


def test_demo_feeds_a_monai_dataloader_end_to_end(tmp_path):
    """The path a bundle config takes: datalist -> genetics table -> join -> train-only stats -> transforms."""
    import torch
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose

    from common.data.genetics import fit_feature_stats, join_subjects, read_genetics
    from common.data.images2d import image_preprocessing
    from common.transforms.genetics import GeneticsLookupd

    datalist = build_demo_mrm(str(tmp_path / "demo"), num_subjects=8, image_size=48, num_snps=30)
    table = read_genetics(str(Path(datalist).parent / "genotypes.bed"))
    train = join_subjects(read_image_datalist(datalist, "training"), table)
    stats = fit_feature_stats(table, train)
    assert stats["num_train"] == 6 and len(stats["features"]) == 30
    transform = Compose([*image_preprocessing("image", size=32), GeneticsLookupd(table, stats)])
    loader = DataLoader(Dataset(train, transform), batch_size=3, num_workers=2)
    batch = next(iter(loader))
    assert batch["image"].shape == (3, 3, 32, 32) and batch["genetics"].shape == (3, 30)
    assert batch["genetics"].dtype == torch.float32 and torch.isfinite(batch["genetics"]).all()  # missing calls imputed
