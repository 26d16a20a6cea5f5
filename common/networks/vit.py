"""MONAI's ViT as UNETR builds it, and the fused-attention switch MONAI's ViT/UNETR do not expose.

Every ViT of the collection (M2-MAE pre-training, the ViT classifier, UNETR segmentation) is built by
:func:`unetr_vit`, so their ``vit.*`` state-dict keys and shapes are the same and a pre-trained encoder loads into
each downstream network with one ``CheckpointLoader``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn
from monai.networks.blocks import SABlock
from monai.networks.nets import UNETR, ViT

__all__ = ["fused_unetr", "set_fused_attention", "unetr_vit"]


def set_fused_attention(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch every MONAI ``SABlock`` in ``module`` between fused (``scaled_dot_product_attention``) and explicit
    attention: the same maths, without the attention matrix in memory. The block reads the flag at every forward."""
    for block in module.modules():
        if isinstance(block, SABlock):
            if enabled and (block.save_attn or block.rel_positional_embedding is not None):
                raise ValueError("fused attention cannot save attention maps or use relative position embeddings")
            block.use_flash_attention = enabled
    return module


def unetr_vit(
    in_channels: int,
    img_size: Sequence[int] | int,
    patch_size: Sequence[int] | int = 16,
    hidden_size: int = 768,
    mlp_dim: int = 3072,
    num_layers: int = 12,
    num_heads: int = 12,
    dropout_rate: float = 0.0,
    qkv_bias: bool = False,
    fused_attention: bool = True,
    spatial_dims: int = 3,
) -> ViT:
    """A :class:`~monai.networks.nets.ViT` with the arguments :class:`~monai.networks.nets.UNETR` passes to its own
    (convolutional patch embedding, learnable positions, no class token), so its keys match ``UNETR.vit``;
    ``spatial_dims=2`` for images (MRM and its downstream bundles), 3 for volumes."""
    vit = ViT(
        in_channels=in_channels,
        img_size=img_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        mlp_dim=mlp_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        proj_type="conv",
        classification=False,
        dropout_rate=dropout_rate,
        spatial_dims=spatial_dims,
        qkv_bias=qkv_bias,
    )
    return set_fused_attention(vit, fused_attention)


def fused_unetr(fused_attention: bool = True, **kwargs) -> UNETR:
    """MONAI's :class:`~monai.networks.nets.UNETR` (``kwargs`` as its own) with fused attention switched on or off."""
    return set_fused_attention(UNETR(**kwargs), fused_attention)
