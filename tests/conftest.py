"""Shared fixtures: tiny synthetic data, and the real data in ../shared/data when present."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import signal

import numpy as np
import pytest

# A suite started in the background of a non-interactive shell (`nohup … &`, some CI runners)
# inherits SIGINT ignored, and so would every command the tests start; cxrkit rightly keeps an
# ignored SIGINT ignored, so the Ctrl-C tests need the ordinary disposition back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; skips when absent, but fails under CI, where the data must be present."""
    if not (SHARED_DATA / "lidc-idri-0001" / "ct.nii.gz").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"real data missing at {SHARED_DATA} (CI must run the real-data tests)")
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def phantom_path(tmp_path: Path) -> Path:
    """A 32³ water cylinder with a bone rod in air, 2 mm voxels, written as NIfTI."""
    from cxrkit.volume import Volume, write_volume

    d, h, w = np.mgrid[0:32, 0:32, 0:32].astype(np.float32)
    hu = np.full((32, 32, 32), -1000.0, dtype=np.float32)
    hu[(h - 15.5) ** 2 + (w - 15.5) ** 2 < 12**2] = 0.0
    hu[((h - 15.5) ** 2 + (w - 20) ** 2 < 2**2) & (d > 4) & (d < 27)] = 1500.0
    path = tmp_path / "phantom.nii.gz"
    write_volume(Volume(hu, (2.0, 2.0, 2.0), (-31.0, -31.0, -31.0)), path)
    return path


@pytest.fixture
def radiograph_path(tmp_path: Path) -> Path:
    """A 64×64 smooth synthetic radiograph (float32 TIFF, display kind)."""
    from cxrkit.io import Radiograph, write_radiograph

    y, x = np.mgrid[0:64, 0:64] / 63.0
    pixels = (0.3 + 0.4 * np.sin(3 * x) * np.cos(2 * y) ** 2).astype(np.float32)
    path = tmp_path / "cxr.tiff"
    write_radiograph(path, Radiograph(pixels, (0.5, 0.5), "display"), record={"id": "cxr"})
    return path
