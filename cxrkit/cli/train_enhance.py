"""``cxrkit train-enhance``: train a diffusion enhancer on HQ radiographs."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cxrkit.cli._options import (
    STOP_AT_HELP,
    TIME_LIMIT_HELP,
    Inputs,
    finish_training,
    iter_inputs,
    parse_duration,
)
from cxrkit.io import RADIOGRAPH_PATTERNS

MIXED = ("no", "bf16", "fp16")


def train_enhance(
    inputs: Inputs = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")] = Path(
        "enhancer"),
    preset: Annotated[str, typer.Option(help="Degradation preset that makes the LQ of each "
                                             "pair (see cxrkit degrade --list).")] = "drr-like",
    pairs: Annotated[bool, typer.Option(
        "--pairs", help="Inputs are records with an LQ 'path' and its HQ 'reference' "
                        "(e.g. from cxrkit degrade) instead of HQ images.")] = False,
    scale: Annotated[int, typer.Option(help="HQ size / LQ size: 1 restores, 2 super-resolves.")
                     ] = 2,
    crop: Annotated[int, typer.Option(help="HQ training crop side (pixels).")] = 192,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 4000,
    batch_size: Annotated[int, typer.Option(help="Global batch per step (all processes).")] = 8,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = 5e-4,
    lr_schedule: Annotated[str, typer.Option(
        help="After the warm-up: constant, or cosine decay to 0 at the last step.")] = "constant",
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per step.")] = 1,
    mixed_precision: Annotated[str, typer.Option(help="no, bf16 or fp16 autocast.")] = "no",
    ema: Annotated[float, typer.Option("--ema", help="EMA decay (0: off).")] = 0.999,
    channels: Annotated[str, typer.Option(help="UNet widths per level.")] = "32,64,128",
    prediction: Annotated[str, typer.Option(help="v_prediction or epsilon.")] = "v_prediction",
    ssim_weight: Annotated[float, typer.Option(
        min=0.0, help="Weight of the SSIM term on the model's clean-image estimate (0: plain MSE "
             "diffusion loss); sharper few-step results.")] = 0.0,
    sampler_steps: Annotated[int, typer.Option(
        min=0, help="Train only at the timesteps an N-step DDIM sampler visits (1: the one-step "
             "regression of the residual) and make N the model's default step count; 0: every "
             "timestep.")] = 0,
    zero_start: Annotated[bool, typer.Option(
        "--zero-start", help="Feed the model 0 instead of pure noise at the first timestep, in "
                             "training and in sampling (with --sampler-steps 1: a deterministic "
                             "one-step model).")] = False,
    context_channels: Annotated[str, typer.Option(
        help="Widths of a degradation encoder that reads the whole LQ image and conditions the "
             "UNet on it (e.g. 16,32,64,64; with --init it is added to that model, starting "
             "from its behaviour); empty: none.")] = "",
    init: Annotated[Path | None, typer.Option(
        help="Start from this model folder's weights and architecture (fine-tune); "
             "--channels and --prediction are then taken from it.", show_default=False)] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 500,
    validate_every: Annotated[int, typer.Option(help="Steps between validations.")] = 500,
    val_fraction: Annotated[float, typer.Option(help="Share of patients held out.")] = 0.2,
    val_crop: Annotated[int, typer.Option(help="Validation crop side (0: whole image).")] = 512,
    val_count: Annotated[int, typer.Option(help="Validation images used (0: all).")] = 12,
    split_seed: Annotated[int, typer.Option(
        help="Seed of the patient split and the validation pairs (keep it when fine-tuning "
             "with --init, so the held-out patients stay held out).")] = 0,
    resume: Annotated[str | None, typer.Option(
        help="'latest' or a checkpoint folder to continue from.", show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the weights and the data order.")] = 0,
    cpu: Annotated[bool, typer.Option("--cpu", help="Train on the CPU even with CUDA.")] = False,
    time_limit: Annotated[str | None, typer.Option(
        help=TIME_LIMIT_HELP, show_default=False)] = None,
    stop_at_step: Annotated[int, typer.Option(min=0, help=STOP_AT_HELP,
                                              show_default=False)] = 0,
) -> None:
    """Train a conditional diffusion enhancer; writes a model folder for cxrkit enhance --model.

    HQ radiographs (files, folders or records) are split by patient (the file-name prefix before
    '_', as in NIH ChestX-ray14) into training and validation. Each step degrades random HQ crops
    with --preset at --scale; validation compares the model with bicubic (PSNR/SSIM) and lands in
    the folder's run.json with the command and data hashes. Progress goes to stderr; checkpoints to
    OUT/checkpoints (continue with --resume latest). Runs multi-process under accelerate launch.

    Example:

        cxrkit train-enhance nih/images/ --steps 4000 -o my-enhancer/
        cxrkit degrade lq.png | cxrkit enhance --model my-enhancer/ | cxrkit eval --json

    Fine-tune an existing model with the SSIM term, validating on whole images:

        cxrkit train-enhance nih/images/ --init my-enhancer/ --ssim-weight 10 --val-crop 0 -o ft/

    Several processes (GPUs; on a machine without CUDA, --multi_gpu starts CPU processes over
    gloo, while --cpu --num_processes 2 would start only one):

        accelerate launch --multi_gpu --num_processes 2 -m cxrkit train-enhance nih/images/ -o m/
    """
    from cxrkit.diffusion import EnhancerSettings, PairSettings, train_enhancer
    from cxrkit.train import LR_SCHEDULES, TrainConfig

    if lr_schedule not in LR_SCHEDULES:
        raise typer.BadParameter(f"use one of {', '.join(LR_SCHEDULES)}",
                                 param_hint="--lr-schedule")
    if mixed_precision not in MIXED:
        raise typer.BadParameter(f"use one of {', '.join(MIXED)}", param_hint="--mixed-precision")
    records = list(iter_inputs(inputs, patterns=RADIOGRAPH_PATTERNS))
    if not records:
        raise typer.BadParameter("no input images (under accelerate launch, give paths: stdin "
                                 "reaches one process only)", param_hint="INPUTS")
    if pairs and any("reference" not in r for r in records):
        raise typer.BadParameter("with --pairs every record needs a 'reference' (its HQ image)")
    hq = [r["reference"] if pairs else r["path"] for r in records]
    try:
        widths = tuple(int(c) for c in channels.split(","))
        context = tuple(int(c) for c in context_channels.split(",")) if context_channels else ()
    except ValueError:
        raise typer.BadParameter("give comma-separated integers, e.g. 32,64,128") from None
    settings = EnhancerSettings(scale=scale, block_out_channels=widths, prediction_type=prediction)
    config = TrainConfig(
        output_dir=str(out), steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
        lr_schedule=lr_schedule,
        ema_decay=ema, mixed_precision=mixed_precision, checkpoint_every=checkpoint_every,
        validate_every=validate_every, seed=seed, resume=resume, cpu=cpu,
        time_limit_s=parse_duration(time_limit), stop_at_step=stop_at_step)
    pair_settings = PairSettings(preset=preset, crop=crop, val_fraction=val_fraction,
                                 val_crop=val_crop, val_count=val_count, split_seed=split_seed)
    result = train_enhancer(
        hq, settings, config, pairs=pair_settings, ssim_weight=ssim_weight, init=init,
        sampler_steps=sampler_steps, zero_start=zero_start, add_context=context,
        lq_paths=[r["path"] for r in records] if pairs else None,
        command=shlex.join(["cxrkit", *sys.argv[1:]]), on_log=_progress)
    finish_training(result, out, "train-enhance")  # one line from the main process


def _progress(entry: dict[str, Any]) -> None:
    """One line per report on stderr (``step 100 loss 0.0123 …``)."""
    text = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in entry.items())
    typer.echo(f"cxrkit train-enhance: {text}", err=True)
