"""Genetics per subject: one table type, one reader per file format, subject joining, train-only statistics.

Every reader returns a :class:`FeatureTable` (subjects x features, float32, NaN = missing) and names the file in
every error. :func:`read_genetics` picks the reader from the file name:

==========================================  ===================  ============================================
format                                      reader               subject ids / feature names from
==========================================  ===================  ============================================
``.npy`` matrix ``[subjects, features]``    :func:`read_npy`     ``ids=`` (list, or a txt / CSV file), ``features=``
``.npz`` (matrix + ids (+ names) arrays)    :func:`read_npz`     the arrays named in ``NPZ_KEYS``
CSV / TSV keyed by a subject-id column      :func:`read_table`   the id column; the other columns
(polygenic or burden scores, any table)
PLINK 1 ``.bed/.bim/.fam`` (raw SNPs)       :func:`read_plink`   ``.fam`` IID (or FID_IID); ``.bim`` SNP ids
PLINK 2 ``.sscore`` (one file or several)   :func:`read_sscore`  ``IID``; ``<file stem>`` or ``<stem>:<column>``
ContIG burden scores ``.h5`` (``G``)        :func:`read_burden`  ``<stem>_iid.txt``, ``<stem>_colnames.txt``
VCF / BCF (``.vcf``, ``.vcf.gz``, ``.bcf``)  :func:`read_vcf`     header samples; variant ID or chrom:pos:ref:alt
==========================================  ===================  ============================================

Dosage conventions: a ``.bed`` is read with ``count_A1=False`` (bed-reader), i.e. the dosage counts the .bim's
*second* allele, which reproduces pysnptools' ``Bed(count_A1=False)`` used by ContIG and MRM; a VCF dosage counts
the non-reference alleles of the GT field. (plink2 ``--make-bed`` writes ALT as A1, so its .bed read here counts
REF: ``2 - `` the VCF dosage. Standardisation makes the direction irrelevant to a network, not to a mixture of both.)

Statistics (:func:`fit_feature_stats`, :func:`apply_feature_stats`) are fitted on the training subjects only and
returned as a plain dict of tensors, numbers, strings and lists, so they travel inside a checkpoint loaded with
``torch.load(..., weights_only=True)``. Imputation rule: a missing value (NaN) becomes the feature's mean over the
*observed* training values (after ``log1p`` when asked); a feature never observed in training gets 0. Z-scoring
uses that mean and the population standard deviation (ddof 0) of the observed training values; a feature of zero
variance gets std 1, so it maps to 0. ContIG instead fills missing SNPs with the per-SNP *mode* and z-scores over
*all* subjects (training and test together); we follow the issue: mean over training subjects only.

Example::

    table = read_genetics("ukb_chr1_v2.bed", snp_step=100)       # ContIG's every-100th-SNP subset
    entries = join_subjects(entries, table)                       # logs subjects present in one modality only
    stats = fit_feature_stats(table, [e["subject_id"] for e in train_entries])
    x = apply_feature_stats(table.rows(["1000123"]), stats)       # float32 tensor [1, F], never NaN
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "FeatureTable",
    "NPZ_KEYS",
    "ID_COLUMNS",
    "read_genetics",
    "read_npy",
    "read_npz",
    "read_table",
    "read_plink",
    "read_sscore",
    "read_burden",
    "read_vcf",
    "read_id_list",
    "join_subjects",
    "align_features",
    "fit_feature_stats",
    "apply_feature_stats",
]
logger = logging.getLogger(__name__)

# accepted array names inside an .npz, in order of preference
NPZ_KEYS: dict[str, tuple[str, ...]] = {
    "values": ("values", "X", "G", "data", "matrix", "genotypes", "dosages"),
    "ids": ("ids", "subject_ids", "iid", "iids", "samples", "subjects"),
    "features": ("features", "feature_names", "columns", "colnames", "snps", "sid", "genes"),
}
# subject-id column names recognised in CSV/TSV tables (case-insensitive), first match wins
ID_COLUMNS: tuple[str, ...] = (
    "subject_id", "iid", "#iid", "eid", "case_id", "patient_id", "sample_id", "participant_id", "sample", "id",
)  # fmt: skip
# cell texts read as missing in tables
MISSING_TOKENS: tuple[str, ...] = ("", "na", "nan", "n/a", "null", "none", ".")


def _first(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(str(n) for n in list(names)[:limit])
    return shown + (", ..." if len(names) > limit else "")


def _as_ids(values: Any) -> list[str]:
    """Subject ids as strings; integral numbers lose a trailing ``.0`` (UK Biobank eids read as floats)."""
    arr = np.asarray(values)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind == "S":
        return [v.decode() for v in arr.ravel()]
    return [str(v) for v in arr.ravel()]


@dataclass(frozen=True)
class FeatureTable:
    """A subjects x features matrix: the one table type of genetics and gene expression.

    Args:
        ids: subject ids, one per row, unique (a duplicate is an error naming ``source``).
        features: feature names (SNP ids, score or gene names), one per column.
        values: ``[len(ids), len(features)]``, stored as float32; NaN marks a missing value.
        source: the file (or files) the table was read from, named in every error.

    Example::

        t = FeatureTable(["a", "b"], ["rs1", "rs2"], np.array([[0, 1], [2, np.nan]]), "toy.bed")
        t.rows(["b"])  # array([[2., nan]], dtype=float32)
    """

    ids: list[str]
    features: list[str]
    values: np.ndarray
    source: str
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=np.float32)
        if values.ndim != 2:
            raise ValueError(f"{self.source}: expected a [subjects, features] matrix, got shape {values.shape}")
        object.__setattr__(self, "ids", [str(i) for i in self.ids])
        object.__setattr__(self, "features", [str(f) for f in self.features])
        object.__setattr__(self, "values", values)
        if values.shape != (len(self.ids), len(self.features)):
            raise ValueError(
                f"{self.source}: matrix of shape {values.shape} but {len(self.ids)} subject ids and "
                f"{len(self.features)} feature names"
            )
        index = {sid: i for i, sid in enumerate(self.ids)}
        if len(index) != len(self.ids):
            seen: set[str] = set()
            dups = [s for s in self.ids if s in seen or seen.add(s)]
            raise ValueError(
                f"{self.source}: {len(set(dups))} duplicate subject id(s) (first: {_first(sorted(set(dups)))}); "
                "each subject must appear once"
            )
        object.__setattr__(self, "_index", index)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_features(self) -> int:
        return len(self.features)

    def __contains__(self, subject_id: object) -> bool:
        return str(subject_id) in self._index

    def positions(self, ids: Sequence[str]) -> np.ndarray:
        """Row numbers of ``ids``; a missing id is a ``KeyError`` naming it and the source."""
        missing = [str(i) for i in ids if str(i) not in self._index]
        if missing:
            raise KeyError(f"{self.source}: {len(missing)} subject(s) not in the table (first: {_first(missing)})")
        return np.array([self._index[str(i)] for i in ids], dtype=np.int64)

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """``[len(ids), F]`` values of ``ids`` (raw: NaN where missing)."""
        return self.values[self.positions(ids)]

    def select(self, ids: Sequence[str]) -> FeatureTable:
        """The sub-table of ``ids``, in that order."""
        return FeatureTable(list(ids), self.features, self.rows(ids), self.source)


# ---------------------------------------------------------------------------------------------------- readers


def _require(path: str | os.PathLike) -> str:
    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"genetics file {path} does not exist")
    return path


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Subject ids from a text file (one per line) or a CSV/TSV (its subject-id column, see ``ID_COLUMNS``,
    else its first column). Blank lines are skipped.

    Example: ``read_id_list("subjects.txt")``.
    """
    path = _require(path)
    lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{path}: empty subject-id list")
    sep = "\t" if "\t" in lines[0] else ("," if "," in lines[0] else None)
    if sep is None:
        header = lines[0].lower()
        return lines[1:] if header in ID_COLUMNS else lines
    cells = [ln.split(sep) for ln in lines]
    names = [c.strip().lower() for c in cells[0]]
    col = next((names.index(n) for n in ID_COLUMNS if n in names), None)
    if col is None:
        return [c[0].strip() for c in cells]
    return [c[col].strip() for c in cells[1:]]


