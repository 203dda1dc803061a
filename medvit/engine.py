"""Run a pipeline: check everything, then train, validate, test, log to MLflow and write a model package.

``run_pipeline(path, overrides)`` is what ``medvit run`` calls. Every check that can fail on bad input
(schema, data card and files, backbone weights, hardware, transforms on a first case) runs before the run
folder is created, so a bad pipeline leaves nothing behind. The run folder holds ``config.yaml`` (the
resolved pipeline, written before training), ``run.json`` (MLflow ids), ``checkpoints/{best,last}.ckpt``,
``metrics.json`` and ``package/`` (the model package). A run that fails after its folder exists marks its
MLflow run FAILED (KILLED when interrupted), keeps the traceback in ``error.log`` and says so in one line.

More than one process: only global rank 0 creates the run folder and the MLflow run and opens the tracking
store. Processes that Lightning starts itself (``devices: 2`` on one machine) learn the run from the
environment their parent leaves them; processes started from outside (torchrun, SLURM, one process per
node) join the process group first and receive the run from rank 0 through it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import (
    Callback,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.strategies import DDPStrategy

from medvit import device
from medvit.backbones import describe_backbone
from medvit.data.cards import find_card, load_card
from medvit.data.datamodule import MedvitDataModule
from medvit.errors import ConfigError, InputError, MedvitError, one_line
from medvit.models.build import TINY_HEAD_OPTIONS
from medvit.package import PackageSpec, Provenance, read_lightning_checkpoint, save_package
from medvit.pipeline import PipelineConfig, load_pipeline
from medvit.registry import register_package
from medvit.registry.uri import default_tracking_uri

RUN_DIR_ENV = "MEDVIT_RUN_DIR"
RUN_JSON_ENV = "MEDVIT_RUN_JSON"
SMOKE_STEPS = 2
log = logging.getLogger(__name__)


class RunFailed(MedvitError):
    """A run that failed after its folder existed (exit code 1: the input was fine, the run was not)."""

    exit_code = 1


@dataclass
class RunResult:
    run_dir: Path
    package: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    registered: dict[str, Any] | None = None
    test_is_validation: bool = False  # the card has no test split: test metrics are on the validation cases


@dataclass(frozen=True)
class Hardware:
    """What the machine the run starts on decided: Lightning accelerator and precision, loader workers."""

    accelerator: str
    precision: str
    num_workers: int
    note: str


def tracking_uri(cfg: PipelineConfig) -> str:
    """The pipeline's URI, else the registry's default (``$MLFLOW_TRACKING_URI`` or ``./mlruns.db``)."""
    return cfg.tracking.tracking_uri or default_tracking_uri()


def resolve_hardware(cfg: PipelineConfig) -> Hardware:
    """``accelerator: auto`` and ``precision: auto`` decided on this machine (the rule predict uses), loader
    workers capped by the CPUs this process may use.

    Raises:
        ConfigError: A GPU asked for explicitly on a machine without one.
    """
    t = cfg.trainer
    accelerator = device.resolve_accelerator(t.accelerator)
    precision = device.trainer_precision(t.precision, accelerator)
    cpus = device.cpu_count()
    workers = min(cfg.data.num_workers, cpus)
    parts = [f"{accelerator}{' (auto)' if t.accelerator == 'auto' else ''}"]
    parts.append(f"precision {precision}{' (auto)' if t.precision == 'auto' else ''}")
    if workers < cfg.data.num_workers:
        parts.append(f"{workers} loader workers ({cfg.data.num_workers} asked, {cpus} CPUs)")
    return Hardware(accelerator, precision, workers, "hardware: " + ", ".join(parts))


def smoke_overrides(cfg: PipelineConfig) -> list[str]:
    """Overrides that turn a pipeline into a smoke run: the synthetic set of its task kind, a tiny backbone of
    the same family without pretrained weights, small inputs, a couple of steps, one process."""
    card = load_card(cfg.data.card)
    dims = card.spatial_dims
    patch = describe_backbone(cfg.model.backbone.name)["patch_size"]
    patch = max(patch) if isinstance(patch, list | tuple) else int(patch)
    size = json.dumps([max(32, (4 if dims == 2 else 3) * patch)] * dims)
    shape = [f"transforms.resize={size}"] if dims == 2 else [f"transforms.patch_size={size}"]
    return [
        f"data.card={cfg.kind.smoke_card(dims)}",
        "data.root=null",
        "data.batch_size=2",
        "data.val_batch_size=1",
        "data.num_workers=0",
        "data.cache=false",
        "data.limit_cases=4",
        "model.num_classes=null",
        "model.backbone.weights=null",
        f"model.backbone.img_size={size}",
        "model.backbone.options.embed_dim=48",
        "model.backbone.options.depth=4",
        "model.backbone.options.num_heads=2",
        *[f"model.head.options.{k}={v}" for k, v in TINY_HEAD_OPTIONS.get(cfg.model.head.name, {}).items()],
        *shape,
        "transforms.samples_per_volume=1",
        "trainer.accelerator=auto",
        "trainer.devices=1",
        "trainer.num_nodes=1",
        "trainer.strategy=auto",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={SMOKE_STEPS}",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.check_val_every_n_epoch=1",
        "trainer.log_every_n_steps=1",
        "tracking.register_as=null",
        f"tracking.run_name={cfg.name}-smoke",
        *(["task.probe=null"] if "probe" in type(cfg.task).model_fields else []),  # its card is not synthetic
    ]


# ----------------------------------------------------------------------------------------------- building


def build_datamodule(cfg: PipelineConfig, hardware: Hardware | None = None) -> MedvitDataModule:
    d = cfg.data
    card = load_card(d.card)
    cfg.kind.check_card(card.name, card.task)
    return MedvitDataModule(
        card,
        root=d.root,
        transforms=cfg.transforms,
        batch_size=d.batch_size,
        val_batch_size=d.val_batch_size,
        num_workers=hardware.num_workers if hardware is not None else d.num_workers,
        cache=d.cache,
        limit_cases=d.limit_cases,
        seed=cfg.trainer.seed,
        labelled=cfg.kind.labelled,
    )


def inference_spec(cfg: PipelineConfig, dm: MedvitDataModule) -> dict[str, Any]:
    """The package's inference settings: sliding window over the training patch size for 3D."""
    inf = cfg.inference
    spatial_dims = dm.spatial_dims
    mode = inf.mode or ("sliding_window" if spatial_dims == 3 else "whole")
    roi = inf.roi_size or dm.resolved.patch_size
    if mode == "sliding_window" and not roi:
        raise ConfigError("inference.roi_size (or transforms.patch_size) is needed for sliding-window inference")
    if cfg.kind.flip_tta:
        default_tta = list(range(spatial_dims)) if spatial_dims == 3 else [spatial_dims - 1]
    else:
        default_tta = []
    return {
        "mode": mode,
        "roi_size": list(roi) if roi and mode == "sliding_window" else None,
        "overlap": inf.overlap,
        "sw_batch_size": inf.sw_batch_size,
        "blend": inf.blend,
        "tta_axes": inf.tta_axes if inf.tta_axes is not None else default_tta,
    }


