"""Check a datalist before training: every problem at once, each naming the subject, the file and the problem.

Errors stop training (``check_or_raise``, called by every trainer's ``initialize``); warnings are logged and
training goes on. Headers are read first; voxel data only with ``check_content`` and one volume at a time.
Nothing read from a data file is ever evaluated.

Checks: entry shape (not an object, no image at all, too few modalities, a required modality missing), files
(missing, unreadable, truncated, corrupt NIfTI / DICOM series / PNG-JPEG-TIFF / HDF5 / NumPy / torch tensors),
geometry (modalities of a study with different shapes or affines, a 4D file where a 3D volume is expected, a
label whose shape differs), content (NaN, Inf, empty or constant volumes, label values outside the label set),
tabular inputs (gene vectors of the wrong length or with non-numeric entries), WSI feature bags (no patches,
wrong rank), class labels (not an integer, out of range) and duplicates (subject ids: error; a file used by two
subjects: warning).

2D images paired with genetics (MRM) have their own entry points, ``validate_paired_entries`` /
``validate_paired_datalist`` / ``check_paired_or_raise``: image checks from ``common.data.images2d`` and table checks
on a ``common.data.genetics.FeatureTable`` (which errors and which warnings: ``validate_paired_entries``).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Problem",
    "DataValidationError",
    "validate_entries",
    "validate_datalist",
    "check_or_raise",
    "raise_for_problems",
    "validate_paired_entries",
    "validate_paired_datalist",
    "check_paired_or_raise",
]
logger = logging.getLogger(__name__)

_NIFTI = (".nii", ".nii.gz", ".img", ".hdr", ".mgz")
_RASTER = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_ITK = (".mha", ".mhd", ".nrrd", ".nhdr")  # MetaImage and NRRD, read by MONAI's ITKReader in the bundles


@dataclass(frozen=True)
class Problem:
    """One finding: ``severity`` is ``error`` or ``warning``."""

    severity: str
    subject: str
    file: str | None
    message: str

    def __str__(self) -> str:
        where = f" {self.file}" if self.file else ""
        return f"{self.severity.upper()} {self.subject}{where}: {self.message}"


class DataValidationError(ValueError):
    """Raised by :func:`check_or_raise`; ``problems`` holds every finding, the message lists the errors."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        errors = [str(p) for p in problems if p.severity == "error"]
        super().__init__(f"{len(errors)} data error(s), fix them before training:\n" + "\n".join(errors))


class _Unreadable(Exception):
    pass


def _suffix(path: str) -> str:
    lower = path.lower()
    for ext in (".nii.gz", *_NIFTI, *_ITK, *_RASTER, ".h5", ".hdf5", ".npy", ".pt", ".csv", ".tsv", ".json"):
        if lower.endswith(ext):
            return ext
    return os.path.splitext(lower)[1]


def _read_image(
    path: str, content: bool, notes: list[str] | None = None
) -> tuple[tuple[int, ...], np.ndarray | None, np.ndarray | None]:
    """(shape, affine or None, data or None) of an image file or DICOM folder; raises _Unreadable with a reason.
    ``notes`` collects findings that are not errors (files skipped in a DICOM folder, the DICOM modality)."""
    if os.path.isdir(path):
        return _read_dicom_series(path, content, notes)
    ext = _suffix(path)
    try:
        if ext in _NIFTI:
            import nibabel as nib

            img = nib.load(path)
            data = np.asarray(img.dataobj, dtype=np.float32) if content else None
            return tuple(img.shape), np.asarray(img.affine), data
        if ext in _ITK:
            return _read_itk(path, content)
        if ext in _RASTER:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                arr = np.asarray(im, dtype=np.float32)
            return arr.shape, None, arr if content else None
        if ext == ".dcm":
            return _read_dicom_series(path, content, notes)
    except (_Unreadable, FileNotFoundError):
        raise
    except Exception as e:  # noqa: BLE001 - any reader failure is reported, never raised from deep inside
        raise _Unreadable(f"cannot be read as {ext or 'an image'} ({type(e).__name__}: {str(e)[:160]})") from e
    raise _Unreadable(f"unsupported image format '{ext}' (NIfTI, MetaImage/NRRD, DICOM, PNG/JPEG/TIFF are read)")


