"""Time a method's public reference code beside this collection's training step, at equal shapes, on this machine.

The reference code is never part of this repository: pass the path of your own checkout, and the tool imports
from it (its folder goes on ``sys.path`` in a forked child process only). Each side runs in a forked process of
its own, so each peak RSS is its own; timing, FLOP counting, memory reading and the report file are
``tools/benchmark.py``'s (``measure``, ``measure_isolated``, ``append_report``). The table gives both rows and the
ratios reference / ours for step time and peak memory; unless ``--write False`` it is appended to
``docs/BENCHMARKS.md`` with the command, the date and the machine, as ``tools/benchmark.py`` does.

BrainMVP (``--brainmvp_dir``: a checkout of the authors' public BrainMVP code)
    Theirs: ``models/Uniformer.py: RecModel(args, dim=512)``, the model of their ``main.py`` (``--use_Unet`` off),
    one full step: ``loss = model(x, args=..., index=..., rep_start_point=..., rearranged_series=...,
    cur_epoch=..., series_name=...)[0]``, ``loss.backward()``, AdamW (lr 3e-4, weight decay 1e-5, as
    ``do_pretrain.sh`` and ``main.py``), fp32, random data. Ours: ``tools/benchmark.py``'s ``brainmvp_uniformer``
    at the same batch and crop (``--shape paper``: UniFormer-S at 96^3). Their inputs, as ``main.py`` builds them
    from a batch:

    * ``x``: ``[B, 4, 96, 96, 96]`` uniform in [0, 1] (a BraTS sample: four modalities, intensities scaled to
      [0, 1]); ``args.in_channels = 1``, as their default: each view is one channel, the two views are stacked on
      the batch axis.
    * ``series_name``: ``"t1,t1ce,t2,flair"`` per sample (BraTS 2021 names; ``utils/ops.py``'s ``mapping``
      sends ``t1ce`` to the ``t1c`` template); ``rearranged_series``: the per-modality rows of ``main.py``.
    * ``index = 0`` (the masked modality; ``main.py`` draws it per step, which costs the same).
    * templates as ``do_pretrain.sh``: ``template_index`` flair t1 t1c t2 mra pd dwi adc (eight learnable
      240 x 240 x 155 templates: about 1.1 GiB with their gradients and AdamW moments) and
      ``rep_start_point`` at the centre of that canvas; ``mask_rate 0.8``, ``mask_block_size 8``.
    * ``cur_epoch = args.start_epoch = 1000`` (``do_pretrain.sh``): their contrastive term is on and the second
      view replaces blocks with another modality, as our step with ``use_contrastive=True``.

    Our side has two rows. ``brainmvp_uniformer``: this collection's default network (stride-4 stem, then 2, 2,
    2), the step a user of the bundle runs. ``brainmvp_uniformer_official``: the authors' UniFormer-S layout in our
    code (stride-2 patch embeddings in all four stages, features at 1/2 ... 1/16, global attention over 12^3
    tokens in stage 3), the same encoder as theirs, so that row compares implementations of one network; its
    decoder is ours (residual blocks, linear patch head), theirs is transposed convolutions only.
    ``brainmvp_uniformer_official_ckpt``: the same network with ``checkpoint_mlp`` (the bundle's default): the
    local blocks' MLPs are recomputed in the backward pass instead of stored.

    Differences kept on purpose: they step the optimiser every second iteration (``accumulation_steps 2``);
    both sides here step every iteration. Their ``main.py`` turns on ``torch.autograd.set_detect_anomaly(True)``
    for the whole run, a debugging switch that costs time without changing the maths: off here,
    ``--detect_anomaly True`` reproduces it. Their augmentation crops hard-coded 96^3 template windows, so the
    real code runs at ``--edge 96`` only (``--edge`` and ``--shape small`` exist for the tests' stand-in).

    Requirements of the reference code only (not of this collection, so not in ``requirements.txt``):
    ``timm``, which imports ``torchvision`` at import time. Pin your torch while installing it
    (``pip install timm "torch==$(python -c 'import torch; print(torch.__version__.split("+")[0])')"``): a plain
    ``pip install timm`` may replace a CPU build of torch with the newest CUDA one. Where ``torchvision`` cannot
    be imported (e.g. a CUDA build of it beside a CPU build of torch, "operator torchvision::nms does not
    exist"), the reference process serves timm's import-time references from a stand-in module and says so
    under the table; their model runs no torchvision code.

M2-MAE: not benchmarked. The public code (``train_3DMAE.py`` with ``models/UNETR_ViT_Backbone.py``) cannot run
    a step as published: its generator loss ``utils.loss.MAELoss`` is referenced but defined nowhere in the
    repository, and its model and discriminator hard-code a 4 x 64 x 240 x 240 input (900 mask tokens = 4 x 15 x 15
    patches in ``forward``, ``unpatchify``'s ``s = 4, h = w = 15``, the discriminator's
    ``view(-1, 8*4*15*15)``), so at 2 x 4 x 96^3 the reconstruction (1548 tokens) and the target (864) do not
    match. Running it would mean editing their code, which this tool does not do.

Examples::

    python tools/reference_benchmark.py --brainmvp_dir ~/src/BrainMVP                  # batch 2, appends to docs
    python tools/reference_benchmark.py --brainmvp_dir ~/src/BrainMVP --batch 1 --repeats 1 --write False
    python tools/reference_benchmark.py --brainmvp_dir ~/src/BrainMVP --channels_last True   # ours channels-last
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import random
import sys
import types
from collections.abc import Callable
from pathlib import Path

import fire
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import Case, _in_fork, _matmul_child, append_report, measure, measure_isolated  # noqa: E402

# files that identify a checkout of each method's public code
REFERENCE_FILES = {"brainmvp": ("models/Uniformer.py", "utils/ops.py")}
# top-level package names of the reference code, which must come from the checkout, not from anything loaded before
REFERENCE_PACKAGES = ("models", "utils", "losses")
BRATS_SERIES = ("t1", "t1ce", "t2", "flair")
# our side: the collection's network, the authors' network in our code (the same FLOPs as theirs), and the same with
# the local blocks' MLPs recomputed in the backward pass (the brainmvp bundle's default since 0.5.0)
OUR_CASES = {"brainmvp": ("brainmvp_uniformer", "brainmvp_uniformer_official", "brainmvp_uniformer_official_ckpt")}


def check_checkout(path: str | Path, method: str) -> Path:
    """The resolved ``path``, or a ``ValueError`` naming it if it is not a checkout of ``method``'s public code."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise ValueError(f"--{method}_dir {root}: no such directory")
    missing = [f for f in REFERENCE_FILES[method] if not (root / f).is_file()]
    if missing:
        raise ValueError(
            f"--{method}_dir {root} is not a checkout of the public {method} code: missing {', '.join(missing)}"
        )
    return root


