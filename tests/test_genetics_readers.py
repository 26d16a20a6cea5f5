"""Genetics readers, joining, train-only statistics and the lookup transform, against hand-computed values."""

from __future__ import annotations

import gzip
import logging
import math
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from common.data.genetics import (
    FeatureTable,
    align_features,
    apply_feature_stats,
    fit_feature_stats,
    join_subjects,
    read_burden,
    read_genetics,
    read_id_list,
    read_npy,
    read_npz,
    read_plink,
    read_sscore,
    read_table,
    read_vcf,
)
from common.transforms.genetics import GeneticsLookupd

NAN = np.nan


def bed_reader_data(name: str) -> str:
    import bed_reader

    return os.path.join(os.path.dirname(bed_reader.__file__), "tests", "data", name)


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# ------------------------------------------------------------------------------------------------ FeatureTable


def test_table_rejects_duplicate_ids_and_wrong_shapes_naming_the_source():
    with pytest.raises(ValueError, match=r"g\.csv: 1 duplicate subject id\(s\) \(first: a\)"):
        FeatureTable(["a", "b", "a"], ["f"], np.zeros((3, 1)), "g.csv")
    with pytest.raises(ValueError, match=r"g\.csv: matrix of shape \(2, 2\) but 3 subject ids"):
        FeatureTable(["a", "b", "c"], ["f", "g"], np.zeros((2, 2)), "g.csv")
    t = FeatureTable(["a", "b"], ["f"], np.array([[1], [2]]), "g.csv")
    assert t.values.dtype == np.float32 and t.rows(["b", "a"]).ravel().tolist() == [2.0, 1.0]
    with pytest.raises(KeyError, match=r"g\.csv: 1 subject\(s\) not in the table \(first: zz\)"):
        t.rows(["a", "zz"])


# -------------------------------------------------------------------------------------------------- npy / npz


def test_npy_with_id_list_txt_and_csv(tmp_path):
    x = np.array([[0, 1, 2], [2, NAN, 1]], np.float32)
    np.save(tmp_path / "g.npy", x)
    ids_txt = write(tmp_path / "ids.txt", "s1\ns2\n")
    ids_csv = write(tmp_path / "ids.csv", "batch,subject_id\n1,s1\n1,s2\n")
    names = write(tmp_path / "snps.txt", "rs1\nrs2\nrs3\n")
    for ids in (ids_txt, ids_csv, ["s1", "s2"]):
        t = read_npy(tmp_path / "g.npy", ids=ids, features=names)
        assert t.ids == ["s1", "s2"] and t.features == ["rs1", "rs2", "rs3"]
        np.testing.assert_array_equal(t.values, x)
    assert read_npy(tmp_path / "g.npy", ids=["a", "b"]).features == ["f0", "f1", "f2"]
    with pytest.raises(ValueError, match=r"g\.npy: matrix of shape \(2, 3\) but 3 subject ids"):
        read_npy(tmp_path / "g.npy", ids=["a", "b", "c"])
    assert read_id_list(write(tmp_path / "h.txt", "subject_id\nx\ny\n")) == ["x", "y"]


