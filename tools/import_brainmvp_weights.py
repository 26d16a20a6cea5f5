"""Import a BrainMVP checkpoint released by the paper's authors into this collection's brainmvp network.

Their files are ``torch.save`` dicts whose ``state_dict`` keys carry DDP's ``module.`` prefix, with the encoder
under ``uniformer.`` (UniFormer checkpoints; their pre-training script's ``RecModel`` nests it as
``encoder.uniformer.``, also accepted) or at the top level (UNet checkpoints: their UNet ``RecModel`` holds its
modules directly; ``encoder.`` is also accepted) and the templates in ``rep_template`` ``[8, 240, 240, 155]`` in
the order flair, t1, t1c, t2, mra, pd, dwi, adc. This tool maps them onto
``common.networks.brainmvp.BrainMVP`` (``backbone.encoder.*``, ``templates.templates``), loads nothing unless
every mapped tensor matches by name and shape (anything else is refused with a listing), reports what it loaded,
and writes a checkpoint the downstream bundles read (``--pretrained_ckpt``). The file is read with
``weights_only=True``; get it yourself and check its hash: nothing is downloaded here.

UniFormer: the authors' UniFormer-S differs from this collection's default one (stride-2 patch embeddings in all
four stages with a per-voxel layer norm, layer norm epsilon 1e-6, a batch norm on the deepest feature, other
module names, and an input permuted from (H, W, D) to (D, H, W) before the first layer), so their weights are
mapped onto the ``layout="official"`` variant of ``common.networks.uniformer`` and compute the same function:

* names: ``patch_embed{i}.proj`` / ``.norm`` -> ``embeds.{i-1}.0`` / ``.1``; ``blocks{s}.{j}`` ->
  ``stages.{s-1}.{j}`` with ``pos_embed`` -> ``pos``, local blocks ``conv1`` / ``attn`` / ``conv2`` ->
  ``aggregate.0`` / ``.1`` / ``.2`` and ``mlp.fc1`` / ``mlp.fc2`` -> ``mlp.0`` / ``mlp.2``, global blocks
  ``attn.proj`` -> ``attn.out_proj`` and ``mlp.fc1`` / ``mlp.fc2`` -> ``mlp.linear1`` / ``mlp.linear2``;
  ``norm`` -> ``norm`` (batch-norm running statistics included);
* every 3-D convolution kernel is permuted ``(out, in, k0, k1, k2) -> (out, in, k1, k2, k0)``, so the network
  runs on un-permuted (H, W, D) inputs and its features keep the input's axis order (theirs are (D, H, W));
* ``attn.qkv`` needs no reordering: both split its outputs as (q/k/v, head, channel).

Only the encoder and the templates are imported; the authors' pre-training decoder (``decoder.decoder2..5``,
``decoder.proj1``, ``decoder.out_1``: a different architecture no downstream bundle loads) is skipped and
reported. The written file holds ``backbone_layout`` (``"official"``) next to the weights: run the downstream
bundles with ``--backbone_layout official`` (networks from ``build_backbone(..., layout="official")``).

UNet3D: the authors' pre-training UNet (their ``RecModel``, c = 32 channels) is another architecture than this
collection's default UNet3D, so its weights are mapped onto the ``layout="official"`` variant of
``common.networks.unet3d`` (``UNet3DOfficialEncoder``), which has their module names: ``conv1a``, ``conv1b``,
``ds1``, ``conv2a``, ``conv2b``, ``ds2``, ``conv3a``, ``conv3b``, ``ds3``, ``conv4a..d`` (blocks: ``gn1``,
``conv1``, ``gn2``, ``conv2``) -> ``backbone.encoder.<same name>``, tensors unchanged (their UNet does not permute
its input). Their pre-training decoder (``up4conva``, ``up4convb``, ``up3conva``, ``up3convb``, ``up2conva``,
``up2convb``, ``up1conv``, and ``ds_out`` when deeply supervised; at the top level or under ``decoder.``) is
skipped and reported; any other key is refused. Run the downstream bundles with ``--backbone unet3d
--backbone_layout official``.

    python tools/import_brainmvp_weights.py --src BrainMVP_uniformer.pt --out bundles/brainmvp/models/model.pt
    python tools/import_brainmvp_weights.py --src BrainMVP_unet.pt --out model.pt --backbone unet3d
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import fire
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.engines.checkpoint import atomic_save, safe_load  # noqa: E402
from common.networks.brainmvp import BrainMVP, build_backbone  # noqa: E402

OFFICIAL_MODALITIES = ["flair", "t1", "t1c", "t2", "mra", "pd", "dwi", "adc"]
# our modality names for theirs (the demo set and BraTS-2021 naming say t1ce)
RENAME = {"t1c": "t1ce"}
# where the authors' files keep the encoder (after 'module.'): their UniFormer (released weights, and their
# pre-training RecModel's nesting) and their UNet (its RecModel's top level; 'encoder.' also accepted), first match
ENCODER_PREFIXES = {"uniformer": ("uniformer.", "encoder.uniformer."), "unet3d": ("encoder.", "")}
# the backbone layout each imported backbone needs downstream (written next to the weights)
LAYOUTS = {"uniformer": "official", "unet3d": "official"}
LAYOUT_KEY = "backbone_layout"
# the authors' pre-training decoders: not ours, never loaded downstream, skipped. UniFormer: UniSegDecoder; UNet:
# RecModel's up-sampling path (top level, or under 'decoder.'), with the deep-supervision heads when it has them
OFFICIAL_DECODERS = {
    "uniformer": re.compile(r"decoder\.(decoder[2-5]|proj1|out_1)\."),
    "unet3d": re.compile(r"(decoder\.)?(up[2-4]conv[ab]|up1conv|ds_out\.\d+)\."),
}

_PARAM = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_EMBED = re.compile(rf"patch_embed([1-4])\.(proj|norm)\.{_PARAM}")
_BLOCK = re.compile(rf"blocks([1-4])\.(\d+)\.(.+)\.{_PARAM}")
_NORM = re.compile(rf"norm\.{_PARAM}")
# their block sub-modules -> ours: stages 1-2 (local, CBlock) and 3-4 (global, SBlock)
_LOCAL = {
    "pos_embed": "pos",
    "norm1": "norm1",
    "conv1": "aggregate.0",
    "attn": "aggregate.1",
    "conv2": "aggregate.2",
    "norm2": "norm2",
    "mlp.fc1": "mlp.0",
    "mlp.fc2": "mlp.2",
}
_GLOBAL = {
    "pos_embed": "pos",
    "norm1": "norm1",
    "attn.qkv": "attn.qkv",
    "attn.proj": "attn.out_proj",
    "norm2": "norm2",
    "mlp.fc1": "mlp.linear1",
    "mlp.fc2": "mlp.linear2",
}


# the authors' UNet encoder modules (UNet3DOfficialEncoder has the same names)
_UNET = re.compile(rf"(conv1a|ds[1-3]|conv1b|conv2[ab]|conv3[ab]|conv4[a-d])\.(.+\.)?{_PARAM}")


class UnmatchedKeysError(KeyError):
    """The source does not map onto the network: nothing was imported."""


def official_uniformer_name(key: str) -> str | None:
    """Our ``UniFormerEncoder`` (official layout) name for one of the authors' UniFormer keys (no prefix), or
    ``None`` when it has no counterpart."""
    if m := _EMBED.fullmatch(key):
        return f"embeds.{int(m[1]) - 1}.{0 if m[2] == 'proj' else 1}.{m[3]}"
    if m := _BLOCK.fullmatch(key):
        ours = (_LOCAL if int(m[1]) <= 2 else _GLOBAL).get(m[3])
        return f"stages.{int(m[1]) - 1}.{m[2]}.{ours}.{m[4]}" if ours else None
    if m := _NORM.fullmatch(key):
        return f"norm.{m[1]}"
    return None


def official_uniformer_tensor(value: torch.Tensor) -> torch.Tensor:
    """Their tensor in our layout: 3-D convolution kernels act on (D, H, W) = our axes (2, 0, 1) there, so
    ``(out, in, k0, k1, k2)`` becomes ``(out, in, k1, k2, k0)``; everything else is unchanged."""
    return value.permute(0, 1, 3, 4, 2).contiguous() if value.ndim == 5 else value


def official_unet_name(key: str) -> str | None:
    """Our ``UNet3DOfficialEncoder`` name for one of the authors' UNet encoder keys (no prefix): the same name, or
    ``None`` when it is not under one of their encoder modules."""
    return key if _UNET.fullmatch(key) else None


def _map_encoder(state: dict, backbone: str) -> tuple[dict, list[str], list[str]]:
    """``(ours-name -> tensor, unmatched keys, skipped keys)`` for the encoder part of a source state dict."""
    mapped, unmatched, skipped = {}, [], []
    prefixes, decoder = ENCODER_PREFIXES[backbone], OFFICIAL_DECODERS[backbone]
    for key, value in state.items():
        if decoder.match(key):
            skipped.append(key)
            continue
        if backbone == "uniformer":
            prefix = next((p for p in prefixes if key.startswith(p)), None)
            if prefix is None:
                unmatched.append(f"{key} (not under {' or '.join(repr(p) for p in prefixes)})")
                continue
            name = official_uniformer_name(key[len(prefix) :])
            if name is None:
                unmatched.append(f"{key} (no counterpart in the official-layout UniFormer)")
                continue
            value = official_uniformer_tensor(value)
        else:
            prefix = next(p for p in prefixes if key.startswith(p))  # '' always matches
            name = official_unet_name(key[len(prefix) :])
            if name is None:
                unmatched.append(f"{key} (neither a module of the authors' UNet encoder nor of its decoder)")
                continue
        ours = "backbone.encoder." + name
        if ours in mapped:
            unmatched.append(f"{key} (a second source for {ours})")
        else:
            mapped[ours] = (key, value)
    return mapped, unmatched, skipped


def convert(source: dict, backbone: str = "uniformer", size: str = "small") -> tuple[dict, list[str]]:
    """Map an official state dict onto a fresh ``BrainMVP``; returns ``(state_dict, report lines)``.

    The state dict is the network's plus ``backbone_layout`` (a string: the ``layout`` of ``build_backbone`` the
    weights need), which ``main`` writes and the downstream loaders ignore.
    """
    if backbone not in LAYOUTS:
        raise ValueError(f"unknown backbone {backbone!r}; choose from {sorted(LAYOUTS)}")
    state = source.get("state_dict", source) if isinstance(source, dict) else source
    state = {k.removeprefix("module."): v for k, v in state.items()}
    modalities = [RENAME.get(m, m) for m in OFFICIAL_MODALITIES]
    templates = state.pop("rep_template", None)
    canvas = tuple(templates.shape[-3:]) if templates is not None else (96, 96, 96)
    layout = LAYOUTS[backbone]
    net = BrainMVP(build_backbone(backbone, size, layout=layout), modalities, canvas)
    target = net.state_dict()
    candidates, unmatched, skipped = _map_encoder(state, backbone)
    mapped = {}
    for ours, (key, value) in candidates.items():
        if ours not in target:
            unmatched.append(f"{key} (no {ours} in the network)")
        elif tuple(target[ours].shape) != tuple(value.shape):
            unmatched.append(f"{key} (shape {tuple(value.shape)} vs {tuple(target[ours].shape)} of {ours})")
        else:
            mapped[ours] = value
    missing = sorted(k for k in target if k.startswith("backbone.encoder.") and k not in mapped)
    if unmatched or missing:
        hint = (
            " (the unet3d import maps the authors' UNet, their RecModel, onto the official-layout UNet3D: size "
            "'small' is their init_channels 32; this collection's own UNet3D checkpoints need no import)"
            if backbone == "unet3d"
            else ""
        )
        raise UnmatchedKeysError(
            f"{len(unmatched)} source tensors do not map onto the {backbone}-{size} encoder ({layout} layout) and "
            f"{len(missing)} encoder tensors have no source; nothing imported{hint}."
            f"\nunmatched: {unmatched[:20]}{' ...' if len(unmatched) > 20 else ''}"
            f"\nmissing: {missing[:20]}{' ...' if len(missing) > 20 else ''}"
        )
    if backbone == "uniformer":
        report = [
            f"encoder: {len(mapped)} tensors from the authors' UniFormer ('uniformer.*') -> 'backbone.encoder.*' "
            "(official layout: names mapped, 3-D convolution kernels permuted to the input's axis order)"
        ]
    else:
        report = [
            f"encoder: {len(mapped)} tensors from the authors' UNet ('conv1a' ... 'conv4d', top level or 'encoder.*') "
            "-> 'backbone.encoder.*' (official layout: same names, tensors unchanged)"
        ]
    if skipped:
        report.append(f"skipped: {len(skipped)} tensors of the authors' pre-training decoder (not used downstream)")
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
    report.append(
        f"backbone layout: {layout} (stored as '{LAYOUT_KEY}'); run the downstream bundles with "
        f"--backbone {backbone} --backbone_layout {layout}"
    )
    return {**net.state_dict(), LAYOUT_KEY: layout}, report


def main(src: str, out: str, backbone: str = "uniformer", size: str = "small") -> None:
    """Convert ``src`` (an official BrainMVP checkpoint) and write ``out`` atomically."""
    state, report = convert(safe_load(src), backbone, size)
    atomic_save(state, out)
    print("\n".join(report) + f"\nwritten {out}")


if __name__ == "__main__":
    fire.Fire(main)
