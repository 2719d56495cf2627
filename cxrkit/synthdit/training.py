"""Training of the synthesis DiT (wired to :func:`cxrkit.train.train` by ``cxrkit
train-synth``): the mask-weighted x₀ loss, the two stages of :func:`train_synth`, and their
validation on held-out patches against two fill-in baselines.

**Loss.** ``x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε`` with ``t`` uniform on the cosine schedule; the model
predicts ``x₀`` from ``[x_t, context, mask]``; the loss is the weighted mean squared error
``Σ w (x̂₀ − x₀)² / Σ w`` with ``w = 1`` on the mask's support grown by 2 px (the nodule and its
edge) and ``w =`` :data:`OUTSIDE_WEIGHT` elsewhere. LeFusion computes the loss only inside the
lesion; the small outside weight keeps the known context cheap to reproduce without letting it
dominate (the context is replaced by the true pixels when sampling anyway).

**Weighting over timesteps** (``weighting``): ``x0`` weighs every timestep alike, which spends
almost nothing on the lowest noise levels, where the error left is the radiograph's fine grain.
``v`` weighs each sample by ``1/(1−ᾱ_t) = SNR + 1`` (the x₀ error seen as a v error: JiT's
x-prediction with a v-loss, Li & He 2025, https://arxiv.org/abs/2511.13720), capped at
:data:`V_WEIGHT_CAP` and divided by its mean over the schedule so the loss keeps the x₀ loss's
scale. The default is ``x0`` for either prediction: a v-predicting model trained with the v
weighting gives worse regression estimates (tiny test model: one-step masked MSE 0.0026
against 0.0014 with ``x0``, worse than filling the mask with its surroundings' mean; at the
shipped scale 0.0019 against 0.0018, with more token seams). Measured (session 12): fine-tuning an
x₀-predicting model 800 steps with the v weighting (and a small convolutional refiner after
the unpatchify, since removed) lowered its error on a clean input (t = 0) from 4.7e-4 to 3.5e-4
but left its token seams at 4.1×; the skip of ``prediction="v"`` is what returns a clean input
(:mod:`cxrkit.synthdit.model`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrkit.errors import InputError
from cxrkit.synthdit.data import (
    NodulePatches,
    RadiographPatches,
    load_radiographs,
    nodule_patches,
    support,
)
from cxrkit.synthdit.inference import inpaint_patches
from cxrkit.synthdit.model import SYNTH_DIT_KIND, WEIGHTS_NAME, SynthDiT, SynthDiTSettings
from cxrkit.train import unwrap_model

if TYPE_CHECKING:
    from cxrkit.train import TrainConfig, TrainResult

OUTSIDE_WEIGHT = 0.1
"""Loss weight of pixels outside the (2 px grown) mask, relative to 1 inside."""
STAGES = ("pretrain", "finetune")
LOSS_WEIGHTINGS = ("x0", "v")
"""Weightings of the x₀ loss over timesteps (module docstring)."""
V_WEIGHT_CAP = 100.0
"""The ``v`` weighting's cap on ``1/(1−ᾱ_t)`` (reached below noise SD 0.1, the lowest ~5 %)."""


def timestep_weights(alphas_cumprod: torch.Tensor, weighting: str) -> torch.Tensor:
    """The loss weight of every training timestep, mean 1 over the schedule.

    Args:
        alphas_cumprod: ``(T,)`` ᾱ of the training schedule.
        weighting: one of :data:`LOSS_WEIGHTINGS`.

    Raises:
        InputError: an unknown weighting.
    """
    if weighting == "x0":
        return torch.ones_like(alphas_cumprod)
    if weighting == "v":
        raw = (1 / (1 - alphas_cumprod).clamp_min(1e-12)).clamp_max(V_WEIGHT_CAP)
        return raw / raw.mean()
    raise InputError(f"unknown loss weighting {weighting!r}",
                     hint=f"use one of {', '.join(LOSS_WEIGHTINGS)}")


def loss_weights(mask: torch.Tensor) -> torch.Tensor:
    """``(B, 1, h, w)`` weights: 1 on the support grown by 2 px, :data:`OUTSIDE_WEIGHT` else."""
    grown = F.max_pool2d(support(mask).float(), 5, stride=1, padding=2) > 0
    return torch.where(grown, 1.0, OUTSIDE_WEIGHT)


