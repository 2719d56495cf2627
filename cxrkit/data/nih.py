"""Readers of the NIH ChestX-ray14 label files: ``Data_Entry_2017.csv`` (here ``labels.csv``) and
``BBox_List_2017.csv`` (``boxes.csv``).

- :func:`read_labels`: one :class:`NihEntry` per image: its findings (``Finding Labels``, split
  on ``|``; ``No Finding`` is no finding), ``nodule`` (``Nodule`` among them), and the patient
  (``Patient ID``, or the file-name prefix where the column is absent);
- :func:`read_boxes`: ``{image: [{x1, y1, x2, y2, label}]}`` in pixels of the 1024² images
  (``Bbox [x,y,w,h]``, the corner and size; the official file has the four numbers in the
  columns ``Bbox [x``, ``y``, ``w``, ``h]`` and trailing empty columns, both are read);
- :func:`nodule_boxes`: the ``Nodule`` boxes only.

The labels were mined from radiology reports (text mining, about 90 % accurate by the dataset's
paper): image-level, noisy, no locations. Only 984 of the 112,120 images have boxes.

This module imports no numpy or torch.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrkit.errors import InputError

NODULE = "Nodule"
NO_FINDING = "No Finding"


@dataclass(frozen=True)
class NihEntry:
    """One row of ``labels.csv``.

    Attributes:
        image: the file name (``Image Index``).
        findings: the finding labels (empty for ``No Finding``).
        patient_id: ``Patient ID`` as written (no leading zeros).
        nodule: whether ``Nodule`` is among the findings.
        view: ``View Position`` (``PA``/``AP``), or None.
    """

    image: str
    findings: tuple[str, ...]
    patient_id: str
    nodule: bool
    view: str | None = None


def _rows(path: str | Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise InputError(f"not an NIH ChestX-ray14 file: no column {missing[0]!r}",
                                 path=str(path))
            return [{(k or "").strip(): (v or "").strip() if isinstance(v, str) else ""
                     for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read the label file: {exc}", path=str(path)) from exc


def read_labels(path: str | Path) -> list[NihEntry]:
    """The entries of an NIH ``labels.csv`` (``Data_Entry_2017.csv`` format), in file order.

    Raises:
        InputError: unreadable, no ``Image Index``/``Finding Labels`` column, or an image listed
            twice.
    """
    entries, seen = [], set()
    for row in _rows(path, ("Image Index", "Finding Labels")):
        image = row["Image Index"]
        if not image:
            continue
        if image in seen:
            raise InputError(f"image {image!r} is listed twice", path=str(path))
        seen.add(image)
        findings = tuple(f.strip() for f in row["Finding Labels"].split("|")
                         if f.strip() and f.strip() != NO_FINDING)
        patient = row.get("Patient ID") or image.split("_", 1)[0]
        entries.append(NihEntry(image, findings, patient.lstrip("0") or "0", NODULE in findings,
                                row.get("View Position") or None))
    return entries


def read_boxes(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """The boxes of an NIH ``BBox_List_2017.csv``: ``{image: [{x1, y1, x2, y2, label}]}``.

    Raises:
        InputError: unreadable, missing columns, or a box that is not four finite numbers with
            positive size.
    """
    import math

    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), [])
    names = [h.strip() for h in header]
    if "Image Index" not in names or "Finding Label" not in names:
        raise InputError("not an NIH box file: no 'Image Index' and 'Finding Label' columns",
                         path=str(path))
    start = next((i for i, n in enumerate(names) if n.startswith("Bbox")), None)
    if start is None:
        raise InputError("not an NIH box file: no 'Bbox [x,y,w,h]' column", path=str(path))
    image_col, label_col = names.index("Image Index"), names.index("Finding Label")
    out: dict[str, list[dict[str, Any]]] = {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = csv.reader(handle)
        next(rows, None)
        for line, row in enumerate(rows, start=2):
            if not row or not row[image_col].strip():
                continue
            try:
                x, y, w, h = (float(v) for v in row[start:start + 4])
            except ValueError as exc:
                raise InputError(f"line {line}: the box is not four numbers",
                                 path=str(path)) from exc
            if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
                raise InputError(f"line {line}: bad box {x, y, w, h}", path=str(path))
            out.setdefault(row[image_col].strip(), []).append(
                {"x1": x, "y1": y, "x2": x + w, "y2": y + h, "label": row[label_col].strip()})
    return out


def nodule_boxes(boxes: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Only the ``Nodule`` boxes of :func:`read_boxes` (images without one left out)."""
    out = {k: [b for b in v if b["label"] == NODULE] for k, v in boxes.items()}
    return {k: v for k, v in out.items() if v}
