"""Tests for cxrkit.drr and cxrkit.siddon against analytic oracles.

Phantoms are built here, on small grids. Expected values (chord lengths, projected positions,
path lengths) are computed by hand from the geometry's definition, never by the renderer.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest

from cxrkit import drr
from cxrkit.errors import GeometryError, InputError
from cxrkit.geometry import Geometry
from cxrkit.volume import Volume

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lidc-idri-0001"
METHODS = ["trilinear", "siddon"]
MU_WATER = drr.attenuation_coefficients(60.0)[0]


def _grid(shape_dhw: tuple[int, int, int], spacing_dhw: tuple[float, float, float]) -> tuple:
    """LPS voxel-centre coordinates ``(x, y, z)``, each ``(D, H, W)``, centred on the origin."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape_dhw, spacing_dhw, strict=True)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    return x, y, z


def _volume(array: np.ndarray, spacing_dhw: tuple[float, float, float]) -> Volume:
    """A volume centred on the LPS origin with identity direction."""
    d, h, w = array.shape
    sz, sy, sx = spacing_dhw
    origin = (-(w - 1) / 2 * sx, -(h - 1) / 2 * sy, -(d - 1) / 2 * sz)
    return Volume(array.astype(np.float32), spacing_dhw, origin)


def _hu(occupancy: np.ndarray, inside_hu: float = 0.0) -> np.ndarray:
    """HU of a water (or other) object with fractional voxel occupancy in air."""
    return -1000.0 + (inside_hu + 1000.0) * occupancy


def _sphere(x: np.ndarray, y: np.ndarray, z: np.ndarray, centre: tuple, radius: float,
            voxel: float) -> np.ndarray:
    """Fractional occupancy of a sphere: a 1-voxel linear ramp across the surface."""
    dist = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
    return np.clip((radius - dist) / voxel + 0.5, 0.0, 1.0)


def _rays(geometry: Geometry, n: int, sid: float, sod: float, iso: np.ndarray) -> tuple:
    """Hand-built PA rays: source (3,) and pixel centres (n, n, 3), from the definitions."""
    source = iso + np.array([0.0, sod, 0.0])
    pitch = geometry.pixel_mm[0]
    offsets = (np.arange(n) - (n - 1) / 2) * pitch
    cols, rows = np.meshgrid(offsets, offsets)
    pixels = np.stack([iso[0] + cols, np.full_like(cols, iso[1] + sod - sid), iso[2] - rows], -1)
    return source, pixels


def _psnr(image: np.ndarray, reference: np.ndarray) -> float:
    err = np.sqrt(np.mean((image.astype(np.float64) - reference) ** 2))
    return float("inf") if err == 0 else float(20 * np.log10(np.ptp(reference) / err))


# --- physics ---------------------------------------------------------------------------------


def test_hu_to_mu_reference_points() -> None:
    torch = pytest.importorskip("torch")
    mu_water, mu_bone = drr.attenuation_coefficients(60.0)
    assert mu_water == pytest.approx(0.0206, rel=0.03)
    hu = torch.tensor([-3024.0, -2048.0, -1024.0, -1000.0, 0.0, drr.HU_BONE, 500.0])
    mu = drr.hu_to_mu(hu, 60.0).numpy()
    assert mu[:4] == pytest.approx([0.0, 0.0, 0.0, 0.0], abs=1e-9)
    assert mu[4] == pytest.approx(mu_water)
    assert mu[5] == pytest.approx(mu_bone)
    assert mu[0] <= mu[3] < mu[4] < mu[6] < mu[5]
    assert mu_bone / mu_water == pytest.approx(2.94, rel=0.03)  # cortical bone vs water at 60 keV


def test_attenuation_falls_with_energy_and_rejects_out_of_range() -> None:
    low, high = drr.attenuation_coefficients(40.0), drr.attenuation_coefficients(120.0)
    assert low[0] > high[0]
    assert low[1] > high[1]
    assert drr.attenuation_coefficients(80.0)[0] == pytest.approx(0.01837)
    with pytest.raises(InputError, match="keV"):
        drr.attenuation_coefficients(10.0)


