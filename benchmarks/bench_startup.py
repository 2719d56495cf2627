"""Benchmark one ``cxrkit project`` command end to end, and where its time goes.

``e2e``: a fresh process, ``python -m cxrkit project ct.nii.gz --size N -o out.tiff``, from start
to exit: wall and CPU (user + system) seconds, medians of ``--reps`` runs after one warm-up (the
CT in the page cache); CPU seconds are the figure least moved by other load on the machine. The
breakdown runs the same steps in one fresh process and times each: interpreter and CLI import,
the readers' imports (SimpleITK, scipy.ndimage, torch when the renderer pulls it in), reading and
decoding the CT, the body mask, HU → μ and cropping, the render, the display transform and the
write. ``--baseline PATH`` runs the end-to-end command from another checkout too (e.g. the
previous commit in a worktree), in the same call, for a fair comparison on a loaded machine.

Usage (from the repository root)::

    python benchmarks/bench_startup.py                       # the sample CT beside the checkout
    python benchmarks/bench_startup.py --ct ct.nii.gz --size 512 --reps 5 --baseline ../old
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CT = REPO.parent / "shared" / "data" / "lidc-idri-0001" / "ct.nii.gz"

BREAKDOWN = r"""
import json, sys, time
t0 = time.perf_counter(); marks = []
def lap(name):
    global t0
    now = time.perf_counter(); marks.append((name, now - t0)); t0 = now
import cxrkit.cli; lap("import cxrkit.cli")
from cxrkit import drr; from cxrkit.geometry import Geometry; from cxrkit.volume import read_volume
import SimpleITK; from scipy import ndimage; lap("import SimpleITK, scipy.ndimage")
import numpy as np
from cxrkit.io import Radiograph, write_radiograph
volume = read_volume(sys.argv[1]); lap("read + decode CT")
coarse = drr._coarse_body(volume.array, remove_table=True); lap("body mask")
ranges = drr._coarse_ranges(coarse, volume.shape)
box = tuple(slice(a, b) for a, b in ranges)
mu = drr.hu_to_mu(np.ascontiguousarray(volume.array[box]), 60.0)
mu *= drr._upsample(coarse, ranges)
crop = drr._cropped(volume, ranges, mu)
geometry = Geometry(detector_px=(int(sys.argv[2]),) * 2).resolve(crop.bounds_mm())
lap("HU->mu, crop")
image, _ = drr._render(crop, geometry, method="trilinear", quality="fast", antialias=True,
                       device="cpu"); lap("render")
pixels, _ = drr.to_display(image, geometry.pixel_mm); lap("display")
write_radiograph(sys.argv[3], Radiograph(pixels, geometry.pixel_mm, "display"), record={})
lap("write")
marks.append(("torch imported", float("torch" in sys.modules)))
print(json.dumps(marks))
"""


def e2e(repo: Path, ct: Path, size: int) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one fresh ``python -m cxrkit project``."""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    with tempfile.TemporaryDirectory() as tmp:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cxrkit", "project", str(ct), "--size",
                        str(size), "-o", str(Path(tmp) / "drr.tiff")], env=env, check=True,
                       cwd=repo,  # `-m` puts the working folder first on sys.path
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def breakdown(ct: Path, size: int) -> list[tuple[str, float]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", BREAKDOWN, str(ct), str(size),
                                 str(Path(tmp) / "drr.tiff")], env=env, check=True,
                                capture_output=True, text=True, cwd=REPO)
        total = time.perf_counter() - start
    marks = [tuple(m) for m in json.loads(result.stdout)]
    steps = sum(t for name, t in marks if name != "torch imported")
    return [("interpreter start", total - steps), *marks]  # type: ignore[list-item]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ct", type=Path, default=DEFAULT_CT)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another checkout to time the same way")
    args = parser.parse_args()
    if not args.ct.is_file():
        sys.exit(f"no CT at {args.ct} (give --ct)")
    print(f"cpus {os.cpu_count()} (usable {len(os.sched_getaffinity(0))}), "
          f"load {os.getloadavg()[0]:.2f}, ct {args.ct.name}, {args.size}²")
    rows = [("this checkout", REPO)] + ([("baseline", args.baseline)] if args.baseline else [])
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in rows}
    for rep in range(args.reps + 1):  # interleaved, so load changes hit both alike
        for name, repo in rows:
            timing = e2e(repo, args.ct, args.size)
            if rep:  # the first round warms the page cache
                results[name].append(timing)
    for name, timings in results.items():
        walls, cpus = [w for w, _ in timings], [c for _, c in timings]
        print(f"e2e {name:14s} wall median {statistics.median(walls):.2f} s, min "
              f"{min(walls):.2f} s; cpu median {statistics.median(cpus):.2f} s")
    print("breakdown (this checkout, one fresh process):")
    for name, seconds in breakdown(args.ct, args.size):
        value = ("yes" if seconds else "no") if name == "torch imported" else f"{seconds:.3f} s"
        print(f"  {name:32s} {value}")


if __name__ == "__main__":
    main()
