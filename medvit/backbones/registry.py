"""The backbone registry: small named factories, frozen weight metadata, and ``create_backbone``.

A factory returns the dims of one variant; :func:`register` pairs it with a :class:`PretrainedCfg` (what the
published weights expect and where they come from) and the :class:`Family` whose pure checkpoint filter
maps the official file onto :class:`~medvit.backbones.vit.VisionTransformer`.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from medvit.backbones.checkpoints import (
    CheckpointError,
    LoadReport,
    drop,
    fit_pos_embed,
    load_strict,
    matches,
    read_checkpoint,
    resolve_weights,
)
from medvit.backbones.vit import VisionTransformer
from medvit.errors import ConfigError, one_line
from medvit.io.limits import env_bytes


@dataclass(frozen=True)
class PretrainedCfg:
    """What a backbone's published weights expect and where they come from.

    Attributes:
        name: ``arch.tag``, e.g. ``vit_large_patch16.retfound_cfp``.
        input_size: ``(C, H, W)`` or ``(C, H, W, D)`` the weights were trained at.
        mean: Per-channel mean after scaling intensities to [0, 1] (2D), or ``None``.
        std: Per-channel std, or ``None``.
        hu_window: CT intensity window clipped and scaled to [0, 1], or ``None``.
        spacing: Voxel spacing in mm the weights were trained at (3D), or ``None``.
        interpolation: Resize interpolation used by the authors' preprocessing.
        license: Licence of the weights.
        paper: The paper to cite.
        source: Where the official weights are published.
        file_names: Official file (or folder) names looked up in ``MEDVIT_WEIGHTS_DIR``.
        layout: The official file layout, in words.
        notes: Anything a user must know (pooling, quirks).
    """

    name: str
    input_size: tuple[int, ...]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    hu_window: tuple[float, float] | None = None
    spacing: tuple[float, ...] | None = None
    interpolation: str = "bicubic"
    license: str = "n/a (random init)"
    paper: str = ""
    source: str = "none: random initialisation only"
    file_names: tuple[str, ...] = ()
    layout: str = "medvit safetensors"
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, not tuples) for JSON output."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Family:
    """How one model family's files map onto the medvit ViT.

    Attributes:
        name: Family name for messages.
        normalise: Pure, idempotent: unwrap the training checkpoint, strip prefixes, rename keys.
        expected_drops: Glob patterns (on normalised keys) of the keys this family's files carry and the
            backbone does not use; anything else that does not fit is an error.
        check_config: For Hugging Face folders: ``(config, model, path)`` raising on an architecture mismatch.
        custom_filter: A family's own ``(state_dict, model) -> state_dict`` when the default
            :meth:`checkpoint_filter` is not enough (DINOv3 checks its RoPE periods).
        export: The inverse of :attr:`normalise` plus the filter: ``(state_dict, model) -> object`` giving what
            the family's official file holds (``torch.save`` writes it). ``state_dict`` is the model's own plus
            any extra tensors named as :attr:`normalise` names them (e.g. an MAE decoder, ``mask_token``);
            see :func:`~medvit.backbones.checkpoints.save_official`.
    """

    name: str
    normalise: Callable[[Mapping[str, Any]], dict[str, torch.Tensor]]
    expected_drops: tuple[str, ...] = ()
    check_config: Callable[[dict, torch.nn.Module, str], None] | None = None
    custom_filter: Callable[[Mapping[str, Any], torch.nn.Module], dict[str, torch.Tensor]] | None = None
    export: Callable[[dict[str, torch.Tensor], torch.nn.Module], dict] | None = None

    def checkpoint_filter(self, state_dict: Mapping[str, Any], model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Map a file's state dict onto ``model``; pure. The result must match the model exactly.

        By default: :attr:`normalise`, drop :attr:`expected_drops`, resample ``pos_embed`` to the model grid.
        """
        if self.custom_filter is not None:
            return self.custom_filter(state_dict, model)
        return fit_pos_embed(drop(self.normalise(state_dict), self.expected_drops), model)


@dataclass(frozen=True)
class Entry:
    """One registered backbone."""

    name: str
    arch: str
    dims: Mapping[str, Any]
    cfg: PretrainedCfg
    family: Family | None
    doc: str = ""
    tags: tuple[str, ...] = field(default=())


