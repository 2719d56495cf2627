"""The diffusion enhancer: samplers against an oracle, tiling, model folders, determinism."""

from __future__ import annotations

import functools
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrkit.data.images import bicubic_upsample
from cxrkit.diffusion import (
    SAMPLERS,
    blend_window,
    make_scheduler,
    sample,
    tile_starts,
    tiled_predict,
    train_alphas_cumprod,
)
from cxrkit.enhancer import BLACK_LEVEL, Enhancer, EnhancerSettings, bicubic_enhance, enhance
from cxrkit.errors import InputError, ModelError

TINY = EnhancerSettings(scale=2, block_out_channels=(8, 16), unshuffle=2, default_steps=2)


@pytest.fixture(scope="module")
def tiny_model() -> Enhancer:
    """A seeded, untrained tiny enhancer (UNet widths 8, 16)."""
    return Enhancer.new(TINY, generator=torch.Generator().manual_seed(0)).eval()


def _oracle(x0: torch.Tensor, alphas: torch.Tensor, prediction: str):
    """A perfect denoiser for the clean image ``x0``: returns the true v (or ε) of ``x_t``."""
    def model_fn(x_t: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = alphas[t].sqrt().view(-1, 1, 1, 1).double()
        b = (1 - alphas[t]).sqrt().view(-1, 1, 1, 1).double()
        eps = (x_t.double() - a * x0.double()) / b
        return (a * eps - b * x0.double() if prediction == "v_prediction" else eps).float()

    return model_fn


@pytest.mark.parametrize("prediction", ["v_prediction", "epsilon"])
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_sampler_with_perfect_denoiser_returns_clean_image(sampler: str, prediction: str) -> None:
    model = Enhancer.new(EnhancerSettings(prediction_type=prediction),
                         generator=torch.Generator().manual_seed(0))
    config = model.scheduler_config
    x0 = torch.linspace(-0.8, 0.9, 256).reshape(1, 1, 16, 16)
    oracle = _oracle(x0, train_alphas_cumprod(config), prediction)
    for steps in (1, 4, 20):
        scheduler = make_scheduler(sampler, config)
        out = sample(oracle, torch.zeros_like(x0), scheduler=scheduler, steps=steps,
                     generator=torch.Generator().manual_seed(1))
        # ε-prediction divides by sqrt(ᾱ_t) ≈ 0.0016 at t = T - 1, so float32 rounding grows.
        tol = 2e-3 if prediction == "v_prediction" else 1e-2
        assert torch.allclose(out, x0, atol=tol), (sampler, steps, (out - x0).abs().max())


def test_tiled_equals_untiled_when_image_fits_one_tile(tiny_model: Enhancer) -> None:
    lq = np.random.default_rng(0).random((16, 16), dtype=np.float32)
    untiled = enhance(tiny_model, lq, generator=torch.Generator().manual_seed(3), tile=None)
    tiled = enhance(tiny_model, lq, generator=torch.Generator().manual_seed(3), tile=32,
                    overlap=8)
    assert untiled.shape == (32, 32)
    np.testing.assert_allclose(tiled, untiled, atol=1e-6)


def test_tile_blending_is_exact_for_a_pointwise_model() -> None:
    """Overlapping tiles of a translation-invariant model agree, so blending changes nothing."""
    def pointwise(x: torch.Tensor, c: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 2 * x + c + t.view(-1, 1, 1, 1) * 1e-3

    x = torch.randn(1, 1, 40, 56, generator=torch.Generator().manual_seed(0))
    c = torch.randn(1, 1, 40, 56, generator=torch.Generator().manual_seed(1))
    out = tiled_predict(pointwise, x, c, 7, tile=16, overlap=6, tile_batch=3)
    torch.testing.assert_close(out, pointwise(x, c, torch.tensor([7])), atol=1e-5, rtol=0)


def test_tiled_sampling_runs_on_a_larger_image_without_seams(tiny_model: Enhancer) -> None:
    y, x = np.mgrid[0:48, 0:48] / 47.0
    lq = (0.3 + 0.4 * x * y).astype(np.float32)
    gen = torch.Generator().manual_seed(0)
    tiled = enhance(tiny_model, lq, generator=gen, steps=3, tile=32, overlap=16)
    untiled = enhance(tiny_model, lq, generator=torch.Generator().manual_seed(0), steps=3,
                      tile=None)
    assert tiled.shape == (96, 96) and np.isfinite(tiled).all()
    assert tiled.min() >= 0 and tiled.max() <= 1
    # An untrained net differs between tile and whole-image context, but not wildly.
    assert np.abs(tiled - untiled).mean() < 0.1


def test_tile_layout_covers_the_image_with_the_overlap() -> None:
    assert tile_starts(1024, 512, 64) == [0, 256, 512]
    assert tile_starts(1024, 576, 64) == [0, 448]
    assert tile_starts(100, 128, 16) == [0]
    starts = tile_starts(1000, 256, 32)
    assert starts[0] == 0 and starts[-1] == 1000 - 256
    assert all(b - a <= 256 - 32 for a, b in itertools.pairwise(starts))
    w = blend_window(32, 32, 8)
    assert w.min() > 0 and w.max() == 1 and torch.equal(w, w.flip(0))
    with pytest.raises(InputError):
        tile_starts(100, 16, 16)


def test_same_seed_same_output_for_the_stochastic_sampler(tiny_model: Enhancer) -> None:
    lq = np.random.default_rng(1).random((16, 16), dtype=np.float32)
    runs = [enhance(tiny_model, lq, sampler="ddpm", steps=3,
                    generator=torch.Generator().manual_seed(s)) for s in (5, 5, 6)]
    assert np.array_equal(runs[0], runs[1]) and not np.array_equal(runs[0], runs[2])


def test_black_input_stays_black_and_the_rest_is_the_models(tiny_model: Enhancer) -> None:
    lq = np.zeros((16, 24), np.float32)
    lq[:, 12:] = np.linspace(0.3, 0.7, 12, dtype=np.float32)  # black left half, a ramp beside it
    kept, raw = (enhance(tiny_model, lq, generator=torch.Generator().manual_seed(0),
                         keep_black=level) for level in (BLACK_LEVEL, None))
    up = bicubic_upsample(torch.from_numpy(lq), 2).numpy()
    above = np.pad(up > BLACK_LEVEL, 1)
    near = np.zeros_like(up, bool)  # within one output pixel of a pixel above the black level
    for dy, dx in itertools.product((0, 1, 2), repeat=2):
        near |= above[dy : dy + up.shape[0], dx : dx + up.shape[1]]
    assert (~near).sum() > 200 and np.array_equal(kept[~near], up[~near])
    assert np.array_equal(kept[near], raw[near])  # the model's own output outside black regions
    assert np.abs(raw[~near] - up[~near]).max() > 1e-3  # the untrained model does lift black


def test_odd_sizes_are_padded_and_cropped_back(tiny_model: Enhancer) -> None:
    lq = np.full((13, 21), 0.5, dtype=np.float32)
    out = enhance(tiny_model, lq, generator=torch.Generator().manual_seed(0))
    assert out.shape == (26, 42)
    with pytest.raises(InputError, match="multiple of 4"):
        enhance(tiny_model, lq, generator=torch.Generator().manual_seed(0), tile=10)


def test_model_folder_round_trip_and_half_precision_weights(tiny_model: Enhancer,
                                                            tmp_path: Path) -> None:
    tiny_model.save_pretrained(tmp_path / "m", dtype="fp16")
    names = {p.relative_to(tmp_path / "m").as_posix() for p in (tmp_path / "m").rglob("*")}
    assert {"model_index.json", "enhancer.json", "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"} <= names
    loaded = Enhancer.from_pretrained(tmp_path / "m")
    assert loaded.settings == TINY and loaded.dtype == torch.float32
    lq = np.random.default_rng(2).random((16, 16), dtype=np.float32)
    a = enhance(tiny_model, lq, generator=torch.Generator().manual_seed(0))
    b = enhance(loaded, lq, generator=torch.Generator().manual_seed(0))
    assert np.abs(a - b).max() < 5e-3  # fp16 storage rounding only


def test_wrong_model_folders_are_refused(tiny_model: Enhancer, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such model folder"):
        Enhancer.from_pretrained(tmp_path / "absent")
    tiny_model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "enhancer.json").write_text(json.dumps({"kind": "cxrkit-degrader"}))
    with pytest.raises(ModelError, match="not 'cxrkit-enhancer'"):
        Enhancer.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "enhancer.json").unlink()
    with pytest.raises(ModelError, match=r"no enhancer\.json"):
        Enhancer.from_pretrained(tmp_path / "m")
    tiny_model.save_pretrained(tmp_path / "n")
    (tmp_path / "n" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelError, match="safetensors"):
        Enhancer.from_pretrained(tmp_path / "n")


def test_bicubic_baseline_keeps_range_and_constant_images() -> None:
    out = bicubic_enhance(np.full((8, 10), 0.25, np.float32), 2)
    assert out.shape == (16, 20) and np.allclose(out, 0.25)
    assert bicubic_enhance(np.eye(4, dtype=np.float32), 1).shape == (4, 4)


def test_ssim_term_adds_to_the_diffusion_loss_and_trains_the_clean_estimate() -> None:
    from cxrkit.enhancer import diffusion_loss

    model = Enhancer.new(TINY, generator=torch.Generator().manual_seed(0))
    hq = torch.rand(2, 1, 32, 32)
    batch = {"hq": hq, "lq_up": (hq + 0.05 * torch.randn(2, 1, 32, 32)).clamp(0, 1)}

    def loss(weight: float) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(i) for i in range(2)]
        return diffusion_loss(model, batch, gens, ssim_weight=weight)

    plain, with_ssim = loss(0.0), loss(5.0)
    assert with_ssim.item() > plain.item()  # same timesteps and noise, a positive extra term
    with_ssim.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_sampler_timesteps_are_the_ones_ddim_visits_and_focus_the_loss() -> None:
    from cxrkit.diffusion import sampler_timesteps
    from cxrkit.enhancer import diffusion_loss

    model = Enhancer.new(TINY, generator=torch.Generator().manual_seed(0))
    T = TINY.num_train_timesteps
    assert sampler_timesteps(model.scheduler_config, 1) == (T - 1,)
    assert sampler_timesteps(model.scheduler_config, 2) == (T - 1, T // 2 - 1)
    with pytest.raises(InputError):
        sampler_timesteps(model.scheduler_config, 0)
    # at the one-step timestep the loss is the v-MSE there: with a model that outputs zeros it
    # is the mean square of v = √ᾱ·ε − √(1−ᾱ)·x0, whatever the generators draw
    zero = Enhancer.new(TINY, generator=torch.Generator().manual_seed(0))
    for p in zero.parameters():
        p.data.zero_()
    hq = torch.rand(3, 1, 32, 32)
    batch = {"hq": hq, "lq_up": torch.full_like(hq, 0.5)}
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    noise_gens = [torch.Generator().manual_seed(i) for i in range(3)]
    for g in noise_gens:
        torch.randint(0, T, (), generator=g)  # the loss draws t first, then the noise
    noise = torch.stack([torch.randn((1, 32, 32), generator=g) for g in noise_gens])
    a = train_alphas_cumprod(model.scheduler_config)[T - 1]
    x0 = TINY.residual_scale * (hq - 0.5)
    expected = ((a.sqrt() * noise - (1 - a).sqrt() * x0) ** 2).mean()
    got = diffusion_loss(zero, batch, gens, timesteps=(T - 1,))
    assert torch.allclose(got, expected, rtol=1e-5), (got, expected)
    with pytest.raises(InputError):
        diffusion_loss(zero, batch, gens, timesteps=(T,))


CONTEXT = EnhancerSettings(scale=2, block_out_channels=(8, 16), unshuffle=2, default_steps=2,
                           context_channels=(4, 8, 8, 8), context_crop=64)


def _with_live_encoder(model: Enhancer) -> Enhancer:
    """``model`` with its encoder's zero output layer drawn at random (so it changes outputs)."""
    assert model.context is not None
    gen = torch.Generator().manual_seed(7)
    for p in model.context.head[-1].parameters():
        p.data = torch.randn(p.shape, generator=gen)
    return model.eval()


def test_degradation_encoder_pools_tiles_exactly_like_one_pass() -> None:
    model = _with_live_encoder(Enhancer.new(CONTEXT, generator=torch.Generator().manual_seed(0)))
    assert model.context is not None
    lq = torch.rand(2, 1, 200, 136, generator=torch.Generator().manual_seed(1))
    whole, tiled = model.context(lq), model.context.pool(lq, tile=48)
    assert whole.shape == (2, 4 * 8) and whole.abs().mean() > 0.1
    assert torch.allclose(whole, tiled, atol=1e-5), (whole - tiled).abs().max()


def test_enhancer_with_encoder_round_trips_tiles_and_starts_from_its_base(tmp_path: Path) -> None:
    model = _with_live_encoder(Enhancer.new(CONTEXT, generator=torch.Generator().manual_seed(0)))
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "context" / "degradation_encoder.safetensors").is_file()
    loaded = Enhancer.from_pretrained(tmp_path / "m")
    assert loaded.settings.context_channels == (4, 8, 8, 8)
    lq = np.random.default_rng(0).random((32, 32)).astype(np.float32)

    def run(m: Enhancer, tile: int | None) -> np.ndarray:
        return enhance(m, lq, generator=torch.Generator().manual_seed(0), tile=tile)

    assert np.array_equal(run(model, None), run(loaded, None))  # the encoder's weights came back
    assert np.allclose(run(loaded, None), run(loaded, 64), atol=1e-6)  # one tile == untiled
    # the image's embedding matters: another image's embedding changes the output
    other = loaded.encode(torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(3)))
    assert not torch.allclose(other, loaded.encode(torch.from_numpy(lq)[None, None]))
    with pytest.raises(InputError, match="embedding"):
        loaded(torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64), torch.zeros(1).long())
    # adding an encoder to a model without one leaves its outputs unchanged until it trains
    base = Enhancer.new(TINY, generator=torch.Generator().manual_seed(0)).eval()
    before = run(base, None)
    grown = base.with_context((4, 8), 64, generator=torch.Generator().manual_seed(1))
    assert grown.settings.context_channels == (4, 8) and np.array_equal(run(grown, None), before)
    assert np.array_equal(run(base, None), before)  # the model it grew from still works
    with pytest.raises(ModelError, match="already"):
        grown.with_context((4, 8), 64, generator=torch.Generator().manual_seed(1))
    (tmp_path / "m" / "context" / "degradation_encoder.safetensors").unlink()
    with pytest.raises(ModelError, match="degradation encoder"):
        Enhancer.from_pretrained(tmp_path / "m")


