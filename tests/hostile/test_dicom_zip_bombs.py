"""Issue #13, classes 3 and 5 (DICOM and zips): a DICOM header claiming billions of frames, zip members that
expand past the budget or past their declared size, encrypted, unsupported or corrupt members: one line naming
the file, exit 2, quickly and under an address-space limit."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hostile_checks import address_space_limit, one_line_exit_2
from pydicom import dcmread
from pydicom.data import get_testdata_file

MEDVIT = str(Path(sys.executable).parent / "medvit")


def _info(path, env=None):
    return subprocess.run(
        [MEDVIT, "info", str(path)], capture_output=True, text=True, timeout=60,
        preexec_fn=address_space_limit(3 << 30),
        env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.mark.parametrize("frames", [2_000_000_000, 100_000_000, 70_000, -5])
def test_dicom_claiming_absurd_frame_counts(tmp_path, frames):
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.NumberOfFrames = frames
    path = tmp_path / "frames.dcm"
    ds.save_as(path)
    assert path.stat().st_size < 50_000
    one_line_exit_2(_info(path), "frames.dcm")


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _ct_bytes() -> bytes:
    return Path(get_testdata_file("CT_small.dcm")).read_bytes()


def test_zip_whose_members_expand_past_the_budget(tmp_path):
    path = _zip(tmp_path / "study.zip", {"a.dcm": _ct_bytes(), "b.bin": b"\0" * (8 << 20)})
    out = _info(path, {"MEDVIT_MAX_IMAGE_BYTES": str(4 << 20)})
    one_line_exit_2(out, "study.zip", "image budget", "refusing to inflate")


def _patch_central(path: Path, name: bytes, *, offset: int, fmt: str, value: int) -> None:
    """Rewrite a field of ``name``'s central-directory (and local) header in place."""
    raw = bytearray(path.read_bytes())
    for sig, field in ((b"PK\x01\x02", offset), (b"PK\x03\x04", offset - 2)):
        start = 0
        while (i := raw.find(sig, start)) >= 0:
            start = i + 4
            name_len_at = i + (28 if sig == b"PK\x01\x02" else 26)
            name_len = struct.unpack_from("<H", raw, name_len_at)[0]
            head = 46 if sig == b"PK\x01\x02" else 30
            if raw[i + head : i + head + name_len] == name:
                struct.pack_into(fmt, raw, i + field, value)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("field", "offset", "fmt", "value", "needle"),
    [
        ("encrypted", 8, "<H", 0x1, "encrypted"),
        ("method", 10, "<H", 99, "unsupported zip compression"),
        ("size", 24, "<I", 10, "zip member"),  # declares 10 bytes: inflating more is refused
    ],
)
def test_zip_members_that_lie_or_cannot_be_read(tmp_path, field, offset, fmt, value, needle):
    path = _zip(tmp_path / "study.zip", {"ct.dcm": _ct_bytes()})
    _patch_central(path, b"ct.dcm", offset=offset, fmt=fmt, value=value)
    one_line_exit_2(_info(path), "study.zip", needle)


def test_zip_member_with_bad_crc(tmp_path):
    path = _zip(tmp_path / "study.zip", {"ct.dcm": _ct_bytes()})
    raw = bytearray(path.read_bytes())
    raw[200] ^= 0xFF  # inside the compressed data of the only member
    path.write_bytes(bytes(raw))
    one_line_exit_2(_info(path), "study.zip")
