"""What ``cxrkit eval`` adds for a nodule detector's records: image-level classification,
per-characteristic AUC, and sensitivity / AUC / IoU broken down by nodule size, subtlety and
characteristic — the questions a reader of a detection paper's tables asks.

The records are those ``cxrkit detect`` writes (see the ``eval`` man page):

- truth: ``boxes`` ``[{x1, y1, x2, y2, attributes: {calcified, border_irregular, inhomogeneous,
  subtlety, diameter_mm, ...}}]`` (``[]`` for a negative image), ``nodule.characteristics``
  (``synth`` records), or only an image-level ``label`` (0/1, e.g. NIH "Nodule");
- predictions: ``nodule_probability``, ``characteristics_probability`` ``{calcified,
  border_regular, border_irregular, texture_homogeneous, texture_inhomogeneous}`` and
  ``detections`` ``[{x1, y1, x2, y2, score}]``.

Pure functions on records and arrays (no files): :func:`classification_summary`,
:func:`characteristics_summary`, :func:`breakdown_summary`, :func:`segmentation_cis`;
:mod:`cxrkit.metrics.records` ties them into the ``eval`` summary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from cxrkit.errors import InputError
from cxrkit.metrics.detection import auc, box_iou, froc
from cxrkit.metrics.image import bootstrap_ci

Record = dict[str, Any]

CHARACTERISTICS: dict[str, tuple[str, int]] = {
    "calcified": ("calcified", 1),
    "border_regular": ("border_irregular", 0),
    "border_irregular": ("border_irregular", 1),
    "texture_homogeneous": ("inhomogeneous", 0),
    "texture_inhomogeneous": ("inhomogeneous", 1),
}
"""Each predicted class of ``characteristics_probability``: the reference attribute it is
read against and the attribute value that makes it positive."""

SIZE_BINS: tuple[tuple[float, float, str], ...] = (
    (0.0, 6.0, "<6 mm"), (6.0, 10.0, "6-10 mm"), (10.0, 20.0, "10-20 mm"),
    (20.0, math.inf, ">=20 mm"))
"""Nodule diameter bins ``[low, high)`` in mm."""

BREAKDOWNS: dict[str, tuple[str, Callable[[Any], str | None], tuple[str, ...]]] = {
    "size": ("diameter_mm", lambda v: next((name for low, high, name in SIZE_BINS
                                            if low <= float(v) < high), None),
             tuple(name for _, _, name in SIZE_BINS)),
    "subtlety": ("subtlety", lambda v: str(round(float(v))) if 1 <= round(float(v)) <= 5
                 else None, ("1", "2", "3", "4", "5")),
    "calcified": ("calcified", lambda v: "yes" if int(v) else "no", ("yes", "no")),
    "border": ("border_irregular", lambda v: "irregular" if int(v) else "regular",
               ("regular", "irregular")),
    "texture": ("inhomogeneous", lambda v: "inhomogeneous" if int(v) else "homogeneous",
                ("homogeneous", "inhomogeneous")),
}
"""Breakdown dimensions: the lesion attribute each reads, how a value maps to a cell, and the
cells in table order."""

CLASSIFICATION_DEFINITION = (
    "image auc of nodule_probability against the image label (the record's label when present, "
    "else whether boxes is non-empty): Mann-Whitney, ties 1/2; ci95 = percentile bootstrap over "
    "images stratified by label; sensitivity/specificity at nodule_probability >= threshold."
)
CHARACTERISTICS_DEFINITION = (
    "per class of characteristics_probability: AUC over the positive images whose reference "
    "characteristic is known (nodule.characteristics, else the boxes' attributes when they all "
    "agree); border_regular = border_irregular 0, texture_homogeneous = inhomogeneous 0; "
    "n_positive/n_negative = nodules with/without the class; auc null with a note where one "
    "class is missing; ci95 = bootstrap stratified by class."
)
BREAKDOWN_DEFINITION = (
    "per cell of nodule size (diameter_mm), subtlety and characteristic: sens_op = share of the "
    "cell's lesions hit (IoU > 0.2, greedy by score as in the FROC) by a box scoring at least "
    "the operating point's threshold, the lowest box score at which FP/image over all images "
    "is <= the operating point's fp_per_image (\"inf\" when no box qualifies, null without "
    "detections); sens_score = the same at box score >= "
    "score_threshold; ci95 of a sensitivity = Wilson score interval; auc = image AUC of the "
    "cell's positive images (a lesion in the cell) against all negative images, scored by "
    "auc_source, bootstrap ci95 stratified by label; iou_mean = mean IoU of the cell's positive "
    "images with a mask (prediction_mask >= mask threshold); n_* = counts behind each cell."
)


def image_label(record: Mapping[str, Any]) -> int | None:
    """The image-level truth: ``label`` when present, else whether ``boxes`` is non-empty.

    Returns:
        0, 1, or None when the record carries neither.

    Raises:
        InputError: a ``label`` that is not 0/1.
    """
    value = record.get("label")
    if value is not None:
        if isinstance(value, bool) or (isinstance(value, int | float) and value in (0, 1)):
            return int(value)
        raise InputError(f"label must be 0 or 1, got {value!r}", path=str(record.get("id")),
                         hint="label is the image-level nodule label (1: nodule present)")
    boxes = record.get("boxes")
    return int(len(boxes) > 0) if isinstance(boxes, list) else None


def lesion_attributes(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The attributes of each reference box, in box order.

    A box's own ``attributes``; for a record with one box and none there, the record's
    ``nodule.characteristics``; else ``{}``.
    """
    boxes = record.get("boxes") if isinstance(record.get("boxes"), list) else []
    nodule = record.get("nodule")
    fallback = nodule.get("characteristics") if isinstance(nodule, Mapping) else None
    out = []
    for box in boxes:
        attributes = box.get("attributes") if isinstance(box, Mapping) else None
        if not isinstance(attributes, Mapping):
            attributes = fallback if isinstance(fallback, Mapping) and len(boxes) == 1 else {}
        out.append(dict(attributes))
    return out


