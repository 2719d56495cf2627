"""``cxrkit synth``: put nodules with chosen characteristics into radiographs, with exact labels."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

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
from cxrkit.pipe import Record
from cxrkit.synth import ENGINES, SUBTLETY_CONTRAST, EngineInfo

if TYPE_CHECKING:
    from cxrkit.synth import SynthConfig
    from cxrkit.synth.sampling import NoduleSource, Sample

log = logging.getLogger("cxrkit.cli")

SHARED_LUNA16 = Path(__file__).resolve().parents[3] / "shared" / "data" / "luna16-nodules"
"""Default --luna16-dir: the development data beside a source checkout (never downloaded)."""

RADIOGRAPH_PATTERNS = ("*.png", "*.tif", "*.tiff", "*.dcm", "*.mha")
CT_PATTERNS = ("*.nii", "*.nii.gz", "*.mha", "*.mhd", "*.nrrd")
OWNED = ("path", "kind", "spacing_mm", "mask", "thickness", "labels", "boxes", "nodule", "synth")


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
        "--luna16-dir", help="Folder with nodules.csv and patches/ (NODE21/LUNA16 patches). "
                             "Default: ../shared/data/luna16-nodules beside the checkout.",
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
    mask: Annotated[str | None, typer.Option(
        "--mask", help="blend: lung-field mask image (nonzero = lung); {id} is replaced by the "
                       "input's id. Default: a threshold lung field.", show_default=False)
    ] = None,
    center_mm: Annotated[str | None, typer.Option(
        "--center-mm", help="ct: nodule centre X,Y,Z in LPS mm (must keep it in the lung).",
        show_default=False)] = None,
    center_px: Annotated[str | None, typer.Option(
        "--center-px", help="blend: nodule centre COL,ROW in pixels.", show_default=False)
    ] = None,
    view: Annotated[str, typer.Option(help="ct: standard view: PA, AP, LAT or RLAT.")] = "PA",
    size: Annotated[str, typer.Option("--size", help="ct: detector pixels: N or ROWS,COLS.")
                    ] = "1024",
    pixel_mm: Annotated[str | None, typer.Option(
        "--pixel-mm", help="ct: detector pitch in mm (default 430 mm / --size); blend: pixel "
                           "size of images that do not state it (default 430 mm / width).",
        show_default=False)] = None,
    sid_mm: Annotated[float, typer.Option("--sid-mm", help="Source-to-detector distance (mm).")
                      ] = 1800.0,
    sod_mm: Annotated[float | None, typer.Option(
        "--sod-mm", help="ct: source-to-isocentre distance (mm). Default: the detector 15 mm "
                         "beyond the body.", show_default=False)] = None,
    rotation_deg: Annotated[str, typer.Option(
        "--rotation-deg", help="ct: extra rotation RX,RY,RZ about the isocentre (degrees).")
    ] = "0,0,0",
    translation_mm: Annotated[str, typer.Option(
        "--translation-mm", help="ct: shift X,Y,Z of source and detector, LPS mm.")] = "0,0,0",
    isocenter_mm: Annotated[str | None, typer.Option(
        "--isocenter-mm", help="ct: isocentre X,Y,Z in LPS mm. Default: centre of the body.",
        show_default=False)] = None,
    kev: Annotated[float, typer.Option("--kev", help="Effective beam energy (keV).")] = 60.0,
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

    Example:

        cxrkit synth "$(cxrkit sample-data)/ct.nii.gz" -n 8 --negatives -o synth/ | jq -c .boxes

    With the CT's lung lobes, and a subtlety from 1 to 5 drawn per sample:

        cxrkit synth ct.nii.gz --labels structures.nii.gz --subtlety 1:5 -n 4 -o synth/

    Real nodules into real radiographs, calcified ones only:

        cxrkit synth -e blend cxr/*.png --source luna16 --where 'calcified==1' -n 4 -o blend/
    """
    import dataclasses

    from cxrkit.synth import SynthConfig

    if engine not in ENGINES:
        raise typer.BadParameter(f"'{engine}' is not one of {', '.join(ENGINES)}",
                                 param_hint="--engine")
    config = SynthConfig(
        geometry=_geometry(view, size, pixel_mm, sid_mm, sod_mm, rotation_deg, translation_mm,
                           isocenter_mm),
        kev=kev, kind=kind, quality=quality, nodule_depth_mm=nodule_depth_mm,
        intensity_scale=intensity_scale,
        center_mm=parse_triple(center_mm, "--center-mm") if center_mm else None,
        center_px=parse_pair(center_px, "--center-px", int) if center_px else None)
    nodules, nodule_options = _nodule_source(
        source, luna16_dir, where, density_hu=density_hu,
        parametric={"diameter_mm": diameter_mm, "shape": shape, "texture": texture,
                    "calcification": calcification, "internal": internal, "spicules": spicules,
                    "spicule_length_mm": spicule_length_mm})
    options = {"engine": engine, "count": count, "negatives": negatives, "kev": kev,
               "kind": kind, "quality": quality, "subtlety": _subtlety(subtlety),
               "lung": labels or mask, "center_mm": config.center_mm,
               "center_px": config.center_px, **nodule_options}
    # --resume compares what decides one sample's pixels: -n and --negatives only add samples
    request = {**{k: v for k, v in options.items() if k not in ("count", "negatives")},
               "config": dataclasses.asdict(config), "seed": seed}
    outputs = Outputs(out, format_suffix(fmt), overwrite, tool="synth", request=request)
    job = SynthJob(ENGINES[engine], config, nodules, options, outputs, seed=seed)
    patterns = CT_PATTERNS if ENGINES[engine].reads == "ct" else RADIOGRAPH_PATTERNS
    records = iter_inputs(inputs, is_item_dir=_is_dicom_dir if patterns is CT_PATTERNS else None,
                          patterns=patterns)
    code = run_items(job.expand(records), job, done=job.done if resume else None,
                     keep_going=keep_going, label="samples")
    exit_with(code)


