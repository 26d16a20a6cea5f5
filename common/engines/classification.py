"""Helpers of the classification bundles: a check of the class labels, and the rows of the predictions CSV."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = [
    "ClassLabelError",
    "check_class_labels",
    "class_and_probabilities",
    "case_ids",
    "class_rows",
    "PredictionWriter",
]

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


def class_rows(class_names: Sequence[str], key: str = "pred") -> Callable[[Any], list[list]]:
    """``row_transform`` for :class:`PredictionWriter`: per case ``[predicted class name, p_0, ..., p_{K-1}]``.

    Example: ``class_rows(["II", "III", "IV"])([{"pred": torch.tensor([0.1, 0.7, 0.2])}])  # [['III', 0.1, 0.7, 0.2]]``.
    """
    names = [str(n) for n in class_names]

    def _transform(output: Any) -> list[list]:
        items = output if isinstance(output, list) else [output]
        probs = [torch.as_tensor(item[key]).detach().flatten().float().cpu() for item in items]
        return [[names[int(p.argmax())], *p.tolist()] for p in probs]

    return _transform


def _values(output: Any, key: str = "pred") -> list[list]:
    items = output if isinstance(output, list) else [output]
    return [torch.as_tensor(item[key]).detach().flatten().float().cpu().tolist() for item in items]


class PredictionWriter:
    """Evaluator handler: a predictions CSV with a header, one row per case, written when the run completes.

    Why not MONAI's ``ClassificationSaver``: its CSV has no header, and a row of 46 RFMiD probabilities or of six
    CRP risk factors needs its column names.

    Args:
        output_dir: folder of the CSV (created).
        columns: names of the values of a row (after the id column).
        filename: the CSV's name.
        row_transform: engine output -> one list of values per case; default: the flattened ``pred``.
        id_key: the batch field that names a case; id_column: its column header.

    Example (config)::

        {"_target_": "common.engines.classification.PredictionWriter", "output_dir": "@output_dir",
         "columns": "$['diagnosis'] + [f'p_{c}' for c in @class_names]",
         "row_transform": "$common.engines.classification.class_rows(@class_names)", "id_column": "id_code"}
    """

    def __init__(
        self,
        output_dir: str,
        columns: Sequence[str],
        filename: str = "predictions.csv",
        row_transform: Callable[[Any], list[list]] | None = None,
        id_key: str = "subject_id",
        id_column: str = "subject_id",
    ) -> None:
        self.path = os.path.join(output_dir, filename)
        self.columns, self.row_transform = [str(c) for c in columns], row_transform or _values
        self.id_key, self.id_column = id_key, id_column
        self.rows: list[list] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def collect(self, engine: Engine) -> None:
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        values = self.row_transform(engine.state.output)
        if len(values) != len(batch):
            raise ValueError(f"{len(values)} prediction rows for a batch of {len(batch)} cases")
        for item, row in zip(batch, values):
            if len(row) != len(self.columns):
                raise ValueError(f"a prediction row of {len(row)} values for the columns {self.columns}")
            self.rows.append([str(item[self.id_key]), *row])

    def write(self, engine: Engine) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([self.id_column, *self.columns])
            writer.writerows(self.rows)
        os.replace(tmp, self.path)
        logger.info(f"wrote {len(self.rows)} predictions to {self.path}")
