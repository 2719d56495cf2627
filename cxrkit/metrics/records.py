"""Summaries of a record stream for ``cxrkit eval``: per-image measurements → one metric dict.

``eval`` measures whatever the records carry (see the ``eval`` man page for the definitions):

- **image quality** of ``path`` against ``reference``: :func:`image_quality` per image (PSNR, SSIM,
  MS-SSIM, PSNR after a linear fit), aggregated by :func:`aggregate` (mean over images and a
  percentile bootstrap CI over images);
- **no-reference** measures of ``path``: :func:`no_reference_quality` (noise sigma, mean
  gradient, and the CNR of an ``roi`` box);
- **detection** from ``detections`` (predictions ``[{x1, y1, x2, y2, score}]``) against ``boxes``
  (ground truth ``[{x1, y1, x2, y2}]``, ``[]`` for a negative image): :func:`detection_summary`
  (image AUC, FROC, NODE21 score, optional CPM, bootstrap CIs);
- **a detector's image-level outputs** (``cxrkit detect``): ``classification`` (AUC of
  ``nodule_probability`` against ``label`` or non-empty ``boxes``), ``characteristics`` (AUC per
  class of ``characteristics_probability``) and ``breakdown`` (sensitivity, AUC and IoU per
  nodule size, subtlety and characteristic), from :mod:`cxrkit.metrics.breakdown`;
- **segmentation** of ``pred_mask`` (or ``prediction_mask``) against ``mask``: per-image pixel
  counts from :func:`segmentation_counts`, summarised by :func:`segmentation_summary` in the
  conventions of :func:`cxrkit.metrics.segmentation_metrics`.

:func:`summarize_records` ties them together. Infinite values (the PSNR of identical images) stay
``math.inf`` in memory; :func:`jsonable` writes them as the string ``"inf"`` (JSON has no
infinity, and ``null`` would read as "not measured").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxrkit.errors import InputError
from cxrkit.metrics.breakdown import (
    CHARACTERISTICS,
    breakdown_summary,
    characteristics_summary,
    classification_summary,
    image_label,
    segmentation_cis,
)
from cxrkit.metrics.detection import (
    NODE21_RATES,
    FrocCurve,
    auc,
    detection_metrics,
    froc,
    image_scores,
    match_detections,
    node21_score,
)
from cxrkit.metrics.image import (
    MS_SSIM_MIN_SIZE,
    bootstrap_ci,
    contrast_to_noise,
    mean_gradient,
    ms_ssim,
    noise_sigma,
    psnr,
    psnr_linear_fit,
    ssim,
)

Record = dict[str, Any]

IMAGE_METRICS = ("psnr", "ssim", "ms_ssim", "psnr_fit")
"""Per-image full-reference measures, in report order."""
NO_REFERENCE_METRICS = ("noise_sigma", "mean_gradient", "cnr")
"""Per-image no-reference measures, in report order."""

IMAGE_DEFINITION = (
    "path vs reference on [0, 1] display images: psnr = 10·log10(1/MSE) dB (data range 1; "
    "identical images give \"inf\"); ssim = mean SSIM, Gaussian window 11 px, sigma 1.5, "
    "K1 0.01, K2 0.03, population statistics, valid region (Wang et al. 2004); ms_ssim = 5-scale "
    "MS-SSIM (Wang et al. 2003) where both sides are >= 176 px; psnr_fit = PSNR after the "
    "least-squares fit a·path + b onto reference. Mean over images; ci95 = percentile bootstrap "
    "over images."
)
NO_REFERENCE_DEFINITION = (
    "noise_sigma = Immerkaer (1996) MAD estimate of white-noise sigma; mean_gradient = mean "
    "gradient magnitude per px (sharpness); cnr = |mean(roi) - mean(ring)| / std(ring), ring "
    "5 px around the record's roi box."
)
DETECTION_IMAGE_ONLY_DEFINITION = (
    "image auc = Mann-Whitney, ties 1/2, image score = max box score (0 without boxes), against "
    "the record's label; no FROC: no record with detections has boxes; ci95 = bootstrap over "
    "images stratified by label."
)
DETECTION_DEFINITION = (
    "image auc = Mann-Whitney, ties 1/2, image score = max box score (0 without boxes); FROC "
    "hits = IoU > 0.2, each lesion matched once, duplicates count as FP; FP/image over all "
    "images, negatives included; sens@r read off the FROC polyline through every operating "
    "point (linear between FP rates, a vertical step where they repeat, as MONAI and LUNA16); "
    "node21_score = 0.75·auc + 0.25·sens@0.25; cpm = mean sens at 1/8..8 FP/image (LUNA16 "
    "rates, duplicates still FP); ci95 = bootstrap over images stratified by label."
)

GATES: dict[str, tuple[str, ...]] = {
    **{name: ("image_quality", name, "mean") for name in IMAGE_METRICS},
    **{name: ("no_reference", name, "mean") for name in ("mean_gradient", "cnr")},
    "auc": ("detection", "auc"),
    "node21": ("detection", "node21_score"),
    "node21_score": ("detection", "node21_score"),
    **{f"sens@{rate}": ("detection", f"sens@{rate}") for rate in NODE21_RATES},
    "cpm": ("detection", "cpm"),
    "iou": ("segmentation", "iou_mean_pos"),
    "dice": ("segmentation", "dice_mean_pos"),
    "image_auc": ("classification", "auc"),
    **{f"{name}_auc": ("characteristics", name, "auc") for name in CHARACTERISTICS},
}
"""Metric names ``eval --fail-under NAME=VALUE`` accepts, and where each sits in the summary.
Image and no-reference measures gate on their mean over images."""


def image_quality(x: np.ndarray, ref: np.ndarray) -> dict[str, float | None]:
    """Full-reference measures of one image (data range 1).

    Args:
        x: ``(H, W)`` test image, display values in [0, 1].
        ref: ``(H, W)`` reference of the same shape.

    Returns:
        ``psnr`` (dB, ``inf`` when identical), ``ssim``, ``ms_ssim`` (None when a side is below
        :data:`~cxrkit.metrics.MS_SSIM_MIN_SIZE`) and ``psnr_fit`` (dB).

    Raises:
        InputError: the shapes differ or are smaller than the 11 px SSIM window.
    """
    return {
        "psnr": psnr(x, ref),
        "ssim": ssim(x, ref),
        "ms_ssim": ms_ssim(x, ref) if min(np.shape(x)) >= MS_SSIM_MIN_SIZE else None,
        "psnr_fit": psnr_linear_fit(x, ref),
    }


def no_reference_quality(image: np.ndarray, roi: Sequence[float] | Mapping[str, float] | None
                         = None) -> dict[str, float | None]:
    """No-reference measures of one image.

    Args:
        image: ``(H, W)`` display image in [0, 1].
        roi: an object box ``[x1, y1, x2, y2]`` (or ``{x1, y1, x2, y2}``) in px, half-open, for
            the contrast-to-noise ratio against the 5 px ring around it; None to skip the CNR.

    Returns:
        ``noise_sigma`` (display units), ``mean_gradient`` (display units per px), ``cnr``.
    """
    result: dict[str, float | None] = {"noise_sigma": noise_sigma(image),
                                       "mean_gradient": mean_gradient(image), "cnr": None}
    if roi is not None:
        x1, y1, x2, y2 = (round(v) for v in _box(roi, "roi"))
        region = np.zeros(np.shape(image), dtype=bool)
        region[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = True
        result["cnr"] = contrast_to_noise(image, region)
    return result


def segmentation_counts(prediction: np.ndarray, truth: np.ndarray, threshold: float = 0.5
                        ) -> dict[str, int]:
    """Pixel counts of one image for :func:`segmentation_summary`.

    ``P = prediction ≥ threshold`` and ``G = truth > 0`` (as in
    :func:`cxrkit.metrics.segmentation_metrics`).

    Args:
        prediction: ``(H, W)`` probabilities or a binary mask.
        truth: ``(H, W)`` mask; any nonzero pixel is lesion.
        threshold: probability at or above which a pixel is predicted lesion.

    Returns:
        ``intersection_px``, ``union_px``, ``pred_px``, ``truth_px``.
    """
    p, g = np.asarray(prediction) >= threshold, np.asarray(truth) > 0
    if p.shape != g.shape:
        raise InputError(f"predicted mask differs in shape from its truth: {p.shape} vs {g.shape}")
    return {"intersection_px": int(np.sum(p & g)), "union_px": int(np.sum(p | g)),
            "pred_px": int(p.sum()), "truth_px": int(g.sum())}


def segmentation_summary(counts: Sequence[Mapping[str, int]], threshold: float = 0.5
                         ) -> dict[str, Any]:
    """IoU and Dice over images from their :func:`segmentation_counts`.

    The same values and conventions as :func:`cxrkit.metrics.segmentation_metrics`, computed from
    counts so that no mask has to stay in memory: ``iou_mean_pos`` and ``dice_mean_pos`` (primary;
    mean over images with a lesion), ``iou_global`` (micro), ``iou_mean_all_empty1``,
    ``empty_fp_rate``.
    """
    if not counts:
        raise InputError("segmentation needs at least one image")
    inter, union, pred, truth = (np.array([c[key] for c in counts], dtype=np.float64)
                                 for key in ("intersection_px", "union_px", "pred_px",
                                             "truth_px"))
    positive = truth > 0
    iou = np.divide(inter, union, out=np.ones_like(inter), where=union > 0)
    dice = np.divide(2 * inter, pred + truth, out=np.ones_like(inter), where=(pred + truth) > 0)
    return {
        "iou_mean_pos": float(iou[positive].mean()) if positive.any() else None,
        "dice_mean_pos": float(dice[positive].mean()) if positive.any() else None,
        "iou_global": float(inter.sum() / union.sum()) if union.sum() > 0 else None,
        "iou_mean_all_empty1": float(iou.mean()),
        "empty_fp_rate": float((pred[~positive] > 0).mean()) if (~positive).any() else None,
        "n_images": len(counts), "n_positive": int(positive.sum()), "threshold": threshold,
        "convention": "iou_mean_pos/dice_mean_pos: mean over images with a lesion "
                      "(MONAI MeanIoU ignore_empty=True)",
    }


def aggregate(values: Sequence[float], *, seed: int = 0, n_boot: int = 1000) -> dict[str, Any]:
    """Mean over images with a bootstrap CI, and the spread.

    Args:
        values: one value per image (``inf`` allowed).
        seed: seed of the bootstrap resampling.
        n_boot: bootstrap resamples; 0 skips the CI.

    Returns:
        ``mean``, ``ci95`` (``[low, high]``; None without resamples, for a single image, or when
        a value is infinite: the mean is then ``inf``), ``median``, ``min``, ``max``, ``n`` and
        ``n_inf``.
    """
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise InputError("nothing to aggregate")
    n_inf = int(np.isinf(array).sum())
    ci = None
    if n_boot > 0 and n_inf == 0 and array.size > 1:
        ci = list(bootstrap_ci(array, seed, n_boot))
    return {"mean": float(array.mean()), "ci95": ci, "median": float(np.median(array)),
            "min": float(array.min()), "max": float(array.max()), "n": int(array.size),
            "n_inf": n_inf}


@dataclass(frozen=True)
class DetectionCurves:
    """The curves behind the detection numbers, for plots.

    Attributes:
        roc_fpr: ``(T + 1,)`` false-positive rate of the image-level ROC, from 0.
        roc_tpr: ``(T + 1,)`` true-positive rate.
        froc: the FROC operating points.
    """

    roc_fpr: np.ndarray
    roc_tpr: np.ndarray
    froc: FrocCurve


def detection_summary(records: Sequence[Record], *, seed: int = 0, n_boot: int = 1000,
                      with_cpm: bool = False) -> tuple[dict[str, Any], DetectionCurves] | None:
    """NODE21-style detection metrics of the records that carry ``detections``.

    Every record with ``detections`` needs ``boxes`` (ground truth; ``[]`` for a negative image),
    and while any record has ``detections``, every record with ``boxes`` needs them too (a list,
    empty when the detector found nothing), so that FP per image counts every image. A record
    with ``detections`` and an image-level ``label`` but no ``boxes`` (a real radiograph without
    lesion boxes) takes no part in the FROC; when no record has boxes, only the image AUC (max
    box score against ``label``) is given, with no curves.

    Args:
        records: the record stream.
        seed: seed of the bootstrap CIs.
        n_boot: bootstrap resamples; 0 skips the CIs.
        with_cpm: also report the LUNA16 CPM.

    Returns:
        The metrics (:func:`cxrkit.metrics.detection_metrics` plus ``auc_ci95``,
        ``node21_score_ci95`` and ``definition``) and the curves; None when no record has
        ``detections``.

    Raises:
        InputError: a record with predictions but no truth or the reverse, malformed boxes, or
            data that admit no AUC or FROC (no lesion, no negative image, or no detection at
            all unless the records are a detector's, with ``nodule_probability``: then the
            FROC is flat at 0 and ``note`` says so).
    """
    if not any("detections" in r for r in records):
        return None
    truth, boxes, scores = [], [], []
    label_only = [r for r in records if "detections" in r and "boxes" not in r
                  and r.get("label") is not None]
    for record in records:
        if "detections" not in record and "boxes" not in record:
            continue
        if "boxes" not in record and record.get("label") is not None:
            continue
        for key in ("boxes", "detections"):
            if key not in record:
                raise InputError(f"record has {'detections' if key == 'boxes' else 'boxes'} but "
                                 f"no {key!r}", path=str(record.get("id")),
                                 hint="list every image with 'boxes' (ground truth, [] for a "
                                      "negative) and 'detections' ([] for none)")
        truth.append(_boxes(record["boxes"], "boxes", record)[0])
        predicted, predicted_scores = _boxes(record["detections"], "detections", record,
                                             scored=True)
        boxes.append(predicted)
        scores.append(predicted_scores)
    if not truth:
        return _image_level_detection(label_only, seed=seed, n_boot=n_boot), None
    labels = np.array([len(t) > 0 for t in truth], dtype=int)
    if labels.min() == labels.max():
        raise InputError("detection needs images with and without lesions",
                         hint="list the negative images too, with 'boxes': []")
    found_nothing = not any(len(s) for s in scores)
    if found_nothing and not any(r.get("nodule_probability") is not None for r in records):
        raise InputError("no record has a detection, so the FROC is empty",
                         hint="keep every box for evaluation (score threshold 0)")
    metrics = detection_metrics(truth, boxes, scores)
    if found_nothing:  # a detector's records (cxrkit detect) where it found no box at all
        metrics["note"] = "no record has a detection: sensitivity 0 at every rate"
    if not with_cpm:
        metrics.pop("cpm")
    per_image = image_scores(scores)
    if n_boot > 0:
        metrics["auc_ci95"] = list(bootstrap_ci(
            np.arange(len(truth)), seed, n_boot, strata=labels,
            statistic=lambda idx: auc(per_image[idx], labels[idx])))
        matches = [match_detections(t, b, s) for t, b, s in zip(truth, boxes, scores, strict=True)]
        metrics["node21_score_ci95"] = list(bootstrap_ci(
            np.arange(len(truth)), seed, n_boot, strata=labels,
            statistic=lambda idx: _node21_of(idx, truth, scores, matches, per_image, labels)))
    metrics["definition"] = DETECTION_DEFINITION
    if label_only:
        metrics["n_label_only"] = len(label_only)
        metrics["label_only"] = "records with a label but no boxes are left out of this block"
    fpr, tpr = roc_curve(per_image, labels)
    return metrics, DetectionCurves(fpr, tpr, froc(truth, boxes, scores))


def _image_level_detection(records: Sequence[Record], *, seed: int, n_boot: int
                           ) -> dict[str, Any]:
    """The detection block of records with an image ``label`` and no ``boxes``: image AUC of
    the highest box score, no FROC."""
    per_image = image_scores([_boxes(r["detections"], "detections", r, scored=True)[1]
                              for r in records])
    labels = np.array([image_label(r) for r in records], dtype=int)
    if labels.min() == labels.max():
        raise InputError("image AUC needs images with and without a nodule",
                         hint="list negative images too ('label': 0)")
    metrics: dict[str, Any] = {"auc": auc(per_image, labels)}
    if n_boot > 0:
        metrics["auc_ci95"] = list(bootstrap_ci(
            np.arange(len(labels)), seed, n_boot, strata=labels,
            statistic=lambda idx: auc(per_image[idx], labels[idx])))
    metrics.update({"n_images": len(labels), "n_positive": int(labels.sum()),
                    "auc_source": "detector", "froc": None,
                    "definition": DETECTION_IMAGE_ONLY_DEFINITION})
    return metrics


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image-level ROC: false- and true-positive rates at each distinct score, from (0, 0).

    Args:
        scores: ``(N,)`` image scores.
        labels: ``(N,)`` 0/1 labels, both classes present.

    Returns:
        ``(fpr, tpr)``, each ``(T + 1,)`` and non-decreasing, ending at (1, 1).
    """
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    values, truth = np.asarray(scores, dtype=np.float64)[order], np.asarray(labels)[order]
    last = np.flatnonzero(np.r_[values[1:] != values[:-1], True])  # last index of each score
    tp, fp = np.cumsum(truth == 1)[last], np.cumsum(truth == 0)[last]
    return (np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)])


