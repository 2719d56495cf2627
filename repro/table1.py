"""Reproduce DiffusionXRay's Table 1 with cxrkit commands: one enhancer per source of training
pairs, each evaluated on held-out pairs of every kind and on real DRRs of LIDC-IDRI-0001.

Pair sources (the rows): ``bicubic`` (the paper's bicubic-DDPM baseline), the physics presets
``drr-like`` and ``low-dose`` (``portable`` and ``realistic`` too at full scale), ``munit``
(MUNIT-LQ; ``munit-tone`` at full scale, and at small scale when ``--sources`` names it: the
same with cxrkit's tone-keeping term, ``train-munit --tone-weight``, so translations keep the
HQ's local brightness), ``ddpm``
(DDPM-LQ, img2img route of arXiv 2303.06994) and ``ddpm-two-stage``
(DDPM-LQ, DiffusionXRay's two-stage route: stage 1 on DRRs, stage 2 conditioned on HQ), at every
scale. Every source's enhancer gets the same budget. The DDPM-LQ routes get the same number of
optimizer steps at full scale (two-stage: half in each stage); at small scale two-stage's stage 2
gets 4000 steps to img2img's 2000 (stage 1: 1000), because below that its samples keep the HQ's
fine texture instead of taking the DRRs' (held-out ``hf_ratio`` 1.82, 1.76, 1.57, 1.47 after
1000 … 4000 stage-2 steps, HQ 1.59, DRRs 1).

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
8. The texture of each source's test LQ images against the real test DRRs' (high-frequency
   energy and noise σ ratios; 1 is DRR-like, the ``bicubic`` source's row is the HQ domain's):
   whether a degrader moves radiographs toward the LQ domain.
9. ``table1.md`` and ``table1.json``; ``--fail-under METRIC=VALUE`` gates (exit 8).

Parallel steps: each row's chain (its degrader, its pairs, its enhancer) is independent of the
others', so ``--jobs N`` runs N chains at once, learned degraders first, each command with
``OMP_NUM_THREADS`` = cores // N; then the evaluations run N at once. The recipe's models are
small enough that one core trains them about as fast as two (measured on this 2-core CPU:
train-enhance 0.169 s/step on one thread, 0.166 on two; train-munit 0.560 and 0.567), so two
jobs on two cores come close to halving the time. The default is one job per core (at most one
per source), or one with ``--launcher``.

Gates: ``psnr``/``ssim`` (the lowest, over enhancers, of the mean on the enhancer's own test
kind), ``psnr_gain`` (lowest own-kind gain over bicubic, dB), ``cnr_ratio`` (lowest CNR
after / before on the real DRRs); ``GATE@SOURCE`` gates one enhancer (``psnr_gain@drr-like``).
At small scale some enhancers lose to bicubic on their own kind (see the README), so the
example gates the rows that should gain.

Multi-GPU: run this script itself as one process and give ``--launcher``; the training commands
then run as ``accelerate launch -m cxrkit train-…`` (each writes its model and ``run.json`` on
the main process only); degrading, enhancing, evaluating and the tables run once, here. The
number of processes must divide the batch sizes (8 for the degraders, the scale's enhancer
batch). Launched itself under several processes, the script refuses (exit 2).

Example::

    python repro/table1.py --scale small --work /tmp/table1 --jobs 2 \
        --fail-under psnr_gain@drr-like=5 --fail-under psnr_gain@ddpm-two-stage=5
    python repro/table1.py --scale full --launcher "accelerate launch -m" --work table1-full
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CHECK_FAILED = 8


@dataclass(frozen=True)
class Scale:
    """Sizes and budgets of one run (``small`` must finish on a 2-core CPU within an hour).

    ``ddpm_steps`` is the img2img DDPM-LQ route's budget; ``two_stage_steps`` the two-stage
    route's (stage 1, stage 2).
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
    two_stage_steps: tuple[int, int]
    ddpm_lr: float
    enhance_steps: int
    enhance_crop: int
    enhance_channels: str
    enhance_batch: int
    sources: tuple[str, ...]


