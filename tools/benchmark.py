"""Benchmark the full training step of every bundle: time, FLOPs, throughput, memory, masking share.

Each row builds the bundle's network and optimiser(s) from ``common/`` at a given shape, puts one batch in
memory, and times complete training steps (forward, every loss, backward, optimiser step; the discriminator step
too for M2-MAE). In the same run it measures the machine's fp32 matmul throughput, so "achieved GFLOP/s / matmul
GFLOP/s" says how well a step uses the hardware. Results are printed as a Markdown table and appended to
``docs/BENCHMARKS.md`` with the command and the machine.

Rows register themselves in ``CASES``; a new bundle adds ``CASES["name"] = builder`` returning a ``Case``. A builder
takes ``(shape, batch=None, edge=None, channels_last=False)`` and passes its networks and 5-D inputs through
``_cl`` so that ``--channels_last True`` measures the bundles' ``channels_last`` switch.

Examples::

    python tools/benchmark.py                       # every case at its small shape
    python tools/benchmark.py --cases m2mae --shape paper --repeats 3
    python tools/benchmark.py --scaling m2mae       # step time vs batch size and crop edge
    python tools/benchmark.py --cases m2mae_seg --channels_last True   # 3D conv weights and inputs channels-last
"""

from __future__ import annotations

import datetime
import math
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


def _cl(obj, channels_last: bool):
    """A network (its 5-D weights, as the bundles' ``channels_last`` switch) or a 5-D tensor in channels-last 3D."""
    if not channels_last:
        return obj
    if isinstance(obj, torch.nn.Module):
        from common.networks.utils import to_device

        return to_device(obj, None, channels_last=True)
    return obj.contiguous(memory_format=torch.channels_last_3d) if obj.dim() == 5 else obj


def _label(shape: str, channels_last: bool) -> str:
    return shape + (" CL" if channels_last else "")


def _m2mae(shape: str, batch: int | None = None, edge: int | None = None, channels_last: bool = False) -> Case:
    from monai.networks.nets import PatchDiscriminator

    from common.engines.trainer import SelfSupervisedTrainer  # noqa: F401  (the step below mirrors its _iteration)
    from common.losses.adversarial import discriminator_loss, generator_adversarial_loss
    from common.masking.hybrid import apply_mask, hybrid_mask
    from common.networks.m2mae import M2MAE

    paper = shape == "paper"
    b = batch or (2 if paper else 2)
    e = edge or (96 if paper else 32)
    size = dict(hidden_size=768, mlp_dim=3072, num_heads=12) if paper else dict(hidden_size=48, mlp_dim=96, num_heads=4)
    net = _cl(M2MAE(in_channels=4, img_size=e, patch_size=16, **size), channels_last)
    disc = PatchDiscriminator(
        spatial_dims=3, channels=32 if paper else 8, in_channels=4, num_layers_d=3, norm="INSTANCE"
    )
    disc = _cl(disc, channels_last)
    opt, d_opt = torch.optim.AdamW(net.parameters(), 1e-4), torch.optim.Adam(disc.parameters(), 1e-4)
    x = _cl(torch.randn(b, 4, e, e, e), channels_last)

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

    return Case("m2mae", _label(f"{b}x4x{e}^3 ViT-{'B' if paper else 'tiny'}/16", channels_last), b, step, masking)


def _m2mae_seg(shape: str, batch: int | None = None, edge: int | None = None, channels_last: bool = False) -> Case:
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
    net = _cl(net, channels_last)
    opt, loss_fn = torch.optim.AdamW(net.parameters(), 1e-4), DiceCELoss(sigmoid=True)
    x, y = _cl(torch.randn(b, 4, e, e, e), channels_last), _cl((torch.rand(b, 3, e, e, e) > 0.9).float(), channels_last)

    def step() -> None:
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return Case("m2mae_seg", _label(f"{b}x4x{e}^3 UNETR", channels_last), b, step)


