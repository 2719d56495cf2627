"""``cxrkit synth``: put nodules with chosen characteristics into radiographs, with exact labels."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cxrkit.cli._groups import GEOMETRY, Device, Kev
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
    parse_pair,
    parse_triple,
    run_items,
)
from cxrkit.io import RADIOGRAPH_PATTERNS, VOLUME_PATTERNS
from cxrkit.io import is_dicom_dir as _is_dicom_dir
from cxrkit.pipe import Record
from cxrkit.synth import ENGINES, SUBTLETY_CONTRAST, EngineInfo

if TYPE_CHECKING:
    from cxrkit.geometry import Geometry
    from cxrkit.synth import SynthConfig
    from cxrkit.synth.sampling import NoduleSource, Sample

log = logging.getLogger("cxrkit.cli")

LUNA16_ENV = "CXRKIT_LUNA16_DIR"
"""Environment variable naming the LUNA16 patch folder when --luna16-dir is not given."""

CT_PATTERNS = VOLUME_PATTERNS
MAX_DIAMETER_MM = 100.0
"""Largest parametric nodule (and spicule length) ``synth`` makes: beyond lung masses, a size
only a typo asks for (and one whose voxel grid would not fit in memory)."""
SAMPLER_NAMES = ("ddim", "dpmpp", "ddpm")
"""cxrkit.diffusion.SAMPLERS' names, kept torch-free here (a test keeps them equal)."""
OWNED = ("path", "kind", "spacing_mm", "mask", "thickness", "labels", "boxes", "nodule", "synth")


@GEOMETRY.use("geometry", helps={
    "view": "ct: standard view: PA, AP, LAT or RLAT.",
    "size": "ct: detector pixels: N or ROWS,COLS (at most 8192 per side).",
    "pixel_mm": "ct: detector pitch in mm (default 430 mm / --size); blend: pixel size of "
                "images that do not state it (default 430 mm / width).",
    "sod_mm": "ct: source-to-isocentre distance (mm). Default: the detector 15 mm beyond the "
              "body.",
    "rotation_deg": "ct: extra rotation RX,RY,RZ about the isocentre (degrees).",
    "translation_mm": "ct: shift X,Y,Z of source and detector, LPS mm.",
    "isocenter_mm": "ct: isocentre X,Y,Z in LPS mm. Default: centre of the body."})
