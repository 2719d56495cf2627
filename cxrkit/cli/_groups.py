"""Option groups shared by several commands, each defined once (DESIGN.md §2, floor 6).

- :data:`GEOMETRY`: the X-ray geometry of ``project`` and ``synth``;
- :data:`TRAINING`: the training-loop options of every ``train-*`` command (they map onto
  :class:`cxrkit.train.TrainConfig`);
- :data:`Device`: ``--device`` of every command that runs a model or a renderer;
- :data:`Kev`: the beam energy of the renderers.

Every value is checked while the options are parsed, before any input is read; a bad one is a
usage error (exit 2). Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cxrkit.cli._options import (
    STOP_AT_HELP,
    TIME_LIMIT_HELP,
    OptionGroup,
    number_parser,
    parse_duration,
    parse_pair,
    parse_triple,
)
from cxrkit.io import MAX_PIXEL_MM, MIN_PIXEL_MM

if TYPE_CHECKING:
    from cxrkit.geometry import Geometry
    from cxrkit.train import TrainConfig

KEV_RANGE = (30.0, 150.0)
"""``--kev`` limits: the tabulated range of :data:`cxrkit.drr.KEV_TABLE` (tests keep them
equal; kept here so parsing imports no numpy)."""

MIXED_PRECISION = ("no", "bf16", "fp16")  # cxrkit.train.MIXED_PRECISION, kept torch-free here
LR_SCHEDULES = ("constant", "cosine")  # cxrkit.train.LR_SCHEDULES, kept torch-free here


def device_name(text: str) -> str:
    from cxrkit.device import check_device_name
    from cxrkit.errors import DeviceError

    try:
        return check_device_name(text)
    except DeviceError as exc:
        raise typer.BadParameter(str(exc)) from None


Device = Annotated[str, typer.Option(
    "--device", parser=device_name, metavar="DEVICE",
    help="Where the model or renderer runs: auto (CUDA when present, else the CPU; under "
         "accelerate launch, each process's own GPU), cpu, cuda or cuda:N. A device that is "
         "not there is an error, never a silent fallback.")]

Kev = Annotated[float, typer.Option(
    "--kev", parser=number_parser(*KEV_RANGE),
    help=f"Effective beam energy (keV, {KEV_RANGE[0]:g}..{KEV_RANGE[1]:g}) for HU to "
         "attenuation.")]


# ---- geometry ------------------------------------------------------------------------------------

def geometry_options(
    view: Annotated[str, typer.Option(help="Standard view: PA, AP, LAT (left lateral) or RLAT.")
                    ] = "PA",
    size: Annotated[str, typer.Option(
        "--size", help="Detector pixels: N or ROWS,COLS (at most 8192 per side).")] = "1024",
    pixel_mm: Annotated[str | None, typer.Option(
        "--pixel-mm", help="Detector pixel pitch in mm: P or ROW,COL. Default: a 430 mm "
                           "(17 inch) detector divided by --size.", show_default=False)] = None,
    sid_mm: Annotated[float, typer.Option(
        "--sid-mm", parser=number_parser(0.0, above=True),
        help="Source-to-detector distance (mm).")] = 1800.0,
    sod_mm: Annotated[float | None, typer.Option(
        "--sod-mm", parser=number_parser(0.0, above=True),
        help="Source-to-isocentre distance (mm). Default: the detector 15 mm beyond the body "
             "surface.", show_default=False)] = None,
    rotation_deg: Annotated[str, typer.Option(
        "--rotation-deg", help="Extra rotation RX,RY,RZ of source and detector about the "
                               "isocentre, about the patient's LPS x, y, z axes (degrees).")
    ] = "0,0,0",
    translation_mm: Annotated[str, typer.Option(
        "--translation-mm", help="Shift X,Y,Z of source and detector, LPS mm.")] = "0,0,0",
    isocenter_mm: Annotated[str | None, typer.Option(
        "--isocenter-mm", help="Isocentre X,Y,Z in LPS mm. Default: centre of the body.",
        show_default=False)] = None,
) -> Geometry:
    """The acquisition the geometry options describe (checked: a usage error if invalid)."""
    from cxrkit.errors import GeometryError
    from cxrkit.geometry import MAX_DETECTOR_PX, VIEWS, Geometry

    if view.upper() not in VIEWS:
        raise typer.BadParameter(f"'{view}' is not one of {', '.join(VIEWS)}",
                                 param_hint="--view")
    rows, cols = parse_pair(size, "--size", int)
    if min(rows, cols) < 1:
        raise typer.BadParameter(f"'{size}': sizes must be positive", param_hint="--size")
    if max(rows, cols) > MAX_DETECTOR_PX:
        raise typer.BadParameter(f"'{size}' is over the limit of {MAX_DETECTOR_PX} pixels per "
                                 "side", param_hint="--size")
    pitch = parse_pair(pixel_mm, "--pixel-mm") if pixel_mm else None
    if pitch is not None and not all(_finite(v) and v > 0 for v in pitch):
        raise typer.BadParameter(f"'{pixel_mm}' must be positive mm", param_hint="--pixel-mm")
    if pitch is not None and not all(MIN_PIXEL_MM <= v <= MAX_PIXEL_MM for v in pitch):
        raise typer.BadParameter(f"'{pixel_mm}' is outside {MIN_PIXEL_MM:g}..{MAX_PIXEL_MM:g} mm",
                                 param_hint="--pixel-mm")
    values = {name: parse_triple(text, f"--{name.replace('_', '-')}") if text else None
              for name, text in (("rotation_deg", rotation_deg),
                                 ("translation_mm", translation_mm),
                                 ("isocenter_mm", isocenter_mm))}
    for name, triple in values.items():
        if triple is not None and not all(_finite(v) for v in triple):
            raise typer.BadParameter("must be finite numbers",
                                     param_hint=f"--{name.replace('_', '-')}")
    try:
        return Geometry(view=view.upper(), sid_mm=sid_mm, sod_mm=sod_mm, detector_px=(rows, cols),
                        pixel_mm=pitch, **values)  # type: ignore[arg-type]
    except GeometryError as exc:  # e.g. --sod-mm beyond --sid-mm
        raise typer.BadParameter(str(exc), param_hint="geometry") from None


def _finite(value: float) -> bool:
    import math

    return math.isfinite(value)


GEOMETRY = OptionGroup(geometry_options)


# ---- training ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainOptions:
    """The checked training-loop options of a ``train-*`` command (see :data:`TRAINING`)."""

    steps: int
    batch_size: int
    grad_accum: int
    lr: float
    warmup_steps: int
    lr_schedule: str
    weight_decay: float
    max_grad_norm: float
    ema_decay: float
    mixed_precision: str
    checkpoint_every: int
    keep_checkpoints: int
    validate_every: int
    seed: int
    resume: str | None
    device: str
    time_limit_s: float
    stop_at_step: int

    def config(self, output_dir: str, **changes: Any) -> TrainConfig:
        """The :class:`cxrkit.train.TrainConfig` for a model folder (``changes`` override)."""
        from cxrkit.train import TrainConfig

        return TrainConfig(output_dir=output_dir, **{**asdict(self), **changes})


def training_options(
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps.")] = 2000,
    batch_size: Annotated[int, typer.Option(
        min=1, help="Global batch per step (all processes and accumulation steps).")] = 8,
    grad_accum: Annotated[int, typer.Option(
        min=1, help="Micro-batches per step (gradient accumulation); --batch-size must split "
                    "into them (and the processes).")] = 1,
    lr: Annotated[float, typer.Option(
        parser=number_parser(0.0, above=True), help="Peak learning rate.")] = 2e-4,
    warmup_steps: Annotated[int, typer.Option(
        min=0, help="Linear learning-rate warm-up (steps).")] = 100,
    lr_schedule: Annotated[str, typer.Option(
        help="After the warm-up: constant, or cosine decay to 0 at the last step.")
    ] = "constant",
    weight_decay: Annotated[float, typer.Option(
        parser=number_parser(0.0), help="Weight decay of the optimizer.")] = 0.0,
    max_grad_norm: Annotated[float, typer.Option(
        parser=number_parser(0.0), help="Gradient clipping norm (0: off).")] = 1.0,
    ema: Annotated[float, typer.Option(
        "--ema", parser=number_parser(0.0, 0.999999), help="EMA decay of the weights that "
        "validation and the saved model use (0: off).")] = 0.999,
    mixed_precision: Annotated[str, typer.Option(help="no, bf16 or fp16 autocast.")] = "no",
    checkpoint_every: Annotated[int, typer.Option(
        min=0, help="Steps between checkpoints (0: none).")] = 500,
    keep_checkpoints: Annotated[int, typer.Option(
        min=1, help="Checkpoints kept (the newest).")] = 2,
    validate_every: Annotated[int, typer.Option(
        min=0, help="Steps between validations (0: only at the end).")] = 500,
    seed: Annotated[int, typer.Option(help="Seed of the weights and the data order.")] = 0,
    resume: Annotated[str | None, typer.Option(
        help="'latest' or a checkpoint folder to continue from.", show_default=False)] = None,
    device: Device = "auto",
    cpu: Annotated[bool, typer.Option(
        "--cpu", help="Train on the CPU even with CUDA (as --device cpu).")] = False,
    time_limit: Annotated[str | None, typer.Option(
        help=TIME_LIMIT_HELP, show_default=False)] = None,
    stop_at_step: Annotated[int, typer.Option(min=0, help=STOP_AT_HELP,
                                              show_default=False)] = 0,
) -> TrainOptions:
    """The training options, checked (a usage error if invalid)."""
    for value, choices, name in ((lr_schedule, LR_SCHEDULES, "--lr-schedule"),
                                 (mixed_precision, MIXED_PRECISION, "--mixed-precision")):
        if value not in choices:
            raise typer.BadParameter(f"'{value}' is not one of {', '.join(choices)}",
                                     param_hint=name)
    if batch_size % grad_accum:
        raise typer.BadParameter(f"--batch-size {batch_size} does not split into {grad_accum} "
                                 "micro-batches", param_hint="--grad-accum")
    if stop_at_step > steps:
        raise typer.BadParameter(f"{stop_at_step} is beyond --steps {steps}",
                                 param_hint="--stop-at-step")
    if cpu and device not in ("auto", "cpu"):
        raise typer.BadParameter(f"--cpu contradicts --device {device}", param_hint="--cpu")
    return TrainOptions(
        steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
        warmup_steps=warmup_steps, lr_schedule=lr_schedule, weight_decay=weight_decay,
        max_grad_norm=max_grad_norm, ema_decay=ema, mixed_precision=mixed_precision,
        checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
        validate_every=validate_every, seed=seed, resume=resume,
        device="cpu" if cpu else device, time_limit_s=parse_duration(time_limit),
        stop_at_step=stop_at_step)


TRAINING = OptionGroup(training_options)
