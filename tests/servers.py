"""Real servers on loopback for tests: processes in their own session (stopping one stops its workers),
waited for over HTTP, and a throw-away PostgreSQL cluster. Nothing here reaches beyond 127.0.0.1."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

MLFLOW = str(Path(sys.executable).with_name("mlflow"))
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
# the venv's bin first on PATH (uvicorn, as in an activated venv)
CLEAN_ENV["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def free_port() -> int:
    """A loopback TCP port nobody listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], *, env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    """Start ``cmd`` in its own session, its output in ``log``."""
    with open(log, "w") as out:  # own session: stopping it stops the workers it starts too
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process's session, SIGKILL after 5 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_until_up(proc: subprocess.Popen, url: str, log: Path, *, timeout: float = 120) -> None:
    """Wait for ``url`` to answer 200; fail with the log's tail if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[:3]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or still starting
            pass
        time.sleep(0.3)
    pytest.fail(f"{url} not up after {timeout} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def mlflow_server(root: Path, backend: str, *, workers: int = 1) -> Iterator[str]:
    """``mlflow server`` on a loopback port with backend store ``backend`` and a proxied artifact folder under
    ``root``; yields its URL."""
    port = free_port()
    cmd = [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    cmd += ["--backend-store-uri", backend, "--artifacts-destination", str(root / "art")]
    proc = start(cmd, env=CLEAN_ENV, cwd=root, log=root / "server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, f"{url}/health", root / "server.log")
        yield url
    finally:
        stop(proc)


def postgres_binaries() -> Path | None:
    """The folder holding ``initdb`` and ``postgres`` (Debian's ``/usr/lib/postgresql/N/bin``, or on PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    initdb = found[-1] if found else shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_owner(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run ``cmd`` as the ``postgres`` user."""
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("PostgreSQL cannot run as root and runuser is not installed")
    return [runuser, "-u", "postgres", "--", *cmd]


@contextlib.contextmanager
def postgres(database: str = "mlflow") -> Iterator[str]:
    """A throw-away PostgreSQL cluster on a loopback port (trust authentication, data in a temporary folder),
    with an empty ``database``; yields its SQLAlchemy URL. Skips (one line) where PostgreSQL or psycopg2 is not
    installed."""
    bindir = postgres_binaries()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install psycopg2-binary)")
    data = Path(tempfile.mkdtemp(prefix="medvit-pg-"))  # outside pytest's owner-only tmp: the server reads it
    try:
        if os.geteuid() == 0:
            with contextlib.suppress(KeyError):
                import pwd

                pw = pwd.getpwnam("postgres")
                os.chown(data, pw.pw_uid, pw.pw_gid)
        init = _as_owner([str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres"])
        done = subprocess.run(init, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            pytest.skip(f"initdb failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
        port = free_port()
        cmd = _as_owner([str(bindir / "postgres"), "-D", str(data / "db"), "-h", "127.0.0.1", "-p", str(port)])
        proc = start([*cmd, "-k", str(data)], env=dict(os.environ), cwd=data, log=data / "server.log")
        try:
            _wait_for_postgres(psycopg2, proc, port, data / "server.log")
            conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {database}")
            conn.close()
            yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{database}"
        finally:
            stop(proc)
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _wait_for_postgres(psycopg2, proc: subprocess.Popen, port: int, log: Path, *, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"postgres exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres").close()
            return
        except psycopg2.OperationalError:
            time.sleep(0.2)
    pytest.fail(f"postgres not up after {timeout} s:\n{log.read_text()[-3000:]}")
