"""Tests of cxrkit.metrics.breakdown on hand-computed cases: image-level AUC of
nodule_probability (also from records with only a label), per-characteristic AUC, the
size / subtlety / characteristic breakdown, Wilson intervals and segmentation CIs."""

from __future__ import annotations

import numpy as np
import pytest

from cxrkit.errors import InputError
from cxrkit.metrics import match_detections
from cxrkit.metrics.breakdown import (
    breakdown_summary,
    characteristics_summary,
    classification_summary,
    image_label,
    lesion_scores,
    reference_characteristics,
    segmentation_cis,
    wilson_interval,
)
from cxrkit.metrics.records import _boxes, detection_summary, summarize_records

BOX = {"x1": 0, "y1": 0, "x2": 10, "y2": 10}


def test_image_label_prefers_label_over_boxes() -> None:
    assert image_label({"label": 1}) == 1 and image_label({"label": False, "boxes": [BOX]}) == 0
    assert image_label({"boxes": [BOX]}) == 1 and image_label({"boxes": []}) == 0
    assert image_label({"id": "x"}) is None
    with pytest.raises(InputError, match="label must be 0 or 1"):
        image_label({"label": "Nodule"})


def test_classification_auc_sensitivity_specificity_by_hand() -> None:
    records = [
        {"id": "a", "label": 1, "nodule_probability": 0.9},  # a real image: label only
        {"id": "b", "label": 0, "nodule_probability": 0.2},
        {"id": "c", "boxes": [BOX], "nodule_probability": 0.4},
        {"id": "d", "boxes": [], "nodule_probability": 0.5},
        {"id": "e", "label": 0, "boxes": [BOX], "nodule_probability": 0.3},  # label wins
        {"id": "f", "boxes": []},  # no prediction: not counted
    ]
    metrics, scores, labels = classification_summary(records, n_boot=200)
    # positives 0.9, 0.4 against negatives 0.2, 0.5, 0.3: 3 + 2 of 6 pairs
    assert metrics["auc"] == pytest.approx(5 / 6)
    assert metrics["sensitivity"] == 0.5 and metrics["specificity"] == pytest.approx(2 / 3)
    assert (metrics["n_images"], metrics["n_positive"], metrics["n_negative"],
            metrics["n_labelled_by_label"]) == (5, 2, 3, 3)
    assert 0 <= metrics["auc_ci95"][0] <= metrics["auc"] <= metrics["auc_ci95"][1] <= 1
    assert labels.tolist() == [1, 0, 1, 0, 0] and scores.tolist() == [0.9, 0.2, 0.4, 0.5, 0.3]
    assert classification_summary([{"id": "x", "boxes": []}]) is None
    with pytest.raises(InputError, match="no truth"):
        classification_summary([{"id": "x", "nodule_probability": 0.5}])
    with pytest.raises(InputError, match="with and without"):
        classification_summary([{"label": 1, "nodule_probability": 0.5}] * 2)
    with pytest.raises(InputError, match="probability"):
        classification_summary([{"label": 1, "nodule_probability": 1.5}])


def test_records_with_only_a_label_give_the_image_auc_without_froc() -> None:
    records = [{"id": f"r{i}", "path": f"{i}.png", "label": label, "nodule_probability": p,
                "detections": [{**BOX, "score": p}] if p > 0.3 else []}
               for i, (label, p) in enumerate([(1, 0.8), (1, 0.35), (0, 0.6), (0, 0.1)])]
    summary = summarize_records(records, [], n_boot=50)
    assert summary.metrics["classification"]["auc"] == pytest.approx(0.75)
    detection = summary.metrics["detection"]  # max box score 0.8, 0.35 vs 0.6, 0 (no box)
    assert detection["auc"] == pytest.approx(0.75) and detection["froc"] is None
    assert "sens@0.25" not in detection and summary.curves is None
    assert summary.image_roc is not None and "breakdown" not in summary.metrics
    # Mixed with boxed records: the FROC counts those; label-only ones are left out of it.
    boxed = [{"id": "p", "boxes": [BOX], "detections": [{**BOX, "score": 0.9}]},
             {"id": "n", "boxes": [], "detections": []}]
    mixed, _ = detection_summary([*boxed, *records], n_boot=0)
    assert (mixed["n_images"], mixed["n_label_only"], mixed["auc"]) == (2, 4, 1.0)
    with pytest.raises(InputError, match="no 'boxes'"):  # no truth at all: still an error
        detection_summary([*boxed, {"id": "x", "detections": []}])


