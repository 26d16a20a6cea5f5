"""GiMP pre-training losses (paper section 2.3): masked L1 reconstruction (Eq. 3) and the triplet loss (Eq. 4).

Both versions of the paper number these 3 and 4; ``L_pre = L_tri + L_rec`` follows Eq. 4 without a number. The
networks return ``loss_rec`` and ``loss_tri`` separately and the trainer weights and sums them (weights 1, 1).
"""

from __future__ import annotations

import torch

__all__ = ["masked_l1_loss", "pairwise_squared_distances", "triplet_loss"]


def masked_l1_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """L1 reconstruction on the masked patch embeddings only.

    ``L_rec = sum_j 1[j in M] ||h_j - h^_j||_1`` (Eq. 3), per sample.

    Args:
        pred: ``[B, L, D]`` reconstructed embeddings ``H_rec``.
        target: ``[B, L, D]`` original embeddings ``H_mpm``.
        mask: ``[B, L]`` bool, ``True`` for masked positions ``M``.
        reduction: ``"mean"`` (default): Eq. 3 divided by the number of masked entries (``|M| * D``), i.e. the
            mean absolute error over the masked entries of the batch; ``"sum"``: Eq. 3 as written, averaged over
            the batch. With ``L = 6000`` and ``D = 1024`` the sum is ~3 million times the mean, so
            ``L_tri + L_rec`` with the sum would leave the triplet term (margin 0.8) no weight at all, against
            the paper's ablation (Table 2) in which both terms matter; the mean keeps them of one order.

    Returns:
        scalar loss (0 when nothing is masked).

    Example::

        >>> pred, target = torch.zeros(1, 2, 2), torch.tensor([[[1.0, -3.0], [5.0, 5.0]]])
        >>> masked_l1_loss(pred, target, torch.tensor([[True, False]]), "sum").item()
        4.0
    """
    if pred.shape != target.shape or pred.ndim != 3 or mask.shape != pred.shape[:2]:
        raise ValueError(f"expected pred, target [B, L, D] and mask [B, L]; got {list(pred.shape)}, "
                         f"{list(target.shape)}, {list(mask.shape)}")  # fmt: skip
    per_position = (pred - target).abs().sum(-1)  # ||h_j - h^_j||_1: [B, L]
    masked = torch.where(mask, per_position, torch.zeros_like(per_position))
    per_sample = masked.sum(1)  # Eq. 3: [B]
    if reduction == "sum":
        return per_sample.mean()
    if reduction == "mean":
        return per_sample.sum() / (mask.sum() * pred.shape[-1]).clamp_min(1)
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def pairwise_squared_distances(x: torch.Tensor) -> torch.Tensor:
    """``D_ab = ||x_a - x_b||_2^2`` for rows of ``x [B, E]``, from differences (exact 0 on the diagonal)."""
    return (x[:, None, :] - x[None, :, :]).pow(2).sum(-1)  # [B, B]


def triplet_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.8, mining: str = "all"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gene-induced triplet loss on ``CLS_pat``, triplets mined from the batch's patient-level labels.

    ``L_tri = max(||x - x+||_2^2 + delta - ||x - x-||_2^2, 0)`` (Eq. 4), ``delta = 0.8``.

    Mining (the paper says only "a triplet list during the current iteration"):

    * ``"all"`` (default): every valid triplet of the batch -- anchor ``a``, positive ``p != a`` with the anchor's
      label, negative ``n`` with another label -- and the mean of Eq. 4 over all of them, including those already
      satisfied (a smooth loss that uses every pair; with the small batches a 6,000-patch window allows, hard
      mining would rest on one pair per anchor);
    * ``"hard"``: per anchor its farthest positive and nearest negative (batch-hard), mean over the anchors that
      have both.

    A batch without a valid triplet (one class only, or no class with two patients) gives a zero loss that is
    still connected to ``embeddings`` (zero gradients, no NaN, DDP sees every parameter used), and a count of 0.

    Args:
        embeddings: ``[B, E]`` patient embeddings (``CLS_pat``).
        labels: ``[B]`` integer class labels.
        margin: ``delta``.
        mining: ``"all"`` or ``"hard"``.

    Returns:
        ``(loss, count)``: the scalar loss and the number of triplets (``"all"``) or anchors (``"hard"``) it
        averages; ``count == 0`` flags a batch that had none.

    Example::

        >>> x = torch.tensor([[0.0], [1.0], [3.0]])
        >>> loss, count = triplet_loss(x, torch.tensor([0, 0, 1]), margin=0.8)
        >>> round(loss.item(), 4), int(count)  # (1 + .8 - 9)+ = 0 and (1 + .8 - 4)+ = 0
        (0.0, 2)
    """
    if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(f"expected embeddings [B, E] and labels [B], got {list(embeddings.shape)}, "
                         f"{list(labels.shape)}")  # fmt: skip
    dist = pairwise_squared_distances(embeddings)  # [B, B]
    labels = labels.to(embeddings.device)  # pragma: no mutate (device only)
    same = labels[:, None] == labels[None, :]  # [B, B]
    negative = ~same
    positive = same.fill_diagonal_(False)  # same label, not the anchor itself
    if mining == "all":
        hinge = (dist[:, :, None] + margin - dist[:, None, :]).clamp_min(0)  # Eq. 4 for (a, p, n): [B, B, B]
        valid = positive[:, :, None] & negative[:, None, :]
        count = valid.sum()
        total = torch.where(valid, hinge, torch.zeros_like(hinge)).sum()
    elif mining == "hard":
        hardest_pos = torch.where(positive, dist, torch.full_like(dist, -torch.inf)).amax(1)  # [B]
        hardest_neg = torch.where(negative, dist, torch.full_like(dist, torch.inf)).amin(1)  # [B]
        # an anchor with a positive has a negative exactly when the batch holds a second class
        valid = positive.any(1) & negative.any()
        count = valid.sum()
        hinge = (hardest_pos + margin - hardest_neg).clamp_min(0)  # Eq. 4 per anchor
        total = torch.where(valid, hinge, torch.zeros_like(hinge)).sum()
    else:
        raise ValueError(f"mining must be 'all' or 'hard', got {mining!r}")
    # total is 0, and built from embeddings, when count == 0; count is never 1 (a triplet (a, p, n) comes with
    # (p, a, n), and an anchor's positive is an anchor with the same negatives), so any floor in (0, 2] is the same
    denominator = count.clamp_min(1)  # pragma: no mutate (count is 0 or at least 2)
    return total / denominator, count
