"""Sampling DDPM-LQ: :func:`degrade_lq` (the written-out DDIM loop from the noised HQ) and
:class:`DdpmDegrader`, the ``ddpm`` method of ``cxrkit degrade``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cxrkit.data.images import resize, resize_short_side
from cxrkit.ddpm_lq.model import DdpmLQ
from cxrkit.errors import InputError


def degrade_lq(model: DdpmLQ, hq: np.ndarray, *, strength: float, steps: int,
               generator: torch.Generator) -> np.ndarray:
    """Noise ``hq`` to ``t = strength·T`` and denoise it with DDIM (η = 0), at ``hq``'s size.

    The written-out loop: ``set_timesteps(steps)``, keep the timesteps below ``strength·T``, add
    noise to ``2·hq - 1`` at the first of them (SDEdit, Meng et al. 2022,
    https://arxiv.org/abs/2108.01073), then predict and ``step`` for each. The two-stage model
    sees ``cond = 2·hq - 1`` at every step.

    Args:
        model: a loaded :class:`DdpmLQ`.
        hq: ``(H, W)`` float32 in [0, 1] (any size; padded to ``model.settings.multiple``).
        strength: share of the schedule, in (0, 1]; at least one step runs.
        steps: DDIM steps over the whole schedule (about ``steps·strength`` run).
        generator: CPU generator of the noise; same seed → same bytes on the same machine.

    Returns:
        ``(H, W)`` float32 in [0, 1].
    """
    from cxrkit.diffusion.sampling import make_scheduler

    if not 0 < strength <= 1 or steps < 1:
        raise InputError(f"strength must be in (0, 1] and steps ≥ 1, got {strength}, {steps}")
    device = next(model.parameters()).device
    H, W = hq.shape
    m = model.settings.multiple
    x0 = torch.from_numpy(np.ascontiguousarray(hq, np.float32))[None, None] * 2 - 1
    x0 = F.pad(x0, (0, (-W) % m, 0, (-H) % m), mode="reflect" if min(H, W) > m else "replicate")
    scheduler = make_scheduler("ddim", model.scheduler_config)
    timesteps = sampling_timesteps(scheduler, strength, steps)
    noise = torch.randn(x0.shape, generator=generator)
    x = scheduler.add_noise(x0, noise, torch.tensor([timesteps[0]]))
    x, cond = x.to(device), x0.to(device) if model.settings.conditional else None
    with torch.inference_mode():
        for t in timesteps:
            out = model(x, cond, torch.full((1,), t, device=device))
            x = scheduler.step(out, t, x).prev_sample
    return ((x[0, 0, :H, :W].cpu() + 1) / 2).clamp(0, 1).numpy().astype(np.float32)


def sampling_timesteps(scheduler: Any, strength: float, steps: int) -> list[int]:
    """The timesteps a run of :func:`degrade_lq` visits: those of ``set_timesteps(steps)``
    below ``strength·T`` (at least the last one), in decreasing order."""
    scheduler.set_timesteps(steps)
    T = scheduler.config.num_train_timesteps
    kept = [int(t) for t in scheduler.timesteps if int(t) < strength * T]
    return kept or [int(scheduler.timesteps[-1])]


@dataclass
class DdpmDegrader:
    """The ``ddpm`` method of ``cxrkit degrade``: HQ radiograph → LQ with a DDPM-LQ model.

    The input is resized so its short side is the model's ``image_size``, degraded by
    :func:`degrade_lq` and resized to ``(H, W) // scale``.

    Args:
        model_dir: a folder written by ``cxrkit train-ddpm-lq``.
        strength: noising strength in (0, 1]; None: the model's default (0.25 for img2img).
        steps: DDIM steps over the whole schedule; None: the model's default.
        device: torch device.

    Raises:
        ModelError: the folder is not a DDPM-LQ model.
    """

    model_dir: str | Path
    strength: float | None = None
    steps: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        from cxrkit.files import file_sha256

        self.model = DdpmLQ.from_pretrained(self.model_dir, device=self.device)
        self.model_sha256 = file_sha256(
            Path(self.model_dir) / "unet" / "diffusion_pytorch_model.safetensors")
        s = self.model.settings
        self.strength = s.default_strength if self.strength is None else float(self.strength)
        self.steps = s.default_steps if self.steps is None else int(self.steps)
        if not 0 < self.strength <= 1:
            raise InputError(f"strength must be in (0, 1], got {self.strength}")

    def __call__(self, image: np.ndarray, *, scale: int = 1, pixel_mm: float = 0.35,
                 generator: np.random.Generator) -> Any:
        """Degrade one ``(H, W)`` display image; returns a ``DegradeResult`` ``(H//s, W//s)``."""
        from cxrkit.degrade import DegradeResult
        from cxrkit.diffusion.sampling import make_scheduler

        if not isinstance(image, np.ndarray) or image.ndim != 2 or min(image.shape) < 8:
            raise InputError(f"DDPM-LQ needs an (H, W) image, got shape {np.shape(image)}")
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise InputError(f"scale must be an integer ≥ 1, got {scale!r}")
        work = resize_short_side(np.clip(image, 0, 1), self.model.settings.image_size)
        seed = int(generator.integers(0, 2**63 - 1))
        assert self.strength is not None and self.steps is not None
        lq = degrade_lq(self.model, work, strength=self.strength, steps=self.steps,
                        generator=torch.Generator().manual_seed(seed))
        out = resize(lq, (image.shape[0] // scale, image.shape[1] // scale))
        params = {"route": self.model.settings.route, "strength": self.strength,
                  "steps": self.steps, "nfe": len(sampling_timesteps(
                      make_scheduler("ddim", self.model.scheduler_config), self.strength,
                      self.steps)),
                  "torch_seed": seed, "work_size": list(work.shape), "pixel_mm": pixel_mm,
                  "model_sha256": self.model_sha256}
        return DegradeResult(out, [{"name": "ddpm", "params": params}])


def build_degrader(*, model_dir: str | Path, style_reference: np.ndarray | None = None,
                   strength: float | None = None, device: str = "cpu") -> DdpmDegrader:
    """The ``ddpm`` entry of :data:`cxrkit.degrade.METHODS` (registered there by module path).

    Raises:
        InputError: a ``style_reference`` (the ddpm method takes none), or a bad strength.
        ModelError: the folder is not a DDPM-LQ model.
    """
    if style_reference is not None:
        raise InputError("the ddpm method takes no style reference",
                         hint="drop --style-reference")
    return DdpmDegrader(model_dir, strength=strength, device=device)
