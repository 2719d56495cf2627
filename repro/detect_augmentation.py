"""Reproduce the source's detector augmentation table with cxrkit commands: does adding
synthetic nodules to the real radiographs raise the detector's AUC and IoU?

Arms (the rows), every one trained by ``cxrkit train-detect`` with the same architecture, steps,
batch, schedule and seed (the schedule of ``repro/train_detector.sh``, the shipped detector's:
warm-up, cosine decay, weight decay 0.05, EMA):

- ``real``: the NIH ChestX-ray14 train patients' radiographs with their image-level labels only
  (``--images`` with ``--nih-labels``; "Nodule" among the findings is a positive);
- ``blend-K`` for each K of ``--k`` (0 is the ``real`` arm): the same real radiographs plus K
  synthetic nodules, ``cxrkit synth -e blend --source luna16`` into train patients' nodule-free
  radiographs with LUNA16 nodules of train LUNA16 patients, plus each background once as a
  negative (``--negatives``: the same radiograph with an empty mask, so the segmentation head
  learns "no nodule" too). The detector draws positives and negatives with probability 1/2
  each, so the count of negatives does not shift the class balance;
- ``diffusion-K`` (``--engines blend,diffusion``): the same with ``cxrkit synth -e diffusion``
  (the shipped synthesis DiT, or ``--diffusion-model DIR``, e.g. one fine-tuned with adapters).

The K synthetic positives of an arm are the first K of one pool per engine in round-robin order
over backgrounds (every background's first sample, then every second one, ...), so the arms are
nested: ``blend-500`` holds ``blend-200``'s nodules and 300 more.

Splits (seeded by ``--split-seed``, recorded in ``splits.json``):

- NIH patients, stratified by the Nodule label: ``--test-positive-fraction`` of the Nodule
  patients and ``--test-fraction`` of the others are held out (test ≈ 37 % of the images, with
  half of the 21 positives, so the held-out AUC has as many positives as the data allows);
- LUNA16 patients: ``--luna-test-fraction`` held out. Synthetic training nodules come only from
  train LUNA16 patients, held-out synthetic nodules only from test ones (``synth --where
  "patient_id=='…' or …"``: the query language of ``--where`` expresses the subset, so no
  filtered copy of the folder is needed, and every record names its selection).

Evaluation of every arm (``cxrkit detect … | cxrkit eval``):

1. held-out real radiographs (NIH test patients): image-level AUC of ``nodule_probability``
   against the NIH "Nodule" label, with a bootstrap 95 % CI (``--bootstrap``);
2. held-out synthetic nodules: ``cxrkit synth -e blend`` into the NIH test patients'
   nodule-free radiographs with LUNA16 test patients' nodules (``--synth-test-n`` per
   background) plus each background as a negative: image AUC, mean IoU of the predicted mask
   over images with a nodule, and per-characteristic AUC (calcified, border regular/irregular,
   texture homogeneous/inhomogeneous: the source's Fig. 11 table). The held-out synthetic set is
   made by the blend engine for every arm, the one yardstick all rows share.

Outputs in ``--work``: ``augmentation.md`` and ``augmentation.json`` (the table: arm, engine, K,
seed, real AUC [CI], synthetic AUC [CI], IoU, per-characteristic AUC), ``augmentation.html``
(the table, the curve of AUC against K, links to every arm's two ``cxrkit eval --report``
pages, ``reports/<arm>-seed<N>-real.html`` and ``-synth.html``),
``commands.log`` (every command with its time), ``splits.json`` (patients, data hashes).
A rerun skips every finished step (a model whose ``run.json`` says it finished, records and
evaluations already written); an interrupted training resumes from its checkpoint.

Gates (``--fail-under GATE=VALUE``, exit 8 when under): ``real_auc``, ``synth_auc``, ``iou``
and ``<characteristic>_auc`` take the best arm (mean over seeds); ``real_auc_gain`` and
``synth_auc_gain`` the best synthetic arm minus the ``real`` arm; ``GATE@ARM`` one arm
(``real_auc@blend-1000``).

Sizes: the default (``--image-px 512``, synthetic arms on 128-px windows, the real arm on whole
images, 500 steps per arm, K = 0, 200, 500, 1000) takes one to two hours on a 2-core CPU (the
real arm's whole 512² images cost about 16× a window; ``--jobs 2`` trains two arms at once on
one core each); ``--quick`` (64 px, 32-px windows, 30 steps, K = 0, 16, a handful of test
images) is a smoke run of a few minutes. Blend nodules are drawn at ``--intensity-scale 0.45``
(three times synth's estimate for these PNGs, at which most LUNA16 nodules are fainter than the
ribs; see ``repro/train_detector.sh``).

Example::

    python repro/detect_augmentation.py --work /tmp/detaug --jobs 2 \\
        --fail-under real_auc=0.55 --fail-under synth_auc=0.8
    python repro/detect_augmentation.py --quick --work /tmp/detaug-quick
    python repro/detect_augmentation.py --engines blend,diffusion --diffusion-model DIT_DIR \
        --k 0,200,500 --seeds 0,1
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime
import json
import math
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CHECK_FAILED = 8
CHARACTERISTICS = ("calcified", "border_regular", "border_irregular", "texture_homogeneous",
                   "texture_inhomogeneous")
ENGINES = ("blend", "diffusion")

T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """Sizes and budgets of one run (the same for every arm)."""

    ks: tuple[int, ...] = (0, 200, 500, 1000)
    engines: tuple[str, ...] = ("blend",)
    seeds: tuple[int, ...] = (0,)
    image_px: int = 512
    background_px: int = 512
    crop_px: int = 128
    intensity_scale: float = 0.45
    steps: int = 500
    batch_size: int = 8
    lr: float = 5e-4
    warmup_steps: int = 50
    lr_schedule: str = "cosine"
    weight_decay: float = 0.05
    arch: str = "default"
    val_fraction: float = 0.1
    synth_test_n: int = 2
    test_fraction: float = 0.35
    test_positive_fraction: float = 0.5
    luna_test_fraction: float = 0.3
    max_test_backgrounds: int = 0
    bootstrap: int = 1000
    device: str = "auto"


QUICK = Settings(ks=(0, 16), image_px=64, background_px=128, crop_px=32, steps=30, batch_size=4,
                 warmup_steps=5, synth_test_n=1, max_test_backgrounds=12, bootstrap=200)
"""``--quick``: a smoke run of the whole recipe in a few minutes (numbers mean nothing)."""


# -- commands ---------------------------------------------------------------------------------

_lock = threading.Lock()
_threads: int | None = None
"""``OMP_NUM_THREADS`` of every command (set by ``--jobs``; None: inherited)."""
_log: Path | None = None
"""``commands.log`` of the work folder."""


def run(command: list[str], *, stdout: Path | None = None) -> str:
    """Run one command (logged on stderr and in ``commands.log``); its stdout goes to ``stdout``
    (written whole, once it succeeded, so a file that exists is a finished step) or is
    returned. Exit 8 (a failed ``--fail-under``) counts as success."""
    full = [sys.executable, "-m", *command] if command[0] == "cxrkit" else command
    env = {**os.environ, "OMP_NUM_THREADS": str(_threads)} if _threads else None
    text = shlex.join(full) + (f" > {shlex.quote(str(stdout))}" if stdout else "")
    shown = shlex.join(a if len(a) <= 120 else f"{a[:60]}…({len(a)} chars)" for a in full)
    with _lock:
        print("+", shown + (f" > {stdout}" if stdout else ""), file=sys.stderr, flush=True)
        if _log is not None:
            with open(_log, "a") as fh:
                fh.write(f"{datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')} "
                         f"{text}\n")
    began = time.monotonic()
    proc = subprocess.run(full, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          env=env)
    if proc.returncode not in (0, CHECK_FAILED):
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"failed ({proc.returncode}): {text}")
    if _log is not None:
        with _lock, open(_log, "a") as fh:
            fh.write(f"#   done in {time.monotonic() - began:.1f} s\n")
    if stdout is not None:
        stdout.parent.mkdir(parents=True, exist_ok=True)
        partial = stdout.with_name(stdout.name + ".part")
        partial.write_text(proc.stdout)
        partial.replace(stdout)
    return proc.stdout


def in_parallel(tasks: Sequence[Callable[[], T]], jobs: int) -> list[T]:
    """Run ``tasks`` on ``jobs`` threads; their results in order (the first failure raised)."""
    if jobs <= 1:
        return [task() for task in tasks]
    with ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(task) for task in tasks]
        return [f.result() for f in futures]


# -- data and splits --------------------------------------------------------------------------


def nih_entries(labels: Path) -> list[Any]:
    from cxrkit.data.nih import read_labels

    return read_labels(labels)


def split_nih(entries: Sequence[Any], test_fraction: float, test_positive_fraction: float,
              seed: int) -> tuple[list[str], list[str]]:
    """``(train, test)`` image names: patients split by :func:`cxrkit.data.splits.split_groups`
    separately among those with a Nodule image (``test_positive_fraction`` held out) and the
    others (``test_fraction``), so the test set gets its share of the few positives. No patient
    is on both sides."""
    from cxrkit.data.splits import split_groups

    nodule_patients = {e.patient_id for e in entries if e.nodule}
    test: set[str] = set()
    for positive, fraction in ((True, test_positive_fraction), (False, test_fraction)):
        chosen = [e for e in entries if (e.patient_id in nodule_patients) == positive]
        if not chosen or fraction <= 0:
            continue
        _, held = split_groups([e.patient_id for e in chosen], fraction, seed=[seed, int(positive)],
                               keep_one=True)
        test |= {chosen[i].image for i in held}
    names = [e.image for e in entries]
    return [n for n in names if n not in test], [n for n in names if n in test]


def split_luna(patients: Sequence[str], fraction: float, seed: int) -> tuple[list[str],
                                                                             list[str]]:
    """``(train, test)`` LUNA16 patient ids (sorted), ``fraction`` of them held out."""
    from cxrkit.data.splits import split_groups

    distinct = sorted(set(patients))
    train, test = split_groups(distinct, fraction, seed=[seed, 16], keep_one=True)
    return [distinct[i] for i in train], [distinct[i] for i in test]


def where_patients(patients: Sequence[str]) -> str:
    """A ``synth --where`` expression selecting the LUNA16 rows of ``patients``."""
    if not patients:
        raise ValueError("no LUNA16 patient to select")
    for p in patients:
        if "'" in p:
            raise ValueError(f"patient id with a quote: {p!r}")
    return " or ".join(f"patient_id=='{p}'" for p in sorted(patients))


def round_robin(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Synth records reordered so every background's first sample comes before any second one
    (stable within a round): the first K of the result spread over the backgrounds."""
    def key(pair: tuple[int, dict[str, Any]]) -> tuple[int, int]:
        index, record = pair
        return int((record.get("synth") or {}).get("sample", 0)), index

    return [r for _, r in sorted(enumerate(records), key=key)]


