"""The conditional diffusion enhancer: a diffusers ``UNet2DModel`` that denoises the HQ residual.

Formulation (SR3, Saharia et al. 2021, https://arxiv.org/abs/2104.07636, with the residual target
of SRDiff, Li et al. 2022, https://arxiv.org/abs/2104.14951):

- ``up = bicubic(LQ)`` brings the low-quality image to the output size (identity for ×1);
- the diffused variable is the residual ``x0 = residual_scale · (HQ - up)``, so a model that
  outputs zero already gives the bicubic baseline, and the network only learns what bicubic
  misses (contrast, slice blur, detail);
- the UNet sees ``[x_t, 2·up - 1]`` (2 channels), rearranged space-to-depth by ``unshuffle``
  (pixel unshuffle, as Real-ESRGAN's ×2 model does): a 1024² image is processed at 512² with
  ``2·r²`` channels, which makes every step 4× cheaper for the same widths;
- it predicts ``v`` (Salimans & Ho 2022, https://arxiv.org/abs/2202.00512) or ``ε`` under a
  cosine schedule (``squaredcos_cap_v2``, Nichol & Dhariwal 2021), trained with MSE.

A model directory (diffusers ``save_pretrained`` layout)::

    model_index.json        diffusers component list
    enhancer.json           cxrkit's settings (kind, scale, unshuffle, residual_scale, defaults)
    unet/                   config.json + diffusion_pytorch_model.safetensors
    scheduler/              scheduler_config.json (DDPMScheduler: schedule and prediction type)
    context/                degradation_encoder.safetensors (only with a DegradationEncoder),
                            tone_gate.safetensors (only with a ToneGate)
    route/                  a whole enhancer folder of its own (only with ``tone_route``)
    run.json                how it was trained (written by :mod:`cxrkit.train`)

Optionally a :class:`DegradationEncoder` reads the whole LQ image once and adds what it infers of
the degradation (blur width, tone curve) to the UNet's time embedding, so every tile is restored
with the same image-wide estimate (DASR-style blind restoration). A :class:`ToneGate` that reads
the image's directional blur decides whether the input shows a tone change to undo; where it does
not, the output's low frequencies are anchored to the input's
(:func:`cxrkit.enhancer.inference.enhance`); where it does, an enhancer with a *route* hands the
input to the enhancer in ``route/`` (one trained for that degradation, e.g. real DRRs), so a
model made robust to every other degradation keeps a specialist's gains on its own job.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrkit.data.images import bicubic_upsample
from cxrkit.diffusion.denoiser import DTYPES, UNetDenoiser, new_unet, train_alphas_cumprod
from cxrkit.errors import InputError, ModelError
from cxrkit.modelfiles import load_weights
from cxrkit.train import unwrap_model

ENHANCER_KIND = "cxrkit-enhancer"
PREDICTION_TYPES = ("v_prediction", "epsilon")


@dataclass(frozen=True)
class EnhancerSettings:
    """Architecture and formulation of an enhancer (stored as ``enhancer.json``).

    Attributes:
        scale: output size / input size: 1 (restore) or 2 (super-resolve 512² → 1024²).
        block_out_channels: UNet widths per resolution level.
        layers_per_block: ResNet blocks per level.
        unshuffle: space-to-depth factor ``r`` in front of the UNet (1 disables it).
        prediction_type: ``v_prediction`` or ``epsilon``.
        num_train_timesteps: length ``T`` of the training schedule.
        residual_scale: ``s`` in ``x0 = s·(HQ - up)``; brings residuals (std ~0.025) to ~0.5.
        default_steps: sampling steps used when the caller gives none.
        default_sampler: sampler used when the caller gives none (a key of ``SAMPLERS``).
        context_channels: widths of the :class:`DegradationEncoder` that reads the whole LQ image
            and conditions every UNet block on what it sees (empty: no encoder).
        context_crop: side, in LQ pixels, of the view the encoder sees in training (at inference
            it pools over the whole image).
        trained_steps: ``N`` > 0: the model was last trained only at the timesteps an ``N``-step
            DDIM sampler visits (``train-enhance --sampler-steps``), so other step counts and
            samplers leave its training path; 0: trained at every timestep.
        zero_start: the sampler starts from ``x_T = 0``, the mean of the pure noise it would
            draw (at ``t = T - 1`` the noisy input carries ``√ᾱ ≈ 5e-5`` of the image, nothing
            usable), so a one-step model is a deterministic regressor that spends no capacity on
            ignoring noise; its training used the same zero input (``--zero-start``).
        tone_anchor: σ, in output pixels, of the Gaussian low-pass of the tone anchor: the
            output's deviation from the bicubic input below that scale is removed unless the
            :class:`ToneGate` sees a tone change to undo (probability > 0.5), and the rest of
            the residual is scaled there by the gate's detail share; 0: no anchor (and no gate).
        tone_route: inputs in which the gate sees a tone change to undo are enhanced by the
            enhancer in ``route/`` instead (as it is, no anchor); needs a tone gate.
    """

    scale: int = 2
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    unshuffle: int = 2
    prediction_type: str = "v_prediction"
    num_train_timesteps: int = 1000
    residual_scale: float = 20.0
    default_steps: int = 10
    default_sampler: str = "ddim"
    context_channels: tuple[int, ...] = ()
    context_crop: int = 256
    trained_steps: int = 0
    zero_start: bool = False
    tone_anchor: float = 0.0
    tone_route: bool = False
    kind: str = field(default=ENHANCER_KIND)

    def __post_init__(self) -> None:
        if self.scale not in (1, 2, 4):
            raise InputError(f"enhancer scale must be 1, 2 or 4, got {self.scale}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise InputError(f"prediction type must be one of {PREDICTION_TYPES}, "
                             f"got {self.prediction_type!r}")
        if self.unshuffle < 1 or not self.block_out_channels:
            raise InputError("unshuffle must be ≥ 1 and block_out_channels non-empty")
        if self.context_channels and self.context_crop < DegradationEncoder.RECEPTIVE:
            raise InputError(f"context crop must be ≥ {DegradationEncoder.RECEPTIVE} px, "
                             f"got {self.context_crop}")
        if self.tone_anchor < 0:
            raise InputError(f"the tone anchor's σ must be ≥ 0, got {self.tone_anchor}")
        if self.tone_route and not self.tone_anchor:
            raise InputError("a tone route needs a tone gate (tone_anchor > 0)")

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this (unshuffle × the UNet's total downsampling)."""
        return self.unshuffle * 2 ** (len(self.block_out_channels) - 1)


