"""The mrm bundle: its data preparation and wiring in process, and end to end through the real ``monai.bundle`` runner
with tiny overrides (a 12-block ViT of width 48 on 32 px images, 8 training subjects, 20 SNPs)."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, bundle_command, run_bundle, run_dirs

from common.data.demo_mrm import build_demo_mrm
from common.data.validate import DataValidationError

TRAIN = "bundles/mrm/configs/train.json"
MULTI_GPU = "bundles/mrm/configs/multi_gpu_train.json"
INFERENCE = "bundles/mrm/configs/inference.json"
SIZES = {
    "image_size": 32, "patch_size": 16, "hidden_size": 48, "mlp_dim": 96, "num_layers": 12, "num_heads": 4,
    "decoder_size": 32, "decoder_layers": 1, "decoder_heads": 4, "genome_tokens": 4, "genome_decoder_size": 32,
    "genome_decoder_heads": 4, "snn_hidden": [16],
}  # fmt: skip
TINY = [a for k, v in SIZES.items() for a in (f"--{k}", json.dumps(v).replace(" ", ""))]
TINY += ["--batch_size", "4", "--num_workers", "0", "--cache_rate", "1.0", "--preview_interval", "1"]
ENCODER = dict(img_size=32, hidden_size=48, mlp_dim=96, num_heads=4)  # UNETR has 12 blocks: so has the tiny run


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The real demo builder, tiny: 10 subjects (8 training, 2 validation) at 32 px, 20 SNPs with 1 % missing."""
    return Path(build_demo_mrm(str(tmp_path_factory.mktemp("demo_mrm")), num_subjects=10, image_size=32, num_snps=20))


def train_ids(demo: Path) -> list[str]:
    return [e["subject_id"] for e in json.loads(demo.read_text())["training"]]


def raw_genotypes(demo: Path) -> tuple[list[str], np.ndarray]:
    """Dosages read with bed-reader itself (not our reader): the reference the statistics are checked against."""
    from bed_reader import open_bed

    with open_bed(demo.parent / "genotypes.bed", count_A1=False) as bed:
        return [str(i) for i in bed.iid], bed.read(dtype="float64")


def parser_for(*files: str, **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(list(files) if len(files) > 1 else files[0])
    parser.update(overrides)
    return parser


def tiny_parser(demo: Path, **overrides):
    return parser_for(TRAIN, datalist=str(demo), epochs=1, batch_size=4, num_workers=0, **SIZES, **overrides)


# ------------------------------------------------------------------------------------------- data preparation


def test_sources_precedence_and_genetics_named_by_the_datalist(demo, tmp_path):
    from common.data.mrm_data import mrm_sources

    assert mrm_sources(datalist=str(demo)) == {
        "datalist": str(demo), "folder": None, "genetics": str(demo.parent / "genotypes.bed"), "demo": False,
    }  # fmt: skip
    assert mrm_sources(dataset_dir=str(demo.parent))["datalist"] == str(demo.parent / "datalist.json")
    assert mrm_sources(datalist=str(demo), genetics="x.csv")["genetics"] == "x.csv"  # an explicit file wins
    # a folder of images only: scanned, no genetics
    (tmp_path / "images").mkdir()
    shutil.copy(demo.parent / "images" / "DemoMRM_000.png", tmp_path / "images" / "a1.png")
    found = mrm_sources(dataset_dir=str(tmp_path))
    assert found["folder"] == str(tmp_path / "images") and found["genetics"] is None and found["datalist"] is None
    # "genetics" as a plain path, and an absolute one
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps({"training": [], "genetics": "g/scores.csv"}))
    assert mrm_sources(datalist=str(listing))["genetics"] == str(tmp_path / "g" / "scores.csv")
    listing.write_text(json.dumps({"training": [], "genetics": {"file": "/abs/g.bed"}}))
    assert mrm_sources(datalist=str(listing))["genetics"] == "/abs/g.bed"


