"""Depth-wise 3D convolution with a faster CPU backward pass (same maths, same weights as ``nn.Conv3d``).

Why our own: PyTorch's CPU backward of a depth-wise ``conv3d`` (``groups == channels``) is several times slower than
its forward (oneDNN runs the forward; the joint input/weight backward falls to a slower kernel). UniFormer's local
blocks spend about a third of a BrainMVP pre-training step there (a 5^3 and a 3^3 depth-wise convolution per block
at 1/2 and 1/4 resolution; measured in docs/BENCHMARKS.md). With stride 1 and "same" padding the input gradient is
itself a depth-wise convolution of the output gradient with the spatially flipped kernel, which runs on the fast
forward kernel; the weight gradient is PyTorch's own (asked for alone). MONAI and PyTorch have nothing equivalent.
On GPUs, under autocast, and for any other configuration the module is a plain ``nn.Conv3d``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DepthwiseConv3d"]


class _DepthwiseSame(torch.autograd.Function):
    """``conv3d(x, w, b, padding=p, groups=C)`` with stride 1, odd kernel, ``p = k // 2``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return F.conv3d(x, weight, bias, padding=padding, groups=weight.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        p, c = ctx.padding, weight.shape[0]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # d/dx of a stride-1 "same" correlation: the correlation of grad with the flipped kernel
            grad_x = F.conv3d(grad, weight.flip(2, 3, 4), padding=p, groups=c)
        if ctx.needs_input_grad[1]:
            grad_w = torch.ops.aten.convolution_backward(
                grad, x, weight, None, (1, 1, 1), (p, p, p), (1, 1, 1), False, (0, 0, 0), c, (False, True, False)
            )[1]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3, 4))
        return grad_x, grad_w, grad_b, None


class DepthwiseConv3d(nn.Conv3d):
    """``nn.Conv3d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)``: the same module
    (parameters, state-dict keys, outputs), with the faster CPU backward described in the module docstring.

    Args:
        channels: input and output channels (one filter per channel).
        kernel_size: odd cubic kernel edge (e.g. 3 or 5).
        bias: learnable per-channel bias.

    Example::

        >>> conv = DepthwiseConv3d(8, 5)
        >>> conv(torch.randn(2, 8, 16, 16, 16)).shape
        torch.Size([2, 8, 16, 16, 16])
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool = True) -> None:
        if kernel_size % 2 != 1:
            raise ValueError(f"DepthwiseConv3d needs an odd kernel size for 'same' padding, got {kernel_size}")
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or torch.is_autocast_enabled("cpu") or not torch.is_grad_enabled():
            return super().forward(x)
        return _DepthwiseSame.apply(x, self.weight, self.bias, self.padding[0])
