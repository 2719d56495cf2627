"""Hostile inputs, built on the fly, against the error contract of every command (issue #19, §3).

Each case builds its inputs in ``tmp_path`` (nothing is committed), runs the real console entry
point (``python -m cxrkit``) in a subprocess and checks the contract of DESIGN.md §3:

- the exit code is the expected one: 1 for bad input, 2 for a usage error (some cases accept
  either, or accept 0 when refusing is not the only safe answer);
- stderr is exactly one line, starts with ``cxrkit``, and is not a leak (:data:`LEAKS`): no
  traceback, no "run with -v for the traceback" (the CLI's catch-all for unexpected exceptions),
  no ``MemoryError`` or ITK allocation failure, no SimpleITK exception text;
- nothing is left in ``-o`` (no image, no hidden ``.NAME.XXXXXXXX`` temporary), nothing is written
  anywhere else under ``tmp_path`` (outside ``-o``), and no input is changed;
- no record on stdout.

Every subprocess runs under a 3 GiB address-space limit (``RLIMIT_AS``): a declared 60000² image or
a 1e-9 mm pixel must fail on a size check, never by trying to allocate gigabytes (which the limit
turns into a ``MemoryError`` or an ITK allocation failure that the contract rejects, see
:data:`LEAKS`). Tiny images keep the module fast; the cases run several at a time (see
:func:`outcomes`).
"""

from __future__ import annotations

import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MEMORY_LIMIT = 3 << 30  # bytes of address space per command; tiny inputs need well under 1 GiB
TIMEOUT_S = 180

BAD = (1,)  # bad input: runtime error
USAGE = (2,)  # usage error: a bad option value, found before any input is read
EITHER = (1, 2)  # a bad option whose check may need the input or the model
SAFE = (0, 1)  # refusing or sanitising are both fine; writing outside -o is not


# What a one-line error must not be: a crash, an allocation tried before a size check, or a
# library's message instead of one that says what is wrong with the input.
LEAKS = (
    ("Traceback", "traceback on stderr"),
    ("run with -v for the traceback", "an unexpected exception (the CLI's catch-all)"),
    ("MemoryError", "allocation before a size check"),
    ("Unable to allocate", "allocation before a size check"),
    ("Failed to allocate", "allocation before a size check"),
    ("ImportImageContainer", "allocation before a size check (ITK's image buffer)"),
    ("bad_alloc", "allocation before a size check"),
    ("Exception thrown in SimpleITK", "SimpleITK's exception text leaks"),
    (".cxx:", "a C++ source location leaks"),
    (".hxx:", "a C++ source location leaks"),
)


# --------------------------------------------------------------------------- running a command

def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def cxrkit(argv: list[str], *, cwd: Path, stdin: bytes | None = None,
           timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[bytes]:
    """``python -m cxrkit ARGV`` with the worktree's code, one OpenMP thread, a private TMPDIR
    under ``cwd`` (checked like any folder outside ``-o``), no GPU (CUDA reserves more address
    space than the limit) and the memory limit."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "OMP_WAIT_POLICY": "PASSIVE", "TMPDIR": str(cwd / "tmp"), "NO_COLOR": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    (cwd / "tmp").mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "cxrkit", *argv], cwd=cwd, env=env,
                          input=stdin if stdin is not None else b"", capture_output=True,
                          timeout=timeout, preexec_fn=_limit_memory)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (hidden ones too): relative path → (size, mtime_ns)."""
    found = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            st = p.lstat()
            found[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return found


def check_contract(result: subprocess.CompletedProcess[bytes], exits: tuple[int, ...],
                   before: dict[str, tuple[int, int]], root: Path, out: Path) -> None:
    """The error contract (module docstring); ``exits`` may include 0 for SAFE cases.

    Each failure message starts with a one-line summary (what ``pytest -rf`` shows)."""
    err = result.stderr.decode(errors="replace")
    first = " | ".join(ln.strip() for ln in err.splitlines() if ln.strip())[:240]
    shown = f" [exit {result.returncode}; stderr: {first}]"
    after = snapshot(root)
    changed = sorted(k for k in before if k in after and after[k] != before[k])
    gone = sorted(k for k in before if k not in after)
    new = sorted(k for k in after if k not in before)
    out_rel = out.relative_to(root) if out.is_relative_to(root) else None
    inside = [k for k in new if out_rel is not None and Path(k).is_relative_to(out_rel)]
    outside = [k for k in new if k not in inside]
    assert not outside, f"files written outside -o: {outside}" + shown
    assert not changed and not gone, f"inputs changed {changed} or removed {gone}" + shown
    for marker, what in LEAKS:
        assert marker not in err, what + shown
    assert result.returncode in exits, f"expected exit {'/'.join(map(str, exits))}" + shown
    if result.returncode == 0:
        hidden = [k for k in inside if Path(k).name.startswith(".")]
        assert not hidden, (f"hidden files in -o (a temporary left, or an output the next "
                            f"stage skips as one): {hidden}" + shown)
        return
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"stderr has {len(lines)} lines, not one" + shown
    assert lines[0].startswith("cxrkit"), "stderr does not name the command" + shown
    assert not inside, f"files left in -o: {inside}" + shown
    assert result.stdout == b"", f"a record for a failed item: {result.stdout[:200]!r}" + shown


# --------------------------------------------------------------------------- volumes

NIFTI_TYPES = {np.dtype(np.uint8): (2, 8), np.dtype(np.int16): (4, 16),
               np.dtype(np.float32): (16, 32), np.dtype(np.complex64): (32, 64),
               np.dtype(np.float64): (64, 64)}


def nifti_bytes(shape: tuple[int, ...], dtype: np.dtype, data: bytes,
                spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)) -> bytes:
    """A NIfTI-1 single file (header + data), written by hand so any header field can lie.

    ``shape`` is (x, y, z[, ...]) as in the header; ``data`` is what follows the header, whatever
    the header declares.
    """
    code, bitpix = NIFTI_TYPES[np.dtype(dtype)]
    hdr = bytearray(352)
    struct.pack_into("<i", hdr, 0, 348)
    struct.pack_into("<8h", hdr, 40, len(shape), *shape, *([1] * (7 - len(shape))))
    struct.pack_into("<hh", hdr, 70, code, bitpix)
    struct.pack_into("<8f", hdr, 76, 1.0, *spacing, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<f", hdr, 108, 352.0)  # vox_offset
    struct.pack_into("<ff", hdr, 112, 1.0, 0.0)  # scl_slope, scl_inter
    struct.pack_into("<B", hdr, 123, 2)  # xyzt_units: mm
    struct.pack_into("<hh", hdr, 252, 1, 0)  # qform_code 1 (identity rotation), sform_code 0
    hdr[344:348] = b"n+1\x00"
    return bytes(hdr) + data


def ct_array(n: int = 16) -> np.ndarray:
    """An ``(n, n, n)`` HU cube (z, y, x): a water cylinder with a bone rod in air."""
    z, y, x = np.mgrid[0:n, 0:n, 0:n].astype(np.float32) - (n - 1) / 2
    hu = np.full((n, n, n), -1000.0, dtype=np.float32)
    hu[y**2 + x**2 < (0.4 * n) ** 2] = 0.0
    hu[(y**2 + (x - 0.15 * n) ** 2 < 2) & (np.abs(z) < 0.4 * n)] = 1200.0
    return hu


def write_nifti(path: Path, hu: np.ndarray | None = None, *, dtype: type = np.float32,
                spacing: tuple[float, float, float] = (2.0, 2.0, 2.0),
                cut: int | None = None) -> Path:
    """``hu`` (z, y, x) as NIfTI (gzipped for ``.nii.gz``); ``cut`` keeps that many data bytes."""
    arr = ct_array() if hu is None else hu
    data = np.ascontiguousarray(arr.astype(dtype)).tobytes()
    raw = nifti_bytes(arr.shape[::-1], np.dtype(dtype), data[:cut] if cut is not None else data,
                      spacing)
    import gzip

    path.write_bytes(gzip.compress(raw, mtime=0) if path.name.endswith(".gz") else raw)
    return path


def write_mha(path: Path, arr: np.ndarray, *, spacing: tuple[float, ...],
              channels: int = 1) -> Path:
    """A MetaImage with a hand-written header; ``arr`` is (z, y, x[, c]) or (y, x[, c])."""
    dims = arr.shape[:-1] if channels > 1 else arr.shape
    header = (
        "ObjectType = Image\n"
        f"NDims = {len(dims)}\n"
        "BinaryData = True\nBinaryDataByteOrderMSB = False\nCompressedData = False\n"
        f"ElementSpacing = {' '.join(str(s) for s in spacing)}\n"
        f"DimSize = {' '.join(str(d) for d in dims[::-1])}\n"
        + (f"ElementNumberOfChannels = {channels}\n" if channels > 1 else "")
        + "ElementType = MET_FLOAT\nElementDataFile = LOCAL\n"
    )
    path.write_bytes(header.encode() + np.ascontiguousarray(arr, dtype="<f4").tobytes())
    return path


def gzip_bomb(path: Path) -> Path:
    """A .nii.gz whose header declares 30000³ uint8 (27 TB; NIfTI-1 sizes stop at 32767),
    followed by 8 MB of zeros that compress to a few kB."""
    head = nifti_bytes((30000, 30000, 30000), np.dtype(np.uint8), b"")
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip container
    body = comp.compress(head)
    for _ in range(8):
        body += comp.compress(bytes(1 << 20))
    path.write_bytes(body + comp.flush())
    return path


def gzip_bomb_16gib(path: Path) -> Path:
    """A .nii.gz declaring 2048³ int16 (16 GiB, a size a big machine would allocate) whose
    stream holds 64 MB of zeros (about 64 kB compressed)."""
    comp = zlib.compressobj(6, zlib.DEFLATED, 31)
    body = comp.compress(nifti_bytes((2048, 2048, 2048), np.dtype(np.int16), b""))
    for _ in range(64):
        body += comp.compress(bytes(1 << 20))
    path.write_bytes(body + comp.flush())
    return path


def mha_bomb(path: Path) -> Path:
    """A compressed MetaImage declaring 60000³ uint8 whose zlib stream holds 8 MB of zeros."""
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(bytes(1 << 20)) for _ in range(8)) + comp.flush()
    header = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
              "CompressedData = True\n"
              f"CompressedDataSize = {len(body)}\nElementSpacing = 1 1 1\n"
              "DimSize = 60000 60000 60000\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n")
    path.write_bytes(header.encode() + body)
    return path


