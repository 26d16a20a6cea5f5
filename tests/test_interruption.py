"""No lost work: a run killed with SIGKILL mid-epoch resumes by itself and continues the uninterrupted loss curve;
a NaN loss stops training with a clear message and keeps the last good checkpoint."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_VIT, bundle_command, run_bundle, run_dirs

TRAIN = "bundles/m2mae/configs/train.json"
# the first iteration also logs each term's gradient norm (grad_norm_*) ahead of the loss
LINE = re.compile(r"Epoch: (\d+)/\d+, Iter: (\d+)/\d+ -- (?:grad_norm_\w+: \S+ )*loss: ([-\d.e+]+)")


def args(out: Path, dataset: Path, epochs: int) -> list[str]:
    return [
        "--dataset_dir",
        str(dataset.parent),
        *TINY_VIT,
        "--disc_channels",
        "8",
        "--num_workers",
        "0",
        "--batch_size",
        "1",
        "--epochs",
        str(epochs),
        *run_dirs(out / "models", out / "logs"),
    ]


def losses(text: str) -> dict[tuple[int, int], float]:
    return {(int(e), int(i)): float(v) for e, i, v in LINE.findall(text)}


@pytest.mark.slow
def test_sigkill_mid_epoch_then_same_command_continues_the_same_curve(tmp_path, demo_dataset):
    reference = losses((lambda p: p.stdout + p.stderr)(run_bundle(TRAIN, *args(tmp_path / "ref", demo_dataset, 4))))
    assert len(reference) == 4 * 3

    cmd = bundle_command(
        TRAIN,
        *args(tmp_path / "run", demo_dataset, 4),
    )
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "Epoch: 3/4, Iter: 2/3" in line:  # epoch 2 is checkpointed; kill in the middle of epoch 3
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    ckpts = sorted(p.name for p in (tmp_path / "run" / "models" / "checkpoints").glob("*.pt"))
    assert "checkpoint_epoch=2.pt" in ckpts and not list((tmp_path / "run" / "models" / "checkpoints").glob(".*.tmp"))

    resumed = run_bundle(TRAIN, *args(tmp_path / "run", demo_dataset, 4))
    log = resumed.stdout + resumed.stderr
    assert "resumed from" in log
    after = losses(log)
    assert min(after)[0] >= 3 and (4, 3) in after
    for key, value in after.items():
        assert value == pytest.approx(reference[key], rel=1e-4, abs=1e-4), key


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, demo_dataset):
    run_bundle(TRAIN, *args(tmp_path / "run", demo_dataset, 1))
    good = (tmp_path / "run" / "models" / "checkpoints" / "checkpoint_epoch=1.pt").read_bytes()
    # a learning rate of 1e30 makes the next steps explode
    cmd = bundle_command(
        TRAIN,
        *args(tmp_path / "run", demo_dataset, 5),
        "--learning_rate",
        "1e30",
        "--warmup_epochs",
        "0",
        "--resume",  # the learning rate is part of the run's fingerprint: resuming with another one is on purpose here
        "true",
    )
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert (
        "non-finite loss at epoch" in proc.stderr
        and "last checkpoint written before this step is intact" in proc.stderr
    )
    ckpt_dir = tmp_path / "run" / "models" / "checkpoints"
    assert (ckpt_dir / "checkpoint_epoch=1.pt").read_bytes() == good or (ckpt_dir / "checkpoint_epoch=2.pt").exists()


@pytest.mark.parametrize(
    "other, expected",
    [
        (lambda: torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)), "unexpected: 1.weight, 1.bias"),
        (lambda: torch.nn.Sequential(torch.nn.Linear(4, 2)), "size mismatch for 0.weight"),
    ],
)
def test_resuming_from_another_networks_checkpoint_names_the_file_and_keeps_it(tmp_path, other, expected):
    """A checkpoint written by another network (e.g. an earlier bundle version's decoder) stops the run with its
    path and the mismatching keys, instead of torch's key dump, and is not deleted."""
    from ignite.engine import Engine

    from common.engines.checkpoint import ResumableCheckpoint

    foreign = ResumableCheckpoint(str(tmp_path), {"network": other()})
    writer = Engine(lambda e, b: None)
    foreign.attach(writer)
    writer.run([0], max_epochs=1)
    path = tmp_path / "checkpoint_epoch=1.pt"
    assert path.exists()

    engine = Engine(lambda e, b: None)
    ResumableCheckpoint(str(tmp_path), {"network": torch.nn.Sequential(torch.nn.Linear(3, 2))}).attach(engine)
    with pytest.raises(RuntimeError, match="cannot resume from .*checkpoint_epoch=1.pt") as err:
        engine.run([0], max_epochs=1)
    assert expected in str(err.value) and "--ckpt_dir" in str(err.value)
    assert path.exists()