def test_pairs_with_a_view_cut_crop_and_view_from_one_degradation() -> None:
    from cxrkit.data.images import to_uint16
    from cxrkit.enhancer import PairData

    y, x = np.mgrid[0:160, 0:200] / 50.0
    image = to_uint16(0.5 + 0.4 * np.sin(3 * x) * np.cos(2 * y))
    data = PairData([image], crop=32, scale=2, context=48)
    assert data.view_side == 96
    item = data.pair(0, 40, 60, np.random.default_rng(0), view=(20, 30))
    assert item["lq_context"].shape == (1, 48, 48) and item["hq"].shape == (1, 32, 32)
    view = item["lq_context"][0].numpy()
    assert np.array_equal(item["lq"][0].numpy(), view[10:26, 15:31])  # ((40-20)/2, (60-30)/2)
    sampled = data.sample(np.random.default_rng(1))
    assert sampled["lq_context"].shape == (1, 48, 48)
    small = PairData([image[:80, :90]], crop=32, scale=2, context=48)
    assert small.view_side == 80  # the smallest image bounds the view


def test_model_hash_covers_the_encoder_and_settings_but_not_run_json(tmp_path: Path) -> None:
    from cxrkit.enhancer import model_sha256

    model = Enhancer.new(CONTEXT, generator=torch.Generator().manual_seed(0))
    model.save_pretrained(tmp_path / "a")
    first = model_sha256(tmp_path / "a")
    (tmp_path / "a" / "run.json").write_text("{}")
    assert model_sha256(tmp_path / "a") == first
    _with_live_encoder(model).save_pretrained(tmp_path / "a")  # only the encoder changes
    assert model_sha256(tmp_path / "a") != first


