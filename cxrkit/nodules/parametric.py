"""Parametric 3-D nodules with physical controls (:class:`NoduleSpec`, :func:`generate_nodule`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cxrkit.errors import InputError
from cxrkit.nodules.nodule import Nodule

TEXTURE_HU = {"solid": 30.0, "part-solid": -600.0, "ground-glass": -600.0}
"""Default body HU per texture (a part-solid nodule is ground glass around a solid core)."""

SOLID_HU = 30.0
"""HU of solid soft tissue: solid nodules, the core of part-solid ones, and spicules."""

INTERNAL_HU = {"soft-tissue": None, "fluid": 5.0, "fat": -100.0, "air": -900.0}
"""HU of the pockets of each LIDC internal structure (soft tissue: none)."""

CALCIUM_HU = {"central": 900.0, "laminated": 700.0, "popcorn": 1000.0, "diffuse": 500.0}
"""HU of calcified voxels per pattern, near cortical bone."""

CALCIFIED_FRACTION = {"central": 0.15, "laminated": 0.3, "popcorn": 0.2, "diffuse": 0.7}
"""Default share of the nodule body's voxels that each calcification pattern calcifies."""

SHAPES = ("sphere", "ellipsoid", "lobulated", "spiculated")
TEXTURES = ("solid", "part-solid", "ground-glass")
INTERNALS = tuple(INTERNAL_HU)
CALCIFICATIONS = ("none", *CALCIUM_HU)

_MOTTLE_HU = {"solid": 15.0, "part-solid": 40.0, "ground-glass": 50.0}
_POCKET_FRACTION = 0.12


@dataclass(frozen=True)
class NoduleSpec:
    """Physical controls of a parametric nodule.

    Attributes:
        diameter_mm: longest diameter of the body (spicules excluded), mm.
        shape: one of :data:`SHAPES`. ``ellipsoid`` has semi-axes ``R, R (1 + e)/2, R e`` for
            ``e = elongation``, randomly oriented; ``lobulated`` modulates the radius with
            ``lobes`` bulges, ``r(u) = R (1 − a + a max_k ((1 + u·v_k)/2)^4)`` with ``a =
            lobulation``; ``spiculated`` is a sphere with ``spicules`` tapered strands of
            ``spicule_length_mm`` beyond its surface, evenly spread (Fibonacci directions,
            randomly rotated).
        texture: one of :data:`TEXTURES`; part-solid nodules get an eccentric solid core holding
            ``solid_fraction`` of the body.
        density_hu: HU of the body (for part-solid: of its ground-glass part); None takes
            :data:`TEXTURE_HU`.
        internal: LIDC internal structure, one of :data:`INTERNALS`; other than soft tissue, 12 %
            of the interior becomes pockets of :data:`INTERNAL_HU`.
        calcification: one of :data:`CALCIFICATIONS`: ``central`` (a central nidus), ``laminated``
            (three concentric shells), ``popcorn`` (clustered chunks), ``diffuse`` (speckles
            through the whole body), at :data:`CALCIUM_HU`.
        calcified_fraction: share of the body's voxels calcified; None takes
            :data:`CALCIFIED_FRACTION`.
        elongation, lobes, lobulation, spicules, spicule_length_mm, solid_fraction: see above.
    """

    diameter_mm: float = 10.0
    shape: str = "sphere"
    texture: str = "solid"
    density_hu: float | None = None
    internal: str = "soft-tissue"
    calcification: str = "none"
    calcified_fraction: float | None = None
    elongation: float = 0.65
    lobes: int = 5
    lobulation: float = 0.3
    spicules: int = 8
    spicule_length_mm: float = 6.0
    solid_fraction: float = 0.3

    def __post_init__(self) -> None:
        for name, value, choices in (("shape", self.shape, SHAPES),
                                     ("texture", self.texture, TEXTURES),
                                     ("internal", self.internal, INTERNALS),
                                     ("calcification", self.calcification, CALCIFICATIONS)):
            if value not in choices:
                raise InputError(f"unknown nodule {name} {value!r}",
                                 hint="choose one of " + ", ".join(choices))
        if not 2.0 <= self.diameter_mm <= 60.0:
            raise InputError(f"nodule diameter {self.diameter_mm} mm is outside 2–60 mm")
        checks: tuple[tuple[str, float, float, float], ...] = (
            ("elongation", self.elongation, 0.2, 1.0), ("lobulation", self.lobulation, 0.0, 0.6),
            ("solid_fraction", self.solid_fraction, 0.0, 1.0),
            ("spicule_length_mm", self.spicule_length_mm, 1.0, 40.0))
        for label, number, low, high in checks:
            if not low <= number <= high:
                raise InputError(f"{label}={number} is outside [{low}, {high}]")
        if self.calcified_fraction is not None and not 0 < self.calcified_fraction <= 1:
            raise InputError(f"calcified_fraction={self.calcified_fraction} is outside (0, 1]")
        if self.shape == "spiculated" and not 1 <= self.spicules <= 40:
            raise InputError(f"a spiculated nodule needs 1–40 spicules, got {self.spicules}")
        if self.shape == "lobulated" and not 2 <= self.lobes <= 12:
            raise InputError(f"a lobulated nodule needs 2–12 lobes, got {self.lobes}")

    def labels(self) -> dict[str, Any]:
        """The characteristics this spec implies, in the ``nodules.csv`` vocabulary.

        ``border_irregular`` follows the table's rule (lobulated or spiculated margin);
        ``inhomogeneous`` is 1 for non-solid texture or non-soft-tissue internal structure.
        """
        return {
            "calcified": int(self.calcification != "none"),
            "border_irregular": int(self.shape in ("lobulated", "spiculated")),
            "texture": self.texture,
            "inhomogeneous": int(self.texture != "solid" or self.internal != "soft-tissue"),
            "subtlety": None,
            "diameter_mm": float(self.diameter_mm),
        }


