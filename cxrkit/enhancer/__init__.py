"""The enhancer model family: a conditional diffusion model that restores and super-resolves
radiographs (``cxrkit enhance``, trained by ``cxrkit train-enhance``).

Like every family it owns its model, data, loss and training wiring, and inference:

- :mod:`cxrkit.enhancer.model`: :class:`Enhancer` (a :class:`cxrkit.diffusion.UNetDenoiser` with
  the residual formulation and an optional degradation encoder), its model directory, its loss
  and the bicubic baseline;
- :mod:`cxrkit.enhancer.data`: training pairs made on the fly by ``degrade`` presets;
- :mod:`cxrkit.enhancer.training`: :func:`train_enhancer`, which wires the enhancer to
  :func:`cxrkit.train.train`;
- :mod:`cxrkit.enhancer.inference`: :func:`enhance`, one radiograph end to end.

It imports only downward (the shared diffusion floor, data helpers, ``degrade``, ``io``,
``metrics``, the training loop), never another family. Importing it imports torch.

Example:
    >>> model = Enhancer.from_pretrained(default_model_dir())
    >>> hq = enhance(model, lq, steps=10, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

from pathlib import Path

from cxrkit.enhancer.data import PairData
from cxrkit.enhancer.inference import BLACK_LEVEL, enhance
from cxrkit.enhancer.model import (
    ENHANCER_KIND,
    Enhancer,
    EnhancerSettings,
    bicubic_enhance,
    diffusion_loss,
    model_sha256,
)
from cxrkit.enhancer.training import PairSettings, train_enhancer

__all__ = [
    "BLACK_LEVEL",
    "ENHANCER_KIND",
    "Enhancer",
    "EnhancerSettings",
    "PairData",
    "PairSettings",
    "bicubic_enhance",
    "default_model_dir",
    "diffusion_loss",
    "enhance",
    "model_sha256",
    "train_enhancer",
]


def default_model_dir() -> Path:
    """The enhancer shipped with cxrkit: ``cxrkit/models/enhancer`` inside the package."""
    return Path(__file__).resolve().parent.parent / "models" / "enhancer"
