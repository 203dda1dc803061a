"""``medvit predict -m models:/NAME@ALIAS`` and ``models:/NAME/VERSION`` through the real registry: the package is
downloaded once per version, the manifest records the resolved version, a moved alias is followed."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from medvit.cli import app
from medvit.registry import register_package


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_predict_by_alias_and_version(package_factory, model_name, tmp_path):
    register_package(package_factory("seg2d"), name=model_name, alias="champion")
    register_package(package_factory("seg2d", seed=1), name=model_name)
    photo = tmp_path / "eye.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(photo)

    def predict(uri: str, out: str) -> dict:
        result = run("predict", "-i", photo, "-o", tmp_path / out, "-m", uri, "--no-progress")
        assert result.exit_code == 0, result.output
        return json.loads((tmp_path / out / "manifest.json").read_text())["model"]

    first = predict(f"models:/{model_name}@champion", "out1")
    assert first["uri"] == f"models:/{model_name}@champion" and first["version"] == "1"
    assert first["alias"] == "champion" and (tmp_path / "out1" / "eye.png").exists()
    entries = sorted(p.name for p in (tmp_path / "cache" / "models").glob(f"*/{model_name}/*"))
    assert entries == ["1"]

    assert run("models", "alias", model_name, "champion", "2").exit_code == 0
    moved = predict(f"models:/{model_name}@champion", "out2")
    assert moved["version"] == "2" and moved["sha256"] != first["sha256"]

    again = predict(f"models:/{model_name}/1", "out3")
    assert again["version"] == "1" and again["sha256"] == first["sha256"]
    assert sorted(p.name for p in (tmp_path / "cache" / "models").glob(f"*/{model_name}/*")) == ["1", "2"]

    bad = run("predict", "-i", photo, "-o", tmp_path / "out4", "-m", f"models:/{model_name}@nope")
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert bad.stderr.strip() == (
        f"error: models:/{model_name}@nope: model '{model_name}' has no alias 'nope' (aliases: champion)"
    )
    assert not (tmp_path / "out4").exists() or not any((tmp_path / "out4").iterdir())
