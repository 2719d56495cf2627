from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrkit.errors import FormatError, InputError, OutputError
from cxrkit.io import (
    Radiograph,
    read_meta,
    read_radiograph,
    read_stack,
    write_radiograph,
    write_stack,
)


def _ramp() -> np.ndarray:
    return np.linspace(0, 1, 48 * 40, dtype=np.float32).reshape(48, 40)


def test_tiff_round_trip_is_lossless_with_metadata(tmp_path: Path) -> None:
    img = Radiograph(_ramp() * 7.5, (0.5, 0.25), "line_integral")
    write_radiograph(tmp_path / "a.tiff", img, record={"id": "a", "project": {"seed": 1}})
    back = read_radiograph(tmp_path / "a.tiff")
    assert np.array_equal(back.pixels, img.pixels)
    assert back.kind == "line_integral" and back.spacing_mm == (0.5, 0.25)
    assert back.meta["project"] == {"seed": 1}
    assert read_meta(tmp_path / "a.tiff")["id"] == "a"


def test_png16_round_trip(tmp_path: Path) -> None:
    img = Radiograph(_ramp(), (0.3, 0.3), "display")
    write_radiograph(tmp_path / "a.png", img, record={"id": "a"})
    back = read_radiograph(tmp_path / "a.png")
    assert np.abs(back.pixels - img.pixels).max() <= 0.5 / 65535 + 1e-7
    assert back.spacing_mm == (0.3, 0.3) and back.meta["id"] == "a"
    with pytest.raises(InputError, match="float format"):
        write_radiograph(tmp_path / "b.png", Radiograph(_ramp(), None, "line_integral"))


def test_png_8bit_and_rgba_become_gray(tmp_path: Path) -> None:
    gray = (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    rgba = np.stack([gray, gray, gray, np.full_like(gray, 255)], -1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "c.png")
    a = read_radiograph(tmp_path / "g.png").pixels
    b = read_radiograph(tmp_path / "c.png").pixels
    assert a.shape == b.shape == (64, 64)
    assert np.allclose(a, gray / 255.0, atol=1e-6)
    assert np.abs(a - b).max() <= 1.0 / 255 + 1e-6


def test_integer_tiff_scaled_by_dtype(tmp_path: Path) -> None:
    import tifffile

    tifffile.imwrite(tmp_path / "i.tif", np.array([[0, 65535], [32768, 0]], np.uint16))
    assert np.allclose(read_radiograph(tmp_path / "i.tif").pixels, [[0, 1], [32768 / 65535, 0]])


def test_dicom_output_has_no_patient_fields(tmp_path: Path) -> None:
    import pydicom

    write_radiograph(tmp_path / "a.dcm", Radiograph(_ramp(), (0.2, 0.2)), record={"id": "a"})
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName"):
        assert keyword not in ds
    back = read_radiograph(tmp_path / "a.dcm")
    assert np.abs(back.pixels - _ramp()).max() < 1e-4 and back.spacing_mm == (0.2, 0.2)


def test_no_overwrite_without_flag(tmp_path: Path) -> None:
    write_radiograph(tmp_path / "a.tiff", Radiograph(_ramp()))
    with pytest.raises(OutputError):
        write_radiograph(tmp_path / "a.tiff", Radiograph(_ramp()))
    write_radiograph(tmp_path / "a.tiff", Radiograph(_ramp() * 0), overwrite=True)
    assert read_radiograph(tmp_path / "a.tiff").pixels.max() == 0


def test_bad_files(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(FormatError):
        read_radiograph(tmp_path / "x.png")
    (tmp_path / "y.tiff").write_bytes(b"hello")
    with pytest.raises(FormatError):
        read_radiograph(tmp_path / "y.tiff")
    with pytest.raises(InputError, match="no such file"):
        read_radiograph(tmp_path / "z.png")


def test_stack_round_trip(tmp_path: Path) -> None:
    stack = np.stack([_ramp(), 1 - _ramp()])
    write_stack(tmp_path / "s.tiff", stack, (0.5, 0.5), {"label_ids": [3, 7]})
    back, meta = read_stack(tmp_path / "s.tiff")
    assert np.array_equal(back, stack) and meta["label_ids"] == [3, 7]


@pytest.mark.realdata
def test_real_dicom_cr_and_monochrome1_trap(shared_data: Path) -> None:
    normal = read_radiograph(shared_data / "dicom-cxr" / "rsna-cr-pa.dcm")
    trap = read_radiograph(shared_data / "dicom-cxr" / "rsna-cr-pa-labelled-monochrome1.dcm")
    assert normal.pixels.shape == (1024, 1024) and normal.spacing_mm == (0.168, 0.168)
    # Same stored pixels, labelled MONOCHROME1: cxrkit must invert so bone stays bright.
    assert np.allclose(trap.pixels, 1.0 - normal.pixels, atol=1.5 / 255)
    # A PA chest: the mediastinum (centre columns) is brighter than the lungs beside it.
    p = normal.pixels
    assert p[300:700, 450:570].mean() > p[300:700, 200:350].mean()
    dx = read_radiograph(shared_data / "dicom-cxr" / "dx-animal-thorax-lateral.dcm")
    assert dx.pixels.shape == (169, 211) and dx.pixels.min() >= 0 and dx.pixels.max() <= 1


@pytest.mark.realdata
def test_real_nih_png(shared_data: Path) -> None:
    files = sorted((shared_data / "nih-cxr14" / "images").glob("*.png"))
    rgba = [f for f in files if Image.open(f).mode == "RGBA"]
    for f in [files[0], *rgba[:1]]:
        img = read_radiograph(f)
        assert img.pixels.shape == (1024, 1024) and img.pixels.dtype == np.float32
        assert img.pixels.min() >= 0 and img.pixels.max() <= 1 and img.spacing_mm is None


def test_mha_radiograph(tmp_path: Path) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(_ramp())
    image.SetSpacing((0.25, 0.5))  # (x = col, y = row)
    sitk.WriteImage(image, str(tmp_path / "r.mha"))
    back = read_radiograph(tmp_path / "r.mha")
    assert np.allclose(back.pixels, _ramp()) and back.spacing_mm == (0.5, 0.25)
