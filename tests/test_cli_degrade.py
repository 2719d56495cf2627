"""`cxrkit degrade` end to end: records and files, provenance, determinism by seed, options,
errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cxrkit.cli import app
from cxrkit.data.seeds import item_seed
from cxrkit.io import Radiograph, read_meta, read_radiograph, write_radiograph
from tests.test_cli import run_cli

runner = CliRunner()


def records(stdout: str | bytes) -> list[dict]:
    text = stdout.decode() if isinstance(stdout, bytes) else stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def invoke(*args: str, stdin: str | None = None) -> tuple[int, list[dict], str]:
    """The command in-process: exit code, stdout records, and the text of any exception."""
    result = runner.invoke(app, ["degrade", *args], input=stdin)
    error = f"{type(result.exception).__name__}: {result.exception}" if result.exception else ""
    return result.exit_code, records(result.stdout) if result.exit_code == 0 else [], error


@pytest.fixture
def second_path(tmp_path: Path) -> Path:
    """Another 64×64 radiograph (PNG, so without pixel size)."""
    rng = np.random.default_rng(3)
    pixels = np.clip(0.5 + 0.1 * rng.standard_normal((64, 64)), 0, 1).astype(np.float32)
    path = tmp_path / "other.png"
    write_radiograph(path, Radiograph(pixels, None, "display"))
    return path


def test_help_and_list() -> None:
    result = runner.invoke(app, ["degrade", "--help"])
    assert result.exit_code == 0 and "Example" in result.output and "--preset" in result.output
    listing = runner.invoke(app, ["degrade", "--list"])
    assert listing.exit_code == 0
    for name in ("physics", "bicubic", "drr-like", "low-dose", "portable", "realistic", "custom",
                 "quantum-noise", "dose=0.05..0.5", "slice-blur(slice_mm=2.5..5"):
        assert name in listing.output


def test_degrade_writes_lq_and_record(radiograph_path: Path, tmp_path: Path) -> None:
    code, (rec,), error = invoke(str(radiograph_path), "--preset", "drr-like", "--scale", "2",
                                 "-o", str(tmp_path / "lq"))
    assert code == 0, error
    assert rec["id"] == "cxr" and rec["path"].endswith("cxr_lq.tiff")
    assert rec["reference"] == str(radiograph_path) and rec["source"] == str(radiograph_path)
    assert rec["spacing_mm"] == pytest.approx([1.0, 1.0])  # 0.5 mm in the file, ×2
    entry = rec["degrade"]
    assert entry["options"]["preset"] == "drr-like" and entry["options"]["scale"] == 2
    assert entry["options"]["pixel_mm"] == 0.5 and entry["options"]["pixel_mm_from"] == "file"
    assert entry["seed"] == 0 and entry["item_seed"] == item_seed(0, "cxr")
    assert [s["name"] for s in entry["steps"]] == ["slice-blur", "gamma", "resize"]
    assert entry["version"]
    image = read_radiograph(rec["path"])
    assert image.pixels.shape == (32, 32) and image.spacing_mm == pytest.approx((1.0, 1.0))
    assert image.meta["degrade"] == entry  # the file alone says how it was made


def test_same_seed_same_bytes_whatever_the_order(radiograph_path: Path, second_path: Path,
                                                 tmp_path: Path) -> None:
    args = ("--preset", "realistic", "--scale", "2", "--seed", "7")
    out = tmp_path / "a"
    assert invoke(str(radiograph_path), str(second_path), *args, "-o", str(out))[0] == 0
    first = (out / "cxr_lq.tiff").read_bytes()
    assert invoke(str(radiograph_path), str(second_path), *args, "-o", str(out),
                  "--overwrite")[0] == 0
    assert (out / "cxr_lq.tiff").read_bytes() == first
    # Reversed order, other folder: the same pixels per item (the seed is per item id).
    code, reversed_recs, _ = invoke(str(second_path), str(radiograph_path), *args,
                                    "-o", str(tmp_path / "b"))
    assert code == 0 and [r["id"] for r in reversed_recs] == ["other", "cxr"]
    for name in ("cxr_lq.tiff", "other_lq.tiff"):
        np.testing.assert_array_equal(read_radiograph(out / name).pixels,
                                      read_radiograph(tmp_path / "b" / name).pixels)
    other_seed = invoke(str(radiograph_path), "--preset", "realistic", "--scale", "2",
                        "--seed", "8", "-o", str(tmp_path / "c"))
    assert other_seed[0] == 0
    assert not np.array_equal(read_radiograph(tmp_path / "c" / "cxr_lq.tiff").pixels,
                              read_radiograph(out / "cxr_lq.tiff").pixels)


def test_item_seed_depends_on_seed_and_id_only() -> None:
    assert item_seed(0, "a") == item_seed(0, "a")
    assert len({item_seed(0, "a"), item_seed(1, "a"), item_seed(0, "b")}) == 3
    assert 0 <= item_seed(123, "x") < 2**64


def test_records_on_stdin_pass_through_and_scale_spacing(radiograph_path: Path,
                                                         tmp_path: Path) -> None:
    line = json.dumps({"id": "p1", "path": str(radiograph_path), "source": "ct.nii.gz",
                       "spacing_mm": [0.4, 0.6], "boxes": [], "project": {"view": "PA"},
                       "reference": "older.tiff"})
    code, (rec,), error = invoke("--preset", "bicubic", "--scale", "2", "-o", str(tmp_path),
                                 stdin=line + "\n")
    assert code == 0, error
    assert rec["id"] == "p1" and rec["source"] == "ct.nii.gz" and rec["boxes"] == []
    assert rec["project"] == {"view": "PA"}  # keys of other tools pass through
    assert rec["reference"] == str(radiograph_path)  # always the image this command degraded
    assert rec["spacing_mm"] == pytest.approx([0.8, 1.2])
    assert rec["degrade"]["options"]["pixel_mm"] == pytest.approx(0.5)  # mean of row and col
    assert rec["degrade"]["options"]["pixel_mm_from"] == "record"


def test_pixel_pitch_from_option_or_default(second_path: Path, tmp_path: Path) -> None:
    code, (rec,), _ = invoke(str(second_path), "--scale", "2", "-o", str(tmp_path / "a"))
    assert code == 0 and rec["spacing_mm"] is None  # unknown pitch: assumed, not recorded
    assert rec["degrade"]["options"]["pixel_mm_from"] == "default"
    assert rec["degrade"]["options"]["pixel_mm"] == pytest.approx(0.35)
    code, (rec,), _ = invoke(str(second_path), "--scale", "2", "--pixel-mm", "0.2",
                             "-o", str(tmp_path / "b"))
    assert code == 0 and rec["spacing_mm"] == pytest.approx([0.4, 0.4])
    assert rec["degrade"]["options"]["pixel_mm_from"] == "option"


def test_set_overrides_and_custom_chain(radiograph_path: Path, tmp_path: Path) -> None:
    code, (rec,), error = invoke(str(radiograph_path), "--preset", "low-dose",
                                 "--set", "quantum-noise.dose=0.05", "-o", str(tmp_path / "a"))
    assert code == 0, error
    steps = {s["name"]: s["params"] for s in rec["degrade"]["steps"]}
    assert steps["quantum-noise"]["dose"] == 0.05
    assert rec["degrade"]["options"]["overrides"] == {"quantum-noise": {"dose": 0.05}}
    code, (rec,), error = invoke(str(radiograph_path), "--preset", "custom", "--set",
                                 "gamma.gamma=2", "-o", str(tmp_path / "b"))
    assert code == 0, error
    assert rec["degrade"]["steps"] == [{"name": "gamma", "params": {"gamma": 2}}]
    source = read_radiograph(radiograph_path).pixels
    np.testing.assert_allclose(read_radiograph(rec["path"]).pixels, source**2, rtol=1e-6)


@pytest.mark.parametrize("args", [
    ("--preset", "no-such-preset"),
    ("--method", "munit"),
    ("--model", "models/x"),  # physics takes no model
    ("--set", "gamma=1.2"),
    ("--set", "no-such-op.x=1"),
    ("--set", "gamma.no_such_param=1"),
    ("--preset", "bicubic", "--set", "gamma.gamma=1.2"),  # the preset has no gamma step
    ("--preset", "custom"),
    ("--scale", "0"),
])
def test_bad_options_are_usage_errors(radiograph_path: Path, tmp_path: Path,
                                      args: tuple[str, ...]) -> None:
    result = runner.invoke(app, ["degrade", str(radiograph_path), "-o", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert not any(tmp_path.glob("*_lq.tiff"))


def test_missing_file_is_one_line_error(tmp_path: Path) -> None:
    result = run_cli("degrade", str(tmp_path / "missing.png"), "-o", str(tmp_path))
    assert result.returncode == 1 and result.stdout == b""
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cxrkit degrade: error: no such file")


def test_raw_image_on_stdin(radiograph_path: Path, tmp_path: Path) -> None:
    spool = tmp_path / "tmp"
    spool.mkdir()
    result = run_cli("degrade", "--preset", "bicubic", "--scale", "2", "-o", str(tmp_path),
                     stdin=radiograph_path.read_bytes(), env={"TMPDIR": str(spool)})
    assert result.returncode == 0, result.stderr.decode()
    (rec,) = records(result.stdout)
    assert rec["id"] == "stdin" and rec["source"] == "-"
    assert read_radiograph(rec["path"]).pixels.shape == (32, 32)
    assert list(spool.iterdir()) == []  # the spooled stdin image is gone with the process
    # ... so the record's reference is a copy kept beside the output, not the spool file
    assert str(spool) not in result.stdout.decode()
    assert rec["reference"] == str(tmp_path / "stdin_lq.input.tiff")
    assert Path(rec["reference"]).read_bytes() == radiograph_path.read_bytes()


def test_resume_reemits_the_stored_record(radiograph_path: Path, tmp_path: Path) -> None:
    args = (str(radiograph_path), "--scale", "2", "-o", str(tmp_path))
    code, first, _ = invoke(*args)
    assert code == 0
    assert invoke(*args)[0] == 1  # exists, no --overwrite
    code, again, _ = invoke(*args, "--resume")
    assert code == 0 and again == first


def test_line_integrals_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "li.tiff"
    write_radiograph(path, Radiograph(np.full((32, 32), 3.0, np.float32), None, "line_integral"))
    code, _, error = invoke(str(path), "-o", str(tmp_path / "out"))
    assert code == 1 and "display" in error


def test_refuses_non_display_input(tmp_path: Path) -> None:
    path = tmp_path / "li.tiff"
    write_radiograph(path, Radiograph(np.ones((32, 32), np.float32) * 3, (1.0, 1.0),
                                      "line_integral"))
    result = run_cli("degrade", str(path), "-o", str(tmp_path / "out"))
    assert result.returncode == 1 and b"needs a display radiograph" in result.stderr


def test_records_from_a_jsonl_file_argument(radiograph_path: Path, tmp_path: Path) -> None:
    records_file = tmp_path / "in.jsonl"
    records_file.write_text(json.dumps({"id": "p1", "path": str(radiograph_path),
                                        "project": {"view": "PA"}}) + "\n\n")
    code, (rec,), error = invoke(str(records_file), "--preset", "bicubic", "--scale", "2",
                                 "-o", str(tmp_path / "out"))
    assert code == 0, error
    assert rec["id"] == "p1" and rec["project"] == {"view": "PA"}


def test_hostile_ids_stay_inside_the_output_folder(radiograph_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "out"
    evil = tmp_path / "evil"
    ids = ["../../x", str(evil), ".hidden", "..", "ok"]
    lines = "".join(json.dumps({"path": str(radiograph_path), "id": i}) + "\n" for i in ids)
    code, recs, error = invoke("--preset", "bicubic", "-o", str(out), stdin=lines)
    assert code == 0, error
    assert [r["id"] for r in recs] == ids  # ids are kept; only file names are made safe
    for rec in recs:
        assert Path(rec["path"]).parent == out and not Path(rec["path"]).name.startswith(".")
    assert recs[-1]["path"] == str(out / "ok_lq.tiff")  # normal ids give the usual names
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        [radiograph_path.name, *(Path(r["path"]).name for r in recs)])
    assert not evil.exists() and not (tmp_path / "a" / "x_lq.tiff").exists()


def test_output_onto_an_input_is_refused(radiograph_path: Path, tmp_path: Path) -> None:
    before = radiograph_path.read_bytes()
    code, _, error = invoke(str(radiograph_path), "-o", str(radiograph_path), "--overwrite")
    assert code == 1 and "replace an input" in error
    assert radiograph_path.read_bytes() == before
    # a second stage writing into the folder it reads from: its output is its own input
    code, first, _ = invoke(str(radiograph_path), "-o", str(tmp_path / "d"))
    lq = Path(first[0]["path"]).read_bytes()
    line = json.dumps(first[0]) + "\n"
    code, _, error = invoke("-o", str(tmp_path / "d"), "--overwrite", stdin=line)
    assert code == 1 and "replace an input" in error
    assert Path(first[0]["path"]).read_bytes() == lq


def test_resume_compares_the_stored_options(radiograph_path: Path, tmp_path: Path) -> None:
    args = (str(radiograph_path), "--preset", "bicubic", "-o", str(tmp_path / "o"))
    code, first, _ = invoke(*args, "--scale", "2")
    assert code == 0 and first[0]["degrade"]["request"]["scale"] == 2
    code, _, error = invoke(*args, "--scale", "1", "--resume")
    assert code == 1 and "other options" in error and "scale: 2 → 1" in error
    code, again, _ = invoke(*args, "--scale", "2", "--seed", "5", "--resume")
    assert code == 1  # the seed is compared too
    code, again, _ = invoke(*args, "--scale", "2", "--resume")
    assert code == 0 and again == first
    code, redone, _ = invoke(*args, "--scale", "1", "--resume", "--overwrite")
    assert code == 0 and redone[0]["degrade"]["options"]["scale"] == 1
    assert read_radiograph(redone[0]["path"]).pixels.shape == (64, 64)


@pytest.mark.parametrize("name", ["out.xyz", "out.jpg", "run.v2"])
def test_output_name_with_an_unknown_suffix_is_a_usage_error(
        radiograph_path: Path, tmp_path: Path, name: str) -> None:
    result = run_cli("degrade", str(radiograph_path), "-o", str(tmp_path / name))
    assert result.returncode == 2 and b"end it with /" in result.stderr
    assert not (tmp_path / name).exists()


def test_output_folder_by_trailing_slash_or_no_suffix(radiograph_path: Path,
                                                      tmp_path: Path) -> None:
    for name in ("run.v2/", "plain"):
        code, recs, error = invoke(str(radiograph_path), "-o", f"{tmp_path}/{name}")
        assert code == 0, error
        assert Path(recs[0]["path"]).parent == tmp_path / name.rstrip("/")


def test_two_runs_into_one_folder_never_mix_their_outputs(radiograph_path: Path,
                                                          tmp_path: Path) -> None:
    """Two runs (other seeds) get the same records on stdin at the same moment and write the
    same names into one -o: every output is created exclusively, so each record on stdout
    describes the file its own run made, and the run that finds a name taken stops with
    "output exists" (exit 1) instead of replacing it."""
    import os
    import subprocess
    import sys

    big = np.kron(read_radiograph(radiograph_path).pixels, np.ones((16, 16), np.float32))
    write_radiograph(tmp_path / "x.tiff", Radiograph(big, (0.5, 0.5), "display"))
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {seed: subprocess.Popen(
        [sys.executable, "-m", "cxrkit", "degrade", "--seed", str(seed), "--preset", "bicubic",
         "-f", "png", "-o", str(out)],  # 1024² PNGs: encodings long enough for the runs to meet
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        for seed in (1, 2)}
    emitted: list[tuple[int, dict]] = []
    for k in range(5):  # first one item of its own each (both are running then), then the
        # same record to both at once; wait for both answers
        live = [seed for seed, run in runs.items() if run.poll() is None]
        line = json.dumps({"path": str(tmp_path / "x.tiff"), "id": f"x{k}"}).encode() + b"\n"
        for seed in live:
            if k == 0:
                line = json.dumps({"path": str(tmp_path / "x.tiff"), "id": f"warm{seed}"}
                                  ).encode() + b"\n"
            try:
                runs[seed].stdin.write(line)  # type: ignore[union-attr]
                runs[seed].stdin.flush()  # type: ignore[union-attr]
            except BrokenPipeError:  # it stopped ("output exists") meanwhile
                live.remove(seed)
        for seed in live:
            answer = runs[seed].stdout.readline()  # type: ignore[union-attr]
            if answer:
                emitted.append((seed, json.loads(answer)))
    for seed, run in runs.items():
        rest, err = run.communicate(timeout=120)  # closes its stdin: end of input
        emitted += [(seed, rec) for rec in records(rest)]
        assert run.returncode == 0 or (run.returncode == 1 and b"output exists" in err), err
    paths = [rec["path"] for _, rec in emitted]
    assert len(paths) == len(set(paths)) == 6  # one record per file, every item made once
    for seed, rec in emitted:
        assert read_meta(rec["path"])["degrade"]["seed"] == seed  # its own bytes
