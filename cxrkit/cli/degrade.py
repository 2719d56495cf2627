"""``cxrkit degrade``: make realistic low-quality radiographs from good ones, recording every
drawn parameter, so that (HQ, LQ) training pairs can be built at scale."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cxrkit.cli._groups import device_name
from cxrkit.cli._options import (
    Format,
    Inputs,
    KeepGoing,
    Out,
    Outputs,
    Overwrite,
    Resume,
    Seed,
    exit_with,
    format_suffix,
    iter_inputs,
    keep_input,
    read_display,
    run_items,
)
from cxrkit.data.seeds import item_seed
from cxrkit.errors import InputError
from cxrkit.pipe import Record

if TYPE_CHECKING:
    from cxrkit.degrade import Degrader
    from cxrkit.io import Radiograph

CUSTOM = "custom"
"""``--preset`` value for an explicit chain of the operators named by ``--set``."""


def degrade(
    inputs: Inputs = None,
    out: Out = None,
    preset: Annotated[str, typer.Option(
        "--preset", "-p", help="Named degradation (see --list): bicubic, drr-like, low-dose, "
                               "portable, realistic (random high order), or custom (the "
                               "operators named by --set, in that order).")] = "realistic",
    scale: Annotated[int, typer.Option(
        "--scale", min=1, help="Integer size reduction: 2 makes 512² from 1024².")] = 1,
    method: Annotated[str, typer.Option(
        "--method", help="How to degrade (see --list): physics = the hand-made X-ray operators."
    )] = "physics",
    model: Annotated[Path | None, typer.Option(
        "--model", help="Model folder of a learned method (physics takes none).",
        show_default=False)] = None,
    style_reference: Annotated[Path | None, typer.Option(
        "--style-reference", help="munit: take the style code from this DRR instead of "
                                  "drawing one per image from N(0, I).",
        show_default=False)] = None,
    strength: Annotated[float | None, typer.Option(
        "--strength", min=0.0, max=1.0,
        help="ddpm: how far the HQ image is noised before denoising, as a share of the "
             "schedule (default: the model's, 0.25 for img2img).", show_default=False)] = None,
    settings: Annotated[list[str] | None, typer.Option(
        "--set", help="Fix a parameter instead of drawing it: OPERATOR.PARAM=VALUE (JSON value; "
                      "repeatable), e.g. quantum-noise.dose=0.1. See --list.",
        show_default=False)] = None,
    pixel_mm: Annotated[float | None, typer.Option(
        "--pixel-mm", min=0.001,
        help="Pixel pitch (mm) to assume when neither the record's spacing_mm nor the file "
             "gives one. Default: 0.35 (NIH ChestX-ray14 at 1024²), not written to the output "
             "record.", show_default=False)] = None,
    list_: Annotated[bool, typer.Option(
        "--list", help="Print the methods, presets and operators with their parameter ranges, "
                       "and exit.")] = False,
    device: Annotated[str, typer.Option(
        "--device", parser=device_name, metavar="DEVICE",
        help="Learned methods: where the model runs: auto (CUDA when present, else the CPU; "
             "under accelerate launch, each process's own GPU), cpu, cuda or cuda:N (physics "
             "runs on the CPU).")] = "auto",
    seed: Seed = 0,
    fmt: Format = "tiff",
    overwrite: Overwrite = False,
    resume: Resume = False,
    keep_going: KeepGoing = False,
) -> None:
    """Degrade radiographs into realistic low-quality copies, recording every drawn parameter.

    Reads display radiographs (PNG, TIFF, DICOM, MHA; paths, folders, records or one raw image
    on stdin), runs the --preset at the input resolution (quantum and electronic noise at a
    relative dose, detector MTF blur, slice blur, scatter, contrast, gamma, JPEG, ...), then
    reduces the size by --scale. Writes <id>_lq.tiff and one record per image: path = the
    low-quality image, reference = the image it was made from (the input's path, so (path,
    reference) is a training pair; for a raw image on stdin, a copy kept as
    <id>_lq.input.<suffix> beside the output), spacing_mm scaled by the size change, and a
    degrade key with the method, preset, scale, seed, per-item seed and every drawn parameter.
    Other keys pass through unchanged (companions such as mask or boxes stay aligned with
    reference).

    Each item draws from its own generator seeded by sha256(seed, item id): the same --seed
    gives the same bytes, whatever the batch order or sharding. The physics uses the pixel pitch
    of the record's spacing_mm (mean of row and column), else of the file, else --pixel-mm.

    Example:

        cxrkit degrade hq/ --preset drr-like --scale 2 -o lq/ | cxrkit eval --upsample bicubic

    Fix some parameters, or chain operators yourself (see --list):

        cxrkit degrade hq/ --preset low-dose --set quantum-noise.dose=0.05 -o lq/

        cxrkit degrade x.png --preset custom --set gamma.gamma=1.3 --set jpeg.quality=40
    """
    if list_:
        typer.echo(_listing())
        return
    overrides = _parse_settings(settings or [])
    learned = {"style_reference": style_reference, "strength": strength}
    degrader = _build_degrader(method, preset, overrides, model, learned, device)
    options = {"method": method, "preset": preset if method == "physics" else None,
               "scale": scale, "overrides": overrides, "model": str(model) if model else None,
               **{k: str(v) if isinstance(v, Path) else v for k, v in learned.items()
                  if v is not None}}
    outputs = Outputs(out, format_suffix(fmt), overwrite, tool="degrade",
                      request={**options, "pixel_mm": pixel_mm, "seed": seed})
    job = DegradeJob(degrader, options, outputs, seed=seed, pixel_mm=pixel_mm)
    code = run_items(iter_inputs(inputs), job, done=job.done if resume else None,
                     keep_going=keep_going, label="images")
    exit_with(code)


class DegradeJob:
    """Degrades one record's image into a file and returns the new record."""

    def __init__(self, degrader: Degrader, options: dict[str, Any], outputs: Outputs, *,
                 seed: int, pixel_mm: float | None) -> None:
        self.degrader = degrader
        self.options = options
        self.outputs = outputs
        self.seed = seed
        self.pixel_mm = pixel_mm

    def done(self, record: Record) -> Record | None:
        """The stored record of an item already degraded (for --resume), else None."""
        return self.outputs.finished(record["id"], "lq")

    def __call__(self, record: Record) -> Record:
        import numpy as np

        from cxrkit.io import Radiograph, write_radiograph
        from cxrkit.pipe import provenance

        image = read_display(record, "degrade")
        pixel_mm, pitch_from, spacing = self._pitch(record, image)
        seed = item_seed(self.seed, str(record["id"]))
        result = self.degrader(image.pixels, scale=self.options["scale"], pixel_mm=pixel_mm,
                               generator=np.random.default_rng(seed))
        ratio = (image.pixels.shape[0] / result.image.shape[0],
                 image.pixels.shape[1] / result.image.shape[1])
        out_spacing = [spacing[0] * ratio[0], spacing[1] * ratio[1]] if spacing else None
        primary = self.outputs.path(record["id"], "lq")
        new = {**record, "path": str(primary), "kind": "display", "spacing_mm": out_spacing,
               "reference": keep_input(self.outputs, record, primary)}
        entry = provenance("degrade", {**self.options, "pixel_mm": pixel_mm,
                                       "pixel_mm_from": pitch_from}, seed=self.seed)
        new["degrade"] = self.outputs.stamp({**entry, "item_seed": seed, "steps": result.params})
        write_radiograph(primary, Radiograph(result.image, _pair(out_spacing), "display"),
                         record=new, overwrite=self.outputs.overwrite)
        return new

    def _pitch(self, record: Record, image: Radiograph
               ) -> tuple[float, str, tuple[float, float] | None]:
        """Pixel pitch for the physics, where it came from, and the known ``(row, col)`` spacing.

        Square pixels are assumed by the operators: the pitch is the mean of row and column.
        """
        from cxrkit.degrade import DEFAULT_PIXEL_MM
        from cxrkit.io import check_spacing

        for source, spacing in (("record", record.get("spacing_mm")),
                                ("file", image.spacing_mm)):
            if spacing:
                row, col = check_spacing(spacing, path=str(record.get("path")),
                                         what=f"the {source}'s spacing_mm")
                if row > 0 and col > 0:
                    return (row + col) / 2.0, source, (row, col)
        if self.pixel_mm is not None:
            return self.pixel_mm, "option", (self.pixel_mm, self.pixel_mm)
        return DEFAULT_PIXEL_MM, "default", None


