"""Training data of the synthesis DiT, and the one window that maps a radiograph region to the
model's pitch and back.

- Stage 1 (pretraining), :class:`RadiographPatches`: random ``patch_px`` crops of real
  radiographs (resampled to the model's pitch) with random nodule-like masks
  (:func:`random_nodule_mask`: lobulated ellipses of 3–30 mm, binary or soft), so the model learns
  to fill any region of the chest plausibly from its surroundings.
- Stage 2 (nodule fine-tuning), :class:`NodulePatches`: the nodules that ``cxrkit synth`` put
  into real radiographs (its JSONL records: ``path``, ``thickness`` or ``mask``, ``spacing_mm``,
  ``nodule.center_px``), a window around each, with its exact mask and its characteristics
  (kept as :data:`ATTRIBUTE_KEYS` for the adapters of the next issue).

Samples are ``patch`` ``(1, h, w)`` in [0, 1] (display, bone bright), ``mask`` ``(1, h, w)`` in
[0, 1] and ``attributes`` ``(len(ATTRIBUTE_KEYS),)`` (NaN where unknown).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrkit.errors import InputError

ATTRIBUTE_KEYS = ("calcified", "border_irregular", "inhomogeneous", "subtlety", "diameter_mm",
                  "ground_glass")
"""Characteristics kept per stage-2 patch (``ground_glass``: 1 if the texture is not solid)."""

MASK_FLOOR = 0.02
"""Mask values at or below this are outside the mask (soft masks after resampling)."""

SOFT_FLOOR = 0.05
"""Smallest soft-mask value inside a nodule's silhouette (its thin rim stays painted)."""

DETECTOR_MM = 430.0
"""Width of the detector assumed when a radiograph does not state its pixel size (as the blend
engine does)."""


def support(mask: np.ndarray | torch.Tensor) -> Any:
    """Where a mask (binary or soft) is: ``mask > MASK_FLOOR``. The pixels the model paints and
    the context blanks; everything else is kept exactly."""
    return mask > MASK_FLOOR


def soft_condition(thickness: np.ndarray, silhouette: np.ndarray) -> np.ndarray:
    """The soft mask of a projected nodule: its thickness over the maximum inside its
    silhouette, at least :data:`SOFT_FLOOR` there, 0 outside (so the support is the silhouette,
    the record's ``mask``). Used alike for training windows and by the diffusion engine."""
    inside = np.asarray(silhouette, dtype=bool)
    if not inside.any():
        return np.zeros(inside.shape, np.float32)
    peak = max(float(np.asarray(thickness)[inside].max()), 1e-6)
    return np.where(inside, np.clip(thickness / peak, SOFT_FLOOR, 1.0), 0.0).astype(np.float32)


def image_spacing(image: Any, record: dict[str, Any] | None = None) -> tuple[float, float]:
    """The pixel size ``(row, col)`` of a :class:`cxrkit.io.Radiograph`: the file's, else the
    record's ``spacing_mm``, else a :data:`DETECTOR_MM` detector across its width."""
    if image.spacing_mm:
        return float(image.spacing_mm[0]), float(image.spacing_mm[1])
    if record and record.get("spacing_mm"):
        row, col = record["spacing_mm"]
        return float(row), float(col)
    W = image.pixels.shape[1]
    return DETECTOR_MM / W, DETECTOR_MM / W


