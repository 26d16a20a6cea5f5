"""3D U-Net (Cicek et al., 2016) as an encoder-decoder whose skips can be switched off (BrainMVP backbone).

``layout`` (in :func:`unet3d` / :func:`unet3d_tiny`) chooses between two encoders:

* ``"collection"`` (default): ``UNet3DEncoder``, MONAI ``BasicUNet`` blocks (two 3x3x3 convolutions per level,
  max-pool between levels), features at full resolution then halved at each level: the network this collection
  trains from scratch;
* ``"official"``: ``UNet3DOfficialEncoder``, the encoder of the BrainMVP authors' pre-training UNet (their
  ``RecModel``, ``init_channels`` 32), with their module names (``conv1a``, ``conv1b``, ``ds1``, ... ``conv4d``),
  so the checkpoints they released load by name (``tools/import_brainmvp_weights.py``): pre-activation residual
  blocks (group norm, ReLU, 3x3x3 convolution, twice, plus the input) and stride-2 3x3x3 convolutions that halve
  the resolution and double the channels. Its features are at 1/2, 1/4 and 1/8 of the input. No input
  permutation: their kernels apply unchanged.

Both come with the same ``UpDecoder`` (``common.networks.decoders``), with or without skips; the authors'
pre-training decoder is not reproduced (no downstream bundle loads it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets.basic_unet import Down, TwoConv

from common.networks.decoders import EncoderDecoder

__all__ = [
    "UNet3DEncoder",
    "UNet3D",
    "OfficialBasicBlock",
    "UNet3DOfficialEncoder",
    "UNet3DOfficial",
    "unet3d",
    "unet3d_tiny",
    "LAYOUTS",
]

LAYOUTS = ("collection", "official")


class UNet3DEncoder(nn.Module):
    """Two 3x3x3 convolutions per level, max-pool between levels (MONAI ``BasicUNet`` blocks)."""

    def __init__(
        self,
        in_channels: int,
        features: Sequence[int],
        norm: str | tuple = ("instance", {"affine": True}),
        act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": False}),  # not on norm views: see decoders
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


class OfficialBasicBlock(nn.Module):
    """The authors' residual block (``BasicBlock``): ``x + conv2(relu(gn2(conv1(relu(gn1(x))))))``, channels kept.

    Args:
        channels: input = output channels (the only configuration their encoder uses).
        groups: group-norm groups (theirs: 8; ``channels`` must be divisible by it).
    """

    def __init__(self, channels: int, groups: int = 8) -> None:
        super().__init__()
        self.gn1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv3d(channels, channels, kernel_size=3, padding=1)
        self.gn2 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv3d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.gn1(x)))
        return x + self.conv2(F.relu(self.gn2(y)))


class UNet3DOfficialEncoder(nn.Module):
    """The BrainMVP authors' UNet encoder, with their module names (``layout="official"``).

    ``conv1a`` (3x3x3, ``in_channels`` -> c) and block ``conv1b`` at full resolution, then three stride-2 3x3x3
    convolutions ``ds1..3`` (c -> 2c -> 4c -> 8c) with blocks ``conv2a/b``, ``conv3a/b`` after the first two and
    ``conv4a..d`` after the last. Of their four features (``c1d``, ``c2d``, ``c3d``, ``c4d``) this returns
    ``[c1d, c2d, c4d]``: 2c, 4c and 8c channels at 1/2, 1/4 and 1/8 of the input (``c3d`` has the resolution of
    ``c4d``, which the blocks ``conv4a..d`` compute from it; their contrastive loss and decoder use ``c4d``).

    Args:
        in_channels: input channels.
        channels: c, their ``init_channels`` (32 in their pre-training; divisible by ``groups``).
        groups: group-norm groups of the blocks.
    """

    def __init__(self, in_channels: int = 1, channels: int = 32, groups: int = 8) -> None:
        super().__init__()
        c = channels
        self.conv1a = nn.Conv3d(in_channels, c, kernel_size=3, padding=1)
        self.conv1b = OfficialBasicBlock(c, groups)
        self.ds1 = nn.Conv3d(c, 2 * c, kernel_size=3, stride=2, padding=1)
        self.conv2a = OfficialBasicBlock(2 * c, groups)
        self.conv2b = OfficialBasicBlock(2 * c, groups)
        self.ds2 = nn.Conv3d(2 * c, 4 * c, kernel_size=3, stride=2, padding=1)
        self.conv3a = OfficialBasicBlock(4 * c, groups)
        self.conv3b = OfficialBasicBlock(4 * c, groups)
        self.ds3 = nn.Conv3d(4 * c, 8 * c, kernel_size=3, stride=2, padding=1)
        self.conv4a = OfficialBasicBlock(8 * c, groups)
        self.conv4b = OfficialBasicBlock(8 * c, groups)
        self.conv4c = OfficialBasicBlock(8 * c, groups)
        self.conv4d = OfficialBasicBlock(8 * c, groups)
        self.feature_channels = (2 * c, 4 * c, 8 * c)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1d = self.ds1(self.conv1b(self.conv1a(x)))  # 1/2
        c2d = self.ds2(self.conv2b(self.conv2a(c1d)))  # 1/4
        c3d = self.ds3(self.conv3b(self.conv3a(c2d)))  # 1/8
        c4d = self.conv4d(self.conv4c(self.conv4b(self.conv4a(c3d))))  # 1/8
        return [c1d, c2d, c4d]


class UNet3DOfficial(EncoderDecoder):
    """``UNet3DOfficialEncoder`` + this collection's ``UpDecoder`` (final up-sampling 2: the shallowest feature is
    at 1/2); the interface of :class:`UNet3D` (input edges must be divisible by 8).

    Args:
        in_channels, out_channels, skip_connections, proj_dim: as in :class:`UNet3D`.
        channels: c, the encoder's first width (features 2c, 4c, 8c).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: int = 32,
        skip_connections: bool = True,
        proj_dim: int | None = None,
    ) -> None:
        encoder = UNet3DOfficialEncoder(in_channels, channels)
        super().__init__(encoder, encoder.feature_channels, out_channels, skip_connections, 2, proj_dim)


def _check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown UNet3D layout {layout!r}; choose from {LAYOUTS}")
    return layout


def unet3d(
    in_channels: int = 1, out_channels: int = 1, layout: str = "collection", **kwargs
) -> UNet3D | UNet3DOfficial:
    """The paper-size 3D U-Net: 32-64-128-256-512 channels; ``layout="official"``: the authors' encoder, c = 32."""
    if _check_layout(layout) == "official":
        return UNet3DOfficial(in_channels, out_channels, 32, **kwargs)
    return UNet3D(in_channels, out_channels, (32, 64, 128, 256, 512), **kwargs)


def unet3d_tiny(
    in_channels: int = 1, out_channels: int = 1, layout: str = "collection", **kwargs
) -> UNet3D | UNet3DOfficial:
    """8-16-32-64 channels, for tests; ``layout="official"``: the authors' encoder with c = 8."""
    if _check_layout(layout) == "official":
        return UNet3DOfficial(in_channels, out_channels, 8, **kwargs)
    return UNet3D(in_channels, out_channels, (8, 16, 32, 64), **kwargs)
