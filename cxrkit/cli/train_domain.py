"""``cxrkit train-domain``: train the domain classifier that ``cxrkit eval --domain-model`` uses."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cxrkit.cli._groups import TRAINING, TrainOptions
from cxrkit.cli._options import command_line, finish_training, training_progress
from cxrkit.cli.train_munit import domain_paths


@TRAINING.use("training", helps={"steps": "Optimizer steps (the shipped model: 600).",
                                 "lr": "Peak learning rate (AdamW)."})
def train_domain(
    real: Annotated[list[str], typer.Option(
        "--real", help="Real chest radiographs (files, folders, globs or .jsonl records; "
                       "repeatable). Patients are split by the NIH file-name prefix.")],
    drr: Annotated[list[str], typer.Option(
        "--drr", help="Raw DRRs (records of cxrkit project or repro/make_lq_domain.py, or "
                      "files; repeatable). Their pixel pitch comes from the records.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")] = Path(
        "domain"),
    pixel_mm: Annotated[float, typer.Option(
        min=0.05, max=10.0, help="Pitch every image is resampled to, mm.")] = 1.0,
    patch_px: Annotated[int, typer.Option(min=16, max=512, help="Patch side, px.")] = 64,
    width: Annotated[int, typer.Option(min=2, max=256, help="First layer's channels.")] = 12,
    val_fraction: Annotated[float, typer.Option(
        help="Share of patients (real) and of DRRs (poses) held out for validation.")] = 0.25,
    training: TrainOptions = None,  # type: ignore[assignment]  # the TRAINING options
) -> None:
    """Train the domain classifier: P(real radiograph) of lung patches, against raw DRRs.

    A tiny CNN (four 3×3 convolutions, global pooling) learns to tell lung-field patches of real
    chest radiographs (label 1) from those of raw DRRs (label 0). Every image is resampled to
    --pixel-mm first (its pitch from the record's spacing_mm, the file, the NIH labels.csv
    beside the images, or a 430 mm detector), its lung field found, and patches are drawn
    centred on lung pixels; each patch's mean is removed, so the global tone is no cue. Held
    out: --val-fraction of the real patients and of the DRRs (their poses); run.json records
    the held-out accuracy and AUC, the data hashes and the command. cxrkit eval
    --domain-model DIR reports the mean P(real) of its inputs (an enhancer that makes DRRs look
    like radiographs scores near 1; raw DRRs near 0).

    Example:

        python repro/make_lq_domain.py ../shared/data/lidc-idri-0001 --count 48 --size 512 \\
            --seed 11 -o drr512/
        cxrkit train-domain --real ../shared/data/nih-cxr14/images/ --drr drr512/records.jsonl \\
            --steps 600 --batch-size 32 --lr 1e-3 --warmup-steps 20 --checkpoint-every 0 \\
            --device cpu -o domain/
        cxrkit eval enhanced.jsonl --realism-ref ../shared/data/nih-cxr14/images/ \\
            --domain-model domain/
    """
    from cxrkit.data.splits import files_sha256, split_by_patient, split_files
    from cxrkit.domain import DomainSettings, HeldOutPatches
    from cxrkit.domain import train_domain as train
    from cxrkit.errors import InputError
    from cxrkit.realism import load_at_pitch

    if not 0 <= val_fraction < 1:
        raise typer.BadParameter("must be in [0, 1)", param_hint="--val-fraction")
    try:
        settings = DomainSettings(pixel_mm=pixel_mm, patch_px=patch_px, width=width)
    except InputError as exc:
        raise typer.BadParameter(str(exc), param_hint="--patch-px") from None
    real_paths = domain_paths(real, "--real")
    drr_items = _drr_items(drr)
    real_train, real_val = split_by_patient(real_paths, val_fraction, seed=training.seed)
    drr_train, drr_val = split_files(len(drr_items), val_fraction, seed=training.seed)
    if val_fraction and (not real_val or not drr_val):
        raise typer.BadParameter("too few images to hold any out", param_hint="--val-fraction")
    load = lambda items: load_at_pitch(items, pixel_mm, min_px=patch_px)  # noqa: E731
    real_images, drr_images = load(real_paths), load(drr_items)
    held_out = None
    if val_fraction:
        held_out = HeldOutPatches.of([real_images[i] for i in real_val],
                                     [drr_images[i] for i in drr_val], patch_px,
                                     seed=training.seed)
    drr_paths = [str(item["path"]) for item in drr_items]
    info = {"command": command_line(),
            "data": {"real": files_sha256([real_paths[i] for i in real_train]),
                     "real_validation": files_sha256([real_paths[i] for i in real_val]),
                     "drr": files_sha256([drr_paths[i] for i in drr_train]),
                     "drr_validation": files_sha256([drr_paths[i] for i in drr_val])},
            "held_out": "real: whole patients (file-name prefix); drr: whole images (poses)"}
    result = train(settings, training.config(str(out)),
                   real=[real_images[i] for i in real_train],
                   drr=[drr_images[i] for i in drr_train], held_out=held_out, run_info=info,
                   on_log=training_progress("train-domain"))
    finish_training(result, out, "train-domain")


def _drr_items(inputs: list[str]) -> list[dict[str, Any]]:
    """Records (with their ``spacing_mm``) of .jsonl files, or bare paths as records."""
    from cxrkit.pipe import read_record_file

    items: list[dict[str, Any]] = []
    for item in inputs:
        if item.endswith(".jsonl"):
            items += list(read_record_file(item))
        else:
            items += [{"path": p} for p in domain_paths([item], "--drr")]
    if not items:
        raise typer.BadParameter("no DRRs found", param_hint="--drr")
    return items