def test_npz_accepts_documented_key_names_and_refuses_pickles(tmp_path):
    x = np.array([[1.5, 2.5]], np.float32)
    np.savez(tmp_path / "a.npz", values=x, ids=np.array(["s1"]), features=np.array(["PGS1", "PGS2"]))
    t = read_npz(tmp_path / "a.npz")
    assert (t.ids, t.features, t.values.tolist()) == (["s1"], ["PGS1", "PGS2"], [[1.5, 2.5]])
    np.savez(tmp_path / "b.npz", G=x, iid=np.array([1000123]))  # UK Biobank eids as integers, ContIG's G
    t = read_npz(tmp_path / "b.npz")
    assert t.ids == ["1000123"] and t.features == ["f0", "f1"]
    np.savez(tmp_path / "c.npz", values=x)
    with pytest.raises(ValueError, match=r"c\.npz: no ids array \(it holds \['values'\]; accepted names"):
        read_npz(tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", values=x, ids=np.array(["s1"], dtype=object))
    with pytest.raises(ValueError, match=r"d\.npz: holds object \(pickled\) arrays"):
        read_npz(tmp_path / "d.npz")


# ----------------------------------------------------------------------------------------------------- tables


def test_csv_keyed_by_id_column_with_missing_tokens(tmp_path):
    path = write(tmp_path / "pgs.csv", "age,IID,PGS1,PGS2\n50,1001,0.5,NA\n61,1002,,-1.25\n70,1003,.,3e-1\n")
    t = read_table(path)  # IID found by name though it is not the first column
    assert t.ids == ["1001", "1002", "1003"] and t.features == ["age", "PGS1", "PGS2"]
    np.testing.assert_array_equal(t.values, np.array([[50, 0.5, NAN], [61, NAN, -1.25], [70, NAN, 0.3]], np.float32))
    assert read_table(path, features=["PGS2"]).features == ["PGS2"]
    tsv = write(tmp_path / "burden.tsv", "sample\tGENE1\tGENE2\nA\t1\t0\nB\t0\t2\n")
    np.testing.assert_array_equal(read_genetics(tsv).values, [[1, 0], [0, 2]])


def test_csv_non_numeric_cell_names_line_subject_and_column(tmp_path):
    path = write(tmp_path / "pgs.csv", "subject_id,PGS1,PGS2\ns1,0.5,1\ns2,0.1,high\ns3,x,2\n")
    with pytest.raises(
        ValueError, match=r"pgs\.csv: 2 non-numeric cell\(s\); first at line 3, subject 's2', column 'PGS2': 'high'"
    ):
        read_table(path)
    with pytest.raises(ValueError, match=r"pgs\.csv: 1 requested column\(s\) absent \(first: PGS9\)"):
        read_table(write(tmp_path / "pgs.csv", "subject_id,PGS1\ns1,1\n"), features=["PGS9"])
    with pytest.raises(ValueError, match=r"without a subject id in column 'subject_id' \(first at line 3\)"):
        read_table(write(tmp_path / "blank.csv", "subject_id,PGS1\ns1,1\n,2\n"))


# ------------------------------------------------------------------------------------------------------ PLINK


def write_plink(stem: Path, codes: list[list[int]], iids: list[str]) -> str:
    """A .bed written byte by byte from PLINK 2-bit codes (00 hom A1, 01 missing, 10 het, 11 hom A2), one list of
    per-subject codes per SNP, low bits first (PLINK 1 SNP-major format)."""
    body = bytearray(b"\x6c\x1b\x01")
    for snp in codes:
        padded = snp + [0] * (-len(snp) % 4)
        for k in range(0, len(padded), 4):
            body.append(sum(c << (2 * j) for j, c in enumerate(padded[k : k + 4])))
    (stem.parent / f"{stem.name}.bed").write_bytes(bytes(body))
    bim = "".join(f"1\trs{j + 1}\t0\t{100 * (j + 1)}\tA\tG\n" for j in range(len(codes)))
    (stem.parent / f"{stem.name}.bim").write_text(bim)
    (stem.parent / f"{stem.name}.fam").write_text("".join(f"F{i} {i} 0 0 1 -9\n" for i in iids))
    return str(stem) + ".bed"


def test_plink_dosages_count_the_second_allele_by_hand(tmp_path):
    # 5 subjects (two bytes per SNP). SNP rs1: hom A1, het, hom A2, missing, hom A2 -> A2 counts 0, 1, 2, NaN, 2
    # SNP rs2: het, hom A2, hom A1, hom A1, het -> 1, 2, 0, 0, 1
    bed = write_plink(tmp_path / "toy", [[0b00, 0b10, 0b11, 0b01, 0b11], [0b10, 0b11, 0b00, 0b00, 0b10]], list("abcde"))
    t = read_plink(bed)
    assert t.ids == list("abcde") and t.features == ["rs1", "rs2"]
    np.testing.assert_array_equal(t.values, np.array([[0, 1], [1, 2], [2, 0], [NAN, 0], [2, 1]], np.float32))
    assert read_plink(tmp_path / "toy", subject_id="fid_iid").ids[:2] == ["Fa_a", "Fb_b"]  # the stem works too
    assert read_plink(bed, snps=["rs2"]).values[:, 0].tolist() == [1, 2, 0, 0, 1]


def test_plink_written_by_bed_reader_reads_back_under_count_A1_false(tmp_path):
    from bed_reader import to_bed

    val = np.array([[0, 1, 2], [2, NAN, 0]], np.float32)  # A1 counts as given to to_bed (its default count_A1=True)
    to_bed(tmp_path / "w.bed", val, properties={"iid": ["x", "y"], "sid": ["a", "b", "c"]})
    got = read_plink(tmp_path / "w.bed").values
    np.testing.assert_array_equal(got, 2 - val)  # A2 count = 2 - A1 count; missing stays missing


def decode_bed(path: str, n: int, m: int) -> np.ndarray:
    """Independent PLINK decoder for the test: A2-allele dosages [n, m] from the raw bytes."""
    raw = np.fromfile(path, dtype=np.uint8)
    assert raw[:3].tolist() == [0x6C, 0x1B, 0x01]
    per = (n + 3) // 4
    block = raw[3:].reshape(m, per)
    codes = np.stack([(block >> (2 * k)) & 3 for k in range(4)], -1).reshape(m, per * 4)[:, :n]  # [m, n]
    dose = np.array([0, NAN, 1, 2], np.float32)[codes]  # 00 -> 0, 01 -> missing, 10 -> 1, 11 -> 2
    return dose.T


def test_plink_real_toydata_matches_an_independent_decoder():
    bed = bed_reader_data("toydata.5chrom.bed")
    t = read_plink(bed)
    assert t.values.shape == (500, 10000) and t.ids[:2] == ["per0", "per1"] and t.features[:2] == ["null_0", "null_1"]
    np.testing.assert_array_equal(t.values, decode_bed(bed, 500, 10000))
    step = read_plink(bed, snp_step=100)  # ContIG's sid_slice=slice(0, None, 100)
    assert step.features == [f"null_{j}" for j in range(0, 10000, 100)]
    np.testing.assert_array_equal(step.values, t.values[:, ::100])
    missing = read_plink(bed_reader_data("some_missing.bed"))
    np.testing.assert_array_equal(
        np.isnan(missing.values), np.isnan(decode_bed(bed_reader_data("some_missing.bed"), 100, 100))
    )


def test_plink_errors_name_the_file(tmp_path):
    bed = write_plink(tmp_path / "toy", [[0, 2, 3]], ["a", "b", "c"])
    with pytest.raises(KeyError, match=r"toy\.bed: 1 requested SNP\(s\) not in the \.bim \(first: rs9\)"):
        read_plink(bed, snps=["rs1", "rs9"])
    os.remove(tmp_path / "toy.fam")
    with pytest.raises(FileNotFoundError, match=r"missing .*toy\.fam"):
        read_plink(bed)
    (tmp_path / "bad.bed").write_bytes(b"\x00\x01\x02\x03")
    (tmp_path / "bad.bim").write_text("1\trs1\t0\t1\tA\tG\n")
    (tmp_path / "bad.fam").write_text("a a 0 0 1 -9\n")
    with pytest.raises(ValueError, match=r"bad\.bed: not a readable PLINK"):
        read_plink(tmp_path / "bad.bed")


# ----------------------------------------------------------------------------------------------------- sscore


SSCORE = "#FID\tIID\tALLELE_CT\tNAMED_ALLELE_DOSAGE_SUM\tSCORE1_AVG\tSCORE2_AVG\n"


def test_sscore_columns_names_and_folder_join(tmp_path, caplog):
    one = write(
        tmp_path / "PGS000001.sscore", "#IID\tALLELE_CT\tSCORE1_AVG\tSCORE1_SUM\ns1\t10\t0.25\t2.5\ns2\t10\t-0.5\t-5\n"
    )
    t = read_sscore(one)
    assert t.features == ["PGS000001"] and t.values.ravel().tolist() == [0.25, -0.5]  # *_AVG wins over *_SUM
    two = write(tmp_path / "multi.sscore", SSCORE + "F\ts2\t8\t3\t0.125\t1\nF\ts3\t8\t2\t0.0\t2\n")
    t = read_sscore(two)
    assert t.features == ["multi:SCORE1_AVG", "multi:SCORE2_AVG"] and t.ids == ["s2", "s3"]
    assert read_sscore(two, score_columns=["SCORE2_AVG"]).features == ["multi"]
    with caplog.at_level(logging.WARNING):
        both = read_sscore(tmp_path)  # the folder: files sorted by name, outer-joined on IID
    assert both.ids == ["s1", "s2", "s3"] and both.features == ["PGS000001", "multi:SCORE1_AVG", "multi:SCORE2_AVG"]
    np.testing.assert_array_equal(both.values, np.array([[0.25, NAN, NAN], [-0.5, 0.125, 1], [NAN, 0, 2]], np.float32))
    assert "1 of 3 subjects absent" in caplog.text
    with pytest.raises(ValueError, match=r"bad\.sscore: no IID column"):
        read_sscore(write(tmp_path / "bad.sscore", "ID\tSCORE1_AVG\ns1\t1\n"))


# ----------------------------------------------------------------------------------------------- ContIG burden


def test_contig_burden_h5_with_sidecar_files(tmp_path):
    g = np.array([[0, 1, 3], [2, 0, 0]], np.float32)
    with h5py.File(tmp_path / "combined_burdens.h5", "w") as f:
        f["G"] = g
    write(tmp_path / "combined_burdens_iid.txt", "1000001\n1000002\n")
    write(tmp_path / "combined_burdens_colnames.txt", "BRCA1\nAPOE\nTTN\n")
    t = read_genetics(tmp_path / "combined_burdens.h5")
    assert t.ids == ["1000001", "1000002"] and t.features == ["BRCA1", "APOE", "TTN"]
    np.testing.assert_array_equal(t.values, g)
    with h5py.File(tmp_path / "inner.h5", "w") as f:  # ids and names stored inside the h5
        f["G"], f["iid"], f["colnames"] = g, np.array([b"a", b"b"]), np.array([b"x", b"y", b"z"])
    assert read_burden(tmp_path / "inner.h5").features == ["x", "y", "z"]
    with h5py.File(tmp_path / "nog.h5", "w") as f:
        f["X"] = g
    with pytest.raises(ValueError, match=r"nog\.h5: no 'G' dataset"):
        read_burden(tmp_path / "nog.h5")
    with h5py.File(tmp_path / "noids.h5", "w") as f:
        f["G"] = g
    with pytest.raises(FileNotFoundError, match=r"noids\.h5: no subject ids"):
        read_burden(tmp_path / "noids.h5")


# -------------------------------------------------------------------------------------------------------- VCF


VCF_TEXT = """##fileformat=VCFv4.2
##contig=<ID=1,length=1000>
##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">
#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ts1\ts2\ts3
1\t10\trs1\tA\tG\t.\tPASS\t.\tGT\t0/0\t0/1\t1/1
1\t20\t.\tC\tT\t.\tPASS\t.\tGT\t1|0\t./.\t0|0
1\t30\t.\tG\tA,T\t.\tPASS\t.\tGT\t./1\t1/2\t0/2
"""


def test_vcf_dosages_by_hand_plain_and_gzipped(tmp_path):
    # rs1: 0, 1, 2; 1:20:C:T: 1, NaN, 0; 1:30: half-missing NaN, 1/2 -> 2 non-reference alleles, 0/2 -> 1
    expected = np.array([[0, 1, NAN], [1, NAN, 2], [2, 0, 1]], np.float32)
    plain = write(tmp_path / "c.vcf", VCF_TEXT)
    with gzip.open(tmp_path / "c.vcf.gz", "wt") as f:
        f.write(VCF_TEXT)
    for path in (plain, tmp_path / "c.vcf.gz"):
        t = read_genetics(path)
        assert t.ids == ["s1", "s2", "s3"] and t.features == ["rs1", "1:20:C:T", "1:30:G:A,T"]
        np.testing.assert_array_equal(t.values, expected)
    with pytest.raises(ValueError, match=r"bad\.vcf: not a readable VCF"):
        read_vcf(write(tmp_path / "bad.vcf", "not a vcf\n"))


def test_read_genetics_dispatch_and_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"x\.foo: unknown genetics format"):
        read_genetics(write(tmp_path / "x.foo", "1"))
    with pytest.raises(FileNotFoundError, match=r"nope\.npz does not exist"):
        read_genetics(tmp_path / "nope.npz")


