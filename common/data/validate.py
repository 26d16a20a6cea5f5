"""Data validation before training (interim version; the full checker replaces it)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["Problem", "DataValidationError", "validate_entries", "check_or_raise"]
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    severity: str
    subject: str
    file: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.severity.upper()} {self.subject} {self.file or ''}: {self.message}"


class DataValidationError(ValueError):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        errors = [str(p) for p in problems if p.severity == "error"]
        super().__init__(f"{len(errors)} data errors:\n" + "\n".join(errors))


def validate_entries(entries: list[dict], image_keys: Sequence[str], *, required_keys: Sequence[str] | None = None,
                     label_key: str | None = None, label_values: Sequence[int] | None = None, min_modalities: int = 1,
                     check_content: bool = True, **_: object) -> list[Problem]:
    problems: list[Problem] = []
    required = list(image_keys) if required_keys is None else list(required_keys)
    for i, e in enumerate(entries):
        sid = str(e.get("subject_id", f"entry {i}"))
        shapes = {}
        present = [k for k in image_keys if k in e]
        if len(present) < min_modalities:
            problems.append(Problem("error", sid, None, f"{len(present)} modalities {present}, at least {min_modalities} needed"))
        for key in [*image_keys, *([label_key] if label_key and label_key in e else [])]:
            if key not in e:
                if key in required:
                    problems.append(Problem("error", sid, None, f"no '{key}' entry"))
                continue
            path = e[key]
            if not Path(path).exists():
                problems.append(Problem("error", sid, path, "file not found"))
                continue
            try:
                img = nib.load(path)
                shapes[key] = (img.shape[:3], img.affine)
                if check_content:
                    data = np.asarray(img.dataobj)
                    if not np.isfinite(data).all():
                        problems.append(Problem("error", sid, path, "NaN/Inf voxels"))
                    if key == label_key and label_values is not None:
                        bad = sorted(set(np.unique(data).astype(int).tolist()) - set(label_values))
                        if bad:
                            problems.append(Problem("error", sid, path, f"label values {bad} outside {list(label_values)}"))
            except Exception as ex:  # noqa: BLE001
                problems.append(Problem("error", sid, path, f"unreadable: {ex}"))
        if len({s for s, _ in shapes.values()}) > 1:
            problems.append(Problem("error", sid, None, f"shapes differ: { {k: s for k, (s, _) in shapes.items()} }"))
    return problems


def check_or_raise(entries_or_datalist, image_keys: Sequence[str], **kw) -> None:
    problems = validate_entries(list(entries_or_datalist), image_keys, **kw)
    for p in problems:
        if p.severity == "warning":
            logger.warning(str(p))
    if any(p.severity == "error" for p in problems):
        raise DataValidationError(problems)