def _read_itk(path: str, content: bool) -> tuple[tuple[int, ...], np.ndarray | None, np.ndarray | None]:
    """MetaImage / NRRD through MONAI's ITKReader (the reader the bundles' LoadImaged picks): shape in x, y, z
    order and the RAS affine, as for NIfTI."""
    try:
        from monai.data import ITKReader
    except ImportError as e:  # pragma: no cover - monai always has the class; itk itself may be missing
        raise _Unreadable("MetaImage/NRRD input needs itk (pip install itk)") from e
    try:
        reader = ITKReader(channel_dim=None)
        array, meta = reader.get_data(reader.read(path))
    except ImportError as e:
        raise _Unreadable("MetaImage/NRRD input needs itk (pip install itk)") from e
    data = np.asarray(array, dtype=np.float32)
    return tuple(data.shape), np.asarray(meta["affine"], dtype=np.float64), data if content else None


def _read_dicom_series(
    path: str, content: bool, notes: list[str] | None = None
) -> tuple[tuple[int, ...], np.ndarray | None, np.ndarray | None]:
    try:
        import pydicom
        from pydicom.misc import is_dicom
    except ImportError as e:
        raise _Unreadable("DICOM input needs pydicom (pip install pydicom)") from e
    files = sorted(Path(path).glob("*")) if os.path.isdir(path) else [Path(path)]
    files = [f for f in files if f.is_file()]
    stray = [f.name for f in files if os.path.isdir(path) and not is_dicom(str(f))]
    if stray and notes is not None:  # a README, .DS_Store ... beside the slices: skipped, as MONAI's reader does
        notes.append(f"skipped {len(stray)} non-DICOM file(s) in the series folder: {', '.join(stray[:3])}")
    files = [f for f in files if f.name not in stray]
    if not files:
        raise _Unreadable("DICOM folder is empty" + (" (no DICOM file among its files)" if stray else ""))
    slices = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, force=False)
            arr = ds.pixel_array.astype(np.float32) if content else None
            slices.append((ds, arr))
        except Exception as e:  # noqa: BLE001
            raise _Unreadable(
                f"DICOM file {f.name} is corrupt or truncated ({type(e).__name__}: {str(e)[:120]})"
            ) from e
    modality = str(getattr(slices[0][0], "Modality", "") or "")
    if modality and notes is not None:
        notes.append(f"modality:{modality}")
    rows, cols = int(slices[0][0].Rows), int(slices[0][0].Columns)
    if any((int(d.Rows), int(d.Columns)) != (rows, cols) for d, _ in slices):
        raise _Unreadable("DICOM slices of different sizes in one series")
    data = np.stack([a for _, a in slices], -1) if content else None
    return (rows, cols, len(slices)), None, data


def _read_bag(path: str) -> np.ndarray:
    ext = _suffix(path)
    try:
        if ext in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as f:
                key = "features" if "features" in f else next(iter(f.keys()))
                return np.asarray(f[key])
        if ext == ".npy":
            return np.load(path, allow_pickle=False)
        if ext == ".pt":
            import torch

            obj = torch.load(path, map_location="cpu", weights_only=True)
            obj = obj.get("features", next(iter(obj.values()))) if isinstance(obj, dict) else obj
            return np.asarray(obj)
    except Exception as e:  # noqa: BLE001
        raise _Unreadable(f"cannot be read as a feature bag ({type(e).__name__}: {str(e)[:160]})") from e
    raise _Unreadable(f"unsupported feature-bag format '{ext}' (.h5, .npy, .pt)")


