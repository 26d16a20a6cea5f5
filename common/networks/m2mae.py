"""M2-MAE: multi-modality MRI masked autoencoder (Han et al., paper section III.B).

Encode the original and the HMP-masked volume with one shared ViT, decode the masked one with a single linear
projection, and score it with the MSE and the pyramid Barlow Twins losses. The adversarial term needs the
discriminator, which has its own optimiser, so the trainer adds it (``common.engines.SelfSupervisedTrainer``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.utils import ensure_tuple_rep

from common.losses.barlow import pyramid_barlow_loss
from common.masking.hybrid import apply_mask, hybrid_mask
from common.networks.vit import set_fused_attention, unetr_vit

__all__ = ["M2MAE", "m2mae_vit_base_patch16", "m2mae_vit_tiny", "set_fused_attention"]


class M2MAE(nn.Module):
    """ViT encoder + single linear projection decoder, trained with the hybrid mask pattern.

    The encoder is MONAI's :class:`~monai.networks.nets.ViT` built exactly as :class:`~monai.networks.nets.UNETR`
    builds it and stored as ``self.vit``, so a saved ``state_dict`` loads into ``UNETR`` (``strict=False``) with
    every ``vit.*`` key matched. Masked patches are zeroed in the input (not dropped as in MAE) because the HMP
    masks modalities *inside* a patch position; the encoder therefore sees all tokens, as UNETR will.

    Args:
        in_channels: number of modalities C (at least 2 for the modality mask).
        img_size: crop size, e.g. 96 or (96, 96, 96).
        patch_size: ViT patch size, e.g. 16.
        hidden_size, mlp_dim, num_layers, num_heads, qkv_bias, dropout_rate: ViT settings (ViT-B by default).
        pbt_layers: 1-based encoder blocks whose outputs enter the pyramid Barlow Twins loss (paper: 3, 6, 9, 12).
        use_modality_mask, position_ratio, patch_ratio: hybrid mask pattern settings, see ``hybrid_mask``.
        redundancy_weight, pbt_center: Barlow Twins settings, see ``barlow_twins_loss``.
        pbt_normalize: scale of each level's Eq. 5: ``"none"`` (as written: a sum over the D x D correlation
            matrix, ~1e5 at ViT-B's D = 768, which starves the MSE of gradient), ``"width"`` (/D) or ``"matrix"``
            (/D^2, the default here: the mean over the matrix; same minimiser and term balance as Eq. 5).
        mask_fill: what masked patches hold: ``"token"`` (a learned patch per modality, MAE's mask token moved to
            the input because HMP masks modalities inside one token) or ``"zero"`` (0, which after z-scoring is
            also what background looks like).
        mse_on: ``"all"`` voxels as written in Eq. 7, or only the ``"masked"`` patches as in MAE.
        fused_attention: PyTorch's fused scaled-dot-product attention in every block (same maths, less memory;
            M2-MAE never needs the attention matrix itself). A runtime switch: the weights are the same.

    Example::

        >>> net = M2MAE(in_channels=4, img_size=32, patch_size=16, hidden_size=48, mlp_dim=96, num_heads=4)
        >>> out = net(torch.randn(2, 4, 32, 32, 32))
        >>> out["pred"].shape, out["mask"].shape, float(out["loss_mse"]) > 0
        (torch.Size([2, 4, 32, 32, 32]), torch.Size([2, 4, 8]), True)
    """

    def __init__(
        self,
        in_channels: int = 4,
        img_size: Sequence[int] | int = 96,
        patch_size: Sequence[int] | int = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        qkv_bias: bool = False,
        dropout_rate: float = 0.0,
        pbt_layers: Sequence[int] = (3, 6, 9, 12),
        use_modality_mask: bool = True,
        position_ratio: float = 0.5,
        patch_ratio: float = 1.0 / 3.0,
        redundancy_weight: float = 1.0,
        pbt_center: bool = True,
        mse_on: str = "all",
        fused_attention: bool = True,
        pbt_normalize: str = "matrix",
        mask_fill: str = "token",
    ) -> None:
        super().__init__()
        self.img_size = ensure_tuple_rep(img_size, 3)
        self.patch_size = ensure_tuple_rep(patch_size, 3)
        if any(s % p for s, p in zip(self.img_size, self.patch_size)):
            raise ValueError(f"img_size {self.img_size} must be divisible by patch_size {self.patch_size}")
        if not all(1 <= layer <= num_layers for layer in pbt_layers):
            raise ValueError(f"pbt_layers {tuple(pbt_layers)} must lie in 1..{num_layers}")
        if mse_on not in ("all", "masked"):
            raise ValueError(f"mse_on must be 'all' or 'masked', got {mse_on!r}")
        if mask_fill not in ("token", "zero"):
            raise ValueError(f"mask_fill must be 'token' or 'zero', got {mask_fill!r}")
        self.in_channels = in_channels
        self.grid = tuple(s // p for s, p in zip(self.img_size, self.patch_size))
        self.num_patches = self.grid[0] * self.grid[1] * self.grid[2]
        self.pbt_layers = tuple(pbt_layers)
        self.mask_kwargs = dict(
            use_modality_mask=use_modality_mask, position_ratio=position_ratio, patch_ratio=patch_ratio
        )
        self.redundancy_weight = redundancy_weight
        self.pbt_center = pbt_center
        self.pbt_normalize = pbt_normalize
        self.mse_on = mse_on
        # built as UNETR builds its ViT, so the keys and shapes match UNETR.vit.*
        self.vit = unetr_vit(
            in_channels, self.img_size, self.patch_size, hidden_size, mlp_dim, num_layers, num_heads,
            dropout_rate, qkv_bias, fused_attention,
        )  # fmt: skip
        # the content of a masked patch, per modality: learned (zero-initialised) or a fixed 0
        self.mask_token = nn.Parameter(torch.zeros(in_channels, *self.patch_size)) if mask_fill == "token" else None
        # g(.): the whole decoder is one linear projection from a token to its patch in every modality
        self.decoder = nn.Linear(
            hidden_size, in_channels * self.patch_size[0] * self.patch_size[1] * self.patch_size[2]
        )
        # MAE's initialisation of its linear layers (the paper builds on MAE and gives none of its own). PyTorch's
        # default, U(+-1/sqrt(hidden)), is ~4x wider here (fan-out p^3 C >> hidden) and starts every reconstruction
        # as noise of std ~0.6 over the z-scored image, which takes hundreds of steps to fade.
        nn.init.xavier_uniform_(self.decoder.weight)
        nn.init.zeros_(self.decoder.bias)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, D, H, W]`` -> ``[B, L, C * p^3]`` in the token order of the patch embedding."""
        b, c = x.shape[:2]
        (gd, gh, gw), (pd, ph, pw) = self.grid, self.patch_size
        x = x.reshape(b, c, gd, pd, gh, ph, gw, pw)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # [B, gd, gh, gw, C, pd, ph, pw]
        return x.reshape(b, self.num_patches, c * pd * ph * pw)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """``[B, L, C * p^3]`` -> ``[B, C, D, H, W]``, the inverse of :meth:`patchify`."""
        b = patches.shape[0]
        (gd, gh, gw), (pd, ph, pw) = self.grid, self.patch_size
        x = patches.reshape(b, gd, gh, gw, self.in_channels, pd, ph, pw)
        x = x.permute(0, 4, 1, 5, 2, 6, 3, 7)  # [B, C, gd, pd, gh, ph, gw, pw]
        return x.reshape(b, self.in_channels, gd * pd, gh * ph, gw * pw)

    def random_masking(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw a hybrid mask ``[B, C, L]`` per sample and return it with the masked volume."""
        mask = hybrid_mask(
            x.shape[0], self.in_channels, self.num_patches, generator=generator, device=x.device, **self.mask_kwargs
        )
        return mask, self.apply_mask(x, mask)

    def apply_mask(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The encoder's masked input: masked patches hold the mask token (or 0)."""
        return apply_mask(x, mask, self.patch_size, 0.0 if self.mask_token is None else self.mask_token)

    def forward_encoder(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Tokens after the final norm ``[B, L, hidden]`` and the outputs of the PBT blocks, each ``[B, L, hidden]``."""
        tokens, hidden = self.vit(x)
        return tokens, [hidden[layer - 1] for layer in self.pbt_layers]

    def forward_decoder(self, tokens: torch.Tensor) -> torch.Tensor:
        """g(tokens): ``[B, L, hidden]`` -> reconstructed volume ``[B, C, D, H, W]``."""
        return self.unpatchify(self.decoder(tokens))

    def forward_loss(self, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE between the input and its reconstruction, over all voxels or over the masked patches only."""
        err = (self.patchify(pred) - self.patchify(x)).pow(2)  # [B, L, C * p^3]
        if self.mse_on == "all":
            return err.mean()  # L_MSE = |x - g(E_ViT(x_m))|^2  # Eq. 7
        per_patch = err.reshape(*err.shape[:2], self.in_channels, -1).mean(-1)  # [B, L, C]
        m = mask.transpose(1, 2).float()  # [B, L, C]
        return (per_patch * m).sum() / m.sum().clamp_min(1.0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Mask, encode both views, decode, and score.

        Args:
            x: multi-modality volume ``[B, C, *img_size]``.
            mask: optional patch mask ``[B, C, L]`` (drawn with :func:`hybrid_mask` when omitted).

        Returns:
            ``pred`` (reconstruction), ``masked`` (the encoder's masked input), ``mask``, ``loss_mse``, ``loss_pbt``.
        """
        if tuple(x.shape[1:]) != (self.in_channels, *self.img_size):
            raise ValueError(
                f"expected input [B, {self.in_channels}, {', '.join(map(str, self.img_size))}], got {list(x.shape)}"
            )
        if mask is None:
            mask, x_m = self.random_masking(x)
        else:
            x_m = self.apply_mask(x, mask)
        _, z = self.forward_encoder(x)
        tokens_m, z_m = self.forward_encoder(x_m)
        pred = self.forward_decoder(tokens_m)
        return {
            "pred": pred,
            "masked": x_m,
            "mask": mask,
            "loss_mse": self.forward_loss(x, pred, mask),
            "loss_pbt": pyramid_barlow_loss(z, z_m, self.redundancy_weight, self.pbt_center, self.pbt_normalize),
        }


def m2mae_vit_base_patch16(in_channels: int = 4, img_size: int = 96, **kwargs) -> M2MAE:
    """ViT-B/16 as in the paper (12 blocks, width 768, 12 heads)."""
    return M2MAE(in_channels, img_size, 16, hidden_size=768, mlp_dim=3072, num_layers=12, num_heads=12, **kwargs)


def m2mae_vit_tiny(in_channels: int = 4, img_size: int = 32, **kwargs) -> M2MAE:
    """Width 48 for tests and smoke runs; 12 blocks because UNETR reads 12: the outputs of blocks 4, 7 and 10
    (its ``hidden_states_out[3], [6], [9]``) and the normed output of block 12. (The PBT taps, blocks 3, 6, 9 and 12,
    are the paper's and differ from UNETR's skips.)"""
    return M2MAE(in_channels, img_size, 16, hidden_size=48, mlp_dim=96, num_layers=12, num_heads=4, **kwargs)
