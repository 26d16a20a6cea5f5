"""The 2D ViT transfer module of the MRM downstream bundles (paper sec. 3.4 and 4.1: a pre-trained image encoder,
a randomly initialised task head, fine-tuned or linearly probed).

One encoder for all five tasks: MONAI's ViT built by :func:`common.networks.vit.unetr_vit` (``spatial_dims=2``) and
stored as ``vit``, so the ``vit.*`` keys of an ``mrm`` checkpoint load unchanged into

- :class:`TransferViT2D`: classification and regression heads (APTOS 5 ordered classes, glioma 3 grades, RFMiD
  multi-label, CRP continuous + binary targets), and
- :func:`transfer_unetr_2d`: MONAI's ``UNETR(spatial_dims=2)`` for segmentation (PALM optic disc, atrophy).

Targets and their kinds are named in the config (``{"age": "continuous", "sex": "binary"}``), one output channel
each. Continuous targets are standardised with training-split statistics for the loss, and the network returns them
de-standardised, in the target's own units (so inference, TorchScript exports and metrics never see z-scores);
binary targets are logits (a sigmoid gives probabilities, ROC-AUC is the same on either).

Also: :class:`TargetLoss` (standardised MSE + binary cross-entropy, missing targets skipped) and
:func:`layer_decay_param_groups` (layer-wise learning-rate decay as in BEiT / MAE fine-tuning).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import UNETR

from common.networks.vit import fused_unetr
from common.networks.vit_classifier import ViTClassifier

__all__ = [
    "TARGET_KINDS",
    "TransferViT2D",
    "TargetLoss",
    "target_kinds",
    "binary_probabilities",
    "layer_id",
    "layer_decay_param_groups",
    "transfer_unetr_2d",
]

logger = logging.getLogger(__name__)

TARGET_KINDS = ("continuous", "binary")


def target_kinds(targets: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """Names and kinds of ``targets`` in channel order, refusing an unknown kind or an empty mapping.

    Args:
        targets: ordered ``{name: kind}``, kind ``"continuous"`` or ``"binary"``.
    """
    if not targets:
        raise ValueError("targets is empty: name at least one target, e.g. {'age': 'continuous'}")
    bad = {k: v for k, v in targets.items() if v not in TARGET_KINDS}
    if bad:
        raise ValueError(f"unknown target kinds {bad}: each target is one of {TARGET_KINDS}")
    return list(targets), list(targets.values())


def _stats_tensors(
    names: Sequence[str], kinds: Sequence[str], target_stats: Mapping[str, Mapping[str, float]] | str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``mean`` and ``std``: the training statistics of continuous targets, 0 and 1 elsewhere
    (``"checkpoint"``: 0 and 1 until a checkpoint that holds them loads, without the warning of ``None``)."""
    mean, std = torch.zeros(len(names)), torch.ones(len(names))
    continuous = [n for n, k in zip(names, kinds) if k == "continuous"]
    if isinstance(target_stats, str):
        if target_stats != "checkpoint":
            raise ValueError(f"target_stats must be a mapping, None or 'checkpoint', got {target_stats!r}")
        return mean, std  # restored by loading a checkpoint: nothing to warn about
    if continuous and target_stats is None:
        logger.warning(
            f"no target_stats for the continuous targets {continuous}: regressing them in raw units (mean 0, std 1);"
            " fit them on the training split with common.data.tasks2d.fit_target_stats (a checkpoint restores them)"
        )
        return mean, std
    missing = [n for n in continuous if n not in target_stats or {"mean", "std"} - set(target_stats[n])]
    if missing:
        raise KeyError(f"target_stats has no 'mean'/'std' for the continuous targets {missing}")
    for i, (name, kind) in enumerate(zip(names, kinds)):
        if kind == "continuous":
            mean[i], std[i] = float(target_stats[name]["mean"]), float(target_stats[name]["std"])
    if (std <= 0).any():
        raise ValueError(f"target_stats std must be positive, got {dict(zip(names, std.tolist()))}")
    return mean, std