def test_a_detector_that_found_nothing_scores_zero_sensitivity() -> None:
    records = [{"id": "p", "boxes": [BOX], "detections": [], "nodule_probability": 0.6},
               {"id": "n", "boxes": [], "detections": [], "nodule_probability": 0.4}]
    metrics, curves = detection_summary(records, n_boot=0)
    assert (metrics["auc"], metrics["sens@0.25"], metrics["node21_score"]) == (0.5, 0.0, 0.375)
    assert "no record has a detection" in metrics["note"]
    assert curves.froc.sensitivity.tolist() == [0.0]  # one flat operating point
    summary = summarize_records(records, [], n_boot=0)
    assert summary.metrics["classification"]["auc"] == 1.0
    assert "breakdown" not in summary.metrics  # the box has no attributes to break down by
    attributed = [{**records[0], "boxes": [{**BOX, "attributes": {"diameter_mm": 7}}]},
                  records[1]]
    block = summarize_records(attributed, [], n_boot=0).metrics["breakdown"]
    assert block["operating_point"]["threshold"] == float("inf")
    cell = block["by"]["size"][1]
    assert (cell["cell"], cell["n_lesions"], cell["sens_op"], cell["sens_score"]) == (
        "6-10 mm", 1, 0.0, 0.0)
    with pytest.raises(InputError, match="FROC is empty"):  # plain records: still an error
        detection_summary([{k: v for k, v in r.items() if k != "nodule_probability"}
                           for r in records])


def _positive(characteristics: dict | None, probabilities: dict, boxes: list | None = None
              ) -> dict:
    return {"boxes": boxes or [BOX], "characteristics_probability": probabilities,
            **({"nodule": {"characteristics": characteristics}} if characteristics else {})}


def test_characteristics_auc_per_class_by_hand() -> None:
    names = ("calcified", "border_regular", "border_irregular", "texture_homogeneous",
             "texture_inhomogeneous")

    def probs(*values: float) -> dict:
        return dict(zip(names, values, strict=True))

    records = [
        _positive({"calcified": 1, "border_irregular": 0, "inhomogeneous": 0},
                  probs(0.8, 0.7, 0.1, 0.6, 0.2)),
        _positive({"calcified": 0, "border_irregular": 1, "inhomogeneous": 0},
                  probs(0.3, 0.4, 0.6, 0.5, 0.5)),
        _positive({"calcified": 0, "border_irregular": 1, "inhomogeneous": 0},
                  probs(0.9, 0.2, 0.3, 0.7, 0.1)),
        # two boxes agreeing on calcified and texture, not on the border: no border truth
        _positive(None, probs(0.1, 0.9, 0.9, 0.9, 0.9), boxes=[
            {**BOX, "attributes": {"calcified": 0, "border_irregular": 0, "inhomogeneous": 0}},
            {**BOX, "attributes": {"calcified": 0, "border_irregular": 1, "inhomogeneous": 0}}]),
        {"boxes": [], "characteristics_probability": probs(1, 1, 1, 1, 1)},  # negative: ignored
    ]
    assert reference_characteristics(records[3]) == {"calcified": 0, "inhomogeneous": 0}
    block = characteristics_summary(records, n_boot=100)
    calcified = block["calcified"]  # 0.8 against 0.3, 0.9, 0.1
    assert calcified["auc"] == pytest.approx(2 / 3)
    assert (calcified["n"], calcified["n_positive"], calcified["n_negative"]) == (4, 1, 3)
    assert block["border_regular"]["auc"] == 1.0 and block["border_regular"]["n"] == 3
    assert block["border_irregular"]["auc"] == 1.0
    assert block["border_irregular"]["n_positive"] == 2
    homogeneous, inhomogeneous = block["texture_homogeneous"], block["texture_inhomogeneous"]
    assert homogeneous["auc"] is None and "without" in homogeneous["note"]
    assert (homogeneous["n_positive"], homogeneous["n_negative"]) == (4, 0)
    assert inhomogeneous["auc"] is None and "with this" in inhomogeneous["note"]
    assert "border_regular = border_irregular 0" in block["definition"]
    assert characteristics_summary([{"boxes": [BOX]}]) is None


