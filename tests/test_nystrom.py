"""Nystrom attention (GiMP Eq. 1-2) against hand-computed and numpy cases, the package, and per-bag independence."""

import inspect
import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from common.networks.nystrom import (
    NystromAggregator,
    NystromAttention,
    moore_penrose_pinv,
    segment_landmarks,
)


def _identity_attention(dim: int, num_landmarks: int, iters: int = 6) -> NystromAttention:
    """One head of width ``dim`` with Q = K = V = x and an identity output projection, no residual conv."""
    attn = NystromAttention(dim, dim_head=dim, heads=1, num_landmarks=num_landmarks, pinv_iterations=iters,
                            residual=False)  # fmt: skip
    with torch.no_grad():
        attn.to_qkv.weight.copy_(torch.cat([torch.eye(dim)] * 3))
        attn.to_out[0].weight.copy_(torch.eye(dim))
        attn.to_out[0].bias.zero_()
    return attn.eval()


def _softmax(a: np.ndarray) -> np.ndarray:
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_one_landmark_by_hand():
    # tokens 1 and 3 (width 1, scale 1/sqrt(1)); the single landmark is their mean 2, so softmax(Q K~^T) = [1],
    # pinv([[1]]) = 1 and every output is softmax(2 * [1, 3]) . [1, 3] = (e^2 + 3 e^6) / (e^2 + e^6)
    attn = _identity_attention(1, num_landmarks=1)
    out = attn(torch.tensor([[[1.0], [3.0]]]))
    expected = (math.exp(2) + 3 * math.exp(6)) / (math.exp(2) + math.exp(6))
    assert out.flatten().tolist() == pytest.approx([expected, expected], rel=1e-6)


def test_two_landmarks_equal_numpy_eq2():
    # Eq. 2 in plain numpy with an exact inverse: 4 tokens of width 2, landmarks = means of tokens (0, 1), (2, 3)
    x = np.array([[1.0, 0.0], [0.5, 1.0], [-1.0, 0.5], [0.0, -2.0]])
    lm = np.stack([x[:2].mean(0), x[2:].mean(0)])
    s = 1 / math.sqrt(2)
    expected = _softmax(x @ lm.T * s) @ np.linalg.inv(_softmax(lm @ lm.T * s)) @ _softmax(lm @ x.T * s) @ x
    attn = _identity_attention(2, num_landmarks=2, iters=40).double()
    got = attn(torch.from_numpy(x)[None])[0].detach().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-10)


def test_landmarks_equal_tokens_give_exact_softmax_attention():
    torch.manual_seed(0)
    n, dim = 12, 8
    attn = NystromAttention(dim, dim_head=4, heads=2, num_landmarks=n, pinv_iterations=60, residual=False).double()
    attn.eval()
    x = torch.randn(1, n, dim, dtype=torch.float64) * 2
    q, k, v = (t.unflatten(-1, (2, 4)).transpose(1, 2) for t in attn.to_qkv(x).chunk(3, -1))
    exact = torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1) @ v  # plain attention, scale 1/sqrt(4)
    expected = attn.to_out(exact.transpose(1, 2).flatten(2))
    assert torch.allclose(attn(x), expected, atol=1e-8)
    # a bag shorter than num_landmarks uses every token as a landmark: exact as well
    attn.num_landmarks = 64
    assert torch.allclose(attn(x), expected, atol=1e-8)


def test_segment_landmarks_by_hand_with_padding_and_short_bags():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 6.0, 100.0, 100.0]).reshape(1, 1, 7, 1).repeat(2, 1, 1, 1)
    lm, valid = segment_landmarks(x, torch.tensor([5, 1]), num_landmarks=2)
    # bag 0: 5 tokens, segments floor(j * 2 / 5) = 0, 0, 0, 1, 1 -> means 2 and 5; the padding (100) is ignored
    # bag 1: 1 token -> one landmark (1), the second one empty
    assert lm[0].flatten().tolist() == [2.0, 5.0]
    assert lm[1].flatten().tolist() == [1.0, 0.0]
    assert valid.tolist() == [[True, True], [True, False]]


def test_pinv_converges_and_starts_per_bag():
    a = torch.tensor([[[[0.7, 0.3], [0.2, 0.8]]]], dtype=torch.float64)
    b = torch.tensor([[[[0.9, 0.05, 0.05], [0.1, 0.6, 0.3], [0.0, 0.1, 0.9]]]], dtype=torch.float64)
    assert torch.allclose(moore_penrose_pinv(a, iters=30)[0, 0], torch.linalg.inv(a[0, 0]), atol=1e-10)
    # Z_0 by hand for a: A^T / (max row sum 1.0 * max column sum 1.1)
    assert torch.allclose(moore_penrose_pinv(a, iters=0), a.transpose(-1, -2) / 1.1)
    # a batch of two bags: each one's iterate is what it gets alone (the package would share one Z_0); after one
    # step, as 6 steps converge to the inverse from either start on a matrix this well conditioned
    b2 = torch.cat([b, 5 * b])  # bag 1 has 5x the scale
    for iters in (0, 1):
        together = moore_penrose_pinv(b2, iters=iters)
        assert torch.allclose(together[0], moore_penrose_pinv(b, iters)[0], atol=1e-12)
        assert torch.allclose(together[1], moore_penrose_pinv(5 * b, iters)[0], atol=1e-12)
    # and the start is shared over one bag's heads, as the package does for a single bag
    heads = torch.cat([b, 5 * b], dim=1)  # one bag, two heads
    # rows of b sum to 1, its columns to 1.0, 0.75, 1.25: over both heads max row sum 5, max column sum 6.25
    assert torch.allclose(moore_penrose_pinv(heads, 0), heads.transpose(-1, -2) / (5.0 * 6.25))


