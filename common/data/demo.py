"""The embedded demo set: multi-contrast 3D brain MRI with tumours, built from real anatomy on first use.

Real anatomy ships offline in nilearn: the ICBM 2009a MNI152 T1 template with its grey- and white-matter
probability maps and brain mask (CSF = mask - GM - WM). Each subject gets a smooth random deformation of that
anatomy, a synthetic tumour (oedema shell; necrotic core and enhancing rim when high grade), four contrasts
synthesised from the tissue fractions (T1, T1ce, T2, FLAIR) with per-subject intensity scaling, a bias field and
noise, and a BraTS-2023-style label map (1 necrotic core, 2 oedema, 3 enhancing). Everything is seeded, so a
build is bit-identical on every machine; it is written once into a cache folder and reused.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = ["MODALITIES", "BRATS_LABELS", "default_cache_dir", "build_demo_brats", "demo_datalist"]

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
BRATS_LABELS = {"necrotic_core": 1, "edema": 2, "enhancing": 3}
_VERSION = 2  # 2: larger tumours, thicker and brighter enhancing rim (the demo grade visible at 64^3)
_MIN_EDGE = 96

# mean intensity of each tissue class per contrast (arbitrary units, MR-like orderings):
#            CSF    GM     WM    oedema  core   enhancing
_CONTRAST = {
    "t1": (0.25, 0.60, 0.85, 0.45, 0.30, 0.55),
    "t1ce": (0.25, 0.60, 0.85, 0.45, 0.30, 2.00),  # gadolinium: enhancing rim about 2.4x WM
    "t2": (1.00, 0.60, 0.40, 0.95, 1.05, 0.70),
    "flair": (0.15, 0.65, 0.50, 1.10, 0.60, 0.80),
}


def default_cache_dir() -> str:
    """``$MMPT_CACHE_DIR``, or ``~/.cache/mm-pretrain``."""
    return os.environ.get("MMPT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "mm-pretrain")


def _anatomy(spacing: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Tissue probability maps (csf, gm, wm) resampled to ``spacing`` mm, cropped to the brain, padded to 96."""
    from nilearn import datasets

    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).get_fdata(), dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(), dtype=np.float32)
    mask_img = datasets.load_mni152_brain_mask(resolution=1)
    mask = np.asarray(mask_img.get_fdata(), dtype=np.float32)
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    zoom = 1.0 / spacing
    maps = {k: np.clip(ndimage.zoom(v, zoom, order=1), 0.0, 1.0) for k, v in {"csf": csf, "gm": gm, "wm": wm}.items()}
    brain = (maps["csf"] + maps["gm"] + maps["wm"]) > 0.1
    lo = np.maximum(np.argwhere(brain).min(0) - 2, 0)
    hi = np.argwhere(brain).max(0) + 3
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    pads = [((max(_MIN_EDGE - (b - a), 0)) // 2, (max(_MIN_EDGE - (b - a), 0) + 1) // 2) for a, b in zip(lo, hi)]
    maps = {k: np.pad(v[crop], pads) for k, v in maps.items()}
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = mask_img.affine[:3, 3] + (lo - np.array([p[0] for p in pads])) * np.diag(mask_img.affine)[:3]
    return maps, affine


def _deformation(shape: tuple[int, ...], rng: np.random.Generator, spacing: float) -> np.ndarray:
    """Sampling coordinates of a small random affine (scale +-8 %, rotation +-8 deg) plus a smooth displacement."""
    centre = (np.array(shape) - 1) / 2.0
    angles = np.deg2rad(rng.uniform(-8, 8, 3))
    rot = np.eye(3)
    for axis, a in enumerate(angles):
        c, s = math.cos(a), math.sin(a)
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rot = rot @ r
    matrix = rot @ np.diag(rng.uniform(0.92, 1.08, 3))
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1) - centre[:, None]
    coords = (matrix @ grid).reshape(3, *shape) + centre[:, None, None, None]
    sigma = 12.0 / spacing
    for d in range(3):  # smooth displacement of a few millimetres
        noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
        coords[d] += noise / (noise.std() + 1e-6) * (3.0 / spacing)
    return coords


def _tumour(brain: np.ndarray, rng: np.random.Generator, spacing: float, high_grade: bool) -> np.ndarray:
    """Label map of a smooth blob inside the brain: 2 oedema shell, 1 core, 3 enhancing rim (high grade).

    Sizes (version 2): semi-axes of the enhancing boundary 12-22 mm, oedema out to 1.6 of them; a high-grade
    core inside 0.4 of them (the rim is 60 % of the radius thick), a low-grade, non-enhancing core inside 0.8.
    At the downstream demos' 64^3 whole-brain input the rim then fills a few percent of a 16^3 patch, so the
    grade (the classification demos' label) is visible to a patch-16 ViT, not only to a voxel-wise maximum.
    """
    shape = brain.shape
    inside = np.argwhere(ndimage.binary_erosion(brain, iterations=max(1, int(12 / spacing))))
    centre = inside[rng.integers(len(inside))]
    radii = rng.uniform(12, 22, 3) / spacing
    grid = np.indices(shape, dtype=np.float32)
    dist = np.sqrt(sum(((grid[d] - centre[d]) / radii[d]) ** 2 for d in range(3)))
    wobble = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 6.0 / spacing)
    dist = dist + 0.25 * wobble / (np.abs(wobble).max() + 1e-6)
    label = np.zeros(shape, np.uint8)
    label[(dist < 1.6) & brain] = 2
    if high_grade:
        label[(dist < 1.0) & brain] = 3
        label[(dist < 0.4) & brain] = 1
    else:
        label[(dist < 0.8) & brain] = 1
    return label


