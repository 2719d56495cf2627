"""Training the enhancer: its validation, and :func:`train_enhancer`, which wires the enhancer's
model, pairs (:mod:`cxrkit.enhancer.data`) and loss to :func:`cxrkit.train.train`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cxrkit.data.images import load_display, to_uint16
from cxrkit.data.splits import files_sha256, split_by_patient
from cxrkit.diffusion.denoiser import sampler_timesteps
from cxrkit.enhancer.data import PairData
from cxrkit.enhancer.model import Enhancer, EnhancerSettings, diffusion_loss, model_sha256
from cxrkit.errors import InputError, ModelError
from cxrkit.train import unwrap_model

if TYPE_CHECKING:
    from cxrkit.train import TrainConfig, TrainResult


def evaluate_pairs(enhance_fn: object, items: Sequence[dict[str, torch.Tensor]]
                   ) -> dict[str, float]:
    """Mean PSNR/SSIM of an enhancer and of bicubic on held-out pairs.

    Args:
        enhance_fn: ``lq (h, w) float32 → (h·s, w·s)`` float32 in [0, 1].
        items: pairs from :meth:`PairData.fixed`.

    Returns:
        ``psnr``, ``ssim``, ``bicubic_psnr``, ``bicubic_ssim``, ``psnr_gain``, ``ssim_gain``
        (dB and SSIM units, means over ``items``), and ``count``.
    """
    from cxrkit.metrics import psnr, ssim

    if not callable(enhance_fn):
        raise InputError("enhance_fn must be callable")
    rows = []
    for item in items:
        hq, lq_up = item["hq"][0].numpy(), item["lq_up"][0].numpy()
        out = enhance_fn(item["lq"][0].numpy())
        rows.append((psnr(out, hq), ssim(out, hq), psnr(lq_up, hq), ssim(lq_up, hq)))
    p, q, bp, bq = (float(np.mean(col)) for col in zip(*rows, strict=True))
    return {"psnr": p, "ssim": q, "bicubic_psnr": bp, "bicubic_ssim": bq,
            "psnr_gain": p - bp, "ssim_gain": q - bq, "count": float(len(rows))}


def init_record(folder: str | Path) -> dict[str, Any]:
    """What ``run.json`` says of a model a run started from: path, weights hash, its command."""
    folder = Path(folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    record: dict[str, Any] = {"path": str(folder), "weights_sha256": files_sha256([weights])[
        weights.name], "model_sha256": model_sha256(folder)}
    try:
        previous = json.loads((folder / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        previous = {}
    if isinstance(previous, dict):
        record.update({k: previous[k] for k in ("command", "init") if k in previous})
        record["steps"] = previous.get("config", {}).get("steps")
    return record


def load_images(paths: Sequence[str | Path]) -> list[np.ndarray]:
    """Read display radiographs (8/16-bit PNG, TIFF, DICOM …) into uint16 ``(H, W)`` arrays."""
    return [to_uint16(image) for image in load_display(paths, who="the enhancer trains")]


@dataclass(frozen=True)
class PairSettings:
    """How the enhancer's training and validation pairs are made.

    Attributes:
        preset: degradation preset for on-the-fly pairs (ignored with explicit LQ images).
        crop: HQ training crop side, pixels.
        pixel_mm: pixel pitch of the HQ images, mm.
        val_fraction: share of patients held out for validation.
        val_crop: side of the centred validation crop (0: whole images).
        val_count: at most this many validation images (0: all).
        val_tile: tile side used when validating (see :func:`cxrkit.enhancer.enhance`).
        reference_tone: probability of a random tone change on both sides of a training pair
            (:attr:`PairData.reference_tone`); validation pairs never get one.
        split_seed: seed of the patient split, of the validation pairs' degradations and of the
            validation sampling; independent of the training seed, so that a fine-tune with
            another seed keeps the same patients held out and its numbers stay comparable.
    """

    preset: str = "drr-like"
    crop: int = 192
    pixel_mm: float = 0.35
    val_fraction: float = 0.2
    val_crop: int = 512
    val_count: int = 12
    val_tile: int = 512
    split_seed: int = 0
    reference_tone: float = 0.0


def fine_tune_start(init: str | Path, scale: int, add_context: Sequence[int] | None, *,
                    generator: torch.Generator) -> Enhancer:
    """The model ``train-enhance --init`` trains: ``init`` loaded, with a new degradation
    encoder of widths ``add_context`` when given, in training mode; its UNet and encoder
    trainable, its tone gate (fitted afterwards, :mod:`cxrkit.enhancer.tone`) and its route
    (the specialist DRR-like inputs go to) frozen, kept as they are.

    Raises:
        ModelError: ``init`` is not an enhancer, or not of ``scale``.
    """
    model = Enhancer.from_pretrained(init).requires_grad_(True).train()
    if model.settings.scale != scale:
        raise ModelError(f"the model to start from has scale {model.settings.scale}, not "
                         f"{scale}", path=str(init))
    if add_context:
        model = model.with_context(tuple(add_context), model.settings.context_crop,
                                   generator=generator).requires_grad_(True).train()
    for frozen in (model.tone_gate, model.route):
        if frozen is not None:
            frozen.requires_grad_(False)
    return model


def train_enhancer(hq_paths: Sequence[str | Path], settings: EnhancerSettings,
                   config: TrainConfig, *, pairs: PairSettings | None = None,
                   lq_paths: Sequence[str | Path] | None = None, command: str = "",
                   weights_dtype: str = "fp16", ssim_weight: float = 0.0,
                   init: str | Path | None = None, sampler_steps: int = 0,
                   zero_start: bool = False, add_context: tuple[int, ...] = (),
                   on_log: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train a diffusion enhancer with :func:`cxrkit.train.train` and write its model directory.

    Args:
        hq_paths: HQ radiographs; split into training and validation patients.
        settings: the enhancer's architecture and formulation.
        config: the training loop's settings (``config.output_dir`` receives the model).
        pairs: how pairs are made (defaults of :class:`PairSettings`).
        lq_paths: explicit LQ images aligned with ``hq_paths``; else pairs come from ``preset``.
        command: the exact command line (for ``run.json``).
        weights_dtype: dtype of the saved weights: ``fp32``, ``bf16`` or ``fp16``.
        ssim_weight: weight of the SSIM term of :func:`diffusion_loss` (0: plain MSE).
        init: a model directory to start from (fine-tuning); its weights and architecture replace
            ``settings``' architecture, and ``run.json`` records its weights' hash and command.
        sampler_steps: ``N`` > 0 trains only at the timesteps an ``N``-step DDIM sampler visits
            (:func:`sampler_timesteps`; ``N`` = 1: the one-step regression of the residual), so a
            small model spends its capacity on the path it is sampled along; the model's default
            step count becomes ``N``. 0: every timestep.
        zero_start: the model's input at ``t = T - 1`` is 0 instead of noise, in training and
            (recorded in its settings) in sampling: with ``sampler_steps`` 1 a deterministic
            one-step model.
        add_context: widths of a :class:`~cxrkit.enhancer.model.DegradationEncoder` to add to
            the ``init`` model (zero-initialised output, so training starts from that model's
            behaviour); a new model takes its encoder from ``settings.context_channels``.
        on_log: progress callback (see :func:`cxrkit.train.train`).

    Returns:
        The training result; the model directory is ``config.output_dir``.

    Raises:
        ModelError: ``init`` is not an enhancer or has another scale than ``settings``.
    """
    from cxrkit.enhancer.inference import enhance
    from cxrkit.train import train

    pairs = pairs or PairSettings()
    if ssim_weight < 0:
        raise InputError(f"the SSIM weight must be >= 0, got {ssim_weight}")
    generator = torch.Generator().manual_seed(config.seed)
    if init is not None:
        model = fine_tune_start(init, settings.scale, add_context, generator=generator)
        settings = model.settings
    else:
        if add_context:
            settings = replace(settings, context_channels=tuple(add_context))
        model = Enhancer.new(settings, generator=generator)
    timesteps: tuple[int, ...] | None = None
    if sampler_steps:
        timesteps = sampler_timesteps(model.scheduler_config, sampler_steps)
        settings = replace(settings, default_steps=sampler_steps, default_sampler="ddim")
    settings = replace(settings, trained_steps=sampler_steps, zero_start=zero_start)
    model.settings = settings
    train_idx, val_idx = split_by_patient(hq_paths, pairs.val_fraction, seed=pairs.split_seed)
    hq = load_images(hq_paths)
    lq = load_images(lq_paths) if lq_paths is not None else None

    def subset(idx: list[int], crop: int, tone: float = 0.0) -> PairData:
        return PairData([hq[i] for i in idx], crop, settings.scale, pairs.preset, pairs.pixel_mm,
                        [lq[i] for i in idx] if lq is not None else None,
                        context=settings.context_crop if settings.context_channels else 0,
                        reference_tone=tone)

    data = subset(train_idx, pairs.crop, pairs.reference_tone)
    val_items = subset(val_idx[: pairs.val_count or None], pairs.crop).fixed(
        pairs.val_crop, seed=pairs.split_seed) if val_idx else []

    def validate(model: Any) -> dict[str, float]:
        def run(image: np.ndarray) -> np.ndarray:
            gen = torch.Generator().manual_seed(pairs.split_seed)
            return enhance(model, image, generator=gen, tile=pairs.val_tile)

        return evaluate_pairs(run, val_items)

    run_info = {
        "command": command, "enhancer": asdict(settings), "pairs": asdict(pairs),
        "loss": {"diffusion": "mse", "ssim_weight": ssim_weight,
                 "timesteps": list(timesteps) if timesteps else "all", "zero_start": zero_start},
        "init": init_record(init) if init is not None else None,
        "parameters": sum(p.numel() for p in model.parameters()),
        "data": {"train": files_sha256([hq_paths[i] for i in train_idx]),
                 "validation": files_sha256([hq_paths[i] for i in val_idx]),
                 "lq": files_sha256(lq_paths) if lq_paths is not None else None,
                 "split": "by patient (file-name prefix before '_')"},
    }
    def save(trained: torch.nn.Module, folder: Path) -> None:
        unwrap_model(trained, Enhancer).save_pretrained(folder, dtype=weights_dtype)

    loss = functools.partial(diffusion_loss, ssim_weight=ssim_weight, timesteps=timesteps,
                             zero_start=zero_start)
    return train(model, loss, data, config, validate=validate if val_items else None,
                 save_model=save, run_info=run_info, on_log=on_log)
