"""Tests of cxrkit.metrics: analytic cases, scikit-image as the SSIM oracle, and the golden toy
FROC/AUC example of the evaluation rules (ecosystem research §3.3)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import ndimage, special

from cxrkit.errors import InputError
from cxrkit.metrics import (
    MS_SSIM_MIN_SIZE,
    auc,
    bootstrap_ci,
    box_iou,
    contrast_to_noise,
    cpm,
    detection_metrics,
    edge_width,
    froc,
    image_scores,
    match_detections,
    mean_gradient,
    ms_ssim,
    noise_sigma,
    psnr,
    psnr_linear_fit,
    segmentation_metrics,
    ssim,
)

SIZE = 64


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    """A 64x64 textured reference and a blurred, noisy, darker version of it, in [0, 1]."""
    rng = np.random.default_rng(99)
    ref = ndimage.gaussian_filter(rng.random((SIZE, SIZE)), 1.5)
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    test = ndimage.gaussian_filter(ref, 1.0) * 0.9 + 0.03 * rng.standard_normal(ref.shape)
    return np.clip(test, 0, 1).astype(np.float32), ref.astype(np.float32)


TRUTH = [[[10, 10, 30, 30]], [[40, 40, 60, 60], [5, 5, 15, 15]], [], []]
BOXES = [[[12, 12, 30, 30], [13, 13, 31, 31], [60, 60, 70, 70]], [[41, 41, 59, 59]],
         [[0, 0, 10, 10]], []]
SCORES = [[0.9, 0.8, 0.3], [0.6], [0.7], []]


def test_psnr_of_identical_images_is_infinite(pair: tuple[np.ndarray, np.ndarray]) -> None:
    assert psnr(pair[1], pair[1]) == math.inf


def test_psnr_analytic() -> None:
    ref = np.full((8, 8), 0.5)
    assert psnr(ref + 0.1, ref) == pytest.approx(20.0)  # MSE 0.01
    assert psnr(ref + 25.5, ref, data_range=255.0) == pytest.approx(20.0)


def test_psnr_rejects_shape_mismatch() -> None:
    with pytest.raises(InputError):
        psnr(np.zeros((4, 4)), np.zeros((4, 5)))


def test_psnr_linear_fit_undoes_contrast_and_brightness(
    pair: tuple[np.ndarray, np.ndarray],
) -> None:
    test, ref = pair
    assert psnr_linear_fit(0.5 * ref + 0.2, ref) > 100
    slope, intercept = np.polyfit(test.ravel().astype(float), ref.ravel().astype(float), 1)
    expected = psnr(slope * test.astype(float) + intercept, ref)
    assert psnr_linear_fit(test, ref) == pytest.approx(expected, abs=1e-6)
    assert psnr_linear_fit(test, ref) >= psnr(test, ref)
    constant = np.full_like(ref, 0.3)
    assert psnr_linear_fit(constant, ref) == pytest.approx(psnr(np.full_like(ref, ref.mean()), ref))


def test_ssim_of_identical_images_is_one(pair: tuple[np.ndarray, np.ndarray]) -> None:
    assert ssim(pair[1], pair[1]) == pytest.approx(1.0, abs=1e-6)


def test_ssim_matches_scikit_image(pair: tuple[np.ndarray, np.ndarray]) -> None:
    metrics = pytest.importorskip("skimage.metrics")
    test, ref = pair
    rng = np.random.default_rng(3)
    cases = [(test, ref), (ref * 0.7 + 0.2, ref), (rng.random(ref.shape), ref),
             (np.clip(ref + 0.1 * rng.standard_normal(ref.shape), 0, 1), ref)]
    tall = ndimage.gaussian_filter(rng.random((300, 40)), 1.0)  # several row blocks
    cases.append((np.clip(tall + 0.05 * rng.standard_normal(tall.shape), 0, 1), tall))
    for x, y in cases:
        expected = metrics.structural_similarity(
            x.astype(np.float64), y.astype(np.float64), gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, data_range=1.0)
        assert ssim(x, y) == pytest.approx(expected, abs=1e-4)


def test_ssim_rejects_images_smaller_than_the_window() -> None:
    with pytest.raises(InputError):
        ssim(np.zeros((10, 10)), np.zeros((10, 10)))


def _ms_ssim_reference(x: np.ndarray, y: np.ndarray, weights: tuple[float, ...]) -> float:
    """MS-SSIM written independently with scipy: Gaussian filter, valid crop, 2x2 means."""
    c1, c2 = 0.01**2, 0.03**2
    value = 1.0
    for j, weight in enumerate(weights):
        def blur(a: np.ndarray) -> np.ndarray:
            return ndimage.gaussian_filter(a, 1.5, truncate=3.5)[5:-5, 5:-5]
        mx, my = blur(x), blur(y)
        vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
        cs = (2 * cov + c2) / (vx + vy + c2)
        term = cs * (2 * mx * my + c1) / (mx**2 + my**2 + c1) if j == len(weights) - 1 else cs
        value *= max(term.mean(), 0.0) ** weight
        h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
        x = x[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
        y = y[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    return value


def test_ms_ssim_matches_an_independent_implementation() -> None:
    rng = np.random.default_rng(11)
    ref = ndimage.gaussian_filter(rng.random((MS_SSIM_MIN_SIZE + 7,) * 2), 2.0)
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    test = np.clip(ndimage.gaussian_filter(ref, 1.2) + 0.02 * rng.standard_normal(ref.shape), 0, 1)
    weights = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    assert ms_ssim(test, ref) == pytest.approx(_ms_ssim_reference(test, ref, weights), abs=1e-4)
    assert ms_ssim(ref, ref) == pytest.approx(1.0, abs=1e-6)


def test_ms_ssim_single_scale_is_ssim(pair: tuple[np.ndarray, np.ndarray]) -> None:
    assert ms_ssim(*pair, weights=(1.0,)) == pytest.approx(ssim(*pair), abs=1e-7)


def test_ms_ssim_needs_176_px() -> None:
    assert MS_SSIM_MIN_SIZE == 176
    with pytest.raises(InputError):
        ms_ssim(np.zeros((175, 300)), np.zeros((175, 300)))


def test_golden_toy_froc_and_auc() -> None:
    curve = froc(TRUTH, BOXES, SCORES)
    np.testing.assert_allclose(curve.thresholds, [0.9, 0.8, 0.7, 0.6, 0.3])
    np.testing.assert_allclose(curve.fp_per_image, [0, 0.25, 0.5, 0.5, 0.75])
    np.testing.assert_allclose(curve.sensitivity, [1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(curve.sensitivity_at([0.125, 0.25, 0.5]), [1 / 3, 1 / 3, 2 / 3])
    summary = detection_metrics(TRUTH, BOXES, SCORES)
    assert summary["auc"] == pytest.approx(0.75)
    assert summary["sens@0.125"] == pytest.approx(1 / 3)
    assert summary["sens@0.25"] == pytest.approx(1 / 3)
    assert summary["sens@0.5"] == pytest.approx(2 / 3)
    assert summary["node21_score"] == pytest.approx(0.6458, abs=1e-4)
    assert summary["cpm"] == pytest.approx((2 * (1 / 3) + 5 * (2 / 3)) / 7)
    assert (summary["hit"], summary["duplicates"], summary["n_images"]) == ("iou>0.2", "fp", 4)
    np.testing.assert_allclose(image_scores(SCORES), [0.9, 0.6, 0.7, 0.0])


def test_toy_froc_with_duplicates_ignored() -> None:
    curve = froc(TRUTH, BOXES, SCORES, duplicates="ignore")
    np.testing.assert_allclose(curve.thresholds, [0.9, 0.7, 0.6, 0.3])
    np.testing.assert_allclose(curve.fp_per_image, [0, 0.25, 0.25, 0.5])
    np.testing.assert_allclose(curve.sensitivity, [1 / 3, 1 / 3, 2 / 3, 2 / 3])


def test_sensitivity_interpolation_linear_and_step() -> None:
    curve = froc(TRUTH, BOXES, SCORES)
    # The polyline runs (0.25, 1/3) → (0.5, 1/3), then steps up to (0.5, 2/3): 1/3 at 0.375
    # (not 1/2, the line to the top of the step); the top of the step counts at 0.5 itself.
    assert curve.sensitivity_at([0.375])[0] == pytest.approx(1 / 3)
    np.testing.assert_allclose(curve.sensitivity_at([0.5, 0.625]), [2 / 3, 2 / 3])
    assert curve.sensitivity_at([0.0])[0] == pytest.approx(1 / 3)  # a hit before any FP
    assert curve.sensitivity_at([0.375], "step")[0] == pytest.approx(1 / 3)
    assert curve.sensitivity_at([8.0])[0] == pytest.approx(2 / 3)  # held beyond the curve
    assert cpm(curve, "step") == pytest.approx((2 * (1 / 3) + 5 * (2 / 3)) / 7)


def _step_case() -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Issue #22's case: 10 images, 4 with one lesion; the three highest boxes are false
    positives (0.1 … 0.3 FP/image), then all four lesions are found at 0.3 FP/image, then one
    more false positive; image AUC ½."""
    lesion, elsewhere = [[0, 0, 10, 10]], [[50, 50, 60, 60]]
    truth = [np.array(lesion)] * 4 + [np.zeros((0, 4))] * 6
    boxes = [np.array(lesion)] * 4 + [np.array(elsewhere)] * 4 + [np.zeros((0, 4))] * 2
    scores = [np.array([s]) for s in (0.6, 0.55, 0.5, 0.45, 0.9, 0.8, 0.7, 0.1)]
    return truth, boxes, scores + [np.zeros(0)] * 2


