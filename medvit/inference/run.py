"""``medvit predict`` as a library function: every case of an input through one Predictor, then the manifest.

A single input that fails raises (one line, nothing written). In a folder, each case is isolated: a failing
case, whatever the error, is reported in one line, recorded in the manifest and skipped (an unexpected
error's traceback goes to ``OUT/predict-errors.log``); the others are predicted. One predict writes to an
output folder at a time (a lock file in it); staging folders a killed predict left are removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvit.errors import ConfigError, InputError, MedvitError, one_line
from medvit.inference import slides
from medvit.inference.cases import Case, discover_cases
from medvit.inference.manifest import case_record, finish, model_record, new_manifest, write_manifest
from medvit.inference.outputs import output_files, parse_output_types, write_outputs
from medvit.inference.statistics import sidecar_rows, statistics_rows, write_statistics_csv
from medvit.io import dicomweb
from medvit.io.atomic import file_lock, remove_stale_staging

LOCK = ".medvit-predict.lock"
ERROR_LOG = "predict-errors.log"


@contextlib.contextmanager
def output_lock(outdir: Path) -> Iterator[None]:
    """Hold ``outdir``'s lock for one predict; a second predict into the same folder is refused in one line.
    Staging folders that a killed predict left behind are removed once the lock is held."""
    created = not outdir.exists()
    with contextlib.ExitStack() as held:
        if created:  # only when empty: a failed single case leaves nothing behind
            held.callback(_remove_if_empty, outdir)
        try:  # before any work: an output folder that cannot be written is found now, not after inference
            outdir.mkdir(parents=True, exist_ok=True)
            held.enter_context(file_lock(outdir / LOCK, wait=False))
        except BlockingIOError:
            raise ConfigError(
                f"-o {outdir}: another medvit predict is writing to this folder; wait for it or choose another"
            ) from None
        except OSError as exc:
            raise ConfigError(f"-o {outdir}: cannot write there ({exc.strerror or one_line(exc)})") from None
        remove_stale_staging(outdir)
        yield


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


@dataclass
class RunResult:
    """What a run did: the manifest (as written), its path, and the cases that failed."""

    manifest: dict[str, Any]
    manifest_path: Path
    failed: list[str] = field(default_factory=list)


def plan_cases(
    input_path: str | os.PathLike,
    outdir: str | os.PathLike,
    *,
    output_types: list[str],
    series: str | None = None,
) -> list[Case]:
    """The cases of ``input_path``, checked against the output types before any work is done.

    Raises:
        InputError: No input, or a folder with no cases.
        ConfigError: DICOM-SEG or RTSTRUCT asked for an input that is not DICOM, or an output would overwrite
            an input.
    """
    cases = discover_cases(input_path, series=series, exclude=[Path(outdir)])
    inputs = {case.path.resolve() for case in cases}
    for case in cases:
        for file in output_files(case.name, output_types, spatial_dims=3, probabilities=False).values():
            if (Path(outdir) / file).resolve() in inputs:
                raise ConfigError(f"-o {outdir}: {file} would overwrite an input; choose another output folder")
    for kind, what in (("dicom-seg", "DICOM-SEG"), ("rtstruct", "RTSTRUCT")):
        if kind in output_types:
            for case in cases:
                if case.kind != "dicom":
                    raise ConfigError(f"--output-type {kind}: {case.path} is not a DICOM input ({what} needs one)")
    return cases


def run_predict(
    predictor,
    input_path: str | os.PathLike,
    outdir: str | os.PathLike,
    *,
    output_type: str | None = None,
    save_probabilities: bool = False,
    skip_existing: bool = False,
    series: str | None = None,
    spacing: tuple[float, ...] | None = None,
    resample_uneven: bool = False,
    deidentify: bool = False,
    mpp: float | None = None,
    roi: tuple[int, int, int, int] | None = None,
    tissue_mask: str | os.PathLike | None = None,
    num_parts: int = 1,
    part_id: int = 0,
    stow: str | None = None,
    echo: Callable[[str], None] = print,
    echo_error: Callable[[str], None] = print,
) -> RunResult:
    """Predict every case of ``input_path`` into ``outdir`` and write ``outdir/manifest.json``.

    Args:
        predictor: A :class:`~medvit.inference.Predictor`.
        input_path: A file or folder (see :func:`~medvit.inference.cases.discover_cases`), or a DICOMweb study
            or series URL (each series downloaded into a private temporary folder just before it is read).
        outdir: Output folder (created).
        output_type: Comma-separated ``nifti,dicom-seg,rtstruct,png,preview,json`` (default by task and
            dimensions). Segmentations also get ``outdir/statistics.csv`` (one row per case and label).
        save_probabilities: Also write the probabilities on the input grid.
        skip_existing: Leave cases whose outputs all exist.
        series: DICOM series UID (or unique prefix) to read.
        spacing: Voxel spacing for DICOM inputs that give none.
        resample_uneven: Resample DICOM series with gaps between slices onto a uniform grid (recorded in the
            manifest) instead of refusing them.
        deidentify: Write DICOM outputs de-identified (:func:`medvit.io.dicom_seg.deidentify_dataset`).
        mpp, roi, tissue_mask: Cells packages: see :func:`medvit.inference.slides.predict_cells`.
        num_parts, part_id: Run only the cases ``i`` (in name order) with ``i % num_parts == part_id``, so
            that a scheduler spreads a folder over machines.
        stow: A DICOMweb root: each case's DICOM outputs are sent there in one STOW-RS request once written
            (a case whose objects the server refuses fails, and its outputs are removed).
        echo: Where per-case lines go.
        echo_error: Where per-case errors go (folder inputs).

    Raises:
        MedvitError: Bad options (before any work), or the only case failed.
    """
    spec = predictor.spec
    types = parse_output_types(output_type, task=spec.task, spatial_dims=spec.spatial_dims)
    outdir = Path(outdir)
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise ConfigError(f"--part-id {part_id} --num-parts {num_parts}: need 0 <= part-id < num-parts")
    if spec.kind.prediction != "cells" and (mpp is not None or roi is not None or tissue_mask is not None):
        raise ConfigError("--mpp, --roi and --tissue-mask are for cells (pathology) packages")
    if tissue_mask is not None and not Path(tissue_mask).is_file():
        raise InputError(f"--tissue-mask {tissue_mask}: no such file")
    if stow is not None:
        stow = dicomweb.stow_root(stow)
        if not {"dicom-seg", "rtstruct"} & set(types):
            raise ConfigError("--stow: sends DICOM outputs; add dicom-seg and/or rtstruct to --output-type")
    cases = plan_cases(input_path, outdir, output_types=types, series=series)
    cases = cases[part_id::num_parts]
    single = Path(input_path).is_file() or len(cases) == 1 and cases[0].path == Path(input_path)
    if dicomweb.is_dicomweb_url(input_path):  # a series URL (or --series) is one case, a study a folder
        single = series is not None or dicomweb.parse_dicomweb_url(str(input_path)).series is not None
    options = {
        "output_types": types,
        "save_probabilities": save_probabilities,
        "skip_existing": skip_existing,
        "series": series,
        "spacing": list(spacing) if spacing else None,
        "resample_uneven": resample_uneven,
        "deidentify": deidentify,
        "mpp": mpp,
        "roi": list(roi) if roi else None,
        "tissue_mask": Path(tissue_mask).name if tissue_mask is not None else None,
        "part": [part_id, num_parts] if num_parts > 1 else None,
        "maps_by_default": spec.kind.prediction == "cells" and not output_type,
        "stow": stow,
    }
    tissue_path = Path(tissue_mask) if tissue_mask is not None else None
    with output_lock(outdir):
        return _run_cases(predictor, cases, outdir, types, options, single, echo, echo_error, tissue_path)


def _case_types(types: list[str], case, options) -> list[str]:
    """A cells package writes instance and type maps by default for tiles and regions (not whole slides)."""
    if options["maps_by_default"] and (options["roi"] or case.kind == "image2d" and slides.is_tile(case.path)):
        return [*types[:-1], "instances", "types", types[-1]]  # json stays last
    return types


def _run_cases(predictor, cases, outdir: Path, types, options, single, echo, echo_error, tissue) -> RunResult:
    spec = predictor.spec
    save_probabilities, skip_existing = options["save_probabilities"], options["skip_existing"]
    series = options["series"]
    spacing = tuple(options["spacing"]) if options["spacing"] else None
    if predictor.device_note:
        echo(predictor.device_note)
    manifest = new_manifest(predictor, options)
    model = {k: v for k, v in model_record(predictor).items() if k in ("uri", "version", "name", "sha256")}
    failed: list[str] = []
    segments = spec.kind.prediction == "mask"  # statistics for every case; the image kept for previews
    stat_rows: list[dict] = []  # statistics.csv, written with the manifest
    start = time.perf_counter()
    roi = tuple(options["roi"]) if options["roi"] else None
    cell_options = {"mpp": options["mpp"], "roi": roi, "tissue_mask": tissue} if predictor.cells else {}
    for case in cases:
        case_types = _case_types(types, case, options)
        files = output_files(
            case.name, case_types, spatial_dims=spec.spatial_dims, probabilities=save_probabilities
        )
        if skip_existing and all((outdir / f).exists() for f in files.values()):
            existing = [outdir / f for f in files.values()]
            manifest["cases"].append(case_record(case.name, case.url or case.path, "skipped", outputs=existing))
            stat_rows.extend(sidecar_rows(case.name, outdir / files["json"]))
            echo(f"{case.name}: skipped (outputs exist)")
            continue
        t0 = time.perf_counter()
        scratch = None  # a DICOMweb series: downloaded into a private folder, removed after the case
        try:
            if case.url:
                scratch = Path(tempfile.mkdtemp(prefix="medvit-dicomweb-"))
                dicomweb.download_series(case.url, scratch)
            pred = predictor.predict(
                scratch or case.path,
                series=series,
                spacing=spacing,
                probabilities=save_probabilities,
                name=case.name,
                resample_uneven=options["resample_uneven"],
                **cell_options,
                **({"statistics": True, "keep_image": "preview" in case_types} if segments else {}),
            )
            written = write_outputs(
                pred,
                outdir,
                case.name,
                case_types,
                probabilities=save_probabilities,
                model=model,
                deidentify=options["deidentify"],
            )
            stored = _stow(options["stow"], written)
        except Exception as exc:  # noqa: BLE001 - each case is isolated; KeyboardInterrupt still stops the run
            expected = isinstance(exc, MedvitError | OSError)
            if single and isinstance(exc, MedvitError):
                raise
            if single and expected:  # an OSError: disk full, permissions (names the file)
                raise InputError(f"{case.name}: {one_line(exc)}") from None
            if single:
                reason = f"{type(exc).__name__}: {one_line(exc)}"
                raise InputError(f"{case.path}: cannot be predicted ({reason})") from None
            message = one_line(exc)
            if not expected:
                with open(outdir / ERROR_LOG, "a") as log:
                    log.write(f"--- {case.name}\n{''.join(traceback.format_exception(exc))}")
                message = f"unexpected {type(exc).__name__}: {message} (traceback in {outdir / ERROR_LOG})"
            failed.append(case.name)
            manifest["cases"].append(case_record(case.name, case.url or case.path, "failed", error=message))
            echo_error(f"error: {case.name}: {message} (skipped)")
            continue
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
        seconds = time.perf_counter() - t0
        stat_rows.extend(statistics_rows(case.name, getattr(pred, "statistics", None)))
        record = case_record(
            case.name, case.url or case.path, "ok", prediction=pred, outputs=written, seconds=seconds
        )
        manifest["cases"].append({**record, "stow": stored} if stored else record)
        echo(f"{case.name}: {_summary(pred)} -> {', '.join(p.name for p in written)} ({seconds:.1f} s)")
        if stored:
            echo(f"{case.name}: stored {stored['stored']} object(s) at {stored['url']} (HTTP {stored['status']})")
    finish(manifest, time.perf_counter() - start)
    if segments:
        write_statistics_csv(stat_rows, outdir, spatial_dims=spec.spatial_dims)
    path = write_manifest(manifest, outdir)
    return RunResult(manifest=manifest, manifest_path=path, failed=failed)


def _stow(url: str | None, written: list[Path]) -> dict | None:
    """Send a case's DICOM outputs to ``url`` in one STOW-RS request; if the server refuses them, the case's
    outputs are removed (a failed case leaves none) and the one-line error raised."""
    if not url:
        return None
    try:
        return dicomweb.stow(url, [p for p in written if p.name.endswith(("_seg.dcm", "_rtstruct.dcm"))])
    except Exception:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        raise


def _summary(pred) -> str:
    if pred.task == "cells":
        s = pred.summary()
        found = ", ".join(f"{k} {v}" for k, v in s["counts"].items() if v) or "none by type"
        t = s["tiles"]
        return f"{s['cells']} nuclei ({found}); {t['run']} tiles run, {t['skipped']} without tissue"
    if pred.class_probabilities is not None:
        scores = pred.class_scores()
        best = max(scores, key=scores.get)
        return f"{best} ({scores[best]:.3f})"
    if pred.volumes_ml is not None:
        found = [f"{k} {v:.1f} mL" for k, v in pred.volumes_ml.items() if v > 0]
        return ", ".join(found) if found else "nothing found"
    return "segmented" if pred.mask.any() else "nothing found"
