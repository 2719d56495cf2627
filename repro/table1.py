"""Reproduce DiffusionXRay's Table 1 with cxrkit commands: one enhancer per source of training
pairs, each evaluated on held-out pairs of every kind and on real DRRs of LIDC-IDRI-0001.

Pair sources (the rows): ``bicubic`` (the paper's bicubic-DDPM baseline), the physics presets
``drr-like`` and ``low-dose`` (``portable`` and ``realistic`` too at full scale), ``munit``
(MUNIT-LQ), ``ddpm`` (DDPM-LQ, img2img route of arXiv 2303.06994) and ``ddpm-two-stage``
(DDPM-LQ, DiffusionXRay's two-stage route: stage 1 on DRRs, stage 2 conditioned on HQ), at every
scale. The two DDPM-LQ routes get the same number of optimizer steps (two-stage: half in each
stage), and every source's enhancer the same budget.

Steps, every one a cxrkit command (outputs under ``--work``; finished steps are skipped on a rerun):

1. HQ: NIH ChestX-ray14 radiographs, split by patient into train and test, resized to the HQ size.
2. LQ domain: real DRRs of LIDC-IDRI-0001 with varied poses, energies, detectors and crops
   (``repro/make_lq_domain.py``), and held-out test DRRs at the LQ size with the nodule box.
3. ``cxrkit train-munit`` and ``cxrkit train-ddpm-lq`` on (HQ train, LQ domain).
4. ``cxrkit degrade --scale 2`` of HQ train and test with every source: the pairs.
5. ``cxrkit train-enhance --pairs PAIRS.jsonl``: one enhancer per source, the same budget for
   each (the records are a file argument, not stdin, so every process of a launcher reads them).
6. ``cxrkit enhance`` of every test kind and of the real DRRs with every enhancer;
   ``cxrkit eval --json`` per (enhancer, kind), ``cxrkit eval --upsample bicubic`` as the baseline,
   ``cxrkit eval --report`` per enhancer (HTML with image grids).
7. No-reference measures on the real DRRs, before and after: CNR of the nodule box against a 5 px
   ring, noise σ (Immerkær), mean gradient (sharpness).
8. ``table1.md`` and ``table1.json``; ``--fail-under METRIC=VALUE`` gates (exit 8).

Gates: ``psnr``/``ssim`` (the lowest, over enhancers, of the mean on the enhancer's own test
kind), ``psnr_gain`` (lowest own-kind gain over bicubic, dB), ``cnr_ratio`` (lowest CNR
after / before on the real DRRs).

Multi-GPU: run this script itself as one process and give ``--launcher``; the training commands
then run as ``accelerate launch -m cxrkit train-…`` (each writes its model and ``run.json`` on
the main process only); degrading, enhancing, evaluating and the tables run once, here. The
number of processes must divide the batch sizes (8 for the degraders, the scale's enhancer
batch). Launched itself under several processes, the script refuses (exit 2).

Example::

    python repro/table1.py --scale small --work /tmp/table1 --fail-under psnr_gain=0
    python repro/table1.py --scale full --launcher "accelerate launch -m" --work table1-full
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CHECK_FAILED = 8


@dataclass(frozen=True)
class Scale:
    """Sizes and budgets of one run (``small`` must finish on a 2-core CPU within an hour).

    ``ddpm_steps`` is the budget of each DDPM-LQ route: img2img trains that many steps, two-stage
    ``ddpm_steps // 2`` in stage 1 and the rest in stage 2.
    """

    hq_size: int
    train_images: int
    test_images: int
    lq_domain: int
    test_drrs: int
    degrader_size: int
    degrader_crop: int
    munit_steps: int
    munit_lr: float
    ddpm_steps: int
    ddpm_lr: float
    enhance_steps: int
    enhance_crop: int
    enhance_channels: str
    enhance_batch: int
    sources: tuple[str, ...]


SCALES = {
    "tiny": Scale(128, 8, 3, 24, 2, 64, 32, 30, 1e-4, 30, 2e-4, 30, 32, "8,16", 4,
                  ("bicubic", "drr-like", "munit", "ddpm", "ddpm-two-stage")),
    "small": Scale(256, 40, 8, 120, 4, 128, 64, 2000, 2e-4, 2000, 5e-4, 1500, 96, "16,32,64", 8,
                   ("bicubic", "drr-like", "low-dose", "munit", "ddpm", "ddpm-two-stage")),
    "full": Scale(1024, 0, 20, 400, 8, 256, 128, 100000, 1e-4, 50000, 1e-4, 20000, 192,
                  "32,64,128", 16,
                  ("bicubic", "drr-like", "low-dose", "portable", "realistic", "munit", "ddpm",
                   "ddpm-two-stage")),
}
"""``train_images`` 0 means every NIH image not held out for testing."""


def run(command: list[str], *, stdin: Path | None = None, stdout: Path | None = None,
        launcher: list[str] | None = None) -> str:
    """Run one command (logged on stderr); its stdout goes to ``stdout`` or is returned."""
    # cxrkit of this interpreter (whether or not its venv is active), or under the launcher
    full = [*(launcher or [sys.executable, "-m"]), *command] if command[0] == "cxrkit" else command
    print("+", shlex.join(full), file=sys.stderr, flush=True)
    with open(stdin or os.devnull) as fin:
        done = subprocess.run(full, stdin=fin, capture_output=True, text=True)
    if done.returncode not in (0, CHECK_FAILED):
        sys.stderr.write(done.stderr[-3000:])
        raise SystemExit(f"failed ({done.returncode}): {shlex.join(full)}")
    if stdout is not None:
        stdout.parent.mkdir(parents=True, exist_ok=True)
        stdout.write_text(done.stdout)
    return done.stdout


def finished(model: Path) -> bool:
    """A training step is done when its model folder holds a run that was not stopped early
    (one stopped by SIGTERM, say, is trained again)."""
    from cxrkit.train import run_finished

    return run_finished(model)


def prepare_hq(work: Path, scale: Scale, seed: int) -> tuple[Path, Path]:
    """HQ train/test folders: NIH images split by patient, resized to ``hq_size`` (TIFF)."""
    import numpy as np

    from cxrkit.diffusion.training import split_by_patient
    from cxrkit.io import Radiograph, read_radiograph, write_radiograph
    from cxrkit.munit import resize

    train_dir, test_dir = work / "hq" / "train", work / "hq" / "test"
    if (work / "hq" / "done").exists():
        return train_dir, test_dir
    paths = sorted((DATA / "nih-cxr14" / "images").glob("*.png"))
    fraction = max(scale.test_images / len(paths), 0.01)
    train_idx, test_idx = split_by_patient(paths, fraction, seed=seed)
    train_idx = train_idx[: scale.train_images or None]
    for folder, idx in ((train_dir, train_idx), (test_dir, test_idx[: scale.test_images])):
        folder.mkdir(parents=True, exist_ok=True)
        for i in idx:
            image = read_radiograph(paths[i])
            pixels = resize(image.pixels, (scale.hq_size, scale.hq_size))
            pitch = 0.143 * 3000 / scale.hq_size  # NIH: ~0.143 mm at 3000 px → 0.35 mm at 1024
            write_radiograph(folder / f"{paths[i].stem}.tiff",
                             Radiograph(np.asarray(pixels, np.float32), (pitch, pitch), "display"),
                             record={"id": paths[i].stem, "source": str(paths[i])})
    (work / "hq" / "done").write_text("")
    return train_dir, test_dir


def lq_domain(work: Path, scale: Scale) -> tuple[Path, Path]:
    """The LQ domain (256² DRRs) and the test DRRs (at the LQ size, with the nodule box)."""
    script = REPO / "repro" / "make_lq_domain.py"
    domain, test = work / "lq-domain", work / "drr-test"
    ct = DATA / "lidc-idri-0001"
    if not (domain / "records.jsonl").exists():
        run([sys.executable, str(script), str(ct), "--count", str(scale.lq_domain), "-o",
             str(domain)])
    if not (test / "records.jsonl").exists():
        run([sys.executable, str(script), str(ct), "--count", str(scale.test_drrs), "--seed", "1",
             "--size", str(scale.hq_size // 2), "-o", str(test)])
    return domain / "records.jsonl", test / "records.jsonl"


def train_degraders(work: Path, scale: Scale, hq_train: Path, lq: Path, seed: int,
                    launcher: list[str]) -> dict[str, list[str]]:
    """Train the learned degraders; returns the ``cxrkit degrade`` options of every source."""
    common = ["--image-size", str(scale.degrader_size), "--crop", str(scale.degrader_crop),
              "--seed", str(seed), "--checkpoint-every", "0"]
    models = {"munit": work / "models" / "munit", "ddpm": work / "models" / "ddpm",
              "ddpm-two-stage": work / "models" / "ddpm-two-stage"}
    if "munit" in scale.sources and not finished(models["munit"]):
        run(["cxrkit", "train-munit", "--hq", str(hq_train), "--lq", str(lq), *common,
             "--steps", str(scale.munit_steps), "--lr", str(scale.munit_lr),
             "--validate-every", "0",
             "-o", str(models["munit"])], launcher=launcher)
    if "ddpm" in scale.sources and not finished(models["ddpm"]):
        run(["cxrkit", "train-ddpm-lq", "--lq", str(lq), *common,
             "--steps", str(scale.ddpm_steps), "--lr", str(scale.ddpm_lr), "--validate-every", "0",
             "-o", str(models["ddpm"])], launcher=launcher)
    if "ddpm-two-stage" in scale.sources and not finished(models["ddpm-two-stage"]):
        stage1 = scale.ddpm_steps // 2
        run(["cxrkit", "train-ddpm-lq", "--route", "two-stage", "--lq", str(lq), "--hq",
             str(hq_train), *common, "--steps", str(stage1), "--stage2-steps",
             str(scale.ddpm_steps - stage1), "--lr", str(scale.ddpm_lr), "--validate-every", "0",
             "-o", str(models["ddpm-two-stage"])], launcher=launcher)
    options = {}
    for source in scale.sources:
        if source in models:
            method = "munit" if source == "munit" else "ddpm"
            options[source] = ["--method", method, "--model", str(models[source])]
        else:
            options[source] = ["--preset", source]
    return options


def make_pairs(work: Path, sources: dict[str, list[str]], hq: dict[str, Path],
               seed: int) -> dict[tuple[str, str], Path]:
    """``cxrkit degrade --scale 2`` of HQ train and test by every source: pair records."""
    pairs = {}
    for source, options in sources.items():
        for split, folder in hq.items():
            records = work / "pairs" / source / f"{split}.jsonl"
            if not records.exists():
                run(["cxrkit", "degrade", str(folder), "--scale", "2", *options, "--seed",
                     str(seed), "-o", str(records.with_suffix(""))], stdout=records)
            pairs[(source, split)] = records
    return pairs


def train_enhancers(work: Path, scale: Scale, pairs: dict[tuple[str, str], Path], seed: int,
                    launcher: list[str]) -> dict[str, Path]:
    """One ``cxrkit train-enhance --pairs`` per source, all with the same budget."""
    models = {}
    for source in scale.sources:
        out = work / "enhancers" / source
        if not finished(out):
            run(["cxrkit", "train-enhance", str(pairs[(source, "train")]), "--pairs", "--scale",
                 "2", "--crop", str(scale.enhance_crop), "--steps", str(scale.enhance_steps),
                 "--batch-size", str(scale.enhance_batch), "--channels", scale.enhance_channels,
                 "--checkpoint-every", "0", "--validate-every", "0", "--val-crop", "0",
                 "--val-count", "4", "--seed", str(seed), "-o", str(out)], launcher=launcher)
        models[source] = out
    return models


def evaluate(work: Path, scale: Scale, enhancers: dict[str, Path],
             pairs: dict[tuple[str, str], Path], drrs: Path, seed: int) -> dict[str, Any]:
    """PSNR/SSIM of every (enhancer, test kind), bicubic baselines, and the DRR measures."""
    table: dict[str, Any] = {"bicubic-upsampling": {}, "enhancers": {}}
    for kind in scale.sources:
        table["bicubic-upsampling"][kind] = _metrics(run(
            ["cxrkit", "eval", "--json", "--upsample", "bicubic", "--bootstrap", "0",
             str(pairs[(kind, "test")])]))
    for source, model in enhancers.items():
        row: dict[str, Any] = {}
        for kind in scale.sources:
            out = work / "enhanced" / source / f"{kind}.jsonl"
            if not out.exists():
                run(["cxrkit", "enhance", "--model", str(model), "--seed", str(seed), "-o",
                     str(out.with_suffix(""))], stdin=pairs[(kind, "test")], stdout=out)
            row[kind] = _metrics(run(["cxrkit", "eval", "--json", "--bootstrap", "0",
                                      str(out)]))
        report = work / "reports" / f"{source}.html"
        if not report.exists():
            report.parent.mkdir(parents=True, exist_ok=True)
            run(["cxrkit", "eval", "--json", "--bootstrap", "0", "--report", str(report),
                 *[str(work / "enhanced" / source / f"{k}.jsonl") for k in scale.sources]])
        out = work / "enhanced" / source / "drr.jsonl"
        if not out.exists():
            run(["cxrkit", "enhance", "--model", str(model), "--seed", str(seed), "-o",
                 str(out.with_suffix(""))], stdin=drrs, stdout=out)
        row["real-drr"] = drr_measures(drrs, out)
        table["enhancers"][source] = row
    return table


def _metrics(text: str) -> dict[str, float]:
    image = json.loads(text)["image_quality"]
    return {k: round(float(image[k]["mean"]), 4) for k in ("psnr", "ssim")
            if isinstance(image.get(k), dict)}


def drr_measures(before: Path, after: Path) -> dict[str, float]:
    """Mean no-reference measures of the test DRRs before and after enhancement (nodule CNR
    against a 5 px ring, noise σ, mean gradient); the nodule box is scaled with the image."""
    import numpy as np

    from cxrkit.io import read_radiograph
    from cxrkit.metrics.records import no_reference_quality

    rows = []
    inputs = {r["id"]: r for r in map(json.loads, before.read_text().splitlines())}
    for record in map(json.loads, after.read_text().splitlines()):
        lq = read_radiograph(inputs[record["id"]]["path"]).pixels
        hq = read_radiograph(record["path"]).pixels
        roi = np.asarray(inputs[record["id"]]["roi"])
        ratio = hq.shape[0] / lq.shape[0]
        rows.append((no_reference_quality(lq, list(roi)),
                     no_reference_quality(hq, list(roi * ratio))))
    out = {}
    for key in ("cnr", "noise_sigma", "mean_gradient"):
        out[f"{key}_before"] = round(float(np.mean([b[key] for b, _ in rows])), 5)
        out[f"{key}_after"] = round(float(np.mean([a[key] for _, a in rows])), 5)
    out["cnr_ratio"] = round(out["cnr_after"] / out["cnr_before"], 4)
    return out


def markdown(table: dict[str, Any], scale_name: str, sources: tuple[str, ...]) -> str:
    """Table 1 as markdown: PSNR / SSIM per (training pairs, test pairs), DRR measures."""
    head = ["training pairs ↓ / test pairs →", *sources,
            "real DRR CNR before→after", "noise σ before→after", "gradient before→after"]
    lines = [f"# Table 1 reproduced ({scale_name} scale)", "",
             "PSNR dB / SSIM on held-out pairs (×2 super-resolution); no-reference measures on "
             "real DRRs of LIDC-IDRI-0001.", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]

    def cell(m: dict[str, float]) -> str:
        return f"{m.get('psnr', float('nan')):.2f} / {m.get('ssim', float('nan')):.3f}"

    base = table["bicubic-upsampling"]
    lines.append("| bicubic upsampling (no model) | "
                 + " | ".join(cell(base[k]) for k in sources) + " | | | |")
    for source, row in table["enhancers"].items():
        d = row["real-drr"]
        lines.append(
            f"| enhancer trained on {source} | " + " | ".join(cell(row[k]) for k in sources)
            + f" | {d['cnr_before']:.2f}→{d['cnr_after']:.2f}"
            + f" | {d['noise_sigma_before']:.4f}→{d['noise_sigma_after']:.4f}"
            + f" | {d['mean_gradient_before']:.4f}→{d['mean_gradient_after']:.4f} |")
    return "\n".join(lines) + "\n"


def gates(table: dict[str, Any], thresholds: dict[str, float]) -> list[str]:
    """The failed ``--fail-under`` gates (see the module docstring)."""
    values: dict[str, float] = {}
    rows = table["enhancers"]
    own = {s: r[s] for s, r in rows.items() if s in r}
    if own:
        values["psnr"] = min(m["psnr"] for m in own.values())
        values["ssim"] = min(m["ssim"] for m in own.values())
        values["psnr_gain"] = min(m["psnr"] - table["bicubic-upsampling"][s]["psnr"]
                                  for s, m in own.items())
    values["cnr_ratio"] = min(r["real-drr"]["cnr_ratio"] for r in rows.values())
    failed = []
    for name, floor in thresholds.items():
        if name not in values:
            failed.append(f"{name}: unknown gate (use {', '.join(values)})")
        elif not values[name] >= floor:
            failed.append(f"{name} = {values[name]:.4g} < {floor:g}")
    return failed


def main(argv: list[str] | None = None) -> int:
    """Run the recipe; see ``--help``."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="small",
                        help="; ".join(f"{k}: {', '.join(v.sources)}" for k, v in SCALES.items()))
    parser.add_argument("--work", type=Path, default=Path("table1-work"),
                        help="folder of every intermediate and of table1.md/.json, reports/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fail-under", action="append", default=[], metavar="GATE=VALUE",
                        help="exit 8 when GATE (psnr, ssim, psnr_gain, cnr_ratio) < VALUE")
    parser.add_argument("--launcher", default="",
                        help="prefix of the training commands, e.g. 'accelerate launch -m' "
                             "(then the commands run as 'accelerate launch -m cxrkit …'); "
                             "default: this Python's 'python -m cxrkit'")
    args = parser.parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        parser.error("run this script as one process; give --launcher 'accelerate launch -m' "
                     "to run the training commands on several")
    thresholds = {k: float(v) for k, v in (g.split("=", 1) for g in args.fail_under)}
    scale = SCALES[args.scale]
    launcher = shlex.split(args.launcher)
    began = time.monotonic()
    work = args.work
    hq_train, hq_test = prepare_hq(work, scale, args.seed)
    lq, drrs = lq_domain(work, scale)
    sources = train_degraders(work, scale, hq_train, lq, args.seed, launcher)
    pairs = make_pairs(work, sources, {"train": hq_train, "test": hq_test}, args.seed)
    enhancers = train_enhancers(work, scale, pairs, args.seed, launcher)
    table = evaluate(work, scale, enhancers, pairs, drrs, args.seed)
    table.update(scale=args.scale, settings=asdict(scale), seed=args.seed,
                 seconds=round(time.monotonic() - began, 1))
    (work / "table1.json").write_text(json.dumps(table, indent=2) + "\n")
    (work / "table1.md").write_text(markdown(table, args.scale, scale.sources))
    print((work / "table1.md").read_text())
    failed = gates(table, thresholds)
    for line in failed:
        print(f"table1: check failed: {line}", file=sys.stderr)
    return CHECK_FAILED if failed else 0


if __name__ == "__main__":
    sys.exit(main())
