"""DDPM-LQ: outputs stay paired with their HQ (SSIM) yet take the LQ domain's fine texture, both
routes train and sample, outputs are seeded and recorded, and other model kinds are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxrkit.data.splits import split_files
from cxrkit.ddpm_lq import (
    ConditionedCrops,
    DdpmDegrader,
    DdpmLQ,
    DdpmLQSettings,
    HeldOut,
    LQCrops,
    StageTwo,
    ddpm_lq_loss,
    degrade_lq,
    train_ddpm_lq,
)
from cxrkit.errors import InputError, ModelError
from cxrkit.metrics import ssim
from cxrkit.train import TrainConfig, train

TINY = DdpmLQSettings(block_out_channels=(16, 32), unshuffle=1, image_size=32,
                      max_train_timestep=500, default_steps=20)


def smooth(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """``(size, size)`` float32 in [0.2, 0.8]: a smooth random pattern (the HQ domain)."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    a, b, c, d = rng.uniform(0.5, 3.0, 4)
    image = 0.5 + 0.2 * np.sin(a * 3 * x + b) * np.cos(c * 2 * y + d) + 0.1 * (x - y)
    return image.astype(np.float32)


def grainy(rng: np.random.Generator) -> np.ndarray:
    """The LQ domain: the same kind of anatomy with a strong fine grain."""
    return np.clip(smooth(rng) + rng.normal(0, 0.08, (32, 32)), 0, 1).astype(np.float32)


def high_frequency_energy(image: np.ndarray) -> float:
    """Mean squared 4-neighbour Laplacian: fine texture and noise."""
    lap = (4 * image[1:-1, 1:-1] - image[:-2, 1:-1] - image[2:, 1:-1] - image[1:-1, :-2]
           - image[1:-1, 2:])
    return float(np.mean(lap.astype(np.float64) ** 2))


def _config(folder: Path, steps: int) -> TrainConfig:
    return TrainConfig(output_dir=str(folder), steps=steps, batch_size=8, lr=2e-3,
                       warmup_steps=10, ema_decay=0.0, checkpoint_every=0, validate_every=0,
                       log_every=1000, seed=0)


def _save(model: torch.nn.Module, folder: Path) -> None:
    model.save_pretrained(folder)  # type: ignore[operator]


