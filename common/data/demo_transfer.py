"""Embedded demo sets of the five MRM downstream tasks, each written in its real dataset's layout.

Every image derives from the same real pictures as the mrm demo set (:mod:`common.data.demo_mrm`): the fundus
photograph ``skimage.data.retina()`` (CC0) for the four retinal tasks, and the immunohistochemistry picture
``skimage.data.immunohistochemistry()`` for glioma grading. The synthetic findings are drawn with
:mod:`common.data.demo_mrm`'s own functions (:func:`~common.data.demo_mrm.fundus_anatomy`,
:func:`~common.data.demo_mrm.draw_lesions`, :func:`~common.data.demo_mrm.draw_spots`,
:func:`~common.data.demo_mrm.augment_fundus`: flip, rotation, scale, shift, colour gain / gamma, noise), so every
label is something the image visibly carries:

=========  ==========================================================================================================
task       labels -> what the image shows (layout written, as :mod:`common.data.tasks2d` reads it)
=========  ==========================================================================================================
aptos      DR grade 0-4 -> microaneurysms (>= 1), blot haemorrhages (>= 2), exudates (>= 3), more and larger with the
           grade (the mrm demo's own grading). ``train.csv`` (``id_code,diagnosis``) + ``train_images/<id_code>.png``
rfmid      ``Disease_Risk`` + ``DR`` (red lesions), ``DN`` (yellow deposits near the macula, drawn as the exudates),
           ``MH`` (media haze: blur and a grey veil), ``TSLN`` (a darker, redder fundus: the demo's tessellation),
           each drawn independently; ``ODE`` is present in no image (a label constant in every split, which the
           evaluation must report and leave out). RFMiD 1.0's three sets ``Training_Set``, ``Evaluation_Set``,
           ``Test_Set`` with their labels CSVs (``ID,Disease_Risk,DR,...``) and ``<ID>.png``
palm       optic disc (an ellipse with the second moments of the photograph's real disc, found as its bright region)
           and, in 60 % of the images, a pale peripapillary atrophy crescent on the temporal side, both warped with
           the image. ``Training/``, ``Validation/``, ``Testing/`` each with ``Images/<name>.jpg`` (wider than tall,
           black side margins as from a fundus camera), ``Disc Masks/<name>.bmp`` and, for images with atrophy,
           ``Lesion Masks/Atrophy/<name>.bmp`` (PALM's convention: 0 = structure, 255 = background)
crp        age, BMI, SBP, DBP (continuous, realistic units and correlations) and sex, smoking (binary) -> global
           brightness (age), vessel darkness (BMI), red gain (SBP), blue gain (DBP), optic-disc brightness (sex),
           haze (smoking), each plus noise; 3 % of BMI and smoking cells empty (missing). ``labels.csv``
           (``id,age,bmi,sbp,dbp,sex,smoking``) + ``images/<id>.png``
glioma     WHO grade II / III / IV -> density, size, spread of size and darkness of synthetic nuclei on tiles cut
           from the IHC picture (random crops, rotations, flips), necrosis (a pale pink area) in most grade IV
           tiles. ``labels.csv`` (``case_id,grade``) + ``tiles/<case_id>/<k>.png``, several tiles per case
=========  ==========================================================================================================

Each folder also holds ``ground_truth.csv`` (the latent values per image: lesion counts, pixel counts, effects)
and ``demo.json`` (the build parameters; written last and atomically: its presence with matching parameters marks
a complete build, reused ever after). Everything is seeded: image ``i`` of a task draws from ``(seed, task, i)``,
so a build is bit-identical on every machine. A few seconds per task at the default sizes.

Example::

    folder = build_demo_transfer("aptos", "/tmp/aptos", num_subjects=50, image_size=64)
    entries = common.data.tasks2d.read_aptos(folder)  # the reader a user's APTOS folder goes through
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from common.data.demo import _is_built, _locked, default_cache_dir
from common.data.demo_mrm import augment_fundus, draw_lesions, draw_spots, fundus_anatomy, grade_lesions, write_csv

__all__ = [
    "DEMO_TASKS",
    "DEMO_DEFAULTS",
    "APTOS_GRADE_SHARES",
    "RFMID_DEMO_LABELS",
    "CRP_TARGETS",
    "build_demo_transfer",
    "demo_transfer_dir",
    "task_data_dir",
    "optic_disc",
]

_VERSION = {"aptos": 2, "rfmid": 2, "palm": 1, "crp": 1, "glioma": 1}  # per task: a change rebuilds only its set
DEMO_TASKS = ("aptos", "rfmid", "palm", "crp", "glioma")
# default build per task: images, and the edge of the written images (the demo bundles' network input)
DEMO_DEFAULTS: dict[str, dict[str, int]] = {
    "aptos": {"num_subjects": 400, "image_size": 96},
    "rfmid": {"num_subjects": 400, "image_size": 96},
    "palm": {"num_subjects": 150, "image_size": 96},
    "crp": {"num_subjects": 400, "image_size": 96},
    "glioma": {"num_subjects": 150, "image_size": 96},  # cases; TILES_PER_CASE tiles each
}
APTOS_GRADE_SHARES = (0.3, 0.2, 0.2, 0.15, 0.15)  # grades 0..4 (APTOS 2019 itself: 0.49, 0.10, 0.27, 0.05, 0.08)
# RFMiD columns of the demo (a subset of RFMiD 1.0's 46, same names) and the chance that an image shows each
RFMID_DEMO_LABELS: dict[str, float] = {"DR": 0.35, "DN": 0.3, "MH": 0.25, "TSLN": 0.3, "ODE": 0.0}
CRP_TARGETS: dict[str, str] = {"age": "continuous", "bmi": "continuous", "sbp": "continuous", "dbp": "continuous",
                               "sex": "binary", "smoking": "binary"}  # fmt: skip
TILES_PER_CASE = 2
# lesions (APTOS grades, RFMiD's DR and DN) drawn 5 times the size they have in a 224 px photograph, so that the
# demo's from-scratch 6-block ViT learns them within its budget (at 3 times, APTOS stayed at chance for 10 epochs
# and RFMiD's DR / DN at ROC-AUC 0.65 / 0.45 after 30: measured, see the bundles' docs)
LESION_SCALE = 5.0
_MISSING_CRP = 0.03
_RFMID_SETS = (("Training_Set", "RFMiD_Training_Labels.csv", "Training", 0.6),
               ("Evaluation_Set", "RFMiD_Validation_Labels.csv", "Validation", 0.2),
               ("Test_Set", "RFMiD_Testing_Labels.csv", "Test", 0.2))  # fmt: skip
_GLIOMA = {  # per WHO grade: nuclei per 96 x 96 px, radius range (px at 96), kept fraction per channel (darkness)
    "II": {"density": 10, "radius": (1.6, 2.4), "keep": (0.5, 0.45, 0.7)},
    "III": {"density": 24, "radius": (2.0, 3.8), "keep": (0.38, 0.32, 0.58)},
    "IV": {"density": 40, "radius": (2.4, 5.2), "keep": (0.3, 0.22, 0.5)},
}


# ---- shared pieces --------------------------------------------------------------------------------------------


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def _save(path: Path, array: np.ndarray, **kwargs: Any) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def optic_disc(anatomy: Mapping[str, np.ndarray]) -> np.ndarray:
    """Boolean ``[H, W]`` mask of the photograph's optic disc: the ellipse with the second moments of the convex
    hull of its bright region (smoothed luminance above the surrounding ring's median by a quarter of the way to
    the disc's peak), as PALM's annotators outline the disc with an ellipse-like contour.

    Example: ``disc = optic_disc(fundus_anatomy(96))  # ~ 140 pixels, radius ~ 6.5 % of the image``.
    """
    from skimage.morphology import convex_hull_image

    size = anatomy["fov"].shape[0]
    smooth = ndimage.gaussian_filter(anatomy["rgb"].mean(-1), size / 120)
    rows, cols = np.indices(smooth.shape)
    dist = np.hypot(rows - anatomy["disc"][0], cols - anatomy["disc"][1])
    ring = (dist > 0.1 * size) & (dist < 0.14 * size) & anatomy["fov"]
    background, peak = np.median(smooth[ring]), smooth[dist < 0.02 * size].max()
    bright = (smooth > background + 0.25 * (peak - background)) & (dist < 0.1 * size)
    components, _ = ndimage.label(bright)
    hull = convex_hull_image(components == components[tuple(anatomy["disc"])])
    ys, xs = np.nonzero(hull)
    offset = np.stack([rows - ys.mean(), cols - xs.mean()], -1)
    q = np.einsum("...i,ij,...j->...", offset, np.linalg.inv(np.cov(np.stack([ys, xs]))), offset)
    return q <= 4.0  # the moment ellipse: (p - c)^T cov^-1 (p - c) <= 4


def _vessels(anatomy: Mapping[str, np.ndarray]) -> np.ndarray:
    """Vessel map in [0, 1] of the real photograph: black top-hat of its green channel inside the field of view."""
    size = anatomy["fov"].shape[0]
    green = ndimage.gaussian_filter(anatomy["rgb"][..., 1], 0.5)
    tophat = ndimage.grey_closing(green, size=max(3, size // 24)) - green
    tophat = np.where(anatomy["fov"], tophat, 0)
    return np.clip(tophat / np.percentile(tophat[anatomy["fov"]], 99), 0, 1)


def _haze(img: np.ndarray, strength: float, size: int) -> np.ndarray:
    """Media haze / cataract-like veil: blur by ``strength``-scaled sigma and mix in a grey veil, inside the image."""
    inside = img.sum(-1, keepdims=True) > 0.05
    blurred = ndimage.gaussian_filter(img, (1.5 * strength * size / 96, 1.5 * strength * size / 96, 0))
    veiled = (1 - 0.3 * strength) * blurred + 0.3 * strength * np.array([0.75, 0.7, 0.65])
    return np.where(inside, veiled, img)


# ---- APTOS ----------------------------------------------------------------------------------------------------


def _aptos(out: Path, n: int, size: int, seed: int) -> list[dict]:
    anatomy = fundus_anatomy(size)
    rows, truth, ids = [], [], set()
    for i in range(n):
        rng = np.random.default_rng([seed, 0, i])
        sid = rng.bytes(6).hex()  # APTOS ids are 12 hex digits
        while sid in ids:
            sid = rng.bytes(6).hex()
        ids.add(sid)
        grade = int(rng.choice(5, p=APTOS_GRADE_SHARES))
        img, label, counts = grade_lesions(grade, anatomy, rng, LESION_SCALE)
        img, label, flipped = augment_fundus(img, label, float(rng.normal(0, 0.5)), rng)
        _save(out / "train_images" / f"{sid}.png", _to_uint8(img), compress_level=1)
        rows.append({"id_code": sid, "diagnosis": grade})
        truth.append({"id_code": sid, "diagnosis": grade, "microaneurysms": counts["ma"],
                      "haemorrhages": counts["haem"], "exudates": counts["exudate"],
                      "lesion_pixels": int((label > 0).sum()), "laterality": "right" if flipped else "left"})  # fmt: skip
    write_csv(out / "train.csv", rows)
    return truth


# ---- RFMiD ----------------------------------------------------------------------------------------------------


def _rfmid_image(findings: Mapping[str, int], anatomy: dict, rng: np.random.Generator, size: int) -> np.ndarray:
    counts = {
        "ma": int(rng.poisson(6)) + 2 if findings["DR"] else 0,
        "haem": int(rng.poisson(3)) + 1 if findings["DR"] else 0,
        "exudate": int(rng.poisson(5)) + 3 if findings["DN"] else 0,
    }
    img, label = draw_lesions(counts, anatomy, rng, lesion_scale=LESION_SCALE)
    pigment = 2.5 + rng.normal(0, 0.3) if findings["TSLN"] else rng.normal(0, 0.4)
    img, _, _ = augment_fundus(img, label, float(pigment), rng)
    return _haze(img, rng.uniform(0.8, 1.2), size) if findings["MH"] else img


def _rfmid(out: Path, n: int, size: int, seed: int) -> list[dict]:
    anatomy = fundus_anatomy(size)
    sizes = [round(share * n) for *_, share in _RFMID_SETS[:2]]
    sizes.append(n - sum(sizes))
    truth, i = [], 0
    for (folder, table, images, _), count in zip(_RFMID_SETS, sizes):
        rows = []
        for image_id in range(1, count + 1):  # RFMiD numbers the images of each set from 1
            rng = np.random.default_rng([seed, 1, i])
            i += 1
            findings = {k: int(rng.random() < p) for k, p in RFMID_DEMO_LABELS.items()}
            img = _rfmid_image(findings, anatomy, rng, size)
            _save(out / folder / images / f"{image_id}.png", _to_uint8(img), compress_level=1)
            rows.append({"ID": image_id, "Disease_Risk": int(any(findings.values())), **findings})
            truth.append({"set": folder, **rows[-1]})
        write_csv(out / folder / table, rows)
    return truth


# ---- PALM -----------------------------------------------------------------------------------------------------


def _crescent(disc: np.ndarray, fovea: np.ndarray, width: float) -> np.ndarray:
    """Peripapillary atrophy: the disc ellipse enlarged by ``width`` (in disc radii) and shifted by as much
    towards the fovea (temporal side), minus the disc itself: a crescent, widest on the temporal side."""
    ys, xs = np.nonzero(disc)
    centre = np.array([ys.mean(), xs.mean()])
    cov = np.cov(np.stack([ys, xs]))
    radius = math.sqrt(disc.sum() / math.pi)
    towards = (fovea - centre) / max(np.linalg.norm(fovea - centre), 1e-6)
    shifted = centre + towards * width * radius * 0.9
    rows, cols = np.indices(disc.shape)
    offset = np.stack([rows - shifted[0], cols - shifted[1]], -1)
    q = np.einsum("...i,ij,...j->...", offset, np.linalg.inv(cov * (1 + width) ** 2), offset)
    return (q <= 4.0) & ~disc


def _palm(out: Path, n: int, size: int, seed: int) -> list[dict]:
    anatomy = fundus_anatomy(size)
    disc = optic_disc(anatomy)
    margin = size // 16  # black side margins: the written image is wider than tall, as PALM's photographs
    sets = ("Training", "Validation", "Testing")
    truth = []
    for i in range(n):
        rng = np.random.default_rng([seed, 2, i])
        set_name = sets[i * len(sets) // n]
        atrophy = bool(rng.random() < 0.6)
        label = disc.astype(np.uint8)  # 1 disc, 2 atrophy
        img = anatomy["rgb"].copy()
        if atrophy:
            width = rng.uniform(0.4, 1.3)
            crescent = _crescent(disc, anatomy["fovea"].astype(np.float64), width)
            texture = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 1.0)
            alpha = (0.75 + 0.1 * texture)[..., None] * ndimage.gaussian_filter(crescent.astype(float), 0.7)[..., None]
            img = img * (1 - alpha) + alpha * np.array([0.95, 0.86, 0.7])  # pale, yellow-white sclera showing
            label[crescent] = 2
        img, label, flipped = augment_fundus(img, label, float(rng.normal(0.8, 0.6)), rng)  # myopic: paler vessels
        img, label = (np.pad(a, ((0, 0), (margin, margin)) + ((0, 0),) * (a.ndim - 2)) for a in (img, label))
        name = f"{'P' if atrophy else 'N'}{i + 1:04d}"
        folder = out / set_name
        _save(folder / "Images" / f"{name}.jpg", _to_uint8(img), quality=95)
        _save(folder / "Disc Masks" / f"{name}.bmp", np.where(label == 1, 0, 255).astype(np.uint8))
        if atrophy:
            _save(folder / "Lesion Masks" / "Atrophy" / f"{name}.bmp", np.where(label == 2, 0, 255).astype(np.uint8))
        truth.append({"set": set_name, "name": name, "disc_pixels": int((label == 1).sum()),
                      "atrophy_pixels": int((label == 2).sum()), "laterality": "right" if flipped else "left"})  # fmt: skip
    return truth


# ---- CRP ------------------------------------------------------------------------------------------------------


def _crp_values(rng: np.random.Generator) -> dict[str, float]:
    """Risk factors with UK Biobank-like means, spreads and correlations (SBP rises with age and BMI, DBP with SBP)."""
    age = float(np.clip(rng.normal(57, 8), 40, 72))
    bmi = float(np.clip(rng.normal(27.4, 4.5), 17, 45))
    sex = int(rng.random() < 0.46)  # 1 = male
    sbp = float(np.clip(120 + 0.6 * (age - 57) + 0.8 * (bmi - 27.4) + 5 * sex + rng.normal(0, 13), 85, 200))
    dbp = float(np.clip(80 + 0.35 * (sbp - 120) + 0.4 * (bmi - 27.4) + rng.normal(0, 7), 50, 120))
    smoking = int(rng.random() < 0.3)
    return {"age": age, "bmi": bmi, "sbp": sbp, "dbp": dbp, "sex": sex, "smoking": smoking}


def _crp_image(v: Mapping[str, float], anatomy: dict, disc: np.ndarray, vessels: np.ndarray,
               rng: np.random.Generator, size: int) -> np.ndarray:  # fmt: skip
    z = {"age": (v["age"] - 57) / 8, "bmi": (v["bmi"] - 27.4) / 4.5, "sbp": (v["sbp"] - 120) / 15,
         "dbp": (v["dbp"] - 80) / 9}  # fmt: skip
    img = anatomy["rgb"].copy()
    darkness = np.clip(0.45 + 0.2 * z["bmi"] + rng.normal(0, 0.05), 0, 0.95)  # BMI: darker, wider-looking vessels
    img *= 1 - darkness * vessels[..., None] * np.array([0.5, 1.0, 1.0])
    soft_disc = ndimage.gaussian_filter(disc.astype(float), size / 60)[..., None]
    boost = 0.45 * v["sex"] + rng.normal(0, 0.06)  # sex: brighter optic disc
    img = img + soft_disc * boost * (1 - img)
    img, _, _ = augment_fundus(img, np.zeros((size, size), np.uint8), float(rng.normal(0, 0.3)), rng)
    gain = np.exp(np.array([0.1 * z["sbp"], 0.0, 0.14 * z["dbp"]]) - 0.14 * z["age"])  # SBP red, DBP blue, age dark
    img = np.clip(img * gain, 0, 1)
    return _haze(img, rng.uniform(0.5, 0.9), size) if v["smoking"] else img


def _crp(out: Path, n: int, size: int, seed: int) -> list[dict]:
    anatomy = fundus_anatomy(size)
    disc, vessels = optic_disc(anatomy), _vessels(anatomy)
    rows, truth = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, 3, i])
        sid = f"{1000001 + i}"  # UK Biobank-style numeric participant ids
        values = _crp_values(rng)
        img = _crp_image(values, anatomy, disc, vessels, rng, size)
        _save(out / "images" / f"{sid}.png", _to_uint8(img), compress_level=1)
        row = {
            "id": sid,
            **{k: round(values[k], 1) if CRP_TARGETS[k] == "continuous" else values[k] for k in CRP_TARGETS},
        }
        truth.append(dict(row))
        for k in ("bmi", "smoking"):
            if rng.random() < _MISSING_CRP:
                row[k] = "NA"
        rows.append(row)
    write_csv(out / "labels.csv", rows)
    return truth


# ---- glioma ---------------------------------------------------------------------------------------------------


def _tissue(source: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of the IHC picture (1.2-2.5 tile edges wide), rotated by k * 90 degrees, maybe mirrored,
    resized to ``size``."""
    from skimage.transform import resize

    edge = int(min(source.shape[0], rng.uniform(1.2, 2.5) * size))
    r, c = rng.integers(0, source.shape[0] - edge + 1), rng.integers(0, source.shape[1] - edge + 1)
    crop = np.rot90(source[r : r + edge, c : c + edge], int(rng.integers(4)))
    crop = crop[:, ::-1] if rng.random() < 0.5 else crop
    return resize(crop, (size, size, 3), anti_aliasing=True, order=1)


def _glioma_tile(grade: str, source: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    spec, scale = _GLIOMA[grade], size / 96
    img = _tissue(source, size, rng)
    necrosis = grade == "IV" and rng.random() < 0.7
    if necrosis:  # a pale pink, nucleus-poor area
        centre = rng.uniform(0.2, 0.8, (1, 2)) * size
        area = draw_spots((size, size), centre, np.array([rng.uniform(0.12, 0.2) * size]), None, rng)
        img = img * (1 - 0.8 * area[..., None]) + 0.8 * area[..., None] * np.array([0.93, 0.78, 0.84])
    k = int(rng.poisson(spec["density"] * scale**2))
    centres = rng.uniform(0, size, (k, 2))
    radii = rng.uniform(*spec["radius"], k) * scale
    nuclei = draw_spots((size, size), centres, radii, None, rng)
    img *= 1 - nuclei[..., None] * (1 - np.array(spec["keep"]))  # hematoxylin-dark nuclei
    img = np.clip(img + rng.normal(0, 0.01, img.shape), 0, 1)
    return img, {"nuclei": k, "nucleus_pixels": int((nuclei > 0.3).sum()), "necrosis": int(necrosis)}


def _glioma(out: Path, n: int, size: int, seed: int) -> list[dict]:
    from skimage import data

    source = data.immunohistochemistry().astype(np.float64) / 255.0
    grades = list(_GLIOMA)
    rows, truth = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, 4, i])
        case = f"TCGA-DM-{i + 1:04d}"
        grade = grades[int(rng.integers(len(grades)))]
        rows.append({"case_id": case, "grade": grade})
        for t in range(TILES_PER_CASE):
            img, facts = _glioma_tile(grade, source, size, rng)
            _save(out / "tiles" / case / f"{t}.png", _to_uint8(img), compress_level=1)
            truth.append({"case_id": case, "tile": t, "grade": grade, **facts})
    write_csv(out / "labels.csv", rows)
    return truth


