"""`cxrkit train-synth` and `cxrkit synth -e diffusion` end to end on tiny synthetic images:
a model folder with run.json, records that eval reads, pixels outside the mask untouched."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxrkit.io import Radiograph, read_radiograph, write_radiograph
from tests.test_cli import run_cli
from tests.test_cli_synth import cxr, records  # noqa: F401  (the radiograph fixture)

TINY = ("--patch-px", "16", "--pixel-mm", "1.5", "--width", "32", "--depth", "1",
        "--heads", "2")
FAST = ("--batch-size", "4", "--checkpoint-every", "0", "--validate-every", "0",
        "--val-samples", "2", "--warmup-steps", "1")


@pytest.fixture(scope="module")
def chest_pngs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Six 96² display radiographs of three patients (NIH-style names)."""
    tmp_path = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:96] / 96.0
    paths = []
    for i in range(6):
        image = 0.5 + 0.3 * np.sin(3 * xx + i) * np.cos(2 * yy) + rng.normal(0, 0.02, xx.shape)
        path = tmp_path / "imgs" / f"0000{i // 2}_00{i % 2}.png"
        path.parent.mkdir(exist_ok=True)
        write_radiograph(path, Radiograph(np.clip(image, 0, 1).astype(np.float32), (0.5, 0.5),
                                          "display"))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def model_dir(chest_pngs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained 3 steps by the command (one per module)."""
    out = tmp_path_factory.mktemp("model") / "dit"
    result = run_cli("train-synth", "--images", str(chest_pngs[0].parent), *TINY, *FAST,
                     "--steps", "3", "--val-fraction", "0.3", "-o", str(out))
    assert result.returncode == 0, result.stderr.decode()
    return out


def test_train_synth_writes_a_model_folder(model_dir: Path) -> None:
    assert {"config.json", "diffusion_pytorch_model.safetensors", "run.json"} <= {
        p.name for p in model_dir.iterdir()}
    run = json.loads((model_dir / "run.json").read_text())
    assert run["kind"] == "synth-dit" and run["stage"] == "pretrain"
    assert run["command"].startswith("cxrkit train-synth --images")
    assert run["steps_done"] == 3 and run["synth_dit"]["patch_px"] == 16
    assert set(run["validation"]) >= {"loss", "mse_1step", "mse_sampled", "mse_mean_fill",
                                      "mse_blur_fill"}
    assert len(run["data"]["images_validation"]) == 2  # one of three patients, two images
    assert not set(run["data"]["images"]) & set(run["data"]["images_validation"])
    assert json.loads((model_dir / "config.json").read_text())["kind"] == "synth-dit"


def test_synth_diffusion_records_eval_reads_and_context_untouched(
        model_dir: Path, cxr: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "out"
    args = ("synth", "-e", "diffusion", str(cxr), "--model", str(model_dir), "--pixel-mm", "1",
            "--diameter-mm", "6:9", "-n", "2", "--negatives", "--steps", "2")
    result = run_cli(*args, "-o", str(out))
    assert result.returncode == 0, result.stderr.decode()
    recs = records(result.stdout)
    assert [r["id"] for r in recs] == ["cxr_s000", "cxr_s001", "cxr_neg"]
    original = read_radiograph(cxr).pixels
    for rec in recs[:2]:
        image = read_radiograph(rec["path"]).pixels
        mask = read_radiograph(rec["mask"]).pixels > 0.5
        assert mask.any() and rec["boxes"][0]["label"] == "nodule"
        assert np.array_equal(image[~mask], original[~mask])  # bit for bit, as read by cxrkit
        assert not np.array_equal(image[mask], original[mask])
        assert rec["synth"]["engine"] == "diffusion"
        options = rec["synth"]["options"]
        assert options["model_sha256"] and options["steps"] == 2
        assert options["mask_condition"] == "soft" and rec["thickness"]
    assert np.array_equal(read_radiograph(recs[2]["path"]).pixels, original)
    for rec in recs:  # a perfect detector, fed straight to eval
        rec["detections"] = [{**b, "score": 0.9} for b in rec["boxes"]]
    evaluated = run_cli("eval", "--json", "--bootstrap", "0",
                        stdin="".join(json.dumps(r) + "\n" for r in recs))
    assert evaluated.returncode == 0, evaluated.stderr.decode()
    assert '"auc":1.0' in evaluated.stdout.decode().replace(" ", "")
    again = run_cli(*args, "-o", str(tmp_path / "again"))  # same seed, same pixels
    for a, b in zip(recs, records(again.stdout), strict=True):
        assert np.array_equal(read_radiograph(a["path"]).pixels,
                              read_radiograph(b["path"]).pixels)


def test_sizes_beyond_the_window_are_drawn_again(model_dir: Path, cxr: Path,  # noqa: F811
                                                 tmp_path: Path) -> None:
    """A size range wider than the model's window (here 24 mm) never fails a sample: nodules
    are drawn again until one fits, the same ones for the same seed."""
    args = ("synth", "-e", "diffusion", str(cxr), "--model", str(model_dir), "--pixel-mm", "1",
            "--diameter-mm", "4:60", "--shape", "ellipsoid", "-n", "8", "--steps", "1")
    result = run_cli(*args, "-o", str(tmp_path / "a"))
    assert result.returncode == 0, result.stderr.decode()
    recs = records(result.stdout)
    sizes = [r["nodule"]["characteristics"]["diameter_mm"] for r in recs]
    assert len(recs) == 8 and max(sizes) < 24
    again = records(run_cli(*args, "-o", str(tmp_path / "b")).stdout)
    assert [r["nodule"]["characteristics"]["diameter_mm"] for r in again] == sizes


def test_train_synth_v_prediction(chest_pngs: list[Path], tmp_path: Path) -> None:
    result = run_cli("train-synth", "--images", str(chest_pngs[0].parent), *TINY, *FAST,
                     "--prediction", "v", "--steps", "2", "-o", str(tmp_path / "v"))
    assert result.returncode == 0, result.stderr.decode()
    run = json.loads((tmp_path / "v" / "run.json").read_text())
    assert run["synth_dit"]["prediction"] == "v"
    assert run["loss"]["timestep_weighting"] == "x0"  # the default, whatever the prediction
    assert json.loads((tmp_path / "v" / "config.json").read_text())["prediction"] == "v"
    bad = run_cli("train-synth", "--images", str(chest_pngs[0].parent), "--prediction", "eps",
                  "-o", str(tmp_path / "e"))
    assert bad.returncode == 2 and b"prediction" in bad.stderr and not (tmp_path / "e").exists()


def test_finetune_from_synth_records(model_dir: Path, cxr: Path,  # noqa: F811
                                     tmp_path: Path) -> None:
    blend = run_cli("synth", "-e", "blend", str(cxr), "--pixel-mm", "1", "--diameter-mm", "6:9",
                    "-n", "3", "-o", str(tmp_path / "blend"))
    assert blend.returncode == 0, blend.stderr.decode()
    (tmp_path / "blend.jsonl").write_bytes(blend.stdout)
    from cxrkit.synthdit import nodule_patches
    from cxrkit.synthdit.data import ATTRIBUTE_KEYS, SOFT_FLOOR, NodulePatches

    patches = nodule_patches(records(blend.stdout), 16, 1.5)
    assert len(patches) == 3
    for patch in patches:  # soft: thickness inside the silhouette, floored; 0 outside
        inside = patch.mask[patch.mask > 0]
        assert inside.min() >= SOFT_FLOOR and inside.max() == 1 and (inside < 1).any()
        assert patch.attributes["texture"] in ("solid", "part-solid", "ground-glass")
        assert patch.group == "cxr.png"  # the background radiograph's patient (no "_")
    sample = NodulePatches(patches).sample(np.random.default_rng(0))
    assert sample["attributes"].shape == (len(ATTRIBUTE_KEYS),)
    assert not np.isnan(sample["attributes"][0].item())  # calcified is known
    out = tmp_path / "ft"
    result = run_cli("train-synth", "--stage", "finetune", "--records",
                     str(tmp_path / "blend.jsonl"), "--init", str(model_dir), *FAST,
                     "--steps", "2", "-o", str(out))
    assert result.returncode == 0, result.stderr.decode()
    run = json.loads((out / "run.json").read_text())
    assert run["stage"] == "finetune" and run["init"]["sha256"]
    assert run["data"]["patches"] == 3 and run["synth_dit"]["patch_px"] == 16
    assert {"calcified", "texture"} <= set(run["data"]["characteristics"][0])
    # --init keeps its architecture: giving one is a usage error
    bad = run_cli("train-synth", "--stage", "finetune", "--records",
                  str(tmp_path / "blend.jsonl"), "--init", str(model_dir), "--width", "64",
                  "-o", str(tmp_path / "x"))
    assert bad.returncode == 2 and b"--width" in bad.stderr
    # the loss's weighting over timesteps is an option (recorded)
    weighted = run_cli("train-synth", "--stage", "finetune", "--records",
                       str(tmp_path / "blend.jsonl"), "--init", str(model_dir), *FAST,
                       "--loss-weighting", "v", "--steps", "2", "-o", str(tmp_path / "w"))
    assert weighted.returncode == 0, weighted.stderr.decode()
    run = json.loads((tmp_path / "w" / "run.json").read_text())
    assert run["loss"]["timestep_weighting"] == "v" and run["loss"]["v_weight_cap"] == 100
    assert run["synth_dit"]["prediction"] == "x0"
    unknown = run_cli("train-synth", "--stage", "finetune", "--records",
                      str(tmp_path / "blend.jsonl"), "--init", str(model_dir),
                      "--loss-weighting", "eps", "-o", str(tmp_path / "z"))
    assert unknown.returncode == 2 and b"--loss-weighting" in unknown.stderr


def test_diffusion_engine_usage_errors(cxr: Path, tmp_path: Path) -> None:  # noqa: F811
    wrong = run_cli("synth", "-e", "blend", str(cxr), "--steps", "3", "-o", str(tmp_path / "o"))
    assert wrong.returncode == 2 and b"-e diffusion" in wrong.stderr
    bad = run_cli("synth", "-e", "diffusion", str(cxr), "--model", str(tmp_path), "--sampler",
                  "euler", "-o", str(tmp_path / "o"))
    assert bad.returncode == 2 and b"--sampler" in bad.stderr
    not_model = run_cli("synth", "-e", "diffusion", str(cxr), "--model", str(tmp_path),
                        "-o", str(tmp_path / "o"))
    assert not_model.returncode == 1 and b"synth-dit" in not_model.stderr


def test_sampler_names_match_the_diffusion_floor() -> None:
    from cxrkit.cli.synth import SAMPLER_NAMES
    from cxrkit.diffusion import SAMPLERS

    assert tuple(SAMPLERS) == SAMPLER_NAMES


def _distance(shape: tuple[int, int], center_rc: tuple[int, int]) -> np.ndarray:
    """Each pixel's distance to ``center_rc``."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return np.hypot(yy - center_rc[0], xx - center_rc[1])


def test_synth_diffusion_nodule_mask_binary_and_soft(
        model_dir: Path, cxr: Path, tmp_path: Path) -> None:  # noqa: F811
    import tifffile
    from PIL import Image

    original = read_radiograph(cxr).pixels
    r = _distance(original.shape, (60, 38))
    binary = tmp_path / "binary.png"  # 0/1 uint8, as many tools write masks
    Image.fromarray((r <= 4).astype(np.uint8)).save(binary)
    Image.fromarray(((r <= 4) * 255).astype(np.uint8)).save(tmp_path / "b255.png")
    soft = tmp_path / "soft.tiff"  # a dome: thickness over its maximum
    tifffile.imwrite(soft, np.sqrt(np.clip(1 - (r / 5) ** 2, 0, 1)).astype(np.float32))
    evaluated: list[dict] = []
    for path, kind in ((binary, "binary"), (tmp_path / "b255.png", "binary"), (soft, "soft")):
        out = tmp_path / path.stem
        result = run_cli("synth", "-e", "diffusion", str(cxr), "--model", str(model_dir),
                         "--pixel-mm", "1", "--nodule-mask", str(path), "-n", "2",
                         "--negatives", "--steps", "2", "-o", str(out))
        assert result.returncode == 0, result.stderr.decode()
        recs = records(result.stdout)
        expected = (r <= 4) if kind == "binary" else (r < 5)
        for rec in recs[:2]:
            image = read_radiograph(rec["path"]).pixels
            mask = read_radiograph(rec["mask"]).pixels > 0.5
            assert np.array_equal(mask, expected)
            assert np.array_equal(image[~mask], original[~mask])  # bit for bit outside
            assert not np.array_equal(image[mask], original[mask])
            rows, cols = np.nonzero(expected)
            box = rec["boxes"][0]
            assert (box["x1"], box["y1"], box["x2"], box["y2"]) == (
                cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
            assert rec["nodule"]["source"]["kind"] == "mask"
            assert rec["nodule"]["source"]["values"] == kind
            assert rec["nodule"]["source"]["path"] == str(path)
            assert rec["nodule"]["center_px"] == [38.0, 60.0]
            assert 7 < rec["nodule"]["characteristics"]["diameter_mm"] < 11
            assert rec["synth"]["options"]["mask_condition"] == kind
            assert rec["synth"]["options"]["source"] == "mask"
            assert "thickness" not in rec
        assert not np.array_equal(read_radiograph(recs[0]["path"]).pixels,
                                  read_radiograph(recs[1]["path"]).pixels)
        assert np.array_equal(read_radiograph(recs[2]["path"]).pixels, original)
        evaluated += recs
    for rec in evaluated:
        rec["detections"] = [{**b, "score": 0.9} for b in rec["boxes"]]
    result = run_cli("eval", "--json", "--bootstrap", "0",
                     stdin="".join(json.dumps(r) + "\n" for r in evaluated))
    assert result.returncode == 0, result.stderr.decode()
    assert '"auc":1.0' in result.stdout.decode().replace(" ", "")
    # the soft profile conditions the model: as a silhouette, the same seed paints otherwise
    flat = run_cli("synth", "-e", "diffusion", str(cxr), "--model", str(model_dir),
                   "--pixel-mm", "1", "--nodule-mask", str(soft), "--mask-condition", "binary",
                   "--steps", "2", "-o", str(tmp_path / "flat"))
    assert flat.returncode == 0, flat.stderr.decode()
    flat_rec = records(flat.stdout)[0]
    assert flat_rec["synth"]["options"]["mask_condition"] == "binary"
    soft_rec = next(r for r in evaluated if r["id"] == "cxr_s000" and "soft" in r["path"])
    assert not np.array_equal(read_radiograph(flat_rec["path"]).pixels,
                              read_radiograph(soft_rec["path"]).pixels)
    # {id} template: the mask of each input
    (tmp_path / "cxr.mask.png").write_bytes(binary.read_bytes())
    templ = run_cli("synth", "-e", "diffusion", str(cxr), "--model", str(model_dir),
                    "--pixel-mm", "1", "--nodule-mask", str(tmp_path / "{id}.mask.png"),
                    "--steps", "2", "-o", str(tmp_path / "templ"))
    assert templ.returncode == 0, templ.stderr.decode()
    assert records(templ.stdout)[0]["nodule"]["source"]["path"] == str(
        tmp_path / "cxr.mask.png")


def test_synth_diffusion_bad_nodule_masks(model_dir: Path, cxr: Path,  # noqa: F811
                                          tmp_path: Path) -> None:
    import tifffile
    from PIL import Image

    Image.fromarray(np.zeros((128, 128), np.uint8)).save(tmp_path / "empty.png")
    Image.fromarray(np.pad(np.ones((4, 4), np.uint8), 30)).save(tmp_path / "small.png")
    nan = np.zeros((128, 128), np.float32)
    nan[60:64, 40:44], nan[0, 0] = 0.5, np.nan
    tifffile.imwrite(tmp_path / "nan.tiff", nan)
    over = np.zeros((128, 128), np.float32)
    over[60:64, 40:44] = [2.0, 1.0, 0.5, 0.2]
    tifffile.imwrite(tmp_path / "over.tiff", over)
    base = ("synth", "-e", "diffusion", str(cxr), "--model", str(model_dir), "--pixel-mm", "1",
            "--steps", "2")
    for name, code, word in (("empty.png", 2, b"empty"), ("nan.tiff", 2, b"NaN"),
                             ("over.tiff", 2, b"[0, 1]"), ("missing.png", 2, b"no such file"),
                             ("small.png", 1, b"64x64")):
        out = tmp_path / f"out-{name}"
        result = run_cli(*base, "--nodule-mask", str(tmp_path / name), "-o", str(out))
        assert result.returncode == code, (name, result.stderr.decode())
        assert len(result.stderr.splitlines()) == 1 and word in result.stderr, name
        assert b"--nodule-mask" in result.stderr or code == 1
        assert not result.stdout.strip() and not list(out.glob("*.*")), name
    # per input ({id}): the same errors are exit 1 per item
    templ = run_cli(*base, "--nodule-mask", str(tmp_path / "{id}-none.png"),
                    "-o", str(tmp_path / "t"))
    assert templ.returncode == 1 and b"no such file" in templ.stderr
    assert len(templ.stderr.splitlines()) == 1 and not list((tmp_path / "t").glob("*.*"))
    for extra in (("--center-px", "40,60"), ("--subtlety", "3"), ("--source", "luna16")):
        clash = run_cli(*base, "--nodule-mask", str(tmp_path / "small.png"), *extra,
                        "-o", str(tmp_path / "c"))
        assert clash.returncode == 2 and extra[0].encode() in clash.stderr, extra
    blend = run_cli("synth", "-e", "blend", str(cxr), "--nodule-mask",
                    str(tmp_path / "small.png"), "-o", str(tmp_path / "b"))
    assert blend.returncode == 2 and b"-e diffusion" in blend.stderr


def test_the_shipped_model_paints_without_model_option(cxr: Path, tmp_path: Path  # noqa: F811
                                                       ) -> None:
    """What a new user runs: the shipped model, no --model; records eval reads, context
    untouched, and the shipped run.json's validation beats the fill baselines."""
    from cxrkit.files import file_sha256
    from cxrkit.synth.diffusion import default_model_dir

    shipped = default_model_dir()
    run = json.loads((shipped / "run.json").read_text())
    check = run["validation"]
    assert check["mse_1step"] < check["mse_blur_fill"] < check["mse_mean_fill"]
    assert run["stage"] == "finetune" and run["realism"]["nodules"] > 0
    assert (shipped / "diffusion_pytorch_model.safetensors").stat().st_size <= 20 * 2**20
    result = run_cli("synth", "-e", "diffusion", str(cxr), "--diameter-mm", "8:14", "-n", "2",
                     "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr.decode()
    original = read_radiograph(cxr).pixels
    for rec in records(result.stdout):
        image = read_radiograph(rec["path"]).pixels
        mask = read_radiograph(rec["mask"]).pixels > 0.5
        assert np.array_equal(image[~mask], original[~mask])
        assert not np.array_equal(image[mask], original[mask])
        options = rec["synth"]["options"]
        assert options["model"] == "default"
        assert options["model_sha256"] == file_sha256(
            shipped / "diffusion_pytorch_model.safetensors")
