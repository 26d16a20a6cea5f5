"""GiMP masking (contiguous window, 50 % mask), losses (Eq. 3, Eq. 4) by hand, and the networks' wiring."""

import numpy as np
import pytest
import torch

from common.losses.gimp import masked_l1_loss, pairwise_squared_distances, triplet_loss
from common.masking.subsequence import apply_patch_mask, random_patch_mask, subsequence_indices, take_subsequence
from common.networks.gimp import GiMP, GiMPClassifier, gimp_tiny
from common.networks.groupmsa import GroupMSA, GroupMSAClassifier
from common.networks.nystrom import NystromAggregator

# ---------------------------------------------------------------- the window and the mask


def test_window_is_contiguous_and_inside_each_bag():
    g = torch.Generator().manual_seed(0)
    features = torch.arange(2 * 20, dtype=torch.float32).reshape(2, 20, 1).repeat(1, 1, 3)
    lengths = torch.tensor([20, 12])
    for _ in range(20):
        window, idx = take_subsequence(features, lengths, length=5, generator=g)
        assert (idx.diff(dim=1) == 1).all()  # contiguous, in order
        assert (idx[:, 0] >= 0).all() and (idx[:, -1] < lengths).all()  # never in the padding
        assert torch.equal(window, features.gather(1, idx[..., None].expand(2, 5, 3)))
        assert torch.equal(window[1, :, 0], 20 + idx[1].float())


def test_window_start_is_uniform():
    g = torch.Generator().manual_seed(0)
    starts = subsequence_indices(torch.full((4000,), 13), length=10, generator=g)[:, 0]  # starts 0..3
    counts = torch.bincount(starts, minlength=4)
    assert counts.numel() == 4 and (counts > 900).all() and (counts < 1100).all()  # 1000 each expected


def test_short_bags_are_tiled_from_the_start():
    idx = subsequence_indices(torch.tensor([3, 7, 1]), length=7)
    assert idx.tolist() == [[0, 1, 2, 0, 1, 2, 0], list(range(7)), [0] * 7]


def test_mask_ratio_is_exact_per_sample_and_independent():
    g = torch.Generator().manual_seed(0)
    m = random_patch_mask(6, 40, ratio=0.5, generator=g)
    assert m.shape == (6, 40) and m.sum(1).tolist() == [20] * 6
    assert len({tuple(r.tolist()) for r in m}) == 6  # every sample its own mask
    assert random_patch_mask(2, 40, ratio=0.25).sum(1).tolist() == [10, 10]
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(random_patch_mask(2, 9, 0.5, g1), random_patch_mask(2, 9, 0.5, g2))


def test_random_patch_mask_is_drawn_on_the_requested_device():
    # the meta device stands in for a GPU on this CPU machine: a mask drawn elsewhere would come back on the CPU
    m = random_patch_mask(2, 8, 0.5, device="meta")
    assert m.device.type == "meta" and m.shape == (2, 8) and m.dtype == torch.bool


def test_apply_mask_with_token_or_zeros():
    x = torch.arange(12.0).reshape(1, 4, 3)
    mask = torch.tensor([[False, True, False, True]])
    zeroed = apply_patch_mask(x, mask)
    assert zeroed[0].tolist() == [[0, 1, 2], [0, 0, 0], [6, 7, 8], [0, 0, 0]]
    token = torch.tensor([-1.0, -2.0, -3.0])
    assert apply_patch_mask(x, mask, token)[0].tolist() == [[0, 1, 2], [-1, -2, -3], [6, 7, 8], [-1, -2, -3]]
    assert apply_patch_mask(x.half(), mask, token).dtype == torch.float16  # the token takes the features' dtype


# ---------------------------------------------------------------- Eq. 3


