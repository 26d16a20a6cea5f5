"""tools/benchmark.py: a row per training bundle, a report with the same-run matmul figure, exponent fits.

Behaviour only: no timing is asserted (speed belongs in docs/BENCHMARKS.md, never in a test).
"""

import subprocess
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
import benchmark  # noqa: E402


def test_every_training_bundle_has_a_benchmark_row():
    bundles = sorted(p.parent.parent.name for p in (REPO / "bundles").glob("*/configs/train.json"))
    for name in bundles:
        assert any(case == name or case.startswith(name + "_") for case in benchmark.CASES), name


@pytest.mark.parametrize("exponent", [0.5, 1.0, 3.0])
def test_slope_recovers_a_power_law(exponent):
    x = [64, 96, 128]
    assert benchmark._slope(x, [2.0 * v**exponent for v in x]) == pytest.approx(exponent)


def test_a_small_run_reports_every_column_and_appends_to_the_output_file(tmp_path):
    out = tmp_path / "bench.md"
    out.write_text("# kept\n")
    # a fresh process, as users run it: the tool forks per case, which a process with a busy OpenMP pool cannot
    cmd = [sys.executable, "tools/benchmark.py", "--cases", "m2mae", "--repeats", "1", "--output", str(out)]
    report = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True, timeout=600).stdout
    report = report[report.index("| case |") :]
    header, rule, row = report.strip().splitlines()[:3]
    assert header.split("|")[1:-1] == [
        " case ", " shape ", " step (s) ", " samples/s ", " GFLOP/step ", " GFLOP/s ", " / matmul ",
        " peak RSS (GiB) ", " masking share ",
    ]  # fmt: skip
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[0] == "m2mae" and cells[1].startswith("2x4x32^3")
    assert float(cells[2]) > 0 and float(cells[4]) > 0 and cells[6].endswith("%")
    assert "fp32 matmul throughput in the same run" in report
    text = out.read_text()
    assert text.startswith("# kept\n") and report.strip() in text and "Machine:" in text


def test_a_failing_case_is_reported_with_its_name_not_hung(monkeypatch):
    def broken(**kwargs):
        raise MemoryError("no room")

    monkeypatch.setitem(benchmark.CASES, "broken_case", broken)
    with pytest.raises(RuntimeError, match="broken_case .*MemoryError: no room"):
        benchmark.measure_isolated("broken_case", {"shape": "small"}, repeats=1, peak=1.0)
