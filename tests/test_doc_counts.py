"""What the docs quote is what runs: encoder-tensor counts as the log prints them, MONAI Label's start command as
tests/test_monailabel_app.py runs it."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from conftest import REPO
from monai.bundle import ConfigParser


@pytest.mark.slow
def test_brainmvp_seg_docs_quote_the_logged_count(tmp_path, caplog):
    pre = ConfigParser()
    pre.read_config(str(REPO / "bundles/brainmvp/configs/train.json"))
    pre["backbone_size"] = "small"  # the docs quote the paper's UniFormer-S (the demo default is the tiny one)
    torch.save(pre.get_parsed_content("network_def").state_dict(), tmp_path / "model.pt")
    seg = ConfigParser()
    seg.read_config(str(REPO / "bundles/brainmvp_seg/configs/train.json"))
    seg["backbone_size"] = "small"
    seg["pretrained_ckpt"] = str(tmp_path / "model.pt")
    with caplog.at_level(logging.INFO):
        seg.get_parsed_content("load_pretrained")
    line = next(r.getMessage() for r in caplog.records if "pre-trained encoder tensors" in r.getMessage())
    quoted = line.split(" from ")[0]  # "loaded N of N pre-trained encoder tensors ('encoder.*')"
    assert quoted in (REPO / "bundles/brainmvp_seg/docs/README.md").read_text(), quoted


def test_every_documented_monailabel_start_command_is_the_tested_one():
    """The ``monailabel`` wrapper script runs the first ``python`` on PATH, so only the venv's own Python works as
    typed; tests/test_monailabel_app.py starts the server with ``<venv python> -m monailabel.main start_server``."""
    docs = [REPO / "README.md", *REPO.glob("bundles/*/docs/README.md"), *REPO.glob("apps/*/README.md")]
    found = 0
    for doc in docs:
        for line in doc.read_text().splitlines():
            if re.search(r"\bstart_server\b", line) and "--app" in line:
                found += 1
                assert ".venv-monailabel/bin/python -m monailabel.main start_server" in line, f"{doc}: {line}"
    assert found >= 3  # the app's README and the two segmentation bundles' docs
