"""``DepthwiseConv3d``: ``nn.Conv3d``'s depth-wise convolution with its own CPU backward pass.

The gradients are checked against a plain-numpy computation of a small case and against PyTorch's own
``conv3d`` backward (an independent kernel) on UniFormer-like shapes, contiguous and channels-last.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn as nn

from common.networks.depthwise import DepthwiseConv3d


def _numpy_grads(x: np.ndarray, w: np.ndarray, g: np.ndarray):
    """y[c, p] = b[c] + sum_k w[c, k] x_pad[c, p + k]: gradients of sum(y * g), written out over kernel offsets."""
    k = w.shape[-1]
    pad = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad), (pad, pad)))
    gx = np.zeros_like(xp)
    gw = np.zeros_like(w)
    d, h, wd = x.shape[2:]
    for i, j, m in itertools.product(range(k), repeat=3):
        window = xp[:, :, i : i + d, j : j + h, m : m + wd]
        gw[:, 0, i, j, m] = (window * g).sum((0, 2, 3, 4))
        gx[:, :, i : i + d, j : j + h, m : m + wd] += w[None, :, 0, i, j, m, None, None, None] * g
    return gx[:, :, pad : pad + d, pad : pad + h, pad : pad + wd], gw, g.sum((0, 2, 3, 4))


def test_gradients_match_a_numpy_computation():
    rng = np.random.default_rng(0)
    conv = DepthwiseConv3d(3, 3)
    x = torch.from_numpy(rng.normal(size=(2, 3, 4, 5, 3))).float().requires_grad_()
    g = rng.normal(size=(2, 3, 4, 5, 3)).astype(np.float32)
    conv(x).backward(torch.from_numpy(g))
    gx, gw, gb = _numpy_grads(x.detach().double().numpy(), conv.weight.detach().double().numpy(), g.astype(np.float64))
    np.testing.assert_allclose(x.grad.numpy(), gx, atol=1e-5)
    np.testing.assert_allclose(conv.weight.grad.numpy(), gw, atol=1e-5)
    np.testing.assert_allclose(conv.bias.grad.numpy(), gb, atol=1e-5)


@pytest.mark.parametrize("kernel, channels_last, bias", [(5, False, True), (3, False, False), (5, True, True)])
def test_same_outputs_and_gradients_as_pytorchs_conv3d(kernel, channels_last, bias):
    torch.manual_seed(0)
    ours = DepthwiseConv3d(8, kernel, bias=bias)
    ref = nn.Conv3d(8, 8, kernel, padding=kernel // 2, groups=8, bias=bias)
    ref.load_state_dict(ours.state_dict())  # the same parameters under the same names
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    x = torch.randn(2, 8, 9, 10, 11).to(memory_format=fmt)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(2, 8, 9, 10, 11)
    y1, y2 = ours(x1), ref(x2)
    assert torch.equal(y1, y2)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-5)
    if bias:
        torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-5, atol=1e-5)


def test_an_input_without_gradient_still_trains_the_weight():
    torch.manual_seed(0)
    ours = DepthwiseConv3d(4, 3)
    ref = nn.Conv3d(4, 4, 3, padding=1, groups=4)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(1, 4, 6, 6, 6)  # no requires_grad: the first layer of a network
    ours(x).sum().backward()
    ref(x).sum().backward()
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad)


def test_it_is_a_conv3d_with_same_padding_and_refuses_even_kernels():
    conv = DepthwiseConv3d(6, 5, bias=False)
    assert isinstance(conv, nn.Conv3d) and conv.groups == 6 and conv.padding == (2, 2, 2) and conv.bias is None
    assert list(conv.state_dict()) == ["weight"] and tuple(conv.weight.shape) == (6, 1, 5, 5, 5)
    with pytest.raises(ValueError) as err:
        DepthwiseConv3d(6, 4)
    assert str(err.value) == "DepthwiseConv3d needs an odd kernel size for 'same' padding, got 4"


def test_inference_and_autocast_use_the_plain_convolution(monkeypatch):
    import common.networks.depthwise as dw

    calls = []
    monkeypatch.setattr(dw._DepthwiseSame, "apply", lambda *a: calls.append(1) or torch.zeros(1))
    conv = DepthwiseConv3d(2, 3)
    x = torch.randn(1, 2, 4, 4, 4)
    with torch.no_grad():
        conv(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv(x)
    assert calls == []
    conv(x)  # a training forward on the CPU takes the custom backward
    assert calls == [1]
