"""Benchmark the training commands at a Table 1 scale: seconds per optimizer step, and the
projected time of the scale's whole recipe (``repro/table1.py``) on this machine.

For each trainer of the recipe (``train-enhance`` with the scale's crop, widths and batch;
``train-munit`` and both ``train-ddpm-lq`` routes at the scale's degrader size and crop), it runs
the real ``cxrkit`` command for ``--steps`` optimizer steps (under ``--launcher``, e.g.
``accelerate launch -m``, where given), reads the ``elapsed_s`` of its progress lines, and reports
the median step time after the first ``--skip`` steps (start-up, kernel selection and allocator
warm-up excluded), the loss at the first and last report, and that step time multiplied by the
scale's step budget. Validation, checkpoints and model writing are not in the step time.

Usage (repository root, cxrkit's environment)::

    python benchmarks/bench_training.py --hq ../shared/data/nih-cxr14/images --lq drrs/ --steps 60
    python benchmarks/bench_training.py --hq nih/ --lq drrs/ --launcher "accelerate launch -m" \\
        --mixed-precision bf16 --json out.json                         # on a GPU machine
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "repro"))

LINE = re.compile(r"step (\d+) loss ([-+0-9.e]+) .*elapsed_s ([0-9.e+]+)")


def trainers(scale: object, hq: str, lq: str) -> dict[str, tuple[list[str], int]]:
    """``name → (cxrkit arguments without --steps/-o, the scale's step budget)``."""
    s = scale  # a repro/table1.py Scale
    degrader = ["--image-size", str(s.degrader_size), "--crop", str(s.degrader_crop)]
    half = s.ddpm_steps // 2
    return {
        "train-enhance": (["train-enhance", hq, "--preset", "drr-like", "--scale", "2", "--crop",
                           str(s.enhance_crop), "--channels", s.enhance_channels,
                           "--batch-size", str(s.enhance_batch), "--val-count", "2",
                           "--val-crop", "256"], s.enhance_steps),
        "train-munit": (["train-munit", "--hq", hq, "--lq", lq, *degrader, "--lr",
                         str(s.munit_lr)], s.munit_steps),
        "train-ddpm-lq img2img": (["train-ddpm-lq", "--lq", lq, *degrader], s.ddpm_steps),
        "train-ddpm-lq two-stage (stage 1)": (["train-ddpm-lq", "--lq", lq, "--route",
                                               "two-stage", "--hq", hq, *degrader,
                                               "--stage2-steps", "1"], half),
    }


def step_times(stderr: str) -> tuple[list[tuple[int, float]], list[float]]:
    """``[(step, elapsed_s)]`` and the losses of the progress lines."""
    points, losses = [], []
    for match in LINE.finditer(stderr):
        points.append((int(match.group(1)), float(match.group(3))))
        losses.append(float(match.group(2)))
    return points, losses


def main() -> None:
    """Run every trainer for ``--steps`` steps and print the table (and JSON with ``--json``)."""
    from table1 import SCALES

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hq", required=True, help="HQ radiographs (folder)")
    parser.add_argument("--lq", required=True, help="LQ domain DRRs (folder or records)")
    parser.add_argument("--scale", default="full", choices=sorted(SCALES))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--skip", type=int, default=20, help="warm-up steps left out")
    parser.add_argument("--launcher", default="", help='e.g. "accelerate launch -m"')
    parser.add_argument("--mixed-precision", default="no", choices=("no", "bf16", "fp16"))
    parser.add_argument("--only", help="comma-separated trainer names (default: all)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.steps <= args.skip + 10:
        parser.error("--steps must exceed --skip by more than one progress interval (10)")
    scale = SCALES[args.scale]
    runs = trainers(scale, args.hq, args.lq)
    if args.only:
        runs = {k: v for k, v in runs.items() if k.split()[0] in args.only.split(",")}
    prefix = shlex.split(args.launcher) if args.launcher else [sys.executable, "-m"]
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-training-") as work:
        for name, (command, budget) in runs.items():
            full = [*prefix, "cxrkit", *command, "--steps", str(args.steps), "--seed", "0",
                    "--checkpoint-every", "0", "--validate-every", "0", "--mixed-precision",
                    args.mixed_precision, "-o", str(Path(work) / name.split()[0])]
            print("+", shlex.join(full), file=sys.stderr, flush=True)
            began = time.monotonic()
            done = subprocess.run(full, capture_output=True, text=True, env=env)
            wall = time.monotonic() - began
            if done.returncode != 0:
                sys.stderr.write(done.stderr[-2000:])
                raise SystemExit(f"{name} failed ({done.returncode})")
            points, losses = step_times(done.stderr)  # two-stage: stage 1's lines only
            ends = [i for i in range(1, len(points)) if points[i][0] <= points[i - 1][0]]
            if ends:
                points, losses = points[: ends[0]], losses[: ends[0]]
            kept = [(s, t) for s, t in points if s >= args.skip]
            per_step = statistics.median((t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1)
                                         in itertools.pairwise(kept))
            rows.append({"trainer": name, "s_per_step": per_step, "wall_s": wall,
                         "first_loss": losses[0], "last_loss": losses[-1],
                         "budget_steps": budget, "projected_h": per_step * budget / 3600})
            print(f"{name}: {rows[-1]}", file=sys.stderr, flush=True)
    device = "cpu"
    try:
        import torch

        if torch.cuda.is_available():
            device = torch.cuda.get_device_name()
    except ImportError:
        pass
    print(f"scale {args.scale}  steps {args.steps} (median after {args.skip})  "
          f"mixed precision {args.mixed_precision}  launcher {args.launcher or 'none'}  "
          f"device {device}")
    print(f"{'trainer':<36} {'s/step':>7} {'loss first→last':>17} {'budget':>7} {'proj. h':>8}")
    for r in rows:
        print(f"{r['trainer']:<36} {r['s_per_step']:>7.3f} "
              f"{r['first_loss']:>8.4g}→{r['last_loss']:<8.4g} {r['budget_steps']:>7} "
              f"{r['projected_h']:>8.2f}")
    total = sum(r["projected_h"] for r in rows)
    total += next((r["projected_h"] for r in rows if "two-stage" in r["trainer"]), 0)  # stage 2
    print(f"training of the recipe's degraders and one enhancer: {total:.2f} h "
          f"(the recipe trains one enhancer per pair source: add "
          f"{rows[0]['projected_h'] if rows and rows[0]['trainer'] == 'train-enhance' else 0:.2f}"
          f" h for each further source)")
    if args.json:
        args.json.write_text(json.dumps({"scale": args.scale, "device": device,
                                         "mixed_precision": args.mixed_precision,
                                         "launcher": args.launcher, "rows": rows}, indent=2)
                             + "\n")


if __name__ == "__main__":
    main()
