"""`cxrkit eval` end to end: image quality, detection, segmentation, gates, reports, real data."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cxrkit.cli import app
from cxrkit.io import Radiograph, write_radiograph, write_stack
from tests.test_cli import run_cli

runner = CliRunner()

# The golden toy case of ecosystem.md §3.3 as records (boxes x1, y1, x2, y2 in px).
TOY = [
    {"id": "A", "path": "A.png", "boxes": [[10, 10, 30, 30]],
     "detections": [{"x1": 12, "y1": 12, "x2": 30, "y2": 30, "score": 0.9},
                    {"x1": 13, "y1": 13, "x2": 31, "y2": 31, "score": 0.8},
                    {"x1": 60, "y1": 60, "x2": 70, "y2": 70, "score": 0.3}]},
    {"id": "B", "path": "B.png",
     "boxes": [{"x1": 40, "y1": 40, "x2": 60, "y2": 60}, {"x1": 5, "y1": 5, "x2": 15, "y2": 15}],
     "detections": [{"x1": 41, "y1": 41, "x2": 59, "y2": 59, "score": 0.6}]},
    {"id": "C", "path": "C.png", "boxes": [],
     "detections": [{"x1": 0, "y1": 0, "x2": 10, "y2": 10, "score": 0.7}]},
    {"id": "D", "path": "D.png", "boxes": [], "detections": []},
]


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def strict_json(text: str | bytes) -> dict:
    """Parse JSON, refusing the non-standard NaN/Infinity tokens."""
    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


Runner = Callable[..., subprocess.CompletedProcess[bytes]]


@pytest.fixture
def run_main(capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch
             ) -> Runner:
    """The real entry point (with its exception → exit code mapping) in-process: faster than
    :func:`run_cli`, which is kept for the true pipes."""
    from cxrkit.cli import main

    def run(*args: str, stdin: str | bytes = "") -> subprocess.CompletedProcess[bytes]:
        data = stdin.encode() if isinstance(stdin, str) else stdin
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        capsysbinary.readouterr()
        with pytest.raises(SystemExit) as exited:
            main(list(args))
        out, err = capsysbinary.readouterr()
        return subprocess.CompletedProcess(args, int(exited.value.code or 0), out, err)

    return run


def invoke(*args: str, stdin: str | None = None) -> tuple[int, dict | None, str]:
    """``eval`` in-process: exit code, parsed JSON summary (when it ran), exception text."""
    result = runner.invoke(app, ["eval", *args], input=stdin)
    error = f"{type(result.exception).__name__}: {result.exception}" if result.exception else ""
    return result.exit_code, strict_json(result.stdout) if result.exit_code == 0 else None, error


@pytest.fixture
def pair(radiograph_path: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A radiograph and a noisy copy of it (same size), both TIFF."""
    from cxrkit.io import read_radiograph

    clean = read_radiograph(radiograph_path).pixels
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 0.02, clean.shape), 0, 1)
    path = tmp_path / "noisy.tiff"
    write_radiograph(path, Radiograph(noisy.astype(np.float32), None, "display"))
    return path, radiograph_path


def test_help_states_the_definitions() -> None:
    result = runner.invoke(app, ["eval", "--help"])
    assert result.exit_code == 0 and "Example" in result.output
    text = " ".join(result.output.split())
    for phrase in ("data range 1", "window 11", "sigma 1.5", "ties count 1/2", "IoU > 0.2",
                   "0.75·AUC + 0.25·sens@0.25", "mean over images with a lesion",
                   "FROC polyline", "vertical step", "LUNA16's own evaluation ignores"):
        assert phrase in text, phrase


def test_degrade_pipe_eval_json(radiograph_path: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "2"}
    command = [sys.executable, "-m", "cxrkit"]
    with subprocess.Popen([*command, "degrade", str(radiograph_path), "--preset", "bicubic",
                           "--scale", "2", "-o", str(tmp_path / "lq")], stdout=subprocess.PIPE,
                          env=env) as degrade:
        evaluated = subprocess.run([*command, "eval", "--upsample", "bicubic", "--json",
                                    "--per-image"], stdin=degrade.stdout, capture_output=True,
                                   env=env, timeout=300)
    assert degrade.returncode == 0 and evaluated.returncode == 0, evaluated.stderr.decode()
    summary = strict_json(evaluated.stdout)
    quality = summary["image_quality"]
    assert 40 < quality["psnr"]["mean"] < 80  # a smooth image survives a ×2 round trip well
    assert 0.99 < quality["ssim"]["mean"] < 1
    assert "ms_ssim" not in quality and quality["psnr"]["n"] == 1  # 64 px: too small for it
    assert quality["psnr"]["ci95"] is None  # no interval from one image
    assert "bicubic" in quality["resample"] and "data range 1" in quality["definition"]
    (row,) = summary["per_image"]
    assert row["id"] == "cxr" and row["psnr"] == pytest.approx(quality["psnr"]["mean"])


