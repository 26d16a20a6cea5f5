"""Task metrics of the 2D transfer bundles against hand-computed values: QWK on a 5x5 confusion matrix, the
confusion matrix CSV/PNG, multi-label AUC with a constant column, one-vs-rest macro AUC, MSE after
de-standardisation, Dice on a 4x4 mask; and their use inside a MONAI evaluator."""

import csv
import logging

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from PIL import Image

from common.engines.metrics import (
    ClassConfusion,
    ConfusionMatrixSaver,
    PerLabelROCAUC,
    PerTargetMSE,
    QuadraticWeightedKappa,
    confusion_matrix,
    dice_per_structure,
    quadratic_weighted_kappa,
    save_confusion_matrix,
    stacked,
)
from common.networks.transfer2d import TransferViT2D


def _run(metrics: dict, batches: list, handlers=()) -> dict:
    engine = Engine(lambda e, batch: batch)
    for name, metric in metrics.items():
        metric.attach(engine, name)
    for handler in handlers:
        handler.attach(engine)
    return engine.run(batches, max_epochs=1).metrics


def _items(pred, label) -> list[dict]:
    return [{"pred": torch.as_tensor(p), "label": torch.as_tensor(t)} for p, t in zip(pred, label)]


# ---- quadratic weighted kappa and the confusion matrix ---------------------------------------------------------

# 10 cases, 5 grades; every true grade twice
TRUE = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
PRED = [0, 1, 1, 1, 2, 3, 3, 2, 4, 2]
CM = [
    [1, 1, 0, 0, 0],
    [0, 2, 0, 0, 0],
    [0, 0, 1, 1, 0],
    [0, 0, 1, 1, 0],
    [0, 0, 1, 0, 1],
]


def _one_hot_scores(classes, k=5):
    return torch.nn.functional.one_hot(torch.tensor(classes), k).float() * 0.8 + 0.04


def test_confusion_matrix_rows_are_true_classes():
    assert confusion_matrix(torch.tensor(PRED), torch.tensor(TRUE), 5).tolist() == CM
    # scores (argmax) and one-hot labels give the same counts
    onehot = torch.nn.functional.one_hot(torch.tensor(TRUE), 5)
    assert confusion_matrix(_one_hot_scores(PRED), onehot, 5).tolist() == CM
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.tensor([0, 5]), torch.tensor([0, 1]), 5)
    for bad_label in (5, -1):  # labels out of range, not only predictions
        with pytest.raises(ValueError, match=rf"labels \[{bad_label}\]"):
            confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, bad_label]), 5)
    with pytest.raises(ValueError, match="3 predictions but 2 labels"):
        confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 1]), 5)
    # two classes from scores: argmax of each row
    assert confusion_matrix(torch.tensor([[0.9, 0.1], [0.3, 0.7]]), torch.tensor([1, 1]), 2).tolist() == [
        [0, 0],
        [1, 1],
    ]


def test_qwk_on_a_5x5_confusion_matrix_by_hand():
    # W_ij = (i-j)^2 / 16. sum W*O: cells (0,1), (2,3), (3,2) weigh 1/16, cell (4,2) 4/16 -> 7/16.
    # row totals all 2, column totals (1, 3, 3, 2, 1), N = 10: E_ij = 2 c_j / 10.
    # sum_i (i-j)^2 over i = 30, 15, 10, 15, 30 for j = 0..4 -> sum W*E = (30 + 45 + 30 + 30 + 30) / 80 = 165/80
    # kappa = 1 - (7/16) / (165/80) = 1 - 7/33 = 26/33
    assert quadratic_weighted_kappa(torch.tensor(CM)) == pytest.approx(26 / 33, abs=1e-12)
    assert quadratic_weighted_kappa(torch.eye(5) * 3) == pytest.approx(1.0)
    assert np.isnan(quadratic_weighted_kappa(torch.tensor([[4, 0], [0, 0]])))  # one class, all right: undefined
    # one case, class 0 predicted 1: O = E = [[0, 1], [0, 0]] -> 1 - 1/1 = 0
    assert quadratic_weighted_kappa(torch.tensor([[0, 1], [0, 0]])) == pytest.approx(0.0)


def test_qwk_metric_accumulates_over_batches_from_decollated_items():
    from ignite.metrics import Accuracy

    from common.engines.metrics import class_scores

    items = _items(_one_hot_scores(PRED), torch.nn.functional.one_hot(torch.tensor(TRUE), 5).float())
    out = _run({"qwk": QuadraticWeightedKappa(5), "acc": Accuracy(class_scores())}, [items[:4], items[4:]])
    assert out["qwk"] == pytest.approx(26 / 33, abs=1e-9)
    assert out["acc"] == pytest.approx(6 / 10)  # the diagonal of CM: 1 + 2 + 1 + 1 + 1


