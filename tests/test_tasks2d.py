"""Readers of the five MRM downstream layouts and the fixed split, on tiny synthetic folders."""

import json
import logging
import math
import os
import time

import numpy as np
import pytest
from PIL import Image

from common.data.tasks2d import (
    fit_target_stats,
    fixed_split,
    read_aptos,
    read_crp,
    read_glioma,
    read_palm,
    read_rfmid,
    rfmid_label_names,
    task_datalist,
)


def _png(path, size=(8, 6), value=100, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(np.full(shape, value, dtype=np.uint8), mode).save(path)


def _csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([",".join(header)] + [",".join(str(c) for c in r) for r in rows]) + "\n")


# ---- APTOS ------------------------------------------------------------------------------------------------------


def _aptos(root, per_class=5):
    rows = [(f"img{g}{i}", g) for g in range(5) for i in range(per_class)]
    _csv(root / "train.csv", ["id_code", "diagnosis"], rows)
    for sid, _ in rows:
        _png(root / "train_images" / f"{sid}.png")
    return rows


def test_aptos_entries(tmp_path):
    rows = _aptos(tmp_path)
    entries = read_aptos(tmp_path)
    assert [(e["subject_id"], e["label"]) for e in entries] == rows
    assert entries[0]["image"] == str((tmp_path / "train_images" / "img00.png").resolve())


def test_aptos_reports_every_problem_naming_the_file_and_line(tmp_path):
    _csv(tmp_path / "train.csv", ["id_code", "diagnosis"], [("a", 0), ("b", 5), ("c", "x"), ("a", 1), ("d", 2)])
    for sid in "abc":
        _png(tmp_path / "train_images" / f"{sid}.png")
    with pytest.raises(ValueError) as err:
        read_aptos(tmp_path)
    text = str(err.value)
    assert "4 problem(s)" in text  # b, c, the duplicate a, the image of d
    assert "line 3: diagnosis '5' of 'b'" in text and "line 4: diagnosis 'x'" in text
    assert "id_code 'a' on lines [2, 5]" in text
    assert f"line 6: no image {tmp_path / 'train_images' / 'd'}.png" in text
    _csv(tmp_path / "other.csv", ["id", "diagnosis"], [("a", 0)])
    with pytest.raises(ValueError, match=r"other.csv: no column \['id_code'\]"):
        read_aptos(tmp_path, csv_name="other.csv")
    with pytest.raises(FileNotFoundError, match="missing.csv does not exist"):
        read_aptos(tmp_path, csv_name="missing.csv")


# ---- RFMiD ------------------------------------------------------------------------------------------------------

RFMID_HEADER = ["ID", "Disease_Risk", "DR", "ARMD"]


def _rfmid(root, layout="challenge"):
    sets = {
        "challenge": [("Training_Set/RFMiD_Training_Labels.csv", "Training_Set/Training"),
                      ("Evaluation_Set/RFMiD_Validation_Labels.csv", "Evaluation_Set/Validation")],
        "ieee": [("2. Groundtruths/a. RFMiD_Training_Labels.csv", "1. Original Images/a. Training Set"),
                 ("2. Groundtruths/b. RFMiD_Validation_Labels.csv", "1. Original Images/b. Validation Set")],
    }[layout]  # fmt: skip
    rows = [[(1, 1, 1, 0), (2, 0, 0, 0), (3, 1, 0, 1)], [(1, 1, 0, 1), (2, 0, 0, 0)]]
    for (table, folder), set_rows in zip(sets, rows):
        _csv(root / table, RFMID_HEADER, set_rows)
        for r in set_rows:
            _png(root / folder / f"{r[0]}.png")


@pytest.mark.parametrize("layout", ["challenge", "ieee"])
def test_rfmid_pools_the_sets_and_reads_the_label_set_from_the_data(tmp_path, layout):
    _rfmid(tmp_path, layout)
    assert rfmid_label_names(tmp_path) == ["Disease_Risk", "DR", "ARMD"]
    assert rfmid_label_names(tmp_path, include_disease_risk=False) == ["DR", "ARMD"]
    entries = read_rfmid(tmp_path)
    assert [e["subject_id"] for e in entries] == [
        "Training_1",
        "Training_2",
        "Training_3",
        "Validation_1",
        "Validation_2",
    ]
    assert entries[0]["label"] == [1.0, 1.0, 0.0] and entries[3]["label"] == [1.0, 0.0, 1.0]
    assert read_rfmid(tmp_path, include_disease_risk=False)[0]["label"] == [1.0, 0.0]
    assert entries[3]["set"] == "Validation" and entries[3]["image"].endswith("1.png")


