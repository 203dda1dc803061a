"""Run a pipeline: check everything, then train, validate, test, log to MLflow and write a model package.

``run_pipeline(path, overrides)`` is what ``medvit run`` calls. Every check that can fail on bad input
(schema, data card and files, backbone weights, transforms on a first case) runs before the run folder is
created, so a bad pipeline leaves nothing behind. The run folder holds ``config.yaml`` (the resolved
pipeline, written before training), ``run.json`` (MLflow ids), ``checkpoints/{best,last}.ckpt``,
``metrics.json`` and ``package/`` (the model package).

Under DDP, Lightning re-launches this command once per extra process; those processes find the run folder
in ``MEDVIT_RUN_DIR`` and leave logging, MLflow and packaging to rank 0.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvit.errors import ConfigError, InputError
from medvit.pipeline import PipelineConfig, load_pipeline

RUN_DIR_ENV = "MEDVIT_RUN_DIR"


@dataclass
class RunResult:
    run_dir: Path
    package: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    registered: dict[str, Any] | None = None


def is_rank_zero() -> bool:
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


def tracking_uri(cfg: PipelineConfig) -> str:
    """The pipeline's URI, else the registry's default (``$MLFLOW_TRACKING_URI`` or ``./mlruns.db``)."""
    from medvit.registry.uri import default_tracking_uri

    return cfg.tracking.tracking_uri or default_tracking_uri()


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto`` -> ``bf16-mixed`` (or ``16-mixed``) on CUDA, ``32-true`` elsewhere."""
    if precision != "auto":
        return "32-true" if precision == "32" else precision
    import torch

    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}`` for MLflow params (lists as their YAML-ish text)."""
    if isinstance(data, dict):
        out: dict[str, str] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: json.dumps(data) if isinstance(data, list | tuple) else str(data)}


# ----------------------------------------------------------------------------------------------- building


def build_datamodule(cfg: PipelineConfig):
    from medvit.data.datamodule import MedvitDataModule

    d = cfg.data
    return MedvitDataModule(
        d.card,
        root=d.root,
        transforms=cfg.transforms,
        task=cfg.task.kind,
        batch_size=d.batch_size,
        val_batch_size=d.val_batch_size,
        num_workers=d.num_workers,
        cache=d.cache,
        limit_cases=d.limit_cases,
        seed=cfg.trainer.seed,
    )


def inference_spec(cfg: PipelineConfig, dm) -> dict[str, Any]:
    """The package's inference settings: sliding window over the training patch size for 3D."""
    inf = cfg.inference
    spatial_dims = dm.spatial_dims
    mode = inf.mode or ("sliding_window" if spatial_dims == 3 else "whole")
    roi = inf.roi_size or dm.resolved.patch_size
    if mode == "sliding_window" and not roi:
        raise ConfigError("inference.roi_size (or transforms.patch_size) is needed for sliding-window inference")
    if cfg.task.kind == "segmentation":
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


def build_task(cfg: PipelineConfig, dm, *, load_weights: bool = True):
    from medvit.tasks import TASKS

    spec = cfg.model_spec(dm.num_classes)
    kind = cfg.task.kind
    inf = inference_spec(cfg, dm)
    extra: dict[str, Any] = {}
    if kind == "classification":
        extra = {"multi_label": cfg.task.multi_label, "label_smoothing": cfg.task.label_smoothing}
    elif kind == "segmentation":
        extra = {"hd95": cfg.task.hd95}
    elif kind == "cells":
        extra = {"loss_weights": cfg.task.loss_weights}
    try:
        return TASKS[kind](
            spec.model_dump(mode="json"),
            cfg.optimizer.model_dump(mode="json"),
            labels=dm.labels,
            inference=inf if inf["mode"] == "sliding_window" else None,
            load_weights=load_weights,
            **extra,
        )
    except ValueError as exc:
        if isinstance(exc, ConfigError | InputError):
            raise
        raise ConfigError(f"task: {' '.join(str(exc).split())}") from exc