def _gene_values(value: Any) -> tuple[list[str], str | None]:
    """Raw entries of a gene vector given inline or as a CSV/TSV/JSON file (one row of values, optional header)."""
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value], None
    path = str(value)
    ext = _suffix(path)
    if ext == ".json":
        return [str(v) for v in json.loads(Path(path).read_text())], path
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f, delimiter="\t" if ext == ".tsv" else ",") if r]
    if not rows:
        return [], path
    values = rows[-1]
    return values, path


def _is_number(text: str) -> bool:
    try:
        return np.isfinite(float(text))
    except ValueError:
        return False


_OBLIQUE_DEGREES = 1.0


def _digest(path: str) -> str | None:
    """sha256 of a file's bytes (``None`` for folders and unreadable files)."""
    import hashlib

    if not os.path.isfile(path):
        return None
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def _small_volume(
    sid: str, first: tuple[str, dict], crop_size: Sequence[int], pixdim: Sequence[float] | None
) -> list[Problem]:
    """A warning when a study is smaller than the training crop once resampled to ``pixdim``."""
    key, info = first
    shape = np.asarray(info["shape"][:3], dtype=np.float64)
    if info["affine"] is not None and pixdim is not None and any(float(p) > 0 for p in pixdim):
        spacing = np.linalg.norm(np.asarray(info["affine"], dtype=np.float64)[:3, :3], axis=0)
        target = np.array([float(p) if float(p) > 0 else s for p, s in zip(pixdim, spacing)])
        shape = np.floor(shape * spacing / target)
    crop = np.asarray(list(crop_size)[:3], dtype=np.float64)
    if len(shape) == 3 and np.any(shape < crop):
        size = "x".join(str(int(v)) for v in shape)
        return [Problem("warning", sid, info.get("path"), f"{key}: {size} voxels after resampling, smaller than the "
                        f"{'x'.join(str(int(c)) for c in crop)} training crop: it is zero-padded to the crop")]  # fmt: skip
    return []


def _identical_copies(sid: str, paths: Mapping[str, str]) -> list[Problem]:
    """A warning for each group of one subject's contrasts that are byte-identical copies of one file."""
    groups: dict[str, list[str]] = {}
    for key, path in paths.items():
        digest = _digest(path)
        if digest is not None:
            groups.setdefault(digest, []).append(key)
    return [
        Problem(
            "warning",
            sid,
            paths[keys[0]],
            f"contrasts {', '.join(keys)} are byte-identical copies of one file "
            "(a contrast copied in for a missing one teaches the network nothing about it)",
        )  # fmt: skip
        for keys in groups.values()
        if len(keys) > 1
    ]


def _obliquity(affine: np.ndarray) -> float:
    """Largest angle, in degrees, between a voxel axis and its nearest world axis."""
    rot = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(rot, axis=0)
    if np.any(norms == 0):
        return 0.0
    cosines = np.abs(rot / norms).max(axis=0).clip(0.0, 1.0)
    return float(np.degrees(np.arccos(cosines)).max())


