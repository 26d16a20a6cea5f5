"""Gene expression per patient / case (GiMP): readers into the shared :class:`~common.data.genetics.FeatureTable`.

==============================================  =============================  ==================================
format                                          reader                         ids / genes from
==============================================  =============================  ==================================
CSV / TSV, samples x genes or genes x samples   :func:`read_expression_table`  the id column or the header
(orientation detected and logged, see below)
PORPOISE / MCAT study CSV (``case_id``,         :func:`read_expression_table`  ``case_id``; ``*_rnaseq`` columns
``slide_id``, clinical, ``*_rnaseq`` columns)                                  with the suffix removed
SurvPath ``rna_clean.csv`` (rows case ids,      :func:`read_expression_table`  first (unnamed) column; header
columns gene symbols)
``.npy`` (+ id list, + gene names)              ``genetics.read_npy``          ``ids=``, ``features=``
``.npz``                                        ``genetics.read_npz``          ``genetics.NPZ_KEYS``
``.h5ad`` (anndata)                             :func:`read_h5ad`              ``obs_names`` / ``var_names``
==============================================  =============================  ==================================

Orientation of a CSV/TSV, decided in this order (the decision and its reason go to the log): ``orientation=``
given; ``*_rnaseq`` columns (a PORPOISE/MCAT study CSV, samples x genes); the trained ``genes=`` found among the
column names vs the first column's values; the first column's header (a subject-id name such as ``case_id`` ->
samples x genes, a gene name such as ``gene_id`` / ``Hugo_Symbol`` -> genes x samples); else the shape (more rows
than columns -> genes x samples, since bulk tables hold far more genes than samples).

Rows of one id (PORPOISE repeats a case once per slide) must carry identical values and are kept once; differing
rows of one id are an error (pick one sample per patient, or pseudo-bulk single cells first). ``id_length``
truncates ids first (TCGA barcodes: 12 characters = patient, 15 = sample).

Standardisation: ``genetics.fit_feature_stats(table, train_ids, log1p=True)`` (log1p then z-score, fitted on the
training split, stored with the checkpoint); aligning a new table to the trained genes:
``genetics.align_features(table, stats["features"], what="genes")`` (missing genes are an error naming them).

Example::

    table = read_expression("tcga_nsclc_rna.tsv")                   # logs "genes x samples: ..." and why
    stats = fit_feature_stats(table, train_case_ids, log1p=True)
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from common.data.genetics import (
    ID_COLUMNS,
    FeatureTable,
    _first,
    _numeric_frame,
    _read_text_frame,
    _require,
    read_npy,
    read_npz,
)

__all__ = ["GENE_COLUMNS", "ANNOTATION_COLUMNS", "read_expression", "read_expression_table", "read_h5ad"]
logger = logging.getLogger(__name__)

# first-column headers that name genes (case-insensitive): such a table is genes x samples
GENE_COLUMNS: tuple[str, ...] = (
    "gene", "genes", "gene_id", "gene_ids", "gene_name", "gene_symbol", "symbol", "hugo_symbol", "ensembl_gene_id",
)  # fmt: skip
# per-gene annotation columns of genes x samples tables (cBioPortal, GDC), not samples
ANNOTATION_COLUMNS: tuple[str, ...] = (
    "entrez_gene_id", "description", "gene_type", "gene_biotype", "chromosome", "length", "name",
)  # fmt: skip
RNASEQ_SUFFIX = "_rnaseq"


def _orientation(frame: Any, key: str, genes: Sequence[str] | None, given: str | None) -> tuple[str, str]:
    """("samples_x_genes" | "genes_x_samples", reason)."""
    if given is not None:
        if given not in ("samples_x_genes", "genes_x_samples"):
            raise ValueError(f"orientation must be 'samples_x_genes' or 'genes_x_samples', got {given!r}")
        return given, "given"
    rnaseq = [c for c in frame.columns if c.endswith(RNASEQ_SUFFIX)]
    if rnaseq:
        return "samples_x_genes", f"PORPOISE/MCAT study CSV: {len(rnaseq)} '*{RNASEQ_SUFFIX}' columns"
    if genes:
        wanted = set(genes)
        in_header = len(wanted & set(frame.columns))
        in_rows = len(wanted & set(frame[key].str.strip()))
        if in_header != in_rows:
            where = "column names" if in_header > in_rows else f"values of the first column {key!r}"
            orient = "samples_x_genes" if in_header > in_rows else "genes_x_samples"
            return orient, f"{max(in_header, in_rows)} of the {len(wanted)} trained genes are {where}"
    head = key.strip().lower()
    if head in ID_COLUMNS:
        return "samples_x_genes", f"the first column {key!r} names subjects"
    if head in GENE_COLUMNS:
        return "genes_x_samples", f"the first column {key!r} names genes"
    rows, cols = frame.shape[0], frame.shape[1] - 1
    if rows > cols:
        return "genes_x_samples", f"{rows} rows > {cols} value columns (bulk tables hold more genes than samples)"
    return "samples_x_genes", f"{rows} rows <= {cols} value columns (bulk tables hold more genes than samples)"


def _header_duplicates(path: str, sep: str | None) -> list[str]:
    import gzip

    opener = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        first = f.readline()
    delimiter = sep if sep and len(sep) == 1 else ("\t" if "\t" in first else ",")
    names = next(csv.reader([first], delimiter=delimiter), [])
    seen: set[str] = set()
    return sorted({n for n in names if n in seen or seen.add(n)})


def _merge_repeated_ids(ids: list[str], values: np.ndarray, path: str) -> tuple[list[str], np.ndarray]:
    """One row per id: repeated ids must hold identical values (NaN equal to NaN)."""
    uniq, first, inverse = np.unique(np.array(ids, dtype=object), return_index=True, return_inverse=True)
    if len(uniq) == len(ids):
        return ids, values
    ref = values[first[inverse]]  # [R, G]: each row's first occurrence
    differs = ~((values == ref) | (np.isnan(values) & np.isnan(ref))).all(1)
    if differs.any():
        bad = sorted({ids[i] for i in np.nonzero(differs)[0]})
        raise ValueError(
            f"{path}: {len(bad)} id(s) repeat with different expression values (first: {_first(bad)}); keep one "
            "sample per patient (or aggregate single cells) first"
        )
    keep = np.sort(first)
    logger.info(f"{path}: {len(ids) - len(keep)} repeated row(s) of identical ids kept once (e.g. one per slide)")
    return [ids[i] for i in keep], values[keep]


def read_expression_table(
    path: str | os.PathLike,
    orientation: str | None = None,
    id_column: str | None = None,
    genes: Sequence[str] | None = None,
    id_length: int | None = None,
    sep: str | None = None,
) -> FeatureTable:
    """A CSV/TSV expression table in either orientation (module docstring: detection, repeated ids).

    Args:
        path: ``.csv`` / ``.tsv`` (``.gz`` too).
        orientation: ``"samples_x_genes"`` or ``"genes_x_samples"``; ``None`` detects it.
        id_column: the column of sample ids (samples x genes) or of gene names (genes x samples); default: the
            first of ``ID_COLUMNS`` present for samples x genes, else the first column.
        genes: the trained gene list: guides detection, and only those genes are read (columns of other content,
            e.g. clinical, are then ignored); a missing one is an error at alignment.
        id_length: truncate ids to this many characters (TCGA: 12 = patient), then merge repeats.
        sep: delimiter (default from the suffix).

    Example: ``read_expression_table("rna_clean.csv")`` (SurvPath) or ``read_expression_table("tcga_luad_all_clean.csv")``.
    """
    path = _require(path)
    frame = _read_text_frame(path, sep)
    if frame.shape[1] < 2:
        raise ValueError(f"{path}: needs an id column and at least one value column")
    key = id_column or frame.columns[0]
    if key not in frame.columns:
        raise ValueError(f"{path}: no column {key!r} (columns: {_first(list(frame.columns), 8)})")
    orient, reason = _orientation(frame, key, genes, orientation)
    logger.info(f"{path}: read as {orient.replace('_x_', ' x ')} ({reason})")
    dups = _header_duplicates(path, sep)
    if dups:
        logger.warning(f"{path}: {len(dups)} repeated column name(s) (first: {_first(dups)}); the first one is used")
    if orient == "genes_x_samples":
        gene_names = frame[key].str.strip().tolist()
        annotation = [c for c in frame.columns if c != key and c.strip().lower() in ANNOTATION_COLUMNS]
        samples = [c for c in frame.columns if c != key and c not in annotation]
        if annotation:
            logger.info(f"{path}: annotation column(s) {annotation} are not samples, skipped")
        wanted = None if genes is None else set(genes)
        keep = [j for j, g in enumerate(gene_names) if wanted is None or g in wanted]
        names = [gene_names[j] for j in keep]
        values = _numeric_frame(frame[samples].iloc[keep], path, names, row_label="gene").T  # [S, G]
        ids = [s.strip() for s in samples]
    else:
        if id_column is None and orientation is None:
            lower = {c.strip().lower(): c for c in frame.columns}
            key = next((lower[n] for n in ID_COLUMNS if n in lower), key)
        ids = frame[key].str.strip().tolist()
        rnaseq = [c for c in frame.columns if c.endswith(RNASEQ_SUFFIX)]
        if rnaseq:
            cols, names = rnaseq, [c[: -len(RNASEQ_SUFFIX)] for c in rnaseq]
        else:
            wanted = None if genes is None else set(genes)
            cols = [c for c in frame.columns if c != key and (wanted is None or c in wanted)]
            names = list(cols)
        values = _numeric_frame(frame[cols], path, ids)
    if id_length:
        ids = [i[: int(id_length)] for i in ids]
    ids, values = _merge_repeated_ids(ids, values, path)
    return FeatureTable(ids, names, values, path)


def read_h5ad(
    path: str | os.PathLike,
    layer: str | None = None,
    id_column: str | None = None,
    gene_column: str | None = None,
) -> FeatureTable:
    """An AnnData ``.h5ad`` (observations x genes; e.g. scanpy's ``pbmc68k_reduced``): values from ``.X``, a named
    ``layer``, or ``layer="raw"`` (``.raw.X`` with its own genes); ids from ``obs_names`` or ``obs[id_column]``;
    genes from ``var_names`` or ``var[gene_column]``. Sparse matrices are densified. Repeated ids follow the
    module's rule (identical kept once, differing an error).

    Example: ``read_h5ad("pbmc68k_reduced.h5ad", layer="raw")``.
    """
    import anndata

    path = _require(path)
    try:
        adata = anndata.read_h5ad(path)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path}: not a readable .h5ad ({type(e).__name__}: {e})") from e
    if layer == "raw":
        if adata.raw is None:
            raise ValueError(f"{path}: no .raw matrix")
        matrix, var = adata.raw.X, adata.raw.var
    elif layer is not None:
        if layer not in adata.layers:
            raise ValueError(f"{path}: no layer {layer!r} (layers: {list(adata.layers.keys())})")
        matrix, var = adata.layers[layer], adata.var
    else:
        matrix, var = adata.X, adata.var
    values = np.asarray(matrix.toarray() if hasattr(matrix, "toarray") else matrix, dtype=np.float32)
    for column, frame in ((id_column, adata.obs), (gene_column, var)):
        if column is not None and column not in frame.columns:
            raise ValueError(f"{path}: no column {column!r} (has: {_first(list(frame.columns), 8)})")
    ids = [str(i) for i in (adata.obs[id_column] if id_column else adata.obs_names)]
    names = [str(g) for g in (var[gene_column] if gene_column else var.index)]
    ids, values = _merge_repeated_ids(ids, values, path)
    return FeatureTable(ids, names, values, path)


def read_expression(path: str | os.PathLike, **kwargs: Any) -> FeatureTable:
    """Read any supported expression file by its suffix (table in the module docstring); ``kwargs`` go to the
    reader (``ids=`` / ``features=`` for ``.npy``, ``layer=`` for ``.h5ad``, ``orientation=`` for CSV/TSV).

    Example (config): ``"expression": "$common.data.expression.read_expression(@expression_path)"``.
    """
    name = str(path).lower()
    if name.endswith(".h5ad"):
        return read_h5ad(path, **kwargs)
    if name.endswith(".npy"):
        return read_npy(path, **kwargs)
    if name.endswith(".npz"):
        return read_npz(path, **kwargs)
    if name.endswith((".csv", ".tsv", ".tab", ".txt", ".csv.gz", ".tsv.gz")):
        return read_expression_table(path, **kwargs)
    raise ValueError(f"{path}: unknown expression format (.csv/.tsv, .npy, .npz, .h5ad)")
