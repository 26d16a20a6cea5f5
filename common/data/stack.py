"""Stack a subject's modality files into one multi-channel NIfTI, for tools that read one file per study.

MONAI Label's datastore hands an inference task a single image per study, while the datalists of this collection
name one file per modality. ``stack_modalities`` writes ``<subject_id>.nii.gz`` with the modalities as the 4th
dimension, in the bundle's channel order, which the bundles' ``LoadImaged(ensure_channel_first=True)`` reads back
as a ``(C, H, W, D)`` image; labels can be copied to MONAI Label's ``labels/final`` folder beside them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from common.data.validate import check_or_raise

__all__ = ["stack_modalities"]


def stack_modalities(
    entries: Sequence[dict], modalities: Sequence[str], out_dir: str | os.PathLike, with_labels: bool = False
) -> list[str]:
    """Write one 4-D NIfTI per entry (channels last, ordered as ``modalities``) into ``out_dir``.

    Args:
        entries: datalist entries (``common.data.datalist.resolve_datalist``), one file per modality key.
        modalities: modality keys in channel order; every entry must have all of them.
        out_dir: the study folder to write (created if needed).
        with_labels: also copy each entry's ``label`` to ``out_dir/labels/final/<subject_id>.nii.gz``.

    Returns:
        The written image paths.

    Raises:
        common.data.validate.DataValidationError: a missing modality or an unreadable, non-finite or
            mismatched file, each named with its subject, key and path.
    """
    check_or_raise(list(entries), image_keys=list(modalities), label_key="label" if with_labels else None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for entry in entries:
        first = nib.load(entry[modalities[0]])
        volumes = [np.asarray(nib.load(entry[m]).dataobj, dtype=np.float32) for m in modalities]
        stacked = nib.Nifti1Image(np.stack(volumes, axis=-1), first.affine)
        stacked.header.set_xyzt_units(*first.header.get_xyzt_units())
        path = out / f"{entry['subject_id']}.nii.gz"
        nib.save(stacked, str(path))
        written.append(str(path))
        if with_labels:
            labels = out / "labels" / "final"
            labels.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(entry["label"], labels / f"{entry['subject_id']}.nii.gz")
    return written