def _pair(spacing: list[float] | None) -> tuple[float, float] | None:
    return (spacing[0], spacing[1]) if spacing else None


def _parse_settings(settings: list[str]) -> dict[str, dict[str, Any]]:
    """``["quantum-noise.dose=0.1", …]`` → ``{"quantum-noise": {"dose": 0.1}}``, names checked.

    Values are JSON (numbers, lists); anything else is taken as a string (``resize.kernel=area``).
    """
    import numpy as np

    from cxrkit.degrade import DEGRADATIONS

    overrides: dict[str, dict[str, Any]] = {}
    for text in settings:
        key, sep, raw = text.partition("=")
        operator, dot, param = key.strip().partition(".")
        if not (sep and dot and operator and param):
            raise typer.BadParameter(f"'{text}' is not OPERATOR.PARAM=VALUE", param_hint="--set")
        if operator not in DEGRADATIONS:
            raise typer.BadParameter(f"unknown operator '{operator}'; use one of "
                                     f"{', '.join(DEGRADATIONS)}", param_hint="--set")
        allowed = _parameters(DEGRADATIONS[operator](), np.random.default_rng(0))
        if param not in allowed:
            raise typer.BadParameter(f"{operator} has no parameter '{param}'; its parameters "
                                     f"are {', '.join(allowed)}", param_hint="--set")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw.strip()
        overrides.setdefault(operator, {})[param] = value
    for operator, values in overrides.items():
        _try_override(operator, values)
    return overrides


