"""``cxrkit train-munit``: train MUNIT-LQ, the unpaired HQ radiograph → DRR-style translator."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cxrkit.cli._options import (
    STOP_AT_HELP,
    TIME_LIMIT_HELP,
    finish_training,
    iter_inputs,
    parse_duration,
)
from cxrkit.io import RADIOGRAPH_PATTERNS

MIXED = ("no", "bf16", "fp16")
IMAGE_PATTERNS = RADIOGRAPH_PATTERNS
DISC_INIT_NAMES = ("kaiming", "gaussian")  # cxrkit.munit.DISC_INITS, kept torch-free here


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
        help="Both domains are resized so the short side is this (px); translation runs at "
             "this resolution.")] = 256,
    crop: Annotated[int, typer.Option(help="Random training crop side (px).")] = 128,
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
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 2000,
    batch_size: Annotated[int, typer.Option(help="Global batch per step (paper: 1).")] = 4,
    lr: Annotated[float, typer.Option(
        help="Generator learning rate (paper: 1e-4); the discriminators use --disc-lr-ratio "
             "times it.")] = 1e-4,
    weight_decay: Annotated[float, typer.Option(help="Adam weight decay (paper: 1e-4).")
                            ] = 1e-4,
    mixed_precision: Annotated[str, typer.Option(help="no, bf16 or fp16 autocast.")] = "no",
    ema: Annotated[float, typer.Option("--ema", help="EMA decay (0: off).")] = 0.999,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 500,
    validate_every: Annotated[int, typer.Option(help="Steps between validations.")] = 500,
    resume: Annotated[str | None, typer.Option(
        help="'latest' or a checkpoint folder to continue from.", show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the weights and the data order.")] = 0,
    cpu: Annotated[bool, typer.Option("--cpu", help="Train on the CPU even with CUDA.")] = False,
    time_limit: Annotated[str | None, typer.Option(
        help=TIME_LIMIT_HELP, show_default=False)] = None,
    stop_at_step: Annotated[int, typer.Option(min=0, help=STOP_AT_HELP,
                                              show_default=False)] = 0,
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
    from cxrkit.train import TrainConfig

    if mixed_precision not in MIXED:
        raise typer.BadParameter(f"use one of {', '.join(MIXED)}", param_hint="--mixed-precision")
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
    config = TrainConfig(
        output_dir=str(out), steps=steps, batch_size=batch_size, lr=lr, warmup_steps=0,
        weight_decay=weight_decay, max_grad_norm=0.0, ema_decay=ema,
        mixed_precision=mixed_precision, checkpoint_every=checkpoint_every,
        validate_every=validate_every, seed=seed, resume=resume, cpu=cpu,
        time_limit_s=parse_duration(time_limit), stop_at_step=stop_at_step)
    result = train(hq_paths, lq_paths, settings, config, crop=crop,
                   command=shlex.join(["cxrkit", *sys.argv[1:]]), on_log=_progress)
    finish_training(result, out, "train-munit")


def domain_paths(inputs: list[str], hint: str) -> list[str]:
    """Image paths of one domain: from files/folders/globs, or the ``path`` of .jsonl records."""
    from cxrkit.pipe import parse_line

    paths: list[str] = []
    for item in inputs:
        if item.endswith(".jsonl"):
            with open(item) as fh:
                records = [parse_line(line, where=item) for line in fh]
            paths += [r["path"] for r in records if r]
        else:
            paths += [r["path"] for r in iter_inputs([item], patterns=IMAGE_PATTERNS)]
    if not paths:
        raise typer.BadParameter("no images found", param_hint=hint)
    return paths


def _progress(entry: dict[str, Any]) -> None:
    """One line per report on stderr (``step 100 loss 0.0123 …``)."""
    text = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in entry.items())
    typer.echo(f"cxrkit train-munit: {text}", err=True)