def reference_characteristics(record: Mapping[str, Any]) -> dict[str, Any]:
    """The image's nodule characteristics: ``nodule.characteristics``, else each attribute on
    which all of its boxes agree (an attribute they disagree on, or that none gives, is left
    out)."""
    nodule = record.get("nodule")
    if isinstance(nodule, Mapping) and isinstance(nodule.get("characteristics"), Mapping):
        return {k: v for k, v in nodule["characteristics"].items() if v is not None}
    merged: dict[str, Any] = {}
    conflicting: set[str] = set()
    for attributes in lesion_attributes(record):
        for key, value in attributes.items():
            if value is None:
                continue
            if key in merged and merged[key] != value:
                conflicting.add(key)
            merged.setdefault(key, value)
    return {k: v for k, v in merged.items() if k not in conflicting}


def _probability(value: Any, key: str, record: Mapping[str, Any]) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not 0.0 <= number <= 1.0:
        raise InputError(f"{key} must be a probability in [0, 1], got {value!r}",
                         path=str(record.get("id")))
    return number


def _auc_with_ci(scores: np.ndarray, labels: np.ndarray, seed: int, n_boot: int
                 ) -> tuple[float, list[float] | None]:
    value = auc(scores, labels)
    ci = None
    if n_boot > 0:
        ci = list(bootstrap_ci(np.arange(len(labels)), seed, n_boot, strata=labels,
                               statistic=lambda idx: auc(scores[idx], labels[idx])))
    return value, ci


