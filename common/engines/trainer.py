"""A MONAI trainer for self-supervised methods whose network returns several named loss terms.

Why not ``SupervisedTrainer``: it computes one ``loss_function(pred, label)``; pre-training networks compute
their own terms (reconstruction, Barlow Twins, contrastive, distillation) from inputs alone. Why not MONAI's
``AdversarialTrainer``: it assumes an autoencoder whose only generator losses are a reconstruction and an
adversarial loss. This trainer weights and sums every ``loss_*`` entry the network returns, adds an optional
adversarial term from a discriminator with its own optimiser, and keeps MONAI's engine machinery (events,
handlers, metrics, DDP-friendly data loading) unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.engines import Trainer
from monai.engines.utils import IterationEvents, default_prepare_batch
from torch.nn.parallel import DistributedDataParallel

from common.losses.adversarial import discriminator_loss, generator_adversarial_loss

__all__ = ["SelfSupervisedTrainer", "BatchInputs", "unwrap", "scalar_terms", "term_gradient_norms"]


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside ``DataParallel`` / ``DistributedDataParallel``, or the module itself."""
    return module.module if isinstance(module, (nn.DataParallel, DistributedDataParallel)) else module


def term_gradient_norms(
    weighted_terms: Mapping[str, torch.Tensor], parameters: Sequence[torch.Tensor]
) -> dict[str, float]:
    """L2 norm of the gradient each weighted loss term alone sends to ``parameters`` (``grad_norm_<term>``).

    The terms of a multi-loss objective live on unrelated scales (a summed 768 x 768 Barlow Twins matrix vs a mean
    squared error); what decides which one trains the network is its share of the gradient, not its value. One
    extra backward pass per term, keeping the graph for the real backward that follows.
    """
    params = [p for p in parameters if p.requires_grad]
    norms = {}
    for name, term in weighted_terms.items():
        if not term.requires_grad:  # e.g. a term switched off by its weight's epoch gate
            norms[f"grad_norm_{name.removeprefix('loss_')}"] = 0.0
            continue
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        total = sum(float(g.detach().float().pow(2).sum()) for g in grads if g is not None)
        norms[f"grad_norm_{name.removeprefix('loss_')}"] = total**0.5
    return norms


def _logits(d_out: Any) -> torch.Tensor:
    """MONAI's PatchDiscriminator returns its intermediate maps and the logits last; other networks one tensor."""
    return d_out[-1] if isinstance(d_out, (list, tuple)) else d_out


