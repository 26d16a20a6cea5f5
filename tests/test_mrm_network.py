"""MRM wiring: relation-masked attention on MONAI's blocks, which blocks and branches are masked, what feeds the
decoders and the matching, single-modality mode, parameter groups and checkpoint keys.

The masked branch is checked against a reference written here from the blocks' raw weights (a sort-based mask,
an explicit head split), so a wrong block, a wrong tau, a cross-attention reading the wrong state or a decoder
reading the intact features all change a number these tests compare.
"""

import math

import pytest
import torch
from monai.networks.blocks import CrossAttentionBlock, SABlock
from monai.networks.nets import UNETR

import common.networks.mrm as mrm_module
import common.networks.relation_attention as ra
from common.losses.mrm import cross_matching_loss, self_matching_loss
from common.networks.mrm import mrm_tiny, parameter_groups
from common.networks.relation_attention import (
    CrossModalAttention,
    relation_cross_attention,
    relation_masked_attention,
    relation_self_attention,
)
from common.networks.vit_classifier import ViTClassifier

G = 101  # not a multiple of the 4 genome tokens: the decoder must drop the padding


# ---------------------------------------------------------------- test-local reference of the masked attention
RENORM = {"on": False}  # the reference renormalises kept rows when a test switches this on


def _ref_mask(attn: torch.Tensor, tau: float) -> torch.Tensor:
    """Sort every row descending, r = its k-th value (k = tau * n rounded half up), zero every entry >= r."""
    n = attn.shape[-1]
    k = math.floor(tau * n + 0.5 + 1e-9)
    if k == 0:
        return attn
    r = attn.sort(dim=-1, descending=True).values[..., k - 1 : k]
    out = torch.where(attn >= r, torch.zeros_like(attn), attn)
    return out / out.sum(-1, keepdim=True).clamp_min(1e-12) if RENORM["on"] else out


def _ref_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)  # [B, h, N, d]


def _ref_attend(q, k, v, tau):
    d = q.shape[-1]
    attn = _ref_mask((q @ k.transpose(-1, -2) / math.sqrt(d)).softmax(-1), tau)
    out = attn @ v  # [B, h, N, d]
    return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)


def _ref_self_attention(block: SABlock, x: torch.Tensor, tau: float) -> torch.Tensor:
    """From the raw qkv weight: rows [0:D] are q, [D:2D] k, [2D:3D] v, each head-major."""
    dim = x.shape[-1]
    w = block.qkv.weight
    bias = block.qkv.bias if block.qkv.bias is not None else torch.zeros(3 * dim)
    q, k, v = (_ref_heads(x @ w[i * dim : (i + 1) * dim].T + bias[i * dim : (i + 1) * dim], block.num_heads)
               for i in range(3))  # fmt: skip
    return block.out_proj(_ref_attend(q, k, v, tau))


def _ref_cross(layer: CrossModalAttention, x, ctx, tau):
    a = layer.attn
    xq, c = layer.norm(x), layer.norm_context(ctx)
    q, k, v = (_ref_heads(f(t), a.num_heads) for f, t in ((a.to_q, xq), (a.to_k, c), (a.to_v, c)))
    return x + a.out_proj(_ref_attend(q, k, v, tau))


def _ref_masked_branch(net, z0_i, z0_g):
    """The masked branch as the paper describes it, from the blocks' pieces and the reference attention."""
    xi, xg = z0_i, z0_g
    for n in range(net.masked_blocks):
        bi = net.vit.blocks[n]
        xi = xi + _ref_self_attention(bi.attn, bi.norm1(xi), net.tau_image)
        if xg is not None:
            bg = net.genome_encoder.blocks[n]
            xg = xg + _ref_self_attention(bg.attn, bg.norm1(xg), net.tau_genome)
            xi_new = _ref_cross(net.image_cross[n], xi, xg, net.tau_image)
            xg = _ref_cross(net.genome_cross[n], xg, xi, net.tau_genome)
            xi = xi_new
            xg = xg + bg.mlp(bg.norm2(xg))
        xi = xi + bi.mlp(bi.norm2(xi))
    for block in net.vit.blocks[net.masked_blocks :]:
        xi = block(xi)
    if xg is not None:
        for block in net.genome_encoder.blocks[net.masked_blocks :]:
            xg = block(xg)
        xg = net.genome_encoder.norm(xg)
    return net.vit.norm(xi), xg


def _inputs(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 32, 32, generator=g), torch.randn(b, G, generator=g)


@pytest.fixture
def net():
    torch.manual_seed(0)
    return mrm_tiny(G, genome_layers=3, genome_tokens=5, match_samples=None).eval()  # L = 4 patches, T = 5


