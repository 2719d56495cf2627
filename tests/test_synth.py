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


def outline(col: float, row: float, radius: float) -> list[tuple[int, int]]:
    """Boundary pixels of a disc, in order around it (as an LIDC ``edgeMap`` chain)."""
    out: list[tuple[int, int]] = []
    for angle in np.linspace(0.0, 2 * np.pi, 400, endpoint=False):
        pixel = (round(col + radius * np.cos(angle)), round(row + radius * np.sin(angle)))
        if pixel not in out:
            out.append(pixel)
    return out


def lidc_xml(readers: list[list[tuple[str, list[tuple[float, list[tuple[int, int]]]]]]], *,
             ratings: dict[str, int] | None = None, namespace: bool = True) -> str:
    """An LIDC reader XML: per reader, marks ``(nodule id, [(z_mm, [(col, row), ...]), ...])``
    (one pixel: a small-nodule mark); every mark with outlines gets ``ratings``; each reader
    also marks one non-nodule."""
    ns = ' xmlns="http://www.nih.gov"' if namespace else ""
    parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<!-- readers -->\n<LidcReadMessage{ns}>',
             "<ResponseHeader><Version>1.8.1</Version></ResponseHeader>"]
    for number, marks in enumerate(readers):
        parts.append(f"<readingSession><servicingRadiologistID>{100 + number}"
                     "</servicingRadiologistID>")
        for nodule_id, rois in marks:
            parts.append(f"<unblindedReadNodule><noduleID>{nodule_id}</noduleID>")
            if ratings and any(len(pixels) > 1 for _, pixels in rois):
                parts.append("<characteristics>" + "".join(
                    f"<{k}>{v}</{k}>" for k, v in ratings.items()) + "</characteristics>")
            for z, pixels in rois:
                parts.append(f"<roi><imageZposition>{z:f} </imageZposition>"
                             "<inclusion>TRUE</inclusion>" + "".join(
                                 f"<edgeMap><xCoord>{c}</xCoord><yCoord>{r}</yCoord></edgeMap>"
                                 for c, r in pixels) + "</roi>")
            parts.append("</unblindedReadNodule>")
        parts.append("<nonNodule><nonNoduleID>n1</nonNoduleID><imageZposition>0.0"
                     "</imageZposition><locus><xCoord>5</xCoord><yCoord>5</yCoord></locus>"
                     "</nonNodule></readingSession>")
    return "\n".join([*parts, "</LidcReadMessage>"])


def ball_reads(centre: tuple[float, float, float], radius: float, origin: float = -31.5,
               shift: float = 0.0) -> list[tuple[float, list[tuple[int, int]]]]:
    """A reader's outlines of a ball at an LPS centre on a 1 mm grid starting at ``origin``:
    one per slice it crosses, ``shift`` pixels off to the left."""
    col, row = centre[0] - origin + shift, centre[1] - origin
    rois = []
    for k in range(64):
        z = origin + k
        r2 = radius**2 - (z - centre[2]) ** 2
        if r2 >= 1.0:
            rois.append((z, outline(col, row, float(np.sqrt(r2)))))
    return rois


LIDC_RATINGS = {"subtlety": 4, "internalStructure": 1, "calcification": 6, "sphericity": 4,
                "margin": 5, "lobulation": 1, "spiculation": 1, "texture": 5, "malignancy": 3}


def test_lidc_xml_nodules_on_the_ct_grid(medium: Volume, tmp_path: Path) -> None:
    """Outlines in pixels → LPS mm on the CT's grid; readers' marks grouped, rated, and their
    consensus as the occupancy; small marks listed, not counted; non-nodules not read."""
    from cxrkit.synth.known import MIN_DIAMETER_MM, read_lidc_xml

    centre = (-14.0, 3.0, 10.0)
    marks = [[("big", ball_reads(centre, 5.0, shift=shift)), ("tiny", [(-20.5, [(40, 20)])])]
             for shift in (0.0, 0.0, 1.0)]
    path = tmp_path / "reads.xml"
    path.write_text(lidc_xml(marks, ratings=LIDC_RATINGS))
    ct = replace(medium, origin_mm=(-31.5, -31.5, -31.5))
    big, tiny = read_lidc_xml(path, ct)
    assert big.marks == 3 and big.source["ids"] == ["100:big", "101:big", "102:big"]
    assert big.source["xml"] == str(path)
    # mean outline pixel; the third reader's outline sits 1 pixel to the left (+x)
    assert np.allclose(big.center_mm, (centre[0] + 1 / 3, centre[1], centre[2]), atol=0.3)
    assert 10.0 <= big.diameter_mm <= 11.0 and big.counted
    assert big.attributes["texture"] == "solid" and big.attributes["calcified"] == 0
    assert big.attributes["border_irregular"] == 0 and big.attributes["subtlety"] == 4
    occupancy = big.occupancy
    assert occupancy is not None and occupancy.spacing_mm == (1.0, 1.0, 1.0)
    inside = np.argwhere(occupancy.array >= 0.5)
    world = (np.c_[inside[:, ::-1], np.ones(len(inside))] @ occupancy.index_to_world().T)[:, :3]
    assert np.allclose(world.mean(axis=0), centre, atol=0.5)
    assert np.linalg.norm(world - centre, axis=1).max() <= 6.0  # outline pixels included
    assert abs(len(inside) - 4 / 3 * np.pi * 5.0**3) < 0.35 * 4 / 3 * np.pi * 5.0**3
    assert set(np.unique(occupancy.array * 3).round().tolist()) == {0, 1, 2, 3}
    assert tiny.center_mm == (40 - 31.5, 20 - 31.5, -20.5) and tiny.marks == 3
    assert tiny.diameter_mm == 1.0 < MIN_DIAMETER_MM and not tiny.counted
    assert tiny.occupancy is None and tiny.attributes == {}
    # no namespace, an oblique-free CT with another origin: the same pixels, other mm
    path.write_text(lidc_xml(marks[:1], namespace=False))
    (moved, _) = read_lidc_xml(path, replace(ct, origin_mm=(-21.5, -31.5, -31.5)))
    assert np.allclose(moved.center_mm, (centre[0] + 10, centre[1], centre[2]), atol=0.3)