def _check_image(sid: str, key: str, path: str, content: bool, expect_3d: bool) -> tuple[list[Problem], dict | None]:
    problems: list[Problem] = []
    if not os.path.exists(path):
        return [Problem("error", sid, path, f"{key}: file not found")], None
    notes: list[str] = []
    try:
        shape, affine, data = _read_image(path, content, notes)
    except _Unreadable as e:
        return [Problem("error", sid, path, f"{key}: {e}")], None
    for note in notes:
        if note.startswith("modality:"):
            if note == "modality:CT":
                problems.append(Problem("warning", sid, path, f"{key}: a CT series (DICOM Modality CT) given as an "
                                        "MRI contrast: the bundles' intensity normalisation and pre-training assume MRI"))  # fmt: skip
        else:
            problems.append(Problem("warning", sid, path, f"{key}: {note}"))
    if expect_3d and (_suffix(path) in _RASTER or len(shape) < 3 or min(shape[:3]) <= 1):
        return problems + [
            Problem(
                "error",
                sid,
                path,
                f"{key}: a 2-D image (shape {tuple(shape)}) where this bundle needs a 3-D "
                "volume (NIfTI, MetaImage/NRRD or a DICOM series with several slices)",
            )  # fmt: skip
        ], None
    if expect_3d and affine is not None and _obliquity(affine) > _OBLIQUE_DEGREES:
        problems.append(
            Problem(
                "warning",
                sid,
                path,
                f"{key}: oblique affine ({_obliquity(affine):.1f} degrees off the axes): "
                "the bundle reorients by axis permutation only, so it treats the volume as axis-aligned (outputs "
                "keep this affine); resample it to an axis-aligned grid first if orientation matters",
            )  # fmt: skip
        )
    if expect_3d and len(shape) > 3 and any(s > 1 for s in shape[3:]):
        problems.append(
            Problem(
                "error",
                sid,
                path,
                f"{key}: 4D volume {shape} where a 3D one is expected "
                "(split the time/channel axis into separate files)",
            )
        )
    if data is not None:
        nan, inf = int(np.isnan(data).sum()), int(np.isinf(data).sum())
        if nan:
            problems.append(Problem("error", sid, path, f"{key}: NaN voxels ({nan} of {data.size})"))
        if inf:
            problems.append(Problem("error", sid, path, f"{key}: Inf voxels ({inf} of {data.size})"))
        finite = data[np.isfinite(data)]
        if finite.size and finite.min() <= -900 and finite.max() >= 1000 and "modality:CT" not in notes:
            problems.append(Problem("warning", sid, path, f"{key}: intensities from {finite.min():g} to "
                                    f"{finite.max():g} look like CT Hounsfield units, not an MRI contrast"))  # fmt: skip
        if finite.size == 0 or finite.max() == finite.min():
            value = float(finite.flat[0]) if finite.size else float("nan")
            problems.append(Problem("error", sid, path, f"{key}: empty volume (every voxel is {value:g})"))
    return problems, {"shape": tuple(shape[:3]), "affine": affine, "data": data, "path": path}