def build_task(cfg: PipelineConfig, dm: MedvitDataModule, *, load_weights: bool = True):
    """The kind's LightningModule, its model built (and its backbone weights loaded)."""
    spec = cfg.model_spec(dm.num_classes)
    inf = inference_spec(cfg, dm)
    try:
        return cfg.kind.lightning_module()(
            spec.model_dump(mode="json"),
            cfg.optimizer.model_dump(mode="json"),
            labels=dm.labels,
            inference=inf if inf["mode"] == "sliding_window" else None,
            load_weights=load_weights,
            **cfg.task.options(),
            **cfg.kind.module_options(cfg),
        )
    except ValueError as exc:
        if isinstance(exc, ConfigError | InputError):
            raise
        raise ConfigError(f"task: {' '.join(str(exc).split())}") from None


class ValidationLine(Callback):
    """One line per validation (epoch, loss, the monitored metric) for logs that are not a terminal."""

    def __init__(self, monitor: str, max_epochs: int) -> None:
        self.monitor, self.max_epochs = monitor, max_epochs

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch + 1}/{self.max_epochs}"]
        for key in ("val/loss", self.monitor):
            if key in m:
                parts.append(f"{key} {float(m[key]):.4f}")
        print("  ".join(dict.fromkeys(parts)), flush=True)


