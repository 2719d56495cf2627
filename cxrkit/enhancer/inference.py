"""The enhancer end to end: one radiograph in, its restored (×1) or super-resolved (×2) version out.

The reverse diffusion itself (samplers, tiles) is the shared floor's
:func:`cxrkit.diffusion.sampling.sample`; this module owns the enhancer's formulation around it:
bicubic condition, residual, degradation embedding, and black kept black.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cxrkit.data.images import bicubic_upsample
from cxrkit.diffusion.sampling import make_scheduler, sample
from cxrkit.enhancer.model import Enhancer
from cxrkit.errors import InputError


def anchor_tone(out: torch.Tensor, up: torch.Tensor, sigma: float, weight: float,
                detail: float = 1.0) -> torch.Tensor:
    """The output with ``weight`` of its low-frequency deviation from the upsampled input removed
    and the rest of that deviation scaled by ``detail`` there:
    ``out - weight·(G_σ(r) + (1 - detail)·(r - G_σ(r)))`` with ``r = out - up`` (``G_σ``: Gaussian
    low-pass, σ in pixels, reflecting borders); ``(H, W)`` tensors."""
    if weight <= 0 or sigma <= 0:
        return out
    from scipy import ndimage

    residual = (out - up).double().numpy()
    low = ndimage.gaussian_filter(residual, sigma, mode="reflect")
    removed = low + (1.0 - detail) * (residual - low)
    return out - weight * torch.from_numpy(removed).to(out.dtype)


def _batch(lq: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(lq, np.float32))[None, None]


def tone_change(model: Enhancer, lq: np.ndarray) -> bool:
    """Whether ``model``'s tone gate sees a tone change to undo in ``lq`` (probability > 0.5;
    False without a gate)."""
    if model.tone_gate is None:
        return False
    with torch.inference_mode():
        return float(model.tone_gate(_batch(lq).to(model.device))[0]) > 0.5


BLACK_LEVEL = 1e-3
"""Default of :func:`enhance`'s ``keep_black``: input at or below this (display range [0, 1],
about a quarter of an 8-bit step) counts as black."""


def enhance(model: Enhancer, lq: np.ndarray, *, sampler: str | None = None,
            steps: int | None = None, generator: torch.Generator, tile: int | None = 1024,
            overlap: int = 128, tile_batch: int = 4,
            keep_black: float | None = BLACK_LEVEL, tone_anchor: bool = True) -> np.ndarray:
    """Restore (×1) or super-resolve (×2) one radiograph with the diffusion enhancer.

    Black stays black: where the bicubic-upsampled input is at most ``keep_black`` over a whole
    3×3 neighbourhood, the output is that upsampled input. Blur with a non-negative kernel, tone
    curves and resampling all map black to black, so such a region was black, or nearly (a
    resampling undershoot beside an edge clips at 0), before it was degraded; a regressor, whose
    small errors there are half clipped at 0, would otherwise lift it into a faint haze. SSIM
    punishes that haze hard (its luminance term compares means near 0), so on real radiographs
    with black collimation borders the rule is worth ~+0.004 SSIM.

    Args:
        model: a loaded :class:`Enhancer` (its device and dtype are used).
        lq: ``(h, w)`` float32 display image in [0, 1], bone bright.
        sampler: a key of :data:`SAMPLERS`; default: the model's.
        steps: model evaluations; default: the model's.
        generator: CPU generator (initial noise); same seed → same output on the same machine.
        tile: tile side in output pixels (a multiple of ``model.settings.multiple``), or None.
        overlap: tile overlap in output pixels.
        tile_batch: tiles per model call.
        keep_black: the black level of the rule above (default :data:`BLACK_LEVEL`); None: off.
        tone_anchor: with a model that has a tone gate (``settings.tone_anchor`` > 0), keep the
            input's tone unless the gate sees a tone change to undo (its probability > 0.5):
            the output's deviation from ``up`` low-passed by a Gaussian of σ
            ``settings.tone_anchor`` output pixels is subtracted, and the rest of the residual
            is scaled by the gate's detail share (its
            :meth:`~cxrkit.enhancer.model.ToneGate.share`). The decision is all or nothing: the
            gate's probabilities are sharp on the degradations it was fitted on (held-out
            accuracy 1.00) but soft (0.1-0.4) on some unseen ones, where a weighted mix would
            let part of the DRR tone correction through. A model with a tone route
            (``settings.tone_route``) hands an input in which the gate sees a tone change to the
            enhancer in its ``route/`` instead, whole. False: the raw model output (no route).

    Returns:
        ``(h·scale, w·scale)`` float32 in [0, 1].

    Raises:
        InputError: a bad image, tile or step count.
    """
    settings = model.settings
    if lq.ndim != 2 or min(lq.shape) < 2:
        raise InputError(f"enhance needs an (H, W) image, got shape {lq.shape}")
    undo = tone_anchor and tone_change(model, lq)  # False without a gate
    if undo and model.route is not None:
        return enhance(model.route, lq, steps=steps, sampler=sampler, generator=generator,
                       tile=tile, overlap=overlap, tile_batch=tile_batch, keep_black=keep_black)
    m = settings.multiple
    if tile is not None and (tile < m or tile % m):
        raise InputError(f"tile must be a multiple of {m}, got {tile}",
                         hint=f"e.g. --tile {max(m, (tile // m) * m)}")
    scheduler = make_scheduler(sampler or settings.default_sampler, model.scheduler_config)
    up = bicubic_upsample(torch.from_numpy(np.ascontiguousarray(lq, np.float32)), settings.scale)
    H, W = up.shape
    pad_h, pad_w = (-H) % m, (-W) % m
    cond = F.pad(up[None, None] * 2 - 1, (0, pad_w, 0, pad_h), mode="replicate")  # (1,1,H',W')
    with torch.inference_mode():
        # one degradation estimate for the whole image (None without an encoder), for every tile
        embedding = model.encode(torch.from_numpy(np.ascontiguousarray(lq, np.float32))[None, None])

        def model_fn(x: torch.Tensor, c: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if embedding is None:
                return model(x, c, t)
            return model(x, c, t, embedding=embedding.expand(len(x), -1))

        residual = sample(model_fn, cond.to(model.device), scheduler=scheduler,
                          steps=steps or settings.default_steps, generator=generator,
                          tile=tile, overlap=overlap, tile_batch=tile_batch,
                          zero_start=settings.zero_start)
    out = up + residual[0, 0, :H, :W].cpu() / settings.residual_scale
    if tone_anchor and model.tone_gate is not None:
        with torch.inference_mode():
            share = float(model.tone_gate.share(_batch(lq).to(model.device))[0])
        out = anchor_tone(out, up, settings.tone_anchor, 0.0 if undo else 1.0, share)
    if keep_black is not None:
        black = F.max_pool2d(up[None, None], 3, stride=1, padding=1)[0, 0] <= keep_black
        out = torch.where(black, up, out)
    return out.clamp(0, 1).numpy().astype(np.float32)