# -------------------------------------------------------------------------------------------- join / alignment


def table4() -> FeatureTable:
    return FeatureTable(
        ["s1", "s2", "s3", "s4"],
        ["f0", "f1", "f2"],
        np.array([[1, 2, NAN], [3, 2, NAN], [NAN, 2, NAN], [100, 4, 7]], np.float32),
        "g.tsv",
    )


def test_join_reports_subjects_in_one_modality_only(caplog):
    entries = [{"subject_id": s, "image": f"{s}.png"} for s in ["s3", "x1", "s1", "s1", "x2"]]
    with caplog.at_level(logging.WARNING):
        kept = join_subjects(entries, table4())
    assert [e["image"] for e in kept] == ["s3.png", "s1.png", "s1.png"]  # order kept; two images of s1 both kept
    assert "2 subject(s) have images but no genetics in g.tsv; left out (first: x1, x2)" in caplog.text
    assert (
        "2 subject(s) of g.tsv have genetics but no image among these 5 entries; unused here (first: s2, s4)"
        in caplog.text
    )
    with pytest.raises(ValueError, match="ids do not join"):
        join_subjects([{"subject_id": "zz"}], table4())
    with pytest.raises(ValueError, match="entry 0 has no 'subject_id'"):
        join_subjects([{"image": "a.png"}], table4())


