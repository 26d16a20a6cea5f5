"""BrainMVP: multi-modal vision pre-training on uni-modal inputs (Rui et al., paper section 3).

Per sample, two modalities X_im, X_in of one study are drawn (``SampleModalityPaird``). X_im is masked twice with
r^3 cubes (p* = 0.875): once filled from X_in (cross-modal reconstruction, Eq. 2), once from the learnable
template T_m (modality-wise distillation, Eq. 3); one encoder-decoder without skips reconstructs X_im from
each, and from a configurable epoch the two views' pooled embeddings are contrasted (Eq. 4-5).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from common.losses.brainmvp import cross_modal_reconstruction_loss, distillation_loss, modality_contrastive_loss
from common.masking.cross_modal import cross_modal_mask, cube_mask
from common.networks.templates import ModalityTemplates, translation_map

__all__ = ["BrainMVP", "BrainMVPInputs", "build_backbone", "EncoderClassifier", "load_templates"]


class BrainMVP(nn.Module):
    """Backbone (``UniFormer3D`` or ``UNet3D`` built with ``skip_connections=False``) + modality templates.

    Args:
        backbone: an encoder-decoder with ``encode``, ``pool`` and a ``decoder`` (see ``common.networks``); its
            ``encoder.*`` keys are what downstream bundles load.
        modalities: every modality name of the data, in template order.
        template_canvas: template shape: the registered volume grid, or the crop for unregistered data.
        registered: the canvas is the registered volume grid (each crop reads its own place through its canvas map);
            ``False`` for crop-sized templates of unregistered data.
        cube: cube edge r.
        mask_ratio: p*.
        temperature: InfoNCE temperature tau.

    ``forward(image, modality_index, canvas_map, use_contrastive)`` takes ``image`` ``[B, 2, *roi]`` (channel 0:
    X_im, channel 1: X_in) and each crop's canvas map (``common.transforms.modality.CanvasMapd``), and returns the reconstructions, the masked inputs and ``loss_cmr``, ``loss_md`` and,
    when ``use_contrastive``, ``loss_cl``; the trainer weights them by ``lambda_MD`` and ``lambda_CL`` (Eq. 6).
    """

    def __init__(
        self,
        backbone: nn.Module,
        modalities: Sequence[str],
        template_canvas: Sequence[int],
        registered: bool = True,
        cube: int = 8,
        mask_ratio: float = 0.875,
        temperature: float = 0.1,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.templates = ModalityTemplates(modalities, template_canvas, registered)
        self.cube, self.mask_ratio, self.temperature = cube, mask_ratio, temperature

    @property
    def encoder(self) -> nn.Module:
        return self.backbone.encoder

    def forward_view(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction and pooled embedding of one masked view, from one encoder pass."""
        feats = self.backbone.encode(x)
        return self.backbone.decoder(feats), self.backbone.pool(feats)

    def forward(
        self,
        image: torch.Tensor,
        modality_index: torch.Tensor,
        canvas_map: torch.Tensor | None = None,
        use_contrastive: bool = True,
    ) -> dict[str, torch.Tensor]:
        x_m, x_n = image[:, :1], image[:, 1:2]  # [B, 1, *roi] each
        roi = x_m.shape[2:]
        t_m = self.templates.sample(modality_index[:, :1], canvas_map, roi)  # [B, 1, *roi]: T_m where X_im lies
        x_cmr = cross_modal_mask(x_m, x_n, cube_mask(roi, x_m.shape[0], self.cube, self.mask_ratio, device=x_m.device))
        x_md = cross_modal_mask(x_m, t_m, cube_mask(roi, x_m.shape[0], self.cube, self.mask_ratio, device=x_m.device))
        pred_cmr, f = self.forward_view(x_cmr)
        pred_md, g = self.forward_view(x_md)
        out = {
            "pred": pred_cmr,
            "pred_md": pred_md,
            "masked": x_cmr,
            "masked_md": x_md,
            "image": x_m,
            "loss_cmr": cross_modal_reconstruction_loss(pred_cmr, x_m),
            "loss_md": distillation_loss(pred_md, x_m),
        }
        if use_contrastive:
            out["loss_cl"] = modality_contrastive_loss(f, g, self.temperature)
        return out


class BrainMVPInputs:
    """``network_kwargs`` for ``SelfSupervisedTrainer``: moves the sample's modality indices and canvas maps (or, from
    older pipelines, crop boxes) to the device and switches the contrastive term on from ``cl_start_epoch`` (paper: epoch 1000 of 1500)."""

    def __init__(self, cl_start_epoch: int = 1) -> None:
        self.cl_start_epoch = cl_start_epoch

    def __call__(self, batch: dict, engine: Any) -> dict[str, Any]:
        device = engine.state.device
        canvas_map = batch.get("canvas_map")
        if canvas_map is None and "box_start" in batch:
            canvas_map = translation_map(batch["box_start"])
        return {
            "modality_index": batch["modality_index"].to(device),
            "canvas_map": None if canvas_map is None else torch.as_tensor(canvas_map).to(device),
            "use_contrastive": engine.state.epoch >= self.cl_start_epoch,
        }


