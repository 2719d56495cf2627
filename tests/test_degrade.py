"""Tests of cxrkit.degrade: each operator against its analytic expectation, presets, determinism.

Expected values are computed here from the physics (MTF of a Gaussian, Poisson statistics, the
delta method, the scatter-to-primary ratio), not from the code under test.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cxrkit.degrade import DEGRADATIONS, METHODS, PRESETS, RESIZE_KERNELS, degrade
from cxrkit.degrade.operators import (
    Contrast,
    DetectorBlur,
    Gamma,
    GaussianNoise,
    Jpeg,
    Quantize,
    QuantumNoise,
    Resize,
    Scatter,
    SliceBlur,
)
from cxrkit.errors import InputError

SIZE = 64


@pytest.fixture
def image() -> np.ndarray:
    """A 64x64 radiograph-like image: smooth gradient plus texture, in [0.2, 0.9]."""
    rng = np.random.default_rng(1234)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    smooth = 0.3 + 0.4 * rows * (1 - cols) + 0.1 * np.sin(6 * cols)
    return np.clip(smooth + 0.05 * rng.standard_normal((SIZE, SIZE)), 0.2, 0.9).astype(np.float32)


@pytest.fixture
def impulse() -> np.ndarray:
    """A 64x64 image with a single 1 at the centre."""
    out = np.zeros((SIZE, SIZE), np.float32)
    out[SIZE // 2, SIZE // 2] = 1.0
    return out


def _mtf(psf: np.ndarray, axis: int) -> np.ndarray:
    """|DFT| of a PSF along one frequency axis, normalised at zero frequency; f = k/64 cycles/px."""
    spectrum = np.abs(np.fft.fft2(psf))
    line = spectrum[:, 0] if axis == 0 else spectrum[0, :]
    return line[: SIZE // 2 + 1] / line[0]


def _gaussian_mtf(f: np.ndarray, sigma_px: float) -> np.ndarray:
    return np.exp(-2 * math.pi**2 * sigma_px**2 * f**2)


FREQ = np.arange(SIZE // 2 + 1) / SIZE  # cycles/px


def test_detector_blur_has_the_target_mtf(impulse: np.ndarray) -> None:
    pixel_mm, mtf50 = 0.1, 1.0  # MTF50 = 0.1 cycles/px, PSF sigma ≈ 1.87 px
    params = {"mtf50_lp_per_mm": mtf50, "pixel_mm": pixel_mm}
    psf = DetectorBlur().apply(impulse, params, np.random.default_rng(0))
    measured = _mtf(psf, axis=1)
    expected = 0.5 ** ((FREQ / (mtf50 * pixel_mm)) ** 2)  # Gaussian MTF through its f50
    np.testing.assert_allclose(measured, expected, atol=2e-3)
    assert abs(np.interp(0.1, FREQ, measured) - 0.5) < 0.005
    np.testing.assert_allclose(_mtf(psf, axis=0), measured, atol=1e-6)  # isotropic


def test_slice_blur_is_anisotropic_with_fwhm_widths(impulse: np.ndarray) -> None:
    params = {"slice_mm": 2.0, "in_plane_mm": 0.6, "pixel_mm": 0.2}
    psf = SliceBlur().apply(impulse, params, np.random.default_rng(0))
    fwhm_to_sigma = 1 / (2 * math.sqrt(2 * math.log(2)))
    for axis, fwhm_mm in ((0, 2.0), (1, 0.6)):
        expected = _gaussian_mtf(FREQ, fwhm_mm * fwhm_to_sigma / 0.2)
        np.testing.assert_allclose(_mtf(psf, axis), expected, atol=3e-3)
    profile = psf[:, SIZE // 2]  # along the rows (body axis)
    above_half = np.flatnonzero(profile >= profile.max() / 2)
    assert above_half.size * 0.2 == pytest.approx(2.0, abs=0.25)  # FWHM of 10 px


def _counts(noisy: np.ndarray, open_field: float, attenuation: float) -> np.ndarray:
    """Invert d' = -ln(k / N) / a back to the counts k."""
    return open_field * np.exp(-attenuation * noisy.astype(np.float64))


@pytest.mark.parametrize("sigma_e", [0.0, 20.0])
def test_quantum_noise_has_poisson_statistics(sigma_e: float) -> None:
    d, attenuation = 0.5, 4.0
    params = {"dose": 0.5, "quanta_per_mm2": 1e4, "pixel_mm": 1.0,
              "electronic_quanta": sigma_e, "attenuation": attenuation}
    open_field = 1e4 * 1.0**2 * 0.5
    mean_counts = open_field * math.exp(-attenuation * d)  # λ = N·T ≈ 677
    flat = np.full((SIZE, SIZE), d, np.float32)
    noisy = QuantumNoise().apply(flat, params, np.random.default_rng(5))
    counts = _counts(noisy, open_field, attenuation)
    assert counts.mean() == pytest.approx(mean_counts, rel=0.01)
    assert counts.var() == pytest.approx(mean_counts + sigma_e**2, rel=0.1)
    # Delta method in the log domain: Var(d') ≈ (λ + sigma_e²) / (a·λ)².
    expected_var = (mean_counts + sigma_e**2) / (attenuation * mean_counts) ** 2
    assert noisy.var() == pytest.approx(expected_var, rel=0.1)


