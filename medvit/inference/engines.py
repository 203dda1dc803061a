"""Where predict's network runs: PyTorch, or the package's ONNX export in ONNX Runtime or OpenVINO.

Reading, preprocessing, sliding windows, TTA, inversion and writing stay the
:class:`~medvit.inference.Predictor`'s; only the call of the network on a batch ``[B, C, *window]`` changes.
A runtime engine is a callable taking and returning torch tensors (float32 logits on the predictor's device).
The package is exported to ONNX once per package hash into ``$MEDVIT_CACHE/exports/<sha256>/``
(:func:`medvit.export.cached_export`) and checked against PyTorch there. Runtimes compute in float32: bf16
autocast is the torch engine's alone.

``auto`` times one batch of windows in PyTorch (at the predictor's precision) and in ONNX Runtime, and takes
ONNX Runtime when it is faster and its logits agree with PyTorch float32 (largest difference below 1e-3);
the choice is kept per device, precision and thread count in the export's ``export.json``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from medvit.errors import ConfigError, InputError, MedvitWarning, one_line

ENGINES = ("torch", "onnxruntime", "openvino", "auto")
AGREEMENT = 1e-3  # largest logit difference from PyTorch float32 for auto to take ONNX Runtime
AUTO_KEY = "auto_engine"
TIMED_RUNS = 2

TensorFn = Callable[[torch.Tensor], torch.Tensor]


class RuntimeNetwork:
    """An exported network in a runtime as a torch callable: ``[B, C, *window]`` in (any device, any float
    dtype), float32 logits out on ``device``.

    Args:
        name: The engine (``onnxruntime``, ``openvino``).
        run: ``numpy -> numpy`` (:func:`medvit.export.onnxruntime_runner`, :func:`~medvit.export.openvino_runner`).
        input_shape: ``[C, *window]`` the export takes.
        device: Where outputs go (the predictor's device).
    """

    def __init__(self, name: str, run: Callable, input_shape: list[int], device: torch.device) -> None:
        self.name = name
        self._run = run
        self.input_shape = tuple(int(s) for s in input_shape)
        self.device = device

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if tuple(batch.shape[1:]) != self.input_shape:
            want = "x".join(str(s) for s in self.input_shape)
            got = "x".join(str(s) for s in batch.shape[1:])
            raise InputError(f"the {self.name} engine takes inputs of {want} (channels x window), got {got}")
        x = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self._run(x)).to(self.device)


def check_engine(name: str) -> str:
    """``name`` lower-cased when it is one of :data:`ENGINES`.

    Raises:
        ConfigError: Any other name.
    """
    text = str(name).strip().lower()
    if text not in ENGINES:
        raise ConfigError(f"--engine {name!r}: expected one of {', '.join(ENGINES)}")
    return text


def select_engine(predictor, name: str, precision: str = "auto") -> tuple[str, TensorFn | None, str | None]:
    """The engine a predictor runs its network in.

    Args:
        predictor: The :class:`~medvit.inference.Predictor` (package, device, precision, batch size, network).
        name: ``torch``, ``onnxruntime``, ``openvino`` or ``auto``.
        precision: The precision asked for (a runtime engine with ``bf16`` says it runs float32).

    Returns:
        ``(engine, network callable or None for torch, one-line note or None)``.

    Raises:
        ConfigError: Unknown engine, a runtime not installed (naming the pip package), a runtime that cannot
            run on the device, or a package whose network cannot be exported (cells packages).
    """
    name = check_engine(name)
    if name == "torch":
        return "torch", None, None
    from medvit import export  # lazy: the exporters come in only for runtime engines

    package = predictor.package
    if name == "auto":
        return _auto(predictor, export)
    if predictor.cells:
        raise ConfigError(f"--engine {name}: {predictor.spec.task} packages predict with the torch engine only")
    shape = _input_shape(package, name, export)
    if str(precision).strip().lower() == "bf16":
        warnings.warn(f"--precision bf16: the {name} engine computes in float32", MedvitWarning, stacklevel=3)
    if name == "openvino":
        export._import_openvino()  # one line naming the pip package before any export work
        if predictor.device.type != "cpu":
            raise ConfigError(f"--engine openvino runs on the CPU here; use --device cpu (not {predictor.device})")
    entry = _cached(package, export)
    run = _runner(name, entry, predictor.device, export)
    return name, RuntimeNetwork(name, run, shape, predictor.device), None


def _input_shape(package, name: str, export) -> list[int]:
    try:
        return export.input_shape(package)
    except export.ExportError as exc:
        raise ConfigError(f"--engine {name}: {exc}") from None


def _cached(package, export):
    try:
        return export.cached_export(package)
    except export.ExportError as exc:
        raise ConfigError(f"--engine: {exc}") from None


def _runner(name: str, entry, device: torch.device, export) -> Callable:
    from medvit.device import cpu_count

    path = entry / export.FORMATS["onnx"]
    try:
        if name == "openvino":
            return export.openvino_runner(path, threads=cpu_count())
        return export.onnxruntime_runner(path, threads=cpu_count(), device=device)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001  (runtimes raise their own types; the user gets one line)
        raise ConfigError(f"--engine {name}: cannot load {path} ({one_line(exc, 200)})") from None


# -- auto -----------------------------------------------------------------------------------------------------
def _auto(predictor, export) -> tuple[str, TensorFn | None, str | None]:
    """Torch or ONNX Runtime, whichever runs a batch of windows faster with logits that agree."""
    from medvit.device import cpu_count

    package = predictor.package
    if predictor.cells:
        return "torch", None, f"engine auto: torch ({predictor.spec.task} packages run in torch only)"
    try:
        shape = export.input_shape(package)
    except export.ExportError:
        return "torch", None, "engine auto: torch (the package has no fixed input size to export)"
    if predictor.device.type == "cuda" and not _has_cuda_provider():
        return "torch", None, "engine auto: torch (ONNX Runtime has no CUDA provider here)"
    key = f"{predictor.device}|{predictor.precision}|{cpu_count()} threads|batch {predictor.batch_size}"
    entry = export.exports_root() / package.sha256
    known = _known_choice(entry, key, export)
    if known is not None and known.get("engine") == "torch":
        return "torch", None, _auto_note(known, cached=True)
    try:
        entry = export.cached_export(package)
    except export.ExportError as exc:
        return "torch", None, f"engine auto: torch (no ONNX export: {one_line(exc, 160)})"
    runtime = RuntimeNetwork("onnxruntime", _runner("onnxruntime", entry, predictor.device, export), shape,
                             predictor.device)  # fmt: skip
    if known is not None:
        return "onnxruntime", runtime, _auto_note(known, cached=True)
    choice = _time_engines(predictor, runtime, shape)
    try:
        record = export.read_export(entry).get(AUTO_KEY) or {}
        export.update_export_record(entry, AUTO_KEY, {**record, key: choice})
    except (OSError, ValueError):
        pass  # a cache that cannot be written: the choice is timed again next time
    engine = choice["engine"]
    return engine, (runtime if engine == "onnxruntime" else None), _auto_note(choice, cached=False)


def _has_cuda_provider() -> bool:
    try:
        import onnxruntime as ort  # lazy: loads its native library
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def _known_choice(entry, key: str, export) -> dict[str, Any] | None:
    try:
        record = export.read_export(entry)
    except (OSError, ValueError):
        return None
    choice = (record.get(AUTO_KEY) or {}).get(key)
    return choice if isinstance(choice, dict) and choice.get("engine") in ("torch", "onnxruntime") else None


@torch.inference_mode()
def _time_engines(predictor, runtime: RuntimeNetwork, shape: list[int]) -> dict[str, Any]:
    """One batch of random windows through both engines: the best of :data:`TIMED_RUNS` after a warm-up each,
    and the largest logit difference from PyTorch float32."""
    from medvit.device import autocast

    gen = torch.Generator().manual_seed(0)
    x = torch.randn((predictor.batch_size, *shape), generator=gen).to(predictor.device)
    layout = predictor._layout

    def torch_fn(batch: torch.Tensor, dtype=predictor.autocast_dtype) -> torch.Tensor:
        if layout is not None:
            batch = batch.contiguous(memory_format=layout)
        with autocast(predictor.device, dtype):
            out = predictor.network(batch)
        return (out[0] if isinstance(out, tuple | list) else out).float()

    def best(fn: TensorFn) -> float:
        fn(x)  # warm-up: kernels chosen, memory allocated
        seconds = float("inf")
        for _ in range(TIMED_RUNS):
            if predictor.device.type == "cuda":
                torch.cuda.synchronize(predictor.device)
            t0 = time.perf_counter()
            fn(x)
            if predictor.device.type == "cuda":
                torch.cuda.synchronize(predictor.device)
            seconds = min(seconds, time.perf_counter() - t0)
        return seconds

    reference = torch_fn(x, None)
    diff = float((runtime(x) - reference).abs().max())
    torch_s, ort_s = best(torch_fn), best(runtime)
    agree = diff < AGREEMENT
    return {
        "engine": "onnxruntime" if agree and ort_s < torch_s else "torch",
        "torch_s": round(torch_s, 4),
        "onnxruntime_s": round(ort_s, 4),
        "max_abs_diff": diff,
        "torch_precision": predictor.precision,
        "batch": int(x.shape[0]),
    }


def _auto_note(choice: dict[str, Any], *, cached: bool) -> str:
    agree = "agree" if choice["max_abs_diff"] < AGREEMENT else "differ"
    how = "chosen before" if cached else "timed now"
    precision = {"32": "fp32", "16": "fp16"}.get(choice["torch_precision"], choice["torch_precision"])
    return (
        f"engine auto: {choice['engine']} ({how}: a batch of {choice['batch']} window(s) in "
        f"{choice['onnxruntime_s']:.3f} s with onnxruntime fp32, {choice['torch_s']:.3f} s with torch "
        f"{precision}; logits {agree} with torch fp32, max abs diff {choice['max_abs_diff']:.2g})"
    )
