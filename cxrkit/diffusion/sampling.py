"""Samplers of the shared diffusion floor, written out as plain loops, with tiled denoising for
any image size (the enhancer and DDPM-LQ sample through them).

Every sampler is the same loop over a diffusers scheduler (``set_timesteps``, then for each ``t``:
predict, ``step``); only the scheduler differs (:data:`SAMPLERS`):

- ``ddpm``: ancestral sampling (Ho et al. 2020, https://arxiv.org/abs/2006.11239), stochastic;
- ``ddim``: deterministic DDIM, η = 0 (Song et al. 2021, https://arxiv.org/abs/2010.02502);
- ``dpmpp``: DPM-Solver++(2M) (Lu et al. 2022, https://arxiv.org/abs/2211.01095).

Timesteps use "trailing" spacing, so the first step starts at ``t = T - 1`` (pure noise) whatever
the step count (Lin et al. 2024, https://arxiv.org/abs/2305.08891). With v-prediction a single
step is the model's regression estimate of the residual; more steps add sampled detail.

Tiling (MultiDiffusion-style, Bar-Tal et al. 2023, https://arxiv.org/abs/2302.08113): there is one
noisy image for the whole radiograph. At every step the model runs on overlapping tiles of it,
the tile outputs are blended with a smooth raised-cosine window, and the scheduler steps the
whole image. Tiles therefore cannot drift apart and there are no seams; memory is bounded by
the tile size, not the image size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from cxrkit.errors import InputError

SAMPLERS: dict[str, str] = {
    "ddim": "deterministic DDIM (eta 0)",
    "dpmpp": "DPM-Solver++ 2M, deterministic",
    "ddpm": "ancestral DDPM, stochastic",
}
"""Sampler names and one-line descriptions (the CLI's choices)."""

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def make_scheduler(name: str, config: dict[str, Any]) -> Any:
    """A fresh diffusers scheduler of sampler ``name`` with the training schedule ``config``.

    Raises:
        InputError: an unknown sampler name.
    """
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    common = {"timestep_spacing": "trailing", "clip_sample": False}
    if name == "ddim":
        return DDIMScheduler.from_config(config, **common, set_alpha_to_one=True)
    if name == "dpmpp":
        return DPMSolverMultistepScheduler.from_config(
            config, timestep_spacing="trailing", algorithm_type="dpmsolver++", solver_order=2,
            thresholding=False, lower_order_final=True, final_sigmas_type="zero")
    if name == "ddpm":
        return DDPMScheduler.from_config(config, **common, variance_type="fixed_small")
    raise InputError(f"unknown sampler {name!r}", hint=f"use one of {', '.join(SAMPLERS)}")


def sample(model_fn: ModelFn, cond: torch.Tensor, *, scheduler: Any, steps: int,
           generator: torch.Generator, tile: int | None = None, overlap: int = 0,
           tile_batch: int = 4, zero_start: bool = False) -> torch.Tensor:
    """Run the reverse diffusion: pure noise → clean sample, conditioned on ``cond``.

    Args:
        model_fn: ``(x_t, cond, t) → v`` (or ``ε``), all ``(B, 1, h, w)`` except ``t`` ``(B,)``.
        cond: ``(1, 1, H, W)`` condition, on the model's device.
        scheduler: from :func:`make_scheduler`.
        steps: number of model evaluations ≥ 1.
        generator: CPU generator for the initial noise (and the DDPM noise).
        tile: tile side in pixels, or None to run the whole image at once.
        overlap: overlap of neighbouring tiles in pixels.
        tile_batch: tiles per model call.
        zero_start: start from ``x_T = 0`` (the noise's mean) instead of drawn noise.

    Returns:
        ``(1, 1, H, W)`` float32 sample ``x_0``.
    """
    limit = int(scheduler.config.num_train_timesteps)
    if not 1 <= steps <= limit:  # diffusers would raise a paragraph
        raise InputError(f"steps must be 1..{limit} (the training timesteps), got {steps}")
    scheduler.set_timesteps(steps)
    x = torch.randn(cond.shape, generator=generator).to(cond.device)  # (1, 1, H, W)
    x = x * (0.0 if zero_start else scheduler.init_noise_sigma)
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        out = tiled_predict(model_fn, model_input, cond, int(t), tile=tile, overlap=overlap,
                            tile_batch=tile_batch)
        kwargs = {"generator": generator} if _takes_generator(scheduler) else {}
        x = scheduler.step(out, t, x, **kwargs).prev_sample
    return x


def tiled_predict(model_fn: ModelFn, x_t: torch.Tensor, cond: torch.Tensor, t: int, *,
                  tile: int | None, overlap: int, tile_batch: int = 4) -> torch.Tensor:
    """The model output over a whole image, computed on blended overlapping tiles.

    Args:
        model_fn: as in :func:`sample`.
        x_t: ``(1, 1, H, W)`` noisy image.
        cond: ``(1, 1, H, W)`` condition.
        t: the timestep.
        tile: tile side (clamped to the image), or None for one tile covering the image.
        overlap: minimum overlap of neighbouring tiles in pixels (< tile).
        tile_batch: tiles per model call.

    Returns:
        ``(1, 1, H, W)`` float32: ``Σ w·f(tile) / Σ w`` with the window ``w`` of
        :func:`blend_window`.
    """
    H, W = x_t.shape[-2:]
    th, tw = (H, W) if tile is None else (min(tile, H), min(tile, W))
    boxes = [(y, x) for y in tile_starts(H, th, overlap) for x in tile_starts(W, tw, overlap)]
    window = blend_window(th, tw, overlap).to(x_t.device)  # (th, tw)
    total = torch.zeros(H, W, device=x_t.device)
    weight = torch.zeros(H, W, device=x_t.device)
    for i in range(0, len(boxes), tile_batch):
        chunk = boxes[i : i + tile_batch]
        xs = torch.cat([x_t[..., y : y + th, x : x + tw] for y, x in chunk])  # (n, 1, th, tw)
        cs = torch.cat([cond[..., y : y + th, x : x + tw] for y, x in chunk])  # (n, 1, th, tw)
        ts = torch.full((len(chunk),), t, dtype=torch.long, device=x_t.device)
        out = model_fn(xs, cs, ts).float()  # (n, 1, th, tw)
        for (y, x), pred in zip(chunk, out, strict=True):
            total[y : y + th, x : x + tw] += pred[0] * window
            weight[y : y + th, x : x + tw] += window
    return (total / weight).view(1, 1, H, W)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the fewest tiles of side ``tile`` covering ``length`` with ≥ ``overlap``.

    The tiles are spread evenly, the first at 0 and the last ending at ``length``.
    """
    if tile >= length:
        return [0]
    if not 0 <= overlap < tile:
        raise InputError(f"overlap must be in [0, tile), got {overlap} for tile {tile}")
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def blend_window(height: int, width: int, overlap: int) -> torch.Tensor:
    """Separable blending weights ``(height, width)``, float32, in (0, 1].

    1 in the interior, rising as ``sin²`` over ``overlap`` pixels at every edge, never 0 (so a
    pixel covered by one tile only keeps that tile's value exactly after normalisation).
    """
    def ramp(n: int) -> torch.Tensor:
        w = torch.ones(n)
        k = min(overlap, n // 2)
        if k > 0:
            rise = torch.sin(0.5 * math.pi * (torch.arange(k) + 0.5) / k) ** 2
            w[:k], w[n - k :] = rise, rise.flip(0)
        return w

    return ramp(height)[:, None] * ramp(width)[None, :]


def _takes_generator(scheduler: Any) -> bool:
    import inspect

    return "generator" in inspect.signature(scheduler.step).parameters
