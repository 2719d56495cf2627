"""``cxrkit project``: ray-cast CT volumes into digitally reconstructed radiographs (DRRs)."""

from __future__ import annotations

import logging
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
    exit_with,
    format_suffix,
    iter_inputs,
    parse_pair,
    parse_triple,
    run_items,
)
from cxrkit.pipe import Record

if TYPE_CHECKING:
    from cxrkit.geometry import Geometry
    from cxrkit.volume import Volume

log = logging.getLogger("cxrkit.cli")

KINDS = ("display", "line_integral", "intensity")


def _is_dicom_dir(path: Path) -> bool:
    """A folder is one CT (a DICOM series) when it holds .dcm files or extension-less files."""
    return any(c.is_file() and (c.suffix.lower() in (".dcm", "") or c.name.isdigit())
               for c in path.iterdir())


def project(
    inputs: Inputs = None,
    out: Out = None,
    view: Annotated[str, typer.Option(help="Standard view: PA, AP, LAT (left lateral) or RLAT.")
                    ] = "PA",
    size: Annotated[str, typer.Option(
        "--size", help="Detector pixels: N or ROWS,COLS.")] = "1024",
    pixel_mm: Annotated[str | None, typer.Option(
        "--pixel-mm", help="Detector pixel pitch in mm: P or ROW,COL. Default: a 430 mm "
                           "(17 inch) detector divided by --size.", show_default=False)] = None,
    sid_mm: Annotated[float, typer.Option("--sid-mm", help="Source-to-detector distance (mm).")
                      ] = 1800.0,
    sod_mm: Annotated[float | None, typer.Option(
        "--sod-mm", help="Source-to-isocentre distance (mm). Default: the detector 15 mm beyond "
                         "the body surface.", show_default=False)] = None,
    rotation_deg: Annotated[str, typer.Option(
        "--rotation-deg", help="Extra rotation RX,RY,RZ of source and detector about the "
                               "isocentre, about the patient's LPS x, y, z axes (degrees).")
    ] = "0,0,0",
    translation_mm: Annotated[str, typer.Option(
        "--translation-mm", help="Shift X,Y,Z of source and detector, LPS mm.")] = "0,0,0",
    isocenter_mm: Annotated[str | None, typer.Option(
        "--isocenter-mm", help="Isocentre X,Y,Z in LPS mm. Default: centre of the body.",
        show_default=False)] = None,
    kev: Annotated[float, typer.Option(
        "--kev", help="Effective beam energy (keV) for HU to attenuation.")] = 60.0,
    method: Annotated[str, typer.Option(
        help="Ray integration: trilinear (fast, Joseph slabs) or siddon (exact, slow).")
    ] = "trilinear",
    quality: Annotated[str, typer.Option(
        help="fast (adaptive thick slabs) or exact (one slab per voxel plane).")] = "fast",
    kind: Annotated[str, typer.Option(
        "--kind", help="Output: display (a [0,1] radiograph, bone bright), line_integral "
                       "(∫μ dl) or intensity (exp(-∫μ dl)).")] = "display",
    keep_table: Annotated[bool, typer.Option(
        "--keep-table", help="Keep the CT couch, leads and everything outside the body "
                             "(removed by default with a body mask).")] = False,
    labels: Annotated[Path | None, typer.Option(
        "--labels", help="Label volume on the CT grid (e.g. structures.nii.gz or a nodule mask) "
                         "to project into 2-D masks aligned with the DRR.", show_default=False)
    ] = None,
    label_ids: Annotated[str | None, typer.Option(
        "--label-ids", help="Comma-separated label ids to project. Default: all non-zero.",
        show_default=False)] = None,
    labels_as: Annotated[str, typer.Option(
        "--labels-as", help="mask (0/1) or thickness (mm of tissue along each ray).")] = "mask",
    series: Annotated[str | None, typer.Option(
        "--series", help="SeriesInstanceUID to read from a folder with several DICOM series.",
        show_default=False)] = None,
    fmt: Format = "tiff",
    overwrite: Overwrite = False,
    resume: Resume = False,
    keep_going: KeepGoing = False,
) -> None:
    """Render a digitally reconstructed radiograph (DRR) from each CT.

    Reads CT volumes (NIfTI, MHA/MHD, NRRD or DICOM series folders), converts HU to linear
    attenuation at --kev, removes the table, and ray-casts a cone beam through a physical geometry
    (defaults: a PA chest radiograph, 1800 mm source-to-detector, 430 mm detector, patient's right
    on the image left). Writes one image per CT (float32 TIFF by default) and one JSON record per
    CT on stdout.

    Example:

        cxrkit project "$(cxrkit sample-data)/ct.nii.gz" --size 512 -o drr/ | jq .path

    Several CTs are sharded across processes with accelerate:

        accelerate launch --multi_gpu --num_processes 2 -m cxrkit project cts/*.nii.gz -o drr/

    (--multi_gpu starts the processes on a CPU-only machine too; accelerate's --cpu starts one.)
    """
    import dataclasses

    from cxrkit import drr
    from cxrkit.geometry import Geometry

    if kind not in KINDS:
        raise typer.BadParameter(f"'{kind}' is not one of {', '.join(KINDS)}", param_hint="--kind")
    if method not in drr.METHODS:
        raise typer.BadParameter(f"'{method}' is not one of {', '.join(drr.METHODS)}",
                                 param_hint="--method")
    if labels_as not in ("mask", "thickness"):
        raise typer.BadParameter("use mask or thickness", param_hint="--labels-as")
    geometry = Geometry(
        view=view.upper(), sid_mm=sid_mm, sod_mm=sod_mm,
        detector_px=parse_pair(size, "--size", int),
        pixel_mm=parse_pair(pixel_mm, "--pixel-mm") if pixel_mm else None,
        rotation_deg=parse_triple(rotation_deg, "--rotation-deg"),
        translation_mm=parse_triple(translation_mm, "--translation-mm"),
        isocenter_mm=parse_triple(isocenter_mm, "--isocenter-mm") if isocenter_mm else None,
    )
    ids = [int(v) for v in label_ids.split(",")] if label_ids else None
    options = {"view": geometry.view, "kev": kev, "method": method, "quality": quality,
               "kind": kind, "remove_table": not keep_table, "series": series,
               "labels": str(labels) if labels else None, "label_ids": ids,
               "labels_as": labels_as}
    outputs = Outputs(out, format_suffix(fmt), overwrite, tool="project",
                      request={"geometry": dataclasses.asdict(geometry), **options})
    job = ProjectJob(geometry, options, outputs)
    code = run_items(iter_inputs(inputs, is_item_dir=_is_dicom_dir,
                                 patterns=("*.nii", "*.nii.gz", "*.mha", "*.mhd", "*.nrrd")),
                     job, done=job.done if resume else None, keep_going=keep_going,
                     label="CTs")
    exit_with(code)


