"""The NODE21/LUNA16 CT nodule patches with their LIDC characteristics (``nodules.csv``)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cxrkit.errors import InputError
from cxrkit.nodules.nodule import LABEL_KEYS, Nodule
from cxrkit.nodules.where import parse_where


@dataclass(frozen=True)
class Luna16Patches:
    """The NODE21/LUNA16 CT nodule patches and their LIDC characteristics.

    Attributes:
        root: folder holding ``nodules.csv`` and ``patches/``.
        rows: the selected rows of ``nodules.csv`` (strings, plus ``texture`` = ``texture_class``
            and ``patch`` = the patch file's stem).
        where: the selection expression, if any.
    """

    root: Path
    rows: tuple[dict[str, str], ...]
    where: str | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, where: str | None) -> Luna16Patches:
        """The rows matching a :func:`parse_where` expression (all rows for None or blank)."""
        if not where or not where.strip():
            return self
        test = parse_where(where, columns=self.rows[0].keys() if self.rows else ())
        rows = tuple(r for r in self.rows if test(r))
        if not rows:
            raise InputError(f"no LUNA16 nodule matches --where {where!r}",
                             path=str(self.root), hint="loosen the expression")
        return replace(self, rows=rows, where=where)

    def load(self, index: int) -> Nodule:
        """Read one patch (HU and mask) with its labels.

        The centre is the mask centroid; the occupancy is the mask smoothed by a Gaussian of
        :data:`MASK_SMOOTHING_MM` (its 0.5 level follows the segmentation without voxel steps).
        """
        from cxrkit.volume import read_volume

        row = self.rows[index]
        image = read_volume(self.root / "patches" / row["image_file"])
        mask = read_volume(self.root / "patches" / row["mask_file"])
        if mask.shape != image.shape:
            raise InputError("patch and mask shapes differ", path=row["mask_file"])
        binary = mask.array > 0
        if not binary.any():
            raise InputError("empty nodule mask", path=row["mask_file"])
        centre = np.argwhere(binary).mean(axis=0)
        occupancy = _smooth_mask(binary, image.spacing_mm)
        labels = {
            "calcified": int(float(row["calcified"])),
            "border_irregular": int(float(row["border_irregular"])),
            "texture": row["texture_class"],
            "inhomogeneous": int(float(row["inhomogeneous"])),
            "subtlety": float(row["subtlety"]),
            "diameter_mm": float(row["diameter_mm"]),
        }
        source = {"kind": "luna16", "patch": row["patch"], "patient_id": row.get("patient_id"),
                  "series_instance_uid": row.get("series_instance_uid")}
        return Nodule(image.array.astype(np.float32), occupancy, image.spacing_mm,
                      (float(centre[0]), float(centre[1]), float(centre[2])), labels, source)

    def draw(self, generator: np.random.Generator) -> Nodule:
        """One patch chosen uniformly among the selected rows."""
        return self.load(int(generator.integers(len(self.rows))))


MASK_SMOOTHING_MM = 0.6
""":meth:`Luna16Patches.load`: Gaussian σ that turns a binary voxel mask into a partial-volume
occupancy, so the nodule's surface (occupancy 0.5) is smooth rather than 1 mm voxel steps."""


def _smooth_mask(binary: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """A binary mask as a partial-volume occupancy in [0, 1] (zero where it stays below 1 %)."""
    from scipy import ndimage

    sigma = [MASK_SMOOTHING_MM / s for s in spacing_mm]
    soft = ndimage.gaussian_filter(binary.astype(np.float32), sigma, mode="constant")
    soft[soft < 0.01] = 0.0
    return soft.astype(np.float32)


def read_luna16(root: str | Path) -> Luna16Patches:
    """Open a LUNA16 patch folder (``nodules.csv`` + ``patches/``).

    Raises:
        InputError: the folder, the table, its columns or the patches are missing.
    """
    base = Path(root)
    table = base / "nodules.csv"
    if not table.is_file() or not (base / "patches").is_dir():
        raise InputError("not a LUNA16 nodule folder (needs nodules.csv and patches/)",
                         path=str(base), hint="give --luna16-dir")
    with open(table, newline="") as fh:
        rows = [dict(r) for r in csv.DictReader(fh)]
    needed = {"image_file", "mask_file", "diameter_mm", "texture_class", *LABEL_KEYS} - {"texture"}
    missing = needed - set(rows[0] if rows else ())
    if missing:
        raise InputError(f"nodules.csv lacks columns {sorted(missing)}", path=str(table))
    for row in rows:
        row["texture"] = row["texture_class"]
        row["patch"] = row["image_file"].removesuffix(".mha")
    return Luna16Patches(base, tuple(rows))
