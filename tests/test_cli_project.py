"""`cxrkit project` end to end: records, files, labels, resume, errors, stdin, sharding."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxrkit.io import read_meta, read_radiograph, read_stack
from tests.test_cli import run_cli

SMALL = ("--size", "48", "--pixel-mm", "1.2")


def records(stdout: bytes) -> list[dict]:
    return [json.loads(line) for line in stdout.decode().splitlines()]


def test_project_writes_image_and_record(phantom_path: Path, tmp_path: Path) -> None:
    result = run_cli("project", str(phantom_path), *SMALL, "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr.decode()
    (rec,) = records(result.stdout)
    assert rec["id"] == "phantom" and rec["source"] == str(phantom_path)
    assert rec["kind"] == "display" and rec["path"].endswith("phantom_drr.tiff")
    assert rec["project"]["options"]["geometry"]["view"] == "PA"
    assert len(rec["project"]["inputs"]["ct_sha256"]) == 64
    img = read_radiograph(rec["path"])
    assert img.pixels.shape == (48, 48) and img.pixels.min() >= 0 and img.pixels.max() <= 1
    assert img.meta["project"] == rec["project"]  # the file alone says how it was made
    assert img.spacing_mm == pytest.approx((1.2, 1.2))


def test_line_integral_kind_and_labels(phantom_path: Path, tmp_path: Path) -> None:
    from cxrkit.volume import read_volume, write_volume

    vol = read_volume(phantom_path)
    labels = vol.with_array((vol.array > 500).astype(np.float32) * 3)  # the bone rod, label 3
    write_volume(labels, tmp_path / "rod.nii.gz")
    result = run_cli("project", str(phantom_path), *SMALL, "--kind", "line_integral",
                     "--labels", str(tmp_path / "rod.nii.gz"), "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr.decode()
    (rec,) = records(result.stdout)
    assert rec["kind"] == "line_integral" and rec["labels"]["label_ids"] == [3]
    drr = read_radiograph(rec["path"]).pixels
    masks, _ = read_stack(rec["mask"])
    assert masks.shape == (1, 48, 48) and set(np.unique(masks)) == {0.0, 1.0}
    # the rod is the densest thing: the DRR is higher inside its mask than outside, in the body
    inside = drr[masks[0] > 0]
    body = drr[(masks[0] == 0) & (drr > 0.5 * drr.max())]
    assert inside.mean() > body.mean()


def test_overwrite_and_resume(phantom_path: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    first = run_cli("project", str(phantom_path), *SMALL, "-o", out)
    assert first.returncode == 0
    again = run_cli("project", str(phantom_path), *SMALL, "-o", out)
    assert again.returncode == 1 and b"output exists" in again.stderr and again.stdout == b""
    resumed = run_cli("project", str(phantom_path), *SMALL, "-o", out, "--resume")
    assert resumed.returncode == 0 and records(resumed.stdout) == records(first.stdout)
    forced = run_cli("project", str(phantom_path), *SMALL, "-o", out, "--overwrite")
    assert forced.returncode == 0


def test_keep_going_partial_exit(phantom_path: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(phantom_path.read_bytes()[:200])
    out = tmp_path / "out"
    stop = run_cli("project", str(bad), str(phantom_path), *SMALL, "-o", str(out))
    assert stop.returncode == 1 and stop.stdout == b""
    assert not out.exists() or not any(out.iterdir())  # nothing half-written
    going = run_cli("project", str(bad), str(phantom_path), *SMALL, "-o", str(out), "-k")
    assert going.returncode == 3
    assert [r["id"] for r in records(going.stdout)] == ["phantom"]
    assert b"bad" in going.stderr


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [(("--sid-mm", "0"), b"--sid-mm", 2), (("--sod-mm", "1900"), b"smaller than sid_mm", 2),
     (("--translation-mm", "0,0,5000"), b"crosses the body", 1),
     (("--view", "XY"), b"--view: 'XY' is not one of", 2)],
)
def test_bad_geometry_one_line_no_output(phantom_path: Path, tmp_path: Path, args: tuple,
                                         message: bytes, code: int) -> None:
    """Invalid geometry options are usage errors (exit 2); one that misses the body is found
    when rendering (exit 1)."""
    result = run_cli("project", str(phantom_path), *SMALL, *args, "-o", str(tmp_path / "o"))
    assert result.returncode == code and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_raw_volume_on_stdin_and_records_from_stdin(phantom_path: Path, tmp_path: Path) -> None:
    raw = run_cli("project", *SMALL, "-o", str(tmp_path / "a"), stdin=phantom_path.read_bytes())
    assert raw.returncode == 0, raw.stderr.decode()
    assert records(raw.stdout)[0]["id"] == "stdin"
    line = json.dumps({"path": str(phantom_path), "id": "p1", "note": "kept"}) + "\n"
    rec = run_cli("project", *SMALL, "-o", str(tmp_path / "b"), stdin=line)
    (out,) = records(rec.stdout)
    assert out["id"] == "p1" and out["note"] == "kept"  # unknown keys pass through


def test_single_output_file_and_png(phantom_path: Path, tmp_path: Path) -> None:
    target = tmp_path / "one.png"
    result = run_cli("project", str(phantom_path), *SMALL, "-o", str(target))
    assert result.returncode == 0 and target.is_file()
    assert read_meta(target)["id"] == "phantom"


def test_accelerate_shards_two_processes(phantom_path: Path, tmp_path: Path) -> None:
    if shutil.which("accelerate") is None and not Path(sys.executable).with_name(
            "accelerate").exists():
        pytest.skip("accelerate launcher not installed")
    for k in range(4):
        shutil.copy(phantom_path, tmp_path / f"ct{k}.nii.gz")
    launcher = str(Path(sys.executable).with_name("accelerate"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    result = subprocess.run(
        [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "cxrkit", "-v", "project",
         *[str(tmp_path / f"ct{k}.nii.gz") for k in range(4)], *SMALL, "-o",
         str(tmp_path / "out")], capture_output=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    got = records(result.stdout)
    assert sorted(r["id"] for r in got) == ["ct0", "ct1", "ct2", "ct3"]  # each once, complete
    assert len(list((tmp_path / "out").glob("*.tiff"))) == 4
    err = result.stderr.decode()
    assert "process 1 of 2" in err and "process 2 of 2" in err  # really two processes


def test_closed_pipe_exits_quietly(phantom_path: Path, tmp_path: Path) -> None:
    for k in range(3):
        shutil.copy(phantom_path, tmp_path / f"ct{k}.nii.gz")
    inputs = " ".join(str(tmp_path / f"ct{k}.nii.gz") for k in range(3))
    command = (f"{sys.executable} -m cxrkit project {inputs} --size 48 -o {tmp_path / 'out'} "
               f"2>{tmp_path / 'err.txt'} | head -c 1 >/dev/null")
    subprocess.run(["bash", "-c", command], check=True, timeout=300,
                   env={**os.environ, "OMP_NUM_THREADS": "2"})
    err = (tmp_path / "err.txt").read_text()
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_interrupt_exits_130(phantom_path: Path, tmp_path: Path) -> None:
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "cxrkit", "project", *[str(phantom_path)] * 400,
                             "--size", "512", "-o", str(tmp_path / "out"), "--overwrite"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(3.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    # 130, or killed by SIGINT itself when the signal lands inside SimpleITK (its own handler
    # re-raises it); a shell reports both as 130. Never a traceback.
    assert proc.returncode in (130, -signal.SIGINT)
    assert b"Traceback" not in err


def test_label_ids_take_structure_names_and_patterns(tmp_path: Path) -> None:
    import typer

    from cxrkit.cli.project import parse_label_ids

    labels = tmp_path / "structures.nii.gz"
    labels.write_bytes(b"")  # only the table beside it is read for names
    (tmp_path / "structures.csv").write_text(
        "id,structure\n1,spleen\n10,lung_upper_lobe_left\n11,lung_lower_lobe_left\n")
    assert parse_label_ids("spleen,11", labels) == [1, 11]
    assert parse_label_ids("lung_*,spleen", labels) == [10, 11, 1]
    for bad in ("liver", "7", ","):
        with pytest.raises(typer.BadParameter):
            parse_label_ids(bad, labels)


def test_unknown_label_name_is_a_usage_error_before_the_ct_is_read(tmp_path: Path) -> None:
    labels = tmp_path / "structures.nii.gz"
    labels.write_bytes(b"")
    (tmp_path / "structures.csv").write_text("id,structure\n1,spleen\n")
    result = run_cli("project", str(tmp_path / "missing.nii.gz"), "--labels", str(labels),
                     "--label-ids", "lungs")
    assert result.returncode == 2
    assert result.stderr.decode().count("\n") == 1 and b"no structure 'lungs'" in result.stderr


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_signal_to_the_group_exits_130_and_leaves_only_whole_outputs(
        phantom_path: Path, tmp_path: Path, name: str) -> None:
    """Ctrl-C (SIGINT to the process group) or a batch scheduler's SIGTERM during a batch:
    exit 130 with one line on stderr, and every file in -o a finished output (no temporary)."""
    import signal

    cts = tmp_path / "cts"
    cts.mkdir()
    for k in range(40):
        (cts / f"ct{k:02d}.nii.gz").symlink_to(phantom_path)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "cxrkit", "project", str(cts), "--size", "256",
                             "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    first = proc.stdout.readline()  # type: ignore[union-attr]
    os.killpg(proc.pid, getattr(signal, name))
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert err.decode().splitlines() == [f"cxrkit project: error: interrupted ({name})"]
    emitted = records(first + rest)
    files = sorted(out.iterdir())
    assert 1 <= len(emitted) < 40 and len(files) <= len(emitted) + 1
    assert not [f for f in files if f.name.startswith(".")]
    for f in files:  # each file is whole: it reads, and says which item it is
        assert read_radiograph(f).meta["path"] == str(f)


def test_stale_temporary_of_a_killed_run_is_cleaned_by_resume(phantom_path: Path,
                                                              tmp_path: Path) -> None:
    """kill -9 during a write leaves a hidden temporary: --resume removes it (its writer is
    gone), and the next stage reading the folder never takes a hidden file for an input."""
    from cxrkit.files import TEMP_PREFIX, _host

    out = tmp_path / "out"
    first = run_cli("project", str(phantom_path), *SMALL, "-o", str(out))
    assert first.returncode == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    half = (out / "phantom_drr.tiff").read_bytes()[:100]
    stale = out / f"{TEMP_PREFIX}{_host()}.{dead.pid}.1234abcd.other_drr.tiff"
    old_style = out / ".other_drr.tiff.x1y2z3w4.tiff"  # what earlier versions left
    stale.write_bytes(half)
    old_style.write_bytes(half)
    resumed = run_cli("project", str(phantom_path), *SMALL, "-o", str(out), "--resume")
    assert resumed.returncode == 0 and records(resumed.stdout) == records(first.stdout)
    assert not stale.exists() and not old_style.exists()
    nxt = run_cli("degrade", str(out), "--preset", "bicubic", "-o", str(tmp_path / "lq"))
    assert nxt.returncode == 0, nxt.stderr.decode()
    assert [r["id"] for r in records(nxt.stdout)] == ["phantom_drr"]


def test_resume_refuses_outputs_made_with_other_options(phantom_path: Path,
                                                        tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    assert run_cli("project", str(phantom_path), *SMALL, "-o", out).returncode == 0
    other = run_cli("project", str(phantom_path), "--size", "40", "-o", out, "--resume")
    assert other.returncode == 1 and other.stdout == b""
    assert b"other options" in other.stderr and b"--overwrite" in other.stderr
    redone = run_cli("project", str(phantom_path), "--size", "40", "-o", out, "--resume",
                     "--overwrite")
    assert redone.returncode == 0
    assert read_radiograph(records(redone.stdout)[0]["path"]).pixels.shape == (40, 40)