def _node21_of(index: np.ndarray, truth: Sequence[np.ndarray], scores: Sequence[np.ndarray],
               matches: Sequence[np.ndarray], per_image: np.ndarray, labels: np.ndarray) -> float:
    """NODE21 score of a resample of images, from their precomputed matches."""
    # Copied from cxrkit.metrics.detection.froc (pooling), with the per-image matching done once.
    pooled = np.concatenate([np.asarray(scores[i], dtype=np.float64).reshape(-1) for i in index])
    hits = np.concatenate([matches[i] for i in index])
    order = np.argsort(-pooled, kind="stable")
    pooled, hits = pooled[order], hits[order]
    last = np.flatnonzero(np.r_[pooled[1:] != pooled[:-1], True])
    n_lesions = sum(len(truth[i]) for i in index)
    sens = 0.0  # a resample of images without any box
    if pooled.size:
        curve = FrocCurve(pooled[last], np.cumsum(hits == 0)[last] / len(index),
                          np.cumsum(hits == 1)[last] / n_lesions, len(index), n_lesions)
        sens = float(curve.sensitivity_at([0.25])[0])
    return node21_score(auc(per_image[index], labels[index]), sens)


def _box(value: Any, key: str) -> tuple[float, float, float, float]:
    """One ``[x1, y1, x2, y2]`` (or ``{x1, y1, x2, y2}``) box as floats."""
    if isinstance(value, Mapping):
        try:
            value = [value["x1"], value["y1"], value["x2"], value["y2"]]
        except KeyError as exc:
            raise InputError(f"{key}: a box needs x1, y1, x2, y2 (missing {exc})") from exc
    try:
        x1, y1, x2, y2 = (float(v) for v in value[:4])
    except (TypeError, ValueError) as exc:
        raise InputError(f"{key}: a box is [x1, y1, x2, y2] in px, got {value!r}") from exc
    return x1, y1, x2, y2