# ---------------------------------------------------------------- relation attention on MONAI's parameters
@pytest.mark.parametrize("flash", [True, False])
@pytest.mark.parametrize("combined", [True, False])
def test_relation_self_attention_equals_sablock_when_nothing_masked(flash, combined):
    torch.manual_seed(0)
    block = SABlock(32, 4, qkv_bias=True, use_flash_attention=flash, use_combined_linear=combined).eval()
    x = torch.randn(2, 7, 32)
    assert torch.allclose(relation_self_attention(block, x, tau=0.0), block(x), atol=1e-6)


def test_relation_self_attention_masked_equals_reference():
    torch.manual_seed(0)
    block = SABlock(32, 4, qkv_bias=True).eval()
    x = torch.randn(2, 9, 32)
    for tau in (0.25, 0.5, 0.75):
        assert torch.allclose(relation_self_attention(block, x, tau), _ref_self_attention(block, x, tau), atol=1e-6)
    assert not torch.allclose(relation_self_attention(block, x, 0.75), block(x), atol=1e-3)


@pytest.mark.parametrize("flash", [True, False])
def test_relation_cross_attention_equals_crossattentionblock_when_nothing_masked(flash):
    torch.manual_seed(0)
    block = CrossAttentionBlock(32, 4, qkv_bias=True, use_flash_attention=flash).eval()
    x, ctx = torch.randn(2, 9, 32), torch.randn(2, 3, 32)
    assert torch.allclose(relation_cross_attention(block, x, ctx, tau=0.0), block(x, context=ctx), atol=1e-6)


def test_relation_cross_attention_masked_equals_reference_without_renormalisation():
    torch.manual_seed(0)
    block = CrossAttentionBlock(32, 4, qkv_bias=True).eval()
    x, ctx = torch.randn(2, 9, 32), torch.randn(2, 5, 32)
    q, k, v = (_ref_heads(f(t), 4) for f, t in ((block.to_q, x), (block.to_k, ctx), (block.to_v, ctx)))
    expected = block.out_proj(_ref_attend(q, k, v, 0.6))
    assert torch.allclose(relation_cross_attention(block, x, ctx, 0.6), expected, atol=1e-6)


def test_the_blocks_attention_dropout_acts_on_the_masked_relation():
    """With the block's relation dropout at p = 1 (and no output dropout) only out_proj's bias is left."""
    torch.manual_seed(0)
    sa, ca = SABlock(32, 4).train(), CrossAttentionBlock(32, 4).train()
    for block in (sa, ca):
        block.drop_weights, block.drop_output = torch.nn.Dropout(1.0), torch.nn.Identity()
    x, ctx = torch.randn(2, 5, 32), torch.randn(2, 3, 32)
    assert torch.allclose(relation_self_attention(sa, x, 0.5), sa.out_proj.bias.expand(2, 5, 32))
    assert torch.allclose(relation_cross_attention(ca, x, ctx, 0.5), ca.out_proj.bias.expand(2, 5, 32))


def test_unsupported_attention_variants_are_refused():
    causal = SABlock(32, 4, causal=True, sequence_length=7)
    with pytest.raises(ValueError, match="^relation masking supports neither relative position embeddings, causal"):
        relation_self_attention(causal, torch.randn(1, 7, 32), 0.5)
    typed = SABlock(32, 4, attention_dtype=torch.float64)
    with pytest.raises(ValueError, match="attention_dtype"):
        relation_self_attention(typed, torch.randn(1, 7, 32), 0.5)
    rel = CrossAttentionBlock(32, 4, rel_pos_embedding="decomposed", input_size=(3, 3))
    with pytest.raises(ValueError, match="relative position"):
        relation_cross_attention(rel, torch.randn(1, 9, 32), torch.randn(1, 9, 32), 0.5)


def test_cross_modal_layer_fused_equals_explicit_and_masking_matches_reference():
    torch.manual_seed(0)
    layer = CrossModalAttention(32, 4).eval()
    x, ctx = torch.randn(2, 9, 32), torch.randn(2, 3, 32)
    assert torch.allclose(layer(x, ctx), layer(x, ctx, tau=0.0), atol=1e-6)
    assert torch.allclose(layer(x, ctx, tau=0.75), _ref_cross(layer, x, ctx, 0.75), atol=1e-6)
    assert not torch.allclose(layer(x, ctx, tau=0.75), layer(x, ctx), atol=1e-3)


