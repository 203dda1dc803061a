"""``medvit register`` and ``medvit models list|show|alias``: output, JSON, one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from medvit.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_register_then_models_list_show_alias(package_factory, model_name, tracking_uri):
    pkg = package_factory("seg2d")
    result = run("register", pkg, "--name", model_name, "--alias", "champion", "--tag", "team=eye")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"registered {model_name} version 1: models:/{model_name}/1"
    assert lines[1] == f"alias champion -> version 1: models:/{model_name}@champion"
    assert lines[2].startswith("MLflow run ") and lines[2].endswith(f"({tracking_uri})")

    second = json.loads(run("register", package_factory("seg2d", seed=1), "--name", model_name, "--json").stdout)
    assert second["version"] == "2" and "team" not in second["tags"]
    assert second["uri"] == f"models:/{model_name}/2" and second["alias"] is None

    listing = run("models", "list")
    assert listing.exit_code == 0, listing.output
    assert listing.stdout.splitlines()[0].split() == ["name", "latest", "task", "aliases"]
    row = next(line for line in listing.stdout.splitlines() if line.startswith(model_name))
    assert row.split() == [model_name, "2", "segmentation", "champion->1"]
    rows = json.loads(run("models", "list", "--json").stdout)
    assert any(r["name"] == model_name and r["aliases"] == {"champion": "1"} for r in rows)

    moved = run("models", "alias", model_name, "champion", "2")
    assert moved.exit_code == 0, moved.output
    assert moved.stdout.strip() == f"models:/{model_name}@champion -> version 2 (was version 1)"

    show = run("models", "show", model_name)
    assert show.exit_code == 0, show.output
    out = show.stdout.splitlines()
    assert out[0] == f"{model_name}: 2 version(s); aliases: champion->2"
    assert out[1].startswith("version 2 [champion]  ") and "READY" in out[1]
    assert "    backbone: vit_tiny_patch16" in out and "    team: eye" in out
    shown = json.loads(run("models", "show", model_name, "--json").stdout)
    assert [v["version"] for v in shown["versions"]] == ["2", "1"]
    assert shown["versions"][1]["tags"]["team"] == "eye"


def test_models_list_of_an_empty_registry(empty_tracking_uri):
    result = run("models", "list", "--tracking-uri", empty_tracking_uri)
    assert result.exit_code == 0 and result.stdout.strip() == "no registered models"


@pytest.mark.parametrize(
    "args, message",
    [
        (["register", "{tmp}/nope", "--name", "x"], "{tmp}/nope: no such model package"),
        (["register", "{tmp}", "--name", "x"], "{tmp}: not a medvit model package"),
        (["register", "{pkg}", "--name", "a/b"], "bad model name 'a/b'"),
        (["register", "{pkg}", "--name", "x", "--alias", "v1"], "alias 'v1'"),
        (["register", "{pkg}", "--name", "x", "--tag", "novalue"], "--tag 'novalue': expected KEY=VALUE"),
        (["register", "{pkg}", "--name", "x", "--tracking-uri", "{down}"], "models:/x: cannot reach the MLflow"),
        (["models", "list", "--tracking-uri", "{down}"], "models: cannot reach the MLflow tracking server {down}"),
        (["models", "list", "--tracking-uri", "sqlite:///{tmp}/no.db"], "no registry database"),
        (["models", "show", "nobody"], "models:/nobody: no registered model 'nobody'"),
        (["models", "show", "nobody", "--tracking-uri", "{down}"], "models:/nobody: cannot reach"),
        (["models", "alias", "nobody", "champion", "1"], "models:/nobody: no registered model 'nobody'"),
        (["models", "alias", "{name}", "champion", "5"], "models:/{name}/5: model '{name}' has no version 5"),
        (["models", "alias", "{name}", "latest", "1"], "alias 'latest'"),
    ],
)
def test_bad_input_one_line_exit_2(args, message, package_factory, model_name, tmp_path, free_port):
    from medvit.registry import register_package

    register_package(package_factory("seg2d"), name=model_name)
    fill = {"tmp": tmp_path, "pkg": package_factory("seg2d"), "down": f"http://127.0.0.1:{free_port()}"}
    fill["name"] = model_name
    result = run(*[a.format(**fill) for a in args])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message.format(**fill) in lines[0]
    assert "Traceback" not in result.output and result.stdout == ""


@pytest.mark.slow
def test_console_output_is_clean(package_factory, model_name, tmp_path):
    """A real process: no MLflow log lines, warnings, run links or progress bars around the result."""
    env = dict(os.environ)  # MLFLOW_TRACKING_URI: the session's store
    cmd = [sys.executable, "-m", "medvit.cli", "register", str(package_factory("cls2d")), "--name", model_name]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.splitlines()[0] == f"registered {model_name} version 1: models:/{model_name}/1"
    assert len(done.stdout.splitlines()) == 2
