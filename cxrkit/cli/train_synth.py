"""``cxrkit train-synth``: train the synthesis DiT that ``cxrkit synth -e diffusion`` uses."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cxrkit.cli._groups import TRAINING, TrainOptions
from cxrkit.cli._options import command_line, finish_training, read_record_files, training_progress
from cxrkit.cli.train_munit import domain_paths

STAGES = ("pretrain", "finetune")
ARCHITECTURE = ("patch_px", "pixel_mm", "patch_size", "width", "depth", "heads", "prediction")


@TRAINING.use("training", helps={
    "lr": "Peak learning rate (AdamW).",
    "steps": "Optimizer steps of this stage."})
def train_synth(
    stage: Annotated[str, typer.Option(
        "--stage", help="pretrain: radiograph crops with random nodule-like masks (--images); "
                        "finetune: the nodules of cxrkit synth records (--records), usually "
                        "from a pretrained model (--init).")] = "pretrain",
    images: Annotated[list[str] | None, typer.Option(
        "--images", help="pretrain: display radiographs (files, folders, globs or .jsonl "
                         "records; repeatable).", show_default=False)] = None,
    records: Annotated[list[Path] | None, typer.Option(
        "--records", help="finetune: JSONL records written by cxrkit synth (-e blend or -e ct; "
                          "repeatable).", show_default=False)] = None,
    init: Annotated[Path | None, typer.Option(
        "--init", help="Start from this model folder (finetune: the pretrained model); its "
                       "architecture is kept.", show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")] = Path(
        "synth-dit"),
    patch_px: Annotated[int | None, typer.Option(
        min=8, max=512, help="Training patch side (px, a multiple of --patch-size). Default 64.",
        show_default=False)] = None,
    pixel_mm: Annotated[float | None, typer.Option(
        min=0.05, max=10.0, help="The model's pixel pitch (mm); radiographs are resampled to "
                                 "it. Default 0.75 (64 px = 48 mm: 30 mm nodules fit with "
                                 "context).", show_default=False)] = None,
    patch_size: Annotated[int | None, typer.Option(
        min=1, max=32, help="Token side (px). Default 4.", show_default=False)] = None,
    width: Annotated[int | None, typer.Option(
        min=8, max=4096, help="Transformer width. Default 192.", show_default=False)] = None,
    depth: Annotated[int | None, typer.Option(
        min=1, max=64, help="Transformer blocks. Default 6.", show_default=False)] = None,
    heads: Annotated[int | None, typer.Option(
        min=1, max=64, help="Attention heads. Default 3.", show_default=False)] = None,
    prediction: Annotated[str | None, typer.Option(
        "--prediction", help="What the network predicts: x0 (the clean patch) or v (x0 comes "
                             "from v and the noisy input, a skip connection that keeps the "
                             "radiograph's grain at low noise). The model returns x0 either "
                             "way. Default x0.", show_default=False)] = None,
    loss_weighting: Annotated[str, typer.Option(
        "--loss-weighting", help="Weighting of the x0 loss over timesteps: x0 (all alike) or v "
                                 "(1/(1-alpha_bar), capped: the x0 error seen as a v error, "
                                 "weighing the low noise levels most; it trained worse one-step "
                                 "estimates, also with --prediction v).")] = "x0",
    val_fraction: Annotated[float, typer.Option(
        help="Share of patients held out for validation (pretrain: of the radiographs; "
             "finetune: of the background radiographs).")] = 0.1,
    val_samples: Annotated[int, typer.Option(
        min=1, help="Fixed held-out patches measured at each validation.")] = 16,
    training: TrainOptions = None,  # type: ignore[assignment]  # the TRAINING options
) -> None:
    """Train the synthesis DiT; writes a model folder for cxrkit synth -e diffusion --model.

    A small pixel-space Diffusion Transformer (adaLN-Zero, one shared timestep embedder,
    x0 prediction) learns to paint inside a mask from the patch's context: its input is the
    noisy patch, the patch with the mask area blanked, and the mask (binary, or soft: a
    nodule's projected thickness over its maximum). The loss is the x0 error, weighted 1 on
    the mask grown by 2 px and 0.1 elsewhere, and over timesteps by --loss-weighting.
    --prediction v makes the network predict v and return x0 through a skip from the noisy
    input, so the radiograph's grain survives at low noise (an x0-predicting model repaints
    even a clean input in smooth token-sized blocks).

    Two stages, as in the source: --stage pretrain on random crops of real radiographs with
    random nodule-like masks (lobulated ellipses of 3-30 mm, half soft, half binary), so the
    model learns to fill any region of the chest; --stage finetune (--init the pretrained
    folder) on the nodules that cxrkit synth -e blend (or -e ct) put into real radiographs,
    a window around each with its exact thickness map; their characteristics are kept in the
    data for the characteristic adapters.

    The folder holds config.json (kind synth-dit, diffusers layout), the weights
    (diffusion_pytorch_model.safetensors) and run.json: command, settings, data hashes and the
    validation on held-out patients' patches: loss, mse_1step (masked MSE of the one-step
    estimate), mse_sampled (of a default-sampler sample) against mse_mean_fill and
    mse_blur_fill (the mask filled with its surroundings' mean, or a smooth interpolation).

    Example:

        cxrkit train-synth --images nih/images/ --steps 20000 -o synth-dit-s1/
        cxrkit synth -e blend nih/images/ --source luna16 -n 4 -o blend/ > blend.jsonl
        cxrkit train-synth --stage finetune --records blend.jsonl --init synth-dit-s1/ \\
            --steps 5000 -o synth-dit/
        cxrkit synth -e diffusion cxr.png --model synth-dit/ -n 4 -o out/
    """
    from cxrkit.synthdit import HeldOut, SynthDiTSettings
    from cxrkit.synthdit import train_synth as train

    if stage not in STAGES:
        raise typer.BadParameter(f"use one of {', '.join(STAGES)}", param_hint="--stage")
    given = {k: v for k, v in zip(ARCHITECTURE, (patch_px, pixel_mm, patch_size, width, depth,
                                                 heads, prediction), strict=True)
             if v is not None}
    if init is not None and given:
        raise typer.BadParameter(f"--init keeps its model's architecture; drop "
                                 f"{', '.join('--' + k.replace('_', '-') for k in given)}",
                                 param_hint="--init")
    from cxrkit.synthdit.training import LOSS_WEIGHTINGS

    if loss_weighting not in LOSS_WEIGHTINGS:
        raise typer.BadParameter(f"use one of {', '.join(LOSS_WEIGHTINGS)}",
                                 param_hint="--loss-weighting")
    if not 0 <= val_fraction < 1:
        raise typer.BadParameter("must be in [0, 1)", param_hint="--val-fraction")
    paths: list[str] = []
    recs: list[dict[str, Any]] = []
    if stage == "pretrain":
        if records:
            raise typer.BadParameter("--records is for --stage finetune", param_hint="--records")
        if not images:
            raise typer.BadParameter("--stage pretrain needs --images", param_hint="--images")
        paths = domain_paths(images, "--images")
    else:
        if images:
            raise typer.BadParameter("--images is for --stage pretrain", param_hint="--images")
        if not records:
            raise typer.BadParameter("--stage finetune needs --records (cxrkit synth output)",
                                     param_hint="--records")
        recs = read_record_files(records)
    settings = _settings(SynthDiTSettings, given)
    result = train(stage, settings, training.config(str(out)), images=paths, records=recs,
                   init=init, loss_weighting=loss_weighting,
                   held_out=HeldOut(fraction=val_fraction, samples=val_samples),
                   command=command_line(),
                   on_log=training_progress("train-synth"))
    finish_training(result, out, "train-synth")


def _settings(cls: Any, given: dict[str, Any]) -> Any:
    """The settings with the architecture options given (a usage error if they do not fit)."""
    from cxrkit.errors import InputError

    names = {"width": "hidden_size", "heads": "num_heads"}
    try:
        return cls(**{names.get(k, k): v for k, v in given.items()})
    except InputError as exc:
        raise typer.BadParameter(str(exc), param_hint="architecture") from None


