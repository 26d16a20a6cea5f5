"""GroupMSA (GiMP section 2.1): fragments, groups, padding, the two attention levels, the classifier."""

import pytest
import torch

from common.networks.groupmsa import GroupMSA, GroupMSAClassifier


def _tiny(**kwargs) -> GroupMSA:
    args = dict(num_genes=50, fragment_length=8, num_groups=3, hidden_size=16, num_heads=2)
    return GroupMSA(**{**args, **kwargs}).eval()


def test_fragments_zero_pad_the_tail_by_hand():
    enc = GroupMSA(num_genes=5, fragment_length=2, num_groups=1, hidden_size=2, num_heads=1,
                   position_embedding=False)  # fmt: skip
    with torch.no_grad():
        enc.fragment_embed.weight.copy_(torch.eye(2))
        enc.fragment_embed.bias.zero_()
    h = enc.fragments(torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]]))
    assert enc.num_fragments == 3 and h.tolist() == [[[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]]]
    with pytest.raises(ValueError, match=r"\[B, 5\]"):
        enc(torch.randn(2, 6))


def test_group_sizes_and_padding_tokens():
    enc = _tiny()  # 50 genes / 8 -> 7 fragments; 3 groups of ceil(7 / 3) = 3, the last with 2 padding tokens
    assert (enc.num_fragments, enc.group_size) == (7, 3)
    assert enc.token_mask.tolist() == [[True] * 4, [True] * 4, [True, True, False, False]]
    assert enc.group_tokens.shape == (1, 3, 1, 16) and enc.cls_token.shape == (1, 1, 16)
    with pytest.raises(ValueError, match="num_groups 8 exceeds the 7 fragments"):
        _tiny(num_groups=8)


def test_padding_tokens_are_masked_out_of_the_last_group():
    torch.manual_seed(0)
    enc = _tiny()
    h = enc.fragments(torch.randn(2, 50))  # [2, 7, 16]
    groups = enc.forward_groups(h)
    # the last group by hand: its group token and its one real fragment, no padding at all
    last = torch.cat([enc.group_tokens[:, 2].expand(2, -1, -1), h[:, 6:7]], dim=1)  # [2, 2, 16]
    assert torch.allclose(groups[:, 2], enc.intra[0](last)[:, 0], atol=1e-6)
    # and the first group by hand: group token + fragments 0..2
    first = torch.cat([enc.group_tokens[:, 0].expand(2, -1, -1), h[:, 0:3]], dim=1)
    assert torch.allclose(groups[:, 0], enc.intra[0](first)[:, 0], atol=1e-6)


def test_intra_group_attention_stays_inside_its_group():
    torch.manual_seed(0)
    enc = _tiny()
    x = torch.randn(1, 50)
    x2 = x.clone()
    x2[0, :24] += 3.0  # genes 0..23: fragments 0..2, all in group 0
    g, g2 = enc.forward_groups(enc.fragments(x)), enc.forward_groups(enc.fragments(x2))
    assert not torch.allclose(g[:, 0], g2[:, 0])
    assert torch.allclose(g[:, 1:], g2[:, 1:], atol=1e-6)
    assert not torch.allclose(enc(x), enc(x2))  # the inter-group level carries it to CLS_ge


def test_position_embedding_makes_fragment_order_matter():
    torch.manual_seed(0)
    x = torch.randn(1, 32)
    swapped = torch.cat([x[:, 8:16], x[:, :8], x[:, 16:]], dim=1)  # fragments 0 and 1 exchanged (one group)
    plain = GroupMSA(32, 8, 1, hidden_size=16, num_heads=2, position_embedding=False).eval()
    assert plain.pos_embed is None
    assert torch.allclose(plain(x), plain(swapped), atol=1e-5)  # permutation-invariant without positions
    positioned = GroupMSA(32, 8, 1, hidden_size=16, num_heads=2).eval()
    assert not torch.allclose(positioned(x), positioned(swapped), atol=1e-4)


