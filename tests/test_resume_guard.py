"""Resume never silently trains nothing or trains on a checkpoint of another run (through the real runner).

The quick-start trap: a finished demo run leaves ``models/checkpoints``; the same ``train.json`` pointed at other
data must not "resume" at the last epoch, train zero steps and save the old weights as a new final model.
"""

from __future__ import annotations

import subprocess

import pytest
import torch
from conftest import REPO, TINY_VIT, bundle_command, run_bundle, run_dirs

from common.engines.checkpoint import ResumableCheckpoint, run_fingerprint

TRAIN = "bundles/m2mae/configs/train.json"


def test_fingerprint_hashes_the_case_list_and_settings():
    a = run_fingerprint([{"image": "a.nii"}, {"image": "b.nii"}], {"roi_size": [96, 96, 96]})
    assert a == run_fingerprint([{"image": "b.nii"}, {"image": "a.nii"}], {"roi_size": [96, 96, 96]})  # order-free
    assert a["cases"] == 2 and a != run_fingerprint([{"image": "a.nii"}], {"roi_size": [96, 96, 96]})
    assert a != run_fingerprint([{"image": "a.nii"}, {"image": "b.nii"}], {"roi_size": [64, 64, 64]})
    with pytest.raises(ValueError, match="exclude each other"):
        ResumableCheckpoint("x", {}, force_resume=True, restart=True)


def _fails(*overrides: str) -> str:
    proc = subprocess.run(bundle_command(TRAIN, *overrides), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0, proc.stdout[-2000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_finished_run_is_not_resumed_on_other_data_nor_rerun_for_zero_steps(tmp_path, demo_dataset):
    dirs = run_dirs(tmp_path / "models", tmp_path / "logs")
    base = [*TINY_VIT, "--disc_channels", "8", "--num_workers", "0", "--epochs", "1", *dirs]
    run_bundle(TRAIN, *base, "--dataset_dir", str(demo_dataset.parent))
    final = torch.load(tmp_path / "models" / "model.pt", weights_only=True)

    # the same command again: nothing left to train, said so, non-zero exit, the final model untouched
    log = _fails(*base, "--dataset_dir", str(demo_dataset.parent))
    assert "nothing to train" in log and "--epochs" in log and "--restart true" in log
    assert torch.equal(
        torch.load(tmp_path / "models" / "model.pt", weights_only=True)["decoder.weight"], final["decoder.weight"]
    )

    # other data (the embedded demo set instead of the folder) and another setting: refused, naming both and the choices
    log = _fails(*base, "--epochs", "2", "--position_ratio", "0.25")
    assert (
        "was written by another run" in log and "training data" in log and "position_ratio: 0.5 then, 0.25 now" in log
    )
    assert "--ckpt_dir <new folder>" in log and "--restart true" in log and "--resume true" in log

    # --restart: the old checkpoints are kept aside and a new run starts at epoch 1
    proc = run_bundle(TRAIN, *base, "--dataset_dir", str(demo_dataset.parent), "--restart", "true")
    assert "moved 1 checkpoint(s)" in proc.stdout + proc.stderr
    assert len(list((tmp_path / "models" / "checkpoints").glob("superseded_*/checkpoint_epoch=1.pt"))) == 1
