"""The five MRM downstream bundles through the real runner (train, evaluate, inference; one multi-GPU run; a
refused pre-trained contract), each output checked against a hand computation from the files the bundle wrote;
and the small helpers the configs call (sources of entries, skipped unreadable images, PALM mask writing, the
predictions CSV, a frozen UNETR encoder, checkpoint-restored target statistics)."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, bundle_command, run_bundle, run_dirs
from PIL import Image

from common.data import tasks2d
from common.engines.classification import PredictionWriter, class_rows
from common.networks.transfer2d import TransferViT2D, transfer_unetr_2d

BUNDLES = ("mrm_aptos", "mrm_rfmid", "mrm_palm", "mrm_crp", "mrm_glioma")
# a 2-block ViT of width 48 on 32 x 32 images (UNETR keeps its 12 blocks), tiny demo sets built in a tmp cache
TINY_2D = ["--image_size", "32", "--hidden_size", "48", "--mlp_dim", "96", "--num_heads", "4", "--num_workers", "0"]
TINY = {b: [*TINY_2D, "--num_layers", "2"] for b in BUNDLES} | {"mrm_palm": [*TINY_2D, "--feature_size", "8"]}
DEMO = {"mrm_aptos": 40, "mrm_rfmid": 40, "mrm_palm": 15, "mrm_crp": 40, "mrm_glioma": 15}


def configs(bundle: str, *names: str) -> list[str]:
    return [f"bundles/{bundle}/configs/{n}.json" for n in names]


def tiny(bundle: str) -> list[str]:
    return [*TINY[bundle], "--demo", f"{{'num_subjects': {DEMO[bundle]}, 'image_size': 32}}"]


@pytest.fixture(scope="module", autouse=True)
def demo_cache(tmp_path_factory):
    """The default (demo) data path, built into a tmp cache instead of ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MMPT_CACHE_DIR", str(tmp_path_factory.mktemp("mmpt_cache")))
    yield
    mp.undo()


def demo_folder(bundle: str) -> Path:
    from common.data.demo_transfer import demo_transfer_dir

    return Path(demo_transfer_dir(bundle.removeprefix("mrm_"), DEMO[bundle], 32))


def split(bundle: str, which: str = "validation") -> list[dict]:
    task = bundle.removeprefix("mrm_")
    return json.loads((demo_folder(bundle) / f"split_mrm_{task}.json").read_text())[which]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def metrics(path: Path) -> dict[str, float]:
    return {k: float(v) for k, v in csv.reader(path.open())}


def auc(scores, positive) -> float:
    """Share of (positive, negative) pairs ranked right, ties one half (no library)."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    return sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))


def qwk(true, pred, k: int) -> float:
    """Cohen's quadratic weighted kappa in plain numpy: 1 - sum(w O) / sum(w E), w_ij = (i - j)^2 / (k - 1)^2."""
    o = np.zeros((k, k))
    for t, p in zip(true, pred):
        o[t, p] += 1
    w = np.array([[(i - j) ** 2 / (k - 1) ** 2 for j in range(k)] for i in range(k)])
    e = np.outer(o.sum(1), o.sum(0)) / o.sum()
    return 1 - (w * o).sum() / (w * e).sum()


def fake_mrm_checkpoint(path: Path, image_size: int, num_layers: int = 2) -> Path:
    """An mrm-style checkpoint: a 2D ViT under ``vit.*`` and its input contract beside it (as ``BestModelSaver``
    writes it), for ``image_size`` images."""
    from common.data.images2d import image_preprocessing
    from common.engines.contract import input_contract, write_contract

    torch.manual_seed(0)
    net = TransferViT2D(5, img_size=image_size, hidden_size=48, mlp_dim=96, num_layers=num_layers, num_heads=4)
    torch.save({k: v for k, v in net.state_dict().items() if k.startswith("vit.")}, path)
    contract = input_contract(
        image_preprocessing("image", image_size), ["rgb"], [image_size, image_size],
        {"name": "vit", "hidden_size": 48, "mlp_dim": 96, "num_heads": 4}, patch_size=16,
    )  # fmt: skip
    write_contract(contract, path)
    return path


