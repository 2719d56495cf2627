"""DDPM-LQ: learned HQ → LQ degradation with a diffusion model of the LQ domain (real DRRs).

Two routes, selected by :attr:`DdpmLQSettings.route`:

- ``img2img`` (Yang, Ren, Xie & Zhang, "Synthesizing realistic image restoration training pairs:
  a diffusion approach", https://arxiv.org/abs/2303.06994): an *unconditional* DDPM trained on
  real LQ images only, on the low-noise part of the schedule (``t < max_train_timestep``). To
  degrade, the HQ image is noised to ``t = strength·T`` (strength ≤ 0.25 by default) and denoised
  (DDIM): the low strength keeps the anatomy, the LQ prior supplies the look. No pairs needed.
- ``two-stage`` (DiffusionXRay, Goyal, Mittal et al. 2025, https://arxiv.org/abs/2603.01686,
  ``qureai/DiffusionXray``): stage 1 trains the 2-channel model ``[x_t, cond]`` on real LQ images
  with the condition channel zeroed (instead of the repository's two-noise trick); stage 2
  fine-tunes it on (HQ, LQ) pairs with ``cond = HQ``, keeping a share of zero-condition LQ samples
  so the LQ prior stays. To degrade, sample the LQ conditioned on the HQ, from pure noise
  (strength 1) or from the noised HQ.

The network is the enhancer's diffusers ``UNet2DModel`` behind a pixel-unshuffle (see
:mod:`cxrkit.diffusion.models`), under a cosine schedule with ε- or v-prediction; sampling uses
the written-out loop of :func:`cxrkit.diffusion.sampling.sample` pieces (``make_scheduler``).
Images inside are ``(B, 1, H, W)`` in [-1, 1]; the public functions take display radiographs
``(H, W)`` float32 in [0, 1], bone bright.

A model directory (diffusers ``save_pretrained`` layout plus cxrkit's config)::

    config.json         DdpmLQSettings (with "kind": "ddpm-lq")
    model_index.json    diffusers component list
    unet/               config.json + diffusion_pytorch_model.safetensors
    scheduler/          scheduler_config.json
    run.json            how it was trained (written by :mod:`cxrkit.train`)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrkit.errors import InputError, ModelError
from cxrkit.munit import load_display, resize, resize_short_side

if TYPE_CHECKING:
    from cxrkit.train import TrainConfig, TrainResult

DDPM_LQ_KIND = "ddpm-lq"
ROUTES = ("img2img", "two-stage")
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass(frozen=True)
class DdpmLQSettings:
    """Architecture, formulation and defaults of a DDPM-LQ model (stored as ``config.json``).

    Attributes:
        route: ``img2img`` (unconditional) or ``two-stage`` (HQ-conditioned after stage 2).
        block_out_channels: UNet widths per resolution level.
        layers_per_block: ResNet blocks per level.
        unshuffle: space-to-depth factor in front of the UNet (1 disables it).
        prediction_type: ``epsilon`` (2303.06994, DiffusionXRay) or ``v_prediction``.
        num_train_timesteps: schedule length ``T`` (cosine).
        max_train_timestep: train on ``t <`` this (2303.06994: 500 of 1000; img2img never goes
            higher); ``T`` for two-stage.
        image_size: short side (px) the images were brought to; sampling runs at it.
        default_strength: noising strength used when the caller gives none, in (0, 1].
        default_steps: DDIM steps over the *whole* schedule; about ``steps·strength`` run.
        kind: always ``ddpm-lq``; loading checks it.
    """

    route: str = "img2img"
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    unshuffle: int = 2
    prediction_type: str = "epsilon"
    num_train_timesteps: int = 1000
    max_train_timestep: int = 500
    image_size: int = 256
    default_strength: float = 0.25
    default_steps: int = 40
    kind: str = field(default=DDPM_LQ_KIND)

    def __post_init__(self) -> None:
        if self.route not in ROUTES:
            raise InputError(f"route must be one of {ROUTES}, got {self.route!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise InputError(f"prediction type must be one of {PREDICTION_TYPES}")
        if not 1 <= self.max_train_timestep <= self.num_train_timesteps:
            raise InputError("max_train_timestep must be in [1, num_train_timesteps]")
        if not 0 < self.default_strength <= 1 or self.default_steps < 1:
            raise InputError("default strength must be in (0, 1] and default steps ≥ 1")
        if self.unshuffle < 1 or not self.block_out_channels or self.image_size < 8:
            raise InputError("unshuffle ≥ 1, non-empty widths and image_size ≥ 8 are required")
        if self.kind != DDPM_LQ_KIND:
            raise InputError(f"DDPM-LQ settings must have kind {DDPM_LQ_KIND!r}")

    @property
    def conditional(self) -> bool:
        """True for the two-stage route (input ``[x_t, cond]``)."""
        return self.route == "two-stage"

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this."""
        return self.unshuffle * 2 ** (len(self.block_out_channels) - 1)