def classification_summary(records: Sequence[Record], *, seed: int = 0, n_boot: int = 1000,
                           threshold: float = 0.5
                           ) -> tuple[dict[str, Any], np.ndarray, np.ndarray] | None:
    """Image-level AUC of ``nodule_probability`` against the image label.

    Args:
        records: the record stream; those with ``nodule_probability`` count.
        seed: seed of the bootstrap CI.
        n_boot: bootstrap resamples; 0 skips the CI.
        threshold: probability at or above which an image is called positive (for
            ``sensitivity``/``specificity``).

    Returns:
        ``(metrics, scores, labels)`` — ``auc``, ``auc_ci95``, ``sensitivity``, ``specificity``,
        the counts and ``definition`` — or None when no record has ``nodule_probability``.

    Raises:
        InputError: a probability without a label (``label`` or ``boxes``), a value outside
            [0, 1], or only one class.
    """
    scores, labels, from_label = [], [], 0
    for record in records:
        if record.get("nodule_probability") is None:
            continue
        label = image_label(record)
        if label is None:
            raise InputError("record has nodule_probability but no truth",
                             path=str(record.get("id")),
                             hint="give 'label' (0/1) or 'boxes' ([] for a negative image)")
        from_label += record.get("label") is not None
        scores.append(_probability(record["nodule_probability"], "nodule_probability", record))
        labels.append(label)
    if not scores:
        return None
    score_array, label_array = np.array(scores), np.array(labels, dtype=int)
    if label_array.min() == label_array.max():
        raise InputError("image AUC needs images with and without a nodule",
                         hint="list negative images too ('label': 0 or 'boxes': [])")
    value, ci = _auc_with_ci(score_array, label_array, seed, n_boot)
    called = score_array >= threshold
    metrics = {
        "auc": value, "auc_ci95": ci,
        "sensitivity": float(called[label_array == 1].mean()),
        "specificity": float((~called[label_array == 0]).mean()),
        "threshold": threshold,
        "n_images": len(scores), "n_positive": int(label_array.sum()),
        "n_negative": int((label_array == 0).sum()), "n_labelled_by_label": from_label,
        "definition": CLASSIFICATION_DEFINITION,
    }
    return metrics, score_array, label_array


def characteristics_summary(records: Sequence[Record], *, seed: int = 0, n_boot: int = 1000
                            ) -> dict[str, Any] | None:
    """Per-class AUC of ``characteristics_probability`` on the positive images.

    Returns:
        ``{class: {auc, auc_ci95, n, n_positive, n_negative[, note]}, ..., definition}`` over
        :data:`CHARACTERISTICS`, or None when no record has ``characteristics_probability``.

    Raises:
        InputError: a probability outside [0, 1] or a characteristics_probability that is not
            an object.
    """
    carrying = [r for r in records if r.get("characteristics_probability") is not None]
    if not carrying:
        return None
    pairs: dict[str, list[tuple[float, int]]] = {name: [] for name in CHARACTERISTICS}
    for record in carrying:
        predicted = record["characteristics_probability"]
        if not isinstance(predicted, Mapping):
            raise InputError("characteristics_probability must be an object {class: p}",
                             path=str(record.get("id")))
        if image_label(record) != 1:
            continue
        reference = reference_characteristics(record)
        for name, (attribute, positive) in CHARACTERISTICS.items():
            if predicted.get(name) is None or reference.get(attribute) is None:
                continue
            pairs[name].append((_probability(predicted[name], name, record),
                                int(int(reference[attribute]) == positive)))
    block: dict[str, Any] = {}
    for name, items in pairs.items():
        labels = np.array([t for _, t in items], dtype=int)
        entry: dict[str, Any] = {"auc": None, "auc_ci95": None, "n": len(items),
                                 "n_positive": int(labels.sum()),
                                 "n_negative": int((labels == 0).sum())}
        if entry["n_positive"] and entry["n_negative"]:
            entry["auc"], entry["auc_ci95"] = _auc_with_ci(
                np.array([p for p, _ in items]), labels, seed, n_boot)
        else:
            missing = "with" if not entry["n_positive"] else "without"
            entry["note"] = f"skipped: no nodule {missing} this class"
        block[name] = entry
    block["definition"] = CHARACTERISTICS_DEFINITION
    return block


def lesion_scores(truth: np.ndarray, boxes: np.ndarray, scores: np.ndarray, *,
                  iou_threshold: float = 0.2) -> np.ndarray:
    """The score of the box that hits each lesion, ``-inf`` for a lesion never hit.

    The matching of :func:`cxrkit.metrics.match_detections` (by descending score, a hit is
    IoU > ``iou_threshold`` with a lesion not yet matched, the free lesion of highest IoU), so a
    lesion counts as found at threshold ``t`` exactly when its score here is ``≥ t``.

    Args:
        truth: ``(K, 4)`` lesion boxes.
        boxes: ``(M, 4)`` predicted boxes.
        scores: ``(M,)`` their scores.

    Returns:
        ``(K,)`` float64.
    """
    # Copied from cxrkit.metrics.detection.match_detections, recording the lesion's side.
    iou = box_iou(boxes, truth)  # (M, K)
    found = np.full(iou.shape[1], -np.inf)
    for i in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable"):
        free = (iou[i] > iou_threshold) & np.isinf(found)
        if free.any():
            found[int(np.argmax(np.where(free, iou[i], -1.0)))] = float(scores[i])
    return found


