"""TensorBoard previews of 3D volumes as 2D mid-slice grids, of 2D colour images side by side, and of genetics
reconstructions as a plot.

Why not MONAI's ``TensorBoardImageHandler``: it shows one image, one label and one prediction, each channel as
an animated GIF. Pre-training wants the original, the masked input and the reconstruction of every modality side
by side in one still picture, every few epochs, cheaply. A reconstructed genetics vector is no picture at all:
:class:`GenomeReconstructionPlot` draws its per-feature error and a true-vs-reconstructed scatter (matplotlib).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch.utils.tensorboard import SummaryWriter

__all__ = [
    "mid_slice_grid",
    "rgb_row",
    "SliceGridPreview",
    "TemplatePreview",
    "per_feature_error",
    "reconstruction_correlation",
    "genome_error_figure",
    "GenomeReconstructionPlot",
]


def rgb_row(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Colour images ``[3, H, W]`` side by side as one ``[3, H, k W]`` picture, each channel windowed by the first
    image's 1st-99th percentiles (so a reconstruction is shown on its original's scale)."""
    first = images[0].detach().cpu().float()
    lo = torch.quantile(first.flatten(1), 0.01, dim=1)[:, None, None]
    hi = torch.quantile(first.flatten(1), 0.99, dim=1)[:, None, None]
    return torch.cat([((i.detach().cpu().float() - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1) for i in images], 2)


def mid_slice_grid(volumes: Sequence[torch.Tensor], axis: int = -1) -> torch.Tensor:
    """Grid image ``[1, rows * H, cols * W]``: one row per channel, one column per volume ``[C, D, H, W]`` (or per
    image ``[C, H, W]``, shown whole).

    Each row shares one intensity window (that of the first volume's channel) so masked and reconstructed
    patches are comparable with the original.
    """
    c = volumes[0].shape[0]
    rows = []
    for ch in range(c):
        slices = [
            (v[ch] if v.ndim == 3 else v[ch].select(axis, v.shape[axis] // 2)).detach().cpu().float() for v in volumes
        ]
        lo, hi = torch.quantile(slices[0].flatten(), torch.tensor([0.01, 0.99]))
        rows.append(torch.cat([((s - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1) for s in slices], dim=1))
    return torch.cat(rows, dim=0)[None]


class _EpochTensorBoard:
    """What the handlers below share: a TensorBoard writer of their own (beside ``TensorBoardStatsHandler``'s),
    opened on first use (a run with nothing to show writes no event file), run every ``interval`` epochs, closed
    when training completes."""

    def __init__(self, log_dir: str, interval: int = 1) -> None:
        self.log_dir, self.interval = log_dir, interval
        self._writer: SummaryWriter | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self.close)

    def writer(self) -> SummaryWriter:
        if self._writer is None:
            self._writer = SummaryWriter(self.log_dir)
        return self._writer

    def close(self, engine: Engine | None = None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class SliceGridPreview(_EpochTensorBoard):
    """Every ``interval`` epochs, write the mid-slice grid of ``keys`` of the first sample of the last batch.

    Args:
        log_dir: TensorBoard folder (a writer of its own beside ``TensorBoardStatsHandler``'s).
        keys: entries of ``engine.state.output`` to show as columns, e.g. ``["image", "masked", "pred"]``.
        tag: TensorBoard tag.
        interval: epochs between previews.
        axis: spatial axis to slice (-1: axial for RAS volumes).
        rgb: the entries are colour images ``[3, H, W]``: show them in colour, side by side.
    """

    def __init__(
        self,
        log_dir: str,
        keys: Sequence[str] = ("image", "masked", "pred"),
        tag: str = "reconstruction",
        interval: int = 1,
        axis: int = -1,
        rgb: bool = False,
    ) -> None:
        super().__init__(log_dir, interval)
        self.rgb = rgb
        self.keys = tuple(keys)
        self.tag = tag
        self.axis = axis

    def __call__(self, engine: Engine) -> None:
        out: Any = engine.state.output
        if not isinstance(out, dict) or not all(k in out for k in self.keys):
            return
        items = [out[k][0] for k in self.keys]
        grid = rgb_row(items) if self.rgb else mid_slice_grid(items, self.axis)
        self.writer().add_image(f"{self.tag}/{'|'.join(self.keys)}", grid, engine.state.epoch)
        self.writer().flush()


class TemplatePreview(_EpochTensorBoard):
    """BrainMVP templates: a mid-slice row per modality in TensorBoard every ``interval`` epochs, and one NIfTI
    per modality in ``out_dir`` when training completes.

    Args:
        templates: the ``ModalityTemplates`` module (e.g. ``@network.templates``; DDP wrappers are looked through).
        log_dir: TensorBoard folder.
        out_dir: folder of the exported ``template_<modality>.nii.gz`` files.
        interval: epochs between previews.
    """

    def __init__(self, templates: Any, log_dir: str, out_dir: str, interval: int = 1) -> None:
        super().__init__(log_dir, interval)
        self.templates, self.out_dir = templates, out_dir

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self.preview)
        engine.add_event_handler(Events.COMPLETED, self.export)

    def preview(self, engine: Engine) -> None:
        from torch.distributed import get_rank, is_initialized

        if is_initialized() and get_rank() > 0:
            return
        volumes = self.templates.templates.detach()[:, 0]  # [S, *canvas]
        grid = mid_slice_grid([volumes], axis=-1)  # one row per modality
        self.writer().add_image(f"templates/{'|'.join(self.templates.modalities)}", grid, engine.state.epoch)
        self.writer().flush()

    def export(self, engine: Engine) -> None:
        from torch.distributed import get_rank, is_initialized

        if not (is_initialized() and get_rank() > 0):
            self.templates.to_nifti(self.out_dir)
        self.close()


def per_feature_error(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Mean squared reconstruction error of each feature over the batch: ``[B, G]`` x2 -> ``[G]``.

    Example::

        >>> per_feature_error(torch.tensor([[0.0, 1.0], [2.0, 1.0]]), torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
        tensor([2.5000, 0.5000])
    """
    if target.shape != pred.shape or target.ndim != 2:
        raise ValueError(f"expected two [B, G] tensors, got {list(target.shape)} and {list(pred.shape)}")
    return (pred.detach().float() - target.detach().float()).pow(2).mean(0)  # [G]


def reconstruction_correlation(target: torch.Tensor, pred: torch.Tensor) -> float:
    """Pearson's r between all reconstructed and all true values (NaN when either side is constant).

    Example: ``reconstruction_correlation(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[2.0, 4.0, 7.0]]))``
    (0.9934).
    """
    t, p = target.detach().double().flatten(), pred.detach().double().flatten()
    t, p = t - t.mean(), p - p.mean()
    denominator = (t.pow(2).sum() * p.pow(2).sum()).sqrt()
    return float((t * p).sum() / denominator) if denominator > 0 else float("nan")


def genome_error_figure(target: torch.Tensor, pred: torch.Tensor, max_points: int = 5000) -> torch.Tensor:
    """A picture ``[3, H, W]`` (floats in [0, 1]) of a genetics reconstruction: left, the per-feature squared error
    over the batch (:func:`per_feature_error`, features in file order, with its mean); right, reconstructed against
    true (standardised) values of every sample and feature (at most ``max_points``, evenly subsampled, for the
    scatter only), with Pearson's r over all values (:func:`reconstruction_correlation`) and the identity line. Drawn with matplotlib's Agg backend (no display needed).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    err = per_feature_error(target, pred).cpu().numpy()
    t, p = target.detach().float().flatten().cpu().numpy(), pred.detach().float().flatten().cpu().numpy()
    step = max(1, t.size // max_points)
    t, p = t[::step], p[::step]
    r = reconstruction_correlation(target, pred)
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3), dpi=80)
    a.plot(np.arange(err.size), err, lw=0.8)
    a.axhline(float(err.mean()), color="k", ls="--", lw=0.8)
    a.set(xlabel="feature", ylabel="squared error (batch mean)", title=f"mean {err.mean():.3f}")
    b.scatter(t, p, s=2, alpha=0.4)
    lim = [float(min(t.min(), p.min())), float(max(t.max(), p.max()))]
    b.plot(lim, lim, color="k", lw=0.8)
    b.set(xlabel="true (standardised)", ylabel="reconstructed", title=f"r = {r:.3f}")
    fig.tight_layout()
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())  # [H, W, 4] uint8
    plt.close(fig)
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).float() / 255.0  # [3, H, W]