def test_rfmid_errors(tmp_path):
    _rfmid(tmp_path)
    _csv(tmp_path / "Evaluation_Set/RFMiD_Validation_Labels.csv", ["ID", "Disease_Risk", "DR"], [(1, 1, 0)])
    with pytest.raises(ValueError, match="every RFMiD set must have the same labels"):
        read_rfmid(tmp_path)
    _csv(tmp_path / "Evaluation_Set/RFMiD_Validation_Labels.csv", RFMID_HEADER, [(1, 2, 0, 1), (9, 0, 0, 0)])
    with pytest.raises(ValueError) as err:
        read_rfmid(tmp_path)
    assert "RFMiD_Validation_Labels.csv line 2: ['Disease_Risk'] of ID '1' are not 0 or 1 (['2'])" in str(err.value)
    assert "line 3: no image" in str(err.value) and "9.png" in str(err.value)
    with pytest.raises(FileNotFoundError, match="no RFMiD labels CSV"):
        read_rfmid(tmp_path / "Training_Set" / "Training")


# ---- PALM -------------------------------------------------------------------------------------------------------


def _palm_mask(path, size, cells):
    """PALM convention: 0 (black) on the structure, 255 elsewhere."""
    mask = np.full((size[1], size[0]), 255, dtype=np.uint8)
    for r, c in cells:
        mask[r, c] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path, format="BMP")


def _palm(root, size=(8, 6)):
    for set_name, names in (("Training", ["P0001", "N0001"]), ("Testing", ["T0001"])):
        for name in names:
            _png(root / set_name / "Images" / f"{name}.jpg", size)
            _palm_mask(root / set_name / "Disc Masks" / f"{name}.bmp", size, [(1, 2), (1, 3)])
        (root / set_name / "Lesion Masks" / "Atrophy").mkdir(parents=True, exist_ok=True)
    _palm_mask(root / "Training" / "Lesion Masks" / "Atrophy" / "P0001.bmp", size, [(5, 7)])  # only P0001


def test_palm_masks_mapped_0_to_structure_and_absent_to_background(tmp_path):
    _palm(tmp_path / "PALM")
    entries = read_palm(tmp_path / "PALM", tmp_path / "masks")
    assert [e["subject_id"] for e in entries] == ["Testing_T0001", "Training_N0001", "Training_P0001"]
    p = entries[2]
    assert p["set"] == "Training" and p["structures_present"] == ["disc", "atrophy"]
    disc, atrophy = (np.asarray(Image.open(m)) for m in p["label"])
    assert disc.shape == (6, 8) and disc.dtype == np.uint8  # [H, W] of the 8x6 image
    expected = np.zeros((6, 8), np.uint8)
    expected[1, 2] = expected[1, 3] = 1
    assert np.array_equal(disc, expected)
    assert atrophy.sum() == 1 and atrophy[5, 7] == 1
    n_atrophy = np.asarray(Image.open(entries[1]["label"][1]))
    assert n_atrophy.shape == (6, 8) and n_atrophy.sum() == 0  # no atrophy mask: all background
    assert entries[1]["structures_present"] == ["disc"]


def test_palm_masks_load_with_monai_as_channels_aligned_with_the_image(tmp_path):
    from monai.transforms import LoadImaged

    _palm(tmp_path / "PALM", size=(8, 6))
    entry = read_palm(tmp_path / "PALM", tmp_path / "masks")[2]
    data = LoadImaged(keys=["image", "label"], reader="PILReader", ensure_channel_first=True)(entry)
    assert data["image"].shape[0] == 3 and data["label"].shape[0] == 2
    assert data["image"].shape[1:] == data["label"].shape[1:]
    disc = np.asarray(data["label"][0])
    # wherever MONAI's reader puts the axes, the disc pixels are those of the source mask in the same layout
    loaded_source = np.asarray(
        LoadImaged(keys="m", reader="PILReader", ensure_channel_first=True)({"m": entry["label"][0]})["m"][0]
    )
    assert np.array_equal(disc, loaded_source) and disc.sum() == 2


