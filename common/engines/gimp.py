"""Where the GiMP fine-tuning model's weights come from (``gimp_nsclc``), in one place.

* aggregator: the GiMP pre-training checkpoint (``aggregator.*``) when one is given, else random (the MIL
  baseline of the paper's Table 1 trains the aggregator from scratch);
* gene encoder (not for the WSI-only variant): the same pre-training checkpoint (``gene_encoder.*``: the GroupMSA
  it froze), else the ``gimp_groupmsa`` checkpoint (``encoder.*``); one of the two is required, since the paper's
  GroupMSA is always pre-trained supervised and a random frozen one would feed noise into ``CLS_pat``.

Every tensor of a part must be found with its shape (:func:`~common.engines.checkpoint.load_encoder`), or the
run stops naming the missing keys.
"""

from __future__ import annotations

import logging

import torch

from common.engines.checkpoint import load_encoder, require_checkpoint
from common.engines.trainer import unwrap

__all__ = ["load_gimp_classifier"]
logger = logging.getLogger(__name__)


def load_gimp_classifier(
    network: torch.nn.Module, pretrained_ckpt: str | None = None, gene_encoder_ckpt: str | None = None
) -> dict[str, int]:
    """Load a :class:`~common.networks.gimp.GiMPClassifier` (DDP-wrapped or not) for fine-tuning.

    Args:
        network: the classifier.
        pretrained_ckpt: GiMP pre-training ``model.pt`` (``None``: aggregator from scratch).
        gene_encoder_ckpt: ``gimp_groupmsa`` ``model.pt``, used when ``pretrained_ckpt`` is not given.

    Returns:
        tensors loaded per part, e.g. ``{"aggregator": 38, "gene_encoder": 41}``.

    Example: ``load_gimp_classifier(clf, "bundles/gimp/models/model.pt")``.
    """
    loaded = {"aggregator": 0, "gene_encoder": 0}
    if pretrained_ckpt:
        loaded["aggregator"] = load_encoder(network, pretrained_ckpt, prefix="aggregator.")
    else:
        logger.info("no GiMP pre-training checkpoint (pretrained_ckpt): the aggregator starts from scratch")
    if unwrap(network).gene_encoder is None:
        return loaded
    if pretrained_ckpt:
        loaded["gene_encoder"] = load_encoder(network, pretrained_ckpt, prefix="gene_encoder.")
    else:
        path = require_checkpoint(
            gene_encoder_ckpt,
            "the GroupMSA gene encoder",
            "give --pretrained_ckpt (a gimp model.pt) or --gene_encoder_ckpt (a gimp_groupmsa model.pt), "
            "or --wsi_only true for the image-only MIL baseline",
        )
        loaded["gene_encoder"] = load_encoder(network, path, prefix="gene_encoder.", source_prefix="encoder.")
    return loaded