def synth(
    inputs: Inputs = None,
    out: Out = None,
    engine: Annotated[str, typer.Option(
        "--engine", "-e", help="; ".join(f"{e.name}: {e.description}"
                                         for e in ENGINES.values()) + ".")] = "ct",
    count: Annotated[int, typer.Option("--count", "-n", min=0, help="Samples per input.")] = 1,
    negatives: Annotated[bool, typer.Option(
        "--negatives", help="Also emit each input without a nodule (boxes: [], written the same "
                            "way), so eval sees the negative images.")] = False,
    source: Annotated[str, typer.Option(
        "--source", help="Nodules: parametric (generated) or luna16 (real CT patches).")
    ] = "parametric",
    luna16_dir: Annotated[Path | None, typer.Option(
        "--luna16-dir", envvar=LUNA16_ENV,
        help="Folder with nodules.csv and patches/ (NODE21/LUNA16 patches), needed by "
             f"--source luna16; nothing is downloaded. Default: ${LUNA16_ENV}.",
        show_default=False)] = None,
    where: Annotated[str | None, typer.Option(
        "--where", help="Select LUNA16 patches by their columns, e.g. 'calcified==1 and "
                        "diameter_mm>=8' or \"texture=='ground-glass'\" (comparisons, "
                        "and/or/not, parentheses; nothing is executed).",
        show_default=False)] = None,
    diameter_mm: Annotated[str, typer.Option(
        "--diameter-mm", help="Parametric diameter, mm: VALUE or LOW:HIGH.")] = "6:25",
    shape: Annotated[str, typer.Option(
        "--shape", help="Parametric shapes to draw from, comma-separated: sphere, ellipsoid, "
                        "lobulated, spiculated, or all.")] = "all",
    texture: Annotated[str, typer.Option(
        "--texture", help="Parametric textures: solid, part-solid, ground-glass, or all.")
    ] = "all",
    calcification: Annotated[str, typer.Option(
        "--calcification", help="Calcification patterns: none, central, laminated, popcorn, "
                                "diffuse, or all.")] = "none",
    internal: Annotated[str, typer.Option(
        "--internal", help="Internal structure: soft-tissue, fluid, fat, air, or all.")
    ] = "soft-tissue",
    spicules: Annotated[str, typer.Option(
        "--spicules", help="Spicule count of spiculated nodules: N or LOW:HIGH.")] = "5:12",
    spicule_length_mm: Annotated[str, typer.Option(
        "--spicule-length-mm", help="Spicule length beyond the surface, mm: VALUE or LOW:HIGH.")
    ] = "3:10",
    density_hu: Annotated[float | None, typer.Option(
        "--density-hu", help="Body HU of parametric nodules. Default: by texture (solid 30, "
                             "ground glass -600).", show_default=False)] = None,
    subtlety: Annotated[str | None, typer.Option(
        "--subtlety", help="Subtlety 1 (hardest) .. 5 (obvious), e.g. 3, 1,2 or 1:5 (one drawn "
                           "per sample): scales the nodule's density excess over lung by "
                           + ", ".join(f"{k}: {v:g}" for k, v in SUBTLETY_CONTRAST.items())
                           + ". Default: unchanged.", show_default=False)] = None,
    labels: Annotated[str | None, typer.Option(
        "--labels", help="ct: lung label volume on the CT (e.g. structures.nii.gz with "
                         "structures.csv naming lung_* lobes, or a binary mask); {id} is "
                         "replaced by the input's id. Default: a threshold lung mask.",
        show_default=False)] = None,
    known_nodules: Annotated[str, typer.Option(
        "--known-nodules", help="ct: the nodules the CT already has, boxed (origin ct) and "
                                "in the mask of every image from it, so it gives no negative: "
                                "auto (<stem>.nodules.csv or nodules.csv beside the CT, else "
                                "its LIDC reader XML, and nodule structures of --labels), a "
                                "CSV, an LIDC XML or a nodule mask volume ({id} is replaced), "
                                "or none (the CT has none).")] = "auto",
    mask: Annotated[str | None, typer.Option(
        "--mask", help="blend, diffusion: lung-field mask image (nonzero = lung); {id} is "
                       "replaced by the input's id. Default: a threshold lung field.",
        show_default=False)
    ] = None,
    nodule_mask: Annotated[str | None, typer.Option(
        "--nodule-mask", help="diffusion: the nodule's own mask, an image of the radiograph's "
                              "size ({id} is replaced by the input's id): binary (0/1, 0/255) "
                              "or soft (values in [0, 1], e.g. a projected thickness map over "
                              "its maximum, which then conditions the model). The nodule is "
                              "painted inside it; its support is the record's mask and box "
                              "(nodule source: mask). Replaces --center-px and the nodule "
                              "source.", show_default=False)] = None,
    center_mm: Annotated[str | None, typer.Option(
        "--center-mm", help="ct: nodule centre X,Y,Z in LPS mm (must keep it in the lung).",
        show_default=False)] = None,
    center_px: Annotated[str | None, typer.Option(
        "--center-px", help="blend, diffusion: nodule centre COL,ROW in pixels.",
        show_default=False)
    ] = None,
    geometry: Geometry = None,  # type: ignore[assignment]  # the GEOMETRY options
    kev: Kev = 60.0,
    quality: Annotated[str, typer.Option(
        help="ct: fast (adaptive thick slabs) or exact (one slab per voxel plane).")] = "fast",
    kind: Annotated[str, typer.Option(
        "--kind", help="ct output: display, line_integral or intensity (blend keeps the "
                       "input's kind).")] = "display",
    nodule_depth_mm: Annotated[float, typer.Option(
        "--nodule-depth-mm", help="blend: nodule-to-detector distance (sets magnification).")
    ] = 150.0,
    intensity_scale: Annotated[float | None, typer.Option(
        "--intensity-scale", help="blend: display units per unit line integral. Default: from "
                                  "the image's window.", show_default=False)] = None,
    model: Annotated[Path | None, typer.Option(
        "--model", help="diffusion: the synthesis model folder (written by cxrkit "
                        "train-synth). Default: the model shipped with cxrkit (4.2 M "
                        "parameters, 64 px at 0.75 mm; see its run.json).", show_default=False)
    ] = None,
    steps: Annotated[int | None, typer.Option(
        "--steps", min=1, max=1000, help="diffusion: sampler steps (default: the model's, 10).",
        show_default=False)] = None,
    sampler: Annotated[str | None, typer.Option(
        "--sampler", help="diffusion: ddim (deterministic), dpmpp (DPM-Solver++ 2M) or ddpm "
                          "(ancestral). Default: the model's (ddim).", show_default=False)
    ] = None,
    mask_condition: Annotated[str, typer.Option(
        "--mask-condition", help="diffusion: condition the model on the nodule's projected "
                                 "thickness map (soft) or on its binary silhouette (binary).")
    ] = "soft",
    device: Device = "auto",
    seed: Seed = 0,
    fmt: Format = "tiff",
    overwrite: Overwrite = False,
    resume: Resume = False,
    keep_going: KeepGoing = False,
) -> None:
    """Insert nodules with chosen characteristics, with exact masks, boxes and labels.

    Engine ct inserts a 3-D nodule into each CT inside the lungs (nodule replaces lung where
    denser), then renders the DRR with the given geometry (as cxrkit project); the nodule's
    mask, thickness map and box come from the same rays. Engine blend projects the nodule alone
    and adds it to each radiograph's lung field in the log domain. Nodules are real LUNA16 CT
    patches (--source luna16, --where) or parametric (--shape, --texture, --calcification, ...).
    One record per sample: path, mask (2-D nodule mask PNG), thickness (mm TIFF), boxes
    [{x1,y1,x2,y2,label,attributes}] in pixels (half-open), nodule (3-D centre, characteristics,
    source patch), synth (engine, options, seeds). With --negatives the stream also lists each
    input without a nodule (boxes: []), so it feeds cxrkit eval directly.

    A CT's own nodules are ground truth too (--known-nodules): by default those listed in
    <stem>.nodules.csv or nodules.csv beside the CT (a centre x_mm,y_mm,z_mm in LPS, coordX..
    as LUNA16, or ras_x_mm.. as LIDC, and diameter_mm or xy_extent_mm; rows within each
    other's radius are one nodule), else the LIDC readers' XML beside it (<stem>.xml,
    lidc-reader-annotations.xml as cxrkit sample-data --dicom fetches, or the one *.xml whose
    root is LidcReadMessage; outlines in the CT's pixels, grouped and rated as the rows, masked
    by the readers' 50% consensus), and the nodule structures of --labels. Every image from that
    CT boxes them (origin "ct"; inserted ones have origin "synth") and masks them, nodules are
    inserted at least 5 mm from them, and the CT gives no negative: its _neg item fails with an
    error (exit 1; 3 with --keep-going). Marks under 3 mm (LIDC's small nodules) are listed in
    synth.options.known_nodules but not boxed. The sample CT of cxrkit sample-data (known by its
    sha256) with none of its annotations beside it is refused: fetch them with --dicom, or say
    --known-nodules none.

    Example:

        cxrkit synth "$(cxrkit sample-data)/ct.nii.gz" -n 8 -o synth/ | jq -c .boxes

    Negatives too, from CTs without nodules of their own (or with their nodules.csv or LIDC XML
    beside them):

        cxrkit synth cts/*.nii.gz -n 8 --negatives -o synth/

    With the CT's lung lobes, and a subtlety from 1 to 5 drawn per sample:

        cxrkit synth ct.nii.gz --labels structures.nii.gz --subtlety 1:5 -n 4 -o synth/

    Real nodules into real radiographs, calcified ones only:

        cxrkit synth -e blend cxr/*.png --source luna16 --where 'calcified==1' -n 4 -o blend/

    Engine diffusion places the nodule as blend does, then a synthesis DiT (the one shipped
    with cxrkit, or --model DIR from cxrkit train-synth) paints it inside its projected mask,
    conditioned on the projected thickness map (--mask-condition soft) or the silhouette;
    every pixel outside the mask is the input's, bit for bit:

        cxrkit synth -e diffusion cxr.png --source luna16 -n 4 -o out/

    Or inside the nodule's own shape (--nodule-mask: binary 0/1 or 0/255, or soft in [0, 1],
    e.g. a projected thickness map over its maximum; {id} is replaced by the input's id); its
    support is the record's mask and box (nodule source "mask"):

        cxrkit synth -e diffusion cxrs/*.png --nodule-mask '{id}.tiff' -o out/
    """
    import dataclasses

    from cxrkit.synth import SynthConfig

    if engine not in ENGINES:
        raise typer.BadParameter(f"'{engine}' is not one of {', '.join(ENGINES)}",
                                 param_hint="--engine")
    _check_diffusion(engine, model, sampler, mask_condition, steps)
    _check_nodule_mask(nodule_mask, engine=engine, center_px=center_px, source=source,
                       where=where, subtlety=subtlety)
    if where is not None and not where.strip():
        raise typer.BadParameter("an empty selection; give a condition such as 'calcified==1' "
                                 "or leave --where out", param_hint="--where")
    config = SynthConfig(
        geometry=geometry, device=_resolved(device),
        kev=kev, kind=kind, quality=quality, nodule_depth_mm=nodule_depth_mm,
        intensity_scale=intensity_scale,
        center_mm=parse_triple(center_mm, "--center-mm") if center_mm else None,
        center_px=parse_pair(center_px, "--center-px", int) if center_px else None,
        model=str(model) if model else None, steps=steps, sampler=sampler,
        soft_mask=mask_condition == "soft")
    nodules: NoduleSource | None
    if nodule_mask is not None:
        nodules, nodule_options = None, {"source": "mask", "nodule_mask": nodule_mask}
    else:
        nodules, nodule_options = _nodule_source(
            source, luna16_dir, where, density_hu=density_hu,
            parametric={"diameter_mm": diameter_mm, "shape": shape, "texture": texture,
                        "calcification": calcification, "internal": internal,
                        "spicules": spicules, "spicule_length_mm": spicule_length_mm})
    options = {"engine": engine, "count": count, "negatives": negatives, "kev": kev,
               "kind": kind, "quality": quality, "subtlety": _subtlety(subtlety),
               "lung": labels or mask, "known_nodules": known_nodules,
               "center_mm": config.center_mm,
               "center_px": config.center_px, **nodule_options}
    if engine == "diffusion":
        options.update(model=config.model, steps=steps, sampler=sampler,
                       mask_condition=mask_condition)
    if known_nodules != "auto" and ENGINES[engine].reads != "ct":
        raise typer.BadParameter("only the ct engine reads a CT's own nodules",
                                 param_hint="--known-nodules")
    # --resume compares what decides one sample's pixels: -n and --negatives only add samples,
    # and the device only runs the same render
    request = {**{k: v for k, v in options.items() if k not in ("count", "negatives")},
               "config": {k: v for k, v in dataclasses.asdict(config).items() if k != "device"},
               "seed": seed}
    outputs = Outputs(out, format_suffix(fmt), overwrite, tool="synth", request=request)
    job = SynthJob(ENGINES[engine], config, nodules, options, outputs, seed=seed)
    patterns = CT_PATTERNS if ENGINES[engine].reads == "ct" else RADIOGRAPH_PATTERNS
    records = iter_inputs(inputs, is_item_dir=_is_dicom_dir if patterns is CT_PATTERNS else None,
                          patterns=patterns)
    code = run_items(job.expand(records), job, done=job.done if resume else None,
                     keep_going=keep_going, label="samples")
    exit_with(code)


