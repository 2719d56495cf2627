"""Display radiographs for training, and the resizers every model family uses.

Images are ``(H, W)`` float32 in [0, 1], bone bright (see :mod:`cxrkit.io`). One torch core,
:func:`resize_tensor`, does the resampling; :func:`resize`, :func:`resize_short_side` and
:func:`bicubic_upsample` are its uses. (``degrade``'s ``resize`` operator resamples with Pillow's
kernels instead: it is a degradation with a recorded kernel, not a data helper.)

Importing this module does not import torch; the resizers do when they run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxrkit.errors import InputError

if TYPE_CHECKING:
    import torch


def load_display(paths: Sequence[str | Path], *,
                 who: str = "learned degraders train") -> list[np.ndarray]:
    """Read display radiographs into ``(H, W)`` float32 arrays in [0, 1].

    Args:
        paths: image files (8/16-bit PNG, TIFF, DICOM …).
        who: what trains on them, for the error message (``"the enhancer trains"``).

    Raises:
        InputError: a file that is not a display image (e.g. a line-integral DRR).
    """
    from cxrkit.io import read_radiograph

    images = []
    for p in paths:
        rg = read_radiograph(p)
        if rg.kind != "display":
            raise InputError(f"{who} on display images, not {rg.kind!r}",
                             path=str(p), hint="render DRRs with cxrkit project --kind display")
        images.append(np.clip(rg.pixels, 0, 1).astype(np.float32))
    return images


def to_uint16(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` float in [0, 1] → uint16 (halves the memory of a float32 image cache)."""
    return np.round(np.clip(image, 0, 1) * 65535).astype(np.uint16)


def resize_tensor(image: torch.Tensor, shape: tuple[int, int], *,
                  antialias: bool = True) -> torch.Tensor:
    """Bicubic resize of ``(..., h, w)`` float in [0, 1] to ``(..., *shape)``, clipped to [0, 1].

    Args:
        image: any leading dimensions; float (cast to float32).
        shape: the output ``(H, W)``.
        antialias: low-pass first when shrinking (Pillow's bicubic, ``a = -0.5``); False is
            plain bicubic interpolation (``a = -0.75``), as the enhancer's upsampling uses.

    Returns:
        ``(..., H, W)`` float32 in [0, 1].
    """
    import torch.nn.functional as F

    lead = image.shape[:-2]
    flat = image.float().reshape(-1, 1, *image.shape[-2:])  # (N, 1, h, w)
    out = F.interpolate(flat, size=tuple(shape), mode="bicubic", antialias=antialias,
                        align_corners=False)
    return out.clamp(0, 1).reshape(*lead, *out.shape[-2:])


def resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Antialiased bicubic resize of ``(H, W)`` float in [0, 1] to ``shape``, float32 in [0, 1]."""
    if tuple(image.shape) == tuple(shape):
        return image.astype(np.float32, copy=False)
    import torch

    x = torch.from_numpy(np.ascontiguousarray(image, np.float32))
    return resize_tensor(x, shape).numpy()


def resize_short_side(image: np.ndarray, size: int) -> np.ndarray:
    """Antialiased bicubic resize of ``(H, W)`` so the shorter side is ``size``; clipped to [0, 1].

    Returns:
        ``(h, w)`` float32 with ``min(h, w) == size``.
    """
    H, W = image.shape
    scale = size / min(H, W)
    shape = (max(size, round(H * scale)), max(size, round(W * scale)))
    return resize(image, shape)


def bicubic_upsample(image: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic upsampling by an integer factor, clipped to [0, 1] (the ``bicubic`` baseline).

    Args:
        image: ``(..., h, w)`` float in [0, 1].
        scale: integer factor ≥ 1 (1 returns the input).

    Returns:
        ``(..., h·scale, w·scale)`` float32 in [0, 1].
    """
    if scale == 1:
        return image.float()
    h, w = image.shape[-2:]
    return resize_tensor(image, (h * scale, w * scale), antialias=False)
