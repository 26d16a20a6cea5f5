"""Import a BrainMVP checkpoint released by the paper's authors into this collection's brainmvp network.

Their files are ``torch.save`` dicts whose ``state_dict`` keys carry DDP's ``module.`` prefix, with the encoder
under ``uniformer.`` (UniFormer checkpoints) or ``encoder.`` (UNet checkpoints) and the templates in
``rep_template`` ``[8, 240, 240, 155]`` in the order flair, t1, t1c, t2, mra, pd, dwi, adc. This tool maps them
by key onto ``common.networks.brainmvp.BrainMVP`` (``backbone.encoder.*``, ``templates.templates``), loads
nothing unless every mapped tensor matches by name and shape, reports what it loaded, and writes a checkpoint the
downstream bundles read (``--pretrained_ckpt``). The file is read with ``weights_only=True``; get it yourself
and check its hash: nothing is downloaded here.

    python tools/import_brainmvp_weights.py --src BrainMVP_uniformer.pt --out bundles/brainmvp/models/model.pt
"""

from __future__ import annotations

import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.engines.checkpoint import atomic_save, safe_load  # noqa: E402
from common.networks.brainmvp import BrainMVP, build_backbone  # noqa: E402

OFFICIAL_MODALITIES = ["flair", "t1", "t1c", "t2", "mra", "pd", "dwi", "adc"]
# our modality names for theirs (the demo set and BraTS-2021 naming say t1ce)
RENAME = {"t1c": "t1ce"}
ENCODER_PREFIXES = {"uniformer": "uniformer.", "unet3d": "encoder."}


class UnmatchedKeysError(KeyError):
    """The source does not map onto the network: nothing was imported."""


def convert(source: dict, backbone: str = "uniformer", size: str = "small") -> tuple[dict, list[str]]:
    """Map an official state dict onto a fresh ``BrainMVP``; returns ``(state_dict, report lines)``."""
    state = source.get("state_dict", source) if isinstance(source, dict) else source
    state = {k.removeprefix("module."): v for k, v in state.items()}
    modalities = [RENAME.get(m, m) for m in OFFICIAL_MODALITIES]
    templates = state.pop("rep_template", None)
    canvas = tuple(templates.shape[-3:]) if templates is not None else (96, 96, 96)
    net = BrainMVP(build_backbone(backbone, size), modalities, canvas)
    target = net.state_dict()
    prefix = ENCODER_PREFIXES[backbone]
    mapped, unmatched = {}, []
    for key, value in state.items():
        if not key.startswith(prefix):
            unmatched.append(f"{key} (not under '{prefix}')")
            continue
        ours = "backbone.encoder." + key[len(prefix) :]
        if ours not in target:
            unmatched.append(f"{key} (no {ours} in the network)")
        elif tuple(target[ours].shape) != tuple(value.shape):
            unmatched.append(f"{key} (shape {tuple(value.shape)} vs {tuple(target[ours].shape)} of {ours})")
        else:
            mapped[ours] = value
    missing = sorted(k for k in target if k.startswith("backbone.encoder.") and k not in mapped)
    if unmatched or missing:
        raise UnmatchedKeysError(
            f"{len(unmatched)} source tensors do not map onto the {backbone}-{size} encoder and {len(missing)} encoder "
            f"tensors have no source; nothing imported.\nunmatched: {unmatched[:20]}{' ...' if len(unmatched) > 20 else ''}"
            f"\nmissing: {missing[:20]}{' ...' if len(missing) > 20 else ''}"
        )
    report = [f"encoder: {len(mapped)} tensors from '{prefix}*' -> 'backbone.encoder.*'"]
    if templates is not None:
        if templates.shape[0] != len(OFFICIAL_MODALITIES):
            raise UnmatchedKeysError(
                f"rep_template has {templates.shape[0]} templates, expected {len(OFFICIAL_MODALITIES)}"
            )
        mapped["templates.templates"] = templates.reshape(len(modalities), 1, *canvas).float()
        report.append(f"templates: rep_template {tuple(templates.shape)} -> templates.templates for {modalities}")
    else:
        report.append("templates: none in the source (downstream template augmentation will be off)")
    net.load_state_dict(mapped, strict=False)
    return net.state_dict(), report


def main(src: str, out: str, backbone: str = "uniformer", size: str = "small") -> None:
    """Convert ``src`` (an official BrainMVP checkpoint) and write ``out`` atomically."""
    state, report = convert(safe_load(src), backbone, size)
    atomic_save(state, out)
    print("\n".join(report) + f"\nwritten {out}")


if __name__ == "__main__":
    fire.Fire(main)
