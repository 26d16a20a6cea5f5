"""Start MONAI's 2D ViT from a Meta MAE or timm ViT checkpoint (e.g. ImageNet MAE ViT-B/16), given as a local file.

The two layouts hold the same transformer (pre-norm blocks, combined qkv with the same ``[3, heads, head_dim]``
row order, exact GELU, conv patch embedding), under other names:

===============================  ===========================================
timm / MAE                       MONAI ``ViT`` (``unetr_vit(spatial_dims=2)``)
===============================  ===========================================
``patch_embed.proj.{w,b}``       ``patch_embedding.patch_embeddings.{w,b}``
``pos_embed`` [1, 1 + N, D]      ``patch_embedding.position_embeddings`` [1, N, D]
``blocks.N.norm1/norm2``         ``blocks.N.norm1/norm2``
``blocks.N.attn.qkv.{w,b}``      ``blocks.N.attn.qkv.{w,b}`` (bias only with ``qkv_bias=True``)
``blocks.N.attn.proj``           ``blocks.N.attn.out_proj``
``blocks.N.mlp.fc1/fc2``         ``blocks.N.mlp.linear1/linear2``
``norm``                         ``norm``
===============================  ===========================================

Differences handled, each documented:

* **Class token.** timm/MAE prepend a learned class token; the UNETR-style ViT has none (downstream bundles pool
  the patch tokens). ``cls_token`` and its slot in ``pos_embed`` (the first) are dropped. The imported ViT is
  therefore the source network *without its class token*: its patch tokens equal a timm forward that never
  prepends one (tested), not a timm forward with it (the class token takes part in every attention).
* **qkv bias.** timm's ViT-B and MAE have one; MONAI's ViT only with ``qkv_bias=True``. A source bias with a
  bias-free target is refused (dropping it changes every output): build the network with ``qkv_bias=True``.
* **Grid.** If the source position grid differs from the target's (another image or patch-grid size), the
  positions are resized bicubically on their 2D grid (``align_corners=False``, as timm and MAE's fine-tuning code
  do). The patch size itself must match.
* **LayerNorm epsilon.** timm/MAE use ``eps=1e-6``, MONAI ``1e-5``; epsilon is not a weight, so the imported
  network keeps MONAI's (outputs differ by ~1e-5 relative; tested). ``blocks.N.norm_cross_attn.*`` of MONAI's
  blocks (unused without cross-attention) have no source and keep their initial values.
* Keys of the MAE pre-training decoder (``decoder_*``, ``mask_token``) and the classifier ``head.*`` are dropped.
  Any other source key without a counterpart, and any target key left without a source, stops the import with
  the full list.

Files are read with ``torch.load(weights_only=True)``; MAE's ``{"model": state_dict}`` and
``{"state_dict": ...}`` wrappers are unwrapped.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "DROPPED_KEYS",
    "timm_vit_key",
    "interpolate_position_embeddings",
    "convert_timm_vit_state_dict",
    "load_timm_vit",
]

# source keys without a MONAI counterpart that are dropped on purpose (regular expressions, full match)
DROPPED_KEYS: tuple[str, ...] = (r"cls_token", r"head\..*", r"mask_token", r"decoder_.*")

_RENAMES: tuple[tuple[str, str], ...] = (
    (r"patch_embed\.proj\.(weight|bias)", r"patch_embedding.patch_embeddings.\1"),
    (r"pos_embed", r"patch_embedding.position_embeddings"),
    (r"blocks\.(\d+)\.norm([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"blocks.\1.attn.qkv.\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"blocks.\1.attn.out_proj.\2"),
    (r"blocks\.(\d+)\.mlp\.fc1\.(weight|bias)", r"blocks.\1.mlp.linear1.\2"),
    (r"blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", r"blocks.\1.mlp.linear2.\2"),
    (r"norm\.(weight|bias)", r"norm.\1"),
)
# MONAI ViT keys no timm key feeds: unused LayerNorms of TransformerBlock's optional cross-attention
_UNFED_TARGET = re.compile(r"blocks\.\d+\.norm_cross_attn\.(weight|bias)")


def timm_vit_key(key: str) -> str | None:
    """The MONAI ViT key of a timm/MAE key, ``None`` if it has no counterpart.

    Example::

        >>> timm_vit_key("blocks.3.attn.proj.weight"), timm_vit_key("mlp.fc1.weight")
        ('blocks.3.attn.out_proj.weight', None)
    """
    for pattern, repl in _RENAMES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def interpolate_position_embeddings(
    pos: torch.Tensor, src_grid: Sequence[int], dst_grid: Sequence[int]
) -> torch.Tensor:
    """Resize patch position embeddings ``[1, h*w, D]`` from grid ``(h, w)`` to ``dst_grid``, bicubically in 2D.

    Args:
        pos: position embeddings of the patch tokens only (no class-token slot), row-major grid order.
        src_grid: ``(h, w)`` of ``pos``.
        dst_grid: ``(h', w')`` wanted.

    Returns:
        ``[1, h'*w', D]`` (``pos`` itself when the grids agree).
    """
    src_grid, dst_grid = tuple(src_grid), tuple(dst_grid)
    if src_grid == dst_grid:
        return pos
    d = pos.shape[-1]
    grid = pos.reshape(1, *src_grid, d).permute(0, 3, 1, 2).float()  # [1, D, h, w]
    grid = F.interpolate(grid, size=dst_grid, mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, dst_grid[0] * dst_grid[1], d).to(pos.dtype)  # [1, h'*w', D]


def _unwrap(state: Mapping) -> Mapping[str, torch.Tensor]:
    for key in ("model", "state_dict"):
        if key in state and isinstance(state[key], Mapping):
            return state[key]
    return state


def convert_timm_vit_state_dict(
    state: Mapping[str, torch.Tensor],
    target: nn.Module | Mapping[str, torch.Tensor],
    dropped: Sequence[str] = DROPPED_KEYS,
    source: str = "the checkpoint",
) -> dict[str, torch.Tensor]:
    """Map a timm/MAE ViT state dict onto a MONAI 2D ViT's keys, checked against ``target``'s keys and shapes.

    Args:
        state: timm/MAE state dict (or a ``{"model": ...}`` / ``{"state_dict": ...}`` wrapper).
        target: the MONAI ``ViT`` (or its state dict) to fill.
        dropped: regular expressions of source keys to drop (default :data:`DROPPED_KEYS`).
        source: name of the source in error messages (the file).

    Returns:
        a state dict that ``target.load_state_dict(..., strict=False)`` loads with only the unused
        ``norm_cross_attn`` keys missing.

    Raises:
        ValueError: naming every unmatched source key, unfed target key and shape mismatch at once.
    """
    state = _unwrap(state)
    target_state = target.state_dict() if isinstance(target, nn.Module) else target
    out: dict[str, torch.Tensor] = {}
    unmatched, problems = [], []
    for key, value in state.items():
        if any(re.fullmatch(p, key) for p in dropped):
            continue
        new = timm_vit_key(key)
        if new is None or new not in target_state:
            if new is not None and new.endswith("attn.qkv.bias"):
                problems.append(f"{key}: the source has a qkv bias, the target ViT none; build it with qkv_bias=True")
            else:
                unmatched.append(key)
            continue
        out[new] = value
    pos_key = "patch_embedding.position_embeddings"
    if pos_key in out:
        out[pos_key] = _fit_positions(out[pos_key], target_state[pos_key], prefix=1 if "cls_token" in state else 0)
    for key, value in out.items():
        if tuple(value.shape) != tuple(target_state[key].shape):
            problems.append(f"{key}: source {list(value.shape)} vs target {list(target_state[key].shape)}")
    unfed = [k for k in target_state if k not in out and not _UNFED_TARGET.fullmatch(k)]
    if unmatched or unfed or problems:
        lines = [f"cannot import {source} into the MONAI ViT:"]
        if unmatched:
            lines.append(f"  source keys without a MONAI counterpart ({len(unmatched)}): {unmatched}")
        if unfed:
            lines.append(f"  MONAI keys the source does not provide ({len(unfed)}): {unfed}")
        lines += [f"  {p}" for p in problems]
        raise ValueError("\n".join(lines))
    return out


def _fit_positions(pos: torch.Tensor, target: torch.Tensor, prefix: int) -> torch.Tensor:
    """Drop the class-token slot(s) and resize the patch grid to the target's (square grids in the source)."""
    pos = pos[:, prefix:]  # [1, N_src, D]: patch positions only
    n_src, n_dst = pos.shape[1], target.shape[1]
    side = math.isqrt(n_src)
    if side * side != n_src:
        raise ValueError(f"source position embeddings hold {n_src} patch positions, not a square grid")
    if n_src == n_dst:
        return pos
    dst_side = math.isqrt(n_dst)
    if dst_side * dst_side != n_dst:
        raise ValueError(f"target has {n_dst} patch positions, not a square grid: resize it by hand")
    return interpolate_position_embeddings(pos, (side, side), (dst_side, dst_side))