def test_body_mask_drops_couch_keeps_lungs() -> None:
    shape, spacing = (16, 64, 64), (2.0, 2.0, 2.0)
    x, y, _ = _grid(shape, spacing)
    body = (x / 40) ** 2 + (y / 25) ** 2 < 1
    lung = ((x - 15) / 10) ** 2 + (y / 10) ** 2 < 1
    hu = np.full(shape, -2048.0)  # padding outside the scan circle
    hu[x**2 + y**2 < 62**2] = -1000.0
    hu[body] = 40.0
    hu[lung] = -850.0
    hu[(y > 40) & (y < 48) & (np.abs(x) < 50)] = 200.0  # couch, separate from the body
    mask = drr.body_mask(_volume(hu, spacing))
    assert mask.shape == shape
    assert mask.dtype == bool
    assert mask[body].all()
    assert mask[lung].all()
    assert not mask[(y > 42) & (y < 46)].any()
    assert not mask[np.hypot(x, y) > 55].any()


# --- analytic line integrals ---------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_uniform_slab_is_mu_times_oblique_thickness(method: str) -> None:
    """A 40 mm water slab across the beam: p = μ · 40 mm / cos(θ), θ the ray's tilt from y."""
    shape, spacing = (40, 60, 100), (2.5, 0.8, 1.0)  # D, H, W; anisotropic voxels
    hu = np.full(shape, -1000.0)
    hu[:, 5:55, :] = 0.0  # 50 voxels × 0.8 mm = 40 mm of water along y, centred on y = 0
    sid, sod, n = 1000.0, 700.0, 32
    geometry = Geometry(sid_mm=sid, sod_mm=sod, detector_px=(n, n), pixel_mm=(2.0, 2.0),
                        isocenter_mm=(0, 0, 0))
    out = drr.project(_volume(hu, spacing), geometry, method=method, quality="exact")
    source, pixels = _rays(geometry, n, sid, sod, np.zeros(3))
    d = pixels - source
    expected = MU_WATER * 40.0 * np.linalg.norm(d, axis=-1) / np.abs(d[..., 1])
    centre = np.s_[8:24, 8:24]  # away from the slab's lateral edges
    assert out.line_integral[centre] == pytest.approx(expected[centre], rel=2e-3)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("quality", ["fast", "exact"])
def test_sphere_is_mu_times_chord(method: str, quality: str) -> None:
    shape, spacing, radius = (72, 72, 72), (1.0, 1.0, 1.0), 30.0
    x, y, z = _grid(shape, spacing)
    hu = _hu(_sphere(x, y, z, (0, 0, 0), radius, 1.0))
    sid, sod, n = 1000.0, 800.0, 64
    geometry = Geometry(sid_mm=sid, sod_mm=sod, detector_px=(n, n), pixel_mm=(1.25, 1.25),
                        isocenter_mm=(0, 0, 0))
    out = drr.project(_volume(hu, spacing), geometry, method=method, quality=quality,
                      antialias=False)
    source, pixels = _rays(geometry, n, sid, sod, np.zeros(3))
    u = pixels - source
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    miss = np.linalg.norm(np.cross(-source, u), axis=-1)  # distance from the centre to the ray
    chord = 2 * np.sqrt(np.clip(radius**2 - miss**2, 0, None))
    core = miss < 0.6 * radius  # away from grazing rays, where the voxelised surface dominates
    err = np.abs(out.line_integral[core] - MU_WATER * chord[core]) / (MU_WATER * chord[core])
    assert err.mean() < 2e-3
    assert err.max() < 1e-2
    assert out.line_integral[miss > radius + 2.5].max() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_parallel_beam_limit_is_the_sum_along_the_axis(method: str) -> None:
    rng = np.random.default_rng(0)
    values = rng.random((6, 8, 10)).astype(np.float32)  # (D, H, W) per mm
    spacing = (2.0, 1.5, 1.0)
    vol = _volume(values, spacing)
    sid = 1e7
    geometry = Geometry(sid_mm=sid, sod_mm=sid - 20.0, detector_px=(6, 10), pixel_mm=(2.0, 1.0),
                        isocenter_mm=(0, 0, 0)).resolve(vol.bounds_mm())
    image = drr.project_values(vol, geometry, method=method, quality="exact", antialias=False)
    expected = values.sum(axis=1)[::-1] * 1.5  # rows superior → inferior; columns +x
    assert image == pytest.approx(expected, rel=1e-4)


