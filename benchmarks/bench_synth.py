"""Benchmark the synthesis DiT: ``synth -e diffusion`` against ``-e blend``, and its training
step against a UNet of equal parameter count (issue 20).

1. **Inference.** The same radiographs (``--count`` real NIH radiographs from ``--images``, or
   synthetic 1024² chest-like images when that folder is absent) are prepared once by each
   engine, then each engine inserts ``--nodules`` nodules per radiograph with the SAME sample
   seeds through :func:`cxrkit.synth.sampling.synthesize` (what ``cxrkit synth`` calls per
   sample, with the CLI's default parametric source), so both engines draw the same nodules and
   place them at the same pixels; the script checks that the masks agree. Drawn nodules that
   do not fit the model's window (the default source reaches 25 mm plus 10 mm spicules, the
   default window is 48 mm; ``cxrkit synth -e diffusion`` draws such a nodule again, blend does
   not) are screened out untimed and counted, so both engines time the same nodules. Reading
   and writing files is excluded: only ``synthesize`` is timed, after one untimed warm-up
   sample per engine.
   The diffusion engine runs at its defaults (the model's default steps and sampler, soft mask
   condition) with a model of the default size (``SynthDiTSettings()``), randomly initialised and
   written with ``save_pretrained`` to a temporary folder (``--model DIR`` takes a trained one
   instead): a trained model of that size costs the same per step.

   Reported per engine: nodules per second (timed samples only; the median per sample and
   the CPU seconds too), and peak memory: the process's peak resident set while the engine
   was created, prepared the radiographs (lung fields, the model loaded), warmed up and
   drew its samples (``VmHWM``, reset before each engine through ``/proc/self/clear_refs``),
   as the increment over the resident set before (``peak +MB``: what the engine adds to a
   process that has imported torch and holds the decoded radiographs) and absolute
   (``peak MB``); with ``--device cuda`` also ``torch.cuda.max_memory_allocated`` of the
   diffusion engine.

2. **Training.** Steps per second of the DiT at the default size (batch ``--batch``, default
   the trainer's 8, of ``patch_px``² patches with random nodule masks), against cxrkit's UNet
   (:func:`cxrkit.diffusion.new_unet` in a :class:`cxrkit.diffusion.UNetDenoiser`, attention-free
   diffusers ``UNet2DModel``, the three input channels at full resolution) whose widths
   ``w · (1, 2, 2)`` (``--unet-levels``; ``w`` a multiple of 8) and ResNet blocks per level
   (``--unet-layers``, 1-3) give the parameter count closest to the DiT's (both are printed).
   Both take the same batches and the same step: the noisy patch, context and mask at a random
   timestep, the mask-weighted x₀ loss of :func:`cxrkit.synthdit.training.synth_loss`, backward,
   AdamW (the trainer's lr 2e-4), ``zero_grad``; ``--warmup`` untimed steps, then ``--train-steps``
   timed ones (median s/step reported as steps/s).

Target (issue 20): at least 2 nodules/s with the diffusion engine at the default step count on
the 2-core development CPU.

Usage (repository root, cxrkit's environment)::

    python benchmarks/bench_synth.py                          # ~1 min on 2 CPU threads
    python benchmarks/bench_synth.py --model my-dit/ --count 4 --nodules 8
    python benchmarks/bench_synth.py --device cuda --threads 16
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool

import argparse
import dataclasses
import gc
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

NIH = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih-cxr14" / "images"
TARGET_NODULES_PER_S = 2.0


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _rss_mb(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MB (``ru_maxrss`` where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> bool:
    """Reset the peak resident set (Linux ``clear_refs`` 5); False where that is not possible
    (then the peak is the process's so far)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def radiographs(folder: Path, count: int) -> tuple[list[Any], str]:
    """``count`` display radiographs: the first of ``folder`` (sorted), or synthetic ones."""
    from cxrkit.io import Radiograph, read_radiograph

    files = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if files:
        return [read_radiograph(p) for p in files[:count]], f"NIH {folder} ({count} first)"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:1024, 0:1024] / 1024.0
    images = []
    for _ in range(count):  # bright body, two dark lung fields, noise: a chest-like layout
        img = 0.75 - 0.1 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
        for cx in (0.3, 0.7):
            img = np.where(((xx - cx) / 0.15) ** 2 + ((yy - 0.45) / 0.3) ** 2 < 1, 0.25, img)
        img = np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1).astype(np.float32)
        images.append(Radiograph(pixels=img, kind="display"))
    return images, "synthetic 1024² (no NIH folder)"


