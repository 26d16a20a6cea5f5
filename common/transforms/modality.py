"""Transforms for uni-modal pre-training on multi-modal studies (BrainMVP, paper 3.1 and Algorithm 1).

MONAI has no transform that draws modalities from whatever a study holds, nor a crop that reports where it cut
(BrainMVP's templates live on the registered canvas, so a sample's template patch must come from the same box).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, SpatialCrop
from monai.utils import ensure_tuple_rep

__all__ = ["SampleModalityPaird", "RandCropWithBoxd", "template_canvas", "RecordCanvasd", "CanvasMapd"]


class SampleModalityPaird(Randomizable, MapTransform):
    """Draw two different modalities X_im, X_in of one study, per sample, and stack them as ``[2, *spatial]``.

    Studies may hold any subset of ``modalities`` (missing ones are simply absent keys); at least two are needed.
    ``index_key`` receives both modalities' indices in ``modalities`` (the template index), ``[m, n]``.

    Args:
        modalities: every modality name the collection knows, in template order.
        out_key: key of the stacked ``[2, ...]`` volume.
        index_key: key of the ``LongTensor[2]`` of modality indices.
        drop_sources: delete the per-modality volumes afterwards (keeps batches small).
    """

    def __init__(
        self,
        modalities: Sequence[str],
        out_key: str = "image",
        index_key: str = "modality_index",
        drop_sources: bool = True,
    ) -> None:
        MapTransform.__init__(self, list(modalities), allow_missing_keys=True)
        self.modalities = list(modalities)
        self.out_key, self.index_key, self.drop_sources = out_key, index_key, drop_sources
        self._pair: tuple[int, int] = (0, 1)

    def randomize(self, present: Sequence[int]) -> None:
        m, n = self.R.choice(len(present), size=2, replace=False)
        self._pair = (present[m], present[n])

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        present = [i for i, name in enumerate(self.modalities) if name in d]
        if len(present) < 2:
            raise ValueError(
                f"subject {d.get('subject_id', '?')}: cross-modal masking needs two modalities, found "
                f"{[self.modalities[i] for i in present]} of {self.modalities}"
            )
        self.randomize(present)
        m, n = self._pair
        x_m, x_n = d[self.modalities[m]], d[self.modalities[n]]
        if x_m.shape != x_n.shape:
            raise ValueError(
                f"subject {d.get('subject_id', '?')}: {self.modalities[m]} {tuple(x_m.shape)} and "
                f"{self.modalities[n]} {tuple(x_n.shape)} differ in shape; co-register the study first"
            )
        d[self.out_key] = torch.cat([torch.as_tensor(x_m), torch.as_tensor(x_n)], dim=0)
        d[self.index_key] = torch.tensor([m, n], dtype=torch.long)
        if self.drop_sources:
            for i in present:
                d.pop(self.modalities[i])
        return d


class RandCropWithBoxd(Randomizable, MapTransform):
    """Random crop of ``roi_size`` centred on foreground (``image > 0``) with ``fg_prob``, else anywhere; the
    box's start corner goes to ``box_key``, so canvas-registered templates can be cropped at the same place.

    Args:
        keys: volumes to crop, all of one spatial shape (at least ``roi_size``; pad before).
        roi_size: crop size.
        fg_prob: probability that the centre is a foreground voxel (BrainMVP B.1: "centred on either
            foreground or background areas").
        source_key: the volume whose non-zero voxels are foreground.
        box_key: output key of the ``LongTensor[3]`` start corner.
    """

    def __init__(
        self,
        keys: KeysCollection,
        roi_size: Sequence[int] | int,
        fg_prob: float = 0.5,
        source_key: str = "image",
        box_key: str = "box_start",
    ) -> None:
        MapTransform.__init__(self, keys)
        self.roi_size = ensure_tuple_rep(roi_size, 3)
        self.fg_prob, self.source_key, self.box_key = fg_prob, source_key, box_key
        self._start = np.zeros(3, dtype=np.int64)

    def randomize(self, source: torch.Tensor) -> None:
        shape = np.array(source.shape[1:])
        size = np.array(self.roi_size)
        if (shape < size).any():
            raise ValueError(
                f"volume {tuple(shape)} is smaller than the crop {tuple(size)}; pad it first (SpatialPadd)"
            )
        centre = None
        if self.R.rand() < self.fg_prob:
            fg = torch.nonzero(torch.as_tensor(source).amax(0) > 0)
            if len(fg):
                centre = fg[self.R.randint(len(fg))].numpy()
        if centre is None:
            centre = np.array([self.R.randint(s) for s in shape])
        self._start = np.clip(centre - size // 2, 0, shape - size).astype(np.int64)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(d[self.source_key])
        cropper = SpatialCrop(roi_start=self._start.tolist(), roi_end=(self._start + np.array(self.roi_size)).tolist())
        for key in self.key_iterator(d):
            d[key] = cropper(d[key])
        d[self.box_key] = torch.as_tensor(self._start, dtype=torch.long)
        return d


def template_canvas(
    canvas: Sequence[int] | str,
    entries: Sequence[dict],
    modalities: Sequence[str],
    roi_size: Sequence[int],
    pixdim: Sequence[float] | None = None,
) -> list[int]:
    """The template canvas: given explicitly, ``"crop"`` (= ``roi_size``, for unregistered data), or ``"auto"``:
    the grid of the first study's first image after the pre-training geometry (``Orientation`` to RAS, then
    ``Spacing`` to ``pixdim`` when given), at least ``roi_size`` (volumes are end-padded)."""
    if canvas == "crop":
        return list(roi_size)
    if canvas != "auto":
        return [int(c) for c in canvas]
    from monai.transforms import LoadImage, Orientation, Spacing

    for entry in entries:
        for m in modalities:
            if m in entry:
                img = Orientation(axcodes="RAS", labels=None)(
                    LoadImage(image_only=True, ensure_channel_first=True)(entry[m])
                )
                if pixdim is not None and any(float(p) > 0 for p in pixdim):
                    img = Spacing(pixdim=pixdim, mode="bilinear")(img)
                warn_unregistered(entries, modalities)
                return [max(int(s), int(r)) for s, r in zip(img.shape[1:4], roi_size)]
    raise ValueError(f"no image of {list(modalities)} in the datalist to size the template canvas from")


def warn_unregistered(entries: Sequence[dict], modalities: Sequence[str], limit: int = 500, tol: float = 1e-3) -> bool:
    """Warn when the studies do not share one grid (shape and affine of their NIfTI headers): ``template_canvas:
    auto`` takes its canvas from the first study, so templates are in register only for data registered to one
    space. Returns whether a warning was given. Headers only are read (first ``limit`` studies)."""
    import logging

    import nibabel as nib
    import numpy as np

    reference, first = None, None
    for entry in list(entries)[:limit]:
        path = next((str(entry[m]) for m in modalities if m in entry), None)
        if path is None or not path.lower().endswith((".nii", ".nii.gz")):
            continue
        try:
            img = nib.load(path)
        except Exception:  # unreadable files are the data check's business
            continue
        grid = (tuple(img.shape[:3]), np.asarray(img.affine))
        if reference is None:
            reference, first = grid, entry.get("subject_id", path)
            continue
        if grid[0] != reference[0] or np.abs(grid[1] - reference[1]).max() > tol:
            logging.getLogger(__name__).warning(
                f"template_canvas auto: the studies are not on one grid ({first}: {reference[0]}, "
                f"{entry.get('subject_id', path)}: {grid[0]}, affines differ by {np.abs(grid[1] - reference[1]).max():.3g}); "
                "the canvas is the first study's, so templates are in register only for data registered to one space "
                "(e.g. MNI): register them first, or use template_canvas: crop"
            )
            return True
    return False


class RecordCanvasd(MapTransform):
    """Remember the grid of the template canvas: ``meta["canvas_affine"]`` = the image's affine now.

    Put it where the pipeline reaches the grid the templates were learnt on: after ``Orientationd`` (RAS) and
    ``Spacingd``, before any crop, pad, flip or resize. :class:`CanvasMapd` later turns it into each crop's canvas map.
    """

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key].meta["canvas_affine"] = torch.as_tensor(d[key].affine, dtype=torch.float64).clone()
        return d


class CanvasMapd(MapTransform):
    """``map_key`` = the ``4 x 4`` map from a voxel index of the (cropped, padded, flipped, resized) image to its voxel
    index on the canvas grid recorded by :class:`RecordCanvasd`: ``inverse(canvas affine) @ affine``.

    MONAI's spatial transforms keep a MetaTensor's affine up to date, so the map carries every one of them;
    :meth:`common.networks.templates.ModalityTemplates.sample` reads the templates through it. Put it last, after
    every random spatial transform.
    """

    def __init__(self, keys: KeysCollection, map_key: str = "canvas_map") -> None:
        super().__init__(keys)
        self.map_key = map_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        key = self.first_key(d)
        img = d[key]
        if "canvas_affine" not in getattr(img, "meta", {}):
            raise ValueError(
                f"'{key}' has no recorded canvas grid: put RecordCanvasd after Orientationd/Spacingd in the pipeline"
            )
        canvas = torch.as_tensor(img.meta["canvas_affine"], dtype=torch.float64)
        d[self.map_key] = torch.linalg.solve(canvas, torch.as_tensor(img.affine, dtype=torch.float64))
        return d
