"""Reading weight files safely and loading them strictly.

Files are local only: ``.pth``/``.pt``/``.bin`` through ``torch.load(weights_only=True)``, ``.safetensors``,
and Hugging Face folders (``config.json`` + ``model.safetensors`` or shards). A pickle that needs more than
tensors (RETFound fine-tuned files pickle ``argparse.Namespace``) is refused unless ``trust_pickle=True``.
Every failure is an :class:`~medvit.errors.InputError` naming the file and the reason.
:func:`save_backbone` writes medvit's own safetensors; :func:`save_official` writes a family's official layout.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import safe_open
from torch import nn

from medvit.errors import ConfigError, InputError, one_line
from medvit.io.atomic import atomic_path
from medvit.layers import resample_abs_pos_embed

log = logging.getLogger("medvit.backbones")

WEIGHTS_ENV = "MEDVIT_WEIGHTS_DIR"
MEDVIT_FORMAT = "medvit-backbone"


class CheckpointError(InputError):
    """A weights file that is missing, unreadable, unsafe to unpickle, or does not fit the backbone."""


@dataclass
class Checkpoint:
    """What a weights file holds: the raw object (usually a dict), its format and, for HF folders, config."""

    path: Path
    obj: Any
    fmt: str  # "torch", "safetensors", "hf", "medvit"
    config: dict | None = None


@dataclass
class LoadReport:
    """What loading did: keys dropped as expected, a head dropped for shape, position embedding resampled."""

    path: str
    dropped: list[str] = field(default_factory=list)
    dropped_state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # the dropped tensors
    head_dropped: bool = False
    notes: list[str] = field(default_factory=list)


# -- finding the file ----------------------------------------------------------------------------------


def resolve_weights(
    weights: str | os.PathLike | bool, *, name: str, file_names: Iterable[str], source: str
) -> Path:
    """The local weights file or folder for a backbone.

    Args:
        weights: ``True`` to look the registry's ``file_names`` up in ``MEDVIT_WEIGHTS_DIR``; or a path (a bare
            file name that does not exist here is also looked up in ``MEDVIT_WEIGHTS_DIR``).
        name: The backbone name, for messages.
        file_names: The official file (or folder) names.
        source: Where the official file is published, for messages.
    """
    root = os.environ.get(WEIGHTS_ENV)
    if weights is True:
        candidates = list(file_names)
        if not root:
            raise CheckpointError(
                f"{name}: weights=True looks for {', '.join(candidates) or 'a file'} in ${WEIGHTS_ENV}, "
                f"which is not set; pass weights=PATH or set {WEIGHTS_ENV}. "
                f"The official weights are published at {source}"
            )
        for cand in candidates:
            path = Path(root) / cand
            if path.exists():
                return path
        raise CheckpointError(
            f"{name}: none of {', '.join(candidates)} found in {WEIGHTS_ENV}={root}; "
            f"the official weights are published at {source}"
        )
    path = Path(os.fspath(weights)).expanduser()
    if path.exists():
        return path
    looked = [str(path)]
    if root and not path.is_absolute() and len(path.parts) == 1:
        alt = Path(root) / path
        if alt.exists():
            return alt
        looked.append(str(alt))
    raise CheckpointError(
        f"{name}: weights file not found (looked at {', '.join(looked)}); "
        f"the official weights are published at {source}"
    )


# -- reading -------------------------------------------------------------------------------------------


def _read_torch(path: Path, *, trust_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if not found and not trust_pickle:
            reason = re.search(r"WeightsUnpickler error: *(.+)", text.replace("\n", " "))
            detail = reason.group(1)[:120] if reason else one_line(exc, 120)
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({detail.strip()})") from exc
        if not trust_pickle:
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path}: the file pickles Python objects besides tensors{what}, and unpickling them can run "
                "code; if you trust where it came from, load it with trust_pickle=True"
            ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({one_line(exc, 160)})") from exc
    log.warning("%s: unpickling with weights_only=False because trust_pickle=True", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({one_line(exc, 160)})") from exc


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            return {k: fh.get_tensor(k) for k in fh.keys()}, meta  # noqa: SIM118
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for bad headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({one_line(exc, 160)})") from exc


HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".h5", ".msgpack", ".gguf")


def _hf_shards(path: Path) -> tuple[list[str], dict[str, str]]:
    """The weight files a HF folder names (index shards, else ``model.safetensors``) and the index's key map."""
    index_file = path / HF_INDEX
    if not index_file.is_file():
        if not (path / HF_WEIGHTS).is_file():
            raise CheckpointError(f"{path}: a weights folder needs {HF_WEIGHTS} (or {HF_INDEX} and its shards)")
        return [HF_WEIGHTS], {}
    try:
        weight_map = json.loads(index_file.read_text())["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index_file}: not a valid safetensors index ({one_line(exc, 160)})") from exc
    if not (isinstance(weight_map, dict) and weight_map and all(isinstance(v, str) for v in weight_map.values())):
        raise CheckpointError(f"{index_file}: weight_map must map tensor names to shard file names")
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if Path(shard).name != shard or shard in ("", ".", ".."):
            raise CheckpointError(f"{index_file}: shard {shard!r} is not a file name inside {path}")
        if not (path / shard).is_file():
            raise CheckpointError(f"{path}: shard {shard} named by {HF_INDEX} is missing")
    return shards, weight_map


