"""The 2D ViT transfer module: encoder keys shared with UNETR, de-standardised outputs, the target loss and
layer-wise lr decay, each against hand-computed values."""

import math

import pytest
import torch

from common.engines.checkpoint import load_encoder
from common.networks.transfer2d import (
    TargetLoss,
    TransferViT2D,
    binary_probabilities,
    layer_decay_param_groups,
    layer_id,
    transfer_unetr_2d,
)
from common.networks.vit import unetr_vit
from common.networks.vit_classifier import ViTClassifier

# tiny encoder; UNETR always has 12 blocks, so the shared-keys test uses 12 thin ones
TINY = dict(img_size=32, hidden_size=16, mlp_dim=32, num_heads=2)
CRP = {"age": "continuous", "sbp": "continuous", "sex": "binary"}
STATS = {"age": {"mean": 60.0, "std": 8.0}, "sbp": {"mean": 130.0, "std": 20.0}}


def _constant_head(net: TransferViT2D, z: list[float]) -> TransferViT2D:
    """The head outputs ``z`` whatever the image: zero weight, bias ``z``."""
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.copy_(torch.tensor(z))
    return net


def test_mrm_vit_keys_load_with_none_missing_into_classifier_and_unetr(tmp_path):
    torch.manual_seed(0)
    encoder = unetr_vit(3, 32, 16, 16, 32, 12, 2, spatial_dims=2)
    state = {f"vit.{k}": v for k, v in encoder.state_dict().items()}
    path = tmp_path / "mrm.pt"
    torch.save({"network": state, "epoch": 1}, path)
    for net in (TransferViT2D(5, num_layers=12, **TINY), transfer_unetr_2d(2, feature_size=8, **TINY)):
        vit_keys = {k for k in net.state_dict() if k.startswith("vit.")}
        assert vit_keys == set(state)  # none missing, none extra
        assert load_encoder(net, str(path)) == len(state)
        for k, v in net.state_dict().items():
            if k.startswith("vit."):
                assert torch.equal(v, state[k]), k
        x = torch.randn(1, 3, 32, 32)
        assert torch.allclose(net.vit(x)[0], encoder(x)[0])


def test_unetr_segments_at_input_size_one_channel_per_structure():
    net = transfer_unetr_2d(2, feature_size=8, **TINY)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 2, 32, 32)


def test_continuous_targets_come_out_de_standardised_and_binary_as_logits():
    net = _constant_head(TransferViT2D(targets=CRP, target_stats=STATS, num_layers=1, **TINY), [0.5, -1.0, 2.0])
    out = net(torch.randn(2, 3, 32, 32))
    # age 60 + 8 * 0.5 = 64 years; sbp 130 + 20 * -1 = 110 mmHg; sex: the logit 2 itself
    assert torch.allclose(out, torch.tensor([[64.0, 110.0, 2.0]] * 2))


def test_missing_target_statistics_are_warned_about(caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        net = TransferViT2D(targets=CRP, num_layers=1, **TINY)
    assert "no target_stats for the continuous targets ['age', 'sbp']" in caplog.text
    assert "fit_target_stats" in caplog.text and torch.equal(net.target_std, torch.ones(3))


def test_target_statistics_travel_in_the_checkpoint(tmp_path):
    trained = TransferViT2D(targets=CRP, target_stats=STATS, num_layers=1, **TINY)
    torch.save(trained.state_dict(), tmp_path / "model.pt")
    fresh = TransferViT2D(targets=CRP, num_layers=1, **TINY)  # evaluate: stats come from the checkpoint
    assert torch.equal(fresh.target_std, torch.ones(3))
    fresh.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    assert torch.equal(fresh.target_mean, torch.tensor([60.0, 130.0, 0.0]))
    assert torch.equal(fresh.target_std, torch.tensor([8.0, 20.0, 1.0]))


def test_multiclass_head_is_the_plain_classifier():
    torch.manual_seed(1)
    net = TransferViT2D(5, num_layers=2, **TINY)
    ref = ViTClassifier(3, num_classes=5, num_layers=2, spatial_dims=2, patch_size=16, **TINY)
    ref.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("target_")})
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(net(x), ref(x))
    assert net.target_names == [f"class_{i}" for i in range(5)]


