"""Evaluation reports: one self-contained HTML page a person would rather look at than read.

The page (:func:`build_report`) holds the summary table, side-by-side crops of a few example
images (the best, median and worst by PSNR: the image as measured, its reference and their
difference, at the same place), histograms of the per-image measures, and the ROC and FROC curves
when detection was measured. Everything is inline: CSS in the page, pictures as base64 PNG
``data:`` URIs, so the file can be mailed or archived as a CI artefact. It links to nothing.

Plots use matplotlib's object-oriented API on the Agg canvas (no pyplot, no global backend
change), imported only when a report is built.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrkit import __version__

if TYPE_CHECKING:
    from cxrkit.metrics.records import DetectionCurves, Summary

CROP_PX = 256
"""Side of the example crops, px of the measured image."""
DIFF_GAINS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
"""Gains of the difference panel: the largest that keeps the 99th percentile of the example's
``|image - reference|`` at or below white, so that the errors of each example are visible."""
MAX_TABLE_ROWS = 100
"""Per-image rows listed in the report (worst first)."""
HISTOGRAM_METRICS = ("psnr", "ssim", "ms_ssim", "psnr_fit", "noise_sigma", "mean_gradient", "cnr")

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
td, th { padding: 0.2em 0.7em; border-bottom: 1px solid #eee; text-align: right; }
td:first-child, th:first-child, td.name { text-align: left; }
.example { display: flex; gap: 0.6em; flex-wrap: wrap; margin: 0.5em 0 1.5em; }
figure { margin: 0; } figcaption { font-size: 0.8em; color: #555; text-align: center; }
img.px { image-rendering: pixelated; width: 256px; height: auto; }
p.def { font-size: 0.85em; color: #444; max-width: 60em; }
"""


@dataclass(frozen=True)
class Example:
    """One image shown in the report.

    Attributes:
        label: why it is shown (``best``, ``median``, ``worst``).
        row: its per-image measurements (``id``, ``psnr``, ...).
        image: ``(H, W)`` the image as measured (after any resampling), float in [0, 1].
        reference: ``(H, W)`` its reference.
    """

    label: str
    row: Mapping[str, Any]
    image: np.ndarray
    reference: np.ndarray


