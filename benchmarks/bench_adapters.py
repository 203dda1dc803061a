"""Forward+backward time and peak memory of FunduSegmenter (RETFound ViT-L/16) and CellVTA (UNI ViT-L/16).

Random weights, 256x256 inputs, batch 4 by default; fp32 and bf16 autocast; CPU, and CUDA when available.
Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the growth of the process's peak resident
set (``VmHWM``, reset through ``/proc/self/clear_refs`` where allowed) over the resident size before the step.

    python benchmarks/bench_adapters.py            # full settings
    python benchmarks/bench_adapters.py --quick    # batch 1, 1 timed iteration, 12 of the 24 blocks
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from benchcommon import reset_cpu_peak, status_kb


def build(name: str, depth: int | None):
    from medvit.backbones import create_backbone
    from medvit.heads import CellVTA, FunduSegmenter

    over = {"depth": depth} if depth else {}
    if name == "funduseg":
        return FunduSegmenter(create_backbone("retfound_cfp", **over), 3)
    return CellVTA(create_backbone("uni_vitl16", img_size=256, **over))


def loss_of(out) -> torch.Tensor:
    if isinstance(out, dict):
        return sum(v.float().mean() for v in out.values())
    return out.float().mean()


def bench(model, x, *, device: str, bf16: bool, iters: int, warmup: int) -> dict:
    ctx = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16)

    def step():
        with ctx:
            out = model(x)
        loss_of(out).backward()
        model.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_cpu_peak()
        base = status_kb("VmRSS:") * 1024
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = status_kb("VmHWM:") * 1024
    secs = (time.perf_counter() - t0) / iters
    return {
        "s_per_iter": round(secs, 3),
        "peak_mib": round(peak / 2**20),
        "peak_over_start_mib": round((peak - base) / 2**20),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="batch 1, 1 iteration, 12 blocks")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--models", default="funduseg,cellvta")
    ap.add_argument("--devices", default="cpu,cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch or (1 if args.quick else 4)
    iters = args.iters or (1 if args.quick else 3)
    depth = 12 if args.quick else None
    devices = [d for d in args.devices.split(",") if d == "cpu" or torch.cuda.is_available()]
    results = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = build(name, depth).train()
        from medvit.layers.params import count_parameters

        trainable, total = count_parameters(model)
        for device in devices:
            model.to(device)
            x = torch.randn(batch, 3, args.size, args.size, device=device)
            for bf16 in (False, True):
                r = bench(model, x, device=device, bf16=bf16, iters=iters, warmup=1)
                row = dict(model=name, device=device, dtype="bf16-autocast" if bf16 else "fp32", batch=batch,
                           size=args.size, blocks=depth or 24, trainable=trainable, total=total, **r)  # fmt: skip
                print(json.dumps(row), flush=True)
                results.append(row)
        model.to("cpu")
        del model


if __name__ == "__main__":
    main()