def bench_engines(args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    """Nodules per second and peak memory of ``blend`` and ``diffusion`` on the same samples."""
    from cxrkit.nodules import ParametricSource
    from cxrkit.synth import ENGINES, SynthConfig
    from cxrkit.synth.sampling import sample_seed, synthesize

    images, where = radiographs(args.images, args.count)
    source = ParametricSource()  # the CLI's default parametric nodules (6-25 mm, all shapes)
    config = SynthConfig(model=str(model_dir), device=args.device)
    # the default parametric source draws some nodules (25 mm with 10 mm spicules) that do not
    # fit the model's window; for those the diffusion engine draws again (synthesize), so its
    # nodule would differ from blend's. Keep the first ``--nodules`` seeds whose first draw
    # fits, so both engines time the same nodules at the same pixels.
    from cxrkit.synth.sampling import sample_streams

    screen = ENGINES["diffusion"].create(dataclasses.replace(config, steps=1))
    seeds, rejected = [], 0
    for i, _ in enumerate(images):
        row, k = [], 0
        while len(row) < args.nodules:
            seed = sample_seed(0, f"img{i}", k)
            k += 1
            if screen.fits(source.draw(sample_streams(seed)[1])):
                row.append(seed)
            else:
                rejected += 1
        seeds.append(row)
    del screen
    cuda = torch.device(args.device).type == "cuda"
    out: dict[str, Any] = {"images": where, "nodules": args.nodules * len(images),
                           "rejected": rejected}
    masks: dict[str, list[np.ndarray]] = {}
    for name in ("blend", "diffusion"):
        gc.collect()
        base = _rss_mb("VmRSS")
        reset = _reset_peak()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        engine = ENGINES[name].create(config)
        scenes = [engine.prepare(img) for img in images]  # model loaded here, untimed
        synthesize(engine, scenes[0], source, seed=sample_seed(1, "warm-up", 0))
        got, times = [], []
        start = time.perf_counter()
        cpu0 = time.process_time()
        for scene, row in zip(scenes, seeds, strict=True):
            for seed in row:
                t0 = time.perf_counter()
                got.append(synthesize(engine, scene, source, seed=seed).mask)
                times.append(time.perf_counter() - t0)  # outputs are numpy: synced
        wall = time.perf_counter() - start
        masks[name] = got
        peak = _rss_mb("VmHWM")
        out[name] = {"nodules_per_s": len(got) / wall, "wall_s": wall,
                     "cpu_s": time.process_time() - cpu0,
                     "median_s": statistics.median(times), "max_s": max(times),
                     "peak_rss_mb": peak, "peak_rss_delta_mb": peak - base,
                     "peak_reset": reset, "load": round(os.getloadavg()[0], 2)}
        del engine, scenes
        if cuda and name == "diffusion":
            out[name]["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        _say(f"{name}: {out[name]}")
    out["same_masks"] = all(np.array_equal(a, b) for a, b in
                            zip(masks["blend"], masks["diffusion"], strict=True))
    out["ratio_blend_over_diffusion"] = (out["blend"]["nodules_per_s"]
                                         / out["diffusion"]["nodules_per_s"])
    return out


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def matched_unet(target: int, levels: tuple[int, ...], layers: tuple[int, ...]
                 ) -> tuple[Any, tuple[int, ...], int]:
    """The attention-free UNet (3 → 1 channels) of widths ``w · levels`` and ``L`` ResNet blocks
    per level (``L`` in ``layers``, ``w`` a multiple of 8) whose parameter count is closest to
    ``target``, in a :class:`UNetDenoiser`; its widths and ``L``."""
    from cxrkit.diffusion import UNetDenoiser, new_unet

    def build(w: int, n_layers: int) -> Any:
        return new_unet(3, 1, tuple(w * m for m in levels), n_layers, num_train_timesteps=1000,
                        prediction_type="sample", generator=torch.Generator().manual_seed(0))

    best: tuple[int, int, int] | None = None  # (|n - target|, w, layers)
    for n_layers in layers:
        for w in range(8, 513, 8):
            n = _params(build(w, n_layers)[0])
            if best is None or abs(n - target) < best[0]:
                best = (abs(n - target), w, n_layers)
            if n > target:
                break
    assert best is not None
    _, w, n_layers = best
    unet, cfg = build(w, n_layers)
    return (UNetDenoiser(unet, cfg, SimpleNamespace(unshuffle=1)),
            tuple(w * m for m in levels), n_layers)


def bench_training(args: argparse.Namespace) -> dict[str, Any]:
    """Training steps per second: the default DiT against a UNet of equal parameter count."""
    from cxrkit.diffusion import train_alphas_cumprod
    from cxrkit.synthdit import SynthDiT, SynthDiTSettings, random_nodule_mask, support
    from cxrkit.synthdit.training import loss_weights

    settings = SynthDiTSettings()
    dit = SynthDiT.new(settings, generator=torch.Generator().manual_seed(0))
    n_dit = _params(dit)
    unet, widths, n_layers = matched_unet(
        n_dit, tuple(int(m) for m in args.unet_levels.split(",")),
        tuple(int(n) for n in args.unet_layers.split(",")))
    n_unet = _params(unet)
    px, B, device = settings.patch_px, args.batch, torch.device(args.device)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(4):  # real-looking inputs do not change the cost; random ones suffice
        patch = torch.from_numpy(rng.random((B, 1, px, px), dtype=np.float32))
        mask = torch.from_numpy(np.stack([random_nodule_mask(
            (px, px), (4, 40), rng, soft=bool(i % 2))[None] for i in range(B)]))
        batches.append((patch.to(device), mask.to(device)))
    alphas = train_alphas_cumprod(settings.scheduler_config()).to(device)
    out: dict[str, Any] = {"batch": B, "patch_px": px, "dit_parameters": n_dit,
                           "unet_parameters": n_unet, "unet_widths": list(widths),
                           "unet_layers_per_block": n_layers}
    cuda = device.type == "cuda"
    for name, model, forward in (
            ("dit", dit, lambda m, x, c, k, t: m(x, c, k, t)),
            ("unet", unet, lambda m, x, c, k, t: m.denoise(torch.cat([x, c, k], 1), t))):
        model = model.to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.0)
        gen = torch.Generator().manual_seed(1)
        times = []
        for step in range(args.warmup + args.train_steps):
            patch, mask = batches[step % len(batches)]
            t0 = time.perf_counter()
            x0 = 2 * patch - 1
            t = torch.randint(0, 1000, (B,), generator=gen).to(device)
            noise = torch.randn(x0.shape, generator=gen).to(device)
            a = alphas[t].view(-1, 1, 1, 1)
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
            context = torch.where(support(mask), torch.zeros_like(x0), x0)
            pred = forward(model, x_t, context, mask, t)
            w = loss_weights(mask)
            loss = (w * (pred.float() - x0) ** 2).sum() / w.sum()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
            if step >= args.warmup:
                times.append(time.perf_counter() - t0)
        out[name] = {"s_per_step": statistics.median(times), "steps_per_s":
                     1 / statistics.median(times), "timed_steps": len(times),
                     "load": round(os.getloadavg()[0], 2)}
        _say(f"train {name}: {out[name]}")
    out["ratio_dit_over_unet"] = out["dit"]["steps_per_s"] / out["unet"]["steps_per_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=NIH,
                        help="folder of PNG radiographs (synthetic ones when absent)")
    parser.add_argument("--count", type=int, default=4, help="radiographs")
    parser.add_argument("--nodules", type=int, default=8, help="nodules per radiograph")
    parser.add_argument("--model", type=Path, default=None,
                        help="a trained synthesis model folder (default: a random "
                             "SynthDiTSettings() model in a temporary folder)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="training batch (trainer default)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps")
    parser.add_argument("--train-steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--unet-levels", default="1,2,2",
                        help="UNet width multipliers per level (widths w·m, w matched)")
    parser.add_argument("--unet-layers", default="1,2,3",
                        help="UNet ResNet blocks per level to choose from (with w, the "
                             "closest parameter count wins)")
    parser.add_argument("--skip", default="", help="comma-separated: inference, training")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    skip = {s for s in args.skip.split(",") if s}
    load0 = [round(x, 2) for x in os.getloadavg()]
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.processor() or
        platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
        "device": args.device, "torch": torch.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "load_start": load0}
    if torch.device(args.device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()

    from cxrkit.synthdit import SynthDiT, SynthDiTSettings

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            model_dir = Path(tmp) / "dit"
            SynthDiT.new(SynthDiTSettings(), generator=torch.Generator().manual_seed(0)
                         ).save_pretrained(model_dir)
        settings = SynthDiT.load(model_dir).settings
        info["model"] = str(args.model) if args.model else "random SynthDiTSettings()"
        info["settings"] = {"patch_px": settings.patch_px, "pixel_mm": settings.pixel_mm,
                            "patch_size": settings.patch_size, "hidden": settings.hidden_size,
                            "depth": settings.depth, "steps": settings.default_steps,
                            "sampler": settings.default_sampler}
        if "inference" not in skip:
            info["inference"] = bench_engines(args, model_dir)
    if "training" not in skip:
        info["training"] = bench_training(args)
    info["load_end"] = [round(x, 2) for x in os.getloadavg()]

    s = info["settings"]
    print(f"{info['date']}  {info['machine']} ({info['cpus']} CPUs)  threads {args.threads}  "
          f"device {args.device}{' (' + info['gpu'] + ')' if 'gpu' in info else ''}  "
          f"torch {info['torch']}  OMP_WAIT_POLICY={info['omp_wait_policy']}  "
          f"load average start {load0}, end {info['load_end']}")
    print(f"model: {info['model']}: {s['patch_px']} px at {s['pixel_mm']} mm, tokens "
          f"{s['patch_size']} px, width {s['hidden']}, depth {s['depth']}, {s['steps']} "
          f"{s['sampler']} steps")
    if "inference" in info:
        r = info["inference"]
        print(f"\ninference: {r['nodules']} nodules on {r['images']}; same nodules and masks "
              f"in both engines: {r['same_masks']}; drawn nodules too large for the model's "
              f"window, skipped: {r['rejected']} of {r['nodules'] + r['rejected']}")
        print(f"{'engine':<10} {'nodules/s':>10} {'median s':>9} {'cpu s':>7} "
              f"{'peak +MB':>9} {'peak MB':>8} {'GPU MB':>7} {'load':>5}")
        for name in ("blend", "diffusion"):
            e = r[name]
            gpu = f"{e['peak_gpu_mb']:.0f}" if "peak_gpu_mb" in e else "-"
            print(f"{name:<10} {e['nodules_per_s']:>10.2f} {e['median_s']:>9.3f} "
                  f"{e['cpu_s']:>7.2f} {e['peak_rss_delta_mb']:>9.0f} {e['peak_rss_mb']:>8.0f} "
                  f"{gpu:>7} {e['load']:>5.2f}")
        d = r["diffusion"]["nodules_per_s"]
        print(f"blend is {r['ratio_blend_over_diffusion']:.1f}x faster than diffusion; target "
              f"≥ {TARGET_NODULES_PER_S:g} nodules/s at the default steps: "
              f"{'met' if d >= TARGET_NODULES_PER_S else 'NOT met'} ({d:.2f})")
    if "training" in info:
        r = info["training"]
        print(f"\ntraining: batch {r['batch']} of {r['patch_px']}² patches, AdamW, "
              f"forward+backward+step, median of {r['dit']['timed_steps']} steps after "
              f"{args.warmup} warm-up")
        print(f"  DiT  {r['dit_parameters']:>9,} parameters  {r['dit']['steps_per_s']:6.2f} "
              f"steps/s ({r['dit']['s_per_step']:.3f} s)")
        print(f"  UNet {r['unet_parameters']:>9,} parameters  {r['unet']['steps_per_s']:6.2f} "
              f"steps/s ({r['unet']['s_per_step']:.3f} s)  widths {r['unet_widths']}, "
              f"{r['unet_layers_per_block']} blocks/level, no attention  "
              f"(params {r['unet_parameters'] / r['dit_parameters']:.2f}x the DiT's)")
        print(f"  DiT / UNet steps per second: {r['ratio_dit_over_unet']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
