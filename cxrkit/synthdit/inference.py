"""Inpainting with the synthesis DiT: paint inside a mask, return everything else as it came.

:func:`inpaint_patches` is the sampler at the model's pitch: a loop over one of the shared
diffusion floor's schedulers (:func:`cxrkit.diffusion.make_scheduler`: ``ddim``, ``dpmpp``,
``ddpm``) on the model's cosine schedule with x₀ prediction. At every step the known context is
re-imposed: the model's x₀ estimate outside the mask's support is replaced by the true patch
before the scheduler steps (so the noisy state outside the mask is always the known patch
noised consistently with the running sample, RePaint-style without extra noise draws), and at
the end the output takes the input's pixels outside the support **exactly** (``torch.where``,
no arithmetic on them). The initial noise and any sampler noise come from the caller's
generator, so a seed gives the same result.

:func:`paint` does the same on a whole radiograph: the :class:`~cxrkit.synthdit.data.Window`
around the nodule is resampled to the model's pitch, painted, resampled back, and only the
pixels where the full-resolution mask is non-zero are replaced; every other pixel of the
radiograph is returned bit for bit.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
import torch

from cxrkit.errors import InputError
from cxrkit.synthdit.data import Window, support
from cxrkit.synthdit.model import SynthDiT


@torch.no_grad()
def inpaint_patches(model: SynthDiT, patches: torch.Tensor, masks: torch.Tensor, *,
                    steps: int | None = None, sampler: str | None = None,
                    generator: torch.Generator,
                    on_step: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Generate the masked part of each patch.

    Args:
        model: a :class:`SynthDiT`.
        patches: ``(B, 1, h, w)`` display pixels in [0, 1] (sides multiples of the model's
            ``patch_size``); inside the mask they are ignored.
        masks: ``(B, 1, h, w)`` in [0, 1], binary or soft; its support (``> MASK_FLOOR``) is
            painted.
        steps: sampler steps (default: the model's ``default_steps``).
        sampler: a :data:`cxrkit.diffusion.SAMPLERS` name (default: the model's).
        generator: CPU generator of the initial noise (and of ``ddpm``'s noise).
        on_step: called as ``on_step(index, steps)`` before the model runs at each step (a
            runtime adapter composition sets its scales there:
            :class:`cxrkit.synthdit.adapters.Composition`).

    Returns:
        ``(B, 1, h, w)`` float32: ``patches`` exactly outside the support, the generated pixels
        (clipped to [0, 1]) inside.

    Raises:
        InputError: mismatched shapes, a mask outside [0, 1], or bad steps/sampler.
    """
    from cxrkit.diffusion import make_scheduler

    s = model.settings
    if patches.shape != masks.shape or patches.ndim != 4 or patches.shape[1] != 1:
        raise InputError(f"patches {tuple(patches.shape)} and masks {tuple(masks.shape)} must "
                         "both be (B, 1, h, w)")
    if not bool(torch.isfinite(masks).all()) or masks.min() < 0 or masks.max() > 1:
        raise InputError("mask values must be in [0, 1]")
    steps = s.default_steps if steps is None else steps
    scheduler = make_scheduler(sampler or s.default_sampler, s.scheduler_config())
    if not 1 <= steps <= s.num_train_timesteps:
        raise InputError(f"steps must be 1..{s.num_train_timesteps}, got {steps}")
    scheduler.set_timesteps(steps)
    device = next(model.parameters()).device
    patches = patches.float().to(device)
    masks = masks.float().to(device)
    known = 2 * patches - 1
    keep = ~support(masks)
    context = torch.where(keep, known, torch.zeros_like(known))
    noise = torch.randn(patches.shape, generator=generator).to(device)
    x = noise * scheduler.init_noise_sigma
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    B = patches.shape[0]
    for index, t in enumerate(scheduler.timesteps):
        if on_step is not None:
            on_step(index, len(scheduler.timesteps))
        model_input = scheduler.scale_model_input(x, t)
        pred = model(model_input, context, masks, t.reshape(1).expand(B).to(device))
        pred = torch.where(keep, known, pred)  # the known context, re-imposed every step
        kwargs = {"generator": generator} if takes_generator else {}
        x = scheduler.step(pred, t, x, **kwargs).prev_sample
    painted = ((x.float() + 1) / 2).clamp(0, 1)
    return torch.where(keep, patches, painted)


def paint(model: SynthDiT, image: np.ndarray, mask: np.ndarray, center_rc: tuple[float, float],
          spacing_mm: tuple[float, float], *, steps: int | None = None,
          sampler: str | None = None, generator: torch.Generator,
          on_step: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Paint a nodule into a radiograph inside ``mask``.

    Args:
        model: a :class:`SynthDiT`.
        image: ``(H, W)`` float32 display radiograph in [0, 1].
        mask: ``(H, W)`` in [0, 1], binary or soft (e.g. the projected thickness over its
            maximum); it must fit in the model's window (``patch_px · pixel_mm`` mm) around
            ``center_rc``.
        center_rc: ``(row, col)`` the window is centred on (the nodule's centre).
        spacing_mm: the radiograph's pixel size ``(row, col)``.
        steps, sampler, generator, on_step: as :func:`inpaint_patches`.

    Returns:
        ``(H, W)`` float32: ``image`` bit for bit where ``mask`` is 0, the painted nodule where
        it is not.

    Raises:
        InputError: shapes differ, the mask is empty, or it reaches beyond the model's window.
    """
    s = model.settings
    image = np.asarray(image, dtype=np.float32)
    mask = np.asarray(mask, dtype=np.float32)
    if image.shape != mask.shape or image.ndim != 2:
        raise InputError(f"image {image.shape} and mask {mask.shape} must be the same (H, W)")
    inside = mask > 0
    if not inside.any():
        raise InputError("the nodule mask is empty")
    window = Window.around(center_rc, spacing_mm, s.pixel_mm, (s.patch_px, s.patch_px),
                           image.shape)
    rows, cols = np.nonzero(inside)
    if (rows.min() < window.top or cols.min() < window.left
            or rows.max() >= window.top + window.height
            or cols.max() >= window.left + window.width):
        raise InputError(f"the nodule mask does not fit in the model's {s.patch_px} px window "
                         f"({s.patch_px * s.pixel_mm:g} mm) with its context",
                         hint="use smaller nodules or a model with a larger field")
    binary = bool(np.all((mask == 0) | (mask == 1)))
    patch = np.clip(window.read(np.clip(image, 0, 1)), 0, 1)
    small = np.clip(window.read(mask), 0, 1)
    if binary:  # a binary mask stays binary (edges resampled at half height, widened a little)
        small = (small > 0.25).astype(np.float32)
    if not support(small).any():
        raise InputError("the nodule mask vanishes at the model's pitch",
                         hint=f"it needs at least {s.pixel_mm:g} mm across")
    out = inpaint_patches(model, torch.from_numpy(patch)[None, None],
                          torch.from_numpy(np.ascontiguousarray(small))[None, None],
                          steps=steps, sampler=sampler, generator=generator,
                          on_step=on_step)[0, 0].cpu().numpy()
    _, full = window.write_back(out)
    where, part = window.clip(image.shape, full)
    result = image.copy()
    result[where] = np.where(inside[where], np.clip(part, 0, 1), image[where])
    return result