class TransferViT2D(ViTClassifier):
    """2D ViT encoder (``vit``) + mean-pooled tokens + LayerNorm + a linear head, one output channel per class or
    per target; continuous targets come out de-standardised (``mean + std * z``, buffers kept in the checkpoint).

    Reuses :class:`~common.networks.vit_classifier.ViTClassifier` (encoder, pooling, probe norm, freezing) and adds
    the per-target output scaling; with ``targets=None`` it is that classifier with 2D defaults.

    Args:
        num_outputs: number of classes of a multi-class head (APTOS 5, glioma 3); ignored when ``targets`` is given.
        targets: ordered ``{name: "continuous" | "binary"}``, one channel each (RFMiD: every label ``binary``;
            CRP: ``age``, ``bmi``, ... ``continuous``, ``sex``, ``smoking`` ``binary``).
        target_stats: ``{name: {"mean": m, "std": s}}`` of the continuous targets on the training split
            (:func:`common.data.tasks2d.fit_target_stats`); ``None`` leaves mean 0, std 1 until a checkpoint loads
            (with a warning); ``"checkpoint"`` says that one will (inference, evaluation).
        linear_probe: freeze the encoder (no gradients, eval mode); only the norm and head train.
        in_channels, img_size, patch_size, hidden_size, mlp_dim, num_layers, num_heads, qkv_bias, dropout_rate,
            fused_attention: the encoder, as for :func:`~common.networks.vit.unetr_vit` (ViT-B/16 at 224 default).

    Example::

        >>> net = TransferViT2D(targets={"age": "continuous", "sex": "binary"},
        ...                     target_stats={"age": {"mean": 60.0, "std": 8.0}},
        ...                     img_size=32, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4)
        >>> net(torch.randn(2, 3, 32, 32)).shape  # [B, targets]: age in years, sex logit
        torch.Size([2, 2])
    """

    def __init__(
        self,
        num_outputs: int | None = None,
        targets: Mapping[str, str] | None = None,
        target_stats: Mapping[str, Mapping[str, float]] | str | None = None,
        linear_probe: bool = False,
        in_channels: int = 3,
        img_size: Sequence[int] | int = 224,
        patch_size: Sequence[int] | int = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        qkv_bias: bool = False,
        dropout_rate: float = 0.0,
        fused_attention: bool = True,
    ) -> None:
        if targets is not None:
            names, kinds = target_kinds(targets)
        elif num_outputs is None or num_outputs < 1:
            raise ValueError(f"give num_outputs >= 1 (classes) or targets, got num_outputs={num_outputs}")
        else:
            names, kinds = [f"class_{i}" for i in range(num_outputs)], ["class"] * num_outputs
        super().__init__(
            in_channels, img_size, patch_size, hidden_size, mlp_dim, num_layers, num_heads,
            num_classes=len(names), qkv_bias=qkv_bias, dropout_rate=dropout_rate, freeze_encoder=linear_probe,
            fused_attention=fused_attention, spatial_dims=2,
        )  # fmt: skip
        self.target_names, self.target_kinds = names, kinds
        mean, std = _stats_tensors(names, kinds, target_stats)
        self.register_buffer("target_mean", mean)  # [T]
        self.register_buffer("target_std", std)  # [T]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C, H, W] -> z: [B, T] (logits; z-scores of continuous targets); ViTClassifier.forward spelled out,
        # as TorchScript (ckpt_export) cannot compile super()
        z = self.head(self.norm(self.features(x)))
        return self.target_mean + self.target_std * z  # continuous in own units; 0 + 1 * z elsewhere