class Enhancer(UNetDenoiser):
    """UNet + formulation: predicts ``v`` (or ``ε``) of the residual given the upsampled LQ.

    Args:
        unet: a diffusers ``UNet2DModel`` with ``2·r²`` input and ``r²`` output channels.
        scheduler_config: the ``DDPMScheduler`` config (schedule, prediction type).
        settings: the enhancer's settings.
    """

    settings: EnhancerSettings

    def __init__(self, unet: nn.Module, scheduler_config: dict[str, Any],
                 settings: EnhancerSettings, context: DegradationEncoder | None = None,
                 tone_gate: ToneGate | None = None, route: Enhancer | None = None) -> None:
        super().__init__(unet, scheduler_config, settings)
        if bool(settings.context_channels) != (context is not None):
            raise ModelError("the enhancer's settings and its degradation encoder disagree")
        if bool(settings.tone_anchor) != (tone_gate is not None):
            raise ModelError("the enhancer's settings and its tone gate disagree")
        if settings.tone_route != (route is not None):
            raise ModelError("the enhancer's settings and its tone route disagree")
        if route is not None and (route.route is not None or route.tone_gate is not None
                                  or route.settings.scale != settings.scale):
            raise ModelError("a tone route must be a plain enhancer (no gate, no route of its "
                             "own) of the same scale")
        self.context = context
        self.tone_gate = tone_gate
        self.route = route

    def with_tone_gate(self, gate: ToneGate, sigma: float) -> Enhancer:
        """This enhancer (sharing its modules) with ``gate`` and a tone anchor of σ ``sigma``
        output pixels (see :attr:`EnhancerSettings.tone_anchor`)."""
        settings = replace(self.settings, tone_anchor=float(sigma))
        return Enhancer(self.unet, self.scheduler_config, settings, self.context,
                        gate.to(self.device, self.dtype), self.route)

    def with_route(self, route: Enhancer) -> Enhancer:
        """This enhancer (sharing its modules, which must include a tone gate) handing the inputs
        its gate sees a tone change in to ``route`` (see :attr:`EnhancerSettings.tone_route`).

        Raises:
            ModelError: no tone gate here, or ``route`` is not a plain enhancer of this scale.
        """
        if self.tone_gate is None:
            raise ModelError("a tone route needs an enhancer with a tone gate")
        settings = replace(self.settings, tone_route=True)
        return Enhancer(self.unet, self.scheduler_config, settings, self.context,
                        self.tone_gate, route.to(self.device, self.dtype))

    @classmethod
    def new(cls, settings: EnhancerSettings, *, generator: torch.Generator) -> Enhancer:
        """A freshly initialised enhancer (weights drawn from ``generator``)."""
        r2 = settings.unshuffle**2
        unet, scheduler_config = new_unet(
            2 * r2, r2, settings.block_out_channels, settings.layers_per_block,
            num_train_timesteps=settings.num_train_timesteps,
            prediction_type=settings.prediction_type, generator=generator,
            embedding=bool(settings.context_channels))
        context = None
        if settings.context_channels:
            context = DegradationEncoder.new(settings.context_channels,
                                             4 * settings.block_out_channels[0],
                                             generator=generator)
        return cls(unet, scheduler_config, settings, context)

    def with_context(self, channels: tuple[int, ...], crop: int, *,
                     generator: torch.Generator) -> Enhancer:
        """This enhancer with a new :class:`DegradationEncoder` (for fine-tuning).

        The encoder's last layer starts at zero, so the returned model computes exactly what this
        one does until training moves it. The UNet is copied; this model is left as it was.

        Raises:
            ModelError: the model has an encoder already.
        """
        if self.context is not None:
            raise ModelError("the enhancer has a degradation encoder already")
        if self.unet.class_embedding is not None:  # type: ignore[union-attr]
            raise ModelError("the enhancer's UNet has a class embedding of its own")
        unet = copy.deepcopy(self.unet)
        unet.register_to_config(class_embed_type="identity")  # type: ignore[operator]
        unet.class_embedding = nn.Identity()  # adds the embedding to the time embedding
        settings = replace(self.settings, context_channels=tuple(channels), context_crop=crop)
        encoder = DegradationEncoder.new(settings.context_channels,
                                         4 * settings.block_out_channels[0], generator=generator)
        return Enhancer(unet, self.scheduler_config, settings, encoder.to(self.device, self.dtype),
                        self.tone_gate, self.route)

    def encode(self, lq: torch.Tensor) -> torch.Tensor | None:
        """The degradation embedding ``(B, D)`` of LQ images ``(B, 1, h, w)`` in [0, 1] (None
        without an encoder); memory-bounded for large images (see :meth:`DegradationEncoder.pool`).
        """
        if self.context is None:
            return None
        return self.context.pool(lq.to(self.device, self.dtype))

    def forward(self, x_t: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, *,
                embedding: torch.Tensor | None = None,
                lq_context: torch.Tensor | None = None) -> torch.Tensor:
        """The model output for noisy residuals.

        Args:
            x_t: ``(B, 1, H, W)`` noisy residual; ``H, W`` multiples of ``settings.multiple``.
            cond: ``(B, 1, H, W)`` upsampled LQ mapped to [-1, 1].
            t: ``(B,)`` integer timesteps in ``[0, T)``.
            embedding: ``(B, D)`` degradation embedding from :meth:`encode` (inference: once per
                image, shared by its tiles).
            lq_context: ``(B, 1, h, w)`` LQ views in [0, 1] to encode here (training, so the
                encoder runs inside the (possibly DDP-wrapped) forward).

        Returns:
            ``(B, 1, H, W)`` predicted ``v`` (or ``ε``), float32.
        """
        if self.context is not None and embedding is None:
            if lq_context is None:
                raise InputError("this enhancer needs the LQ image's degradation embedding")
            embedding = self.context(lq_context.to(self.dtype))
        return self.denoise(torch.cat([x_t, cond], dim=1), t, embedding)

    def save_pretrained(self, directory: str | Path, *, dtype: str = "fp32") -> None:
        """Write the model directory (see the module docstring), weights in ``dtype``."""
        from diffusers import DDPMScheduler
        from safetensors.torch import save_file

        out = Path(directory)
        (out / "unet").mkdir(parents=True, exist_ok=True)
        self.unet.save_config(out / "unet")  # type: ignore[operator]
        config_file = out / "unet" / "config.json"  # a model loaded from a folder names it there
        config = json.loads(config_file.read_text())
        if config.pop("_name_or_path", None) is not None:
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        state = {k: v.detach().to(DTYPES[dtype]).contiguous()
                 for k, v in self.unet.state_dict().items()}
        save_file(state, out / "unet" / "diffusion_pytorch_model.safetensors",
                  metadata={"format": "pt"})
        DDPMScheduler.from_config(self.scheduler_config).save_pretrained(out / "scheduler")
        if self.context is not None:
            (out / "context").mkdir(exist_ok=True)
            save_file({k: v.detach().to(DTYPES[dtype]).contiguous()
                       for k, v in self.context.state_dict().items()},
                      out / "context" / CONTEXT_WEIGHTS, metadata={"format": "pt"})
        if self.tone_gate is not None:  # small: kept in float32
            (out / "context").mkdir(exist_ok=True)
            save_file({k: v.detach().float().contiguous()
                       for k, v in self.tone_gate.state_dict().items()},
                      out / "context" / TONE_GATE_WEIGHTS, metadata={"format": "pt"})
        if self.route is not None:
            self.route.save_pretrained(out / "route", dtype=dtype)
        import diffusers

        index = {"_class_name": "CxrkitEnhancer", "_diffusers_version": diffusers.__version__,
                 "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDPMScheduler"]}
        (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        (out / "enhancer.json").write_text(json.dumps(asdict(self.settings), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> Enhancer:
        """Load a model directory written by :meth:`save_pretrained` (safetensors only).

        Raises:
            ModelError: the folder is missing, is not a cxrkit enhancer, or is incomplete.
        """
        from diffusers import DDPMScheduler, UNet2DModel

        folder = Path(directory)
        settings = read_settings(folder)
        weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
        if not weights.is_file():
            raise ModelError("enhancer has no unet safetensors weights", path=str(folder),
                             hint="a model directory holds unet/diffusion_pytorch_model."
                                  "safetensors (pickled .bin weights are never loaded)")
        try:
            unet = UNet2DModel.from_pretrained(folder / "unet", use_safetensors=True,
                                               torch_dtype=dtype)
            scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"cannot load the enhancer: {exc}"[:300], path=str(folder)) from exc
        context = None
        if settings.context_channels:
            context = DegradationEncoder(settings.context_channels,
                                         4 * settings.block_out_channels[0])
            load_weights(context, folder / "context" / CONTEXT_WEIGHTS,
                         what="degradation encoder")
            context = context.to(dtype)
        gate = None
        if settings.tone_anchor:
            gate = ToneGate()
            load_weights(gate, folder / "context" / TONE_GATE_WEIGHTS, what="tone gate")
            gate = gate.to(dtype)
        route = None
        if settings.tone_route:
            route = cls.from_pretrained(folder / "route", dtype=dtype)
        model = cls(unet, dict(scheduler.config), settings, context, gate, route)
        return model.to(device).eval().requires_grad_(False)


class DegradationEncoder(nn.Module):
    """Reads a whole LQ image and says how it was degraded, as an embedding for the UNet.

    The degradations a blind enhancer faces are image-wide (one slice-blur width, one tone curve
    per radiograph), but a UNet tile sees a few dozen pixels of context, too little to tell a
    5 mm slice blur from smooth anatomy. As in DASR (Wang et al. 2021,
    https://arxiv.org/abs/2104.00416) a small CNN estimates the degradation from the whole image
    instead: strided 3×3 convolutions, mean and standard-deviation pooling over every position,
    and an MLP to the UNet's time-embedding width; the embedding is added to the time embedding,
    so it shifts the features of every ResNet block. The MLP's last layer starts at zero, so a
    new encoder leaves an enhancer's output unchanged.

    In training the encoder sees a ``context_crop``-sided LQ view around each training crop; at
    inference it pools over the whole image (:meth:`pool`), once per image, shared by all tiles.

    Args:
        channels: conv widths; the first conv keeps the resolution, each later one halves it.
        out_dim: embedding width (the UNet's time-embedding width).
    """

    RECEPTIVE = 64
    """An LQ-pixel margin that covers the convolutions' receptive field (with room to spare)."""

    def __init__(self, channels: tuple[int, ...], out_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(c_in, c, 3, stride=1 if i == 0 else 2, padding=1,
                                 padding_mode="replicate"), nn.SiLU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.stride = 2 ** (len(channels) - 1)
        self.head = nn.Sequential(nn.Linear(2 * c_in, 2 * c_in), nn.SiLU(),
                                  nn.Linear(2 * c_in, out_dim))

    @classmethod
    def new(cls, channels: tuple[int, ...], out_dim: int, *,
            generator: torch.Generator) -> DegradationEncoder:
        """A fresh encoder, weights from ``generator``, the output layer zero."""
        from cxrkit.modelfiles import seeded_init

        with seeded_init(generator):
            encoder = cls(channels, out_dim)
        last = encoder.head[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        return encoder

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        """``(B, 1, h, w)`` LQ in [0, 1] → ``(B, D)`` embedding (pooling over the whole view)."""
        f = self.features(2 * lq - 1).float()  # (B, C, h', w')
        return self._embed(f.sum(dim=(2, 3)), f.square().sum(dim=(2, 3)),
                           f.shape[-2] * f.shape[-1], lq.dtype)

    def _embed(self, total: torch.Tensor, total_sq: torch.Tensor, count: int,
               dtype: torch.dtype) -> torch.Tensor:
        """The embedding from per-channel feature sums and sums of squares over ``count``
        positions: mean and standard-deviation pooling, then the MLP."""
        mean = total / count
        std = (total_sq / count - mean.square()).clamp_min(0).add(1e-6).sqrt()
        return self.head(torch.cat([mean, std], 1).to(dtype)).float()

    def pool(self, lq: torch.Tensor, *, tile: int = 1024) -> torch.Tensor:
        """:meth:`forward` for images of any size in bounded memory.

        The conv features are computed on overlapping tiles (``tile`` LQ pixels plus a
        :attr:`RECEPTIVE` margin, aligned to the stride) and their sums pooled over each tile's
        core, so the result equals one pass over the whole image (to float rounding).
        """
        h, w = lq.shape[-2:]
        if max(h, w) <= tile:
            return self.forward(lq)
        s, m = self.stride, self.RECEPTIVE
        tile = max(s, tile // s * s)
        total = sq = None
        count = 0
        for y in range(0, h, tile):
            for x in range(0, w, tile):
                y0, x0 = max(0, y - m), max(0, x - m)
                y1, x1 = min(h, y + tile + m), min(w, x + tile + m)
                f = self.features(2 * lq[..., y0:y1, x0:x1] - 1).float()
                fy, fx = (y - y0) // s, (x - x0) // s  # the core's first feature row / column
                core = f[..., fy : fy + math.ceil(min(tile, h - y) / s),
                         fx : fx + math.ceil(min(tile, w - x) / s)]
                part, part_sq = core.sum(dim=(2, 3)), core.square().sum(dim=(2, 3))
                total = part if total is None else total + part
                sq = part_sq if sq is None else sq + part_sq
                count += core.shape[-2] * core.shape[-1]
        assert total is not None and sq is not None
        return self._embed(total, sq, count, lq.dtype)


CONTEXT_WEIGHTS = "degradation_encoder.safetensors"
TONE_GATE_WEIGHTS = "tone_gate.safetensors"


class ToneGate(nn.Module):
    """From an LQ image, the probability that it shows a tone change the enhancer should undo.

    A DRR's flat, darkened tone (``drr-like``'s gamma) is part of what an enhancer must restore,
    but a radiograph that is merely blurred, noisy or of another tone must keep its tone (issue
    23). The tone itself does not tell them apart (radiographs differ in tone); how the image was
    blurred does: a DRR is blurred along the body axis by the CT's slice thickness. The gate is a
    logistic regression on the image's directional blur signature (:meth:`features`), fitted on
    degradations whose labels are known (:func:`cxrkit.enhancer.tone.fit_tone_gate`).

    Where the tone is kept, a second head (:meth:`share`) says how much of the model's
    high-frequency residual to keep: on a sharp, mildly degraded input a small model's detail can
    be worse than none, on a blurred one it is worth keeping; fitted on the same signature by
    least squares (:func:`cxrkit.enhancer.tone.calibrate_detail`). It starts at 1 (all kept).
    """

    SCALES = 3
    """Dyadic scales of :meth:`features` (the image, then 2×2 means of it, …)."""

    def __init__(self) -> None:
        super().__init__()
        dim = 3 * self.SCALES
        self.linear = nn.Linear(dim, 1)
        self.detail = nn.Linear(dim, 1)
        nn.init.zeros_(self.detail.weight)
        nn.init.constant_(self.detail.bias, 20.0)  # sigmoid(20) ≈ 1: all of the detail kept
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    @classmethod
    def features(cls, lq: torch.Tensor) -> torch.Tensor:
        """``(B, 1, h, w)`` images in [0, 1] → ``(B, 3·SCALES)``: at each scale, the log of the
        mean absolute vertical and horizontal differences and the log of their ratio."""
        x = lq.double()
        out = []
        for _ in range(cls.SCALES):
            gy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(1, 2, 3)) + 1e-6
            gx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean(dim=(1, 2, 3)) + 1e-6
            out += [(gy / gx).log(), gx.log(), gy.log()]
            if min(x.shape[-2:]) >= 4:
                x = F.avg_pool2d(x, 2)
        return torch.stack(out, 1).float()

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, F)`` features, centred and scaled by the fitted statistics."""
        return (features.float() - self.mean.float()) / self.scale.float()

    def logit(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, F)`` features → ``(B,)`` logits of a tone change to undo."""
        return self.linear.float()(self.standardise(features))[:, 0]

    def detail_logit(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, F)`` features → ``(B,)`` logits of the detail share (:meth:`share`)."""
        return self.detail.float()(self.standardise(features))[:, 0]

    def share(self, lq: torch.Tensor) -> torch.Tensor:
        """``(B, 1, h, w)`` LQ images → ``(B,)`` shares in (0, 1) of the model's high-frequency
        residual to keep where the tone anchor applies."""
        return torch.sigmoid(self.detail_logit(self.features(lq)))

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        """``(B, 1, h, w)`` LQ images → ``(B,)`` probabilities of a tone change to undo."""
        return torch.sigmoid(self.logit(self.features(lq)))


MODEL_PARTS = ("enhancer.json", "scheduler", "unet", "context")
"""The files and folders of a model directory that decide its outputs (not ``run.json``)."""


def model_sha256(folder: str | Path) -> str:
    """One sha256 over everything that decides an enhancer's output: its settings, schedule,
    UNet, degradation encoder and tone gate (each part hashed with
    :func:`cxrkit.files.file_sha256`), and its route's own model hash (not the route's
    ``run.json``); a model without a route hashes as it always did."""
    import hashlib

    from cxrkit.modelfiles import parts_sha256

    own = parts_sha256(folder, MODEL_PARTS)
    route = Path(folder) / "route"
    if not route.is_dir():
        return own
    return hashlib.sha256(f"{own};route:{model_sha256(route)};".encode()).hexdigest()


def read_settings(folder: Path) -> EnhancerSettings:
    """The settings in ``folder/enhancer.json``, checking the folder is a cxrkit enhancer.

    Raises:
        ModelError: not a folder, no ``enhancer.json``, another kind of model, or bad values.
    """
    if not folder.is_dir():
        raise ModelError("no such model folder", path=str(folder))
    meta = folder / "enhancer.json"
    if not meta.is_file():
        raise ModelError("not a cxrkit enhancer (no enhancer.json)", path=str(folder),
                         hint="give a folder written by `cxrkit train-enhance`")
    try:
        raw = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"unreadable enhancer.json: {exc}", path=str(meta)) from exc
    if not isinstance(raw, dict) or raw.get("kind") != ENHANCER_KIND:
        kind = raw.get("kind") if isinstance(raw, dict) else None
        raise ModelError(f"model is of kind {kind!r}, not {ENHANCER_KIND!r}", path=str(folder))
    known = set(EnhancerSettings.__dataclass_fields__)
    values = {k: v for k, v in raw.items() if k in known}
    values["block_out_channels"] = tuple(values.get("block_out_channels", ()))
    values["context_channels"] = tuple(values.get("context_channels", ()))
    try:
        return EnhancerSettings(**values)
    except (InputError, TypeError) as exc:
        raise ModelError(f"bad enhancer.json: {exc}", path=str(meta)) from exc


# ---- the training loss (wired to cxrkit.train.train by `cxrkit train-enhance`) ----------------


def diffusion_loss(model: nn.Module, batch: dict[str, torch.Tensor],
                   generators: Sequence[torch.Generator], *,
                   ssim_weight: float = 0.0,
                   timesteps: Sequence[int] | None = None,
                   zero_start: bool = False) -> torch.Tensor:
    """MSE between the model output and the true ``v`` (or ``ε``) at a random timestep, plus an
    optional structural term on the model's estimate of the clean image.

    With ``ssim_weight`` ``w > 0`` the loss adds ``w·(1 - SSIM(up + x̂0/s, HQ))``, where ``x̂0`` is
    the clean residual the prediction implies at that timestep (``x̂0 = √ᾱ·x_t − √(1−ᾱ)·v`` for
    v-prediction) — the quantity a few-step sampler returns. Plain MSE drives ``x̂0`` to the
    posterior mean, which is smooth; the SSIM term rewards restoring local contrast and edges
    (an x0-space loss as in SinSR and ResShift's few-step training).

    Args:
        model: an :class:`Enhancer` (possibly wrapped by accelerate/DDP).
        batch: ``hq`` and ``lq_up``, each ``(B, 1, h, w)`` float32 in [0, 1]; for an enhancer
            with a degradation encoder also ``lq_context`` ``(B, 1, k, k)``, the LQ views it reads.
        generators: one CPU generator per sample; each draws that sample's timestep and noise,
            so the loss of a sample does not depend on how the batch is split across processes.
        ssim_weight: weight ``w`` of the SSIM term (0: the plain diffusion loss).
        timesteps: train only at these timesteps (drawn uniformly), e.g. the ones an N-step
            sampler visits (:func:`sampler_timesteps`); None: every ``t`` in ``[0, T)``.
        zero_start: at ``t = T - 1`` the model sees ``x_t = 0`` and learns ``v = -√(1−ᾱ)·x0``
            (the noise drawn is set to zero), as a ``zero_start`` sampler feeds it.

    Returns:
        The scalar loss, averaged over the batch.
    """
    from cxrkit.metrics import ssim_torch

    settings: EnhancerSettings = unwrap_model(model, Enhancer).settings
    hq, lq_up = batch["hq"], batch["lq_up"]
    x0 = settings.residual_scale * (hq - lq_up)  # (B, 1, h, w)
    T = settings.num_train_timesteps
    if timesteps:
        allowed = torch.as_tensor(list(timesteps), dtype=torch.long)
        if int(allowed.min()) < 0 or int(allowed.max()) >= T:
            raise InputError(f"training timesteps must lie in [0, {T}), got {list(timesteps)}")
        t = torch.stack([allowed[torch.randint(0, len(allowed), (), generator=g)]
                         for g in generators])  # (B,)
    else:
        t = torch.stack([torch.randint(0, T, (), generator=g) for g in generators])  # (B,)
    noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in generators])
    noise, t = noise.to(x0.device), t.to(x0.device)
    if zero_start:  # the first step of a zero-start sampler: no noise, and x_t = 0 below
        noise = noise * (t != T - 1).view(-1, 1, 1, 1)
    alphas = train_alphas_cumprod(unwrap_model(model, Enhancer).scheduler_config).to(x0.device)
    a = alphas[t].sqrt().view(-1, 1, 1, 1)
    b = (1 - alphas[t]).sqrt().view(-1, 1, 1, 1)
    x_t = a * x0 + b * noise
    if zero_start:
        x_t = x_t * (t != T - 1).view(-1, 1, 1, 1)
    v_pred = settings.prediction_type == "v_prediction"
    target = a * noise - b * x0 if v_pred else noise
    context = {"lq_context": batch["lq_context"]} if "lq_context" in batch else {}
    pred = model(x_t, 2 * lq_up - 1, t, **context).float()
    loss = F.mse_loss(pred, target)
    if ssim_weight > 0:
        # ε-prediction divides by √ᾱ, unbounded at t → T: clamp as a sampler would.
        x0_hat = a * x_t - b * pred if v_pred else (x_t - b * pred) / a.clamp_min(1e-3)
        estimate = (lq_up + x0_hat / settings.residual_scale).clamp(0, 1)
        loss = loss + ssim_weight * (1 - ssim_torch(estimate, hq)).mean()
    return loss


# ---- images ------------------------------------------------------------------------------------


def bicubic_enhance(lq: np.ndarray, scale: int) -> np.ndarray:
    """The honest baseline: ``(h, w)`` float32 in [0, 1] → ``(h·scale, w·scale)`` bicubic."""
    return bicubic_upsample(torch.from_numpy(np.ascontiguousarray(lq, np.float32)), scale).numpy()