def test_relation_masked_attention_default_and_given_scale():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8) for _ in range(3))
    assert torch.allclose(
        relation_masked_attention(q, k, v, 0.6),
        _ref_attend(q, k, v, 0.6).reshape(2, 5, 3, 8).transpose(1, 2),
        atol=1e-6,
    )
    expected = _ref_mask((q @ k.transpose(-1, -2) * 0.3).softmax(-1), 0.6) @ v
    assert torch.allclose(relation_masked_attention(q, k, v, 0.6, scale=0.3), expected, atol=1e-6)


def test_relation_block_attention_is_the_residual_self_attention_half():
    torch.manual_seed(0)
    block = mrm_tiny(None).vit.blocks[0]
    x = torch.randn(2, 4, 48)
    expected = x + _ref_self_attention(block.attn, block.norm1(x), 0.75)
    assert torch.allclose(ra.relation_block_attention(block, x, 0.75), expected, atol=1e-6)
    assert torch.allclose(ra.block_mlp(block, x), x + block.mlp(block.norm2(x)), atol=1e-6)


def test_cross_modal_layer_settings_reach_monais_block():
    layer = CrossModalAttention(32, 4, context_size=16, dropout_rate=0.3, qkv_bias=True)
    assert layer.attn.to_k.in_features == 16 and layer.norm_context.normalized_shape == (16,)
    assert layer.attn.dropout_rate == 0.3 and layer.attn.to_q.bias is not None
    default = CrossModalAttention(32, 4)
    assert default.attn.to_q.bias is None and default.attn.use_flash_attention  # MONAI's defaults, fused
    assert default(torch.randn(1, 3, 32), torch.randn(1, 2, 32)).shape == (1, 3, 32)
    assert layer.eval()(torch.randn(1, 3, 32), torch.randn(1, 2, 16), tau=0.5).shape == (1, 3, 32)


def test_relation_masked_attention_by_hand():
    # one head, d = 1, scale 1: logits 0, ln 2, ln 3 -> softmax 1/6, 2/6, 3/6; tau 0.5 of 3 keys -> k = 2:
    # r = 2/6, so only 1/6 survives: output 1/6 * 10
    q = torch.ones(1, 1, 1, 1)
    k = torch.tensor([0.0, math.log(2), math.log(3)]).reshape(1, 1, 3, 1)
    v = torch.tensor([10.0, 20.0, 30.0]).reshape(1, 1, 3, 1)
    out = relation_masked_attention(q, k, v, tau=0.5, scale=1.0)
    assert out.item() == pytest.approx(10 / 6, rel=1e-5)
    assert relation_masked_attention(q, k, v, 0.5, 1.0, renormalize=True).item() == pytest.approx(10.0, rel=1e-5)
    assert relation_masked_attention(q, k, v, 0.0, 1.0).item() == pytest.approx((10 + 40 + 90) / 6, rel=1e-5)


# ---------------------------------------------------------------- branches
def test_intact_branch_is_the_plain_encoders(net):
    x, g = _inputs()
    z_i = net.forward_intact(net.vit.patch_embedding(x), net.vit)
    assert torch.allclose(z_i, net.vit(x)[0], atol=1e-6)  # MONAI's own ViT forward: nothing masked
    z_g = net.forward_intact(net.genome_encoder.embed(g), net.genome_encoder)
    assert torch.allclose(z_g, net.genome_encoder(g)[0], atol=1e-6)


def test_masked_branch_equals_reference_multimodal(net):
    x, g = _inputs()
    z0_i, z0_g = net.vit.patch_embedding(x), net.genome_encoder.embed(g)
    z_im, z_gm = net.forward_masked(z0_i, z0_g)
    ref_i, ref_g = _ref_masked_branch(net, z0_i, z0_g)
    assert torch.allclose(z_im, ref_i, atol=1e-5)
    assert torch.allclose(z_gm, ref_g, atol=1e-5)
    assert not torch.allclose(z_im, net.vit(x)[0], atol=1e-3)


def test_renormalize_switch_reaches_every_masked_attention(monkeypatch):
    torch.manual_seed(0)
    net = mrm_tiny(G, genome_layers=3, genome_tokens=5, renormalize=True).eval()
    x, g = _inputs()
    z0_i, z0_g = net.vit.patch_embedding(x), net.genome_encoder.embed(g)
    z_im, z_gm = net.forward_masked(z0_i, z0_g)
    monkeypatch.setitem(RENORM, "on", True)
    ref_i, ref_g = _ref_masked_branch(net, z0_i, z0_g)
    assert torch.allclose(z_im, ref_i, atol=1e-5) and torch.allclose(z_gm, ref_g, atol=1e-5)
    monkeypatch.setitem(RENORM, "on", False)
    plain_i, _ = _ref_masked_branch(net, z0_i, z0_g)
    assert not torch.allclose(z_im, plain_i, atol=1e-4)


