"""Whole-slide images: opening, magnification and level choice, tissue detection, patch coordinates, reading.

The CLAM pre-processing (Lu et al. 2021) that GiMP follows (paper section 2.2), as pure functions on arrays plus
a thin slide adapter:

1. :class:`Slide` opens SVS / generic tiled TIFF / NDPI / MRXS / SCN ... through openslide-python (with the
   openslide-bin wheel), falling back to tiffslide (pure Python, same ``read_region`` interface) when openslide
   is missing or refuses the file.
2. :func:`objective_power` reads the level-0 magnification from the metadata (``openslide.objective-power``,
   ``tiffslide.objective-power``, ``aperio.AppMag``, ``hamamatsu.SourceLens``) or takes the user's value; absent
   both, :class:`MagnificationError` names the slide.
3. :func:`patch_geometry`: 256 x 256 patches at 20x. When 20x is a level (within 2 %) the patch is read there;
   otherwise a larger region is read at the nearest *higher*-resolution level and resized down to 256 (e.g. a
   40x slide whose levels are 40x / 10x / 2.5x: 512 x 512 read at level 0, resized). A slide below the target
   magnification is refused (upsampling would invent resolution).
4. :func:`tissue_mask` on a low-resolution image (:func:`read_thumbnail`, ~32x below level 0): HSV saturation,
   median blur, Otsu threshold (CLAM's ``use_otsu``), morphological closing, holes below an area filled, tissue
   pieces below an area removed. scikit-image / SciPy only (no OpenCV).
5. :func:`patch_grid` + :func:`tissue_fraction`: a non-overlapping grid over level 0, kept where the tissue
   fraction of the patch exceeds a threshold.
6. :func:`read_patches` / :func:`iter_patch_batches`: patches of one grid row are read as one region (fewer
   ``read_region`` calls and JPEG tile decodes), prefetched by reader threads while the network runs.

Why not MONAI's ``WSIReader``: in MONAI 1.6.1 it has no tiffslide backend (its tifffile backend reports no
objective power), its ``get_power`` reads only ``openslide.objective-power`` (no ``aperio.AppMag`` or user
value), and level selection by power raises when the power is not a level instead of reading a higher level
and resizing. The adapter here is a dozen lines over openslide's own API, which tiffslide mirrors.

Differences from CLAM (``create_patches_fp.py``), all deliberate and documented in the tool:
- one grid over the whole slide, row-major (y outer, x inner), instead of one grid per contour bounding box in
  column-major order; only patches fully inside the slide are made (CLAM pads at the border);
- a patch is kept on its tissue *fraction* (default > 0.25, about CLAM's ``four_pt`` rule) instead of
  point-in-contour tests; no extra white/black patch filter;
- the Otsu threshold is floored at a saturation of 8 / 255 (CLAM's fixed ``sthresh``) so that a blank slide
  yields no tissue instead of thresholded noise;
- area thresholds are in units of output patches (256 x 256 at 20x) instead of CLAM's 512 x 512 level-0
  "reference patches", so they mean the same at any scan magnification;
- transparent pixels (outside the scanned area) are white, not black.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SLIDE_SUFFIXES",
    "SlideReadError",
    "MagnificationError",
    "Slide",
    "list_slides",
    "objective_power",
    "choose_level",
    "PatchGeometry",
    "patch_geometry",
    "read_thumbnail",
    "tissue_mask",
    "patch_grid",
    "tissue_fraction",
    "PatchPlan",
    "plan_patches",
    "read_patches",
    "iter_patch_batches",
]

logger = logging.getLogger(__name__)

# formats openslide reads (https://openslide.org/formats/); tiffslide reads the TIFF-based ones
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif")
POWER_KEYS = ("openslide.objective-power", "tiffslide.objective-power", "aperio.AppMag", "hamamatsu.SourceLens")
MPP_KEYS = ("openslide.mpp-x", "tiffslide.mpp-x", "aperio.MPP")
LEVEL_RTOL = 0.02  # a level within 2 % of the wanted downsample is read as is (level sizes are rounded)


class SlideReadError(RuntimeError):
    """A slide that cannot be opened or read; the message names the file and the reason."""


class MagnificationError(ValueError):
    """The slide's magnification is neither in its metadata nor given, or is below the target."""


