"""GiMP data for the bundles: patients joined from feature bags, class labels and expression; checked; collated.

One call, :func:`gimp_data`, builds every split at once, because the expression standardisation is fitted on the
training split and applied to the others (or taken from a checkpoint, ``expression_stats``, so a frozen GroupMSA
sees inputs scaled as in its own training). Sources, in this order:

* ``feature_dir`` + ``csv`` (+ ``expression``): a CLAM feature folder (``h5_files/``, ``pt_files/``) or a folder of
  TransMIL ``<slide_id>.pt`` bags; ``csv`` is CLAM's dataset CSV (``case_id, slide_id, label``) or a TransMIL fold
  CSV (``train, train_label, val, val_label, test, test_label``: one slide = one case); ``splits_csv`` optionally a
  CLAM ``splits_k.csv`` (columns ``train, val, test`` of slide ids) or a TransMIL fold CSV beside a CLAM CSV.
  Without a split file the cases are split 60 / 20 / 20 stratified by class, in ``case_id`` order (deterministic).
  ``feature_dir`` may be omitted where no bag is needed (``need_bags=False``: GroupMSA alone).
* ``datalist``: a JSON with ``training`` / ``validation`` / ``testing`` lists of ``{"case_id", "bag": [paths]
  (or CLAM's ``h5_files`` / ``pt_files``), "label"}``, optional top-level ``expression`` (a file) and ``classes``;
  relative paths are relative to the JSON (the embedded demo writes this layout).
* neither: the embedded demo (:func:`~common.data.demo_gimp.demo_gimp_datalist` with the ``demo`` settings).

Entries are ``{"case_id", "bag": [paths], "label": int, "label_name", "expression": float32 [G]}`` (``bag`` and
``expression`` only where needed). Every join problem (a case without slide file, a case without expression row, a
label that is not a class) is collected in ``problems``; :func:`check_gimp_data` adds the file checks (empty bag,
wrong feature width, NaN features, expression of the wrong length) and raises once, naming each file and problem.

Example::

    data = gimp_data(feature_dir="features/", csv="dataset.csv", expression="rna_clean.csv")
    check_gimp_data(data, feature_dim=1024)
    train = Dataset(data["training"], transform=LoadWSIBagd("bag"))
    loader = DataLoader(train, batch_size=4, collate_fn=collate_bags)
"""

from __future__ import annotations

import csv as _csv
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.data.genetics import align_features, apply_feature_stats, fit_feature_stats
from common.data.validate import Problem, raise_for_problems
from common.data.wsi_features import (
    FEATURE_DIM,
    _label_index,
    check_bags,
    patient_bags,
    read_clam_csv,
    read_transmil_folds,
)

__all__ = [
    "SPLITS",
    "gimp_data",
    "check_gimp_data",
    "collate_bags",
    "stats_to_tensors",
    "stored_expression_stats",
    "expression_contract",
]
logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("training", "validation", "testing")
_FOLD_NAMES = {"train": "training", "val": "validation", "test": "testing"}


def _columns(path: str | os.PathLike) -> list[str]:
    with open(path, newline="") as f:
        return [c.strip() for c in next(_csv.reader(f), [])]


def _is_folds(path: str | os.PathLike) -> bool:
    return {"train", "train_label"} <= set(_columns(path))


def _read_clam_splits(path: str | os.PathLike) -> dict[str, str]:
    """``slide_id -> split`` from a CLAM ``splits_k.csv`` (columns ``train, val, test`` of slide ids)."""
    cols = set(_columns(path))
    if not {"train", "val", "test"} <= cols:
        raise ValueError(f"{path}: a CLAM split CSV needs columns train, val, test (found {sorted(cols)})")
    out: dict[str, str] = {}
    with open(path, newline="") as f:
        for row in _csv.DictReader(f):
            for col, split in _FOLD_NAMES.items():
                sid = (row.get(col) or "").strip()
                if sid:
                    out[sid] = split
    return out


def _stratify(entries: list[dict]) -> dict[str, list[dict]]:
    """60 / 20 / 20 per class in ``case_id`` order (the demo's rule)."""
    from common.data.demo_gimp import stratified_split

    entries = sorted(entries, key=lambda e: e["case_id"])
    parts = stratified_split([e["label"] for e in entries])
    return {s: [e for e, p in zip(entries, parts) if p == s] for s in SPLITS}


