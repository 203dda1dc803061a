"""``medvit export`` and ``predict --engine``: the tiny packages (3D UNETR, 2D linear segmentation, 2D
classifier) exported to ONNX and TorchScript (and OpenVINO when installed) compute what PyTorch computes on the
same input, LoRA merged; predict through ONNX Runtime or OpenVINO gives the masks PyTorch float32 gives; bad
inputs are one line and exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from packages import SPECS, make_package
from typer.testing import CliRunner

from medvit import export
from medvit.cli import app
from medvit.errors import ConfigError, InputError
from medvit.export import ExportError, export_package, exports_root
from medvit.inference import Predictor
from medvit.package import ModelPackage, PackageSpec, load_package, save_package

runner = CliRunner()
KINDS = ("seg3d", "seg2d", "cls2d")
WINDOWS = {"seg3d": [1, 32, 32, 32], "seg2d": [3, 64, 64], "cls2d": [3, 64, 64]}


def _has_openvino() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


needs_openvino = pytest.mark.skipif(
    not _has_openvino(), reason="openvino is not installed (pip install 'medvit[openvino]')"
)


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("packages")
    return {kind: make_package(root / kind, kind) for kind in KINDS}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("medvit-cache")


@pytest.fixture(autouse=True)
def _cache(cache_dir, monkeypatch):
    monkeypatch.setenv("MEDVIT_CACHE", str(cache_dir))


def _torch_logits(package_dir: Path, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return load_package(package_dir).build()(x).float().numpy()


def _random(batch: int, kind: str, seed: int = 7) -> torch.Tensor:
    return torch.randn((batch, *WINDOWS[kind]), generator=torch.Generator().manual_seed(seed))


def _dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    total = int(x.sum()) + int(y.sum())
    return 1.0 if total == 0 else 2.0 * int((x & y).sum()) / total


# -- export ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_onnx_export_runs_in_onnxruntime_as_in_pytorch(kind, packages, tmp_path):
    import onnx
    import onnxruntime as ort

    out = tmp_path / "onnx"
    result = run("export", packages[kind], "--format", "onnx", "-o", out)
    assert result.exit_code == 0, result.output
    assert "verified in onnxruntime" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "medvit.yaml", "model.onnx"]
    assert (out / "medvit.yaml").read_bytes() == (packages[kind] / "medvit.yaml").read_bytes()
    record = json.loads((out / "export.json").read_text())
    import medvit

    assert record["format"] == "onnx" and record["file"] == "model.onnx" and record["opset"] == 18
    assert record["input"] == {"name": "input", "shape": ["batch", *WINDOWS[kind]], "dtype": "float32"}
    assert record["output"]["name"] == "logits" and record["output"]["dtype"] == "float32"
    assert record["output"]["shape"] == (["batch", 3, *WINDOWS[kind][1:]] if kind != "cls2d" else ["batch", 3])
    assert record["medvit_version"] == medvit.__version__
    assert record["package"]["sha256"] == load_package(packages[kind]).sha256
    assert record["verification"]["max_rel_diff"] < 1e-3

    model = onnx.load(str(out / "model.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == WINDOWS[kind]  # dynamic batch, fixed window
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = _random(3, kind)
    got = session.run(["logits"], {"input": x.numpy()})[0]
    ref = _torch_logits(packages[kind], x)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, float(np.abs(ref).max()))


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("kind", KINDS)
def test_torchscript_export_runs_as_in_pytorch(kind, packages, tmp_path):
    out = tmp_path / "ts"
    done = export_package(packages[kind], "torchscript", out)
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "medvit.yaml", "model.pt"]
    assert done.file == out / "model.pt" and done.record["opset"] is None
    module = torch.jit.load(str(out / "model.pt"))
    x = _random(3, kind)
    with torch.inference_mode():
        got = module(x).numpy()
    np.testing.assert_allclose(got, _torch_logits(packages[kind], x), rtol=1e-5, atol=1e-5)


@needs_openvino
def test_openvino_export_runs_in_openvino_as_in_pytorch(packages, tmp_path):
    import openvino as ov

    out = tmp_path / "ov"
    done = export_package(packages["seg2d"], "openvino", out)
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "medvit.yaml", "model.bin", "model.xml"]
    assert done.record["verification"]["runtime"].startswith("openvino")
    compiled = ov.Core().compile_model(str(out / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = _random(3, "seg2d")
    got = compiled({0: x.numpy()})[0]
    np.testing.assert_allclose(got, _torch_logits(packages["seg2d"], x), rtol=1e-4, atol=1e-4)


def _lora_package(folder: Path) -> Path:
    spec = json.loads(json.dumps(SPECS["seg2d"]))
    spec["name"] = "tiny_seg2d_lora"
    spec["model"]["adapter"] = {"name": "lora", "options": {"rank": 4, "alpha": 8.0, "targets": ["qkv", "fc1"]}}
    spec = PackageSpec.model_validate(spec)
    from medvit.models import build_model

    torch.manual_seed(3)
    model = build_model(spec.model)
    with torch.no_grad():  # a trained update: B is zero when LoRA starts
        for name, p in model.named_parameters():
            if name.endswith("lora_b"):
                p.normal_(0, 0.5)
    return save_package(model, spec, folder)


@pytest.mark.slow
def test_lora_is_merged_into_the_exported_weights(tmp_path):
    import onnx
    import onnxruntime as ort

    from medvit.adapters.lora import LoRALinear, lora_layers

    pkg = _lora_package(tmp_path / "lora")
    net = load_package(pkg).build()
    assert lora_layers(net)
    export_package(pkg, "onnx", tmp_path / "out")
    model = onnx.load(str(tmp_path / "out" / "model.onnx"))
    names = [i.name for i in model.graph.initializer] + [n.name for n in model.graph.node]
    assert not [n for n in names if "lora" in n.lower()], "LoRA factors left in the exported graph"

    x = _random(2, "seg2d")
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.inference_mode():
        adapted = net(x).numpy()
        for m in net.modules():  # the same network without its update
            if isinstance(m, LoRALinear):
                m.lora_b.zero_()
        plain = net(x).numpy()
    assert np.abs(adapted - plain).max() > 1e-2  # the update matters
    np.testing.assert_allclose(got, adapted, rtol=1e-4, atol=1e-4)


# -- bad inputs -----------------------------------------------------------------------------------------------
def test_not_a_package_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    line = _one_line_error(run("export", tmp_path / "empty", "-o", tmp_path / "out"))
    assert "not a medvit model package" in line
    assert not (tmp_path / "out").exists()
    line = _one_line_error(run("export", tmp_path / "missing", "-o", tmp_path / "out"))
    assert "no such model package" in line


def test_unknown_format_is_one_line(packages, tmp_path):
    line = _one_line_error(run("export", packages["seg2d"], "--format", "tflite", "-o", tmp_path / "out"))
    assert "--format 'tflite'" in line and "onnx, openvino, torchscript" in line
    assert not (tmp_path / "out").exists()


def test_output_that_is_a_file_or_a_full_folder_is_one_line(packages, tmp_path):
    (tmp_path / "file").write_text("keep")
    line = _one_line_error(run("export", packages["seg2d"], "-o", tmp_path / "file"))
    assert "exists and is not a folder" in line
    assert (tmp_path / "file").read_text() == "keep"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    line = _one_line_error(run("export", packages["seg2d"], "--format", "torchscript", "-o", tmp_path / "full"))
    assert "--overwrite" in line and (tmp_path / "full" / "mine.txt").read_text() == "keep"
    result = run("export", packages["seg2d"], "--format", "torchscript", "-o", tmp_path / "full", "--overwrite")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["export.json", "medvit.yaml", "model.pt"]


def test_exporter_failure_is_one_line_and_leaves_nothing(packages, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("Failed to export the model with torch.export.\nline two\n" + "x" * 5000)

    monkeypatch.setattr(torch.onnx, "export", broken)
    line = _one_line_error(run("export", packages["seg2d"], "-o", tmp_path / "out"))
    assert "cannot export to ONNX (RuntimeError: Failed to export the model with torch.export.)" in line
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_export_that_computes_something_else_fails_in_one_line(packages, tmp_path, monkeypatch):
    real = export.runner_for

    def off_by_one(folder, fmt, **kwargs):
        run_ = real(folder, fmt, **kwargs)
        return lambda x: run_(x) + 1.0

    monkeypatch.setattr(export, "runner_for", off_by_one)
    line = _one_line_error(run("export", packages["seg2d"], "--format", "torchscript", "-o", tmp_path / "out"))
    assert "differs from PyTorch by" in line
    assert not (tmp_path / "out").exists()


def test_cells_packages_say_why_they_cannot_be_exported(tmp_path):
    spec = PackageSpec.model_validate(SPECS["cells"])
    stub = ModelPackage(spec=spec, path=tmp_path, sha256="0" * 64)
    with pytest.raises(ExportError, match="cells packages cannot be exported yet"):
        export_package(stub, "onnx", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_openvino_missing_names_the_pip_package(packages, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    line = _one_line_error(run("export", packages["seg2d"], "--format", "openvino", "-o", tmp_path / "out"))
    assert "OpenVINO is not installed" in line and "pip install" in line
    with pytest.raises(ConfigError, match="pip install"):
        Predictor(packages["seg2d"], device="cpu", engine="openvino")


def test_unknown_engine_is_one_line(packages, tmp_path):
    (tmp_path / "img.png").write_bytes(b"")
    args = ["-m", packages["seg2d"], "-i", tmp_path / "img.png", "-o", tmp_path / "o"]
    line = _one_line_error(run("predict", *args, "--engine", "trt"))
    assert "--engine 'trt'" in line


# -- predict --engine -----------------------------------------------------------------------------------------
def _volume(path: Path) -> None:
    import nibabel as nib

    rng = np.random.default_rng(0)
    x, y, z = np.ogrid[:56, :48, :36]
    vol = rng.normal(0, 40, (56, 48, 36))
    vol += 200 * (((x - 28) / 14.0) ** 2 + ((y - 24) / 12.0) ** 2 + ((z - 18) / 9.0) ** 2 <= 1)
    affine = np.diag([-1.4, -1.3, 2.2, 1.0])  # LPS: reoriented and resampled by the package
    nib.save(nib.Nifti1Image(vol.astype(np.int16), affine), str(path))


def _photo(path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:90, :120]
    img = np.stack([xx * 2, yy * 2.5, (xx + yy)], -1) + rng.normal(0, 20, (90, 120, 3))
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)


@pytest.mark.slow
def test_predict_onnxruntime_masks_equal_torch_fp32_on_a_volume(packages, tmp_path, cache_dir):
    import nibabel as nib

    _volume(tmp_path / "ct.nii.gz")
    masks = {}
    for engine in ("torch", "onnxruntime"):
        out = tmp_path / engine
        result = run("predict", "-m", packages["seg3d"], "-i", tmp_path / "ct.nii.gz", "-o", out,
                     "--engine", engine, "--precision", "32", "--no-progress")  # fmt: skip
        assert result.exit_code == 0, result.output
        masks[engine] = np.asarray(nib.load(str(out / "ct.nii.gz")).dataobj)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["precision"] == "32" and manifest["options"]["engine"] == engine
    assert masks["torch"].shape == masks["onnxruntime"].shape == (56, 48, 36)
    assert len(np.unique(masks["torch"])) > 1
    for label in (0, 1, 2):
        assert _dice(masks["torch"], masks["onnxruntime"], label) >= 0.999
    sha = load_package(packages["seg3d"]).sha256
    entry = exports_root() / sha
    assert entry.parent == cache_dir / "exports"
    assert sorted(p.name for p in entry.iterdir()) == ["export.json", "medvit.yaml", "model.onnx"]


@pytest.mark.slow
def test_predict_onnxruntime_masks_equal_torch_fp32_on_a_2d_image(packages, tmp_path):
    from PIL import Image

    _photo(tmp_path / "fundus.png")
    masks = {}
    for engine in ("torch", "onnxruntime"):
        out = tmp_path / engine
        result = run("predict", "-m", packages["seg2d"], "-i", tmp_path / "fundus.png", "-o", out,
                     "--engine", engine, "--precision", "32", "--tta")  # fmt: skip
        assert result.exit_code == 0, result.output
        masks[engine] = np.asarray(Image.open(out / "fundus.png"))
    assert masks["torch"].shape == (90, 120) and len(np.unique(masks["torch"])) > 1
    for label in (0, 1, 2):
        assert _dice(masks["torch"], masks["onnxruntime"], label) >= 0.999


@pytest.mark.slow
def test_classification_through_onnxruntime(packages, tmp_path):
    _photo(tmp_path / "eye.png")
    ref = Predictor(packages["cls2d"], device="cpu", precision="32").predict(tmp_path / "eye.png")
    with pytest.warns(UserWarning, match="computes in float32"):
        ort = Predictor(packages["cls2d"], device="cpu", precision="bf16", engine="onnxruntime")
    assert ort.precision == "32" and ort.options()["engine"] == "onnxruntime"
    got = ort.predict(tmp_path / "eye.png")
    np.testing.assert_allclose(got.class_probabilities, ref.class_probabilities, atol=1e-5)


@needs_openvino
def test_predict_openvino_masks_equal_torch_fp32(packages, tmp_path):
    _photo(tmp_path / "fundus.png")
    ref = Predictor(packages["seg2d"], device="cpu", precision="32").predict(tmp_path / "fundus.png")
    got = Predictor(packages["seg2d"], device="cpu", engine="openvino").predict(tmp_path / "fundus.png")
    for label in (0, 1, 2):
        assert _dice(ref.mask, got.mask, label) >= 0.999


@pytest.mark.slow
def test_auto_engine_times_once_and_remembers(packages):
    first = Predictor(packages["seg2d"], device="cpu", precision="32", engine="auto")
    assert first.engine in ("torch", "onnxruntime")
    assert first.engine_note.startswith(f"engine auto: {first.engine} (timed now")
    assert "logits agree" in first.engine_note
    record = export.read_export(exports_root() / first.package.sha256)
    (key, choice), *_ = record[_auto_key()].items()
    assert "cpu|32|" in key and choice["engine"] == first.engine and choice["max_abs_diff"] < 1e-3
    second = Predictor(packages["seg2d"], device="cpu", precision="32", engine="auto")
    assert second.engine == first.engine and "chosen before" in second.engine_note
    x = np.random.default_rng(2).integers(0, 255, (3, 64, 64)).astype(np.float32)
    a = Predictor(packages["seg2d"], device="cpu", precision="32").predict(x).mask
    assert _dice(a, second.predict(x).mask, 1) >= 0.999


def _auto_key() -> str:
    from medvit.inference.engines import AUTO_KEY

    return AUTO_KEY


def test_runtime_engine_refuses_inputs_of_another_size(packages):
    pred = Predictor(packages["seg2d"], device="cpu", engine="onnxruntime")
    with pytest.raises(InputError, match="takes inputs of 3x64x64"):
        pred._logits(torch.zeros(1, 3, 32, 32))