def _boxes(items: Any, key: str, record: Record, *, scored: bool = False
           ) -> tuple[np.ndarray, np.ndarray]:
    """``(K, 4)`` boxes and ``(K,)`` scores of a record's box list (scores 1 when unscored)."""
    if not isinstance(items, list):
        raise InputError(f"{key!r} must be a list of boxes", path=str(record.get("id")))
    coords, values = [], []
    for item in items:
        coords.append(_box(item, key))
        score = item.get("score") if isinstance(item, Mapping) else (
            item[4] if isinstance(item, Sequence) and len(item) > 4 else None)
        if scored and score is None:
            raise InputError(f"{key}: every predicted box needs a score",
                             path=str(record.get("id")))
        values.append(float(score) if score is not None else 1.0)
    return np.array(coords, dtype=np.float64).reshape(-1, 4), np.array(values, dtype=np.float64)


@dataclass
class Summary:
    """What ``cxrkit eval`` measured.

    Attributes:
        metrics: JSON-ready summary (``inf`` as a float; see :func:`jsonable`).
        rows: one dict of measurements per image (``id``, ``path``, metric values).
        curves: the detection curves, when records carried detections and boxes.
        image_roc: ``(fpr, tpr)`` of ``nodule_probability``, when records carried it.
    """

    metrics: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    curves: DetectionCurves | None = None
    image_roc: tuple[np.ndarray, np.ndarray] | None = None