@dataclass(frozen=True)
class Window:
    """A region of a radiograph that maps onto a model patch.

    Attributes:
        top, left: the region's first row and column in the radiograph (may be < 0 or reach
            past the image: such pixels are edge-padded when read and never written).
        height, width: its size in radiograph pixels.
        out_shape: the model patch ``(h, w)`` it is resampled to.
    """

    top: int
    left: int
    height: int
    width: int
    out_shape: tuple[int, int]

    @classmethod
    def around(cls, center_rc: tuple[float, float], spacing_mm: tuple[float, float],
               pixel_mm: float, out_shape: tuple[int, int], image_shape: tuple[int, int]
               ) -> Window:
        """The window of ``out_shape`` model pixels (``pixel_mm`` each) centred on
        ``center_rc`` (row, col), shifted to lie inside the image where it fits."""
        height = max(1, round(out_shape[0] * pixel_mm / spacing_mm[0]))
        width = max(1, round(out_shape[1] * pixel_mm / spacing_mm[1]))
        top = round(center_rc[0] - height / 2)
        left = round(center_rc[1] - width / 2)
        H, W = image_shape
        top = min(max(top, 0), H - height) if height <= H else (H - height) // 2
        left = min(max(left, 0), W - width) if width <= W else (W - width) // 2
        return cls(top, left, height, width, out_shape)

    def read(self, image: np.ndarray, *, binary: bool = False) -> np.ndarray:
        """The region resampled to ``out_shape`` (antialiased bicubic; ``binary``: threshold
        0.5 after), float32."""
        from cxrkit.data.images import resize

        H, W = image.shape
        pad = max(0, -self.top, -self.left, self.top + self.height - H,
                  self.left + self.width - W)
        src = np.pad(image, pad, mode="edge") if pad else image
        region = src[self.top + pad: self.top + pad + self.height,
                     self.left + pad: self.left + pad + self.width]
        if binary:
            return (resize(np.ascontiguousarray(region, np.float32), self.out_shape)
                    > 0.5).astype(np.float32)
        low, high = float(region.min()), float(region.max())
        scale = max(high - low, 1e-12)  # resize works on [0, 1]: bring any range there and back
        out = resize(np.ascontiguousarray((region - low) / scale, np.float32), self.out_shape)
        return (out * scale + low).astype(np.float32)

    def write_back(self, patch: np.ndarray) -> tuple[tuple[slice, slice], np.ndarray]:
        """``patch`` (``out_shape``) resampled to the window's radiograph pixels, and the image
        slices it covers (cut to the image; the caller decides which pixels to take)."""
        from cxrkit.data.images import resize

        low, high = float(patch.min()), float(patch.max())
        scale = max(high - low, 1e-12)
        full = resize(np.ascontiguousarray((patch - low) / scale, np.float32),
                      (self.height, self.width)) * scale + low
        return (slice(self.top, self.top + self.height),
                slice(self.left, self.left + self.width)), full.astype(np.float32)

    def clip(self, image_shape: tuple[int, int], full: np.ndarray
             ) -> tuple[tuple[slice, slice], np.ndarray]:
        """The part of a window-sized array ``full`` inside the image, and its image slices."""
        H, W = image_shape
        r0, c0 = max(self.top, 0), max(self.left, 0)
        r1, c1 = min(self.top + self.height, H), min(self.left + self.width, W)
        part = full[r0 - self.top: r1 - self.top, c0 - self.left: c1 - self.left]
        return (slice(r0, r1), slice(c0, c1)), part


def random_nodule_mask(shape: tuple[int, int], diameter_px: tuple[float, float],
                       generator: np.random.Generator, *, soft: bool) -> np.ndarray:
    """A nodule-like mask ``(h, w)`` float32 in [0, 1]: a lobulated, rotated ellipse.

    The radius follows ``r(θ) = r₀ (1 + Σ_{k=2..5} a_k cos(kθ + φ_k))`` with ``a_k ≤ 0.12``,
    the ellipse's minor/major axis ratio is drawn in [0.6, 1], the diameter ``2r₀`` in
    ``diameter_px`` (log-uniform), and the centre near the patch centre (jittered, the mask
    kept inside the patch where it fits). ``soft``: the projected thickness of the matching
    ellipsoid, ``sqrt(1 − ρ²)`` (ρ the normalised radius), as the physics engines' thickness
    maps; else binary (ρ ≤ 1). The centre pixel is always inside.
    """
    h, w = shape
    lo, hi = diameter_px
    d = float(np.exp(generator.uniform(math.log(lo), math.log(hi)))) if hi > lo else float(lo)
    r0 = d / 2
    ratio = generator.uniform(0.6, 1.0)
    angle = generator.uniform(0, math.pi)
    amps = generator.uniform(0, 0.12, 4)
    phases = generator.uniform(0, 2 * math.pi, 4)
    reach = r0 * (1 + amps.sum())
    jy = max(0.0, h / 2 - reach - 2)
    jx = max(0.0, w / 2 - reach - 2)
    cy = (h - 1) / 2 + generator.uniform(-jy, jy) * 0.5
    cx = (w - 1) / 2 + generator.uniform(-jx, jx) * 0.5
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = (-dx * math.sin(angle) + dy * math.cos(angle)) / ratio
    theta = np.arctan2(v, u)
    radius = r0 * (1 + sum(a * np.cos(k * theta + p)
                           for k, a, p in zip(range(2, 6), amps, phases, strict=True)))
    rho = np.hypot(u, v) / np.maximum(radius, 1e-6)
    mask = np.sqrt(np.clip(1 - rho**2, 0, 1)) if soft else (rho <= 1).astype(np.float64)
    iy, ix = min(max(round(cy), 0), h - 1), min(max(round(cx), 0), w - 1)
    mask[iy, ix] = max(mask[iy, ix], 1.0)
    return mask.astype(np.float32)


