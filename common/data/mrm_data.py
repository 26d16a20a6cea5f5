"""The MRM pre-training data in one call: images + genetics joined, validated, with training-set statistics.

:func:`prepare_mrm_data` is what ``bundles/mrm/configs/train.json`` calls. In order, before the first step:

1. **Sources** (:func:`mrm_sources`): ``datalist`` (a datalist JSON or CSV, ``common.data.images2d.read_image_datalist``),
   else ``dataset_dir`` (its ``datalist.json`` / ``datalist.csv``, else every PNG / JPEG / TIFF / BMP directly in it
   or in its ``images/`` folder, the subject id being the file stem), else the embedded demo set
   (``common.data.demo_mrm.demo_mrm_datalist``). The genetics file is ``genetics`` (any format
   ``common.data.genetics.read_genetics`` reads), else the datalist JSON's top-level ``"genetics"`` entry (a path, or
   ``{"plink": path}`` / ``{"file": path}``, relative to the JSON; the demo set names its PLINK genotypes there).
2. **Validation** (``common.data.validate.validate_paired_entries``): every image (missing, corrupt, a channel layout
   that cannot become RGB, too small, NaN/Inf, blank) and the genetics table (unreadable, duplicate subject ids,
   vectors of a length other than ``num_features`` when that is given, Inf, subjects with nothing observed, ids that
   do not join at all) are reported at once, each with the file; any error stops the run (``DataValidationError``).
3. **Join** (``common.data.genetics.join_subjects``): image entries without genetics are left out and reported
   (count and first ids), as are genetics subjects without images; nothing is dropped silently.
4. **Statistics** (``common.data.genetics.fit_feature_stats``) on the joined *training* subjects only: per-feature
   mean of the observed values fills missing genotypes, then z-scoring with that mean and the population std.
   They go into the checkpoint with the run's input contract.

With ``single_modality=True`` (paper section 4.6) steps 1-2 run on the images alone: no genetics file is read or
needed, nothing is joined, no statistics are fitted.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["IMAGE_SUFFIXES", "mrm_sources", "scan_image_folder", "prepare_mrm_data"]
logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_GENETICS_KEYS = ("file", "plink", "path")


def scan_image_folder(folder: str | os.PathLike) -> list[dict]:
    """One entry ``{"subject_id": <file stem>, "image": <absolute path>}`` per image file of ``folder`` (sorted).

    Example: ``scan_image_folder("/data/fundus")  # [{"subject_id": "1000123_21015_0_0", "image": ...}, ...]``.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return [{"subject_id": p.stem, "image": str(p.resolve())} for p in files]


def _genetics_from_datalist(datalist: str) -> str | None:
    """The top-level ``"genetics"`` entry of a datalist JSON, resolved against the JSON's folder (else ``None``)."""
    if not datalist.lower().endswith(".json"):
        return None
    try:
        named = json.loads(Path(datalist).read_text()).get("genetics")
    except (OSError, ValueError, AttributeError):
        return None  # read_image_datalist reports an unreadable datalist with its name
    if isinstance(named, Mapping):
        named = next((named[k] for k in _GENETICS_KEYS if isinstance(named.get(k), str)), None)
    if not isinstance(named, str) or not named:
        return None
    return named if os.path.isabs(named) else str(Path(datalist).parent / named)


