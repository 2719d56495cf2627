"""Training data of the detector: ``cxrkit synth`` records (image, exact mask, characteristics)
and real radiographs with an image-level nodule label only (NIH ChestX-ray14 ``labels.csv``), in
one balanced, augmented sample stream.

- :func:`letterbox` / :class:`Letterbox`: any radiograph to the model's square with its aspect
  kept (the longer side becomes ``image_px``; zero padding at the bottom and right), and the
  exact map back to input pixels;
- :class:`Item`: one training image with what is known of it (label, mask or not, the five
  characteristics or unknown), and its patient (the split's group);
- :func:`items_from_records`, :func:`items_from_nih`: build items;
- :class:`DetectionData`: the preloaded, letterboxed items; ``sample(rng)`` draws a positive or
  a negative with equal probability (when both exist) and augments it with the same geometry
  for image and mask: a horizontal flip, a small affine (±7°, scale 0.9-1.1, shift ±4 %), and an
  intensity change (gamma 0.7-1.4, contrast 0.9-1.1, offset ±0.05), all from ``rng``.
  With ``crop``, the sample is a ``crop × crop`` window of the augmented square instead: a
  positive's window holds its nodule's centre somewhere in its middle three quarters; a
  negative's is centred, half the time, where some positive has its nodule (the lungs: hard
  negatives), else anywhere inside the radiograph. A 128-px window costs a sixteenth of a whole
  512² image, a nodule is a far larger share of it, and the detector's presence, read from its
  mask, asks the same question of a window and of a whole radiograph. Positives with an
  image-level label only (no mask) cannot be cut into windows and are left out.

Characteristics from a synth record's ``nodule.characteristics`` (LIDC conventions, see
:data:`cxrkit.nodules.LABEL_KEYS`): ``calcified``; ``border_irregular`` and its complement
``border_regular``; ``inhomogeneous`` and its complement ``texture_homogeneous``. A missing or
null value is unknown and masked out of the loss; a negative image has no nodule and so no
characteristic (all unknown).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cxrkit.detector.model import CHARACTERISTICS
from cxrkit.errors import InputError

AFFINE_DEG = 7.0
AFFINE_SCALE = (0.9, 1.1)
AFFINE_SHIFT = 0.04
GAMMA = (0.7, 1.4)


@dataclass(frozen=True)
class Letterbox:
    """How an ``(H, W)`` image sits in the model's ``size × size`` square: scaled by ``scale``
    to ``(h, w)`` at the top left, the rest zero."""

    size: int
    scale: float
    shape: tuple[int, int]
    inner: tuple[int, int]

    @classmethod
    def of(cls, shape: tuple[int, int], size: int) -> Letterbox:
        """The letterbox of an image of ``shape`` in a square of side ``size``."""
        H, W = int(shape[0]), int(shape[1])
        scale = size / max(H, W)
        inner = (min(size, max(1, round(H * scale))), min(size, max(1, round(W * scale))))
        return cls(size, scale, (H, W), inner)

    def to_input(self, prob: torch.Tensor) -> torch.Tensor:
        """``(..., size, size)`` model-square map → ``(..., H, W)`` on the input's pixels
        (the padding cropped, bilinear resampling)."""
        h, w = self.inner
        crop = prob[..., :h, :w]
        lead = crop.shape[:-2]
        flat = crop.reshape(-1, 1, h, w).float()
        if (h, w) != self.shape:
            flat = F.interpolate(flat, size=self.shape, mode="bilinear", align_corners=False)
        return flat.reshape(*lead, *self.shape)


def letterbox(image: np.ndarray, size: int, *, soft: bool = False) -> tuple[np.ndarray, Letterbox]:
    """``image`` ``(H, W)`` in [0, 1] resized with its aspect kept into a zero ``size²`` square.

    Args:
        image: the radiograph (or a mask, with ``soft``).
        size: the model's side.
        soft: a mask: area-averaged when shrinking (a soft coverage in [0, 1]), bilinear when
            enlarging, instead of the images' antialiased bicubic.

    Returns:
        ``(square float32 (size, size), its Letterbox)``.
    """
    from cxrkit.data.images import resize

    box = Letterbox.of(image.shape, size)
    if soft:
        t = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None]
        mode = "area" if box.scale < 1 else "bilinear"
        inner = F.interpolate(t, size=box.inner, mode=mode,
                              **({} if mode == "area" else {"align_corners": False}))[0, 0]
        small = inner.clamp(0, 1).numpy()
    else:
        small = resize(np.clip(image, 0, 1).astype(np.float32), box.inner)
    out = np.zeros((size, size), np.float32)
    out[: box.inner[0], : box.inner[1]] = small
    return out, box


def characteristic_targets(chars: dict[str, Any] | None) -> tuple[list[float], list[float]]:
    """``(targets, known)`` of :data:`CHARACTERISTICS` from a synth record's
    ``nodule.characteristics`` (None: all unknown)."""
    chars = chars or {}

    def value(key: str) -> float | None:
        v = chars.get(key)
        if v is None or isinstance(v, str):
            return None
        return 1.0 if float(v) >= 0.5 else 0.0

    calcified, irregular, inhomogeneous = (value(k) for k in
                                           ("calcified", "border_irregular", "inhomogeneous"))
    pairs = {"calcified": calcified,
             "border_regular": None if irregular is None else 1 - irregular,
             "border_irregular": irregular,
             "texture_homogeneous": None if inhomogeneous is None else 1 - inhomogeneous,
             "texture_inhomogeneous": inhomogeneous}
    targets = [pairs[k] if pairs[k] is not None else 0.0 for k in CHARACTERISTICS]
    known = [0.0 if pairs[k] is None else 1.0 for k in CHARACTERISTICS]
    return targets, known


@dataclass(frozen=True)
class Item:
    """One training image.

    Attributes:
        path: the radiograph.
        label: 1 with a nodule, 0 without.
        group: its patient (no patient is in both training and validation).
        mask: the nodule mask file (a synth record's; all zero for a negative), or None when
            only the image-level label is known (no segmentation loss).
        characteristics: targets of :data:`CHARACTERISTICS`.
        known: 1 where the characteristic is known, 0 where it is masked out of the loss.
        origin: ``synth`` (a synth record) or ``nih`` (an image-level label).
    """

    path: str
    label: int
    group: str
    mask: str | None = None
    characteristics: tuple[float, ...] = (0.0,) * len(CHARACTERISTICS)
    known: tuple[float, ...] = (0.0,) * len(CHARACTERISTICS)
    origin: str = "synth"


def record_patient(record: dict[str, Any]) -> str:
    """The patient of a synth record: that of the real radiograph it was made from (its
    ``source``: the NIH file-name prefix, without leading zeros as ``Patient ID`` writes it), so
    a patient's real images and every sample made from them land on one side of the split."""
    from cxrkit.data.splits import patient_id

    return patient_id(str(record.get("source") or record["path"])).lstrip("0") or "0"


def items_from_records(records: Iterable[dict[str, Any]]) -> list[Item]:
    """Items of ``cxrkit synth`` records (or any records with ``path`` and ``boxes``; ``mask``
    when known, ``label`` when there are no boxes).

    Raises:
        InputError: a record with neither ``boxes`` nor ``label``.
    """
    items = []
    for record in records:
        if "path" not in record:
            raise InputError("a training record has no 'path'", path=str(record.get("id")))
        boxes = record.get("boxes")
        if boxes is None and record.get("label") is None:
            raise InputError("a training record needs 'boxes' (a synth record) or 'label'",
                             path=str(record.get("id")),
                             hint="give cxrkit synth records, or images with --nih-labels")
        label = int(bool(boxes)) if boxes is not None else int(record["label"])
        nodule = record.get("nodule") or {}
        targets, known = characteristic_targets(
            nodule.get("characteristics") if label else None)
        items.append(Item(str(record["path"]), label, record_patient(record),
                          mask=str(record["mask"]) if record.get("mask") else None,
                          characteristics=tuple(targets), known=tuple(known),
                          origin="synth" if boxes is not None else "label"))
    return items


def items_from_nih(entries: Sequence[Any], images: str | Path) -> list[Item]:
    """Items of NIH ``labels.csv`` entries (:class:`cxrkit.data.nih.NihEntry`) whose image is in
    the folder ``images`` (entries without a file there are skipped)."""
    folder = Path(images)
    items = []
    for entry in entries:
        path = folder / entry.image
        if path.is_file():
            items.append(Item(str(path), int(entry.nodule), str(entry.patient_id),
                              origin="nih"))
    return items


class DetectionData:
    """Letterboxed items in memory (uint16 images, uint8 masks) and the balanced, augmented
    sample stream of :class:`cxrkit.train.TrainData`.

    Args:
        items: the images.
        size: the model's side.
        augment: apply the augmentations (training) or not (validation).
        crop: draw ``crop × crop`` windows instead of whole images (module docstring).
    """

    def __init__(self, items: Sequence[Item], size: int, *, augment: bool = True,
                 crop: int | None = None) -> None:
        from cxrkit.data.images import load_display, to_uint16
        from cxrkit.io import read_radiograph

        if not items:
            raise InputError("no training images")
        self.items = list(items)
        self.size = size
        self.augment = augment
        self.crop = min(int(crop), size) if crop else None
        self.centres = np.zeros((0, 2))
        if self.crop is not None and self.crop < 32:
            raise InputError(f"training windows must be at least 32 px, got {crop}")
        self.images: list[np.ndarray] = []
        self.masks: list[np.ndarray | None] = []
        for item in self.items:
            image = load_display([item.path], who="the detector trains")[0]
            self.images.append(to_uint16(letterbox(image, size)[0]))
            if item.mask is None:
                self.masks.append(None)
                continue
            raw = read_radiograph(item.mask).pixels
            if raw.shape != image.shape:
                raise InputError(f"mask {raw.shape} and image {image.shape} differ in size",
                                 path=item.mask)
            square = letterbox((raw > 0).astype(np.float32), size, soft=True)[0]
            self.masks.append(np.round(square * 255).astype(np.uint8))
        labels = np.array([it.label for it in self.items])
        if self.crop is not None:  # a positive window needs to know where its nodule is
            labels = np.where((labels == 1) & np.array([m is None or not m.any()
                                                        for m in self.masks]), -1, labels)
            self.centres = np.array([_centroid(m) for i, m in enumerate(self.masks)
                                     if labels[i] == 1]).reshape(-1, 2)
        self.by_label = {c: np.flatnonzero(labels == c) for c in (0, 1)}
        if not any(len(v) for v in self.by_label.values()):
            raise InputError("no training images: positives need a nodule mask to train on "
                             "windows (--crop-px)")

    def __len__(self) -> int:
        return len(self.items)

    def tensors(self, index: int) -> dict[str, torch.Tensor]:
        """Item ``index`` without augmentation."""
        item = self.items[index]
        image = torch.from_numpy(self.images[index].astype(np.float32) / 65535.0)[None]
        stored = self.masks[index]
        mask = (torch.zeros_like(image) if stored is None
                else torch.from_numpy(stored.astype(np.float32) / 255.0)[None])
        return {"image": image, "mask": mask,
                "has_mask": torch.tensor(float(stored is not None)),
                "label": torch.tensor(float(item.label)),
                "characteristics": torch.tensor(item.characteristics, dtype=torch.float32),
                "known": torch.tensor(item.known, dtype=torch.float32)}

    def sample(self, generator: np.random.Generator) -> dict[str, torch.Tensor]:
        """One sample: a positive or a negative with probability ½ each (when both exist), a
        uniform item of that class, augmented (see the module docstring)."""
        classes = [c for c in (0, 1) if len(self.by_label[c])]
        chosen = classes[int(generator.integers(len(classes)))]
        index = int(self.by_label[chosen][generator.integers(len(self.by_label[chosen]))])
        sample = self.tensors(index)
        sample = augment(sample, generator) if self.augment else sample
        return sample if self.crop is None else self._window(sample, chosen, generator)

    def _window(self, sample: dict[str, torch.Tensor], label: int,
                rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """The ``crop``-sided window of a sample (module docstring); its label is whether the
        window holds any of the nodule's mask."""
        c, size = int(self.crop or 0), self.size
        mask = sample["mask"][0]
        if label == 1 and float(mask.sum()) > 0:
            centre = _centroid(mask.numpy()) + rng.uniform(-3 * c / 8, 3 * c / 8, size=2)
        elif len(self.centres) and rng.random() < 0.5:
            centre = (self.centres[rng.integers(len(self.centres))]
                      + rng.uniform(-c / 4, c / 4, size=2))
        else:
            inside = np.argwhere(sample["image"][0].numpy() > 0)
            centre = (inside[rng.integers(len(inside))].astype(float) if len(inside)
                      else np.array([size / 2, size / 2]))
        y0, x0 = (int(np.clip(round(v - c / 2), 0, size - c)) for v in centre)
        cut = {k: v[..., y0:y0 + c, x0:x0 + c] if k in ("image", "mask") else v
               for k, v in sample.items()}
        holds = float(cut["mask"].sum()) > 0.5
        cut["label"] = torch.tensor(float(holds))
        if not holds:  # a window beside the nodule: no nodule, no characteristic
            cut["known"] = torch.zeros_like(sample["known"])
        return cut


def _centroid(mask: np.ndarray | None) -> np.ndarray:
    """``(row, col)`` of the mask's weighted centre (the square's centre when empty)."""
    if mask is None or not mask.any():
        shape = (0, 0) if mask is None else mask.shape
        return np.array([shape[0] / 2, shape[-1] / 2], float)
    m = mask.astype(np.float64)
    rows, cols = np.indices(m.shape)
    return np.array([(rows * m).sum(), (cols * m).sum()]) / m.sum()


def augment(sample: dict[str, torch.Tensor], rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Flip, small affine (one grid for image and mask) and intensity change, drawn from ``rng``
    (module docstring). The padding stays black."""
    import math

    image, mask = sample["image"], sample["mask"]
    flip = rng.random() < 0.5
    angle = math.radians(rng.uniform(-AFFINE_DEG, AFFINE_DEG))
    scale = rng.uniform(*AFFINE_SCALE)
    tx, ty = rng.uniform(-AFFINE_SHIFT, AFFINE_SHIFT, size=2) * 2  # in [-1, 1] grid units
    gamma = math.exp(rng.uniform(math.log(GAMMA[0]), math.log(GAMMA[1])))
    contrast, offset = rng.uniform(0.9, 1.1), rng.uniform(-0.05, 0.05)
    if flip:
        image, mask = image.flip(-1), mask.flip(-1)
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    theta = torch.tensor([[cos, -sin, tx], [sin, cos, ty]], dtype=torch.float32)[None]
    both = torch.cat([image, mask])[None]  # (1, 2, S, S)
    grid = F.affine_grid(theta, list(both.shape), align_corners=False)
    warped = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False)[0]
    image, mask = warped[:1], warped[1:].clamp(0, 1)
    inside = image > 0
    adjusted = ((image.clamp(0, 1) ** gamma) * contrast + offset).clamp(0, 1)
    image = torch.where(inside, adjusted, image)
    return {**sample, "image": image, "mask": mask}
