"""BrainMVP downstream template augmentation (paper appendix A, Fig. 5).

Two copies of each multi-modal sample are made in which a random number of modalities (different in the two
copies) are replaced by the frozen distilled templates of those modalities. For uni-modal inputs the single
modality is instead cube-masked from its template twice (Algorithm 1 with T_m as filler).
"""

from __future__ import annotations

import torch

from common.masking.cross_modal import cross_modal_mask, cube_mask

__all__ = ["replacement_masks", "template_copies"]


def replacement_masks(
    available: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, two different counts m != n of modalities to replace, and which ones.

    Args:
        available: bool ``[B, C]``: modalities that have a template (only those can be replaced).

    Returns:
        two bool ``[B, C]`` masks with ``m`` and ``n`` ``True`` entries, ``m != n`` whenever a sample has a
        replaceable modality, and never all ``C`` modalities replaced.
    """
    b, c = available.shape
    k = available.sum(1).clamp(max=c - 1)  # replaceable count per sample, leaving at least one real modality
    # two distinct counts in [0, k]: draw the first, then the second from the remaining k values
    u = torch.rand(b, 2, generator=generator, device=available.device)
    m = (u[:, 0] * (k + 1)).long()  # uniform in 0..k (u < 1 keeps u (k + 1) below k + 1)
    n = (u[:, 1] * k).long()  # uniform in 0..k - 1, then shifted past m: uniform over 0..k without m
    n = torch.where(n >= m, n + 1, n).clamp(max=k)  # the clamp only acts when k == 0 (m = n = 0)
    scores = torch.where(available, torch.rand(b, c, generator=generator, device=available.device), torch.inf)
    rank = scores.argsort(1).argsort(1)  # an unavailable modality ranks last
    return rank < m[:, None], rank < n[:, None]


def template_copies(
    x: torch.Tensor,
    templates: torch.Tensor,
    available: torch.Tensor,
    cube: int = 8,
    ratio: float = 0.875,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two augmented copies X', X'' of a batch ``x`` ``[B, C, *spatial]``.

    Args:
        x: input batch.
        templates: ``[B or 1, C, *spatial]`` template of each channel's modality, cropped/resized to the input.
        available: bool ``[C]`` or ``[B, C]``: channels whose modality has a template.
        cube, ratio: Algorithm 1 settings for the uni-modal case (C == 1).
    """
    b, c = x.shape[:2]
    avail = available.to(x.device).bool().expand(b, c)
    templates = templates.to(x.dtype).expand_as(x)
    if c == 1:  # uni-modal: mask from the template twice
        first, second = (  # unpacking draws exactly two masks
            cube_mask(x.shape[2:], b, cube, ratio, generator, x.device) & avail[:, :, None, None, None]
            for _ in range(2)
        )
        return cross_modal_mask(x, templates, first), cross_modal_mask(x, templates, second)
    first, second = replacement_masks(avail, generator)
    expand = (slice(None), slice(None)) + (None,) * (x.ndim - 2)
    return torch.where(first[expand], templates, x), torch.where(second[expand], templates, x)
