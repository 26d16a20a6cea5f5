"""MRM relation masking (Yang et al., ICCV 2023, section 3.2, Eq. 4 and 6).

MRM masks no input: it masks *relations*. In every row ``p`` of a softmax-normalised attention matrix ``R``
(self-attention, Eq. 3, or cross-attention, Eq. 5) the strongest entries are zeroed::

    R^M[p, q] = R[p, q]  if R[p, q] < r^p  else 0        # Eq. 4 (self), Eq. 6 (cross)

where ``r^p`` is "the intensity of the top-tau element among the p-th row". Read here as:

* **k, the rank of r^p.** A row of ``n`` entries is masked at ratio tau, so ``r^p`` is the ``k``-th largest
  entry with ``k = floor(tau * n + 1/2)`` (tau * n rounded half up: 147 of 196 image tokens at tau_I = 0.75,
  98 at tau_G = 0.5; 2 of 3 genome keys at 0.5). ``k = 0`` (tau * n < 1/2) masks nothing; tau = 1 masks all.
  Rounding rather than ceiling keeps ``k = tau * n`` exact when it is an integer (``ceil(0.1 * 30)`` is 4 in
  floating point) and is the nearest count to the stated ratio otherwise.
* **Ties.** Every entry *equal* to ``r^p`` is masked too ("at or above"): the paper notes that the masked
  elements "remove the semantic correspondence for all tokens with the same intensity". A row can therefore lose
  more than ``k`` entries, up to all of them when the row is constant.
* **No renormalisation.** The kept entries keep their softmax values, so a masked row sums to less than one
  (the paper feeds ``R^M V`` on directly). ``renormalize=True`` divides each row by its kept mass instead; a row
  with nothing kept stays zero.

Everything is batched over leading dims (``[B, heads, Lq, Lk]``); ``r^p`` comes from one ``torch.kthvalue`` over
the last dim (the k-th largest entry is the (n - k + 1)-th smallest), never a sort or a loop per row. The
threshold is a constant for autograd: gradients flow through the kept entries only.
"""

from __future__ import annotations

import math

import torch

__all__ = ["relation_topk_count", "relation_keep_mask", "relation_mask"]


def relation_topk_count(n: int, tau: float) -> int:
    """The rank ``k`` of the threshold ``r^p`` in a row of ``n`` entries: ``floor(tau * n + 1/2)``.

    Args:
        n: entries per row (number of keys).
        tau: masking ratio in [0, 1].

    Example::

        >>> relation_topk_count(196, 0.75), relation_topk_count(3, 0.5), relation_topk_count(4, 0.1)
        (147, 2, 0)
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"relation masking ratio tau must be in [0, 1], got {tau}")
    if n < 0:
        raise ValueError(f"a row needs a non-negative number of entries, got {n}")
    # the 1e-9 absorbs floating error in tau * n (0.15 * 10 = 1.4999999999999998 rounds to 2, as 1.5 does)
    return min(n, math.floor(tau * n + 0.5 + 1e-9))


def relation_keep_mask(attn: torch.Tensor, tau: float) -> torch.Tensor:
    """Boolean mask of the relations Eq. 4/6 keep: ``True`` where ``attn < r^p`` of its row.

    Args:
        attn: attention matrix ``[..., Lq, Lk]`` (rows over the last dim).
        tau: masking ratio in [0, 1], see :func:`relation_topk_count`.

    Returns:
        bool tensor of ``attn``'s shape.
    """
    n = attn.shape[-1]
    k = relation_topk_count(n, tau)
    if k == 0:
        return torch.ones_like(attn, dtype=torch.bool)
    # r^p: the k-th largest entry of row p = its (n - k + 1)-th smallest (kthvalue works on the last dim)
    r = torch.kthvalue(attn.detach(), n - k + 1, keepdim=True).values  # [..., Lq, 1]
    return attn < r


def relation_mask(attn: torch.Tensor, tau: float, renormalize: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """Relation masking: zero, in every row, the entries at or above that row's top-tau intensity.

    Args:
        attn: softmax-normalised attention ``[..., Lq, Lk]`` (``R_self`` of Eq. 3 or ``R_cross`` of Eq. 5).
        tau: masking ratio (paper: tau_I = 0.75 for image-query rows, tau_G = 0.5 for genome-query rows).
        renormalize: divide each masked row by its kept mass (not in the paper; off by default).
        eps: floor of the kept mass when renormalising.

    Returns:
        ``R^M`` of ``attn``'s shape.

    Example::

        >>> relation_mask(torch.tensor([[0.4, 0.3, 0.2, 0.1]]), tau=0.5)
        tensor([[0.0000, 0.0000, 0.2000, 0.1000]])
    """
    keep = relation_keep_mask(attn, tau)
    masked = torch.where(keep, attn, 0.0)  # R^M[p, q] = R[p, q] if R[p, q] < r^p else 0  # Eq. 4 / Eq. 6
    if renormalize:
        masked = masked / masked.sum(dim=-1, keepdim=True).clamp_min(eps)
    return masked
