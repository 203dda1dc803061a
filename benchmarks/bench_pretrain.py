"""Self-supervised pre-training steps: one MAE step (mask 0.75) against one full-token forward+backward of the
same encoder, and the DINO/iBOT step per image, with step time, peak memory and (on a GPU) MFU.

**MAE** (He et al., CVPR 2022), per model in ``--mae-models`` (``vit_b``: the MAE ViT-B/16, i.e.
``retfound_cfp``'s family with ViT-B dims; ``vit_l``: ``retfound_cfp``, ViT-L/16), on one batch of random
images, four variants timed side by side, interleaved round by round (every variant once per round):

* ``full``: ``forward_features`` on every token, backward of a squared-mean loss: the encoder alone;
* ``masked``: the same encoder on the visible quarter (``prepare_tokens(keep=...)`` with ``keep`` from
  ``random_masking(B, N, 0.75)``, ``forward_tokens``), backward: the like-for-like comparison with ``full``;
* ``mae``: the whole :class:`~medvit.ssl.mae.MaskedAutoencoder` forward (the masked encoder, then MAE's 8-block
  512-wide decoder on every token and the normalised-pixel loss), backward: it does the decoder's work on top of
  the encoder's, so its ratio to ``full`` is not like for like;
* ``mae+adamw``: ``mae`` plus the AdamW step: one whole pre-training step (the MFU figure).

**DINO** (Caron et al., ICCV 2021; iBOT; DINOv2), per model in ``--dino-models`` (``vit_s``/``vit_b``: the
``dinov3_vits16``/``dinov3_vitb16`` ViTs with a 65536-prototype head), what ``DINOTask`` does per batch: 2 global
and ``--n-local`` local crops (``multi_crop``, 96 px at 224), the EMA teacher on the global crops (no grad), the
student on the global crops with iBOT block masks and on the local crops, DINO + iBOT losses, backward, AdamW
step, EMA update. Figures per image are the step's divided by the batch.

Times: the minimum over ``--repeats`` rounds (other processes only ever add time), the median beside it. Peak
memory: what one step adds over the persistent state (weights, teacher, AdamW moments, made before measuring):
on CUDA ``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` before the step; on the CPU each variant
runs in its own child process and its peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``)
minus the resident set before the step. MFU: matmul FLOPs counted from the model's shapes (linear layers at the
token count each one sees, attention's two products, the patch embedding; 2 FLOPs per multiply-add; backward
= 2x forward), over the step time, over the GPU's dense bf16 peak (``--peak-tflops`` overrides the table).
The "ceiling" line times the MAE step's own linear layers alone (forward, at their token counts), bf16 against
fp32: the most bf16 can give, and on a GPU how close plain GEMMs of these shapes come to the peak.

    python benchmarks/bench_pretrain.py --quick                              # tiny ViT, 1 round: a smoke test
    python benchmarks/bench_pretrain.py --device cpu --threads 2 --json cpu.json
        # fp32; MAE ViT-B/16 at 224, batch 8; DINO ViT-S/16 and ViT-B/16, batch 4, 4 local crops; 3 rounds
    python benchmarks/bench_pretrain.py --device cuda --json gpu.json
        # bf16 autocast, SDPA flash kernel forced; MAE ViT-B/16 and ViT-L/16 at 224, batch 128;
        # DINO ViT-S/16 and ViT-B/16, batch 64, 8 local crops; 10 rounds (add --compile for torch.compile)
    python benchmarks/bench_pretrain.py --mae-models vit_l --mae-variants mae+adamw --dino-models --batch 256
        # on the GPU: the MFU step alone, at a batch where the full-token variant would not fit

The CPU default is fp32: bf16 autocast only pays on CPUs with AVX512-BF16 or AMX (the ceiling line shows
what it can give). A forced SDPA kernel that cannot run a step (flash in fp32) stops the run with PyTorch's
"No available kernel" error, so a finished run with ``SDPA kernel flash`` ran every attention through flash.

Targets (issue acceptance): ``masked`` / ``full`` at most 0.45x the time and 0.6x the step's peak memory;
MAE pre-training of ViT-L/16 at 224 in bf16 through flash attention at least 40% MFU. Not a test: run it by hand
on a quiet machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack

import torch
from benchcommon import interleaved_times, reset_cpu_peak, status_kb

MASK_RATIO = 0.75
# (registered backbone, overrides) per model key
MAE_MODELS = {
    "vit_t": ("vit_tiny_patch16", {}),
    "vit_b": ("retfound_cfp", {"embed_dim": 768, "depth": 12, "num_heads": 12}),
    "vit_l": ("retfound_cfp", {}),
}
DINO_MODELS = {
    "vit_t": ("vit_tiny_patch16", {}),
    "vit_s": ("dinov3_vits16", {}),
    "vit_b": ("dinov3_vitb16", {}),
}
MAE_VARIANTS = ("full", "masked", "mae", "mae+adamw")
QUICK_DECODER = {"decoder_dim": 128, "decoder_depth": 2, "decoder_heads": 4}
# dense bf16 peak, TFLOP/s, by a substring of torch.cuda.get_device_name() (first match wins)
BF16_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("H800", 989.4),
                    ("GH200", 989.4), ("A100", 312.0), ("L40S", 362.1), ("A10G", 70.0), ("L4", 121.0))  # fmt: skip
SDPA = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "math": "MATH", "cudnn": "CUDNN_ATTENTION"}


# -- memory --------------------------------------------------------------------------------------------------


def measure_memory(step: Callable[[], None], device: str) -> dict:
    """Bytes one call of ``step`` adds at its peak over what is allocated before it, and the absolute peak."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"step_bytes": peak - base, "peak_bytes": peak, "reset": True}
    reset = reset_cpu_peak()
    base = status_kb("VmRSS:") * 1024
    step()
    peak = status_kb("VmHWM:") * 1024
    return {"step_bytes": max(0, peak - base), "peak_bytes": peak, "reset": reset}


