"""``medvit export``: a model package's network as a file that a runtime serves without medvit's Python code.

The export folder holds the network (``model.onnx``; ``model.xml``/``model.bin`` for OpenVINO; ``model.pt``
for TorchScript), the package's own ``medvit.yaml`` (preprocessing, inference settings, label map) and
``export.json`` (format, input and output names, shapes and dtypes, opset, medvit version, the package's
SHA-256 and the check against PyTorch). The network takes float32 ``[batch, C, *window]`` (the package's
``inference.roi_size`` for sliding-window packages, the preprocessing ``resize`` for whole-image ones; the
batch axis is dynamic) already preprocessed as ``medvit.yaml`` says, and returns float32 logits: ``[batch, K,
*window]`` for segmentation, ``[batch, K]`` for classification (softmax over axis 1, or sigmoid per label
for multi-label packages). LoRA updates are merged into the base weights first. After writing, the exported
file is run on a random input by its own runtime and compared with PyTorch in float32.

:func:`cached_export` keeps one ONNX export per package in ``$MEDVIT_CACHE/exports/<sha256>/`` for predict's
ONNX Runtime and OpenVINO engines (:mod:`medvit.inference.engines`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import medvit
from medvit.errors import ConfigError, MedvitError, one_line
from medvit.io.atomic import atomic_dir, atomic_file, file_lock
from medvit.package import SPEC_FILE, ModelPackage, load_package
from medvit.resources import cache_dir

FORMATS: dict[str, str] = {"onnx": "model.onnx", "openvino": "model.xml", "torchscript": "model.pt"}
EXPORT_FILE = "export.json"
OPSET = 18  # read by ONNX Runtime >= 1.14, OpenVINO, TensorRT 8.6+ and Triton's ONNX Runtime backend
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
TOLERANCE = 1e-3  # largest difference from PyTorch float32 accepted, relative to the largest output
EXTERNAL_DATA_BYTES = 1 << 30  # ONNX files stop at 2 GiB: weights above 1 GiB go to model.onnx.data
OPENVINO_HINT = "pip install 'medvit[openvino]' (or pip install openvino)"
_QUIET_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx.experimental.symbolic_shapes")

Runner = Callable[[np.ndarray], np.ndarray]


class ExportError(MedvitError):
    """A network that cannot be exported, or whose export does not compute what PyTorch computes."""


@dataclass
class ExportResult:
    """What :func:`export_package` wrote: the folder, the network file in it, and ``export.json``'s content."""

    folder: Path
    file: Path
    record: dict[str, Any]


class _Logits(nn.Module):
    """The network with only its logits as output (the first item when it returns a tuple or list)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        return out[0] if isinstance(out, tuple | list) else out


def exports_root() -> Path:
    """``$MEDVIT_CACHE/exports`` (``MEDVIT_CACHE`` default ``~/.cache/medvit``), beside the registry's models."""
    return cache_dir("exports")


def check_format(fmt: str) -> str:
    """``fmt`` lower-cased, when it is one of :data:`FORMATS`.

    Raises:
        ConfigError: Any other format.
    """
    name = str(fmt).strip().lower()
    if name not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return name


def input_shape(package: ModelPackage) -> list[int]:
    """``[C, *window]``: what the network takes per batch item, fixed at export.

    Raises:
        ExportError: A cells package (several output maps), or a whole-image package without a fixed input size.
    """
    spec = package.spec
    if spec.kind.prediction == "cells":
        raise ExportError(
            f"{package.path}: {spec.task} packages cannot be exported yet (their network returns several maps "
            "that predict post-processes in Python)"
        )
    inf, pre = spec.inference, spec.preprocessing
    if inf.mode == "sliding_window":
        window = inf.roi_size
    elif pre.resize:
        window = pre.resize
    else:
        raise ExportError(
            f"{package.path}: whole-image inference without preprocessing.resize has no fixed input size to export"
        )
    return [int(pre.in_channels), *(int(s) for s in window)]


def export_network(package: ModelPackage) -> nn.Module:
    """The package's network for export: float32, eval mode, on the CPU, LoRA merged into the base weights
    (the LoRA layers replaced by plain linear layers), logits only."""
    from medvit.adapters import remove_lora  # lazy: only exports need the adapters

    network = remove_lora(package.build().float().cpu().eval())
    for p in network.parameters():
        p.requires_grad_(False)
    return _Logits(network).eval()


