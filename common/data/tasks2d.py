"""The five MRM downstream datasets in their own published layouts, and the fixed train/test split.

Each reader turns a dataset folder as its users have it into MONAI datalist entries
(``{"subject_id", "image", "label", ...}``, absolute paths) and reports every problem at once, naming the file
(and the CSV row):

=========  ===================================================================================================
task       layout (relative to ``dataset_dir``) -> ``label``
=========  ===================================================================================================
aptos      APTOS 2019: ``train.csv`` (``id_code,diagnosis``), ``train_images/<id_code>.png`` -> grade 0-4
rfmid      RFMiD 1.0: per set a labels CSV (``ID,Disease_Risk,DR,ARMD,...``) + an image folder ``<ID>.png``
           (challenge, Kaggle and IEEE DataPort folder names, :data:`RFMID_LAYOUTS`) -> 0/1 per label column
palm       PALM (ISBI 2019 / Scientific Data 2024): ``[<Set>/]Images/<name>.jpg`` + ``Disc Masks/<name>.bmp``,
           ``Lesion Masks/Atrophy/<name>.bmp`` (0 = structure, 255 = background) -> per-structure 0/1 PNGs
crp        a CSV of ``id`` + continuous and binary targets (kinds from the config) + ``images/<id>.png`` -> floats
glioma     a CSV of case id + WHO grade II / III / IV + pathology tiles ``tiles/<id>.png`` or ``tiles/<id>/*.png``
           -> 0 / 1 / 2
=========  ===================================================================================================

:func:`fixed_split` draws the paper's 80/20 train/test split once (seeded, stratified by class where there are
classes, grouped by case where a case has several images) and writes it to a datalist JSON (``training`` = the
paper's training split, ``validation`` = its test split, as MONAI bundles name them); later runs reuse that file and
stop with the difference named when the data no longer match it. :func:`task_datalist` is the one call a config
makes: read a task's layout, split, return one split.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "TASKS",
    "IMAGE_SUFFIXES",
    "RFMID_LAYOUTS",
    "PALM_STRUCTURES",
    "read_aptos",
    "read_rfmid",
    "rfmid_label_names",
    "read_palm",
    "read_crp",
    "read_glioma",
    "fit_target_stats",
    "fixed_split",
    "task_datalist",
    "folder_entries",
    "task_entries",
    "readable_entries",
    "SavePALMMasksd",
]

logger = logging.getLogger(__name__)

TASKS = ("aptos", "rfmid", "palm", "crp", "glioma")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_MISSING = {"", "na", "nan", "none", "null", "n/a", "-"}
_MAX_LISTED = 20

# RFMiD 1.0 sets as (labels CSV, image folder), in the layouts it is distributed in: the RIADD challenge zips,
# Kaggle's re-upload (one folder level more) and IEEE DataPort's "1. Original Images" / "2. Groundtruths"
RFMID_LAYOUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "Training": (
        ("Training_Set/RFMiD_Training_Labels.csv", "Training_Set/Training"),
        ("Training_Set/Training_Set/RFMiD_Training_Labels.csv", "Training_Set/Training_Set/Training"),
        ("2. Groundtruths/a. RFMiD_Training_Labels.csv", "1. Original Images/a. Training Set"),
    ),
    "Validation": (
        ("Evaluation_Set/RFMiD_Validation_Labels.csv", "Evaluation_Set/Validation"),
        ("Evaluation_Set/Evaluation_Set/RFMiD_Validation_Labels.csv", "Evaluation_Set/Evaluation_Set/Validation"),
        ("2. Groundtruths/b. RFMiD_Validation_Labels.csv", "1. Original Images/b. Validation Set"),
    ),
    "Testing": (
        ("Test_Set/RFMiD_Testing_Labels.csv", "Test_Set/Test"),
        ("Test_Set/Test_Set/RFMiD_Testing_Labels.csv", "Test_Set/Test_Set/Test"),
        ("2. Groundtruths/c. RFMiD_Testing_Labels.csv", "1. Original Images/c. Testing Set"),
    ),
}

# PALM structure -> mask folder names (Scientific Data 2024 release first, then the challenge's underscores)
PALM_STRUCTURES: dict[str, tuple[str, ...]] = {
    "disc": ("Disc Masks", "Disc_Masks"),
    "atrophy": ("Lesion Masks/Atrophy", "Lesion_Masks/Atrophy"),
    "detachment": ("Lesion Masks/Detachment", "Lesion_Masks/Detachment"),
}
_PALM_IMAGE_DIRS = ("Images", "images", "fundus_images", "Fundus Images")


# ---- small helpers --------------------------------------------------------------------------------------------


def _raise(problems: list[str], what: str, error: type[Exception] = ValueError) -> None:
    if problems:
        shown = "\n".join(problems[:_MAX_LISTED]) + (
            f"\n... ({len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
        )
        raise error(f"{len(problems)} problem(s) with {what}:\n{shown}")


def _read_csv(path: Path, required: Sequence[str]) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and ``(line number, row)`` pairs of a CSV (BOM and surrounding spaces removed); ``required`` columns
    must be in the header."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            rows = [
                (n, [c.strip() for c in cells])
                for n, cells in enumerate(reader, start=2)
                if any(c.strip() for c in cells)
            ]
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path} is not a readable CSV: {e}") from e
    missing = [c for c in required if c not in header]
    if missing:
        raise ValueError(f"{path}: no column {missing} (columns: {header})")
    dupes = [c for c, n in Counter(header).items() if n > 1]
    if dupes:
        raise ValueError(f"{path}: column(s) {dupes} appear more than once")
    problems = [
        f"{path} line {n}: {len(cells)} cells, the header has {len(header)}"
        for n, cells in rows
        if len(cells) != len(header)
    ]
    _raise(problems, str(path))
    return header, [(n, dict(zip(header, cells))) for n, cells in rows]


def _image_index(folder: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> dict[str, str]:
    """``{stem: path}`` of the images in ``folder`` (one listing, not one stat per id); a stem present with
    several suffixes takes the first in ``suffixes`` order."""
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    rank = {s: i for i, s in enumerate(suffixes)}
    index: dict[str, tuple[int, str]] = {}
    for entry in os.scandir(folder):
        stem, suffix = os.path.splitext(entry.name)
        if entry.is_file() and suffix.lower() in rank:
            if stem not in index or rank[suffix.lower()] < index[stem][0]:
                index[stem] = (rank[suffix.lower()], str(Path(entry.path).resolve()))
    return {stem: path for stem, (_, path) in index.items()}


def _duplicates(rows: list[tuple[int, dict[str, str]]], column: str, path: Path) -> list[str]:
    lines: dict[str, list[int]] = {}
    for n, row in rows:
        lines.setdefault(row[column], []).append(n)
    return [f"{path}: {column} {v!r} on lines {ns}" for v, ns in lines.items() if len(ns) > 1]


def _binary(value: str) -> float | None:
    """0 or 1 (``0.0``/``1.0`` too) as a float, NaN for an empty/NA cell, ``None`` for anything else."""
    x = _number(value)
    return x if x is None or x != x or x in (0.0, 1.0) else None


def _number(value: str) -> float | None:
    v = value.strip()
    if v.lower() in _MISSING:
        return float("nan")
    try:
        x = float(v)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


# ---- APTOS 2019 -----------------------------------------------------------------------------------------------


def read_aptos(
    dataset_dir: str | os.PathLike,
    csv_name: str = "train.csv",
    image_dir: str = "train_images",
    id_column: str = "id_code",
    label_column: str = "diagnosis",
    num_classes: int = 5,
) -> list[dict]:
    """APTOS 2019 blindness detection: ``train.csv`` (``id_code,diagnosis``) and ``train_images/<id_code>.png``.

    Returns one entry per row: ``{"subject_id": id_code, "image": path, "label": grade}`` (grade 0 no DR ... 4
    proliferative DR). Kaggle's ``test.csv`` has no labels and is not read.

    Example::

        >>> entries = read_aptos("/data/aptos2019")
        >>> entries[0]
        {'subject_id': '000c1434d8d7', 'image': '/data/aptos2019/train_images/000c1434d8d7.png', 'label': 2}
    """
    root = Path(dataset_dir)
    table = root / csv_name
    _, rows = _read_csv(table, [id_column, label_column])
    images = _image_index(root / image_dir)
    problems, entries = _duplicates(rows, id_column, table), []
    for n, row in rows:
        sid, grade = row[id_column], row[label_column]
        if not grade.lstrip("-").isdigit() or not 0 <= int(grade) < num_classes:
            problems.append(
                f"{table} line {n}: {label_column} {grade!r} of {sid!r} is not an integer in [0, {num_classes})"
            )
            continue
        if sid not in images:
            problems.append(f"{table} line {n}: no image {root / image_dir / sid}.png for {id_column} {sid!r}")
            continue
        entries.append({"subject_id": sid, "image": images[sid], "label": int(grade)})
    _raise(problems, f"the APTOS layout in {root}")
    return entries


# ---- RFMiD ----------------------------------------------------------------------------------------------------


def _rfmid_sets(root: Path, sets: Mapping[str, Sequence[str]] | None) -> dict[str, tuple[Path, Path]]:
    """``{set name: (labels CSV, image folder)}``: the given ``sets``, else every RFMiD set found."""
    if sets:
        return {name: (root / pair[0], root / pair[1]) for name, pair in sets.items()}
    found = {}
    for name, layouts in RFMID_LAYOUTS.items():
        for table, images in layouts:
            if (root / table).is_file():
                found[name] = (root / table, root / images)
                break
    if not found:
        tried = [t for layouts in RFMID_LAYOUTS.values() for t, _ in layouts]
        raise FileNotFoundError(
            f"no RFMiD labels CSV in {root} (looked for {tried}); pass sets={{'name': ['labels.csv', 'image_dir']}}"
        )
    return found


def _rfmid_label_columns(
    header: Sequence[str], id_column: str, include_disease_risk: bool, exclude: Sequence[str]
) -> list[str]:
    drop = {id_column, *exclude, *([] if include_disease_risk else ["Disease_Risk"])}
    return [c for c in header if c not in drop]


def rfmid_label_names(
    dataset_dir: str | os.PathLike,
    sets: Mapping[str, Sequence[str]] | None = None,
    id_column: str = "ID",
    include_disease_risk: bool = True,
    exclude: Sequence[str] = (),
) -> list[str]:
    """The label set of an RFMiD folder, read from its first labels CSV's header (every column but ``ID``):
    ``Disease_Risk`` + 45 disease columns (``DR``, ``ARMD``, ... ``CL``) in RFMiD 1.0 -- the paper's "46". For
    ``num_outputs`` and the metric names in a config."""
    if dataset_dir is None:
        raise ValueError(
            "the RFMiD label set is read from a dataset folder (--dataset_dir); with only a datalist, name the labels: "
            "--label_names \"['Disease_Risk', 'DR', ...]\""
        )
    root = Path(dataset_dir)
    table = next(iter(_rfmid_sets(root, sets).values()))[0]
    header, _ = _read_csv(table, [id_column])
    return _rfmid_label_columns(header, id_column, include_disease_risk, exclude)


def read_rfmid(
    dataset_dir: str | os.PathLike,
    sets: Mapping[str, Sequence[str]] | None = None,
    id_column: str = "ID",
    include_disease_risk: bool = True,
    exclude: Sequence[str] = (),
) -> list[dict]:
    """RFMiD 1.0 (Retinal Fundus Multi-disease Image Dataset), every set found pooled, as the paper re-splits
    all 3200 images 80/20.

    The label set is read from the data: every CSV column but ``id_column`` (and ``exclude``), in CSV order; all
    sets must have the same columns. ``Disease_Risk`` (any abnormality) is kept by default: RFMiD's own count of
    "46 conditions", which the paper reports, includes it, and the RIADD challenge scored it; set
    ``include_disease_risk=False`` for the 45 diseases only. IDs restart at 1 in each set, so ``subject_id`` is
    ``<set>_<ID>``; ``set`` holds the set's name.

    Args:
        dataset_dir: the RFMiD folder (any of the layouts in :data:`RFMID_LAYOUTS`).
        sets: ``{name: [labels CSV, image folder]}`` relative to ``dataset_dir``, to read other folders.
        id_column: the image id column (images are ``<ID>.png``).
        include_disease_risk: keep ``Disease_Risk`` as a label.
        exclude: further columns that are not labels.

    Returns:
        entries ``{"subject_id", "image", "label": [0/1 per label], "set"}``.
    """
    root = Path(dataset_dir)
    names: list[str] | None = None
    problems, entries = [], []
    for set_name, (table, folder) in _rfmid_sets(root, sets).items():
        header, rows = _read_csv(table, [id_column])
        columns = _rfmid_label_columns(header, id_column, include_disease_risk, exclude)
        if names is None:
            names, first = columns, table
        elif columns != names:
            raise ValueError(
                f"{table} has label columns {columns} but {first} has {names}: every RFMiD set must have the same labels"
            )
        images = _image_index(folder)
        problems += _duplicates(rows, id_column, table)
        for n, row in rows:
            values = [_binary(row[c]) for c in columns]
            bad = [c for c, v in zip(columns, values) if v is None or v != v]
            if bad:
                problems.append(
                    f"{table} line {n}: {bad} of ID {row[id_column]!r} are not 0 or 1 ({[row[c] for c in bad]})"
                )
                continue
            if row[id_column] not in images:
                problems.append(f"{table} line {n}: no image {folder / row[id_column]}.png")
                continue
            entries.append(
                {
                    "subject_id": f"{set_name}_{row[id_column]}",
                    "image": images[row[id_column]],
                    "label": values,
                    "set": set_name,
                }
            )
    _raise(problems, f"the RFMiD layout in {root}")
    return entries


# ---- PALM -----------------------------------------------------------------------------------------------------


def _palm_set_folders(root: Path, image_dirs: Sequence[str]) -> dict[str, Path]:
    """``{set name: folder}``: ``root`` itself when it holds an image folder, else its sub-folders that do."""

    def has_images(folder: Path) -> bool:
        return any((folder / d).is_dir() for d in image_dirs)

    if has_images(root):
        return {"": root}
    sets = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and has_images(p)} if root.is_dir() else {}
    if not sets:
        raise FileNotFoundError(
            f"no PALM image folder in {root} or its sub-folders (looked for {list(image_dirs)}; expected e.g. "
            f"{root}/Training/Images/*.jpg with {root}/Training/Disc Masks/*.bmp)"
        )
    return sets


def _binary_mask(
    path: Path, foreground: str, size: tuple[int, int], image: str
) -> tuple[np.ndarray | None, str | None]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.size != size:
                return None, f"{path}: mask is {im.size[0]}x{im.size[1]} but its image {image} is {size[0]}x{size[1]}"
            grey = np.asarray(im.convert("L"))
    except (OSError, UnidentifiedImageError) as e:
        return None, f"{path}: unreadable mask ({e})"
    return ((grey < 128) if foreground == "dark" else (grey >= 128)).astype(np.uint8), None


def _palm_mask_files(
    folder: Path, structures: Mapping[str, Sequence[str]], images: Mapping[str, str], image_folder: Path, problems: list
) -> dict[str, dict[str, str]] | None:
    """``{structure: {name: mask path}}`` of a set folder; a missing mask folder or a mask without an image is a
    problem (``None`` when a folder is missing)."""
    masks: dict[str, dict[str, str]] = {}
    for s, options in structures.items():
        found = next((folder / o for o in options if (folder / o).is_dir()), None)
        if found is None:
            problems.append(f"{folder}: no mask folder for '{s}' (looked for {list(options)})")
            continue
        masks[s] = _image_index(found, (".bmp", ".png", ".tif", ".tiff", ".jpg"))
        problems += [
            f"{p}: a {s} mask without an image in {image_folder}" for n, p in masks[s].items() if n not in images
        ]
    return masks if len(masks) == len(structures) else None


def _palm_label(
    source: str | None, target: Path, image: str, size: tuple[int, int], foreground: str, stale: bool
) -> tuple[str | None, str | None]:
    """The converted 0/1 mask ``target`` (written unless it is newer than ``source`` and the conversion settings are
    unchanged): ``source`` binarised, or all background when the image has no mask. Returns ``(path, None)`` or
    ``(None, problem)``."""
    if not stale and target.is_file() and (source is None or os.path.getmtime(target) >= os.path.getmtime(source)):
        return str(target.resolve()), None
    if source is None:
        mask = np.zeros(size[::-1], dtype=np.uint8)  # absent: all background, [H, W]
    else:
        mask, problem = _binary_mask(Path(source), foreground, size, image)
        if problem:
            return None, problem
    _write_png(mask, target)
    return str(target.resolve()), None


def _write_png(array: np.ndarray, path: Path) -> None:
    """Atomic PNG write (several DDP ranks may convert the same mask at once)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


