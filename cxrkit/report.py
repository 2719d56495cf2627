"""Evaluation reports: one self-contained HTML page a person would rather look at than read.

The page (:func:`build_report`) holds the summary table, side-by-side crops of a few example
images (the best, median and worst by PSNR: the image as measured, its reference and their
difference, at the same place), histograms of the per-image measures, and the ROC and FROC curves
when detection was measured. When the records name the enhancer's input, the page answers "does
it beat the baseline?": the paired gain over bicubic with its CI, and per example the input (LQ),
the output, the bicubic baseline and the reference at one crop chosen where output and baseline
differ inside the lung field (:func:`anatomy_window`), with the model and preset that made them.
With eval's realism block it shows the lung-patch spectra of all sides on one plot. Everything
is inline: CSS in the page, pictures as base64 PNG ``data:`` URIs, so the file can be mailed or
archived as a CI artefact. It links to nothing.

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
img.px { image-rendering: pixelated; width: 220px; max-width: 100%; height: auto; }
img { max-width: 100%; height: auto; }
p.verdict { font-size: 1.05em; font-weight: 600; }
p.def { font-size: 0.85em; color: #444; max-width: 60em; }
"""


@dataclass(frozen=True)
class Example:
    """One image shown in the report.

    Attributes:
        label: why it is shown (``best``, ``median``, ``worst``).
        row: its per-image measurements (``id``, ``psnr``, ...).
        image: ``(H, W)`` the image as measured (after any resampling), float in [0, 1].
        reference: ``(H, W)`` its reference; None for a realism-only example (then
            ``baseline`` is needed).
        lq: the enhancer's input (any size), or None.
        baseline: ``(H, W)`` the bicubic baseline (the input resampled), or None.
        lung: ``(H, W)`` bool lung field (where the crop is looked for), or None.
        made_by: the model and preset that made the pair, in words.
    """

    label: str
    row: Mapping[str, Any]
    image: np.ndarray
    reference: np.ndarray | None
    lq: np.ndarray | None = None
    baseline: np.ndarray | None = None
    lung: np.ndarray | None = None
    made_by: str = ""


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


SATURATED = (0.02, 0.98)
"""Display values at or beyond which a pixel counts as saturated (letter markers, black borders):
:func:`anatomy_window` avoids windows that hold more than 1 % of them."""
BORDER_FRACTION = 0.05
"""The image border band :func:`anatomy_window` stays out of (collimation edges, labels)."""


def anatomy_window(image: np.ndarray, baseline: np.ndarray, reference: np.ndarray,
                   lung: np.ndarray | None, size: int) -> tuple[int, int]:
    """Top-left ``(row, col)`` of the ``size``-square crop where ``image`` and ``baseline``
    differ most in the anatomy: the mean ``|image − baseline|`` over the lung field (the whole
    image without one), outside a :data:`BORDER_FRACTION` border band, and never a window whose
    reference has more than 1 % saturated pixels (:data:`SATURATED`) while another has not.
    """
    diff = np.abs(np.asarray(image, np.float64) - np.asarray(baseline, np.float64))
    height, width = diff.shape
    band_r, band_c = round(BORDER_FRACTION * height), round(BORDER_FRACTION * width)
    valid = np.zeros_like(diff, dtype=bool)
    valid[band_r:height - band_r, band_c:width - band_c] = True
    if lung is not None and np.any(lung & valid):
        valid &= lung
    ref = np.asarray(reference)
    saturated = ((ref <= SATURATED[0]) | (ref >= SATURATED[1])).astype(np.float64)
    # one saturated pixel outweighs any difference: 1 % of a window costs more than it can gain
    score = np.where(valid, diff, 0.0) - saturated * 100.0 * (float(diff.max()) + 1e-6)
    return crop_window(score, size)


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
             f"cxrkit {_e(__version__)}.</p>"]
    if metrics.get("baseline"):
        parts += ["<h2>Does it beat the baseline?</h2>", _baseline(metrics["baseline"])]
    parts += ["<h2>Summary</h2>", _summary_tables(metrics)]
    if metrics.get("realism"):
        parts += ["<h2>Realism against real radiographs</h2>", _realism(metrics["realism"])]
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


