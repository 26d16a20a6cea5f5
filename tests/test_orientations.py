"""Segmentations come back in the input's own space for all 48 axis orientations (issue 18.2).

The inference configs' own preprocessing (reorientation to RAS, resampling) and postprocessing (inversion, saving)
run on the same volume stored in each of the 48 orientations; a stand-in network thresholds the RAS image (as
logits of +-5), so the written label map must equal the threshold of the stored voxels, on the stored grid, for
every orientation."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from nibabel.orientations import axcodes2ornt, ornt_transform

ORIENTATIONS = [
    np.array([[perm[i], signs[i]] for i in range(3)])
    for perm in itertools.permutations(range(3))
    for signs in itertools.product([1, -1], repeat=3)
]


def _pipeline(config: str, out_dir: str):
    parser = ConfigParser()
    parser.read_config(config)
    parser["output_dir"] = out_dir
    return parser.get_parsed_content("preprocessing"), parser.get_parsed_content("postprocessing")


@pytest.mark.parametrize("bundle", ["m2mae_seg", "brainmvp_seg"])
def test_every_orientation_round_trips_to_the_inputs_grid(bundle, tmp_path):
    pre, post = _pipeline(f"bundles/{bundle}/configs/inference.json", str(tmp_path / "out"))
    rng = np.random.default_rng(0)
    # values in [0.5, 0.9] or [1.1, 1.5]; the configs' intensity maps (z-score, percentile scaling) are monotone, so
    # after them the threshold at 1.0 lies between the n-th and (n+1)-th smallest values (n voxels below 1.0)
    base = (rng.random((12, 10, 8)) * 0.4 + 0.5 + 0.6 * (rng.random((12, 10, 8)) > 0.5)).astype(np.float32)
    n_low = int((base < 1.0).sum())
    affine = np.diag([1.0, 1.2, 1.5, 1.0])
    affine[:3, 3] = [-5, 3, 7]
    img = nib.Nifti1Image(base, affine)
    assert len({tuple(nib.aff2axcodes(img.as_reoriented(ornt_transform(axcodes2ornt("RAS"), o)).affine))
                for o in ORIENTATIONS}) == 48  # fmt: skip
    for k, ornt in enumerate(ORIENTATIONS):
        stored = img.as_reoriented(ornt_transform(axcodes2ornt("RAS"), ornt))
        paths = []
        for m in ("t1", "t1ce", "t2", "flair"):
            paths.append(str(tmp_path / f"o{k}_{m}.nii.gz"))
            nib.save(stored, paths[-1])
        case = pre({"image": paths, "output_name": f"o{k}.nii.gz", "subject_id": f"o{k}"})
        x = case["image"]
        ranked = x[0].flatten().sort().values
        cut = (ranked[n_low - 1] + ranked[n_low]) / 2
        logits = 10 * (x[:3] > cut).float() - 5
        pred = MetaTensor(logits, meta=x.meta, applied_operations=x.applied_operations)
        post({**case, "pred": pred})
        seg = nib.load(tmp_path / "out" / f"o{k}_seg.nii.gz")
        axcodes = nib.aff2axcodes(stored.affine)
        assert seg.shape == stored.shape and np.allclose(seg.affine, stored.affine, atol=1e-5), axcodes
        assert np.array_equal(np.asarray(seg.dataobj) > 0, np.asarray(stored.dataobj) > 1.0), axcodes