def test_constructor_arguments_are_honoured():
    enc = _tiny(intra_layers=2, inter_layers=3, mlp_dim=24, num_heads=4)
    assert len(enc.intra) == 2 and len(enc.inter) == 3
    assert enc.intra[0].mlp.linear1.out_features == 24 and enc.inter[0].attn.num_heads == 4
    assert enc(torch.randn(3, 50)).shape == (3, 16)
    # the paper's length: 60,480 genes in 945 fragments of 64, 32 groups of 30
    big = GroupMSA(60480, hidden_size=16, num_heads=2)
    assert (big.num_fragments, big.group_size) == (945, 30)


def test_classifier_learns_a_separable_toy_and_has_encoder_keys():
    torch.manual_seed(0)
    clf = GroupMSAClassifier(num_classes=3, num_genes=24, fragment_length=4, num_groups=2, hidden_size=16,
                             num_heads=2)  # fmt: skip
    assert all(k.startswith(("encoder.", "head.")) for k in clf.state_dict())
    y = torch.arange(30) % 3
    x = torch.randn(30, 24) * 0.3 + torch.nn.functional.one_hot(y, 3).repeat_interleave(8, 1) * 2.0
    opt = torch.optim.AdamW(clf.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(clf(x), y).backward()
        opt.step()
    assert clf(x).shape == (30, 3)
    assert (clf(x).argmax(1) == y).float().mean() > 0.9


def test_cls_ge_is_the_normed_class_token_after_the_inter_group_block():
    torch.manual_seed(0)
    enc = _tiny()
    x = torch.randn(2, 50)
    h = enc.fragment_embed(torch.nn.functional.pad(x, (0, 6)).view(2, 7, 8)) + enc.pos_embed  # H_f + positions
    assert torch.allclose(enc.fragments(x), h)
    groups = enc.forward_groups(h)
    tokens = enc.inter[0](torch.cat([enc.cls_token.expand(2, -1, -1), groups], 1))
    assert torch.allclose(enc(x), enc.norm(tokens[:, 0]), atol=1e-6)


def test_defaults_validation_and_state_dict():
    enc = GroupMSA(60480)
    blk = enc.intra[0]
    assert (enc.fragment_length, enc.num_groups, enc.hidden_size) == (64, 32, 512)
    assert (len(enc.intra), len(enc.inter), blk.attn.num_heads, blk.mlp.linear1.out_features) == (1, 1, 8, 2048)
    assert blk.attn.qkv.bias is None and enc.pos_embed.shape == (1, 945, 512)
    assert 0.01 < enc.pos_embed.std() < 0.03 and 0.01 < enc.group_tokens.std() < 0.03  # trunc_normal(std=0.02)
    assert "token_mask" not in enc.state_dict()  # derived from the sizes, not a weight
    biased = GroupMSA(10, 2, 2, hidden_size=8, num_heads=2, qkv_bias=True, dropout_rate=0.3)
    assert biased.intra[0].attn.qkv.bias is not None and biased.inter[0].attn.qkv.bias is not None
    assert biased.intra[0].mlp.drop1.p == 0.3 and biased.inter[0].attn.drop_output.p == 0.3
    assert GroupMSAClassifier(num_genes=10, fragment_length=2, num_groups=5).head.out_features == 2
    GroupMSA(1, 1, 1, hidden_size=8, num_heads=2)  # the smallest valid encoder: one gene, one fragment, one group
    GroupMSA(10, 2, 5, hidden_size=8, num_heads=2)  # as many groups as fragments
    for bad in (dict(num_genes=0), dict(fragment_length=0), dict(num_groups=0)):
        args = {**dict(num_genes=10, fragment_length=2, num_groups=2, hidden_size=8, num_heads=2), **bad}
        with pytest.raises(ValueError, match="need positive num_genes, fragment_length, num_groups"):
            GroupMSA(**args)
