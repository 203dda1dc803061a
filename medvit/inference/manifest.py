"""``OUTDIR/manifest.json``: what ran (medvit, model, device, precision, options) and what came of each case.

Inputs are described by :func:`medvit.io.describe` (format, grid, geometry, modality, series UID): no patient,
study or institution attributes. Written atomically once all cases have run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import medvit
from medvit.inference.predictor import Prediction
from medvit.io.atomic import atomic_file

MANIFEST = "manifest.json"


def model_record(predictor) -> dict[str, Any]:
    """The model as the manifest names it: URI asked for, registry version, package folder, name, hash."""
    source = predictor.source
    spec = predictor.spec
    return {
        "uri": source["uri"],
        "version": source.get("version"),
        **{k: source[k] for k in ("registered_name", "alias", "resolved_uri", "run_id") if k in source},
        "package": source.get("package"),
        "name": spec.name,
        "task": spec.task,
        "sha256": predictor.package.sha256,
    }


def new_manifest(predictor, options: dict[str, Any]) -> dict[str, Any]:
    """The manifest header; cases are appended by :func:`case_record`."""
    settings = predictor.options()
    return {
        "medvit_version": medvit.__version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model_record(predictor),
        "labels": {str(k): v for k, v in sorted(predictor.spec.labels.items())},
        "device": settings.pop("device"),
        "precision": settings.pop("precision"),
        "options": {**settings, **options},
        "cases": [],
    }


def case_record(
    name: str,
    path: Path,
    status: str,
    *,
    prediction: Prediction | None = None,
    outputs: list[Path] | None = None,
    error: str | None = None,
    seconds: float | None = None,
) -> dict[str, Any]:
    """One case's entry: ``status`` (ok, skipped, failed), input facts, outputs, timing, volumes or scores."""
    record: dict[str, Any] = {"case": name, "input": str(path), "status": status}
    if error is not None:
        record["error"] = error
    if prediction is not None:
        record["description"] = prediction.input
        if prediction.task == "cells":
            record.update(prediction.summary())
            record["tissue"] = prediction.tissue
        elif prediction.class_probabilities is not None:
            record["class_probabilities"] = prediction.class_scores()
        else:
            record["volumes_ml"] = prediction.volumes_ml
        if getattr(prediction, "windows", None):
            record["windows"] = prediction.windows
        record["timing_s"] = {k: round(v, 3) for k, v in prediction.timing.items()}
    if outputs is not None:
        record["outputs"] = [p.name for p in outputs]
    if seconds is not None:
        record["seconds"] = round(seconds, 3)
    return record


def finish(manifest: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Add the counts per status and the total time."""
    counts = {s: sum(c["status"] == s for c in manifest["cases"]) for s in ("ok", "skipped", "failed")}
    manifest["summary"] = {**counts, "seconds": round(seconds, 3)}
    return manifest


def write_manifest(manifest: dict[str, Any], outdir: str | os.PathLike) -> Path:
    """Write ``manifest.json`` into ``outdir`` atomically."""
    path = Path(outdir) / MANIFEST
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, default=_plain) + "\n")
    return path


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and arrays found in descriptions."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
