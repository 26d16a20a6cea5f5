"""MRM losses (Yang et al., ICCV 2023, section 3.2-3.4, Eq. 7-14).

* Eq. 7, reconstruction: ``||h_I(z_I^F) - x_I||^2 + ||h_G(z_G^F) - x_G||^2``, each term a *mean* squared error
  over its elements (pixels, variants), as MAE averages; the network returns the two terms separately
  (``loss_rec_image``, ``loss_rec_genome``) and the trainer sums them with weight 1 (:func:`mrm_loss_weights`).
* Eq. 8, 9, 11, sample relations: cosine similarity between the pooled features of every pair of samples.
* Eq. 10, self matching: ``1 / (2 B^2) sum_ij (R_II - R_II,M)^2 + (R_GG - R_GG,M)^2``, the mean over the
  modalities of the mean squared relation difference; with one modality (section 4.6) the same mean over one,
  ``1 / B^2 sum_ij (R_II - R_II,M)^2``.
* Eq. 12, cross matching: ``1 / B^2 sum_ij (R_IG - R_IG,M)^2``.
* Eq. 13-14: ``L = L_recon + lambda (L_self + L_cross)``.

Features enter the relations as one vector per sample (the mean of a branch's final tokens). The paper draws
"8 pairs of multimodal features" per batch for matching: :func:`draw_match_samples` picks that many *samples*
(an image-genome pair each), without replacement, all of them when the batch is smaller; B in Eq. 10 and 12 is
then the number drawn.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "reconstruction_loss",
    "sample_relation",
    "self_matching_loss",
    "cross_matching_loss",
    "matching_loss",
    "overall_loss",
    "draw_match_samples",
    "mrm_loss_weights",
]


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One term of Eq. 7: mean squared error between a reconstruction and its input (image or genetics)."""
    if pred.shape != target.shape:
        raise ValueError(f"reconstruction {list(pred.shape)} and target {list(target.shape)} differ in shape")
    return (pred.float() - target.float()).pow(2).mean()  # ||h(z^F) - x||_2^2 (per element)  # Eq. 7


def sample_relation(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Sample-wise relation ``R[i, j] = cos(a_i, b_j)`` (Eq. 8, 9, 11).

    Args:
        a: features ``[B, D]`` (one row per sample).
        b: features ``[B', D]``.
        eps: floor of the norms (a zero feature has relation 0 to everything).

    Returns:
        ``[B, B']``.

    Example::

        >>> sample_relation(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0], [0.0, 2.0]]))
        tensor([[0.7071, 0.0000]])
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected features [B, D] and [B', D], got {list(a.shape)} and {list(b.shape)}")
    a, b = F.normalize(a.float(), eps=eps), F.normalize(b.float(), eps=eps)  # rows (F.normalize's dim=1)
    return a @ b.T  # R^{i,j} = sim(z^i; z^j), cosine  # Eq. 8 / 9 / 11


def self_matching_loss(intact: Sequence[torch.Tensor], masked: Sequence[torch.Tensor]) -> torch.Tensor:
    """Self-modality relation matching (Eq. 10): intact vs masked sample relations within each modality.

    Args:
        intact: per modality, intact features ``[B, D]`` (``z_I``, ``z_G``).
        masked: per modality, masked features ``[B, D]`` (``z_I,M``, ``z_G,M``), same order.

    Returns:
        ``1 / (M B^2) sum_m sum_ij (R_m - R_m,M)^2`` for M modalities (M = 2 is Eq. 10's ``1 / (2 B^2)``).
    """
    if len(intact) != len(masked) or not intact:
        raise ValueError(f"need the same non-zero number of modalities, got {len(intact)} and {len(masked)}")
    terms = [
        (sample_relation(z, z) - sample_relation(z_m, z_m)).pow(2).sum() for z, z_m in zip(intact, masked)
    ]  # sum_ij ||R^{i,j} - R_M^{i,j}||^2 per modality
    b = intact[0].shape[0]
    return torch.stack(terms).sum() / (len(terms) * b * b)  # L_self = 1/(2B^2) sum_ij (II) + (GG)  # Eq. 10


def cross_matching_loss(
    z_image: torch.Tensor, z_genome: torch.Tensor, z_image_m: torch.Tensor, z_genome_m: torch.Tensor
) -> torch.Tensor:
    """Cross-modality relation matching (Eq. 12).

    Args:
        z_image: intact image features ``[B, D]``.
        z_genome: intact genome features ``[B, D]``.
        z_image_m: masked image features ``[B, D]``.
        z_genome_m: masked genome features ``[B, D]``.

    Returns:
        ``1 / B^2 sum_ij (cos(z_I^i, z_G^j) - cos(z_I,M^i, z_G,M^j))^2``.
    """
    r = sample_relation(z_image, z_genome)  # R_IG  # Eq. 11
    r_m = sample_relation(z_image_m, z_genome_m)  # R_IG,M  # Eq. 11
    b = z_image.shape[0]
    return (r - r_m).pow(2).sum() / (b * b)  # L_cross = 1/B^2 sum_ij ||R_IG - R_IG,M||^2  # Eq. 12


def matching_loss(l_self: torch.Tensor, l_cross: torch.Tensor | float) -> torch.Tensor:
    """Relation matching (Eq. 13)."""
    return l_self + l_cross  # L_match = L_self + L_cross  # Eq. 13


def overall_loss(
    l_rec_image: torch.Tensor, l_rec_genome: torch.Tensor | float, l_match: torch.Tensor, lam: float = 1.0
) -> torch.Tensor:
    """The MRM objective (Eq. 7 then Eq. 14); the trainer computes the same sum from :func:`mrm_loss_weights`."""
    return l_rec_image + l_rec_genome + lam * l_match  # L_overall = L_recon + lambda L_match  # Eq. 14


def mrm_loss_weights(lam: float = 1.0, genetics: bool = True) -> dict[str, float]:
    """Weights of the network's named terms that make the trainer's weighted sum Eq. 14.

    Args:
        lam: lambda of Eq. 14 (paper: 1.0).
        genetics: include the genome terms (False: single-modality mode, section 4.6).

    Example::

        >>> mrm_loss_weights(0.5)
        {'loss_rec_image': 1.0, 'loss_rec_genome': 1.0, 'loss_match_self': 0.5, 'loss_match_cross': 0.5}
    """
    weights = {"loss_rec_image": 1.0, "loss_rec_genome": 1.0, "loss_match_self": float(lam)}
    weights["loss_match_cross"] = float(lam)
    if not genetics:
        del weights["loss_rec_genome"], weights["loss_match_cross"]
    return weights


def draw_match_samples(
    batch: int, num: int | None = 8, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Indices of the samples that enter relation matching: ``num`` drawn without replacement (paper: 8).

    Args:
        batch: samples in the batch.
        num: samples to draw; ``None``, 0 or ``>= batch`` keeps all of them, in order.
        generator: optional random generator.
        device: device of the indices.

    Returns:
        long tensor ``[min(num, batch)]``.
    """
    if not num or num >= batch:
        return torch.arange(batch, device=device)
    if num < 2:
        raise ValueError(f"relation matching needs at least 2 samples per batch, got num={num}")
    draw_on = generator.device if generator is not None else device
    return torch.randperm(batch, generator=generator, device=draw_on)[:num].to(device)
