"""Small output transforms for MONAI metric handlers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["select_channel", "meta_of"]


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
