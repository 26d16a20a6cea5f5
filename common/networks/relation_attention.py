"""Relation-masked attention on the parameters of MONAI's attention blocks (MRM section 3.2, Eq. 3-6).

MONAI's :class:`~monai.networks.blocks.SABlock` and :class:`~monai.networks.blocks.CrossAttentionBlock` take no
mask on the *softmax-normalised* relation (SABlock's ``attn_mask`` is applied before the softmax, which
renormalises the kept entries; Eq. 4 zeroes entries after it). So the masked branch of MRM computes the attention
explicitly here, from the very modules of the intact branch: the same ``qkv`` / ``to_q``-``to_k``-``to_v``
linears, the same head split (``input_rearrange``), scale, dropout and ``out_proj``. The two branches therefore
share every weight, and with nothing masked (tau = 0) these functions return exactly what the block returns.

Where the cross-modality attention sits (Fig. 2, section 3.2 "after the self-modality self-attention layer"):
inside each of the first two transformer blocks of the masked branch, between the self-attention and the MLP,
with its own pre-norm and residual, i.e. the order of MONAI's ``TransformerBlock(with_cross_attention=True)``::

    x_I = x_I + SA_I^M(norm1(x_I))                  x_G = x_G + SA_G^M(norm1(x_G))         # Eq. 3-4
    x_I, x_G = x_I + CA_I^M(x_I, x_G), x_G + CA_G^M(x_G, x_I)    (both from the post-SA states)  # Eq. 5-6
    x_I = x_I + MLP_I(norm2(x_I))                   x_G = x_G + MLP_G(norm2(x_G))

:class:`CrossModalAttention` is that middle step: its own ``CrossAttentionBlock`` (image queries, genome keys and
values, or the reverse), a LayerNorm on the queries (as ``TransformerBlock.norm_cross_attn``) and one on the
context (the other modality's residual stream is not normalised otherwise).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.blocks import CrossAttentionBlock, SABlock, TransformerBlock

from common.masking.relation import relation_mask

__all__ = [
    "relation_masked_attention",
    "relation_self_attention",
    "relation_cross_attention",
    "relation_block_attention",
    "block_mlp",
    "CrossModalAttention",
]


def relation_masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tau: float,
    scale: float | None = None,
    renormalize: bool = False,
    dropout: nn.Module | None = None,
) -> torch.Tensor:
    """``R^M V`` with ``R = softmax(Q K^T * scale)`` masked row-wise at ratio ``tau``.

    Args:
        q: queries ``[B, heads, Lq, d]``.
        k: keys ``[B, heads, Lk, d]``.
        v: values ``[B, heads, Lk, d]``.
        tau: relation masking ratio (0 masks nothing), see :func:`common.masking.relation.relation_mask`.
        scale: logit scale, ``d ** -0.5`` by default (Eq. 3 writes ``1 / sqrt(d)`` with ``d`` the head width).
        renormalize: renormalise the kept relations (not in the paper).
        dropout: applied to the masked relation, as the blocks apply ``drop_weights``.

    Returns:
        ``[B, heads, Lq, d]``.

    Example::

        >>> q = k = v = torch.randn(2, 4, 5, 8)
        >>> relation_masked_attention(q, k, v, tau=0.75).shape
        torch.Size([2, 4, 5, 8])
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    attn = (torch.einsum("bhxd,bhyd->bhxy", q, k) * scale).softmax(dim=-1)  # R = Softmax(Q K^T / sqrt(d))  # Eq. 3/5
    attn = relation_mask(attn, tau, renormalize)  # [B, heads, Lq, Lk]
    if dropout is not None:
        attn = dropout(attn)
    return torch.einsum("bhxy,bhyd->bhxd", attn, v)  # z^S = R^M V  # [B, heads, Lq, d]


def _check_plain(block: nn.Module) -> None:
    """The explicit path supports the attention the ViTs of this collection use; refuse the other variants."""
    if block.rel_positional_embedding is not None or block.causal or block.attention_dtype is not None:
        raise ValueError(
            "relation masking supports neither relative position embeddings, causal attention nor attention_dtype"
        )


