"""Mutation testing of the method code in ``common/`` (mutmut 3), summarised per file for ``docs/TESTING.md``.

mutmut changes one operator, constant or argument at a time in a copy of the code (``mutants/``) and runs the
tests that execute the changed function; a mutant that no test notices "survives". Configuration:
``[tool.mutmut]`` in ``pyproject.toml``.

    python tools/mutation_test.py                                  # every module of masking/ losses/ networks/ engines/
    python tools/mutation_test.py --only "common.losses.*,common.masking.*"   # a subset (mutmut's name globs)
    python tools/mutation_test.py --report mutation_report.md      # also write the per-file table and survivors
    python tools/mutation_test.py --only_mutate "common/losses/*" --tests tests/test_m2mae_losses.py
                                   # in a scratch copy: mutate these files only, run these tests only

CI runs a subset of it as an optional step that cannot fail the build; the full run's survivors, with the reason
each is harmless (or the test added for it), are listed in docs/TESTING.md.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import fire

REPO = Path(__file__).resolve().parents[1]
_LINE = re.compile(r"^\s+(?P<name>[\w.]+__mutmut_\d+): (?P<status>.+)$")


def _mutmut(*args: str, check: bool = True, cwd: Path = REPO) -> str:
    proc = subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=cwd, capture_output=True, text=True)
    if check and proc.returncode not in (0, 1):
        raise RuntimeError(f"mutmut {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def _single_threaded() -> dict[str, str]:
    """The environment for mutmut: one OpenMP / MKL thread.

    mutmut runs the tests once in its own process, then forks a child per mutant. A child forked after torch has
    started its OpenMP thread pool waits forever on the first parallel operation (spinning, so the CPU-time limit
    ends it and every mutant is reported as a timeout); with one thread there is no pool to inherit.
    """
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _module(name: str) -> str:
    """``common.losses.barlow.x_barlow_twins_loss__mutmut_3`` -> ``common/losses/barlow.py``."""
    parts = name.split(".")
    i = next(i for i, p in enumerate(parts) if p.startswith(("x_", "x\u01c1")) or "__mutmut_" in p)
    return "/".join(parts[:i]) + ".py"


def summarise(lines: str) -> tuple[dict[str, Counter], dict[str, list[str]]]:
    """Per file: counts by status; and the names of the surviving mutants."""
    counts: dict[str, Counter] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    for line in lines.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        path = _module(m["name"])
        counts[path][m["status"]] += 1
        if m["status"] == "survived":
            survivors[path].append(m["name"])
    return counts, survivors


def markdown(counts: dict[str, Counter], survivors: dict[str, list[str]], diffs: dict[str, str]) -> str:
    rows = ["| file | mutants | killed | survived | no tests | timeout |", "|---|---|---|---|---|---|"]
    for path in sorted(counts):
        c = counts[path]
        rows.append(
            f"| `{path}` | {sum(c.values())} | {c['killed'] + c['caught by type check']} | {c['survived']} | "
            f"{c['no tests']} | {c['timeout']} |"
        )
    out = ["\n".join(rows), ""]
    for path in sorted(survivors):
        out.append(f"### `{path}`\n")
        for name in survivors[path]:
            out.append(f"`{name}`\n```diff\n{diffs.get(name, '').strip()}\n```\n")
    return "\n".join(out)


def _scratch_copy(workdir: Path, only_mutate: list[str], tests: list[str]) -> Path:
    """A copy of the tree (tracked and untracked, not ignored files) in ``workdir`` whose ``[tool.mutmut]`` mutates ``only_mutate`` and selects
    ``tests`` (the checkout's own configuration and ``mutants/`` stay untouched)."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    for rel in filter(None, files.stdout.split("\0")):
        src, dst = REPO / rel, workdir / rel
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    toml = (workdir / "pyproject.toml").read_text()
    if only_mutate:
        toml = re.sub(r"(?m)^only_mutate = .*$", "only_mutate = " + json.dumps(only_mutate), toml)
    if tests:
        toml = re.sub(
            r"(?m)^\[tool\.mutmut\]$", "[tool.mutmut]\npytest_add_cli_args_test_selection = " + json.dumps(tests), toml
        )
    (workdir / "pyproject.toml").write_text(toml)
    return workdir


def main(
    only: str = "",
    only_mutate: str = "",
    tests: str = "",
    report: str = "",
    max_children: int = 2,
    workdir: str = "",
    quiet: bool = False,
) -> None:
    """Run mutmut over the configured modules and print the per-file summary with every survivor's diff.

    Args:
        only: mutmut's mutant-name globs, comma-separated (e.g. ``"common.losses.*"``): run these mutants only.
        only_mutate: file globs, comma-separated (e.g. ``"common/losses/*,common/masking/*"``): mutate only these
            files, in a scratch copy of the tree (``workdir`` or a temporary folder).
        tests: test files, comma-separated: run only these (in the scratch copy); default: the whole selection of
            ``[tool.mutmut]``.
        report: also write the Markdown summary to this file.
        max_children: parallel mutant runs.
        workdir: where the scratch copy goes (kept); default a temporary folder (removed at the end).
        quiet: hide mutmut's progress display (for logs, e.g. CI).
    """
    globs = [g.strip() for g in only.split(",") if g.strip()]
    files = [g.strip() for g in only_mutate.split(",") if g.strip()]
    selected = [t.strip() for t in tests.split(",") if t.strip()]
    cwd, tmp = REPO, None
    if files or selected:
        if workdir:
            cwd = Path(workdir).resolve()
            cwd.mkdir(parents=True, exist_ok=True)
        else:
            tmp = tempfile.TemporaryDirectory(prefix="mutation_")
            cwd = Path(tmp.name)
        _scratch_copy(cwd, files, selected)
    try:
        subprocess.run(
            [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children), *globs],
            cwd=cwd,
            stdout=subprocess.DEVNULL if quiet else None,
            env=_single_threaded(),
        )
        counts, survivors = summarise(_mutmut("results", "--all", "true", cwd=cwd))
        if globs:
            keep = {
                p
                for p in counts
                if any(fnmatch.fnmatch(p.replace("/", ".")[:-3] + ".x", g.rstrip("*") + "*") for g in globs)
            }
            counts = {p: c for p, c in counts.items() if p in keep}
            survivors = {p: s for p, s in survivors.items() if p in keep}
        diffs = {name: _mutmut("show", name, check=False, cwd=cwd) for names in survivors.values() for name in names}
    finally:
        if tmp is not None:
            tmp.cleanup()
    text = markdown(counts, survivors, diffs)
    print(text)
    if report:
        Path(report).write_text(text + "\n")


if __name__ == "__main__":
    fire.Fire(main)
