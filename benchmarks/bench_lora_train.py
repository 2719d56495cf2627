"""Benchmark: one training step of ``cxrkit train-lora`` (one adapter, and a joint pair with the
orthogonality penalty) against a full fine-tuning step of the same synthesis DiT.

Each configuration runs the step the training loop runs: zero the gradients, the x₀ loss of a
batch of masked nodule patches (:func:`cxrkit.synthdit.lora_training.grouped_loss`; with the
penalty ``λ · L_orth`` for the pair, :func:`~cxrkit.synthdit.lora_training.orth_term`), backward,
AdamW. Baseline: the same loss with every backbone parameter trainable and no adapter (what
``train-synth --init`` would do to adapt the model). Every row uses the same batch, timesteps
and noises; the time is the median of ``--repeats`` steps after ``--warmup`` steps. It also prints
the trainable parameters and the optimizer state each configuration keeps (AdamW: two floats a
trainable parameter), and the time of ``L_orth`` alone.

Usage:
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_lora_train.py
        [--model cxrkit/models/synthdit] [--batch 8] [--rank 8] [--repeats 10] [--warmup 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from cxrkit.synthdit.adapters import activate, add_trainable
from cxrkit.synthdit.lora_training import grouped_loss, init_seed, orth_term
from cxrkit.synthdit.model import LORA_TARGETS, SynthDiT
from cxrkit.synthdit.training import synth_loss


def _batch(model: SynthDiT, size: int, names: list[str]) -> dict[str, torch.Tensor]:
    px = model.settings.patch_px
    gen = torch.Generator().manual_seed(0)
    patch = torch.rand(size, 1, px, px, generator=gen)
    yy, xx = torch.meshgrid(torch.arange(px), torch.arange(px), indexing="ij")
    radius = torch.randint(px // 10, px // 4, (size,), generator=gen)
    mask = (((yy - px / 2) ** 2 + (xx - px / 2) ** 2)[None] <= radius[:, None, None] ** 2)
    weights = torch.ones(size, max(len(names), 1))
    if len(names) > 1:  # half the batch drawn for each adapter, the other's weight 0 there
        weights[: size // 2, 1] = 0
        weights[size // 2:, 0] = 0
    return {"patch": patch, "mask": mask[:, None].float(), "weights": weights}


def _timed(step: Callable[[], None], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _row(label: str, model: SynthDiT, loss: Callable[[], torch.Tensor], warmup: int,
         repeats: int) -> tuple[str, float, int]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()

    return label, _timed(step, warmup, repeats), sum(p.numel() for p in params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cxrkit/models/synthdit")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--ortho", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    targets = list(LORA_TARGETS)

    def generators() -> list[torch.Generator]:
        return [torch.Generator().manual_seed(1000 + i) for i in range(args.batch)]

    rows = []
    full = SynthDiT.load(args.model)
    full.requires_grad_(True)
    full_batch = _batch(full, args.batch, [])
    rows.append(_row("full fine-tune (baseline)", full,
                     lambda: synth_loss(full, full_batch, generators()), args.warmup,
                     args.repeats))
    for names in (["calcified"], ["calcified", "border_irregular"]):
        model = SynthDiT.load(args.model)
        for name in names:
            add_trainable(model, name, rank=args.rank, alpha=args.rank, targets=targets,
                          seed=init_seed(0, name))
        activate(model, names)
        batch = _batch(model, args.batch, names)
        penalty = args.ortho if len(names) > 1 else 0.0

        def loss(model: SynthDiT = model, names: list[str] = names,
                 batch: dict[str, torch.Tensor] = batch, penalty: float = penalty
                 ) -> torch.Tensor:
            value = grouped_loss(model, names, batch, generators())
            return value + penalty * orth_term(model, names) if penalty else value

        label = ("one adapter" if len(names) == 1
                 else f"joint pair, λ = {args.ortho:g} (L_orth included)")
        rows.append(_row(label, model, loss, args.warmup, args.repeats))
        if len(names) > 1:
            with torch.no_grad():  # make B non-zero so L_orth is a real product
                for p in model.parameters():
                    if p.requires_grad:
                        p.normal_(0, 0.02)
            orth = _timed(lambda m=model, n=names: orth_term(m, n).backward(), args.warmup,
                          args.repeats)
    print(f"synthesis DiT {args.model}: width {full.settings.hidden_size}, depth "
          f"{full.settings.depth}, patches {full.settings.patch_px} px; batch {args.batch}, "
          f"rank {args.rank} on {len(targets)} linears a block; torch "
          f"{torch.__version__}, {torch.get_num_threads()} thread(s)")
    base = rows[0][1]
    print(f"{'step':44s} {'s/step':>8s} {'vs full':>8s} {'trainable':>11s} "
          f"{'AdamW state MB':>15s}")
    for label, seconds, count in rows:
        print(f"{label:44s} {seconds:8.3f} {seconds / base:8.2f} {count:11,d} "
              f"{count * 2 * 4 / 2**20:15.2f}")
    print(f"L_orth of the pair alone (forward + backward): {orth * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
