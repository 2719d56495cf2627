"""Realism measures (issue 23): lung-patch spectra, the domain classifier, eval's realism block."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxrkit.metrics.realism import (
    band_log_ratios,
    band_powers,
    lung_patch_power,
    periodogram,
    radial_profile,
)

NIH_TOLERANCE = 0.25
"""|log10 ratio| of 8 real NIH radiographs against 8 others (other patients), every band. Measured
10 against 10 in three disjoint draws: at most 0.14 (band 1), most bands within 0.1."""


# --- analytic checks ---------------------------------------------------------------------------


def test_white_noise_spectrum_is_flat_at_its_variance() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(0.5, 0.05, (512, 512))
    power = lung_patch_power(image, np.ones_like(image, bool))
    assert power is not None and power.n_patches == 64
    bands = band_powers(power.power)
    np.testing.assert_allclose(bands, 0.05 ** 2, rtol=0.08)  # E|FFT|²/Σw² = σ² at every f
    louder = lung_patch_power(rng.normal(0.5, 0.1, (512, 512)), np.ones((512, 512), bool))
    ratio = band_log_ratios([band_powers(louder.power)], [bands])
    np.testing.assert_allclose(ratio, np.log10(4.0), atol=0.05)  # twice the σ: +0.60 everywhere


def test_sinusoid_power_sits_at_its_frequency() -> None:
    x = np.mgrid[0:64, 0:64][1]
    for cycles in (5, 12, 25):  # one per band 1, 2, 4 (band edges at 8, 16, 24 cycles / 64 px)
        patch = 0.5 + 0.1 * np.cos(2 * np.pi * cycles * x / 64)
        freqs, profile = radial_profile(periodogram(patch))
        assert abs(freqs[np.argmax(profile)] - cycles / 64) <= 1 / 64
        bands = band_powers(periodogram(patch))
        assert np.argmax(bands) == min(cycles * 4 // 32, 3)
        # Parseval: total power = N² · mean((w·(p − mean))²) / mean(w²) ≈ N² · var(p)
        assert periodogram(patch).sum() / 64 ** 2 == pytest.approx(0.1 ** 2 / 2, rel=0.1)


def test_patches_follow_the_lung_mask() -> None:
    image = np.random.default_rng(1).random((256, 256))
    lung = np.zeros((256, 256), bool)
    lung[64:192, 64:128] = True  # exactly two 64 px grid patches
    assert lung_patch_power(image, lung).n_patches == 2
    assert lung_patch_power(image, np.zeros_like(lung)) is None


# --- real radiographs -------------------------------------------------------------------------


def _patients(shared_data: Path, count: int) -> list[Path]:
    seen: dict[str, Path] = {}
    for path in sorted((shared_data / "nih-cxr14" / "images").glob("*.png")):
        seen.setdefault(path.name.split("_")[0], path)
    return list(seen.values())[:count]


@pytest.mark.realdata
def test_real_radiographs_match_their_set_and_blur_falls_at_high_frequency(
        shared_data: Path) -> None:
    from scipy import ndimage

    from cxrkit.io import read_radiograph
    from cxrkit.realism import ReferenceSpectra, find_pitch, spectrum

    files = _patients(shared_data, 16)
    reference = ReferenceSpectra.load([str(f) for f in files[:8]])
    assert 0.35 < reference.pitch_mm < 0.5 and reference.pitch_sources == ["nih-labels"]
    bands, blurred = [], []
    for path in files[8:]:
        pixels = read_radiograph(path).pixels
        pitch = find_pitch(path, pixels.shape[1]).mm
        bands.append(band_powers(spectrum(pixels, pitch, reference.pitch_mm).power))
        blur = ndimage.gaussian_filter(pixels, 1.5)
        blurred.append(band_powers(spectrum(blur, pitch, reference.pitch_mm).power))
    same = band_log_ratios(bands, reference.spectra.bands)
    assert np.all(np.abs(same) < NIH_TOLERANCE), same
    blur_ratio = band_log_ratios(blurred, reference.spectra.bands)
    assert blur_ratio[3] < -1.5 and blur_ratio[3] < blur_ratio[2] < blur_ratio[1], blur_ratio
    assert abs(blur_ratio[0]) < NIH_TOLERANCE  # the coarse structure stays


# --- the domain classifier ---------------------------------------------------------------------


def _drrs(shared_data: Path, count: int) -> list[np.ndarray]:
    """Raw DRRs of the sample CT in varied poses, 192 px at 1.6 mm."""
    from cxrkit import drr
    from cxrkit.geometry import Geometry
    from cxrkit.volume import read_volume

    ct_path = shared_data / "lidc-idri-0001" / "ct.nii.gz"
    if not ct_path.exists():
        pytest.skip("the sample CT is not in shared/data")
    ct = read_volume(ct_path)
    rng = np.random.default_rng(3)
    out = []
    for _ in range(count):
        geometry = Geometry(detector_px=(192, 192), pixel_mm=(1.6, 1.6),
                            rotation_deg=tuple(rng.uniform(-4, 4, 3)),
                            translation_mm=(float(rng.uniform(-20, 20)), 0.0, 0.0))
        line = drr.project(ct, geometry, kev=float(rng.uniform(50, 90))).line_integral
        out.append(drr.to_display(line, (1.6, 1.6))[0])
    return out


@pytest.mark.realdata
def test_domain_classifier_separates_held_out_patches(shared_data: Path, tmp_path: Path) -> None:
    from cxrkit.domain import (
        DomainClassifier,
        DomainSettings,
        HeldOutPatches,
        PatchImage,
        probability,
        train_domain,
    )
    from cxrkit.io import read_radiograph
    from cxrkit.realism import at_pitch, find_pitch, lung_mask
    from cxrkit.train import TrainConfig

    settings = DomainSettings(pixel_mm=1.6, patch_px=32, width=6)

    def item(pixels: np.ndarray, pitch: float) -> PatchImage:
        image = at_pitch(pixels, pitch, settings.pixel_mm)
        return PatchImage(image, lung_mask(image))

    real = [item(read_radiograph(p).pixels, find_pitch(p, 1024).mm)
            for p in _patients(shared_data, 10)]
    drrs = [item(d, 1.6) for d in _drrs(shared_data, 7)]
    held_out = HeldOutPatches.of(real[7:], drrs[5:], settings.patch_px, per_image=12)
    config = TrainConfig(output_dir=str(tmp_path / "domain"), steps=300, batch_size=24, lr=3e-3,
                         warmup_steps=10, ema_decay=0.0, checkpoint_every=0, validate_every=0,
                         log_every=1000, device="cpu")
    result = train_domain(settings, config, real=real[:7], drr=drrs[:5], held_out=held_out)
    print(result.metrics, np.mean(result.losses[:25]), np.mean(result.losses[-25:]))
    assert np.mean(result.losses[-25:]) < np.mean(result.losses[:25]) - 0.05
    assert result.metrics["auc"] > 0.8 and result.metrics["accuracy"] > 0.7, result.metrics
    model = DomainClassifier.load(tmp_path / "domain")
    assert json.loads((tmp_path / "domain" / "run.json").read_text())["validation"]["auc"] > 0.8
    assert probability(model, real[8].image, real[8].lung) > probability(
        model, drrs[6].image, drrs[6].lung)


def test_domain_classifier_ignores_global_tone() -> None:
    import torch

    from cxrkit.domain import DomainClassifier, DomainSettings

    model = DomainClassifier.new(DomainSettings(patch_px=32, width=4), seed=0).eval()
    patch = torch.rand(2, 1, 32, 32) * 0.2
    with torch.no_grad():
        torch.testing.assert_close(model(patch), model(patch + 0.5))


# --- eval's realism block ---------------------------------------------------------------------


@pytest.mark.realdata
def test_eval_realism_block(shared_data: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cxrkit.cli import app
    from cxrkit.degrade.operators import resample
    from cxrkit.domain import DomainClassifier, DomainSettings
    from cxrkit.io import Radiograph, read_radiograph, write_radiograph

    files = _patients(shared_data, 6)
    records = []
    for path in files[:2]:  # "enhanced" = the real radiograph; its "input" = a half-size copy
        pixels = read_radiograph(path).pixels
        small = tmp_path / f"{path.stem}.lq.png"
        write_radiograph(small, Radiograph(resample(pixels, (512, 512), "area"), None, "display"))
        records.append({"id": path.stem, "path": str(path), "input": str(small),
                        "boxes": [[300, 400, 340, 440]]})  # in the input's pixels
    DomainClassifier.new(DomainSettings(patch_px=32, width=4), seed=0).save(tmp_path / "dom")
    ref = tmp_path / "ref"
    ref.mkdir()
    for path in files[2:]:
        (ref / path.name).symlink_to(path)
    (ref / "labels.csv").symlink_to(shared_data / "nih-cxr14" / "labels.csv")
    lines = "".join(json.dumps(r) + "\n" for r in records)
    result = CliRunner().invoke(app, ["eval", "--realism-ref", str(ref), "--domain-model",
                                      str(tmp_path / "dom"), "--json", "--bootstrap", "50",
                                      "--per-image"], input=lines)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    realism = data["realism"]
    assert realism["reference"]["n_images"] == 4
    ratios = realism["spectral_log_ratio"]
    assert set(ratios) == {"path", "input", "bicubic"}
    assert all(len(ratios[s]["log_ratio"]) == 4 and len(ratios[s]["ci95"]) == 4 for s in ratios)
    assert np.all(np.abs(ratios["path"]["log_ratio"]) < 0.5)  # real radiographs
    assert ratios["bicubic"]["log_ratio"][3] < ratios["path"]["log_ratio"][3] - 1.0
    assert set(realism["domain_p"]) >= {"model", "path", "input", "bicubic"}
    cnr = realism["nodule_cnr"]
    assert cnr["ratio"]["n"] == 2 and 0.5 < cnr["ratio"]["mean"] < 2.0
    assert "log10" in realism["definition"] and len(realism["spectrum"]["reference"]) == 32
    assert {"domain_p", "nodule_cnr", "nodule_cnr_input", "cnr_ratio"} <= set(
        data["per_image"][0])
