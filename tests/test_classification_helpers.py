"""The classification bundles' label check and prediction-CSV rows, by hand."""

from __future__ import annotations

import logging

import pytest
import torch

from common.engines.classification import ClassLabelError, case_ids, check_class_labels, class_and_probabilities
from common.engines.errors import find_user_error


def _e(sid, label):
    return {"subject_id": sid, "grade": label}


def test_valid_labels_pass_silently(caplog):
    with caplog.at_level(logging.WARNING):
        check_class_labels({"training": [_e("a", 0), _e("b", 1.0)], "validation": [_e("c", 1), _e("d", 0)]}, 2, "grade")
    assert caplog.text == ""


@pytest.mark.parametrize(
    ("label", "shown"),
    [(2, "2"), (-1, "-1"), (True, "True"), (1.5, "1.5"), ("1", "'1'"), (None, "None")],
)
def test_each_invalid_label_is_named(label, shown):
    with pytest.raises(ClassLabelError) as err:
        check_class_labels({"training": [_e("a", 0), _e("bad", label)]}, 2, "grade")
    msg = str(err.value)
    assert msg.startswith("1 entries without a valid class (is the class stored under another field?")
    assert f"training bad: 'grade' is {shown}, expected an integer in [0, 2)" in msg and "training a" not in msg
    assert find_user_error(err.value) is err.value  # printed as one readable message by readable_errors


def test_a_missing_field_is_named_and_every_problem_counted():
    splits = {"training": [{"subject_id": "x"}, _e("y", 7)], "validation": [{"grade": 0}]}
    with pytest.raises(ClassLabelError) as err:
        check_class_labels(splits, 3, "grade")
    msg = str(err.value)
    assert msg.startswith("2 entries without a valid class")
    assert "training x: no 'grade' field" in msg and "training y: 'grade' is 7" in msg
    assert "validation entry 0" not in msg  # that entry is valid: class 0


def test_more_than_twenty_problems_are_cut_with_an_ellipsis():
    with pytest.raises(ClassLabelError) as err:
        check_class_labels({"training": [_e(f"s{i}", 9) for i in range(25)]}, 2, "grade")
    lines = str(err.value).splitlines()
    assert lines[0].startswith("25 entries") and len(lines) == 1 + 20 + 1 and lines[-1] == "..."
    assert lines[20].startswith("training s19:")


def test_a_split_without_a_class_is_warned_about(caplog):
    with caplog.at_level(logging.WARNING):
        check_class_labels({"training": [_e("a", 0), _e("b", 1)], "validation": [_e("c", 0)]}, 2, "grade")
    assert (
        "the validation split has no case of class [1]: its AUC is undefined and no best model is saved" in caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        check_class_labels({"training": [_e("a", 0)], "validation": []}, 3, "grade")
    assert "the training split has no case of class [1, 2]" in caplog.text and "AUC" not in caplog.text


def test_default_label_key_is_label():
    check_class_labels({"training": [{"subject_id": "a", "label": 1}]}, 2)
    with pytest.raises(ClassLabelError, match="no 'label' field"):
        check_class_labels({"training": [_e("a", 1)]}, 2)


def test_prediction_rows_hold_the_class_then_the_probabilities():
    rows = class_and_probabilities()(
        [{"pred": torch.tensor([0.2, 0.7, 0.1])}, {"pred": torch.tensor([[0.6, 0.3, 0.1]])}]
    )
    assert [r.tolist() for r in rows] == [pytest.approx([1.0, 0.2, 0.7, 0.1]), pytest.approx([0.0, 0.6, 0.3, 0.1])]
    one = class_and_probabilities("p")({"p": [0.1, 0.9]})
    assert [r.tolist() for r in one] == [pytest.approx([1.0, 0.1, 0.9])]


def test_rows_are_named_by_subject_id():
    assert case_ids()([{"subject_id": 7}, {"subject_id": "S2"}]) == [
        {"filename_or_obj": "7"},
        {"filename_or_obj": "S2"},
    ]
    assert case_ids("case")({"case": "c1"}) == [{"filename_or_obj": "c1"}]


@pytest.mark.parametrize(("count", "cut"), [(20, False), (21, True)])
def test_the_ellipsis_marks_exactly_the_problems_left_out(count, cut):
    with pytest.raises(ClassLabelError) as err:
        check_class_labels({"training": [_e(f"s{i}", 9) for i in range(count)]}, 2, "grade")
    lines = str(err.value).splitlines()
    assert (lines[-1] == "...") is cut and len(lines) == 1 + 20 + cut


def test_an_entry_without_an_id_is_named_by_its_position_and_the_hint_is_whole():
    with pytest.raises(ClassLabelError) as err:
        check_class_labels({"training": [_e("a", 0), {"grade": 5}]}, 2, "grade")
    first, second = str(err.value).splitlines()
    assert second == "training entry 1: 'grade' is 5, expected an integer in [0, 2)"
    assert first == (
        "1 entries without a valid class (is the class stored under another field? set label_key, e.g. --label_key "
        "class_label for the demo set, whose 'label' is a segmentation):"
    )


def test_the_training_split_warning_has_no_auc_clause(caplog):
    with caplog.at_level(logging.WARNING):
        check_class_labels({"training": [_e("a", 0)]}, 2, "grade")
    assert [r.getMessage() for r in caplog.records] == ["the training split has no case of class [1]"]