def test_masked_l1_by_hand():
    pred = torch.tensor([[[1.0, 1.0], [0.0, 0.0], [2.0, -1.0]], [[0.0, 0.0], [5.0, 5.0], [1.0, 1.0]]])
    target = torch.tensor([[[0.0, 3.0], [9.0, 9.0], [2.0, 2.0]], [[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]]])
    mask = torch.tensor([[True, False, True], [False, False, True]])
    # sample 0: |1-0| + |1-3| = 3 and |2-2| + |-1-2| = 3 -> 6; sample 1: |1-1| + |1-0| = 1 -> 1 (unmasked ignored)
    assert masked_l1_loss(pred, target, mask, "sum").item() == pytest.approx((6 + 1) / 2)
    assert masked_l1_loss(pred, target, mask, "mean").item() == pytest.approx(7 / (3 * 2))  # 3 masked x 2 dims
    moved = pred.clone()
    moved[~mask] += 100.0
    assert masked_l1_loss(moved, target, mask).item() == pytest.approx(7 / 6)
    assert masked_l1_loss(pred, target, torch.zeros_like(mask)).item() == 0.0
    with pytest.raises(ValueError, match="reduction"):
        masked_l1_loss(pred, target, mask, "max")


# ---------------------------------------------------------------- Eq. 4

X = torch.tensor([[0.0], [1.0], [1.5], [4.0]])
Y = torch.tensor([0, 0, 1, 1])


def test_pairwise_squared_distances_by_hand():
    d = pairwise_squared_distances(torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]]))
    assert d.tolist() == [[0, 25, 1], [25, 0, 20], [1, 20, 0]]


def test_triplet_all_by_hand():
    # d01 = 1, d02 = 2.25, d03 = 16, d12 = 0.25, d13 = 9, d23 = 6.25; margin 0.8; 8 valid (a, p, n):
    # (0,1,2): 1+.8-2.25 <0  (0,1,3): <0   (1,0,2): 1+.8-.25 = 1.55   (1,0,3): <0
    # (2,3,0): 6.25+.8-2.25 = 4.8   (2,3,1): 6.25+.8-.25 = 6.8   (3,2,0): <0   (3,2,1): 6.25+.8-9 <0
    loss, count = triplet_loss(X, Y, margin=0.8, mining="all")
    assert int(count) == 8 and loss.item() == pytest.approx((1.55 + 4.8 + 6.8) / 8)
    # margin 0.2: 1.2-.25 = .95, 6.45-2.25 = 4.2, 6.45-.25 = 6.2 (the rest stay negative)
    assert triplet_loss(X, Y, margin=0.2)[0].item() == pytest.approx((0.95 + 4.2 + 6.2) / 8)


def test_triplet_hard_by_hand():
    # per anchor: farthest positive, nearest negative: a0: 1, 2.25 -> 0; a1: 1, .25 -> 1.55;
    # a2: 6.25, .25 -> 6.8; a3: 6.25, 9 -> 0
    loss, count = triplet_loss(X, Y, margin=0.8, mining="hard")
    assert int(count) == 4 and loss.item() == pytest.approx((1.55 + 6.8) / 4)


@pytest.mark.parametrize("mining", ["all", "hard"])
@pytest.mark.parametrize("labels", [[1, 1, 1, 1], [0, 1, 2, 3]])
def test_triplet_without_triplets_is_zero_flagged_and_finite(mining, labels):
    x = torch.randn(4, 3, requires_grad=True)
    loss, count = triplet_loss(x, torch.tensor(labels), mining=mining)
    assert loss.item() == 0.0 and int(count) == 0
    loss.backward()
    assert torch.isfinite(x.grad).all() and (x.grad == 0).all()


def test_triplet_gradient_by_hand():
    # x = 0, 1, 0.5 with labels 0, 0, 1: triplets (0,1,2) and (1,0,2), both active (1 + .8 - .25 = 1.55 > 0);
    # loss = ((x0-x1)^2 - (x0-x2)^2 + (x1-x0)^2 - (x1-x2)^2) / 2 + .8 -> gradient (-1.5, 1.5, 0): the two
    # positives are pulled together, the negative (half-way between them) is pushed equally both ways
    x = torch.tensor([[0.0], [1.0], [0.5]], requires_grad=True)
    loss, _ = triplet_loss(x, torch.tensor([0, 0, 1]), margin=0.8)
    assert loss.item() == pytest.approx(1.55)
    loss.backward()
    assert x.grad.flatten().tolist() == pytest.approx([-1.5, 1.5, 0.0])
    with pytest.raises(ValueError, match="mining"):
        triplet_loss(x, torch.tensor([0, 0, 1]), mining="semi")