def test_align_reorders_drops_extra_and_names_missing(caplog):
    t = table4()
    with caplog.at_level(logging.INFO):
        a = align_features(t, ["f2", "f0"], what="genes")
    assert a.features == ["f2", "f0"] and a.values[3].tolist() == [7, 100]
    assert "1 genes not in the trained list dropped" in caplog.text
    with pytest.raises(ValueError, match=r"g\.tsv: 2 of the 3 trained genes are missing \(first: TP53, EGFR\)"):
        align_features(t, ["TP53", "f1", "EGFR"], what="genes")


# -------------------------------------------------------------------------------------------------- statistics


def test_fit_stats_by_hand_on_training_subjects_only():
    stats = fit_feature_stats(table4(), ["s1", "s2", "s3"])
    # f0: observed training values 1, 3 -> mean 2, std sqrt(((1-2)^2 + (3-2)^2) / 2) = 1 (s4's 100 is not training)
    # f1: 2, 2, 2 -> mean 2, std 0 -> 1; f2: never observed -> fill 0, std 1
    assert stats["fill"].tolist() == [2, 2, 0] and stats["mean"].tolist() == [2, 2, 0]
    assert stats["std"].tolist() == [1, 1, 1] and stats["num_train"] == 3 and stats["features"] == ["f0", "f1", "f2"]
    z = apply_feature_stats(table4().values, stats)
    expected = [[-1, 0, 0], [1, 0, 0], [0, 0, 0], [98, 2, 7]]  # s3's missing f0 -> the mean -> 0
    assert z.dtype == torch.float32 and z.tolist() == expected
    other = fit_feature_stats(table4(), ["s1", "s4"])  # f0: 1, 100 -> mean 50.5, std 49.5
    assert other["mean"][0].item() == 50.5 and other["std"][0].item() == 49.5


def test_fit_stats_std_and_log1p_by_hand():
    t = FeatureTable(["a", "b", "c"], ["g"], np.array([[0.0], [math.e - 1], [math.e**2 - 1]]), "expr.csv")
    stats = fit_feature_stats(t, log1p=True)  # log1p -> 0, 1, 2: mean 1, std sqrt(2/3)
    assert stats["mean"].item() == pytest.approx(1.0) and stats["std"].item() == pytest.approx(math.sqrt(2 / 3))
    z = apply_feature_stats(np.array([[math.e**3 - 1], [NAN]]), stats)  # (3 - 1) / sqrt(2/3); missing -> 0
    assert z[:, 0].tolist() == pytest.approx([2 / math.sqrt(2 / 3), 0.0], abs=1e-5)
    t2 = FeatureTable(["a", "b", "c"], ["g"], np.array([[1.0], [2.0], [6.0]]), "x")
    s2 = fit_feature_stats(t2)  # mean 3, ((-2)^2 + (-1)^2 + 3^2) / 3 = 14/3
    assert s2["std"].item() == pytest.approx(math.sqrt(14 / 3))
    plain = fit_feature_stats(t2, standardise=False)  # imputation only
    assert plain["mean"].item() == 0 and plain["std"].item() == 1 and plain["fill"].item() == 3
    assert apply_feature_stats(np.array([[NAN], [5.0]]), plain)[:, 0].tolist() == [3.0, 5.0]


