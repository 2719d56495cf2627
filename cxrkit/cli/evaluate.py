"""``cxrkit eval``: measure whatever the records carry — image quality, detection, segmentation."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cxrkit.cli._options import KeepGoing, _Progress, exit_with, iter_inputs
from cxrkit.errors import CheckFailedError, CxrkitError, ExitCode, InputError, OutputError
from cxrkit.io import RECORD_SUFFIXES, TIFF_SUFFIXES, has_suffix
from cxrkit.pipe import Record, read_record_file

if TYPE_CHECKING:
    import numpy as np

    from cxrkit.metrics.records import Summary

log = logging.getLogger("cxrkit.cli")



def evaluate(
    inputs: Annotated[list[str] | None, typer.Argument(
        help="Record files (.jsonl), or images, folders or globs; '-' or none reads stdin "
             "(records, or paths one per line).", show_default=False)] = None,
    json_output: Annotated[bool, typer.Option(
        "--json", help="Print JSON even on a terminal (it is the default when piped).")] = False,
    per_image: Annotated[bool, typer.Option(
        "--per-image", help="Also give one row of measurements per image.")] = False,
    report: Annotated[Path | None, typer.Option(
        "--report", help="Write a self-contained HTML report: example crops (best, median, "
                         "worst PSNR), metric histograms, ROC and FROC curves.",
        show_default=False)] = None,
    fail_under: Annotated[list[str] | None, typer.Option(
        "--fail-under", help="METRIC=VALUE (repeatable): exit 8 when the metric is under VALUE "
                             "or was not measured. Metrics: psnr, ssim, ms_ssim, psnr_fit "
                             "(means), auc, node21, sens@0.25, cpm, iou, dice, image_auc, "
                             "calcified_auc, ...",
        show_default=False)] = None,
    no_reference: Annotated[bool, typer.Option(
        "--no-reference", help="Also measure path alone: noise sigma, mean gradient, and the "
                               "CNR of the record's roi box.")] = False,
    upsample: Annotated[str | None, typer.Option(
        "--upsample", help="Resample path to the reference's size with this kernel (bicubic, "
                           "lanczos, ...) before measuring: the bicubic baseline of a "
                           "low-resolution image.", show_default=False)] = None,
    resize_reference: Annotated[str | None, typer.Option(
        "--resize-reference", help="Resample the reference to path's size instead "
                                   "(antialiased with this kernel).", show_default=False)] = None,
    cpm: Annotated[bool, typer.Option(
        "--cpm", help="Also report the LUNA16 CPM (mean sensitivity at 1/8 to 8 FP per image). "
                      "A second hit on an already matched lesion counts as a false positive "
                      "here, as in the NODE21 rule; LUNA16's own evaluation ignores such "
                      "duplicates, so its CPM can be higher.")] = False,
    mask_threshold: Annotated[float, typer.Option(
        "--mask-threshold", help="Probability at or above which a pred_mask (or "
                                 "prediction_mask) pixel is lesion (a uint8 map of "
                                 "probability x 255 is read as such).")
    ] = 0.5,
    operating_point: Annotated[float, typer.Option(
        "--operating-point", min=0.0, help="FP per image of the breakdown's sens_op: "
                                           "sensitivity at the lowest box score whose FROC "
                                           "FP/image stays at or under it.")] = 0.25,
    detection_threshold: Annotated[float, typer.Option(
        "--detection-threshold", min=0.0, max=1.0,
        help="Box score (and nodule_probability) at or above which the breakdown's sens_score, "
             "the classification's sensitivity/specificity and the report's gallery call a "
             "detection.")] = 0.5,
    gallery: Annotated[int, typer.Option(
        "--gallery", min=0, help="Detection images drawn in the --report (true positives, false "
                                 "positives and misses, the clearest of each).")] = 12,
    bootstrap: Annotated[int, typer.Option(
        "--bootstrap", min=0, help="Bootstrap resamples for the 95% CIs (0: none).")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap CIs.")] = 0,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing --report file.")] = False,
    keep_going: KeepGoing = False,
) -> None:
    """Measure image quality, detection and segmentation from a record stream.

    Reads records (stdin or .jsonl files) and measures what they carry. Image quality: path
    against reference, which must have the same size (else use --upsample or
    --resize-reference). Detection: detections [{x1,y1,x2,y2,score}] against boxes
    [{x1,y1,x2,y2}] (boxes: [] for a negative image; every image must be listed). Segmentation:
    pred_mask against mask. A detector's records (cxrkit detect): nodule_probability against
    label (or non-empty boxes), characteristics_probability against the nodule's
    characteristics, prediction_mask against mask, and a breakdown by nodule size, subtlety and
    characteristic. No-reference measures with --no-reference. Prints a table on a
    terminal and JSON when piped or with --json; infinite values (the PSNR of identical images)
    are written as the string "inf".

    Detector records. classification: AUC of nodule_probability against the image label (label
    when the record has one, else whether boxes is non-empty; records with only a label need no
    boxes and take no part in the FROC), bootstrap CI stratified by label, sensitivity and
    specificity at --detection-threshold. characteristics: per class of
    characteristics_probability (calcified, border_regular = border_irregular 0,
    border_irregular, texture_homogeneous = inhomogeneous 0, texture_inhomogeneous), the AUC
    over positive images whose reference characteristic is known, with n per class, skipped with
    a note where one class is missing. breakdown: per nodule size bin (diameter_mm < 6, 6-10,
    10-20, >= 20), subtlety 1-5, calcified yes/no, border regular/irregular and texture
    homogeneous/inhomogeneous: sens_op = share of the cell's lesions hit at the operating point
    (--operating-point FP per image), sens_score = hit by a box scoring >= --detection-threshold
    (Wilson 95% intervals), auc = image AUC of the cell's positive images against all negative
    images, iou_mean = mean IoU of the cell's masks; every cell gives its n.

    Definitions. PSNR = 10·log10(1/MSE) in dB on [0, 1] images (data range 1). SSIM: Gaussian
    window 11 px, sigma 1.5, K1 0.01, K2 0.03, population statistics, mean over the valid
    region (equals scikit-image structural_similarity with gaussian_weights=True,
    use_sample_covariance=False, data_range=1). MS-SSIM: 5 scales, weights of Wang et al. 2003,
    only where both sides are at least 176 px. psnr_fit: PSNR after the least-squares fit
    a·path + b onto reference. Image measures are averaged over images, with a percentile
    bootstrap 95% CI over images (--bootstrap, --seed). Image AUC: Mann-Whitney, ties count 1/2;
    an image's score is its highest box score, 0 without boxes. FROC: a box hits a lesion when
    IoU > 0.2; each lesion is matched once, by descending score, and duplicate hits count as
    false positives; FP per image divides by all images, negatives included; sensitivity at
    0.125, 0.25 and 0.5 FP per image is read off the FROC polyline through every operating
    point in score order, starting at (0, 0): linear between FP rates, a vertical step where
    several points share one FP rate (the top of the step counts at that rate), the last
    sensitivity held beyond the curve (as MONAI compute_froc_score and LUNA16 computeFROC).
    NODE21 score = 0.75·AUC + 0.25·sens@0.25. CPM (--cpm): mean sensitivity at 1/8 to 8 FP per
    image (LUNA16), with duplicate hits counted as false positives as above (LUNA16's own rule
    ignores them). CIs of AUC
    and NODE21 score: bootstrap over images stratified by label. Segmentation: IoU and Dice per
    image, iou_mean_pos and dice_mean_pos = mean over images with a lesion (MONAI
    ignore_empty); iou_global (micro) and iou_mean_all_empty1 are given too. No-reference:
    noise sigma by Immerkaer's MAD estimator, mean gradient magnitude per px, CNR of the roi box
    against a 5 px ring.

    Example:

        cxrkit degrade hq/ --preset drr-like --scale 2 -o lq/ | cxrkit eval --upsample bicubic

    A detector's records, with a gallery of its hits and misses:

        cxrkit detect cxr/*.png | cxrkit eval --report detect.html --fail-under image_auc=0.8

    Write a report, and gate CI on a metric (exit 8 when under):

        cxrkit eval pairs.jsonl --report report.html --fail-under psnr=30 --fail-under ssim=0.9

        cxrkit eval detections.jsonl --json --fail-under node21=0.7
    """
    from cxrkit.metrics.records import check_thresholds, summarize_records

    thresholds = _thresholds(fail_under or [])
    if report is not None and report.exists() and not overwrite:
        raise OutputError("report exists", path=str(report), hint="pass --overwrite to replace it")
    job = EvalJob(no_reference=no_reference, upsample=_kernel(upsample, "--upsample"),
                  resize_reference=_kernel(resize_reference, "--resize-reference"),
                  mask_threshold=mask_threshold)
    records = list(_read_records(inputs))
    rows, failed = job.run(records, keep_going=keep_going)
    summary = summarize_records(records, rows, seed=seed, n_boot=bootstrap, with_cpm=cpm,
                                mask_threshold=mask_threshold, failed=failed,
                                resample=job.resample, fp_per_image=operating_point,
                                score_threshold=detection_threshold)
    _emit(summary, as_json=json_output or not sys.stdout.isatty(), per_image=per_image)
    if report is not None:
        _write_report(report, summary, job, records, overwrite=overwrite,
                      gallery=gallery, threshold=detection_threshold)
    failures = check_thresholds(summary.metrics, thresholds)
    if failures:
        raise CheckFailedError("; ".join(failures))
    exit_with(ExitCode.PARTIAL if failed else ExitCode.OK)


class EvalJob:
    """Measures one record's images into a row of numbers (the CLI owns the files)."""

    def __init__(self, *, no_reference: bool, upsample: str | None,
                 resize_reference: str | None, mask_threshold: float) -> None:
        if upsample and resize_reference:
            raise typer.BadParameter("give --upsample or --resize-reference, not both",
                                     param_hint="--upsample")
        self.no_reference = no_reference
        self.upsample = upsample
        self.resize_reference = resize_reference
        self.mask_threshold = mask_threshold

    @property
    def resample(self) -> str | None:
        """How path and reference are brought to one size, in words (None: they must agree)."""
        if self.upsample:
            return f"path resampled to the reference's size ({self.upsample})"
        if self.resize_reference:
            return f"reference resampled to path's size ({self.resize_reference})"
        return None

    def run(self, records: list[Record], *, keep_going: bool) -> tuple[list[dict[str, Any]], int]:
        """Rows of every record; failed items are logged and counted under ``keep_going``."""
        rows, failed = [], 0
        with _Progress("images") as advance:
            for record in records:
                try:
                    rows.append(self(record))
                except (CxrkitError, OSError) as exc:
                    if not keep_going:
                        raise
                    failed += 1
                    log.error("%s: %s", record.get("id"), exc)
                advance(failed=False)
        return rows, failed

    def __call__(self, record: Record) -> dict[str, Any]:
        from cxrkit.io import read_radiograph
        from cxrkit.metrics.records import (
            image_quality,
            no_reference_quality,
            segmentation_counts,
        )

        row: dict[str, Any] = {"id": record.get("id"), "path": record.get("path"),
                               "reference": record.get("reference")}
        if record.get("reference"):
            row.update(image_quality(*self.pair(record)))
        if self.no_reference:
            row.update(no_reference_quality(read_radiograph(record["path"]).pixels,
                                            record.get("roi")))
        if not record.get("pred_mask") and record.get("prediction_mask"):
            record = {**record, "pred_mask": record["prediction_mask"]}  # cxrkit detect's name
        if record.get("pred_mask") and record.get("mask"):
            row.update(segmentation_counts(_read_mask(record["pred_mask"]),
                                           _read_mask(record["mask"]), self.mask_threshold))
        return row

    def pair(self, record: Record) -> tuple[np.ndarray, np.ndarray]:
        """``path`` and ``reference`` pixels of one size, ``(H, W)`` float32 in [0, 1].

        Raises:
            InputError: a non-display image, or sizes that differ without a resampling option.
        """
        from cxrkit.degrade.operators import resample
        from cxrkit.io import read_radiograph

        if record.get("kind", "display") != "display":
            raise InputError(f"image quality needs display images in [0, 1], got kind "
                             f"'{record['kind']}'", path=str(record.get("id")))
        image = read_radiograph(record["path"]).pixels
        reference = read_radiograph(record["reference"]).pixels
        if image.shape != reference.shape:
            if self.upsample:
                image = resample(image, reference.shape, self.upsample)
            elif self.resize_reference:
                reference = resample(reference, image.shape, self.resize_reference)
            else:
                raise _size_error(image.shape, reference.shape, str(record.get("id")))
        return image, reference


def _size_error(shape: tuple[int, ...], ref_shape: tuple[int, ...], item: str) -> InputError:
    """A teaching error for an image and a reference of different sizes."""
    factor = round(ref_shape[0] / shape[0])
    sizes = f"{shape[0]}×{shape[1]} vs {ref_shape[0]}×{ref_shape[1]}"
    if factor > 1 and (ref_shape[0] // factor, ref_shape[1] // factor) == tuple(shape):
        return InputError(f"the reference is {factor}× larger than the image ({sizes})", path=item,
                          hint="enhance first, or use --upsample bicubic (the bicubic baseline) "
                               "or --resize-reference bicubic")
    return InputError(f"image and reference differ in size ({sizes})", path=item,
                      hint="use --upsample KERNEL or --resize-reference KERNEL to compare anyway")


def _read_mask(path: str) -> np.ndarray:
    """A mask file as ``(H, W)``: a TIFF stack is reduced to the union (max) of its masks; a
    uint8 map of probability × 255 that kept its 0-255 values (cxrkit reads a uint8 PNG marked
    ``kind: mask`` as is: the form ``cxrkit detect`` writes) is scaled to [0, 1] (a lesion
    mask's nonzero pixels stay nonzero)."""
    from cxrkit.io import read_radiograph, read_stack

    if has_suffix(path, TIFF_SUFFIXES):
        return read_stack(path)[0].max(axis=0)
    pixels = read_radiograph(path).pixels
    return pixels / 255.0 if pixels.max() > 1.0 else pixels


def _read_records(inputs: list[str] | None) -> Iterator[Record]:
    """Records from .jsonl files; other arguments (or stdin) as :func:`iter_inputs` reads them."""
    args = inputs or []
    files = [a for a in args if a.lower().endswith(RECORD_SUFFIXES)]
    for name in files:
        yield from read_record_file(name)
    others = [a for a in args if a not in files]
    if others or not files:
        yield from iter_inputs(others)


def _kernel(name: str | None, option: str) -> str | None:
    """A resampling kernel name, checked against the registry."""
    if name is None:
        return None
    from cxrkit.degrade.operators import RESIZE_KERNELS

    if name not in RESIZE_KERNELS:
        raise typer.BadParameter(f"'{name}' is not one of {', '.join(RESIZE_KERNELS)}",
                                 param_hint=option)
    return name


def _thresholds(items: list[str]) -> dict[str, float]:
    """``["psnr=30", …]`` → ``{"psnr": 30.0}``, names checked against the gates."""
    from cxrkit.metrics.records import GATES

    thresholds = {}
    for text in items:
        name, sep, value = text.partition("=")
        name = name.strip().lower()
        try:
            thresholds[name] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise typer.BadParameter(f"'{text}' is not METRIC=VALUE", param_hint="--fail-under")
        if name not in GATES:
            raise typer.BadParameter(f"unknown metric '{name}'; use one of {', '.join(GATES)}",
                                     param_hint="--fail-under")
    return thresholds


def _emit(summary: Summary, *, as_json: bool, per_image: bool) -> None:
    """The summary on stdout: JSON, or a table on a terminal."""
    from cxrkit.metrics.records import jsonable

    data = dict(summary.metrics)
    if per_image:
        data["per_image"] = summary.rows
    if as_json:
        sys.stdout.write(json.dumps(jsonable(data), indent=2, ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return
    from rich.console import Console

    console = Console(highlight=False)
    console.print(_table(summary.metrics))
    if "classification" in summary.metrics or "characteristics" in summary.metrics:
        console.print(_detector_table(summary.metrics))
    if per_image:
        console.print(_rows_table(summary.rows))


def _table(metrics: dict[str, Any]) -> Any:
    """The summary as a rich table: one line per measure."""
    from rich.table import Table

    table = Table(title=f"cxrkit eval: {metrics['n_records']} records"
                        + (f", {metrics['n_failed']} failed" if metrics["n_failed"] else ""))
    for column in ("block", "measure", "value", "95% CI", "n"):
        table.add_column(column, justify="left" if column in ("block", "measure") else "right")
    for block in ("image_quality", "no_reference"):
        for name, stats in metrics.get(block, {}).items():
            if isinstance(stats, dict):
                table.add_row(block, name, _fmt(stats["mean"]), _fmt_ci(stats["ci95"]),
                              str(stats["n"]))
    for block in ("detection", "segmentation"):
        values = metrics.get(block, {})
        for name, value in values.items():
            if isinstance(value, float) and name != "threshold":
                table.add_row(block, name, _fmt(value), _fmt_ci(values.get(f"{name}_ci95")),
                              str(values.get("n_images", "")))
    return table


def _rows_table(rows: list[dict[str, Any]]) -> Any:
    """Per-image measurements as a rich table."""
    from rich.table import Table

    names = [k for k in rows[0] if k not in ("id", "path", "reference")] if rows else []
    table = Table(title="per image")
    for column in ("id", *names):
        table.add_column(column, justify="left" if column == "id" else "right")
    for row in rows:
        table.add_row(str(row["id"]), *(_fmt(row.get(k)) for k in names))
    return table


def _detector_table(metrics: dict[str, Any]) -> Any:
    """The classification and per-characteristic AUCs of a detector's records as a rich table
    (the breakdown is in the JSON and the report)."""
    from rich.table import Table

    table = Table(title="detector")
    for column in ("block", "measure", "value", "95% CI", "n"):
        table.add_column(column, justify="left" if column in ("block", "measure") else "right")
    classification = metrics.get("classification")
    if classification:
        for name in ("auc", "sensitivity", "specificity"):
            table.add_row("classification", name, _fmt(classification[name]),
                          _fmt_ci(classification.get(f"{name}_ci95")),
                          str(classification["n_images"]))
    for name, entry in metrics.get("characteristics", {}).items():
        if isinstance(entry, dict):
            table.add_row("characteristics", f"{name} auc", _fmt(entry["auc"]),
                          _fmt_ci(entry["auc_ci95"]),
                          f"{entry['n_positive']}+{entry['n_negative']}")
    return table


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "inf" if value == float("inf") else f"{value:.4g}"
    return str(value)


def _fmt_ci(ci: list[float] | None) -> str:
    return f"{ci[0]:.4g} – {ci[1]:.4g}" if ci else ""


def _write_report(path: Path, summary: Summary, job: EvalJob, records: list[Record], *,
                  overwrite: bool, gallery: int = 0, threshold: float = 0.5) -> None:
    """Read the example images again and write the HTML report atomically."""
    from cxrkit.pipe import atomic_path
    from cxrkit.report import Example, build_report, pick_examples
    from cxrkit.report_detection import detection_sections

    by_key = {(r.get("id"), r.get("path")): r for r in records}
    examples = [Example(label, row, *job.pair(by_key[(row["id"], row["path"])]))
                for label, row in pick_examples(summary.rows)]
    shown = _gallery(records, gallery, threshold)
    sections = detection_sections(summary, shown, threshold=threshold,
                                  mask_threshold=job.mask_threshold)
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(build_report(summary, examples, sections=sections), encoding="utf-8")


def _gallery(records: list[Record], count: int, threshold: float) -> list[Any]:
    """The gallery's images read from disk (an image that cannot be read is left out, with a
    warning)."""
    from cxrkit.io import read_radiograph
    from cxrkit.report_detection import GalleryImage, pick_gallery

    shown = []
    for outcome, record in pick_gallery(records, count, threshold):
        name = record.get("path") or record.get("source")
        try:
            image = read_radiograph(name).pixels
            files = (record.get("mask"), record.get("prediction_mask") or record.get("pred_mask"))
            masks = [_read_mask(name) if name else None for name in files]
        except (CxrkitError, OSError) as exc:
            log.warning("report gallery: %s: %s", record.get("id"), exc)
            continue
        shown.append(GalleryImage(outcome, record, image, *masks))
    return shown