def test_palm_reuses_converted_masks_and_reconverts_on_a_new_convention(tmp_path):
    _palm(tmp_path / "PALM")
    first = read_palm(tmp_path / "PALM", tmp_path / "masks")
    stamp = os.path.getmtime(first[2]["label"][0])
    time.sleep(0.02)
    read_palm(tmp_path / "PALM", tmp_path / "masks")
    assert os.path.getmtime(first[2]["label"][0]) == stamp  # not rewritten
    bright = read_palm(tmp_path / "PALM", tmp_path / "masks", foreground="bright")
    disc = np.asarray(Image.open(bright[2]["label"][0]))
    assert disc.sum() == 6 * 8 - 2  # white = structure now: everything but the two black pixels


def test_palm_errors_name_the_files(tmp_path):
    root = tmp_path / "PALM"
    _palm(root)
    _palm_mask(root / "Training" / "Disc Masks" / "P0001.bmp", (9, 6), [])
    _palm_mask(root / "Training" / "Disc Masks" / "X0001.bmp", (8, 6), [])
    with pytest.raises(ValueError) as err:
        read_palm(root, tmp_path / "masks")
    text = str(err.value)
    assert "P0001.bmp: mask is 9x6 but its image" in text and "P0001.jpg is 8x6" in text
    assert "X0001.bmp: a disc mask without an image" in text
    with pytest.raises(KeyError, match="unknown PALM structures"):
        read_palm(root, tmp_path / "masks", structures=["cup"])
    with pytest.raises(ValueError, match="detachment"):
        read_palm(root, tmp_path / "masks", structures=["disc", "detachment"])
    with pytest.raises(FileNotFoundError, match="no PALM image folder"):
        read_palm(tmp_path / "empty", tmp_path / "masks")


def test_palm_threshold_at_128_and_rgb_masks(tmp_path):
    root = tmp_path / "PALM"
    _png(root / "Images" / "P0001.jpg", (4, 1))
    (root / "Disc Masks").mkdir(parents=True)
    rgb = np.repeat(np.array([[[0], [127], [128], [255]]], dtype=np.uint8), 3, axis=2)  # [1, 4, 3]
    Image.fromarray(rgb, "RGB").save(root / "Disc Masks" / "P0001.bmp")
    (dark,) = read_palm(root, tmp_path / "dark", structures=["disc"])
    assert np.asarray(Image.open(dark["label"][0])).tolist() == [[1, 1, 0, 0]]  # pixel < 128 is the structure
    (bright,) = read_palm(root, tmp_path / "bright", structures=["disc"], foreground="bright")
    assert np.asarray(Image.open(bright["label"][0])).tolist() == [[0, 0, 1, 1]]


def test_palm_single_set_folder_with_challenge_names(tmp_path):
    root = tmp_path / "PALM-Training400"
    _png(root / "PALM-Training400" / "H0001.jpg")
    _palm_mask(root / "Disc_Masks" / "H0001.bmp", (8, 6), [(0, 0)])
    _palm_mask(root / "Lesion_Masks" / "Atrophy" / "H0001.bmp", (8, 6), [])
    (entry,) = read_palm(root, tmp_path / "masks", image_dir="PALM-Training400")
    assert entry["subject_id"] == "H0001" and entry["set"] is None
    assert np.asarray(Image.open(entry["label"][0]))[0, 0] == 1


# ---- CRP --------------------------------------------------------------------------------------------------------

CRP = {"age": "continuous", "sbp": "continuous", "sex": "binary", "smoking": "binary"}


def _crp(root):
    rows = [("s1", 50, 120, 1, 0), ("s2", 60, 140, 0, ""), ("s3", 70, "NA", 1, 1), ("s4", 64, 130, 0, 0)]
    _csv(
        root / "labels.csv",
        ["id", "sex", "age", "smoking", "sbp", "site"],
        [(r[0], r[3], r[1], r[4], r[2], "x") for r in rows],
    )
    for r in rows:
        _png(root / "images" / f"{r[0]}.png")


