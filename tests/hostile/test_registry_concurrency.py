"""Issue #13, class 8: the registry under concurrent use. A real ``mlflow server`` backed by a real PostgreSQL
(a throw-away cluster on loopback) while four processes register versions of one model and move its alias
at once, and two others predict by that alias through one shared cache:

- every version is registered exactly once (versions 1..N, no gap, no duplicate; each version's
  ``package_sha256`` tag is the package its registering process sent);
- the alias ends on a version that exists;
- every predict by alias gets a complete package, the one registered under the version it resolved;
- the cache holds only complete entries (no temporary folder left, every entry loads and matches its hash).

Skips with one line where PostgreSQL or psycopg2 cannot be installed (``.ci/run`` installs both).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packages import make_package
from servers import CLEAN_ENV, mlflow_server, postgres
from typer.testing import CliRunner

from medvit.cli import app
from medvit.package import load_package
from medvit.registry.cache import RECORD, cache_root

pytestmark = pytest.mark.slow

NAME = "concurrent"
WRITERS, ROUNDS, READERS = 4, 3, 2

# one registering process: its packages in turn, each registered with the alias moved onto it, and another
# alias that does not exist yet set there too
_WRITER = textwrap.dedent(
    """
    import json, os, sys, time
    from medvit.package import load_package
    from medvit.registry import register_package, set_alias
    url, name, go, *packages = sys.argv[1:]
    print(json.dumps({"ready": True}), flush=True)
    while not os.path.exists(go):  # all writers start at once
        time.sleep(0.01)
    for pkg in packages:
        got = register_package(pkg, name=name, alias="champion", tracking_uri=url)
        set_alias(name, "candidate", got["version"], tracking_uri=url)  # a new alias, set by four at once
        print(json.dumps({"version": got["version"], "sha256": load_package(pkg).sha256}), flush=True)
    """
)

# one predicting process: predict by alias until the writers are done (then once more)
_READER = textwrap.dedent(
    """
    import json, os, sys
    from medvit import Predictor
    image, done = sys.argv[1:]
    while True:
        last = os.path.exists(done)
        predictor = Predictor("models:/NAME@champion")
        mask = predictor.predict(image).mask
        print(json.dumps({"version": predictor.source["version"], "sha256": predictor.package.sha256,
                          "shape": list(mask.shape)}), flush=True)
        if last:
            break
    """.replace("NAME", NAME)
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("pg-server")
    with postgres() as database, mlflow_server(root, database, workers=2) as url:
        yield url


def _env(url: str, cache: Path) -> dict[str, str]:
    return {**CLEAN_ENV, "MLFLOW_TRACKING_URI": url, "MEDVIT_CACHE": str(cache)}


def test_four_writers_and_two_readers_at_once(server, tmp_path, monkeypatch):
    from PIL import Image

    packages = [make_package(tmp_path / f"pkg{i}", "seg2d", seed=i) for i in range(1 + WRITERS * ROUNDS)]
    sha = {i: load_package(p).sha256 for i, p in enumerate(packages)}
    assert len(set(sha.values())) == len(packages)  # each version is told apart by its package
    image = tmp_path / "fundus.png"
    Image.new("RGB", (48, 40), (120, 60, 30)).save(image)
    cache, done = tmp_path / "cache", tmp_path / "writers-done"
    env = _env(server, cache)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    monkeypatch.setenv("MEDVIT_CACHE", str(cache))

    import mlflow

    client = mlflow.MlflowClient(server)
    run = client.create_run(client.create_experiment("elsewhere")).info.run_id  # so the writers race to create
    args = ["register", str(packages[0]), "--name", NAME, "--alias", "champion", "--run-id", run]  # the registry
    first = CliRunner().invoke(app, args)  # experiment (and the alias exists before the readers start)
    assert first.exit_code == 0, first.output

    def spawn(code: str, *args, tag: str) -> subprocess.Popen:
        log = tmp_path / f"{tag}.stderr"
        with open(log, "w") as err:
            cmd = [sys.executable, "-c", code, *map(str, args)]
            proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=err, text=True)
        proc.log = log
        return proc

    def lines(proc: subprocess.Popen, first: str = "") -> list[dict]:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, proc.log.read_text()[-3000:]
        return [json.loads(line) for line in (first + out).splitlines() if "ready" not in line]

    readers = [spawn(_READER, image, done, tag=f"reader{r}") for r in range(READERS)]
    firsts = [proc.stdout.readline() for proc in readers]  # each reader predicts once before the writers start
    assert all(firsts), [proc.log.read_text()[-3000:] for proc in readers]
    chunks = [packages[1 + w * ROUNDS : 1 + (w + 1) * ROUNDS] for w in range(WRITERS)]
    go = tmp_path / "go"
    writers = [spawn(_WRITER, server, NAME, go, *chunk, tag=f"writer{w}") for w, chunk in enumerate(chunks)]
    assert all(proc.stdout.readline() for proc in writers)  # imported, waiting
    go.touch()
    written = [w for proc in writers for w in lines(proc)]
    done.touch()
    read = [r for proc, first in zip(readers, firsts, strict=True) for r in lines(proc, first)]

    # every version registered exactly once, with the package its writer sent
    registered = {"1": sha[0], **{w["version"]: w["sha256"] for w in written}}
    assert len(written) == WRITERS * ROUNDS and len(registered) == len(packages)
    assert sorted(registered, key=int) == [str(v) for v in range(1, len(packages) + 1)]
    assert sorted(registered.values()) == sorted(sha.values())

    versions = client.search_model_versions(f"name='{NAME}'")
    assert sorted(int(v.version) for v in versions) == list(range(1, len(packages) + 1))
    assert {v.version: v.tags["package_sha256"] for v in versions} == registered
    aliases = client.get_registered_model(NAME).aliases
    alias = aliases["champion"]
    assert str(alias) in registered and str(aliases["candidate"]) in registered

    # every predict got a complete package: the one registered under the version it resolved
    assert len(read) >= 2 * READERS
    for r in read:
        assert r["sha256"] == registered[r["version"]] and r["shape"] == [40, 48]

    # the cache: complete entries only, each the package its version holds
    entries = [p for p in cache_root().rglob(RECORD)]
    assert entries and {e.parent.name for e in entries} == {r["version"] for r in read}
    for record in entries:
        info = json.loads(record.read_text())
        assert load_package(record.parent).sha256 == info["package_sha256"] == registered[info["version"]]
    leftovers = [p.name for p in cache.rglob("*") if p.name.endswith((".tmp", ".old", ".download"))]
    assert leftovers == []

    # and the CLI by alias, afterwards, predicts with the version the alias ends on
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["predict", "-m", f"models:/{NAME}@champion", "-i", str(image), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert str(manifest["model"]["version"]) == str(alias)
