"""Imports point down: the subpackages of medvit form no cycle, and the rooms named in the design stay apart.

Every module under ``medvit/`` is parsed with :mod:`ast`; every import counts, at module level or inside a
function, relative ones resolved, and so do the ``importlib.import_module`` calls and the lazy tables of
module names they read. A module belongs to a node: its subpackage (``medvit.io``, ``medvit.heads``, ...)
or, for a top-level module (``medvit/engine.py``), that module. ``medvit/__init__.py`` is the public
facade that imports lazily, so its own imports do not count.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medvit"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _facade() -> dict[str, str]:
    """The facade's lazy table: public name -> the module that defines it (``load_package`` -> medvit.package)."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Dict):
            return {k.value: v.value for k, v in zip(node.value.keys, node.value.values, strict=True)}
    return {}


FACADE = _facade()


def _node(module: str) -> str:
    """The graph node of a ``medvit`` module: its subpackage, or the top-level module itself."""
    return ".".join(module.split(".")[:2])


def _known(name: str) -> str | None:
    """``name`` as the longest medvit module it names (``medvit.io.nifti.read`` -> ``medvit.io.nifti``); a
    name the facade re-exports (``medvit.load_package``) as the module that defines it."""
    parts = name.split(".")
    while len(parts) > 1:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    attr = name.split(".")[1] if name.count(".") else ""
    return FACADE.get(attr) if FACADE.get(attr) in MODULES else None


def _imports(module: str, path: Path) -> set[str]:
    """The medvit modules that ``module`` imports anywhere in its file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    dynamic = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # ``from medvit.io import nifti`` imports the submodule medvit.io.nifti; ``from medvit import
            # load_package`` goes through the facade to medvit.package
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.add(arg.value)
            else:
                dynamic = True
    if dynamic:
        # a lazy table (``{"name": "medvit.heads", ...}``) feeds import_module: its module names count
        found.update(n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str))
    return {known for name in found if name.startswith("medvit.") and (known := _known(name))}


def _graph() -> dict[str, dict[str, list[str]]]:
    """``node -> {imported node: [the module-level edges that make it]}``, self-edges left out."""
    graph: dict[str, dict[str, list[str]]] = {}
    for module, path in MODULES.items():
        if module == "medvit":
            continue
        source = _node(module)
        graph.setdefault(source, {})
        for target in sorted(_imports(module, path)):
            if _node(target) != source:
                graph[source].setdefault(_node(target), []).append(f"{module} -> {target}")
    return graph


GRAPH = _graph()


def _find_cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """One cycle of ``graph`` as a node path that ends where it starts, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, {})):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_covers_the_package():
    assert {"medvit.io", "medvit.heads", "medvit.adapters", "medvit.inference", "medvit.engine"} <= set(GRAPH)
    assert "medvit.layers" in GRAPH["medvit.heads"]  # the parser sees real edges
    assert "medvit.heads" in GRAPH["medvit.models"]  # and the lazy tables that feed import_module
    assert _known("medvit.load_package") == "medvit.package" and _known("medvit.io.nifti.x") == "medvit.io.nifti"


def test_find_cycle_reports_the_path():
    graph = {"a": {"b": []}, "b": {"c": []}, "c": {"a": []}, "d": {"a": []}}
    assert _find_cycle(graph) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b": []}, "b": {}}) is None


def test_no_cycle_between_subpackages():
    cycle = _find_cycle(GRAPH)
    if cycle:
        edges = [f"  {a} -> {b}: {', '.join(GRAPH[a][b])}" for a, b in zip(cycle[:-1], cycle[1:], strict=True)]
        pytest.fail("import cycle " + " -> ".join(cycle) + "\n" + "\n".join(edges))


@pytest.mark.parametrize(
    ("source", "forbidden"),
    [
        ("medvit.heads", ("medvit.adapters",)),
        ("medvit.registry", ("medvit.inference",)),
        ("medvit.transforms", ("medvit.data", "medvit.inference", "medvit.tasks", "medvit.engine")),
        ("medvit.io", ("medvit.data", "medvit.inference", "medvit.tasks", "medvit.engine")),
    ],
)
def test_rooms_stay_apart(source, forbidden):
    edges = {target: found for target, found in GRAPH[source].items() if target in forbidden}
    assert not edges, f"{source} must not import {', '.join(sorted(edges))}: {edges}"


def test_importing_inference_stays_light():
    """``medvit predict`` from a package folder loads neither Lightning nor the training side.

    MONAI imports MLflow itself when it is installed (``monai.handlers``), so MLflow is asserted absent only
    where MONAI leaves it out; what medvit controls is that neither the engine, the tasks nor the registry's
    writing side come in with the predictor (the registry loads only to resolve a ``models:/`` URI).
    """
    heavy = ("lightning", "pytorch_lightning", "medvit.engine", "medvit.tasks.modules", "medvit.registry.register")
    code = (
        "import sys, medvit.inference; "
        f"print(' '.join(sorted(m for m in {(*heavy, 'mlflow')!r} if m in sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    loaded = set(done.stdout.split())
    assert not loaded & set(heavy), loaded
    monai = subprocess.run(
        [sys.executable, "-c", "import sys, monai; print('mlflow' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    if monai.stdout.strip() == "False":
        assert "mlflow" not in loaded