def test_identical_images_give_infinite_psnr_as_a_string(radiograph_path: Path) -> None:
    line = jsonl([{"id": "same", "path": str(radiograph_path),
                   "reference": str(radiograph_path)}])
    code, summary, error = invoke("--per-image", "--fail-under", "psnr=100", stdin=line)
    assert code == 0, error
    stats = summary["image_quality"]["psnr"]
    assert stats["mean"] == "inf" and stats["n_inf"] == 1 and stats["ci95"] is None
    assert summary["per_image"][0]["psnr"] == "inf" and float(stats["mean"]) == math.inf
    assert summary["image_quality"]["ssim"]["mean"] == pytest.approx(1.0)


def test_noisy_copy_psnr_is_the_analytic_value(pair: tuple[Path, Path]) -> None:
    from cxrkit.io import read_radiograph

    noisy, clean = pair
    x, ref = read_radiograph(noisy).pixels, read_radiograph(clean).pixels
    expected = 10 * math.log10(1 / np.mean((x.astype(np.float64) - ref) ** 2))
    code, summary, error = invoke(stdin=jsonl([{"path": str(noisy), "reference": str(clean)}]))
    assert code == 0, error
    assert summary["image_quality"]["psnr"]["mean"] == pytest.approx(expected, rel=1e-9)
    assert summary["image_quality"]["psnr_fit"]["mean"] >= expected - 0.1


def test_size_mismatch_teaches_and_resize_reference_fixes(radiograph_path: Path, tmp_path: Path,
                                                          run_main: Runner) -> None:
    small = tmp_path / "small.tiff"
    write_radiograph(small, Radiograph(np.full((32, 32), 0.4, np.float32), None, "display"))
    line = jsonl([{"id": "s", "path": str(small), "reference": str(radiograph_path)}])
    result = run_main("eval", "--json", stdin=line)
    message = result.stderr.decode()
    assert result.returncode == 1 and result.stdout == b""
    assert "2× larger" in message and "--upsample bicubic" in message
    assert "--resize-reference bicubic" in message and "enhance first" in message
    code, summary, error = invoke("--resize-reference", "area", stdin=line)
    assert code == 0, error
    assert "reference resampled" in summary["image_quality"]["resample"]
    assert runner.invoke(app, ["eval", "--upsample", "sinc"], input=line).exit_code == 2
    both = runner.invoke(app, ["eval", "--upsample", "bicubic", "--resize-reference", "area"],
                         input=line)
    assert both.exit_code == 2


def test_fail_under_exit_8_names_metric_value_and_threshold(pair: tuple[Path, Path],
                                                            run_main: Runner) -> None:
    line = jsonl([{"path": str(pair[0]), "reference": str(pair[1])}])
    failed = run_main("eval", "--json", "--fail-under", "psnr=99", "--fail-under", "ssim=0.1",
                     stdin=line)
    assert failed.returncode == 8
    assert strict_json(failed.stdout)["image_quality"]["psnr"]["mean"] < 99  # output first
    (message,) = failed.stderr.decode().strip().splitlines()
    assert message.startswith("cxrkit eval: error: psnr = ") and "threshold 99" in message
    assert "ssim" not in message  # it passed
    assert run_main("eval", "--json", "--fail-under", "psnr=20", stdin=line).returncode == 0
    absent = run_main("eval", "--json", "--fail-under", "node21=0.5", stdin=line)
    assert absent.returncode == 8 and b"node21 was not measured" in absent.stderr
    for bad in ("nonsense=1", "psnr", "psnr=high"):
        assert runner.invoke(app, ["eval", "--fail-under", bad], input=line).exit_code == 2


