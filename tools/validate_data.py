"""Check a datalist or a BraTS-layout folder before training; print every problem; exit 1 on any error.

    python tools/validate_data.py --datalist data.json --image_keys "['t1','t1ce','t2','flair']" \
        --label_key label --label_values "[0,1,2,3]"
    python tools/validate_data.py --dataset_dir /data/BraTS2021 --label_key label
"""

from __future__ import annotations

import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.data.datalist import resolve_datalist  # noqa: E402
from common.data.validate import validate_datalist, validate_entries  # noqa: E402


def main(
    datalist: str | None = None,
    dataset_dir: str | None = None,
    image_keys=("t1", "t1ce", "t2", "flair"),
    splits=("training", "validation"),
    **checks,
) -> None:
    """Validate and report. ``checks`` are the keyword arguments of ``common.data.validate.validate_entries``
    (``label_key``, ``label_values``, ``required_keys``, ``min_modalities``, ``class_key``, ``num_classes``,
    ``gene_key``, ``gene_length``, ``bag_key``, ``check_content``)."""
    image_keys = list(image_keys)
    if datalist:
        problems = validate_datalist(datalist, image_keys, splits=list(splits), base_dir=dataset_dir, **checks)
    elif dataset_dir:
        try:
            entries = resolve_datalist(
                dataset_dir, None, image_keys, "training", with_label=bool(checks.get("label_key"))
            )
        except (FileNotFoundError, ValueError) as e:
            print(f"ERROR {dataset_dir}: {e}")
            sys.exit(1)
        problems = validate_entries(entries, image_keys, **checks)
    else:
        print("give --datalist or --dataset_dir")
        sys.exit(2)
    for p in problems:
        print(p)
    errors = sum(p.severity == "error" for p in problems)
    subjects = len({p.subject for p in problems})
    print(f"{errors} errors, {len(problems) - errors} warnings in {subjects} subjects")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    fire.Fire(main)
