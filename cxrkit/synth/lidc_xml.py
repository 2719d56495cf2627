"""Known nodules from the LIDC readers' XML (``LidcReadMessage``), on the CT's own grid.

LIDC-IDRI ships, with each CT series, the reads of (up to) four radiologists as one XML file
(the sample CT's ``lidc-reader-annotations.xml``). Each ``readingSession`` holds one reader's
``unblindedReadNodule`` marks: a nodule of 3 mm or more is outlined slice by slice (``roi``:
``imageZposition`` in mm, ``inclusion`` TRUE for the outline, FALSE for a hole, and its
``edgeMap`` boundary pixels ``xCoord`` = column, ``yCoord`` = row) and rated
(``characteristics``); a nodule under 3 mm is a single point. ``nonNodule`` marks (lesions the
reader judged not to be nodules) are not nodules and are not read.

A mark becomes a nodule as a table row does (:func:`cxrkit.synth.known.read_nodule_table`): its
centre is the mean of its outline pixels, its size the largest in-plane extent of its outline
(LIDC's ``xy_extent_mm``; a point mark is one pixel, so under
:data:`~cxrkit.synth.known.MIN_DIAMETER_MM`: listed, not boxed), marks of several readers whose
centres lie within each other's radius are one nodule, and their median ratings give the labels.
A nodule's occupancy is the fraction of its readers whose outline holds each voxel, on the CT's
pixel grid and the outlines' slices, so its 2-D mask is the silhouette of the readers' 50 %
consensus rather than a ball.

Pixel indices are those of the CT's axial DICOM grid: column toward the patient's left, row
toward posterior (every LIDC-IDRI series), which is the ``(w, h)`` grid of the LPS volume
:func:`cxrkit.volume.read_volume` returns; ``imageZposition`` is the LPS z. A file that does not
fit the CT (a pixel off its grid, a slice outside it) is an error, not silently another scan's.

Parsing is stdlib ElementTree, which resolves no external entity; files over
:data:`MAX_XML_BYTES` or with a ``DOCTYPE`` (LIDC files have none) are refused before parsing.
"""

from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrkit.errors import FormatError, InputError

if TYPE_CHECKING:
    from cxrkit.volume import Volume

ROOT = "LidcReadMessage"
"""Local name of the root element of an LIDC reader XML file."""

DEFAULT_NAME = "lidc-reader-annotations.xml"
"""The reader XML's name in cxrkit's sample data (looked for beside a CT)."""

MAX_XML_BYTES = 64 << 20
"""Largest reader XML read (LIDC's are 0.1–3 MB)."""

MAX_SNIFFED = 100
"""At most this many ``*.xml`` files beside a CT are opened to look for an LIDC root."""

RATINGS = {"subtlety": "subtlety", "internalStructure": "internal_structure",
           "calcification": "calcification", "sphericity": "sphericity", "margin": "margin",
           "lobulation": "lobulation", "spiculation": "spiculation", "texture": "texture",
           "malignancy": "malignancy"}
"""LIDC characteristic element → the rating name of :data:`cxrkit.synth.known.CHARACTERISTICS`."""

_HEAD = 1 << 16
_SKIP = re.compile(rb"<\?.*?\?>|<!--.*?-->|\s+", re.S)
_FIRST_TAG = re.compile(rb"<([A-Za-z_][^\s/>]*)")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [e for e in element if _local(e.tag) == name]


def _text(element: ET.Element, name: str) -> str | None:
    found = _children(element, name)
    return (found[0].text or "").strip() if found else None


