"""Check a datalist or a BraTS-layout folder before training; print every problem; exit 1 on any error.

    python tools/validate_data.py --datalist data.json --image_keys "['t1','t1ce','t2','flair']" \
        --label_key label --label_values "[0,1,2,3]"
    python tools/validate_data.py --dataset_dir /data/BraTS2021 --label_key label
    python tools/validate_data.py --dataset_dir /data/BraTS2021 --bundle brainmvp   # that bundle's own rules
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.data.datalist import resolve_datalist  # noqa: E402
from common.data.validate import validate_datalist, validate_entries  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def bundle_rules(bundle: str) -> dict:
    """The data rules a bundle's ``train.json`` checks before training: its modalities and the literal arguments
    of its ``check_or_raise`` (e.g. brainmvp: any subset of contrasts, at least two)."""
    path = REPO / "bundles" / bundle / "configs" / "train.json"
    if not path.is_file():
        raise FileNotFoundError(f"no bundle '{bundle}' ({path} does not exist)")
    config = json.loads(path.read_text())
    rules: dict = {}
    if isinstance(config.get("modalities"), list):
        rules["image_keys"] = config["modalities"]
    for item in config.get("initialize", []):
        if isinstance(item, dict) and str(item.get("_target_", "")).endswith("check_or_raise"):
            for key in ("required_keys", "min_modalities"):
                if key in item and not str(item[key]).startswith(("@", "$")):
                    rules[key] = item[key]
    return rules


def _count(datalist: str | None, entries: list | None, splits) -> int:
    if entries is not None:
        return len(entries)
    try:
        content = json.loads(Path(datalist).read_text())
    except (OSError, ValueError):
        return 0
    return sum(len(content.get(s, [])) for s in splits if isinstance(content.get(s, []), list))


def main(
    datalist: str | None = None,
    dataset_dir: str | None = None,
    image_keys=("t1", "t1ce", "t2", "flair"),
    splits=("training", "validation"),
    bundle: str | None = None,
    **checks,
) -> None:
    """Validate and report. ``checks`` are the keyword arguments of ``common.data.validate.validate_entries``
    (``label_key``, ``label_values``, ``required_keys``, ``min_modalities``, ``class_key``, ``num_classes``,
    ``gene_key``, ``gene_length``, ``bag_key``, ``check_content``); ``bundle`` applies that bundle's own rules
    (its modalities, which contrasts it requires), so the check accepts what the bundle accepts."""
    if bundle:
        rules = bundle_rules(bundle)
        image_keys = rules.pop("image_keys", image_keys)
        checks = {**rules, **checks}
    image_keys = list(image_keys)
    entries = None
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
    affected = len({p.subject for p in problems})
    checked = _count(datalist, entries, splits)
    print(
        f"{checked} subjects checked: {errors} errors, {len(problems) - errors} warnings ({affected} subjects affected)"
    )
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    fire.Fire(main)
