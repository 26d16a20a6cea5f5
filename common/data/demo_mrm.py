"""The embedded MRM demo set: fundus photographs paired with genotypes that drive what the photographs show.

Real anatomy ships offline in scikit-image: ``skimage.data.retina()`` (a 1411 x 1411 RGB fundus photograph, CC0)
and ``skimage.data.microaneurysms()`` (a grey crop of a real microaneurysm, HRF), whose radial darkness profile
shapes every synthetic microaneurysm. Each subject gets

* a synthetic genotype: ``num_snps`` SNP dosages 0/1/2 (allele frequencies 0.05-0.5, 1 % missing calls in the
  written file), of which ``NUM_CAUSAL_GRADE`` causal SNPs form a retinopathy liability (heritability 0.7) and
  ``NUM_CAUSAL_PIGMENT`` others a fundus pigmentation trait (heritability 0.6);
* a severity grade 0-4 (ICDR-like: thresholds at the liability's 40/60/78/92 % quantiles) that sets the counts of
  microaneurysms (grade >= 1), blot haemorrhages (>= 2) and exudates near the macula (>= 3), grade 4 having
  the most and largest; pigmentation darkens and reddens the whole fundus;
* a random left/right flip (laterality), rotation (+-20 deg), scale (+-8 %), shift (+-4 %), colour gain and gamma,
  and sensor noise; the lesion label map is warped with the image.

Written files (all paths relative to the folder): ``images/<id>.png`` (RGB, ``image_size`` square), ``masks/<id>.png``
(0 background, 1 microaneurysm, 2 haemorrhage, 3 exudate), ``genotypes.bed/.bim/.fam`` (PLINK 1, read with
``common.data.genetics.read_plink``: the dosage counts allele 2), ``scores.csv`` (``subject_id`` + three continuous
scores: a noisy polygenic score of the retinopathy liability, one of pigmentation, one without signal),
``ground_truth.csv`` (per subject the latent values used: grade, lesion counts and pixel counts, liabilities,
pigmentation, laterality), ``datalist.csv`` and ``datalist.json`` (``training`` / ``validation`` lists of
``subject_id, image, mask, grade, findings, pigmentation``; ``causal_snps`` with their effects). Everything is
seeded: a build is bit-identical on every machine, written once into a cache folder and reused (``datalist.json``
is written last and atomically: its presence with matching parameters marks a complete build).
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.stats import norm

from common.data.demo import _is_built, _locked, default_cache_dir

__all__ = [
    "build_demo_mrm",
    "demo_mrm_datalist",
    "fundus_anatomy",
    "lesion_counts",
    "draw_lesions",
    "grade_lesions",
    "draw_spots",
    "augment_fundus",
    "write_png",
    "write_csv",
    "GRADE_QUANTILES",
    "NUM_CAUSAL_GRADE",
    "NUM_CAUSAL_PIGMENT",
]

_VERSION = 1
NUM_CAUSAL_GRADE = 6
NUM_CAUSAL_PIGMENT = 3
GRADE_QUANTILES = (0.40, 0.60, 0.78, 0.92)  # liability quantiles separating grades 0|1|2|3|4
_HERITABILITY = {"grade": 0.7, "pigment": 0.6}
_MISSING_RATE = 0.01
# expected lesion counts per grade 0..4 (Poisson), and the grade from which at least one is present
_MA_RATE, _HAEM_RATE, _EXUDATE_RATE = (0, 4, 8, 12, 16), (0, 0, 2, 5, 9), (0, 0, 0, 3, 6)
_FIRST_GRADE = {"ma": 1, "haem": 2, "exudate": 3}


def fundus_anatomy(size: int) -> dict[str, np.ndarray]:
    """The real fundus at ``size`` (float RGB in [0, 1]), its field-of-view mask, the optic disc and fovea centres
    (row, col) found as the brightest and the darkest central spot of the smoothed luminance, and the radial
    darkness profile of the real microaneurysm crop (index = radius in crop pixels, 1 at the centre)."""
    from skimage import data, transform

    rgb = transform.resize(data.retina().astype(np.float64) / 255.0, (size, size, 3), anti_aliasing=True, order=1)
    lum = rgb.mean(-1)
    fov = ndimage.binary_erosion(lum > 0.08, iterations=max(1, size // 40))
    smooth = ndimage.gaussian_filter(lum, size / 40)
    disc = np.unravel_index(np.where(fov, smooth, -1).argmax(), lum.shape)
    rows, cols = np.indices(lum.shape)
    central = fov & (np.hypot(rows - size / 2, cols - size / 2) < size * 0.2)
    fovea = np.unravel_index(np.where(central, smooth, 9).argmin(), lum.shape)
    crop = data.microaneurysms().astype(np.float64)
    centre = np.unravel_index(ndimage.gaussian_filter(crop, 1).argmin(), crop.shape)
    background = np.median(crop)
    dark = np.clip((background - crop) / (background - crop[centre]), 0, 1)
    radius = np.hypot(*(np.indices(crop.shape) - np.array(centre)[:, None, None]))
    profile = np.array([dark[(radius >= k - 0.5) & (radius < k + 0.5)].mean() for k in range(7)])
    profile = np.minimum.accumulate(np.append(profile, 0.0))  # monotone, zero from 7 crop pixels on
    rows, cols = np.nonzero(fov)
    away = np.hypot(rows - disc[0], cols - disc[1]) > 0.12 * size  # lesion sites: the field of view minus the disc
    return {"rgb": rgb, "fov": fov, "disc": np.array(disc), "fovea": np.array(fovea), "sites": (rows[away], cols[away]),
            "ma_profile": profile / profile[0]}  # fmt: skip


def _genetic_model(num_snps: int, seed: int) -> dict[str, np.ndarray]:
    """Allele frequencies and the causal SNPs with per-standardised-dosage effects (variance = heritability)."""
    rng = np.random.default_rng([seed, 0])
    freq = rng.uniform(0.05, 0.5, num_snps)
    causal = rng.choice(num_snps, NUM_CAUSAL_GRADE + NUM_CAUSAL_PIGMENT, replace=False)
    signs = rng.choice([-1.0, 1.0], causal.size)
    grade, pigment = causal[:NUM_CAUSAL_GRADE], causal[NUM_CAUSAL_GRADE:]
    return {
        "freq": freq,
        "grade_snps": grade,
        "grade_effects": signs[:NUM_CAUSAL_GRADE] * math.sqrt(_HERITABILITY["grade"] / NUM_CAUSAL_GRADE),
        "pigment_snps": pigment,
        "pigment_effects": signs[NUM_CAUSAL_GRADE:] * math.sqrt(_HERITABILITY["pigment"] / NUM_CAUSAL_PIGMENT),
    }


def _score(dosages: np.ndarray, freq: np.ndarray, snps: np.ndarray, effects: np.ndarray) -> float:
    """Genetic value: sum of effects times standardised dosages (d - 2p) / sqrt(2p(1 - p))."""
    p = freq[snps]
    return float(((dosages[snps] - 2 * p) / np.sqrt(2 * p * (1 - p))) @ effects)


def draw_spots(shape: tuple[int, int], centres: np.ndarray, radii: np.ndarray, profile: np.ndarray | None,
           rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Opacity in [0, 1] of K lesions (max over overlapping ones), each drawn in its own small window.

    ``profile`` (a radial darkness profile, sampled per crop pixel, half maximum near 2) shapes round spots;
    without it a blot with a wobbly border (3rd and 5th angular harmonics) and a soft edge is drawn."""
    opacity = np.zeros(shape)
    phases = rng.uniform(0, 2 * np.pi, (len(centres), 2))
    for (cy, cx), r, (p3, p5) in zip(centres, radii, phases):
        half = int(math.ceil(3.5 * r)) + 1
        r0, r1 = max(int(cy) - half, 0), min(int(cy) + half + 1, shape[0])
        c0, c1 = max(int(cx) - half, 0), min(int(cx) + half + 1, shape[1])
        dy, dx = np.meshgrid(np.arange(r0, r1) - cy, np.arange(c0, c1) - cx, indexing="ij")
        dist = np.hypot(dy, dx) / r  # in lesion radii
        if profile is not None:
            spot = np.interp(dist * 2.0, np.arange(profile.size), profile, right=0.0)
        else:
            theta = np.arctan2(dy, dx)
            wobble = 1 + 0.18 * np.sin(3 * theta + p3) + 0.1 * np.sin(5 * theta + p5)
            spot = np.clip(1.6 * (1 - dist / wobble), 0, 1) ** 0.7
        np.maximum(opacity[r0:r1, c0:c1], spot, out=opacity[r0:r1, c0:c1])
    return opacity


