"""Training the enhancer: pairs made on the fly, a patient-wise split, and :func:`train_enhancer`.

A pair is ``hq`` ``(1, c, c)`` and ``lq_up`` ``(1, c, c)`` (the LQ crop bicubic-upsampled back to
the HQ size), float32 in [0, 1]. Degrading a crop equals degrading the whole image and then
cropping: the crop is taken with a ``margin`` of context (aligned to the scale) that covers the
blur kernels and the resampling filters, degraded, upsampled, and only then cut to size.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cxrkit.diffusion.models import (
    Enhancer,
    EnhancerSettings,
    bicubic_upsample,
    diffusion_loss,
    model_sha256,
    sampler_timesteps,
    unwrap_enhancer,
)
from cxrkit.errors import InputError, ModelError

if TYPE_CHECKING:
    from cxrkit.train import TrainConfig, TrainResult


def patient_id(path: str | Path) -> str:
    """The patient of a file: the name before the first ``_`` (NIH ``00000013_005.png`` → 13)."""
    return Path(path).name.split("_", 1)[0]


def split_by_patient(paths: Sequence[str | Path], val_fraction: float, *,
                     seed: int) -> tuple[list[int], list[int]]:
    """Indices of ``paths`` for training and validation, with no patient in both.

    Args:
        paths: image files; the patient is :func:`patient_id` of each.
        val_fraction: share of patients held out, in [0, 1).
        seed: shuffles the patients before the split.

    Returns:
        ``(train_indices, val_indices)``, each sorted.
    """
    patients = sorted({patient_id(p) for p in paths})
    order = np.random.default_rng(seed).permutation(len(patients))
    count = math.ceil(val_fraction * len(patients)) if val_fraction > 0 else 0
    if count >= len(patients):
        raise InputError(f"{len(patients)} patients are too few for a validation split",
                         hint="add images or lower --val-fraction")
    held = {patients[i] for i in order[:count]}
    train = [i for i, p in enumerate(paths) if patient_id(p) not in held]
    val = [i for i, p in enumerate(paths) if patient_id(p) in held]
    return train, val


def to_uint16(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` float in [0, 1] → uint16 (halves the memory of a float32 image cache)."""
    return np.round(np.clip(image, 0, 1) * 65535).astype(np.uint16)