def test_off_centre_cube_lands_where_the_geometry_says() -> None:
    """Shadow of a 20 mm cube at (30, -10, 26) mm vs the hand projection of its corners."""
    shape, spacing = (48, 48, 96), (2.0, 2.0, 1.0)
    x, y, z = _grid(shape, spacing)
    centre, half = np.array([30.0, -10.0, 26.0]), 10.0  # faces on voxel boundaries
    inside = ((np.abs(x - centre[0]) < half) & (np.abs(y - centre[1]) < half)
              & (np.abs(z - centre[2]) < half))
    hu = np.where(inside, 0.0, -1000.0)
    sid, sod, n, pitch = 1000.0, 500.0, 96, 2.0  # magnification about 2
    geometry = Geometry(sid_mm=sid, sod_mm=sod, detector_px=(n, n), pixel_mm=(pitch, pitch),
                        isocenter_mm=(0, 0, 0))
    out = drr.project(_volume(hu, spacing), geometry, quality="exact")
    corners = centre + half * np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1)
                                        for k in (-1, 1)])
    scale = sid / (sod - corners[:, 1])
    cols = (n - 1) / 2 + corners[:, 0] * scale / pitch
    rows = (n - 1) / 2 - corners[:, 2] * scale / pitch
    shadow = out.line_integral > 0.02 * out.line_integral.max()
    r_idx, c_idx = np.nonzero(shadow)
    # pixel centres inside the hull of the projected corners; 1.5 px for voxel blur
    assert c_idx.min() == pytest.approx(cols.min(), abs=1.5)
    assert c_idx.max() == pytest.approx(cols.max(), abs=1.5)
    assert r_idx.min() == pytest.approx(rows.min(), abs=1.5)
    assert r_idx.max() == pytest.approx(rows.max(), abs=1.5)
    assert out.geometry.magnification == pytest.approx(2.0)


# --- orientation -----------------------------------------------------------------------------


def _marked_body() -> tuple[Volume, Volume]:
    """A water ellipsoid 'body', with and without a bone ball at left-superior-anterior."""
    shape, spacing = (40, 48, 64), (3.0, 3.0, 3.0)
    x, y, z = _grid(shape, spacing)
    radius = np.sqrt((x / 85) ** 2 + (y / 60) ** 2 + (z / 50) ** 2)  # 1 on the surface
    plain = _hu(np.clip((1 - radius) * 20 + 0.5, 0, 1))
    ball = _sphere(x, y, z, (45.0, -25.0, 25.0), 10.0, 3.0)  # +x left, -y anterior, +z superior
    marked = np.maximum(plain, _hu(ball, drr.HU_BONE))
    return _volume(plain, spacing), _volume(marked, spacing)


@pytest.mark.parametrize(
    ("view", "right_half"), [("PA", True), ("AP", True), ("LAT", False), ("RLAT", True)]
)
def test_marker_orientation(view: str, right_half: bool) -> None:
    """Left-superior-anterior marker: image top-right for PA and AP, top-left for LAT."""
    plain, marked = _marked_body()
    geometry = Geometry(view=view, detector_px=(64, 64), pixel_mm=(4.0, 4.0))
    shadow = (drr.project(marked, geometry).line_integral
              - drr.project(plain, geometry).line_integral)
    row, col = np.unravel_index(np.argmax(shadow), shadow.shape)
    assert row < 31.5
    assert (col > 31.5) == right_half