def test_quantum_noise_grows_behind_dense_tissue() -> None:
    params = QuantumNoise(dose=(0.2, 0.2), electronic_quanta=(0.0, 0.0)).sample_params(
        np.random.default_rng(0))
    lung = np.full((SIZE, SIZE), 0.3, np.float32)
    bone = np.full((SIZE, SIZE), 0.7, np.float32)
    var_lung = QuantumNoise().apply(lung, params, np.random.default_rng(1)).var()
    var_bone = QuantumNoise().apply(bone, params, np.random.default_rng(1)).var()
    # Var ∝ 1/λ ∝ exp(a·d): the ratio is exp(4 · 0.4) ≈ 5.
    assert var_bone / var_lung == pytest.approx(math.exp(4.0 * 0.4), rel=0.15)


def test_gaussian_noise_sigma(image: np.ndarray) -> None:
    noisy = GaussianNoise().apply(image, {"sigma": 0.02}, np.random.default_rng(2))
    assert np.std(noisy - image) == pytest.approx(0.02, rel=0.05)


def test_scatter_adds_spr_times_mean_primary_at_low_frequency(image: np.ndarray) -> None:
    attenuation, spr = 4.0, 0.8
    params = {"spr": spr, "sigma_mm": 4.0, "attenuation": attenuation, "pixel_mm": 0.5}  # 8 px
    out = Scatter().apply(image, params, np.random.default_rng(0))
    primary = np.exp(-attenuation * image.astype(np.float64))
    added = np.exp(-attenuation * out.astype(np.float64)) - primary
    assert added.mean() == pytest.approx(spr * primary.mean(), rel=0.02)
    assert added.min() > 0

    def high_share(x: np.ndarray) -> float:
        """Share of the spectral energy above 0.1 cycles/px (Hann window against edge leakage)."""
        window = np.outer(np.hanning(SIZE), np.hanning(SIZE))
        power = np.abs(np.fft.fft2((x - x.mean()) * window)) ** 2
        fy, fx = np.meshgrid(np.fft.fftfreq(SIZE), np.fft.fftfreq(SIZE), indexing="ij")
        return float(power[np.hypot(fy, fx) > 0.1].sum() / power.sum())

    assert high_share(added) < 1e-4
    assert high_share(primary) > 0.1  # the primary does have fine detail
    assert out.mean() < image.mean()  # more light: darker (less attenuating) display