_BUILDERS = {"aptos": _aptos, "rfmid": _rfmid, "palm": _palm, "crp": _crp, "glioma": _glioma}


# ---- public API -----------------------------------------------------------------------------------------------


def build_demo_transfer(
    task: str,
    out_dir: str | os.PathLike | None = None,
    num_subjects: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
    force: bool = False,
) -> str:
    """Build (once) the demo set of one downstream task in that dataset's own layout; return the folder.

    Args:
        task: ``aptos``, ``rfmid``, ``palm``, ``crp`` or ``glioma``.
        out_dir: target folder (default ``<cache>/demo_<task>_v1``).
        num_subjects: images (glioma: cases, ``TILES_PER_CASE`` tiles each); default :data:`DEMO_DEFAULTS`.
        image_size: edge of the written images (PALM: their height; they are ``image_size / 8`` wider).
        seed: base seed.
        force: rebuild even when a complete build with the same parameters exists.

    Example: ``read_aptos(build_demo_transfer("aptos", "/tmp/aptos", num_subjects=40, image_size=64))``.
    """
    if task not in _BUILDERS:
        raise ValueError(f"unknown demo task {task!r}: one of {DEMO_TASKS}")
    n = int(num_subjects if num_subjects is not None else DEMO_DEFAULTS[task]["num_subjects"])
    size = int(image_size if image_size is not None else DEMO_DEFAULTS[task]["image_size"])
    if size < 32:
        raise ValueError(f"image_size must be at least 32, got {size}")
    if n < 5:
        raise ValueError(f"num_subjects must be at least 5 (an 80/20 split needs a test case), got {n}")
    out = Path(out_dir or os.path.join(default_cache_dir(), f"demo_{task}_v{_VERSION.get(task, 1)}"))
    build = {"task": task, "version": _VERSION.get(task, 1), "num_subjects": n, "image_size": size, "seed": seed}
    marker = out / "demo.json"
    with _locked(out):
        if not force and _is_built(marker, build):
            return str(out)
        truth = _BUILDERS[task](out, n, size, seed)
        write_csv(out / "ground_truth.csv", truth)
        tmp = marker.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"name": f"demo_{task}", "build": build}, indent=1))
        os.replace(tmp, marker)
    return str(out)