def mrm_sources(
    dataset_dir: str | None = None,
    datalist: str | None = None,
    genetics: str | None = None,
    demo: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Where the images and the genetics come from (precedence in the module docstring).

    Returns:
        ``{"datalist": path or None, "folder": image folder or None, "genetics": path or None, "demo": bool}``.

    Example: ``mrm_sources(datalist="pairs.csv", genetics="ukb_chr1.bed")``.
    """
    folder, demo_set = None, not (dataset_dir or datalist)
    if datalist:
        datalist = str(datalist)
    elif dataset_dir:
        root = Path(dataset_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"dataset_dir {root} is not a folder")
        found = next((root / n for n in ("datalist.json", "datalist.csv") if (root / n).is_file()), None)
        if found is not None:
            datalist = str(found)
        else:
            folder = str(root / "images") if (root / "images").is_dir() else str(root)
    else:
        from common.data.demo_mrm import demo_mrm_datalist  # builds on first use only

        datalist = demo_mrm_datalist(**dict(demo or {}))
    genetics = str(genetics) if genetics else (_genetics_from_datalist(datalist) if datalist else None)
    return {"datalist": datalist, "folder": folder, "genetics": genetics, "demo": demo_set}


def prepare_mrm_data(
    dataset_dir: str | None = None,
    datalist: str | None = None,
    genetics: str | None = None,
    single_modality: bool = False,
    demo: Mapping[str, Any] | None = None,
    split: str = "training",
    num_features: int | None = None,
    genetics_kwargs: Mapping[str, Any] | None = None,
    image_size: int | None = None,
    check_content: bool = True,
) -> dict[str, Any]:
    """Images and genetics of the pre-training split: sources, validation, join and training statistics.

    Args:
        dataset_dir, datalist, genetics, demo: the sources (:func:`mrm_sources`).
        single_modality: images only (no genetics read, joined or standardised).
        split: the datalist split to train on (a CSV without a ``split`` column: every row).
        num_features: the genetics length the network expects (``None``: whatever the file holds).
        genetics_kwargs: keyword arguments of the genetics reader (e.g. ``{"snp_step": 100}`` for a .bed,
            ``{"ids": "ids.txt"}`` for a .npy, ``{"id_column": "IID"}`` for a table).
        image_size: the network's input edge (smaller images are reported as upsampled).
        check_content: read every pixel (NaN/Inf, blank images), not only the headers.

    Returns:
        ``{"entries": joined training entries, "table": FeatureTable or None, "stats": fit_feature_stats(...) or
        None, "num_features": int or None, "features": names or None, "sources": mrm_sources(...)}``.

    Example (config): ``"mrm_data": {"_target_": "common.data.mrm_data.prepare_mrm_data", "datalist": "@datalist",
    "genetics": "@genetics", "single_modality": "@single_modality"}``.
    """
    from common.data.genetics import fit_feature_stats, join_subjects, read_genetics
    from common.data.images2d import read_image_datalist
    from common.data.validate import Problem, raise_for_problems, validate_paired_entries

    sources = mrm_sources(dataset_dir, datalist, genetics, demo)
    if sources["datalist"]:
        try:
            entries = read_image_datalist(sources["datalist"], split, base_dir=dataset_dir if datalist else None)
        except (FileNotFoundError, KeyError, ValueError) as e:
            raise_for_problems([Problem("error", "datalist", sources["datalist"], str(e).strip("'\""))])
    else:
        entries = scan_image_folder(sources["folder"]) if split == "training" else []
    if not entries:
        where = sources["datalist"] or sources["folder"]
        raise_for_problems([Problem("error", "datalist", where, f"no images in the '{split}' split")])
    table = None
    if not single_modality:
        path = sources["genetics"]
        if not path:
            raise_for_problems([Problem("error", "genetics", None,
                "no genetics file: give --genetics <file> (.bed/.bim/.fam, .vcf, .npy, .npz, .csv/.tsv, .sscore, "
                ".h5), name it in the datalist JSON as \"genetics\", or train on images alone with "
                "--single_modality true")])  # fmt: skip
        try:
            table = read_genetics(path, **dict(genetics_kwargs or {}))
        except (OSError, ValueError, KeyError) as e:
            raise_for_problems([Problem("error", "genetics", path, str(e).strip("'\""))])
    problems = validate_paired_entries(
        {split: entries}, table, num_features=num_features, size=image_size, check_content=check_content
    )
    raise_for_problems(problems)
    if table is None:
        logger.info(f"MRM data: {len(entries)} {split} images, no genetics (single-modality)")
        return {"entries": entries, "table": None, "stats": None, "num_features": None, "features": None,
                "sources": sources}  # fmt: skip
    joined = join_subjects(entries, table)
    stats = fit_feature_stats(table, joined)  # training subjects only
    logger.info(
        f"MRM data: {len(joined)} {split} images of {len({e['subject_id'] for e in joined})} subjects paired with "
        f"{table.num_features} genetic features from {table.source}"
    )
    return {"entries": joined, "table": table, "stats": stats, "num_features": table.num_features,
            "features": list(table.features), "sources": sources}  # fmt: skip
