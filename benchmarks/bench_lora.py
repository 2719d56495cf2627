"""Benchmark: cxrkit's LoRA merges against peft's ``add_weighted_adapter`` on the same adapters.

A stack of DiT blocks with diffusers' module names (attn1.to_q/to_k/to_v/to_out.0 of width W,
ff.net.0.proj W→4W and ff.net.2 4W→W) gets N random LoRA adapters of rank r through peft
(``init_lora_weights=False``: A and B both random, so every update is non-zero). Each merge method
runs in cxrkit (``cxrkit.lora.merge.merge_adapters``) and, where peft has it, through
``add_weighted_adapter`` on the peft model (its ``svd`` variants with
``svd_full_matrices=False``, the fast setting). For every result the benchmark prints the wall
time, and the relative error ``‖ΔW − Σ wᵢΔWᵢ‖_F / ‖Σ wᵢΔWᵢ‖_F`` over all layers against the exact
weighted sum; for the deterministic pruning merges also the distance between cxrkit's and peft's
result (they implement one definition). Ratios are peft time / cxrkit time.

Usage:
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_lora.py [--widths 192,768]
        [--depths 6,4] [--adapters 3] [--rank 8] [--repeats 2] [--rslora]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from peft.utils import get_peft_model_state_dict
from torch import nn

from cxrkit.lora.files import Adapter, from_state_dict
from cxrkit.lora.merge import merge_adapters, relative_error, weighted_sum

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]
# cxrkit method -> peft combination_type (None: peft has no counterpart)
PAIRS = {
    "linear": "linear", "cat": "cat", "svd": "svd", "ties": "ties_svd",
    "dare_linear": "dare_linear_svd", "dare_ties": "dare_ties_svd",
    "magnitude": "magnitude_prune_svd", "do": None,
}
FACTORWISE = ("ties", "dare_linear", "magnitude_prune")  # peft's factor-wise variants
DENSITY = 0.5


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.attn1 = nn.Module()
        for name in ("to_q", "to_k", "to_v"):
            setattr(self.attn1, name, nn.Linear(width, width))
        self.attn1.to_out = nn.ModuleList([nn.Linear(width, width), nn.Dropout(0.0)])
        self.ff = nn.Module()
        self.ff.net = nn.ModuleList([nn.Module(), nn.GELU(), nn.Linear(4 * width, width)])
        self.ff.net[0].proj = nn.Linear(width, 4 * width)


class Stack(nn.Module):
    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.transformer_blocks = nn.ModuleList(Block(width) for _ in range(depth))


def build(width: int, depth: int, n: int, rank: int, rslora: bool) -> tuple[Any, list[str],
                                                                            list[Adapter]]:
    """The peft model with adapters a0..a{n-1} and the same adapters as cxrkit Adapters."""
    torch.manual_seed(0)
    model = Stack(width, depth)
    names = [f"a{i}" for i in range(n)]
    configs = [LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS,
                          init_lora_weights=False, use_rslora=rslora) for _ in names]
    torch.manual_seed(1)
    pm = get_peft_model(model, configs[0], adapter_name=names[0])
    for i, (name, cfg) in enumerate(zip(names[1:], configs[1:], strict=True)):
        torch.manual_seed(2 + i)
        pm.add_adapter(name, cfg)
    with torch.no_grad():  # every adapter's B drawn like its A's scale, seeded
        g = torch.Generator().manual_seed(3)
        for p_name, p in sorted(pm.named_parameters()):
            if "lora_B" in p_name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    adapters = [from_state_dict(get_peft_model_state_dict(pm, adapter_name=name),
                                pm.peft_config[name], {"characteristic": name}) for name in names]
    return pm, names, adapters


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def peft_merge(pm: Any, names: list[str], weights: list[float], kind: str, rank: int,
               counter: list[int]) -> Adapter:
    counter[0] += 1
    new = f"merged{counter[0]}"
    pm.add_weighted_adapter(names, weights, new, combination_type=kind, svd_rank=rank,
                            density=DENSITY, svd_full_matrices=False)
    adapter = from_state_dict(get_peft_model_state_dict(pm, adapter_name=new),
                              pm.peft_config[new])
    pm.delete_adapter(new)
    return adapter


def distance(x: Adapter, y: Adapter) -> float:
    ref = {n: layer.scale * (layer.b.double() @ layer.a.double()) for n, layer in y.layers.items()}
    return relative_error(x, ref)


def run(width: int, depth: int, n: int, rank: int, repeats: int, rslora: bool) -> None:
    pm, names, adapters = build(width, depth, n, rank, rslora)
    weights = [1.0, 0.7, 0.4, 1.3, 0.9, 0.5][:n] + [1.0] * max(0, n - 6)
    exact = weighted_sum(adapters, weights)
    counter = [0]
    layers = len(adapters[0].layers)
    print(f"\nwidth {width}, depth {depth} ({layers} LoRA layers), {n} adapters of rank {rank}"
          f"{' (rsLoRA)' if rslora else ''}, weights {weights}, density {DENSITY}, "
          f"k = {rank} for the compressed merges, {torch.get_num_threads()} thread(s)")
    print(f"{'method':<12} {'cxrkit s':>9} {'rel.err':>9}   {'peft method':<20} {'peft s':>8} "
          f"{'rel.err':>9} {'peft/cxrkit':>11} {'cxrkit vs peft':>15}")
    for method, kind in PAIRS.items():
        t_ours, ours = timed(lambda m=method: merge_adapters(
            adapters, weights, method=m, rank=rank, density=DENSITY, seed=0), repeats)
        err = relative_error(ours, exact)
        line = f"{method:<12} {t_ours:>9.3f} {err:>9.2e}"
        if kind is not None:
            t_peft, theirs = timed(lambda k=kind: peft_merge(pm, names, weights, k, rank,
                                                             counter), repeats)
            agree = f"{distance(ours, theirs):>15.2e}" if method in ("ties", "magnitude", "svd") \
                else f"{'(random)' if method.startswith('dare') else '':>15}"
            line += (f"   {kind:<20} {t_peft:>8.3f} {relative_error(theirs, exact):>9.2e} "
                     f"{t_peft / t_ours:>11.1f} {agree}")
        print(line, flush=True)
    for kind in FACTORWISE:
        t_peft, theirs = timed(lambda k=kind: peft_merge(pm, names, weights, k, rank, counter),
                               repeats)
        print(f"{'':<12} {'':>9} {'':>9}   {kind + ' (factors)':<20} {t_peft:>8.3f} "
              f"{relative_error(theirs, exact):>9.2e}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", default="192,768")
    parser.add_argument("--depths", default="6,4")
    parser.add_argument("--adapters", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rslora", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    widths = [int(w) for w in args.widths.split(",")]
    depths = [int(d) for d in args.depths.split(",")]
    for width, depth in zip(widths, depths, strict=True):
        run(width, depth, args.adapters, args.rank, args.repeats, args.rslora)


if __name__ == "__main__":
    main()
