"""Render the low-quality (LQ) domain of MUNIT-LQ and DDPM-LQ: many varied real DRRs of one CT.

Each image is one ``cxrkit project`` call with a seeded random acquisition:

- pose: small rotations about the patient's x, y and z axes (``--rotation-deg``, ±4°, ±3°, ±5°);
- energy: effective beam energy ``--kev`` in [50, 90];
- detector: ``--size`` pixels (default 256²) at a pixel pitch in [1.0, 1.9] mm (for 256 px; scaled
  for other sizes), so the field of view runs from a 256 mm crop of the chest to the whole 486 mm
  thorax;
- crop position: a translation of source and detector (``--translation-mm``, ±30 mm in x and z);
- source distance ``--sid-mm`` in [1000, 1800].

The poses come from ``numpy.random.default_rng(seed)``, so the same seed renders the same set.
Writes ``OUT/drr-NNNN.tiff`` and ``OUT/records.jsonl`` (one ``cxrkit project`` record per image,
its ``id`` the file stem, plus ``roi``: the box of the LIDC-IDRI-0001 nodule projected with the
record's geometry, used by ``cxrkit eval --no-reference`` for the nodule contrast-to-noise ratio).

Example::

    python repro/make_lq_domain.py ../shared/data/lidc-idri-0001 --count 320 -o lq-domain/
    python repro/make_lq_domain.py ../shared/data/lidc-idri-0001 --count 8 --seed 1 -o drr-test/
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np


def draw_poses(count: int, seed: int, size: int = 256) -> list[dict[str, Any]]:
    """``count`` random acquisitions (see the module docstring for the ranges; the pixel pitch
    range is for 256 px and scales with ``256 / size``, so the fields of view do not change)."""
    rng = np.random.default_rng(seed)
    pitch = 256 / size
    poses = []
    for _ in range(count):
        rotation = rng.uniform([-4, -3, -5], [4, 3, 5])
        shift = rng.uniform(-30, 30, size=2)
        poses.append({"rotation_deg": [round(float(v), 2) for v in rotation],
                      "translation_mm": [round(float(shift[0]), 1), 0.0,
                                         round(float(shift[1]), 1)],
                      "kev": round(float(rng.uniform(50, 90)), 1),
                      "pixel_mm": round(float(rng.uniform(1.0, 1.9)) * pitch, 3),
                      "sid_mm": round(float(rng.uniform(1000, 1800)), 0)})
    return poses


def nodule_center_lps(ct_dir: Path) -> tuple[np.ndarray, float] | None:
    """Mean centre (LPS mm) and mean extent (mm) of the readers' nodules larger than 3 mm."""
    table = ct_dir / "nodules.csv"
    if not table.is_file():
        return None
    rows = [r for r in csv.DictReader(table.open()) if float(r["xy_extent_mm"] or 0) > 3]
    if not rows:
        return None
    ras = np.mean([[float(r[k]) for k in ("ras_x_mm", "ras_y_mm", "ras_z_mm")] for r in rows], 0)
    extent = float(np.mean([float(r["xy_extent_mm"]) for r in rows]))
    return np.array([-ras[0], -ras[1], ras[2]]), extent  # RAS → LPS


def roi_box(record: dict[str, Any], center: np.ndarray, extent_mm: float) -> list[float]:
    """``[x1, y1, x2, y2]`` px of the nodule: its centre projected by the record's geometry, a
    square of ``0.8 · extent`` (the core) magnified to the detector."""
    geometry = record["project"]["options"]["geometry"]
    P = np.asarray(geometry["projection_matrix"])  # (3, 4)
    u = P @ np.append(center, 1.0)
    col, row = u[0] / u[2], u[1] / u[2]
    half = 0.4 * extent_mm * geometry["magnification"] / geometry["pixel_mm"][1]
    return [round(col - half, 1), round(row - half, 1), round(col + half, 1), round(row + half, 1)]


def render(ct: Path, out: Path, index: int, pose: dict[str, Any], size: int) -> dict[str, Any]:
    """One ``cxrkit project`` call; returns its record with ``id`` = the file stem."""
    target = out / f"drr-{index:04d}.tiff"
    # this interpreter's cxrkit: works without an activated virtual environment
    command = [sys.executable, "-m", "cxrkit", "-q", "project", str(ct), "-o", str(target),
               "--size", str(size),
               "--pixel-mm", str(pose["pixel_mm"]), "--sid-mm", str(pose["sid_mm"]),
               "--kev", str(pose["kev"]),
               "--rotation-deg", ",".join(map(str, pose["rotation_deg"])),
               "--translation-mm", ",".join(map(str, pose["translation_mm"])), "--resume"]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    record = json.loads(done.stdout.strip().splitlines()[-1])
    record["id"] = target.stem
    return record


def main(argv: list[str] | None = None) -> int:
    """Render the set; see ``--help``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ct_dir", type=Path, help="folder with ct.nii.gz (and nodules.csv)")
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=320)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="cxrkit project calls at once")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    ct = args.ct_dir / "ct.nii.gz"
    nodule = nodule_center_lps(args.ct_dir)
    poses = draw_poses(args.count, args.seed, args.size)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    os.environ.update(env)
    with ThreadPoolExecutor(args.jobs) as pool:
        records = list(pool.map(lambda ip: render(ct, args.out, ip[0], ip[1], args.size),
                                enumerate(poses)))
    with (args.out / "records.jsonl").open("w") as fh:
        for record in records:
            if nodule is not None:
                record["roi"] = roi_box(record, *nodule)
            fh.write(json.dumps(record) + "\n")
    print(f"{len(records)} DRRs in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