def read_npy(
    path: str | os.PathLike, ids: Sequence[str] | str | os.PathLike, features: Sequence[str] | str | None = None
) -> FeatureTable:
    """A ``[subjects, features]`` ``.npy`` matrix with its subject ids (a list or a file, see :func:`read_id_list`)
    and optional feature names (a list or a one-name-per-line file; default ``f0, f1, ...``).

    Example: ``read_npy("snps.npy", ids="snps_ids.txt")``.
    """
    path = _require(path)
    try:
        values = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any NumPy failure becomes one message naming the file
        raise ValueError(f"{path}: not a readable .npy array ({type(e).__name__}: {e})") from e
    id_list = read_id_list(ids) if isinstance(ids, (str, os.PathLike)) else [str(i) for i in ids]
    if values.ndim == 2 and features is None:
        names = [f"f{j}" for j in range(values.shape[1])]
    elif isinstance(features, (str, os.PathLike)):
        names = [ln.strip() for ln in Path(_require(features)).read_text().splitlines() if ln.strip()]
    else:
        names = list(features or [])
    _check_numeric(values, path)
    return FeatureTable(id_list, names, values, path)


def _check_numeric(values: np.ndarray, path: str) -> None:
    if values.dtype.kind not in "biuf":
        raise ValueError(f"{path}: matrix of dtype {values.dtype}, expected numbers")