def test_sensitivity_follows_the_vertical_step_of_tied_fp_rates() -> None:
    # MONAI compute_froc_score, LUNA16 computeFROC and a NODE21 scorer give 0, 0.375 and 5/7;
    # keeping only the top of the step at 0.3 FP/image gave 0.5, 0.5 and 0.786.
    truth, boxes, scores = _step_case()
    curve = froc(truth, boxes, scores)
    np.testing.assert_allclose(curve.fp_per_image, [0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.4])
    np.testing.assert_allclose(curve.sensitivity, [0, 0, 0, 0.25, 0.5, 0.75, 1, 1])
    summary = detection_metrics(truth, boxes, scores)
    assert summary["auc"] == pytest.approx(0.5)
    assert [summary[f"sens@{r}"] for r in (0.125, 0.25, 0.5)] == pytest.approx([0, 0, 1])
    assert summary["node21_score"] == pytest.approx(0.375)
    assert summary["cpm"] == pytest.approx(5 / 7)
    np.testing.assert_allclose(curve.sensitivity_at([0.29, 0.3, 0.35]), [0, 1, 1])


def _luna16_sensitivity(labels: np.ndarray, scores: np.ndarray, n_images: int, n_lesions: int,
                        rates: np.ndarray) -> np.ndarray:
    """Sensitivity at FP rates the LUNA16 computeFROC way, one candidate at a time (written from
    its description, for scores without ties): sort by score, cumulative TP and FP, np.interp."""
    order = np.argsort(-scores, kind="stable")
    fps = np.r_[0.0, np.cumsum(labels[order] == 0) / n_images]
    sens = np.r_[0.0, np.cumsum(labels[order] == 1) / n_lesions]
    return np.interp(rates, fps, sens)


