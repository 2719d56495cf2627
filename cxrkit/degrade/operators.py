"""Degradation operators: one small class per physical or classical degradation.

Images are display radiographs: ``(H, W)`` float32 in [0, 1], rows top to bottom, bone bright (see
:mod:`cxrkit.io`). Every operator returns such an image, clipped to [0, 1]. Pixels are square, of
pitch ``pixel_mm``.

**Physics model.** A display value ``d`` is read as proportional to the line integral, ``p = a·d``
(``a`` = ``attenuation``, unitless; the default 4 makes bone-bright ``d = 1`` transmit
``exp(-4)`` ≈ 2 %). The primary transmission is ``T = exp(-a·d)``. Operators that act on photons
(scatter, quantum noise) go to this intensity domain, act there and come back through
``d' = -ln(T')/a``, so chaining them is exact apart from the clipping. Blurs are linear in the
display domain (the small-signal approximation of a blur on intensities), so their MTF is exact.

**Operators** are frozen dataclasses whose fields are the ranges their parameters are drawn from.
Each has a registry ``name`` (:data:`DEGRADATIONS`) and two methods:

- ``sample_params(generator) -> dict``: draw one JSON-serialisable parameter set holding every
  value ``apply`` reads (fixed ones such as ``pixel_mm`` included);
- ``apply(image, params, generator) -> image``: invalid parameters raise
  :class:`~cxrkit.errors.InputError`; operators that draw no noise leave the generator alone.
"""

from __future__ import annotations

import io
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
from PIL import Image
from scipy import ndimage

from cxrkit.errors import InputError

Params = dict[str, Any]
Range = tuple[float, float]
"""Closed interval ``(low, high)`` a parameter is drawn from; ``(v, v)`` fixes it to ``v``."""

DEFAULT_PIXEL_MM = 0.35
"""Pixel pitch assumed when none is given: NIH ChestX-ray14 at 1024² is about 0.35 mm."""
DEFAULT_ATTENUATION = 4.0
"""Line integral ``p`` of a display value of 1 (see the module docstring)."""
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
"""FWHM of a Gaussian in units of its sigma (≈ 2.355)."""


class Operator(Protocol):
    """One degradation (see the module docstring)."""

    name: ClassVar[str]

    def sample_params(self, generator: np.random.Generator) -> Params: ...

    def apply(
        self, image: np.ndarray, params: Params, generator: np.random.Generator
    ) -> np.ndarray: ...


def gaussian_sigma(mtf50: float) -> float:
    """Standard deviation of the Gaussian PSF whose MTF falls to 0.5 at frequency ``mtf50``.

    A Gaussian PSF of standard deviation ``s`` has ``MTF(f) = exp(-2π²s²f²)``; solving
    ``MTF(f50) = 0.5`` gives ``s = sqrt(ln 2 / 2) / (π·f50) ≈ 0.1874 / f50``, and then
    ``MTF(f) = 0.5 ** ((f / f50)²)``.

    Args:
        mtf50: frequency of 50 % modulation, > 0, in cycles/mm (or cycles/px).

    Returns:
        ``s`` in the inverse unit of ``mtf50``: mm (or px).
    """
    return math.sqrt(math.log(2.0) / 2.0) / (math.pi * mtf50)


def to_transmission(image: np.ndarray, attenuation: float) -> np.ndarray:
    """Primary transmission ``T = exp(-a·d)`` of a display image, ``(H, W)`` float64 in (0, 1]."""
    return np.exp(-attenuation * image.astype(np.float64))


def from_transmission(intensity: np.ndarray, attenuation: float) -> np.ndarray:
    """Display image ``d = -ln(I)/a``, ``(H, W)`` float32 clipped to [0, 1] (I ≤ 0 gives 1)."""
    floor = np.finfo(np.float64).tiny
    return _finish(-np.log(np.maximum(intensity, floor)) / attenuation)


