#!/usr/bin/env python
"""Do the characteristic adapters steer the synthesis DiT? (issue #21's proof)

Measured (2026-12-07, the shipped synthesis DiT and adapters, each characteristic's A from its
own seed, this 2-core CPU, one thread; ``proof.json``/``proof.md`` in the work folder; an
earlier run with the old shared A seeds is summarised at the end). Patients: 81 LUNA16 patients
for the study adapters (635 real blend records + 1144 parametric), 79 for the classifier (1017
real projected nodules), none in both.

Attribute classifier, held-out AUC (out of fold, 5 folds by patient; 95 % CI over patients):
calcified 0.59 (0.47-0.69; 68 nodules of 9 patients), border_irregular 0.66 (0.56-0.77),
inhomogeneous 0.54 (0.47-0.61). Only the border beats chance clearly; a side check (not in
this recipe) with hand-made features (contrast, inside SD, core-periphery, mask perimeter) and
logistic regression gave 0.66 / 0.68 / 0.55, so the ceiling is how little of the LIDC traits
survives projection into a radiograph at 0.75 mm, not the CNN. The controllability rates below
are therefore weak evidence either way.

Controllability, 64 nodules per run (same masks, backgrounds and noise), rate of the intended
trait without -> study adapter (shipped adapter, which saw the classifier's patients too):
calcified 0 % -> 0 % (0 %); border_regular 59 % -> 58 % (58 %); border_irregular 41 % -> 39 %
(38 %); texture_homogeneous 30 % -> 33 % (25 %); texture_inhomogeneous 70 % -> 78 % (77 %).
Target (>= 80 % and well above the base): not met by any adapter. Classifier-free: every
adapter but texture_homogeneous *lowers* the painted nodule's contrast (0.0174 -> 0.0102
calcified, 0.0126 border_irregular, 0.0113 texture_inhomogeneous; display units), the inside
SD moves by < 3 %; the contact sheet shows no visible trait.

Composition (both traits found): calcified pairs 0 % for every method (the judge never finds
calcification); border_irregular + texture_homogeneous: base 19 %, (a) separate + linear 16 %,
(b) joint with L_orth (lambda 0.01) + linear 17 %, (c) separate + DO merge 16 %: target ((b) or
(c) above (a) on every pair) not met (the calcified pairs tie at 0 %). Interference, mean over
the 36 layers of the normalised cross term: (a) 0.082-0.096 (A row-space overlap 0.04), the
lambda = 0 joint control 0.079-0.086, (b) 0.001 (overlap 0.01), below both on 36/36 layers of
every pair: L_orth does what it is for, without changing which traits are painted.

Subtlety (shipped slider, centred alpha map 8*(s-3), alpha_train 8: weight s - 3): nodule CNR
0.340, 0.428, 0.518, 0.586, 0.609 for s = 1..5 (contrast -0.0008 .. 0.0234): rising
monotonically, target met (s = 3 is the base model). Weight sweep 0 / 0.5 / 1 / 2 / 3: CNR
0.518 / 0.557 / 0.586 / 0.609 / 0.585.

The earlier run (same day, shared A seeds: separately trained adapters started from one A,
overlap 0.93-0.94): the same controllability within 1-3 points; interference (a) 0.42-0.46
against the control's 0.08-0.10, so that gap was the initialisation; the slider on the
source's map 22 + s (weights 0.92..1.08) gave CNR 0.447 -> 0.436, monotonic but falling (the
adapter's direction lowered contrast: weight 0 / 1 / 3 gave 0.518 / 0.441 / 0.352).

Cost: the 8 train-lora runs (11 with --ortho-control) 2-17 min each here (about 30 min to 1 h
wall, by load; 0.7 s/step alone), classifier 5 x 400 steps about 4 min CPU, painting about
10-80 s per run of 64 nodules; a rerun with everything cached about 1 min.

Steps (each writes into ``--work`` and is skipped when its output is there, so a rerun goes on):

1. **Patient split.** The LUNA16 patients of the real blend records (``--real``, records of
   ``cxrkit synth -e blend --source luna16``) are split in two halves, stratified by whether the
   patient has a calcified nodule (seed 21): *adapter* patients and *classifier* patients. The
   shipped adapters saw every LUNA16 patient, so the study retrains its own adapters.
2. **Study adapters** (``cxrkit train-lora`` with the shipped settings of ``repro/train_lora.sh``:
   rank 8, alpha 8, all six targets, 200 steps of batch 8, lr 1e-3, seed 0) on the adapter
   patients' real records (of the first ``--real`` file only, as the shipped ones) plus the
   parametric records (``--param``): one per characteristic (calcified, border_regular,
   border_irregular, texture_homogeneous, texture_inhomogeneous), and the three composition pairs
   trained jointly with the orthogonality penalty (``--ortho-weight``).
3. **Merges** (``cxrkit merge-lora``) of each pair: (a) the separately trained adapters, linear;
   (b) the jointly trained ones, linear; (c) the separately trained ones, orthogonalised (``do``);
   and the interference report of (a)'s and (b)'s sources.
4. **Attribute classifier** (:mod:`cxrkit.synthdit.attributes`): a small CNN on the central
   40 px of the model's 64 px windows (0.75 mm) of the classifier patients' real projected
   nodules (every ``--real`` file), multi-label (calcified, border irregular, texture
   inhomogeneous); its own held-out AUC per attribute by patient-grouped cross-validation
   (5 folds); the judge is the mean of the 5 fold models with a Youden threshold per attribute
   on the out-of-fold probabilities (:func:`cxrkit.synthdit.attributes.youden_thresholds`).
5. **Generation.** ``--nodules`` parametric nodule masks (``cxrkit synth -e blend --source
   parametric`` on the radiographs of the background patients the model and the adapters held
   out: sphere, ellipsoid, lobulated and spiculated shapes, solid, no calcification, 8–20 mm;
   seed 5) are painted by the model (the sampler ``synth -e diffusion`` runs:
   :func:`cxrkit.synthdit.inpaint_patches` on the model's window, here batched) without an
   adapter, with each study adapter and each shipped one, with each merge, and with the shipped
   subtlety slider at s = 1..5 (and at weights 0.5..3); every run uses the same masks,
   backgrounds and noise seed.
6. **Measures.** Controllability: the classifier's rate of the intended trait (a polarity ``0``
   adapter's trait is the attribute's absence) with and without the adapter. Composition: the
   rate at which both traits are found, per method. Subtlety: the nodule's CNR
   (:func:`cxrkit.realism.nodule_cnr`: |mean(nodule) − mean(5 mm ring)| / std(ring)) per s and
   whether its mean rises monotonically. Writes ``proof.json`` and ``proof.md`` in ``--work``.

Usage (repository root)::

    OMP_NUM_THREADS=1 python repro/lora_proof.py --work lora-proof/ \
        --real synth-work/blend.jsonl --real blend-seed1.jsonl --param lora-work/param.jsonl

``--real``: the blend records of ``repro/train_synth.sh`` (``synth-work/blend.jsonl``) and a
second draw of the same command with ``--seed 1`` (more examples for the classifier); ``--param``
the parametric records of ``repro/train_lora.sh``. ``--quick`` is a smoke run (a few steps and
nodules; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SINGLES = ("calcified", "border_regular", "border_irregular", "texture_homogeneous",
           "texture_inhomogeneous")
PAIRS = (("calcified", "border_irregular"), ("calcified", "texture_homogeneous"),
         ("border_irregular", "texture_homogeneous"))
TARGETS = "to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2"


def log(message: str) -> None:
    print(f"lora_proof: {message}", file=sys.stderr, flush=True)


def cxrkit(*args: str, stdout: Path | None = None) -> None:
    """Run one cxrkit command (the CLI, as a user would); its records appended to ``stdout``."""
    command = [sys.executable, "-m", "cxrkit", *args]
    log(" ".join(command[1:]))
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if stdout is None:
        subprocess.run(command, check=True, env=env, cwd=ROOT)
        return
    with stdout.open("a") as f:
        subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=f)


def read_records(path: Path) -> list[dict[str, Any]]:
    from cxrkit.pipe import read_record_file

    return list(read_record_file(path))


def luna_patient(record: dict[str, Any]) -> str | None:
    return ((record.get("nodule") or {}).get("source") or {}).get("patient_id")


def split_patients(records: list[dict[str, Any]], seed: int) -> dict[str, list[str]]:
    """Half the LUNA16 patients for the adapters, half for the classifier, stratified by
    whether the patient has a calcified nodule (the rarest trait)."""
    import numpy as np

    calcified: dict[str, bool] = {}
    for r in records:
        p = luna_patient(r)
        if p is None:
            continue
        c = (r["nodule"].get("characteristics") or {}).get("calcified") == 1
        calcified[p] = calcified.get(p, False) or c
    rng = np.random.default_rng(seed)
    adapter, classifier = [], []
    for flag in (True, False):
        group = sorted(p for p, c in calcified.items() if c == flag)
        order = rng.permutation(len(group))
        half = (len(group) + 1) // 2
        adapter += [group[i] for i in order[:half]]
        classifier += [group[i] for i in order[half:]]
    return {"adapter": sorted(adapter), "classifier": sorted(classifier)}


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def finished(folder: Path) -> bool:
    run = folder / "run.json"
    return run.is_file() and json.loads(run.read_text()).get("stopped") is None


def train_adapters(args: argparse.Namespace, records: Path, *, joint: bool = True) -> None:
    param = args.param
    if args.quick:  # a few records, so each smoke run loads quickly
        param = args.work / "param-quick.jsonl"
        write_jsonl(param, read_records(args.param)[:48])
    common = ["--model", str(args.model), "--records", str(records), "--records",
              str(param), "--rank", "8", "--alpha", "8", "--targets", TARGETS,
              "--batch-size", "8", "--lr", "1e-3", "--warmup-steps", str(min(20, args.steps)),
              "--lr-schedule", "cosine", "--steps", str(args.steps), "--ema", "0",
              "--checkpoint-every", "100", "--validate-every", str(args.steps),
              "--val-samples", "8" if args.quick else "32", "--seed", "0"]
    for c in SINGLES:
        out = args.work / "adapters" / c
        if not finished(out):
            resume = ["--resume", "latest"] if (out / "checkpoints").is_dir() else []
            cxrkit("train-lora", *common, "-c", c, *resume, "-o", str(out))
    for a, b in PAIRS if joint else ():
        runs = [("joint", args.ortho_weight)] + ([("joint0", 0.0)] if args.ortho_control else [])
        for prefix, weight in runs:  # joint0: the lambda = 0 control of the same pair
            out = args.work / "adapters" / f"{prefix}-{a}+{b}"
            if not finished(out):
                resume = ["--resume", "latest"] if (out / "checkpoints").is_dir() else []
                cxrkit("train-lora", *common, "-c", a, "-c", b, "--ortho-weight", str(weight),
                       *resume, "-o", str(out))


def version() -> str:
    import cxrkit

    return cxrkit.__version__


def sha(path: Path) -> str:
    from cxrkit.files import file_sha256

    return file_sha256(path)


def adapter_file(args: argparse.Namespace, name: str, joint: tuple[str, str] | None = None,
                 prefix: str = "joint") -> Path:
    folder = f"{prefix}-{joint[0]}+{joint[1]}" if joint else name
    return args.work / "adapters" / folder / f"{name}.safetensors"


def make_merges(args: argparse.Namespace) -> dict[str, Path]:
    """(a) separate + linear, (b) joint (L_orth) + linear, (c) separate + do, per pair."""
    out = {}
    folder = args.work / "merges"
    folder.mkdir(exist_ok=True)
    for a, b in PAIRS:
        for method, sources in (
                ("a_separate_linear", (adapter_file(args, a), adapter_file(args, b))),
                ("b_joint_orth_linear", (adapter_file(args, a, (a, b)),
                                         adapter_file(args, b, (a, b)))),
                ("c_separate_do", (adapter_file(args, a), adapter_file(args, b)))):
            path = folder / f"{a}+{b}.{method}.safetensors"
            if not path.is_file():
                cxrkit("merge-lora", *map(str, sources), "--method",
                       "do" if method.endswith("_do") else "linear", "-o", str(path),
                       stdout=folder / "merges.jsonl")
            out[f"{a}+{b}/{method}"] = path
    return out


def interference(args: argparse.Namespace) -> dict[str, Any]:
    """Per pair: the interference report of the separately trained adapters (a) and of the
    jointly trained ones (b), summarised, with the layers where (b) is below (a)."""
    from cxrkit.lora.files import load_adapter
    from cxrkit.lora.report import interference_report

    out = {}
    for a, b in PAIRS:
        rows = {}
        for key, joint, prefix in (("a_separate", None, ""), ("b_joint_orth", (a, b), "joint"),
                                   ("b0_joint_no_orth", (a, b), "joint0")):
            files = [adapter_file(args, c, joint, prefix) for c in (a, b)]
            if not all(f.is_file() for f in files):
                continue  # the lambda = 0 control is trained with --ortho-control only
            report = interference_report([load_adapter(f) for f in files], [a, b])
            rows[key] = {r.layer: r for r in report.pairs}
        layers = sorted(rows["a_separate"])
        sep = [rows["a_separate"][k].cross_normalised for k in layers]
        joint_ = [rows["b_joint_orth"][k].cross_normalised for k in layers]
        cos_sep = [abs(rows["a_separate"][k].cosine) for k in layers]
        cos_joint = [abs(rows["b_joint_orth"][k].cosine) for k in layers]
        ov_sep = [rows["a_separate"][k].overlap for k in layers]
        ov_joint = [rows["b_joint_orth"][k].overlap for k in layers]
        out[f"{a}+{b}"] = {
            "layers": len(layers),
            "cross_normalised_mean": {"a_separate": mean(sep), "b_joint_orth": mean(joint_)},
            "cross_normalised_max": {"a_separate": max(sep), "b_joint_orth": max(joint_)},
            "abs_cosine_mean": {"a_separate": mean(cos_sep), "b_joint_orth": mean(cos_joint)},
            # the A row spaces' overlap (1: one subspace); before 2026-12-07's fix train-lora
            # seeded every separately trained adapter's A alike
            "row_space_overlap_mean": {"a_separate": mean(ov_sep), "b_joint_orth": mean(ov_joint)},
            "layers_b_below_a": int(sum(j < s for s, j in zip(sep, joint_, strict=True))),
            **({"b0_joint_no_orth": {
                "cross_normalised_mean": mean([rows["b0_joint_no_orth"][k].cross_normalised
                                               for k in layers]),
                "abs_cosine_mean": mean([abs(rows["b0_joint_no_orth"][k].cosine)
                                         for k in layers]),
                "row_space_overlap_mean": mean([rows["b0_joint_no_orth"][k].overlap
                                                for k in layers]),
                "layers_b_below_b0": int(sum(
                    rows["b_joint_orth"][k].cross_normalised
                    < rows["b0_joint_no_orth"][k].cross_normalised for k in layers))}}
               if "b0_joint_no_orth" in rows else {}),
            "per_layer": {k: {"a_separate": s_, "b_joint_orth": j_}
                          for k, s_, j_ in zip(layers, sep, joint_, strict=True)},
        }
    return out


def mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def adapter_training(args: argparse.Namespace) -> dict[str, Any]:
    """Each study adapter's held-out masked MSE with and without it (its run.json)."""
    out = {}
    for folder in sorted((args.work / "adapters").iterdir()):
        run = json.loads((folder / "run.json").read_text())
        out[folder.name] = {"train_seconds": run.get("train_seconds"),
                            "validation": run.get("validation"),
                            "by_source": {k: {"train": v.get("train_by_source")}
                                          for k, v in run["data"]["adapters"].items()}}
    return out


