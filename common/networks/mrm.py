"""MRM: masked relation modelling of images with genetics (Yang et al., ICCV 2023, section 3, Fig. 2).

Two branches share every parameter. The **intact** branch is the plain image ViT and the plain genome encoder
(fused attention throughout, no cross-modality attention: the downstream encoder is this ViT alone). The
**masked** branch runs the same encoders from the same token embeddings, but in its first ``masked_blocks`` (2)
blocks the self-attention relations are masked row-wise (Eq. 3-4, tau_I = 0.75 image, tau_G = 0.5 genome), and
each of those blocks then lets each modality attend to the other with masked cross-attention relations (Eq. 5-6;
see :mod:`common.networks.relation_attention` for the layout); later blocks are the fused intact blocks.

The fused features are token concatenations along the sequence, ``z_I^F = [z_I,M ; z_G]`` (``L + T`` tokens) and
``z_G^F = [z_G,M ; z_I]`` (``T + L`` tokens), each a masked branch's final tokens followed by the *other* modality's
intact ones. The image decoder h_I (MAE-style: linear embedding, a few transformer blocks, a linear patch head)
reconstructs the pixels of every patch from the outputs at the image positions; the genome decoder h_G (the same
design, smaller) reconstructs the genetics vector, each genome token its segment (Eq. 7). Nothing of the input is
masked, so the reconstruction loss runs over all patches and all variants.

Relation matching (Eq. 8-13) compares cosine relations between samples of the intact and of the masked branch,
each sample pooled to the mean of its final (normalised) tokens, over ``match_samples`` samples drawn per batch.

Single-modality mode (section 4.6): ``num_genetic_features=None``: no genome encoder, decoder, cross-attention or
cross matching is built; the image decoder reads ``z_I,M`` alone, and only image self-matching remains.

The network returns its loss terms by name (``loss_rec_image``, ``loss_rec_genome``, ``loss_match_self``,
``loss_match_cross``); :func:`common.losses.mrm.mrm_loss_weights` gives the weights under which the trainer's
weighted sum is Eq. 14. The image encoder is ``self.vit``, built by :func:`common.networks.vit.unetr_vit` with
``spatial_dims=2``, so its ``vit.*`` keys load into ``UNETR(spatial_dims=2).vit`` and into
``ViTClassifier(spatial_dims=2).vit`` with none missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import TransformerBlock
from monai.utils import ensure_tuple_rep

from common.losses.mrm import (
    cross_matching_loss,
    draw_match_samples,
    reconstruction_loss,
    self_matching_loss,
)
from common.networks.relation_attention import CrossModalAttention, block_mlp, relation_block_attention
from common.networks.snn import GenomeEncoder, SegmentLinear, num_segments_length
from common.networks.vit import unetr_vit

__all__ = [
    "MRM",
    "FusionDecoder",
    "parameter_groups",
    "mrm_vit_base_patch16",
    "mrm_tiny",
    "mrm_step_parts",
    "mrm_step_benchmark",
]


class FusionDecoder(nn.Module):
    """MAE-style decoder over a fused token sequence ``[own tokens ; other modality's tokens]``.

    One linear embedding of the concatenated sequence, learnable embeddings per position (own positions, then
    one per context token: they tell the two modalities apart), MONAI ``TransformerBlock`` s, a LayerNorm and a
    per-token ``head`` on the own positions only.

    Args:
        hidden_size: width of the encoder tokens.
        num_tokens: own tokens (image patches L, or genome tokens T).
        num_context_tokens: tokens of the other modality appended (0: none, single-modality mode).
        head: maps ``[B, num_tokens, decoder_size]`` to the per-token reconstruction.
        decoder_size, num_layers, num_heads: decoder width, blocks and heads (MLP 4x the width).
        fused_attention: PyTorch's fused attention in the blocks.
    """

    def __init__(
        self,
        hidden_size: int,
        num_tokens: int,
        num_context_tokens: int,
        head: nn.Module,
        decoder_size: int,
        num_layers: int,
        num_heads: int,
        fused_attention: bool = True,
    ) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.embed = nn.Linear(hidden_size, decoder_size)
        self.position_embeddings = nn.Parameter(torch.zeros(1, num_tokens + num_context_tokens, decoder_size))
        nn.init.trunc_normal_(self.position_embeddings, std=0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(decoder_size, 4 * decoder_size, num_heads, use_flash_attention=fused_attention)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(decoder_size)
        self.head = head

    def forward(self, tokens: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """``tokens`` ``[B, N, D]`` (and ``context`` ``[B, N', D]``) -> per-token reconstruction ``[B, N, out]``."""
        fused = tokens if context is None else torch.cat([tokens, context], dim=1)  # concat[z_M ; z]  # [B, N+N', D]
        if fused.shape[1] != self.position_embeddings.shape[1]:
            raise ValueError(f"decoder built for {self.position_embeddings.shape[1]} tokens, got {fused.shape[1]}")
        x = self.embed(fused) + self.position_embeddings  # [B, N+N', decoder_size]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, : self.num_tokens]))  # [B, N, out]


class MRM(nn.Module):
    """Masked relation modelling: ViT image encoder + SNN genome encoder, relation masking and matching.

    Args:
        num_genetic_features: length G of the genetics vector; ``None`` (or 0) builds the single-modality model.
        in_channels, img_size, patch_size: image input (RGB 224x224, patch 16 by default).
        hidden_size, mlp_dim, num_layers, num_heads, qkv_bias, dropout_rate: the ViT (ViT-B/16 by default;
            ``qkv_bias=True`` to start from MAE/timm weights, see :mod:`common.networks.vit_import`); the genome
            blocks and cross-attention use the same width and heads.
        genome_tokens, genome_layers, genome_mlp_dim, snn_hidden, tokenizer, snn_dropout: the genome encoder,
            see :class:`common.networks.snn.GenomeEncoder` (``genome_layers >= masked_blocks``).
        tau_image, tau_genome: relation masking ratios of image-query and genome-query rows (paper 0.75, 0.5).
        masked_blocks: leading blocks of each encoder with relation masking and cross-attention (paper: 2).
        renormalize: renormalise masked relation rows (not in the paper).
        decoder_size, decoder_layers, decoder_heads: image decoder h_I.
        genome_decoder_size, genome_decoder_layers, genome_decoder_heads: genome decoder h_G.
        match_samples: samples drawn per batch for relation matching (paper: 8; ``None`` all).
        norm_pix_loss: reconstruct per-patch normalised pixels (MAE's option) instead of the input pixels.
        fused_attention: fused attention wherever nothing is masked (same maths, less memory).

    Example::

        >>> net = mrm_tiny(num_genetic_features=100)
        >>> out = net(torch.randn(2, 3, 32, 32), torch.randn(2, 100))
        >>> out["pred"].shape, out["pred_genetics"].shape, sorted(k for k in out if k.startswith("loss_"))
        (torch.Size([2, 3, 32, 32]), torch.Size([2, 100]), ['loss_match_cross', 'loss_match_self', \
'loss_rec_genome', 'loss_rec_image'])
    """

    def __init__(
        self,
        num_genetic_features: int | None = 1000,
        in_channels: int = 3,
        img_size: Sequence[int] | int = 224,
        patch_size: Sequence[int] | int = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        qkv_bias: bool = False,
        dropout_rate: float = 0.0,
        genome_tokens: int = 16,
        genome_layers: int = 2,
        genome_mlp_dim: int | None = None,
        snn_hidden: Sequence[int] = (64,),
        tokenizer: str = "segments",
        snn_dropout: float = 0.1,
        tau_image: float = 0.75,
        tau_genome: float = 0.5,
        masked_blocks: int = 2,
        renormalize: bool = False,
        decoder_size: int = 512,
        decoder_layers: int = 4,
        decoder_heads: int = 16,
        genome_decoder_size: int = 256,
        genome_decoder_layers: int = 1,
        genome_decoder_heads: int = 8,
        match_samples: int | None = 8,
        norm_pix_loss: bool = False,
        fused_attention: bool = True,
    ) -> None:
        super().__init__()
        self.img_size = ensure_tuple_rep(img_size, 2)
        self.patch_size = ensure_tuple_rep(patch_size, 2)
        if any(s % p for s, p in zip(self.img_size, self.patch_size)):
            raise ValueError(f"img_size {self.img_size} must be divisible by patch_size {self.patch_size}")
        self.multimodal = bool(num_genetic_features)
        if not 0 <= masked_blocks <= num_layers:
            raise ValueError(f"masked_blocks must lie in 0..{num_layers} (image blocks), got {masked_blocks}")
        if self.multimodal and genome_layers < masked_blocks:
            raise ValueError(f"genome_layers ({genome_layers}) must be at least masked_blocks ({masked_blocks})")
        for name, tau in (("tau_image", tau_image), ("tau_genome", tau_genome)):
            if not 0.0 <= tau <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {tau}")
        self.in_channels = in_channels
        self.grid = tuple(s // p for s, p in zip(self.img_size, self.patch_size))
        self.num_patches = self.grid[0] * self.grid[1]
        self.tau_image, self.tau_genome = tau_image, tau_genome
        self.masked_blocks, self.renormalize = masked_blocks, renormalize
        self.match_samples, self.norm_pix_loss = match_samples, norm_pix_loss
        # f_I: built as UNETR(spatial_dims=2) builds its ViT, so the keys and shapes match UNETR.vit.*
        self.vit = unetr_vit(
            in_channels, self.img_size, self.patch_size, hidden_size, mlp_dim, num_layers, num_heads,
            dropout_rate, qkv_bias, fused_attention, spatial_dims=2,
        )  # fmt: skip
        patch_dim = in_channels * self.patch_size[0] * self.patch_size[1]
        self.num_genetic_features = int(num_genetic_features or 0)
        num_context = genome_tokens if self.multimodal else 0
        self.image_decoder = FusionDecoder(
            hidden_size, self.num_patches, num_context, nn.Linear(decoder_size, patch_dim),
            decoder_size, decoder_layers, decoder_heads, fused_attention,
        )  # fmt: skip
        if self.multimodal:
            self.genome_encoder = GenomeEncoder(
                self.num_genetic_features, hidden_size, genome_tokens, genome_layers, num_heads,
                genome_mlp_dim or mlp_dim, snn_hidden, tokenizer, snn_dropout, dropout_rate, qkv_bias,
                fused_attention,
            )  # fmt: skip
            seg = num_segments_length(self.num_genetic_features, genome_tokens)  # variants per genome token
            self.genome_decoder = FusionDecoder(
                hidden_size, genome_tokens, self.num_patches,
                SegmentLinear(genome_tokens, genome_decoder_size, seg),
                genome_decoder_size, genome_decoder_layers, genome_decoder_heads, fused_attention,
            )  # fmt: skip
            cross = dict(dropout_rate=dropout_rate, qkv_bias=qkv_bias, use_flash_attention=fused_attention)
            self.image_cross = nn.ModuleList(
                CrossModalAttention(hidden_size, num_heads, **cross) for _ in range(masked_blocks)
            )
            self.genome_cross = nn.ModuleList(
                CrossModalAttention(hidden_size, num_heads, **cross) for _ in range(masked_blocks)
            )

    # -- images <-> patches ------------------------------------------------------------------------------------
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, L, C * p * p]`` in the token order of the patch embedding."""
        b, c = x.shape[:2]
        (gh, gw), (ph, pw) = self.grid, self.patch_size
        x = x.reshape(b, c, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5)  # [B, gh, gw, C, ph, pw]
        return x.reshape(b, self.num_patches, c * ph * pw)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """``[B, L, C * p * p]`` -> ``[B, C, H, W]``, the inverse of :meth:`patchify`."""
        b = patches.shape[0]
        (gh, gw), (ph, pw) = self.grid, self.patch_size
        x = patches.reshape(b, gh, gw, self.in_channels, ph, pw).permute(0, 3, 1, 4, 2, 5)  # [B, C, gh, ph, gw, pw]
        return x.reshape(b, self.in_channels, gh * ph, gw * pw)

    # -- encoders ----------------------------------------------------------------------------------------------
    def forward_intact(self, z0: torch.Tensor, encoder: nn.Module) -> torch.Tensor:
        """Intact branch of one encoder (``self.vit`` or ``self.genome_encoder``) from its embedded tokens."""
        for block in encoder.blocks:
            z0 = block(z0)  # fused attention, nothing masked
        return encoder.norm(z0)  # z_I / z_G: [B, N, D]

    def forward_masked(
        self, z0_image: torch.Tensor, z0_genome: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Masked branch: relation masking in the first ``masked_blocks`` blocks (Eq. 3-6), then intact blocks.

        Returns:
            ``z_I,M`` ``[B, L, D]`` and ``z_G,M`` ``[B, T, D]`` (``None`` in single-modality mode).
        """
        xi, xg = z0_image, z0_genome
        tau_i, tau_g, renorm = self.tau_image, self.tau_genome, self.renormalize
        for n in range(self.masked_blocks):
            bi = self.vit.blocks[n]
            xi = relation_block_attention(bi, xi, tau_i, renorm)  # z_I^S  # Eq. 3-4
            if xg is not None:
                bg = self.genome_encoder.blocks[n]
                xg = relation_block_attention(bg, xg, tau_g, renorm)  # z_G^S  # Eq. 3-4
                # both cross-attentions read the post-self-attention states of the other modality  # Eq. 5-6
                xi, xg = (
                    self.image_cross[n](xi, xg, tau_i, renorm),
                    self.genome_cross[n](xg, xi, tau_g, renorm),
                )
                xg = block_mlp(bg, xg)
            xi = block_mlp(bi, xi)
        for block in self.vit.blocks[self.masked_blocks :]:
            xi = block(xi)
        if xg is not None:
            for block in self.genome_encoder.blocks[self.masked_blocks :]:
                xg = block(xg)
            xg = self.genome_encoder.norm(xg)
        return self.vit.norm(xi), xg

    # -- decoders and losses -----------------------------------------------------------------------------------
    def forward_decoders(
        self,
        z_image_m: torch.Tensor,
        z_genome: torch.Tensor | None = None,
        z_genome_m: torch.Tensor | None = None,
        z_image: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``h_I([z_I,M ; z_G])`` as an image ``[B, C, H, W]`` and ``h_G([z_G,M ; z_I])`` as ``[B, G]`` (or ``None``)."""
        pred = self.unpatchify(self.image_decoder(z_image_m, z_genome))  # x_I^ = h_I(z_I^F)
        if z_genome_m is None:
            return pred, None
        pred_g = self.genome_decoder(z_genome_m, z_image).flatten(1)  # x_G^ = h_G(z_G^F): [B, T * seg]
        return pred, pred_g[:, : self.num_genetic_features]  # [B, G] (padding of the last segment dropped)

    def image_target(self, image: torch.Tensor) -> torch.Tensor:
        """The pixels Eq. 7 reconstructs: the input, or per-patch normalised pixels with ``norm_pix_loss``."""
        if not self.norm_pix_loss:
            return image
        patches = self.patchify(image)
        mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True)
        return self.unpatchify((patches - mean) / (var + 1e-6).sqrt())

    def forward(self, image: torch.Tensor, genetics: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Both branches, both decoders, every loss term.

        Args:
            image: ``[B, C, H, W]`` (normalised).
            genetics: ``[B, G]`` (imputed, standardised); required by the multi-modal model, refused by the
                single-modality one.

        Returns:
            ``loss_rec_image``, ``loss_match_self`` (+ ``loss_rec_genome``, ``loss_match_cross`` with genetics),
            ``pred`` (reconstructed image), ``image`` (the input) and, with genetics, ``pred_genetics`` and
            ``genetics``.
        """
        self._check_inputs(image, genetics)
        z0_i = self.vit.patch_embedding(image)  # shared by both branches: [B, L, D]
        z0_g = self.genome_encoder.embed(genetics) if self.multimodal else None  # [B, T, D]
        z_i = self.forward_intact(z0_i, self.vit)
        z_g = self.forward_intact(z0_g, self.genome_encoder) if self.multimodal else None
        z_im, z_gm = self.forward_masked(z0_i, z0_g)
        pred, pred_g = self.forward_decoders(z_im, z_g, z_gm, z_i)

        idx = draw_match_samples(image.shape[0], self.match_samples, device=image.device)
        pool = [z.mean(dim=1)[idx] for z in (z_i, z_im, z_g, z_gm) if z is not None]  # [B', D] per sample
        out = {"loss_rec_image": reconstruction_loss(pred, self.image_target(image))}  # Eq. 7 (image)
        if self.multimodal:
            pi, pim, pg, pgm = pool
            out["loss_rec_genome"] = reconstruction_loss(pred_g, genetics)  # Eq. 7 (genome)
            out["loss_match_self"] = self_matching_loss([pi, pg], [pim, pgm])  # Eq. 10
            out["loss_match_cross"] = cross_matching_loss(pi, pg, pim, pgm)  # Eq. 12
            out.update(pred=pred, image=image, pred_genetics=pred_g, genetics=genetics)
        else:
            out["loss_match_self"] = self_matching_loss([pool[0]], [pool[1]])  # Eq. 10, image only
            out.update(pred=pred, image=image)
        return out

    def _check_inputs(self, image: torch.Tensor, genetics: torch.Tensor | None) -> None:
        if image.ndim != 4 or tuple(image.shape[1:]) != (self.in_channels, *self.img_size):
            raise ValueError(
                f"expected images [B, {self.in_channels}, {self.img_size[0]}, {self.img_size[1]}], "
                f"got {list(image.shape)}"
            )
        if self.multimodal and genetics is None:
            raise ValueError(
                "this MRM network was built for genetics (num_genetic_features="
                f"{self.num_genetic_features}) but got none; build it with num_genetic_features=None for "
                "single-modality (image-only) pre-training"
            )
        if not self.multimodal and genetics is not None:
            raise ValueError("this MRM network is image-only (num_genetic_features=None) but got genetics")
        if genetics is not None and (
            genetics.ndim != 2 or genetics.shape != (image.shape[0], self.num_genetic_features)
        ):
            raise ValueError(
                f"expected genetics [{image.shape[0]}, {self.num_genetic_features}], got {list(genetics.shape)}"
            )


def parameter_groups(
    model: nn.Module,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    genome_lr: float | None = None,
) -> list[dict]:
    """Two parameter groups for one ``torch.optim.AdamW``: the image side with weight decay, the genome side without.

    The paper trains the ViT with AdamW and the SNN with Adam, lr 1e-3 each. AdamW with ``weight_decay=0`` *is*
    Adam (without weight decay, Adam's default), so one optimiser with these two groups reproduces both and
    resumes as one state dict. The genome side is every parameter under a ``genome_*`` module (the genome
    encoder, the genome-query cross-attention, the genome decoder); the image side is the rest (the ViT, the
    image-query cross-attention, the image decoder).

    Args:
        model: an :class:`MRM` (or a DDP/DataParallel wrapper of one).
        lr: learning rate of the image side.
        weight_decay: AdamW decoupled weight decay of the image side (the paper gives none; MAE's 0.05).
        genome_lr: learning rate of the genome side (default ``lr``).

    Example::

        >>> net = mrm_tiny(num_genetic_features=100)
        >>> opt = torch.optim.AdamW(parameter_groups(net, lr=1e-3))
        >>> [g["name"] for g in opt.param_groups], opt.param_groups[1]["weight_decay"]
        (['image', 'genome'], 0.0)
    """
    model = getattr(model, "module", model)
    image, genome = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (genome if name.startswith("genome_") else image).append(p)
    groups = [{"name": "image", "params": image, "lr": lr, "weight_decay": weight_decay}]
    if genome:
        groups.append({"name": "genome", "params": genome, "lr": genome_lr or lr, "weight_decay": 0.0})
    return groups


def mrm_vit_base_patch16(num_genetic_features: int | None = 1000, img_size: int = 224, **kwargs) -> MRM:
    """ViT-B/16 as in the paper (12 blocks, width 768, 12 heads, MLP 3072) on 224x224 RGB images."""
    size = dict(hidden_size=768, mlp_dim=3072, num_layers=12, num_heads=12)
    return MRM(num_genetic_features, 3, img_size, 16, **{**size, **kwargs})


def mrm_tiny(num_genetic_features: int | None = 100, img_size: int = 32, **kwargs) -> MRM:
    """Width 48, 4 image blocks, 4 heads, 4 genome tokens, tiny decoders: for tests and smoke runs."""
    size = dict(
        hidden_size=48, mlp_dim=96, num_layers=4, num_heads=4, genome_tokens=4, genome_layers=2, snn_hidden=(16,),
        decoder_size=32, decoder_layers=1, decoder_heads=4, genome_decoder_size=32, genome_decoder_layers=1,
        genome_decoder_heads=4,
    )  # fmt: skip
    return MRM(num_genetic_features, 3, img_size, 16, **{**size, **kwargs})


def mrm_step_parts(net: MRM, batch: int = 8, device: str = "cpu") -> dict[str, Callable[[], None]]:
    """The callables :func:`mrm_step_benchmark` times (and ``tools/benchmark.py`` runs), on one random batch.

    ``step``: the full training step (both branches, both decoders, every loss, backward, AdamW step over the two
    parameter groups, fused as in the bundle's ``train.json``: PyTorch's default for-loop AdamW takes 0.55 s of
    CPU per step over the 125 M weights of ViT-B + G = 1,000, the fused one 0.08 s); ``plain_vit``: one full-token forward + backward of the same ViT alone (mean-token loss, no
    optimiser); ``masking``: forward + backward of the explicit relation-masked attention of the masked blocks
    (softmax, top-tau, ``R^M V``) on their real q/k/v shapes; ``fused``: the same with PyTorch's fused attention
    (what the intact blocks pay).

    Example: ``parts = mrm_step_parts(mrm_tiny(), batch=2); parts["step"]()``.
    """
    from common.networks.relation_attention import relation_masked_attention

    net = net.to(device)
    opt = torch.optim.AdamW(parameter_groups(net), fused=True)
    x = torch.randn(batch, net.in_channels, *net.img_size, device=device)
    g = torch.randn(batch, net.num_genetic_features, device=device) if net.multimodal else None

    def step() -> None:
        out = net(x, g)
        loss = sum(v for k, v in out.items() if k.startswith("loss_"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def plain() -> None:
        tokens, _ = net.vit(x)
        net.zero_grad(set_to_none=True)
        tokens.mean().backward()

    heads = net.vit.blocks[0].attn.num_heads
    d = net.vit.patch_embedding.position_embeddings.shape[-1] // heads
    L = net.num_patches
    shapes = [(L, L, net.tau_image)]  # image self-attention
    if net.multimodal:
        t = net.genome_encoder.num_tokens  # genome self, image->genome, genome->image
        shapes += [(t, t, net.tau_genome), (L, t, net.tau_image), (t, L, net.tau_genome)]
    qkv = [
        (*(torch.randn(batch, heads, n, d, device=device, requires_grad=True) for n in (lq, lk, lk)), tau)
        for lq, lk, tau in shapes
    ]

    def attention(masked: bool) -> None:
        for _ in range(net.masked_blocks):
            for q, k, v, tau in qkv:
                if masked:
                    out = relation_masked_attention(q, k, v, tau)
                else:
                    out = nn.functional.scaled_dot_product_attention(q, k, v)
                out.sum().backward()

    return {"step": step, "plain_vit": plain, "masking": lambda: attention(True), "fused": lambda: attention(False)}


def mrm_step_benchmark(
    num_genetic_features: int | None = 1000,
    batch: int = 8,
    repeats: int = 2,
    net: MRM | None = None,
    device: str = "cpu",
    clock: str = "wall",
) -> dict[str, float]:
    """Time the full MRM training step against two plain ViT forward+backward passes, at one shape.

    Seconds (best of ``repeats`` after one warm-up) of the parts of :func:`mrm_step_parts`: ``step``, ``plain_vit``,
    ``masking`` and ``fused``. For ``tools/benchmark.py``; never called by tests.

    Args:
        num_genetic_features: G (``None``: single-modality).
        batch: images per step (paper shape: 8 of 3x224x224).
        repeats: timed steps.
        net: the network to time (default: :func:`mrm_vit_base_patch16`).
        device: where to run.
        clock: ``"wall"`` (``time.perf_counter``) or ``"process"`` (``time.process_time``: CPU seconds of this
            process, all threads summed; on a machine shared with other jobs the ratios stay meaningful).

    Returns:
        the times, ``step_over_two_vit`` (target <= 1.3) and ``masking_share`` = masking / step (target < 0.1).
    """
    if clock not in ("wall", "process"):
        raise ValueError(f"clock must be 'wall' or 'process', got {clock!r}")
    now = time.perf_counter if clock == "wall" else time.process_time
    parts = mrm_step_parts(net or mrm_vit_base_patch16(num_genetic_features), batch, device)

    def timed(fn) -> float:
        t = now()
        fn()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        return now() - t

    def best(*fns) -> list[float]:
        """Interleaved (one of each per round, so a busy machine slows all alike), best of ``repeats`` after a
        warm-up round."""
        rounds = [[timed(fn) for fn in fns] for _ in range(repeats + 1)][1:]
        return [min(r[i] for r in rounds) for i in range(len(fns))]

    t_step, t_plain, t_mask, t_fused = best(parts["step"], parts["plain_vit"], parts["masking"], parts["fused"])
    return {
        "step": t_step,
        "plain_vit": t_plain,
        "step_over_two_vit": t_step / (2 * t_plain),
        "masking": t_mask,
        "fused": t_fused,
        "masking_share": t_mask / t_step,
    }