class ProjectJob:
    """Renders one CT record into a DRR file (and label masks) and returns the new record."""

    def __init__(self, geometry: Geometry, options: dict[str, Any], outputs: Outputs) -> None:
        self.geometry = geometry
        self.options = options
        self.outputs = outputs
        self._labels: Volume | None = None

    def done(self, record: Record) -> Record | None:
        """The stored record of an item already rendered (for --resume), else None."""
        return self.outputs.finished(record["id"], "drr")

    def __call__(self, record: Record) -> Record:
        from cxrkit import drr
        from cxrkit.io import Radiograph, write_radiograph
        from cxrkit.pipe import file_sha256, provenance
        from cxrkit.volume import read_volume

        opts = self.options
        volume = read_volume(record["path"], series=opts["series"])
        result = drr.project(volume, self.geometry, method=opts["method"], kev=opts["kev"],
                             remove_table=opts["remove_table"], quality=opts["quality"])
        pixels, display = result.line_integral, None
        if opts["kind"] == "intensity":
            pixels = drr.to_intensity(result.line_integral)
        elif opts["kind"] == "display":
            pixels, display = drr.to_display(result.line_integral, result.spacing_mm)
        primary = self.outputs.path(record["id"], "drr")
        new = {k: v for k, v in record.items() if k not in ("mask", "labels")}
        new.update(path=str(primary), kind=opts["kind"], spacing_mm=list(result.spacing_mm))
        new["project"] = self.outputs.stamp(provenance(
            "project", {**opts, "geometry": result.geometry.to_dict(),
                        "physics": result.physics, "display": display},
            inputs={"ct_sha256": file_sha256(record["path"])}))
        if opts["labels"]:
            new.update(self._write_labels(result, primary))
        write_radiograph(primary, Radiograph(pixels, result.spacing_mm, opts["kind"]),
                         record=new, overwrite=self.outputs.overwrite)
        return new

    def _write_labels(self, result: Any, primary: Path) -> Record:
        """Project the label volume with the same rays; write one (L, H, W) TIFF stack."""
        import numpy as np

        from cxrkit import drr
        from cxrkit.io import write_stack
        from cxrkit.volume import read_volume

        if self._labels is None:
            self._labels = read_volume(self.options["labels"])
        labels = self._labels
        ids = self.options["label_ids"] or [int(v) for v in np.unique(labels.array) if v != 0]
        maps = drr.project_labels(labels, result.geometry, ids, method=self.options["method"])
        if self.options["labels_as"] == "mask":
            maps = {i: drr.thickness_to_mask(m, labels.spacing_mm) for i, m in maps.items()}
        stack = np.stack([maps[i] for i in ids]).astype(np.float32)  # (L, H, W)
        target = self.outputs.companion(primary, "labels.tiff")
        meta = {"kind": self.options["labels_as"], "label_ids": ids,
                "label_names": _label_names(Path(self.options["labels"]), ids)}
        write_stack(target, stack, result.spacing_mm, meta, overwrite=self.outputs.overwrite)
        extra: Record = {"labels": {"path": str(target), **meta}}
        if len(ids) == 1:
            extra["mask"] = str(target)
        return extra


def _label_names(labels_path: Path, ids: list[int]) -> list[str | None]:
    """Names from a ``<stem>.csv`` beside the label volume (columns ``id`` and ``structure``)."""
    import csv

    from cxrkit.pipe import stem_of

    table = labels_path.with_name(stem_of(labels_path) + ".csv")
    names: dict[int, str] = {}
    if table.is_file():
        with open(table, newline="") as fh:
            for row in csv.DictReader(fh):
                key = row.get("id")
                name = row.get("structure") or row.get("name")
                if key and key.strip().isdigit() and name:
                    names[int(key)] = name
    return [names.get(i) for i in ids]