def read_npz(path: str | os.PathLike) -> FeatureTable:
    """An ``.npz`` holding the matrix, the subject ids and optionally the feature names, under any of the names in
    ``NPZ_KEYS`` (e.g. ``values`` / ``X`` / ``G``, ``ids`` / ``iid``, ``features`` / ``snps``). Save string arrays
    as unicode (``np.array(ids, dtype=str)``): object arrays are refused (no pickle is ever loaded).

    Example: ``np.savez("g.npz", values=X, ids=np.array(ids), features=np.array(snps)); read_npz("g.npz")``.
    """
    path = _require(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        raise ValueError(f"{path}: holds object (pickled) arrays; save strings with dtype=str ({e})") from e
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e})") from e
    found = {role: next((k for k in names if k in arrays), None) for role, names in NPZ_KEYS.items()}
    for role in ("values", "ids"):
        if found[role] is None:
            raise ValueError(
                f"{path}: no {role} array (it holds {sorted(arrays)}; accepted names: {list(NPZ_KEYS[role])})"
            )
    values = arrays[found["values"]]
    _check_numeric(values, path)
    names = _as_ids(arrays[found["features"]]) if found["features"] else [f"f{j}" for j in range(values.shape[-1])]
    return FeatureTable(_as_ids(arrays[found["ids"]]), names, values, path)


def _numeric_frame(frame: Any, path: str, row_ids: Sequence[str], row_label: str = "subject") -> np.ndarray:
    """Cells of a string DataFrame as float32; missing tokens -> NaN, anything else non-numeric is an error that
    names the line, row (``row_label``: subject or gene) and column of the first bad cell."""
    import pandas as pd

    text = frame.apply(lambda col: col.str.strip())
    missing = text.apply(lambda col: col.str.lower().isin(MISSING_TOKENS))
    numbers = text.apply(pd.to_numeric, errors="coerce")
    bad = numbers.isna().to_numpy() & ~missing.to_numpy()
    if bad.any():
        r, c = np.argwhere(bad)[0]
        line = int(frame.index[r]) + 2  # the header is line 1
        raise ValueError(
            f"{path}: {int(bad.sum())} non-numeric cell(s); first at line {line}, {row_label} "
            f"{row_ids[r]!r}, column {frame.columns[c]!r}: {text.iat[r, c]!r}"
        )
    return numbers.to_numpy(dtype=np.float32)


def _read_text_frame(path: str, sep: str | None) -> Any:
    import pandas as pd

    lower = path.lower().removesuffix(".gz")
    if sep is None:
        sep = "," if lower.endswith(".csv") else ("\t" if lower.endswith((".tsv", ".tab")) else r"\s+")
    try:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, engine="python" if sep == r"\s+" else "c")
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: not a readable table ({type(e).__name__}: {e})") from e


def _id_column(columns: Sequence[str], id_column: str | None, path: str) -> str:
    if id_column is not None:
        if id_column not in columns:
            raise ValueError(f"{path}: no column {id_column!r} (columns: {_first(list(columns), 8)})")
        return id_column
    lower = {c.strip().lower(): c for c in columns}
    return next((lower[n] for n in ID_COLUMNS if n in lower), columns[0])


