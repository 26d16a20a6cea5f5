"""Templates stay in register with the image through every transform of the BrainMVP bundles' configs.

Each test builds the image *from the template canvas itself* (every modality file holds its template), runs the
bundle's own training transforms on it many times (random crops, flips, pads, resizes; the intensity transforms
are left out, they do not move voxels), and checks that the template read through each sample's canvas map equals
the image channel it would replace, voxel for voxel. Files are written in RAS, LPS and a permuted orientation
(LSA), and crops reach into padding.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, MapTransform
from monai.transforms.intensity import dictionary as intensity

from common.networks.templates import ModalityTemplates

MODALITIES = ["t1", "t1ce", "t2", "flair"]
CANVAS = (20, 22, 18)
SPACING = 2.0
ORIGIN = np.array([-20.0, -30.0, 10.0])


def _canvas() -> np.ndarray:
    """Four templates ``[4, *CANVAS]``: positive, distinct values inside a foreground box, zero around it."""
    rng = np.random.default_rng(0)
    t = np.zeros((4, *CANVAS), np.float32)
    t[:, 2:18, 3:19, 2:16] = 0.1 + rng.random((4, 16, 16, 14), dtype=np.float32)
    return t


def _write(volume: np.ndarray, path: Path, orientation: str) -> Path:
    """Store ``volume`` (RAS voxel order) under ``orientation`` with the affine that keeps every voxel's world place."""
    x, y, z = volume.shape
    ras = np.diag([SPACING, SPACING, SPACING, 1.0])
    ras[:3, 3] = ORIGIN
    if orientation == "RAS":
        data, affine = volume, ras
    elif orientation == "LPS":  # file axes run right-to-left and anterior-to-posterior
        data = volume[::-1, ::-1, :]
        affine = ras @ np.array([[-1, 0, 0, x - 1], [0, -1, 0, y - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    elif orientation == "LSA":  # permuted axes: file (L, S, A) -> world (x, z, y)
        data = volume[::-1].transpose(0, 2, 1)
        affine = ras @ np.array([[-1, 0, 0, x - 1], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], float)
    else:
        raise ValueError(orientation)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), path)
    return path


def _entry(tmp_path: Path, orientation: str, canvas: np.ndarray) -> dict:
    files = {
        m: str(_write(canvas[i], tmp_path / f"{m}_{orientation}.nii.gz", orientation)) for i, m in enumerate(MODALITIES)
    }
    label = np.zeros(CANVAS, np.uint8)
    label[6:12, 8:14, 5:10] = 1
    label[8:10, 10:12, 6:8] = 3
    files["label"] = str(_write(label, tmp_path / f"label_{orientation}.nii.gz", orientation))
    return {"subject_id": "s", "image": [files[m] for m in MODALITIES], **files}


def _geometric(transforms: list) -> list:
    """The config's transforms without the intensity ones (which change values, not positions)."""
    return [t for t in transforms if not isinstance(t, tuple(vars(intensity)[n] for n in intensity.__all__))]


def _pipeline(bundle: str, *parts: str, **overrides) -> Compose:
    parser = ConfigParser()
    parser.read_config(f"bundles/{bundle}/configs/train.json")
    for key, value in overrides.items():
        parser[key] = value
    transforms = [t for part in parts for t in parser.get_parsed_content(part, instantiate=True)]
    return Compose(_geometric(transforms))


def _check(samples: list[dict], templates: ModalityTemplates, channel_index, atol: float) -> set:
    """Assert template == image channel in every sample; return the signs of the maps' diagonals (flips seen)."""
    signs = set()
    for d in samples:
        image, canvas_map = d["image"], torch.as_tensor(d["canvas_map"])[None]
        index = channel_index(d)
        got = templates.sample(index[None], canvas_map, image.shape[1:])[0]
        want = torch.as_tensor(image)[: index.numel()] if "modality_index" not in d else torch.as_tensor(image)[:1]
        assert torch.allclose(got, want.float(), atol=atol), f"max error {(got - want).abs().max():.3g}"
        signs |= {tuple(np.sign(np.round(canvas_map[0, :3, :3].numpy(), 6)).sum(0).astype(int))}
    return signs


def _templates() -> ModalityTemplates:
    t = ModalityTemplates(MODALITIES, CANVAS)
    with torch.no_grad():
        t.templates.copy_(torch.from_numpy(_canvas())[:, None])
    return t


def _draw(pipeline: Compose, entry: dict, n: int) -> list[dict]:
    samples = []
    for seed in range(n):
        pipeline.set_random_state(seed=seed)
        out = pipeline(dict(entry))
        samples += out if isinstance(out, list) else [out]
    return samples


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "LSA"])
def test_brainmvp_seg_templates_follow_crops_flips_and_padding(tmp_path, orientation):
    # a crop taller than the foreground along z, so SpatialPadd pads both sides and every crop reaches padding
    pipeline = _pipeline("brainmvp_seg", "base_transforms", "train#random_transforms", roi_size=[12, 12, 16])
    samples = _draw(pipeline, _entry(tmp_path, orientation, _canvas()), 24)
    flips = _check(samples, _templates(), lambda d: torch.arange(4), atol=1e-6)
    assert len(flips) > 1, "the random flips never fired: the test would not see a mirrored template"
    assert any((torch.as_tensor(d["image"]) == 0).all(0).any() for d in samples), "no crop reached padding"