@dataclass(frozen=True)
class DetectorBlur:
    """Isotropic detector blur: a Gaussian PSF with a target MTF50.

    The PSF's standard deviation is ``gaussian_sigma(mtf50_lp_per_mm) / pixel_mm`` pixels
    (≈ 0.1874 / MTF50 mm), so ``MTF(f) = 0.5 ** ((f / mtf50)²)``. Typical MTF50: CsI flat panels
    1.5-2.5 lp/mm, computed radiography 1-1.5, poor systems 0.5-1. Placed after quantum noise it
    correlates the noise (noise power spectrum ∝ MTF²), as a scintillator does.

    Params: ``mtf50_lp_per_mm`` (> 0), ``pixel_mm`` (> 0).
    """

    name: ClassVar[str] = "detector-blur"
    mtf50_lp_per_mm: Range = (1.0, 2.5)
    pixel_mm: float = DEFAULT_PIXEL_MM

    def sample_params(self, generator: np.random.Generator) -> Params:
        """Draw MTF50 uniformly from ``mtf50_lp_per_mm``."""
        return {"mtf50_lp_per_mm": draw_uniform(generator, self.mtf50_lp_per_mm),
                "pixel_mm": self.pixel_mm}

    def apply(
        self, image: np.ndarray, params: Params, generator: np.random.Generator
    ) -> np.ndarray:
        """Blur ``image`` ``(H, W)``; the generator is unused."""
        mtf50 = _param(params, "mtf50_lp_per_mm", MIN_MTF50, 1e6)
        sigma_px = gaussian_sigma(mtf50) / _param(params, "pixel_mm", 0.0, open_low=True)
        return _finish(ndimage.gaussian_filter(image, sigma_px, mode="reflect", truncate=4.0))


@dataclass(frozen=True)
class SliceBlur:
    """Anisotropic blur, stronger along the body axis (rows), like the CT slice thickness of a DRR.

    A DRR integrates a CT whose cranio-caudal resolution is its slice thickness (1-5 mm) while the
    in-plane resolution is 0.6-0.8 mm. Both are modelled as Gaussians of the given FWHM, with
    standard deviation ``s = FWHM / (2·sqrt(2 ln 2))`` ≈ FWHM / 2.355: ``s_rows`` from
    ``slice_mm`` and ``s_cols`` from ``in_plane_mm``, so ``MTF_rows(f) = exp(-2π²s_rows²f²)``.

    Params: ``slice_mm`` (≥ 0), ``in_plane_mm`` (≥ 0), ``pixel_mm`` (> 0).
    """

    name: ClassVar[str] = "slice-blur"
    slice_mm: Range = (1.0, 5.0)
    in_plane_mm: Range = (0.6, 0.8)
    pixel_mm: float = DEFAULT_PIXEL_MM

    def sample_params(self, generator: np.random.Generator) -> Params:
        """Draw the two FWHMs uniformly."""
        return {"slice_mm": draw_uniform(generator, self.slice_mm),
                "in_plane_mm": draw_uniform(generator, self.in_plane_mm), "pixel_mm": self.pixel_mm}

    def apply(
        self, image: np.ndarray, params: Params, generator: np.random.Generator
    ) -> np.ndarray:
        """Blur ``image`` ``(H, W)``; the generator is unused."""
        pixel_mm = _param(params, "pixel_mm", 0.0, open_low=True)
        sigma_rows = _param(params, "slice_mm", 0.0, MAX_BLUR_MM) / FWHM_PER_SIGMA / pixel_mm
        sigma_cols = _param(params, "in_plane_mm", 0.0, MAX_BLUR_MM) / FWHM_PER_SIGMA / pixel_mm
        blurred = ndimage.gaussian_filter(image, (sigma_rows, sigma_cols), mode="reflect")
        return _finish(blurred)


RESIZE_KERNELS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}
"""Resampling kernels of :class:`Resize` (Pillow filters on float32 images)."""


@dataclass(frozen=True)
class Resize:
    """Resample with a chosen kernel, antialiased when downsampling (Pillow).

    Pillow widens every kernel's support by the reduction factor when downsampling, so aliasing is
    filtered out as with MATLAB ``imresize`` or ``torch.nn.functional.interpolate(antialias=True)``.
    ``bicubic`` is Keys' cubic with a = -0.5, ``bilinear`` the triangle, ``area`` the box (exact
    pixel-area average, also for non-integer factors), ``lanczos`` 3-lobed Lanczos.

    Params: ``kernel`` (a key of :data:`RESIZE_KERNELS`) and either ``factor`` (> 0; the output
    has ``max(1, round(n / factor))`` pixels per axis) or ``size`` ``[h, w]``, which wins.
    """

    name: ClassVar[str] = "resize"
    factor: Range = (1.0, 1.0)
    kernels: tuple[str, ...] = ("bicubic",)

    def sample_params(self, generator: np.random.Generator) -> Params:
        """Draw the reduction factor uniformly and one kernel."""
        return {"factor": draw_uniform(generator, self.factor),
                "kernel": draw_choice(generator, self.kernels)}

    def apply(
        self, image: np.ndarray, params: Params, generator: np.random.Generator
    ) -> np.ndarray:
        """Resample ``image`` ``(H, W)`` to ``(h, w)``; the generator is unused."""
        if "size" in params:
            size = params["size"]
            if not (isinstance(size, Sequence) and len(size) == 2
                    and 1 <= min(size) <= max(size) <= MAX_RESIZE_PX):
                raise InputError(f"resize: size must be [height, width] in 1..{MAX_RESIZE_PX}, "
                                 f"got {size!r}")
            shape = (int(size[0]), int(size[1]))
        else:
            shape = resized_shape(image.shape, _param(params, "factor", 1 / 16, 1e6))
            if max(shape) > MAX_RESIZE_PX:
                raise InputError(f"resize: {shape[0]}x{shape[1]} is over {MAX_RESIZE_PX} pixels "
                                 "per side")
        return resample(image, shape, params.get("kernel"))