def export_package(
    model: ModelPackage | str | os.PathLike,
    fmt: str,
    out: str | os.PathLike,
    *,
    opset: int = OPSET,
    verify: bool = True,
    overwrite: bool = False,
) -> ExportResult:
    """Export a package's network to ``out`` (a new folder, written atomically) with ``medvit.yaml`` and
    ``export.json`` beside it.

    Args:
        model: A loaded package, or a package folder, run folder or run ``.ckpt``.
        fmt: ``onnx``, ``openvino`` or ``torchscript``.
        out: The folder to create (an empty existing folder is filled).
        opset: ONNX opset (ONNX and OpenVINO, which is converted from ONNX).
        verify: Run the exported file on a random input and compare with PyTorch (float32); fail beyond
            :data:`TOLERANCE` of the largest output.
        overwrite: Replace a folder that holds files.

    Returns:
        The folder, the network file in it and ``export.json``'s content.

    Raises:
        InputError: Not a package.
        ConfigError: Unknown format, an output that is a file or a folder holding files (without ``overwrite``),
            or a runtime that is not installed.
        ExportError: The exporter fails, or the export computes something else than PyTorch (one line why).
    """
    fmt = check_format(fmt)
    if fmt == "openvino":
        _import_openvino()
    package = model if isinstance(model, ModelPackage) else load_package(model)
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise ConfigError(f"-o {out}: exists and is not a folder")
        if any(out.iterdir()) and not overwrite:
            raise ConfigError(f"-o {out}: already holds files; choose another folder or pass --overwrite")
    if not 7 <= int(opset) <= 23:
        raise ConfigError(f"--opset {opset}: expected 7 to 23")
    try:
        with atomic_dir(out, overwrite=out.exists()) as tmp:
            record = _export_into(tmp, package, fmt, opset=int(opset), verify=verify)
    except OSError as exc:
        raise ConfigError(f"-o {out}: cannot write there ({exc.strerror or one_line(exc)})") from None
    return ExportResult(folder=out, file=out / FORMATS[fmt], record=record)


def cached_export(package: ModelPackage, *, opset: int = OPSET) -> Path:
    """The folder of the package's verified ONNX export in the cache (``$MEDVIT_CACHE/exports/<sha256>/``),
    exported on first use. Processes sharing a cache export a package once (a lock beside the entry); the
    entry appears complete or not at all.

    Raises:
        ConfigError: The cache cannot be written.
        ExportError: The network cannot be exported, or its export does not compute what PyTorch computes.
    """
    root = exports_root()
    entry = root / package.sha256
    if _valid_entry(entry, package.sha256):
        return entry
    try:
        root.mkdir(parents=True, exist_ok=True)
        with file_lock(root / f".{package.sha256}.lock"):
            if not _valid_entry(entry, package.sha256):  # else another process exported it while we waited
                with atomic_dir(entry, overwrite=True) as tmp:
                    _export_into(tmp, package, "onnx", opset=opset, verify=True)
    except OSError as exc:
        raise ConfigError(f"cannot write to the export cache {root} ({exc.strerror or one_line(exc)})") from None
    return entry


def _valid_entry(entry: Path, sha256: str) -> bool:
    try:
        record = json.loads((entry / EXPORT_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(record, dict)
        and record.get("package", {}).get("sha256") == sha256
        and record.get("format") == "onnx"
        and (entry / FORMATS["onnx"]).is_file()
    )


def read_export(folder: str | os.PathLike) -> dict[str, Any]:
    """``export.json`` of an export folder."""
    return json.loads((Path(folder) / EXPORT_FILE).read_text())


def update_export_record(folder: str | os.PathLike, key: str, value: Any) -> None:
    """Set ``key`` of ``export.json`` (atomically; the last writer wins)."""
    path = Path(folder) / EXPORT_FILE
    record = json.loads(path.read_text())
    record[key] = value
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2))


