"""The detector's part of the ``eval`` report: a gallery of hits and misses, the image-level
ROC, and the per-characteristic and breakdown tables (:mod:`cxrkit.metrics.breakdown`).

:func:`pick_gallery` chooses the images (true positives, false positives and misses, the
clearest of each, in turn), the CLI reads their pixels, and :func:`detection_sections` turns
them and the summary into ``(heading, HTML)`` sections for
:func:`cxrkit.report.build_report`. Each gallery image is drawn twice: whole, and a crop at full
resolution around the box that decided its outcome; reference boxes and mask outlines in green,
predicted boxes (with scores) and the predicted mask's outline in orange / magenta.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrkit.metrics.breakdown import BREAKDOWNS, CHARACTERISTICS, image_label, lesion_scores
from cxrkit.metrics.detection import match_detections
from cxrkit.report import _e, _figure, _fmt, _fmt_ci, _img, _png_image, _table, _to_uint8

if TYPE_CHECKING:
    from cxrkit.metrics.records import Summary

OVERVIEW_PX = 320
"""Longest side of a gallery image's overview, px."""
CROP_PX = 128
"""Side of the crop around the deciding box, px of the image (shown at 2× in the page)."""
MAX_FAINT = 5
"""Boxes under the detection threshold drawn (faintly) per image, highest scores first."""
REFERENCE = (40, 200, 80)
PREDICTED = (255, 140, 0)
FAINT = (150, 90, 20)
PREDICTED_MASK = (230, 60, 230)
OUTCOMES = ("TP", "FP", "FN")
"""Gallery kinds, in the order they take turns: a nodule found, a false alarm, a nodule missed."""


@dataclass(frozen=True)
class GalleryImage:
    """One detection image of the gallery.

    Attributes:
        outcome: why it is shown (``TP``, ``FP``, ``FN``, joined by ``+`` when several hold).
        record: its record (boxes, detections, probabilities).
        image: ``(H, W)`` pixels in [0, 1].
        mask: ``(H, W)`` reference mask, or None.
        prediction_mask: ``(H, W)`` predicted probabilities in [0, 1], or None.
    """

    outcome: str
    record: Mapping[str, Any]
    image: np.ndarray
    mask: np.ndarray | None = None
    prediction_mask: np.ndarray | None = None


def _xyxy(items: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(K, 4)`` boxes and ``(K,)`` scores (1 when unscored) of a record's box list."""
    # A lenient copy of cxrkit.metrics.records._boxes: eval has validated the boxes already.
    coords, scores = [], []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, Mapping):
            coords.append([float(item[k]) for k in ("x1", "y1", "x2", "y2")])
            scores.append(float(item.get("score", 1.0)))
        else:
            coords.append([float(v) for v in item[:4]])
            scores.append(float(item[4]) if len(item) > 4 else 1.0)
    return np.array(coords, dtype=np.float64).reshape(-1, 4), np.array(scores, dtype=np.float64)


def outcomes(record: Mapping[str, Any], threshold: float) -> dict[str, tuple[float, int | None]]:
    """What a record's detections at ``threshold`` did: ``{kind: (priority, box index)}``.

    With ``boxes``: ``TP`` when a box scoring ≥ threshold hits a lesion (priority its score),
    ``FP`` when one hits none (its score), ``FN`` when a lesion is hit by none (priority 1 for
    a lesion no box hits at all, else 1 − the best score that hits it). The index names the
    deciding box (a detection for TP and FP, a lesion for FN). Without boxes or detections,
    from the image label and ``nodule_probability`` (else the highest box score): TP, FP or
    FN, no box.
    """
    found: dict[str, tuple[float, int | None]] = {}
    boxes, scores = _xyxy(record.get("detections"))
    if isinstance(record.get("boxes"), list) and isinstance(record.get("detections"), list):
        truth = _xyxy(record["boxes"])[0]
        keep = scores >= threshold
        if keep.any():
            hits = match_detections(truth, boxes[keep], scores[keep])
            index = np.flatnonzero(keep)
            for kind, value in (("TP", 1), ("FP", 0)):
                chosen = index[hits == value]
                if chosen.size:
                    best = int(chosen[np.argmax(scores[chosen])])
                    found[kind] = (float(scores[best]), best)
        matched = lesion_scores(truth, boxes, scores)
        missed = np.flatnonzero(matched < threshold)
        if missed.size:
            worst = int(missed[np.argmin(matched[missed])])
            found["FN"] = (1.0 if math.isinf(matched[worst]) else 1.0 - matched[worst], worst)
        return found
    label = image_label(record)
    probability = record.get("nodule_probability")
    score = float(probability) if probability is not None else float(
        scores.max(initial=0.0))
    if label == 1:
        found["TP" if score >= threshold else "FN"] = (score if score >= threshold
                                                        else 1.0 - score, None)
    elif label == 0 and score >= threshold:
        found["FP"] = (score, None)
    return found


