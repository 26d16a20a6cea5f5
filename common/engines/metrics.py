"""Small output transforms for MONAI metric handlers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["select_channel", "meta_of", "class_scores"]


def select_channel(index: int, keys: Sequence[str] = ("pred", "label")) -> Callable[[Any], tuple[list, list]]:
    """``output_transform`` that keeps channel ``index`` of ``pred`` and ``label`` of every decollated item.

    One metric handler per region (e.g. Dice of TC, WT, ET) keeps each region's value a scalar, so
    ``StatsHandler``, TensorBoard and ``MetricsSaver`` report them by name.
    """

    def _transform(output: Any) -> tuple[list, list]:
        items = output if isinstance(output, list) else [output]
        return tuple([item[k][index : index + 1] for item in items] for k in keys)  # type: ignore[return-value]

    return _transform


def meta_of(key: str = "image") -> Callable[[Any], list[dict]]:
    """``batch_transform`` for ``MetricsSaver``: the meta dicts of ``key`` (file names go into the per-case CSV)."""

    def _transform(batch: Any) -> list[dict]:
        return [item[key].meta for item in batch]

    return _transform


def class_scores(pred_key: str = "pred", label_key: str = "label") -> Callable[[Any], tuple]:
    """``output_transform`` for ignite's ``Accuracy`` / ``Fbeta``: stacked scores ``[B, C]`` and class indices
    ``[B]`` from decollated items whose label is one-hot (after ``AsDiscreted(to_onehot=C)``) or an index."""
    import torch

    def _transform(output: Any) -> tuple:
        items = output if isinstance(output, list) else [output]
        scores = torch.stack([torch.as_tensor(i[pred_key]).flatten() for i in items])
        labels = [torch.as_tensor(i[label_key]).flatten() for i in items]
        index = torch.stack([lab.argmax() if lab.numel() > 1 else lab[0] for lab in labels]).long()
        return scores, index

    return _transform
