"""BrainMVP's modality templates (``common.networks.templates``) against plain-numpy lookups and interpolations.

Every expected value here is computed in numpy inside the test (index arithmetic, trilinear interpolation written
out), never by calling the code under test. The cases cover what the mutation run of 2026-12-02 found untested:
the resize branch of unregistered templates, the bounds, clamps and interpolation of the resampled branch, the
extra state, the parameter's shape and the refusal message.
"""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
import torch

from common.networks.templates import ModalityTemplates, translation_map


def _filled(modalities, canvas, seed=0) -> ModalityTemplates:
    t = ModalityTemplates(modalities, canvas)
    with torch.no_grad():
        t.templates.copy_(torch.from_numpy(np.random.default_rng(seed).normal(size=t.templates.shape)).float())
    return t


def _points(canvas_map: np.ndarray, size) -> np.ndarray:
    """Canvas position ``[N, 3]`` of each crop voxel, crop voxels in C order."""
    idx = np.array(list(itertools.product(*[range(s) for s in size])), dtype=np.float64)
    return idx @ canvas_map[:3, :3].T + canvas_map[:3, 3]


def _reference_resampled(volume: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The documented rule: 0 beyond half a voxel outside the canvas, else trilinear on the clamped position."""
    canvas = np.array(volume.shape)
    out = np.zeros(len(points))
    for n, p in enumerate(points):
        if (p < -0.5).any() or (p > canvas - 0.5).any():
            continue
        p = np.minimum(np.maximum(p, 0), canvas - 1)
        lo = np.floor(p).astype(int)
        frac = p - lo
        for corner in itertools.product((0, 1), repeat=3):
            c = np.minimum(lo + corner, canvas - 1)
            w = np.prod([frac[i] if corner[i] else 1 - frac[i] for i in range(3)])
            out[n] += w * volume[tuple(c)]
    return out


def _reference_exact(volume: np.ndarray, points: np.ndarray) -> np.ndarray:
    canvas = np.array(volume.shape)
    p = np.round(points).astype(int)
    inside = ((p >= 0) & (p < canvas)).all(1)
    out = np.zeros(len(points))
    out[inside] = volume[tuple(p[inside].T)]
    return out


def _reference_resize(volume: np.ndarray, size) -> np.ndarray:
    """Trilinear resize with half-voxel centres (``align_corners=False``), written out."""
    src = np.array(volume.shape)
    out = np.zeros(size)
    for dst in itertools.product(*[range(s) for s in size]):
        p = np.maximum((np.array(dst) + 0.5) * src / np.array(size) - 0.5, 0)
        lo = np.minimum(np.floor(p).astype(int), src - 1)
        frac = p - lo
        for corner in itertools.product((0, 1), repeat=3):
            c = np.minimum(lo + corner, src - 1)
            out[dst] += np.prod([frac[i] if corner[i] else 1 - frac[i] for i in range(3)]) * volume[tuple(c)]
    return out


def test_parameter_is_one_zero_volume_per_modality_on_the_canvas():
    t = ModalityTemplates(["t1", "t1ce", "flair"], [3, 4, 5])
    assert tuple(t.templates.shape) == (3, 1, 3, 4, 5)
    assert t.templates.abs().sum() == 0 and t.templates.requires_grad
    assert t.canvas == (3, 4, 5) and t.registered is True and t.modalities == ["t1", "t1ce", "flair"]
    assert ModalityTemplates(["t1"], (2, 2, 2), registered=False).registered is False


def test_translation_map_is_identity_plus_the_box_start():
    m = translation_map(torch.tensor([[1, 2, 3], [-4, 0, 7]]))
    assert m.dtype == torch.float64 and m.shape == (2, 4, 4)
    expected = np.tile(np.eye(4), (2, 1, 1))
    expected[0, :3, 3], expected[1, :3, 3] = (1, 2, 3), (-4, 0, 7)
    np.testing.assert_array_equal(m.numpy(), expected)


def test_extra_state_names_modalities_canvas_and_registration_and_refuses_other_modalities():
    t = ModalityTemplates(["t1", "t2"], (2, 3, 4), registered=False)
    assert t.get_extra_state() == {"modalities": ["t1", "t2"], "canvas": [2, 3, 4], "registered": False}
    state = t.state_dict()
    fresh = ModalityTemplates(["t1", "t2"], (2, 3, 4))
    fresh.load_state_dict(state)
    assert fresh.registered is False
    fresh.set_extra_state({"modalities": ["t1", "t2"], "canvas": [2, 3, 4]})  # before 0.4.0: no "registered" key
    assert fresh.registered is True
    with pytest.raises(ValueError) as err:
        ModalityTemplates(["t2", "t1"], (2, 3, 4)).load_state_dict(state)
    assert "template modalities differ: checkpoint ['t1', 't2'] vs network ['t2', 't1']" in str(err.value)


def test_crop_sized_templates_are_used_whole_with_one_or_several_per_sample():
    t = _filled(["a", "b", "c"], (2, 3, 4))
    v = t.templates.detach()[:, 0]
    one = t.sample(torch.tensor([2, 0]), None, (2, 3, 4))
    assert one.shape == (2, 1, 2, 3, 4) and torch.equal(one[0, 0], v[2]) and torch.equal(one[1, 0], v[0])
    several = t.sample(torch.tensor([[1, 2], [0, 1]]), None, (2, 3, 4))
    assert several.shape == (2, 2, 2, 3, 4)
    assert torch.equal(several[0], v[[1, 2]]) and torch.equal(several[1], v[[0, 1]])


def test_unregistered_templates_are_resized_to_another_crop_trilinearly():
    t = ModalityTemplates(["a", "b"], (2, 3, 2), registered=False)
    with torch.no_grad():
        t.templates.copy_(torch.from_numpy(np.random.default_rng(1).normal(size=(2, 1, 2, 3, 2))).float())
    got = t.sample(torch.tensor([1]), None, (4, 5, 3))
    assert got.shape == (1, 1, 4, 5, 3)
    expected = _reference_resize(t.templates.detach()[1, 0].double().numpy(), (4, 5, 3))
    np.testing.assert_allclose(got[0, 0].detach().numpy(), expected, atol=1e-5)
    # with a canvas map given, unregistered templates still have no position: the same resize
    maps = translation_map(torch.tensor([[5, 5, 5]]))
    assert torch.equal(t.sample(torch.tensor([1]), maps, (4, 5, 3)), got)


def test_registered_templates_need_a_canvas_map_for_a_crop_of_another_size():
    t = _filled(["a", "b"], (4, 4, 4))
    whole = t.sample(torch.tensor([1]), None, (4, 4, 4))
    assert torch.equal(whole[0, 0], t.templates.detach()[1, 0])
    with pytest.raises(ValueError) as err:
        t.sample(torch.tensor([1]), None, (2, 4, 4))
    assert str(err.value) == (
        "templates of canvas (4, 4, 4) need each crop's canvas map for crops of (2, 4, 4): end the training "
        "transforms with common.transforms.modality.CanvasMapd (RecordCanvasd after Spacingd)"
    )


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_exact_lookup_bounds_on_every_axis(axis):
    """Integer maps (crops, pads, flips): voxel p inside iff 0 <= p < canvas on every axis, else 0."""
    canvas = (4, 5, 6)
    t = _filled(["a"], canvas, seed=axis)
    size = [3, 3, 3]
    size[axis] = canvas[axis] + 2  # from one voxel before the canvas to one voxel after it
    start = [1, 1, 1]
    start[axis] = -1
    m = translation_map(torch.tensor([start]))
    got = t.sample(torch.tensor([0]), m, size)[0, 0].detach().flatten().numpy()
    expected = _reference_exact(t.templates.detach()[0, 0].double().numpy(), _points(m[0].numpy(), size))
    np.testing.assert_array_equal(got, expected.astype(np.float32))
    volume = t.sample(torch.tensor([0]), m, size)[0, 0].detach().numpy()
    assert np.abs(volume.take(0, axis)).sum() == 0 and np.abs(volume.take(size[axis] - 1, axis)).sum() == 0
    assert np.abs(volume.take(1, axis)).min() > 0 and np.abs(volume.take(size[axis] - 2, axis)).min() > 0


def test_maps_within_the_rounding_tolerance_take_the_exact_lookup():
    t = _filled(["a"], (4, 4, 4))
    m = translation_map(torch.tensor([[0, 0, 0]]))
    m[0, 0, 3] = 0.6  # not an integer map: trilinear blend of slices 0/1 and 1/2 ...
    blended = t.sample(torch.tensor([0]), m, (2, 4, 4))[0, 0]
    v = t.templates.detach()[0, 0]
    assert torch.allclose(blended[0], 0.4 * v[0] + 0.6 * v[1], atol=1e-6)
    m[0, 0, 3] = 1 + 5e-5  # within 1e-4 of an integer: an exact lookup (no blend of slices 1 and 2)
    assert torch.equal(t.sample(torch.tensor([0]), m, (2, 4, 4))[0, 0], v[1:3])


@pytest.mark.parametrize("canvas", [(4, 5, 6), (3, 2, 5)])
def test_resampled_maps_interpolate_clamp_and_pad_by_the_half_voxel_rule(canvas):
    """Fractional maps (resized / resampled crops) against the rule written out in numpy, on all three axes, for
    two samples with different maps and modalities (and a canvas edge of two voxels)."""
    t = _filled(["a", "b", "c"], canvas, seed=3)
    m = torch.zeros(2, 4, 4, dtype=torch.float64)
    m[:, 3, 3] = 1
    # sample 0: crop voxel i on each axis -> positions from before the canvas to after it, with points at exactly
    # -0.5 and canvas - 0.5 (inside: the edge value) and beyond them (outside: 0)
    m[0, 0, 0], m[0, 0, 3] = 0.5, -1.0  # -1, -0.5, 0, ..., 4.0 for i = 0..10
    m[0, 1, 2], m[0, 1, 3] = 0.25, -0.5  # canvas axis 1 from the crop's axis 2: -0.5, -0.25, ..., 1.5
    m[0, 2, 1], m[0, 2, 3] = 0.5, 0.25  # canvas axis 2 from the crop's axis 1: 0.25, ..., 5.75
    # sample 1: a flipped, finer resampling inside the canvas
    m[1, 0, 0], m[1, 0, 3] = -0.3, canvas[0] - 1.0
    m[1, 1, 1], m[1, 1, 3] = 0.15, 0.1
    m[1, 2, 2], m[1, 2, 3] = 0.55, 0.2
    size = (11, 12, 9)
    index = torch.tensor([[1, 0], [2, 1]])
    got = t.sample(index, m, size).detach()
    for b in range(2):
        points = _points(m[b].numpy(), size)
        for k in range(2):
            expected = _reference_resampled(t.templates.detach()[index[b, k], 0].double().numpy(), points)
            np.testing.assert_allclose(got[b, k].flatten().numpy(), expected, atol=1e-5)
    # the boundary cases really occur in sample 0's map
    points = _points(m[0].numpy(), size)
    assert np.isclose(points, -0.5).any() and (points < -0.5).any()
    assert np.isclose(points[:, 0], canvas[0] - 0.5).any() and (points[:, 0] > canvas[0] - 0.5).any()
    # a float32 map (as a MetaTensor's affine may be) gives the same crop
    assert torch.allclose(t.sample(index, m.float(), size).detach(), got, atol=1e-5)


def test_crops_far_outside_the_canvas_are_all_padding():
    t = _filled(["a", "b"], (4, 4, 4))
    before = t.sample(torch.tensor([1]), translation_map(torch.tensor([[-9, -9, -9]])), (3, 3, 3))
    after = t.sample(torch.tensor([1]), translation_map(torch.tensor([[9, 9, 9]])), (3, 3, 3))
    assert before.abs().sum() == 0 and after.abs().sum() == 0
    exact_float32 = t.sample(torch.tensor([1]), translation_map(torch.tensor([[1, 0, 1]])).float(), (3, 3, 3))
    assert torch.equal(exact_float32[0, 0], t.templates.detach()[1, 0, 1:4, 0:3, 1:4])


def test_resampled_gradients_are_the_interpolation_weights():
    t = _filled(["a"], (3, 3, 3))
    m = translation_map(torch.tensor([[0, 0, 0]]))
    m[0, :3, 3] = torch.tensor([0.25, 1.5, 0.75], dtype=torch.float64)
    t.sample(torch.tensor([0]), m, (1, 1, 1)).sum().backward()
    # one crop voxel at canvas (0.25, 1.5, 0.75): weights (0.75, 0.25) x (0.5, 0.5) x (0.25, 0.75)
    expected = np.zeros((3, 3, 3))
    for (d, wd), (h, wh), (w, ww) in itertools.product(
        ((0, 0.75), (1, 0.25)), ((1, 0.5), (2, 0.5)), ((0, 0.25), (1, 0.75))
    ):
        expected[d, h, w] = wd * wh * ww
    np.testing.assert_allclose(t.templates.grad[0, 0].numpy(), expected, atol=1e-6)


def test_to_nifti_writes_one_file_per_modality_with_its_volume_and_affine(tmp_path):
    t = _filled(["t1", "flair"], (2, 3, 4))
    paths = t.to_nifti(str(tmp_path / "out"))
    assert [p.rsplit("/", 1)[1] for p in paths] == ["template_t1.nii.gz", "template_flair.nii.gz"]
    for k, path in enumerate(paths):
        img = nib.load(path)
        np.testing.assert_array_equal(img.get_fdata(dtype=np.float32), t.templates.detach()[k, 0].numpy())
        np.testing.assert_array_equal(img.affine, np.eye(4))
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-10, 5, 3)
    (path,) = t.to_nifti(str(tmp_path / "aff"), affine=affine)[:1]
    np.testing.assert_array_equal(nib.load(path).affine, affine)
    assert t.to_nifti(str(tmp_path / "out")) == paths  # writing again into the same folder replaces the files