def pick_gallery(records: Sequence[Mapping[str, Any]], count: int, threshold: float = 0.5
                 ) -> list[tuple[str, Mapping[str, Any]]]:
    """Up to ``count`` detection records to draw: TP, FP and FN in turn, the clearest first.

    Only records with an image (``path`` or ``source``) and with ``detections`` or
    ``nodule_probability`` take part; each is shown once, labelled with every outcome it has.

    Returns:
        ``[(outcome, record), …]``.
    """
    queues: dict[str, list[tuple[float, int]]] = {kind: [] for kind in OUTCOMES}
    kinds: dict[int, list[str]] = {}
    for i, record in enumerate(records):
        if not (record.get("path") or record.get("source")) or (
                "detections" not in record and record.get("nodule_probability") is None):
            continue
        found = outcomes(record, threshold)
        kinds[i] = [k for k in OUTCOMES if k in found]
        for kind, (priority, _) in found.items():
            queues[kind].append((-priority, i))
    for queue in queues.values():
        queue.sort()
    chosen: list[int] = []
    while len(chosen) < count and any(queues.values()):
        for kind in OUTCOMES:
            while queues[kind] and queues[kind][0][1] in chosen:
                queues[kind].pop(0)
            if queues[kind] and len(chosen) < count:
                chosen.append(queues[kind].pop(0)[1])
    return [("+".join(kinds[i]), records[i]) for i in chosen]


def detection_sections(summary: Summary, gallery: Sequence[GalleryImage], *,
                       threshold: float = 0.5, mask_threshold: float = 0.5
                       ) -> list[tuple[str, str]]:
    """The report's detector sections, each present only when there is something to show.

    Args:
        summary: what ``eval`` measured.
        gallery: the images to draw (:func:`pick_gallery`, pixels read by the caller).
        threshold: box score at or above which a detection counts (bold boxes).
        mask_threshold: predicted-mask probability outlined.

    Returns:
        ``[(heading, HTML), …]``.
    """
    metrics = summary.metrics
    sections = []
    if gallery:
        sections.append(("Detections", _gallery(gallery, threshold, mask_threshold)))
    if "classification" in metrics:
        sections.append(("Image-level classification", _classification(summary)))
    if "characteristics" in metrics:
        sections.append(("AUC per characteristic", _characteristics(metrics["characteristics"])))
    if "breakdown" in metrics:
        sections.append(("Breakdown by nodule size, subtlety and characteristic",
                         _breakdown(metrics["breakdown"])))
    return sections


def _gallery(gallery: Sequence[GalleryImage], threshold: float, mask_threshold: float) -> str:
    legend = ("<p class=\"def\">Green: reference boxes and mask outline. Orange: predicted boxes "
              f"scoring ≥ {threshold:g} (score above), brown: the highest below it. Magenta: the "
              f"predicted mask's outline (probability ≥ {mask_threshold:g}). Each image whole, "
              f"then a {CROP_PX} px crop at the box that decided its outcome.</p>")
    out = [legend]
    for item in gallery:
        panels = [(draw_detection(item, threshold, mask_threshold), "whole image")]
        window = _focus_window(item, threshold)
        if window is not None:
            panels.append((draw_detection(item, threshold, mask_threshold, window=window,
                                          side=2 * CROP_PX), "crop"))
        record = item.record
        facts = [f"p(nodule) {_fmt(record.get('nodule_probability'))}"
                 if record.get("nodule_probability") is not None else "",
                 f"label {image_label(record)}" if image_label(record) is not None else ""]
        figures = "".join(
            f"<figure><img alt=\"{_e(caption)}\" src=\"{_png_image(picture)}\">"
            f"<figcaption>{_e(caption)}</figcaption></figure>" for picture, caption in panels)
        out.append(f"<h3>{_e(item.outcome)}: {_e(str(record.get('id')))} "
                   f"({_e(', '.join(f for f in facts if f))})</h3>"
                   f"<div class=\"example\">{figures}</div>")
    return "\n".join(out)