# -- export ---------------------------------------------------------------------------------------------------
def _export_into(folder: Path, package: ModelPackage, fmt: str, *, opset: int, verify: bool) -> dict[str, Any]:
    """Write the network file, ``medvit.yaml`` and ``export.json`` into ``folder``; returns the record."""
    shape = input_shape(package)
    network = export_network(package)
    example = _random_input(2, shape, seed=0)
    with torch.inference_mode():
        out = network(example)
    if not isinstance(out, torch.Tensor) or out.ndim < 2 or out.shape[0] != 2:
        kind = type(out).__name__
        raise ExportError(
            f"{package.path}: the network returns {kind}, not one logits tensor [batch, K, ...]; cannot export it"
        )
    name = FORMATS[fmt]
    record: dict[str, Any] = {"format": fmt, "file": name}
    with _quiet():
        if fmt == "torchscript":
            _export_torchscript(network, example, folder / name, package)
            record["opset"] = None
        else:
            onnx_path = folder / FORMATS["onnx"] if fmt == "onnx" else folder / ".scratch" / FORMATS["onnx"]
            record["opset"] = _export_onnx(network, example, onnx_path, opset, package)
            if _external_data(onnx_path):
                record["external_data"] = onnx_path.name + ".data"
            if fmt == "openvino":
                _export_openvino(onnx_path, folder / name, package)
                shutil.rmtree(onnx_path.parent)
                record["weights_file"] = Path(name).with_suffix(".bin").name
    record.update(
        {
            "input": {"name": INPUT_NAME, "shape": ["batch", *shape], "dtype": "float32"},
            "output": {
                "name": OUTPUT_NAME,
                "shape": ["batch", *(int(s) for s in out.shape[1:])],
                "dtype": "float32",
                "kind": "logits",
                "activation": "sigmoid" if package.spec.multi_label else "softmax over axis 1",
            },
            "medvit_version": medvit.__version__,
            "torch_version": torch.__version__.split("+")[0],
            "package": {"name": package.spec.name, "task": package.spec.task, "sha256": package.sha256},
            "inference": package.spec.inference.model_dump(mode="json"),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
    )
    shutil.copyfile(package.path / SPEC_FILE, folder / SPEC_FILE)
    if verify:
        record["verification"] = verify_export(folder, fmt, network, shape, package=package)
    (folder / EXPORT_FILE).write_text(json.dumps(record, indent=2))
    return record


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' progress lines, tracer warnings and deprecation notices kept off the terminal."""
    loggers = [logging.getLogger(n) for n in _QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _random_input(batch: int, shape: list[int], *, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *shape), generator=gen)


def _what(package: ModelPackage) -> str:
    return f"{package.spec.name} ({package.path})"


def _export_onnx(network: nn.Module, example: torch.Tensor, path: Path, opset: int, package: ModelPackage) -> int:
    """ONNX through ``torch.export`` (dynamic batch axis); returns the opset the file declares."""
    try:
        import onnx  # lazy: the ONNX exporter's dependency, only for exports
    except ImportError as exc:
        raise ConfigError(f"exporting to ONNX needs the onnx and onnxscript packages ({one_line(exc)})") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    size = sum(p.numel() * p.element_size() for p in network.parameters())
    size += sum(b.numel() * b.element_size() for b in network.buffers())
    try:
        batch = torch.export.Dim("batch", min=1, max=4096)
        torch.onnx.export(
            network,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            dynamo=True,
            external_data=size > EXTERNAL_DATA_BYTES,
            verbose=False,
        )
    except Exception as exc:  # noqa: BLE001  (the exporter raises many types; the user gets one line)
        raise ExportError(f"{_what(package)}: cannot export to ONNX ({_reason(exc)})") from None
    model = onnx.load(str(path), load_external_data=False)
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=opset)


def _external_data(path: Path) -> bool:
    return path.with_name(path.name + ".data").is_file()


def _export_openvino(onnx_path: Path, xml_path: Path, package: ModelPackage) -> None:
    """OpenVINO IR (``.xml`` + ``.bin``) converted from the ONNX file, weights kept in float32."""
    ov = _import_openvino()
    try:
        converted = ov.convert_model(str(onnx_path))
        ov.save_model(converted, str(xml_path), compress_to_fp16=False)
    except Exception as exc:  # noqa: BLE001  (OpenVINO raises its own RuntimeErrors; the user gets one line)
        raise ExportError(f"{_what(package)}: cannot convert to OpenVINO ({_reason(exc)})") from None


def _export_torchscript(network: nn.Module, example: torch.Tensor, path: Path, package: ModelPackage) -> None:
    """TorchScript by tracing (shapes other than the batch size are fixed by the trace)."""
    try:
        with torch.no_grad():
            traced = torch.jit.trace(network, example, check_trace=False)
        traced.save(str(path))
    except Exception as exc:  # noqa: BLE001  (the tracer raises many types; the user gets one line)
        raise ExportError(f"{_what(package)}: cannot export to TorchScript ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    """The first line of an exporter's message (they run to pages), with the exception type."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return one_line(Exception(f"{type(exc).__name__}: {text}" if text else type(exc).__name__), 240)


# -- runtimes -------------------------------------------------------------------------------------------------
def _import_openvino():
    try:
        import openvino  # lazy: an optional extra (medvit[openvino])
    except ImportError:
        raise ConfigError(f"OpenVINO is not installed: {OPENVINO_HINT}") from None
    return openvino


def onnxruntime_runner(path: str | os.PathLike, *, threads: int, device: torch.device | None = None) -> Runner:
    """An ONNX Runtime session on ``path`` as ``numpy [B, C, *S] -> numpy logits`` (float32).

    Args:
        path: The ``.onnx`` file.
        threads: Intra-op threads (the CPUs available to the process).
        device: ``cuda`` uses ONNX Runtime's CUDA provider (``onnxruntime-gpu``); otherwise the CPU.

    Raises:
        ConfigError: CUDA asked for without ONNX Runtime's CUDA provider.
    """
    import onnxruntime as ort  # lazy: loads its native library; only the onnxruntime engine and exports need it

    providers: list[Any] = ["CPUExecutionProvider"]
    if device is not None and device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError(
                f"--engine onnxruntime on {device}: this ONNX Runtime has no CUDA provider (pip install "
                "onnxruntime-gpu), or use --device cpu"
            )
        providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(int(threads), 1)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)

    def run(x: np.ndarray) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]

    return run


