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
    (("--engine", "paint"), "ct, blend, diffusion"),
    (("--subtlety", "7"), "1..5"),
    (("--shape", "cube"), "cube"),
    (("--diameter-mm", "9:3"), "LOW:HIGH"),
])
def test_usage_errors_exit_2(args: tuple[str, ...], message: str, chest_ct: tuple[Path, Path]
                             ) -> None:
    result = runner.invoke(app, ["synth", str(chest_ct[0]), *args])
    assert result.exit_code == 2 and message in result.stderr


def test_runtime_errors_exit_1(tmp_path: Path, chest_ct: tuple[Path, Path]) -> None:
    (tmp_path / "empty").mkdir()
    missing = run_cli("synth", str(chest_ct[0]), "--source", "luna16", "--luna16-dir",
                      str(tmp_path / "empty"))
    assert missing.returncode == 1 and b"nodules.csv" in missing.stderr
    assert missing.stdout == b""


def test_luna16_folder_from_option_or_environment(chest_ct: tuple[Path, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """No folder beside the checkout is assumed: --luna16-dir, else $CXRKIT_LUNA16_DIR."""
    monkeypatch.delenv("CXRKIT_LUNA16_DIR", raising=False)
    args = ["synth", str(chest_ct[0]), "--source", "luna16", "-o", str(tmp_path / "out"),
            *SMALL]
    unset = runner.invoke(app, args)
    assert unset.exit_code == 2 and "--luna16-dir" in unset.stderr
    assert "CXRKIT_LUNA16_DIR" in unset.stderr
    gone = runner.invoke(app, args, env={"CXRKIT_LUNA16_DIR": str(tmp_path / "nowhere")})
    assert gone.exit_code == 2 and "nowhere" in gone.stderr and "CXRKIT_LUNA16_DIR" in gone.stderr
    luna = make_luna_dir(tmp_path / "luna")
    result = runner.invoke(app, args, env={"CXRKIT_LUNA16_DIR": str(luna)})
    assert result.exit_code == 0, result.stderr
    (rec,) = records(result.stdout)
    assert rec["nodule"]["source"]["kind"] == "luna16"
    assert rec["synth"]["options"]["luna16_dir"] == str(luna)


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


KNOWN_LPS = (-14.0, 0.0, 10.0)
"""Centre of the 8 mm nodule the chest phantom gets in its right lung (LPS mm)."""
GRID = ("--size", "64", "--pixel-mm", "1.0")


def _add_known_nodule(ct: Path, labels: Path | None = None) -> None:
    """Put an 8 mm soft-tissue ball at :data:`KNOWN_LPS` into the phantom (and, as label 20,
    into its label volume)."""
    from cxrkit.volume import read_volume

    volume = read_volume(ct)
    z, y, x = np.mgrid[0:64, 0:64, 0:64].astype(np.float32) - 31.5
    ball = (x - KNOWN_LPS[0]) ** 2 + (y - KNOWN_LPS[1]) ** 2 + (z - KNOWN_LPS[2]) ** 2 <= 16
    write_volume(volume.with_array(np.where(ball, 40.0, volume.array).astype(np.float32)), ct)
    if labels is not None:
        lobes = read_volume(labels)
        write_volume(lobes.with_array(np.where(ball, 20.0, lobes.array).astype(np.float32)),
                     labels)


def _write_table(path: Path, rows: list[tuple[float, float, float, float]]) -> None:
    """A LIDC-style nodules table: one row per reader mark, RAS centres, xy_extent_mm."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["reader_id", "nodule_id", "ras_x_mm", "ras_y_mm", "ras_z_mm",
                         "xy_extent_mm", "subtlety", "texture"])
        for k, (x, y, z, size) in enumerate(rows):
            writer.writerow([k, f"N{k}", -x, -y, z, size, 4, 5])


def test_known_nodules_are_labelled_and_rule_out_negatives(chest_ct: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    """A CT with its own nodule (nodules.csv beside it) never yields a 'negative' showing it."""
    ct, _ = chest_ct
    _add_known_nodule(ct)
    x, y, z = KNOWN_LPS
    _write_table(tmp_path / "nodules.csv", [(x + 0.4, y, z, 8.2), (x, y - 0.5, z, 7.8),
                                            (x, y, z + 0.6, 8.0), (x - 0.3, y, z, 8.0),
                                            (14.0, 0.0, -5.0, 0.7)])  # + one < 3 mm mark
    out = tmp_path / "out"
    result = run_cli("synth", str(ct), "-n", "2", "--negatives", "--diameter-mm", "5:6",
                     *GRID, "-o", str(out))
    assert result.returncode == 1
    (line,) = result.stderr.decode().strip().splitlines()
    assert "known nodule" in line and "nodules.csv" in line and "--known-nodules none" in line
    recs = records(result.stdout)
    assert [r["id"] for r in recs] == ["chest_s000", "chest_s001"]
    assert not (out / "chest_neg.tiff").exists()
    for rec in recs:
        synth_box, ct_box = rec["boxes"]
        assert synth_box["origin"] == "synth" and ct_box["origin"] == "ct"
        assert ct_box["attributes"]["marks"] == 4  # four readers' marks, one nodule
        assert ct_box["attributes"]["diameter_mm"] == 8.0
        assert ct_box["attributes"]["texture"] == "solid"
        # the box sits on the nodule's projection: about 8 mm x magnification wide
        width, height = ct_box["x2"] - ct_box["x1"], ct_box["y2"] - ct_box["y1"]
        assert 7 <= width <= 12 and 7 <= height <= 12
        mask = read_radiograph(rec["mask"]).pixels > 0.5
        assert mask[ct_box["y1"]:ct_box["y2"], ct_box["x1"]:ct_box["x2"]].mean() > 0.6
        # the CT really shows it there: the region is denser than the mirrored lung
        image = read_radiograph(rec["path"]).pixels
        region = image[ct_box["y1"]:ct_box["y2"], ct_box["x1"]:ct_box["x2"]]
        mirror = image[ct_box["y1"]:ct_box["y2"], 64 - ct_box["x2"]:64 - ct_box["x1"]]
        assert region.mean() > mirror.mean() + 0.02
        # the inserted nodule keeps clear of the known one
        gap = np.linalg.norm(np.array(rec["nodule"]["center_mm"]) - KNOWN_LPS)
        assert gap > 4.0 + 2.5 + 3.0
        known = rec["synth"]["options"]["known_nodules"]
        assert [k["marks"] for k in known] == [4, 1] and known[1]["diameter_mm"] == 0.7
    assert rec["synth"]["negative"] is False

    # the user says the CT has none: negatives are made, with no box
    code, recs, _ = invoke(str(ct), "-n", "1", "--negatives", "--known-nodules", "none",
                           "--diameter-mm", "5:6", *GRID, "-o", str(tmp_path / "none"))
    assert code == 0 and [len(r["boxes"]) for r in recs] == [1, 0]
    assert recs[1]["synth"]["negative"] is True


def test_small_known_nodules_allow_negatives(chest_ct: tuple[Path, Path], tmp_path: Path
                                             ) -> None:
    ct, _ = chest_ct
    _write_table(tmp_path / "chest.nodules.csv", [(14.0, 0.0, -5.0, 0.7)])
    code, recs, _ = invoke(str(ct), "-n", "0", "--negatives", *GRID, "-o", str(tmp_path / "o"))
    assert code == 0 and recs[0]["boxes"] == [] and recs[0]["synth"]["negative"] is True
    assert recs[0]["synth"]["options"]["known_nodules"][0]["diameter_mm"] == 0.7


def test_known_nodules_from_a_label_map_or_mask(chest_ct: tuple[Path, Path], tmp_path: Path
                                                ) -> None:
    ct, lobes = chest_ct
    _add_known_nodule(ct, lobes)
    with open(tmp_path / "lobes.csv", "a", newline="") as fh:
        csv.writer(fh).writerow([20, "lung_nodules"])
    result = run_cli("synth", str(ct), "--labels", str(lobes), "-n", "1", "--negatives",
                     "--diameter-mm", "5:6", *GRID, "-o", str(tmp_path / "a"))
    assert result.returncode == 1 and b"known nodule" in result.stderr
    (rec,) = records(result.stdout)
    ct_box = rec["boxes"][1]
    assert ct_box["origin"] == "ct" and 7 <= ct_box["x2"] - ct_box["x1"] <= 12
    assert abs(ct_box["attributes"]["diameter_mm"] - 8.0) < 1.0
    # a nodule mask volume given explicitly
    from cxrkit.volume import read_volume

    labels = read_volume(lobes)
    write_volume(labels.with_array((labels.array == 20).astype(np.float32)),
                 tmp_path / "nod.nii.gz")
    code, recs, _ = invoke(str(ct), "-n", "1", "--known-nodules", str(tmp_path / "nod.nii.gz"),
                           "--diameter-mm", "5:6", *GRID, "-o", str(tmp_path / "b"))
    assert code == 0 and [b["x1"] for b in recs[0]["boxes"][1:]] == [ct_box["x1"]]


def test_unreadable_nodule_table_is_an_error(chest_ct: tuple[Path, Path], tmp_path: Path
                                             ) -> None:
    ct, _ = chest_ct
    (tmp_path / "nodules.csv").write_text("a,b\n1,2\n")
    result = run_cli("synth", str(ct), *GRID, "-o", str(tmp_path / "o"))
    assert result.returncode == 1 and b"no centre" in result.stderr
    bad = run_cli("synth", str(ct), "-e", "blend", "--known-nodules", "none")
    assert bad.returncode == 2 and b"--known-nodules" in bad.stderr


@pytest.mark.realdata
def test_lidc_own_nodule_is_labelled_not_negative(shared_data: Path, tmp_path: Path) -> None:
    """LIDC-IDRI-0001's 30 mm nodule: boxed in every image, and no negative from this CT."""
    ct = shared_data / "lidc-idri-0001" / "ct.nii.gz"
    code, recs, err = invoke(str(ct), "-n", "1", "--negatives", "--keep-going", "--size", "128",
                             "-o", str(tmp_path / "o"))
    assert code == 3 and "known nodule" in err
    (rec,) = recs
    (ct_box,) = [b for b in rec["boxes"] if b["origin"] == "ct"]
    assert 30 <= ct_box["attributes"]["diameter_mm"] <= 36 and ct_box["attributes"]["marks"] == 4
    # 430 mm / 128 px: ~3.4 mm pixels, the nodule ~11 px across, in the image's right half
    # (patient's left lower lobe)
    assert 8 <= ct_box["x2"] - ct_box["x1"] <= 16 and ct_box["x1"] > 64


def test_known_nodules_from_the_lidc_reader_xml(chest_ct: tuple[Path, Path], tmp_path: Path
                                               ) -> None:
    """The LIDC readers' XML beside the CT (any name, an LidcReadMessage root) labels its
    nodule as nodules.csv would, masked by the readers' outlines; no negative from that CT."""
    from tests.test_synth import LIDC_RATINGS, ball_reads, lidc_xml

    ct, _ = chest_ct
    _add_known_nodule(ct)
    reads = [[("n1", ball_reads(KNOWN_LPS, 4.0)), ("small", [(-5.5, [(45, 31)])])]
             for _ in range(3)]
    (tmp_path / "0001.xml").write_text(lidc_xml(reads, ratings=LIDC_RATINGS))
    code, recs, err = invoke(str(ct), "-n", "1", "--negatives", "--keep-going",
                             "--diameter-mm", "5:6", *GRID, "-o", str(tmp_path / "o"))
    assert code == 3 and "known nodule" in err and "0001.xml" in err
    (rec,) = recs
    synth_box, ct_box = rec["boxes"]
    assert synth_box["origin"] == "synth" and ct_box["origin"] == "ct"
    attributes = ct_box["attributes"]
    assert attributes["marks"] == 3 and 8.0 <= attributes["diameter_mm"] <= 9.0
    assert attributes["texture"] == "solid" and attributes["lidc"]["malignancy"] == 3
    assert 7 <= ct_box["x2"] - ct_box["x1"] <= 12 and 7 <= ct_box["y2"] - ct_box["y1"] <= 12
    mask = read_radiograph(rec["mask"]).pixels > 0.5
    assert mask[ct_box["y1"]:ct_box["y2"], ct_box["x1"]:ct_box["x2"]].mean() > 0.6
    image = read_radiograph(rec["path"]).pixels
    region = image[ct_box["y1"]:ct_box["y2"], ct_box["x1"]:ct_box["x2"]]
    mirror = image[ct_box["y1"]:ct_box["y2"], 64 - ct_box["x2"]:64 - ct_box["x1"]]
    assert region.mean() > mirror.mean() + 0.02
    known = rec["synth"]["options"]["known_nodules"]
    xml = str(tmp_path / "0001.xml")
    assert [(k["marks"], k["source"]["xml"]) for k in known] == [(3, xml), (3, xml)]
    assert np.allclose(known[0]["center_mm"], KNOWN_LPS, atol=0.6)
    assert known[1]["diameter_mm"] == 1.0  # a small-nodule point mark: listed, not boxed
    # the same file given explicitly (moved away, so auto would not find it)
    given = tmp_path / "given" / "reads.xml"
    given.parent.mkdir()
    (tmp_path / "0001.xml").rename(given)
    code, recs, _ = invoke(str(ct), "-n", "1", "--known-nodules", str(given),
                           "--diameter-mm", "5:6", *GRID, "-o", str(tmp_path / "g"))
    assert code == 0 and [b["x1"] for b in recs[0]["boxes"][1:]] == [ct_box["x1"]]
    # no XML, no table: a negative
    code, recs, _ = invoke(str(ct), "-n", "0", "--negatives", *GRID, "-o", str(tmp_path / "n"))
    assert code == 0 and recs[0]["synth"]["negative"] is True


@pytest.mark.realdata
def test_lidc_reader_xml_agrees_with_nodules_csv(shared_data: Path, tmp_path: Path) -> None:
    """The sample CT's folder as `cxrkit sample-data --dicom` gives it (no nodules.csv): its XML
    gives the nodules that LIDC-IDRI-0001's nodules.csv (made from that XML) lists, on dense CT,
    and the 30 mm nodule is boxed, so the CT gives no negative."""
    from cxrkit.synth.known import read_beside, read_nodule_table
    from cxrkit.volume import read_volume

    lidc = shared_data / "lidc-idri-0001"
    sample = tmp_path / "sample"
    sample.mkdir()
    for name in ("ct.nii.gz", "lidc-reader-annotations.xml"):
        (sample / name).symlink_to(lidc / name)
    volume = read_volume(sample / "ct.nii.gz")
    from_xml = read_beside(sample / "ct.nii.gz", volume)
    from_csv = read_nodule_table(lidc / "nodules.csv")
    assert [n.marks for n in from_xml] == [n.marks for n in from_csv] == [4, 3, 3, 3]
    to_index = np.linalg.inv(volume.index_to_world())
    for x, c in zip(from_xml, from_csv, strict=True):
        assert x.source["xml"] == str(sample / "lidc-reader-annotations.xml")
        assert np.linalg.norm(np.subtract(x.center_mm, c.center_mm)) < 2.0
        assert abs(x.diameter_mm - c.diameter_mm) < 1.0 and x.attributes == c.attributes
    big = from_xml[0]
    assert big.counted and 30 <= big.diameter_mm <= 36 and big.attributes["calcified"] == 0
    w, h, d = np.rint(to_index @ np.array([*big.center_mm, 1.0]))[:3].astype(int)
    assert volume.array[d - 1:d + 2, h - 2:h + 3, w - 2:w + 3].mean() > -200  # soft tissue
    occupancy = big.occupancy
    inside = np.argwhere(occupancy.array >= 0.5)  # the readers' consensus, in CT voxels
    world = np.c_[inside[:, ::-1], np.ones(len(inside))] @ occupancy.index_to_world().T
    voxels = np.rint(world @ to_index.T).astype(int)
    assert np.median(volume.array[voxels[:, 2], voxels[:, 1], voxels[:, 0]]) > -200
    code, recs, err = invoke(str(sample / "ct.nii.gz"), "-n", "1", "--negatives",
                             "--keep-going", "--size", "128", "-o", str(tmp_path / "o"))
    assert code == 3 and "known nodule" in err and "lidc-reader-annotations.xml" in err
    (ct_box,) = [b for b in recs[0]["boxes"] if b["origin"] == "ct"]
    assert ct_box["attributes"]["marks"] == 4 and ct_box["x1"] > 64
    assert 7 <= ct_box["x2"] - ct_box["x1"] <= 16 and 5 <= ct_box["y2"] - ct_box["y1"] <= 16


@pytest.mark.realdata
def test_the_sample_ct_without_its_annotations_is_refused(shared_data: Path, tmp_path: Path
                                                          ) -> None:
    """`cxrkit sample-data` without --dicom gives the CT but not the readers' XML: synth must not
    make 'negatives' (or unlabelled positives) of a CT known to hold a 30 mm nodule."""
    sample = tmp_path / "sample"
    sample.mkdir()
    (sample / "ct.nii.gz").symlink_to(shared_data / "lidc-idri-0001" / "ct.nii.gz")
    result = run_cli("synth", str(sample / "ct.nii.gz"), "-n", "1", "--negatives", "--size", "64",
                     "-o", str(tmp_path / "o"))
    assert result.returncode == 1 and result.stdout == b""
    (line,) = result.stderr.decode().splitlines()
    assert "sample CT lidc-idri-0001" in line and "sample-data lidc-idri-0001 --dicom" in line
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())
    code, recs, _ = invoke(str(sample / "ct.nii.gz"), "-n", "0", "--negatives", "--known-nodules",
                           "none", "--size", "64", "-o", str(tmp_path / "n"))
    assert code == 0 and recs[0]["synth"]["negative"] is True


def test_raw_radiograph_on_stdin_names_no_spool_file(cxr: Path, tmp_path: Path) -> None:
    """The spooled stdin image is deleted with the process: records say "-" instead."""
    result = run_cli("synth", "-e", "blend", "--pixel-mm", "0.5", "-o", str(tmp_path / "out"),
                     stdin=cxr.read_bytes())
    assert result.returncode == 0, result.stderr.decode()
    (rec,) = records(result.stdout)
    assert rec["source"] == "-" and rec["synth"]["inputs"]["input"] == "-"
    assert b"cxrkit-stdin" not in result.stdout