@pytest.mark.parametrize("masked_blocks", [1, 3])
def test_masked_branch_reference_honours_masked_blocks(masked_blocks):
    torch.manual_seed(0)
    net = mrm_tiny(G, genome_layers=3, masked_blocks=masked_blocks).eval()
    x, g = _inputs()
    z0_i, z0_g = net.vit.patch_embedding(x), net.genome_encoder.embed(g)
    z_im, z_gm = net.forward_masked(z0_i, z0_g)
    ref_i, ref_g = _ref_masked_branch(net, z0_i, z0_g)
    assert torch.allclose(z_im, ref_i, atol=1e-5) and torch.allclose(z_gm, ref_g, atol=1e-5)


def test_masked_branch_equals_reference_image_only():
    torch.manual_seed(0)
    net = mrm_tiny(None, tau_image=0.5).eval()
    x, _ = _inputs()
    z0 = net.vit.patch_embedding(x)
    z_im, z_gm = net.forward_masked(z0)
    assert z_gm is None
    assert torch.allclose(z_im, _ref_masked_branch(net, z0, None)[0], atol=1e-5)


def test_relation_mask_calls_blocks_taus_and_shapes(net, monkeypatch):
    """Exactly the first two blocks mask: image and genome self-attention, then both cross-attentions, each with
    its query modality's tau; the intact branch never masks."""
    calls = []
    real = ra.relation_mask

    def spy(attn, tau, renormalize=False):
        calls.append((tuple(attn.shape[-2:]), tau))
        return real(attn, tau, renormalize)

    monkeypatch.setattr(ra, "relation_mask", spy)
    net.tau_image, net.tau_genome = 0.7, 0.3
    x, g = _inputs()
    z0_i, z0_g = net.vit.patch_embedding(x), net.genome_encoder.embed(g)
    net.forward_intact(z0_i, net.vit)
    net.forward_intact(z0_g, net.genome_encoder)
    assert calls == []
    net.forward_masked(z0_i, z0_g)
    L, T = 4, 5
    per_block = [((L, L), 0.7), ((T, T), 0.3), ((L, T), 0.7), ((T, L), 0.3)]
    assert calls == per_block * 2
    calls.clear()
    net(x, g)
    assert calls == per_block * 2  # the full forward masks in the masked branch only


def test_tau_changes_the_masked_branch(net):
    x, g = _inputs()
    z0_i, z0_g = net.vit.patch_embedding(x), net.genome_encoder.embed(g)
    a_i, a_g = net.forward_masked(z0_i, z0_g)
    net.tau_image = 0.25
    b_i, b_g = net.forward_masked(z0_i, z0_g)
    assert not torch.allclose(a_i, b_i, atol=1e-4)
    net.tau_image, net.tau_genome = 0.75, 0.25
    _, c_g = net.forward_masked(z0_i, z0_g)
    assert not torch.allclose(a_g, c_g, atol=1e-4)


def test_image_only_with_nothing_masked_has_identical_branches():
    torch.manual_seed(0)
    net = mrm_tiny(None, tau_image=0.0).eval()
    x, _ = _inputs()
    out = net(x)
    z0 = net.vit.patch_embedding(x)
    assert torch.allclose(net.forward_masked(z0)[0], net.forward_intact(z0, net.vit), atol=1e-6)
    assert out["loss_match_self"].item() == pytest.approx(0.0, abs=1e-10)


# ---------------------------------------------------------------- decoders, losses
def _capture_decoder_inputs(net, monkeypatch):
    seen = {}
    for name in ("image_decoder", "genome_decoder"):
        module = getattr(net, name)
        real = module.forward

        def fwd(tokens, context=None, _real=real, _name=name):
            seen[_name] = (tokens.detach(), None if context is None else context.detach())
            return _real(tokens, context)

        monkeypatch.setattr(module, "forward", fwd)
    return seen


def test_decoders_read_masked_own_and_intact_other_features(net, monkeypatch):
    seen = _capture_decoder_inputs(net, monkeypatch)
    x, g = _inputs()
    net(x, g)
    z0_i, z0_g = net.vit.patch_embedding(x), net.genome_encoder.embed(g)
    z_im, z_gm = net.forward_masked(z0_i, z0_g)
    z_i, z_g = net.vit(x)[0], net.genome_encoder(g)[0]
    tokens, context = seen["image_decoder"]  # z_I^F = concat[z_I,M ; z_G]
    assert torch.allclose(tokens, z_im, atol=1e-6) and torch.allclose(context, z_g, atol=1e-6)
    tokens, context = seen["genome_decoder"]  # z_G^F = concat[z_G,M ; z_I]
    assert torch.allclose(tokens, z_gm, atol=1e-6) and torch.allclose(context, z_i, atol=1e-6)
    assert not torch.allclose(z_im, z_i, atol=1e-3) and not torch.allclose(z_gm, z_g, atol=1e-3)


