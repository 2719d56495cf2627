"""``cxrkit detect``: nodule probability, characteristics, segmentation and boxes of radiographs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cxrkit.cli._groups import Device
from cxrkit.cli._options import (
    Inputs,
    KeepGoing,
    Out,
    Outputs,
    Overwrite,
    Resume,
    Seed,
    exit_with,
    format_suffix,
    from_stdin,
    input_name,
    iter_inputs,
    keep_input,
    read_display,
    run_items,
)
from cxrkit.errors import InputError, ModelError
from cxrkit.pipe import Record

SHIPPED = Path(__file__).resolve().parent.parent / "models" / "detector"
"""The shipped detector (:func:`cxrkit.detector.default_model_dir`, kept torch-free here)."""
TAG = "nodule"
"""The probability map of input ``<id>`` is ``<out>/<id>_nodule.png``."""


def detect(
    inputs: Inputs = None,
    out: Out = None,
    model: Annotated[Path | None, typer.Option(
        "--model", help="Detector folder (from cxrkit train-detect). Default: the detector "
                        "shipped with cxrkit (cxrkit/models/detector).",
        show_default=False)] = None,
    threshold: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Mask probability at or above which a pixel belongs to a box's "
                               "connected component.")] = 0.5,
    peak_box: Annotated[bool, typer.Option(
        "--peak-box/--no-peak-box",
        help="Where no pixel reaches --threshold, still give the image one box: the component "
             "of half the map's peak around it, with its low score (so eval ranks every image "
             "by its evidence, as NODE21 keeps every box).")] = True,
    nih_labels: Annotated[Path | None, typer.Option(
        "--nih-labels", help="NIH ChestX-ray14 labels.csv: an input whose file name it lists "
                             "gets 'label' (1: 'Nodule' among its findings, else 0), so cxrkit "
                             "eval can score the image-level AUC.", show_default=False)] = None,
    device: Device = "auto",
    seed: Seed = 0,
    overwrite: Overwrite = False,
    resume: Resume = False,
    keep_going: KeepGoing = False,
) -> None:
    """Detect lung nodules: probability, characteristics, segmentation and boxes.

    The detector (a Swin Transformer and a segmentation decoder; presence read from the mask)
    sees each radiograph resized with its aspect kept and padded to its square; every output
    is mapped back to the input's pixels. Reads display radiographs of any size (8/16-bit PNG,
    TIFF, DICOM) or records; writes one probability map per input (<id>_nodule.png: uint8,
    mask probability x 255, the input's size) and one record: the input record's fields
    (boxes, mask, nodule, label pass through for cxrkit eval) plus nodule_probability,
    characteristics_probability (calcified, border_regular, border_irregular,
    texture_homogeneous, texture_inhomogeneous), detections [{x1,y1,x2,y2,score}] in input
    pixels (half-open), prediction_mask and pred_mask (the map's path; eval reads pred_mask)
    and detect (version, options, model sha256, device).

    Boxes are the connected components of the mask probability at --threshold (an image with
    none gets the one around its peak, --no-peak-box to drop it); a box's score is the
    geometric mean of the image's nodule probability and the component's peak mask
    probability. The model is deterministic: --seed is recorded only.

    Example:

        cxrkit synth -e blend cxr.png --source luna16 -n 8 -o syn/ | cxrkit detect -o det/ \\
            | cxrkit eval --json

    Real radiographs with the NIH image-level labels:

        cxrkit detect nih/images/ --nih-labels nih/labels.csv -o det/ > det.jsonl
    """
    labels = _nih_labels(nih_labels) if nih_labels is not None else None
    options = {"threshold": threshold, "peak_box": peak_box, "device": device,
               "nih_labels": str(nih_labels) if nih_labels else None}
    outputs = Outputs(out, format_suffix("png"), overwrite, tool="detect",
                      request={**options, "model": str(model) if model else None, "seed": seed})
    if outputs.single_file:
        raise typer.BadParameter("-o names the folder of the probability maps; end it with /",
                                 param_hint="'--out' / '-o'")
    if model is None and not (SHIPPED / "config.json").is_file():
        raise ModelError("no detector is shipped in this install", path=str(SHIPPED),
                         hint="train one with cxrkit train-detect and pass --model DIR")
    job = DetectJob(options, outputs, model=model, seed=seed, labels=labels)
    code = run_items(iter_inputs(inputs), job, done=job.done if resume else None,
                     keep_going=keep_going, label="images")
    exit_with(code)


def _nih_labels(path: Path) -> dict[str, int]:
    from cxrkit.data.nih import read_labels

    return {e.image: int(e.nodule) for e in read_labels(path)}


class DetectJob:
    """Detects in one record's image, writes its probability map, returns the new record
    (model loaded once)."""

    def __init__(self, options: dict[str, Any], outputs: Outputs, *, model: Path | None,
                 seed: int, labels: dict[str, int] | None) -> None:
        self.options = options
        self.outputs = outputs
        self.model_dir = model
        self.seed = seed
        self.labels = labels
        self._model: Any = None
        self._sha256: str | None = None

    def done(self, record: Record) -> Record | None:
        """The stored record of an item already done with the same options (for --resume)."""
        from cxrkit.cli._options import _differences
        from cxrkit.errors import OutputError
        from cxrkit.io import read_meta
        from cxrkit.pipe import to_json

        target = self.outputs.path(record["id"], TAG)
        meta = read_meta(target) if target.exists() else {}
        stored = meta.get("record") if meta.get("path") == str(target) else None
        if not isinstance(stored, dict):
            return None
        import json

        request = (stored.get("detect") or {}).get("request")
        wanted = json.loads(to_json(self.outputs.request))
        if request == wanted:
            return stored
        if self.outputs.overwrite:
            return None
        raise OutputError(f"--resume: the output was made with other options "
                          f"({_differences(request, wanted)})", path=str(target),
                          hint="pass --overwrite to redo it, or write to another -o")

    def __call__(self, record: Record) -> Record:
        import numpy as np

        from cxrkit.detector import detect as run_detector
        from cxrkit.pipe import provenance

        image = read_display(record, "detect")
        model = self._load()
        found = run_detector(model, np.clip(image.pixels, 0, 1),
                             threshold=self.options["threshold"],
                             peak_box=self.options["peak_box"])
        target = self.outputs.path(record["id"], TAG)
        new = {**record, "nodule_probability": found.nodule_probability,
               "characteristics_probability": found.characteristics,
               "detections": found.detections,
               "prediction_mask": str(target), "pred_mask": str(target)}
        if from_stdin(record):  # the spooled file goes when the process ends: keep a copy
            new["path"] = keep_input(self.outputs, record, target)
        if self.labels is not None:
            # by the file's name, else by its source's (a degraded copy keeps its label) unless
            # the record has boxes: a synth image's content is no longer its source's
            label = self.labels.get(Path(input_name(record)).name)
            if label is None and "boxes" not in record:
                label = self.labels.get(Path(str(record.get("source") or "")).name)
            if label is not None:
                new["label"] = label
        resolved = {**self.options, "model": str(self.model_dir),
                    "device": str(next(model.parameters()).device),
                    "image_px": model.config.image_px}
        new["detect"] = self.outputs.stamp(provenance("detect", resolved, seed=self.seed,
                                                      model=self._sha256))
        _write_probability(target, found.probability, new, overwrite=self.outputs.overwrite)
        return new

    def _load(self) -> Any:
        if self._model is None:
            from cxrkit.detector import Detector, default_model_dir, model_sha256
            from cxrkit.device import resolve_device

            folder = self.model_dir or default_model_dir()
            self._model = Detector.load(folder, device=resolve_device(self.options["device"]))
            self.model_dir = folder
            self._sha256 = model_sha256(folder)
        return self._model


def _write_probability(target: Path, prob: Any, record: Record, *, overwrite: bool) -> None:
    """The map as a uint8 PNG (probability × 255, rounded) with the record in its text chunk
    (``{"path": map, "kind": "mask", "record": the output record}``: what --resume reads)."""
    import numpy as np
    from PIL import Image, PngImagePlugin

    from cxrkit.files import atomic_path
    from cxrkit.pipe import to_json

    if prob.ndim != 2:
        raise InputError(f"probability map must be 2-D, got {prob.shape}")
    data = np.round(np.clip(prob, 0, 1) * 255).astype(np.uint8)
    info = PngImagePlugin.PngInfo()
    info.add_text("cxrkit", to_json({"cxrkit": {"path": str(target), "kind": "mask",
                                                "values": "nodule probability x 255",
                                                "record": record}}))
    with atomic_path(target, overwrite=overwrite) as tmp:
        Image.fromarray(data).save(tmp, format="PNG", pnginfo=info)
