"""``cxrkit train-detect``: train the nodule detector that ``cxrkit detect`` uses."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cxrkit.cli._groups import TRAINING, TrainOptions
from cxrkit.cli._options import (
    channel_list,
    command_line,
    finish_training,
    read_record_files,
    training_progress,
)

ARCH_NAMES = ("default", "swin-t")  # cxrkit.detector.ARCHS, kept torch-free here


@TRAINING.use("training", defaults={"lr": 5e-4, "warmup_steps": 50}, helps={
    "lr": "Peak learning rate (AdamW).",
    "steps": "Optimizer steps (each a balanced batch of positives and negatives)."})
def train_detect(
    records: Annotated[list[Path] | None, typer.Option(
        "--records", help="JSONL records written by cxrkit synth (positives with masks and "
                          "characteristics; --negatives for nodule-free ones), or any records "
                          "with 'path' and 'boxes' or 'label' (repeatable).",
        show_default=False)] = None,
    images: Annotated[Path | None, typer.Option(
        "--images", help="Folder of real radiographs named in --nih-labels (image-level "
                         "labels only: no mask loss).", show_default=False)] = None,
    nih_labels: Annotated[Path | None, typer.Option(
        "--nih-labels", help="NIH ChestX-ray14 labels.csv (Data_Entry_2017.csv format): "
                             "'Nodule' among 'Finding Labels' is a positive; 'Patient ID' "
                             "groups the split.", show_default=False)] = None,
    init: Annotated[Path | None, typer.Option(
        "--init", help="Start from this detector folder; its architecture is kept.",
        show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")] = Path(
        "detector"),
    arch: Annotated[str, typer.Option(
        help="default (small CPU Swin: embed 32, depths 2,2,2,2, heads 1,2,4,8, window 7, "
             "2.3 M parameters) or swin-t (the source's Swin-Tiny: embed 96, depths 2,2,6,2, "
             "heads 3,6,12,24, window 7, 27.7 M parameters). The options below change it.")
    ] = "default",
    image_px: Annotated[int | None, typer.Option(
        min=32, max=4096, help="Side of the square the model works at (inputs are resized "
                               "with their aspect kept and padded). Default 512.",
        show_default=False)] = None,
    embed_dim: Annotated[int | None, typer.Option(
        min=4, max=1024, help="Width of the first stage (doubles per stage).",
        show_default=False)] = None,
    depths: Annotated[str | None, typer.Option(
        help="Swin blocks per stage, e.g. 2,2,6,2.", show_default=False)] = None,
    heads: Annotated[str | None, typer.Option(
        help="Attention heads per stage, e.g. 3,6,12,24.", show_default=False)] = None,
    window: Annotated[int | None, typer.Option(
        min=1, max=32, help="Attention window side (tokens).", show_default=False)] = None,
    patch_size: Annotated[int | None, typer.Option(
        min=1, max=32, help="Patch embedding stride (px).", show_default=False)] = None,
    decoder_dim: Annotated[int | None, typer.Option(
        min=4, max=1024, help="Segmentation decoder channels.", show_default=False)] = None,
    presence_topk: Annotated[int | None, typer.Option(
        min=1, max=4096, help="Mask cells (at the patch stride) whose mean logit is the "
                              "presence score. Default 4.", show_default=False)] = None,
    crop_px: Annotated[int | None, typer.Option(
        min=32, max=4096, help="Train on windows of this side cut from the model's square "
                               "(positives around their nodule, negatives in the lungs or "
                               "anywhere): a 128-px window costs 1/16 of a 512² image; "
                               "validation stays on whole images. Image-level-only positives "
                               "are left out.", show_default=False)] = None,
    stem_channels: Annotated[int | None, typer.Option(
        min=0, max=1024, help="Channels of the 3x3 convolution + GELU before the patch "
                              "embedding (0: Swin's plain patch embedding). Default 16.",
        show_default=False)] = None,
    val_fraction: Annotated[float, typer.Option(
        help="Share of patients held out for validation (a synth record belongs to the "
             "patient of its source radiograph).")] = 0.15,
    val_max: Annotated[int, typer.Option(
        min=1, help="At most this many held-out images are measured.")] = 256,
    training: TrainOptions = None,  # type: ignore[assignment]  # the TRAINING options
) -> None:
    """Train the nodule detector; writes a model folder for cxrkit detect --model.

    A Swin Transformer encoder (own plain-torch implementation: window attention with a
    relative position bias, shifted windows, patch merging), an FPN segmentation decoder, a
    presence score read from the mask (the mean of its top-k logits: is there a nodule
    anywhere) and five characteristics (calcified, border regular/irregular, texture
    homogeneous/inhomogeneous) from the decoder's features where the mask points. Loss: BCE of
    presence on every image; BCE of each characteristic where it is known (synthetic
    positives); pixel BCE + soft Dice of the mask where a mask exists (synth records,
    negatives included). Real radiographs with image-level labels (--images with
    --nih-labels) train the presence only (through the mask's top-k: multiple-instance
    learning). --crop-px 128 trains on windows (much faster on a CPU); the model then reads
    whole radiographs.

    Every batch holds positives and negatives with probability 1/2 each; augmentations keep
    masks aligned (flip, rotation, scale, shift, gamma and contrast), seeded by --seed.
    Patients are split: no patient's images (nor synthetic images made from them) are in both
    training and validation.

    The folder holds config.json (kind nodule-detector), the weights
    (diffusion_pytorch_model.safetensors) and run.json: command, architecture, data counts and
    the validation on held-out patients: auc (presence; chance 0.5), auc_synth and auc_real,
    iou and dice of the mask at 0.5 over held-out images with a nodule, empty_fp_rate,
    auc_<characteristic>.

    Example:

        cxrkit synth -e blend nih/images/ --source luna16 -n 4 -o pos/ > pos.jsonl
        cxrkit synth -e blend nih/images/ --negatives -n 1 -o neg/ > neg.jsonl
        cxrkit train-detect --records pos.jsonl --records neg.jsonl --images nih/images \\
            --nih-labels nih/labels.csv --crop-px 128 --steps 3000 -o detector/
        cxrkit detect --model detector/ nih/images/ -o det/ | cxrkit eval
    """
    if arch not in ARCH_NAMES:
        raise typer.BadParameter(f"'{arch}' is not one of {', '.join(ARCH_NAMES)}",
                                 param_hint="--arch")
    if not 0 <= val_fraction < 1:
        raise typer.BadParameter("must be in [0, 1)", param_hint="--val-fraction")
    if (images is None) != (nih_labels is None):
        raise typer.BadParameter("--images and --nih-labels go together",
                                 param_hint="--images" if images is None else "--nih-labels")
    if not records and images is None:
        raise typer.BadParameter("give --records (cxrkit synth output) and/or --images with "
                                 "--nih-labels", param_hint="--records")
    given = {k: v for k, v in {
        "image_px": image_px, "embed_dim": embed_dim, "window": window,
        "patch_size": patch_size, "decoder_dim": decoder_dim, "presence_topk": presence_topk,
        "stem_channels": stem_channels,
        "depths": channel_list(depths, "--depths") if depths else None,
        "num_heads": channel_list(heads, "--heads") if heads else None}.items()
        if v is not None}
    if init is not None and (given or arch != "default"):
        raise typer.BadParameter("--init keeps its model's architecture; drop --arch and the "
                                 "architecture options", param_hint="--init")
    from cxrkit.detector import ARCHS, HeldOut, items_from_nih, items_from_records
    from cxrkit.detector import train_detect as train
    from cxrkit.errors import InputError

    try:
        from dataclasses import replace

        settings = replace(ARCHS[arch], **given)
    except InputError as exc:
        raise typer.BadParameter(str(exc), param_hint="architecture") from None
    items: list[Any] = []
    info: dict[str, Any] = {}
    entries: list[Any] = []
    if images is not None and nih_labels is not None:
        from cxrkit.data.nih import read_labels

        if not images.is_dir():
            raise typer.BadParameter(f"'{images}' is not a folder", param_hint="--images")
        entries = read_labels(nih_labels)
    from cxrkit.files import file_sha256

    if records:
        recs = read_record_files(records)
        # a synth image made from a radiograph with a real nodule has a mask (or boxes: [])
        # that misses that nodule: such records are left out when the labels say so
        real = {e.image for e in entries if e.nodule}
        kept = [r for r in recs if Path(str(r.get("source") or "")).name not in real]
        items += items_from_records(kept)
        info["records"] = {str(p): file_sha256(p) for p in records}
        info["records_left_out"] = {
            "count": len(recs) - len(kept),
            "why": "made from a radiograph whose NIH label is Nodule (its mask misses it)"}
    if images is not None:
        found = items_from_nih(entries, images)
        if not found:
            raise InputError("no image of the label file is in the folder", path=str(images),
                             hint="--images must hold the files 'Image Index' names")
        items += found
        info["nih_labels"] = {"path": str(nih_labels), "sha256": file_sha256(nih_labels),
                              "images": len(found)}
    result = train(settings, training.config(str(out)), items,
                   held_out=HeldOut(fraction=val_fraction, max_images=val_max), init=init,
                   crop=crop_px,
                   command=command_line(), data_info=info,
                   on_log=training_progress("train-detect"))
    finish_training(result, out, "train-detect")