class GenomeReconstructionPlot(_EpochTensorBoard):
    """Every ``interval`` epochs, write :func:`genome_error_figure` of the last batch to TensorBoard (image
    ``<tag>/error``) and its mean per-feature error as the scalar ``<tag>/mean_error``.

    Args:
        log_dir: TensorBoard folder.
        target_key, pred_key: entries of ``engine.state.output`` (``[B, G]``); when absent (single-modality
            training) nothing is written.
        tag: TensorBoard tag prefix.
        interval: epochs between plots.
    """

    def __init__(
        self,
        log_dir: str,
        target_key: str = "genetics",
        pred_key: str = "pred_genetics",
        tag: str = "genome_reconstruction",
        interval: int = 1,
    ) -> None:
        super().__init__(log_dir, interval)
        self.target_key, self.pred_key, self.tag = target_key, pred_key, tag

    def __call__(self, engine: Engine) -> None:
        out: Any = engine.state.output
        if not isinstance(out, dict) or self.target_key not in out or self.pred_key not in out:
            return
        target, pred = out[self.target_key], out[self.pred_key]
        writer = self.writer()
        writer.add_image(f"{self.tag}/error", genome_error_figure(target, pred), engine.state.epoch)
        writer.add_scalar(f"{self.tag}/mean_error", float(per_feature_error(target, pred).mean()), engine.state.epoch)
        writer.flush()