# ---------------------------------------------------------------- GiMP wiring

G, F, D = 40, 16, 32


def _net(**kwargs) -> GiMP:
    torch.manual_seed(0)
    return gimp_tiny(num_genes=G, in_features=F, subsequence_length=24, **kwargs)


def _batch(b: int = 4, n: int = 50):
    torch.manual_seed(1)
    lengths = torch.tensor([50, 37, 12, 50][:b])
    return torch.randn(b, n, F).abs(), torch.randn(b, G), torch.tensor([0, 0, 1, 1][:b]), lengths


def test_triplet_uses_cls_pat_of_image_and_frozen_genes():
    net = _net()
    features, expression, labels, lengths = _batch()
    out = net(features, expression, labels, lengths, generator=torch.Generator().manual_seed(0))
    cls_img, cls_ge = out["cls_img"], out["cls_ge"]
    assert torch.allclose(cls_ge, net.gene_encoder(expression))  # CLS_ge is the gene encoder's output
    assert torch.equal(out["cls_pat"], torch.cat([cls_img, cls_ge], 1)) and out["cls_pat"].shape == (4, 2 * D)
    expected = triplet_loss(torch.cat([cls_img, cls_ge], 1), labels, margin=0.8)[0]
    assert out["loss_tri"].item() == pytest.approx(expected.item(), rel=1e-6)
    for wrong in (cls_img, cls_ge):
        assert abs(triplet_loss(wrong, labels)[0].item() - expected.item()) > 1e-3
    assert int(out["num_triplets"]) == 8


