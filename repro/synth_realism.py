#!/usr/bin/env python
"""How real do the synthesis DiT's nodules look? (issue #20's realism proof)

For every nodule of ``cxrkit synth -e blend`` records whose background radiograph belongs to a
patient the model never trained on (the held-out split of ``train-synth --stage finetune``, made
again here with the same seed and fraction), the model paints a nodule into the same background
with the same (soft) mask. Then:

- a classifier two-sample test (:func:`cxrkit.synthdit.realism.two_sample_test`): out-of-fold
  accuracy and AUC of a small CNN telling generated from real projected nodules (0.5 = it cannot),
  and, as a check that the test has power, the same for a blur-fill "nodule" (no nodule at all);
- the nodule-minus-surroundings contrast distribution of generated vs real;
- a contact sheet (real, generated, blur-fill, mask) to look at.

Writes ``realism.json`` and ``contact_sheet.png`` in ``--out`` and, with ``--update-run-json``,
adds ``realism`` to the model's ``run.json``.

Usage (repository root; a few minutes on a 2-core CPU):
    python repro/synth_realism.py --model MODEL_DIR --records train-blend.jsonl \
        [--eval-records more-blend.jsonl] --out realism/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--records", required=True, type=Path,
                        help="the records stage 2 trained on (defines the held-out patients)")
    parser.add_argument("--eval-records", type=Path, action="append", default=[],
                        help="more blend records; only those of held-out patients are used")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0, help="the training seed (the split)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps")
    parser.add_argument("--sampler", default=None, help="sampler name (default: the model's)")
    parser.add_argument("--classifier-steps", type=int, default=400)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--update-run-json", action="store_true")
    args = parser.parse_args()

    import torch

    from cxrkit.data.splits import split_groups
    from cxrkit.files import file_sha256
    from cxrkit.pipe import read_record_file
    from cxrkit.synthdit import SynthDiT
    from cxrkit.synthdit.data import nodule_patches
    from cxrkit.synthdit.inference import inpaint_patches
    from cxrkit.synthdit.model import WEIGHTS_NAME
    from cxrkit.synthdit.realism import (
        TEXTURE_DEFINITION,
        contact_sheet,
        contrast_summary,
        interior_texture,
        nodule_contrast,
        seam_ratio,
        two_sample_test,
    )
    from cxrkit.synthdit.training import blur_fill

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    model = SynthDiT.load(args.model)
    s = model.settings
    train_records = list(read_record_file(args.records))
    patches = nodule_patches(train_records, s.patch_px, s.pixel_mm)
    _, val_idx = split_groups([p.group for p in patches], args.val_fraction, seed=args.seed,
                              keep_one=True)
    held_out = {patches[i].group for i in val_idx}
    chosen = [patches[i] for i in val_idx]
    for extra in args.eval_records:
        more = nodule_patches(list(read_record_file(extra)), s.patch_px, s.pixel_mm)
        chosen += [p for p in more if p.group in held_out]
    if not chosen:
        print("synth_realism: no held-out nodule patches", file=sys.stderr)
        return 1
    real = torch.stack([torch.from_numpy(p.patch) for p in chosen])[:, None]
    masks = torch.stack([torch.from_numpy(p.mask) for p in chosen])[:, None]
    groups = [p.group for p in chosen]
    print(f"synth_realism: {len(chosen)} nodules in {len(held_out)} held-out patients' "
          "radiographs", file=sys.stderr)
    cache = args.out / "patches.safetensors"  # the painted patches, reused when rerun
    model_sha = file_sha256(args.model / WEIGHTS_NAME)
    steps = args.steps or s.default_steps
    sampler = args.sampler or s.default_sampler
    generated = None
    if cache.is_file():
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(cache), "pt") as f:
            meta = f.metadata() or {}
        stored = load_file(cache)
        if (meta.get("model_sha256") == model_sha and meta.get("groups") == json.dumps(groups)
                and meta.get("steps") == str(steps) and meta.get("sampler", "ddim") == sampler
                and meta.get("seed", "0") == str(args.seed)
                and torch.equal(stored["real"], real) and torch.equal(stored["masks"], masks)):
            generated = stored["generated"]
            print("synth_realism: painted patches from the cache", file=sys.stderr)
    if generated is None:
        fake = []
        gen = torch.Generator().manual_seed(args.seed)
        for start in range(0, len(real), 32):
            fake.append(inpaint_patches(model, real[start:start + 32], masks[start:start + 32],
                                        steps=steps, sampler=sampler, generator=gen))
            print(f"synth_realism: painted {min(start + 32, len(real))}/{len(real)}",
                  file=sys.stderr)
        generated = torch.cat(fake)
        from safetensors.torch import save_file

        args.out.mkdir(parents=True, exist_ok=True)
        save_file({"real": real.contiguous(), "masks": masks.contiguous(),
                   "generated": generated.contiguous()}, str(cache),
                  metadata={"model_sha256": model_sha, "groups": json.dumps(groups),
                            "steps": str(steps), "sampler": sampler, "seed": str(args.seed)})
    blurred = blur_fill(real, masks)
    test = {"folds": args.folds, "steps": args.classifier_steps, "seed": args.seed}
    print("synth_realism: classifier two-sample tests", file=sys.stderr)
    real_contrast = nodule_contrast(real, masks)
    result = {
        "model": {"path": str(args.model), "sha256": model_sha},
        "records": {"path": str(args.records), "sha256": file_sha256(args.records)},
        "eval_records": [{"path": str(p), "sha256": file_sha256(p)} for p in args.eval_records],
        "held_out_patients": len(held_out), "nodules": len(chosen),
        "sampler_steps": steps, "sampler": sampler,
        "classifier_generated_vs_real": two_sample_test(real, generated, masks, groups, **test),
        "classifier_blur_fill_vs_real": two_sample_test(real, blurred, masks, groups, **test),
        "contrast": contrast_summary(real_contrast, nodule_contrast(generated, masks)),
        "contrast_blur_fill": contrast_summary(real_contrast, nodule_contrast(blurred, masks)),
        "texture": {**contrast_summary(interior_texture(real, masks),
                                       interior_texture(generated, masks)),
                    "definition": TEXTURE_DEFINITION},
        "token_seams": {"real": seam_ratio(real, masks, s.patch_size),
                        "generated": seam_ratio(generated, masks, s.patch_size),
                        "definition": "inside the masks, the mean step between neighbouring "
                                      "pixels across the token grid's boundaries over the "
                                      "mean step within tokens; 1 = no grid"},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    contact_sheet([("real", real), ("generated", generated), ("blur-fill", blurred)], masks,
                  args.out / "contact_sheet.png", count=16)
    (args.out / "realism.json").write_text(json.dumps(result, indent=1) + "\n")
    if args.update_run_json:
        run = json.loads((args.model / "run.json").read_text())
        run["realism"] = result
        (args.model / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    c, b = result["classifier_generated_vs_real"], result["classifier_blur_fill_vs_real"]
    print(f"synth_realism: generated vs real: accuracy {c['accuracy']:.3f} AUC {c['auc']:.3f}; "
          f"blur-fill vs real: accuracy {b['accuracy']:.3f} AUC {b['auc']:.3f}; contrast median "
          f"real {result['contrast']['real']['q50']:.4f} generated "
          f"{result['contrast']['generated']['q50']:.4f}; interior texture median real "
          f"{result['texture']['real']['q50']:.3f} generated "
          f"{result['texture']['generated']['q50']:.3f}; token seams real "
          f"{result['token_seams']['real']:.2f} generated "
          f"{result['token_seams']['generated']:.2f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
