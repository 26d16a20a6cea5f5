"""The cases an ``inference.json`` runs on: from any source training takes, checked, named, never silently none.

Training reads a datalist, a dataset folder or the demo set (:func:`common.data.datalist.resolve_datalist`).
Inference takes the same sources, plus a single study file or a folder of them (4-D files with the contrasts on
the last axis in ``modalities`` order, as ``tools/stack_modalities.py`` writes and MONAI Label sends). It says
which source and split it used and how many cases; it checks every case before the first one runs (unreadable
or truncated files, NaN/Inf voxels, 2-D images, missing contrasts) and skips a bad case with a warning naming the
file and the problem, so the other cases are still written; it stops with an error when nothing is left to do.
Outputs are named after the subject id (``<subject_id>_<postfix>``), never after the first input file (two
subjects' ``t1.nii.gz`` would overwrite each other): two cases with the same output name are an error before the
first case, and ``index.csv`` in the output folder maps each subject to its output and its source files.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from common.data.datalist import resolve_datalist
from common.data.validate import DataValidationError, Problem, validate_entries

__all__ = ["inference_cases", "output_stem", "STUDY_EXTENSIONS"]

logger = logging.getLogger(__name__)

STUDY_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
_UNSAFE = re.compile(r"[^\w.\-]+")


def output_stem(subject_id: str) -> str:
    """The file-name stem of a subject's output: its id with path separators and odd characters as ``_``."""
    return _UNSAFE.sub("_", str(subject_id)).strip("._") or "case"


def _study_entries(path: Path) -> list[dict]:
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.name.lower().endswith(STUDY_EXTENSIONS))
    if not files:
        raise DataValidationError(
            [Problem("error", "image", str(path), f"no study files ({', '.join(STUDY_EXTENSIONS)}) in this folder")]
        )
    out = []
    for f in files:
        name = f.name
        for ext in STUDY_EXTENSIONS:
            if name.lower().endswith(ext):
                name = name[: -len(ext)]
                break
        out.append({"subject_id": name, "image": str(f.resolve())})
    return out


def _source(dataset_dir: str | None, datalist: str | None, image: str | None) -> str:
    if image:
        return f"image {image}"
    if datalist:
        return f"datalist {datalist}"
    if dataset_dir:
        return f"dataset_dir {dataset_dir}"
    return "the embedded demo set"


def _resolve(
    dataset_dir: str | None,
    datalist: str | None,
    image: str | None,
    modalities: Sequence[str],
    split: str,
    demo: dict | None,
    with_label: bool,
) -> tuple[list[dict], str]:
    """Entries and the split actually used."""
    if image:
        path = Path(image)
        if not path.exists():
            raise DataValidationError([Problem("error", "image", str(path), "file or folder not found")])
        return _study_entries(path), "(all files)"
    scanned = dataset_dir and not datalist and not (Path(dataset_dir) / "datalist.json").is_file()
    if scanned:  # a BraTS-layout folder has no splits: every subject
        return resolve_datalist(dataset_dir, None, modalities, "training", with_label), "(all subjects: no splits)"
    try:
        return resolve_datalist(dataset_dir, datalist, modalities, split, with_label, demo), split
    except (KeyError, FileNotFoundError, ValueError) as e:
        where = datalist or (Path(dataset_dir) / "datalist.json" if dataset_dir else "demo datalist")
        raise DataValidationError([Problem("error", "datalist", str(where), str(e).strip("'\""))]) from e


def _write_index(path: Path, entries: Sequence[dict], postfix: str, ext: str, keys: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["subject_id", "output", *keys])
        for e in entries:
            sources = [e.get(k, "") if not isinstance(e.get(k), list) else ";".join(map(str, e[k])) for k in keys]
            writer.writerow([e["subject_id"], f"{output_stem(e['subject_id'])}_{postfix}{ext}", *sources])