class Slide:
    """One whole-slide image through openslide, or tiffslide where openslide is missing or refuses the file.

    Both libraries expose the same ``level_dimensions`` / ``level_downsamples`` / ``properties`` /
    ``read_region(location, level, size)`` interface (location in level-0 pixels, size at ``level``), so this
    class only picks the backend, turns failures into :class:`SlideReadError` naming the file, and returns
    RGB ``uint8`` arrays (transparent pixels white).

    Args:
        path: slide file.
        backend: ``"auto"`` (openslide, then tiffslide), ``"openslide"`` or ``"tiffslide"``.

    Example::

        >>> with Slide("CMU-1-Small-Region.svs") as s:
        ...     s.level_dimensions[0], s.read_region((0, 0), 0, (256, 256)).shape
        ((2220, 2967), (256, 256, 3))
    """

    def __init__(self, path: str | os.PathLike, backend: str = "auto") -> None:
        self.path = str(path)
        self.name = Path(path).stem
        if backend not in ("auto", "openslide", "tiffslide"):
            raise ValueError(f"backend must be 'auto', 'openslide' or 'tiffslide', got {backend!r}")
        if not os.path.isfile(self.path):
            raise SlideReadError(f"{self.path}: slide file not found")
        reasons = []
        self._slide: Any = None
        for name in ("openslide", "tiffslide") if backend == "auto" else (backend,):
            try:
                self._slide = _open_with(name, self.path)
                self.backend = name
                break
            except ImportError as e:
                reasons.append(f"{name} not installed ({e})")
            except Exception as e:  # noqa: BLE001 - every library's own error becomes one readable reason
                reasons.append(f"{name}: {type(e).__name__}: {str(e)[:200]}")
        if self._slide is None:
            raise SlideReadError(f"{self.path}: cannot be opened as a whole-slide image ({'; '.join(reasons)})")
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(
            (int(w), int(h)) for w, h in self._slide.level_dimensions
        )
        self.level_downsamples: tuple[float, ...] = tuple(float(d) for d in self._slide.level_downsamples)
        self.properties: dict[str, Any] = dict(self._slide.properties)

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 ``(width, height)``."""
        return self.level_dimensions[0]

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB ``uint8`` ``[h, w, 3]`` of ``size = (w, h)`` pixels at ``level``, top-left ``location`` at level 0."""
        if self._slide is None:
            raise SlideReadError(f"{self.path}: slide is closed")
        try:
            region = np.asarray(self._slide.read_region((int(location[0]), int(location[1])), int(level), size))
        except Exception as e:  # noqa: BLE001
            raise SlideReadError(
                f"{self.path}: region {tuple(location)} size {tuple(size)} at level {level} unreadable "
                f"({self.backend}: {type(e).__name__}: {str(e)[:200]})"
            ) from e
        if region.ndim == 3 and region.shape[-1] == 4:
            rgb = region[..., :3].copy()
            rgb[region[..., 3] == 0] = 255  # outside the scanned area: background, as glass
            return rgb
        return region[..., :3]

    def close(self) -> None:
        if self._slide is not None:
            self._slide.close()
            self._slide = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _open_with(backend: str, path: str) -> Any:
    if backend == "openslide":
        import openslide

        return openslide.OpenSlide(path)  # not open_slide(): a plain PNG/JPEG is not a slide
    import tiffslide

    return tiffslide.TiffSlide(path)