def window_patches(records: list[dict[str, Any]], model: Any) -> tuple[Any, Any, list[int]]:
    """The model's windows of the records' nodules: ``(patches, masks, record index)``."""
    import torch

    from cxrkit.synthdit.data import nodule_patches

    s = model.settings
    index = {r.get("id"): i for i, r in enumerate(records)}
    items = nodule_patches(records, s.patch_px, s.pixel_mm)
    patches = torch.stack([torch.from_numpy(p.patch) for p in items])[:, None]
    masks = torch.stack([torch.from_numpy(p.mask) for p in items])[:, None]
    return patches, masks, [index[p.source] for p in items]


def load_model(args: argparse.Namespace) -> Any:
    from cxrkit.synthdit import SynthDiT

    return SynthDiT.load(args.model)


def attribute_classifier(args: argparse.Namespace, real: list[list[dict[str, Any]]],
                         patients: set[str]) -> tuple[Any, dict[str, Any]]:
    """Train the judge on the classifier patients' real nodules (cached in the work folder)."""
    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    from cxrkit.synthdit.attributes import (
        DEFINITION,
        AttributeJudge,
        attribute_inputs,
        attribute_labels,
        classifier_network,
        cross_validate,
        held_out_summary,
        youden_thresholds,
    )

    cache = args.work / "classifier-patches.safetensors"
    if cache.is_file():
        stored = load_file(cache)
        patches, masks = stored["patches"], stored["masks"]
        meta = json.loads((args.work / "classifier-patches.json").read_text())
    else:
        model = load_model(args)
        parts, meta = [], {"characteristics": [], "patients": []}
        for records in real:
            chosen = [r for r in records if luna_patient(r) in patients]
            if args.quick:
                chosen = chosen[:96]
            p, m, idx = window_patches(chosen, model)
            parts.append((p, m))
            meta["characteristics"] += [chosen[i]["nodule"]["characteristics"] for i in idx]
            meta["patients"] += [luna_patient(chosen[i]) for i in idx]
        patches = torch.cat([p for p, _ in parts])
        masks = torch.cat([m for _, m in parts])
        save_file({"patches": patches.contiguous(), "masks": masks.contiguous()}, str(cache))
        (args.work / "classifier-patches.json").write_text(json.dumps(meta))
    y = attribute_labels(meta["characteristics"])
    groups = meta["patients"]
    x = attribute_inputs(patches, masks)
    steps = 30 if args.quick else args.classifier_steps
    folds = 2 if args.quick else 5
    saved, saved_info = args.work / "classifier.safetensors", args.work / "classifier.json"
    settings = {"folds": folds, "steps": steps, "nodules": len(x)}
    if saved.is_file() and saved_info.is_file() and \
            json.loads(saved_info.read_text()).get("settings") == settings:
        stored = load_file(saved)
        prob = stored.pop("oof_probabilities").double().numpy()
        nets = []
        for k in range(folds):
            net = classifier_network(torch.Generator().manual_seed(0), x.shape[1])
            net.load_state_dict({key.split(".", 1)[1]: v for key, v in stored.items()
                                 if key.startswith(f"fold{k}.")})
            nets.append(net.eval())
        log(f"attribute classifier: {folds} fold models from {saved}")
    else:
        log(f"attribute classifier: {len(x)} real nodules of {len(set(groups))} patients, "
            f"{folds} folds of {steps} steps")
        prob, nets = cross_validate(x, y, groups, folds=folds, steps=steps, seed=0)
        tensors = {f"fold{k}.{key}": v.contiguous() for k, net in enumerate(nets)
                   for key, v in net.state_dict().items()}
        tensors["oof_probabilities"] = torch.from_numpy(prob)
        save_file(tensors, str(saved))
        saved_info.write_text(json.dumps({"settings": settings}) + "\n")
    thresholds = youden_thresholds(prob, y)
    summary = held_out_summary(prob, y, thresholds, groups, seed=0,
                               n_boot=100 if args.quick else 1000)
    info = {"definition": DEFINITION, "nodules": len(x), "patients": len(set(groups)),
            "records": [{"path": str(p), "sha256": sha(p)} for p in args.real],
            "folds": folds, "steps": steps, "held_out": summary,
            "label_prevalence": {k: float(np.nanmean(y[:, j]))
                                 for j, k in enumerate(("calcified", "border_irregular",
                                                        "inhomogeneous"))}}
    for key, entry in summary.items():
        log(f"  {key}: held-out AUC {entry.get('auc', float('nan')):.3f} "
            f"({entry['positives']}+ / {entry['negatives']}-)")
    return AttributeJudge(nets, thresholds), info


