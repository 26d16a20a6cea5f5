"""GroupMSA, the GiMP gene-expression encoder (paper section 2.1), and its supervised classifier.

``X_G [B, N_ge]`` -> ``N_f`` non-overlapping fragments of ``fragment_length`` genes -> linear projection
``H_f [B, N_f, d]`` -> ``N_gr`` groups of contiguous fragments, each with its own learnable group token ->
intra-group MSA (all groups at once: groups are a batch dimension) -> inter-group MSA over the group tokens and
``CLS_ge`` -> ``CLS_ge [B, d]``.

Choices the paper leaves open (each a constructor argument):

* ``fragment_length`` (default 64) and ``num_groups`` (default 32): the paper gives neither. For its 60,480 FPKM
  values, 64 genes per fragment give 945 fragments, and 32 groups ~30 fragments each, so the intra-group
  (31 tokens) and inter-group (33 tokens) attentions have similar sizes; the demo's few hundred genes need far
  smaller values (e.g. 8 and 4), set in the bundle config.
* the tail: ``N_ge`` is zero-padded to ``N_f * fragment_length`` (the last fragment's missing genes read as 0,
  the training mean after z-scoring); when ``N_f`` is not a multiple of ``N_gr`` the last group is completed with
  padding *tokens* that are masked out of the intra-group attention, so they never change a result.
* fragments are assigned to groups in table order (fragment ``i`` to group ``i // ceil(N_f / N_gr)``), so the
  gene order of the expression table (e.g. by chromosome position) decides which genes share a group.
* a learnable position embedding per fragment (``position_embedding=True``): the projection is shared by all
  fragments and self-attention is permutation-equivariant, so without it the encoder could not tell which genes
  a fragment holds. The paper's "tokenisation as in NLP" suggests it; it is not written.
* depths (``intra_layers`` = ``inter_layers`` = 1: "a vanilla MSA block" and "another MSA layer"), width 512
  (the aggregator's, so ``CLS_pat`` is ``2d``), 8 heads, MLP ratio 4: MONAI's pre-norm
  :class:`~monai.networks.blocks.TransformerBlock`, then a final LayerNorm on ``CLS_ge``. MONAI's block always
  holds a ``norm_cross_attn`` LayerNorm that is unused without cross-attention, so DDP needs
  ``find_unused_parameters=True`` (as the collection's other multi-GPU configs set) when GroupMSA is trained.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import TransformerBlock

__all__ = ["GroupMSA", "GroupMSAClassifier"]


class GroupMSA(nn.Module):
    """Group multi-head self-attention gene encoder: expression vector -> ``CLS_ge``.

    Args:
        num_genes: length ``N_ge`` of the expression vector (paper: 60,480).
        fragment_length: genes per fragment.
        num_groups: ``N_gr``, number of groups (each one learnable group token).
        hidden_size: token width ``d``.
        num_heads: attention heads in every MSA block.
        mlp_dim: feed-forward width of the blocks (default ``4 * hidden_size``).
        intra_layers: transformer blocks inside every group.
        inter_layers: transformer blocks over the group tokens and ``CLS_ge``.
        dropout_rate: dropout of the blocks.
        qkv_bias: bias in the q/k/v projections.
        position_embedding: add a learnable embedding per fragment (see the module docstring).

    Example::

        >>> enc = GroupMSA(num_genes=50, fragment_length=8, num_groups=3, hidden_size=16, num_heads=2)
        >>> enc.num_fragments, enc.group_size, enc(torch.randn(4, 50)).shape
        (7, 3, torch.Size([4, 16]))
    """

    def __init__(
        self,
        num_genes: int,
        fragment_length: int = 64,
        num_groups: int = 32,
        hidden_size: int = 512,
        num_heads: int = 8,
        mlp_dim: int | None = None,
        intra_layers: int = 1,
        inter_layers: int = 1,
        dropout_rate: float = 0.0,
        qkv_bias: bool = False,
        position_embedding: bool = True,
    ) -> None:
        super().__init__()
        if num_genes < 1 or fragment_length < 1 or num_groups < 1:
            raise ValueError(f"need positive num_genes, fragment_length, num_groups; got {num_genes}, "
                             f"{fragment_length}, {num_groups}")  # fmt: skip
        self.num_genes = num_genes
        self.fragment_length = fragment_length
        self.num_fragments = math.ceil(num_genes / fragment_length)  # N_f
        if num_groups > self.num_fragments:
            raise ValueError(f"num_groups {num_groups} exceeds the {self.num_fragments} fragments of {num_genes} "
                             f"genes at fragment_length {fragment_length}")  # fmt: skip
        self.num_groups = num_groups
        self.group_size = math.ceil(self.num_fragments / num_groups)  # fragments per group, N_f / N_gr rounded up
        self.hidden_size = hidden_size
        self.fragment_embed = nn.Linear(fragment_length, hidden_size)  # H_f = fragments W
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_fragments, hidden_size)) if position_embedding else None
        self.group_tokens = nn.Parameter(torch.zeros(1, num_groups, 1, hidden_size))  # one per group
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))  # CLS_ge
        block = dict(
            hidden_size=hidden_size, mlp_dim=mlp_dim or 4 * hidden_size, num_heads=num_heads,
            dropout_rate=dropout_rate, qkv_bias=qkv_bias,
        )  # fmt: skip
        # explicit (not fused) attention: the [B, N] key mask below is the shape MONAI's explicit path takes
        self.intra = nn.ModuleList([TransformerBlock(**block) for _ in range(intra_layers)])
        self.inter = nn.ModuleList([TransformerBlock(**block) for _ in range(inter_layers)])
        self.norm = nn.LayerNorm(hidden_size)
        for p in (self.pos_embed, self.group_tokens, self.cls_token):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)
        padded = torch.arange(num_groups * self.group_size) < self.num_fragments  # [N_gr * S]
        token_mask = torch.cat([torch.ones(num_groups, 1, dtype=torch.bool), padded.view(num_groups, -1)], 1)
        self.register_buffer("token_mask", token_mask, persistent=False)  # [N_gr, 1 + S]

    def fragments(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N_ge]`` -> fragment tokens ``H_f [B, N_f, d]`` (tail zero-padded, position embedding added)."""
        if x.ndim != 2 or x.shape[1] != self.num_genes:
            raise ValueError(f"expected expression vectors [B, {self.num_genes}], got {list(x.shape)}")
        x = F.pad(x, (0, self.num_fragments * self.fragment_length - self.num_genes))  # zero tail
        h = self.fragment_embed(x.view(x.shape[0], self.num_fragments, self.fragment_length))  # [B, N_f, d]
        return h if self.pos_embed is None else h + self.pos_embed

    def forward_groups(self, h: torch.Tensor) -> torch.Tensor:
        """Intra-group MSA: ``H_f [B, N_f, d]`` -> group tokens ``[B, N_gr, d]``."""
        b, _, d = h.shape
        g, s = self.num_groups, self.group_size
        h = F.pad(h, (0, 0, 0, g * s - self.num_fragments)).view(b, g, s, d)  # [B, N_gr, S, d]
        tokens = torch.cat([self.group_tokens.expand(b, -1, -1, -1), h], dim=2).flatten(0, 1)  # [B N_gr, 1 + S, d]
        mask = self.token_mask.repeat(b, 1)  # [B N_gr, 1 + S]
        for blk in self.intra:
            tokens = blk(tokens, attn_mask=mask)
        return tokens[:, 0].view(b, g, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode expression vectors ``[B, N_ge]`` into ``CLS_ge [B, d]``."""
        groups = self.forward_groups(self.fragments(x))  # [B, N_gr, d]
        tokens = torch.cat([self.cls_token.expand(groups.shape[0], -1, -1), groups], dim=1)  # [B, 1 + N_gr, d]
        for blk in self.inter:
            tokens = blk(tokens)
        return self.norm(tokens[:, 0])


class GroupMSAClassifier(nn.Module):
    """GroupMSA with a linear head on ``CLS_ge``, trained supervised on patient labels (``gimp_groupmsa``).

    Its ``encoder.*`` weights are what GiMP pre-training freezes (``GiMP.load_gene_encoder``).

    Args:
        num_classes: number of classes.
        kwargs: :class:`GroupMSA` arguments (``num_genes`` at least).

    Example::

        >>> clf = GroupMSAClassifier(num_classes=2, num_genes=50, fragment_length=8, num_groups=3,
        ...                          hidden_size=16, num_heads=2)
        >>> clf(torch.randn(4, 50)).shape
        torch.Size([4, 2])
    """

    def __init__(self, num_classes: int = 2, **kwargs) -> None:
        super().__init__()
        self.encoder = GroupMSA(**kwargs)
        self.head = nn.Linear(self.encoder.hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))  # logits [B, num_classes]
