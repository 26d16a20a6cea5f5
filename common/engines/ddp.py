"""A check that DistributedDataParallel replicas stay identical.

DDP keeps replicas equal only if every forward that produces a loss runs through the DDP wrapper (so the backward
all-reduces the gradients). A trainer that calls the wrapped module's methods directly (``net.module.encode``)
trains each rank on its own gradients and nothing says so: the ranks drift apart while the loss goes down. This
handler compares a fingerprint of every parameter across ranks and stops the run, naming the first parameter that
differs, when they disagree. The multi-GPU configs attach it to every trainer; it costs one all-gather of two
numbers per parameter at each check.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
import torch.distributed as dist
import torch.nn as nn
from ignite.engine import Engine, Events

from common.engines.trainer import unwrap

__all__ = ["ReplicaCheck", "end_process_group", "parameter_fingerprint"]
logger = logging.getLogger(__name__)


def parameter_fingerprint(module: nn.Module) -> tuple[list[str], torch.Tensor]:
    """Names and a ``[P, 2]`` float64 fingerprint (sum, sum of squares) of every parameter of ``module``.

    Buffers are left out: DDP broadcasts them from rank 0 before each forward, and batch-norm statistics then
    change on every rank with its own batch, so they legitimately differ between two forwards."""
    named = list(unwrap(module).named_parameters())
    rows = [torch.stack([t.detach().double().sum(), t.detach().double().pow(2).sum()]) for _, t in named]
    return [n for n, _ in named], torch.stack(rows) if rows else torch.zeros(0, 2, dtype=torch.float64)


class ReplicaCheck:
    """Raise when DDP replicas differ: attach to a trainer on every rank (it is a collective call).

    Args:
        modules: the network, or ``{name: module}`` for several (e.g. a GAN's generator and discriminator).
        interval: check every ``interval`` iterations; ``0`` checks at the end of each epoch only.
        rtol: relative tolerance of the comparison (DDP replicas are bitwise equal: 0 is the honest default).

    Without an initialised process group it does nothing, so a single-process run can keep it attached.
    """

    def __init__(self, modules: nn.Module | Mapping[str, nn.Module], interval: int = 0, rtol: float = 0.0) -> None:
        self.modules = dict(modules) if isinstance(modules, Mapping) else {"network": modules}
        self.interval, self.rtol = interval, rtol

    def attach(self, engine: Engine) -> None:
        event = Events.ITERATION_COMPLETED(every=self.interval) if self.interval else Events.EPOCH_COMPLETED
        engine.add_event_handler(event, self)

    def __call__(self, engine: Engine) -> None:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return
        for label, module in self.modules.items():
            names, local = parameter_fingerprint(module)
            gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, local)
            reference = gathered[0]
            for rank, other in enumerate(gathered[1:], start=1):
                bad = ((other - reference).abs() > self.rtol * reference.abs()).any(dim=1)
                if bad.any():
                    first = names[int(bad.nonzero()[0])]
                    raise RuntimeError(
                        f"DDP replicas differ after iteration {engine.state.iteration}: {int(bad.sum())} tensors of "
                        f"'{label}' on rank {rank} differ from rank 0 (first: {first}). A forward that produces a "
                        "loss bypassed the DistributedDataParallel wrapper, so its gradients were not synchronised."
                    )
            if dist.get_rank() == 0:
                logger.info(
                    f"DDP replicas identical after iteration {engine.state.iteration}: {len(names)} tensors of '{label}' "
                    f"on {dist.get_world_size()} ranks"
                )


def end_process_group() -> None:
    """Wait for every rank, then destroy the process group (the multi-GPU configs' ``finalize``).

    Rank 0 runs more handlers than the others (checkpoints, TensorBoard, validation), so without the barrier a
    rank that finishes first tears its gloo connections down while rank 0 still holds them, and the gloo
    process group can abort that rank (SIGABRT) after an otherwise complete run."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
