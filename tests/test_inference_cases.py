"""Which cases an inference runs on: every source training takes, bad cases skipped by name, outputs named by
subject, nothing-to-do and name clashes refused before the first case."""

from __future__ import annotations

import csv
import json
import logging

import nibabel as nib
import numpy as np
import pytest

from common.data.inference import inference_cases, output_stem
from common.data.validate import DataValidationError
from common.transforms.naming import NameBySubjectd

MODS = ["t1", "t1ce", "t2", "flair"]


def _vol(path, shape=(8, 9, 7), value=None, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).random(shape).astype(np.float32) if value is None else np.full(shape, value)
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), path)
    return str(path)


def _study(folder, names=None):
    return {m: _vol(folder / (names or "{m}.nii.gz").format(m=m, s=folder.name), seed=i) for i, m in enumerate(MODS)}


def test_subjects_whose_files_share_names_get_distinct_outputs_and_an_index(tmp_path):
    entries = [{"subject_id": s, **_study(tmp_path / s)} for s in ("S1", "S2")]  # both S*/t1.nii.gz ...
    (tmp_path / "dl.json").write_text(json.dumps({"testing": entries}))
    cases = inference_cases(datalist=str(tmp_path / "dl.json"), output_dir=str(tmp_path / "out"))
    assert [c["output_name"] for c in cases] == ["S1.nii.gz", "S2.nii.gz"]
    rows = list(csv.DictReader((tmp_path / "out" / "index.csv").open()))
    assert [(r["subject_id"], r["output"]) for r in rows] == [("S1", "S1_seg.nii.gz"), ("S2", "S2_seg.nii.gz")]
    assert rows[0]["t1"].endswith("S1/t1.nii.gz")


def test_output_names_that_would_clash_stop_before_the_first_case(tmp_path):
    entries = [{"subject_id": s, **_study(tmp_path / f"d{i}")} for i, s in enumerate(("a/b", "a_b"))]
    (tmp_path / "dl.json").write_text(json.dumps({"testing": entries}))
    with pytest.raises(DataValidationError, match="would all be written as 'a_b_seg.nii.gz'"):
        inference_cases(datalist=str(tmp_path / "dl.json"))
    assert output_stem("sub-01/ses 2") == "sub-01_ses_2" and output_stem("../x") == "x"


