"""M2-MAE hybrid mask pattern (HMP), paper III.B.1 and Fig. 5.

Masks are boolean tensors on the patch grid, ``[B, C, L]`` (batch, modality, patch position), ``True`` where a
patch is removed. The three steps are pure functions composed in the paper's order by :func:`hybrid_mask`:

1. modality mask: one whole modality per sample;
2. position mask: the same patch positions in every modality;
3. patch mask: at the positions left, patches of the remaining modalities masked *complementarily*, so at every
   position where two or more modalities are still visible at least one stays visible and what one modality lost
   is seen in another. Where a single modality is left at a position (two contrasts, such as the paper's lung
   1H + 129Xe, after the modality mask) there is no partner to complement it: the patch mask may remove it too,
   hiding that position in every modality. Without this rule the patch mask would mask nothing after the
   modality mask of a two-contrast study, and "modality + patch" would equal "modality" alone (Table III treats
   them as different strategies).

The position and patch ratios are this collection's choice: the paper gives none (its 75% is MAE's ratio, the
collapsing baseline of Fig. 1, not HMP's). With the modality mask on and C contrasts, the masked share of all
patches is ``1/C + (1 - 1/C) p_pos + (1 - 1/C)(1 - p_pos) p_patch``: 75% for C = 4 with the defaults
(p_pos = 1/2, p_patch = 1/3), 5/6 for C = 2.

Every sample draws its own masks (the public M2-MAE code draws the modality once per batch). All draws are
batched tensor ops (argsort of noise), never a Python loop over samples or patches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "modality_mask",
    "position_mask",
    "patch_mask",
    "hybrid_mask",
    "mask_to_volume",
    "apply_mask",
]


def _rand(shape: Sequence[int], generator: torch.Generator | None, device: torch.device | str | None) -> torch.Tensor:
    return torch.rand(*shape, generator=generator, device=device)


def _lowest_k(scores: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
    """Boolean mask of the ``k`` lowest ``scores`` along the last dim (per row ``k`` may differ); ``inf`` never picked."""
    # scores: [B, L]; k: int or [B]
    rank = scores.argsort().argsort()  # rank of each entry along the last dim, 0 = lowest
    k = torch.as_tensor(k, device=scores.device).reshape(-1, 1)
    return (rank < k) & torch.isfinite(scores)


def modality_mask(
    batch: int,
    num_modalities: int,
    num_patches: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Mask one randomly chosen modality entirely, independently for every sample.

    Args:
        batch: number of samples B.
        num_modalities: number of modalities (channels) C, at least 2 so that something stays visible.
        num_patches: number of patch positions L.
        generator: optional random generator for reproducible draws.
        device: device of the returned mask.

    Returns:
        bool tensor ``[B, C, L]``: ``mask[b, c]`` is all ``True`` for exactly one ``c`` per ``b``.
    """
    if num_modalities < 2:
        raise ValueError(f"the modality mask needs at least 2 modalities, got {num_modalities}")
    # u < 1 is at most 1 - 2^-24 (float32), and (1 - 2^-24) C rounds below C for every C < 2^24: floor(u C) <= C - 1
    dropped = _rand((batch,), generator, device).mul(num_modalities).long()  # [B]
    onehot = torch.nn.functional.one_hot(dropped, num_modalities).bool()  # [B, C]
    return onehot[:, :, None].expand(batch, num_modalities, num_patches).clone()


def position_mask(
    batch: int,
    num_modalities: int,
    num_patches: int,
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Mask ``round(ratio * L)`` random patch positions, the same positions in every modality.

    Args:
        batch: number of samples B.
        num_modalities: number of modalities C.
        num_patches: number of patch positions L.
        ratio: fraction of positions to mask, in [0, 1].
        generator: optional random generator.
        device: device of the returned mask.

    Returns:
        bool tensor ``[B, C, L]`` whose ``C`` rows are identical within a sample.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"position mask ratio must be in [0, 1], got {ratio}")
    k = round(ratio * num_patches)
    positions = _lowest_k(_rand((batch, num_patches), generator, device), k)  # [B, L]
    return positions[:, None, :].expand(batch, num_modalities, num_patches).clone()


