"""Radiographs on disk: read PNG, TIFF, DICOM CR/DX and MHA; write TIFF, PNG and DICOM.

Convention (used everywhere in cxrkit): a radiograph in memory is an ``(H, W)`` float32 array with
rows top to bottom and the patient's right on the image left (standard PA display). Its ``kind``
says what the numbers are:

- ``display``: a viewable image in [0, 1], bone bright (MONOCHROME2 sense);
- ``line_integral``: ∫μ dl along each ray, unitless, ≥ 0 (a DRR before display mapping);
- ``intensity``: Beer–Lambert transmission I/I₀ = exp(−∫μ dl), in (0, 1];
- ``mask`` (0/1) and ``thickness`` (mm): projected label volumes.

Every file cxrkit writes carries its record (lineage) in its metadata: the TIFF ImageDescription
or the PNG ``cxrkit`` text chunk holds ``{"cxrkit": record}`` as JSON, so a file alone says how it
was made. DICOM output never holds patient-identifying fields.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrkit.errors import FormatError, InputError
from cxrkit.files import atomic_path, sniff_suffix, to_json

log = logging.getLogger(__name__)

KINDS = ("display", "line_integral", "intensity", "mask", "thickness")
RADIOGRAPH_SUFFIXES = (".png", ".tif", ".tiff", ".dcm", ".dicom", ".mha", ".mhd")
WRITE_FORMATS = {"tiff": ".tiff", "png": ".png", "dicom": ".dcm"}


@dataclass
class Radiograph:
    """A 2-D radiograph with its pixel size and provenance.

    Attributes:
        pixels: ``(H, W)`` float32; meaning given by ``kind`` (see the module docstring).
        spacing_mm: ``(row, col)`` pixel size in mm, or None when the file does not say.
        kind: one of :data:`KINDS`.
        meta: the record stored in the file by cxrkit (lineage), else ``{}``.
    """

    pixels: np.ndarray
    spacing_mm: tuple[float, float] | None = None
    kind: str = "display"
    meta: dict[str, Any] = field(default_factory=dict)


def read_radiograph(path: str | Path) -> Radiograph:
    """Read a radiograph, whatever its format (found by magic bytes, not by suffix).

    PNG and integer TIFF are scaled to [0, 1] by their bit depth (RGB/RGBA → luminance);
    DICOM gets the modality LUT, the VOI LUT or window, and MONOCHROME1 inversion.

    Raises:
        InputError: missing file, or not a 2-D image.
        FormatError: unknown, corrupt or truncated file.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("no such file", path=str(p))
    with open(p, "rb") as fh:
        head = fh.read(512)
    suffix = sniff_suffix(head) or p.suffix.lower()
    reader = {".png": _read_pil, ".tiff": _read_tiff, ".tif": _read_tiff, ".dcm": _read_dicom,
              ".mha": _read_sitk, ".mhd": _read_sitk}.get(suffix)
    if reader is None:
        raise FormatError("not a radiograph format cxrkit reads", path=str(p),
                          hint="use PNG, TIFF, DICOM or MHA")
    try:
        rg = reader(p)
    except (InputError, FormatError):
        raise
    except Exception as exc:  # decoders raise many types on corrupt data
        raise FormatError(f"cannot decode image: {type(exc).__name__}: {exc}"[:200],
                          path=str(p)) from exc
    if rg.pixels.ndim != 2 or min(rg.pixels.shape) < 2:
        raise InputError(f"expected a 2-D image, got shape {rg.pixels.shape}", path=str(p))
    if not np.isfinite(rg.pixels).all():
        raise InputError("image contains NaN or infinite pixels", path=str(p))
    rg.pixels = np.ascontiguousarray(rg.pixels, dtype=np.float32)
    return rg


