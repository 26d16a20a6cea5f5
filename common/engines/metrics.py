"""Output transforms for MONAI metric handlers, and the task metrics of the 2D transfer bundles (quadratic
weighted kappa, confusion matrix CSV/PNG, per-label ROC-AUC, per-target MSE in own units, Dice per structure)."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Events
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce
from monai.handlers import IgniteMetricHandler, MetricsSaver
from monai.metrics import DiceMetric, compute_roc_auc
from monai.utils import evenly_divisible_all_gather

__all__ = [
    "NamedMetricsSaver",
    "name_metric_columns",
    "select_channel",
    "meta_of",
    "class_scores",
    "stacked",
    "confusion_matrix",
    "quadratic_weighted_kappa",
    "ClassConfusion",
    "QuadraticWeightedKappa",
    "save_confusion_matrix",
    "ConfusionMatrixSaver",
    "PerLabelROCAUC",
    "PerTargetMSE",
    "dice_per_structure",
]

logger = logging.getLogger(__name__)


def select_channel(index: int, keys: Sequence[str] = ("pred", "label")) -> Callable[[Any], tuple[list, list]]:
    """``output_transform`` that keeps channel ``index`` of ``pred`` and ``label`` of every decollated item.

    One metric handler per region (e.g. Dice of TC, WT, ET) keeps each region's value a scalar, so
    ``StatsHandler``, TensorBoard and ``MetricsSaver`` report them by name.
    """

    def _transform(output: Any) -> tuple[list, list]:
        items = output if isinstance(output, list) else [output]
        return tuple([item[k][index : index + 1] for item in items] for k in keys)  # type: ignore[return-value]

    return _transform


def meta_of(key: str = "image") -> Callable[[Any], list[dict]]:
    """``batch_transform`` for ``MetricsSaver``: the meta dicts of ``key`` (file names go into the per-case CSV)."""

    def _transform(batch: Any) -> list[dict]:
        return [item[key].meta for item in batch]

    return _transform


def class_scores(pred_key: str = "pred", label_key: str = "label") -> Callable[[Any], tuple]:
    """``output_transform`` for ignite's ``Accuracy`` / ``Fbeta``: stacked scores ``[B, C]`` and class indices
    ``[B]`` from decollated items whose label is one-hot (after ``AsDiscreted(to_onehot=C)``) or an index."""

    def _transform(output: Any) -> tuple:
        items = output if isinstance(output, list) else [output]
        scores = torch.stack([torch.as_tensor(i[pred_key]).flatten() for i in items])
        labels = [torch.as_tensor(i[label_key]).flatten() for i in items]
        index = torch.stack([lab.argmax() if lab.numel() > 1 else lab[0] for lab in labels]).long()
        return scores, index

    return _transform


# ---- task metrics of the 2D transfer bundles (APTOS, RFMiD, PALM, CRP, glioma) --------------------------------
#
# Each is an ignite ``Metric`` (or a MONAI metric handler) usable in an evaluator's ``key_val_metric`` /
# ``additional_metrics``. A metric with several values (one per label, target or structure) puts its headline value
# under its own name and each part under ``<name>_<part>``: every entry of ``engine.state.metrics`` stays a scalar,
# so ``StatsHandler``, ``TensorBoardStatsHandler`` and ``MetricsSaver`` report them all by name. Accumulated state
# is summed (confusion matrix, squared errors) or gathered (AUC scores) across DDP ranks.


def stacked(pred_key: str = "pred", label_key: str = "label") -> Callable[[Any], tuple]:
    """``output_transform``: ``pred`` and ``label`` of decollated items stacked into float tensors ``[B, ...]``."""

    def _transform(output: Any) -> tuple:
        items = output if isinstance(output, list) else [output]
        pred = torch.stack([torch.as_tensor(i[pred_key]).detach().float() for i in items])
        label = torch.stack([torch.as_tensor(i[label_key]).detach().float() for i in items])
        return pred, label

    return _transform


def _class_index(values: Any, num_classes: int) -> Any:
    """``[B]`` class indices from indices ``[B]`` / ``[B, 1]`` or scores / one-hot rows ``[B, C]`` (argmax)."""
    values = torch.as_tensor(values)
    if values.ndim == 2 and values.shape[1] == num_classes and num_classes > 1:
        return values.argmax(1)
    return values.reshape(-1).round().long()


def confusion_matrix(pred: Any, target: Any, num_classes: int) -> Any:
    """Counts ``[K, K]``: row = true class, column = predicted class.

    Args:
        pred: predicted classes ``[B]`` or scores ``[B, K]`` (argmax taken).
        target: true classes ``[B]`` or one-hot ``[B, K]``.
        num_classes: K.

    Example::

        >>> confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 2)
        tensor([[1, 1],
                [0, 1]])
    """
    p, t = _class_index(pred, num_classes), _class_index(target, num_classes)
    if p.shape != t.shape:
        raise ValueError(f"{p.numel()} predictions but {t.numel()} labels")
    bad = (t < 0) | (t >= num_classes) | (p < 0) | (p >= num_classes)
    if bad.any():
        raise ValueError(f"classes outside [0, {num_classes}): labels {t[bad].tolist()}, predictions {p[bad].tolist()}")
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def quadratic_weighted_kappa(cm: Any) -> float:
    """Cohen's weighted kappa with quadratic weights (Cohen 1968; the paper's APTOS metric) from a confusion matrix.

    ``kappa = 1 - sum(W * O) / sum(W * E)`` with ``W_ij = (i - j)^2``, ``O`` the observed counts and ``E`` the
    counts expected by chance (outer product of the true and predicted class totals / N). The usual normalisation
    ``W / (K - 1)^2`` cancels in the ratio and is left out. Returns NaN when chance agreement is perfect (e.g. every
    case of one class and predicted so), where kappa is undefined.
    """
    o = torch.as_tensor(cm, dtype=torch.float64)
    i = torch.arange(o.shape[0], dtype=torch.float64)
    w = (i[:, None] - i[None, :]).pow(2)  # W_ij = (i - j)^2
    e = torch.outer(o.sum(1), o.sum(0)) / o.sum().clamp(min=1)  # E_ij = n_i. n_.j / N
    expected = (w * e).sum()
    if expected == 0:
        return float("nan")
    return float(1 - (w * o).sum() / expected)  # kappa_w = 1 - sum W O / sum W E


class ClassConfusion(Metric):
    """Confusion matrix ``[K, K]`` (row = true class) accumulated over an epoch, summed across DDP ranks.

    Args:
        num_classes: K.
        output_transform: engine output -> ``(scores [B, K] or classes [B], labels [B] or one-hot [B, K])``;
            :func:`class_scores` by default.
    """

    def __init__(self, num_classes: int, output_transform: Callable | None = None, device: Any = "cpu") -> None:
        self.num_classes = num_classes
        super().__init__(output_transform=output_transform or class_scores(), device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._cm = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=self._device)

    @reinit__is_reduced
    def update(self, output: tuple) -> None:
        pred, target = output
        self._cm += confusion_matrix(pred, target, self.num_classes).to(self._device)

    @sync_all_reduce("_cm")
    def compute(self) -> Any:
        return self._cm.clone()


class QuadraticWeightedKappa(ClassConfusion):
    """Quadratic weighted kappa (APTOS' metric) over the epoch, see :func:`quadratic_weighted_kappa`.

    Example (config)::

        "key_metric": {"val_qwk": {"_target_": "common.engines.metrics.QuadraticWeightedKappa", "num_classes": 5}}
    """

    def compute(self) -> float:
        return quadratic_weighted_kappa(super().compute())


def save_confusion_matrix(cm: Any, class_names: Sequence[str], csv_path: str, png_path: str | None = None) -> None:
    """Write a confusion matrix as CSV (``true \\ predicted`` header, one row per true class) and as a PNG picture
    (counts in each cell, rows normalised for the colour). matplotlib's Agg canvas draws it without pyplot, so no
    display and no global backend switch are needed."""
    counts = np.asarray(cm.cpu() if hasattr(cm, "cpu") else cm, dtype=np.int64)
    names = [str(n) for n in class_names]
    if counts.shape != (len(names), len(names)):
        raise ValueError(f"confusion matrix {counts.shape} does not match {len(names)} class names")
    os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *names])
        writer.writerows([name, *row] for name, row in zip(names, counts.tolist()))
    if png_path is None:
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = 1.2 + 0.6 * len(names)
    fig = Figure(figsize=(size + 1.0, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for (r, c), n in np.ndenumerate(counts):
        ax.text(c, r, str(n), ha="center", va="center", color="white" if share[r, c] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, label="share of the true class")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)


class ConfusionMatrixSaver:
    """Evaluator handler: at the end of each evaluation, write ``<prefix>confusion_matrix.csv`` and ``.png`` to
    ``save_dir`` (rank 0; the counts are summed over ranks first) and log the matrix. Overwritten at each
    validation, so the files hold the latest one.

    Args:
        save_dir: output folder.
        class_names: K names in class order (e.g. ``["0", "1", "2", "3", "4"]``, ``["II", "III", "IV"]``).
        output_transform: as for :class:`ClassConfusion`.
        prefix: file-name prefix.

    Under DDP attach it on EVERY rank (it sums the counts across ranks at the end of the epoch, like MONAI's
    ``MetricsSaver``): never among the handlers a multi-GPU config drops on ranks > 0, or rank 0 waits forever.
    """

    def __init__(
        self, save_dir: str, class_names: Sequence[str], output_transform: Callable | None = None, prefix: str = ""
    ) -> None:
        self.save_dir, self.class_names, self.prefix = save_dir, [str(c) for c in class_names], prefix
        self.confusion = ClassConfusion(len(self.class_names), output_transform)

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.confusion.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.confusion.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        cm = self.confusion.compute()  # every rank takes part in the sum
        if idist.get_rank() != 0:
            return
        base = os.path.join(self.save_dir, f"{self.prefix}confusion_matrix")
        save_confusion_matrix(cm, self.class_names, base + ".csv", base + ".png")
        logger.info(f"confusion matrix (rows true, columns predicted) -> {base}.csv/.png:\n{cm}")


def _selected(
    names: Sequence[str] | None, targets: Mapping[str, str] | None, kind: str
) -> tuple[list[str], list[int] | None]:
    """Names and channel indices of the parts a metric reports: ``targets`` of ``kind`` or every ``names`` entry."""
    if (names is None) == (targets is None):
        raise ValueError("give either label_names (every channel) or targets (the channels of one kind)")
    if targets is not None:
        picked = [(i, n) for i, (n, k) in enumerate(targets.items()) if k == kind]
        if not picked:
            raise ValueError(f"targets {dict(targets)} have no {kind} target")
        return [n for _, n in picked], [i for i, _ in picked]
    return [str(n) for n in names], None


def _put_parts(engine: Any, name: str, headline: float, parts: Mapping[str, float]) -> None:
    engine.state.metrics[name] = headline
    for part, value in parts.items():
        engine.state.metrics[f"{name}_{part}"] = value


class PerLabelROCAUC(Metric):
    """ROC-AUC per label and their mean: RFMiD's multi-label AUC, one-vs-rest macro AUC of a multi-class task
    (glioma: one "label" per class) and the AUC of binary targets (CRP sex, smoking).

    A label whose evaluation cases are all of one class has no AUC: it is reported (a warning naming it, NaN under
    ``<name>_<label>``) and left out of the mean, and ``<name>_labels_used`` counts the labels in the mean. Cases
    whose label is NaN (unknown) are skipped for that label. Scores may be probabilities or logits (same ranks).
    Each label's AUC is MONAI's ``compute_roc_auc``; under DDP every rank gathers all cases (MONAI's
    ``evenly_divisible_all_gather``: ranks may hold different numbers) and computes the same values.

    Args:
        label_names: one name per channel (RFMiD's label set, the classes of a multi-class head).
        targets: alternatively ``{name: kind}`` of a mixed head: its ``binary`` channels are scored.
        output_transform: engine output -> ``(scores [B, C], labels [B, C])``; integer labels ``[B]`` of a
            multi-class head are one-hot encoded. Default :func:`stacked`.

    Example (config)::

        "val_auc": {"_target_": "common.engines.metrics.PerLabelROCAUC", "label_names": "@label_names"}
    """

    def __init__(
        self,
        label_names: Sequence[str] | None = None,
        targets: Mapping[str, str] | None = None,
        output_transform: Callable | None = None,
        device: Any = "cpu",
    ) -> None:
        self.label_names, self.columns = _selected(label_names, targets, "binary")
        self.per_label: dict[str, float] = {}
        self.excluded: list[str] = []
        super().__init__(output_transform=output_transform or stacked(), device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._scores: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    @reinit__is_reduced
    def update(self, output: tuple) -> None:
        pred, target = (torch.as_tensor(t).detach().float().to(self._device) for t in output)
        pred, target = self._columns(pred, target)  # [B, L] each
        self._scores.append(pred)
        self._labels.append(target)

    def _columns(self, pred: Any, target: Any) -> tuple[Any, Any]:
        width = (max(self.columns) + 1) if self.columns else len(self.label_names)
        pred = pred.reshape(pred.shape[0], -1)
        if target.ndim == 1 and pred.shape[1] > 1:  # class indices of a multi-class head
            target = torch.nn.functional.one_hot(target.round().long(), pred.shape[1]).to(pred.dtype)
        target = target.reshape(target.shape[0], -1)
        if pred.shape[1] != width or target.shape != pred.shape:
            raise ValueError(
                f"expected scores and labels [N, {width}], got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        if self.columns is not None:
            pred, target = pred[:, self.columns], target[:, self.columns]
        return pred, target

    def compute(self) -> float:
        if not self._scores:
            raise NotComputableError(f"{type(self).__name__} needs at least one case before it can be computed")
        pred, target = torch.cat(self._scores), torch.cat(self._labels)  # [N, L]
        if idist.get_world_size() > 1:
            pred, target = evenly_divisible_all_gather(pred), evenly_divisible_all_gather(target)
        values = torch.full((len(self.label_names),), float("nan"), dtype=torch.float64)
        for j in range(len(self.label_names)):  # over labels, not samples
            known = ~torch.isnan(target[:, j])
            y, s = target[known, j], pred[known, j]
            if y.numel() and (y == 0).any() and (y == 1).any():
                values[j] = float(compute_roc_auc(s, y))
        self.per_label = dict(zip(self.label_names, values.tolist()))
        self.excluded = [n for n, v in self.per_label.items() if v != v]
        used = values[~torch.isnan(values)]
        return float(used.mean()) if used.numel() else float("nan")

    def completed(self, engine: Any, name: str) -> None:
        mean = self.compute()
        _put_parts(engine, name, mean, self.per_label)
        engine.state.metrics[f"{name}_labels_used"] = len(self.label_names) - len(self.excluded)
        if self.excluded:
            logger.warning(
                f"{name}: {len(self.excluded)} of {len(self.label_names)} labels have cases of one class only in this "
                f"evaluation split (no ROC-AUC): {self.excluded}; they are excluded from the mean"
            )


class PerTargetMSE(Metric):
    """Mean squared error of each continuous target in its own units (the network outputs de-standardised values,
    :class:`~common.networks.transfer2d.TransferViT2D`), summed across DDP ranks; NaN labels are skipped.

    ``<name>_<target>`` holds each target's MSE in its own units (years^2, mmHg^2, ...). The headline ``<name>`` is
    the mean over targets of ``MSE / std^2`` (the MSE of standardised targets, so that no target dominates by its
    units) when ``target_stats`` are given, else the plain mean of the per-target MSEs.

    Args:
        targets: ``{name: kind}`` of the head: its ``continuous`` channels are scored; or
        label_names: one name per channel when every channel is a continuous target.
        target_stats: ``{name: {"mean", "std"}}`` of the training split (only for the headline).
        output_transform: engine output -> ``(pred [B, T], label [B, T])``; default :func:`stacked`.
    """

    def __init__(
        self,
        targets: Mapping[str, str] | None = None,
        label_names: Sequence[str] | None = None,
        target_stats: Mapping[str, Mapping[str, float]] | None = None,
        output_transform: Callable | None = None,
        device: Any = "cpu",
    ) -> None:
        self.names, self.columns = _selected(label_names, targets, "continuous")
        self.scale = None
        if target_stats is not None:
            missing = [n for n in self.names if "std" not in target_stats.get(n, {})]
            if missing:
                raise KeyError(f"target_stats has no 'std' for the continuous targets {missing}")
            self.scale = [float(target_stats[n]["std"]) ** 2 for n in self.names]
        self.per_target: dict[str, float] = {}
        super().__init__(output_transform=output_transform or stacked(), device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._sum = torch.zeros(len(self.names), dtype=torch.float64, device=self._device)
        self._count = torch.zeros(len(self.names), dtype=torch.float64, device=self._device)

    @reinit__is_reduced
    def update(self, output: tuple) -> None:
        pred, target = (torch.as_tensor(t).detach().double() for t in output)
        pred, target = pred.reshape(pred.shape[0], -1), target.reshape(target.shape[0], -1)
        if self.columns is not None:
            pred, target = pred[:, self.columns], target[:, self.columns]
        if pred.shape != target.shape or pred.shape[1] != len(self.names):
            raise ValueError(
                f"expected pred and label [B, {len(self.names)}] targets, got {tuple(pred.shape)}, {tuple(target.shape)}"
            )
        known = ~torch.isnan(target)  # [B, T]
        error = torch.where(known, pred - target, torch.zeros_like(pred)).pow(2)
        self._sum += error.sum(0).to(self._device)
        self._count += known.sum(0).to(self._device)

    @sync_all_reduce("_sum", "_count")
    def compute(self) -> float:
        mse = self._sum / self._count  # NaN for a target never observed
        self.per_target = dict(zip(self.names, mse.tolist()))
        headline = mse / torch.tensor(self.scale, dtype=mse.dtype, device=mse.device) if self.scale else mse
        seen = headline[self._count > 0]
        return float(seen.mean()) if seen.numel() else float("nan")

    def completed(self, engine: Any, name: str) -> None:
        _put_parts(engine, name, self.compute(), self.per_target)


def dice_per_structure(
    structures: Sequence[str], prefix: str = "val_dice", ignore_empty: bool = False, pred_key: str = "pred",
    label_key: str = "label",
) -> dict:  # fmt: skip
    """One MONAI Dice handler per structure channel (PALM: optic disc, atrophy), for ``additional_metrics``.

    Dice of binary masks, ``2 |P & G| / (|P| + |G|)`` per image, averaged over images (MONAI's ``DiceMetric``).
    With ``ignore_empty=False`` (default) an image without the structure scores 1 when nothing is predicted and 0
    otherwise, so false positives on the many PALM images without atrophy count; ``True`` leaves such images out.

    Returns:
        ``{"<prefix>_<structure>": IgniteMetricHandler}`` (per-image values go to ``MetricsSaver``'s details).

    Example (config)::

        "additional_metrics": "$common.engines.metrics.dice_per_structure(['disc', 'atrophy'])"
    """
    return {
        f"{prefix}_{s}": IgniteMetricHandler(
            metric_fn=DiceMetric(include_background=True, ignore_empty=ignore_empty),
            output_transform=select_channel(i, (pred_key, label_key)),
        )
        for i, s in enumerate(structures)
    }


def name_metric_columns(save_dir: str, class_labels: Sequence[str]) -> list[str]:
    """Rename the ``class0, class1, ...`` columns of MONAI's per-case ``*_raw.csv`` files to ``class_labels``
    where the count matches, and a lone ``class0`` to ``value``; returns the files rewritten."""
    done = []
    for name in sorted(os.listdir(save_dir)) if os.path.isdir(save_dir) else []:
        if not name.endswith("_raw.csv"):
            continue
        path = os.path.join(save_dir, name)
        with open(path) as f:
            lines = f.read().splitlines()
        if not lines:
            continue
        delimiter = "\t" if "\t" in lines[0] else ","
        header = lines[0].split(delimiter)
        classes = [i for i, h in enumerate(header) if h.startswith("class") and h[5:].isdigit()]
        if len(classes) == len(class_labels):
            for i, label in zip(classes, class_labels):
                header[i] = str(label)
        elif len(classes) == 1:
            header[classes[0]] = "value"
        else:
            continue
        with open(path, "w") as f:
            f.write("\n".join([delimiter.join(header), *lines[1:]]) + "\n")
        done.append(path)
    return done


class NamedMetricsSaver(MetricsSaver):
    """MONAI's ``MetricsSaver`` whose per-case CSV columns carry the regions' names (``TC, WT, ET``) instead of
    ``class0, class1, class2``: MONAI's report writer takes class labels but ``MetricsSaver`` does not pass any, so
    the headers are renamed once the files are written (on the saving rank).

    Args:
        class_labels: one name per output channel, e.g. ``["TC", "WT", "ET"]``.
        args, kwargs: as ``monai.handlers.MetricsSaver``.
    """

    def __init__(self, *args: Any, class_labels: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.class_labels = list(class_labels)

    def __call__(self, engine: Any) -> None:
        super().__call__(engine)
        if idist.get_rank() == self.save_rank and self.class_labels:
            name_metric_columns(self.save_dir, self.class_labels)
