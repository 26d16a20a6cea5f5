"""MRM reconstruction and relation-matching losses (Eq. 7-14) against hand-computed values."""

import math

import pytest
import torch

from common.losses.mrm import (
    cross_matching_loss,
    draw_match_samples,
    matching_loss,
    mrm_loss_weights,
    overall_loss,
    reconstruction_loss,
    sample_relation,
    self_matching_loss,
)

S = 1 / math.sqrt(2)
# three samples, 2-d features chosen so every cosine is 0, +-1 or 1/sqrt(2)
Z_I = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # intact image
Z_IM = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])  # masked image (norms differ: cosine ignores them)
Z_G = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # intact genome
Z_GM = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]])  # masked genome


def test_sample_relation_by_hand():
    expected = torch.tensor([[1.0, 0.0, S], [0.0, 1.0, S], [S, S, 1.0]])
    assert torch.allclose(sample_relation(Z_I, Z_I), expected, atol=1e-6)
    # cross: rows image samples, columns genome samples
    assert torch.allclose(sample_relation(Z_I, Z_GM), torch.tensor([[1.0, -1.0, 1.0], [0.0, 0.0, 0.0], [S, -S, S]]))
    # small norms: cosine does not depend on them
    small = torch.tensor([[0.1, 0.0], [0.0, 0.2], [0.05, 0.05]])
    assert torch.allclose(sample_relation(small, small), expected, atol=1e-6)
    with pytest.raises(ValueError, match="expected features"):
        sample_relation(Z_I, torch.ones(3, 4))
    with pytest.raises(ValueError, match="expected features"):
        sample_relation(torch.ones(3), Z_I)


def test_self_matching_eq10_three_samples_by_hand():
    # R_II - R_II,M = [[0, -1, S], [-1, 0, S], [S, S, 0]] -> squares sum 1 + 1 + 4 * 1/2 = 4
    # R_GG = ones; R_GG,M = [[1,-1,1],[-1,1,-1],[1,-1,1]] -> four entries differ by 2 -> 16
    # L_self = (4 + 16) / (2 * 3^2) = 10/9
    got = self_matching_loss([Z_I, Z_G], [Z_IM, Z_GM])
    assert got.item() == pytest.approx(10 / 9, rel=1e-6)


def test_self_matching_single_modality_is_mean_over_one():
    assert self_matching_loss([Z_I], [Z_IM]).item() == pytest.approx(4 / 9, rel=1e-6)
    assert self_matching_loss([Z_G], [Z_GM]).item() == pytest.approx(16 / 9, rel=1e-6)
    with pytest.raises(ValueError, match="same non-zero number"):
        self_matching_loss([Z_I, Z_G], [Z_IM])


def test_cross_matching_eq12_three_samples_by_hand():
    # R_IG[i, j] = cos(z_I^i, z_G^j) = [[1,1,1],[0,0,0],[S,S,S]]
    # R_IG,M[i, j] = cos(z_IM^i, z_GM^j) = [[1,-1,1],[1,-1,1],[0,0,0]]
    # squared differences: row 0: 0 + 4 + 0; row 1: 1 + 1 + 1; row 2: 3 * 1/2  -> 8.5; / 3^2
    got = cross_matching_loss(Z_I, Z_G, Z_IM, Z_GM)
    assert got.item() == pytest.approx(8.5 / 9, rel=1e-6)


def test_cross_matching_pairs_intact_with_intact_and_masked_with_masked():
    """Pairing an intact feature with a masked one changes the value (generic features): the order is Eq. 11's."""
    g = torch.Generator().manual_seed(0)
    zi, zg, zim, zgm = (torch.randn(4, 3, generator=g) for _ in range(4))
    ref = cross_matching_loss(zi, zg, zim, zgm).item()
    assert cross_matching_loss(zi, zgm, zim, zg).item() != pytest.approx(ref)
    assert cross_matching_loss(zg, zi, zgm, zim).item() == pytest.approx(ref)  # transposed relations: same sum


def test_matching_a_branch_with_itself_is_zero():
    assert self_matching_loss([Z_I, Z_G], [Z_I, Z_G]).item() == 0.0
    assert cross_matching_loss(Z_I, Z_G, Z_I, Z_G).item() == 0.0


def test_reconstruction_eq7_term_by_hand():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert reconstruction_loss(pred, torch.zeros(2, 2)).item() == pytest.approx((1 + 4 + 9 + 16) / 4)
    assert reconstruction_loss(pred, pred).item() == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        reconstruction_loss(pred, torch.zeros(4))


def test_eq13_eq14_weighting_by_hand():
    assert matching_loss(torch.tensor(0.5), torch.tensor(0.25)).item() == 0.75
    # L = 1 + 2 + lambda (3 + 4)
    assert overall_loss(1.0, 2.0, matching_loss(3.0, 4.0), lam=0.5) == 1 + 2 + 0.5 * 7
    assert overall_loss(1.0, 2.0, 7.0) == 10.0  # lambda = 1 by default (paper)


def test_loss_weights_make_the_trainers_sum_eq14():
    terms = {"loss_rec_image": 1.0, "loss_rec_genome": 2.0, "loss_match_self": 3.0, "loss_match_cross": 4.0}
    for lam in (1.0, 0.3):
        w = mrm_loss_weights(lam)
        assert set(w) == set(terms)
        trainer_sum = sum(w[k] * v for k, v in terms.items())  # what SelfSupervisedTrainer computes
        assert trainer_sum == pytest.approx(1 + 2 + lam * (3 + 4))
    assert mrm_loss_weights(0.5, genetics=False) == {"loss_rec_image": 1.0, "loss_match_self": 0.5}
    assert set(mrm_loss_weights().values()) == {1.0}  # the paper's lambda = 1 by default


def test_draw_match_samples():
    assert torch.equal(draw_match_samples(5, 8), torch.arange(5))  # batch smaller than 8: all samples
    assert torch.equal(draw_match_samples(8, 8), torch.arange(8))
    assert torch.equal(draw_match_samples(6, None), torch.arange(6))
    idx = draw_match_samples(256, 8, torch.Generator().manual_seed(0))
    assert idx.shape == (8,) and len(set(idx.tolist())) == 8 and idx.min() >= 0 and idx.max() < 256
    again = draw_match_samples(256, 8, torch.Generator().manual_seed(0))
    assert torch.equal(idx, again)
    draws = torch.stack([draw_match_samples(10, 3) for _ in range(50)])
    assert len(set(draws.flatten().tolist())) > 3  # random, not the first three
    assert draw_match_samples(256).shape == (8,)  # the paper's 8 by default
    assert draw_match_samples(10, 2).shape == (2,)  # 2 samples are enough for a relation
    with pytest.raises(ValueError, match="at least 2 samples"):
        draw_match_samples(10, 1)


def test_draw_match_samples_places_the_draw_on_the_generators_device_and_the_indices_on_device(monkeypatch):
    # a CUDA generator can only draw on its own device; the indices then go to ``device``. Checked on this CPU
    # machine with the meta device as the target and a recorder standing in for randperm.
    assert draw_match_samples(5, 8, device="meta").device.type == "meta"  # all samples, on ``device``
    seen = []
    randperm = torch.randperm

    def recorder(n, generator=None, device=None):
        seen.append(device)
        return randperm(n, generator=generator)

    monkeypatch.setattr(torch, "randperm", recorder)
    assert draw_match_samples(10, 3, torch.Generator(), device="meta").device.type == "meta"
    assert draw_match_samples(10, 3, device="meta").device.type == "meta"
    assert seen == [torch.device("cpu"), "meta"]  # the generator's device, else ``device``
