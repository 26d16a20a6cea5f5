"""The classification metrics the cls bundles report, against hand-computed values on fixed predictions."""

import pytest
import torch
from ignite.engine import Engine
from ignite.metrics import Accuracy, Fbeta
from monai.handlers import ROCAUC

from common.engines.metrics import class_scores


def _run(metric, name, outputs):
    engine = Engine(lambda e, batch: batch)
    metric.attach(engine, name)
    return engine.run([outputs], max_epochs=1).metrics[name]


# 3 classes, 6 cases: predicted classes 0,1,2,2,1,0 ; true 0,1,2,1,1,2
PROBS = torch.tensor(
    [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.7], [0.2, 0.3, 0.5], [0.3, 0.6, 0.1], [0.5, 0.1, 0.4]]
)
TRUE = [0, 1, 2, 1, 1, 2]
ITEMS = [{"pred": p, "label": torch.nn.functional.one_hot(torch.tensor(t), 3).float()} for p, t in zip(PROBS, TRUE)]


def test_accuracy_is_the_true_multiclass_accuracy():
    assert _run(Accuracy(output_transform=class_scores()), "acc", ITEMS) == pytest.approx(4 / 6)


def test_macro_f1_by_hand():
    # class 0: tp 1, fp 1, fn 0 -> P 1/2 R 1 F 2/3; class 1: tp 2, fp 0, fn 1 -> P 1 R 2/3 F 4/5;
    # class 2: tp 1, fp 1, fn 1 -> P 1/2 R 1/2 F 1/2
    expected = (2 / 3 + 4 / 5 + 1 / 2) / 3
    assert _run(Fbeta(beta=1.0, average=True, output_transform=class_scores()), "f1", ITEMS) == pytest.approx(expected)


def test_binary_auc_by_hand():
    # positives scores 0.9, 0.4 ; negatives 0.3, 0.5 -> pairs won: (0.9>0.3, 0.9>0.5, 0.4>0.3, 0.4<0.5) = 3/4
    scores = [0.9, 0.4, 0.3, 0.5]
    labels = [1, 1, 0, 0]
    items = [
        {"pred": torch.tensor([1 - s, s]), "label": torch.nn.functional.one_hot(torch.tensor(t), 2).float()}
        for s, t in zip(scores, labels)
    ]
    metric = ROCAUC(output_transform=lambda out: ([i["pred"] for i in out], [i["label"] for i in out]))
    assert _run(metric, "auc", items) == pytest.approx(0.75)
