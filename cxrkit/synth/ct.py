"""The ``ct`` engine: insert a 3-D nodule into a CT inside the lungs, then render the DRR.

Per input CT (:meth:`CTEngine.prepare`): the lung mask (from a label volume, or
:func:`threshold_lung_mask`) and the nodule-free DRR, whose resolved geometry every sample shares
(a nodule inside the lung does not change the body, so :func:`cxrkit.drr.project` resolves the
same geometry).

Per sample (:meth:`CTEngine.insert`):

1. **Place**: draw a lung voxel uniformly; keep it when the ball of the nodule's radius around it
   lies in the lung mask and its projection lies on the detector; then resample the nodule onto
   the CT grid (:func:`resample_nodule`) and check exactly that every voxel it touches is lung.
2. **Blend**: ``HU' = HU + f · max(HU_nodule − HU, 0)`` with ``f`` the voxel's nodule occupancy:
   the nodule replaces lung where it is denser, so vessels crossing it (denser still) stay.
3. **Render** the modified CT with :func:`cxrkit.drr.project` and the user's geometry; project
   the inserted occupancy (on the CT grid) with the same rays (:func:`cxrkit.drr.project_values`):
   that is the thickness map, mm of nodule along each ray, and the image minus the nodule-free
   image is Δμ times it. The 2-D mask is the nodule's silhouette on the same rays
   (:func:`cxrkit.synth.sampling.silhouette`, pixels whose centre ray crosses the nodule's
   surface); its bounding box is the box. The thickness map reaches about one voxel beyond the
   mask: the renderer's linear interpolation spreads the inserted voxels.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrkit.errors import InputError
from cxrkit.synth.sampling import PlacedNodule, Sample, box_from_mask, silhouette

if TYPE_CHECKING:
    from cxrkit.drr import DRR
    from cxrkit.nodules import Nodule
    from cxrkit.synth import SynthConfig
    from cxrkit.synth.known import KnownNodule
    from cxrkit.volume import Volume

log = logging.getLogger(__name__)

LUNG_THRESHOLD_HU = -400.0
""":func:`threshold_lung_mask`: voxels below this, inside the body, are air-filled."""

AIRWAY_HU = -950.0
""":func:`threshold_lung_mask`: in-plane means (7 mm square) below this are airway lumen, not
parenchyma (healthy lung is about −850 HU)."""

AIRWAY_WINDOW_MM = 7.0

LUNG_NAME = re.compile(r"^lung(_(left|right)|_(upper|middle|lower)_lobe_(left|right))?$")
"""Structure names counted as lung in a label volume's table (TotalSegmentator lobes)."""


@dataclass(eq=False)
class CTScene:
    """One prepared CT.

    Attributes:
        volume: the CT in HU (LPS).
        lung: ``(D, H, W)`` bool lung mask on the CT grid.
        lung_method: ``labels`` or ``threshold``.
        base: the DRR without an inserted nodule (its geometry is every sample's geometry).
        known: the CT's own nodules (:mod:`cxrkit.synth.known`) that project onto the detector
            and are at least :data:`cxrkit.synth.known.MIN_DIAMETER_MM`, with their boxes.
        known_mask: ``(rows, cols)`` bool union of their 2-D masks.
        known_all: every known nodule given, for the record (small or off the detector too).
    """

    volume: Volume
    lung: np.ndarray
    lung_method: str
    base: DRR
    known: tuple[PlacedNodule, ...] = ()
    known_mask: np.ndarray | None = None
    known_all: tuple[KnownNodule, ...] = ()


@dataclass(frozen=True, eq=False)
class NoduleBlock:
    """A nodule resampled onto a CT sub-block.

    Attributes:
        slices: ``(d, h, w)`` slices of the CT array the block covers.
        occupancy: float32 fraction of each CT voxel inside the nodule, the block's shape.
        hu: float32 nodule HU where ``occupancy > 0`` (undefined elsewhere).
        clipped: the nodule reaches beyond the CT.
    """

    slices: tuple[slice, slice, slice]
    occupancy: np.ndarray
    hu: np.ndarray
    clipped: bool