def read_table(
    path: str | os.PathLike,
    id_column: str | None = None,
    features: Sequence[str] | None = None,
    sep: str | None = None,
) -> FeatureTable:
    """A CSV/TSV with one row per subject: a subject-id column (``id_column``, else the first of ``ID_COLUMNS``
    present, else the first column) and numeric feature columns (e.g. polygenic or burden scores).

    Empty cells and ``NA``/``NaN``/``.`` are missing (NaN); any other non-numeric cell is an error naming its line,
    subject and column. ``features`` keeps only those columns (a missing one is an error).

    Example: ``read_table("pgs.tsv", id_column="IID")``.
    """
    path = _require(path)
    frame = _read_text_frame(path, sep)
    if frame.shape[1] < 2:
        raise ValueError(f"{path}: needs a subject-id column and at least one feature column")
    key = _id_column(list(frame.columns), id_column, path)
    ids = frame[key].str.strip().tolist()
    blank = [r + 2 for r, sid in enumerate(ids) if not sid]
    if blank:
        raise ValueError(
            f"{path}: {len(blank)} row(s) without a subject id in column {key!r} (first at line {blank[0]})"
        )
    cols = [c for c in frame.columns if c != key] if features is None else list(features)
    absent = [c for c in cols if c not in frame.columns]
    if absent:
        raise ValueError(f"{path}: {len(absent)} requested column(s) absent (first: {_first(absent)})")
    return FeatureTable(ids, cols, _numeric_frame(frame[cols], path, ids), path)


def _plink_paths(path: str) -> tuple[str, str, str]:
    stem = path[: -len(Path(path).suffix)] if Path(path).suffix.lower() in (".bed", ".bim", ".fam") else path
    paths = tuple(f"{stem}.{ext}" for ext in ("bed", "bim", "fam"))
    absent = [p for p in paths if not os.path.isfile(p)]
    if absent:
        raise FileNotFoundError(f"PLINK fileset {stem}: missing {', '.join(absent)} (a .bed needs its .bim and .fam)")
    return paths  # type: ignore[return-value]


def read_plink(
    path: str | os.PathLike,
    snps: Sequence[str] | None = None,
    snp_step: int = 1,
    subject_id: str = "iid",
) -> FeatureTable:
    """PLINK 1 binary genotypes (``.bed`` + ``.bim`` + ``.fam``; ``path`` is any of them or their common stem)
    as dosages 0/1/2 counting the .bim's second allele (bed-reader, ``count_A1=False``: pysnptools / ContIG
    dosages), missing calls NaN.

    Args:
        path: the ``.bed`` (or stem).
        snps: keep only these SNP ids, in this order (one absent from the .bim is an error naming it).
        snp_step: keep every ``snp_step``-th SNP (ContIG reads UK Biobank chromosomes with a step of 100).
        subject_id: ``"iid"`` (the .fam's second column) or ``"fid_iid"`` (``FID_IID``, when IIDs repeat).

    Example: ``read_plink("toydata.5chrom.bed", snp_step=10)``.
    """
    from bed_reader import open_bed

    bed, _, _ = _plink_paths(str(path))
    try:
        with open_bed(bed, count_A1=False) as reader:
            sid = [str(s) for s in reader.sid]
            if snps is not None:
                lookup = {s: j for j, s in enumerate(sid)}
                absent = [s for s in snps if s not in lookup]
                if absent:
                    raise KeyError(f"{bed}: {len(absent)} requested SNP(s) not in the .bim (first: {_first(absent)})")
                cols = np.array([lookup[s] for s in snps], dtype=np.int64)
            else:
                cols = np.arange(0, len(sid), max(1, int(snp_step)))
            values = reader.read(index=np.s_[:, cols], dtype="float32")
            iid, fid = [str(i) for i in reader.iid], [str(f) for f in reader.fid]
    except (KeyError, FileNotFoundError):
        raise
    except Exception as e:  # noqa: BLE001 - bed-reader's errors become one message naming the file
        raise ValueError(f"{bed}: not a readable PLINK .bed/.bim/.fam ({type(e).__name__}: {e})") from e
    if subject_id not in ("iid", "fid_iid"):
        raise ValueError(f"subject_id must be 'iid' or 'fid_iid', got {subject_id!r}")
    ids = iid if subject_id == "iid" else [f"{f}_{i}" for f, i in zip(fid, iid)]
    return FeatureTable(ids, [sid[j] for j in cols], values, bed)