def load_radiographs(paths: Sequence[str | Path], pixel_mm: float, *,
                     records: Sequence[dict[str, Any] | None] | None = None
                     ) -> list[np.ndarray]:
    """Display radiographs resampled to ``pixel_mm`` (float32 in [0, 1]).

    Raises:
        InputError: a file that is not a display image.
    """
    from cxrkit.data.images import resize
    from cxrkit.io import read_radiograph

    out = []
    for i, path in enumerate(paths):
        rg = read_radiograph(path)
        if rg.kind != "display":
            raise InputError(f"the synthesis model trains on display images, not {rg.kind!r}",
                             path=str(path))
        spacing = image_spacing(rg, records[i] if records else None)
        H, W = rg.pixels.shape
        shape = (max(1, round(H * spacing[0] / pixel_mm)), max(1, round(W * spacing[1] / pixel_mm)))
        out.append(resize(np.clip(rg.pixels, 0, 1).astype(np.float32), shape))
    return out


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image, np.float32))[None]


@dataclass(frozen=True)
class RadiographPatches:
    """Stage-1 samples: a random crop of a radiograph with a random nodule-like mask.

    Crops are drawn from the central 80 % of each image (rows and columns 10–90 %: the chest,
    not the labels and collimation edges), horizontally flipped with probability ½.

    Attributes:
        images: radiographs at the model's pitch, ``(H, W)`` float32 in [0, 1].
        patch_px: crop side.
        pixel_mm: the pitch of ``images`` (mm), for the mask diameters.
        diameter_mm: nodule diameters drawn (log-uniform).
        soft_fraction: share of soft (thickness-like) masks; the rest are binary.
    """

    images: Sequence[np.ndarray]
    patch_px: int
    pixel_mm: float
    diameter_mm: tuple[float, float] = (3.0, 30.0)
    soft_fraction: float = 0.5

    def __post_init__(self) -> None:
        small = [im.shape for im in self.images if min(im.shape) < self.patch_px]
        if not self.images or small:
            raise InputError(f"every radiograph must be at least {self.patch_px} px at the "
                             f"model pitch ({self.pixel_mm} mm); got {small[:3] or 'none'}")

    def sample(self, generator: np.random.Generator) -> dict[str, torch.Tensor]:
        """``patch``, ``mask`` ``(1, c, c)`` and ``attributes`` (all NaN)."""
        image = self.images[int(generator.integers(len(self.images)))]
        H, W = image.shape
        c = self.patch_px
        y0, y1 = int(0.1 * H), max(int(0.1 * H) + 1, int(0.9 * H) - c + 1)
        x0, x1 = int(0.1 * W), max(int(0.1 * W) + 1, int(0.9 * W) - c + 1)
        y = min(int(generator.integers(y0, y1)), H - c)
        x = min(int(generator.integers(x0, x1)), W - c)
        patch = image[y: y + c, x: x + c]
        if generator.random() < 0.5:
            patch = patch[:, ::-1]
        soft = bool(generator.random() < self.soft_fraction)
        diameter_px = (self.diameter_mm[0] / self.pixel_mm, self.diameter_mm[1] / self.pixel_mm)
        mask = random_nodule_mask((c, c), diameter_px, generator, soft=soft)
        return {"patch": _tensor(patch), "mask": _tensor(mask),
                "attributes": torch.full((len(ATTRIBUTE_KEYS),), float("nan"))}


