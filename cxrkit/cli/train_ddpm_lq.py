"""``cxrkit train-ddpm-lq``: train DDPM-LQ, a diffusion model of the LQ (DRR) domain."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cxrkit.cli._groups import TRAINING, TrainOptions
from cxrkit.cli._options import channel_list, command_line, finish_training, training_progress
from cxrkit.cli.train_munit import domain_paths

ROUTES = ("img2img", "two-stage")
TRAIN_TIMESTEPS = 1000
"""The noise schedule's length (``num_train_timesteps`` of every DDPM-LQ model)."""


@TRAINING.use("training", helps={
    "steps": "Optimizer steps (stage 1 for two-stage).",
    "lr": "Peak learning rate (AdamW).",
    "stop_at_step": "Stop cleanly after this step of the --steps schedule (two-stage: of each "
                    "stage's own schedule), as at --time-limit (exit 3; --resume latest without "
                    "it finishes the same run). Default: run every step."})
def train_ddpm_lq(
    lq: Annotated[list[str], typer.Option(
        "--lq", help="Real LQ images (DRRs): files, folders, globs or .jsonl records "
                     "(repeatable).", show_default=False)],
    route: Annotated[str, typer.Option(
        help="img2img: unconditional DDPM on LQ (arXiv 2303.06994); two-stage: stage 1 "
             "unconditional on LQ, stage 2 fine-tuned conditioned on HQ (DiffusionXRay).")
    ] = "img2img",
    hq: Annotated[list[str] | None, typer.Option(
        "--hq", help="HQ radiographs (repeatable): two-stage trains stage 2 on them; img2img "
                     "only degrades held-out ones to validate.", show_default=False)] = None,
    pairs: Annotated[Path | None, typer.Option(
        "--pairs", help="two-stage: records with an LQ 'path' and its HQ 'reference' (e.g. "
                        "from cxrkit degrade --method munit) instead of --hq with --preset.",
        show_default=False)] = None,
    preset: Annotated[str, typer.Option(
        help="two-stage: physics preset that makes stage 2's paired LQ from --hq.")
    ] = "drr-like",
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")] = Path(
        "ddpm-lq"),
    image_size: Annotated[int, typer.Option(
        min=8, max=8192, help="Images are resized so the short side is this (px); sampling "
                              "runs at it.")] = 256,
    crop: Annotated[int, typer.Option(min=8, max=8192, help="Random training crop side (px).")
                    ] = 128,
    channels: Annotated[str, typer.Option(help="UNet widths per level.")] = "32,64,128",
    prediction: Annotated[str | None, typer.Option(
        help="epsilon or v_prediction (default: epsilon for img2img, v_prediction for "
             "two-stage).", show_default=False)] = None,
    max_timestep: Annotated[int | None, typer.Option(
        min=1, max=TRAIN_TIMESTEPS,
        help="Train on t below this (1..1000; default: 500 for img2img, 1000 for two-stage).",
        show_default=False)] = None,
    stage2_steps: Annotated[int, typer.Option(min=1, help="two-stage: stage 2 steps.")] = 1000,
    val_fraction: Annotated[float, typer.Option(
        help="Share of HQ patients and of LQ files held out for validation.")] = 0.1,
    training: TrainOptions = None,  # type: ignore[assignment]  # the TRAINING options
) -> None:
    """Train DDPM-LQ on real DRRs; writes a model folder for cxrkit degrade --method ddpm.

    img2img (arXiv 2303.06994): an unconditional DDPM learns the DRR look on the low-noise part
    of the schedule; degrade noises an HQ radiograph to --strength (0.25) and denoises it.
    two-stage (DiffusionXRay): stage 1 trains [x_t, 0] on DRRs into OUT/stage1, stage 2
    fine-tunes [x_t, HQ] on pairs (HQ with --preset, or --pairs records) with 10% zero-condition
    DRRs; it samples from pure noise, and predicts v by default because with ε stage 2 ignored
    its HQ condition at small budgets (at t near T, ε says almost nothing about the image).
    The folder holds config.json (kind ddpm-lq), unet/ and scheduler/ (diffusers,
    safetensors) and run.json (command, settings, data hashes, validation).

    Validation holds out --val-fraction of the HQ patients (file-name prefix before '_') and of
    the LQ files, and reports the diffusion loss on held-out data (loss; stage 2 also loss_lq,
    the zero-condition loss on held-out DRRs) and, given HQ, what degrade would make of held-out
    HQ crops: ssim_to_hq (pairedness; ssim_to_other_hq is chance level) and hf_ratio, their
    high-frequency energy over the held-out DRRs' (1: the DRR texture; hf_ratio_hq: the HQ
    input's).

    Example:

        cxrkit train-ddpm-lq --lq drrs/ --steps 2000 -o ddpm-lq/
        cxrkit degrade nih/images/ --method ddpm --model ddpm-lq/ --strength 0.2 -o lq/

        cxrkit train-ddpm-lq --lq drrs/ --route two-stage --hq nih/images/ -o ddpm-lq-2/
    """
    from cxrkit.ddpm_lq import DdpmLQSettings, HeldOut
    from cxrkit.ddpm_lq import train_ddpm_lq as train

    if route not in ROUTES:
        raise typer.BadParameter(f"use one of {', '.join(ROUTES)}", param_hint="--route")
    widths = channel_list(channels, "--channels")
    stage_two = _stage_two(route, hq, pairs, preset, stage2_steps)
    settings = DdpmLQSettings(
        route=route, block_out_channels=widths,
        prediction_type=prediction or ("epsilon" if route == "img2img" else "v_prediction"),
        image_size=image_size,
        max_train_timestep=max_timestep or (500 if route == "img2img" else 1000),
        default_strength=0.25 if route == "img2img" else 1.0)
    config = training.config(str(out))
    result = train(domain_paths(lq, "--lq"), settings, config, crop=crop, stage_two=stage_two,
                   hq_paths=domain_paths(hq, "--hq") if hq and stage_two is None else None,
                   held_out=HeldOut(fraction=val_fraction),
                   command=command_line(),
                   on_log=training_progress("train-ddpm-lq"))
    finish_training(result, out, "train-ddpm-lq")


def _stage_two(route: str, hq: list[str] | None, pairs: Path | None, preset: str,
               steps: int) -> Any:
    """Stage 2's data for the two-stage route (None for img2img), with usage errors."""
    from cxrkit.ddpm_lq import StageTwo
    from cxrkit.pipe import parse_line

    if route == "img2img":
        if pairs:
            raise typer.BadParameter("--pairs is for --route two-stage", param_hint="--pairs")
        return None
    if pairs is not None:
        with open(pairs) as fh:
            records = [r for r in (parse_line(line, where=str(pairs)) for line in fh) if r]
        if not records or any("reference" not in r for r in records):
            raise typer.BadParameter("every record needs a 'reference' (its HQ image)",
                                     param_hint="--pairs")
        return StageTwo([r["reference"] for r in records], [r["path"] for r in records], steps)
    if not hq:
        raise typer.BadParameter("--route two-stage needs --hq (or --pairs)", param_hint="--hq")
    return StageTwo(domain_paths(hq, "--hq"), None, steps, preset)