def _check_diffusion(engine: str, model: Path | None, sampler: str | None,
                     mask_condition: str, steps: int | None) -> None:
    """Usage errors of the diffusion engine's options."""
    if engine != "diffusion":
        given = [name for name, value in (("--model", model), ("--sampler", sampler),
                                          ("--steps", steps)) if value is not None]
        if given or mask_condition != "soft":
            raise typer.BadParameter(f"{', '.join(given) or '--mask-condition'} is for -e "
                                     "diffusion", param_hint="--engine")
        return
    if sampler is not None and sampler not in SAMPLER_NAMES:
        raise typer.BadParameter(f"'{sampler}' is not one of {', '.join(SAMPLER_NAMES)}",
                                 param_hint="--sampler")
    if mask_condition not in ("soft", "binary"):
        raise typer.BadParameter(f"'{mask_condition}' is not soft or binary",
                                 param_hint="--mask-condition")


def _check_nodule_mask(nodule_mask: str | None, *, engine: str, center_px: str | None,
                       source: str, where: str | None, subtlety: str | None) -> None:
    """Usage errors of --nodule-mask; a file named without {id} is read and checked now (its
    size only against each radiograph)."""
    if nodule_mask is None:
        return
    if engine != "diffusion":
        raise typer.BadParameter("--nodule-mask is for -e diffusion", param_hint="--nodule-mask")
    if not nodule_mask.strip():
        raise typer.BadParameter("an empty file name", param_hint="--nodule-mask")
    clash = [name for name, given in (("--center-px", center_px is not None),
                                      ("--source", source != "parametric"),
                                      ("--where", where is not None),
                                      ("--subtlety", subtlety is not None)) if given]
    if clash:
        raise typer.BadParameter(f"the mask places and shapes the nodule: leave out "
                                 f"{', '.join(clash)}", param_hint="--nodule-mask")
    if "{id}" not in nodule_mask:
        from cxrkit.errors import CxrkitError
        from cxrkit.synth.diffusion import read_nodule_mask

        try:
            read_nodule_mask(nodule_mask)
        except CxrkitError as exc:
            raise typer.BadParameter(str(exc), param_hint="--nodule-mask") from exc


