"""m2mae_cls through the real runner: a linear probe leaves the m2mae encoder untouched, fine-tuning changes it;
evaluation reports AUC / accuracy / macro F1 that match a hand computation; inference writes class + probabilities."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_VIT, bundle_command, run_bundle, run_dirs
from monai.bundle import ConfigParser

from common.networks.vit_classifier import ViTClassifier

CONFIGS = REPO / "bundles" / "m2mae_cls" / "configs"
TRAIN, EVALUATE, INFERENCE, MULTI_GPU = (
    f"bundles/m2mae_cls/configs/{n}.json" for n in ("train", "evaluate", "inference", "multi_gpu_train")
)
TINY = [*TINY_VIT, "--num_workers", "0"]
MODALITIES = ("t1", "t1ce", "t2", "flair")


# ---- hand computations (no sklearn) ----


def _auc(scores: list[float], positive: list[bool]) -> float:
    """Share of (positive, negative) pairs ranked correctly, ties counting one half."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    return sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))


def _macro_f1(pred: list[int], true: list[int], num_classes: int) -> float:
    f1 = []
    for c in range(num_classes):
        tp = sum(p == c and t == c for p, t in zip(pred, true))
        fp = sum(p == c and t != c for p, t in zip(pred, true))
        fn = sum(p != c and t == c for p, t in zip(pred, true))
        f1.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(f1) / num_classes


# ---- fixtures ----


@pytest.fixture(scope="module")
def cls_datalist(tmp_path_factory, demo_dataset) -> Path:
    """The demo cases in the user-facing convention: an integer ``label`` per case (the demo's tumour grade).

    The 4-case demo set validates on one case, which leaves AUC undefined; here two cases of each grade train
    and validate (the same two are the testing list)."""
    cases = [*(d := json.loads(demo_dataset.read_text()))["training"], *d["validation"]]
    entry = lambda e: {"subject_id": e["subject_id"], **{m: e[m] for m in MODALITIES}}  # noqa: E731
    content = {
        "training": [{**entry(e), "label": e["class_label"]} for e in cases[:2]],
        "validation": [{**entry(e), "label": e["class_label"]} for e in cases[2:]],
        "testing": [entry(e) for e in cases[2:]],
    }
    assert sorted(e["label"] for e in content["validation"]) == [0, 1]
    path = tmp_path_factory.mktemp("cls") / "grades.json"
    path.write_text(json.dumps(content))
    return path


@pytest.fixture(scope="module")
def data_args(demo_dataset, cls_datalist) -> list[str]:
    return ["--dataset_dir", str(demo_dataset.parent), "--datalist", str(cls_datalist)]


def _train(out: Path, data_args: list[str], pretrained: Path, probe: bool) -> subprocess.CompletedProcess:
    return run_bundle(
        TRAIN,
        *TINY,
        *data_args,
        "--epochs",
        "1",
        "--linear_probe",
        str(probe),
        "--pretrained_ckpt",
        str(pretrained),
        *run_dirs(out / "models", out / "logs"),
    )


def _encoder_unchanged(pretrained: Path, checkpoint: Path) -> bool:
    before = torch.load(pretrained, weights_only=True)
    after = torch.load(checkpoint, weights_only=True)["network"]
    encoder = [k for k in after if k.startswith("vit.")]
    assert len(encoder) == 161
    return all(torch.equal(before[k], after[k]) for k in encoder)


def _optimised(checkpoint: Path) -> int:
    """How many tensors the optimiser updates."""
    return sum(len(g["params"]) for g in torch.load(checkpoint, weights_only=True)["optimizer"]["param_groups"])


# ---- tests ----


def test_a_packaged_bundle_carries_its_helpers():
    sys.path.insert(0, str(REPO / "tools"))
    import package_bundle

    files = {p.relative_to(REPO).as_posix() for p in package_bundle.common_closure(CONFIGS)}
    assert {
        "common/engines/classification.py",
        "common/engines/metrics.py",
        "common/networks/vit_classifier.py",
        "common/engines/checkpoint.py",
        "common/data/datalist.py",
    } <= files


