"""Pyramid Barlow Twins (Eq. 4-6) and adversarial (Eq. 8) losses against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from common.losses.adversarial import discriminator_loss, generator_adversarial_loss
from common.losses.barlow import barlow_twins_loss, cross_correlation, pyramid_barlow_loss

Z = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
ZM = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 2.0], [2.0, 0.0, 1.0]])


def test_cross_correlation_3x3_by_hand_uncentred():
    # column norms: z: sqrt(2), sqrt(2), sqrt(5); z_m: sqrt(5), sqrt(2), sqrt(5)
    # z^T z_m = [[3, 1, 1], [2, 1, 3], [2, 3, 2]]
    expected = torch.tensor(
        [
            [3 / math.sqrt(10), 1 / 2, 1 / math.sqrt(10)],
            [2 / math.sqrt(10), 1 / 2, 3 / math.sqrt(10)],
            [2 / 5, 3 / math.sqrt(10), 2 / 5],
        ]
    )
    c = cross_correlation(Z, ZM, center=False, eps=0.0)
    assert torch.allclose(c, expected, atol=1e-6)


def test_barlow_loss_3x3_by_hand():
    # C from the test above: diagonal 3/sqrt(10), 1/2, 2/5; off-diagonal squares 1/4, 1/10, 4/10, 9/10, 4/25, 9/10
    invariance = (1 - 3 / math.sqrt(10)) ** 2 + (1 - 0.5) ** 2 + (1 - 0.4) ** 2
    redundancy = 0.25 + 0.1 + 0.4 + 0.9 + 0.16 + 0.9
    got = barlow_twins_loss(Z, ZM, redundancy_weight=1.0, center=False)
    assert got.item() == pytest.approx(invariance + redundancy, abs=1e-4)
    assert barlow_twins_loss(Z, ZM, redundancy_weight=0.5, center=False).item() == pytest.approx(
        invariance + 0.5 * redundancy, abs=1e-4
    )


def test_centred_correlation_is_pearson():
    z, zm = torch.randn(50, 3), torch.randn(50, 3)
    c = cross_correlation(z, zm, center=True, eps=0.0)
    for i in range(3):
        for j in range(3):
            pearson = torch.corrcoef(torch.stack([z[:, i], zm[:, j]]))[0, 1]
            assert c[i, j].item() == pytest.approx(pearson.item(), abs=1e-5)


def test_barlow_loss_zero_for_identical_decorrelated_features_and_finite_for_constant():
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])  # centred, orthogonal columns
    assert barlow_twins_loss(z, z).item() == pytest.approx(0.0, abs=1e-5)
    const = torch.ones(4, 2)
    assert torch.isfinite(barlow_twins_loss(const, const))


def test_pyramid_sums_levels_over_tokens():
    levels = [torch.randn(2, 5, 3) for _ in range(3)]
    masked = [torch.randn(2, 5, 3) for _ in range(3)]
    expected = sum(barlow_twins_loss(a.reshape(10, 3), b.reshape(10, 3)) for a, b in zip(levels, masked))
    assert pyramid_barlow_loss(levels, masked).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="same non-zero number of levels"):
        pyramid_barlow_loss(levels, masked[:2])


def _barlow_by_hand(a, b, weight=1.0, center=True):
    """Eq. 4-5 in numpy: the (centred) cross-correlation, then invariance plus weighted redundancy."""
    if center:
        a, b = a - a.mean(0), b - b.mean(0)
    c = (a.T @ b) / np.sqrt(((a**2).sum(0) + 1e-6)[:, None] * ((b**2).sum(0) + 1e-6)[None, :])
    return ((1 - np.diag(c)) ** 2).sum() + weight * ((c**2).sum() - (np.diag(c) ** 2).sum())


def test_cross_correlation_centres_by_default():
    # Z's column means (2/3, 2/3, 1), ZM's (1, 2/3, 1): the default must subtract them (Pearson), not the raw cosine
    z, zm = Z.double().numpy(), ZM.double().numpy()
    a, b = z - z.mean(0), zm - zm.mean(0)
    expected = (a.T @ b) / np.sqrt(((a**2).sum(0) + 1e-6)[:, None] * ((b**2).sum(0) + 1e-6)[None, :])
    assert np.allclose(cross_correlation(Z, ZM).numpy(), expected, atol=1e-5)


def test_barlow_normalisations_divide_by_width_and_matrix_size():
    # the 3x3 case by hand (test above): "width" divides Eq. 5 by D = 3, "matrix" by D^2 = 9
    total = (1 - 3 / math.sqrt(10)) ** 2 + 0.5**2 + 0.6**2 + 0.25 + 0.1 + 0.4 + 0.9 + 0.16 + 0.9
    for normalize, scale in (("none", 1), ("width", 3), ("matrix", 9)):
        got = barlow_twins_loss(Z, ZM, center=False, normalize=normalize).item()
        assert got == pytest.approx(total / scale, abs=1e-5), normalize


@pytest.mark.parametrize("center", [True, False])
def test_pyramid_passes_weight_centring_and_normalisation_to_every_level(center):
    rng = np.random.default_rng(1)
    levels = [rng.normal(1.0, 1.0, (2, 4, 3)) for _ in range(2)]
    masked = [rng.normal(-0.5, 1.0, (2, 4, 3)) for _ in range(2)]
    expected = sum(_barlow_by_hand(a.reshape(8, 3), b.reshape(8, 3), 0.25, center) / 3 for a, b in zip(levels, masked))
    got = pyramid_barlow_loss(
        [torch.tensor(a, dtype=torch.float32) for a in levels],
        [torch.tensor(b, dtype=torch.float32) for b in masked],
        redundancy_weight=0.25,
        center=center,
        normalize="width",
    )
    assert got.item() == pytest.approx(expected, rel=1e-4)


def test_discriminator_loss_is_minus_eq8_by_hand():
    real, fake = torch.tensor([2.0]), torch.tensor([-1.0])
    d_real, d_fake = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(1.0))
    eq8 = math.log(1 - d_fake) + math.log(d_real)
    assert discriminator_loss(real, fake).item() == pytest.approx(-eq8, rel=1e-6)
    assert generator_adversarial_loss(fake).item() == pytest.approx(math.log(1 - d_fake), rel=1e-6)
    assert generator_adversarial_loss(fake, non_saturating=True).item() == pytest.approx(-math.log(d_fake), rel=1e-6)


def test_adversarial_signs():
    """D's loss falls as it separates real from fake; G's loss falls as D is fooled."""
    assert discriminator_loss(torch.tensor([3.0]), torch.tensor([-3.0])) < discriminator_loss(
        torch.tensor([0.0]), torch.tensor([0.0])
    )
    assert discriminator_loss(torch.tensor([0.0]), torch.tensor([0.0])) < discriminator_loss(
        torch.tensor([-3.0]), torch.tensor([3.0])
    )
    for ns in (False, True):
        assert generator_adversarial_loss(torch.tensor([3.0]), ns) < generator_adversarial_loss(
            torch.tensor([-3.0]), ns
        )
    # gradient directions: D pushes real logits up and fake down; G pushes fake logits up
    real, fake = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    discriminator_loss(real, fake).backward()
    assert real.grad.item() < 0 < fake.grad.item()
    fake_g = torch.zeros(1, requires_grad=True)
    generator_adversarial_loss(fake_g).backward()
    assert fake_g.grad.item() < 0
