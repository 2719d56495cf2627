"""``cxrkit enhance``: restore or super-resolve radiographs with the diffusion enhancer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from cxrkit.cli._groups import Device
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
    input_name,
    iter_inputs,
    read_display,
    run_items,
)
from cxrkit.data.seeds import TORCH_SEED_BITS, item_seed
from cxrkit.errors import InputError
from cxrkit.pipe import Record

log = logging.getLogger("cxrkit.cli")

METHODS = ("diffusion", "bicubic")
SAMPLER_NAMES = ("ddim", "dpmpp", "ddpm")  # cxrkit.diffusion.SAMPLERS, kept torch-free here
MIN_TILE, MAX_TILE = 64, 8192
"""``--tile`` limits (0: no tiling): smaller tiles cost thousands of model calls per image."""


def enhance(
    inputs: Inputs = None,
    out: Out = None,
    model: Annotated[Path | None, typer.Option(
        "--model", help="Enhancer folder (from cxrkit train-enhance). Default: the model shipped "
                        "with cxrkit (×2, trained on NIH ChestX-ray14 with drr-like pairs).",
        show_default=False)] = None,
    method: Annotated[str, typer.Option(
        help="diffusion (the model) or bicubic (the honest baseline, no model).")] = "diffusion",
    scale: Annotated[int | None, typer.Option(
        help="Output size / input size, 1 or 2. Default: the model's (bicubic: 2).",
        show_default=False)] = None,
    steps: Annotated[int | None, typer.Option(
        min=1, help="Denoising steps (model evaluations). Default: the model's (shipped: 1, "
                    "the step it was fine-tuned for).",
        show_default=False)] = None,
    sampler: Annotated[str | None, typer.Option(
        help="ddim (deterministic), dpmpp (DPM-Solver++ 2M) or ddpm (ancestral). Default: the "
             "model's (ddim).", show_default=False)] = None,
    tile: Annotated[int, typer.Option(
        help=f"Tile side in output pixels ({MIN_TILE}..{MAX_TILE}); larger images are denoised "
             "in overlapping tiles of one shared noisy image (bounded memory, no seams). 0: "
             "never tile.")] = 1024,
    overlap: Annotated[int, typer.Option(
        help="Tile overlap in output pixels, less than --tile.")] = 128,
    keep_black: Annotated[bool, typer.Option(
        "--keep-black/--no-keep-black",
        help="Where the input is black (at most 0.001 over a 3x3 neighbourhood), the output is "
             "the bicubic input: blur, tone curves and resampling keep black black, and the "
             "model's faint haze there costs SSIM.")] = True,
    tone_anchor: Annotated[bool, typer.Option(
        "--tone-anchor/--no-tone-anchor",
        help="With a model that has a tone gate (the default): keep the input's tone (the "
             "output's low-frequency deviation from the bicubic input is removed) unless the gate "
             "sees a tone change to undo, such as a DRR's; a model with a route hands such inputs "
             "to its DRR-like specialist. --no-tone-anchor: the main model's raw output.")] = True,
    device: Device = "auto",
    seed: Seed = 0,
    fmt: Format = "tiff",
    overwrite: Overwrite = False,
    resume: Resume = False,
    keep_going: KeepGoing = False,
) -> None:
    """Enhance low-quality radiographs: restore (×1) or super-resolve (×2, 512² → 1024²).

    A conditional diffusion model denoises the difference between the HQ image and the bicubic
    upsampling of the input, in --steps steps of --sampler, tile by tile over one shared noisy
    image; a model with a degradation encoder first reads the whole input once and conditions
    every tile on what it infers (blur width, tone curve). The default model's tone gate sends
    DRR-like inputs (slice blur, DRR tone) to its DRR-like specialist and everything else to a
    model trained on a broad mixture of degradations that keeps the input's tone (the record's
    enhance.options.tone_gate says which). Black input regions stay black
    (--no-keep-black: the model's output everywhere). Reads display radiographs (8/16-bit
    PNG, TIFF, DICOM) or records; writes one image and one record per input. The record's
    'reference' passes through, so cxrkit eval can score the result; its 'input' names the image
    enhanced (for eval's realism section); its 'enhance' key holds the options, seed and model
    sha256.

    Example:

        cxrkit degrade cxr.png --preset drr-like --scale 2 | cxrkit enhance -o hq/ \\
            | cxrkit eval --json

    The bicubic baseline, for comparison:

        cxrkit degrade cxr.png --preset drr-like --scale 2 | cxrkit enhance --method bicubic
    """
    for value, choices, name in ((method, METHODS, "--method"),
                                 (sampler or "ddim", SAMPLER_NAMES, "--sampler")):
        if value not in choices:
            raise typer.BadParameter(f"'{value}' is not one of {', '.join(choices)}",
                                     param_hint=name)
    if scale not in (None, 1, 2):
        raise typer.BadParameter("use 1 or 2", param_hint="--scale")
    if tile and not MIN_TILE <= tile <= MAX_TILE:
        raise typer.BadParameter(f"{tile} is not 0 or {MIN_TILE}..{MAX_TILE}", param_hint="--tile")
    if overlap < 0 or (tile and overlap >= tile):
        raise typer.BadParameter(f"{overlap} must be ≥ 0 and less than --tile {tile}",
                                 param_hint="--overlap")
    options = {"method": method, "scale": scale, "steps": steps, "sampler": sampler,
               "tile": tile or None, "overlap": overlap, "keep_black": keep_black,
               "tone_anchor": tone_anchor, "device": device}
    outputs = Outputs(out, format_suffix(fmt), overwrite, tool="enhance",
                      request={**options, "model": str(model) if model else None, "seed": seed})
    job = EnhanceJob(options, outputs, model=model, seed=seed)
    code = run_items(iter_inputs(inputs), job, done=job.done if resume else None,
                     keep_going=keep_going, label="images")
    exit_with(code)


class EnhanceJob:
    """Enhances one record's image into a file and returns the new record (model loaded once)."""

    def __init__(self, options: dict[str, Any], outputs: Outputs, *, model: Path | None,
                 seed: int) -> None:
        self.options = options
        self.outputs = outputs
        self.model_dir = model
        self.seed = seed
        self._model: Any = None
        self._model_sha256: str | None = None
        self._warned = False

    def done(self, record: Record) -> Record | None:
        """The stored record of an item already enhanced (for --resume), else None."""
        return self.outputs.finished(record["id"], "enh")

    def __call__(self, record: Record) -> Record:
        from cxrkit.io import Radiograph, write_radiograph
        from cxrkit.pipe import provenance

        image = read_display(record, "enhance")
        seed = item_seed(self.seed, str(record["id"]), bits=TORCH_SEED_BITS)
        pixels, scale, resolved = self._enhance(image.pixels.clip(0, 1), seed)
        spacing = record.get("spacing_mm") or image.spacing_mm
        spacing = [float(spacing[0]) / scale, float(spacing[1]) / scale] if spacing else None
        primary = self.outputs.path(record["id"], "enh")
        new = {**record, "path": str(primary), "kind": "display", "spacing_mm": spacing,
               "input": input_name(record)}  # eval's realism compares output and input
        new["enhance"] = self.outputs.stamp({**provenance("enhance", resolved, seed=self.seed,
                                                          model=self._model_sha256),
                                             "item_seed": seed})
        write_radiograph(primary, Radiograph(pixels, tuple(spacing) if spacing else None,
                                             "display"), record=new,
                         overwrite=self.outputs.overwrite)
        return new

    def _enhance(self, lq: Any, seed: int) -> tuple[Any, int, dict[str, Any]]:
        """``(output pixels, scale, resolved options)`` for one ``(h, w)`` image."""
        opts = dict(self.options)
        if opts["method"] == "bicubic":
            from cxrkit.enhancer import bicubic_enhance

            scale = opts["scale"] or 2
            return bicubic_enhance(lq, scale), scale, {"method": "bicubic", "scale": scale}
        import torch

        from cxrkit.enhancer import BLACK_LEVEL
        from cxrkit.enhancer import enhance as run_enhancer

        model = self._load()
        settings = model.settings
        limit = int(model.scheduler_config.get("num_train_timesteps", 1000))
        if opts["steps"] is not None and opts["steps"] > limit:
            raise typer.BadParameter(f"{opts['steps']} is more than the {limit} timesteps the "
                                     "model was trained on", param_hint="--steps")
        if opts["scale"] not in (None, settings.scale):
            raise InputError(f"the model enhances ×{settings.scale}, not ×{opts['scale']}",
                             path=str(self.model_dir), hint="drop --scale or pick another model")
        opts.update(scale=settings.scale, steps=opts["steps"] or settings.default_steps,
                    sampler=opts["sampler"] or settings.default_sampler,
                    keep_black=BLACK_LEVEL if opts["keep_black"] else None,
                    model=str(self.model_dir), device=str(model.device))
        trained = settings.trained_steps
        if trained and not self._warned and (opts["steps"], opts["sampler"]) != (trained, "ddim"):
            self._warned = True
            log.warning("the model was trained for %d-step DDIM sampling; %d %s steps leave its "
                        "training path and may enhance less", trained, opts["steps"],
                        opts["sampler"])
        out = run_enhancer(model, lq, sampler=opts["sampler"], steps=opts["steps"],
                           generator=torch.Generator().manual_seed(seed), tile=opts["tile"],
                           overlap=opts["overlap"], keep_black=opts["keep_black"],
                           tone_anchor=opts["tone_anchor"])
        if opts["tone_anchor"] and model.tone_gate is not None:
            from cxrkit.enhancer.inference import tone_change

            change = tone_change(model, lq)  # what the gate decided for this input
            opts["tone_gate"] = {"tone_change": change,
                                 "route": bool(change and model.route is not None)}
        return out, settings.scale, opts

    def _load(self) -> Any:
        if self._model is None:
            from cxrkit.device import resolve_device
            from cxrkit.enhancer import Enhancer, default_model_dir, model_sha256

            self.model_dir = self.model_dir or default_model_dir()
            self._model = Enhancer.from_pretrained(
                self.model_dir, device=str(resolve_device(self.options["device"])))
            self._model_sha256 = model_sha256(self.model_dir)
        return self._model


