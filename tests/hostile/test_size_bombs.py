"""Issue #13, class 3 (images): small files that declare huge images. Declared sizes are checked against the
image budget (MEDVIT_MAX_IMAGE_BYTES, default 4 GiB) and the file's real size before anything is allocated:
one line, exit 2, under an address-space limit far below what the declaration would need."""

from __future__ import annotations

import gzip
import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hostile_checks import address_space_limit, one_line_exit_2

MEDVIT = str(Path(sys.executable).parent / "medvit")
BUDGET = 3 << 30  # address space of the whole `medvit info` process


def _info(path, env=None):
    return subprocess.run(
        [MEDVIT, "info", str(path)], capture_output=True, text=True, timeout=120,
        preexec_fn=address_space_limit(BUDGET),
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def _nifti_header_only(path: Path, shape, dtype=np.float32, payload: bytes = b"") -> Path:
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header.set_sform(np.eye(4), code=1)
    buf = io.BytesIO()
    header.write_to(buf)
    data = buf.getvalue().ljust(352, b"\0") + payload
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("name", "shape", "dtype", "needle"),
    [
        ("cube.nii", (30000, 30000, 30000), np.float32, "above the 4 GiB image budget"),
        ("cube.nii.gz", (30000, 30000, 30000), np.float32, "above the 4 GiB image budget"),
        ("tall.nii.gz", (3000, 3000, 300), np.int16, "above the 4 GiB image budget"),
        ("series.nii", (512, 512, 400, 30), np.int16, "above the 4 GiB image budget"),
        ("small_lie.nii", (512, 512, 300), np.int16, "truncated"),
    ],
)
def test_nifti_declaring_more_than_it_holds_or_than_the_budget(tmp_path, name, shape, dtype, needle):
    path = _nifti_header_only(tmp_path / name, shape, dtype, payload=b"\0" * 1024)
    assert path.stat().st_size < 10_000
    one_line_exit_2(_info(path), name, needle)


def test_gzip_bomb_within_a_plausible_header_is_refused_before_decompressing(tmp_path):
    """8 GiB of zeros compress to ~8 MB; the header says 8 GiB: refused by the declaration, not by reading."""
    path = tmp_path / "bomb.nii.gz"
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape((2048, 2048, 512))
    buf = io.BytesIO()
    header.write_to(buf)
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    chunk = b"\0" * (1 << 24)
    with open(path, "wb") as fh:
        fh.write(z.compress(buf.getvalue().ljust(352, b"\0")))
        for _ in range(64):  # 1 GiB of zeros: the test stays quick; the header claims 8 GiB
            fh.write(z.compress(chunk))
        fh.write(z.flush())
    one_line_exit_2(_info(path), "bomb.nii.gz", "image budget")


def _png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _bmp(width: int, height: int) -> bytes:
    pixels = b"\0" * 64
    header = struct.pack("<2sIHHI", b"BM", 54 + len(pixels), 0, 0, 54)
    dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return header + dib + pixels


@pytest.mark.parametrize(
    ("name", "content"),
    [("huge.png", _png(60000, 60000)), ("wide.png", _png(1_000_000, 2000)), ("huge.bmp", _bmp(60000, 60000))],
)
def test_2d_images_declaring_huge_sizes(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    one_line_exit_2(_info(path), name)


def test_the_budget_is_overridable_and_checked(tmp_path):
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((24, 24, 16), np.int16), np.eye(4)), path)
    assert _info(path).returncode == 0
    one_line_exit_2(_info(path, {"MEDVIT_MAX_IMAGE_BYTES": "1000"}), "image budget", "MEDVIT_MAX_IMAGE_BYTES")
    one_line_exit_2(_info(path, {"MEDVIT_MAX_IMAGE_BYTES": "lots"}), "MEDVIT_MAX_IMAGE_BYTES='lots'")


def test_zero_dimension_is_refused(tmp_path):
    path = _nifti_header_only(tmp_path / "flat.nii", (64, 64, 1), np.int16, payload=b"\0" * 8192)
    raw = bytearray(path.read_bytes())
    raw[44:46] = struct.pack("<h", 0)  # dim[3] = 0
    path.write_bytes(bytes(raw))
    one_line_exit_2(_info(path), "flat.nii")


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.backbone.options.embed_dim=32768", "model.backbone.options.depth=64"],
        ["model.backbone.options.embed_dim=96", "model.backbone.options.depth=1000000"],
        ["model.backbone.options.mlp_ratio=1e9"],
    ],
)
def test_a_pipeline_asking_for_a_giant_model_is_refused_before_allocating(tmp_path, overrides):
    out = subprocess.run(
        [MEDVIT, "run", "quickstart", *overrides, "--check"], cwd=tmp_path, capture_output=True, text=True,
        timeout=180, preexec_fn=address_space_limit(6 << 30),
        env={**os.environ, "MEDVIT_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    one_line_exit_2(out, "model budget", "MEDVIT_MAX_MODEL_BYTES")
    assert not (tmp_path / "runs").exists()


def test_a_package_asking_for_a_giant_model_is_refused(tmp_path):
    import yaml
    from packages import make_package

    package = make_package(tmp_path / "pkg", "seg3d")
    spec = yaml.safe_load((package / "medvit.yaml").read_text())
    spec["model"]["backbone"]["options"].update(embed_dim=32768, depth=64)
    (package / "medvit.yaml").write_text(yaml.safe_dump(spec))
    ct = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((24, 24, 16), np.int16), np.eye(4)), ct)
    out = subprocess.run(
        [MEDVIT, "predict", "-m", str(package), "-i", str(ct), "-o", str(tmp_path / "out")], capture_output=True,
        text=True, timeout=180, preexec_fn=address_space_limit(6 << 30),
    )  # fmt: skip
    one_line_exit_2(out, "model budget")
    assert not (tmp_path / "out").exists()


def test_the_largest_official_backbone_fits_the_default_model_budget():
    from medvit.backbones.registry import check_model_size, get_entry

    entry = get_entry("dinov3_vit7b16")
    check_model_size("dinov3_vit7b16", {**entry.dims, "img_size": tuple(entry.cfg.input_size[1:])})