def test_crp_targets_in_config_order_with_missing_values(tmp_path):
    _crp(tmp_path)
    entries = read_crp(tmp_path, CRP)
    assert entries[0]["label"] == [50.0, 120.0, 1.0, 0.0] and entries[0]["age"] == 50.0
    assert math.isnan(entries[1]["label"][3]) and math.isnan(entries[2]["label"][1])
    assert read_crp(tmp_path, {"sex": "binary", "age": "continuous"})[2]["label"] == [1.0, 70.0]  # drop / reorder


@pytest.mark.parametrize(
    "cell, value", [("1", 1.0), ("0.0", 0.0), (" 1.0 ", 1.0), ("NA", None), ("", None), ("2", "bad"), ("yes", "bad")]
)
def test_binary_cells(cell, value):
    from common.data.tasks2d import _binary

    got = _binary(cell)
    if value is None:
        assert math.isnan(got)
    elif value == "bad":
        assert got is None
    else:
        assert got == value


def test_crp_errors(tmp_path):
    _crp(tmp_path)
    with pytest.raises(ValueError, match=r"no column \['bmi'\]"):
        read_crp(tmp_path, {**CRP, "bmi": "continuous"})
    with pytest.raises(ValueError, match="unknown target kinds"):
        read_crp(tmp_path, {"age": "ordinal"})
    with pytest.raises(ValueError, match=r"line 2: invalid \[\"site='x' \(binary\)\"\]"):
        read_crp(tmp_path, {"site": "binary"})


def test_target_stats_by_hand_skip_missing_values(tmp_path):
    _crp(tmp_path)
    stats = fit_target_stats(read_crp(tmp_path, CRP), CRP)
    assert set(stats) == {"age", "sbp"}  # binary targets are not standardised
    # age 50, 60, 70, 64: mean 61, population variance (121 + 1 + 81 + 9) / 4 = 53
    assert stats["age"]["mean"] == pytest.approx(61.0) and stats["age"]["std"] == pytest.approx(math.sqrt(53))
    # sbp 120, 140, (NA), 130: mean 130, variance (100 + 100 + 0) / 3
    assert stats["sbp"]["mean"] == pytest.approx(130.0) and stats["sbp"]["std"] == pytest.approx(math.sqrt(200 / 3))
    with pytest.raises(ValueError, match="'age': 1 values"):
        fit_target_stats([{"label": [50.0]}, {"label": [float("nan")]}], {"age": "continuous"})
    with pytest.raises(ValueError, match="'age': 3 values with standard deviation 0.0"):
        fit_target_stats([{"label": [50.0]}] * 3, {"age": "continuous"})
    with pytest.raises(ValueError) as err:  # every bad target named, in the error about standardising
        fit_target_stats(
            [{"label": [50.0, float("nan"), 1.0]}] * 3, {"a": "continuous", "b": "continuous", "c": "continuous"}
        )
    assert "cannot standardise" in str(err.value) and "3 problem(s)" in str(err.value)  # a and c constant, b empty
    assert "'b': 0 values with standard deviation n/a" in str(err.value)
    # two values are enough, and a std of exactly 1 is fine; a binary target before the continuous one is skipped
    two = fit_target_stats([{"label": [1.0, 0.0]}, {"label": [0.0, 2.0]}], {"sex": "binary", "age": "continuous"})
    assert two == {"age": {"mean": 1.0, "std": 1.0}}


# ---- glioma -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "written, grade",
    [("II", 0), ("G3", 1), ("Grade IV", 2), ("2", 0), ("3.0", 1), ("WHO grade 4", 2), ("grade-III", 1), ("G_2", 0),
     ("who ii", 0), ("V", None), ("1", None), ("", None)],
)  # fmt: skip
def test_who_grades(written, grade):
    from common.data.tasks2d import _who_grade

    assert _who_grade(written) == grade