def test_triplet_arguments_are_honoured():
    features, expression, labels, lengths = _batch()
    for kwargs in (dict(margin=0.3), dict(mining="hard")):
        out = _net(**kwargs)(features, expression, labels, lengths)
        expected = triplet_loss(out["cls_pat"], labels, **{"margin": 0.8, "mining": "all", **kwargs})[0]
        assert out["loss_tri"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_reconstruction_covers_masked_positions_of_the_original_window_only():
    net = _net()
    features, expression, labels, lengths = _batch()
    seen = {}
    net.aggregator.register_forward_pre_hook(lambda m, args: seen.update(input=args[0]))
    out = net(features, expression, labels, lengths, generator=torch.Generator().manual_seed(0))
    mask, idx, pred, target = out["mask"], out["indices"], out["pred"], out["target"]
    assert mask.shape == (4, 24) and mask.sum(1).tolist() == [12] * 4
    # the target is the original window (not the masked input), gathered contiguously from each bag
    assert torch.equal(target, features.gather(1, idx[..., None].expand(-1, -1, F)))
    assert (idx[[0, 1, 3]].diff(dim=1) == 1).all() and torch.equal(idx[2], torch.arange(24) % 12)
    # the aggregator saw the window with the masked positions replaced by the mask token
    assert torch.equal(seen["input"][mask], net.mask_token.expand(48, F))
    assert torch.equal(seen["input"][~mask], target[~mask])
    # Eq. 3 in numpy, masked positions only, mean over masked entries
    err = np.abs(pred.detach().numpy() - target.numpy()).sum(-1)
    m = mask.numpy()
    assert out["loss_rec"].item() == pytest.approx(err[m].sum() / (m.sum() * F), rel=1e-5)
    assert abs(err.mean() / F - out["loss_rec"].item()) > 1e-4  # all positions would give another value


def test_masking_arguments_are_honoured():
    features, expression, labels, lengths = _batch()
    net = _net(mask_ratio=0.25, mask_token="zeros", rec_reduction="sum")
    net.subsequence_length = 20
    seen = {}
    net.aggregator.register_forward_pre_hook(lambda m, args: seen.update(input=args[0]))
    out = net(features, expression, labels, lengths)
    assert net.mask_token is None and out["mask"].sum(1).tolist() == [5] * 4
    assert (seen["input"][out["mask"]] == 0).all()
    assert out["loss_rec"].item() == pytest.approx(
        masked_l1_loss(out["pred"], out["target"], out["mask"], "sum").item(), rel=1e-6
    )
    mlp = _net(decoder_hidden=48)
    assert isinstance(mlp.decoder, torch.nn.Sequential) and mlp.decoder[0].out_features == 48


def test_gene_encoder_is_frozen_through_an_optimiser_step():
    net = _net()
    net.gene_encoder.intra[0].mlp.drop1.p = 0.5  # dropout that train mode would switch on
    frozen = {k: v.clone() for k, v in net.gene_encoder.state_dict().items()}
    trained = {k: v.clone() for k, v in net.aggregator.state_dict().items()}
    net.train()
    assert net.training and net.aggregator.training and not net.gene_encoder.training
    assert not any(p.requires_grad for p in net.gene_encoder.parameters())
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    features, expression, labels, lengths = _batch()
    out = net(features, expression, labels, lengths)
    (out["loss_tri"] + out["loss_rec"]).backward()
    opt.step()
    assert all(torch.equal(frozen[k], v) for k, v in net.gene_encoder.state_dict().items())
    assert any(not torch.equal(trained[k], v) for k, v in net.aggregator.state_dict().items())
    assert net.mask_token.grad is not None and net.mask_token.grad.abs().sum() > 0
    assert torch.equal(net.gene_encoder(expression), net.gene_encoder(expression))  # eval: no dropout


def test_load_gene_encoder_from_the_groupmsa_classifier():
    net = _net()
    torch.manual_seed(5)
    clf = GroupMSAClassifier(num_classes=2, num_genes=G, fragment_length=8, num_groups=2, hidden_size=D, num_heads=4)
    net.load_gene_encoder(clf.state_dict())
    x = torch.randn(3, G)
    assert torch.allclose(net.gene_encoder(x), clf.encoder.eval()(x))
    with pytest.raises(ValueError, match="missing"):
        net.load_gene_encoder({"encoder.cls_token": torch.zeros(1, 1, D)})


def test_image_only_ablation_uses_cls_img():
    torch.manual_seed(0)
    net = GiMP(NystromAggregator(F, D, heads=4, num_landmarks=8), None, subsequence_length=24)
    features, _, labels, lengths = _batch()
    out = net(features, None, labels, lengths)
    assert torch.equal(out["cls_pat"], out["cls_img"]) and "cls_ge" not in out
    with pytest.raises(ValueError, match="width"):
        GiMP(NystromAggregator(F, D, heads=4), GroupMSA(G, 8, 2, hidden_size=16, num_heads=4))


# ---------------------------------------------------------------- fine-tuning


def test_classifier_variants_and_checkpoint_from_pretraining():
    pre = _net()
    clf = GiMPClassifier(pre.aggregator.__class__(F, D, heads=4, num_landmarks=8, dropout=0.0),
                         GroupMSA(G, 8, 2, hidden_size=D, num_heads=4), num_classes=3)  # fmt: skip
    result = clf.load_state_dict(pre.state_dict(), strict=False)
    assert not result.missing_keys or all(k.startswith("head.") for k in result.missing_keys)
    assert sorted(result.unexpected_keys) == ["decoder.bias", "decoder.weight", "mask_token"]
    features, expression, _, lengths = _batch()
    clf.eval()
    logits = clf(features, expression, lengths)
    assert logits.shape == (4, 3) and clf.head[0].in_features == 2 * D
    # a padded bag gives what it gives alone
    assert torch.allclose(logits[2], clf(features[2:3, :12], expression[2:3])[0], atol=1e-5)
    wsi = GiMPClassifier(NystromAggregator(F, D, heads=4, num_landmarks=8), None, num_classes=2, head_hidden=0)
    assert wsi.head[-1].in_features == D and wsi(features, lengths=lengths).shape == (4, 2)
    # fine-tuning keeps GroupMSA frozen by default, or trains it when asked
    assert not clf.train().gene_encoder.training and not any(p.requires_grad for p in clf.gene_encoder.parameters())
    free = GiMPClassifier(NystromAggregator(F, D, heads=4), GroupMSA(G, 8, 2, hidden_size=D, num_heads=4),
                          freeze_gene_encoder=False)  # fmt: skip
    assert free.train().gene_encoder.training and all(p.requires_grad for p in free.gene_encoder.parameters())


# ---------------------------------------------------------------- defaults, edge cases and argument plumbing


def _default(fn, name):
    import inspect

    return inspect.signature(fn).parameters[name].default


def test_paper_defaults():
    from common.masking import subsequence as s

    assert _default(s.subsequence_indices, "length") == _default(s.take_subsequence, "length") == 6000
    assert _default(s.random_patch_mask, "ratio") == 0.5
    assert (_default(triplet_loss, "margin"), _default(triplet_loss, "mining")) == (0.8, "all")
    assert _default(masked_l1_loss, "reduction") == "mean"
    defaults = {k: _default(GiMP.__init__, k) for k in
                ("subsequence_length", "mask_ratio", "mask_token", "margin", "mining", "rec_reduction",
                 "decoder_hidden")}  # fmt: skip
    assert defaults == dict(subsequence_length=6000, mask_ratio=0.5, mask_token="learned", margin=0.8, mining="all",
                            rec_reduction="mean", decoder_hidden=0)  # fmt: skip
    # the same, by behaviour (a mutation tool rewrites defaults behind an unchanged signature)
    assert subsequence_indices(torch.tensor([6001, 2])).shape == (2, 6000)
    assert take_subsequence(torch.zeros(1, 3, 1))[0].shape == (1, 6000, 1)
    assert random_patch_mask(1, 10).sum() == 5
    assert triplet_loss(X, Y)[0].item() == pytest.approx((1.55 + 4.8 + 6.8) / 8)
    agg = NystromAggregator(F, D, heads=4, num_landmarks=8)
    net = GiMP(agg)
    assert (net.subsequence_length, net.mask_ratio, net.margin, net.mining, net.rec_reduction) == (
        6000, 0.5, 0.8, "all", "mean")  # fmt: skip
    assert net.mask_token is not None and isinstance(net.decoder, torch.nn.Linear)
    head = GiMPClassifier(agg).head
    assert head[-1].out_features == 2 and head[2].p == 0.0
    assert gimp_tiny(num_genes=G).aggregator.in_features == 1024
    clf = {k: _default(GiMPClassifier.__init__, k) for k in
           ("num_classes", "head_hidden", "head_dropout", "freeze_gene_encoder")}  # fmt: skip
    assert clf == dict(num_classes=2, head_hidden=None, head_dropout=0.0, freeze_gene_encoder=True)


def test_factories():
    from common.networks.gimp import gimp_base

    assert gimp_base(num_genes=2048, in_features=16).aggregator.in_features == 16
    base = gimp_base(num_genes=60480, subsequence_length=100)
    agg, enc = base.aggregator, base.gene_encoder
    assert (agg.in_features, agg.dim, agg.layer1.attn.heads, agg.layer1.attn.num_landmarks) == (1024, 512, 8, 256)
    assert (enc.num_genes, enc.fragment_length, enc.num_groups, enc.hidden_size) == (60480, 64, 32, 512)
    assert base.subsequence_length == 100 and base.decoder.out_features == 1024
    tiny = gimp_tiny(num_genes=40, in_features=16)
    a, e = tiny.aggregator, tiny.gene_encoder
    assert (a.in_features, a.dim, a.layer1.attn.heads, a.layer1.attn.num_landmarks, a.layer1.attn.to_out[1].p) == (
        16, 32, 4, 8, 0.0)  # fmt: skip
    assert (e.fragment_length, e.num_groups, e.hidden_size, e.intra[0].attn.num_heads) == (8, 2, 32, 4)


def test_window_edge_cases_and_errors():
    g = torch.Generator().manual_seed(0)
    for _ in range(30):  # short and exactly-L bags always start at 0, whatever the draw
        idx = subsequence_indices(torch.tensor([3, 7]), length=7, generator=g)
        assert idx.tolist() == [[0, 1, 2, 0, 1, 2, 0], list(range(7))]
    assert subsequence_indices(torch.tensor([5]), length=1, generator=g).shape == (1, 1)
    with pytest.raises(ValueError, match=r"positive bag sizes, got \[3, 0\]"):
        subsequence_indices(torch.tensor([3, 0]), length=2)
    with pytest.raises(ValueError, match="positive bag sizes"):
        subsequence_indices(torch.tensor([[3]]), length=2)
    with pytest.raises(ValueError, match="subsequence length must be positive, got 0"):
        subsequence_indices(torch.tensor([3]), length=0)
    x = torch.randn(2, 6, 3)
    assert torch.equal(take_subsequence(x, None, length=6)[0], x)  # no lengths: every bag is all 6 patches
    with pytest.raises(ValueError, match=r"expected patch features \[B, N, D\], got \[6, 3\]"):
        take_subsequence(x[0], length=2)
    with pytest.raises(ValueError, match=r"lengths must be \[B\] = \[2\] values in 1..6, got \[7, 2\]"):
        take_subsequence(x, torch.tensor([7, 2]), length=2)
    with pytest.raises(ValueError, match=r"lengths must be \[B\]"):
        take_subsequence(x, torch.tensor([2]), length=2)


def test_reproducible_with_a_generator():
    g1, g2, g3 = (torch.Generator().manual_seed(s) for s in (7, 7, 8))
    lengths = torch.tensor([500, 900])
    a, b, c = (subsequence_indices(lengths, 20, g) for g in (g1, g2, g3))
    assert torch.equal(a, b) and not torch.equal(a, c)
    net = _net()
    features, expression, labels, lengths = _batch()
    outs = [net(features, expression, labels, lengths, generator=torch.Generator().manual_seed(s)) for s in (3, 3, 4)]
    assert torch.equal(outs[0]["indices"], outs[1]["indices"]) and torch.equal(outs[0]["mask"], outs[1]["mask"])
    assert not torch.equal(outs[0]["mask"], outs[2]["mask"])


def test_mask_ratio_bounds_and_shape_errors():
    assert random_patch_mask(2, 8, 0.0).sum() == 0 and random_patch_mask(2, 8, 1.0).all()
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=f"mask ratio must be in \\[0, 1\\], got {bad}"):
            random_patch_mask(2, 8, bad)
    with pytest.raises(ValueError, match=r"mask \[1, 3\] must match the first two dims of x \[1, 4, 2\]"):
        apply_patch_mask(torch.zeros(1, 4, 2), torch.zeros(1, 3, dtype=torch.bool))