def threshold_lung_mask(volume: Volume) -> np.ndarray:
    """Lungs without a label volume: air-filled body regions, airways removed.

    1. ``HU < −400`` inside :func:`cxrkit.drr.body_mask` (which fills the lungs in-plane);
    2. 6-connected components not touching the in-plane border (outside air); keep the largest
       and any other at least a quarter of its size (the other lung when they are separate);
    3. remove airway lumen: where in-plane 7 mm means fall below −950 HU (trachea, main
       bronchi), grown by the same 7 mm window to cover the lumen's wall side.

    Emphysematous lungs (below −950 HU) lose those regions; give a label volume there.

    Returns:
        ``(D, H, W)`` bool.

    Raises:
        InputError: no air-filled region (not a chest CT in HU).
    """
    from scipy import ndimage

    from cxrkit.drr import body_mask

    hu = volume.array
    air = (hu < LUNG_THRESHOLD_HU) & body_mask(volume)
    labels, count = ndimage.label(air)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    border = np.unique(np.concatenate([labels[:, 0].ravel(), labels[:, -1].ravel(),
                                       labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))
    sizes[border] = 0
    if sizes.max() == 0:
        raise InputError("no lungs found: no air-filled region inside the body",
                         hint="is this a chest CT in HU? or give --labels")
    keep = np.flatnonzero(sizes >= 0.25 * sizes.max())
    lung = np.isin(labels, keep)
    window = [max(1, round(AIRWAY_WINDOW_MM / s)) for s in volume.spacing_mm[1:]]
    lumen = ndimage.uniform_filter(hu, size=(1, *window)) < AIRWAY_HU
    lumen = ndimage.binary_dilation(lumen, structure=np.ones((1, *window), dtype=bool))
    return lung & ~lumen


def read_lung_mask(path: str | Path, volume: Volume) -> np.ndarray:
    """The lung mask on a CT's grid from a label volume file.

    Lung ids are the rows of ``<stem>.csv`` beside the file (columns ``id`` and ``structure``)
    whose name matches :data:`LUNG_NAME` (``lung_upper_lobe_left`` … or ``lung_left``); without a
    table the volume must be binary (nonzero = lung). A label volume on another grid is resampled
    (nearest neighbour, through world coordinates).

    Raises:
        InputError: no lung ids, a non-binary volume without a table, or no lung on the CT grid.
    """
    from cxrkit.pipe import stem_of
    from cxrkit.volume import read_volume

    p = Path(path)
    labels = read_volume(p)
    table = p.with_name(stem_of(p) + ".csv")
    if table.is_file():
        with open(table, newline="") as fh:
            ids = [int(r["id"]) for r in csv.DictReader(fh)
                   if (r.get("id") or "").strip().isdigit()
                   and LUNG_NAME.match((r.get("structure") or r.get("name") or "").strip())]
        if not ids:
            raise InputError("the label table names no lung structure", path=str(table),
                             hint="expected names like lung_upper_lobe_left or lung_left")
        inside = np.isin(labels.array, ids)
    else:
        values = np.unique(labels.array)
        if not set(values.tolist()) <= {0.0, 1.0}:
            raise InputError("label volume has several labels but no table of names",
                             path=str(p), hint=f"add {table.name} (id,structure) or give a "
                                               "binary lung mask")
        inside = labels.array > 0
    lung = _on_grid(labels.with_array(inside), volume)
    if not lung.any():
        raise InputError("the label volume has no lung voxels on the CT grid", path=str(p))
    return lung


def _on_grid(mask: Volume, volume: Volume) -> np.ndarray:
    """A mask volume on ``volume``'s grid (as is when the grids match), nearest neighbour."""
    from scipy import ndimage

    if mask.shape == volume.shape and np.allclose(mask.index_to_world(), volume.index_to_world(),
                                                  atol=1e-3):
        return np.asarray(mask.array, dtype=bool)
    to_mask = np.linalg.inv(mask.index_to_world()) @ volume.index_to_world()
    d, h, w = volume.shape
    hh, ww = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.zeros(volume.shape, dtype=bool)
    source = np.asarray(mask.array, dtype=np.uint8)
    for k in range(d):  # slice by slice keeps the coordinate arrays small
        pts = np.stack([ww.ravel(), hh.ravel(), np.full(h * w, k), np.ones(h * w)])
        idx = (to_mask @ pts)[:3][::-1]  # (d, h, w) indices of the mask
        out[k] = ndimage.map_coordinates(source, idx, order=0, cval=0).reshape(h, w) > 0
    return out


def resample_nodule(nodule: Nodule, volume: Volume, center_mm: np.ndarray) -> NoduleBlock:
    """Resample a nodule onto the CT grid with its centre at ``center_mm``.

    Each CT voxel is the mean of ``⌈CT spacing / nodule spacing⌉`` sub-samples per axis
    (trilinear in the nodule grid), so thick slices get the partial-volume average. HU is
    occupancy-weighted: ``HU = Σ f·HU / Σ f``. The nodule's axes are LPS.

    Args:
        nodule: the nodule (its own grid).
        volume: the CT.
        center_mm: ``(3,)`` LPS mm where the nodule's ``center_index`` goes.

    Returns:
        The :class:`NoduleBlock` (possibly empty if the nodule lies outside the CT).
    """
    from scipy import ndimage

    affine = volume.index_to_world()
    spacing_xyz = np.asarray(nodule.spacing_mm[::-1], dtype=np.float64)
    centre_dhw = np.asarray(nodule.center_index, dtype=np.float64)
    support = np.argwhere(nodule.occupancy > 0)
    lo, hi = support.min(0) - 1.0, support.max(0) + 1.0  # (d, h, w) nodule indices
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1])
                        for c in (lo[2], hi[2])])
    world = center_mm + (corners - centre_dhw)[:, ::-1] * spacing_xyz  # (8, 3)
    ct_idx = (np.linalg.inv(affine) @ np.c_[world, np.ones(8)].T)[:3][::-1]  # (3, 8) as (d, h, w)
    start = np.floor(ct_idx.min(1)).astype(int)
    stop = np.ceil(ct_idx.max(1)).astype(int) + 1
    shape = np.array(volume.shape)
    clipped = bool(np.any(start < 0) or np.any(stop > shape))
    start, stop = np.clip(start, 0, shape), np.clip(stop, 0, shape)
    slices = (slice(start[0], stop[0]), slice(start[1], stop[1]), slice(start[2], stop[2]))
    block_shape = tuple(int(v) for v in stop - start)
    if min(block_shape) <= 0:
        empty = np.zeros(block_shape, dtype=np.float32)
        return NoduleBlock(slices, empty, empty, True)
    sub = [max(1, int(np.ceil(s / n - 1e-6))) for s, n in
           zip(volume.spacing_mm, nodule.spacing_mm, strict=True)]  # (d, h, w) sub-samples
    axes = [start[a] + (np.arange(block_shape[a] * sub[a]) + 0.5) / sub[a] - 0.5 for a in range(3)]
    dd, hh, ww = np.meshgrid(*axes, indexing="ij")  # fine grid of CT indices
    pts = np.stack([ww.ravel(), hh.ravel(), dd.ravel(), np.ones(dd.size)])
    nodule_idx = (((affine @ pts)[:3].T - center_mm) / spacing_xyz)[:, ::-1] + centre_dhw
    coords = nodule_idx.T  # (3, N) nodule (d, h, w)
    occ = ndimage.map_coordinates(nodule.occupancy, coords, order=1, cval=0.0)
    weighted = ndimage.map_coordinates(nodule.occupancy * nodule.hu, coords, order=1, cval=0.0)

    def pooled(values: np.ndarray) -> np.ndarray:
        fine = values.reshape(block_shape[0], sub[0], block_shape[1], sub[1], block_shape[2],
                              sub[2])
        return fine.mean(axis=(1, 3, 5))  # block shape

    occ_b, weighted_b = pooled(occ), pooled(weighted)
    with np.errstate(divide="ignore", invalid="ignore"):
        hu = np.where(occ_b > 1e-6, weighted_b / occ_b, 0.0)
    occ_b[occ_b <= 1e-6] = 0.0
    return NoduleBlock(slices, occ_b.astype(np.float32), hu.astype(np.float32), clipped)


