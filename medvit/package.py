"""The model package: the one format training writes, the registry stores and predict reads.

A package is a folder::

    medvit.yaml         format, task, labels, model spec, preprocessing, inference settings, provenance
    model.safetensors   the whole model's weights (backbone, adapter, head)

Nothing else is needed to predict: no pipeline file, no data card, no pretrained backbone file.
:func:`load_package` accepts the folder, its ``medvit.yaml``, a run folder holding ``package/``, or a
Lightning checkpoint inside a run folder (the run's package spec with the checkpoint's weights).
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import medvit
from medvit.errors import ConfigError, InputError, one_line, validation_line
from medvit.io.atomic import atomic_dir
from medvit.models import build_model
from medvit.models.spec import ModelSpec
from medvit.tasks import TaskKind, get_kind
from medvit.transforms.preprocess import PreprocessSpec
from medvit.yamlfile import read_yaml

FORMAT = "medvit-package"
FORMAT_VERSION = 1
SPEC_FILE = "medvit.yaml"
WEIGHTS_FILE = "model.safetensors"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InferenceSpec(_Strict):
    """How predict runs the network.

    Attributes:
        mode: ``sliding_window`` over the preprocessed image (3D, large 2D) or ``whole`` image at once.
        roi_size: Window size for ``sliding_window`` (the training patch size).
        overlap: Default window overlap.
        sw_batch_size: Windows per forward pass.
        blend: ``gaussian`` (nnU-Net style) or ``constant``.
        tta_axes: Spatial axes (0-based, after preprocessing) that flip-mirroring TTA may use.
    """

    mode: Literal["sliding_window", "whole"] = "whole"
    roi_size: list[int] | None = None
    overlap: float = Field(0.5, ge=0.0, lt=1.0)
    sw_batch_size: int = Field(2, ge=1)
    blend: Literal["gaussian", "constant"] = "gaussian"
    tta_axes: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> InferenceSpec:
        if self.mode == "sliding_window" and not self.roi_size:
            raise ValueError("sliding_window inference needs roi_size")
        return self


class Provenance(BaseModel):
    """Non-identifying facts about the run that made a package (entries medvit does not know are dropped).

    Attributes:
        pipeline: Pipeline name.
        data_card: Data card name.
        run_id: The MLflow run that trained it (``medvit register`` logs the package into that run).
        experiment_id: Its MLflow experiment.
        backbone_weights: File name (no folder) of the pretrained backbone weights it started from.
        metrics: Validation/test metrics at the end of the run.
    """

    pipeline: str | None = None
    data_card: str | None = None
    run_id: str | None = Field(None, validation_alias=AliasChoices("run_id", "mlflow_run_id"))
    experiment_id: str | None = None
    backbone_weights: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)

    model_config = ConfigDict(extra="ignore")


class PackageSpec(_Strict):
    """Contents of ``medvit.yaml``.

    ``labels`` maps output index to name: segmentation classes (0 = background), classification classes,
    or nuclei types for ``cells``. ``provenance`` holds non-identifying facts about the run that made the
    package (pipeline name, data card, MLflow run id, metrics).
    """

    format: Literal["medvit-package"] = FORMAT
    format_version: int = FORMAT_VERSION
    medvit_version: str = ""
    name: str
    task: str
    multi_label: bool = False
    labels: dict[int, str]
    model: ModelSpec
    preprocessing: PreprocessSpec
    inference: InferenceSpec = Field(default_factory=InferenceSpec)
    provenance: Provenance = Field(default_factory=Provenance)

    @model_validator(mode="after")
    def _check(self) -> PackageSpec:
        if self.format_version > FORMAT_VERSION:
            raise ValueError(f"format_version {self.format_version} is newer than this medvit reads")
        kind = self.kind
        kind.check_head(self.model.head.name)
        if kind.labels_are_outputs and len(self.labels) != self.model.num_classes:
            n = self.model.num_classes
            raise ValueError(f"labels name {len(self.labels)} classes, model.num_classes is {n}")
        return self

    @property
    def spatial_dims(self) -> int:
        return self.preprocessing.spatial_dims

    @property
    def kind(self) -> TaskKind:
        """The registered :class:`~medvit.tasks.TaskKind` of ``task``."""
        try:
            return get_kind(self.task)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


def parse_spec(data: Any, source: str) -> PackageSpec:
    """Validate a package spec; errors name the first bad key and ``source``."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"{source}: not a medvit model package (no 'format: {FORMAT}')")
    try:
        return PackageSpec.model_validate(data)
    except ValidationError as err:
        raise InputError(validation_line(err, source)) from None


def _hash_file(h, path: Path) -> None:
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)


def package_hash(folder: str | Path) -> str:
    """SHA-256 over ``medvit.yaml`` and ``model.safetensors`` (what identifies a package's behaviour)."""
    h = hashlib.sha256()
    for name in (SPEC_FILE, WEIGHTS_FILE):
        h.update(name.encode())
        _hash_file(h, Path(folder) / name)
    return h.hexdigest()