def _sscore_one(path: str, score_columns: Sequence[str] | None) -> FeatureTable:
    frame = _read_text_frame(path, "\t")
    cols = list(frame.columns)
    key = next((c for c in ("IID", "#IID") if c in cols), None)
    if key is None:
        raise ValueError(f"{path}: no IID column (a PLINK2 .sscore starts '#FID IID ...' or '#IID ...')")
    if score_columns is not None:
        chosen = list(score_columns)
    else:
        chosen = [c for c in cols if c.endswith("_AVG")] or [c for c in cols if c.endswith("_SUM")]
    absent = [c for c in chosen if c not in cols]
    if not chosen or absent:
        raise ValueError(f"{path}: score column(s) {absent or '*_AVG / *_SUM'} not found (columns: {_first(cols, 8)})")
    ids = frame[key].str.strip().tolist()
    stem = Path(path).name.split(".sscore")[0]
    names = [stem] if len(chosen) == 1 else [f"{stem}:{c}" for c in chosen]
    return FeatureTable(ids, names, _numeric_frame(frame[chosen], path, ids), path)


def read_sscore(
    path: str | os.PathLike | Sequence[str | os.PathLike], score_columns: Sequence[str] | None = None
) -> FeatureTable:
    """PLINK 2 ``--score`` output: one ``.sscore`` file, a list of them, or a folder of ``*.sscore`` (ContIG keeps
    one file per PGS Catalog score). Subjects from ``IID``; score columns ``score_columns`` or every ``*_AVG``
    column (else every ``*_SUM``). A feature is named ``<file stem>`` when its file has one score column, else
    ``<file stem>:<column>``. Several files are joined on IID (outer join: a subject absent from a file gets NaN
    there, reported in the log).

    Example: ``read_sscore("pgs/")`` or ``read_sscore("PGS000001.sscore")``.
    """
    if isinstance(path, (str, os.PathLike)) and os.path.isdir(path):
        files = sorted(str(p) for p in Path(path).glob("*.sscore*"))
        if not files:
            raise FileNotFoundError(f"{path}: folder holds no *.sscore file")
    elif isinstance(path, (str, os.PathLike)):
        files = [_require(path)]
    else:
        files = [_require(p) for p in path]
    tables = [_sscore_one(f, score_columns) for f in files]
    if len(tables) == 1:
        return tables[0]
    ids = list(dict.fromkeys(i for t in tables for i in t.ids))
    values = np.full((len(ids), sum(t.num_features for t in tables)), np.nan, np.float32)
    pos, start = {s: i for i, s in enumerate(ids)}, 0
    for t in tables:
        values[[pos[i] for i in t.ids], start : start + t.num_features] = t.values
        start += t.num_features
        if len(t) < len(ids):
            logger.warning(f"{t.source}: {len(ids) - len(t)} of {len(ids)} subjects absent; their scores are missing")
    return FeatureTable(ids, [f for t in tables for f in t.features], values, ", ".join(files))


def _h5_strings(handle: Any, names: Sequence[str]) -> list[str] | None:
    for n in names:
        if n in handle:
            return _as_ids(np.asarray(handle[n]))
    return None


def _sidecar(path: str, given: str | os.PathLike | None, suffix: str) -> list[str] | None:
    candidate = str(given) if given else f"{path.rsplit('.', 1)[0]}_{suffix}.txt"
    if not os.path.isfile(candidate):
        if given:
            raise FileNotFoundError(f"{candidate} does not exist")
        return None
    return [ln.strip() for ln in Path(candidate).read_text().splitlines() if ln.strip()]