@pytest.fixture(scope="module")
def img2img(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny unconditional DDPM trained 200 steps on the grainy domain; its folder."""
    rng = np.random.default_rng(0)
    data = LQCrops([grainy(rng) for _ in range(32)], crop=32)
    model = DdpmLQ.new(TINY, generator=torch.Generator().manual_seed(0))
    folder = tmp_path_factory.mktemp("ddpm")
    train(model, ddpm_lq_loss, data, _config(folder, 200), save_model=_save)
    return folder


def test_img2img_keeps_the_anatomy_and_takes_the_lq_texture(img2img: Path) -> None:
    degrader = DdpmDegrader(img2img, strength=0.25)
    rng = np.random.default_rng(9)
    hq = [smooth(rng) for _ in range(6)]
    lq = [grainy(rng) for _ in range(6)]
    outs = [degrader(x, generator=np.random.default_rng(i)).image for i, x in enumerate(hq)]
    paired = np.mean([ssim(y, x) for x, y in zip(hq, outs, strict=True)])
    unpaired = np.mean([ssim(y, x) for x, y in zip(hq, outs[1:] + outs[:1], strict=True)])
    assert paired > 0.3 and paired > unpaired + 0.2, (paired, unpaired)
    hf_hq, hf_lq, hf_out = (np.mean([high_frequency_energy(im) for im in s])
                            for s in (hq, lq, outs))
    assert abs(hf_out - hf_lq) < 0.5 * abs(hf_hq - hf_lq), (hf_hq, hf_lq, hf_out)


def test_degrader_is_seeded_and_recorded(img2img: Path) -> None:
    degrader = DdpmDegrader(img2img)
    image = smooth(np.random.default_rng(1))
    a = degrader(image, scale=2, generator=np.random.default_rng(3))
    b = degrader(image, scale=2, generator=np.random.default_rng(3))
    c = degrader(image, scale=2, generator=np.random.default_rng(4))
    assert a.image.shape == (16, 16) and a.image.dtype == np.float32
    assert a.image.tobytes() == b.image.tobytes() != c.image.tobytes()
    params = a.params[0]["params"]
    assert a.params[0]["name"] == "ddpm"
    assert params["route"] == "img2img" and params["strength"] == 0.25
    assert params["nfe"] == 5  # 20 steps over the schedule, a quarter of them run
    with pytest.raises(InputError, match="strength"):
        DdpmDegrader(img2img, strength=1.5)


def test_two_stage_with_v_prediction_learns_its_hq_condition(tmp_path: Path) -> None:
    """Stage 2 must use the HQ it is given: generated from pure noise, each output matches its
    own HQ far better than another's (with ε-prediction this tiny run stays near 0.05, the
    reason the CLI's two-stage default is v)."""
    settings = DdpmLQSettings(route="two-stage", block_out_channels=(16, 32), unshuffle=1,
                              image_size=32, max_train_timestep=1000, default_strength=1.0,
                              default_steps=10, prediction_type="v_prediction")
    rng = np.random.default_rng(0)
    real = [grainy(rng) for _ in range(32)]
    hq = [smooth(rng) for _ in range(32)]
    model = DdpmLQ.new(settings, generator=torch.Generator().manual_seed(0))
    stage1 = train(model, ddpm_lq_loss, LQCrops(real, 32), _config(tmp_path / "s1", 50))
    pairs = ConditionedCrops(hq, None, real, 32, preset="drr-like", p_uncond=0.1)
    sample = pairs.sample(np.random.default_rng(1))
    assert sample["lq"].shape == sample["cond"].shape == (1, 32, 32)
    train(stage1.model.requires_grad_(True).train(), ddpm_lq_loss, pairs,
          _config(tmp_path / "s2", 150), save_model=_save)
    model = DdpmLQ.from_pretrained(tmp_path / "s2")
    assert model.settings.conditional
    rng = np.random.default_rng(9)
    test = [smooth(rng) for _ in range(6)]
    outs = [degrade_lq(model, x, strength=1.0, steps=10,
                       generator=torch.Generator().manual_seed(i)) for i, x in enumerate(test)]
    assert all(o.shape == (32, 32) and o.min() >= 0 and o.max() <= 1 for o in outs)
    paired = np.mean([ssim(y, x) for x, y in zip(test, outs, strict=True)])
    unpaired = np.mean([ssim(y, x) for x, y in zip(test, outs[1:] + outs[:1], strict=True)])
    assert paired > 0.5 and paired > unpaired + 0.3, (paired, unpaired)


def _write_domains(folder: Path, hq: int, lq: int) -> tuple[list[Path], list[Path]]:
    """``hq`` smooth images of distinct patients and ``lq`` grainy ones, as display TIFFs."""
    from cxrkit.io import Radiograph, write_radiograph

    rng = np.random.default_rng(0)
    paths: dict[str, list[Path]] = {"hq": [], "lq": []}
    for name, make, count in (("hq", smooth, hq), ("lq", grainy, lq)):
        (folder / name).mkdir()
        for i in range(count):
            path = folder / name / f"{i:04d}_000.tiff"
            write_radiograph(path, Radiograph(make(rng), (1.0, 1.0), "display"),
                             record={"id": f"{i}"})
            paths[name].append(path)
    return paths["hq"], paths["lq"]


def test_split_files_holds_out_a_seeded_share_and_keeps_one_to_train() -> None:
    train_idx, val_idx = split_files(10, 0.2, seed=0)
    assert len(val_idx) == 2 and sorted(train_idx + val_idx) == list(range(10))
    assert split_files(10, 0.2, seed=0) == (train_idx, val_idx) != split_files(10, 0.2, seed=1)
    assert split_files(1, 0.5, seed=0) == ([0], [])
    assert split_files(4, 0.0, seed=0) == ([0, 1, 2, 3], [])
    with pytest.raises(InputError, match="fraction"):
        HeldOut(fraction=1.0)


def test_two_stage_validates_both_stages_on_held_out_data(tmp_path: Path) -> None:
    import json

    hq, lq = _write_domains(tmp_path, hq=5, lq=6)
    settings = DdpmLQSettings(route="two-stage", block_out_channels=(8, 16), unshuffle=1,
                              image_size=32, max_train_timestep=1000, default_strength=1.0,
                              default_steps=4)
    config = TrainConfig(output_dir=str(tmp_path / "model"), steps=2, batch_size=2,
                         ema_decay=0.999, checkpoint_every=0, validate_every=0, seed=0)
    train_ddpm_lq(lq, settings, config, crop=32, stage_two=StageTwo(hq, steps=2),
                  held_out=HeldOut(fraction=0.4, count=2, loss_samples=2))
    stage1 = json.loads((tmp_path / "model" / "stage1" / "run.json").read_text())
    stage2 = json.loads((tmp_path / "model" / "run.json").read_text())
    assert set(stage1["validation"]) == {"loss"}
    assert set(stage2["validation"]) == {"loss", "loss_lq", "ssim_to_hq", "ssim_to_other_hq",
                                         "hf_ratio", "hf_ratio_hq"}
    assert all(np.isfinite(v) for v in stage2["validation"].values())
    assert -1 <= stage2["validation"]["ssim_to_hq"] <= 1
    data = stage2["data"]
    assert len(data["hq_validation"]) == 2 and len(data["lq_validation"]) == 3
    assert not set(data["hq"]) & set(data["hq_validation"])
    assert not set(data["lq"]) & set(data["lq_validation"])
    assert data["validation_on_training_images"] is False


def test_two_stage_stopped_in_either_stage_resumes_to_the_uninterrupted_weights(
        tmp_path: Path) -> None:
    import json

    hq, lq = _write_domains(tmp_path, hq=4, lq=4)
    settings = DdpmLQSettings(route="two-stage", block_out_channels=(8, 16), unshuffle=1,
                              image_size=32, max_train_timestep=1000, default_strength=1.0,
                              default_steps=2, prediction_type="v_prediction")

    def run(out: str, **extra: object) -> object:
        config = TrainConfig(output_dir=str(tmp_path / out), steps=2, batch_size=2,
                             ema_decay=0.9, checkpoint_every=0, validate_every=0, seed=0,
                             **extra)  # type: ignore[arg-type]
        return train_ddpm_lq(lq, settings, config, crop=32, stage_two=StageTwo(hq, steps=2),
                             held_out=HeldOut(fraction=0.0, count=1, loss_samples=1))

    whole = run("whole")
    first = run("cut", time_limit_s=1e-9)  # stops in stage 1 after step 1
    assert (first.stopped, first.steps_done) == ("time limit", 1)  # type: ignore[attr-defined]
    assert not (tmp_path / "cut" / "run.json").exists()
    second = run("cut", time_limit_s=1e-9, resume="latest")  # ends stage 1, stops in stage 2
    assert (second.stopped, second.steps_done) == ("time limit", 1)  # type: ignore[attr-defined]
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["stopped"] == "time limit"
    last = run("cut", resume="latest")  # stage 1 is read back; stage 2 resumes
    assert last.stopped is None  # type: ignore[attr-defined]
    for name, value in whole.model.state_dict().items():  # type: ignore[attr-defined]
        torch.testing.assert_close(last.model.state_dict()[name], value,  # type: ignore[attr-defined]
                                   atol=1e-6, rtol=0)


def test_img2img_given_hq_validates_what_degrade_makes(tmp_path: Path) -> None:
    import json

    hq, lq = _write_domains(tmp_path, hq=3, lq=3)
    config = TrainConfig(output_dir=str(tmp_path / "model"), steps=2, batch_size=2,
                         ema_decay=0.0, checkpoint_every=0, validate_every=0, seed=0)
    train_ddpm_lq(lq, TINY, config, crop=32, hq_paths=hq,
                  held_out=HeldOut(fraction=0.0, loss_samples=2))
    run = json.loads((tmp_path / "model" / "run.json").read_text())
    assert {"loss", "ssim_to_hq", "hf_ratio", "hf_ratio_hq"} <= set(run["validation"])
    assert run["data"]["validation_on_training_images"] is True


def test_wrong_kind_and_unsafe_folders_are_refused(tmp_path: Path) -> None:
    from cxrkit.enhancer import Enhancer, EnhancerSettings
    from cxrkit.munit import Munit, MunitSettings

    Munit(MunitSettings(width=4, image_size=32)).save_pretrained(tmp_path / "munit")
    with pytest.raises(ModelError, match="kind 'munit-lq', not 'ddpm-lq'"):
        DdpmLQ.from_pretrained(tmp_path / "munit")
    Enhancer.new(EnhancerSettings(scale=1, block_out_channels=(8, 16), unshuffle=1),
                 generator=torch.Generator().manual_seed(0)).save_pretrained(tmp_path / "enh")
    with pytest.raises(ModelError, match="kind 'cxrkit-enhancer', not 'ddpm-lq'"):
        DdpmDegrader(tmp_path / "enh")
    model = DdpmLQ.new(TINY, generator=torch.Generator().manual_seed(0))
    model.save_pretrained(tmp_path / "ddpm")
    weights = tmp_path / "ddpm" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(ModelError, match="safetensors"):
        DdpmLQ.from_pretrained(tmp_path / "ddpm")


def test_cli_train_ddpm_lq_then_degrade(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from cxrkit.cli import app
    from cxrkit.io import Radiograph, write_radiograph

    rng = np.random.default_rng(0)
    for name, make in (("hq", smooth), ("lq", grainy)):
        (tmp_path / name).mkdir()
        for i in range(3):
            write_radiograph(tmp_path / name / f"{i:04d}_000.tiff",
                             Radiograph(make(rng), (1.0, 1.0), "display"), record={"id": f"{i}"})
    runner = CliRunner()
    model = tmp_path / "model"
    result = runner.invoke(app, [
        "train-ddpm-lq", "--lq", str(tmp_path / "lq"), "--channels", "8,16", "--image-size",
        "32", "--crop", "32", "--steps", "2", "--batch-size", "2", "--checkpoint-every", "0",
        "--hq", str(tmp_path / "hq"), "--val-fraction", "0.3", "-o", str(model)])
    assert result.exit_code == 0, result.output
    config = json.loads((model / "config.json").read_text())
    assert config["route"] == "img2img" and config["prediction_type"] == "epsilon"
    validation = json.loads((model / "run.json").read_text())["validation"]
    assert {"loss", "ssim_to_hq", "hf_ratio"} <= set(validation)
    result = runner.invoke(app, ["degrade", str(tmp_path / "hq"), "--method", "ddpm",
                                 "--model", str(model), "--strength", "0.2",
                                 "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.splitlines()[0])
    assert record["degrade"]["options"]["strength"] == 0.2
    assert record["degrade"]["steps"][0]["params"]["route"] == "img2img"
    result = runner.invoke(app, ["train-ddpm-lq", "--lq", str(tmp_path / "lq"), "--route",
                                 "two-stage", "-o", str(tmp_path / "m2")])
    assert result.exit_code == 2 and "--hq" in result.output
    result = runner.invoke(app, [
        "train-ddpm-lq", "--lq", str(tmp_path / "lq"), "--route", "two-stage", "--hq",
        str(tmp_path / "hq"), "--channels", "8,16", "--image-size", "32", "--crop", "32",
        "--steps", "1", "--stage2-steps", "1", "--batch-size", "2", "--checkpoint-every", "0",
        "-o", str(tmp_path / "m2")])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "m2" / "config.json").read_text())
    assert config["route"] == "two-stage" and config["prediction_type"] == "v_prediction"