def test_confusion_matrix_csv_and_png(tmp_path):
    names = ["no DR", "mild", "moderate", "severe", "proliferative"]
    save_confusion_matrix(torch.tensor(CM), names, str(tmp_path / "cm.csv"), str(tmp_path / "cm.png"))
    rows = list(csv.reader(open(tmp_path / "cm.csv")))
    assert rows[0] == ["true \\ predicted", *names]
    assert [r[0] for r in rows[1:]] == names
    assert [[int(v) for v in r[1:]] for r in rows[1:]] == CM
    with Image.open(tmp_path / "cm.png") as png:
        assert png.format == "PNG" and min(png.size) > 100
    with pytest.raises(ValueError, match="5 class names"):
        save_confusion_matrix(torch.zeros(3, 3), names, str(tmp_path / "x.csv"))


def test_confusion_matrix_saver_writes_after_each_evaluation(tmp_path):
    items = _items(_one_hot_scores(PRED), torch.tensor(TRUE))  # index labels work too
    saver = ConfusionMatrixSaver(str(tmp_path / "eval"), [str(c) for c in range(5)], prefix="val_")
    _run({}, [items[:3], items[3:]], handlers=[saver])
    rows = list(csv.reader(open(tmp_path / "eval" / "val_confusion_matrix.csv")))
    assert [[int(v) for v in r[1:]] for r in rows[1:]] == CM
    assert (tmp_path / "eval" / "val_confusion_matrix.png").is_file()
    assert ClassConfusion(5).num_classes == 5


# ---- ROC-AUC ----------------------------------------------------------------------------------------------------

# 4 cases x 3 labels; label B is all 0 in this split (RFMiD's rare diseases)
ML_SCORES = [[0.9, 0.5, 0.2], [0.8, 0.4, 0.6], [0.3, 0.7, 0.6], [0.1, 0.2, 0.1]]
ML_LABELS = [[1, 0, 1], [0, 0, 1], [1, 0, 0], [0, 0, 0]]


def test_multilabel_auc_reports_and_excludes_a_constant_label(caplog):
    # A: positives 0.9, 0.3 vs negatives 0.8, 0.1: pairs won 1 + 1 + 0 + 1 -> 3/4
    # C: positives 0.2, 0.6 vs negatives 0.6, 0.1: 0 + 1 + tie 0.5 + 1 -> 2.5/4
    metric = PerLabelROCAUC(label_names=["A", "B", "C"])
    with caplog.at_level(logging.WARNING):
        out = _run({"val_auc": metric}, [_items(ML_SCORES[:2], ML_LABELS[:2]), _items(ML_SCORES[2:], ML_LABELS[2:])])
    assert out["val_auc_A"] == pytest.approx(0.75)
    assert np.isnan(out["val_auc_B"])
    assert out["val_auc_C"] == pytest.approx(0.625)
    assert out["val_auc"] == pytest.approx((0.75 + 0.625) / 2)
    assert out["val_auc_labels_used"] == 2
    assert metric.excluded == ["B"]
    assert "['B']" in caplog.text and "excluded from the mean" in caplog.text


def test_auc_skips_unknown_labels_and_scores_only_binary_targets():
    # channels: age (continuous: ignored), sex, smoking; smoking unknown for case 2
    pred = [[50.0, 0.9, 0.3], [70.0, 0.2, 0.8], [60.0, 0.6, 0.1], [55.0, 0.4, 0.5]]
    label = [[52.0, 1, 0], [71.0, 0, float("nan")], [58.0, 0, 0], [54.0, 1, 1]]
    # sex: positives 0.9, 0.4 vs negatives 0.2, 0.6 -> 1 + 1 + 1 + 0 = 3/4; smoking: positive 0.5 vs 0.3, 0.1 -> 1
    metric = PerLabelROCAUC(targets={"age": "continuous", "sex": "binary", "smoking": "binary"})
    out = _run({"auc": metric}, [_items(pred, label)])
    assert out["auc_sex"] == pytest.approx(0.75) and out["auc_smoking"] == pytest.approx(1.0)
    assert "auc_age" not in out
    assert out["auc"] == pytest.approx(0.875)