def _read_hf_folder(path: Path) -> Checkpoint:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path}: a weights folder needs config.json and {HF_WEIGHTS} (no config.json)")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config_file}: not valid JSON ({one_line(exc, 160)})") from exc
    shards, weight_map = _hf_shards(path)
    stray = sorted(
        f.name
        for f in path.iterdir()
        if f.is_file() and f.name.lower().endswith(_WEIGHT_SUFFIXES) and f.name not in shards
    )
    if stray:
        read = f"the shards named by {HF_INDEX}" if weight_map else HF_WEIGHTS
        raise CheckpointError(
            f"{path}: stray weight file {stray[0]} (medvit reads only {read}); move it out of the folder"
        )
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(_read_safetensors(path / shard)[0])
    absent = sorted(k for k in weight_map if k not in state)
    if absent:
        raise CheckpointError(f"{path}: {HF_INDEX} names tensors its shards lack: {_short(absent, 4)}")
    return Checkpoint(path, state, "hf", config)


def read_checkpoint(path: str | os.PathLike, *, trust_pickle: bool = False) -> Checkpoint:
    """Read a weights file or HF folder without building anything.

    Args:
        path: ``.pth``/``.pt``/``.bin``/``.ckpt``, ``.safetensors``, or a folder with ``config.json``.
        trust_pickle: Allow arbitrary pickled objects (only for files from a source you trust).
    """
    path = Path(path)
    if path.is_dir():
        return _read_hf_folder(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        state, meta = _read_safetensors(path)
        return Checkpoint(path, state, "medvit" if meta.get("format") == MEDVIT_FORMAT else "safetensors")
    obj = _read_torch(path, trust_pickle=trust_pickle)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return Checkpoint(path, obj, "torch")


def save_backbone(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write a backbone's weights as safetensors that :func:`medvit.create_backbone` reloads as-is.

    The file is written under a temporary name beside ``path`` and renamed when complete; a failure leaves
    neither the temporary file nor a partial ``path``.
    """
    path = Path(path)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    cfg = getattr(model, "pretrained_cfg", None)
    meta = {"format": MEDVIT_FORMAT, "backbone": getattr(cfg, "name", "") or ""}
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(state, str(tmp), metadata=meta)
    return path


_ADAPTER_KEY = re.compile(r"(^|\.)(lora_a|lora_b|adaptertune)(\.|$)")


def save_official(
    model: nn.Module, path: str | os.PathLike, *, extra: Mapping[str, torch.Tensor] | None = None
) -> Path:
    """Write a backbone's weights in its family's official file layout, with ``torch.save``.

    The file is what the family's authors publish (RETFound ``{'model': ...}``, Hi-End-MAE
    ``{'state_dict': {'module.encoder.*', ...}}``, DINOv3's flat ``.pth``, ...), so the authors' own loaders
    and :func:`medvit.create_backbone` read it strictly. It holds tensors only (no pickled objects) and is
    written under a temporary name beside ``path``, then renamed, as :func:`save_backbone` does.

    Args:
        model: A backbone built by :func:`medvit.create_backbone` for a family with an official layout; an
            adapter must be removed first (``remove_lora`` merges LoRA/ExPLoRA updates and restores the keys).
        path: The file to write (``.pth``).
        extra: Tensors the official file holds besides the backbone, named as the family's filter names them
            after unwrapping (e.g. an MAE decoder's ``decoder_*`` and ``mask_token``);
            ``create_backbone(...).load_report.dropped_state`` gives back those of a loaded file.

    Returns:
        ``path``.

    Raises:
        CheckpointError: The model names no registered family with an official layout, or still carries
            adapter weights.
        ValueError: An ``extra`` entry that is not a tensor or that names one of the backbone's own keys.
    """
    from medvit.backbones.registry import get_entry  # the registry imports this module

    path = Path(path)
    name = getattr(getattr(model, "pretrained_cfg", None), "name", None)
    if not name:
        raise CheckpointError(f"{path}: the model names no registered backbone (build it with create_backbone)")
    try:
        entry = get_entry(name)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {one_line(exc)}") from exc
    family = entry.family
    if family is None or family.export is None:
        raise CheckpointError(
            f"{path}: backbone {entry.name} has no official file layout; write medvit's own with save_backbone"
        )
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    adapter = sorted(k for k in state if _ADAPTER_KEY.search(k))
    if adapter:
        raise CheckpointError(
            f"{path}: the model still carries adapter weights ({_short(adapter, 3)}); "
            "merge them first with remove_lora (or remove_adaptertune)"
        )
    extra = dict(extra or {})
    for key, value in extra.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"extra[{key!r}] must be a tensor, got {type(value).__name__}")
    clash = sorted(set(extra) & set(state))
    if clash:
        raise ValueError(f"extra names the backbone's own key(s) {_short(clash, 4)}; pass only other tensors")
    obj = family.export({**state, **{k: v.detach().cpu() for k, v in extra.items()}}, model)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


# -- pure helpers used by the family filters ------------------------------------------------------------


def unwrap(obj: Mapping, keys: Iterable[str] = ("model", "teacher", "state_dict", "model_state_dict")) -> dict:
    """The state dict inside a training checkpoint (``{'model': ...}``, ``{'teacher': ...}``, ...) or ``obj``."""
    for key in keys:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner)
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove ``prefix`` from keys that start with it; other keys are kept unchanged."""
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}


def matches(key: str, patterns: Iterable[str]) -> bool:
    """Whether ``key`` matches one of the glob ``patterns``."""
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def drop(state: Mapping[str, torch.Tensor], patterns: Iterable[str]) -> dict[str, torch.Tensor]:
    """``state`` without the keys matching the glob ``patterns``."""
    patterns = tuple(patterns)
    return {k: v for k, v in state.items() if not matches(k, patterns)}


def fit_pos_embed(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Resample ``state['pos_embed']`` to the model's grid (float32; prefix entries kept); pure."""
    pos, target = state.get("pos_embed"), getattr(model, "pos_embed", None)
    if pos is None or target is None or pos.shape == target.shape:
        return state
    prefix = model.num_prefix_tokens if model.pos_embed_prefix else 0
    n_old = pos.shape[-2] - prefix
    if pos.ndim != 3 or pos.shape[-1] != target.shape[-1] or n_old <= 0:
        return state  # left for the strict shape check to report
    try:
        new = resample_abs_pos_embed(pos, model.grid, num_prefix_tokens=prefix)
    except ValueError:
        return state
    return {**state, "pos_embed": new}


# -- strict loading -------------------------------------------------------------------------------------


def guess_family(keys: Iterable[str]) -> str | None:
    """A best guess at which model family a checkpoint's keys come from, for error messages."""
    keys = list(keys)
    text = "\n".join(keys)
    if "encoder_pos_embed" in text:
        return "Hi-End-MAE"
    if "storage_tokens" in text or "rope_embed.periods" in text:
        return "DINOv3 (original .pth)"
    if ".attention.q_proj." in text and "layer_scale1" in text:
        return "DINOv3 (Hugging Face)"
    if "bert_encoder" in text or "bert_mlp" in text:
        return "UrFound"
    if "mlp.w12" in text or "dino_head" in text or "ibot_head" in text:
        return "DINOv2"
    if "decoder_pred" in text:
        return "MAE (RETFound)"
    if ".ls1.gamma" in text:
        return "a LayerScale ViT (UNI/DINOv2)"
    if "blocks.0.attn.qkv.weight" in text:
        return "a timm-style ViT"
    return None


def _short(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_strict(
    model: nn.Module, state: dict[str, torch.Tensor], *, path: Path | str, name: str, report: LoadReport
) -> LoadReport:
    """Load ``state`` into ``model`` strictly, dropping only a head whose class count differs.

    Any missing key, unexpected key or shape mismatch raises :class:`CheckpointError` listing them.
    """
    own = model.state_dict()
    head_keys = [k for k in state if k.startswith("head.")]
    if head_keys and not all(k in own and own[k].shape == state[k].shape for k in head_keys):
        file_shape = tuple(state["head.weight"].shape) if "head.weight" in state else "?"
        model_shape = tuple(own["head.weight"].shape) if "head.weight" in own else "no head"
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        report.head_dropped = True
        msg = f"{path}: head dropped: the file's head {file_shape} does not fit this model ({model_shape})"
        report.notes.append(msg)
        log.warning(msg)
    missing = sorted(k for k in own if k not in state and not k.startswith("head."))
    missing_head = sorted(k for k in own if k.startswith("head.") and k not in state)
    unexpected = sorted(k for k in state if k not in own)
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    )
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_short(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatch (file vs model): {_short(mismatched, 4)}")
        family = guess_family(state)
        hint = f"; the keys look like {family}" if family else ""
        raise CheckpointError(f"{path}: does not fit backbone {name}: {'; '.join(parts)}{hint}")
    if missing_head:
        report.notes.append(f"head left at random init ({', '.join(missing_head)} not in the file)")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: non-finite values in {_short(bad, 4)}")
    model.load_state_dict(state, strict=not missing_head)
    if report.dropped:
        log.info("%s: dropped as expected: %s", path, _short(report.dropped, 20))
    return report
