"""Nodules a CT already has: read them, project them, keep them out of negatives.

A real chest CT may hold nodules of its own (LIDC-IDRI-0001 has a 30 mm one). A radiograph
rendered from it shows them, so for detector training they must be labelled in every image made
from that CT, and no image of that CT may be called negative. The ``ct`` engine takes them
from:

- a **table** (:func:`read_nodule_table`): ``<stem>.nodules.csv`` or ``nodules.csv`` beside the CT
  (:func:`table_beside`), or a given CSV. One row per nodule, or per reader's mark (LIDC: rows
  whose centres lie within each other's radius are one nodule). Columns: a centre, one of
  ``x_mm,y_mm,z_mm`` (LPS, as ``--center-mm``), ``coordX,coordY,coordZ`` (LUNA16's
  ``annotations.csv``, world LPS) or ``ras_x_mm,ras_y_mm,ras_z_mm`` (RAS); and a size,
  ``diameter_mm`` (or LUNA16's ``diameter_mm``, LIDC's ``xy_extent_mm``);
- the **LIDC readers' XML** (:mod:`cxrkit.synth.lidc_xml`): when no table is beside the CT,
  ``<stem>.xml``, ``lidc-reader-annotations.xml`` or the one ``*.xml`` whose root is
  ``LidcReadMessage`` beside it (or inside its DICOM folder), or a given ``.xml``; marks
  grouped and labelled as a table's rows, each nodule's mask from the readers' outlines;
- a **mask** (:func:`nodules_from_mask`): a nodule label volume (each 26-connected component is
  one nodule), or the structures of a label map whose names contain ``nodule``.

Nodules smaller than :data:`MIN_DIAMETER_MM` (LIDC's "nodule < 3 mm" marks, which carry no
outline) are listed but neither boxed nor counted against a negative, as LUNA16 leaves them out
of its reference; a radiograph cannot show them.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrkit.errors import InputError

if TYPE_CHECKING:
    from cxrkit.geometry import ResolvedGeometry
    from cxrkit.volume import Volume

MIN_DIAMETER_MM = 3.0
"""Known nodules below this diameter are recorded but not boxed (LIDC/LUNA16's 3 mm floor)."""

KEEP_OUT_MM = 5.0
"""Inserted nodules keep at least this far from a known nodule's surface (placement)."""

CENTRE_COLUMNS = (
    (("x_mm", "y_mm", "z_mm"), (1.0, 1.0, 1.0)),
    (("coordX", "coordY", "coordZ"), (1.0, 1.0, 1.0)),
    (("ras_x_mm", "ras_y_mm", "ras_z_mm"), (-1.0, -1.0, 1.0)),
)
"""Accepted centre columns and their sign to LPS (RAS → LPS flips x and y)."""

SIZE_COLUMNS = ("diameter_mm", "xy_extent_mm")

CHARACTERISTICS = ("subtlety", "calcification", "sphericity", "margin", "lobulation",
                   "spiculation", "texture", "malignancy", "internal_structure")
"""LIDC reader ratings read from a table (medians over a nodule's marks)."""


@dataclass(frozen=True)
class KnownNodule:
    """A nodule the CT already holds.

    Attributes:
        center_mm: LPS centre, mm.
        diameter_mm: its size (the mean over readers' marks), mm.
        marks: how many rows (reader marks) or mask components make it up.
        source: where it was read (``{"table": path, "ids": [...]}``, ``{"xml": path, "ids":
            [...]}`` or ``{"mask": path}``).
        attributes: labels in the vocabulary of inserted nodules (``calcified``, ``texture``,
            ... by the LUNA16 table's rules on the readers' median ratings, where the table has
            them) and the medians under ``lidc``.
        occupancy: for a mask nodule, its voxels as a 0/1 volume placed in the world; for an
            XML nodule, the fraction of its readers' outlines holding each voxel; None for a
            table nodule (drawn as a ball of ``diameter_mm``).
    """

    center_mm: tuple[float, float, float]
    diameter_mm: float
    marks: int = 1
    source: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    occupancy: Volume | None = None

    @property
    def counted(self) -> bool:
        """Large enough to box and to rule out a negative (:data:`MIN_DIAMETER_MM`)."""
        return self.diameter_mm >= MIN_DIAMETER_MM

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (without the occupancy)."""
        return {"center_mm": [round(v, 2) for v in self.center_mm],
                "diameter_mm": round(self.diameter_mm, 2), "marks": self.marks,
                "attributes": dict(self.attributes), "source": dict(self.source)}


def table_beside(ct_path: str | Path) -> Path | None:
    """``<stem>.nodules.csv`` beside a CT file or DICOM folder, else ``nodules.csv`` there."""
    from cxrkit.pipe import stem_of

    p = Path(ct_path)
    for candidate in (p.parent / f"{stem_of(p)}.nodules.csv", p.parent / "nodules.csv"):
        if candidate.is_file():
            return candidate
    return None


def read_nodule_table(path: str | Path) -> list[KnownNodule]:
    """The nodules of a CT from a CSV table (see the module docstring).

    Raises:
        InputError: no centre or size columns, or a value that is not a finite number.
    """
    p = Path(path)
    with open(p, newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns = set(rows[0]) if rows else set()
    found = [(names, signs) for names, signs in CENTRE_COLUMNS if set(names) <= columns]
    size = next((c for c in SIZE_COLUMNS if c in columns), None)
    if rows and (not found or size is None):
        raise InputError(
            "the nodule table has no centre or no size columns", path=str(p),
            hint="columns x_mm,y_mm,z_mm (LPS) or ras_x_mm,ras_y_mm,ras_z_mm, and diameter_mm; "
                 "or --known-nodules none if this CT has no nodules")
    marks = []
    for line, row in enumerate(rows, start=2):
        names, signs = found[0]
        try:
            centre = np.array([float(row[n]) for n in names]) * np.array(signs)
            diameter = float(row[size])  # type: ignore[index]
        except (TypeError, ValueError):
            raise InputError(f"line {line}: the centre or size is not a number",
                             path=str(p)) from None
        if not (np.all(np.isfinite(centre)) and np.isfinite(diameter) and diameter >= 0):
            raise InputError(f"line {line}: the centre or size is not a finite number",
                             path=str(p))
        label = row.get("nodule_id") or row.get("id") or str(line)
        marks.append((centre, diameter, label, row))
    return [_merge(group, {"table": str(p)}) for group in _groups(marks)]


def _groups(marks: list[tuple[np.ndarray, float, str, dict[str, str]]]) -> list[list[Any]]:
    """Marks joined when one's centre lies within the other's radius (or 1.5 mm), transitively."""
    parent = list(range(len(marks)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, (ci, di, _, _) in enumerate(marks):
        for j in range(i):
            cj, dj = marks[j][0], marks[j][1]
            if np.linalg.norm(ci - cj) <= max(di / 2, dj / 2, 1.5):
                parent[root(i)] = root(j)
    groups: dict[int, list[Any]] = {}
    for i, mark in enumerate(marks):
        groups.setdefault(root(i), []).append(mark)
    return list(groups.values())


def _merge(group: list[Any], source: dict[str, Any]) -> KnownNodule:
    """One nodule from a group of marks ``(centre, diameter, id, row)``: mean centre and size,
    median ratings (the row's :data:`CHARACTERISTICS`), ``source`` with the marks' ids."""
    centre = np.mean([m[0] for m in group], axis=0)
    ratings: dict[str, float] = {}
    for key in CHARACTERISTICS:
        values = []
        for m in group:
            try:
                values.append(float(m[3].get(key) or "nan"))
            except ValueError:
                continue
        values = [v for v in values if np.isfinite(v)]
        if values:
            ratings[key] = float(np.median(values))
    return KnownNodule((float(centre[0]), float(centre[1]), float(centre[2])),
                       float(np.mean([m[1] for m in group])), len(group),
                       {**source, "ids": [m[2] for m in group]}, _labels(ratings))


def _labels(ratings: dict[str, float]) -> dict[str, Any]:
    """The synth labels (:data:`cxrkit.nodules.LABEL_KEYS`) from LIDC reader medians, by the
    rules of the LUNA16 nodule table, where the ratings they need are present; the medians
    themselves under ``lidc``."""
    r = ratings
    out: dict[str, Any] = {}
    if "calcification" in r:
        out["calcified"] = int(r["calcification"] < 6)
    if {"spiculation", "lobulation", "margin"} <= set(r):
        out["border_irregular"] = int(r["spiculation"] >= 3 or r["lobulation"] >= 3
                                      or r["margin"] <= 2)
    if "texture" in r:
        t = r["texture"]
        out["texture"] = "solid" if t == 5 else "part-solid" if t >= 3 else "ground-glass"
        if "internal_structure" in r:
            out["inhomogeneous"] = int(r["internal_structure"] != 1 or t < 5)
    if "subtlety" in r:
        out["subtlety"] = r["subtlety"]
    if r:
        out["lidc"] = {k: round(v, 2) for k, v in r.items()}
    return out


def nodules_from_mask(mask: Volume, source: str) -> list[KnownNodule]:
    """One :class:`KnownNodule` per 26-connected component of a nonzero mask volume."""
    from scipy import ndimage

    from cxrkit.volume import Volume

    inside = np.asarray(mask.array) > 0
    labels, count = ndimage.label(inside, structure=np.ones((3, 3, 3), dtype=bool))
    out = []
    affine = mask.index_to_world()
    voxel_mm3 = float(np.prod(mask.spacing_mm))
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        part = (labels[box] == index).astype(np.float32)
        start = np.array([s.start for s in box], dtype=np.float64)  # (d, h, w)
        origin = affine @ np.array([start[2], start[1], start[0], 1.0])
        centre_idx = np.argwhere(part > 0).mean(axis=0) + start
        centre = affine @ np.array([centre_idx[2], centre_idx[1], centre_idx[0], 1.0])
        diameter = float(2.0 * (3.0 * part.sum() * voxel_mm3 / (4.0 * np.pi)) ** (1 / 3))
        block = Volume(part, mask.spacing_mm, tuple(float(v) for v in origin[:3]),
                       np.asarray(mask.direction, dtype=np.float64))
        out.append(KnownNodule((float(centre[0]), float(centre[1]), float(centre[2])),
                               diameter, 1, {"mask": source, "component": index}, {}, block))
    del count
    return out


def ball_occupancy(nodule: KnownNodule) -> Volume:
    """A table nodule as a ball of its diameter: occupancy with a one-step soft edge."""
    from cxrkit.volume import Volume

    radius = nodule.diameter_mm / 2.0
    step = min(0.5, max(nodule.diameter_mm / 10.0, 0.05))
    n = int(np.ceil(radius / step)) + 2
    axis = (np.arange(-n, n + 1) * step).astype(np.float64)
    zz, yy, xx = np.meshgrid(axis, axis, axis, indexing="ij")
    occupancy = np.clip(0.5 + (radius - np.sqrt(xx**2 + yy**2 + zz**2)) / step, 0.0, 1.0)
    corner = np.asarray(nodule.center_mm) - n * step
    return Volume(occupancy.astype(np.float32), (step, step, step),
                  (float(corner[0]), float(corner[1]), float(corner[2])))


def project_known(nodule: KnownNodule, geometry: ResolvedGeometry) -> np.ndarray:
    """The nodule's 2-D mask on the detector (its silhouette, as for inserted nodules)."""
    from cxrkit.synth.sampling import silhouette

    occupancy = nodule.occupancy if nodule.occupancy is not None else ball_occupancy(nodule)
    return silhouette(occupancy, geometry)


def keep_out(lung: np.ndarray, volume: Volume, known: list[KnownNodule]) -> np.ndarray:
    """The lung mask without the voxels within :data:`KEEP_OUT_MM` of any known nodule."""
    if not known:
        return lung
    out = np.array(lung, dtype=bool, copy=True)
    to_index = np.linalg.inv(volume.index_to_world())
    spacing = np.asarray(volume.spacing_mm, dtype=np.float64)  # (d, h, w)
    for nodule in known:
        reach = nodule.diameter_mm / 2.0 + KEEP_OUT_MM
        centre = (to_index @ np.array([*nodule.center_mm, 1.0]))[:3][::-1]  # (d, h, w)
        lo = np.maximum(np.floor(centre - reach / spacing).astype(int), 0)
        hi = np.minimum(np.ceil(centre + reach / spacing).astype(int) + 1, lung.shape)
        if np.any(hi <= lo):
            continue
        grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)],
                            indexing="ij")
        dist2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing, strict=True))
        region = out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        region[dist2 <= reach**2] = False
    return out