def test_multiclass_one_vs_rest_macro_auc_by_hand():
    probs = [[0.7, 0.2, 0.1], [0.4, 0.3, 0.3], [0.2, 0.6, 0.2], [0.5, 0.3, 0.2], [0.1, 0.3, 0.6], [0.3, 0.1, 0.6]]
    grades = [0, 0, 1, 1, 2, 2]  # WHO II, III, IV as class indices
    # II: 0.7 beats all 4 negatives, 0.4 beats 3 of 4 (not 0.5) -> 7/8
    # III: 0.6 beats all 4; 0.3 vs 0.2, 0.3, 0.3, 0.1 -> 1 + 0.5 + 0.5 + 1 = 3 -> 7/8
    # IV: 0.6, 0.6 beat every negative (0.1, 0.3, 0.2, 0.2) -> 1
    out = _run({"auc": PerLabelROCAUC(label_names=["II", "III", "IV"])}, [_items(probs, grades)])
    assert [out[f"auc_{g}"] for g in ("II", "III", "IV")] == pytest.approx([7 / 8, 7 / 8, 1.0])
    assert out["auc"] == pytest.approx((7 / 8 + 7 / 8 + 1) / 3)


def test_auc_refuses_a_wrong_number_of_channels():
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        _run({"auc": PerLabelROCAUC(label_names=["A", "B", "C"])}, [_items([[0.1, 0.2]] * 2, [[0, 1]] * 2)])
    with pytest.raises(ValueError, match="either label_names"):
        PerLabelROCAUC()


# ---- MSE in the targets' own units ---------------------------------------------------------------------------

CRP = {"age": "continuous", "sbp": "continuous", "sex": "binary"}
STATS = {"age": {"mean": 60.0, "std": 8.0}, "sbp": {"mean": 130.0, "std": 20.0}}


def test_mse_after_de_standardisation_by_hand():
    net = TransferViT2D(
        targets=CRP, target_stats=STATS, img_size=32, hidden_size=16, mlp_dim=32, num_layers=1, num_heads=2
    )
    with torch.no_grad():  # the head says z = (0.5, -1, 0.3) for every image
        net.head.weight.zero_()
        net.head.bias.copy_(torch.tensor([0.5, -1.0, 0.3]))
        pred = net(torch.randn(2, 3, 32, 32))  # age 60 + 8 * 0.5 = 64, sbp 130 - 20 = 110
    label = torch.tensor([[70.0, 100.0, 1.0], [62.0, float("nan"), 0.0]])
    # age: ((64 - 70)^2 + (64 - 62)^2) / 2 = 20 years^2; sbp: only case 1: (110 - 100)^2 = 100 mmHg^2
    out = _run(
        {"mse": PerTargetMSE(CRP, target_stats=STATS)}, [_items(pred[:1], label[:1]), _items(pred[1:], label[1:])]
    )
    assert out["mse_age"] == pytest.approx(20.0) and out["mse_sbp"] == pytest.approx(100.0)
    assert "mse_sex" not in out
    assert out["mse"] == pytest.approx((20 / 64 + 100 / 400) / 2)  # headline: standardised units
    plain = _run({"mse": PerTargetMSE(CRP)}, [_items(pred, label)])
    assert plain["mse"] == pytest.approx(60.0)
    with pytest.raises(KeyError, match=r"\['sbp'\]"):
        PerTargetMSE(CRP, target_stats={"age": STATS["age"]})


def test_stacked_transform_shapes():
    pred, label = stacked()(_items([[1.0, 2.0]] * 3, [[0, 1]] * 3))
    assert pred.shape == label.shape == (3, 2) and label.dtype == torch.float32
    pred, label = stacked()({"pred": torch.tensor([1.0, 2.0]), "label": torch.tensor([0, 1])})  # one item
    assert pred.shape == (1, 2)


def test_metric_argument_errors():
    from ignite.exceptions import NotComputableError

    with pytest.raises(ValueError, match=r"have no continuous target"):
        PerTargetMSE({"sex": "binary"})
    with pytest.raises(ValueError, match=r"have no binary target"):
        PerLabelROCAUC(targets={"age": "continuous"})
    with pytest.raises(NotComputableError, match="PerLabelROCAUC needs at least one case"):
        PerLabelROCAUC(label_names=["A"]).compute()


# ---- Dice per structure ---------------------------------------------------------------------------------------


def _mask(cells, size=4):
    m = torch.zeros(size, size)
    for r, c in cells:
        m[r, c] = 1
    return m


