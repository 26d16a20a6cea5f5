"""One page for a finished run: loss curves, the last preview images, evaluation metrics and the input contract.

    python tools/report.py --logs bundles/m2mae/logs --ckpt bundles/m2mae/models/model.pt --output report.md
    python tools/report.py --logs bundles/m2mae_seg/logs --eval bundles/m2mae_seg/eval --output seg_report.md

Reads TensorBoard's event files with TensorBoard's own reader (no TensorBoard server), draws every scalar as a
PNG curve with matplotlib's Agg canvas (no display needed), saves the newest image of each preview tag as PNG,
and writes a short Markdown page beside them (``<output stem>_files/``) that any Markdown viewer shows.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from pathlib import Path

import fire

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

__all__ = ["write_report"]


def _safe(tag: str) -> str:
    return re.sub(r"[^\w.-]+", "_", tag).strip("_")


def _events(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not log_dir.is_dir() or not any(log_dir.rglob("events.out.tfevents.*")):
        raise FileNotFoundError(f"no TensorBoard event files under {log_dir} (is it the run's --output_dir?)")
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _plot(tag: str, steps: list[int], values: list[float], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 2.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(steps, values, marker="." if len(values) < 50 else None)
    ax.set_title(tag, fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def _metrics(eval_dir: Path) -> list[tuple[str, str]]:
    path = eval_dir / "metrics.csv"
    if not path.is_file():
        return []
    text = path.read_text().splitlines()
    delimiter = "\t" if text and "\t" in text[0] else ","
    return [(row[0], row[1]) for row in csv.reader(text, delimiter=delimiter) if len(row) > 1]


def _contract(ckpt: Path) -> dict | None:
    from common.engines.contract import read_contract

    try:
        return read_contract(str(ckpt))
    except Exception:  # no contract stored: say so in the page
        return None


def write_report(logs: str, output: str = "report.md", ckpt: str = "", eval: str = "") -> str:
    """Write the page and its pictures; returns the page's path.

    Args:
        logs: the run's TensorBoard folder (its ``--output_dir``).
        output: the Markdown file to write; pictures go to ``<output stem>_files/`` beside it.
        ckpt: a checkpoint or final model whose input contract is listed (optional).
        eval: an evaluation folder with ``metrics.csv`` (optional).
    """
    acc = _events(Path(logs))
    out = Path(output)
    files = out.parent / f"{out.stem}_files"
    files.mkdir(parents=True, exist_ok=True)
    tags = acc.Tags()
    lines = [f"# Run report: `{logs}`", ""]
    scalars = sorted(tags.get("scalars", []))
    if scalars:
        lines += ["## Curves", "", "| tag | first | last | min | steps |", "|---|---|---|---|---|"]
        pictures = []
        for tag in scalars:
            events = acc.Scalars(tag)
            steps, values = [e.step for e in events], [e.value for e in events]
            lines.append(f"| `{tag}` | {values[0]:.4g} | {values[-1]:.4g} | {min(values):.4g} | {len(values)} |")
            name = f"curve_{_safe(tag)}.png"
            _plot(tag, steps, values, files / name)
            pictures.append(f"![{tag}]({files.name}/{name})")
        lines += ["", *pictures, ""]
    images = sorted(tags.get("images", []))
    if images:
        lines += ["## Previews (newest of each)", ""]
        for tag in images:
            last = acc.Images(tag)[-1]
            name = f"preview_{_safe(tag)}.png"
            (files / name).write_bytes(last.encoded_image_string)
            lines.append(f"**{tag}** (step {last.step})\n\n![{tag}]({files.name}/{name})\n")
    if eval:
        rows = _metrics(Path(eval))
        lines += ["## Evaluation", ""]
        lines += (
            ["| metric | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]
            if rows
            else [f"no metrics.csv in {eval}"]
        )
        lines.append("")
    if ckpt:
        contract = _contract(Path(ckpt))
        lines += ["## Input contract", ""]
        lines += (
            ["```json", json.dumps(contract, indent=2, default=str), "```"]
            if contract
            else [f"no input contract stored with {ckpt}"]
        )
        lines.append("")
    out.write_text("\n".join(lines) + "\n")
    print(f"report written to {out} ({len(scalars)} curves, {len(images)} previews)")
    return os.fspath(out)


if __name__ == "__main__":
    fire.Fire(write_report)