def _resolved(device: str) -> str:
    """The torch device the ct engine renders on (a DeviceError when it is not there)."""
    from cxrkit.device import device_name

    return device_name(device)


def _nodule_source(source: str, luna16_dir: Path | None, where: str | None, *,
                   density_hu: float | None,
                   parametric: dict[str, str]) -> tuple[NoduleSource, dict[str, Any]]:
    """The nodule source and its resolved options (for the record)."""
    from dataclasses import asdict

    from cxrkit import nodules

    if source == "luna16":
        if luna16_dir is None or not str(luna16_dir).strip():
            raise typer.BadParameter(f"--source luna16 needs the patch folder: give --luna16-dir "
                                     f"DIR or set {LUNA16_ENV} (nothing is downloaded)",
                                     param_hint="--luna16-dir")
        root = luna16_dir
        if not root.is_dir():
            raise typer.BadParameter(f"no folder {root} (from --luna16-dir or {LUNA16_ENV})",
                                     param_hint="--luna16-dir")
        patches = nodules.read_luna16(root).select(where)
        return patches, {"source": "luna16", "luna16_dir": str(root), "where": where,
                         "luna16_patches": len(patches)}
    if source != "parametric":
        raise typer.BadParameter("use parametric or luna16", param_hint="--source")
    if where:
        raise typer.BadParameter("--where selects LUNA16 patches; add --source luna16",
                                 param_hint="--where")
    p = parametric
    chosen = nodules.ParametricSource(
        diameter_mm=_range(p["diameter_mm"], "--diameter-mm", float, (0.5, MAX_DIAMETER_MM)),
        shapes=_choices(p["shape"], nodules.SHAPES, "--shape"),
        textures=_choices(p["texture"], nodules.TEXTURES, "--texture"),
        calcifications=_choices(p["calcification"], nodules.CALCIFICATIONS, "--calcification"),
        internals=_choices(p["internal"], nodules.INTERNALS, "--internal"),
        spicules=_range(p["spicules"], "--spicules", int, (0, 64)),
        spicule_length_mm=_range(p["spicule_length_mm"], "--spicule-length-mm", float,
                                  (0, MAX_DIAMETER_MM)),
        density_hu=density_hu)
    return chosen, {"source": "parametric", "parametric": asdict(chosen)}