class SelfSupervisedTrainer(Trainer):
    """Trainer for networks whose ``forward(inputs)`` returns a dict holding ``loss_<name>`` terms.

    The total loss is ``sum_k loss_weights.get(k, 1) * out[k]`` over the ``loss_*`` entries, plus, when a
    ``discriminator`` is given, ``loss_weights["loss_adv"] * generator_adversarial_loss(D(out[pred_key]))``.
    After the generator step the discriminator takes one step of ``discriminator_loss`` on real inputs and
    detached reconstructions (one forward on their concatenation, so DDP sees a single call).

    ``engine.state.output`` holds ``loss`` and every term as floats (for ``StatsHandler`` and
    ``TensorBoardStatsHandler``, see :func:`scalar_terms`), the input under ``image_key`` and every other
    tensor the network returns (detached; e.g. ``masked`` and ``pred``) for previews. A network may return its
    own ``image`` entry (e.g. the target modality) to replace the raw input there.

    Args:
        device: device to train on.
        max_epochs: number of epochs.
        train_data_loader: loader yielding dicts with ``image_key``.
        network: the pre-training network (possibly DDP-wrapped).
        optimizer: optimiser of the network.
        loss_weights: weights of the terms, e.g. ``{"loss_mse": 1, "loss_pbt": 1, "loss_adv": 1}``; missing = 1.
        discriminator: optional discriminator (possibly DDP-wrapped); needs ``d_optimizer``.
        d_optimizer: optimiser over the discriminator's parameters only.
        non_saturating: generator adversarial form, see ``generator_adversarial_loss``.
        image_key: key of the network input in a batch.
        pred_key: key of the reconstruction in the network output (the discriminator's fake input).
        network_kwargs: callable ``(batch, engine) -> dict`` of extra keyword arguments for the network.
        amp: bfloat16 autocast (no grad scaler needed).
        grad_norm_interval: every this many iterations (and at the first), the gradient norm each weighted term
            alone sends to the network is logged as ``grad_norm_<term>`` (one extra backward per term); 0: never.
        epoch_length, non_blocking, prepare_batch, iteration_update, postprocessing, key_train_metric,
        additional_metrics, metric_cmp_fn, train_handlers, to_kwargs: as in ``monai.engines.Trainer``. No
            ``decollate``: MONAI decollates at ``MODEL_COMPLETED``, before this trainer has built its output (the
            loss terms as floats and the previews), so the engine's output stays one dict per batch.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Any,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_weights: Mapping[str, float] | None = None,
        discriminator: nn.Module | None = None,
        d_optimizer: torch.optim.Optimizer | None = None,
        non_saturating: bool = False,
        image_key: str = "image",
        pred_key: str = "pred",
        network_kwargs: Callable[[dict, Any], dict] | None = None,
        amp: bool = False,
        grad_norm_interval: int = 0,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        iteration_update: Callable | None = None,
        postprocessing: Callable | None = None,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable | None = None,
        train_handlers: Sequence | None = None,
        to_kwargs: dict | None = None,
    ) -> None:
        if (discriminator is None) != (d_optimizer is None):
            raise ValueError("discriminator and d_optimizer go together: give both or neither")
        extra = {} if metric_cmp_fn is None else {"metric_cmp_fn": metric_cmp_fn}
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            iteration_update=iteration_update,
            postprocessing=postprocessing,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            handlers=train_handlers,
            # amp left at MONAI's False: its amp means fp16 + GradScaler on CUDA; we autocast bf16 ourselves
            decollate=False,  # pragma: no mutate (None is as falsy as False)
            to_kwargs=to_kwargs,
            **extra,
        )
        self.network = network
        self.optimizer = optimizer
        self.loss_weights = dict(loss_weights or {})
        self.discriminator = discriminator
        self.d_optimizer = d_optimizer
        self.non_saturating = non_saturating
        self.image_key = image_key
        self.pred_key = pred_key
        self.network_kwargs = network_kwargs
        self.use_amp = amp
        self.grad_norm_interval = grad_norm_interval

    def _autocast(self) -> torch.autocast:
        device_type = torch.device(self.state.device).type
        return torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.use_amp)

    def _check_finite(self, terms: Mapping[str, torch.Tensor]) -> None:
        bad = {k: float(v.detach()) for k, v in terms.items() if not torch.isfinite(v.detach()).all()}
        if bad:
            raise FloatingPointError(
                f"non-finite loss at epoch {self.state.epoch}, iteration {self.state.iteration}: {bad}. "
                "Training stopped; the last checkpoint written before this step is intact. Check the data "
                "(NaN/Inf voxels, constant volumes) and lower the learning rate."
            )

    def _iteration(self, engine: SelfSupervisedTrainer, batchdata: dict[str, Any]) -> dict[str, Any]:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        x = batchdata[self.image_key].to(engine.state.device, non_blocking=engine.non_blocking)  # pragma: no mutate
        kwargs = self.network_kwargs(batchdata, engine) if self.network_kwargs is not None else {}
        self.network.train()
        with self._autocast():
            out = self.network(x, **kwargs)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            terms = {k: v.float() for k, v in out.items() if k.startswith("loss_")}
            if self.discriminator is not None:
                # the generator step reads D through the plain module: no DDP reduction for D's parameters here
                d_plain = unwrap(self.discriminator)
                d_plain.requires_grad_(False)
                terms["loss_adv"] = generator_adversarial_loss(
                    _logits(d_plain(out[self.pred_key])).float(), self.non_saturating
                )
                d_plain.requires_grad_(True)
            weighted = {k: self.loss_weights.get(k, 1.0) * v for k, v in terms.items()}
            loss = sum(weighted.values())
        self._check_finite({"loss": loss, **terms})
        it = engine.state.iteration
        log_norms = self.grad_norm_interval > 0 and (it == 1 or it % self.grad_norm_interval == 0)
        norms = term_gradient_norms(weighted, list(unwrap(self.network).parameters())) if log_norms else {}
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        self.optimizer.zero_grad()  # torch's default: set_to_none=True
        loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        self.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)

        result = {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}, **norms}
        if self.discriminator is not None:
            fake = out[self.pred_key].detach()
            with self._autocast():
                logits = _logits(self.discriminator(torch.cat([x, fake]))).float()  # real, then fake
                d_loss = discriminator_loss(logits[: x.shape[0]], logits[x.shape[0] :])
            self._check_finite({"loss_d": d_loss})
            self.d_optimizer.zero_grad()
            d_loss.backward()
            self.d_optimizer.step()
            result["loss_d"] = d_loss.item()
        result[self.image_key] = x.detach()
        result.update({k: v.detach() for k, v in out.items() if not k.startswith("loss_") and torch.is_tensor(v)})
        return result


class BatchInputs:
    """``network_kwargs`` for ``SelfSupervisedTrainer``: the batch entries ``keys`` as keyword arguments of the
    network, on the engine's device (e.g. ``{"genetics": batch["genetics"]}`` for MRM); a missing or ``None`` entry
    is passed as ``None`` (single-modality mode).

    Args:
        keys: batch keys, passed under the same names; or ``{argument: batch_key}``.
    """

    def __init__(self, keys: Sequence[str] | Mapping[str, str]) -> None:
        self.keys = dict(keys) if isinstance(keys, Mapping) else {k: k for k in keys}

    def __call__(self, batch: dict, engine: Any) -> dict[str, Any]:
        out = {}
        for arg, key in self.keys.items():
            value = batch.get(key)
            # pragma: no mutate start (device placement only: every mutant is equivalent on a CPU)
            out[arg] = (
                value.to(engine.state.device, non_blocking=engine.non_blocking) if torch.is_tensor(value) else value
            )
            # pragma: no mutate end
        return out


def scalar_terms(output: Mapping[str, Any]) -> dict[str, float]:
    """The scalar entries of a trainer output (``loss``, every ``loss_*`` and ``grad_norm_*``), for the stats
    handlers."""
    return {k: v for k, v in output.items() if k == "loss" or k.startswith(("loss_", "grad_norm_"))}