def test_equals_the_package_on_single_bags():
    pkg = pytest.importorskip("nystrom_attention", reason="the PyPI nystrom-attention package is a test-only reference")
    torch.manual_seed(0)
    ours = NystromAttention(32, dim_head=8, heads=4, num_landmarks=16).eval()
    theirs = pkg.NystromAttention(32, dim_head=8, heads=4, num_landmarks=16).eval()
    assert set(theirs.state_dict()) == set(ours.state_dict())  # same parameter names: weights load both ways
    theirs.load_state_dict(ours.state_dict())
    for n in (16, 64, 160):  # multiples of num_landmarks: no padding in the package
        x = torch.randn(1, n, 32)
        assert torch.allclose(ours(x), theirs(x), atol=1e-5), n


def test_bag_output_independent_of_its_batch():
    torch.manual_seed(0)
    attn = NystromAttention(16, dim_head=4, heads=4, num_landmarks=8).eval()
    lengths = [90, 33, 5]  # longer than, not a multiple of, and shorter than num_landmarks
    x = torch.randn(3, 90, 16)
    mask = torch.arange(90)[None] < torch.tensor(lengths)[:, None]
    batched = attn(x, mask)
    for i, n in enumerate(lengths):
        alone = attn(x[i : i + 1, :n])
        assert torch.allclose(batched[i, :n], alone[0], atol=1e-5), n
        assert torch.all(batched[i, n:] == 0)
    # what sits in the padding does not matter either
    x2 = x.clone()
    x2[~mask] = 1e3
    assert torch.allclose(attn(x2, mask), batched, atol=1e-5)


def test_bad_masks_are_named():
    attn = NystromAttention(8, dim_head=4, heads=2, num_landmarks=4)
    x = torch.randn(2, 6, 8)
    with pytest.raises(
        ValueError, match=r"^mask must mark each bag's tokens as a prefix \(right padding\); found a gap$"
    ):
        attn(x, torch.tensor([[True, False, True, True, True, True], [True] * 6]))
    with pytest.raises(ValueError, match="empty bag"):
        attn(x, torch.tensor([[False] * 6, [True] * 6]))


class _Shapes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def test_no_n_by_n_matrix_in_forward_or_backward():
    n = 600
    agg = NystromAggregator(in_features=8, dim=16, heads=2, num_landmarks=8)
    x = torch.randn(1, n, 8)
    with _Shapes() as rec:
        agg(x).sum().backward()
    big = [s for s in rec.shapes if sum(d >= n for d in s) >= 2]
    assert not big, big[:3]
    assert any(n + 1 in s for s in rec.shapes)  # the recorder did see the bag


def test_aggregator_keys_are_transmil_and_padding_is_exact():
    agg = NystromAggregator(in_features=16, dim=32, heads=4, num_landmarks=8).eval()
    keys = set(agg.state_dict())
    for k in ("_fc1.0.weight", "cls_token", "layer1.norm.weight", "layer1.attn.to_qkv.weight",
              "layer1.attn.to_out.0.bias", "layer2.attn.res_conv.weight", "norm.bias"):  # fmt: skip
        assert k in keys, k
    # TransMIL's PPEG and classifier are the only keys of a TransMIL checkpoint left over
    transmil = {**agg.state_dict(), "pos_layer.proj.weight": torch.zeros(1), "_fc2.weight": torch.zeros(1)}
    result = agg.load_state_dict(transmil, strict=False)
    assert sorted(result.unexpected_keys) == ["_fc2.weight", "pos_layer.proj.weight"] and not result.missing_keys
    torch.manual_seed(1)
    x = torch.randn(2, 40, 16)
    out = agg(x, torch.arange(40)[None] < torch.tensor([[40], [25]]))
    assert out.shape == (2, 41, 32)
    assert torch.allclose(out[1, 0], agg(x[1:, :25])[0, 0], atol=1e-5)  # CLS_img of the padded bag
    with pytest.raises(ValueError, match="1024|16"):
        agg(torch.randn(1, 5, 12))


