"""The :class:`Nodule`: an HU patch, its occupancy and its labels, on its own LPS-aligned grid."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from cxrkit.errors import InputError

LUNG_HU = -850.0
"""Reference HU of inflated lung parenchyma: the background a nodule's contrast is measured from
(subtlety scaling, and the ``blend`` engine's attenuation excess)."""

CALCIFIED_HU_THRESHOLD = 200.0
"""Voxels above this HU count as calcified when measuring a nodule."""

LABEL_KEYS = ("calcified", "border_irregular", "texture", "inhomogeneous", "subtlety",
              "diameter_mm")
"""The characteristic labels of a nodule, named as in ``nodules.csv``."""


@dataclass(frozen=True, eq=False)
class Nodule:
    """A nodule on its own grid, axes aligned with patient LPS.

    Attributes:
        hu: ``(D, H, W)`` float32 HU; only meaningful where ``occupancy > 0``.
        occupancy: ``(D, H, W)`` float32 in [0, 1], the fraction of each voxel inside the nodule
            (partial-volume edges: analytic for parametric nodules, a smoothed mask for real
            patches).
        spacing_mm: voxel size ``(D, H, W)`` = ``(z, y, x)``, mm.
        center_index: ``(d, h, w)`` continuous index of the point placed at the chosen location
            (the mask centroid of a real patch; the centre of the body of a parametric one).
        labels: the characteristics (:data:`LABEL_KEYS`).
        source: JSON-ready description of where it came from (patch id, or the spec and its
            construction: lobe and spicule directions).
    """

    hu: np.ndarray
    occupancy: np.ndarray
    spacing_mm: tuple[float, float, float]
    center_index: tuple[float, float, float]
    labels: dict[str, Any]
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def mask(self) -> np.ndarray:
        """``(D, H, W)`` bool, the voxels at least half inside the nodule."""
        return self.occupancy >= 0.5

    def offsets_mm(self) -> np.ndarray:
        """``(N, 3)`` LPS offsets ``(x, y, z)`` in mm of the support voxels from the centre."""
        idx = np.argwhere(self.occupancy > 0).astype(np.float64)  # (N, 3) as (d, h, w)
        return (idx - np.asarray(self.center_index))[:, ::-1] * np.asarray(self.spacing_mm[::-1])

    def radius_mm(self) -> float:
        """Distance from the centre to the farthest support voxel's far corner, mm."""
        offsets = self.offsets_mm()
        reach = float(np.linalg.norm(offsets, axis=1).max()) if len(offsets) else 0.0
        return reach + 0.5 * float(np.linalg.norm(self.spacing_mm))

    def with_contrast(self, factor: float, *, background_hu: float = LUNG_HU) -> Nodule:
        """The same nodule with its density excess over ``background_hu`` scaled.

        ``HU' = background + factor · (HU − background)``; the shape, mask and labels are kept.
        This is the physical knob behind ``--subtlety`` (factor < 1 is fainter).
        """
        if factor < 0:
            raise InputError(f"contrast factor must be >= 0, got {factor}")
        hu = (background_hu + factor * (self.hu - background_hu)).astype(np.float32)
        return replace(self, hu=hu)

    def calcified_fraction(self) -> float:
        """Share of mask voxels above :data:`CALCIFIED_HU_THRESHOLD`."""
        mask = self.mask
        return float((self.hu[mask] > CALCIFIED_HU_THRESHOLD).mean()) if mask.any() else 0.0
