"""Digitally reconstructed radiographs: CT attenuation physics and ray integration.

The pipeline of :func:`project`:

1. **Body mask** (:func:`body_mask`): the largest connected component above -500 HU with its
   holes filled, computed on a 2×4×4-downsampled grid. It removes the CT couch, ECG leads and
   the padding outside the scan circle; the volume is then cropped to the body's bounding box.
2. **HU → μ** (:func:`hu_to_mu`): a bilinear water/bone model at one effective photon energy.
3. **Line integrals** p = ∫μ dl (unitless) along the ray from the source to every detector pixel
   centre, by one of :data:`METHODS`:

   * ``"trilinear"`` (default): Joseph's method as a slab projector. The voxel-index axis most
     aligned with the beam is chosen; the ray's crossing point with every voxel plane normal to it
     is affine in the plane index and is sampled by 2-D bilinear interpolation
     (``torch.nn.functional.grid_sample``), times the ray's path length per plane. With
     ``quality="fast"``, ``k`` consecutive planes are first averaged into thick slabs, with ``k``
     (1 to 8) chosen so that a ray drifts at most one voxel sideways within a slab. When the
     detector pixel, scaled to the isocentre, is more than 1.5 voxels wide, rays are cast on a
     2× finer detector and box-averaged (anti-aliasing).
   * ``"siddon"``: the exact, slow reference (:mod:`cxrkit.siddon`).

4. Display helpers: :func:`to_intensity` (Beer–Lambert ``exp(-p)``) and :func:`to_display` (a
   windowed, optionally unsharp-masked image, bone bright).

All renderers work in voxel-index space (rays mapped through the inverse of
:meth:`Volume.index_to_world`), so any direction matrix gives the same image of the same anatomy.
On ``device="cpu"`` the trilinear renderer runs in numpy (:func:`render_slabs_numpy`: the same
samples, no torch import, one thread); other devices and Siddon use torch at its current thread
count. Nothing changes global settings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from cxrkit.errors import GeometryError, InputError
from cxrkit.geometry import Geometry, ResolvedGeometry
from cxrkit.siddon import index_space_rays, ray_box_interval, render_siddon
from cxrkit.volume import Volume

if TYPE_CHECKING:
    import torch

# --- physics -----------------------------------------------------------------------------------

KEV_TABLE = (30.0, 40.0, 50.0, 60.0, 80.0, 100.0, 150.0)
"""Photon energies (keV) of the attenuation tables below."""

WATER_MASS_ATTENUATION = (0.3756, 0.2683, 0.2269, 0.2059, 0.1837, 0.1707, 0.1505)
"""μ/ρ of liquid water, cm²/g, with coherent scattering (NIST XCOM; Hubbell & Seltzer,
NISTIR 5632, table 4), at :data:`KEV_TABLE`. Density 1.0 g/cm³."""

BONE_MASS_ATTENUATION = (1.331, 0.6655, 0.4242, 0.3148, 0.2229, 0.1855, 0.1480)
"""μ/ρ of cortical bone (ICRU-44), cm²/g, same source and energies."""

BONE_DENSITY_G_CM3 = 1.92
"""Density of cortical bone (ICRU-44)."""

HU_BONE = 1500.0
"""CT number taken for cortical bone: μ reaches the cortical-bone value at this HU."""

BODY_THRESHOLD_HU = -500.0
"""Voxels above this are body (or couch) for :func:`body_mask`."""

MASK_DOWNSAMPLE = (2, 4, 4)
"""``(D, H, W)`` block size of the grid :func:`body_mask` works on."""

MASK_THICKNESS_FRACTION = 0.5
""":func:`thickness_to_mask`: a pixel is inside a label where its projected thickness exceeds
this fraction of the smallest voxel size (half a voxel of tissue along the ray)."""

MAX_SLAB_PLANES = 8
"""Most voxel planes averaged into one thick slab (``quality="fast"``)."""

ANTIALIAS_RATIO = 1.5
"""Supersample 2× when the pixel at the isocentre exceeds this many (smallest) voxel sizes."""

CHUNK_SAMPLES = 1 << 18
"""Interpolated samples per ``grid_sample`` call (keeps the working set in cache)."""


def attenuation_coefficients(kev: float) -> tuple[float, float]:
    """Linear attenuation of water and cortical bone at an effective energy.

    Args:
        kev: effective photon energy in keV, within :data:`KEV_TABLE` (30–150).

    Returns:
        ``(mu_water, mu_bone)`` in 1/mm, log-log interpolated in the NIST tables.

    Raises:
        InputError: energy outside the table.
    """
    if not (KEV_TABLE[0] <= kev <= KEV_TABLE[-1]):
        raise InputError(f"effective energy {kev} keV is outside the tabulated range",
                         hint=f"choose --kev between {KEV_TABLE[0]:g} and {KEV_TABLE[-1]:g}")
    log_e = math.log(kev)
    table = np.log(KEV_TABLE)

    def interp(values: tuple[float, ...]) -> float:
        return math.exp(float(np.interp(log_e, table, np.log(values))))

    # cm²/g × g/cm³ = 1/cm; / 10 → 1/mm
    return interp(WATER_MASS_ATTENUATION) / 10.0, interp(BONE_MASS_ATTENUATION) * (
        BONE_DENSITY_G_CM3 / 10.0)


@overload
def hu_to_mu(hu: np.ndarray, kev: float = ...) -> np.ndarray: ...
@overload
def hu_to_mu(hu: torch.Tensor, kev: float = ...) -> torch.Tensor: ...
def hu_to_mu(hu: torch.Tensor | np.ndarray, kev: float = 60.0) -> torch.Tensor | np.ndarray:
    """Convert Hounsfield units to linear attenuation with a bilinear water/bone model.

    ``μ = μw (1 + HU/1000)`` for HU ≤ 0 and ``μw + (μb - μw) HU / HU_bone`` above, clamped at 0,
    so air (-1000 HU) and the padding below it (-1024, -2048, -3024) are 0.

    Args:
        hu: any-shape HU, a torch tensor or a numpy array (not modified).
        kev: effective energy (see :func:`attenuation_coefficients`); 60 keV ≈ a 120 kVp chest.

    Returns:
        float32 μ in 1/mm, same shape, type and device as ``hu``.
    """
    mu_water, mu_bone = attenuation_coefficients(kev)
    if isinstance(hu, np.ndarray):  # numpy in, numpy out: no torch import
        return _hu_to_mu_inplace(np.array(hu, dtype=np.float32, copy=True), kev)
    import torch

    hu = hu.float()
    slope = torch.where(hu > 0, (mu_bone - mu_water) / HU_BONE, mu_water / 1000.0)
    return slope.mul_(hu).add_(mu_water).clamp_(min=0.0)


def _hu_to_mu_inplace(values: np.ndarray, kev: float) -> np.ndarray:
    """:func:`hu_to_mu` of a float32 array, overwriting it: ``μw + a·HU + (b − a)·max(HU, 0)``
    with ``a = μw / 1000`` and ``b = (μb − μw) / HU_bone``, clamped at 0."""
    mu_water, mu_bone = attenuation_coefficients(kev)
    below, above = np.float32(mu_water / 1000.0), np.float32((mu_bone - mu_water) / HU_BONE)
    if not values.flags.c_contiguous:
        values = np.ascontiguousarray(values)
    flat = values.reshape(-1)  # a view: the updates land in ``values``
    chunk = 1 << 18  # in cache-sized pieces: one pass over memory, no large temporary
    bone = np.empty(min(chunk, flat.size), dtype=np.float32)
    for start in range(0, flat.size, chunk):
        part = flat[start:start + chunk]
        extra = bone[:len(part)]
        np.maximum(part, np.float32(0.0), out=extra)
        extra *= above - below
        part *= below
        part += np.float32(mu_water)
        part += extra
        np.maximum(part, np.float32(0.0), out=part)
    return values


# --- body mask ---------------------------------------------------------------------------------


def body_mask(volume: Volume) -> np.ndarray:
    """The patient's body, without couch, leads or padding.

    Found on a :data:`MASK_DOWNSAMPLE` grid (about 3 × 3 × 5 mm on a chest CT): the block means
    above :data:`BODY_THRESHOLD_HU`, with the holes in each axial slice filled (lungs, airways,
    bowel gas), opened in-plane (cutting leads and thin contacts), reduced to the largest
    connected component, grown by one coarse voxel in-plane, then upsampled (nearest).

    Args:
        volume: CT in HU.

    Returns:
        ``(D, H, W)`` bool mask (all False if nothing exceeds the threshold).
    """
    coarse = _coarse_body(volume.array, remove_table=True)
    return _upsample(coarse, [(0, n) for n in volume.shape])


def _coarse_body(hu: np.ndarray, *, remove_table: bool) -> np.ndarray:
    """``(d, h, w)`` bool mask on the :data:`MASK_DOWNSAMPLE` grid (ceil division)."""
    from scipy import ndimage

    coarse = _block_mean(np.asarray(hu), MASK_DOWNSAMPLE) > BODY_THRESHOLD_HU
    if not remove_table or not coarse.any():
        return coarse
    in_plane = np.zeros((3, 3, 3), dtype=bool)  # 4-connectivity within axial slices only
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    # Fill holes slice by slice (lungs, airways, bowel gas): background regions of a slice that
    # do not touch that slice's border.
    background, _ = ndimage.label(~coarse, structure=in_plane)
    edges = np.concatenate([background[:, [0, -1], :].ravel(), background[:, :, [0, -1]].ravel()])
    coarse = ~np.isin(background, edges[edges > 0])
    opened = ndimage.binary_opening(coarse, structure=in_plane)  # cut leads and thin contacts
    labels, _ = ndimage.label(opened if opened.any() else coarse)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndimage.binary_dilation(labels == int(sizes.argmax()), structure=in_plane)


def _block_mean(values: np.ndarray, block: tuple[int, ...]) -> np.ndarray:
    """Means over ``block``-sized tiles (the last, partial tile of an axis over what it holds),
    as torch's ``avg_pool3d(..., ceil_mode=True)``: strided views summed in float32."""
    out = np.asarray(values, dtype=np.float32)
    for axis in reversed(range(out.ndim)):  # the last axis first: it shrinks the most
        f, n = block[axis], out.shape[axis]
        if f == 1:
            continue

        def every(i: int, source: np.ndarray = out, axis: int = axis, f: int = f) -> np.ndarray:
            return source[tuple(slice(i, None, f) if a == axis else slice(None)
                                for a in range(source.ndim))]

        total = every(0).copy()
        for i in range(1, f):
            part = every(i)
            total[tuple(slice(0, part.shape[axis]) if a == axis else slice(None)
                        for a in range(total.ndim))] += part
        starts = np.arange(0, n, f)
        shape = [1] * out.ndim
        shape[axis] = len(starts)
        total /= (np.minimum(starts + f, n) - starts).astype(np.float32).reshape(shape)
        out = total
    return out


