"""Training data of MUNIT-LQ (and DDPM-LQ): display images of the two domains, resized, held
out and cropped. Images are ``(H, W)`` float32 in [0, 1], bone bright."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cxrkit.errors import InputError


@dataclass(frozen=True)
class UnpairedCrops:
    """Unpaired random crops of the two domains (a :class:`cxrkit.train.TrainData`).

    Attributes:
        hq: HQ images ``(H, W)`` float32 in [0, 1], already at the training resolution.
        lq: LQ images, likewise.
        crop: crop side in px (a multiple of the model's ``multiple``).
        flip: also flip each crop left-right with probability 1/2.
    """

    hq: Sequence[np.ndarray]
    lq: Sequence[np.ndarray]
    crop: int
    flip: bool = False

    def __post_init__(self) -> None:
        if not self.hq or not self.lq:
            raise InputError("MUNIT-LQ needs images of both domains")
        small = min(min(im.shape) for im in (*self.hq, *self.lq))
        if small < self.crop:
            raise InputError(f"crop {self.crop} is larger than the smallest image ({small} px)")

    def sample(self, generator: np.random.Generator) -> dict[str, torch.Tensor]:
        """``hq`` and ``lq``: ``(1, crop, crop)`` float32 in [0, 1], independent images."""
        return {"hq": _random_crop(self.hq, self.crop, generator, self.flip),
                "lq": _random_crop(self.lq, self.crop, generator, self.flip)}


def _random_crop(images: Sequence[np.ndarray], crop: int, generator: np.random.Generator,
                 flip: bool) -> torch.Tensor:
    image = images[int(generator.integers(len(images)))]
    y = int(generator.integers(0, image.shape[0] - crop + 1))
    x = int(generator.integers(0, image.shape[1] - crop + 1))
    patch = image[y : y + crop, x : x + crop]
    if flip and generator.random() < 0.5:
        patch = patch[:, ::-1]
    return torch.from_numpy(np.ascontiguousarray(patch, np.float32))[None]  # (1, c, c)


def resize_short_side(image: np.ndarray, size: int) -> np.ndarray:
    """Antialiased bicubic resize of ``(H, W)`` so the shorter side is ``size``; clipped to [0, 1].

    Returns:
        ``(h, w)`` float32 with ``min(h, w) == size``.
    """
    H, W = image.shape
    scale = size / min(H, W)
    shape = (max(size, round(H * scale)), max(size, round(W * scale)))
    return resize(image, shape)


def resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Antialiased bicubic resize of ``(H, W)`` float in [0, 1] to ``shape``, float32 in [0, 1]."""
    if tuple(image.shape) == tuple(shape):
        return image.astype(np.float32, copy=False)
    x = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None]
    out = F.interpolate(x, size=shape, mode="bicubic", antialias=True, align_corners=False)
    return out[0, 0].clamp(0, 1).numpy()


def load_display(paths: Sequence[str | Path]) -> list[np.ndarray]:
    """Read display radiographs into ``(H, W)`` float32 arrays in [0, 1].

    Raises:
        InputError: a file that is not a display image (e.g. a line-integral DRR).
    """
    from cxrkit.io import read_radiograph

    images = []
    for p in paths:
        rg = read_radiograph(p)
        if rg.kind != "display":
            raise InputError(f"learned degraders train on display images, not {rg.kind!r}",
                             path=str(p), hint="render DRRs with cxrkit project --kind display")
        images.append(np.clip(rg.pixels, 0, 1).astype(np.float32))
    return images




def holdout(images: Sequence[np.ndarray], count: int = 4
            ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``(train, validation)``: the last ``min(count, len // 5)`` images are held out; with
    fewer than 5 images nothing is, and validation uses the first ``count`` training images."""
    held = min(count, len(images) // 5)
    train = list(images[: len(images) - held])
    return train, list(images[len(images) - held :]) if held else train[:count]


def _center(image: np.ndarray, crop: int) -> torch.Tensor:
    """The centred ``(1, crop, crop)`` patch of ``(H, W)``, float32."""
    y, x = (image.shape[0] - crop) // 2, (image.shape[1] - crop) // 2
    return torch.from_numpy(np.ascontiguousarray(image[y : y + crop, x : x + crop]))[None]