def test_scan_image_folder(tmp_path, demo):
    from common.data.mrm_data import scan_image_folder

    for name in ("b.PNG", "a.jpg", "notes.txt"):
        shutil.copy(demo.parent / "images" / "DemoMRM_000.png", tmp_path / name)
    found = scan_image_folder(tmp_path)
    assert [e["subject_id"] for e in found] == ["a", "b"] and all(Path(e["image"]).is_absolute() for e in found)


def test_statistics_are_fitted_on_the_training_subjects_only(demo):
    from common.data.mrm_data import prepare_mrm_data

    data = prepare_mrm_data(datalist=str(demo))
    ids, dosages = raw_genotypes(demo)
    train = train_ids(demo)
    assert [e["subject_id"] for e in data["entries"]] == train and len(train) == 8
    rows = dosages[[ids.index(s) for s in train]]  # [8, 20], NaN = missing call
    assert np.isnan(dosages).any()  # the demo writes 1 % missing calls: imputation is exercised
    mean = np.nanmean(rows, 0)
    std = np.sqrt(np.nanmean((rows - mean) ** 2, 0))
    std = np.where(std > 1e-8, std, 1.0)
    stats = data["stats"]
    assert stats["num_train"] == 8 and data["num_features"] == 20 and len(stats["features"]) == 20
    np.testing.assert_allclose(stats["fill"].numpy(), mean, rtol=1e-5)
    np.testing.assert_allclose(stats["std"].numpy(), std, rtol=1e-5)
    all_mean = np.nanmean(dosages, 0)  # over all 10 subjects: must differ, else the test proves nothing
    assert not np.allclose(all_mean, mean)


def test_single_modality_reads_no_genetics(demo, tmp_path):
    from common.data.mrm_data import prepare_mrm_data

    data = prepare_mrm_data(datalist=str(demo), genetics=str(tmp_path / "absent.bed"), single_modality=True)
    assert data["table"] is None and data["stats"] is None and data["num_features"] is None
    assert len(data["entries"]) == 8 and "genetics" not in data["entries"][0]


def write_scores(path: Path, ids: list[str], width: int = 3, bad: dict | None = None) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["subject_id", *[f"s{j}" for j in range(width)]])
        for i, sid in enumerate(ids):
            writer.writerow([sid, *[(bad or {}).get((i, j), f"{0.1 * (i + j):.2f}") for j in range(width)]])
    return path


def test_unmatched_subjects_are_reported_and_left_out(demo, tmp_path, caplog):
    from common.data.mrm_data import prepare_mrm_data

    ids = train_ids(demo)
    scores = write_scores(tmp_path / "scores.csv", ids[2:] + ["NoImage_1"])  # 2 images without genetics, 1 extra
    with caplog.at_level("WARNING"):
        data = prepare_mrm_data(datalist=str(demo), genetics=str(scores))
    assert [e["subject_id"] for e in data["entries"]] == ids[2:]
    text = caplog.text
    assert "2 subject(s) have images but no genetics" in text and ids[0] in text
    assert "1 subject(s) of" in text and "NoImage_1" in text
    assert data["stats"]["num_train"] == 6


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_join", "the ids do not join"),
        ("length", "genetics vectors of length 3, expected 7"),
        ("inf", "Inf genetics value"),
        ("duplicate", "duplicate subject id"),
        ("none", "no genetics file"),
        ("corrupt", "unreadable or corrupt image"),
        ("grey_rgba_ok", None),
    ],
)
def test_bad_inputs_name_the_file_and_the_problem(demo, tmp_path, case, message):
    from common.data.mrm_data import prepare_mrm_data

    ids = train_ids(demo)
    genetics, kwargs, datalist = write_scores(tmp_path / "scores.csv", ids), {}, str(demo)
    named = genetics
    if case == "no_join":
        genetics = write_scores(tmp_path / "scores.csv", [f"other_{i}" for i in range(8)])
    elif case == "length":
        kwargs["num_features"] = 7
    elif case == "inf":
        genetics = write_scores(tmp_path / "scores.csv", ids, bad={(3, 1): "inf"})
    elif case == "duplicate":
        genetics = write_scores(tmp_path / "scores.csv", ids + [ids[0]])
    elif case == "none":
        datalist, named = str(demo.parent / "datalist.csv"), None  # a CSV names no genetics file
        genetics = None
    elif case in ("corrupt", "grey_rgba_ok"):
        from PIL import Image

        rows = [{**r, "image": str(demo.parent / r["image"])} for r in json.loads(demo.read_text())["training"]]
        broken = tmp_path / "broken.png"
        if case == "corrupt":
            broken.write_bytes((demo.parent / rows[0]["image"]).read_bytes()[:200])
        else:
            Image.open(demo.parent / rows[0]["image"]).convert("LA").save(broken)
        rows[0] = {**rows[0], "image": str(broken)}
        listing = tmp_path / "list.json"
        listing.write_text(json.dumps({"training": rows}))
        datalist, named = str(listing), broken
    if message is None:  # a grey image with alpha is a warning (replicated to RGB), not an error
        assert len(prepare_mrm_data(datalist=datalist, genetics=str(genetics), **kwargs)["entries"]) == 8
        return
    with pytest.raises(DataValidationError) as err:
        prepare_mrm_data(datalist=datalist, genetics=str(genetics) if genetics else None, **kwargs)
    assert message in str(err.value)
    if named is not None:
        assert str(named) in str(err.value)