def inference_cases(
    dataset_dir: str | None = None,
    datalist: str | None = None,
    image: str | None = None,
    modalities: Sequence[str] = ("t1", "t1ce", "t2", "flair"),
    split: str = "testing",
    demo: dict | None = None,
    with_label: bool = False,
    required_keys: Sequence[str] | None = None,
    check_content: bool = True,
    skip_bad: bool = True,
    output_dir: str | None = None,
    output_postfix: str = "seg",
    output_ext: str = ".nii.gz",
    what: str = "inference",
) -> list[dict]:
    """The checked cases to run, each with ``output_name`` (``<subject_id>.nii.gz``, see :func:`output_stem`).

    Args:
        dataset_dir, datalist, split, demo, with_label: as :func:`common.data.datalist.resolve_datalist`; a
            scanned BraTS-layout folder has no splits, so every subject is used (and said so).
        image: a study file (4-D, contrasts on the last axis in ``modalities`` order), or a folder of them;
            wins over the other sources.
        modalities: contrast keys in channel order.
        required_keys: contrasts every case must have (default: all; ``[]`` where any subset works).
        check_content: read the voxels too (NaN/Inf, empty volumes, truncated files).
        skip_bad: skip a case with a problem (warning naming file and problem); ``False``: stop on any (e.g. for
            an evaluation, whose metrics would otherwise cover fewer cases than asked).
        output_dir: where the outputs go; ``index.csv`` (subject, output file, source files) is written there.
        output_postfix, output_ext: output file name parts, for the index.
        what: the run's name in the messages.

    Raises:
        DataValidationError: nothing to run (no case, or every case bad), two cases with the same output name, or
            (``skip_bad=False``) any problem; the message names each file and problem.

    Example::

        cases = inference_cases(dataset_dir="/data/BraTS2021", output_dir="eval/segmentations")
    """
    source = _source(dataset_dir, datalist, image)
    entries, used = _resolve(dataset_dir, datalist, image, modalities, split, demo, with_label)
    if not entries:
        raise DataValidationError(
            [Problem("error", what, None, f"nothing to do: {source} has no cases in split '{split}'")]
        )
    stems: dict[str, list[str]] = {}
    for e in entries:
        stems.setdefault(output_stem(e["subject_id"]), []).append(str(e["subject_id"]))
    clashes = [Problem("error", ", ".join(ids), None, f"these subjects would all be written as '{stem}_{output_postfix}"
                       f"{output_ext}': give them distinct subject_id values") for stem, ids in stems.items() if len(ids) > 1]  # fmt: skip
    if clashes:
        raise DataValidationError(clashes)
    if image:
        problems = validate_entries(entries, ["image"], check_content=check_content, expect_3d=False)
        problems += _channel_problems(entries, len(modalities), list(modalities))
    else:
        problems = validate_entries(
            entries, list(modalities), required_keys=required_keys, check_content=check_content,
            label_key="label" if with_label else None,
        )  # fmt: skip
    errors = [p for p in problems if p.severity == "error"]
    for p in problems:
        if p.severity == "warning":
            logger.warning(str(p))
    if errors and not skip_bad:
        raise DataValidationError(problems)
    bad = {p.subject for p in errors}
    for p in errors:
        logger.warning(f"skipped: {p}")
    kept = [e for e in entries if str(e["subject_id"]) not in bad]
    if not kept:
        raise DataValidationError(problems)
    for e in kept:
        e["output_name"] = f"{output_stem(e['subject_id'])}.nii.gz"
    logger.info(
        f"{what}: {len(kept)} case(s) from {source}, split {used}"
        + (f"; {len(entries) - len(kept)} skipped (see the warnings above)" if len(kept) < len(entries) else "")
    )
    if output_dir:
        keys = ["image"] if image else list(modalities)
        _write_index(Path(output_dir) / "index.csv", kept, output_postfix, output_ext, keys)
    return kept


def _channel_problems(entries: Sequence[dict], channels: int, modalities: list[str]) -> list[Problem]:
    """A study file must hold one channel per contrast (4-D, last axis), or be 3-D for a one-contrast bundle."""
    import nibabel as nib

    problems = []
    for e in entries:
        path = e["image"]
        try:
            shape = nib.load(path).shape if path.lower().endswith((".nii", ".nii.gz")) else None
        except Exception:  # unreadable: validate_entries has said so
            continue
        if shape is None:
            continue
        found = shape[3] if len(shape) > 3 else 1
        if len(shape) < 3 or found != channels:
            problems.append(
                Problem(
                    "error",
                    str(e["subject_id"]),
                    path,
                    f"shape {tuple(shape)}: expected a 3-D volume per contrast stacked on a 4th axis, "
                    f"{channels} contrast(s) {modalities}",
                )  # fmt: skip
            )
    return problems


def require_cases(
    data: Sequence[dict],
    what: str = "evaluation",
    dataset_dir: str | None = None,
    datalist: str | None = None,
    split: str = "validation",
) -> None:
    """Say how many cases a run uses and from where; stop (``DataValidationError``) when there are none.

    For a config's ``initialize``, e.g. in ``evaluate.json``::

        {"_target_": "common.data.inference.require_cases", "data": "@validate#dataset#data",
         "dataset_dir": "@dataset_dir", "datalist": "@datalist"}
    """
    source = _source(dataset_dir, datalist, None)
    if not data:
        hint = (
            " (a scanned folder has no splits: set --holdout, e.g. 0.2, for a validation share, or give a datalist)"
            if dataset_dir and not datalist and not (Path(dataset_dir) / "datalist.json").is_file()
            else ""
        )
        raise DataValidationError([Problem("error", what, None, f"nothing to do: {source} has no cases in split "
                                           f"'{split}'{hint}")])  # fmt: skip
    logger.info(f"{what}: {len(data)} case(s) from {source}, split '{split}'")
