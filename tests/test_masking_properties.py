"""Property tests (hypothesis): for random shapes, ratios and seeds every mask keeps its defining properties."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.masking.hybrid import apply_mask, hybrid_mask, modality_mask, patch_mask, position_mask

shapes = st.tuples(st.integers(1, 4), st.integers(2, 6), st.integers(1, 64))  # B, C, L
ratios = st.floats(0.0, 1.0)
seeds = st.integers(0, 2**31 - 1)


def g(seed):
    return torch.Generator().manual_seed(seed)


@settings(max_examples=60, deadline=None)
@given(shapes, seeds)
def test_modality_mask_property(shape, seed):
    b, c, n = shape
    m = modality_mask(b, c, n, g(seed))
    assert m.shape == (b, c, n) and (m.all(2).sum(1) == 1).all() and torch.equal(m.any(2), m.all(2))


@settings(max_examples=60, deadline=None)
@given(shapes, ratios, seeds)
def test_position_mask_property(shape, ratio, seed):
    b, c, n = shape
    m = position_mask(b, c, n, ratio, g(seed))
    assert torch.equal(m, m[:, :1].expand_as(m))
    assert (m[:, 0].sum(1) == round(ratio * n)).all()


@settings(max_examples=60, deadline=None)
@given(shapes, st.floats(0.0, 0.99), st.floats(0.0, 1.0), seeds)
def test_patch_mask_property(shape, ratio, drop, seed):
    b, c, n = shape
    available = torch.rand(b, c, n, generator=g(seed)) >= drop
    m = patch_mask(available, ratio, g(seed + 1))
    assert not (m & ~available).any()
    # complementary: where two or more modalities are available, one stays visible
    assert ((available & ~m).any(1) | (available.sum(1) < 2)).all()
    assert (m.flatten(1).sum(1) <= (ratio * available.flatten(1).sum(1)).round().long()).all()


@settings(max_examples=40, deadline=None)
@given(shapes, st.booleans(), st.floats(0.0, 0.9), st.floats(0.0, 0.9), seeds)
def test_hybrid_mask_composition_and_untouched_voxels(shape, use_mod, pos, patch, seed):
    b, c, _ = shape
    grid, p = (2, 2, 1), (2, 2, 2)
    n = 4
    m = hybrid_mask(b, c, n, use_mod, pos, patch, generator=g(seed))
    if pos < 1.0:  # some position always keeps a visible patch
        assert (~m).any(1).any(1).all() or round(pos * n) == n
    if use_mod:
        assert (m.all(2).sum(1) >= 1).all()
    x = torch.randn(b, c, 4, 4, 2, generator=g(seed)) + 3.0
    y = apply_mask(x, m, p)
    vox = m.view(b, c, *grid).repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
    assert torch.equal(y[~vox], x[~vox]) and (y[vox] == 0).all() and torch.isfinite(y).all()


from common.masking.cross_modal import cross_modal_mask, cube_mask  # noqa: E402
from common.masking.template_replace import replacement_masks, template_copies  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(
    st.tuples(st.integers(4, 40), st.integers(4, 40), st.integers(4, 40)),
    st.integers(1, 3),
    st.sampled_from([2, 4, 8]),
    st.floats(0.0, 1.0),
    seeds,
)
def test_cube_mask_property(shape, batch, cube, ratio, seed):
    m = cube_mask(shape, batch, cube, ratio, g(seed))
    assert m.shape == (batch, 1, *shape)
    cells = [-(-s // cube) for s in shape]
    corners = m[:, :, ::cube, ::cube, ::cube]
    assert (corners.flatten(1).sum(1) == round(ratio * cells[0] * cells[1] * cells[2])).all()
    x, f = torch.rand(batch, 1, *shape, generator=g(seed)), torch.rand(batch, 1, *shape, generator=g(seed + 1)) + 2
    y = cross_modal_mask(x, f, m)
    assert torch.equal(y[~m], x[~m]) and torch.equal(y[m], f[m]) and torch.isfinite(y).all()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 8), st.floats(0.0, 1.0), seeds)
def test_template_replacement_property(batch, channels, drop, seed):
    avail = torch.rand(batch, channels, generator=g(seed)) >= drop
    first, second = replacement_masks(avail, g(seed + 1))
    for m in (first, second):
        assert not (m & ~avail).any() and (m.sum(1) <= channels - 1).all()
    can = avail.sum(1).clamp(max=channels - 1) > 0
    assert ((first.sum(1) != second.sum(1)) | ~can).all()
    x = torch.rand(batch, channels, 4, 4, 4, generator=g(seed))
    t = torch.rand(1, channels, 4, 4, 4, generator=g(seed + 2)) + 5
    a, b = template_copies(x, t, avail, generator=g(seed + 3))
    for copy in (a, b):
        replaced = (copy >= 5).all(dim=(2, 3, 4))
        kept = torch.isclose(copy, x).all(dim=(2, 3, 4))
        assert (replaced | kept).all() and torch.isfinite(copy).all()
