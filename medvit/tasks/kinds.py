"""The registry of task kinds: one :class:`TaskKind` object per kind declares everything about it.

A kind is one module in ``medvit/tasks/`` that defines its pipeline section (a :class:`TaskSection`
subclass with ``kind: Literal["<name>"]``) and a ``KIND = TaskKind(...)`` naming its LightningModule (in
``medvit/tasks/modules/``, imported only when training: predict never loads Lightning); it is registered by
one line in ``medvit/tasks/__init__.py`` (or :func:`register_kind` from outside medvit).
The pipeline schema, the engine, the model package and predict read what they need from here: nothing
else in medvit branches on a kind's name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from medvit.errors import ConfigError


class TaskSection(BaseModel):
    """Base of every kind's ``task:`` section: subclasses narrow ``kind`` to a ``Literal`` and add options.

    :meth:`options` are passed to the kind's LightningModule as keyword arguments.
    """

    model_config = ConfigDict(extra="forbid")

    kind: str

    def options(self) -> dict[str, Any]:
        return self.model_dump(exclude={"kind"})


@dataclass(frozen=True)
class TaskKind:
    """Everything medvit needs to know about a task kind.

    Attributes:
        name: The ``task.kind`` value.
        section: The pipeline's ``task:`` section for this kind (validated on its own options).
        module: ``"package.module:Class"`` of the LightningModule, built as ``Class(model, optimizer,
            labels=..., inference=..., load_weights=..., **section.options())``; see :meth:`lightning_module`.
        heads: The ``model.head.name`` values this kind accepts.
        card_tasks: Data-card ``task`` values (label types) it trains on.
        monitor: Default metric that picks the best checkpoint; ``monitor_mode`` says which way is better.
        smoke_cards: Synthetic card per spatial dimensionality for ``medvit run --smoke``.
        prediction: What predict returns: a label ``mask`` on the input grid, class ``probabilities``,
            ``cells`` (nuclei over a slide or tile), or ``None`` when predict does not support the kind yet.
        default_outputs: ``spatial_dims -> output types`` predict writes by default (``json`` always).
        outputs: Output types predict may write for this kind.
        flip_tta: Whether flip-mirroring TTA is meaningful (the package records the spatial axes).
        package_fields: ``section -> {PackageSpec field: value}`` the package records from the section.
        labels_are_outputs: The package's ``labels`` count the model's output channels (checked on load).
        labelled: Training reads the card's labels; ``False`` (self-supervised kinds): every case of any
            card is used as an unlabelled image.
        artifact: What a run leaves: a model ``package`` for predict, or an adapted ``backbone`` (exported in
            medvit's format and its family's official layout) for fine-tuning pipelines.
        module_options: ``pipeline config -> keyword arguments`` the LightningModule gets besides the
            section's options (the pre-training probe reads the pipeline's transforms).
    """

    name: str
    section: type[TaskSection]
    module: str
    heads: tuple[str, ...]
    card_tasks: tuple[str, ...]
    monitor: str
    smoke_cards: dict[int, str]
    monitor_mode: Literal["max", "min"] = "max"
    prediction: Literal["mask", "probabilities", "cells"] | None = "mask"
    default_outputs: dict[int, tuple[str, ...]] = field(default_factory=dict)
    outputs: tuple[str, ...] = ("json",)
    flip_tta: bool = False
    package_fields: Callable[[TaskSection], dict[str, Any]] = lambda section: {}  # noqa: E731
    labels_are_outputs: bool = True
    labelled: bool = True
    artifact: Literal["package", "backbone"] = "package"
    module_options: Callable[[Any], dict[str, Any]] = lambda cfg: {}  # noqa: E731

    def lightning_module(self) -> type:
        """The LightningModule class (imported here, on first use)."""
        module, _, attr = self.module.partition(":")
        return getattr(importlib.import_module(module), attr)

    def check_head(self, head: str) -> None:
        if head not in self.heads:
            raise ValueError(
                f"model.head.name {head!r} does not fit task.kind {self.name!r} (use {', '.join(self.heads)})"
            )

    def check_card(self, card_name: str, card_task: str) -> None:
        if card_task not in self.card_tasks:
            raise ConfigError(
                f"task: {self.name!r} does not fit data card {card_name!r}, whose task is {card_task!r} "
                f"({self.name} trains on {', '.join(self.card_tasks)} cards)"
            )

    def smoke_card(self, spatial_dims: int) -> str:
        try:
            return self.smoke_cards[spatial_dims]
        except KeyError:
            raise ConfigError(f"--smoke: task.kind {self.name!r} has no {spatial_dims}D synthetic set") from None


KINDS: dict[str, TaskKind] = {}


def register_kind(kind: TaskKind) -> TaskKind:
    """Add a kind to the registry (the pipeline schema picks it up on the next load)."""
    if kind.name in KINDS and KINDS[kind.name] is not kind:
        raise ValueError(f"task kind {kind.name!r} is already registered")
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> TaskKind:
    """The registered kind ``name``; an unknown name is a one-line error listing the known ones."""
    try:
        return KINDS[name]
    except KeyError:
        raise ConfigError(f"task.kind {name!r}: unknown task kind (known: {', '.join(KINDS)})") from None