def dicom_slice(path: Path, pixels: np.ndarray, z_mm: float, number: int, *, series: str,
                study: str, with_pixels: bool = True, j2k: bool = False) -> Path:
    """One CT slice (int16 stored, HU = stored - 1024) as a DICOM file."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.2")  # CT Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEG2000Lossless if j2k else ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality = "CT"
    ds.PatientID = "FUZZ"
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [-15.0, -15.0, z_mm]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [2.0, 2.0]
    ds.SliceThickness = 2.0
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    if with_pixels and j2k:
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(range(256)) * 4])
        ds["PixelData"].VR = "OB"
    elif with_pixels:
        ds.PixelData = (pixels + 1024).astype("<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def dicom_series(folder: Path, *, drop: int | None = None, duplicate: int | None = None,
                 no_pixels: int | None = None, j2k: bool = False) -> Path:
    """An 8-slice 16² CT series; one slice dropped, duplicated (same position, new UID) or
    without pixel data; or every slice JPEG 2000 with junk data."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    hu = ct_array()[4:12]
    series, study = generate_uid(), generate_uid()
    for k in range(len(hu)):
        if k == drop:
            continue
        kw = {"series": series, "study": study, "j2k": j2k, "with_pixels": k != no_pixels}
        dicom_slice(folder / f"{k:03d}.dcm", hu[k].astype(np.int16), 2.0 * k, k + 1, **kw)
        if k == duplicate:
            dicom_slice(folder / f"{k:03d}b.dcm", hu[k].astype(np.int16), 2.0 * k, 100, **kw)
    return folder


