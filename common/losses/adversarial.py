"""Adversarial loss of M2-MAE, paper Eq. 8, split into the discriminator's and the generator's parts.

Eq. 8, ``L_adv = log(1 - D(g(E(x_m)))) + log D(x)``, is maximised by the discriminator D and minimised by the
generator (encoder + projection g). Both functions take discriminator *logits* (D = sigmoid(logit)) and use
``softplus`` forms, which are the exact logs computed without overflow: ``log sigmoid(l) = -softplus(-l)`` and
``log(1 - sigmoid(l)) = -softplus(l)``. Patch discriminators give a map of logits; its mean is taken.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["discriminator_loss", "generator_adversarial_loss"]


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Loss the discriminator minimises: ``-(log D(x) + log(1 - D(g)))``, i.e. minus Eq. 8.

    Args:
        real_logits: discriminator logits on real volumes (any shape).
        fake_logits: discriminator logits on reconstructions (detached from the generator by the caller).
    """
    # -L_adv = -log D(x) - log(1 - D(g(E(x_m))))  # Eq. 8
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_adversarial_loss(fake_logits: torch.Tensor, non_saturating: bool = False) -> torch.Tensor:
    """Generator part of Eq. 8, the term added to the total loss of Eq. 9.

    Args:
        fake_logits: discriminator logits on the reconstructions (gradient flows to the generator).
        non_saturating: use ``-log D(g)`` (Goodfellow et al.'s non-saturating form, stronger gradients while D
            is confident) instead of the paper's ``log(1 - D(g))``; both share their optimum.
    """
    if non_saturating:
        return F.softplus(-fake_logits).mean()  # -log D(g)
    return -F.softplus(fake_logits).mean()  # log(1 - D(g(E(x_m))))  # Eq. 8, the term the generator controls
