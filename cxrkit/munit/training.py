"""Training MUNIT-LQ: the two alternating phases (discriminator, then generator) and
:func:`train_munit`, wired to :func:`cxrkit.train.train` by ``cxrkit train-munit``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from cxrkit.data.images import load_display, resize_short_side
from cxrkit.data.splits import files_sha256, holdout_tail
from cxrkit.errors import InputError
from cxrkit.munit.data import UnpairedCrops, _center
from cxrkit.munit.model import Munit, tone_l1
from cxrkit.munit.networks import MUNIT_KIND, MunitSettings
from cxrkit.train import Phase, unwrap_model

if TYPE_CHECKING:
    from cxrkit.train import TrainConfig, TrainResult


def discriminator_loss(model: nn.Module, batch: dict[str, torch.Tensor],
                       generators: Sequence[torch.Generator]) -> torch.Tensor:
    """The discriminators' LSGAN loss on this batch (a :data:`cxrkit.train.LossFn`).

    Args:
        model: a :class:`Munit` (possibly DDP-wrapped).
        batch: ``hq`` and ``lq``, each ``(B, 1, h, w)`` float32 in [0, 1] (unpaired).
        generators: one CPU generator per sample, for its random style codes.
    """
    return _terms(model, "discriminator", batch, generators)["discriminator"]


def generator_loss(model: nn.Module, batch: dict[str, torch.Tensor],
                   generators: Sequence[torch.Generator]) -> torch.Tensor:
    """The generators' objective (MUNIT eq. 5) on this batch; arguments as
    :func:`discriminator_loss`."""
    return _terms(model, "generator", batch, generators)["generator"]


def _terms(model: nn.Module, phase: str, batch: dict[str, torch.Tensor],
           generators: Sequence[torch.Generator]) -> dict[str, torch.Tensor]:
    """Random styles ``s ~ N(0, I)`` drawn per sample, images to [-1, 1], one ``forward``."""
    dim = unwrap_model(model, Munit).settings.style_dim
    styles = torch.stack([torch.randn(2, dim, generator=g) for g in generators])  # (B, 2, dim)
    styles = styles.to(batch["hq"].device)
    return model(phase, 2 * batch["hq"] - 1, 2 * batch["lq"] - 1,  # type: ignore[no-any-return]
                 styles[:, 0], styles[:, 1])


PHASES = (
    Phase("discriminator", discriminator_loss, lambda m: unwrap_model(m, Munit).dis.parameters(),
          betas=(0.5, 0.999), optimizer="adam"),
    Phase("generator", generator_loss, lambda m: unwrap_model(m, Munit).gen.parameters(),
          betas=(0.5, 0.999), optimizer="adam"),
)
"""MUNIT's alternating updates (its ``trainer.dis_update`` then ``gen_update`` on each batch):
two Adam optimizers, β = (0.5, 0.999), L2 weight decay; learning rate and weight decay from the
:class:`~cxrkit.train.TrainConfig` (MUNIT: 1e-4 and 1e-4). Pass to :func:`cxrkit.train.train`.
Each phase draws its own style codes (from the same per-sample generator, one after the other).
:func:`phases` gives the discriminators their own learning rate."""


def phases(settings: MunitSettings, lr: float) -> tuple[Phase, Phase]:
    """:data:`PHASES` with the generators at ``lr`` and the discriminators at
    ``settings.disc_lr_ratio × lr`` (two time-scale update rule, Heusel et al. 2017).

    With :attr:`MunitSettings.disc_init` ``kaiming``, this keeps the adversarial signal alive
    at small scale. MUNIT's N(0, 0.02) init at one rate leaves a width-16 discriminator near 0.5
    on everything: 1000 steps at 128 px then invert the anatomy (pixel correlation with the
    input -0.35); He init at 4× gives +0.81 and a DRR-like look.
    """
    disc, gen = PHASES
    return replace(disc, lr=settings.disc_lr_ratio * lr), replace(gen, lr=lr)


def train_munit(hq_paths: Sequence[str | Path], lq_paths: Sequence[str | Path],
                settings: MunitSettings, config: TrainConfig, *, crop: int = 128,
                command: str = "",
                on_log: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train MUNIT-LQ with :func:`cxrkit.train.train` and write its model directory.

    Both domains are brought to ``settings.image_size`` (short side, antialiased bicubic), as
    MUNIT's data loader does, then random ``crop`` × ``crop`` patches are drawn, unpaired.
    Validation (centre crops of the images :func:`~cxrkit.data.splits.holdout_tail` keeps out of
    training) reports the within-domain reconstruction L1 and the L1 between the content codes of
    an HQ crop and of its translation.

    Args:
        hq_paths: real radiographs (domain ``hq``).
        lq_paths: real DRRs (domain ``lq``), e.g. from ``repro/make_lq_domain.py``.
        settings: architecture, loss weights and the discriminators' learning-rate ratio.
        config: the training loop's settings (``config.output_dir`` receives the model;
            ``config.lr`` is the generators' learning rate).
        crop: training crop side in px (a multiple of ``settings.multiple``; paper: 256).
        command: the exact command line (for ``run.json``).
        on_log: progress callback (see :func:`cxrkit.train.train`).

    Returns:
        The training result; the model directory is ``config.output_dir``.

    Raises:
        InputError: a crop that is not a multiple of ``settings.multiple``, or bad images.
    """
    from cxrkit.train import train

    if crop % settings.multiple:
        raise InputError(f"crop {crop} must be a multiple of {settings.multiple}")
    hq = [resize_short_side(im, settings.image_size) for im in load_display(hq_paths)]
    lq = [resize_short_side(im, settings.image_size) for im in load_display(lq_paths)]
    (hq, val_hq_images), (lq, val_lq_images) = holdout_tail(hq), holdout_tail(lq)
    data = UnpairedCrops(hq, lq, crop, flip=False)
    val_hq = torch.stack([_center(im, crop) for im in val_hq_images])  # (n, 1, c, c)
    val_lq = torch.stack([_center(im, crop) for im in val_lq_images])

    def validate(model: nn.Module) -> dict[str, float]:
        inner = unwrap_model(model, Munit)
        device = next(inner.parameters()).device
        x_hq, x_lq = val_hq.to(device) * 2 - 1, val_lq.to(device) * 2 - 1
        c_hq, s_hq = inner.generator("hq").encode(x_hq)
        c_lq, s_lq = inner.generator("lq").encode(x_lq)
        style = torch.randn(len(x_hq), settings.style_dim,
                            generator=torch.Generator().manual_seed(config.seed)).to(device)
        fake = inner.generator("lq").decoder(c_hq, style)
        return {"recon_l1_hq": float(F.l1_loss(inner.generator("hq").decoder(c_hq, s_hq), x_hq)),
                "recon_l1_lq": float(F.l1_loss(inner.generator("lq").decoder(c_lq, s_lq), x_lq)),
                "content_l1": float(F.l1_loss(inner.generator("lq").content(fake), c_hq)),
                "tone_l1": float(tone_l1(fake, x_hq, settings.tone_pool))}

    model = Munit.new(settings, generator=torch.Generator().manual_seed(config.seed))
    run_info = {
        "command": command, "kind": MUNIT_KIND, "munit": asdict(settings), "crop": crop,
        "parameters": {"generators": sum(p.numel() for p in model.gen.parameters()),
                       "discriminators": sum(p.numel() for p in model.dis.parameters())},
        "data": {"hq": files_sha256(hq_paths), "lq": files_sha256(lq_paths)},
    }

    def save(trained: nn.Module, folder: Path) -> None:
        unwrap_model(trained, Munit).save_pretrained(folder)

    return train(model, phases(settings, config.lr), data, config, validate=validate,
                 save_model=save, run_info=run_info, on_log=on_log)