@dataclass(frozen=True)
class PairData:
    """Pairs from HQ images: degraded on the fly by a preset, or cut from given LQ images.

    Attributes:
        images: HQ images, ``(H, W)`` uint16 (from :func:`to_uint16`).
        crop: HQ crop side in pixels (a multiple of ``scale``).
        scale: HQ size / LQ size.
        preset: a :data:`cxrkit.degrade.PRESETS` key, used when ``lq_images`` is None.
        pixel_mm: pixel pitch of the HQ images (for physical blur sizes).
        lq_images: explicit LQ images, ``(H/scale, W/scale)`` uint16, aligned with ``images``.
        margin: context around a crop, HQ pixels (covers the preset's blur kernels).
        context: side, in LQ pixels, of the view of the whole LQ image that a degradation encoder
            reads (``lq_context``); the training crop lies inside it and both come from the same
            degradation. 0: no view.
    """

    images: Sequence[np.ndarray]
    crop: int
    scale: int = 2
    preset: str = "drr-like"
    pixel_mm: float = 0.35
    lq_images: Sequence[np.ndarray] | None = None
    margin: int = 32
    context: int = 0

    def __post_init__(self) -> None:
        if not self.images:
            raise InputError("no training images")
        if self.crop % self.scale or self.margin % self.scale:
            raise InputError(f"crop {self.crop} must be a multiple of the scale {self.scale}")

    @functools.cached_property
    def view_side(self) -> int:
        """HQ side of the degradation encoder's view: ``context·scale``, or less where an image
        is smaller (one side for every sample, so that views stack into a batch)."""
        s = self.scale
        smallest = min(min(H - H % s, W - W % s) for H, W in (im.shape for im in self.images))
        return min(self.context * s, smallest)

    def sample(self, generator: np.random.Generator) -> dict[str, torch.Tensor]:
        """One random pair: a random image, crop position and degradation from ``generator``
        (with ``context``: a random view, and the crop at a random place inside it)."""
        index = int(generator.integers(len(self.images)))
        H, W = self.images[index].shape
        c, s = min(self.crop, H - H % self.scale), self.scale
        if self.context:
            K = self.view_side
            c = min(c, K)
            ky = int(generator.integers(0, (H - K) // s + 1)) * s
            kx = int(generator.integers(0, (W - K) // s + 1)) * s
            y = ky + int(generator.integers(0, (K - c) // s + 1)) * s
            x = kx + int(generator.integers(0, (K - c) // s + 1)) * s
            return self.pair(index, y, x, generator, crop=c, view=(ky, kx))
        y = int(generator.integers(0, (H - c) // s + 1)) * s
        x = int(generator.integers(0, (W - c) // s + 1)) * s
        return self.pair(index, y, x, generator, crop=c)

    def pair(self, index: int, y: int, x: int, generator: np.random.Generator, *,
             crop: int | None = None, view: tuple[int, int] | None = None
             ) -> dict[str, torch.Tensor]:
        """The pair of image ``index`` at HQ offset ``(y, x)`` (multiples of the scale).

        With ``view`` (its HQ offset; side :attr:`view_side`, containing the crop) the region
        around the view is degraded once, and the pair and the view are cut from it.

        Returns:
            ``hq``, ``lq_up``: ``(1, c, c)`` float32 in [0, 1]; ``lq``: ``(1, c/s, c/s)``; with
            ``view`` also ``lq_context`` ``(1, K/s, K/s)``.
        """
        from cxrkit.degrade import degrade

        hq_full = self.images[index]
        H, W = hq_full.shape
        c, s, m = crop or self.crop, self.scale, self.margin
        ch, cw = min(c, H - y), min(c, W - x)
        if view is None:
            y0, x0 = max(0, y - m), max(0, x - m)
            y1, x1 = min(H - H % s, y + ch + m), min(W - W % s, x + cw + m)
        else:
            K = self.view_side
            y0, x0 = max(0, view[0] - m), max(0, view[1] - m)
            y1, x1 = min(H - H % s, view[0] + K + m), min(W - W % s, view[1] + K + m)
        if self.lq_images is not None:
            lq = self.lq_images[index][y0 // s : y1 // s, x0 // s : x1 // s] / np.float32(65535)
        else:
            region = hq_full[y0:y1, x0:x1].astype(np.float32) / np.float32(65535)
            lq = degrade(region, self.preset, scale=s, pixel_mm=self.pixel_mm,
                         generator=generator).image  # (h/s, w/s)
        up = bicubic_upsample(torch.from_numpy(np.ascontiguousarray(lq, np.float32)), s)
        oy, ox = y - y0, x - x0
        hq = torch.from_numpy(hq_full[y : y + ch, x : x + cw].astype(np.float32) / 65535)
        out = {"hq": hq[None], "lq_up": up[None, oy : oy + ch, ox : ox + cw].contiguous(),
               "lq": torch.from_numpy(np.ascontiguousarray(
                   lq[oy // s : (oy + ch) // s, ox // s : (ox + cw) // s], np.float32))[None]}
        if view is not None:
            vy, vx, k = (view[0] - y0) // s, (view[1] - x0) // s, self.view_side // s
            out["lq_context"] = torch.from_numpy(np.ascontiguousarray(
                lq[vy : vy + k, vx : vx + k], np.float32))[None]
        return out

    def fixed(self, crop: int, *, seed: int) -> list[dict[str, torch.Tensor]]:
        """One deterministic centre-crop pair per image (``crop`` 0: the whole image)."""
        items = []
        for index, image in enumerate(self.images):
            H, W = image.shape
            c = min(crop or max(H, W), H - H % self.scale, W - W % self.scale)
            y = (H - c) // 2 // self.scale * self.scale
            x = (W - c) // 2 // self.scale * self.scale
            rng = np.random.default_rng([seed, index])
            items.append(self.pair(index, y, x, rng, crop=c))
        return items


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


def files_sha256(paths: Sequence[str | Path]) -> dict[str, str]:
    """``{file name: sha256}`` of the training data (recorded in ``run.json``)."""
    out = {}
    for p in paths:
        out[Path(p).name] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


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
    from cxrkit.io import read_radiograph

    images = []
    for p in paths:
        rg = read_radiograph(p)
        if rg.kind != "display":
            raise InputError(f"the enhancer trains on display images, not {rg.kind!r}", path=str(p))
        images.append(to_uint16(rg.pixels))
    return images


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
        val_tile: tile side used when validating (see :func:`cxrkit.diffusion.enhance`).
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
        add_context: widths of a :class:`~cxrkit.diffusion.models.DegradationEncoder` to add to
            the ``init`` model (zero-initialised output, so training starts from that model's
            behaviour); a new model takes its encoder from ``settings.context_channels``.
        on_log: progress callback (see :func:`cxrkit.train.train`).

    Returns:
        The training result; the model directory is ``config.output_dir``.

    Raises:
        ModelError: ``init`` is not an enhancer or has another scale than ``settings``.
    """
    from cxrkit.diffusion.sampling import enhance
    from cxrkit.train import train

    pairs = pairs or PairSettings()
    if ssim_weight < 0:
        raise InputError(f"the SSIM weight must be >= 0, got {ssim_weight}")
    generator = torch.Generator().manual_seed(config.seed)
    if init is not None:
        model = Enhancer.from_pretrained(init).requires_grad_(True).train()
        if model.settings.scale != settings.scale:
            raise ModelError(f"the model to start from has scale {model.settings.scale}, not "
                             f"{settings.scale}", path=str(init))
        settings = model.settings
        if add_context:
            model = model.with_context(add_context, settings.context_crop, generator=generator)
            model.requires_grad_(True).train()
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

    def subset(idx: list[int], crop: int) -> PairData:
        return PairData([hq[i] for i in idx], crop, settings.scale, pairs.preset, pairs.pixel_mm,
                        [lq[i] for i in idx] if lq is not None else None,
                        context=settings.context_crop if settings.context_channels else 0)

    data = subset(train_idx, pairs.crop)
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
        unwrap_enhancer(trained).save_pretrained(folder, dtype=weights_dtype)

    loss = functools.partial(diffusion_loss, ssim_weight=ssim_weight, timesteps=timesteps,
                             zero_start=zero_start)
    return train(model, loss, data, config, validate=validate if val_items else None,
                 save_model=save, run_info=run_info, on_log=on_log)