def test_loss_edge_cases_and_errors():
    # one masked position of width 1: mean == sum == |error|
    one = masked_l1_loss(torch.tensor([[[2.0]]]), torch.tensor([[[-1.0]]]), torch.tensor([[True]]))
    assert one.item() == 3.0
    p, m = torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.bool)
    for args in ((p, p, m[:, :2]), (p, p[:, :2], m), (p[0], p[0], m[0])):
        with pytest.raises(ValueError, match=r"expected pred, target \[B, L, D\] and mask \[B, L\]; got"):
            masked_l1_loss(*args)
    # hard mining with a singleton class: anchor 4 (class 2) has no positive and is skipped; it is a negative
    x = torch.tensor([[0.0], [1.0], [1.5], [4.0], [0.9]])
    loss, count = triplet_loss(x, torch.tensor([0, 0, 1, 1, 2]), margin=0.8, mining="hard")
    # a0: pos 1, neg min(2.25, 16, .81) = .81 -> .99; a1: pos 1, neg min(.25, 9, .01) = .01 -> 1.79;
    # a2: pos 6.25, neg min(2.25, .25, .36) = .25 -> 6.8; a3: pos 6.25, neg min(16, 9, 9.61) = 9 -> 0
    assert int(count) == 4 and loss.item() == pytest.approx((0.99 + 1.79 + 6.8) / 4)
    for e, y in ((torch.zeros(3), torch.zeros(3)), (torch.zeros(3, 2), torch.zeros(2))):
        with pytest.raises(ValueError, match=r"expected embeddings \[B, E\] and labels \[B\], got"):
            triplet_loss(e, y)


