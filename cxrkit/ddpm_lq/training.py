"""Training of DDPM-LQ (wired to :func:`cxrkit.train.train` by ``cxrkit train-ddpm-lq``): the
diffusion loss, the img2img and two-stage runs of :func:`train_ddpm_lq`, and their validation on
held-out images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrkit.data.images import load_display, resize, resize_short_side
from cxrkit.data.splits import files_sha256, split_by_patient, split_files
from cxrkit.ddpm_lq.data import ConditionedCrops, HeldOut, LQCrops, _centre
from cxrkit.ddpm_lq.degrader import degrade_lq
from cxrkit.ddpm_lq.model import DDPM_LQ_KIND, DdpmLQ, DdpmLQSettings
from cxrkit.diffusion.denoiser import train_alphas_cumprod
from cxrkit.errors import InputError
from cxrkit.train import unwrap_model

if TYPE_CHECKING:
    from cxrkit.train import TrainConfig, TrainResult


def ddpm_lq_loss(model: nn.Module, batch: dict[str, torch.Tensor],
                 generators: Sequence[torch.Generator]) -> torch.Tensor:
    """MSE between the model output and the true ``ε`` (or ``v``) at ``t < max_train_timestep``.

    Args:
        model: a :class:`DdpmLQ` (possibly DDP-wrapped).
        batch: ``lq`` ``(B, 1, h, w)`` in [0, 1]; ``cond`` ``(B, 1, h, w)`` HQ in [0, 1] and
            ``has_cond`` ``(B,)`` 0/1 (zeroed condition where 0); the last two are ignored by
            the img2img route.
        generators: one CPU generator per sample (its timestep and noise).

    Returns:
        The scalar loss.
    """
    inner = unwrap_model(model, DdpmLQ)
    s = inner.settings
    x0 = 2 * batch["lq"] - 1  # (B, 1, h, w)
    t = torch.stack([torch.randint(0, s.max_train_timestep, (), generator=g) for g in generators])
    noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in generators])
    noise, t = noise.to(x0.device), t.to(x0.device)
    alphas = train_alphas_cumprod(inner.scheduler_config).to(x0.device)
    a = alphas[t].sqrt().view(-1, 1, 1, 1)
    b = (1 - alphas[t]).sqrt().view(-1, 1, 1, 1)
    x_t = a * x0 + b * noise
    target = a * noise - b * x0 if s.prediction_type == "v_prediction" else noise
    cond = None
    if s.conditional:
        cond = (2 * batch["cond"] - 1) * batch["has_cond"].view(-1, 1, 1, 1)
    return F.mse_loss(model(x_t, cond, t).float(), target)


@dataclass(frozen=True)
class StageTwo:
    """How the two-stage route's stage 2 is trained.

    Attributes:
        hq_paths: HQ radiographs (the condition).
        lq_paths: LQ images aligned with ``hq_paths`` (e.g. ``cxrkit degrade`` outputs: records'
            ``path`` for their ``reference``), or None to use ``preset``.
        steps: fine-tuning steps (stage 1 runs ``config.steps``).
        preset: physics preset that makes the paired LQ when ``lq_paths`` is None.
        p_uncond: share of zero-condition real-LQ samples.
    """

    hq_paths: Sequence[str | Path]
    lq_paths: Sequence[str | Path] | None = None
    steps: int = 1000
    preset: str = "drr-like"
    p_uncond: float = 0.1


def high_frequency_energy(image: np.ndarray) -> float:
    """Mean squared 4-neighbour Laplacian of ``(H, W)`` (interior pixels): fine texture and
    noise. DDPM-LQ should move it from the HQ domain's value toward the LQ domain's."""
    x = np.asarray(image, np.float64)
    lap = 4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:]
    return float(np.mean(lap**2))


def train_ddpm_lq(lq_paths: Sequence[str | Path], settings: DdpmLQSettings,
                  config: TrainConfig, *, crop: int = 128, stage_two: StageTwo | None = None,
                  hq_paths: Sequence[str | Path] | None = None, held_out: HeldOut | None = None,
                  command: str = "",
                  on_log: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train a DDPM-LQ model with :func:`cxrkit.train.train` and write its model directory.

    ``img2img``: one run of ``config.steps`` on real LQ crops. ``two-stage``: stage 1 as above
    into ``output_dir/stage1``, then stage 2 (``stage_two.steps``) from its weights into
    ``output_dir``. A two-stage run stopped early (``config.time_limit_s``, SIGTERM) in stage 1
    returns there; ``resume="latest"`` continues whichever stage it stopped in (a finished
    stage 1 is read back from its folder). Both split their inputs as ``held_out`` says and
    validate (into ``run.json``'s ``validation``) on centre crops of held-out images:

    - ``loss``: the diffusion loss at fixed crops, timesteps and noises of held-out LQ
      (stage 2: of held-out pairs, conditioned on their HQ); stage 2 adds ``loss_lq``, the
      zero-condition loss on held-out real LQ (the stage-1 prior it should keep);
    - with HQ images (stage 2; img2img given ``hq_paths``), held-out HQ crops are degraded the
      way ``cxrkit degrade --method ddpm`` does (the model's default strength and steps):
      ``ssim_to_hq``, the SSIM of each output against its own HQ (pairedness), and
      ``ssim_to_other_hq`` against another held-out HQ (chance level); ``hf_ratio``, the
      high-frequency energy (:func:`high_frequency_energy`) of the outputs over that of
      held-out real LQ (1: the LQ domain's fine texture), beside ``hf_ratio_hq``, the same ratio
      of the HQ inputs (where the outputs started).

    Args:
        lq_paths: real LQ images (DRRs).
        settings: the model's settings.
        config: the loop's settings; ``output_dir`` receives the model.
        crop: training and validation crop side (a multiple of ``settings.multiple``).
        stage_two: required for the two-stage route.
        hq_paths: img2img only: HQ radiographs for the sampled measures (never trained on).
        held_out: the validation split and its sizes (defaults of :class:`HeldOut`).
        command: the exact command line (for ``run.json``).
        on_log: progress callback.

    Returns:
        The result of the last run.

    Raises:
        InputError: a bad crop, a two-stage route without ``stage_two``, or too few HQ patients
            for the held-out fraction.
    """
    from cxrkit.train import CHECKPOINTS, run_finished, train

    if crop % settings.multiple:
        raise InputError(f"crop {crop} must be a multiple of {settings.multiple}")
    if settings.conditional and stage_two is None:
        raise InputError("the two-stage route needs HQ images for stage 2 (--hq)")
    if settings.conditional and hq_paths is not None:
        raise InputError("the two-stage route takes its HQ images from stage_two")
    held_out = held_out or HeldOut()
    model = DdpmLQ.new(settings, generator=torch.Generator().manual_seed(config.seed))
    lq_train, lq_val = split_files(len(lq_paths), held_out.fraction, seed=config.seed)
    hq_all = stage_two.hq_paths if stage_two is not None else hq_paths
    hq_train: list[int] = []
    hq_val: list[int] = []
    if hq_all is not None:
        hq_train, hq_val = split_by_patient(hq_all, held_out.fraction, seed=config.seed)
    real_lq = [resize_short_side(im, settings.image_size) for im in load_display(lq_paths)]
    train_lq = [real_lq[i] for i in lq_train]
    val_lq = [real_lq[i] for i in lq_val or lq_train]
    info: dict[str, Any] = {
        "command": command, "kind": DDPM_LQ_KIND, "ddpm_lq": asdict(settings), "crop": crop,
        "parameters": sum(p.numel() for p in model.parameters()),
        "held_out": asdict(held_out),
        "data": {"lq": files_sha256([lq_paths[i] for i in lq_train]),
                 "lq_validation": files_sha256([lq_paths[i] for i in lq_val]),
                 "split": "HQ by patient (file-name prefix before '_'), LQ by file",
                 "validation_on_training_images": not lq_val
                 or (hq_all is not None and not hq_val)}}

    def save(trained: nn.Module, folder: Path) -> None:
        unwrap_model(trained, DdpmLQ).save_pretrained(folder)

    first = LQCrops(train_lq, crop)
    if not settings.conditional:
        hq = []
        if hq_all is not None:
            hq = [resize_short_side(im, settings.image_size)
                  for im in load_display([hq_all[i] for i in hq_val or hq_train])]
            info["data"]["hq_validation"] = files_sha256([hq_all[i] for i in hq_val])
        check = _validator(LQCrops(val_lq, crop), None, val_lq, hq, crop, held_out, config.seed)
        return train(model, ddpm_lq_loss, first, config, validate=check,
                     save_model=save, run_info=info, on_log=on_log)
    assert stage_two is not None
    stage1 = replace(config, output_dir=str(Path(config.output_dir) / "stage1"))
    check = _validator(LQCrops(val_lq, crop), None, val_lq, [], crop, held_out, config.seed)
    if config.resume == "latest" and run_finished(stage1.output_dir):
        start = DdpmLQ.from_pretrained(stage1.output_dir)  # stage 1's EMA weights, as saved
    else:
        result = train(model, ddpm_lq_loss, first, stage1, validate=check,
                       save_model=save, run_info={**info, "stage": 1}, on_log=on_log)
        if result.stopped:  # stage 1 did not finish: stage 2 waits for a resumed run
            return result
        start = result.model
    hq = [resize_short_side(im, settings.image_size) for im in load_display(stage_two.hq_paths)]
    lq = None
    if stage_two.lq_paths is not None:
        lq = [resize(im, h.shape) for im, h in zip(load_display(stage_two.lq_paths), hq,
                                                    strict=True)]

    def pairs(idx: list[int], real: list[np.ndarray], p_uncond: float) -> ConditionedCrops:
        return ConditionedCrops([hq[i] for i in idx], [lq[i] for i in idx] if lq else None,
                                real, crop, stage_two.preset, p_uncond)

    val_idx = hq_val or hq_train
    check = _validator(pairs(val_idx, val_lq, 0.0), LQCrops(val_lq, crop), val_lq,
                       [hq[i] for i in val_idx], crop, held_out, config.seed)
    info["data"].update(
        hq=files_sha256([stage_two.hq_paths[i] for i in hq_train]),
        hq_validation=files_sha256([stage_two.hq_paths[i] for i in hq_val]),
        pairs_lq=files_sha256(stage_two.lq_paths) if stage_two.lq_paths else None)
    # --resume latest before stage 2 had a checkpoint (stopped in stage 1): stage 2 starts afresh

    fresh = config.resume == "latest" and not any(
        (Path(config.output_dir) / CHECKPOINTS).glob("checkpoint-*"))
    stage2 = replace(config, steps=stage_two.steps, resume=None if fresh else config.resume)
    start = start.requires_grad_(True).train()  # the EMA copy comes back frozen
    return train(start, ddpm_lq_loss, pairs(hq_train, train_lq, stage_two.p_uncond),
                 stage2, validate=check, save_model=save,
                 run_info={**info, "stage": 2, "stage_two": {
                     "steps": stage_two.steps, "preset": None if lq else stage_two.preset,
                     "p_uncond": stage_two.p_uncond, "stage1": stage1.output_dir}},
                 on_log=on_log)