def test_lesion_scores_agree_with_the_froc_matching() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        truth = np.sort(rng.integers(0, 60, (3, 2, 2)), axis=1).reshape(3, 4)[:, [0, 2, 1, 3]]
        truth[:, 2:] += 8
        boxes = truth[rng.integers(0, 3, 6)] + rng.integers(-6, 7, (6, 4))
        scores = np.round(rng.random(6), 1)  # ties too
        found = lesion_scores(truth, boxes, scores)
        hits = match_detections(truth, boxes, scores)
        for t in np.unique(scores):
            assert (found >= t).sum() == ((hits == 1) & (scores >= t)).sum()


def _lesion(box: tuple, **attributes: float) -> dict:
    return {"x1": box[0], "y1": box[1], "x2": box[2], "y2": box[3], "attributes": attributes}


def _detection(box: tuple, score: float) -> dict:
    return {"x1": box[0], "y1": box[1], "x2": box[2], "y2": box[3], "score": score}


A, B, C = (0, 0, 10, 10), (20, 20, 40, 40), (50, 50, 60, 60)
BREAKDOWN_CASE = [
    {"id": "P1", "boxes": [_lesion(A, diameter_mm=5, subtlety=2, calcified=0, border_irregular=1,
                                   inhomogeneous=0)], "detections": [_detection(A, 0.9)]},
    {"id": "P2", "boxes": [_lesion(B, diameter_mm=8, subtlety=4, calcified=1, border_irregular=0,
                                   inhomogeneous=1)], "detections": [_detection(B, 0.4)]},
    {"id": "P3", "boxes": [_lesion(A, diameter_mm=15, subtlety=2, calcified=0, border_irregular=0,
                                   inhomogeneous=0),
                           _lesion(C, diameter_mm=25, calcified=0, border_irregular=1,
                                   inhomogeneous=1)],  # subtlety unknown
     "detections": [_detection(C, 0.7), _detection(A, 0.2)]},
    {"id": "N1", "boxes": [], "detections": [_detection((0, 0, 5, 5), 0.8)]},
    {"id": "N2", "boxes": [], "detections": [_detection((0, 0, 5, 5), 0.3)]},
    {"id": "N3", "boxes": [], "detections": []},
]