def read_burden(
    path: str | os.PathLike, iids: str | os.PathLike | None = None, colnames: str | os.PathLike | None = None
) -> FeatureTable:
    """ContIG's gene burden scores: ``combined_burdens.h5`` with the matrix ``G`` ``[subjects, genes]``, the subject
    ids in ``combined_burdens_iid.txt`` and the gene names in ``combined_burdens_colnames.txt`` beside it (one per
    line, no header: ContIG's ``get_burden_data``). Ids / names stored inside the h5 (datasets ``iid``/``ids`` and
    ``colnames``/``features``) are read too; explicit ``iids`` / ``colnames`` files win.

    Example: ``read_burden("burden/combined_burdens.h5")``.
    """
    import h5py

    path = _require(path)
    try:
        with h5py.File(path, "r") as f:
            key = "G" if "G" in f else None
            if key is None:
                raise ValueError(f"{path}: no 'G' dataset (ContIG burden layout; it holds {sorted(f.keys())})")
            values = np.asarray(f[key], dtype=np.float32)
            inner_ids = _h5_strings(f, ("iid", "iids", "ids"))
            inner_cols = _h5_strings(f, ("colnames", "columns", "features"))
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: not a readable HDF5 file ({type(e).__name__}: {e})") from e
    ids = _sidecar(path, iids, "iid") or inner_ids
    cols = _sidecar(path, colnames, "colnames") or inner_cols
    if ids is None or cols is None:
        which = "subject ids (<stem>_iid.txt)" if ids is None else "gene names (<stem>_colnames.txt)"
        raise FileNotFoundError(f"{path}: no {which} beside it or inside it")
    return FeatureTable(ids, cols, values, path)


def read_vcf(path: str | os.PathLike) -> FeatureTable:
    """VCF/BCF genotypes (cyvcf2) as dosages: the number of non-reference alleles in GT (``0/0`` 0, ``0/1`` 1,
    ``1/1`` 2, haploid ``1`` 1; a multi-allelic ``1/2`` counts 2, split such sites with ``bcftools norm -m-`` for
    per-allele dosages); a call with any missing allele (``./.``, ``./1``) is NaN. Subjects are the header's samples;
    a variant is named by its ID, or ``chrom:pos:ref:alt`` when the ID is ``.``.

    Example: ``read_vcf("cohort.vcf.gz")``.
    """
    from cyvcf2 import VCF

    path = _require(path)
    try:
        vcf = VCF(path, lazy=True)
        samples = list(vcf.samples)
        if not samples:
            raise ValueError("the VCF header names no samples")
        try:
            vcf.get_header_type("GT")
        except KeyError:
            raise ValueError("the VCF header declares no GT (genotype) FORMAT field") from None
        names, dosages, multi = [], [], 0
        for v in vcf:
            gt = v.genotype.array()[:, :-1]  # [samples, ploidy]
            dose = (gt > 0).sum(1).astype(np.float32)
            dose[(gt == -1).any(1)] = np.nan  # -1 missing allele; -2 pads haploid calls
            dosages.append(dose)
            names.append(v.ID or f"{v.CHROM}:{v.POS}:{v.REF}:{','.join(v.ALT)}")
            multi += len(v.ALT) > 1
        vcf.close()
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: not a readable VCF ({type(e).__name__}: {e})") from e
    if multi:
        logger.warning(f"{path}: {multi} multi-allelic site(s); their dosage counts every non-reference allele")
    values = np.stack(dosages, 1) if dosages else np.zeros((len(samples), 0), np.float32)
    return FeatureTable(samples, names, values, path)


def read_genetics(path: str | os.PathLike | Sequence[str | os.PathLike], **kwargs: Any) -> FeatureTable:
    """Read any supported genetics file, choosing the reader from its name (table in the module docstring);
    ``kwargs`` go to that reader (e.g. ``ids=`` for ``.npy``, ``snp_step=`` for ``.bed``, ``id_column=`` for CSV).

    Example (config): ``"genetics_table": "$common.data.genetics.read_genetics(@genetics_path)"``.
    """
    if not isinstance(path, (str, os.PathLike)):
        return read_sscore(path, **kwargs)
    name = str(path).lower()
    if os.path.isdir(path):
        return read_sscore(path, **kwargs)
    if name.endswith((".bed", ".bim", ".fam")) or os.path.isfile(f"{path}.bed"):
        return read_plink(path, **kwargs)
    if name.endswith((".vcf", ".vcf.gz", ".bcf")):
        return read_vcf(path, **kwargs)
    if ".sscore" in name:
        return read_sscore(path, **kwargs)
    if name.endswith((".h5", ".hdf5")):
        return read_burden(path, **kwargs)
    if name.endswith(".npz"):
        return read_npz(path, **kwargs)
    if name.endswith(".npy"):
        return read_npy(path, **kwargs)
    if name.endswith((".csv", ".tsv", ".tab", ".txt", ".csv.gz", ".tsv.gz")):
        return read_table(path, **kwargs)
    raise ValueError(
        f"{path}: unknown genetics format (.npy, .npz, .csv/.tsv, .bed/.bim/.fam, .sscore, .h5, .vcf/.vcf.gz/.bcf)"
    )


