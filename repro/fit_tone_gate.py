"""Give an enhancer a tone gate and a tone anchor (issue 23): keep an input's tone unless its
degradation encoder sees a tone change to undo.

Loads MODEL (an enhancer with a degradation encoder), draws degraded views of its training and
held-out radiographs (the patient split in its ``run.json``; ``--preset broad`` with reference
tone changes, as ``train-enhance --preset broad --reference-tone`` trains), fits the logistic
:class:`cxrkit.enhancer.model.ToneGate` on the frozen encoder's embeddings
(:func:`cxrkit.enhancer.tone.fit_tone_gate`), fits the share of the model's high-frequency
residual kept where the anchor applies (least squares on views without a tone change), and writes
MODEL with the gate to OUT: the same UNet and encoder weights, ``enhancer.json`` with
``tone_anchor`` = ``--sigma``, the gate in ``context/tone_gate.safetensors``, and ``run.json``
extended by a ``tone_gate`` record (this command, its options, the accuracies). ~2 min on one
CPU thread. With ``--route SPECIALIST`` the written model also hands the inputs in which its gate
sees a tone change (DRR-like ones) to that enhancer, copied whole into ``OUT/route``
(``Enhancer.with_route``): the robust model for everything else, the specialist for its own job.

Usage (repository root)::

    python repro/fit_tone_gate.py enhancer-work/6-broad ../shared/data/nih-cxr14/images \\
        --sigma 16 -o enhancer-work/7-tone-gate
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from cxrkit.enhancer import Enhancer
from cxrkit.enhancer.model import model_sha256
from cxrkit.enhancer.tone import fit_tone_gate
from cxrkit.enhancer.training import load_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("images", type=Path, help="folder of the model's training radiographs")
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--sigma", type=float, default=16.0,
                        help="σ of the tone anchor's low-pass, output pixels")
    parser.add_argument("--preset", default="broad")
    parser.add_argument("--reference-tone", type=float, default=0.3)
    parser.add_argument("--samples", type=int, default=600, help="views of training images")
    parser.add_argument("--held-out-samples", type=int, default=200)
    parser.add_argument("--calibration-samples", type=int, default=60,
                        help="views without a tone change that fit the anchored detail share "
                             "(and as many held-out ones that measure it); 0: keep it at 1")
    parser.add_argument("--asymmetry", type=float, default=9.0,
                        help="extra weight of doing worse than bicubic in the detail fit")
    parser.add_argument("--max-images", type=int, default=60,
                        help="training images read (the first, by name)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--route", type=Path,
                        help="an enhancer (no gate) for the inputs the gate sees a tone change in")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="fp16", choices=("fp32", "bf16", "fp16"),
                        help="dtype of the written weights (train-enhance's default: fp16)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.out.exists():
        parser.error(f"{args.out} exists")
    run = json.loads((args.model / "run.json").read_text())
    train_names = sorted(run["data"]["train"])[: args.max_images]
    held_names = sorted(run["data"]["validation"])
    model = Enhancer.from_pretrained(args.model)
    gated, fit = fit_tone_gate(
        model, load_images([args.images / n for n in train_names]),
        load_images([args.images / n for n in held_names]), sigma=args.sigma,
        preset=args.preset, reference_tone=args.reference_tone, samples=args.samples,
        held_out_samples=args.held_out_samples, seed=args.seed,
        calibration_samples=args.calibration_samples, asymmetry=args.asymmetry)
    if args.route is not None:
        gated = gated.with_route(Enhancer.from_pretrained(args.route))
    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    gated.save_pretrained(tmp, dtype=args.dtype)
    run["tone_gate"] = {
        "command": shlex.join(["python", *sys.argv]), "from": str(args.model),
        "from_model_sha256": model_sha256(args.model), "sigma": args.sigma,
        "preset": args.preset, "reference_tone": args.reference_tone, "seed": args.seed,
        "samples": [args.samples, args.held_out_samples],
        "calibration_samples": args.calibration_samples, "asymmetry": args.asymmetry,
        "train_images": train_names, "fit": asdict(fit),
        "route": None if args.route is None else {
            "from": str(args.route), "from_model_sha256": model_sha256(args.route),
            "what": "inputs in which the gate sees a tone change are enhanced by this model"}}
    (tmp / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    if args.route is not None:  # the specialist's own files, byte for byte (its hash, run.json)
        shutil.rmtree(tmp / "route")
        shutil.copytree(args.route, tmp / "route", ignore=shutil.ignore_patterns("checkpoints"))
    tmp.rename(args.out)
    print(json.dumps(run["tone_gate"]["fit"]))


if __name__ == "__main__":
    main()
