"""`cxrkit enhance` and `cxrkit train-enhance` end to end: records, files, errors, pipes, model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cxrkit.enhancer import Enhancer, EnhancerSettings, bicubic_enhance, default_model_dir
from cxrkit.errors import InputError, ModelError
from cxrkit.io import Radiograph, read_radiograph, write_radiograph
from tests.test_cli import run_cli, runner


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def invoke(*args: str, stdin: str | None = None) -> Any:
    """The command in-process (fast: torch is already imported); stdout and stderr apart."""
    from cxrkit.cli import app

    return runner.invoke(app, list(args), input=stdin)


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    """An untrained ×2 enhancer with UNet widths (8, 16), saved as a model folder."""
    settings = EnhancerSettings(scale=2, block_out_channels=(8, 16), default_steps=2)
    folder = tmp_path / "tiny-model"
    Enhancer.new(settings, generator=torch.Generator().manual_seed(0)).save_pretrained(folder)
    return folder


def test_bicubic_writes_a_twice_larger_image_and_keeps_the_reference(
        radiograph_path: Path, tmp_path: Path) -> None:
    rec = {"id": "cxr", "path": str(radiograph_path), "reference": "hq.png",
           "spacing_mm": [0.5, 0.5], "degrade": {"seed": 1}}
    result = invoke("enhance", "--method", "bicubic", "-o", str(tmp_path / "out"),
                    stdin=json.dumps(rec) + "\n")
    assert result.exit_code == 0, result.output
    (new,) = records(result.stdout)
    assert new["reference"] == "hq.png" and new["degrade"] == {"seed": 1}
    assert new["spacing_mm"] == [0.25, 0.25] and new["path"].endswith("cxr_enh.tiff")
    assert new["enhance"]["options"] == {"method": "bicubic", "scale": 2}
    image = read_radiograph(new["path"])
    assert image.pixels.shape == (128, 128) and image.meta["enhance"] == new["enhance"]


def test_diffusion_with_a_model_folder_is_deterministic(radiograph_path: Path,
                                                        tiny_model_dir: Path,
                                                        tmp_path: Path) -> None:
    outs = []
    for name in ("a", "b"):
        result = invoke("enhance", str(radiograph_path), "--model", str(tiny_model_dir),
                        "--sampler", "dpmpp", "--tile", "64", "--overlap", "16", "--seed", "3",
                        "-f", "png", "-o", str(tmp_path / name))
        assert result.exit_code == 0, result.output
        (rec,) = records(result.stdout)
        outs.append(read_radiograph(rec["path"]).pixels)
    opts = rec["enhance"]["options"]
    assert opts["steps"] == 2 and opts["sampler"] == "dpmpp" and opts["scale"] == 2
    assert opts["keep_black"] == 0.001
    assert len(rec["enhance"]["model"]) == 64 and rec["enhance"]["seed"] == 3
    assert outs[0].shape == (128, 128) and np.array_equal(outs[0], outs[1])


def test_black_borders_stay_black_unless_no_keep_black(tiny_model_dir: Path,
                                                       tmp_path: Path) -> None:
    pixels = np.zeros((64, 64), np.float32)
    pixels[:, 16:] = 0.5  # a black collimation band down the left side
    write_radiograph(tmp_path / "cxr.tiff", Radiograph(pixels), record={"id": "cxr"})
    outs = {}
    for flag in ("--keep-black", "--no-keep-black"):
        result = invoke("enhance", str(tmp_path / "cxr.tiff"), "--model", str(tiny_model_dir),
                        flag, "-o", str(tmp_path / flag))
        assert result.exit_code == 0, result.output
        (rec,) = records(result.stdout)
        outs[flag] = read_radiograph(rec["path"]).pixels
    assert rec["enhance"]["options"]["keep_black"] is None
    band = (slice(None), slice(0, 28))  # output columns whose input neighbourhood is all black
    assert not outs["--keep-black"][band].any()
    assert outs["--no-keep-black"][band].max() > 1e-3  # the untrained model lifts black
    np.testing.assert_array_equal(outs["--keep-black"][:, 36:], outs["--no-keep-black"][:, 36:])


def test_the_record_says_what_the_tone_gate_decided(tiny_model_dir: Path,
                                                   radiograph_path: Path,
                                                   tmp_path: Path) -> None:
    from cxrkit.enhancer.model import ToneGate

    tiny = Enhancer.from_pretrained(tiny_model_dir)
    gate = ToneGate()
    gate.linear.bias.data.fill_(50.0)  # sees a tone change in every input
    tiny.with_tone_gate(gate, 4.0).with_route(tiny).save_pretrained(tmp_path / "routed")
    for flag, expected in (("--tone-anchor", {"tone_change": True, "route": True}),
                           ("--no-tone-anchor", None)):
        result = invoke("enhance", str(radiograph_path), "--model", str(tmp_path / "routed"),
                        flag, "-o", str(tmp_path / flag))
        assert result.exit_code == 0, result.output
        (rec,) = records(result.stdout)
        assert rec["enhance"]["options"].get("tone_gate") == expected


def test_errors_exit_1_with_one_line(radiograph_path: Path, tmp_path: Path,
                                     tiny_model_dir: Path) -> None:
    result = run_cli("enhance", str(radiograph_path), "--model", str(tmp_path))  # real exit code
    assert result.returncode == 1
    assert "not a cxrkit enhancer" in result.stderr.decode()
    result = invoke("enhance", str(radiograph_path), "--model", str(tiny_model_dir),
                    "--scale", "1", "-o", str(tmp_path / "o"))
    assert isinstance(result.exception, InputError) and "×2, not ×1" in str(result.exception)
    assert invoke("enhance", str(radiograph_path), "--sampler", "euler").exit_code == 2


def test_train_enhance_writes_a_model_that_enhance_uses(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:64, 0:64] / 63.0
    for name in ("00000001_000", "00000001_001", "00000002_000", "00000003_000"):
        pixels = np.clip(0.4 + 0.3 * np.sin(rng.uniform(2, 5) * x) * y, 0, 1).astype(np.float32)
        write_radiograph(tmp_path / "hq" / f"{name}.png", Radiograph(pixels), record={})
    model = tmp_path / "model"
    result = invoke("train-enhance", str(tmp_path / "hq"), "--steps", "3", "--batch-size", "2",
                    "--crop", "32", "--channels", "8,16", "--val-fraction", "0.3",
                    "--val-crop", "32", "--validate-every", "0", "--checkpoint-every", "2",
                    "-o", str(model))
    assert result.exit_code == 0, result.output
    assert "step 3 loss" in result.stderr
    run = json.loads((model / "run.json").read_text())
    assert run["command"].startswith("cxrkit") and run["validation"]["count"] >= 1
    val, train = set(run["data"]["validation"]), set(run["data"]["train"])
    assert val and train and {n[:8] for n in val}.isdisjoint(n[:8] for n in train)  # by patient
    assert [p.name for p in (model / "checkpoints").iterdir()] == ["checkpoint-2"]
    result = invoke("enhance", str(tmp_path / "hq" / "00000002_000.png"), "--model", str(model),
                    "--steps", "1", "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output


def test_degrade_enhance_eval_pipeline(radiograph_path: Path, tiny_model_dir: Path,
                                       tmp_path: Path) -> None:
    degraded = invoke("degrade", str(radiograph_path), "--preset", "drr-like", "--scale", "2",
                      "-o", str(tmp_path / "lq"))
    assert degraded.exit_code == 0, degraded.output
    enhanced = invoke("enhance", "--model", str(tiny_model_dir), "-o", str(tmp_path / "hq"),
                      stdin=degraded.stdout)
    assert enhanced.exit_code == 0, enhanced.output
    (rec,) = records(enhanced.stdout)
    assert rec["reference"] == str(radiograph_path) and "degrade" in rec and "enhance" in rec
    scored = invoke("eval", "--json", stdin=enhanced.stdout)
    assert scored.exit_code == 0, scored.output
    assert "psnr" in scored.stdout


@pytest.mark.realdata
def test_default_model_enhances_a_real_radiograph(shared_data: Path) -> None:
    from cxrkit.degrade import degrade
    from cxrkit.enhancer import enhance
    from cxrkit.metrics import psnr

    folder = default_model_dir()
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size < 20e6
    run = json.loads((folder / "run.json").read_text())
    assert run["command"].startswith("cxrkit train-enhance") and "psnr_gain" in run["validation"]
    model = Enhancer.from_pretrained(folder)
    hq = read_radiograph(sorted((shared_data / "nih-cxr14" / "images").glob("*.png"))[0]).pixels
    hq = hq[256:768, 256:768]  # a 512² crop keeps the test fast; the model is convolutional
    lq = degrade(hq, "drr-like", scale=2, generator=np.random.default_rng(0)).image
    out = enhance(model, lq, steps=1, generator=torch.Generator().manual_seed(0))
    bicubic = bicubic_enhance(lq, 2)
    assert out.shape == hq.shape and np.isfinite(out).all()
    assert psnr(out, hq) > psnr(bicubic, hq), (psnr(out, hq), psnr(bicubic, hq))


@pytest.mark.realdata
def test_keeping_black_raises_the_default_models_ssim_on_held_out_radiographs(
        shared_data: Path) -> None:
    from cxrkit.degrade import degrade
    from cxrkit.enhancer import enhance
    from cxrkit.metrics import psnr, ssim

    folder = default_model_dir()
    model = Enhancer.from_pretrained(folder)
    held_out = [read_radiograph(shared_data / "nih-cxr14" / "images" / name).pixels
                for name in json.loads((folder / "run.json").read_text())["data"]["validation"]]
    gains = []
    # of patients it never saw, the two with the most black border; their blackest 512² quadrant
    for image in sorted(held_out, key=lambda image: -int((image == 0).sum()))[:2]:
        hq = max((image[y : y + 512, x : x + 512] for y in (0, 512) for x in (0, 512)),
                 key=lambda quadrant: int((quadrant == 0).sum()))
        lq = degrade(hq, "drr-like", scale=2, generator=np.random.default_rng(0)).image
        kept, raw = (enhance(model, lq, generator=torch.Generator().manual_seed(0),
                             keep_black=level) for level in (1e-3, None))
        assert psnr(kept, hq) >= psnr(raw, hq)
        gains.append(ssim(kept, hq) - ssim(raw, hq))
    assert min(gains) > 0.01, gains  # measured +0.033 and +0.023


def _write_patients(folder: Path, *, size: int, seed: int) -> None:
    """Three smooth ``size``² PNG radiographs of three NIH-named patients."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / (size - 1.0)
    for name in ("00000001_000", "00000002_000", "00000003_000"):
        pixels = np.clip(0.4 + 0.3 * np.cos(rng.uniform(2, 5) * y) * x, 0, 1).astype(np.float32)
        write_radiograph(folder / f"{name}.png", Radiograph(pixels), record={})