def _range(text: str, name: str, kind: type, bounds: tuple[float, float] = (0, math.inf)
           ) -> Any:
    """``"8"`` → (8, 8); ``"6:25"`` → (6, 25); both ends finite and within ``bounds``."""
    parts = text.split(":")
    try:
        low, high = (kind(parts[0]), kind(parts[-1])) if len(parts) <= 2 else (None, None)
    except ValueError:
        low = high = None
    if low is None or high is None or not math.isfinite(low) or not math.isfinite(high) \
            or low > high:
        raise typer.BadParameter(f"'{text}' is not VALUE or LOW:HIGH", param_hint=name)
    if low < bounds[0] or high > bounds[1]:
        raise typer.BadParameter(f"'{text}' is outside {bounds[0]:g}..{bounds[1]:g}",
                                 param_hint=name)
    return (low, high)


def _choices(text: str, allowed: tuple[str, ...], name: str) -> tuple[str, ...]:
    """Comma-separated choices, or ``all``."""
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if values == ("all",):
        return allowed
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise typer.BadParameter(f"{', '.join(bad) or 'nothing'}: choose from "
                                 f"{', '.join(allowed)} or all", param_hint=name)
    return values


def _subtlety(text: str | None) -> list[int]:
    """``"3"``, ``"1,2"`` or ``"1:5"`` → subtlety values."""
    if not text:
        return []
    try:
        if ":" in text:
            low, high = (int(v) for v in text.split(":"))
            values = list(range(low, high + 1))
        else:
            values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v not in SUBTLETY_CONTRAST for v in values):
        raise typer.BadParameter(f"'{text}' must be values 1..5, e.g. 3, 1,2 or 1:5",
                                 param_hint="--subtlety")
    return values