# ------------------------------------------------------------------------------------------- genome previews


def test_per_feature_error_by_hand():
    from common.engines.previews import per_feature_error

    target = torch.tensor([[0.0, 1.0, -1.0], [2.0, 1.0, 3.0]])
    pred = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 3.0]])
    # feature 0: (1 + 4) / 2; feature 1: (0 + 1) / 2; feature 2: (4 + 0) / 2
    assert per_feature_error(target, pred).tolist() == [2.5, 0.5, 2.0]
    with pytest.raises(ValueError, match=r"\[B, G\]"):
        per_feature_error(target, pred[:1])


def test_reconstruction_correlation_by_hand():
    from common.engines.previews import reconstruction_correlation

    # t = [1, 2, 3] (centred -1, 0, 1), p = [2, 4, 7] (centred -7/3, -1/3, 8/3): r = 5 / sqrt(2 * 38/3)
    r = reconstruction_correlation(torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[2.0], [4.0], [7.0]]))
    assert r == pytest.approx(5 / math.sqrt(2 * 38 / 3))
    assert reconstruction_correlation(torch.tensor([[1.0, -1.0]]), torch.tensor([[-3.0, 3.0]])) == pytest.approx(-1)
    assert math.isnan(reconstruction_correlation(torch.ones(2, 2), torch.randn(2, 2)))
    assert reconstruction_correlation(torch.tensor([[0.1, 0.2]]), torch.tensor([[0.1, 0.3]])) == pytest.approx(1)


def test_genome_error_figure_is_an_rgb_picture():
    from common.engines.previews import genome_error_figure

    img = genome_error_figure(torch.randn(4, 30), torch.randn(4, 30))
    assert img.ndim == 3 and img.shape[0] == 3 and img.shape[1] > 100 and img.shape[2] > 200
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0 and float(img.std()) > 0.01


def test_genome_plot_handler_writes_the_figure_and_the_mean_error(tmp_path):
    from types import SimpleNamespace

    from ignite.engine import Engine
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from common.engines.previews import GenomeReconstructionPlot

    target = torch.tensor([[0.0, 1.0, -1.0], [2.0, 1.0, 3.0]])
    pred = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 3.0]])
    plot = GenomeReconstructionPlot(str(tmp_path / "none"))
    for partial in ({"image": target}, {"genetics": target}, {"pred_genetics": pred}):  # e.g. single-modality
        plot(SimpleNamespace(state=SimpleNamespace(output=partial, epoch=1)))
    assert plot._writer is None
    plot = GenomeReconstructionPlot(str(tmp_path))
    engine = Engine(lambda e, batch: {"genetics": target, "pred_genetics": pred})
    plot.attach(engine)
    engine.run([0], max_epochs=2)  # attached: one plot per epoch, the writer closed at the end
    assert plot._writer is None
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert events.Tags()["images"] == ["genome_reconstruction/error"]
    assert [e.step for e in events.Images("genome_reconstruction/error")] == [1, 2]
    values = events.Scalars("genome_reconstruction/mean_error")
    assert [v.step for v in values] == [1, 2]
    assert values[0].value == pytest.approx((2.5 + 0.5 + 2.0) / 3)  # mean of the features' errors, by hand