def test_direction_cosines_do_not_change_the_image() -> None:
    """The same world content stored with flipped x and y axes renders identically."""
    _, marked = _marked_body()
    arr = marked.array[:, ::-1, ::-1]
    _, h, w = arr.shape
    _, sy, sx = marked.spacing_mm
    origin = (marked.origin_mm[0] + (w - 1) * sx, marked.origin_mm[1] + (h - 1) * sy,
              marked.origin_mm[2])
    flipped = Volume(np.ascontiguousarray(arr), marked.spacing_mm, origin,
                     np.diag([-1.0, -1.0, 1.0]))
    assert flipped.bounds_mm() == pytest.approx(marked.bounds_mm())
    for view in ("PA", "LAT"):
        geometry = Geometry(view=view, detector_px=(48, 48), pixel_mm=(5.0, 5.0))
        a = drr.project(marked, geometry, quality="exact").line_integral
        b = drr.project(flipped, geometry, quality="exact").line_integral
        assert b == pytest.approx(a, abs=1e-5)


# --- renderer agreement, clipping and errors -------------------------------------------------


def _smooth_volume() -> Volume:
    """Three overlapping Gaussian blobs (σ 10–20 mm) of μ-like values, 1 × 1 × 2 mm voxels."""
    shape, spacing = (50, 64, 64), (2.0, 1.0, 1.0)
    x, y, z = _grid(shape, spacing)
    mu = np.zeros(shape)
    for cx, cy, cz, s, a in [(0, 0, 0, 20, 0.02), (12, -8, 10, 10, 0.04), (-15, 5, -20, 14, 0.03)]:
        mu += a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * s * s))
    return _volume(mu, spacing)


@pytest.mark.parametrize("rotation", [(0.0, 0.0, 0.0), (20.0, -10.0, 35.0)], ids=["PA", "oblique"])
def test_siddon_and_trilinear_agree_and_thick_slabs_are_close(rotation: tuple) -> None:
    vol = _smooth_volume()
    geometry = Geometry(sid_mm=600.0, detector_px=(64, 64), pixel_mm=(1.5, 1.5),
                        rotation_deg=rotation).resolve(vol.bounds_mm())
    exact = drr.project_values(vol, geometry, method="siddon")
    thin = drr.project_values(vol, geometry, quality="exact")
    thick = drr.project_values(vol, geometry, quality="fast")
    assert _psnr(thin, exact) >= 45.0
    assert _psnr(thick, thin) >= 45.0
    assert _psnr(thick, exact) >= 45.0


@pytest.mark.parametrize("method", METHODS)
def test_detector_inside_the_volume_integrates_only_up_to_it(method: str) -> None:
    """Rays stop at the detector: a slab cut in half by the detector gives half the integral."""
    shape, spacing = (30, 40, 30), (1.0, 1.0, 1.0)
    vol = _volume(np.ones(shape, dtype=np.float32), spacing)  # y from -19.5 to 19.5 (40 mm)
    sid = 1000.0
    # PA: the detector plane is at y = iso_y + sod - sid = 0; only y ∈ [0, 20] is in front of it
    geometry = Geometry(sid_mm=sid, sod_mm=sid - 5.0, isocenter_mm=(0, 5.0, 0),
                        detector_px=(8, 8), pixel_mm=(1.0, 1.0)).resolve(vol.bounds_mm())
    image = drr.project_values(vol, geometry, method=method, quality="exact", antialias=False)
    d = geometry.pixel_centers_mm() - geometry.source_mm
    expected = 20.0 * np.linalg.norm(d, axis=-1) / np.abs(d[..., 1])
    assert image == pytest.approx(expected, rel=1e-3)


def test_too_wide_a_cone_for_slabs_raises() -> None:
    vol = _smooth_volume()
    # Source at (-20, -40, 0) beside the volume (x within it), beam (0.8, 0.6, 0), rays spread
    # ±79°: some rays that cross the volume run toward -x, against the slab axis.
    turn = float(np.degrees(np.arctan2(0.8, -0.6)))  # PA's (0, -1, 0) → (0.8, 0.6, 0)
    geometry = Geometry(sid_mm=20.0, sod_mm=10.0, detector_px=(16, 16), pixel_mm=(12.5, 12.5),
                        rotation_deg=(0, 0, turn), isocenter_mm=(-12, -34, 0)).resolve(
        vol.bounds_mm())
    assert geometry.source_mm == pytest.approx([-20.0, -40.0, 0.0])
    with pytest.raises(GeometryError, match="cone"):
        drr.project_values(vol, geometry)
    assert drr.project_values(vol, geometry, method="siddon").max() > 0


