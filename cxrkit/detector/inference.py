"""Inference of the detector on radiographs of any size, and the boxes derived from its mask.

:func:`detect` letterboxes an ``(H, W)`` image into the model's square (aspect kept, zero
padding), runs the model once, and maps the mask probability back onto the input's pixels
(the padding cropped, bilinear resampling), so every output is in pixels of the input.

**Boxes** (:func:`boxes_from_mask`): the connected components (8-connected,
``scipy.ndimage.label``) of ``mask probability ≥ threshold``, one box per component, its
bounding box half-open in pixels (``x2 = last column + 1``, as ``synth`` writes ``boxes``). An
image whose map stays below the threshold everywhere still gets one candidate, the component
of ``≥ peak / 2`` around its peak, with its (low) score, so every image is ranked by its
evidence in the FROC and the image AUC (NODE21 evaluates detectors at a score threshold of
about 0; dropping low-score boxes is a known way to lose FROC, wave2-addendum §4.1).

**Score of a box**: the geometric mean ``√(p_presence · max p_mask in the component)``. The
component's peak says how sure the segmentation is *there*; the presence head says how sure
the model is that the *image* holds a nodule, and it is the head that learns from real
radiographs with image-level labels (the mask only from synthetic nodules). ``eval`` scores an
image by its highest box (NODE21), so a mask-only score would leave the image-level evidence
out of the image AUC; a presence-only score would rank all boxes of an image alike in the
FROC. The geometric mean keeps both orders and stays a probability-like number in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cxrkit.detector.data import letterbox
from cxrkit.detector.model import CHARACTERISTICS, Detector

BOX_THRESHOLD = 0.5
"""Default mask probability at or above which a pixel belongs to a box's component."""


def boxes_from_mask(prob: np.ndarray, threshold: float = BOX_THRESHOLD, *,
                    presence: float | None = None, peak_box: bool = False
                    ) -> list[dict[str, Any]]:
    """One box per connected component of ``prob ≥ threshold``.

    Args:
        prob: ``(H, W)`` mask probability (or a binary mask).
        threshold: the component threshold.
        presence: the image's presence probability; None scores a box by its component's peak
            alone.
        peak_box: where no pixel reaches ``threshold``, return the one box of the component of
            ``prob ≥ peak / 2`` that holds the peak (scored the same way), so that every image
            with any nonzero probability has a candidate: FROC and the image AUC then rank every
            image by its evidence, as NODE21 scores detectors at a score threshold of about 0.

    Returns:
        ``[{x1, y1, x2, y2, score}]`` (ints, half-open; score a float), highest score first.
    """
    from scipy import ndimage

    prob = np.asarray(prob, dtype=np.float32)
    structure = np.ones((3, 3), bool)
    labels, count = ndimage.label(prob >= threshold, structure=structure)
    if count == 0:
        peak = float(prob.max(initial=0.0))
        if not peak_box or peak <= 0:
            return []
        labels, _ = ndimage.label(prob >= peak / 2, structure=structure)
        at = np.unravel_index(int(np.argmax(prob)), prob.shape)
        labels = np.where(labels == labels[at], 1, 0)
        count = 1
    peaks = ndimage.maximum(prob, labels, index=np.arange(1, count + 1))
    boxes = []
    for slices, peak in zip(ndimage.find_objects(labels), np.atleast_1d(peaks), strict=True):
        rows, cols = slices
        score = float(peak) if presence is None else float(np.sqrt(float(peak) * presence))
        boxes.append({"x1": int(cols.start), "y1": int(rows.start), "x2": int(cols.stop),
                      "y2": int(rows.stop), "score": round(score, 6)})
    boxes.sort(key=lambda b: -b["score"])
    return boxes


@dataclass
class Detection:
    """What the detector says about one radiograph.

    Attributes:
        nodule_probability: the presence head's probability.
        characteristics: the characteristic heads' probabilities by name.
        probability: ``(H, W)`` float32 mask probability on the input's pixels.
        detections: :func:`boxes_from_mask` of it, in input pixels.
    """

    nodule_probability: float
    characteristics: dict[str, float]
    probability: np.ndarray
    detections: list[dict[str, Any]] = field(default_factory=list)


def detect(model: Detector, image: np.ndarray, *, threshold: float = BOX_THRESHOLD,
           peak_box: bool = True) -> Detection:
    """Detect nodules in one ``(H, W)`` radiograph in [0, 1] (module docstring).

    Args:
        model: a loaded detector (eval mode).
        image: the radiograph, any size.
        threshold: the box components' mask threshold.
        peak_box: see :func:`boxes_from_mask` (on: every image gets at least one candidate).
    """
    square, box = letterbox(np.asarray(image, np.float32), model.config.image_px)
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model(torch.from_numpy(square)[None, None].to(device))
        presence = float(torch.sigmoid(out["presence"][0]))
        chars = torch.sigmoid(out["characteristics"][0]).cpu().tolist()
        prob = box.to_input(torch.sigmoid(out["mask"][0, 0]).cpu()).numpy()
    return Detection(
        nodule_probability=round(presence, 6),
        characteristics={k: round(float(v), 6) for k, v in zip(CHARACTERISTICS, chars,
                                                                strict=True)},
        probability=prob.astype(np.float32),
        detections=boxes_from_mask(prob, threshold, presence=presence, peak_box=peak_box))