def test_train_enhance_fine_tunes_from_a_model_and_records_it(tiny_model_dir: Path,
                                                              tmp_path: Path) -> None:
    _write_patients(tmp_path / "hq", size=64, seed=1)
    model = tmp_path / "tuned"
    result = invoke("train-enhance", str(tmp_path / "hq"), "--init", str(tiny_model_dir),
                    "--ssim-weight", "5", "--steps", "2", "--batch-size", "2", "--crop", "32",
                    "--val-fraction", "0.3", "--val-crop", "0", "--validate-every", "0",
                    "--checkpoint-every", "0", "--seed", "5", "--preset", "broad",
                    "--reference-tone", "0.5", "-o", str(model))
    assert result.exit_code == 0, result.output
    run = json.loads((model / "run.json").read_text())
    assert run["pairs"]["preset"] == "broad" and run["pairs"]["reference_tone"] == 0.5
    # the held-out patients follow --split-seed (0), not the training seed
    from cxrkit.data.splits import split_by_patient

    paths = sorted((tmp_path / "hq").glob("*.png"))
    held = {paths[i].name for i in split_by_patient(paths, 0.3, seed=0)[1]}
    assert set(run["data"]["validation"]) == held
    start = tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors"
    assert run["init"]["weights_sha256"] == hashlib.sha256(start.read_bytes()).hexdigest()
    assert run["loss"]["ssim_weight"] == 5.0 and run["validation"]["count"] >= 1
    assert "_name_or_path" not in json.loads((model / "unet" / "config.json").read_text())
    tuned = Enhancer.from_pretrained(model)
    assert tuned.settings.block_out_channels == (8, 16)  # the architecture of --init
    bad = invoke("train-enhance", str(tmp_path / "hq"), "--init", str(tmp_path / "hq"),
                 "-o", str(tmp_path / "x"))
    assert isinstance(bad.exception, ModelError) and "not a cxrkit enhancer" in str(bad.exception)
    assert not (tmp_path / "x").exists()