def test_fusion_is_token_concatenation(net):
    """Changing a context token changes the outputs at the own positions (the decoder attends over both)."""
    z = torch.randn(2, net.num_patches, 48)
    ctx = torch.randn(2, 5, 48)
    a = net.image_decoder(z, ctx)
    assert a.shape == (2, net.num_patches, 3 * 16 * 16)
    ctx2 = ctx.clone()
    ctx2[:, 1] += 1.0
    assert not torch.allclose(a, net.image_decoder(z, ctx2), atol=1e-5)
    with pytest.raises(ValueError, match="decoder built for 9 tokens, got 4$"):
        net.image_decoder(z)


def test_losses_are_eq7_and_matching_of_intact_against_masked(net, monkeypatch):
    seen = _capture_decoder_inputs(net, monkeypatch)
    x, g = _inputs()
    out = net(x, g)
    assert out["pred"].shape == x.shape and out["pred_genetics"].shape == g.shape
    assert torch.equal(out["image"], x) and torch.equal(out["genetics"], g)
    assert out["loss_rec_image"].item() == pytest.approx((out["pred"] - x).pow(2).mean().item(), rel=1e-6)
    assert out["loss_rec_genome"].item() == pytest.approx((out["pred_genetics"] - g).pow(2).mean().item(), rel=1e-6)
    z_im, z_g = seen["image_decoder"]
    z_gm, z_i = seen["genome_decoder"]
    pi, pg, pim, pgm = (z.mean(1) for z in (z_i, z_g, z_im, z_gm))
    assert out["loss_match_self"].item() == pytest.approx(self_matching_loss([pi, pg], [pim, pgm]).item(), rel=1e-5)
    assert out["loss_match_cross"].item() == pytest.approx(cross_matching_loss(pi, pg, pim, pgm).item(), rel=1e-5)
    assert out["loss_match_self"].item() > 1e-6 and out["loss_match_cross"].item() > 1e-6


def test_image_only_matching_compares_intact_with_masked(monkeypatch):
    torch.manual_seed(0)
    net = mrm_tiny(None, match_samples=None).eval()
    seen = {}
    real = net.image_decoder.forward

    def spy(tokens, context=None):
        seen["z_im"], seen["context"] = tokens.detach(), context
        return real(tokens, context)

    monkeypatch.setattr(net.image_decoder, "forward", spy)
    x, _ = _inputs()
    out = net(x)
    assert seen["context"] is None  # the decoder reads z_I,M alone (no fusion, section 4.6)
    z_i, z_im = net.vit(x)[0], net.forward_masked(net.vit.patch_embedding(x))[0]
    assert torch.allclose(seen["z_im"], z_im, atol=1e-6)
    expected = self_matching_loss([z_i.mean(1)], [z_im.mean(1)]).item()
    assert expected > 1e-6 and out["loss_match_self"].item() == pytest.approx(expected, rel=1e-5)


def test_match_samples_is_honoured(monkeypatch):
    torch.manual_seed(0)
    net = mrm_tiny(G, match_samples=2).eval()
    asked = []
    monkeypatch.setattr(
        mrm_module, "draw_match_samples", lambda b, n, **kw: asked.append((b, n)) or torch.tensor([0, 3])
    )
    seen = _capture_decoder_inputs(net, monkeypatch)
    x, g = _inputs(b=5)
    out = net(x, g)
    assert asked == [(5, 2)]
    z_im, z_g = seen["image_decoder"]
    z_gm, z_i = seen["genome_decoder"]
    pick = [z.mean(1)[[0, 3]] for z in (z_i, z_g, z_im, z_gm)]
    expected = self_matching_loss(pick[:2], pick[2:])
    assert out["loss_match_self"].item() == pytest.approx(expected.item(), rel=1e-5)
    everyone = self_matching_loss([z_i.mean(1), z_g.mean(1)], [z_im.mean(1), z_gm.mean(1)])
    assert out["loss_match_self"].item() != pytest.approx(everyone.item(), rel=1e-3)


