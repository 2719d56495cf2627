"""Training data of MUNIT-LQ: unpaired crops of the two domains. Images are ``(H, W)`` float32 in
[0, 1], bone bright; loading, resizing and the hold-out are the shared :mod:`cxrkit.data`
helpers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

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


def _center(image: np.ndarray, crop: int) -> torch.Tensor:
    """The centred ``(1, crop, crop)`` patch of ``(H, W)``, float32."""
    y, x = (image.shape[0] - crop) // 2, (image.shape[1] - crop) // 2
    return torch.from_numpy(np.ascontiguousarray(image[y : y + crop, x : x + crop]))[None]