def test_fine_tuning_a_routed_model_trains_neither_its_gate_nor_its_route(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    from cxrkit.enhancer.model import ToneGate

    tiny = Enhancer.from_pretrained(tiny_model_dir)
    gate = ToneGate()
    gate.linear.bias.data.fill_(-50.0)  # no input is routed: only the main model trains
    routed = tiny.with_tone_gate(gate, 4.0).with_route(tiny)
    routed.save_pretrained(tmp_path / "routed")
    _write_patients(tmp_path / "hq", size=64, seed=1)
    result = invoke("train-enhance", str(tmp_path / "hq"), "--init", str(tmp_path / "routed"),
                    "--context-channels", "4,8", "--steps", "2",
                    "--batch-size", "2", "--crop", "32", "--lr", "1e-2", "--val-fraction", "0",
                    "--validate-every", "0", "--checkpoint-every", "0", "-o", str(tmp_path / "t"))
    assert result.exit_code == 0, result.output
    tuned = Enhancer.from_pretrained(tmp_path / "t")
    assert tuned.route is not None and tuned.tone_gate is not None
    assert tuned.context is not None
    for a, b in zip(tuned.route.parameters(), tiny.parameters(), strict=True):
        assert torch.equal(a, b.half().float())  # train-enhance writes fp16 weights
    assert torch.equal(tuned.tone_gate.linear.bias, gate.linear.bias)
    assert not all(torch.equal(a, b) for a, b in zip(tuned.unet.parameters(),
                                                      tiny.unet.parameters(), strict=True))
    from cxrkit.enhancer.training import fine_tune_start

    start = fine_tune_start(tmp_path / "routed", 2, (4, 8),
                            generator=torch.Generator().manual_seed(0))
    assert start.context is not None and start.route is not None and start.tone_gate is not None
    assert all(p.requires_grad for p in [*start.unet.parameters(), *start.context.parameters()])
    assert not any(p.requires_grad for p in [*start.route.parameters(),
                                             *start.tone_gate.parameters()])


def test_train_enhance_time_limit_stops_writes_the_model_and_exits_3(tiny_model_dir: Path,
                                                                    tmp_path: Path) -> None:
    _write_patients(tmp_path / "hq", size=64, seed=1)
    model = tmp_path / "cut"
    args = ("train-enhance", str(tmp_path / "hq"), "--init", str(tiny_model_dir), "--steps", "3",
            "--batch-size", "2", "--crop", "32", "--val-fraction", "0.3", "--val-crop", "0",
            "--validate-every", "0", "--checkpoint-every", "0", "-o", str(model))
    result = invoke(*args, "--time-limit", "0.000001s")
    assert result.exit_code == 3, result.output
    assert "stopped at step 1 (time limit)" in result.stderr and "--resume latest" in result.stderr
    run = json.loads((model / "run.json").read_text())
    assert (run["stopped"], run["steps_done"]) == ("time limit", 1)
    assert run["config"]["time_limit_s"] == 1e-6
    assert Enhancer.from_pretrained(model).settings.block_out_channels == (8, 16)
    result = invoke(*args, "--resume", "latest")
    assert result.exit_code == 0, result.output
    run = json.loads((model / "run.json").read_text())
    assert (run["stopped"], run["steps_done"], run["resumed_at_step"]) == (None, 3, 1)
    bad = invoke(*args, "--time-limit", "soon")
    assert bad.exit_code == 2 and "not a duration" in bad.output


@pytest.mark.parametrize(("text", "seconds"), [("5400", 5400.0), ("90m", 5400.0),
                                               ("1h30m", 5400.0), ("2h", 7200.0),
                                               ("45s", 45.0), ("1.5h", 5400.0)])
def test_durations(text: str, seconds: float) -> None:
    from cxrkit.cli._options import parse_duration

    assert parse_duration(text) == seconds and parse_duration(None) == 0.0


def test_train_enhance_adds_an_encoder_and_focuses_on_one_step(tiny_model_dir: Path,
                                                               tmp_path: Path) -> None:
    _write_patients(tmp_path / "hq", size=96, seed=2)
    model = tmp_path / "tuned"
    result = invoke("train-enhance", str(tmp_path / "hq"), "--init", str(tiny_model_dir),
                    "--context-channels", "4,8,8", "--sampler-steps", "1", "--zero-start",
                    "--ssim-weight", "1",
                    "--lr-schedule", "cosine", "--steps", "3", "--batch-size", "2", "--crop", "32",
                    "--val-fraction", "0.3", "--val-crop", "0", "--validate-every", "0",
                    "--checkpoint-every", "0", "-o", str(model))
    assert result.exit_code == 0, result.output
    run = json.loads((model / "run.json").read_text())
    assert run["loss"]["timesteps"] == [999] and run["config"]["lr_schedule"] == "cosine"
    tuned = Enhancer.from_pretrained(model)
    assert tuned.settings.default_steps == 1 and tuned.settings.context_channels == (4, 8, 8)
    assert tuned.settings.trained_steps == 1 and tuned.settings.zero_start
    assert run["loss"]["zero_start"] is True
    assert tuned.context is not None
    assert any(p.abs().sum() > 0 for p in tuned.context.head[-1].parameters())  # it trained
    out = tmp_path / "out.tif"
    enhanced = invoke("enhance", str(tmp_path / "hq" / "00000001_000.png"), "--model", str(model),
                      "-o", str(out))
    assert enhanced.exit_code == 0, enhanced.output
    assert read_radiograph(out).pixels.shape == (192, 192)
    assert "trained for 1-step" not in enhanced.output
    off_path = invoke("enhance", str(tmp_path / "hq" / "00000001_000.png"), "--model", str(model),
                      "--steps", "4", "-o", str(tmp_path / "four.tif"))
    assert off_path.exit_code == 0 and "trained for 1-step DDIM sampling" in off_path.output
    bad = invoke("train-enhance", str(tmp_path / "hq"), "--context-channels", "4,x",
                 "-o", str(tmp_path / "y"))
    assert bad.exit_code == 2 and not (tmp_path / "y").exists()


def test_steps_beyond_the_training_timesteps_is_one_usage_line(radiograph_path: Path,
                                                               tiny_model_dir: Path,
                                                               tmp_path: Path) -> None:
    """diffusers would raise a multi-line ValueError; enhance says it in one line, exit 2."""
    result = invoke("enhance", str(radiograph_path), "--model", str(tiny_model_dir),
                    "--steps", "100000", "-o", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "100000 is more than the 1000 timesteps" in result.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_sampler_refuses_more_steps_than_the_schedule() -> None:
    from cxrkit.diffusion.sampling import make_scheduler, sample
    from cxrkit.errors import InputError

    config = Enhancer.new(EnhancerSettings(block_out_channels=(8, 16)),
                          generator=torch.Generator()).scheduler_config
    with pytest.raises(InputError, match=r"steps must be 1\.\.1000"):
        sample(lambda x, c, t: x, torch.zeros(1, 1, 8, 8),
               scheduler=make_scheduler("ddim", config), steps=100000,
               generator=torch.Generator())