def test_dice_per_structure_on_4x4_masks_by_hand():
    # image 1: disc P = top-left 2x2, G = the 2x2 one column right: |P & G| = 2 -> 2*2/(4+4) = 0.5;
    #          atrophy absent in both -> 1 (ignore_empty=False)
    # image 2: disc P = G -> 1; atrophy P = {(3,3)}, G = {(3,3), (3,2)} -> 2*1/(1+2) = 2/3
    disc_p1, disc_g1 = _mask([(0, 0), (0, 1), (1, 0), (1, 1)]), _mask([(0, 1), (0, 2), (1, 1), (1, 2)])
    items = [
        {"pred": torch.stack([disc_p1, _mask([])]), "label": torch.stack([disc_g1, _mask([])])},
        {"pred": torch.stack([disc_g1, _mask([(3, 3)])]), "label": torch.stack([disc_g1, _mask([(3, 3), (3, 2)])])},
    ]
    out = _run(dice_per_structure(["disc", "atrophy"]), [items[:1], items[1:]])
    assert out["val_dice_disc"] == pytest.approx(0.75)
    assert out["val_dice_atrophy"] == pytest.approx((1 + 2 / 3) / 2)
    ignoring = _run(dice_per_structure(["disc", "atrophy"], prefix="d", ignore_empty=True), [items])
    assert ignoring["d_atrophy"] == pytest.approx(2 / 3)
    false_positive = [{"pred": _mask([(0, 0)])[None], "label": _mask([])[None]}]
    assert _run(dice_per_structure(["atrophy"]), [false_positive])["val_dice_atrophy"] == 0.0


# ---- inside a MONAI evaluator ---------------------------------------------------------------------------------


def test_metrics_run_in_a_monai_evaluator_and_metrics_saver_reports_them_by_name(tmp_path):
    from monai.engines import SupervisedEvaluator
    from monai.handlers import MetricsSaver

    class Scores(torch.nn.Module):  # the "image" already holds the scores
        def forward(self, x):
            return x

    data = [
        {"image": torch.tensor(s), "label": torch.tensor(t, dtype=torch.float32)} for s, t in zip(ML_SCORES, ML_LABELS)
    ]
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=Scores(),
        key_val_metric={"val_auc": PerLabelROCAUC(label_names=["A", "B", "C"])},
        additional_metrics={"val_mse": PerTargetMSE(label_names=["A", "B", "C"])},
        val_handlers=[MetricsSaver(save_dir=str(tmp_path), metrics="*")],
    )
    evaluator.run()
    assert evaluator.state.best_metric == pytest.approx(0.6875)
    saved = dict(csv.reader(open(tmp_path / "metrics.csv")))
    for name in ("val_auc", "val_auc_A", "val_auc_B", "val_auc_C", "val_auc_labels_used", "val_mse_A"):
        assert name in saved
    assert float(saved["val_auc_A"]) == pytest.approx(0.75)


# ---- DDP: state summed / gathered across ranks -----------------------------------------------------------------