def _focus_window(item: GalleryImage, threshold: float) -> tuple[int, int, int, int] | None:
    """``(row, col, height, width)`` of the crop around the box that decided the outcome."""
    found = outcomes(item.record, threshold)
    for kind in item.outcome.split("+"):
        index = found.get(kind, (0.0, None))[1]
        if index is None:
            continue
        source = item.record["boxes"] if kind == "FN" else item.record["detections"]
        x1, y1, x2, y2 = _xyxy([source[index]])[0][0]
        height, width = item.image.shape
        side_r, side_c = min(CROP_PX, height), min(CROP_PX, width)
        row = int(np.clip(round((y1 + y2) / 2 - side_r / 2), 0, height - side_r))
        col = int(np.clip(round((x1 + x2) / 2 - side_c / 2), 0, width - side_c))
        return row, col, side_r, side_c
    return None


def draw_detection(item: GalleryImage, threshold: float, mask_threshold: float, *,
                   window: tuple[int, int, int, int] | None = None, side: int = OVERVIEW_PX
                   ) -> Any:
    """An RGB picture of one image (or a window of it) with boxes, scores and mask outlines.

    Args:
        item: the image and its record.
        threshold: boxes scoring at least this are drawn bold with their score.
        mask_threshold: the predicted mask is outlined at this probability.
        window: ``(row, col, height, width)`` to draw; None for the whole image.
        side: longest side of the picture, px.

    Returns:
        A PIL image.
    """
    from PIL import Image, ImageDraw

    height, width = item.image.shape
    row, col, rows, cols = window or (0, 0, height, width)
    scale = side / max(rows, cols)
    size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
    crop = (slice(row, row + rows), slice(col, col + cols))
    picture = Image.fromarray(_to_uint8(item.image[crop])).resize(
        size, Image.Resampling.BOX if scale < 1 else Image.Resampling.NEAREST).convert("RGB")
    pixels = np.asarray(picture).copy()
    for mask, colour, cut in ((item.mask, REFERENCE, 0.0),
                              (item.prediction_mask, PREDICTED_MASK, mask_threshold)):
        if mask is not None and mask.shape == item.image.shape:
            region = (mask[crop] > cut) if cut == 0.0 else (mask[crop] >= cut)
            pixels[_outline(region, size)] = colour
    picture = Image.fromarray(pixels)
    draw = ImageDraw.Draw(picture)

    def place(box: np.ndarray) -> list[float]:
        x1, y1 = (box[0] - col) * scale, (box[1] - row) * scale
        return [x1, y1, max(x1, (box[2] - col) * scale - 1), max(y1, (box[3] - row) * scale - 1)]

    for box in _xyxy(item.record.get("boxes"))[0]:
        draw.rectangle(place(box), outline=REFERENCE, width=2)
    boxes, scores = _xyxy(item.record.get("detections"))
    order = np.argsort(-scores, kind="stable")
    faint = [i for i in order if scores[i] < threshold][:MAX_FAINT]
    for i in faint:
        draw.rectangle(place(boxes[i]), outline=FAINT, width=1)
    for i in order:
        if scores[i] >= threshold:
            corners = place(boxes[i])
            x1, y1 = corners[:2]
            draw.rectangle(corners, outline=PREDICTED, width=2)
            draw.text((x1, max(0.0, y1 - 11)), f"{scores[i]:.2f}", fill=PREDICTED)
    return picture