def test_lidc_xml_found_beside_the_ct_and_refused_when_bad(medium: Volume, tmp_path: Path
                                                          ) -> None:
    from cxrkit.errors import FormatError
    from cxrkit.synth import lidc_xml as lx
    from cxrkit.synth.known import read_beside, read_known

    ct = tmp_path / "scan.nii.gz"
    ct.write_bytes(b"")
    good = lidc_xml([[("a", ball_reads((0.0, 0.0, 0.0), 4.0))]])
    (tmp_path / "other.xml").write_text('<?xml version="1.0"?><config><a/></config>')
    assert lx.xml_beside(ct) is None and read_beside(ct, medium) == []
    (tmp_path / "069.xml").write_text(good)  # any name, an LIDC root
    assert lx.xml_beside(ct) == tmp_path / "069.xml" and lx.is_lidc_xml(tmp_path / "069.xml")
    (tmp_path / "070.xml").write_text(good)
    with pytest.raises(InputError, match="2 LIDC reader XML files"):
        lx.xml_beside(ct)
    (tmp_path / "lidc-reader-annotations.xml").write_text(good)
    assert lx.xml_beside(ct) == tmp_path / "lidc-reader-annotations.xml"
    (tmp_path / "scan.xml").write_text(good)
    assert lx.xml_beside(ct) == tmp_path / "scan.xml"
    series = tmp_path / "series"  # a DICOM folder with its XML inside (LIDC-IDRI's layout)
    series.mkdir()
    (series / "158.xml").write_text(good)
    assert lx.xml_beside(series) == series / "158.xml"
    (only,) = read_beside(ct, medium)
    assert only.source["xml"].endswith("scan.xml") and only.occupancy is not None
    # a table beside the CT wins (LIDC's nodules.csv is made from the XML: never both)
    (tmp_path / "nodules.csv").write_text("x_mm,y_mm,z_mm,diameter_mm\n1,2,3,8\n")
    (table,) = read_beside(ct, medium)
    assert table.source["table"].endswith("nodules.csv")
    # an explicit XML needs its CT; bad files are refused with one clear message
    bad = tmp_path / "bad.xml"
    with pytest.raises(InputError, match="needs its CT"):
        read_known(tmp_path / "scan.xml")
    cases = {
        '<!DOCTYPE x [<!ENTITY a "aaaa">]><LidcReadMessage>&a;</LidcReadMessage>': "DOCTYPE",
        "<LidcReadMessage><readingSession>": "not well-formed",
        "<IdriReadMessage/>": "not an LIDC",
        good.replace("<xCoord>", "<xCoord>nan", 1): "xCoord",
        good.replace("<roi>", "<nope>").replace("</roi>", "</nope>"): "without an outline",
    }
    for text, message in cases.items():
        bad.write_text(text)
        with pytest.raises(FormatError, match=message):
            read_known(bad, medium)
    bad.write_text(good.replace("<xCoord>", "<xCoord>9", 1))  # column 9xx: off a 64-pixel CT
    with pytest.raises(InputError, match="not this CT's"):
        read_known(bad, medium)
    bad.write_text(good.replace("<imageZposition>-", "<imageZposition>-9", 1))  # z -93.5
    with pytest.raises(InputError, match="not this CT's"):
        read_known(bad, medium)
    oblique = replace(medium, direction=np.array([[1.0, 0, 0], [0, 0.8, -0.6], [0, 0.6, 0.8]]))
    with pytest.raises(InputError, match="axial"):
        read_known(tmp_path / "scan.xml", oblique)
    lx_limit = lx.MAX_XML_BYTES
    try:
        lx.MAX_XML_BYTES = 100
        with pytest.raises(InputError, match="limit"):
            read_known(tmp_path / "scan.xml", medium)
    finally:
        lx.MAX_XML_BYTES = lx_limit


def test_engines_with_a_size_limit_get_nodules_drawn_again() -> None:
    """synthesize() draws again (same stream, so deterministic) for an engine with ``fits``;
    an engine without it gets the first draw, as before."""
    from cxrkit.nodules import ParametricSource
    from cxrkit.synth.sampling import sample_streams, synthesize

    class Recorder:
        def insert(self, scene: object, nodule: object, generator: object) -> object:
            return nodule

    class Limited(Recorder):
        def fits(self, nodule: object) -> bool:
            return nodule.labels["diameter_mm"] < 10  # type: ignore[attr-defined]

    source = ParametricSource(diameter_mm=(4.0, 60.0), shapes=("sphere",))
    first = [synthesize(Recorder(), None, source, seed=s).labels["diameter_mm"]  # type: ignore
             for s in range(12)]
    expected = [source.draw(sample_streams(s)[1]).labels["diameter_mm"] for s in range(12)]
    assert first == expected and max(first) >= 10
    limited = [synthesize(Limited(), None, source, seed=s).labels["diameter_mm"]  # type: ignore
               for s in range(12)]
    assert max(limited) < 10
    assert [a for a, b in zip(first, limited, strict=True) if a < 10] == \
        [b for a, b in zip(first, limited, strict=True) if a < 10]  # fitting first draws kept
    again = [synthesize(Limited(), None, source, seed=s).labels["diameter_mm"]  # type: ignore
             for s in range(12)]
    assert again == limited