def prepare(work: Path, settings: Settings, split_seed: int, nih: Path, luna: Path
            ) -> dict[str, Any]:
    """The splits (``splits.json``), symlink folders of the NIH train/test radiographs (the
    names ``labels.csv`` lists), and the nodule-free backgrounds of each side resized to
    ``background_px`` (TIFF, 430 mm across as synth assumes for NIH PNGs)."""
    import numpy as np

    from cxrkit.data.images import resize
    from cxrkit.data.splits import files_sha256
    from cxrkit.files import file_sha256
    from cxrkit.io import Radiograph, read_radiograph, write_radiograph

    done = work / "splits.json"
    if done.exists():
        return json.loads(done.read_text())
    entries = nih_entries(nih / "labels.csv")
    images = nih / "images"
    entries = [e for e in entries if (images / e.image).is_file()]
    train, test = split_nih(entries, settings.test_fraction, settings.test_positive_fraction,
                            split_seed)
    nodule = {e.image: e.nodule for e in entries}
    patient = {e.image: e.patient_id for e in entries}
    with open(luna / "nodules.csv", newline="") as fh:
        luna_rows = list(csv.DictReader(fh))
    luna_train, luna_test = split_luna([r["patient_id"] for r in luna_rows],
                                       settings.luna_test_fraction, split_seed)
    test_backgrounds = [n for n in test if not nodule[n]]
    if settings.max_test_backgrounds:
        test_backgrounds = test_backgrounds[: settings.max_test_backgrounds]
    sides = {"train": (train, [n for n in train if not nodule[n]]), "test": (test,
                                                                           test_backgrounds)}
    for side, (names, backgrounds) in sides.items():
        folder = work / "nih" / side
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            link = folder / name
            if not link.is_symlink():
                link.symlink_to((images / name).resolve())
        bg = work / "backgrounds" / side
        bg.mkdir(parents=True, exist_ok=True)
        for name in backgrounds:
            image = read_radiograph(images / name)
            pixels = resize(image.pixels, (settings.background_px, settings.background_px))
            pitch = 430.0 / settings.background_px
            write_radiograph(bg / f"{Path(name).stem}.tiff",
                             Radiograph(np.asarray(pixels, np.float32), (pitch, pitch),
                                        "display"),
                             record={"id": Path(name).stem, "source": str(images / name)})
    luna_count = {side: sum(r["patient_id"] in set(ids) for r in luna_rows)
                  for side, ids in (("train", luna_train), ("test", luna_test))}
    info = {
        "seed": split_seed,
        "nih": {
            "labels": {"path": str(nih / "labels.csv"), "sha256": file_sha256(nih / "labels.csv")},
            "images_sha256": files_sha256([images / e.image for e in entries]),
            **{side: {"images": len(names),
                      "patients": len({patient[n] for n in names}),
                      "nodule_images": sum(nodule[n] for n in names),
                      "backgrounds": len(backgrounds),
                      "files": names}
               for side, (names, backgrounds) in sides.items()},
        },
        "luna16": {
            "nodules_csv": {"path": str(luna / "nodules.csv"),
                            "sha256": file_sha256(luna / "nodules.csv")},
            "patches_sha256": files_sha256(sorted({luna / "patches" / r[c] for r in luna_rows
                                                   for c in ("image_file", "mask_file")})),
            "train": {"patients": luna_train, "nodules": luna_count["train"]},
            "test": {"patients": luna_test, "nodules": luna_count["test"]},
        },
    }
    partial = done.with_name(done.name + ".part")
    partial.write_text(json.dumps(info, indent=1) + "\n")
    partial.replace(done)
    return info


