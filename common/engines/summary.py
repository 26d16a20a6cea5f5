"""The first lines of a run: what will happen, before it happens.

Data source and case count, network and parameter count, device, epochs and iterations, where checkpoints and logs
go, and whether the run resumes: a user reads in five lines whether the command does what they meant.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Sized
from typing import Any

import torch

__all__ = ["run_summary", "log_run_summary"]

logger = logging.getLogger("common.run")


def _source(dataset_dir: str | None, datalist: str | None, extra: str | None) -> str:
    if extra:
        return extra
    if datalist:
        return f"datalist {datalist}"
    if dataset_dir:
        return f"dataset_dir {dataset_dir}"
    return "the embedded demo set (pass --dataset_dir or --datalist for your data)"


def _resume(ckpt_dir: str | None) -> str:
    found = sorted(glob.glob(os.path.join(ckpt_dir or "", "checkpoints", "checkpoint_epoch=*.pt")))
    if not found:
        return "starts fresh (no checkpoint in {})".format(os.path.join(ckpt_dir or ".", "checkpoints"))
    newest = max(found, key=lambda p: int(re.search(r"epoch=(\d+)", p).group(1)))
    return f"resumes from {newest} if it matches this run (see --resume / --restart)"


def run_summary(
    network: torch.nn.Module,
    data: Sized,
    epochs: int,
    device: Any,
    ckpt_dir: str | None = None,
    log_dir: str | None = None,
    dataset_dir: str | None = None,
    datalist: str | None = None,
    source: str | None = None,
    iterations: int | None = None,
    name: str = "training",
) -> list[str]:
    """The summary lines (see :func:`log_run_summary`)."""
    module = network.module if hasattr(network, "module") else network
    params = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    lines = [
        f"{name}: {len(data)} case(s) from {_source(dataset_dir, datalist, source)}",
        f"network: {type(module).__name__}, {params:,} parameters ({trainable:,} trainable), on {device}",
        f"schedule: {epochs} epoch(s)" + (f" of {iterations} iteration(s)" if iterations is not None else ""),
    ]
    if ckpt_dir or log_dir:
        lines.append(f"checkpoints: {ckpt_dir or '-'}; logs (TensorBoard): {log_dir or '-'}")
    if ckpt_dir:
        lines.append(f"this run {_resume(ckpt_dir)}")
    return lines


def log_run_summary(*args: Any, **kwargs: Any) -> None:
    """Log :func:`run_summary` (on rank 0 only under DDP). For a config's ``initialize``::

    {"_target_": "common.engines.summary.log_run_summary", "network": "@network",
     "data": "@train#dataset#data", "epochs": "@epochs", "device": "@device", "ckpt_dir": "@ckpt_dir",
     "log_dir": "@output_dir", "dataset_dir": "@dataset_dir", "datalist": "@datalist",
     "iterations": "$len(@train#dataloader)"}
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() > 0:
        return
    for line in run_summary(*args, **kwargs):
        logger.info(line)
