"""The DDPM-LQ model: :class:`DdpmLQSettings` and :class:`DdpmLQ` (UNet + formulation), and
the model folder (``save_pretrained`` / ``from_pretrained``).

A model directory (diffusers ``save_pretrained`` layout plus cxrkit's config)::

    config.json         DdpmLQSettings (with "kind": "ddpm-lq")
    model_index.json    diffusers component list
    unet/               config.json + diffusion_pytorch_model.safetensors
    scheduler/          scheduler_config.json
    run.json            how it was trained (written by :mod:`cxrkit.train`)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from cxrkit.diffusion.denoiser import UNetDenoiser, new_unet
from cxrkit.errors import InputError, ModelError
from cxrkit.modelfiles import read_config, settings_values

DDPM_LQ_KIND = "ddpm-lq"
ROUTES = ("img2img", "two-stage")
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass(frozen=True)
class DdpmLQSettings:
    """Architecture, formulation and defaults of a DDPM-LQ model (stored as ``config.json``).

    Attributes:
        route: ``img2img`` (unconditional) or ``two-stage`` (HQ-conditioned after stage 2).
        block_out_channels: UNet widths per resolution level.
        layers_per_block: ResNet blocks per level.
        unshuffle: space-to-depth factor in front of the UNet (1 disables it).
        prediction_type: ``epsilon`` (2303.06994, DiffusionXRay) or ``v_prediction`` (what
            ``cxrkit train-ddpm-lq`` uses for two-stage: at ``t`` near ``T`` an ε target says
            almost nothing about the image, so an ε model learns its HQ condition very slowly).
        num_train_timesteps: schedule length ``T`` (cosine).
        max_train_timestep: train on ``t <`` this (2303.06994: 500 of 1000; img2img never goes
            higher); ``T`` for two-stage.
        image_size: short side (px) the images were brought to; sampling runs at it.
        default_strength: noising strength used when the caller gives none, in (0, 1].
        default_steps: DDIM steps over the *whole* schedule; about ``steps·strength`` run.
        kind: always ``ddpm-lq``; loading checks it.
    """

    route: str = "img2img"
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    unshuffle: int = 2
    prediction_type: str = "epsilon"
    num_train_timesteps: int = 1000
    max_train_timestep: int = 500
    image_size: int = 256
    default_strength: float = 0.25
    default_steps: int = 40
    kind: str = field(default=DDPM_LQ_KIND)

    def __post_init__(self) -> None:
        if self.route not in ROUTES:
            raise InputError(f"route must be one of {ROUTES}, got {self.route!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise InputError(f"prediction type must be one of {PREDICTION_TYPES}")
        if not 1 <= self.max_train_timestep <= self.num_train_timesteps:
            raise InputError("max_train_timestep must be in [1, num_train_timesteps]")
        if not 0 < self.default_strength <= 1 or self.default_steps < 1:
            raise InputError("default strength must be in (0, 1] and default steps ≥ 1")
        if self.unshuffle < 1 or not self.block_out_channels or self.image_size < 8:
            raise InputError("unshuffle ≥ 1, non-empty widths and image_size ≥ 8 are required")
        if self.kind != DDPM_LQ_KIND:
            raise InputError(f"DDPM-LQ settings must have kind {DDPM_LQ_KIND!r}")

    @property
    def conditional(self) -> bool:
        """True for the two-stage route (input ``[x_t, cond]``)."""
        return self.route == "two-stage"

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this."""
        return self.unshuffle * 2 ** (len(self.block_out_channels) - 1)


class DdpmLQ(UNetDenoiser):
    """UNet + formulation: predicts ``ε`` (or ``v``) of a noisy LQ image, optionally given HQ.

    Args:
        unet: a diffusers ``UNet2DModel`` with ``c·r²`` input (``c`` = 2 if conditional, else 1)
            and ``r²`` output channels.
        scheduler_config: the ``DDPMScheduler`` config.
        settings: the model's settings.
    """

    settings: DdpmLQSettings

    @classmethod
    def new(cls, settings: DdpmLQSettings, *, generator: torch.Generator) -> DdpmLQ:
        """A freshly initialised model (weights drawn from ``generator``)."""
        r2 = settings.unshuffle**2
        unet, scheduler_config = new_unet(
            (2 if settings.conditional else 1) * r2, r2, settings.block_out_channels,
            settings.layers_per_block, num_train_timesteps=settings.num_train_timesteps,
            prediction_type=settings.prediction_type, generator=generator)
        return cls(unet, scheduler_config, settings)

    def forward(self, x_t: torch.Tensor, cond: torch.Tensor | None,
                t: torch.Tensor) -> torch.Tensor:
        """The model output.

        Args:
            x_t: ``(B, 1, H, W)`` noisy LQ in [-1, 1] scale; ``H, W`` multiples of ``multiple``.
            cond: ``(B, 1, H, W)`` HQ in [-1, 1] (zeros: no condition); ignored by img2img.
            t: ``(B,)`` integer timesteps.

        Returns:
            ``(B, 1, H, W)`` predicted ``ε`` (or ``v``), float32.
        """
        inputs = x_t
        if self.settings.conditional:
            inputs = torch.cat([x_t, torch.zeros_like(x_t) if cond is None else cond], dim=1)
        return self.denoise(inputs, t)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the model directory (see the module docstring), fp32 safetensors."""
        import diffusers
        from diffusers import DDPMScheduler
        from safetensors.torch import save_file

        out = Path(directory)
        (out / "unet").mkdir(parents=True, exist_ok=True)
        self.unet.save_config(out / "unet")  # type: ignore[operator]
        state = {k: v.detach().float().contiguous() for k, v in self.unet.state_dict().items()}
        save_file(state, out / "unet" / "diffusion_pytorch_model.safetensors",
                  metadata={"format": "pt"})
        DDPMScheduler.from_config(self.scheduler_config).save_pretrained(out / "scheduler")
        index = {"_class_name": "CxrkitDdpmLQ", "_diffusers_version": diffusers.__version__,
                 "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDPMScheduler"]}
        (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        (out / "config.json").write_text(json.dumps(asdict(self.settings), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device = "cpu"
                        ) -> DdpmLQ:
        """Load a model directory written by :meth:`save_pretrained` (safetensors only).

        Raises:
            ModelError: not a folder, another kind of model, or missing/unfit weights.
        """
        from diffusers import DDPMScheduler, UNet2DModel

        folder = Path(directory)
        settings = DdpmLQSettings(**settings_values(read_config(folder, DDPM_LQ_KIND),
                                                    DdpmLQSettings, folder))
        weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
        if not weights.is_file():
            raise ModelError("DDPM-LQ model has no unet safetensors weights", path=str(folder),
                             hint="weights are read from safetensors only (never pickles)")
        try:
            unet = UNet2DModel.from_pretrained(folder / "unet", use_safetensors=True)
            scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"cannot load the DDPM-LQ model: {exc}"[:300],
                             path=str(folder)) from exc
        model = cls(unet, dict(scheduler.config), settings)
        return model.to(device).eval().requires_grad_(False)
