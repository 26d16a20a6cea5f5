"""WSI patch-feature bags on disk: CLAM / TRIDENT ``.h5`` and ``.pt`` files, TransMIL bags and folds, patients.

Layouts read (and, for CLAM's, written by ``tools/extract_wsi_features.py``):

- CLAM ``h5_files/<slide_id>.h5``: datasets ``features`` float32 ``[N, D]`` and ``coords`` int ``[N, 2]`` (level-0
  x, y). The patching attributes sit on the ``coords`` dataset, where CLAM's ``create_patches_fp.py`` and
  TRIDENT's ``coords_to_h5`` put them (``patch_size``, ``patch_level``, ``downsample``, ``level_dim``, ``name``;
  TRIDENT adds ``patch_size_level0``, ``level0_magnification``, ``target_magnification``, ...); ``features``
  carries ``name`` and ``encoder`` as TRIDENT's feature files do.
- CLAM ``pt_files/<slide_id>.pt``: one float tensor ``[N, D]``.
- TransMIL: ``<slide_id>.pt`` bags in one folder, and fold CSVs with columns ``train, train_label, val,
  val_label, test, test_label`` (one slide per row, shorter columns padded with empty cells).
- CLAM's dataset CSV ``case_id, slide_id, label`` joins slides to patients; a patient's slides are
  concatenated in ``slide_id`` order (sorted, so the bag is the same on every run and machine).

Bags are read lazily, one patient at a time (:class:`LoadWSIBagd`); nothing is cached (the largest TCGA bags
hold ~150k patches, 600 MB as float32).
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform

from common.data.validate import Problem

__all__ = [
    "FEATURE_DIM",
    "BagError",
    "write_clam_h5",
    "read_clam_h5",
    "load_bag",
    "bag_shape",
    "find_bags",
    "read_clam_csv",
    "read_transmil_folds",
    "patient_bags",
    "check_bags",
    "LoadWSIBagd",
]

FEATURE_DIM = 1024
BAG_SUFFIXES = (".pt", ".h5")


class BagError(ValueError):
    """A feature bag that cannot be used; the message names the file and the problem."""


def write_clam_h5(
    path: str | os.PathLike,
    features: np.ndarray,
    coords: np.ndarray,
    coords_attrs: Mapping[str, Any],
    features_attrs: Mapping[str, Any] | None = None,
) -> None:
    """Write a CLAM-layout ``.h5`` atomically (temporary file in the same folder, then renamed).

    Args:
        path: destination, e.g. ``h5_files/<slide_id>.h5``.
        features: ``float32 [N, D]``.
        coords: ``int [N, 2]`` level-0 (x, y) of each patch's top-left corner.
        coords_attrs: attributes of the ``coords`` dataset (CLAM / TRIDENT patching attributes).
        features_attrs: attributes of the ``features`` dataset (``name``, ``encoder``).
    """
    import h5py

    path = Path(path)
    if features.ndim != 2 or coords.shape != (features.shape[0], 2):
        raise ValueError(f"{path}: features {features.shape} and coords {coords.shape} do not pair as [N, D], [N, 2]")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            feats = f.create_dataset("features", data=np.asarray(features, np.float32))
            xy = f.create_dataset("coords", data=np.asarray(coords, np.int64))
            for key, value in coords_attrs.items():
                xy.attrs[key] = value
            for key, value in (features_attrs or {}).items():
                feats.attrs[key] = value
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_clam_h5(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """``(features [N, D], coords [N, 2] or None, coords attributes)`` of a CLAM / TRIDENT ``.h5``.

    Example::

        >>> feats, coords, attrs = read_clam_h5("h5_files/slide_1.h5")  # doctest: +SKIP
        >>> attrs["patch_size"], attrs["patch_level"]  # doctest: +SKIP
        (256, 0)
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "features" not in f:
                raise BagError(f"{path}: no 'features' dataset (found {sorted(f.keys())})")
            features = np.asarray(f["features"])
            coords = np.asarray(f["coords"]) if "coords" in f else None
            attrs = dict(f["coords"].attrs) if "coords" in f else {}
    except BagError:
        raise
    except Exception as e:  # noqa: BLE001
        raise BagError(f"{path}: cannot be read as HDF5 ({type(e).__name__}: {str(e)[:160]})") from e
    return features, coords, attrs