def resized_shape(shape: tuple[int, ...], factor: float) -> tuple[int, int]:
    """Shape after reducing ``(H, W)`` by ``factor``: ``max(1, round(n / factor))`` per axis."""
    return (max(1, round(shape[0] / factor)), max(1, round(shape[1] / factor)))


def resample(image: np.ndarray, shape: tuple[int, int], kernel: Any = "bicubic") -> np.ndarray:
    """Resize ``(H, W)`` to ``shape`` with a :data:`RESIZE_KERNELS` kernel; float32 in [0, 1]."""
    if kernel not in RESIZE_KERNELS:
        raise InputError(f"resize: unknown kernel {kernel!r}",
                         hint=f"use one of {list(RESIZE_KERNELS)}")
    if tuple(image.shape) == shape:
        return _finish(image)
    return _finish(_pil_resize(image, shape, RESIZE_KERNELS[kernel]))


@dataclass(frozen=True)
class QuantumNoise:
    """Quantum (Poisson) noise at a relative dose, plus electronic (Gaussian) read-out noise.

    With ``T = exp(-a·d)`` and ``N = quanta_per_mm2 · pixel_mm² · dose`` quanta per pixel in the
    open field, the detector counts ``k ~ Poisson(N·T) + Normal(0, sigma_e²)`` and the image becomes
    ``d' = -ln(max(k, 1) / N) / a``. The noise depends on the signal: by the delta method
    ``Var(d') ≈ (N·T + sigma_e²) / (a·N·T)²``, largest behind bone and the mediastinum. The default
    reference dose, 4e4 quanta/mm² (≈ 4.9e3 per 0.35 mm pixel), is that of a flat panel at
    ≈ 2.5 µGy in an RQA5 beam with DQE ≈ 0.6 (IEC 62220-1). The electronic noise is added with the
    counts, so a later blur also correlates it (a simplification: read-out noise is white).

    Params: ``dose`` (> 0, 1 = reference), ``quanta_per_mm2`` (> 0), ``electronic_quanta``
    (sigma_e ≥ 0), ``attenuation`` (> 0), ``pixel_mm`` (> 0).
    """

    name: ClassVar[str] = "quantum-noise"
    dose: Range = (0.05, 0.5)
    quanta_per_mm2: float = 4.0e4
    electronic_quanta: Range = (2.0, 10.0)
    attenuation: float = DEFAULT_ATTENUATION
    pixel_mm: float = DEFAULT_PIXEL_MM

    def sample_params(self, generator: np.random.Generator) -> Params:
        """Draw the dose log-uniformly and sigma_e uniformly."""
        return {"dose": draw_log_uniform(generator, self.dose),
                "quanta_per_mm2": self.quanta_per_mm2,
                "electronic_quanta": draw_uniform(generator, self.electronic_quanta),
                "attenuation": self.attenuation, "pixel_mm": self.pixel_mm}

    def apply(
        self, image: np.ndarray, params: Params, generator: np.random.Generator
    ) -> np.ndarray:
        """Draw counts for ``image`` ``(H, W)`` and return the noisy display image."""
        attenuation = _param(params, "attenuation", 0.0, open_low=True)
        open_field = (_param(params, "quanta_per_mm2", 0.0, open_low=True)
                      * _param(params, "pixel_mm", 0.0, open_low=True) ** 2
                      * _param(params, "dose", 0.0, open_low=True))
        counts = generator.poisson(open_field * to_transmission(image, attenuation)).astype(float)
        sigma_e = _param(params, "electronic_quanta", 0.0)
        if sigma_e > 0:
            counts += generator.normal(0.0, sigma_e, counts.shape)
        return from_transmission(np.maximum(counts, 1.0) / open_field, attenuation)


