"""Does pre-training help? Pre-train briefly, fine-tune from it and from scratch under the same budget and seed.

Every step is the real bundle run through ``python -m monai.bundle run`` (the same commands a user types), in a
work folder, on the embedded demo data unless ``--dataset_dir`` / ``--datalist`` say otherwise. The validation
metrics of both fine-tuning runs are printed and written to ``<work_dir>/comparison.json``.

Two kinds of method:

* 3D (``m2mae``, ``brainmvp``): both stages get the same crop (``--roi_size``) and encoder size (``--size``).
* 2D (``mrm``): both stages keep their bundle's own image and encoder sizes (the ``mrm`` demo's 12-block width-192
  ViT at 96 px fills every ``mrm_*`` demo network; on real data both default to ViT-B/16 at 224), so
  ``--roi_size`` and ``--size`` do not apply and are refused. One pre-training serves several downstream tasks
  (``--downstream mrm_aptos,mrm_rfmid``), or none runs at all when ``--pretrained_ckpt`` names an existing one.

Examples::

    python tools/compare_pretraining.py                      # m2mae -> m2mae_seg, CPU-sized defaults
    python tools/compare_pretraining.py --pretrain_epochs 100 --finetune_epochs 50 --roi_size 96 --size base
    python tools/compare_pretraining.py --pretrain brainmvp --downstream brainmvp_seg --work_dir runs_brainmvp
    python tools/compare_pretraining.py --pretrain mrm --downstream mrm_aptos,mrm_rfmid,mrm_palm,mrm_crp,mrm_glioma \
        --pretrain_epochs 100 --finetune_epochs 10 --work_dir /tmp/compare_mrm
    python tools/compare_pretraining.py --pretrain mrm --downstream mrm_glioma --pretrained_ckpt runs/mrm/models/model.pt
"""

from __future__ import annotations

import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import fire

REPO = Path(__file__).resolve().parents[1]

# encoder sizes shared by the pre-training and the downstream bundle (both must agree), per 3D method
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
# 2D methods: image and encoder sizes stay each bundle's own (no roi_size / size keys are passed)
METHODS_2D = ("mrm",)
# the metric each downstream bundle selects its model.pt by, and whether higher is better
KEY_METRICS = {
    "mrm_aptos": ("val_qwk", True),
    "mrm_rfmid": ("val_auc", True),
    "mrm_palm": ("val_mean_dice", True),
    "mrm_crp": ("val_mse", False),
    "mrm_glioma": ("val_auc", True),
    "m2mae_seg": ("val_mean_dice", True),
    "brainmvp_seg": ("val_mean_dice", True),
}


def _run(config_files: list[str], overrides: dict, log: Path) -> dict[str, float]:
    """Run one bundle step in a subprocess; return its wall and CPU seconds (user + system of the child)."""
    files = "[" + ",".join(f"'{f}'" for f in config_files) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files]
    for k, v in overrides.items():
        cmd += [f"--{k}", json.dumps(v) if not isinstance(v, str) else v]
    print("$", " ".join(cmd[1:]), flush=True)
    start, before = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"step failed ({proc.returncode}); see {log}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(time.time() - start, 1), "cpu_s": round(cpu, 1)}


def _metrics(path: Path) -> dict[str, float]:
    return {k: float(v) for k, v in csv.reader(path.open())}


def _names(downstream) -> list[str]:
    if isinstance(downstream, str):
        downstream = downstream.split(",")
    return [d.strip() for d in downstream if d.strip()]


def _epochs(finetune_epochs, name: str) -> int:
    if isinstance(finetune_epochs, dict):
        if name not in finetune_epochs:
            raise SystemExit(f"--finetune_epochs names no budget for {name}: {finetune_epochs}")
        return int(finetune_epochs[name])
    return int(finetune_epochs)


