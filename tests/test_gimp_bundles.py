"""The three GiMP bundles through the real runner, and the data layer they share (``common.data.gimp_data``).

gimp_groupmsa trains the gene encoder -> gimp pre-trains with it frozen -> gimp_nsclc fine-tunes from gimp (and
the WSI-only baseline from scratch); each step evaluates / infers. Bad inputs are named before the first step.
A tiny CLAM-layout demo build (12 patients, 40 genes, 16-d features) stands in for real data, so the real-data
inputs ``--feature_dir`` / ``--csv`` / ``--splits_csv`` / ``--expression`` are what the runs use.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import REPO, bundle_command, run_bundle, run_dirs

from common.data.demo_gimp import build_demo_gimp
from common.data.gimp_data import check_gimp_data, collate_bags, gimp_data, stored_expression_stats
from common.data.validate import DataValidationError

CFG = {b: {n: f"bundles/{b}/configs/{n}.json" for n in ("train", "evaluate", "inference", "multi_gpu_train")}
       for b in ("gimp_groupmsa", "gimp", "gimp_nsclc")}  # fmt: skip
GENES = ["--hidden_size", "32", "--fragment_length", "8", "--num_groups", "2"]
TINY_GROUPMSA = [*GENES, "--num_heads", "4", "--batch_size", "4"]
TINY_WSI = ["--feature_dim", "16", "--hidden_size", "32", "--heads", "4", "--num_landmarks", "8"]
TINY_GIMP = [*TINY_WSI, "--fragment_length", "8", "--num_groups", "2", "--gene_num_heads", "4", "--batch_size", "4"]
SMALL = dict(num_patients=12, num_genes=40, min_patches=20, max_patches=120, feature_dim=16, write_pt=False)


def _auc(scores: list[float], positive: list[bool]) -> float:
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    return sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return Path(build_demo_gimp(str(tmp_path_factory.mktemp("gimp_demo")), **SMALL)).parent


def _data_args(root: Path) -> list[str]:
    return ["--feature_dir", str(root), "--csv", str(root / "clam.csv"), "--splits_csv", str(root / "splits_0.csv"),
            "--expression", str(root / "expression.csv")]  # fmt: skip


# ------------------------------------------------------------------------------------------------ data layer


def test_collate_pads_bags_and_keeps_lengths():
    batch = [
        {"case_id": "a", "bag": torch.arange(6.0).view(3, 2), "expression": np.array([1.0, 2.0]), "label": 1},
        {"case_id": "b", "bag": torch.full((1, 2), 7.0), "expression": np.array([3.0, 4.0]), "label": 0},
    ]
    out = collate_bags(batch, image="bag")
    expected = torch.tensor([[[0.0, 1], [2, 3], [4, 5]], [[7, 7], [0, 0], [0, 0]]])
    assert torch.equal(out["bag"], expected) and out["image"] is out["bag"]
    assert out["length"].tolist() == [3, 1] and out["label"].tolist() == [1, 0] and out["case_id"] == ["a", "b"]
    assert torch.equal(out["expression"], torch.tensor([[1.0, 2], [3, 4]]))
    genes = collate_bags(batch, image="expression")
    assert torch.equal(genes["image"], genes["expression"])  # GroupMSA's input under MONAI's "image" key


def test_sources_agree_and_standardisation_is_fitted_on_training(demo, tmp_path):
    by_list = gimp_data(datalist=str(demo / "datalist.json"))
    by_csv = gimp_data(**{k[2:]: v for k, v in zip(_data_args(demo)[::2], _data_args(demo)[1::2])})
    # the same split as a TransMIL fold CSV (train, train_label, ...: one row per slide) beside CLAM's case CSV
    rows = {s: [(sid, e["label"]) for e in by_csv[s] for sid in e["slide_ids"]] for s in ("training", "validation",
                                                                                         "testing")}  # fmt: skip
    with open(tmp_path / "fold0.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "train", "train_label", "val", "val_label", "test", "test_label"])
        cols = [rows["training"], rows["validation"], rows["testing"]]
        for i in range(max(map(len, cols))):
            w.writerow([i, *[x for col in cols for x in (col[i] if i < len(col) else ("", ""))]])
    by_folds = gimp_data(feature_dir=str(demo), csv=str(demo / "clam.csv"), splits_csv=str(tmp_path / "fold0.csv"),
                         expression=str(demo / "expression.csv"))  # fmt: skip
    # no split file: 60 / 20 / 20 stratified by class in case-id order, the rule the demo's own split follows
    no_split = gimp_data(feature_dir=str(demo), csv=str(demo / "clam.csv"), expression=str(demo / "expression.csv"))
    for split in ("training", "validation", "testing"):
        assert [e["case_id"] for e in no_split[split]] == [e["case_id"] for e in by_list[split]]
    for split in ("training", "validation", "testing"):
        a, b, c = by_list[split], by_csv[split], by_folds[split]
        assert [e["case_id"] for e in a] == [e["case_id"] for e in b]
        assert [e["case_id"] for e in a] == [e["case_id"] for e in c]
        assert [e["bag"] for e in b] == [e["bag"] for e in c]
        assert [e["label"] for e in a] == [e["label"] for e in b] == [e["label"] for e in c]
        assert all(np.allclose(x["expression"], y["expression"]) for x, y in zip(a, b))
        assert all(len(x["bag"]) == len(y["bag"]) for x, y in zip(a, b))
    # by hand: log1p of the raw training rows, z-scored with their own mean and population std
    with open(demo / "expression.csv") as f:
        raw = {r[0]: np.array(r[1:], dtype=float) for r in list(csv.reader(f))[1:]}
    train = np.log1p(np.stack([raw[e["case_id"]] for e in by_list["training"]]))
    mean, std = train.mean(0), train.std(0)
    case = by_list["testing"][0]
    assert np.allclose(case["expression"], (np.log1p(raw[case["case_id"]]) - mean) / std, atol=1e-5)
    assert by_list["num_genes"] == 40 and by_list["genes"][:2] == ["GENE00000", "GENE00001"]


def test_stored_statistics_are_reused_and_missing_genes_named(demo, tmp_path):
    base = gimp_data(datalist=str(demo / "datalist.json"))
    shifted = dict(base["expression_stats"], mean=base["expression_stats"]["mean"] + 1.0)
    again = gimp_data(datalist=str(demo / "datalist.json"), expression_stats=shifted)
    x, y = base["testing"][0]["expression"], again["testing"][0]["expression"]
    assert np.allclose(y, x - 1.0 / base["expression_stats"]["std"].numpy(), atol=1e-5)  # the given stats, not refit
    table = list(csv.reader(open(demo / "expression.csv")))
    with open(tmp_path / "fewer.csv", "w", newline="") as f:
        csv.writer(f).writerows([r[:-3] for r in table])  # the last three genes dropped
    with pytest.raises(ValueError, match=r"3 of the 40 trained genes are missing \(first: GENE00037"):
        gimp_data(
            datalist=str(demo / "datalist.json"), expression=str(tmp_path / "fewer.csv"), expression_stats=shifted
        )


def _broken_copy(demo: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the demo with one problem per kind; returns the folder and what each broken case is."""
    root = tmp_path / "broken"
    shutil.copytree(demo, root)
    listed = json.loads((root / "datalist.json").read_text())
    cases = [e for e in listed["training"]]
    bad = {"empty": cases[0], "width": cases[1], "nan": cases[2], "no_slide": cases[3], "no_expr": cases[4]}
    nan = np.ones((5, 16), np.float32)
    nan[2, 3] = np.nan
    for key, features in (("empty", np.zeros((0, 16), np.float32)), ("width", np.ones((5, 8), np.float32)),
                          ("nan", nan)):  # fmt: skip
        with h5py.File(root / "h5_files" / f"{bad[key]['slide_ids'][0]}.h5", "w") as f:
            f.create_dataset("features", data=features)
            f.create_dataset("coords", data=np.zeros((len(features), 2), np.int64))
    for sid in bad["no_slide"]["slide_ids"]:
        (root / "h5_files" / f"{sid}.h5").unlink()
    rows = list(csv.reader(open(root / "expression.csv")))
    with open(root / "expression.csv", "w", newline="") as f:
        csv.writer(f).writerows([r for r in rows if r[0] != bad["no_expr"]["case_id"]])
    return root, {k: v["case_id"] for k, v in bad.items()}