def _validator(data: Any, prior: LQCrops | None, real_lq: Sequence[np.ndarray],
               hq_images: Sequence[np.ndarray], crop: int, held_out: HeldOut,
               seed: int) -> Callable[[nn.Module], dict[str, float]]:
    """``model → metrics`` on held-out data (see :func:`train_ddpm_lq`).

    Args:
        data: the samples of ``loss`` (:class:`LQCrops` or :class:`ConditionedCrops`).
        prior: the zero-condition samples of ``loss_lq`` (stage 2), or None.
        real_lq: held-out real LQ images, the reference of ``hf_ratio``.
        hq_images: held-out HQ images to degrade for the sampled measures (none: skip them).
        crop: side of the centre crops that are degraded and measured.
        held_out: sizes.
        seed: fixes the loss samples, their timesteps and noises, and the sampling noise.
    """
    from cxrkit.metrics import ssim

    def fixed(source: Any) -> dict[str, torch.Tensor]:
        samples = [source.sample(np.random.default_rng([seed, 10**6, i]))
                   for i in range(held_out.loss_samples)]
        return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}

    batches = {"loss": fixed(data), **({"loss_lq": fixed(prior)} if prior else {})}
    hq = [_centre(im, crop) for im in hq_images[: held_out.count]]
    hf_lq = float(np.mean([high_frequency_energy(_centre(im, crop)) for im in real_lq]))

    def validate(model: nn.Module) -> dict[str, float]:
        inner = unwrap_model(model, DdpmLQ)
        device = next(inner.parameters()).device
        metrics = {}
        for name, batch in batches.items():
            gens = [torch.Generator().manual_seed(seed + i) for i in range(held_out.loss_samples)]
            metrics[name] = float(ddpm_lq_loss(inner, {k: v.to(device) for k, v in batch.items()},
                                               gens))
        if not hq:
            return metrics
        s = inner.settings
        outs = [degrade_lq(inner, x, strength=s.default_strength, steps=s.default_steps,
                           generator=torch.Generator().manual_seed(seed + i))
                for i, x in enumerate(hq)]
        metrics["ssim_to_hq"] = float(np.mean([ssim(y, x) for x, y in zip(hq, outs,
                                                                           strict=True)]))
        if len(hq) > 1:
            metrics["ssim_to_other_hq"] = float(np.mean([
                ssim(y, x) for x, y in zip(hq[1:] + hq[:1], outs, strict=True)]))
        metrics["hf_ratio"] = float(np.mean([high_frequency_energy(y) for y in outs]) / hf_lq)
        metrics["hf_ratio_hq"] = float(np.mean([high_frequency_energy(x) for x in hq]) / hf_lq)
        return metrics

    return validate
