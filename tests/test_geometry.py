"""Tests for cxrkit.geometry: placement, display convention, projection matrix, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxrkit.errors import GeometryError
from cxrkit.geometry import DETECTOR_GAP_MM, DETECTOR_SIZE_MM, VIEWS, Geometry, rotation_matrix

BODY = np.array([[-150.0, -100.0, -160.0], [150.0, 100.0, 160.0]])  # LPS min / max, mm
# patient's left (+x), anterior (-y), superior (+z)
LEFT_ANTERIOR_SUPERIOR = np.array([[80.0, -60.0, 100.0]])


def _pa_pixel(point: np.ndarray, sid: float, sod: float, n: int, pitch: float) -> np.ndarray:
    """Hand-derived PA projection with the isocentre at the origin: (col, row)."""
    x, y, z = point
    scale = sid / (sod - y)  # the source sits at y = +sod, the beam runs toward -y
    return np.array([(n - 1) / 2 + x * scale / pitch, (n - 1) / 2 - z * scale / pitch])


def test_defaults_place_detector_behind_body_surface() -> None:
    g = Geometry().resolve(BODY)
    assert g.detector_px == (1024, 1024)
    assert g.pixel_mm == pytest.approx((DETECTOR_SIZE_MM / 1024,) * 2)
    assert g.isocenter_mm == pytest.approx((0.0, 0.0, 0.0))
    # PA: detector in front of the patient, 15 mm beyond the anterior surface (y = -100)
    assert g.detector_center_mm[1] == pytest.approx(-100.0 - DETECTOR_GAP_MM)
    assert g.sod_mm == pytest.approx(1800.0 - 100.0 - DETECTOR_GAP_MM)
    assert g.source_mm == pytest.approx([0.0, g.sod_mm, 0.0])
    assert g.magnification == pytest.approx(1800.0 / g.sod_mm)


@pytest.mark.parametrize(
    ("view", "source_sign", "axis"),
    [("PA", 1, 1), ("AP", -1, 1), ("LAT", -1, 0), ("RLAT", 1, 0)],
)
def test_source_side(view: str, source_sign: int, axis: int) -> None:
    g = Geometry(view=view, sod_mm=1000.0).resolve(BODY)
    assert np.sign(g.source_mm[axis]) == source_sign  # PA source posterior (+y), LAT on the right
    assert np.sign(g.detector_center_mm[axis]) == -source_sign


@pytest.mark.parametrize(
    ("view", "right_half", "top_half"),
    [("PA", True, True), ("AP", True, True), ("LAT", False, True), ("RLAT", True, True)],
)
def test_display_convention(view: str, right_half: bool, top_half: bool) -> None:
    """Left-superior-anterior marker: image top-right for PA and AP; anterior left for LAT."""
    g = Geometry(view=view, detector_px=(100, 100)).resolve(BODY)
    col, row = g.project_points(LEFT_ANTERIOR_SUPERIOR)[0]
    assert (col > 49.5) == right_half
    assert (row < 49.5) == top_half


def test_pa_is_not_a_mirrored_ap() -> None:
    """AP is not PA turned 180° about z: that would put the patient's left on the image left."""
    turned = Geometry(view="PA", rotation_deg=(0, 0, 180), detector_px=(100, 100)).resolve(BODY)
    ap = Geometry(view="AP", detector_px=(100, 100)).resolve(BODY)
    assert turned.source_mm == pytest.approx(ap.source_mm)
    assert turned.project_points(LEFT_ANTERIOR_SUPERIOR)[0, 0] < 49.5  # mirrored
    assert ap.project_points(LEFT_ANTERIOR_SUPERIOR)[0, 0] > 49.5


@pytest.mark.parametrize(("angle", "view"), [(90.0, "LAT"), (-90.0, "RLAT")])
def test_rotated_pa_equals_lateral(angle: float, view: str) -> None:
    rotated = Geometry(view="PA", rotation_deg=(0, 0, angle), sod_mm=1500.0).resolve(BODY)
    lateral = Geometry(view=view, sod_mm=1500.0).resolve(BODY)
    assert rotated.projection_matrix() == pytest.approx(lateral.projection_matrix(), abs=1e-6)


def test_rotation_matrix_order() -> None:
    r = rotation_matrix((30.0, 40.0, 50.0))
    rx, ry, rz = (rotation_matrix(a) for a in ((30, 0, 0), (0, 40, 0), (0, 0, 50)))
    assert r == pytest.approx(rz @ ry @ rx)
    assert rotation_matrix((0, 0, 90)) @ np.array([0.0, 1.0, 0.0]) == pytest.approx([-1, 0, 0])