def test_zero_start_trains_and_samples_the_first_step_without_noise() -> None:
    from dataclasses import replace

    from cxrkit.enhancer import diffusion_loss

    T = TINY.num_train_timesteps
    zero = Enhancer.new(TINY, generator=torch.Generator().manual_seed(0))
    for p in zero.parameters():
        p.data.zero_()
    hq = torch.rand(2, 1, 32, 32)
    batch = {"hq": hq, "lq_up": torch.full_like(hq, 0.5)}
    b2 = 1 - train_alphas_cumprod(zero.scheduler_config)[T - 1]
    x0 = TINY.residual_scale * (hq - 0.5)
    got = diffusion_loss(zero, batch, [torch.Generator().manual_seed(i) for i in range(2)],
                         timesteps=(T - 1,), zero_start=True)
    assert torch.allclose(got, (b2 * x0**2).mean(), rtol=1e-5)  # target v = -√(1-ᾱ)·x0 only
    # a zero-start model gives the same output whatever the seed; a noise-start one does not
    model = Enhancer.new(replace(TINY, default_steps=1), generator=torch.Generator().manual_seed(0))
    lq = np.random.default_rng(0).random((16, 16)).astype(np.float32)

    def run(seed: int) -> np.ndarray:
        return enhance(model, lq, generator=torch.Generator().manual_seed(seed))

    assert not np.array_equal(run(0), run(1))
    model.settings = replace(model.settings, zero_start=True)
    assert np.array_equal(run(0), run(1))


