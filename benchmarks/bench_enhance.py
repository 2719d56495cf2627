"""Benchmark ``cxrkit enhance`` (512² → 1024²): time, memory, quality gain and FLOPs vs steps.

For each held-out radiograph of the model's validation split (``run.json``), the 1024² HQ image is
degraded with the ``drr-like`` preset at scale 2 (512² LQ, seeded per image), then enhanced with
the diffusion model at 1, 2, 4, 10, 20 and 50 steps and with bicubic, all in this process on the
same inputs. Reported per step count:

* ``s/img``: wall time of :func:`cxrkit.enhancer.enhance` for one 1024² output (median);
* ``peak MB``: peak resident memory of this process so far (``ru_maxrss``; the denoiser's memory is
  bounded by the tile, so it does not grow with the step count); with ``--device cuda``, the peak
  GPU memory allocated by torch during that step count's runs (``torch.cuda.max_memory_allocated``);
* ``PSNR``/``SSIM`` and their gain over bicubic (means over the images, dB / SSIM units);
* ``TFLOP/img``: FLOPs of all model evaluations for one image, counted by
  ``torch.utils.flop_counter`` (2 FLOPs per multiply-add, tiles and overlaps included, plus the
  degradation encoder's one pass where the model has one);
* ``× fewer``: the DiffusionXRay configuration's 435 TFLOP per image (2000 DDPM steps of its
  91 M-parameter SR3 UNet at 1024², 217.5 GFLOP per step; ``../shared/research/enhance.md``)
  divided by ours.

Target (issue 4): ≥ 100× fewer FLOPs than DiffusionXRay at a PSNR gain within 0.3 dB of the
model's own 50-step result.

Usage (repository root, cxrkit's environment)::

    python benchmarks/bench_enhance.py                       # the shipped model, 4 images
    python benchmarks/bench_enhance.py --model my-enhancer/ --count 8 --steps 1,4,10
    python benchmarks/bench_enhance.py --device cuda --images nih-copy/   # GPU timings
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cxrkit.degrade import degrade
from cxrkit.diffusion.sampling import tiled_predict
from cxrkit.enhancer import BLACK_LEVEL, Enhancer, bicubic_enhance, default_model_dir, enhance
from cxrkit.io import read_radiograph
from cxrkit.metrics import psnr, ssim

DIFFUSIONXRAY_TFLOP = 435.0  # 2000 × 217.5 GFLOP (enhance.md §1, measured there)
NIH = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih-cxr14" / "images"


def flops_per_image(model: Enhancer, size: int, tile: int | None,
                    overlap: int) -> tuple[float, float]:
    """FLOPs for a ``size``² output: ``(once per image, per denoising step)``.

    Once per image: the degradation encoder (0 without one); per step: the UNet on all tiles.
    """
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 1, size, size)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        embedding = model.encode(torch.zeros(1, 1, size // model.settings.scale,
                                             size // model.settings.scale))
    once = float(counter.get_total_flops())

    def model_fn(x_t: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if embedding is None:
            return model(x_t, cond, t)
        return model(x_t, cond, t, embedding=embedding.expand(len(x_t), -1))

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        tiled_predict(model_fn, x, x, 500, tile=tile, overlap=overlap)
    return once, float(counter.get_total_flops())


def validation_images(model_dir: Path, count: int, folder: Path = NIH) -> list[Path]:
    """The first ``count`` images of the model's validation split (by patient), in ``folder``."""
    run = json.loads((model_dir / "run.json").read_text())
    names = sorted(run["data"]["validation"])[:count]
    return [folder / n for n in names]