def wilson_interval(hits: int, n: int, z: float = 1.959964) -> list[float] | None:
    """Wilson score 95% interval of a proportion ``hits / n`` (None for ``n = 0``)."""
    if n == 0:
        return None
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def operating_threshold(truth: Sequence[np.ndarray], boxes: Sequence[np.ndarray],
                        scores: Sequence[np.ndarray], fp_per_image: float) -> float:
    """The lowest box score at which the FROC's false positives per image stay ≤ the rate
    (``inf`` when even the highest score exceeds it)."""
    curve = froc(truth, boxes, scores)
    allowed = curve.thresholds[curve.fp_per_image <= fp_per_image]
    return float(allowed.min()) if allowed.size else math.inf


def breakdown_summary(records: Sequence[Record], *, parse: Callable[..., tuple[np.ndarray,
                      np.ndarray]], iou: Mapping[int, float] | None = None, seed: int = 0,
                      n_boot: int = 1000, fp_per_image: float = 0.25,
                      score_threshold: float = 0.5) -> dict[str, Any] | None:
    """Sensitivity, image AUC and IoU per nodule size bin, subtlety and characteristic.

    Args:
        records: the record stream.
        parse: ``parse(items, key, record, scored=...) -> (boxes (K, 4), scores (K,))``, the
            box reader of :mod:`cxrkit.metrics.records` (which validates them).
        iou: ``{record index: IoU}`` of the positive images whose masks were compared.
        seed: seed of the bootstrap CIs.
        n_boot: bootstrap resamples; 0 skips the AUC CIs.
        fp_per_image: the FROC operating point of ``sens_op``.
        score_threshold: the box score of ``sens_score``.

    Returns:
        ``{operating_point, score_threshold, auc_source, by: {dimension: [cell, ...]},
        n_unknown, definition}``, or None when no lesion carries an attribute to break down by.
    """
    iou = iou or {}
    lesions: list[tuple[int, dict[str, Any], float]] = []  # (record index, attributes, score)
    froc_truth, froc_boxes, froc_scores = [], [], []
    for index, record in enumerate(records):
        if not isinstance(record.get("boxes"), list):
            continue
        truth = parse(record["boxes"], "boxes", record)[0]
        attributes = lesion_attributes(record)
        if isinstance(record.get("detections"), list):
            boxes, scores = parse(record["detections"], "detections", record, scored=True)
            found = lesion_scores(truth, boxes, scores)
            froc_truth.append(truth)
            froc_boxes.append(boxes)
            froc_scores.append(scores)
        else:
            found = np.full(len(truth), math.nan)  # not detected by anyone: no sensitivity
        lesions += [(index, a, float(s)) for a, s in zip(attributes, found, strict=True)]
    if not any(a for _, a, _ in lesions):
        return None
    threshold = (operating_threshold(froc_truth, froc_boxes, froc_scores, fp_per_image)
                 if any(len(t) for t in froc_truth) else None)  # inf: no box anywhere
    image_scores, auc_source = _image_scores(records)
    labels = {i: image_label(r) for i, r in enumerate(records)}
    negatives = [i for i, label in labels.items() if label == 0 and i in image_scores]
    by: dict[str, list[dict[str, Any]]] = {}
    unknown: dict[str, int] = {}
    for dimension, (attribute, cell_of, cells) in BREAKDOWNS.items():
        members: dict[str, list[tuple[int, float]]] = {cell: [] for cell in cells}
        unknown[dimension] = 0
        for index, attributes, score in lesions:
            cell = _cell(attributes.get(attribute), cell_of)
            if cell is None:
                unknown[dimension] += 1
            else:
                members[cell].append((index, score))
        rows = [_cell_stats(cell, items, threshold, score_threshold, image_scores, negatives,
                            iou, labels, seed, n_boot) for cell, items in members.items()]
        by[dimension] = rows
    return {"operating_point": {"fp_per_image": fp_per_image, "threshold": threshold},
            "score_threshold": score_threshold, "auc_source": auc_source, "by": by,
            "n_unknown": unknown, "definition": BREAKDOWN_DEFINITION}


