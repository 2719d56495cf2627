"""File-format interoperability and hostile inputs for the readers and writers (issue #19 §2–3).

Every bad file is built here, on the fly; nothing is committed.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

import cxrkit.io as cio
from cxrkit.errors import FormatError, InputError
from cxrkit.io import (
    MAX_PIXELS,
    Radiograph,
    read_meta,
    read_radiograph,
    read_stack,
    write_radiograph,
    write_stack,
)
from cxrkit.volume import read_volume

RECORD = {"id": "n1", "nodule": {"shape": "spiculated", "diameter_mm": 12.0},
          "boxes": [{"shape": "round", "box": [1, 2, 3, 4]}]}


def _img(h: int = 24, w: int = 20) -> np.ndarray:
    return np.linspace(0, 1, h * w, dtype=np.float32).reshape(h, w)


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text and ".cxx" not in text, text
    return text


# ---- TIFF interoperability -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["display", "line_integral", "intensity", "mask", "thickness"])
def test_every_tiff_kind_reads_in_tifffile_sitk_and_pil(tmp_path: Path, kind: str) -> None:
    import SimpleITK as sitk
    import tifffile
    from PIL import Image

    pixels = (_img() > 0.5).astype(np.float32) if kind == "mask" else _img() * 3
    path = write_radiograph(tmp_path / f"{kind}.tiff", Radiograph(pixels, (0.5, 0.25), kind),
                            record=RECORD)
    # tifffile took a description with a "shape" key for its own metadata: KeyError: 'shape'.
    assert np.array_equal(tifffile.imread(path), pixels)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), pixels)
    with Image.open(path) as im:
        assert np.array_equal(np.asarray(im, dtype=np.float32), pixels)
    with tifffile.TiffFile(path) as tif:
        assert not tif.pages.first.is_shaped
        assert '"shape":' not in tif.pages.first.description
    meta = read_meta(path)
    assert meta["nodule"]["shape"] == "spiculated" and meta["boxes"][0]["shape"] == "round"
    back = read_radiograph(path)
    assert back.kind == kind and np.array_equal(back.pixels, pixels)
    assert back.spacing_mm == (0.5, 0.25)


def test_mask_tiff_is_uint8_and_compressed(tmp_path: Path) -> None:
    import tifffile

    mask = np.zeros((256, 256), np.float32)
    mask[40:90, 100:160] = 1
    path = write_radiograph(tmp_path / "m.tiff", Radiograph(mask, None, "mask"))
    with tifffile.TiffFile(path) as tif:
        assert tif.pages.first.dtype == np.uint8 and tif.pages.first.compression == 8
    assert path.stat().st_size < mask.size // 20


def test_old_tiffs_with_a_literal_shape_key_still_read(tmp_path: Path) -> None:
    import tifffile

    record = {"kind": "line_integral", "spacing_mm": [0.5, 0.5], **RECORD}
    old = tmp_path / "old.tiff"
    tifffile.imwrite(old, _img(), description=json.dumps({"cxrkit": record}), metadata=None)
    assert read_meta(old)["nodule"]["shape"] == "spiculated"
    assert np.array_equal(read_radiograph(old).pixels, _img())
    stack = np.stack([_img(), 1 - _img()])
    tifffile.imwrite(tmp_path / "old_stack.tiff", stack,
                     description=json.dumps({"cxrkit": {"shape": [2], "label_ids": [1, 2]}}),
                     metadata=None)
    back, meta = read_stack(tmp_path / "old_stack.tiff")
    assert np.array_equal(back, stack) and meta["label_ids"] == [1, 2]


def test_label_mask_stack_is_uint8_compressed_with_names(tmp_path: Path) -> None:
    import SimpleITK as sitk
    import tifffile
    from PIL import Image

    rng = np.random.default_rng(0)
    stack = np.zeros((12, 128, 128), np.float32)
    for i in range(12):
        r, c = rng.integers(10, 90, 2)
        stack[i, r:r + 30, c:c + 25] = 1
    meta = {"kind": "mask", "label_ids": list(range(1, 13)),
            "label_names": [f"structure {i}" for i in range(1, 13)]}
    path = write_stack(tmp_path / "labels.tiff", stack, (0.7, 0.7), meta)
    assert path.stat().st_size < stack.size // 20  # uint8 + deflate; float32 was 4 bytes/pixel
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 12
        assert all(p.dtype == np.uint8 and p.compression == 8 for p in tif.pages)
    assert np.array_equal(tifffile.imread(path), stack)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), stack)
    with Image.open(path) as im:
        assert im.n_frames == 12
    back, got = read_stack(path)
    assert back.dtype == np.float32 and np.array_equal(back, stack)
    assert got["label_names"][0] == "structure 1" and got["kind"] == "mask"
    assert got["spacing_mm"] == [0.7, 0.7]


def test_thickness_stack_stays_float32(tmp_path: Path) -> None:
    import tifffile

    stack = np.stack([_img() * 40.5, _img() * 3.25])
    path = write_stack(tmp_path / "t.tiff", stack, None, {"kind": "thickness", "label_ids": [1, 2]})
    with tifffile.TiffFile(path) as tif:
        assert tif.pages.first.dtype == np.float32
    assert np.array_equal(tifffile.imread(path), stack)
    assert np.array_equal(read_stack(path)[0], stack)


def test_old_uncompressed_float_stack_reads(tmp_path: Path) -> None:
    import tifffile

    stack = np.stack([(_img() > 0.3), (_img() > 0.6)]).astype(np.float32)
    tifffile.imwrite(tmp_path / "s.tiff", stack, metadata=None,
                     description=json.dumps({"cxrkit": {"kind": "mask", "label_ids": [3, 4]}}))
    back, meta = read_stack(tmp_path / "s.tiff")
    assert np.array_equal(back, stack) and meta["label_ids"] == [3, 4]


def test_png_masks_are_0_1_and_old_16bit_masks_still_read(tmp_path: Path) -> None:
    from PIL import Image

    mask = (_img() > 0.5).astype(np.float32)
    path = write_radiograph(tmp_path / "m.png", Radiograph(mask, (0.3, 0.3), "mask"))
    with Image.open(path) as im:
        raw = np.asarray(im)
    assert raw.dtype == np.uint8 and set(np.unique(raw)) == {0, 1}
    back = read_radiograph(path)
    assert back.kind == "mask" and np.array_equal(back.pixels, mask)
    # A 16-bit 0/65535 mask from an older cxrkit keeps reading as 0/1.
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("cxrkit", json.dumps({"cxrkit": {"kind": "mask"}}))
    Image.fromarray((mask * 65535).astype(np.uint16)).save(tmp_path / "old.png", pnginfo=info)
    assert np.array_equal(read_radiograph(tmp_path / "old.png").pixels, mask)


# ---- hostile radiographs -------------------------------------------------------------------------


def test_multipage_and_complex_tiff_are_refused(tmp_path: Path) -> None:
    import tifffile

    tifffile.imwrite(tmp_path / "three.tiff", np.zeros((3, 16, 16), np.float32),
                     photometric="minisblack")
    with pytest.raises(InputError, match="3 pages") as exc:
        read_radiograph(tmp_path / "three.tiff")
    _one_line(exc)
    tifffile.imwrite(tmp_path / "c.tiff", np.ones((16, 16), np.complex64))
    with pytest.raises(FormatError, match="complex"):
        read_radiograph(tmp_path / "c.tiff")


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _tiff_header_only(width: int, height: int) -> bytes:
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1),
               (262, 3, 1, 1), (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, height),
               (279, 4, 1, width * height)]
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        ifd += struct.pack("<HHI", tag, typ, count) + (
            struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value))
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 16) + b"\x00" * 8 + ifd


@pytest.mark.parametrize(("name", "blob"), [
    ("bomb.png", _png_header_only(60000, 60000)),
    ("bomb.tiff", _tiff_header_only(60000, 60000)),
])
def test_declared_huge_images_fail_early(tmp_path: Path, name: str, blob: bytes) -> None:
    (tmp_path / name).write_bytes(blob)
    with pytest.raises(FormatError, match="pixels") as exc:
        read_radiograph(tmp_path / name)
    _one_line(exc)


def test_tiny_or_bad_spacing_is_refused(tmp_path: Path) -> None:
    write_radiograph(tmp_path / "a.png", Radiograph(_img(), None, "display"),
                     record={"spacing_mm": [1e-9, 1e-9]})
    with pytest.raises(InputError, match="outside"):
        read_radiograph(tmp_path / "a.png")
    import tifffile

    tifffile.imwrite(tmp_path / "r.tiff", _img(), resolution=(1e8, 1e8),
                     resolutionunit="CENTIMETER")
    with pytest.raises(InputError, match="outside"):
        read_radiograph(tmp_path / "r.tiff")
    with pytest.raises(InputError):
        cio.check_spacing([float("nan"), 1.0])
    assert cio.check_spacing([0.2, 0.1]) == (0.2, 0.1)


def test_nan_tiff_is_refused(tmp_path: Path) -> None:
    import tifffile

    data = _img()
    data[3, 3] = np.nan
    tifffile.imwrite(tmp_path / "n.tiff", data)
    with pytest.raises(InputError, match="NaN"):
        read_radiograph(tmp_path / "n.tiff")


def _dicom(path: Path, *, rows: int = 8, cols: int = 8, syntax: str | None = None) -> None:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if syntax:
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60])
    else:
        ds.PixelData = np.zeros((min(rows, 8), min(cols, 8)), np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_undecodable_jpeg2000_dicom_is_one_line(tmp_path: Path) -> None:
    _dicom(tmp_path / "j2k.dcm", syntax="1.2.840.10008.1.2.4.90")
    with pytest.raises(FormatError, match="cannot decode DICOM") as exc:
        read_radiograph(tmp_path / "j2k.dcm")
    _one_line(exc)


def test_dicom_declaring_huge_size_is_refused(tmp_path: Path) -> None:
    _dicom(tmp_path / "big.dcm", rows=60000, cols=60000)
    with pytest.raises(FormatError, match="MAX_PIXELS"):
        read_radiograph(tmp_path / "big.dcm")


def test_multicomponent_mha_radiograph_is_refused(tmp_path: Path) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.zeros((16, 16, 3), np.float32), isVector=True)
    sitk.WriteImage(image, str(tmp_path / "v.mha"))
    with pytest.raises(FormatError, match="components"):
        read_radiograph(tmp_path / "v.mha")


# ---- hostile volumes -----------------------------------------------------------------------------


def _nifti(data: np.ndarray, code: int, *, pixdim: tuple[float, float, float] = (1, 1, 1),
           dims: tuple[int, ...] | None = None, cut: int | None = None,
           header_only: bool = False) -> bytes:
    h = bytearray(348)
    struct.pack_into("<i", h, 0, 348)
    shape = dims or data.shape[::-1]
    struct.pack_into("<8h", h, 40, len(shape), *shape, *([1] * (7 - len(shape))))
    struct.pack_into("<hh", h, 70, code, data.dtype.itemsize * 8)
    struct.pack_into("<8f", h, 76, 1.0, *pixdim, 1, 1, 1, 1)
    struct.pack_into("<f", h, 108, 352.0)
    struct.pack_into("<2f", h, 112, 1.0, 0.0)
    h[344:348] = b"n+1\x00"
    body = data.tobytes()
    return bytes(h) + b"\x00" * 4 + (b"" if header_only else body[:cut])


CT = (np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) - 60) * 10


def _with(value: float) -> np.ndarray:
    out = CT.copy()
    out[1, 2, 3] = value
    return out


@pytest.mark.parametrize(("name", "blob", "error", "match"), [
    ("nan.nii", _nifti(_with(np.nan), 16), InputError, "NaN"),
    ("inf.nii.gz", gzip.compress(_nifti(_with(np.inf), 16)), InputError, "NaN or infinite"),
    ("cut.nii", _nifti(CT, 16, cut=100), FormatError, "truncated"),
    ("header.nii", _nifti(CT, 16, header_only=True), FormatError, "truncated"),
    ("zero.nii", _nifti(CT, 16, pixdim=(0, 1, 1)), InputError, "pixdim"),
    ("nan_sp.nii", _nifti(CT, 16, pixdim=(1, float("nan"), 1)), InputError, "pixdim"),
    ("neg.nii.gz", gzip.compress(_nifti(CT, 16, pixdim=(1, 1, -2))), InputError, "pixdim"),
    ("complex.nii", _nifti((CT + 1j * CT).astype(np.complex64), 32), FormatError, "complex"),
    ("bomb.nii.gz", gzip.compress(_nifti(CT, 16, dims=(4000, 4000, 4000), header_only=True)),
     FormatError, "MAX_VOXELS"),
])
def test_bad_nifti(tmp_path: Path, name: str, blob: bytes, error: type, match: str) -> None:
    (tmp_path / name).write_bytes(blob)
    with pytest.raises(error, match=match) as exc:
        read_volume(tmp_path / name)
    _one_line(exc)


def test_good_nifti_still_reads(tmp_path: Path) -> None:
    (tmp_path / "ok.nii").write_bytes(_nifti(CT, 16, pixdim=(0.5, 0.7, 2.0)))
    (tmp_path / "ok.nii.gz").write_bytes(gzip.compress(_nifti(CT.astype(np.int16), 4)))
    vol = read_volume(tmp_path / "ok.nii")
    assert vol.shape == (4, 5, 6) and np.allclose(sorted(vol.spacing_mm), [0.5, 0.7, 2.0])
    assert np.array_equal(np.sort(vol.array.ravel()), np.sort(CT.ravel()))
    assert read_volume(tmp_path / "ok.nii.gz").shape == (4, 5, 6)


def _mha(extra: str, data: bytes, dims: str = "6 5 4") -> bytes:
    return (f"ObjectType = Image\nNDims = 3\nDimSize = {dims}\nElementType = MET_FLOAT\n{extra}"
            "ElementDataFile = LOCAL\n").encode() + data


@pytest.mark.parametrize(("name", "blob", "error", "match"), [
    ("neg.mha", _mha("ElementSpacing = -1 1 1\n", CT.tobytes()), InputError, "spacing"),
    ("zero.mha", _mha("ElementSpacing = 0 1 1\n", CT.tobytes()), InputError, "spacing"),
    ("rgb.mha", _mha("ElementNumberOfChannels = 3\n", np.repeat(CT, 3).tobytes()),
     FormatError, "components"),
    ("cut.mha", _mha("", CT.tobytes()[:50]), FormatError, "truncated"),
    ("bomb.mha", _mha("", b"", dims="60000 60000 60000"), FormatError, "MAX_VOXELS"),
    ("nan.mha", _mha("", _with(np.nan).tobytes()), InputError, "NaN"),
])
def test_bad_metaimage(tmp_path: Path, name: str, blob: bytes, error: type, match: str) -> None:
    (tmp_path / name).write_bytes(blob)
    with pytest.raises(error, match=match) as exc:
        read_volume(tmp_path / name)
    _one_line(exc)


def test_simpleitk_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "junk.nrrd").write_bytes(b"NRRD0004\ntype: float\ndimension: 3\n\n")
    with pytest.raises(FormatError) as exc:
        read_volume(tmp_path / "junk.nrrd")
    text = _one_line(exc)
    assert "0x" not in text and "Exception thrown" not in text
    message = cio.sitk_message(RuntimeError(
        "Exception thrown in SimpleITK ImageFileReader_Execute: /x/itkImageBase.hxx:77:\n"
        "ITK ERROR: Image(0x5652): Zero-valued spacing is not supported.\nRefusing to change"))
    assert message == "Zero-valued spacing is not supported.; Refusing to change"


def _series(folder: Path, positions: list[float]) -> list[Path]:
    """A small CT series written by SimpleITK's GDCM writer (which sets the C locale to "C",
    turning Python's default text encoding into ASCII for the rest of the run: restored here)."""
    import locale

    saved = locale.setlocale(locale.LC_ALL)
    try:
        return _write_series(folder, positions)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_series(folder: Path, positions: list[float]) -> list[Path]:
    import SimpleITK as sitk

    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for k, z in enumerate(positions):
        img = sitk.GetImageFromArray(np.full((8, 8), k, np.int16))
        img.SetMetaData("0020|000e", "1.2.3.4")
        img.SetMetaData("0008|0018", f"1.2.3.4.{k + 1}")
        img.SetMetaData("0020|0013", str(k + 1))
        img.SetMetaData("0020|0032", f"0\\0\\{z}")
        img.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        img.SetMetaData("0008|0060", "CT")
        files.append(folder / f"{k:03d}.dcm")
        writer.SetFileName(str(files[-1]))
        writer.Execute(img)
    return files