def _try_override(operator: str, values: dict[str, Any]) -> None:
    """Apply an operator with the ``--set`` values to a tiny image, so a value it refuses (NaN,
    out of range, a 1e9 mm blur) is a usage error before any input is read."""
    import numpy as np

    from cxrkit.degrade import DEGRADATIONS

    if operator == "resize":  # its values are checked when applied; a test image would be big
        return
    instance: Any = DEGRADATIONS[operator]()
    rng = np.random.default_rng(0)
    try:
        instance.apply(np.full((8, 8), 0.5, np.float32),
                       {**instance.sample_params(rng), **values}, rng)
    except (InputError, TypeError, ValueError) as exc:
        raise typer.BadParameter(f"{operator}: {exc}", param_hint="--set") from None


def _parameters(operator: Any, generator: Any) -> list[str]:
    """Names of the parameters an operator's ``apply`` reads (``resize`` also takes a size)."""
    names = list(operator.sample_params(generator))
    return [*names, "size"] if operator.name == "resize" else names


def _build_degrader(method: str, preset: str, overrides: dict[str, dict[str, Any]],
                    model: Path | None, learned: dict[str, Any], device: str = "auto"
                    ) -> Degrader:
    """The degrader of ``--method`` from the registry, with usage errors for bad options."""
    from cxrkit.degrade import METHODS, PRESETS

    if method not in METHODS:
        raise typer.BadParameter(f"'{method}' is not one of {', '.join(METHODS)}",
                                 param_hint="--method")
    if method != "physics":  # learned methods: built from their model folder
        if model is None:
            raise typer.BadParameter(f"--method {method} needs --model DIR", param_hint="--model")
        kwargs = dict(learned)
        if kwargs.get("style_reference") is not None:
            from cxrkit.io import read_radiograph

            kwargs["style_reference"] = read_radiograph(kwargs["style_reference"]).pixels
        from cxrkit.device import resolve_device

        return METHODS[method](model_dir=model, device=str(resolve_device(device)), **kwargs)
    if any(v is not None for v in learned.values()):
        raise typer.BadParameter("--style-reference and --strength are for learned methods",
                                 param_hint="--method")
    if model is not None:
        raise typer.BadParameter("the physics method takes no model; --model is for learned "
                                 "methods", param_hint="--model")
    if preset != CUSTOM and preset not in PRESETS:
        raise typer.BadParameter(f"'{preset}' is not one of {', '.join([*PRESETS, CUSTOM])}",
                                 param_hint="--preset")
    if preset == CUSTOM and not overrides:
        raise typer.BadParameter("--preset custom chains the operators named by --set; give "
                                 "at least one", param_hint="--set")
    try:
        return METHODS[method](preset=None if preset == CUSTOM else preset, overrides=overrides)
    except InputError as exc:
        raise typer.BadParameter(str(exc), param_hint="--set") from exc


def _listing() -> str:
    """The text of ``--list``: methods, presets with their steps, operators with their ranges."""
    import dataclasses

    import numpy as np

    from cxrkit.degrade import DEGRADATIONS, METHODS, PRESETS
    from cxrkit.degrade.presets import Chain

    def first_line(obj: Any) -> str:
        return (obj.__doc__ or "").strip().split("\n")[0]

    def described(operator: Any) -> str:
        ranges = [f"{f.name}={_range(getattr(operator, f.name))}"
                  for f in dataclasses.fields(operator) if f.name != "pixel_mm"]
        return f"{operator.name}({', '.join(ranges)})"

    lines = ["Methods (--method):"]
    lines += [f"  {name:<14} {first_line(factory)}" for name, factory in METHODS.items()]
    lines += ["", "Presets (--preset; each ends with the resize by --scale):"]
    for name, preset in PRESETS.items():
        lines.append(f"  {name:<14} {preset.description}")
        if isinstance(preset, Chain):
            steps = [described(op) for op in (*preset.operators, *preset.after_resize)]
            lines.append(f"  {'':<14} steps: {', '.join([*steps, preset.kernel + ' resize'])}")
        else:
            lines.append(f"  {'':<14} draws from: {', '.join(sorted(preset.names()))}")
    lines.append(f"  {CUSTOM:<14} the operators named by --set, in that order; parameters not "
                 "set are drawn from the operator's default ranges")
    lines += ["", "Operators (--set OPERATOR.PARAM=VALUE; default ranges; pixel_mm comes from "
                  "the image):"]
    for name, factory in DEGRADATIONS.items():
        operator: Any = factory()  # every operator is a frozen dataclass
        fields = {f.name: getattr(operator, f.name) for f in dataclasses.fields(operator)}
        params = [f"{p}={_range(fields[p])}" if p in fields and p != "pixel_mm" else p
                  for p in _parameters(operator, np.random.default_rng(0))]
        lines += [f"  {name:<14} {first_line(factory)}", f"  {'':<14} {', '.join(params)}"]
    return "\n".join(lines)


def _range(value: Any) -> str:
    """``(1.0, 2.5)`` → ``1..2.5``; ``(2, 2)`` → ``2``; other values as text."""
    if isinstance(value, tuple) and len(value) == 2 and all(
            isinstance(v, int | float) for v in value):
        low, high = value
        return f"{low:g}" if low == high else f"{low:g}..{high:g}"
    if isinstance(value, tuple):
        return "|".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)