def generate_nodule(spec: NoduleSpec, generator: np.random.Generator, *,
                    spacing_mm: float = 1.0) -> Nodule:
    """Build a parametric nodule on an isotropic grid.

    The body is a signed distance field ``s(x)`` (mm, negative inside); occupancy is the
    partial-volume ramp ``clip(0.5 − s/h, 0, 1)`` for voxel size ``h``, so the mask
    (occupancy ≥ 0.5) is exactly ``s ≤ 0``. Texture is a Gaussian random field (σ 1.5 mm, zero
    mean and the texture's amplitude over the body) added to the body HU; pockets, the solid
    core and calcifications pick exact shares of the body voxels by rank, so the asked-for
    fractions hold to one voxel.

    Args:
        spec: the controls.
        generator: the only source of randomness (orientation, lobes, spicules, texture).
        spacing_mm: voxel size of the grid, mm.

    Returns:
        The :class:`Nodule`; ``source`` holds the spec and the construction (lobe and spicule
        unit directions ``(x, y, z)``, semi-axes).
    """
    from scipy import ndimage

    h = float(spacing_mm)
    R = spec.diameter_mm / 2.0
    reach = R + (spec.spicule_length_mm if spec.shape == "spiculated" else 0.0) + 2.5 * h
    n = 2 * math.ceil(reach / h) + 1
    c = (n - 1) / 2.0
    z, y, x = (np.mgrid[0:n, 0:n, 0:n].astype(np.float64) - c) * h  # (n, n, n) each, mm
    pts = np.stack([x, y, z], axis=-1)  # (n, n, n, 3) LPS offsets
    construction: dict[str, Any] = {}
    body = _body_sdf(pts, spec, generator, construction)
    sdf = body
    if spec.shape == "spiculated":
        spicule = _spicules_sdf(pts, R, spec, generator, construction, h)
        sdf = np.minimum(body, spicule)
    occupancy = np.clip(0.5 - sdf / h, 0.0, 1.0).astype(np.float32)

    inside = body <= 0  # (n, n, n) the body's mask
    field_ = ndimage.gaussian_filter(generator.standard_normal((n, n, n)), 1.5 / h)
    field_ = (field_ - field_[inside].mean()) / max(float(field_[inside].std()), 1e-12)
    base = spec.density_hu if spec.density_hu is not None else TEXTURE_HU[spec.texture]
    hu = base + _MOTTLE_HU[spec.texture] * field_
    if spec.texture == "part-solid":
        core = _part_solid_core(pts, R, generator)
        sel = _lowest(core, inside, spec.solid_fraction)
        hu[sel] = SOLID_HU + _MOTTLE_HU["solid"] * field_[sel]
    if spec.internal != "soft-tissue":
        interior = body <= -1.5 * h
        pockets = ndimage.gaussian_filter(generator.standard_normal((n, n, n)), 1.0 / h)
        sel = _lowest(pockets, interior, _POCKET_FRACTION)
        hu[sel] = INTERNAL_HU[spec.internal]
    if spec.shape == "spiculated":
        strand = (sdf < body) & (occupancy > 0)
        hu[strand] = SOLID_HU
    if spec.calcification != "none":
        share = spec.calcified_fraction or CALCIFIED_FRACTION[spec.calcification]
        rank = _calcification_rank(spec.calcification, pts, body, generator, h)
        sel = _lowest(rank, inside, share)
        hu[sel] = CALCIUM_HU[spec.calcification] + 30.0 * field_[sel]
    source = {"kind": "parametric", "spec": asdict(spec), "construction": construction,
              "spacing_mm": h}
    return Nodule(hu.astype(np.float32), occupancy, (h, h, h), (c, c, c), spec.labels(), source)