@dataclass(frozen=True)
class NodulePatch:
    """One stage-2 example: a window around a synthesized nodule at the model's pitch.

    Attributes:
        patch: ``(h, w)`` float32 in [0, 1], the radiograph with the nodule.
        mask: ``(h, w)`` float32 in [0, 1]: the projected thickness over its maximum inside the
            silhouette (:func:`soft_condition`), or the binary silhouette when the record has no
            thickness map.
        attributes: the nodule's characteristics (``nodule.characteristics`` of the record).
        group: the patient of the background radiograph (for the split).
        source: the record's ``id``.
    """

    patch: np.ndarray
    mask: np.ndarray
    attributes: dict[str, Any]
    group: str
    source: str


def attribute_vector(attributes: dict[str, Any]) -> torch.Tensor:
    """The :data:`ATTRIBUTE_KEYS` values of a characteristics dict (NaN where missing)."""
    values = []
    for key in ATTRIBUTE_KEYS:
        if key == "ground_glass":
            texture = attributes.get("texture")
            values.append(float("nan") if texture is None else float(texture != "solid"))
            continue
        value = attributes.get(key)
        values.append(float(value) if isinstance(value, (int, float)) else float("nan"))
    return torch.tensor(values, dtype=torch.float32)


def nodule_patches(records: Sequence[dict[str, Any]], patch_px: int, pixel_mm: float, *,
                   soft: bool = True) -> list[NodulePatch]:
    """The stage-2 examples of ``cxrkit synth`` records (one per record with an inserted
    nodule; negatives and records without ``nodule`` are skipped).

    Args:
        records: synth records (``path``, ``mask``, optional ``thickness``, ``spacing_mm``,
            ``nodule`` with ``center_px`` and ``characteristics``, ``source``).
        patch_px: the window's side in model pixels.
        pixel_mm: the model's pitch.
        soft: use the thickness map as a soft mask when the record has one.

    Raises:
        InputError: no record with a nodule, or a record whose image is not a display image.
    """
    from cxrkit.data.splits import patient_id
    from cxrkit.io import read_radiograph

    out = []
    for record in records:
        nodule = record.get("nodule")
        if not nodule or not record.get("mask"):
            continue
        image = read_radiograph(record["path"])
        if image.kind != "display":
            raise InputError(f"the synthesis model trains on display images, not {image.kind!r}",
                             path=str(record["path"]))
        spacing = image_spacing(image, record)
        col, row = nodule["center_px"]
        window = Window.around((row, col), spacing, pixel_mm, (patch_px, patch_px),
                               image.pixels.shape)
        patch = np.clip(window.read(np.clip(image.pixels, 0, 1)), 0, 1)
        silhouette = window.read(read_radiograph(record["mask"]).pixels > 0.5, binary=True)
        if soft and record.get("thickness"):
            thick = window.read(read_radiograph(record["thickness"]).pixels.astype(np.float32))
            mask = soft_condition(np.clip(thick, 0, None), silhouette > 0)
        else:
            mask = silhouette
        if not support(mask).any():
            continue
        source = str(record.get("source") or record["path"])
        out.append(NodulePatch(patch.astype(np.float32), mask.astype(np.float32),
                               dict(nodule.get("characteristics") or {}), patient_id(source),
                               str(record.get("id", ""))))
    if not out:
        raise InputError("no synth record with an inserted nodule",
                         hint="give the JSONL records that cxrkit synth -e blend (or -e ct) "
                              "wrote")
    return out


@dataclass(frozen=True)
class NodulePatches:
    """Stage-2 samples: one of ``patches``, horizontally flipped with probability ½.

    Attributes:
        patches: the examples (:func:`nodule_patches`).
    """

    patches: Sequence[NodulePatch] = field(default_factory=list)

    def sample(self, generator: np.random.Generator) -> dict[str, torch.Tensor]:
        """``patch``, ``mask`` ``(1, h, w)`` and ``attributes``."""
        item = self.patches[int(generator.integers(len(self.patches)))]
        patch, mask = item.patch, item.mask
        if generator.random() < 0.5:
            patch, mask = patch[:, ::-1], mask[:, ::-1]
        return {"patch": _tensor(patch), "mask": _tensor(mask),
                "attributes": attribute_vector(item.attributes)}
