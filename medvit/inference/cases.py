"""What ``medvit predict -i`` names: one case, or a folder of cases, each with a name for its outputs.

A file is one case (NIfTI, 2D image, DICOM file or zip). A folder is one DICOM case when it holds DICOM
files itself (or when ``--series`` picks a series in it); otherwise every NIfTI file, 2D image and zip in it
is a case, and so is every subfolder (a DICOM series folder). Hidden entries and other files are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from medvit.errors import InputError
from medvit.io.dicomweb import is_dicomweb_url, list_series
from medvit.io.image2d import is_image2d_name
from medvit.io.nifti import is_nifti_name
from medvit.io.reader import sniff

_STRIP = (".nii.gz", ".nii", ".hdr.gz", ".hdr", ".img.gz", ".img", ".png", ".jpg", ".jpeg", ".tif", ".tiff",
          ".bmp", ".dcm", ".dicom", ".ima", ".zip", ".svs", ".ndpi", ".mrxs", ".scn", ".svslide", ".bif", ".vms",
          ".vmu")  # fmt: skip
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
# whole-slide formats that are nothing else (TIFF slides are found as 2D images, which OpenSlide also opens)
SLIDE_ONLY = (".svs", ".ndpi", ".mrxs", ".scn", ".svslide", ".bif", ".vms", ".vmu")


@dataclass(frozen=True)
class Case:
    """One input to predict: ``name`` (for its output files), ``path`` and ``kind`` (dicom, nifti, image2d,
    slide)."""

    name: str
    path: Path
    kind: str
    url: str | None = None  # a DICOMweb series: downloaded just before it is read (``path`` is then its name)


def case_name(path: Path) -> str:
    """The output name of an input: its file name without image suffixes, or its folder name."""
    name = path.name
    lower = name.lower()
    for suffix in _STRIP:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name or "case"


def _looks_dicom(path: Path) -> bool:
    if path.name.lower().endswith(_DICOM_SUFFIXES) or path.name.upper() == "DICOMDIR":
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _kind(path: Path) -> str:
    if path.is_dir() or path.name.lower().endswith(".zip"):
        return "dicom"
    if is_nifti_name(path):
        return "nifti"
    if is_image2d_name(path):
        return "image2d"
    if path.name.lower().endswith(SLIDE_ONLY):
        return "slide"
    return "dicom" if _looks_dicom(path) else ""


def discover_cases(
    path: str | os.PathLike, *, series: str | None = None, exclude: Iterable[Path] = ()
) -> list[Case]:
    """The cases under ``path`` in name order, with unique names.

    Args:
        path: A file or folder, or a DICOMweb study or series URL (:mod:`medvit.io.dicomweb`).
        series: A DICOM series was picked: a folder is then one DICOM case.
        exclude: Folders to leave out (the output folder, when it sits inside the input folder).

    Raises:
        InputError: ``path`` does not exist, or a folder holds no case.
    """
    if is_dicomweb_url(path):  # a study (one case per image series) or one series, named by series UID
        found = list_series(str(path), series=series)
        return [Case(s.series, Path(s.series), "dicom", url=s.url) for s in found]
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_file():
        return [Case(case_name(path), path, _kind(path) or sniff(path))]
    files = [p for p in sorted(path.iterdir()) if not p.name.startswith(".")]
    if series is not None or any(p.is_file() and _looks_dicom(p) for p in files):
        return [Case(case_name(path.resolve()), path, "dicom")]
    skip = {Path(e).resolve() for e in exclude}
    cases: list[Case] = []
    for entry in files:
        if entry.resolve() in skip:
            continue
        kind = _kind(entry)
        if kind and (entry.is_file() or any(entry.iterdir())):
            cases.append(Case(case_name(entry), entry, kind))
    if not cases:
        raise InputError(f"{path}: no NIfTI, DICOM, 2D image or slide cases in this folder")
    return _unique(cases)


def _unique(cases: list[Case]) -> list[Case]:
    """Suffix ``_2``, ``_3``, ... to names already taken (``a.nii.gz`` and ``a.png`` in one folder)."""
    taken: set[str] = set()
    out = []
    for case in cases:
        name, n = case.name, 1
        while name.lower() in taken:
            n += 1
            name = f"{case.name}_{n}"
        taken.add(name.lower())
        out.append(case if name == case.name else Case(name, case.path, case.kind))
    return out