def demo_transfer_dir(task: str, num_subjects: int | None = None, image_size: int | None = None, seed: int = 0) -> str:
    """The demo set of ``task`` in the cache (``MMPT_CACHE_DIR``), one folder per parameter set, built on first use.

    Example: ``demo_transfer_dir("palm", num_subjects=30, image_size=64)``.
    """
    n = num_subjects if num_subjects is not None else DEMO_DEFAULTS.get(task, {}).get("num_subjects")
    size = image_size if image_size is not None else DEMO_DEFAULTS.get(task, {}).get("image_size")
    name = f"demo_{task}_v{_VERSION.get(task, 1)}_n{n}_s{size}_seed{seed}"
    return build_demo_transfer(task, os.path.join(default_cache_dir(), name), n, size, seed)


def task_data_dir(
    task: str,
    dataset_dir: str | os.PathLike | None = None,
    datalist: str | os.PathLike | None = None,
    demo: Mapping[str, Any] | None = None,
    input_dir: str | os.PathLike | None = None,
) -> str | None:
    """Where a bundle's data come from: ``dataset_dir`` when given (a real layout folder), nothing when only a
    ``datalist`` or an ``input_dir`` (inference on a folder of new images) is given, else the task's demo set
    (built on first use with ``demo``'s parameters).

    Example (config)::

        "data_dir": {"_target_": "common.data.demo_transfer.task_data_dir", "task": "aptos",
                     "dataset_dir": "@dataset_dir", "datalist": "@datalist", "demo": "@demo"}
    """
    if dataset_dir:
        if not Path(dataset_dir).is_dir():
            raise FileNotFoundError(f"dataset_dir {dataset_dir} is not a folder")
        return str(dataset_dir)
    if datalist or input_dir:
        return None
    return demo_transfer_dir(task, **dict(demo or {}))