def _ddp_worker(rank: int, world: int, port: int, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        half = slice(0, 1) if rank == 0 else slice(1, 4)  # the ranks hold different numbers of cases
        qwk_half = slice(0, 3) if rank == 0 else slice(3, 10)
        out = _run(
            {
                "auc": PerLabelROCAUC(label_names=["A", "B", "C"]),
                "mse": PerTargetMSE(label_names=["A", "B", "C"]),
            },
            [_items(ML_SCORES[half], ML_LABELS[half])],
        )
        qwk = _run(
            {"qwk": QuadraticWeightedKappa(5)}, [_items(_one_hot_scores(PRED[qwk_half]), torch.tensor(TRUE[qwk_half]))]
        )
        queue.put((rank, out["auc"], out["mse_A"], qwk["qwk"]))
    finally:
        dist.destroy_process_group()


def test_metrics_combine_all_ranks_under_ddp():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")  # no re-import of torch and MONAI in the workers
    queue = ctx.Queue()
    mp.start_processes(_ddp_worker, args=(2, port, queue), nprocs=2, join=True, start_method="fork")
    results = sorted(queue.get(timeout=30) for _ in range(2))
    mse_a = float(np.mean((np.array(ML_SCORES)[:, 0] - np.array(ML_LABELS)[:, 0]) ** 2))
    for _, auc, mse, qwk in results:  # every rank reports the whole split's values
        assert auc == pytest.approx(0.6875)
        assert mse == pytest.approx(mse_a)
        assert qwk == pytest.approx(26 / 33)


def test_auc_of_one_binary_channel_two_classes_and_a_batch_missing_a_class():
    # one channel, labels [B]: sex scores 0.9, 0.4 positive vs 0.2, 0.6 negative -> 3/4
    single = _run({"auc": PerLabelROCAUC(label_names=["sex"])}, [_items([[0.9], [0.2], [0.6], [0.4]], [1, 0, 0, 1])])
    assert single["auc"] == pytest.approx(0.75)
    # two classes with index labels: class 1 scores 0.8, 0.3 vs 0.4, 0.1 -> 3/4, and class 0 the mirror -> 3/4
    two = [[0.2, 0.8], [0.6, 0.4], [0.7, 0.3], [0.9, 0.1]]
    out = _run({"auc": PerLabelROCAUC(label_names=["a", "b"])}, [_items(two, [1, 0, 1, 0])])
    assert out["auc_b"] == pytest.approx(0.75) and out["auc_a"] == pytest.approx(0.75)
    # the first batch holds no grade IV: its one-hot labels still have 3 columns
    probs = [[0.7, 0.2, 0.1], [0.4, 0.3, 0.3], [0.2, 0.6, 0.2], [0.5, 0.3, 0.2], [0.1, 0.3, 0.6], [0.3, 0.1, 0.6]]
    items = _items(probs, [0, 0, 1, 1, 2, 2])
    assert _run({"auc": PerLabelROCAUC(label_names=["II", "III", "IV"])}, [items[:4], items[4:]])["auc_IV"] == 1.0


def test_auc_with_no_usable_label_is_nan_and_monai_never_warns(caplog):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = _run(
            {"auc": PerLabelROCAUC(label_names=["A", "B"])}, [_items([[0.1, 0.2], [0.3, 0.4]], [[0, 1], [0, 1]])]
        )
    assert np.isnan(out["auc"]) and out["auc_labels_used"] == 0
    assert not [w for w in caught if "AUC" in str(w.message)]  # reported once, by our warning only


def test_dice_reads_other_keys():
    item = [{"seg": _mask([(0, 0), (0, 1)])[None], "gt": _mask([(0, 0)])[None]}]
    out = _run(dice_per_structure(["disc"], pred_key="seg", label_key="gt"), [item])
    assert out["val_dice_disc"] == pytest.approx(2 * 1 / (2 + 1))


def test_per_case_metric_columns_take_the_region_names(tmp_path):
    from common.engines.metrics import name_metric_columns

    (tmp_path / "val_mean_dice_raw.csv").write_text("filename,class0,class1,class2,mean\nS1,0.1,0.2,0.3,0.2\n")
    (tmp_path / "val_dice_tc_raw.csv").write_text("filename\tclass0\tmean\nS1\t0.1\t0.1\n")
    (tmp_path / "val_two_raw.csv").write_text("filename,class0,class1,mean\nS1,1,2,1.5\n")
    (tmp_path / "metrics.csv").write_text("val_mean_dice,0.2\n")
    done = name_metric_columns(str(tmp_path), ["TC", "WT", "ET"])
    assert (tmp_path / "val_mean_dice_raw.csv").read_text() == "filename,TC,WT,ET,mean\nS1,0.1,0.2,0.3,0.2\n"
    assert (tmp_path / "val_dice_tc_raw.csv").read_text() == "filename\tvalue\tmean\nS1\t0.1\t0.1\n"
    assert (tmp_path / "val_two_raw.csv").read_text().startswith("filename,class0,class1,mean")  # 2 of 3: kept
    assert sorted(p.split("/")[-1] for p in done) == ["val_dice_tc_raw.csv", "val_mean_dice_raw.csv"]


def test_named_metrics_saver_renames_after_monais_writer(tmp_path):
    """Through ignite: MONAI's saver writes class0/1/2 at EPOCH_COMPLETED, ours renames them right after."""
    from common.engines.metrics import NamedMetricsSaver

    engine = Engine(lambda e, b: None)
    saver = NamedMetricsSaver(str(tmp_path), metric_details="*", class_labels=["TC", "WT", "ET"],
                              batch_transform=lambda batch: [{"filename_or_obj": "S1"}])  # fmt: skip

    @engine.on(Events.ITERATION_COMPLETED)
    def _details(e):
        e.state.metric_details = {"val_mean_dice": torch.tensor([[0.1, 0.2, 0.3]])}

    saver.attach(engine)
    engine.run([0], max_epochs=1)
    assert (tmp_path / "val_mean_dice_raw.csv").read_text().splitlines()[0] == "filename,TC,WT,ET,mean"