def test_reference_tone_changes_both_sides_of_a_pair() -> None:
    from cxrkit.data.images import to_uint16
    from cxrkit.enhancer import PairData

    y, x = np.mgrid[0:96, 0:96] / 30.0
    image = to_uint16(0.5 + 0.3 * np.sin(3 * x) * np.cos(2 * y))
    plain = PairData([image], crop=32, scale=2, preset="bicubic", margin=0)
    toned = PairData([image], crop=32, scale=2, preset="bicubic", margin=0, reference_tone=1.0)
    a = plain.pair(0, 32, 32, np.random.default_rng(0))
    b = toned.pair(0, 32, 32, np.random.default_rng(0))
    assert np.array_equal(a["hq"][0].numpy(), image[32:64, 32:64] / np.float32(65535))
    assert (b["hq"] - a["hq"]).abs().mean() > 0.005  # the reference has the new tone
    for item in (a, b):  # and the LQ is that reference, downsampled: the tone is on both sides
        assert (bicubic_upsample(item["lq"][0], 2) - item["hq"][0]).abs().mean() < 0.02
    assert (b["lq"] - a["lq"]).abs().mean() > 0.005
    never = PairData([image], crop=32, scale=2, preset="bicubic", margin=0, reference_tone=0.0)
    assert np.array_equal(never.pair(0, 32, 32, np.random.default_rng(0))["hq"], a["hq"])
    with pytest.raises(InputError):
        PairData([image], crop=32, reference_tone=1.5)


