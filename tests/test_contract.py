"""Input contracts: built from the real transforms, compared key by key, and enforced through the bundle runner."""

from __future__ import annotations

import subprocess

import pytest
import torch
from conftest import REPO, TINY_VIT, bundle_command, run_bundle, run_dirs
from monai.transforms import NormalizeIntensityd, Orientationd, ScaleIntensityRangePercentilesd, Spacingd

from common.engines.contract import ContractError, check_contract, input_contract, read_contract, write_contract


def _contract(
    modalities=("t1", "t2"), pixdim=(0.0, 0.0, 0.0), lower=1, axcodes="RAS", crop=(32, 32, 32), patch=16, **kw
):
    transforms = [
        Orientationd("image", axcodes=axcodes, labels=None),
        Spacingd("image", pixdim=pixdim),
        ScaleIntensityRangePercentilesd("image", lower=lower, upper=99, b_min=0.0, b_max=1.0, clip=True),
    ]
    return input_contract(transforms, list(modalities), list(crop), {"name": "vit", "hidden_size": 48}, patch, **kw)


def test_contract_reads_the_transforms():
    c = _contract(pixdim=(1.0, 1.0, 2.0))
    assert c["orientation"] == "RAS" and c["spacing"] == [1.0, 1.0, 2.0]
    assert c["intensity"] == {"transform": "ScaleIntensityRangePercentiles", "lower": 1, "upper": 99, "b_min": 0.0,
                              "b_max": 1.0, "clip": True, "relative": False, "channel_wise": False}  # fmt: skip
    assert c["patch_size"] == [16, 16, 16] and _contract()["spacing"] is None  # pixdim 0: native spacing
    z = input_contract([NormalizeIntensityd("image", nonzero=True, channel_wise=True)], ["t1"], [8, 8, 8], {})
    assert z["intensity"]["transform"] == "NormalizeIntensity" and z["orientation"] is None


def _stored(tmp_path, contract):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1), "input_contract": contract}, path)
    return str(path)


def test_matching_contract_passes_and_each_mismatch_is_named(tmp_path):
    path = _stored(tmp_path, _contract())
    assert check_contract(path, _contract()) == []
    with pytest.raises(ContractError) as e:
        check_contract(
            path, _contract(modalities=("t2", "t1"), pixdim=(1.0, 1.0, 1.0), axcodes="LPS", crop=(64, 64, 64))
        )
    message = str(e.value)
    assert "the same contrasts in another order" in message and "spacing" in message and "orientation" in message
    assert "crop_size" in message and "--adapt_contract true" in message and path in message


def test_adapt_accepts_differences_and_percentile_bounds_are_notes_not_errors(tmp_path):
    path = _stored(tmp_path, _contract())
    assert len(check_contract(path, _contract(modalities=("t2", "t1")), adapt=True)) == 1
    assert check_contract(path, _contract(lower=5)) == []  # same transform and output range: BrainMVP's 1-99 vs 5-95


def test_unordered_modalities_need_only_overlap_and_convolutional_crops_are_free(tmp_path):
    path = _stored(tmp_path, _contract(channel_order=False, patch=None))
    assert check_contract(path, _contract(modalities=("t2",), crop=(96, 96, 64), channel_order=False, patch=None)) == []
    with pytest.raises(ContractError, match="none of them"):
        check_contract(path, _contract(modalities=("adc",), channel_order=False, patch=None))


def test_sidecar_and_missing_contract(tmp_path, caplog):
    torch.save({"w": torch.zeros(1)}, tmp_path / "plain.pt")
    assert check_contract(str(tmp_path / "plain.pt"), _contract()) == [] and "carries no input contract" in caplog.text
    write_contract(_contract(), tmp_path / "plain.pt")
    assert read_contract(tmp_path / "plain.pt") == _contract()
    assert check_contract(None, _contract()) == []


@pytest.mark.slow
def test_downstream_bundle_refuses_an_encoder_trained_on_other_inputs(tmp_path, demo_dataset):
    """m2mae pre-trained on t1, t1ce, t2, flair; m2mae_seg asked to fine-tune it on the same contrasts in another order
    stops before training, naming the difference; --adapt_contract true lets it go on."""
    data = ["--dataset_dir", str(demo_dataset.parent)]
    run_bundle(
        "bundles/m2mae/configs/train.json",
        *TINY_VIT,
        *data,
        "--epochs",
        "1",
        *run_dirs(tmp_path / "pre", tmp_path / "pre_logs"),
    )
    ckpt = tmp_path / "pre" / "model.pt"
    assert read_contract(ckpt)["modalities"] == ["t1", "t1ce", "t2", "flair"]
    seg = [
        *TINY_VIT,
        *data,
        "--epochs",
        "1",
        "--pretrained_ckpt",
        str(ckpt),
        "--modalities",
        "['flair','t1','t1ce','t2']",
    ]
    cmd = bundle_command(
        "bundles/m2mae_seg/configs/train.json", *seg, *run_dirs(tmp_path / "seg", tmp_path / "seg_logs")
    )
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "the same contrasts in another order" in proc.stdout + proc.stderr
    assert not (tmp_path / "seg" / "model.pt").exists()
    proc = run_bundle(
        "bundles/m2mae_seg/configs/train.json",
        *seg,
        "--adapt_contract",
        "true",
        *run_dirs(tmp_path / "seg", tmp_path / "seg_logs"),
    )
    assert "adapting, as asked" in proc.stdout + proc.stderr
    assert read_contract(tmp_path / "seg" / "model.pt")["modalities"] == ["flair", "t1", "t1ce", "t2"]  # sidecar
