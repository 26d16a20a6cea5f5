"""``channels_last`` (``common.networks.utils.to_device``) changes the layout of the weights, never the maths."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from monai.networks.nets import UNETR

from common.networks.brainmvp import build_backbone
from common.networks.utils import to_device

REPO = Path(__file__).resolve().parents[1]
UNIFORMER_COLLECTION = "$@backbone == 'uniformer' and @backbone_layout == 'collection'"
CHANNELS_LAST_DEFAULTS = {"brainmvp": UNIFORMER_COLLECTION, "brainmvp_cls": UNIFORMER_COLLECTION}
TRAINING_BUNDLES = ["m2mae", "m2mae_seg", "m2mae_cls", "brainmvp", "brainmvp_seg", "brainmvp_cls"]


def _unetr() -> torch.nn.Module:
    return UNETR(4, 3, img_size=32, hidden_size=48, mlp_dim=96, num_heads=4, feature_size=8)


NETWORKS = {
    "unetr": (_unetr, 4, 3),
    "brainmvp_uniformer_tiny": (lambda: build_backbone("uniformer", "tiny", in_channels=1, out_channels=2), 1, 2),
    "brainmvp_unet3d_tiny": (
        lambda: build_backbone("unet3d", "tiny", in_channels=1, out_channels=2, skip_connections=True),
        1,
        2,
    ),
}


# float64 shows the maths is the same (differences at round-off level); float32, the precision the bundles train
# in, only to looser bounds: its round-off, amplified through batch/instance norms of a batch of 2, reaches 1e-3
TOLERANCES = {torch.float64: (1e-9, 1e-8), torch.float32: (1e-4, 1e-2)}  # (outputs, gradients), x each's max


@pytest.mark.parametrize("dtype", TOLERANCES)
@pytest.mark.parametrize("name", NETWORKS)
def test_channels_last_gives_the_same_outputs_and_gradients(name, dtype):
    factory, in_channels, out_channels = NETWORKS[name]
    torch.manual_seed(0)
    dense = factory().to(dtype).train()
    fast = to_device(copy.deepcopy(dense), "cpu", channels_last=True)
    convs = [p for p in fast.parameters() if p.dim() == 5]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in convs)
    assert all(p.is_contiguous() for p in dense.parameters())
    x = torch.randn(2, in_channels, 32, 32, 32, dtype=dtype)
    target = torch.randn(2, out_channels, 32, 32, 32, dtype=dtype)
    outs = []
    for net in (dense, fast):
        out = net(x)
        ((out - target) ** 2).mean().backward()
        outs.append(out.detach())
    tol_out, tol_grad = TOLERANCES[dtype]
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=tol_out * float(outs[0].abs().max()))
    checked = 0
    for (name_a, a), (name_b, b) in zip(dense.named_parameters(), fast.named_parameters()):
        assert name_a == name_b
        if a.dim() == 5 and a.grad is not None:
            assert b.grad is not None, name_b
            torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=tol_grad * float(a.grad.abs().max()))
            checked += 1
    assert checked == len(convs)


def test_checkpoints_load_across_layouts():
    """A state dict saved channels-last loads into a contiguous network (and back) with the same values."""
    torch.manual_seed(0)
    fast = to_device(_unetr(), "cpu", channels_last=True)
    dense = _unetr()
    dense.load_state_dict(fast.state_dict())
    assert all(p.is_contiguous() for p in dense.parameters())
    for a, b in zip(dense.state_dict().values(), fast.state_dict().values()):
        assert torch.equal(a, b)


def test_every_3d_convolution_sees_channels_last_inputs():
    """The one-channel image and the norms' contiguous outputs are handed to each convolution channels-last (once:
    calling ``to_device`` again adds no second hook), and switched off the network is left as it was."""
    net = to_device(build_backbone("uniformer", "tiny", skip_connections=False), channels_last=True)
    net = to_device(net, channels_last=True)
    convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    assert all(len(m._forward_pre_hooks) == 1 for m in convs)
    seen = []
    for m in convs:
        m.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    net(torch.randn(1, 1, 32, 32, 32))
    assert len(seen) == len(convs) and all(x.is_contiguous(memory_format=torch.channels_last_3d) for x in seen)
    # the multi-channel ones are laid out channels-last, not merely ambiguous
    assert any(not x.is_contiguous() for x in seen if x.shape[1] > 1)
    plain = to_device(build_backbone("uniformer", "tiny", skip_connections=False))
    assert all(not m._forward_pre_hooks for m in plain.modules())


def test_to_device_leaves_other_ranks_alone():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Linear(3, 3))
    assert to_device(net, "cpu", channels_last=True) is net  # Module.to(memory_format=channels_last_3d) would raise
    assert all(p.is_contiguous() for p in net.parameters())


@pytest.mark.parametrize("bundle", TRAINING_BUNDLES)
def test_training_configs_expose_the_switch_and_bf16(bundle):
    configs = REPO / "bundles" / bundle / "configs"
    train = json.loads((configs / "train.json").read_text())
    # off by default, except where it measured faster on CPU (BrainMVP's UniFormer: depth-wise convolutions)
    default = CHANNELS_LAST_DEFAULTS.get(bundle, False)
    assert train["channels_last"] == default and train["amp"] is False
    assert train["network"]["_target_"] == "common.networks.utils.to_device"
    assert train["network"]["channels_last"] == "@channels_last"
    multi = json.loads((configs / "multi_gpu_train.json").read_text())
    assert multi["network"]["module"]["channels_last"] == "@channels_last"
    engines = [train["train"]["trainer"]] + ([train["validate"]["evaluator"]] if "validate" in train else [])
    if bundle not in ("m2mae", "brainmvp"):  # pre-training uses our own bf16 trainer
        for engine in engines:
            assert engine["amp_kwargs"] == {"dtype": "$torch.bfloat16"}


@pytest.mark.parametrize("bundle", ["m2mae_seg", "brainmvp_cls"])
def test_parsed_network_follows_the_switch(bundle):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "train.json"))
    small = (
        {"roi_size": [32, 32, 32], "hidden_size": 48, "mlp_dim": 96, "num_heads": 4}
        if bundle.startswith("m2mae")
        else {"backbone_size": "tiny", "roi_size": [32, 32, 32]}
    )
    parser.update({**small, "channels_last": True, "device": "$torch.device('cpu')"})
    net = parser.get_parsed_content("network")
    assert all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in net.parameters() if p.dim() == 5)
