"""`cxrkit synth` end to end: records eval can read, files, seeds, resume, stdin, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cxrkit.cli import app
from cxrkit.io import Radiograph, read_meta, read_radiograph, write_radiograph
from cxrkit.nodules import CALCIFICATIONS, INTERNALS, SHAPES, TEXTURES
from cxrkit.synth import ENGINES, SUBTLETY_CONTRAST
from cxrkit.volume import Volume, write_volume
from tests.test_cli import run_cli
from tests.test_nodules import make_luna_dir

runner = CliRunner()
SMALL = ("--size", "40", "--pixel-mm", "2.5")


def records(stdout: str | bytes) -> list[dict]:
    text = stdout.decode() if isinstance(stdout, bytes) else stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def invoke(*args: str, stdin: str | None = None) -> tuple[int, list[dict], str]:
    result = runner.invoke(app, ["synth", *args], input=stdin)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, records(result.stdout), result.stderr


@pytest.fixture
def chest_ct(tmp_path: Path) -> tuple[Path, Path]:
    """A 64³ 1 mm chest phantom (NIfTI) and its lobe label volume with structures.csv."""
    z, y, x = np.mgrid[0:64, 0:64, 0:64].astype(np.float32) - 31.5
    right = ((x + 14) / 11) ** 2 + (y / 15) ** 2 + (z / 24) ** 2 <= 1
    left = ((x - 14) / 10) ** 2 + (y / 14) ** 2 + (z / 22) ** 2 <= 1
    hu = np.where(right | left, -850.0, 40.0).astype(np.float32)
    hu[(np.abs(x) > 29) | (np.abs(y) > 27)] = -1000.0
    origin = (-31.5, -31.5, -31.5)
    write_volume(Volume(hu, (1.0, 1.0, 1.0), origin), tmp_path / "chest.nii.gz")
    labels = np.where(right, 14, np.where(left, 11, 0)).astype(np.float32)
    write_volume(Volume(labels, (1.0, 1.0, 1.0), origin), tmp_path / "lobes.nii.gz")
    with open(tmp_path / "lobes.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["id", "structure"], [11, "lung_lower_lobe_left"],
                                  [14, "lung_lower_lobe_right"]])
    return tmp_path / "chest.nii.gz", tmp_path / "lobes.nii.gz"


@pytest.fixture
def cxr(tmp_path: Path) -> Path:
    """A 128² synthetic PA radiograph (display PNG): two dark lungs in a bright body."""
    yy, xx = np.mgrid[0:128, 0:128] / 128.0
    lungs = (((xx - 0.3) / 0.15) ** 2 + ((yy - 0.47) / 0.28) ** 2 <= 1) | (
        ((xx - 0.7) / 0.14) ** 2 + ((yy - 0.48) / 0.27) ** 2 <= 1)
    noise = np.random.default_rng(0).normal(0, 0.02, xx.shape)
    pixels = (np.where(lungs, 0.3, np.where(np.abs(xx - 0.5) < 0.42, 0.75, 0.03)) + noise)
    path = tmp_path / "cxr.png"
    write_radiograph(path, Radiograph(np.clip(pixels, 0, 1).astype(np.float32), None, "display"))
    return path


def test_ct_records_are_eval_ground_truth(chest_ct: tuple[Path, Path], tmp_path: Path) -> None:
    ct, lobes = chest_ct
    out = tmp_path / "out"
    result = run_cli("synth", str(ct), "--labels", str(lobes), "-n", "3", "--negatives",
                     "--subtlety", "1:5", "--diameter-mm", "6:10", *SMALL, "-o", str(out))
    assert result.returncode == 0, result.stderr.decode()
    recs = records(result.stdout)
    assert [r["id"] for r in recs] == ["chest_s000", "chest_s001", "chest_s002", "chest_neg"]
    for rec in recs[:3]:
        (box,) = rec["boxes"]
        assert box["label"] == "nodule" and set(box["attributes"]) >= {
            "calcified", "border_irregular", "texture", "inhomogeneous", "subtlety",
            "diameter_mm"}
        assert box["attributes"]["subtlety"] in (1, 2, 3, 4, 5)
        mask = read_radiograph(rec["mask"]).pixels > 0.5
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert [box["x1"], box["y1"], box["x2"], box["y2"]] == [
            cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]  # the mask's half-open box
        assert len(rec["nodule"]["center_mm"]) == 3 and rec["nodule"]["source"]["kind"] == (
            "parametric")
        assert rec["synth"]["engine"] == "ct" and rec["synth"]["options"]["lung_mask"] == "labels"
        assert read_meta(rec["path"])["boxes"] == rec["boxes"]  # the file says it too
        assert read_radiograph(rec["thickness"]).pixels.max() > 3
    negative = recs[3]
    assert negative["boxes"] == [] and negative["nodule"] is None
    assert negative["synth"]["negative"] is True
    assert not read_radiograph(negative["mask"]).pixels.any()
    # detections equal to the truth, fed straight to eval: a perfect detector
    for rec in recs:
        rec["detections"] = [{**b, "score": 0.9} for b in rec["boxes"]]
    stream = "".join(json.dumps(r) + "\n" for r in recs)
    evaluated = run_cli("eval", "--json", "--bootstrap", "0", stdin=stream)
    assert evaluated.returncode == 0, evaluated.stderr.decode()
    assert '"auc":1.0' in evaluated.stdout.decode().replace(" ", "")


def test_same_seed_same_bytes_resume_and_overwrite(chest_ct: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    ct, _ = chest_ct
    out = tmp_path / "out"
    args = (str(ct), "-n", "2", "--shape", "spiculated,lobulated", "--diameter-mm", "6:9",
            "--spicule-length-mm", "2:3",
            *SMALL, "-o", str(out))
    code, first, _ = invoke(*args)
    assert code == 0 and first[0]["synth"]["options"]["lung_mask"] == "threshold"
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(files) == 6  # image, mask and thickness per sample
    code, again, _ = invoke(*args, "--overwrite")
    assert code == 0 and again == first
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files  # same seed, same bytes
    code, resumed, _ = invoke(*args, "--resume")
    assert code == 0 and resumed == first
    code, other, _ = invoke(*args, "--seed", "1", "-o", str(tmp_path / "other"))
    assert other[0]["synth"]["sample_seed"] != first[0]["synth"]["sample_seed"]
    assert (tmp_path / "other" / "chest_s000.tiff").read_bytes() != files["chest_s000.tiff"]


def test_blend_real_patches_from_stdin(cxr: Path, tmp_path: Path) -> None:
    luna = make_luna_dir(tmp_path / "luna")
    code, recs, _ = invoke("-e", "blend", "--source", "luna16", "--luna16-dir", str(luna),
                           "--where", "calcified==1", "-n", "2", "--pixel-mm", "0.5",
                           "-o", str(tmp_path / "out"),
                           stdin=json.dumps({"path": str(cxr), "split": "train"}) + "\n")
    assert code == 0 and [r["id"] for r in recs] == ["cxr_s000", "cxr_s001"]
    for rec in recs:
        assert rec["split"] == "train" and rec["source"] == str(cxr)  # passed through
        assert rec["nodule"]["source"]["patch"] == "uid1_dcm_0"
        assert rec["boxes"][0]["attributes"]["calcified"] == 1
        assert rec["kind"] == "display" and rec["spacing_mm"] == [0.5, 0.5]
        assert rec["nodule"]["center_mm"] is None
        assert rec["synth"]["options"]["lung_mask"] == "threshold"
        image = read_radiograph(rec["path"]).pixels
        original = read_radiograph(cxr).pixels
        changed = np.abs(image - original) > 1e-6
        mask = read_radiograph(rec["mask"]).pixels > 0.5
        assert changed.any() and changed[mask].mean() > 0.9


@pytest.mark.parametrize(("args", "message"), [
    (("--where", "calcified==1"), "--source luna16"),
    (("--engine", "diffusion"), "ct, blend"),
    (("--subtlety", "7"), "1..5"),
    (("--shape", "cube"), "cube"),
    (("--diameter-mm", "9:3"), "LOW:HIGH"),
])
def test_usage_errors_exit_2(args: tuple[str, ...], message: str, chest_ct: tuple[Path, Path]
                             ) -> None:
    result = runner.invoke(app, ["synth", str(chest_ct[0]), *args])
    assert result.exit_code == 2 and message in result.stderr


def test_runtime_errors_exit_1(tmp_path: Path, chest_ct: tuple[Path, Path]) -> None:
    missing = run_cli("synth", str(chest_ct[0]), "--source", "luna16", "--luna16-dir",
                      str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and b"nodules.csv" in missing.stderr
    assert missing.stdout == b""


def test_help_lists_every_choice() -> None:
    text = runner.invoke(app, ["synth", "--help"]).output
    flat = " ".join(text.split())
    for choice in (*SHAPES, *TEXTURES, *CALCIFICATIONS, *INTERNALS, *ENGINES):
        assert choice in flat, choice
    assert all(f"{k}: {v:g}" in flat for k, v in SUBTLETY_CONTRAST.items())


@pytest.mark.realdata
def test_real_ct_and_radiograph(shared_data: Path, tmp_path: Path) -> None:
    lidc = shared_data / "lidc-idri-0001"
    code, recs, _ = invoke(str(lidc / "ct.nii.gz"), "--labels", str(lidc / "structures.nii.gz"),
                           "--source", "luna16", "--luna16-dir",
                           str(shared_data / "luna16-nodules"), "--where", "diameter_mm>=10",
                           "-n", "2", "--size", "128", "-o", str(tmp_path / "ct"))
    assert code == 0 and len(recs) == 2
    for rec in recs:
        x1, y1, x2, y2 = (rec["boxes"][0][k] for k in ("x1", "y1", "x2", "y2"))
        assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 128
        assert rec["nodule"]["source"]["kind"] == "luna16"
        assert rec["boxes"][0]["attributes"]["diameter_mm"] >= 10
    image = sorted((shared_data / "nih-cxr14" / "images").glob("*.png"))[0]
    code, recs, _ = invoke("-e", "blend", str(image), "--negatives", "-o", str(tmp_path / "bl"))
    assert code == 0 and len(recs) == 2 and recs[1]["boxes"] == []
    mask = read_radiograph(recs[0]["mask"]).pixels > 0.5
    assert mask.shape == (1024, 1024) and 10 < mask.sum() < 20000


def test_raw_radiograph_on_stdin_names_no_spool_file(cxr: Path, tmp_path: Path) -> None:
    """The spooled stdin image is deleted with the process: records say "-" instead."""
    result = run_cli("synth", "-e", "blend", "--pixel-mm", "0.5", "-o", str(tmp_path / "out"),
                     stdin=cxr.read_bytes())
    assert result.returncode == 0, result.stderr.decode()
    (rec,) = records(result.stdout)
    assert rec["source"] == "-" and rec["synth"]["inputs"]["input"] == "-"
    assert b"cxrkit-stdin" not in result.stdout
