"""The brainmvp bundle through the real runner: missing modalities, templates saved and resumed, DDP."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import pytest
import torch
from conftest import run_bundle, run_dirs

TRAIN = "bundles/brainmvp/configs/train.json"
MULTI_GPU = "bundles/brainmvp/configs/multi_gpu_train.json"


def tiny(out: Path, epochs: int, backbone: str = "uniformer") -> list[str]:
    return [
        "--demo",
        "{'num_cases': 4, 'spacing': 3.0, 'num_missing': 1}",
        "--backbone",
        backbone,
        "--backbone_size",
        "tiny",
        "--roi_size",
        "[32,32,32]",
        "--num_workers",
        "0",
        "--epochs",
        str(epochs),
        *run_dirs(out / "models", out / "logs"),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["uniformer", "unet3d"])
def test_train_with_missing_modalities_saves_encoder_and_templates(tmp_path, backbone, monkeypatch):
    monkeypatch.setenv("MMPT_CACHE_DIR", str(tmp_path / "cache"))
    proc = run_bundle(TRAIN, *tiny(tmp_path, 3, backbone))
    log = proc.stdout + proc.stderr
    assert "loss_cl" not in log.split("Epoch: 3/3")[0] and "loss_cl" in log.split("Epoch: 3/3")[1]  # from epoch 3
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert any(k.startswith("backbone.encoder.") for k in state)
    assert state["templates._extra_state"]["modalities"] == ["t1", "t1ce", "t2", "flair"]
    assert state["templates.templates"].abs().sum() > 0  # trained away from the zero initialisation
    exported = sorted(p.name for p in (tmp_path / "models" / "templates").glob("*.nii.gz"))
    assert exported == ["template_flair.nii.gz", "template_t1.nii.gz", "template_t1ce.nii.gz", "template_t2.nii.gz"]
    assert nib.load(tmp_path / "models" / "templates" / "template_t1.nii.gz").shape == tuple(
        state["templates.templates"].shape[2:]
    )
    # the template preview: one TensorBoard image per epoch, a row per modality
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = []
    for f in (tmp_path / "logs").glob("**/events.out.tfevents.*"):
        events = EventAccumulator(str(f), size_guidance={"images": 0})
        events.Reload()
        if "templates/t1|t1ce|t2|flair" in events.Tags()["images"]:
            steps += [e.step for e in events.Images("templates/t1|t1ce|t2|flair")]
    assert sorted(steps) == [1, 2, 3]


@pytest.mark.slow
def test_resume_keeps_the_templates(tmp_path, monkeypatch):
    monkeypatch.setenv("MMPT_CACHE_DIR", str(tmp_path / "cache"))
    run_bundle(TRAIN, *tiny(tmp_path, 2))
    before = torch.load(tmp_path / "models" / "checkpoints" / "checkpoint_epoch=2.pt", weights_only=True)
    templates = before["network"]["templates.templates"]
    assert templates.abs().sum() > 0
    proc = run_bundle(TRAIN, *tiny(tmp_path, 3))
    assert "resumed from" in proc.stdout + proc.stderr
    after = torch.load(tmp_path / "models" / "checkpoints" / "checkpoint_epoch=3.pt", weights_only=True)
    # one more epoch moved the templates a little from where they were, not from zero
    delta = (after["network"]["templates.templates"] - templates).abs().sum()
    assert 0 < delta < templates.abs().sum()


@pytest.mark.slow
def test_multi_gpu_config_runs_ddp_on_two_cpu_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("MMPT_CACHE_DIR", str(tmp_path / "cache"))
    proc = run_bundle([TRAIN, MULTI_GPU], *tiny(tmp_path, 1), "--batch_size", "1", torchrun=2)
    assert "DDP replicas identical after iteration" in proc.stdout + proc.stderr  # SelfSupervisedTrainer, templates
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state) and "templates.templates" in state


@pytest.mark.slow
def test_inference_extracts_encoder_features(tmp_path, monkeypatch):
    monkeypatch.setenv("MMPT_CACHE_DIR", str(tmp_path / "cache"))
    run_bundle(TRAIN, *tiny(tmp_path, 1))
    demo = tiny(tmp_path, 1)[:2]
    proc = run_bundle(
        "bundles/brainmvp/configs/inference.json",
        *demo,
        "--backbone_size",
        "tiny",
        "--roi_size",
        "[32,32,32]",
        "--modality",
        "flair",
        *run_dirs(tmp_path / "models", tmp_path / "eval"),
    )
    assert "pre-trained encoder tensors" in proc.stdout + proc.stderr
    rows = (tmp_path / "eval" / "features.csv").read_text().splitlines()
    assert rows and all(len(r.split(",")) == 1 + 64 for r in rows)  # file name + the tiny UniFormer's 64 features