def _pt_tensor(path: str | os.PathLike, mmap: bool) -> torch.Tensor:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001
        raise BagError(f"{path}: cannot be read as a torch tensor file ({type(e).__name__}: {str(e)[:160]})") from e
    if isinstance(obj, Mapping) and "features" in obj:
        obj = obj["features"]
    if not isinstance(obj, torch.Tensor):
        raise BagError(f"{path}: holds a {type(obj).__name__}, expected a [patches, features] tensor")
    return obj


def bag_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """Shape of a bag without reading its values (HDF5 metadata; ``.pt`` memory-mapped)."""
    if str(path).lower().endswith(".h5"):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                if "features" not in f:
                    raise BagError(f"{path}: no 'features' dataset (found {sorted(f.keys())})")
                return tuple(f["features"].shape)
        except BagError:
            raise
        except Exception as e:  # noqa: BLE001
            raise BagError(f"{path}: cannot be read as HDF5 ({type(e).__name__}: {str(e)[:160]})") from e
    return tuple(_pt_tensor(path, mmap=True).shape)


def load_bag(path: str | os.PathLike, feature_dim: int | None = FEATURE_DIM) -> torch.Tensor:
    """One slide's bag as ``float32 [N, D]``, from a CLAM ``.h5`` (``features``) or a ``.pt`` tensor.

    Raises:
        BagError: unreadable, not 2-D, no patches, or ``D != feature_dim``; the message names the file.
    """
    if not os.path.isfile(path):
        raise BagError(f"{path}: feature bag not found")
    if str(path).lower().endswith(".h5"):
        bag = torch.from_numpy(read_clam_h5(path)[0])
    else:
        bag = _pt_tensor(path, mmap=False)
    _check_shape(path, tuple(bag.shape), feature_dim)
    return bag.float()


def _check_shape(path: str | os.PathLike, shape: tuple[int, ...], feature_dim: int | None) -> None:
    if len(shape) != 2:
        raise BagError(f"{path}: feature bag of shape {shape}, expected [patches, features]")
    if shape[0] == 0:
        raise BagError(f"{path}: empty feature bag (0 patches)")
    if feature_dim is not None and shape[1] != feature_dim:
        raise BagError(f"{path}: features of width {shape[1]}, expected {feature_dim}")


