"""Atomic checkpoints with automatic resume.

Why not MONAI's ``CheckpointSaver`` / ``CheckpointLoader``: in MONAI 1.6.1 the saver writes through ignite's
``DiskSaver(atomic=False)`` (a crash mid-write leaves a truncated file under the final name), and the loader
needs an explicit path and fails on a corrupt file instead of falling back to the previous checkpoint. This
handler writes ``checkpoint_epoch=N.pt`` to a temporary file, fsyncs and renames it, keeps the newest
``n_saved``, and at start-up resumes from the newest one that loads (``weights_only=True``), warning about any
it had to skip. It also stores the global RNG states, so a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import logging
import os
import random
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from common.engines.trainer import unwrap

__all__ = [
    "run_fingerprint",
    "ResumeRefused",
    "atomic_save",
    "safe_load",
    "rng_state",
    "set_rng_state",
    "ResumableCheckpoint",
    "load_encoder",
    "require_checkpoint",
    "BestModelSaver",
    "EncoderLoader",
    "sha256_file",
]

logger = logging.getLogger(__name__)
_CKPT = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def safe_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True`` (no code in a checkpoint ever runs)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) generator states as tensors and plain containers."""
    np_state = np.random.get_state()
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_SCHEDULE_PROGRESS = ("last_epoch", "_step_count", "_last_lr", "_is_initial", "_get_lr_called_within_step")


def _keep_configured_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """After a resume the schedule's *configured* length wins (so ``--epochs`` can extend a run): closed-form
    schedules (``LambdaLR`` and its subclasses such as MONAI's ``WarmupCosineSchedule``) recompute the current
    learning rate from the restored step and the new length."""
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_lr()):
                group["lr"] = lr
        scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]


class _RNG:
    """Adapter so the RNG states travel through the same ``state_dict`` path as everything else."""

    def state_dict(self) -> dict[str, Any]:
        return rng_state()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        set_rng_state(state)