class DdpmLQ(nn.Module):
    """UNet + formulation: predicts ``ε`` (or ``v``) of a noisy LQ image, optionally given HQ.

    Args:
        unet: a diffusers ``UNet2DModel`` with ``c·r²`` input (``c`` = 2 if conditional, else 1)
            and ``r²`` output channels.
        scheduler_config: the ``DDPMScheduler`` config.
        settings: the model's settings.
    """

    def __init__(self, unet: nn.Module, scheduler_config: dict[str, Any],
                 settings: DdpmLQSettings) -> None:
        super().__init__()
        self.unet = unet
        self.scheduler_config = dict(scheduler_config)
        self.settings = settings

    @classmethod
    def new(cls, settings: DdpmLQSettings, *, generator: torch.Generator) -> DdpmLQ:
        """A freshly initialised model (weights drawn from ``generator``)."""
        from cxrkit.diffusion.models import new_unet

        r2 = settings.unshuffle**2
        unet, scheduler_config = new_unet(
            (2 if settings.conditional else 1) * r2, r2, settings.block_out_channels,
            settings.layers_per_block, num_train_timesteps=settings.num_train_timesteps,
            prediction_type=settings.prediction_type, generator=generator)
        return cls(unet, scheduler_config, settings)

    def forward(self, x_t: torch.Tensor, cond: torch.Tensor | None,
                t: torch.Tensor) -> torch.Tensor:
        """The model output.

        Args:
            x_t: ``(B, 1, H, W)`` noisy LQ in [-1, 1] scale; ``H, W`` multiples of ``multiple``.
            cond: ``(B, 1, H, W)`` HQ in [-1, 1] (zeros: no condition); ignored by img2img.
            t: ``(B,)`` integer timesteps.

        Returns:
            ``(B, 1, H, W)`` predicted ``ε`` (or ``v``), float32.
        """
        r = self.settings.unshuffle
        inputs = x_t
        if self.settings.conditional:
            inputs = torch.cat([x_t, torch.zeros_like(x_t) if cond is None else cond], dim=1)
        inputs = F.pixel_unshuffle(inputs, r)  # (B, c·r², H/r, W/r)
        dtype = next(self.unet.parameters()).dtype
        out = self.unet(inputs.to(dtype), t).sample  # (B, r², H/r, W/r)
        return F.pixel_shuffle(out, r).float()  # (B, 1, H, W)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the model directory (see the module docstring), fp32 safetensors."""
        import diffusers
        from diffusers import DDPMScheduler
        from safetensors.torch import save_file

        out = Path(directory)
        (out / "unet").mkdir(parents=True, exist_ok=True)
        self.unet.save_config(out / "unet")  # type: ignore[operator]
        state = {k: v.detach().float().contiguous() for k, v in self.unet.state_dict().items()}
        save_file(state, out / "unet" / "diffusion_pytorch_model.safetensors",
                  metadata={"format": "pt"})
        DDPMScheduler.from_config(self.scheduler_config).save_pretrained(out / "scheduler")
        index = {"_class_name": "CxrkitDdpmLQ", "_diffusers_version": diffusers.__version__,
                 "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDPMScheduler"]}
        (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        (out / "config.json").write_text(json.dumps(asdict(self.settings), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device = "cpu"
                        ) -> DdpmLQ:
        """Load a model directory written by :meth:`save_pretrained` (safetensors only).

        Raises:
            ModelError: not a folder, another kind of model, or missing/unfit weights.
        """
        from diffusers import DDPMScheduler, UNet2DModel

        folder = Path(directory)
        settings = _settings(_read_config(folder, DDPM_LQ_KIND), folder)
        weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
        if not weights.is_file():
            raise ModelError("DDPM-LQ model has no unet safetensors weights", path=str(folder),
                             hint="weights are read from safetensors only (never pickles)")
        try:
            unet = UNet2DModel.from_pretrained(folder / "unet", use_safetensors=True)
            scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"cannot load the DDPM-LQ model: {exc}"[:300],
                             path=str(folder)) from exc
        model = cls(unet, dict(scheduler.config), settings)
        return model.to(device).eval().requires_grad_(False)


# Copied from cxrkit.munit.model.read_config
def _read_config(folder: Path, kind: str) -> dict[str, Any]:
    """The ``config.json`` of a cxrkit model folder, checked to be of ``kind``."""
    if not folder.is_dir():
        raise ModelError("no such model folder", path=str(folder))
    meta = folder / "config.json"
    found = meta if meta.is_file() else folder / "enhancer.json"
    if not found.is_file():
        raise ModelError(f"not a cxrkit {kind} model (no config.json)", path=str(folder))
    try:
        raw = json.loads(found.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"unreadable {found.name}: {exc}", path=str(found)) from exc
    actual = raw.get("kind") if isinstance(raw, dict) else None
    if actual != kind:
        raise ModelError(f"model is of kind {actual!r}, not {kind!r}", path=str(folder),
                         hint=f"give a folder written by the {kind} training command")
    return raw  # type: ignore[no-any-return]


def _settings(raw: dict[str, Any], folder: Path) -> DdpmLQSettings:
    known = {f.name for f in fields(DdpmLQSettings)}
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                              for k, v in raw.items() if k in known}
    try:
        return DdpmLQSettings(**values)
    except (InputError, TypeError) as exc:
        raise ModelError(f"bad config.json: {exc}", path=str(folder)) from exc


