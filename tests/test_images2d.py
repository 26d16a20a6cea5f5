"""2D image IO: the [C, H, W] axis order, RGB conversion, preprocessing values, image checks, paired validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.data.genetics import FeatureTable
from common.data.images2d import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_image2d,
    image_preprocessing,
    load_image2d,
    read_image_datalist,
)
from common.data.validate import (
    DataValidationError,
    check_paired_or_raise,
    validate_paired_datalist,
    validate_paired_entries,
)

# an asymmetric 2 x 3 picture (H = 2 rows, W = 3 columns), every pixel different
PIXELS = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]], [[10, 20, 30], [40, 50, 60], [70, 80, 90]]], dtype=np.uint8)


def save(path: Path, array: np.ndarray, **kwargs) -> str:
    Image.fromarray(array).save(path, **kwargs)  # uint8 [H, W, 3] -> RGB, [H, W] -> L, float32 [H, W] -> F
    return str(path)


def picture(h: int = 64, w: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".bmp"])
def test_loaded_tensor_is_channel_first_rows_then_columns(tmp_path, suffix):
    x = load_image2d(save(tmp_path / f"a{suffix}", PIXELS))
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32
    from monai.transforms import LoadImage

    from common.data.images2d import image_reader

    meta = LoadImage(reader=image_reader(), image_only=True, ensure_channel_first=True)(str(tmp_path / f"a{suffix}"))
    assert meta.meta["spatial_shape"].tolist() == [2, 3]  # (H, W), as the array
    for r in range(2):
        for c in range(3):
            assert x[:, r, c].tolist() == PIXELS[r, c].tolist()  # x[channel, row, column] == pixel (row, column)


def test_jpeg_keeps_the_layout(tmp_path):
    big = np.zeros((32, 48, 3), np.uint8)
    big[:16, 32:] = [250, 0, 0]  # a red block at the top right (flat, so JPEG keeps it)
    x = load_image2d(save(tmp_path / "a.jpg", big, quality=95))
    assert x.shape == (3, 32, 48)
    assert x[0, 4, 40] > 200 and x[0, 28, 40] < 40 and x[0, 4, 8] < 40


def test_monai_default_reader_would_transpose(tmp_path):
    """Why image_reader() sets reverse_indexing=False: MONAI's default PILReader returns [C, W, H]."""
    from monai.transforms import LoadImage

    x = LoadImage(image_only=True, ensure_channel_first=True)(save(tmp_path / "a.png", PIXELS))
    assert tuple(x.shape) == (3, 3, 2)


def test_grey_palette_rgba_and_16bit_become_rgb(tmp_path):
    grey = np.array([[0, 100, 200], [50, 150, 250]], np.uint8)
    g = load_image2d(save(tmp_path / "g.png", grey))
    assert g.shape == (3, 2, 3) and all(g[c].tolist() == grey.tolist() for c in range(3))
    rgba = np.dstack([PIXELS, np.array([[255, 0, 128], [255, 255, 0]], np.uint8)])
    a = load_image2d(save(tmp_path / "a.png", rgba))
    assert a.shape == (3, 2, 3) and a.permute(1, 2, 0).tolist() == PIXELS.tolist()  # alpha dropped, not composited
    pal = Image.fromarray(PIXELS).convert("P", palette=Image.Palette.ADAPTIVE, colors=6)
    pal.save(tmp_path / "p.png")
    assert load_image2d(tmp_path / "p.png").permute(1, 2, 0).tolist() == np.asarray(pal.convert("RGB")).tolist()
    sixteen = np.array([[0, 65535, 256 * 100]], np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "s.png")
    assert load_image2d(tmp_path / "s.png")[1].tolist() == [[0, 255, 100]]  # 16 -> 8 bits: the high byte