def test_glioma_grades_and_tiles_of_both_layouts(tmp_path):
    _csv(tmp_path / "labels.csv", ["case_id", "grade"], [("c1", "II"), ("c2", "G3"), ("c3", "Grade IV"), ("c4", "2")])
    for case in ("c1", "c2", "c4"):
        _png(tmp_path / "tiles" / f"{case}.png")
    for tile in ("b", "a"):
        _png(tmp_path / "tiles" / "c3" / f"{tile}.jpg")
    entries = read_glioma(tmp_path)
    got = [(e["subject_id"], e["case_id"], e["label"]) for e in entries]
    assert got == [("c1", "c1", 0), ("c2", "c2", 1), ("c3/a", "c3", 2), ("c3/b", "c3", 2), ("c4", "c4", 0)]


def test_glioma_class_indices_need_a_grade_map(tmp_path):
    _csv(
        tmp_path / "labels.csv",
        ["TCGA ID", "Grade", "path"],
        [("t1", 0, "roi/t1_1.png"), ("t1", 0, "roi/t1_2.png"), ("t2", 2, "roi/t2.png")],
    )
    for name in ("t1_1", "t1_2", "t2"):
        _png(tmp_path / "roi" / f"{name}.png")
    with pytest.raises(ValueError, match=r"Grade '0' of 't1' is not a known grade \(WHO"):
        read_glioma(tmp_path, id_column="TCGA ID", grade_column="Grade", image_column="path")
    entries = read_glioma(
        tmp_path, id_column="TCGA ID", grade_column="Grade", image_column="path", grade_map={"0": 0, "1": 1, "2": 2}
    )
    assert [(e["subject_id"], e["label"]) for e in entries] == [("t1/t1_1", 0), ("t1/t1_2", 0), ("t2/t2", 2)]


# ---- the fixed split --------------------------------------------------------------------------------------------


def _entries(labels):
    return [{"subject_id": f"s{i:02d}", "image": f"/x/s{i}.png", "label": lab} for i, lab in enumerate(labels)]


def test_split_is_80_20_stratified_seeded_and_independent_of_row_order(tmp_path):
    entries = _entries([c for c in range(5) for _ in range(10)])  # 10 per class
    split = fixed_split(entries, tmp_path / "a.json", seed=3)
    assert len(split["training"]) == 40 and len(split["validation"]) == 10
    assert sorted(e["label"] for e in split["validation"]) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    again = fixed_split(list(reversed(entries)), tmp_path / "b.json", seed=3)
    assert {e["subject_id"] for e in again["validation"]} == {e["subject_id"] for e in split["validation"]}
    other = fixed_split(entries, tmp_path / "c.json", seed=4)
    assert {e["subject_id"] for e in other["validation"]} != {e["subject_id"] for e in split["validation"]}
    # largest remainders: 7 cases in classes of 4 and 3 -> round(1.4) = 1 test case in all, from the class of 4
    small = fixed_split(_entries([0, 0, 0, 1, 1, 1, 1]), tmp_path / "d.json")
    assert [e["label"] for e in small["validation"]] == [1]
    # 9 + 13 cases: exact quotas 1.8 and 2.6, floors 1 + 2, round(4.4) = 4: the extra one to the larger remainder
    remainders = fixed_split(_entries([0] * 9 + [1] * 13), tmp_path / "e.json")
    assert sorted(e["label"] for e in remainders["validation"]) == [0, 0, 1, 1]


def test_split_file_is_written_and_reused_never_redrawn(tmp_path, caplog):
    path = tmp_path / "split" / "aptos.json"
    entries = _entries([c for c in range(2) for _ in range(5)])
    first = fixed_split(entries, path, seed=0)
    written = json.loads(path.read_text())
    assert [e["subject_id"] for e in written["validation"]] == [e["subject_id"] for e in first["validation"]]
    assert written["split"]["seed"] == 0 and written["split"]["test_fraction"] == 0.2
    with caplog.at_level(logging.WARNING):
        reused = fixed_split(entries, path, seed=99, test_fraction=0.5)  # other settings: the file wins
    assert reused == first and "settings" in caplog.text and "ignored" in caplog.text
    with pytest.raises(ValueError) as err:
        fixed_split(entries[1:] + _entries([0] * 11)[10:], path)  # s00 gone, s10 new
    assert (
        "1 case(s) in the data but not in the split: ['s10']\n1 case(s) in the split but no longer in the data: ['s00']\n"
        in str(err.value)
    )
    assert f"delete {path}" in str(err.value)
    relabelled = [dict(e, label=1) if e["subject_id"] == "s03" else e for e in entries]
    with pytest.raises(ValueError, match=r"label changed: \['s03: 0 -> 1'\]"):
        fixed_split(relabelled, path)