def test_golden_toy_detection_from_records() -> None:
    code, summary, error = invoke("--cpm", "--seed", "3", stdin=jsonl(TOY))
    assert code == 0, error
    det = summary["detection"]
    assert det["auc"] == pytest.approx(0.75)
    assert det["sens@0.125"] == pytest.approx(1 / 3) and det["sens@0.25"] == pytest.approx(1 / 3)
    assert det["sens@0.5"] == pytest.approx(2 / 3)
    assert det["node21_score"] == pytest.approx(0.6458, abs=1e-4)
    assert det["cpm"] == pytest.approx((2 / 3 + 5 * 2 / 3) / 7)
    assert (det["n_images"], det["n_lesions"], det["hit"], det["duplicates"]) == (4, 3, "iou>0.2",
                                                                                  "fp")
    assert 0 <= det["auc_ci95"][0] <= det["auc_ci95"][1] <= 1
    assert "image_quality" not in summary
    again = invoke("--cpm", "--seed", "3", stdin=jsonl(TOY))[1]
    assert again == summary  # the bootstrap is seeded
    assert "cpm" not in invoke(stdin=jsonl(TOY))[1]["detection"]  # CPM only on request


def test_detection_needs_truth_for_every_prediction(run_main: Runner) -> None:
    records = [*TOY[:3], {"id": "D", "path": "D.png", "detections": []}]
    result = run_main("eval", "--json", stdin=jsonl(records))
    assert result.returncode == 1 and b"no 'boxes'" in result.stderr


def test_fail_under_on_detection_gates() -> None:
    result = run_cli("eval", "--json", "--fail-under", "node21=0.7", stdin=jsonl(TOY))
    assert result.returncode == 8
    assert b"node21 = 0.6458 is under the threshold 0.7" in result.stderr


def test_segmentation_from_mask_files(tmp_path: Path) -> None:
    gt_a = np.zeros((16, 16), np.float32)
    gt_a[0, :2] = 1
    pred_b, gt_b = np.zeros((16, 16), np.float32), gt_a.copy()
    pred_b[3, :2] = 0.9  # disjoint from the lesion
    empty = np.zeros((16, 16), np.float32)
    records = []
    for name, pred, gt in (("a", gt_a, gt_a), ("b", pred_b, gt_b), ("c", empty, empty)):
        write_stack(tmp_path / f"{name}_gt.tiff", gt[None], None, {})  # a one-mask stack
        write_radiograph(tmp_path / f"{name}_pred.png", Radiograph(pred, None, "mask"))
        records.append({"id": name, "path": "x.png", "mask": str(tmp_path / f"{name}_gt.tiff"),
                        "pred_mask": str(tmp_path / f"{name}_pred.png")})
    code, summary, error = invoke("--fail-under", "iou=0.5", stdin=jsonl(records))
    assert code == 0, error
    seg = summary["segmentation"]
    assert seg["iou_mean_pos"] == pytest.approx(0.5) and seg["dice_mean_pos"] == pytest.approx(0.5)
    assert seg["iou_global"] == pytest.approx(1 / 3)
    assert seg["iou_mean_all_empty1"] == pytest.approx(2 / 3)
    assert "images with a lesion" in seg["convention"]


def test_no_reference_measures(tmp_path: Path, run_main: Runner) -> None:
    rng = np.random.default_rng(2)
    image = np.full((64, 64), 0.5) + rng.normal(0, 0.01, (64, 64))
    image[20:40, 20:40] += 0.1
    path = tmp_path / "flat.tiff"
    write_radiograph(path, Radiograph(image.astype(np.float32), None, "display"))
    line = jsonl([{"path": str(path), "roi": [20, 20, 40, 40]}])
    code, summary, error = invoke("--no-reference", stdin=line)
    assert code == 0, error
    block = summary["no_reference"]
    assert block["noise_sigma"]["mean"] == pytest.approx(0.01, rel=0.2)
    assert block["cnr"]["mean"] == pytest.approx(10, rel=0.25)
    assert block["mean_gradient"]["mean"] > 0
    nothing = run_main("eval", "--json", stdin=line)
    assert nothing.returncode == 1 and b"nothing to measure" in nothing.stderr


