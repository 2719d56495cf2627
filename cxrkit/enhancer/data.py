"""The enhancer's training data: (HQ, LQ) pairs made on the fly from HQ radiographs.

A pair is ``hq`` ``(1, c, c)`` and ``lq_up`` ``(1, c, c)`` (the LQ crop bicubic-upsampled back to
the HQ size), float32 in [0, 1]. Degrading a crop equals degrading the whole image and then
cropping: the crop is taken with a ``margin`` of context (aligned to the scale) that covers the
blur kernels and the resampling filters, degraded, upsampled, and only then cut to size.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cxrkit.data.images import bicubic_upsample
from cxrkit.errors import InputError

REFERENCE_TONE = {"gamma": (0.7, 1.45), "contrast": (0.75, 1.1)}
"""Ranges of :func:`retone`: gamma, then linear contrast about the mean."""


def retone(image: np.ndarray, generator: np.random.Generator) -> np.ndarray:
    """``image`` with a random gamma, then contrast about its mean (:data:`REFERENCE_TONE`)."""
    from cxrkit.degrade.operators import Contrast, Gamma

    for op in (Gamma(gamma=REFERENCE_TONE["gamma"]),
               Contrast(contrast=REFERENCE_TONE["contrast"])):
        image = op.apply(image, op.sample_params(generator), generator)
    return image


@dataclass(frozen=True)
class PairData:
    """Pairs from HQ images: degraded on the fly by a preset, or cut from given LQ images.

    Attributes:
        images: HQ images, ``(H, W)`` uint16 (from :func:`to_uint16`).
        crop: HQ crop side in pixels (a multiple of ``scale``).
        scale: HQ size / LQ size.
        preset: a :data:`cxrkit.degrade.PRESETS` key, used when ``lq_images`` is None.
        pixel_mm: pixel pitch of the HQ images (for physical blur sizes).
        lq_images: explicit LQ images, ``(H/scale, W/scale)`` uint16, aligned with ``images``.
        margin: context around a crop, HQ pixels (covers the preset's blur kernels).
        context: side, in LQ pixels, of the view of the whole LQ image that a degradation encoder
            reads (``lq_context``); the training crop lies inside it and both come from the same
            degradation. 0: no view.
        reference_tone: probability that a pair's HQ gets a random tone change (gamma, then
            contrast about the mean; :data:`REFERENCE_TONE`) before it is degraded, so the change
            is on both sides: the model learns to keep an input's tone (issue 23). 0: never (and
            no draw, so pairs stay those of earlier runs).
    """

    images: Sequence[np.ndarray]
    crop: int
    scale: int = 2
    preset: str = "drr-like"
    pixel_mm: float = 0.35
    lq_images: Sequence[np.ndarray] | None = None
    margin: int = 32
    context: int = 0
    reference_tone: float = 0.0

    def __post_init__(self) -> None:
        if not self.images:
            raise InputError("no training images")
        if not 0.0 <= self.reference_tone <= 1.0:
            raise InputError(f"reference_tone is a probability, got {self.reference_tone}")
        if self.crop % self.scale or self.margin % self.scale:
            raise InputError(f"crop {self.crop} must be a multiple of the scale {self.scale}")

    @functools.cached_property
    def view_side(self) -> int:
        """HQ side of the degradation encoder's view: ``context·scale``, or less where an image
        is smaller (one side for every sample, so that views stack into a batch)."""
        s = self.scale
        smallest = min(min(H - H % s, W - W % s) for H, W in (im.shape for im in self.images))
        return min(self.context * s, smallest)

    def sample(self, generator: np.random.Generator) -> dict[str, torch.Tensor]:
        """One random pair: a random image, crop position and degradation from ``generator``
        (with ``context``: a random view, and the crop at a random place inside it)."""
        index = int(generator.integers(len(self.images)))
        H, W = self.images[index].shape
        c, s = min(self.crop, H - H % self.scale), self.scale
        if self.context:
            K = self.view_side
            c = min(c, K)
            ky = int(generator.integers(0, (H - K) // s + 1)) * s
            kx = int(generator.integers(0, (W - K) // s + 1)) * s
            y = ky + int(generator.integers(0, (K - c) // s + 1)) * s
            x = kx + int(generator.integers(0, (K - c) // s + 1)) * s
            return self.pair(index, y, x, generator, crop=c, view=(ky, kx))
        y = int(generator.integers(0, (H - c) // s + 1)) * s
        x = int(generator.integers(0, (W - c) // s + 1)) * s
        return self.pair(index, y, x, generator, crop=c)

    def pair(self, index: int, y: int, x: int, generator: np.random.Generator, *,
             crop: int | None = None, view: tuple[int, int] | None = None
             ) -> dict[str, torch.Tensor]:
        """The pair of image ``index`` at HQ offset ``(y, x)`` (multiples of the scale).

        With ``view`` (its HQ offset; side :attr:`view_side`, containing the crop) the region
        around the view is degraded once, and the pair and the view are cut from it.

        Returns:
            ``hq``, ``lq_up``: ``(1, c, c)`` float32 in [0, 1]; ``lq``: ``(1, c/s, c/s)``; with
            ``view`` also ``lq_context`` ``(1, K/s, K/s)``.
        """
        from cxrkit.degrade import degrade

        hq_full = self.images[index]
        H, W = hq_full.shape
        c, s, m = crop or self.crop, self.scale, self.margin
        ch, cw = min(c, H - y), min(c, W - x)
        if view is None:
            y0, x0 = max(0, y - m), max(0, x - m)
            y1, x1 = min(H - H % s, y + ch + m), min(W - W % s, x + cw + m)
        else:
            K = self.view_side
            y0, x0 = max(0, view[0] - m), max(0, view[1] - m)
            y1, x1 = min(H - H % s, view[0] + K + m), min(W - W % s, view[1] + K + m)
        toned = None  # the HQ crop after a reference tone change
        if self.lq_images is not None:
            lq = self.lq_images[index][y0 // s : y1 // s, x0 // s : x1 // s] / np.float32(65535)
        else:
            region = hq_full[y0:y1, x0:x1].astype(np.float32) / np.float32(65535)
            if self.reference_tone and generator.random() < self.reference_tone:
                region = retone(region, generator)  # the reference keeps it: both sides
                toned = region[y - y0 : y - y0 + ch, x - x0 : x - x0 + cw]
            lq = degrade(region, self.preset, scale=s, pixel_mm=self.pixel_mm,
                         generator=generator).image  # (h/s, w/s)
        up = bicubic_upsample(torch.from_numpy(np.ascontiguousarray(lq, np.float32)), s)
        oy, ox = y - y0, x - x0
        hq = torch.from_numpy(np.ascontiguousarray(toned) if toned is not None else
                              hq_full[y : y + ch, x : x + cw].astype(np.float32) / 65535)
        out = {"hq": hq[None], "lq_up": up[None, oy : oy + ch, ox : ox + cw].contiguous(),
               "lq": torch.from_numpy(np.ascontiguousarray(
                   lq[oy // s : (oy + ch) // s, ox // s : (ox + cw) // s], np.float32))[None]}
        if view is not None:
            vy, vx, k = (view[0] - y0) // s, (view[1] - x0) // s, self.view_side // s
            out["lq_context"] = torch.from_numpy(np.ascontiguousarray(
                lq[vy : vy + k, vx : vx + k], np.float32))[None]
        return out

    def fixed(self, crop: int, *, seed: int) -> list[dict[str, torch.Tensor]]:
        """One deterministic centre-crop pair per image (``crop`` 0: the whole image)."""
        items = []
        for index, image in enumerate(self.images):
            H, W = image.shape
            c = min(crop or max(H, W), H - H % self.scale, W - W % self.scale)
            y = (H - c) // 2 // self.scale * self.scale
            x = (W - c) // 2 // self.scale * self.scale
            rng = np.random.default_rng([seed, index])
            items.append(self.pair(index, y, x, rng, crop=c))
        return items
