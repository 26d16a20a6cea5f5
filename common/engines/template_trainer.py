"""Fine-tuning with BrainMVP's template augmentation and consistency loss (paper appendix A, Eq. 7-8).

Why a trainer of our own: MONAI's ``SupervisedTrainer`` computes one loss on one forward pass; Eq. 8 needs two
augmented copies of each batch, the supervised loss of both, and an L2 consistency between their *encoder*
features (Eq. 7; the public code compares logits instead). Everything else is ``SupervisedTrainer``'s: the same
arguments, post-processing, metrics and handlers. Without templates it trains exactly like ``SupervisedTrainer``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from common.masking.template_replace import template_copies
from common.networks.templates import ModalityTemplates

__all__ = ["TemplateConsistencyTrainer", "consistency_loss"]
logger = logging.getLogger(__name__)


def consistency_loss(features_a: torch.Tensor, features_b: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of two copies' encoder features."""
    return F.mse_loss(features_a, features_b)  # L_cons = ||F_enc(X') - F_enc(X'')||_2  # Eq. 7


class TemplateConsistencyTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` + template-replacement copies + consistency loss.

    The network's ``forward(x, return_features=True)`` must return its output and its deepest encoder feature (our
    UniFormer3D, UNet3D and EncoderClassifier do). Both copies go through ONE call of ``engine.network`` on their
    concatenation, so under ``DistributedDataParallel`` the loss's gradients are all-reduced like any other
    step's (calling the wrapped module's methods directly would leave every rank training on its own gradients);
    batch-norm layers therefore see both copies in one batch. The loss is
    ``L_sl(F(X'), Y) + L_sl(F(X''), Y) + lambda_cons * L_cons`` (Eq. 8), each term averaged over the batch.

    Args:
        templates: frozen templates in channel order (``load_templates``), or ``None`` to switch the
            augmentation off (a plain supervised step).
        template_modalities: the channels whose modality has a template (from ``load_templates``).
        modalities: the input channel names.
        lambda_cons: weight of Eq. 7 (paper: 0.1).
        map_key: batch key of each crop's canvas map (``common.transforms.modality.CanvasMapd``): which canvas voxel
            each crop voxel came from, through every crop, pad, flip and resize; required for registered templates
            (crop-sized templates of unregistered data are resized to the crop instead).
        cube, mask_ratio: Algorithm 1 settings for uni-modal inputs.
        other args: as ``SupervisedTrainer``.
    """

    def __init__(
        self,
        *args: Any,
        templates: ModalityTemplates | None = None,
        template_modalities: Sequence[str] = (),
        modalities: Sequence[str] = (),
        lambda_cons: float = 0.1,
        map_key: str = "canvas_map",
        cube: int = 8,
        mask_ratio: float = 0.875,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.templates = templates
        wanted = set(template_modalities)
        self.available = torch.tensor([m in wanted for m in modalities]).bool()  # [C]: the channel has a template
        self.lambda_cons, self.map_key, self.cube, self.mask_ratio = lambda_cons, map_key, cube, mask_ratio
        if templates is None:
            logger.info("template augmentation off: plain supervised fine-tuning")

    def _template_batch(self, x: torch.Tensor, batch: dict) -> torch.Tensor:
        """The template of every channel on each sample's crop grid: ``[B, C, *roi]``."""
        b, c, *roi = x.shape
        canvas_map = batch.get(self.map_key)
        if canvas_map is not None:
            canvas_map = canvas_map.to(x.device)  # pragma: no mutate (device only)
        index = torch.arange(c, device=x.device).expand(b, c)  # pragma: no mutate (device only)
        return self.templates.to(x.device).sample(index, canvas_map, roi)  # pragma: no mutate (device only)

    def _iteration(self, engine: TemplateConsistencyTrainer, batchdata: dict[str, Any]) -> dict:
        if self.templates is None:
            return super()._iteration(engine, batchdata)
        # pragma: no mutate start (device placement only: every mutant is equivalent on a CPU)
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        # pragma: no mutate end
        x, y = batch[:2]  # (image, label[, args, kwargs])
        engine.network.train()
        with torch.no_grad():
            x1, x2 = template_copies(x, self._template_batch(x, batchdata), self.available, self.cube, self.mask_ratio)
        engine.state.output = {Keys.IMAGE: x, Keys.LABEL: y}
        # as SupervisedTrainer: with amp, CUDA autocast with amp_kwargs (the bundles pass bfloat16) and its scaler
        use_amp = engine.scaler is not None  # MONAI's run() makes a GradScaler exactly when amp is on
        with torch.autocast("cuda", **engine.amp_kwargs) if use_amp else contextlib.nullcontext():
            pred, feats = engine.network(torch.cat([x1, x2]), return_features=True)  # one DDP call: synced grads
            pred1, pred2 = pred.chunk(2)
            feats1, feats2 = feats.chunk(2)  # deepest encoder features of X', X''
            engine.state.output[Keys.PRED] = pred1
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            supervised = engine.loss_function(pred1, y).mean() + engine.loss_function(pred2, y).mean()
            cons = consistency_loss(feats1, feats2)
            loss = supervised + self.lambda_cons * cons  # L_FT  # Eq. 8
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss at epoch {engine.state.epoch}, iteration {engine.state.iteration}: "
                f"supervised {float(supervised)}, consistency {float(cons)}"
            )
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        engine.optimizer.zero_grad()  # torch's default: set_to_none=True
        if use_amp:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        engine.state.output.update({Keys.PRED: pred1.detach(), Keys.LOSS: loss.detach(), "loss_cons": cons.item()})
        engine.fire_event(IterationEvents.MODEL_COMPLETED)  # MONAI decollates and post-processes here
        return engine.state.output