def _geometry(view: str, size: str, pixel_mm: str | None, sid_mm: float, sod_mm: float | None,
              rotation_deg: str, translation_mm: str, isocenter_mm: str | None) -> Any:
    """The acquisition from the ``cxrkit project`` geometry options."""
    from cxrkit.geometry import Geometry

    return Geometry(
        view=view.upper(), sid_mm=sid_mm, sod_mm=sod_mm,
        detector_px=parse_pair(size, "--size", int),
        pixel_mm=parse_pair(pixel_mm, "--pixel-mm") if pixel_mm else None,
        rotation_deg=parse_triple(rotation_deg, "--rotation-deg"),
        translation_mm=parse_triple(translation_mm, "--translation-mm"),
        isocenter_mm=parse_triple(isocenter_mm, "--isocenter-mm") if isocenter_mm else None)


def _nodule_source(source: str, luna16_dir: Path | None, where: str | None, *,
                   density_hu: float | None,
                   parametric: dict[str, str]) -> tuple[NoduleSource, dict[str, Any]]:
    """The nodule source and its resolved options (for the record)."""
    from dataclasses import asdict

    from cxrkit import nodules

    if source == "luna16":
        root = luna16_dir or SHARED_LUNA16
        if luna16_dir is None and not root.is_dir():
            raise typer.BadParameter(f"no LUNA16 patches at {root}; give the folder holding "
                                     "nodules.csv and patches/ (nothing is downloaded)",
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
        diameter_mm=_range(p["diameter_mm"], "--diameter-mm", float),
        shapes=_choices(p["shape"], nodules.SHAPES, "--shape"),
        textures=_choices(p["texture"], nodules.TEXTURES, "--texture"),
        calcifications=_choices(p["calcification"], nodules.CALCIFICATIONS, "--calcification"),
        internals=_choices(p["internal"], nodules.INTERNALS, "--internal"),
        spicules=_range(p["spicules"], "--spicules", int),
        spicule_length_mm=_range(p["spicule_length_mm"], "--spicule-length-mm", float),
        density_hu=density_hu)
    return chosen, {"source": "parametric", "parametric": asdict(chosen)}


def _range(text: str, name: str, kind: type) -> Any:
    """``"8"`` → (8, 8); ``"6:25"`` → (6, 25)."""
    parts = text.split(":")
    try:
        low, high = (kind(parts[0]), kind(parts[-1])) if len(parts) <= 2 else (None, None)
    except ValueError:
        low = high = None
    if low is None or high is None or low > high:
        raise typer.BadParameter(f"'{text}' is not VALUE or LOW:HIGH", param_hint=name)
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


def _is_dicom_dir(path: Path) -> bool:
    # Copied from cxrkit.cli.project
    return any(c.is_file() and (c.suffix.lower() in (".dcm", "") or c.name.isdigit())
               for c in path.iterdir())


class SynthJob:
    """Turns each input record into ``count`` sample records (and a negative), writing files.

    :meth:`expand` makes one work item per sample (id ``<input id>_sNNN``, or ``_neg``) so the
    shared per-item loop streams, resumes and shards samples; the prepared input (CT and lung
    mask, or radiograph and lung field) is kept while consecutive items share it.
    """

    def __init__(self, info: EngineInfo, config: SynthConfig, nodules: NoduleSource,
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
                lung = read_lung_mask(lung_path, data) if lung_path else None
            else:
                from cxrkit.io import read_radiograph

                data = read_radiograph(path)
                if data.spacing_mm is None and record.get("spacing_mm"):
                    row_mm, col_mm = (float(v) for v in record["spacing_mm"])
                    data.spacing_mm = (row_mm, col_mm)
                lung = read_radiograph(lung_path).pixels > 0.5 if lung_path else None
            self._scene = (path, self.engine.prepare(data, lung), file_sha256(path))
        return self._scene[1], self._scene[2]

    def _write(self, record: Record, sample: Sample, sha256: str, seed: int | None) -> Record:
        """Write image, mask and thickness; return the sample's record."""
        import numpy as np

        from cxrkit.io import Radiograph, write_radiograph
        from cxrkit.pipe import provenance

        primary = self.outputs.path(record["id"])
        mask_path = self.outputs.companion(primary, "mask.png")
        new = {k: v for k, v in record.items() if k not in OWNED and k != "_synth"}
        new.update(path=str(primary), kind=sample.kind, spacing_mm=list(sample.spacing_mm),
                   mask=str(mask_path), boxes=[n.box_record() for n in sample.nodules],
                   nodule=sample.nodules[0].to_dict() if sample.nodules else None)
        if sample.thickness_mm is not None:
            new["thickness"] = str(self.outputs.companion(primary, "thickness.tiff"))
        new["synth"] = self.outputs.stamp(provenance(
            "synth", {**self.options, **sample.info}, seed=self.seed,
            inputs={"input": input_name(record), "sha256": sha256}))
        new["synth"].update(engine=self.info.name, sample=record["_synth"]["index"],
                            sample_seed=seed, negative=not sample.nodules)
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