def build_trainer(
    cfg: PipelineConfig, hardware: Hardware, *, run_dir: Path | None, logger=None, extra_callbacks=()
) -> L.Trainer:
    """A Lightning ``Trainer`` from the ``trainer:`` section, with best/last checkpoints in ``run_dir``
    (``run_dir=None``: a trainer that only tells this process's rank, before the run folder exists)."""
    t = cfg.trainer
    callbacks: list = []
    if run_dir is not None:
        common = dict(dirpath=run_dir / "checkpoints", enable_version_counter=False)
        # "best" when validation ends (the monitored metric exists only then: no warning on epochs without one)
        callbacks.append(ModelCheckpoint(
            filename="best", monitor=cfg.monitor(), mode=cfg.monitor_mode(), save_top_k=1,
            save_on_train_epoch_end=False, **common,
        ))  # fmt: skip
        # "last" by its own callback: Lightning saves save_last only on epochs that improved the monitor
        callbacks.append(ModelCheckpoint(
            filename="last", monitor=None, save_top_k=1, every_n_epochs=1, save_on_train_epoch_end=True, **common
        ))  # fmt: skip
    callbacks += list(extra_callbacks)  # the first checkpoint callback is trainer.checkpoint_callback
    if logger is not None:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    terminal = sys.stdout.isatty()
    show_bar = t.progress != "none" and terminal
    if show_bar:
        callbacks.append(RichProgressBar() if t.progress == "rich" else TQDMProgressBar())
    elif t.progress != "none":
        callbacks.append(ValidationLine(cfg.monitor(), t.max_epochs))
    strategy: Any = t.strategy
    if t.strategy == "ddp" and hardware.accelerator == "cpu":
        strategy = DDPStrategy(process_group_backend="gloo")
    optional = {
        k: getattr(t, k)
        for k in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "gradient_clip_val")
        if getattr(t, k) is not None
    }
    return L.Trainer(
        accelerator=hardware.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=strategy,
        precision=hardware.precision,
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        accumulate_grad_batches=t.accumulate_grad_batches,
        check_val_every_n_epoch=t.check_val_every_n_epoch,
        fast_dev_run=t.fast_dev_run,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        enable_progress_bar=show_bar,
        enable_model_summary=False,
        enable_checkpointing=run_dir is not None,
        default_root_dir=str(run_dir) if run_dir is not None else None,
        **optional,
    )


# ------------------------------------------------------------------------------------------------ running


@dataclass
class Checked:
    """A pipeline validated with everything it names: what :func:`check_pipeline` returns."""

    cfg: PipelineConfig
    resolved: dict[str, Any]
    datamodule: MedvitDataModule
    task: Any
    hardware: Hardware


def check_pipeline(path: str | Path, overrides: list[str] | None = None, *, smoke: bool = False) -> Checked:
    """Validate a pipeline and everything it names (card, data files, weights, hardware, a first case); no
    training. ``smoke`` applies :func:`smoke_overrides` first (the caller's overrides still win).

    The task's model is built (seeded) with the backbone weights loaded and checked.
    """
    cfg, resolved = load_pipeline(path, overrides)
    if smoke:
        cfg, resolved = load_pipeline(path, [*smoke_overrides(cfg), *(overrides or [])])
    if cfg.kind.artifact != "package" and cfg.tracking.register_as:
        raise ConfigError(
            f"tracking.register_as: a {cfg.task.kind} run leaves an adapted backbone, not a model package to "
            "register; register the fine-tuned model instead"
        )
    hardware = resolve_hardware(cfg)
    dm = build_datamodule(cfg, hardware)
    dm.check()
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    task = build_task(cfg, dm)
    if callable(getattr(task, "check_inputs", None)):  # a task's own inputs (a pre-training probe card)
        task.check_inputs()
    return Checked(cfg, resolved, dm, task, hardware)


def _new_run_dir(cfg: PipelineConfig) -> Path:
    root = Path(cfg.output.dir) / cfg.name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = root / stamp
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = root / f"{stamp}-{n}"
    return run_dir


def _quiet_libraries() -> None:
    # MLflow configures its loggers on first import: quiet them after
    import mlflow  # noqa: F401  # lazy: medvit run reports config errors before MLflow loads

    for name in ("alembic", "mlflow", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.loggers.mlflow").setLevel(logging.ERROR)  # "Creating experiment"
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)  # GPU/TPU banners


