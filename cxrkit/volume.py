"""CT volumes in memory and on disk.

Axis convention (used everywhere in cxrkit): a :class:`Volume` holds a ``(D, H, W)`` float32
array of Hounsfield units, reoriented on load to the patient **LPS** frame (DICOM): index ``w``
runs toward the patient's left (+x), ``h`` toward posterior (+y), ``d`` toward superior (+z).
``spacing_mm`` is in the same ``(D, H, W)`` order; ``origin_mm`` is the LPS world position
``(x, y, z)`` of the centre of voxel ``[0, 0, 0]``; ``direction`` is the 3×3 matrix whose columns
are the world directions of the ``(x, y, z)`` = ``(w, h, d)`` index axes (the identity unless the
scan is oblique).

So the world position of voxel ``[d, h, w]`` is
``origin_mm + direction @ ([w, h, d] * spacing_xyz)``.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import struct
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrkit.errors import FormatError, InputError
from cxrkit.files import native_stderr_to_log
from cxrkit.io import (
    MAX_VOXELS,
    NIFTI_SUFFIXES,
    VOLUME_SUFFIXES,
    check_metaimage,
    check_voxels,
    has_suffix,
    sitk_header,
    sitk_message,
    sitk_pixel_problem,
)

log = logging.getLogger(__name__)

AIR_HU = -1024.0
"""Values below this (e.g. the −2048 padding outside the scan circle) are air."""

__all__ = ["AIR_HU", "MAX_VOXELS", "VOLUME_SUFFIXES", "Volume", "is_volume_path", "read_volume",
           "validate_volume", "volume_from_sitk", "volume_to_sitk", "write_volume"]


@dataclass(frozen=True)
class Volume:
    """A CT volume in the canonical LPS frame (see the module docstring).

    Attributes:
        array: ``(D, H, W)`` float32 values (HU for CT, label ids for label volumes).
        spacing_mm: voxel size in mm, ``(D, H, W)`` order; all > 0.
        origin_mm: LPS world position ``(x, y, z)`` in mm of the centre of voxel ``[0, 0, 0]``.
        direction: ``(3, 3)`` float64; column ``i`` is the world direction of index axis
            ``(w, h, d)[i]``.
        meta: non-identifying facts about the source (format, series uid, modality).
    """

    array: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(D, H, W)``."""
        d, h, w = self.array.shape
        return (d, h, w)

    def index_to_world(self) -> np.ndarray:
        """The ``(4, 4)`` affine mapping homogeneous ``(w, h, d, 1)`` indices to LPS mm."""
        affine = np.eye(4)
        sx = np.array(self.spacing_mm[::-1], dtype=np.float64)  # (x, y, z) = (w, h, d)
        affine[:3, :3] = np.asarray(self.direction, dtype=np.float64) * sx[None, :]
        affine[:3, 3] = self.origin_mm
        return affine

    def bounds_mm(self) -> np.ndarray:
        """``(2, 3)`` world min / max (x, y, z) of the voxel-centre box, in LPS mm."""
        d, h, w = self.shape
        corners = np.array(
            [[i, j, k, 1.0] for i in (0, w - 1) for j in (0, h - 1) for k in (0, d - 1)]
        )
        world = corners @ self.index_to_world().T
        return np.stack([world[:, :3].min(0), world[:, :3].max(0)])

    def with_array(self, array: np.ndarray) -> Volume:
        """The same grid holding other values (e.g. attenuation or a mask)."""
        return Volume(array, self.spacing_mm, self.origin_mm, self.direction, dict(self.meta))