# -- synthetic data ---------------------------------------------------------------------------


def gain(engine: str, settings: Settings) -> list[str]:
    """``--intensity-scale`` of a blend synth (the diffusion engine paints, it has no gain)."""
    return ["--intensity-scale", str(settings.intensity_scale)] if engine == "blend" else []


def synth_pool(work: Path, engine: str, count: int, splits: dict[str, Any], luna: Path,
               seed: int, diffusion_model: Path | None, settings: Settings) -> Path:
    """``count`` positives per train background by ``engine`` (round-robin order is applied
    when an arm takes its K), or an existing pool with more per background: synth's samples
    are seeded per (input, sample), so a pool's first samples are those of a smaller one and
    the arms stay nested when a later run raises the largest K."""
    pools = {int(p.stem.rsplit("-n", 1)[1]): p
             for p in (work / "synth").glob(f"{engine}-train-n*.jsonl")
             if p.stem.rsplit("-n", 1)[1].isdigit()}
    larger = [n for n in pools if n >= count]
    if larger:
        return pools[max(larger)]
    out = work / "synth" / f"{engine}-train-n{count}.jsonl"
    if not out.exists():
        extra = ["--model", str(diffusion_model)] if engine == "diffusion" and diffusion_model \
            else []
        run(["cxrkit", "synth", "-e", engine, str(work / "backgrounds" / "train"), "--source",
             "luna16", "--luna16-dir", str(luna), "--where",
             where_patients(splits["luna16"]["train"]["patients"]), "-n", str(count),
             "--seed", str(seed), *extra, *gain(engine, settings), "-o",
             str(out.with_suffix(""))], stdout=out)
    return out