def validate_entries(
    entries: Iterable[Any],
    image_keys: Sequence[str],
    *,
    required_keys: Sequence[str] | None = None,
    label_key: str | None = None,
    label_values: Sequence[int] | None = None,
    class_key: str | None = None,
    num_classes: int | None = None,
    gene_key: str | None = None,
    gene_length: int | None = None,
    bag_key: str | None = None,
    min_modalities: int = 1,
    check_content: bool = True,
    expect_3d: bool = True,
    affine_tolerance: float = 1e-3,
    crop_size: Sequence[int] | None = None,
    pixdim: Sequence[float] | None = None,
) -> list[Problem]:
    """Every problem of a list of data dicts (paths already absolute, as ``resolve_datalist`` returns them).

    Args:
        entries: data dicts.
        image_keys: modality keys, e.g. ``["t1", "t1ce", "t2", "flair"]``.
        required_keys: modalities every entry must have (default: all ``image_keys``; ``[]`` for methods that
            accept any subset, such as BrainMVP).
        label_key: segmentation label key, checked for shape and (``label_values``) values.
        class_key: class-label key, an integer in ``[0, num_classes)``.
        gene_key: gene-expression vector (inline list or CSV/TSV/JSON file) of ``gene_length`` numbers.
        bag_key: WSI patch-feature bag (``.h5``/``.npy``/``.pt``) of shape ``[N_patches, D]`` with N > 0.
        min_modalities: fewer present image keys is an error.
        check_content: also read voxel data (NaN/Inf, empty, label values).
        expect_3d: a 4D image is an error.
        affine_tolerance: largest allowed difference between the affines of one study's images.
        crop_size, pixdim: the bundle's training crop and resampling spacing (``0`` = none): a volume smaller than the
            crop after resampling is warned about (it is zero-padded to the crop).
    """
    problems: list[Problem] = []
    required = list(image_keys) if required_keys is None else list(required_keys)
    ids: Counter = Counter()
    users: dict[str, list[str]] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problems.append(
                Problem("error", f"entry {i}", None, f"is a {type(entry).__name__}, expected an object of file paths")
            )
            continue
        sid = str(entry.get("subject_id", f"entry {i}"))
        ids[sid] += 1
        present = [k for k in image_keys if entry.get(k)]
        if not present:
            problems.append(Problem("error", sid, None, f"no image at all (expected keys {list(image_keys)})"))
            continue
        for key in required:
            if not entry.get(key):
                problems.append(Problem("error", sid, None, f"missing modality '{key}'"))
        if len(present) < min_modalities:
            problems.append(
                Problem("error", sid, None, f"{len(present)} modalities {present}; at least {min_modalities} needed")
            )
        geometry = {}
        for key in present:
            path = str(entry[key])
            users.setdefault(path, []).append(sid)
            found, info = _check_image(sid, key, path, check_content, expect_3d)
            problems += found
            if info:
                geometry[key] = info
        problems += _identical_copies(sid, {k: str(entry[k]) for k in present})
        if crop_size is not None and geometry:
            problems += _small_volume(sid, next(iter(geometry.items())), crop_size, pixdim)
        shapes = {k: g["shape"] for k, g in geometry.items()}
        if len(set(shapes.values())) > 1:
            problems.append(Problem("error", sid, None, f"modalities differ in shape: {shapes}"))
        affines = {k: g["affine"] for k, g in geometry.items() if g["affine"] is not None}
        if len(affines) > 1:
            ref_key, ref = next(iter(affines.items()))
            for k, a in affines.items():
                if np.abs(a - ref).max() > affine_tolerance:
                    problems.append(
                        Problem(
                            "error",
                            sid,
                            str(entry[k]),
                            f"affine of {k} differs from {ref_key}'s by "
                            f"{np.abs(a - ref).max():.3g} (not co-registered)",
                        )
                    )
        if label_key and entry.get(label_key) is not None:
            problems += _check_label(
                sid, str(entry[label_key]), label_key, label_values, shapes, check_content, expect_3d
            )
        if class_key and class_key in entry:
            problems += _check_class(sid, entry[class_key], class_key, num_classes)
        if gene_key and gene_key in entry:
            problems += _check_genes(sid, entry[gene_key], gene_length)
        if bag_key and bag_key in entry:
            problems += _check_bag(sid, str(entry[bag_key]))
    problems += [Problem("error", sid, None, f"subject id used by {n} entries") for sid, n in ids.items() if n > 1]
    problems += [
        Problem("warning", ", ".join(s), path, f"the same file is used by {len(s)} entries")
        for path, s in users.items()
        if len(s) > 1
    ]
    return problems


def _check_label(
    sid: str, path: str, key: str, values: Sequence[int] | None, shapes: dict, content: bool, expect_3d: bool
) -> list[Problem]:
    found, info = _check_image(sid, key, path, content, expect_3d)
    found = [p for p in found if "empty volume" not in p.message]  # an all-background label is legal
    if info is None:
        return found
    image_shape = next(iter(shapes.values()), None)
    if image_shape is not None and info["shape"] != image_shape:
        found.append(
            Problem("error", sid, path, f"{key}: shape {info['shape']} differs from the images' {image_shape}")
        )
    if values is not None and info["data"] is not None:
        data = info["data"][np.isfinite(info["data"])]
        present = np.unique(data)
        if not np.allclose(present, np.round(present)):
            found.append(
                Problem(
                    "error",
                    sid,
                    path,
                    f"{key}: non-integer label values (e.g. {present[~np.isclose(present, np.round(present))][:3].tolist()})",
                )
            )
        bad = sorted(set(np.round(present).astype(int).tolist()) - set(int(v) for v in values))
        if bad:
            found.append(Problem("error", sid, path, f"{key}: label values {bad} outside the label set {list(values)}"))
    return found


def _check_class(sid: str, value: Any, key: str, num_classes: int | None) -> list[Problem]:
    if isinstance(value, bool) or not (
        isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer())
    ):
        return [Problem("error", sid, None, f"{key} {value!r} is not an integer class")]
    if num_classes is not None and not 0 <= int(value) < num_classes:
        return [Problem("error", sid, None, f"{key} {value} outside 0..{num_classes - 1}")]
    return []


