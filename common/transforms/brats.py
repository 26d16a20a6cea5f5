"""BraTS label conversions MONAI lacks: the inverse of ``ConvertToMultiChannelBasedOnBratsClasses``."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

__all__ = ["BratsChannelsToLabel", "BratsChannelsToLabeld"]


class BratsChannelsToLabel(Transform):
    """Binary ``[TC, WT, ET]`` channels (MONAI's order) -> one BraTS label map ``[1, ...]``.

    ET -> ``et_label``; TC without ET -> 1 (necrotic core); WT without TC -> 2 (oedema); else 0. Nested regions are
    enforced from the inside out, so an ET voxel outside the predicted TC still counts as ET.

    Args:
        et_label: value of the enhancing tumour (3 in BraTS 2023, 4 in BraTS 2018-2021).
    """

    def __init__(self, et_label: int = 3) -> None:
        self.et_label = et_label

    def __call__(self, channels: torch.Tensor) -> torch.Tensor:
        if channels.shape[0] != 3:
            raise ValueError(f"expected 3 channels [TC, WT, ET], got {channels.shape[0]}")
        tc, wt, et = (channels[i] > 0.5 for i in range(3))
        label = torch.zeros_like(channels[:1], dtype=torch.uint8)
        label[0][wt | tc | et] = 2
        label[0][tc | et] = 1
        label[0][et] = self.et_label
        return label


class BratsChannelsToLabeld(MapTransform):
    """Dictionary version of :class:`BratsChannelsToLabel`."""

    def __init__(self, keys: KeysCollection, et_label: int = 3, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = BratsChannelsToLabel(et_label)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d
