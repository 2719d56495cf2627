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

TIFF files are plain baseline TIFF that ``tifffile``, SimpleITK, PIL and ImageJ/Fiji read: the JSON
description never holds a literal ``"shape":`` key (tifffile would take it for its own "shaped"
metadata), so a record key ``shape`` is written as the JSON escape ``"\\u0073hape"``, which any JSON
parser reads back as ``shape``. Masks whose values are small integers are stored as uint8 with
lossless deflate compression (0/1, also in PNG); other images stay float32.

This module is also the one registry of the file suffixes and magic bytes cxrkit reads and writes
(:data:`RADIOGRAPH_SUFFIXES`, :data:`VOLUME_SUFFIXES`, :data:`WRITE_FORMATS`, :func:`sniff_suffix`)
and of the size limits every reader checks *before* it allocates (:data:`MAX_PIXELS`,
:data:`MAX_VOXELS`, :data:`MIN_PIXEL_MM`, :data:`MAX_PIXEL_MM`). It imports no numpy, PIL or
tifffile at module level, so the CLI can import the registry while it starts.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrkit.errors import FormatError, InputError
from cxrkit.files import atomic_path, native_stderr_to_log, to_json

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

KINDS = ("display", "line_integral", "intensity", "mask", "thickness")

# ---- the registry of file formats (the one source of truth) -------------------------------------

RADIOGRAPH_SUFFIXES = (".png", ".tif", ".tiff", ".dcm", ".dicom", ".mha", ".mhd")
"""Suffixes of the radiograph files cxrkit reads (files are told apart by magic bytes)."""
NIFTI_SUFFIXES = (".nii", ".nii.gz")
VOLUME_SUFFIXES = (*NIFTI_SUFFIXES, ".mha", ".mhd", ".nrrd", ".nhdr")
"""Suffixes of the CT / label volume files cxrkit reads (a DICOM series is a folder)."""
TIFF_SUFFIXES = (".tif", ".tiff")
RECORD_SUFFIXES = (".jsonl", ".json", ".ndjson")
"""Suffixes of files holding JSON Lines records."""
WRITE_FORMATS = {"tiff": ".tiff", "tif": ".tiff", "png": ".png", "dicom": ".dcm", "dcm": ".dcm"}
"""``--format`` names → the suffix of the file written."""
WRITE_SUFFIXES = (".tif", ".tiff", ".png", ".dcm")
"""Suffixes :func:`write_radiograph` writes (an ``-o`` with one of them names a file)."""
DOUBLE_SUFFIXES = (".nii.gz", ".tar.gz")
"""Two-part suffixes that name one format (a file's stem drops both parts)."""
DICOM_DIR_SUFFIXES = (".dcm", "")
"""Suffixes of the files of a DICOM series folder (many series have files without suffix)."""

# Magic bytes of the files cxrkit reads, and the suffix they stand for: (offset, bytes, suffix).
MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"II*\x00", ".tiff"),
    (0, b"MM\x00*", ".tiff"),
    (0, b"\x89PNG\r\n\x1a\n", ".png"),
    (128, b"DICM", ".dcm"),
    (0, b"\x1f\x8b", ".nii.gz"),
    (344, b"n+1\x00", ".nii"),
    (0, b"NRRD", ".nrrd"),
    (0, b"ObjectType", ".mha"),
)


def patterns(suffixes: tuple[str, ...]) -> tuple[str, ...]:
    """``fnmatch`` patterns (``*.png`` …) of a suffix list, for taking inputs from a folder."""
    return tuple(f"*{s}" for s in suffixes if s)


RADIOGRAPH_PATTERNS = patterns(RADIOGRAPH_SUFFIXES)
VOLUME_PATTERNS = patterns(VOLUME_SUFFIXES)


def has_suffix(path: str | Path, suffixes: tuple[str, ...]) -> bool:
    """Whether a file name ends with one of ``suffixes`` (case-insensitive; ``.nii.gz`` works)."""
    return Path(path).name.lower().endswith(tuple(s for s in suffixes if s))