def _check_genes(sid: str, value: Any, length: int | None) -> list[Problem]:
    try:
        values, path = _gene_values(value)
    except FileNotFoundError:
        return [Problem("error", sid, str(value), "gene vector file not found")]
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return [Problem("error", sid, str(value), f"gene vector unreadable ({type(e).__name__}: {e})")]
    problems = []
    bad = [(j, v) for j, v in enumerate(values) if not _is_number(v)]
    if bad:
        j, v = bad[0]
        problems.append(
            Problem("error", sid, path, f"gene vector has {len(bad)} non-numeric entries (first: index {j}, {v!r})")
        )
    if length is not None and len(values) != length:
        problems.append(Problem("error", sid, path, f"gene vector of length {len(values)}, expected {length}"))
    return problems


def _check_bag(sid: str, path: str) -> list[Problem]:
    if not os.path.exists(path):
        return [Problem("error", sid, path, "feature bag not found")]
    try:
        bag = _read_bag(path)
    except _Unreadable as e:
        return [Problem("error", sid, path, str(e))]
    if bag.ndim != 2:
        return [Problem("error", sid, path, f"feature bag of shape {bag.shape}, expected [patches, features]")]
    if bag.shape[0] == 0:
        return [Problem("error", sid, path, "WSI feature bag has zero patches")]
    if not np.isfinite(bag).all():
        return [Problem("error", sid, path, "feature bag has NaN/Inf values")]
    return []


def validate_datalist(
    datalist: str,
    image_keys: Sequence[str],
    splits: Sequence[str] = ("training", "validation"),
    base_dir: str | None = None,
    **kwargs: Any,
) -> list[Problem]:
    """Every problem of the ``splits`` of a decathlon-style JSON (paths relative to it or to ``base_dir``)."""
    from common.data.datalist import load_datalist_json

    problems, entries = [], []
    for split in splits:
        try:
            entries += load_datalist_json(datalist, split, image_keys, base_dir=base_dir)
        except KeyError:
            continue
        except (FileNotFoundError, ValueError) as e:
            return [Problem("error", "datalist", datalist, str(e))]
    if not entries:
        problems.append(Problem("error", "datalist", datalist, f"no entries in {list(splits)}"))
    return problems + validate_entries(entries, image_keys, **kwargs)


def check_or_raise(entries_or_datalist: Iterable[Any] | str, image_keys: Sequence[str], **kwargs: Any) -> None:
    """Validate, log warnings, raise :class:`DataValidationError` listing every error."""
    if isinstance(entries_or_datalist, (str, os.PathLike)):
        problems = validate_datalist(str(entries_or_datalist), image_keys, **kwargs)
    else:
        problems = validate_entries(list(entries_or_datalist), image_keys, **kwargs)
    raise_for_problems(problems)


def raise_for_problems(problems: Sequence[Problem]) -> None:
    """Log the warnings; raise :class:`DataValidationError` listing every error (if any)."""
    problems = list(problems)
    for p in problems:
        if p.severity == "warning":
            logger.warning(str(p))
    if any(p.severity == "error" for p in problems):
        raise DataValidationError(problems)
    logger.info(f"data check passed ({sum(p.severity == 'warning' for p in problems)} warnings)")


# ------------------------------------------------------------------------------- 2D images paired with genetics


def _first_ids(ids: Sequence[str], limit: int = 5) -> str:
    return ", ".join(list(ids)[:limit]) + (", ..." if len(ids) > limit else "")