def _outline(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The boundary pixels of ``mask`` resized (nearest) to ``size`` (width, height)."""
    from PIL import Image

    width, height = size
    if not mask.any():
        return np.zeros((height, width), dtype=bool)
    resized = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(
        size, Image.Resampling.NEAREST)) > 0
    if not resized.any():  # smaller than a pixel of the picture: mark where it is
        rows, cols = np.nonzero(mask)
        resized[min(int(rows.mean() * height / mask.shape[0]), height - 1),
                min(int(cols.mean() * width / mask.shape[1]), width - 1)] = True
        return resized
    padded = np.pad(resized, 1)
    inner = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return resized & ~inner


def _classification(summary: Summary) -> str:
    block = summary.metrics["classification"]
    rows = [[name, _fmt(block[name]), _fmt_ci(block.get(f"{name}_ci95"))]
            for name in ("auc", "sensitivity", "specificity")]
    counts = (f"{block['n_images']} images: {block['n_positive']} with a nodule, "
              f"{block['n_negative']} without ({block['n_labelled_by_label']} labelled by "
              f"'label'); threshold {block['threshold']:g}.")
    parts = [_table(["measure", "value", "95% CI"], rows), f"<p class=\"def\">{_e(counts)}</p>"]
    if summary.image_roc is not None:
        figure, (ax,) = _figure(1)
        fpr, tpr = summary.image_roc
        ax.plot(fpr, tpr, marker=".", color="#4477aa")
        ax.plot([0, 1], [0, 1], color="#bbbbbb", linestyle=":")
        ax.set(xlabel="false-positive rate (images)", ylabel="true-positive rate",
               title=f"nodule_probability ROC, AUC {block['auc']:.3f}", xlim=(0, 1),
               ylim=(0, 1.02))
        parts.append(_img(figure, "image-level ROC of nodule_probability"))
    parts.append(f"<p class=\"def\">{_e(block['definition'])}</p>")
    return "\n".join(parts)


def _breakdown_figure(block: Mapping[str, Any]) -> Any:
    """One panel per dimension: sens_op and the image AUC of each cell with their 95% CIs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dimensions = list(block["by"])
    columns = min(3, len(dimensions))
    rows = math.ceil(len(dimensions) / columns)
    figure = Figure(figsize=(3.6 * columns, 2.9 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    rate = block["operating_point"]["fp_per_image"]
    for ax, dimension in zip(axes, dimensions, strict=False):
        cells = block["by"][dimension]
        x = np.arange(len(cells))
        for key, offset, colour, label in (("sens_op", -0.12, "#cc3311",
                                            f"sens @ {rate:g} FP/image"),
                                           ("auc", 0.12, "#4477aa", "image AUC")):
            shown = [(i, c[key], c[f"{key}_ci95"]) for i, c in enumerate(cells)
                     if c[key] is not None]
            if not shown:
                continue
            where = np.array([i for i, _, _ in shown]) + offset
            values = np.array([v for _, v, _ in shown])
            low = np.array([v - (ci[0] if ci else v) for _, v, ci in shown])
            high = np.array([(ci[1] if ci else v) - v for _, v, ci in shown])
            ax.errorbar(where, values, yerr=np.clip([low, high], 0, None), fmt="o",
                        color=colour, capsize=3, markersize=4, label=label)
        ax.set_xticks(x, [f"{c['cell']}\nn={c['n_lesions']}" for c in cells], fontsize=7)
        ax.set(title=dimension, ylim=(-0.02, 1.05), xlim=(-0.5, len(cells) - 0.5))
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside upper center", ncols=2,
                  fontsize=8)
    for ax in axes[len(dimensions):]:
        ax.set_visible(False)
    return figure


def _characteristics(block: Mapping[str, Any]) -> str:
    rows = []
    for name in CHARACTERISTICS:
        entry = block.get(name)
        if entry:
            rows.append([name, _fmt(entry["auc"]), _fmt_ci(entry["auc_ci95"]),
                         str(entry["n_positive"]), str(entry["n_negative"]),
                         entry.get("note", "")])
    return (_table(["class", "AUC", "95% CI", "n with", "n without", "note"], rows)
            + f"<p class=\"def\">{_e(block['definition'])}</p>")


def _breakdown(block: Mapping[str, Any]) -> str:
    point = block["operating_point"]
    threshold = point["threshold"]
    header = ["cell", "lesions", f"sens @ {point['fp_per_image']:g} FP/image",
              "95% CI", f"sens @ score ≥ {block['score_threshold']:g}", "95% CI",
              "images +", "images −", f"AUC ({block['auc_source'] or 'no score'})", "95% CI",
              "IoU", "n IoU"]
    out = [f"<p class=\"def\">Operating point: box score ≥ {_fmt(threshold)} "
           f"(≤ {point['fp_per_image']:g} FP/image over all images).</p>",
           _img(_breakdown_figure(block), "sensitivity and AUC per cell").replace(
               "<img ", "<img style=\"max-width: 100%\" ", 1)]
    for dimension, cells in block["by"].items():
        rows = [[c["cell"], str(c["n_lesions"]), _fmt(c["sens_op"]), _fmt_ci(c["sens_op_ci95"]),
                 _fmt(c["sens_score"]), _fmt_ci(c["sens_score_ci95"]), str(c["n_images_pos"]),
                 str(c["n_images_neg"]), _fmt(c["auc"]), _fmt_ci(c["auc_ci95"]),
                 _fmt(c["iou_mean"]), str(c["n_iou"])] for c in cells]
        attribute = BREAKDOWNS[dimension][0] if dimension in BREAKDOWNS else dimension
        unknown = block["n_unknown"].get(dimension, 0)
        out += [f"<h3>{_e(dimension)} ({_e(attribute)}; {unknown} lesions unknown)</h3>",
                _table(header, rows)]
    out.append(f"<p class=\"def\">{_e(block['definition'])}</p>")
    return "\n".join(out)
