"""Does pre-training help? Pre-train briefly, fine-tune from it and from scratch under the same budget and seed.

Every step is the real bundle run through ``python -m monai.bundle run`` (the same commands a user types), in a
work folder, on the embedded demo data unless ``--dataset_dir`` / ``--datalist`` say otherwise. The validation
metrics of both fine-tuning runs are printed and written to ``<work_dir>/comparison.json``.

Examples::

    python tools/compare_pretraining.py                      # m2mae -> m2mae_seg, CPU-sized defaults
    python tools/compare_pretraining.py --pretrain_epochs 100 --finetune_epochs 50 --roi_size 96 --size base
    python tools/compare_pretraining.py --pretrain brainmvp --downstream brainmvp_seg --work_dir runs_brainmvp
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import fire

REPO = Path(__file__).resolve().parents[1]

# encoder sizes shared by the pre-training and the downstream bundle (both must agree), per method
SIZES = {
    "m2mae": {
        "tiny": {"hidden_size": 96, "mlp_dim": 384, "num_heads": 4},
        "small": {"hidden_size": 384, "mlp_dim": 1536, "num_heads": 6},
        "base": {"hidden_size": 768, "mlp_dim": 3072, "num_heads": 12},
    },
    "brainmvp": {
        "tiny": {"backbone_size": "tiny"},
        "small": {"backbone_size": "small"},
        "base": {"backbone_size": "small"},
    },
}


def _run(config_files: list[str], overrides: dict, log: Path) -> float:
    files = "[" + ",".join(f"'{f}'" for f in config_files) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files]
    for k, v in overrides.items():
        cmd += [f"--{k}", json.dumps(v) if not isinstance(v, str) else v]
    print("$", " ".join(cmd[1:]), flush=True)
    start = time.time()
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"step failed ({proc.returncode}); see {log}")
    return time.time() - start


def _metrics(path: Path) -> dict[str, float]:
    return {k: float(v) for k, v in csv.reader(path.open())}


def compare(
    pretrain: str = "m2mae",
    downstream: str = "m2mae_seg",
    work_dir: str = "compare_runs",
    pretrain_epochs: int = 30,
    finetune_epochs: int = 30,
    roi_size: int = 64,
    size: str = "tiny",
    seed: int = 0,
    dataset_dir: str | None = None,
    datalist: str | None = None,
    num_workers: int = 0,
) -> dict:
    """Run pre-training, then fine-tune from it and from scratch; return both sets of validation metrics.

    Args:
        pretrain: pre-training bundle name under ``bundles/``.
        downstream: downstream bundle name (its ``evaluate.json`` writes ``metrics.csv``).
        work_dir: folder for checkpoints, logs and ``comparison.json``.
        pretrain_epochs, finetune_epochs: budgets (the same fine-tuning budget for both arms).
        roi_size: crop edge for both stages.
        size: encoder size, one of ``tiny``, ``small``, ``base`` (M2-MAE: ViT widths 96 / 384 / 768 (ViT-B, the
            paper's); BrainMVP: tiny or UniFormer-S).
        seed: one seed for everything.
        dataset_dir, datalist: data for both stages (default: the embedded demo set).
        num_workers: data-loading workers.
    """
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    shared = {**SIZES[pretrain][size], "roi_size": [roi_size] * 3, "seed": seed, "num_workers": num_workers}
    if dataset_dir:
        shared["dataset_dir"] = dataset_dir
    if datalist:
        shared["datalist"] = datalist
    bundles = REPO / "bundles"
    pre_out = work / pretrain
    times = {
        "pretrain_s": _run(
            [str(bundles / pretrain / "configs" / "train.json")],
            {
                **shared,
                "epochs": pretrain_epochs,
                "ckpt_dir": str(pre_out / "models"),
                "output_dir": str(pre_out / "logs"),
            },
            work / f"{pretrain}.log",
        )
    }
    results = {}
    for arm, ckpt in (("pretrained", str(pre_out / "models" / "model.pt")), ("scratch", "")):
        out = work / f"{downstream}_{arm}"
        train = str(bundles / downstream / "configs" / "train.json")
        common = {**shared, "ckpt_dir": str(out / "models")}
        times[f"{arm}_s"] = _run(
            [train],
            {**common, "epochs": finetune_epochs, "pretrained_ckpt": ckpt, "output_dir": str(out / "logs")},
            work / f"{downstream}_{arm}.log",
        )
        _run(
            [train, str(bundles / downstream / "configs" / "evaluate.json")],
            {**common, "output_dir": str(out / "eval")},
            work / f"{downstream}_{arm}_eval.log",
        )
        results[arm] = _metrics(out / "eval" / "metrics.csv")
    report = {
        "pretrain": pretrain,
        "downstream": downstream,
        "settings": {**shared, "pretrain_epochs": pretrain_epochs, "finetune_epochs": finetune_epochs, "size": size},
        "results": results,
        "seconds": times,
        "cpu_threads": os.cpu_count(),
    }
    (work / "comparison.json").write_text(json.dumps(report, indent=2))
    keys = sorted(set(results["pretrained"]) & set(results["scratch"]))
    print(f"\n{'metric':<20}{'pretrained':>12}{'scratch':>12}")
    for k in keys:
        print(f"{k:<20}{results['pretrained'][k]:>12.4f}{results['scratch'][k]:>12.4f}")
    print(f"\nwritten to {work / 'comparison.json'}")
    return report


if __name__ == "__main__":
    fire.Fire(compare)