def openvino_runner(path: str | os.PathLike, *, threads: int) -> Runner:
    """An OpenVINO compiled model (ONNX or IR ``path``) on the CPU, in float32 (OpenVINO would otherwise run
    bf16 on CPUs that have it), as ``numpy [B, C, *S] -> numpy logits``.

    Raises:
        ConfigError: OpenVINO is not installed.
    """
    ov = _import_openvino()
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": max(int(threads), 1)}
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        request.infer({0: x})
        return np.array(request.get_output_tensor(0).data, copy=True)

    return run


def torchscript_runner(path: str | os.PathLike) -> Runner:
    """A TorchScript file as ``numpy [B, C, *S] -> numpy logits``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return run


def runner_for(folder: str | os.PathLike, fmt: str, *, threads: int | None = None) -> Runner:
    """A runner for the network file of an export folder of format ``fmt``."""
    from medvit.device import cpu_count  # lazy: keeps this module's imports to the package side

    threads = threads or cpu_count()
    path = Path(folder) / FORMATS[fmt]
    if fmt == "onnx":
        return onnxruntime_runner(path, threads=threads)
    if fmt == "openvino":
        return openvino_runner(path, threads=threads)
    return torchscript_runner(path)


def verify_export(
    folder: Path, fmt: str, network: nn.Module, shape: list[int], *, package: ModelPackage
) -> dict[str, Any]:
    """Run the exported file with its runtime on random inputs of two batch sizes and compare with PyTorch.

    Returns:
        ``runtime``, ``batch_sizes``, ``max_abs_diff``, ``max_abs_output`` and ``max_rel_diff``.

    Raises:
        ExportError: The runtime cannot load or run the file, or the difference is beyond :data:`TOLERANCE`
            of the largest output.
    """
    runtime = {"onnx": "onnxruntime", "openvino": "openvino", "torchscript": "torch"}[fmt]
    try:
        from importlib.metadata import version

        runtime_version = version(runtime)
    except Exception:  # noqa: BLE001  (metadata of a runtime installed without it)
        runtime_version = "?"
    try:
        with _quiet():
            run = runner_for(folder, fmt)
    except ConfigError:  # the runtime is not installed
        raise
    except Exception as exc:  # noqa: BLE001  (runtimes raise their own types; the user gets one line)
        raise ExportError(f"{_what(package)}: {runtime} cannot load the {fmt} export ({_reason(exc)})") from None
    diff, scale = 0.0, 0.0
    sizes = [2, 1]  # the export's example batch, and another: the batch axis is dynamic
    for i, batch in enumerate(sizes):
        x = _random_input(batch, shape, seed=100 + i)
        with torch.inference_mode():
            ref = network(x).float().numpy()
        try:
            with _quiet():
                got = run(x.numpy())
        except Exception as exc:  # noqa: BLE001  (runtimes raise their own types; the user gets one line)
            raise ExportError(
                f"{_what(package)}: the {fmt} export does not run in {runtime} on a batch of {batch} "
                f"({_reason(exc)})"
            ) from None
        if got.shape != ref.shape:
            raise ExportError(
                f"{_what(package)}: the {fmt} export gives shape {list(got.shape)} on a batch of {batch} where "
                f"PyTorch gives {list(ref.shape)}"
            )
        diff = max(diff, float(np.abs(got.astype(np.float64) - ref).max()))
        scale = max(scale, float(np.abs(ref).max()))
    rel = diff / scale if scale > 0 else diff
    result = {
        "runtime": f"{runtime} {runtime_version}",
        "batch_sizes": sizes,
        "max_abs_diff": diff,
        "max_abs_output": scale,
        "max_rel_diff": rel,
        "tolerance": TOLERANCE,
    }
    if not np.isfinite(rel) or rel > TOLERANCE:
        raise ExportError(
            f"{_what(package)}: the {fmt} export differs from PyTorch by {diff:.3g} (largest output {scale:.3g}, "
            f"relative {rel:.3g} > {TOLERANCE:g}) on a random input"
        )
    return result