def relation_self_attention(block: SABlock, x: torch.Tensor, tau: float, renormalize: bool = False) -> torch.Tensor:
    """MONAI ``SABlock`` self-attention with relation masking (Eq. 3-4), on ``block``'s own parameters.

    Args:
        block: the intact branch's ``SABlock`` (combined ``qkv`` or separate ``to_q/to_k/to_v``).
        x: tokens ``[B, L, hidden]`` (already through the block's ``norm1``).
        tau: masking ratio; 0 gives ``block(x)`` itself.
        renormalize: see :func:`common.masking.relation.relation_mask`.

    Returns:
        ``[B, L, hidden]``, what ``block(x)`` returns with the masked relation in place of the softmax.
    """
    _check_plain(block)
    if block.use_combined_linear:
        q, k, v = block.input_rearrange(block.qkv(x))  # each [B, heads, L, d]
    else:
        q, k, v = (block.input_rearrange(f(x)) for f in (block.to_q, block.to_k, block.to_v))
    out = relation_masked_attention(q, k, v, tau, block.scale, renormalize, block.drop_weights)
    out = block.out_rearrange(out)  # [B, L, heads * d]
    if block.include_fc:
        out = block.out_proj(out)
    return block.drop_output(out)


def relation_cross_attention(
    block: CrossAttentionBlock, x: torch.Tensor, context: torch.Tensor, tau: float, renormalize: bool = False
) -> torch.Tensor:
    """MONAI ``CrossAttentionBlock`` with relation masking (Eq. 5-6): queries from ``x``, keys/values from ``context``.

    Args:
        block: the cross-attention block.
        x: query tokens ``[B, Lq, hidden]`` (e.g. image tokens z_I^S).
        context: key/value tokens ``[B, Lk, context_hidden]`` (e.g. genome tokens z_G^S).
        tau: masking ratio of the *query* modality's rows (tau_I for image queries, tau_G for genome queries).
        renormalize: see :func:`common.masking.relation.relation_mask`.

    Returns:
        ``[B, Lq, hidden]``.
    """
    _check_plain(block)
    q = block.input_rearrange(block.to_q(x))  # [B, heads, Lq, d]
    k = block.input_rearrange(block.to_k(context))  # [B, heads, Lk, d]
    v = block.input_rearrange(block.to_v(context))
    out = relation_masked_attention(q, k, v, tau, block.scale, renormalize, block.drop_weights)
    return block.drop_output(block.out_proj(block.out_rearrange(out)))  # [B, Lq, hidden]


def relation_block_attention(
    block: TransformerBlock, x: torch.Tensor, tau: float, renormalize: bool = False
) -> torch.Tensor:
    """The self-attention half of a MONAI ``TransformerBlock`` with relation masking: ``x + SA^M(norm1(x))``."""
    return x + relation_self_attention(block.attn, block.norm1(x), tau, renormalize)


def block_mlp(block: TransformerBlock, x: torch.Tensor) -> torch.Tensor:
    """The MLP half of a MONAI ``TransformerBlock``: ``x + MLP(norm2(x))``."""
    return x + block.mlp(block.norm2(x))


class CrossModalAttention(nn.Module):
    """Pre-norm residual cross-attention of one modality's tokens onto the other's, with optional relation masking.

    ``forward(x, context, tau)`` returns ``x + CA(norm(x), norm_context(context))``; with ``tau=None`` the block's
    own forward runs (fused ``scaled_dot_product_attention`` when ``use_flash_attention``), otherwise the explicit
    relation-masked attention on the same parameters.

    Args:
        hidden_size: width of the query tokens.
        num_heads: attention heads.
        context_size: width of the context tokens (``hidden_size`` by default).
        dropout_rate: attention and output dropout.
        qkv_bias: bias of the query/key/value projections.
        use_flash_attention: fused attention when unmasked.

    Example::

        >>> ca = CrossModalAttention(32, 4)
        >>> ca(torch.randn(2, 9, 32), torch.randn(2, 3, 32), tau=0.75).shape
        torch.Size([2, 9, 32])
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        context_size: int | None = None,
        dropout_rate: float = 0.0,
        qkv_bias: bool = False,
        use_flash_attention: bool = True,
    ) -> None:
        super().__init__()
        context_size = context_size or hidden_size
        self.norm = nn.LayerNorm(hidden_size)
        self.norm_context = nn.LayerNorm(context_size)
        self.attn = CrossAttentionBlock(
            hidden_size,
            num_heads,
            dropout_rate,
            context_input_size=context_size,
            qkv_bias=qkv_bias,
            use_flash_attention=use_flash_attention,
        )

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, tau: float | None = None, renormalize: bool = False
    ) -> torch.Tensor:
        q, c = self.norm(x), self.norm_context(context)
        if tau is None:
            return x + self.attn(q, context=c)
        return x + relation_cross_attention(self.attn, q, c, tau, renormalize)
