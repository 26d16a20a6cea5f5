"""DDP replicas stay identical after training steps, for every trainer of the collection with a loss-producing
forward of its own: the template-consistency trainer with templates on and off (brainmvp_seg, brainmvp_cls).

The multi-GPU override of every bundle attaches ``common.engines.ddp.ReplicaCheck``, which compares all parameters
across ranks after each epoch and stops the run when they differ; the other trainers (``SelfSupervisedTrainer``
in m2mae and brainmvp, MONAI's ``SupervisedTrainer`` in m2mae_cls) are checked the same way by their bundles'
multi-GPU tests. Each rank trains on other cases (``DistributedSampler``), so unsynchronised gradients would show.
"""

from __future__ import annotations

import pytest
from conftest import run_bundle, run_dirs

SEG = ["bundles/brainmvp_seg/configs/train.json", "bundles/brainmvp_seg/configs/multi_gpu_train.json"]
CLS = ["bundles/brainmvp_cls/configs/train.json", "bundles/brainmvp_cls/configs/multi_gpu_train.json"]
TINY = ["--backbone_size", "tiny", "--num_workers", "0", "--epochs", "1", "--batch_size", "1", "--val_interval", "5"]


def _replicas_checked(proc) -> None:
    log = proc.stdout + proc.stderr
    assert "DDP replicas identical after iteration" in log, log[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("templates", [True, False])
def test_brainmvp_seg_replicas_identical(tmp_path, demo_dataset, tiny_brainmvp_ckpt, templates):
    proc = run_bundle(
        SEG,
        *TINY,
        "--roi_size", "[32,32,32]", "--sw_batch_size", "1",
        "--dataset_dir", str(demo_dataset.parent),
        "--pretrained_ckpt", str(tiny_brainmvp_ckpt),
        "--template_augmentation", str(templates),
        *run_dirs(tmp_path / "models", tmp_path / "logs"),
        torchrun=2,
    )  # fmt: skip
    _replicas_checked(proc)
    assert ("loaded frozen templates" in proc.stdout + proc.stderr) == templates


@pytest.mark.slow
def test_brainmvp_cls_replicas_identical_with_templates(tmp_path, tiny_brainmvp_ckpt):
    proc = run_bundle(
        CLS,
        *TINY,
        "--resize", "[40,40,40]", "--roi_size", "[32,32,32]",
        "--demo", "{'num_cases': 6, 'spacing': 3.0}",
        "--pretrained_ckpt", str(tiny_brainmvp_ckpt),
        *run_dirs(tmp_path / "models", tmp_path / "logs"),
        torchrun=2,
    )  # fmt: skip
    _replicas_checked(proc)
