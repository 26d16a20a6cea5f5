"""UniFormer in 3D (Li et al., "UniFormer: Unifying Convolution and Self-attention for Visual Recognition").

MONAI has no UniFormer, so it is written here from its paper, in 3D, reusing MONAI's ``SABlock`` (global
multi-head self-attention, with PyTorch's fused attention when ``use_flash_attention``) and ``MLPBlock``:

* every block starts with a dynamic position embedding, a depth-wise 3x3x3 convolution added to its input
  (``DepthwiseConv3d``: ``nn.Conv3d`` with a faster CPU backward);
* stages 1-2 use *local* relation aggregators (CBlock): 1x1x1 conv, depth-wise 5x5x5 conv, 1x1x1 conv, with
  batch norm and a convolutional MLP;
* stages 3-4 use *global* ones (SABlock): layer norm, multi-head self-attention over all tokens, MLP;
* a strided convolution embeds patches before each stage (stride 4, then 2, 2, 2).

``layout`` chooses between two variants of the same architecture:

* ``"collection"`` (default): the above, with a group norm after each patch embedding and PyTorch's default layer
  norm epsilon (1e-5): the network this collection trains from scratch;
* ``"official"``: the layout of the BrainMVP authors' released UniFormer-S, so their weights run unchanged in maths
  (``tools/import_brainmvp_weights.py`` maps their checkpoints onto it): kernel-2, stride-2 patch embeddings in all
  four stages (features at 1/2, 1/4, 1/8, 1/16), each followed by a layer norm over the channels of every voxel,
  layer norm epsilon 1e-6 in the global blocks, and a batch norm on the deepest feature. Module names are the same
  as the collection's (``embeds``, ``stages``, plus ``norm``), so decoders and downstream bundles work with both.
  The authors' network permutes its input from (H, W, D) to (D, H, W) first; this one does not, the importer
  permutes their convolution kernels instead, so features come out in the same axis order as the input.

``UniFormer3D`` adds an up-sampling decoder (``UpDecoder``) to full resolution, with or without skips, for
BrainMVP's reconstruction pre-training and for segmentation downstream.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import MLPBlock, SABlock
from torch.utils.checkpoint import checkpoint

from common.networks.decoders import EncoderDecoder
from common.networks.depthwise import DepthwiseConv3d

__all__ = ["UniFormerEncoder", "UniFormer3D", "uniformer_small", "uniformer_tiny", "LAYOUTS"]

LAYOUTS = ("collection", "official")


def _check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown UniFormer layout {layout!r}; choose from {LAYOUTS}")
    return layout


class ChannelLayerNorm(nn.LayerNorm):
    """Layer norm over the channels of each voxel of a ``[B, C, *spatial]`` tensor (a token-wise layer norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class CBlock(nn.Module):
    """Local UniFormer block: DPE, local MHRA (depth-wise 5^3 conv between 1x1x1 convs), conv MLP.

    ``checkpoint_mlp`` recomputes the MLP's two 1x1x1 convolutions in the backward pass instead of keeping its
    hidden activations (two tensors of ``mlp_ratio`` x the block's width at the stage's full resolution): the same
    maths, much less memory at 1/2 and 1/4 resolution, about 13 % more compute (docs/BENCHMARKS.md). The MLP holds
    no state, so the recomputation is exact (the batch norms stay outside it: recomputing them would update their
    statistics twice).
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0, checkpoint_mlp: bool = False) -> None:
        super().__init__()
        self.checkpoint_mlp = checkpoint_mlp
        self.pos = DepthwiseConv3d(dim, 3)
        self.norm1 = nn.BatchNorm3d(dim)
        self.aggregate = nn.Sequential(nn.Conv3d(dim, dim, 1), DepthwiseConv3d(dim, 5), nn.Conv3d(dim, dim, 1))
        self.norm2 = nn.BatchNorm3d(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Conv3d(dim, hidden, 1), nn.GELU(), nn.Conv3d(hidden, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, D, H, W]
        x = x + self.pos(x)
        x = x + self.aggregate(self.norm1(x))
        y = self.norm2(x)
        if self.checkpoint_mlp and torch.is_grad_enabled():
            return x + checkpoint(self.mlp, y, use_reentrant=False)
        return x + self.mlp(y)


class SBlock(nn.Module):
    """Global UniFormer block: DPE, multi-head self-attention over all tokens, MLP (MONAI blocks)."""

    def __init__(
        self,
        dim: int,
        head_dim: int = 64,
        mlp_ratio: float = 4.0,
        fused_attention: bool = True,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.pos = DepthwiseConv3d(dim, 3)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SABlock(dim, max(1, dim // head_dim), qkv_bias=True, use_flash_attention=fused_attention)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, D, H, W]
        x = x + self.pos(x)
        b, c, *spatial = x.shape
        t = x.flatten(2).transpose(1, 2)  # [B, N, C]
        t = t + self.attn(self.norm1(t))
        t = t + self.mlp(self.norm2(t))
        return t.transpose(1, 2).reshape(b, c, *spatial)


class UniFormerEncoder(nn.Module):
    """Four stages (local, local, global, global) at 1/4, 1/8, 1/16 and 1/32 of the input resolution (``layout``
    ``"collection"``) or at 1/2, 1/4, 1/8 and 1/16 (``"official"``, the BrainMVP authors' layout: see the module
    docstring)."""

    def __init__(
        self,
        in_channels: int,
        dims: Sequence[int],
        depths: Sequence[int],
        head_dim: int = 64,
        mlp_ratio: float = 4.0,
        fused_attention: bool = True,
        layout: str = "collection",
        checkpoint_mlp: bool = False,
    ) -> None:
        super().__init__()
        self.layout = _check_layout(layout)
        official = layout == "official"
        eps = 1e-6 if official else 1e-5
        self.embeds = nn.ModuleList()
        self.stages = nn.ModuleList()
        prev = in_channels
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            stride = 2 if official or i > 0 else 4
            norm = ChannelLayerNorm(dim) if official else nn.GroupNorm(1, dim)
            self.embeds.append(nn.Sequential(nn.Conv3d(prev, dim, stride, stride=stride), norm))
            block = (
                (lambda: CBlock(dim, mlp_ratio, checkpoint_mlp))
                if i < 2
                else (lambda: SBlock(dim, head_dim, mlp_ratio, fused_attention, eps))
            )
            self.stages.append(nn.Sequential(*[block() for _ in range(depth)]))
            prev = dim
        # the authors' batch norm on the deepest feature; nothing (and no state-dict keys) in the collection layout
        self.norm = nn.BatchNorm3d(prev) if official else nn.Identity()

    @property
    def first_stride(self) -> int:
        """Down-sampling of the shallowest feature relative to the input."""
        return 2 if self.layout == "official" else 4

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for embed, stage in zip(self.embeds, self.stages):
            x = stage(embed(x))
            feats.append(x)
        feats[-1] = self.norm(feats[-1])
        return feats


class UniFormer3D(EncoderDecoder):
    """UniFormer encoder + up-sampling decoder; BrainMVP's default backbone.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        dims: channels of the four stages.
        depths: blocks per stage.
        head_dim: channels per attention head in stages 3-4.
        skip_connections: decoder skips (downstream) or none (pre-training).
        proj_dim: optional projection head for the contrastive embedding.
        fused_attention: PyTorch's fused scaled-dot-product attention (same maths as the explicit one).
        layout: ``"collection"`` (default) or ``"official"``, the BrainMVP authors' layout their released weights
            need (stride-2 stem, so the decoder's last up-sampling is 2 instead of 4; see the module docstring).
        checkpoint_mlp: recompute the MLPs of the local blocks (stages 1-2) in the backward pass instead of storing
            their hidden activations (see ``CBlock``): the same maths and weights, less memory, more compute.

    Example::

        >>> net = uniformer_tiny()
        >>> net(torch.randn(1, 1, 32, 32, 32)).shape
        torch.Size([1, 1, 32, 32, 32])
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        dims: Sequence[int] = (64, 128, 320, 512),
        depths: Sequence[int] = (3, 4, 8, 3),
        head_dim: int = 64,
        skip_connections: bool = True,
        proj_dim: int | None = None,
        fused_attention: bool = True,
        layout: str = "collection",
        checkpoint_mlp: bool = False,
    ) -> None:
        encoder = UniFormerEncoder(
            in_channels,
            dims,
            depths,
            head_dim,
            fused_attention=fused_attention,
            layout=layout,
            checkpoint_mlp=checkpoint_mlp,
        )
        super().__init__(encoder, dims, out_channels, skip_connections, encoder.first_stride, proj_dim)


def uniformer_small(in_channels: int = 1, out_channels: int = 1, **kwargs) -> UniFormer3D:
    """UniFormer-S widths and depths (64-128-320-512, 3-4-8-3); ``layout="official"`` for the authors' weights."""
    return UniFormer3D(in_channels, out_channels, (64, 128, 320, 512), (3, 4, 8, 3), **kwargs)


def uniformer_tiny(in_channels: int = 1, out_channels: int = 1, **kwargs) -> UniFormer3D:
    """A 1-1-1-1 block, 16-32-48-64 channel model for tests (``layout`` as in :func:`uniformer_small`)."""
    kwargs.setdefault("head_dim", 16)
    return UniFormer3D(in_channels, out_channels, (16, 32, 48, 64), (1, 1, 1, 1), **kwargs)