def _cases_without_bags(csv: str, label_dict: Mapping[str, int] | None) -> tuple[list[dict], dict[str, str]]:
    """Cases (and the split of each slide, from a fold CSV) from the CSV alone, for GroupMSA without features."""
    if _is_folds(csv):
        folds = read_transmil_folds(csv)
        rows = [{"case_id": s, "slide_id": s, "label": lab} for pairs in folds.values() for s, lab in pairs]
        split_of = {s: _FOLD_NAMES[name] for name, pairs in folds.items() for s, _ in pairs}
    else:
        rows, split_of = read_clam_csv(csv), {}
    index = _label_index([r["label"] for r in rows], label_dict)
    cases: dict[str, dict] = {}
    for r in rows:
        e = cases.setdefault(r["case_id"], {"case_id": r["case_id"], "slide_ids": [], "label_name": r["label"]})
        e["slide_ids"].append(r["slide_id"])
    for e in cases.values():
        e["label"] = index.get(e["label_name"])
    return sorted(cases.values(), key=lambda e: e["case_id"]), split_of


def _from_csv(
    feature_dir: str | None,
    csv: str,
    splits_csv: str | None,
    label_dict: Mapping[str, int] | None,
    need_bags: bool,
) -> tuple[dict[str, list[dict]], list[Problem]]:
    """Splits of cases from a CLAM / TransMIL CSV (+ split file), with bag files when ``need_bags``."""
    problems: list[Problem] = []
    folds = csv if _is_folds(csv) else (splits_csv if splits_csv and _is_folds(splits_csv) else None)
    cases_csv = None if folds == csv else csv
    if need_bags and feature_dir is None:
        raise ValueError("--feature_dir is needed with --csv: the folder of CLAM h5_files/pt_files or TransMIL bags")
    if need_bags and folds is not None:
        splits = {}
        for name, split in _FOLD_NAMES.items():
            entries, found = patient_bags(feature_dir, cases_csv, folds, name, label_dict)
            splits[split] = entries
            problems += [p for p in found if p not in problems]
        return splits, problems
    if need_bags:
        entries, problems = patient_bags(feature_dir, cases_csv, None, None, label_dict)
        split_of: dict[str, str] = {}
    else:
        entries, split_of = _cases_without_bags(csv, label_dict)
        if folds is not None and folds != csv:
            split_of = {s: _FOLD_NAMES[n] for n, pairs in read_transmil_folds(folds).items() for s, _ in pairs}
    if splits_csv and folds is None:
        split_of = _read_clam_splits(splits_csv)
    if not split_of:
        return _stratify(entries), problems
    splits = {s: [] for s in SPLITS}
    for e in entries:
        names = sorted({split_of[s] for s in e["slide_ids"] if s in split_of})
        if len(names) != 1:
            what = "in no split" if not names else f"in several splits {names}"
            problems.append(Problem("error", e["case_id"], str(splits_csv or csv), f"slides of this case are {what}"))
            continue
        splits[names[0]].append(e)
    return splits, problems


def _resolve(base: Path, value: Any) -> list[str]:
    paths = [value] if isinstance(value, (str, os.PathLike)) else list(value)
    return [str(p if os.path.isabs(p) else base / p) for p in paths]