def write_radiograph(
    path: str | Path, image: Radiograph, *, record: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a radiograph atomically, in the format given by the suffix.

    ``.tif``/``.tiff``: float32, lossless, ImageDescription JSON and resolution tags (default).
    ``.png``: 16-bit gray; ``display``/``mask`` only (values clipped to [0, 1]).
    ``.dcm``: 16-bit MONOCHROME2 Secondary Capture with pixel spacing and no patient data.

    Args:
        path: target file.
        image: what to write.
        record: the lineage record to embed (defaults to ``image.meta``).
        overwrite: replace an existing file.

    Raises:
        OutputError: the file exists and ``overwrite`` is False.
        InputError: an unsupported suffix, or a kind the format cannot hold.
    """
    target = Path(path)
    suffix = target.suffix.lower()
    meta = {"kind": image.kind, "spacing_mm": image.spacing_mm, **(record or image.meta)}
    writer = {".tif": _write_tiff, ".tiff": _write_tiff, ".png": _write_png,
              ".dcm": _write_dicom}.get(suffix)
    if writer is None:
        raise InputError(f"cannot write '{suffix}' files", path=str(target),
                         hint="use .tiff, .png or .dcm")
    if suffix in (".png", ".dcm") and image.kind not in ("display", "mask"):
        raise InputError(f"a '{image.kind}' image needs a float format", path=str(target),
                         hint="write .tiff, or ask for a display image")
    with atomic_path(target, overwrite=overwrite) as tmp:
        writer(tmp, image, meta)
    return target


def read_meta(path: str | Path) -> dict[str, Any]:
    """The record embedded in a file cxrkit wrote, without decoding its pixels (``{}`` if none)."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(8)
        if head[:4] in (b"II*\x00", b"MM\x00*"):
            import tifffile

            with tifffile.TiffFile(p) as tif:
                return _parse_meta(tif.pages.first.description)
        if head == b"\x89PNG\r\n\x1a\n":
            from PIL import Image

            with Image.open(p) as im:
                return _parse_meta(im.info.get("cxrkit", ""))
    except (OSError, ValueError):
        return {}
    return {}


def _parse_meta(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return {}
    inner = data.get("cxrkit") if isinstance(data, dict) else None
    return inner if isinstance(inner, dict) else {}


def _from_meta(pixels: np.ndarray, meta: dict[str, Any],
               spacing: tuple[float, float] | None) -> Radiograph:
    kind = meta.get("kind", "display")
    if kind not in KINDS:
        kind = "display"
    sp = meta.get("spacing_mm") or spacing
    return Radiograph(pixels, tuple(float(s) for s in sp) if sp else None,  # type: ignore[arg-type]
                      kind, meta)


def _to_unit(arr: np.ndarray) -> np.ndarray:
    """Integer pixels → [0, 1] by their dtype's range; floats unchanged."""
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        return (arr.astype(np.float32) - info.min) / float(info.max - info.min)
    return arr.astype(np.float32)


def _gray(arr: np.ndarray) -> np.ndarray:
    """RGB(A) → luminance (ITU-R 601), alpha dropped; gray unchanged."""
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3].astype(np.float64)
        out = rgb @ np.array([0.299, 0.587, 0.114])
        return out.astype(arr.dtype) if np.issubdtype(arr.dtype, np.integer) else out
    if arr.ndim == 3 and arr.shape[-1] == 2:  # gray + alpha
        return arr[..., 0]
    return arr


def _read_pil(path: Path) -> Radiograph:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        meta = _parse_meta(im.info.get("cxrkit", ""))
        if im.mode in ("I;16", "I;16B", "I;16L"):
            arr = np.asarray(im, dtype=np.uint16)
        elif im.mode == "I":
            arr = np.asarray(im).astype(np.uint16)
        elif im.mode == "P":
            arr = np.asarray(im.convert("L"))
        else:
            arr = np.asarray(im)
    # A foreign PNG's dpi is a screen setting, not a pixel size: spacing only from our metadata.
    return _from_meta(_to_unit(_gray(arr)), meta, None)


def _read_tiff(path: Path) -> Radiograph:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        meta = _parse_meta(page.description)
        arr = page.asarray()
        spacing = _tiff_spacing(page)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    return _from_meta(_to_unit(_gray(arr)), meta, spacing)


def _tiff_spacing(page: Any) -> tuple[float, float] | None:
    tags = page.tags
    try:
        unit = tags["ResolutionUnit"].value
        xr, yr = tags["XResolution"].value, tags["YResolution"].value
    except KeyError:
        return None
    mm_per_unit = {2: 25.4, 3: 10.0}.get(int(unit))
    if mm_per_unit is None or not xr[0] or not yr[0]:
        return None
    return (mm_per_unit * yr[1] / yr[0], mm_per_unit * xr[1] / xr[0])


def _read_dicom(path: Path) -> Radiograph:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise FormatError("DICOM file holds no image", path=str(path))
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise InputError("multi-frame DICOM is not a single radiograph", path=str(path))
    raw = ds.pixel_array
    arr = apply_modality_lut(raw, ds).astype(np.float64)
    has_voi = "VOILUTSequence" in ds or "WindowCenter" in ds
    if has_voi:
        arr = apply_voi_lut(arr, ds, prefer_lut=True).astype(np.float64)
    low, high = _dicom_range(ds, arr, has_voi)
    arr = np.clip((arr - low) / max(high - low, 1e-12), 0.0, 1.0)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        arr = 1.0 - arr
    sp = ds.get("ImagerPixelSpacing") or ds.get("PixelSpacing")
    spacing = (float(sp[0]), float(sp[1])) if sp else None  # DICOM order is (row, col)
    return Radiograph(arr.astype(np.float32), spacing, "display", {})


def _dicom_range(ds: Any, arr: np.ndarray, has_voi: bool) -> tuple[float, float]:
    """Value range to map onto [0, 1]: the VOI output range, else the stored bit range."""
    if has_voi:
        return float(arr.min()), float(arr.max())
    bits = int(ds.get("BitsStored", 16))
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    lo_raw, hi_raw = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    ends = sorted((lo_raw * slope + intercept, hi_raw * slope + intercept))
    return ends[0], ends[1]


def _read_sitk(path: Path) -> Radiograph:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(image)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    sx, sy = image.GetSpacing()[:2]
    return Radiograph(_to_unit(_gray(arr)), (float(sy), float(sx)), "display", {})


def _write_tiff(tmp: Path, image: Radiograph, meta: dict[str, Any]) -> None:
    import tifffile

    data = np.ascontiguousarray(image.pixels, dtype=np.float32)
    kwargs: dict[str, Any] = {}
    if image.spacing_mm:
        row_mm, col_mm = image.spacing_mm
        kwargs["resolution"] = (10.0 / col_mm, 10.0 / row_mm)  # pixels per cm, (x, y)
        kwargs["resolutionunit"] = "CENTIMETER"
    tifffile.imwrite(tmp, data, description=to_json({"cxrkit": meta}), metadata=None,
                     software="cxrkit", **kwargs)


def _write_png(tmp: Path, image: Radiograph, meta: dict[str, Any]) -> None:
    from PIL import Image, PngImagePlugin

    data = np.round(np.clip(image.pixels, 0.0, 1.0) * 65535.0).astype(np.uint16)
    info = PngImagePlugin.PngInfo()
    info.add_text("cxrkit", to_json({"cxrkit": meta}))
    kwargs: dict[str, Any] = {"pnginfo": info}
    if image.spacing_mm:
        kwargs["dpi"] = (25.4 / image.spacing_mm[1], 25.4 / image.spacing_mm[0])
    Image.fromarray(data).save(tmp, format="PNG", **kwargs)


def _write_dicom(tmp: Path, image: Radiograph, meta: dict[str, Any]) -> None:
    """A minimal Secondary Capture object: pixels, spacing, provenance; no patient data."""
    import datetime

    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    from cxrkit import __version__

    sop_class = UID("1.2.840.10008.5.1.4.1.1.7")  # Secondary Capture Image Storage
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = sop_class
    file_meta.MediaStorageSOPInstanceUID = generate_uid()
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = file_meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.ConversionType = "SYN"
    ds.ContentDate = datetime.date.today().strftime("%Y%m%d")
    ds.Manufacturer = "cxrkit"
    ds.SoftwareVersions = __version__
    ds.ImageComments = to_json({"cxrkit": meta})[:10240]
    data = np.round(np.clip(image.pixels, 0.0, 1.0) * 65535.0).astype(np.uint16)
    ds.Rows, ds.Columns = data.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if image.spacing_mm:
        ds.PixelSpacing = [f"{image.spacing_mm[0]:.6g}", f"{image.spacing_mm[1]:.6g}"]
    ds.PixelData = data.tobytes()
    ds.save_as(tmp, enforce_file_format=True)


def write_stack(
    path: str | Path, stack: np.ndarray, spacing_mm: tuple[float, float] | None,
    meta: dict[str, Any], *, overwrite: bool = False,
) -> Path:
    """Write an ``(N, H, W)`` float32 stack (e.g. projected label masks) as one TIFF, atomically.

    The metadata (e.g. ``label_ids``) goes into the ImageDescription like :func:`write_radiograph`.
    """
    import tifffile

    target = Path(path)
    data = np.ascontiguousarray(stack, dtype=np.float32)
    kwargs: dict[str, Any] = {}
    if spacing_mm:
        kwargs["resolution"] = (10.0 / spacing_mm[1], 10.0 / spacing_mm[0])
        kwargs["resolutionunit"] = "CENTIMETER"
    full = {"spacing_mm": spacing_mm, **meta}
    with atomic_path(target, overwrite=overwrite) as tmp:
        tifffile.imwrite(tmp, data, description=to_json({"cxrkit": full}), metadata=None,
                         software="cxrkit", **kwargs)
    return target


def read_stack(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a TIFF stack written by :func:`write_stack`: ``(N, H, W)`` float32 and its metadata."""
    import tifffile

    p = Path(path)
    try:
        with tifffile.TiffFile(p) as tif:
            meta = _parse_meta(tif.pages.first.description)
            data = tif.asarray()
    except Exception as exc:
        raise FormatError(f"cannot read TIFF stack: {exc}"[:200], path=str(p)) from exc
    if data.ndim == 2:
        data = data[None]
    return data.astype(np.float32, copy=False), meta