def held_out_images(args: argparse.Namespace) -> list[str]:
    """The radiographs of the background patients the synthesis model and the adapters held
    out (their split: 10 % of the patients of the first --real file, seed 0)."""
    from cxrkit.data.splits import patient_id, split_groups

    records = read_records(args.real[0])
    sources = sorted({str(r["source"]) for r in records})
    _, val = split_groups([patient_id(s) for s in sources], 0.1, seed=0, keep_one=True)
    return [sources[i] for i in val]


def generation_masks(args: argparse.Namespace) -> Path:
    """Parametric nodule masks on the held-out radiographs (``cxrkit synth -e blend``)."""
    import math

    out = args.work / "gen-masks.jsonl"
    if not out.is_file():
        images = held_out_images(args)
        per_image = math.ceil(args.nodules / len(images))
        part = out.with_suffix(".jsonl.part")
        log(f"generation masks: {per_image} per radiograph on {len(images)} held-out ones")
        command = [sys.executable, "-m", "cxrkit", "synth", "-e", "blend", *images,
                   "--source", "parametric", "--shape", "sphere,ellipsoid,lobulated,spiculated",
                   "--texture", "solid", "--calcification", "none", "--diameter-mm", "8:20",
                   "--spicule-length-mm", "2:6", "-n", str(per_image), "--seed", "5",
                   "-o", str(args.work / "gen-masks")]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with part.open("w") as f:
            subprocess.run(command, check=True, env=env, cwd=ROOT, stdout=f)
        part.rename(out)
    return out


