"""GiMP: gene-induced multimodal pre-training (paper section 2.3) and its image-omic fine-tuning model.

Pre-training, per batch of patients (``GiMP.forward``)::

    window, M  = contiguous L-patch subsequence of each bag, 50 % of it masked     (common.masking.subsequence)
    tokens     = NystromAggregator(window with M replaced by the mask token)      [B, 1 + L, d]
    H_rec      = decoder(tokens[:, 1:])                                            [B, L, 1024]
    CLS_ge     = frozen GroupMSA(expression)                                       [B, d]
    CLS_pat    = concat(CLS_img = tokens[:, 0], CLS_ge)                            [B, 2d]
    loss_rec   = L1 on M (Eq. 3); loss_tri = triplet on CLS_pat (Eq. 4);  L_pre = loss_tri + loss_rec

Choices the paper leaves open (constructor arguments):

* ``mask_token="learned"``: masked embeddings are replaced by one learned 1024-d vector (SimMIM's mask token,
  here in the feature space the decoder reconstructs), initialised to zeros, so training starts exactly as
  "zeroed embeddings" (``mask_token="zeros"``) and may move away from it. Replacing in the input space keeps the
  aggregator itself identical in pre-training and fine-tuning.
* decoder: ``decoder_hidden=0`` (default) is one linear map per token ``d -> 1024`` (SimMIM's one-layer head:
  "lightweight", and the aggregator must do the work of inferring a patch from its neighbours); ``> 0`` gives a
  two-layer MLP with that hidden width.
* the triplet and the reconstruction settings are :func:`~common.losses.gimp.triplet_loss` and
  :func:`~common.losses.gimp.masked_l1_loss` arguments (mining ``"all"``, reduction ``"mean"``).
* ``gene_encoder=None`` runs the paper's image-only ablations ("Aggregator + MPM", "Aggregator + Triplet":
  triplets on ``CLS_img``); the trainer drops a term by weighting it 0.

GroupMSA is pre-trained supervised (``gimp_groupmsa``) and frozen: ``requires_grad`` is off, it runs under
``no_grad`` and stays in eval mode when the parent is put in train mode (dropout off).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from common.losses.gimp import masked_l1_loss, triplet_loss
from common.masking.subsequence import apply_patch_mask, random_patch_mask, take_subsequence
from common.networks.groupmsa import GroupMSA
from common.networks.nystrom import NystromAggregator

__all__ = ["GiMP", "GiMPClassifier", "lengths_to_mask", "gimp_base", "gimp_tiny"]


def lengths_to_mask(lengths: torch.Tensor | None, n: int, batch: int, device: torch.device) -> torch.Tensor | None:
    """``[B]`` bag sizes -> ``[B, n]`` prefix mask of real patches (``None`` stays ``None``)."""
    if lengths is None:
        return None
    lengths = torch.as_tensor(lengths, device=device).long()
    if lengths.shape != (batch,) or bool((lengths < 1).any()) or bool((lengths > n).any()):
        raise ValueError(f"lengths must be [B] = [{batch}] values in 1..{n}, got {lengths.tolist()}")
    return torch.arange(n, device=device)[None, :] < lengths[:, None]


class _FrozenGeneEncoder(nn.Module):
    """Holds an optional ``gene_encoder`` that can be frozen: no gradients, eval mode whatever ``train()`` says."""

    gene_encoder: GroupMSA | None
    freeze_gene_encoder: bool

    def _set_gene_encoder(self, gene_encoder: GroupMSA | None, freeze: bool) -> None:
        self.gene_encoder = gene_encoder
        self.freeze_gene_encoder = freeze and gene_encoder is not None
        if self.freeze_gene_encoder:
            gene_encoder.requires_grad_(False)
            gene_encoder.eval()

    def train(self, mode: bool = True) -> _FrozenGeneEncoder:
        super().train(mode)
        if self.freeze_gene_encoder:
            self.gene_encoder.eval()
        return self

    def encode_genes(self, expression: torch.Tensor) -> torch.Tensor:
        """``CLS_ge [B, d]`` (under ``no_grad`` when frozen)."""
        if expression is None:
            raise ValueError("this model has a gene encoder: pass the expression vectors [B, G]")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_gene_encoder):
            return self.gene_encoder(expression)

    def load_gene_encoder(self, state: Mapping[str, torch.Tensor], prefix: str = "encoder.") -> None:
        """Load the gene encoder from a ``GroupMSAClassifier`` state dict (keys ``encoder.*``; ``prefix=""`` for a
        bare ``GroupMSA``), strictly: a missing or unexpected key is an error that names the keys."""
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        missing = sorted(set(self.gene_encoder.state_dict()) - set(sub))
        unexpected = sorted(set(sub) - set(self.gene_encoder.state_dict()))
        if missing or unexpected:
            raise ValueError(f"gene encoder checkpoint does not fit (prefix {prefix!r}): missing {missing[:5]} "
                             f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})")  # fmt: skip
        self.gene_encoder.load_state_dict(sub)


class GiMP(_FrozenGeneEncoder):
    """GiMP pre-training network: masked patch modelling + gene-induced triplet learning.

    Args:
        aggregator: the WSI patch aggregator (:class:`~common.networks.nystrom.NystromAggregator`).
        gene_encoder: the (pre-trained) :class:`~common.networks.groupmsa.GroupMSA`, frozen here; ``None`` for
            the image-only ablations.
        subsequence_length: ``L`` (paper: 6,000).
        mask_ratio: fraction of the window masked (paper: 0.5).
        mask_token: ``"learned"`` or ``"zeros"`` (see the module docstring).
        margin: triplet threshold ``delta`` (paper: 0.8).
        mining: triplet mining, ``"all"`` or ``"hard"`` (:func:`~common.losses.gimp.triplet_loss`).
        rec_reduction: ``"mean"`` or ``"sum"`` (:func:`~common.losses.gimp.masked_l1_loss`).
        decoder_hidden: 0 for a linear decoder, else the hidden width of a two-layer MLP decoder.

    Example::

        >>> net = gimp_tiny(num_genes=40, in_features=16, subsequence_length=32)
        >>> out = net(torch.randn(4, 50, 16), torch.randn(4, 40), torch.tensor([0, 0, 1, 1]))
        >>> out["cls_pat"].shape, out["pred"].shape, int(out["mask"].sum())
        (torch.Size([4, 64]), torch.Size([4, 32, 16]), 64)
    """

    def __init__(
        self,
        aggregator: NystromAggregator,
        gene_encoder: GroupMSA | None = None,
        subsequence_length: int = 6000,
        mask_ratio: float = 0.5,
        mask_token: str = "learned",
        margin: float = 0.8,
        mining: str = "all",
        rec_reduction: str = "mean",
        decoder_hidden: int = 0,
    ) -> None:
        super().__init__()
        if mask_token not in ("learned", "zeros"):
            raise ValueError(f"mask_token must be 'learned' or 'zeros', got {mask_token!r}")
        if gene_encoder is not None and gene_encoder.hidden_size != aggregator.dim:
            raise ValueError(f"gene encoder width {gene_encoder.hidden_size} != aggregator width {aggregator.dim}")
        self.aggregator = aggregator
        self._set_gene_encoder(gene_encoder, freeze=True)
        self.subsequence_length = subsequence_length
        self.mask_ratio = mask_ratio
        self.margin = margin
        self.mining = mining
        self.rec_reduction = rec_reduction
        f, d = aggregator.in_features, aggregator.dim
        self.mask_token = nn.Parameter(torch.zeros(f)) if mask_token == "learned" else None
        if decoder_hidden > 0:
            self.decoder = nn.Sequential(nn.Linear(d, decoder_hidden), nn.GELU(), nn.Linear(decoder_hidden, f))
        else:
            self.decoder = nn.Linear(d, f)

    def random_masking(
        self, features: torch.Tensor, lengths: torch.Tensor | None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(window H_mpm [B, L, F], masked window [B, L, F], mask M [B, L], indices [B, L])``."""
        window, idx = take_subsequence(features, lengths, self.subsequence_length, generator)
        mask = random_patch_mask(window.shape[0], self.subsequence_length, self.mask_ratio, generator, window.device)
        return window, apply_patch_mask(window, mask, self.mask_token), mask, idx

    def forward_encoder(self, masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(CLS_img [B, d], patch tokens [B, L, d])`` of the masked window."""
        tokens = self.aggregator(masked)  # [B, 1 + L, d]
        return tokens[:, 0], tokens[:, 1:]

    def forward_embedding(self, cls_img: torch.Tensor, expression: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """``CLS_pat = concat(CLS_img, CLS_ge)`` (just ``CLS_img`` without a gene encoder)."""
        if self.gene_encoder is None:
            return {"cls_img": cls_img, "cls_pat": cls_img}
        cls_ge = self.encode_genes(expression)  # [B, d]
        return {"cls_img": cls_img, "cls_ge": cls_ge, "cls_pat": torch.cat([cls_img, cls_ge], dim=-1)}  # [B, 2d]

    def forward(
        self,
        features: torch.Tensor,
        expression: torch.Tensor | None,
        labels: torch.Tensor,
        lengths: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """One pre-training step's forward.

        Args:
            features: ``[B, N, F]`` patch features, bags right-padded to ``N``.
            expression: ``[B, G]`` (standardised) expression vectors (ignored without a gene encoder).
            labels: ``[B]`` patient-level class labels (the triplets' classes).
            lengths: ``[B]`` real patches per bag (``None``: all ``N``).
            generator: optional random generator for the window and the mask.

        Returns:
            ``loss_rec``, ``loss_tri``, ``num_triplets`` and, for inspection, ``cls_img``, ``cls_ge``, ``cls_pat``,
            ``pred`` (``H_rec``), ``target`` (``H_mpm``), ``mask`` (``M``), ``indices`` (the window's patches).
        """
        target, masked_input, mask, idx = self.random_masking(features, lengths, generator)
        cls_img, patch_tokens = self.forward_encoder(masked_input)
        pred = self.decoder(patch_tokens)  # H_rec: [B, L, F]
        out = self.forward_embedding(cls_img, expression)
        loss_tri, count = triplet_loss(out["cls_pat"], labels, self.margin, self.mining)  # Eq. 4
        out.update(
            loss_rec=masked_l1_loss(pred, target, mask, self.rec_reduction),  # Eq. 3
            loss_tri=loss_tri,
            num_triplets=count,
            pred=pred,
            target=target,
            mask=mask,
            indices=idx,
        )
        return out


class GiMPClassifier(_FrozenGeneEncoder):
    """Image-omic classifier: MLP head on ``CLS_pat`` (or on ``CLS_img`` alone for the WSI-only MIL baseline).

    ``P = softmax(MLP(CLS_pat))``; this returns the logits. The whole bag is aggregated (no window, no mask), so
    attribute names equal :class:`GiMP`'s and a pre-training checkpoint loads with ``strict=False`` (its decoder
    and mask token are left over). Memory is linear in the bag: the paper's largest bag (148,569 x 1024) with the
    paper-size networks (width 512, 60,480 genes) peaks at 4.3 GiB resident on CPU under ``inference_mode``
    (76 s on one core).

    Args:
        aggregator: the patch aggregator.
        gene_encoder: the GroupMSA; ``None`` selects the WSI-only variant (expression is then ignored).
        num_classes: number of classes; 0 gives no head, and ``forward`` returns the embedding ``CLS_pat``
            (feature extraction, as the pre-training bundle's inference writes it).
        head_hidden: hidden width of the MLP head (default: the aggregator width; 0 for a linear head).
        head_dropout: dropout before the last layer of the head.
        freeze_gene_encoder: keep GroupMSA frozen while fine-tuning (default, as in pre-training: it was trained
            on these labels already and the paper freezes it "during GiMP training").

    Example::

        >>> agg = NystromAggregator(in_features=16, dim=32, heads=4, num_landmarks=8)
        >>> clf = GiMPClassifier(agg, GroupMSA(40, 8, 2, hidden_size=32, num_heads=4), num_classes=3)
        >>> clf(torch.randn(2, 70, 16), torch.randn(2, 40), lengths=torch.tensor([70, 20])).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        aggregator: NystromAggregator,
        gene_encoder: GroupMSA | None = None,
        num_classes: int = 2,
        head_hidden: int | None = None,
        head_dropout: float = 0.0,
        freeze_gene_encoder: bool = True,
    ) -> None:
        super().__init__()
        if gene_encoder is not None and gene_encoder.hidden_size != aggregator.dim:
            raise ValueError(f"gene encoder width {gene_encoder.hidden_size} != aggregator width {aggregator.dim}")
        self.aggregator = aggregator
        self._set_gene_encoder(gene_encoder, freeze=freeze_gene_encoder)
        width = aggregator.dim * (1 if gene_encoder is None else 2)
        hidden = aggregator.dim if head_hidden is None else head_hidden
        if num_classes == 0:
            self.head = nn.Identity()
        elif hidden > 0:
            self.head = nn.Sequential(
                nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(head_dropout), nn.Linear(hidden, num_classes)
            )
        else:
            self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(width, num_classes))

    def embed(
        self, features: torch.Tensor, expression: torch.Tensor | None = None, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``CLS_pat [B, 2d]`` (``CLS_img [B, d]`` for the WSI-only variant) of whole bags."""
        mask = lengths_to_mask(lengths, features.shape[1], features.shape[0], features.device)
        cls_img = self.aggregator(features, mask)[:, 0]  # [B, d]
        if self.gene_encoder is None:
            return cls_img
        return torch.cat([cls_img, self.encode_genes(expression)], dim=-1)

    def forward(
        self, features: torch.Tensor, expression: torch.Tensor | None = None, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits ``[B, num_classes]`` of bags ``[B, N, F]`` (right-padded, ``lengths`` real patches each);
        ``CLS_pat [B, 2d]`` (or ``CLS_img [B, d]``) when ``num_classes == 0``."""
        return self.head(self.embed(features, expression, lengths))


def gimp_base(num_genes: int, in_features: int = 1024, **kwargs) -> GiMP:
    """Paper-scale GiMP: width 512 (TransMIL's aggregator), GroupMSA with 64-gene fragments in 32 groups."""
    aggregator = NystromAggregator(in_features=in_features, dim=512)
    return GiMP(aggregator, GroupMSA(num_genes, fragment_length=64, num_groups=32, hidden_size=512), **kwargs)


def gimp_tiny(num_genes: int, in_features: int = 1024, **kwargs) -> GiMP:
    """Width 32 for tests and smoke runs (4 heads, 8 landmarks; 8-gene fragments in 2 groups)."""
    aggregator = NystromAggregator(in_features=in_features, dim=32, heads=4, num_landmarks=8, dropout=0.0)
    gene_encoder = GroupMSA(num_genes, fragment_length=8, num_groups=2, hidden_size=32, num_heads=4)
    return GiMP(aggregator, gene_encoder, **kwargs)