def test_split_keeps_the_tiles_of_a_case_together(tmp_path):
    entries = [{"subject_id": f"c{c}/t{t}", "case_id": f"c{c}", "label": c % 2} for c in range(10) for t in range(3)]
    split = fixed_split(entries, tmp_path / "g.json", group_key="case_id")
    test_cases = {e["case_id"] for e in split["validation"]}
    train_cases = {e["case_id"] for e in split["training"]}
    assert len(test_cases) == 2 and not test_cases & train_cases
    assert len(split["validation"]) == 6 and sorted(int(c[1:]) % 2 for c in test_cases) == [0, 1]


def test_rarest_label_stratification_puts_a_rare_label_in_both_splits(tmp_path):
    # A in 20 images, B in 10, C in 5; 5 images without any label. Rarest positive label: A for [1,0,0] (10),
    # B for [1,1,0] (5), C for [1,1,1] (5), none (5): 20% of each stratum -> 2, 1, 1, 1 test images
    labels = [[1, 0, 0]] * 10 + [[1, 1, 0]] * 5 + [[1, 1, 1]] * 5 + [[0, 0, 0]] * 5
    for seed in range(5):
        split = fixed_split(_entries(labels), tmp_path / f"r{seed}.json", seed=seed, stratify="rarest_label")
        patterns = sorted(tuple(e["label"]) for e in split["validation"])
        assert patterns == [(0, 0, 0), (1, 0, 0), (1, 0, 0), (1, 1, 0), (1, 1, 1)]


def test_split_with_nan_labels_round_trips_and_float_changes_are_found(tmp_path):
    entries = _entries([[50.0, float("nan")], [60.0, 1.0], [70.0, 0.0], [64.0, 0.0], [55.0, 1.0]])
    path = tmp_path / "crp.json"
    first = fixed_split(entries, path, stratify=None)
    assert fixed_split(entries, path, stratify=None) == first
    for i, new in ((0, [50.0, 1.0]), (1, [60.0, 0.0]), (2, [70.5, 0.0])):  # NaN -> value, binary flip, a number
        changed = [dict(e, label=new) if j == i else e for j, e in enumerate(entries)]
        with pytest.raises(ValueError, match=f"s0{i}: "):
            fixed_split(changed, path, stratify=None)
    scalars = [{"subject_id": f"s{i}", "label": v} for i, v in enumerate([50.0, 60.0, 70.0, 64.0, 55.0])]
    fixed_split(scalars, tmp_path / "age.json", stratify=None)
    with pytest.raises(ValueError, match=r"s2: 70.0 -> 71.0"):
        fixed_split([dict(e, label=71.0) if e["subject_id"] == "s2" else e for e in scalars], tmp_path / "age.json")


def test_split_file_problems_are_named(tmp_path):
    entries = _entries([0, 1] * 10)
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"training": [{"image": "x.png"}]}))
    with pytest.raises(ValueError, match="has no training/validation entries with a subject_id"):
        fixed_split(entries, path)
    path.write_text(json.dumps({"training": entries}))  # no validation list at all: everything recorded as training
    assert len(fixed_split(entries, path)["training"]) == 20
    path.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        fixed_split(entries, path)
    fixed_split(entries, tmp_path / "t.json")
    with pytest.raises(ValueError) as err:
        fixed_split(entries + _entries([0] * 32)[20:], tmp_path / "t.json")  # 12 new cases: 10 listed
    assert "12 case(s) in the data but not in the split: ['s20'," in str(err.value)
    assert "'s29'] ...\n" in str(err.value) and "s30" not in str(err.value)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5])