def _coarse_ranges(coarse: np.ndarray, shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """Full-resolution ``[start, stop)`` index range per axis covering a coarse mask."""
    ranges = []
    for axis, (f, n) in enumerate(zip(MASK_DOWNSAMPLE, shape, strict=True)):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(coarse.any(axis=other))
        ranges.append((int(hits[0]) * f, min(n, (int(hits[-1]) + 1) * f)))
    return ranges


def _upsample(coarse: np.ndarray, ranges: list[tuple[int, int]]) -> np.ndarray:
    """Nearest-neighbour upsampling of a coarse mask over a full-resolution index box."""
    out = coarse
    for axis, ((start, stop), f) in enumerate(zip(ranges, MASK_DOWNSAMPLE, strict=True)):
        out = np.take(out, np.arange(start, stop) // f, axis=axis)
    return out


# --- rendering ---------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class DRR:
    """A rendered radiograph and how it was made.

    Attributes:
        line_integral: ``(rows, cols)`` float32 ``p = ∫μ dl`` (unitless, ≥ 0); row 0 is superior.
        geometry: the resolved acquisition (its ``to_dict()`` is the record to keep).
        physics: the settings used: method, quality, kev, μ of water and bone (1/mm), HU_bone,
            remove_table, slab planes, supersampling.
    """

    line_integral: np.ndarray
    geometry: ResolvedGeometry
    physics: dict[str, Any]

    @property
    def spacing_mm(self) -> tuple[float, float]:
        """Pixel spacing ``(row, col)`` at the detector (DICOM ImagerPixelSpacing), mm."""
        return self.geometry.pixel_mm

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record: geometry, spacing and physics."""
        return {"geometry": self.geometry.to_dict(), "spacing_mm": list(self.spacing_mm),
                "physics": dict(self.physics)}


Renderer = Callable[..., "tuple[torch.Tensor, dict[str, Any]]"]


@dataclass(frozen=True, eq=False)
class _SlabPlan:
    """What both slab projectors share: the planes, slabs and every ray's crossings.

    Rays are those in ``hit``; slab ``j``'s crossing of ray ``r`` is at in-plane voxel index
    ``at[r] + j * step[r]`` (``(bx, by)`` order; the centre plane of slab j is ``j k + (k-1)/2``).
    """

    axis: int
    bx: int
    by: int
    k: int
    n_slabs: int
    dim: int
    hit: np.ndarray
    at: np.ndarray
    step: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    partial: bool
    path_mm: np.ndarray
    every: tuple[np.ndarray, ...] | None = None


def _slab_plan(shape: tuple[int, int, int], index_to_world: np.ndarray,
               geometry: ResolvedGeometry, exact: bool) -> _SlabPlan | int:
    """The plan of a slab projection of a ``(D, H, W)`` grid, or the axis when no ray hits."""
    D, H, W = shape
    sizes = (W, H, D)  # along index axes (w, h, d)
    source, dirs = index_space_rays(index_to_world, geometry)
    centre = np.linalg.solve(index_to_world[:3, :3], geometry.beam_direction)
    axis = int(np.argmax(np.abs(centre)))
    t_in, t_out = ray_box_interval(source, dirs, sizes, margin=0.5)  # bilinear: -1 to N
    hit = np.flatnonzero(t_out > t_in)
    if len(hit) == 0:
        return axis
    d = dirs[hit]
    da = d[:, axis]
    if np.any(da * np.sign(centre[axis]) <= 1e-9 * np.linalg.norm(d, axis=1)):
        raise GeometryError("the X-ray cone is too wide for the slab projector",
                            hint="use method='siddon' or a smaller detector")
    bx, by = (a for a in range(3) if a != axis)  # grid x, grid y index axes
    drift = d[:, [bx, by]] / da[:, None]  # (n, 2) in-plane voxels moved per plane
    k = 1 if exact else int(np.clip(1.0 / max(np.abs(drift).max(), 1e-9), 1, MAX_SLAB_PLANES))
    n_axis = sizes[axis]
    at_zero = source[[bx, by]] - source[axis] * drift  # (n, 2) crossing with plane m = 0
    lo = source[axis] + np.minimum(0.0, da)  # (n,) plane-index range of the segment
    hi = source[axis] + np.maximum(0.0, da)
    partial = bool(np.any(lo > -0.5) or np.any(hi < n_axis - 0.5))
    path_mm = np.linalg.norm((d / da[:, None]) @ index_to_world[:3, :3].T, axis=1)  # per plane
    every = None  # (at, step, lo, hi, path_mm) of all rays, hit or not, when all cross planes
    if len(hit) < len(dirs) and np.all(dirs[:, axis] * np.sign(centre[axis])
                                        > 1e-9 * np.linalg.norm(dirs, axis=1)):
        a_all = dirs[:, axis]
        drift_all = dirs[:, [bx, by]] / a_all[:, None]
        every = (source[[bx, by]] - source[axis] * drift_all + drift_all * (k - 1) / 2.0,
                 drift_all * k, source[axis] + np.minimum(0.0, a_all),
                 source[axis] + np.maximum(0.0, a_all),
                 np.linalg.norm((dirs / a_all[:, None]) @ index_to_world[:3, :3].T, axis=1))
    elif len(hit) == len(dirs):
        every = (at_zero + drift * (k - 1) / 2.0, drift * k, lo, hi, path_mm)
    return _SlabPlan(axis, bx, by, k, -(-n_axis // k), 2 - axis, hit,
                     at_zero + drift * (k - 1) / 2.0, drift * k, lo, hi, partial, path_mm, every)


def render_slabs(
    mu: torch.Tensor,
    index_to_world: np.ndarray,
    geometry: ResolvedGeometry,
    *,
    exact: bool = False,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Joseph / slab projector: bilinear samples on every voxel plane across the beam.

    Args:
        mu: ``(D, H, W)`` float32 values per mm, any device.
        index_to_world: ``(4, 4)`` affine of ``mu``'s grid (``(w, h, d)`` indices → LPS mm).
        geometry: the acquisition; one ray per detector pixel centre.
        exact: one plane per slab (no thick-slab averaging).

    Returns:
        ``(rows, cols)`` float32 line integrals (values × mm) and ``{"slab_planes": k,
        "axis": "w" | "h" | "d"}``.

    Raises:
        GeometryError: a cone so wide that some ray runs parallel to the chosen planes.
    """
    import torch
    import torch.nn.functional as F

    D, H, W = mu.shape
    sizes = (W, H, D)
    device = mu.device
    rows, cols = geometry.detector_px
    out = torch.zeros(rows * cols, dtype=torch.float32, device=device)
    plan = _slab_plan((D, H, W), index_to_world, geometry, exact)
    if isinstance(plan, int):
        return out.reshape(rows, cols), {"slab_planes": 0, "axis": "whd"[plan]}
    k, n_slabs, dim, bx, by = plan.k, plan.n_slabs, plan.dim, plan.bx, plan.by

    # Plane stack (slabs, 1, N_by, N_bx): slab j is the mean of planes j k ... j k + k - 1 (zeros
    # past the end), summed from k strided views so the only copy is 1/k of the volume.
    if k == 1:
        stack = mu
    else:
        shape = list(mu.shape)
        shape[dim] = n_slabs
        stack = torch.zeros(shape, dtype=torch.float32, device=device)
        for i in range(k):
            part = mu[tuple(slice(i, None, k) if a == dim else slice(None) for a in range(3))]
            stack.narrow(dim, 0, part.shape[dim]).add_(part)
        stack /= k
    planes = stack.permute(dim, 2 - by, 2 - bx).contiguous().unsqueeze(1)

    # In grid_sample coordinates (align_corners=False: index i ↦ (2 i + 1) / N - 1).
    scale = 2.0 / np.array([sizes[bx], sizes[by]], dtype=np.float64)

    def f32(values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(values, dtype=torch.float32, device=device)

    base_t, step_t = f32((plan.at + 0.5) * scale - 1.0), f32(plan.step * scale)
    lo_t, hi_t = f32(plan.lo), f32(plan.hi)  # rays ending inside cover part of some slabs

    n = len(plan.hit)
    threads = max(1, torch.get_num_threads())
    rays_per_call = min(n, max(4096, CHUNK_SAMPLES // threads))
    slabs_per_call = max(threads, CHUNK_SAMPLES // rays_per_call)
    acc = torch.zeros(n, dtype=torch.float32, device=device)
    for j0 in range(0, n_slabs, slabs_per_call):
        j1 = min(n_slabs, j0 + slabs_per_call)
        j = f32(np.arange(j0, j1))[:, None, None]  # (s, 1, 1)
        for r0 in range(0, n, rays_per_call):
            r1 = min(n, r0 + rays_per_call)
            grid = torch.addcmul(base_t[None, r0:r1], j, step_t[None, r0:r1])  # (s, r, 2)
            samples = F.grid_sample(planes[j0:j1], grid[:, None], mode="bilinear",
                                    padding_mode="zeros", align_corners=False)  # (s, 1, 1, r)
            samples = samples.view(j1 - j0, r1 - r0)
            if plan.partial:  # fraction of each slab [j k - 0.5, j k + k - 0.5] in the segment
                start = j[:, :, 0] * k - 0.5
                cover = (torch.minimum(hi_t[None, r0:r1], start + k)
                         - torch.maximum(lo_t[None, r0:r1], start)).clamp_(0.0, k) / k
                samples = samples * cover
            acc[r0:r1] += samples.sum(0)
    acc *= f32(plan.path_mm * k)
    out[torch.as_tensor(plan.hit, device=device)] = acc
    return out.reshape(rows, cols), {"slab_planes": k, "axis": "whd"[plan.axis]}


def render_slabs_numpy(
    mu: np.ndarray,
    index_to_world: np.ndarray,
    geometry: ResolvedGeometry,
    *,
    exact: bool = False,
) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`render_slabs` in numpy, for the CPU without importing torch: the same slabs, the
    same bilinear samples with zeros outside the grid, the same partial-slab weights (sums in
    another order, so equal to float32 rounding).

    When every ray's in-plane crossing moves along one plane axis with the detector rows and
    along the other with its columns (the standard views of an axis-aligned CT), each slab is
    interpolated separably: rows first, then columns, over the whole detector at once.
    Otherwise the four neighbours of every sample are gathered.

    Args and returns as :func:`render_slabs`, with numpy arrays.
    """
    D, H, W = mu.shape
    rows, cols = geometry.detector_px
    out = np.zeros(rows * cols, dtype=np.float32)
    plan = _slab_plan((D, H, W), index_to_world, geometry, exact)
    if isinstance(plan, int):
        return out.reshape(rows, cols), {"slab_planes": 0, "axis": "whd"[plan]}
    k, n_slabs, dim = plan.k, plan.n_slabs, plan.dim
    values = np.asarray(mu, dtype=np.float32)
    if k == 1:
        stack = values
    else:
        shape = list(values.shape)
        shape[dim] = n_slabs
        stack = np.zeros(shape, dtype=np.float32)
        for i in range(k):
            part = values[tuple(slice(i, None, k) if a == dim else slice(None) for a in range(3))]
            index = tuple(slice(0, part.shape[dim]) if a == dim else slice(None) for a in range(3))
            stack[index] += part
        stack /= np.float32(k)
    planes = np.transpose(stack, (dim, 2 - plan.by, 2 - plan.bx))  # (S, N_by, N_bx)
    # zeros around each plane (1 before, 2 after) so every bilinear neighbour is in range
    padded = np.zeros((n_slabs, planes.shape[1] + 3, planes.shape[2] + 3), dtype=np.float32)
    padded[:, 1:-2, 1:-2] = planes
    info = {"slab_planes": k, "axis": "whd"[plan.axis]}
    whole = _separable_slabs(padded, plan, rows, cols)
    if whole is not None:  # every ray (a missing one sums zeros)
        whole *= (plan.every[4] * k).astype(np.float32)  # type: ignore[index]
        return whole.reshape(rows, cols), info
    acc = _gathered_slabs(padded, plan)
    acc *= (plan.path_mm * k).astype(np.float32)
    out[plan.hit] = acc
    return out.reshape(rows, cols), info


def _weights(position: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Padded lower neighbour and its upper weight for voxel-index positions (see padding)."""
    g = np.clip(position + 1.0, 0.0, size + 1.0)
    low = np.floor(g)
    return low.astype(np.intp), (g - low).astype(np.float32)


def _cover(plan: _SlabPlan, j: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Fraction of slab ``j`` (``[j k - 0.5, j k + k - 0.5]``) inside each ray's segment."""
    start = j * plan.k - 0.5
    return np.clip(np.minimum(hi, start + plan.k) - np.maximum(lo, start), 0.0,
                   plan.k) / plan.k


def _separable_slabs(padded: np.ndarray, plan: _SlabPlan, rows: int, cols: int
                     ) -> np.ndarray | None:
    """Sums of every ray (``(rows * cols,)``) by separable interpolation, or None when the rays
    do not allow it."""
    if plan.every is None:
        return None
    at = plan.every[0].reshape(rows, cols, 2)
    step = plan.every[1].reshape(rows, cols, 2)

    def follows(values: np.ndarray) -> set[str]:  # (rows, cols): the detector axes it may follow
        ways = set()
        if np.allclose(values, values[:1, :], rtol=0.0, atol=1e-6):
            ways.add("cols")  # the same down every column: a function of the column
        if np.allclose(values, values[:, :1], rtol=0.0, atol=1e-6):
            ways.add("rows")
        return ways

    x_ways = follows(at[..., 0]) & follows(step[..., 0])
    y_ways = follows(at[..., 1]) & follows(step[..., 1])
    if "cols" in x_ways and "rows" in y_ways:
        transpose = False
    elif "rows" in x_ways and "cols" in y_ways:
        transpose = True  # grid x follows the detector rows, grid y its columns
    else:
        return None
    lo, hi = plan.every[2].reshape(rows, cols), plan.every[3].reshape(rows, cols)
    if plan.partial and not (np.allclose(lo, lo.flat[0], rtol=0.0, atol=1e-9)
                             and np.allclose(hi, hi.flat[0], rtol=0.0, atol=1e-9)):
        return None
    x_line, y_line = (at[:, 0], at[0, :]) if transpose else (at[0, :], at[:, 0])
    x_steps, y_steps = (step[:, 0], step[0, :]) if transpose else (step[0, :], step[:, 0])
    x_at, x_step = x_line[:, 0], x_steps[:, 0]
    y_at, y_step = y_line[:, 1], y_steps[:, 1]
    size_y, size_x = padded.shape[1] - 3, padded.shape[2] - 3
    acc = np.zeros((len(y_at), len(x_at)), dtype=np.float32)
    for j in range(plan.n_slabs):
        y0, fy = _weights(y_at + j * y_step, size_y)
        x0, fx = _weights(x_at + j * x_step, size_x)
        plane = padded[j]
        fy = fy[:, None]
        lines = plane[y0] * (1 - fy) + plane[y0 + 1] * fy  # (ny, N_bx + 3)
        sample = lines[:, x0] * (1 - fx) + lines[:, x0 + 1] * fx
        if plan.partial:
            sample *= np.float32(_cover(plan, np.float64(j), lo.flat[0], hi.flat[0]))
        acc += sample
    return (acc.T if transpose else acc).reshape(-1)


def _gathered_slabs(padded: np.ndarray, plan: _SlabPlan) -> np.ndarray:
    """Per-ray sums by gathering the four neighbours of every sample (any geometry)."""
    n = len(plan.hit)
    n_slabs, height, width = padded.shape
    flat = padded.reshape(-1)
    at = plan.at.astype(np.float32)
    step = plan.step.astype(np.float32)
    acc = np.zeros(n, dtype=np.float32)
    rays = min(n, 1 << 15)
    slabs = max(1, CHUNK_SAMPLES // rays)
    for j0 in range(0, n_slabs, slabs):
        j = np.arange(j0, min(n_slabs, j0 + slabs), dtype=np.float32)[:, None]  # (s, 1)
        for r0 in range(0, n, rays):
            r = slice(r0, min(n, r0 + rays))
            x0, fx = _weights(at[None, r, 0] + j * step[None, r, 0], width - 3)
            y0, fy = _weights(at[None, r, 1] + j * step[None, r, 1], height - 3)
            idx = ((j.astype(np.intp) * height) + y0) * width + x0
            top = flat[idx] * (1 - fx) + flat[idx + 1] * fx
            bottom = flat[idx + width] * (1 - fx) + flat[idx + width + 1] * fx
            sample = top * (1 - fy) + bottom * fy
            if plan.partial:
                sample *= _cover(plan, j.astype(np.float64), plan.lo[None, r],
                                 plan.hi[None, r]).astype(np.float32)
            acc[r] += sample.sum(0)
    return acc


METHODS: dict[str, Renderer] = {"trilinear": render_slabs, "siddon": render_siddon}
"""Ray integrators by name; each is ``fn(mu, index_to_world, geometry, *, exact) -> (image,
info)``."""

QUALITIES = ("fast", "exact")


def project(
    volume: Volume,
    geometry: Geometry,
    *,
    method: str = "trilinear",
    kev: float = 60.0,
    remove_table: bool = True,
    quality: str = "fast",
    antialias: bool = True,
    device: str = "cpu",
) -> DRR:
    """Render a radiograph from a CT volume.

    Args:
        volume: CT in HU, LPS (see :mod:`cxrkit.volume`).
        geometry: the acquisition; its automatic fields are fitted to the body.
        method: a key of :data:`METHODS`.
        kev: effective photon energy for :func:`hu_to_mu`.
        remove_table: mask everything outside :func:`body_mask` (couch, leads); otherwise only
            crop to voxels above :data:`BODY_THRESHOLD_HU`.
        quality: "fast" (adaptive thick slabs) or "exact" (one plane per slab); trilinear only.
        antialias: supersample 2× when detector pixels are coarse (see :data:`ANTIALIAS_RATIO`).
        device: torch device for the ray integration.

    Returns:
        The :class:`DRR`.

    Raises:
        InputError: unknown method or quality, energy out of range, or no body in the volume.
        GeometryError: an invalid geometry, or one whose rays all miss the body.
    """
    _check_options(method, quality)
    mu_water, mu_bone = attenuation_coefficients(kev)
    coarse = _coarse_body(volume.array, remove_table=remove_table)
    if not coarse.any():
        raise InputError(f"no body found: no region above {BODY_THRESHOLD_HU:g} HU",
                         hint="is this a CT in Hounsfield units?")
    ranges = _coarse_ranges(coarse, volume.shape)
    box = tuple(slice(a, b) for a, b in ranges)
    mu = _hu_to_mu_inplace(np.array(volume.array[box], dtype=np.float32, copy=True), kev)
    if remove_table:
        mu *= _upsample(coarse, ranges)
    crop = _cropped(volume, ranges, mu)
    resolved = geometry.resolve(crop.bounds_mm())
    _check_rays_hit(crop, resolved)
    image, info = _render(crop, resolved, method=method, quality=quality, antialias=antialias,
                          device=device)
    physics = {
        "method": method, "quality": quality, "kev": float(kev),
        "mu_water_per_mm": round(mu_water, 7), "mu_bone_per_mm": round(mu_bone, 7),
        "hu_bone": HU_BONE, "remove_table": remove_table, **info,
    }
    return DRR(line_integral=image, geometry=resolved, physics=physics)


def project_values(
    values: Volume,
    geometry: ResolvedGeometry,
    *,
    method: str = "trilinear",
    quality: str = "fast",
    antialias: bool = True,
    device: str = "cpu",
) -> np.ndarray:
    """Line integrals of arbitrary per-mm values (no physics, no masking).

    Args:
        values: ``(D, H, W)`` float values per mm on their own grid (e.g. μ, or an indicator).
        geometry: a resolved acquisition, e.g. ``drr.geometry``.
        method, quality, antialias, device: as in :func:`project`.

    Returns:
        ``(rows, cols)`` float32 ∫ values dl (values × mm); zeros where rays miss.
    """
    _check_options(method, quality)
    arr = np.asarray(values.array)
    ranges = _nonzero_ranges(arr != 0)
    if ranges is None:
        return np.zeros(geometry.detector_px, dtype=np.float32)
    box = tuple(slice(a, b) for a, b in ranges)
    crop = _cropped(values, ranges, np.asarray(arr[box], dtype=np.float32))
    image, _ = _render(crop, geometry, method=method, quality=quality, antialias=antialias,
                       device=device)
    return image


def project_labels(
    labels: Volume,
    geometry: ResolvedGeometry,
    label_ids: Iterable[int],
    *,
    method: str = "trilinear",
    quality: str = "fast",
    antialias: bool = True,
    device: str = "cpu",
) -> dict[int, np.ndarray]:
    """Projected thickness of labelled structures.

    The projection of an indicator volume (1 per mm inside the label) is the length of each ray
    inside the label. Use :func:`thickness_to_mask` for binary masks.

    Args:
        labels: label volume (integer ids as floats), on any grid.
        geometry: a resolved acquisition, e.g. ``drr.geometry``.
        label_ids: the ids to project.
        method, quality, antialias, device: as in :func:`project`.

    Returns:
        ``{id: (rows, cols) float32 thickness in mm}`` (zeros for absent ids).
    """
    _check_options(method, quality)
    out = {}
    for label in label_ids:
        inside = labels.array == label
        ranges = _nonzero_ranges(inside)
        if ranges is None:
            out[int(label)] = np.zeros(geometry.detector_px, dtype=np.float32)
            continue
        box = tuple(slice(a, b) for a, b in ranges)
        crop = _cropped(labels, ranges, inside[box].astype(np.float32))
        out[int(label)], _ = _render(crop, geometry, method=method, quality=quality,
                                     antialias=antialias, device=device)
    return out


def thickness_to_mask(thickness_mm: np.ndarray, voxel_mm: Iterable[float]) -> np.ndarray:
    """Binary mask of a projected label: thickness above half the smallest voxel size.

    Args:
        thickness_mm: ``(rows, cols)`` from :func:`project_labels`.
        voxel_mm: the label volume's spacing (any order).

    Returns:
        ``(rows, cols)`` bool.
    """
    return thickness_mm > MASK_THICKNESS_FRACTION * min(voxel_mm)


def _check_options(method: str, quality: str) -> None:
    if method not in METHODS:
        raise InputError(f"unknown DRR method {method!r}", hint="choose " + " or ".join(METHODS))
    if quality not in QUALITIES:
        raise InputError(f"unknown quality {quality!r}", hint="choose " + " or ".join(QUALITIES))


def _nonzero_ranges(mask: np.ndarray) -> list[tuple[int, int]] | None:
    """``[start, stop)`` per axis of the True voxels of a 3-D mask, or None if there are none."""
    ranges = []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if len(hits) == 0:
            return None
        ranges.append((int(hits[0]), int(hits[-1]) + 1))
    return ranges


def _cropped(volume: Volume, ranges: list[tuple[int, int]], array: np.ndarray) -> Volume:
    """``array``, the ``ranges`` sub-block of ``volume``, as a Volume placed where it was."""
    start = [a for a, _ in ranges]
    origin = volume.index_to_world() @ np.array([start[2], start[1], start[0], 1.0])
    return Volume(array, volume.spacing_mm, (float(origin[0]), float(origin[1]), float(origin[2])),
                  np.asarray(volume.direction, dtype=np.float64))


def _check_rays_hit(grid: Volume, geometry: ResolvedGeometry) -> None:
    source, dirs = index_space_rays(grid.index_to_world(), geometry)
    d, h, w = grid.shape
    t_in, t_out = ray_box_interval(source, dirs, (w, h, d))
    if not np.any(t_out > t_in):
        raise GeometryError(
            "no ray from the source to the detector crosses the body",
            hint="the source and detector must lie on opposite sides of the patient; check "
                 "translation_mm, rotation_deg and isocenter_mm",
        )


def _render(
    values: Volume,
    geometry: ResolvedGeometry,
    *,
    method: str,
    quality: str,
    antialias: bool,
    device: str,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Run a renderer on per-mm values (with optional 2× supersampling); numpy image out.

    The trilinear renderer on ``device="cpu"`` runs in numpy (:func:`render_slabs_numpy`, the
    same samples as :func:`render_slabs`; torch is not imported); other devices and Siddon use
    torch.
    """
    factor = 1
    if antialias and max(geometry.pixel_at_isocenter_mm) > ANTIALIAS_RATIO * min(values.spacing_mm):
        factor = 2
    fine = geometry.supersampled(factor) if factor > 1 else geometry
    rows, cols = geometry.detector_px
    if method == "trilinear" and str(device) == "cpu":
        array = np.asarray(values.array, dtype=np.float32)
        image, info = render_slabs_numpy(array, values.index_to_world(), fine,
                                         exact=quality == "exact")
        if factor > 1:
            image = image.reshape(rows, factor, cols, factor).mean(axis=(1, 3))
        return image.astype(np.float32, copy=False), {**info, "supersample": factor}
    import torch

    mu = torch.from_numpy(np.asarray(values.array, dtype=np.float32)).to(device)
    result, info = METHODS[method](mu, values.index_to_world(), fine, exact=quality == "exact")
    if factor > 1:
        result = result.reshape(rows, factor, cols, factor).mean(dim=(1, 3))
    return result.cpu().numpy().astype(np.float32, copy=False), {**info, "supersample": factor}


# --- output ------------------------------------------------------------------------------------


def to_intensity(line_integral: np.ndarray) -> np.ndarray:
    """Transmitted fraction ``I / I0 = exp(-p)`` (Beer–Lambert), same shape, float32."""
    return np.exp(-np.asarray(line_integral, dtype=np.float32))


def to_display(
    line_integral: np.ndarray,
    spacing_mm: tuple[float, float],
    *,
    low_percentile: float = 1.0,
    high_percentile: float = 99.5,
    gamma: float = 1.0,
    unsharp_sigma_mm: float = 25.0,
    unsharp_weight: float = 0.7,
    body_threshold: float = 0.05,
) -> tuple[np.ndarray, dict[str, float]]:
    """A display image, bone bright, like a processed clinical film.

    ``p`` is first sharpened in the log domain, ``p + w (p - G_σ * p)`` (a large-kernel unsharp
    mask that lifts lung and rib detail over the broad mediastinum), then windowed between
    robust percentiles of the pixels inside the body (``p > body_threshold``), then raised to
    ``gamma``.

    Args:
        line_integral: ``(rows, cols)`` p = ∫μ dl.
        spacing_mm: pixel spacing ``(row, col)``, mm (sets σ in pixels).
        low_percentile, high_percentile: window limits, percent of body pixels.
        gamma: exponent on the windowed [0, 1] image (1 = linear).
        unsharp_sigma_mm: Gaussian σ of the unsharp mask, mm.
        unsharp_weight: strength ``w``; 0 turns the unsharp mask off.
        body_threshold: p below this is background (about 2.5 mm of water at 60 keV).

    Returns:
        ``(rows, cols)`` float32 in [0, 1], and the parameters used (window ``low``/``high`` in
        units of p, and the arguments above) for the record.
    """
    p = np.asarray(line_integral, dtype=np.float64)
    sharp = p
    if unsharp_weight > 0:
        sigma_px = (unsharp_sigma_mm / spacing_mm[0], unsharp_sigma_mm / spacing_mm[1])
        sharp = p + unsharp_weight * (p - _gaussian_blur(p, sigma_px))
    body = p > body_threshold
    if body.any():
        low, high = np.percentile(sharp[body], [low_percentile, high_percentile])
    else:
        low, high = 0.0, max(float(p.max()), 1e-6)
    high = max(float(high), float(low) + 1e-6)
    image = np.clip((sharp - low) / (high - low), 0.0, 1.0) ** gamma
    params = {"low": float(low), "high": float(high), "low_percentile": low_percentile,
              "high_percentile": high_percentile, "gamma": gamma,
              "unsharp_sigma_mm": unsharp_sigma_mm, "unsharp_weight": unsharp_weight}
    return image.astype(np.float32), params


def _gaussian_blur(image: np.ndarray, sigma_px: tuple[float, float]) -> np.ndarray:
    """Gaussian blur by FFT on a mirror-padded copy (fast for large σ)."""
    from scipy import fft, ndimage

    pad = [(min(int(3 * s) + 1, 4 * n), min(int(3 * s) + 1, 4 * n))
           for s, n in zip(sigma_px, image.shape, strict=True)]
    padded = np.pad(image, pad, mode="symmetric")
    spectrum = ndimage.fourier_gaussian(fft.rfft2(padded), sigma=sigma_px, n=padded.shape[1])
    blurred = fft.irfft2(spectrum, s=padded.shape)
    return blurred[pad[0][0]:pad[0][0] + image.shape[0], pad[1][0]:pad[1][0] + image.shape[1]]