def test_tone_anchor_removes_the_low_frequency_deviation_and_keeps_detail() -> None:
    from cxrkit.enhancer.inference import anchor_tone

    y, x = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    up = 0.4 + 0.2 * torch.sin(x / 20)
    detail = 0.02 * torch.sin(x * 2.5) * torch.sin(y * 2.5)  # period ~2.5 px
    out = up + 0.06 + detail  # a global brightening plus fine detail
    anchored = anchor_tone(out, up, 8.0, 1.0)
    assert (anchored - up - detail).abs().mean() < 0.004  # the offset is gone, the detail kept
    assert torch.equal(anchor_tone(out, up, 8.0, 0.0), out)
    half = anchor_tone(out, up, 8.0, 0.5)
    assert abs(float((half - up - detail).mean()) - 0.03) < 0.003


def _textures(count: int, seed: int) -> list[np.ndarray]:
    from scipy import ndimage

    from cxrkit.data.images import to_uint16

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        field = ndimage.gaussian_filter(rng.standard_normal((128, 128)), rng.uniform(0.7, 2.0))
        field = 0.5 + 0.15 * field / field.std()
        out.append(to_uint16(np.clip(field, 0, 1)))
    return out


def test_tone_gate_learns_which_inputs_carry_a_tone_change_and_round_trips(
        tmp_path: Path) -> None:
    from scipy import ndimage

    from cxrkit.enhancer import model_sha256
    from cxrkit.enhancer.model import ToneGate
    from cxrkit.enhancer.tone import fit_tone_gate

    model = _with_live_encoder(Enhancer.new(CONTEXT, generator=torch.Generator().manual_seed(0)))
    gated, fit = fit_tone_gate(model, _textures(6, 0), _textures(3, 1), sigma=4.0, samples=160,
                               held_out_samples=80, seed=0)
    assert 0.15 < fit.held_out_positive < 0.5
    assert fit.held_out_accuracy > max(0.9, 1 - fit.held_out_positive + 0.1)  # beats the base
    assert gated.settings.tone_anchor == 4.0 and gated.unet is model.unet
    streaky = ndimage.gaussian_filter(_textures(1, 2)[0] / 65535.0, (3, 0.3)).astype(np.float32)
    assert float(ToneGate.features(torch.from_numpy(streaky)[None, None])[0, 0]) < -0.5
    model.save_pretrained(tmp_path / "plain")
    gated.save_pretrained(tmp_path / "gated")
    assert (tmp_path / "gated" / "context" / "tone_gate.safetensors").is_file()
    assert model_sha256(tmp_path / "gated") != model_sha256(tmp_path / "plain")
    loaded = Enhancer.from_pretrained(tmp_path / "gated")
    assert loaded.tone_gate is not None and loaded.settings.tone_anchor == 4.0
    assert torch.equal(loaded.tone_gate.linear.weight, gated.tone_gate.linear.weight)
    lq = _textures(1, 3)[0][:64, :64] / np.float32(65535)
    gen = functools.partial(torch.Generator().manual_seed, 0)
    raw = enhance(loaded, lq, generator=gen(), tone_anchor=False)
    assert np.array_equal(raw, enhance(Enhancer.from_pretrained(tmp_path / "plain"), lq,
                                       generator=gen()))
    loaded.tone_gate.linear.bias.data.fill_(-50.0)  # the gate sees no tone change: anchor fully
    anchored = enhance(loaded, lq, generator=gen())
    up = bicubic_enhance(lq, 2)

    def low(a: np.ndarray) -> float:
        return float(np.abs(ndimage.gaussian_filter(a - up, 4.0)).mean())

    assert low(anchored) < 0.5 * low(raw)
    loaded.tone_gate.linear.bias.data.fill_(50.0)  # a tone change to undo: the raw output
    assert np.array_equal(enhance(loaded, lq, generator=gen()), raw)