def _contrasts(
    maps: dict[str, np.ndarray], label: np.ndarray, rng: np.random.Generator, spacing: float
) -> dict[str, np.ndarray]:
    tumour = {c: (label == v).astype(np.float32) for c, v in (("edema", 2), ("core", 1), ("enh", 3))}
    in_tumour = label > 0
    frac = [np.where(in_tumour, 0.0, maps[k]) for k in ("csf", "gm", "wm")] + [
        tumour["edema"],
        tumour["core"],
        tumour["enh"],
    ]
    frac = [ndimage.gaussian_filter(f, 0.6) for f in frac]  # partial volume at tumour borders
    brain = sum(frac) > 0.05
    bias = np.exp(ndimage.gaussian_filter(rng.standard_normal(label.shape).astype(np.float32), 30.0 / spacing) * 8.0)
    bias /= bias[brain].mean()
    out = {}
    for m in MODALITIES:
        means = np.array(_CONTRAST[m]) * rng.uniform(0.9, 1.1, 6)
        img = sum(w * f for w, f in zip(means, frac)) * rng.uniform(600, 1400)
        img = img * np.clip(bias, 0.7, 1.3)
        sigma = 0.02 * img[brain].mean()
        img = np.sqrt((img + rng.normal(0, sigma, img.shape)) ** 2 + rng.normal(0, sigma, img.shape) ** 2)  # Rician
        out[m] = np.where(brain, img, 0.0).astype(np.float32)
    return out


def _case(
    index: int, maps: dict[str, np.ndarray], seed: int, spacing: float
) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
    rng = np.random.default_rng(seed + index)
    coords = _deformation(maps["gm"].shape, rng, spacing)
    warped = {k: ndimage.map_coordinates(v, coords, order=1, mode="constant") for k, v in maps.items()}
    brain = (warped["csf"] + warped["gm"] + warped["wm"]) > 0.5
    high_grade = index % 2 == 0
    label = _tumour(brain, rng, spacing, high_grade)
    return _contrasts(warped, label, rng, spacing), label, int(high_grade)


