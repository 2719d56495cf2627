"""Tests of cxrkit.report: example choice, crop placement, and a self-contained HTML page."""

from __future__ import annotations

import base64
import io
import math
import re

import numpy as np
import pytest
from PIL import Image

from cxrkit.metrics.records import summarize_records
from cxrkit.report import Example, build_report, crop_window, pick_examples

TOY = [
    {"id": "A", "boxes": [[10, 10, 30, 30]], "detections": [[12, 12, 30, 30, 0.9]]},
    {"id": "B", "boxes": [], "detections": [[0, 0, 10, 10, 0.7]]},
]


def test_pick_examples_best_median_worst() -> None:
    rows = [{"id": i, "psnr": p} for i, p in enumerate([30.0, math.inf, 20.0, 25.0, 40.0])]
    picks = pick_examples(rows)
    assert [(label, row["id"]) for label, row in picks] == [("best", 1), ("median", 0),
                                                             ("worst", 2)]
    assert [label for label, _ in pick_examples(rows[:1])] == ["best"]  # each row once
    assert pick_examples([{"id": 0, "psnr": None}]) == []


def test_crop_window_finds_the_largest_error() -> None:
    error = np.zeros((300, 400))
    error[250:290, 330:370] = 1.0
    r, c = crop_window(error, 128)
    assert r <= 250 and r + 128 >= 290 and c <= 330 and c + 128 >= 370
    assert crop_window(np.ones((50, 60)), 256) == (0, 0)  # clipped to the image


def _pngs(text: str) -> list[Image.Image]:
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    return [Image.open(io.BytesIO(base64.b64decode(u))) for u in uris]


def test_build_report_is_self_contained_and_shows_everything() -> None:
    rng = np.random.default_rng(0)
    reference = rng.random((300, 280)).astype(np.float32)
    image = np.clip(reference + rng.normal(0, 0.05, reference.shape), 0, 1)
    rows = [{"id": "<img01>", "path": "a.tiff", "psnr": 26.0, "ssim": 0.7, "psnr_fit": 26.5},
            {"id": "b", "path": "b.tiff", "psnr": 31.0, "ssim": 0.8, "psnr_fit": 31.5}]
    summary = summarize_records(TOY, rows, n_boot=20)
    examples = [Example(label, row, image, reference) for label, row in pick_examples(rows)]
    text = build_report(summary, examples, title="a <test>")
    assert text.startswith("<!DOCTYPE html>") and "a &lt;test&gt;" in text
    assert "&lt;img01&gt;" in text and "<img01>" not in text  # ids are escaped
    outside_data = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    assert not re.search(r"(https?:)?//|<link|<script|@import|url\(", outside_data)
    pictures = _pngs(text)
    assert len(pictures) == 2 * 4 + 2  # 2 examples × 4 panels, histograms, ROC/FROC
    assert pictures[1].size == (256, 256)  # a crop at full resolution
    assert max(pictures[0].size) == 256  # the overview, shrunk
    for phrase in ("ROC", "FROC", "image quality", "detection", "Per image", "best", "worst"):
        assert phrase in text


def test_build_report_without_examples_or_detection() -> None:
    summary = summarize_records([{"id": "x"}], [{"id": "x", "noise_sigma": 0.01,
                                                 "mean_gradient": 0.1, "cnr": None}], n_boot=0)
    text = build_report(summary, [])
    assert "ROC" not in text and "Examples" not in text and len(_pngs(text)) == 1


@pytest.mark.parametrize(("error", "gain"), [(0.005, 100.0), (0.04, 20.0), (0.3, 2.0),
                                             (2.0, 1.0)])
def test_difference_gain_keeps_the_errors_visible(error: float, gain: float) -> None:
    from cxrkit.report import _diff_gain

    assert _diff_gain(np.full((10, 10), error)) == gain


def test_froc_markers_sit_on_the_polyline() -> None:
    from cxrkit.metrics.records import detection_summary
    from cxrkit.report import _curves

    # Three false positives (0.1 … 0.3 FP/image) before both lesions are found at 0.3.
    records = [{"id": f"P{i}", "boxes": [[0, 0, 10, 10]], "detections": [[0, 0, 10, 10, s]]}
               for i, s in enumerate((0.6, 0.5))]
    records += [{"id": f"N{i}", "boxes": [], "detections": [[50, 50, 60, 60, s]] if s else []}
                for i, s in enumerate((0.9, 0.8, 0.7, 0, 0, 0, 0, 0))]
    metrics, curves = detection_summary(records, n_boot=0)
    markers = _curves(curves, metrics).axes[1].lines[1]
    np.testing.assert_allclose(markers.get_xdata(), [0.125, 0.25, 0.5])
    np.testing.assert_allclose(markers.get_ydata(), [0, 0, 1])  # not 0.5 at 0.25