# ------------------------------------------------------------------------------------------- joining, alignment


def join_subjects(entries: Sequence[Mapping], table: FeatureTable, id_key: str = "subject_id") -> list[dict]:
    """The ``entries`` (data dicts, e.g. one per image) whose subject has genetics in ``table``, in their order.

    Subjects present in only one modality are never dropped silently: a warning gives their count and first ids
    (images without genetics, and genetics subjects without any image). No subject in common is an error.

    Example: ``train = join_subjects(train_entries, table)``.
    """
    ids = []
    for i, e in enumerate(entries):
        if id_key not in e:
            raise ValueError(f"entry {i} has no {id_key!r}; every entry needs one to join with {table.source}")
        ids.append(str(e[id_key]))
    kept = [dict(e) for e, sid in zip(entries, ids) if sid in table]
    image_only = list(dict.fromkeys(s for s in ids if s not in table))
    present = set(ids)
    genetics_only = [s for s in table.ids if s not in present]
    if image_only:
        logger.warning(
            f"{len(image_only)} subject(s) have images but no genetics in {table.source}; left out "
            f"(first: {_first(image_only)})"
        )
    if genetics_only:
        logger.warning(
            f"{len(genetics_only)} subject(s) of {table.source} have genetics but no image among these "
            f"{len(entries)} entries; unused here (first: {_first(genetics_only)})"
        )
    if not kept:
        raise ValueError(f"no subject of the {len(entries)} entries has genetics in {table.source} (ids do not join)")
    return kept


def align_features(table: FeatureTable, features: Sequence[str], what: str = "features") -> FeatureTable:
    """``table`` with exactly ``features`` as columns, in that order (the list a network was trained on).

    A trained feature absent from the table is an error naming the count and the first names, never a silent zero;
    features the table has beyond the list are dropped with a log line.

    Example: ``align_features(new_table, stats["features"], what="genes")``.
    """
    features = [str(f) for f in features]
    lookup: dict[str, int] = {}
    repeated = set()
    for j, f in enumerate(table.features):
        repeated.update([f] if f in lookup else [])
        lookup.setdefault(f, j)
    missing = [f for f in features if f not in lookup]
    if missing:
        raise ValueError(
            f"{table.source}: {len(missing)} of the {len(features)} trained {what} are missing "
            f"(first: {_first(missing)}); provide them (a missing value per subject may be NaN, not an absent column)"
        )
    ambiguous = [f for f in features if f in repeated]
    if ambiguous:
        raise ValueError(f"{table.source}: {len(ambiguous)} {what} appear twice (first: {_first(ambiguous)})")
    extra = len(set(table.features) - set(features))
    if extra:
        logger.info(f"{table.source}: {extra} {what} not in the trained list dropped")
    cols = np.array([lookup[f] for f in features], dtype=np.int64)
    if np.array_equal(cols, np.arange(table.num_features)):
        return table
    return FeatureTable(table.ids, features, table.values[:, cols], table.source)


# ------------------------------------------------------------------------------------------------- statistics


