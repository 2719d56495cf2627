"""Image-quality measures: full-reference (PSNR, SSIM, MS-SSIM), no-reference, bootstrap CIs.

Images are ``(H, W)`` float arrays on the scale given by ``data_range`` (cxrkit display images:
float32 in [0, 1], so ``data_range = 1``). The test image comes first, the reference second.
SSIM and MS-SSIM filter with torch on the CPU (separable, float32); everything else is numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from cxrkit.errors import InputError

SSIM_WINDOW = 11
"""Side of the SSIM Gaussian window, px."""
SSIM_SIGMA = 1.5
"""Standard deviation of the SSIM Gaussian window, px."""
SSIM_K1, SSIM_K2 = 0.01, 0.03
"""SSIM stabilising constants: ``C1 = (K1·L)²``, ``C2 = (K2·L)²`` with ``L = data_range``."""
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""Per-scale exponents of MS-SSIM, finest first (Wang et al. 2003)."""
MS_SSIM_MIN_SIZE = SSIM_WINDOW * 2 ** (len(MS_SSIM_WEIGHTS) - 1)
"""Smallest side (176 px) for which the coarsest of the 5 MS-SSIM scales holds one window."""

_BLOCK_ROWS = 128
"""SSIM output rows per block: the moment maps of a 1024-wide block take ~3 MB."""


