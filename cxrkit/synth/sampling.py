"""What an engine returns, how a sample is seeded, and the one function that draws a sample.

Seeding: sample ``i`` of input ``item_id`` under ``--seed s`` uses
``SeedSequence([s, crc32(item_id), i])``; its first 64-bit word is the recorded ``sample_seed``,
and ``SeedSequence(sample_seed).spawn(3)`` gives three independent streams (subtlety choice, nodule,
placement). So a sample is reproducible from ``sample_seed`` alone, and changing, say, the nodule
options does not move the placement stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from cxrkit.errors import InputError
from cxrkit.synth import SUBTLETY_CONTRAST

if TYPE_CHECKING:
    from cxrkit.geometry import ResolvedGeometry
    from cxrkit.nodules import Nodule
    from cxrkit.synth import Engine
    from cxrkit.volume import Volume

SILHOUETTE_STEP = 0.25
""":func:`silhouette` samples each ray every this fraction of the smallest voxel side."""


@dataclass(frozen=True)
class PlacedNodule:
    """One nodule as it ended up in a sample.

    Attributes:
        box: ``(x1, y1, x2, y2)`` pixels, x = column, y = row, half-open (COCO/torchvision), the
            bounding box of the nodule's 2-D mask.
        center_px: ``(col, row)`` pixel coordinates of the nodule centre's projection.
        center_mm: LPS position of the centre in the CT, mm (None for 2-D engines).
        labels: characteristics (:data:`cxrkit.nodules.LABEL_KEYS`).
        source: where the nodule came from (patch id, or the parametric spec).
        contrast: the factor applied to its density excess over lung (1 = as is).
        origin: ``synth`` (inserted) or ``ct`` (a nodule the CT already had, see
            :mod:`cxrkit.synth.known`).
    """

    box: tuple[int, int, int, int]
    center_px: tuple[float, float]
    center_mm: tuple[float, float, float] | None
    labels: dict[str, Any]
    source: dict[str, Any]
    contrast: float = 1.0
    origin: str = "synth"

    def box_record(self) -> dict[str, Any]:
        """``{x1, y1, x2, y2, label: "nodule", origin, attributes}``, the ``boxes`` entry for
        eval (``origin``: ``synth`` inserted, ``ct`` the CT's own)."""
        x1, y1, x2, y2 = self.box
        return {"x1": x1, "y1": y1, "x2": x2, "y2": y2, "label": "nodule",
                "origin": self.origin, "attributes": dict(self.labels)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``nodule`` record entry (the construction details are left out)."""
        source = {k: v for k, v in self.source.items() if k != "construction"}
        return {
            "center_mm": None if self.center_mm is None else [round(v, 3) for v in self.center_mm],
            "center_px": [round(v, 3) for v in self.center_px],
            "box": list(self.box),
            "characteristics": dict(self.labels),
            "source": source,
            "contrast": self.contrast,
        }


@dataclass(frozen=True, eq=False)
class Sample:
    """One synthesized (or negative) radiograph with its ground truth.

    Attributes:
        image: ``(H, W)`` float32, rows top to bottom, patient's right on the image left; the
            meaning is ``kind``.
        kind: ``display`` ([0, 1], bone bright), ``line_integral`` (∫μ dl) or ``intensity``.
        spacing_mm: pixel size ``(row, col)``, mm.
        mask: ``(H, W)`` bool, the union of the projected masks of the placed and the known
            nodules (all False if none).
        thickness_mm: ``(H, W)`` float32 length of each ray inside the inserted nodules, mm
            (None when an engine has no 3-D nodule).
        nodules: the placed nodules (empty for a negative).
        info: the engine's provenance: geometry, physics, lung-mask method, intensity scale.
        known: the nodules the input already had, projected (``origin="ct"``); an image with
            any is never a negative.
    """

    image: np.ndarray
    kind: str
    spacing_mm: tuple[float, float]
    mask: np.ndarray
    thickness_mm: np.ndarray | None
    nodules: tuple[PlacedNodule, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)
    known: tuple[PlacedNodule, ...] = ()


class NoduleSource(Protocol):
    """A source of nodules (:class:`cxrkit.nodules.Luna16Patches`, ``ParametricSource``)."""

    def draw(self, generator: np.random.Generator) -> Nodule:
        """One nodule."""


def box_from_mask(mask: np.ndarray) -> tuple[int, int, int, int]:
    """The half-open pixel box ``(x1, y1, x2, y2)`` of the True pixels of a ``(H, W)`` mask.

    Raises:
        InputError: the mask is empty.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        raise InputError("the nodule's projected mask is empty",
                         hint="it falls outside the detector or is thinner than half a voxel")
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def silhouette(occupancy: Volume, geometry: ResolvedGeometry, *, level: float = 0.5,
               chunk: int = 1 << 20) -> np.ndarray:
    """The exact 2-D mask of a nodule: pixels whose centre ray passes through it.

    A pixel is inside when the trilinearly interpolated occupancy reaches ``level`` somewhere
    on the ray from the source to its centre (sampled every :data:`SILHOUETTE_STEP` of the
    smallest voxel side). For a partial-volume occupancy, level 0.5 is the nodule's surface, so
    this is its silhouette without the blur that thresholding a projected thickness adds (a
    linear-interpolation renderer spreads a label by about one voxel).

    Args:
        occupancy: fraction of each voxel inside the nodule, placed in the world (LPS).
        geometry: the acquisition.
        level: the occupancy that counts as inside.
        chunk: samples per interpolation call (bounds the memory).

    Returns:
        ``(rows, cols)`` bool on the detector of ``geometry``.
    """
    from scipy import ndimage

    rows, cols = geometry.detector_px
    out = np.zeros((rows, cols), dtype=bool)
    values = np.asarray(occupancy.array, dtype=np.float32)
    support = np.argwhere(values >= level)
    if len(support) == 0:
        return out
    lo, hi = support.min(0) - 1.0, support.max(0) + 1.0  # (d, h, w)
    corners = np.array([[w, h, d, 1.0] for d in (lo[0], hi[0]) for h in (lo[1], hi[1])
                        for w in (lo[2], hi[2])])
    affine = occupancy.index_to_world()
    uv = geometry.project_points((corners @ affine.T)[:, :3])  # (8, 2) (col, row)
    if not np.all(np.isfinite(uv)):
        return out
    c0, r0 = np.maximum(np.floor(uv.min(0)).astype(int), 0)
    c1, r1 = np.minimum(np.ceil(uv.max(0)).astype(int) + 1, (cols, rows))
    if c0 >= c1 or r0 >= r1:
        return out
    rr, cc = np.mgrid[r0:r1, c0:c1].astype(np.float64)
    pixels = (geometry.detector_origin_mm + rr[..., None] * geometry.pixel_mm[0]
              * geometry.row_direction + cc[..., None] * geometry.pixel_mm[1]
              * geometry.col_direction).reshape(-1, 3)  # (P, 3) LPS
    to_index = np.linalg.inv(affine)
    source = to_index[:3, :3] @ geometry.source_mm + to_index[:3, 3]  # (w, h, d)
    dirs = (pixels @ to_index[:3, :3].T + to_index[:3, 3]) - source  # (P, 3), t ∈ [0, 1]
    box_lo, box_hi = lo[::-1] - 0.5, hi[::-1] + 0.5  # (w, h, d)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_a, t_b = (box_lo - source) / dirs, (box_hi - source) / dirs
    t_in = np.nanmax(np.minimum(t_a, t_b), axis=1).min()
    t_out = np.nanmin(np.maximum(t_a, t_b), axis=1).max()
    length_mm = (t_out - t_in) * np.linalg.norm(dirs @ affine[:3, :3].T, axis=1).max()
    steps = max(2, int(np.ceil(length_mm / (SILHOUETTE_STEP * min(occupancy.spacing_mm)))))
    t = np.linspace(t_in, t_out, steps)
    hit = np.zeros(len(dirs), dtype=bool)
    per = max(1, chunk // steps)
    for start in range(0, len(dirs), per):
        part = dirs[start:start + per]
        pts = source + t[None, :, None] * part[:, None, :]  # (p, S, 3) as (w, h, d)
        coords = pts.reshape(-1, 3)[:, ::-1].T  # (3, p·S) as (d, h, w)
        inside = ndimage.map_coordinates(values, coords, order=1, cval=0.0) >= level
        hit[start:start + per] = inside.reshape(len(part), steps).any(axis=1)
    out[r0:r1, c0:c1] = hit.reshape(r1 - r0, c1 - c0)
    return out


def sample_seed(seed: int, item_id: str, index: int) -> int:
    """The 64-bit seed of sample ``index`` of input ``item_id`` under the run's ``seed`` (the
    per-sample scheme of :func:`cxrkit.data.seeds.item_seed`)."""
    from cxrkit.data.seeds import item_seed

    return item_seed(seed, item_id, index=index)


def sample_streams(seed_64: int) -> tuple[np.random.Generator, ...]:
    """Three independent generators ``(subtlety, nodule, placement)`` from a sample seed."""
    children = np.random.SeedSequence(seed_64).spawn(3)
    return tuple(np.random.Generator(np.random.PCG64(c)) for c in children)


MAX_REDRAWS = 100
"""Draws :func:`synthesize` makes for an engine with a size limit (``engine.fits``) before it
gives up on a sample."""


def synthesize(
    engine: Engine,
    scene: Any,
    source: NoduleSource,
    *,
    seed: int,
    subtlety: Sequence[int] = (),
) -> Sample:
    """Draw one sample: pick the subtlety, draw a nodule, scale its contrast, place it.

    Args:
        engine: a prepared engine (see :mod:`cxrkit.synth`).
        scene: ``engine.prepare(...)`` of the input.
        source: where nodules come from.
        seed: the sample seed (:func:`sample_seed`).
        subtlety: allowed subtlety values 1..5 (one is drawn); empty keeps the nodule's density
            and its own subtlety label (None for parametric nodules).

    Returns:
        The :class:`Sample`; its nodule's ``subtlety`` label is the drawn value.

    An engine with a size limit (a ``fits(nodule)`` method: the diffusion engine's window) gets
    nodules drawn again from the same stream until one fits (deterministic under ``seed``); other
    engines get the first draw.

    Raises:
        InputError: a subtlety outside 1..5, or no nodule in :data:`MAX_REDRAWS` draws fits.
    """
    pick, draw, place = sample_streams(seed)
    bad = [s for s in subtlety if s not in SUBTLETY_CONTRAST]
    if bad:
        raise InputError(f"subtlety must be 1..5, got {bad}")
    choice = int(subtlety[int(pick.integers(len(subtlety)))]) if subtlety else None
    nodule = source.draw(draw)
    fits = getattr(engine, "fits", None)  # an engine with a size limit (the diffusion model's)
    if fits is not None:
        for _ in range(MAX_REDRAWS - 1):
            if fits(nodule):
                break
            nodule = source.draw(draw)
        if not fits(nodule):
            raise InputError(f"no nodule of {MAX_REDRAWS} drawn fits the engine's window",
                             hint="give a smaller --diameter-mm (or --spicule-length-mm)")
    if choice is None:
        return engine.insert(scene, nodule, place)
    contrast = SUBTLETY_CONTRAST[choice]
    nodule = replace(nodule.with_contrast(contrast), labels={**nodule.labels, "subtlety": choice})
    sample = engine.insert(scene, nodule, place)
    return replace(sample, nodules=tuple(replace(n, contrast=contrast) for n in sample.nodules))