def _mlflow_logger(cfg: PipelineConfig, dm: MedvitDataModule, run_dir: Path, run_id: str | None):
    return MLFlowLogger(
        experiment_name=cfg.tracking.experiment,
        run_name=cfg.tracking.run_name or f"{cfg.name}-{run_dir.name}",
        tracking_uri=tracking_uri(cfg),
        run_id=run_id,
        tags={"medvit.pipeline": cfg.name, "medvit.data_card": dm.card.name, "medvit.task": cfg.task.kind},
    )


def _start_run(checked: Checked, run_dir: Path, run_json: dict[str, Any], *, resumed: bool) -> dict[str, Any]:
    """Rank 0: the run folder, ``config.yaml``, the MLflow run (params, config, card) and ``run.json``."""
    cfg = checked.cfg
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(checked.resolved, sort_keys=False))
    if not cfg.tracking.enabled:
        return {}
    logger = _mlflow_logger(cfg, checked.datamodule, run_dir, run_json.get("mlflow_run_id"))
    client, run_id = logger.experiment, logger.run_id
    if not resumed:
        logger.log_hyperparams({k: v for k, v in checked.resolved.items() if k != "description"})
        client.set_tag(run_id, "mlflow.note.content", cfg.description or cfg.name)
    client.log_artifact(run_id, str(run_dir / "config.yaml"))
    client.log_artifact(run_id, str(find_card(cfg.data.card)), artifact_path="data_card")
    run_json = {"mlflow_run_id": run_id, "experiment_id": logger.experiment_id, "tracking_uri": tracking_uri(cfg)}
    (run_dir / "run.json").write_text(json.dumps(run_json, indent=2))
    return run_json


def _agree_on_run(probe: L.Trainer, make) -> tuple[Path, dict[str, Any]]:
    """Every process learns the run folder and MLflow ids that rank 0 ``make()``\\ s, without touching the
    tracking store itself."""
    if os.environ.get(RUN_DIR_ENV) and os.environ.get(RUN_JSON_ENV) is not None:  # started by our own parent
        return Path(os.environ[RUN_DIR_ENV]), json.loads(os.environ[RUN_JSON_ENV])
    external = probe.world_size > 1 and (
        probe.strategy.cluster_environment.creates_processes_externally or probe.num_devices == 1
    )
    if external:
        probe.strategy.setup_environment()  # joins the process group now; Lightning's fit reuses it
    made: tuple[str, dict] | None = None
    error: str | None = None
    if probe.global_rank == 0:
        try:
            run_dir, run_json = make()
            made = (str(run_dir), run_json)
        except MedvitError as exc:
            error = str(exc)
    if external:
        box = [made, error]
        torch.distributed.broadcast_object_list(box, src=0)
        made, error = box
    if error is not None:
        raise RunFailed(error if probe.global_rank == 0 else f"rank 0 could not start the run: {error}")
    return Path(made[0]), made[1]


def run_pipeline(
    path: str | Path | None,
    overrides: list[str] | None = None,
    *,
    resume: str | Path | None = None,
    smoke: bool = False,
    echo=print,
) -> RunResult:
    """Run a pipeline end to end (or resume the run in ``resume`` from its last checkpoint).

    Raises:
        ConfigError / InputError: Bad pipeline, data, weights or hardware (before anything is written).
        RunFailed: The run failed or was interrupted after its folder existed (its MLflow run is marked).
    """
    _quiet_libraries()
    ckpt_path, resume_dir, run_json = None, None, {}
    if resume is not None:
        resume_dir = Path(resume)
        config_file = resume_dir / "config.yaml"
        if not config_file.is_file():
            raise InputError(f"{resume_dir}: not a medvit run folder (no config.yaml)")
        last = resume_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise InputError(f"{resume_dir}: no checkpoints/last.ckpt to resume from")
        read_lightning_checkpoint(last, mmap=True)  # before anything runs: no pickled code, no damage
        if (resume_dir / "run.json").is_file():
            run_json = json.loads((resume_dir / "run.json").read_text())
        ckpt_path = str(last)
        checked = check_pipeline(config_file, overrides)
    else:
        if path is None:
            raise ConfigError("give a pipeline file or name, or --resume RUN_DIR")
        checked = check_pipeline(path, overrides, smoke=smoke)
    cfg, dm, hw = checked.cfg, checked.datamodule, checked.hardware

    probe = build_trainer(cfg, hw, run_dir=None)
    rank0 = probe.global_rank == 0
    if rank0:
        echo(hw.note)

    def make() -> tuple[Path, dict[str, Any]]:
        run_dir = resume_dir if resume_dir is not None else _new_run_dir(cfg)
        return run_dir, _start_run(checked, run_dir, run_json, resumed=resume_dir is not None)

    run_dir, run_json = _agree_on_run(probe, make)
    os.environ[RUN_DIR_ENV] = str(run_dir.resolve())  # processes Lightning starts re-run this command
    os.environ[RUN_JSON_ENV] = json.dumps(run_json)
    logger = None
    if rank0 and run_json.get("mlflow_run_id"):
        logger = _mlflow_logger(cfg, dm, run_dir, run_json["mlflow_run_id"])
    try:
        trainer = build_trainer(cfg, hw, run_dir=run_dir, logger=logger)
        return _train(checked, trainer, run_dir, run_json, logger, ckpt_path)
    except BaseException as exc:  # noqa: BLE001 - every failure marks the run and reports one line
        if not rank0:
            raise
        raise _failed(exc, run_dir, run_json, cfg) from None
    finally:
        os.environ.pop(RUN_DIR_ENV, None)
        os.environ.pop(RUN_JSON_ENV, None)


