"""The nodule detector (DESIGN.md §1, ``detect``): a Swin Transformer encoder in plain torch with
a nodule-presence head, five characteristic heads and a segmentation decoder; boxes come from
the segmentation's connected components.

- :mod:`~cxrkit.detector.model`: :class:`Detector` (diffusers ``ModelMixin``/``ConfigMixin``: a
  model folder is ``config.json`` (``"kind": "nodule-detector"``) +
  ``diffusion_pytorch_model.safetensors`` + ``run.json``), :class:`DetectorSettings`,
  :data:`ARCHS` (``default``, ``swin-t``), :data:`CHARACTERISTICS`;
- :mod:`~cxrkit.detector.data`: :func:`letterbox`, training :class:`Item` s from synth records and
  NIH labels, the balanced augmented :class:`DetectionData`;
- :mod:`~cxrkit.detector.training`: the multi-task loss, validation (AUC, IoU/Dice) and
  :func:`train_detect`;
- :mod:`~cxrkit.detector.inference`: :func:`detect` and :func:`boxes_from_mask`.

Importing this package imports torch and diffusers (the CLI imports it inside command bodies).
"""

from pathlib import Path

from cxrkit.detector.data import (
    DetectionData,
    Item,
    Letterbox,
    items_from_nih,
    items_from_records,
    letterbox,
)
from cxrkit.detector.inference import BOX_THRESHOLD, Detection, boxes_from_mask, detect
from cxrkit.detector.model import (
    ARCHS,
    CHARACTERISTICS,
    DETECTOR_KIND,
    Detector,
    DetectorSettings,
    model_sha256,
    parameter_count,
)
from cxrkit.detector.training import HeldOut, detect_loss, evaluate_detector, train_detect


def default_model_dir() -> Path:
    """The detector shipped with cxrkit: ``cxrkit/models/detector`` inside the package."""
    return Path(__file__).resolve().parent.parent / "models" / "detector"


__all__ = [
    "ARCHS", "BOX_THRESHOLD", "CHARACTERISTICS", "DETECTOR_KIND", "Detection", "DetectionData",
    "Detector", "DetectorSettings", "HeldOut", "Item", "Letterbox", "boxes_from_mask",
    "default_model_dir", "detect", "detect_loss", "evaluate_detector", "items_from_nih",
    "items_from_records", "letterbox", "model_sha256", "parameter_count", "train_detect",
]