def train_evaluate_infer(bundle: str, out: Path, *extra: str) -> str:
    """Two tiny epochs on the demo set, then evaluate.json and inference.json on the test split; the train log."""
    proc = run_bundle(
        configs(bundle, "train"), *tiny(bundle), "--epochs", "2", *extra, *run_dirs(out / "models", out / "logs")
    )
    run_bundle(configs(bundle, "train", "evaluate"), *tiny(bundle), *run_dirs(out / "models", out / "eval"))
    run_bundle(configs(bundle, "inference"), *tiny(bundle), *run_dirs(out / "models", out / "inf"))
    return proc.stdout + proc.stderr


# ---- the bundles, end to end -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_aptos_loads_an_mrm_encoder_and_its_numbers_follow_from_its_predictions(tmp_path):
    ckpt = fake_mrm_checkpoint(tmp_path / "mrm.pt", 32)
    log = train_evaluate_infer("mrm_aptos", tmp_path, "--pretrained_ckpt", str(ckpt))
    assert "input contract of" in log and "matches this run" in log
    assert "loaded 31 of 31 pre-trained encoder tensors ('vit.*')" in log  # 2 blocks x 13 + embedding 3 + norm 2
    groups = torch.load(tmp_path / "models" / "checkpoints" / "finetune" / "checkpoint_epoch=2.pt", weights_only=True)
    scales = sorted({round(g["lr_scale"], 6) for g in groups["optimizer"]["param_groups"]})
    assert scales == [round(0.75**k, 6) for k in (3, 2, 1, 0)]  # pre-trained: layer-wise decay 0.75 by default
    test = {e["subject_id"]: e["label"] for e in split("mrm_aptos")}
    rows = read_csv(tmp_path / "inf" / "predictions.csv")
    assert list(rows[0]) == ["id_code", "diagnosis", "p_0", "p_1", "p_2", "p_3", "p_4"]
    assert sorted(r["id_code"] for r in rows) == sorted(test)
    probs = np.array([[float(r[f"p_{c}"]) for c in range(5)] for r in rows])
    assert np.allclose(probs.sum(1), 1, atol=1e-5) and [int(r["diagnosis"]) for r in rows] == list(probs.argmax(1))
    true, pred = [test[r["id_code"]] for r in rows], list(probs.argmax(1))
    m = metrics(tmp_path / "eval" / "metrics.csv")
    assert m["val_acc"] == pytest.approx(np.mean(np.array(true) == np.array(pred)))
    if len(set(true)) > 1 or len(set(pred)) > 1:
        assert m["val_qwk"] == pytest.approx(qwk(true, pred, 5), abs=1e-6)
    for c in range(5):
        if 0 < sum(t == c for t in true) < len(true):
            assert m[f"val_auc_{c}"] == pytest.approx(auc(probs[:, c], [t == c for t in true]), abs=1e-6)
    matrix = list(csv.reader((tmp_path / "eval" / "confusion_matrix.csv").open()))
    assert matrix[0] == ["true \\ predicted", "0", "1", "2", "3", "4"]
    counts = np.array([[int(v) for v in r[1:]] for r in matrix[1:]])
    assert counts.sum() == len(true) and all(counts[t].sum() == true.count(t) for t in range(5))
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 1000


@pytest.mark.slow
def test_rfmid_label_set_from_the_data_and_a_constant_label_excluded(tmp_path):
    log = train_evaluate_infer("mrm_rfmid", tmp_path)
    names = tasks2d.rfmid_label_names(demo_folder("mrm_rfmid"))
    rows = read_csv(tmp_path / "inf" / "predictions.csv")
    assert list(rows[0]) == ["ID", *names]
    test = {e["subject_id"]: e["label"] for e in split("mrm_rfmid")}
    m = metrics(tmp_path / "eval" / "metrics.csv")
    assert np.isnan(m["val_auc_ODE"]) and "excluded from the mean" in log and "['ODE']" in log
    used = []
    for j, name in enumerate(names):
        y = [test[r["ID"]][j] for r in rows]
        if 0 < sum(y) < len(y):
            used.append(auc([float(r[name]) for r in rows], [v == 1 for v in y]))
            assert m[f"val_auc_{name}"] == pytest.approx(used[-1], abs=1e-6)
    assert m["val_auc_labels_used"] == len(used) and m["val_auc"] == pytest.approx(np.mean(used), abs=1e-6)


