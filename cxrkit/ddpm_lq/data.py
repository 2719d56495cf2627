"""Training and validation data of DDPM-LQ: crops of real LQ images (stage 1 / img2img) and of
(HQ, LQ) pairs (stage 2), and how files are held out. Images are ``(H, W)`` float32 in [0, 1],
bone bright; samples are ``(1, c, c)`` tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cxrkit.errors import InputError


@dataclass(frozen=True)
class LQCrops:
    """Random crops of real LQ images, with no condition (stage 1 / img2img).

    Attributes:
        lq: LQ images ``(H, W)`` float32 in [0, 1] at the training resolution.
        crop: crop side in px.
    """

    lq: Sequence[np.ndarray]
    crop: int

    def sample(self, generator: np.random.Generator) -> dict[str, torch.Tensor]:
        """``lq`` and ``cond`` ``(1, c, c)`` (``cond`` zeros) and ``has_cond`` ``()`` = 0."""
        patch = _crop(self.lq[int(generator.integers(len(self.lq)))], self.crop, generator)
        return {"lq": patch, "cond": torch.zeros_like(patch), "has_cond": torch.tensor(0.0)}


@dataclass(frozen=True)
class ConditionedCrops:
    """Stage-2 samples: aligned (HQ, LQ) crops, and with probability ``p_uncond`` an LQ crop of
    the real LQ domain with the condition zeroed (keeps the stage-1 prior).

    Attributes:
        hq: HQ images ``(H, W)`` float32 in [0, 1] at the training resolution.
        lq: LQ images aligned with ``hq`` (same shapes), or None to make them from ``hq`` with
            the physics ``preset`` (scale 1).
        real_lq: real LQ images for the zero-condition samples.
        crop: crop side in px.
        preset: a :data:`cxrkit.degrade.PRESETS` key, used when ``lq`` is None.
        p_uncond: share of zero-condition samples.
        pixel_mm: pixel pitch of ``hq`` for the preset's physical sizes.
    """

    hq: Sequence[np.ndarray]
    lq: Sequence[np.ndarray] | None
    real_lq: Sequence[np.ndarray]
    crop: int
    preset: str = "drr-like"
    p_uncond: float = 0.1
    pixel_mm: float = 1.4

    def sample(self, generator: np.random.Generator) -> dict[str, torch.Tensor]:
        """``lq``, ``cond`` ``(1, c, c)`` in [0, 1] and ``has_cond`` ``()``."""
        if generator.random() < self.p_uncond:
            return LQCrops(self.real_lq, self.crop).sample(generator)
        from cxrkit.degrade import degrade

        index = int(generator.integers(len(self.hq)))
        hq = self.hq[index]
        y = int(generator.integers(0, hq.shape[0] - self.crop + 1))
        x = int(generator.integers(0, hq.shape[1] - self.crop + 1))
        box = (slice(y, y + self.crop), slice(x, x + self.crop))
        if self.lq is not None:
            lq = self.lq[index][box]
        else:  # degrade with context, then cut (blur kernels see the neighbourhood)
            m = 16
            y0, x0 = max(0, y - m), max(0, x - m)
            region = hq[y0 : y + self.crop + m, x0 : x + self.crop + m]
            lq = degrade(np.ascontiguousarray(region), self.preset, pixel_mm=self.pixel_mm,
                         generator=generator).image[y - y0 : y - y0 + self.crop,
                                                    x - x0 : x - x0 + self.crop]
        return {"lq": _tensor(lq), "cond": _tensor(hq[box]), "has_cond": torch.tensor(1.0)}


def _tensor(image: np.ndarray) -> torch.Tensor:
    """``(h, w)`` → ``(1, h, w)`` float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(image, np.float32))[None]


def _crop(image: np.ndarray, crop: int, generator: np.random.Generator) -> torch.Tensor:
    y = int(generator.integers(0, image.shape[0] - crop + 1))
    x = int(generator.integers(0, image.shape[1] - crop + 1))
    patch = image[y : y + crop, x : x + crop]
    return torch.from_numpy(np.ascontiguousarray(patch, np.float32))[None]  # (1, c, c)


@dataclass(frozen=True)
class HeldOut:
    """How DDPM-LQ's validation data are held out and measured.

    HQ images are split by patient (:func:`cxrkit.data.splits.split_by_patient`: the
    file-name prefix before ``_``, as in NIH ChestX-ray14), LQ images by file (DRRs of one CT
    share their patient anyway). Held-out images are never trained on.

    Attributes:
        fraction: share of HQ patients and of LQ files held out, in [0, 1). 0 (or too few
            images) validates on training images, which ``run.json`` then says.
        count: at most this many held-out images are degraded for the sampled measures.
        loss_samples: fixed (crop, timestep, noise) samples of the held-out diffusion loss.
    """

    fraction: float = 0.1
    count: int = 4
    loss_samples: int = 8

    def __post_init__(self) -> None:
        if not 0 <= self.fraction < 1 or self.count < 1 or self.loss_samples < 1:
            raise InputError("the validation fraction must be in [0, 1), counts ≥ 1")


def _centre(image: np.ndarray, crop: int) -> np.ndarray:
    """The centred ``crop`` × ``crop`` patch of ``(H, W)`` (smaller sides kept whole)."""
    y, x = max(0, (image.shape[0] - crop) // 2), max(0, (image.shape[1] - crop) // 2)
    return np.ascontiguousarray(image[y : y + crop, x : x + crop], np.float32)

