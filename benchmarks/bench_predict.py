"""Whole ``medvit predict`` against MONAI's ``sliding_window_inference`` on a CT-like volume.

One run takes the quick-start network (``pipelines/quickstart.yaml``: 3D ViT-Ti, 8^3 patches, embed 96,
depth 4, 3 heads, UNETR feature size 16, window 32^3 at 2 mm, HU window -175..250): the package a
``medvit run pipelines/quickstart.yaml`` wrote (``--package``), or that network with seeded random weights
(or a run's ``--checkpoint``). It writes a 256x256x160 CT-like NIfTI (int16, LPS, 1.5 x 1.5 x 2 mm, so
preprocessing reorients and resamples it): by default (``--volume synthetic``) cases of the quick start's own
data at their training size tiled over the volume, so the model sees what it learnt; with ``--volume ood`` a
body with lungs, spine and organ sizes it never saw, where the model is unsure nearly everywhere (its mask then
scores about 0.2 Dice against the truth, and bf16 flips many of its near-ties). Then, each in its own child
process so that memory figures are independent:

* **MONAI fp32**: read and preprocess (not timed), then ``sliding_window_inference`` (Gaussian, same window,
  overlap and windows per batch) timed alone; peak RSS read right after it.
* **MONAI bf16**: the same under ``torch.autocast`` in bf16, a second reference.
* **medvit**, once per engine (``--engines``; default torch fp32, torch bf16, onnxruntime fp32 and openvino
  fp32 when OpenVINO is installed): ``Predictor(..., engine=...).predict(path)`` and the NIfTI written: read,
  preprocess, sliding window, inversion to the input grid, write, all timed; peak RSS at the end. The ONNX
  export the runtime engines use is made once before the timed runs (``$MEDVIT_CACHE`` in the work folder).

It prints the times (minimum and median over ``--repeat`` runs, the runs interleaved: every variant once per
round), each over MONAI fp32 and bf16, peak RSS of each (and above the process's RSS once torch, MONAI and the
model were loaded), the Dice of each medvit mask against MONAI's fp32 mask (taken back to the input grid with
MONAI's ``Invertd``) and, for the synthetic volume, the masks' Dice against the truth.

    python benchmarks/bench_predict.py --package runs/quickstart/<run>/package [--threads 2] [--json out.json]
    python benchmarks/bench_predict.py --shape 128 128 80   # random weights, a quick look
    python benchmarks/bench_predict.py --engines torch:bf16,onnxruntime --repeat 3

Targets (issue #6): medvit's whole predict at most 0.5x MONAI's fp32 inference alone, Dice >= 0.99,
peak memory at most 1.2x MONAI's. Not a test: run it by hand on the machine you care about.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def quickstart_spec(args) -> dict:
    roi = list(args.roi)
    return dict(
        name="quickstart_bench",
        task="segmentation",
        labels={0: "background", 1: "liver_like", 2: "kidney_like"},
        model=dict(
            backbone=dict(
                name="vit_tiny_patch8_3d",
                img_size=roi,
                options=dict(embed_dim=args.embed_dim, depth=args.depth, num_heads=args.heads),
            ),
            head=dict(name="unetr", options=dict(feature_size=args.feature_size)),
            num_classes=3,
        ),
        preprocessing=dict(
            spatial_dims=3,
            in_channels=1,
            orientation="RAS",
            spacing=list(args.model_spacing),
            intensity=dict(kind="window", a_min=-175, a_max=250),
        ),
        inference=dict(mode="sliding_window", roi_size=roi, overlap=args.overlap, sw_batch_size=args.batch_size),
    )


def _lps_affine(shape, spacing) -> np.ndarray:
    """LPS, as DICOM-derived NIfTI often is (so preprocessing reorients as well as resamples), centred."""
    c = np.array(shape) / 2
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [c[0] * spacing[0], c[1] * spacing[1], -c[2] * spacing[2]]
    return affine


def synthetic_case(path: Path, shape, spacing, seed: int = 0) -> np.ndarray:
    """The quick start's own data at ``shape``: cases of the ``synthetic_ct`` set at their training size
    (64x64x48, so organs have the size the model learnt) tiled to fill the volume, air around them. Returns the
    ground-truth labels."""
    import nibabel as nib

    from medvit.data.synthetic import DEFAULT_SIZES, ct_case

    rng = np.random.default_rng(seed)
    tile = DEFAULT_SIZES["ct3d"]
    vol = np.full(shape, -1000, np.int16)
    truth = np.zeros(shape, np.uint8)
    for corner in itertools.product(*(range(0, s - t + 1, t) for s, t in zip(shape, tile, strict=True))):
        where = tuple(slice(c, c + t) for c, t in zip(corner, tile, strict=True))
        vol[where], truth[where] = ct_case(rng, tile)
    nib.save(nib.Nifti1Image(vol, _lps_affine(shape, spacing)), str(path))
    return truth


def ct_like(path: Path, shape, spacing, seed: int = 0) -> None:
    """An out-of-distribution CT-like volume in HU: air, an elliptic body at 40 HU (the quick start trained on
    0 HU), lungs, a liver-like organ at 60 HU, two kidney-like organs and a spine at 700 HU (neither seen in
    training)."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    x, y, z = np.ogrid[: shape[0], : shape[1], : shape[2]]
    c = np.array(shape) / 2
    vol = np.full(shape, -1000, np.int16)

    def ell(centre, radii):
        return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + (
            (z - centre[2]) / radii[2]
        ) ** 2 <= 1

    body = ((x - c[0]) / (0.42 * shape[0])) ** 2 + ((y - c[1]) / (0.32 * shape[1])) ** 2 <= 1
    body = np.broadcast_to(body, shape)
    vol[body] = 40
    sx, sy, sz = shape
    for side in (-1, 1):
        lung = ell((c[0] + side * 0.2 * sx, c[1], 0.75 * sz), (0.13 * sx, 0.2 * sy, 0.3 * sz))
        vol[lung & body] = -850
        kidney = ell((c[0] + side * 0.18 * sx, c[1] + 0.12 * sy, 0.35 * sz), (0.05 * sx, 0.04 * sy, 0.08 * sz))
        vol[kidney & body] = 160
    liver = ell((c[0] - 0.12 * sx, c[1] - 0.02 * sy, 0.45 * sz), (0.17 * sx, 0.15 * sy, 0.18 * sz))
    vol[liver & body] = 60
    spine = ((x - c[0]) / (0.04 * shape[0])) ** 2 + ((y - c[1] - 0.2 * shape[1]) / (0.04 * shape[1])) ** 2 <= 1
    vol[np.broadcast_to(spine, shape)] = 700
    for k in range(shape[2]):  # noise slice by slice (keeps the parent small)
        vol[:, :, k] += (rng.normal(0, 20, shape[:2]) * body[:, :, k]).astype(np.int16)
    nib.save(nib.Nifti1Image(vol, _lps_affine(shape, spacing)), str(path))


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_monai(cfg: dict) -> dict:
    import torch
    from monai.data import MetaTensor
    from monai.inferers import sliding_window_inference
    from monai.transforms import Compose, Invertd

    from medvit.io import read_image
    from medvit.package import load_package
    from medvit.transforms import preprocess_transforms

    torch.set_num_threads(cfg["threads"])
    package = load_package(cfg["package"])
    net = package.build()
    amp = cfg.get("precision") == "bf16"
    inf = package.spec.inference
    transform = Compose(preprocess_transforms(package.spec.preprocessing))
    base = _rss_mb()
    pre = transform({"image": read_image(cfg["volume"])})["image"]
    x = pre.as_tensor()[None]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        t0 = time.perf_counter()
        logits = sliding_window_inference(
            x, inf.roi_size, inf.sw_batch_size, net, overlap=inf.overlap, mode="gaussian"
        )
        seconds = time.perf_counter() - t0
    logits = logits.float()
    peak = _peak_rss_mb()
    if cfg.get("mask"):  # not timed: the fp32 mask on the input grid, through MONAI's own inversion
        probs = MetaTensor(logits[0].softmax(0), meta=dict(pre.meta))
        probs.applied_operations = list(pre.applied_operations)
        back = Invertd("pred", transform=transform, orig_keys="image", nearest_interp=False)(
            {"pred": probs, "image": pre}
        )["pred"]
        np.save(cfg["mask"], np.asarray(back.argmax(0)).astype(np.uint8))
    return {"seconds": seconds, "peak_mb": peak, "base_mb": base, "shape": list(x.shape[2:])}


