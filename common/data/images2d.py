"""2D RGB images (fundus photographs, pathology tiles): loading, preprocessing, checks and paired datalists.

Reader: MONAI's ``LoadImaged`` with ``PILReader(reverse_indexing=False, converter=to_rgb)`` for PNG, JPEG, TIFF
and BMP of any size (single-page or the first page of a multi-page TIFF; pyramidal slides are WSI data, see the
WSI readers). Convention: a loaded image is ``[C=3, H, W]``, row 0 the top of the picture, column 0 its left
edge, exactly the layout of ``np.asarray(PIL.Image.open(path))`` moved channel-first, as torchvision and
ImageNet / MAE ViT weights expect. (MONAI's ``PILReader`` default, ``reverse_indexing=True``, swaps H and W to
match its 3D readers: a pretrained ViT would then see every image transposed.) ``to_rgb`` makes every image
3-channel: grey (``L``, ``1``, 16-bit ``I;16`` scaled to 8 bits) is replicated to 3 channels, a palette is
expanded, an alpha channel (``RGBA``, ``LA``) is dropped (not composited over a background), CMYK / YCbCr are
converted; 32-bit integer or float images are refused.

Preprocessing (:func:`image_preprocessing`): intensities to [0, 1] (``/ 255``), resize so that the longer side is
``size`` (default 224; bilinear with anti-aliasing) and zero-pad the shorter side symmetrically to a square
(``fit="pad"``: nothing is cropped, a fundus keeps its whole field of view), or stretch to ``size x size``
(``fit="stretch"``); then ImageNet normalisation (``(x - mean) / std`` per channel, mean ``IMAGENET_MEAN``, std
``IMAGENET_STD``, as MAE and ContIG) or none (``normalisation="unit"``: values stay in [0, 1]). Padding happens
before normalisation, so the padded border equals a black pixel.

Example::

    load = Compose(image_preprocessing(keys="image", size=224))
    load({"image": "fundus.jpg"})["image"].shape  # torch.Size([3, 224, 224])
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import PILReader

from common.data.validate import Problem

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "to_rgb",
    "RowMajorPILReader",
    "image_reader",
    "load_image2d",
    "image_preprocessing",
    "check_image2d",
    "read_image_datalist",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
_GREY = ("1", "L", "LA", "I;16", "I;16B", "I;16L", "I;16N")
_SIXTEEN = ("I;16", "I;16B", "I;16L", "I;16N")
_REFUSED = ("I", "F")  # 32-bit integer / float: no defined 8-bit RGB mapping


def to_rgb(image: Any) -> Any:
    """A PIL image as 8-bit ``RGB`` (rules in the module docstring); a 32-bit image raises ``ValueError``.

    Example: ``to_rgb(PIL.Image.open("grey.png")).mode == "RGB"``.
    """
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in _REFUSED:
        name = getattr(image, "filename", "") or "image"
        raise ValueError(f"{name}: 32-bit '{image.mode}' image; save it as 8-bit RGB (or grey) PNG/JPEG/TIFF")
    if image.mode in _SIXTEEN:
        image = Image.fromarray((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8))  # 2D uint8 -> "L"
    return image.convert("RGB")


class RowMajorPILReader(PILReader):
    """MONAI's ``PILReader`` that also reports ``spatial_shape`` as (height, width), the order of the array it returns
    with ``reverse_indexing=False`` (``PILReader`` always reports (width, height)). Nothing else differs."""

    def _get_spatial_shape(self, img: Any) -> np.ndarray:
        return np.asarray((img.height, img.width))


def image_reader() -> RowMajorPILReader:
    """The reader in this collection's convention: ``[H, W, C]`` arrays (no axis swap), RGB via ``to_rgb``."""
    return RowMajorPILReader(converter=to_rgb, reverse_indexing=False)


def load_image2d(path: str | os.PathLike) -> torch.Tensor:
    """One image as a float32 ``[3, H, W]`` tensor of 0..255 values (MONAI ``LoadImage`` + ``image_reader``).

    Example: ``load_image2d("tile.png").shape  # torch.Size([3, H, W])``.
    """
    from monai.transforms import LoadImage

    img = LoadImage(reader=image_reader(), image_only=True, ensure_channel_first=True, dtype=np.float32)(str(path))
    return torch.as_tensor(img, dtype=torch.float32)


def image_preprocessing(
    keys: str | Sequence[str] = "image",
    size: int = 224,
    normalisation: str = "imagenet",
    fit: str = "pad",
) -> list:
    """The standard deterministic preprocessing of a 2D RGB image: load, [0, 1], resize (+ pad), normalise.

    Args:
        keys: image key(s) of the data dict (file paths in, ``[3, size, size]`` float32 tensors out).
        size: output edge length.
        normalisation: ``"imagenet"`` (per-channel ImageNet mean / std) or ``"unit"`` (values in [0, 1]).
        fit: ``"pad"`` (longer side to ``size``, zero-pad to a square) or ``"stretch"`` (both sides to ``size``).

    Example (config): ``"preprocessing": {"_target_": "Compose", "transforms":
    "$common.data.images2d.image_preprocessing('image', @image_size)"}``.
    """
    from monai.transforms import (
        EnsureTyped,
        LoadImaged,
        NormalizeIntensityd,
        Resized,
        ScaleIntensityRanged,
        SpatialPadd,
    )

    if normalisation not in ("imagenet", "unit"):
        raise ValueError(f"normalisation must be 'imagenet' or 'unit', got {normalisation!r}")
    if fit not in ("pad", "stretch"):
        raise ValueError(f"fit must be 'pad' or 'stretch', got {fit!r}")
    out = [
        LoadImaged(keys, reader=image_reader(), image_only=True, ensure_channel_first=True, dtype=np.float32),
        ScaleIntensityRanged(keys, a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0),
    ]
    if fit == "pad":
        out += [
            Resized(keys, spatial_size=size, size_mode="longest", mode="bilinear", anti_aliasing=True),
            SpatialPadd(keys, spatial_size=(size, size), mode="constant"),
        ]
    else:
        out.append(Resized(keys, spatial_size=(size, size), mode="bilinear", anti_aliasing=True))
    if normalisation == "imagenet":
        out.append(NormalizeIntensityd(keys, subtrahend=IMAGENET_MEAN, divisor=IMAGENET_STD, channel_wise=True))
    out.append(EnsureTyped(keys, dtype=torch.float32))
    return out