SCALES = {
    "tiny": Scale(128, 8, 3, 24, 2, 64, 32, 30, 1e-4, 30, (15, 15), 2e-4, 30, 32, "8,16", 4,
                  ("bicubic", "drr-like", "munit", "ddpm", "ddpm-two-stage")),
    "small": Scale(256, 40, 8, 120, 4, 128, 64, 2000, 2e-4, 2000, (1000, 4000), 5e-4, 1500, 96,
                   "16,32,64", 8,
                   ("bicubic", "drr-like", "low-dose", "munit", "ddpm", "ddpm-two-stage")),
    "full": Scale(1024, 0, 20, 400, 8, 256, 128, 100000, 1e-4, 50000, (25000, 25000), 1e-4,
                  20000, 192, "32,64,128", 16,
                  ("bicubic", "drr-like", "low-dose", "portable", "realistic", "munit",
                   "munit-tone", "ddpm", "ddpm-two-stage")),
}
"""``train_images`` 0 means every NIH image not held out for testing. ``small`` leaves out
``munit-tone``, which would take it past the hour (seven rows: 69 min on this 2-core CPU);
``--sources`` adds it back."""
SOURCES = tuple(dict.fromkeys(s for scale in SCALES.values() for s in scale.sources))
"""Every pair source the recipe knows (``--sources`` picks among them)."""


T = TypeVar("T")
_running: set[subprocess.Popen[str]] = set()
_lock = threading.Lock()
_stopping = threading.Event()
_threads: int | None = None
"""``OMP_NUM_THREADS`` of every command (set by ``--jobs``; None: inherited)."""


def run(command: list[str], *, stdin: Path | None = None, stdout: Path | None = None,
        launcher: list[str] | None = None) -> str:
    """Run one command (logged on stderr); its stdout goes to ``stdout`` or is returned."""
    # cxrkit of this interpreter (whether or not its venv is active), or under the launcher
    full = [*(launcher or [sys.executable, "-m"]), *command] if command[0] == "cxrkit" else command
    env = {**os.environ, "OMP_NUM_THREADS": str(_threads)} if _threads else None
    with open(stdin or os.devnull) as fin:
        with _lock:
            if _stopping.is_set():
                raise SystemExit(f"not started (another step failed): {shlex.join(full)}")
            print("+", shlex.join(full), file=sys.stderr, flush=True)
            proc = subprocess.Popen(full, stdin=fin, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env)
            _running.add(proc)
        try:
            out, err = proc.communicate()
        finally:
            with _lock:
                _running.discard(proc)
    if proc.returncode not in (0, CHECK_FAILED):
        sys.stderr.write(err[-3000:])
        raise SystemExit(f"failed ({proc.returncode}): {shlex.join(full)}")
    if stdout is not None:
        stdout.parent.mkdir(parents=True, exist_ok=True)
        stdout.write_text(out)
    return out


def in_parallel(tasks: list[Callable[[], T]], jobs: int) -> list[T]:
    """Run ``tasks`` on ``jobs`` threads (started in list order) and return their results in
    that order. When one fails, the pending ones are dropped, the running commands get SIGTERM
    (a training command then checkpoints and stops, and a rerun resumes it) and no new command
    starts; then the first failure is raised."""
    if jobs <= 1:
        return [task() for task in tasks]
    with ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(task) for task in tasks]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f in done and f.exception() is not None), None)
        if failed is not None:
            _stopping.set()
            for future in futures:
                future.cancel()
            with _lock:
                for proc in _running:
                    proc.send_signal(signal.SIGTERM)
            wait(futures)
            _stopping.clear()
            raise failed.exception()  # type: ignore[misc]
        return [f.result() for f in futures]


def finished(model: Path) -> bool:
    """A training step is done when its model folder holds a run that was not stopped early
    (one stopped by SIGTERM, say, is trained again)."""
    from cxrkit.train import run_finished

    return run_finished(model)


