"""Exact ray-driven projection (Siddon's method), the slow reference renderer.

Every ray, from the source to a detector pixel centre, is cut at each voxel boundary plane it
crosses; each piece contributes its length times the value of the voxel holding its midpoint
(Siddon, Med. Phys. 12(2):252, 1985, vectorised here over rays). The ray is clipped to the segment
between the source and the pixel: nothing beyond the detector or behind the source is integrated.

Rays are handled in chunks so that memory stays about ``rays_per_chunk × (W + H + D) × 80`` bytes
(≈ 200 MB for the default chunk on a 512 × 512 × 133 CT), whatever the detector size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from cxrkit.geometry import ResolvedGeometry

RAYS_PER_CHUNK = 2048


def index_space_rays(
    index_to_world: np.ndarray, geometry: ResolvedGeometry
) -> tuple[np.ndarray, np.ndarray]:
    """The detector's rays in voxel-index coordinates.

    Args:
        index_to_world: ``(4, 4)`` affine from homogeneous ``(w, h, d)`` indices to LPS mm.
        geometry: the acquisition.

    Returns:
        ``source`` ``(3,)`` and ``directions`` ``(rows * cols, 3)``, float64, in ``(w, h, d)``
        index units: the ray to pixel ``(r, c)`` (row-major) is ``source + t * directions[i]``,
        ``t`` from 0 at the source to 1 at the pixel centre.
    """
    world_to_index = np.linalg.inv(index_to_world)
    lin, off = world_to_index[:3, :3], world_to_index[:3, 3]
    source = lin @ geometry.source_mm + off
    # Pixel centres are affine in (row, col), so map the origin and the two steps only.
    to_origin = lin @ (geometry.detector_origin_mm - geometry.source_mm)
    row_step = lin @ (geometry.row_direction * geometry.pixel_mm[0])
    col_step = lin @ (geometry.col_direction * geometry.pixel_mm[1])
    rows, cols = geometry.detector_px
    dirs = (to_origin + np.arange(rows, dtype=np.float64)[:, None, None] * row_step
            + np.arange(cols, dtype=np.float64)[None, :, None] * col_step)  # (rows, cols, 3)
    return source, dirs.reshape(-1, 3)


def ray_box_interval(
    source: np.ndarray,
    directions: np.ndarray,
    shape_whd: tuple[int, int, int],
    margin: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Where each ray segment is inside the voxel box ``[-0.5 - margin, N - 0.5 + margin]``.

    Args:
        source: ``(3,)`` ray origin in index units.
        directions: ``(n, 3)`` ray directions in index units (segment ``t ∈ [0, 1]``).
        shape_whd: box size in voxels along ``(w, h, d)``.
        margin: extra voxels on every side (e.g. 0.5 for interpolation reaching past the edge).

    Returns:
        ``t_in`` and ``t_out``, ``(n,)`` float64 within ``[0, 1]``; a ray misses where
        ``t_out <= t_in``.
    """
    t_in = np.zeros(len(directions))
    t_out = np.ones(len(directions))
    with np.errstate(divide="ignore", invalid="ignore"):
        for axis, size in enumerate(shape_whd):
            d = directions[:, axis]
            lo = (-0.5 - margin - source[axis]) / d
            hi = (size - 0.5 + margin - source[axis]) / d
            inside = -0.5 - margin <= source[axis] <= size - 0.5 + margin
            near = np.where(d == 0, -np.inf if inside else np.inf, np.minimum(lo, hi))
            far = np.where(d == 0, np.inf if inside else -np.inf, np.maximum(lo, hi))
            t_in = np.maximum(t_in, near)
            t_out = np.minimum(t_out, far)
    return t_in, t_out


def render_siddon(
    mu: torch.Tensor,
    index_to_world: np.ndarray,
    geometry: ResolvedGeometry,
    *,
    exact: bool = True,
    rays_per_chunk: int = RAYS_PER_CHUNK,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Exact line integrals of a voxel volume, nearest voxel per ray–voxel segment.

    Args:
        mu: ``(D, H, W)`` float32 values per mm (e.g. attenuation μ in 1/mm), any device.
        index_to_world: ``(4, 4)`` affine of ``mu``'s grid (``(w, h, d)`` indices → LPS mm).
        geometry: the acquisition; one ray per detector pixel centre.
        exact: ignored (Siddon is always exact); present so every renderer has one signature.
        rays_per_chunk: rays processed together (memory ∝ this × (D + H + W)).

    Returns:
        ``(rows, cols)`` float32 tensor of line integrals (values × mm), and a dict of settings.
    """
    import torch

    del exact
    D, H, W = mu.shape
    device = mu.device
    source, dirs = index_space_rays(index_to_world, geometry)
    t_in, t_out = ray_box_interval(source, dirs, (W, H, D))
    hit = np.flatnonzero(t_out > t_in)
    lin = index_to_world[:3, :3]
    length_mm = np.linalg.norm(dirs @ lin.T, axis=1)  # (n,) source-to-pixel distance
    flat = mu.reshape(-1)
    out = torch.zeros(len(dirs), dtype=torch.float64, device=device)
    def f64(values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(values, dtype=torch.float64, device=device)

    src = f64(source)
    planes = [f64(np.arange(n + 1) - 0.5) for n in (W, H, D)]  # voxel boundaries
    strides = (1, W, W * H)
    for start in range(0, len(hit), rays_per_chunk):
        idx = hit[start:start + rays_per_chunk]
        d = f64(dirs[idx])  # (n, 3)
        a0 = f64(t_in[idx])[:, None]  # (n, 1)
        a1 = f64(t_out[idx])[:, None]
        alphas = [a0, a1]
        for axis in range(3):
            da = d[:, axis:axis + 1]
            crossing = (planes[axis][None, :] - src[axis]) / da  # (n, N + 1), ±inf where da = 0
            alphas.append(torch.where(torch.isfinite(crossing), crossing, a0))
        alpha = torch.cat(alphas, dim=1).clamp_(min=a0, max=a1)
        alpha = torch.sort(alpha, dim=1).values  # (n, L)
        seg = alpha[:, 1:] - alpha[:, :-1]  # (n, L - 1) parametric lengths
        mid = (alpha[:, 1:] + alpha[:, :-1]) * 0.5
        del alpha
        flat_idx = torch.zeros_like(seg, dtype=torch.long)
        valid = seg > 0
        for axis, size in enumerate((W, H, D)):
            voxel = torch.floor(src[axis] + mid * d[:, axis:axis + 1] + 0.5).long()
            valid &= (voxel >= 0) & (voxel < size)
            flat_idx += voxel.clamp_(0, size - 1) * strides[axis]
        del mid
        values = flat[flat_idx].double()  # (n, L - 1)
        out[torch.as_tensor(idx, device=device)] = (seg * values * valid).sum(1)
    out *= f64(length_mm)
    rows, cols = geometry.detector_px
    return out.float().reshape(rows, cols), {"rays_per_chunk": rays_per_chunk}