def summarize_records(records: Sequence[Record], rows: Sequence[dict[str, Any]], *,
                      seed: int = 0, n_boot: int = 1000, with_cpm: bool = False,
                      mask_threshold: float = 0.5, failed: int = 0,
                      resample: str | None = None, fp_per_image: float = 0.25,
                      score_threshold: float = 0.5) -> Summary:
    """The summary of an evaluation: aggregates of per-image rows plus detection metrics.

    Args:
        records: the records read (for detection, which needs no pixels).
        rows: per-image measurements: keys of :data:`IMAGE_METRICS`,
            :data:`NO_REFERENCE_METRICS` and of :func:`segmentation_counts`, where measured.
        seed: seed of every bootstrap CI.
        n_boot: bootstrap resamples; 0 skips the CIs.
        with_cpm: report the LUNA16 CPM too.
        mask_threshold: the threshold the segmentation counts used (reported).
        failed: items that could not be measured (reported as ``n_failed``).
        resample: how path and reference were brought to one size, if they were (reported).
        fp_per_image: the FROC operating point of the breakdown's ``sens_op``.
        score_threshold: the box score of the breakdown's ``sens_score``, and the
            ``nodule_probability`` at which the classification block calls an image positive.

    Returns:
        The summary; blocks are present only for what the records carried.

    Raises:
        InputError: the records carry nothing to measure.
    """
    metrics: dict[str, Any] = {"n_records": len(records), "n_failed": failed}
    blocks = (("image_quality", IMAGE_METRICS, IMAGE_DEFINITION),
              ("no_reference", NO_REFERENCE_METRICS, NO_REFERENCE_DEFINITION))
    for name, keys, definition in blocks:
        block: dict[str, Any] = {}
        for key in keys:
            values = [row[key] for row in rows if row.get(key) is not None]
            if values:
                block[key] = aggregate(values, seed=seed, n_boot=n_boot)
        if block:
            block["definition"] = definition
            if name == "image_quality":
                block["resample"] = resample
            metrics[name] = block
    counts = [row for row in rows if "union_px" in row]
    if counts:
        metrics["segmentation"] = segmentation_summary(counts, mask_threshold)
        metrics["segmentation"].update(segmentation_cis(counts, seed=seed, n_boot=n_boot))
    image_roc = None
    classification = classification_summary(records, seed=seed, n_boot=n_boot,
                                            threshold=score_threshold)
    if classification is not None:
        metrics["classification"] = classification[0]
        image_roc = roc_curve(classification[1], classification[2])
    characteristics = characteristics_summary(records, seed=seed, n_boot=n_boot)
    if characteristics is not None:
        metrics["characteristics"] = characteristics
    breakdown = breakdown_summary(records, parse=_boxes, iou=_iou_by_record(records, counts),
                                  seed=seed, n_boot=n_boot, fp_per_image=fp_per_image,
                                  score_threshold=score_threshold)
    if breakdown is not None:
        metrics["breakdown"] = breakdown
    detection = detection_summary(records, seed=seed, n_boot=n_boot, with_cpm=with_cpm)
    if detection is not None:
        metrics["detection"] = detection[0]
    if len(metrics) == 2 and not failed:
        raise InputError("the records carry nothing to measure",
                         hint="records need 'reference' (image quality), 'detections' and "
                              "'boxes', 'nodule_probability' and 'label', or 'pred_mask' and "
                              "'mask'; or pass --no-reference")
    return Summary(metrics, list(rows), detection[1] if detection else None, image_roc)


