"""Benchmark ``cxrkit detect``: images per second and peak memory at 512² and 1024², for the
``default`` and ``swin-t`` architectures, and our Swin encoder against transformers' ``SwinModel``.

Each configuration runs in a fresh process (so its peak memory is its own):

* ``img/s``: 1 / median wall time of :func:`cxrkit.detector.detect` on one ``N × N`` radiograph
  with a model working at ``image_px = N`` (letterbox, the three heads, the probability map
  mapped back to the input, boxes from its components), after one warm-up call;
* ``peak MB``: peak resident memory of that process (``ru_maxrss``: torch, the model and the
  activations of one image); ``model MB``: the weights (float32);
* ``vs HF``: the peer, ``transformers.SwinModel`` with the same configuration (embed, depths,
  heads, window, patch 4, one channel; random weights: timing only, the networks are the same
  size, checked by comparing parameter counts of the encoders), timed in the same process on the
  same input: its median time over ours for the encoder alone (> 1: ours is faster).

Weights are random: speed and memory do not depend on them. The issue's target: the default
detects at ≥ 2 images/s at 512² on the project's 2-core CPU.

Usage (repository root, cxrkit's environment)::

    python benchmarks/bench_detect.py                        # default and swin-t, 512² and 1024²
    python benchmarks/bench_detect.py --arch default --sizes 512 --repeats 5
    python benchmarks/bench_detect.py --device cuda          # GPU timings (peak: torch's)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def _time(fn, repeats: int, sync) -> float:  # type: ignore[no-untyped-def]
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def one(arch: str, size: int, repeats: int, device: str, peer: bool) -> dict:
    """Measure one configuration in this process."""
    from dataclasses import replace

    import numpy as np
    import torch

    from cxrkit.detector import ARCHS, Detector, detect

    settings = replace(ARCHS[arch], image_px=size)
    model = Detector.new(settings, generator=torch.Generator().manual_seed(0)).to(device).eval()
    model.requires_grad_(False)
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = (0.4 + 0.3 * np.sin(4 * xx) * np.cos(3 * yy)
             + rng.normal(0, 0.02, (size, size))).clip(0, 1).astype(np.float32)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = _time(lambda: detect(model, image), repeats, sync)
    out = {"arch": arch, "size": size, "device": device, "threads": torch.get_num_threads(),
           "parameters": sum(p.numel() for p in model.parameters()),
           "model_mb": sum(p.numel() for p in model.parameters()) * 4 / 2**20,
           "s_per_image": seconds, "images_per_s": 1 / seconds,
           "peak_mb": (torch.cuda.max_memory_allocated() / 2**20 if cuda
                       else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if peer:
        from transformers import SwinConfig, SwinModel

        config = SwinConfig(image_size=size, patch_size=settings.patch_size, num_channels=1,
                            embed_dim=settings.embed_dim, depths=list(settings.depths),
                            num_heads=list(settings.num_heads), window_size=settings.window,
                            mlp_ratio=settings.mlp_ratio)
        hf = SwinModel(config, add_pooling_layer=False).to(device).eval()
        x = torch.from_numpy(image)[None, None].to(device)
        with torch.no_grad():
            ours = _time(lambda: model.features(x), repeats, sync)
            theirs = _time(lambda: hf(pixel_values=x), repeats, sync)
        encoder = sum(p.numel() for n, p in model.named_parameters()
                      if n.startswith(("patch_embed", "embed_norm", "stages")))
        out.update(encoder_s=ours, hf_encoder_s=theirs, hf_over_ours=theirs / ours,
                   encoder_parameters=encoder,
                   hf_parameters=sum(p.numel() for p in hf.parameters()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="default,swin-t")
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-peer", action="store_true", help="skip transformers' SwinModel")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # arch:size, run in a child process
    args = parser.parse_args()
    if args.one:
        arch, size = args.one.split(":")
        print(json.dumps(one(arch, int(size), args.repeats, args.device, not args.no_peer)))
        return
    rows = []
    for arch in args.arch.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            cmd = [sys.executable, __file__, "--one", f"{arch}:{size}", "--repeats",
                   str(args.repeats), "--device", args.device,
                   *(["--no-peer"] if args.no_peer else [])]
            done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            if done.returncode:
                sys.exit(f"{arch} {size}: {done.stderr.strip()[-500:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{'arch':>8} {'size':>5} {'params':>8} {'img/s':>6} {'s/img':>6} {'peak MB':>8} "
          f"{'model MB':>8} {'vs HF':>6}   ({rows[0]['device']}, {rows[0]['threads']} threads)")
    for r in rows:
        ratio = f"{r['hf_over_ours']:>6.2f}" if "hf_over_ours" in r else f"{'-':>6}"
        print(f"{r['arch']:>8} {r['size']:>5} {r['parameters'] / 1e6:>7.1f}M "
              f"{r['images_per_s']:>6.2f} {r['s_per_image']:>6.2f} {r['peak_mb']:>8.0f} "
              f"{r['model_mb']:>8.1f} {ratio}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
