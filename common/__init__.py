"""Shared code of the multi-modal medical pre-training bundle collection.

The bundles' configs call into this package; it depends only on MONAI, PyTorch and their
scientific stack, never on a bundle or a tool.

Sub-packages, one per part of a method:
    networks    encoders, decoders, heads, discriminators
    masking     each paper's masking as a pure function on tensors
    losses      each paper's losses, one equation per function
    transforms  MONAI-style dictionary transforms
    data        datalists, demo-data builders, data validation
    engines     trainers and handlers (multi-loss / adversarial steps, checkpoints)
"""

__version__ = "0.1.0"
