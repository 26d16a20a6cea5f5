"""tools/stack_modalities.py: one 4-D NIfTI per subject, channels in the bundle's order; bad input named."""

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import REPO

from common.data.datalist import resolve_datalist
from common.data.stack import stack_modalities
from common.data.validate import DataValidationError

MODALITIES = ["t1", "t1ce", "t2", "flair"]


def test_channels_follow_the_modality_order_and_keep_the_affine(demo_dataset, tmp_path):
    entry = resolve_datalist(datalist=str(demo_dataset), modalities=MODALITIES, split="training")[0]
    order = ["flair", "t1", "t2", "t1ce"]
    [path] = stack_modalities([entry], order, tmp_path, with_labels=True)
    stacked = nib.load(path)
    assert path.endswith(f"{entry['subject_id']}.nii.gz")
    np.testing.assert_allclose(stacked.affine, nib.load(entry["t1"]).affine)
    for channel, key in enumerate(order):
        np.testing.assert_allclose(stacked.dataobj[..., channel], nib.load(entry[key]).get_fdata(), rtol=1e-6)
    label = tmp_path / "labels" / "final" / f"{entry['subject_id']}.nii.gz"
    assert np.array_equal(nib.load(label).get_fdata(), nib.load(entry["label"]).get_fdata())


def test_a_missing_modality_is_named_before_anything_is_written(demo_dataset, tmp_path):
    entries = resolve_datalist(datalist=str(demo_dataset), modalities=MODALITIES, split="training")[:2]
    del entries[1]["t2"]
    with pytest.raises(DataValidationError, match=f"{entries[1]['subject_id']}.*t2"):
        stack_modalities(entries, MODALITIES, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_command_line_tool_stacks_a_datalist(demo_dataset, tmp_path):
    out = subprocess.run(
        [sys.executable, "tools/stack_modalities.py", "--datalist", str(demo_dataset), "--split", "training",
         "--out_dir", str(tmp_path), "--modalities", "t1,t1ce,t2,flair"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    written = sorted(tmp_path.glob("*.nii.gz"))
    assert f"wrote {len(written)} studies" in out.stdout and len(written) >= 2
    assert nib.load(written[0]).shape[3] == 4
