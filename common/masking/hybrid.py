"""M2-MAE hybrid mask pattern (HMP), paper III.B.1 and Fig. 5.

Masks are boolean tensors on the patch grid, ``[B, C, L]`` (batch, modality, patch position), ``True`` where a
patch is removed. The three steps are pure functions composed in the paper's order by :func:`hybrid_mask`:

1. modality mask: one whole modality per sample;
2. position mask: the same patch positions in every modality;
3. patch mask: at the positions left, patches of the remaining modalities masked *complementarily*, so at every
   position at least one modality stays visible and what one modality lost is seen in another.

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
    rank = scores.argsort(dim=-1).argsort(dim=-1)  # rank of each entry, 0 = lowest
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
    dropped = _rand((batch,), generator, device).mul(num_modalities).long().clamp_(max=num_modalities - 1)  # [B]
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

    At every position one available modality is drawn as the keeper and never masked; of the other available
    patches, ``round(ratio * n_available)`` per sample are masked (fewer if the keepers leave too few). So the
    patches a modality loses at a position remain visible in another modality there.

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
    keep_score = torch.where(available, noise, torch.full_like(noise, -1.0))
    keeper = torch.nn.functional.one_hot(keep_score.argmax(dim=1), c).permute(0, 2, 1).bool()  # [B, C, L]
    keeper &= available  # positions with nothing available have no keeper
    candidates = available & ~keeper
    k = (ratio * available.flatten(1).sum(1).float()).round().long()  # [B]
    scores = torch.where(
        candidates, _rand((b, c, n), generator, available.device), torch.full_like(noise, float("inf"))
    )
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
    four modalities and the defaults, 1/4 + 3/4 * 1/2 + 3/8 * 1/3 = 75% of all patches are masked, the MAE ratio
    the paper uses (Fig. 1).

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
    mask = torch.zeros(batch, num_modalities, num_patches, dtype=torch.bool, device=device)
    if use_modality_mask:
        mask |= modality_mask(batch, num_modalities, num_patches, generator, device)
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


def apply_mask(x: torch.Tensor, mask: torch.Tensor, patch_size: Sequence[int], fill: float = 0.0) -> torch.Tensor:
    """Replace the masked patches of ``x`` ``[B, C, *spatial]`` by ``fill`` (0 is the mean after normalisation)."""
    grid = [s // p for s, p in zip(x.shape[2:], patch_size)]
    vmask = mask_to_volume(mask, grid, patch_size)
    return x.masked_fill(vmask, fill)
