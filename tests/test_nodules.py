"""Nodule sources: the parametric generator's measured properties, LUNA16 patches, --where."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from cxrkit.errors import InputError
from cxrkit.nodules import (
    CALCIFICATIONS,
    CALCIFIED_FRACTION,
    SHAPES,
    TEXTURES,
    Nodule,
    NoduleSpec,
    ParametricSource,
    generate_nodule,
    parse_where,
    read_luna16,
)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def radius_grid(nodule: Nodule) -> np.ndarray:
    """Distance (mm) of every voxel centre from the nodule's centre."""
    idx = np.indices(nodule.occupancy.shape).astype(float)
    offset = (idx - np.reshape(nodule.center_index, (3, 1, 1, 1))) * np.reshape(
        nodule.spacing_mm, (3, 1, 1, 1))
    return np.sqrt((offset**2).sum(0))


@pytest.mark.parametrize(("diameter", "spacing"), [(5.0, 1.0), (8.3, 1.0), (13.0, 0.5),
                                                   (24.6, 1.0)])
def test_sphere_diameter_within_a_voxel(diameter: float, spacing: float) -> None:
    nodule = generate_nodule(NoduleSpec(diameter_mm=diameter), rng(), spacing_mm=spacing)
    mask = nodule.mask
    for axis in range(3):
        extent = mask.any(axis=tuple(a for a in range(3) if a != axis)).sum() * spacing
        assert abs(extent - diameter) <= spacing
    volume = nodule.occupancy.sum() * spacing**3  # partial-volume sum matches the sphere
    assert volume == pytest.approx(np.pi / 6 * diameter**3, rel=0.05)
    assert nodule.labels["diameter_mm"] == diameter


def test_ellipsoid_major_axis_is_the_diameter() -> None:
    nodule = generate_nodule(NoduleSpec(diameter_mm=16.0, shape="ellipsoid", elongation=0.5),
                             rng(3))
    axes = np.asarray(nodule.source["construction"]["axes"])  # rows: unit axes (x, y, z)
    xyz = np.argwhere(nodule.mask)[:, ::-1] - np.asarray(nodule.center_index)[::-1]
    extents = [np.ptp(xyz @ a) + 1.0 for a in axes]  # voxel-centre span + one voxel
    assert abs(extents[0] - 16.0) <= 1.0
    assert abs(extents[2] - 8.0) <= 1.0 and extents[1] < extents[0]


@pytest.mark.parametrize("pattern", CALCIFICATIONS[1:])
@pytest.mark.parametrize("share", [None, 0.1, 0.45])
def test_calcified_fraction_is_as_asked(pattern: str, share: float | None) -> None:
    spec = NoduleSpec(diameter_mm=14.0, calcification=pattern, calcified_fraction=share)
    nodule = generate_nodule(spec, rng(1))
    expected = share if share is not None else CALCIFIED_FRACTION[pattern]
    assert nodule.calcified_fraction() == pytest.approx(expected, abs=0.01)
    assert nodule.hu[nodule.mask].max() > 400  # near bone
    assert nodule.labels["calcified"] == 1


def test_calcification_patterns_have_their_geometry() -> None:
    central = generate_nodule(NoduleSpec(diameter_mm=16.0, calcification="central"), rng())
    r = radius_grid(central)
    calc = central.mask & (central.hu > 200)
    assert r[calc].max() < r[central.mask & ~calc].min() + 1.0  # a nidus in the middle
    laminated = generate_nodule(NoduleSpec(diameter_mm=20.0, calcification="laminated"), rng())
    r = radius_grid(laminated)
    calc = laminated.mask & (laminated.hu > 200)
    rings = np.bincount(np.round(r[calc]).astype(int))
    gaps = np.flatnonzero(rings[1:-1] == 0)  # shells separated by uncalcified radii
    assert len(gaps) >= 2


def test_uncalcified_nodules_stay_below_bone() -> None:
    for texture in TEXTURES:
        nodule = generate_nodule(NoduleSpec(diameter_mm=12.0, texture=texture), rng())
        assert nodule.calcified_fraction() == 0.0 and nodule.labels["calcified"] == 0


