"""CLAM's patch encoder ``resnet50_trunc``: an ImageNet ResNet-50 cut after ``layer3``, average-pooled to 1024-d.

GiMP (section 2.2) follows CLAM: every 256 x 256 foreground patch at 20x goes through an ImageNet-pretrained
ResNet-50 truncated after its third stage, and global average pooling gives one 1024-d embedding per patch.

Built from MONAI's ``resnet50(spatial_dims=2, conv1_t_size=7, conv1_t_stride=2, bias_downsample=False)``, whose
parameter names and layout are torchvision's (stride in the 3 x 3 convolution, "v1.5"), so a torchvision
ResNet-50 state dict (``resnet50-0676ba61.pth``, ``resnet50-19c8e357.pth``, timm's ``resnet50.tv_in1k``) loads
by name; its ``layer4.*`` and ``fc.*`` entries are not needed and are dropped, every other key must match.
Weights come only from a local file the user gives; nothing is downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import resnet50

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FEATURE_DIM",
    "TruncatedResNet50",
    "load_resnet50_weights",
    "resnet50_trunc",
    "prepare_patches",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # CLAM utils/constants.py, as torchvision's ImageNet models
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURE_DIM = 1024
DROPPED_PREFIXES = ("layer4.", "fc.")  # in a full ResNet-50 state dict, unused by the truncated network


class TruncatedResNet50(nn.Module):
    """ResNet-50 stem + ``layer1``-``layer3`` + global average pooling: ``[B, 3, H, W] -> [B, 1024]``.

    The modules are MONAI's (taken from ``monai.networks.nets.resnet50``), so the state-dict keys are
    torchvision's without ``layer4.*`` / ``fc.*``. The ImageNet normalisation CLAM applies is the first step
    (constant buffers, not in the state dict).

    Args:
        normalize: subtract ``IMAGENET_MEAN`` and divide by ``IMAGENET_STD`` first; inputs are then RGB in [0, 1].
            ``False``: inputs are already normalised.

    Example::

        >>> net = TruncatedResNet50().eval()
        >>> net(torch.rand(2, 3, 256, 256)).shape
        torch.Size([2, 1024])
    """

    def __init__(self, normalize: bool = True) -> None:
        super().__init__()
        full = resnet50(spatial_dims=2, n_input_channels=3, conv1_t_size=7, conv1_t_stride=2, bias_downsample=False)
        self.conv1, self.bn1, self.act, self.maxpool = full.conv1, full.bn1, full.act, full.maxpool
        self.layer1, self.layer2, self.layer3 = full.layer1, full.layer2, full.layer3
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, 3, H, W], RGB in [0, 1] (normalize=True)
        if self.normalize:
            x = (x - self.mean) / self.std
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))  # x: [B, 64, H/4, W/4]
        x = self.layer3(self.layer2(self.layer1(x)))  # x: [B, 1024, H/16, W/16]
        return self.pool(x).flatten(1)  # [B, 1024]


def _state_dict_of(obj: object, path: str) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DataParallel / DDP
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def load_resnet50_weights(
    net: TruncatedResNet50, path: str | os.PathLike, sha256: str | None = None
) -> TruncatedResNet50:
    """Load a torchvision-layout ResNet-50 state dict from a local file into ``net`` (in place).

    Args:
        net: the truncated network.
        path: ``.pth``/``.pt`` file holding a state dict (or ``{"state_dict": ...}``), read with
            ``weights_only=True``; ``layer4.*`` and ``fc.*`` are ignored, every other key of ``net`` must be there
            with its shape, and nothing else may be.
        sha256: when given, the file's hex sha256 must equal it (checked before loading).

    Raises:
        ValueError: wrong hash, unreadable file, or keys/shapes that do not fit; the message names the file.

    Example::

        >>> net = load_resnet50_weights(TruncatedResNet50(), "resnet50-0676ba61.pth")  # doctest: +SKIP
    """
    path = str(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: weights file not found (give a local torchvision ResNet-50 state dict)")
    if sha256:
        from common.engines.checkpoint import sha256_file

        digest = sha256_file(path)
        if digest != sha256.strip().lower():
            raise ValueError(f"{path}: sha256 {digest} differs from the expected {sha256.strip().lower()}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is reported with the file
        raise ValueError(f"{path}: cannot be read as a torch weights file ({type(e).__name__}: {str(e)[:200]})") from e
    state = {k: v for k, v in _state_dict_of(obj, path).items() if not k.startswith(DROPPED_PREFIXES)}
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        details = []
        if missing:
            details.append(f"{len(missing)} keys missing (first: {missing[:3]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys (first: {unexpected[:3]})")
        if shapes:
            k = shapes[0]
            details.append(
                f"{len(shapes)} shape mismatches (first: {k} {tuple(state[k].shape)} vs {tuple(own[k].shape)})"
            )
        raise ValueError(f"{path}: not a torchvision-layout ResNet-50 state dict: {'; '.join(details)}")
    net.load_state_dict(state, strict=True)
    return net


def resnet50_trunc(
    weights: str | os.PathLike, sha256: str | None = None, device: str | torch.device = "cpu"
) -> TruncatedResNet50:
    """The CLAM feature extractor with ``weights`` loaded, in eval mode, on ``device``.

    Example::

        >>> net = resnet50_trunc("resnet50-0676ba61.pth", device="cuda:0")  # doctest: +SKIP
    """
    net = load_resnet50_weights(TruncatedResNet50(normalize=True), weights, sha256)
    return net.to(device).eval()


def prepare_patches(patches: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """``uint8 [B, H, W, 3]`` RGB patches -> ``float [B, 3, size, size]`` in [0, 1], the network's input.

    Resized (bilinear, antialiased: a larger region read at a finer level shrinks without aliasing) when
    ``size`` differs from ``H``; CLAM resizes with PIL, so values differ from CLAM's by interpolation only.

    Example::

        >>> prepare_patches(torch.zeros(2, 512, 512, 3, dtype=torch.uint8), 256).shape
        torch.Size([2, 3, 256, 256])
    """
    x = patches.permute(0, 3, 1, 2).float().div_(255.0)  # x: [B, 3, H, W]
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x