def test_preprocessing_pads_the_short_side_and_keeps_orientation(tmp_path):
    img = np.zeros((40, 60, 3), np.uint8)  # H 40, W 60; top-left quadrant red, bottom-right quadrant blue
    img[:20, :30] = [255, 0, 0]
    img[20:, 30:] = [0, 0, 255]
    path = save(tmp_path / "q.png", img)
    from monai.transforms import Compose

    out = Compose(image_preprocessing("image", size=30, normalisation="unit"))({"image": path})["image"]
    # W 60 -> 30 (scale 1/2), H 40 -> 20, padded by 5 rows above and below: content rows 5..24
    assert out.shape == (3, 30, 30) and out.dtype == torch.float32
    assert out[:, :5].abs().max() == 0 and out[:, 25:].abs().max() == 0  # padding is black
    assert out[0, 9, 6].item() == pytest.approx(1.0, abs=1e-3) and out[2, 9, 6].item() == pytest.approx(0, abs=1e-3)
    assert out[2, 20, 24].item() == pytest.approx(1.0, abs=1e-3) and out[0, 20, 24].item() == pytest.approx(0, abs=1e-3)
    net = Compose(image_preprocessing("image", size=30))({"image": path})["image"]  # ImageNet normalisation
    expected_red = [
        (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0],
        -IMAGENET_MEAN[1] / IMAGENET_STD[1],
        -IMAGENET_MEAN[2] / IMAGENET_STD[2],
    ]
    assert net[:, 9, 6].tolist() == pytest.approx(expected_red, abs=1e-3)
    assert net[:, 0, 0].tolist() == pytest.approx([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], abs=1e-5)
    stretched = Compose(image_preprocessing("image", size=30, normalisation="unit", fit="stretch"))({"image": path})
    assert stretched["image"].shape == (3, 30, 30) and stretched["image"][0, 3, 3].item() == pytest.approx(
        1.0, abs=1e-3
    )
    with pytest.raises(ValueError, match="normalisation must be"):
        image_preprocessing(normalisation="zscore")


# ------------------------------------------------------------------------------------------------ image checks


def messages(problems, severity="error"):
    return [p.message for p in problems if p.severity == severity]


