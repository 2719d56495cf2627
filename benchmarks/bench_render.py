"""Self-benchmark of cxrkit's DRR renderers on the real sample CT (LIDC-IDRI-0001).

Renders a PA chest radiograph (SID 1800 mm, 430 mm square detector, ``sod_mm`` fitted to the body)
at each size with the trilinear slab projector (``quality="fast"`` and ``"exact"``) and with the
exact Siddon reference (small sizes only), all on the same rays (no anti-aliasing). Each renderer
and size runs in a fresh process (so memory freed by an earlier render cannot hide a peak), which
reports:

* ``render s`` / ``cpu s``: the ray integration alone (:func:`cxrkit.drr.project_values` on the
  prepared μ volume), warm, median of ``--reps`` runs after one warm-up (Siddon: one cold run);
  ``cpu s`` is the process user + system time, the figure least affected by machine load;
* ``project s``: the whole :func:`cxrkit.drr.project` call from HU (body mask, HU→μ, crop,
  render), warm median;
* ``render MB`` / ``project MB``: the largest resident-memory rise during the first call of each,
  above the level just before it (CT, and for ``render`` the μ volume, already in memory),
  sampled every 2 ms from ``/proc/self/statm`` after ``malloc_trim``;
* ``PSNR dB`` (over Siddon's peak-to-peak range) and ``NCC`` against Siddon at the same size.

Usage (repository root, the project environment active)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_render.py --threads 2
    python benchmarks/bench_render.py --sizes 256,512 --siddon-sizes 256 --reps 5

Under a busy machine wall times swing widely; compare CPU seconds.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CT = REPO.parent / "shared" / "data" / "lidc-idri-0001" / "ct.nii.gz"
PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20
RENDERERS = {
    "trilinear-fast": {"method": "trilinear", "quality": "fast"},
    "trilinear-exact": {"method": "trilinear", "quality": "exact"},
    "siddon": {"method": "siddon", "quality": "exact"},
}


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE_MB


@contextmanager
def _peak_rss(stats: dict[str, Any], key: str) -> Iterator[None]:
    """Record in ``stats[key]`` the largest RSS rise (MB) during the block."""
    with suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed heap pages first
    base = _rss_mb()
    peak = [base]
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.002)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        stats[key] = max(peak[0], _rss_mb()) - base


def _median_time(fn: Callable[[], Any], reps: int) -> tuple[Any, float, float]:
    """``reps`` timed runs (after the caller's warm-up): last output, median wall and CPU s."""
    walls, cpus, out = [], [], None
    for _ in range(max(1, reps)):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - wall0)
        cpus.append(time.process_time() - cpu0)
    return out, statistics.median(walls), statistics.median(cpus)


def _worker(args: argparse.Namespace) -> int:
    """One renderer at one size, in this fresh process; prints one JSON line of stats."""
    import torch

    from cxrkit import drr
    from cxrkit.geometry import Geometry
    from cxrkit.volume import read_volume

    if args.threads:
        torch.set_num_threads(args.threads)
    options = RENDERERS[args.renderer]
    n = args.size
    ct = read_volume(args.ct)
    spec = Geometry(detector_px=(n, n))
    stats: dict[str, Any] = {}
    slow = options["method"] == "siddon"
    if not slow:
        with _peak_rss(stats, "project_mb"):
            result = drr.project(ct, spec, antialias=False, **options)
        stats["slab_planes"] = result.physics["slab_planes"]
        _, stats["project_s"], _ = _median_time(
            partial(drr.project, ct, spec, antialias=False, **options), args.reps)
    # The same rays as project(): its geometry does not depend on the detector's pixel count.
    small = drr.project(ct, Geometry(detector_px=(4, 4)), antialias=False).geometry
    geometry = replace(small, detector_px=(n, n), pixel_mm=spec.resolve(np.zeros((2, 3))).pixel_mm)
    mu_volume = ct.with_array(drr.hu_to_mu(ct.array) * drr.body_mask(ct))
    render = partial(drr.project_values, mu_volume, geometry, antialias=False, **options)
    with _peak_rss(stats, "render_mb"):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        image = render()
        stats.update(render_s=time.perf_counter() - wall0, cpu_s=time.process_time() - cpu0)
    if not slow:
        image, stats["render_s"], stats["cpu_s"] = _median_time(render, args.reps)
    np.save(args.out / f"{args.renderer}_{n}.npy", image)
    print(json.dumps(stats))
    return 0


def _psnr_ncc(image: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    a, b = image.astype(np.float64).ravel(), reference.astype(np.float64).ravel()
    rmse = np.sqrt(np.mean((a - b) ** 2))
    psnr = float("inf") if rmse == 0 else 20 * np.log10(np.ptp(b) / rmse)
    return float(psnr), float(np.corrcoef(a, b)[0, 1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", type=Path, default=DEFAULT_CT)
    parser.add_argument("--sizes", default="256,512,1024")
    parser.add_argument("--siddon-sizes", default="256,512")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--renderer", choices=RENDERERS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)
    if not args.ct.exists():
        print(f"no CT at {args.ct}; pass --ct", file=sys.stderr)
        return 1
    sizes = [int(s) for s in args.sizes.split(",")]
    siddon_sizes = {int(s) for s in args.siddon_sizes.split(",") if s}
    print(f"CT {args.ct}; {args.threads or 'default'} torch threads; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}; "
          f"load average {os.getloadavg()[0]:.2f}")
    header = (f"{'N':>5} {'renderer':<16} {'render s':>9} {'cpu s':>7} {'project s':>10} "
              f"{'render MB':>10} {'project MB':>11} {'PSNR dB':>8} {'NCC':>9}  notes")
    print(header)
    print("-" * len(header))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    with tempfile.TemporaryDirectory(prefix="cxrkit-bench-") as tmp:
        out = Path(tmp)
        for n in sizes:
            names = [r for r in RENDERERS if r != "siddon" or n in siddon_sizes]
            stats = {}
            for name in names:
                cmd = [sys.executable, __file__, "--worker", "--size", str(n), "--renderer", name,
                       "--out", str(out), "--ct", str(args.ct), "--reps", str(args.reps)]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                if proc.returncode != 0:
                    print(f"{n:>5} {name:<16} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                    continue
                stats[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            reference = out / f"siddon_{n}.npy"
            for name, s in stats.items():
                psnr, ncc = float("nan"), float("nan")
                if reference.exists():
                    psnr, ncc = _psnr_ncc(np.load(out / f"{name}_{n}.npy"), np.load(reference))
                project_s = f"{s['project_s']:.3f}" if "project_s" in s else "-"
                project_mb = f"{s['project_mb']:.0f}" if "project_mb" in s else "-"
                note = (f"slab planes {s['slab_planes']}" if "slab_planes" in s
                        else "reference, one cold run")
                print(f"{n:>5} {name:<16} {s['render_s']:>9.3f} {s['cpu_s']:>7.2f} "
                      f"{project_s:>10} {s['render_mb']:>10.0f} {project_mb:>11} {psnr:>8.2f} "
                      f"{ncc:>9.6f}  {note}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
