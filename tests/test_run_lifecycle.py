"""A run killed midway resumes from its last checkpoint and finishes; DDP on 2 CPU processes makes one run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "pipelines" / "quickstart.yaml"
MEDVIT = str(Path(sys.executable).parent / "medvit")
SMALL = [
    "trainer.progress=none",
    "model.backbone.options.embed_dim=48",
    "model.backbone.options.depth=4",
    "model.backbone.options.num_heads=2",
    "model.head.options.feature_size=8",
    "transforms.spacing=[3,3,4]",
    "transforms.patch_size=[16,16,16]",
    "model.backbone.img_size=[16,16,16]",
    "data.limit_cases=4",
    "trainer.check_val_every_n_epoch=1",
    "trainer.log_every_n_steps=1",
]


def _env(tmp_path):
    env = dict(os.environ)
    env.update(MEDVIT_CACHE=str(REPO / ".pytest_cache" / "medvit"), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for key in ("MLFLOW_TRACKING_URI", "MEDVIT_RUN_DIR", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"):
        env.pop(key, None)
    return env


def _ckpt_epoch(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # noqa: BLE001  (being written)
        return None


@pytest.mark.slow
def test_killed_run_resumes_from_last_checkpoint(tmp_path):
    import mlflow

    env = _env(tmp_path)
    proc = subprocess.Popen(
        [MEDVIT, "run", str(QUICKSTART), *SMALL, "trainer.max_epochs=8"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    last = None
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            found = list((tmp_path / "runs" / "quickstart").glob("*/checkpoints/last.ckpt"))
            if found and (_ckpt_epoch(found[0]) or 0) >= 2:
                last = found[0]
                break
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert last is not None, proc.stdout.read().decode()[-2000:]
    run_dir = last.parent.parent
    killed_at = torch.load(last, map_location="cpu", weights_only=True)
    assert killed_at["epoch"] < 7 and not (run_dir / "package").exists()

    out = subprocess.run(
        [MEDVIT, "run", "--resume", str(run_dir)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert (run_dir / "package" / "medvit.yaml").is_file()
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    steps_per_epoch = killed_at["global_step"] // (killed_at["epoch"] + 1)
    assert (final["epoch"], final["global_step"]) == (7, 8 * steps_per_epoch), (
        killed_at["epoch"],
        killed_at["global_step"],
    )
    assert final["global_step"] == 8 * steps_per_epoch  # continued, not restarted
    assert final["optimizer_states"][0]["state"]  # optimiser state carried
    # one MLflow run, continued and finished
    info = json.loads((run_dir / "run.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = client.search_runs([info["experiment_id"]])
    assert len(runs) == 1 and runs[0].info.run_id == info["mlflow_run_id"]
    assert runs[0].info.status == "FINISHED"
    epochs = sorted({int(m.value) for m in client.get_metric_history(info["mlflow_run_id"], "epoch")})
    assert epochs[0] == 0 and 7 in epochs  # one history from the first epoch to the last


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_logs_one_run(tmp_path):
    import mlflow

    out = subprocess.run(
        [MEDVIT, "run", str(QUICKSTART), *SMALL, "defaults=[trainer/ddp-cpu]", "trainer.max_steps=2",
         "trainer.max_epochs=1", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"],
        cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    run_dirs = list((tmp_path / "runs" / "quickstart").iterdir())
    assert len(run_dirs) == 1
    config = (run_dirs[0] / "config.yaml").read_text()
    assert "strategy: ddp" in config and "devices: 2" in config
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    experiments = [e for e in client.search_experiments() if e.name == "quickstart"]
    runs = client.search_runs([experiments[0].experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert (run_dirs[0] / "package" / "model.safetensors").is_file()


@pytest.mark.slow
def test_quickstart_as_shipped_reaches_dice_above_0_7(tmp_path):
    """The README's main job, unchanged: trains, logs to mlruns.db, writes a package; Dice > 0.7."""
    import mlflow

    out = subprocess.run(
        [MEDVIT, "run", str(QUICKSTART), "trainer.progress=none"],
        cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    lines = dict(line.split(None, 1) for line in out.stdout.splitlines() if line.startswith(("val/", "test/")))
    assert float(lines["val/dice"]) > 0.7 and float(lines["test/dice"]) > 0.7, out.stdout
    run_dir = next((tmp_path / "runs" / "quickstart").iterdir())
    assert (run_dir / "package" / "medvit.yaml").is_file()
    info = json.loads((run_dir / "run.json").read_text())
    run = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}").get_run(info["mlflow_run_id"])
    assert run.data.metrics["val/dice"] > 0.7 and run.data.params["trainer/max_epochs"] == "15"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_of_one_process_each_make_one_run(tmp_path):
    """As on a cluster: every process runs `medvit run` itself from the same folder (two nodes on loopback,
    gloo); only global rank 0 creates the run folder and the MLflow run, the other learns them."""
    import mlflow

    port = str(_free_port())
    args = [MEDVIT, "run", str(QUICKSTART), *SMALL, "trainer.num_nodes=2", "trainer.strategy=ddp",
            "trainer.devices=1", "trainer.accelerator=cpu", "trainer.precision=32", "trainer.max_steps=2",
            "trainer.max_epochs=1", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]  # fmt: skip
    procs = []
    for node in (0, 1):
        env = _env(tmp_path) | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2",
                                "NODE_RANK": str(node)}  # fmt: skip
        procs.append(subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))  # fmt: skip
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs, strict=True):
        assert p.returncode == 0, stdout[-2000:] + stderr[-2000:]
        assert "Traceback" not in stderr
    assert "model package:" in outs[0][0] and "model package:" not in outs[1][0]
    run_dirs = list((tmp_path / "runs" / "quickstart").iterdir())
    assert len(run_dirs) == 1
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].info.run_id == json.loads((run_dirs[0] / "run.json").read_text())["mlflow_run_id"]