def list_slides(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The slides named by ``source``: a folder (its files with a slide suffix, sorted), one slide file, a text
    file with one path per line (relative to the text file), or a list of paths.

    Example::

        >>> list_slides("/data/slides")  # doctest: +SKIP
        [PosixPath('/data/slides/a.svs'), PosixPath('/data/slides/b.ndpi')]
    """
    if isinstance(source, (list, tuple)):
        return [Path(p) for p in source]
    src = Path(source)
    if src.is_dir():
        return sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES)
    if src.suffix.lower() in (".txt", ".lst"):
        lines = [ln.strip() for ln in src.read_text().splitlines()]
        return [p if p.is_absolute() else src.parent / p for p in (Path(ln) for ln in lines if ln)]
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such slide, folder or slide list")
    return [src]


def _first_float(properties: dict[str, Any], keys: Sequence[str]) -> float | None:
    for key in keys:
        try:
            value = float(properties.get(key))
        except (TypeError, ValueError):
            continue
        if math.isfinite(value) and value > 0:
            return value
    return None


def objective_power(slide: Slide, magnification: float | None = None) -> float:
    """Level-0 magnification: ``magnification`` when given, else the first of :data:`POWER_KEYS` in the metadata.

    Raises:
        MagnificationError: neither is available; the message names the slide and, when the slide states its
            pixel size, the magnification it usually means (0.25 um/px ~ 40x, 0.5 um/px ~ 20x).
    """
    if magnification is not None:
        if not float(magnification) > 0:
            raise MagnificationError(f"{slide.path}: magnification must be positive, got {magnification}")
        return float(magnification)
    power = _first_float(slide.properties, POWER_KEYS)
    if power is not None:
        return power
    mpp = _first_float(slide.properties, MPP_KEYS)
    hint = f"; its pixel size is {mpp:.3g} um, which usually means about {10.0 / mpp:.0f}x" if mpp else ""
    raise MagnificationError(
        f"{slide.path}: no objective magnification in the slide's metadata (looked for {', '.join(POWER_KEYS)})"
        f"{hint}; pass --magnification with the level-0 magnification"
    )


def choose_level(level_downsamples: Sequence[float], downsample: float, rtol: float = LEVEL_RTOL) -> tuple[int, float]:
    """The level to read for a wanted ``downsample`` (relative to level 0) and the resize factor after reading.

    The level is the coarsest one that is not coarser than wanted (within ``rtol``): reading there and shrinking
    by ``scale = downsample / level_downsample >= 1`` never upsamples. ``scale`` is exactly 1 within ``rtol``.

    Example::

        >>> choose_level([1.0, 4.0, 16.0], 2.0)  # 40x slide, 20x wanted: read level 0, shrink by 2
        (0, 2.0)
        >>> choose_level([1.0, 2.0, 8.0], 2.0)
        (1, 1.0)
    """
    if downsample < 1.0 - rtol:
        raise MagnificationError(f"downsample {downsample:g} < 1 would upsample level 0")
    fine_enough = [i for i, d in enumerate(level_downsamples) if d <= downsample * (1.0 + rtol)]
    level = max(fine_enough, key=lambda i: level_downsamples[i])
    scale = downsample / level_downsamples[level]
    return level, 1.0 if abs(scale - 1.0) <= rtol else scale


@dataclass(frozen=True)
class PatchGeometry:
    """Where and how big a patch is read.

    Attributes:
        level: pyramid level read (CLAM's ``patch_level``).
        level_downsample: that level's downsample (CLAM's ``downsample``).
        read_size: side read at ``level`` (CLAM's ``patch_size``: what ``read_region`` at ``patch_level`` reads).
        size_level0: side at level 0, also the grid step (TRIDENT's ``patch_size_level0``).
        output_size: side after resizing, at the target magnification (256).
    """

    level: int
    level_downsample: float
    read_size: int
    size_level0: int
    output_size: int


def patch_geometry(
    level_downsamples: Sequence[float], magnification: float, target_magnification: float = 20.0, patch_size: int = 256
) -> PatchGeometry:
    """Patches of ``patch_size`` at ``target_magnification`` on a slide of level-0 ``magnification``.

    Example::

        >>> patch_geometry([1.0, 4.0, 16.0], magnification=40)  # no 20x level: 512 read at level 0
        PatchGeometry(level=0, level_downsample=1.0, read_size=512, size_level0=512, output_size=256)
    """
    downsample = float(magnification) / float(target_magnification)
    if downsample < 1.0 - LEVEL_RTOL:
        raise MagnificationError(
            f"slide magnification {magnification:g}x is below the target {target_magnification:g}x "
            "(patches would be upsampled); lower --target_magnification"
        )
    level, scale = choose_level(level_downsamples, downsample)
    size_level0 = int(round(patch_size * downsample))
    read_size = patch_size if scale == 1.0 else int(round(size_level0 / level_downsamples[level]))
    return PatchGeometry(level, float(level_downsamples[level]), read_size, size_level0, int(patch_size))


def read_thumbnail(slide: Slide, downsample: float = 32.0, max_strip_pixels: int = 1 << 24) -> tuple[np.ndarray, float]:
    """The whole slide at about ``downsample`` below level 0, and the exact downsample of the result.

    Reads the coarsest level not coarser than wanted and averages ``f x f`` blocks (``f`` the remaining integer
    factor), in horizontal strips of at most ``max_strip_pixels`` level pixels, so a single-level gigapixel
    slide never sits in memory whole. Rows/columns that do not fill a block are dropped.

    Returns:
        (``uint8 [h, w, 3]``, downsample): mask pixel ``(i, j)`` covers level-0 pixels
        ``[j * d, (j + 1) * d) x [i * d, (i + 1) * d)``.
    """
    level, _ = choose_level(slide.level_downsamples, max(downsample, 1.0))
    level_ds = slide.level_downsamples[level]
    factor = max(1, int(downsample / level_ds + 1e-6))
    width, height = slide.level_dimensions[level]
    out_w, out_h = width // factor, height // factor
    if out_w == 0 or out_h == 0:
        raise SlideReadError(f"{slide.path}: level {level} ({width}x{height}) is smaller than one {factor}-block")
    rows_per_strip = max(1, max_strip_pixels // (factor * factor * out_w)) * factor
    strips = []
    for y in range(0, out_h * factor, rows_per_strip):
        rows = min(rows_per_strip, out_h * factor - y)
        region = slide.read_region((0, int(round(y * level_ds))), level, (out_w * factor, rows))
        # region: [rows, out_w * f, 3] -> blocks [rows / f, f, out_w, f, 3] -> mean over the block axes
        blocks = region.reshape(rows // factor, factor, out_w, factor, 3).mean(axis=(1, 3))
        strips.append(np.round(blocks).astype(np.uint8))
    return np.concatenate(strips, axis=0), level_ds * factor


def _saturation(rgb: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2hsv

    return rgb2hsv(rgb)[..., 1] * 255.0  # HSV saturation on CLAM's 0..255 scale


def tissue_mask(
    rgb: np.ndarray,
    median_size: int = 7,
    close_size: int = 4,
    min_saturation: float = 8.0,
    min_tissue_area: float = 0.0,
    max_hole_area: float = 0.0,
) -> np.ndarray:
    """Tissue (``True``) vs background of a low-resolution RGB image, as CLAM's ``segmentTissue`` with Otsu.

    Steps, in order: HSV saturation (0..255); median filter ``median_size x median_size`` (replicated border);
    threshold ``max(otsu, min_saturation)`` (tissue where above); closing with a ``close_size`` square;
    holes (4-connected background pieces not touching the border) smaller than ``max_hole_area`` filled; tissue
    pieces (8-connected) smaller than ``min_tissue_area`` removed. Areas are in pixels of ``rgb``.

    Args:
        rgb: ``uint8 [h, w, 3]``.
        median_size: median filter side (CLAM ``mthresh`` 7); 1 disables it.
        close_size: closing square side (CLAM ``close`` 4); 0 disables it.
        min_saturation: floor of the Otsu threshold (CLAM's fixed ``sthresh`` 8): a blank slide has no tissue.
        min_tissue_area: tissue pieces below this many pixels are specks, removed.
        max_hole_area: holes below this many pixels are filled (larger ones stay background).

    Example::

        >>> img = np.full((20, 20, 3), 240, np.uint8); img[5:15, 5:15] = (200, 60, 150)
        >>> int(tissue_mask(img, median_size=1, close_size=0).sum())
        100
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    sat = _saturation(rgb)
    if median_size > 1:
        sat = ndimage.median_filter(sat, size=median_size, mode="nearest")
    otsu = threshold_otsu(sat) if sat.max() > sat.min() else sat.max()
    mask = sat > max(float(otsu), float(min_saturation))
    if close_size > 0:
        pad = close_size
        padded = np.pad(mask, pad, mode="edge")  # closing at the border must not eat tissue touching it
        mask = ndimage.binary_closing(padded, structure=np.ones((close_size, close_size), bool))[pad:-pad, pad:-pad]
    if max_hole_area > 0:
        holes, n = ndimage.label(~mask)  # 4-connected background pieces
        if n:
            area = np.bincount(holes.ravel())
            border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
            fill = area < max_hole_area
            fill[0] = False  # label 0 is tissue
            fill[border] = False  # background reaching the border is not a hole
            mask = mask | fill[holes]
    if min_tissue_area > 0:
        pieces, n = ndimage.label(mask, structure=np.ones((3, 3), bool))  # 8-connected tissue pieces
        if n:
            keep = np.bincount(pieces.ravel()) >= min_tissue_area
            keep[0] = False
            mask = keep[pieces]
    return mask


def patch_grid(width: int, height: int, size: int, step: int | None = None) -> np.ndarray:
    """Top-left corners ``int64 [N, 2]`` as ``(x, y)`` of the ``size`` patches fully inside a ``width x height``
    image, every ``step`` (default ``size``: no overlap), in row-major order (y outer, x inner).

    Example::

        >>> patch_grid(5, 4, 2).tolist()
        [[0, 0], [2, 0], [0, 2], [2, 2]]
    """
    step = size if step is None else step
    xs = np.arange(0, width - size + 1, step, dtype=np.int64)
    ys = np.arange(0, height - size + 1, step, dtype=np.int64)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def _round(values: np.ndarray) -> np.ndarray:
    """Round half up to ``int64`` (``np.round`` rounds half to even)."""
    return np.floor(values + 0.5).astype(np.int64)


def tissue_fraction(mask: np.ndarray, coords: np.ndarray, size: int, mask_downsample: float) -> np.ndarray:
    """Fraction ``float [N]`` of each level-0 patch ``[x, x + size) x [y, y + size)`` that ``mask`` calls tissue.

    A patch covers mask pixels ``[round(x / d), round((x + size) / d))`` (at least one, rounded half up), clipped
    to the mask; the mean over that box comes from a summed-area table, batched over all patches.
    """
    h, w = mask.shape
    table = np.zeros((h + 1, w + 1), np.int64)
    table[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    x0 = np.clip(_round(coords[:, 0] / mask_downsample), 0, w)
    y0 = np.clip(_round(coords[:, 1] / mask_downsample), 0, h)
    x1 = np.clip(np.maximum(_round((coords[:, 0] + size) / mask_downsample), x0 + 1), 0, w)
    y1 = np.clip(np.maximum(_round((coords[:, 1] + size) / mask_downsample), y0 + 1), 0, h)
    inside = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    area = (x1 - x0) * (y1 - y0)
    return np.where(area > 0, inside / np.maximum(area, 1), 0.0)


@dataclass
class PatchPlan:
    """The patches of one slide: level-0 ``coords [N, 2]`` (x, y) and how to read them.

    ``attributes()`` gives the ``coords`` dataset attributes of a CLAM / TRIDENT ``.h5``.
    """

    name: str
    path: str
    magnification: float
    target_magnification: float
    geometry: PatchGeometry
    coords: np.ndarray
    level0_dimensions: tuple[int, int]
    level_dimensions: tuple[int, int]
    mask: np.ndarray = field(repr=False)
    mask_downsample: float = 1.0
    fractions: np.ndarray = field(default=None, repr=False)

    def attributes(self) -> dict[str, Any]:
        g = self.geometry
        return {
            # CLAM (wsi_core/WholeSlideImage.process_contour): patch_size is the side read at patch_level
            "patch_size": g.read_size,
            "patch_level": g.level,
            "downsample": np.array([g.level_downsample, g.level_downsample], np.float64),
            "downsampled_level_dim": np.array(self.level_dimensions, np.int64),
            "level_dim": np.array(self.level_dimensions, np.int64),
            "name": self.name,
            # TRIDENT (IO.coords_to_h5)
            "patch_size_level0": g.size_level0,
            "level0_magnification": float(self.magnification),
            "target_magnification": float(self.target_magnification),
            "level0_width": self.level0_dimensions[0],
            "level0_height": self.level0_dimensions[1],
            "overlap": 0,
            # ours: the side fed to the network
            "target_patch_size": g.output_size,
        }


def plan_patches(
    slide: Slide,
    target_magnification: float = 20.0,
    patch_size: int = 256,
    magnification: float | None = None,
    tissue_threshold: float = 0.25,
    seg_downsample: float = 32.0,
    median_size: int = 7,
    close_size: int = 4,
    min_saturation: float = 8.0,
    min_tissue_area: float = 16.0,
    max_hole_area: float = 4.0,
) -> PatchPlan:
    """Tissue patches of ``slide``: magnification, level, tissue mask, grid, kept patches.

    Args:
        slide: an open :class:`Slide`.
        target_magnification: magnification of the output patches (20x in CLAM and GiMP).
        patch_size: output patch side at ``target_magnification`` (256).
        magnification: level-0 magnification when the metadata lacks it (or to override it).
        tissue_threshold: a patch is kept when its tissue fraction is above this (0.25 ~ CLAM's ``four_pt``).
        seg_downsample: tissue detection runs about this much below level 0.
        median_size, close_size, min_saturation: see :func:`tissue_mask`.
        min_tissue_area: tissue pieces smaller than this many output patches are removed. Default 16: CLAM's
            TCGA preset ``a_t = 16`` reference patches of 512 x 512 level-0 pixels at 40x, i.e. 256 x 256 at 20x.
        max_hole_area: holes smaller than this many output patches are filled (CLAM's TCGA preset ``a_h = 4``).
    """
    power = objective_power(slide, magnification)
    try:
        geometry = patch_geometry(slide.level_downsamples, power, target_magnification, patch_size)
    except MagnificationError as e:
        raise MagnificationError(f"{slide.path}: {e}") from e
    thumb, mask_ds = read_thumbnail(slide, seg_downsample)
    patch_px = (geometry.size_level0 / mask_ds) ** 2  # one output patch in mask pixels
    mask = tissue_mask(
        thumb, median_size, close_size, min_saturation, min_tissue_area * patch_px, max_hole_area * patch_px
    )
    width, height = slide.dimensions
    grid = patch_grid(width, height, geometry.size_level0)
    fractions = tissue_fraction(mask, grid, geometry.size_level0, mask_ds)
    keep = fractions > tissue_threshold
    return PatchPlan(
        name=slide.name,
        path=slide.path,
        magnification=power,
        target_magnification=float(target_magnification),
        geometry=geometry,
        coords=grid[keep],
        level0_dimensions=(width, height),
        level_dimensions=slide.level_dimensions[geometry.level],
        mask=mask,
        mask_downsample=mask_ds,
        fractions=fractions[keep],
    )


def _runs(coords: np.ndarray, step: int, max_run: int) -> list[tuple[int, int]]:
    """``(start, length)`` of runs of consecutive patches on one grid row (same y, x advancing by ``step``)."""
    if len(coords) == 0:
        return []
    same_row = (coords[1:, 1] == coords[:-1, 1]) & (coords[1:, 0] - coords[:-1, 0] == step)
    runs, start = [], 0
    for i in range(1, len(coords) + 1):
        if i == len(coords) or not same_row[i - 1] or i - start == max_run:
            runs.append((start, i - start))
            start = i
    return runs


def read_patches(slide: Slide, coords: np.ndarray, geometry: PatchGeometry, max_run: int = 16) -> np.ndarray:
    """``uint8 [B, s, s, 3]`` patches (``s = geometry.read_size``) at level-0 ``coords [B, 2]``.

    Patches adjacent on one grid row are read as one region of up to ``max_run`` patches and cut apart; where
    the level's pixel grid does not line up with the level-0 step to within half a pixel over a run (odd level
    sizes), each patch is read alone.
    """
    s, g = geometry.read_size, geometry
    drift = abs(g.size_level0 / g.level_downsample - s) * max(max_run - 1, 0)
    run_len = max_run if drift < 0.5 else 1
    out = np.empty((len(coords), s, s, 3), np.uint8)
    for start, n in _runs(coords, g.size_level0, run_len):
        x, y = coords[start]
        region = slide.read_region((int(x), int(y)), g.level, (s * n, s))  # region: [s, s * n, 3]
        out[start : start + n] = region.reshape(s, n, s, 3).transpose(1, 0, 2, 3)
    return out


def iter_patch_batches(
    slide: Slide, plan: PatchPlan, batch_size: int, readers: int = 1, max_run: int = 16
) -> Iterator[tuple[int, np.ndarray, float]]:
    """Yield ``(start, patches uint8 [b, s, s, 3], read_seconds)`` over ``plan.coords``, in order.

    With ``readers > 0`` that many threads read the next batches while the caller works on this one (OpenSlide
    is thread-safe and releases the GIL while it decodes tiles); at most ``readers + 2`` batches are in memory.
    A read error is raised in the caller, at the batch it belongs to. ``readers=0`` reads in the caller.

    Example::

        >>> for start, patches, seconds in iter_patch_batches(slide, plan, 64):  # doctest: +SKIP
        ...     features[start : start + len(patches)] = net(prepare_patches(torch.from_numpy(patches)))
    """
    starts = iter(range(0, len(plan.coords), batch_size))

    def read(start: int) -> tuple[int, np.ndarray, float]:
        t = time.perf_counter()
        patches = read_patches(slide, plan.coords[start : start + batch_size], plan.geometry, max_run)
        return start, patches, time.perf_counter() - t

    if readers <= 0:
        yield from map(read, starts)
        return
    pool = ThreadPoolExecutor(max_workers=readers, thread_name_prefix=f"read-{plan.name}")
    try:
        pending = deque(pool.submit(read, s) for s in islice(starts, readers + 1))
        while pending:
            item = pending.popleft().result()  # re-raises the reader's exception here
            pending.extend(pool.submit(read, s) for s in islice(starts, 1))
            yield item
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
