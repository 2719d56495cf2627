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
10 against 10 in three disjoint draws: at most 0.14 (band 1), most bands within 0.1; a single
radiograph against the 10: at most 0.27."""


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
    for one in bands:  # one radiograph against the set: within ±0.4 (measured ±0.27 at most)
        assert np.all(np.abs(band_log_ratios([one], reference.spectra.bands)) < 0.4)
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


@pytest.mark.slow
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
    config = TrainConfig(output_dir=str(tmp_path / "domain"), steps=800, batch_size=24, lr=2e-3,
                         lr_schedule="cosine",
                         warmup_steps=10, ema_decay=0.0, checkpoint_every=0, validate_every=0,
                         log_every=1000, device="cpu")
    result = train_domain(settings, config, real=real[:7], drr=drrs[:5], held_out=held_out)
    assert np.mean(result.losses[-25:]) < np.mean(result.losses[:25]) - 0.05
    assert result.metrics["auc"] > 0.8 and result.metrics["accuracy"] > 0.7, result.metrics
    model = DomainClassifier.load(tmp_path / "domain")
    assert json.loads((tmp_path / "domain" / "run.json").read_text())["validation"]["auc"] > 0.8
    assert probability(model, real[8].image, real[8].lung) > probability(
        model, drrs[6].image, drrs[6].lung)


@pytest.mark.realdata
def test_shipped_domain_classifier_separates_held_out_radiographs_and_drrs(
        shared_data: Path) -> None:
    from cxrkit.domain import DomainClassifier, probability
    from cxrkit.realism import SHIPPED_DOMAIN_MODEL, at_pitch, load_at_pitch, lung_mask

    model = DomainClassifier.load(SHIPPED_DOMAIN_MODEL)
    run = json.loads((SHIPPED_DOMAIN_MODEL / "run.json").read_text())
    assert run["validation"]["auc"] > 0.9 and run["stopped"] is None
    held_out = sorted(run["data"]["real_validation"])[:3]  # patients it never saw
    images = shared_data / "nih-cxr14" / "images"
    real = load_at_pitch([str(images / name) for name in held_out], model.settings.pixel_mm)
    p_real = [probability(model, item.image, item.lung) for item in real]
    p_drr = []
    for pixels in _drrs(shared_data, 2):  # poses of another seed and size than its training set
        image = at_pitch(pixels, 1.6, model.settings.pixel_mm)
        p_drr.append(probability(model, image, lung_mask(image)))
    assert min(p_real) > max(p_drr), (p_real, p_drr)
    assert np.mean(p_real) > 0.5 > np.mean(p_drr)


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
    rng = np.random.default_rng(0)
    for path in files[:2]:  # "enhanced" = the radiograph + faint noise; "input" = half size
        pixels = read_radiograph(path).pixels
        small, out = tmp_path / f"{path.stem}.lq.png", tmp_path / f"{path.stem}.out.png"
        write_radiograph(small, Radiograph(resample(pixels, (512, 512), "area"), None, "display"))
        noisy = np.clip(pixels + rng.normal(0, 0.004, pixels.shape), 0, 1).astype(np.float32)
        write_radiograph(out, Radiograph(noisy, None, "display"))
        records.append({"id": path.stem, "path": str(out), "input": str(small),
                        "reference": str(path), "spacing_mm": [0.42, 0.42],
                        "boxes": [[300, 400, 340, 440]],  # in the input's pixels
                        "degrade": {"options": {"preset": "area", "scale": 2}},
                        "enhance": {"options": {"method": "diffusion", "model": None},
                                    "model": "ab" * 32}})
    DomainClassifier.new(DomainSettings(patch_px=32, width=4), seed=0).save(tmp_path / "dom")
    ref = tmp_path / "ref"
    ref.mkdir()
    for path in files[2:]:
        (ref / path.name).symlink_to(path)
    (ref / "labels.csv").symlink_to(shared_data / "nih-cxr14" / "labels.csv")
    lines = "".join(json.dumps(r) + "\n" for r in records)
    result = CliRunner().invoke(app, ["eval", "--realism-ref", str(ref), "--domain-model",
                                      str(tmp_path / "dom"), "--json", "--bootstrap", "50",
                                      "--per-image", "--report", str(tmp_path / "r.html"),
                                      "--fail-under", "psnr_gain=0", "--fail-under",
                                      "cnr_ratio=0.5"],
                                input=lines)
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
    baseline = data["baseline"]
    assert baseline["psnr_gain"]["mean"] > 0 and baseline["psnr_gain"]["n"] == 2
    page = (tmp_path / "r.html").read_text()
    for part in ("Does it beat the baseline?", "psnr gain over bicubic", "input (LQ)",
                 "bicubic", "reference", "output", "Made by: degrade preset area ×2; enhance "
                 "diffusion model shipped (sha256 abababababab)", "realism spectra",
                 "Realism against real radiographs", "band 4 (high)"):
        assert part in page, part


def test_anatomy_window_avoids_markers_and_border() -> None:
    from cxrkit.report import anatomy_window

    reference = np.full((400, 400), 0.5)
    output, baseline = reference.copy(), reference.copy()
    output[30:60, 300:360] += 0.4  # a letter marker: the largest difference, but saturated
    reference[30:60, 300:360] = 1.0
    output[5:15, 5:395] += 0.3  # along the image border
    output[250:270, 150:170] += 0.1  # anatomy inside the lung
    lung = np.zeros((400, 400), bool)
    lung[100:380, 40:360] = True
    r, c = anatomy_window(output, baseline, reference, lung, 64)
    assert r <= 250 and r + 64 >= 270 and c <= 150 and c + 64 >= 170


def test_report_figures_fit_the_page() -> None:
    import base64
    import io

    from PIL import Image

    from cxrkit.metrics.records import Summary
    from cxrkit.report import build_report

    rows = [{"id": str(i), "path": f"{i}.png", "psnr": 30.0 + i, "ssim": 0.9, "ms_ssim": 0.95,
             "psnr_fit": 31.0, "noise_sigma": 0.01, "mean_gradient": 0.02, "cnr": 1.0}
            for i in range(5)]
    page = build_report(Summary({"n_records": 5, "n_failed": 0}, rows), [])
    for uri in page.split('src="data:image/png;base64,')[1:]:
        width = Image.open(io.BytesIO(base64.b64decode(uri.split('"')[0]))).width
        assert width <= 1500
    assert "max-width: 100%" in page


def test_report_realism_only_example_shows_input_output_and_bicubic() -> None:
    from cxrkit.metrics.records import Summary
    from cxrkit.report import Example, build_report

    rng = np.random.default_rng(0)
    lq = rng.random((64, 64)).astype(np.float32) * 0.5 + 0.25
    baseline = np.kron(lq, np.ones((2, 2), np.float32))
    output = np.clip(baseline + rng.normal(0, 0.02, baseline.shape), 0, 1)
    row = {"id": "a", "path": "a.png", "domain_p": 0.4, "cnr_ratio": 1.1}
    page = build_report(Summary({"n_records": 1, "n_failed": 0}, [row]),
                        [Example("best", row, output, None, lq=lq, baseline=baseline,
                                 made_by="enhance diffusion")])
    for part in ("output, crop marked", "input (LQ)", "bicubic", "|output − bicubic|",
                 "domain_p 0.4", "Made by: enhance diffusion"):
        assert part in page, part


def test_baseline_and_realism_gates() -> None:
    from cxrkit.metrics.records import baseline_summary, check_thresholds

    rows = [{"psnr": 30.0, "psnr_bicubic": 32.0, "ssim": 0.9, "ssim_bicubic": 0.91},
            {"psnr": 31.0, "psnr_bicubic": 32.5, "ssim": 0.92, "ssim_bicubic": 0.9}]
    block = baseline_summary(rows, n_boot=200)
    assert block["psnr_gain"]["mean"] == pytest.approx(-1.75)
    metrics = {"baseline": block, "realism": {"domain_p": {"path": {"mean": 0.3}},
                                              "nodule_cnr": {"ratio": {"mean": 0.95}}}}
    failures = check_thresholds(metrics, {"psnr_gain": 0.0, "ssim_gain": 0.0, "domain_p": 0.5,
                                          "cnr_ratio": 0.9})
    assert [f.split()[0] for f in failures] == ["psnr_gain", "domain_p"]