def fit_feature_stats(
    table: FeatureTable,
    train_ids: Sequence[str] | Sequence[Mapping] | None = None,
    *,
    log1p: bool = False,
    standardise: bool = True,
    id_key: str = "subject_id",
) -> dict[str, Any]:
    """Imputation and standardisation statistics from the TRAINING subjects only (rule: module docstring).

    Args:
        table: the whole table (training and other subjects).
        train_ids: training subject ids, or training data dicts carrying ``id_key`` (repeated subjects count once);
            ``None`` uses every subject (only for a table that *is* the training set). Ids absent from the table
            are ignored with a warning; none present is an error.
        log1p: transform with ``log(1 + x)`` before everything else (gene expression counts / FPKM).
        standardise: z-score; ``False`` keeps ``mean = 0, std = 1`` (imputation only).

    Returns:
        ``{"features": [F names], "fill": [F], "mean": [F], "std": [F] float32 tensors, "log1p": bool,
        "standardise": bool, "num_train": int, "source": str, "rule": str}``, safe for ``weights_only`` loading.

    Example: ``stats = fit_feature_stats(table, ["s1", "s2", "s3"]); torch.save({"genetics_stats": stats}, p)``.
    """
    if train_ids is None:
        ids = table.ids
    else:
        ids = list(dict.fromkeys(str(t[id_key]) if isinstance(t, Mapping) else str(t) for t in train_ids))
    present = [i for i in ids if i in table]
    if len(present) < len(ids):
        absent = [i for i in ids if i not in table]
        logger.warning(f"{table.source}: {len(absent)} training subject(s) absent, not used (first: {_first(absent)})")
    if not present:
        raise ValueError(f"{table.source}: no training subject in the table; statistics cannot be fitted")
    x = torch.from_numpy(table.rows(present)).double()  # x: [N_train, F]
    if log1p:
        _check_log1p(x, table.features, table.source)
        x = torch.log1p(x)
    observed = ~torch.isnan(x)
    count = observed.sum(0)  # [F]
    total = torch.where(observed, x, torch.zeros(())).sum(0)
    mean = total / count.clamp(min=1)  # mean of observed values; a feature never observed: 0 / 1 = 0
    sq = torch.where(observed, (x - mean) ** 2, torch.zeros(())).sum(0)
    std = torch.sqrt(sq / count.clamp(min=1))  # population std (ddof 0) of observed values
    std = torch.where(std > 1e-8, std, torch.ones(()))  # constant or unobserved feature -> 1 (maps to 0)
    unseen = int((count == 0).sum())
    if unseen:
        logger.warning(f"{table.source}: {unseen} feature(s) never observed in training; imputed as 0")
    return {
        "features": list(table.features),
        "fill": mean.float(),
        "mean": mean.float() if standardise else torch.zeros(table.num_features),
        "std": std.float() if standardise else torch.ones(table.num_features),
        "log1p": bool(log1p),
        "standardise": bool(standardise),
        "num_train": len(present),
        "source": table.source,
        "rule": "missing -> mean of observed training values; z = (x - mean) / std (ddof 0, std 0 -> 1)",
    }


def _check_log1p(x: torch.Tensor, features: Sequence[str], source: str) -> None:
    negative = (x < 0).any(0)
    if negative.any():
        j = int(torch.nonzero(negative)[0])
        raise ValueError(
            f"{source}: negative values (first feature {features[j]!r}) but log1p expects raw counts / FPKM; "
            "the table looks log-transformed already: set log1p=False"
        )


def apply_feature_stats(values: np.ndarray | torch.Tensor, stats: Mapping[str, Any], source: str = "") -> torch.Tensor:
    """Impute and standardise ``values`` ``[..., F]`` (columns in ``stats["features"]`` order, see
    :func:`align_features`) with statistics from :func:`fit_feature_stats`. The result is float32 and never NaN:
    NaN inputs are imputed, an Inf input is an error naming the feature.

    Example: ``apply_feature_stats(np.array([[np.nan, 2.0]]), stats)``.
    """
    x = torch.as_tensor(values).double()
    num = len(stats["features"])
    where = f"{source}: " if source else ""
    if x.shape[-1] != num:
        raise ValueError(f"{where}genetics vector of length {x.shape[-1]}, the statistics have {num} features")
    infinite = torch.isinf(x).reshape(-1, num).any(0)
    if infinite.any():
        j = int(torch.nonzero(infinite)[0])
        raise ValueError(f"{where}infinite value(s) in feature {stats['features'][j]!r}; fix the data")
    if stats["log1p"]:
        _check_log1p(x.reshape(-1, num), stats["features"], source or "input")
        x = torch.log1p(x)
    x = torch.where(torch.isnan(x), stats["fill"].double(), x)
    return ((x - stats["mean"].double()) / stats["std"].double()).float()
