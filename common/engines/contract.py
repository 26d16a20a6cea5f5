"""The input contract of a pre-trained encoder: what its inputs looked like, stored with its weights.

An encoder learnt on RAS-oriented, 1-99-percentile-scaled T1/T1ce/T2/FLAIR crops at native spacing computes
nonsense on FLAIR/T1/T1ce/T2 in another order, another spacing or z-scored intensities, and nothing in the weights
says so. A contract is a plain dict (it travels inside checkpoints loaded with ``weights_only=True``) built from the
run's own preprocessing transforms, so it says what the pipeline really did:

``modalities`` (and whether their order is the channel order), ``orientation``, ``spacing`` (``None``: native),
``intensity`` (the normalisation transform and its settings), ``crop_size``, ``patch_size`` (ViT) and ``network``
(layout and sizes). Downstream bundles build theirs the same way and :func:`check_contract` compares the two at
start-up, naming each mismatch; inference compares a fine-tuned model's contract with its own pipeline.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["input_contract", "describe_intensity", "check_contract", "ContractError", "read_contract", "write_contract"]
logger = logging.getLogger(__name__)

CONTRACT_KEY = "input_contract"
# what must agree for two normalisations to give the encoder the same kind of input: the transform and its output
# range (BrainMVP itself scales 1-99 percentiles in pre-training and 5-95 downstream, both to [0, 1]); other settings
# that differ are reported as notes
_INTENSITY_MUST_MATCH = {
    "ScaleIntensityRangePercentiles": ("b_min", "b_max"),
    "ScaleIntensityRange": ("b_min", "b_max"),
    "NormalizeIntensity": ("nonzero",),
    "ScaleIntensity": ("minv", "maxv"),
}
_INTENSITY = {
    "ScaleIntensityRangePercentilesd": ("lower", "upper", "b_min", "b_max", "clip", "relative", "channel_wise"),
    "ScaleIntensityRanged": ("a_min", "a_max", "b_min", "b_max", "clip"),
    "NormalizeIntensityd": ("subtrahend", "divisor", "nonzero", "channel_wise"),
    "ScaleIntensityd": ("minv", "maxv", "factor", "channel_wise"),
}


class ContractError(ValueError):
    """A pre-trained encoder's input contract differs from the run that wants to use it."""