def test_patch_order_matches_the_patch_embedding(net):
    """patchify's token order is the conv patch embedding's: pixel predictions land on their own patch."""
    x, _ = _inputs(b=2)
    assert torch.equal(net.unpatchify(net.patchify(x)), x)
    conv = net.vit.patch_embedding.patch_embeddings
    tokens = conv(x).flatten(2).transpose(1, 2)  # [B, L, D]
    as_linear = net.patchify(x) @ conv.weight.reshape(conv.weight.shape[0], -1).T + conv.bias
    assert torch.allclose(tokens, as_linear, atol=1e-5)


def test_norm_pix_loss_target_by_hand():
    net = mrm_tiny(None, norm_pix_loss=True)
    x = torch.zeros(1, 3, 32, 32)
    # patch 0 varies a little (variance ~8e-4: the 1e-6 in the denominator is visible at 1e-3 relative)
    x[:, :, :16, :16] = torch.arange(3 * 16 * 16, dtype=torch.float32).reshape(3, 16, 16) / 7680
    target = net.patchify(net.image_target(x))
    p0 = net.patchify(x)[0, 0]
    assert torch.allclose(target[0, 0], (p0 - p0.mean()) / (p0.var() + 1e-6).sqrt(), rtol=1e-5, atol=1e-6)
    assert torch.equal(target[0, 1], torch.zeros(768))  # a constant patch normalises to 0
    assert torch.equal(mrm_tiny(None).image_target(x), x)


def test_norm_pix_loss_switch_reaches_the_loss():
    torch.manual_seed(0)
    net = mrm_tiny(None, norm_pix_loss=True).eval()
    x = torch.rand(2, 3, 32, 32) * 4 + 2  # far from zero mean / unit variance per patch
    out = net(x)
    expected = (out["pred"] - net.image_target(x)).pow(2).mean().item()
    assert out["loss_rec_image"].item() == pytest.approx(expected, rel=1e-6)
    assert out["loss_rec_image"].item() != pytest.approx((out["pred"] - x).pow(2).mean().item(), rel=1e-2)


def test_backward_reaches_both_branches_and_every_module(net):
    x, g = _inputs()
    net.train()
    out = net(x, g)
    sum(v for k, v in out.items() if k.startswith("loss_")).backward()
    no_grad = [n for n, p in net.named_parameters() if p.grad is None]
    assert all("norm_cross_attn" in n for n in no_grad), no_grad  # MONAI's unused cross-attention norms only
    for prefix in ("vit.blocks.3.", "image_cross.1.", "genome_cross.0.", "genome_encoder.snn.", "genome_decoder."):
        assert any(n.startswith(prefix) for n, p in net.named_parameters() if p.grad is not None)


def test_both_branches_share_one_embedding(net, monkeypatch):
    """The SNN (with AlphaDropout) runs once per step: both branches start from the same genome tokens."""
    calls = []
    real = net.genome_encoder.embed
    monkeypatch.setattr(net.genome_encoder, "embed", lambda g: calls.append(1) or real(g))
    net.train()
    net(*_inputs())
    assert len(calls) == 1


# ---------------------------------------------------------------- single modality, inputs
def test_single_modality_builds_no_genome_branch_and_runs_on_images():
    torch.manual_seed(0)
    net = mrm_tiny(None)
    names = [n for n, _ in net.named_parameters()]
    assert not any(n.startswith(("genome_", "image_cross")) for n in names)
    x = torch.randn(2, 3, 32, 32)
    out = net(x)
    assert sorted(k for k in out if k.startswith("loss_")) == ["loss_match_self", "loss_rec_image"]
    assert torch.equal(out["image"], x) and "pred_genetics" not in out
    assert out["pred"].shape == (2, 3, 32, 32)
    with pytest.raises(
        ValueError, match=r"^this MRM network is image-only \(num_genetic_features=None\) but got genetics$"
    ):
        net(torch.randn(2, 3, 32, 32), torch.randn(2, G))


def test_paper_defaults():
    """Section 4.2: ViT-B/16 on 224x224 RGB, tau_I = 0.75, tau_G = 0.5, two masked blocks, 8 matched samples, no
    renormalisation; plus the documented choices the paper is silent on. Built on the meta device (no memory)."""
    from common.networks.mrm import MRM

    with torch.device("meta"):
        net = MRM()
    vit, blk = net.vit, net.vit.blocks[0]
    assert (net.in_channels, net.img_size, net.patch_size, net.num_patches) == (3, (224, 224), (16, 16), 196)
    assert (len(vit.blocks), blk.attn.num_heads, blk.mlp.linear1.out_features, vit.norm.normalized_shape) == (
        12, 12, 3072, (768,))  # fmt: skip
    assert blk.attn.qkv.bias is None  # MONAI's / UNETR's default
    assert (net.tau_image, net.tau_genome, net.masked_blocks, net.match_samples) == (0.75, 0.5, 2, 8)
    assert (net.renormalize, net.norm_pix_loss, net.num_genetic_features) == (False, False, 1000)
    ge = net.genome_encoder
    assert (ge.num_tokens, len(ge.blocks), ge.tokenizer, ge.blocks[0].mlp.linear1.out_features) == (
        16,
        2,
        "segments",
        3072,
    )
    dec, gdec = net.image_decoder, net.genome_decoder
    assert (dec.embed.out_features, len(dec.blocks), dec.blocks[0].attn.num_heads) == (512, 4, 16)
    assert (gdec.embed.out_features, len(gdec.blocks), gdec.blocks[0].attn.num_heads) == (256, 1, 8)