@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_brainmvp_cls_templates_follow_resize_crops_and_flips(tmp_path, orientation):
    pipeline = _pipeline(
        "brainmvp_cls", "base_transforms", "train#random_transforms", resize=[26, 30, 24], roi_size=[16, 18, 12]
    )
    entry = {k: v for k, v in _entry(tmp_path, orientation, _canvas()).items() if k != "label"}
    samples = _draw(pipeline, {**entry, "label": 0}, 16)
    flips = _check(samples, _templates(), lambda d: torch.arange(4), atol=1e-5)
    assert len(flips) > 1


@pytest.mark.parametrize("orientation", ["RAS", "LSA"])
def test_brainmvp_pretraining_templates_follow_the_crop_box(tmp_path, orientation):
    pipeline = _pipeline(
        "brainmvp",
        "train#preprocessing_transforms",
        "train#random_transforms",
        roi_size=[12, 12, 12],
        template_canvas=list(CANVAS),
    )
    entry = {k: v for k, v in _entry(tmp_path, orientation, _canvas()).items() if k in MODALITIES}
    samples = _draw(pipeline, entry, 12)
    _check(samples, _templates(), lambda d: torch.as_tensor(d["modality_index"])[:1], atol=1e-6)


def test_record_canvas_is_required_for_registered_templates():
    from monai.data import MetaTensor

    from common.transforms.modality import CanvasMapd

    with pytest.raises(ValueError, match="RecordCanvasd"):
        CanvasMapd("image")({"image": MetaTensor(torch.zeros(1, 4, 4, 4))})
    assert issubclass(CanvasMapd, MapTransform)


def test_auto_canvas_warns_when_studies_are_not_on_one_grid(tmp_path, caplog):
    import logging

    import nibabel as nib

    from common.transforms.modality import warn_unregistered

    def study(name, shape, affine):
        path = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.ones(shape, np.float32), affine), path)
        return {"subject_id": name, "t1": str(path)}

    same = [study("a", (8, 8, 8), np.eye(4)), study("b", (8, 8, 8), np.eye(4))]
    with caplog.at_level(logging.WARNING):
        assert warn_unregistered(same, ["t1"]) is False
    assert caplog.text == ""
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    with caplog.at_level(logging.WARNING):
        assert warn_unregistered([*same, study("c", (8, 8, 8), shifted)], ["t1"]) is True
    assert "not on one grid (a: (8, 8, 8), c: (8, 8, 8), affines differ by 5)" in caplog.text
    assert warn_unregistered([*same, study("d", (9, 8, 8), np.eye(4))], ["t1"]) is True
