"""Tags a registered medvit model version carries: what the model is and how well it did, nothing identifying.

Only names from the package spec (backbone, adapter, head, task, labels, data card, pipeline), versions and
hashes, and numeric metrics are written. Free-form provenance entries are never copied.
"""

from __future__ import annotations

import math
from typing import Any

import medvit
from medvit.errors import InputError

MARKER = "medvit.package"
MAX_METRICS = 100
_MAX_VALUE = 5000


def package_tags(pkg, *, run_metrics: dict[str, float] | None = None) -> dict[str, str]:
    """Version tags for a loaded :class:`~medvit.package.ModelPackage` (plus the run's metrics, which win)."""
    spec = pkg.spec
    prov = spec.provenance
    tags = {
        MARKER: "1",
        "task": spec.task,
        "backbone": spec.model.backbone.name,
        "adapter": spec.model.adapter.name,
        "head": spec.model.head.name,
        "spatial_dims": str(spec.spatial_dims),
        "labels": ",".join(spec.labels[k] for k in sorted(spec.labels)),
        "medvit_version": spec.medvit_version or medvit.__version__,
        "package_sha256": pkg.sha256,
    }
    for key in ("data_card", "pipeline"):
        if getattr(prov, key):
            tags[key] = getattr(prov, key)
    metrics = {**_numbers(prov.metrics), **_numbers(run_metrics)}
    for key in sorted(metrics)[:MAX_METRICS]:
        tags[f"metric.{key}"] = f"{metrics[key]:.6g}"
    return {k: v[:_MAX_VALUE] for k, v in tags.items()}


def user_tags(tags: dict[str, Any] | None) -> dict[str, str]:
    """Extra tags given by the caller, as strings; keys under ``medvit.`` are reserved.

    Raises:
        InputError: A reserved or empty key.
    """
    out = {}
    for key, value in (tags or {}).items():
        key = str(key).strip()
        if not key or key.startswith("medvit."):
            raise InputError(f"tag {key!r}: empty or reserved (keys starting with 'medvit.' belong to medvit)")
        out[key] = str(value)[:_MAX_VALUE]
    return out


def _numbers(metrics: Any) -> dict[str, float]:
    if not isinstance(metrics, dict):
        return {}
    out = {}
    for key, value in metrics.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[str(key)] = float(value)
    return out