def compare(
    pretrain: str = "m2mae",
    downstream: str | list[str] = "m2mae_seg",
    work_dir: str = "compare_runs",
    pretrain_epochs: int = 30,
    finetune_epochs: int | dict = 30,
    roi_size: int | None = None,
    size: str | None = None,
    seed: int = 0,
    dataset_dir: str | None = None,
    datalist: str | None = None,
    num_workers: int = 0,
    pretrained_ckpt: str | None = None,
) -> dict:
    """Run pre-training, then fine-tune from it and from scratch; return both sets of validation metrics.

    Args:
        pretrain: pre-training bundle name under ``bundles/``.
        downstream: downstream bundle name(s) (each ``evaluate.json`` writes ``metrics.csv``): one name, a
            comma-separated list or a list; every task is fine-tuned from the same pre-training checkpoint.
        work_dir: folder for checkpoints, logs and ``comparison.json``.
        pretrain_epochs, finetune_epochs: budgets (the same fine-tuning budget for both arms of a task;
            ``finetune_epochs`` may be a dict ``{downstream: epochs}`` to give each task its own).
        roi_size: crop edge for both stages (3D methods only; default 64).
        size: encoder size, one of ``tiny``, ``small``, ``base`` (3D methods only, default ``tiny``; M2-MAE: ViT
            widths 96 / 384 / 768 (ViT-B, the paper's); BrainMVP: tiny or UniFormer-S).
        seed: one seed for everything.
        dataset_dir, datalist: data for the pre-training (default: the embedded demo set). For a 3D method they
            are passed to the downstream bundle too (one data set, both stages); a 2D downstream task reads its
            own demo set (its labelled data differs from the pre-training pairs).
        num_workers: data-loading workers.
        pretrained_ckpt: an existing pre-training ``model.pt``; the pre-training step is skipped.
    """
    names = _names(downstream)
    if not names:
        raise SystemExit("--downstream names no bundle")
    for name in names:
        if not name.startswith(f"{pretrain}_"):
            raise SystemExit(f"{name} is not a downstream bundle of {pretrain} (expected {pretrain}_*)")
    two_d = pretrain in METHODS_2D
    if two_d and (roi_size is not None or size is not None):
        raise SystemExit(
            f"--roi_size / --size are 3D knobs; the 2D {pretrain} bundles keep their own image and encoder sizes "
            "(the demo's fit each other)"
        )
    if not two_d and pretrain not in SIZES:
        raise SystemExit(f"unknown pre-training method {pretrain!r}: one of {sorted(SIZES) + list(METHODS_2D)}")
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    shared = {"seed": seed, "num_workers": num_workers}
    if not two_d:
        roi_size = 64 if roi_size is None else roi_size
        size = "tiny" if size is None else size
        shared = {**SIZES[pretrain][size], "roi_size": [roi_size] * 3, **shared}
    data = {}
    if dataset_dir:
        data["dataset_dir"] = dataset_dir
    if datalist:
        data["datalist"] = datalist
    downstream_shared = shared if two_d else {**shared, **data}
    bundles = REPO / "bundles"
    times: dict[str, dict] = {}
    if pretrained_ckpt:
        ckpt = str(Path(pretrained_ckpt).resolve())
        if not Path(ckpt).is_file():
            raise SystemExit(f"--pretrained_ckpt {ckpt} does not exist")
    else:
        pre_out = work / pretrain
        ckpt = str(pre_out / "models" / "model.pt")
        times["pretrain"] = _run(
            [str(bundles / pretrain / "configs" / "train.json")],
            {
                **shared,
                **data,
                "epochs": pretrain_epochs,
                "ckpt_dir": str(pre_out / "models"),
                "output_dir": str(pre_out / "logs"),
            },
            work / f"{pretrain}.log",
        )
    settings = {**shared, **data, "pretrain_epochs": None if pretrained_ckpt else pretrain_epochs}
    if not two_d:
        settings["size"] = size
    reports = {}
    for name in names:  # one after another; each task's report is written as soon as it is measured
        rep = _finetune_both(name, ckpt, _epochs(finetune_epochs, name), downstream_shared, work)
        rep.update(pretrain=pretrain, pretrained_ckpt=ckpt, cpu_threads=os.cpu_count())
        rep["settings"] = {**settings, **rep["settings"]}
        if times:
            rep["seconds"] = {"pretrain_s": times["pretrain"]["wall_s"], **rep["seconds"]}
            rep["cpu_seconds"] = {"pretrain_s": times["pretrain"]["cpu_s"], **rep["cpu_seconds"]}
        (work / f"comparison_{name}.json").write_text(json.dumps(rep, indent=2))
        reports[name] = rep
    if len(names) == 1:
        report = reports[names[0]]
    else:
        report = {
            "pretrain": pretrain,
            "pretrained_ckpt": ckpt,
            "pretrain_seconds": times.get("pretrain"),
            "tasks": reports,
        }
    (work / "comparison.json").write_text(json.dumps(report, indent=2))
    for name, rep in reports.items():
        _print(name, rep)
    print(f"\nwritten to {work / 'comparison.json'}")
    return report


def _finetune_both(name: str, ckpt: str, epochs: int, shared: dict, work: Path) -> dict:
    """Fine-tune ``name`` from ``ckpt`` and from scratch (``pretrained_ckpt ""``), same budget; evaluate both."""
    bundles = REPO / "bundles"
    train = str(bundles / name / "configs" / "train.json")
    results, seconds, cpu = {}, {}, {}
    for arm, arm_ckpt in (("pretrained", ckpt), ("scratch", "")):
        out = work / f"{name}_{arm}"
        common = {**shared, "ckpt_dir": str(out / "models")}
        t = _run(
            [train],
            {**common, "epochs": epochs, "pretrained_ckpt": arm_ckpt, "output_dir": str(out / "logs")},
            work / f"{name}_{arm}.log",
        )
        e = _run(
            [train, str(bundles / name / "configs" / "evaluate.json")],
            {**common, "output_dir": str(out / "eval")},
            work / f"{name}_{arm}_eval.log",
        )
        seconds[f"{arm}_s"], cpu[f"{arm}_s"] = t["wall_s"], t["cpu_s"]
        seconds[f"{arm}_eval_s"], cpu[f"{arm}_eval_s"] = e["wall_s"], e["cpu_s"]
        results[arm] = _metrics(out / "eval" / "metrics.csv")
    key, higher = KEY_METRICS.get(name, (None, True))
    return {
        "downstream": name,
        "settings": {"finetune_epochs": epochs},
        "key_metric": key,
        "higher_is_better": higher,
        "results": results,
        "seconds": seconds,
        "cpu_seconds": cpu,
    }


def _print(name: str, rep: dict) -> None:
    res = rep["results"]
    keys = sorted(set(res["pretrained"]) & set(res["scratch"]))
    print(f"\n{name} ({rep['settings']['finetune_epochs']} epochs each; key metric {rep['key_metric']})")
    print(f"{'metric':<24}{'pretrained':>12}{'scratch':>12}")
    for k in keys:
        print(f"{k:<24}{res['pretrained'][k]:>12.4f}{res['scratch'][k]:>12.4f}")


if __name__ == "__main__":
    fire.Fire(compare, serialize=lambda report: None)  # the tables above and comparison.json hold the report
