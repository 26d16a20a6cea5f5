"""Whole-slide images -> CLAM-compatible patch features: the CLAM pipeline (tissue, patches, ResNet-50) in one command.

    python tools/extract_wsi_features.py --slides /data/slides --out_dir /data/features \\
        --weights /models/resnet50-0676ba61.pth [--sha256 HEX] [--device cuda:0] [--batch_size 256]

``--slides``: a folder (every .svs/.tif/.tiff/.ndpi/.mrxs/.scn/... in it), one slide, a text file with one
path per line, or a list. Per slide (``slide_id`` = file name without its extension):

- tissue detection (Otsu on the HSV saturation of a ~32x-downsampled image, median blur, closing, holes below
  ``--max_hole_area`` filled, pieces below ``--min_tissue_area`` removed; areas in 256 x 256 @ 20x patches);
- non-overlapping ``--patch_size`` patches at ``--target_magnification`` (read at that level, or larger at
  the next finer level and resized) whose tissue fraction exceeds ``--tissue_threshold``;
- features of CLAM's truncated ResNet-50 (through layer3, average-pooled, 1024-d, ImageNet normalisation), the
  weights from ``--weights`` (a torchvision ResNet-50 state dict; nothing is downloaded);
- written to ``<out_dir>/h5_files/<slide_id>.h5`` (``features`` float32 [N, 1024], ``coords`` int64 [N, 2]
  level-0 (x, y), CLAM's attributes ``patch_size`` (side read at ``patch_level``), ``patch_level``,
  ``downsample``, ``level_dim``, ``name`` and TRIDENT's ``patch_size_level0``, ``level0_magnification``,
  ``target_magnification``, ... on the ``coords`` dataset; ``name``, ``encoder``, ``weights_sha256`` on
  ``features``) and ``<out_dir>/pt_files/<slide_id>.pt`` (float32 tensor [N, 1024]).

A slide with both files is skipped (rerun the same command to resume; ``--overwrite`` redoes it); both are
written to temporary names and renamed, so a killed run leaves no half-written file under a final name. A slide
that cannot be read is reported with the reason and the run goes on; a summary ends the run, whose exit status
is 1 when every slide failed. ``--profile`` prints patches/s and where the time went (opening + tissue
detection, reading, backbone, writing).

Differences from CLAM: patches are fed at 256 x 256 (the GiMP paper; CLAM before 2024 did the same, its current
default resizes to 224: ``--input_size 224``), one row-major grid over the slide (CLAM: per contour,
column-major), kept on tissue fraction (CLAM: four points in a contour), resizing by antialiased bilinear
interpolation in torch (CLAM: PIL). See ``common/data/wsi.py``.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fire
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.data.wsi import Slide, iter_patch_batches, list_slides, plan_patches  # noqa: E402
from common.data.wsi_features import write_clam_h5  # noqa: E402
from common.engines.checkpoint import atomic_save, sha256_file  # noqa: E402
from common.networks.resnet_trunc import FEATURE_DIM, prepare_patches, resnet50_trunc  # noqa: E402


@dataclass
class SlideResult:
    """What happened to one slide; ``seconds`` splits its wall time (``read`` is time spent waiting on reads)."""

    slide_id: str
    path: str
    status: str  # "done", "skipped" or "failed"
    patches: int = 0
    reason: str = ""
    seconds: dict[str, float] = field(default_factory=dict)


def output_paths(out_dir: str | os.PathLike, slide_id: str) -> tuple[Path, Path]:
    """``(h5_files/<slide_id>.h5, pt_files/<slide_id>.pt)`` under ``out_dir``."""
    out = Path(out_dir)
    return out / "h5_files" / f"{slide_id}.h5", out / "pt_files" / f"{slide_id}.pt"


def is_finished(h5_path: Path, pt_path: Path) -> bool:
    """Both files there and the ``.h5`` opens with ``features`` and ``coords`` of one length."""
    if not (h5_path.is_file() and pt_path.is_file() and pt_path.stat().st_size > 0):
        return False
    try:
        import h5py

        with h5py.File(h5_path, "r") as f:
            return f["features"].shape[0] == f["coords"].shape[0]
    except Exception:  # noqa: BLE001 - anything unreadable is redone
        return False


def _remove_stale_temporaries(h5_path: Path, pt_path: Path) -> None:
    for final in (h5_path, pt_path):
        if final.parent.is_dir():
            for tmp in final.parent.glob(f".{final.name}.*.tmp"):
                tmp.unlink(missing_ok=True)


def extract_slide(
    path: str | os.PathLike,
    net: torch.nn.Module,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    input_size: int | None = None,
    amp: bool = False,
    readers: int = 1,
    backend: str = "auto",
    max_patches: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    features_attrs: dict[str, Any] | None = None,
    **plan_kwargs: Any,
) -> SlideResult:
    """Features of one slide written to ``out_dir``; failures are returned (``status="failed"``), not raised.

    Args:
        path: slide file.
        net: feature network (``[B, 3, s, s]`` in [0, 1] -> ``[B, 1024]``), in eval mode on ``device``.
        out_dir: output root (``h5_files/``, ``pt_files/``).
        batch_size: patches per forward pass.
        device: where the network runs.
        input_size: side fed to the network (default: the patch size, 256).
        amp: autocast (bfloat16 on CPU, float16 on CUDA); features are stored as float32 either way.
        readers: threads reading the next batches while the network runs (0: read in the main thread).
        backend: slide backend (``auto``, ``openslide``, ``tiffslide``).
        max_patches: use only the first N tissue patches (row-major), for quick runs and tests.
        overwrite: redo a finished slide.
        progress: a tqdm bar over the slide's patches.
        features_attrs: extra attributes of the ``features`` dataset (``encoder``, ``weights_sha256``).
        plan_kwargs: :func:`common.data.wsi.plan_patches` arguments (``magnification``, ``tissue_threshold``, ...).
    """
    from tqdm import tqdm

    slide_id = Path(path).stem
    h5_path, pt_path = output_paths(out_dir, slide_id)
    if not overwrite and is_finished(h5_path, pt_path):
        return SlideResult(slide_id, str(path), "skipped")
    _remove_stale_temporaries(h5_path, pt_path)
    seconds = {"tissue": 0.0, "read": 0.0, "read_busy": 0.0, "backbone": 0.0, "write": 0.0}
    t0 = time.perf_counter()
    try:
        with Slide(path, backend=backend) as slide:
            plan = plan_patches(slide, **plan_kwargs)
            if max_patches is not None:
                plan.coords, plan.fractions = plan.coords[:max_patches], plan.fractions[:max_patches]
            n = len(plan.coords)
            seconds["tissue"] = time.perf_counter() - t0
            if n == 0:
                return SlideResult(
                    slide_id,
                    str(path),
                    "failed",
                    reason="no tissue patches (lower --tissue_threshold?)",
                    seconds=seconds,
                )
            features = np.empty((n, FEATURE_DIM), np.float32)
            size = input_size or plan.geometry.output_size
            device_type = torch.device(device).type
            dtype = torch.float16 if device_type == "cuda" else torch.bfloat16
            bar = tqdm(total=n, desc=slide_id, unit="patch", disable=not progress, leave=False)
            t_wait = time.perf_counter()
            for start, patches, read_s in iter_patch_batches(slide, plan, batch_size, readers=readers):
                t_net = time.perf_counter()
                seconds["read"] += t_net - t_wait
                seconds["read_busy"] += read_s
                with torch.inference_mode(), torch.autocast(device_type, dtype=dtype, enabled=amp):
                    x = prepare_patches(torch.from_numpy(patches).to(device, non_blocking=True), size)
                    feats = net(x).float().cpu().numpy()  # feats: [b, 1024]
                features[start : start + len(feats)] = feats
                bar.update(len(feats))
                t_wait = time.perf_counter()
                seconds["backbone"] += t_wait - t_net
            bar.close()
        t_write = time.perf_counter()
        write_clam_h5(h5_path, features, plan.coords, plan.attributes(), {"name": slide_id, **(features_attrs or {})})
        atomic_save(torch.from_numpy(features), pt_path)
        seconds["write"] = time.perf_counter() - t_write
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - one bad slide is reported, the run goes on
        reason = str(e) if str(path) in str(e) else f"{type(e).__name__}: {e}"
        return SlideResult(slide_id, str(path), "failed", reason=reason.replace(f"{path}: ", ""), seconds=seconds)
    seconds["total"] = time.perf_counter() - t0
    return SlideResult(slide_id, str(path), "done", patches=n, seconds=seconds)


def profile_line(result: SlideResult) -> str:
    """Patches/s and the share of the slide's wall time in each stage (target: backbone >= 80 %)."""
    s = result.seconds
    total = s.get("total") or sum(v for k, v in s.items() if k != "read_busy") or 1e-9

    def share(key: str) -> str:
        return f"{s.get(key, 0.0):.2f} s ({100 * s.get(key, 0.0) / total:.1f}%)"

    return (
        f"profile {result.slide_id}: {result.patches} patches in {total:.2f} s = {result.patches / total:.2f} patches/s"
        f" | open + tissue {share('tissue')}, waiting on reads {share('read')}"
        f" (reader busy {s.get('read_busy', 0.0):.2f} s), backbone {share('backbone')}, write {share('write')}"
    )


