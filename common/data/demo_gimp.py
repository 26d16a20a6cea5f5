"""The GiMP demo set: patients with WSI patch-feature bags (CLAM layout) and gene expression, built on first use.

No installable package pairs slides with expression, so the set is synthetic, with the structure the method
relies on and class signal in both modalities:

* **patients and labels**: ``num_patients`` (default 48), two classes alternating (balanced, ``type_a`` /
  ``type_b``); each patient has a hidden image score ``s_img = +-signal + N(0, 1)`` and an independent gene score
  ``s_ge = +-signal + N(0, 1)`` (sign from the class). Either modality alone reads one noisy score (best possible
  accuracy ``Phi(signal)``, 0.84 at the default 1.0); both together read two independent ones (``Phi(signal
  sqrt 2)``, 0.92), so "both beat either" is measurable (on 200 patients a nearest-centroid read-out reaches
  about 0.8 / 0.8 / 0.88; the default 10-patient test split is far too small to show it reliably).
* **slides**: one per patient, two for ``two_slide_fraction`` of them (default 1/4); ``N`` patches per slide,
  log-uniform in ``[min_patches, max_patches]`` (default 200..3000). Patches sit on a 256-px grid inside a smooth
  random tissue blob, listed in CLAM's order (its ``meshgrid(..., indexing="ij")``: x outer, y inner, i.e.
  column by column), so neighbours in the sequence are neighbours on the slide. Tissue types (tumour, stroma,
  lymphocytes, necrosis, normal) form smooth regions; a tumour patch is of subtype A with probability
  ``sigmoid(1.5 s_img)``, else B. A patch feature is ``relu(prototype of its type
  + smooth spatial field + noise)``, 1024-d and non-negative like CLAM's mean-pooled ResNet-50 features; the A
  and B prototypes differ by +-0.5 in 20 % of the dimensions.
* **expression**: ``num_genes`` (default 300) FPKM-like values, ``log2(FPKM + 1)`` = gene mean + 10 correlated
  gene modules + noise; 20 signature genes (spread through the table) move with ``s_ge``.

Layout (CLAM / TransMIL / SurvPath conventions)::

    h5_files/<slide_id>.h5     features float32 [N, 1024], coords int64 [N, 2] (level 0, with CLAM's attributes)
    pt_files/<slide_id>.pt     the same features as a torch tensor
    clam.csv                   case_id, slide_id, label (class name)
    splits_0.csv               CLAM split: train, val, test columns of slide ids
    expression.csv             rows case_id, columns gene symbols (SurvPath's rna_clean.csv layout)
    datalist.json              training / validation / testing (60 / 20 / 20 %, stratified), paths relative

Everything is seeded (patient ``i`` uses ``numpy.random.default_rng([seed, i])``), so a build is identical on
every machine; it is written once into the cache folder (``$MMPT_CACHE_DIR``) and reused, ``datalist.json`` last.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np

from common.data.demo import _is_built, _locked, default_cache_dir

__all__ = ["CLASSES", "build_demo_gimp", "demo_gimp_datalist", "stratified_split"]

CLASSES: tuple[str, ...] = ("type_a", "type_b")
_VERSION = 1
_TISSUES = ("tumour", "stroma", "lymphocytes", "necrosis", "normal")
_PATCH = 256
_MODULES = 10
_SIGNATURE = 20
_SUBTYPE_DIMS = 0.2  # fraction of feature dims in which tumour subtypes A and B differ
_SUBTYPE_DELTA = 0.5  # by +-this much (random sign per dim)


def _prototypes(feature_dim: int, seed: int) -> np.ndarray:
    """Six non-negative prototypes: tumour A, tumour B, then the other tissues.

    A and B are ``middle +- delta`` with ``delta = +-0.5`` in 20 % of the dims (random sign), so a slide's mean
    feature moves along ``A - B`` with its share of subtype A, and hardly with its tumour fraction."""
    rng = np.random.default_rng([seed, 10**6])
    base = np.abs(rng.standard_normal(feature_dim)) * 0.6
    protos = []
    for _ in range(len(_TISSUES)):
        specific = np.where(rng.random(feature_dim) < 0.15, np.abs(rng.standard_normal(feature_dim)), 0.0)
        protos.append(base + specific)
    differ = rng.random(feature_dim) < _SUBTYPE_DIMS
    delta = np.where(differ, rng.choice([-1.0, 1.0], feature_dim) * _SUBTYPE_DELTA, 0.0)
    middle = protos[0] + np.where(differ, _SUBTYPE_DELTA, 0.0)  # A and B stay non-negative
    return np.stack([middle + delta, middle - delta, *protos[1:]]).astype(np.float32)  # [6, F]


def _smooth(shape: tuple[int, int], rng: np.random.Generator, sigma: float) -> np.ndarray:
    from scipy import ndimage

    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return f / (f.std() + 1e-8)


def _slide(
    n: int, s_img: float, protos: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Features ``[n, F]`` and level-0 coords ``[n, 2]`` of one slide, and its level-0 size."""
    width = max(4, math.ceil(math.sqrt(n / 0.5)))
    shape = (width, width)  # rows, cols; the blob covers about half of it
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    radial = -(((yy - shape[0] / 2) / shape[0]) ** 2 + ((xx - shape[1] / 2) / shape[1]) ** 2) * 8.0
    blob = radial + 0.6 * _smooth(shape, rng, max(1.0, width / 8))
    rows, cols = np.unravel_index(np.argsort(-blob, axis=None, kind="stable")[:n], shape)  # n tissue cells
    order = np.lexsort((rows, cols))  # CLAM's order: x (column) outer, y (row) inner
    rows, cols = rows[order], cols[order]
    fields = np.stack([_smooth(shape, rng, max(1.0, width / 10)) for _ in _TISSUES])  # [5, H, W]
    fields[0] += rng.uniform(-0.3, 0.8)  # how much tumour this slide has
    tissue = fields[:, rows, cols].argmax(0)  # [n]: 0 tumour .. 4 normal
    subtype_b = rng.random(n) >= 1.0 / (1.0 + math.exp(-1.5 * s_img))
    proto_index = np.where(tissue == 0, subtype_b.astype(int), tissue + 1)  # 0 A, 1 B, 2.. other tissues
    spatial = np.stack([_smooth(shape, rng, max(1.0, width / 12))[rows, cols] for _ in range(8)], 1)  # [n, 8]
    directions = rng.standard_normal((8, protos.shape[1])).astype(np.float32) * 0.15
    noise = rng.standard_normal((n, protos.shape[1]), dtype=np.float32) * 0.35
    features = np.maximum(protos[proto_index] + spatial.astype(np.float32) @ directions + noise, 0.0)
    coords = np.stack([cols, rows], 1).astype(np.int64) * _PATCH  # (x, y) at level 0, as CLAM
    return features.astype(np.float32), coords, (shape[1] * _PATCH, shape[0] * _PATCH)