def _baseline(block: Mapping[str, Any]) -> str:
    """The paired gain over bicubic, with a one-line verdict from its CI."""
    rows = []
    verdicts = []
    for name, unit in (("psnr", "dB"), ("ssim", "")):
        gain = block.get(f"{name}_gain")
        if not gain:
            continue
        base = block[f"{name}_bicubic"]
        rows.append([f"{name} gain over bicubic", f"{gain['mean']:+.4g} {unit}".strip(),
                     _fmt_ci(gain["ci95"]), _fmt(base["mean"]), str(gain["n"])])
        ci = gain["ci95"]
        if ci and ci[0] > 0:
            verdicts.append(f"{name}: yes (the 95% CI is above 0)")
        elif ci and ci[1] < 0:
            verdicts.append(f"{name}: no, worse than bicubic (the 95% CI is below 0)")
        else:
            verdicts.append(f"{name}: {'ahead' if gain['mean'] > 0 else 'behind'} on average, "
                            "not significant" if ci else f"{name}: one image, no CI")
    return (f"<p class=\"verdict\">{_e('; '.join(verdicts))}</p>"
            + _table(["measure", "mean", "95% CI", "bicubic mean", "n"], rows)
            + f"<p class=\"def\">{_e(block['definition'])}</p>")


def _realism(block: Mapping[str, Any]) -> str:
    """Band log-ratios, domain probability and nodule CNR per side, and the spectra plot."""
    out = []
    ratios = block.get("spectral_log_ratio", {})
    if ratios:
        rows = [[side, *(f"{float(v):+.2f}" for v in entry["log_ratio"]), str(entry["n"])]
                for side, entry in ratios.items()]
        ref = block["reference"]
        out += [f"<p>Against {ref['n_images']} reference radiographs at "
                f"{ref['pitch_mm']:.3f} mm per px ({_e(', '.join(ref['pitch_sources']))}).</p>",
                _table(["side", "band 1 (low)", "band 2", "band 3", "band 4 (high)", "n"], rows)]
    rows = []
    for name in ("domain_p", "nodule_cnr"):
        for side, stats in block.get(name, {}).items():
            if isinstance(stats, Mapping):
                rows.append([f"{name} ({side})", _fmt(stats["mean"]), _fmt_ci(stats["ci95"]),
                             str(stats["n"])])
    if rows:
        out.append(_table(["measure", "mean", "95% CI", "n"], rows))
    spectrum = block.get("spectrum")
    if spectrum and spectrum.get("freq_per_mm") is not None:
        out.append(_img(_spectra(spectrum, block["reference"]["pitch_mm"]), "realism spectra"))
    out.append(f"<p class=\"def\">{_e(block.get('definition', ''))}</p>")
    return "\n".join(out)


def _spectra(spectrum: Mapping[str, Any], pitch_mm: float) -> Any:
    """One plot: the radially averaged lung-patch spectra of every side and the reference."""
    figure, (ax,) = _figure(1)
    figure.set_size_inches(6.4, 3.6)
    freqs = np.asarray(spectrum["freq_per_mm"], dtype=np.float64)
    colours = {"reference": "#222222", "path": "#cc3311", "input": "#4477aa",
               "bicubic": "#ee7733"}
    for side, values in spectrum.items():
        if side == "freq_per_mm" or values is None:
            continue
        ax.semilogy(freqs, np.asarray(values, dtype=np.float64), label=side,
                    color=colours.get(side), linewidth=2.2 if side == "reference" else 1.4,
                    linestyle="--" if side == "reference" else "-")
    nyquist = 0.5 / pitch_mm
    for edge in (0.25, 0.5, 0.75):
        ax.axvline(edge * nyquist, color="#bbbbbb", linestyle=":")
    ax.set(xlabel="radial frequency (cycles/mm)", ylabel="power (display units²)",
           title="lung-patch spectra (dotted: band edges)", xlim=(0, nyquist))
    ax.legend(fontsize=8)
    return figure


