from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from cxrkit.errors import FormatError, InputError
from cxrkit.volume import Volume, read_volume, validate_volume, write_volume


def test_round_trip_and_lps_reorientation(tmp_path: Path) -> None:
    import SimpleITK as sitk

    arr = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 0.7, 2.0))
    img.SetOrigin((10.0, 20.0, 30.0))
    img.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))  # y flipped: stored anterior-to-posterior
    sitk.WriteImage(img, str(tmp_path / "v.mha"))
    vol = read_volume(tmp_path / "v.mha")
    assert np.allclose(vol.direction, np.eye(3))
    assert vol.spacing_mm == (2.0, 0.7, 0.5)
    assert np.array_equal(vol.array, arr[:, ::-1, :])  # rows now run toward posterior
    # The same voxel keeps its world position.
    world_before = np.array([10.0 + 3 * 0.5, 20.0 - 1 * 0.7, 30.0 + 2 * 2.0])
    idx = np.array([3, 5 - 1 - 1, 2, 1.0])  # (w, h, d) after the flip
    assert np.allclose((vol.index_to_world() @ idx)[:3], world_before)
    write_volume(vol, tmp_path / "w.nii.gz")
    again = read_volume(tmp_path / "w.nii.gz")
    assert np.array_equal(again.array, vol.array) and np.allclose(again.origin_mm, vol.origin_mm)


def test_invalid_volumes(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="NaN"):
        validate_volume(Volume(np.full((3, 3, 3), np.nan, np.float32), (1, 1, 1), (0, 0, 0)))
    with pytest.raises(InputError, match="positive"):
        validate_volume(Volume(np.zeros((3, 3, 3), np.float32), (1, 0, 1), (0, 0, 0)))
    with pytest.raises(InputError, match="2-D"):
        validate_volume(Volume(np.zeros((1, 8, 8), np.float32), (1, 1, 1), (0, 0, 0)))
    with pytest.raises(InputError, match="no such"):
        read_volume(tmp_path / "missing.nii.gz")


def test_truncated_and_corrupt_files(tmp_path: Path, phantom_path: Path) -> None:
    data = phantom_path.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError):
        read_volume(tmp_path / "cut.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(gzip.compress(b"not a nifti" * 10))
    with pytest.raises(FormatError):
        read_volume(tmp_path / "junk.nii.gz")
    (tmp_path / "junk.mha").write_bytes(b"ObjectType = Image\nNDims = 3\n")
    with pytest.raises(FormatError):
        read_volume(tmp_path / "junk.mha")


def test_2d_image_is_refused(tmp_path: Path) -> None:
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((16, 16), np.float32)),
                    str(tmp_path / "flat.mha"))
    with pytest.raises(InputError, match="2-D"):
        read_volume(tmp_path / "flat.mha")


def test_several_series_need_a_choice(tmp_path: Path) -> None:
    import locale

    saved = locale.setlocale(locale.LC_ALL)  # GDCM's writer sets the C locale to "C"
    try:
        _several_series(tmp_path)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _several_series(tmp_path: Path) -> None:
    import SimpleITK as sitk

    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for uid in ("1.2.3.1", "1.2.3.2"):
        for k in range(2):
            img = sitk.GetImageFromArray(np.full((8, 8), k, np.int16))
            img.SetMetaData("0020|000e", uid)
            img.SetMetaData("0008|0018", f"{uid}.{k + 1}")
            img.SetMetaData("0020|0032", f"0\\0\\{k}")
            img.SetMetaData("0008|0060", "CT")
            writer.SetFileName(str(tmp_path / f"{uid}-{k}.dcm"))
            writer.Execute(img)
    with pytest.raises(InputError, match="2 DICOM series"):
        read_volume(tmp_path)
    with pytest.raises(InputError, match=r"single slice|no series"):
        read_volume(tmp_path, series="9.9")


@pytest.mark.realdata
def test_real_dicom_series_matches_nifti(shared_data: Path) -> None:
    nii = read_volume(shared_data / "lidc-idri-0001" / "ct.nii.gz")
    dcm = read_volume(shared_data / "lidc-idri-0001" / "dicom")
    assert nii.shape == dcm.shape == (133, 512, 512)
    assert np.array_equal(nii.array, dcm.array)
    assert np.allclose(nii.spacing_mm, dcm.spacing_mm)
    assert np.allclose(nii.origin_mm, dcm.origin_mm, atol=1e-3)
    assert np.allclose(nii.direction, dcm.direction)
    assert nii.array.min() == -2048  # padding outside the scan circle, treated as air later


def _both_readers(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Volume, Volume]:
    """``path`` read by cxrkit's one-pass NIfTI reader and by SimpleITK."""
    import cxrkit.volume as volume

    fast = read_volume(path)
    monkeypatch.setattr(volume, "_FAST_NIFTI", False)
    slow = read_volume(path)
    monkeypatch.setattr(volume, "_FAST_NIFTI", True)
    return fast, slow


def _assert_same(fast: Volume, slow: Volume) -> None:
    assert fast.array.dtype == slow.array.dtype == np.float32
    np.testing.assert_array_equal(fast.array, slow.array)
    assert fast.spacing_mm == slow.spacing_mm and fast.origin_mm == slow.origin_mm
    np.testing.assert_array_equal(fast.direction, slow.direction)


@pytest.mark.parametrize("flip", [(1, 1, 1), (-1, 1, 1), (1, -1, -1), "permuted"])
def test_one_pass_nifti_reader_equals_simpleitk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 flip: tuple[int, int, int] | str) -> None:
    """The one-pass NIfTI reader (no second decompression, no ITK voxel copy) gives exactly
    SimpleITK's volume, for flipped and permuted axes, int16 and float32, .nii and .nii.gz."""
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    hu = rng.integers(-1024, 2000, size=(5, 6, 7)).astype(np.int16)
    for dtype, name in ((np.int16, "a.nii.gz"), (np.float32, "b.nii")):
        image = sitk.GetImageFromArray(hu.astype(dtype))
        image.SetSpacing((0.7, 0.8, 2.5))
        image.SetOrigin((-10.0, 20.0, 30.0))
        if flip == "permuted":
            image.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))
        else:
            image.SetDirection(tuple(float(v) for v in np.diag(flip).ravel()))
        sitk.WriteImage(image, str(tmp_path / name))
        _assert_same(*_both_readers(tmp_path / name, monkeypatch))


def test_one_pass_nifti_reader_applies_scl_slope_as_itk(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Stored values with scl_slope 2 and scl_inter -1024 (a hand-written header) read as
    2 · raw − 1024 by both readers; a truncated copy is refused by the one-pass reader."""
    import struct

    from tests.test_fuzz import nifti_bytes

    raw = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    data = bytearray(nifti_bytes(raw.shape[::-1], np.dtype(np.int16), raw.tobytes()))
    struct.pack_into("<ff", data, 112, 2.0, -1024.0)
    path = tmp_path / "scaled.nii.gz"
    path.write_bytes(gzip.compress(bytes(data), mtime=0))
    fast, slow = _both_readers(path, monkeypatch)
    _assert_same(fast, slow)
    assert fast.array.min() == -1024.0 and fast.array.max() == 2 * 119 - 1024
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(gzip.compress(bytes(data[:-10]), mtime=0))
    with pytest.raises(FormatError, match="truncated"):
        read_volume(cut)


@pytest.mark.realdata
def test_one_pass_nifti_reader_on_the_sample_ct(shared_data: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    _assert_same(*_both_readers(shared_data / "lidc-idri-0001" / "ct.nii.gz", monkeypatch))
