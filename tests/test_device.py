"""cxrkit.device: one resolver for auto/cpu/cuda/cuda:N."""

from __future__ import annotations

import pytest
import torch

from cxrkit.device import check_device_name, resolve_device
from cxrkit.errors import DeviceError

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:-1", "cpu:0", ""])
def test_bad_names_are_device_errors(name: str) -> None:
    with pytest.raises(DeviceError):
        check_device_name(name)


def test_names_are_normalised() -> None:
    assert check_device_name(" CUDA:1 ") == "cuda:1"
    assert resolve_device("cpu") == torch.device("cpu")


@no_cuda
def test_auto_is_the_cpu_without_cuda_and_cuda_is_refused() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    for name in ("cuda", "cuda:0"):
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device(name)


def test_train_config_checks_its_device() -> None:
    from cxrkit.train import TrainConfig

    assert TrainConfig("out", device="CPU").device == "cpu"
    with pytest.raises(DeviceError):
        TrainConfig("out", device="gpu")


def test_detector_size_limit_is_a_geometry_error() -> None:
    from cxrkit.errors import GeometryError
    from cxrkit.geometry import MAX_DETECTOR_PX, Geometry

    Geometry(detector_px=(MAX_DETECTOR_PX, 1))
    with pytest.raises(GeometryError, match="over the limit"):
        Geometry(detector_px=(MAX_DETECTOR_PX + 1, 1))


def test_device_name_on_a_cpu_machine_needs_no_torch() -> None:
    """``auto`` on a machine without an NVIDIA driver is the CPU, answered without importing
    torch (so a CPU render starts fast); ``cpu`` never imports it."""
    import subprocess
    import sys

    code = ("import sys; from cxrkit.device import cuda_possible, device_name; "
            "print(device_name('cpu'), cuda_possible() or device_name('auto'), "
            "'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    first, second, imported = out.stdout.split()
    assert first == "cpu"
    assert second in ("True", "cpu")  # True where a driver is present
    assert imported == "False"
