"""MUNIT-LQ: reconstruction is learnt, translation keeps the edges and changes the look, seeded
outputs repeat, and model folders of another kind are refused."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrkit.cli.train_munit import DISC_INIT_NAMES
from cxrkit.errors import ModelError
from cxrkit.munit import (
    DISC_INITS,
    PHASES,
    Munit,
    MunitDegrader,
    MunitSettings,
    UnpairedCrops,
    phases,
    read_config,
)
from cxrkit.train import TrainConfig, TrainResult, train

TINY = MunitSettings(width=8, residual_blocks=1, mlp_width=32, disc_width=8, disc_layers=2,
                     disc_scales=2, style_downsamples=2, image_size=32)


def shapes(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """``(size, size)`` float32: a flat background with 2 bright rectangles (sharp edges)."""
    image = np.full((size, size), rng.uniform(0.3, 0.45), np.float32)
    for _ in range(2):
        y, x = rng.integers(2, size - 12, 2)
        h, w = rng.integers(6, 12, 2)
        image[y : y + h, x : x + w] = rng.uniform(0.7, 0.9)
    return image


def hq_domain(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """Clean, high-contrast shapes."""
    return [shapes(rng) for _ in range(count)]


def lq_domain(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """Another look of the same kind of content: low contrast, dark, with a fine texture."""
    out = []
    for _ in range(count):
        base = 0.1 + 0.5 * shapes(rng) ** 1.5
        out.append(np.clip(base + rng.normal(0, 0.06, base.shape), 0, 1).astype(np.float32))
    return out


def gradient_magnitude(image: np.ndarray) -> np.ndarray:
    """``|∇image|`` ``(H, W)`` by central differences."""
    d_rows, d_cols = np.gradient(image.astype(np.float64))
    return np.hypot(d_rows, d_cols)


def edge_correlation(a: np.ndarray, b: np.ndarray, sigma: float = 1.5) -> float:
    """Pearson correlation of the gradient magnitudes of two images smoothed by ``sigma`` px."""
    from scipy import ndimage

    ga = gradient_magnitude(ndimage.gaussian_filter(a.astype(np.float64), sigma))
    gb = gradient_magnitude(ndimage.gaussian_filter(b.astype(np.float64), sigma))
    return float(np.corrcoef(ga.ravel(), gb.ravel())[0, 1])


def intensity_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the pixel values of two ``(H, W)`` images."""
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _config(tmp: Path, steps: int) -> TrainConfig:
    return TrainConfig(output_dir=str(tmp), steps=steps, batch_size=4, lr=1e-3, warmup_steps=0,
                       max_grad_norm=0.0, ema_decay=0.0, checkpoint_every=0, validate_every=0,
                       log_every=1000, seed=0)


