"""Real MetaImage volumes in the PI-CAI layout, end to end: ITK writes the nilearn MNI152 template as
``<patient>/<patient>_<study>_{t2w,adc,hbv}.mha``, and m2mae pre-trains on that folder as given (issue 17.2)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_VIT, run_bundle, run_dirs

from common.data.datalist import is_picai_folder, resolve_datalist, scan_picai_folder


def _write_mha(path, data: np.ndarray, spacing: float, origin) -> None:
    import itk

    img = itk.image_from_array(np.ascontiguousarray(data.transpose(2, 1, 0).astype(np.float32)))  # z, y, x
    img.SetSpacing([spacing] * 3)
    img.SetOrigin([float(o) for o in origin])
    itk.imwrite(img, str(path))


@pytest.fixture(scope="module")
def picai(tmp_path_factory):
    from nilearn import datasets

    template = datasets.load_mni152_template(resolution=2)
    t2w = np.asarray(template.get_fdata(), dtype=np.float32)[::2, ::2, ::2]  # 4 mm, about 50 x 59 x 48
    root = tmp_path_factory.mktemp("picai") / "images"
    rng = np.random.default_rng(0)
    for patient in ("10000", "10001", "10002"):
        study = f"{patient}_{int(patient) + 1000000}"
        (root / patient).mkdir(parents=True)
        base = t2w * rng.uniform(0.8, 1.2) + rng.normal(0, 5, t2w.shape).astype(np.float32)
        sequences = {"t2w": base, "adc": base.max() - base, "hbv": np.sqrt(np.clip(base, 0, None))}
        for name, data in sequences.items():
            _write_mha(root / patient / f"{study}_{name}.mha", data, 4.0, (-90.0, -126.0, -72.0))
    return root


def test_picai_folder_is_recognised_and_scanned(picai, tmp_path):
    assert is_picai_folder(picai) and not is_picai_folder(tmp_path)
    entries = resolve_datalist(str(picai), modalities=["t2w", "adc", "hbv"])
    assert [e["subject_id"] for e in entries] == ["10000_1010000", "10001_1010001", "10002_1010002"]
    assert entries[0]["image"][1].endswith("10000/10000_1010000_adc.mha")
    with pytest.raises(ValueError, match="PI-CAI layout .* pass e.g. --modalities"):
        scan_picai_folder(picai, ["t1", "t2"])
    (picai / "10002" / "10002_1010002_hbv.mha").rename(tmp_path / "moved.mha")
    with pytest.raises(FileNotFoundError, match="10002_1010002: no hbv file"):
        scan_picai_folder(picai)
    (tmp_path / "moved.mha").rename(picai / "10002" / "10002_1010002_hbv.mha")


@pytest.mark.slow
def test_m2mae_pretrains_on_picai_metaimages(picai, tmp_path):
    proc = run_bundle(
        "bundles/m2mae/configs/train.json",
        *TINY_VIT,
        "--dataset_dir",
        str(picai),
        "--modalities",
        "['t2w','adc','hbv']",
        "--disc_channels",
        "8",
        "--num_workers",
        "0",
        "--epochs",
        "1",
        *run_dirs(tmp_path / "models", tmp_path / "logs"),
    )
    log = proc.stdout + proc.stderr
    assert "data check passed" in log and (tmp_path / "models" / "model.pt").is_file()