def test_sample_relation_floors_tiny_norms_at_its_eps():
    """The cosine relation of the matching losses (Eq. 8, 9, 11): a feature of norm 1e-10 is divided by eps = 1e-8,
    not normalised to unit length (a near-zero pooled feature carries no relation)."""
    from common.losses.mrm import sample_relation

    a = torch.tensor([[1e-10, 0.0], [3.0, 4.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 2e-10]])
    # by hand: rows / max(norm, 1e-8): [1e-2, 0], [0.6, 0.8]; columns: [1, 0], [0, 2e-2]
    expected = torch.tensor([[1e-2, 0.0], [0.6, 0.8 * 2e-2]])
    assert torch.allclose(sample_relation(a, b), expected, atol=1e-7)


# ------------------------------------------------------------------------------------------------ config wiring


def test_demo_knobs_leave_the_paper_defaults_to_real_data():
    """The demo shrinks the network, images and schedule; with a datalist the paper's values (sec. 4.2) apply."""
    real = parser_for(TRAIN, datalist="/data/pairs.csv")
    paper = {
        "image_size": 224, "patch_size": 16, "hidden_size": 768, "mlp_dim": 3072, "num_layers": 12, "num_heads": 12,
        "learning_rate": 1e-3, "genome_learning_rate": 1e-3, "tau_image": 0.75, "tau_genome": 0.5, "lam": 1.0,
        "masked_blocks": 2, "match_samples": 8, "renormalize": False, "epochs": 50, "batch_size": 256,
        "single_modality": False, "demo_data": False,
    }  # fmt: skip
    assert {k: real.get_parsed_content(k) for k in paper} == paper
    demo = parser_for(TRAIN)
    assert demo.get_parsed_content("demo_data") is True
    # the demo encoder fits every mrm downstream demo: image 96, ViT width 192, MLP 768, 3 heads, and 12 blocks
    # (UNETR's fixed depth, for mrm_palm; the 6-block classifiers load the first six)
    keys = ("image_size", "hidden_size", "mlp_dim", "num_layers", "num_heads", "patch_size")
    demo_values = {k: demo.get_parsed_content(k) for k in keys}
    assert demo_values == {"image_size": 96, "hidden_size": 192, "mlp_dim": 768, "num_layers": 12, "num_heads": 3,
                           "patch_size": 16}  # fmt: skip
    for k in ("learning_rate", "tau_image", "tau_genome", "lam", "masked_blocks", "match_samples"):
        assert demo.get_parsed_content(k) == paper[k]  # the method's settings are never changed by the demo


def test_config_settings_reach_the_trainer_network_and_optimizer(demo):
    from common.engines.trainer import BatchInputs

    parser = tiny_parser(
        demo, lam=0.25, tau_image=0.6, tau_genome=0.3, match_samples=3, renormalize=True, learning_rate=0.002,
        genome_learning_rate=0.004, weight_decay=0.1,
    )  # fmt: skip
    trainer = parser.get_parsed_content("train#trainer")
    # Eq. 14: L_recon (weight 1 each) + lambda (L_self + L_cross), lambda from the config
    assert trainer.loss_weights == {
        "loss_rec_image": 1.0, "loss_rec_genome": 1.0, "loss_match_self": 0.25, "loss_match_cross": 0.25,
    }  # fmt: skip
    net = trainer.network
    assert (net.tau_image, net.tau_genome, net.match_samples, net.renormalize) == (0.6, 0.3, 3, True)
    assert net.num_genetic_features == 20 and net.img_size == (32, 32) and net.genome_encoder.num_tokens == 4
    groups = trainer.optimizer.param_groups
    assert [(g["name"], g["weight_decay"]) for g in groups] == [("image", 0.1), ("genome", 0.0)]
    assert [g["initial_lr"] for g in groups] == [0.002, 0.004]
    assert all(g["fused"] for g in groups)  # one fused AdamW kernel (the for-loop AdamW is 7x slower on CPU)
    assert not any(
        g["fused"] for g in tiny_parser(demo, fused_optimizer=False).get_parsed_content("optimizer").param_groups
    )
    assert isinstance(trainer.network_kwargs, BatchInputs) and trainer.network_kwargs.keys == {"genetics": "genetics"}


