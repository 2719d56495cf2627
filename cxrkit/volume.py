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
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrkit.errors import FormatError, InputError

log = logging.getLogger(__name__)

AIR_HU = -1024.0
"""Values below this (e.g. the −2048 padding outside the scan circle) are air."""

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")


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
    name = path.name.lower()
    return path.is_dir() or name.endswith(VOLUME_SUFFIXES)


def read_volume(path: str | Path, *, series: str | None = None) -> Volume:
    """Read a CT (or label) volume and reorient it to LPS.

    Args:
        path: a NIfTI, MHA/MHD or NRRD file, or a folder holding one DICOM series.
        series: the SeriesInstanceUID to read when a folder holds several.

    Returns:
        A validated :class:`Volume`; HU < −1024 (padding) is kept as is, see :data:`AIR_HU`.

    Raises:
        InputError: missing path, several series without ``series``, or an invalid volume.
        FormatError: unreadable, truncated or corrupt file.
    """
    import SimpleITK as sitk

    p = Path(path)
    if not p.exists():
        raise InputError("no such file or folder", path=str(p))
    try:
        if p.is_dir():
            image = _read_dicom_series(p, series)
            fmt = "dicom"
        else:
            # SimpleITK silently reads a truncated .gz as zeros: verify the stream meanwhile
            # (zlib releases the GIL, so this costs no wall time on a multi-core machine).
            with ThreadPoolExecutor(max_workers=1) as pool:
                check = pool.submit(_check_not_truncated, p)
                image = sitk.ReadImage(str(p))
                check.result()
            fmt = p.suffix.lower().lstrip(".")
    except RuntimeError as exc:  # SimpleITK reports every read problem this way
        first = str(exc).strip().splitlines()
        detail = next((ln for ln in first if "rror" in ln), first[0] if first else "")
        raise FormatError(f"cannot read volume: {detail.strip()[:160]}", path=str(p)) from exc
    if image.GetDimension() != 3:
        raise InputError(
            f"expected a 3-D volume, got a {image.GetDimension()}-D image", path=str(p),
            hint="give a CT volume (NIfTI, MHA, NRRD or a DICOM series folder)",
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("expected a scalar volume, got a multi-component image", path=str(p))
    volume = volume_from_sitk(image, meta={"format": fmt})
    return validate_volume(volume, path=str(p))


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
    # Reorient in numpy (views of one copy): index axis i runs along world axis axes[i].
    array = sitk.GetArrayFromImage(image)  # (z, y, x) index order
    axes = np.abs(direction).argmax(0) if signed_permutation else np.arange(3)
    signs = np.sign(direction[axes, np.arange(3)]) if signed_permutation else np.ones(3)
    size = np.array(image.GetSize())
    origin = np.array(image.GetOrigin(), dtype=np.float64)
    for i in range(3):  # flip reversed axes; the origin moves to the other end
        if signs[i] < 0:
            origin = origin + direction[:, i] * spacing[i] * (size[i] - 1)
            array = np.flip(array, axis=2 - i)
    order = np.argsort(axes)  # index axis that runs along world x, y, z
    array = np.transpose(array, [2 - order[2], 2 - order[1], 2 - order[0]])  # (D, H, W)
    new_spacing = spacing[order]
    new_direction = direction[:, order] * signs[order][None, :]
    return Volume(
        array=np.ascontiguousarray(array, dtype=np.float32),
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
    reader.SetFileNames(files)
    return reader.Execute()


def _check_not_truncated(path: Path) -> None:
    """Catch truncated gzip files early (SimpleITK may otherwise read zeros)."""
    if path.name.lower().endswith(".gz"):
        try:
            with gzip.open(path, "rb") as fh:
                while fh.read(1 << 24):
                    pass
        except (OSError, EOFError) as exc:
            raise FormatError(f"corrupt or truncated gzip file: {exc}", path=str(path)) from exc
