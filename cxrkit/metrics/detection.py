"""Detection and segmentation measures: image AUC, FROC (NODE21 / LUNA16), IoU and Dice.

Definitions follow cxrkit's evaluation rules (the ``eval`` man page): N images, each with ground
truth boxes ``(K, 4)`` and predicted boxes ``(M, 4)`` with scores ``(M,)``. Boxes are
``x1, y1, x2, y2`` in pixels: x = column, y = row, origin at the top-left corner of the top-left
pixel, continuous and half-open (the COCO / torchvision convention). Every image must be listed,
negatives (no truth box) included, or FP per image and AUC mean nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from cxrkit.errors import InputError

NODE21_RATES = (0.125, 0.25, 0.5)
"""FP per image at which NODE21 reports sensitivity."""
CPM_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""FP per image averaged by the LUNA16 competition performance metric."""
DUPLICATES = ("fp", "ignore")
"""Fates of a further hit on an already matched lesion: a false positive (NODE21) or dropped
from the analysis (LUNA16)."""
INTERPOLATIONS = ("linear", "step")
"""Ways to read sensitivity off the FROC curve between operating points."""


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Intersection over union of every pair of boxes.

    Args:
        boxes_a: ``(N, 4)`` boxes ``x1, y1, x2, y2``, px.
        boxes_b: ``(M, 4)`` boxes.

    Returns:
        ``(N, M)`` IoU in [0, 1] (0 where both boxes are empty).
    """
    a, b = _boxes(boxes_a)[:, None, :], _boxes(boxes_b)[None, :, :]
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = width * height  # (N, M)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_detections(truth: np.ndarray, boxes: np.ndarray, scores: np.ndarray, *,
                     iou_threshold: float = 0.2, duplicates: str = "fp") -> np.ndarray:
    """Label each prediction of one image as a hit, a false positive or an ignored duplicate.

    Predictions are taken by descending score (ties in input order). One is a true positive when
    its IoU with a lesion not yet matched exceeds ``iou_threshold`` (strictly); it takes the hit
    lesion of highest IoU, and each lesion is matched at most once. A prediction that hits only
    matched lesions is a duplicate: a false positive, or ignored with ``duplicates="ignore"``.

    Args:
        truth: ``(K, 4)`` ground-truth boxes.
        boxes: ``(M, 4)`` predicted boxes.
        scores: ``(M,)`` their scores.
        iou_threshold: hit criterion ``IoU > iou_threshold`` (NODE21: 0.2).
        duplicates: ``"fp"`` or ``"ignore"``.

    Returns:
        ``(M,)`` int: 1 true positive, 0 false positive, -1 ignored.
    """
    if duplicates not in DUPLICATES:
        raise InputError(f"unknown duplicates rule {duplicates!r}", hint=f"use one of {DUPLICATES}")
    boxes, scores = _predictions(boxes, scores)
    iou = box_iou(boxes, truth)  # (M, K)
    matched = np.zeros(iou.shape[1], dtype=bool)
    labels = np.zeros(len(scores), dtype=int)
    for i in np.argsort(-scores, kind="stable"):
        hits = iou[i] > iou_threshold
        free = hits & ~matched
        if free.any():
            matched[int(np.argmax(np.where(free, iou[i], -1.0)))] = True
            labels[i] = 1
        elif hits.any() and duplicates == "ignore":
            labels[i] = -1
    return labels


@dataclass(frozen=True)
class FrocCurve:
    """Operating points of a free-response ROC, one per distinct score, highest score first.

    Attributes:
        thresholds: ``(T,)`` distinct candidate scores, descending.
        fp_per_image: ``(T,)`` false positives with score ≥ threshold, divided by all N images.
        sensitivity: ``(T,)`` true positives with score ≥ threshold / number of lesions.
        n_images: N, negatives included.
        n_lesions: number of ground-truth lesions.
    """

    thresholds: np.ndarray
    fp_per_image: np.ndarray
    sensitivity: np.ndarray
    n_images: int
    n_lesions: int

    def sensitivity_at(self, rates: Sequence[float], interp: str = "linear") -> np.ndarray:
        """Sensitivity at each FP-per-image rate, read off the FROC polyline from (0, 0).

        The polyline joins every operating point in threshold order (highest score first), so
        where several points share one FP-per-image value it rises as a vertical step there,
        and between two FP-per-image values it runs straight from the top of one step to the
        bottom of the next. ``linear`` (NODE21, LUNA16 ``computeFROC``, MONAI
        ``compute_froc_score``: ``np.interp`` over the points) reads this line, taking the top of
        a step at its own rate and holding the last sensitivity beyond the curve; ``step`` takes
        the best sensitivity among points with FP per image ≤ the rate.

        Returns:
            ``(len(rates),)`` sensitivities in [0, 1].
        """
        fpi = np.concatenate([[0.0], self.fp_per_image])
        sens = np.concatenate([[0.0], self.sensitivity])
        queries = np.asarray(rates, dtype=np.float64)
        if interp == "step":
            return np.array([sens[fpi <= rate].max() for rate in queries])
        if interp != "linear":
            raise InputError(f"unknown interpolation {interp!r}",
                             hint=f"use one of {INTERPOLATIONS}")
        # Both arrays are non-decreasing in threshold order. Segment j runs from point j to
        # point j + 1; a rate r lies on the last segment whose start has FP per image <= r
        # (the top of a vertical step), as in np.interp, made explicit here.
        last = np.searchsorted(fpi, queries, side="right") - 1  # top of the step at or below r
        out = np.zeros_like(queries)  # a negative rate: nothing
        beyond = last >= len(fpi) - 1
        out[beyond] = sens[-1]
        inside = (last >= 0) & ~beyond
        j = last[inside]
        x0, x1, y0, y1 = fpi[j], fpi[j + 1], sens[j], sens[j + 1]  # x1 > rate >= x0
        out[inside] = y0 + (y1 - y0) * (queries[inside] - x0) / (x1 - x0)
        return out


def froc(truth: Sequence[np.ndarray], boxes: Sequence[np.ndarray], scores: Sequence[np.ndarray],
         *, iou_threshold: float = 0.2, duplicates: str = "fp") -> FrocCurve:
    """FROC curve over images with a lesion-level hit criterion (:func:`match_detections`).

    All candidates of all images are pooled and sorted by score; at each distinct score ``t``,
    ``FPI(t) = #FP(s ≥ t) / N`` and ``Sens(t) = #TP(s ≥ t) / #lesions``. Ignored duplicates take
    no part. Run NMS before, not here.

    Args:
        truth: per image, ``(K_i, 4)`` ground-truth boxes (``K_i = 0`` for a negative image).
        boxes: per image, ``(M_i, 4)`` predicted boxes.
        scores: per image, ``(M_i,)`` scores.
        iou_threshold: hit criterion ``IoU > iou_threshold``.
        duplicates: ``"fp"`` (NODE21) or ``"ignore"`` (LUNA16).

    Returns:
        The curve's operating points.

    Raises:
        InputError: lists of different lengths, no images, or no lesions at all.
    """
    n_images = _same_length(truth, boxes, scores)
    n_lesions = sum(len(_boxes(t)) for t in truth)
    if n_lesions == 0:
        raise InputError("FROC needs at least one ground-truth lesion")
    pooled_scores, pooled_labels = [], []
    for gt, pred, score in zip(truth, boxes, scores, strict=True):
        labels = match_detections(gt, pred, score, iou_threshold=iou_threshold,
                                  duplicates=duplicates)
        pooled_scores.append(np.asarray(score, dtype=np.float64).reshape(-1)[labels >= 0])
        pooled_labels.append(labels[labels >= 0])
    all_scores, all_labels = np.concatenate(pooled_scores), np.concatenate(pooled_labels)
    if all_scores.size == 0:  # no candidate anywhere: one operating point, nothing found
        return FrocCurve(np.array([np.inf]), np.zeros(1), np.zeros(1), n_images, n_lesions)
    order = np.argsort(-all_scores, kind="stable")
    all_scores, all_labels = all_scores[order], all_labels[order]
    last_of_score = np.flatnonzero(np.r_[all_scores[1:] != all_scores[:-1], True])
    true_pos, false_pos = np.cumsum(all_labels == 1), np.cumsum(all_labels == 0)
    return FrocCurve(all_scores[last_of_score], false_pos[last_of_score] / n_images,
                     true_pos[last_of_score] / n_lesions, n_images, n_lesions)


def cpm(curve: FrocCurve, interp: str = "linear") -> float:
    """LUNA16 competition performance metric: mean sensitivity at 1/8, 1/4 … 8 FP per image."""
    return float(np.mean(curve.sensitivity_at(CPM_RATES, interp)))


def image_scores(scores: Sequence[np.ndarray]) -> np.ndarray:
    """Per-image nodule score from its boxes: the highest box score, 0 for an image without boxes.

    Returns:
        ``(N,)`` float64.
    """
    return np.array([float(np.max(s)) if np.size(s) else 0.0 for s in scores])


def auc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Area under the ROC curve, ``P(s⁺ > s⁻) + ½·P(s⁺ = s⁻)`` (Mann-Whitney U / (n⁺·n⁻)).

    Computed from average ranks, so ties count one half, as in scikit-learn, torchmetrics
    ``BinaryAUROC`` and MONAI ``compute_roc_auc``.

    Args:
        scores: ``(N,)`` scores, higher meaning more likely positive.
        labels: ``(N,)`` 0/1 (or boolean) labels.

    Returns:
        AUC in [0, 1].

    Raises:
        InputError: lengths differ, labels are not 0/1, or one class is missing.
    """
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    truth = np.asarray(labels).reshape(-1)
    if values.shape != truth.shape or not np.isin(truth, (0, 1)).all():
        raise InputError("AUC needs one 0/1 label per score")
    n_pos, n_neg = int(truth.sum()), int(truth.size - truth.sum())
    if n_pos == 0 or n_neg == 0:
        raise InputError("AUC needs both positive and negative images",
                         hint="list the negative images (no lesion) in the truth file")
    ranks = stats.rankdata(values)  # average ranks for ties
    u = ranks[truth == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def node21_score(auc_value: float, sensitivity_at_quarter: float) -> float:
    """NODE21 detection ranking score: ``0.75·AUC + 0.25·sensitivity at 0.25 FP per image``."""
    return 0.75 * auc_value + 0.25 * sensitivity_at_quarter


def detection_metrics(truth: Sequence[np.ndarray], boxes: Sequence[np.ndarray],
                      scores: Sequence[np.ndarray], *, iou_threshold: float = 0.2,
                      duplicates: str = "fp", interp: str = "linear") -> dict[str, Any]:
    """NODE21-style summary of a detector on N images (see :func:`froc` for the arguments).

    Returns:
        JSON-ready dict: ``auc`` (image score = max box score, 0 without boxes; label = has a
        lesion), ``sens@0.125``, ``sens@0.25``, ``sens@0.5``, ``node21_score``, ``cpm``, the
        counts, and the conventions used (``hit``, ``duplicates``, ``interp``, ``auc_source``).
    """
    curve = froc(truth, boxes, scores, iou_threshold=iou_threshold, duplicates=duplicates)
    labels = np.array([len(_boxes(t)) > 0 for t in truth], dtype=int)
    image_auc = auc(image_scores(scores), labels)
    sens = curve.sensitivity_at(NODE21_RATES, interp)
    result: dict[str, Any] = {"auc": image_auc}
    result.update({f"sens@{rate}": float(s) for rate, s in zip(NODE21_RATES, sens, strict=True)})
    result.update({
        "node21_score": node21_score(image_auc, float(sens[1])),
        "cpm": cpm(curve, interp),
        "n_images": curve.n_images, "n_positive": int(labels.sum()), "n_lesions": curve.n_lesions,
        "hit": f"iou>{iou_threshold}", "duplicates": duplicates, "interp": interp,
        "auc_source": "detector",
    })
    return result


def segmentation_metrics(predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray], *,
                         threshold: float = 0.5) -> dict[str, Any]:
    """Pixel IoU and Dice of predicted masks against ground truth, under several conventions.

    Per image, ``P = prediction ≥ threshold`` and ``G = truth > 0``: ``IoU = |P&G| / |P|G|``,
    ``Dice = 2|P&G| / (|P| + |G|)``. The primary values average over the images **with a
    lesion** (MONAI ``MeanIoU(ignore_empty=True)``), which does not reward empty-on-empty.

    Args:
        predictions: per image, ``(H, W)`` probabilities or binary masks.
        truths: per image, ``(H, W)`` masks (any nonzero is lesion).
        threshold: probability at or above which a pixel is predicted lesion.

    Returns:
        JSON-ready dict: ``iou_mean_pos``, ``dice_mean_pos`` (None without positive images),
        ``iou_global`` (Σ|P&G| / Σ|P|G| over all images, micro), ``iou_mean_all_empty1`` (mean
        over all images, empty-vs-empty = 1), ``empty_fp_rate`` (share of lesion-free images
        with any predicted pixel; None without such images), counts, and ``convention``.
    """
    _same_length(predictions, truths)
    inter, union, pred_sum, truth_sum = (np.zeros(len(truths)) for _ in range(4))
    for i, (pred, gt) in enumerate(zip(predictions, truths, strict=True)):
        p, g = np.asarray(pred) >= threshold, np.asarray(gt) > 0
        if p.shape != g.shape:
            raise InputError(f"mask {i} differs in shape from its truth: {p.shape} vs {g.shape}")
        inter[i], union[i] = np.sum(p & g), np.sum(p | g)
        pred_sum[i], truth_sum[i] = p.sum(), g.sum()
    positive = truth_sum > 0
    iou = np.divide(inter, union, out=np.ones_like(inter), where=union > 0)
    dice = np.divide(2 * inter, pred_sum + truth_sum, out=np.ones_like(inter),
                     where=(pred_sum + truth_sum) > 0)
    return {
        "iou_mean_pos": float(iou[positive].mean()) if positive.any() else None,
        "dice_mean_pos": float(dice[positive].mean()) if positive.any() else None,
        "iou_global": float(inter.sum() / union.sum()) if union.sum() > 0 else None,
        "iou_mean_all_empty1": float(iou.mean()),
        "empty_fp_rate": float((pred_sum[~positive] > 0).mean()) if (~positive).any() else None,
        "n_images": len(truths), "n_positive": int(positive.sum()), "threshold": threshold,
        "convention": "iou_mean_pos/dice_mean_pos: mean over images with a lesion "
                      "(MONAI MeanIoU ignore_empty=True)",
    }


def _boxes(boxes: Any) -> np.ndarray:
    """``(K, 4)`` float64 boxes from an array or a (possibly empty) list."""
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 4))
    if array.ndim != 2 or array.shape[1] != 4:
        raise InputError(f"boxes must be (K, 4) x1, y1, x2, y2, got shape {array.shape}")
    return array


def _predictions(boxes: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    array, values = _boxes(boxes), np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(array) != len(values):
        raise InputError(f"{len(array)} predicted boxes but {len(values)} scores")
    return array, values


def _same_length(*lists: Sequence[Any]) -> int:
    lengths = {len(items) for items in lists}
    if len(lengths) != 1 or 0 in lengths:
        raise InputError(f"need one entry per image in every list, got lengths {sorted(lengths)}")
    return lengths.pop()