class _FixedLogits(torch.nn.Module):
    """A stand-in network: case ``i`` (its image holds ``i``) gets row ``i`` of ``logits``."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x.flatten(1)[:, 0].long()]


def test_validation_metrics_match_a_hand_computation():
    """The config's own post-processing and metric objects, fed fixed 3-class predictions through its evaluator."""
    probs = torch.tensor(
        [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.7], [0.2, 0.3, 0.5], [0.3, 0.6, 0.1], [0.5, 0.1, 0.4]]
    )
    true = [0, 1, 2, 1, 1, 2]  # predicted (arg-max): 0, 1, 2, 2, 1, 0 -> 4 of 6 right
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")])
    parser.update(
        {
            "num_classes": 3,
            "device": "$torch.device('cpu')",
            "network": _FixedLogits(probs.log()),
            "validate#handlers": [],
            "validate#dataloader": [
                {"image": torch.full((1, 1, 1, 1, 1), float(i)), "label": torch.tensor([t])} for i, t in enumerate(true)
            ],
        }
    )
    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    metrics = evaluator.state.metrics
    # accuracy: share of cases whose arg-max is right (not the mean per-class recall, 13/18, nor a per-element score)
    assert metrics["val_acc"] == pytest.approx(4 / 6)
    # macro F1: class 0 P 1/2 R 1 -> 2/3; class 1 P 1 R 2/3 -> 4/5; class 2 P 1/2 R 1/2 -> 1/2
    assert metrics["val_f1"] == pytest.approx((2 / 3 + 4 / 5 + 1 / 2) / 3)
    assert metrics["val_f1"] == pytest.approx(_macro_f1([0, 1, 2, 2, 1, 0], true, 3))
    # macro one-vs-rest AUC: class 0 1, class 1 9/9, class 2 7/8 (0.4 loses to 0.5)
    assert metrics["val_auc"] == pytest.approx((1 + 1 + 7 / 8) / 3)
    assert metrics["val_auc"] == pytest.approx(
        sum(_auc(probs[:, c].tolist(), [t == c for t in true]) for c in range(3)) / 3
    )


@pytest.mark.slow
def test_linear_probe_keeps_the_encoder_then_evaluate_and_infer(tmp_path, data_args, cls_datalist, tiny_m2mae_ckpt):
    proc = _train(tmp_path, data_args, tiny_m2mae_ckpt, probe=True)
    assert "loaded 161 of 161 pre-trained encoder tensors ('vit.*')" in proc.stdout + proc.stderr
    checkpoint = tmp_path / "models" / "checkpoints" / "probe" / "checkpoint_epoch=1.pt"
    assert _encoder_unchanged(tiny_m2mae_ckpt, checkpoint)
    assert _optimised(checkpoint) == 4  # the layer norm and the linear head
    assert (tmp_path / "models" / "model.pt").is_file()

    run_bundle(
        [TRAIN, EVALUATE],
        *TINY,
        *data_args,
        *run_dirs(tmp_path / "models", tmp_path / "eval"),
    )
    metrics = {k: float(v) for k, v in csv.reader((tmp_path / "eval" / "metrics.csv").open())}
    assert set(metrics) == {"val_auc", "val_acc", "val_f1"}

    run_bundle(INFERENCE, *TINY, *data_args, *run_dirs(tmp_path / "models", tmp_path / "inf"))
    rows = list(csv.reader((tmp_path / "inf" / "predictions.csv").open()))
    testing = json.loads(cls_datalist.read_text())["testing"]
    assert [r[0] for r in rows] == [e["subject_id"] for e in testing]
    for _, cls, *probs in rows:  # subject, predicted class, one probability per class
        assert len(probs) == 2 and sum(map(float, probs)) == pytest.approx(1, abs=1e-5)
        assert int(float(cls)) == max(range(2), key=lambda c: float(probs[c]))

    # the same model on the same cases: evaluate's numbers follow from inference's probabilities
    true = {e["subject_id"]: e["label"] for e in json.loads(cls_datalist.read_text())["validation"]}
    labels, pred, p1 = [true[r[0]] for r in rows], [int(float(r[1])) for r in rows], [float(r[3]) for r in rows]
    assert metrics["val_acc"] == pytest.approx(sum(p == t for p, t in zip(pred, labels)) / len(rows))
    assert metrics["val_f1"] == pytest.approx(_macro_f1(pred, labels, 2))
    assert metrics["val_auc"] == pytest.approx(_auc(p1, [t == 1 for t in labels]))


