"""`cxrkit eval` on a detector's records (the fields `cxrkit detect` writes): the JSON sections,
the report's gallery and tables, and the gallery's choice of hits and misses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner

from cxrkit.cli import app
from cxrkit.errors import CheckFailedError
from cxrkit.io import Radiograph, write_radiograph
from cxrkit.metrics.records import summarize_records
from cxrkit.report import build_report
from cxrkit.report_detection import (
    GalleryImage,
    detection_sections,
    draw_detection,
    outcomes,
    pick_gallery,
)
from tests.test_metrics_breakdown import BREAKDOWN_CASE

runner = CliRunner()
NAMES = ("calcified", "border_regular", "border_irregular", "texture_homogeneous",
         "texture_inhomogeneous")


def test_pick_gallery_takes_turns_between_hits_false_alarms_and_misses() -> None:
    records = [{**r, "path": f"{r['id']}.png"} for r in BREAKDOWN_CASE]
    # At 0.5: P1 TP 0.9; P2 misses its lesion (best hit 0.4); P3 finds L4 (0.7) and misses L3
    # (0.2); N1 a false alarm at 0.8; N2 (0.3) and N3 nothing to show.
    assert set(outcomes(records[2], 0.5)) == {"TP", "FN"}
    assert outcomes(records[4], 0.5) == {} and outcomes(records[3], 0.5) == {"FP": (0.8, 0)}
    picks = pick_gallery(records, 10)
    assert [(label, r["id"]) for label, r in picks] == [
        ("TP", "P1"), ("FP", "N1"), ("TP+FN", "P3"), ("FN", "P2")]
    assert [r["id"] for _, r in pick_gallery(records, 2)] == ["P1", "N1"]
    assert pick_gallery(BREAKDOWN_CASE, 10) == []  # no image to draw
    label_only = [{"id": "a", "path": "a.png", "label": 1, "nodule_probability": 0.3},
                  {"id": "b", "path": "b.png", "label": 0, "nodule_probability": 0.7}]
    assert [(label, r["id"]) for label, r in pick_gallery(label_only, 5)] == [("FP", "b"),
                                                                             ("FN", "a")]
    classifier = {"boxes": [{"x1": 0, "y1": 0, "x2": 9, "y2": 9}], "nodule_probability": 0.8}
    assert outcomes(classifier, 0.5) == {"TP": (0.8, None)}  # no detections: image level


def test_draw_detection_marks_boxes_and_mask_outlines() -> None:
    image = np.full((40, 60), 0.5, np.float32)
    mask = np.zeros_like(image)
    mask[10:20, 10:20] = 1
    record = {"boxes": [{"x1": 10, "y1": 10, "x2": 20, "y2": 20}],
              "detections": [{"x1": 30, "y1": 5, "x2": 50, "y2": 30, "score": 0.9}]}
    picture = np.asarray(draw_detection(GalleryImage("FP", record, image, mask, None), 0.5, 0.5,
                                        side=60))
    assert picture.shape == (40, 60, 3)
    assert tuple(picture[15, 10]) == (40, 200, 80)  # reference box / mask outline: green
    assert tuple(picture[15, 30]) == (255, 140, 0)  # predicted box: orange
    assert len(set(picture[15, 15])) == 1  # inside the outline: the gray image


def test_report_renders_the_detection_sections() -> None:
    rng = np.random.default_rng(0)
    records = [{**r, "path": f"{r['id']}.png", "nodule_probability": p,
                "characteristics_probability": dict(zip(NAMES, rng.random(5), strict=True))}
               for r, p in zip(BREAKDOWN_CASE, (0.9, 0.6, 0.8, 0.7, 0.2, 0.1), strict=True)]
    summary = summarize_records(records, [], n_boot=20)
    image = rng.random((80, 80)).astype(np.float32)
    gallery = [GalleryImage(label, record, image) for label, record in pick_gallery(records, 3)]
    sections = detection_sections(summary, gallery)
    assert [heading for heading, _ in sections] == [
        "Detections", "Image-level classification", "AUC per characteristic",
        "Breakdown by nodule size, subtlety and characteristic"]
    text = build_report(summary, [], sections=sections)
    for phrase in ("<h2>Detections</h2>", "TP: P1", "FP: N1", "border_regular", "&lt;6 mm",
                   "sens @ 0.25 FP/image", "image-level ROC of nodule_probability",
                   "AUC per characteristic", "subtlety (subtlety; 1 lesions unknown)",
                   "ROC and FROC"):
        assert phrase in text, phrase
    pictures = re.findall(r'src="data:image/png;base64,', text)
    # 3 images × (whole + crop), the image-level ROC, the breakdown, the detection ROC/FROC
    assert len(pictures) == 3 * 2 + 1 + 1 + 1
    assert detection_sections(summarize_records([{"id": "x", "noise_sigma": 1}],
                                                [{"id": "x", "noise_sigma": 0.1}], n_boot=0),
                              []) == []


def _write(path: Path, pixels: np.ndarray, kind: str = "display") -> str:
    write_radiograph(path, Radiograph(pixels.astype(np.float32), None, kind))
    return str(path)


@pytest.fixture
def detect_records(tmp_path: Path) -> list[dict]:
    """Four 64² images shaped like `cxrkit detect` output on `synth --negatives` records."""
    rng = np.random.default_rng(1)
    records = []
    for i, (diameter, probability, border) in enumerate([(5, 0.9, 1), (12, 0.7, 0), (25, 0.2, 1),
                                                         (None, 0.4, None), (None, 0.1, None)]):
        image = rng.random((64, 64)) * 0.2 + 0.4
        truth, predicted = np.zeros((64, 64)), np.zeros((64, 64), np.uint8)
        boxes, detections = [], []
        if diameter is not None:
            truth[20:30, 20:30] = 1
            predicted[20:30, 22:32] = 230  # IoU 80 / 120
            predicted[30:34, 22:32] = 100  # probability 0.39: not lesion
            attributes = {"calcified": 0, "border_irregular": border, "texture": "solid",
                          "inhomogeneous": 0, "subtlety": 3.0, "diameter_mm": float(diameter)}
            boxes = [{"x1": 20, "y1": 20, "x2": 30, "y2": 30, "label": "nodule",
                      "origin": "synth", "attributes": attributes}]
            detections = [{"x1": 22, "y1": 20, "x2": 32, "y2": 30, "score": probability}]
        elif i == 3:
            detections = [{"x1": 40, "y1": 40, "x2": 50, "y2": 50, "score": 0.6}]  # false alarm
        mask_path = tmp_path / f"{i}.mask.png"
        _write(mask_path, truth, "mask")
        prediction_path = tmp_path / f"{i}.pred.png"
        info = PngImagePlugin.PngInfo()  # as cxrkit detect writes it: kept 0-255 on reading
        info.add_text("cxrkit", json.dumps({"cxrkit": {"kind": "mask"}}))
        Image.fromarray(predicted).save(prediction_path, pnginfo=info if i % 2 else None)
        records.append({
            "id": f"im{i}", "path": _write(tmp_path / f"{i}.tiff", image), "boxes": boxes,
            "mask": str(mask_path), "nodule_probability": probability,
            "characteristics_probability": {"calcified": 0.1, "border_regular": 1 - probability,
                                            "border_irregular": probability,
                                            "texture_homogeneous": 0.5,
                                            "texture_inhomogeneous": 0.5},
            "detections": detections, "prediction_mask": str(prediction_path)})
    return records


def test_eval_round_trip_of_detector_records(detect_records: list[dict], tmp_path: Path) -> None:
    lines = "".join(json.dumps(r) + "\n" for r in detect_records)
    report = tmp_path / "detect.html"
    result = runner.invoke(app, ["eval", "--json", "--bootstrap", "50", "--report", str(report),
                                 "--fail-under", "image_auc=0.8"], input=lines)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    # 0.9, 0.7, 0.2 with a nodule against 0.4, 0.1: 2 + 2 + 1 of 6 pairs
    assert summary["classification"]["auc"] == pytest.approx(5 / 6)
    assert summary["detection"]["n_lesions"] == 3
    segmentation = summary["segmentation"]
    assert segmentation["iou_mean_pos"] == pytest.approx(80 / 120)  # from prediction_mask
    assert segmentation["dice_mean_pos"] == pytest.approx(160 / 200)
    assert segmentation["iou_mean_pos_ci95"] == pytest.approx([80 / 120, 80 / 120])
    border = summary["characteristics"]["border_irregular"]  # 0.9, 0.2 vs 0.7
    assert (border["auc"], border["n_positive"], border["n_negative"]) == (0.5, 2, 1)
    sizes = {c["cell"]: c for c in summary["breakdown"]["by"]["size"]}
    assert [sizes[k]["n_lesions"] for k in ("<6 mm", "6-10 mm", "10-20 mm", ">=20 mm")] == [
        1, 0, 1, 1]
    assert sizes[">=20 mm"]["sens_score"] == 0.0 and sizes["<6 mm"]["sens_score"] == 1.0
    assert sizes["<6 mm"]["iou_mean"] == pytest.approx(80 / 120)
    text = report.read_text()
    for phrase in ("<h2>Detections</h2>", "AUC per characteristic", "Breakdown by nodule size"):
        assert phrase in text
    assert re.search(r"<h3>FP: im3", text) and re.search(r"<h3>FN: im2", text)
    gated = runner.invoke(app, ["eval", "--json", "--bootstrap", "0", "--fail-under",
                                "image_auc=0.9"], input=lines)
    from rich.console import Console

    from cxrkit.cli.evaluate import _detector_table

    console = Console(width=120, record=True)
    console.print(_detector_table(summary))
    table = console.export_text()
    assert "classification" in table and "border_irregular auc" in table and "2+1" in table
    assert isinstance(gated.exception, CheckFailedError)  # exit 8 through cxrkit.cli.main
    assert "image_auc = 0.8333 is under the threshold 0.9" in str(gated.exception)


def test_eval_of_real_images_with_only_a_label(tmp_path: Path) -> None:
    records = [{"id": f"nih{i}", "path": f"/nonexistent/{i}.png", "label": label,
                "nodule_probability": p, "detections": []}
               for i, (label, p) in enumerate([(1, 0.7), (0, 0.3), (1, 0.2), (0, 0.1)])]
    lines = "".join(json.dumps(r) + "\n" for r in records)
    result = runner.invoke(app, ["eval", "--json", "--bootstrap", "20"], input=lines)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["classification"]["auc"] == pytest.approx(0.75)
    assert summary["detection"]["froc"] is None and "breakdown" not in summary
    table = runner.invoke(app, ["eval", "--bootstrap", "0"], input=lines)  # not a tty: JSON
    assert table.exit_code == 0
