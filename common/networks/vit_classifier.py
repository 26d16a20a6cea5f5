"""A ViT encoder with a linear classification head, for linear probing and fine-tuning of pre-trained encoders."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from common.networks.vit import unetr_vit

__all__ = ["ViTClassifier"]


class ViTClassifier(nn.Module):
    """MONAI ViT (stored as ``vit``, keys as in UNETR and M2MAE) + token mean pooling + a linear head.

    Why not ``ViT(classification=True)``: that adds a class token the pre-training never saw and a Tanh
    pre-logits layer; linear probing (paper III.C) trains a single linear layer on the frozen encoder's features.

    Args:
        in_channels, img_size, patch_size, hidden_size, mlp_dim, num_layers, num_heads, qkv_bias, dropout_rate:
            the encoder, as in :class:`~monai.networks.nets.ViT`.
        num_classes: outputs of the head (1 for a binary task with a sigmoid, K for softmax); 0 returns the
            pooled encoder features themselves (feature extraction).
        freeze_encoder: linear probe: the encoder has no gradients and stays in eval mode.
        fused_attention: PyTorch's fused scaled-dot-product attention (same maths, no attention matrix in memory).
        spatial_dims: 3 for volumes, 2 for images.

    Example::

        >>> net = ViTClassifier(4, 32, 16, hidden_size=48, mlp_dim=96, num_heads=4, num_classes=2)
        >>> net(torch.randn(2, 4, 32, 32, 32)).shape
        torch.Size([2, 2])
    """

    def __init__(
        self,
        in_channels: int,
        img_size: Sequence[int] | int,
        patch_size: Sequence[int] | int = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        num_classes: int = 2,
        qkv_bias: bool = False,
        dropout_rate: float = 0.0,
        freeze_encoder: bool = False,
        fused_attention: bool = True,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        self.vit = unetr_vit(
            in_channels, img_size, patch_size, hidden_size, mlp_dim, num_layers, num_heads,
            dropout_rate, qkv_bias, fused_attention, spatial_dims,
        )  # fmt: skip
        # features of a frozen encoder vary in scale: normalise before the probe
        self.norm = nn.LayerNorm(hidden_size) if num_classes > 0 else nn.Identity()
        self.head = nn.Linear(hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            self.vit.requires_grad_(False)

    def train(self, mode: bool = True) -> ViTClassifier:
        super().train(mode)
        if self.freeze_encoder:
            self.vit.eval()  # a probe never updates the encoder, dropout included
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Mean-pooled final tokens ``[B, hidden]`` (a frozen encoder builds no autograd graph: nothing in it
        requires gradients)."""
        tokens, _ = self.vit(x)  # [B, L, hidden]
        return tokens.mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.features(x)))
