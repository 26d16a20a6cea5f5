"""Gene-expression readers (both CSV orientations, PORPOISE/MCAT, SurvPath, npy, h5ad) and log1p + z-score."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data.expression import read_expression, read_expression_table, read_h5ad
from common.data.genetics import align_features, apply_feature_stats, fit_feature_stats

NAN = np.nan


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_samples_x_genes_by_id_column_name(tmp_path, caplog):
    path = write(tmp_path / "e.csv", "case_id,TP53,EGFR,KRAS,MYC\nc1,1,2,3,4\nc2,5,NA,7,8\n")
    with caplog.at_level(logging.INFO):
        t = read_expression(path)
    assert "read as samples x genes (the first column 'case_id' names subjects)" in caplog.text
    assert t.ids == ["c1", "c2"] and t.features == ["TP53", "EGFR", "KRAS", "MYC"]
    np.testing.assert_array_equal(t.values, [[1, 2, 3, 4], [5, NAN, 7, 8]])


def test_genes_x_samples_with_annotation_column(tmp_path, caplog):
    # cBioPortal layout: Hugo_Symbol, Entrez_Gene_Id, then one column per sample
    text = "Hugo_Symbol\tEntrez_Gene_Id\tTCGA-A\tTCGA-B\tTCGA-C\nTP53\t7157\t1.5\t2\t0\nEGFR\t1956\t3\t4\t5\n"
    with caplog.at_level(logging.INFO):
        t = read_expression_table(write(tmp_path / "rsem.tsv", text))
    assert "genes x samples (the first column 'Hugo_Symbol' names genes)" in caplog.text
    assert "annotation column(s) ['Entrez_Gene_Id'] are not samples" in caplog.text
    assert t.ids == ["TCGA-A", "TCGA-B", "TCGA-C"] and t.features == ["TP53", "EGFR"]
    np.testing.assert_array_equal(t.values, [[1.5, 3], [2, 4], [0, 5]])
    bad = write(tmp_path / "bad.tsv", "gene_id\tS1\tS2\nG1\t1\t2\nG2\tx\t2\n")
    with pytest.raises(ValueError, match=r"bad\.tsv: 1 non-numeric cell\(s\); first at line 3, gene 'G2', column 'S1'"):
        read_expression_table(bad)


def test_orientation_by_shape_and_by_trained_genes(tmp_path, caplog):
    tall = write(tmp_path / "tall.csv", ",S1,S2\nG1,1,2\nG2,3,4\nG3,5,6\n")  # 3 rows > 2 value columns
    with caplog.at_level(logging.INFO):
        t = read_expression_table(tall)
    assert "genes x samples (3 rows > 2 value columns" in caplog.text
    assert t.ids == ["S1", "S2"] and t.values.tolist() == [[1, 3, 5], [2, 4, 6]]
    square = write(tmp_path / "square.csv", ",A,B\nX,1,2\nY,3,4\n")  # ambiguous by shape: the gene list decides
    caplog.clear()
    with caplog.at_level(logging.INFO):
        t = read_expression_table(square, genes=["X", "Y"])
    assert "genes x samples (2 of the 2 trained genes are values of the first column" in caplog.text
    assert t.ids == ["A", "B"] and t.features == ["X", "Y"]
    assert read_expression_table(square, genes=["A", "B"]).ids == ["X", "Y"]
    assert read_expression_table(square, orientation="genes_x_samples").ids == ["A", "B"]


def test_survpath_rna_clean_layout_is_log_scaled(tmp_path):
    # SurvPath's rna_clean.csv: an unnamed first column of case ids, gene symbols as columns, log2 values
    path = write(
        tmp_path / "rna_clean.csv", ",FMO2,APIP,PLCE1\nTCGA-IN-7808,0.62,6.09,-9.97\nTCGA-BR-4253,1.2,5.5,0.3\n"
    )
    t = read_expression(path)
    assert t.ids == ["TCGA-IN-7808", "TCGA-BR-4253"] and t.features == ["FMO2", "APIP", "PLCE1"]
    with pytest.raises(ValueError, match=r"rna_clean\.csv: negative values \(first feature 'PLCE1'\)"):
        fit_feature_stats(t, log1p=True)
    stats = fit_feature_stats(t, log1p=False)
    assert stats["mean"].tolist() == pytest.approx([0.91, 5.795, -4.835], abs=1e-5)


def test_porpoise_study_csv_rnaseq_columns_and_repeated_cases(tmp_path, caplog):
    head = "case_id,slide_id,age,survival_months,TP53_cnv,TP53_mut,TP53_rnaseq,EGFR_rnaseq\n"
    rows = "TCGA-01,s1.svs,60,12.5,1,0,0.5,1.5\nTCGA-01,s2.svs,60,12.5,1,0,0.5,1.5\nTCGA-02,s3.svs,55,3,0,1,2,NA\n"
    with caplog.at_level(logging.INFO):
        t = read_expression(write(tmp_path / "tcga_luad_all_clean.csv", head + rows))
    assert "PORPOISE/MCAT study CSV: 2 '*_rnaseq' columns" in caplog.text
    assert "1 repeated row(s) of identical ids kept once" in caplog.text
    assert t.ids == ["TCGA-01", "TCGA-02"] and t.features == ["TP53", "EGFR"]
    np.testing.assert_array_equal(t.values, [[0.5, 1.5], [2, NAN]])
    clash = head + "TCGA-01,s1.svs,60,1,1,0,0.5,1.5\nTCGA-01,s2.svs,60,1,1,0,0.7,1.5\n"
    with pytest.raises(ValueError, match=r"1 id\(s\) repeat with different expression values \(first: TCGA-01\)"):
        read_expression(write(tmp_path / "clash.csv", clash))


def test_id_length_truncates_tcga_barcodes_to_patients(tmp_path):
    path = write(tmp_path / "e.csv", "sample_id,G1\nTCGA-AA-0001-01A,1\nTCGA-AA-0002-01A,2\n")
    assert read_expression_table(path, id_length=12).ids == ["TCGA-AA-0001", "TCGA-AA-0002"]


def test_npy_with_ids_and_gene_names(tmp_path):
    np.save(tmp_path / "x.npy", np.array([[1.0, 2.0], [3.0, 4.0]], np.float32))
    t = read_expression(tmp_path / "x.npy", ids=["p1", "p2"], features=["G1", "G2"])
    assert t.features == ["G1", "G2"] and t.rows(["p2"]).tolist() == [[3, 4]]


def test_h5ad_x_layer_raw_and_obs_column(tmp_path):
    import anndata
    import pandas as pd
    from scipy import sparse

    counts = np.array([[0, 3, 1], [2, 0, 0]], np.float32)
    adata = anndata.AnnData(
        X=sparse.csr_matrix(counts * 10),
        obs=pd.DataFrame({"patient": ["P1", "P1"]}, index=["cell1", "cell2"]),
        var=pd.DataFrame({"symbol": ["CD3E", "MS4A1", "LYZ"]}, index=["ENSG1", "ENSG2", "ENSG3"]),
        layers={"counts": counts},
    )
    adata.raw = anndata.AnnData(X=counts[:, :2], var=pd.DataFrame(index=["R1", "R2"]), obs=adata.obs)
    adata.write_h5ad(tmp_path / "a.h5ad")
    t = read_expression(tmp_path / "a.h5ad")
    assert t.ids == ["cell1", "cell2"] and t.features == ["ENSG1", "ENSG2", "ENSG3"]
    np.testing.assert_array_equal(t.values, counts * 10)  # sparse X densified
    assert read_h5ad(tmp_path / "a.h5ad", layer="counts", gene_column="symbol").features == ["CD3E", "MS4A1", "LYZ"]
    raw = read_h5ad(tmp_path / "a.h5ad", layer="raw")
    assert raw.features == ["R1", "R2"] and raw.values.tolist() == [[0, 3], [2, 0]]
    with pytest.raises(ValueError, match=r"a\.h5ad: 1 id\(s\) repeat with different expression values \(first: P1\)"):
        read_h5ad(tmp_path / "a.h5ad", id_column="patient")
    with pytest.raises(ValueError, match=r"a\.h5ad: no layer 'tpm'"):
        read_h5ad(tmp_path / "a.h5ad", layer="tpm")


def test_log1p_zscore_on_the_training_split_by_hand(tmp_path):
    # G1 training values e^0-1, e^1-1, e^2-1 -> log1p 0, 1, 2: mean 1, std sqrt(2/3); G2 constant 3 -> std 1
    e = math.e
    text = f"case_id,G1,G2,G3\nt1,0,3,1\nt2,{e - 1},3,1\nt3,{e**2 - 1},3,1\nv1,{e**4 - 1},8,1\n"
    t = read_expression(write(tmp_path / "e.csv", text))
    stats = fit_feature_stats(t, ["t1", "t2", "t3"], log1p=True)
    assert stats["log1p"] is True
    assert stats["mean"].tolist() == pytest.approx([1, math.log1p(3), math.log1p(1)], abs=1e-6)
    assert stats["std"].tolist() == pytest.approx([math.sqrt(2 / 3), 1, 1], abs=1e-6)
    z = apply_feature_stats(align_features(t, stats["features"]).rows(["v1"]), stats)
    assert z[0].tolist() == pytest.approx([3 / math.sqrt(2 / 3), math.log1p(8) - math.log1p(3), 0], abs=1e-5)
    torch.save(stats, tmp_path / "s.pt")
    assert torch.load(tmp_path / "s.pt", weights_only=True)["features"] == ["G1", "G2", "G3"]


def test_new_table_aligned_to_trained_genes(tmp_path, caplog):
    t = read_expression(write(tmp_path / "new.csv", "case_id,G3,G1,EXTRA1,EXTRA2\nc1,1,2,3,4\n"))
    with caplog.at_level(logging.INFO):
        assert align_features(t, ["G1", "G3"], what="genes").values.tolist() == [[2, 1]]
    assert "2 genes not in the trained list dropped" in caplog.text
    with pytest.raises(ValueError, match=r"new\.csv: 2 of the 3 trained genes are missing \(first: G2, G4\)"):
        align_features(t, ["G1", "G2", "G4"], what="genes")


# ---------------------------------------------------------------- gaps found by mutation testing (mutmut 3.8)


def test_detection_reasons_are_logged_exactly(tmp_path, caplog):
    cases = {
        "wide.csv": (",G1,G2,G3\nA,1,2,3\nB,4,5,6\n", {}, "samples x genes (2 rows <= 3 value columns"),
        "square.csv": (",G1,G2\nA,1,2\nB,3,4\n", {}, "samples x genes (2 rows <= 2 value columns"),
        "given.csv": (",A,B\nX,1,2\n", {"orientation": "genes_x_samples"}, "genes x samples (given)"),
        "header.csv": (",A,B\nX,1,2\nY,3,4\n", {"genes": ["A", "B", "Q"]}, "samples x genes (2 of the 3 trained genes are column names)"),
        "porpoise.csv": ("case_id,G_rnaseq\nc,1\n", {}, "read as samples x genes (PORPOISE/MCAT study CSV: 1"),
    }  # fmt: skip
    for name, (text, kwargs, expected) in cases.items():
        caplog.clear()
        with caplog.at_level(logging.INFO):
            read_expression_table(write(tmp_path / name, text), **kwargs)
        assert expected in caplog.text, (name, caplog.text)
    with pytest.raises(ValueError, match="orientation must be 'samples_x_genes' or 'genes_x_samples', got 'rows'"):
        read_expression_table(tmp_path / "wide.csv", orientation="rows")


def test_id_column_anywhere_gene_subsets_and_explicit_orientation(tmp_path):
    path = write(tmp_path / "e.csv", "age,Case_ID,G1,G2\n50,c1,1,2\n60,c2,3,4\n")
    assert read_expression_table(path, genes=["G2", "G1"]).ids == ["c1", "c2"]  # id column found by name
    t = read_expression_table(path, genes=["G2"])
    assert t.features == ["G2"] and t.values.tolist() == [[2], [4]]  # only trained genes read; 'age' ignored
    explicit = read_expression_table(path, orientation="samples_x_genes", id_column="Case_ID", genes=["G1"])
    assert explicit.ids == ["c1", "c2"] and explicit.features == ["G1"]
    first = read_expression_table(write(tmp_path / "f.csv", "sample,age\ns1,5\n"), orientation="samples_x_genes")
    assert first.ids == ["s1"] and first.features == ["age"]  # given orientation: the first column is the id
    tall = write(tmp_path / "t.csv", "gene_id,S1,S2\nG1,1,2\nG2,3,4\nG3,5,6\n")
    assert read_expression_table(tall, genes=["G3", "G1"]).features == ["G1", "G3"]
    with pytest.raises(ValueError, match=r"t\.csv: no column 'gene' \(columns: gene_id, S1, S2\)"):
        read_expression_table(tall, id_column="gene")


def test_repeated_header_names_and_nan_repeats(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        read_expression_table(write(tmp_path / "d.tsv", "case_id\tG1\tG1\tG2\nc1\t1\t2\t3\n"))
    assert "d.tsv: 1 repeated column name(s) (first: G1); the first one is used" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        read_expression_table(write(tmp_path / "ok.tsv", "case_id\tG1\tG2\nc1\t1\t3\n"))
    assert "repeated column" not in caplog.text
    same = write(tmp_path / "s.csv", "case_id,G1,G2\nc1,NA,1\nc1,NA,1\n")  # NaN equals NaN in a repeat
    assert read_expression_table(same).values.shape == (1, 2)
    half = write(tmp_path / "h.csv", "case_id,G1,G2\nc1,NA,1\nc1,5,1\n")  # NaN vs a value: different rows
    with pytest.raises(ValueError, match=r"h\.csv: 1 id\(s\) repeat with different expression values"):
        read_expression_table(half)


def test_h5ad_dense_and_forwarded_arguments(tmp_path):
    import anndata
    import pandas as pd

    adata = anndata.AnnData(X=np.array([[1.0, 2.0]], np.float32), obs=pd.DataFrame({"pid": ["P"]}, index=["c"]),
                            var=pd.DataFrame(index=["G1", "G2"]))  # fmt: skip
    adata.write_h5ad(tmp_path / "d.h5ad")
    t = read_expression(tmp_path / "d.h5ad", id_column="pid")
    assert (t.ids, t.values.tolist(), t.source) == (["P"], [[1, 2]], str(tmp_path / "d.h5ad"))
    with pytest.raises(ValueError, match=r"d\.h5ad: no column 'patient' \(has: pid\)"):
        read_h5ad(tmp_path / "d.h5ad", id_column="patient")
    with pytest.raises(ValueError, match=r"d\.h5ad: no \.raw matrix"):
        read_h5ad(tmp_path / "d.h5ad", layer="raw")
    (tmp_path / "bad.h5ad").write_bytes(b"nope")
    with pytest.raises(ValueError, match=r"bad\.h5ad: not a readable \.h5ad"):
        read_expression(tmp_path / "bad.h5ad")
    np.savez(tmp_path / "e.npz", values=np.ones((1, 2)), ids=np.array(["p"]), genes=np.array(["A", "B"]))
    assert read_expression(tmp_path / "e.npz").features == ["A", "B"]
    csv_path = write(tmp_path / "o.csv", ",A,B\nX,1,2\n")
    assert read_expression(csv_path, orientation="genes_x_samples").ids == ["A", "B"]
    with pytest.raises(ValueError, match=r"x\.parquet: unknown expression format"):
        read_expression(tmp_path / "x.parquet")


def test_expression_dispatch_suffixes_and_explicit_id_column(tmp_path):
    import gzip

    text = "case_id,G1\nc1,1\n"
    for name in ("a.tsv", "a.tab", "a.txt"):
        assert read_expression(write(tmp_path / name, text.replace(",", "\t"))).ids == ["c1"]
    for name in ("a.csv.gz", "a.tsv.gz"):
        with gzip.open(tmp_path / name, "wt") as f:
            f.write(text if name.startswith("a.csv") else text.replace(",", "\t"))
        assert read_expression(tmp_path / name).features == ["G1"]
    np.savez(tmp_path / "e.npz", values=np.ones((1, 1)), ids=np.array(["p"]))
    with pytest.raises(TypeError):
        read_expression(tmp_path / "e.npz", unknown=1)  # arguments reach the reader
    both = write(tmp_path / "b.csv", "case_id,pid,G1\nc1,p1,1\n")
    assert read_expression_table(both, id_column="pid", genes=["G1"]).ids == ["p1"]  # the given column wins
    bad = write(tmp_path / "bad.csv", "case_id,G1\nc1,x\n")
    with pytest.raises(
        ValueError, match=r"bad\.csv: 1 non-numeric cell\(s\); first at line 2, subject 'c1', column 'G1'"
    ):
        read_expression_table(bad)
    with pytest.raises(ValueError, match=r"one\.csv: needs an id column and at least one value column"):
        read_expression_table(write(tmp_path / "one.csv", "case_id\nc1\n"))


def test_repeated_header_names_in_csv_and_custom_separators(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        read_expression_table(write(tmp_path / "d.csv", "case_id,G1,G1\nc1,1,2\n"))
    assert "d.csv: 1 repeated column name(s) (first: G1)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        t = read_expression_table(write(tmp_path / "s.txt", "case_id;G1;G1\nc1;1;2\n"), sep=";")
    assert t.ids == ["c1"] and "s.txt: 1 repeated column name(s) (first: G1)" in caplog.text
