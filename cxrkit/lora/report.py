"""The interference report of LoRA adapters (the source's Fig. 8): how much each pair of adapters
overlaps, layer by layer, and how sparse each adapter's update is.

For every layer both adapters of a pair target, with ``ΔWᵢ = sᵢBᵢAᵢ``:

* ``cross`` — ``‖ΔWᵢΔWⱼᵀ‖_F``, exactly from r×r products (:func:`cxrkit.lora.algebra.cross_norm2`);
  zero exactly when the two updates read orthogonal input directions;
* ``cross_normalised`` — ``‖ΔWᵢΔWⱼᵀ‖_F / (‖ΔWᵢ‖_F‖ΔWⱼ‖_F)``, in [0, 1] (the square root of the
  normalised L_orth that joint training penalises);
* ``cosine`` — the cosine of the flattened updates, ``⟨ΔWᵢ, ΔWⱼ⟩_F / (‖ΔWᵢ‖_F‖ΔWⱼ‖_F)``;
* ``overlap`` — how much the row spaces of ``Aᵢ`` and ``Aⱼ`` (the input directions each adapter
  can read) share: ``‖QᵢᵀQⱼ‖²_F / min(rᵢ, rⱼ)`` with ``Qᵢ`` an orthonormal basis of ``Aᵢ``'s row
  space and ``rᵢ`` its dimension (SVD, numerical rank); 1 when one space contains the other,
  about ``max(r)/d_in`` for random adapters.

Each adapter's **sparsity** is the fraction of the entries of its full updates, pooled over all its
layers, with ``|ΔW[o, i]| < threshold`` (absolute, default 0.01: the source's "fraction of
|w| < 0.01"); ``sparsity_relative`` uses ``|ΔW[o, i]| < threshold · max|ΔW|`` of the entry's own
layer instead, which does not depend on the adapter's overall scale (research lora.md §6: random
adapters of std 0.05 are already 85 % "sparse" by the absolute rule).

The report is a plain data structure (:class:`InterferenceReport`, :meth:`~InterferenceReport.
records` for JSON); :func:`plot_interference` draws it with matplotlib (object API, Agg canvas),
:func:`interference_html` makes a self-contained page and :func:`format_table` a text table.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cxrkit.errors import InputError
from cxrkit.lora import algebra
from cxrkit.lora.files import Adapter, LoraLayer

SPARSITY_THRESHOLD = 0.01


@dataclass(frozen=True)
class PairLayer:
    """One layer of one adapter pair."""

    first: str
    second: str
    layer: str
    cross: float
    cross_normalised: float
    cosine: float
    overlap: float


@dataclass(frozen=True)
class AdapterStats:
    """One adapter's size and sparsity."""

    name: str
    layers: int
    rank: int
    norm: float  # sqrt(Σ_layers ‖ΔW‖²_F)
    sparsity: float
    sparsity_relative: float


@dataclass
class InterferenceReport:
    """Per layer and pair: :class:`PairLayer` rows; per adapter: :class:`AdapterStats`."""

    adapters: list[AdapterStats]
    pairs: list[PairLayer]
    threshold: float = SPARSITY_THRESHOLD
    definitions: dict[str, str] = field(default_factory=lambda: dict(DEFINITIONS))

    def pair_summary(self) -> list[dict[str, Any]]:
        """Per adapter pair: the number of shared layers, the mean and max of each measure over
        them, and the layer with the largest normalised cross term."""
        out = []
        keys: dict[tuple[str, str], list[PairLayer]] = {}
        for row in self.pairs:
            keys.setdefault((row.first, row.second), []).append(row)
        for (first, second), rows in keys.items():
            worst = max(rows, key=lambda r: r.cross_normalised)
            item: dict[str, Any] = {"first": first, "second": second, "layers": len(rows)}
            for measure in ("cross", "cross_normalised", "cosine", "overlap"):
                values = [getattr(r, measure) for r in rows]
                item[f"{measure}_mean"] = sum(values) / len(values)
                item[f"{measure}_max"] = max(values, key=abs)
            item["worst_layer"] = worst.layer
            out.append(item)
        return out

    def records(self) -> dict[str, Any]:
        """The whole report as JSON-able data."""
        return {
            "threshold": self.threshold,
            "adapters": [vars(a) for a in self.adapters],
            "pairs": self.pair_summary(),
            "layers": [vars(p) for p in self.pairs],
            "definitions": self.definitions,
        }