def test_test_fraction_must_be_a_share(tmp_path, fraction):
    with pytest.raises(ValueError, match=r"test_fraction must lie in \(0, 1\)"):
        fixed_split(_entries([0, 1] * 5), tmp_path / "f.json", test_fraction=fraction)


def test_group_with_two_labels_cannot_be_stratified(tmp_path):
    entries = [{"subject_id": "c1/a", "case_id": "c1", "label": 0}, {"subject_id": "c1/b", "case_id": "c1", "label": 1}]
    with pytest.raises(ValueError, match="entries of case_id 'c1' have different labels"):
        fixed_split(entries, tmp_path / "g.json", group_key="case_id")


def test_official_test_set(tmp_path):
    entries = [
        {"subject_id": f"{s}_{i}", "set": s, "label": []}
        for s in ("Training", "Validation", "Testing")
        for i in range(2)
    ]
    split = fixed_split(entries, tmp_path / "p.json", stratify=None, official_test=["Testing"])
    assert [e["subject_id"] for e in split["validation"]] == ["Testing_0", "Testing_1"]
    with pytest.raises(ValueError, match="selects 0 of 6"):
        fixed_split(entries, tmp_path / "q.json", official_test=["Test"])


def test_task_datalist_end_to_end(tmp_path):
    _aptos(tmp_path / "aptos")
    path = tmp_path / "aptos" / "split.json"
    train = task_datalist("aptos", tmp_path / "aptos", path, "training")
    val = task_datalist("aptos", tmp_path / "aptos", path, "validation")
    assert len(train) == 20 and len(val) == 5 and not {e["subject_id"] for e in train} & {e["subject_id"] for e in val}
    _palm(tmp_path / "PALM")
    palm_val = task_datalist("palm", tmp_path / "PALM", tmp_path / "out" / "palm.json", "validation")
    assert [e["subject_id"] for e in palm_val] == ["Testing_T0001"]  # PALM's own test set
    assert (tmp_path / "out" / "palm_masks" / "Testing" / "T0001_disc.png").is_file()
    with pytest.raises(ValueError, match="unknown task"):
        task_datalist("refuge", tmp_path, path)


def test_split_mismatch_lists_at_most_ten_of_each(tmp_path):
    entries = _entries([0, 1] * 15)  # s00 .. s29
    fixed_split(entries, tmp_path / "m.json")
    current = [dict(e, label=1 - e["label"]) if 11 <= i < 22 else e for i, e in enumerate(entries)][11:]  # 11 gone
    current += [{"subject_id": f"n{i}", "label": 0} for i in range(10)]  # 10 new
    with pytest.raises(ValueError) as err:
        fixed_split(current, tmp_path / "m.json")
    lines = str(err.value).split("\n")
    assert lines[1] == "10 case(s) in the data but not in the split: " + str([f"n{i}" for i in range(10)])
    assert (
        lines[2]
        == "11 case(s) in the split but no longer in the data: " + str([f"s{i:02d}" for i in range(10)]) + " ..."
    )
    assert lines[3].startswith("11 case(s) whose label changed: ['s11: 1 -> 0'") and lines[3].endswith(
        "'s20: 0 -> 1'] ..."
    )
    # the other way round: 11 new (listed with ' ...'), 10 gone and 10 changed (listed whole)
    current = [dict(e, label=1 - e["label"]) if 10 <= i < 20 else e for i, e in enumerate(entries)][10:]
    current += [{"subject_id": f"n{i:02d}", "label": 0} for i in range(11)]
    with pytest.raises(ValueError) as err:
        fixed_split(current, tmp_path / "m.json")
    lines = str(err.value).split("\n")
    assert lines[1].startswith("11 case(s) in the data") and lines[1].endswith("'n09'] ...")
    assert lines[2].startswith("10 case(s) in the split") and lines[2].endswith("'s09']")
    assert lines[3].startswith("10 case(s) whose label changed") and lines[3].endswith("'s19: 1 -> 0']")


def test_unknown_stratification(tmp_path):
    with pytest.raises(ValueError, match="stratify must be 'label', 'rarest_label' or None, got 'class'"):
        fixed_split(_entries([0, 1] * 5), tmp_path / "u.json", stratify="class")
