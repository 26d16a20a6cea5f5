"""Every downstream bundle exports to TorchScript with MONAI's ckpt_export and passes verify_net_in_out."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, TINY_VIT
from monai.bundle import ConfigParser

CASES = {
    "m2mae_seg": (
        [
            *TINY_VIT,
            "--feature_size",
            "8",
        ],
        [32, 32, 32],
        False,
    ),
    "m2mae_cls": (
        ["--roi_size", "[32,32,32]", "--hidden_size", "48", "--mlp_dim", "96", "--num_heads", "4"],
        [32, 32, 32],
        False,
    ),
    # UniFormer's blocks use MONAI's einops-based attention, which TorchScript cannot compile: traced instead
    "brainmvp_seg": (["--backbone_size", "tiny"], [32, 32, 32], True),
    "brainmvp_cls": (["--backbone_size", "tiny", "--roi_size", "[32,32,32]"], [32, 32, 32], True),
}
# the MRM transfer bundles: 2D RGB images, a tiny ViT (UNETR keeps its 12 blocks); RFMiD's labels named so that no
# data folder is read (its metadata describes RFMiD 1.0's 46 labels)
TINY_2D = ["--image_size", "32", "--hidden_size", "48", "--mlp_dim", "96", "--num_heads", "4"]
RFMID = ["Disease_Risk", "DR", "DN", "MH", "TSLN", "ODE"]
CASES_2D = {
    "mrm_aptos": ([*TINY_2D, "--num_layers", "2"], [32, 32], []),
    "mrm_glioma": ([*TINY_2D, "--num_layers", "2"], [32, 32], []),
    "mrm_crp": ([*TINY_2D, "--num_layers", "2"], [32, 32], []),
    "mrm_rfmid": (
        [*TINY_2D, "--num_layers", "2", "--label_names", json.dumps(RFMID, separators=(",", ":"))],
        [32, 32],
        ["--_meta_#network_data_format#outputs#pred#num_channels", "6"],
    ),
    "mrm_palm": ([*TINY_2D, "--feature_size", "8"], [32, 32], []),
}
CASES.update({name: (args, shape, False) for name, (args, shape, _) in CASES_2D.items()})
CHANNELS = {name: 3 for name in CASES_2D}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_ckpt_export_and_verify_net_in_out(tmp_path, name):
    args, shape, trace = CASES[name]
    config = f"bundles/{name}/configs/inference.json"
    parser = ConfigParser()
    parser.read_config(str(REPO / config))
    for key, value in zip(args[::2], args[1::2]):
        try:
            parser[key[2:]] = json.loads(value)
        except json.JSONDecodeError:
            parser[key[2:]] = value
    net = parser.get_parsed_content("network_def").eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    export = [
        sys.executable,
        "-m",
        "monai.bundle",
        "ckpt_export",
        "network_def",
        "--filepath",
        str(tmp_path / "model.ts"),
        "--ckpt_file",
        str(tmp_path / "model.pt"),
        "--meta_file",
        f"bundles/{name}/configs/metadata.json",
        "--config_file",
        config,
        *args,
    ]
    if trace:
        export += ["--use_trace", "True", "--input_shape", str([1, CHANNELS.get(name, 4), *shape]).replace(" ", "")]
    proc = subprocess.run(export, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    x = torch.randn(1, CHANNELS.get(name, 4), *shape)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-4)
    if "seg" in name or name in CASES_2D:  # MONAI's check of the input and output channels and shapes
        verify = [
            sys.executable,
            "-m",
            "monai.bundle",
            "verify_net_in_out",
            "network_def",
            "--meta_file",
            f"bundles/{name}/configs/metadata.json",
            "--config_file",
            config,
            *args,
            "--_meta_#network_data_format#inputs#image#spatial_shape",
            str(shape).replace(" ", ""),
            *CASES_2D.get(name, ([], [], []))[2],
        ]
        proc = subprocess.run(verify, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and "verified with no error" in proc.stdout + proc.stderr, proc.stderr[-2000:]
