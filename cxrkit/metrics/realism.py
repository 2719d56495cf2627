"""Realism of radiographs without a reference image: power spectra of lung patches.

A real DRR lacks the fine structure of a chest radiograph; an enhancer meant to make DRRs look
like radiographs should restore it. :func:`lung_patch_power` measures where an image's power sits
in frequency: square patches of the lung field (at a pixel pitch common to every image compared,
see :func:`pitch_shape`), each with its mean removed and a 2-D Hann window applied, give the
periodogram ``|FFT|² / Σ w²``, averaged over patches (white noise of variance σ² gives σ² at
every frequency). :func:`band_powers` averages it over the four quarters of the radial frequency
range (0, Nyquist] (low → high); :func:`band_log_ratios` compares a set of images to a reference
set of real radiographs: ``log10(mean band power of the images / mean band power of the
reference)`` per band, so 0 is "like the reference", −1 is ten times less power.

Pure array functions: the lung mask is the caller's (``cxrkit eval`` uses
:func:`cxrkit.synth.blend.lung_field`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from cxrkit.errors import InputError

BANDS = 4
"""Frequency bands: equal quarters of the radial frequency range (0, Nyquist]."""
PATCH_PX = 64
"""Side of the spectral patches, px at the common pitch."""
MIN_LUNG_FRACTION = 0.9
"""A patch counts when at least this share of it is lung (0.5 when no patch reaches it)."""

REALISM_DEFINITION = (
    "Spectral log-ratio: every image (inputs and reference set alike) is resampled (bicubic, "
    "antialiased) to a common pixel pitch; square lung-field patches (64 px, at least 90% lung, "
    "on a grid of stride 64 px; 50% when none qualifies) have their mean removed and a 2-D Hann "
    "window applied; the periodogram |FFT|²/Σw² is averaged over an image's patches, then over "
    "the radial frequencies of each quarter of (0, Nyquist] (band 1 lowest, band 4 highest). "
    "log_ratio[b] = log10(mean over images of band power / mean over the reference images), "
    "0 = the reference's power, −1 = ten times less; ci95 = percentile bootstrap over images. "
    "Display values in [0, 1] on both sides, so a tone change moves every band."
)


@dataclass(frozen=True)
class PatchPower:
    """The spectrum of one image's lung patches.

    Attributes:
        power: ``(P, P)`` mean periodogram (``np.fft.fft2`` layout, DC at ``[0, 0]``).
        n_patches: patches averaged.
        lung_fraction: the minimum lung share the patches met.
    """

    power: np.ndarray
    n_patches: int
    lung_fraction: float


def pitch_shape(shape: tuple[int, int], pixel_mm: float, target_mm: float) -> tuple[int, int]:
    """The ``(H, W)`` of an image of ``shape`` at ``pixel_mm`` resampled to ``target_mm``."""
    if not (pixel_mm > 0 and target_mm > 0):
        raise InputError(f"pixel pitch must be > 0 mm, got {pixel_mm} and {target_mm}")
    factor = pixel_mm / target_mm
    return max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))


def hann2d(size: int) -> np.ndarray:
    """``(size, size)`` separable Hann window (the outer product of ``np.hanning``)."""
    w = np.hanning(size)
    return np.outer(w, w)


def periodogram(patch: np.ndarray) -> np.ndarray:
    """``|FFT(w · (patch − mean))|² / Σ w²`` of one square patch, ``w`` the 2-D Hann window."""
    patch = np.asarray(patch, dtype=np.float64)
    if patch.ndim != 2 or patch.shape[0] != patch.shape[1]:
        raise InputError(f"a spectral patch must be square, got {patch.shape}")
    w = hann2d(patch.shape[0])
    return np.abs(np.fft.fft2((patch - patch.mean()) * w)) ** 2 / float((w ** 2).sum())


def radial_frequency(size: int) -> np.ndarray:
    """``(size, size)`` radial frequency of each FFT bin, cycles/px (Nyquist = 0.5)."""
    f = np.fft.fftfreq(size)
    return np.hypot(f[:, None], f[None, :])


def lung_patch_power(image: np.ndarray, lung: np.ndarray, patch_px: int = PATCH_PX,
                     min_lung: float = MIN_LUNG_FRACTION) -> PatchPower | None:
    """Mean periodogram of the lung-field patches of one image.

    Args:
        image: ``(H, W)`` display image at the common pitch.
        lung: ``(H, W)`` bool lung field.
        patch_px: patch side, px.
        min_lung: the lung share a patch needs; when no patch reaches it, 0.5 is tried.

    Returns:
        The mean periodogram, or None when no patch has half its area in the lung.
    """
    image = np.asarray(image, dtype=np.float64)
    lung = np.asarray(lung, dtype=bool)
    if image.shape != lung.shape:
        raise InputError(f"lung mask {lung.shape} differs from the image {image.shape}")
    H, W = image.shape
    corners = [(r, c) for r in range(0, H - patch_px + 1, patch_px)
               for c in range(0, W - patch_px + 1, patch_px)]
    share = {rc: float(lung[rc[0]:rc[0] + patch_px, rc[1]:rc[1] + patch_px].mean())
             for rc in corners}
    for fraction in (min_lung, 0.5):
        chosen = [rc for rc in corners if share[rc] >= fraction]
        if chosen:
            power = np.mean([periodogram(image[r:r + patch_px, c:c + patch_px])
                             for r, c in chosen], axis=0)
            return PatchPower(power, len(chosen), fraction)
    return None


def band_powers(power: np.ndarray, bands: int = BANDS) -> np.ndarray:
    """``(bands,)`` mean power over the radial frequencies of each equal part of (0, 0.5]."""
    r = radial_frequency(power.shape[0])
    edges = np.linspace(0.0, 0.5, bands + 1)
    return np.array([power[(r > lo) & (r <= hi)].mean() for lo, hi in pairwise(edges)])


def radial_profile(power: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The radially averaged spectrum: bin centres (cycles/px) and mean power per bin.

    Bins of width ``1 / P`` from 0 to Nyquist (0.5), DC excluded.
    """
    size = power.shape[0]
    r = radial_frequency(size)
    edges = np.arange(0, size // 2 + 1) / size
    centres, values = [], []
    for lo, hi in pairwise(edges):
        ring = (r > lo) & (r <= hi)
        if ring.any():
            centres.append((lo + hi) / 2)
            values.append(power[ring].mean())
    return np.array(centres), np.array(values)


def band_log_ratios(bands: Sequence[np.ndarray] | np.ndarray,
                    reference: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """``(B,)`` ``log10(mean(bands) / mean(reference))`` per band.

    Args:
        bands: ``(N, B)`` band powers of the images (:func:`band_powers`).
        reference: ``(M, B)`` band powers of the reference images.
    """
    a = np.asarray(bands, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or not len(a) or not len(b):
        raise InputError(f"band powers must be (N, B) and (M, B), got {a.shape} and {b.shape}")
    floor = np.finfo(np.float64).tiny
    return np.log10(np.maximum(a.mean(0), floor) / np.maximum(b.mean(0), floor))