class _TransformRNG:
    """The random states of a dataset's MONAI ``Randomizable`` transforms (each owns a NumPy ``RandomState``):
    with data loaded in the main process they, not the global generators, decide crops and flips."""

    def __init__(self, dataset: Any) -> None:
        from monai.transforms import Compose, Randomizable

        transform = getattr(dataset, "transform", dataset)
        flat = transform.flatten().transforms if isinstance(transform, Compose) else [transform]
        self.transforms: list = []
        seen: set[int] = set()

        def collect(obj: Any, depth: int) -> None:  # dictionary transforms draw from inner array transforms' R
            if id(obj) in seen or depth > 3:
                return
            seen.add(id(obj))
            if isinstance(obj, Randomizable):
                self.transforms.append(obj)
            children = (
                obj.values()
                if isinstance(obj, dict)
                else obj
                if isinstance(obj, (list, tuple))
                else vars(obj).values()
                if hasattr(obj, "__dict__") and isinstance(obj, (Randomizable, Compose))
                else ()
            )
            for child in children:
                if isinstance(child, (Randomizable, Compose, list, tuple, dict)):
                    collect(child, depth + 1)

        for t in flat:
            collect(t, 0)

    def state_dict(self) -> dict[str, Any]:
        states = [t.R.get_state() for t in self.transforms]
        return {
            "keys": [torch.from_numpy(s[1].astype(np.int64)) for s in states],
            "pos": [int(s[2]) for s in states],
            "has_gauss": [int(s[3]) for s in states],
            "cached": [float(s[4]) for s in states],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if len(state["keys"]) != len(self.transforms):
            raise ValueError(
                f"checkpoint has {len(state['keys'])} random transforms, the pipeline {len(self.transforms)}"
            )
        for t, k, p, h, c in zip(self.transforms, state["keys"], state["pos"], state["has_gauss"], state["cached"]):
            t.R.set_state(("MT19937", k.numpy().astype(np.uint32), p, h, c))


class ResumeRefused(RuntimeError):
    """A run would resume from a checkpoint of another run, or would train nothing."""


def run_fingerprint(data: Any, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a run trains on: the number of cases, a hash of their sorted entries (files and ids) and the settings that
    shape the run (network, crop, modalities, masking, loss weights, batch size, learning rate; NOT the number of
    epochs, so a finished run can be extended). Stored in every checkpoint and compared when resuming.

    Args:
        data: the training entries (a datalist's list of dicts) or anything with a stable ``repr``.
        settings: ``{name: value}`` of plain values.
    """
    import hashlib
    import json

    entries = (
        sorted(json.dumps(e, sort_keys=True, default=str) for e in data)
        if isinstance(data, (list, tuple))
        else [repr(data)]
    )
    digest = hashlib.sha256("\n".join(entries).encode()).hexdigest()
    return {
        "cases": len(entries),
        "cases_sha256": digest,
        "settings": json.loads(json.dumps(dict(settings or {}), default=str)),
    }


def _fingerprint_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    out = []
    if stored.get("cases_sha256") != current.get("cases_sha256"):
        out.append(
            f"training data: {stored.get('cases')} cases then, {current.get('cases')} cases now (another case list)"
        )
    a, b = stored.get("settings", {}), current.get("settings", {})
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            out.append(f"{key}: {a.get(key)!r} then, {b.get(key)!r} now")
    return out


class _Fingerprint:
    """Adapter: the run fingerprint travels through the checkpoint's ``state_dict`` path."""

    def __init__(self, fingerprint: Mapping[str, Any]) -> None:
        self.fingerprint = dict(fingerprint)

    def state_dict(self) -> dict[str, Any]:
        return self.fingerprint

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # compared before loading, nothing to restore
        pass


def _is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _load_network(net: torch.nn.Module, state: Mapping[str, Any], key: str, path: Path) -> None:
    """Load a resumed network, or say which file does not fit it (e.g. one written by an earlier bundle version
    with another decoder) instead of torch's key dump; nothing is deleted, the user decides."""

    def first(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    try:
        mismatch = net.load_state_dict(state, strict=False)
        problem = "; ".join(
            f"{what}: {first(keys)}"
            for what, keys in (("missing", mismatch.missing_keys), ("unexpected", mismatch.unexpected_keys))
            if keys
        )
    except RuntimeError as e:  # same names, other shapes
        problem = str(e).splitlines()[-1].strip()
    if problem:
        raise RuntimeError(
            f"cannot resume from {path}: its '{key}' does not fit this network ({problem}); it was written by another "
            "network or bundle version: move it aside or set --ckpt_dir to start a new run"
        ) from None


class ResumableCheckpoint:
    """Save training state every ``save_interval`` epochs, resume from the newest valid one, write the final model.

    Args:
        save_dir: folder of ``checkpoint_epoch=N.pt`` files.
        save_dict: objects with ``state_dict``/``load_state_dict`` to store, e.g.
            ``{"network": net, "optimizer": opt, "lr_scheduler": sched}``. DDP wrappers are unwrapped, so keys
            never carry ``module.``. The engine this handler is attached to is added as ``trainer`` (epoch and
            iteration), so configs need no reference from a handler back to its trainer.
        final_path: where the network's plain ``state_dict`` goes when training completes (e.g. ``models/model.pt``).
        final_key: which ``save_dict`` entry is "the network" for ``final_path``.
        extra_final: optional further entries for the final file, as ``{name: module}``, stored under
            ``<name>.<key>`` (e.g. the BrainMVP templates).
        save_interval: epochs between checkpoints.
        n_saved: how many checkpoints to keep (oldest deleted first).
        resume: look for a checkpoint at start-up.
        dataset: the training dataset, whose random transforms' states are saved too, so a resumed run draws the
            crops and flips an uninterrupted run would (with ``num_workers=0``; worker processes are re-seeded
            from the restored torch generator every epoch anyway).
        fingerprint: what the run trains on (:func:`run_fingerprint`). A checkpoint whose fingerprint differs
            (other data, another crop or network) is not resumed silently: the run stops and names the differences,
            unless ``force_resume`` (continue from it anyway) or ``restart`` (move the old checkpoints aside into
            ``superseded_<time>/`` and start at epoch 1).
        force_resume: resume even when the fingerprints differ (``--resume true``).
        restart: start afresh, keeping the old checkpoints aside (``--restart true``).
        contract: the input contract (``common.engines.contract.input_contract``), stored in every checkpoint and in
            the final model under ``input_contract``, so downstream bundles can check what the encoder expects.

    A run that would train nothing (its newest checkpoint already reached ``max_epochs``) stops with a message
    instead of saving the old weights as a new final model. Only the main process (rank 0) writes; every process
    resumes from the same file.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: Mapping[str, Any],
        final_path: str | None = None,
        final_key: str = "network",
        extra_final: Mapping[str, Any] | None = None,
        save_interval: int = 1,
        n_saved: int = 2,
        resume: bool = True,
        dataset: Any | None = None,
        fingerprint: Mapping[str, Any] | None = None,
        force_resume: bool = False,
        restart: bool = False,
        contract: Mapping[str, Any] | None = None,
    ) -> None:
        if save_interval < 1 or n_saved < 1:
            raise ValueError(f"save_interval and n_saved must be >= 1, got {save_interval} and {n_saved}")
        self.save_dir = Path(save_dir)
        if force_resume and restart:
            raise ValueError("--resume and --restart exclude each other: choose one")
        self.save_dict = {**save_dict, "rng": _RNG()}
        if dataset is not None:
            self.save_dict["transforms"] = _TransformRNG(dataset)
        self.fingerprint = dict(fingerprint) if fingerprint is not None else None
        if self.fingerprint is not None:
            self.save_dict["fingerprint"] = _Fingerprint(self.fingerprint)
        self.force_resume, self.restart = force_resume, restart
        self.contract = dict(contract) if contract is not None else None
        self.final_path = final_path
        self.final_key = final_key
        self.extra_final = dict(extra_final or {})
        self.save_interval = save_interval
        self.n_saved = n_saved
        self.resume = resume
        self.resumed_from: Path | None = None

    def attach(self, engine: Engine) -> None:
        self.save_dict.setdefault("trainer", engine)
        if self.restart:
            engine.add_event_handler(Events.STARTED, self.set_aside)
        elif self.resume:
            engine.add_event_handler(Events.STARTED, self.load_latest)
        engine.add_event_handler(Events.STARTED, self._refuse_empty_run)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save)
        if self.final_path:
            engine.add_event_handler(Events.COMPLETED, self.save_final)

    def checkpoints(self) -> list[Path]:
        """Existing checkpoints, newest first."""
        found = [
            (int(m.group(1)), p) for p in self.save_dir.glob("checkpoint_epoch=*.pt") if (m := _CKPT.search(p.name))
        ]
        return [p for _, p in sorted(found, reverse=True)]

    def save(self, engine: Engine) -> None:
        if not _is_main_process():
            return
        state = {
            k: unwrap(v).state_dict() if isinstance(v, torch.nn.Module) else v.state_dict()
            for k, v in self.save_dict.items()
        }
        if self.contract is not None:
            state["input_contract"] = self.contract
        path = self.save_dir / f"checkpoint_epoch={engine.state.epoch}.pt"
        atomic_save(state, path)
        for old in self.checkpoints()[self.n_saved :]:
            old.unlink(missing_ok=True)
        logger.info(f"saved checkpoint {path}")

    def save_final(self, engine: Engine) -> None:
        if not _is_main_process():
            return
        state = dict(unwrap(self.save_dict[self.final_key]).state_dict())
        for name, module in self.extra_final.items():
            state.update({f"{name}.{k}": v for k, v in unwrap(module).state_dict().items()})
        if self.contract is not None:
            state["input_contract"] = self.contract
        atomic_save(state, self.final_path)
        logger.info(f"saved final model {self.final_path}")

    def set_aside(self, engine: Engine) -> None:
        """``restart``: move every existing checkpoint into ``superseded_<time>/`` (nothing is deleted)."""
        found = self.checkpoints()
        if not found or not _is_main_process():
            if found:
                logger.info("restart: rank 0 sets the old checkpoints aside")
            return
        import time

        aside = self.save_dir / f"superseded_{time.strftime('%Y%m%d-%H%M%S')}"
        aside.mkdir(parents=True, exist_ok=True)
        for path in found:
            os.replace(path, aside / path.name)
        logger.info(f"restart: moved {len(found)} checkpoint(s) to {aside}; training starts at epoch 1")

    def _refuse_empty_run(self, engine: Engine) -> None:
        if engine.state.epoch >= engine.state.max_epochs:
            raise ResumeRefused(
                f"nothing to train: the checkpoint in {self.save_dir} already reached epoch {engine.state.epoch} of "
                f"max_epochs={engine.state.max_epochs}. Raise --epochs to extend the run, use --restart true to train "
                "again from scratch (the old checkpoints are kept aside), or point --ckpt_dir at a fresh folder"
            )

    def _check_fingerprint(self, state: Mapping[str, Any], path: Path) -> None:
        if self.fingerprint is None:
            return
        stored = state.get("fingerprint")
        differences = (
            ["the checkpoint has no fingerprint (written by an older version)"]
            if stored is None
            else _fingerprint_differences(stored, self.fingerprint)
        )
        if not differences:
            return
        if self.force_resume:
            for d in differences:
                logger.warning(f"resuming from {path} although it differs (--resume true): {d}")
            return
        raise ResumeRefused(
            f"{path} was written by another run than this one:\n  - "
            + "\n  - ".join(differences)
            + "\nChoose: a fresh run directory (--ckpt_dir <new folder>), --restart true (start at epoch 1, the old "
            "checkpoints are kept in a superseded_<time> folder), or --resume true (continue from it anyway)"
        )

    def load_latest(self, engine: Engine) -> None:
        for path in self.checkpoints():
            try:
                state = safe_load(path)
                missing = sorted(set(self.save_dict) - set(state) - {"fingerprint"})
                if missing:
                    raise KeyError(f"entries {missing} missing")
            except Exception as e:  # a truncated or foreign file: fall back to the previous checkpoint
                logger.warning(
                    f"skipping checkpoint {path}: cannot be loaded ({type(e).__name__}: {e}); trying the previous one"
                )
                continue
            self._check_fingerprint(state, path)
            configured = {
                k: v.state_dict()
                for k, v in self.save_dict.items()
                if isinstance(v, torch.optim.lr_scheduler.LRScheduler)
            }
            for key, obj in self.save_dict.items():
                if key not in state:  # the fingerprint of a pre-fingerprint checkpoint (accepted above)
                    continue
                if key in configured:
                    state[key] = {**configured[key], **{k: v for k, v in state[key].items() if k in _SCHEDULE_PROGRESS}}
                if isinstance(obj, Engine):
                    max_epochs = engine.state.max_epochs  # the configured length wins, so a run can be extended
                    obj.load_state_dict(state[key])
                    obj.state.max_epochs = max_epochs
                elif isinstance(obj, torch.nn.Module):
                    _load_network(unwrap(obj), state[key], key, path)
                else:
                    obj.load_state_dict(state[key])
            for obj in self.save_dict.values():
                if isinstance(obj, torch.optim.lr_scheduler.LRScheduler):
                    _keep_configured_schedule(obj)
            self.resumed_from = path
            logger.info(f"resumed from {path} (epoch {engine.state.epoch}, iteration {engine.state.iteration})")
            return
        logger.info(f"no checkpoint in {self.save_dir} yet: training starts at epoch 1")


def load_encoder(
    network: torch.nn.Module,
    path: str | None,
    prefix: str = "vit.",
    source_prefix: str | None = None,
    required: bool = True,
    inflate_channels: bool = True,
) -> int:
    """Copy a pre-trained encoder into ``network`` by key name, refusing a checkpoint that does not hold it.

    Why not ``CheckpointLoader``: with ``strict=False`` it loads whatever matches, silently leaving an encoder
    randomly initialised when the keys do not match (MONAI 1.6.1's ``strict_shape=False`` even loads nothing).
    Here every ``prefix`` tensor of ``network`` must be found, with its shape, or nothing is loaded.

    Args:
        network: the downstream network (DDP-wrapped or not).
        path: checkpoint file (a plain ``state_dict``, or a dict with a ``network``/``state_dict`` entry);
            ``None`` or ``""`` trains from scratch.
        prefix: the encoder's key prefix in ``network`` (UNETR and our ViT classifier: ``vit.``).
        source_prefix: the prefix in the checkpoint when it differs (default: the same as ``prefix``).
        required: raise when tensors are missing (``False``: load what matches and warn).
        inflate_channels: a 1-input-channel convolution (uni-modal pre-training, BrainMVP) loads into a C-channel
            one as C copies divided by C, so a multi-modal input of identical channels gives the same response.

    Returns:
        the number of tensors loaded.
    """
    target = unwrap(network)
    if not path:
        logger.info("no pre-trained checkpoint given (pretrained_ckpt is empty): training from scratch")
        return 0
    state = safe_load(path)
    for key in ("network", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    source_prefix = prefix if source_prefix is None else source_prefix
    own = {k: v for k, v in target.state_dict().items() if k.startswith(prefix)}
    if not own:
        raise ValueError(f"the network has no parameters under '{prefix}': cannot load an encoder into it")
    missing, mismatched, inflated, found = [], [], [], {}
    for key, value in own.items():
        src = source_prefix + key[len(prefix) :]
        if src not in state:
            missing.append(src)
        elif tuple(state[src].shape) != tuple(value.shape):
            tensor = state[src]
            if (
                inflate_channels
                and tensor.ndim == value.ndim >= 3
                and tensor.shape[1] == 1
                and tensor.shape[0] == value.shape[0]
                and tensor.shape[2:] == value.shape[2:]
            ):
                # a uni-modal stem into a multi-modal input: share the filter across channels, keep the response scale
                found[key] = tensor.repeat(1, value.shape[1], *([1] * (tensor.ndim - 2))) / value.shape[1]
                inflated.append(src)
            else:
                mismatched.append(f"{src}: checkpoint {tuple(tensor.shape)} vs network {tuple(value.shape)}")
        else:
            found[key] = state[src]
    if (missing or mismatched) and required:
        raise KeyError(
            f"pre-trained checkpoint {path} does not match the encoder: {len(missing)} of {len(own)} '{prefix}' tensors "
            f"missing, {len(mismatched)} with another shape. Missing: {missing[:10]}{' ...' if len(missing) > 10 else ''}. "
            f"Shape mismatches: {mismatched[:5]}. Check that the pre-training used the same encoder settings "
            "(hidden_size, num_layers, patch_size, roi_size, number of modalities)."
        )
    if missing or mismatched:
        logger.warning(
            f"{len(missing)} encoder tensors missing and {len(mismatched)} mismatched in {path}; they stay random"
        )
    target.load_state_dict(found, strict=False)
    if inflated:
        logger.info(f"inflated {inflated} from 1 input channel to the network's input channels")
    logger.info(f"loaded {len(found)} of {len(own)} pre-trained encoder tensors ('{prefix}*') from {path}")
    return len(found)


def require_checkpoint(path: str | os.PathLike | None, what: str, hint: str = "") -> str:
    """``path`` when it names a file, else a ``FileNotFoundError`` that says which checkpoint and how to get one.

    For checkpoints a run cannot do without (GiMP's frozen GroupMSA), where ``load_encoder`` would train from
    scratch on an empty path.

    Example: ``require_checkpoint(None, "GroupMSA gene encoder", "run gimp_groupmsa first")`` raises.
    """
    if not path or not os.path.isfile(path):
        given = f"{path} not found" if path else "no path given"
        raise FileNotFoundError(f"{what} checkpoint: {given}" + (f"; {hint}" if hint else ""))
    return str(path)


class BestModelSaver:
    """Attach to an evaluator: write the network's ``state_dict`` atomically whenever the key metric improves.

    Replaces ``CheckpointSaver(save_key_metric=True)``, which writes non-atomically in MONAI 1.6.1.

    Args:
        network: the network to save (DDP unwrapped, so keys never carry ``module.``).
        path: output file, e.g. ``models/model.pt``.
        contract: the run's input contract, written beside it as ``model.contract.json`` (the model file itself
            stays a plain ``state_dict`` that MONAI's ``CheckpointLoader`` loads strictly); inference and evaluation
            compare their own pipeline with it.
    """

    def __init__(self, network: torch.nn.Module, path: str, contract: Mapping[str, Any] | None = None) -> None:
        self.network = network
        self.path = path
        self.contract = contract

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not _is_main_process() or getattr(engine.state, "best_metric_epoch", -1) != engine.state.epoch:
            return
        atomic_save(unwrap(self.network).state_dict(), self.path)
        if self.contract is not None:
            from common.engines.contract import write_contract

            write_contract(self.contract, self.path)
        logger.info(
            f"saved best model (key metric = {engine.state.best_metric:.4f}, epoch {engine.state.epoch}) to {self.path}"
        )


class EncoderLoader:
    """Handler form of :func:`load_encoder`: loads the encoder when the engine starts (inference, evaluation)."""

    def __init__(
        self, network: torch.nn.Module, path: str, prefix: str = "vit.", source_prefix: str | None = None
    ) -> None:
        self.network, self.path, self.prefix, self.source_prefix = network, path, prefix, source_prefix

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        load_encoder(self.network, self.path, self.prefix, self.source_prefix)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (weights are verified with it before use)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