def test_the_batch_carries_the_standardised_genetics_of_its_subject(demo):
    parser = tiny_parser(demo, flip_prob=0.0)
    dataset = parser.get_parsed_content("train#dataset")
    ids, dosages = raw_genotypes(demo)
    train = train_ids(demo)
    rows = dosages[[ids.index(s) for s in train]]
    mean = np.nanmean(rows, 0)
    std = np.sqrt(np.nanmean((rows - mean) ** 2, 0))
    std = np.where(std > 1e-8, std, 1.0)
    for i in (0, 5):
        item = dataset[i]
        raw = dosages[ids.index(item["subject_id"])]
        expected = (np.where(np.isnan(raw), mean, raw) - mean) / std  # missing -> training mean -> 0
        np.testing.assert_allclose(item["genetics"].numpy(), expected, rtol=1e-5, atol=1e-6)
        assert tuple(item["image"].shape) == (3, 32, 32)


def test_single_modality_builds_no_genome_branch(demo):
    parser = tiny_parser(demo, single_modality=True)
    trainer = parser.get_parsed_content("train#trainer")
    net = trainer.network
    assert not net.multimodal and not hasattr(net, "genome_encoder") and not hasattr(net, "image_cross")
    assert not any(k.startswith("genome_") for k in net.state_dict())
    assert trainer.loss_weights == {"loss_rec_image": 1.0, "loss_match_self": 1.0}
    assert [g["name"] for g in trainer.optimizer.param_groups] == ["image"]
    assert "genetics" not in parser.get_parsed_content("train#dataset")[0]
    assert parser.get_parsed_content("contract")["genetics"] is None


def test_mae_weights_knob_loads_a_timm_vit_into_the_image_encoder(demo, tmp_path):
    from test_vit_import import timm_state

    source = timm_state(grid=2, depth=12)  # timm / MAE layout, width 48, MLP 96, qkv bias
    torch.save(source, tmp_path / "mae_vit.pth")
    parser = tiny_parser(demo, qkv_bias=True, mae_weights=str(tmp_path / "mae_vit.pth"))
    parser.get_parsed_content("initialize")
    vit = parser.get_parsed_content("network").vit.state_dict()
    assert torch.equal(vit["blocks.11.attn.qkv.bias"], source["blocks.11.attn.qkv.bias"])
    assert torch.equal(vit["blocks.3.attn.out_proj.weight"], source["blocks.3.attn.proj.weight"])
    assert torch.equal(vit["patch_embedding.position_embeddings"], source["pos_embed"][:, 1:])  # class slot dropped
    untouched = tiny_parser(demo, qkv_bias=True)
    untouched.get_parsed_content("initialize")
    assert not torch.equal(untouched.get_parsed_content("network").vit.state_dict()["norm.bias"], source["norm.bias"])


def test_multi_gpu_override_drops_exactly_the_logging_handlers_on_other_ranks():
    handlers = json.loads((REPO / TRAIN).read_text())["train"]["handlers"]
    multi = json.loads((REPO / MULTI_GPU).read_text())
    assert "@train#handlers[: -4 if dist.get_rank() > 0 else None]" in multi["train#trainer#train_handlers"]
    assert multi["train#trainer#train_handlers"].startswith("$[@replica_check]")  # the replica check comes first
    assert [h["_target_"].rsplit(".", 1)[-1] for h in handlers[-4:]] == [
        "StatsHandler", "TensorBoardStatsHandler", "SliceGridPreview", "GenomeReconstructionPlot",
    ]  # fmt: skip
    assert [h["_target_"].rsplit(".", 1)[-1] for h in handlers[:-4]] == [
        "LearningRateState", "LrScheduleHandler", "ResumableCheckpoint",
    ]  # fmt: skip