def _brainmvp(backbone: str, layout: str = "collection", checkpoint_mlp: bool = False) -> Callable[..., Case]:
    """BrainMVP pre-training with ``backbone`` in ``layout`` (``official``: the authors' UniFormer, stride-2 stem);
    ``checkpoint_mlp``: the local blocks' MLPs recomputed in the backward pass (same network, less memory)."""

    def build(shape: str, batch: int | None = None, edge: int | None = None, channels_last: bool = False) -> Case:
        from common.masking.cross_modal import cross_modal_mask, cube_mask
        from common.networks.brainmvp import BrainMVP, build_backbone
        from common.networks.templates import translation_map

        paper = shape == "paper"
        b, e = batch or (1 if paper else 2), edge or (96 if paper else 32)
        size = "small" if paper else "tiny"
        backbone_net = build_backbone(backbone, size, layout=layout, checkpoint_mlp=checkpoint_mlp)
        net = BrainMVP(backbone_net, ["t1", "t1ce", "t2", "flair"], (e, e, e))
        net = _cl(net, channels_last)
        opt = torch.optim.AdamW(net.parameters(), 3e-4)
        image, index, box = (
            _cl(torch.rand(b, 2, e, e, e), channels_last),
            torch.zeros(b, 2, dtype=torch.long),
            torch.zeros(b, 3, dtype=torch.long),
        )

        def step() -> None:
            out = net(image, index, translation_map(box), use_contrastive=True)
            loss = out["loss_cmr"] + out["loss_md"] + out["loss_cl"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def masking() -> None:
            t = net.templates.sample(index[:, :1], translation_map(box), (e, e, e))
            cross_modal_mask(image[:, :1], image[:, 1:], cube_mask((e, e, e), b))
            cross_modal_mask(image[:, :1], t, cube_mask((e, e, e), b))

        suffix = ("" if layout == "collection" else f"_{layout}") + ("_ckpt" if checkpoint_mlp else "")
        label = _label(f"{b}x1x{e}^3 {backbone}-{'S' if paper else 'tiny'}{suffix.replace('_', ' ')}", channels_last)
        return Case(f"brainmvp_{backbone}{suffix}", label, b, step, masking)

    return build


def _m2mae_cls(linear_probe: bool) -> Callable[..., Case]:
    """m2mae_cls: ``ViTClassifier`` + cross-entropy; linear probe (the bundle's default) or full fine-tuning."""

    def build(shape: str, batch: int | None = None, edge: int | None = None, channels_last: bool = False) -> Case:
        from common.networks.vit_classifier import ViTClassifier

        paper = shape == "paper"
        b, e = batch or 2, edge or (96 if paper else 32)
        size = (
            dict(hidden_size=768, mlp_dim=3072, num_heads=12)
            if paper
            else dict(hidden_size=48, mlp_dim=96, num_heads=4)
        )
        net = ViTClassifier(4, e, 16, num_classes=2, freeze_encoder=linear_probe, **size).train()
        net = _cl(net, channels_last)
        # as train.json: AdamW (no weight decay) on the trainable tensors only (probe: LayerNorm + head), lr 1e-3 / 1e-4
        params = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, 1e-3 if linear_probe else 1e-4, weight_decay=0.0)
        loss_fn = torch.nn.CrossEntropyLoss()
        x, y = _cl(torch.randn(b, 4, e, e, e), channels_last), torch.randint(0, 2, (b,))

        def step() -> None:
            loss = loss_fn(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        mode = "probe" if linear_probe else "fine-tune"
        name = "m2mae_cls" if linear_probe else "m2mae_cls_finetune"
        return Case(name, _label(f"{b}x4x{e}^3 ViT-{'B' if paper else 'tiny'}/16 {mode}", channels_last), b, step)

    return build


def _template_step(
    net: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable,
    opt: torch.optim.Optimizer,
    templates: torch.nn.Module,
    lambda_cons: float = 0.1,
) -> tuple[Callable[[], None], Callable[[], tuple]]:
    """``step`` and ``masking`` of ``TemplateConsistencyTrainer._iteration``: two template-replaced copies of the
    batch (all channels' templates available, crops at box 0 of a crop-sized canvas), the supervised loss of both
    and the consistency of their deepest encoder features."""
    from common.engines.template_trainer import consistency_loss
    from common.masking.template_replace import template_copies
    from common.networks.templates import translation_map

    b, c, *roi = x.shape
    available = torch.ones(c, dtype=torch.bool)
    box = torch.zeros(b, 3, dtype=torch.long)

    def masking() -> tuple:
        with torch.no_grad():
            rows = templates.sample(torch.arange(c).expand(b, c), translation_map(box), roi)
            return template_copies(x, rows, available)

    def step() -> None:
        x1, x2 = masking()
        pred, feats = net(torch.cat([x1, x2]), return_features=True)  # as the trainer: one call for both copies
        (pred1, pred2), (feats1, feats2) = pred.chunk(2), feats.chunk(2)
        loss = loss_fn(pred1, y).mean() + loss_fn(pred2, y).mean()
        loss = loss + lambda_cons * consistency_loss(feats1, feats2)  # Eq. 8
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, masking


def _brainmvp_downstream(task: str) -> Callable[..., Case]:
    """brainmvp_seg (encoder-decoder with skips, DiceCE) or brainmvp_cls (``EncoderClassifier``, cross-entropy),
    both with template augmentation and the consistency loss, UniFormer backbone (the bundles' default)."""

    def build(shape: str, batch: int | None = None, edge: int | None = None, channels_last: bool = False) -> Case:
        from monai.losses import DiceCELoss

        from common.networks.brainmvp import EncoderClassifier, build_backbone
        from common.networks.templates import ModalityTemplates

        paper = shape == "paper"
        b = batch or (1 if paper else 2)
        if edge:
            roi = (edge, edge, edge)
        else:  # the bundles' crops: 96^3 for segmentation, 96 x 96 x 64 after the B.3 resize for classification
            roi = ((96, 96, 96) if task == "seg" else (96, 96, 64)) if paper else (32, 32, 32)
        size = "small" if paper else "tiny"
        modalities = ["t1", "t1ce", "t2", "flair"]
        if task == "seg":
            net = build_backbone("uniformer", size, in_channels=4, out_channels=3, skip_connections=True)
            loss_fn = DiceCELoss(sigmoid=True, smooth_nr=0.0, smooth_dr=1e-5, squared_pred=True)
            y = (torch.rand(b, 3, *roi) > 0.9).float()
        else:
            backbone = build_backbone("uniformer", size, in_channels=4, out_channels=1, skip_connections=True)
            net = EncoderClassifier(backbone, 2)
            loss_fn, y = torch.nn.CrossEntropyLoss(), torch.randint(0, 2, (b,))
        net = _cl(net.train(), channels_last)
        opt = torch.optim.AdamW(net.parameters(), 3e-4, weight_decay=1e-4)
        templates = ModalityTemplates(modalities, roi).requires_grad_(False)  # frozen, from pre-training
        with torch.no_grad():
            templates.templates.uniform_()
        x = _cl(torch.rand(b, 4, *roi), channels_last)
        step, masking = _template_step(net, x, _cl(y, channels_last), loss_fn, opt, templates)
        shape_txt = "x".join(str(r) for r in roi) if len(set(roi)) > 1 else f"{roi[0]}^3"
        label = _label(f"{b}x4x{shape_txt} uniformer-{'S' if paper else 'tiny'}", channels_last)
        return Case(f"brainmvp_{task}", label, b, step, masking)

    return build


def _mrm(num_snps: int) -> Callable[..., Case]:
    """MRM pre-training step (``common.networks.mrm.mrm_step_parts``: both branches, both decoders, every loss,
    backward, AdamW over the two parameter groups); masking = the explicit top-tau attention of the two masked
    blocks. Paper shape: batch 8 of 3x224x224, ViT-B/16, genetics of ``num_snps`` features."""

    def build(shape: str, batch: int | None = None, edge: int | None = None, channels_last: bool = False) -> Case:
        from common.networks.mrm import mrm_step_parts, mrm_tiny, mrm_vit_base_patch16

        paper = shape == "paper"
        b = batch or (8 if paper else 2)
        e = edge or (224 if paper else 32)
        g = num_snps if paper else min(num_snps, 1000)
        net = mrm_vit_base_patch16(g, img_size=e) if paper else mrm_tiny(g, img_size=e)
        parts = mrm_step_parts(net.train(), b)
        label = f"{b}x3x{e}^2 ViT-{'B' if paper else 'tiny'}/16, G={g:,}"
        return Case(f"mrm_g{num_snps // 1000}k", _label(label, channels_last), b, parts["step"], parts["masking"])

    return build


def _mrm_transfer(task: str) -> Callable[..., Case]:
    """The mrm downstream bundles' fine-tuning step (full fine-tuning, AdamW): ``TransferViT2D`` with the task's head
    and loss (APTOS 5 classes, glioma 3, RFMiD 46 binary labels, CRP 4 continuous + 2 binary targets), or PALM's 2D
    UNETR with a per-structure sigmoid loss. Paper shape: ViT-B/16 at 224, batch 8 (the paper gives none)."""

    def build(shape: str, batch: int | None = None, edge: int | None = None, channels_last: bool = False) -> Case:
        from common.networks.transfer2d import TargetLoss, TransferViT2D, transfer_unetr_2d

        paper = shape == "paper"
        b, e = batch or (8 if paper else 2), edge or (224 if paper else 32)
        size = (
            dict(hidden_size=768, mlp_dim=3072, num_heads=12)
            if paper
            else dict(hidden_size=48, mlp_dim=96, num_heads=4)
        )
        x = torch.randn(b, 3, e, e)
        if task == "palm":
            net = transfer_unetr_2d(2, img_size=e, feature_size=16 if paper else 8, **size)
            y = (torch.rand(b, 2, e, e) > 0.5).float()
            loss_fn = torch.nn.BCEWithLogitsLoss()
        elif task in ("aptos", "glioma"):
            net = TransferViT2D(5 if task == "aptos" else 3, img_size=e, **size)
            y = torch.randint(0, 5 if task == "aptos" else 3, (b,))
            loss_fn = torch.nn.CrossEntropyLoss()
        else:
            names = (
                [f"label{i}" for i in range(46)] if task == "rfmid" else ["age", "bmi", "sbp", "dbp", "sex", "smoking"]
            )
            kinds = {n: ("continuous" if task == "crp" and i < 4 else "binary") for i, n in enumerate(names)}
            stats = {n: {"mean": 0.0, "std": 1.0} for n, k in kinds.items() if k == "continuous"}
            net = TransferViT2D(targets=kinds, target_stats=stats or None, img_size=e, **size)
            y = torch.rand(b, len(names)).round()
            loss_fn = TargetLoss(kinds, stats or None)
        net = net.train()
        opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], 1e-4)

        def step() -> None:
            loss = loss_fn(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        what = "2D UNETR" if task == "palm" else "ViT"
        return Case(f"mrm_{task}", f"{b}x3x{e}^2 {what}-{'B' if paper else 'tiny'}/16 fine-tune", b, step)

    return build


def _gimp(task: str) -> Callable[..., Case]:
    """GiMP steps: ``pretrain`` (window of ``edge`` = L patches, masked patch modelling + frozen GroupMSA + triplet)
    or ``finetune`` (whole bags of ``edge`` patches through aggregator + GroupMSA + MLP head). Paper shape: 1024-d
    features, width 512, 60,480 genes (64-gene fragments, 32 groups), L = 6,000; batch 8 (the paper gives none)."""

    def build(shape: str, batch: int | None = None, edge: int | None = None, channels_last: bool = False) -> Case:
        from common.networks.gimp import GiMP, GiMPClassifier
        from common.networks.groupmsa import GroupMSA
        from common.networks.nystrom import NystromAggregator

        paper = shape == "paper"
        b, n = batch or (8 if paper else 4), edge or (6000 if paper else 256)
        f, d, genes = (1024, 512, 60480) if paper else (64, 32, 200)
        agg = NystromAggregator(in_features=f, dim=d) if paper else NystromAggregator(f, d, heads=4, num_landmarks=8)
        groupmsa = (
            GroupMSA(genes, 64, 32, hidden_size=d) if paper else GroupMSA(genes, 8, 4, hidden_size=d, num_heads=4)
        )
        x, expr, labels = torch.randn(b, n, f).relu(), torch.randn(b, genes), torch.arange(b) % 2
        if task == "pretrain":
            net = GiMP(agg, groupmsa, subsequence_length=n)
            opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], 1e-4)

            def step() -> None:
                out = net(x, expr, labels)
                opt.zero_grad(set_to_none=True)
                (out["loss_rec"] + out["loss_tri"]).backward()
                opt.step()

            def masking() -> None:
                net.random_masking(x, None)

            return Case("gimp", f"{b}x{n}x{f} L={n}", b, step, masking)
        net = GiMPClassifier(agg, groupmsa, num_classes=2)
        opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], 1e-4)
        lengths = torch.full((b,), n)

        def finetune() -> None:
            loss = torch.nn.functional.cross_entropy(net(x, expr, lengths), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return Case("gimp_nsclc", f"{b}x{n}x{f} whole bags", b, finetune)

    return build


def _gimp_groupmsa(shape: str, batch: int | None = None, edge: int | None = None, channels_last: bool = False) -> Case:
    """Supervised GroupMSA step on expression vectors (paper: 60,480 genes, 64-gene fragments, 32 groups, width
    512; ``edge`` = number of genes)."""
    from common.networks.groupmsa import GroupMSAClassifier

    paper = shape == "paper"
    b, genes = batch or (16 if paper else 8), edge or (60480 if paper else 300)
    size = (
        dict(fragment_length=64, num_groups=32, hidden_size=512)
        if paper
        else dict(fragment_length=8, num_groups=4, hidden_size=64, num_heads=4)
    )
    net = GroupMSAClassifier(num_classes=2, num_genes=genes, **size)
    opt = torch.optim.AdamW(net.parameters(), 1e-4)
    x, y = torch.randn(b, genes), torch.arange(b) % 2

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return Case("gimp_groupmsa", f"{b}x{genes} genes", b, step)


CASES: dict[str, Callable[..., Case]] = {
    "m2mae": _m2mae,
    "m2mae_seg": _m2mae_seg,
    "brainmvp_uniformer": _brainmvp("uniformer"),
    "brainmvp_unet3d": _brainmvp("unet3d"),
    "brainmvp_uniformer_official": _brainmvp("uniformer", "official"),
    "brainmvp_uniformer_official_ckpt": _brainmvp("uniformer", "official", checkpoint_mlp=True),
    "m2mae_cls": _m2mae_cls(linear_probe=True),
    "m2mae_cls_finetune": _m2mae_cls(linear_probe=False),
    "brainmvp_seg": _brainmvp_downstream("seg"),
    "brainmvp_cls": _brainmvp_downstream("cls"),
    "mrm_g1k": _mrm(1_000),
    "mrm_g100k": _mrm(100_000),
    "mrm_aptos": _mrm_transfer("aptos"),
    "mrm_rfmid": _mrm_transfer("rfmid"),
    "mrm_palm": _mrm_transfer("palm"),
    "mrm_crp": _mrm_transfer("crp"),
    "mrm_glioma": _mrm_transfer("glioma"),
    "gimp_groupmsa": _gimp_groupmsa,
    "gimp": _gimp("pretrain"),
    "gimp_nsclc": _gimp("finetune"),
}
# bag-length cases: --scaling times them at these lengths (patches), batch as their paper shape
BAG_LENGTHS: dict[str, tuple[int, ...]] = {"gimp": (1500, 6000, 24000), "gimp_nsclc": (1500, 6000, 24000)}


def matmul_gflops(n: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """fp32 matmul throughput of this machine (best of ``repeats``)."""
    dev = torch.device(device)
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        _sync(dev)
        start = time.perf_counter()
        a @ b
        _sync(dev)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def _flops(fn: Callable[[], None]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(case: Case, repeats: int, peak_matmul: float, device: torch.device | None = None) -> dict:
    """Time ``case`` (best of ``repeats`` after a warm-up), count its FLOPs, and read the process's peak memory."""
    device = device or torch.device("cpu")

    def timed(fn: Callable[[], object]) -> float:
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - start

    case.step()  # warm-up (allocations, kernels)
    t = min(timed(case.step) for _ in range(repeats))
    flops = _flops(case.step)
    mask_t = min(timed(case.masking) for _ in range(max(repeats, 3))) if case.masking else 0.0
    if device.type == "cuda":
        peak_mem_gib = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak_mem_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB -> GiB
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


def _measure_child(conn, name: str, kwargs: dict, repeats: int, peak: float, device: str, amp: bool) -> None:
    try:
        dev = torch.device(device)
        if dev.type != "cpu":
            torch.set_default_device(dev)  # the case's networks and batch are created on ``device``
        case = CASES[name](**kwargs)
        if amp:  # bfloat16 autocast around the whole step, as the bundles' ``amp`` switch
            step = case.step

            def case_step() -> None:
                with torch.autocast(dev.type, dtype=torch.bfloat16):
                    step()

            case.step = case_step
            case.shape += " bf16"
        conn.send(measure(case, repeats, peak, dev))
    except BaseException as e:  # report, never hang the parent
        conn.send(RuntimeError(f"{name} {kwargs}: {type(e).__name__}: {e}"))
    finally:
        conn.close()


def _in_fork(target: Callable, *args) -> object:
    """Run ``target(conn, *args)`` in a forked process and return what it sends (an exception is raised here).

    The parent never computes anything itself: a process that has started PyTorch's OpenMP thread pool cannot
    fork safely (the child's pool deadlocks), so the matmul figure is measured in a child too.
    """
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(child, *args))
    proc.start()
    child.close()
    try:
        result = parent.recv()
    except EOFError:
        raise RuntimeError(f"benchmark process died (exit code {proc.join() or proc.exitcode})") from None
    proc.join()
    if isinstance(result, BaseException):
        raise result
    return result


def measure_isolated(
    name: str, kwargs: dict, repeats: int, peak: float, device: str = "cpu", amp: bool = False
) -> dict:
    """Build and measure one case in a forked process, so that its peak memory is its own, not the run's maximum."""
    return _in_fork(_measure_child, name, kwargs, repeats, peak, device, amp)


def _matmul_child(conn, device: str) -> None:
    try:
        conn.send(matmul_gflops(device=device))
    except BaseException as e:
        conn.send(RuntimeError(f"matmul: {type(e).__name__}: {e}"))
    finally:
        conn.close()


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


def _slope(x: list[float], y: list[float]) -> float:
    """Exponent ``k`` of ``y ~ x^k``: the least-squares slope of ``log y`` against ``log x``."""
    lx, ly = [math.log(v) for v in x], [math.log(v) for v in y]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def run(
    cases: str | list[str] | None = None,
    shape: str = "small",
    repeats: int = 3,
    threads: int | None = None,
    write: bool = True,
    scaling: str | None = None,
    batch: int | None = None,
    channels_last: bool = False,
    output: str | None = None,
    device: str = "cpu",
    amp: bool = False,
) -> str:
    """Benchmark ``cases`` (default: all) at ``shape`` (``small`` or ``paper``) and report.

    Args:
        cases: names from ``CASES``.
        shape: ``small`` (tiny networks, 32^3) or ``paper`` (the papers' networks and crops).
        repeats: timed steps per case (the fastest is reported).
        threads: ``torch.set_num_threads`` (default: PyTorch's choice).
        write: append the report to ``docs/BENCHMARKS.md``.
        scaling: a case name: time it at batch 1, 2, 4 and crop edge 64, 96, 128 and fit the exponents; a bag case
            (``BAG_LENGTHS``: gimp, gimp_nsclc) at bag / window lengths 1,500, 6,000 and 24,000 patches instead.
        batch: batch size instead of each case's default.
        channels_last: networks (5-D weights) and 5-D inputs in ``torch.channels_last_3d``, as the bundles'
            ``channels_last`` switch (rows marked ``CL``).
        output: append the report to this file instead of ``docs/BENCHMARKS.md`` (CI keeps the docs clean).
        device: ``cpu`` or a CUDA device such as ``cuda:0`` (then fp32 matmul and memory are measured on it).
        amp: bfloat16 autocast around each step (the bundles' ``amp`` switch; meant for GPUs).

    Each case runs in a forked process of its own, so its peak memory (CPU: peak RSS; GPU: peak allocated) is
    its own and earlier cases do not warm its caches.
    """
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    peak = _in_fork(_matmul_child, device)
    names = [scaling] if scaling else ([cases] if isinstance(cases, str) else list(cases or CASES))
    rows = []
    common = {"shape": "paper", "channels_last": channels_last}
    if scaling in BAG_LENGTHS:
        lengths = BAG_LENGTHS[scaling]
        rows = [measure_isolated(scaling, {**common, "batch": batch, "edge": n}, repeats, peak, device, amp)
                for n in lengths]  # fmt: skip
        t_exp = _slope(list(lengths), [r["step_s"] for r in rows])
        m_exp = _slope(list(lengths), [r["peak_mem_gib"] for r in rows])
        note = f"\nstep time ~ L^{t_exp:.2f}, peak memory ~ L^{m_exp:.2f} (least-squares fit in log-log over L = {list(lengths)})\n"
    elif scaling:
        for b in (1, 2, 4):
            rows.append(measure_isolated(scaling, {**common, "batch": b, "edge": 64}, repeats, peak, device, amp))
        for e in (64, 96, 128):
            rows.append(measure_isolated(scaling, {**common, "batch": 1, "edge": e}, repeats, peak, device, amp))
        batch_exp = _slope([1, 2, 4], [r["step_s"] for r in rows[:3]])
        edge_exp = _slope([64, 96, 128], [r["step_s"] for r in rows[3:]])
        note = (
            f"\nstep time ~ batch^{batch_exp:.2f} and ~ edge^{edge_exp:.2f} (least-squares fit in log-log; "
            f"voxels ~ edge^3, so ~ voxels^{edge_exp / 3:.2f})\n"
        )
    else:
        kwargs = {"shape": shape, "batch": batch, "channels_last": channels_last}
        rows = [measure_isolated(n, kwargs, repeats, peak, device, amp) for n in names]
        note = ""
    report = _table(rows, peak) + note
    print(report)
    if write:
        append_report(report, "python tools/benchmark.py " + " ".join(sys.argv[1:]), device, output)
    return report


def append_report(report: str, cmd: str, device: str = "cpu", output: str | None = None) -> Path:
    """Append ``report`` under a dated heading with ``cmd`` and the machine line to ``output`` (default
    ``docs/BENCHMARKS.md``) and return that file."""
    machine = (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    if device.startswith("cuda"):
        machine += f", {torch.cuda.get_device_name(torch.device(device))}"
    stamp = datetime.date.today().isoformat()
    docs = Path(output) if output else REPO / "docs" / "BENCHMARKS.md"
    docs.parent.mkdir(exist_ok=True)
    if not docs.exists():
        docs.write_text("# Benchmarks\n\nFull training steps with data in memory, produced by `tools/benchmark.py`.\n")
    with docs.open("a") as f:
        f.write(f"\n## {stamp}: `{cmd.strip()}`\n\nMachine: {machine}\n\n{report}")
    return docs


if __name__ == "__main__":
    fire.Fire(run, serialize=lambda report: None)  # run() prints the report itself