def test_projection_matrix_matches_hand_formula() -> None:
    sid, sod, n, pitch = 1200.0, 900.0, 64, 2.0
    g = Geometry(sid_mm=sid, sod_mm=sod, detector_px=(n, n), pixel_mm=(pitch, pitch),
                 isocenter_mm=(0, 0, 0)).resolve(BODY)
    points = np.array([[0.0, 0.0, 0.0], [30.0, -10.0, 25.0], [-50.0, 40.0, -70.0]])
    expected = np.array([_pa_pixel(p, sid, sod, n, pitch) for p in points])
    assert g.project_points(points) == pytest.approx(expected, abs=1e-9)
    depth = (g.projection_matrix() @ np.append(points[1], 1.0))[2]
    assert depth == pytest.approx(sod - points[1, 1])


@pytest.mark.parametrize("view", list(VIEWS))
def test_pixel_centres_project_to_their_indices(view: str) -> None:
    g = Geometry(view=view, detector_px=(5, 7), pixel_mm=(3.0, 2.0),
                 rotation_deg=(10, -20, 35), translation_mm=(5, -7, 3)).resolve(BODY)
    centres = g.pixel_centers_mm()  # (5, 7, 3)
    rows, cols = np.mgrid[:5, :7]
    projected = g.project_points(centres.reshape(-1, 3))
    assert projected == pytest.approx(np.c_[cols.ravel(), rows.ravel()], abs=1e-6)
    assert np.linalg.norm(g.row_direction) == pytest.approx(1.0)
    assert g.row_direction @ g.col_direction == pytest.approx(0.0, abs=1e-12)
    assert g.beam_direction @ g.col_direction == pytest.approx(0.0, abs=1e-12)


def test_translation_moves_the_assembly() -> None:
    shift = np.array([10.0, 0.0, -20.0])
    base = Geometry(sod_mm=1000.0).resolve(BODY)
    moved = Geometry(sod_mm=1000.0, translation_mm=tuple(shift)).resolve(BODY)
    assert moved.source_mm == pytest.approx(base.source_mm + shift)
    assert moved.detector_center_mm == pytest.approx(base.detector_center_mm + shift)


def test_isocenter_and_points_behind_source() -> None:
    g = Geometry(isocenter_mm=(10, 20, 30), sod_mm=1000.0, detector_px=(11, 11)).resolve(BODY)
    assert g.project_points(np.array([[10.0, 20.0, 30.0]]))[0] == pytest.approx([5.0, 5.0])
    assert np.isnan(g.project_points(np.array([[0.0, 5000.0, 0.0]]))).all()


def test_supersampled_blocks_average_to_the_coarse_pixel() -> None:
    g = Geometry(detector_px=(4, 6), pixel_mm=(2.0, 3.0)).resolve(BODY)
    fine = g.supersampled(2).pixel_centers_mm()  # (8, 12, 3)
    pooled = fine.reshape(4, 2, 6, 2, 3).mean(axis=(1, 3))
    assert pooled == pytest.approx(g.pixel_centers_mm())


def test_to_dict_is_json_and_complete() -> None:
    d = Geometry(view="LAT").resolve(BODY).to_dict()
    json.dumps(d)
    for key in ("sid_mm", "sod_mm", "magnification", "pixel_mm", "pixel_at_isocenter_mm",
                "source_mm", "detector_origin_mm", "row_direction", "col_direction",
                "isocenter_mm", "projection_matrix"):
        assert key in d
    assert np.array(d["projection_matrix"]).shape == (3, 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"view": "XX"}, "unknown view"),
        ({"sid_mm": 0}, "sid_mm"),
        ({"sid_mm": float("nan")}, "sid_mm"),
        ({"sod_mm": -5}, "sod_mm"),
        ({"sod_mm": 1900}, "smaller than sid_mm"),
        ({"detector_px": (0, 10)}, "detector_px"),
        ({"detector_px": (10.5, 10)}, "detector_px"),
        ({"pixel_mm": (0.4, 0.0)}, "pixel_mm"),
        ({"rotation_deg": (0, 0)}, "rotation_deg"),
        ({"isocenter_mm": (0, float("inf"), 0)}, "isocenter_mm"),
    ],
)
def test_invalid_geometry_raises(kwargs: dict, message: str) -> None:
    with pytest.raises(GeometryError, match=message):
        Geometry(**kwargs)


def test_resolve_rejects_impossible_placements() -> None:
    with pytest.raises(GeometryError, match="too short"):
        Geometry(sid_mm=100.0).resolve(BODY)
    with pytest.raises(GeometryError, match="inside the body"):
        Geometry(sod_mm=50.0).resolve(BODY)
    with pytest.raises(GeometryError, match="body bounds"):
        Geometry().resolve(np.zeros(3))