def test_fit_stats_accepts_entries_and_warns_for_absent_training_subjects(caplog):
    entries = [{"subject_id": "s1"}, {"subject_id": "s1"}, {"subject_id": "s2"}, {"subject_id": "zz"}]
    with caplog.at_level(logging.WARNING):
        stats = fit_feature_stats(table4(), entries)
    assert stats["num_train"] == 2 and "1 training subject(s) absent, not used (first: zz)" in caplog.text
    with pytest.raises(ValueError, match="no training subject in the table"):
        fit_feature_stats(table4(), ["zz"])


def test_apply_never_outputs_nan_and_refuses_inf_wrong_length_negative_log1p():
    stats = fit_feature_stats(table4(), ["s1", "s2", "s3"])
    assert not torch.isnan(apply_feature_stats(np.full((2, 3), NAN), stats)).any()
    with pytest.raises(ValueError, match=r"g\.tsv: infinite value\(s\) in feature 'f1'"):
        apply_feature_stats(np.array([1, np.inf, 0]), stats, source="g.tsv")
    with pytest.raises(ValueError, match="genetics vector of length 2, the statistics have 3 features"):
        apply_feature_stats(np.zeros(2), stats)
    t = FeatureTable(["a"], ["g"], np.array([[-0.5]]), "rna_clean.csv")
    with pytest.raises(ValueError, match=r"rna_clean\.csv: negative values .* set log1p=False"):
        fit_feature_stats(t, log1p=True)


def test_stats_survive_a_weights_only_checkpoint(tmp_path):
    stats = fit_feature_stats(table4(), ["s1", "s2", "s3"], log1p=False)
    torch.save({"state_dict": {}, "genetics_stats": stats}, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)["genetics_stats"]
    assert loaded["features"] == stats["features"] and torch.equal(loaded["mean"], stats["mean"])
    np.testing.assert_array_equal(
        apply_feature_stats(table4().values, loaded), apply_feature_stats(table4().values, stats)
    )


# -------------------------------------------------------------------------------------------------- transform


def test_lookup_transform_gives_the_standardised_row_and_names_absent_subjects(tmp_path):
    t = table4()
    stats = fit_feature_stats(t, ["s1", "s2", "s3"])
    lookup = GeneticsLookupd(t, stats)
    out = lookup({"subject_id": "s4", "image": "x.png"})
    assert out["image"] == "x.png" and out["genetics"].dtype == torch.float32
    assert out["genetics"].tolist() == [98, 2, 7]
    assert out["genetics"].untyped_storage().nbytes() == 3 * 4  # a copy of one row, not a view of the table
    import pickle

    assert pickle.loads(pickle.dumps(lookup))({"subject_id": "s4"})["genetics"].tolist() == [98, 2, 7]  # spawn-safe
    with pytest.raises(KeyError, match=r"subject 'nobody' has no genetics in g\.tsv \(4 subjects\)"):
        lookup({"subject_id": "nobody"})
    # a table whose columns come in another order is aligned to the statistics' feature list
    shuffled = FeatureTable(t.ids, ["f2", "f0", "f1"], t.values[:, [2, 0, 1]], "shuffled.csv")
    assert GeneticsLookupd(shuffled, stats, output_key="g")({"subject_id": "s1"})["g"].tolist() == [-1, 0, 0]
    # from a path, with reader arguments
    np.save(tmp_path / "g.npy", t.values)
    from_path = GeneticsLookupd(str(tmp_path / "g.npy"), {**stats, "features": ["f0", "f1", "f2"]},
                                reader_kwargs={"ids": t.ids})  # fmt: skip
    assert from_path({"subject_id": "s2"})["genetics"].tolist() == [1, 0, 0]


# ---------------------------------------------------------------- gaps found by mutation testing (mutmut 3.8)


def test_table_converts_ids_and_names_to_strings_and_selects():
    t = FeatureTable([1, 2, 3], [10, 11], np.arange(6).reshape(3, 2), "t.npz")
    assert t.ids == ["1", "2", "3"] and t.features == ["10", "11"] and "2" in t and 2 in t
    s = t.select(["3", "1"])
    assert (s.ids, s.features, s.values.tolist(), s.source) == (["3", "1"], ["10", "11"], [[4, 5], [0, 1]], "t.npz")
    with pytest.raises(ValueError, match=r"t\.npz: expected a \[subjects, features\] matrix, got shape \(3,\)"):
        FeatureTable(["a", "b", "c"], ["f"], np.zeros(3), "t.npz")


def test_id_lists_in_every_layout_and_float_eids(tmp_path):
    assert read_id_list(write(tmp_path / "a.tsv", "x\t1\ny\t2\n")) == ["x", "y"]  # no header: first column
    assert read_id_list(write(tmp_path / "b.csv", "1001,a\n1002,b\n")) == ["1001", "1002"]
    assert read_id_list(write(tmp_path / "c.tsv", "age\tIID\n50\tp1\n")) == ["p1"]
    with pytest.raises(ValueError, match=r"e\.txt: empty subject-id list"):
        read_id_list(write(tmp_path / "e.txt", "\n\n"))
    np.savez(tmp_path / "f.npz", values=np.ones((2, 1)), ids=np.array([1000123.0, 7.0]), features=np.array(["g"]))
    assert read_npz(tmp_path / "f.npz").ids == ["1000123", "7"]  # integral floats lose ".0"
    np.savez(tmp_path / "h.npz", values=np.ones((1, 1)), ids=np.array([1.5]))
    assert read_npz(tmp_path / "h.npz").ids == ["1.5"]
    np.save(tmp_path / "s.npy", np.array([["a"]]))
    with pytest.raises(ValueError, match=r"s\.npy: matrix of dtype <U1, expected numbers"):
        read_npy(tmp_path / "s.npy", ids=["x"])
    (tmp_path / "junk.npy").write_bytes(b"nope")
    with pytest.raises(ValueError, match=r"junk\.npy: not a readable \.npy array \(ValueError"):
        read_npy(tmp_path / "junk.npy", ids=["x"])


