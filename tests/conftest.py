"""Shared fixtures: the repo root, a tiny demo dataset built once per session, and a bundle runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# a 12-block ViT of width 48 on 32^3 crops: the M2-MAE encoder shape UNETR accepts, small enough for CI
TINY_VIT = ["--roi_size", "[32,32,32]", "--hidden_size", "48", "--mlp_dim", "96", "--num_heads", "4"]
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory) -> Path:
    """A 4-case demo BraTS set at 3 mm (the real builder, small and fast), with its datalist.json."""
    from common.data.demo import build_demo_brats

    out = tmp_path_factory.mktemp("demo_brats")
    return Path(build_demo_brats(str(out), num_cases=4, spacing=3.0, seed=0))


def bundle_command(config_files: list[str] | str, *overrides: str, torchrun: int = 0) -> list[str]:
    """The argv of ``python -m monai.bundle run --config_file ...`` (under ``torchrun`` with N processes)."""
    files = config_files if isinstance(config_files, str) else "[" + ",".join(f"'{f}'" for f in config_files) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, *overrides]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}", *cmd[1:]]
    return cmd


@pytest.fixture(scope="session")
def tiny_m2mae_ckpt(tmp_path_factory) -> Path:
    """A tiny m2mae pre-training checkpoint (4 modalities, 32^3, TINY_VIT sizes; random weights, seeded)."""
    import torch

    from common.networks.m2mae import m2mae_vit_tiny

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("m2mae_pretrained") / "model.pt"
    torch.save(m2mae_vit_tiny(in_channels=4, img_size=32).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_brainmvp_ckpt(tmp_path_factory) -> Path:
    """A tiny brainmvp pre-training checkpoint (UniFormer-tiny, templates of all four BraTS contrasts on a 96^3
    canvas, filled with uniform noise so that replaced channels differ from the images; seeded)."""
    import torch

    from common.networks.brainmvp import BrainMVP, build_backbone

    torch.manual_seed(0)
    net = BrainMVP(build_backbone("uniformer", "tiny"), ["t1", "t1ce", "t2", "flair"], (96, 96, 96))
    with torch.no_grad():
        net.templates.templates.uniform_(0, 1)
    path = tmp_path_factory.mktemp("brainmvp_pretrained") / "model.pt"
    torch.save(net.state_dict(), path)
    return path


def run_dirs(ckpt_dir: Path, output_dir: Path) -> list[str]:
    """The ``--ckpt_dir`` / ``--output_dir`` overrides of a bundle run: where it reads and writes checkpoints and
    where its logs, metrics and predictions go."""
    return ["--ckpt_dir", str(ckpt_dir), "--output_dir", str(output_dir)]


def run_bundle(
    config_files: list[str] | str, *overrides: str, cwd: Path = REPO, timeout: int = 600, torchrun: int = 0
) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` exactly as a user types it, in a subprocess; fails the test with its output."""
    cmd = bundle_command(config_files, *overrides, torchrun=torchrun)
    env = {**os.environ, "OMP_NUM_THREADS": "1" if torchrun else os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        pytest.fail(
            f"bundle run failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


class LinearDiscriminator(torch.nn.Module):
    """A toy discriminator for the trainer tests: D(v) = w * mean(v), one logit per sample, w = 0.5 at the start, so
    the adversarial terms can be worked out by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.w * v.flatten(1).mean(1)
