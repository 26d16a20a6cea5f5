"""Fused scaled-dot-product attention is a speed switch only: the same outputs and gradients as explicit attention."""

import torch

from common.networks.m2mae import m2mae_vit_tiny, set_fused_attention
from common.networks.uniformer import uniformer_tiny


def test_m2mae_fused_equals_explicit():
    torch.manual_seed(0)
    net = m2mae_vit_tiny(img_size=32, fused_attention=False)
    x = torch.randn(2, 4, 32, 32, 32)
    mask = torch.zeros(2, 4, 8, dtype=torch.bool)
    mask[:, 1] = True
    explicit = net(x, mask=mask)
    (explicit["loss_mse"] + explicit["loss_pbt"]).backward()
    grad_explicit = net.vit.blocks[0].attn.qkv.weight.grad.clone()
    net.zero_grad()
    set_fused_attention(net.vit, True)
    fused = net(x, mask=mask)
    (fused["loss_mse"] + fused["loss_pbt"]).backward()
    assert torch.allclose(fused["pred"], explicit["pred"], atol=1e-5)
    assert torch.allclose(fused["loss_pbt"], explicit["loss_pbt"], rtol=1e-4)
    assert torch.allclose(net.vit.blocks[0].attn.qkv.weight.grad, grad_explicit, atol=1e-4)


def test_uniformer_fused_equals_explicit():
    torch.manual_seed(0)
    fused = uniformer_tiny(fused_attention=True).eval()
    explicit = uniformer_tiny(fused_attention=False).eval()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(1, 1, 32, 32, 32)
    assert torch.allclose(fused(x), explicit(x), atol=1e-5)