def pick_examples(rows: Sequence[Mapping[str, Any]], metric: str = "psnr"
                  ) -> list[tuple[str, Mapping[str, Any]]]:
    """The best, median and worst rows by ``metric`` (each row once; ``inf`` counts as best).

    Returns:
        ``[(label, row), …]``, at most three, empty when no row has ``metric``.
    """
    scored = sorted((r for r in rows if isinstance(r.get(metric), int | float)),
                    key=lambda r: float(r[metric]))
    if not scored:
        return []
    picks = [("best", scored[-1]), ("median", scored[len(scored) // 2]), ("worst", scored[0])]
    seen: set[int] = set()
    unique = []
    for label, row in picks:
        if id(row) not in seen:
            seen.add(id(row))
            unique.append((label, row))
    return unique


def crop_window(error: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left ``(row, col)`` of the ``size``-square window with the largest mean error.

    Windows are tried on a grid of stride ``size // 2`` (and flush with the far edges).

    Args:
        error: ``(H, W)`` non-negative error map.
        size: window side, px; clipped to the image.
    """
    height, width = error.shape
    size_r, size_c = min(size, height), min(size, width)
    integral = np.pad(np.cumsum(np.cumsum(error, 0), 1), ((1, 0), (1, 0)))  # (H + 1, W + 1)

    def starts(extent: int, side: int) -> list[int]:
        return sorted({*range(0, extent - side + 1, max(side // 2, 1)), extent - side})

    best, where = -math.inf, (0, 0)
    for r in starts(height, size_r):
        for c in starts(width, size_c):
            total = (integral[r + size_r, c + size_c] - integral[r, c + size_c]
                     - integral[r + size_r, c] + integral[r, c])
            if total > best:
                best, where = total, (r, c)
    return where


def build_report(summary: Summary, examples: Sequence[Example], *,
                 title: str = "cxrkit eval report",
                 sections: Sequence[tuple[str, str]] = ()) -> str:
    """The report as one self-contained HTML page.

    Args:
        summary: what ``eval`` measured (:func:`cxrkit.metrics.records.summarize_records`).
        examples: images to show side by side (see :func:`pick_examples`).
        title: the page title.
        sections: further ``(heading, HTML)`` sections placed before the per-image table (e.g.
            :func:`cxrkit.report_detection.detection_sections`).

    Returns:
        HTML text (UTF-8), with no external reference.
    """
    metrics = summary.metrics
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{_e(title)}</h1>",
             f"<p>{metrics['n_records']} records, {metrics['n_failed']} failed; "
             f"cxrkit {_e(__version__)}.</p>", "<h2>Summary</h2>", _summary_tables(metrics)]
    if examples:
        parts += ["<h2>Examples</h2>", _examples(examples)]
    histograms = _histograms(summary.rows)
    if histograms:
        parts += ["<h2>Distributions over images</h2>", _img(histograms, "histograms")]
    if summary.curves is not None:
        parts += ["<h2>ROC and FROC</h2>", _img(_curves(summary.curves, metrics["detection"]),
                                                "ROC and FROC curves")]
    for heading, body in sections:
        parts += [f"<h2>{_e(heading)}</h2>", body]
    if summary.rows:
        parts += ["<h2>Per image</h2>", _rows_table(summary.rows)]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _summary_tables(metrics: Mapping[str, Any]) -> str:
    """One table per block of the summary, with its definition underneath."""
    out = []
    for block in ("image_quality", "no_reference"):
        stats = {k: v for k, v in metrics.get(block, {}).items() if isinstance(v, Mapping)}
        if stats:
            rows = [[name, _fmt(s["mean"]), _fmt_ci(s["ci95"]), _fmt(s["median"]),
                     _fmt(s["min"]), _fmt(s["max"]), str(s["n"])] for name, s in stats.items()]
            out += [f"<h3>{_e(block.replace('_', ' '))}</h3>",
                    _table(["measure", "mean", "95% CI", "median", "min", "max", "n"], rows)]
            if metrics[block].get("resample"):
                out.append(f"<p class=\"def\">Sizes: {_e(metrics[block]['resample'])}.</p>")
            out.append(f"<p class=\"def\">{_e(metrics[block]['definition'])}</p>")
    for block in ("detection", "segmentation"):
        values = metrics.get(block)
        if values:
            rows = [[name, _fmt(value), _fmt_ci(values.get(f"{name}_ci95"))]
                    for name, value in values.items()
                    if isinstance(value, int | float) and not isinstance(value, bool)]
            note = values.get("definition") or values.get("convention", "")
            out += [f"<h3>{_e(block)}</h3>", _table(["measure", "value", "95% CI"], rows),
                    f"<p class=\"def\">{_e(note)}</p>"]
    return "\n".join(out)


def _examples(examples: Sequence[Example]) -> str:
    """Per example: an overview with the crop marked, then image, reference and difference."""
    from PIL import Image, ImageDraw

    out = []
    for ex in examples:
        image = np.clip(np.asarray(ex.image, dtype=np.float64), 0, 1)
        reference = np.clip(np.asarray(ex.reference, dtype=np.float64), 0, 1)
        error = np.abs(image - reference)
        r, c = crop_window(error, CROP_PX)
        size_r, size_c = min(CROP_PX, image.shape[0]), min(CROP_PX, image.shape[1])
        window = (slice(r, r + size_r), slice(c, c + size_c))
        overview = Image.fromarray(_to_uint8(reference)).convert("RGB")
        factor = max(overview.size) / CROP_PX
        if factor > 1:
            overview = overview.resize((round(overview.width / factor),
                                        round(overview.height / factor)), Image.Resampling.BOX)
        scale = overview.width / image.shape[1]
        ImageDraw.Draw(overview).rectangle(
            [c * scale, r * scale, (c + size_c) * scale - 1, (r + size_r) * scale - 1],
            outline=(255, 64, 64), width=2)
        gain = _diff_gain(error)
        numbers = ", ".join(f"{k} {_fmt(ex.row.get(k))}" for k in ("psnr", "ssim", "psnr_fit")
                            if ex.row.get(k) is not None)
        panels = [(_png_image(overview), "reference, crop marked"),
                  (_png(image[window]), "image (as measured)"),
                  (_png(reference[window]), "reference"),
                  (_png(np.clip(error[window] * gain, 0, 1)), f"|image − reference| ×{gain:g}")]
        figures = "".join(f"<figure><img class=\"px\" alt=\"{_e(caption)}\" src=\"{uri}\">"
                          f"<figcaption>{_e(caption)}</figcaption></figure>"
                          for uri, caption in panels)
        out.append(f"<h3>{_e(ex.label)}: {_e(str(ex.row.get('id')))} ({_e(numbers)})</h3>"
                   f"<div class=\"example\">{figures}</div>")
    return "\n".join(out)


def _diff_gain(error: np.ndarray) -> float:
    """The largest of :data:`DIFF_GAINS` that maps the 99th percentile of ``error`` to ≤ 1."""
    high = float(np.percentile(error, 99))
    fitting = [g for g in DIFF_GAINS if g * high <= 1.0]
    return fitting[-1] if fitting else DIFF_GAINS[0]


def _histograms(rows: Sequence[Mapping[str, Any]]) -> Any:
    """A figure of one histogram per per-image measure with finite values, or None."""
    series = {}
    for name in HISTOGRAM_METRICS:
        values = [float(r[name]) for r in rows if isinstance(r.get(name), int | float)
                  and math.isfinite(r[name])]
        if values:
            series[name] = values
    if not series:
        return None
    figure, axes = _figure(len(series))
    for ax, (name, values) in zip(axes, series.items(), strict=True):
        ax.hist(values, bins=min(30, max(5, len(values) // 3)), color="#4477aa")
        ax.axvline(float(np.mean(values)), color="#cc3311", linestyle="--", label="mean")
        ax.set_xlabel(name)
        ax.set_ylabel("images")
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8)
    return figure


def _curves(curves: DetectionCurves, detection: Mapping[str, Any]) -> Any:
    """A figure with the image-level ROC and the FROC with the NODE21 operating points."""
    from cxrkit.metrics.detection import NODE21_RATES

    figure, (roc, froc) = _figure(2)
    roc.plot(curves.roc_fpr, curves.roc_tpr, marker=".", color="#4477aa")  # ties: diagonal
    roc.plot([0, 1], [0, 1], color="#bbbbbb", linestyle=":")
    roc.set(xlabel="false-positive rate (images)", ylabel="true-positive rate",
            title=f"ROC, AUC {detection['auc']:.3f}", xlim=(0, 1), ylim=(0, 1.02))
    fpi = np.r_[0.0, curves.froc.fp_per_image]
    sens = np.r_[0.0, curves.froc.sensitivity]
    froc.plot(fpi, sens, marker=".", color="#4477aa")
    rates = list(NODE21_RATES)
    froc.plot(rates, curves.froc.sensitivity_at(rates), "o", color="#cc3311",
              label="sens@0.125/0.25/0.5")
    froc.set(xlabel="false positives per image", ylabel="sensitivity (lesions)",
             title=f"FROC, NODE21 score {detection['node21_score']:.3f}",
             xlim=(0, max(1.0, float(fpi.max()) * 1.05)), ylim=(0, 1.02))
    froc.legend(fontsize=8)
    return figure


def _figure(panels: int) -> tuple[Any, list[Any]]:
    """A matplotlib figure with ``panels`` axes in one row, on the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.6 * panels, 3.2), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    return figure, list(axes)


def _rows_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Per-image measurements, worst PSNR first, at most :data:`MAX_TABLE_ROWS`."""
    names = [k for k in HISTOGRAM_METRICS if any(r.get(k) is not None for r in rows)]
    names += [k for k in ("intersection_px", "union_px") if any(k in r for r in rows)]
    ordered = sorted(rows, key=lambda r: float(r["psnr"]) if isinstance(
        r.get("psnr"), int | float) else math.inf)
    body = [[str(r.get("id")), *(_fmt(r.get(k)) for k in names)]
            for r in ordered[:MAX_TABLE_ROWS]]
    note = (f"<p class=\"def\">The {MAX_TABLE_ROWS} of {len(rows)} images with the lowest PSNR."
            "</p>" if len(rows) > MAX_TABLE_ROWS else "")
    return _table(["id", *names], body) + note


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(figure: Any, alt: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"<img alt=\"{_e(alt)}\" src=\"{uri}\">"


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _png(image: np.ndarray) -> str:
    """A ``[0, 1]`` gray image as an 8-bit PNG data URI."""
    from PIL import Image

    return _png_image(Image.fromarray(_to_uint8(image)))


def _png_image(picture: Any) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "∞" if value == math.inf else f"{value:.4g}"
    return str(value)


def _fmt_ci(ci: Sequence[float] | None) -> str:
    return f"{ci[0]:.4g} – {ci[1]:.4g}" if ci else ""


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)