DEFINITIONS = {
    "cross": "‖ΔWᵢΔWⱼᵀ‖_F per layer, exact from r×r products",
    "cross_normalised": "‖ΔWᵢΔWⱼᵀ‖_F / (‖ΔWᵢ‖_F‖ΔWⱼ‖_F), in [0, 1]",
    "cosine": "cosine of the flattened updates ΔWᵢ, ΔWⱼ",
    "overlap": "‖QᵢᵀQⱼ‖²_F / min(rᵢ, rⱼ), Qᵢ an orthonormal basis of Aᵢ's row space",
    "sparsity": "fraction of ΔW entries (all layers pooled) with |ΔW| < threshold",
    "sparsity_relative": "fraction of ΔW entries with |ΔW| < threshold · max|ΔW| of their layer",
}


def interference_report(adapters: Sequence[Adapter], names: Sequence[str] | None = None, *,
                        threshold: float = SPARSITY_THRESHOLD) -> InterferenceReport:
    """The report of ``adapters`` (named ``names``, default ``adapter0``, ``adapter1``, ...):
    every pair ``i < j`` on every layer both target, and each adapter's sparsity.

    Raises:
        InputError: names and adapters differ in number, or a non-positive threshold.
    """
    import torch

    names = [f"adapter{i}" for i in range(len(adapters))] if names is None else list(names)
    if len(names) != len(adapters):
        raise InputError(f"{len(names)} names for {len(adapters)} adapters")
    if not threshold > 0:
        raise InputError(f"the sparsity threshold must be positive (got {threshold})")
    stats = []
    with torch.no_grad():
        for name, adapter in zip(names, adapters, strict=True):
            small = small_rel = total = 0
            norm2 = 0.0
            for layer in adapter.layers.values():
                d = algebra.delta(layer).abs()
                small += int((d < threshold).sum())
                small_rel += int((d < threshold * d.max()).sum())
                total += d.numel()
                norm2 += float(algebra.norm2(layer))
            stats.append(AdapterStats(
                name=name, layers=len(adapter.layers),
                rank=max((layer.rank for layer in adapter.layers.values()), default=0),
                norm=math.sqrt(norm2), sparsity=small / total if total else 0.0,
                sparsity_relative=small_rel / total if total else 0.0))
        pairs = []
        for i in range(len(adapters)):
            for j in range(i + 1, len(adapters)):
                for layer in algebra.shared_layers(adapters[i], adapters[j]):
                    x, y = adapters[i].layers[layer], adapters[j].layers[layer]
                    cross = math.sqrt(max(float(algebra.cross_norm2(x, y)), 0.0))
                    pairs.append(PairLayer(
                        first=names[i], second=names[j], layer=layer, cross=cross,
                        cross_normalised=math.sqrt(max(float(algebra.orth_penalty(x, y)), 0.0)),
                        cosine=float(algebra.cosine(x, y)), overlap=_overlap(x, y)))
    return InterferenceReport(adapters=stats, pairs=pairs, threshold=threshold)


def _overlap(x: LoraLayer, y: LoraLayer) -> float:
    """``‖QₓᵀQᵧ‖²_F / min(rankₓ, rankᵧ)``: Q an orthonormal basis of A's row space (from the SVD,
    numerical rank, so a rank-deficient A such as a merge's is measured on its true space)."""
    import torch

    def basis(a: torch.Tensor) -> torch.Tensor:
        u, s, _ = torch.linalg.svd(a.T.double(), full_matrices=False)
        keep = s > s.max() * max(a.shape) * torch.finfo(torch.float64).eps if s.numel() else s
        return u[:, keep]

    qx, qy = basis(x.a), basis(y.a)
    if qx.shape[1] == 0 or qy.shape[1] == 0:
        return 0.0
    return float(((qx.T @ qy) ** 2).sum()) / min(qx.shape[1], qy.shape[1])


def format_table(report: InterferenceReport) -> str:
    """A plain-text table of the report (adapters, then one line per pair) for a terminal."""
    lines = [f"{'adapter':<24} {'layers':>6} {'rank':>5} {'‖ΔW‖':>10} "
             f"{'|ΔW|<' + format(report.threshold, 'g'):>9} {'rel':>6}"]
    for a in report.adapters:
        lines.append(f"{a.name[:24]:<24} {a.layers:>6} {a.rank:>5} {a.norm:>10.4g} "
                     f"{a.sparsity:>9.1%} {a.sparsity_relative:>6.1%}")
    summary = report.pair_summary()
    if summary:
        lines.append("")
        lines.append(f"{'pair':<36} {'layers':>6} {'cross':>10} {'cross/‖‖':>9} "
                     f"{'max':>7} {'cos':>7} {'overlap':>7}  worst layer")
        for p in summary:
            pair = f"{p['first']} × {p['second']}"
            lines.append(f"{pair[:36]:<36} {p['layers']:>6} {p['cross_mean']:>10.4g} "
                         f"{p['cross_normalised_mean']:>9.4f} {p['cross_normalised_max']:>7.4f} "
                         f"{p['cosine_mean']:>7.3f} {p['overlap_mean']:>7.3f}  "
                         f"{p['worst_layer']}")
    return "\n".join(lines)