@pytest.mark.slow
def test_fine_tuning_updates_the_encoder(tmp_path, data_args, tiny_m2mae_ckpt):
    _train(tmp_path, data_args, tiny_m2mae_ckpt, probe=False)
    checkpoint = tmp_path / "models" / "checkpoints" / "finetune" / "checkpoint_epoch=1.pt"
    assert not _encoder_unchanged(tiny_m2mae_ckpt, checkpoint)
    every_parameter = list(ViTClassifier(4, 32, 16, hidden_size=48, mlp_dim=96, num_heads=4).parameters())
    assert _optimised(checkpoint) == len(every_parameter)


@pytest.mark.slow
def test_multi_gpu_fine_tuning_runs_ddp_on_two_cpu_processes(tmp_path, data_args, tiny_m2mae_ckpt):
    """Fine-tuning under DDP: MONAI's ViT blocks hold an unused cross-attention norm, so DDP must allow unused
    parameters; checkpoints are saved unwrapped (no ``module.``)."""
    proc = run_bundle(
        [TRAIN, MULTI_GPU],
        *TINY,
        *data_args,
        "--epochs",
        "1",
        "--batch_size",
        "1",
        "--linear_probe",
        "False",
        "--pretrained_ckpt",
        str(tiny_m2mae_ckpt),
        *run_dirs(tmp_path / "models", tmp_path / "logs"),
        torchrun=2,
    )
    assert "DDP replicas identical after iteration" in proc.stdout + proc.stderr  # SupervisedTrainer under DDP
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert "head.weight" in state and not any(k.startswith("module.") for k in state)
    assert not _encoder_unchanged(
        tiny_m2mae_ckpt, tmp_path / "models" / "checkpoints" / "finetune" / "checkpoint_epoch=1.pt"
    )


def _fails(tmp_path: Path, *overrides: str) -> str:
    cmd = bundle_command(
        TRAIN,
        *TINY,
        "--epochs",
        "1",
        *run_dirs(tmp_path / "models", tmp_path / "logs"),
        *overrides,
    )
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and not (tmp_path / "models" / "model.pt").exists()
    return proc.stderr


@pytest.mark.slow
def test_wrong_encoder_keys_fail_naming_them(tmp_path, data_args):
    bad = tmp_path / "bad.pt"
    torch.save({"encoder.stem.weight": torch.zeros(1)}, bad)
    err = _fails(tmp_path, *data_args, "--pretrained_ckpt", str(bad))
    assert "does not match the encoder" in err and "vit.patch_embedding.patch_embeddings.weight" in err


@pytest.mark.slow
def test_a_segmentation_path_as_label_is_refused_with_the_fix(tmp_path, demo_dataset, tiny_m2mae_ckpt):
    """The demo folder's own datalist: its ``label`` is a segmentation file, its class is ``class_label``."""
    err = _fails(tmp_path, "--dataset_dir", str(demo_dataset.parent), "--pretrained_ckpt", str(tiny_m2mae_ckpt))
    assert "DemoBraTS_000: 'label' is '" in err and "--label_key class_label" in err