# Hostile CT inputs: name → maker(folder) → the input path (file or series folder).
VOLUMES: dict[str, Callable[[Path], Path]] = {
    "nan-voxels-nii": lambda d: write_nifti(d / "ct.nii", np.where(
        ct_array() > 500, np.nan, ct_array()).astype(np.float32)),
    "nan-voxels-nii-gz": lambda d: write_nifti(d / "ct.nii.gz", np.where(
        ct_array() > 500, np.nan, ct_array()).astype(np.float32)),
    "inf-voxels-nii": lambda d: write_nifti(d / "ct.nii", np.where(
        ct_array() > 500, np.inf, ct_array()).astype(np.float32)),
    "nan-voxels-float64": lambda d: write_nifti(d / "ct.nii", np.where(
        ct_array() > 500, np.nan, ct_array()), dtype=np.float64),
    "truncated-nii": lambda d: write_nifti(d / "ct.nii", cut=16 * 16 * 16 * 4 // 2),
    "header-only-nii": lambda d: write_nifti(d / "ct.nii", cut=0),
    "truncated-nii-gz": lambda d: _truncate(write_nifti(d / "ct.nii.gz"), 0.6),
    "zero-spacing-nii": lambda d: write_nifti(d / "ct.nii", spacing=(0.0, 0.0, 0.0)),
    "zero-z-spacing-nii": lambda d: write_nifti(d / "ct.nii", spacing=(2.0, 2.0, 0.0)),
    "nan-spacing-nii": lambda d: write_nifti(d / "ct.nii", spacing=(math.nan,) * 3),
    "inf-spacing-nii": lambda d: write_nifti(d / "ct.nii", spacing=(2.0, math.inf, 2.0)),
    "complex-voxels-nii": lambda d: write_nifti(d / "ct.nii", dtype=np.complex64),
    "negative-spacing-mha": lambda d: write_mha(d / "ct.mha", ct_array(), spacing=(-2, 2, 2)),
    "zero-spacing-mha": lambda d: write_mha(d / "ct.mha", ct_array(), spacing=(2, 0, 2)),
    "nan-voxels-mha": lambda d: write_mha(d / "ct.mha", np.where(
        ct_array() > 500, np.nan, ct_array()), spacing=(2, 2, 2)),
    "multi-component-mha": lambda d: write_mha(
        d / "ct.mha", np.repeat(ct_array()[..., None], 3, axis=-1), spacing=(2, 2, 2),
        channels=3),
    "gzip-bomb-nii-gz": lambda d: gzip_bomb(d / "ct.nii.gz"),
    "gzip-bomb-16gib-nii-gz": lambda d: gzip_bomb_16gib(d / "ct.nii.gz"),
    "zlib-bomb-mha": lambda d: mha_bomb(d / "ct.mha"),
    "dicom-missing-slice": lambda d: dicom_series(d / "series", drop=4),
    "dicom-duplicate-slice": lambda d: dicom_series(d / "series", duplicate=3),
    "dicom-pixelless-slice": lambda d: dicom_series(d / "series", no_pixels=5),
    "dicom-jpeg2000-junk": lambda d: dicom_series(d / "series", j2k=True),
    "garbage-nii": lambda d: _garbage(d / "ct.nii"),
    "garbage-nii-gz": lambda d: _garbage(d / "ct.nii.gz"),
    "garbage-mha": lambda d: _garbage(d / "ct.mha"),
    "garbage-nrrd": lambda d: _garbage(d / "ct.nrrd"),
    "empty-nii-gz": lambda d: _empty(d / "ct.nii.gz"),
    "empty-nii": lambda d: _empty(d / "ct.nii"),
    "empty-mha": lambda d: _empty(d / "ct.mha"),
    "2d-image-as-ct": lambda d: write_nifti(d / "ct.nii", ct_array()[:1]),
}

GOOD_VOLUMES: dict[str, Callable[[Path], Path]] = {
    "nii": lambda d: write_nifti(d / "ct.nii"),
    "nii-gz": lambda d: write_nifti(d / "ct.nii.gz"),
    "mha": lambda d: write_mha(d / "ct.mha", ct_array(), spacing=(2, 2, 2)),
    "dicom-series": lambda d: dicom_series(d / "series"),
}


def _truncate(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _garbage(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


# --------------------------------------------------------------------------- radiographs

def cxr_pixels(n: int = 32) -> np.ndarray:
    """An ``n``² display radiograph: two dark lung fields in a brighter body, in [0, 1]."""
    yy, xx = np.mgrid[0:n, 0:n] / n
    lungs = (((xx - 0.3) / 0.16) ** 2 + ((yy - 0.47) / 0.3) ** 2 <= 1) | (
        ((xx - 0.7) / 0.15) ** 2 + ((yy - 0.48) / 0.29) ** 2 <= 1)
    return np.where(lungs, 0.25, 0.7).astype(np.float32) + 0.05 * np.sin(9 * xx).astype(
        np.float32)


def write_png(path: Path, pixels: np.ndarray | None = None, *,
              text: dict[str, str] | None = None) -> Path:
    from PIL import Image, PngImagePlugin

    px = cxr_pixels() if pixels is None else pixels
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    Image.fromarray(np.round(np.clip(px, 0, 1) * 65535).astype(np.uint16)).save(
        path, format="PNG", pnginfo=info)
    return path


def write_tiff(path: Path, data: np.ndarray | None = None, **kwargs: object) -> Path:
    import tifffile

    tifffile.imwrite(path, cxr_pixels() if data is None else data, metadata=None, **kwargs)
    return path


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR declares ``width`` x ``height`` (8-bit gray) with a few rows of data:
    the size is in the header only, nothing that big is allocated here."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))

    rows = zlib.compress(bytes(4 * (width + 1)))
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    return path


def tiff_declaring(path: Path, width: int, height: int) -> Path:
    """A little-endian float32 TIFF whose one strip declares ``width`` x ``height`` but holds
    64 kB of deflated zeros (a decompression bomb)."""
    data = zlib.compress(bytes(1 << 16))
    entries = [(256, 4, width), (257, 4, height), (258, 3, 32), (259, 3, 8), (262, 3, 1),
               (273, 4, 0), (277, 3, 1), (278, 4, height), (279, 4, len(data)), (339, 3, 3)]
    ifd_size = 2 + 12 * len(entries) + 4
    data_offset = 8 + ifd_size
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = data_offset if tag == 273 else value
        packed = struct.pack("<HI", value, 0)[:4] if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    ifd += struct.pack("<I", 0)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + data)
    return path


def dicom_cr(path: Path, *, j2k: bool = False, with_pixels: bool = True) -> Path:
    """A 32² 16-bit CR radiograph (DICOM), or one with a JPEG 2000 transfer syntax and junk
    pixel data, or one without pixel data."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1")  # CR Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEG2000Lossless if j2k else ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows = ds.Columns = 32
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.ImagerPixelSpacing = [1.0, 1.0]
    if with_pixels and j2k:
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(range(256)) * 4])
        ds["PixelData"].VR = "OB"
    elif with_pixels:
        ds.PixelData = np.round(cxr_pixels() * 4095).astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _nan_tiff(d: Path, value: float) -> Path:
    px = cxr_pixels()
    px[10:14, 10:14] = value
    return write_tiff(d / "cxr.tiff", px)


def _cxr_meta(spacing: list[float]) -> str:
    return json.dumps({"cxrkit": {"kind": "display", "spacing_mm": spacing}})


# Hostile radiographs: name → maker(folder) → the input file.
RADIOGRAPHS: dict[str, Callable[[Path], Path]] = {
    "nan-pixels-tiff": lambda d: _nan_tiff(d, math.nan),
    "inf-pixels-tiff": lambda d: _nan_tiff(d, math.inf),
    "3-page-tiff": lambda d: write_tiff(d / "cxr.tiff", np.stack([cxr_pixels()] * 3),
                                        photometric="minisblack"),
    "complex-tiff": lambda d: write_tiff(d / "cxr.tiff", cxr_pixels().astype(np.complex64)),
    "png-declaring-60000x60000": lambda d: png_declaring(d / "cxr.png", 60000, 60000),
    "png-declaring-20000x20000": lambda d: png_declaring(d / "cxr.png", 20000, 20000),
    "tiff-declaring-60000x60000": lambda d: tiff_declaring(d / "cxr.tiff", 60000, 60000),
    "one-row-png": lambda d: write_png(d / "cxr.png", cxr_pixels()[:1]),
    "garbage-png": lambda d: _garbage(d / "cxr.png"),
    "garbage-tiff": lambda d: _garbage(d / "cxr.tiff"),
    "garbage-dcm": lambda d: _garbage(d / "cxr.dcm"),
    "garbage-mha": lambda d: _garbage(d / "cxr.mha"),
    "png-magic-then-garbage": lambda d: _magic_garbage(d / "cxr.png", b"\x89PNG\r\n\x1a\n"),
    "tiff-magic-then-garbage": lambda d: _magic_garbage(d / "cxr.tiff", b"II*\x00"),
    "empty-png": lambda d: _empty(d / "cxr.png"),
    "empty-tiff": lambda d: _empty(d / "cxr.tiff"),
    "empty-dcm": lambda d: _empty(d / "cxr.dcm"),
    "truncated-png": lambda d: _truncate(write_png(d / "cxr.png"), 0.5),
    "truncated-tiff": lambda d: _truncate(write_tiff(d / "cxr.tiff"), 0.5),
    "dicom-jpeg2000-junk": lambda d: dicom_cr(d / "cxr.dcm", j2k=True),
    "dicom-without-pixels": lambda d: dicom_cr(d / "cxr.dcm", with_pixels=False),
    "negative-spacing-mha": lambda d: write_mha(d / "cxr.mha", cxr_pixels(), spacing=(-1, 1)),
    "unknown-suffix-text": lambda d: _text(d / "cxr.txt"),
}

# Pixel sizes that make the physics allocate per pixel: only commands that use the pixel size.
TINY_SPACING: dict[str, Callable[[Path], Path]] = {
    "png-1e-9-mm-pixels": lambda d: write_png(d / "cxr.png", text={
        "cxrkit": _cxr_meta([1e-9, 1e-9])}),
    "tiff-1e-9-mm-pixels-in-resolution-tags": lambda d: write_tiff(
        d / "cxr.tiff", resolution=(4_000_000_000, 4_000_000_000), resolutionunit="CENTIMETER"),
    "tiff-1e-9-mm-pixels-in-description": lambda d: write_tiff(
        d / "cxr.tiff", description=_cxr_meta([1e-9, 1e-9])),
}

GOOD_RADIOGRAPHS: dict[str, Callable[[Path], Path]] = {
    "png": lambda d: write_png(d / "cxr.png"),
    "tiff": lambda d: write_tiff(d / "cxr.tiff"),
    "dicom": lambda d: dicom_cr(d / "cxr.dcm"),
    "mha": lambda d: write_mha(d / "cxr.mha", cxr_pixels(), spacing=(1, 1)),
}


def _magic_garbage(path: Path, magic: bytes) -> Path:
    path.write_bytes(magic + _garbage(path).read_bytes())
    return path


def _text(path: Path) -> Path:
    path.write_text("not an image\n")
    return path


# --------------------------------------------------------------------------- cases

@dataclass
class Env:
    """Where a case builds and runs: inputs in ``inp``, outputs to ``out`` (three levels down,
    so that ``../../x`` still lands inside ``root`` where the check sees it), cwd ``root``."""

    root: Path

    @property
    def inp(self) -> Path:
        return self.root / "in"

    @property
    def out(self) -> Path:
        return self.root / "a" / "b" / "out"


Build = Callable[[Env], "tuple[list[str], bytes | None]"]


@dataclass(frozen=True)
class Case:
    """How to build the inputs (in an :class:`Env`) and the command line, and the exit codes
    that keep the contract."""

    build: Build
    exits: tuple[int, ...]


@dataclass
class Outcome:
    env: Env
    before: dict[str, tuple[int, int]] | None = None
    result: subprocess.CompletedProcess[bytes] | None = None
    error: BaseException | None = None


def execute(case: Case, root: Path) -> Outcome:
    """Build the case's inputs under ``root``, snapshot, run the command."""
    outcome = Outcome(Env(root))
    try:
        outcome.env.inp.mkdir(parents=True)
        (root / "tmp").mkdir()
        argv, stdin = case.build(outcome.env)
        outcome.before = snapshot(root)
        outcome.result = cxrkit(argv, cwd=root, stdin=stdin)
    except BaseException as exc:  # re-raised by the test that owns the case
        outcome.error = exc
    return outcome


@pytest.fixture(scope="session")
def outcomes(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Every selected case of this module, run once, several at a time (one process per CPU,
    at most 8): the cases are independent subprocesses, mostly waiting on imports."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return {}  # each xdist worker runs its own cases inline
    from concurrent.futures import ThreadPoolExecutor

    selected = {item.nodeid: item.callspec.params["case"]  # type: ignore[attr-defined]
                for item in request.session.items
                if item.module is sys.modules[__name__] and hasattr(item, "callspec")
                and isinstance(item.callspec.params.get("case"), Case)}
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        futures = {nodeid: pool.submit(execute, case, tmp_path_factory.mktemp("case"))
                   for nodeid, case in selected.items()}
        return {nodeid: future.result() for nodeid, future in futures.items()}


def run_case(case: Case, request: pytest.FixtureRequest, outcomes: dict[str, Outcome],
             tmp_path: Path) -> Outcome:
    """The case's outcome (run ahead by :func:`outcomes`, else now), checked against the
    contract."""
    outcome = outcomes.get(request.node.nodeid) or execute(case, tmp_path)
    if outcome.error is not None:
        raise outcome.error
    assert outcome.result is not None and outcome.before is not None
    check_contract(outcome.result, case.exits, outcome.before, outcome.env.root, outcome.env.out)
    return outcome


def params(cases: dict[str, Case], slow: Callable[[str], bool] = lambda name: False
           ) -> list[object]:
    return [pytest.param(case, id=name, marks=[pytest.mark.slow] if slow(name) else [])
            for name, case in cases.items()]


def _record(**fields: object) -> bytes:
    return (json.dumps(fields) + "\n").encode()


# How each radiograph command is given one input file: argv (and stdin) for it.
RG_COMMANDS: dict[str, Callable[[Env, Path], tuple[list[str], bytes | None]]] = {
    "degrade": lambda e, f: (["degrade", str(f), "-o", str(e.out)], None),
    "enhance": lambda e, f: (["enhance", "--method", "bicubic", str(f), "-o", str(e.out)], None),
    "eval": lambda e, f: (["eval", "--json", "--bootstrap", "0"],
                          _record(id="x", path=str(f),
                                  reference=str(write_png(e.inp / "ref.png")))),
    "synth-blend": lambda e, f: (["synth", "-e", "blend", str(f), "-o", str(e.out)], None),
}
# Commands whose physics uses the pixel size of a radiograph.
SPACING_COMMANDS = ("degrade", "synth-blend")
# Commands that read CTs.
VOL_COMMANDS: dict[str, Callable[[Env, Path], tuple[list[str], bytes | None]]] = {
    "project": lambda e, f: (["project", str(f), "--size", "32", "-o", str(e.out)], None),
    "synth-ct": lambda e, f: (["synth", "-e", "ct", str(f), "--size", "32", "--diameter-mm", "6",
                               "-o", str(e.out)], None),
}


def _file_case(commands: dict[str, Callable[[Env, Path], tuple[list[str], bytes | None]]],
               command: str, maker: Callable[[Path], Path], exits: tuple[int, ...]) -> Case:
    return Case(lambda e: commands[command](e, maker(e.inp)), exits)


# Every hostile radiograph runs against degrade by default, and these against every command;
# the rest of the product is marked slow.
REPRESENTATIVE = {"nan-pixels-tiff", "3-page-tiff", "complex-tiff", "png-declaring-60000x60000",
                  "tiff-declaring-60000x60000", "garbage-png", "empty-tiff",
                  "dicom-jpeg2000-junk", "dicom-without-pixels"}
HOSTILE_RADIOGRAPHS = {
    f"{command}-{name}": _file_case(RG_COMMANDS, command, maker, BAD)
    for command in RG_COMMANDS for name, maker in RADIOGRAPHS.items()}
HOSTILE_RADIOGRAPHS.update({
    f"{command}-{name}": _file_case(RG_COMMANDS, command, maker, BAD)
    for command in SPACING_COMMANDS for name, maker in TINY_SPACING.items()})


@pytest.mark.parametrize("case", params(HOSTILE_RADIOGRAPHS, lambda name: not (
    name.startswith("degrade-") or name.split("-", 1)[1].removeprefix("blend-") in REPRESENTATIVE
    or any(s in name for s in TINY_SPACING))))
def test_hostile_radiograph(case: Case, request: pytest.FixtureRequest,
                            outcomes: dict[str, Outcome], tmp_path: Path) -> None:
    run_case(case, request, outcomes, tmp_path)


HOSTILE_VOLUMES = {f"{command}-{name}": _file_case(VOL_COMMANDS, command, maker, BAD)
                   for command in VOL_COMMANDS for name, maker in VOLUMES.items()}


@pytest.mark.parametrize("case", params(HOSTILE_VOLUMES, lambda name: name.startswith("synth")))
def test_hostile_volume(case: Case, request: pytest.FixtureRequest,
                        outcomes: dict[str, Outcome], tmp_path: Path) -> None:
    run_case(case, request, outcomes, tmp_path)


# The builders make valid inputs, so each hostile case fails for its one defect.
GOOD = {f"project-{name}": _file_case(VOL_COMMANDS, "project", maker, (0,))
        for name, maker in GOOD_VOLUMES.items()}
GOOD.update({f"degrade-{name}": _file_case(RG_COMMANDS, "degrade", maker, (0,))
             for name, maker in GOOD_RADIOGRAPHS.items()})
GOOD.update({f"{command}-png": _file_case(RG_COMMANDS, command, GOOD_RADIOGRAPHS["png"], (0,))
             for command in RG_COMMANDS if command != "degrade"})


@pytest.mark.parametrize("case", params(GOOD))
def test_good_input_is_accepted(case: Case, request: pytest.FixtureRequest,
                                outcomes: dict[str, Outcome], tmp_path: Path) -> None:
    outcome = run_case(case, request, outcomes, tmp_path)
    assert outcome.result is not None and outcome.result.stdout.strip()


# --------------------------------------------------------------------------- records on stdin

STDIN_BASE = {"degrade": ["degrade"], "enhance": ["enhance", "--method", "bicubic"],
              "synth-blend": ["synth", "-e", "blend"], "project": ["project", "--size", "32"],
              "eval": ["eval", "--json", "--bootstrap", "0"]}


def _stdin_case(command: str, lines: Callable[[Env, str], bytes], exits: tuple[int, ...]
                ) -> Case:
    def build(e: Env) -> tuple[list[str], bytes | None]:
        out = [] if command == "eval" else ["-o", str(e.out)]
        return [*STDIN_BASE[command], *out], lines(e, command)

    return Case(build, exits)


def _good(e: Env, command: str) -> str:
    return str(write_nifti(e.inp / "ct.nii.gz") if command == "project"
               else write_png(e.inp / "cxr.png"))


def _with_ref(e: Env, command: str, **fields: object) -> bytes:
    extra: dict[str, object] = {"reference": _good(e, command)} if command == "eval" else {}
    return _record(**{**fields, **extra})


RECORDS: dict[str, tuple[Callable[[Env, str], bytes], tuple[int, ...]]] = {
    "json-array-line": (lambda e, c: b"[1, 2, 3]\n", BAD),
    "json-string-line": (lambda e, c: b'"cxr.png"\n', BAD),
    "json-number-line": (lambda e, c: b"42\n", BAD),
    "json-null-line": (lambda e, c: b"null\n", BAD),
    "truncated-json": (lambda e, c: b'{"id": "x", "path": \n', BAD),
    "record-without-path": (lambda e, c: _record(id="x"), BAD),
    "path-is-a-number": (lambda e, c: _record(id="x", path=5), BAD),
    "path-is-null": (lambda e, c: _record(id="x", path=None), BAD),
    "path-is-a-list": (lambda e, c: _record(id="x", path=[_good(e, c)]), BAD),
    "path-does-not-exist": (lambda e, c: _with_ref(e, c, id="x", path=str(e.inp / "no.png")),
                            BAD),
    "path-is-a-folder-of-nothing": (lambda e, c: _with_ref(e, c, id="x", path=str(e.root / "a")),
                                    BAD),
    "invalid-utf8": (lambda e, c: b"\xff\xfe\xfa not text\n", BAD),
    "id-dot-dot": (lambda e, c: _with_ref(e, c, id="../../x", path=_good(e, c)), SAFE),
    "id-absolute": (lambda e, c: _with_ref(e, c, id=str(e.root / "abs" / "x"),
                                           path=_good(e, c)), SAFE),
    "id-dot-dot-deep": (lambda e, c: _with_ref(e, c, id="sub/../../../x", path=_good(e, c)),
                        SAFE),
    "id-is-a-list": (lambda e, c: _with_ref(e, c, id=["..", "..", "x"], path=_good(e, c)), SAFE),
    "id-empty": (lambda e, c: _with_ref(e, c, id="", path=_good(e, c)), SAFE),
    "id-dot": (lambda e, c: _with_ref(e, c, id=".", path=_good(e, c)), SAFE),
}
# Spacing in a record: only where the command uses the pixel size.
SPACING_RECORDS: dict[str, tuple[Callable[[Env, str], bytes], tuple[int, ...]]] = {
    "record-spacing-1e-9-mm": (lambda e, c: _record(id="x", path=_good(e, c),
                                                    spacing_mm=[1e-9, 1e-9]), BAD),
    "record-spacing-a-string": (lambda e, c: _record(id="x", path=_good(e, c),
                                                     spacing_mm="abc"), BAD),
    "record-spacing-one-value": (lambda e, c: _record(id="x", path=_good(e, c),
                                                      spacing_mm=[0.5]), BAD),
}
HOSTILE_RECORDS = {f"{command}-{name}": _stdin_case(command, lines, exits)
                   for command in STDIN_BASE for name, (lines, exits) in RECORDS.items()
                   if not (command == "eval" and name.startswith("id-"))}  # eval names no file
HOSTILE_RECORDS.update({f"{command}-{name}": _stdin_case(command, lines, exits)
                        for command in SPACING_COMMANDS
                        for name, (lines, exits) in SPACING_RECORDS.items()})


@pytest.mark.parametrize("case", params(HOSTILE_RECORDS, lambda name: not (
    name.startswith(("degrade-", "project-")) or "spacing" in name)))
def test_hostile_record(case: Case, request: pytest.FixtureRequest,
                        outcomes: dict[str, Outcome], tmp_path: Path) -> None:
    run_case(case, request, outcomes, tmp_path)


def _ids_differing_by_dot_dot(e: Env) -> tuple[list[str], bytes | None]:
    png = str(write_png(e.inp / "cxr.png"))
    return ["degrade", "-o", str(e.out)], (_record(id="x", path=png)
                                          + _record(id="../../x", path=png))


def test_escaping_ids_stay_inside_out_and_apart(request: pytest.FixtureRequest,
                                                tmp_path: Path) -> None:
    """Two records whose ids differ only by ``../``: both inside -o, as two files (or refused)."""
    outcome = run_case(Case(_ids_differing_by_dot_dot, SAFE), request, {}, tmp_path)
    assert outcome.result is not None
    if outcome.result.returncode == 0:
        paths = [json.loads(line)["path"] for line in outcome.result.stdout.decode().splitlines()]
        assert len(set(paths)) == 2, paths
        assert all(Path(p).resolve().is_relative_to(outcome.env.out.resolve()) for p in paths)


# --------------------------------------------------------------------------- raw image on stdin

def _raw(command: str, maker: Callable[[Path], Path]) -> Case:
    def build(e: Env) -> tuple[list[str], bytes | None]:
        made = maker(e.root / "made")
        data = made.read_bytes()
        made.unlink()
        extra = ["--size", "32"] if command == "project" else []
        return [command, *extra, "-o", str(e.out)], data

    return Case(build, BAD)


def _mkdir_then(maker: Callable[[Path], Path]) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        folder.mkdir(exist_ok=True)
        return maker(folder)
    return make


RAW_STDIN = {
    "degrade-png-magic-then-garbage": _raw("degrade", _mkdir_then(
        RADIOGRAPHS["png-magic-then-garbage"])),
    "degrade-3-page-tiff": _raw("degrade", _mkdir_then(RADIOGRAPHS["3-page-tiff"])),
    "degrade-png-declaring-60000x60000": _raw("degrade", _mkdir_then(
        RADIOGRAPHS["png-declaring-60000x60000"])),
    "degrade-tiff-declaring-60000x60000": _raw("degrade", _mkdir_then(
        RADIOGRAPHS["tiff-declaring-60000x60000"])),
    "degrade-dicom-jpeg2000-junk": _raw("degrade", _mkdir_then(
        RADIOGRAPHS["dicom-jpeg2000-junk"])),
    "project-nan-voxels-nii-gz": _raw("project", _mkdir_then(VOLUMES["nan-voxels-nii-gz"])),
    "project-header-only-nii": _raw("project", _mkdir_then(VOLUMES["header-only-nii"])),
    "project-gzip-bomb": _raw("project", _mkdir_then(VOLUMES["gzip-bomb-nii-gz"])),
}


@pytest.mark.parametrize("case", params(RAW_STDIN))
def test_hostile_raw_image_on_stdin(case: Case, request: pytest.FixtureRequest,
                                    outcomes: dict[str, Outcome], tmp_path: Path) -> None:
    run_case(case, request, outcomes, tmp_path)


# --------------------------------------------------------------------------- options

def _labels(e: Env, *, csv: bool = False) -> Path:
    path = write_nifti(e.inp / "labels.nii.gz", (ct_array() > 500).astype(np.float32) * 3)
    if csv:
        (e.inp / "labels.csv").write_text("id,structure\n3,rib_left_1\n")
    return path


def _luna(e: Env) -> Path:
    from tests.test_nodules import make_luna_dir

    return make_luna_dir(e.inp / "luna16")


def _tiny_images(e: Env, count: int = 4, n: int = 32) -> Path:
    folder = e.inp / "images"
    folder.mkdir()
    for k in range(count):
        write_png(folder / f"p{k}_000.png", np.roll(cxr_pixels(n), k, axis=1))
    return folder


MISSING_CT = "missing/ct.nii.gz"
MISSING_PNG = "missing/cxr.png"


def _u(command: list[str], *options: str, missing: str = MISSING_PNG, out: bool = True) -> Case:
    """A usage error: ``command MISSING options -o OUT`` where MISSING does not exist."""
    def build(e: Env) -> tuple[list[str], bytes | None]:
        opts = [o.format(out=e.out) for o in options]
        return [*command, str(e.root / missing), *opts, *(["-o", str(e.out)] if out else [])], None

    return Case(build, USAGE)


def _u_labels(*options: str, csv: bool = False) -> Case:
    def build(e: Env) -> tuple[list[str], bytes | None]:
        return (["project", str(e.root / MISSING_CT), "--labels", str(_labels(e, csv=csv)),
                 *options, "-o", str(e.out)], None)

    return Case(build, USAGE)


def _u_where(where: str) -> Case:
    def build(e: Env) -> tuple[list[str], bytes | None]:
        return (["synth", "-e", "blend", str(e.root / MISSING_PNG), "--source", "luna16",
                 "--luna16-dir", str(_luna(e)), "--where", where, "-o", str(e.out)], None)

    return Case(build, USAGE)


PRJ = ["project"]
SYN = ["synth"]
BLEND = ["synth", "-e", "blend"]
DIFF = ["synth", "-e", "diffusion", "--model", "missing/model"]
DEG = ["degrade"]
ENH = ["enhance"]
EVAL = ["eval", "--json"]
MISSING_JSONL = "missing/r.jsonl"
# A bad option value with an input that does not exist: exit 2, one line, before any input is read.
USAGE_CASES: dict[str, Case] = {
    "project-view-bad": _u(PRJ, "--view", "bad", missing=MISSING_CT),
    "project-size-0": _u(PRJ, "--size", "0", missing=MISSING_CT),
    "project-size-negative": _u(PRJ, "--size", "-8", missing=MISSING_CT),
    "project-size-100000": _u(PRJ, "--size", "100000", missing=MISSING_CT),
    "project-size-100000,1": _u(PRJ, "--size", "100000,1", missing=MISSING_CT),
    "project-size-not-a-number": _u(PRJ, "--size", "big", missing=MISSING_CT),
    "project-kev-5": _u(PRJ, "--kev", "5", missing=MISSING_CT),
    "project-kev-nan": _u(PRJ, "--kev", "nan", missing=MISSING_CT),
    "project-sid-mm-nan": _u(PRJ, "--sid-mm", "nan", missing=MISSING_CT),
    "project-sid-mm-0": _u(PRJ, "--sid-mm", "0", missing=MISSING_CT),
    "project-pixel-mm-nan": _u(PRJ, "--pixel-mm", "nan", missing=MISSING_CT),
    "project-pixel-mm-0": _u(PRJ, "--pixel-mm", "0", missing=MISSING_CT),
    "project-rotation-nan": _u(PRJ, "--rotation-deg", "nan,0,0", missing=MISSING_CT),
    "project-kind-bad": _u(PRJ, "--kind", "bad", missing=MISSING_CT),
    "project-quality-bad": _u(PRJ, "--quality", "bad", missing=MISSING_CT),
    "project-format-bad": _u(PRJ, "--format", "jpeg", missing=MISSING_CT),
    "project-out-unknown-suffix": _u(PRJ, "-o", "{out}/x.xyz", missing=MISSING_CT, out=False),
    "project-label-ids-unknown-number": _u_labels("--label-ids", "99"),
    "project-label-ids-unknown-name": _u_labels("--label-ids", "lung_nowhere", csv=True),
    "project-label-ids-name-without-names": _u_labels("--label-ids", "abc"),
    "synth-view-bad": _u(SYN, "--view", "bad", missing=MISSING_CT),
    "synth-size-0": _u(SYN, "--size", "0", missing=MISSING_CT),
    "synth-size-100000": _u(SYN, "--size", "100000", missing=MISSING_CT),
    "synth-size-100000,1": _u(SYN, "--size", "100000,1", missing=MISSING_CT),
    "synth-kev-5": _u(SYN, "--kev", "5", missing=MISSING_CT),
    "synth-density-hu-nan": _u(SYN, "--density-hu", "nan", missing=MISSING_CT),
    "synth-diameter-mm-nan": _u(SYN, "--diameter-mm", "nan", missing=MISSING_CT),
    "synth-out-unknown-suffix": _u(SYN, "-o", "{out}/x.xyz", missing=MISSING_CT, out=False),
    "synth-blend-density-hu-nan": _u(BLEND, "--density-hu", "nan"),
    "synth-blend-pixel-mm-nan": _u(BLEND, "--pixel-mm", "nan"),
    "synth-blend-nodule-mask": _u(BLEND, "--nodule-mask", "{out}/m.png"),
    "synth-diffusion-nodule-mask-missing": _u(DIFF, "--nodule-mask", "{out}/none.png"),
    "synth-diffusion-nodule-mask-empty-name": _u(DIFF, "--nodule-mask", " "),
    "synth-diffusion-nodule-mask-and-center": _u(DIFF, "--nodule-mask", "{out}/{{id}}.png",
                                                 "--center-px", "3,3"),
    "synth-blend-empty-where": _u_where(""),
    "synth-blend-blank-where": _u_where("   "),
    "degrade-pixel-mm-nan": _u(DEG, "--pixel-mm", "nan"),
    "degrade-preset-bad": _u(DEG, "--preset", "bad"),
    "degrade-set-unknown-operator": _u(DEG, "--set", "nope.x=1"),
    "degrade-out-unknown-suffix": _u(DEG, "-o", "{out}/x.xyz", out=False),
    "enhance-tile-8-overlap-0": _u(ENH, "--tile", "8", "--overlap", "0"),
    "enhance-overlap-negative": _u(ENH, "--overlap", "-4"),
    "enhance-tile-negative": _u(ENH, "--tile", "-64"),
    "enhance-overlap-not-below-tile": _u(ENH, "--tile", "64", "--overlap", "64"),
    "enhance-sampler-bad": _u(ENH, "--sampler", "bad"),
    "enhance-method-bad": _u(ENH, "--method", "bad"),
    "enhance-out-unknown-suffix": _u(ENH, "-o", "{out}/x.xyz", out=False),
    "eval-mask-threshold-nan": _u(EVAL, "--mask-threshold", "nan", missing=MISSING_JSONL,
                                  out=False),
    "eval-fail-under-not-a-number": _u(EVAL, "--fail-under", "psnr=abc", missing=MISSING_JSONL,
                                       out=False),
    "train-enhance-channels-0,0": _u(["train-enhance"], "--channels", "0,0"),
    "train-enhance-channels-empty": _u(["train-enhance"], "--channels", ""),
    "train-enhance-crop-100000": _u(["train-enhance"], "--crop", "100000"),
    "train-enhance-crop-0": _u(["train-enhance"], "--crop", "0"),
    "train-enhance-lr-nan": _u(["train-enhance"], "--lr", "nan"),
    "train-ddpm-lq-max-timestep-0": _u(["train-ddpm-lq", "--lq"], "--max-timestep", "0"),
    "train-ddpm-lq-channels-0,0": _u(["train-ddpm-lq", "--lq"], "--channels", "0,0"),
}


@pytest.mark.parametrize("case", params(USAGE_CASES))
def test_usage_error_wins_over_missing_input(case: Case, request: pytest.FixtureRequest,
                                             outcomes: dict[str, Outcome],
                                             tmp_path: Path) -> None:
    """A bad option value is one line, exit 2, and found before any input is read: the input
    given does not exist, so reading it first would give exit 1 and 'no such file'."""
    run_case(case, request, outcomes, tmp_path)


def _o(command: list[str], *options: str, input_: str = "cxr",
       exits: tuple[int, ...] = EITHER) -> Case:
    """A bad option with a real input (PNG radiograph, NIfTI CT or a folder of PNGs)."""
    def build(e: Env) -> tuple[list[str], bytes | None]:
        inp = {"cxr": lambda: write_png(e.inp / "cxr.png"),
               "ct": lambda: write_nifti(e.inp / "ct.nii.gz"),
               "images": lambda: _tiny_images(e)}[input_]()
        return [*command, str(inp), *options, "-o", str(e.out)], None

    return Case(build, exits)


def _ddpm(*options: str, exits: tuple[int, ...] = EITHER) -> Case:
    def build(e: Env) -> tuple[list[str], bytes | None]:
        return (["train-ddpm-lq", "--lq", str(_tiny_images(e)), "--image-size", "32",
                 "--crop", "16", "--channels", "8,16", "--steps", "1", "--batch-size", "2",
                 "--validate-every", "0", *options, "-o", str(e.out)], None)

    return Case(build, exits)


# Bounds the work a training command does if it accepts the bad option.
TRAIN_SMALL = ("--steps", "1", "--batch-size", "2", "--channels", "8,16", "--val-count", "1",
               "--validate-every", "1", "--checkpoint-every", "1")
# Bad options with real inputs: the contract holds wherever the check happens (USAGE where the
# option is wrong whatever the input; EITHER where the limit may depend on the input or model).
OPTION_CASES: dict[str, Case] = {
    "project-size-100000": _o(PRJ, "--size", "100000", input_="ct", exits=USAGE),
    "project-size-100000,1": _o(PRJ, "--size", "100000,1", input_="ct", exits=USAGE),
    "project-size-0": _o(PRJ, "--size", "0", input_="ct", exits=USAGE),
    "project-pixel-mm-1e-9": _o(PRJ, "--size", "32", "--pixel-mm", "1e-9", input_="ct"),
    "degrade-slice-blur-1e9-mm": _o(DEG, "--preset", "custom", "--set",
                                    "slice-blur.slice_mm=1e9"),
    "degrade-slice-blur-nan": _o(DEG, "--preset", "custom", "--set", "slice-blur.slice_mm=NaN"),
    "degrade-scatter-sigma-1e9-mm": _o(DEG, "--preset", "custom", "--set",
                                       "scatter.sigma_mm=1e9"),
    "degrade-resize-size-100000": _o(DEG, "--preset", "custom", "--set", "resize.size=100000"),
    "synth-blend-pixel-mm-1e-9": _o(BLEND, "--pixel-mm", "1e-9"),
    "synth-blend-diameter-1e9": _o(BLEND, "--diameter-mm", "1e9"),
    "enhance-steps-100000": _o(ENH, "--steps", "100000"),
    "enhance-tile-8-overlap-0": _o(ENH, "--tile", "8", "--overlap", "0"),
    "train-enhance-crop-100000": _o(["train-enhance"], "--crop", "100000", *TRAIN_SMALL,
                                    input_="images"),
    "train-enhance-channels-0,0": _o(["train-enhance"], *TRAIN_SMALL, "--channels", "0,0",
                                     input_="images", exits=USAGE),
    "train-ddpm-lq-max-timestep-0": _ddpm("--max-timestep", "0", exits=USAGE),
    "train-ddpm-lq-max-timestep-100000": _ddpm("--max-timestep", "100000"),
}


@pytest.mark.parametrize("case", params(OPTION_CASES))
def test_bad_option_with_real_input(case: Case, request: pytest.FixtureRequest,
                                    outcomes: dict[str, Outcome], tmp_path: Path) -> None:
    run_case(case, request, outcomes, tmp_path)


# --------------------------------------------------------------------------- -o onto an input

def _onto_input(command: list[str], name: str) -> Case:
    def build(e: Env) -> tuple[list[str], bytes | None]:
        f = {"cxr.png": lambda: write_png(e.inp / name),
             "cxr.tiff": lambda: write_tiff(e.inp / name),
             "ct.nii.gz": lambda: write_nifti(e.inp / name)}[name]()
        return [*command, str(f), "-o", str(f), "--overwrite"], None

    return Case(build, EITHER)


def _onto_input_by_record(e: Env) -> tuple[list[str], bytes | None]:
    """The derived name ``<id>_lq.tiff`` in ``-o`` is the input itself."""
    f = write_tiff(e.inp / "x_lq.tiff")
    return ["degrade", "-o", str(e.inp), "--overwrite"], _record(id="x", path=str(f))


ONTO_INPUT: dict[str, Case] = {
    "degrade-tiff": _onto_input(DEG, "cxr.tiff"),
    "degrade-png": _onto_input([*DEG, "--format", "png"], "cxr.png"),
    "enhance-tiff": _onto_input([*ENH, "--method", "bicubic"], "cxr.tiff"),
    "synth-blend-png": _onto_input(BLEND, "cxr.png"),
    "project-nii-gz": _onto_input([*PRJ, "--size", "32"], "ct.nii.gz"),
    "degrade-derived-name-is-the-input": Case(_onto_input_by_record, EITHER),
}


@pytest.mark.parametrize("case", params(ONTO_INPUT))
def test_out_onto_an_input_is_refused(case: Case, request: pytest.FixtureRequest,
                                      outcomes: dict[str, Outcome], tmp_path: Path) -> None:
    """``-o`` naming an input, even with --overwrite: refused, and the input left intact (the
    snapshot check fails on any change to a file in ``in/``)."""
    run_case(case, request, outcomes, tmp_path)


def test_overwrite_still_replaces_an_output_that_is_not_an_input(tmp_path: Path) -> None:
    """Control for the refusal above."""
    env = Env(tmp_path)
    env.inp.mkdir()
    env.out.mkdir(parents=True)
    (env.out / "cxr_lq.tiff").write_bytes(b"old")
    png = write_png(env.inp / "cxr.png")
    result = cxrkit(["degrade", str(png), "-o", str(env.out), "--overwrite"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert (env.out / "cxr_lq.tiff").read_bytes() != b"old"


# --------------------------------------------------------------------------- stale temporaries

def _stale_copy(target: Path, source: Path) -> Path:
    """A half-written temporary of ``target`` as earlier versions named them (.NAME.XXXXXXXX.ext;
    today's .cxrkit-tmp.HOST.PID.TOKEN.NAME are tested in test_cli_project.py)."""
    suffix = ".nii.gz" if target.name.endswith(".nii.gz") else target.suffix
    stale = target.with_name(f".{target.name}.k3j9x2ab{suffix}")
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    return stale


def test_resume_does_not_take_a_stale_temporary_and_cleans_it(tmp_path: Path) -> None:
    env = Env(tmp_path)
    env.inp.mkdir()
    ct = write_nifti(env.inp / "ct.nii.gz")
    stale = _stale_copy(env.out / "ct_drr.tiff", write_tiff(tmp_path / "some.tiff"))
    result = cxrkit(["project", str(ct), "--size", "32", "-o", str(env.out), "--resume"],
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    (rec,) = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert Path(rec["path"]).name == "ct_drr.tiff" and (env.out / "ct_drr.tiff").is_file()
    assert not stale.exists(), "the stale temporary must be cleaned by the next run"
    assert sorted(p.name for p in env.out.iterdir()) == ["ct_drr.tiff"]


def test_resume_with_a_finished_output_cleans_its_stale_temporary(tmp_path: Path) -> None:
    env = Env(tmp_path)
    env.inp.mkdir()
    png = write_png(env.inp / "cxr.png")
    first = cxrkit(["degrade", str(png), "-o", str(env.out)], cwd=tmp_path)
    assert first.returncode == 0, first.stderr.decode()
    stale = _stale_copy(env.out / "cxr_lq.tiff", env.out / "cxr_lq.tiff")
    again = cxrkit(["degrade", str(png), "-o", str(env.out), "--resume"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr.decode()
    assert json.loads(again.stdout) == json.loads(first.stdout)
    assert not stale.exists(), "the stale temporary must be cleaned by the next run"


@pytest.mark.parametrize("command", ["degrade", "project"])
def test_stale_temporary_in_an_input_folder_is_not_an_input(command: str, tmp_path: Path) -> None:
    env = Env(tmp_path)
    env.inp.mkdir()
    if command == "project":
        good = write_nifti(env.inp / "ct.nii.gz")
        _stale_copy(env.inp / "other.nii.gz", good)
        argv = ["project", str(env.inp), "--size", "32", "-o", str(env.out)]
    else:
        good = write_png(env.inp / "cxr.png")
        _stale_copy(env.inp / "other_lq.tiff", write_tiff(tmp_path / "some.tiff"))
        argv = ["degrade", str(env.inp), "-o", str(env.out)]
    result = cxrkit(argv, cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    ids = [json.loads(line)["id"] for line in result.stdout.decode().splitlines()]
    assert ids == [good.name.split(".")[0]]


# --------------------------------------------------------------------------- signals

def _ct_batch(env: Env, count: int) -> list[Path]:
    env.inp.mkdir(exist_ok=True)
    data = write_nifti(env.inp / "ct000.nii.gz", ct_array(32)).read_bytes()
    paths = [env.inp / f"ct{k:03d}.nii.gz" for k in range(count)]
    for p in paths[1:]:
        p.write_bytes(data)
    return paths


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_a_project_batch(sig: signal.Signals, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the process group) or a scheduler's SIGTERM after the first CT: exit
    130, at most one line on stderr, and every file left in -o is a complete output."""
    from cxrkit.io import read_radiograph

    env = Env(tmp_path)
    paths = _ct_batch(env, 40)
    (tmp_path / "tmp").mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxrkit", "project", *map(str, paths), "--size", "256",
         "-o", str(env.out)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
             "TMPDIR": str(tmp_path / "tmp"), "CUDA_VISIBLE_DEVICES": ""},
        start_new_session=True, preexec_fn=_limit_memory)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first, "no record before the signal: " + proc.stderr.read().decode()  # type: ignore[union-attr]
        time.sleep(0.05)
        os.killpg(proc.pid, sig)
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lines = [ln for ln in err.decode().splitlines() if ln.strip()]
    assert proc.returncode == 130, f"exit {proc.returncode}: {err.decode()[-2000:]}"
    assert len(lines) <= 1 and "Traceback" not in err.decode(), err.decode()[-2000:]
    emitted = [json.loads(line)["path"] for line in (first + rest).decode().splitlines()]
    assert len(emitted) < len(paths), "the batch finished before the signal"
    left = sorted(env.out.iterdir())
    assert not [p.name for p in left if p.name.startswith(".")], "hidden temporary left"
    for p in left:
        assert read_radiograph(p).pixels.shape == (256, 256)  # complete, readable
    assert {Path(p).name for p in emitted} <= {p.name for p in left}


@pytest.mark.slow
def test_sigkill_leaves_no_output_that_resume_or_a_reader_takes(tmp_path: Path) -> None:
    """kill -9 mid-batch may leave a temporary; the next --resume run cleans it, finishes every
    item, and the folder then holds only complete outputs."""
    env = Env(tmp_path)
    paths = _ct_batch(env, 12)
    (tmp_path / "tmp").mkdir()
    argv = [sys.executable, "-m", "cxrkit", "project", *map(str, paths), "--size", "512",
            "-o", str(env.out)]
    penv = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
            "TMPDIR": str(tmp_path / "tmp"), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=penv, start_new_session=True, preexec_fn=_limit_memory)
    assert proc.stdout is not None
    proc.stdout.readline()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = cxrkit([*argv[3:], "--resume"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr.decode()
    names = sorted(p.name for p in env.out.iterdir())
    assert names == sorted(f"ct{k:03d}_drr.tiff" for k in range(12)), names
    listed = cxrkit(["degrade", str(env.out), "--preset", "bicubic", "-o",
                     str(tmp_path / "lq")], cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr.decode()


# --------------------------------------------------------------------------- two runs, one -o

@pytest.mark.slow
def test_two_runs_into_one_out_folder(tmp_path: Path) -> None:
    """Two runs racing for one output: exactly one writes it, the other exits 1 with 'output
    exists', and the file holds the winner's record (each output is created exclusively).
    Without exclusive creation both exit 0 in most trials (the 1024² render takes equally long
    in both, so their writes meet)."""
    from cxrkit.io import read_meta

    env = Env(tmp_path)
    env.inp.mkdir()
    (tmp_path / "tmp").mkdir()
    ct = write_nifti(env.inp / "ct.nii.gz", ct_array(32))
    for trial in range(3):
        out = tmp_path / f"out{trial}"
        procs = [subprocess.Popen(
            [sys.executable, "-m", "cxrkit", "project", str(ct), "--size", "1024", "--kev",
             str(60 + 10 * k), "-o", str(out)], cwd=tmp_path, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, preexec_fn=_limit_memory,
            env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                 "CUDA_VISIBLE_DEVICES": ""}) for k in range(2)]
        results = [p.communicate(timeout=TIMEOUT_S) for p in procs]
        codes = sorted(p.returncode for p in procs)
        assert codes == [0, 1], f"trial {trial}: exits {codes}"
        (winner,) = [json.loads(o) for o, _ in results if o.strip()]
        (loser_err,) = [e.decode() for o, e in results if not o.strip()]
        assert "output exists" in loser_err, loser_err
        assert read_meta(winner["path"]) == winner, "the file holds the other run's image"