def child_medvit(cfg: dict) -> dict:
    import torch

    from medvit import Predictor
    from medvit.inference.outputs import write_outputs

    torch.set_num_threads(cfg["threads"])
    t0 = time.perf_counter()
    predictor = Predictor(
        cfg["package"],
        device=cfg["device"],
        precision=cfg["precision"],
        batch_size=cfg["batch"],
        engine=cfg.get("engine", "torch"),
    )
    load = time.perf_counter() - t0
    base = _rss_mb()
    t0 = time.perf_counter()
    pred = predictor.predict(cfg["volume"])
    t1 = time.perf_counter()
    write_outputs(pred, cfg["out"], "case", ["nifti"])
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "peak_mb": _peak_rss_mb(),
        "base_mb": base,
        "load_s": load,
        "stages_s": {
            **{k: round(v, 2) for k, v in pred.timing.items()},
            "write_s": round(time.perf_counter() - t1, 2),
        },
        "precision": predictor.precision,
        "engine": predictor.engine,
        "windows": pred.windows,
        "device": str(predictor.device),
    }


def conv_ceiling(package, batch: int, *, iters: int = 3) -> dict[str, float]:
    """Throughput of the network's own convolutions alone, on the inputs one batch of windows gives them, over
    float32 in MONAI's layout (NCDHW): bf16 in that layout, and bf16 channels-last (medvit's layout on the
    CPU). The most bf16 can give a network whose time is all in convolutions."""
    import torch

    from medvit.package import load_package

    loaded = load_package(package)
    net = loaded.build().eval()
    calls: list[tuple[torch.nn.Module, torch.Tensor]] = []
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d | torch.nn.ConvTranspose3d)]
    hooks = [m.register_forward_hook(lambda m, i, o: calls.append((m, i[0]))) for m in convs]
    spec = loaded.spec
    with torch.inference_mode():
        net(torch.rand(batch, spec.preprocessing.in_channels, *spec.inference.roi_size))
    for h in hooks:
        h.remove()

    def best(amp: bool, fmt) -> float:
        args = [(m.to(memory_format=fmt), x.contiguous(memory_format=fmt)) for m, x in calls]
        seconds = float("inf")
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            for i in range(iters + 1):
                t0 = time.perf_counter()
                for module, x in args:
                    module(x)
                if i:
                    seconds = min(seconds, time.perf_counter() - t0)
        return seconds

    fp32 = best(False, torch.contiguous_format)
    return {
        "bf16": fp32 / best(True, torch.contiguous_format),
        "bf16 channels-last": fp32 / best(True, torch.channels_last_3d),
    }