def test_image_checks_each_problem_named(tmp_path):
    good = save(tmp_path / "good.png", picture())
    assert check_image2d(good, "s1", size=48) == []
    assert messages(check_image2d(tmp_path / "nope.png", "s1")) == ["image: file not found"]
    (tmp_path / "junk.png").write_bytes(b"definitely not a png" * 20)
    assert "unreadable or corrupt image" in messages(check_image2d(tmp_path / "junk.png", "s1"))[0]
    raw = Path(good).read_bytes()
    (tmp_path / "cut.png").write_bytes(raw[: len(raw) // 2])
    assert "unreadable or corrupt image" in messages(check_image2d(tmp_path / "cut.png", "s1"))[0]
    grey = save(tmp_path / "grey.png", picture()[..., 0])
    assert messages(check_image2d(grey, "s1"), "warning") == [
        "image: grey image ('L', 1 channel), replicated to 3 channels"
    ]
    assert "3 channels (RGB) expected" in messages(check_image2d(grey, "s1", allow_grey=False))[0]
    rgba = np.dstack([picture(), np.full((64, 48), 255, np.uint8)])
    assert check_image2d(save(tmp_path / "opaque.png", rgba), "s1") == []
    rgba[0, 0, 3] = 0
    assert "alpha channel not opaque" in messages(check_image2d(save(tmp_path / "alpha.png", rgba), "s1"), "warning")[0]
    small = save(tmp_path / "small.png", picture(20, 40))
    assert messages(check_image2d(small, "s1")) == ["image: 40x20 pixels, smaller than 32 on a side"]
    assert messages(check_image2d(good, "s1", size=224), "warning") == ["image: 48x64 pixels, upsampled to 224"]
    blank = save(tmp_path / "blank.png", np.zeros((40, 40, 3), np.uint8))
    assert messages(check_image2d(blank, "s1")) == ["image: blank image (every pixel is 0)"]
    floats = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    floats[3, 4] = np.nan
    found = messages(check_image2d(save(tmp_path / "f.tif", floats), "s1"))
    assert found == ["image: 32-bit 'F' image; expected 8-bit RGB (3 channels)", "image: 1 NaN and 0 Inf pixel values"]
    pages = [Image.fromarray(picture(seed=k)) for k in range(2)]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    assert messages(check_image2d(tmp_path / "pages.tif", "s1"), "warning") == [
        "image: 2 pages; only the first is read"
    ]
    assert all(p.file and p.subject == "s1" for p in check_image2d(blank, "s1"))


# -------------------------------------------------------------------------------------------------- datalists


def test_image_datalist_json_and_csv(tmp_path):
    (tmp_path / "img").mkdir()
    content = {"training": [{"subject_id": "001", "image": "img/a.png", "grade": 2}], "validation": []}
    (tmp_path / "d.json").write_text(json.dumps(content))
    (train,) = read_image_datalist(tmp_path / "d.json")
    assert train == {"subject_id": "001", "image": str(tmp_path / "img/a.png"), "grade": 2}
    assert read_image_datalist(tmp_path / "d.json", "validation") == []
    (tmp_path / "d.csv").write_text(
        "subject_id,image,split,grade,score\n001,img/a.png,training,2,0.5\n002,/abs/b.png,validation,0,\n"
    )
    (row,) = read_image_datalist(tmp_path / "d.csv", "training")
    assert row == {
        "subject_id": "001",
        "image": str(tmp_path / "img/a.png"),
        "split": "training",
        "grade": 2,
        "score": 0.5,
    }
    assert read_image_datalist(tmp_path / "d.csv", "validation")[0]["image"] == "/abs/b.png"
    with pytest.raises(KeyError, match="has no 'testing' list"):
        read_image_datalist(tmp_path / "d.json", "testing")


# ------------------------------------------------------------------------------------------ paired validation


def paired_set(tmp_path: Path, n: int = 3):
    entries = [{"subject_id": f"s{i}", "image": save(tmp_path / f"s{i}.png", picture(seed=i))} for i in range(n)]
    table = FeatureTable([f"s{i}" for i in range(n)], ["rs1", "rs2"], np.arange(2 * n).reshape(n, 2), "g.bed")
    return entries, table


def test_clean_paired_set_has_no_problem(tmp_path):
    entries, table = paired_set(tmp_path)
    assert validate_paired_entries(entries, table, num_features=2) == []
    assert validate_paired_entries(entries, None) == []  # image-only mode: no genetics checks


def test_paired_problems_each_named(tmp_path):
    entries, table = paired_set(tmp_path, 4)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    entries[1]["image"] = str(tmp_path / "bad.png")
    entries[2]["image"] = save(tmp_path / "f.tif", np.ones((40, 40), np.float32) * 3)
    values = table.values.copy()
    values[0, 1], values[3], values[2, 0] = np.inf, np.nan, np.nan  # s2 partly missing: imputed, a warning only
    table = FeatureTable(table.ids, table.features, values, "g.bed")
    problems = validate_paired_entries(entries, table, num_features=3)
    errors = {(p.subject, p.file, p.message) for p in problems if p.severity == "error"}
    assert [m for s, _, m in errors if "missing" in m] == ["every genetics value is missing"]  # s3 only
    # 3 NaN of 8 values: s3's two and s2's one
    assert "1 subject(s) have missing values (38% of all values); they are imputed with the training mean" in messages(
        problems, "warning"
    )
    assert ("genetics", "g.bed", "genetics vectors of length 2, expected 3") in errors
    assert ("s0", "g.bed", "Inf genetics value (first in feature 'rs2')") in errors
    assert ("s3", "g.bed", "every genetics value is missing") in errors
    assert any(s == "s1" and f.endswith("bad.png") and "unreadable or corrupt" in m for s, f, m in errors)
    assert any(s == "s2" and f.endswith("f.tif") and "32-bit 'F'" in m for s, f, m in errors)


def test_paired_join_duplicates_and_leaks(tmp_path, caplog):
    entries, table = paired_set(tmp_path, 3)
    extra = {"subject_id": "x9", "image": save(tmp_path / "x9.png", picture(seed=9))}
    second_eye = {"subject_id": "s0", "image": save(tmp_path / "s0_right.png", picture(seed=5))}
    problems = validate_paired_entries(
        {"training": entries[:2] + [extra, second_eye], "validation": entries[2:]}, table
    )
    warnings = messages(problems, "warning")
    assert "1 image subject(s) have no genetics and are left out of paired training (first: x9)" in warnings
    assert "2 images in 'training'; each is one sample with the same genetics" in warnings
    assert not messages(problems)
    leak = validate_paired_entries({"training": entries, "validation": [entries[0]]}, table)
    assert "subject is in both 'training' and 'validation' (a leak)" in messages(leak)
    assert "image is in both 'training' and 'validation' (a leak)" in messages(leak)
    strict = validate_paired_entries(entries + [extra], table, require_genetics=True)
    assert [(p.subject, p.message) for p in strict if p.severity == "error"] == [
        ("x9", "image subject has no genetics")
    ]
    other = FeatureTable(["a", "b"], ["rs1"], np.zeros((2, 1)), "other.bed")
    none = messages(validate_paired_entries(entries, other))
    assert len(none) == 1 and none[0].startswith("no image subject has genetics: the ids do not join")
    only_genetics = FeatureTable(["s0", "s1", "s2", "g7"], ["rs1"], np.zeros((4, 1)), "g.bed")
    assert "1 genetics subject(s) have no image; unused (first: g7)" in messages(
        validate_paired_entries(entries, only_genetics), "warning"
    )
    assert messages(validate_paired_entries([{"image": entries[0]["image"]}], table)) == ["no subject_id"]


def test_paired_genetics_file_errors_and_raise(tmp_path):
    entries, _ = paired_set(tmp_path)
    (tmp_path / "dup.csv").write_text("subject_id,PGS1\ns0,1\ns1,2\ns0,3\n")
    problems = validate_paired_entries(entries, str(tmp_path / "dup.csv"))
    assert [(p.file, p.message) for p in problems] == [
        (
            str(tmp_path / "dup.csv"),
            f"{tmp_path / 'dup.csv'}: 1 duplicate subject id(s) (first: s0); each subject must appear once",
        )
    ]
    (tmp_path / "g.csv").write_text("subject_id,PGS1,PGS2\ns0,1,2\ns1,2,x\n")
    assert "non-numeric cell" in messages(validate_paired_entries(entries, str(tmp_path / "g.csv")))[0]
    with pytest.raises(DataValidationError, match="1 data error"):
        check_paired_or_raise(entries, str(tmp_path / "dup.csv"))


def test_paired_datalist_json_with_gene_vectors(tmp_path):
    entries, table = paired_set(tmp_path)
    for e in entries:
        e["image"] = Path(e["image"]).name
    entries[0]["genetics"] = [0.1, 0.2, "bad"]
    (tmp_path / "d.json").write_text(json.dumps({"training": entries[:2], "validation": entries[2:]}))
    problems = validate_paired_datalist(str(tmp_path / "d.json"), table, gene_key="genetics", num_features=2)
    assert sorted(messages(problems)) == [
        "gene vector has 1 non-numeric entries (first: index 2, 'bad')",
        "gene vector of length 3, expected 2",
    ]
    assert validate_paired_datalist(str(tmp_path / "missing.json"))[0].message.endswith("does not exist")


# ---------------------------------------------------------------- gaps found by mutation testing (mutmut 3.8)


def test_preprocessing_interpolates_bilinearly_and_antialiases(tmp_path):
    from monai.transforms import Compose

    ramp = np.zeros((32, 32, 3), np.uint8)
    ramp[:, 16:] = 255  # a hard edge: bilinear upsampling makes intermediate values, nearest / area would not
    up = Compose(image_preprocessing("image", size=64, normalisation="unit"))({"image": save(tmp_path / "r.png", ramp)})
    assert set(up) == {"image"}  # image_only: no meta-dict keys
    row = up["image"][0, 32]  # bilinear (align_corners=False) x2: pixels 31, 32 sample 1/4 and 3/4 across the edge
    assert row[30:34].tolist() == pytest.approx([0, 0.25, 0.75, 1], abs=1e-4)
    checker = (np.indices((48, 48)).sum(0) % 2 * 255).astype(np.uint8)  # x1/3: samples land on pixel centres
    down = Compose(image_preprocessing("image", size=16, normalisation="unit"))(
        {"image": save(tmp_path / "c.png", np.dstack([checker] * 3))}
    )["image"]
    assert down.shape == (3, 16, 16) and (down - 0.5).abs().max() < 0.1  # anti-aliased to grey, not a moire
    wide = np.zeros((32, 16, 3), np.uint8)
    wide[:, 8:] = 255
    stretch = Compose(image_preprocessing("image", size=32, normalisation="unit", fit="stretch"))
    row = stretch({"image": save(tmp_path / "w.png", wide)})["image"][0, 16]  # W 16 -> 32: the same bilinear x2
    assert row[14:18].tolist() == pytest.approx([0, 0.25, 0.75, 1], abs=1e-4)
    checker_big = (np.indices((96, 96)).sum(0) % 2 * 255).astype(np.uint8)
    shrunk = stretch({"image": save(tmp_path / "cb.png", np.dstack([checker_big] * 3))})["image"]  # x1/3
    assert (shrunk - 0.5).abs().max() < 0.1
    import pickle

    pipeline = pickle.loads(pickle.dumps(Compose(image_preprocessing())))  # DataLoader workers may spawn
    default = pipeline({"image": save(tmp_path / "d.png", picture(8, 8))})["image"]
    assert default.shape == (3, 224, 224) and default.dtype == torch.float32


def test_to_rgb_refuses_32_bit_images_naming_the_file(tmp_path):
    from common.data.images2d import to_rgb

    path = save(tmp_path / "f.tif", np.ones((4, 4), np.float32))
    with Image.open(path) as im, pytest.raises(ValueError, match=r"f\.tif: 32-bit 'F' image"):
        to_rgb(im)
    with pytest.raises(ValueError, match=r"^image: 32-bit 'I' image"):
        to_rgb(Image.new("I", (2, 2)))


def test_image_check_boundaries_and_options(tmp_path):
    def check(path, **kw):
        found = check_image2d(path, "s9", **kw)
        assert all(p.subject == "s9" and p.file == str(path) for p in found)
        return found

    exact = save(tmp_path / "exact.png", picture(32, 64))
    assert check(exact) == [] and check(exact, size=64) == []  # 32 is not smaller than 32; 64 not below 64
    assert messages(check(exact, size=65), "warning") == ["image: 64x32 pixels, upsampled to 65"]
    bmp = save(tmp_path / "a.bmp", picture())
    assert check(bmp) == []  # no page count: one page
    blank = save(tmp_path / "blank.png", np.full((40, 40, 3), 7, np.uint8))
    assert messages(check(blank)) == ["image: blank image (every pixel is 7)"]
    assert check(blank, check_content=False) == []
    floats = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    floats[0, 0] = np.inf
    assert "image: 0 NaN and 1 Inf pixel values" in messages(check(save(tmp_path / "inf.tif", floats)))
    grey = save(tmp_path / "g.png", picture()[..., 0])
    for found in (check(grey), check(grey, allow_grey=False), check(tmp_path / "none.png")):
        assert found
    rgba = np.dstack([picture(), np.zeros((64, 48), np.uint8)])
    assert messages(check(save(tmp_path / "t.png", rgba)), "warning")
    la = np.dstack([picture()[..., 0], np.full((64, 48), 255, np.uint8)])
    la[0, 0, 1] = 10
    assert "image: alpha channel not opaque; it is dropped, not composited" in messages(
        check(save(tmp_path / "la.png", la)), "warning"
    )
    pages = [Image.fromarray(picture(seed=k)) for k in range(3)]
    pages[0].save(tmp_path / "p.tif", save_all=True, append_images=pages[1:])
    assert messages(check(tmp_path / "p.tif"), "warning") == ["image: 3 pages; only the first is read"]
    assert messages(check(save(tmp_path / "tiny.png", picture(20, 40))))


def test_image_datalist_tsv_base_dir_fallback_ids_and_errors(tmp_path):
    (tmp_path / "d.tsv").write_text("image\tmask\tgrade\nimg/x.png\tm/x.png\t1\n/abs/y.png\t\t0\n")
    rows = read_image_datalist(tmp_path / "d.tsv", path_keys=["mask"], base_dir="/data")
    assert rows[0] == {"image": "/data/img/x.png", "mask": "/data/m/x.png", "grade": 1, "subject_id": "x"}
    assert rows[1] == {"image": "/abs/y.png", "grade": 0, "subject_id": "y"}  # empty mask cell: no key
    (tmp_path / "bad.json").write_text(json.dumps({"training": [{"subject_id": "a"}]}))
    with pytest.raises(ValueError, match=r"bad\.json: training entry 0 has no 'image'"):
        read_image_datalist(tmp_path / "bad.json")
    (tmp_path / "notjson.json").write_text("{")
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_image_datalist(tmp_path / "notjson.json")
