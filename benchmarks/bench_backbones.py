"""Side-by-side speed of medvit backbones and the ``transformers`` reference implementations.

Times forward and forward+backward of ``dinov3_vitb16`` (vs ``DINOv3ViTModel``) and ``retfound_cfp``
(ViT-L/16, vs ``ViTModel`` with LayerNorm eps 1e-6) at 224, in float32 and under bf16 autocast, in one run,
alternating the two implementations so that both see the same machine state. Prints a table with the
median and the minimum time per iteration, the ratio medvit / reference of each (<= 1.0 means medvit is
no slower) and medvit's bf16 speed-up over its own float32. On a shared machine the minimum is the
steadier figure: other processes only ever add time.

    python benchmarks/bench_backbones.py [--quick] [--batch 1] [--device cpu|cuda] [--json out.json]

Not a test: run it by hand on the machine you care about. On CUDA, bf16 runs through SDPA's flash kernel.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from collections.abc import Callable
from contextlib import nullcontext

import torch
from benchcommon import interleaved_times

import medvit


def reference(name: str):
    """The transformers model with the same architecture as the medvit backbone."""
    import transformers

    if name == "dinov3_vitb16":
        cfg = transformers.DINOv3ViTConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            num_register_tokens=4,
            patch_size=16,
            image_size=224,
            layerscale_value=1e-5,
        )
        cfg._attn_implementation = "sdpa"
        return transformers.DINOv3ViTModel(cfg)
    cfg = transformers.ViTConfig(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        image_size=224,
        patch_size=16,
        layer_norm_eps=1e-6,
        qkv_bias=True,
    )
    cfg._attn_implementation = "sdpa"
    return transformers.ViTModel(cfg, add_pooling_layer=False)


def gemm_ceiling(model, batch: int, device: str, *, iters: int) -> float:
    """bf16 / fp32 throughput of the model's own linear layers alone (tokens x in -> out, as ``F.linear`` runs
    them): the most bf16 autocast can give a model whose time is all in those layers. On a CPU with AVX-512
    BF16 but no AMX (Zen 4) bf16 does two multiply-adds per 32-bit lane where fp32 does one, so this is near
    2x, not the 3-4x of AMX parts."""
    patch = model.patch_size if isinstance(model.patch_size, int) else model.patch_size[0]
    tokens = batch * (model.num_prefix_tokens + (224 // patch) ** 2)
    shapes = sorted({(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)})

    def layers(dtype: torch.dtype) -> Callable[[], None]:
        pairs = [
            (torch.randn(tokens, k, device=device, dtype=dtype), torch.randn(n, k, device=device, dtype=dtype))
            for k, n in shapes
        ]

        def run() -> None:
            for x, w in pairs:
                torch.nn.functional.linear(x, w)

        return run

    fns = {"fp32": layers(torch.float32), "bf16": layers(torch.bfloat16)}
    t = timeit(fns, warmup=1, iters=iters, device=device, ctx=torch.no_grad)
    return t["fp32"][1] / t["bf16"][1]


def step_fn(model, x: torch.Tensor, *, backward: bool, is_medvit: bool) -> Callable[[], None]:
    def run() -> None:
        if backward:
            out = model.forward_features(x) if is_medvit else model(pixel_values=x).last_hidden_state
            out.float().mean().backward()
            for p in model.parameters():
                p.grad = None
        else:
            with torch.no_grad():
                model.forward_features(x) if is_medvit else model(pixel_values=x)

    return run


def timeit(
    fns: dict[str, Callable[[], None]], *, warmup: int, iters: int, device: str, ctx
) -> dict[str, tuple[float, float]]:
    """(median, minimum) seconds per call of each function, calls interleaved."""
    times = interleaved_times(fns, warmup=warmup, repeats=iters, device=device, ctx=ctx)
    return {k: (statistics.median(v), min(v)) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (1 warm-up, 3 timed)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=["dinov3_vitb16", "retfound_cfp"])
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    warmup, iters = (1, 3) if args.quick else (2, 7)
    device = args.device
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, device {device}, "
        f"threads {torch.get_num_threads()}, batch {args.batch}, warm-up {warmup}, iterations {iters}"
    )
    amp = lambda: torch.autocast(device_type=device, dtype=torch.bfloat16)  # noqa: E731
    results = []
    header = (
        f"{'model':<14} {'mode':<22} {'medvit ms (med/min)':>20} {'reference ms (med/min)':>23} "
        f"{'ratio med/min':>14} {'bf16 speed-up med/min':>22}"
    )
    print(header)
    print("-" * len(header))
    for name in args.models:
        torch.manual_seed(0)
        ours = medvit.create_backbone(name).to(device).eval()
        ref = reference(name).to(device).eval()
        x = torch.randn(args.batch, 3, 224, 224, device=device)
        own_fp32: dict[bool, tuple[float, float]] = {}
        ceiling = gemm_ceiling(ours, args.batch, device, iters=5 * iters)
        print(f"{name:<14} bf16 / fp32 throughput of its linear layers alone: {ceiling:.2f}x")
        for precision, ctx in (("fp32", nullcontext), ("bf16 autocast", amp)):
            for backward in (False, True):
                fns = {
                    "medvit": step_fn(ours, x, backward=backward, is_medvit=True),
                    "reference": step_fn(ref, x, backward=backward, is_medvit=False),
                }
                t = timeit(fns, warmup=warmup, iters=iters, device=device, ctx=ctx)
                mode = f"{precision} {'fwd+bwd' if backward else 'fwd'}"
                ours_t, ref_t = t["medvit"], t["reference"]
                ratio = (ours_t[0] / ref_t[0], ours_t[1] / ref_t[1])
                speedup = None
                if precision == "fp32":
                    own_fp32[backward] = ours_t
                else:
                    speedup = (own_fp32[backward][0] / ours_t[0], own_fp32[backward][1] / ours_t[1])
                speed = f"{speedup[0]:.2f}x / {speedup[1]:.2f}x" if speedup else ""
                print(
                    f"{name:<14} {mode:<22} {1e3 * ours_t[0]:>9.0f} /{1e3 * ours_t[1]:>8.0f}  "
                    f"{1e3 * ref_t[0]:>11.0f} /{1e3 * ref_t[1]:>9.0f}  "
                    f"{ratio[0]:>6.2f} /{ratio[1]:>5.2f}  {speed:>22}"
                )
                results.append(
                    {
                        "model": name,
                        "mode": mode,
                        "medvit_s_median_min": ours_t,
                        "reference_s_median_min": ref_t,
                        "ratio_median_min": ratio,
                        "bf16_speedup_vs_own_fp32_median_min": speedup,
                        "bf16_gemm_ceiling": ceiling,
                    }
                )
        del ours, ref
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": device, "batch": args.batch, "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