def test_bad_targets_fail_clearly():
    with pytest.raises(ValueError, match="unknown target kinds"):
        TransferViT2D(targets={"age": "ordinal"}, **TINY)
    with pytest.raises(KeyError, match=r"\['sbp'\]"):
        TransferViT2D(targets=CRP, target_stats={"age": STATS["age"]}, **TINY)
    with pytest.raises(ValueError, match="std must be positive"):
        TransferViT2D(targets={"age": "continuous"}, target_stats={"age": {"mean": 1.0, "std": 0.0}}, **TINY)
    with pytest.raises(ValueError, match="num_outputs"):
        TransferViT2D(**TINY)


def test_linear_probe_trains_only_norm_and_head():
    net = TransferViT2D(3, linear_probe=True, num_layers=2, **TINY)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"norm.weight", "norm.bias", "head.weight", "head.bias"}
    groups = layer_decay_param_groups(net, lr=1.0, layer_decay=0.5)
    assert {g["layer_id"] for g in groups} == {3} and sum(len(g["params"]) for g in groups) == 4
    before = {k: v.clone() for k, v in net.vit.state_dict().items()}
    opt = torch.optim.SGD(groups, lr=1.0)
    net.train()
    assert not net.vit.training  # the frozen encoder stays in eval mode
    torch.nn.functional.cross_entropy(net(torch.randn(2, 3, 32, 32)), torch.tensor([0, 2])).backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in net.vit.state_dict().items())


# ---- TargetLoss --------------------------------------------------------------------------------------------------


def test_target_loss_by_hand_with_a_missing_value():
    loss = TargetLoss(CRP, STATS)
    pred = torch.tensor([[68.0, 150.0, 0.0], [56.0, 130.0, 2.0]])
    target = torch.tensor([[60.0, 110.0, 1.0], [60.0, float("nan"), 0.0]])
    # age: ((68-60)/8)^2 = 1, ((56-60)/8)^2 = 0.25 -> 0.625; sbp: only case 1 known: ((150-110)/20)^2 = 4
    # sex: -log(sigmoid(0)) = log 2, -log(1 - sigmoid(2)) = log(1 + e^2) -> mean
    sex = (math.log(2) + math.log(1 + math.exp(2))) / 2
    assert loss(pred, target).item() == pytest.approx((0.625 + 4 + sex) / 3, rel=1e-6)


def test_target_loss_weights_are_honoured_and_an_all_missing_target_drops_out():
    pred = torch.tensor([[68.0, 150.0, 0.0]])
    target = torch.tensor([[60.0, 110.0, 1.0]])
    weighted = TargetLoss(CRP, STATS, weights={"age": 2.0, "sbp": 0.5, "sex": 1.0})
    assert weighted(pred, target).item() == pytest.approx((2 * 1 + 0.5 * 4 + math.log(2)) / 3.5, rel=1e-6)
    missing_sbp = torch.tensor([[60.0, float("nan"), 1.0]])
    assert TargetLoss(CRP, STATS)(pred, missing_sbp).item() == pytest.approx((1 + math.log(2)) / 2, rel=1e-6)
    with pytest.raises(KeyError, match="bmi"):
        TargetLoss(CRP, STATS, weights={"bmi": 1.0})


