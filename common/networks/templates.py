"""BrainMVP learnable modality templates (paper 3.2): one zero-initialised volume per modality."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn as nn

__all__ = ["ModalityTemplates"]


class ModalityTemplates(nn.Module):
    """Templates T = {T_m}, one per modality, on a canvas: the registered volume grid, or a crop-sized grid.

    Templates live in the intensity space of the normalised images (BrainMVP B.1: 1-99 percentile clip, rescaled
    to [0, 1]) and are used as they are, in pre-training and downstream alike: no per-use normalisation (the public
    code min-max normalises each use, which near-constant templates turn into ~1e9 gradient gains).

    Args:
        modalities: modality names, in index order (the ``modality_index`` of a sample refers to this list).
        canvas: template shape ``(D, H, W)``: the full registered volume (e.g. 240 x 240 x 155), where crops are
            taken at each sample's own box, or the crop size for unregistered data (box ignored).

    Example::

        >>> t = ModalityTemplates(["t1", "t2"], (8, 8, 8))
        >>> t.crop(torch.tensor([1, 0]), torch.tensor([[0, 0, 0], [4, 4, 4]]), (4, 4, 4)).shape
        torch.Size([2, 1, 4, 4, 4])
    """

    def __init__(self, modalities: Sequence[str], canvas: Sequence[int]) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.canvas = tuple(int(c) for c in canvas)
        self.templates = nn.Parameter(torch.zeros(len(self.modalities), 1, *self.canvas))  # zero-initialised (3.2)

    def get_extra_state(self) -> dict:
        return {"modalities": self.modalities, "canvas": list(self.canvas)}

    def set_extra_state(self, state: dict) -> None:
        if list(state["modalities"]) != self.modalities:
            raise ValueError(
                f"template modalities differ: checkpoint {state['modalities']} vs network {self.modalities}"
            )

    def crop(self, modality_index: torch.Tensor, box_start: torch.Tensor | None, size: Sequence[int]) -> torch.Tensor:
        """Each sample's template patch ``[B, 1, *size]`` at its crop box (gradients reach only those voxels).

        Args:
            modality_index: ``LongTensor[B]`` template per sample.
            box_start: ``LongTensor[B, 3]`` crop corners on the canvas (``None``: the canvas is the crop).
            size: crop size.
        """
        size = tuple(int(s) for s in size)
        chosen = self.templates[modality_index]  # [B, 1, *canvas]
        if size == self.canvas:
            return chosen
        if box_start is None:
            raise ValueError(f"templates of canvas {self.canvas} need each sample's crop box for crops of {size}")
        start = box_start.to(chosen.device).long()
        if (start < 0).any() or (
            start + torch.tensor(size, device=start.device) > torch.tensor(self.canvas, device=start.device)
        ).any():
            raise ValueError(
                f"crop boxes {start.tolist()} of size {size} leave the template canvas {self.canvas}: "
                "set template_canvas to the registered volume shape, or to the crop size for unregistered data"
            )
        # gather by advanced indexing: one index grid per spatial dim, offset per sample
        b = modality_index.shape[0]
        ar = [torch.arange(s, device=chosen.device) for s in size]
        idx_d = (start[:, 0, None] + ar[0])[:, :, None, None]
        idx_h = (start[:, 1, None] + ar[1])[:, None, :, None]
        idx_w = (start[:, 2, None] + ar[2])[:, None, None, :]
        batch = torch.arange(b, device=chosen.device)[:, None, None, None]
        return chosen[:, 0][batch, idx_d, idx_h, idx_w].unsqueeze(1)

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