def paint_all(model: Any, backbone: str, patches: Any, masks: Any,
              adapters: list[tuple[Path, float]], seed: int, steps: int | None) -> Any:
    """Paint every mask (batches of 32) with the adapters attached at their weights, the
    model's noise from ``seed``: the sampler of ``synth -e diffusion`` on its window."""
    import copy

    import torch

    from cxrkit.lora.files import load_adapter
    from cxrkit.synthdit import inpaint_patches
    from cxrkit.synthdit.adapters import Composition, attach

    net = model
    on_step = None
    if adapters:
        net = copy.deepcopy(model)
        loaded = [(f"adapter{i}", load_adapter(p, backbone_sha256=backbone), w)
                  for i, (p, w) in enumerate(adapters)]
        attach(net, loaded)
        on_step = Composition(net, {n: w for n, _, w in loaded}, "sum").on_step
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(patches), 32):
        out.append(inpaint_patches(net, patches[start:start + 32], masks[start:start + 32],
                                   steps=steps, generator=gen, on_step=on_step))
    return torch.cat(out)


def rate(flags: Any) -> float:
    return float(flags.mean())


def study(args: argparse.Namespace, judge: Any, masks_file: Path,
          merges: dict[str, Path]) -> dict[str, Any]:
    """Controllability, composition and subtlety on the generation masks."""
    import numpy as np

    from cxrkit.lora.files import load_adapter
    from cxrkit.realism import nodule_cnr
    from cxrkit.synthdit.adapters import alpha_map
    from cxrkit.synthdit.data import support
    from cxrkit.synthdit.lora_training import CHARACTERISTICS
    from cxrkit.synthdit.realism import nodule_contrast

    model = load_model(args)
    backbone = sha(args.model / "diffusion_pytorch_model.safetensors")
    s = model.settings
    records = read_records(masks_file)
    background, masks, _ = window_patches(records, model)
    n = min(len(background), args.nodules)
    background, masks = background[:n], masks[:n]
    log(f"painting {n} nodules per run")

    cache = args.work / "painted"
    cache.mkdir(exist_ok=True)
    masks_sha = sha(masks_file)

    def paint(adapters: list[tuple[Path, float]]) -> Any:
        """The painted windows (cached in ``painted/`` by the adapters' hashes and weights)."""
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        key = {"model": backbone, "masks": masks_sha, "nodules": n, "seed": 7,
               "adapters": [[sha(p), w] for p, w in adapters]}
        name = "base" if not adapters else "+".join(f"{p.parent.name}.{p.stem}:{w:.4g}"
                                                    for p, w in adapters)
        path = cache / f"{name}.safetensors"
        if path.is_file():
            with safe_open(str(path), "pt") as f:
                if (f.metadata() or {}).get("key") == json.dumps(key):
                    return load_file(path)["painted"]
        painted = paint_all(model, backbone, background, masks, adapters, seed=7, steps=None)
        save_file({"painted": painted.contiguous()}, str(path),
                  metadata={"key": json.dumps(key)})
        return painted

    def trait(name: str) -> tuple[str, int]:
        c = CHARACTERISTICS[name]
        return c.label, int(c.value)

    inside = support(masks)

    def pixels(painted: Any) -> dict[str, float]:
        """Classifier-free measures of the painted nodules (means over them): contrast against
        the surroundings, SD and maximum inside the mask (display units)."""
        return {"contrast": float(np.nanmean(nodule_contrast(painted, masks))),
                "inside_sd": mean([float(painted[i][inside[i]].std())
                                   for i in range(len(painted))]),
                "inside_max": mean([float(painted[i][inside[i]].max())
                                    for i in range(len(painted))])}

    base = paint([])
    base_prob = judge.probabilities(base, masks)
    shipped_dir = ROOT / "cxrkit/models/synthdit/adapters"
    control: dict[str, Any] = {}
    sheet = [("none", base)]
    for name in SINGLES:
        t = trait(name)
        j = ("calcified", "border_irregular", "inhomogeneous").index(t[0])
        row: dict[str, Any] = {"trait": f"{t[0]}=={t[1]}", "nodules": n,
                               "base_rate": rate(judge.found(base, masks, t)),
                               "base_mean_probability": float(base_prob[:, j].mean()),
                               "base_pixels": pixels(base)}
        for key, path in (("study", adapter_file(args, name)),
                          ("shipped", shipped_dir / f"{name}.safetensors")):
            painted = paint([(path, 1.0)])
            row[f"{key}_rate"] = rate(judge.found(painted, masks, t))
            row[f"{key}_mean_probability"] = float(judge.probabilities(painted, masks)[:, j].mean())
            row[f"{key}_pixels"] = pixels(painted)
            if key == "study":
                sheet.append((name[:14], painted))
        control[name] = row
        log(f"controllability {name}: base {row['base_rate']:.2f} study {row['study_rate']:.2f} "
            f"shipped {row['shipped_rate']:.2f}")
    from cxrkit.synthdit.realism import contact_sheet

    contact_sheet(sheet, masks, args.work / "contact_sheet.png", count=12)
    composition: dict[str, Any] = {}
    for a, b in PAIRS if merges else ():
        ta, tb = trait(a), trait(b)
        both_base = judge.found(base, masks, ta) & judge.found(base, masks, tb)
        row = {"traits": [f"{ta[0]}=={ta[1]}", f"{tb[0]}=={tb[1]}"], "nodules": n,
               "base_both": rate(both_base)}
        for method in ("a_separate_linear", "b_joint_orth_linear", "c_separate_do"):
            painted = paint([(merges[f"{a}+{b}/{method}"], 1.0)])
            fa, fb = judge.found(painted, masks, ta), judge.found(painted, masks, tb)
            row[method] = {"both": rate(fa & fb), a: rate(fa), b: rate(fb)}
        composition[f"{a}+{b}"] = row
        log(f"composition {a}+{b}: " + ", ".join(
            f"{m} {row[m]['both']:.2f}" for m in ("a_separate_linear", "b_joint_orth_linear",
                                                  "c_separate_do")))
    subtlety: dict[str, Any] = {}
    path = shipped_dir / "subtlety.safetensors"
    meta = dict(load_adapter(path).meta)
    alpha_train = float(meta.get("alpha_train", 25.0))
    amap = alpha_map(str(meta.get("alpha_map") or "22+s"))

    def cnr(painted: Any) -> list[float]:
        values = []
        for i in range(len(painted)):
            v = nodule_cnr(painted[i, 0].numpy(), inside[i, 0].numpy(), s.pixel_mm)
            values.append(float("nan") if v is None else v)
        return values

    base_cnr = cnr(base)
    means = []
    for level in range(1, 6):
        weight = amap(float(level)) / alpha_train
        painted = paint([(path, weight)])
        values = cnr(painted)
        means.append(float(np.nanmean(values)))
        subtlety[str(level)] = {"weight": weight, "cnr_mean": means[-1],
                                "cnr_median": float(np.nanmedian(values)),
                                "contrast_mean": float(np.nanmean(nodule_contrast(painted, masks))),
                                "nodules": int(np.isfinite(values).sum())}
        log(f"subtlety {level}: weight {weight:.3f} CNR mean {means[-1]:.3f}")
    sweep = {}  # the slider's direction itself, at weights beyond its alpha map's range
    for weight in (0.0, 0.5, 1.0, 2.0, 3.0):
        painted = base if weight == 0 else paint([(path, weight)])
        sweep[f"{weight:g}"] = {"cnr_mean": float(np.nanmean(cnr(painted))),
                                "contrast_mean": float(np.nanmean(nodule_contrast(painted,
                                                                                   masks)))}
    return {
        "generation": {"masks": str(masks_file), "nodules": n, "seed": 7,
                       "sampler_steps": s.default_steps, "sampler": s.default_sampler,
                       "what": "parametric masks (sphere, ellipsoid, lobulated, spiculated; "
                               "solid; no calcification; 8-20 mm) of synth -e blend on the "
                               "held-out background patients' radiographs; the same masks, "
                               "backgrounds and noise seed for every run"},
        "controllability": control,
        "composition": composition,
        "subtlety": {"adapter": str(path), "alpha_train": alpha_train,
                     "alpha_map": str(meta.get("alpha_map") or "22+s"),
                     "levels": subtlety, "base_cnr_mean": float(np.nanmean(base_cnr)),
                     "weight_sweep": sweep,
                     "monotonic": bool(all(x < y for x, y in itertools.pairwise(means))),
                     "definition": "CNR = |mean(nodule) - mean(5 mm ring)| / std(ring) "
                                   "(cxrkit.realism.nodule_cnr) on the model's window; "
                                   "contrast = mean(nodule) - mean(2-6 px ring), display units "
                                   "(cxrkit.synthdit.realism.nodule_contrast)"},
    }


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f} %"