def find_bags(feature_dir: str | os.PathLike, prefer: str = "pt") -> dict[str, Path]:
    """``slide_id -> bag file`` of a feature folder.

    Looks in ``<dir>/pt_files`` and ``<dir>/h5_files`` (CLAM's layout) and in ``<dir>`` itself (TransMIL's
    flat ``<slide_id>.pt``); where a slide has both a ``.pt`` and an ``.h5``, ``prefer`` (``"pt"`` or ``"h5"``)
    wins. Hidden and temporary files (a half-written ``.<name>.tmp``) are ignored.
    """
    if prefer not in ("pt", "h5"):
        raise ValueError(f"prefer must be 'pt' or 'h5', got {prefer!r}")
    root = Path(feature_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: feature folder not found")
    found: dict[str, dict[str, Path]] = {}
    for folder in (root, root / "pt_files", root / "h5_files"):
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.suffix.lower() in BAG_SUFFIXES and not p.name.startswith("."):
                found.setdefault(p.stem, {}).setdefault(p.suffix.lower()[1:], p)
    other = "h5" if prefer == "pt" else "pt"
    return {sid: kinds.get(prefer, kinds.get(other)) for sid, kinds in sorted(found.items())}


def _read_csv(path: str | os.PathLike) -> tuple[set[str], list[dict[str, str]]]:
    """(column names, rows) with every cell stripped; text stays text."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
        return {(k or "").strip() for k in reader.fieldnames or []}, rows


def read_clam_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows ``{"case_id", "slide_id", "label"}`` of a CLAM dataset CSV, ids kept as text (``"007"`` stays).

    Raises:
        ValueError: a required column is missing; the message names the file and the columns found.
    """
    columns, rows = _read_csv(path)
    missing = [c for c in ("case_id", "slide_id", "label") if c not in columns]
    if missing:
        raise ValueError(f"{path}: CLAM dataset CSV needs columns case_id, slide_id, label; missing {missing}")
    return [{"case_id": r["case_id"], "slide_id": r["slide_id"], "label": r["label"]} for r in rows]


def read_transmil_folds(path: str | os.PathLike) -> dict[str, list[tuple[str, str]]]:
    """``{"train"|"val"|"test": [(slide_id, label), ...]}`` of a TransMIL fold CSV (empty cells skipped).

    Labels stay text (TransMIL writes ``0`` or ``0.0``); an index column, as TransMIL's ``fold0.csv`` has, is ignored.
    """
    columns, rows = _read_csv(path)
    splits = {}
    for split in ("train", "val", "test"):
        if split not in columns or f"{split}_label" not in columns:
            raise ValueError(
                f"{path}: TransMIL fold CSV needs columns {split}, {split}_label (found {sorted(columns)})"
            )
        splits[split] = [(r[split], r[f"{split}_label"]) for r in rows if r[split]]
    return splits


def _label_index(labels: Iterable[str], label_dict: Mapping[str, int] | None) -> dict[str, int]:
    if label_dict is not None:
        return {str(k): int(v) for k, v in label_dict.items()}
    values = sorted(set(labels))
    try:  # numeric labels (TransMIL's 0 / 1.0) map to themselves
        as_int = {v: int(float(v)) for v in values}
        if all(float(v) == as_int[v] for v in values):
            return as_int
    except ValueError:
        pass
    return {v: i for i, v in enumerate(values)}  # text labels: sorted, so the mapping is stable


def patient_bags(
    feature_dir: str | os.PathLike,
    cases_csv: str | os.PathLike | None = None,
    folds_csv: str | os.PathLike | None = None,
    split: str | None = None,
    label_dict: Mapping[str, int] | None = None,
    prefer: str = "pt",
) -> tuple[list[dict[str, Any]], list[Problem]]:
    """Patients with their slides' bag files, and every join problem found.

    Args:
        feature_dir: a CLAM feature folder (``pt_files/``, ``h5_files/``) or a flat folder of ``<slide_id>.pt``.
        cases_csv: CLAM dataset CSV (``case_id, slide_id, label``); without it every slide is its own case.
        folds_csv: a TransMIL fold CSV; with ``split`` only that split's slides are used (labels from the CSV
            when ``cases_csv`` is absent).
        split: ``"train"``, ``"val"`` or ``"test"`` (needs ``folds_csv``).
        label_dict: label text -> class index; default: integer labels (TransMIL's ``0``, ``1.0``) as themselves,
            other labels numbered in sorted order, over every row of the CSV (all splits).
        prefer: ``"pt"`` or ``"h5"`` when a slide has both.

    Returns:
        ``(entries, problems)``; each entry is ``{"case_id", "slide_ids": [sorted], "bag": [paths], "label": int,
        "label_name": str}``, in ``case_id`` order (``label`` ``None`` when nothing gives labels). Problems
        (errors): a case with no slide file, a slide file with no case (a warning with ``folds_csv``, whose
        folder may hold slides of no fold), a patient whose slides disagree on the label, a slide or a patient
        in several splits, a label missing from ``label_dict``.

    Example::

        >>> entries, problems = patient_bags("features/", "dataset.csv")  # doctest: +SKIP
        >>> entries[0]  # doctest: +SKIP
        {'case_id': 'patient_0', 'slide_ids': ['slide_0', 'slide_0b'], 'bag': [...], 'label': 1, 'label_name': 'LUSC'}
    """
    if (split is None) != (folds_csv is None):
        raise ValueError("folds_csv and split go together")
    bags = find_bags(feature_dir, prefer)
    problems: list[Problem] = []
    folds: dict[str, list[tuple[str, str]]] = {}
    splits_of: dict[str, set[str]] = {}
    if folds_csv is not None:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        folds = read_transmil_folds(folds_csv)
        for name, pairs in folds.items():
            for sid, _ in pairs:
                splits_of.setdefault(sid, set()).add(name)
        problems += [
            Problem("error", sid, str(folds_csv), f"slide listed in several splits {sorted(names)}")
            for sid, names in sorted(splits_of.items())
            if len(names) > 1
        ]
    if cases_csv is not None:
        rows = read_clam_csv(cases_csv)
    elif folds_csv is not None:
        rows = [{"case_id": s, "slide_id": s, "label": lab} for pairs in folds.values() for s, lab in pairs]
    else:
        rows = [{"case_id": s, "slide_id": s, "label": ""} for s in bags]
    slides_of: dict[str, set[tuple[str, str]]] = {}
    for r in rows:
        slides_of.setdefault(r["case_id"], set()).add((r["slide_id"], r["label"]))
    listed = {s for v in slides_of.values() for s, _ in v} | set(splits_of)
    # the label index comes from every row, so a split that lacks a class maps labels as the others do
    labelled = any(r["label"] for r in rows)
    index = _label_index([r["label"] for r in rows], label_dict) if labelled else {}
    if folds_csv is not None:
        for case, slides in sorted(slides_of.items()):
            names = sorted(set().union(*(splits_of.get(s, set()) for s, _ in slides)))
            if len(names) > 1 and cases_csv is not None:
                problems.append(
                    Problem("error", case, str(cases_csv), f"slides of one patient in several splits {names}")
                )
        chosen = {s for s, _ in folds[split]}
        slides_of = {c: {(s, lab) for s, lab in v if s in chosen} for c, v in slides_of.items()}
        slides_of = {c: v for c, v in slides_of.items() if v}
    entries = []
    for case, pairs in sorted(slides_of.items()):
        ids = sorted({s for s, _ in pairs})
        labels = sorted({lab for _, lab in pairs})
        absent = [s for s in ids if s not in bags]
        problems += [Problem("error", case, None, f"slide {s} has no feature file in {feature_dir}") for s in absent]
        if len(labels) > 1:
            problems.append(Problem("error", case, None, f"slides of one patient with different labels {labels}"))
            continue
        if labelled and labels[0] not in index:
            problems.append(Problem("error", case, None, f"label {labels[0]!r} not in label_dict {sorted(index)}"))
            continue
        if absent:
            continue
        entries.append(
            {
                "case_id": case,
                "slide_ids": ids,
                "bag": [str(bags[s]) for s in ids],
                "label": index[labels[0]] if labelled else None,
                "label_name": labels[0] if labelled else None,
            }
        )
    severity = "warning" if folds_csv is not None else "error"
    for sid, path in bags.items():
        if sid not in listed:
            problems.append(Problem(severity, sid, str(path), "feature file of a slide that no case lists"))
    return entries, problems


def check_bags(
    entries: Sequence[Mapping[str, Any]], feature_dim: int | None = FEATURE_DIM, check_content: bool = True
) -> list[Problem]:
    """Errors of the bag files of ``entries`` (``{"case_id", "bag": [paths]}``): unreadable, not ``[N, D]``,
    empty, width ``!= feature_dim``, and with ``check_content`` NaN / Inf values (one bag in memory at a time).
    """
    problems = []
    for entry in entries:
        case = str(entry.get("case_id", "?"))
        for path in entry["bag"]:
            try:
                _check_shape(path, bag_shape(path), feature_dim)
                if check_content:
                    bag = load_bag(path, feature_dim)
                    bad = int((~torch.isfinite(bag)).any(dim=1).sum())
                    if bad:
                        problems.append(
                            Problem("error", case, str(path), f"NaN/Inf features in {bad} of {len(bag)} patches")
                        )
            except BagError as e:
                problems.append(Problem("error", case, str(path), str(e).removeprefix(f"{path}: ")))
    return problems


class LoadWSIBagd(MapTransform):
    """Replace ``data[key]`` (one bag path or a list of them) by the concatenated ``float32 [N, D]`` tensor.

    A patient's slides are concatenated in the order given (:func:`patient_bags` sorts them by slide id). Used
    as the transform of a plain ``monai.data.Dataset`` the bags load lazily, one patient per ``__getitem__``,
    and nothing is cached.

    Args:
        keys: keys holding bag paths (e.g. ``"bag"``).
        feature_dim: expected feature width (``None``: any, but all slides of a patient must agree).
        allow_missing_keys: as MONAI's ``MapTransform``.

    Example::

        >>> from monai.data import Dataset
        >>> entries, _ = patient_bags("features/", "dataset.csv")  # doctest: +SKIP
        >>> ds = Dataset(entries, transform=LoadWSIBagd("bag"))  # doctest: +SKIP
        >>> ds[0]["bag"].shape  # doctest: +SKIP
        torch.Size([23011, 1024])
    """

    def __init__(
        self,
        keys: Hashable | Sequence[Hashable],
        feature_dim: int | None = FEATURE_DIM,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.feature_dim = feature_dim

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            paths = [d[key]] if isinstance(d[key], (str, os.PathLike)) else list(d[key])
            if not paths:
                raise BagError(f"{d.get('case_id', key)}: no feature bag files")
            bags = [load_bag(p, self.feature_dim) for p in paths]
            widths = {b.shape[1] for b in bags}
            if len(widths) > 1:
                raise BagError(f"{paths}: slides of one patient with different feature widths {sorted(widths)}")
            d[key] = bags[0] if len(bags) == 1 else torch.cat(bags, dim=0)  # [sum N_i, D]
        return d