def test_table_separators_id_column_and_sources(tmp_path):
    with gzip.open(tmp_path / "g.csv.gz", "wt") as f:
        f.write("IID,PGS1\na,1\n")
    t = read_genetics(tmp_path / "g.csv.gz")
    assert (t.ids, t.values.tolist(), t.source) == (["a"], [[1.0]], str(tmp_path / "g.csv.gz"))
    assert read_genetics(write(tmp_path / "w.txt", "IID  PGS1 PGS2\na  1   2\n")).values.tolist() == [[1, 2]]
    assert read_genetics(write(tmp_path / "t.tab", "IID\tP Q\na\t3\n")).features == ["P Q"]  # tab, not spaces
    semi = write(tmp_path / "semi.csv", "id;PGS1\na;1\n")
    assert read_table(semi, sep=";").values.tolist() == [[1.0]]
    by_name = write(tmp_path / "k.csv", "first,second,PGS\nx,s1,1\ny,s2,2\n")
    assert read_table(by_name, id_column="second", features=["PGS"]).ids == ["s1", "s2"]
    with pytest.raises(ValueError, match=r"k\.csv: no column 'nope' \(columns: first, second, PGS\)"):
        read_table(by_name, id_column="nope")
    with pytest.raises(ValueError, match=r"one\.csv: needs a subject-id column and at least one feature column"):
        read_table(write(tmp_path / "one.csv", "IID\na\n"))


def test_plink_sources_and_subject_id_choice(tmp_path):
    bed = write_plink(tmp_path / "toy", [[0, 2, 3]], ["a", "b", "c"])
    assert read_plink(bed).source == bed and read_genetics(tmp_path / "toy", snp_step=1).features == ["rs1"]
    with pytest.raises(ValueError, match="subject_id must be 'iid' or 'fid_iid', got 'eid'"):
        read_plink(bed, subject_id="eid")