def test_a_tone_route_hands_tone_changed_inputs_to_its_specialist(tmp_path: Path) -> None:
    from cxrkit.enhancer import model_sha256
    from cxrkit.enhancer.model import ToneGate

    gen = functools.partial(torch.Generator().manual_seed, 0)
    model = _with_live_encoder(Enhancer.new(CONTEXT, generator=gen()))
    specialist = Enhancer.new(CONTEXT, generator=torch.Generator().manual_seed(1))
    gated = model.with_tone_gate(ToneGate(), 4.0)
    with pytest.raises(ModelError, match="tone gate"):
        model.with_route(specialist)
    with pytest.raises(ModelError, match="plain enhancer"):
        gated.with_route(gated)
    routed = gated.with_route(specialist)
    assert routed.settings.tone_route and routed.unet is model.unet
    gated.save_pretrained(tmp_path / "gated")
    routed.save_pretrained(tmp_path / "routed")
    assert (tmp_path / "routed" / "route" / "enhancer.json").is_file()
    assert model_sha256(tmp_path / "routed") != model_sha256(tmp_path / "gated")
    loaded = Enhancer.from_pretrained(tmp_path / "routed")
    assert loaded.route is not None and loaded.route.tone_gate is None
    lq = _textures(1, 3)[0][:64, :64] / np.float32(65535)
    by_specialist = enhance(specialist, lq, generator=gen())
    loaded.tone_gate.linear.bias.data.fill_(50.0)  # a tone change: the specialist, whole
    assert np.array_equal(enhance(loaded, lq, generator=gen()), by_specialist)
    assert np.array_equal(enhance(loaded, lq, generator=gen(), tone_anchor=False),
                          enhance(gated, lq, generator=gen(), tone_anchor=False))
    loaded.tone_gate.linear.bias.data.fill_(-50.0)  # none: the robust model, anchored
    gated.tone_gate.linear.bias.data.fill_(-50.0)
    assert np.array_equal(enhance(loaded, lq, generator=gen()),
                          enhance(gated, lq, generator=gen()))
    broken = tmp_path / "routed" / "route" / "unet" / "diffusion_pytorch_model.safetensors"
    broken.unlink()
    with pytest.raises(ModelError, match="safetensors"):
        Enhancer.from_pretrained(tmp_path / "routed")