def train_negatives(work: Path) -> Path:
    """Every train background once with an empty mask."""
    out = work / "synth" / "negatives-train.jsonl"
    if not out.exists():
        run(["cxrkit", "synth", "-e", "blend", str(work / "backgrounds" / "train"),
             "--negatives", "-n", "0", "-o", str(out.with_suffix(""))], stdout=out)
    return out


def synth_test(work: Path, settings: Settings, splits: dict[str, Any], luna: Path,
               seed: int) -> Path:
    """Held-out synthetic nodules: NIH test backgrounds, LUNA16 test patients, negatives."""
    out = work / "synth" / "test.jsonl"
    if not out.exists():
        run(["cxrkit", "synth", "-e", "blend", str(work / "backgrounds" / "test"), "--source",
             "luna16", "--luna16-dir", str(luna), "--where",
             where_patients(splits["luna16"]["test"]["patients"]), "-n",
             str(settings.synth_test_n), "--negatives", "--seed", str(seed + 1000),
             *gain("blend", settings), "-o", str(out.with_suffix(""))], stdout=out)
    return out


def arm_records(work: Path, engine: str, k: int, pool: Path) -> Path:
    """The first ``k`` positives of ``pool`` in round-robin order."""
    out = work / "arms" / f"{engine}-{k}.jsonl"
    if not out.exists():
        records = [json.loads(line) for line in pool.read_text().splitlines() if line.strip()]
        positives = round_robin([r for r in records if r.get("boxes")])
        if len(positives) < k:
            raise SystemExit(f"the {engine} pool has {len(positives)} positives, not {k}")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(r) + "\n" for r in positives[:k]))
    return out


# -- arms -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arm:
    """One row: ``engine`` None is the real-only arm (K = 0)."""

    engine: str | None
    k: int

    @property
    def name(self) -> str:
        return "real" if self.engine is None else f"{self.engine}-{self.k}"


def arms_of(settings: Settings) -> list[Arm]:
    """``real`` (when 0 is among the K) and every (engine, K > 0)."""
    arms = [Arm(None, 0)] if 0 in settings.ks else []
    arms += [Arm(e, k) for e in settings.engines for k in sorted(set(settings.ks)) if k > 0]
    return arms