def test_gamma_and_contrast_formulas(image: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(Gamma().apply(image, {"gamma": 1.3}, rng), image**1.3, rtol=1e-5)
    mean = image.astype(np.float64).mean()
    out = Contrast().apply(image, {"contrast": 0.6, "brightness": 0.05}, rng)
    np.testing.assert_allclose(out, 0.6 * image + 0.4 * mean + 0.05, atol=1e-6)


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_quantize_gives_two_to_the_bits_levels(bits: int) -> None:
    ramp = np.linspace(0, 1, SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE)
    out = Quantize().apply(ramp, {"bits": bits}, np.random.default_rng(0))
    levels = np.unique(out)
    assert levels.size == 2**bits
    np.testing.assert_allclose(levels, np.arange(2**bits) / (2**bits - 1), atol=1e-7)


def test_jpeg_is_lossy_8_bit_and_worse_at_low_quality(image: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    high = Jpeg().apply(image, {"quality": 95}, rng)
    low = Jpeg().apply(image, {"quality": 10}, rng)
    np.testing.assert_allclose(high * 255, np.round(high * 255), atol=1e-4)
    assert np.abs(high - image).mean() < np.abs(low - image).mean()
    assert np.array_equal(high, Jpeg().apply(image, {"quality": 95}, rng))


@pytest.mark.parametrize("kernel", list(RESIZE_KERNELS))
def test_resize_kernels_shapes_and_flat_field(kernel: str) -> None:
    flat = np.full((SIZE, SIZE), 0.4, np.float32)
    out = Resize().apply(flat, {"kernel": kernel, "factor": 2.0}, np.random.default_rng(0))
    assert out.shape == (32, 32)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 0.4, atol=1e-6)
    sized = Resize().apply(flat, {"kernel": kernel, "size": [20, 40]}, np.random.default_rng(0))
    assert sized.shape == (20, 40)


def test_area_resize_is_the_block_mean(image: np.ndarray) -> None:
    out = Resize().apply(image, {"kernel": "area", "factor": 2.0}, np.random.default_rng(0))
    block_mean = image.reshape(32, 2, 32, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(out, block_mean, atol=1e-6)


@pytest.mark.parametrize(("name", "params"), [
    ("gaussian-noise", {"sigma": 0.0}),
    ("scatter", {"spr": 0.0, "sigma_mm": 30.0, "attenuation": 4.0, "pixel_mm": 0.35}),
    ("gamma", {"gamma": 1.0}),
    ("contrast", {"contrast": 1.0, "brightness": 0.0}),
    ("resize", {"kernel": "bicubic", "factor": 1.0}),
    ("slice-blur", {"slice_mm": 0.0, "in_plane_mm": 0.0, "pixel_mm": 0.35}),
])
def test_identity_parameters_leave_the_image_unchanged(
    image: np.ndarray, name: str, params: dict
) -> None:
    out = DEGRADATIONS[name]().apply(image, params, np.random.default_rng(0))
    assert out.tobytes() == image.tobytes()


def test_identity_chain_via_overrides(image: np.ndarray) -> None:
    result = degrade(image, None, overrides={"gaussian-noise": {"sigma": 0.0}, "gamma":
                     {"gamma": 1.0}}, generator=np.random.default_rng(0))
    assert result.image.tobytes() == image.tobytes()
    assert [step["name"] for step in result.params] == ["gaussian-noise", "gamma"]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_are_deterministic_by_seed(image: np.ndarray, preset: str) -> None:
    first = degrade(image, preset, scale=2, generator=np.random.default_rng(7))
    again = degrade(image, preset, scale=2, generator=np.random.default_rng(7))
    other = degrade(image, preset, scale=2, generator=np.random.default_rng(8))
    assert first.image.tobytes() == again.image.tobytes()
    assert first.params == again.params
    assert first.image.shape == (32, 32)
    assert first.image.dtype == np.float32
    assert first.image.min() >= 0.0
    assert first.image.max() <= 1.0
    json.dumps(first.params)  # JSON-serialisable
    if preset != "bicubic":
        assert first.image.tobytes() != other.image.tobytes()
        assert first.params != other.params


def test_bicubic_preset_is_only_the_resize(image: np.ndarray) -> None:
    result = degrade(image, "bicubic", scale=2, generator=np.random.default_rng(0))
    assert result.params == [{"name": "resize", "params": {"kernel": "bicubic", "size": [32, 32]}}]
    unscaled = degrade(image, "bicubic", generator=np.random.default_rng(0))
    assert unscaled.params == []
    assert unscaled.image.tobytes() == image.tobytes()


def test_recorded_params_replay_a_noise_free_preset(image: np.ndarray) -> None:
    result = degrade(image, "drr-like", scale=2, generator=np.random.default_rng(3))
    replay = image
    for step in result.params:
        operator = DEGRADATIONS[step["name"]]()
        replay = operator.apply(replay, step["params"], np.random.default_rng(0))
    assert replay.tobytes() == result.image.tobytes()


def test_realistic_preset_tracks_the_pixel_pitch_and_varies(image: np.ndarray) -> None:
    layouts = set()
    for seed in range(12):
        result = degrade(image, "realistic", scale=2, pixel_mm=0.2,
                         generator=np.random.default_rng(seed))
        assert result.image.shape == (32, 32)
        assert result.params[-1]["name"] in ("resize", "jpeg")
        layouts.add(tuple(step["name"] for step in result.params))
        shape, pixel = (SIZE, SIZE), 0.2
        for step in result.params:
            if step["name"] == "resize":
                new = tuple(step["params"]["size"])
                pixel, shape = pixel * shape[0] / new[0], new
            elif "pixel_mm" in step["params"]:
                assert step["params"]["pixel_mm"] == pytest.approx(pixel)
    assert len(layouts) > 3


def test_overrides_fix_drawn_values(image: np.ndarray) -> None:
    result = degrade(image, "low-dose", overrides={"quantum-noise": {"dose": 0.1}},
                     generator=np.random.default_rng(0))
    assert result.params[0]["params"]["dose"] == 0.1


@pytest.mark.parametrize(("preset", "overrides"), [
    ("no-such-preset", None),
    ("low-dose", {"no-such-operator": {}}),
    ("low-dose", {"gamma": {"gamma": 1.2}}),  # not a step of low-dose
    ("low-dose", {"quantum-noise": {"dosage": 0.1}}),  # unknown parameter
    ("low-dose", {"quantum-noise": {"dose": -1.0}}),  # invalid value
    (None, {"jpeg": {"quality": 0}}),
    (None, {"resize": {"kernel": "cubic"}}),
])
def test_bad_presets_and_overrides_raise(image: np.ndarray, preset: str | None,
                                         overrides: dict | None) -> None:
    with pytest.raises(InputError):
        degrade(image, preset, overrides=overrides, generator=np.random.default_rng(0))


@pytest.mark.parametrize(("bad", "scale"), [
    (np.zeros((8, 8), np.uint8), 1),
    (np.full((8, 8), 1.5, np.float32), 1),
    (np.zeros((2, 8, 8), np.float32), 1),
    (np.zeros((8, 8), np.float32), 0),
    (np.zeros((8, 8), np.float32), 16),
])
def test_bad_images_and_scales_raise(bad: np.ndarray, scale: int) -> None:
    with pytest.raises(InputError):
        degrade(bad, "bicubic", scale=scale, generator=np.random.default_rng(0))


def test_methods_registry_builds_a_degrader(image: np.ndarray) -> None:
    degrader = METHODS["physics"](preset="drr-like")
    result = degrader(image, scale=2, generator=np.random.default_rng(0))
    assert result.image.shape == (32, 32)


def test_presets_do_not_touch_the_global_rng(image: np.ndarray) -> None:
    # The legacy global state is read on purpose: it must be left alone.
    before = np.random.get_state()[1].copy()  # noqa: NPY002
    for seed in range(5):
        degrade(image, "realistic", scale=2, generator=np.random.default_rng(seed))
    assert np.array_equal(np.random.get_state()[1], before)  # noqa: NPY002


def test_streaks_are_row_offsets_in_bands_plus_a_ripple(image: np.ndarray) -> None:
    from cxrkit.degrade.operators import Streaks

    flat = np.full((60, 40), 0.5, np.float32)
    params = {"band_rows": 3, "band_sigma": 0.01, "ripple": 0.0, "period_rows": 20.0,
              "phase": 0.0}
    out = Streaks().apply(flat, params, np.random.default_rng(0)) - 0.5
    assert np.allclose(out, out[:, :1], atol=1e-6)  # one offset per row
    rows = out[:, 0]
    assert np.allclose(rows.reshape(20, 3), rows.reshape(20, 3)[:, :1], atol=1e-6)  # bands of 3
    assert 0.003 < rows.std() < 0.03
    ripple = {**params, "band_sigma": 0.0, "ripple": 0.02}
    wave = Streaks().apply(flat, ripple, np.random.default_rng(0))[:, 0] - 0.5
    assert np.allclose(wave, 0.02 * np.sin(2 * np.pi * np.arange(60) / 20), atol=1e-6)
    identity = {**params, "band_sigma": 0.0}
    assert Streaks().apply(image, identity, np.random.default_rng(0)).tobytes() == image.tobytes()
    with pytest.raises(InputError):
        Streaks().apply(image, {**params, "band_rows": 0}, np.random.default_rng(0))


def test_random_chain_runs_each_operator_with_its_probability(image: np.ndarray) -> None:
    from cxrkit.degrade.presets import RandomChain

    chain = RandomChain("t", operators=((1.0, Gamma()), (0.0, Contrast())),
                        after_resize=((0.5, GaussianNoise()),))
    seen = []
    for seed in range(40):
        steps = chain.sample(np.random.default_rng(seed), (SIZE, SIZE), (32, 32), 0.35)
        names = [op.name for op, _ in steps]
        assert names[:2] == ["gamma", "resize"] and "contrast" not in names
        seen.append("gaussian-noise" in names)
    assert 10 < sum(seen) < 30
    assert {step[1]["kernel"] for seed in range(40) for step in chain.sample(
        np.random.default_rng(seed), (SIZE, SIZE), (32, 32), 0.35) if step[0].name == "resize"
    } == set(chain.kernels)


def test_broad_mixture_draws_every_component_and_changes_tone_only_when_drr_like(
        image: np.ndarray) -> None:
    broad = PRESETS["broad"]
    assert {"streaks", "jpeg", "slice-blur", "detector-blur", "quantum-noise"} <= broad.names()
    counts: dict[str, int] = {}
    for seed in range(400):
        name, _ = broad.choose(np.random.default_rng(seed))
        counts[name] = counts.get(name, 0) + 1
    weights = {name: w for w, name, _ in broad.components}
    for name, weight in weights.items():
        assert abs(counts[name] / 400 - weight / sum(weights.values())) < 0.08
    for seed in range(60):
        names = [s["name"] for s in degrade(image, "broad", scale=2,
                                            generator=np.random.default_rng(seed)).params]
        if "gamma" in names or "contrast" in names or "slice-blur" in names:
            assert names == ["slice-blur", "gamma", "resize"]  # drr-like, and only it
