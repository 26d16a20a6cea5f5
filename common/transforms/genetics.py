"""A dictionary transform that attaches each subject's genetics vector, imputed and standardised.

MONAI has no transform that looks a subject up in a table; this one standardises the whole (preloaded) table once
at construction, so a call is one row lookup.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

from monai.transforms import MapTransform

from common.data.genetics import FeatureTable, align_features, apply_feature_stats, read_genetics

__all__ = ["GeneticsLookupd"]


class GeneticsLookupd(MapTransform):
    """Put the subject's imputed and standardised genetics vector (float32 tensor ``[F]``) under ``output_key``.

    Args:
        table: a :class:`~common.data.genetics.FeatureTable`, or a path read with ``read_genetics(table,
            **reader_kwargs)``.
        stats: statistics from :func:`~common.data.genetics.fit_feature_stats` (fitted on the training subjects,
            or loaded from a pre-training checkpoint); the table is aligned to ``stats["features"]`` (a missing
            feature is an error naming it).
        id_key: the data-dict key holding the subject id.
        output_key: where the vector goes.
        reader_kwargs: keyword arguments of the reader when ``table`` is a path.

    A subject absent from the table raises a ``KeyError`` naming the subject and the table's file (join the
    datalist first with :func:`~common.data.genetics.join_subjects`).

    Example::

        lookup = GeneticsLookupd(table, stats)
        lookup({"subject_id": "s1", "image": img})["genetics"]  # tensor [F]
    """

    def __init__(
        self,
        table: FeatureTable | str | os.PathLike,
        stats: Mapping[str, Any],
        id_key: str = "subject_id",
        output_key: str = "genetics",
        reader_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(keys=id_key)
        if not isinstance(table, FeatureTable):
            table = read_genetics(table, **dict(reader_kwargs or {}))
        aligned = align_features(table, stats["features"])
        self.matrix = apply_feature_stats(aligned.values, stats, source=table.source)  # [N, F]
        self.index = {sid: i for i, sid in enumerate(aligned.ids)}
        self.source, self.id_key, self.output_key = table.source, id_key, output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.id_key not in d:
            raise KeyError(f"data dict has no {self.id_key!r} to look genetics up by (keys: {sorted(map(str, d))})")
        sid = str(d[self.id_key])
        row = self.index.get(sid)
        if row is None:
            raise KeyError(
                f"subject {sid!r} has no genetics in {self.source} ({len(self.index)} subjects); "
                "join the datalist with common.data.genetics.join_subjects first"
            )
        # clone: a view would carry (and pickle to DataLoader workers) the whole table's storage
        d[self.output_key] = self.matrix[row].clone()
        return d
