"""Data validation: each kind of broken input gives its exact problem; all problems at once; CLI exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import REPO, bundle_command

from common.data.validate import DataValidationError, check_or_raise, validate_datalist, validate_entries

MODS = ["t1", "t2"]


def vol(path: Path, data=None, affine=None, shape=(8, 8, 8)) -> str:
    seed = zlib.crc32(Path(path).name.encode())  # each file its own voxels: no two contrasts byte-identical
    data = np.random.default_rng(seed).random(shape).astype(np.float32) + 0.1 if data is None else data
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return str(path)


def case(tmp: Path, sid: str = "S1", **overrides) -> dict:
    folder = tmp / sid
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"subject_id": sid, "t1": vol(folder / "t1.nii.gz"), "t2": vol(folder / "t2.nii.gz")}
    entry.update(overrides)
    return entry


def only(problems, severity="error"):
    return [p for p in problems if p.severity == severity]


def expect(problems, file_part: str | None, message_part: str, severity: str = "error"):
    hits = [
        p
        for p in problems
        if p.severity == severity
        and message_part in p.message
        and (file_part is None or (p.file and file_part in p.file))
    ]
    assert hits, f"no {severity} with '{message_part}' for {file_part}: {[str(p) for p in problems]}"


def test_clean_entries_have_no_problem(tmp_path):
    lab = vol(tmp_path / "lab.nii.gz", np.zeros((8, 8, 8), np.uint8))
    assert validate_entries([case(tmp_path, label=lab)], MODS, label_key="label", label_values=[0, 1, 2, 3]) == []


BROKEN = {
    "missing file": (lambda t: case(t, t1=str(t / "nope.nii.gz")), "nope.nii.gz", "file not found"),
    "random bytes as NIfTI": (
        lambda t: case(t, t1=_write(t / "bad.nii.gz", b"not a nifti at all" * 10)),
        "bad.nii.gz",
        "cannot be read",
    ),
    "truncated gzip NIfTI": (
        lambda t: case(t, t1=_truncate(vol(t / "trunc.nii.gz", shape=(32, 32, 32)))),
        "trunc.nii.gz",
        "cannot be read",
    ),
    "NaN voxels": (lambda t: case(t, t1=vol(t / "nan.nii.gz", _with(np.nan))), "nan.nii.gz", "NaN voxels (1 of 512)"),
    "Inf voxels": (lambda t: case(t, t1=vol(t / "inf.nii.gz", _with(np.inf))), "inf.nii.gz", "Inf voxels"),
    "empty volume": (
        lambda t: case(t, t2=vol(t / "zero.nii.gz", np.zeros((8, 8, 8), np.float32))),
        "zero.nii.gz",
        "empty volume",
    ),
    "shape mismatch": (
        lambda t: case(t, t2=vol(t / "big.nii.gz", shape=(8, 8, 9))),
        None,
        "modalities differ in shape",
    ),
    "affine mismatch": (
        lambda t: case(t, t2=vol(t / "shift.nii.gz", affine=np.diag([1.0, 1, 2, 1]))),
        "shift.nii.gz",
        "not co-registered",
    ),
    "4D volume": (lambda t: case(t, t2=vol(t / "4d.nii.gz", shape=(8, 8, 8, 3))), "4d.nii.gz", "4D volume"),
    "missing modality": (lambda t: {k: v for k, v in case(t).items() if k != "t2"}, None, "missing modality 't2'"),
    "no image at all": (lambda t: {"subject_id": "S1"}, None, "no image at all"),
    "not an object": (lambda t: "just/a/path.nii.gz", None, "expected an object"),
    "label outside set": (
        lambda t: case(t, label=vol(t / "lab.nii.gz", _label(5))),
        "lab.nii.gz",
        "label values [5] outside",
    ),
    "label shape": (
        lambda t: case(t, label=vol(t / "lab2.nii.gz", np.zeros((8, 8, 7), np.uint8))),
        "lab2.nii.gz",
        "differs from the images",
    ),
    "gene vector length": (lambda t: case(t, genes=[0.1, 0.2, 0.3]), None, "gene vector of length 3, expected 4"),
    "gene vector non-numeric": (
        lambda t: case(t, genes=_csv(t / "g.csv", "TP53,EGFR,IDH1,ATRX\n0.1,high,0.3,0.4\n")),
        "g.csv",
        "non-numeric entries (first: index 1, 'high')",
    ),
    "empty WSI bag": (
        lambda t: case(t, bag=_npy(t / "bag.npy", np.zeros((0, 16), np.float32))),
        "bag.npy",
        "zero patches",
    ),
    "WSI bag wrong rank": (
        lambda t: case(t, bag=_pt(t / "bag.pt", torch.zeros(16))),
        "bag.pt",
        "expected [patches, features]",
    ),
    "class label not integer": (lambda t: case(t, grade="high"), None, "is not an integer class"),
    "class label out of range": (lambda t: case(t, grade=3), None, "outside 0..1"),
    "corrupt DICOM": (lambda t: case(t, t1=_dicom_dir(t)), "dcm", "DICOM file"),
    "2-D PNG to a 3-D bundle": (
        lambda t: case(t, t1=_png(t / "slice.png")),
        "slice.png",
        "a 2-D image (shape (8, 8, 3))",
    ),
    "one-slice NIfTI": (lambda t: case(t, t1=vol(t / "one.nii.gz", shape=(8, 8, 1))), "one.nii.gz", "a 2-D image"),
    "corrupt MetaImage": (
        lambda t: case(t, t1=_write(t / "bad.mha", b"ObjectType = Image\nNDims = 3\n")),
        "bad.mha",
        "cannot be read as .mha",
    ),  # fmt: skip
}


def _png(path: Path) -> str:
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8)).save(path)
    return str(path)


def _mha(path: Path, data: np.ndarray, spacing=(1.0, 1.0, 1.0), direction=None) -> str:
    """Write ``data`` (x, y, z) as a MetaImage with ITK itself."""
    import itk

    img = itk.image_from_array(np.ascontiguousarray(data.transpose(2, 1, 0)))  # ITK arrays are z, y, x
    img.SetSpacing(spacing)
    if direction is not None:
        img.SetDirection(itk.matrix_from_array(np.asarray(direction, dtype=np.float64)))
    itk.imwrite(img, str(path))
    return str(path)


def test_metaimage_studies_are_read_like_nifti(tmp_path):
    data = np.random.default_rng(0).random((8, 9, 7)).astype(np.float32) + 0.1
    entry = {"subject_id": "P1", "t1": _mha(tmp_path / "t1.mha", data), "t2": _mha(tmp_path / "t2.mha", data * 2)}
    assert validate_entries([entry], MODS) == []
    data[1, 2, 3] = np.nan
    entry["t2"] = _mha(tmp_path / "t2n.mha", data)
    expect(validate_entries([entry], MODS), "t2n.mha", "NaN voxels (1 of 504)")
    # a MetaImage and a NIfTI of one study on the same grid agree (both affines in RAS)
    nifti = nib.load(vol(tmp_path / "t1.nii.gz", np.nan_to_num(data), affine=np.diag([-1.0, -1.0, 1.0, 1.0])))
    assert nifti.shape == (8, 9, 7)
    clean = {
        "subject_id": "P2",
        "t1": str(tmp_path / "t1.nii.gz"),
        "t2": _mha(tmp_path / "t2c.mha", np.nan_to_num(data)),
    }
    assert only(validate_entries([clean], MODS)) == []


def test_an_oblique_volume_is_warned_about(tmp_path):
    angle = np.radians(20)
    rot = np.array(
        [[np.cos(angle), -np.sin(angle), 0, 0], [np.sin(angle), np.cos(angle), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    )
    entry = case(tmp_path, t1=vol(tmp_path / "obl.nii.gz", affine=rot), t2=vol(tmp_path / "obl2.nii.gz", affine=rot))
    problems = validate_entries([entry], MODS)
    expect(problems, "obl.nii.gz", "oblique affine (20.0 degrees off the axes)", severity="warning")
    assert only(problems) == []
    assert validate_entries([case(tmp_path / "straight")], MODS) == []  # axis-aligned: no warning


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _truncate(path: str) -> str:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    return path


def _with(value) -> np.ndarray:
    data = np.random.default_rng(1).random((8, 8, 8)).astype(np.float32)
    data[1, 2, 3] = value
    return data


def _label(value: int) -> np.ndarray:
    data = np.zeros((8, 8, 8), np.uint8)
    data[0, 0, 0] = value
    return data


def _csv(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _npy(path: Path, arr) -> str:
    np.save(path, arr)
    return str(path)


def _pt(path: Path, tensor) -> str:
    torch.save(tensor, path)
    return str(path)


def _dicom_dir(tmp: Path) -> str:
    folder = tmp / "dcm"
    folder.mkdir()
    (folder / "slice000.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")
    return str(folder)


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_each_kind_of_broken_input_is_named(tmp_path, kind):
    make, file_part, message = BROKEN[kind]
    problems = validate_entries(
        [make(tmp_path)],
        MODS,
        label_key="label",
        label_values=[0, 1, 2, 3],
        gene_key="genes",
        gene_length=4,
        bag_key="bag",
        class_key="grade",
        num_classes=2,
    )
    expect(problems, file_part, message)


def test_duplicates(tmp_path):
    a = case(tmp_path, "S1")
    b = dict(a)
    problems = validate_entries([a, b], MODS)
    expect(problems, None, "subject id used by 2 entries")
    expect(problems, "t1.nii.gz", "same file is used by 2 entries", severity="warning")


def test_min_modalities_and_optional_modalities(tmp_path):
    entry = {k: v for k, v in case(tmp_path).items() if k != "t2"}
    assert validate_entries([entry], MODS, required_keys=[]) == []
    expect(validate_entries([entry], MODS, required_keys=[], min_modalities=2), None, "at least 2 needed")


def test_every_problem_is_reported_at_once_and_raised_with_file_names(tmp_path):
    for sub in "abc":
        (tmp_path / sub).mkdir()
    entries = [
        BROKEN["NaN voxels"][0](tmp_path / "a"),
        BROKEN["missing file"][0](tmp_path / "b"),
        BROKEN["label outside set"][0](tmp_path / "c"),
    ]
    for i, e in enumerate(entries):
        e["subject_id"] = f"S{i}"
    problems = validate_entries(entries, MODS, label_key="label", label_values=[0, 1, 2, 3])
    assert len(only(problems)) == 3
    with pytest.raises(DataValidationError) as err:
        check_or_raise(entries, MODS, label_key="label", label_values=[0, 1, 2, 3])
    text = str(err.value)
    assert "3 data error(s)" in text and "nan.nii.gz" in text and "nope.nii.gz" in text and "lab.nii.gz" in text


def test_datalist_json_and_cli_exit_codes(tmp_path):
    good = case(tmp_path, "G1")
    good = {k: (Path(v).relative_to(tmp_path).as_posix() if k in MODS else v) for k, v in good.items()}
    (tmp_path / "ok.json").write_text(json.dumps({"training": [good]}))
    assert validate_datalist(str(tmp_path / "ok.json"), MODS) == []
    bad = dict(good, t2="G1/missing.nii.gz")
    (tmp_path / "bad.json").write_text(json.dumps({"training": [bad]}))
    tool = [sys.executable, str(REPO / "tools" / "validate_data.py"), "--image_keys", "['t1','t2']"]
    ok = subprocess.run([*tool, "--datalist", str(tmp_path / "ok.json")], capture_output=True, text=True)
    assert ok.returncode == 0 and "1 subjects checked: 0 errors, 0 warnings (0 subjects affected)" in ok.stdout
    ko = subprocess.run([*tool, "--datalist", str(tmp_path / "bad.json")], capture_output=True, text=True)
    assert ko.returncode == 1 and "missing.nii.gz: t2: file not found" in ko.stdout and "1 errors" in ko.stdout


def test_the_cli_applies_a_bundles_own_rules(tmp_path):
    """brainmvp takes any subset of contrasts (at least two): a subject without FLAIR passes with --bundle
    brainmvp and fails with the default four-contrast rule."""
    folder = tmp_path / "brats" / "S1"
    folder.mkdir(parents=True)
    for m in ("t1", "t1ce", "t2"):
        vol(folder / f"S1_{m}.nii.gz")
    entry = {"subject_id": "S1", **{m: str(folder / f"S1_{m}.nii.gz") for m in ("t1", "t1ce", "t2")}}
    (tmp_path / "dl.json").write_text(json.dumps({"training": [entry]}))
    tool = [sys.executable, str(REPO / "tools" / "validate_data.py"), "--datalist", str(tmp_path / "dl.json")]
    strict = subprocess.run(tool, capture_output=True, text=True)
    assert strict.returncode == 1 and "missing modality 'flair'" in strict.stdout
    lenient = subprocess.run([*tool, "--bundle", "brainmvp"], capture_output=True, text=True)
    assert lenient.returncode == 0 and "1 subjects checked: 0 errors" in lenient.stdout, lenient.stdout
    sys.path.insert(0, str(REPO / "tools"))
    from validate_data import bundle_rules

    assert bundle_rules("brainmvp") == {
        "image_keys": ["t1", "t1ce", "t2", "flair"],
        "required_keys": [],
        "min_modalities": 2,
    }


def test_trainer_refuses_bad_data_before_the_first_step(tmp_path):
    entry = case(tmp_path, "S1", t1=vol(tmp_path / "nan.nii.gz", _with(np.nan)))
    entry = {**entry, "t1ce": entry["t1"], "flair": entry["t2"]}
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [entry]}))
    proc = subprocess.run(
        bundle_command(
            "bundles/m2mae/configs/train.json",
            "--datalist",
            str(tmp_path / "datalist.json"),
            "--ckpt_dir",
            str(tmp_path / "m"),
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "NaN voxels" in proc.stderr and "nan.nii.gz" in proc.stderr
    assert not (tmp_path / "m" / "checkpoints").exists()
    # one readable message, last, with no traceback (common.engines.errors.readable_errors)
    assert "Traceback" not in proc.stderr and "Failed to instantiate" not in proc.stderr
    tail = proc.stderr.strip().splitlines()
    assert tail[-1] == "(set MMPT_DEBUG=1 to see the full traceback)" and any("nan.nii.gz" in t for t in tail[-6:])


def test_probably_wrong_data_is_flagged(tmp_path):
    """Byte-identical contrasts, CT given as MRI (Hounsfield range, or DICOM Modality CT), and a stray non-DICOM
    file in a series folder (skipped, as MONAI's reader does) are warnings naming the file; none is an error."""
    from dicom_utils import write_dicom_series

    s1 = case(tmp_path, "S1")
    copy = tmp_path / "S1" / "t2_copy.nii.gz"
    copy.write_bytes(Path(s1["t1"]).read_bytes())
    problems = validate_entries([{**s1, "t2": str(copy)}], MODS)
    expect(problems, "t1.nii.gz", "contrasts t1, t2 are byte-identical copies", severity="warning")
    hu = np.random.default_rng(3).uniform(-1024, 3071, (8, 8, 8)).astype(np.float32)
    problems = validate_entries([case(tmp_path, "S2", t2=vol(tmp_path / "ct.nii.gz", hu))], MODS)
    expect(problems, "ct.nii.gz", "look like CT Hounsfield units", severity="warning")
    series = write_dicom_series(tmp_path / "dcm", np.random.default_rng(4).random((8, 8, 8)) * 100)
    (series / "README.txt").write_text("exported by the scanner")
    problems = validate_entries([case(tmp_path, "S3", t1=str(series))], MODS)
    expect(problems, "dcm", "skipped 1 non-DICOM file(s) in the series folder: README.txt", severity="warning")
    assert only(problems) == []
    import pydicom

    for f in series.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.Modality = "CT"
        ds.save_as(f)
    expect(validate_entries([case(tmp_path, "S4", t1=str(series))], MODS), "dcm", "DICOM Modality CT", "warning")


def test_a_volume_smaller_than_the_crop_after_resampling_is_warned_about(tmp_path):
    entry = case(tmp_path, "S1")  # 8^3 voxels of 1 mm
    problems = validate_entries([entry], MODS, crop_size=[4, 4, 4], pixdim=[2.0, 2.0, 2.0])
    assert problems == []  # 4^3 voxels at 2 mm: exactly the crop
    problems = validate_entries([entry], MODS, crop_size=[4, 4, 5], pixdim=[2.0, 2.0, 2.0])
    expect(problems, "t1.nii.gz", "4x4x4 voxels after resampling, smaller than the 4x4x5 training crop", "warning")
    assert only(problems) == []
    expect(
        validate_entries([entry], MODS, crop_size=[9, 8, 8], pixdim=[0.0, 0.0, 0.0]), None, "8x8x8 voxels", "warning"
    )
