"""Issue #13, class 3 (YAML part): small YAML files that would exhaust memory, the stack or the reader.
Pipelines, fragments, data cards, package specs and MLmodel files are read within bounds (medvit.yamlfile):
one line naming the file, exit 2, nothing written, under a memory limit set on the process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hostile_checks import address_space_limit, one_line_exit_2

MEDVIT = str(Path(sys.executable).parent / "medvit")
BUDGET = 6 << 30  # address space for the whole process (torch and MONAI imported): far below a bomb's need

LAUGHS = "\n".join(
    ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
    + ["name: bomb"]
)


def _medvit(*args, cwd, env=None):
    out = subprocess.run(
        [MEDVIT, *args], cwd=cwd, capture_output=True, text=True, timeout=180,
        preexec_fn=address_space_limit(BUDGET),
        env={**os.environ, "MEDVIT_CACHE": str(Path(cwd) / "cache"), **(env or {})},
    )  # fmt: skip
    return out


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (LAUGHS.encode(), "alias references"),
        (("x: " + "[" * 5000 + "]" * 5000).encode(), "nested deeper than"),
        ("name: caf\xe9\n".encode("latin-1"), "not UTF-8"),
        (b"name: big\n" + b"# padding\n" * 120_000, "too large for a YAML file"),
        (b"name: [unclosed\n", "not valid YAML"),
    ],
    ids=["billion-laughs", "deep", "latin1", "large", "broken"],
)
def test_hostile_pipeline_file(tmp_path, content, needle):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_bytes(content)
    out = _medvit("run", str(pipeline), "--check", cwd=tmp_path)
    one_line_exit_2(out, "p.yaml", needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.yaml"]  # no runs/, no mlruns.db


def test_a_pipe_is_refused_not_read(tmp_path):
    fifo = tmp_path / "p.yaml"
    os.mkfifo(fifo)  # opening it would block forever
    one_line_exit_2(_medvit("run", str(fifo), "--check", cwd=tmp_path), "not a regular file")


def test_hostile_fragment_and_card(tmp_path):
    (tmp_path / "configs" / "trainer").mkdir(parents=True)
    (tmp_path / "configs" / "trainer" / "bomb.yaml").write_text(LAUGHS)
    out = _medvit("run", "quickstart", "defaults=[trainer/bomb]", "--check", cwd=tmp_path)
    one_line_exit_2(out, "bomb.yaml", "alias references")
    (tmp_path / "data_cards").mkdir()
    (tmp_path / "data_cards" / "bomb.yaml").write_text(LAUGHS)
    one_line_exit_2(_medvit("cards", "show", "bomb", cwd=tmp_path), "bomb.yaml", "alias references")


def test_hostile_package_spec(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "medvit.yaml").write_text(LAUGHS)
    (package / "model.safetensors").write_bytes(b"")
    out = _medvit("predict", "-m", str(package), "-i", str(package), "-o", str(tmp_path / "out"), cwd=tmp_path)
    one_line_exit_2(out, "medvit.yaml", "alias references")
    assert not (tmp_path / "out").exists()


def test_ordinary_aliases_still_work(tmp_path):
    from medvit.yamlfile import read_yaml

    f = tmp_path / "ok.yaml"
    f.write_text("base: &b {lr: 0.1}\nfirst: *b\nsecond: *b\n")
    assert read_yaml(f) == {"base": {"lr": 0.1}, "first": {"lr": 0.1}, "second": {"lr": 0.1}}
