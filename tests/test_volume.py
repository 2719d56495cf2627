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
