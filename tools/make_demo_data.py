"""Build the embedded demo set (multi-contrast brain MRI with tumours) into a folder of your choice.

python tools/make_demo_data.py --out_dir /data/demo_brats --num_cases 20 --num_missing 4
"""

from __future__ import annotations

import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.data.demo import build_demo_brats  # noqa: E402


def main(
    out_dir: str | None = None,
    num_cases: int = 8,
    spacing: float = 2.0,
    seed: int = 0,
    num_missing: int = 0,
    force: bool = False,
) -> str:
    """Build the demo set and print the path of its ``datalist.json`` (see ``common.data.demo.build_demo_brats``)."""
    path = build_demo_brats(out_dir, num_cases, spacing, seed, num_missing, force)
    print(path)
    return path


if __name__ == "__main__":
    fire.Fire(main)