def synth_loss(model: nn.Module, batch: dict[str, torch.Tensor],
               generators: Sequence[torch.Generator], *, weighting: str = "x0"
               ) -> torch.Tensor:
    """The mask-weighted x₀ loss (module docstring).

    Args:
        model: a :class:`SynthDiT` (possibly DDP-wrapped).
        batch: ``patch`` ``(B, 1, h, w)`` in [0, 1] and ``mask`` ``(B, 1, h, w)`` in [0, 1].
        generators: one CPU generator per sample (its timestep and noise).
        weighting: the weighting over timesteps, one of :data:`LOSS_WEIGHTINGS`.
    """
    inner = unwrap_model(model, SynthDiT)
    s = inner.settings
    x0 = 2 * batch["patch"] - 1
    mask = batch["mask"]
    t = torch.stack([torch.randint(0, s.num_train_timesteps, (), generator=g)
                     for g in generators]).to(x0.device)
    noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in generators])
    schedule = inner.alphas_cumprod().to(x0.device)
    alphas = schedule[t].view(-1, 1, 1, 1)
    x_t = alphas.sqrt() * x0 + (1 - alphas).sqrt() * noise.to(x0.device)
    context = torch.where(support(mask), torch.zeros_like(x0), x0)
    pred = model(x_t, context, mask, t)
    w = loss_weights(mask)
    per_sample = timestep_weights(schedule, weighting)[t].view(-1, 1, 1, 1)
    return (per_sample * w * (pred.float() - x0) ** 2).sum() / w.sum()


