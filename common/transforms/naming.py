"""Name an output file after its subject, not after the first input file.

``SaveImaged`` names its file after the ``filename_or_obj`` of the image's meta data: for a study of four
contrasts that is the first contrast's file, so ``S1/t1.nii.gz`` and ``S2/t1.nii.gz`` would both become
``t1_seg.nii.gz`` and the second would overwrite the first. MONAI has no transform that renames from another
entry of the data dict; this one sets ``filename_or_obj`` from the entry ``output_name`` that
:func:`common.data.inference.inference_cases` gives every case (``<subject_id>.nii.gz``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

__all__ = ["NameBySubjectd"]


class NameBySubjectd(MapTransform):
    """Set the meta ``filename_or_obj`` of ``keys`` to ``data[name_key]`` (place it right before ``SaveImaged``).

    Args:
        keys: the tensors to be saved (MetaTensors).
        name_key: the entry holding the output name.

    Example::

        NameBySubjectd("pred")({"pred": pred, "output_name": "BraTS_001.nii.gz"})["pred"].meta["filename_or_obj"]
    """

    def __init__(self, keys: KeysCollection, name_key: str = "output_name", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.name_key = name_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.name_key not in d:
            raise KeyError(
                f"no '{self.name_key}' in the case: build the cases with common.data.inference.inference_cases"
            )
        for key in self.key_iterator(d):
            if not isinstance(d[key], MetaTensor):
                raise TypeError(f"'{key}' is a {type(d[key]).__name__}, not a MetaTensor: it carries no file name")
            d[key].meta["filename_or_obj"] = str(d[self.name_key])
        return d
