"""Tests of cxrkit.metrics.records: record streams → summaries, checked against the metric
functions they build on (the oracles) and the golden toy case of ecosystem.md §3.3."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxrkit.errors import InputError
from cxrkit.metrics import detection_metrics, segmentation_metrics
from cxrkit.metrics.records import (
    GATES,
    aggregate,
    check_thresholds,
    detection_summary,
    gate_value,
    image_quality,
    no_reference_quality,
    roc_curve,
    segmentation_counts,
    segmentation_summary,
    summarize_records,
)
from cxrkit.metrics.records import _node21_of as node21_of

TOY = [
    {"id": "A", "boxes": [[10, 10, 30, 30]],
     "detections": [[12, 12, 30, 30, 0.9], [13, 13, 31, 31, 0.8], [60, 60, 70, 70, 0.3]]},
    {"id": "B", "boxes": [[40, 40, 60, 60], [5, 5, 15, 15]], "detections": [[41, 41, 59, 59, 0.6]]},
    {"id": "C", "boxes": [], "detections": [[0, 0, 10, 10, 0.7]]},
    {"id": "D", "boxes": [], "detections": []},
]


def test_image_quality_identity_and_sizes() -> None:
    rng = np.random.default_rng(0)
    small = rng.random((64, 64))
    result = image_quality(small, small)
    assert result["psnr"] == math.inf and result["ssim"] == pytest.approx(1.0)
    assert result["ms_ssim"] is None  # below 176 px
    large = rng.random((176, 180))
    assert image_quality(large, large)["ms_ssim"] == pytest.approx(1.0)
    with pytest.raises(InputError):
        image_quality(small, small[:32])


def test_aggregate_mean_ci_and_infinity() -> None:
    stats = aggregate([1.0, 2.0, 3.0, 4.0], seed=1, n_boot=200)
    assert stats["mean"] == 2.5 and stats["median"] == 2.5 and stats["n"] == 4
    assert 1.0 <= stats["ci95"][0] < 2.5 < stats["ci95"][1] <= 4.0
    assert aggregate([1.0, 2.0, 3.0, 4.0], seed=1, n_boot=200) == stats  # seeded
    assert aggregate([1.0, 2.0], n_boot=0)["ci95"] is None
    assert aggregate([1.0])["ci95"] is None  # one image: no interval
    with_inf = aggregate([30.0, math.inf], n_boot=100)
    assert with_inf["mean"] == math.inf and with_inf["ci95"] is None and with_inf["n_inf"] == 1
    with pytest.raises(InputError):
        aggregate([])


def test_segmentation_summary_equals_segmentation_metrics() -> None:
    rng = np.random.default_rng(7)
    predictions = [rng.random((12, 12)) * (i % 3 != 0) for i in range(8)]
    truths = [(rng.random((12, 12)) > 0.7) * (i % 4 != 1) for i in range(8)]
    expected = segmentation_metrics(predictions, truths, threshold=0.6)
    counts = [segmentation_counts(p, t, 0.6) for p, t in zip(predictions, truths, strict=True)]
    assert segmentation_summary(counts, 0.6) == pytest.approx(expected)
    with pytest.raises(InputError):
        segmentation_counts(np.zeros((4, 4)), np.zeros((4, 5)))


def test_detection_summary_of_the_golden_toy_case() -> None:
    metrics, curves = detection_summary(TOY, seed=0, n_boot=100, with_cpm=True)
    assert metrics["auc"] == pytest.approx(0.75)
    assert metrics["node21_score"] == pytest.approx(0.6458, abs=1e-4)
    assert [metrics[f"sens@{r}"] for r in (0.125, 0.25, 0.5)] == pytest.approx([1/3, 1/3, 2/3])
    assert "cpm" in metrics and "IoU > 0.2" in metrics["definition"]
    np.testing.assert_allclose(curves.froc.fp_per_image, [0, 0.25, 0.5, 0.5, 0.75])
    np.testing.assert_allclose(curves.roc_fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(curves.roc_tpr, [0, 0.5, 0.5, 1, 1])
    assert "cpm" not in detection_summary(TOY, n_boot=0)[0]
    assert detection_summary([{"id": "x", "boxes": []}]) is None  # truth alone: nothing to do


def test_bootstrap_node21_from_precomputed_matches_equals_recomputation() -> None:
    from cxrkit.metrics import image_scores, match_detections
    from cxrkit.metrics.records import _boxes

    truth = [_boxes(r["boxes"], "boxes", r)[0] for r in TOY]
    predicted = [_boxes(r["detections"], "detections", r, scored=True) for r in TOY]
    boxes, scores = [p[0] for p in predicted], [p[1] for p in predicted]
    matches = [match_detections(t, b, s) for t, b, s in zip(truth, boxes, scores, strict=True)]
    labels = np.array([len(t) > 0 for t in truth], dtype=int)
    for index in (np.array([0, 0, 2, 3]), np.array([1, 0, 3, 3]), np.array([0, 1, 2, 2])):
        expected = detection_metrics([truth[i] for i in index], [boxes[i] for i in index],
                                     [scores[i] for i in index])["node21_score"]
        got = node21_of(index, truth, scores, matches, image_scores(scores), labels)
        assert got == pytest.approx(expected)
    # A resample without any box: sensitivity 0, AUC ½ (all image scores tie at 0).
    empty = [np.zeros(0), np.zeros(0)]
    got = node21_of(np.array([0, 1]), [np.array([[0, 0, 5, 5]]), np.zeros((0, 4))], empty,
                    [np.zeros(0, int)] * 2, np.zeros(2), np.array([1, 0]))
    assert got == pytest.approx(0.75 * 0.5)


STEP_CASE = [  # issue #22: the three highest boxes are false positives, then all four lesions
    *({"id": f"P{i}", "boxes": [[0, 0, 10, 10]], "detections": [[0, 0, 10, 10, s]]}
      for i, s in enumerate((0.6, 0.55, 0.5, 0.45))),
    *({"id": f"N{i}", "boxes": [], "detections": [[50, 50, 60, 60, s]]}
      for i, s in enumerate((0.9, 0.8, 0.7, 0.1))),
    {"id": "N4", "boxes": [], "detections": []}, {"id": "N5", "boxes": [], "detections": []},
]


def test_detection_summary_and_its_bootstrap_follow_the_froc_polyline() -> None:
    # Peers (MONAI, LUNA16, a NODE21 scorer): sens@0.25 = 0, NODE21 score 0.375, CPM 5/7.
    metrics, curves = detection_summary(STEP_CASE, seed=0, n_boot=200, with_cpm=True)
    assert (metrics["sens@0.25"], metrics["node21_score"]) == pytest.approx((0.0, 0.375))
    assert metrics["cpm"] == pytest.approx(5 / 7)
    np.testing.assert_allclose(curves.froc.fp_per_image, [0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.4])
    from cxrkit.metrics import image_scores, match_detections
    from cxrkit.metrics.records import _boxes

    truth = [_boxes(r["boxes"], "boxes", r)[0] for r in STEP_CASE]
    predicted = [_boxes(r["detections"], "detections", r, scored=True) for r in STEP_CASE]
    scores = [p[1] for p in predicted]
    matches = [match_detections(t, b, s) for t, (b, s) in zip(truth, predicted, strict=True)]
    labels = np.array([len(t) > 0 for t in truth], dtype=int)
    everything = np.arange(len(STEP_CASE))  # the resample that is the whole set
    assert node21_of(everything, truth, scores, matches, image_scores(scores),
                     labels) == pytest.approx(0.375)


@pytest.mark.parametrize(("records", "message"), [
    ([*TOY[:3], {"id": "D", "detections": []}], "no 'boxes'"),
    ([*TOY, {"id": "E", "boxes": []}], "no 'detections'"),
    ([{"id": "A", "boxes": [[0, 0, 1, 1]], "detections": [[0, 0, 1, 1]]}], "needs a score"),
    ([{"id": "A", "boxes": "none", "detections": []}], "must be a list"),
    ([{"id": "A", "boxes": [{"x1": 0}], "detections": []}], "x1, y1, x2, y2"),
    ([{"id": "A", "boxes": [[0, 0, 5, 5]], "detections": [[0, 0, 5, 5, 1]]}], "negative"),
    ([{"id": "A", "boxes": [[0, 0, 5, 5]], "detections": []},
      {"id": "B", "boxes": [], "detections": []}], "FROC is empty"),
])
def test_detection_input_errors(records: list[dict], message: str) -> None:
    with pytest.raises(InputError, match=message):
        detection_summary(records, n_boot=0)


def test_roc_curve_with_ties_is_diagonal() -> None:
    fpr, tpr = roc_curve(np.array([0.5, 0.5, 0.9]), np.array([1, 0, 1]))
    np.testing.assert_allclose(fpr, [0, 0, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1])


def test_no_reference_quality_with_an_roi() -> None:
    image = np.full((40, 40), 0.2) + np.random.default_rng(1).normal(0, 0.01, (40, 40))
    image[10:20, 10:20] += 0.2
    result = no_reference_quality(image, {"x1": 10, "y1": 10, "x2": 20, "y2": 20})
    assert result["cnr"] == pytest.approx(20, rel=0.3)
    assert no_reference_quality(image)["cnr"] is None


def test_summarize_records_gates_and_errors() -> None:
    rows = [{"id": "a", "psnr": 30.0, "ssim": 0.9, "ms_ssim": None, "psnr_fit": 31.0},
            {"id": "b", "psnr": 34.0, "ssim": 0.8, "ms_ssim": None, "psnr_fit": 35.0}]
    summary = summarize_records(TOY, rows, n_boot=50)
    metrics = summary.metrics
    assert metrics["image_quality"]["psnr"]["mean"] == 32.0
    assert "ms_ssim" not in metrics["image_quality"] and summary.curves is not None
    assert gate_value(metrics, "psnr") == 32.0 and gate_value(metrics, "iou") is None
    assert gate_value(metrics, "node21") == pytest.approx(0.6458, abs=1e-4)
    failures = check_thresholds(metrics, {"psnr": 33.0, "ssim": 0.8, "dice": 0.1})
    assert failures == ["psnr = 32 is under the threshold 33",
                        "dice was not measured (threshold 0.1)"]
    assert set(GATES) >= {"psnr", "ssim", "ms_ssim", "psnr_fit", "auc", "node21", "iou", "dice"}
    with pytest.raises(InputError, match="unknown metric"):
        gate_value(metrics, "fid")
    with pytest.raises(InputError, match="nothing to measure"):
        summarize_records([{"id": "x", "path": "x.png"}], [{"id": "x"}])