def test_run_failing_after_its_folder_exists_is_marked_failed(tmp_path, monkeypatch):
    """A failure inside training: one line naming the run folder, the MLflow run FAILED (not RUNNING), the
    traceback kept in error.log."""
    import mlflow
    from typer.testing import CliRunner

    from medvit.cli import app
    from medvit.tasks.modules.segmentation import SegmentationTask

    def broken(self, batch, batch_idx):
        raise RuntimeError("simulated out of memory")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDVIT_CACHE", str(REPO / ".pytest_cache" / "medvit"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(SegmentationTask, "training_step", broken)
    result = CliRunner().invoke(app, ["run", "quickstart", "--smoke"])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "run failed: simulated out of memory" in lines[0] and "FAILED" in lines[0]
    assert "Traceback" not in result.output
    run_dir = next((tmp_path / "runs" / "quickstart").iterdir())
    assert "simulated out of memory" in (run_dir / "error.log").read_text()
    run_id = json.loads((run_dir / "run.json").read_text())["mlflow_run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")  # absolute: stores are cached
    assert client.get_run(run_id).info.status == "FAILED"


@pytest.mark.slow
def test_terminated_run_is_marked_killed_and_resumable(tmp_path):
    """SIGTERM (what schedulers send before killing a job): the MLflow run ends KILLED, never RUNNING, and the
    one-line message says how to resume."""
    import mlflow

    proc = subprocess.Popen(
        [MEDVIT, "run", str(QUICKSTART), *SMALL, "trainer.max_epochs=50"],
        cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if list((tmp_path / "runs" / "quickstart").glob("*/checkpoints/last.ckpt")):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode not in (0, None), stdout[-2000:]
    assert "Traceback" not in stderr and "run interrupted" in stderr and "--resume" in stderr, stderr[-2000:]
    run_dir = next((tmp_path / "runs" / "quickstart").iterdir())
    run_id = json.loads((run_dir / "run.json").read_text())["mlflow_run_id"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    assert client.get_run(run_id).info.status == "KILLED"