def test_returned_matrices_compose_to_the_output():
    torch.manual_seed(0)
    attn = NystromAttention(16, dim_head=4, heads=4, num_landmarks=8, residual=False).eval()
    x = torch.randn(2, 30, 16)
    mask = torch.arange(30)[None] < torch.tensor([[30], [19]])
    out, (attn1, kernel_inv, attn3) = attn(x, mask, return_attn_matrices=True)
    assert attn1.shape == (2, 4, 30, 8) and kernel_inv.shape == (2, 4, 8, 8) and attn3.shape == (2, 4, 8, 30)
    v = attn.to_qkv(x).chunk(3, -1)[2].unflatten(-1, (4, 4)).transpose(1, 2) * mask[:, None, :, None]
    composed = attn.to_out((attn1 @ kernel_inv @ attn3 @ v).transpose(1, 2).flatten(2))
    assert torch.allclose(out[0], composed[0], atol=1e-5) and torch.allclose(out[1, :19], composed[1, :19], atol=1e-5)
    assert torch.all(attn3[1, :, :, 19:] == 0)  # padded keys get no weight


def test_autocast_keeps_the_pseudo_inverse_in_float32():
    torch.manual_seed(0)
    agg = NystromAggregator(in_features=8, dim=16, heads=2, num_landmarks=8, dropout=0.0).eval()
    x = torch.randn(1, 200, 8)
    seen, original = [], agg.layer1.attn.landmark_kernel_pinv

    def spy(*args):
        seen.append(original(*args))
        return seen[-1]

    agg.layer1.attn.landmark_kernel_pinv = spy
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = agg(x)
    assert seen[0].dtype == torch.float32 and torch.isfinite(low).all()
    assert torch.allclose(low.float(), agg(x), atol=0.1)


def test_translayer_and_aggregator_follow_their_definition():
    torch.manual_seed(0)
    agg = NystromAggregator(in_features=8, dim=16, heads=2, num_landmarks=4, dropout=0.0).eval()
    x = torch.randn(2, 30, 8)
    h = torch.relu(agg._fc1[0](x))  # input projection: Linear + ReLU
    h = torch.cat([agg.cls_token.expand(2, -1, -1), h], 1)  # CLS_img first
    for layer in (agg.layer1, agg.layer2):
        h = h + layer.attn(layer.norm(h))  # pre-norm attention + residual
    assert torch.allclose(agg(x), agg.norm(h), atol=1e-6)
    assert agg.cls_token.shape == (1, 1, 16)  # TransMIL's shape, so its cls_token loads


def test_constructor_arguments_reach_every_layer_and_defaults_are_transmil():
    agg = NystromAggregator(in_features=8, dim=24, num_layers=3, heads=4, dim_head=5, num_landmarks=7,
                            pinv_iterations=3, residual=True, residual_conv_kernel=9, dropout=0.2)  # fmt: skip
    assert hasattr(agg, "layer3") and not hasattr(agg, "layer4") and agg._fc1[0].in_features == 8
    for layer in (agg.layer1, agg.layer2, agg.layer3):
        a = layer.attn
        assert (a.heads, a.num_landmarks, a.pinv_iterations, a.to_qkv.out_features) == (4, 7, 3, 3 * 4 * 5)
        assert a.res_conv.kernel_size == (9, 1) and a.to_out[1].p == 0.2 and a.scale == 5**-0.5
    assert not hasattr(NystromAggregator(8, 16, heads=2, residual=False).layer1.attn, "res_conv")
    default = NystromAggregator()
    a = default.layer1.attn
    assert (default.in_features, default.dim, default.num_layers) == (1024, 512, 2)
    assert (a.heads, a.to_qkv.out_features, a.num_landmarks, a.pinv_iterations) == (8, 3 * 512, 256, 6)
    assert a.res_conv.kernel_size == (33, 1) and a.to_out[1].p == 0.1
    plain = NystromAttention(64)  # the package's defaults
    assert (plain.heads, plain.to_qkv.out_features, plain.num_landmarks, plain.pinv_iterations) == (8, 1536, 256, 6)
    assert plain.to_out[1].p == 0.0 and plain.to_qkv.bias is None and plain.res_conv.bias is None
    assert inspect.signature(moore_penrose_pinv).parameters["iters"].default == 6
    slow = torch.tensor([[[[1.0, 0.0], [0.0, 1e-4]]]], dtype=torch.float64)  # far from converged after 6 steps
    assert torch.equal(moore_penrose_pinv(slow), moore_penrose_pinv(slow, 6))
    assert not torch.allclose(moore_penrose_pinv(slow), moore_penrose_pinv(slow, 7))
    assert isinstance(a.num_landmarks, int) and isinstance(
        NystromAggregator(8, 10, heads=2).layer1.attn.num_landmarks, int
    )
    NystromAttention(8, pinv_iterations=0)  # zero iterations is allowed (Z_0 alone)
    for bad in (dict(num_landmarks=0), dict(pinv_iterations=-1)):
        with pytest.raises(ValueError, match="num_landmarks >= 1 and pinv_iterations >= 0"):
            NystromAttention(8, **bad)


def test_mask_errors_name_the_bag():
    attn = NystromAttention(8, dim_head=4, heads=2, num_landmarks=4)
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match=r"empty bag\(s\) at batch index \[0\]"):
        attn(x, torch.tensor([[False, False, False], [True, False, False]]))
    with pytest.raises(ValueError, match=r"mask must be \[B, N\] = \[2, 3\], got \[2, 4\]"):
        attn(x, torch.ones(2, 4, dtype=torch.bool))