def _paired_genetics_problems(
    table: Any, image_ids: Sequence[str], num_features: int | None, require: bool
) -> list[Problem]:
    """Table-level findings: width, Inf, all-missing / partly missing subjects, ids that do not join."""
    src, problems = table.source, []
    if num_features is not None and table.num_features != num_features:
        problems.append(
            Problem(
                "error", "genetics", src, f"genetics vectors of length {table.num_features}, expected {num_features}"
            )
        )
    values = table.values
    inf_rows = np.nonzero(np.isinf(values).any(1))[0]
    for r in inf_rows:
        j = int(np.nonzero(np.isinf(values[r]))[0][0])
        problems.append(
            Problem("error", table.ids[r], src, f"Inf genetics value (first in feature {table.features[j]!r})")
        )
    nan = np.isnan(values)
    empty = np.nonzero(nan.all(1))[0] if values.shape[1] else np.array([], dtype=int)
    problems += [Problem("error", table.ids[r], src, "every genetics value is missing") for r in empty]
    partial = int((nan.any(1) & ~nan.all(1)).sum())
    if partial:
        problems.append(
            Problem(
                "warning",
                "genetics",
                src,
                f"{partial} subject(s) have missing values ({100 * nan.mean():.2g}% of all values); they are imputed "
                "with the training mean",
            )
        )
    unique_ids = list(dict.fromkeys(image_ids))
    joined = [s for s in unique_ids if s in table]
    image_only = [s for s in unique_ids if s not in table]
    present = set(unique_ids)
    genetics_only = [s for s in table.ids if s not in present]
    if unique_ids and not joined:
        problems.append(
            Problem(
                "error",
                "genetics",
                src,
                f"no image subject has genetics: the ids do not join (images: {_first_ids(unique_ids, 3)}; "
                f"genetics: {_first_ids(table.ids, 3)})",
            )
        )
    elif image_only:
        if require:
            problems += [Problem("error", s, src, "image subject has no genetics") for s in image_only]
        else:
            problems.append(
                Problem(
                    "warning",
                    "genetics",
                    src,
                    f"{len(image_only)} image subject(s) have no genetics and are left out of paired training "
                    f"(first: {_first_ids(image_only)})",
                )
            )
    if joined and genetics_only:
        problems.append(
            Problem(
                "warning",
                "genetics",
                src,
                f"{len(genetics_only)} genetics subject(s) have no image; unused (first: {_first_ids(genetics_only)})",
            )
        )
    return problems


