"""tools/reference_benchmark.py against a stand-in "reference checkout" built in tmp_path (no public code needed).

The stand-in has the public BrainMVP ``RecModel``'s constructor and ``forward`` signature and asserts the inputs the
tool builds for it. Behaviour only: no timing is asserted.
"""

import re
import subprocess
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
import reference_benchmark  # noqa: E402

FAKE_OPS = 'mapping = {"t1": "t1", "t1ce": "t1c", "t2": "t2", "flair": "flair"}\n'
FAKE_UNIFORMER = """
from pathlib import Path

import torch
from torch import nn

from utils.ops import mapping


class RecModel(nn.Module):
    def __init__(self, args, dim=768):
        super().__init__()
        Path(__file__).with_name("constructed").write_text(f"{args.in_channels} {args.roi_x} {dim}")
        self.conv = nn.Conv3d(args.in_channels, 2, 3, padding=1)
        self.rep_template = nn.Parameter(torch.zeros(len(args.template_index), 2, 2, 2))

    def forward(self, x, clip_text_feat=None, ret_med=False, args=None, index=-1, rep_start_point=-1,
                rearranged_series=None, cur_epoch=-1, series_name=None):
        b, m = x.shape[:2]
        assert cur_epoch >= args.start_epoch, "contrastive term off"
        assert tuple(rep_start_point.shape) == (b, 3) and len(series_name) == b and len(rearranged_series) == m
        template = self.rep_template[args.template_index.index(mapping[rearranged_series[index].split(",")[0]])]
        loss = self.conv(x[:, index : index + 1]).square().mean() + template.mean()
        return loss, loss.item(), 0.0, 0.0
"""


def _fake_checkout(root):
    (root / "models").mkdir(parents=True)
    (root / "utils").mkdir()
    (root / "models" / "Uniformer.py").write_text(FAKE_UNIFORMER)
    (root / "utils" / "ops.py").write_text(FAKE_OPS)
    return root


def test_times_the_checkout_beside_ours_and_reports_both_rows_and_ratios(tmp_path):
    ref = _fake_checkout(tmp_path / "BrainMVP")
    out = tmp_path / "bench.md"
    out.write_text("# kept\n")
    # a fresh process, as users run it: the tool forks per side, which a process with a busy OpenMP pool cannot
    cmd = [sys.executable, "tools/reference_benchmark.py", "--brainmvp_dir", str(ref), "--batch", "1",
           "--edge", "32", "--shape", "small", "--output", str(out)]  # fmt: skip
    report = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True, timeout=300).stdout
    assert (ref / "models" / "constructed").read_text() == "1 32 512"  # built from the given path, as main.py
    report = report[report.index("| method |") :]
    header, _, ref_row, *our_rows = report.strip().splitlines()[:6]
    assert header.split("|")[-3:-1] == [" time ref / ours ", " memory ref / ours "]
    ref_cells = [c.strip() for c in ref_row.split("|")[1:-1]]
    assert ref_cells[:2] == ["BrainMVP", "public reference"] and ref_cells[2].startswith("1x1x32^3 RecModel")
    assert float(ref_cells[3]) > 0 and ref_cells[-2:] == ["-", "-"]
    cases = ["brainmvp_uniformer", "brainmvp_uniformer_official", "brainmvp_uniformer_official_ckpt"]
    for case, row in zip(cases, our_rows, strict=True):
        our_cells = [c.strip() for c in row.split("|")[1:-1]]
        assert our_cells[:2] == ["BrainMVP", f"this collection ({case})"] and our_cells[2].startswith("1x1x32^3")
        assert float(our_cells[3]) > 0 and float(our_cells[4]) > 0
        assert all(re.fullmatch(r"\d+\.\d\dx", c) for c in our_cells[-2:])
        time_ratio = float(our_cells[-2][:-1])
        # the cells are rounded to 3 decimals (and the ratio to 2): the ratio of the unrounded times lies between
        # the ratios of the cells' rounding bounds
        ref_s, ours_s, half = float(ref_cells[3]), float(our_cells[3]), 0.0005
        low, high = (ref_s - half) / (ours_s + half), (ref_s + half) / max(ours_s - half, 1e-9)
        assert low - 0.005 <= time_ratio <= high + 0.005, (time_ratio, low, high)
    text = out.read_text()
    assert text.startswith("# kept\n") and report.strip() in text and "python tools/reference_benchmark.py" in text


def test_a_directory_that_is_not_a_checkout_is_refused_by_name(tmp_path):
    (tmp_path / "models").mkdir()
    with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path))} is not a checkout .*models/Uniformer\.py"):
        reference_benchmark.run(brainmvp_dir=str(tmp_path), write=False)
    with pytest.raises(ValueError, match="no such directory"):
        reference_benchmark.run(brainmvp_dir=str(tmp_path / "absent"), write=False)


def test_inputs_follow_main_py():
    args = reference_benchmark.brainmvp_args(96)
    x, kwargs = reference_benchmark.brainmvp_inputs(args, batch=2, edge=96)
    assert x.shape == (2, 4, 96, 96, 96) and kwargs["cur_epoch"] >= args.start_epoch
    assert kwargs["series_name"] == ["t1,t1ce,t2,flair"] * 2
    assert kwargs["rearranged_series"] == ["t1,t1", "t1ce,t1ce", "t2,t2", "flair,flair"]
    start = kwargs["rep_start_point"].long()
    assert (start >= 0).all() and (start + 96 <= start.new_tensor([args.dst_h, args.dst_w, args.dst_d])).all()
