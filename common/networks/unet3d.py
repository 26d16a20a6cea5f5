"""3D U-Net (Cicek et al., 2016) as an encoder-decoder whose skips can be switched off (BrainMVP backbone)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.nets.basic_unet import Down, TwoConv

from common.networks.decoders import EncoderDecoder

__all__ = ["UNet3DEncoder", "UNet3D", "unet3d", "unet3d_tiny"]


class UNet3DEncoder(nn.Module):
    """Two 3x3x3 convolutions per level, max-pool between levels (MONAI ``BasicUNet`` blocks)."""

    def __init__(
        self,
        in_channels: int,
        features: Sequence[int],
        norm: str | tuple = ("instance", {"affine": True}),
        act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
    ) -> None:
        super().__init__()
        self.stem = TwoConv(3, in_channels, features[0], act, norm, True)
        self.downs = nn.ModuleList(Down(3, a, b, act, norm, True) for a, b in zip(features[:-1], features[1:]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(x)]  # full resolution
        for down in self.downs:
            feats.append(down(feats[-1]))  # halves the resolution each level
        return feats


class UNet3D(EncoderDecoder):
    """3D U-Net with ``encoder`` / ``decoder`` parts; ``skip_connections=False`` for BrainMVP pre-training.

    Args:
        in_channels: input channels (1 in uni-modal pre-training; the modality count downstream).
        out_channels: output channels.
        features: channels per level, shallowest first (the input edge must be divisible by 2^(levels-1)).
        skip_connections: U-Net skips (downstream) or none (pre-training).
        proj_dim: optional projection head on the pooled deepest feature for the contrastive loss.

    Example::

        >>> net = unet3d_tiny()
        >>> net(torch.randn(1, 1, 32, 32, 32)).shape, net.embed(torch.randn(2, 1, 32, 32, 32)).shape
        (torch.Size([1, 1, 32, 32, 32]), torch.Size([2, 64]))
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        skip_connections: bool = True,
        proj_dim: int | None = None,
    ) -> None:
        super().__init__(UNet3DEncoder(in_channels, features), features, out_channels, skip_connections, 1, proj_dim)


def unet3d(in_channels: int = 1, out_channels: int = 1, **kwargs) -> UNet3D:
    """The paper-size 3D U-Net: 32-64-128-256-512 channels."""
    return UNet3D(in_channels, out_channels, (32, 64, 128, 256, 512), **kwargs)


def unet3d_tiny(in_channels: int = 1, out_channels: int = 1, **kwargs) -> UNet3D:
    """8-16-32-64 channels, for tests."""
    return UNet3D(in_channels, out_channels, (8, 16, 32, 64), **kwargs)