_REGISTRY: dict[str, Entry] = {}
_ALIASES: dict[str, str] = {}
_OPTIONS = set(inspect.signature(VisionTransformer.__init__).parameters) - {"self"}


def register(
    *, arch: str, cfg: PretrainedCfg, family: Family | None = None
) -> Callable[[Callable[[], dict[str, Any]]], Callable[[], dict[str, Any]]]:
    """Register a factory returning a variant's dims under the factory's name (and its ``arch.tag`` name)."""

    def wrap(fn: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        name = fn.__name__
        dims = dict(fn())
        unknown = set(dims) - _OPTIONS
        if unknown:
            raise TypeError(f"backbone {name}: unknown ViT options {sorted(unknown)}")
        if name in _REGISTRY:
            raise ValueError(f"backbone {name} registered twice")
        doc = (inspect.getdoc(fn) or "").split("\n")[0]
        _REGISTRY[name] = Entry(name, arch, dims, cfg, family, doc)
        _ALIASES[cfg.name] = name
        return fn

    return wrap


def list_backbones() -> list[str]:
    """The registered backbone names, sorted."""
    return sorted(_REGISTRY)


def get_entry(name: str) -> Entry:
    """The registry entry for ``name`` (short name or ``arch.tag``)."""
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise ConfigError(f"unknown backbone {name!r}; available: {', '.join(list_backbones())}")
    return _REGISTRY[key]


def describe_backbone(name: str) -> dict[str, Any]:
    """A backbone's architecture and weight metadata as plain data (no model is built)."""
    entry = get_entry(name)
    d = {**inspect_defaults(), **entry.dims}
    cfg = entry.cfg
    if cfg.hu_window is not None:
        norm = f"HU clip {cfg.hu_window[0]:g}..{cfg.hu_window[1]:g} -> [0, 1]"
    elif cfg.mean is not None:
        norm = f"mean {list(cfg.mean)} std {list(cfg.std or ())}"
    else:
        norm = "none"
    meta = cfg.to_dict()
    meta["pretrained_name"] = meta.pop("name")
    return {
        "name": entry.name,
        "arch": entry.arch,
        "description": entry.doc,
        "spatial_dims": d["spatial_dims"],
        "embed_dim": d["embed_dim"],
        "depth": d["depth"],
        "num_heads": d["num_heads"],
        "patch_size": d["patch_size"],
        "prefix_tokens": int(d["class_token"]) + d["num_reg_tokens"],
        "position": "rope" if d["rope"] else d["pos_embed"],
        "normalisation": norm,
        "family": entry.family.name if entry.family else None,
        **meta,
    }


def inspect_defaults() -> dict[str, Any]:
    """The default value of every :class:`VisionTransformer` option."""
    sig = inspect.signature(VisionTransformer.__init__)
    return {k: p.default for k, p in sig.parameters.items() if k != "self"}


def create_backbone(
    name: str,
    *,
    weights: str | os.PathLike | bool | None = None,
    img_size: int | tuple[int, ...] | None = None,
    trust_pickle: bool = False,
    **overrides: Any,
) -> VisionTransformer:
    """Build a registered backbone, optionally loading local weights strictly.

    Nothing is downloaded and nothing is moved to a GPU.

    Args:
        name: A name from :func:`list_backbones` (or its ``arch.tag`` form).
        weights: ``None``/``False`` for random init; a path to the official file (or HF folder for DINOv3) or
            to a file written by :func:`~medvit.backbones.checkpoints.save_backbone`; ``True`` to look the
            official file name up in ``MEDVIT_WEIGHTS_DIR``.
        img_size: Input size the model's grid (and position embedding) is built for; defaults to the
            weights' input size. A checkpoint made for another size is resampled on load.
        trust_pickle: Allow pickled Python objects in ``.pth`` files (RETFound/UrFound training files
            pickle ``argparse.Namespace``); only for files from a source you trust.
        **overrides: Any :class:`VisionTransformer` option (``num_classes``, ``drop_path_rate``,
            ``grad_checkpointing``, ``in_chans``, dims for tiny test models, ...).

    Raises:
        ConfigError: Unknown name or option.
        CheckpointError: Missing, unreadable, unsafe or mismatching weights (one line naming file and reason).
    """
    entry = get_entry(name)
    unknown = sorted(set(overrides) - _OPTIONS)
    if unknown:
        raise ConfigError(f"backbone {name}: unknown option(s) {', '.join(unknown)}")
    kwargs = {**entry.dims, **overrides}
    kwargs["img_size"] = img_size if img_size is not None else tuple(entry.cfg.input_size[1:])
    check_model_size(name, kwargs)
    try:
        model = VisionTransformer(**kwargs)
    except ValueError as exc:
        raise ConfigError(f"backbone {name}: {one_line(exc)}") from exc
    model.pretrained_cfg = entry.cfg
    model.load_report = None
    if weights is not None and weights is not False:
        model.load_report = load_weights(model, weights, entry=entry, trust_pickle=trust_pickle)
    return model


MODEL_BUDGET_ENV = "MEDVIT_MAX_MODEL_BYTES"
DEFAULT_MODEL_BUDGET = 64 << 30  # float32 parameters: DINOv3 ViT-7B (27 GB) fits, a typo's 3 TB does not


def estimate_parameters(options: Mapping[str, Any]) -> int:
    """Parameters a :class:`VisionTransformer` with these options will have (close, from the dims alone)."""
    d = {**inspect_defaults(), **options}
    dim, depth = int(d["embed_dim"]), int(d["depth"])
    hidden = int(d["mlp_hidden_dim"] or dim * float(d["mlp_ratio"]))
    mlp = (3 if d["ffn_layer"] == "swiglu" else 2) * dim * hidden
    dims = int(d["spatial_dims"])
    size = d["img_size"] if isinstance(d["img_size"], list | tuple) else [d["img_size"]] * dims
    patch = d["patch_size"] if isinstance(d["patch_size"], list | tuple) else [d["patch_size"]] * dims
    tokens = math.prod(max(1, -(-int(s) // int(p))) for s, p in zip(size, patch, strict=False))
    patch_embed = int(d["in_chans"]) * math.prod(int(p) for p in patch) * dim
    return depth * (4 * dim * dim + mlp) + patch_embed + (tokens + 1) * dim


def check_model_size(name: str, options: Mapping[str, Any]) -> None:
    """Refuse, before allocating, a backbone whose float32 parameters exceed ``$MEDVIT_MAX_MODEL_BYTES``
    (default 64 GiB).

    Raises:
        ConfigError: Too large, or a budget that is not a positive number.
    """
    budget = env_bytes(MODEL_BUDGET_ENV, DEFAULT_MODEL_BUDGET)
    try:
        size = 4 * estimate_parameters(options)
    except (TypeError, ValueError):
        return  # malformed options: the model's own checks name them
    if size > budget:
        raise ConfigError(
            f"backbone {name}: embed_dim {options.get('embed_dim')}, depth {options.get('depth')} make about "
            f"{size / 2**30:.3g} GiB of parameters, above the {budget / 2**30:.3g} GiB model budget "
            f"(set {MODEL_BUDGET_ENV} to allow more)"
        )


def load_weights(
    model: VisionTransformer, weights: str | os.PathLike | bool, *, entry: Entry, trust_pickle: bool = False
) -> LoadReport:
    """Resolve, read, filter and strictly load a weights file into ``model``."""
    cfg = entry.cfg
    path = resolve_weights(weights, name=entry.name, file_names=cfg.file_names, source=cfg.source)
    ckpt = read_checkpoint(path, trust_pickle=trust_pickle)
    report = LoadReport(str(path))
    if ckpt.fmt == "medvit" or entry.family is None:
        state = fit_pos_embed(dict(ckpt.obj), model)
    else:
        family = entry.family
        if ckpt.config is not None:
            if family.check_config is None:
                raise CheckpointError(
                    f"{path}: {entry.name} has no Hugging Face folder layout; pass the .pth file"
                )
            family.check_config(ckpt.config, model, str(path))
        try:
            flat = family.normalise(ckpt.obj)
            report.dropped = sorted(k for k in flat if matches(k, family.expected_drops))
            report.dropped_state = {k: flat[k] for k in report.dropped}  # e.g. an MAE decoder
            state = family.checkpoint_filter(flat, model)
        except CheckpointError:
            raise
        except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as exc:
            raise CheckpointError(
                f"{path}: cannot map this file onto {entry.name} ({family.name} layout): {one_line(exc, 160)}"
            ) from exc
    return load_strict(model, state, path=path, name=entry.name, report=report)