def _monai_sensitivity(labels: np.ndarray, scores: np.ndarray, n_images: int, n_lesions: int,
                       rates: np.ndarray) -> np.ndarray:
    """Sensitivity at FP rates the MONAI compute_froc_curve_data/compute_froc_score way (ties
    allowed): one point per distinct score t, counting candidates with score ≥ t, plus (0, 0),
    then np.interp. (MONAI also drops the lowest threshold; every threshold is kept here.)"""
    thresholds = np.unique(scores)  # ascending
    fps = [np.sum(scores[labels == 0] >= t) / n_images for t in thresholds] + [0.0]
    sens = [np.sum(scores[labels == 1] >= t) / n_lesions for t in thresholds] + [0.0]
    return np.interp(rates, np.array(fps)[::-1], np.array(sens)[::-1])


def _random_case(rng: np.random.Generator, decimals: int | None
                 ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], np.ndarray,
                            np.ndarray]:
    """Random images whose every box is a known hit (a copy of a lesion) or a known false
    positive (far from all lesions), so the reference needs no matching."""
    truth, boxes, scores, labels = [], [], [], []
    for i in range(int(rng.integers(6, 25))):
        n = 1 if i == 0 else 0 if i == 1 else int(rng.integers(0, 4))
        lesions = np.array([[30 * k, 0, 30 * k + 10, 10] for k in range(n)]).reshape(-1, 4)
        found = lesions[rng.random(n) < 0.7]
        n_fp = int(rng.integers(0, 4))
        fps = np.array([[30 * k, 100, 30 * k + 10, 110] for k in range(n_fp)]).reshape(-1, 4)
        values = rng.random(len(found) + n_fp) * 0.8 + 0.2 * (np.arange(len(found) + n_fp)
                                                              < len(found))
        if decimals is not None:
            values = np.round(values, decimals)
        truth.append(lesions.astype(float))
        boxes.append(np.concatenate([found, fps]).astype(float))
        scores.append(values)
        labels.append(np.r_[np.ones(len(found), int), np.zeros(n_fp, int)])
    return truth, boxes, scores, np.concatenate(labels), np.concatenate(scores)