def _failed(exc: BaseException, run_dir: Path, run_json: dict[str, Any], cfg: PipelineConfig) -> BaseException:
    """Mark the MLflow run FAILED (KILLED when interrupted), keep the traceback, and say so in one line."""
    interrupted = isinstance(exc, KeyboardInterrupt | SystemExit) or type(exc).__name__ == "SIGTERMException"
    status = "KILLED" if interrupted else "FAILED"
    with open(run_dir / "error.log", "a") as fh:
        fh.write("".join(traceback.format_exception(exc)))
    run_id = run_json.get("mlflow_run_id")
    marked = ""
    if run_id:
        try:
            from mlflow import MlflowClient  # lazy: as in _quiet_libraries

            MlflowClient(tracking_uri(cfg)).set_terminated(run_id, status)
            marked = f"; MLflow run {run_id} marked {status}"
        except Exception as err:  # noqa: BLE001 - the store may be what failed
            marked = f"; MLflow run {run_id} could not be marked {status} ({one_line(err, 120)})"
    last = run_dir / "checkpoints" / "last.ckpt"
    again = f"; resume with: medvit run --resume {run_dir}" if last.is_file() else ""
    what = "interrupted" if interrupted else f"failed: {one_line(exc, 200)}"
    return RunFailed(f"run {what} (traceback in {run_dir / 'error.log'}{marked}{again})")


def _train(checked: Checked, trainer: L.Trainer, run_dir: Path, run_json: dict, logger, ckpt_path) -> RunResult:
    cfg, dm, task = checked.cfg, checked.datamodule, checked.task
    trainer.fit(task, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)  # whatever the environment says
    metrics = _scalars(trainer.callback_metrics)  # the last validation
    if cfg.kind.artifact == "backbone":
        return _finish_backbone(checked, trainer, run_dir, run_json, logger, metrics)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best and trainer.checkpoint_callback.best_model_score is not None:
        metrics[f"best/{cfg.monitor()}"] = float(trainer.checkpoint_callback.best_model_score)
    if cfg.trainer.test and not cfg.trainer.fast_dev_run:
        trainer.test(task, datamodule=dm, ckpt_path=best or None, verbose=False, weights_only=True)
        metrics.update(_scalars(trainer.callback_metrics))
    elif best:
        _load_weights(task, best)
    uri = tracking_uri(cfg) if cfg.tracking.enabled else None
    result = RunResult(run_dir=run_dir, package=None, metrics=metrics, tracking_uri=uri)
    result.test_is_validation = bool(dm.datalist) and not dm.datalist["test"]
    if not trainer.is_global_zero:
        return result
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    result.mlflow_run_id = run_json.get("mlflow_run_id")
    provenance = Provenance(
        pipeline=cfg.name,
        data_card=dm.card.name,
        run_id=result.mlflow_run_id,
        experiment_id=run_json.get("experiment_id"),
        metrics={k: v for k, v in metrics.items() if k.startswith(("val/", "test/", "best/"))},
    )
    result.package = write_package(task, cfg, dm, run_dir, provenance=provenance)
    if logger is not None:
        client = logger.experiment
        client.log_artifacts(logger.run_id, str(result.package), artifact_path="package")
        client.log_artifact(logger.run_id, str(run_dir / "metrics.json"))
        if cfg.tracking.register_as:
            result.registered = register_package(
                result.package, name=cfg.tracking.register_as, alias=cfg.tracking.alias, tracking_uri=uri,
                run_id=logger.run_id,
            )  # fmt: skip
        client.set_terminated(logger.run_id, "FINISHED")
    return result