def run_child(kind: str, cfg: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, json.dumps(cfg)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"{kind} child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    total = int(x.sum()) + int(y.sum())
    return 1.0 if total == 0 else 2.0 * int((x & y).sum()) / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[256, 256, 160], help="volume size (voxels)")
    parser.add_argument("--spacing", type=float, nargs=3, default=[1.5, 1.5, 2.0], help="volume spacing (mm)")
    parser.add_argument("--roi", type=int, nargs=3, default=[32, 32, 32], help="window (quick start: 32^3)")
    parser.add_argument("--model-spacing", type=float, nargs=3, default=[2.0, 2.0, 2.0], help="model grid (mm)")
    parser.add_argument("--embed-dim", type=int, default=96)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--feature-size", type=int, default=16)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=2, help="windows per forward pass (random-weight model)")
    parser.add_argument(
        "--medvit-batch-size", type=int, default=None, help="medvit's own (default: the package's)"
    )
    parser.add_argument(
        "--engines",
        default=None,
        help="medvit variants, comma-separated ENGINE[:PRECISION] (default torch:32,torch:bf16,onnxruntime and "
        "openvino when installed; runtime engines compute in float32)",
    )
    parser.add_argument(
        "--precision", default=None, help="the former single medvit run: torch at auto, 32 or bf16 (no --engines)"
    )
    parser.add_argument("--no-monai-bf16", action="store_true", help="leave out the MONAI bf16 reference")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in both (default: torch's)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of runs, every variant once per round")
    parser.add_argument(
        "--volume",
        choices=["synthetic", "ood"],
        default="synthetic",
        help="synthetic: the quick start's own cases tiled; ood: organ sizes, organs and intensities it never saw",
    )
    parser.add_argument("--package", help="a trained package instead of the seeded random quick-start network")
    parser.add_argument(
        "--checkpoint", help="quick-start weights from a medvit run's Lightning .ckpt (model. keys)"
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, cfg = args.child
        result = (child_monai if kind == "monai" else child_medvit)(json.loads(cfg))
        print(json.dumps(result))
        return

    import torch

    threads = args.threads or torch.get_num_threads()
    work = Path(tempfile.mkdtemp(prefix="bench_predict."))
    if args.package:
        package = Path(args.package)
    else:
        from medvit.models import build_model
        from medvit.package import PackageSpec, save_package

        spec = PackageSpec.model_validate(quickstart_spec(args))
        torch.manual_seed(0)
        model = build_model(spec.model)
        if args.checkpoint:
            state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
            model.load_state_dict({k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")})
        package = save_package(model, spec, work / "package")
    volume = work / "ct.nii.gz"
    truth = None
    if args.volume == "synthetic":
        truth = synthetic_case(volume, tuple(args.shape), tuple(args.spacing))
    else:
        ct_like(volume, tuple(args.shape), tuple(args.spacing))
    cfg = {"package": str(package), "volume": str(volume), "threads": threads}
    from medvit.device import cpu_has_bf16
    from medvit.package import load_package

    spec = load_package(package).spec
    inf = spec.inference
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, cpu bf16 {cpu_has_bf16()}, "
        f"threads {threads}, {args.volume} volume {'x'.join(map(str, args.shape))} at {args.spacing} mm; "
        f"model {spec.name} "
        f"at {spec.preprocessing.spacing} mm, window {'x'.join(map(str, inf.roi_size))}, overlap {inf.overlap}, "
        f"batch {inf.sw_batch_size}, repeat {args.repeat}"
    )
    variants = medvit_variants(args)
    os.environ["MEDVIT_CACHE"] = str(work / "cache")  # the children's export cache, made once below
    if any(engine != "torch" for engine, _ in variants.values()):
        from medvit.export import cached_export

        t0 = time.perf_counter()
        cached_export(load_package(package))
        print(f"  ONNX export for the runtime engines: {time.perf_counter() - t0:.1f} s (once, not timed below)")
    monai = {"MONAI fp32": "32"} if args.no_monai_bf16 else {"MONAI fp32": "32", "MONAI bf16": "bf16"}
    runs: dict[str, list[dict]] = {name: [] for name in [*monai, *variants]}
    for i in range(args.repeat):
        for name, precision in monai.items():
            mask = str(work / "monai_mask.npy") if i == 0 and precision == "32" else None
            runs[name].append(run_child("monai", {**cfg, "precision": precision, "mask": mask}))
            print(f"  {name} run {i + 1}: {runs[name][-1]['seconds']:.1f} s", flush=True)
        for name, (engine, precision) in variants.items():
            out = work / "out" / name.replace(" ", "_")
            medvit_cfg = {**cfg, "device": args.device, "precision": precision, "engine": engine, "out": str(out),
                          "batch": args.medvit_batch_size}  # fmt: skip
            runs[name].append(run_child("medvit", medvit_cfg))
            print(
                f"  {name} run {i + 1}: {runs[name][-1]['seconds']:.1f} s {runs[name][-1]['stages_s']}", flush=True
            )

    import nibabel as nib

    ref = np.load(work / "monai_mask.npy")
    masks = {
        name: np.asarray(nib.load(str(work / "out" / name.replace(" ", "_") / "case.nii.gz")).dataobj)
        for name in variants
    }
    dices = {name: {label: dice(mask, ref, label) for label in (1, 2)} for name, mask in masks.items()}
    t = {k: (min(r["seconds"] for r in v), statistics.median(r["seconds"] for r in v)) for k, v in runs.items()}
    peak = {k: max(r["peak_mb"] for r in v) for k, v in runs.items()}
    base = {k: min(r["base_mb"] for r in v) for k, v in runs.items()}
    fp32 = t["MONAI fp32"][0]
    bf16 = t["MONAI bf16"][0] if "MONAI bf16" in t else float("nan")
    print(
        f"{'':<42} {'min s':>7} {'median s':>8} {'/MONAI fp32':>11} {'/MONAI bf16':>11} {'peak RSS MB':>11} "
        f"{'above loaded':>12}  Dice vs MONAI fp32 (1, 2)"
    )
    rows = {
        **{f"{k} sliding_window_inference": k for k in monai},
        **{f"medvit {k} (file to file)": k for k in variants},
    }
    for label, name in rows.items():
        d = dices.get(name)
        dice_text = f"{d[1]:.4f}, {d[2]:.4f}" if d else "(reference)" if name == "MONAI fp32" else ""
        print(
            f"{label:<42} {t[name][0]:>7.1f} {t[name][1]:>8.1f} "
            f"{t[name][0] / fp32:>11.2f} {t[name][0] / bf16:>11.2f} "
            f"{peak[name]:>11.0f} {peak[name] - base[name]:>12.0f}  {dice_text}"
        )
    met = [name for name in variants if t[name][0] / fp32 <= 0.5 and min(dices[name].values()) >= 0.99
           and peak[name] / peak["MONAI fp32"] <= 1.2]  # fmt: skip
    print(f"targets (issue #6: time <= 0.50x MONAI fp32, Dice >= 0.99, peak memory <= 1.2x) met by: "
          f"{', '.join(met) or 'none'}")  # fmt: skip
    m = runs[next(iter(variants))][0]
    w = m["windows"] or {}
    print(f"medvit windows: {w.get('windows')}, constant ones run once: {w.get('reused')} (reused, not run again)")
    loads = ", ".join(f"{k} {runs[k][0]['load_s']:.1f} s" for k in variants)
    print(f"medvit model load (not in the times above): {loads}")
    if args.device == "cpu":
        torch.set_num_threads(threads)
        ceiling = conv_ceiling(package, inf.sw_batch_size)
        text = ", ".join(f"{k} {v:.2f}x" for k, v in ceiling.items())
        print(f"the network's convolutions alone, over fp32 NCDHW (the ceiling here): {text}")
    if truth is not None:  # how good the model is on this case: near-ties are rarer where it is sure
        quality = ", ".join(
            f"{name} {dice(mask, truth, 1):.3f}/{dice(mask, truth, 2):.3f}" for name, mask in masks.items()
        )
        print(f"Dice against the case's ground truth (labels 1/2): MONAI fp32 {dice(ref, truth, 1):.3f}/"
              f"{dice(ref, truth, 2):.3f}, {quality}")  # fmt: skip
    if args.json:
        ratios = {k: t[k][0] / fp32 for k in runs}
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs, "dice": dices, "ratio": ratios},
                                              indent=2))  # fmt: skip


def medvit_variants(args) -> dict[str, tuple[str, str]]:
    """``name -> (engine, precision)`` of the medvit runs: ``--engines``, else ``--precision`` (the former single
    torch run), else torch fp32, torch bf16, onnxruntime and openvino when installed."""
    if args.engines:
        specs = [item.strip() for item in args.engines.split(",") if item.strip()]
    elif args.precision:
        specs = [f"torch:{args.precision}"]
    else:
        specs = ["torch:32", "torch:bf16", "onnxruntime"]
        try:
            import openvino  # noqa: F401
        except ImportError:
            print("  openvino is not installed: no OpenVINO run (pip install 'medvit[openvino]')")
        else:
            specs.append("openvino")
    out = {}
    for item in specs:
        engine, _, precision = item.partition(":")
        precision = precision or ("auto" if engine in ("torch", "auto") else "32")
        shown = {"32": "fp32"}.get(precision, precision)
        out[f"{engine} {shown}"] = (engine, precision)
    return out


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
