#!/usr/bin/env python
"""Can the detector separate a handful of training images at all? (issue #22's diagnosis)

Takes up to N solid-nodule positives of ``cxrkit synth`` records and the negatives made from the
same backgrounds (``--negatives``), letterboxes them without augmentation, and trains a fresh
default detector on the whole set for a few dozen full-batch AdamW steps on the presence and
segmentation losses, printing both and the mean presence probability of positives and of
negatives. On 2026-12-06 (parametric 15–25 mm solid nodules, ``--subtlety 5``) the segmentation
loss fell (0.95 → 0.73) while positives and negatives kept the same presence probability (0.57
vs 0.56); a 3-layer CNN control on the same images did barely better in as many steps (0.58 vs
0.56): whole chests hide an 11 px blob, which suggests training on crops first.

Those figures are of the detector before 2026-12-07 (presence from a head on pooled features, no
stem). The detector since reads presence from its mask and has a convolutional stem, and
``train-detect --crop-px`` trains on windows; on 32 windows of 128 px (16 LUNA16 blend nodules of
8 mm or more at ``--intensity-scale 0.6``, 16 negatives) it separated them within 80 full-batch
steps (presence 0.91 vs 0.12), while on held-out whole images 400 training steps were not yet
above chance (AUC 0.52): the window-level signal (held-out window AUC 0.68) has to outweigh every
nodule-like spot of a whole chest.

Usage (repository root):
    python repro/detector_overfit_probe.py synth.jsonl [--count 8] [--image-px 256] [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("records")
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--image-px", type=int, default=256)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=5e-4)
    args = parser.parse_args()

    import torch

    from cxrkit.detector.data import DetectionData, items_from_records
    from cxrkit.detector.model import ARCHS, Detector
    from cxrkit.detector.training import loss_parts

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    with open(args.records, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    positives = [r for r in records if r.get("boxes")
                 and r["boxes"][0].get("attributes", {}).get("texture") == "solid"][:args.count]
    sources = {r.get("source") for r in positives}
    negatives = [r for r in records if not r.get("boxes") and r.get("source") in sources]
    items = items_from_records(positives + negatives[:args.count])
    data = DetectionData(items, args.image_px, augment=False)
    batch = {k: torch.stack([data.tensors(i)[k] for i in range(len(items))])
             for k in data.tensors(0)}
    labels = batch["label"] > 0.5
    settings = replace(ARCHS["default"], image_px=args.image_px)
    model = Detector.new(settings, generator=torch.Generator().manual_seed(0)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    start = time.time()
    print(f"{int(labels.sum())} positives, {int((~labels).sum())} negatives", file=sys.stderr)
    for step in range(args.steps):
        out = model(batch["image"])
        parts = loss_parts(out, batch)
        loss = parts["presence"].mean() + parts["segmentation"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == args.steps - 1:
            p = torch.sigmoid(out["presence"]).detach()
            print(f"step {step}: presence loss {parts['presence'].mean():.3f}, segmentation "
                  f"{parts['segmentation'].mean():.3f}; p(positive) {p[labels].mean():.3f}, "
                  f"p(negative) {p[~labels].mean():.3f} ({time.time() - start:.0f} s)",
                  file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