def main() -> None:
    """Run the benchmark and print the table (and JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=default_model_dir())
    parser.add_argument("--count", type=int, default=4, help="validation images")
    parser.add_argument("--steps", default="1,2,4,10,20,50")
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--images", type=Path, default=NIH,
                        help="folder holding the NIH images of the validation split")
    parser.add_argument("--no-keep-black", dest="keep_black", action="store_const",
                        const=None, default=BLACK_LEVEL,
                        help="the model's output in black regions too (enhance --no-keep-black)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = Enhancer.from_pretrained(args.model)
    steps = [int(s) for s in args.steps.split(",")]
    paths = validation_images(args.model, args.count, args.images)

    pairs = []
    for i, p in enumerate(paths):
        hq = read_radiograph(p).pixels
        lq = degrade(hq, "drr-like", scale=2, generator=np.random.default_rng(1000 + i)).image
        pairs.append((hq, lq))
    bicubic = [bicubic_enhance(lq, 2) for _, lq in pairs]
    base_psnr = float(np.mean([psnr(b, hq) for b, (hq, _) in zip(bicubic, pairs, strict=True)]))
    base_ssim = float(np.mean([ssim(b, hq) for b, (hq, _) in zip(bicubic, pairs, strict=True)]))
    once, per_step = flops_per_image(model, 1024, args.tile, args.overlap)
    cuda = torch.device(args.device).type == "cuda"
    model = model.to(args.device)
    if cuda:  # one untimed run: CUDA context, kernels and allocator warm-up
        enhance(model, pairs[0][1], sampler=args.sampler, steps=1, tile=args.tile,
                overlap=args.overlap, keep_black=args.keep_black,
                generator=torch.Generator().manual_seed(0))

    rows = []
    for n in steps:
        times, ps, ss = [], [], []
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        for hq, lq in pairs:
            start = time.perf_counter()
            out = enhance(model, lq, sampler=args.sampler, steps=n, tile=args.tile,
                          overlap=args.overlap, keep_black=args.keep_black,
                          generator=torch.Generator().manual_seed(0))
            times.append(time.perf_counter() - start)  # enhance returns a CPU array: synced
            ps.append(psnr(out, hq))
            ss.append(ssim(out, hq))
        tflop = (once + n * per_step) / 1e12
        rows.append({"steps": n, "s_per_image": statistics.median(times),
                     "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda
                     else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                     "psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)),
                     "psnr_gain": float(np.mean(ps)) - base_psnr,
                     "ssim_gain": float(np.mean(ss)) - base_ssim,
                     "tflop_per_image": tflop, "fewer_flops": DIFFUSIONXRAY_TFLOP / tflop})
        print(f"steps {n}: {rows[-1]}", file=sys.stderr, flush=True)

    print(f"model {args.model}  images {len(pairs)} (validation patients, drr-like ×2 LQ, "
          f"full 1024² from 512²)  sampler {args.sampler}  tile {args.tile}/{args.overlap}  "
          f"threads {args.threads}  device {args.device}  keep_black {args.keep_black}"
          f"{' (' + torch.cuda.get_device_name() + ')' if cuda else ''}")
    print(f"bicubic: PSNR {base_psnr:.2f} dB  SSIM {base_ssim:.4f}  "
          f"GFLOP/step {per_step / 1e9:.1f}  GFLOP/image once {once / 1e9:.2f}")
    print(f"{'steps':>5} {'s/img':>7} {'peak MB':>8} {'PSNR':>7} {'gain dB':>8} {'SSIM':>7} "
          f"{'gain':>7} {'TFLOP/img':>10} {'× fewer':>8}")
    for r in rows:
        print(f"{r['steps']:>5} {r['s_per_image']:>7.1f} {r['peak_mb']:>8.0f} {r['psnr']:>7.2f} "
              f"{r['psnr_gain']:>8.2f} {r['ssim']:>7.4f} {r['ssim_gain']:>7.4f} "
              f"{r['tflop_per_image']:>10.3f} {r['fewer_flops']:>8.0f}")
    ref = next((r for r in rows if r["steps"] == 50), rows[-1])
    ok = [r["steps"] for r in rows
          if r["fewer_flops"] >= 100 and r["psnr_gain"] >= ref["psnr_gain"] - 0.3]
    print(f"target (≥100× fewer FLOPs, PSNR gain within 0.3 dB of {ref['steps']} steps): "
          f"met at steps {ok or 'none'}")
    if args.json:
        args.json.write_text(json.dumps({"bicubic_psnr": base_psnr, "bicubic_ssim": base_ssim,
                                         "keep_black": args.keep_black, "rows": rows,
                                         "met_at": ok}, indent=2) + "\n")


if __name__ == "__main__":
    main()