def _expression(num_genes: int, s_ge: float, rng: np.random.Generator, gene_rng_seed: int) -> np.ndarray:
    """FPKM-like values ``[num_genes]``: log2(FPKM + 1) = mean + modules + noise, signature genes shifted."""
    g = np.random.default_rng([gene_rng_seed, 2 * 10**6])  # the gene table itself: the same for every patient
    means = g.uniform(0.5, 8.0, num_genes)
    loadings = g.standard_normal((_MODULES, num_genes)) * (g.random((_MODULES, num_genes)) < 0.2) * 0.8
    signature = g.choice(num_genes, size=min(_SIGNATURE, num_genes), replace=False)
    log_expr = means + rng.standard_normal(_MODULES) @ loadings + rng.standard_normal(num_genes) * 0.6
    log_expr[signature] += 0.9 * s_ge
    return np.maximum(np.exp2(log_expr) - 1.0, 0.0)


def _write_h5(path: Path, features: np.ndarray, coords: np.ndarray, size: tuple[int, int], name: str) -> None:
    import h5py

    tmp = path.with_suffix(".h5.tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("features", data=features)
        dset = f.create_dataset("coords", data=coords)
        dset.attrs.update(
            patch_size=_PATCH, patch_level=0, downsample=np.array([1.0, 1.0]), downsampled_level_dim=np.array(size),
            level_dim=np.array(size), name=name, patch_size_level0=_PATCH,
        )  # fmt: skip
    os.replace(tmp, path)


def stratified_split(labels: list[int]) -> list[str]:
    """Stratified 60 / 20 / 20 assignment in patient order (at least one validation and test patient per class).

    Example::

        >>> stratified_split([0, 1] * 5)
        ['training', 'training', 'training', 'training', 'training', 'training', 'validation', 'validation', 'testing', 'testing']
    """
    out = [""] * len(labels)
    for c in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == c]
        n_val = max(1, round(0.2 * len(members)))
        n_test = max(1, round(0.2 * len(members)))
        for rank, i in enumerate(members):
            from_end = len(members) - rank  # the last n_test of a class are test, the n_val before them validation
            out[i] = "testing" if from_end <= n_test else "validation" if from_end <= n_test + n_val else "training"
    return out