# -- steps ---------------------------------------------------------------------------------------------------


def contexts(cfg: dict) -> Callable[[], ExitStack]:
    """Autocast (bf16) and the forced SDPA kernel, as one context factory."""

    def make() -> ExitStack:
        stack = ExitStack()
        if cfg["precision"] == "bf16":
            stack.enter_context(torch.autocast(device_type=cfg["device"], dtype=torch.bfloat16))
        if cfg["sdpa"] != "auto":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel([getattr(SDPBackend, SDPA[cfg["sdpa"]])]))
        return stack

    return make


def _adamw(params, device: str, **kw) -> torch.optim.AdamW:
    return torch.optim.AdamW([p for p in params if p.requires_grad], fused=device == "cuda", **kw)


def _prime(opt: torch.optim.Optimizer) -> None:
    """Make the AdamW moments now (zero gradients), so that they count as persistent state, not as a step's."""
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)


def _compile(fn, cfg: dict):
    return torch.compile(fn) if cfg["compile"] else fn


def mae_group(cfg: dict) -> dict:
    """The MAE model, its input and one closure per variant."""
    import medvit
    from medvit.ssl.mae import MaskedAutoencoder, random_masking

    device, b, s = cfg["device"], cfg["batch"], cfg["img_size"]
    name, over = MAE_MODELS[cfg["model"]]
    torch.manual_seed(0)
    bb = medvit.create_backbone(name, img_size=(s, s), **over)
    mae = MaskedAutoencoder(bb, **(QUICK_DECODER if cfg["quick"] else {"preset": "mae"})).to(device).train()
    x = torch.randn(b, 3, s, s, device=device)
    n = math.prod(bb.grid)
    opt = _adamw(mae.parameters(), device, lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
    ctx = contexts(cfg)

    def encode_masked(images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        tokens, _, rope = bb.prepare_tokens(images, keep=keep)
        return bb.forward_tokens(tokens, rope)[0]

    encode_full, encode_masked, run_mae = (_compile(f, cfg) for f in (bb.forward_features, encode_masked, mae))

    def full() -> None:
        with ctx():
            out = encode_full(x)
        out.float().pow(2).mean().backward()
        opt.zero_grad(set_to_none=True)

    def masked() -> None:
        keep = random_masking(b, n, MASK_RATIO, device=device)[0]
        with ctx():
            out = encode_masked(x, keep)
        out.float().pow(2).mean().backward()
        opt.zero_grad(set_to_none=True)

    def whole(*, step: bool) -> Callable[[], None]:
        def run() -> None:
            with ctx():
                loss = run_mae(x, mask_ratio=MASK_RATIO, norm_pix_loss=True)["loss"]
            loss.backward()
            if step:
                opt.step()
            opt.zero_grad(set_to_none=True)

        return run

    def forward() -> None:  # eager, for the shape hooks
        with ctx():
            mae(x, mask_ratio=MASK_RATIO, norm_pix_loss=True)

    steps = {"full": full, "masked": masked, "mae": whole(step=False), "mae+adamw": whole(step=True)}
    return {"model": mae, "opt": opt, "steps": steps, "forward": forward}


def dino_group(cfg: dict) -> dict:
    """Student, EMA teacher, losses and the one DINO + iBOT training step, as ``DINOTask`` runs it."""
    import medvit
    from medvit.ssl.crops import multi_crop
    from medvit.ssl.dino import DINOLoss, IBOTPatchLoss, block_masks, ema_update
    from medvit.ssl.student import DINOStudent

    device, b, s = cfg["device"], cfg["batch"], cfg["img_size"]
    name, over = DINO_MODELS[cfg["model"]]
    torch.manual_seed(0)
    bb = medvit.create_backbone(name, img_size=(s, s), **over)
    k = cfg["prototypes"]
    student = DINOStudent(bb, prototypes=k, hidden_dim=2048, bottleneck_dim=256).to(device).train()
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    dino_loss, ibot_loss = DINOLoss(k).to(device), IBOTPatchLoss(k).to(device)
    opt = _adamw(student.parameters(), device, lr=5e-4, weight_decay=0.04)
    patch = bb.patch_size[0]
    local = max(patch, round(s * 96 / 224 / patch) * patch)
    x = torch.randn(b, 3, s, s, device=device)
    n_local, temp, momentum = cfg["n_local"], 0.07, 0.996
    ctx = contexts(cfg)
    run_student, run_teacher = _compile(student, cfg), _compile(teacher, cfg)

    def step() -> None:
        globals_, locals_ = multi_crop(x, global_size=(s, s), local_size=(local, local), n_local=n_local)
        g = torch.cat(globals_)
        grid = bb.patch_embed.grid(g.shape[2:])
        masks = block_masks(2 * b, grid, ratio_range=(0.1, 0.5), probability=0.5).to(device)
        with ctx():
            with torch.no_grad():
                t = run_teacher(g)
                t_cls = list(t["cls_logits"].float().chunk(2))
            out = run_student(g, mask=masks)
            s_cls = list(out["cls_logits"].float().chunk(2))
            if locals_:
                s_cls += list(run_student(torch.cat(locals_))["cls_logits"].float().chunk(len(locals_)))
            loss = dino_loss(s_cls, t_cls, temp)
            dino_loss.update_center(torch.cat(t_cls))
            if masks.any():
                with torch.no_grad():
                    t_patch = teacher.patch_head(t["patches"][masks]).float()
                s_patch = student.patch_head(out["patches"][masks]).float()
                counts = masks.sum(dim=1, keepdim=True).clamp_min(1).float()
                weights = (1.0 / counts).expand_as(masks)[masks]
                n_images = int(masks.any(dim=1).sum())
                loss = loss + ibot_loss(s_patch, t_patch, temp, weights=weights, n_images=n_images)
                ibot_loss.update_center(t_patch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema_update(teacher, student, momentum)

    return {"model": student, "opt": opt, "steps": {"dino": step}, "local": local}


GROUPS = {"mae": mae_group, "dino": dino_group}


# -- FLOPs and the ceiling -----------------------------------------------------------------------------------


def _block_macs(blocks, tokens: int) -> int:
    """Multiply-adds of ``blocks`` on one sample of ``tokens`` tokens: linear layers + attention's QK^T and AV."""
    total = 0
    for blk in blocks:
        linear = sum(m.in_features * m.out_features for m in blk.modules() if isinstance(m, torch.nn.Linear))
        total += tokens * linear + 2 * tokens * tokens * blk.attn.num_heads * blk.attn.head_dim
    return total


def mae_flops(mae, batch: int) -> dict[str, float]:
    """Training FLOPs (forward + backward = 3x forward, 2 per multiply-add) of each MAE variant's step."""
    bb = mae.backbone
    n, p = math.prod(bb.grid), bb.num_prefix_tokens
    kept = max(1, int(round(n * (1.0 - MASK_RATIO))))
    proj = bb.patch_embed.proj
    embed = n * proj.in_channels * math.prod(proj.kernel_size) * proj.out_channels  # on every patch
    dec_dim = mae.decoder_embed.out_features
    decoder = (
        (p + kept) * bb.embed_dim * dec_dim
        + _block_macs(mae.decoder_blocks, p + n)
        + n * dec_dim * mae.decoder_pred.out_features
    )
    masked = embed + _block_macs(bb.blocks, p + kept)
    macs = {"full": embed + _block_macs(bb.blocks, p + n), "masked": masked, "mae": masked + decoder}
    macs["mae+adamw"] = macs["mae"]
    return {k: 2 * 3 * batch * v for k, v in macs.items()}


def linear_calls(model, run: Callable[[], None]) -> list[tuple[int, int, int]]:
    """``(tokens, in, out)`` of every ``nn.Linear`` call one forward of ``run`` makes."""
    calls: list[tuple[int, int, int]] = []

    def hook(m, args, out) -> None:
        calls.append((args[0].numel() // m.in_features, m.in_features, m.out_features))

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return calls


def gemm_ceiling(calls: list[tuple[int, int, int]], device: str, *, iters: int) -> dict[str, float]:
    """TFLOP/s of those linear layers alone (``F.linear`` on random data) in fp32 and bf16, and their ratio."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    flops = sum(2 * t * i * o for t, i, o in calls)
    out = {}
    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        args = [(torch.randn(t, i, device=device, dtype=dtype), torch.randn(o, i, device=device, dtype=dtype))
                for t, i, o in calls]  # fmt: skip
        best = math.inf
        for r in range(iters + 1):
            sync()
            t0 = time.perf_counter()
            for a, w in args:
                torch.nn.functional.linear(a, w)
            sync()
            if r:  # the first is a warm-up
                best = min(best, time.perf_counter() - t0)
        out[f"{label}_tflops"] = flops / best / 1e12
        del args
    out["bf16_over_fp32"] = out["bf16_tflops"] / out["fp32_tflops"]
    return out


def bf16_peak(device: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override * 1e12, f"{override:g} TFLOP/s (--peak-tflops)"
    if device != "cuda":
        return None, "no peak for a CPU (give --peak-tflops)"
    name = torch.cuda.get_device_name()
    for key, tflops in BF16_PEAK_TFLOPS:
        if key in name:
            return tflops * 1e12, f"{tflops:g} TFLOP/s dense bf16 ({name})"
    return None, f"unknown GPU {name!r} (give --peak-tflops)"


# -- timing --------------------------------------------------------------------------------------------------


def timeit(
    fns: dict[str, Callable[[], None]], *, warmup: int, repeats: int, device: str
) -> dict[str, list[float]]:
    """Seconds per call of each function, the calls interleaved: every function once per round."""
    return interleaved_times(fns, warmup=warmup, repeats=repeats, device=device)


def run_child(cfg: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--_child", json.dumps(cfg)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"{cfg['group']} {cfg['model']} {cfg['variant']} child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(cfg: dict) -> None:
    """One variant's memory in a fresh process (CPU): build, make the AdamW moments, then one measured step."""
    torch.set_num_threads(cfg["threads"])
    group = GROUPS[cfg["group"]](cfg)
    _prime(group["opt"])
    print(json.dumps(measure_memory(group["steps"][cfg["variant"]], cfg["device"])))


def bench_group(kind: str, cfg: dict, args) -> list[dict]:
    group = GROUPS[kind](cfg)
    _prime(group["opt"])
    steps = {k: v for k, v in group["steps"].items() if kind != "mae" or k in args.mae_variants}
    flops = mae_flops(group["model"], cfg["batch"]) if kind == "mae" else {}
    rows = []
    if kind == "mae":
        calls = linear_calls(group["model"], group["forward"])
        ceiling = gemm_ceiling(calls, cfg["device"], iters=3 if args.quick else 10)
        print(
            f"{kind} {cfg['model']}: ceiling, the MAE step's own linear layers alone (forward): "
            f"fp32 {ceiling['fp32_tflops']:.2f}, bf16 {ceiling['bf16_tflops']:.2f} TFLOP/s, "
            f"bf16 / fp32 {ceiling['bf16_over_fp32']:.2f}x",
            flush=True,
        )
        rows.append({"group": kind, "model": cfg["model"], "variant": "ceiling", **ceiling})
    times = timeit(steps, warmup=args.warmup, repeats=args.repeats, device=cfg["device"])
    for variant, t in times.items():
        if cfg["device"] == "cuda":
            mem = measure_memory(steps[variant], "cuda")
        else:
            mem = run_child({**cfg, "group": kind, "variant": variant})
        row = {"group": kind, "model": cfg["model"], "variant": variant, "batch": cfg["batch"],
               "min_s": min(t), "median_s": statistics.median(t), "times_s": t, **mem}  # fmt: skip
        if variant in flops:
            row["flops"] = flops[variant]
        if kind == "dino":
            row.update(n_local=cfg["n_local"], local_size=group["local"], prototypes=cfg["prototypes"])
        rows.append(row)
    del group, steps
    if cfg["device"] == "cuda":
        torch.cuda.empty_cache()
    return rows


# -- report --------------------------------------------------------------------------------------------------


def _verdict(value: float, limit: float, *, at_most: bool = True) -> str:
    ok = value <= limit if at_most else value >= limit
    return f"target {'<=' if at_most else '>='} {limit:g}: {'met' if ok else 'NOT met'}"


def report(rows: list[dict], peak: float | None, device: str) -> list[str]:
    mib = 2**20
    timed = [r for r in rows if "min_s" in r]
    full = {r["model"]: r for r in timed if r["group"] == "mae" and r["variant"] == "full"}
    header = (f"{'group':<5} {'model':<6} {'variant':<10} {'batch':>5} {'ms min':>9} {'ms med':>9} {'x full':>7} "
              f"{'step MiB':>9} {'x full':>7} {'peak MiB':>9} {'TFLOP/s':>8} {'MFU':>6}")  # fmt: skip
    print(header)
    print("-" * len(header))
    verdicts = []
    for r in timed:
        ref = full.get(r["model"]) if r["group"] == "mae" else None
        if ref:
            r["time_x_full"] = r["min_s"] / ref["min_s"]
            r["memory_x_full"] = r["step_bytes"] / max(ref["step_bytes"], 1)
        r["tflops"] = r["flops"] / r["min_s"] / 1e12 if "flops" in r else None
        r["mfu"] = r["flops"] / r["min_s"] / peak if r["tflops"] and peak else None
        cells = [f"{1e3 * r['min_s']:>9.1f}", f"{1e3 * r['median_s']:>9.1f}",
                 f"{r['time_x_full']:>7.2f}" if ref else " " * 7, f"{r['step_bytes'] / mib:>9.0f}",
                 f"{r['memory_x_full']:>7.2f}" if ref else " " * 7, f"{r['peak_bytes'] / mib:>9.0f}",
                 f"{r['tflops']:>8.2f}" if r["tflops"] else " " * 8,
                 f"{100 * r['mfu']:>5.1f}%" if r["mfu"] else " " * 6]  # fmt: skip
        print(f"{r['group']:<5} {r['model']:<6} {r['variant']:<10} {r['batch']:>5} " + " ".join(cells))
        if ref and r["variant"] == "masked":
            t, m = r["time_x_full"], r["memory_x_full"]
            verdicts.append(
                f"MAE {r['model']}: encoder on the visible quarter / on every token: time {t:.2f}x "
                f"({_verdict(t, 0.45)}), step memory {m:.2f}x ({_verdict(m, 0.6)})"
            )
        if ref and r["variant"] == "mae":
            verdicts.append(
                f"MAE {r['model']}: whole MAE step (its decoder on every token included) / the full-token "
                f"encoder alone: time {r['time_x_full']:.2f}x, step memory {r['memory_x_full']:.2f}x "
                "(not like for like)"
            )
        if r["variant"] == "mae+adamw" and r["mfu"]:
            target = f" ({_verdict(r['mfu'], 0.4, at_most=False)})" if r["model"] == "vit_l" else ""
            verdicts.append(f"MAE {r['model']}: MFU of a whole pre-training step {100 * r['mfu']:.1f}%{target}")
        if r["group"] == "dino":
            verdicts.append(
                f"DINO {r['model']}: {1e3 * r['min_s'] / r['batch']:.1f} ms and "
                f"{r['step_bytes'] / mib / r['batch']:.0f} MiB per image (step {1e3 * r['min_s']:.0f} ms, "
                f"{r['step_bytes'] / mib:.0f} MiB at batch {r['batch']}; 2 global + {r['n_local']} local "
                f"{r['local_size']} px crops, {r['prototypes']} prototypes)"
            )
    for line in verdicts:
        print(line)
    if device == "cpu" and any(not r.get("reset", True) for r in timed):
        print("note: /proc/self/clear_refs was not writable: CPU step memory includes the build's peak")
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="ViT-Ti, batch 2, small decoder and head, 1 round")
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"]
    )
    parser.add_argument("--precision", choices=["fp32", "bf16"], help="bf16 = autocast (default: bf16 on cuda)")
    parser.add_argument("--sdpa", choices=["auto", *SDPA], help="SDPA kernel (default: flash on cuda + bf16)")
    parser.add_argument("--mae-models", nargs="*", choices=list(MAE_MODELS), help="cpu: vit_b; cuda: vit_b vit_l")
    parser.add_argument("--mae-variants", nargs="+", choices=MAE_VARIANTS, default=list(MAE_VARIANTS))
    parser.add_argument("--dino-models", nargs="*", choices=list(DINO_MODELS), help="default vit_s vit_b")
    parser.add_argument("--batch", type=int, help="MAE batch (cpu 8, cuda 128)")
    parser.add_argument("--dino-batch", type=int, help="DINO batch (cpu 4, cuda 64)")
    parser.add_argument("--n-local", type=int, help="DINO local crops (cpu 4, cuda 8)")
    parser.add_argument("--prototypes", type=int, help="DINO head prototypes (65536)")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, help="timed rounds (cpu 3, cuda 10)")
    parser.add_argument("--warmup", type=int, help="untimed rounds first (cpu 1, cuda 3)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models' forward")
    parser.add_argument("--peak-tflops", type=float, help="bf16 dense peak of the accelerator, for MFU")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        child(json.loads(args._child))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    precision = args.precision or ("bf16" if cuda else "fp32")
    sdpa = args.sdpa or ("flash" if cuda and precision == "bf16" else "auto")

    def pick(value, quick, on_cuda, on_cpu):
        """The option as given, else its default under --quick, on cuda or on the cpu."""
        if value is not None:
            return value
        return quick if args.quick else on_cuda if cuda else on_cpu

    mae_models = pick(args.mae_models, ["vit_t"], ["vit_b", "vit_l"], ["vit_b"])
    dino_models = pick(args.dino_models, ["vit_t"], ["vit_s", "vit_b"], ["vit_s", "vit_b"])
    batch, dino_batch = pick(args.batch, 2, 128, 8), pick(args.dino_batch, 2, 64, 4)
    n_local, prototypes = pick(args.n_local, 2, 8, 4), pick(args.prototypes, 4096, 65536, 65536)
    args.repeats, args.warmup = pick(args.repeats, 1, 10, 3), pick(args.warmup, 1, 3, 1)
    if min(batch, dino_batch, args.repeats) < 1 or n_local < 0 or args.warmup < 0:
        raise SystemExit("--batch, --dino-batch and --repeats must be >= 1; --n-local and --warmup >= 0")
    peak, peak_text = bf16_peak(args.device, args.peak_tflops)
    where = torch.cuda.get_device_name() if cuda else (platform.processor() or platform.machine())
    print(
        f"torch {torch.__version__}, {where}, device {args.device}, threads {torch.get_num_threads()}, "
        f"{precision}{' autocast' if precision == 'bf16' else ''}, SDPA kernel {sdpa}"
        f"{' (forced: a step it cannot run fails)' if sdpa != 'auto' else ' (PyTorch picks)'}, "
        f"img {args.img_size}, warm-up {args.warmup}, rounds {args.repeats}"
        f"{', compiled' if args.compile else ''}; peak: {peak_text}",
        flush=True,
    )
    base = {"device": args.device, "precision": precision, "sdpa": sdpa, "img_size": args.img_size,
            "quick": args.quick, "compile": args.compile, "threads": torch.get_num_threads()}  # fmt: skip
    rows: list[dict] = []
    for model in mae_models:
        rows += bench_group("mae", {**base, "model": model, "batch": batch}, args)
    for model in dino_models:
        cfg = {**base, "model": model, "batch": dino_batch, "n_local": n_local, "prototypes": prototypes}
        rows += bench_group("dino", cfg, args)
    verdicts = report(rows, peak, args.device)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"config": {**base, "peak": peak_text, "repeats": args.repeats, "warmup": args.warmup},
                       "results": rows, "verdicts": verdicts}, fh, indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
