"""A convolutional up-sampling decoder shared by the 3D encoders, with optional skip connections.

BrainMVP pre-trains its encoder-decoders *without* skip connections (paper 3.1: the decoder must rebuild X_im
from the latent alone) and fine-tunes them *with* skips downstream; one class serves both, switched by ``skip``.
Built from MONAI's ``get_conv_layer`` (transposed convolutions), ``UnetResBlock`` and ``SubpixelUpsample``.

The last up-sampling (from the encoder's stem stride, e.g. UniFormer's 4, to the input resolution) differs:

* with skips (segmentation) a transposed convolution, a residual block at full resolution and a 1x1x1 head;
* without skips (pre-training) a *linear patch head*: one 1x1x1 convolution to ``out_channels * stride^3`` values
  per voxel, rearranged into ``stride^3`` patches (sub-pixel shuffle). The BrainMVP authors' pre-training decoder
  ends the same way (a transposed convolution then a 1x1x1 convolution, with no non-linearity between them: one
  linear map per patch). A residual block at 96^3 with 64 channels would cost ~86 % of a pre-training step's
  FLOPs and most of its memory (docs/BENCHMARKS.md) for a reconstruction the paper uses as a pretext only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import SubpixelUpsample, UnetResBlock
from monai.networks.blocks.dynunet_block import get_conv_layer

__all__ = ["UpDecoder", "EncoderDecoder", "linear_patch_head"]


# MONAI's default activation, not in place: instance norm returns a view, and an in-place activation on a view
# makes autograd copy it back (CopySlices); out of place the UNet3D step measured 4 % faster on CPU, same maths
_ACT = ("leakyrelu", {"inplace": False, "negative_slope": 0.01})


class UpDecoder(nn.Module):
    """Decode encoder features (shallow -> deep) back to the input resolution.

    Args:
        feature_channels: channels of the encoder features, shallowest first.
        out_channels: output channels (1 for reconstruction, classes for segmentation).
        skip: concatenate each encoder feature on the way up (U-Net) or not (pre-training).
        final_stride: up-sampling from the shallowest feature to the input (UniFormer's stem: 4; U-Net: 1); with
            skips a transposed convolution and a full-resolution residual block, without them the linear patch
            head (see the module docstring).
        norm_name: normalisation of the residual blocks.
    """

    def __init__(
        self,
        feature_channels: Sequence[int],
        out_channels: int,
        skip: bool,
        final_stride: int = 1,
        norm_name: str | tuple = "instance",
    ) -> None:
        super().__init__()
        chans = list(feature_channels)
        self.skip = skip
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for deep, shallow in zip(chans[:0:-1], chans[-2::-1]):
            self.ups.append(
                get_conv_layer(3, deep, shallow, kernel_size=2, stride=2, conv_only=True, is_transposed=True)
            )
            self.blocks.append(UnetResBlock(3, shallow * (2 if skip else 1), shallow, 3, 1, norm_name, _ACT))
        full_resolution_block = skip and final_stride > 1
        self.final_up = (
            get_conv_layer(
                3, chans[0], chans[0], kernel_size=final_stride, stride=final_stride, conv_only=True, is_transposed=True
            )
            if full_resolution_block
            else nn.Identity()
        )
        self.final_block = (
            UnetResBlock(3, chans[0], chans[0], 3, 1, norm_name, _ACT) if full_resolution_block else nn.Identity()
        )
        self.head = (
            nn.Conv3d(chans[0], out_channels, kernel_size=1)
            if full_resolution_block or final_stride == 1
            else linear_patch_head(chans[0], out_channels, final_stride)
        )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for up, block, skip_feature in zip(self.ups, self.blocks, list(features)[-2::-1]):
            x = up(x)
            x = block(torch.cat([x, skip_feature], dim=1) if self.skip else x)
        return self.head(self.final_block(self.final_up(x)))


def linear_patch_head(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """A 1x1x1 convolution to ``out_channels * stride^3`` values per voxel, shuffled into ``stride^3`` patches:
    ``[B, in, *S] -> [B, out, *(S * stride)]`` (MONAI's ``SubpixelUpsample`` without its smoothing pool)."""
    conv = nn.Conv3d(in_channels, out_channels * stride**3, kernel_size=1)
    return SubpixelUpsample(3, in_channels, out_channels, stride, conv_block=conv, apply_pad_pool=False)


class EncoderDecoder(nn.Module):
    """An ``encoder`` (returning features shallowest first), an ``UpDecoder`` and an optional projection head.

    The shared shape of BrainMVP's backbones: ``encode`` / ``decode`` for the template-consistency trainer,
    ``pool`` / ``embed`` for the contrastive loss, ``encoder.*`` keys for downstream loading.

    Args:
        encoder: module mapping an image to a list of feature maps.
        feature_channels: channels of those features, shallowest first.
        out_channels: decoder output channels.
        skip_connections: decoder skips (downstream) or none (pre-training).
        final_stride: up-sampling from the shallowest feature to the input.
        proj_dim: optional 2-layer projection head on the pooled deepest feature.
    """

    def __init__(
        self,
        encoder: nn.Module,
        feature_channels: Sequence[int],
        out_channels: int,
        skip_connections: bool,
        final_stride: int = 1,
        proj_dim: int | None = None,
    ) -> None:
        super().__init__()
        deepest = feature_channels[-1]
        self.encoder = encoder
        self.decoder = UpDecoder(feature_channels, out_channels, skip=skip_connections, final_stride=final_stride)
        self.projection = (
            nn.Sequential(nn.Linear(deepest, deepest), nn.ReLU(inplace=True), nn.Linear(deepest, proj_dim))
            if proj_dim
            else nn.Identity()
        )
        self.embed_dim = proj_dim or deepest

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(x)

    def pool(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Global-average-pooled deepest feature (through the projection head if any): ``[B, embed_dim]``."""
        return self.projection(features[-1].mean(dim=(2, 3, 4)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.encode(x))

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.decoder(features)

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The decoder output, or with ``return_features`` also the deepest encoder feature (the consistency loss of
        template fine-tuning reads it: one call through a DDP wrapper gives both, and synchronised gradients)."""
        features = self.encode(x)
        out = self.decode(features)
        return (out, features[-1]) if return_features else out