def markdown(r: dict[str, Any]) -> str:
    """The tables of proof.json."""
    lines = ["# LoRA adapters: controllability, composition, subtlety (repro/lora_proof.py)", ""]
    c = r["classifier"]
    lines += [f"Attribute classifier: {c['nodules']} real projected nodules of {c['patients']} "
              "LUNA16 patients the study adapters never saw; held-out (out-of-fold) AUC:", "",
              "| attribute | AUC | 95 % CI | positives | sensitivity | specificity |",
              "|---|---|---|---|---|---|"]
    for key, e in c["held_out"].items():
        ci = e.get("auc_ci95")
        lines.append(f"| {key} | {e.get('auc', float('nan')):.3f} | "
                     f"{'–' if not ci else f'{ci[0]:.2f}–{ci[1]:.2f}'} | {e['positives']} "
                     f"({e['positive_patients']} patients) | {pct(e.get('sensitivity'))} | "
                     f"{pct(e.get('specificity'))} |")
    g = r["generation"]
    lines += ["", f"Controllability ({g['nodules']} generated nodules per run, same masks, "
              "backgrounds and seeds): rate at which the classifier finds the intended trait", "",
              "| adapter | trait | without | study adapter | shipped adapter* | mean P(trait) "
              "without → study | contrast without → study | SD inside without → study |",
              "|---|---|---|---|---|---|---|---|"]
    for name, row in r["controllability"].items():
        b, st = row["base_pixels"], row["study_pixels"]
        p0, p1 = row["base_mean_probability"], row["study_mean_probability"]
        if row["trait"].endswith("==0"):
            p0, p1 = 1 - p0, 1 - p1
        lines.append(f"| {name} | {row['trait']} | {pct(row['base_rate'])} | "
                     f"{pct(row['study_rate'])} | {pct(row['shipped_rate'])} | "
                     f"{p0:.3f} → {p1:.3f} | {b['contrast']:.4f} → {st['contrast']:.4f} | "
                     f"{b['inside_sd']:.4f} → {st['inside_sd']:.4f} |")
    lines += ["", "*the shipped adapters trained on every LUNA16 patient, the classifier's too. "
              "Contrast: mean(nodule) − mean(2–6 px ring); SD inside: the painted pixels' SD "
              "(display units, means over the nodules).",
              "", "Composition: rate at which both traits are found", "",
              "| pair | without | (a) separate, linear | (b) joint L_orth, linear | "
              "(c) separate, DO merge | interference (a) → (b) | A overlap (a) → (b) |",
              "|---|---|---|---|---|---|---|"]
    for pair, row in r["composition"].items():
        i = r["interference"][pair]["cross_normalised_mean"]
        o = r["interference"][pair]["row_space_overlap_mean"]
        lines.append(f"| {pair} | {pct(row['base_both'])} | "
                     f"{pct(row['a_separate_linear']['both'])} | "
                     f"{pct(row['b_joint_orth_linear']['both'])} | "
                     f"{pct(row['c_separate_do']['both'])} | "
                     f"{i['a_separate']:.3f} → {i['b_joint_orth']:.3f} | "
                     f"{o['a_separate']:.2f} → {o['b_joint_orth']:.2f} |")
    controls = {p: v["b0_joint_no_orth"] for p, v in r["interference"].items()
                if "b0_joint_no_orth" in v}
    for pair, c0 in controls.items():
        lines += ["", f"λ = 0 joint control of {pair}: interference "
                  f"{c0['cross_normalised_mean']:.3f}, A overlap "
                  f"{c0['row_space_overlap_mean']:.2f}; (b) below it on "
                  f"{c0['layers_b_below_b0']} of {r['interference'][pair]['layers']} layers."]
    sub = r["subtlety"]
    lines += ["", "interference: mean over layers of ‖ΔW₁ΔW₂ᵀ‖_F / (‖ΔW₁‖_F‖ΔW₂‖_F); A overlap: "
              "‖Q₁ᵀQ₂‖²_F / r of the A row spaces (1 = the same subspace). Each "
              "characteristic's A starts from its own seed (train-lora's init_seed), alone or "
              "jointly; the λ = 0 joint control separates L_orth from joint training itself.",
              "",
              f"Subtlety slider (shipped adapter, weight α(s)/α_train, α(s) = "
              f"{sub['alpha_map']}): nodule CNR; without adapter {sub['base_cnr_mean']:.3f}", "",
              "| s | weight | CNR mean | CNR median | contrast mean |", "|---|---|---|---|---|"]
    for level, e in sub["levels"].items():
        lines.append(f"| {level} | {e['weight']:.3f} | {e['cnr_mean']:.3f} | "
                     f"{e['cnr_median']:.3f} | {e['contrast_mean']:.4f} |")
    lines += ["", f"Monotonic rise with s: {'yes' if sub['monotonic'] else 'no'}", "",
              "The slider's direction at other weights (outside its α map):", "",
              "| weight | CNR mean | contrast mean |", "|---|---|---|"]
    for weight, e in sub["weight_sweep"].items():
        lines.append(f"| {weight} | {e['cnr_mean']:.3f} | {e['contrast_mean']:.4f} |")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("lora-proof"))
    parser.add_argument("--model", type=Path, default=ROOT / "cxrkit/models/synthdit")
    parser.add_argument("--real", type=Path, action="append", required=True,
                        help="blend records of real LUNA16 nodules (repeatable; the adapters "
                             "train on the first file's)")
    parser.add_argument("--param", type=Path, required=True,
                        help="parametric blend records the adapters also train on")
    parser.add_argument("--nodules", type=int, default=64, help="generated nodules per run")
    parser.add_argument("--steps", type=int, default=200, help="train-lora steps")
    parser.add_argument("--ortho-weight", type=float, default=0.01)
    parser.add_argument("--split-seed", type=int, default=21)
    parser.add_argument("--ortho-control", action="store_true",
                        help="also train each pair jointly with lambda = 0 (the control that "
                             "separates L_orth from the initialisation in the interference)")
    parser.add_argument("--classifier-steps", type=int, default=400)
    parser.add_argument("--stop-after", choices=("train", "singles"), default=None,
                        help="train: only train the adapters; singles: everything that needs "
                             "no jointly trained adapter (painted windows are cached)")
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.nodules = min(args.steps, 4), min(args.nodules, 8)
    args.work.mkdir(parents=True, exist_ok=True)

    # 1. the patient split
    split_file = args.work / "split.json"
    real = [read_records(p) for p in args.real]
    if not split_file.is_file():
        split = split_patients([r for rs in real for r in rs], args.split_seed)
        split_file.write_text(json.dumps(split, indent=1) + "\n")
    split = json.loads(split_file.read_text())
    adapter_patients = set(split["adapter"])
    adapter_records = args.work / "adapter-real.jsonl"
    if not adapter_records.is_file():
        chosen = [r for r in real[0] if luna_patient(r) in adapter_patients]
        write_jsonl(adapter_records, chosen[:48] if args.quick else chosen)
    log(f"{len(split['adapter'])} adapter patients, {len(split['classifier'])} classifier "
        "patients")

    # 2. the study adapters
    joint = args.stop_after != "singles"
    train_adapters(args, adapter_records, joint=joint)
    if args.stop_after == "train":
        return 0

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    # 3. merges
    merges = make_merges(args) if joint else {}
    # 4. the attribute classifier
    judge, classifier = attribute_classifier(args, real, set(split["classifier"]))
    # 5./6. generation and measures
    masks_file = generation_masks(args)
    result = study(args, judge, masks_file, merges)
    if not joint:
        log("--stop-after singles: no composition; the painted windows are cached")
        return 0
    result = {"cxrkit_version": version(), "command": " ".join(sys.argv),
              "model": {"path": str(args.model), "sha256": sha(args.model /
                                                              "diffusion_pytorch_model.safetensors")},
              "split": {"seed": args.split_seed, "adapter_patients": len(split["adapter"]),
                        "classifier_patients": len(split["classifier"]),
                        "overlap": sorted(set(split["adapter"]) & set(split["classifier"])),
                        "adapter_real_records": sum(1 for _ in adapter_records.open())},
              "adapter_training": adapter_training(args),
              "classifier": classifier, **result,
              "interference": interference(args)}
    (args.work / "proof.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.work / "proof.md").write_text(markdown(result))
    sys.stdout.write(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