def _examples(examples: Sequence[Example]) -> str:
    """Per example: an overview with the crop marked, then image, reference and difference;
    with a baseline: input, output, bicubic and reference at the crop where the output and the
    baseline differ in the anatomy, and both errors at one gain."""
    from PIL import Image, ImageDraw

    out = []
    for ex in examples:
        image = np.clip(np.asarray(ex.image, dtype=np.float64), 0, 1)
        baseline = (np.clip(np.asarray(ex.baseline, dtype=np.float64), 0, 1)
                    if ex.baseline is not None and ex.baseline.shape == image.shape else None)
        if ex.reference is None and baseline is None:
            continue
        reference = (np.clip(np.asarray(ex.reference, dtype=np.float64), 0, 1)
                     if ex.reference is not None else None)
        anchor = reference if reference is not None else image
        error = np.abs(image - (reference if reference is not None else baseline))
        if baseline is not None:
            r, c = anatomy_window(image, baseline, anchor, ex.lung, CROP_PX)
        else:
            r, c = crop_window(error, CROP_PX)
        size_r, size_c = min(CROP_PX, image.shape[0]), min(CROP_PX, image.shape[1])
        window = (slice(r, r + size_r), slice(c, c + size_c))
        overview = Image.fromarray(_to_uint8(anchor)).convert("RGB")
        factor = max(overview.size) / CROP_PX
        if factor > 1:
            overview = overview.resize((round(overview.width / factor),
                                        round(overview.height / factor)), Image.Resampling.BOX)
        scale = overview.width / image.shape[1]
        ImageDraw.Draw(overview).rectangle(
            [c * scale, r * scale, (c + size_c) * scale - 1, (r + size_r) * scale - 1],
            outline=(255, 64, 64), width=2)
        gain = _diff_gain(error)
        numbers = ", ".join(f"{k} {_fmt(ex.row.get(k))}" for k in (
            "psnr", "psnr_bicubic", "ssim", "ssim_bicubic", "psnr_fit", "domain_p",
            "domain_p_bicubic", "cnr_ratio") if ex.row.get(k) is not None)
        overview_caption = ("reference" if reference is not None else "output") + ", crop marked"
        panels = [(_png_image(overview), overview_caption)]
        if baseline is not None:
            if ex.lq is not None:
                fr, fc = ex.lq.shape[0] / image.shape[0], ex.lq.shape[1] / image.shape[1]
                lq = np.clip(np.asarray(ex.lq, dtype=np.float64), 0, 1)[
                    int(r * fr):max(int((r + size_r) * fr), int(r * fr) + 1),
                    int(c * fc):max(int((c + size_c) * fc), int(c * fc) + 1)]
                panels.append((_png(lq), "input (LQ)"))
            panels += [(_png(image[window]), "output"), (_png(baseline[window]), "bicubic")]
            if reference is not None:
                base_error = np.abs(baseline - reference)
                gain = _diff_gain(np.maximum(error, base_error))
                panels += [(_png(reference[window]), "reference"),
                           (_png(np.clip(error[window] * gain, 0, 1)),
                            f"|output − ref| ×{gain:g}"),
                           (_png(np.clip(base_error[window] * gain, 0, 1)),
                            f"|bicubic − ref| ×{gain:g}")]
            else:
                panels.append((_png(np.clip(error[window] * gain, 0, 1)),
                               f"|output − bicubic| ×{gain:g} (no reference)"))
        else:
            panels += [(_png(image[window]), "image (as measured)"),
                       (_png(anchor[window]), "reference"),
                       (_png(np.clip(error[window] * gain, 0, 1)),
                        f"|image − reference| ×{gain:g}")]
        figures = "".join(f"<figure><img class=\"px\" alt=\"{_e(caption)}\" src=\"{uri}\">"
                          f"<figcaption>{_e(caption)}</figcaption></figure>"
                          for uri, caption in panels)
        made = f"<p class=\"def\">Made by: {_e(ex.made_by)}</p>" if ex.made_by else ""
        out.append(f"<h3>{_e(ex.label)}: {_e(str(ex.row.get('id')))} ({_e(numbers)})</h3>"
                   f"{made}<div class=\"example\">{figures}</div>")
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
    figure, axes = _figure(len(series), per_row=4)
    for ax, (name, values) in zip(axes, series.items(), strict=False):
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


def _figure(panels: int, per_row: int | None = None) -> tuple[Any, list[Any]]:
    """A matplotlib figure with ``panels`` axes, at most ``per_row`` to a row (so it fits the
    page; unused axes of the last row are hidden), on the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(panels, per_row or panels)
    rows = -(-panels // cols)
    figure = Figure(figsize=(3.6 * cols, 3.2 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = list(figure.subplots(rows, cols, squeeze=False).ravel())
    for extra in axes[panels:]:
        extra.set_visible(False)
    return figure, axes[:panels]


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