NODULE_NAME = "nodule"
"""A label map's structures whose name contains this are nodules (e.g. ``lung_nodules``)."""


def nodules_from_label_map(path: str | Path) -> list[KnownNodule]:
    """The nodules of a label map whose ``<stem>.csv`` names a nodule structure (else none)."""
    from cxrkit.pipe import stem_of
    from cxrkit.volume import read_volume

    p = Path(path)
    table = p.with_name(stem_of(p) + ".csv")
    if not table.is_file():
        return []
    with open(table, newline="") as fh:
        ids = [int(r["id"]) for r in csv.DictReader(fh)
               if (r.get("id") or "").strip().isdigit()
               and NODULE_NAME in (r.get("structure") or r.get("name") or "").lower()]
    if not ids:
        return []
    labels = read_volume(p)
    return nodules_from_mask(labels.with_array(np.isin(labels.array, ids)), str(p))


def read_known(path: str | Path, volume: Volume | None = None) -> list[KnownNodule]:
    """Known nodules from a CSV table (``.csv``), an LIDC reader XML (``.xml``, outlines on
    ``volume``'s grid: :func:`read_lidc_xml`) or a nodule mask volume
    (anything else).

    Raises:
        InputError: an XML without the CT it belongs to, or as the readers raise.
    """
    from cxrkit.volume import read_volume

    p = Path(path)
    if p.suffix.lower() == ".csv":
        return read_nodule_table(p)
    if p.suffix.lower() == ".xml":

        if volume is None:
            raise InputError("an LIDC reader XML needs its CT to place the outlines", path=str(p))
        return read_lidc_xml(p, volume)
    return nodules_from_mask(read_volume(p), str(p))


