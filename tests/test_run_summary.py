"""The first lines of a run say what it will do (issue 17.4)."""

from __future__ import annotations

import torch

from common.engines.summary import run_summary


def test_summary_names_data_network_schedule_paths_and_resume(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    net[1].requires_grad_(False)
    lines = run_summary(
        net, [1, 2, 3], 5, "cpu", str(tmp_path / "m"), str(tmp_path / "logs"), "/data/BraTS", iterations=2
    )
    assert lines == [
        "training: 3 case(s) from dataset_dir /data/BraTS",
        "network: Sequential, 21 parameters (16 trainable), on cpu",
        "schedule: 5 epoch(s) of 2 iteration(s)",
        f"checkpoints: {tmp_path / 'm'}; logs (TensorBoard): {tmp_path / 'logs'}",
        f"this run starts fresh (no checkpoint in {tmp_path / 'm' / 'checkpoints'})",
    ]
    (tmp_path / "m" / "checkpoints").mkdir(parents=True)
    for e in (2, 10, 9):
        (tmp_path / "m" / "checkpoints" / f"checkpoint_epoch={e}.pt").write_bytes(b"")
    last = run_summary(torch.nn.DataParallel(net), [1], 1, "cpu", str(tmp_path / "m"), datalist="dl.json")
    assert last[0] == "training: 1 case(s) from datalist dl.json" and last[1].startswith("network: Sequential, 21")
    assert last[-1].startswith(f"this run resumes from {tmp_path / 'm' / 'checkpoints' / 'checkpoint_epoch=10.pt'}")
    demo = run_summary(net, [], 1, "cpu")
    assert demo[0].startswith("training: 0 case(s) from the embedded demo set") and len(demo) == 3
