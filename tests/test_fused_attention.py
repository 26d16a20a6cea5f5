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


def test_vit_classifier_and_unetr_fused_equal_explicit():
    from common.networks.vit import fused_unetr, set_fused_attention
    from common.networks.vit_classifier import ViTClassifier

    torch.manual_seed(0)
    x = torch.randn(2, 4, 32, 32, 32)
    size = dict(hidden_size=48, mlp_dim=96, num_heads=4)
    classifier = ViTClassifier(4, 32, 16, num_classes=3, **size).eval()
    fused = classifier(x)
    set_fused_attention(classifier, False)
    assert torch.allclose(fused, classifier(x), atol=1e-5)
    unetr = fused_unetr(in_channels=4, out_channels=3, img_size=32, feature_size=8, **size).eval()
    assert all(b.use_flash_attention for b in unetr.modules() if hasattr(b, "use_flash_attention"))
    fused = unetr(x)
    set_fused_attention(unetr, False)
    assert torch.allclose(fused, unetr(x), atol=1e-5)


def test_every_vit_of_the_collection_has_unetrs_keys():
    from monai.networks.nets import UNETR

    from common.networks.vit import unetr_vit
    from common.networks.vit_classifier import ViTClassifier

    size = dict(hidden_size=48, mlp_dim=96, num_heads=4)
    unetr = UNETR(in_channels=4, out_channels=3, img_size=32, feature_size=8, **size).vit.state_dict()
    for vit in (unetr_vit(4, 32, 16, **size), m2mae_vit_tiny(img_size=32).vit, ViTClassifier(4, 32, 16, **size).vit):
        assert {k: v.shape for k, v in vit.state_dict().items()} == {k: v.shape for k, v in unetr.items()}