# ------------------------------------------------------------------------------------- through the real runner


def tiny(out: Path, demo: Path, epochs: int = 1, *extra: str) -> list[str]:
    return [*TINY, "--datalist", str(demo), "--epochs", str(epochs), *run_dirs(out / "models", out / "logs"), *extra]


@pytest.fixture(scope="module")
def paired_run(tmp_path_factory, demo) -> tuple[Path, str]:
    """One tiny paired pre-training run (1 epoch, 2 iterations), genetics given explicitly as the PLINK file."""
    out = tmp_path_factory.mktemp("mrm_run")
    proc = run_bundle(TRAIN, *tiny(out, demo, 1, "--genetics", str(demo.parent / "genotypes.bed")))
    return out, proc.stdout + proc.stderr


@pytest.mark.slow
def test_paired_run_logs_every_term_and_writes_the_model(paired_run, demo):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, log = paired_run
    for term in ("loss_rec_image", "loss_rec_genome", "loss_match_self", "loss_match_cross"):
        assert term in log and f"grad_norm_{term.removeprefix('loss_')}" in log
    assert log.count("grad_norm_rec_image") == 1  # once, at the first iteration
    state = torch.load(out / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
    assert any(k.startswith("vit.blocks.") for k in state) and any(k.startswith("genome_encoder.") for k in state)
    contract = state["input_contract"]
    assert (
        contract["modalities"] == ["rgb"] and contract["crop_size"] == [32, 32] and contract["patch_size"] == [16, 16]
    )
    stats = contract["genetics"]
    assert stats["num_train"] == 8 and len(stats["features"]) == len(stats["fill"]) == len(stats["std"]) == 20
    assert all(math.isfinite(v) for v in stats["fill"])
    ckpt = torch.load(out / "models" / "checkpoints" / "checkpoint_epoch=1.pt", weights_only=True)
    assert ckpt["trainer"]["iteration"] == 2 and len(ckpt["optimizer"]["param_groups"]) == 2
    assert ckpt["input_contract"]["genetics"]["features"] == stats["features"]

    events = EventAccumulator(str(out / "logs"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"loss", "loss_rec_image", "loss_rec_genome", "loss_match_self", "loss_match_cross"} <= set(tags["scalars"])
    assert {"grad_norm_rec_image", "genome_reconstruction/mean_error"} <= set(tags["scalars"])
    assert {"reconstruction/image|pred", "genome_reconstruction/error"} <= set(tags["images"])


@pytest.mark.slow
def test_the_checkpoint_loads_into_the_downstream_vit_with_no_missing_keys(paired_run):
    from common.engines.checkpoint import load_encoder
    from common.networks.transfer2d import TransferViT2D, transfer_unetr_2d

    out, _ = paired_run
    for net in (
        TransferViT2D(num_outputs=5, num_layers=12, **ENCODER),
        TransferViT2D(num_outputs=5, num_layers=6, **ENCODER),  # a shallower classifier takes the first six blocks
        transfer_unetr_2d(in_channels=3, out_channels=2, feature_size=8, **ENCODER),
    ):
        own = [k for k in net.state_dict() if k.startswith("vit.")]
        before = {k: v.clone() for k, v in net.state_dict().items() if k in own}
        assert load_encoder(net, str(out / "models" / "model.pt"), prefix="vit.") == len(own)  # raises if any missing
        state = torch.load(out / "models" / "model.pt", weights_only=True)
        for k in own:
            assert torch.equal(net.state_dict()[k], state[k])
        assert any(not torch.equal(before[k], state[k]) for k in own if "norm_cross" not in k)


@pytest.mark.slow
def test_resume_continues_from_the_last_epoch(paired_run, demo, tmp_path):
    out, _ = paired_run
    shutil.copytree(out / "models", tmp_path / "models")
    proc = run_bundle(TRAIN, *tiny(tmp_path, demo, 2, "--genetics", str(demo.parent / "genotypes.bed")))
    log = proc.stdout + proc.stderr
    assert "resumed from" in log and "checkpoint_epoch=1.pt" in log
    assert "Epoch: 2/2" in log and "Epoch: 1/2" not in log
    state = torch.load(tmp_path / "models" / "checkpoints" / "checkpoint_epoch=2.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 4
    assert state["optimizer"]["state"]  # Adam moments restored and carried on


@pytest.mark.slow
def test_inference_extracts_encoder_features(paired_run, demo, tmp_path):
    out, _ = paired_run
    extra = ["--image_size", "32", "--hidden_size", "48", "--mlp_dim", "96", "--num_layers", "12", "--num_heads", "4"]
    run_bundle(INFERENCE, *extra, "--datalist", str(demo), *run_dirs(out / "models", tmp_path / "eval"))
    rows = (tmp_path / "eval" / "features.csv").read_text().splitlines()
    assert len(rows) == 8 and all(len(r.split(",")) == 1 + 48 for r in rows)


@pytest.mark.slow
def test_single_modality_trains_on_a_folder_of_images_without_genetics(demo, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    images = tmp_path / "fundus"
    shutil.copytree(demo.parent / "images", images)  # nothing but PNGs: no datalist, no genetics anywhere
    args = [*TINY, "--dataset_dir", str(images), "--epochs", "1", *run_dirs(tmp_path / "models", tmp_path / "logs")]
    proc = run_bundle(TRAIN, *args, "--single_modality", "true")
    log = proc.stdout + proc.stderr
    assert "loss_rec_image" in log and "loss_match_self" in log
    assert "loss_rec_genome" not in log and "loss_match_cross" not in log
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("genome_") for k in state) and state["input_contract"]["genetics"] is None
    events = EventAccumulator(str(tmp_path / "logs"), size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == ["reconstruction/image|pred"]


@pytest.mark.slow
def test_ids_that_do_not_join_stop_the_run_before_training_naming_the_file(demo, tmp_path):
    scores = write_scores(tmp_path / "other_cohort.csv", [f"UKB_{i}" for i in range(8)])
    args = tiny(tmp_path, demo, 1, "--genetics", str(scores))
    proc = subprocess.run(bundle_command(TRAIN, *args), cwd=REPO, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "DataValidationError" in log and str(scores) in log and "the ids do not join" in log
    assert "Epoch: 1/1" not in log and not (tmp_path / "models").exists()


@pytest.mark.slow
def test_multi_gpu_config_runs_ddp_on_two_cpu_processes(demo, tmp_path):
    proc = run_bundle([TRAIN, MULTI_GPU], *tiny(tmp_path, demo, 1), "--batch_size", "2", torchrun=2)
    log = proc.stdout + proc.stderr
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # DDP unwrapped before saving
    assert "DDP replicas identical after iteration" in log and "tensors of 'network' on 2 ranks" in log
    assert log.count("Epoch: 1/1, Iter: 1/") == 1  # only rank 0 logs


def test_benchmark_parts_run_one_training_step_and_the_masked_attention():
    from common.networks.mrm import mrm_step_parts, mrm_tiny

    torch.manual_seed(0)
    net = mrm_tiny(20)
    parts = mrm_step_parts(net, batch=2)
    assert sorted(parts) == ["fused", "masking", "plain_vit", "step"]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    parts["step"]()  # forward of both branches, every loss, backward, AdamW step over both parameter groups
    changed = {k.split(".")[0] for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert {"vit", "image_decoder", "genome_encoder", "genome_decoder", "image_cross", "genome_cross"} <= changed
    for name in ("plain_vit", "masking", "fused"):
        parts[name]()