# ---- training (wired to cxrkit.train.train by `cxrkit train-ddpm-lq`) ---------------------------


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
    inner = unwrap_ddpm_lq(model)
    s = inner.settings
    x0 = 2 * batch["lq"] - 1  # (B, 1, h, w)
    t = torch.stack([torch.randint(0, s.max_train_timestep, (), generator=g) for g in generators])
    noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in generators])
    noise, t = noise.to(x0.device), t.to(x0.device)
    alphas = _alphas_cumprod(inner.scheduler_config).to(x0.device)
    a = alphas[t].sqrt().view(-1, 1, 1, 1)
    b = (1 - alphas[t]).sqrt().view(-1, 1, 1, 1)
    x_t = a * x0 + b * noise
    target = a * noise - b * x0 if s.prediction_type == "v_prediction" else noise
    cond = None
    if s.conditional:
        cond = (2 * batch["cond"] - 1) * batch["has_cond"].view(-1, 1, 1, 1)
    return F.mse_loss(model(x_t, cond, t).float(), target)


def unwrap_ddpm_lq(model: nn.Module) -> DdpmLQ:
    """The :class:`DdpmLQ` inside ``model`` (itself, or the module a DDP wrapper holds)."""
    inner = getattr(model, "module", model)
    if not isinstance(inner, DdpmLQ):
        raise ModelError(f"expected a DdpmLQ, got {type(inner).__name__}")
    return inner


def _alphas_cumprod(scheduler_config: dict[str, Any]) -> torch.Tensor:
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler_config).alphas_cumprod.float()


