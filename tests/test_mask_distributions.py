"""The masks' randomness, ranges and defaults, beyond the hand-computed cases of the per-method tests: a seeded
generator reproduces a mask (and is what draws it), every choice has the probability the method gives it, the
ratio bounds are the documented ones. Written from the mutants mutmut left alive in ``common/masking`` and
``common/losses`` (docs/TESTING.md)."""

from __future__ import annotations

import inspect
from collections import Counter

import numpy as np
import pytest
import torch

from common.losses.barlow import barlow_twins_loss, cross_correlation
from common.losses.brainmvp import brainmvp_loss
from common.losses.mrm import sample_relation
from common.masking.cross_modal import cube_mask
from common.masking.hybrid import apply_mask, hybrid_mask, modality_mask, patch_mask, position_mask
from common.masking.subsequence import random_patch_mask, subsequence_indices
from common.masking.template_replace import replacement_masks, template_copies


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


DRAWS = {
    "modality_mask": lambda g: modality_mask(8, 4, 6, g),
    "position_mask": lambda g: position_mask(8, 4, 6, 0.5, g),
    "patch_mask": lambda g: patch_mask(torch.ones(8, 4, 6, dtype=torch.bool), 0.5, g),
    "hybrid_mask": lambda g: hybrid_mask(8, 4, 6, generator=g),
    "cube_mask": lambda g: cube_mask((8, 8, 8), 4, 4, 0.5, g),
    "replacement_masks": lambda g: torch.stack(replacement_masks(torch.ones(8, 4, dtype=torch.bool), g)),
    "template_copies": lambda g: torch.stack(
        template_copies(
            torch.zeros(8, 4, 2, 2, 2), torch.ones(1, 4, 2, 2, 2), torch.ones(4, dtype=torch.bool), generator=g
        )
    ),
    "template_copies_unimodal": lambda g: torch.stack(
        template_copies(
            torch.zeros(4, 1, 8, 8, 8), torch.ones(1, 1, 8, 8, 8), torch.ones(1, dtype=torch.bool), 4, 0.5, g
        )
    ),
    "random_patch_mask": lambda g: random_patch_mask(4, 20, 0.5, g),
    "subsequence_indices": lambda g: subsequence_indices(torch.tensor([50, 60, 70]), 10, g)[0],
}


@pytest.mark.parametrize("name", sorted(DRAWS))
def test_a_seeded_generator_draws_the_mask(name):
    draw = DRAWS[name]
    torch.manual_seed(123)
    first = draw(_g(7))
    torch.manual_seed(456)  # the global RNG must not matter
    assert torch.equal(first, draw(_g(7)))
    assert any(not torch.equal(first, draw(_g(s))) for s in range(8, 16))


def test_replacement_counts_are_uniform_distinct_pairs():
    """m uniform over 0..k, n uniform over the other k values (k = 3 of 4 modalities: one stays real)."""
    first, second = replacement_masks(torch.ones(12000, 4, dtype=torch.bool), _g(0))
    pairs = Counter(zip(first.sum(1).tolist(), second.sum(1).tolist()))
    assert set(pairs) == {(m, n) for m in range(4) for n in range(4) if m != n}
    assert all(abs(count / 12000 - 1 / 12) < 0.012 for count in pairs.values()), pairs
    # which modalities: uniform over the replaceable ones, never one without a template
    avail = torch.tensor([True, False, True, True]).expand(6000, 4)
    a, b = replacement_masks(avail, _g(1))
    assert not a[:, 1].any() and not b[:, 1].any()
    share = a.float().sum(0) / a.float().sum()
    assert torch.allclose(share[[0, 2, 3]], torch.full((3,), 1 / 3), atol=0.02)


def test_every_modality_is_the_dropped_one_as_often():
    dropped = modality_mask(8000, 4, 3, _g(0)).all(2).float()  # [B, C]: the fully masked modality
    assert torch.equal(dropped.sum(1), torch.ones(8000))
    assert torch.allclose(dropped.mean(0), torch.full((4,), 0.25), atol=0.02)


def test_ratio_bounds():
    assert position_mask(2, 3, 4, 1.0, _g(0)).all()  # 1.0 is allowed: every position
    with pytest.raises(ValueError, match=r"^position mask ratio must be in \[0, 1\], got 1.5$"):
        position_mask(2, 3, 4, 1.5)
    with pytest.raises(ValueError, match=r"^patch mask ratio must be in \[0, 1\), got 1.0$"):
        patch_mask(torch.ones(2, 3, 4, dtype=torch.bool), 1.0)
    assert cube_mask((8, 8, 8), 1, 4, 1.0, _g(0)).all()
    with pytest.raises(ValueError, match=r"^mask ratio must be in \[0, 1\], got 1.5$"):
        cube_mask((8, 8, 8), 1, 4, 1.5)


def test_the_patch_mask_leaves_one_patch_of_each_position_and_can_mask_a_lone_one():
    # 3 modalities x 5 positions, all available: ratio 0.99 masks n - 1 of each position group's complement...
    avail = torch.ones(200, 3, 5, dtype=torch.bool)
    m = patch_mask(avail, 0.99, _g(0))
    assert torch.equal((~m & avail).sum((1, 2)), torch.full((200,), 5))  # exactly one patch kept per position
    # a position where only one modality is left has no partner: its lone patch is maskable, not a keeper
    lone = torch.zeros(400, 2, 4, dtype=torch.bool)
    lone[:, 0] = True  # modality 0 everywhere, modality 1 nowhere
    masked = patch_mask(lone, 0.5, _g(1))
    assert masked[:, 0].any(1).all() and not masked[:, 1].any()
    assert torch.equal(masked.sum((1, 2)), torch.full((400,), 2))  # round(0.5 * 4)


