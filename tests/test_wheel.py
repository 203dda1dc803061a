"""The built wheel carries medvit's pipelines, config fragments and data cards: installed in a fresh venv
outside the checkout and run from an empty folder, `medvit cards list` shows the shipped cards and every
shipped pipeline passes `medvit run NAME --check` by name."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "setup.py", "README.md", "medvit", "pipelines", "configs", "data_cards")
PIPELINES = sorted(p.stem for p in (REPO / "pipelines").glob("*.yaml"))
CARDS = sorted(p.stem for p in (REPO / "data_cards").glob("*.yaml"))

# the README's "synthetic smoke run" overrides; a small backbone (building a ViT-L with random weights takes
# 10-20 s on 2 cores and tells nothing about the wheel); the hardware the machine has (the pipelines ask for
# a GPU through configs/trainer/gpu-bf16.yaml)
SMALL = [
    "model.backbone.options.embed_dim=48",
    "model.backbone.options.depth=4",
    "model.backbone.options.num_heads=2",
    "trainer.accelerator=auto",
    "trainer.precision=auto",
]
SMOKE = {
    "quickstart": [],
    "retfound_cls": ["data.card=synthetic_cls", "model.backbone.weights=null", *SMALL],
    "urfound_cls": ["data.card=synthetic_cls", "model.backbone.weights=null", *SMALL],
    "lora_retfound_cls": ["data.card=synthetic_cls", "model.backbone.weights=null", *SMALL],
    "dinov3_linear_cls": ["data.card=synthetic_cls", "model.backbone.weights=null", *SMALL],
    "funduseg_refuge": ["data.card=synthetic_fundus", "model.backbone.weights=null", *SMALL],
    "dinov3_linear_seg": ["data.card=synthetic_fundus", "model.backbone.weights=null", *SMALL],
    "cellvta_pannuke": ["data.card=synthetic_cells", "model.backbone.weights=null", *SMALL],
    "hiendmae_btcv": ["data.card=synthetic_ct", "model.backbone.weights=null", *SMALL],
    "pretrain_mae_retfound": ["data.card=synthetic_fundus", "model.backbone.weights=null", *SMALL],
    "pretrain_mae_hiendmae_ct": ["data.card=synthetic_ct", "model.backbone.weights=null", *SMALL],
    "pretrain_dino_dinov3": ["data.card=synthetic_cls", "model.backbone.weights=null", *SMALL],
    "explora_dinov3": ["data.card=synthetic_cls", "model.backbone.weights=null", *SMALL],
}


def _sh(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv, env, empty folder): the wheel built from a copy of the sources, installed with --no-deps in a
    venv whose dependencies come from this interpreter's site-packages through a .pth file."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:  # a copy, so that the build's build/ and egg-info stay out of the checkout
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    dist = tmp / "dist"
    built = _sh(sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation", "-q", "-w", dist)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = dist.glob("medvit-*.whl")

    venv = tmp / "venv"
    made = _sh(sys.executable, "-m", "venv", "--without-pip", venv)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    # installed before the .pth exists, so pip sees an empty environment
    pip = _sh(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    purelib = _sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    # appended after the venv's own site-packages; the .venv's editable-install hook (a .pth there) never runs
    (Path(purelib) / "_medvit_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDVIT_", "MLFLOW_")) and k != "PYTHONPATH"}
    env.update(MEDVIT_CACHE=str(tmp / "cache"), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    empty = tmp / "empty"
    empty.mkdir()
    return venv, env, empty


def test_wheel_holds_the_shipped_files_and_shadows_the_checkout(installed):
    venv, env, empty = installed
    code = (
        "import medvit; from medvit.resources import shipped_dir; from medvit.config import list_pipelines; "
        "print(medvit.__file__); print(shipped_dir('configs')); print(' '.join(sorted(list_pipelines())))"
    )
    out = _sh(venv / "bin" / "python", "-c", code, cwd=empty, env=env)
    assert out.returncode == 0, out.stderr
    module, configs, names = out.stdout.strip().splitlines()
    assert Path(module).is_relative_to(venv), f"medvit imported from {module}, not from the wheel"
    assert Path(configs).is_relative_to(venv) and (Path(configs) / "trainer" / "cpu.yaml").is_file()
    assert names.split() == PIPELINES


def test_cards_list(installed):
    venv, env, empty = installed
    out = _sh(venv / "bin" / "medvit", "cards", "list", cwd=empty, env=env)
    assert out.returncode == 0, out.stderr
    listed = [line.split()[0] for line in out.stdout.strip().splitlines()[1:]]
    assert listed == CARDS and {"synthetic_ct", "refuge"} <= set(listed)


def test_every_shipped_pipeline_is_listed_here():
    assert set(PIPELINES) == set(SMOKE)


@pytest.mark.parametrize("name", PIPELINES)
def test_shipped_pipeline_checks_by_name(installed, name):
    venv, env, empty = installed
    out = _sh(venv / "bin" / "medvit", "run", name, *SMOKE[name], "--check", cwd=empty, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"ok: {name}" in out.stdout and "Traceback" not in out.stderr
    # synthetic sets land in ./data/<set> (the pipelines' default roots); nothing medvit reads by name is here
    assert not {"pipelines", "configs", "data_cards"} & {p.name for p in empty.iterdir()}