def is_lidc_xml(path: str | Path) -> bool:
    """Whether a file is an LIDC reader XML: its first element is ``LidcReadMessage`` (read
    from the first 64 KiB only)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEAD)
    except OSError:
        return False
    head = head.removeprefix(b"\xef\xbb\xbf")
    match = _FIRST_TAG.search(_SKIP.sub(b" ", head))
    return bool(match) and match.group(1).split(b":")[-1] == ROOT.encode()  # type: ignore[union-attr]


def xml_beside(ct_path: str | Path) -> Path | None:
    """The LIDC reader XML of a CT: inside its DICOM folder (LIDC-IDRI's layout), else beside
    the CT file or folder; in each place ``<stem>.xml``, then ``lidc-reader-annotations.xml``,
    then the one other ``*.xml`` whose root is ``LidcReadMessage``.

    Raises:
        InputError: several LIDC XML files could belong to the CT.
    """
    from cxrkit.pipe import stem_of

    p = Path(ct_path)
    for folder in [p, p.parent] if p.is_dir() else [p.parent]:
        for name in (f"{stem_of(p)}.xml", DEFAULT_NAME):
            candidate = folder / name
            if candidate.is_file() and is_lidc_xml(candidate):
                return candidate
        try:
            names = sorted(folder.glob("*.xml"))[:MAX_SNIFFED]
        except OSError:
            continue
        found = [c for c in names if c.is_file() and is_lidc_xml(c)]
        if len(found) > 1:
            raise InputError(
                f"{len(found)} LIDC reader XML files beside the CT: "
                + ", ".join(c.name for c in found[:4]), path=str(p),
                hint="name the one for this CT with --known-nodules FILE.xml (or "
                     "<stem>.xml beside it)")
        if found:
            return found[0]
    return None


def _parse(path: Path) -> ET.Element:
    try:
        size = path.stat().st_size
        if size > MAX_XML_BYTES:
            raise InputError(f"the LIDC XML is {size / 2**20:.0f} MiB, over the "
                             f"{MAX_XML_BYTES >> 20} MiB limit", path=str(path))
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the LIDC XML: {exc.strerror or exc}",
                         path=str(path)) from None
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise FormatError("XML with a DOCTYPE or entity declarations is not read "
                          "(LIDC reader files have none)", path=str(path))
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise FormatError(f"not well-formed XML: {exc}", path=str(path)) from None
    if _local(root.tag) != ROOT:
        raise FormatError(f"not an LIDC reader XML (root <{_local(root.tag)}>, "
                          f"expected <{ROOT}>)", path=str(path))
    return root


def _number(text: str | None, what: str, path: Path) -> float:
    try:
        value = float(text or "")
    except ValueError:
        value = float("nan")
    if not np.isfinite(value):
        raise FormatError(f"{what}: {text!r} is not a finite number", path=str(path))
    return value


def _rois(mark: ET.Element, label: str, path: Path) -> list[tuple[float, bool, np.ndarray]]:
    """``(z_mm, inclusion, (n, 2) col,row pixels)`` of each outline of one mark."""
    out = []
    for roi in _children(mark, "roi"):
        z = _number(_text(roi, "imageZposition"), f"{label}: imageZposition", path)
        inclusion = (_text(roi, "inclusion") or "TRUE").upper() != "FALSE"
        points = [(_number(_text(e, "xCoord"), f"{label}: xCoord", path),
                   _number(_text(e, "yCoord"), f"{label}: yCoord", path))
                  for e in _children(roi, "edgeMap")]
        if points:
            out.append((z, inclusion, np.array(points, dtype=np.float64)))
    if not any(inclusion for _, inclusion, _ in out):
        raise FormatError(f"{label}: a nodule mark without an outline (no roi/edgeMap)",
                          path=str(path))
    return out


def _check_fits(rois: list[tuple[float, bool, np.ndarray]], volume: Volume, label: str,
                path: Path) -> None:
    _, h, w = volume.shape
    z0, z1 = volume.bounds_mm()[:, 2]
    half = volume.spacing_mm[0] / 2
    for z, _, points in rois:
        if (points.min() < 0 or points[:, 0].max() > w - 1 or points[:, 1].max() > h - 1
                or not z0 - half <= z <= z1 + half):
            raise InputError(
                f"{label}: an outline at pixel {points[0].tolist()}, z {z:g} mm lies outside "
                f"the CT ({w}x{h} pixels, z {z0:g}..{z1:g} mm): the XML is not this CT's",
                path=str(path), hint="give the CT's own XML with --known-nodules FILE.xml, or "
                                     "--known-nodules none")


def read_lidc_marks(path: str | Path, volume: Volume) -> list[tuple[Any, ...]]:
    """Every reader's nodule mark on ``volume``: ``(centre LPS mm, diameter mm, label, ratings
    with the outlines under "_rois")``, as :func:`cxrkit.synth.known.read_lidc_xml` groups them
    into nodules (see the module docstring).

    Args:
        path: an LIDC reader XML file.
        volume: the CT the XML belongs to (only its grid is used).

    Raises:
        InputError: the file is too large, does not fit the CT, or the CT is not axial.
        FormatError: not well-formed, not ``LidcReadMessage``, a non-numeric coordinate or a
            nodule mark without an outline.
    """
    p = Path(path)
    root = _parse(p)
    if not np.allclose(np.asarray(volume.direction, dtype=np.float64), np.eye(3), atol=1e-3):
        raise InputError("the LIDC XML's pixel outlines need an axial CT (this one is oblique)",
                         path=str(p), hint="--known-nodules none, or a nodules.csv in LPS mm")
    affine = volume.index_to_world()
    sx, sy = volume.spacing_mm[2], volume.spacing_mm[1]
    marks = []
    for number, session in enumerate(_children(root, "readingSession"), start=1):
        reader = _text(session, "servicingRadiologistID") or f"reader{number}"
        for index, mark in enumerate(_children(session, "unblindedReadNodule"), start=1):
            label = f"{reader}:{_text(mark, 'noduleID') or index}"
            rois = _rois(mark, label, p)
            _check_fits(rois, volume, label, p)
            inside = [(z, pts) for z, inclusion, pts in rois if inclusion]
            points = np.concatenate([pts for _, pts in inside])
            col, row = points.mean(axis=0)
            z = float(np.mean(np.concatenate([np.full(len(pts), z) for z, pts in inside])))
            centre = affine[:3, :3] @ np.array([col, row, 0.0]) + affine[:3, 3]
            centre[2] = z
            extent = points.max(axis=0) - points.min(axis=0) + 1.0
            diameter = float(max(extent[0] * sx, extent[1] * sy))
            row_dict: dict[str, Any] = {name: _text(c, tag) or ""
                                        for c in _children(mark, "characteristics")
                                        for tag, name in RATINGS.items()}
            row_dict["_rois"] = rois
            marks.append((centre, diameter, label, row_dict))
    return marks


def _fill(points: np.ndarray, shape: tuple[int, int], offset: tuple[int, int],
          boundary: bool = True) -> np.ndarray:
    """Pixels of a closed outline (``(n, 2)`` col,row) in a ``(rows, cols)`` block whose first
    pixel is ``offset`` (col, row): inside by the even-odd rule, plus the outline's own pixels
    (and the steps between consecutive ones) when ``boundary``."""
    rows, cols = shape
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    xx += offset[0]
    yy += offset[1]
    inside = np.zeros(shape, dtype=bool)
    ring = np.vstack([points, points[:1]])
    for (x1, y1), (x2, y2) in itertools.pairwise(ring):
        if y1 == y2:
            continue
        crosses = (y1 > yy) != (y2 > yy)
        inside ^= crosses & (xx < x1 + (yy - y1) * (x2 - x1) / (y2 - y1))
    if boundary:
        for (x1, y1), (x2, y2) in itertools.pairwise(ring):
            steps = int(max(abs(x2 - x1), abs(y2 - y1))) + 1
            t = np.linspace(0.0, 1.0, steps + 1)
            c = np.rint(x1 + t * (x2 - x1)).astype(int) - offset[0]
            r = np.rint(y1 + t * (y2 - y1)).astype(int) - offset[1]
            inside[r, c] = True
    return inside


def occupancy(group: list[Any], volume: Volume) -> Volume:
    """The fraction of a nodule's readers whose outlines hold each voxel: a block on the CT's
    pixel grid and the outlines' slice spacing, with one empty voxel around it."""
    from cxrkit.volume import Volume

    rois = [roi for mark in group for roi in mark[3]["_rois"]]
    points = np.concatenate([pts for _, _, pts in rois])
    c0, r0 = (points.min(axis=0) - 1).astype(int)
    c1, r1 = (points.max(axis=0) + 2).astype(int)
    levels = np.unique([z for z, _, _ in rois])
    steps = np.diff(levels)
    dz = float(steps[steps > 1e-3].min()) if np.any(steps > 1e-3) else volume.spacing_mm[0]
    nz = int(np.rint((levels[-1] - levels[0]) / dz)) + 3
    total = np.zeros((nz, r1 - r0, c1 - c0), dtype=np.float32)
    for mark in group:
        slices: dict[int, np.ndarray] = {}
        for z, inclusion, pts in sorted(mark[3]["_rois"], key=lambda roi: not roi[1]):
            k = int(np.rint((z - levels[0]) / dz)) + 1
            here = slices.setdefault(k, np.zeros(total.shape[1:], dtype=bool))
            if inclusion:
                here |= _fill(pts, here.shape, (c0, r0))
            else:
                here &= ~_fill(pts, here.shape, (c0, r0), boundary=False)
        for k, here in slices.items():
            total[k] += here
    total /= len(group)
    if total.max() < 0.5:  # readers' outlines that never overlap: their union
        total = (total > 0).astype(np.float32)
    corner = volume.index_to_world() @ np.array([c0, r0, 0.0, 1.0])
    return Volume(total, (dz, volume.spacing_mm[1], volume.spacing_mm[2]),
                  (float(corner[0]), float(corner[1]), float(levels[0] - dz)),
                  np.asarray(volume.direction, dtype=np.float64))
