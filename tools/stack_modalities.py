"""Write one multi-channel NIfTI per subject (a MONAI Label study folder) from a datalist or dataset folder.

python tools/stack_modalities.py --out_dir /data/studies                     # the embedded demo set
python tools/stack_modalities.py --dataset_dir /data/BraTS --split training --out_dir /data/studies --with_labels True
"""

from __future__ import annotations

import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.data.datalist import resolve_datalist  # noqa: E402
from common.data.stack import stack_modalities  # noqa: E402


def main(
    out_dir: str,
    dataset_dir: str | None = None,
    datalist: str | None = None,
    split: str = "testing",
    modalities: str | tuple[str, ...] = ("t1", "t1ce", "t2", "flair"),
    with_labels: bool = False,
    num_cases: int = 8,
) -> None:
    """Stack ``modalities`` (in channel order) of every subject of ``split``; without data, of the demo set.

    Args:
        out_dir: study folder to write (``<subject_id>.nii.gz`` each; labels under ``labels/final``).
        dataset_dir / datalist: the data, as the bundles take it (see ``common.data.datalist.resolve_datalist``).
        split: datalist split to read.
        modalities: comma-separated or a list, in the bundle's channel order.
        with_labels: copy each subject's ``label`` into ``labels/final`` (MONAI Label's final labels).
        num_cases: size of the demo set, when neither ``dataset_dir`` nor ``datalist`` is given.
    """
    names = [m.strip() for m in modalities.split(",")] if isinstance(modalities, str) else list(modalities)
    entries = resolve_datalist(dataset_dir, datalist, names, split, demo={"num_cases": num_cases})
    if not entries:
        raise SystemExit(f"no subjects in split {split!r} of {datalist or dataset_dir or 'the demo set'}")
    written = stack_modalities(entries, names, out_dir, with_labels=with_labels)
    print(f"wrote {len(written)} studies to {out_dir}")


if __name__ == "__main__":
    fire.Fire(main)