def resume(model: Path) -> list[str]:
    """``--resume latest`` where an unfinished run left a checkpoint in ``model``."""
    return ["--resume", "latest"] if any(model.glob("**/checkpoint-*/trainer_state.json")) \
        else []


def prepare_hq(work: Path, scale: Scale, seed: int) -> tuple[Path, Path]:
    """HQ train/test folders: NIH images split by patient, resized to ``hq_size`` (TIFF)."""
    import numpy as np

    from cxrkit.data.images import resize
    from cxrkit.data.splits import split_by_patient
    from cxrkit.io import Radiograph, read_radiograph, write_radiograph

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


def lq_domain(work: Path, scale: Scale, jobs: int) -> tuple[Path, Path]:
    """The LQ domain (256² DRRs) and the test DRRs (at the LQ size, with the nodule box)."""
    script = REPO / "repro" / "make_lq_domain.py"
    domain, test = work / "lq-domain", work / "drr-test"
    ct = DATA / "lidc-idri-0001"
    if not (domain / "records.jsonl").exists():
        run([sys.executable, str(script), str(ct), "--count", str(scale.lq_domain), "-o",
             str(domain), "--jobs", str(jobs)])
    if not (test / "records.jsonl").exists():
        run([sys.executable, str(script), str(ct), "--count", str(scale.test_drrs), "--seed", "1",
             "--size", str(scale.hq_size // 2), "-o", str(test), "--jobs", str(jobs)])
    return domain / "records.jsonl", test / "records.jsonl"


LEARNED = ("ddpm-two-stage", "munit", "munit-tone", "ddpm")
"""The learned pair sources, longest training first (``--jobs`` starts them first)."""
TONE_WEIGHT = 30.0
"""``train-munit --tone-weight`` of the ``munit-tone`` source (on the synthetic domains of
tests/test_munit.py, 30 keeps the brightness and moves the fine texture most of the way: 10
let the brightness move a quarter of the way and made the texture 3× too strong, 100 kept the
texture from moving)."""


def train_degrader(work: Path, scale: Scale, source: str, hq_train: Path, lq: Path, seed: int,
                   launcher: list[str]) -> list[str]:
    """Train ``source``'s degrader if it is a learned one; returns its ``cxrkit degrade``
    options."""
    if source not in LEARNED:
        return ["--preset", source]
    model = work / "models" / source
    common = ["--image-size", str(scale.degrader_size), "--crop", str(scale.degrader_crop),
              "--seed", str(seed), "--checkpoint-every", "0", "--validate-every", "0",
              "-o", str(model), *resume(model)]
    if source in ("munit", "munit-tone"):
        command = ["train-munit", "--hq", str(hq_train), "--lq", str(lq), "--steps",
                   str(scale.munit_steps), "--lr", str(scale.munit_lr)]
        if source == "munit-tone":
            command += ["--tone-weight", str(TONE_WEIGHT)]
    elif source == "ddpm":
        command = ["train-ddpm-lq", "--lq", str(lq), "--steps", str(scale.ddpm_steps), "--lr",
                   str(scale.ddpm_lr)]
    else:
        stage1, stage2 = scale.two_stage_steps
        command = ["train-ddpm-lq", "--route", "two-stage", "--lq", str(lq), "--hq",
                   str(hq_train), "--steps", str(stage1), "--stage2-steps", str(stage2),
                   "--lr", str(scale.ddpm_lr)]
    if not finished(model):
        run(["cxrkit", *command, *common], launcher=launcher)
    return ["--method", "munit" if source.startswith("munit") else "ddpm", "--model", str(model)]


def make_pairs(work: Path, source: str, options: list[str], hq: dict[str, Path],
               seed: int) -> dict[str, Path]:
    """``cxrkit degrade --scale 2`` of HQ train and test by ``source``: ``split → records``."""
    pairs = {}
    for split, folder in hq.items():
        records = work / "pairs" / source / f"{split}.jsonl"
        if not records.exists():
            run(["cxrkit", "degrade", str(folder), "--scale", "2", *options, "--seed",
                 str(seed), "-o", str(records.with_suffix(""))], stdout=records)
        pairs[split] = records
    return pairs


def train_enhancer(work: Path, scale: Scale, source: str, train_pairs: Path, seed: int,
                   launcher: list[str]) -> Path:
    """``cxrkit train-enhance --pairs`` on ``source``'s pairs, with every source's budget."""
    out = work / "enhancers" / source
    if not finished(out):
        run(["cxrkit", "train-enhance", str(train_pairs), "--pairs", "--scale", "2", "--crop",
             str(scale.enhance_crop), "--steps", str(scale.enhance_steps), "--batch-size",
             str(scale.enhance_batch), "--channels", scale.enhance_channels,
             "--checkpoint-every", "0", "--validate-every", "0", "--val-crop", "0",
             "--val-count", "4", "--seed", str(seed), "-o", str(out), *resume(out)],
            launcher=launcher)
    return out


def source_chain(work: Path, scale: Scale, source: str, hq: dict[str, Path], lq: Path,
                 seed: int, launcher: list[str]) -> tuple[dict[str, Path], Path]:
    """One row's training: its degrader (if learned), its pairs, its enhancer."""
    options = train_degrader(work, scale, source, hq["train"], lq, seed, launcher)
    pairs = make_pairs(work, source, options, hq, seed)
    return pairs, train_enhancer(work, scale, source, pairs["train"], seed, launcher)


def evaluate_enhancer(work: Path, scale: Scale, source: str, model: Path,
                      pairs: dict[str, dict[str, Path]], drrs: Path, seed: int,
                      steps: int | None = None) -> dict[str, Any]:
    """One row of the table: ``source``'s enhancer on the test pairs of every kind and on the
    real DRRs, and its HTML report; ``steps`` sampling steps (None: the model's default), whose
    outputs go to ``enhanced-steps<N>/`` and ``reports-steps<N>/``."""
    tag = f"-steps{steps}" if steps else ""
    enhanced, sampling = work / f"enhanced{tag}" / source, ["--steps", str(steps)] if steps else []
    command = ["cxrkit", "enhance", "--model", str(model), *sampling, "--seed", str(seed), "-o"]
    row: dict[str, Any] = {}
    for kind in scale.sources:
        out = enhanced / f"{kind}.jsonl"
        if not out.exists():
            run([*command, str(out.with_suffix(""))], stdin=pairs[kind]["test"], stdout=out)
        row[kind] = _metrics(run(["cxrkit", "eval", "--json", "--bootstrap", "0", str(out)]))
    report = work / f"reports{tag}" / f"{source}.html"
    if not report.exists():
        report.parent.mkdir(parents=True, exist_ok=True)
        run(["cxrkit", "eval", "--json", "--bootstrap", "0", "--report", str(report),
             *[str(enhanced / f"{k}.jsonl") for k in scale.sources]])
    out = enhanced / "drr.jsonl"
    if not out.exists():
        run([*command, str(out.with_suffix(""))], stdin=drrs, stdout=out)
    row["real-drr"] = drr_measures(drrs, out)
    return row


def bicubic_baseline(test_pairs: Path) -> dict[str, float]:
    """PSNR/SSIM of bicubic upsampling on one kind's test pairs."""
    return _metrics(run(["cxrkit", "eval", "--json", "--upsample", "bicubic", "--bootstrap", "0",
                         str(test_pairs)]))


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


def texture(records: Path) -> tuple[float, float]:
    """Mean high-frequency energy (:func:`cxrkit.ddpm_lq.high_frequency_energy`, the squared
    Laplacian) and mean noise σ (Immerkær) of the display images of ``records``."""
    import numpy as np

    from cxrkit.data.images import load_display
    from cxrkit.ddpm_lq import high_frequency_energy
    from cxrkit.metrics import noise_sigma

    paths = [json.loads(line)["path"] for line in records.read_text().splitlines()]
    images = load_display(paths)
    return (float(np.mean([high_frequency_energy(im) for im in images])),
            float(np.mean([noise_sigma(im) for im in images])))


def lq_texture(test_pairs: Path, drr_texture: tuple[float, float]) -> dict[str, float]:
    """How DRR-like one source's test LQ images are: their :func:`texture` over the real test
    DRRs' (``drr_texture``, the same size). 1 is the DRRs' texture; the ``bicubic`` source's LQ
    are downsampled HQ, so its ratios are the HQ domain's."""
    (hf, sigma), (hf_drr, sigma_drr) = texture(test_pairs), drr_texture
    return {"hf_ratio": round(hf / hf_drr, 4), "noise_ratio": round(sigma / sigma_drr, 4)}


def markdown(table: dict[str, Any], scale_name: str, sources: tuple[str, ...],
             steps: int | None = None) -> str:
    """Table 1 as markdown: PSNR / SSIM per (training pairs, test pairs), DRR measures."""
    head = ["training pairs ↓ / test pairs →", *sources,
            "real DRR CNR before→after", "noise σ before→after", "gradient before→after"]
    lines = [f"# Table 1 reproduced ({scale_name} scale)", "",
             "PSNR dB / SSIM on held-out pairs (×2 super-resolution); no-reference measures on "
             "real DRRs of LIDC-IDRI-0001; enhancers sampled with "
             + (f"{steps} DDIM step(s)." if steps else "their default steps."), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

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
    texture = table.get("lq_texture")
    if texture:
        lines += ["", "Texture of each source's test LQ images over the real DRRs' (1: DRR-like; "
                  "the bicubic source's LQ are downsampled HQ, so its row is the HQ domain's).",
                  "", "| pair source | high-frequency energy | noise σ |", "|---|---|---|"]
        lines += [f"| {s} | {t['hf_ratio']:.2f} | {t['noise_ratio']:.2f} |"
                  for s, t in texture.items()]
    return "\n".join(lines) + "\n"


def gates(table: dict[str, Any], thresholds: dict[str, float]) -> list[str]:
    """The failed ``--fail-under`` gates (see the module docstring).

    A gate name alone takes the lowest value over the enhancers; ``NAME@SOURCE`` takes the
    enhancer trained on SOURCE's pairs (``psnr_gain@ddpm-two-stage``).
    """
    per_source: dict[str, dict[str, float]] = {}
    for s, r in table["enhancers"].items():
        v = {"cnr_ratio": r["real-drr"]["cnr_ratio"]}
        if s in r:  # its own test kind
            v |= {"psnr": r[s]["psnr"], "ssim": r[s]["ssim"],
                  "psnr_gain": r[s]["psnr"] - table["bicubic-upsampling"][s]["psnr"]}
        per_source[s] = v
    values: dict[str, float] = {}
    for s, v in per_source.items():
        for name, x in v.items():
            values[name] = min(values.get(name, x), x)
            values[f"{name}@{s}"] = x
    failed = []
    for name, floor in thresholds.items():
        if name not in values:
            known = sorted({n.split("@")[0] for n in values})
            failed.append(f"{name}: unknown gate (use {', '.join(known)}, each optionally "
                          f"@SOURCE: {', '.join(per_source)})")
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
    parser.add_argument("--sources", default=None, metavar="LIST",
                        help="comma-separated pair sources (the rows), instead of the scale's; "
                             f"any of {', '.join(SOURCES)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fail-under", action="append", default=[], metavar="GATE=VALUE",
                        help="exit 8 when GATE (psnr, ssim, psnr_gain, cnr_ratio: the lowest over "
                             "the enhancers; GATE@SOURCE: the one trained on SOURCE's pairs) "
                             "< VALUE")
    parser.add_argument("--launcher", default="",
                        help="prefix of the training commands, e.g. 'accelerate launch -m' "
                             "(then the commands run as 'accelerate launch -m cxrkit …'); "
                             "default: this Python's 'python -m cxrkit'")
    parser.add_argument("--jobs", type=int, default=None,
                        help="commands at once, sharing the CPU cores (each gets "
                             "OMP_NUM_THREADS = cores // jobs; small models train about as fast "
                             "on one core as on two, so this is up to N× faster); default: "
                             "the cores (up to one per pair source), or 1 with --launcher")
    parser.add_argument("--enhance-steps", type=int, default=None, metavar="N",
                        help="sampling steps of every enhancer at evaluation (default: the "
                             "model's, 10 DDIM steps); 1 gives the one-step estimate of the "
                             "clean image, which trades sampled texture for PSNR (outputs under "
                             "enhanced-stepsN/, trained models reused)")
    args = parser.parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        parser.error("run this script as one process; give --launcher 'accelerate launch -m' "
                     "to run the training commands on several")
    thresholds = {k: float(v) for k, v in (g.split("=", 1) for g in args.fail_under)}
    scale = SCALES[args.scale]
    if args.sources is not None:
        sources = tuple(dict.fromkeys(s.strip() for s in args.sources.split(",") if s.strip()))
        unknown = [s for s in sources if s not in SOURCES]
        if unknown or not sources:
            what = f"unknown source {', '.join(unknown)}" if unknown else "no source given"
            parser.error(f"--sources: {what} (use {', '.join(SOURCES)})")
        scale = replace(scale, sources=sources)
    launcher = shlex.split(args.launcher)
    cores = len(os.sched_getaffinity(0))
    jobs = max(1, args.jobs or (1 if launcher else min(cores, len(scale.sources))))
    global _threads
    _threads = max(1, cores // jobs) if jobs > 1 else None
    began = time.monotonic()
    work = args.work
    hq_train, hq_test = prepare_hq(work, scale, args.seed)
    hq = {"train": hq_train, "test": hq_test}
    lq, drrs = lq_domain(work, scale, jobs)
    # learned sources first: the longest chains start while the presets fill the other jobs
    order = sorted(scale.sources, key=lambda s: LEARNED.index(s) if s in LEARNED else 99)
    chains = in_parallel([partial(source_chain, work, scale, s, hq, lq, args.seed, launcher)
                          for s in order], jobs)
    pairs = {s: p for s, (p, _) in zip(order, chains, strict=True)}
    enhancers = {s: m for s, (_, m) in zip(order, chains, strict=True)}
    base = in_parallel([partial(bicubic_baseline, pairs[k]["test"]) for k in scale.sources], jobs)
    rows = in_parallel([partial(evaluate_enhancer, work, scale, s, enhancers[s], pairs, drrs,
                                args.seed, args.enhance_steps) for s in scale.sources], jobs)
    drr_texture = texture(drrs)
    textures = in_parallel([partial(lq_texture, pairs[k]["test"], drr_texture)
                            for k in scale.sources], jobs)
    table: dict[str, Any] = {"bicubic-upsampling": dict(zip(scale.sources, base, strict=True)),
                             "enhancers": dict(zip(scale.sources, rows, strict=True)),
                             "lq_texture": dict(zip(scale.sources, textures, strict=True))}
    table.update(scale=args.scale, settings=asdict(scale), seed=args.seed, jobs=jobs,
                 sampling_steps=args.enhance_steps,
                 seconds=round(time.monotonic() - began, 1))
    name = f"table1-steps{args.enhance_steps}" if args.enhance_steps else "table1"
    (work / f"{name}.json").write_text(json.dumps(table, indent=2) + "\n")
    (work / f"{name}.md").write_text(markdown(table, args.scale, scale.sources,
                                              args.enhance_steps))
    print((work / f"{name}.md").read_text())
    failed = gates(table, thresholds)
    for line in failed:
        print(f"table1: check failed: {line}", file=sys.stderr)
    return CHECK_FAILED if failed else 0


if __name__ == "__main__":
    sys.exit(main())