def test_dicom_series_checks(tmp_path: Path) -> None:
    import pydicom

    _series(tmp_path / "ok", [0.0, 2.5, 5.0, 7.5, 10.0])
    assert read_volume(tmp_path / "ok").shape == (5, 8, 8)
    files = _series(tmp_path / "gap", [0.0, 2.5, 5.0, 7.5, 10.0])
    files[2].unlink()
    with pytest.raises(InputError, match="1 missing slice") as exc:
        read_volume(tmp_path / "gap")
    _one_line(exc)
    files = _series(tmp_path / "dup", [0.0, 2.5, 5.0, 7.5])
    shutil.copy(files[1], tmp_path / "dup" / "copy.dcm")
    with pytest.raises(InputError, match="duplicated"):
        read_volume(tmp_path / "dup")
    files = _series(tmp_path / "nopix", [0.0, 2.5, 5.0, 7.5])
    ds = pydicom.dcmread(files[2])
    del ds.PixelData
    ds.save_as(files[2])
    with pytest.raises(FormatError, match="no pixel data"):
        read_volume(tmp_path / "nopix")


# ---- one registry of formats ---------------------------------------------------------------------


def test_one_registry_of_suffixes() -> None:
    import cxrkit.cli._options as options
    import cxrkit.cli.evaluate as evaluate
    import cxrkit.cli.synth as synth
    import cxrkit.pipe as pipe
    import cxrkit.volume as volume

    assert volume.VOLUME_SUFFIXES is cio.VOLUME_SUFFIXES
    assert pipe.sniff_suffix is cio.sniff_suffix
    assert synth.RADIOGRAPH_PATTERNS is cio.RADIOGRAPH_PATTERNS
    assert synth.CT_PATTERNS is cio.VOLUME_PATTERNS
    assert options.IMAGE_SUFFIXES is cio.WRITE_SUFFIXES
    assert evaluate.RECORD_SUFFIXES is cio.RECORD_SUFFIXES
    assert options.format_suffix("dicom") == cio.WRITE_FORMATS["dicom"]
    # No other module spells out its own list of image or volume suffixes.
    literal = re.compile(r"""["']\*?\.(png|tiff?|dcm|nii|mha|mhd|nrrd)["']\s*,""")
    root = Path(cio.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.name != "io.py" and literal.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_importing_the_registry_does_not_import_numpy() -> None:
    code = "import sys, cxrkit.io, cxrkit.pipe; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_limits_are_documented() -> None:
    readme = (Path(cio.__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    for name in ("MAX_PIXELS", "MAX_VOXELS", "MIN_PIXEL_MM"):
        assert name in readme
    assert MAX_PIXELS < 60000 * 60000