def is_dicom_dir(path: Path) -> bool:
    """A folder is one CT (a DICOM series) when it holds .dcm files or extension-less files."""
    return any(c.is_file() and (c.suffix.lower() in DICOM_DIR_SUFFIXES or c.name.isdigit())
               for c in path.iterdir())


def sniff_suffix(head: bytes) -> str | None:
    """The file suffix matching the magic bytes at the start of a file, or None if unknown."""
    for offset, magic, suffix in MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return suffix
    return None


# ---- limits checked before any allocation --------------------------------------------------------

MAX_PIXELS = 8192 * 8192
"""Most pixels one radiograph (one 2-D image or page) may declare: 8192² ≈ 67 M (268 MB float32).
Files declaring more are refused before their pixels are decoded (decompression bombs)."""
MAX_VOXELS = 1024 * 1024 * 1024
"""Most voxels a volume (or a stack of label maps) may declare: 2³⁰ ≈ 1.07 G (4 GiB float32)."""
MIN_PIXEL_MM = 0.01
"""Smallest radiograph pixel spacing accepted (mm); smaller values drive huge filter kernels."""
MAX_PIXEL_MM = 100.0
"""Largest radiograph pixel spacing accepted (mm)."""


def check_pixels(shape: tuple[int, ...], *, path: str | None = None, what: str = "image") -> None:
    """Refuse a declared image size over :data:`MAX_PIXELS` (or an empty one), before allocating.

    Raises:
        FormatError: a non-positive size, or more than :data:`MAX_PIXELS` pixels.
    """
    _check_size(shape, MAX_PIXELS, "pixels", "MAX_PIXELS", path=path, what=what)


def check_voxels(shape: tuple[int, ...], *, path: str | None = None, what: str = "volume") -> None:
    """Refuse a declared volume size over :data:`MAX_VOXELS` (or an empty one), before allocating.

    Raises:
        FormatError: a non-positive size, or more than :data:`MAX_VOXELS` voxels.
    """
    _check_size(shape, MAX_VOXELS, "voxels", "MAX_VOXELS", path=path, what=what)


def _check_size(shape: tuple[int, ...], limit: int, unit: str, name: str, *, path: str | None,
                what: str) -> None:
    dims = [int(s) for s in shape]
    shown = "×".join(map(str, dims))
    if any(s <= 0 for s in dims):
        raise FormatError(f"{what} declares an empty size {shown}", path=path)
    if math.prod(dims) > limit:
        raise FormatError(f"{what} declares {shown} {unit}, over the limit of {limit:,} ({name})",
                          path=path)


def check_spacing(spacing: Any, *, path: str | None = None,
                  what: str = "pixel spacing") -> tuple[float, float] | None:
    """Validate a radiograph's ``(row, col)`` spacing in mm (None passes through).

    Raises:
        InputError: not two numbers, non-finite, or outside [:data:`MIN_PIXEL_MM`,
            :data:`MAX_PIXEL_MM`].
    """
    if spacing is None:
        return None
    try:
        row, col = (float(s) for s in spacing)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be two numbers (row, col), got {spacing!r}"[:160],
                         path=path) from None
    for v in (row, col):
        if not (math.isfinite(v) and MIN_PIXEL_MM <= v <= MAX_PIXEL_MM):
            raise InputError(
                f"{what} {row:g}×{col:g} mm is outside {MIN_PIXEL_MM:g}–{MAX_PIXEL_MM:g} mm",
                path=path)
    return (row, col)