def test_cls_img_is_the_class_token_position_and_cls_ge_carries_no_graph():
    net = _net()
    features, expression, labels, lengths = _batch()
    seen = {}
    net.aggregator.register_forward_hook(lambda m, args, out: seen.update(out=out.detach().clone()))
    expression.requires_grad_(True)
    out = net(features, expression, labels, lengths)
    assert torch.equal(out["cls_img"].detach(), seen["out"][:, 0])
    assert torch.allclose(out["pred"], net.decoder(seen["out"][:, 1:]))
    assert out["cls_ge"].grad_fn is None and out["cls_img"].grad_fn is not None
    with pytest.raises(ValueError, match="mask_token must be 'learned' or 'zeros', got 'noise'"):
        _net(mask_token="noise")
    with pytest.raises(ValueError, match=r"^this model has a gene encoder: pass the expression vectors \[B, G\]$"):
        net(features, None, labels, lengths)
    mlp = _net(decoder_hidden=1)
    assert [type(layer).__name__ for layer in mlp.decoder] == ["Linear", "GELU", "Linear"] and mlp.decoder[
        2
    ].out_features == F


def test_classifier_embedding_head_and_trainable_genes():
    torch.manual_seed(0)
    agg = NystromAggregator(F, D, heads=4, num_landmarks=8, dropout=0.0)
    clf = GiMPClassifier(agg, GroupMSA(G, 8, 2, hidden_size=D, num_heads=4), num_classes=3, head_hidden=7,
                         head_dropout=0.3).eval()  # fmt: skip
    features, expression, _, lengths = _batch()
    emb = clf.embed(features[:1], expression[:1])
    assert torch.allclose(emb, torch.cat([agg(features[:1])[:, 0], clf.gene_encoder(expression[:1])], 1))
    assert [type(layer).__name__ for layer in clf.head] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert (clf.head[0].out_features, clf.head[2].p, clf.head[3].out_features) == (7, 0.3, 3)
    linear = GiMPClassifier(agg, GroupMSA(G, 8, 2, hidden_size=D, num_heads=4), head_hidden=0)
    assert [type(layer).__name__ for layer in linear.head] == ["Dropout", "Linear"] and linear.head[
        1
    ].in_features == 2 * D
    assert GiMPClassifier(agg, None, head_hidden=1).head[0].out_features == 1
    assert GiMPClassifier(agg).head[0].out_features == D  # default hidden width: the aggregator's
    free = GiMPClassifier(agg, GroupMSA(G, 8, 2, hidden_size=D, num_heads=4), freeze_gene_encoder=False)
    free(features, expression, lengths).sum().backward()
    no_grad = [n for n, p in free.gene_encoder.named_parameters() if p.grad is None]
    assert all(".norm_cross_attn." in n for n in no_grad)  # MONAI's block keeps that norm without cross-attention
    assert clf(features, expression, torch.tensor([1, 1, 50, 2])).shape == (4, 3)  # a one-patch bag is a bag
    with pytest.raises(ValueError, match="gene encoder width 16 != aggregator width 32"):
        GiMPClassifier(agg, GroupMSA(G, 8, 2, hidden_size=16, num_heads=4))
    for bad in (torch.tensor([50, 0, 3, 3]), torch.tensor([51, 1, 1, 1]), torch.tensor([3, 3])):
        with pytest.raises(ValueError, match=r"lengths must be \[B\] = \[4\] values in 1..50"):
            clf(features, expression, bad)
