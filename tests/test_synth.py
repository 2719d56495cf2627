"""Synthesis engines: analytic projections, exact line-integral changes, placement, seeding."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from cxrkit.drr import hu_to_mu
from cxrkit.errors import InputError
from cxrkit.geometry import Geometry
from cxrkit.io import Radiograph
from cxrkit.nodules import Nodule, NoduleSpec, ParametricSource, generate_nodule
from cxrkit.synth import ENGINES, SUBTLETY_CONTRAST, SynthConfig
from cxrkit.synth.blend import intensity_scale, lung_field, project_nodule
from cxrkit.synth.ct import CTEngine, read_lung_mask, resample_nodule, threshold_lung_mask
from cxrkit.synth.sampling import box_from_mask, sample_seed, synthesize
from cxrkit.volume import Volume, write_volume

GEOMETRY = Geometry(sid_mm=1000.0, sod_mm=800.0, detector_px=(96, 96), pixel_mm=(1.0, 1.0))


def grid(n: int = 64) -> np.ndarray:
    """``(3, n, n, n)``: ``z, y, x`` voxel-centre coordinates (mm) of a 1 mm grid centred on 0."""
    return np.mgrid[0:n, 0:n, 0:n].astype(np.float32) - (n - 1) / 2


@pytest.fixture(scope="module")
def medium() -> Volume:
    """A 64 mm cube of uniform −200 HU tissue, 1 mm voxels, centred on the LPS origin."""
    hu = np.full((64, 64, 64), -200.0, dtype=np.float32)
    return Volume(hu, (1.0, 1.0, 1.0), (-31.5, -31.5, -31.5))


@pytest.fixture(scope="module")
def chest() -> tuple[Volume, np.ndarray]:
    """A 64³ phantom: soft tissue with two irregular lungs (−850 HU) and their mask."""
    z, y, x = grid()
    right = ((x + 14) / 12) ** 2 + (y / 16) ** 2 + (z / 24) ** 2 <= 1
    left = ((x - 14) / 10) ** 2 + (y / 14) ** 2 + (z / 20) ** 2 <= 1
    notch = (np.abs(x - 14) < 3) & (z > 5)  # a cut into the left lung: placement must avoid it
    lung = (right | left) & ~notch
    hu = np.where(lung, -850.0, 40.0).astype(np.float32)
    hu[(np.abs(x) > 30) | (np.abs(y) > 28)] = -1000.0  # air around the body
    return Volume(hu, (1.0, 1.0, 1.0), (-31.5, -31.5, -31.5)), lung


def constant_sphere(diameter: float, hu: float) -> Nodule:
    """A sphere of one HU value (partial-volume occupancy at its edge)."""
    shape = generate_nodule(NoduleSpec(diameter_mm=diameter), np.random.default_rng(0))
    return replace(shape, hu=np.full_like(shape.hu, hu))


def ct_engine(**options: Any) -> CTEngine:
    return CTEngine(SynthConfig(geometry=GEOMETRY, **options))


def test_inserted_sphere_projects_to_its_analytic_disc(medium: Volume) -> None:
    engine = ct_engine(kind="line_integral", center_mm=(6.0, -4.0, 3.0))
    scene = engine.prepare(medium, np.ones(medium.shape, bool))
    sample = engine.insert(scene, constant_sphere(20.0, 40.0), np.random.default_rng(0))
    geometry = scene.base.geometry
    u = geometry.projection_matrix() @ np.array([6.0, -4.0, 3.0, 1.0])
    col, row, depth = u[0] / u[2], u[1] / u[2], u[2]
    radius_px = 10.0 * geometry.sid_mm / depth / geometry.pixel_mm[0]
    rr, cc = np.mgrid[0:96, 0:96]
    disc = (rr - row) ** 2 + (cc - col) ** 2 <= radius_px**2
    iou = (disc & sample.mask).sum() / (disc | sample.mask).sum()
    assert iou > 0.9
    (placed,) = sample.nodules
    assert placed.center_px == pytest.approx((col, row), abs=1e-6)
    x1, y1, x2, y2 = placed.box
    assert abs((x1 + x2) / 2 - (col + 0.5)) < 1 and abs((y1 + y2) / 2 - (row + 0.5)) < 1
    assert (x2 - x1) == pytest.approx(2 * radius_px, abs=2)


def test_insertion_raises_line_integrals_exactly_inside_the_mask(medium: Volume) -> None:
    engine = ct_engine(kind="line_integral", quality="exact", center_mm=(-5.0, 3.0, 2.0))
    scene = engine.prepare(medium, np.ones(medium.shape, bool))
    sample = engine.insert(scene, constant_sphere(14.0, -20.0), np.random.default_rng(0))
    delta = sample.image - scene.base.line_integral
    thickness = sample.thickness_mm
    assert thickness is not None and sample.mask.any()
    mu = hu_to_mu(np.array([-20.0, -200.0], dtype=np.float32))
    np.testing.assert_allclose(delta, (mu[0] - mu[1]) * thickness, atol=2e-4)  # Δμ · length
    assert np.all(delta[sample.mask] > 1e-3)  # every mask pixel is raised ...
    assert np.abs(delta[thickness == 0]).max() < 1e-4  # ... nothing off the inserted voxels
    # beyond the silhouette only the renderer's interpolation fringe: within one voxel
    # (magnified 1.25×, 1 mm pixels) plus one pixel, holding under 10 % of the added attenuation
    fringe = (delta > 1e-4) & ~sample.mask
    assert ndimage.distance_transform_edt(~sample.mask)[fringe].max() <= 1.25 + 1.0 + 0.25
    assert delta[fringe].sum() < 0.1 * delta.sum()


def test_placement_never_leaves_the_lung(chest: tuple[Volume, np.ndarray]) -> None:
    volume, lung = chest
    engine = CTEngine(SynthConfig(geometry=replace(GEOMETRY, detector_px=(24, 24),
                                                   pixel_mm=(4.0, 4.0))))
    scene = engine.prepare(volume, lung)
    source = ParametricSource(diameter_mm=(4.0, 10.0), spicules=(3, 6),
                              spicule_length_mm=(2.0, 3.0))
    for seed in range(40):
        nodule = source.draw(np.random.default_rng(seed))
        sample = engine.insert(scene, nodule, np.random.default_rng(1000 + seed))
        center = np.asarray(sample.nodules[0].center_mm)
        block = resample_nodule(nodule, volume, center)
        assert not block.clipped and lung[block.slices][block.occupancy > 0].all()


def test_a_given_centre_outside_the_lung_is_an_error(chest: tuple[Volume, np.ndarray]) -> None:
    volume, lung = chest
    engine = ct_engine(center_mm=(14.0, 0.0, 15.0))  # inside the notch
    scene = engine.prepare(volume, lung)
    with pytest.raises(InputError, match="inside the lung"):
        engine.insert(scene, constant_sphere(6.0, 40.0), np.random.default_rng(0))


def test_a_nodule_too_big_for_the_lung_is_an_error(chest: tuple[Volume, np.ndarray]) -> None:
    volume, lung = chest
    engine = CTEngine(SynthConfig(geometry=GEOMETRY, max_tries=50))
    scene = engine.prepare(volume, lung)
    with pytest.raises(InputError, match="no place"):
        engine.insert(scene, constant_sphere(40.0, 40.0), np.random.default_rng(0))


def test_same_seed_same_bytes_and_subtlety_orders_contrast(
        chest: tuple[Volume, np.ndarray]) -> None:
    volume, lung = chest
    engine = ct_engine(kind="line_integral")
    scene = engine.prepare(volume, lung)
    source = ParametricSource(diameter_mm=(8.0, 12.0), shapes=("sphere", "lobulated"))
    seed = sample_seed(7, "chest", 0)
    a = synthesize(engine, scene, source, seed=seed)
    b = synthesize(engine, scene, source, seed=seed)
    assert a.image.tobytes() == b.image.tobytes() and a.mask.tobytes() == b.mask.tobytes()
    c = synthesize(engine, scene, source, seed=sample_seed(7, "chest", 1))
    assert a.image.tobytes() != c.image.tobytes()
    means = []
    for level in range(1, 6):
        s = synthesize(engine, scene, source, seed=seed, subtlety=[level])
        assert s.nodules[0].labels["subtlety"] == level
        assert s.nodules[0].contrast == SUBTLETY_CONTRAST[level]
        assert s.nodules[0].center_mm == a.nodules[0].center_mm  # same nodule, same place
        means.append(float((s.image - scene.base.line_integral)[s.mask].mean()))
    assert all(np.diff(means) > 0)


def test_negative_is_the_nodule_free_render(chest: tuple[Volume, np.ndarray]) -> None:
    volume, lung = chest
    engine = ct_engine()
    scene = engine.prepare(volume, lung)
    negative = engine.negative(scene)
    assert negative.nodules == () and not negative.mask.any() and negative.kind == "display"
    assert negative.image.min() >= 0.0 and negative.image.max() <= 1.0


def test_threshold_lung_mask_finds_the_lungs(chest: tuple[Volume, np.ndarray]) -> None:
    volume, lung = chest
    z, y, x = grid()
    hu = volume.array.copy()
    trachea = (x**2 + y**2 <= 8**2) & (z > 8)  # 16 mm wide, joining both lungs
    hu[trachea] = -1000.0
    found = threshold_lung_mask(volume.with_array(hu))
    dice = 2 * (found & lung).sum() / (found.sum() + lung.sum())
    assert dice > 0.9
    assert not found[(np.abs(x) > 30)].any()  # outside air is not lung
    assert found[trachea].mean() < 0.2


def test_read_lung_mask_from_lobe_labels(tmp_path: Path, chest: tuple[Volume, np.ndarray]
                                         ) -> None:
    volume, lung = chest
    _, y, x = grid()
    labels = np.where(lung & (x < 0), 12, np.where(lung, 10, 0)).astype(np.float32)
    labels[(np.abs(x) < 2) & (np.abs(y) < 2)] = 16  # trachea: not lung
    path = tmp_path / "structures.nii.gz"
    write_volume(volume.with_array(labels), path)
    with open(tmp_path / "structures.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "structure"])
        writer.writerows([[10, "lung_upper_lobe_left"], [12, "lung_upper_lobe_right"],
                          [16, "trachea"]])
    assert np.array_equal(read_lung_mask(path, volume), lung)
    coarse = Volume(labels[::2, ::2, ::2], (2.0, 2.0, 2.0), (-31.0, -31.0, -31.0))
    write_volume(coarse, path)  # another grid: resampled by nearest neighbour
    resampled = read_lung_mask(path, volume)
    assert 2 * (resampled & lung).sum() / (resampled.sum() + lung.sum()) > 0.9
    (tmp_path / "structures.csv").unlink()
    with pytest.raises(InputError, match="no table"):
        read_lung_mask(path, volume)


def test_box_from_mask_is_half_open() -> None:
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    assert box_from_mask(mask) == (3, 2, 9, 5)
    with pytest.raises(InputError):
        box_from_mask(np.zeros((4, 4), bool))


def test_sample_seeds_differ_per_item_and_index() -> None:
    seeds = {sample_seed(0, "a", 0), sample_seed(0, "a", 1), sample_seed(0, "b", 0),
             sample_seed(1, "a", 0)}
    assert len(seeds) == 4 and sample_seed(0, "a", 0) == sample_seed(0, "a", 0)
    with pytest.raises(InputError):
        sample_seed(-1, "a", 0)


# --- blend ------------------------------------------------------------------------------------


def test_projected_patch_is_the_magnified_disc() -> None:
    delta, _, mask = project_nodule(constant_sphere(16.0, 40.0), spacing_mm=(0.5, 0.5),
                                    sid_mm=1800.0, depth_mm=200.0)
    n = delta.shape[0]
    radius_px = 8.0 * 1800.0 / 1600.0 / 0.5
    rr, cc = np.mgrid[0:n, 0:n] - (n - 1) / 2
    disc = rr**2 + cc**2 <= radius_px**2
    assert (disc & mask).sum() / (disc | mask).sum() > 0.9
    mu = hu_to_mu(np.array([40.0, -850.0], dtype=np.float32))
    assert delta.max() == pytest.approx((mu[0] - mu[1]) * 16.0, rel=0.03)  # Δμ · diameter


@pytest.mark.parametrize("kind", ["line_integral", "intensity", "display"])
def test_blend_adds_in_the_log_domain_only_inside_the_nodule(kind: str) -> None:
    base = {"line_integral": 2.0, "intensity": np.exp(-2.0), "display": 0.4}[kind]
    image = Radiograph(np.full((80, 90), base, np.float32), (0.5, 0.5), kind)
    engine = ENGINES["blend"].create(SynthConfig(center_px=(40, 30), intensity_scale=0.25))
    scene = engine.prepare(image, np.ones((80, 90), bool))
    sample = engine.insert(scene, constant_sphere(10.0, 40.0), np.random.default_rng(0))
    thickness = sample.thickness_mm
    assert thickness is not None
    mu = hu_to_mu(np.array([40.0, -850.0], dtype=np.float32))
    delta_p = (mu[0] - mu[1]) * thickness
    expected = {"line_integral": base + delta_p, "intensity": base * np.exp(-delta_p),
                "display": base + 0.25 * delta_p}[kind]
    np.testing.assert_allclose(sample.image, expected, rtol=2e-3, atol=1e-5)
    assert np.all(sample.image[thickness == 0] == np.float32(base))  # nothing else changes
    x1, y1, x2, y2 = sample.nodules[0].box
    assert (x1 + x2) / 2 == pytest.approx(40.5, abs=1) and (y1 + y2) / 2 == pytest.approx(30.5,
                                                                                          abs=1)


def test_blend_placement_stays_in_the_lung_field() -> None:
    yy, xx = np.mgrid[0:128, 0:128]
    lung = (((xx - 40) / 22) ** 2 + ((yy - 60) / 40) ** 2 <= 1) | (
        ((xx - 92) / 18) ** 2 + ((yy - 60) / 36) ** 2 <= 1)
    image = Radiograph(np.where(lung, 0.3, 0.7).astype(np.float32), (0.6, 0.6), "display")
    engine = ENGINES["blend"].create(SynthConfig())
    scene = engine.prepare(image, lung)
    source = ParametricSource(diameter_mm=(5.0, 16.0), spicule_length_mm=(2.0, 4.0))
    for seed in range(50):
        sample = synthesize(engine, scene, source, seed=seed)
        assert sample.mask.any() and lung[sample.mask].all()


def test_lung_field_of_a_synthetic_chest() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:400, 0:360] / np.array([400.0, 360.0])[:, None, None]
    lungs = (((xx - 0.3) / 0.15) ** 2 + ((yy - 0.47) / 0.28) ** 2 <= 1) | (
        ((xx - 0.7) / 0.14) ** 2 + ((yy - 0.48) / 0.27) ** 2 <= 1)
    body = np.abs(xx - 0.5) < 0.42
    pixels = np.where(lungs, 0.3, np.where(body, 0.75, 0.03)) + rng.normal(0, 0.02, xx.shape)
    found, method = lung_field(pixels.astype(np.float32))
    dice = 2 * (found & lungs).sum() / (found.sum() + lungs.sum())
    assert dice > 0.85 and method == "threshold"
    assert not found[~body].any()


def test_intensity_scale_sources() -> None:
    flat = np.full((8, 8), 0.5, np.float32)
    assert intensity_scale(Radiograph(flat, None, "line_integral")) == (1.0, "exact")
    meta = {"project": {"options": {"display": {"low": -0.5, "high": 6.5,
                                                "unsharp_weight": 0.7}}}}
    scale, method = intensity_scale(Radiograph(flat, None, "display", meta))
    assert scale == pytest.approx(1.7 / 7.0) and method == "cxrkit-display-window"
    ramp = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    scale, method = intensity_scale(Radiograph(ramp, None, "display"))
    assert method == "estimated-from-window" and 0.15 < scale < 0.25


def test_nodule_table_columns_groups_and_errors(tmp_path: Path) -> None:
    from cxrkit.synth.known import read_nodule_table

    table = tmp_path / "nodules.csv"
    table.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n"
                     "a,10,20,30,12\na,12,21,30,10\na,-40,0,0,5\n")
    first, second = read_nodule_table(table)
    assert first.center_mm == (11.0, 20.5, 30.0) and first.diameter_mm == 11.0
    assert first.marks == 2 and first.counted and second.center_mm == (-40.0, 0.0, 0.0)
    table.write_text("ras_x_mm,ras_y_mm,ras_z_mm,diameter_mm\n1,2,3,2\n")
    (only,) = read_nodule_table(table)
    assert only.center_mm == (-1.0, -2.0, 3.0) and not only.counted  # RAS -> LPS, < 3 mm
    table.write_text("x_mm,y_mm,z_mm,diameter_mm\n1,2,nan,8\n")
    with pytest.raises(InputError, match="line 2"):
        read_nodule_table(table)