def _finish_backbone(
    checked: Checked, trainer: L.Trainer, run_dir: Path, run_json: dict, logger, metrics
) -> RunResult:
    """End of a self-supervised run: the adapted backbone as it is after the last step (pre-training keeps the
    final model, not a "best" one) exported to ``run_dir/backbone``, logged to MLflow."""
    cfg, task = checked.cfg, checked.task
    uri = tracking_uri(cfg) if cfg.tracking.enabled else None
    result = RunResult(run_dir=run_dir, package=None, metrics=metrics, tracking_uri=uri)
    if not trainer.is_global_zero:
        return result
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    result.mlflow_run_id = run_json.get("mlflow_run_id")
    result.package = write_backbone(task, cfg, run_dir / "backbone", run_id=result.mlflow_run_id, metrics=metrics)
    if logger is not None:
        client = logger.experiment
        client.log_artifacts(logger.run_id, str(result.package), artifact_path="backbone")
        client.log_artifact(logger.run_id, str(run_dir / "metrics.json"))
        client.set_terminated(logger.run_id, "FINISHED")
    return result


def write_backbone(task, cfg: PipelineConfig, folder: Path, *, run_id: str | None, metrics: dict) -> Path:
    """The adapted backbone in medvit's format (``<backbone>.safetensors``) and, where the family has one, its
    official layout (``<backbone>_official.pth``), with ``backbone.json`` saying how to load them; written to a
    staging folder and renamed when complete."""
    from medvit.backbones import get_entry, save_backbone, save_official
    from medvit.io.atomic import atomic_dir

    bb_spec = cfg.model.backbone
    entry = get_entry(bb_spec.name)
    backbone = task.export_backbone()
    options = dict(bb_spec.options)
    options.pop("grad_checkpointing", None)
    files = {"medvit": f"{entry.name}.safetensors"}
    with atomic_dir(folder, overwrite=True) as tmp:
        save_backbone(backbone, tmp / files["medvit"])
        if entry.family is not None and entry.family.export is not None:
            files["official"] = f"{entry.name}_official.pth"
            save_official(backbone, tmp / files["official"], extra=task.official_extra(entry.family.name))
        img_size = list(backbone.img_size)
        info = {
            "backbone": entry.name,
            "family": entry.family.name if entry.family else None,
            "files": files,
            "img_size": img_size,
            "options": options,
            "task": cfg.task.kind,
            "adapter": cfg.model.adapter.name,
            "pipeline": cfg.name,
            "mlflow_run_id": run_id,
            "metrics": {k: v for k, v in metrics.items() if k.startswith(("val/", "probe/"))},
            "load": f"medvit.create_backbone({entry.name!r}, weights={files['medvit']!r}, "
            f"img_size={tuple(img_size)}" + "".join(f", {k}={v!r}" for k, v in options.items()) + ")",
            "fine_tune": f"model.backbone.name={entry.name} "
            f"model.backbone.weights=<this folder>/{files['medvit']}",
        }
        (tmp / "backbone.json").write_text(json.dumps(info, indent=2) + "\n")
    return folder


def _scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1}


def _load_weights(task, ckpt: str) -> None:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    task.load_state_dict(state)


def write_package(
    task, cfg: PipelineConfig, dm: MedvitDataModule, run_dir: Path, *, provenance: Provenance
) -> Path:
    """The run's model package: the trained network, its label map, preprocessing and inference settings."""
    model_spec = task.model_spec.model_dump(mode="json")
    weights = model_spec["backbone"].get("weights")
    model_spec["backbone"]["weights"] = None  # the package holds all weights
    if isinstance(weights, str):
        provenance = provenance.model_copy(update={"backbone_weights": Path(weights).name})
    spec = PackageSpec(
        name=cfg.name,
        task=cfg.task.kind,
        labels=dm.labels,
        model=model_spec,
        preprocessing=dm.preprocess,
        inference=inference_spec(cfg, dm),
        provenance=provenance,
        **cfg.kind.package_fields(cfg.task),
    )
    return save_package(task.model, spec, run_dir / "package", overwrite=True)
