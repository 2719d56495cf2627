"""``cxrkit project``: ray-cast CT volumes into digitally reconstructed radiographs (DRRs)."""

from __future__ import annotations

import logging
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
    exit_with,
    format_suffix,
    iter_inputs,
    prefetch_imports,
    run_items,
)
from cxrkit.io import VOLUME_PATTERNS
from cxrkit.io import is_dicom_dir as _is_dicom_dir
from cxrkit.pipe import Record

if TYPE_CHECKING:
    from cxrkit.geometry import Geometry
    from cxrkit.volume import Volume

log = logging.getLogger("cxrkit.cli")

KINDS = ("display", "line_integral", "intensity")




@GEOMETRY.use("geometry")
def project(
    inputs: Inputs = None,
    out: Out = None,
    geometry: Geometry = None,  # type: ignore[assignment]  # the GEOMETRY options
    kev: Kev = 60.0,
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
        "--label-ids", help="Comma-separated labels to project: ids, or structure names from "
                            "the <labels stem>.csv beside --labels (columns id, structure; "
                            "shell patterns such as lung_* allowed). Default: all non-zero.",
        show_default=False)] = None,
    labels_as: Annotated[str, typer.Option(
        "--labels-as", help="mask (0/1) or thickness (mm of tissue along each ray).")] = "mask",
    series: Annotated[str | None, typer.Option(
        "--series", help="SeriesInstanceUID to read from a folder with several DICOM series.",
        show_default=False)] = None,
    device: Device = "auto",
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

    prefetch_imports("scipy.ndimage", "scipy.fft")  # body mask, display: while the CT is read
    if kind not in KINDS:
        raise typer.BadParameter(f"'{kind}' is not one of {', '.join(KINDS)}", param_hint="--kind")
    if method not in drr.METHODS:
        raise typer.BadParameter(f"'{method}' is not one of {', '.join(drr.METHODS)}",
                                 param_hint="--method")
    if quality not in drr.QUALITIES:
        raise typer.BadParameter(f"'{quality}' is not one of {', '.join(drr.QUALITIES)}",
                                 param_hint="--quality")
    if labels_as not in ("mask", "thickness"):
        raise typer.BadParameter("use mask or thickness", param_hint="--labels-as")
    ids = parse_label_ids(label_ids, labels)
    options = {"view": geometry.view, "kev": kev, "method": method, "quality": quality,
               "kind": kind, "remove_table": not keep_table, "series": series,
               "labels": str(labels) if labels else None, "label_ids": ids,
               "labels_as": labels_as, "device": device}
    # --resume compares what decides the pixels (the device only runs the same render)
    request = {"geometry": dataclasses.asdict(geometry),
               **{k: v for k, v in options.items() if k != "device"}}
    outputs = Outputs(out, format_suffix(fmt), overwrite, tool="project", request=request)
    job = ProjectJob(geometry, options, outputs, device=device)
    code = run_items(iter_inputs(inputs, is_item_dir=_is_dicom_dir,
                                 patterns=VOLUME_PATTERNS),
                     job, done=job.done if resume else None, keep_going=keep_going,
                     label="CTs")
    exit_with(code)


class ProjectJob:
    """Renders one CT record into a DRR file (and label masks) and returns the new record."""

    def __init__(self, geometry: Geometry, options: dict[str, Any], outputs: Outputs, *,
                 device: str = "auto") -> None:
        self.geometry = geometry
        self.options = options
        self.outputs = outputs
        self.device = device
        self._labels: Volume | None = None
        self._device: str | None = None

    def _torch_device(self) -> str:
        """The resolved ``--device`` (a DeviceError when it is not there), once per run."""
        if self._device is None:
            from cxrkit.device import device_name

            self._device = device_name(self.device)
        return self._device

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
                             remove_table=opts["remove_table"], quality=opts["quality"],
                             device=self._torch_device())
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
        maps = drr.project_labels(labels, result.geometry, ids, method=self.options["method"],
                                  device=self._torch_device())
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
    names = _label_table(labels_path) or {}
    return [names.get(i) for i in ids]


def _label_table(labels_path: Path) -> dict[int, str] | None:
    """``{id: structure name}`` from the ``<stem>.csv`` beside a label volume, None without one."""
    import csv

    from cxrkit.pipe import stem_of

    table = labels_path.with_name(stem_of(labels_path) + ".csv")
    if not table.is_file():
        return None
    names: dict[int, str] = {}
    with open(table, newline="") as fh:
        for row in csv.DictReader(fh):
            key = row.get("id")
            name = row.get("structure") or row.get("name")
            if key and key.strip().isdigit() and name:
                names[int(key)] = name.strip()
    return names


def parse_label_ids(text: str | None, labels: Path | None) -> list[int] | None:
    """``--label-ids`` → label ids, checked before any CT is read (a usage error otherwise).

    Items are ids (``5``) or structure names of the labels' CSV (``lung_upper_lobe_left``, or
    shell patterns such as ``lung_*``). Without a CSV, ids are checked against the volume.
    """
    import fnmatch

    if text is None:
        return None
    if labels is None:
        raise typer.BadParameter("give --labels, the volume the ids refer to",
                                 param_hint="--label-ids")
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise typer.BadParameter("no labels given", param_hint="--label-ids")
    table = _label_table(labels) if labels.is_file() else None
    ids: list[int] = []
    for item in items:
        if item.lstrip("-").isdigit():
            found = [int(item)]
            if found[0] <= 0 or (table is not None and found[0] not in table):
                raise typer.BadParameter(f"no label {item} in {labels.name}"
                                         + (f"'s table ({len(table)} labels)" if table else ""),
                                         param_hint="--label-ids")
        else:
            if table is None:
                raise typer.BadParameter(f"'{item}' is a name, but there is no table of "
                                         "names beside --labels (<stem>.csv with id, structure)",
                                         param_hint="--label-ids")
            found = [i for i, name in table.items() if fnmatch.fnmatchcase(name, item)]
            if not found:
                known = ", ".join(list(table.values())[:6])
                raise typer.BadParameter(f"no structure '{item}' in the labels' table (e.g. "
                                         f"{known}, ...)", param_hint="--label-ids")
        ids += [i for i in found if i not in ids]
    if table is None and labels.is_file():
        _check_ids_in_volume(labels, ids)
    return ids


def _check_ids_in_volume(labels: Path, ids: list[int]) -> None:
    """Usage error for ids the label volume does not hold (read once, up front)."""
    import numpy as np

    from cxrkit.volume import read_volume

    present = set(np.unique(read_volume(labels).array).astype(int).tolist())
    missing = [i for i in ids if i not in present]
    if missing:
        raise typer.BadParameter(f"no label {', '.join(map(str, missing))} in {labels.name}",
                                 param_hint="--label-ids")