@pytest.mark.parametrize(
    "translation", [(0.0, -3000.0, 0.0), (2000.0, 0.0, 0.0)], ids=["wrong-side", "sideways"]
)
def test_geometry_that_misses_the_body_raises(translation: tuple) -> None:
    _, marked = _marked_body()
    geometry = Geometry(detector_px=(16, 16), translation_mm=translation)
    with pytest.raises(GeometryError, match="no ray"):
        drr.project(marked, geometry)


def test_bad_options_and_empty_volume_raise() -> None:
    _, marked = _marked_body()
    with pytest.raises(InputError, match="method"):
        drr.project(marked, Geometry(), method="raymarch")
    with pytest.raises(InputError, match="quality"):
        drr.project(marked, Geometry(), quality="best")
    with pytest.raises(InputError, match="no body"):
        drr.project(marked.with_array(np.full(marked.shape, -1000.0, np.float32)), Geometry())


# --- labels and outputs ----------------------------------------------------------------------


def test_label_thickness_is_the_chord() -> None:
    shape, spacing, radius = (64, 64, 64), (1.0, 1.0, 1.0), 25.0
    x, y, z = _grid(shape, spacing)
    labels = np.where(np.sqrt(x**2 + y**2 + z**2) <= radius, 7.0, 0.0)
    labels[:4, :4, :4] = 3.0
    vol = _volume(labels, spacing)
    sid, sod, n = 1000.0, 800.0, 64
    spec = Geometry(sid_mm=sid, sod_mm=sod, detector_px=(n, n), pixel_mm=(1.25, 1.25),
                    isocenter_mm=(0, 0, 0))
    geometry = spec.resolve(vol.bounds_mm())
    thickness = drr.project_labels(vol, geometry, [7, 99])
    assert not thickness[99].any()
    source, pixels = _rays(spec, n, sid, sod, np.zeros(3))
    u = pixels - source
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    miss = np.linalg.norm(np.cross(-source, u), axis=-1)
    chord = 2 * np.sqrt(np.clip(radius**2 - miss**2, 0, None))
    core = miss < 0.8 * radius
    assert np.abs(thickness[7][core] - chord[core]).mean() < 0.5  # mm, voxelised surface
    mask = drr.thickness_to_mask(thickness[7], vol.spacing_mm)
    assert mask[miss < radius - 1.0].all()  # ±1 voxel for the voxelised surface
    assert not mask[miss > radius + 1.0].any()


