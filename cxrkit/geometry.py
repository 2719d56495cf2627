"""Cone-beam X-ray acquisition geometry in patient LPS millimetres.

A :class:`Geometry` describes an acquisition the way a radiographer would: a standard view (PA, AP,
LAT, RLAT), the source-to-image distance, the detector, and optional extra rotation, translation and
isocentre. :meth:`Geometry.resolve` turns it, given the body's bounding box, into a
:class:`ResolvedGeometry`: concrete source and detector positions and the 3×4 projection matrix.

Frames and conventions (fixed and tested):

* World points are patient **LPS** mm (DICOM): +x toward the patient's left, +y posterior,
  +z superior, the frame of :class:`cxrkit.volume.Volume`.
* The detector image has shape ``(rows, cols)``; pixel ``(r, c)`` has its centre at integer
  indices, ``detector_origin_mm + r * pixel_mm[0] * row_direction + c * pixel_mm[1] *
  col_direction``. The principal ray (source through the isocentre) hits the detector centre.
* Rows run superior → inferior in every view.
* **PA** (posterior-anterior): source behind the patient (+y side), detector in front. **AP**: the
  opposite. For both, columns run from the patient's right to their left, so the patient's right is
  on the image left and the heart on the image right (the anatomical display of a chest film). AP is
  therefore *not* PA rotated by 180° about z, which would mirror the image.
* **LAT** (left lateral): source on the patient's right, detector on their left; anterior on the
  image left. **RLAT**: source on the left, detector on the right; anterior on the image right.
  Both laterals are displayed as seen from the detector side, so ``PA`` with
  ``rotation_deg=(0, 0, 90)`` equals ``LAT`` and with ``(0, 0, -90)`` equals ``RLAT``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np

from cxrkit.errors import GeometryError
from cxrkit.io import MAX_PIXEL_MM, MIN_PIXEL_MM

DETECTOR_SIZE_MM = 430.0
"""Side of the default square detector (17 inch, a standard chest cassette)."""

DETECTOR_GAP_MM = 15.0
"""With ``sod_mm=None``: distance from the body surface to the detector plane, in mm."""


class View(NamedTuple):
    """A standard projection, as LPS unit vectors before any extra rotation."""

    beam: tuple[float, float, float]
    """Direction from the source to the detector centre."""
    rows: tuple[float, float, float]
    """Direction of increasing row index on the detector."""
    cols: tuple[float, float, float]
    """Direction of increasing column index on the detector."""
    description: str


MAX_DETECTOR_PX = 8192
"""The most detector pixels per side (``--size``): a 430 mm detector at 0.052 mm; a larger
request is refused before anything is allocated."""

VIEWS: dict[str, View] = {
    "PA": View((0.0, -1.0, 0.0), (0.0, 0.0, -1.0), (1.0, 0.0, 0.0),
               "posterior-anterior: source behind, detector in front; "
               "patient's right on image left"),
    "AP": View((0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (1.0, 0.0, 0.0),
               "anterior-posterior: source in front, detector behind; "
               "patient's right on image left"),
    "LAT": View((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0),
                "left lateral: source on the patient's right, detector on the left; anterior on "
                "image left"),
    "RLAT": View((-1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, -1.0, 0.0),
                 "right lateral: source on the patient's left, detector on the right; anterior on "
                 "image right"),
}
"""The standard views by name (see the module docstring for the display convention)."""


def rotation_matrix(rotation_deg: Sequence[float]) -> np.ndarray:
    """The ``(3, 3)`` rotation ``R = Rz @ Ry @ Rx`` for angles ``(ax, ay, az)`` in degrees.

    Each factor is a right-handed rotation about the LPS axis of its name, so ``Rx`` acts first.
    For example ``(0, 0, 90)`` turns +y (posterior) into -x (the patient's right).
    """
    ax, ay, az = (math.radians(float(a)) for a in rotation_deg)
    cx, sx, cy, sy, cz, sz = (math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay),
                              math.cos(az), math.sin(az))
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    rz = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class Geometry:
    """A cone-beam chest X-ray acquisition, before it is fitted to a patient.

    The source–detector assembly is first placed for ``view`` around the isocentre, then rotated
    by ``rotation_deg`` about the isocentre, then moved by ``translation_mm``.

    Attributes:
        view: one of :data:`VIEWS`: "PA", "AP", "LAT" (left lateral) or "RLAT".
        sid_mm: source-to-image (detector) distance along the principal ray, mm.
        sod_mm: source-to-isocentre distance, mm, in (0, sid); None places the detector
            :data:`DETECTOR_GAP_MM` beyond the body surface on the detector side.
        detector_px: detector size in pixels, ``(rows, cols)``.
        pixel_mm: detector pitch ``(row, col)`` in mm at the detector; None divides a
            :data:`DETECTOR_SIZE_MM` square detector by ``detector_px``.
        rotation_deg: extra rotation of the assembly about the isocentre, degrees about the LPS
            x, y, z axes, applied as ``Rz @ Ry @ Rx`` (see :func:`rotation_matrix`).
        translation_mm: shift of the whole assembly (source and detector) in LPS mm.
        isocenter_mm: LPS point the principal ray passes through; None is the centre of the body's
            bounding box.
    """

    view: str = "PA"
    sid_mm: float = 1800.0
    sod_mm: float | None = None
    detector_px: tuple[int, int] = (1024, 1024)
    pixel_mm: tuple[float, float] | None = None
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    isocenter_mm: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            raise GeometryError(f"unknown view {self.view!r}",
                                hint="choose one of " + ", ".join(VIEWS))
        sid = _positive("sid_mm", self.sid_mm, "the source-to-detector distance, e.g. 1800")
        if self.sod_mm is not None:
            sod = _positive("sod_mm", self.sod_mm, "the source-to-isocentre distance")
            if sod >= sid:
                raise GeometryError(
                    f"sod_mm={sod:g} must be smaller than sid_mm={sid:g}",
                    hint="the isocentre lies between the source and the detector; "
                         "or leave sod_mm unset to place the detector behind the body",
                )
            object.__setattr__(self, "sod_mm", sod)
        px = _pair("detector_px", self.detector_px)
        if any(v != int(v) or v < 1 for v in px):
            raise GeometryError(f"detector_px must be two whole numbers >= 1, got {px}",
                                hint="give (rows, cols), e.g. (1024, 1024)")
        if max(px) > MAX_DETECTOR_PX:
            raise GeometryError(f"detector_px {int(px[0])}x{int(px[1])} is over the limit of "
                                f"{MAX_DETECTOR_PX} pixels per side",
                                hint=f"give at most {MAX_DETECTOR_PX} per side")
        object.__setattr__(self, "sid_mm", sid)
        object.__setattr__(self, "detector_px", (int(px[0]), int(px[1])))
        if self.pixel_mm is not None:
            pitch = _pair("pixel_mm", self.pixel_mm)
            for v in pitch:
                _positive("pixel_mm", v, "the detector pitch (row, col) in mm, e.g. (0.42, 0.42)")
                if not MIN_PIXEL_MM <= v <= MAX_PIXEL_MM:
                    raise GeometryError(f"pixel_mm {v:g} is outside {MIN_PIXEL_MM:g}.."
                                        f"{MAX_PIXEL_MM:g} mm (cxrkit.io's pixel spacing limits)")
            object.__setattr__(self, "pixel_mm", pitch)
        object.__setattr__(self, "rotation_deg", _triple("rotation_deg", self.rotation_deg))
        object.__setattr__(self, "translation_mm", _triple("translation_mm", self.translation_mm))
        if self.isocenter_mm is not None:
            object.__setattr__(self, "isocenter_mm", _triple("isocenter_mm", self.isocenter_mm))

    def resolve(self, body_bounds_mm: np.ndarray) -> ResolvedGeometry:
        """Fit the automatic fields to a body and compute source and detector positions.

        Args:
            body_bounds_mm: ``(2, 3)`` LPS min / max corner of the body's bounding box, mm.

        Returns:
            The resolved geometry.

        Raises:
            GeometryError: invalid bounds, an SID too short for the body with ``sod_mm=None``,
                or a source inside the body's bounding box.
        """
        bounds = np.asarray(body_bounds_mm, dtype=np.float64)
        if bounds.shape != (2, 3) or not np.isfinite(bounds).all() or (bounds[0] > bounds[1]).any():
            raise GeometryError(f"body bounds must be a (2, 3) min/max box in mm, got {bounds!r}")
        iso = np.array(self.isocenter_mm if self.isocenter_mm is not None else bounds.mean(0))
        view = VIEWS[self.view]
        rot = rotation_matrix(self.rotation_deg)
        beam, rows, cols = (rot @ np.array(v) for v in (view.beam, view.rows, view.cols))
        corners = np.array([[bounds[i, 0], bounds[j, 1], bounds[k, 2]]
                            for i in (0, 1) for j in (0, 1) for k in (0, 1)])
        depth = (corners - iso) @ beam  # (8,) mm along the beam from the isocentre
        if self.sod_mm is None:
            sod = self.sid_mm - (float(depth.max()) + DETECTOR_GAP_MM)
            if sod <= 0:
                raise GeometryError(
                    f"sid_mm={self.sid_mm:g} is too short: the body reaches "
                    f"{depth.max():.0f} mm beyond the isocentre toward the detector",
                    hint="increase sid_mm or give sod_mm explicitly",
                )
        else:
            sod = self.sod_mm
        shift = np.array(self.translation_mm)
        source = iso - sod * beam + shift
        if np.all(source > bounds[0]) and np.all(source < bounds[1]):
            raise GeometryError(
                f"the X-ray source at {np.round(source, 1).tolist()} mm lies inside the body",
                hint="increase sod_mm (source-to-isocentre distance) or leave it unset",
            )
        rows_px, cols_px = self.detector_px
        pitch = self.pixel_mm or (DETECTOR_SIZE_MM / rows_px, DETECTOR_SIZE_MM / cols_px)
        return ResolvedGeometry(
            view=self.view,
            sid_mm=float(self.sid_mm),
            sod_mm=float(sod),
            detector_px=(rows_px, cols_px),
            pixel_mm=(float(pitch[0]), float(pitch[1])),
            rotation_deg=self.rotation_deg,
            translation_mm=self.translation_mm,
            isocenter_mm=(float(iso[0]), float(iso[1]), float(iso[2])),
            source_mm=source,
            detector_center_mm=source + self.sid_mm * beam,
            row_direction=rows,
            col_direction=cols,
        )


@dataclass(frozen=True, eq=False)
class ResolvedGeometry:
    """A concrete acquisition: every number needed to cast rays or project points.

    Attributes:
        view: the view name it was made from.
        sid_mm: source-to-detector distance along the principal ray, mm.
        sod_mm: source-to-isocentre distance (before ``translation_mm``), mm.
        detector_px: ``(rows, cols)``.
        pixel_mm: detector pitch ``(row, col)`` at the detector, mm.
        rotation_deg: the extra rotation applied, degrees (see :func:`rotation_matrix`).
        translation_mm: the assembly shift applied, LPS mm.
        isocenter_mm: the isocentre, LPS mm.
        source_mm: ``(3,)`` source position, LPS mm.
        detector_center_mm: ``(3,)`` centre of the detector, LPS mm.
        row_direction: ``(3,)`` unit vector of increasing row index.
        col_direction: ``(3,)`` unit vector of increasing column index.
    """

    view: str
    sid_mm: float
    sod_mm: float
    detector_px: tuple[int, int]
    pixel_mm: tuple[float, float]
    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    isocenter_mm: tuple[float, float, float]
    source_mm: np.ndarray
    detector_center_mm: np.ndarray
    row_direction: np.ndarray
    col_direction: np.ndarray

    @property
    def beam_direction(self) -> np.ndarray:
        """``(3,)`` unit vector from the source to the detector centre (the detector normal)."""
        d = self.detector_center_mm - self.source_mm
        return d / np.linalg.norm(d)

    @property
    def detector_origin_mm(self) -> np.ndarray:
        """``(3,)`` LPS centre of pixel ``(0, 0)`` (top left), mm."""
        rows, cols = self.detector_px
        return (self.detector_center_mm
                - (rows - 1) / 2 * self.pixel_mm[0] * self.row_direction
                - (cols - 1) / 2 * self.pixel_mm[1] * self.col_direction)

    @property
    def magnification(self) -> float:
        """Geometric magnification of the isocentre plane, ``sid / sod``."""
        return self.sid_mm / self.sod_mm

    @property
    def pixel_at_isocenter_mm(self) -> tuple[float, float]:
        """Detector pitch ``(row, col)`` scaled back to the isocentre plane, mm."""
        return (self.pixel_mm[0] / self.magnification, self.pixel_mm[1] / self.magnification)

    def pixel_centers_mm(self) -> np.ndarray:
        """``(rows, cols, 3)`` float64 LPS positions of every pixel centre, mm."""
        rows, cols = self.detector_px
        r = np.arange(rows, dtype=np.float64)[:, None, None] * self.pixel_mm[0]
        c = np.arange(cols, dtype=np.float64)[None, :, None] * self.pixel_mm[1]
        return self.detector_origin_mm + r * self.row_direction + c * self.col_direction

    def projection_matrix(self) -> np.ndarray:
        """The ``(3, 4)`` matrix ``P`` mapping homogeneous LPS points to detector pixels.

        For a point ``X`` (mm), ``u = P @ [X, 1]`` gives column ``u[0] / u[2]`` and row
        ``u[1] / u[2]``, pixel centres at integers; ``u[2]`` is the depth of ``X`` from the source
        along the principal ray (mm), positive in front of the source.
        """
        n = self.beam_direction
        s = self.source_mm
        to_origin = self.detector_origin_mm - s
        depth = np.append(n, -n @ s)  # (4,)
        rows = []
        for axis, pitch in ((self.col_direction, self.pixel_mm[1]),
                            (self.row_direction, self.pixel_mm[0])):
            rows.append((self.sid_mm * np.append(axis, -axis @ s) - (to_origin @ axis) * depth)
                        / pitch)
        return np.stack([rows[0], rows[1], depth])

    def project_points(self, points_mm: np.ndarray) -> np.ndarray:
        """Project LPS points onto the detector.

        Args:
            points_mm: ``(N, 3)`` LPS positions, mm.

        Returns:
            ``(N, 2)`` float64 ``(col, row)`` pixel coordinates (NaN for points behind the source).
        """
        pts = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
        u = np.c_[pts, np.ones(len(pts))] @ self.projection_matrix().T  # (N, 3)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = u[:, :2] / u[:, 2:]
        out[u[:, 2] <= 0] = np.nan
        return out

    def supersampled(self, factor: int) -> ResolvedGeometry:
        """The same detector area with ``factor`` × more pixels per side.

        Box-averaging each ``factor × factor`` block of an image made with the result gives an
        image on this geometry's pixel grid.
        """
        return replace(
            self,
            detector_px=(self.detector_px[0] * factor, self.detector_px[1] * factor),
            pixel_mm=(self.pixel_mm[0] / factor, self.pixel_mm[1] / factor),
        )

    def to_dict(self) -> dict[str, Any]:
        """Every resolved number as JSON-ready Python types (mm, degrees)."""
        rnd = _rounded
        return {
            "view": self.view,
            "sid_mm": round(self.sid_mm, 6),
            "sod_mm": round(self.sod_mm, 6),
            "magnification": round(self.magnification, 6),
            "detector_px": list(self.detector_px),
            "pixel_mm": rnd(self.pixel_mm),
            "pixel_at_isocenter_mm": rnd(self.pixel_at_isocenter_mm),
            "detector_size_mm": rnd(np.multiply(self.detector_px, self.pixel_mm)),
            "rotation_deg": rnd(self.rotation_deg),
            "translation_mm": rnd(self.translation_mm),
            "isocenter_mm": rnd(self.isocenter_mm),
            "source_mm": rnd(self.source_mm),
            "detector_center_mm": rnd(self.detector_center_mm),
            "detector_origin_mm": rnd(self.detector_origin_mm),
            "row_direction": rnd(self.row_direction),
            "col_direction": rnd(self.col_direction),
            "beam_direction": rnd(self.beam_direction),
            "projection_matrix": [rnd(row) for row in self.projection_matrix()],
        }


def _rounded(values: Any) -> list[float]:
    """Flatten to a list of floats rounded to 1e-6 (mm, degrees or pixels)."""
    return [round(float(x), 6) for x in np.ravel(values)]


def _positive(name: str, value: Any, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise GeometryError(f"{name} must be a number, got {value!r}",
                            hint=f"give {what}") from None
    if not math.isfinite(v) or v <= 0:
        raise GeometryError(f"{name} must be a positive number of mm, got {value!r}",
                            hint=f"give {what}")
    return v


def _pair(name: str, value: Any) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise GeometryError(f"{name} must be a pair (rows, cols), got {value!r}") from None
    return (a, b)


def _triple(name: str, value: Any) -> tuple[float, float, float]:
    try:
        x, y, z = (float(v) for v in value)
    except (TypeError, ValueError):
        raise GeometryError(f"{name} must be three numbers (x, y, z), got {value!r}") from None
    if not all(math.isfinite(v) for v in (x, y, z)):
        raise GeometryError(f"{name} must be finite, got {value!r}")
    return (x, y, z)