@pytest.mark.parametrize("seed", range(8))
def test_froc_sensitivity_equals_luna16_and_monai_references(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for decimals in (None, 1):  # continuous scores, then many ties (steps and diagonal jumps)
        truth, boxes, scores, labels, pooled = _random_case(rng, decimals)
        n_images, n_lesions = len(truth), sum(len(t) for t in truth)
        curve = froc(truth, boxes, scores)
        rates = np.r_[0.125, 0.25, 0.5, 1, 2, 4, 8, np.unique(curve.fp_per_image),
                      np.linspace(0, 3, 61)]
        got = curve.sensitivity_at(rates)
        np.testing.assert_allclose(
            got, _monai_sensitivity(labels, pooled, n_images, n_lesions, rates), atol=1e-9)
        if decimals is None:
            np.testing.assert_allclose(
                got, _luna16_sensitivity(labels, pooled, n_images, n_lesions, rates), atol=1e-9)
        cpm_rates = np.array([0.125, 0.25, 0.5, 1, 2, 4, 8])
        expected = _monai_sensitivity(labels, pooled, n_images, n_lesions, cpm_rates)
        summary = detection_metrics(truth, boxes, scores)
        assert summary["cpm"] == pytest.approx(float(expected.mean()), abs=1e-9)
        assert summary["node21_score"] == pytest.approx(
            0.75 * summary["auc"] + 0.25 * float(expected[1]), abs=1e-9)


def test_matching_takes_the_best_free_lesion_and_a_strict_threshold() -> None:
    truth = np.array([[0, 0, 10, 10], [4, 0, 14, 10]])
    labels = match_detections(truth, [[4, 0, 14, 10], [1, 0, 11, 10]], [0.9, 0.8])
    np.testing.assert_array_equal(labels, [1, 1])  # first takes lesion 2 (IoU 1), second lesion 1
    # IoU exactly 0.2 is not a hit: [0, 0, 10, 10] vs [0, 0, 2, 10] has IoU 20/100.
    assert match_detections([[0, 0, 10, 10]], [[0, 0, 2, 10]], [0.5]).tolist() == [0]


def test_box_iou_analytic() -> None:
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10], [20, 20, 30, 30]]))
    np.testing.assert_allclose(iou, [[50 / 150, 0.0]])
    assert box_iou(np.zeros((0, 4)), np.array([[0, 0, 1, 1]])).shape == (0, 1)


def test_auc_counts_ties_as_half() -> None:
    assert auc([0.5, 0.5], [1, 0]) == 0.5
    rng = np.random.default_rng(4)
    scores = rng.integers(0, 4, 30).astype(float)  # many ties
    labels = rng.integers(0, 2, 30)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)]
    assert auc(scores, labels) == pytest.approx(np.mean(pairs))


def test_auc_needs_both_classes() -> None:
    with pytest.raises(InputError):
        auc([0.1, 0.9], [1, 1])


def test_froc_needs_lesions_and_matching_lists() -> None:
    with pytest.raises(InputError):
        froc([[], []], [[], []], [[], []])
    with pytest.raises(InputError):
        froc(TRUTH, BOXES[:3], SCORES)


