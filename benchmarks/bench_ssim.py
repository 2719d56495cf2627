"""Benchmark: cxrkit SSIM against scikit-image's structural_similarity on 1024² pairs.

Both run in this process on the same pairs (real radiographs from ../shared/data/nih-cxr14 when
present, else synthetic textures, each against a blurred, noisy copy). Prints pairs per second,
the speed ratio (target: at least 3x) and the largest absolute difference of the SSIM values,
which makes the ratio fair.

Usage:
    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/bench_ssim.py [--pairs 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.metrics import structural_similarity

from cxrkit.metrics import ssim

NIH = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih-cxr14" / "images"
SIZE = 1024
Pair = tuple[np.ndarray, np.ndarray]


def load_pairs(count: int) -> tuple[list[Pair], str]:
    """``count`` (test, reference) float32 1024² pairs in [0, 1] and where they came from."""
    rng = np.random.default_rng(0)
    files = sorted(NIH.glob("*.png"))[:count]
    if len(files) == count:
        refs = [np.asarray(Image.open(f).convert("L"), np.float32) / 255.0 for f in files]
        source = f"NIH ChestX-ray14 ({NIH})"
    else:
        refs = [ndimage.gaussian_filter(rng.random((SIZE, SIZE)), 3).astype(np.float32)
                for _ in range(count)]
        source = "synthetic textures"
    pairs = []
    for ref in refs:
        noisy = ndimage.gaussian_filter(ref, 1.0) + 0.02 * rng.standard_normal(ref.shape)
        pairs.append((np.clip(noisy, 0, 1).astype(np.float32), ref))
    return pairs, source


def skimage_ssim(x: np.ndarray, ref: np.ndarray) -> float:
    """The definition cxrkit follows, as scikit-image computes it."""
    return float(structural_similarity(x, ref, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False, data_range=1.0))


def time_pairs(fn: Callable[[np.ndarray, np.ndarray], float], pairs: list[Pair],
               repeats: int) -> tuple[float, list[float]]:
    """Best pairs per second over ``repeats`` passes, and the values of the last pass."""
    fn(*pairs[0])  # warm-up
    best, values = 0.0, []
    for _ in range(repeats):
        start = time.perf_counter()
        values = [fn(x, ref) for x, ref in pairs]
        best = max(best, len(pairs) / (time.perf_counter() - start))
    return best, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    pairs, source = load_pairs(args.pairs)
    ours, our_values = time_pairs(ssim, pairs, args.repeats)
    theirs, their_values = time_pairs(skimage_ssim, pairs, args.repeats)
    diff = max(abs(a - b) for a, b in zip(our_values, their_values, strict=True))
    print(f"SSIM on {len(pairs)} pairs of {SIZE}x{SIZE} float32 from {source}, best of "
          f"{args.repeats}")
    print(f"  cxrkit.metrics.ssim          {ours:8.2f} pairs/s")
    print(f"  skimage structural_similarity {theirs:7.2f} pairs/s")
    print(f"  speed ratio                  {ours / theirs:8.2f}x  (target >= 3x)")
    print(f"  max |SSIM difference|        {diff:8.1e}  (tolerance 1e-4)")


if __name__ == "__main__":
    main()