def test_settings_reach_the_submodules():
    torch.manual_seed(0)
    net = mrm_tiny(G, qkv_bias=True, dropout_rate=0.1, snn_dropout=0.3, genome_mlp_dim=40, fused_attention=False)
    gb = net.genome_encoder.blocks[0]
    assert gb.attn.qkv.bias is not None and gb.mlp.linear1.out_features == 40 and gb.attn.dropout_rate == 0.1
    assert [m.p for m in net.genome_encoder.snn.modules() if isinstance(m, torch.nn.AlphaDropout)] == [0.3]
    for ca in [*net.image_cross, *net.genome_cross]:
        assert ca.attn.to_q.bias is not None and ca.attn.dropout_rate == 0.1 and not ca.attn.use_flash_attention
    assert not net.genome_decoder.blocks[0].attn.use_flash_attention
    assert net.vit.blocks[0].attn.qkv.bias is not None
    assert mrm_tiny(0).num_genetic_features == 0 and not mrm_tiny(0).multimodal  # 0 also means image-only


def test_fused_attention_wherever_nothing_is_masked(net):
    blocks = [*net.vit.blocks, *net.genome_encoder.blocks, *net.image_decoder.blocks, *net.genome_decoder.blocks]
    assert all(b.attn.use_flash_attention for b in blocks)
    assert all(c.attn.use_flash_attention for c in [*net.image_cross, *net.genome_cross])
    explicit = mrm_tiny(G, fused_attention=False)
    assert not any(b.attn.use_flash_attention for b in [*explicit.vit.blocks, *explicit.image_decoder.blocks])


def test_fusion_decoder_embeds_then_adds_positions_and_reads_its_own_positions():
    from common.networks.mrm import FusionDecoder

    torch.manual_seed(0)
    dec = FusionDecoder(8, 3, 2, torch.nn.Identity(), decoder_size=6, num_layers=0, num_heads=2)
    assert dec.position_embeddings.std().item() < 0.05  # trunc_normal(std=0.02), as the ViT's positions
    dec2 = FusionDecoder(8, 3, 2, torch.nn.Identity(), decoder_size=8, num_layers=1, num_heads=2)
    assert dec2.blocks[0].mlp.linear1.out_features == 32  # MLP 4x the width
    t, c = torch.randn(2, 3, 8), torch.randn(2, 2, 8)
    x = dec.embed(torch.cat([t, c], 1)) + dec.position_embeddings
    assert torch.allclose(dec(t, c), dec.norm(x)[:, :3], atol=1e-6)
    assert dec2.blocks[0].attn.use_flash_attention  # fused by default


def test_non_square_images_and_patches():
    from common.networks.mrm import MRM

    torch.manual_seed(0)
    size = dict(hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4, decoder_size=32, decoder_layers=1,
                decoder_heads=4)  # fmt: skip
    net = MRM(None, 3, (32, 48), (16, 8), **size).eval()
    assert net.num_patches == 2 * 6
    x = torch.randn(1, 3, 32, 48)
    out = net(x)
    assert out["pred"].shape == x.shape and torch.equal(net.unpatchify(net.patchify(x)), x)


def test_masked_blocks_zero_masks_nothing_and_tau_one_is_allowed():
    torch.manual_seed(0)
    net = mrm_tiny(None, masked_blocks=0).eval()
    x, _ = _inputs()
    z0 = net.vit.patch_embedding(x)
    assert torch.allclose(net.forward_masked(z0)[0], net.forward_intact(z0, net.vit), atol=1e-6)
    mrm_tiny(G, tau_image=1.0, tau_genome=1.0)


