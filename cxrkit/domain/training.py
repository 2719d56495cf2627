"""Training the domain classifier on the shared loop, and scoring images with it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cxrkit.domain.data import DomainPatches, PatchImage, grid_patches
from cxrkit.domain.model import DomainClassifier, DomainSettings
from cxrkit.errors import InputError
from cxrkit.metrics.detection import auc
from cxrkit.train import TrainConfig, TrainResult, train, unwrap_model


def domain_loss(model: nn.Module, batch: dict[str, torch.Tensor], _gens: Any) -> torch.Tensor:
    """Binary cross-entropy of the logits against the labels (1 = real radiograph)."""
    return F.binary_cross_entropy_with_logits(model(batch["patch"]), batch["label"])


@dataclass
class HeldOutPatches:
    """Fixed validation patches: up to ``per_image`` grid lung patches of each held-out image.

    Attributes:
        patches: ``(N, 1, P, P)``.
        labels: ``(N,)`` 1 = real radiograph.
    """

    patches: torch.Tensor
    labels: np.ndarray

    @classmethod
    def of(cls, real: list[PatchImage], drr: list[PatchImage], patch_px: int, *,
           per_image: int = 8, seed: int = 0) -> HeldOutPatches:
        rng = np.random.default_rng([seed, 23])
        patches, labels = [], []
        for label, items in ((1, real), (0, drr)):
            for item in items:
                grid = grid_patches(item.image, item.lung, patch_px)
                keep = rng.permutation(len(grid))[:per_image]
                patches.append(grid[keep])
                labels += [label] * len(keep)
        if not patches or len(set(labels)) < 2:
            raise InputError("validation needs held-out images of both classes")
        return cls(torch.from_numpy(np.concatenate(patches))[:, None], np.array(labels))

    def measure(self, model: nn.Module) -> dict[str, float]:
        """``accuracy`` (P ≥ 0.5), ``auc`` and mean P(real) per class on these patches."""
        inner = unwrap_model(model, DomainClassifier)
        device = next(inner.parameters()).device
        with torch.no_grad():
            p = torch.cat([torch.sigmoid(inner(chunk.to(device))).cpu()
                           for chunk in self.patches.split(256)]).numpy()
        return {"accuracy": float(((p >= 0.5) == (self.labels == 1)).mean()),
                "auc": float(auc(p, self.labels)),
                "p_real_on_real": float(p[self.labels == 1].mean()),
                "p_real_on_drr": float(p[self.labels == 0].mean()),
                "n_patches": float(len(p))}


def train_domain(settings: DomainSettings, config: TrainConfig, *, real: list[PatchImage],
                 drr: list[PatchImage], held_out: HeldOutPatches | None = None,
                 run_info: dict[str, Any] | None = None,
                 on_log: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train a classifier from scratch (weights from ``config.seed``) and write its folder.

    Args:
        settings: the architecture and pitch (the images must already be at ``pixel_mm``).
        config: the run (``output_dir`` receives the model and ``run.json``).
        real: training radiographs at the pitch.
        drr: training DRRs at the pitch.
        held_out: validation patches (of held-out patients and poses).
        run_info: more for ``run.json`` (command, data hashes).
        on_log: progress callback.
    """
    model = DomainClassifier.new(settings, seed=config.seed)
    data = DomainPatches(real, drr, settings.patch_px)

    def save(trained: nn.Module, folder: Path) -> None:
        unwrap_model(trained, DomainClassifier).save(folder)

    info = {"settings": settings.__dict__, "n_train": {"real": len(real), "drr": len(drr)},
            **(run_info or {})}
    return train(model, domain_loss, data, config,
                 validate=held_out.measure if held_out is not None else None,
                 save_model=save, run_info=info, on_log=on_log)


def probability(model: DomainClassifier, image: np.ndarray, lung: np.ndarray) -> float:
    """Mean P(real radiograph) over an image's lung grid patches (image at the model's pitch)."""
    patches = torch.from_numpy(grid_patches(image, lung, model.settings.patch_px))[:, None]
    device = next(model.parameters()).device
    with torch.no_grad():
        p = torch.cat([torch.sigmoid(model(chunk.to(device))).cpu()
                       for chunk in patches.split(256)])
    return float(p.mean())
