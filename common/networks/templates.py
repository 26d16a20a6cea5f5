"""BrainMVP learnable modality templates (paper 3.2): one zero-initialised volume per modality."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ModalityTemplates", "translation_map"]


def translation_map(box_start: torch.Tensor) -> torch.Tensor:
    """Canvas maps ``[B, 4, 4]`` of crops cut at ``box_start`` ``[B, 3]`` with no flip, permutation or resampling."""
    m = torch.eye(4, dtype=torch.float64, device=box_start.device)  # pragma: no mutate (device only)
    m = m.repeat(box_start.shape[0], 1, 1)
    m[:, :3, 3] = box_start  # cast to float64 by the assignment
    return m


class ModalityTemplates(nn.Module):
    """Templates T = {T_m}, one per modality, on a canvas: the registered volume grid, or a crop-sized grid.

    Templates live in the intensity space of the normalised images (BrainMVP B.1: 1-99 percentile clip, rescaled
    to [0, 1]) and are used as they are, in pre-training and downstream alike: no per-use normalisation (the public
    code min-max normalises each use, which near-constant templates turn into ~1e9 gradient gains).

    Args:
        modalities: modality names, in index order (the ``modality_index`` of a sample refers to this list).
        canvas: template shape ``(D, H, W)``: the registered volume grid (e.g. 240 x 240 x 155), on which every
            crop's voxels are found through its canvas map, or the crop size for unregistered data.
        registered: ``True`` when ``canvas`` is the registered volume grid; ``False`` for crop-sized templates of
            unregistered data, which have no position to look up (they are used whole, or resized to another crop).

    Which canvas voxel feeds which crop voxel is given by a *canvas map*: the ``4 x 4`` matrix taking a crop voxel
    index ``(i, j, k, 1)`` to its (possibly fractional) voxel index on the canvas, i.e.
    ``inverse(canvas affine) @ crop affine`` of MONAI's MetaTensors (``common.transforms.modality.CanvasMapd``).
    It carries every crop, pad, flip, axis permutation and resize applied since the canvas grid, so a template voxel
    always comes from the canvas position of the image voxel it replaces; where a crop voxel lies outside the
    canvas (the image was padded there) the template is 0, the padding value of the normalised images.

    Example::

        >>> t = ModalityTemplates(["t1", "t2"], (8, 8, 8))
        >>> t.sample(torch.tensor([[1], [0]]), translation_map(torch.tensor([[0, 0, 0], [4, 4, 4]])), (4, 4, 4)).shape
        torch.Size([2, 1, 4, 4, 4])
    """

    def __init__(self, modalities: Sequence[str], canvas: Sequence[int], registered: bool = True) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.canvas = tuple(int(c) for c in canvas)
        self.registered = bool(registered)
        self.templates = nn.Parameter(torch.zeros(len(self.modalities), 1, *self.canvas))  # zero-initialised (3.2)

    def get_extra_state(self) -> dict:
        return {"modalities": self.modalities, "canvas": list(self.canvas), "registered": self.registered}

    def set_extra_state(self, state: dict) -> None:
        if list(state["modalities"]) != self.modalities:
            raise ValueError(
                f"template modalities differ: checkpoint {state['modalities']} vs network {self.modalities}"
            )
        self.registered = bool(state.get("registered", True))  # checkpoints before 0.4.0: canvas templates

    def sample(
        self, modality_index: torch.Tensor, canvas_map: torch.Tensor | None, size: Sequence[int]
    ) -> torch.Tensor:
        """Each sample's templates on its crop grid: ``[B, K, *size]`` (gradients reach only the voxels used).

        Args:
            modality_index: ``LongTensor[B, K]`` (or ``[B]``, then ``K = 1``): the templates each sample needs.
            canvas_map: ``[B, 4, 4]`` crop-voxel -> canvas-voxel maps (see the class docstring); ``None`` only for
                unregistered templates or when the canvas is the crop.
            size: the crop's spatial shape.
        """
        size = tuple(int(s) for s in size)
        index = modality_index[:, None] if modality_index.ndim == 1 else modality_index  # [B, K]
        if not self.registered or canvas_map is None:
            if self.registered and size != self.canvas:
                raise ValueError(
                    f"templates of canvas {self.canvas} need each crop's canvas map for crops of {size}: end the "
                    "training transforms with common.transforms.modality.CanvasMapd (RecordCanvasd after Spacingd)"
                )
            chosen = self.templates[:, 0][index]  # [B, K, *canvas]
            # unregistered: no position to look up; the whole template stands for the crop
            if size == self.canvas:  # pragma: no mutate (F.interpolate to the same size is the identity)
                return chosen
            return F.interpolate(chosen, size=size, mode="trilinear")
        b, n = index.shape[0], math.prod(size)
        grid = torch.cartesian_prod(*[torch.arange(s) for s in size]).to(torch.float64)  # [N, 3], C order
        grid = F.pad(grid, (0, 1), value=1.0)  # [N, 4]: homogeneous crop voxel indices
        points = (canvas_map.to(torch.float64).cpu() @ grid.T)[:, :3]  # [B, 3, N]: canvas voxel of each crop voxel
        points = points.to(self.templates.device)  # pragma: no mutate (device only: equivalent on a CPU)
        canvas = torch.tensor(self.canvas, device=points.device)[None, :, None]  # pragma: no mutate (device only)
        if torch.allclose(points, points.round(), atol=1e-4):  # crops, pads, flips, permutations: exact lookup
            p = points.round().long()
            inside = ((p >= 0) & (p < canvas)).all(1)  # [B, N]
            d, h, w = (p[:, i].clamp(0, self.canvas[i] - 1) for i in range(3))
            flat = (d * self.canvas[1] + h) * self.canvas[2] + w  # [B, N]
            table = self.templates.reshape(len(self.modalities), -1)  # [M, V]
            values = torch.where(inside[:, None], table[index[:, :, None], flat[:, None, :]], 0.0)  # [B, K, N]
        else:  # resized / resampled crops: trilinear interpolation on the canvas
            # within half a voxel of the canvas the edge value holds (as F.interpolate, i.e. MONAI's Resize, does:
            # here grid_sample's border padding); beyond that the image was padded and the template is 0
            inside = ((points >= -0.5) & (points <= canvas - 0.5)).all(1)  # [B, N]
            norm = points / (canvas - 1).clamp_min(1) * 2 - 1  # [B, 3, N] in (d, h, w) order, align_corners=True
            g = norm.flip(1).transpose(1, 2).reshape(b, 1, 1, n, 3).to(self.templates.dtype)  # grid_sample: (w, h, d)
            every = self.templates[:, 0][None].expand(b, -1, *self.canvas)  # [B, M, *canvas], a view
            # trilinear (grid_sample's default "bilinear" on 5-D input)
            sampled = F.grid_sample(every, g, padding_mode="border", align_corners=True)
            values = sampled.reshape(b, -1, n).gather(1, index[:, :, None].expand(-1, -1, n))  # [B, K, N]
            values = torch.where(inside[:, None], values, 0.0)
        return values.reshape(b, index.shape[1], *size)

    def to_nifti(self, out_dir: str, affine=None) -> list[str]:
        """Write one NIfTI file per modality (``template_<name>.nii.gz``); returns the paths."""
        import nibabel as nib
        import numpy as np

        os.makedirs(out_dir, exist_ok=True)
        paths = []
        for name, volume in zip(self.modalities, self.templates.detach().cpu().float()):
            path = os.path.join(out_dir, f"template_{name}.nii.gz")
            nib.save(nib.Nifti1Image(volume[0].numpy(), np.eye(4) if affine is None else np.asarray(affine)), path)
            paths.append(path)
        return paths