def test_input_errors_are_clear(net):
    with pytest.raises(
        ValueError,
        match=r"^this MRM network was built for genetics \(num_genetic_features=101\) but got none; build it with "
        r"num_genetic_features=None for single-modality \(image-only\) pre-training$",
    ):
        net(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"expected genetics \[2, 101\], got \[2, 100\]"):
        net(torch.randn(2, 3, 32, 32), torch.randn(2, 100))
    with pytest.raises(ValueError, match=r"expected images \[B, 3, 32, 32\], got \[2, 1, 32, 32\]"):
        net(torch.randn(2, 1, 32, 32), torch.randn(2, G))
    wide = mrm_tiny(None, img_size=(32, 48))
    with pytest.raises(ValueError, match=r"expected images \[B, 3, 32, 48\], got \[2, 3, 32, 32\]"):
        wide(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="genome_layers"):
        mrm_tiny(G, genome_layers=1)
    with pytest.raises(ValueError, match="tau_image must be in"):
        mrm_tiny(G, tau_image=1.5)
    with pytest.raises(ValueError, match="tau_genome must be in"):
        mrm_tiny(G, tau_genome=-0.5)
    with pytest.raises(ValueError, match=r"img_size \(40, 40\) must be divisible by patch_size \(16, 16\)"):
        mrm_tiny(G, img_size=40)
    with pytest.raises(ValueError, match=r"masked_blocks must lie in 0..4 \(image blocks\), got 5"):
        mrm_tiny(G, masked_blocks=5, genome_layers=5)


# ---------------------------------------------------------------- optimiser groups and checkpoint keys
def test_parameter_groups_split_image_and_genome_sides(net):
    groups = parameter_groups(net, lr=2e-3, weight_decay=0.05, genome_lr=1e-3)
    image, genome = groups
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(image["params"]) | ids(genome["params"]) == ids(net.parameters())
    assert not ids(image["params"]) & ids(genome["params"])
    assert ids(genome["params"]) == ids(
        [*net.genome_encoder.parameters(), *net.genome_cross.parameters(), *net.genome_decoder.parameters()]
    )
    assert ids(net.vit.parameters()) <= ids(image["params"])
    assert (image["lr"], image["weight_decay"], genome["lr"], genome["weight_decay"]) == (2e-3, 0.05, 1e-3, 0.0)
    assert len(parameter_groups(mrm_tiny(None))) == 1
    defaults = parameter_groups(net)
    assert [g["name"] for g in defaults] == ["image", "genome"]
    assert [(g["lr"], g["weight_decay"]) for g in defaults] == [(1e-3, 0.05), (1e-3, 0.0)]  # paper: lr 1e-3 each
    wrapped = parameter_groups(torch.nn.DataParallel(net))  # DDP / DataParallel wrappers are looked through
    assert ids(wrapped[1]["params"]) == ids(genome["params"])


def test_adamw_without_weight_decay_is_adam():
    """Why one AdamW with a weight-decay-free genome group reproduces the paper's Adam for the SNN."""
    torch.manual_seed(0)
    a, b = torch.randn(5, requires_grad=True), None
    b = a.detach().clone().requires_grad_(True)
    opt_a, opt_b = torch.optim.AdamW([a], lr=1e-3, weight_decay=0.0), torch.optim.Adam([b], lr=1e-3)
    for _ in range(3):
        for p, o in ((a, opt_a), (b, opt_b)):
            o.zero_grad()
            (p.pow(3).sum()).backward()
            o.step()
    assert torch.equal(a, b)


def test_vit_keys_load_into_unetr_2d_and_vit_classifier_2d():
    torch.manual_seed(0)
    net = mrm_tiny(G, num_layers=12)
    size = dict(hidden_size=48, mlp_dim=96, num_heads=4)
    unetr = UNETR(in_channels=3, out_channels=2, img_size=32, feature_size=8, spatial_dims=2, **size)
    result = unetr.vit.load_state_dict(net.vit.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    full = unetr.load_state_dict(net.state_dict(), strict=False)
    assert not [k for k in full.missing_keys if k.startswith("vit.")]
    clf = ViTClassifier(3, 32, 16, num_layers=12, num_classes=2, spatial_dims=2, **size)
    full = clf.load_state_dict(net.state_dict(), strict=False)
    assert not [k for k in full.missing_keys if k.startswith("vit.")]
    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(clf.vit(x)[0], net.vit(x)[0], atol=1e-6)


def test_genome_encoder_gets_the_attention_and_dropout_settings():
    for fused, dropout, tokenizer in ((False, 0.3, "segments"), (True, 0.05, "dense"), (False, 0.2, "dense")):
        genome = mrm_tiny(20, fused_attention=fused, snn_dropout=dropout, tokenizer=tokenizer).genome_encoder
        assert {b.attn.use_flash_attention for b in genome.blocks} == {fused}
        assert {m.p for m in genome.modules() if isinstance(m, torch.nn.AlphaDropout)} == {dropout}