def train_command(work: Path, settings: Settings, arm: Arm, seed: int, nih: Path,
                  records: list[Path], out: Path) -> list[str]:
    """``cxrkit train-detect`` of one arm (every arm the same budget and architecture)."""
    command = ["cxrkit", "train-detect", "--images", str(work / "nih" / "train"),
               "--nih-labels", str(nih / "labels.csv")]
    for r in records:
        command += ["--records", str(r)]
    command += ["--arch", settings.arch, "--image-px", str(settings.image_px),
                "--steps", str(settings.steps), "--batch-size", str(settings.batch_size),
                "--lr", str(settings.lr), "--warmup-steps", str(settings.warmup_steps),
                "--lr-schedule", settings.lr_schedule, "--weight-decay",
                str(settings.weight_decay), "--val-fraction", str(settings.val_fraction),
                "--validate-every", "0", "--checkpoint-every",
                str(max(50, settings.steps // 4)), "--seed", str(seed), "--device",
                settings.device,
                "-o", str(out)]
    if arm.engine is not None and settings.crop_px:  # the real arm has no masks to cut around
        command += ["--crop-px", str(settings.crop_px)]
    if any(out.glob("**/checkpoint-*/trainer_state.json")):
        command += ["--resume", "latest"]
    return command


def evaluate(work: Path, settings: Settings, model: Path, tag: str, nih: Path,
             synth_test_records: Path, seed: int) -> dict[str, Any]:
    """Detect and evaluate one model on the held-out real radiographs and synthetic nodules."""
    det = work / "detect" / tag
    real, synth = det / "real.jsonl", det / "synth.jsonl"
    if not real.exists():
        run(["cxrkit", "detect", "--model", str(model), str(work / "nih" / "test"),
             "--nih-labels", str(nih / "labels.csv"), "--device", settings.device, "--overwrite",
             "-o", str(det / "real")], stdout=real)
    if not synth.exists():
        run(["cxrkit", "detect", "--model", str(model), str(synth_test_records), "--device",
             settings.device, "--overwrite", "-o", str(det / "synth")], stdout=synth)
    result = {}
    for name, records in (("real", real), ("synth", synth)):
        out = det / f"eval-{name}.json"
        if not out.exists():
            run(["cxrkit", "eval", "--json", "--bootstrap", str(settings.bootstrap), "--seed",
                 str(seed), str(records)], stdout=out)
        result[name] = json.loads(out.read_text())
    for name, records in (("real", real), ("synth", synth)):
        report = work / "reports" / f"{tag}-{name}.html"
        if not report.exists():
            report.parent.mkdir(parents=True, exist_ok=True)
            run(["cxrkit", "eval", "--json", "--bootstrap", "0", "--report", str(report),
                 "--overwrite", str(records)])
    return row_of(result["real"], result["synth"])


def row_of(real: dict[str, Any], synth: dict[str, Any]) -> dict[str, Any]:
    """The table's numbers from the ``cxrkit eval --json`` of the real and synthetic sets."""
    rc, sc = real.get("classification") or {}, synth.get("classification") or {}
    seg = synth.get("segmentation") or {}
    chars = synth.get("characteristics") or {}
    return {
        "real_auc": rc.get("auc"), "real_auc_ci95": rc.get("auc_ci95"),
        "real_n": [rc.get("n_positive"), rc.get("n_negative")],
        "synth_auc": sc.get("auc"), "synth_auc_ci95": sc.get("auc_ci95"),
        "synth_n": [sc.get("n_positive"), sc.get("n_negative")],
        "iou": seg.get("iou_mean_pos"), "dice": seg.get("dice_mean_pos"),
        "characteristics": {c: (chars.get(c) or {}).get("auc") for c in CHARACTERISTICS},
    }


def arm_chain(work: Path, settings: Settings, arm: Arm, seed: int, nih: Path,
              records: list[Path], synth_test_records: Path) -> dict[str, Any]:
    """Train one (arm, seed) and evaluate it."""
    from cxrkit.train import run_finished

    tag = f"{arm.name}-seed{seed}"
    model = work / "models" / tag
    if not run_finished(model):
        run(train_command(work, settings, arm, seed, nih, records, model))
    row = evaluate(work, settings, model, tag, nih, synth_test_records, seed)
    trained = json.loads((model / "run.json").read_text())
    from cxrkit.files import file_sha256

    weights = sorted(model.glob("*.safetensors"))
    return {"arm": arm.name, "engine": arm.engine or "none", "k": arm.k, "seed": seed,
            **row, "validation": trained.get("validation") or {},
            "model": {"path": str(model),
                      "sha256": file_sha256(weights[0]) if weights else None}}


# -- table, gates, report ---------------------------------------------------------------------


def _mean(values: Sequence[Any]) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return sum(numbers) / len(numbers) if numbers else None


def per_arm(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each arm's numbers, averaged over its seeds (``n_seeds`` of them)."""
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == name]
        out[name] = {
            "engine": mine[0]["engine"], "k": mine[0]["k"], "n_seeds": len(mine),
            **{m: _mean([r[m] for r in mine]) for m in ("real_auc", "synth_auc", "iou")},
            "characteristics": {c: _mean([r["characteristics"].get(c) for r in mine])
                                for c in CHARACTERISTICS},
        }
    return out


def gate_values(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Every gate's value (see the module docstring)."""
    arms = per_arm(rows)
    values: dict[str, float] = {}
    for name, a in arms.items():
        metrics = {"real_auc": a["real_auc"], "synth_auc": a["synth_auc"], "iou": a["iou"],
                   **{f"{c}_auc": v for c, v in a["characteristics"].items()}}
        for metric, v in metrics.items():
            if v is None:
                continue
            values[f"{metric}@{name}"] = v
            values[metric] = max(values.get(metric, v), v)
    if "real" in arms:
        base = arms["real"]
        synthetic = [a for n, a in arms.items() if n != "real"]
        for metric in ("real_auc", "synth_auc"):
            others = [a[metric] for a in synthetic if a[metric] is not None]
            if base[metric] is not None and others:
                values[f"{metric}_gain"] = max(others) - base[metric]
    return values


def gates(rows: Sequence[dict[str, Any]], thresholds: dict[str, float]) -> list[str]:
    """The failed ``--fail-under`` gates (an unknown or unmeasured gate fails)."""
    values = gate_values(rows)
    failed = []
    for name, floor in thresholds.items():
        if name not in values:
            known = sorted({n.split("@")[0] for n in values})
            failed.append(f"{name}: unknown or not measured (use {', '.join(known)}, each "
                          "optionally @ARM)")
        elif not values[name] >= floor:
            failed.append(f"{name} = {values[name]:.4g} < {floor:g}")
    return failed


def _f(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{float(value):.{digits}f}"


def _ci(ci: Any) -> str:
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def markdown(table: dict[str, Any]) -> str:
    """The table as markdown: one row per (arm, seed)."""
    s, splits = table["settings"], table["splits"]
    nih, luna = splits["nih"], splits["luna16"]
    head = ["arm", "engine", "K", "seed", "real AUC [95% CI]", "synthetic AUC [95% CI]", "IoU",
            *(f"{c} AUC" for c in CHARACTERISTICS)]
    lines = [
        "# Detector augmentation table reproduced", "",
        f"Detector: `--arch {s['arch']}` at {s['image_px']} px, {s['steps']} steps of batch "
        f"{s['batch_size']} per arm (synthetic arms on {s.get('crop_px') or 'whole'}-px windows, "
        f"the real arm on whole images; blend gain {s.get('intensity_scale')}). "
        f"Real test: {nih['test']['images']} NIH radiographs of "
        f"{nih['test']['patients']} held-out patients, {nih['test']['nodule_images']} with "
        f"'Nodule' (training: {nih['train']['images']} images, {nih['train']['nodule_images']} "
        f"with 'Nodule'). Synthetic test: blend nodules of {len(luna['test']['patients'])} "
        f"held-out LUNA16 patients ({luna['test']['nodules']} nodules) in "
        f"{nih['test']['backgrounds']} nodule-free test radiographs, "
        f"{s['synth_test_n']} per radiograph, plus each as a negative. Training nodules from "
        f"{len(luna['train']['patients'])} other LUNA16 patients ({luna['train']['nodules']} "
        "nodules). IoU: mean over synthetic test images with a nodule, mask at 0.5.", "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table["rows"]:
        lines.append("| " + " | ".join([
            r["arm"], r["engine"], str(r["k"]), str(r["seed"]),
            _f(r["real_auc"]) + _ci(r["real_auc_ci95"]),
            _f(r["synth_auc"]) + _ci(r["synth_auc_ci95"]), _f(r["iou"]),
            *(_f(r["characteristics"].get(c)) for c in CHARACTERISTICS)]) + " |")
    arms = per_arm(table["rows"])
    if any(a["n_seeds"] > 1 for a in arms.values()):
        lines += ["", "Mean over seeds:", "",
                  "| " + " | ".join(["arm", "seeds", "real AUC", "synthetic AUC", "IoU",
                                     *(f"{c} AUC" for c in CHARACTERISTICS)]) + " |",
                  "|" + "---|" * (5 + len(CHARACTERISTICS))]
        lines += ["| " + " | ".join([name, str(a["n_seeds"]), _f(a["real_auc"]),
                                     _f(a["synth_auc"]), _f(a["iou"]),
                                     *(_f(a["characteristics"][c]) for c in CHARACTERISTICS)])
                  + " |" for name, a in arms.items()]
    gains = {k: v for k, v in table["gates"].items() if k.endswith("_gain")}
    if gains:
        lines += ["", "Best synthetic arm minus real-only: "
                  + ", ".join(f"{k} {v:+.3f}" for k, v in gains.items()) + "."]
    return "\n".join(lines) + "\n"


def curve_png(rows: Sequence[dict[str, Any]]) -> bytes:
    """Real and synthetic AUC (and IoU) against K, one line per engine (mean over seeds; the
    ``real`` arm is K = 0 of every engine)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    arms = per_arm(rows)
    figure = Figure(figsize=(10.5, 3.3), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    engines = sorted({a["engine"] for a in arms.values() if a["engine"] != "none"}) or ["none"]
    for ax, metric, title in zip(axes, ("real_auc", "synth_auc", "iou"),
                                 ("held-out real AUC (NIH Nodule)", "held-out synthetic AUC",
                                  "held-out synthetic IoU"), strict=True):
        for engine in engines:
            points = sorted((a["k"], a[metric]) for a in arms.values()
                            if a["engine"] in (engine, "none") and a[metric] is not None)
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=engine)
        for r in rows:  # every seed as a dot, with its bootstrap 95 % CI
            if r[metric] is not None:
                ax.plot(r["k"], r[metric], ".", color="gray", alpha=0.5)
            ci = r.get(f"{metric}_ci95")
            if ci:
                ax.plot([r["k"], r["k"]], ci, color="gray", alpha=0.4, lw=1)
        if metric != "iou":
            ax.axhline(0.5, color="gray", lw=0.8, ls=":")
        ax.set_xlabel("synthetic nodules K")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def html_report(table: dict[str, Any], png: bytes) -> str:
    """The table, the AUC-against-K curve (PNG embedded) and links to every arm's report."""
    import base64
    import html

    md = markdown(table).splitlines()
    parts, block = [], []  # the markdown's paragraphs and tables, in order
    for line in [*md[2:], ""]:
        if line.startswith("|"):
            if not line.startswith("|---"):
                block.append([html.escape(c.strip()) for c in line.strip("|").split("|")])
            continue
        if block:
            head = "".join(f"<th>{c}</th>" for c in block[0])
            body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
                           for row in block[1:])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            block = []
        if line.strip():
            parts.append(f"<p>{html.escape(line)}</p>")
    links = "".join(
        f"<li>{html.escape(r['arm'])} (seed {r['seed']}): "
        + ", ".join(f"<a href=\"reports/{html.escape(r['arm'])}-seed{r['seed']}-{side}.html\">"
                    f"{label}</a>" for side, label in (("real", "held-out real radiographs"),
                                                       ("synth", "held-out synthetic nodules")))
        + "</li>" for r in table["rows"])
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>Detector augmentation"
            "</title><style>body{font-family:sans-serif;max-width:1200px;margin:auto}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;"
            "font-size:13px}</style></head><body><h1>Detector augmentation table</h1>"
            + "".join(parts) +
            f"<h2>AUC and IoU against the number of synthetic nodules</h2>"
            f"<img alt=\"AUC against K\" src=\"{uri}\"><h2>Per-arm reports (cxrkit eval "
            f"--report: ROC/FROC, gallery, breakdown)</h2><ul>{links}</ul></body></html>\n")


FIXED = ("image_px", "background_px", "crop_px", "intensity_scale", "steps", "batch_size", "lr",
         "warmup_steps", "lr_schedule", "weight_decay", "arch", "val_fraction",
         "synth_test_n", "test_fraction", "test_positive_fraction", "luna_test_fraction",
         "max_test_backgrounds", "bootstrap")
"""Settings a work folder is bound to (its finished steps were made with them); the K, engines
and seeds may grow from run to run (new arms are added, finished ones reused)."""


def check_settings(work: Path, settings: Settings, parser: argparse.ArgumentParser) -> None:
    """Record the :data:`FIXED` settings in ``settings.json``, or refuse (exit 2) a work folder
    made with other ones, so a rerun never mixes steps of two configurations."""
    mine = {k: v for k, v in asdict(settings).items() if k in FIXED}
    path = work / "settings.json"
    if path.exists():
        theirs = json.loads(path.read_text())
        changed = sorted(k for k in FIXED if theirs.get(k) != mine[k])
        if changed:
            parser.error(f"{work} was made with other settings ({', '.join(changed)}); give "
                         "another --work, or the same settings")
    else:
        path.write_text(json.dumps(mine, indent=1) + "\n")


# -- main -------------------------------------------------------------------------------------


def _ints(text: str, option: str, parser: argparse.ArgumentParser) -> tuple[int, ...]:
    try:
        values = tuple(dict.fromkeys(int(v) for v in text.split(",") if v.strip()))
    except ValueError:
        parser.error(f"{option}: comma-separated integers, not {text!r}")
    if not values or any(v < 0 for v in values):
        parser.error(f"{option}: give one or more integers >= 0")
    return values


def settings_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Settings:
    """The defaults (or ``--quick``'s) with the options given."""
    s = QUICK if args.quick else Settings()
    changes: dict[str, Any] = {}
    if args.k is not None:
        changes["ks"] = _ints(args.k, "--k", parser)
    if args.seeds is not None:
        changes["seeds"] = _ints(args.seeds, "--seeds", parser)
    if args.engines is not None:
        engines = tuple(dict.fromkeys(e.strip() for e in args.engines.split(",") if e.strip()))
        unknown = [e for e in engines if e not in ENGINES]
        if unknown or not engines:
            parser.error(f"--engines: use {', '.join(ENGINES)}")
        changes["engines"] = engines
    for name in ("image_px", "background_px", "crop_px", "intensity_scale", "steps",
                 "batch_size", "lr", "arch",
                 "synth_test_n", "bootstrap", "device", "test_fraction",
                 "test_positive_fraction", "luna_test_fraction"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    return replace(s, **changes)


def main(argv: list[str] | None = None) -> int:
    """Run the recipe; see ``--help``."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("detect-augmentation-work"),
                        help="folder of every intermediate and of augmentation.md/.json/.html")
    parser.add_argument("--quick", action="store_true",
                        help="smoke-run sizes (64 px, 30 steps, K 0,16, 12 test backgrounds)")
    parser.add_argument("--k", default=None, metavar="LIST",
                        help="synthetic nodules per arm, e.g. 0,200,500,1000 (0: the real arm)")
    parser.add_argument("--engines", default=None, metavar="LIST",
                        help="synth engines of the synthetic arms: blend and/or diffusion")
    parser.add_argument("--diffusion-model", type=Path, default=None,
                        help="synthesis DiT folder of the diffusion arms (default: shipped)")
    parser.add_argument("--seeds", default=None, metavar="LIST",
                        help="training seeds; one training per (arm, seed) (default 0)")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of the patient splits and of the synthetic data")
    parser.add_argument("--test-fraction", type=float, default=None,
                        help="share of the NIH patients without a Nodule image held out "
                             "(default 0.35)")
    parser.add_argument("--test-positive-fraction", type=float, default=None,
                        help="share of the NIH patients with a Nodule image held out "
                             "(default 0.5; at least one stays in training)")
    parser.add_argument("--luna-test-fraction", type=float, default=None,
                        help="share of the LUNA16 patients held out (default 0.3)")
    parser.add_argument("--image-px", type=int, default=None,
                        help="train-detect --image-px of every arm (default 512; quick 64)")
    parser.add_argument("--crop-px", type=int, default=None,
                        help="train-detect --crop-px of the synthetic arms (default 128; quick "
                             "32; 0: whole images); the real arm has no masks and trains on "
                             "whole images")
    parser.add_argument("--intensity-scale", type=float, default=None,
                        help="synth -e blend --intensity-scale of the training and test nodules "
                             "(default 0.45; synth's own estimate for the NIH PNGs is about "
                             "0.15, at which most nodules are fainter than the ribs)")
    parser.add_argument("--background-px", type=int, default=None,
                        help="side of the resized backgrounds synth draws into (default 512; "
                             "quick 128)")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps of every arm (default 500; quick 30)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="batch of every arm (default 8; quick 4)")
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate of every arm (default 5e-4)")
    parser.add_argument("--arch", default=None, help="train-detect --arch (default, swin-t)")
    parser.add_argument("--synth-test-n", type=int, default=None,
                        help="held-out synthetic nodules per test background")
    parser.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples")
    parser.add_argument("--device", default=None,
                        help="train-detect and detect --device: auto (CUDA when present), cpu, "
                             "cuda, cuda:N (default auto)")
    parser.add_argument("--nih", type=Path, default=DATA / "nih-cxr14",
                        help="NIH folder: labels.csv and images/")
    parser.add_argument("--luna16", type=Path, default=DATA / "luna16-nodules",
                        help="LUNA16 folder: nodules.csv and patches/")
    parser.add_argument("--jobs", type=int, default=1,
                        help="arms trained at once (each command gets cores // jobs threads)")
    parser.add_argument("--fail-under", action="append", default=[], metavar="GATE=VALUE",
                        help="exit 8 when GATE < VALUE: real_auc, synth_auc, iou, "
                             "<characteristic>_auc (best arm), real_auc_gain, synth_auc_gain "
                             "(best synthetic arm minus real), GATE@ARM (one arm)")
    args = parser.parse_args(argv)
    import cxrkit

    try:
        thresholds = {k.strip(): float(v) for k, v in (g.split("=", 1) for g in args.fail_under)}
    except ValueError:
        parser.error("--fail-under: GATE=VALUE")
    settings = settings_from(args, parser)
    shipped = REPO / "cxrkit" / "models" / "synthdit"
    if "diffusion" in settings.engines and args.diffusion_model is None \
            and not (shipped / "config.json").is_file():
        parser.error("--engines diffusion: this checkout ships no synthesis model "
                     f"({shipped}); give --diffusion-model DIR (cxrkit train-synth, "
                     "repro/train_synth.sh)")
    cores = len(os.sched_getaffinity(0))
    jobs = max(1, args.jobs)
    global _threads, _log
    _threads = max(1, cores // jobs) if jobs > 1 else None
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    _log = work / "commands.log"
    check_settings(work, settings, parser)
    began = time.monotonic()
    split_seed = args.split_seed
    splits = prepare(work, settings, split_seed, args.nih, args.luna16)
    nih_test = splits["nih"]["test"]
    print(f"detect_augmentation: NIH train {splits['nih']['train']['images']} images "
          f"({splits['nih']['train']['nodule_images']} Nodule), test {nih_test['images']} "
          f"({nih_test['nodule_images']} Nodule); LUNA16 train "
          f"{len(splits['luna16']['train']['patients'])} patients, test "
          f"{len(splits['luna16']['test']['patients'])}", file=sys.stderr)
    arms = arms_of(settings)
    kmax = max(settings.ks)
    backgrounds = splits["nih"]["train"]["backgrounds"]
    records: dict[str, list[Path]] = {"real": []}
    test_records = synth_test(work, settings, splits, args.luna16, split_seed)
    if kmax > 0:
        negatives = train_negatives(work)
        for engine in settings.engines:
            pool = synth_pool(work, engine, math.ceil(kmax / backgrounds), splits, args.luna16,
                              split_seed, args.diffusion_model, settings)
            for arm in arms:
                if arm.engine == engine:
                    records[arm.name] = [arm_records(work, engine, arm.k, pool), negatives]
    tasks = [(arm, seed) for arm in arms for seed in settings.seeds]
    rows = in_parallel([lambda a=a, s=s: arm_chain(work, settings, a, s, args.nih,
                                                   records[a.name], test_records)
                        for a, s in tasks], jobs)
    table: dict[str, Any] = {"rows": rows, "arms": per_arm(rows), "settings": asdict(settings),
                             "splits": copy.deepcopy(splits),
                             "gates": gate_values(rows), "command": [sys.executable, *sys.argv],
                             "cxrkit_version": cxrkit.__version__,
                             "seconds": round(time.monotonic() - began, 1)}
    for side in ("train", "test"):
        table["splits"]["nih"][side] = {k: v for k, v in splits["nih"][side].items()
                                        if k != "files"}
    table["splits"]["nih"].pop("images_sha256", None)  # in splits.json
    table["splits"]["luna16"].pop("patches_sha256", None)
    (work / "augmentation.json").write_text(json.dumps(table, indent=1) + "\n")
    (work / "augmentation.md").write_text(markdown(table))
    (work / "augmentation.html").write_text(html_report(table, curve_png(rows)))
    print((work / "augmentation.md").read_text())
    failed = gates(rows, thresholds)
    for line in failed:
        print(f"detect_augmentation: check failed: {line}", file=sys.stderr)
    return CHECK_FAILED if failed else 0


if __name__ == "__main__":
    sys.exit(main())