@dataclass(frozen=True)
class LQCrops:
    """Random crops of real LQ images, with no condition (stage 1 / img2img).

    Attributes:
        lq: LQ images ``(H, W)`` float32 in [0, 1] at the training resolution.
        crop: crop side in px.
    """

    lq: Sequence[np.ndarray]
    crop: int

    def sample(self, generator: np.random.Generator) -> dict[str, torch.Tensor]:
        """``lq`` and ``cond`` ``(1, c, c)`` (``cond`` zeros) and ``has_cond`` ``()`` = 0."""
        patch = _crop(self.lq[int(generator.integers(len(self.lq)))], self.crop, generator)
        return {"lq": patch, "cond": torch.zeros_like(patch), "has_cond": torch.tensor(0.0)}


@dataclass(frozen=True)
class ConditionedCrops:
    """Stage-2 samples: aligned (HQ, LQ) crops, and with probability ``p_uncond`` an LQ crop of
    the real LQ domain with the condition zeroed (keeps the stage-1 prior).

    Attributes:
        hq: HQ images ``(H, W)`` float32 in [0, 1] at the training resolution.
        lq: LQ images aligned with ``hq`` (same shapes), or None to make them from ``hq`` with
            the physics ``preset`` (scale 1).
        real_lq: real LQ images for the zero-condition samples.
        crop: crop side in px.
        preset: a :data:`cxrkit.degrade.PRESETS` key, used when ``lq`` is None.
        p_uncond: share of zero-condition samples.
        pixel_mm: pixel pitch of ``hq`` for the preset's physical sizes.
    """

    hq: Sequence[np.ndarray]
    lq: Sequence[np.ndarray] | None
    real_lq: Sequence[np.ndarray]
    crop: int
    preset: str = "drr-like"
    p_uncond: float = 0.1
    pixel_mm: float = 1.4

    def sample(self, generator: np.random.Generator) -> dict[str, torch.Tensor]:
        """``lq``, ``cond`` ``(1, c, c)`` in [0, 1] and ``has_cond`` ``()``."""
        if generator.random() < self.p_uncond:
            return LQCrops(self.real_lq, self.crop).sample(generator)
        from cxrkit.degrade import degrade

        index = int(generator.integers(len(self.hq)))
        hq = self.hq[index]
        y = int(generator.integers(0, hq.shape[0] - self.crop + 1))
        x = int(generator.integers(0, hq.shape[1] - self.crop + 1))
        box = (slice(y, y + self.crop), slice(x, x + self.crop))
        if self.lq is not None:
            lq = self.lq[index][box]
        else:  # degrade with context, then cut (blur kernels see the neighbourhood)
            m = 16
            y0, x0 = max(0, y - m), max(0, x - m)
            region = hq[y0 : y + self.crop + m, x0 : x + self.crop + m]
            lq = degrade(np.ascontiguousarray(region), self.preset, pixel_mm=self.pixel_mm,
                         generator=generator).image[y - y0 : y - y0 + self.crop,
                                                    x - x0 : x - x0 + self.crop]
        return {"lq": _tensor(lq), "cond": _tensor(hq[box]), "has_cond": torch.tensor(1.0)}


