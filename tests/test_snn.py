"""The SNN genome encoder: SELU/AlphaDropout/LeCun layers, segment tokenisation, 100,000-SNP scale."""

import pytest
import torch
import torch.nn as nn
from monai.networks.blocks import TransformerBlock

from common.networks.snn import SNN, GenomeEncoder, SegmentLinear, SegmentSNN, lecun_normal_, num_segments_length


def test_lecun_normal_variance():
    w = lecun_normal_(torch.empty(400, 2500))
    assert w.mean().item() == pytest.approx(0.0, abs=2e-4)
    assert w.var().item() == pytest.approx(1 / 2500, rel=0.02)
    w3 = lecun_normal_(torch.empty(4, 100, 300), fan_in=100)
    assert w3.var().item() == pytest.approx(1 / 100, rel=0.02)


def test_snn_layers_and_init():
    net = SNN(50, (32, 16), 8, dropout_rate=0.2)
    kinds = [type(m) for m in net.layers]
    assert kinds == [nn.Linear, nn.SELU, nn.AlphaDropout, nn.Linear, nn.SELU, nn.AlphaDropout, nn.Linear]
    assert net.layers[2].p == 0.2
    assert net(torch.randn(3, 50)).shape == (3, 8)
    for m in net.layers:
        if isinstance(m, nn.Linear):
            assert torch.count_nonzero(m.bias) == 0
            assert m.weight.var().item() == pytest.approx(1 / m.in_features, rel=0.35)


def test_snn_self_normalises():
    """Standardised inputs stay near zero mean and unit variance through SELU layers with LeCun weights."""
    torch.manual_seed(0)
    net = SNN(512, (512, 512, 512, 512), 4).eval()
    h = torch.randn(2048, 512)
    for m in net.layers[:-1]:
        h = m(h)
    assert abs(h.mean().item()) < 0.1
    assert h.var().item() == pytest.approx(1.0, abs=0.15)


def test_segment_linear_is_block_diagonal():
    torch.manual_seed(0)
    lin = SegmentLinear(3, 4, 2)
    with torch.no_grad():
        lin.bias.normal_()
    x = torch.randn(5, 3, 4)
    expected = torch.stack([x[:, t] @ lin.weight[t] + lin.bias[t] for t in range(3)], dim=1)
    assert torch.allclose(lin(x), expected, atol=1e-6)


def test_segment_linear_init_uses_the_input_width():
    lin = SegmentLinear(2, 400, 50)
    assert lin.weight.var().item() == pytest.approx(1 / 400, rel=0.05)
    assert torch.count_nonzero(lin.bias) == 0


def test_segment_snn_with_two_hidden_layers():
    snn = SegmentSNN(12, 3, (8, 5), 6, dropout_rate=0.2).eval()
    kinds = [type(m).__name__ for m in snn.layers]
    assert kinds == ["SegmentLinear", "SELU", "AlphaDropout"] * 2 + ["SegmentLinear"]
    assert [tuple(m.weight.shape) for m in snn.layers if isinstance(m, SegmentLinear)] == [
        (3, 4, 8),
        (3, 8, 5),
        (3, 5, 6),
    ]
    assert snn(torch.randn(2, 12)).shape == (2, 3, 6)


def test_segment_counts_at_the_edges():
    assert num_segments_length(5, 1) == 5 and num_segments_length(4, 4) == 1 and num_segments_length(10, 4) == 3
    for g, t in ((3, 4), (4, 0)):
        with pytest.raises(ValueError, match=f"cannot cut {g} genetic features into {t} segments"):
            num_segments_length(g, t)


def test_segment_tokens_see_only_their_segment():
    torch.manual_seed(0)
    snn = SegmentSNN(10, 4, (8,), 6).eval()  # segments of 3 variants, the last padded with 2 zeros
    assert snn.segment_length == 3
    x = torch.randn(2, 10)
    base = snn(x)
    assert base.shape == (2, 4, 6)
    x2 = x.clone()
    x2[:, 3:6] += 1.0  # segment 1 only
    changed = (snn(x2) - base).abs().amax(dim=(0, 2)) > 0
    assert changed.tolist() == [False, True, False, False]
    x3 = x.clone()
    x3[:, 9] += 1.0  # the short last segment
    assert ((snn(x3) - base).abs().amax(dim=(0, 2)) > 0).tolist() == [False, False, False, True]


def test_dense_tokens_see_every_variant():
    torch.manual_seed(0)
    enc = GenomeEncoder(10, hidden_size=8, num_tokens=4, num_layers=1, num_heads=2, mlp_dim=16, tokenizer="dense")
    enc.eval()
    x = torch.randn(2, 10)
    x2 = x.clone()
    x2[:, 0] += 1.0
    assert ((enc.embed(x2) - enc.embed(x)).abs().amax(dim=(0, 2)) > 0).all()


def test_genome_encoder_defaults_and_embedding():
    with torch.device("meta"):
        enc = GenomeEncoder(1000)
    b = enc.blocks[0]
    assert (enc.hidden_size, enc.num_tokens, len(enc.blocks), b.attn.num_heads, b.mlp.linear1.out_features) == (
        768, 16, 2, 12, 3072)  # fmt: skip
    assert b.attn.qkv.bias is None and b.attn.dropout_rate == 0.0 and enc.tokenizer == "segments"
    torch.manual_seed(0)
    small = GenomeEncoder(10, hidden_size=8, num_tokens=2, num_layers=1, num_heads=2, mlp_dim=16).eval()
    assert small.position_embeddings.shape == (1, 2, 8) and small.position_embeddings.std().item() < 0.05
    x = torch.randn(3, 10)
    assert torch.allclose(small.embed(x), small.snn(x) + small.position_embeddings, atol=1e-6)
    one = GenomeEncoder(1, hidden_size=8, num_tokens=1, num_layers=1, num_heads=2, mlp_dim=16)  # a single score
    assert one(torch.randn(2, 1))[0].shape == (2, 1, 8)
    with pytest.raises(ValueError, match="needs at least one genetic feature, got 0"):
        GenomeEncoder(0)


def test_genome_encoder_shapes_blocks_and_errors():
    enc = GenomeEncoder(101, hidden_size=16, num_tokens=4, num_layers=3, num_heads=2, mlp_dim=32)
    tokens, hidden = enc(torch.randn(2, 101))
    assert tokens.shape == (2, 4, 16) and len(hidden) == 3
    assert torch.allclose(enc.norm(hidden[-1]), tokens) and hidden[0].shape == (2, 4, 16)
    assert all(isinstance(b, TransformerBlock) and b.attn.use_flash_attention for b in enc.blocks)
    with pytest.raises(ValueError, match=r"expected genetics \[B, 101\], got \[2, 100\]"):
        enc(torch.randn(2, 100))
    with pytest.raises(ValueError, match="tokenizer must be"):
        GenomeEncoder(10, tokenizer="chunks")
    with pytest.raises(ValueError, match="cannot cut 3 genetic features into 4 segments"):
        GenomeEncoder(3, num_tokens=4)


def test_scales_to_100k_snps():
    enc = GenomeEncoder(100_000, hidden_size=768, num_tokens=16, num_layers=2, num_heads=12, snn_hidden=(64,))
    snn_params = sum(p.numel() for p in enc.snn.parameters())
    # first layer 100,000 x 64 (+ biases), second 16 x 64 x 768
    assert snn_params == 100_000 * 64 + 16 * 64 + 16 * 64 * 768 + 16 * 768
    tokens, _ = enc(torch.randn(2, 100_000))
    assert tokens.shape == (2, 16, 768)