def test_breakdown_counts_sensitivities_and_aucs_by_hand() -> None:
    # Pooled: 0.9 TP, 0.8 FP, 0.7 TP, 0.4 TP, 0.3 FP, 0.2 TP over 6 images: FP/image stays at
    # 1/6 <= 0.25 down to score 0.4, so the operating point finds L1, L2, L4 (not L3 at 0.2).
    block = breakdown_summary(BREAKDOWN_CASE, parse=_boxes, iou={0: 0.5, 2: 0.7}, n_boot=100)
    assert block["operating_point"] == {"fp_per_image": 0.25, "threshold": 0.4}
    assert block["auc_source"] == "max box score" and block["score_threshold"] == 0.5
    by = {dim: {c["cell"]: c for c in cells} for dim, cells in block["by"].items()}

    def row(dimension: str, cell: str) -> tuple:
        c = by[dimension][cell]
        return c["n_lesions"], c["sens_op"], c["sens_score"], c["n_images_pos"], c["auc"]

    # image scores (max box): P1 0.9, P2 0.4, P3 0.7 against N1 0.8, N2 0.3, N3 0
    assert row("size", "<6 mm") == (1, 1.0, 1.0, 1, 1.0)
    assert row("size", "6-10 mm") == (1, 1.0, 0.0, 1, pytest.approx(2 / 3))
    assert row("size", "10-20 mm") == (1, 0.0, 0.0, 1, pytest.approx(2 / 3))
    assert row("size", ">=20 mm") == (1, 1.0, 1.0, 1, pytest.approx(2 / 3))
    assert row("subtlety", "2") == (2, 0.5, 0.5, 2, pytest.approx(5 / 6))
    assert row("subtlety", "1") == (0, None, None, 0, None)
    assert row("subtlety", "5")[0] == 0 and block["n_unknown"]["subtlety"] == 1
    assert row("calcified", "no") == (3, pytest.approx(2 / 3), pytest.approx(2 / 3), 2,
                                      pytest.approx(5 / 6))
    assert row("calcified", "yes")[:3] == (1, 1.0, 0.0)
    assert row("border", "regular")[:3] == (2, 0.5, 0.0)
    assert row("border", "irregular")[:3] == (2, 1.0, 1.0)
    assert row("texture", "inhomogeneous")[:3] == (2, 1.0, 0.5)
    assert all(c["n_images_neg"] == 3 for c in by["size"].values())
    assert by["size"]["<6 mm"]["sens_op_ci95"] == pytest.approx(wilson_interval(1, 1))
    assert (by["subtlety"]["2"]["iou_mean"], by["subtlety"]["2"]["n_iou"]) == (
        pytest.approx(0.6), 2)
    assert by["size"]["6-10 mm"]["iou_mean"] is None
    # nodule_probability, when every labelled image has one, scores the AUC instead
    with_p = [{**r, "nodule_probability": p}
              for r, p in zip(BREAKDOWN_CASE, (0.2, 0.9, 0.8, 0.1, 0.3, 0.4), strict=True)]
    again = breakdown_summary(with_p, parse=_boxes, n_boot=0)
    assert again["auc_source"] == "nodule_probability"
    assert again["by"]["size"][0]["auc"] == pytest.approx(1 / 3)  # 0.2 vs 0.1, 0.3, 0.4
    assert again["by"]["size"][0]["auc_ci95"] is None
    assert breakdown_summary([{"boxes": [BOX], "detections": []}], parse=_boxes) is None
    # A classifier without boxes of its own: the cells count lesions and give AUCs only.
    undetected = [{k: v for k, v in r.items() if k != "detections"} for r in with_p]
    alone = breakdown_summary(undetected, parse=_boxes, n_boot=0)
    assert alone["operating_point"]["threshold"] is None
    cell = alone["by"]["subtlety"][1]
    assert (cell["cell"], cell["n_lesions"], cell["sens_op"], cell["sens_score"]) == (
        "2", 2, None, None)
    assert cell["auc"] == pytest.approx(4 / 6)  # 0.2, 0.8 against 0.1, 0.3, 0.4: 1 + 3 pairs


def test_wilson_interval_known_values() -> None:
    assert wilson_interval(0, 10) == pytest.approx([0.0, 0.2775], abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx([0.2366, 0.7634], abs=1e-4)
    assert wilson_interval(0, 0) is None


def test_segmentation_cis_over_images_with_a_lesion() -> None:
    counts = [{"intersection_px": 1, "union_px": 2, "pred_px": 2, "truth_px": 1},   # IoU 0.5
              {"intersection_px": 4, "union_px": 4, "pred_px": 4, "truth_px": 4},   # IoU 1
              {"intersection_px": 0, "union_px": 3, "pred_px": 3, "truth_px": 0}]   # empty
    cis = segmentation_cis(counts, n_boot=200)
    assert 0.5 <= cis["iou_mean_pos_ci95"][0] < cis["iou_mean_pos_ci95"][1] <= 1.0
    assert 2 / 3 <= cis["dice_mean_pos_ci95"][0] < cis["dice_mean_pos_ci95"][1] <= 1.0
    assert segmentation_cis(counts[1:], n_boot=200)["iou_mean_pos_ci95"] is None
    summary = summarize_records([], [{"id": i, **c} for i, c in enumerate(counts)], n_boot=50)
    assert summary.metrics["segmentation"]["iou_mean_pos"] == pytest.approx(0.75)
    assert summary.metrics["segmentation"]["iou_mean_pos_ci95"] is not None
