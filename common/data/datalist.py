"""Datalists: one function turns "the user's data, whatever form it takes" into MONAI data dicts.

Three sources, in order of precedence:

1. ``datalist``: a MONAI decathlon-style JSON; entries name their modalities either by key
   (``{"t1": ..., "t2": ...}``) or as a list (``{"image": [t1, t1ce, t2, flair]}``, in ``modalities`` order);
2. ``dataset_dir``: its ``datalist.json`` if present, else a PI-CAI-layout folder
   (``<patient>/<patient>_<study>_{t2w,adc,hbv}.mha``, M2-MAE's prostate data) or a BraTS-layout folder (one
   sub-folder per subject, files ``<subject>_<suffix>.nii.gz`` or ``.mha``/``.nrrd``; BraTS 2020/21 and 2023
   suffixes are both recognised);
3. neither: the embedded demo set, built on first use into a cache folder (``common.data.demo``).

Every entry comes back with absolute paths, the per-modality keys, an ``image`` list in ``modalities`` order
(only the modalities present), and ``subject_id``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "BRATS_SUFFIXES",
    "PICAI_SEQUENCES",
    "resolve_datalist",
    "holdout_split",
    "scan_brats_folder",
    "scan_picai_folder",
    "is_picai_folder",
    "load_datalist_json",
]

# file-name suffixes of each modality in BraTS releases (2018-2021 first, 2023 second)
BRATS_SUFFIXES: dict[str, tuple[str, ...]] = {
    "t1": ("t1", "t1n"),
    "t1ce": ("t1ce", "t1c"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "t2f"),
    "label": ("seg",),
}
_NIFTI = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")  # volume files a scanned folder may hold (ITK formats too)
# PI-CAI (M2-MAE's prostate data): <patient>_<study>_{t2w,adc,hbv}.mha, one folder per patient; labels apart
PICAI_SEQUENCES = ("t2w", "adc", "hbv", "sag", "cor")


def _absolute(value: Any, base: Path) -> Any:
    if isinstance(value, str) and value and not os.path.isabs(value):
        return str(base / value)
    if isinstance(value, list):
        return [_absolute(v, base) for v in value]
    return value


def _normalise_entry(
    entry: dict, modalities: Sequence[str], base: Path, path_keys: Sequence[str], index: int, source: str
) -> dict:
    if not isinstance(entry, dict):
        raise ValueError(f"{source}: entry {index} is a {type(entry).__name__}, expected an object with image paths")
    out = dict(entry)
    images = out.get("image")
    if isinstance(images, list) and not any(m in out for m in modalities):
        if len(images) != len(modalities):
            raise ValueError(
                f"{source}: entry {index} lists {len(images)} images but the bundle expects {len(modalities)} "
                f'modalities {list(modalities)}; name them by key instead (e.g. {{"t1": ...}}) if some are missing'
            )
        out.update(dict(zip(modalities, images)))
    for key in [*modalities, *path_keys]:
        if key in out:
            out[key] = _absolute(out[key], base)
    out["image"] = [out[m] for m in modalities if m in out]
    out.setdefault("subject_id", Path(out["image"][0]).name.split(".")[0] if out["image"] else f"case_{index}")
    return out


def load_datalist_json(
    path: str | os.PathLike,
    split: str,
    modalities: Sequence[str],
    path_keys: Sequence[str] = ("label",),
    base_dir: str | None = None,
) -> list[dict]:
    """Entries of ``split`` in a decathlon-style JSON, normalised (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"datalist {path} does not exist")
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"datalist {path} is not valid JSON: {e}") from e
    if split not in content:
        raise KeyError(
            f"datalist {path} has no '{split}' list (it has: {sorted(k for k, v in content.items() if isinstance(v, list))})"
        )
    base = Path(base_dir) if base_dir else path.parent
    return [_normalise_entry(e, modalities, base, path_keys, i, str(path)) for i, e in enumerate(content[split])]


