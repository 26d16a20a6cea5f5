"""Helpers of the classification bundles: a check of the class labels, and the rows of the predictions CSV."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

__all__ = ["ClassLabelError", "check_class_labels", "class_and_probabilities", "case_ids"]

logger = logging.getLogger(__name__)


class ClassLabelError(ValueError):
    """Entries whose class label is missing or not a valid class index (the message names each one)."""


def _as_class(value: Any) -> int | None:
    """``value`` as a class index, or ``None`` when it is not a whole number (bools, paths and 1.5 are not)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def check_class_labels(splits: Mapping[str, Sequence[dict]], num_classes: int, label_key: str = "label") -> None:
    """Refuse entries whose class is missing or not an integer in ``[0, num_classes)``, naming every one.

    Warns (does not fail) when a split lacks a class: a validation split with one class has no AUC, so the key
    metric never improves and no best model is saved.

    Args:
        splits: entries per split name, e.g. ``{"training": [...], "validation": [...]}``.
        num_classes: classes of the head.
        label_key: the entry field that holds the class, as the user wrote it.
    """
    problems = []
    for split, entries in splits.items():
        seen, before = set(), len(problems)
        for i, entry in enumerate(entries):
            sid = entry.get("subject_id", f"entry {i}")
            if label_key not in entry:
                problems.append(f"{split} {sid}: no '{label_key}' field")
                continue
            cls = _as_class(entry[label_key])
            if cls is None or not 0 <= cls < num_classes:
                problems.append(
                    f"{split} {sid}: '{label_key}' is {entry[label_key]!r}, expected an integer in [0, {num_classes})"
                )
            else:
                seen.add(cls)
        if entries and len(problems) == before and len(seen) < num_classes:
            absent = sorted(set(range(num_classes)) - seen)
            logger.warning(
                f"the {split} split has no case of class {absent}"
                + (": its AUC is undefined and no best model is saved" if split == "validation" else "")
            )
    if problems:
        hint = (
            " (is the class stored under another field? set label_key, e.g. --label_key class_label for the"
            " demo set, whose 'label' is a segmentation)"
        )
        raise ClassLabelError(
            f"{len(problems)} entries without a valid class{hint}:\n"
            + "\n".join(problems[:20])
            + ("\n..." if len(problems) > 20 else "")
        )


def class_and_probabilities(key: str = "pred") -> Callable[[Any], list[torch.Tensor]]:
    """``output_transform`` for ``ClassificationSaver``: per case ``[predicted class, p_0, ..., p_{C-1}]``."""

    def _transform(output: Any) -> list[torch.Tensor]:
        items = output if isinstance(output, list) else [output]
        probs = [torch.as_tensor(item[key]).detach().flatten().float() for item in items]
        return [torch.cat([p.argmax().reshape(1).float(), p]) for p in probs]

    return _transform


def case_ids(key: str = "subject_id") -> Callable[[Any], list[dict]]:
    """``batch_transform`` for ``ClassificationSaver``: name each CSV row by the entry's ``subject_id``."""

    def _transform(batch: Any) -> list[dict]:
        items = batch if isinstance(batch, list) else [batch]
        return [{"filename_or_obj": str(item[key])} for item in items]

    return _transform
