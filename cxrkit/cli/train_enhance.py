"""``cxrkit train-enhance``: train a diffusion enhancer on HQ radiographs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrkit.cli._groups import TRAINING, TrainOptions
from cxrkit.cli._options import (
    Inputs,
    channel_list,
    command_line,
    finish_training,
    iter_inputs,
    training_progress,
)
from cxrkit.io import RADIOGRAPH_PATTERNS


@TRAINING.use("training", defaults={"steps": 4000, "lr": 5e-4},
              helps={"lr": "Peak learning rate (AdamW)."})
def train_enhance(
    inputs: Inputs = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")] = Path(
        "enhancer"),
    preset: Annotated[str, typer.Option(help="Degradation preset that makes the LQ of each "
                                             "pair (see cxrkit degrade --list).")] = "drr-like",
    reference_tone: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Probability of a random tone change (gamma, contrast) on both "
             "sides of a pair, so the model keeps an input's tone (with --preset broad).")] = 0.0,
    pairs: Annotated[bool, typer.Option(
        "--pairs", help="Inputs are records with an LQ 'path' and its HQ 'reference' "
                        "(e.g. from cxrkit degrade) instead of HQ images.")] = False,
    scale: Annotated[int, typer.Option(help="HQ size / LQ size: 1 restores, 2 super-resolves.")
                     ] = 2,
    crop: Annotated[int, typer.Option(min=8, max=8192, help="HQ training crop side (pixels).")
                    ] = 192,
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
    val_fraction: Annotated[float, typer.Option(help="Share of patients held out.")] = 0.2,
    val_crop: Annotated[int, typer.Option(help="Validation crop side (0: whole image).")] = 512,
    val_count: Annotated[int, typer.Option(help="Validation images used (0: all).")] = 12,
    training: TrainOptions = None,  # type: ignore[assignment]  # the TRAINING options
    split_seed: Annotated[int, typer.Option(
        help="Seed of the patient split and the validation pairs (keep it when fine-tuning "
             "with --init, so the held-out patients stay held out).")] = 0,
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

    Fine-tune for robustness: the broad degradation mixture, tone kept on both sides:

        cxrkit train-enhance nih/images/ --init my-enhancer/ --preset broad \\
            --reference-tone 0.3 -o robust/

    Fine-tune an existing model with the SSIM term, validating on whole images:

        cxrkit train-enhance nih/images/ --init my-enhancer/ --ssim-weight 10 --val-crop 0 -o ft/

    Several processes (GPUs; on a machine without CUDA, --multi_gpu starts CPU processes over
    gloo, while --cpu --num_processes 2 would start only one):

        accelerate launch --multi_gpu --num_processes 2 -m cxrkit train-enhance nih/images/ -o m/
    """
    from cxrkit.enhancer import EnhancerSettings, PairSettings, train_enhancer

    widths = channel_list(channels, "--channels")
    context = channel_list(context_channels, "--context-channels") if context_channels else ()
    records = list(iter_inputs(inputs, patterns=RADIOGRAPH_PATTERNS))
    if not records:
        raise typer.BadParameter("no input images (under accelerate launch, give paths: stdin "
                                 "reaches one process only)", param_hint="INPUTS")
    if pairs and any("reference" not in r for r in records):
        raise typer.BadParameter("with --pairs every record needs a 'reference' (its HQ image)")
    hq = [r["reference"] if pairs else r["path"] for r in records]
    settings = EnhancerSettings(scale=scale, block_out_channels=widths, prediction_type=prediction)
    config = training.config(str(out))
    pair_settings = PairSettings(preset=preset, crop=crop, val_fraction=val_fraction,
                                 val_crop=val_crop, val_count=val_count, split_seed=split_seed,
                                 reference_tone=reference_tone)
    result = train_enhancer(
        hq, settings, config, pairs=pair_settings, ssim_weight=ssim_weight, init=init,
        sampler_steps=sampler_steps, zero_start=zero_start, add_context=context,
        lq_paths=[r["path"] for r in records] if pairs else None,
        command=command_line(), on_log=training_progress("train-enhance"))
    finish_training(result, out, "train-enhance")  # one line from the main process

