"""The encoder-tensor counts the downstream docs quote are what the log prints for the default networks."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import REPO
from monai.bundle import ConfigParser


@pytest.mark.slow
def test_brainmvp_seg_docs_quote_the_logged_count(tmp_path, caplog):
    pre = ConfigParser()
    pre.read_config(str(REPO / "bundles/brainmvp/configs/train.json"))
    torch.save(pre.get_parsed_content("network_def").state_dict(), tmp_path / "model.pt")
    seg = ConfigParser()
    seg.read_config(str(REPO / "bundles/brainmvp_seg/configs/train.json"))
    seg["pretrained_ckpt"] = str(tmp_path / "model.pt")
    with caplog.at_level(logging.INFO):
        seg.get_parsed_content("load_pretrained")
    line = next(r.getMessage() for r in caplog.records if "pre-trained encoder tensors" in r.getMessage())
    quoted = line.split(" from ")[0]  # "loaded N of N pre-trained encoder tensors ('encoder.*')"
    assert quoted in (REPO / "bundles/brainmvp_seg/docs/README.md").read_text(), quoted