@dataclass
class ModelPackage:
    """A loaded package: its spec, folder and hash; :meth:`build` gives the model with weights, in eval mode."""

    spec: PackageSpec
    path: Path
    sha256: str
    state_dict: dict[str, Any] | None = field(default=None, repr=False)  # set when weights come from a .ckpt

    @property
    def labels(self) -> dict[int, str]:
        return self.spec.labels

    def build(self):
        """The network with the package's weights loaded strictly, in eval mode, on CPU."""
        model = build_model(self.spec.model, load_weights=False)
        state = self.state_dict if self.state_dict is not None else read_weights(self.path / WEIGHTS_FILE)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        wrong = [k for k, v in state.items() if k in shapes and tuple(v.shape) != shapes[k]]
        if wrong:
            k = wrong[0]
            raise InputError(
                f"{self.path}: weights do not match the package's model ({len(wrong)} tensor(s) of the wrong "
                f"shape, e.g. {k}: {list(state[k].shape)} where the model has {list(shapes[k])})"
            )
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} key(s) e.g. {missing[0]}")
            if unexpected:
                parts.append(f"unexpected {len(unexpected)} key(s) e.g. {unexpected[0]}")
            raise InputError(f"{self.path}: weights do not match the package's model ({'; '.join(parts)})")
        return model.eval()


def read_weights(path: Path) -> dict[str, Any]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the package weights ({one_line(exc, 160)})") from None


def save_package(
    model,
    spec: PackageSpec | dict[str, Any],
    folder: str | Path,
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``model``'s weights and ``spec`` as a package folder, atomically (temp folder, then rename).

    Returns the package folder.
    """
    spec = spec if isinstance(spec, PackageSpec) else PackageSpec.model_validate(spec)
    spec = spec.model_copy(update={"medvit_version": medvit.__version__})
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise InputError(f"{folder}: already exists; choose another folder or pass overwrite=True")
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        data = spec.model_dump(mode="json")
        (tmp / SPEC_FILE).write_text(yaml.safe_dump(data, sort_keys=False))
        parse_spec(yaml.safe_load((tmp / SPEC_FILE).read_text()), str(folder / SPEC_FILE))  # reads back
    return folder


def _find_package_dir(path: Path) -> Path | None:
    for cand in (path, path / "package"):
        if (cand / SPEC_FILE).is_file():
            return cand
    return None


def load_package(path: str | os.PathLike) -> ModelPackage:
    """Load a model package from its folder, its ``medvit.yaml``, a run folder or a run's ``.ckpt`` file.

    Raises:
        InputError: Not found, not a package, or a spec that does not validate (one line naming the file).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such model package, run folder or checkpoint")
    ckpt_state = None
    if path.is_file() and path.suffix == ".ckpt":
        folder = next((d for p in path.parents if (d := _find_package_dir(p)) is not None), None)
        if folder is None:
            raise InputError(f"{path}: a checkpoint outside a medvit run folder (no package/{SPEC_FILE} above it)")
        ckpt_state = _checkpoint_state(path)
    elif path.is_file() and path.name == SPEC_FILE:
        folder = path.parent
    else:
        folder = _find_package_dir(path) if path.is_dir() else None
        if folder is None:
            raise InputError(f"{path}: not a medvit model package (no {SPEC_FILE})")
    spec_file = folder / SPEC_FILE
    spec = parse_spec(read_yaml(spec_file, error=InputError), str(spec_file))
    if ckpt_state is None and not (folder / WEIGHTS_FILE).is_file():
        raise InputError(f"{folder}: package has no {WEIGHTS_FILE}")
    if ckpt_state is None:
        sha = package_hash(folder)
    else:  # a checkpoint's weights: the checkpoint file identifies them
        h = hashlib.sha256()
        _hash_file(h, path)
        sha = h.hexdigest()
    return ModelPackage(spec=spec, path=folder, sha256=sha, state_dict=ckpt_state)


def read_lightning_checkpoint(path: str | os.PathLike, *, mmap: bool = False) -> dict[str, Any]:
    """A Lightning checkpoint of tensors and plain data, read with ``weights_only=True`` whatever
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says, so no pickled code runs.

    Raises:
        InputError: Unreadable, truncated, pickling more than weights, or without a ``state_dict``.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise InputError(
            f"{path}: holds pickled Python objects beyond weights ({one_line(exc, 120)}); medvit does not run "
            "them: use only checkpoints medvit wrote"
        ) from None
    except Exception as exc:  # noqa: BLE001  (torch raises many types for bad files)
        raise InputError(f"{path}: not a readable checkpoint ({one_line(exc, 160)})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise InputError(f"{path}: not a Lightning checkpoint (no state_dict)")
    return ckpt


def _checkpoint_state(path: Path) -> dict[str, Any]:
    """The network weights of a medvit Lightning checkpoint (``model.`` prefix of the task module)."""
    state = read_lightning_checkpoint(path)["state_dict"]
    out = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    if not out:
        raise InputError(f"{path}: checkpoint holds no medvit model weights (no 'model.' keys)")
    return out
