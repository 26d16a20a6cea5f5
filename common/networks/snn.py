"""Genome encoder of MRM: a self-normalising network (SNN) tokeniser and self-attention blocks.

MRM (section 3.1, 4.2) encodes the genetics vector with an SNN (Klambauer et al., NeurIPS 2017) "with
self-attention blocks": relation masking needs attention rows over genome *tokens*, so the SNN turns the vector
``[B, G]`` into ``T`` tokens ``[B, T, D]`` that MONAI ``TransformerBlock`` s then attend over. The width ``D`` is
the image encoder's (768): the cross-modality attention, the token concatenation of the fused features and the
image-genome cosine relations (Eq. 11) all pair image and genome features of one width.

SNN layers are ``Linear -> SELU -> AlphaDropout`` with LeCun-normal weights (``N(0, 1 / fan_in)``) and zero
biases, the initialisation under which SELU activations keep zero mean and unit variance; the last layer is linear
(a token embedding, normalised by the transformer's pre-norms). Inputs are expected standardised per variant
(the genetics readers store the training-set statistics), as SNNs assume.

Tokenisation (``tokenizer``):

* ``"segments"`` (default): the vector is cut into ``T`` contiguous segments (variants in file order, i.e.
  along the genome for PLINK/VCF input; zero-padded to a multiple of ``T``), and each segment goes through *its
  own* SNN (block-diagonal weights, one batched ``einsum`` for all segments). A token is a genome region, as an
  image token is a patch, so relation masking masks region-region relations, which the paper motivates ("the
  disease-related patterns mainly lie in a minority of genome segments"). The first layer costs ``G x hidden``
  parameters in total, not per token: 100,000 SNPs with ``hidden_sizes=(64,)`` are 6.4 M weights.
* ``"dense"``: one SNN over the whole vector to ``T * D`` values, reshaped to ``T`` tokens: every token sees every
  variant (``G x hidden`` + ``hidden x T * D`` weights; 100,000 SNPs, hidden 256, T 16: 25.6 M + 3.1 M).

A shared SNN applied to every chunk (one weight set for all segments) is not offered: chunk ``t`` variant ``j``
and chunk ``u`` variant ``j`` are unrelated loci, so sharing their weights has no meaning for genotypes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import TransformerBlock

__all__ = ["lecun_normal_", "SNN", "SegmentLinear", "SegmentSNN", "GenomeEncoder", "num_segments_length"]


def lecun_normal_(tensor: torch.Tensor, fan_in: int | None = None) -> torch.Tensor:
    """Fill ``tensor`` in place from ``N(0, 1 / fan_in)`` (LeCun normal, the SNN initialisation).

    Args:
        tensor: weight, ``[out, in]`` for a linear layer (``fan_in = in``) or any shape with ``fan_in`` given.
        fan_in: inputs per output unit (default: ``tensor.shape[-1]``).
    """
    fan_in = tensor.shape[-1] if fan_in is None else fan_in
    with torch.no_grad():
        return tensor.normal_(0.0, 1.0 / math.sqrt(fan_in))


def num_segments_length(num_features: int, num_segments: int) -> int:
    """Variants per segment when ``num_features`` are cut into ``num_segments`` (the last one zero-padded)."""
    if num_segments < 1 or num_features < num_segments:
        raise ValueError(f"cannot cut {num_features} genetic features into {num_segments} segments")
    return math.ceil(num_features / num_segments)


class SNN(nn.Module):
    """Self-normalising MLP: ``(Linear -> SELU -> AlphaDropout)`` per hidden layer, then a linear output layer.

    Args:
        in_features: input width.
        hidden_sizes: widths of the SELU layers.
        out_features: output width.
        dropout_rate: AlphaDropout rate (keeps SELU's mean and variance; Klambauer et al. use 0.05-0.1).

    Example::

        >>> SNN(1000, (256,), 64)(torch.randn(4, 1000)).shape
        torch.Size([4, 64])
    """

    def __init__(
        self, in_features: int, hidden_sizes: Sequence[int], out_features: int, dropout_rate: float = 0.1
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        widths = [in_features, *hidden_sizes]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.SELU(), nn.AlphaDropout(dropout_rate)]
        layers.append(nn.Linear(widths[-1], out_features))
        self.layers = nn.Sequential(*layers)
        for m in self.layers:
            if isinstance(m, nn.Linear):
                lecun_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SegmentLinear(nn.Module):
    """``T`` independent linear maps, one per segment: ``[B, T, n_in] -> [B, T, n_out]`` in one ``einsum``.

    A block-diagonal ``nn.Linear`` without the zeros. LeCun-normal weights, zero biases.
    """

    def __init__(self, num_segments: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(lecun_normal_(torch.empty(num_segments, in_features, out_features), in_features))
        self.bias = nn.Parameter(torch.zeros(num_segments, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bti,tio->bto", x, self.weight) + self.bias  # [B, T, n_out]


class SegmentSNN(nn.Module):
    """An SNN per contiguous segment of the genetics vector, all segments batched: ``[B, G] -> [B, T, D]``.

    Args:
        num_features: G, variants in the vector.
        num_tokens: T, segments (tokens).
        hidden_sizes: SELU layer widths of each segment's SNN.
        out_features: D, token width.
        dropout_rate: AlphaDropout rate.
    """

    def __init__(
        self,
        num_features: int,
        num_tokens: int,
        hidden_sizes: Sequence[int],
        out_features: int,
        dropout_rate: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_features, self.num_tokens = num_features, num_tokens
        self.segment_length = num_segments_length(num_features, num_tokens)
        layers: list[nn.Module] = []
        widths = [self.segment_length, *hidden_sizes]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [SegmentLinear(num_tokens, a, b), nn.SELU(), nn.AlphaDropout(dropout_rate)]
        layers.append(SegmentLinear(num_tokens, widths[-1], out_features))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.num_tokens * self.segment_length - self.num_features
        x = nn.functional.pad(x, (0, pad))  # zero inputs add nothing to a linear layer
        return self.layers(x.reshape(x.shape[0], self.num_tokens, self.segment_length))  # [B, T, D]


class GenomeEncoder(nn.Module):
    """SNN tokeniser + learnable token positions + MONAI ``TransformerBlock`` s + final LayerNorm.

    Laid out like MONAI's ViT (``embed`` then ``blocks`` then ``norm``) so MRM runs both encoders block by block.

    Args:
        num_features: G, length of the genetics vector (SNPs, scores, ...; 100,000 SNPs is fine).
        hidden_size: D, token width (the image encoder's).
        num_tokens: T, genome tokens.
        num_layers: self-attention blocks (MRM masks the first two, so at least 2 for MRM).
        num_heads: attention heads.
        mlp_dim: MLP width of the blocks.
        snn_hidden: SELU layer widths of the tokeniser.
        tokenizer: ``"segments"`` or ``"dense"`` (module docstring).
        snn_dropout: AlphaDropout rate of the SNN.
        dropout_rate: dropout of the transformer blocks.
        qkv_bias: bias of the blocks' qkv projection.
        fused_attention: PyTorch's fused attention in the blocks (the masked branch bypasses it).

    Example::

        >>> enc = GenomeEncoder(1000, hidden_size=48, num_tokens=8, num_layers=2, num_heads=4, mlp_dim=96)
        >>> tokens, hidden = enc(torch.randn(2, 1000))
        >>> tokens.shape, len(hidden)
        (torch.Size([2, 8, 48]), 2)
    """

    def __init__(
        self,
        num_features: int,
        hidden_size: int = 768,
        num_tokens: int = 16,
        num_layers: int = 2,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        snn_hidden: Sequence[int] = (64,),
        tokenizer: str = "segments",
        snn_dropout: float = 0.1,
        dropout_rate: float = 0.0,
        qkv_bias: bool = False,
        fused_attention: bool = True,
    ) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"the genome encoder needs at least one genetic feature, got {num_features}")
        self.num_features, self.num_tokens, self.hidden_size = num_features, num_tokens, hidden_size
        self.tokenizer = tokenizer
        if tokenizer == "segments":
            self.snn: nn.Module = SegmentSNN(num_features, num_tokens, snn_hidden, hidden_size, snn_dropout)
        elif tokenizer == "dense":
            self.snn = SNN(num_features, snn_hidden, num_tokens * hidden_size, snn_dropout)
        else:
            raise ValueError(f"tokenizer must be 'segments' or 'dense', got {tokenizer!r}")
        self.position_embeddings = nn.Parameter(torch.zeros(1, num_tokens, hidden_size))
        nn.init.trunc_normal_(self.position_embeddings, std=0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                hidden_size, mlp_dim, num_heads, dropout_rate, qkv_bias, use_flash_attention=fused_attention
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Genetics ``[B, G]`` -> genome tokens before the first block ``[B, T, D]``."""
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"expected genetics [B, {self.num_features}], got {list(x.shape)}")
        tokens = self.snn(x).reshape(x.shape[0], self.num_tokens, self.hidden_size)  # [B, T, D]
        return tokens + self.position_embeddings

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Final normalised tokens ``[B, T, D]`` and every block's output (as MONAI's ViT returns them)."""
        h = self.embed(x)
        hidden = []
        for block in self.blocks:
            h = block(h)
            hidden.append(h)
        return self.norm(h), hidden