def build_demo_gimp(
    out_dir: str | None = None,
    num_patients: int = 48,
    num_genes: int = 300,
    min_patches: int = 200,
    max_patches: int = 3000,
    feature_dim: int = 1024,
    two_slide_fraction: float = 0.25,
    signal: float = 1.0,
    seed: int = 0,
    write_pt: bool = True,
    force: bool = False,
) -> str:
    """Build (once) the GiMP demo set and return the path of its ``datalist.json``.

    Args:
        out_dir: target folder (default ``<cache>/demo_gimp_v1``).
        num_patients: number of patients (classes alternate; at least 2 per class for the split).
        num_genes: expression vector length (the paper's table has 60,480).
        min_patches, max_patches: range of patches per slide (log-uniform).
        feature_dim: patch feature width (CLAM: 1024).
        two_slide_fraction: fraction of patients with a second slide.
        signal: class separation of each modality's hidden score (see the module docstring).
        seed: base seed.
        write_pt: also write ``pt_files/`` (CLAM writes both).
        force: rebuild even when a complete build with these parameters exists.

    Example::

        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = build_demo_gimp(tmp, num_patients=4, num_genes=20, min_patches=20, max_patches=40)
        ...     sorted(json.load(open(path)))[:3]
        ['build', 'clam_csv', 'classes']
    """
    if num_patients < 4 or min_patches < 1 or max_patches < min_patches or num_genes < 1:
        raise ValueError(f"need num_patients >= 4, 1 <= min_patches <= max_patches, num_genes >= 1; got "
                         f"{num_patients}, {min_patches}, {max_patches}, {num_genes}")  # fmt: skip
    out = Path(out_dir or os.path.join(default_cache_dir(), f"demo_gimp_v{_VERSION}"))
    build = dict(
        version=_VERSION, num_patients=num_patients, num_genes=num_genes, min_patches=min_patches,
        max_patches=max_patches, feature_dim=feature_dim, two_slide_fraction=two_slide_fraction, signal=signal,
        seed=seed, write_pt=write_pt,
    )  # fmt: skip
    datalist_path = out / "datalist.json"
    with _locked(out):
        if not force and _is_built(datalist_path, build):
            return str(datalist_path)
        (out / "h5_files").mkdir(exist_ok=True)
        if write_pt:
            (out / "pt_files").mkdir(exist_ok=True)
        protos = _prototypes(feature_dim, seed)
        genes = [f"GENE{g:05d}" for g in range(num_genes)]
        entries, expression, clam_rows = [], [], []
        for i in range(num_patients):
            rng = np.random.default_rng([seed, i])
            label = i % 2
            sign = 1.0 if label else -1.0
            s_img, s_ge = sign * signal + rng.standard_normal(), sign * signal + rng.standard_normal()
            case_id = f"DEMO-{i:04d}"
            slides = [f"{case_id}-{k:02d}" for k in range(1, 3 if rng.random() < two_slide_fraction else 2)]
            entry = {
                "case_id": case_id,
                "slide_ids": slides,
                "h5_files": [],
                "label": label,
                "class_name": CLASSES[label],
            }
            if write_pt:
                entry["pt_files"] = []
            for slide_id in slides:
                n = int(round(math.exp(rng.uniform(math.log(min_patches), math.log(max_patches)))))
                features, coords, size = _slide(n, s_img, protos, rng)
                _write_h5(out / "h5_files" / f"{slide_id}.h5", features, coords, size, slide_id)
                entry["h5_files"].append(f"h5_files/{slide_id}.h5")
                if write_pt:
                    import torch

                    torch.save(torch.from_numpy(features), out / "pt_files" / f"{slide_id}.pt")
                    entry["pt_files"].append(f"pt_files/{slide_id}.pt")
                clam_rows.append((case_id, slide_id, CLASSES[label]))
            expression.append(_expression(num_genes, s_ge, rng, seed))
            entries.append(entry)
        with open(out / "clam.csv", "w", newline="") as f:
            csv.writer(f).writerows([("case_id", "slide_id", "label"), *clam_rows])
        with open(out / "expression.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["case_id", *genes])
            for entry, values in zip(entries, expression):
                writer.writerow([entry["case_id"], *(f"{v:.4f}" for v in values)])
        parts = stratified_split([e["label"] for e in entries])
        by_part = {p: [e for e, q in zip(entries, parts) if q == p] for p in ("training", "validation", "testing")}
        columns = {k: [s for e in by_part[p] for s in e["slide_ids"]] for k, p in
                   (("train", "training"), ("val", "validation"), ("test", "testing"))}  # fmt: skip
        with open(out / "splits_0.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["", "train", "val", "test"])
            for r in range(max(map(len, columns.values()))):
                writer.writerow([r, *(col[r] if r < len(col) else "" for col in columns.values())])
        content = {
            "name": "demo_gimp",
            "build": build,
            "classes": list(CLASSES),
            "feature_dim": feature_dim,
            "num_genes": num_genes,
            "clam_csv": "clam.csv",
            "expression": "expression.csv",
            "splits": "splits_0.csv",
            **by_part,
        }
        tmp = datalist_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(content, indent=2))
        os.replace(tmp, datalist_path)
    return str(datalist_path)


def demo_gimp_datalist(
    num_patients: int = 48,
    num_genes: int = 300,
    min_patches: int = 200,
    max_patches: int = 3000,
    seed: int = 0,
    feature_dim: int = 1024,
    write_pt: bool = True,
    signal: float = 1.0,
) -> str:
    """The demo set in the cache, one folder per parameter set; returns its ``datalist.json``.

    The bundles build a small variant (see their ``demo`` config key): the default here is ~460 MB.
    """
    name = f"demo_gimp_v{_VERSION}_p{num_patients}_g{num_genes}_n{min_patches}-{max_patches}_seed{seed}"
    if feature_dim != 1024 or not write_pt or signal != 1.0:
        name += f"_f{feature_dim}{'' if write_pt else '_h5'}_s{signal:g}"
    return build_demo_gimp(os.path.join(default_cache_dir(), name), num_patients, num_genes, min_patches,
                           max_patches, feature_dim=feature_dim, signal=signal, seed=seed,
                           write_pt=write_pt)  # fmt: skip
