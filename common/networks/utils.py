"""Small helpers shared by the bundles' network definitions."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["to_device"]


def to_device(net: nn.Module, device: torch.device | str | None = None, channels_last: bool = False) -> nn.Module:
    """Move ``net`` to ``device`` and, with ``channels_last``, store its 5-D tensors as ``torch.channels_last_3d``.

    Channels-last 3D convolution weights let cuDNN/oneDNN pick their NDHWC kernels (faster with bfloat16/fp16 on
    recent GPUs); every tensor keeps its shape and values, so the maths (outputs, gradients, checkpoints) is
    unchanged. Only 5-D parameters and buffers (3D convolution weights, volume-shaped templates) are touched;
    ``Module.to(memory_format=...)`` would also try 4-D ones, for which ``channels_last_3d`` is an error.
    Activations follow the weights' layout inside convolutions, so inputs need no conversion.

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
    return net