def test_display_and_intensity() -> None:
    p = np.linspace(0.0, 4.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    image, params = drr.to_display(p, (1.0, 1.0), unsharp_weight=0.0)
    assert image.dtype == np.float32
    assert image.shape == (64, 64)
    assert image.min() >= 0.0
    assert image.max() <= 1.0
    assert np.all(np.diff(image.ravel()) >= 0)  # denser is brighter
    assert params["low"] < params["high"]
    sharp, sharp_params = drr.to_display(p, (1.0, 1.0))
    again, _ = drr.to_display(p, (1.0, 1.0))
    assert np.array_equal(sharp, again)
    assert sharp_params["unsharp_weight"] == 0.7
    assert drr.to_intensity(np.array([0.0, 1.0])) == pytest.approx([1.0, np.exp(-1.0)])


def test_project_record_is_json() -> None:
    _, marked = _marked_body()
    out = drr.project(marked, Geometry(detector_px=(32, 32), pixel_mm=(8.0, 8.0)))
    record = out.to_dict()
    json.dumps(record)
    assert record["physics"]["kev"] == 60.0
    assert record["physics"]["supersample"] == 2  # 8 mm pixels over 3 mm voxels
    assert out.spacing_mm == (8.0, 8.0)
    assert out.line_integral.dtype == np.float32
    assert out.line_integral.min() >= 0.0


# --- real data -------------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_ct_pa_orientation_and_nodule() -> None:
    if not (DATA / "ct.nii.gz").exists():
        pytest.skip(f"real data not found at {DATA} (shared/data beside the checkout)")
    from cxrkit.volume import read_volume

    ct = read_volume(DATA / "ct.nii.gz")
    drr.body_mask(ct)  # warm-up: the first call also imports torch and scipy.ndimage
    start = time.perf_counter()
    drr.body_mask(ct)
    assert time.perf_counter() - start < 1.0  # 0.1–0.25 s unloaded; slack for a busy machine
    out = drr.project(ct, Geometry(detector_px=(256, 256)))
    p = out.line_integral
    assert 4.0 < p.max() < 9.0  # chest at 60 keV: I/I0 down to ~1e-3

    # (a) heart on the image right, liver on the image left
    with (DATA / "structures.csv").open() as fh:
        ids = {row["structure"]: int(row["id"]) for row in csv.DictReader(fh)}
    labels = read_volume(DATA / "structures.nii.gz")
    thickness = drr.project_labels(labels, out.geometry, [ids["heart"], ids["liver"]])
    cols = np.arange(256)[None, :]
    centroid = {k: float((t * cols).sum() / t.sum()) for k, t in thickness.items()}
    assert centroid[ids["heart"]] > 128 > centroid[ids["liver"]]

    # (b) the ~30 mm left-lower-lobe nodule: image right, over the lung, denser than around it
    with (DATA / "nodules.csv").open() as fh:
        big = [r for r in csv.DictReader(fh) if float(r["xy_extent_mm"]) > 20]
    assert len(big) == 4
    ras = np.mean([[float(r[f"ras_{a}_mm"]) for a in "xyz"] for r in big], axis=0)
    lps = ras * np.array([-1.0, -1.0, 1.0])
    col, row = out.geometry.project_points(lps[None])[0]
    assert 128 < col < 256
    assert 0 < row < 256
    lung = drr.project_labels(labels, out.geometry,
                              [ids["lung_upper_lobe_left"], ids["lung_lower_lobe_left"]])
    assert sum(lung.values())[round(row), round(col)] > 20.0  # mm of left lung along the ray
    yy, xx = np.mgrid[:256, :256]
    dist = np.hypot(xx - col, yy - row)
    assert p[dist < 4].mean() > p[(dist > 6) & (dist < 12)].mean() + 0.1


@pytest.mark.parametrize("geometry", [
    Geometry(detector_px=(40, 32)),
    Geometry(view="LAT", detector_px=(24, 40)),
    Geometry(view="AP", detector_px=(30, 30), sod_mm=45.0, sid_mm=90.0),  # rays end inside
    Geometry(detector_px=(32, 32), rotation_deg=(10.0, 5.0, 20.0)),
])
@pytest.mark.parametrize("exact", [False, True])
def test_numpy_slab_renderer_matches_torch(geometry: Geometry, exact: bool) -> None:
    """The CPU renderer (numpy, no torch import) and the torch one take the same samples."""
    torch = pytest.importorskip("torch")
    values = np.random.default_rng(1).random((20, 26, 30)).astype(np.float32)
    grid = Volume(values, (2.0, 1.5, 1.0), (-15.0, -20.0, -20.0), np.diag([-1.0, 1.0, 1.0]))
    resolved = geometry.resolve(grid.bounds_mm())
    reference, info = drr.render_slabs(torch.from_numpy(values), grid.index_to_world(),
                                       resolved, exact=exact)
    image, same = drr.render_slabs_numpy(values, grid.index_to_world(), resolved, exact=exact)
    assert same == info
    scale = float(reference.abs().max())
    assert scale > 0 and np.abs(image - reference.numpy()).max() <= 1e-5 * scale
    plan = drr._slab_plan(values.shape, grid.index_to_world(), resolved, exact)
    padded = np.zeros((plan.n_slabs, 3, 3), dtype=np.float32)
    separable = drr._separable_slabs(padded, plan, *resolved.detector_px) is not None
    assert separable == (geometry.rotation_deg == (0.0, 0.0, 0.0))  # both paths are tested


def test_cpu_render_does_not_import_torch(phantom_path: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("import sys; from cxrkit import drr; from cxrkit.geometry import Geometry; "
            "from cxrkit.volume import read_volume; "
            f"drr.project(read_volume({str(phantom_path)!r}), Geometry(detector_px=(32, 32))); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