def _recon(model: Munit, batch: dict[str, torch.Tensor]) -> float:
    styles = torch.zeros(len(batch["hq"]), TINY.style_dim)
    with torch.no_grad():
        terms = model("generator", 2 * batch["hq"] - 1, 2 * batch["lq"] - 1, styles, styles)
    return float(terms["recon_image"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Munit, Munit]:
    """A tiny MUNIT-LQ trained 200 steps on the two synthetic domains (its folder, the initial
    and the trained model)."""
    rng = np.random.default_rng(0)
    data = UnpairedCrops(hq_domain(rng, 24), lq_domain(rng, 24), crop=32)
    initial = Munit.new(TINY, generator=torch.Generator().manual_seed(0))
    model = Munit.new(TINY, generator=torch.Generator().manual_seed(0))
    folder = tmp_path_factory.mktemp("munit")
    result = train(model, PHASES, data, _config(folder, 200),
                   save_model=lambda m, f: m.save_pretrained(f))
    return folder, initial, result.model  # type: ignore[return-value]


def _fixed_batch() -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(99)
    hq = torch.from_numpy(np.stack(hq_domain(rng, 8)))[:, None]
    lq = torch.from_numpy(np.stack(lq_domain(rng, 8)))[:, None]
    return {"hq": hq, "lq": lq}


def test_reconstruction_loss_falls(trained: tuple[Path, Munit, Munit]) -> None:
    _, initial, model = trained
    batch = _fixed_batch()
    before, after = _recon(initial, batch), _recon(model.eval(), batch)
    assert after < 0.5 * before, (before, after)


def test_translation_keeps_edges_and_changes_look(trained: tuple[Path, Munit, Munit]) -> None:
    folder, _, _ = trained
    rng = np.random.default_rng(5)
    hq, lq = hq_domain(rng, 8), lq_domain(rng, 8)
    randomly = MunitDegrader(folder)
    outs = [randomly(x, generator=np.random.default_rng(i)).image for i, x in enumerate(hq)]
    # the input's edges survive (structure scale: gradients of σ = 1.5 px smoothed images),
    # far above the chance level of an unrelated input
    paired = np.mean([edge_correlation(x, y) for x, y in zip(hq, outs, strict=True)])
    chance = np.mean([edge_correlation(x, y) for x, y in zip(hq, outs[1:] + outs[:1],
                                                             strict=True)])
    assert paired > 0.3 and paired > 3 * chance, (paired, chance)
    # and so does the anatomy's polarity: what is bright in the input stays bright in every
    # translation (a translation that paints other or inverted anatomy correlates ≤ 0)
    intensity = [intensity_correlation(x, y) for x, y in zip(hq, outs, strict=True)]
    assert min(intensity) > 0.2 and np.mean(intensity) > 0.4, intensity
    # the look moves to the LQ domain (darker), here with a reference style
    like = MunitDegrader(folder, style_reference=lq[0])
    outs = [like(x, generator=np.random.default_rng(i)).image for i, x in enumerate(hq)]
    m_hq, m_lq, m_out = (np.mean([im.mean() for im in s]) for s in (hq, lq, outs))
    assert abs(m_out - m_lq) < 0.5 * abs(m_hq - m_lq), (m_hq, m_lq, m_out)
    assert np.mean([edge_correlation(x, y) for x, y in zip(hq, outs, strict=True)]) > 0.3


def test_tone_term_keeps_the_brightness_and_lets_the_texture_change(tmp_path: Path) -> None:
    """With ``tone_weight`` a translation with a sampled style keeps its source's block-mean
    brightness (the LQ domain here is much darker) but still takes the LQ domain's fine texture;
    without it, the same training darkens the image (to 0.26 from 0.43, the LQ's 0.25)."""
    from cxrkit.munit.model import tone_l1

    flat = torch.zeros(1, 1, 32, 32)
    grain = flat + 0.2 * (-1) ** torch.arange(32).view(1, 1, 1, 32)  # zero-mean at 8 px blocks
    assert float(tone_l1(grain, flat, 8)) < 1e-6 and abs(float(tone_l1(flat + 0.3, flat, 8)) - 0.3
                                                         ) < 1e-6
    rng = np.random.default_rng(0)
    data = UnpairedCrops(hq_domain(rng, 24), lq_domain(rng, 24), crop=32)
    settings = replace(TINY, tone_weight=30.0)
    model = Munit.new(settings, generator=torch.Generator().manual_seed(0))
    train(model, phases(settings, 1e-3), data, _config(tmp_path, 200),
          save_model=lambda m, f: m.save_pretrained(f))
    rng = np.random.default_rng(5)
    hq, lq = hq_domain(rng, 8), lq_domain(rng, 8)
    sampled = MunitDegrader(tmp_path)
    outs = [sampled(x, generator=np.random.default_rng(i)).image for i, x in enumerate(hq)]
    m_hq, m_lq, m_out = (np.mean([im.mean() for im in s]) for s in (hq, lq, outs))
    assert abs(m_out - m_hq) < 0.25 * abs(m_hq - m_lq), (m_hq, m_lq, m_out)
    assert np.mean([edge_correlation(x, y) for x, y in zip(hq, outs, strict=True)]) > 0.3

    def fine(image: np.ndarray) -> float:  # energy of the 1-px texture (the LQ domain's grain)
        return float(np.mean(np.diff(image, axis=1) ** 2))

    f_hq, f_lq, f_out = (np.mean([fine(im) for im in s]) for s in (hq, lq, outs))
    assert f_out > f_hq + 0.3 * (f_lq - f_hq), (f_hq, f_lq, f_out)


def test_degrader_is_seeded_and_recorded(trained: tuple[Path, Munit, Munit]) -> None:
    folder, _, _ = trained
    degrader = MunitDegrader(folder)
    image = hq_domain(np.random.default_rng(3), 1)[0]
    a = degrader(image, scale=2, generator=np.random.default_rng(7))
    b = degrader(image, scale=2, generator=np.random.default_rng(7))
    c = degrader(image, scale=2, generator=np.random.default_rng(8))
    assert a.image.shape == (16, 16) and a.image.dtype == np.float32
    assert a.image.tobytes() == b.image.tobytes()
    assert a.image.tobytes() != c.image.tobytes()
    step = a.params[0]
    assert step["name"] == "munit" and step["params"]["style_from"] == "random"
    assert len(step["params"]["style"]) == TINY.style_dim
    assert len(step["params"]["model_sha256"]) == 64


def test_style_reference_fixes_the_style(trained: tuple[Path, Munit, Munit]) -> None:
    folder, _, _ = trained
    reference = lq_domain(np.random.default_rng(4), 1)[0]
    degrader = MunitDegrader(folder, style_reference=reference)
    image = hq_domain(np.random.default_rng(3), 1)[0]
    a = degrader(image, generator=np.random.default_rng(1))
    b = degrader(image, generator=np.random.default_rng(2))
    assert a.image.tobytes() == b.image.tobytes()
    assert a.params[0]["params"]["style_from"] == "reference"


def _discriminator_separation(settings: MunitSettings, steps: int) -> tuple[float, float]:
    """A fresh LQ discriminator (``Munit.new``) trained ``steps`` LSGAN steps at the rate
    :func:`phases` gives it (generators at 1e-4) to score real LQ crops 1 and real HQ crops 0.

    Returns:
        On 16 new images per domain: the mean score gap LQ - HQ, and the smallest per-image gap
        (lowest LQ score - highest HQ score; > 0 when every image is told apart).
    """
    from cxrkit.munit.model import _lsgan

    disc = Munit.new(settings, generator=torch.Generator().manual_seed(0)).dis["lq"]
    optimizer = torch.optim.Adam(disc.parameters(), lr=phases(settings, 1e-4)[0].lr,
                                 betas=(0.5, 0.999))
    rng = np.random.default_rng(0)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(np.stack(hq_domain(rng, n)))[:, None] * 2 - 1,
                torch.from_numpy(np.stack(lq_domain(rng, n)))[:, None] * 2 - 1)

    for _ in range(steps):
        hq, lq = batch(4)
        loss = _lsgan(disc(hq), 0.0) + _lsgan(disc(lq), 1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    hq, lq = batch(16)
    with torch.no_grad():  # per-image score: mean over patches and scales
        score_hq = torch.stack([d.mean(dim=(1, 2, 3)) for d in disc(hq)]).mean(0)
        score_lq = torch.stack([d.mean(dim=(1, 2, 3)) for d in disc(lq)]).mean(0)
    return float(score_lq.mean() - score_hq.mean()), float(score_lq.min() - score_hq.max())


def test_small_discriminator_separates_the_real_domains_quickly() -> None:
    """The adversarial signal exists at small width: within 30 steps the default discriminator
    (He init, 4× the generators' rate) tells the two real domains apart, image by image. MUNIT's
    N(0, 0.02) init at the generators' rate (sized for width 64) scores everything ~0 still."""
    assert set(DISC_INITS) == set(DISC_INIT_NAMES)  # the CLI's torch-free copy
    mean_gap, worst_gap = _discriminator_separation(TINY, 30)
    assert mean_gap > 0.3 and worst_gap > 0, (mean_gap, worst_gap)
    paper = replace(TINY, disc_init="gaussian", disc_lr_ratio=1.0)
    mean_gap, _ = _discriminator_separation(paper, 30)
    assert abs(mean_gap) < 0.05, mean_gap


def test_training_is_seeded(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = UnpairedCrops(hq_domain(rng, 4), lq_domain(rng, 4), crop=32)
    runs = []
    for name in ("a", "b"):
        model = Munit.new(TINY, generator=torch.Generator().manual_seed(1))
        result = train(model, PHASES, data, _config(tmp_path / name, 3))
        runs.append(result.losses)
    assert runs[0] == runs[1]


def test_resume_reaches_the_same_generator_and_discriminator_as_an_uninterrupted_run(
        tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = UnpairedCrops(hq_domain(rng, 4), lq_domain(rng, 4), crop=32)

    def run(out: Path, steps: int, resume: str | None = None) -> TrainResult:
        config = TrainConfig(output_dir=str(out), steps=steps, batch_size=2, grad_accum=2,
                             lr=1e-3, warmup_steps=0, max_grad_norm=0.0, ema_decay=0.9,
                             checkpoint_every=2, keep_checkpoints=1, log_every=1000, seed=3,
                             resume=resume)
        model = Munit.new(TINY, generator=torch.Generator().manual_seed(1))
        return train(model, PHASES, data, config)

    whole = run(tmp_path / "a", 4)
    run(tmp_path / "b", 3)  # "killed" after step 3; checkpoint-2 holds both optimizers
    checkpoint = tmp_path / "b" / "checkpoints" / "checkpoint-2"
    assert {"optimizer.bin", "optimizer_1.bin", "ema.safetensors"} <= {
        p.name for p in checkpoint.iterdir()}
    resumed = run(tmp_path / "b", 4, "latest")
    for name in ("discriminator", "generator"):
        np.testing.assert_allclose(resumed.phase_losses[name], whole.phase_losses[name][2:],
                                   rtol=1e-5)
    expected = whole.model.state_dict()
    for name, value in resumed.model.state_dict().items():  # EMA of both players
        torch.testing.assert_close(value, expected[name], atol=1e-6, rtol=0)


def test_model_folder_round_trip_and_wrong_kind(tmp_path: Path) -> None:
    from cxrkit.ddpm_lq import DdpmLQ, DdpmLQSettings

    model = Munit.new(TINY, generator=torch.Generator().manual_seed(0))
    model.save_pretrained(tmp_path / "munit")
    loaded = Munit.from_pretrained(tmp_path / "munit")
    assert loaded.settings == TINY and not loaded.dis
    assert sorted(p.name for p in (tmp_path / "munit").iterdir()) == [
        "config.json", "model.safetensors"]
    assert read_config(tmp_path / "munit", "munit-lq")["kind"] == "munit-lq"

    ddpm = DdpmLQ.new(DdpmLQSettings(block_out_channels=(8, 16), unshuffle=1),
                      generator=torch.Generator().manual_seed(0))
    ddpm.save_pretrained(tmp_path / "ddpm")
    with pytest.raises(ModelError, match="kind 'ddpm-lq', not 'munit-lq'"):
        Munit.from_pretrained(tmp_path / "ddpm")
    (tmp_path / "munit" / "model.safetensors").rename(tmp_path / "munit" / "model.bin")
    with pytest.raises(ModelError, match="safetensors"):
        Munit.from_pretrained(tmp_path / "munit")
    with pytest.raises(ModelError, match="no such model folder"):
        MunitDegrader(tmp_path / "absent")


def _write_images(folder: Path, images: list[np.ndarray]) -> None:
    from cxrkit.io import Radiograph, write_radiograph

    folder.mkdir()
    for i, image in enumerate(images):
        write_radiograph(folder / f"{i:04d}_000.tiff", Radiograph(image, (1.0, 1.0), "display"),
                         record={"id": f"{i}"})


def test_cli_train_munit_then_degrade(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from cxrkit.cli import app

    rng = np.random.default_rng(0)
    _write_images(tmp_path / "hq", hq_domain(rng, 3))
    _write_images(tmp_path / "lq", lq_domain(rng, 3))
    runner = CliRunner()
    model = tmp_path / "model"
    result = runner.invoke(app, [
        "train-munit", "--hq", str(tmp_path / "hq"), "--lq", str(tmp_path / "lq"),
        "--image-size", "32", "--crop", "32", "--width", "4", "--residual-blocks", "1",
        "--steps", "2", "--batch-size", "2", "--checkpoint-every", "0", "-o", str(model)])
    assert result.exit_code == 0, result.output
    run = json.loads((model / "run.json").read_text())
    assert run["kind"] == "munit-lq" and run["config"]["steps"] == 2 and run["validation"]
    result = runner.invoke(app, ["degrade", str(tmp_path / "hq"), "--method", "munit",
                                 "--model", str(model), "--scale", "2", "--seed", "3",
                                 "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 3 and records[0]["reference"].endswith("0000_000.tiff")
    entry = records[0]["degrade"]
    assert entry["options"]["method"] == "munit" and entry["steps"][0]["name"] == "munit"
    result = runner.invoke(app, ["degrade", str(tmp_path / "hq"), "--method", "ddpm",
                                 "--model", str(model), "-o", str(tmp_path / "out2")])
    assert isinstance(result.exception, ModelError)
    assert "kind 'munit-lq', not 'ddpm-lq'" in str(result.exception)
