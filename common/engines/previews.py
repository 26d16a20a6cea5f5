"""TensorBoard previews of 3D volumes as 2D mid-slice grids.

Why not MONAI's ``TensorBoardImageHandler``: it shows one image, one label and one prediction, each channel as
an animated GIF. Pre-training wants the original, the masked input and the reconstruction of every modality side
by side in one still picture, every few epochs, cheaply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch.utils.tensorboard import SummaryWriter

__all__ = ["mid_slice_grid", "rgb_row", "SliceGridPreview"]


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


class SliceGridPreview:
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
        self.log_dir = log_dir
        self.rgb = rgb
        self.keys = tuple(keys)
        self.tag = tag
        self.interval = interval
        self.axis = axis
        self._writer: SummaryWriter | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self.close)

    def __call__(self, engine: Engine) -> None:
        out: Any = engine.state.output
        if not isinstance(out, dict) or not all(k in out for k in self.keys):
            return
        if self._writer is None:
            self._writer = SummaryWriter(self.log_dir)
        items = [out[k][0] for k in self.keys]
        grid = rgb_row(items) if self.rgb else mid_slice_grid(items, self.axis)
        self._writer.add_image(f"{self.tag}/{'|'.join(self.keys)}", grid, engine.state.epoch)
        self._writer.flush()

    def close(self, engine: Engine | None = None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class TemplatePreview:
    """BrainMVP templates: a mid-slice row per modality in TensorBoard every ``interval`` epochs, and one NIfTI
    per modality in ``out_dir`` when training completes.

    Args:
        templates: the ``ModalityTemplates`` module (e.g. ``@network.templates``; DDP wrappers are looked through).
        log_dir: TensorBoard folder.
        out_dir: folder of the exported ``template_<modality>.nii.gz`` files.
        interval: epochs between previews.
    """

    def __init__(self, templates: Any, log_dir: str, out_dir: str, interval: int = 1) -> None:
        self.templates, self.out_dir, self.interval = templates, out_dir, interval
        self.writer = SliceGridPreview(log_dir, keys=(), tag="templates", interval=interval)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self.preview)
        engine.add_event_handler(Events.COMPLETED, self.export)

    def preview(self, engine: Engine) -> None:
        from torch.distributed import get_rank, is_initialized

        if is_initialized() and get_rank() > 0:
            return
        volumes = self.templates.templates.detach()[:, 0]  # [S, *canvas]
        if self.writer._writer is None:
            self.writer._writer = SummaryWriter(self.writer.log_dir)
        grid = mid_slice_grid([volumes], axis=-1)  # one row per modality
        self.writer._writer.add_image(f"templates/{'|'.join(self.templates.modalities)}", grid, engine.state.epoch)
        self.writer._writer.flush()

    def export(self, engine: Engine) -> None:
        from torch.distributed import get_rank, is_initialized

        if not (is_initialized() and get_rank() > 0):
            self.templates.to_nifti(self.out_dir)
        self.writer.close()