@pytest.mark.parametrize(("count", "length"), [(3, 4.0), (7, 6.0), (12, 8.0)])
def test_spicule_count_by_connected_protrusions(count: int, length: float) -> None:
    spec = NoduleSpec(diameter_mm=10.0, shape="spiculated", spicules=count,
                      spicule_length_mm=length)
    nodule = generate_nodule(spec, rng(count))
    r = radius_grid(nodule)
    outside = nodule.mask & (r > 5.0 + 1.5)  # beyond the body
    _, found = ndimage.label(outside, structure=np.ones((3, 3, 3)))
    assert found == count
    # and each recorded direction carries a strand reaching about the asked length
    xyz = np.argwhere(nodule.mask)[:, ::-1] - np.asarray(nodule.center_index)[::-1]
    for direction in nodule.source["construction"]["spicule_directions"]:
        along = xyz @ np.asarray(direction)
        across = np.linalg.norm(xyz - along[:, None] * np.asarray(direction), axis=1)
        reach = along[across < 1.5].max()
        assert 5.0 + length - 1.0 <= reach <= 5.0 + length + 1.0
    assert nodule.labels["border_irregular"] == 1


def test_textures_have_their_densities() -> None:
    solid = generate_nodule(NoduleSpec(diameter_mm=14.0, texture="solid"), rng())
    glass = generate_nodule(NoduleSpec(diameter_mm=14.0, texture="ground-glass"), rng())
    part = generate_nodule(NoduleSpec(diameter_mm=14.0, texture="part-solid",
                                      solid_fraction=0.4), rng())
    assert solid.hu[solid.mask].mean() == pytest.approx(30.0, abs=0.5)
    assert glass.hu[glass.mask].mean() == pytest.approx(-600.0, abs=0.5)
    assert (part.hu[part.mask] > -300).mean() == pytest.approx(0.4, abs=0.02)
    custom = generate_nodule(NoduleSpec(diameter_mm=10.0, density_hu=-300.0), rng())
    assert custom.hu[custom.mask].mean() == pytest.approx(-300.0, abs=0.5)


def test_internal_air_makes_pockets_and_inhomogeneous() -> None:
    nodule = generate_nodule(NoduleSpec(diameter_mm=16.0, internal="air"), rng())
    assert (nodule.hu[nodule.mask] < -800).mean() > 0.03
    assert nodule.labels["inhomogeneous"] == 1


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("texture", TEXTURES)
def test_labels_follow_the_table_rules(shape: str, texture: str) -> None:
    labels = NoduleSpec(shape=shape, texture=texture).labels()
    assert labels["border_irregular"] == int(shape in ("lobulated", "spiculated"))
    assert labels["inhomogeneous"] == int(texture != "solid")
    assert labels["texture"] == texture and labels["subtlety"] is None


def test_same_seed_same_nodule() -> None:
    spec = NoduleSpec(diameter_mm=12.0, shape="lobulated", texture="part-solid",
                      calcification="popcorn")
    a, b = generate_nodule(spec, rng(5)), generate_nodule(spec, rng(5))
    assert a.hu.tobytes() == b.hu.tobytes() and a.occupancy.tobytes() == b.occupancy.tobytes()
    c = generate_nodule(spec, rng(6))
    assert a.hu.tobytes() != c.hu.tobytes()


def test_parametric_source_draws_within_its_ranges() -> None:
    source = ParametricSource(diameter_mm=(6.0, 9.0), shapes=("ellipsoid",),
                              textures=("ground-glass",))
    g = rng(2)
    for _ in range(5):
        nodule = source.draw(g)
        assert 6.0 <= nodule.labels["diameter_mm"] <= 9.0
        assert nodule.source["spec"]["shape"] == "ellipsoid"
        assert nodule.labels["texture"] == "ground-glass"


def test_contrast_scales_the_excess_over_lung() -> None:
    nodule = generate_nodule(NoduleSpec(diameter_mm=8.0), rng())
    half = nodule.with_contrast(0.5)
    np.testing.assert_allclose(half.hu + 850, 0.5 * (nodule.hu + 850), rtol=1e-5, atol=1e-3)
    assert half.occupancy is nodule.occupancy and half.labels == nodule.labels


@pytest.mark.parametrize("bad", [{"shape": "cube"}, {"diameter_mm": 1.0}, {"texture": "fuzzy"},
                                 {"shape": "spiculated", "spicules": 0},
                                 {"calcified_fraction": 1.5}])
def test_spec_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(InputError):
        NoduleSpec(**bad)


# --- --where ----------------------------------------------------------------------------------

ROW = {"calcified": "1", "diameter_mm": "9", "texture": "ground-glass", "subtlety": "4.5",
       "border_irregular": "0"}