def validate_volume(volume: Volume, *, path: str | None = None) -> Volume:
    """Check that a volume is a usable 3-D scan and return it.

    Raises:
        InputError: not 3-D, too thin, non-finite values, or non-positive spacing.
    """
    arr = volume.array
    if arr.ndim != 3:
        raise InputError(f"expected a 3-D volume, got {arr.ndim}-D", path=path)
    if min(arr.shape) < 2:
        raise InputError(
            f"volume of shape {arr.shape} is a 2-D image, not a CT", path=path,
            hint="give a CT volume (NIfTI, MHA, NRRD or a DICOM series folder)",
        )
    sp = np.asarray(volume.spacing_mm, dtype=np.float64)
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise InputError(f"voxel spacing must be positive, got {tuple(sp.tolist())} mm", path=path)
    if not np.isfinite(arr).all():
        raise InputError("volume contains NaN or infinite voxels", path=path)
    return volume


def is_volume_path(path: Path) -> bool:
    """Whether ``path`` names something :func:`read_volume` can read (by suffix or folder)."""
    return path.is_dir() or has_suffix(path, VOLUME_SUFFIXES)


def read_volume(path: str | Path, *, series: str | None = None) -> Volume:
    """Read a CT (or label) volume and reorient it to LPS.

    Before any voxel is read, the header is checked: the declared size against
    :data:`~cxrkit.io.MAX_VOXELS`, one scalar real channel, positive finite spacing; for NIfTI
    also the raw header (SimpleITK silently turns a zero or NaN ``pixdim`` into 1 mm, NaN voxels
    into 0 and a truncated ``.nii`` into zeros, so cxrkit checks those bytes itself); for a DICOM
    series every slice (pixels present, no duplicate, evenly spaced: no missing slice).

    Args:
        path: a NIfTI, MHA/MHD or NRRD file, or a folder holding one DICOM series.
        series: the SeriesInstanceUID to read when a folder holds several.

    Returns:
        A validated :class:`Volume`; HU < −1024 (padding) is kept as is, see :data:`AIR_HU`.

    Raises:
        InputError: missing path, several series without ``series``, or an invalid volume
            (NaN/infinite voxels, bad spacing, a missing or duplicated DICOM slice).
        FormatError: unreadable, truncated, corrupt, complex, multi-component or oversized file.
    """
    import SimpleITK as sitk

    p = Path(path)
    if not p.exists():
        raise InputError("no such file or folder", path=str(p))
    warn = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # cxrkit checks what ITK only warns about
    try:
        if p.is_dir():
            with native_stderr_to_log(__name__):  # GDCM/OpenJPEG print per-slice complaints
                image = _read_dicom_series(p, series)
            fmt = "dicom"
        else:
            image = _read_volume_file(p)
            fmt = p.suffix.lower().lstrip(".")
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warn)
    if isinstance(image, Volume):
        return validate_volume(image, path=str(p))
    if image.GetDimension() != 3:
        raise InputError(
            f"expected a 3-D volume, got a {image.GetDimension()}-D image", path=str(p),
            hint="give a CT volume (NIfTI, MHA, NRRD or a DICOM series folder)",
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("expected a scalar volume, got a multi-component image", path=str(p))
    volume = volume_from_sitk(image, meta={"format": fmt})
    return validate_volume(volume, path=str(p))


_FAST_NIFTI = True
"""Read an axis-aligned 3-D NIfTI's voxels with zlib and numpy, in one pass that also checks
them (SimpleITK gives the header: spacing, origin, direction); False: SimpleITK reads them too
(tests compare the two)."""


def _read_volume_file(p: Path) -> Any:
    """One volume file → a SimpleITK image (or, for an axis-aligned 3-D NIfTI, a :class:`Volume`
    read in one pass), with every check that can come before the read."""
    nifti = _nifti_header(p)
    reader = sitk_header(p)
    size = tuple(int(v) for v in reader.GetSize())
    if len(size) != 3:
        raise InputError(
            f"expected a 3-D volume, got a {len(size)}-D image", path=str(p),
            hint="give a CT volume (NIfTI, MHA, NRRD or a DICOM series folder)",
        )
    check_voxels(size[::-1], path=str(p))
    problem = sitk_pixel_problem(reader)
    if problem:
        raise FormatError(f"volume has {problem}", path=str(p))
    _check_spacing(reader.GetSpacing(), path=str(p))
    if nifti is not None and len(nifti.shape) == 3 and _FAST_NIFTI:
        direction = np.array(reader.GetDirection(), dtype=np.float64).reshape(3, 3)
        if np.allclose(np.abs(direction).max(0), 1.0, atol=1e-6):  # not oblique
            return _fast_nifti(p, nifti, reader)
    if sniff_head(p)[:10] == b"ObjectType":
        check_metaimage(p)
    # Meanwhile (zlib and numpy release the GIL): verify a .gz stream to its end (SimpleITK may
    # read a truncated one as zeros) and, for NIfTI, that every declared voxel is there and finite.
    with ThreadPoolExecutor(max_workers=1) as pool:
        check = pool.submit(_check_stream, p, nifti)
        failure: RuntimeError | None = None
        try:
            with native_stderr_to_log(__name__):
                image = reader.Execute()
        except RuntimeError as exc:  # SimpleITK reports every read problem this way
            failure = exc
        check.result()
    if failure is not None:
        raise FormatError(f"cannot read volume: {sitk_message(failure, 160)}",
                          path=str(p)) from failure
    return image


def sniff_head(path: Path, size: int = 16) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(size)


def _check_spacing(spacing: tuple[float, ...], *, path: str) -> None:
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        shown = ", ".join(f"{s:g}" for s in spacing)
        raise InputError(f"voxel spacing must be positive and finite, got ({shown}) mm", path=path)


# NIfTI datatype codes → numpy dtype names (None: refused: complex or RGB).
_NIFTI_TYPES: dict[int, str | None] = {
    2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4",
    1024: "i8", 1280: "u8", 32: None, 1792: None, 2048: None, 128: None, 2304: None, 1536: None,
}


@dataclass(frozen=True)
class _NiftiHeader:
    shape: tuple[int, ...]  # NIfTI order (x, y, z, ...)
    dtype: str  # numpy dtype string with byte order
    vox_offset: int
    gz: bool
    slope: float = 1.0  # scl_slope, scl_inter: value = raw * slope + inter (ITK's rule)
    inter: float = 0.0

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


def _nifti_header(p: Path) -> _NiftiHeader | None:
    """Parse and check a NIfTI-1/2 header (``.nii`` or ``.nii.gz``); None for other formats.

    Raises:
        FormatError: a size over :data:`MAX_VOXELS`, an unknown, complex or RGB datatype.
        InputError: a zero, negative or non-finite voxel size (``pixdim``).
    """
    gz = sniff_head(p, 2) == b"\x1f\x8b"
    if not (has_suffix(p, NIFTI_SUFFIXES) or gz):
        return None
    try:
        if gz:
            with gzip.open(p, "rb") as fh:
                head = fh.read(544)
        else:
            head = sniff_head(p, 544)
    except (OSError, EOFError) as exc:
        raise FormatError(f"corrupt or truncated gzip file: {exc}", path=str(p)) from exc
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        version = 1
    elif len(head) >= 540 and head[4:8] in (b"n+2\x00", b"ni2\x00"):
        version = 2
    else:
        return None  # not NIfTI (or not a form checked here): SimpleITK decides
    size = 348 if version == 1 else 540
    endian = "<" if struct.unpack("<i", head[:4])[0] == size else ">"
    if struct.unpack(endian + "i", head[:4])[0] != size:
        raise FormatError("corrupt NIfTI header (sizeof_hdr)", path=str(p))
    if version == 1:
        dim = struct.unpack(endian + "8h", head[40:56])
        datatype = struct.unpack(endian + "h", head[70:72])[0]
        pixdim = struct.unpack(endian + "8f", head[76:108])
        vox_offset = struct.unpack(endian + "f", head[108:112])[0]
        slope, inter = struct.unpack(endian + "2f", head[112:120])
    else:
        datatype = struct.unpack(endian + "h", head[12:14])[0]
        dim = struct.unpack(endian + "8q", head[16:80])
        pixdim = struct.unpack(endian + "8d", head[104:168])
        vox_offset = struct.unpack(endian + "q", head[168:176])[0]
        slope, inter = struct.unpack(endian + "2d", head[176:192])
    ndim = int(dim[0])
    if not 1 <= ndim <= 7:
        raise FormatError(f"corrupt NIfTI header: {ndim} dimensions", path=str(p))
    shape = tuple(int(d) for d in dim[1 : ndim + 1])
    check_voxels(shape[:3][::-1] if ndim <= 3 else shape[::-1], path=str(p))
    if datatype not in _NIFTI_TYPES:
        raise FormatError(f"unknown NIfTI datatype code {datatype}", path=str(p))
    kind = _NIFTI_TYPES[datatype]
    if kind is None:
        what = "complex" if datatype in (32, 1792, 2048) else "RGB" if datatype in (128, 2304) \
            else "128-bit float"
        raise FormatError(f"volume has {what} voxels; cxrkit reads real scalar volumes",
                          path=str(p))
    spatial = pixdim[1 : min(ndim, 3) + 1]
    if not all(math.isfinite(v) and v > 0 for v in spatial):
        shown = ", ".join(f"{v:g}" for v in spatial)
        raise InputError(f"NIfTI voxel size (pixdim) must be positive and finite, got ({shown})",
                         path=str(p))
    if not (math.isfinite(vox_offset) and vox_offset >= 0):
        raise FormatError("corrupt NIfTI header (vox_offset)", path=str(p))
    offset = max(int(vox_offset), size + 4 if version == 1 else size)
    if not (math.isfinite(slope) and math.isfinite(inter)) or slope == 0:
        slope, inter = 1.0, 0.0  # as ITK and nibabel: no scaling
    return _NiftiHeader(shape, endian + kind, offset, gz, float(slope), float(inter))


def _check_stream(path: Path, nifti: _NiftiHeader | None) -> None:
    """Read the file once: a .gz stream must be whole; NIfTI voxels all present and finite."""
    opener = gzip.open if (nifti.gz if nifti else path.name.lower().endswith(".gz")) else open
    if nifti is None and opener is open:
        return
    try:
        with opener(path, "rb") as fh:  # type: ignore[operator]
            if nifti is None:
                while fh.read(1 << 24):
                    pass
                return
            _scan_nifti(fh, nifti, path)
            while fh.read(1 << 24):  # the rest, so that gzip verifies its checksum
                pass
    except (OSError, EOFError) as exc:
        raise FormatError(f"corrupt or truncated gzip file: {exc}", path=str(path)) from exc


def _read_nifti_voxels(path: Path, nifti: _NiftiHeader) -> np.ndarray:
    """A 3-D NIfTI's voxels as a ``(z, y, x)`` array (``scl_slope``/``scl_inter`` applied as
    ITK does), read in one pass that also checks what :func:`_check_stream` checks: every
    declared byte present, finite values, and (``.gz``) the whole stream's checksum.

    Raises:
        FormatError: a truncated or corrupt file.
        InputError: NaN or infinite voxels.
    """
    dtype = np.dtype(nifti.dtype)
    buffer = np.empty(nifti.nbytes, dtype=np.uint8)
    view = memoryview(buffer)
    opener = gzip.open if nifti.gz else open
    try:
        with opener(path, "rb") as fh:  # type: ignore[operator]
            skip = nifti.vox_offset
            while skip > 0:
                got = len(fh.read(min(skip, 1 << 20)))
                if not got:
                    break
                skip -= got
            have = 0
            while have < len(buffer):
                got = fh.readinto(view[have:have + (1 << 24)])
                if not got:
                    break
                have += got
            if nifti.gz:
                while fh.read(1 << 24):  # the rest, so that gzip verifies its checksum
                    pass
    except (OSError, EOFError) as exc:
        raise FormatError(f"corrupt or truncated gzip file: {exc}", path=str(path)) from exc
    if have < len(buffer):
        raise FormatError(f"truncated NIfTI: {have:,} of {len(buffer):,} bytes of voxel data",
                          path=str(path))
    x, y, z = nifti.shape
    return buffer.view(dtype).reshape(z, y, x)  # (byte order and scaling: _fast_nifti)


def _fast_nifti(path: Path, nifti: _NiftiHeader, reader: Any) -> Volume:
    """An axis-aligned 3-D NIfTI as a :class:`Volume`: voxels by :func:`_read_nifti_voxels`,
    the grid from SimpleITK's header (``reader``), one float32 copy in LPS order, then
    ``scl_slope``/``scl_inter`` in place (in float32: within 1 ulp of ITK's double rule, exact
    for integer HU) and the finite check.

    Raises:
        FormatError, InputError: as :func:`_read_nifti_voxels`; NaN or infinite voxels.
    """
    volume = _lps_volume(_read_nifti_voxels(path, nifti), reader.GetDirection(),
                         reader.GetSpacing(), reader.GetOrigin(),
                         meta={"format": path.suffix.lower().lstrip(".")})
    values = volume.array  # the Volume's own float32 copy: scaled in place
    if nifti.slope != 1.0:
        np.multiply(values, np.float32(nifti.slope), out=values)
    if nifti.inter != 0.0:
        np.add(values, np.float32(nifti.inter), out=values)
    if (np.dtype(nifti.dtype).kind == "f" or nifti.slope != 1.0) \
            and not np.isfinite(volume.array).all():
        raise InputError("volume contains NaN or infinite voxels", path=str(path))
    return volume


def _scan_nifti(fh: Any, nifti: _NiftiHeader, path: Path) -> None:
    dtype = np.dtype(nifti.dtype)
    skip = nifti.vox_offset
    while skip > 0:
        got = len(fh.read(min(skip, 1 << 20)))
        if not got:
            break
        skip -= got
    need = nifti.nbytes
    have = 0
    check = dtype.kind == "f"
    chunk = (1 << 24) // dtype.itemsize * dtype.itemsize
    rest = b""
    while have < need:
        block = fh.read(min(chunk, need - have))
        if not block:
            break
        have += len(block)
        if check:
            data = rest + block
            usable = len(data) // dtype.itemsize * dtype.itemsize
            rest = data[usable:]
            if not np.isfinite(np.frombuffer(data[:usable], dtype=dtype)).all():
                raise InputError("volume contains NaN or infinite voxels", path=str(path))
    if have < need:
        raise FormatError(f"truncated NIfTI: {have:,} of {need:,} bytes of voxel data",
                          path=str(path))


def volume_from_sitk(image: Any, *, meta: dict[str, Any] | None = None) -> Volume:
    """Convert a 3-D SimpleITK image to a :class:`Volume` in the LPS frame."""
    import SimpleITK as sitk

    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.array(image.GetSpacing(), dtype=np.float64)  # (x, y, z) index axes
    signed_permutation = np.allclose(np.abs(direction).max(0), 1.0, atol=1e-6)
    if not signed_permutation:  # oblique: let ITK pick the closest LPS axes, keep the rest
        image = sitk.DICOMOrient(image, "LPS")
        direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
        spacing = np.array(image.GetSpacing(), dtype=np.float64)
    # A view of ITK's buffer, (z, y, x) index order: the one copy is _lps_volume's float32 one
    return _lps_volume(sitk.GetArrayViewFromImage(image), direction, spacing, image.GetOrigin(),
                       meta=meta)


def _lps_volume(array: np.ndarray, direction: np.ndarray, spacing: Any, origin: Any, *,
                meta: dict[str, Any] | None = None) -> Volume:
    """A ``(z, y, x)``-indexed array with an ITK-style ``direction`` (columns: index axes),
    ``spacing`` and ``origin`` (x, y, z) as a :class:`Volume` in LPS: reoriented in
    numpy (views, then one float32 copy that never shares the caller's memory). An oblique
    ``direction`` is kept as it is."""
    direction = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(spacing, dtype=np.float64)
    origin = np.asarray(origin, dtype=np.float64)
    if np.allclose(np.abs(direction).max(0), 1.0, atol=1e-6):
        axes = np.abs(direction).argmax(0)  # index axis i runs along world axis axes[i]
        signs = np.sign(direction[axes, np.arange(3)])
    else:  # oblique (after DICOMOrient): kept as it is
        axes, signs = np.arange(3), np.ones(3)
    size = np.array(array.shape[::-1])
    for i in range(3):  # flip reversed axes; the origin moves to the other end
        if signs[i] < 0:
            origin = origin + direction[:, i] * spacing[i] * (size[i] - 1)
            array = np.flip(array, axis=2 - i)
    order = np.argsort(axes)  # index axis that runs along world x, y, z
    array = np.transpose(array, [2 - order[2], 2 - order[1], 2 - order[0]])  # (D, H, W)
    new_spacing = spacing[order]
    new_direction = direction[:, order] * signs[order][None, :]
    return Volume(
        array=np.array(array, dtype=np.float32, order="C", copy=True),
        spacing_mm=(float(new_spacing[2]), float(new_spacing[1]), float(new_spacing[0])),
        origin_mm=(float(origin[0]), float(origin[1]), float(origin[2])),
        direction=new_direction,
        meta=dict(meta or {}),
    )


def volume_to_sitk(volume: Volume) -> Any:
    """The inverse of :func:`volume_from_sitk` (LPS, float32)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array, dtype=np.float32))
    image.SetSpacing(tuple(float(s) for s in volume.spacing_mm[::-1]))
    image.SetOrigin(tuple(float(v) for v in volume.origin_mm))
    image.SetDirection(tuple(float(v) for v in np.asarray(volume.direction).ravel()))
    return image


def write_volume(volume: Volume, path: str | Path) -> None:
    """Write a volume (NIfTI, MHA or NRRD by suffix) atomically."""
    import SimpleITK as sitk

    p = Path(path)
    suffix = "".join(p.suffixes[-2:]) if p.name.endswith(".nii.gz") else p.suffix
    fd, tmp = tempfile.mkstemp(prefix=".cxrkit-", suffix=suffix, dir=p.parent)
    os.close(fd)
    try:
        sitk.WriteImage(volume_to_sitk(volume), tmp, useCompression=True)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_dicom_series(folder: Path, series: str | None) -> Any:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    ids = list(reader.GetGDCMSeriesIDs(str(folder)))
    if not ids:
        raise FormatError("no DICOM series found in folder", path=str(folder))
    if series is None and len(ids) > 1:
        raise InputError(
            f"folder holds {len(ids)} DICOM series", path=str(folder),
            hint="choose one with --series " + " | ".join(ids),
        )
    uid = series or ids[0]
    if uid not in ids:
        raise InputError(f"no series {uid} in folder", path=str(folder),
                         hint="available: " + " | ".join(ids))
    files = reader.GetGDCMSeriesFileNames(str(folder), uid)
    if len(files) < 2:
        raise InputError("DICOM series has a single slice; not a CT volume", path=str(folder))
    _check_left_out(folder, uid, {Path(f).resolve() for f in files})
    _check_series([Path(f) for f in files], folder)
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise FormatError(f"cannot read DICOM series: {sitk_message(exc, 160)}",
                          path=str(folder)) from exc


def _check_left_out(folder: Path, uid: str, taken: set[Path]) -> None:
    """GDCM silently leaves a slice without pixel data out of its series: find such files."""
    import pydicom

    for f in sorted(folder.iterdir()):
        if not f.is_file() or f.resolve() in taken:
            continue
        try:
            ds = pydicom.dcmread(f, defer_size=1024)
        except Exception:  # not DICOM: not part of the series
            continue
        if str(ds.get("SeriesInstanceUID", "")) != uid:
            continue
        if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            raise FormatError(f"DICOM slice {f.name} holds no pixel data", path=str(folder))
        raise FormatError(f"DICOM slice {f.name} of the series cannot be read", path=str(folder))


SLICE_GAP_TOLERANCE = 0.1
"""A DICOM series' slice gaps may exceed the smallest gap by this fraction (plus 0.01 mm);
a larger gap means a missing slice, and cxrkit refuses the series (SimpleITK only warns)."""


def _check_series(files: list[Path], folder: Path) -> None:
    """Every slice of a series has pixels, one size, a unique instance and position, and the
    slices are evenly spaced along their normal (no missing slice).

    Raises:
        FormatError: a slice without pixel data, or slices of different sizes or orientations.
        InputError: a duplicated slice (instance or position), or uneven spacing (missing slice).
    """
    import pydicom

    uids: dict[str, Path] = {}
    where: list[tuple[float, Path]] = []
    shape: tuple[int, int] | None = None
    orientation: np.ndarray | None = None
    for f in files:
        try:
            ds = pydicom.dcmread(f, defer_size=1024)
        except Exception as exc:  # pydicom raises many types on corrupt files
            raise FormatError(f"unreadable DICOM slice {f.name}: {exc}"[:200],
                              path=str(folder)) from exc
        if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            raise FormatError(f"DICOM slice {f.name} holds no pixel data", path=str(folder))
        uid = str(ds.get("SOPInstanceUID", "")) or None
        if uid is not None:
            if uid in uids:
                raise InputError(f"duplicated DICOM slice: {f.name} and {uids[uid].name} are the "
                                 "same instance", path=str(folder))
            uids[uid] = f
        size = (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))
        if shape is None:
            shape = size
            check_voxels((len(files), *size), path=str(folder), what="DICOM series")
        elif size != shape:
            raise FormatError(f"DICOM slice {f.name} is {size[0]}×{size[1]}, the series "
                              f"{shape[0]}×{shape[1]}", path=str(folder))
        pos, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
        if pos is None or iop is None or len(pos) != 3 or len(iop) != 6:
            return  # no geometry to check against: SimpleITK sorts by what it has
        iop_arr = np.array([float(v) for v in iop])
        if orientation is None:
            orientation = iop_arr
        elif not np.allclose(iop_arr, orientation, atol=1e-3):
            raise FormatError(f"DICOM slice {f.name} has another orientation than the series",
                              path=str(folder))
        normal = np.cross(orientation[:3], orientation[3:])
        where.append((float(np.dot(normal, [float(v) for v in pos])), f))
    where.sort(key=lambda t: t[0])
    gaps = np.diff([w for w, _ in where])
    if not gaps.size:
        return
    for gap, (_, a), (_, b) in zip(gaps, where, where[1:], strict=False):
        if gap < 1e-3:
            raise InputError(f"duplicated DICOM slice: {a.name} and {b.name} lie at the same "
                             "position", path=str(folder))
    step = float(gaps.min())
    worst = int(np.argmax(gaps))
    if gaps[worst] > (1 + SLICE_GAP_TOLERANCE) * step + 0.01:
        a, b = where[worst][1], where[worst + 1][1]
        missing = max(round(float(gaps[worst]) / step) - 1, 0)
        what = f"{missing} missing slice(s)" if missing else "uneven slice spacing"
        raise InputError(f"DICOM series has {what}: {gaps[worst]:.3g} mm between {a.name} and "
                         f"{b.name}, {step:.3g} mm elsewhere", path=str(folder))