def build_trainer(cfg: PipelineConfig, *, run_dir: Path, logger, extra_callbacks=()):
    """A Lightning ``Trainer`` from the ``trainer:`` section, with best/last checkpoints in ``run_dir``."""
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar, TQDMProgressBar

    t = cfg.trainer
    common = dict(dirpath=run_dir / "checkpoints", enable_version_counter=False)
    # "best" when validation ends (the monitored metric exists only then: no warning on epochs without one)
    best = ModelCheckpoint(
        filename="best", monitor=cfg.monitor(), mode=t.monitor_mode, save_top_k=1, save_on_train_epoch_end=False,
        **common,
    )  # fmt: skip
    # "last" by its own callback: Lightning saves save_last only on epochs that improved the monitor
    last = ModelCheckpoint(
        filename="last", monitor=None, save_top_k=1, every_n_epochs=1, save_on_train_epoch_end=True, **common
    )
    callbacks: list = [best, last, *extra_callbacks]  # the first is trainer.checkpoint_callback
    if logger is not None:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    if t.progress == "rich":
        callbacks.append(RichProgressBar())
    elif t.progress == "tqdm":
        callbacks.append(TQDMProgressBar())
    strategy: Any = t.strategy
    if t.strategy == "ddp" and t.accelerator == "cpu":
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend="gloo")
    optional = {
        k: getattr(t, k)
        for k in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "gradient_clip_val")
        if getattr(t, k) is not None
    }
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=strategy,
        precision=resolve_precision(t.precision, t.accelerator),
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        accumulate_grad_batches=t.accumulate_grad_batches,
        check_val_every_n_epoch=t.check_val_every_n_epoch,
        fast_dev_run=t.fast_dev_run,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        enable_progress_bar=t.progress != "none",
        enable_model_summary=False,
        default_root_dir=str(run_dir),
        **optional,
    )


# ------------------------------------------------------------------------------------------------ running


def check_pipeline(path: str | Path, overrides: list[str] | None = None) -> tuple[PipelineConfig, dict, Any, Any]:
    """Validate a pipeline and everything it names (card, data files, weights, a first case); no training.

    Returns the config, its resolved plain data, the data module and the task, whose model is built (seeded)
    with the backbone weights loaded and checked.
    """
    import lightning as L

    cfg, resolved = load_pipeline(path, overrides)
    dm = build_datamodule(cfg)
    dm.check()
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    return cfg, resolved, dm, build_task(cfg, dm)


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
    for name in ("alembic", "mlflow", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.loggers.mlflow").setLevel(logging.ERROR)  # "Creating experiment"


def run_pipeline(
    path: str | Path | None,
    overrides: list[str] | None = None,
    *,
    resume: str | Path | None = None,
) -> RunResult:
    """Run a pipeline end to end (or resume the run in ``resume`` from its last checkpoint).

    Raises:
        ConfigError / InputError: Bad pipeline, data or weights (before anything is written).
    """
    import yaml

    _quiet_libraries()
    ckpt_path = None
    run_json: dict[str, Any] = {}
    if resume is not None:
        run_dir = Path(resume)
        config_file = run_dir / "config.yaml"
        if not config_file.is_file():
            raise InputError(f"{run_dir}: not a medvit run folder (no config.yaml)")
        last = run_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise InputError(f"{run_dir}: no checkpoints/last.ckpt to resume from")
        if (run_dir / "run.json").is_file():
            run_json = json.loads((run_dir / "run.json").read_text())
        ckpt_path = str(last)
        cfg, resolved, dm, task = check_pipeline(config_file, overrides)
    else:
        if path is None:
            raise ConfigError("give a pipeline file, or --resume RUN_DIR")
        cfg, resolved, dm, task = check_pipeline(path, overrides)
        run_dir = Path(os.environ[RUN_DIR_ENV]) if os.environ.get(RUN_DIR_ENV) else _new_run_dir(cfg)

    rank0 = is_rank_zero()
    os.environ[RUN_DIR_ENV] = str(run_dir.resolve())  # DDP children re-run this command and find it here
    if rank0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))

    logger = None
    uri = tracking_uri(cfg)
    if cfg.tracking.enabled:
        from lightning.pytorch.loggers import MLFlowLogger

        logger = MLFlowLogger(
            experiment_name=cfg.tracking.experiment,
            run_name=cfg.tracking.run_name or f"{cfg.name}-{run_dir.name}",
            tracking_uri=uri,
            run_id=run_json.get("mlflow_run_id"),
            tags={"medvit.pipeline": cfg.name, "medvit.data_card": dm.card.name, "medvit.task": cfg.task.kind},
        )
        if rank0:
            _log_start(logger, cfg, resolved, dm, run_dir, resumed=ckpt_path is not None)
            run_json = {"mlflow_run_id": logger.run_id, "experiment_id": logger.experiment_id, "tracking_uri": uri}
            (run_dir / "run.json").write_text(json.dumps(run_json, indent=2))

    trainer = build_trainer(cfg, run_dir=run_dir, logger=logger)
    trainer.fit(task, datamodule=dm, ckpt_path=ckpt_path)

    metrics = _scalars(trainer.callback_metrics)  # the last validation
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best and trainer.checkpoint_callback.best_model_score is not None:
        metrics[f"best/{cfg.monitor()}"] = float(trainer.checkpoint_callback.best_model_score)
    if cfg.trainer.test and not cfg.trainer.fast_dev_run:
        trainer.test(task, datamodule=dm, ckpt_path=best or None, verbose=False)
        metrics.update(_scalars(trainer.callback_metrics))
    elif best:
        _load_weights(task, best)
    result = RunResult(run_dir=run_dir, package=None, metrics=metrics, tracking_uri=uri)
    if not trainer.is_global_zero:
        return result
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    result.mlflow_run_id = run_json.get("mlflow_run_id")
    result.package = write_package(task, cfg, dm, run_dir, metrics=metrics, mlflow_run_id=result.mlflow_run_id)
    if logger is not None:
        client = logger.experiment
        client.log_artifacts(logger.run_id, str(result.package), artifact_path="package")
        client.log_artifact(logger.run_id, str(run_dir / "metrics.json"))
        if cfg.tracking.register_as:
            from medvit.registry import register_package

            result.registered = register_package(
                result.package, name=cfg.tracking.register_as, alias=cfg.tracking.alias, tracking_uri=uri,
                run_id=logger.run_id,
            )  # fmt: skip
    return result