def check_image2d(
    path: str | os.PathLike,
    subject: str = "",
    key: str = "image",
    min_size: int = 32,
    size: int | None = None,
    allow_grey: bool = True,
    check_content: bool = True,
) -> list[Problem]:
    """Problems of one 2D image file, each naming the subject, the file and the problem.

    Errors: file missing; unreadable / truncated / not an image; a channel layout ``to_rgb`` cannot map (32-bit
    integer or float); smaller than ``min_size`` on a side; NaN or Inf pixels; every pixel equal (a blank
    image); grey when ``allow_grey=False``. Warnings: grey (replicated to 3 channels), an alpha channel that is
    not fully opaque (dropped, not composited), several TIFF pages (the first is read), smaller than ``size`` on
    its longer side (it will be upsampled).

    Example: ``check_image2d("fundus.png", subject="1000123", size=224)  # [] when fine``.
    """
    from PIL import Image

    path, sid = str(path), subject or "?"
    if not os.path.isfile(path):
        return [Problem("error", sid, path, f"{key}: file not found")]
    try:
        with Image.open(path) as im:
            mode, frames = im.mode, getattr(im, "n_frames", 1)
            im.load()
            arr = np.asarray(im) if check_content else None
            width, height = im.size
    except Exception as e:  # noqa: BLE001 - any PIL failure is reported, never raised from deep inside
        return [Problem("error", sid, path, f"{key}: unreadable or corrupt image ({type(e).__name__}: {str(e)[:160]})")]
    found: list[Problem] = []
    if mode in _REFUSED:
        found.append(Problem("error", sid, path, f"{key}: 32-bit '{mode}' image; expected 8-bit RGB (3 channels)"))
    elif mode in _GREY:
        message = f"{key}: grey image ('{mode}', 1 channel)"
        if allow_grey:
            found.append(Problem("warning", sid, path, message + ", replicated to 3 channels"))
        else:
            found.append(Problem("error", sid, path, message + "; 3 channels (RGB) expected"))
    if arr is not None and mode in ("RGBA", "LA", "PA") and arr[..., -1].min() < 255:
        found.append(Problem("warning", sid, path, f"{key}: alpha channel not opaque; it is dropped, not composited"))
    if frames > 1:
        found.append(Problem("warning", sid, path, f"{key}: {frames} pages; only the first is read"))
    if min(width, height) < min_size:
        found.append(Problem("error", sid, path, f"{key}: {width}x{height} pixels, smaller than {min_size} on a side"))
    elif size is not None and max(width, height) < size:
        found.append(Problem("warning", sid, path, f"{key}: {width}x{height} pixels, upsampled to {size}"))
    if arr is not None:
        nan = int(np.isnan(arr).sum()) if arr.dtype.kind == "f" else 0  # only float images can hold NaN / Inf
        inf = int(np.isinf(arr).sum()) if arr.dtype.kind == "f" else 0
        if nan or inf:
            found.append(Problem("error", sid, path, f"{key}: {nan} NaN and {inf} Inf pixel values"))
        elif arr.max() == arr.min():
            found.append(Problem("error", sid, path, f"{key}: blank image (every pixel is {float(arr.flat[0]):g})"))
    return found


def _cell(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def read_image_datalist(
    path: str | os.PathLike,
    split: str = "training",
    image_key: str = "image",
    path_keys: Sequence[str] = (),
    base_dir: str | os.PathLike | None = None,
) -> list[dict]:
    """Data dicts of one split from a decathlon-style JSON (``{"training": [{"subject_id": .., "image": ..}]}``) or
    a CSV (columns ``subject_id, image, ...``; an optional ``split`` column selects rows, without it every row
    belongs to every split). Relative paths in ``image_key`` and ``path_keys`` are resolved against ``base_dir``
    (default: the datalist's folder); CSV numbers become int / float; a missing ``subject_id`` becomes the image
    file's stem.

    Example: ``read_image_datalist("datalist.json", "validation")``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"datalist {path} does not exist")
    if path.suffix.lower() == ".json":
        try:
            content = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"datalist {path} is not valid JSON: {e}") from e
        if split not in content or not isinstance(content[split], list):
            raise KeyError(f"datalist {path} has no '{split}' list (it has: {sorted(content)})")
        rows = content[split]
    else:
        text_keys = {"subject_id", "split", image_key, *path_keys}  # ids stay strings ("001" is not 1)
        with open(path, newline="") as f:
            rows = [
                {k: v if k in text_keys else _cell(v) for k, v in r.items() if v not in ("", None)}
                for r in csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            ]
        rows = [r for r in rows if r.get("split", split) == split]
    base = Path(base_dir) if base_dir else path.parent
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or image_key not in row:
            raise ValueError(f"datalist {path}: {split} entry {i} has no '{image_key}'")
        entry = dict(row)
        for k in (image_key, *path_keys):
            if isinstance(entry.get(k), str) and not os.path.isabs(entry[k]):
                entry[k] = str(base / entry[k])
        entry["subject_id"] = str(entry.get("subject_id", Path(entry[image_key]).stem))
        out.append(entry)
    return out