@pytest.mark.slow
def test_crp_reports_targets_in_their_own_units(tmp_path):
    train_evaluate_infer("mrm_crp", tmp_path)
    targets = ["age", "bmi", "sbp", "dbp", "sex", "smoking"]
    training = np.array([e["label"] for e in split("mrm_crp", "training")], dtype=float)
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert np.allclose(state["target_mean"][:4].numpy(), np.nanmean(training[:, :4], 0), rtol=1e-5)  # training stats
    assert np.allclose(state["target_std"][:4].numpy(), np.nanstd(training[:, :4], 0), rtol=1e-5)
    rows = read_csv(tmp_path / "inf" / "predictions.csv")
    assert list(rows[0]) == ["id", *targets]
    test = {e["subject_id"]: e["label"] for e in split("mrm_crp")}
    m = metrics(tmp_path / "eval" / "metrics.csv")
    for j, name in enumerate(targets[:4]):  # MSE in years^2, (kg/m2)^2, mmHg^2 from the written predictions
        pairs = [(float(r[name]), test[r["id"]][j]) for r in rows if test[r["id"]][j] == test[r["id"]][j]]
        assert m[f"val_mse_{name}"] == pytest.approx(np.mean([(p - y) ** 2 for p, y in pairs]), rel=1e-4)
    std = state["target_std"][:4].numpy()
    assert m["val_mse"] == pytest.approx(np.mean([m[f"val_mse_{n}"] / s**2 for n, s in zip(targets, std)]), rel=1e-4)
    for j, name in ((4, "sex"), (5, "smoking")):
        p = [float(r[name]) for r in rows if test[r["id"]][j] == test[r["id"]][j]]
        assert all(0 <= v <= 1 for v in p)  # probabilities
        y = [test[r["id"]][j] == 1 for r in rows if test[r["id"]][j] == test[r["id"]][j]]
        if 0 < sum(y) < len(y):
            assert m[f"val_auc_{name}"] == pytest.approx(auc(p, y), abs=1e-6)


@pytest.mark.slow
def test_palm_masks_at_the_input_images_own_size_in_palm_convention(tmp_path):
    train_evaluate_infer("mrm_palm", tmp_path)
    m = metrics(tmp_path / "eval" / "metrics.csv")
    assert 0 <= m["val_dice_disc"] <= 1 and 0 <= m["val_dice_atrophy"] <= 1
    assert m["val_mean_dice"] == pytest.approx((m["val_dice_disc"] + m["val_dice_atrophy"]) / 2, abs=1e-6)
    test = split("mrm_palm")
    assert {e["set"] for e in test} == {"Testing"}  # PALM's own test set
    for e in test:
        stem = Path(e["image"]).stem
        size = Image.open(e["image"]).size  # (W, H): wider than tall, so the network saw it resized and padded
        for s in ("disc", "atrophy"):
            mask = Image.open(tmp_path / "inf" / f"{stem}_{s}.png")
            assert mask.size == size and set(np.unique(np.asarray(mask))) <= {0, 255}


@pytest.mark.slow
def test_glioma_grades_per_tile_with_cases_kept_whole(tmp_path):
    train_evaluate_infer("mrm_glioma", tmp_path)
    training, test = split("mrm_glioma", "training"), split("mrm_glioma")
    assert not {e["case_id"] for e in training} & {e["case_id"] for e in test}
    rows = read_csv(tmp_path / "inf" / "predictions.csv")
    assert list(rows[0]) == ["tile", "grade", "p_II", "p_III", "p_IV"]
    labels = {e["subject_id"]: e["label"] for e in test}
    assert sorted(r["tile"] for r in rows) == sorted(labels)
    grade = {"II": 0, "III": 1, "IV": 2}
    m = metrics(tmp_path / "eval" / "metrics.csv")
    assert m["val_acc"] == pytest.approx(np.mean([grade[r["grade"]] == labels[r["tile"]] for r in rows]))
    for c, name in enumerate(("II", "III", "IV")):
        y = [labels[r["tile"]] == c for r in rows]
        if 0 < sum(y) < len(y):
            assert m[f"val_auc_{name}"] == pytest.approx(auc([float(r[f"p_{name}"]) for r in rows], y), abs=1e-6)