def _tensor(image: np.ndarray) -> torch.Tensor:
    """``(h, w)`` → ``(1, h, w)`` float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(image, np.float32))[None]


def _crop(image: np.ndarray, crop: int, generator: np.random.Generator) -> torch.Tensor:
    y = int(generator.integers(0, image.shape[0] - crop + 1))
    x = int(generator.integers(0, image.shape[1] - crop + 1))
    patch = image[y : y + crop, x : x + crop]
    return torch.from_numpy(np.ascontiguousarray(patch, np.float32))[None]  # (1, c, c)


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


@dataclass(frozen=True)
class HeldOut:
    """How DDPM-LQ's validation data are held out and measured.

    HQ images are split by patient (:func:`cxrkit.diffusion.training.split_by_patient`: the
    file-name prefix before ``_``, as in NIH ChestX-ray14), LQ images by file (DRRs of one CT
    share their patient anyway). Held-out images are never trained on.

    Attributes:
        fraction: share of HQ patients and of LQ files held out, in [0, 1). 0 (or too few
            images) validates on training images, which ``run.json`` then says.
        count: at most this many held-out images are degraded for the sampled measures.
        loss_samples: fixed (crop, timestep, noise) samples of the held-out diffusion loss.
    """

    fraction: float = 0.1
    count: int = 4
    loss_samples: int = 8

    def __post_init__(self) -> None:
        if not 0 <= self.fraction < 1 or self.count < 1 or self.loss_samples < 1:
            raise InputError("the validation fraction must be in [0, 1), counts ≥ 1")


def split_files(count: int, fraction: float, *, seed: int) -> tuple[list[int], list[int]]:
    """``(train, validation)`` indices of ``count`` files: ``ceil(fraction·count)`` files, chosen
    by a permutation seeded by ``seed``, are held out, leaving at least one to train on; with
    ``fraction`` 0 or a single file nothing is held out and validation is ``[]``."""
    held = min(math.ceil(fraction * count), count - 1) if fraction > 0 else 0
    order = np.random.default_rng([seed, 7]).permutation(count)
    val = sorted(int(i) for i in order[:held])
    return sorted(int(i) for i in order[held:]), val


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
    ``output_dir``. Both split their inputs as ``held_out`` says and validate (into ``run.json``'s
    ``validation``) on centre crops of held-out images:

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
    from cxrkit.diffusion.training import files_sha256, split_by_patient
    from cxrkit.train import train

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
        unwrap_ddpm_lq(trained).save_pretrained(folder)

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
    result = train(model, ddpm_lq_loss, first, stage1, validate=check,
                   save_model=save, run_info={**info, "stage": 1}, on_log=on_log)
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
    stage2 = replace(config, steps=stage_two.steps)
    start = result.model.requires_grad_(True).train()  # the EMA copy comes back frozen
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
        inner = unwrap_ddpm_lq(model)
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


def _centre(image: np.ndarray, crop: int) -> np.ndarray:
    """The centred ``crop`` × ``crop`` patch of ``(H, W)`` (smaller sides kept whole)."""
    y, x = max(0, (image.shape[0] - crop) // 2), max(0, (image.shape[1] - crop) // 2)
    return np.ascontiguousarray(image[y : y + crop, x : x + crop], np.float32)


# ---- sampling: the `ddpm` degradation method -----------------------------------------------------


def degrade_lq(model: DdpmLQ, hq: np.ndarray, *, strength: float, steps: int,
               generator: torch.Generator) -> np.ndarray:
    """Noise ``hq`` to ``t = strength·T`` and denoise it with DDIM (η = 0), at ``hq``'s size.

    The written-out loop: ``set_timesteps(steps)``, keep the timesteps below ``strength·T``, add
    noise to ``2·hq - 1`` at the first of them (SDEdit, Meng et al. 2022,
    https://arxiv.org/abs/2108.01073), then predict and ``step`` for each. The two-stage model
    sees ``cond = 2·hq - 1`` at every step.

    Args:
        model: a loaded :class:`DdpmLQ`.
        hq: ``(H, W)`` float32 in [0, 1] (any size; padded to ``model.settings.multiple``).
        strength: share of the schedule, in (0, 1]; at least one step runs.
        steps: DDIM steps over the whole schedule (about ``steps·strength`` run).
        generator: CPU generator of the noise; same seed → same bytes on the same machine.

    Returns:
        ``(H, W)`` float32 in [0, 1].
    """
    from cxrkit.diffusion.sampling import make_scheduler

    if not 0 < strength <= 1 or steps < 1:
        raise InputError(f"strength must be in (0, 1] and steps ≥ 1, got {strength}, {steps}")
    device = next(model.parameters()).device
    H, W = hq.shape
    m = model.settings.multiple
    x0 = torch.from_numpy(np.ascontiguousarray(hq, np.float32))[None, None] * 2 - 1
    x0 = F.pad(x0, (0, (-W) % m, 0, (-H) % m), mode="reflect" if min(H, W) > m else "replicate")
    scheduler = make_scheduler("ddim", model.scheduler_config)
    timesteps = sampling_timesteps(scheduler, strength, steps)
    noise = torch.randn(x0.shape, generator=generator)
    x = scheduler.add_noise(x0, noise, torch.tensor([timesteps[0]]))
    x, cond = x.to(device), x0.to(device) if model.settings.conditional else None
    with torch.inference_mode():
        for t in timesteps:
            out = model(x, cond, torch.full((1,), t, device=device))
            x = scheduler.step(out, t, x).prev_sample
    return ((x[0, 0, :H, :W].cpu() + 1) / 2).clamp(0, 1).numpy().astype(np.float32)


def sampling_timesteps(scheduler: Any, strength: float, steps: int) -> list[int]:
    """The timesteps a run of :func:`degrade_lq` visits: those of ``set_timesteps(steps)``
    below ``strength·T`` (at least the last one), in decreasing order."""
    scheduler.set_timesteps(steps)
    T = scheduler.config.num_train_timesteps
    kept = [int(t) for t in scheduler.timesteps if int(t) < strength * T]
    return kept or [int(scheduler.timesteps[-1])]


@dataclass
class DdpmDegrader:
    """The ``ddpm`` method of ``cxrkit degrade``: HQ radiograph → LQ with a DDPM-LQ model.

    The input is resized so its short side is the model's ``image_size``, degraded by
    :func:`degrade_lq` and resized to ``(H, W) // scale``.

    Args:
        model_dir: a folder written by ``cxrkit train-ddpm-lq``.
        strength: noising strength in (0, 1]; None: the model's default (0.25 for img2img).
        steps: DDIM steps over the whole schedule; None: the model's default.
        device: torch device.

    Raises:
        ModelError: the folder is not a DDPM-LQ model.
    """

    model_dir: str | Path
    strength: float | None = None
    steps: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        from cxrkit.pipe import file_sha256

        self.model = DdpmLQ.from_pretrained(self.model_dir, device=self.device)
        self.model_sha256 = file_sha256(
            Path(self.model_dir) / "unet" / "diffusion_pytorch_model.safetensors")
        s = self.model.settings
        self.strength = s.default_strength if self.strength is None else float(self.strength)
        self.steps = s.default_steps if self.steps is None else int(self.steps)
        if not 0 < self.strength <= 1:
            raise InputError(f"strength must be in (0, 1], got {self.strength}")

    def __call__(self, image: np.ndarray, *, scale: int = 1, pixel_mm: float = 0.35,
                 generator: np.random.Generator) -> Any:
        """Degrade one ``(H, W)`` display image; returns a ``DegradeResult`` ``(H//s, W//s)``."""
        from cxrkit.degrade import DegradeResult
        from cxrkit.diffusion.sampling import make_scheduler

        if not isinstance(image, np.ndarray) or image.ndim != 2 or min(image.shape) < 8:
            raise InputError(f"DDPM-LQ needs an (H, W) image, got shape {np.shape(image)}")
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise InputError(f"scale must be an integer ≥ 1, got {scale!r}")
        work = resize_short_side(np.clip(image, 0, 1), self.model.settings.image_size)
        seed = int(generator.integers(0, 2**63 - 1))
        assert self.strength is not None and self.steps is not None
        lq = degrade_lq(self.model, work, strength=self.strength, steps=self.steps,
                        generator=torch.Generator().manual_seed(seed))
        out = resize(lq, (image.shape[0] // scale, image.shape[1] // scale))
        params = {"route": self.model.settings.route, "strength": self.strength,
                  "steps": self.steps, "nfe": len(sampling_timesteps(
                      make_scheduler("ddim", self.model.scheduler_config), self.strength,
                      self.steps)),
                  "torch_seed": seed, "work_size": list(work.shape), "pixel_mm": pixel_mm,
                  "model_sha256": self.model_sha256}
        return DegradeResult(out, [{"name": "ddpm", "params": params}])
