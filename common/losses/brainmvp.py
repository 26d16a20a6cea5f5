"""BrainMVP losses (paper 3.1-3.3, Eq. 2-6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "cross_modal_reconstruction_loss",
    "distillation_loss",
    "info_nce",
    "modality_contrastive_loss",
    "brainmvp_loss",
]


def cross_modal_reconstruction_loss(pred: torch.Tensor, x_m: torch.Tensor) -> torch.Tensor:
    """Reconstruct X_im from Phi_modal(X_im, X_in); squared L2 per voxel, averaged."""
    return F.mse_loss(pred, x_m)  # L_CMR = ||F_dec(F_enc(Phi_modal(X_im, X_in))) - X_im||^2  # Eq. 2


def distillation_loss(pred: torch.Tensor, x_m: torch.Tensor) -> torch.Tensor:
    """Reconstruct X_im from Phi_distill(X_im, T_m); its gradient also trains the template T_m."""
    return F.mse_loss(pred, x_m)  # L_MD = ||F_dec(F_enc(Phi_distill(X_im, T_m))) - X_im||^2  # Eq. 3


def info_nce(f: torch.Tensor, g: torch.Tensor, temperature: float) -> torch.Tensor:
    """L_{f->g}: each f_i must pick its own g_i among the batch's g_j (cosine similarity / temperature).

    Args:
        f: embeddings ``[B, C]`` of the cross-modal views.
        g: embeddings ``[B, C]`` of the template views, row i the positive of f_i.
        temperature: tau.
    """
    logits = F.normalize(f) @ F.normalize(g).T / temperature  # [B, B]; rows normalised (F.normalize's dim=1)
    logits = logits.float()  # as F.cross_entropy under autocast: the softmax in float32
    # L_{f_im -> g_im} = -log exp(f_i . g_i / tau) / sum_j exp(f_i . g_j / tau)  # Eq. 4
    # (cross-entropy with target i in row i, written out: no index tensor, so nothing to place on a device)
    return (logits.logsumexp(1) - logits.diagonal()).mean()


def modality_contrastive_loss(f: torch.Tensor, g: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE between the two masked views of each sample."""
    return 0.5 * (info_nce(f, g, temperature) + info_nce(g, f, temperature))  # L_CL = (L_f->g + L_g->f) / 2  # Eq. 5


def brainmvp_loss(
    l_cmr: torch.Tensor, l_md: torch.Tensor, l_cl: torch.Tensor | float, lambda_md: float = 1.0, lambda_cl: float = 1.0
) -> torch.Tensor:
    """L_SSL for terms already averaged over the batch's (sample, modality) draws."""
    return l_cmr + lambda_md * l_md + lambda_cl * l_cl  # L_SSL = mean(L_CMR + l_MD L_MD + l_CL L_CL)  # Eq. 6