@pytest.mark.slow
def test_multi_gpu_glioma_on_two_cpu_processes_writes_the_confusion_matrix(tmp_path):
    """DDP: replicas identical, the confusion matrix summed over both ranks (its saver runs on every rank)."""
    proc = run_bundle(
        configs("mrm_glioma", "train", "multi_gpu_train"), *tiny("mrm_glioma"), "--epochs", "1", "--batch_size", "4",
        *run_dirs(tmp_path / "models", tmp_path / "logs"), torchrun=2,
    )  # fmt: skip
    assert "DDP replicas identical after iteration" in proc.stdout + proc.stderr
    counts = [
        [int(v) for v in r[1:]] for r in list(csv.reader((tmp_path / "logs" / "confusion_matrix.csv").open()))[1:]
    ]
    assert sum(map(sum, counts)) == len(split("mrm_glioma"))  # every test tile, from both ranks
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert "head.weight" in state and not any(k.startswith("module.") for k in state)


@pytest.mark.slow
def test_a_pretrained_encoder_of_other_inputs_is_refused_naming_the_difference(tmp_path):
    ckpt = fake_mrm_checkpoint(tmp_path / "mrm.pt", 64)  # pre-trained on 64 x 64 images, this run feeds 32 x 32
    cmd = bundle_command(
        configs("mrm_crp", "train"), *tiny("mrm_crp"), "--epochs", "1", "--pretrained_ckpt", str(ckpt),
        *run_dirs(tmp_path / "models", tmp_path / "logs"),
    )  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and not (tmp_path / "models" / "model.pt").exists()
    assert "was trained on other inputs" in proc.stderr and "crop_size" in proc.stderr and "[64, 64]" in proc.stderr


def test_every_bundle_runs_from_scratch_without_an_mrm_checkpoint_and_states_its_demo_knobs(tmp_path):
    """Without ``bundles/mrm/models/model.pt``: pretrained_ckpt is None, layer decay is off (nothing pre-trained to
    keep), and the demo's own knobs are in effect; a --dataset_dir run gets the paper's ViT-B/16 at 224; with one,
    it is the default checkpoint and layer decay 0.75 applies. (A fake collection under tmp_path, so a checkout
    where the mrm demo was trained gives the same answer.)"""
    from monai.bundle import ConfigParser

    for bundle in BUNDLES:
        parser = ConfigParser()
        parser.read_config(str(REPO / "bundles" / bundle / "configs" / "train.json"))
        parser["bundle_root"] = str(tmp_path / "bundles" / bundle)
        assert parser.get_parsed_content("pretrained_ckpt") is None
        assert parser.get_parsed_content("layer_decay") == 1.0 and parser.get_parsed_content("demo_data")
        assert parser.get_parsed_content("image_size") == 96 and parser.get_parsed_content("hidden_size") == 192
        parser["dataset_dir"] = "/data/real"
        assert not parser.get_parsed_content("demo_data")
        sizes = [
            parser.get_parsed_content(k) for k in ("image_size", "hidden_size", "mlp_dim", "num_heads", "patch_size")
        ]
        assert sizes == [224, 768, 3072, 12, 16] and parser.get_parsed_content("epochs") == 50
        assert parser.get_parsed_content("linear_probe") is False
    mrm = tmp_path / "bundles" / "mrm" / "models" / "model.pt"
    mrm.parent.mkdir(parents=True)
    mrm.write_bytes(b"")
    for bundle in BUNDLES:
        (tmp_path / "bundles" / bundle).mkdir()  # ``<bundle>/../mrm`` resolves through an existing folder
        parser = ConfigParser()
        parser.read_config(str(REPO / "bundles" / bundle / "configs" / "train.json"))
        parser["bundle_root"] = str(tmp_path / "bundles" / bundle)
        assert Path(parser.get_parsed_content("pretrained_ckpt")).resolve() == mrm.resolve()
        assert parser.get_parsed_content("layer_decay") == 0.75