def test_every_bad_input_is_named_at_once(demo, tmp_path):
    root, bad = _broken_copy(demo, tmp_path)
    data = gimp_data(**{k[2:]: v for k, v in zip(_data_args(root)[::2], _data_args(root)[1::2])})
    with pytest.raises(DataValidationError) as err:
        check_gimp_data(data, feature_dim=16, num_genes=41)
    text = str(err.value)
    lines = text.splitlines()

    def line_of(case: str) -> str:
        return "\n".join(line for line in lines if case in line)

    assert "empty feature bag (0 patches)" in line_of(bad["empty"]) and ".h5" in line_of(bad["empty"])
    assert "features of width 8, expected 16" in line_of(bad["width"])
    assert "NaN/Inf features in 1 of 5 patches" in line_of(bad["nan"])
    assert "has no feature file" in line_of(bad["no_slide"])
    assert "has no expression row" in line_of(bad["no_expr"]) and "expression.csv" in line_of(bad["no_expr"])
    assert "expression vectors of length 40, the network expects 41 genes" in text
    assert text.startswith("6 data error(s)")


# --------------------------------------------------------------------------------------- bundles end to end


@pytest.fixture(scope="module")
def groupmsa_run(demo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("groupmsa")
    run_bundle(CFG["gimp_groupmsa"]["train"], *TINY_GROUPMSA, *_data_args(demo), "--epochs", "2",
               *run_dirs(out / "models", out / "logs"))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def gimp_run(demo, groupmsa_run, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("gimp")
    proc = run_bundle(CFG["gimp"]["train"], *TINY_GIMP, *_data_args(demo), "--epochs", "1",
                      "--subsequence_length", "32", "--gene_encoder_ckpt", str(groupmsa_run / "models" / "model.pt"),
                      *run_dirs(out / "models", out / "logs"))  # fmt: skip
    return out, proc.stdout + proc.stderr


@pytest.mark.slow
def test_groupmsa_trains_evaluates_and_infers(demo, groupmsa_run):
    model = groupmsa_run / "models" / "model.pt"
    stats = stored_expression_stats(model)  # the standardisation travels with the weights
    assert stats["features"][:1] == ["GENE00000"] and stats["log1p"] and len(stats["mean"]) == 40
    assert any(k.startswith("encoder.") for k in torch.load(model, weights_only=True))
    assert list((groupmsa_run / "logs").glob("events.out.tfevents.*"))
    run_bundle([CFG["gimp_groupmsa"]["train"], CFG["gimp_groupmsa"]["evaluate"]], *TINY_GROUPMSA, *_data_args(demo),
               *run_dirs(groupmsa_run / "models", groupmsa_run / "eval"))  # fmt: skip
    metrics = {k: float(v) for k, v in csv.reader((groupmsa_run / "eval" / "metrics.csv").open())}
    run_bundle([CFG["gimp_groupmsa"]["train"], CFG["gimp_groupmsa"]["inference"]], *TINY_GROUPMSA, *_data_args(demo),
               *run_dirs(groupmsa_run / "models", groupmsa_run / "inf"))  # fmt: skip
    rows = list(csv.reader((groupmsa_run / "inf" / "predictions.csv").open()))
    testing = json.loads((demo / "datalist.json").read_text())["testing"]
    assert [r[0] for r in rows] == [e["case_id"] for e in testing]
    for _, cls, *probs in rows:
        assert len(probs) == 2 and sum(map(float, probs)) == pytest.approx(1, abs=1e-5)
    # evaluate (test split) and inference agree: its AUC and accuracy follow from the written probabilities
    labels = [e["label"] for e in testing]
    assert metrics["val_auc"] == pytest.approx(_auc([float(r[3]) for r in rows], [t == 1 for t in labels]))
    assert metrics["val_acc"] == pytest.approx(np.mean([int(float(r[1])) == t for r, t in zip(rows, labels)]))


@pytest.mark.slow
def test_gimp_pretrains_with_a_frozen_groupmsa_and_resumes(demo, groupmsa_run, gimp_run):
    out, log = gimp_run
    groupmsa = torch.load(groupmsa_run / "models" / "model.pt", weights_only=True)
    n = len([k for k in groupmsa if k.startswith("encoder.")])
    assert f"loaded {n} of {n} pre-trained encoder tensors ('gene_encoder.*')" in log
    assert "loss_rec" in log and "loss_tri" in log and "grad_norm_tri" in log
    final = torch.load(out / "models" / "model.pt", weights_only=True)
    genes = [k for k in final if k.startswith("gene_encoder.")]
    assert len(genes) == n and all(torch.equal(final[k], groupmsa["encoder." + k[13:]]) for k in genes)  # frozen
    ckpt = torch.load(out / "models" / "checkpoints" / "checkpoint_epoch=1.pt", weights_only=True)
    optimised = sum(len(g["params"]) for g in ckpt["optimizer"]["param_groups"])
    trainable = [k for k in ckpt["network"] if not k.startswith("gene_encoder.")]  # GiMP has no buffers
    assert optimised == len(trainable)  # GroupMSA is not in the optimiser
    assert final["input_contract"]["expression"]["features"][:1] == ["GENE00000"]  # stats handed on downstream
    proc = run_bundle(CFG["gimp"]["train"], *TINY_GIMP, *_data_args(demo), "--epochs", "2", "--subsequence_length",
                      "32", "--gene_encoder_ckpt", str(groupmsa_run / "models" / "model.pt"),
                      *run_dirs(out / "models", out / "logs"))  # fmt: skip
    assert "resumed from" in proc.stdout + proc.stderr and "checkpoint_epoch=1.pt" in proc.stdout + proc.stderr
    assert (out / "models" / "checkpoints" / "checkpoint_epoch=2.pt").is_file()
    # the pre-training bundle's inference: one CLS_pat (2 x 32 values) per test patient
    run_bundle(CFG["gimp"]["inference"], *TINY_GIMP, *_data_args(demo), *run_dirs(out / "models", out / "inf"))
    rows = list(csv.reader((out / "inf" / "embeddings.csv").open()))
    assert len(rows) == len(json.loads((demo / "datalist.json").read_text())["testing"]) and len(rows[0]) == 65


@pytest.mark.slow
def test_gimp_refuses_to_start_without_the_groupmsa_checkpoint(demo, tmp_path):
    cmd = bundle_command(CFG["gimp"]["train"], *TINY_GIMP, *_data_args(demo), "--epochs", "1",
                         "--gene_encoder_ckpt", str(tmp_path / "absent.pt"), *run_dirs(tmp_path / "m", tmp_path / "l"))  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "the frozen GroupMSA gene encoder checkpoint" in proc.stderr + proc.stdout and "gimp_groupmsa" in proc.stderr
    assert not (tmp_path / "m" / "checkpoints").exists()


@pytest.mark.slow
def test_gimp_multi_gpu_runs_ddp_with_variable_length_bags(demo, groupmsa_run, tmp_path):
    proc = run_bundle([CFG["gimp"]["train"], CFG["gimp"]["multi_gpu_train"]], *TINY_GIMP, *_data_args(demo),
                      "--epochs", "1", "--batch_size", "2", "--subsequence_length", "32",
                      "--gene_encoder_ckpt", str(groupmsa_run / "models" / "model.pt"),
                      *run_dirs(tmp_path / "models", tmp_path / "logs"), torchrun=2)  # fmt: skip
    assert "DDP replicas identical after iteration" in proc.stdout + proc.stderr
    assert (tmp_path / "models" / "model.pt").is_file()


@pytest.mark.slow
def test_groupmsa_multi_gpu_keeps_the_replicas_identical(demo, tmp_path):
    proc = run_bundle([CFG["gimp_groupmsa"]["train"], CFG["gimp_groupmsa"]["multi_gpu_train"]], *TINY_GROUPMSA,
                      *_data_args(demo), "--epochs", "1", "--batch_size", "2",
                      *run_dirs(tmp_path / "models", tmp_path / "logs"), torchrun=2)  # fmt: skip
    assert "DDP replicas identical after iteration" in proc.stdout + proc.stderr
    assert (tmp_path / "models" / "model.pt").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("wsi_only", [False, True])
def test_nsclc_multi_gpu_fine_tunes_variable_length_bags_with_identical_replicas(demo, gimp_run, tmp_path, wsi_only):
    out, _ = gimp_run
    proc = run_bundle([CFG["gimp_nsclc"]["train"], CFG["gimp_nsclc"]["multi_gpu_train"]], *TINY_GIMP,
                      *_data_args(demo), "--epochs", "1", "--batch_size", "2", "--wsi_only", str(wsi_only),
                      *([] if wsi_only else ["--pretrained_ckpt", str(out / "models" / "model.pt")]),
                      *run_dirs(tmp_path / "models", tmp_path / "logs"), torchrun=2)  # fmt: skip
    assert "DDP replicas identical after iteration" in proc.stdout + proc.stderr
    tuned = torch.load(tmp_path / "models" / ("model_wsi_only.pt" if wsi_only else "model.pt"), weights_only=True)
    assert any(k.startswith("head.") for k in tuned)
    assert any(k.startswith("gene_encoder.") for k in tuned) != wsi_only


@pytest.mark.slow
def test_nsclc_fine_tunes_from_gimp_evaluates_and_infers(demo, gimp_run, tmp_path):
    out, _ = gimp_run
    args = [*TINY_GIMP, *_data_args(demo), "--pretrained_ckpt", str(out / "models" / "model.pt")]
    proc = run_bundle(CFG["gimp_nsclc"]["train"], *args, "--epochs", "1", *run_dirs(tmp_path / "m", tmp_path / "l"))
    log = proc.stdout + proc.stderr
    assert "('aggregator.*')" in log and "('gene_encoder.*')" in log and "input contract of" in log
    pretrained = torch.load(out / "models" / "model.pt", weights_only=True)
    tuned = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    genes = [k for k in tuned if k.startswith("gene_encoder.")]
    assert genes and all(torch.equal(tuned[k], pretrained[k]) for k in genes)  # GroupMSA stays frozen
    assert any(k.startswith("head.") for k in tuned)
    run_bundle([CFG["gimp_nsclc"]["train"], CFG["gimp_nsclc"]["evaluate"]], *args,
               *run_dirs(tmp_path / "m", tmp_path / "eval"))  # fmt: skip
    metrics = {k: float(v) for k, v in csv.reader((tmp_path / "eval" / "metrics.csv").open())}
    assert set(metrics) == {"val_auc", "val_acc"}
    # inference on "new patients": a CLAM CSV without labels, every case of it
    new = tmp_path / "new.csv"
    with open(demo / "clam.csv") as f:
        rows = list(csv.reader(f))
    with open(new, "w", newline="") as f:
        csv.writer(f).writerows([rows[0], *[[c, s, ""] for c, s, _ in rows[1:4]]])
    run_bundle([CFG["gimp_nsclc"]["train"], CFG["gimp_nsclc"]["inference"]], *args, "--csv", str(new),
               "--splits_csv", "", *run_dirs(tmp_path / "m", tmp_path / "inf"))  # fmt: skip
    pred = list(csv.reader((tmp_path / "inf" / "predictions.csv").open()))
    assert sorted(r[0] for r in pred) == sorted({c for c, _, _ in rows[1:4]})
    assert all(sum(map(float, r[2:])) == pytest.approx(1, abs=1e-5) for r in pred)


@pytest.mark.slow
def test_nsclc_wsi_only_is_the_aggregator_alone(demo, tmp_path):
    run_bundle(CFG["gimp_nsclc"]["train"], *TINY_WSI, *_data_args(demo), "--wsi_only", "true", "--epochs", "1",
               *run_dirs(tmp_path / "m", tmp_path / "l"))  # fmt: skip
    tuned = torch.load(tmp_path / "m" / "model_wsi_only.pt", weights_only=True)
    assert not any(k.startswith("gene_encoder.") for k in tuned) and any(k.startswith("aggregator.") for k in tuned)
    assert tuned["head.0.weight"].shape[1] == 32  # CLS_img alone, not CLS_pat


@pytest.mark.slow
def test_bad_input_stops_the_run_before_the_first_step(demo, tmp_path):
    root, bad = _broken_copy(demo, tmp_path)
    cmd = bundle_command(CFG["gimp_nsclc"]["train"], *TINY_WSI, *_data_args(root), "--wsi_only", "true",
                         *run_dirs(tmp_path / "m", tmp_path / "l"))  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "data error(s), fix them before training" in text
    assert all(case in text for key, case in bad.items() if key != "no_expr")  # WSI-only: expression not read
    assert "Epoch: 1/" not in text and not (tmp_path / "m" / "checkpoints").exists()


def test_the_classifier_traces_to_torchscript_for_any_bag_length(tmp_path):
    """MONAI's ckpt_export traces one input tensor; GiMPClassifier takes a bag and an expression vector (its
    ``GroupMSA | None`` attribute does not script), so it is exported with ``torch.jit.trace`` on both inputs.
    A batch-1 trace (no padding, no lengths) stays exact for other bag lengths: the PPEG grid is recomputed."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / CFG["gimp_nsclc"]["train"]))
    parser.update({"feature_dim": 16, "hidden_size": 32, "heads": 4, "num_landmarks": 8, "fragment_length": 8,
                   "num_groups": 2, "gene_num_heads": 4, "num_genes": 40})  # fmt: skip
    net = parser.get_parsed_content("network_def").eval()
    bag, expr = torch.randn(1, 50, 16), torch.randn(1, 40)
    with torch.no_grad():
        traced = torch.jit.trace(net, (bag, expr), check_trace=False)
    traced.save(str(tmp_path / "model.ts"))
    loaded = torch.jit.load(str(tmp_path / "model.ts"))
    for n in (50, 83, 400):
        x = torch.randn(1, n, 16)
        with torch.no_grad():
            assert torch.allclose(loaded(x, expr), net(x, expr), atol=1e-5)


@pytest.mark.parametrize("name", sorted(CFG))
def test_a_packaged_bundle_carries_its_helpers(name):
    import sys

    sys.path.insert(0, str(REPO / "tools"))
    import package_bundle

    files = {p.relative_to(REPO).as_posix() for p in package_bundle.common_closure(REPO / "bundles" / name / "configs")}
    need = {"common/data/gimp_data.py", "common/data/demo_gimp.py", "common/data/expression.py",
            "common/data/wsi_features.py", "common/networks/groupmsa.py", "common/engines/checkpoint.py"}  # fmt: skip
    if name != "gimp_groupmsa":
        need |= {"common/networks/nystrom.py", "common/networks/gimp.py", "common/losses/gimp.py"}
    if name == "gimp_nsclc":
        need |= {"common/engines/gimp.py", "common/engines/classification.py"}
    assert need <= files
