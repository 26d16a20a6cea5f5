"""Pyramid Barlow Twins (PBT) loss of M2-MAE, paper III.B.2, Eq. 4-6."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["cross_correlation", "barlow_twins_loss", "pyramid_barlow_loss"]


def cross_correlation(z: torch.Tensor, z_m: torch.Tensor, center: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Cross-correlation matrix of two embeddings, each row a sample, each column a feature dimension.

    Args:
        z: embedding of the original input ``[N, D]``.
        z_m: embedding of the masked input ``[N, D]``.
        center: subtract the per-dimension mean over samples first. Eq. 4 is Barlow Twins' Eq. 2, which is written
            for mean-centred embeddings (its reference code centres), making C a Pearson correlation; set False
            for the literal cosine form.
        eps: added under the square roots so constant dimensions give 0, not NaN.

    Returns:
        ``[D, D]`` matrix with entries in [-1, 1].
    """
    if z.shape != z_m.shape or z.ndim != 2:
        raise ValueError(f"expected two [N, D] embeddings of one shape, got {tuple(z.shape)} and {tuple(z_m.shape)}")
    z, z_m = z.float(), z_m.float()
    if center:
        z = z - z.mean(0)  # [N, D] - [D]: the mean broadcasts over the rows
        z_m = z_m - z_m.mean(0)
    # C_ij = sum_b z_bi z_m_bj / (sqrt(sum_b z_bi^2) sqrt(sum_b z_m_bj^2))  # Eq. 4
    norm = torch.sqrt(z.pow(2).sum(0) + eps)[:, None] * torch.sqrt(z_m.pow(2).sum(0) + eps)[None, :]
    return (z.T @ z_m) / norm


NORMALISATIONS = ("none", "width", "matrix")


def barlow_twins_loss(
    z: torch.Tensor, z_m: torch.Tensor, redundancy_weight: float = 1.0, center: bool = True, normalize: str = "none"
) -> torch.Tensor:
    """Barlow Twins loss at one level: invariance plus redundancy reduction.

    Args:
        z: ``[N, D]`` embedding of the original input.
        z_m: ``[N, D]`` embedding of the masked input.
        redundancy_weight: weight of the off-diagonal term; Eq. 5 uses 1, Barlow Twins' paper 5e-3.
        center: see :func:`cross_correlation`.
        normalize: ``"none"``: Eq. 5 as written, a sum over the ``D x D`` matrix (~1e5 for ViT-B's D = 768 at
            the start, against a mean squared error of ~1); ``"width"``: divided by D; ``"matrix"``: divided by
            D^2, the mean over the matrix. Dividing keeps Eq. 5's minimiser and the balance of its two terms and
            changes only its scale next to the other losses of Eq. 9.
    """
    if normalize not in NORMALISATIONS:
        raise ValueError(f"normalize must be one of {NORMALISATIONS}, got {normalize!r}")
    c = cross_correlation(z, z_m, center=center)
    on_diag = torch.diagonal(c)
    off_diag = c - torch.diag_embed(on_diag)
    # L^l = sum_i (1 - C_ii)^2 + sum_i sum_{j != i} C_ij^2  # Eq. 5
    loss = (1 - on_diag).pow(2).sum() + redundancy_weight * off_diag.pow(2).sum()
    width = len(on_diag)  # D
    return loss / {"none": 1, "width": width, "matrix": width * width}[normalize]


def pyramid_barlow_loss(
    features: Sequence[torch.Tensor],
    masked_features: Sequence[torch.Tensor],
    redundancy_weight: float = 1.0,
    center: bool = True,
    normalize: str = "none",
) -> torch.Tensor:
    """Sum of the Barlow Twins losses over encoder levels.

    Args:
        features: per level, tokens of the original input ``[B, L, D]`` (or already ``[N, D]``).
        masked_features: per level, tokens of the masked input, same shapes.
        redundancy_weight: see :func:`barlow_twins_loss`.
        center: see :func:`cross_correlation`.
        normalize: scale of each level's Eq. 5, see :func:`barlow_twins_loss`.

    Every token is a sample of the correlation (a ViT level has one token grid, so "resized to the same level" is
    the identity here); a batch of 2 volumes at 96^3 and patch 16 gives 432 samples per level.
    """
    if len(features) != len(masked_features) or not features:
        raise ValueError(f"need the same non-zero number of levels, got {len(features)} and {len(masked_features)}")
    losses = [
        barlow_twins_loss(
            z.reshape(-1, z.shape[-1]), z_m.reshape(-1, z_m.shape[-1]), redundancy_weight, center, normalize
        )
        for z, z_m in zip(features, masked_features)
    ]
    return torch.stack(losses).sum()  # L_PBT^total = sum_l L_PBT^l  # Eq. 6