def read_beside(ct_path: str | Path, volume: Volume, *, sha256: str | None = None
                ) -> list[KnownNodule]:
    """``--known-nodules auto`` for one CT: its table (:func:`table_beside`), else its LIDC
    reader XML (:func:`cxrkit.synth.lidc_xml.xml_beside`; LIDC's nodules.csv is made from that
    XML, so one is read, never both), else none; ``sha256`` (the CT file's, if the caller has
    it) tells a sample CT whose annotations are missing (:func:`_refuse_unannotated_sample`)."""
    from cxrkit.synth.lidc_xml import xml_beside

    table = table_beside(ct_path)
    if table is not None:
        return read_nodule_table(table)
    xml = xml_beside(ct_path)
    if xml is not None:
        return read_lidc_xml(xml, volume)
    _refuse_unannotated_sample(ct_path, sha256)
    return []


def _refuse_unannotated_sample(ct_path: str | Path, sha256: str | None = None) -> None:
    """A sample CT of :mod:`cxrkit.sample` (known by its sha256, hashed here if not given) that
    has nodules but none of their annotations beside it is refused: it would give negatives
    showing a real nodule.

    Raises:
        InputError: ``ct_path`` is such a sample CT.
    """
    from cxrkit.files import file_sha256
    from cxrkit.sample import SAMPLES

    p = Path(ct_path)
    wanted = {member.sha256: sample for sample in SAMPLES.values()
              if sample.dicom is not None and sample.known_nodules
              for member in sample.core.members if member.target == "ct.nii.gz"}
    if not wanted or not p.is_file() or not p.name.endswith(".nii.gz"):
        return
    sample = wanted.get(sha256 or file_sha256(p))
    if sample is not None:
        raise InputError(
            f"this is the sample CT {sample.name}, which has {sample.known_nodules}, "
            "but its readers' annotations are not beside it", path=str(p),
            hint=f"fetch them with `cxrkit sample-data {sample.name} --dicom` "
                 "(lidc-reader-annotations.xml), or give --known-nodules none")


def read_lidc_xml(path: str | Path, volume: Volume) -> list[KnownNodule]:
    """The nodules the LIDC readers marked on ``volume``: their marks
    (:func:`cxrkit.synth.lidc_xml.read_lidc_marks`) grouped as table rows are, each counted one
    with the readers' consensus as its occupancy.

    Raises:
        InputError, FormatError: as :func:`~cxrkit.synth.lidc_xml.read_lidc_marks`.
    """
    from cxrkit.synth.lidc_xml import occupancy, read_lidc_marks

    out = []
    for group in _groups(read_lidc_marks(path, volume)):
        nodule = _merge(group, {"xml": str(path)})
        if nodule.counted:
            nodule = replace(nodule, occupancy=occupancy(group, volume))
        out.append(nodule)
    return out
