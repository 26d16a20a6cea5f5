"""Reading WSI feature bags users already have: CLAM h5/pt folders, TransMIL bags and folds, patients, problems."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from common.data.wsi_features import (
    BagError,
    LoadWSIBagd,
    bag_shape,
    check_bags,
    find_bags,
    load_bag,
    patient_bags,
    read_clam_csv,
    read_clam_h5,
    read_transmil_folds,
    write_clam_h5,
)

D = 8  # a narrow feature width keeps the files tiny; the 1024 default is checked separately


def _bag(rows: int, start: float = 0.0, width: int = D) -> torch.Tensor:
    return torch.arange(rows * width, dtype=torch.float32).view(rows, width) + start


def _clam_dir(root: Path, bags: dict[str, torch.Tensor], h5_too: bool = False) -> Path:
    (root / "pt_files").mkdir(parents=True, exist_ok=True)
    for sid, bag in bags.items():
        torch.save(bag, root / "pt_files" / f"{sid}.pt")
        if h5_too:
            coords = np.stack([np.arange(len(bag)) * 256, np.zeros(len(bag))], 1).astype(np.int64)
            write_clam_h5(root / "h5_files" / f"{sid}.h5", bag.numpy(), coords, {"patch_size": 256})
    return root


def _csv(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n")
    return path


# ---------------------------------------------------------------- files


def test_clam_h5_round_trip_attributes_on_the_datasets(tmp_path, monkeypatch):
    features = np.arange(12, dtype=np.float32).reshape(3, 4)
    coords = np.array([[0, 0], [256, 0], [0, 256]])
    attrs = {"patch_size": 256, "patch_level": 0, "downsample": np.array([1.0, 1.0]), "name": "s1"}
    path = tmp_path / "h5_files" / "s1.h5"
    write_clam_h5(path, features, coords, attrs, {"name": "s1", "encoder": "resnet50_trunc"})
    with h5py.File(path, "r") as f:
        assert dict(f.attrs) == {} and f["coords"].attrs["patch_level"] == 0
        assert f["features"].dtype == np.float32 and f["coords"].dtype == np.int64
        assert f["features"].attrs["encoder"] == "resnet50_trunc"
    got_f, got_c, got_a = read_clam_h5(path)
    assert np.array_equal(got_f, features) and np.array_equal(got_c, coords)
    assert got_a["patch_size"] == 256 and got_a["name"] == "s1" and got_a["downsample"].tolist() == [1.0, 1.0]
    assert bag_shape(path) == (3, 4)
    with h5py.File(tmp_path / "bare.h5", "w") as f:  # features only, as some tools write them
        f["features"] = features
    bare = read_clam_h5(tmp_path / "bare.h5")
    assert np.array_equal(bare[0], features) and bare[1] is None and bare[2] == {}
    assert [p.name for p in path.parent.iterdir()] == ["s1.h5"]  # no temporary left
    nested = tmp_path / "a" / "b" / "s2.h5"
    write_clam_h5(nested, features.astype(np.float64), coords.astype(np.int32), {})
    with h5py.File(nested, "r") as f:
        assert f["features"].dtype == np.float32 and f["coords"].dtype == np.int64
    assert nested.stat().st_mode & 0o777 == 0o644

    def interrupted(src, dst):  # killed between writing and renaming: the temporary is hidden and removed
        seen.append((Path(src), Path(dst)))
        raise KeyboardInterrupt

    seen: list = []
    with monkeypatch.context() as m:
        m.setattr(os, "replace", interrupted)
        with pytest.raises(KeyboardInterrupt):
            write_clam_h5(tmp_path / "h5_files" / "s3.h5", features, coords, attrs)
    ((src, dst),) = seen
    assert src.parent == dst.parent == tmp_path / "h5_files" and dst.name == "s3.h5"
    assert src.name.startswith(".s3.h5.") and src.name.endswith(".tmp") and not src.exists()
    assert sorted(p.name for p in (tmp_path / "h5_files").iterdir()) == ["s1.h5"]
    with pytest.raises(ValueError, match=r"bad\.h5: features \(3, 4\) and coords \(2, 2\)"):
        write_clam_h5(tmp_path / "bad.h5", features, coords[:2], attrs)
    assert not (tmp_path / "bad.h5").exists() and not list(tmp_path.glob(".*"))


def test_load_bag_h5_pt_dict_and_errors_name_the_file(tmp_path):
    bag = _bag(5)
    torch.save(bag, tmp_path / "a.pt")
    torch.save({"features": bag.double()}, tmp_path / "b.pt")
    write_clam_h5(tmp_path / "c.h5", bag.numpy(), np.zeros((5, 2), np.int64), {})
    for name in ("a.pt", "b.pt", "c.h5"):
        got = load_bag(tmp_path / name, feature_dim=D)
        assert got.dtype == torch.float32 and torch.equal(got, bag)
    assert bag_shape(tmp_path / "a.pt") == (5, D)
    torch.save(torch.zeros(0, D), tmp_path / "empty.pt")
    torch.save(torch.zeros(4, D, 2), tmp_path / "rank3.pt")
    torch.save(["not", "a", "tensor"], tmp_path / "list.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with h5py.File(tmp_path / "nofeat.h5", "w") as f:
        f["coords"] = np.zeros((2, 2))
    cases = {
        "a.pt": (dict(feature_dim=1024), "features of width 8, expected 1024"),
        "empty.pt": ({}, r"empty feature bag \(0 patches\)"),
        "rank3.pt": ({}, "expected \\[patches, features\\]"),
        "list.pt": ({}, "holds a list"),
        "junk.pt": ({}, "cannot be read as a torch tensor file"),
        "junk.h5": ({}, r"cannot be read as HDF5 \((OSError|FileNotFoundError)"),
        "nofeat.h5": ({}, "no 'features' dataset"),
        "absent.pt": ({}, "feature bag not found"),
    }
    for name, (kwargs, pattern) in cases.items():
        with pytest.raises(BagError, match=pattern) as err:
            load_bag(tmp_path / name, **{"feature_dim": D, **kwargs})
        assert str(err.value).startswith(f"{tmp_path / name}: ")
    for name in ("junk.h5", "nofeat.h5"):  # the shape-only reader says the same
        with pytest.raises(BagError, match=cases[name][1]) as err:
            bag_shape(tmp_path / name)
        assert str(err.value).startswith(f"{tmp_path / name}: ")
    with pytest.raises(BagError, match=r"nofeat\.h5: no 'features' dataset \(found \['coords'\]\)"):
        bag_shape(tmp_path / "nofeat.h5")


def test_find_bags_clam_layout_flat_layout_and_preference(tmp_path):
    clam = _clam_dir(tmp_path / "clam", {"s1": _bag(2), "s2": _bag(3)}, h5_too=True)
    (clam / "h5_files" / ".s3.h5.x1.tmp").write_bytes(b"half")  # a half-written file is not a bag
    (clam / "h5_files" / "only_h5.h5").write_bytes(b"")
    assert {k: p.relative_to(clam).as_posix() for k, p in find_bags(clam).items()} == {
        "only_h5": "h5_files/only_h5.h5",
        "s1": "pt_files/s1.pt",
        "s2": "pt_files/s2.pt",
    }
    assert find_bags(clam, prefer="h5")["s1"] == clam / "h5_files" / "s1.h5"
    assert find_bags(clam, prefer="h5")["s2"] == clam / "h5_files" / "s2.h5"
    torch.save(_bag(1), clam / "pt_files" / "pt_only.pt")
    torch.save(_bag(1), clam / "pt_files" / ".hidden.pt")  # hidden files are never bags
    assert find_bags(clam, prefer="h5")["pt_only"] == clam / "pt_files" / "pt_only.pt" and ".hidden" not in find_bags(
        clam
    )
    h5_only = tmp_path / "h5_only"  # a CLAM folder with h5_files/ and no pt_files/
    write_clam_h5(h5_only / "h5_files" / "z.h5", _bag(2).numpy(), np.zeros((2, 2), np.int64), {})
    assert find_bags(h5_only) == {"z": h5_only / "h5_files" / "z.h5"}
    entries, _ = patient_bags(clam, prefer="h5")
    assert {e["case_id"]: e["bag"][0][-2:] for e in entries}["s1"] == "h5"
    flat = tmp_path / "transmil"
    flat.mkdir()
    torch.save(_bag(2), flat / "normal_001.pt")
    assert find_bags(flat) == {"normal_001": flat / "normal_001.pt"}
    with pytest.raises(FileNotFoundError):
        find_bags(tmp_path / "absent")
    with pytest.raises(ValueError, match="prefer"):
        find_bags(flat, prefer="npy")


def test_csv_readers_keep_ids_as_text_and_name_missing_columns(tmp_path):
    rows = read_clam_csv(_csv(tmp_path / "d.csv", "case_id,slide_id,label\n007,007_a,LUAD\n8,8_a,LUSC"))
    assert rows == [
        {"case_id": "007", "slide_id": "007_a", "label": "LUAD"},
        {"case_id": "8", "slide_id": "8_a", "label": "LUSC"},
    ]
    with pytest.raises(ValueError, match=r"bad\.csv: .*missing \['label'\]"):
        read_clam_csv(_csv(tmp_path / "bad.csv", "case_id,slide_id\np,s"))
    # TransMIL's fold0.csv: an unnamed index column, columns of different lengths padded with empty cells
    folds = read_transmil_folds(
        _csv(
            tmp_path / "fold0.csv",
            ",train,train_label,val,val_label,test,test_label\n"
            "0,normal_1,0,normal_2,0.0,test_1,1.0\n"
            "1,tumor_1,1,,,test_2,0.0\n"
            "2,tumor_2,1,,,,",
        )
    )
    assert folds == {
        "train": [("normal_1", "0"), ("tumor_1", "1"), ("tumor_2", "1")],
        "val": [("normal_2", "0.0")],
        "test": [("test_1", "1.0"), ("test_2", "0.0")],
    }
    with pytest.raises(ValueError, match=r"f\.csv: TransMIL fold CSV needs columns val, val_label"):
        read_transmil_folds(_csv(tmp_path / "f.csv", "train,train_label\na,0"))
    with pytest.raises(ValueError, match="needs columns val, val_label"):  # one of the pair is enough to miss
        read_transmil_folds(_csv(tmp_path / "g.csv", "train,train_label,val,test,test_label\na,0,b,c,1"))
    header = "train,train_label,val,val_label,test,test_label"
    assert read_transmil_folds(_csv(tmp_path / "h.csv", header)) == {"train": [], "val": [], "test": []}
    assert read_clam_csv(_csv(tmp_path / "i.csv", "case_id,slide_id,label")) == []


# ---------------------------------------------------------------- patients


def test_patients_join_slides_in_sorted_order_and_load_lazily(tmp_path):
    bags = {"p1_b": _bag(2, 100.0), "p1_a": _bag(3, 0.0), "p2_a": _bag(1, 50.0)}
    feature_dir = _clam_dir(tmp_path / "f", bags)
    cases = _csv(tmp_path / "d.csv", "case_id,slide_id,label\np2,p2_a,LUSC\np1,p1_b,LUAD\np1,p1_a,LUAD")
    entries, problems = patient_bags(feature_dir, cases)
    assert problems == []
    assert [(e["case_id"], e["slide_ids"], e["label"], e["label_name"]) for e in entries] == [
        ("p1", ["p1_a", "p1_b"], 0, "LUAD"),  # text labels in sorted order: LUAD 0, LUSC 1
        ("p2", ["p2_a"], 1, "LUSC"),
    ]
    assert entries[0]["bag"] == [str(feature_dir / "pt_files" / "p1_a.pt"), str(feature_dir / "pt_files" / "p1_b.pt")]
    loader = LoadWSIBagd("bag", feature_dim=D)
    p1 = loader(entries[0])
    assert p1["bag"].shape == (5, D) and torch.equal(p1["bag"], torch.cat([bags["p1_a"], bags["p1_b"]]))
    assert p1["case_id"] == "p1" and entries[0]["bag"][0].endswith(".pt")  # the input dict is not changed
    swapped, _ = patient_bags(feature_dir, cases, label_dict={"LUAD": 1, "LUSC": 0})
    assert [e["label"] for e in swapped] == [1, 0]
    numeric = _csv(tmp_path / "n.csv", "case_id,slide_id,label\np2,p2_a,2\np1,p1_b,1.0\np1,p1_a,1.0")
    assert [e["label"] for e in patient_bags(feature_dir, numeric)[0]] == [1, 2]  # integers stay themselves
    halves = _csv(tmp_path / "h.csv", "case_id,slide_id,label\np2,p2_a,0.5\np1,p1_b,1.5\np1,p1_a,1.5")
    assert [e["label"] for e in patient_bags(feature_dir, halves)[0]] == [1, 0]  # other numbers: sorted text
    from monai.data import Dataset

    ds = Dataset(entries, transform=loader)
    first = ds[1]["bag"].clone()
    torch.save(_bag(4, 7.0), feature_dir / "pt_files" / "p2_a.pt")  # nothing cached: a new read sees the new file
    assert torch.equal(first, bags["p2_a"]) and torch.equal(ds[1]["bag"], _bag(4, 7.0))


def test_patient_problems_each_named(tmp_path):
    slides = {
        "a1": _bag(2),
        "b1": _bag(2),
        "c1": _bag(2),
        "c2": _bag(2),
        "d1": _bag(2),
        "e1": _bag(2),
        "orphan": _bag(2),
    }
    feature_dir = _clam_dir(tmp_path / "f", slides)
    cases = _csv(
        tmp_path / "d.csv",
        "case_id,slide_id,label\nA,a1,x\nB,b1,y\nB,b_missing,y\nC,c1,x\nC,c2,y\nD,d1,x\nE,e1,z",
    )
    entries, problems = patient_bags(feature_dir, cases)
    assert [e["case_id"] for e in entries] == ["A", "D", "E"]  # a bad patient does not stop the ones after it
    assert all(p.severity == "error" for p in problems)
    assert sorted(str(p) for p in problems) == sorted(
        [
            f"ERROR B: slide b_missing has no feature file in {feature_dir}",
            "ERROR C: slides of one patient with different labels ['x', 'y']",
            f"ERROR orphan {feature_dir / 'pt_files' / 'orphan.pt'}: feature file of a slide that no case lists",
        ]
    )
    entries, problems = patient_bags(feature_dir, cases, label_dict={"x": 0, "y": 1})
    assert [e["case_id"] for e in entries] == ["A", "D"]
    unknown = [p for p in problems if "not in label_dict" in p.message]
    assert [(p.severity, p.subject, p.message) for p in unknown] == [
        ("error", "E", "label 'z' not in label_dict ['x', 'y']")
    ]


def test_transmil_folds_alone_and_joined_to_patients(tmp_path):
    flat = tmp_path / "pt"
    flat.mkdir()
    for sid in ("n1", "n2", "t1", "t2", "t3", "extra"):
        torch.save(_bag(2), flat / f"{sid}.pt")
    folds = _csv(
        tmp_path / "fold0.csv",
        ",train,train_label,val,val_label,test,test_label\n0,n1,0,t2,1.0,t3,1.0\n1,t1,1,n2,0.0,,",
    )
    train, problems = patient_bags(flat, folds_csv=folds, split="train")
    assert [(e["case_id"], e["label"]) for e in train] == [("n1", 0), ("t1", 1)]  # labels 0 / 1.0 as numbers
    assert [str(p) for p in problems] == [
        f"WARNING extra {flat / 'extra.pt'}: feature file of a slide that no case lists"
    ]
    val, _ = patient_bags(flat, folds_csv=folds, split="val")
    assert [(e["case_id"], e["label"]) for e in val] == [("n2", 0), ("t2", 1)]
    # joined to patients: P has t1 (train) and t2 (val): one patient in two splits leaks
    cases = _csv(tmp_path / "d.csv", "case_id,slide_id,label\nN,n1,0\nN,n2,0\nP,t1,1\nP,t2,1\nQ,t3,1")
    _, problems = patient_bags(flat, cases, folds_csv=folds, split="test")
    assert {p.severity for p in problems} == {"error", "warning"}
    errors = sorted(str(p) for p in problems if p.severity == "error")
    assert errors == [
        f"ERROR N {cases}: slides of one patient in several splits ['train', 'val']",
        f"ERROR P {cases}: slides of one patient in several splits ['train', 'val']",
    ]
    twice = _csv(tmp_path / "fold1.csv", "train,train_label,val,val_label,test,test_label\nn1,0,n1,0,t3,1")
    _, problems = patient_bags(flat, folds_csv=twice, split="test")
    assert ("error", f"ERROR n1 {twice}: slide listed in several splits ['train', 'val']") in [
        (p.severity, str(p)) for p in problems
    ]
    # the label index is over every split: a split holding one class keeps that class's number
    one_class = _csv(tmp_path / "fold2.csv", f"{'train,train_label,val,val_label,test,test_label'}\nn1,0,t1,1.0,t2,1")
    assert [e["label"] for e in patient_bags(flat, folds_csv=one_class, split="val")[0]] == [1]
    cases_all = _csv(tmp_path / "e.csv", "case_id,slide_id,label\nN,n1,LUAD\nP,t1,LUSC\nQ,t2,LUSC")
    assert [e["label"] for e in patient_bags(flat, cases_all, folds_csv=one_class, split="test")[0]] == [1]
    with pytest.raises(ValueError, match="go together"):
        patient_bags(flat, folds_csv=folds)
    unlabelled, problems = patient_bags(flat)
    assert [e["label"] for e in unlabelled] == [None] * 6 and problems == []


def test_check_bags_width_empty_nan_inf_unreadable(tmp_path):
    good, nan, inf = _bag(3), _bag(3), _bag(4)
    nan[1, 2] = float("nan")
    inf[0, 0] = inf[3, 1] = float("inf")
    files = {"good": good, "nan": nan, "inf": inf, "wide": _bag(2, width=D + 1), "empty": torch.zeros(0, D)}
    for name, bag in files.items():
        torch.save(bag, tmp_path / f"{name}.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    entries = [{"case_id": name, "bag": [str(tmp_path / f"{name}.pt")]} for name in [*files, "junk"]]
    found = {p.subject: p for p in check_bags(entries, feature_dim=D)}
    assert set(found) == {"nan", "inf", "wide", "empty", "junk"}
    assert all(p.severity == "error" and p.file == str(tmp_path / f"{s}.pt") for s, p in found.items())
    assert found["nan"].message == "NaN/Inf features in 1 of 3 patches"
    assert found["inf"].message == "NaN/Inf features in 2 of 4 patches"
    assert found["wide"].message == f"features of width {D + 1}, expected {D}"
    assert found["empty"].message == "empty feature bag (0 patches)"
    assert found["junk"].message.startswith("cannot be read as a torch tensor file")
    assert [p.subject for p in check_bags([{"bag": [str(tmp_path / "wide.pt")]}], feature_dim=D)] == ["?"]
    shape_only = {p.subject for p in check_bags(entries, feature_dim=D, check_content=False)}
    assert shape_only == {"wide", "empty", "junk"}  # NaN / Inf need the values
    assert {p.subject for p in check_bags(entries[:1], feature_dim=1024)} == {"good"}  # the 1024 default is honoured


def test_load_transform_errors(tmp_path):
    torch.save(_bag(2), tmp_path / "a.pt")
    torch.save(_bag(2, width=D + 1), tmp_path / "b.pt")
    with pytest.raises(BagError, match="different feature widths"):
        LoadWSIBagd("bag", feature_dim=None)({"bag": [str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]})
    with pytest.raises(BagError, match="^p: no feature bag files"):
        LoadWSIBagd("bag")({"case_id": "p", "bag": []})
    with pytest.raises(BagError, match="width 8, expected 1024"):  # the default width is CLAM's 1024
        LoadWSIBagd("bag")({"bag": str(tmp_path / "a.pt")})
    with pytest.raises(KeyError):  # a missing key is an error unless allowed
        LoadWSIBagd("bag", feature_dim=D)({"other": 1})
    assert LoadWSIBagd("bag", allow_missing_keys=True)({"other": 1}) == {"other": 1}
    single = LoadWSIBagd("bag", feature_dim=D)({"bag": str(tmp_path / "a.pt")})
    assert torch.equal(single["bag"], _bag(2))