def plot_interference(report: InterferenceReport) -> Any:
    """A matplotlib ``Figure`` (Agg canvas): the normalised cross term per layer for each pair
    (left), the cosine per layer (middle) and each adapter's sparsity (right)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 3.4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    cross_ax, cos_ax, sparse_ax = figure.subplots(1, 3)
    groups: dict[tuple[str, str], list[PairLayer]] = {}
    for row in report.pairs:
        groups.setdefault((row.first, row.second), []).append(row)
    for (first, second), rows in groups.items():
        xs = range(len(rows))
        label = f"{first} × {second}"
        cross_ax.plot(xs, [r.cross_normalised for r in rows], marker=".", label=label)
        cos_ax.plot(xs, [r.cosine for r in rows], marker=".", label=label)
    cross_ax.set(title="‖ΔWᵢΔWⱼᵀ‖ / (‖ΔWᵢ‖‖ΔWⱼ‖)", xlabel="layer (sorted by name)")
    cos_ax.set(title="cosine of the updates", xlabel="layer (sorted by name)")
    cos_ax.axhline(0, color="#999", lw=0.5)
    if groups:
        cross_ax.legend(fontsize=7)
    names = [a.name for a in report.adapters]
    xs = range(len(names))
    sparse_ax.bar([x - 0.2 for x in xs], [a.sparsity for a in report.adapters], width=0.4,
                  label=f"|ΔW| < {report.threshold:g}")
    sparse_ax.bar([x + 0.2 for x in xs], [a.sparsity_relative for a in report.adapters],
                  width=0.4, label=f"|ΔW| < {report.threshold:g}·max")
    sparse_ax.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=7)
    sparse_ax.set(title="sparsity", ylim=(0, 1))
    sparse_ax.legend(fontsize=7)
    return figure


def interference_html(report: InterferenceReport, *, title: str = "LoRA interference") -> str:
    """A self-contained HTML page: the plot (inline PNG), the tables and the definitions."""
    from cxrkit import __version__

    buffer = io.BytesIO()
    plot_interference(report).savefig(buffer, format="png")
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    e = html.escape
    adapters = "".join(
        f"<tr><td>{e(a.name)}</td><td>{a.layers}</td><td>{a.rank}</td><td>{a.norm:.4g}</td>"
        f"<td>{a.sparsity:.1%}</td><td>{a.sparsity_relative:.1%}</td></tr>"
        for a in report.adapters)
    pairs = "".join(
        f"<tr><td>{e(p['first'])} × {e(p['second'])}</td><td>{p['layers']}</td>"
        f"<td>{p['cross_mean']:.4g}</td><td>{p['cross_normalised_mean']:.4f}</td>"
        f"<td>{p['cross_normalised_max']:.4f}</td><td>{p['cosine_mean']:.3f}</td>"
        f"<td>{p['overlap_mean']:.3f}</td>"
        f"<td>{e(p['worst_layer'])}</td></tr>" for p in report.pair_summary())
    definitions = "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>"
                          for k, v in report.definitions.items())
    return (
        f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(title)}"
        "</title><style>body{font-family:system-ui,sans-serif;margin:2em auto;max-width:72em}"
        "table{border-collapse:collapse}td,th{padding:.2em .7em;border-bottom:1px solid #eee}"
        f"</style></head><body><h1>{e(title)}</h1><p>cxrkit {e(__version__)}</p>"
        f"<img alt=\"interference per layer\" src=\"{uri}\">"
        "<h2>Adapters</h2><table><tr><th>adapter</th><th>layers</th><th>rank</th><th>‖ΔW‖</th>"
        f"<th>sparsity</th><th>relative</th></tr>{adapters}</table>"
        "<h2>Pairs</h2><table><tr><th>pair</th><th>layers</th><th>cross (mean)</th>"
        "<th>normalised (mean)</th><th>normalised (max)</th><th>cosine (mean)</th>"
        "<th>overlap (mean)</th>"
        f"<th>worst layer</th></tr>{pairs}</table><h2>Definitions</h2><ul>{definitions}</ul>"
        "</body></html>\n")