def insert_nodule(hu: np.ndarray, block: NoduleBlock) -> np.ndarray:
    """A copy of the CT array with the nodule blended in: ``HU + f · max(HU_nodule − HU, 0)``."""
    out = np.array(hu, dtype=np.float32, copy=True)
    region = out[block.slices]
    region += block.occupancy * np.maximum(block.hu - region, 0.0)
    return out


class CTEngine:
    """The ``ct`` engine (see the module docstring).

    Args:
        config: the shared settings; reads ``geometry``, ``kev``, ``kind``, ``quality``,
            ``center_mm``, ``max_tries``.
    """

    def __init__(self, config: SynthConfig) -> None:
        from cxrkit.geometry import Geometry

        if config.kind not in ("display", "line_integral", "intensity"):
            raise InputError(f"unknown output kind {config.kind!r}",
                             hint="choose display, line_integral or intensity")
        self.config = config
        self.geometry = config.geometry or Geometry()

    def prepare(self, data: Volume, lung: np.ndarray | None = None,
                known: list[KnownNodule] | None = None) -> CTScene:
        """Lung mask (given, else :func:`threshold_lung_mask`) and the DRR without an inserted
        nodule; the CT's own nodules (``known``) are projected into boxes and kept out of the
        placement region (:func:`cxrkit.synth.known.keep_out`).

        Raises:
            InputError: a lung mask of another shape, or an empty one.
        """
        from cxrkit import drr
        from cxrkit.synth.known import keep_out

        if lung is None:
            lung, method = threshold_lung_mask(data), "threshold"
        else:
            lung, method = np.asarray(lung, dtype=bool), "labels"
            if lung.shape != data.shape:
                raise InputError(f"lung mask shape {lung.shape} differs from the CT's "
                                 f"{data.shape}")
        if not lung.any():
            raise InputError("the lung mask is empty")
        known = list(known or [])
        lung = keep_out(lung, data, known)
        base = drr.project(data, self.geometry, kev=self.config.kev,
                           quality=self.config.quality, device=self.config.device)
        placed, mask = self._project_known(known, base)
        return CTScene(data, lung, method, base, placed, mask, tuple(known))

    @staticmethod
    def _project_known(known: list[KnownNodule], base: DRR
                       ) -> tuple[tuple[PlacedNodule, ...], np.ndarray]:
        from cxrkit.synth.known import project_known

        geometry = base.geometry
        union = np.zeros(geometry.detector_px, dtype=bool)
        placed = []
        for nodule in known:
            if not nodule.counted:
                continue
            mask = project_known(nodule, geometry)
            if not mask.any():
                continue  # off the detector: not in the image
            union |= mask
            col, row = geometry.project_points(np.asarray(nodule.center_mm)[None])[0]
            labels = {"diameter_mm": round(nodule.diameter_mm, 2), "marks": nodule.marks,
                      **nodule.attributes}
            placed.append(PlacedNodule(box_from_mask(mask), (float(col), float(row)),
                                       nodule.center_mm, labels,
                                       {"kind": "ct", **nodule.source}, origin="ct"))
        return tuple(placed), union

    def negative(self, scene: CTScene) -> Sample:
        """The DRR without an inserted nodule, in the configured kind.

        Raises:
            InputError: the CT has known nodules on the detector (the image is not negative).
        """
        if scene.known:
            sizes = ", ".join(f"{n.labels['diameter_mm']:g} mm" for n in scene.known)
            source = scene.known[0].source
            where = source.get("table") or source.get("xml") or source.get("mask")
            raise InputError(
                f"no negative from this CT: it has {len(scene.known)} known nodule(s) of "
                f"{sizes} ({where})",
                hint="leave out --negatives for it, or give --known-nodules none if the CT has "
                     "no nodules")
        empty = np.zeros(scene.base.geometry.detector_px, dtype=bool)
        return self._sample(scene, scene.base, empty, None, ())

    def insert(self, scene: CTScene, nodule: Nodule, generator: np.random.Generator) -> Sample:
        """Place ``nodule`` in the lungs, render, and measure its mask and box.

        Raises:
            InputError: a configured centre that does not keep the nodule inside the lung, or
                no valid place found in ``max_tries`` draws.
        """
        from cxrkit import drr
        from cxrkit.volume import Volume

        volume = scene.volume
        center, block = self._place(scene, nodule, generator)
        result = drr.project(volume.with_array(insert_nodule(volume.array, block)),
                             self.geometry, kev=self.config.kev, quality=self.config.quality,
                             device=self.config.device)
        start = [s.start for s in block.slices]
        origin = volume.index_to_world() @ np.array([start[2], start[1], start[0], 1.0])
        occupancy = Volume(block.occupancy, volume.spacing_mm, tuple(origin[:3].tolist()),
                           volume.direction)
        thickness = drr.project_values(occupancy, result.geometry,
                                       quality=self.config.quality, device=self.config.device)
        spacing_xyz = np.asarray(nodule.spacing_mm[::-1], dtype=np.float64)
        corner = center - np.asarray(nodule.center_index[::-1]) * spacing_xyz
        placed_grid = Volume(nodule.occupancy, nodule.spacing_mm, tuple(corner.tolist()))
        mask = silhouette(placed_grid, result.geometry)
        col, row = result.geometry.project_points(center[None])[0]
        placed = PlacedNodule(box_from_mask(mask), (float(col), float(row)),
                              (float(center[0]), float(center[1]), float(center[2])),
                              dict(nodule.labels), dict(nodule.source))
        return self._sample(scene, result, mask, thickness, (placed,))

    def _place(self, scene: CTScene, nodule: Nodule,
               generator: np.random.Generator) -> tuple[np.ndarray, NoduleBlock]:
        """A centre (LPS mm) keeping the nodule in the lung and on the detector, and its block."""
        volume, lung = scene.volume, scene.lung
        if self.config.center_mm is not None:
            center = np.asarray(self.config.center_mm, dtype=np.float64)
            block = resample_nodule(nodule, volume, center)
            if not self._inside(block, lung):
                raise InputError(f"a nodule at {self.config.center_mm} mm does not lie wholly "
                                 "inside the lung mask", hint="choose another --center-mm")
            return center, block
        radius = nodule.radius_mm()
        ball = _ball_offsets(radius, volume.spacing_mm)  # (K, 3) index offsets
        candidates = np.flatnonzero(lung)
        shape = np.array(lung.shape)
        affine = volume.index_to_world()
        for _ in range(self.config.max_tries):
            at = np.array(np.unravel_index(candidates[generator.integers(len(candidates))],
                                           lung.shape))
            pts = at + ball
            if np.any(pts < 0) or np.any(pts >= shape) or not lung[tuple(pts.T)].all():
                continue
            center = (affine @ np.array([at[2], at[1], at[0], 1.0]))[:3]
            if not self._on_detector(scene, center, radius):
                continue
            block = resample_nodule(nodule, volume, center)
            if self._inside(block, lung):
                return center, block
        raise InputError(
            f"found no place for a {2 * radius:.0f} mm nodule inside the lung in "
            f"{self.config.max_tries} tries",
            hint="choose smaller nodules, check the lung mask, or widen the detector")

    @staticmethod
    def _inside(block: NoduleBlock, lung: np.ndarray) -> bool:
        support = block.occupancy > 0
        return (not block.clipped and bool(support.any())
                and bool(lung[block.slices][support].all()))

    @staticmethod
    def _on_detector(scene: CTScene, center: np.ndarray, radius: float) -> bool:
        corners = center + radius * np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1)
                                              for c in (-1, 1)], dtype=np.float64)
        uv = scene.base.geometry.project_points(corners)  # (8, 2) (col, row)
        rows, cols = scene.base.geometry.detector_px
        return bool(np.all(np.isfinite(uv)) and np.all(uv >= 0) and np.all(uv[:, 0] <= cols - 1)
                    and np.all(uv[:, 1] <= rows - 1))

    def _sample(self, scene: CTScene, result: DRR, mask: np.ndarray,
                thickness: np.ndarray | None, placed: tuple[PlacedNodule, ...]) -> Sample:
        from cxrkit import drr

        image, display = result.line_integral, None
        if self.config.kind == "display":
            image, display = drr.to_display(result.line_integral, result.spacing_mm)
        elif self.config.kind == "intensity":
            image = drr.to_intensity(result.line_integral)
        info: dict[str, Any] = {
            "engine": "ct", "geometry": result.geometry.to_dict(), "physics": result.physics,
            "display": display, "lung_mask": scene.lung_method,
            "known_nodules": [n.to_dict() for n in scene.known_all],
        }
        if scene.known_mask is not None:
            mask = mask | scene.known_mask
        return Sample(np.asarray(image, dtype=np.float32), self.config.kind, result.spacing_mm,
                      mask, thickness, placed, info, scene.known)


def _ball_offsets(radius_mm: float, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """``(K, 3)`` integer ``(d, h, w)`` offsets of the voxels whose centres lie within
    ``radius + half the largest voxel side`` of a voxel centre."""
    sp = np.asarray(spacing_mm, dtype=np.float64)
    reach = radius_mm + 0.5 * float(sp.max())
    n = np.ceil(reach / sp).astype(int)
    grid = np.stack(np.meshgrid(*[np.arange(-k, k + 1) for k in n], indexing="ij"), -1)
    grid = grid.reshape(-1, 3)
    return grid[np.linalg.norm(grid * sp, axis=1) <= reach]


ENGINE = CTEngine