def validate_paired_entries(
    entries: Sequence[Any] | Mapping[str, Sequence[Any]],
    genetics: Any = None,
    *,
    image_key: str = "image",
    gene_key: str | None = None,
    num_features: int | None = None,
    genetics_kwargs: Mapping[str, Any] | None = None,
    require_genetics: bool = False,
    min_size: int = 32,
    size: int | None = None,
    allow_grey: bool = True,
    check_content: bool = True,
) -> list[Problem]:
    """Every problem of 2D images paired with one genetics vector per subject (MRM), each naming file and problem.

    Args:
        entries: data dicts with ``subject_id`` and ``image_key``, as one list or as ``{split: list}`` (then a
            subject or an image found in two splits is reported as a leak).
        genetics: a ``FeatureTable``, a path read with ``common.data.genetics.read_genetics(path,
            **genetics_kwargs)``, or ``None`` (images only, e.g. MRM's single-modality mode).
        gene_key: per-entry genetics vectors (inline list or a CSV/TSV/JSON file), checked for ``num_features``.
        num_features: the expected genetics length (e.g. the pre-trained network's input width).
        require_genetics: an image subject without genetics is an error instead of a warning.
        min_size, size, allow_grey, check_content: image checks (see ``common.data.images2d.check_image2d``).

    Errors (training cannot start): an entry without ``subject_id`` or image; a corrupt / unreadable / missing
    image, a channel layout that cannot become RGB, too small, NaN/Inf or blank; a subject or image file in two
    splits; genetics unreadable (a reader refuses duplicate subject ids, naming them); vectors of the wrong length;
    Inf values; a subject whose genetics are all missing; no image subject joining the genetics at all (and each
    image subject without genetics under ``require_genetics``).

    Warnings (training goes on, nothing dropped silently): image subjects without genetics (left out of paired
    training by ``join_subjects``, count and first ids), genetics subjects without images, partly missing genetics
    (imputed), a subject with several images in one split (e.g. both eyes: each image is a sample with the same
    genetics), one file used by two entries of a split, grey images, dropped alpha channels.

    Example: ``problems = validate_paired_entries(entries, "genotypes.bed", num_features=1000)``.
    """
    from common.data.images2d import check_image2d

    splits = dict(entries) if isinstance(entries, Mapping) else {"entries": list(entries)}
    problems: list[Problem] = []
    seen_subject: dict[str, str] = {}
    seen_file: dict[str, str] = {}
    image_ids: list[str] = []
    for split, items in splits.items():
        per_subject: Counter = Counter()
        per_file: Counter = Counter()
        for i, entry in enumerate(items):
            where = f"{split} entry {i}"
            if not isinstance(entry, Mapping):
                problems.append(Problem("error", where, None, f"is a {type(entry).__name__}, expected an object"))
                continue
            if "subject_id" not in entry or entry["subject_id"] in ("", None):
                problems.append(Problem("error", where, None, "no subject_id"))
                continue
            sid = str(entry["subject_id"])
            if not entry.get(image_key):
                problems.append(Problem("error", sid, None, f"no '{image_key}'"))
                continue
            path = str(entry[image_key])
            image_ids.append(sid)
            per_subject[sid] += 1
            per_file[path] += 1
            for seen, value, what in ((seen_subject, sid, "subject"), (seen_file, path, "image")):
                if seen.setdefault(value, split) != split:
                    problems.append(
                        Problem("error", sid, path, f"{what} is in both '{seen[value]}' and '{split}' (a leak)")
                    )
            problems += check_image2d(path, sid, image_key, min_size, size, allow_grey, check_content)
            if gene_key and gene_key in entry:
                problems += _check_genes(sid, entry[gene_key], num_features)
        problems += [
            Problem("warning", s, None, f"{n} images in '{split}'; each is one sample with the same genetics")
            for s, n in per_subject.items()
            if n > 1
        ]
        problems += [
            Problem("warning", split, f, f"the same file is used by {n} entries") for f, n in per_file.items() if n > 1
        ]
    if genetics is not None:
        from common.data.genetics import FeatureTable, read_genetics

        table = genetics
        if not isinstance(genetics, FeatureTable):
            try:
                table = read_genetics(genetics, **dict(genetics_kwargs or {}))
            except (OSError, ValueError, KeyError) as e:
                return problems + [Problem("error", "genetics", str(genetics), str(e).strip("'\""))]
        problems += _paired_genetics_problems(table, image_ids, num_features, require_genetics)
    return problems


def validate_paired_datalist(
    datalist: str,
    genetics: Any = None,
    splits: Sequence[str] = ("training", "validation"),
    base_dir: str | None = None,
    image_key: str = "image",
    **kwargs: Any,
) -> list[Problem]:
    """:func:`validate_paired_entries` over the ``splits`` of a JSON / CSV datalist (``read_image_datalist``)."""
    from common.data.images2d import read_image_datalist

    found: dict[str, list] = {}
    for split in splits:
        try:
            found[split] = read_image_datalist(datalist, split, image_key=image_key, base_dir=base_dir)
        except KeyError:
            continue
        except (FileNotFoundError, ValueError) as e:
            return [Problem("error", "datalist", datalist, str(e))]
    if not any(found.values()):
        return [Problem("error", "datalist", datalist, f"no entries in {list(splits)}")]
    return validate_paired_entries(found, genetics, image_key=image_key, **kwargs)


def check_paired_or_raise(entries_or_datalist: Any, genetics: Any = None, **kwargs: Any) -> None:
    """Validate images + genetics (a datalist path, a list or ``{split: list}``), log warnings, raise on errors."""
    if isinstance(entries_or_datalist, (str, os.PathLike)):
        problems = validate_paired_datalist(str(entries_or_datalist), genetics, **kwargs)
    else:
        problems = validate_paired_entries(entries_or_datalist, genetics, **kwargs)
    raise_for_problems(problems)