def _place(k: int, anatomy: dict, rng: np.random.Generator, near: np.ndarray | None, spread: float) -> np.ndarray:
    """``k`` lesion centres in the field of view, away from the optic disc (within ``spread`` of ``near``)."""
    rows, cols = anatomy["sites"]
    if near is not None:
        ok = np.hypot(rows - near[0], cols - near[1]) < spread * anatomy["fov"].shape[0]
        rows, cols = rows[ok], cols[ok]
    pick = rng.choice(rows.size, size=k, replace=True) if k else np.array([], dtype=int)
    return np.stack([rows[pick], cols[pick]], 1).astype(np.float64) + rng.uniform(-0.5, 0.5, (k, 2))


def lesion_counts(grade: int, rng: np.random.Generator) -> dict[str, int]:
    """Lesion counts of a DR grade 0-4: Poisson draws (``_MA_RATE``, ...) plus one of each type from the grade
    that first shows it (microaneurysms >= 1, haemorrhages >= 2, exudates >= 3)."""
    counts = {}
    for name, rate in (("ma", _MA_RATE), ("haem", _HAEM_RATE), ("exudate", _EXUDATE_RATE)):
        counts[name] = int(rng.poisson(rate[grade])) + int(grade >= _FIRST_GRADE[name])
    return counts