def patch_mask(
    available: torch.Tensor,
    ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Complementary patch mask over the patches still ``available`` (not masked by the earlier steps).

    At every position where at least two modalities are available one of them is drawn as the keeper and never
    masked; of the other available patches (including those alone at their position), ``round(ratio *
    n_available)`` per sample are masked (fewer if the keepers leave too few, and never every available patch of
    a sample). So where a position has several modalities, the patches one of them loses remain visible in another.

    Args:
        available: bool ``[B, C, L]``, ``True`` where a patch is still visible.
        ratio: fraction of the available patches to mask, in [0, 1). At most ``(C' - 1) / C'`` can be reached
            where ``C'`` modalities are available at a position.
        generator: optional random generator.

    Returns:
        bool tensor ``[B, C, L]``, ``True`` only where ``available`` is ``True``.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"patch mask ratio must be in [0, 1), got {ratio}")
    b, c, n = available.shape
    noise = _rand((b, c, n), generator, available.device)
    keep_score = torch.where(available, noise, -torch.inf)  # an unavailable patch is never the keeper
    keeper = torch.nn.functional.one_hot(keep_score.argmax(dim=1), c).permute(0, 2, 1).bool()  # [B, C, L]
    keeper &= available & (available.sum(1, keepdim=True) >= 2)  # a lone patch has no partner to complement it
    candidates = available & ~keeper
    n_available = available.flatten(1).sum(1)  # [B]
    k = torch.minimum((ratio * n_available.float()).round().long(), (n_available - 1).clamp_min(0))  # keep >= 1 patch
    scores = torch.where(candidates, _rand((b, c, n), generator, available.device), torch.inf)
    return _lowest_k(scores.flatten(1), k).view(b, c, n)


def hybrid_mask(
    batch: int,
    num_modalities: int,
    num_patches: int,
    use_modality_mask: bool = True,
    position_ratio: float = 0.5,
    patch_ratio: float = 1.0 / 3.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Hybrid mask pattern: modality mask, then position mask, then patch mask (paper Fig. 5).

    The position mask draws from all positions; the patch mask draws from what the first two steps left. With
    four modalities and the defaults, 1/4 + 3/4 * 1/2 + 3/8 * 1/3 = 75% of all patches are masked; with two,
    1/2 + 1/4 + 1/12 = 5/6 (see the module docstring).

    Args:
        batch: number of samples B.
        num_modalities: number of modalities C.
        num_patches: number of patch positions L.
        use_modality_mask: apply step 1 (Table III ablates each step).
        position_ratio: fraction of positions masked in step 2 (0 disables it).
        patch_ratio: fraction of the still-visible patches masked in step 3 (0 disables it).
        generator: optional random generator.
        device: device of the returned mask.

    Returns:
        bool tensor ``[B, C, L]``, ``True`` where a patch is masked.
    """
    if use_modality_mask:
        mask = modality_mask(batch, num_modalities, num_patches, generator, device)
    else:
        mask = torch.zeros(batch, num_modalities, num_patches, dtype=torch.bool, device=device)
    if position_ratio > 0:
        mask |= position_mask(batch, num_modalities, num_patches, position_ratio, generator, device)
    if patch_ratio > 0:
        mask |= patch_mask(~mask, patch_ratio, generator)
    return mask


def mask_to_volume(mask: torch.Tensor, grid: Sequence[int], patch_size: Sequence[int]) -> torch.Tensor:
    """Expand a patch mask ``[B, C, L]`` to a voxel mask ``[B, C, *spatial]``.

    Args:
        mask: patch mask, ``L = prod(grid)`` in row-major order (the order of MONAI's patch embedding).
        grid: number of patches along each spatial dim.
        patch_size: voxels per patch along each spatial dim.
    """
    b, c, _ = mask.shape
    m = mask.view(b, c, *grid)
    for dim, p in enumerate(patch_size):
        m = m.repeat_interleave(p, dim=2 + dim)
    return m


def apply_mask(
    x: torch.Tensor, mask: torch.Tensor, patch_size: Sequence[int], fill: float | torch.Tensor = 0.0
) -> torch.Tensor:
    """Replace the masked patches of ``x`` ``[B, C, *spatial]`` by ``fill``: a number (0 is the mean after
    z-scoring, and so indistinguishable from background), or a ``[C, *patch_size]`` patch per modality (a learned
    mask token), tiled over the grid."""
    grid = [s // p for s, p in zip(x.shape[2:], patch_size)]
    vmask = mask_to_volume(mask, grid, patch_size)
    if not torch.is_tensor(fill):
        return x.masked_fill(vmask, fill)
    tiled = fill.to(x.dtype).repeat(1, *grid)  # [C, *spatial]: the token in every patch
    return torch.where(vmask, tiled[None], x)
