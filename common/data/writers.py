"""An image writer that keeps the input's own grid whatever its axis order.

MONAI 1.6.1's ``SaveImaged(resample=False)`` still passes the label map through ``ImageWriter.resample_if_needed``,
which wraps the squeezed 3-D array in a ``MetaTensor``; that tensor's spatial rank is inferred as if its first
axis were a channel (2), so the 4x4 affine is cut to 3x3 and, for any orientation whose second or third voxel
axis is not aligned with the second or third world axis (RSA, ASR, SAR, ...: 32 of the 48), the cut affine is
singular and the save fails with "Affine ... is not invertible". With no target grid asked for there is nothing
to resample, so this writer returns the data and affine untouched in that case and defers to MONAI otherwise.
"""

from __future__ import annotations

from typing import Any

from monai.data.image_writer import NibabelWriter

__all__ = ["GridKeepingNibabelWriter"]


class GridKeepingNibabelWriter(NibabelWriter):
    """``NibabelWriter`` that never resamples when no target affine or shape is given (see the module docstring).

    Use it as ``SaveImaged(..., resample=False, writer="common.data.writers.GridKeepingNibabelWriter")``.
    """

    @classmethod
    def resample_if_needed(
        cls, data_array: Any, affine: Any = None, target_affine: Any = None, output_spatial_shape: Any = None, **kwargs
    ) -> tuple[Any, Any]:
        if target_affine is None and output_spatial_shape is None:
            return data_array, affine
        return super().resample_if_needed(data_array, affine, target_affine, output_spatial_shape, **kwargs)
