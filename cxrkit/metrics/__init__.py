"""Evaluation measures: pure functions on arrays, no models.

- :mod:`cxrkit.metrics.image`: PSNR, SSIM, MS-SSIM, PSNR after a linear intensity fit,
  no-reference measures (contrast-to-noise, noise level, sharpness) and bootstrap intervals;
- :mod:`cxrkit.metrics.detection`: image AUC, FROC with a lesion-level hit criterion (NODE21,
  LUNA16 CPM) and segmentation IoU / Dice.

The definitions are cxrkit's evaluation rules, stated in each docstring and the ``eval`` man page.
"""

from __future__ import annotations

from cxrkit.metrics.detection import (
    CPM_RATES,
    NODE21_RATES,
    FrocCurve,
    auc,
    box_iou,
    cpm,
    detection_metrics,
    froc,
    image_scores,
    match_detections,
    node21_score,
    segmentation_metrics,
)
from cxrkit.metrics.image import (
    MS_SSIM_MIN_SIZE,
    bootstrap_ci,
    contrast_to_noise,
    edge_width,
    mean_gradient,
    ms_ssim,
    noise_sigma,
    psnr,
    psnr_linear_fit,
    ssim,
    ssim_torch,
)

__all__ = [
    "CPM_RATES",
    "MS_SSIM_MIN_SIZE",
    "NODE21_RATES",
    "FrocCurve",
    "auc",
    "bootstrap_ci",
    "box_iou",
    "contrast_to_noise",
    "cpm",
    "detection_metrics",
    "edge_width",
    "froc",
    "image_scores",
    "match_detections",
    "mean_gradient",
    "ms_ssim",
    "node21_score",
    "noise_sigma",
    "psnr",
    "psnr_linear_fit",
    "segmentation_metrics",
    "ssim",
    "ssim_torch",
]
