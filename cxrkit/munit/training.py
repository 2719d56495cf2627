"""Training MUNIT-LQ: the loss the engine minimises and :func:`train_munit`, wired to
:func:`cxrkit.train.train` by ``cxrkit train-munit``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from cxrkit.errors import InputError
from cxrkit.munit.data import UnpairedCrops, _center, holdout, load_display, resize_short_side
from cxrkit.munit.model import Munit, unwrap_munit
from cxrkit.munit.networks import MUNIT_KIND, MunitSettings

if TYPE_CHECKING:
    from cxrkit.train import TrainConfig, TrainResult

def munit_loss(model: nn.Module, batch: dict[str, torch.Tensor],
               generators: Sequence[torch.Generator]) -> torch.Tensor:
    """The scalar the engine minimises: generator objective + discriminator objective.

    :func:`cxrkit.train.train` runs one optimizer over all parameters and one backward pass. The
    GAN's two players still get their own gradients: the generator's adversarial term scores the
    fakes with *detached* discriminator weights, and the discriminator scores *detached* fakes,
    so ``∂/∂θ_G`` of the sum is the generator's gradient and ``∂/∂θ_D`` is the discriminator's.
    The players are updated simultaneously rather than alternately (MUNIT alternates D then G on
    each batch).

    Args:
        model: a :class:`Munit` (possibly DDP-wrapped).
        batch: ``hq`` and ``lq``, each ``(B, 1, h, w)`` float32 in [0, 1] (unpaired).
        generators: one CPU generator per sample, for its random style codes.

    Returns:
        The scalar loss.
    """
    dim = unwrap_munit(model).settings.style_dim
    styles = torch.stack([torch.randn(2, dim, generator=g) for g in generators])  # (B, 2, dim)
    styles = styles.to(batch["hq"].device)
    terms = model(2 * batch["hq"] - 1, 2 * batch["lq"] - 1, styles[:, 0], styles[:, 1])
    return terms["generator"] + terms["discriminator"]


def train_munit(hq_paths: Sequence[str | Path], lq_paths: Sequence[str | Path],
                settings: MunitSettings, config: TrainConfig, *, crop: int = 128,
                command: str = "",
                on_log: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train MUNIT-LQ with :func:`cxrkit.train.train` and write its model directory.

    Both domains are brought to ``settings.image_size`` (short side, antialiased bicubic), as
    MUNIT's data loader does, then random ``crop`` × ``crop`` patches are drawn, unpaired.
    Validation (centre crops of the images :func:`holdout` keeps out of training) reports the
    within-domain reconstruction L1 and the L1 between the content codes of an HQ crop and of its
    translation.

    Args:
        hq_paths: real radiographs (domain ``hq``).
        lq_paths: real DRRs (domain ``lq``), e.g. from ``repro/make_lq_domain.py``.
        settings: architecture and loss weights.
        config: the training loop's settings (``config.output_dir`` receives the model).
        crop: training crop side in px (a multiple of ``settings.multiple``; paper: 256).
        command: the exact command line (for ``run.json``).
        on_log: progress callback (see :func:`cxrkit.train.train`).

    Returns:
        The training result; the model directory is ``config.output_dir``.

    Raises:
        InputError: a crop that is not a multiple of ``settings.multiple``, or bad images.
    """
    from cxrkit.diffusion.training import files_sha256
    from cxrkit.train import train

    if crop % settings.multiple:
        raise InputError(f"crop {crop} must be a multiple of {settings.multiple}")
    hq = [resize_short_side(im, settings.image_size) for im in load_display(hq_paths)]
    lq = [resize_short_side(im, settings.image_size) for im in load_display(lq_paths)]
    (hq, val_hq_images), (lq, val_lq_images) = holdout(hq), holdout(lq)
    data = UnpairedCrops(hq, lq, crop, flip=False)
    val_hq = torch.stack([_center(im, crop) for im in val_hq_images])  # (n, 1, c, c)
    val_lq = torch.stack([_center(im, crop) for im in val_lq_images])

    def validate(model: nn.Module) -> dict[str, float]:
        inner = unwrap_munit(model)
        device = next(inner.parameters()).device
        x_hq, x_lq = val_hq.to(device) * 2 - 1, val_lq.to(device) * 2 - 1
        c_hq, s_hq = inner.generator("hq").encode(x_hq)
        c_lq, s_lq = inner.generator("lq").encode(x_lq)
        style = torch.randn(len(x_hq), settings.style_dim,
                            generator=torch.Generator().manual_seed(config.seed)).to(device)
        fake = inner.generator("lq").decoder(c_hq, style)
        return {"recon_l1_hq": float(F.l1_loss(inner.generator("hq").decoder(c_hq, s_hq), x_hq)),
                "recon_l1_lq": float(F.l1_loss(inner.generator("lq").decoder(c_lq, s_lq), x_lq)),
                "content_l1": float(F.l1_loss(inner.generator("lq").content(fake), c_hq))}

    model = Munit.new(settings, generator=torch.Generator().manual_seed(config.seed))
    run_info = {
        "command": command, "kind": MUNIT_KIND, "munit": asdict(settings), "crop": crop,
        "parameters": {"generators": sum(p.numel() for p in model.gen.parameters()),
                       "discriminators": sum(p.numel() for p in model.dis.parameters())},
        "data": {"hq": files_sha256(hq_paths), "lq": files_sha256(lq_paths)},
        "optimizer_note": "one AdamW over G and D, simultaneous updates (see munit_loss)",
    }

    def save(trained: nn.Module, folder: Path) -> None:
        unwrap_munit(trained).save_pretrained(folder)

    return train(model, munit_loss, data, config, validate=validate, save_model=save,
                 run_info=run_info, on_log=on_log)
