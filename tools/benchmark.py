"""Benchmark the full training step of every bundle: time, FLOPs, throughput, memory, masking share.

Each row builds the bundle's network and optimiser(s) from ``common/`` at a given shape, puts one batch in
memory, and times complete training steps (forward, every loss, backward, optimiser step; the discriminator step
too for M2-MAE). In the same run it measures the machine's fp32 matmul throughput, so "achieved GFLOP/s / matmul
GFLOP/s" says how well a step uses the hardware. Results are printed as a Markdown table and appended to
``docs/BENCHMARKS.md`` with the command and the machine.

Rows register themselves in ``CASES``; a new bundle adds ``CASES["name"] = builder`` returning a ``Case``.

Examples::

    python tools/benchmark.py                       # every case at its small shape
    python tools/benchmark.py --cases m2mae --shape paper --repeats 3
    python tools/benchmark.py --scaling m2mae       # step time vs batch size and crop edge
"""

from __future__ import annotations

import datetime
import platform
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import fire
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@dataclass
class Case:
    """One benchmark: ``step()`` runs a full training step; ``masking()`` only the masking/augmentation part."""

    name: str
    shape: str
    batch: int
    step: Callable[[], None]
    masking: Callable[[], None] | None = None


def _m2mae(shape: str, batch: int | None = None, edge: int | None = None) -> Case:
    from monai.networks.nets import PatchDiscriminator

    from common.engines.trainer import SelfSupervisedTrainer  # noqa: F401  (the step below mirrors its _iteration)
    from common.losses.adversarial import discriminator_loss, generator_adversarial_loss
    from common.masking.hybrid import apply_mask, hybrid_mask
    from common.networks.m2mae import M2MAE

    paper = shape == "paper"
    b = batch or (2 if paper else 2)
    e = edge or (96 if paper else 32)
    size = dict(hidden_size=768, mlp_dim=3072, num_heads=12) if paper else dict(hidden_size=48, mlp_dim=96, num_heads=4)
    net = M2MAE(in_channels=4, img_size=e, patch_size=16, **size)
    disc = PatchDiscriminator(
        spatial_dims=3, channels=32 if paper else 8, in_channels=4, num_layers_d=3, norm="INSTANCE"
    )
    opt, d_opt = torch.optim.AdamW(net.parameters(), 1e-4), torch.optim.Adam(disc.parameters(), 1e-4)
    x = torch.randn(b, 4, e, e, e)

    def step() -> None:
        out = net(x)
        disc.requires_grad_(False)
        loss = out["loss_mse"] + out["loss_pbt"] + generator_adversarial_loss(disc(out["pred"])[-1])
        disc.requires_grad_(True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        logits = disc(torch.cat([x, out["pred"].detach()]))[-1]
        d_loss = discriminator_loss(logits[:b], logits[b:])
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()

    def masking() -> None:
        apply_mask(x, hybrid_mask(b, 4, net.num_patches), net.patch_size)

    return Case("m2mae", f"{b}x4x{e}^3 ViT-{'B' if paper else 'tiny'}/16", b, step, masking)


def _m2mae_seg(shape: str, batch: int | None = None, edge: int | None = None) -> Case:
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNETR

    paper = shape == "paper"
    b, e = batch or 2, edge or (96 if paper else 32)
    size = (
        dict(hidden_size=768, mlp_dim=3072, num_heads=12, feature_size=16)
        if paper
        else dict(hidden_size=48, mlp_dim=96, num_heads=4, feature_size=8)
    )
    net = UNETR(in_channels=4, out_channels=3, img_size=e, norm_name="instance", res_block=True, **size)
    opt, loss_fn = torch.optim.AdamW(net.parameters(), 1e-4), DiceCELoss(sigmoid=True)
    x, y = torch.randn(b, 4, e, e, e), (torch.rand(b, 3, e, e, e) > 0.9).float()

    def step() -> None:
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return Case("m2mae_seg", f"{b}x4x{e}^3 UNETR", b, step)


def _brainmvp(backbone: str) -> Callable[..., Case]:
    def build(shape: str, batch: int | None = None, edge: int | None = None) -> Case:
        from common.masking.cross_modal import cross_modal_mask, cube_mask
        from common.networks.brainmvp import BrainMVP, build_backbone

        paper = shape == "paper"
        b, e = batch or (1 if paper else 2), edge or (96 if paper else 32)
        net = BrainMVP(build_backbone(backbone, "small" if paper else "tiny"), ["t1", "t1ce", "t2", "flair"], (e, e, e))
        opt = torch.optim.AdamW(net.parameters(), 3e-4)
        image, index, box = (
            torch.rand(b, 2, e, e, e),
            torch.zeros(b, 2, dtype=torch.long),
            torch.zeros(b, 3, dtype=torch.long),
        )

        def step() -> None:
            out = net(image, index, box, use_contrastive=True)
            loss = out["loss_cmr"] + out["loss_md"] + out["loss_cl"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def masking() -> None:
            t = net.templates.crop(index[:, 0], box, (e, e, e))
            cross_modal_mask(image[:, :1], image[:, 1:], cube_mask((e, e, e), b))
            cross_modal_mask(image[:, :1], t, cube_mask((e, e, e), b))

        return Case(f"brainmvp_{backbone}", f"{b}x1x{e}^3 {backbone}-{'S' if paper else 'tiny'}", b, step, masking)

    return build


CASES: dict[str, Callable[..., Case]] = {
    "m2mae": _m2mae,
    "m2mae_seg": _m2mae_seg,
    "brainmvp_uniformer": _brainmvp("uniformer"),
    "brainmvp_unet3d": _brainmvp("unet3d"),
}


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """fp32 matmul throughput of this machine (best of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _flops(fn: Callable[[], None]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def measure(case: Case, repeats: int, peak_matmul: float) -> dict:
    case.step()  # warm-up (allocations, kernels)
    times = [_timed(case.step) for _ in range(repeats)]
    t = min(times)
    flops = _flops(case.step)
    mask_t = min(_timed(case.masking) for _ in range(max(repeats, 3))) if case.masking else 0.0
    peak_mem_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak (kB -> GiB)
    return {
        "case": case.name,
        "shape": case.shape,
        "step_s": t,
        "samples_per_s": case.batch / t,
        "gflop_per_step": flops / 1e9,
        "gflops": flops / t / 1e9,
        "matmul_ratio": flops / t / 1e9 / peak_matmul,
        "peak_mem_gib": peak_mem_gib,
        "masking_share": mask_t / t,
    }


def _table(rows: list[dict], peak: float) -> str:
    head = (
        "| case | shape | step (s) | samples/s | GFLOP/step | GFLOP/s | / matmul | peak RSS (GiB) | masking share |\n"
    )
    head += "|---|---|---|---|---|---|---|---|---|\n"
    body = "".join(
        f"| {r['case']} | {r['shape']} | {r['step_s']:.3f} | {r['samples_per_s']:.2f} | {r['gflop_per_step']:.1f} | "
        f"{r['gflops']:.1f} | {r['matmul_ratio']:.0%} | {r['peak_mem_gib']:.2f} | {r['masking_share']:.2%} |\n"
        for r in rows
    )
    return head + body + f"\nfp32 matmul throughput in the same run: {peak:.1f} GFLOP/s\n"


def run(
    cases: str | list[str] | None = None,
    shape: str = "small",
    repeats: int = 3,
    threads: int | None = None,
    write: bool = True,
    scaling: str | None = None,
    batch: int | None = None,
) -> str:
    """Benchmark ``cases`` (default: all) at ``shape`` (``small`` or ``paper``) and report.

    Args:
        cases: names from ``CASES``.
        shape: ``small`` (tiny networks, 32^3) or ``paper`` (the papers' networks and crops).
        repeats: timed steps per case (the fastest is reported).
        threads: ``torch.set_num_threads`` (default: PyTorch's choice).
        write: append the report to ``docs/BENCHMARKS.md``.
        scaling: a case name: time it at batch 1, 2, 4 and crop edge 64, 96, 128 and fit the exponents.
        batch: batch size instead of each case's default.
    """
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    peak = matmul_gflops()
    names = [scaling] if scaling else ([cases] if isinstance(cases, str) else list(cases or CASES))
    rows = []
    if scaling:
        import math

        base = None
        for b in (1, 2, 4):
            rows.append(measure(CASES[scaling]("paper", batch=b, edge=64), repeats, peak))
        for e in (64, 96, 128):
            rows.append(measure(CASES[scaling]("paper", batch=1, edge=e), repeats, peak))
        bt = [r["step_s"] for r in rows[:3]]
        et = [r["step_s"] for r in rows[3:]]
        base = (math.log(bt[2] / bt[0]) / math.log(4), math.log(et[2] / et[0]) / math.log(2))
        note = f"\nstep time ~ batch^{base[0]:.2f}, ~ edge^{base[1]:.2f} (voxels ~ edge^3)\n"
    else:
        rows = [measure(CASES[n](shape, batch=batch), repeats, peak) for n in names]
        note = ""
    report = _table(rows, peak) + note
    print(report)
    if write:
        cmd = "python tools/benchmark.py " + " ".join(sys.argv[1:])
        machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
        stamp = datetime.date.today().isoformat()
        docs = REPO / "docs" / "BENCHMARKS.md"
        docs.parent.mkdir(exist_ok=True)
        if not docs.exists():
            docs.write_text(
                "# Benchmarks\n\nFull training steps with data in memory, produced by `tools/benchmark.py`.\n"
            )
        with docs.open("a") as f:
            f.write(f"\n## {stamp}: `{cmd.strip()}`\n\nMachine: {machine}\n\n{report}")
    return report


if __name__ == "__main__":
    fire.Fire(run)