@dataclass(frozen=True)
class Scatter:
    """Scatter: a broad, low-frequency haze added to the primary intensity.

    ``I = T + SPR · (G_sigma_s ⊛ T)`` with a unit-sum Gaussian ``G`` of ``sigma_s = sigma_mm``, then
    ``d' = -ln(I)/a``: the added intensity averages ``SPR · mean(T)`` and carries no fine detail,
    so it lowers contrast mostly at low frequencies. Without an anti-scatter grid the scatter
    fraction ``SPR / (1 + SPR)`` reaches ~90 % in the mediastinum (Niklason et al., Med Phys 1981);
    a grid brings the SPR below ~1. The wide low-pass runs on an area-downsampled copy (sigma spans
    ≥ 4 of its pixels) that is upsampled bilinearly, so its cost does not grow with sigma.

    Params: ``spr`` (≥ 0; 0 is the identity), ``sigma_mm`` (> 0), ``attenuation`` (> 0),
    ``pixel_mm`` (> 0).
    """

    name: ClassVar[str] = "scatter"
    spr: Range = (0.2, 1.0)
    sigma_mm: Range = (20.0, 40.0)
    attenuation: float = DEFAULT_ATTENUATION
    pixel_mm: float = DEFAULT_PIXEL_MM

    def sample_params(self, generator: np.random.Generator) -> Params:
        """Draw the SPR and the kernel width uniformly."""
        return {"spr": draw_uniform(generator, self.spr),
                "sigma_mm": draw_uniform(generator, self.sigma_mm),
                "attenuation": self.attenuation, "pixel_mm": self.pixel_mm}

    def apply(
        self, image: np.ndarray, params: Params, generator: np.random.Generator
    ) -> np.ndarray:
        """Add scatter to ``image`` ``(H, W)``; the generator is unused."""
        spr = _param(params, "spr", 0.0)
        attenuation = _param(params, "attenuation", 0.0, open_low=True)
        sigma_px = (_param(params, "sigma_mm", 0.0, MAX_SCATTER_MM, open_low=True)
                    / _param(params, "pixel_mm", 0.0, open_low=True))
        if spr == 0:
            return _finish(image.copy())
        primary = to_transmission(image, attenuation)
        return from_transmission(primary + spr * wide_lowpass(primary, sigma_px), attenuation)