def test_keep_going_counts_failures_and_exits_3(pair: tuple[Path, Path], tmp_path: Path,
                                                run_main: Runner) -> None:
    lines = jsonl([{"id": "ok", "path": str(pair[0]), "reference": str(pair[1])},
                   {"id": "bad", "path": str(pair[0]), "reference": str(tmp_path / "no.tiff")}])
    stop = run_main("eval", "--json", stdin=lines)
    assert stop.returncode == 1 and stop.stdout == b""
    (line,) = stop.stderr.decode().strip().splitlines()
    assert line.startswith("cxrkit eval: error: no such file")
    going = run_main("eval", "--json", "--keep-going", stdin=lines)
    assert going.returncode == 3
    summary = strict_json(going.stdout)
    assert summary["n_failed"] == 1 and summary["image_quality"]["psnr"]["n"] == 1


def test_records_file_argument_and_table_output(pair: tuple[Path, Path], tmp_path: Path) -> None:
    from rich.console import Console

    from cxrkit.cli.evaluate import _rows_table, _table
    from cxrkit.metrics.records import jsonable

    path = tmp_path / "pairs.jsonl"
    path.write_text(jsonl([{"id": "n", "path": str(pair[0]), "reference": str(pair[1])},
                           {"id": "m", "path": str(pair[1]), "reference": str(pair[0])}]))
    code, summary, error = invoke(str(path), "--bootstrap", "0")
    assert code == 0, error
    assert summary["image_quality"]["psnr"]["n"] == 2
    assert summary["image_quality"]["psnr"]["ci95"] is None  # no resamples, no CI
    code, summary, error = invoke(str(path), "--bootstrap", "20")
    low, high = summary["image_quality"]["psnr"]["ci95"]
    assert low <= summary["image_quality"]["psnr"]["mean"] <= high
    assert invoke(str(tmp_path / "missing.jsonl"))[0] == 1
    # On a terminal the summary is a table.
    buffer = io.StringIO()
    console = Console(file=buffer, width=120)
    console.print(_table(summary))
    console.print(_rows_table([{"id": "n", "psnr": math.inf, "ssim": 0.5}]))
    text = buffer.getvalue()
    assert "image_quality" in text and "psnr" in text and "inf" in text
    assert jsonable({"a": [math.inf, -math.inf, math.nan, np.float32(1.5)]}) == {
        "a": ["inf", "-inf", None, 1.5]}


def test_report_is_self_contained(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    lines = jsonl([{"id": "n", "path": str(pair[0]), "reference": str(pair[1])},
                   {"id": "same", "path": str(pair[1]), "reference": str(pair[1])}, *TOY])
    report = tmp_path / "report.html"
    code, _, error = invoke("--report", str(report), "--bootstrap", "50", stdin=lines)
    assert code == 0, error
    text = report.read_text()
    assert "http://" not in text and "https://" not in text and "<link" not in text
    assert "<script" not in text
    sources = [s.split('"')[0] for s in text.split('src="')[1:]]
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    # 2 examples × 4 panels, the histograms, the ROC/FROC figure
    assert len(sources) == 2 * 4 + 2
    for phrase in ("ROC", "FROC", "best", "worst", "Distributions", "node21_score"):
        assert phrase in text
    assert runner.invoke(app, ["eval", "--report", str(report)], input=lines).exit_code == 1
    assert invoke("--report", str(report), "--overwrite", stdin=lines)[0] == 0


@pytest.mark.realdata
def test_real_radiographs_bicubic_and_drr_like(shared_data: Path, tmp_path: Path,
                                               run_main: Runner) -> None:
    images = sorted((shared_data / "nih-cxr14" / "images").glob("*.png"))[:2]
    expected = {"bicubic": ((40.0, 44.0), (0.96, 1.0)), "drr-like": ((21.0, 25.0), (0.85, 0.95))}
    for preset, (psnr_range, ssim_range) in expected.items():
        degraded = run_main("degrade", *map(str, images), "--preset", preset, "--scale", "2",
                           "-o", str(tmp_path / preset))
        assert degraded.returncode == 0, degraded.stderr.decode()
        result = run_main("eval", "--upsample", "bicubic", "--json", stdin=degraded.stdout)
        assert result.returncode == 0, result.stderr.decode()
        quality = strict_json(result.stdout)["image_quality"]
        assert psnr_range[0] < quality["psnr"]["mean"] < psnr_range[1], (preset, quality)
        assert ssim_range[0] < quality["ssim"]["mean"] < ssim_range[1], (preset, quality)
        assert quality["ms_ssim"]["n"] == 2  # 1024² allows MS-SSIM
