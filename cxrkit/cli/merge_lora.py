"""``cxrkit merge-lora``: merge LoRA adapter files into one adapter file (and the interference
report that ``cxrkit eval`` also gives for adapter files)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cxrkit.cli._groups import device_name
from cxrkit.cli._options import command_line
from cxrkit.errors import InputError, OutputError

if TYPE_CHECKING:
    from cxrkit.lora.files import Adapter
    from cxrkit.lora.report import InterferenceReport

METHOD_NAMES = ("linear", "cat", "svd", "ties", "dare_linear", "dare_ties", "magnitude", "do")


def parse_adapter_arg(text: str) -> tuple[Path, float]:
    """``PATH[:WEIGHT]`` → ``(path, weight)``; a suffix after the last ``:`` that is no number
    belongs to the path."""
    path, sep, tail = text.rpartition(":")
    if sep and path:
        try:
            weight = float(tail)
        except ValueError:
            return Path(text), 1.0
        if not math.isfinite(weight):
            raise typer.BadParameter(f"'{text}': the weight must be finite",
                                     param_hint="ADAPTERS")
        return Path(path), weight
    return Path(text), 1.0


def merge_lora(
    adapters: Annotated[list[str], typer.Argument(
        help="Adapter files (.safetensors), each optionally with :WEIGHT (default 1).",
        show_default=False)],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="The merged adapter file to write (.safetensors).",
        show_default=False)],
    method: Annotated[str, typer.Option(
        "--method", "-m", help="linear (exact weighted sum at its numerical rank), cat (exact, "
                               "the sources' factors stacked), svd (best rank-k of the sum), "
                               "ties, dare_linear, dare_ties, magnitude (pruning merges), do "
                               "(orthogonalised, after DO-Merging).")] = "linear",
    rank: Annotated[int | None, typer.Option(
        "--rank", "-r", min=1, max=4096,
        help="Rank of the non-exact merges. Default: the largest source rank.",
        show_default=False)] = None,
    density: Annotated[float, typer.Option(
        "--density", min=0.0, max=1.0,
        help="ties/dare/magnitude: the fraction of each update's entries kept.")] = 0.5,
    majority: Annotated[str, typer.Option(
        "--majority", help="ties/dare_ties sign election: total (sign of the sum) or "
                           "frequency (sign of the vote).")] = "total",
    seed: Annotated[int, typer.Option(
        "--seed", help="Seed of dare's random drops (recorded).")] = 0,
    report: Annotated[bool, typer.Option(
        "--report", help="Print the interference report of the inputs and the result on "
                         "stderr and add its summary to the output record.")] = False,
    report_html: Annotated[Path | None, typer.Option(
        "--report-html", help="Write the interference report with its plot as a "
                              "self-contained HTML page.", show_default=False)] = None,
    device: Annotated[str, typer.Option(
        "--device", parser=device_name, metavar="DEVICE",
        help="Where the arithmetic runs: auto (CUDA when present, else the CPU), cpu, cuda or "
             "cuda:N.")] = "cpu",
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace existing output files.")] = False,
) -> None:
    """Merge LoRA adapters into one adapter file that synth and peft load like any other.

    Every merge is tensor arithmetic on each layer's (A, B) factors, with each source's update
    ΔWi = si·Bi·Ai at peft's scale si (lora_alpha/r, or lora_alpha/sqrt(r) with rsLoRA) and the
    weight wi given after a colon. linear and cat are exact: the result's update equals
    Σ wi·ΔWi to float precision (cat stacks the factors, rank Σ ri, as peft's cat; linear
    re-factors the same sum at its numerical rank). peft's own "linear" adds the factors instead
    and is far from the sum; it is not offered. svd keeps the best rank-k part of the sum; ties,
    dare_linear, dare_ties and magnitude prune each full update (keeping --density of its
    entries) and combine them as peft's ties/dare/magnitude_prune do, then keep rank k; do
    nudges the sources' factors towards orthogonality, merges per-row magnitudes and directions
    apart, then keeps rank k. The result stores its scale in its factors (scale 1). All sources
    must record the same backbone hash.

    Writes the merged file (never over an existing one without --overwrite) and prints one JSON
    record on stdout: path, sha256, method, weights, the sources' hashes and the relative error
    of the result against the exact weighted sum (0 for linear and cat up to rounding).
    --report prints, for the inputs and the result, per adapter pair ‖ΔWiΔWjᵀ‖F (raw and
    divided by ‖ΔWi‖F‖ΔWj‖F) and the cosine of the updates, averaged over layers, and each
    adapter's sparsity (the fraction of ΔW entries with |ΔW| < 0.01, and < 0.01·max|ΔW|).

    Example:

        cxrkit merge-lora calcified.safetensors irregular.safetensors:0.8 -o both.safetensors

    Compress to rank 8 with TIES and look at the interference:

        cxrkit merge-lora a.safetensors b.safetensors -m ties -r 8 -o ab.safetensors --report
    """
    from cxrkit.device import resolve_device
    from cxrkit.files import atomic_path
    from cxrkit.lora.files import load_adapter, save_adapter
    from cxrkit.lora.merge import merge_adapters, relative_error, weighted_sum
    from cxrkit.pipe import RecordWriter, provenance, stem_of

    if method not in METHOD_NAMES:
        raise typer.BadParameter(f"'{method}' is not one of {', '.join(METHOD_NAMES)}",
                                 param_hint="--method")
    if rank is not None and method in ("linear", "cat"):
        raise typer.BadParameter(f"{method} is exact and keeps its rank (use -m svd for rank "
                                 f"{rank})", param_hint="--rank")
    if majority not in ("total", "frequency"):
        raise typer.BadParameter(f"'{majority}' is not total or frequency",
                                 param_hint="--majority")
    if out.suffix != ".safetensors":
        raise typer.BadParameter(f"'{out}' must end in .safetensors", param_hint="--out")
    if not overwrite:
        for path in (out, report_html):
            if path is not None and (path.exists() or path.is_symlink()):
                raise OutputError("output exists", path=str(path),
                                  hint="pass --overwrite to replace it")
    parsed = [parse_adapter_arg(a) for a in adapters]
    if any(p.resolve() == out.resolve() for p, _ in parsed):
        raise OutputError("the output would replace an input", path=str(out),
                          hint="write to another -o")
    sources = [load_adapter(p) for p, _ in parsed]
    weights = [w for _, w in parsed]
    merged = merge_adapters(sources, weights, method=method, rank=rank, density=density,
                            seed=seed, majority=majority, device=resolve_device(device))
    merged.meta["command"] = command_line()
    merged.meta["sources"] = [dict(s, path=str(p)) for s, (p, _) in
                              zip(merged.meta["sources"], parsed, strict=True)]
    error = relative_error(merged, weighted_sum(sources, weights))
    merged.meta["relative_error"] = error
    digest = save_adapter(out, merged, overwrite=overwrite)
    options = {"method": method, "weights": weights, **merged.meta["options"]}
    entry = provenance("merge-lora", options, seed=seed if "seed" in merged.meta["options"]
                       else None, inputs={str(p): s.sha256 or "" for (p, _), s in
                                          zip(parsed, sources, strict=True)})
    entry.update(sha256=digest, relative_error=error,
                 rank=max(layer.rank for layer in merged.layers.values()),
                 backbone_sha256=merged.meta.get("backbone_sha256"))
    record: dict[str, Any] = {"id": stem_of(out), "path": str(out), "merge_lora": entry}
    if report or report_html is not None:
        names = [*_names([p for p, _ in parsed]), stem_of(out) + " (merged)"]
        result = _report([*sources, merged], names)
        if report:
            from cxrkit.lora.report import format_table

            sys.stderr.write(format_table(result) + "\n")
            summary = result.records()
            record["merge_lora"]["interference"] = {"adapters": summary["adapters"],
                                                    "pairs": summary["pairs"]}
        if report_html is not None:
            from cxrkit.lora.report import interference_html

            with atomic_path(report_html, overwrite=overwrite) as tmp:
                tmp.write_text(interference_html(result, title=f"merge-lora: {out.name}"))
    RecordWriter().write(record)


def _names(paths: list[Path]) -> list[str]:
    """Short unique names of adapter files (stems; the path where stems repeat)."""
    stems = [p.stem for p in paths]
    return [s if stems.count(s) == 1 else str(p) for s, p in zip(stems, paths, strict=True)]


def _report(adapters: list[Adapter], names: list[str]) -> InterferenceReport:
    from cxrkit.lora.report import interference_report

    return interference_report(adapters, names)


def is_adapter_list(inputs: list[str] | None) -> bool:
    """Whether ``cxrkit eval`` was given LoRA adapter files (every input a .safetensors)."""
    return bool(inputs) and all(str(a).lower().endswith(".safetensors") for a in inputs or [])


def report_adapters(inputs: list[str], *, as_json: bool, html: Path | None,
                    overwrite: bool) -> None:
    """``cxrkit eval a.safetensors b.safetensors``: the interference report of the adapters,
    a table on a terminal, JSON when piped or with --json; ``html``: the page with its plot."""
    from cxrkit.files import atomic_path
    from cxrkit.lora.files import load_adapter

    paths = [Path(a) for a in inputs]
    if html is not None and html.exists() and not overwrite:
        raise OutputError("report exists", path=str(html), hint="pass --overwrite to replace it")
    if not paths:
        raise InputError("no adapter files")
    result = _report([load_adapter(p) for p in paths], _names(paths))
    if as_json:
        sys.stdout.write(json.dumps(result.records(), indent=2, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    else:
        from cxrkit.lora.report import format_table

        sys.stdout.write(format_table(result) + "\n")
    if html is not None:
        from cxrkit.lora.report import interference_html

        with atomic_path(html, overwrite=overwrite) as tmp:
            tmp.write_text(interference_html(result))