def load_timm_vit(vit: nn.Module, path: str | Path, dropped: Sequence[str] = DROPPED_KEYS) -> dict[str, list[str]]:
    """Load a local timm/MAE ViT checkpoint into a MONAI 2D ViT (e.g. ``MRM.vit``), in place.

    Args:
        vit: the MONAI ``ViT``.
        path: local ``.pth`` / ``.pt`` file (nothing is downloaded).
        dropped: see :func:`convert_timm_vit_state_dict`.

    Returns:
        ``{"loaded": [...], "kept_initial": [...]}``: the keys written and the unused ones left as they were.

    Example::

        >>> from common.networks.mrm import mrm_vit_base_patch16
        >>> net = mrm_vit_base_patch16(qkv_bias=True)
        >>> load_timm_vit(net.vit, "mae_pretrain_vit_base.pth")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ViT checkpoint {path} does not exist")
    try:
        # MAE's training checkpoints also pickle their argparse namespace ('args'): a plain attribute holder, the one
        # non-tensor type allowed beside weights_only's own
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise ValueError(
            f"cannot read ViT checkpoint {path} with weights_only=True: {str(e).splitlines()[0]}\n"
            "It pickles objects other than tensors, which are not unpickled here (they could run code): give a file "
            "that holds the state dict alone (or MAE's {'model': ..., 'args': ...})"
        ) from None
    if not isinstance(state, Mapping):
        raise ValueError(f"ViT checkpoint {path} holds a {type(state).__name__}, not a state dict")
    converted = convert_timm_vit_state_dict(state, vit, dropped, source=str(path))
    result = vit.load_state_dict(converted, strict=False)
    return {"loaded": sorted(converted), "kept_initial": sorted(result.missing_keys)}