def _missing(index: int, num_cases: int, num_missing: int) -> tuple[str, ...]:
    """Deterministic modalities absent from case ``index``: every other case from the start, 1 or 2 of them."""
    if num_missing <= 0 or index % 2 or index // 2 >= num_missing:
        return ()
    drop = ("t1ce", "flair", "t2")
    k = 1 + (index // 2) % 2
    start = (index // 2) % 3
    return tuple(drop[(start + j) % 3] for j in range(k))


def _is_built(marker: Path, build: dict) -> bool:
    """Whether ``marker`` (the JSON a finished build writes last) records this exact ``build``; a half-written or
    unreadable marker counts as not built."""
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("build") == build
    except json.JSONDecodeError:
        return False


@contextmanager
def _locked(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_demo_brats(
    out_dir: str | None = None,
    num_cases: int = 8,
    spacing: float = 2.0,
    seed: int = 0,
    num_missing: int = 0,
    force: bool = False,
) -> str:
    """Build (once) the demo set in BraTS layout and return the path of its ``datalist.json``.

    Args:
        out_dir: target folder (default ``<cache>/demo_brats_v2``).
        num_cases: number of subjects; the last 20 % (at least 1) form the ``validation`` list.
        spacing: voxel size in mm (2 mm: about 96 x 116 x 96 voxels, every edge at least 96).
        seed: base seed; subject ``i`` uses ``seed + i``.
        num_missing: how many subjects lack 1-2 modalities (for methods that take any modality subset).
        force: rebuild even when a complete build with the same parameters exists.
    """
    out = Path(out_dir or os.path.join(default_cache_dir(), f"demo_brats_v{_VERSION}"))
    build = {"version": _VERSION, "num_cases": num_cases, "spacing": spacing, "seed": seed, "num_missing": num_missing}
    datalist_path = out / "datalist.json"
    with _locked(out):
        if not force and _is_built(datalist_path, build):
            return str(datalist_path)
        maps, affine = _anatomy(spacing)
        entries = []
        for i in range(num_cases):
            subject = f"DemoBraTS_{i:03d}"
            (out / subject).mkdir(parents=True, exist_ok=True)
            images, label, grade = _case(i, maps, seed, spacing)
            entry = {"subject_id": subject}
            absent = _missing(i, num_cases, num_missing)
            for m in MODALITIES:
                path = out / subject / f"{subject}_{m}.nii.gz"
                if m in absent:
                    path.unlink(missing_ok=True)
                    continue
                nib.save(nib.Nifti1Image(images[m], affine), path)
                entry[m] = f"{subject}/{path.name}"
            nib.save(nib.Nifti1Image(label, affine), out / subject / f"{subject}_seg.nii.gz")
            entry.update({"label": f"{subject}/{subject}_seg.nii.gz", "class_label": grade})
            entries.append(entry)
        n_val = max(1, math.ceil(0.2 * num_cases))
        content = {
            "name": "demo_brats",
            "build": build,
            "modalities": list(MODALITIES),
            "labels": {"0": "background", "1": "necrotic_core", "2": "edema", "3": "enhancing"},
            "training": entries[:-n_val],
            "validation": entries[-n_val:],
            "testing": [{k: v for k, v in e.items() if k not in ("label", "class_label")} for e in entries[-n_val:]],
        }
        tmp = datalist_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(content, indent=2))
        os.replace(tmp, datalist_path)
    return str(datalist_path)


def demo_datalist(num_cases: int = 8, spacing: float = 2.0, seed: int = 0, num_missing: int = 0) -> str:
    """The demo set in the cache, one folder per parameter set; returns its ``datalist.json``."""
    name = f"demo_brats_v{_VERSION}_n{num_cases}_s{spacing:g}_seed{seed}_m{num_missing}"
    return build_demo_brats(os.path.join(default_cache_dir(), name), num_cases, spacing, seed, num_missing)