def test_packaging_vendors_what_the_configs_call():
    import sys

    sys.path.insert(0, str(REPO / "tools"))
    import package_bundle

    for bundle in BUNDLES:
        files = {
            p.relative_to(REPO).as_posix() for p in package_bundle.common_closure(REPO / "bundles" / bundle / "configs")
        }
        assert {"common/data/tasks2d.py", "common/data/demo_transfer.py", "common/data/demo_mrm.py",
                "common/data/images2d.py", "common/networks/transfer2d.py", "common/engines/metrics.py",
                "common/engines/contract.py", "common/engines/checkpoint.py"} <= files  # fmt: skip
        assert ("common/engines/classification.py" in files) == (bundle != "mrm_palm")  # the predictions CSV
        assert "common/networks/m2mae.py" not in files


# ---- the helpers the configs call ------------------------------------------------------------------------------


def _png(path: Path, size=(40, 36), value=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pixels = (
        np.full((size[1], size[0], 3), value, np.uint8)
        if value is not None
        else rng.integers(0, 255, (size[1], size[0], 3))
    )
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def test_task_entries_take_the_first_source_given(tmp_path):
    _png(tmp_path / "new" / "a.png")
    _png(tmp_path / "new" / "sub" / "b.jpg")
    (tmp_path / "new" / "notes.txt").write_text("x")
    assert tasks2d.task_entries("aptos", input_dir=tmp_path / "new", datalist="ignored.json") == [
        {"subject_id": "a", "image": str((tmp_path / "new" / "a.png").resolve())},
        {"subject_id": "sub/b", "image": str((tmp_path / "new" / "sub" / "b.jpg").resolve())},
    ]
    datalist = tmp_path / "dl.json"
    datalist.write_text(
        json.dumps({"testing": [{"subject_id": "x", "image": "new/a.png", "label": ["m/d.png", "/abs/a.png"]}]})
    )
    (entry,) = tasks2d.task_entries("palm", "testing", data_dir="ignored", datalist=datalist)
    assert entry["image"] == str(tmp_path / "new" / "a.png")
    assert entry["label"] == [str(tmp_path / "m" / "d.png"), "/abs/a.png"]  # mask paths relative to the datalist
    with pytest.raises(ValueError, match="give --dataset_dir"):
        tasks2d.task_entries("aptos")
    with pytest.raises(FileNotFoundError, match="no image"):
        tasks2d.folder_entries(_empty(tmp_path))


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir(exist_ok=True)
    return tmp_path / "empty"


def test_task_entries_write_the_split_next_to_the_data_by_default(tmp_path):
    from common.data.demo_transfer import build_demo_transfer

    folder = Path(build_demo_transfer("aptos", tmp_path / "aptos", 10, 32))
    train = tasks2d.task_entries("aptos", "training", data_dir=folder)
    test = tasks2d.task_entries("aptos", "validation", data_dir=folder)
    assert (folder / "split_mrm_aptos.json").is_file() and (len(train), len(test)) == (8, 2)
    other = tasks2d.task_entries("aptos", "validation", data_dir=folder, split_file=tmp_path / "elsewhere.json")
    assert (tmp_path / "elsewhere.json").is_file() and len(other) == 2


def test_rfmid_label_names_without_a_folder_say_what_to_pass():
    with pytest.raises(ValueError, match="--label_names"):
        tasks2d.rfmid_label_names(None)


def test_unreadable_images_are_reported_and_skipped(tmp_path, caplog):
    good = {"subject_id": "good", "image": str(_png(tmp_path / "good.png"))}
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    broken = {"subject_id": "broken", "image": str(tmp_path / "broken.png")}
    blank = {"subject_id": "blank", "image": str(_png(tmp_path / "blank.png", value=7))}
    with caplog.at_level(logging.ERROR):
        assert tasks2d.readable_entries([broken, good, blank]) == [good]
    assert "broken.png" in caplog.text and "blank image" in caplog.text and "skipping 2 of 3" in caplog.text
    with pytest.raises(ValueError, match="none of the 2 images"):
        tasks2d.readable_entries([broken, blank])


def test_palm_masks_are_written_in_palm_convention(tmp_path):
    from monai.data import MetaTensor

    pred = torch.zeros(2, 3, 4)
    pred[0, 1, 2] = 1  # disc at row 1, column 2
    pred[1, 2, :] = 1  # atrophy along row 2
    image = MetaTensor(torch.zeros(3, 3, 4), meta={"filename_or_obj": "/x/Images/P0001.jpg"})
    tasks2d.SavePALMMasksd("pred", tmp_path, ["disc", "atrophy"])({"pred": pred, "image": image})
    disc = np.asarray(Image.open(tmp_path / "P0001_disc.png"))
    atrophy = np.asarray(Image.open(tmp_path / "P0001_atrophy.png"))
    expected_disc = np.full((3, 4), 255)
    expected_disc[1, 2] = 0
    expected_atrophy = np.full((3, 4), 255)
    expected_atrophy[2, :] = 0
    assert (disc == expected_disc).all() and (atrophy == expected_atrophy).all()
    with pytest.raises(ValueError, match=r"expected a prediction \[3, H, W\]"):
        tasks2d.SavePALMMasksd("pred", tmp_path, ["a", "b", "c"])({"pred": pred, "image": image})


def test_prediction_writer_rows_and_header(tmp_path):
    from ignite.engine import Engine

    batches = [
        [{"subject_id": "a", "pred": torch.tensor([0.2, 0.5, 0.3])}, {"subject_id": "b", "pred": torch.tensor([0.6, 0.3, 0.1])}],
        [{"subject_id": "c", "pred": torch.tensor([0.1, 0.1, 0.8])}],
    ]  # fmt: skip

    def step(engine, batch):
        engine.state.batch = batch
        return batch

    engine = Engine(step)
    writer = PredictionWriter(str(tmp_path), ["grade", "p_II", "p_III", "p_IV"], row_transform=class_rows(["II", "III", "IV"]),
                              id_column="tile")  # fmt: skip
    writer.attach(engine)
    engine.run(batches, max_epochs=1)
    rows = list(csv.reader((tmp_path / "predictions.csv").open()))
    assert rows[0] == ["tile", "grade", "p_II", "p_III", "p_IV"]
    assert [r[:2] for r in rows[1:]] == [["a", "III"], ["b", "II"], ["c", "IV"]]
    assert [float(v) for v in rows[1][2:]] == pytest.approx([0.2, 0.5, 0.3])
    engine.run(batches, max_epochs=1)  # a second run starts a new file, not an appended one
    assert len(list(csv.reader((tmp_path / "predictions.csv").open()))) == 4
    plain = PredictionWriter(str(tmp_path), ["x", "y"], filename="p.csv")
    plain.attach(engine := Engine(step))
    with pytest.raises(ValueError, match="3 values for the columns"):
        engine.run(batches, max_epochs=1)


def test_frozen_unetr_encoder_trains_only_the_decoder():
    net = transfer_unetr_2d(
        2, img_size=32, feature_size=8, hidden_size=48, mlp_dim=96, num_heads=4, freeze_encoder=True
    )
    assert not any(p.requires_grad for p in net.vit.parameters())
    assert all(p.requires_grad for n, p in net.named_parameters() if not n.startswith("vit."))
    free = transfer_unetr_2d(2, img_size=32, feature_size=8, hidden_size=48, mlp_dim=96, num_heads=4)
    assert all(p.requires_grad for p in free.parameters())


def test_target_stats_restored_from_a_checkpoint_need_no_warning(caplog):
    targets = {"age": "continuous", "sex": "binary"}
    with caplog.at_level(logging.WARNING):
        net = TransferViT2D(targets=targets, target_stats="checkpoint", img_size=32, hidden_size=48, mlp_dim=96,
                            num_layers=1, num_heads=4)  # fmt: skip
    assert "no target_stats" not in caplog.text
    assert net.target_mean.tolist() == [0.0, 0.0] and net.target_std.tolist() == [1.0, 1.0]
    with caplog.at_level(logging.WARNING):
        TransferViT2D(targets=targets, img_size=32, hidden_size=48, mlp_dim=96, num_layers=1, num_heads=4)
    assert "no target_stats" in caplog.text
    with pytest.raises(ValueError, match="'checkpoint'"):
        TransferViT2D(targets=targets, target_stats="ckpt", img_size=32, hidden_size=48, mlp_dim=96, num_layers=1,
                      num_heads=4)  # fmt: skip


@pytest.mark.slow
def test_packaged_aptos_zip_runs_inference_standalone_on_a_folder_of_images(tmp_path, monkeypatch):
    """tools/package_bundle.py's zip of mrm_aptos (tiny weights and their contract in models/), unzipped elsewhere,
    runs inference.json from inside its own folder on a folder of new images: the vendored ``common`` is the one
    imported, and no demo set is built (``--input_dir`` needs none)."""
    import shutil
    import sys
    import zipfile

    from common.data.images2d import image_preprocessing
    from common.engines.contract import input_contract, write_contract

    sys.path.insert(0, str(REPO / "tools"))
    import package_bundle

    fake = tmp_path / "repo"
    shutil.copytree(REPO / "bundles" / "mrm_aptos", fake / "bundles" / "mrm_aptos",
                    ignore=shutil.ignore_patterns("*.pt", "*.contract.json", "logs", "eval", "checkpoints"))  # fmt: skip
    shutil.copytree(REPO / "common", fake / "common", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "requirements.txt", fake / "requirements.txt")
    torch.manual_seed(0)
    net = TransferViT2D(5, img_size=32, hidden_size=48, mlp_dim=96, num_layers=2, num_heads=4)
    weights = fake / "bundles" / "mrm_aptos" / "models" / "model.pt"
    torch.save(net.state_dict(), weights)
    contract = input_contract(
        image_preprocessing("image", 32), ["rgb"], [32, 32], {"name": "vit", "hidden_size": 48, "mlp_dim": 96, "num_heads": 4},
        patch_size=16, channel_order=True,
    )  # fmt: skip
    write_contract(contract, weights)
    monkeypatch.setattr(package_bundle, "REPO", fake)
    zip_path = Path(package_bundle.build("mrm_aptos", out_dir=str(tmp_path / "dist")))
    names = zipfile.ZipFile(zip_path).namelist()
    assert "mrm_aptos/common/networks/transfer2d.py" in names and "mrm_aptos/common/data/tasks2d.py" in names
    assert "mrm_aptos/models/model.contract.json" in names and not any(n.endswith(".pt") for n in names)
    zipfile.ZipFile(zip_path).extractall(tmp_path / "unzipped")
    installed = tmp_path / "unzipped" / "mrm_aptos"
    shutil.copy(tmp_path / "dist" / f"{zip_path.stem}_model.pt", installed / "models" / "model.pt")  # large_files.yml
    images = tmp_path / "new_images"
    for k in range(3):
        _png(images / f"eye_{k}.png", size=(48, 40))
    cache = tmp_path / "cache"
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"} | {"MMPT_CACHE_DIR": str(cache)}
    proc = subprocess.run(
        [*bundle_command("configs/inference.json"), *TINY_2D, "--num_layers", "2", "--input_dir", str(images),
         "--output_dir", str(tmp_path / "out")],
        cwd=installed, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "matches this run" in proc.stdout + proc.stderr  # the fine-tuned model's contract was checked
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    assert sorted(r["id_code"] for r in rows) == ["eye_0", "eye_1", "eye_2"]
    probs = np.array([[float(r[f"p_{c}"]) for c in range(5)] for r in rows])
    from monai.transforms import Compose

    preprocess = Compose(image_preprocessing("image", 32))
    with torch.no_grad():
        x = torch.stack(
            [torch.as_tensor(preprocess({"image": str(images / f"{r['id_code']}.png")})["image"]) for r in rows]
        )
        expected = torch.softmax(net(x), 1).numpy()
    assert np.allclose(probs, expected, atol=1e-4)  # the packaged weights, the packaged preprocessing
    assert not cache.exists() or not any(cache.iterdir())  # no demo set built for a folder of images
