"""Model packages: save/load round trip, and every bad package gives a one-line error naming the file."""

from __future__ import annotations

import os
import stat

import pytest
import torch
import yaml
from packages import make_package

from medvit.errors import ConfigError, InputError
from medvit.models import build_model
from medvit.package import SPEC_FILE, WEIGHTS_FILE, load_package, package_hash, save_package


@pytest.mark.parametrize("kind", ["seg3d", "seg2d", "cls2d"])
def test_round_trip_gives_identical_outputs(tmp_path, kind):
    folder = make_package(tmp_path / "pkg", kind, seed=3)
    pkg = load_package(folder)
    assert pkg.sha256 == package_hash(folder)
    torch.manual_seed(3)
    ref = build_model(pkg.spec.model).eval()
    model = pkg.build()
    size = (1, 1, 32, 32, 32) if kind == "seg3d" else (1, 3, 64, 64)
    x = torch.randn(size)
    with torch.no_grad():
        assert torch.equal(ref(x), model(x))
    assert not model.training


def test_run_folder_and_spec_file_resolve(tmp_path):
    make_package(tmp_path / "run" / "package", "cls2d")
    assert load_package(tmp_path / "run").path == tmp_path / "run" / "package"
    assert load_package(tmp_path / "run" / "package" / SPEC_FILE).spec.task == "classification"


def test_existing_folder_is_not_overwritten(tmp_path):
    make_package(tmp_path / "pkg", "cls2d")
    with pytest.raises(InputError, match="already exists"):
        make_package(tmp_path / "pkg", "cls2d")


def test_package_is_readable_by_colleagues_and_overwrite_replaces(tmp_path):
    """Under umask 022 the folder is 0755 and its files 0644 (not the owner-only modes of a temp folder)."""
    old = os.umask(0o022)
    try:
        folder = make_package(tmp_path / "pkg", "cls2d", seed=1)
        first = package_hash(folder)
        model = build_model(load_package(folder).spec.model)
        save_package(model, load_package(folder).spec, folder, overwrite=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert sorted(p.name for p in folder.iterdir()) == sorted([SPEC_FILE, WEIGHTS_FILE])
    for f in folder.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f.name
    assert package_hash(folder) != first
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"]  # no temp folder or moved-aside old package left


def _edit(folder, **changes):
    data = yaml.safe_load((folder / SPEC_FILE).read_text())
    for key, value in changes.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    (folder / SPEC_FILE).write_text(yaml.safe_dump(data))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other"}, "not a medvit model package"),
        ({"task": "detection"}, "task"),
        ({"model.head.name": "nope"}, "model.head.name"),
        ({"preprocessing.spacing": [1.0]}, "spacing must be 3 positive numbers"),
        ({"labels": {0: "a"}}, "labels name 1 classes"),
        ({"unknown_key": 1}, "unknown_key"),
    ],
)
def test_bad_spec_names_the_key(tmp_path, change, message):
    folder = make_package(tmp_path / "pkg", "seg3d")
    _edit(folder, **change)
    with pytest.raises(InputError, match=message) as info:
        load_package(folder)
    assert "\n" not in str(info.value) and str(folder) in str(info.value)


def test_missing_and_corrupt_weights(tmp_path):
    folder = make_package(tmp_path / "pkg", "cls2d")
    (folder / WEIGHTS_FILE).write_bytes(b"garbage")
    with pytest.raises(InputError, match="cannot read the package weights"):
        load_package(folder).build()
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(InputError, match="no model.safetensors"):
        load_package(folder)
    with pytest.raises(InputError, match="no such model package"):
        load_package(tmp_path / "absent")
    with pytest.raises(InputError, match="not a medvit model package"):
        load_package(tmp_path)


def test_weights_of_another_model_are_refused(tmp_path):
    a = make_package(tmp_path / "a", "seg2d")
    b = make_package(tmp_path / "b", "cls2d")
    (b / WEIGHTS_FILE).write_bytes((a / WEIGHTS_FILE).read_bytes())
    with pytest.raises(InputError, match="weights do not match"):
        load_package(b).build()


def test_unknown_head_option_names_the_key():
    from packages import SPECS

    spec = {**SPECS["cls2d"]["model"], "head": {"name": "linear", "options": {"bogus": 1}}}
    with pytest.raises(ConfigError, match=r"model.head.options: unknown option\(s\) bogus"):
        build_model(spec)