def test_segmentation_conventions_on_a_toy_set() -> None:
    gt_a = np.zeros((4, 4), bool)
    gt_a[0, :2] = True
    pred_b, gt_b = np.zeros((4, 4)), np.zeros((4, 4), bool)
    pred_b[3, :2], gt_b[0, :2] = 0.9, True  # disjoint
    empty = np.zeros((4, 4))
    result = segmentation_metrics([gt_a.astype(float), pred_b, empty], [gt_a, gt_b, empty])
    assert result["iou_mean_pos"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert result["iou_global"] == pytest.approx(1 / 3)  # 2 / (2 + 4)
    assert result["iou_mean_all_empty1"] == pytest.approx(2 / 3)
    assert result["dice_mean_pos"] == pytest.approx(0.5)
    assert result["empty_fp_rate"] == 0.0
    assert "images with a lesion" in result["convention"]


def test_noise_sigma_estimates_white_noise_on_a_smooth_image() -> None:
    rng = np.random.default_rng(5)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    image = 0.2 + 0.5 * rows + 0.2 * cols + 0.05 * rng.standard_normal((SIZE, SIZE))
    assert noise_sigma(image) == pytest.approx(0.05, rel=0.1)
    assert noise_sigma(0.2 + 0.5 * rows + 0.2 * cols) == pytest.approx(0.0, abs=1e-12)


def test_contrast_to_noise_of_a_disc() -> None:
    rng = np.random.default_rng(6)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    disc = np.hypot(rows - 32, cols - 32) < 8
    image = 0.5 + 0.1 * disc + 0.02 * rng.standard_normal((SIZE, SIZE))
    assert contrast_to_noise(image, disc) == pytest.approx(0.1 / 0.02, rel=0.1)


def test_edge_width_of_a_blurred_step() -> None:
    x = np.arange(101) - 50.0
    profile = 0.5 * (1 + special.erf(x / (3.0 * math.sqrt(2))))  # step blurred by sigma 3
    assert edge_width(profile) == pytest.approx(2 * 1.2816 * 3.0, rel=0.01)
    assert edge_width(profile[::-1]) == pytest.approx(edge_width(profile))


def test_mean_gradient_of_a_ramp() -> None:
    ramp = np.tile(np.arange(SIZE) * 0.01, (SIZE, 1))
    assert mean_gradient(ramp) == pytest.approx(0.01)


def test_bootstrap_ci_is_seeded_and_covers_the_mean() -> None:
    values = np.random.default_rng(7).normal(10.0, 1.0, 200)
    low, high = bootstrap_ci(values, seed=1)
    assert (low, high) == bootstrap_ci(values, seed=1)
    assert low < values.mean() < high
    half_width = 1.96 / math.sqrt(200)  # normal-theory CI of the mean, sd 1
    assert high - low == pytest.approx(2 * half_width, rel=0.2)
    assert bootstrap_ci([3.0] * 5, seed=0) == (3.0, 3.0)


def test_bootstrap_ci_stratified_auc() -> None:
    rng = np.random.default_rng(8)
    labels = np.r_[np.ones(30, int), np.zeros(30, int)]
    scores = labels + rng.normal(0, 1, 60)
    rows = np.column_stack([scores, labels])
    low, high = bootstrap_ci(rows, seed=2, n=200, statistic=lambda r: auc(r[:, 0], r[:, 1]),
                             strata=labels)
    assert 0.5 < low < auc(scores, labels) < high <= 1.0


def test_froc_without_any_candidate_is_zero_sensitivity() -> None:
    import numpy as np

    from cxrkit.metrics import froc

    curve = froc([np.array([[0, 0, 10, 10]])], [np.zeros((0, 4))], [np.zeros(0)])
    assert list(curve.sensitivity_at([0.125, 0.25, 0.5])) == [0.0, 0.0, 0.0]


def test_differentiable_ssim_equals_the_measure_and_has_gradients() -> None:
    from cxrkit.metrics import ssim_torch

    rng = np.random.default_rng(3)
    ref = ndimage.gaussian_filter(rng.random((2, 48, 40)), 2).astype(np.float32)
    test = np.clip(ref + 0.05 * rng.standard_normal(ref.shape), 0, 1).astype(np.float32)
    x = torch.from_numpy(test)[:, None].requires_grad_(True)
    values = ssim_torch(x, torch.from_numpy(ref)[:, None])
    for i in range(2):
        assert values[i].item() == pytest.approx(ssim(test[i], ref[i]), abs=1e-5)
    (1 - values).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    same = torch.from_numpy(ref)[:, None]
    assert torch.allclose(ssim_torch(same, same), torch.ones(2))
    with pytest.raises(InputError):
        ssim_torch(same[:, :, :8], same[:, :, :8])
