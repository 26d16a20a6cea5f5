"""Hybrid mask pattern: each mask's defining property, the composition, and the voxel expansion."""

import pytest
import torch

from common.masking.hybrid import apply_mask, hybrid_mask, mask_to_volume, modality_mask, patch_mask, position_mask


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_modality_mask_drops_exactly_one_whole_modality_per_sample():
    m = modality_mask(64, 4, 27, gen())
    per_channel = m.all(dim=2)  # [B, C] channel fully masked
    assert torch.equal(per_channel.sum(1), torch.ones(64, dtype=torch.long))
    assert torch.equal(m.any(dim=2), per_channel)  # nothing partial
    # drawn per sample, not once per batch (the public code's defect)
    assert len(set(per_channel.float().argmax(1).tolist())) > 1


def test_modality_mask_needs_two_modalities():
    with pytest.raises(ValueError, match="at least 2 modalities"):
        modality_mask(2, 1, 8)


def test_position_mask_same_positions_in_every_modality_with_exact_count():
    m = position_mask(8, 4, 216, 0.5, gen())
    assert torch.equal(m, m[:, :1].expand_as(m))
    assert m[:, 0].sum(1).tolist() == [108] * 8
    assert not torch.equal(m[0], m[1])  # per sample


def test_patch_mask_is_complementary_exact_and_only_on_available():
    available = ~position_mask(4, 4, 64, 0.25, gen(1)) & ~modality_mask(4, 4, 64, gen(2))
    m = patch_mask(available, 0.5, gen(3))
    assert not (m & ~available).any()
    # at every position with something available, at least one available modality stays visible
    has_any = available.any(1)
    assert ((available & ~m).any(1) | ~has_any).all()
    assert m.flatten(1).sum(1).tolist() == [round(0.5 * n) for n in available.flatten(1).sum(1).tolist()]


def test_patch_mask_saturates_at_keepers():
    available = torch.ones(1, 2, 10, dtype=torch.bool)
    m = patch_mask(available, 0.9, gen())  # asks 18 of 20, only 10 non-keepers exist
    assert m.sum() == 10 and (m.sum(1) == 1).all()


def test_hybrid_mask_hand_computed_ratio_and_order():
    b, c, n = 16, 4, 216
    m = hybrid_mask(b, c, n, position_ratio=0.5, patch_ratio=1 / 3, generator=gen())
    # 1/4 modality + 3/4*108 position + round(1/3 * 3*108) patch = 216 + 324 + 108 = 648 of 864 = 75%
    assert m.flatten(1).sum(1).tolist() == [648] * b
    assert (m.all(2).sum(1) >= 1).all()  # a whole modality is gone
    assert (~m).any(1).sum(1).tolist() == [108] * b  # visible positions are exactly the non-position-masked ones


def test_hybrid_mask_ablations_switch_steps_off():
    only_modality = hybrid_mask(4, 4, 8, True, 0.0, 0.0, gen())
    assert torch.equal(only_modality.all(2).sum(1), torch.ones(4, dtype=torch.long)) and only_modality.sum() == 4 * 8
    assert not hybrid_mask(4, 4, 8, False, 0.0, 0.0, gen()).any()


def test_mask_to_volume_and_apply_mask_touch_exactly_the_masked_patches():
    mask = torch.zeros(1, 2, 8, dtype=torch.bool)
    mask[0, 1, 5] = True  # modality 1, patch (1, 0, 1) in a 2x2x2 grid
    x = torch.randn(1, 2, 8, 8, 8) + 10
    y = apply_mask(x, mask, (4, 4, 4))
    assert (y[0, 1, 4:8, 0:4, 4:8] == 0).all()
    untouched = torch.ones_like(x, dtype=torch.bool)
    untouched[0, 1, 4:8, 0:4, 4:8] = False
    assert torch.equal(y[untouched], x[untouched])
    assert mask_to_volume(mask, (2, 2, 2), (4, 4, 4)).sum() == 64


def test_masks_are_drawn_on_the_requested_device():
    # the meta device stands in for a GPU on this CPU machine: any step drawn or built elsewhere fails or comes
    # back on the CPU
    for use_modality_mask in (True, False):
        m = hybrid_mask(2, 4, 8, use_modality_mask, 0.5, 1 / 3, device="meta")
        assert m.device.type == "meta" and m.dtype == torch.bool and m.shape == (2, 4, 8)
    off = hybrid_mask(2, 4, 8, False, 0.0, 0.0, device="meta")
    assert off.device.type == "meta" and off.dtype == torch.bool
    assert modality_mask(2, 3, 4, device="meta").device.type == "meta"
    assert position_mask(2, 3, 4, 0.5, device="meta").device.type == "meta"
    assert patch_mask(torch.ones(2, 3, 4, dtype=torch.bool, device="meta"), 0.5).device.type == "meta"


def test_the_largest_uniform_draw_still_drops_a_valid_modality(monkeypatch):
    # torch.rand's largest float32 value is 1 - 2^-24; times C it stays below C (floor C - 1, the last modality)
    import common.masking.hybrid as hybrid

    top = 1 - 2**-24
    for c in (2, 3, 4, 5, 7, 8):
        assert (torch.tensor(top) * c).floor().item() == c - 1
        monkeypatch.setattr(hybrid, "_rand", lambda shape, generator, device: torch.full(tuple(shape), top))
        m = modality_mask(2, c, 4)
        assert m[:, c - 1].all() and not m[:, : c - 1].any()  # the last modality, not an error


def test_patch_mask_never_masks_a_samples_only_available_patch():
    available = torch.zeros(3, 2, 4, dtype=torch.bool)
    available[:, 1, 2] = True  # one visible patch per sample: round(0.9 * 1) = 1 would take it
    assert not patch_mask(available, 0.9, gen()).any()
    available[:, 0, 0] = True  # two (at different positions): one of them goes
    assert patch_mask(available, 0.9, gen()).sum((1, 2)).tolist() == [1, 1, 1]


def test_switched_off_steps_draw_nothing():
    g = gen()
    state = g.get_state()
    assert not hybrid_mask(2, 4, 8, False, 0.0, 0.0, g).any()
    assert torch.equal(g.get_state(), state)  # neither the position nor the patch step drew noise