def _plain(value: Any) -> Any:
    """JSON-able, ``weights_only``-safe copy: tensors and arrays become lists, tuples lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def describe_intensity(transform: Any) -> dict[str, Any] | None:
    """``{"transform": name, <settings>}`` of a MONAI intensity-normalisation dictionary transform, else ``None``."""
    name = type(transform).__name__
    if name not in _INTENSITY:
        return None
    inner = next((v for v in vars(transform).values() if type(v).__name__ == name[:-1]), transform)
    return {"transform": name[:-1], **{k: _plain(getattr(inner, k)) for k in _INTENSITY[name] if hasattr(inner, k)}}


def input_contract(
    transforms: Sequence[Any],
    modalities: Sequence[str],
    crop_size: Sequence[int],
    network: Mapping[str, Any],
    patch_size: Sequence[int] | int | None = None,
    channel_order: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """The contract of a pipeline: orientation, spacing and intensity read off its (instantiated) ``transforms``.

    Args:
        transforms: the deterministic preprocessing transforms (``Orientationd``, ``Spacingd``, normalisation, ...).
        modalities: input modalities, in channel order.
        crop_size: the network's input crop.
        network: what defines the encoder's layout, e.g. ``{"name": "vit", "hidden_size": 768, ...}``.
        patch_size: the ViT patch size (its position embeddings fix ``crop_size``); ``None`` for convolutional nets.
        channel_order: the encoder reads the modalities as channels in this order (M2-MAE); ``False`` when each
            modality is its own input (BrainMVP's uni-modal pre-training: names matter, order does not).
        extra: further entries (e.g. the genetics variant list of an MRM checkpoint).
    """
    orientation, spacing, intensity = None, None, None
    for t in transforms:
        name = type(t).__name__
        if name == "Orientationd":
            orientation = "".join(t.ornt_transform.axcodes) if hasattr(t, "ornt_transform") else None
        elif name == "Spacingd":
            pixdim = [float(p) for p in t.spacing_transform.pixdim]
            spacing = None if all(p <= 0 for p in pixdim) else pixdim
        elif intensity is None:
            intensity = describe_intensity(t)
    ps = [int(patch_size)] * len(crop_size) if isinstance(patch_size, int) else patch_size
    return _plain(
        {
            "modalities": list(modalities),
            "channel_order": bool(channel_order),
            "orientation": orientation,
            "spacing": spacing,
            "intensity": intensity,
            "crop_size": list(crop_size),
            "patch_size": None if ps is None else list(ps),
            "network": dict(network),
            **extra,
        }
    )


def _intensity_differences(pretrained: Mapping | None, ours: Mapping | None) -> tuple[list[str], list[str]]:
    """(problems, notes) between two intensity descriptions."""
    if pretrained == ours:
        return [], []
    if pretrained is None or ours is None or pretrained.get("transform") != ours.get("transform"):
        return [f"intensity normalisation: pre-trained with {pretrained}, this run uses {ours}"], []
    must = _INTENSITY_MUST_MATCH.get(pretrained["transform"], tuple(pretrained))
    problems = [
        f"intensity {pretrained['transform']} {k}: pre-trained {pretrained.get(k)!r}, this run {ours.get(k)!r}"
        for k in must
        if pretrained.get(k) != ours.get(k)
    ]
    notes = [
        f"intensity {pretrained['transform']} {k}: pre-trained {pretrained.get(k)!r}, this run {ours.get(k)!r}"
        for k in sorted(set(pretrained) | set(ours))
        if k not in must and k != "transform" and pretrained.get(k) != ours.get(k)
    ]
    return problems, notes


def _differences(pretrained: Mapping[str, Any], ours: Mapping[str, Any]) -> list[str]:
    problems = []
    mods_p, mods_o = list(pretrained.get("modalities", [])), list(ours.get("modalities", []))
    if pretrained.get("channel_order", True):
        if mods_p != mods_o:
            how = " (the same contrasts in another order)" if sorted(mods_p) == sorted(mods_o) else ""
            problems.append(f"modalities: pre-trained on channels {mods_p}, this run feeds {mods_o}{how}")
    elif not set(mods_o) & set(mods_p):
        problems.append(f"modalities: pre-trained on {mods_p}, this run feeds none of them ({mods_o})")
    for key, what in (("orientation", "orientation"), ("spacing", "spacing (None = native)")):
        if pretrained.get(key) != ours.get(key):
            problems.append(f"{what}: pre-trained with {pretrained.get(key)}, this run uses {ours.get(key)}")
    problems += _intensity_differences(pretrained.get("intensity"), ours.get("intensity"))[0]
    if pretrained.get("patch_size") is not None:
        for key in ("patch_size", "crop_size"):  # a ViT's position embeddings fix both
            if pretrained.get(key) != ours.get(key):
                problems.append(f"{key}: pre-trained with {pretrained.get(key)}, this run uses {ours.get(key)}")
    net_p, net_o = pretrained.get("network", {}), ours.get("network", {})
    for key in sorted(set(net_p) & set(net_o)):
        if net_p[key] != net_o[key]:
            problems.append(f"network {key}: pre-trained {net_p[key]!r}, this run {net_o[key]!r}")
    return problems


def read_contract(path: str | os.PathLike) -> dict[str, Any] | None:
    """The contract stored in a checkpoint (``input_contract`` entry) or in its ``<name>.contract.json`` beside it."""
    from common.engines.checkpoint import safe_load

    path = Path(path)
    sidecar = path.with_suffix(".contract.json")
    if sidecar.is_file():
        return json.loads(sidecar.read_text())
    state = safe_load(path)
    return state.get(CONTRACT_KEY) if isinstance(state, Mapping) else None


def write_contract(contract: Mapping[str, Any], model_path: str | os.PathLike) -> Path:
    """Write ``<model>.contract.json`` beside a model file (for files others load strictly, e.g. CheckpointLoader)."""
    sidecar = Path(model_path).with_suffix(".contract.json")
    sidecar.parent.mkdir(parents=True, exist_ok=True)
    tmp = sidecar.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_plain(contract), indent=2) + "\n")
    os.replace(tmp, sidecar)
    return sidecar


def check_contract(
    path: str | None, contract: Mapping[str, Any], adapt: bool = False, what: str = "pre-trained"
) -> list[str]:
    """Compare the contract stored with ``path`` with this run's ``contract``; stop on a difference unless ``adapt``.

    Args:
        path: the checkpoint (``None`` / ``""``: nothing to check, e.g. training from scratch).
        contract: this run's contract (:func:`input_contract`).
        adapt: accept the differences (logged as warnings), for a user who adapts on purpose.
        what: how the message names the checkpoint.

    Returns:
        the differences found (empty when the contracts agree or the checkpoint has none).
    """
    if not path:
        return []
    stored = read_contract(path)
    if stored is None:
        logger.warning(f"{path} carries no input contract (an older or foreign checkpoint): its inputs are not checked")
        return []
    problems = _differences(stored, contract)
    if problems and not adapt:
        raise ContractError(
            f"the {what} checkpoint {path} was trained on other inputs than this run feeds it:\n  - "
            + "\n  - ".join(problems)
            + "\nchange this run's settings to match, or set --adapt_contract true to fine-tune across the difference"
        )
    for p in problems:
        logger.warning(f"input contract differs from {path} (adapting, as asked): {p}")
    for note in _intensity_differences(stored.get("intensity"), contract.get("intensity"))[1]:
        logger.info(f"input contract note ({path}): {note}")
    if not problems:
        logger.info(
            f"input contract of {path} matches this run: {stored['modalities']}, {stored['orientation']}, "
            f"spacing {stored['spacing'] or 'native'}, {stored['intensity'] and stored['intensity']['transform']}"
        )
    return problems
