"""Small helpers shared by the bundles' network definitions."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["to_device"]


def to_device(net: nn.Module, device: torch.device | str | None = None, channels_last: bool = False) -> nn.Module:
    """Move ``net`` to ``device`` and, with ``channels_last``, store its 5-D tensors as ``torch.channels_last_3d``.

    Channels-last 3D convolution weights let cuDNN/oneDNN pick their NDHWC kernels (faster with bfloat16/fp16 on
    recent GPUs, and 4x faster for UniFormer's depth-wise 5^3 convolutions on CPU); every tensor keeps its shape
    and values, so the maths (outputs, gradients, checkpoints) is unchanged. Only 5-D parameters and buffers (3D
    convolution weights, volume-shaped templates) are touched; ``Module.to(memory_format=...)`` would also try 4-D
    ones, for which ``channels_last_3d`` is an error.

    Every 3D convolution also gets a forward pre-hook that hands it its input channels-last: a one-channel input
    image is laid out the same either way, so the first convolution returns a contiguous output, and on CPU
    normalisations return contiguous tensors too; without the hook most convolutions would still see contiguous
    inputs and run their contiguous kernels.

    Args:
        net: the network (changed in place, as ``Module.to``).
        device: target device (``None``: stay where it is).
        channels_last: convert 5-D tensors to ``torch.channels_last_3d`` (``False``: leave the layout alone).

    Returns:
        ``net`` itself, so configs can write ``"network": {"_target_": "common.networks.utils.to_device", ...}``.

    Example::

        >>> net = to_device(torch.nn.Conv3d(1, 2, 3), "cpu", channels_last=True)
        >>> net.weight.is_contiguous(memory_format=torch.channels_last_3d)
        True
    """
    net = net.to(device)
    if channels_last:
        net._apply(lambda t: t.contiguous(memory_format=torch.channels_last_3d) if t.dim() == 5 else t)
        for module in net.modules():
            if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)) and not getattr(module, _HOOKED, False):
                module.register_forward_pre_hook(_channels_last_input)
                setattr(module, _HOOKED, True)
    return net


_HOOKED = "_channels_last_input_hook"


def _channels_last_input(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the 5-D input of a 3D convolution in ``torch.channels_last_3d`` (a no-op when it is)."""
    x, *rest = args
    if isinstance(x, torch.Tensor) and x.dim() == 5:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return (x, *rest)
