"""BrainMVP pixel-level cross-modal masking (paper 3.1, Algorithm 1).

Algorithm 1 masks random r x r x r cubes of the uni-modal volume X_im, one at a time, until a fraction p* of its
voxels is covered, filling each from the same place in another modality X_in of the same study (or from the
learnable template T_m, 3.2). Here the cubes are cells of a grid of r^3 cubes and exactly round(p* x cells)
of them are drawn per sample by an argsort of noise, so the masked fraction is p* up to one cube, the cubes never
overlap (the loop's overlaps make its real fraction drift below the nominal one), and a batch is masked in one
tensor operation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["cube_mask", "cross_modal_mask"]


def cube_mask(
    shape: Sequence[int],
    batch: int,
    cube: int = 8,
    ratio: float = 0.875,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Per-sample voxel mask made of whole ``cube``^3 cells, ``round(ratio * cells)`` of them masked.

    Args:
        shape: spatial shape ``(D, H, W)``; edges not divisible by ``cube`` end in partial cells.
        batch: number of samples B (each draws its own cubes).
        cube: cube edge r in voxels (paper: 8).
        ratio: masked fraction p* (paper: 0.875).
        generator: optional random generator.
        device: device of the mask.

    Returns:
        bool ``[B, 1, D, H, W]``, ``True`` where the voxel is replaced.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    grid = [math.ceil(s / cube) for s in shape]
    cells = grid[0] * grid[1] * grid[2]
    k = round(ratio * cells)
    noise = torch.rand(batch, cells, generator=generator, device=device)
    masked = noise.argsort(dim=1).argsort(dim=1) < k  # [B, cells]: the k lowest noise values
    m = masked.view(batch, 1, *grid)
    for dim in range(3):
        m = m.repeat_interleave(cube, dim=2 + dim)
    return m[:, :, : shape[0], : shape[1], : shape[2]]


def cross_modal_mask(x_m: torch.Tensor, filler: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Phi(X_im, filler): masked voxels of ``x_m`` come from ``filler`` (X_in or T_m), the rest stay untouched.

    Args:
        x_m: uni-modal volumes ``[B, 1, D, H, W]``.
        filler: same shape (or broadcastable): the other modality, or the template crop.
        mask: bool ``[B, 1, D, H, W]`` from :func:`cube_mask`.
    """
    return torch.where(mask, filler, x_m)