def _random_rotation(generator: np.random.Generator) -> np.ndarray:
    """A uniformly random ``(3, 3)`` rotation (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(generator.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _fibonacci_directions(count: int, rotation: np.ndarray) -> np.ndarray:
    """``(count, 3)`` unit vectors spread evenly over the sphere, then rotated."""
    i = np.arange(count) + 0.5
    polar = np.arccos(1.0 - 2.0 * i / count)
    azimuth = math.pi * (1.0 + math.sqrt(5.0)) * i
    dirs = np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar),
                     np.cos(polar)], axis=1)
    return dirs @ rotation.T


def _body_sdf(pts: np.ndarray, spec: NoduleSpec, generator: np.random.Generator,
              construction: dict[str, Any]) -> np.ndarray:
    """Signed distance (mm, approximate away from the surface) of the nodule body."""
    R = spec.diameter_mm / 2.0
    rho = np.linalg.norm(pts, axis=-1)  # (n, n, n)
    if spec.shape == "ellipsoid":
        e = spec.elongation
        axes = np.array([R, R * (1.0 + e) / 2.0, R * e])
        rot = _random_rotation(generator)
        construction.update(semi_axes_mm=axes.tolist(), axes=rot.T.tolist())
        normalised = np.linalg.norm((pts @ rot) / axes, axis=-1)  # |A⁻¹ Qᵀ x|
        with np.errstate(divide="ignore", invalid="ignore"):
            sdf = np.where(normalised > 0, rho * (1.0 - 1.0 / normalised), -axes.min())
        return sdf
    if spec.shape == "lobulated":
        lobes = _fibonacci_directions(spec.lobes, _random_rotation(generator))
        construction["lobe_directions"] = np.round(lobes, 6).tolist()
        with np.errstate(divide="ignore", invalid="ignore"):
            unit = np.where(rho[..., None] > 0, pts / rho[..., None], 0.0)
        bulge = (((1.0 + unit @ lobes.T) / 2.0) ** 4).max(axis=-1)  # (n, n, n) in [0, 1]
        radius = R * (1.0 - spec.lobulation + spec.lobulation * bulge)
        return rho - radius
    return rho - R  # sphere, and the core of a spiculated nodule


def _spicules_sdf(pts: np.ndarray, R: float, spec: NoduleSpec, generator: np.random.Generator,
                  construction: dict[str, Any], h: float) -> np.ndarray:
    """Signed distance to tapered strands from 0.5 R to R + length along evenly spread rays.

    Radii taper from 1.5 h to 0.9 h: above √3/2 h, so each strand stays one 26-connected
    component of voxels.
    """
    dirs = _fibonacci_directions(spec.spicules, _random_rotation(generator))
    start, length = 0.5 * R, 0.5 * R + spec.spicule_length_mm
    r0, r1 = 1.5 * h, 0.9 * h
    sdf = np.full(pts.shape[:-1], np.inf)
    for v in dirs:
        t = np.clip((pts @ v - start) / length, 0.0, 1.0)  # (n, n, n)
        axis_point = (start + t * length)[..., None] * v
        dist = np.linalg.norm(pts - axis_point, axis=-1)
        sdf = np.minimum(sdf, dist - (r0 + (r1 - r0) * t))
    construction.update(spicule_directions=np.round(dirs, 6).tolist(),
                        spicule_tip_mm=R + spec.spicule_length_mm)
    return sdf


def _part_solid_core(pts: np.ndarray, R: float, generator: np.random.Generator) -> np.ndarray:
    """Distance to an eccentric core centre (up to 0.25 R off-centre): ranks the solid part."""
    offset = generator.standard_normal(3)
    offset *= 0.25 * R * generator.uniform() / max(float(np.linalg.norm(offset)), 1e-12)
    return np.linalg.norm(pts - offset, axis=-1)


def _calcification_rank(pattern: str, pts: np.ndarray, body: np.ndarray,
                        generator: np.random.Generator, h: float) -> np.ndarray:
    """A field whose lowest values, within the body (``body`` = its signed distance), calcify
    first."""
    from scipy import ndimage

    R = float(-body.min())
    if pattern == "central":
        return np.linalg.norm(pts, axis=-1)
    if pattern == "laminated":  # three shells parallel to the surface, by depth rank
        inside = np.flatnonzero(body <= 0)
        q = np.ones(body.size)
        q[inside[np.argsort(body.ravel()[inside], kind="stable")]] = (
            np.arange(len(inside)) / max(len(inside), 1))  # 0 deepest … 1 at the surface
        return np.abs(((q.reshape(body.shape) * 3.0) % 1.0) - 0.5)  # 0 mid-shell
    if pattern == "popcorn":
        count = int(generator.integers(4, 8))
        centres = generator.uniform(-0.55 * R, 0.55 * R, size=(count, 3))
        return np.min([np.linalg.norm(pts - c, axis=-1) for c in centres], axis=0)
    return ndimage.gaussian_filter(generator.standard_normal(body.shape), 0.8 / h)  # diffuse


def _lowest(values: np.ndarray, within: np.ndarray, share: float) -> np.ndarray:
    """Boolean mask of the ``round(share · N)`` lowest ``values`` among the N ``within`` voxels."""
    idx = np.flatnonzero(within)
    count = round(share * len(idx))
    out = np.zeros(values.shape, dtype=bool)
    if count:
        pick = idx[np.argsort(values.ravel()[idx], kind="stable")[:count]]
        out.ravel()[pick] = True
    return out


@dataclass(frozen=True)
class ParametricSource:
    """Draws parametric nodules: each control is a choice list or a ``(low, high)`` range.

    Attributes:
        diameter_mm: uniform range of the body diameter, mm.
        shapes, textures, internals, calcifications: uniform choices.
        spicules: inclusive integer range of the spicule count (spiculated shapes).
        spicule_length_mm: uniform range of the spicule length, mm.
        density_hu: the body HU, or None for the texture's default.
        calcified_fraction: the calcified share, or None for the pattern's default.
    """

    diameter_mm: tuple[float, float] = (6.0, 25.0)
    shapes: tuple[str, ...] = SHAPES
    textures: tuple[str, ...] = TEXTURES
    internals: tuple[str, ...] = ("soft-tissue",)
    calcifications: tuple[str, ...] = ("none",)
    spicules: tuple[int, int] = (5, 12)
    spicule_length_mm: tuple[float, float] = (3.0, 10.0)
    density_hu: float | None = None
    calcified_fraction: float | None = None

    def spec(self, generator: np.random.Generator) -> NoduleSpec:
        """Draw one :class:`NoduleSpec` (always the same number of draws)."""

        def choose(options: Sequence[str]) -> str:
            return options[int(generator.integers(len(options)))]

        return NoduleSpec(
            diameter_mm=round(float(generator.uniform(*self.diameter_mm)), 2),
            shape=choose(self.shapes), texture=choose(self.textures),
            internal=choose(self.internals), calcification=choose(self.calcifications),
            spicules=int(generator.integers(self.spicules[0], self.spicules[1] + 1)),
            spicule_length_mm=round(float(generator.uniform(*self.spicule_length_mm)), 2),
            density_hu=self.density_hu, calcified_fraction=self.calcified_fraction,
        )

    def draw(self, generator: np.random.Generator) -> Nodule:
        """One random nodule."""
        return generate_nodule(self.spec(generator), generator)