def test_target_loss_of_binary_labels_is_bce_with_logits():
    torch.manual_seed(0)
    labels = {f"d{i}": "binary" for i in range(4)}
    pred, target = torch.randn(6, 4), torch.randint(0, 2, (6, 4)).float()
    expected = torch.nn.BCEWithLogitsLoss()(pred, target)
    assert TargetLoss(labels)(pred, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_target_loss_gradient_is_the_standardised_regression():
    """d/dz of (z - (y - m)/s)^2 is 2 (z - (y - m)/s): training on own units through TargetLoss is z-score training."""
    loss = TargetLoss({"age": "continuous"}, {"age": {"mean": 60.0, "std": 8.0}})
    z = torch.tensor([[0.5]], requires_grad=True)
    pred = 60.0 + 8.0 * z
    loss(pred, torch.tensor([[76.0]])).backward()
    assert z.grad.item() == pytest.approx(2 * (0.5 - 2.0))


# ---- layer-wise lr decay ---------------------------------------------------------------------------------------


def test_layer_ids_of_vit_and_unetr_names():
    assert layer_id("vit.patch_embedding.position_embeddings", 12) == 0
    assert layer_id("module.vit.patch_embedding.patch_embeddings.weight", 12) == 0
    assert layer_id("vit.blocks.0.attn.qkv.weight", 12) == 1
    assert layer_id("vit.blocks.11.mlp.linear1.weight", 12) == 12
    for top in ("vit.norm.weight", "head.weight", "norm.bias", "decoder2.conv.weight", "out.conv.conv.weight"):
        assert layer_id(top, 12) == 13


def test_layer_decay_learning_rates_and_weight_decay_by_hand():
    net = TransferViT2D(5, num_layers=2, **TINY)
    groups = layer_decay_param_groups(net, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    params = dict(net.named_parameters())
    assert len(lr_of) == len(params)  # every parameter in exactly one group
    # L = 2 blocks + 1 = 3: embedding 0.5^3, block 0 0.5^2, block 1 0.5^1, final norm / probe norm / head 0.5^0
    expected_lr = {
        "vit.patch_embedding.position_embeddings": 1.25e-4,
        "vit.patch_embedding.patch_embeddings.weight": 1.25e-4,
        "vit.blocks.0.attn.qkv.weight": 2.5e-4,
        "vit.blocks.1.mlp.linear2.bias": 5e-4,
        "vit.norm.weight": 1e-3,
        "norm.bias": 1e-3,
        "head.weight": 1e-3,
    }
    for name, lr in expected_lr.items():
        assert lr_of[id(params[name])] == pytest.approx(lr), name
    no_decay = [
        "vit.patch_embedding.position_embeddings",
        "vit.blocks.1.mlp.linear2.bias",
        "vit.norm.weight",
        "head.bias",
    ]
    for name in no_decay:
        assert wd_of[id(params[name])] == 0.0, name
    for name in ["vit.patch_embedding.patch_embeddings.weight", "vit.blocks.0.attn.qkv.weight", "head.weight"]:
        assert wd_of[id(params[name])] == 0.05, name


def test_layer_decay_one_is_a_single_learning_rate_and_unetr_decoder_is_top():
    net = transfer_unetr_2d(2, feature_size=8, **TINY)
    flat = layer_decay_param_groups(net, lr=0.1, layer_decay=1.0)
    assert {g["lr"] for g in flat} == {0.1}
    groups = layer_decay_param_groups(net, lr=1.0, layer_decay=0.9)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    params = dict(net.named_parameters())
    assert lr_of[id(params["out.conv.conv.weight"])] == pytest.approx(1.0)
    assert lr_of[id(params["vit.blocks.11.attn.qkv.weight"])] == pytest.approx(0.9)
    assert lr_of[id(params["vit.patch_embedding.position_embeddings"])] == pytest.approx(0.9**13)


def test_scheduler_keeps_the_layer_ratios():
    from monai.optimizers import WarmupCosineSchedule

    net = TransferViT2D(5, num_layers=2, **TINY)
    opt = torch.optim.AdamW(layer_decay_param_groups(net, lr=1e-3, layer_decay=0.5), lr=1e-3)
    sched = WarmupCosineSchedule(opt, warmup_steps=0, t_total=10)
    for _ in range(3):
        opt.step()
        sched.step()
    ratios = {round(g["lr"] / opt.param_groups[-1]["lr"], 6) for g in opt.param_groups}
    assert ratios == {0.125, 0.25, 0.5, 1.0}


def test_binary_probabilities_leave_continuous_channels_in_their_units():
    to_prob = binary_probabilities(CRP)
    out = to_prob(torch.tensor([[64.0, 110.0, 0.0], [50.0, 120.0, math.log(3)]]))
    assert torch.allclose(out, torch.tensor([[64.0, 110.0, 0.5], [50.0, 120.0, 0.75]]))
    assert torch.allclose(to_prob(torch.tensor([64.0, 110.0, 0.0])), torch.tensor([64.0, 110.0, 0.5]))
    with pytest.raises(ValueError, match="3 target channels"):
        to_prob(torch.zeros(2, 4))


# ---- defaults and argument wiring -------------------------------------------------------------------------------


def test_defaults_are_the_papers_vit_b16_at_224():
    import inspect

    for factory in (TransferViT2D, transfer_unetr_2d):
        p = inspect.signature(factory).parameters
        assert (p["img_size"].default, p["hidden_size"].default, p["mlp_dim"].default, p["num_heads"].default) == (
            224, 768, 3072, 12
        )  # fmt: skip
        assert p["in_channels"].default == 3 and p["qkv_bias"].default is False
    p = inspect.signature(TransferViT2D).parameters
    assert p["num_layers"].default == 12 and p["patch_size"].default == 16
    assert inspect.signature(transfer_unetr_2d).parameters["norm_name"].default == "instance"
    assert inspect.signature(transfer_unetr_2d).parameters["feature_size"].default == 16
    p = inspect.signature(layer_decay_param_groups).parameters
    assert (p["weight_decay"].default, p["layer_decay"].default) == (0.05, 0.75)  # MAE / BEiT fine-tuning


@pytest.mark.parametrize("factory", ["classifier", "unetr"])
def test_encoder_arguments_reach_the_vit(factory):
    kwargs = dict(qkv_bias=True, dropout_rate=0.25, fused_attention=False, **TINY)
    if factory == "classifier":
        net = TransferViT2D(2, num_layers=1, **kwargs)
    else:
        net = transfer_unetr_2d(2, feature_size=4, norm_name="batch", **kwargs)
        assert net.encoder1.layer.conv1.conv.weight.shape[0] == 4  # feature_size
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # norm_name
    block = net.vit.blocks[0]
    assert block.attn.qkv.bias is not None
    assert block.mlp.drop1.p == 0.25
    assert block.attn.use_flash_attention is False


def test_single_output_head_and_kinds_are_recorded():
    net = TransferViT2D(1, num_layers=1, **TINY)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 1)
    assert TransferViT2D(3, num_layers=1, **TINY).target_kinds == ["class"] * 3
    assert TransferViT2D(targets=CRP, target_stats=STATS, num_layers=1, **TINY).target_kinds == list(CRP.values())
    with pytest.raises(ValueError, match="targets is empty"):
        TransferViT2D(targets={}, **TINY)


def test_target_loss_partial_weights_small_weights_and_shape_errors():
    pred = torch.tensor([[68.0, 150.0, 0.0]])
    target = torch.tensor([[60.0, 110.0, 1.0]])
    # unnamed targets weigh 1: (2 * 1 + 4 + log 2) / 4
    partial = TargetLoss(CRP, STATS, weights={"age": 2.0})
    assert partial(pred, target).item() == pytest.approx((2 + 4 + math.log(2)) / 4, rel=1e-6)
    small = TargetLoss(CRP, STATS, weights={"age": 0.1, "sbp": 0.1, "sex": 0.1})  # weights summing below 1
    assert small(pred, target).item() == pytest.approx((1 + 4 + math.log(2)) / 3, rel=1e-6)
    loss = TargetLoss(CRP, STATS)
    assert loss(pred, target.double()).item() == pytest.approx((1 + 4 + math.log(2)) / 3, rel=1e-6)
    with pytest.raises(ValueError, match=r"expected pred and target \[B, 3\], got \(1, 3\), \(1, 2\)"):
        loss(pred, target[:, :2])
    with pytest.raises(ValueError, match=r"got \(1, 4\), \(1, 4\)"):
        loss(torch.zeros(1, 4), torch.zeros(1, 4))


class _Wrapped(torch.nn.Module):
    """Names like DDP's: ``module.vit.blocks.0...``."""

    def __init__(self, net):
        super().__init__()
        self.module = net


def test_layer_decay_of_a_ddp_wrapped_net_another_prefix_and_a_net_without_blocks():
    net = TransferViT2D(5, num_layers=2, **TINY)
    groups = layer_decay_param_groups(_Wrapped(net), lr=1.0, layer_decay=0.5)
    assert sorted({g["lr"] for g in groups}) == [0.125, 0.25, 0.5, 1.0]
    assert sorted({g["lr_scale"] for g in groups}) == [0.125, 0.25, 0.5, 1.0]

    class Renamed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.head = net.vit, net.head

    renamed = layer_decay_param_groups(Renamed(), lr=1.0, layer_decay=0.5, encoder_prefix="encoder.")
    assert sorted({g["layer_id"] for g in renamed}) == [0, 1, 2, 3]
    plain = layer_decay_param_groups(torch.nn.Linear(2, 2), lr=0.1, layer_decay=0.5)
    assert [(g["layer_id"], g["lr"]) for g in plain] == [(1, 0.1), (1, 0.1)]  # no blocks: everything is the top