def _find(folder: Path, subject: str, suffixes: Sequence[str]) -> str | None:
    for suffix in suffixes:
        for ext in _NIFTI:
            for name in (f"{subject}_{suffix}{ext}", f"{subject}-{suffix}{ext}"):
                if (folder / name).is_file():
                    return str(folder / name)
    return None


def scan_brats_folder(
    dataset_dir: str | os.PathLike, modalities: Sequence[str], with_label: bool = False
) -> list[dict]:
    """One entry per subject folder of a BraTS-layout dataset; subjects missing a modality are reported, not skipped."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset_dir {root} is not a folder")
    entries, problems = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        entry: dict[str, Any] = {"subject_id": folder.name}
        for m in [*modalities, *(["label"] if with_label else [])]:
            found = _find(folder, folder.name, BRATS_SUFFIXES.get(m, (m,)))
            if found is None:
                problems.append(
                    f"{folder}: no {m} file ({' or '.join(f'{folder.name}_{s}.nii.gz' for s in BRATS_SUFFIXES.get(m, (m,)))})"
                )
            else:
                entry[m] = found
        entries.append(entry)
    if not entries:
        raise FileNotFoundError(
            f"dataset_dir {root} has no subject folders (expected BraTS layout <subject>/<subject>_t1.nii.gz ...)"
        )
    if problems:
        raise FileNotFoundError(f"{len(problems)} missing files in {root}:\n" + "\n".join(problems))
    return [_normalise_entry(e, modalities, root, ("label",), i, str(root)) for i, e in enumerate(entries)]


def resolve_datalist(
    dataset_dir: str | None = None,
    datalist: str | None = None,
    modalities: Sequence[str] = ("t1", "t1ce", "t2", "flair"),
    split: str = "training",
    with_label: bool = False,
    demo: dict | None = None,
    label_key: str = "label",
    holdout: float = 0.0,
    seed: int = 0,
) -> list[dict]:
    """Data dicts for ``split`` from a datalist, a dataset folder, or the embedded demo set.

    Args:
        dataset_dir: folder with a ``datalist.json`` or in BraTS layout; ``None``/``""`` for the demo set.
        datalist: decathlon-style JSON (paths relative to it, or to ``dataset_dir`` when that is given too).
        modalities: modality keys, in channel order.
        split: list to read from a JSON (``training``, ``validation``, ``testing``). A scanned folder (BraTS or
            PI-CAI layout) has no splits: every subject is ``training`` and none is anything else, unless
            ``holdout`` is set.
        holdout, seed: for a scanned folder, the share of subjects held out as ``validation`` (the rest are
            ``training``): a fixed split, drawn once from the sorted subject ids with ``seed``, so every run and
            the evaluation of a finished run see the same subjects in each split. Datalists keep their own splits.
        with_label: a scanned folder must also hold ``<subject>_seg.nii.gz``.
        demo: keyword arguments of ``common.data.demo.demo_datalist`` for the demo set (e.g. ``num_cases``).
        label_key: the entry field holding this task's label, copied to ``label`` (e.g. ``class_label`` for the
            demo set's tumour grade, whose ``label`` is the segmentation).
    """
    entries = _resolve(dataset_dir, datalist, modalities, split, with_label, demo, holdout, seed)
    if label_key != "label":
        entries = [{**e, "label": e[label_key]} if label_key in e else e for e in entries]
    return entries


def is_picai_folder(dataset_dir: str | os.PathLike) -> bool:
    """Whether a folder holds PI-CAI-style studies (``<patient>/<patient>_<study>_t2w.mha``, up to two levels)."""
    root = Path(dataset_dir)
    return any(root.glob("*_t2w.mha")) or any(root.glob("*/*_t2w.mha"))


def scan_picai_folder(
    dataset_dir: str | os.PathLike,
    modalities: Sequence[str] = ("t2w", "adc", "hbv"),
    label_dir: str | os.PathLike | None = None,
    with_label: bool = False,
) -> list[dict]:
    """One entry per study of a PI-CAI-layout folder (``<patient>/<patient>_<study>_<sequence>.mha``).

    Args:
        dataset_dir: the ``images`` folder of PI-CAI (patient folders, or the files directly).
        modalities: sequences in channel order (PI-CAI: ``t2w``, ``adc``, ``hbv``).
        label_dir: folder of ``<patient>_<study>.nii.gz`` (or ``.mha``) label maps, e.g. PI-CAI's
            ``picai_labels/csPCa_lesion_delineations/human_expert/resampled``.
        with_label: every study must have a label in ``label_dir``.

    Subject ids are ``<patient>_<study>``; a study missing a sequence (or a required label) is reported with the
    files it lacks, never skipped.
    """
    root = Path(dataset_dir)
    unknown = [m for m in modalities if m not in PICAI_SEQUENCES]
    if unknown:
        raise ValueError(
            f"dataset_dir {root} is in PI-CAI layout (sequences {', '.join(PICAI_SEQUENCES[:3])}), but the bundle asks "
            f"for {list(modalities)}: pass e.g. --modalities \"['t2w','adc','hbv']\""
        )
    studies: dict[str, dict[str, str]] = {}
    for m in modalities:
        for f in [*root.glob(f"*_{m}.mha"), *root.glob(f"*/*_{m}.mha")]:
            studies.setdefault(f.name[: -len(f"_{m}.mha")], {})[m] = str(f.resolve())
    problems = []
    entries = []
    for key in sorted(studies):
        entry: dict[str, Any] = {"subject_id": key, **studies[key]}
        problems += [f"{key}: no {m} file ({key}_{m}.mha)" for m in modalities if m not in entry]
        if label_dir is not None:
            found = [Path(label_dir) / f"{key}{ext}" for ext in (".nii.gz", ".mha", ".nii")]
            hit = next((str(p.resolve()) for p in found if p.is_file()), None)
            if hit:
                entry["label"] = hit
            elif with_label:
                problems.append(f"{key}: no label {found[0]}")
        elif with_label:
            problems.append(f"{key}: labels needed, but no label_dir given (PI-CAI keeps them in picai_labels)")
        entries.append(entry)
    if not entries:
        raise FileNotFoundError(f"dataset_dir {root} has no <patient>_<study>_<sequence>.mha files")
    if problems:
        raise FileNotFoundError(f"{len(problems)} missing files in {root}:\n" + "\n".join(problems))
    return [_normalise_entry(e, modalities, root, ("label",), i, str(root)) for i, e in enumerate(entries)]


def holdout_split(entries: Sequence[dict], split: str, holdout: float, seed: int = 0) -> list[dict]:
    """The ``training`` or ``validation`` part of a fixed split of ``entries`` (see :func:`resolve_datalist`)."""
    import numpy as np

    if split not in ("training", "validation"):
        return []
    if holdout <= 0:
        return list(entries) if split == "training" else []
    ids = sorted(str(e["subject_id"]) for e in entries)
    if len(ids) < 2:
        raise ValueError(f"{len(ids)} subject(s): a training/validation split needs at least 2")
    count = min(len(ids) - 1, max(1, round(holdout * len(ids))))
    held = {ids[i] for i in np.random.default_rng(seed).permutation(len(ids))[:count]}
    return [e for e in entries if (str(e["subject_id"]) in held) == (split == "validation")]


def _resolve(dataset_dir, datalist, modalities, split, with_label, demo, holdout=0.0, seed=0) -> list[dict]:
    if datalist:
        return load_datalist_json(datalist, split, modalities, base_dir=dataset_dir or None)
    if dataset_dir:
        candidate = Path(dataset_dir) / "datalist.json"
        if candidate.is_file():
            return load_datalist_json(candidate, split, modalities)
        if split not in ("training", "validation") or (split == "validation" and holdout <= 0):
            return []
        if is_picai_folder(dataset_dir):
            scanned = scan_picai_folder(dataset_dir, modalities, with_label=with_label)
        else:
            scanned = scan_brats_folder(dataset_dir, modalities, with_label)
        return holdout_split(scanned, split, holdout, seed)
    from common.data.demo import demo_datalist  # builds on first use only

    return load_datalist_json(demo_datalist(**(demo or {})), split, modalities)