class _StandIn(type):
    """A placeholder class: any attribute is another placeholder; making an instance raises."""

    def __getattr__(cls, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return _StandIn(name, (), {})

    def __call__(cls, *args, **kwargs):
        raise RuntimeError(f"torchvision stand-in: {cls.__name__} is not available in this environment")


class _StandInModule(types.ModuleType):
    def __getattr__(self, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return _StandIn(name, (), {})


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``torchvision`` and every ``torchvision.*`` as a stand-in package; ``served`` lists what it served."""

    def __init__(self) -> None:
        self.served: list[str] = []

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            self.served.append(name)
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandInModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module) -> None:
        pass


def _ensure_torchvision() -> Callable[[], str]:
    """Import torchvision, or install the stand-in where it cannot be imported. Returns a function that gives, after
    the reference code is imported, a note for the report if the stand-in was used ('' if not)."""
    try:
        import torchvision  # noqa: F401

        return lambda: ""
    except Exception as e:  # ImportError, or RuntimeError from a torchvision built for another torch
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        finder = _StandInFinder()
        sys.meta_path.insert(0, finder)
        why = f"{type(e).__name__}: {e}"
        return lambda: (
            f"torchvision could not be imported here ({why}); a stand-in module served timm's import-time "
            "references (the reference model runs no torchvision code)"
            if finder.served
            else ""
        )


def _import_from(root: Path) -> None:
    """Put ``root`` first on ``sys.path`` and forget reference-named packages loaded from elsewhere (child only)."""
    for name in [m for m in sys.modules if m.split(".")[0] in REFERENCE_PACKAGES]:
        del sys.modules[name]
    sys.path.insert(0, str(root))


def brainmvp_args(edge: int = 96) -> argparse.Namespace:
    """What ``RecModel`` and ``utils/ops.py`` read from ``args``: ``main.py``'s defaults with ``do_pretrain.sh``'s
    values (templates, canvas, masking, ``start_epoch``, lr) and fp32 on the CPU."""
    return argparse.Namespace(
        device="cpu",
        in_channels=1,
        roi_x=edge,
        roi_y=edge,
        roi_z=edge,
        initial_checkpoint="",
        use_Unet=False,
        template_index=["flair", "t1", "t1c", "t2", "mra", "pd", "dwi", "adc"],
        dst_h=240,
        dst_w=240,
        dst_d=155,
        mask_rate=0.8,
        mask_block_size=8,
        start_epoch=1000,
        lr=3e-4,
        decay=1e-5,
        amp=False,
    )


def brainmvp_inputs(args: argparse.Namespace, batch: int, edge: int) -> tuple[torch.Tensor, dict]:
    """``x`` and the keyword arguments of ``RecModel.forward``, as ``main.py``'s ``train_epoch`` builds them."""
    x = torch.rand(batch, len(BRATS_SERIES), edge, edge, edge)
    series_name = [",".join(BRATS_SERIES)] * batch  # batch["series_name"]: one comma-joined string per sample
    rearranged_series = [",".join(s.split(",")[i] for s in series_name) for i in range(len(BRATS_SERIES))]
    centre = [(args.dst_h - edge) // 2, (args.dst_w - edge) // 2, (args.dst_d - edge) // 2]
    kwargs = dict(
        args=args,
        index=0,
        rep_start_point=torch.tensor([centre] * batch, dtype=torch.float),
        rearranged_series=rearranged_series,
        cur_epoch=args.start_epoch,  # contrastive term on, second view from another modality
        series_name=series_name,
    )
    return x, kwargs


def _brainmvp_reference_child(
    conn, root: str, batch: int, edge: int, repeats: int, peak: float, detect_anomaly: bool
) -> None:
    try:
        random.seed(0)  # their second view draws the other modality with ``random``
        torchvision_note = _ensure_torchvision()
        _import_from(Path(root))
        from models.Uniformer import RecModel

        args = brainmvp_args(edge)
        model = RecModel(args, dim=512).train()
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.decay)
        x, kwargs = brainmvp_inputs(args, batch, edge)
        torch.autograd.set_detect_anomaly(detect_anomaly)

        def step() -> None:
            loss = model(x, **kwargs)[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        canvas = f"{args.dst_h}x{args.dst_w}x{args.dst_d}"
        shape = f"{batch}x1x{edge}^3 RecModel, {len(args.template_index)} templates {canvas}"
        shape += " anomaly" if detect_anomaly else ""
        row = measure(Case("brainmvp (public code)", shape, batch, step), repeats, peak)
        conn.send({**row, "note": torchvision_note()})
    except BaseException as e:  # report, never hang the parent
        conn.send(RuntimeError(f"BrainMVP public code at {root}: {type(e).__name__}: {e}"))
    finally:
        conn.close()


def _num(value: float, fmt: str) -> str:
    return format(value, fmt) if value else "n/a"


def ratio_table(method: str, ref: dict, ours: list[dict], peak: float) -> str:
    """One Markdown table: the reference row, then each of our rows with reference / ours for time and memory."""
    head = (
        "| method | code | shape | step (s) | GFLOP/step | GFLOP/s | / matmul | peak RSS (GiB) "
        "| time ref / ours | memory ref / ours |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    body = ""
    for code, r in [("public reference", ref)] + [(f"this collection ({o['case']})", o) for o in ours]:
        ratios = (
            "- | -"
            if r is ref
            else f"{ref['step_s'] / r['step_s']:.2f}x | {ref['peak_mem_gib'] / r['peak_mem_gib']:.2f}x"
        )
        body += (
            f"| {method} | {code} | {r['shape']} | {r['step_s']:.3f} | {_num(r['gflop_per_step'], '.1f')} | "
            f"{_num(r['gflops'], '.1f')} | {_num(r['matmul_ratio'], '.0%')} | {r['peak_mem_gib']:.2f} | {ratios} |\n"
        )
    note = f"\n{ref['note']}\n" if ref.get("note") else ""
    return head + body + f"\nfp32 matmul throughput in the same run: {peak:.1f} GFLOP/s\n" + note


def run(
    brainmvp_dir: str | None = None,
    batch: int = 2,
    repeats: int = 1,
    channels_last: bool = False,
    write: bool = True,
    output: str | None = None,
    shape: str = "paper",
    edge: int = 96,
    detect_anomaly: bool = False,
) -> str:
    """Time the public reference code of each method given beside our step at the same batch and crop; report.

    Args:
        brainmvp_dir: a checkout of the public BrainMVP code (``models/Uniformer.py``, ``utils/ops.py``).
        batch: batch size of both sides.
        repeats: timed steps per side after one warm-up (the fastest is reported).
        channels_last: our networks and inputs channels-last 3D (the bundles' switch; the reference has none).
        write: append the report to ``docs/BENCHMARKS.md`` (or ``output``).
        output: append the report to this file instead of ``docs/BENCHMARKS.md``.
        shape: our side's ``tools/benchmark.py`` shape: ``paper`` (UniFormer-S) or ``small`` (tests).
        edge: crop edge of both sides (the public BrainMVP code runs at 96 only).
        detect_anomaly: the reference step under ``torch.autograd.set_detect_anomaly(True)``, as their ``main.py``.
    """
    if not brainmvp_dir:
        raise ValueError("nothing to compare: pass --brainmvp_dir (M2-MAE's public code cannot run; see the docstring)")
    root = check_checkout(brainmvp_dir, "brainmvp")
    torch.manual_seed(0)
    peak = _in_fork(_matmul_child, "cpu")
    ref = _in_fork(_brainmvp_reference_child, str(root), batch, edge, repeats, peak, detect_anomaly)
    ours_kwargs = {"shape": shape, "batch": batch, "edge": edge, "channels_last": channels_last}
    ours = [measure_isolated(case, ours_kwargs, repeats, peak) for case in OUR_CASES["brainmvp"]]
    report = ratio_table("BrainMVP", ref, ours, peak)
    print(report)
    if write:
        append_report(report, "python tools/reference_benchmark.py " + " ".join(sys.argv[1:]), "cpu", output)
    return report


if __name__ == "__main__":
    fire.Fire(run, serialize=lambda report: None)  # run() prints the report itself