def test_sscore_list_of_files_keeps_column_blocks(tmp_path, caplog):
    two = write(tmp_path / "two.sscore", SSCORE + "F\ts1\t8\t3\t0.5\t1.5\nF\ts2\t8\t2\t0.25\t2.5\n")
    one = write(tmp_path / "one.sscore", "#IID\tSCORE1_AVG\ns1\t9\ns2\t8\n")
    three = write(tmp_path / "three.sscore", "#IID\tSCORE1_AVG\ns2\t7\ns1\t6\n")
    with caplog.at_level(logging.WARNING):
        t = read_genetics([two, one, three])  # a list: every file covers every subject, so no warning
    assert t.features == ["two:SCORE1_AVG", "two:SCORE2_AVG", "one", "three"] and t.ids == ["s1", "s2"]
    np.testing.assert_array_equal(t.values, [[0.5, 1.5, 9, 6], [0.25, 2.5, 8, 7]])
    assert "absent" not in caplog.text and t.source == f"{two}, {one}, {three}"
    with pytest.raises(ValueError, match=r"one\.sscore: score column\(s\) \['SCORE9_AVG'\] not found"):
        read_sscore(one, score_columns=["SCORE9_AVG"])
    with pytest.raises(ValueError, match=r"ct\.sscore: score column\(s\) \*_AVG / \*_SUM not found"):
        read_sscore(write(tmp_path / "ct.sscore", "#IID\tALLELE_CT\ns1\t3\n"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: folder holds no \*\.sscore file"):
        read_genetics(tmp_path / "empty")


def test_burden_explicit_sidecars_and_missing_names(tmp_path):
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f["G"] = np.ones((2, 1), np.float32)
    ids, cols = write(tmp_path / "ids.txt", "p1\np2\n"), write(tmp_path / "cols.txt", "GENE\n")
    t = read_burden(tmp_path / "b.h5", iids=ids, colnames=cols)
    assert (t.ids, t.features, t.source) == (["p1", "p2"], ["GENE"], str(tmp_path / "b.h5"))
    write(tmp_path / "b_iid.txt", "p1\np2\n")  # ids beside it, gene names nowhere
    with pytest.raises(FileNotFoundError, match=r"b\.h5: no gene names \(<stem>_colnames\.txt\)"):
        read_burden(tmp_path / "b.h5")
    with pytest.raises(FileNotFoundError, match=r"nope\.txt does not exist"):
        read_burden(tmp_path / "b.h5", colnames=tmp_path / "nope.txt")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match=r"bad\.h5: not a readable HDF5 file \(OSError"):
        read_burden(tmp_path / "bad.h5")


def test_vcf_counts_multiallelic_sites_and_reads_an_empty_body(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        t = read_vcf(write(tmp_path / "c.vcf", VCF_TEXT))
    assert "c.vcf: 1 multi-allelic site(s); their dosage counts every non-reference allele" in caplog.text
    assert t.values.dtype == np.float32 and t.source == str(tmp_path / "c.vcf")
    header = "".join(line + "\n" for line in VCF_TEXT.splitlines()[:4])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        empty = read_vcf(write(tmp_path / "e.vcf", header))
    assert empty.ids == ["s1", "s2", "s3"] and empty.values.shape == (3, 0) and "multi-allelic" not in caplog.text


def test_align_default_wording_duplicates_and_source(caplog):
    t = FeatureTable(["a"], ["g1", "g2", "g1"], np.array([[1, 2, 3]]), "dup.csv")
    with pytest.raises(ValueError, match=r"dup\.csv: 1 features appear twice \(first: g1\)"):
        align_features(t, ["g1", "g2"])
    assert align_features(t, ["g2"]).values.tolist() == [[2]]  # only the requested names must be unique
    with pytest.raises(ValueError, match=r"^dup\.csv: 1 of the 1 trained features are missing \(first: zz\)"):
        align_features(t, ["zz"])
    t2 = table4()
    assert align_features(t2, ["f1"]).source == "g.tsv" and align_features(t2, t2.features) is t2


def test_fit_stats_single_observation_unseen_warning_and_keys(caplog):
    t = FeatureTable(["a", "b", "c"], ["once", "never1", "never2"],
                     np.array([[NAN, NAN, NAN], [5.0, NAN, NAN], [NAN, NAN, NAN]]), "s.csv")  # fmt: skip
    with caplog.at_level(logging.WARNING):
        stats = fit_feature_stats(t)
    assert stats["mean"].tolist() == [5, 0, 0] and stats["fill"].tolist() == [5, 0, 0]  # one value: its mean is it
    assert stats["std"].tolist() == [1, 1, 1]
    assert "s.csv: 2 feature(s) never observed in training; imputed as 0" in caplog.text
    assert set(stats) == {"features", "fill", "mean", "std", "log1p", "standardise", "num_train", "source", "rule"}
    assert stats["standardise"] is True and stats["log1p"] is False and stats["source"] == "s.csv"
    assert stats["rule"].startswith("missing -> mean of observed training values")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        fit_feature_stats(table4(), ["s1", "s2"])  # every training subject present: no "absent" warning
    assert "absent" not in caplog.text
    assert fit_feature_stats(table4(), standardise=False)["standardise"] is False


def test_apply_log1p_checks_name_feature_and_source():
    t = FeatureTable(["a", "b"], ["g1", "g2"], np.array([[0.0, 1.0], [3.0, 3.0]]), "train.csv")
    stats = fit_feature_stats(t, log1p=True)
    with pytest.raises(ValueError, match=r"^new\.csv: negative values \(first feature 'g2'\)"):
        apply_feature_stats(np.array([[1.0, -2.0], [1.0, 1.0]]), stats, source="new.csv")
    with pytest.raises(ValueError, match=r"^input: negative values \(first feature 'g2'\)"):
        apply_feature_stats(np.array([[1.0, -2.0]]), stats)
    with pytest.raises(ValueError, match=r"^genetics vector of length 1"):
        apply_feature_stats(np.zeros(1), stats)


def test_lookup_keys_and_messages():
    t = table4()
    stats = fit_feature_stats(t, ["s1", "s2", "s3"])
    lookup = GeneticsLookupd(t, stats, id_key="eid")
    assert tuple(lookup.keys) == ("eid",)
    with pytest.raises(
        KeyError, match=r"data dict has no 'eid' to look genetics up by \(keys: \['image', 'subject_id'\]\)"
    ):
        lookup({"subject_id": "s1", "image": "x"})
    bad = FeatureTable(t.ids, t.features, np.where(np.arange(3) == 1, np.inf, t.values), "inf.tsv")
    with pytest.raises(ValueError, match=r"^inf\.tsv: infinite value\(s\) in feature 'f1'"):
        GeneticsLookupd(bad, stats)


def test_dispatch_by_every_suffix_forwards_arguments(tmp_path):
    bed = write_plink(tmp_path / "toy", [[0, 2, 3], [3, 3, 0]], ["a", "b", "c"])
    for entry in (bed, str(tmp_path / "toy.bim"), str(tmp_path / "toy.fam"), str(tmp_path / "toy")):
        assert read_genetics(entry, snps=["rs2"]).values[:, 0].tolist() == [2, 2, 0]
    with h5py.File(tmp_path / "b.hdf5", "w") as f:
        f["G"], f["ids"], f["features"] = np.ones((1, 1)), np.array([b"p"]), np.array([b"GENE"])
    assert read_genetics(tmp_path / "b.hdf5").features == ["GENE"]  # ContIG layout under other names too
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["G"], f["iids"], f["columns"] = np.ones((1, 1)), np.array([b"p"]), np.array([b"GENE2"])
    other = write(tmp_path / "other_ids.txt", "q\n")
    assert read_genetics(tmp_path / "c.h5", iids=other).ids == ["q"] and read_burden(tmp_path / "c.h5").features == [
        "GENE2"
    ]
    with gzip.open(tmp_path / "s.tsv.gz", "wt") as f:
        f.write("IID\tP 1\na\t2\n")
    assert read_genetics(tmp_path / "s.tsv.gz", features=["P 1"]).values.tolist() == [[2]]
    tsv = write(tmp_path / "sp.tsv", "IID\tP 1\ta b\nx\t1\t2\n")  # spaces inside names: a real tab split
    assert read_genetics(tsv).features == ["P 1", "a b"]
    sscore = write(tmp_path / "x.sscore", "#IID\tSCORE1_AVG\tSCORE2_AVG\ns1\t1\t2\n")
    assert read_genetics(sscore, score_columns=["SCORE2_AVG"]).values.tolist() == [[2]]
    assert read_genetics([sscore], score_columns=["SCORE1_AVG"]).values.tolist() == [[1]]
    (tmp_path / "d").mkdir()
    write(tmp_path / "d" / "y.sscore", "#IID\tSCORE1_AVG\tSCORE2_AVG\ns1\t3\t4\n")
    assert read_genetics(tmp_path / "d", score_columns=["SCORE2_AVG"]).values.tolist() == [[4]]
    assert read_sscore(write(tmp_path / "sum.sscore", "#IID\tSCORE1_SUM\ns1\t7\n")).values.tolist() == [[7]]
    np.savez(tmp_path / "z.npz", values=np.ones((1, 1)), ids=np.array(["p"]))
    with pytest.raises(TypeError):
        read_genetics(tmp_path / "z.npz", unknown=1)  # reader arguments are passed through, not swallowed
    with pytest.raises(TypeError):
        read_genetics(write(tmp_path / "v.vcf", VCF_TEXT), unknown=1)
    with pytest.raises(TypeError):
        read_genetics(tmp_path / "b.hdf5", unknown=1)
    with pytest.raises(TypeError):
        read_genetics(write(tmp_path / "t.csv", "IID,P\na,1\n"), unknown=1)
    with pytest.raises(TypeError):
        read_genetics(bed, unknown=1)
    with pytest.raises(TypeError):
        read_genetics(sscore, unknown=1)
    np.save(tmp_path / "m.npy", np.ones((1, 1)))
    assert read_genetics(tmp_path / "m.npy", ids=["p"]).ids == ["p"]


def test_plink_fileset_from_any_member_and_sidecars_next_to_dotted_names(tmp_path):
    bed = write_plink(tmp_path / "toy", [[0, 2, 3]], ["a", "b", "c"])
    assert read_plink(tmp_path / "toy.fam").source == bed and read_plink(tmp_path / "toy.bim").source == bed
    folder = tmp_path / "v1.0"
    folder.mkdir()
    with h5py.File(folder / "combined.burdens.h5", "w") as f:
        f["G"] = np.ones((1, 1))
    write(folder / "combined.burdens_iid.txt", "p1\n")
    write(folder / "combined.burdens_colnames.txt", "G1\n")
    assert read_burden(folder / "combined.burdens.h5").ids == ["p1"]


def test_vcf_without_samples_and_a_first_column_without_an_id_name(tmp_path):
    sites = "".join(line.split("\tFORMAT")[0] + "\n" for line in VCF_TEXT.splitlines()[3:5])
    with pytest.raises(
        ValueError, match=r"sites\.vcf: not a readable VCF \(ValueError: the VCF header names no samples\)"
    ):
        read_vcf(write(tmp_path / "sites.vcf", "##fileformat=VCFv4.2\n" + sites))
    t = read_table(write(tmp_path / "p.csv", "person,PGS\nx,1\ny,2\n"))
    assert t.ids == ["x", "y"] and t.features == ["PGS"]  # no id column name: the first column


def test_first_ids_are_listed_up_to_five(caplog):
    t = table4()
    with caplog.at_level(logging.WARNING):
        join_subjects([{"subject_id": s} for s in ["s1", "a", "b", "c", "d", "e"]], t)
    assert "(first: a, b, c, d, e)" in caplog.text and "e, ..." not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        join_subjects([{"subject_id": s} for s in ["s1", "a", "b", "c", "d", "e", "f"]], t)
    assert "(first: a, b, c, d, e, ...)" in caplog.text


def test_remaining_reader_errors_name_their_file(tmp_path):
    np.savez(tmp_path / "s.npz", values=np.array([["a"]]), ids=np.array(["p"]))
    with pytest.raises(ValueError, match=r"s\.npz: matrix of dtype <U1, expected numbers"):
        read_npz(tmp_path / "s.npz")
    np.savez(tmp_path / "ok.npz", values=np.ones((1, 1)), ids=np.array(["p"]))
    assert read_npz(tmp_path / "ok.npz").source == str(tmp_path / "ok.npz")
    bad = write(tmp_path / "bad.sscore", "#IID\tSCORE1_AVG\ns1\t0.5\ns2\tn/a?\n")
    with pytest.raises(
        ValueError, match=r"bad\.sscore: 1 non-numeric cell\(s\); first at line 3, subject 's2', column 'SCORE1_AVG'"
    ):
        read_sscore(bad)
    assert read_sscore(write(tmp_path / "g.sscore", "#IID\tSCORE1_AVG\ns1\tNA\n")).source == str(tmp_path / "g.sscore")
    no_gt = VCF_TEXT.replace("\tGT\t", "\tDP\t").replace('##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
                                                        '##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Depth">')  # fmt: skip
    no_gt = (
        no_gt.replace("0/0\t0/1\t1/1", "3\t4\t5")
        .replace("1|0\t./.\t0|0", "3\t4\t5")
        .replace("./1\t1/2\t0/2", "3\t4\t5")
    )
    with pytest.raises(
        ValueError,
        match=r"nogt\.vcf: not a readable VCF \(ValueError: the VCF header declares no GT \(genotype\) FORMAT field\)",
    ):
        read_vcf(write(tmp_path / "nogt.vcf", no_gt))
