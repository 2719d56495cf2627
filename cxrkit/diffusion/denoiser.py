"""The shared diffusion floor's denoiser: a diffusers ``UNet2DModel`` behind a space-to-depth
rearrangement, the builder of a fresh UNet and its cosine schedule, and schedule helpers.

Any diffusion family (the enhancer, DDPM-LQ, a coming synthesis model) subclasses
:class:`UNetDenoiser`, builds its UNet with :func:`new_unet` and owns its own formulation (what
is diffused, what conditions it, its loss). Samplers and tiling: :mod:`cxrkit.diffusion.sampling`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cxrkit.errors import InputError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Weight dtypes a model directory may be saved in."""


class UNetDenoiser(nn.Module):
    """A diffusers ``UNet2DModel`` run behind a space-to-depth rearrangement, with its schedule.

    The shared body of the diffusion families (``cxrkit.enhancer.Enhancer``,
    ``cxrkit.ddpm_lq.DdpmLQ``): each subclass builds the UNet's input channels and calls
    :meth:`denoise`.

    Args:
        unet: a diffusers ``UNet2DModel`` with ``c·r²`` input and ``r²`` output channels.
        scheduler_config: the ``DDPMScheduler`` config (schedule, prediction type).
        settings: the model's settings (a dataclass with at least ``unshuffle``).
    """

    def __init__(self, unet: nn.Module, scheduler_config: dict[str, Any], settings: Any) -> None:
        super().__init__()
        self.unet = unet
        self.scheduler_config = dict(scheduler_config)
        self.settings = settings

    def denoise(self, inputs: torch.Tensor, t: torch.Tensor,
                embedding: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, c, H, W)`` stacked inputs → ``(B, 1, H, W)`` float32 UNet output.

        The inputs are pixel-unshuffled by ``settings.unshuffle = r`` (``(B, c·r², H/r, W/r)``),
        cast to the weights' dtype, denoised at timesteps ``t`` ``(B,)`` and shuffled back.
        ``embedding`` ``(B, D)`` is added to the UNet's time embedding (a UNet built with
        ``class_embed_type="identity"``).
        """
        r = self.settings.unshuffle
        labels = None if embedding is None else embedding.to(self.dtype)
        out = self.unet(F.pixel_unshuffle(inputs, r).to(self.dtype), t,
                        class_labels=labels).sample
        return F.pixel_shuffle(out, r).float()

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights."""
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """The device of the weights."""
        return next(self.parameters()).device


def new_unet(
    in_channels: int, out_channels: int, block_out_channels: tuple[int, ...],
    layers_per_block: int, *, num_train_timesteps: int, prediction_type: str,
    generator: torch.Generator, embedding: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """A freshly initialised attention-free diffusers ``UNet2DModel`` and its cosine-schedule
    ``DDPMScheduler`` config (trailing timesteps), weights drawn from ``generator``. With
    ``embedding`` the UNet adds a given ``(B, D)`` vector to its time embedding
    (``class_embed_type="identity"``).

    diffusers initialises layers from torch's global RNG; this seeds it from ``generator`` for the
    call only and restores it afterwards, so callers' global RNG state is untouched.
    """
    from diffusers import DDPMScheduler, UNet2DModel

    from cxrkit.modelfiles import seeded_init

    levels = len(block_out_channels)
    with seeded_init(generator):
        unet = UNet2DModel(
            sample_size=64, in_channels=in_channels, out_channels=out_channels,
            block_out_channels=block_out_channels, layers_per_block=layers_per_block,
            down_block_types=("DownBlock2D",) * levels, up_block_types=("UpBlock2D",) * levels,
            norm_num_groups=min(8, block_out_channels[0]), add_attention=False,
            class_embed_type="identity" if embedding else None)
    scheduler = DDPMScheduler(
        num_train_timesteps=num_train_timesteps, beta_schedule="squaredcos_cap_v2",
        prediction_type=prediction_type, clip_sample=False, timestep_spacing="trailing")
    return unet, dict(scheduler.config)  # type: ignore[attr-defined, return-value]


def sampler_timesteps(scheduler_config: dict[str, Any], steps: int) -> tuple[int, ...]:
    """The timesteps a ``steps``-step DDIM sampler visits (trailing spacing, as in
    :func:`cxrkit.diffusion.sampling.make_scheduler`): ``(T-1,)`` for one step, ``(999, 499)``
    for two steps of a 1000-step schedule, and so on.

    Raises:
        InputError: ``steps`` < 1 or more than the schedule's length.
    """
    from diffusers import DDIMScheduler

    T = int(scheduler_config["num_train_timesteps"])
    if not 1 <= steps <= T:
        raise InputError(f"sampler steps must be in [1, {T}], got {steps}")
    scheduler = DDIMScheduler.from_config(scheduler_config, timestep_spacing="trailing")
    scheduler.set_timesteps(steps)
    return tuple(int(t) for t in scheduler.timesteps)


def train_alphas_cumprod(scheduler_config: dict[str, Any]) -> torch.Tensor:
    """``ᾱ_t`` for ``t = 0 … T-1`` of the training schedule, ``(T,)`` float32."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler_config).alphas_cumprod.float()