@pytest.mark.parametrize(("text", "expected"), [
    ("calcified==1 and diameter_mm>=8", True),
    ("calcified == 1 and diameter_mm > 9", False),
    ("texture=='ground-glass'", True),
    ('texture != "solid" and not border_irregular', True),
    ("(calcified==0 or subtlety>=4) and 8 <= diameter_mm < 10", True),
    ("not (calcified or border_irregular)", False),
    ("calcified = true", True),
    ("subtlety < 4.5", False),
    ("diameter_mm >= 1e1", False),
    ("calcified", True),
])
def test_where_accepts(text: str, expected: bool) -> None:
    assert parse_where(text, columns=ROW.keys())(ROW) is expected


@pytest.mark.parametrize("text", [
    "__import__('os').system('touch PWNED')",
    "diameter_mm.__class__",
    "[x for x in ()]",
    "1 if calcified else 0",
    "calcified ==",
    "calcified == 1 and",
    "(calcified == 1",
    "calcified == 1)",
    "diameter_mm >= 8; rm -rf /",
    "calcified & 1",
    "lambda: 1",
    "",
])
def test_where_rejects_and_executes_nothing(text: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError):
        parse_where(text, columns=ROW.keys())(ROW)
    assert not (tmp_path / "PWNED").exists()


def test_where_names_unknown_columns() -> None:
    with pytest.raises(InputError, match="unknown column 'diameter'"):
        parse_where("diameter > 3", columns=ROW.keys())


# --- LUNA16 patches ---------------------------------------------------------------------------


def make_luna_dir(folder: Path) -> Path:
    """Two fake 20³ patches (a solid and a calcified nodule) with a nodules.csv, in ``folder``."""
    from cxrkit.volume import Volume, write_volume

    tmp_path = folder
    (tmp_path / "patches").mkdir(parents=True)
    z, y, x = np.mgrid[0:20, 0:20, 0:20] - 9.5
    rows = []
    for k, (calcified, hu, radius) in enumerate([(0, 40.0, 4.0), (1, 900.0, 6.0)]):
        ball = x**2 + y**2 + z**2 <= radius**2
        image = np.where(ball, hu, -850.0).astype(np.float32)
        write_volume(Volume(image, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)),
                     tmp_path / "patches" / f"uid{k}_dcm_0.mha")
        write_volume(Volume(ball.astype(np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)),
                     tmp_path / "patches" / f"uid{k}_seg_0.mha")
        rows.append({"image_file": f"uid{k}_dcm_0.mha", "mask_file": f"uid{k}_seg_0.mha",
                     "patient_id": f"P{k}", "diameter_mm": 2 * radius, "calcified": calcified,
                     "border_irregular": 0, "texture_class": "solid", "inhomogeneous": 0,
                     "subtlety": 3 + k})
    with open(tmp_path / "nodules.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return tmp_path


def test_luna16_select_and_load(tmp_path: Path) -> None:
    patches = read_luna16(make_luna_dir(tmp_path))
    assert len(patches) == 2
    calcified = patches.select("calcified==1 and diameter_mm>=8")
    assert len(calcified) == 1
    nodule = calcified.draw(rng())
    assert nodule.labels == {"calcified": 1, "border_irregular": 0, "texture": "solid",
                             "inhomogeneous": 0, "subtlety": 4.0, "diameter_mm": 12.0}
    assert nodule.source["patch"] == "uid1_dcm_0" and nodule.source["kind"] == "luna16"
    np.testing.assert_allclose(nodule.center_index, (9.5, 9.5, 9.5), atol=1e-6)
    assert nodule.calcified_fraction() == 1.0
    with pytest.raises(InputError, match="no LUNA16 nodule matches"):
        patches.select("diameter_mm > 100")


def test_luna16_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nodules\.csv"):
        read_luna16(tmp_path)


@pytest.mark.realdata
def test_luna16_real_patches(shared_data: Path) -> None:
    patches = read_luna16(shared_data / "luna16-nodules")
    chosen = patches.select("calcified==1 and diameter_mm>=8")
    assert 0 < len(chosen) < len(patches)
    assert all(r["calcified"] == "1" and float(r["diameter_mm"]) >= 8 for r in chosen.rows)
    nodule = chosen.load(0)
    assert nodule.hu.shape == nodule.occupancy.shape and nodule.mask.sum() > 50
    assert nodule.spacing_mm == pytest.approx((1.0, 1.0, 1.0))
    glass = patches.select("texture=='ground-glass'")
    assert {r["texture_class"] for r in glass.rows} == {"ground-glass"}