class TargetLoss(nn.Module):
    """Loss of per-channel targets: MSE of standardised continuous targets, binary cross-entropy on logits.

    ``pred`` is the output of :class:`TransferViT2D` (continuous targets in own units), so the squared error is
    divided by the training variance: ``((pred - y) / std)^2 = (z - (y - mean) / std)^2``, the MSE of standardised
    targets. Each target's loss is averaged over the samples where it is known (NaN = missing), then the targets'
    losses are averaged with their ``weights``; a target missing in the whole batch does not count. With every
    target ``binary`` (RFMiD) and no NaN it equals ``BCEWithLogitsLoss()``.

    Args:
        targets: ordered ``{name: "continuous" | "binary"}``, as given to the network.
        target_stats: ``{name: {"mean", "std"}}`` of the continuous targets (only ``std`` is used).
        weights: optional ``{name: weight}`` (default 1 each).

    Example::

        >>> loss = TargetLoss({"age": "continuous", "sex": "binary"}, {"age": {"mean": 60.0, "std": 8.0}})
        >>> float(loss(torch.tensor([[68.0, 0.0]]), torch.tensor([[60.0, 1.0]])))  # (1 + log 2) / 2
        0.8465...
    """

    def __init__(
        self,
        targets: Mapping[str, str],
        target_stats: Mapping[str, Mapping[str, float]] | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        names, kinds = target_kinds(targets)
        unknown = sorted(set(weights or {}) - set(names))
        if unknown:
            raise KeyError(f"weights name targets {unknown} that are not among {names}")
        _, std = _stats_tensors(names, kinds, target_stats)
        self.register_buffer("std", std)
        self.register_buffer("continuous", torch.tensor([k == "continuous" for k in kinds]))
        self.register_buffer("weights", torch.tensor([float((weights or {}).get(n, 1.0)) for n in names]))

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape or pred.ndim != 2 or pred.shape[1] != self.std.numel():
            raise ValueError(
                f"expected pred and target [B, {self.std.numel()}], got {tuple(pred.shape)}, {tuple(target.shape)}"
            )
        target = target.to(pred.dtype)
        known = ~torch.isnan(target)  # [B, T]
        y = torch.where(known, target, torch.zeros_like(target))
        squared = ((pred - y) / self.std).pow(2)
        bce = F.binary_cross_entropy_with_logits(pred, y, reduction="none")  # finite for any y: unused off binary
        per_entry = torch.where(self.continuous, squared, bce) * known  # [B, T]
        count = known.sum(0)  # [T]
        per_target = per_entry.sum(0) / count.clamp(min=1)
        w = self.weights * (count > 0)
        return (w * per_target).sum() / w.sum().clamp(min=1e-12)


def binary_probabilities(targets: Mapping[str, str]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function for ``Lambdad(keys="pred", func=...)``: sigmoid on the ``binary`` channels of a prediction
    (``[T]`` decollated or ``[B, T]``), continuous channels left in their own units (for inference outputs; the loss
    and ROC-AUC take the logits).

    Example::

        >>> binary_probabilities({"age": "continuous", "sex": "binary"})(torch.tensor([64.0, 0.0]))
        tensor([64.0000,  0.5000])
    """
    _, kinds = target_kinds(targets)
    binary = torch.tensor([k == "binary" for k in kinds])

    def _apply(pred: torch.Tensor) -> torch.Tensor:
        if pred.shape[-1] != binary.numel():
            raise ValueError(
                f"expected {binary.numel()} target channels last, got a prediction of shape {tuple(pred.shape)}"
            )
        return torch.where(binary.to(pred.device), torch.sigmoid(pred), pred)

    return _apply


def layer_id(name: str, num_blocks: int, encoder_prefix: str = "vit.") -> int:
    """Depth of a parameter for layer-wise lr decay: patch/position embedding 0, ``blocks.i`` i + 1, everything
    else (the encoder's final norm, the probe norm, the head, a UNETR decoder) ``num_blocks + 1`` (the top)."""
    name = name.removeprefix("module.")
    if name.startswith(encoder_prefix):
        inner = name[len(encoder_prefix) :]
        if inner.startswith("patch_embedding."):
            return 0
        if inner.startswith("blocks."):
            return int(inner.split(".")[1]) + 1
    return num_blocks + 1


def layer_decay_param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.05,
    layer_decay: float = 0.75,
    encoder_prefix: str = "vit.",
    no_weight_decay: Sequence[str] = ("position_embeddings",),
) -> list[dict]:
    """Optimiser parameter groups with layer-wise learning-rate decay, as in BEiT / MAE fine-tuning.

    A parameter at depth ``i`` (:func:`layer_id`; ``L`` = number of encoder blocks + 1, so the head sits at ``L``)
    gets ``lr * layer_decay ** (L - i)``; biases, norm weights (every 1-D tensor) and ``no_weight_decay`` names get
    no weight decay. Frozen parameters (a linear probe) are left out. ``layer_decay=1`` gives one learning rate.
    Each group also carries ``lr_scale`` and ``layer_id`` (a scheduler that rescales ``lr`` keeps the ratios:
    MONAI's ``WarmupCosineSchedule`` multiplies each group's initial ``lr``).

    Args:
        model: the network (DDP-wrapped or not); its encoder under ``encoder_prefix`` with ``blocks.<i>``.
        lr: learning rate of the top (head).
        weight_decay: weight decay of the decayed group.
        layer_decay: decay per block going down (BEiT/MAE: 0.65-0.75).
        encoder_prefix: where the ViT sits (``vit.`` in TransferViT2D and UNETR).
        no_weight_decay: name fragments exempt from weight decay besides 1-D tensors.

    Example::

        >>> net = TransferViT2D(5, img_size=32, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4)
        >>> groups = layer_decay_param_groups(net, lr=1e-3, layer_decay=0.5)
        >>> sorted({g["lr"] for g in groups})  # embedding 0.5^3, block 0 0.5^2, block 1 0.5, head 1
        [0.000125, 0.00025, 0.0005, 0.001]
        >>> optimizer = torch.optim.AdamW(groups, lr=1e-3)
    """
    named = [(n.removeprefix("module."), p) for n, p in model.named_parameters()]
    blocks = encoder_prefix + "blocks."
    block_ids = {int(n[len(blocks) :].split(".")[0]) for n, _ in named if n.startswith(blocks)}  # frozen ones too
    top = (max(block_ids) + 1 if block_ids else 0) + 1  # L = blocks + 1
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in ((n, p) for n, p in named if p.requires_grad):
        depth = layer_id(name, top - 1, encoder_prefix)
        decay = not (param.ndim <= 1 or any(k in name for k in no_weight_decay))
        scale = layer_decay ** (top - depth)  # lr_i = lr * decay^(L - i)
        group = groups.setdefault(
            (depth, decay),
            {"params": [], "lr": lr * scale, "lr_scale": scale, "weight_decay": weight_decay if decay else 0.0,
             "layer_id": depth},
        )  # fmt: skip
        group["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def transfer_unetr_2d(
    out_channels: int,
    in_channels: int = 3,
    img_size: Sequence[int] | int = 224,
    feature_size: int = 16,
    hidden_size: int = 768,
    mlp_dim: int = 3072,
    num_heads: int = 12,
    qkv_bias: bool = False,
    dropout_rate: float = 0.0,
    norm_name: str = "instance",
    fused_attention: bool = True,
    freeze_encoder: bool = False,
) -> UNETR:
    """MONAI's ``UNETR(spatial_dims=2)`` for PALM segmentation (one output channel per structure: sigmoid each,
    structures may overlap). Its ``vit`` is built as :func:`~common.networks.vit.unetr_vit` builds it (conv patch
    embedding, patch 16, 12 blocks: UNETR's fixed depth), so an mrm encoder's ``vit.*`` keys load unchanged.
    ``freeze_encoder=True`` (the segmentation form of a linear probe) leaves the ViT without gradients, so only the
    decoder trains (the ViT has no dropout or batch statistics by default: train and eval mode compute the same).

    Example::

        >>> net = transfer_unetr_2d(2, img_size=32, feature_size=8, hidden_size=48, mlp_dim=96, num_heads=4)
        >>> net(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 2, 32, 32])
    """
    net = fused_unetr(
        fused_attention, in_channels=in_channels, out_channels=out_channels, img_size=img_size,
        feature_size=feature_size, hidden_size=hidden_size, mlp_dim=mlp_dim, num_heads=num_heads,
        proj_type="conv", norm_name=norm_name, dropout_rate=dropout_rate, spatial_dims=2, qkv_bias=qkv_bias,
    )  # fmt: skip
    if freeze_encoder:
        net.vit.requires_grad_(False)
    return net