def _cell(value: Any, cell_of: Callable[[Any], str | None]) -> str | None:
    if value is None:
        return None
    try:
        return cell_of(value)
    except (TypeError, ValueError):
        return None


def _image_scores(records: Sequence[Record]) -> tuple[dict[int, float], str | None]:
    """Each labelled image's score: nodule_probability when every such image has one, else the
    highest detection score (0 without boxes); ``{}`` when neither is available."""
    labelled = [(i, r) for i, r in enumerate(records) if image_label(r) is not None]
    if labelled and all(r.get("nodule_probability") is not None for _, r in labelled):
        return {i: float(r["nodule_probability"]) for i, r in labelled}, "nodule_probability"
    if labelled and all(isinstance(r.get("detections"), list) for _, r in labelled):
        return ({i: max((float(d["score"] if isinstance(d, Mapping) else d[4])
                         for d in r["detections"]), default=0.0) for i, r in labelled},
                "max box score")
    return {}, None


def _cell_stats(cell: str, items: list[tuple[int, float]], threshold: float | None,
                score_threshold: float, image_scores: Mapping[int, float],
                negatives: list[int], iou: Mapping[int, float], labels: Mapping[int, int | None],
                seed: int, n_boot: int) -> dict[str, Any]:
    """One table cell: its lesion sensitivities, image AUC and IoU, each with its n."""
    found = np.array([s for _, s in items if not math.isnan(s)])  # lesions with detections
    stats: dict[str, Any] = {"cell": cell, "n_lesions": len(items)}
    for key, cut in (("sens_op", threshold), ("sens_score", score_threshold)):
        hits = int((found >= cut).sum()) if cut is not None else 0
        valid = cut is not None and len(found) > 0
        stats[key] = hits / len(found) if valid else None
        stats[f"{key}_ci95"] = wilson_interval(hits, len(found)) if valid else None
    positives = sorted({i for i, _ in items if labels.get(i) == 1 and i in image_scores})
    stats.update({"n_images_pos": len(positives), "n_images_neg": len(negatives),
                  "auc": None, "auc_ci95": None})
    if positives and negatives:
        order = positives + negatives
        stats["auc"], stats["auc_ci95"] = _auc_with_ci(
            np.array([image_scores[i] for i in order]),
            np.r_[np.ones(len(positives), int), np.zeros(len(negatives), int)], seed, n_boot)
    ious = [iou[i] for i in sorted({i for i, _ in items}) if i in iou]
    stats["iou_mean"] = float(np.mean(ious)) if ious else None
    stats["n_iou"] = len(ious)
    return stats


def segmentation_cis(counts: Sequence[Mapping[str, int]], *, seed: int = 0, n_boot: int = 1000
                     ) -> dict[str, list[float] | None]:
    """Bootstrap 95% CIs of ``iou_mean_pos`` and ``dice_mean_pos`` over the images with a
    lesion (from :func:`cxrkit.metrics.records.segmentation_counts`)."""
    positive = [c for c in counts if c["truth_px"] > 0]
    out: dict[str, list[float] | None] = {"iou_mean_pos_ci95": None, "dice_mean_pos_ci95": None}
    if n_boot <= 0 or len(positive) < 2:
        return out
    inter = np.array([c["intersection_px"] for c in positive], dtype=np.float64)
    iou = inter / np.array([c["union_px"] for c in positive], dtype=np.float64)
    dice = 2 * inter / np.array([c["pred_px"] + c["truth_px"] for c in positive], dtype=np.float64)
    out["iou_mean_pos_ci95"] = list(bootstrap_ci(iou, seed, n_boot))
    out["dice_mean_pos_ci95"] = list(bootstrap_ci(dice, seed, n_boot))
    return out