def build_backbone(
    name: str = "uniformer",
    size: str = "small",
    in_channels: int = 1,
    out_channels: int = 1,
    skip_connections: bool = False,
    proj_dim: int | None = None,
    layout: str = "official",
    checkpoint_mlp: bool = False,
) -> nn.Module:
    """BrainMVP's backbones by name, so configs choose one with a string.

    Args:
        name: ``uniformer`` (the paper's default) or ``unet3d``.
        size: ``small`` (paper) or ``tiny`` (tests, smoke runs).
        in_channels, out_channels: 1 and 1 in pre-training; modalities and classes downstream.
        skip_connections: False in pre-training (paper 3.1), True downstream.
        proj_dim: optional projection head for the contrastive embedding (None: the pooled feature itself).
        layout: ``official`` (default: the BrainMVP authors' networks, the paper's; also what checkpoints imported
            by ``tools/import_brainmvp_weights.py`` need) or ``collection`` (a faster, different network: the
            UniFormer paper's stride-4 stem with 8x fewer tokens per stage, GroupNorm embeddings, no final
            BatchNorm; see ``common.networks.uniformer`` and ``common.networks.unet3d`` and the bundles' docs).
        checkpoint_mlp: UniFormer only: recompute the local blocks' MLPs in the backward pass instead of storing
            their hidden activations (same maths and weights; less memory, a little more compute).
    """
    from common.networks.unet3d import unet3d, unet3d_tiny
    from common.networks.uniformer import uniformer_small, uniformer_tiny

    factories = {
        ("uniformer", "small"): uniformer_small,
        ("uniformer", "tiny"): uniformer_tiny,
        ("unet3d", "small"): unet3d,
        ("unet3d", "tiny"): unet3d_tiny,
    }
    if (name, size) not in factories:
        raise ValueError(f"unknown backbone {name!r} of size {size!r}; choose from {sorted(factories)}")
    if layout not in ("collection", "official"):
        raise ValueError(f"unknown layout {layout!r} for the {name} backbone; choose from ['collection', 'official']")
    kwargs = {"skip_connections": skip_connections, "proj_dim": proj_dim, "layout": layout}
    if checkpoint_mlp:
        if name != "uniformer":
            raise ValueError(f"checkpoint_mlp applies to the uniformer backbone only, not {name!r}")
        kwargs["checkpoint_mlp"] = True
    return factories[(name, size)](in_channels, out_channels, **kwargs)


class EncoderClassifier(nn.Module):
    """A BrainMVP backbone's encoder + global pooling + linear head (BrainMVP's classification downstream).

    Args:
        backbone: a network from :func:`build_backbone` (only its ``encoder`` is kept).
        num_classes: outputs of the head; 0 returns the pooled features (feature extraction).
        dropout: dropout before the head.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.encoder = backbone.encoder
        width = self.encoder(torch.zeros(1, _in_channels(self.encoder), 32, 32, 32))[-1].shape[1]
        self.head = (
            nn.Sequential(nn.Dropout(dropout), nn.Linear(width, num_classes)) if num_classes > 0 else nn.Identity()
        )

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(x)

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(features[-1].mean(dim=(2, 3, 4)))

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits, or with ``return_features`` also the deepest encoder feature map (see ``EncoderDecoder.forward``)."""
        features = self.encode(x)
        out = self.decode(features)
        return (out, features[-1]) if return_features else out


def _in_channels(encoder: nn.Module) -> int:
    first = next(m for m in encoder.modules() if isinstance(m, nn.Conv3d))
    return first.in_channels


def load_templates(path: str | None, modalities: Sequence[str]) -> tuple[ModalityTemplates | None, list[str]]:
    """Frozen templates for the downstream channels, by modality name, from a brainmvp checkpoint.

    Returns ``(templates, found)``: a ``ModalityTemplates`` whose rows follow ``modalities`` (rows of names the
    checkpoint lacks stay zero and are never used), and the names found; ``(None, [])`` when the checkpoint has
    no templates (e.g. training from scratch), so the caller switches the augmentation off.
    """
    import logging

    from common.engines.checkpoint import safe_load

    log = logging.getLogger(__name__)
    if not path:
        log.info("no pre-trained checkpoint: template augmentation is off")
        return None, []
    state = safe_load(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if "templates.templates" not in state or "templates._extra_state" not in state:
        log.info(f"{path} holds no modality templates: template augmentation is off")
        return None, []
    names = list(state["templates._extra_state"]["modalities"])
    source = state["templates.templates"]
    found = [m for m in modalities if m in names]
    if not found:
        log.info(f"templates in {path} cover {names}, none of {list(modalities)}: template augmentation is off")
        return None, []
    registered = bool(state["templates._extra_state"].get("registered", True))
    frozen = ModalityTemplates(modalities, source.shape[2:], registered)
    with torch.no_grad():
        for i, m in enumerate(modalities):
            if m in names:
                frozen.templates[i] = source[names.index(m)]
    frozen.requires_grad_(False)
    log.info(f"loaded frozen templates for {found} from {path} (canvas {tuple(source.shape[2:])})")
    return frozen, found