def draw_lesions(
    counts: dict[str, int], anatomy: dict, rng: np.random.Generator, big: float = 1.0, lesion_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """The (unwarped) fundus of :func:`fundus_anatomy` with ``counts`` lesions drawn on it, and the label map.

    Microaneurysms (``"ma"``, round, shaped by the real microaneurysm's profile) and blot haemorrhages
    (``"haem"``, ``big`` times larger) darken it red anywhere in the field of view but the disc; exudates
    (``"exudate"``, yellow) sit within 22 % of the image size of the fovea. Radii scale with the image (sizes of
    a 224 px photograph) times ``lesion_scale`` (a demo of small images may draw them larger to stay visible).

    Returns:
        RGB float image ``[H, W, 3]`` in [0, 1] and a uint8 label map (0 background, 1 microaneurysm,
        2 haemorrhage, 3 exudate).

    Example: ``img, label = draw_lesions({"ma": 3, "haem": 0, "exudate": 1}, fundus_anatomy(96), rng)``.
    """
    size = anatomy["fov"].shape[0]
    scale = size / 224.0 * lesion_scale
    # radii in pixels scale with the image, floored so that small demo images still show every lesion
    ma = draw_spots((size, size), _place(counts["ma"], anatomy, rng, None, 0),
                np.maximum(rng.uniform(0.7, 1.3, counts["ma"]) * scale, 0.8), anatomy["ma_profile"], rng)  # fmt: skip
    haem = draw_spots((size, size), _place(counts["haem"], anatomy, rng, None, 0),
                  np.maximum(rng.uniform(2.5, 5.0, counts["haem"]) * scale * big, 1.5), None, rng)  # fmt: skip
    exu = draw_spots((size, size), _place(counts["exudate"], anatomy, rng, anatomy["fovea"], 0.22),
                 np.maximum(rng.uniform(1.0, 2.5, counts["exudate"]) * scale, 1.0), None, rng)  # fmt: skip
    img = anatomy["rgb"].copy()
    for opacity, keep in ((ma, (0.55, 0.2, 0.2)), (haem, (0.45, 0.15, 0.15))):  # dark red: channels kept
        img *= 1 - opacity[..., None] * (1 - np.array(keep))
    img = img * (1 - 0.85 * exu[..., None]) + 0.85 * exu[..., None] * np.array([1.0, 0.92, 0.55])
    label = np.zeros((size, size), np.uint8)
    for value, opacity in ((1, ma), (2, haem), (3, exu)):
        label[opacity > 0.3] = value
    return img, label


def grade_lesions(
    grade: int, anatomy: dict, rng: np.random.Generator, lesion_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Image with the lesions of DR ``grade`` drawn on the (unwarped) fundus, the label map, and the lesion counts
    (:func:`lesion_counts`, then :func:`draw_lesions`; grade 4 haemorrhages are 1.4 times larger)."""
    counts = lesion_counts(grade, rng)
    img, label = draw_lesions(counts, anatomy, rng, big=1.4 if grade == 4 else 1.0, lesion_scale=lesion_scale)
    return img, label, counts


def augment_fundus(
    img: np.ndarray, label: np.ndarray, pigment: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Flip (laterality), rotation, scale, shift, pigmentation, colour gain / gamma, noise; label warped alike."""
    flip = bool(rng.random() < 0.5)
    angle = np.deg2rad(rng.uniform(-20, 20))
    zoom = rng.uniform(0.92, 1.08)
    shift = rng.uniform(-0.04, 0.04, 2) * 2  # in grid units ([-1, 1] spans the image)
    c, s = math.cos(angle) / zoom, math.sin(angle) / zoom
    theta = torch.tensor([[[c, -s, shift[1]], [s, c, shift[0]]]], dtype=torch.float64)  # output -> input, (x, y)
    stack = torch.from_numpy(np.concatenate([img, label[..., None].astype(np.float64)], -1)).permute(2, 0, 1)[None]
    grid = F.affine_grid(theta, list(stack.shape), align_corners=False)
    out = F.grid_sample(stack[:, :3], grid, mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    lab = F.grid_sample(stack[:, 3:], grid, mode="nearest", align_corners=False)[0, 0].numpy().astype(np.uint8)
    if flip:
        out, lab = out[:, ::-1], lab[:, ::-1]
    tint = np.exp(-0.18 * pigment * np.array([0.6, 1.0, 1.0]))  # darker and redder with pigmentation
    gain = rng.uniform(0.92, 1.08, 3)
    out = np.clip(out * tint * gain, 0, 1) ** rng.uniform(0.85, 1.15)
    out = np.clip(out + rng.normal(0, 0.01, out.shape) * (out > 0), 0, 1)
    return out, np.ascontiguousarray(lab), flip


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(array).save(path, compress_level=1)  # fast; PNG stays lossless


def _write_genotypes(out: Path, ids: list[str], dosages: np.ndarray, rng: np.random.Generator) -> None:
    from bed_reader import to_bed

    num_snps = dosages.shape[1]
    written = dosages.astype(np.float32)
    written[rng.random(written.shape) < _MISSING_RATE] = np.nan
    alleles = np.array([("A", "G"), ("C", "T"), ("A", "C"), ("G", "T")])[rng.integers(0, 4, num_snps)]
    chrom = 1 + np.arange(num_snps) * 22 // num_snps
    properties = {
        "fid": ids,
        "iid": ids,
        "sid": [f"snp{j:04d}" for j in range(num_snps)],
        "chromosome": [str(c) for c in chrom],
        "bp_position": (np.arange(num_snps) + 1) * 10_000,
        "allele_1": alleles[:, 0].tolist(),
        "allele_2": alleles[:, 1].tolist(),
    }
    to_bed(out / "genotypes.bed", written, properties=properties, count_A1=False)  # dosage = count of allele 2


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def build_demo_mrm(
    out_dir: str | None = None,
    num_subjects: int = 64,
    image_size: int = 224,
    num_snps: int = 300,
    seed: int = 0,
    force: bool = False,
) -> str:
    """Build (once) the paired fundus + genotype demo set and return the path of its ``datalist.json``.

    Args:
        out_dir: target folder (default ``<cache>/demo_mrm_v1``).
        num_subjects: subjects; the last 20 % (at least 1) form the ``validation`` list.
        image_size: edge of the square PNGs (lesion sizes scale with it).
        num_snps: SNPs in the genotype file (``NUM_CAUSAL_GRADE + NUM_CAUSAL_PIGMENT`` of them causal).
        seed: base seed; subject ``i`` draws from ``(seed, 1, i)``, so subjects do not depend on ``num_subjects``.
        force: rebuild even when a complete build with the same parameters exists.

    Example: ``entries = read_image_datalist(build_demo_mrm("/tmp/mrm", num_subjects=16, image_size=64))``.
    """
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32, got {image_size}")
    if num_snps < NUM_CAUSAL_GRADE + NUM_CAUSAL_PIGMENT:
        raise ValueError(f"num_snps must be at least {NUM_CAUSAL_GRADE + NUM_CAUSAL_PIGMENT}")
    out = Path(out_dir or os.path.join(default_cache_dir(), f"demo_mrm_v{_VERSION}"))
    build = {"version": _VERSION, "num_subjects": num_subjects, "image_size": image_size, "num_snps": num_snps,
             "seed": seed}  # fmt: skip
    datalist_path = out / "datalist.json"
    with _locked(out):
        if not force and _is_built(datalist_path, build):
            return str(datalist_path)
        for sub in ("images", "masks"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        anatomy, model = fundus_anatomy(image_size), _genetic_model(num_snps, seed)
        thresholds = norm.ppf(GRADE_QUANTILES)  # the liability is ~N(0, 1) by construction
        n_val = max(1, math.ceil(0.2 * num_subjects))
        ids = [f"DemoMRM_{i:03d}" for i in range(num_subjects)]
        dosages = np.zeros((num_subjects, num_snps), np.int64)
        entries, truth, scores = [], [], []
        for i, sid in enumerate(ids):
            rng = np.random.default_rng([seed, 1, i])
            dosages[i] = rng.binomial(2, model["freq"])
            g_grade = _score(dosages[i], model["freq"], model["grade_snps"], model["grade_effects"])
            g_pig = _score(dosages[i], model["freq"], model["pigment_snps"], model["pigment_effects"])
            liability = g_grade + rng.normal(0, math.sqrt(1 - _HERITABILITY["grade"]))
            pigment = g_pig + rng.normal(0, math.sqrt(1 - _HERITABILITY["pigment"]))
            grade = int(np.searchsorted(thresholds, liability))
            img, label, counts = grade_lesions(grade, anatomy, rng)
            img, label, flipped = augment_fundus(img, label, pigment, rng)
            write_png(out / "images" / f"{sid}.png", np.round(img * 255).astype(np.uint8))
            write_png(out / "masks" / f"{sid}.png", label)
            split = "validation" if i >= num_subjects - n_val else "training"
            pixels = {k: int((label == v).sum()) for k, v in (("ma", 1), ("haem", 2), ("exudate", 3))}
            findings = [int(counts[k] > 0) for k in ("ma", "haem", "exudate")]
            entries.append({"subject_id": sid, "image": f"images/{sid}.png", "mask": f"masks/{sid}.png",
                            "grade": grade, "findings": findings, "pigmentation": round(pigment, 6), "split": split})  # fmt: skip
            truth.append({
                "subject_id": sid, "split": split, "grade": grade, "microaneurysms": counts["ma"],
                "haemorrhages": counts["haem"], "exudates": counts["exudate"], "lesion_pixels": sum(pixels.values()),
                "microaneurysm_pixels": pixels["ma"], "haemorrhage_pixels": pixels["haem"],
                "exudate_pixels": pixels["exudate"], "liability": round(liability, 6),
                "genetic_liability": round(g_grade, 6), "pigmentation": round(pigment, 6),
                "genetic_pigmentation": round(g_pig, 6), "laterality": "right" if flipped else "left",
            })  # fmt: skip
            scores.append({
                "subject_id": sid, "prs_retinopathy": round(g_grade + rng.normal(0, 0.5), 6),
                "prs_pigmentation": round(g_pig + rng.normal(0, 0.5), 6), "prs_null": round(rng.normal(), 6),
            })  # fmt: skip
        _write_genotypes(out, ids, dosages, np.random.default_rng([seed, 2]))
        write_csv(out / "scores.csv", scores)
        write_csv(out / "ground_truth.csv", truth)
        write_csv(out / "datalist.csv", [{k: e[k] for k in ("subject_id", "image", "mask", "split", "grade")}
                                          for e in entries])  # fmt: skip
        snp = [f"snp{j:04d}" for j in range(num_snps)]
        content = {
            "name": "demo_mrm",
            "build": build,
            "genetics": {"plink": "genotypes.bed", "scores": "scores.csv", "num_snps": num_snps},
            "causal_snps": {
                "grade": dict(zip([snp[j] for j in model["grade_snps"]], model["grade_effects"].round(6).tolist())),
                "pigmentation": dict(zip([snp[j] for j in model["pigment_snps"]], model["pigment_effects"].round(6).tolist())),
            },
            "labels": {"grade": "0 none .. 4 most severe", "findings": ["microaneurysm", "haemorrhage", "exudate"],
                       "mask": {"0": "background", "1": "microaneurysm", "2": "haemorrhage", "3": "exudate"}},
            "training": [e for e in entries if e["split"] == "training"],
            "validation": [e for e in entries if e["split"] == "validation"],
        }  # fmt: skip
        tmp = datalist_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(content, indent=2))
        os.replace(tmp, datalist_path)
    return str(datalist_path)


def demo_mrm_datalist(num_subjects: int = 64, image_size: int = 224, num_snps: int = 300, seed: int = 0) -> str:
    """The demo set in the cache (``MMPT_CACHE_DIR``), one folder per parameter set; returns its ``datalist.json``.

    Example (config): ``"datalist": "$common.data.demo_mrm.demo_mrm_datalist(@num_subjects, @image_size)"``.
    """
    name = f"demo_mrm_v{_VERSION}_n{num_subjects}_s{image_size}_snp{num_snps}_seed{seed}"
    return build_demo_mrm(os.path.join(default_cache_dir(), name), num_subjects, image_size, num_snps, seed)