def read_palm(
    dataset_dir: str | os.PathLike,
    mask_dir: str | os.PathLike,
    structures: Mapping[str, Sequence[str] | str] | Sequence[str] = ("disc", "atrophy"),
    foreground: str = "dark",
    image_dir: str | None = None,
) -> list[dict]:
    """PALM (pathologic myopia): fundus images with one mask image per structure, converted once to 0/1 PNGs.

    Layout, per set folder (``dataset_dir`` itself, or its ``Training``/``Validation``/``Testing`` sub-folders as in
    the 2024 Scientific Data release): ``Images/<name>.jpg`` (or ``fundus_images``), masks ``<folder>/<name>.bmp``
    with the folders of :data:`PALM_STRUCTURES` (``Disc Masks``, ``Lesion Masks/Atrophy``, ...). PALM masks are
    black where the structure is (pixel 0) and white elsewhere (255), so ``foreground="dark"`` maps pixel < 128 to
    1; ``"bright"`` reads masks that are white on black. An image without a structure's mask file (PALM ships
    atrophy masks only for images with atrophy) gets an all-background mask. A mask without an image, or of
    another size than its image, is an error.

    Each structure is written as ``<mask_dir>/<set>/<name>_<structure>.png`` (0 background, 1 structure; the input
    image's own size), rewritten only when its source mask is newer, so the datalist is plain MONAI:
    ``LoadImaged(keys=["image", "label"])`` stacks the listed masks as channels in ``structures`` order, read by the
    same reader as the image (same axis order).

    Args:
        dataset_dir: the PALM folder.
        mask_dir: where the converted masks go (writable; e.g. next to the split file).
        structures: names from :data:`PALM_STRUCTURES` (paper: optic disc and atrophy), or ``{name: folder(s)}``.
        foreground: ``"dark"`` (PALM) or ``"bright"``.
        image_dir: the image folder's name inside a set folder, when it is none of ``Images``, ``fundus_images``.

    Returns:
        entries ``{"subject_id", "image", "label": [mask per structure], "set", "structures_present": [...]}``.
    """
    from PIL import Image, UnidentifiedImageError

    if foreground not in ("dark", "bright"):
        raise ValueError(f"foreground must be 'dark' or 'bright', got {foreground!r}")
    if not isinstance(structures, Mapping):
        unknown = [s for s in structures if s not in PALM_STRUCTURES]
        if unknown:
            raise KeyError(
                f"unknown PALM structures {unknown}: choose from {list(PALM_STRUCTURES)} or give {{name: folder}}"
            )
        structures = {s: PALM_STRUCTURES[s] for s in structures}
    structures = {s: (f,) if isinstance(f, str) else tuple(f) for s, f in structures.items()}
    root, out = Path(dataset_dir), Path(mask_dir)
    marker = out / "conversion.json"  # masks converted with another foreground are converted again
    settings = {"foreground": foreground, "source": str(root.resolve())}
    stale = not marker.is_file() or json.loads(marker.read_text() or "{}") != settings
    problems, entries = [], []
    image_dirs = (image_dir,) if image_dir else _PALM_IMAGE_DIRS
    for set_name, folder in _palm_set_folders(root, image_dirs).items():
        image_folder = next(folder / d for d in image_dirs if (folder / d).is_dir())
        images = _image_index(image_folder, (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"))
        masks = _palm_mask_files(folder, structures, images, image_folder, problems)
        if masks is None:
            continue
        for name, image in sorted(images.items()):
            try:
                with Image.open(image) as im:
                    size = im.size  # (W, H)
            except (OSError, UnidentifiedImageError) as e:
                problems.append(f"{image}: unreadable image ({e})")
                continue
            converted = [
                _palm_label(
                    masks[s].get(name), out / (set_name or ".") / f"{name}_{s}.png", image, size, foreground, stale
                )
                for s in structures
            ]
            labels = [path for path, _ in converted if path]
            problems += [problem for _, problem in converted if problem]
            if len(labels) == len(structures):
                entries.append(
                    {"subject_id": f"{set_name}_{name}" if set_name else name, "image": image, "label": labels,
                     "set": set_name or None, "structures_present": [s for s in structures if name in masks[s]]}
                )  # fmt: skip
    _raise(problems, f"the PALM layout in {root}")
    if stale:
        out.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(settings))
    return entries


# ---- CRP (cardiovascular risk prediction) ----------------------------------------------------------------------


def read_crp(
    dataset_dir: str | os.PathLike,
    targets: Mapping[str, str],
    csv_name: str = "labels.csv",
    id_column: str = "id",
    image_dir: str = "images",
) -> list[dict]:
    """Fundus images with continuous and binary risk-factor targets (UKB-style: age, BMI, SBP, DBP, sex, smoking).

    ``targets`` names the CSV columns to use and their kinds, in output-channel order, e.g.
    ``{"age": "continuous", "bmi": "continuous", "sbp": "continuous", "dbp": "continuous", "sex": "binary",
    "smoking": "binary"}``: add or drop one there. Continuous cells are numbers, binary cells 0/1; an empty or
    ``NA`` cell is a missing value (NaN, skipped by the loss and the metrics). Images are
    ``<image_dir>/<id>.<png|jpg|...>``.

    Returns:
        entries ``{"subject_id", "image", "label": [one float per target], <target>: value, ...}``.
    """
    from common.networks.transfer2d import target_kinds

    names, kinds = target_kinds(targets)
    root = Path(dataset_dir)
    table = root / csv_name
    _, rows = _read_csv(table, [id_column, *names])
    images = _image_index(root / image_dir)
    problems, entries = _duplicates(rows, id_column, table), []
    parse: dict[str, Callable[[str], float | None]] = {"continuous": _number, "binary": _binary}
    for n, row in rows:
        values = [parse[k](row[c]) for c, k in zip(names, kinds)]
        bad = [f"{c}={row[c]!r} ({k})" for c, k, v in zip(names, kinds, values) if v is None]
        if bad:
            problems.append(
                f"{table} line {n}: invalid {bad} for id {row[id_column]!r} (continuous: a number; binary: 0/1)"
            )
            continue
        if row[id_column] not in images:
            problems.append(f"{table} line {n}: no image {root / image_dir / row[id_column]}.png")
            continue
        entries.append(
            {"subject_id": row[id_column], "image": images[row[id_column]], "label": values, **dict(zip(names, values))}
        )
    _raise(problems, f"the CRP layout in {root}")
    all_missing = [c for i, c in enumerate(names) if entries and all(e["label"][i] != e["label"][i] for e in entries)]
    if all_missing:
        raise ValueError(f"{table}: targets {all_missing} have no value in any row")
    return entries


def fit_target_stats(entries: Sequence[dict], targets: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation (population, ddof 0) of each continuous target over ``entries`` (pass the
    TRAINING split only), skipping missing values: ``{"age": {"mean": 57.1, "std": 8.0}, ...}``, plain floats (they
    go into configs and checkpoints). A target with fewer than 2 values or no spread is an error."""
    from common.networks.transfer2d import target_kinds

    names, kinds = target_kinds(targets)
    labels = np.asarray([e["label"] for e in entries], dtype=np.float64).reshape(len(entries), len(names))
    stats, problems = {}, []
    for i, (name, kind) in enumerate(zip(names, kinds)):
        if kind != "continuous":
            continue
        known = labels[~np.isnan(labels[:, i]), i]
        if known.size < 2 or float(known.std()) == 0.0:
            problems.append(
                f"target {name!r}: {known.size} values with standard deviation {known.std() if known.size else 'n/a'}"
            )
            continue
        stats[name] = {"mean": float(known.mean()), "std": float(known.std())}
    _raise(problems, "the continuous targets of the training split (cannot standardise)")
    return stats


# ---- glioma grading (TCGA pathology tiles) ----------------------------------------------------------------------

_WHO = {"II": 0, "2": 0, "III": 1, "3": 1, "IV": 2, "4": 2}


def _who_grade(value: str) -> int | None:
    """WHO grade II/III/IV -> 0/1/2, accepting ``II``, ``G2``, ``Grade II``, ``WHO grade 2``, ``2``, ``2.0``."""
    v = value.strip().upper().replace("WHO", "").replace("GRADE", "").replace("-", "").replace("_", "").replace(" ", "")
    v = v[1:] if v.startswith("G") else v
    v = v[:-2] if v.endswith(".0") else v
    return _WHO.get(v)


def read_glioma(
    dataset_dir: str | os.PathLike,
    csv_name: str = "labels.csv",
    id_column: str = "case_id",
    grade_column: str = "grade",
    image_dir: str = "tiles",
    image_column: str | None = None,
    grade_map: Mapping[str, int] | None = None,
) -> list[dict]:
    """Glioma grading from pathology tiles (TCGA-GBM/LGG): WHO grade II / III / IV -> class 0 / 1 / 2.

    Tiles of a case: the CSV's ``image_column`` (a path relative to ``dataset_dir``) when given, else
    ``<image_dir>/<id>.<png|jpg|tif>`` or every image in ``<image_dir>/<id>/``. One entry per tile; ``case_id``
    groups the tiles of a case (the split keeps them together). Grades are read as WHO grades (``II``, ``G3``,
    ``Grade IV``, ``2``-``4``); a CSV storing class indices 0/1/2 (e.g. PathomicFusion's ``Grade``) needs
    ``grade_map={"0": 0, "1": 1, "2": 2}``, since ``2`` would otherwise mean grade II.

    Returns:
        entries ``{"subject_id": <id> or <id>/<tile>, "case_id", "image", "label": 0 | 1 | 2}``.
    """
    root = Path(dataset_dir)
    table = root / csv_name
    _, rows = _read_csv(table, [id_column, grade_column, *([image_column] if image_column else [])])
    problems, entries = [] if image_column else _duplicates(rows, id_column, table), []
    tiles = {} if image_column else _image_index(root / image_dir)
    for n, row in rows:
        case, raw = row[id_column], row[grade_column]
        grade = {str(k).strip(): int(c) for k, c in grade_map.items()}.get(raw) if grade_map else _who_grade(raw)
        if grade is None or not 0 <= grade <= 2:
            hint = "" if grade_map else ' (WHO grade II/III/IV; class indices need grade_map={"0": 0, "1": 1, "2": 2})'
            problems.append(f"{table} line {n}: {grade_column} {raw!r} of {case!r} is not a known grade{hint}")
            continue
        if image_column:
            path = root / row[image_column]
            if not path.is_file():
                problems.append(f"{table} line {n}: no tile {path}")
                continue
            found = [(f"{case}/{path.stem}", str(path.resolve()))]
        elif case in tiles:
            found = [(case, tiles[case])]
        elif (root / image_dir / case).is_dir():
            found = [(f"{case}/{stem}", p) for stem, p in sorted(_image_index(root / image_dir / case).items())]
        else:
            found = []
        if not found:
            problems.append(
                f"{table} line {n}: no tile {root / image_dir / case}.png nor tiles in {root / image_dir / case}/"
            )
            continue
        entries += [{"subject_id": sid, "case_id": case, "image": p, "label": grade} for sid, p in found]
    problems += [
        f"{table}: tile {sid!r} listed twice" for sid, k in Counter(e["subject_id"] for e in entries).items() if k > 1
    ]
    _raise(problems, f"the glioma layout in {root}")
    return entries


# ---- the fixed split ------------------------------------------------------------------------------------------


def _stratum_key(entries: Sequence[dict], stratify: str | None) -> Callable[[dict], str]:
    """``label``: the class; ``rarest_label``: a multi-label entry's rarest positive label (frequencies over all
    entries), so rare labels reach both splits when they can; ``None``: one stratum."""
    if stratify is None:
        return lambda e: ""
    if stratify == "label":
        return lambda e: str(e["label"])
    if stratify == "rarest_label":
        counts = np.nansum(np.asarray([e["label"] for e in entries], dtype=np.float64), axis=0)

        def rarest(e: dict) -> str:
            positive = [i for i, v in enumerate(e["label"]) if v == 1]
            return str(min(positive, key=lambda i: (counts[i], i))) if positive else "none"

        return rarest
    raise ValueError(f"stratify must be 'label', 'rarest_label' or None, got {stratify!r}")


def _draw(units: dict[str, str], test_fraction: float, seed: int) -> set[str]:
    """Test units: per stratum a seeded random ``test_fraction`` share; quotas by largest remainder so the total
    is ``round(test_fraction * N)`` exactly. ``units``: ``{unit id: stratum}``."""
    strata: dict[str, list[str]] = {}
    for unit in sorted(units):
        strata.setdefault(units[unit], []).append(unit)
    names = sorted(strata)
    exact = np.array([test_fraction * len(strata[s]) for s in names])
    quota = np.floor(exact).astype(int)
    remaining = int(round(test_fraction * len(units))) - int(quota.sum())
    order = sorted(range(len(names)), key=lambda i: (-(exact[i] - quota[i]), i))
    for i in order[: max(remaining, 0)]:
        quota[i] += 1
    rng = np.random.default_rng(seed)
    test: set[str] = set()
    for s, q in zip(names, quota):
        members = strata[s]
        test.update(members[i] for i in rng.permutation(len(members))[:q])
    return test


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _numeric_label(value: Any) -> bool:
    return isinstance(value, (int, float)) or (
        isinstance(value, list) and all(isinstance(v, (int, float)) for v in value)
    )


def _check_against(recorded: dict, entries: Sequence[dict], path: Path) -> dict[str, str]:
    """``{subject_id: split}`` of a written split file after checking that ``entries`` are the same cases with the
    same labels; every difference is named."""
    written = [(split, e) for split in ("training", "validation") for e in recorded.get(split, [])]
    if not written or any(not isinstance(e, dict) or "subject_id" not in e for _, e in written):
        raise ValueError(
            f"split file {path} has no training/validation entries with a subject_id; restore or delete it"
        )
    membership = {e["subject_id"]: split for split, e in written}
    labels = {e["subject_id"]: e.get("label") for _, e in written}
    current = {e["subject_id"]: e for e in entries}
    new, gone = sorted(set(current) - set(membership)), sorted(set(membership) - set(current))
    changed = sorted(
        sid for sid in set(current) & set(labels)
        if _numeric_label(current[sid].get("label")) and not _same(current[sid].get("label"), labels[sid])
    )  # fmt: skip
    problems = []
    if new:
        problems.append(
            f"{len(new)} case(s) in the data but not in the split: {new[:10]}{' ...' if len(new) > 10 else ''}"
        )
    if gone:
        problems.append(
            f"{len(gone)} case(s) in the split but no longer in the data: {gone[:10]}{' ...' if len(gone) > 10 else ''}"
        )
    if changed:
        shown = [f"{sid}: {labels[sid]} -> {current[sid]['label']}" for sid in changed[:10]]
        problems.append(f"{len(changed)} case(s) whose label changed: {shown}{' ...' if len(changed) > 10 else ''}")
    if problems:
        raise ValueError(
            f"the data no longer match the fixed split {path}, which is never re-drawn silently:\n"
            + "\n".join(problems)
            + f"\nrestore the data, or delete {path} to draw a new split (results are then not comparable with earlier ones)"
        )
    return membership


def _test_ids(
    entries: Sequence[dict],
    test_fraction: float,
    seed: int,
    stratify: str | None,
    group_key: str | None,
    official_test: Sequence[str] | None,
) -> set[str]:
    """``subject_id`` of the test entries of a new split: the ``official_test`` sets, or a seeded stratified draw
    of ``test_fraction`` of the units (cases, or ``group_key`` groups)."""
    if official_test:
        test = {e["subject_id"] for e in entries if e.get("set") in set(official_test)}
        if not test or len(test) == len(entries):
            raise ValueError(f"official_test {list(official_test)} selects {len(test)} of {len(entries)} entries")
        return test
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    key = _stratum_key(entries, stratify)
    group = (lambda e: str(e[group_key])) if group_key else (lambda e: e["subject_id"])
    units: dict[str, str] = {}
    for e in entries:
        if units.setdefault(group(e), key(e)) != key(e):
            raise ValueError(f"entries of {group_key} {group(e)!r} have different labels: cannot stratify by group")
    test_units = _draw(units, test_fraction, seed)
    return {e["subject_id"] for e in entries if group(e) in test_units}


def _reuse_split(path: Path, entries: Sequence[dict], settings: dict) -> dict[str, str]:
    """Membership recorded in ``path``, after checking it against ``entries`` (:func:`_check_against`)."""
    try:
        recorded = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"split file {path} is not valid JSON ({e}); restore it or delete it to draw a new split"
        ) from e
    membership = _check_against(recorded, entries, path)
    if recorded.get("split", {}) != settings:
        logger.warning(
            f"reusing the fixed split {path} drawn with {recorded.get('split')}; the settings {settings} are ignored"
        )
    logger.info(f"fixed split {path}: reused")
    return membership


def _write_split(path: Path, entries: Sequence[dict], membership: Mapping[str, str], settings: dict) -> None:
    """The split as a decathlon-style datalist, written atomically (DDP ranks may draw the same split at once)."""
    out = {
        "description": "fixed train/test split of an MRM downstream task (training = train, validation = test)",
        "split": settings,
        **{s: [e for e in entries if membership[e["subject_id"]] == s] for s in ("training", "validation")},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, path)
    logger.info(f"fixed split {path}: {len(out['training'])} training, {len(out['validation'])} validation (new)")


def fixed_split(
    entries: Sequence[dict],
    split_file: str | os.PathLike,
    test_fraction: float = 0.2,
    seed: int = 0,
    stratify: str | None = "label",
    group_key: str | None = None,
    official_test: Sequence[str] | None = None,
) -> dict[str, list[dict]]:
    """The paper's fixed train/test split, drawn once and written to ``split_file``, reused ever after.

    First call: ``test_fraction`` of the cases (of the groups, with ``group_key``: all tiles of a case on one side)
    go to ``validation``, chosen per stratum with a seeded generator, independent of the CSV's row order; or, with
    ``official_test``, the entries whose ``set`` is listed (PALM's Testing400) and the rest to ``training``. The
    entries are written as a decathlon-style datalist (``{"training": [...], "validation": [...], "split": {...}}``).
    Later calls read that file and return the current entries by its membership; cases added or removed, or a
    changed label, stop with the differences named. Other settings than the recorded ones are logged and ignored.

    Args:
        entries: a reader's entries (unique ``subject_id``).
        split_file: the datalist JSON (its folder is created).
        test_fraction: share of the test (``validation``) split, 0.2 in the paper.
        seed: the draw's seed.
        stratify: ``"label"`` (a class per entry), ``"rarest_label"`` (multi-label) or ``None``.
        group_key: entry field whose value keeps entries together (glioma: ``case_id``).
        official_test: ``set`` values that form the test split instead of a random draw.

    Returns:
        ``{"training": [...], "validation": [...]}``.
    """
    path = Path(split_file)
    ids = [e["subject_id"] for e in entries]
    dupes = sorted(sid for sid, n in Counter(ids).items() if n > 1)
    if dupes:
        raise ValueError(f"subject_id not unique, cannot split: {dupes[:10]}")
    if not entries:
        raise ValueError(f"no entries to split into {path}")
    settings = {"test_fraction": test_fraction, "seed": seed, "stratify": stratify, "group_key": group_key,
                "official_test": list(official_test) if official_test else None}  # fmt: skip
    if path.is_file():
        membership = _reuse_split(path, entries, settings)
    else:
        test = _test_ids(entries, test_fraction, seed, stratify, group_key, official_test)
        membership = {sid: ("validation" if sid in test else "training") for sid in ids}
        _write_split(path, entries, membership, settings)
    return {s: [e for e in entries if membership[e["subject_id"]] == s] for s in ("training", "validation")}


# ---- one call per config --------------------------------------------------------------------------------------

_SPLIT_DEFAULTS: dict[str, dict[str, Any]] = {
    "aptos": {"stratify": "label"},
    "rfmid": {"stratify": "rarest_label"},
    "palm": {"stratify": None},
    "crp": {"stratify": None},
    "glioma": {"stratify": "label", "group_key": "case_id"},
}


def task_datalist(
    task: str,
    dataset_dir: str | os.PathLike,
    split_file: str | os.PathLike,
    split: str = "training",
    test_fraction: float = 0.2,
    seed: int = 0,
    official_test: Sequence[str] | None | str = "auto",
    **reader_kwargs: Any,
) -> list[dict]:
    """Entries of one split of a task: read the layout (``read_<task>``), split it once (:func:`fixed_split`),
    return ``split`` (``training`` or ``validation``).

    Stratification per task: APTOS and glioma by class (glioma grouped by ``case_id``), RFMiD by each image's
    rarest positive label, CRP and PALM not at all. ``official_test="auto"`` uses PALM's own Testing set as the test
    split when the layout has one (the paper's 800 training / 400 test images), else the seeded 80/20 draw.
    PALM's converted masks go to ``<split_file folder>/palm_masks`` unless ``mask_dir`` is given.

    Example (config)::

        "data": {"_target_": "common.data.tasks2d.task_datalist", "task": "aptos", "dataset_dir": "@dataset_dir",
                 "split_file": "$os.path.join(@dataset_dir, 'split_mrm_aptos.json')", "split": "training"}
    """
    readers = {"aptos": read_aptos, "rfmid": read_rfmid, "palm": read_palm, "crp": read_crp, "glioma": read_glioma}
    if task not in readers:
        raise ValueError(f"unknown task {task!r}: one of {TASKS}")
    if split not in ("training", "validation"):
        raise ValueError(f"split must be 'training' or 'validation', got {split!r}")
    if task == "palm":
        reader_kwargs.setdefault("mask_dir", Path(split_file).parent / "palm_masks")
    entries = readers[task](dataset_dir, **reader_kwargs)
    if official_test == "auto":
        official_test = ["Testing"] if task == "palm" and any(e.get("set") == "Testing" for e in entries) else None
    splits = fixed_split(entries, split_file, test_fraction, seed, official_test=official_test, **_SPLIT_DEFAULTS[task])
    return splits[split]


# ---- what a bundle reads: a layout, a datalist or a folder of new images ---------------------------------------


def folder_entries(folder: str | os.PathLike, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[dict]:
    """Every image under ``folder`` (sub-folders too, sorted) as an unlabelled entry for inference:
    ``{"subject_id": <path relative to folder, without suffix>, "image": <absolute path>}``.

    Example: ``folder_entries("/data/new_fundus")  # [{'subject_id': 'a/img1', 'image': '/data/new_fundus/a/img1.png'}]``.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"input_dir {root} is not a folder")
    found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not found:
        raise FileNotFoundError(f"no image ({', '.join(suffixes)}) in {root}")
    return [{"subject_id": p.relative_to(root).with_suffix("").as_posix(), "image": str(p.resolve())} for p in found]


def task_entries(
    task: str,
    split: str = "training",
    data_dir: str | os.PathLike | None = None,
    datalist: str | os.PathLike | None = None,
    split_file: str | os.PathLike | None = None,
    input_dir: str | os.PathLike | None = None,
    **reader_kwargs: Any,
) -> list[dict]:
    """The entries a downstream bundle reads, from the first source given: ``input_dir`` (every image in a folder,
    no labels: inference on new images), ``datalist`` (a decathlon-style JSON or CSV, paths relative to it; its
    ``split`` list), or ``data_dir`` in the task's own layout, split once into ``split_file`` (default
    ``<data_dir>/split_mrm_<task>.json``) by :func:`task_datalist`.

    Args:
        task: one of :data:`TASKS`.
        split: ``training`` (the paper's training split) or ``validation`` (its test split); a datalist may also
            have ``testing``.
        data_dir, datalist, split_file, input_dir: the sources (see above).
        reader_kwargs: for ``read_<task>`` (e.g. CRP's ``targets``, PALM's ``structures``).

    Example (config)::

        "data": {"_target_": "common.data.tasks2d.task_entries", "task": "aptos", "split": "training",
                 "data_dir": "@data_dir", "datalist": "@datalist", "split_file": "@split_file"}
    """
    from common.data.images2d import read_image_datalist

    if input_dir:
        return folder_entries(input_dir)
    if datalist:
        entries = read_image_datalist(datalist, split)
        base = Path(datalist).parent
        for e in entries:  # PALM: one mask path per structure
            if isinstance(e.get("label"), list) and all(isinstance(v, str) for v in e["label"]):
                e["label"] = [v if os.path.isabs(v) else str(base / v) for v in e["label"]]
        return entries
    if not data_dir:
        raise ValueError(
            f"no data for {task}: give --dataset_dir (the dataset's own layout), --datalist or --input_dir"
        )
    split_file = split_file or Path(data_dir) / f"split_mrm_{task}.json"
    return task_datalist(task, data_dir, split_file, split, **reader_kwargs)


def readable_entries(entries: Sequence[dict], size: int | None = None, check_content: bool = True) -> list[dict]:
    """The entries whose image passes :func:`common.data.images2d.check_image2d`; each one that does not is logged
    with its file and problem and left out (batch inference goes on with the others). Every image failing stops
    with the problems listed.

    Example: ``dataset = Dataset(readable_entries(entries), transform)``.
    """
    from common.data.images2d import check_image2d

    kept, dropped = [], []
    for e in entries:
        problems = check_image2d(e["image"], str(e.get("subject_id", "")), size=size, check_content=check_content)
        errors = [p for p in problems if p.severity == "error"]
        for p in problems:
            (logger.error if p.severity == "error" else logger.warning)(str(p))
        (dropped if errors else kept).append(e)
    if dropped:
        logger.error(
            f"skipping {len(dropped)} of {len(entries)} images that cannot be read: {[e['subject_id'] for e in dropped][:10]}"
        )
    if not kept:
        raise ValueError(f"none of the {len(entries)} images can be read (problems logged above)")
    return kept


class SavePALMMasksd:
    """Write predicted structure masks as PNGs in PALM's own convention (0 = structure, 255 = background), one file
    per structure: ``<output_dir>/<image stem>_<structure>.png``, at the size of ``pred`` (after ``Invertd``: the
    input image's own size). The inverse of :func:`read_palm`'s conversion, so PALM's tools score them as they are.

    Args:
        keys: the prediction key (``[S, H, W]``, 0/1 per structure channel).
        output_dir: where the PNGs go (created).
        structures: one name per channel.
        meta_key: the key whose ``filename_or_obj`` names the file (the image).

    Example (config)::

        {"_target_": "common.data.tasks2d.SavePALMMasksd", "keys": "pred", "output_dir": "@output_dir",
         "structures": ["disc", "atrophy"]}
    """

    def __init__(
        self, keys: str = "pred", output_dir: str = ".", structures: Sequence[str] = ("disc", "atrophy"),
        meta_key: str = "image",
    ) -> None:  # fmt: skip
        self.key, self.output_dir, self.structures, self.meta_key = keys, Path(output_dir), list(structures), meta_key

    def __call__(self, data: Mapping[str, Any]) -> Mapping[str, Any]:
        pred = np.asarray(data[self.key].detach().cpu() if hasattr(data[self.key], "detach") else data[self.key])
        if pred.ndim != 3 or pred.shape[0] != len(self.structures):
            raise ValueError(f"expected a prediction [{len(self.structures)}, H, W], got {tuple(pred.shape)}")
        source = data[self.meta_key].meta["filename_or_obj"] if hasattr(data[self.meta_key], "meta") else "case"
        stem = Path(str(source)).stem
        for channel, structure in zip(pred, self.structures):
            _write_png(np.where(channel > 0.5, 0, 255).astype(np.uint8), self.output_dir / f"{stem}_{structure}.png")
        logger.info(f"wrote {len(self.structures)} masks of {source} to {self.output_dir}")
        return data