def test_a_bad_case_is_skipped_by_name_and_the_others_run(tmp_path, caplog):
    good = {"subject_id": "ok", **_study(tmp_path / "ok")}
    bad = {"subject_id": "broken", **_study(tmp_path / "broken")}
    raw = open(bad["t2"], "rb").read()
    open(bad["t2"], "wb").write(raw[: len(raw) // 2])  # a truncated .nii.gz
    nan = {"subject_id": "nan", **_study(tmp_path / "nan")}
    _vol(tmp_path / "nan" / "flair.nii.gz", value=np.nan)
    (tmp_path / "dl.json").write_text(json.dumps({"testing": [good, bad, nan]}))
    with caplog.at_level(logging.WARNING):
        cases = inference_cases(datalist=str(tmp_path / "dl.json"))
    assert [c["subject_id"] for c in cases] == ["ok"]
    text = caplog.text
    assert "skipped: ERROR broken" in text and "broken/t2.nii.gz" in text
    assert "skipped: ERROR nan" in text and "NaN voxels" in text
    with pytest.raises(DataValidationError, match="broken/t2.nii.gz"):  # an evaluation stops instead
        inference_cases(datalist=str(tmp_path / "dl.json"), skip_bad=False)


def test_every_case_bad_or_none_at_all_is_an_error(tmp_path):
    (tmp_path / "dl.json").write_text(json.dumps({"testing": [{"subject_id": "x", "t1": str(tmp_path / "no.nii")}],
                                                  "training": []}))  # fmt: skip
    with pytest.raises(DataValidationError, match="no.nii: t1: file not found"):
        inference_cases(datalist=str(tmp_path / "dl.json"), required_keys=[])
    with pytest.raises(DataValidationError, match="nothing to do: datalist .* has no cases in split 'training'"):
        inference_cases(datalist=str(tmp_path / "dl.json"), split="training")
    with pytest.raises(DataValidationError, match=r"has no 'validation' list \(it has: \['testing', 'training'\]\)"):
        inference_cases(datalist=str(tmp_path / "dl.json"), split="validation")


def test_a_brats_folder_without_splits_runs_every_subject(tmp_path, caplog):
    for s in ("BraTS_001", "BraTS_002"):
        _study(tmp_path / "brats" / s, names="{s}_{m}.nii.gz")
    with caplog.at_level(logging.INFO):
        cases = inference_cases(dataset_dir=str(tmp_path / "brats"))  # split "testing" asked, none exists
    assert [c["subject_id"] for c in cases] == ["BraTS_001", "BraTS_002"]
    assert "2 case(s) from dataset_dir" in caplog.text and "all subjects: no splits" in caplog.text


def test_a_study_file_or_a_folder_of_them(tmp_path):
    four = np.random.default_rng(0).random((8, 9, 7, 4)).astype(np.float32)
    for name in ("p1.nii.gz", "p2.nii"):
        (tmp_path / "studies").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(four, np.eye(4)), tmp_path / "studies" / name)
    (tmp_path / "studies" / "notes.txt").write_text("not a study")
    cases = inference_cases(image=str(tmp_path / "studies"))
    assert [(c["subject_id"], c["output_name"]) for c in cases] == [("p1", "p1.nii.gz"), ("p2", "p2.nii.gz")]
    assert cases[0]["image"].endswith("studies/p1.nii.gz")
    one = inference_cases(image=str(tmp_path / "studies" / "p2.nii"))
    assert [c["subject_id"] for c in one] == ["p2"]
    nib.save(nib.Nifti1Image(four[..., :3], np.eye(4)), tmp_path / "three.nii.gz")
    with pytest.raises(DataValidationError, match=r"three.nii.gz: shape \(8, 9, 7, 3\): .* 4 contrast"):
        inference_cases(image=str(tmp_path / "three.nii.gz"))
    with pytest.raises(DataValidationError, match="missing.nii.gz: file or folder not found"):
        inference_cases(image=str(tmp_path / "missing.nii.gz"))


def test_name_by_subject_sets_the_file_name_savers_read():
    from monai.data import MetaTensor

    out = NameBySubjectd("pred")({"pred": MetaTensor(np.zeros((1, 2, 2, 2)), meta={"filename_or_obj": "S1/t1.nii.gz"}),
                                  "output_name": "S1.nii.gz"})  # fmt: skip
    assert out["pred"].meta["filename_or_obj"] == "S1.nii.gz"
    with pytest.raises(KeyError, match="no 'output_name'"):
        NameBySubjectd("pred")({"pred": MetaTensor(np.zeros(1))})


def test_a_scanned_folder_gets_a_fixed_holdout_split(tmp_path):
    from common.data.datalist import resolve_datalist

    for s in [f"BraTS_{i:03d}" for i in range(10)]:
        _study(tmp_path / "brats" / s, names="{s}_{m}.nii.gz")
    root = str(tmp_path / "brats")
    train = resolve_datalist(root, split="training", holdout=0.2)
    val = resolve_datalist(root, split="validation", holdout=0.2)
    assert len(train) == 8 and len(val) == 2
    assert {e["subject_id"] for e in train} | {e["subject_id"] for e in val} == {f"BraTS_{i:03d}" for i in range(10)}
    assert [e["subject_id"] for e in resolve_datalist(root, split="validation", holdout=0.2)] == [
        e["subject_id"] for e in val
    ]
    other = resolve_datalist(root, split="validation", holdout=0.2, seed=1)
    assert {e["subject_id"] for e in other} != {e["subject_id"] for e in val}  # the seed draws another split
    assert len(resolve_datalist(root, split="training")) == 10 and resolve_datalist(root, split="validation") == []


def test_an_evaluation_with_nothing_to_evaluate_stops(tmp_path, caplog):
    from common.data.inference import require_cases

    (tmp_path / "brats" / "S1").mkdir(parents=True)
    with pytest.raises(
        DataValidationError, match="nothing to do: dataset_dir .* no cases in split 'validation' .*--holdout"
    ):
        require_cases([], dataset_dir=str(tmp_path / "brats"))
    with caplog.at_level(logging.INFO):
        require_cases([{"subject_id": "a"}], datalist="dl.json")
    assert "evaluation: 1 case(s) from datalist dl.json, split 'validation'" in caplog.text