def _from_datalist(datalist: str, need_bags: bool) -> tuple[dict[str, list[dict]], dict[str, Any], list[Problem]]:
    """Splits of a GiMP datalist JSON (the demo's layout); paths resolved relative to the JSON."""
    try:
        content = json.loads(Path(datalist).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{datalist}: cannot be read as a JSON datalist ({e})") from e
    base = Path(datalist).resolve().parent
    problems: list[Problem] = []
    splits: dict[str, list[dict]] = {}
    for split in SPLITS:
        splits[split] = []
        for i, raw in enumerate(content.get(split, [])):
            case = str(raw.get("case_id", raw.get("subject_id", f"{split}[{i}]")))
            entry = {"case_id": case, "label": raw.get("label"), "label_name": raw.get("class_name", raw.get("label"))}
            if need_bags:
                files = next((raw[k] for k in ("bag", "pt_files", "h5_files") if raw.get(k)), None)
                if not files:
                    problems.append(Problem("error", case, datalist, "no feature bag listed (bag / h5_files)"))
                    continue
                entry["bag"] = _resolve(base, files)
            splits[split].append(entry)
    meta = {k: content[k] for k in ("classes", "expression") if k in content}
    if "expression" in meta:
        meta["expression"] = _resolve(base, meta["expression"])[0]
    return splits, meta, problems


def stats_to_tensors(stats: Mapping[str, Any]) -> dict[str, Any]:
    """Expression statistics read back from a JSON contract (lists) as the tensors ``apply_feature_stats`` uses."""
    out = dict(stats)
    for key in ("fill", "mean", "std"):
        out[key] = torch.as_tensor(stats[key], dtype=torch.float32)
    return out


def stored_expression_stats(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """The expression statistics stored in a checkpoint's input contract (``None``: no path, or none stored).

    A frozen GroupMSA must see expression scaled exactly as in its own training, so ``gimp`` and ``gimp_nsclc``
    take the statistics from the checkpoint they start from instead of fitting new ones.
    """
    if not path or not os.path.isfile(path):
        return None
    from common.engines.contract import read_contract

    stored = (read_contract(path) or {}).get("expression")
    return None if stored is None else stats_to_tensors(stored)


def _attach_expression(
    splits: dict[str, list[dict]],
    path: str,
    stats: Mapping[str, Any] | None,
    log1p: bool,
    problems: list[Problem],
) -> dict[str, Any]:
    """Read the table, fit (training split) or reuse the statistics, give every case its standardised vector."""
    from common.data.expression import read_expression

    table = read_expression(path)
    if stats is None:
        train_ids = [e["case_id"] for e in splits["training"] if e["case_id"] in table]
        if not train_ids:
            raise ValueError(f"{path}: no training case has an expression row (ids do not join the case ids)")
        stats = fit_feature_stats(table, train_ids, log1p=log1p)
    else:
        table = align_features(table, stats["features"], what="genes")
    for split, entries in splits.items():
        kept = []
        for e in entries:
            if e["case_id"] not in table:
                problems.append(Problem("error", e["case_id"], path, f"{split} case has no expression row"))
                continue
            e["expression"] = apply_feature_stats(table.rows([e["case_id"]]), stats, path)[0].numpy()  # [G]
            kept.append(e)
        splits[split] = kept
    return dict(stats)


def gimp_data(
    feature_dir: str | None = None,
    csv: str | None = None,
    expression: str | None = None,
    datalist: str | None = None,
    splits_csv: str | None = None,
    demo: Mapping[str, Any] | None = None,
    expression_stats: Mapping[str, Any] | None = None,
    log1p: bool = True,
    label_dict: Mapping[str, int] | None = None,
    need_bags: bool = True,
    need_expression: bool = True,
    need_labels: bool = True,
) -> dict[str, Any]:
    """Every split of a GiMP dataset, joined, with the expression standardised (source rules: module docstring).

    Args:
        feature_dir: CLAM feature folder or TransMIL bag folder.
        csv: CLAM dataset CSV or TransMIL fold CSV.
        expression: expression file (any :func:`~common.data.expression.read_expression` format), rows = cases.
        datalist: a GiMP datalist JSON (instead of ``feature_dir`` / ``csv``).
        splits_csv: CLAM ``splits_k.csv`` or a TransMIL fold CSV, beside a CLAM ``csv``.
        demo: :func:`~common.data.demo_gimp.demo_gimp_datalist` arguments of the embedded demo.
        expression_stats: statistics to apply (from a checkpoint) instead of fitting them on the training split.
        log1p: ``log(1 + x)`` before the z-score when fitting (FPKM / counts; the paper's input is FPKM).
        label_dict: label text -> class index (default: numbers as themselves, text in sorted order).
        need_bags: join the feature bags (``False`` for GroupMSA alone).
        need_expression: join the expression (``False`` for the WSI-only baseline).
        need_labels: a case without a class label is an error (``False`` for inference on new patients).

    Returns:
        ``{"training", "validation", "testing", "all": [entries], "genes": [names] | None, "num_genes": int | None,
        "expression_stats": dict | None, "classes": [names] | None, "source": str, "problems": [Problem]}``.
    """
    problems: list[Problem] = []
    meta: dict[str, Any] = {}
    if feature_dir or csv:
        if not csv:
            raise ValueError("--feature_dir needs --csv: CLAM's case_id, slide_id, label CSV or a TransMIL fold CSV")
        splits, problems = _from_csv(feature_dir, csv, splits_csv, label_dict, need_bags)
        source = f"{feature_dir or ''} + {csv}"
        if not need_labels:  # inference on some patients of a feature folder: its other slides are no error
            problems = [Problem("warning", p.subject, p.file, p.message) if p.message.startswith("feature file of a")
                        else p for p in problems]  # fmt: skip
    else:
        if not datalist:
            from common.data.demo_gimp import demo_gimp_datalist

            datalist = demo_gimp_datalist(**dict(demo or {}))
        splits, meta, problems = _from_datalist(datalist, need_bags)
        source = datalist
    for split, entries in splits.items():
        for e in entries if need_labels else []:
            if e.get("label") is None:
                problems.append(Problem("error", e["case_id"], None, f"{split} case without a class label"))
    stats = None
    if need_expression:
        path = expression or meta.get("expression")
        if not path:
            raise ValueError(f"{source}: no expression file: pass --expression <file> (rows = case ids)")
        stats = _attach_expression(splits, str(path), expression_stats, log1p, problems)
    classes = meta.get("classes")
    counts = ", ".join(f"{len(splits[s])} {s}" for s in SPLITS)
    logger.info(f"GiMP data from {source}: {counts} cases" + (f", {len(stats['features'])} genes" if stats else ""))
    return {
        **splits,
        "all": [e for s in SPLITS for e in splits[s]],
        "genes": None if stats is None else list(stats["features"]),
        "num_genes": None if stats is None else len(stats["features"]),
        "expression_stats": stats,
        "classes": classes,
        "source": source,
        "problems": problems,
    }


def check_gimp_data(
    data: Mapping[str, Any],
    feature_dim: int | None = FEATURE_DIM,
    num_genes: int | None = None,
    splits: Sequence[str] = ("training", "validation"),
    check_content: bool = True,
    num_classes: int | None = None,
) -> None:
    """Stop before the first step on any problem of ``data`` (:func:`gimp_data`), naming each file and problem.

    Checks: the join problems ``gimp_data`` found (a case with no slide file, no expression row, no label), the bag
    files of ``splits`` (unreadable, not ``[N, D]``, empty, width ``!= feature_dim``, and with ``check_content``
    NaN / Inf features), the expression length against ``num_genes`` (the network's), class indices against
    ``num_classes``, and that every split checked has cases.
    """
    problems = list(data.get("problems", []))
    entries = [e for s in splits for e in data[s]]
    for s in splits:
        if not data[s]:
            problems.append(Problem("error", s, str(data.get("source")), f"the {s} split has no usable case"))
    bagged = [e for e in entries if "bag" in e]
    if bagged:
        problems += check_bags(bagged, feature_dim, check_content)
    if num_genes is not None and data.get("num_genes") is not None and data["num_genes"] != num_genes:
        problems.append(Problem("error", "expression", str(data.get("source")),
                                f"expression vectors of length {data['num_genes']}, the network expects "
                                f"{num_genes} genes (num_genes)"))  # fmt: skip
    if num_classes is not None:
        for e in entries:
            if e.get("label") is not None and not 0 <= int(e["label"]) < num_classes:
                problems.append(Problem("error", e["case_id"], None,
                                        f"class {e['label']} ({e.get('label_name')}) outside 0..{num_classes - 1}"))  # fmt: skip
    raise_for_problems(problems)


def collate_bags(batch: Sequence[Mapping[str, Any]], image: str | None = None) -> dict[str, Any]:
    """Collate patients with bags of different lengths: ``bag`` right-padded with zeros to the longest.

    Why not MONAI's ``pad_list_data_collate``: it pads the spatial dims of channel-first images, while a bag is
    ``[N, D]`` with ``N`` the patches; here the real lengths travel as ``length`` so the aggregator masks the padding.

    Args:
        batch: entries with ``bag [N_i, D]`` and/or ``expression [G]``, ``label`` and ``case_id``.
        image: also put this key's tensor under ``image``, the network input of MONAI's engines (their
            ``default_prepare_batch`` / ``PrepareBatchExtraInput`` read ``image`` and ``label``): ``"bag"`` for the
            aggregator, ``"expression"`` for GroupMSA.

    Returns:
        ``bag [B, N_max, D]``, ``length [B]``, ``expression [B, G]``, ``label [B]`` (those present) and ``case_id``.

    Example::

        >>> out = collate_bags([{"bag": torch.ones(3, 2), "label": 0}, {"bag": torch.ones(1, 2), "label": 1}])
        >>> out["bag"].shape, out["length"].tolist(), out["bag"][1, 1:].abs().sum().item()
        (torch.Size([2, 3, 2]), [3, 1], 0.0)
    """
    out: dict[str, Any] = {"case_id": [str(b.get("case_id", i)) for i, b in enumerate(batch)]}
    if "bag" in batch[0]:
        bags = [torch.as_tensor(b["bag"], dtype=torch.float32) for b in batch]
        out["bag"] = torch.nn.utils.rnn.pad_sequence(bags, batch_first=True)  # [B, N_max, D]
        out["length"] = torch.tensor([len(b) for b in bags], dtype=torch.long)
    if "expression" in batch[0]:
        out["expression"] = torch.as_tensor(np.stack([np.asarray(b["expression"]) for b in batch]), dtype=torch.float32)
    if "label" in batch[0] and batch[0]["label"] is not None:
        out["label"] = torch.as_tensor([int(b["label"]) for b in batch], dtype=torch.long)
    if image is not None:
        out["image"] = out[image]
    return out


def expression_contract(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """The expression part of an input contract: gene list, standardisation statistics and rule (JSON-able)."""
    stats = data.get("expression_stats")
    if stats is None:
        return None
    return {k: (v.tolist() if torch.is_tensor(v) else v) for k, v in stats.items()}
