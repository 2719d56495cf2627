"""``cxrkit train-munit``: train MUNIT-LQ, the unpaired HQ radiograph → DRR-style translator."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrkit.cli._groups import TRAINING, TrainOptions
from cxrkit.cli._options import command_line, finish_training, iter_inputs, training_progress
from cxrkit.io import RADIOGRAPH_PATTERNS

IMAGE_PATTERNS = RADIOGRAPH_PATTERNS
DISC_INIT_NAMES = ("kaiming", "gaussian")  # cxrkit.munit.DISC_INITS, kept torch-free here


@TRAINING.use("training", defaults={"batch_size": 4, "lr": 1e-4, "warmup_steps": 0,
                                    "weight_decay": 1e-4, "max_grad_norm": 0.0},
              helps={"batch_size": "Global batch per step (paper: 1).",
                     "lr": "Generator learning rate (paper: 1e-4); the discriminators use "
                           "--disc-lr-ratio times it.",
                     "weight_decay": "Adam weight decay of both (paper: 1e-4)."})
def train_munit(
    hq: Annotated[list[str], typer.Option(
        "--hq", help="HQ domain: real radiographs (files, folders, globs or .jsonl records; "
                     "repeatable).", show_default=False)],
    lq: Annotated[list[str], typer.Option(
        "--lq", help="LQ domain: real DRRs (files, folders, globs or .jsonl records, e.g. from "
                     "repro/make_lq_domain.py; repeatable).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")] = Path(
        "munit-lq"),
    image_size: Annotated[int, typer.Option(
        min=8, max=8192, help="Both domains are resized so the short side is this (px); "
                              "translation runs at this resolution.")] = 256,
    crop: Annotated[int, typer.Option(min=8, max=8192, help="Random training crop side (px).")
                    ] = 128,
    width: Annotated[int, typer.Option(help="Channels of the first conv (paper: 64).")] = 16,
    residual_blocks: Annotated[int, typer.Option(help="Residual blocks (paper: 4).")] = 2,
    style_dim: Annotated[int, typer.Option(help="Style code length (paper: 8).")] = 8,
    recon_image_weight: Annotated[float, typer.Option(help="L1 image reconstruction weight.")
                                  ] = 10.0,
    recon_cycle_weight: Annotated[float, typer.Option(
        help="Explicit cycle reconstruction weight x → other domain → x (MUNIT's recon_x_cyc_w; "
             "its configs use 0 or 10; with the default discriminators, 10 inverted the "
             "anatomy in a 1000-step 128 px run).")] = 0.0,
    tone_weight: Annotated[float, typer.Option(
        help="Tone-keeping weight, an addition to MUNIT (0: off): L1 between each translation "
             "and its source averaged over --tone-pool px blocks, so translations keep the "
             "anatomy's local brightness and change only finer texture, noise and "
             "sharpness.")] = 0.0,
    tone_pool: Annotated[int, typer.Option(
        help="Block side (px, at --image-size) of the tone-keeping term.")] = 8,
    disc_scales: Annotated[int, typer.Option(
        help="Image scales the multi-scale discriminator judges (paper: 3).")] = 3,
    disc_init: Annotated[str, typer.Option(
        help="Discriminator init: kaiming (He-normal, right at any width) or gaussian (MUNIT's "
             "N(0, 0.02), sized for width 64; at width 16 the discriminators barely learn).")
                         ] = "kaiming",
    disc_lr_ratio: Annotated[float, typer.Option(
        help="Discriminator learning rate as a multiple of --lr (two time-scale update rule; "
             "paper: 1).")] = 4.0,
    training: TrainOptions = None,  # type: ignore[assignment]  # the TRAINING options
) -> None:
    """Train MUNIT-LQ on unpaired HQ radiographs and DRRs; writes a model folder for degrade.

    MUNIT (Huang et al. 2018): content and style encoders per domain, AdaIN decoders, multi-scale
    LSGAN discriminators; image, content and style reconstruction plus adversarial losses. Each
    step draws random unpaired crops of both domains (seeded), then updates the discriminators
    on detached translations and then the generators, each with its own Adam (betas 0.5,
    0.999; --weight-decay applies to both, the discriminators learn --disc-lr-ratio times
    faster than --lr). The folder holds config.json
    (kind munit-lq), model.safetensors (the generators) and run.json (the command, settings,
    data hashes and validation: reconstruction L1, content preservation and tone_l1, how far
    translations move the local brightness). Checkpoints go to
    OUT/checkpoints (--resume latest); runs multi-process under accelerate launch.

    Example:

        python repro/make_lq_domain.py ../shared/data/lidc-idri-0001 -o drrs/
        cxrkit train-munit --hq nih/images/ --lq drrs/ --steps 2000 -o munit-lq/
        cxrkit degrade nih/images/ --method munit --model munit-lq/ -o lq/ | cxrkit eval
    """
    from cxrkit.munit import MunitSettings
    from cxrkit.munit import train_munit as train

    if disc_init not in DISC_INIT_NAMES:
        raise typer.BadParameter(f"use one of {', '.join(DISC_INIT_NAMES)}",
                                 param_hint="--disc-init")
    hq_paths = domain_paths(hq, "--hq")
    lq_paths = domain_paths(lq, "--lq")
    settings = MunitSettings(width=width, residual_blocks=residual_blocks, style_dim=style_dim,
                             mlp_width=16 * width, disc_width=width, disc_scales=disc_scales,
                             disc_init=disc_init, disc_lr_ratio=disc_lr_ratio,
                             recon_image_weight=recon_image_weight,
                             recon_cycle_weight=recon_cycle_weight, tone_weight=tone_weight,
                             tone_pool=tone_pool, image_size=image_size)
    config = training.config(str(out))
    result = train(hq_paths, lq_paths, settings, config, crop=crop,
                   command=command_line(),
                   on_log=training_progress("train-munit"))
    finish_training(result, out, "train-munit")


def domain_paths(inputs: list[str], hint: str) -> list[str]:
    """Image paths of one domain: from files/folders/globs, or the ``path`` of .jsonl records."""
    from cxrkit.pipe import read_record_file

    paths: list[str] = []
    for item in inputs:
        if item.endswith(".jsonl"):
            paths += [r["path"] for r in read_record_file(item)]
        else:
            paths += [r["path"] for r in iter_inputs([item], patterns=IMAGE_PATTERNS)]
    if not paths:
        raise typer.BadParameter("no images found", param_hint=hint)
    return paths