def _iou_by_record(records: Sequence[Record], counts: Sequence[Mapping[str, Any]]
                   ) -> dict[int, float]:
    """``{record index: IoU}`` of the images with a lesion whose masks were compared (rows are
    matched to records by ``id`` and ``path``)."""
    where = {(r.get("id"), r.get("path")): i for i, r in enumerate(records)}
    out = {}
    for row in counts:
        index = where.get((row.get("id"), row.get("path")))
        if index is not None and row["truth_px"] > 0:
            out[index] = row["intersection_px"] / row["union_px"]
    return out


def gate_value(metrics: Mapping[str, Any], name: str) -> float | None:
    """The value ``--fail-under NAME=…`` compares, or None when it was not measured.

    Raises:
        InputError: an unknown metric name.
    """
    if name not in GATES:
        raise InputError(f"unknown metric {name!r} for a threshold",
                         hint=f"use one of {', '.join(GATES)}")
    value: Any = metrics
    for key in GATES[name]:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return None if value is None else float(value)


def check_thresholds(metrics: Mapping[str, Any], thresholds: Mapping[str, float]) -> list[str]:
    """The failed gates: each metric must be measured and at least its threshold.

    Args:
        metrics: :attr:`Summary.metrics`.
        thresholds: ``{metric name: minimum}`` (names of :data:`GATES`).

    Returns:
        One message per failed gate (empty when all pass), naming the metric, its value and the
        threshold.
    """
    failures = []
    for name, minimum in thresholds.items():
        value = gate_value(metrics, name)
        if value is None:
            failures.append(f"{name} was not measured (threshold {minimum:g})")
        elif not value >= minimum:
            failures.append(f"{name} = {value:.4g} is under the threshold {minimum:g}")
    return failures


def jsonable(value: Any) -> Any:
    """``value`` with infinities as the strings ``"inf"``/``"-inf"``, NaN as None, and numpy
    scalars and arrays as Python numbers and lists, so that it is strict JSON."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    return value
