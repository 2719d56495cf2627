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


def test_diffusion_engine_usage_errors(cxr: Path, tmp_path: Path) -> None:  # noqa: F811
    missing = run_cli("synth", "-e", "diffusion", str(cxr), "-o", str(tmp_path / "o"))
    assert missing.returncode == 2
    assert b"train-synth" in missing.stderr and len(missing.stderr.splitlines()) == 1
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