def test_defaults_are_the_documented_ones():
    hybrid = inspect.signature(hybrid_mask).parameters
    assert hybrid["position_ratio"].default == 0.5 and hybrid["patch_ratio"].default == pytest.approx(1 / 3)
    cube = inspect.signature(cube_mask).parameters
    assert cube["cube"].default == 8 and cube["ratio"].default == 0.875
    assert brainmvp_loss(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0)).item() == 6.0


def test_the_two_template_copies_use_two_masks():
    x, t = torch.zeros(64, 1, 8, 8, 8), torch.ones(1, 1, 8, 8, 8)
    a, b = template_copies(x, t, torch.ones(1, dtype=torch.bool), 4, 0.5, _g(0))
    assert not torch.equal(a, b) and a.mean().item() == pytest.approx(0.5) and b.mean().item() == pytest.approx(0.5)


def test_a_mask_token_fill_keeps_the_inputs_dtype():
    x = torch.zeros(1, 2, 4, 4, 4)
    mask = torch.zeros(1, 2, 8, dtype=torch.bool)
    mask[0, 0, 0] = True
    out = apply_mask(x, mask, (2, 2, 2), torch.full((2, 2, 2, 2), 3.0, dtype=torch.float64))
    assert out.dtype == torch.float32 and out[0, 0, :2, :2, :2].eq(3).all() and out.sum() == 3 * 8


def test_barlow_shape_check_message_and_uncentred_form():
    with pytest.raises(ValueError, match=r"^expected two \[N, D\] embeddings of one shape, got \(4, 3\) and \(4, 5\)$"):
        cross_correlation(torch.zeros(4, 3), torch.zeros(4, 5))
    with pytest.raises(ValueError, match=r"got \(4, 3, 1\) and \(4, 3, 1\)"):
        cross_correlation(torch.zeros(4, 3, 1), torch.zeros(4, 3, 1))
    with pytest.raises(ValueError, match=r"^normalize must be one of \('none', 'width', 'matrix'\), got 'sum'$"):
        barlow_twins_loss(torch.zeros(4, 3), torch.zeros(4, 3), normalize="sum")
    rng = np.random.default_rng(0)
    z, zm = rng.normal(2.0, 1.0, (6, 3)), rng.normal(-1.0, 1.0, (6, 3))  # far from zero mean

    def by_hand(a, b):
        c = (a.T @ b) / np.sqrt(((a**2).sum(0) + 1e-6)[:, None] * ((b**2).sum(0) + 1e-6)[None, :])
        return ((1 - np.diag(c)) ** 2).sum() + (c**2).sum() - (np.diag(c) ** 2).sum()

    zt, zmt = torch.tensor(z, dtype=torch.float32), torch.tensor(zm, dtype=torch.float32)
    plain = barlow_twins_loss(zt, zmt, center=False).item()
    assert plain == pytest.approx(by_hand(z, zm), rel=1e-4)
    assert barlow_twins_loss(zt, zmt).item() == pytest.approx(by_hand(z - z.mean(0), zm - zm.mean(0)), rel=1e-4)


@pytest.mark.parametrize("side", [0, 1])
def test_sample_relation_floors_either_sides_tiny_norms(side):
    tiny = torch.tensor([[1e-10, 0.0], [1.0, 0.0]])
    other = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    a, b = (tiny, other) if side == 0 else (other, tiny)
    got = sample_relation(a, b)
    # the 1e-10 row over max(norm, 1e-8) = 1e-8: cosine 0.01 with the unit row (F.normalize's own 1e-12 gives 1)
    expected = torch.tensor([[0.01, 0.01], [1.0, 1.0]]) if side == 0 else torch.tensor([[0.01, 1.0], [0.01, 1.0]])
    assert torch.allclose(got, expected, atol=1e-6)


def test_default_cubes_and_ratio_mask_seven_of_eight_cells():
    m = cube_mask((16, 16, 16), 3, generator=_g(0))  # defaults: cubes of 8, ratio 0.875 -> 7 of the 8 cells
    assert torch.equal(m.flatten(1).sum(1), torch.full((3,), 7 * 512))
    x, t = torch.zeros(3, 1, 16, 16, 16), torch.ones(1, 1, 16, 16, 16)
    a, b = template_copies(x, t, torch.ones(1, dtype=torch.bool), generator=_g(1))  # the same defaults
    assert torch.equal(a.flatten(1).sum(1), torch.full((3,), 7.0 * 512)) and a.shape == x.shape


def test_template_copies_keep_the_inputs_shape_for_several_modalities():
    x, t = torch.zeros(5, 4, 2, 3, 2), torch.ones(1, 4, 2, 3, 2)
    a, b = template_copies(x, t, torch.ones(4, dtype=torch.bool), generator=_g(0))
    assert a.shape == x.shape and b.shape == x.shape
    # whole channels are replaced: every channel is all template or all input
    per_channel = a.flatten(2)
    assert torch.equal(per_channel.amin(2), per_channel.amax(2))


def test_without_a_partner_one_patch_is_always_left():
    lone = torch.zeros(50, 2, 4, dtype=torch.bool)
    lone[:, 0] = True
    masked = patch_mask(lone, 0.99, _g(0))  # round(0.99 * 4) = 4, capped at 4 - 1
    assert torch.equal(masked.sum((1, 2)), torch.full((50,), 3))
