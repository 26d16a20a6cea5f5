"""The m2mae bundle end to end through the real ``monai.bundle`` runner, with tiny overrides."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_VIT, run_bundle, run_dirs
from monai.networks.nets import UNETR
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

TRAIN = "bundles/m2mae/configs/train.json"
MULTI_GPU = "bundles/m2mae/configs/multi_gpu_train.json"
TINY = [
    *TINY_VIT,
    "--disc_channels",
    "8",
    "--num_workers",
    "0",
    "--batch_size",
    "2",
]


def tiny(out: Path, dataset: Path, epochs: int = 1, *extra: str) -> list[str]:
    return [
        *TINY,
        "--dataset_dir",
        str(dataset.parent),
        "--epochs",
        str(epochs),
        *run_dirs(out / "models", out / "logs"),
        *extra,
    ]


@pytest.mark.slow
def test_train_writes_unetr_loadable_model_and_tensorboard(tmp_path, demo_dataset):
    proc = run_bundle(TRAIN, *tiny(tmp_path, demo_dataset, epochs=2))
    log = proc.stdout + proc.stderr
    assert "loss_pbt" in log and "loss_adv" in log and "loss_d" in log
    # the first lines say what will happen (common.engines.summary)
    assert f"training: 3 case(s) from dataset_dir {demo_dataset.parent}" in log and "network: M2MAE, " in log
    assert "schedule: 2 epoch(s) of 1 iteration(s)" in log and "this run starts fresh" in log
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
    unetr = UNETR(in_channels=4, out_channels=3, img_size=32, feature_size=8, hidden_size=48, mlp_dim=96, num_heads=4)
    result = unetr.load_state_dict(state, strict=False)
    assert [k for k in result.missing_keys if k.startswith("vit.")] == []

    events = EventAccumulator(str(tmp_path / "logs"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"loss", "loss_mse", "loss_pbt", "loss_adv", "loss_d"} <= set(tags["scalars"])
    assert len(events.Scalars("loss_mse")) == 2  # 3 training cases, batch 2, drop_last: 1 step a epoch
    lr = [e.value for e in events.Scalars("learning_rate")]  # warming up: 0, then rising
    assert len(lr) == 2 and 0 <= lr[0] < lr[1]
    assert any(t.startswith("reconstruction/") for t in tags["images"])
    # one command turns the run into a page with its curves, previews and contract (tools/report.py)
    sys.path.insert(0, str(REPO / "tools"))
    from report import write_report

    page = Path(
        write_report(str(tmp_path / "logs"), str(tmp_path / "report.md"), ckpt=str(tmp_path / "models" / "model.pt"))
    )
    text = page.read_text()
    assert "![loss_mse](report_files/curve_loss_mse.png)" in text and "## Input contract" in text and '"t1ce"' in text
    assert (tmp_path / "report_files" / "curve_loss_mse.png").read_bytes()[:4] == b"\x89PNG"
    assert any(p.name.startswith("preview_reconstruction") for p in (tmp_path / "report_files").iterdir())
    # both epochs were checkpointed, atomically (no temporary files left)
    ckpts = sorted(p.name for p in (tmp_path / "models" / "checkpoints").iterdir())
    assert ckpts == ["checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt"]


@pytest.mark.slow
def test_resume_continues_from_last_epoch_and_skips_a_truncated_checkpoint(tmp_path, demo_dataset):
    run_bundle(TRAIN, *tiny(tmp_path, demo_dataset, epochs=1))
    state1 = torch.load(tmp_path / "models" / "checkpoints" / "checkpoint_epoch=1.pt", weights_only=True)
    assert state1["trainer"]["iteration"] == 1

    proc = run_bundle(TRAIN, *tiny(tmp_path, demo_dataset, epochs=2))
    log = proc.stdout + proc.stderr
    assert "resumed from" in log and "checkpoint_epoch=1.pt" in log
    assert "Epoch: 2/2" in log and "Epoch: 1/2" not in log
    state2 = torch.load(tmp_path / "models" / "checkpoints" / "checkpoint_epoch=2.pt", weights_only=True)
    assert state2["trainer"]["iteration"] == 2

    # a truncated newest checkpoint (a crash mid-copy, a full disk) is skipped with a warning
    newest = tmp_path / "models" / "checkpoints" / "checkpoint_epoch=2.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    proc = run_bundle(TRAIN, *tiny(tmp_path, demo_dataset, epochs=3))
    log = proc.stdout + proc.stderr
    assert "skipping checkpoint" in log and "checkpoint_epoch=2.pt" in log
    assert "resumed from" in log and "checkpoint_epoch=1.pt" in log and "Epoch: 2/3" in log


@pytest.mark.slow
def test_runs_from_inside_a_copied_bundle_folder(tmp_path, demo_dataset):
    """bundle_root resolves to '.' when run from the bundle folder: outputs land inside it."""
    bundle = tmp_path / "m2mae"
    shutil.copytree(REPO / "bundles" / "m2mae", bundle, ignore=shutil.ignore_patterns("*.pt", "logs", "checkpoints"))
    run_bundle("configs/train.json", *TINY, "--dataset_dir", str(demo_dataset.parent), "--epochs", "1", cwd=bundle)
    assert (bundle / "models" / "model.pt").is_file()
    assert any((bundle / "logs").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_multi_gpu_config_runs_ddp_on_two_cpu_processes(tmp_path, demo_dataset):
    proc = run_bundle([TRAIN, MULTI_GPU], *tiny(tmp_path, demo_dataset, epochs=1), "--batch_size", "1", torchrun=2)
    log = proc.stdout + proc.stderr
    assert (tmp_path / "models" / "model.pt").is_file()
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # DDP unwrapped before saving
    # only rank 0 logs: every iteration line appears once per iteration, not twice
    assert log.count("Epoch: 1/1, Iter: 1/") == 1
    # generator and discriminator replicas compared across the two ranks (common.engines.ddp.ReplicaCheck)
    assert "tensors of 'network' on 2 ranks" in log and "tensors of 'discriminator' on 2 ranks" in log


@pytest.mark.slow
def test_inference_extracts_encoder_features(tmp_path, demo_dataset):
    run_bundle(TRAIN, *tiny(tmp_path, demo_dataset, epochs=1))
    run_bundle(
        "bundles/m2mae/configs/inference.json",
        *TINY_VIT,
        "--dataset_dir",
        str(demo_dataset.parent),
        *run_dirs(tmp_path / "models", tmp_path / "eval"),
    )
    rows = (tmp_path / "eval" / "features.csv").read_text().splitlines()
    assert len(rows) == 3 and all(len(r.split(",")) == 1 + 48 for r in rows)  # 3 training subjects, width 48
    training = json.loads(demo_dataset.read_text())["training"]
    assert sorted(r.split(",")[0] for r in rows) == sorted(e["subject_id"] for e in training)  # rows by subject id