def wide_lowpass(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian low-pass of a wide ``sigma_px`` at reduced resolution, ``(H, W)`` float64.

    Area-downsamples by ``k = max(1, ⌊sigma_px / 4⌋)``, filters with ``sigma_px / k`` (reflecting
    edges) and upsamples bilinearly, which keeps the mean and leaves almost no energy above
    ``1/(2k)`` cycles/px.
    """
    height, width = image.shape
    k = max(1, int(sigma_px // 4))
    small_shape = (max(1, math.ceil(height / k)), max(1, math.ceil(width / k)))
    small = _pil_resize(image, small_shape, Image.Resampling.BOX)
    sigma_small = (sigma_px * small_shape[0] / height, sigma_px * small_shape[1] / width)
    small = ndimage.gaussian_filter(small, sigma_small, mode="reflect")
    return _pil_resize(small, (height, width), Image.Resampling.BILINEAR).astype(np.float64)


@dataclass(frozen=True)
class GaussianNoise:
    """Additive white Gaussian noise in the display domain: ``d' = d + Normal(0, sigma²)``.

    The camera-style gray noise of Real-ESRGAN; for X-ray physics use :class:`QuantumNoise`.

    Params: ``sigma`` (≥ 0, display units; 0 is the identity).
    """

    name: ClassVar[str] = "gaussian-noise"
    sigma: Range = (1 / 255, 25 / 255)

    def sample_params(self, generator: np.random.Generator) -> Params:
        """Draw sigma uniformly."""
        return {"sigma": draw_uniform(generator, self.sigma)}

    def apply(
        self, image: np.ndarray, params: Params, generator: np.random.Generator
    ) -> np.ndarray:
        """Add noise to ``image`` ``(H, W)``."""
        sigma = _param(params, "sigma", 0.0)
        if sigma == 0:
            return _finish(image.copy())
        return _finish(image + generator.normal(0.0, sigma, image.shape))


@dataclass(frozen=True)
class Contrast:
    """Linear contrast change about the image mean ``m``: ``d' = c·d + (1 - c)·m + b``.

    Params: ``contrast`` (c ≥ 0; 1 with b = 0 is the identity), ``brightness`` (b).
    """

    name: ClassVar[str] = "contrast"
    contrast: Range = (0.7, 1.0)
    brightness: Range = (0.0, 0.0)

    def sample_params(self, generator: np.random.Generator) -> Params:
        """Draw c and b uniformly."""
        return {"contrast": draw_uniform(generator, self.contrast),
                "brightness": draw_uniform(generator, self.brightness)}

    def apply(
        self, image: np.ndarray, params: Params, generator: np.random.Generator
    ) -> np.ndarray:
        """Rescale ``image`` ``(H, W)``; the generator is unused."""
        contrast = _param(params, "contrast", 0.0)
        brightness = _param(params, "brightness")
        mean = float(image.mean(dtype=np.float64))
        return _finish(contrast * image + ((1.0 - contrast) * mean + brightness))


@dataclass(frozen=True)
class Gamma:
    """Gamma change ``d' = d ** gamma``; gamma > 1 darkens and flattens the mid-tones (DRR look).

    Params: ``gamma`` (> 0; 1 is the identity).
    """

    name: ClassVar[str] = "gamma"
    gamma: Range = (0.8, 1.25)

    def sample_params(self, generator: np.random.Generator) -> Params:
        """Draw gamma uniformly."""
        return {"gamma": draw_uniform(generator, self.gamma)}

    def apply(
        self, image: np.ndarray, params: Params, generator: np.random.Generator
    ) -> np.ndarray:
        """Apply gamma to ``image`` ``(H, W)``; the generator is unused."""
        return _finish(np.power(image, np.float32(_param(params, "gamma", 0.0, open_low=True))))


@dataclass(frozen=True)
class Quantize:
    """Quantisation to ``2**bits`` levels: ``d' = round(d·L) / L`` with ``L = 2**bits - 1``.

    Params: ``bits`` (integer in [1, 16]).
    """

    name: ClassVar[str] = "quantize"
    bits: tuple[int, int] = (8, 8)

    def sample_params(self, generator: np.random.Generator) -> Params:
        """Draw the bit depth uniformly among the integers of ``bits``."""
        return {"bits": int(generator.integers(self.bits[0], self.bits[1] + 1))}

    def apply(
        self, image: np.ndarray, params: Params, generator: np.random.Generator
    ) -> np.ndarray:
        """Quantise ``image`` ``(H, W)``; the generator is unused."""
        bits = params.get("bits")
        if not isinstance(bits, int | np.integer) or not 1 <= bits <= 16:
            raise InputError(f"quantize: bits must be an integer in [1, 16], got {bits!r}")
        levels = float(2 ** int(bits) - 1)
        return _finish(np.round(image.astype(np.float64) * levels) / levels)


@dataclass(frozen=True)
class Jpeg:
    """JPEG compression at a quality, done in memory with Pillow (8-bit grayscale, baseline).

    Params: ``quality`` (integer in [1, 100]).
    """

    name: ClassVar[str] = "jpeg"
    quality: tuple[int, int] = (30, 95)

    def sample_params(self, generator: np.random.Generator) -> Params:
        """Draw the quality uniformly among the integers of ``quality``."""
        return {"quality": int(generator.integers(self.quality[0], self.quality[1] + 1))}

    def apply(
        self, image: np.ndarray, params: Params, generator: np.random.Generator
    ) -> np.ndarray:
        """Compress and decode ``image`` ``(H, W)``; the generator is unused."""
        quality = params.get("quality")
        if not isinstance(quality, int | np.integer) or not 1 <= quality <= 100:
            raise InputError(f"jpeg: quality must be an integer in [1, 100], got {quality!r}")
        buffer = io.BytesIO()
        pixels = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=int(quality))
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            return np.asarray(decoded.convert("L"), dtype=np.float32) / np.float32(255.0)


@dataclass(frozen=True)
class Streaks:
    """Slice-like banding: an offset per band of rows plus a slow ripple along the rows.

    A DRR rendered through thick CT slices, or a detector with row-wise gain errors, shows
    horizontal bands: ``d'(r, c) = d(r, c) + n_b(r) + A·sin(2π·r/P + φ)``, where ``n_b`` is one
    N(0, ``band_sigma``²) offset per band of ``band_rows`` rows.

    Params: ``band_rows`` (integer ≥ 1), ``band_sigma`` (≥ 0), ``ripple`` (amplitude A ≥ 0),
    ``period_rows`` (P > 0), ``phase`` (φ, radians).
    """

    name: ClassVar[str] = "streaks"
    band_rows: tuple[int, int] = (1, 6)
    band_sigma: Range = (0.0, 0.01)
    ripple: Range = (0.0, 0.015)
    period_rows: Range = (8.0, 64.0)

    def sample_params(self, generator: np.random.Generator) -> Params:
        """Draw the band height among the integers of ``band_rows``, the rest uniformly."""
        return {"band_rows": int(generator.integers(self.band_rows[0], self.band_rows[1] + 1)),
                "band_sigma": draw_uniform(generator, self.band_sigma),
                "ripple": draw_uniform(generator, self.ripple),
                "period_rows": draw_uniform(generator, self.period_rows),
                "phase": float(generator.uniform(0.0, 2.0 * math.pi))}

    def apply(
        self, image: np.ndarray, params: Params, generator: np.random.Generator
    ) -> np.ndarray:
        """Add the bands (drawn from the generator) and the ripple to ``image`` ``(H, W)``."""
        band = params.get("band_rows")
        if not isinstance(band, int | np.integer) or isinstance(band, bool) or band < 1:
            raise InputError(f"streaks: band_rows must be an integer ≥ 1, got {band!r}")
        sigma = _param(params, "band_sigma", 0.0, 1.0)
        ripple = _param(params, "ripple", 0.0, 1.0)
        period = _param(params, "period_rows", 0.0, open_low=True)
        phase = _param(params, "phase")
        rows = np.arange(image.shape[0])
        offset = ripple * np.sin(2.0 * np.pi * rows / period + phase)
        if sigma > 0:
            bands = generator.normal(0.0, sigma, image.shape[0] // int(band) + 1)
            offset = offset + np.repeat(bands, int(band))[: image.shape[0]]
        return _finish(image + offset[:, None].astype(np.float32))


DEGRADATIONS: dict[str, type[Operator]] = {
    op.name: op
    for op in (DetectorBlur, SliceBlur, Resize, QuantumNoise, Scatter, GaussianNoise, Contrast,
               Gamma, Quantize, Jpeg, Streaks)
}
"""Every degradation operator by name; ``DEGRADATIONS[name]()`` has the default ranges."""


def draw_uniform(generator: np.random.Generator, bounds: Range) -> float:
    """A float drawn uniformly from ``bounds``; no draw when they coincide."""
    low, high = bounds
    return float(low) if low == high else float(generator.uniform(low, high))


def draw_log_uniform(generator: np.random.Generator, bounds: Range) -> float:
    """A float whose logarithm is uniform in ``log(bounds)`` (both > 0)."""
    low, high = bounds
    if low == high:
        return float(low)
    return float(np.exp(generator.uniform(np.log(low), np.log(high))))


def draw_choice(generator: np.random.Generator, options: Sequence[str]) -> str:
    """One of ``options``, each equally likely."""
    return options[int(generator.integers(len(options)))]


MAX_BLUR_MM = 100.0
"""Largest slice or in-plane blur FWHM (mm) ``slice-blur`` takes (a 1e9 mm blur would allocate
a kernel of billions of taps)."""
MAX_SCATTER_MM = 1000.0
"""Largest scatter kernel σ (mm)."""
MIN_MTF50 = 0.01
"""Smallest detector MTF50 (line pairs per mm) ``detector-blur`` takes."""
MAX_RESIZE_PX = 16384
"""Largest output side (pixels) of ``resize``."""


def _param(params: Params, key: str, low: float = -math.inf, high: float = math.inf, *,
           open_low: bool = False) -> float:
    """``params[key]`` as a float in ``[low, high]`` (``(low, high]`` with ``open_low``)."""
    value = params.get(key)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"degradation parameter {key!r} must be a number, got {value!r}")
    value = float(value)
    if not (low < value if open_low else low <= value) or not value <= high:
        bracket = "(" if open_low else "["
        raise InputError(
            f"degradation parameter {key} = {value} is outside {bracket}{low}, {high}]")
    return value


def _finish(image: np.ndarray) -> np.ndarray:
    return np.clip(image, 0.0, 1.0).astype(np.float32, copy=False)


def _pil_resize(image: np.ndarray, shape: tuple[int, int], kernel: Image.Resampling) -> np.ndarray:
    """Resize ``(H, W)`` to ``shape`` with Pillow in float32 mode ``F`` (no clipping)."""
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32))
    return np.asarray(pil.resize((shape[1], shape[0]), kernel))  # Pillow sizes are (w, h)