def test_detail_share_is_fitted_per_image_by_least_squares() -> None:
    from cxrkit.enhancer.model import ToneGate
    from cxrkit.enhancer.tone import (
        _plain_views,
        calibrate_detail,
        detail_gain_db,
        detail_terms,
        fit_tone_gate,
    )

    # synthetic terms: where feature 0 is high the residual helps (B = C: α = 1 is exact), where
    # it is low the residual is noise (B = 0: α = 0 is best); the head must learn the switch
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(200, 9, generator=gen)
    helps = features[:, 0] > 0
    terms = torch.stack([torch.full((200,), 4.0), torch.where(helps, 2.0, 0.0),
                         torch.full((200,), 2.0)], 1).double()
    gate = ToneGate()
    assert abs(float(gate.share(torch.rand(1, 1, 32, 32))[0]) - 1.0) < 1e-6  # starts: all kept
    calibrate_detail(gate, features, terms)
    share = torch.sigmoid(gate.detail_logit(features)).detach()
    assert float(share[helps].mean()) > 0.7 and float(share[~helps].mean()) < 0.1
    assert detail_gain_db(share, terms) > max(detail_gain_db(torch.ones(200), terms),
                                              detail_gain_db(torch.zeros(200), terms))

    model = _with_live_encoder(Enhancer.new(CONTEXT, generator=torch.Generator().manual_seed(0)))
    views = _plain_views(_textures(3, 4), 4, scale=2, side=128, preset="broad",
                         reference_tone=0.3, pixel_mm=0.35, generator=np.random.default_rng(0))
    assert len(views) == 4 and all(lq.shape == (64, 64) for _, lq in views)
    feats, real = detail_terms(model, views, sigma=4.0)
    assert feats.shape == (4, 9) and real.shape == (4, 3) and bool((real[:, 0] > 0).all())
    assert abs(detail_gain_db(torch.zeros(4), real)) < 1e-9  # α = 0 is bicubic
    gated, fit = fit_tone_gate(model, _textures(4, 0), _textures(2, 1), sigma=4.0, samples=60,
                               held_out_samples=20, calibration_samples=3, seed=1)
    assert {"fitted", "full", "fitted_worse_share"} <= set(fit.held_out_gain_db)
    assert gated.tone_gate is not None and not gated.tone_gate.detail.weight.requires_grad