def masked_mse(output: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean squared error (display units, [0, 1]) over every pixel of the masks' supports."""
    inside = support(mask)
    return float(((output - truth)[inside] ** 2).mean())


def mean_fill(patches: torch.Tensor, masks: torch.Tensor, ring_px: int = 4) -> torch.Tensor:
    """Baseline: each support filled with the mean of the known pixels within ``ring_px`` of
    it (the whole known patch where that ring is empty)."""
    inside = support(masks)
    ring = (F.max_pool2d(inside.float(), 2 * ring_px + 1, stride=1, padding=ring_px) > 0) \
        & ~inside
    out = patches.clone()
    for i in range(len(patches)):
        around = ring[i] if ring[i].any() else ~inside[i]
        out[i][inside[i]] = patches[i][around].mean()
    return out


def blur_fill(patches: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Baseline: normalised Gaussian convolution of the known pixels (σ = half the mask's
    equivalent radius + 1 px), written into each support: a smooth interpolation of the
    surroundings."""
    from scipy import ndimage

    inside = support(masks)
    out = patches.clone()
    for i in range(len(patches)):
        known = (~inside[i, 0]).numpy().astype(np.float64)
        image = patches[i, 0].numpy().astype(np.float64)
        sigma = 0.5 * float(np.sqrt(inside[i].sum().item() / np.pi)) + 1.0
        num = ndimage.gaussian_filter(image * known, sigma, mode="nearest")
        den = ndimage.gaussian_filter(known, sigma, mode="nearest")
        fill = torch.from_numpy((num / np.maximum(den, 1e-8)).astype(np.float32))
        out[i, 0][inside[i, 0]] = fill[inside[i, 0]]
    return out


@dataclass(frozen=True)
class HeldOut:
    """How validation data are held out and measured.

    Stage 1 holds out ``fraction`` of the radiographs' patients (file-name prefix before
    ``_``), stage 2 of the background radiographs' patients; ``samples`` fixed held-out
    (patch, mask) pairs are measured.

    Attributes:
        fraction: share of patients held out, in [0, 1); 0 (or one patient) validates on
            training data, which ``run.json`` says.
        samples: fixed held-out patches measured.
    """

    fraction: float = 0.1
    samples: int = 16

    def __post_init__(self) -> None:
        if not 0 <= self.fraction < 1 or self.samples < 1:
            raise InputError("the validation fraction must be in [0, 1), samples ≥ 1")


def validator(data: Any, held_out: HeldOut, seed: int
              ) -> Callable[[nn.Module], dict[str, float]]:
    """``model → metrics`` on ``held_out.samples`` fixed samples of ``data``:

    - ``loss``: :func:`synth_loss` at fixed timesteps and noises;
    - ``mse_1step``: masked MSE of the one-step inpainting (the model's x₀ estimate from pure
      noise and the context: its regression estimate of the mask's content);
    - ``mse_sampled``: masked MSE of the default sampler's inpainting (a sample, so it pays for
      its variance: a perfect sampler scores twice the posterior variance);
    - ``mse_mean_fill`` and ``mse_blur_fill``: the two baselines (:func:`mean_fill`,
      :func:`blur_fill`) on the same patches.
    """
    samples = [data.sample(np.random.default_rng([seed, 10**6, i]))
               for i in range(held_out.samples)]
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    patches, masks = batch["patch"], batch["mask"]
    baselines = {"mse_mean_fill": masked_mse(mean_fill(patches, masks), patches, masks),
                 "mse_blur_fill": masked_mse(blur_fill(patches, masks), patches, masks)}

    def validate(model: nn.Module) -> dict[str, float]:
        inner = unwrap_model(model, SynthDiT)
        device = next(inner.parameters()).device
        gens = [torch.Generator().manual_seed(seed + i) for i in range(held_out.samples)]
        loss = float(synth_loss(inner, {k: v.to(device) for k, v in batch.items()},
                                gens).detach())
        one = inpaint_patches(inner, patches, masks, steps=1, sampler="ddim",
                              generator=torch.Generator().manual_seed(seed)).cpu()
        sampled = inpaint_patches(inner, patches, masks,
                                  generator=torch.Generator().manual_seed(seed)).cpu()
        return {"loss": loss, "mse_1step": masked_mse(one, patches, masks),
                "mse_sampled": masked_mse(sampled, patches, masks), **baselines}

    return validate


def train_synth(stage: str, settings: SynthDiTSettings, config: TrainConfig, *,
                images: Sequence[str | Path] = (), records: Sequence[dict[str, Any]] = (),
                init: str | Path | None = None, held_out: HeldOut | None = None,
                loss_weighting: str = "x0", command: str = "",
                on_log: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train the synthesis DiT with :func:`cxrkit.train.train` and write its model folder
    (``config.json``, ``diffusion_pytorch_model.safetensors``, ``run.json``).

    Args:
        stage: ``pretrain`` (radiograph crops with random masks, from ``images``) or
            ``finetune`` (nodule windows of synth ``records``).
        settings: the architecture (ignored with ``init``: the initial model's is kept).
        config: the loop's settings; ``output_dir`` receives the model.
        images: stage 1: display radiographs.
        records: stage 2: ``cxrkit synth`` records.
        init: a model folder to start from (stage 2 from stage 1), or None for fresh weights.
        loss_weighting: the loss's weighting over timesteps (:data:`LOSS_WEIGHTINGS`).
        held_out: the validation split and size (defaults of :class:`HeldOut`).
        command: the exact command line (for ``run.json``).
        on_log: progress callback.

    Raises:
        InputError: an unknown stage, or no data for it.
    """
    from cxrkit.data.splits import files_sha256, split_by_patient, split_groups
    from cxrkit.files import file_sha256
    from cxrkit.train import train

    if stage not in STAGES:
        raise InputError(f"stage must be one of {STAGES}, got {stage!r}")
    held_out = held_out or HeldOut()
    if loss_weighting not in LOSS_WEIGHTINGS:  # fails before anything loads
        raise InputError(f"unknown loss weighting {loss_weighting!r}",
                         hint=f"use one of {', '.join(LOSS_WEIGHTINGS)}")
    if init is not None:
        model = SynthDiT.load(init).requires_grad_(True).train()
        settings = model.settings
    else:
        model = SynthDiT.new(settings, generator=torch.Generator().manual_seed(config.seed))
    data_info: dict[str, Any]
    if stage == "pretrain":
        if not images:
            raise InputError("stage 1 (pretrain) needs radiographs")
        train_idx, val_idx = split_by_patient(images, held_out.fraction, seed=config.seed)
        loaded = load_radiographs(images, settings.pixel_mm)
        data: Any = RadiographPatches([loaded[i] for i in train_idx], settings.patch_px,
                                      settings.pixel_mm)
        check: Any = RadiographPatches([loaded[i] for i in val_idx or train_idx],
                                       settings.patch_px, settings.pixel_mm)
        data_info = {"images": files_sha256([images[i] for i in train_idx]),
                     "images_validation": files_sha256([images[i] for i in val_idx]),
                     "masks": "random lobulated ellipses, 3-30 mm, half soft (thickness), "
                              "half binary"}
    else:
        if not records:
            raise InputError("stage 2 (finetune) needs cxrkit synth records")
        patches = nodule_patches(records, settings.patch_px, settings.pixel_mm)
        train_idx, val_idx = split_groups([p.group for p in patches], held_out.fraction,
                                          seed=config.seed, keep_one=True)
        data = NodulePatches([patches[i] for i in train_idx])
        check = NodulePatches([patches[i] for i in val_idx or train_idx])
        paths = sorted({str(r["path"]) for r in records if r.get("nodule")})
        data_info = {"records": len(records), "patches": len(train_idx),
                     "patches_validation": len(val_idx),
                     "images": files_sha256(paths),
                     "characteristics": [p.attributes for p in patches]}
    val_on_train = not val_idx
    info: dict[str, Any] = {
        "command": command, "kind": SYNTH_DIT_KIND, "stage": stage,
        "synth_dit": asdict(settings),
        "parameters": sum(p.numel() for p in model.parameters()),
        "init": None if init is None else {"path": str(init), "sha256": file_sha256(
            Path(init) / WEIGHTS_NAME)},
        "loss": {"target": "x0", "inside_weight": 1.0, "outside_weight": OUTSIDE_WEIGHT,
                 "inside": "mask support grown by 2 px", "timestep_weighting": loss_weighting,
                 **({"v_weight_cap": V_WEIGHT_CAP} if loss_weighting == "v" else {})},
        "held_out": asdict(held_out),
        "data": {**data_info, "split": "by patient (file-name prefix before '_')",
                 "validation_on_training_data": val_on_train}}

    def save(trained: nn.Module, folder: Path) -> None:
        unwrap_model(trained, SynthDiT).save_pretrained(folder)

    loss = functools.partial(synth_loss, weighting=loss_weighting)
    return train(model, loss, data, config, validate=validator(check, held_out, config.seed),
                 save_model=save, run_info=info, on_log=on_log)
