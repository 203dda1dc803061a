"""The ``medvit`` command line: a thin Typer app over library functions.

Heavy imports (torch, MONAI, pydicom, ...) happen inside the commands so that ``medvit --help`` is
instant. Errors on bad input print one line on stderr and exit with code 2; warnings print one line.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    name="medvit",
    help="Medical-imaging pipelines on ViT foundation backbones (DICOM, NIfTI, 2D images).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
    text = " ".join(str(message).split())
    print(f"warning: {text}", file=sys.stderr)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn medvit's user-facing errors into one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from medvit.errors import MedvitError, MedvitWarning

        warnings.showwarning = _show_warning
        warnings.simplefilter("ignore", DeprecationWarning)  # libraries' notices to developers, not users
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("always", MedvitWarning)  # one line per case, even for repeated inputs
        try:
            return fn(*args, **kwargs)
        except MedvitError as exc:
            _fail(" ".join(str(exc).split()), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)

    return wrapper


def _parse_spacing(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        values = ()
    if len(values) not in (2, 3) or any(not math.isfinite(v) or v <= 0 for v in values):
        from medvit.errors import InputError

        raise InputError(f"--spacing {text!r}: expected 2 or 3 positive numbers such as 0.7,0.7,2.5")
    return values


SeriesOpt = Annotated[
    str | None,
    typer.Option("--series", help="SeriesInstanceUID (or unique prefix) when a DICOM input holds several."),
]
ResampleOpt = Annotated[
    bool,
    typer.Option(
        "--resample-uneven",
        help="Resample a DICOM series with gaps between slices onto a uniform grid from the slices' true "
        "positions (otherwise an error naming the gap).",
    ),
]
SpacingOpt = Annotated[
    str | None,
    typer.Option("--spacing", help="Voxel spacing in mm (x,y[,z]) to use where a DICOM input gives none."),
]


@app.command()
@handle_errors
def version() -> None:
    """Print medvit, torch, MONAI, Lightning and MLflow versions and the CUDA device, if any."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as pkg_version

    import medvit

    typer.echo(f"medvit     {medvit.__version__}")
    for name in ("torch", "monai", "lightning", "mlflow"):
        try:
            typer.echo(f"{name:<10} {pkg_version(name)}")
        except PackageNotFoundError:
            typer.echo(f"{name:<10} not installed")
    import torch

    if torch.cuda.is_available():
        idx = torch.cuda.current_device()
        name, count = torch.cuda.get_device_name(idx), torch.cuda.device_count()
        typer.echo(f"cuda       {torch.version.cuda} ({name}, {count} device(s))")
    else:
        typer.echo("cuda       not available (CPU only)")