def main(
    slides: Any,
    out_dir: str,
    weights: str | None = None,
    sha256: str | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    magnification: float | None = None,
    target_magnification: float = 20.0,
    patch_size: int = 256,
    input_size: int | None = None,
    tissue_threshold: float = 0.25,
    seg_downsample: float = 32.0,
    min_tissue_area: float = 16.0,
    max_hole_area: float = 4.0,
    backend: str = "auto",
    max_patches: int | None = None,
    readers: int = 1,
    amp: bool = False,
    num_threads: int | None = None,
    overwrite: bool = False,
    profile: bool = False,
    progress: bool = True,
) -> None:
    """Extract features of every slide in ``slides`` to ``out_dir`` (see the module docstring).

    Args:
        slides: folder, slide file, text file of paths, or list of paths.
        out_dir: output root: ``h5_files/<slide_id>.h5`` and ``pt_files/<slide_id>.pt``.
        weights: local torchvision ResNet-50 state dict (required; nothing is downloaded).
        sha256: expected hex sha256 of ``weights``.
        device: ``cpu``, ``cuda``, ``cuda:1``, ...
        batch_size: patches per forward pass.
        magnification: level-0 magnification for slides whose metadata lack it (overrides the metadata).
        target_magnification: magnification of the patches (20).
        patch_size: patch side at ``target_magnification`` (256).
        input_size: side fed to the network (default ``patch_size``; 224 = current CLAM).
        tissue_threshold: keep patches whose tissue fraction is above this.
        seg_downsample: tissue detection about this far below level 0.
        min_tissue_area: tissue pieces smaller than this many patches are removed (16 = CLAM's TCGA preset).
        max_hole_area: holes smaller than this many patches are filled (4 = CLAM's TCGA preset).
        backend: ``auto`` (openslide, then tiffslide), ``openslide`` or ``tiffslide``.
        max_patches: only the first N tissue patches of each slide (quick runs, tests).
        readers: threads reading the next batches while the network runs (0: read in the main thread).
        amp: mixed precision autocast.
        num_threads: torch CPU threads (default: torch's).
        overwrite: redo finished slides.
        profile: print throughput and time shares per slide and overall.
        progress: tqdm bars.
    """
    if weights is None:
        print(
            "give --weights: a local torchvision ResNet-50 state dict (e.g. resnet50-0676ba61.pth); nothing is downloaded"
        )
        sys.exit(2)
    if num_threads:
        torch.set_num_threads(int(num_threads))
    try:
        paths = list_slides(slides)
    except (FileNotFoundError, OSError) as e:
        print(f"ERROR {e}")
        sys.exit(2)
    if not paths:
        print(f"ERROR {slides}: no slides found (suffixes .svs, .tif, .tiff, .ndpi, .mrxs, .scn, ...)")
        sys.exit(2)
    try:
        net = resnet50_trunc(weights, sha256=sha256, device=device)
    except ValueError as e:
        print(f"ERROR {e}")
        sys.exit(2)
    attrs = {"encoder": "resnet50_trunc", "weights_sha256": (sha256 or sha256_file(weights)).lower()}
    plan_kwargs = dict(
        magnification=magnification,
        target_magnification=target_magnification,
        patch_size=patch_size,
        tissue_threshold=tissue_threshold,
        seg_downsample=seg_downsample,
        min_tissue_area=min_tissue_area,
        max_hole_area=max_hole_area,
    )
    results: list[SlideResult] = []
    seen: dict[str, str] = {}
    t0 = time.perf_counter()
    for path in paths:
        slide_id = path.stem
        if slide_id in seen:
            result = SlideResult(slide_id, str(path), "failed", reason=f"slide id already used by {seen[slide_id]}")
        else:
            seen[slide_id] = str(path)
            result = extract_slide(
                path,
                net,
                out_dir,
                batch_size=batch_size,
                device=device,
                input_size=input_size,
                amp=amp,
                readers=readers,
                backend=backend,
                max_patches=max_patches,
                overwrite=overwrite,
                progress=progress,
                features_attrs=attrs,
                **plan_kwargs,
            )
        results.append(result)
        if result.status == "failed":
            print(f"FAILED {result.slide_id} ({result.path}): {result.reason}", flush=True)
        elif result.status == "skipped":
            print(f"skipped {result.slide_id}: already extracted", flush=True)
        else:
            print(f"done {result.slide_id}: {result.patches} patches", flush=True)
            if profile:
                print(profile_line(result), flush=True)
    done = [r for r in results if r.status == "done"]
    failed = [r for r in results if r.status == "failed"]
    skipped = [r for r in results if r.status == "skipped"]
    patches = sum(r.patches for r in done)
    print(
        f"summary: {len(done)} extracted ({patches} patches), {len(skipped)} skipped (already done), "
        f"{len(failed)} failed, of {len(results)} slides in {time.perf_counter() - t0:.1f} s -> {out_dir}"
    )
    for r in failed:
        print(f"  failed {r.slide_id}: {r.reason}")
    if profile and done:
        total = SlideResult("all", "", "done", patches, seconds={})
        for key in ("tissue", "read", "read_busy", "backbone", "write", "total"):
            total.seconds[key] = sum(r.seconds.get(key, 0.0) for r in done)
        print(profile_line(total))
    if failed and len(failed) == len(results):
        sys.exit(1)


if __name__ == "__main__":
    fire.Fire(main)
