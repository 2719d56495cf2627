"""The shared diffusion floor: what any diffusion model family builds on.

- :mod:`cxrkit.diffusion.denoiser`: :class:`UNetDenoiser` (a diffusers ``UNet2DModel`` behind a
  space-to-depth rearrangement), :func:`new_unet` (a fresh UNet and its cosine schedule), and
  schedule helpers (:func:`sampler_timesteps`, :func:`train_alphas_cumprod`);
- :mod:`cxrkit.diffusion.sampling`: DDPM / DDIM / DPM-Solver++ loops (:data:`SAMPLERS`,
  :func:`make_scheduler`, :func:`sample`) with tiled denoising (:func:`tiled_predict`).

The families themselves are sibling packages above this floor: the enhancer
(:mod:`cxrkit.enhancer`), DDPM-LQ (:mod:`cxrkit.ddpm_lq`). This floor imports none of them.

Importing this package imports torch (the CLI imports it inside command bodies only).
"""

from __future__ import annotations

from cxrkit.diffusion.denoiser import (
    DTYPES,
    UNetDenoiser,
    new_unet,
    sampler_timesteps,
    train_alphas_cumprod,
)
from cxrkit.diffusion.sampling import (
    SAMPLERS,
    blend_window,
    make_scheduler,
    sample,
    tile_starts,
    tiled_predict,
)

__all__ = [
    "DTYPES",
    "SAMPLERS",
    "UNetDenoiser",
    "blend_window",
    "make_scheduler",
    "new_unet",
    "sample",
    "sampler_timesteps",
    "tile_starts",
    "tiled_predict",
    "train_alphas_cumprod",
]