def _gaussian_taps(size: int, sigma: float) -> tuple[float, ...]:
    """Normalised 1-D Gaussian taps centred on ``size // 2`` (scikit-image's window at 11, 1.5)."""
    weights = np.exp(-0.5 * ((np.arange(size) - size // 2) / sigma) ** 2)
    return tuple(float(w) for w in weights / weights.sum())


_TAPS = _gaussian_taps(SSIM_WINDOW, SSIM_SIGMA)


def psnr(x: np.ndarray, ref: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio ``10·log10(L² / MSE)`` in dB, with ``L = data_range``.

    Args:
        x: test image, any shape.
        ref: reference of the same shape.
        data_range: ``L``, the span of valid values (1 for display images).

    Returns:
        PSNR in dB; ``inf`` when the images are identical.

    Raises:
        InputError: shapes differ, the images are empty, or ``data_range`` ≤ 0.
    """
    x64, ref64 = _pair(x, ref)
    _check_data_range(data_range)
    mse = float(np.mean((x64 - ref64) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def psnr_linear_fit(x: np.ndarray, ref: np.ndarray, data_range: float = 1.0) -> float:
    """PSNR after the least-squares linear intensity fit ``a·x + b`` of ``x`` onto ``ref``.

    ``a = cov(x, ref) / var(x)`` and ``b = mean(ref) - a·mean(x)`` (``a = 0`` for a constant
    ``x``); the fitted image is not clipped. This separates detail from the global contrast and
    brightness changes that scatter and gamma cause.

    Args:
        x: test image, any shape.
        ref: reference of the same shape.
        data_range: ``L`` of :func:`psnr`.

    Returns:
        PSNR in dB of the fitted image.
    """
    x64, ref64 = _pair(x, ref)
    dx = x64 - x64.mean()
    var = float(np.mean(dx * dx))
    slope = float(np.mean(dx * (ref64 - ref64.mean()))) / var if var > 0 else 0.0
    fitted = slope * dx + ref64.mean()
    return psnr(fitted, ref64, data_range)


def ssim(x: np.ndarray, ref: np.ndarray, data_range: float = 1.0) -> float:
    """Mean structural similarity (Wang et al., IEEE TIP 2004, doi:10.1109/TIP.2003.819861).

    Local means, variances and covariance come from an 11x11 Gaussian window (sigma 1.5 px,
    normalised, population statistics); ``SSIM = (2·mx·my + C1)(2·cov + C2) /
    ((mx² + my² + C1)(vx + vy + C2))`` with ``C1 = (0.01·L)²``, ``C2 = (0.03·L)²``, averaged
    over the pixels whose window lies inside the image (5 px border dropped). This equals
    scikit-image's ``structural_similarity(x, ref, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=L)`` to ~1e-6, several times faster (separable float32
    filtering of four moment maps, block by block).

    Args:
        x: ``(H, W)`` test image, H and W ≥ 11.
        ref: ``(H, W)`` reference.
        data_range: ``L``, the span of valid values.

    Returns:
        Mean SSIM, in [-1, 1]; 1 for identical images.

    Raises:
        InputError: shapes differ, are not 2-D, or are smaller than the window.
    """
    tx, tref = _tensors(x, ref, SSIM_WINDOW)
    _check_data_range(data_range)
    return _ssim_and_cs(tx, tref, data_range)[0]


def ms_ssim(x: np.ndarray, ref: np.ndarray, data_range: float = 1.0, *,
            weights: Sequence[float] = MS_SSIM_WEIGHTS) -> float:
    """Multi-scale SSIM (Wang, Simoncelli & Bovik, Asilomar 2003, doi:10.1109/ACSSC.2003.1292216).

    ``MS-SSIM = Π_j cs_j ** w_j · ssim_M ** w_M``: the mean contrast-structure term ``cs_j`` of
    :func:`ssim` at scales ``j = 1 … M-1`` and the full SSIM at the coarsest scale ``M``, each
    image halved by 2x2 averaging between scales. Negative terms are clamped to 0 (as in
    pytorch-msssim) so the powers stay real. With the 5 standard weights, H and W must be at
    least :data:`MS_SSIM_MIN_SIZE` (176 px).

    Args:
        x: ``(H, W)`` test image.
        ref: ``(H, W)`` reference.
        data_range: ``L`` of :func:`ssim`.
        weights: per-scale exponents, finest first; ``(1.0,)`` gives plain SSIM.

    Returns:
        MS-SSIM in [0, 1]; 1 for identical images.

    Raises:
        InputError: shapes differ or are too small for the number of scales, or no weights.
    """
    if not weights:
        raise InputError("ms_ssim needs at least one scale weight")
    minimum = SSIM_WINDOW * 2 ** (len(weights) - 1)
    tx, tref = _tensors(x, ref, minimum)
    _check_data_range(data_range)
    value = 1.0
    for scale, weight in enumerate(weights):
        full, cs = _ssim_and_cs(tx, tref, data_range)
        term = full if scale == len(weights) - 1 else cs
        value *= max(term, 0.0) ** weight
        tx, tref = _halve(tx), _halve(tref)
    return value


def ssim_torch(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Differentiable mean SSIM of batches, for training losses (the measure of :func:`ssim`).

    Same window, constants and valid-region mean as :func:`ssim`, computed with ``conv2d`` so
    autograd flows through it; slower than :func:`ssim` and meant for crops, not whole images.

    Args:
        x: ``(B, 1, H, W)`` test images (any float dtype; computed in float32).
        ref: ``(B, 1, H, W)`` references.
        data_range: ``L``, the span of valid values.

    Returns:
        ``(B,)`` float32: the mean SSIM of each image.

    Raises:
        InputError: shapes differ, are not ``(B, 1, H, W)``, or are smaller than the window.
    """
    if x.shape != ref.shape or x.ndim != 4 or x.shape[1] != 1 or min(x.shape[-2:]) < SSIM_WINDOW:
        raise InputError(f"ssim_torch needs two (B, 1, H, W) batches of one shape with sides "
                         f">= {SSIM_WINDOW}, got {tuple(x.shape)} and {tuple(ref.shape)}")
    _check_data_range(data_range)
    taps = torch.tensor(_TAPS, dtype=torch.float32, device=x.device)
    window = (taps[:, None] * taps[None, :])[None, None]  # (1, 1, 11, 11)
    x, ref = x.float(), ref.float()
    shift = ref.mean(dim=(1, 2, 3), keepdim=True).detach()  # centring keeps float32 accurate
    x, ref = x - shift, ref - shift
    moments = F.conv2d(torch.cat([x, ref, x * x, ref * ref, x * ref], dim=1).flatten(0, 1)[:, None],
                       window).view(x.shape[0], 5, x.shape[2] - SSIM_WINDOW + 1, -1)
    mu_x, mu_y, xx, yy, xy = moments.unbind(1)  # each (B, H - 10, W - 10), of centred images
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    mu_x, mu_y = mu_x + shift[:, 0], mu_y + shift[:, 0]  # back to the true local means
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2))


def _ssim_and_cs(x: torch.Tensor, y: torch.Tensor, data_range: float) -> tuple[float, float]:
    """Mean SSIM and mean contrast-structure term of two ``(H, W)`` float32 tensors.

    Works through blocks of output rows, so that the four moment maps of a block stay in cache.
    """
    mean_x, mean_y = float(x.mean()), float(y.mean())
    # Centring changes no (co)variance and keeps the float32 moment maps accurate.
    x, y = x - mean_x, y - mean_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    out_rows, out_cols = x.shape[0] - SSIM_WINDOW + 1, x.shape[1] - SSIM_WINDOW + 1
    total_ssim = total_cs = 0.0
    for start in range(0, out_rows, _BLOCK_ROWS):
        stop = min(start + _BLOCK_ROWS, out_rows) + SSIM_WINDOW - 1
        block_ssim, block_cs = _ssim_sums(x[start:stop], y[start:stop], (mean_x, mean_y), c1, c2)
        total_ssim, total_cs = total_ssim + block_ssim, total_cs + block_cs
    return total_ssim / (out_rows * out_cols), total_cs / (out_rows * out_cols)


def _ssim_sums(x: torch.Tensor, y: torch.Tensor, means: tuple[float, float], c1: float,
               c2: float) -> tuple[float, float]:
    """Sums of the SSIM and contrast-structure maps over the valid part of a centred block."""
    # SSIM needs var_x + var_y only, so x² + y² is filtered as one map.
    mu_x, mu_y, squares, xy = _gaussian_valid(torch.stack([x, y, x * x + y * y, x * y]))
    # In place from here on: fewer temporaries, and the block stays in cache.
    covariance2 = xy.sub_(mu_x * mu_y).mul_(2)  # 2·cov
    variances = squares.sub_(mu_x * mu_x).sub_(mu_y * mu_y)  # var_x + var_y
    cs = covariance2.add_(c2).div_(variances.add_(c2))
    mu_x, mu_y = mu_x.add_(means[0]), mu_y.add_(means[1])  # back to the true local means
    numerator = (mu_x * mu_y).mul_(2).add_(c1)
    denominator = mu_x.square_().add_(mu_y.square_()).add_(c1)
    ssim_map = numerator.div_(denominator).mul_(cs)
    return float(ssim_map.sum(dtype=torch.float64)), float(cs.sum(dtype=torch.float64))


def _gaussian_valid(maps: torch.Tensor) -> torch.Tensor:
    """Separable SSIM Gaussian over the last two axes of ``(C, H, W)``, valid part only.

    Returns ``(C, H - 10, W - 10)``. Shifted multiply-adds beat ``conv2d`` for an 11-tap 1-D
    kernel on the CPU by about ten times.
    """
    n = len(_TAPS)
    width, height = maps.shape[-1] - n + 1, maps.shape[-2] - n + 1
    rows = maps[..., :, 0:width] * _TAPS[0]  # (C, H, W - 10)
    for k in range(1, n):
        rows.add_(maps[..., :, k:k + width], alpha=_TAPS[k])
    out = rows[..., 0:height, :] * _TAPS[0]  # (C, H - 10, W - 10)
    for k in range(1, n):
        out.add_(rows[..., k:k + height, :], alpha=_TAPS[k])
    return out


def _halve(image: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling of ``(H, W)`` to ``(H // 2, W // 2)``."""
    return torch.nn.functional.avg_pool2d(image[None, None], 2)[0, 0]


def _pair(x: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 after checking that their shapes agree."""
    x64, ref64 = np.asarray(x, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if x64.shape != ref64.shape or x64.size == 0:
        raise InputError(f"images differ in shape or are empty: {x64.shape} vs {ref64.shape}",
                         hint="compare each image with a reference of the same size")
    return x64, ref64


def _check_data_range(data_range: float) -> None:
    if not data_range > 0:
        raise InputError(f"data_range must be > 0, got {data_range}")


def _tensors(x: np.ndarray, ref: np.ndarray, minimum: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both ``(H, W)`` images as float32 tensors, checked to be at least ``minimum`` px a side."""
    x64, ref64 = _pair(x, ref)
    if x64.ndim != 2 or min(x64.shape) < minimum:
        raise InputError(f"need (H, W) images of at least {minimum} px a side, got {x64.shape}")
    return (torch.from_numpy(x64.astype(np.float32)), torch.from_numpy(ref64.astype(np.float32)))


def contrast_to_noise(image: np.ndarray, region: np.ndarray, ring_px: int = 5) -> float:
    """Contrast-to-noise ratio of a region against the ring around it.

    ``CNR = |mean(region) - mean(ring)| / std(ring)``, the ring being the pixels within
    ``ring_px`` (chessboard distance) of the region but outside it.

    Args:
        image: ``(H, W)`` image.
        region: ``(H, W)`` boolean mask of the object (e.g. a nodule).
        ring_px: ring width in px, ≥ 1.

    Returns:
        CNR (unitless, ≥ 0); ``inf`` for a flat ring.

    Raises:
        InputError: shapes differ, or the region or ring is empty.
    """
    image = np.asarray(image, dtype=np.float64)
    region = np.asarray(region, dtype=bool)
    if region.shape != image.shape or ring_px < 1:
        raise InputError("region must be a mask of the image's shape and ring_px ≥ 1")
    ring = ndimage.binary_dilation(region, np.ones((3, 3), bool), iterations=ring_px) & ~region
    if not region.any() or not ring.any():
        raise InputError("the region and the ring around it must both hold pixels")
    contrast = abs(image[region].mean() - image[ring].mean())
    noise = image[ring].std()
    return math.inf if noise == 0 else float(contrast / noise)


def noise_sigma(image: np.ndarray) -> float:
    """Robust standard deviation of white noise in an image (Immerkær, CVIU 1996, MAD variant).

    The 3x3 high-pass ``[1 -2 1]ᵀ[1 -2 1]`` cancels locally linear signal and multiplies white
    noise of standard deviation ``s`` by ``sqrt(Σk²) = 6``; the median absolute deviation makes
    the estimate ``s = 1.4826·MAD / 6`` insensitive to edges.

    Args:
        image: ``(H, W)`` image, H and W ≥ 3.

    Returns:
        Estimated noise standard deviation, in image units.
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2 or min(image.shape) < 3:
        raise InputError(f"noise_sigma needs an (H, W) image of at least 3x3, got {image.shape}")
    second = np.array([1.0, -2.0, 1.0])
    high = ndimage.correlate1d(ndimage.correlate1d(image, second, axis=0), second, axis=1)
    high = high[1:-1, 1:-1]  # drop the border, where the edge mode would leak signal
    mad = np.median(np.abs(high - np.median(high)))
    return float(1.4826 * mad / 6.0)


def mean_gradient(image: np.ndarray) -> float:
    """Mean gradient magnitude ``mean(sqrt((∂d/∂row)² + (∂d/∂col)²))``, image units per px.

    Central differences inside, one-sided at the border (:func:`numpy.gradient`). A sharpness
    score: blur lowers it, noise raises it, so compare images of like noise.
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2 or min(image.shape) < 2:
        raise InputError(f"mean_gradient needs an (H, W) image, got {image.shape}")
    d_rows, d_cols = np.gradient(image)
    return float(np.mean(np.hypot(d_rows, d_cols)))


def edge_width(profile: np.ndarray) -> float:
    """10-90 % rise distance of an edge profile (edge spread function), in samples.

    The profile is normalised by its two end values (the plateaus), so it may rise or fall; the
    first crossings of 10 % and 90 % are located by linear interpolation. A Gaussian-blurred
    step of standard deviation ``s`` gives ``2·1.2816·s`` ≈ 2.563·s.

    Args:
        profile: ``(n,)`` samples across the edge, n ≥ 3, with distinct end values.

    Returns:
        The 10-90 % width in samples.
    """
    values = np.asarray(profile, dtype=np.float64)
    if values.ndim != 1 or values.size < 3 or values[0] == values[-1]:
        raise InputError("edge_width needs a 1-D profile of ≥ 3 samples with distinct ends")
    rise = (values - values[0]) / (values[-1] - values[0])
    return _crossing(rise, 0.9) - _crossing(rise, 0.1)


def _crossing(rise: np.ndarray, level: float) -> float:
    """Fractional index where ``rise`` first reaches ``level``, linearly interpolated."""
    i = int(np.argmax(rise >= level))
    if i == 0:
        return 0.0
    return (i - 1) + (level - rise[i - 1]) / (rise[i] - rise[i - 1])


def bootstrap_ci(
    values: Sequence[Any] | np.ndarray,
    seed: int | np.random.Generator,
    n: int = 1000,
    ci: float = 0.95,
    *,
    statistic: Callable[[Any], float] | None = None,
    strata: Sequence[Any] | np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a statistic over items (e.g. images).

    Draws ``n`` resamples of the items with replacement (within each stratum when ``strata`` is
    given, e.g. the labels for an AUC) and returns the ``(1 - ci)/2`` and ``(1 + ci)/2``
    quantiles of the statistic over them.

    Args:
        values: per-item values, ``(N, ...)`` array or a sequence of any items.
        seed: an integer seed or a generator; the same seed gives the same interval.
        n: number of resamples, ≥ 1.
        ci: coverage in (0, 1).
        statistic: maps a resample (same type as ``values``) to a float; default the mean.
        strata: ``(N,)`` stratum of each item.

    Returns:
        ``(low, high)``.

    Raises:
        InputError: no values, ``n < 1``, ``ci`` outside (0, 1), or strata of another length.
    """
    items = values if isinstance(values, np.ndarray) else list(values)
    count = len(items)
    if count == 0 or n < 1 or not 0 < ci < 1:
        raise InputError(f"bootstrap needs values, n ≥ 1 and 0 < ci < 1 (got {count}, {n}, {ci})")
    generator = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    groups = _strata_groups(strata, count)
    measure = statistic or (lambda sample: float(np.mean(sample)))
    stats = np.empty(n)
    for i in range(n):
        index = np.concatenate([generator.choice(g, size=g.size) for g in groups])
        sample = items[index] if isinstance(items, np.ndarray) else [items[j] for j in index]
        stats[i] = measure(sample)
    tail = (1.0 - ci) / 2.0
    return float(np.quantile(stats, tail)), float(np.quantile(stats, 1.0 - tail))


def _strata_groups(strata: Sequence[Any] | np.ndarray | None, count: int) -> list[np.ndarray]:
    """Index arrays of the items of each stratum (one group of all items without strata)."""
    if strata is None:
        return [np.arange(count)]
    labels = np.asarray(strata)
    if labels.shape != (count,):
        raise InputError(f"strata must hold one label per value ({count}), got {labels.shape}")
    return [np.flatnonzero(labels == label) for label in np.unique(labels)]
