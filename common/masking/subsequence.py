"""GiMP masked patch modelling inputs (paper section 2.3): a contiguous subsequence of a bag, half of it masked.

Pure functions on tensors, batched (no loop over bags or patches), each with an optional ``torch.Generator``:

1. :func:`subsequence_indices` -- which ``L`` patches of each bag: the contiguous run
   ``H_mpm = {h_j}_{j=i}^{i+L-1}`` with the start ``i`` drawn *uniformly* from ``0..n - L`` (every window of the bag
   equally likely; the paper says only "a fixed-length contiguous subsequence"). A bag shorter than ``L`` is
   *tiled*: patches ``0, 1, ..., n-1, 0, 1, ...`` cut at ``L`` ("duplicated to build mini batches"), so it keeps
   its order and every patch appears ``floor(L / n)`` or ``ceil(L / n)`` times; its start is always 0.
2. :func:`take_subsequence` -- gather those patches: ``[B, N, D] -> [B, L, D]``.
3. :func:`random_patch_mask` -- ``round(ratio * L)`` positions per sample (paper: 50 %), drawn independently per
   sample by the argsort of uniform noise (the set ``M`` of Eq. 3).
4. :func:`apply_patch_mask` -- the masked positions replaced by a mask token (learned, in the GiMP network) or by
   zeros. In a tiled short bag a masked patch may have a visible copy elsewhere in the window; the aggregator has
   no position encoding, so it cannot point at that copy, and nothing special is done about it.
"""

from __future__ import annotations

import torch

__all__ = ["subsequence_indices", "take_subsequence", "random_patch_mask", "apply_patch_mask"]


def subsequence_indices(
    lengths: torch.Tensor, length: int = 6000, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Indices of a contiguous window of ``length`` patches in each bag (tiled when the bag is shorter).

    Args:
        lengths: ``[B]`` number of patches ``n`` of each bag (at least 1).
        length: window length ``L`` (paper: 6,000).
        generator: optional random generator (on the device of ``lengths``).

    Returns:
        ``[B, L]`` long tensor ``(i + arange(L)) % n`` with ``i`` uniform in ``0..n - L`` (``i = 0`` when ``n < L``).

    Example::

        >>> subsequence_indices(torch.tensor([3]), length=7)
        tensor([[0, 1, 2, 0, 1, 2, 0]])
    """
    lengths = torch.as_tensor(lengths).long()
    if lengths.ndim != 1 or bool((lengths < 1).any()):
        raise ValueError(f"lengths must be a [B] tensor of positive bag sizes, got {lengths.tolist()}")
    if length < 1:
        raise ValueError(f"subsequence length must be positive, got {length}")
    slack = (lengths - length).clamp_min(0)  # n - L, or 0 for a short bag
    u = torch.empty_like(lengths, dtype=torch.float32).uniform_(generator=generator)  # torch.rand's U[0, 1) draw
    start = torch.minimum((u * (slack + 1)).long(), slack)  # uniform in 0..n - L
    offsets = torch.arange(length, device=lengths.device)  # pragma: no mutate (device only)
    return (start[:, None] + offsets[None, :]) % lengths[:, None]  # [B, L]


def take_subsequence(
    features: torch.Tensor,
    lengths: torch.Tensor | None = None,
    length: int = 6000,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather each bag's window: ``H_mpm``.

    Args:
        features: ``[B, N, D]`` patch features, each bag right-padded to ``N``.
        lengths: ``[B]`` real patches per bag (``None``: all ``N``).
        length: window length ``L``.
        generator: optional random generator.

    Returns:
        ``(window [B, L, D], indices [B, L])``.

    Example::

        >>> x = torch.arange(10.0).reshape(1, 10, 1)
        >>> window, idx = take_subsequence(x, length=4)
        >>> bool((window[0, :, 0] == idx[0].float()).all()), bool((idx.diff() == 1).all())
        (True, True)
    """
    if features.ndim != 3:
        raise ValueError(f"expected patch features [B, N, D], got {list(features.shape)}")
    b, n, d = features.shape
    if lengths is None:
        lengths = torch.full((b,), n)  # every bag whole
    lengths = torch.as_tensor(lengths, device=features.device).long()  # pragma: no mutate (device only)
    if lengths.shape != (b,) or bool((lengths > n).any()):
        raise ValueError(f"lengths must be [B] = [{b}] values in 1..{n}, got {lengths.tolist()}")
    idx = subsequence_indices(lengths, length, generator)  # [B, L]
    return features.gather(1, idx[..., None].expand(b, length, d)), idx


def random_patch_mask(
    batch: int,
    length: int,
    ratio: float = 0.5,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``round(ratio * L)`` masked positions per sample, independently per sample (argsort of noise).

    Args:
        batch: number of samples ``B``.
        length: window length ``L``.
        ratio: fraction masked (paper: 0.5), in [0, 1].
        generator: optional random generator.
        device: device of the mask.

    Returns:
        bool ``[B, L]``, ``True`` where masked (the set ``M``).

    Example::

        >>> random_patch_mask(2, 6, 0.5).sum(1).tolist()
        [3, 3]
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    k = round(ratio * length)
    rank = torch.rand(batch, length, generator=generator, device=device).argsort(1).argsort(1)  # [B, L]
    return rank < k


def apply_patch_mask(x: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor | None = None) -> torch.Tensor:
    """Replace masked patch embeddings by ``mask_token`` (``[D]``) or, when it is ``None``, by zeros.

    Args:
        x: ``[B, L, D]`` window.
        mask: ``[B, L]`` bool, ``True`` where masked.
        mask_token: ``[D]`` (or broadcastable to ``[B, L, D]``) replacement; ``None`` for zeros.

    Example::

        >>> apply_patch_mask(torch.ones(1, 2, 3), torch.tensor([[True, False]]))[0, :, 0].tolist()
        [0.0, 1.0]
    """
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask {list(mask.shape)} must match the first two dims of x {list(x.shape)}")
    fill = 0.0 if mask_token is None else mask_token.to(x.dtype)  # a Python 0.0 takes x's dtype and device
    return torch.where(mask[..., None], fill, x)