@app.command()
@handle_errors
def info(
    path: Annotated[Path, typer.Argument(help="DICOM file/folder/zip, NIfTI file or 2D image.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    series: SeriesOpt = None,
    spacing: SpacingOpt = None,
    resample_uneven: ResampleOpt = False,
    show_descriptions: Annotated[
        bool,
        typer.Option(
            "--show-descriptions",
            help="Also print each DICOM SeriesDescription (free text that may identify a patient) on the "
            "terminal; never in --json, files or logs.",
        ),
    ] = False,
) -> None:
    """Show format, shape, spacing, origin, direction, affine, modality and the DICOM series list."""
    from medvit.io import describe, list_series, read_image, sniff

    if not path.exists():
        from medvit.errors import InputError

        raise InputError(f"{path}: no such file or directory")
    listing = None
    if path.is_dir() or sniff(path) == "dicom" and path.name.lower().endswith(".zip"):
        listing = list_series(path, descriptions=show_descriptions and not as_json)
    if listing is not None and len(listing) > 1 and series is None:
        result: dict[str, Any] = {"path": str(path), "format": "dicom", "series": listing}
        note = "several series: pass --series UID to describe one"
    else:
        image = read_image(path, series=series, spacing=_parse_spacing(spacing), resample_uneven=resample_uneven)
        result = {"path": str(path), **describe(image)}
        if listing is not None:
            result["series_list"] = listing
        note = None
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    _print_info(result, note)


def _print_info(result: dict[str, Any], note: str | None) -> None:
    def fmt(value: Any) -> str:
        if isinstance(value, list | tuple):
            return "[" + ", ".join(fmt(v) for v in value) + "]"
        if isinstance(value, float):
            return f"{value:.6g}"
        return str(value)

    for key, value in result.items():
        if key in ("series", "series_list") and isinstance(value, list):
            typer.echo(f"{key}:")
            for s in value:
                desc = f" '{s['series_description']}'" if s.get("series_description") else ""
                typer.echo(f"  {s['series_uid']}{desc} {s.get('modality') or '?'} {s['num_slices']} slice(s)")
        elif key == "affine":
            typer.echo("affine:")
            for row in value:
                typer.echo("  " + fmt(row))
        elif key == "series" and isinstance(value, dict):
            typer.echo("series: " + ", ".join(f"{k}={v}" for k, v in value.items() if v not in (None, "")))
        else:
            typer.echo(f"{key}: {fmt(value)}")
    if note:
        typer.echo(note)


@app.command()
@handle_errors
def convert(
    src: Annotated[Path, typer.Argument(help="DICOM file/folder/zip, NIfTI file or 2D image.")],
    dst: Annotated[Path, typer.Argument(help="Output .nii.gz (or .nii).")],
    series: SeriesOpt = None,
    spacing: SpacingOpt = None,
    resample_uneven: ResampleOpt = False,
) -> None:
    """Convert any readable input to NIfTI, keeping its grid and world position exactly."""
    from medvit.errors import InputError
    from medvit.io import read_image, write_nifti

    if not dst.name.lower().endswith((".nii", ".nii.gz")):
        raise InputError(f"{dst}: output must end in .nii.gz or .nii")
    image = read_image(src, series=series, spacing=_parse_spacing(spacing), resample_uneven=resample_uneven)
    write_nifti(image, dst)
    shape = "x".join(str(s) for s in image.shape[1:])
    typer.echo(f"wrote {dst} ({shape}, {image.shape[0]} channel(s))")


cards_app = typer.Typer(
    help="Data cards: list, show and validate them against the files on disk.", no_args_is_help=True
)
app.add_typer(cards_app, name="cards")


@cards_app.command("list")
@handle_errors
def cards_list() -> None:
    """List the data cards found in $MEDVIT_CARDS_PATH, ./data_cards and medvit's own cards."""
    from medvit.data.cards import list_cards, load_card

    typer.echo(f"{'name':<18} {'dims':<4} {'modality':<8} {'task':<14} {'synthetic':<9} license")
    for name in list_cards():
        card = load_card(name)
        typer.echo(
            f"{card.name:<18} {card.spatial_dims}D{'':<2} {card.modality:<8} {card.task:<14} "
            f"{'yes' if card.synthetic else 'no':<9} {card.license}"
        )


@cards_app.command("show")
@handle_errors
def cards_show(card: Annotated[str, typer.Argument(help="Card name or path to a card YAML file.")]) -> None:
    """Print a card, validated, as YAML."""
    import yaml

    from medvit.data.cards import load_card

    typer.echo(yaml.safe_dump(load_card(card).model_dump(mode="json"), sort_keys=False, width=110).rstrip())


@cards_app.command("validate")
@handle_errors
def cards_validate(
    card: Annotated[str, typer.Argument(help="Card name or path to a card YAML file.")],
    root: Annotated[
        Path | None, typer.Option("--root", help="Folder holding the data set (synthetic sets: default cache).")
    ] = None,
) -> None:
    """Check that the files the card describes are under ROOT and agree with it (exit 2 when not)."""
    from medvit.data.cards import load_card
    from medvit.data.validate import validate_card

    loaded = load_card(card)
    if root is None and not loaded.synthetic:
        from medvit.errors import ConfigError

        raise ConfigError(f"card {loaded.name!r} needs --root DIR (the folder holding the data set)")
    report = validate_card(loaded, root)
    for problem in report.problems:
        typer.echo(f"problem: {' '.join(problem.split())}", err=True)
    s = report.summary
    if s:
        splits = ", ".join(f"{k} {v}" for k, v in s.get("splits", {}).items())
        classes = ", ".join(f"{k} {v}" for k, v in s.get("classes", {}).items())
        typer.echo(f"card {s['card']}: {s['cases']} case(s) ({splits}); classes present: {classes or 'none'}")
        if "spacing_min" in s:
            typer.echo(f"spacing range (mm): {s['spacing_min']} .. {s['spacing_max']}")
    if not report.ok:
        typer.echo(f"error: {len(report.problems)} problem(s) found for card {loaded.name!r}", err=True)
        raise typer.Exit(2)
    typer.echo("ok")


@app.command()
@handle_errors
def backbones(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """List the registered backbones: dims, patch, input size, normalisation, license, paper, weights source."""
    from medvit.backbones import describe_backbone, list_backbones

    rows = [describe_backbone(name) for name in list_backbones()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        patch = "x".join(str(p) for p in r["patch_size"]) if isinstance(r["patch_size"], list) else r["patch_size"]
        size = "x".join(str(s) for s in r["input_size"])
        typer.echo(
            f"{r['name']:<20} {r['spatial_dims']}D  dim {r['embed_dim']:<5} depth {r['depth']:<3} "
            f"patch {patch:<3} input {size:<12} {r['position']:<7} {r['arch']}"
        )
        typer.echo(f"    normalisation: {r['normalisation']}")
        files = ", ".join(r["file_names"]) or "none (random init)"
        typer.echo(f"    weights: {files}; source: {r['source']}")
        typer.echo(f"    license: {r['license']}")
        if r["paper"]:
            typer.echo(f"    paper: {r['paper']}")


def _artifact(result) -> str:
    """What a finished run left: ``package`` or ``backbone`` (a self-supervised run's export)."""
    return (
        "backbone"
        if result.package is not None and (Path(result.package) / "backbone.json").is_file()
        else "package"
    )


@app.command(context_settings={"allow_extra_args": False})
@handle_errors
def run(
    pipeline: Annotated[
        Path | None, typer.Argument(help="Pipeline file or shipped name (e.g. quickstart); omit with --resume.")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Overrides as key.sub=value, e.g. trainer.max_epochs=2.")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Run folder to resume from its last checkpoint.")
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Validate the pipeline, data and weights; do not train.")
    ] = False,
    smoke: Annotated[
        bool,
        typer.Option(
            "--smoke",
            help="A quick run of the pipeline's model family: synthetic set of its task, tiny backbone without "
            "pretrained weights, small inputs, a couple of steps (overrides still apply).",
        ),
    ] = False,
) -> None:
    """Train, validate and test a pipeline; log it to MLflow and write a model package (self-supervised
    pipelines: an adapted backbone for fine-tuning)."""
    from medvit import engine

    if pipeline is not None and "=" in pipeline.name and not pipeline.exists():
        overrides = [str(pipeline), *(overrides or [])]  # `--resume DIR key=value`: the first is an override
        pipeline = None
    if check:
        if pipeline is None:
            raise typer.BadParameter("--check needs a pipeline file")
        checked = engine.check_pipeline(pipeline, overrides or [], smoke=smoke)
        cfg, dm = checked.cfg, checked.datamodule
        typer.echo(checked.hardware.note)
        labels = f"{dm.num_classes} classes" if cfg.kind.labelled else "its images unlabelled"
        typer.echo(f"ok: {pipeline} ({cfg.task.kind}, card {dm.card.name}, {labels})")
        return
    result = engine.run_pipeline(pipeline, overrides or [], resume=resume, smoke=smoke, echo=typer.echo)
    if result.package is None:
        return
    typer.echo("")
    for key in sorted(result.metrics):
        if key.startswith(("val/", "test/", "best/", "probe/")):
            typer.echo(f"{key:<28} {result.metrics[key]:.4f}")
    if result.test_is_validation and any(k.startswith("test/") for k in result.metrics):
        typer.echo("(test = validation cases: the data card has no test split)")
    typer.echo(f"run folder:     {result.run_dir}")
    if result.mlflow_run_id:
        typer.echo(f"MLflow run:     {result.mlflow_run_id} ({result.tracking_uri})")
    if result.registered:
        typer.echo(f"registered:     models:/{result.registered['name']}/{result.registered['version']}")
    if _artifact(result) == "backbone":
        typer.echo(f"backbone:       {result.package}")
        typer.echo(f"fine-tune with: model.backbone.weights={result.package}/<the .safetensors file>")
        return
    typer.echo(f"model package:  {result.package}")
    typer.echo(f"predict with:   medvit predict -m {result.package} -i INPUT -o OUTDIR")


# -- model registry (issue #7): register | models list/show/alias ---------------------------------------------
TrackingUriOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db here).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _parse_tags(items: list[str] | None) -> dict[str, str]:
    tags = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            from medvit.errors import InputError

            raise InputError(f"--tag {item!r}: expected KEY=VALUE")
        tags[key.strip()] = value
    return tags


@app.command()
@handle_errors
def register(
    source: Annotated[str, typer.Argument(help="Model package folder, run folder (with package/) or run .ckpt.")],
    name: Annotated[str, typer.Option("--name", help="Registered model name (created when new).")],
    alias: Annotated[str | None, typer.Option("--alias", help="Point this alias (e.g. champion) here.")] = None,
    tracking_uri: TrackingUriOpt = None,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="MLflow run to log the model to (default: the package's run).")
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="Extra version tag KEY=VALUE (repeatable).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Log a model package to MLflow and register it as a new version of NAME (with tags, optional alias)."""
    from medvit.registry import register_package

    info = register_package(
        source, name=name, alias=alias, tracking_uri=tracking_uri, run_id=run_id, tags=_parse_tags(tag)
    )
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    typer.echo(f"registered {info['name']} version {info['version']}: {info['uri']}")
    if info["alias"]:
        typer.echo(f"alias {info['alias']} -> version {info['version']}: models:/{info['name']}@{info['alias']}")
    typer.echo(f"MLflow run {info['run_id']} ({info['tracking_uri']})")


models_app = typer.Typer(help="Registered models: list, show, and move aliases.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
@handle_errors
def models_list(tracking_uri: TrackingUriOpt = None, as_json: JsonOpt = False) -> None:
    """List registered models: name, latest version, aliases, task."""
    from medvit.registry import list_models

    rows = list_models(tracking_uri=tracking_uri)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no registered models")
        return
    width = max(12, *(len(r["name"]) for r in rows))
    typer.echo(f"{'name':<{width}} {'latest':<6} {'task':<14} aliases")
    for r in rows:
        aliases = ", ".join(f"{a}->{v}" for a, v in r["aliases"].items()) or "-"
        task = r["task"] or ("?" if r["medvit"] else "(not medvit)")
        typer.echo(f"{r['name']:<{width}} {r['latest_version'] or '-':<6} {task:<14} {aliases}")


@models_app.command("show")
@handle_errors
def models_show(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    tracking_uri: TrackingUriOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a registered model: aliases and every version with its tags (newest first)."""
    import datetime

    from medvit.registry import show_model

    info = show_model(name, tracking_uri=tracking_uri)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    aliases = ", ".join(f"{a}->{v}" for a, v in info["aliases"].items()) or "none"
    typer.echo(f"{info['name']}: {len(info['versions'])} version(s); aliases: {aliases}")
    for v in info["versions"]:
        when = datetime.datetime.fromtimestamp(v["created"] / 1000).strftime("%Y-%m-%d %H:%M")
        marks = f" [{', '.join(v['aliases'])}]" if v["aliases"] else ""
        typer.echo(f"version {v['version']}{marks}  {when}  {v['status']}  run {v['run_id'] or '-'}")
        for key, value in v["tags"].items():
            typer.echo(f"    {key}: {value}")


@models_app.command("alias")
@handle_errors
def models_alias(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    alias: Annotated[str, typer.Argument(help="Alias, e.g. champion.")],
    version: Annotated[str, typer.Argument(help="Version number the alias should point at.")],
    tracking_uri: TrackingUriOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Point ALIAS of model NAME at VERSION (moving it from the version it pointed at)."""
    from medvit.registry import set_alias

    info = set_alias(name, alias, version, tracking_uri=tracking_uri)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    moved = f" (was version {info['previous']})" if info["previous"] not in (None, info["version"]) else ""
    typer.echo(f"{info['uri']} -> version {info['version']}{moved}")


@app.command()
@handle_errors
def predict(
    input_path: Annotated[
        str,
        typer.Option(
            "-i",
            "--input",
            help="NIfTI, DICOM file/folder/zip, 2D image, or a folder of these; or a DICOMweb study or series URL "
            "(http(s)://HOST/.../studies/UID[/series/UID]; credentials from MEDVIT_DICOMWEB_USER and "
            "MEDVIT_DICOMWEB_PASSWORD, MEDVIT_DICOMWEB_TOKEN or netrc, never in the URL).",
        ),
    ],
    outdir: Annotated[Path, typer.Option("-o", "--output", help="Output folder (created).")],
    model: Annotated[
        str, typer.Option("-m", "--model", help="Model package folder, run folder, or models:/NAME@ALIAS.")
    ],
    device: Annotated[str, typer.Option("--device", help="auto (CUDA if present), cpu, cuda or cuda:N.")] = "auto",
    overlap: Annotated[
        float | None, typer.Option("--overlap", help="Sliding-window overlap (default: the package's, 0.5).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Windows per forward pass (default: the package's).")
    ] = None,
    tta: Annotated[bool, typer.Option("--tta/--no-tta", help="Flip-mirroring TTA on the package's axes.")] = False,
    output_type: Annotated[
        str | None,
        typer.Option(
            "--output-type",
            help="Comma-separated nifti,dicom-seg,rtstruct,png,preview,json (default: nifti for 3D, png for 2D, "
            "json for classes); dicom-seg and rtstruct (RT Structure Set) need DICOM inputs; preview is a PNG "
            "of the mask over the image (three planes for 3D). A <case>.json with labels, volumes and per-label "
            "statistics is always written, and OUT/statistics.csv for segmentations.",
        ),
    ] = None,
    save_probabilities: Annotated[
        bool, typer.Option("--save-probabilities", help="Also write probabilities on the input grid.")
    ] = False,
    skip_existing: Annotated[
        bool, typer.Option("--skip-existing", help="Skip cases whose outputs all exist.")
    ] = False,
    series: SeriesOpt = None,
    spacing: SpacingOpt = None,
    resample_uneven: ResampleOpt = False,
    deidentify: Annotated[
        bool,
        typer.Option(
            "--deidentify",
            help="Write DICOM-SEG and RTSTRUCT without the patient's name, ID, birth date, study dates, accession "
            "number, physicians, institution or free text (PS3.15 basic profile; UIDs kept to reference the "
            "source).",
        ),
    ] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
    precision: Annotated[
        str, typer.Option("--precision", help="auto (bf16 where the device does it natively), 32 or bf16.")
    ] = "auto",
    mpp: Annotated[
        float | None,
        typer.Option("--mpp", help="Cells: level-0 µm per pixel, for slides and tiles whose metadata has none."),
    ] = None,
    roi: Annotated[
        str | None, typer.Option("--roi", help="Cells: x,y,w,h region of the slide (level-0 pixels).")
    ] = None,
    tissue_mask: Annotated[
        Path | None,
        typer.Option("--tissue-mask", help="Cells: tissue mask image (non-zero = tissue), instead of detection."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", help="Cells: post-processing processes (default: CPUs - 1; 0: none)."),
    ] = None,
    num_parts: Annotated[
        int, typer.Option("--num-parts", help="Split a folder's cases into N parts (one per machine or job).")
    ] = 1,
    part_id: Annotated[int, typer.Option("--part-id", help="Which part to run, 0 .. num-parts - 1.")] = 0,
    stow: Annotated[
        str | None,
        typer.Option(
            "--stow",
            help="DICOMweb root (http(s)://HOST/.../dicom-web) to send each case's DICOM-SEG and RTSTRUCT to with "
            "STOW-RS, one request per case (credentials as for -i).",
        ),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="Where the network runs: torch, onnxruntime or openvino (the package exported to ONNX once, "
            "cached; float32), or auto (torch or onnxruntime, whichever is faster here with the same logits).",
        ),
    ] = "torch",
) -> None:
    """Segment or classify images with a model package; masks land on each input's own grid.

    Writes OUTDIR/<case>.nii.gz (3D), <case>.png (2D), <case>_seg.dcm (DICOM-SEG), <case>.json (labels,
    volumes or class probabilities) and OUTDIR/manifest.json. Exit code 2 on bad input or options (nothing
    written); for a folder, failing cases are reported and skipped, and the exit code is 1.
    """
    from medvit.errors import ConfigError
    from medvit.inference import Predictor
    from medvit.inference.run import run_predict
    from medvit.inference.slides import parse_roi
    from medvit.io.dicomweb import is_dicomweb_url, parse_dicomweb_url, stow_root

    if is_dicomweb_url(input_path):  # refused before the model loads: credentials in it, not a study or series
        parse_dicomweb_url(input_path)
    elif not Path(input_path).exists():
        from medvit.errors import InputError

        raise InputError(f"{input_path}: no such file or directory")
    else:
        input_path = Path(input_path)
    if stow is not None:
        stow_root(stow)
    if outdir.exists() and not outdir.is_dir():
        raise ConfigError(f"-o {outdir}: exists and is not a folder")
    spacing_mm = _parse_spacing(spacing)
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise ConfigError(f"--mpp {mpp}: must be a positive number of micrometres per pixel")
    region = parse_roi(roi)
    predictor = Predictor(
        model,
        device=device,
        precision=precision,
        overlap=overlap,
        batch_size=batch_size,
        tta=tta,
        progress=not no_progress,
        workers=workers,
        engine=engine,
    )
    if predictor.engine_note:
        typer.echo(predictor.engine_note)
    result = run_predict(
        predictor,
        input_path,
        outdir,
        output_type=output_type,
        save_probabilities=save_probabilities,
        skip_existing=skip_existing,
        series=series,
        spacing=spacing_mm,
        resample_uneven=resample_uneven,
        deidentify=deidentify,
        mpp=mpp,
        roi=region,
        tissue_mask=tissue_mask,
        num_parts=num_parts,
        part_id=part_id,
        stow=stow,
        echo=typer.echo,
        echo_error=lambda line: typer.echo(line, err=True),
    )
    s = result.manifest["summary"]
    typer.echo(f"manifest: {result.manifest_path} ({s['ok']} ok, {s['skipped']} skipped, {s['failed']} failed)")
    if result.failed:
        typer.echo(f"error: {len(result.failed)} case(s) failed: {', '.join(result.failed)}", err=True)
        raise typer.Exit(1)


@app.command("export")
@handle_errors
def export_cmd(
    model: Annotated[str, typer.Argument(help="Model package folder, run folder or .ckpt, or models:/NAME@ALIAS")],
    outdir: Annotated[Path, typer.Option("-o", "--output", help="Folder to create for the export.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="onnx, openvino or torchscript.")] = "onnx",
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset (onnx and openvino).")] = 18,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Run the export and compare with PyTorch (float32).")
    ] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a folder that holds files.")] = False,
) -> None:
    """Export a package's network (float32, LoRA merged) for ONNX Runtime, OpenVINO, Triton or TorchScript.

    OUTDIR gets the network (model.onnx; model.xml/.bin; model.pt) with a dynamic batch axis and the package's
    window size, the package's medvit.yaml (preprocessing, labels) and export.json (input/output names, shapes,
    dtypes, opset, medvit version, package sha256, the check against PyTorch).
    """
    from medvit.export import export_package
    from medvit.inference.source import resolve_model

    package, _ = resolve_model(model)
    done = export_package(package, fmt, outdir, opset=opset, verify=verify, overwrite=overwrite)
    rec = done.record
    inp, out = rec["input"], rec["output"]
    typer.echo(
        f"wrote {done.file} ({rec['format']}): {inp['name']} {inp['shape']} {inp['dtype']} -> "
        f"{out['name']} {out['shape']} {out['dtype']}"
    )
    check = rec.get("verification")
    if check:
        typer.echo(
            f"verified in {check['runtime']} against PyTorch float32: max abs diff {check['max_abs_diff']:.3g} "
            f"(relative {check['max_rel_diff']:.3g})"
        )


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
