"""Where models and renderers run: one resolver for ``auto``, ``cpu``, ``cuda`` and ``cuda:N``.

``auto`` is CUDA when present, else the CPU (DESIGN.md §6). Under ``accelerate launch`` each
process takes its own accelerator, as Accelerate does: the device of an initialised
``PartialState``, else ``ACCELERATE_TORCH_DEVICE``, else ``cuda:<LOCAL_RANK mod GPUs>``. A device
that was asked for but is not there is a :class:`~cxrkit.errors.DeviceError`, never a silent
fallback to the CPU.

Only :func:`resolve_device` imports torch; :func:`check_device_name` (the syntax) does not, so
the CLI can refuse ``--device gpu`` before it reads any input, and :func:`device_name` answers
``auto`` on a machine without an NVIDIA driver without importing torch (about 1 s), so a CPU
render starts fast.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from cxrkit.errors import DeviceError

if TYPE_CHECKING:
    import torch

DEVICE_NAMES = ("auto", "cpu", "cuda", "cuda:N")
"""What ``--device`` takes (``N``: a CUDA device index)."""

_PATTERN = re.compile(r"auto|cpu|cuda(?::(\d+))?")


def check_device_name(name: str) -> str:
    """The normalised device name (lower case, no spaces), or a DeviceError for a bad spelling.

    Raises:
        DeviceError: not one of ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
    """
    text = str(name).strip().lower()
    if _PATTERN.fullmatch(text) is None:
        raise DeviceError(f"unknown device '{name}'", hint="use auto, cpu, cuda or cuda:N")
    return text


def accelerate_local_rank() -> int | None:
    """This process's local rank under ``accelerate launch`` (or torchrun), else None."""
    value = os.environ.get("LOCAL_RANK")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def cuda_possible() -> bool:
    """False only where CUDA surely is not: torch not yet imported and, on Linux, no NVIDIA
    driver (``/proc/driver/nvidia`` and ``/dev/nvidia*`` absent). Imports nothing."""
    import sys

    if "torch" in sys.modules or not sys.platform.startswith("linux"):
        return True
    return os.path.exists("/proc/driver/nvidia") or any(
        entry.startswith("nvidia") for entry in _listdir("/dev"))


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def device_name(name: str = "auto") -> str:
    """:func:`resolve_device` as a string (``"cpu"``, ``"cuda:0"``), without importing torch
    where the answer is the CPU anyway (``cpu``, or ``auto`` where :func:`cuda_possible` is
    False).

    Raises:
        DeviceError: as :func:`resolve_device`.
    """
    text = check_device_name(name)
    if text == "cpu" or (text == "auto" and not cuda_possible()):
        return "cpu"
    return str(resolve_device(text))


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device that ``name`` means here, checked to exist.

    Args:
        name: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``. Under
            ``accelerate launch``, ``auto`` and ``cuda`` mean this process's accelerator.

    Returns:
        A ``torch.device``.

    Raises:
        DeviceError: a bad name, CUDA asked for where there is none, or a CUDA index beyond the
            devices present.
    """
    import torch

    text = check_device_name(name)
    if text == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    count = torch.cuda.device_count() if available else 0
    if text == "auto" and not available:
        return torch.device("cpu")
    if not available:
        raise DeviceError(f"--device {text}: CUDA is not available here",
                          hint="use --device cpu or auto")
    if text.startswith("cuda:"):
        index = int(text.split(":")[1])
        if index >= count:
            raise DeviceError(f"--device {text}: there {'is' if count == 1 else 'are'} only "
                              f"{count} CUDA device{'' if count == 1 else 's'} (cuda:0.."
                              f"cuda:{count - 1})", hint="pick an index that exists")
        return torch.device("cuda", index)
    return _process_device(count)


def _process_device(count: int) -> torch.device:
    """The CUDA device of this process: Accelerate's when it has chosen one, else by local
    rank (``cuda:0`` outside ``accelerate launch``)."""
    import torch

    try:
        from accelerate.state import PartialState

        if PartialState._shared_state and PartialState().device is not None:
            device = PartialState().device
            if device.type == "cuda":
                return torch.device(device)
    except ImportError:  # accelerate is a dependency; without it, fall back to the rank
        pass
    env = os.environ.get("ACCELERATE_TORCH_DEVICE", "")
    if env.startswith("cuda:"):
        return resolve_device(env)
    rank = accelerate_local_rank()
    return torch.device("cuda", (rank or 0) % count)
