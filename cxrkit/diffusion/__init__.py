"""Diffusion models of cxrkit: the conditional enhancer, its samplers and its training.

- :mod:`cxrkit.diffusion.models`: :class:`Enhancer` (diffusers ``UNet2DModel`` + formulation),
  its model directory, the training loss and the bicubic baseline;
- :mod:`cxrkit.diffusion.sampling`: DDPM / DDIM / DPM-Solver++ loops (:data:`SAMPLERS`) with
  tiled denoising, and :func:`enhance` for one radiograph;
- :mod:`cxrkit.diffusion.training`: pairs made on the fly by ``degrade`` presets, the patient-wise
  split, and :func:`train_enhancer`, which wires the enhancer to :func:`cxrkit.train.train`.

Importing this package imports torch (the CLI imports it inside command bodies only).

Example:
    >>> model = Enhancer.from_pretrained(default_model_dir())
    >>> hq = enhance(model, lq, steps=10, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

from pathlib import Path

from cxrkit.diffusion.models import (
    ENHANCER_KIND,
    Enhancer,
    EnhancerSettings,
    bicubic_enhance,
    bicubic_upsample,
    diffusion_loss,
    sampler_timesteps,
)
from cxrkit.diffusion.sampling import (
    BLACK_LEVEL,
    SAMPLERS,
    enhance,
    make_scheduler,
    sample,
    tiled_predict,
)
from cxrkit.diffusion.training import PairData, PairSettings, split_by_patient, train_enhancer

__all__ = [
    "BLACK_LEVEL",
    "ENHANCER_KIND",
    "SAMPLERS",
    "Enhancer",
    "EnhancerSettings",
    "PairData",
    "PairSettings",
    "bicubic_enhance",
    "bicubic_upsample",
    "default_model_dir",
    "diffusion_loss",
    "enhance",
    "make_scheduler",
    "sample",
    "sampler_timesteps",
    "split_by_patient",
    "tiled_predict",
    "train_enhancer",
]


def default_model_dir() -> Path:
    """The enhancer shipped with cxrkit: ``cxrkit/models/enhancer`` inside the package."""
    return Path(__file__).resolve().parent.parent / "models" / "enhancer"
