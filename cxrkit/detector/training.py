"""Training of the detector (wired to :func:`cxrkit.train.train` by ``cxrkit train-detect``):
the multi-task loss, validation on held-out patients, and :func:`train_detect`.

**Loss**: the batch mean of each sample's weighted sum of three parts (a mean of per-sample
losses, so ``accelerate launch`` over several processes trains exactly as one process):

- presence: binary cross-entropy of the presence logit against the image label (every sample:
  synthetic and real);
- characteristics: binary cross-entropy of the five characteristic logits, averaged over the
  characteristics known for that sample (a synthetic positive's labels; 0 for a negative or a
  real image with an image-level label only);
- segmentation, only on samples with a mask (synth records; 0 for images with an image-level
  label only): class-balanced pixel BCE over the whole image (a nodule's pixels weigh as much in
  total as the background's, at most :data:`MAX_POS_WEIGHT` each; negatives teach "nothing
  here") plus the soft
  Dice loss ``1 − (2Σpg + 1)/(Σp + Σg + 1)`` on images that contain a nodule (Dice is what
  lets a few-pixel nodule outweigh a quarter million background pixels).

**Validation** (no augmentation, the EMA weights): ``auc`` of the presence probability on the
held-out images (and ``auc_synth``, ``auc_real`` by origin where both classes are there),
``iou`` and ``dice`` of the mask at 0.5 averaged over held-out images with a nodule mask (MONAI's
``ignore_empty`` convention, :func:`cxrkit.metrics.segmentation_metrics`), ``empty_fp_rate``
(negatives with any predicted pixel), ``auc_<characteristic>`` where both classes are held out,
and ``loss``. Chance is AUC 0.5.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrkit.detector.data import DetectionData, Item
from cxrkit.detector.model import (
    CHARACTERISTICS,
    DETECTOR_KIND,
    Detector,
    DetectorSettings,
    describe,
)
from cxrkit.errors import InputError
from cxrkit.train import unwrap_model

if TYPE_CHECKING:
    from cxrkit.train import TrainConfig, TrainResult

WEIGHTS = {"presence": 1.0, "characteristics": 0.5, "segmentation": 1.0}
"""Weights of the loss parts."""
MAX_POS_WEIGHT = 100.0
"""Cap of the weight of a nodule pixel in the class-balanced pixel BCE (background: 1)."""


def loss_parts(outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
               ) -> dict[str, torch.Tensor]:
    """The three loss parts (module docstring) of a forward pass, per sample: ``(B,)`` each,
    0 where a part does not apply (no known characteristic, no mask)."""
    presence = F.binary_cross_entropy_with_logits(outputs["presence"], batch["label"],
                                                  reduction="none")
    known = batch["known"]
    char = F.binary_cross_entropy_with_logits(outputs["characteristics"],
                                              batch["characteristics"], reduction="none")
    characteristics = (char * known).sum(1) / known.sum(1).clamp(min=1)
    logits, truth = outputs["mask"].flatten(1), batch["mask"].flatten(1)
    # class-balanced pixel BCE: a nodule's pixels weigh as much as the background's, so a
    # 100-pixel nodule in a 512² image is not lost in the mean
    area = truth.sum(1, keepdim=True)
    balance = ((truth.shape[1] - area) / area.clamp(min=1)).clamp(1, MAX_POS_WEIGHT)
    weight = 1 + (balance - 1) * truth
    pixel = F.binary_cross_entropy_with_logits(logits, truth, reduction="none")
    bce = (weight * pixel).sum(1) / weight.sum(1)
    p = torch.sigmoid(logits)
    dice = 1 - (2 * (p * truth).sum(1) + 1) / (p.sum(1) + truth.sum(1) + 1)
    lesion = (truth.sum(1) > 0).float()
    segmentation = batch["has_mask"] * (bce + lesion * dice)
    return {"presence": presence, "characteristics": characteristics,
            "segmentation": segmentation}


def detect_loss(model: nn.Module, batch: dict[str, torch.Tensor],
                generators: Sequence[torch.Generator]) -> torch.Tensor:
    """The mean over the batch of each sample's weighted sum of :func:`loss_parts` (the
    :data:`cxrkit.train.LossFn` of the loop; the generators are unused: the augmentation
    happened when the sample was drawn). A mean of per-sample losses, so DDP's averaged
    gradients over processes equal the one-process gradient of the whole batch."""
    parts = loss_parts(model(batch["image"]), batch)
    return sum(WEIGHTS[k] * v for k, v in parts.items()).mean()  # type: ignore[union-attr]


@dataclass(frozen=True)
class HeldOut:
    """How validation data are held out.

    Attributes:
        fraction: share of patients held out, in [0, 1); 0 validates on training data (which
            ``run.json`` says).
        max_images: at most this many held-out images are measured (the first ones of a seeded
            shuffle).
    """

    fraction: float = 0.15
    max_images: int = 256

    def __post_init__(self) -> None:
        if not 0 <= self.fraction < 1 or self.max_images < 1:
            raise InputError("the validation fraction must be in [0, 1), max images ≥ 1")


def predict(model: Detector, images: torch.Tensor, batch: int = 4) -> dict[str, np.ndarray]:
    """Probabilities of ``(N, 1, S, S)`` images: ``presence`` (N,), ``characteristics`` (N, 5),
    ``mask`` (N, S, S)."""
    device = next(model.parameters()).device
    out: dict[str, list[np.ndarray]] = {"presence": [], "characteristics": [], "mask": []}
    with torch.no_grad():
        for i in range(0, len(images), batch):
            o = model(images[i:i + batch].to(device))
            out["presence"].append(torch.sigmoid(o["presence"]).cpu().numpy())
            out["characteristics"].append(torch.sigmoid(o["characteristics"]).cpu().numpy())
            out["mask"].append(torch.sigmoid(o["mask"][:, 0]).cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def _auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    from cxrkit.metrics import auc

    labels = np.asarray(labels).astype(int)
    if labels.min(initial=1) == labels.max(initial=0) or len(labels) < 2:
        return None
    return float(auc(scores, labels))


def evaluate_detector(model: Detector, data: DetectionData) -> dict[str, float]:
    """The validation metrics (module docstring) of ``model`` on every item of ``data``."""
    from cxrkit.metrics import segmentation_metrics

    samples = [data.tensors(i) for i in range(len(data))]
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    inner = unwrap_model(model, Detector)
    was_training = inner.training
    inner.eval()
    try:
        probs = predict(inner, batch["image"])
        with torch.no_grad():
            device = next(inner.parameters()).device
            parts = dict.fromkeys(WEIGHTS, 0.0)
            for i in range(0, len(samples), 4):
                chunk = {k: v[i:i + 4].to(device) for k, v in batch.items()}
                for k, v in loss_parts(inner(chunk["image"]), chunk).items():
                    parts[k] += float(v.sum()) / len(samples)
    finally:
        inner.train(was_training)
    labels = batch["label"].numpy()
    metrics: dict[str, float] = {"loss": sum(WEIGHTS[k] * v for k, v in parts.items()),
                                 "images": float(len(samples)), "positives": float(labels.sum())}
    origins = np.array([it.origin for it in data.items])
    found = {"auc": _auc(probs["presence"], labels)}
    for name, keep in (("auc_synth", origins == "synth"), ("auc_real", origins != "synth")):
        found[name] = _auc(probs["presence"][keep], labels[keep]) if keep.any() else None
    known = batch["known"].numpy() > 0
    targets = batch["characteristics"].numpy()
    for j, name in enumerate(CHARACTERISTICS):
        rows = known[:, j]
        found[f"auc_{name}"] = (_auc(probs["characteristics"][rows, j], targets[rows, j])
                                if rows.any() else None)
    masked = batch["has_mask"].numpy() > 0
    if masked.any():
        seg = segmentation_metrics(list(probs["mask"][masked]),
                                   list(batch["mask"][masked, 0].numpy() >= 0.5))
        found.update(iou=seg["iou_mean_pos"], dice=seg["dice_mean_pos"],
                     empty_fp_rate=seg["empty_fp_rate"])
    metrics.update({k: float(v) for k, v in found.items() if v is not None})
    return metrics


def train_detect(settings: DetectorSettings, config: TrainConfig, items: Sequence[Item], *,
                 held_out: HeldOut | None = None, init: str | Path | None = None,
                 crop: int | None = None, command: str = "",
                 data_info: dict[str, Any] | None = None,
                 on_log: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train a detector with :func:`cxrkit.train.train` and write its model folder
    (``config.json``, ``diffusion_pytorch_model.safetensors``, ``run.json``).

    Args:
        settings: the architecture (ignored with ``init``: the initial model's is kept).
        config: the loop's settings; ``output_dir`` receives the model.
        items: the training images (:func:`~cxrkit.detector.data.items_from_records`,
            :func:`~cxrkit.detector.data.items_from_nih`); split by patient here.
        held_out: the validation split (defaults of :class:`HeldOut`).
        init: a detector folder to start from, or None for fresh weights.
        crop: train on windows of this side cut from the model's square (see
            :class:`~cxrkit.detector.data.DetectionData`); validation stays on whole images.
        command: the exact command line (for ``run.json``).
        data_info: extra ``run.json`` data fields (the inputs' hashes).
        on_log: progress callback.

    Raises:
        InputError: no images, or too few patients to hold some out.
    """
    from cxrkit.data.splits import split_groups
    from cxrkit.files import file_sha256
    from cxrkit.train import train

    if not items:
        raise InputError("train-detect needs images (synth records or NIH images)")
    held_out = held_out or HeldOut()
    if init is not None:
        model = Detector.load(init).requires_grad_(True).train()
        settings = model.settings
    else:
        model = Detector.new(settings, generator=torch.Generator().manual_seed(config.seed))
    train_idx, val_idx = split_groups([it.group for it in items], held_out.fraction,
                                      seed=config.seed, keep_one=True)
    val_order = np.random.default_rng([config.seed, 11]).permutation(val_idx or train_idx)
    val_items = [items[i] for i in sorted(val_order[: held_out.max_images])]
    data = DetectionData([items[i] for i in train_idx], settings.image_px, crop=crop)
    check = DetectionData(val_items, settings.image_px, augment=False)

    def count(chosen: Sequence[Item]) -> dict[str, int]:
        return {"images": len(chosen), "positives": sum(it.label for it in chosen),
                "with_mask": sum(it.mask is not None for it in chosen),
                "real_label_only": sum(it.origin != "synth" for it in chosen),
                "patients": len({it.group for it in chosen})}

    info: dict[str, Any] = {
        "command": command, "kind": DETECTOR_KIND, "detector": describe(settings),
        "init": None if init is None else {"path": str(init), "sha256": file_sha256(
            Path(init) / "diffusion_pytorch_model.safetensors")},
        "crop_px": data.crop,
        "loss": {"weights": WEIGHTS, "presence": "BCE of the top-k pooled mask logits",
                 "characteristics": "BCE where known",
                 "segmentation": "class-balanced pixel BCE where a mask exists + soft Dice "
                                 "on masks with a nodule",
                 "max_pos_weight": MAX_POS_WEIGHT},
        "held_out": asdict(held_out),
        "data": {**(data_info or {}), "train": count([items[i] for i in train_idx]),
                 "validation": count(val_items),
                 "split": "by patient (NIH Patient ID; a synth record by its source image's)",
                 "validation_on_training_data": not val_idx,
                 "validation_patients": sorted({items[i].group for i in val_idx}),
                 "sampling": "positives and negatives with probability 1/2 each" + (
                     f"; {data.crop}-px windows (positives around their nodule, negatives "
                     "half at other positives' nodule sites)" if data.crop else ""),
                 "augmentation": "hflip p=0.5, rotation ±7°, scale 0.9-1.1, shift ±4 %, gamma "
                                 "0.7-1.4, contrast 0.9-1.1, offset ±0.05"}}

    def save(trained: nn.Module, folder: Path) -> None:
        unwrap_model(trained, Detector).save_pretrained(folder)

    return train(model, detect_loss, data, config,
                 validate=lambda m: evaluate_detector(unwrap_model(m, Detector), check),
                 save_model=save, run_info=info, on_log=on_log)