class SynthJob:
    """Turns each input record into ``count`` sample records (and a negative), writing files.

    :meth:`expand` makes one work item per sample (id ``<input id>_sNNN``, or ``_neg``) so the
    shared per-item loop streams, resumes and shards samples; the prepared input (CT and lung
    mask, or radiograph and lung field) is kept while consecutive items share it.
    """

    def __init__(self, info: EngineInfo, config: SynthConfig, nodules: NoduleSource | None,
                 options: dict[str, Any], outputs: Outputs, *, seed: int) -> None:
        self.info = info
        self.engine = info.create(config)
        self.nodules = nodules
        self.options = options
        self.outputs = outputs
        self.seed = seed
        self._scene: tuple[str, Any, str] | None = None

    def expand(self, records: Iterator[Record]) -> Iterator[Record]:
        """One record per sample to make (the input record with a private ``_synth`` key)."""
        count = self.options["count"]
        width = max(3, len(str(count - 1)))
        for record in records:
            for index in range(count):
                yield {**record, "id": f"{record['id']}_s{index:0{width}d}",
                       "_synth": {"input_id": record["id"], "index": index}}
            if self.options["negatives"]:
                yield {**record, "id": f"{record['id']}_neg",
                       "_synth": {"input_id": record["id"], "index": None}}

    def done(self, record: Record) -> Record | None:
        """The stored record of a sample already written (for --resume), else None."""
        return self.outputs.finished(record["id"])

    def __call__(self, record: Record) -> Record:
        from cxrkit.synth.sampling import sample_seed, synthesize

        input_id, index = record["_synth"]["input_id"], record["_synth"]["index"]
        scene, sha256 = self._prepare(record, input_id)
        if index is None:
            return self._write(record, self.engine.negative(scene), sha256, None)
        seed = sample_seed(self.seed, input_id, index)
        if self.nodules is None:  # --nodule-mask
            return self._write(record, self._mask_sample(scene, input_id, seed), sha256, seed)
        sample = synthesize(self.engine, scene, self.nodules, seed=seed,
                            subtlety=self.options["subtlety"])
        return self._write(record, sample, sha256, seed)

    def _prepare(self, record: Record, input_id: str) -> tuple[Any, str]:
        """Read and prepare an input once for all its samples."""
        from cxrkit.pipe import file_sha256

        path = str(record["path"])
        if self._scene is None or self._scene[0] != path:
            lung_path = self.options["lung"]
            lung_path = lung_path.replace("{id}", input_id) if lung_path else None
            data: Any
            if self.info.reads == "ct":
                from cxrkit.synth.ct import read_lung_mask
                from cxrkit.volume import read_volume

                data = read_volume(path)
                sha256 = file_sha256(path)
                lung = read_lung_mask(lung_path, data) if lung_path else None
                scene = self.engine.prepare(data, lung,  # type: ignore[call-arg]
                                            self._known(path, input_id, lung_path, data, sha256))
            else:
                from cxrkit.io import read_radiograph

                data = read_radiograph(path)
                if data.spacing_mm is None and record.get("spacing_mm"):
                    from cxrkit.io import check_spacing

                    data.spacing_mm = check_spacing(record["spacing_mm"], path=path,
                                                    what="the record's spacing_mm")
                lung = read_radiograph(lung_path).pixels > 0.5 if lung_path else None
                scene = self.engine.prepare(data, lung)
                sha256 = file_sha256(path)
            self._scene = (path, scene, sha256)
        return self._scene[1], self._scene[2]

    def _mask_sample(self, scene: Any, input_id: str, seed: int) -> Sample:
        """Paint inside the --nodule-mask of this input (the placement stream seeds the model,
        as for drawn nodules)."""
        from cxrkit.pipe import file_sha256
        from cxrkit.synth.diffusion import read_nodule_mask
        from cxrkit.synth.sampling import sample_streams

        path = self.options["nodule_mask"].replace("{id}", input_id)
        mask, soft = read_nodule_mask(path, scene.image.shape)
        return self.engine.insert_mask(  # type: ignore[attr-defined]
            scene, mask, soft, sample_streams(seed)[2],
            source={"path": path, "sha256": file_sha256(path)})

    def _known(self, path: str, input_id: str, lung_path: str | None, volume: Any,
               sha256: str) -> list[Any]:
        """The CT's own nodules by --known-nodules (see :mod:`cxrkit.synth.known`)."""
        from cxrkit.synth import known

        policy = self.options["known_nodules"]
        if policy == "none":
            return []
        if policy != "auto":
            return known.read_known(policy.replace("{id}", input_id), volume)
        found = known.read_beside(path, volume, sha256=sha256)
        return found + (known.nodules_from_label_map(lung_path) if lung_path else [])

    def _write(self, record: Record, sample: Sample, sha256: str, seed: int | None) -> Record:
        """Write image, mask and thickness; return the sample's record."""
        import numpy as np

        from cxrkit.io import Radiograph, write_radiograph
        from cxrkit.pipe import provenance

        primary = self.outputs.path(record["id"])
        mask_path = self.outputs.companion(primary, "mask.png")
        new = {k: v for k, v in record.items() if k not in OWNED and k != "_synth"}
        new.update(path=str(primary), kind=sample.kind, spacing_mm=list(sample.spacing_mm),
                   mask=str(mask_path),
                   boxes=[n.box_record() for n in (*sample.nodules, *sample.known)],
                   nodule=sample.nodules[0].to_dict() if sample.nodules else None)
        if sample.thickness_mm is not None:
            new["thickness"] = str(self.outputs.companion(primary, "thickness.tiff"))
        new["synth"] = self.outputs.stamp(provenance(
            "synth", {**self.options, **sample.info}, seed=self.seed,
            inputs={"input": input_name(record), "sha256": sha256}))
        new["synth"].update(engine=self.info.name, sample=record["_synth"]["index"],
                            sample_seed=seed,
                            negative=not (sample.nodules or sample.known))
        ow = self.outputs.overwrite
        write_radiograph(mask_path, Radiograph(sample.mask.astype(np.float32), sample.spacing_mm,
                                               "mask"),
                         record={**new, "kind": "mask", "path": str(mask_path)}, overwrite=ow)
        if sample.thickness_mm is not None:
            write_radiograph(new["thickness"], Radiograph(sample.thickness_mm, sample.spacing_mm,
                                                          "thickness"),
                             record={**new, "kind": "thickness", "path": new["thickness"]},
                             overwrite=ow)
        write_radiograph(primary, Radiograph(sample.image, sample.spacing_mm, sample.kind),
                         record=new, overwrite=ow)
        return new