def one_line(exc: BaseException, limit: int = 200) -> str:
    """A decoder's exception as one line of text: ``Type: first meaningful line``."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    return f"{type(exc).__name__}: {text}"[:limit] if text else type(exc).__name__


def sitk_message(exc: BaseException, limit: int = 200) -> str:
    """What a SimpleITK exception says, in one line, without source file names and addresses.

    SimpleITK raises ``RuntimeError("Exception thrown in SimpleITK …: /path/x.cxx:77:\\nITK ERROR:
    Image(0x…): the reason")``: keep the reason.
    """
    import re

    parts = []
    for raw in str(exc).splitlines():
        line = raw.strip()
        if not line or line.startswith("Exception thrown in SimpleITK"):
            continue
        line = re.sub(r"\b(ITK ERROR|itk::ERROR|sitk::ERROR|ERROR):\s*", "", line)
        line = re.sub(r"\w+\(0x[0-9a-fA-F]+\):\s*", "", line)
        parts.append(line)
    text = "; ".join(parts) or "SimpleITK could not read the file"
    return text[:limit]


# ---- radiographs ---------------------------------------------------------------------------------


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

    PNG and integer TIFF are scaled to [0, 1] by their bit depth (RGB/RGBA → luminance), except
    uint8 masks written by cxrkit, which keep their 0/1 values; DICOM gets the modality LUT, the
    VOI LUT or window, and MONOCHROME1 inversion. The declared size is checked against
    :data:`MAX_PIXELS` before any pixel is decoded.

    Raises:
        InputError: missing file, not one 2-D image (e.g. a multi-page TIFF), NaN or infinite
            pixels, or a pixel spacing outside [:data:`MIN_PIXEL_MM`, :data:`MAX_PIXEL_MM`].
        FormatError: unknown, corrupt, truncated, complex-valued or oversized file.
    """
    import numpy as np

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
    except MemoryError as exc:
        raise FormatError("image too large to decode in memory", path=str(p)) from exc
    except Exception as exc:  # decoders raise many types on corrupt data
        raise FormatError(f"cannot decode image: {one_line(exc)}", path=str(p)) from exc
    if rg.pixels.ndim != 2 or min(rg.pixels.shape) < 2:
        raise InputError(f"expected a 2-D image, got shape {rg.pixels.shape}", path=str(p))
    if np.iscomplexobj(rg.pixels):
        raise FormatError("image has complex-valued pixels", path=str(p))
    if not np.isfinite(rg.pixels).all():
        raise InputError("image contains NaN or infinite pixels", path=str(p))
    rg.spacing_mm = check_spacing(rg.spacing_mm, path=str(p))
    rg.pixels = np.ascontiguousarray(rg.pixels, dtype=np.float32)
    return rg


def write_radiograph(
    path: str | Path, image: Radiograph, *, record: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a radiograph atomically, in the format given by the suffix.

    ``.tif``/``.tiff``: float32, lossless, ImageDescription JSON and resolution tags (default);
    a ``mask`` of small integers (0/1) is stored as uint8 with deflate compression.
    ``.png``: 16-bit gray for ``display``; 8-bit 0/1 for a binary ``mask`` (values clipped to
    [0, 1]). ``.dcm``: 16-bit MONOCHROME2 Secondary Capture with pixel spacing and no patient data.

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
            with _pil_open(p) as im:
                return _parse_meta(im.info.get("cxrkit", ""))
    except (OSError, ValueError, FormatError):
        return {}
    return {}


def tiff_description(meta: dict[str, Any]) -> str:
    """The ImageDescription text of a cxrkit TIFF: ``{"cxrkit": meta}`` as ASCII JSON.

    A literal ``"shape":`` would make tifffile take the text for its own "shaped" metadata (and
    ``tifffile.imread`` fail with ``KeyError: 'shape'``), so it is written ``"\\u0073hape":``: the
    same JSON to any parser. The replacement is safe anywhere in JSON text: the character after
    a ``"`` that is followed by ``hape"`` is always inside a string.
    """

    return to_json({"cxrkit": meta}).replace('"shape":', '"\\u0073hape":')


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
    if sp is not None and not isinstance(sp, (list, tuple)):
        raise InputError(f"spacing_mm in the file's record is not a pair: {sp!r}"[:160])
    return Radiograph(pixels, tuple(sp) if sp else None, kind, meta)  # type: ignore[arg-type]


def _finish(arr: np.ndarray, meta: dict[str, Any],
            spacing: tuple[float, float] | None) -> Radiograph:
    """Raw decoded pixels → a Radiograph: gray, complex refused, scaled to [0, 1] by bit depth.

    A uint8 image that cxrkit wrote as a ``mask`` keeps its values (0/1, not 0/255ths).
    """
    import numpy as np

    if np.iscomplexobj(arr):
        raise FormatError("image has complex-valued pixels")
    arr = _gray(arr)
    if meta.get("kind") == "mask" and arr.dtype == np.uint8:
        return _from_meta(arr.astype(np.float32), meta, spacing)
    return _from_meta(_to_unit(arr), meta, spacing)


def _to_unit(arr: np.ndarray) -> np.ndarray:
    """Integer pixels → [0, 1] by their dtype's range; floats unchanged."""
    import numpy as np

    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        return (arr.astype(np.float32) - info.min) / float(info.max - info.min)
    return arr.astype(np.float32)


def _gray(arr: np.ndarray) -> np.ndarray:
    """RGB(A) → luminance (ITU-R 601), alpha dropped; gray unchanged."""
    import numpy as np

    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3].astype(np.float64)
        out = rgb @ np.array([0.299, 0.587, 0.114])
        return out.astype(arr.dtype) if np.issubdtype(arr.dtype, np.integer) else out
    if arr.ndim == 3 and arr.shape[-1] == 2:  # gray + alpha
        return arr[..., 0]
    return arr


def _pil_open(path: Path) -> Any:
    """``PIL.Image.open`` with its decompression-bomb checks as FormatError, before decoding."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise FormatError(f"image declares too many pixels ({one_line(exc, 120)})",
                              path=str(path)) from exc
    try:
        check_pixels((im.height, im.width), path=str(path))
        if getattr(im, "n_frames", 1) > 1:
            raise InputError(f"image has {im.n_frames} frames; expected one radiograph",
                             path=str(path))
    except BaseException:
        im.close()
        raise
    return im


def _read_pil(path: Path) -> Radiograph:
    import numpy as np

    with _pil_open(path) as im:
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
    return _finish(arr, meta, None)


def _read_tiff(path: Path) -> Radiograph:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        pages = [p for p in tif.pages if not getattr(p, "is_reduced", False)]
        if len(pages) > 1:
            raise InputError(
                f"TIFF holds {len(pages)} pages; a radiograph is one image", path=str(path),
                hint="split the stack into single images (a label stack is read with its record)")
        page = tif.pages.first
        check_pixels((page.imagelength, page.imagewidth), path=str(path))
        if page.dtype is not None and page.dtype.kind == "c":
            raise FormatError("TIFF has complex-valued pixels", path=str(path))
        meta = _parse_meta(page.description)
        arr = page.asarray()
        spacing = _tiff_spacing(page)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    return _finish(arr, meta, spacing)


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
    import numpy as np
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    if "PixelData" not in ds:
        raise FormatError("DICOM file holds no image", path=str(path))
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise InputError("multi-frame DICOM is not a single radiograph", path=str(path))
    check_pixels((int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)), path=str(path))
    try:
        raw = ds.pixel_array
    except Exception as exc:  # no decoder for the transfer syntax, or corrupt compressed data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", None) or str(syntax or "unknown")
        raise FormatError(f"cannot decode DICOM pixel data ({name}): {one_line(exc, 120)}",
                          path=str(path)) from exc
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


def sitk_header(path: Path) -> Any:
    """A SimpleITK reader with the file's header read (size, spacing, pixel type), no pixels.

    Raises:
        FormatError: SimpleITK cannot read the header (the message says why, in one line).
    """
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise FormatError(f"cannot read file: {sitk_message(exc, 160)}", path=str(path)) from exc
    return reader


def sitk_pixel_problem(reader: Any) -> str | None:
    """What makes a SimpleITK image's pixels unusable as one scalar channel, or None."""
    import SimpleITK as sitk

    pixel_id = reader.GetPixelID()
    if pixel_id in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        return "complex-valued voxels or pixels"
    if reader.GetNumberOfComponents() != 1:
        return f"{reader.GetNumberOfComponents()} components per pixel, not one scalar channel"
    return None


def _read_sitk(path: Path) -> Radiograph:
    import numpy as np
    import SimpleITK as sitk

    reader = sitk_header(path)
    size = tuple(int(s) for s in reader.GetSize())
    if len(size) == 3 and size[2] == 1:
        size = size[:2]
    if len(size) != 2:
        raise InputError(f"expected a 2-D image, got size {size}", path=str(path))
    check_pixels(size[::-1], path=str(path))
    problem = sitk_pixel_problem(reader)
    if problem:
        raise FormatError(f"image has {problem}", path=str(path))
    # the header's spacing: ITK's read turns a negative one positive, hiding a broken header
    check_spacing(tuple(float(v) for v in reader.GetSpacing()[1::-1]), path=str(path))
    try:
        with native_stderr_to_log(__name__):
            image = reader.Execute()
    except RuntimeError as exc:
        raise FormatError(f"cannot read image: {sitk_message(exc, 160)}", path=str(path)) from exc
    arr = sitk.GetArrayFromImage(image)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    sx, sy = image.GetSpacing()[:2]
    return Radiograph(_to_unit(np.asarray(arr)), (float(sy), float(sx)), "display", {})


def _mask_dtype(pixels: np.ndarray) -> Any:
    """uint8 when every value is an integer in 0..255 (masks: 0/1), else None (keep float)."""
    import numpy as np

    if pixels.dtype == np.bool_:
        return np.uint8
    if pixels.size and np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= 255 \
            and np.array_equal(pixels, np.round(pixels)):
        return np.uint8
    return None


def _tiff_kwargs(spacing_mm: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"photometric": "minisblack", "metadata": None, "software": "cxrkit"}
    if spacing_mm:
        row_mm, col_mm = spacing_mm
        kwargs["resolution"] = (10.0 / col_mm, 10.0 / row_mm)  # pixels per cm, (x, y)
        kwargs["resolutionunit"] = "CENTIMETER"
    return kwargs


def _write_tiff(tmp: Path, image: Radiograph, meta: dict[str, Any]) -> None:
    import numpy as np
    import tifffile

    kwargs = _tiff_kwargs(image.spacing_mm)
    small = _mask_dtype(np.asarray(image.pixels)) if image.kind == "mask" else None
    if small is not None:
        data = np.ascontiguousarray(image.pixels, dtype=small)
        kwargs["compression"] = "zlib"
    else:
        data = np.ascontiguousarray(image.pixels, dtype=np.float32)
    tifffile.imwrite(tmp, data, description=tiff_description(meta), **kwargs)


def _write_png(tmp: Path, image: Radiograph, meta: dict[str, Any]) -> None:
    import numpy as np
    from PIL import Image, PngImagePlugin


    clipped = np.clip(image.pixels, 0.0, 1.0)
    if image.kind == "mask" and _mask_dtype(clipped) is not None:
        data = clipped.astype(np.uint8)  # 0/1: what nnU-Net-style tools expect of a label PNG
    else:
        data = np.round(clipped * 65535.0).astype(np.uint16)
    info = PngImagePlugin.PngInfo()
    info.add_text("cxrkit", to_json({"cxrkit": meta}))
    kwargs: dict[str, Any] = {"pnginfo": info}
    if image.spacing_mm:
        kwargs["dpi"] = (25.4 / image.spacing_mm[1], 25.4 / image.spacing_mm[0])
    Image.fromarray(data).save(tmp, format="PNG", **kwargs)


def _write_dicom(tmp: Path, image: Radiograph, meta: dict[str, Any]) -> None:
    """A minimal Secondary Capture object: pixels, spacing, provenance; no patient data."""
    import datetime

    import numpy as np
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


# ---- stacks of label maps ------------------------------------------------------------------------


def write_stack(
    path: str | Path, stack: np.ndarray, spacing_mm: tuple[float, float] | None,
    meta: dict[str, Any], *, overwrite: bool = False,
) -> Path:
    """Write an ``(N, H, W)`` stack (e.g. projected label maps) as one multi-page TIFF, atomically.

    With ``meta["kind"] == "mask"`` and integer values in 0..255 (0/1 masks) the pages are uint8;
    anything else (thickness in mm) stays float32. Every page is deflate-compressed (lossless;
    read by tifffile, SimpleITK, PIL, ImageJ/Fiji). The metadata (``label_ids``, ``label_names``,
    ``kind``) goes into the first page's ImageDescription like :func:`write_radiograph`.
    """
    import numpy as np
    import tifffile


    target = Path(path)
    arr = np.asarray(stack)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(f"a stack is (N, H, W), got shape {arr.shape}", path=str(target))
    small = _mask_dtype(arr) if meta.get("kind") == "mask" else None
    data = np.ascontiguousarray(arr, dtype=small or np.float32)
    full = {"spacing_mm": spacing_mm, **meta}
    with atomic_path(target, overwrite=overwrite) as tmp:
        tifffile.imwrite(tmp, data, description=tiff_description(full), compression="zlib",
                         **_tiff_kwargs(spacing_mm))
    return target


def read_stack(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a TIFF stack written by :func:`write_stack`: ``(N, H, W)`` float32 and its metadata.

    uint8 mask pages keep their values (0/1); float stacks (also those written by older
    versions) are returned as they are. Sizes are checked against :data:`MAX_PIXELS` per page and
    :data:`MAX_VOXELS` in all before decoding.

    Raises:
        FormatError: not a readable TIFF, pages of different sizes, complex or oversized data.
    """
    import numpy as np
    import tifffile

    p = Path(path)
    if not p.is_file():
        raise InputError("no such file", path=str(p))
    try:
        with tifffile.TiffFile(p) as tif:
            pages = [pg for pg in tif.pages if not getattr(pg, "is_reduced", False)]
            first = tif.pages.first
            meta = _parse_meta(first.description)
            shape = (first.imagelength, first.imagewidth)
            check_pixels(shape, path=str(p))
            check_voxels((len(pages), *shape), path=str(p), what="TIFF stack")
            if any((pg.imagelength, pg.imagewidth) != shape for pg in pages):
                raise FormatError("TIFF stack pages differ in size", path=str(p))
            if any(pg.dtype is not None and pg.dtype.kind == "c" for pg in pages):
                raise FormatError("TIFF stack has complex-valued pixels", path=str(p))
            # Page by page: tifffile's series logic would misread old descriptions with "shape".
            data = np.stack([pg.asarray() for pg in pages])
    except (InputError, FormatError):
        raise
    except Exception as exc:
        raise FormatError(f"cannot read TIFF stack: {one_line(exc)}", path=str(p)) from exc
    if data.ndim != 3:
        raise FormatError(f"expected a stack of gray pages, got shape {data.shape}", path=str(p))
    out = data.astype(np.float32, copy=False)
    if not np.isfinite(out).all():
        raise InputError("stack contains NaN or infinite pixels", path=str(p))
    return out, meta


# ---- header checks shared by the volume and radiograph readers -----------------------------------

_META_TYPES = {"MET_UCHAR": 1, "MET_CHAR": 1, "MET_USHORT": 2, "MET_SHORT": 2, "MET_UINT": 4,
               "MET_INT": 4, "MET_ULONG": 8, "MET_LONG": 8, "MET_ULONG_LONG": 8,
               "MET_LONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}


def check_metaimage(path: Path) -> None:
    """Check an uncompressed MetaImage (``.mha``, local data) holds all the bytes it declares.

    SimpleITK prints a multi-line complaint to stderr for a truncated ``.mha`` before it fails;
    this finds the truncation first. Other layouts (compressed, ``.mhd`` + raw) are left to
    SimpleITK.

    Raises:
        FormatError: the file holds fewer data bytes than its header declares.
    """
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    fields: dict[str, str] = {}
    offset = 0
    for raw in head.splitlines(keepends=True):
        offset += len(raw)
        key, sep, value = raw.decode("latin-1").partition("=")
        if not sep:
            return
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break
    else:
        return
    if fields.get("ElementDataFile") != "LOCAL" or fields.get("CompressedData", "False") == "True":
        return
    if "HeaderSize" in fields or fields.get("ElementType") not in _META_TYPES:
        return
    try:
        dims = [int(v) for v in fields.get("DimSize", "").split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
    except ValueError:
        return
    declared = math.prod(dims) * channels * _META_TYPES[fields["ElementType"]]
    have = path.stat().st_size - offset
    if dims and have < declared:
        raise FormatError(f"truncated MetaImage: {have:,} of {declared:,} data bytes",
                          path=str(path))