def _scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1}


def _load_weights(task, ckpt: str) -> None:
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    task.load_state_dict(state)


def _log_start(logger, cfg: PipelineConfig, resolved: dict, dm, run_dir: Path, *, resumed: bool) -> None:
    """Params, the resolved config and the data card, logged before training starts."""
    client, run_id = logger.experiment, logger.run_id
    if not resumed:
        params = flatten({k: v for k, v in resolved.items() if k not in ("description",)})
        logger.log_hyperparams({k: v[:500] for k, v in params.items()})
        client.set_tag(run_id, "mlflow.note.content", cfg.description or cfg.name)
    client.log_artifact(run_id, str(run_dir / "config.yaml"))
    from medvit.data.cards import find_card

    client.log_artifact(run_id, str(find_card(cfg.data.card)), artifact_path="data_card")


def write_package(
    task, cfg: PipelineConfig, dm, run_dir: Path, *, metrics: dict, mlflow_run_id: str | None
) -> Path:
    """The run's model package: the trained network, its label map, preprocessing and inference settings."""
    from medvit.package import PackageSpec, save_package

    model_spec = task.model_spec.model_dump(mode="json")
    weights = model_spec["backbone"].get("weights")
    model_spec["backbone"]["weights"] = None  # the package holds all weights
    spec = PackageSpec(
        name=cfg.name,
        task=cfg.task.kind,
        multi_label=cfg.task.multi_label,
        labels=dm.labels,
        model=model_spec,
        preprocessing=dm.preprocess,
        inference=inference_spec(cfg, dm),
        provenance={
            "pipeline": cfg.name,
            "data_card": dm.card.name,
            "mlflow_run_id": mlflow_run_id,
            "backbone_weights": Path(str(weights)).name if isinstance(weights, str) else None,
            "metrics": {k: v for k, v in metrics.items() if k.startswith(("val/", "test/", "best/"))},
        },
    )
    return save_package(task.model, spec, run_dir / "package", overwrite=True)
