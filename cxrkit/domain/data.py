"""Patches of the domain classifier: lung patches of real radiographs and of DRRs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cxrkit.errors import InputError

MIN_LUNG = 0.5
"""A patch is a lung patch when at least this share of it is lung field."""


@dataclass(frozen=True)
class PatchImage:
    """One image at the classifier's pitch.

    Attributes:
        image: ``(H, W)`` float32 display values in [0, 1], at least one patch in each side.
        lung: ``(H, W)`` bool lung field (patches are centred on it).
        name: where it came from (for ``run.json``).
    """

    image: np.ndarray
    lung: np.ndarray
    name: str = ""


def grid_patches(image: np.ndarray, lung: np.ndarray, patch_px: int,
                 min_lung: float = MIN_LUNG) -> np.ndarray:
    """``(N, P, P)`` patches on a grid of stride ``P // 2`` with at least ``min_lung`` lung;
    when none has, every grid patch (an image without a found lung field is still scored)."""
    height, width = image.shape
    if height < patch_px or width < patch_px:
        raise InputError(f"image {height}×{width} px is smaller than one {patch_px} px patch")
    step = max(1, patch_px // 2)
    rows = sorted({*range(0, height - patch_px + 1, step), height - patch_px})
    cols = sorted({*range(0, width - patch_px + 1, step), width - patch_px})
    corners = [(r, c) for r in rows for c in cols]
    inside = [(r, c) for r, c in corners
              if lung[r:r + patch_px, c:c + patch_px].mean() >= min_lung]
    chosen = inside or corners
    return np.stack([image[r:r + patch_px, c:c + patch_px] for r, c in chosen]).astype(np.float32)


class DomainPatches:
    """Training samples: a class drawn with probability 1/2, an image of it, a patch centred on
    a random lung pixel of it (shifted to fit), flipped left-right with probability 1/2.

    ``sample`` returns ``{"patch": (1, P, P), "label": ()}`` (1 = real radiograph).
    """

    def __init__(self, real: list[PatchImage], drr: list[PatchImage], patch_px: int) -> None:
        if not real or not drr:
            raise InputError("the domain classifier needs real radiographs and DRRs to train on")
        for item in (*real, *drr):
            if min(item.image.shape) < patch_px:
                raise InputError(f"image smaller than a {patch_px} px patch", path=item.name)
        self.classes = (drr, real)
        self.patch_px = patch_px
        self._lung_pixels = [[np.flatnonzero(i.lung) if i.lung.any() else
                              np.arange(i.lung.size) for i in items] for items in self.classes]

    def sample(self, generator: np.random.Generator) -> dict[str, torch.Tensor]:
        label = int(generator.integers(2))
        index = int(generator.integers(len(self.classes[label])))
        item = self.classes[label][index]
        pixels = self._lung_pixels[label][index]
        centre = int(pixels[generator.integers(len(pixels))])
        H, W = item.image.shape
        P = self.patch_px
        r = int(np.clip(centre // W - P // 2, 0, H - P))
        c = int(np.clip(centre % W - P // 2, 0, W - P))
        patch = item.image[r:r + P, c:c + P]
        if generator.random() < 0.5:
            patch = patch[:, ::-1]
        return {"patch": torch.from_numpy(np.ascontiguousarray(patch, dtype=np.float32))[None],
                "label": torch.tensor(float(label))}
