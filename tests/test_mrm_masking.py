"""MRM relation masking (Eq. 4 and 6) against hand-computed matrices, ties included."""

import numpy as np
import pytest
import torch

from common.masking.relation import relation_keep_mask, relation_mask, relation_topk_count

# rows sum to 1 (softmax outputs); rows 1-3 have ties at the threshold
R4 = torch.tensor(
    [
        [0.4, 0.3, 0.2, 0.1],
        [0.1, 0.3, 0.3, 0.3],
        [0.25, 0.25, 0.25, 0.25],
        [0.5, 0.2, 0.2, 0.1],
    ]
)


@pytest.mark.parametrize(
    "n, tau, k",
    [
        (196, 0.75, 147),  # paper, image rows
        (196, 0.5, 98),  # paper, genome-query rows over image keys
        (16, 0.5, 8),
        (3, 0.5, 2),  # 1.5 rounds half up
        (3, 0.75, 2),  # 2.25
        (2, 0.75, 2),  # 1.5
        (10, 0.15, 2),  # 1.4999999999999998 in floating point, meant as 1.5
        (30, 0.1, 3),  # 3.0000000000000004: ceil would say 4
        (4, 0.1, 0),  # 0.4: nothing masked
        (4, 0.125, 1),  # 0.5
        (5, 0.0, 0),
        (5, 1.0, 5),
    ],
)
def test_topk_count_rounds_half_up(n, tau, k):
    assert relation_topk_count(n, tau) == k


def test_topk_count_rejects_bad_ratio():
    for tau in (-0.1, 1.5):
        with pytest.raises(ValueError, match="tau must be in"):
            relation_topk_count(4, tau)
    assert relation_topk_count(0, 0.5) == 0  # an empty row masks nothing
    with pytest.raises(ValueError, match="non-negative number of entries, got -1"):
        relation_topk_count(-1, 0.5)


def test_4x4_with_ties_tau_half_by_hand():
    # k = 2: r^p is the 2nd largest entry of each row; every entry >= r^p is zeroed
    # row 0: r = 0.3 -> 0.4, 0.3 go; row 1: r = 0.3 (tied) -> all three 0.3 go; row 2: constant -> all go;
    # row 3: r = 0.2 (tied) -> 0.5 and both 0.2 go
    expected = torch.tensor(
        [
            [0.0, 0.0, 0.2, 0.1],
            [0.1, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.1],
        ]
    )
    assert torch.equal(relation_mask(R4, 0.5), expected)


def test_4x4_with_ties_tau_quarter_and_three_quarters_by_hand():
    # k = 1: r = row maximum
    quarter = torch.tensor(
        [
            [0.0, 0.3, 0.2, 0.1],
            [0.1, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.2, 0.2, 0.1],
        ]
    )
    assert torch.equal(relation_mask(R4, 0.25), quarter)
    # k = 3: r = 3rd largest: 0.2, 0.3, 0.25, 0.2
    three_quarters = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.1],
            [0.1, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.1],
        ]
    )
    assert torch.equal(relation_mask(R4, 0.75), three_quarters)


def test_no_renormalisation_by_default_and_renormalise_switch():
    masked = relation_mask(R4, 0.5)
    assert torch.allclose(masked.sum(-1), torch.tensor([0.3, 0.1, 0.0, 0.1]))
    renorm = relation_mask(R4, 0.5, renormalize=True)
    expected = torch.tensor(
        [
            [0.0, 0.0, 2 / 3, 1 / 3],
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],  # nothing kept: stays zero, no NaN
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    assert torch.allclose(renorm, expected, atol=1e-7)
    # batched: rows are the last dim whatever the leading dims
    batched = relation_mask(torch.stack([R4, R4.flip(-1)])[None], 0.5, renormalize=True)  # [1, 2, 4, 4]
    assert torch.allclose(batched[0, 0], expected, atol=1e-7)
    assert torch.allclose(batched[0, 1], expected.flip(-1), atol=1e-7)


def test_cross_2x3_image_queries_by_hand():
    # 2 image queries over 3 genome keys, tau_I = 0.75 -> k = round(2.25) = 2
    r = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    expected = torch.tensor([[0.0, 0.0, 0.2], [0.1, 0.0, 0.0]])
    assert torch.equal(relation_mask(r, 0.75), expected)


def test_cross_3x2_genome_queries_by_hand():
    # 3 genome queries over 2 image keys, tau_G = 0.5 -> k = 1 (row maximum); the last row is a tie
    r = torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5]])
    expected = torch.tensor([[0.0, 0.3], [0.4, 0.0], [0.0, 0.0]])
    assert torch.equal(relation_mask(r, 0.5), expected)


def test_tau_zero_keeps_everything_tau_one_masks_everything():
    a = torch.rand(2, 3, 5, 7).softmax(-1)
    assert torch.equal(relation_mask(a, 0.0), a)
    assert torch.equal(relation_mask(a, 1.0), torch.zeros_like(a))


def _numpy_reference(a: np.ndarray, tau: float) -> np.ndarray:
    """Sort each row (the slow obvious way), threshold at the k-th largest, zero everything >= it."""
    n = a.shape[-1]
    k = int(np.floor(tau * n + 0.5 + 1e-9))
    out = a.copy().reshape(-1, n)
    for row in out:
        if k == 0:
            continue
        r = np.sort(row)[::-1][k - 1]
        row[row >= r] = 0.0
    return out.reshape(a.shape)


@pytest.mark.parametrize("shape, tau", [((2, 3, 7, 7), 0.75), ((2, 3, 7, 4), 0.5), ((1, 2, 4, 9), 0.3)])
def test_batched_equals_row_by_row_reference(shape, tau):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(*shape, generator=g)
    logits[..., 0, 1] = logits[..., 0, 2]  # a tie in some rows
    a = logits.softmax(-1)
    expected = torch.from_numpy(_numpy_reference(a.numpy(), tau))
    assert torch.equal(relation_mask(a, tau), expected)


def test_every_row_masks_at_least_k_and_keeps_only_smaller_entries():
    a = torch.rand(3, 4, 11, 13).softmax(-1)
    keep = relation_keep_mask(a, 0.75)
    k = relation_topk_count(13, 0.75)
    assert ((~keep).sum(-1) >= k).all()
    # every kept entry is smaller than every masked entry of its row
    kept_max = torch.where(keep, a, torch.full_like(a, -1.0)).amax(-1)
    masked_min = torch.where(~keep, a, torch.full_like(a, 2.0)).amin(-1)
    assert (kept_max < masked_min).all()


def test_gradient_flows_through_kept_entries_only():
    a = torch.tensor([[0.4, 0.3, 0.2, 0.1]], requires_grad=True)
    relation_mask(a, 0.5).sum().backward()
    assert torch.equal(a.grad, torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
