"""The synthesis DiT: a small pixel-space Diffusion Transformer that paints inside a mask.

:class:`SynthDiTSettings` holds the architecture and formulation; :class:`SynthDiT` is the
network. It subclasses diffusers' ``ModelMixin`` and ``ConfigMixin`` (every settings field is a
``@register_to_config`` argument, so ``save_pretrained`` writes ``config.json`` and
``diffusion_pytorch_model.safetensors`` and ``from_pretrained`` reads them back) and
``PeftAdapterMixin`` (``add_adapter`` / ``set_adapters`` / ``save_lora_adapter``), the host of the
characteristic adapters.

Architecture (Peebles & Xie 2023, https://arxiv.org/abs/2212.09748, adaLN-Zero):

- input ``(B, 3, H, W)``: the noisy patch ``x_t``, the context (the clean patch with the mask's
  support blanked to 0) and the mask (binary, or soft in [0, 1]: a nodule's projected thickness
  over its maximum); all in the model scale [-1, 1] except the mask;
- patchify: a ``p × p`` stride-``p`` convolution to ``hidden_size`` tokens, plus a fixed 2-D
  sin-cos position embedding computed for the actual ``(H/p, W/p)`` grid (non-square patches
  work; nothing is stored for it);
- ONE timestep embedder (sinusoidal features → MLP) shared by all blocks (diffusers'
  ``DiTTransformer2DModel`` gives every block its own copy, lora.md §2.2);
- ``depth`` blocks: ``x += gate · attn(modulate(LN(x)))``, ``x += gate · ff(modulate(LN(x)))``,
  the six modulation vectors from a per-block ``SiLU → Linear`` of the time embedding that is
  **zero-initialised**, so every block starts as the identity;
- final layer: LN, modulation (zero-initialised) and a **zero-initialised** linear to ``p²``
  values per token, unpatchified to one output channel.

Linear layers are named as in diffusers' attention blocks (``attn1.to_q``, ``attn1.to_k``,
``attn1.to_v``, ``attn1.to_out.0``, ``ff.net.0.proj``, ``ff.net.2``), so peft adapters target
them by name; :data:`LORA_TARGETS` lists them. Never target the modulation, embedders or the
output layer (``"all-linear"`` would: lora.md §2.2, wave2-addendum §0.4).

**Prediction target: x₀ (the clean patch)**, in one of two parameterisations
(``prediction``). ``x0``: the network's output is the clean patch. JiT (Li & He 2025,
https://arxiv.org/abs/2511.13720) shows that in pixel space, where each token is
high-dimensional, predicting the clean image keeps working where ε- and v-prediction fail; for
inpainting x₀ is also what is composited with the known context. ``v``: the network predicts
``v = √ᾱ ε − √(1−ᾱ) x₀`` and the model returns ``x₀ = √ᾱ x_t − √(1−ᾱ) v`` (Salimans & Ho 2022,
https://arxiv.org/abs/2202.00512; EDM's skip connection with σ_data = 1, Karras et al. 2022),
so at low noise the output is the input plus a small correction. Tokens here are
16-dimensional (4 × 4 × 1), far from JiT's 768. Either way :meth:`SynthDiT.forward` returns x₀
and the diffusers schedulers sample it with ``prediction_type="sample"``.

Measured (session 12, 240 nodule windows of held-out patients, ``repro/synth_realism.py``):
the shipped ``x0`` model, given its own clean patch (t = 0), returns the mask's interior with a
masked MSE of 4.7e-4 and steps between neighbouring pixels across the 4-px token boundaries
4.3× those within tokens: it repaints in smooth blocks (its samples' seams 5.3× with DDIM 10,
4.9× with DDPM 10, against 1.0× in real patches; no sampler or step count changes it), which a
classifier sees. A ``v`` model trained the same way returns the clean patch (MSE 1e-5, seams
1.1×), but at middle noise levels it still draws blocks: its samples' seams are 2.6× and their
fine texture 1.24× the radiograph's (``x0``: 0.93×).

**Pixel pitch and patch size.** Default: 64 × 64 px at 0.75 mm per pixel, a 48 mm field. A
30 mm nodule is 40 px across with 12 px (9 mm) of context on each side; a 3 mm nodule is 4 px,
one token. Radiographs are resampled to this pitch around the nodule and back (see
:mod:`cxrkit.synthdit.inference`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders.peft import PeftAdapterMixin
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from cxrkit.errors import InputError, ModelError

SYNTH_DIT_KIND = "synth-dit"
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")
"""The linears an adapter may target (peft ``target_modules``, matched as name suffixes)."""
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
PREDICTIONS = ("x0", "v")
"""What the network may predict (the model returns x₀ either way; module docstring)."""


@dataclass(frozen=True)
class SynthDiTSettings:
    """Architecture and formulation of a synthesis DiT (stored in ``config.json``).

    Attributes:
        patch_px: side of the square training patch in pixels (a multiple of ``patch_size``);
            any multiple of ``patch_size`` works at inference, non-square too.
        pixel_mm: the pitch the model works at, mm per pixel.
        patch_size: token side ``p`` in pixels (the quality knob: tokens = (H/p)·(W/p)).
        hidden_size: token width.
        depth: transformer blocks.
        num_heads: attention heads (must divide ``hidden_size``).
        mlp_ratio: MLP width over ``hidden_size``.
        num_train_timesteps: the cosine schedule's length ``T``.
        default_steps: sampler steps when the caller gives none.
        default_sampler: a :data:`cxrkit.diffusion.SAMPLERS` name.
        prediction: what the network predicts, ``x0`` or ``v`` (:data:`PREDICTIONS`); the
            model returns x₀ either way.
        kind: always ``synth-dit``; loading checks it.
    """

    patch_px: int = 64
    pixel_mm: float = 0.75
    patch_size: int = 4
    hidden_size: int = 192
    depth: int = 6
    num_heads: int = 3
    mlp_ratio: float = 4.0
    num_train_timesteps: int = 1000
    default_steps: int = 10
    default_sampler: str = "ddim"
    kind: str = field(default=SYNTH_DIT_KIND)
    prediction: str = "x0"

    def __post_init__(self) -> None:
        if self.patch_size < 1 or self.patch_px < self.patch_size \
                or self.patch_px % self.patch_size:
            raise InputError(f"patch_px {self.patch_px} must be a multiple of patch_size "
                             f"{self.patch_size}")
        if not 0.05 <= self.pixel_mm <= 10:
            raise InputError(f"pixel_mm must be in 0.05..10 mm, got {self.pixel_mm}")
        if min(self.hidden_size, self.depth, self.num_heads) < 1 \
                or self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise InputError("hidden_size must split into num_heads heads of even width")
        if self.hidden_size % 4:
            raise InputError("hidden_size must be a multiple of 4 (2-D sin-cos positions)")
        if self.mlp_ratio <= 0 or self.num_train_timesteps < 2 or self.default_steps < 1:
            raise InputError("mlp_ratio > 0, num_train_timesteps ≥ 2, default_steps ≥ 1")
        if self.prediction not in PREDICTIONS:
            raise InputError(f"prediction must be one of {', '.join(PREDICTIONS)}, got "
                             f"{self.prediction!r}")
        if self.kind != SYNTH_DIT_KIND:
            raise InputError(f"synthesis DiT settings must have kind {SYNTH_DIT_KIND!r}")

    def scheduler_config(self) -> dict[str, Any]:
        """The training schedule as a diffusers ``DDPMScheduler`` config: cosine
        (``squaredcos_cap_v2``), x₀ prediction (``sample``), trailing timesteps, no clipping."""
        from diffusers import DDPMScheduler

        scheduler = DDPMScheduler(
            num_train_timesteps=self.num_train_timesteps, beta_schedule="squaredcos_cap_v2",
            prediction_type="sample", clip_sample=False, timestep_spacing="trailing")
        return dict(scheduler.config)  # type: ignore[attr-defined]


def sincos_2d(height: int, width: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions ``(height·width, dim)`` of a token grid, row-major: half the
    channels encode the row, half the column (MAE / DiT), each as ``dim/4`` frequencies from 1
    to 1/10000. Computed for any grid, so non-square patches need nothing stored."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos[:, None] * omega[None]  # (n, dim/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (n, dim/2)

    rows = torch.arange(height, dtype=torch.float64).repeat_interleave(width)
    cols = torch.arange(width, dtype=torch.float64).repeat(height)
    return torch.cat([encode(rows), encode(cols)], dim=1).float()


def timestep_features(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """Sinusoidal features ``(B, dim)`` of timesteps ``t`` ``(B,)`` (DiT's frequencies)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class _Attention(nn.Module):
    """Self-attention with diffusers' layer names (``to_q``, ``to_k``, ``to_v``, ``to_out.0``)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(B, N, self.heads, D // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.to_q(x)), heads(self.to_k(x)),
                                             heads(self.to_v(x)))
        out = out.transpose(1, 2).reshape(B, N, D)
        for layer in self.to_out:
            out = layer(out)
        return out


class _GeluProj(nn.Module):
    """``gelu(proj(x))`` (tanh approximation), named like diffusers' ``GELU`` (``proj``)."""

    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class _FeedForward(nn.Module):
    """MLP with diffusers' names: ``net.0.proj`` (in, GELU), ``net.1`` (dropout), ``net.2``."""

    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.net = nn.ModuleList([_GeluProj(dim, inner), nn.Dropout(0.0), nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class _Block(nn.Module):
    """One adaLN-Zero transformer block (its modulation linear starts at zero)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn1 = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = _FeedForward(dim, int(dim * mlp_ratio))
        self.adaln_modulation = nn.Linear(dim, 6 * dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        mods = self.adaln_modulation(F.silu(c))[:, None]  # (B, 1, 6D)
        shift1, scale1, gate1, shift2, scale2, gate2 = mods.chunk(6, dim=-1)
        x = x + gate1 * self.attn1(self.norm1(x) * (1 + scale1) + shift1)
        return x + gate2 * self.ff(self.norm2(x) * (1 + scale2) + shift2)


class SynthDiT(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """The mask-conditioned pixel-space DiT (see the module docstring).

    Every argument is a field of :class:`SynthDiTSettings` (``SynthDiT(**asdict(settings))``);
    :attr:`settings` gives them back.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, patch_px: int = 64, pixel_mm: float = 0.75, patch_size: int = 4,
                 hidden_size: int = 192, depth: int = 6, num_heads: int = 3,
                 mlp_ratio: float = 4.0, num_train_timesteps: int = 1000,
                 default_steps: int = 10, default_sampler: str = "ddim",
                 kind: str = SYNTH_DIT_KIND, prediction: str = "x0") -> None:
        super().__init__()
        SynthDiTSettings(patch_px, pixel_mm, patch_size, hidden_size, depth, num_heads,
                         mlp_ratio, num_train_timesteps, default_steps, default_sampler, kind,
                         prediction)
        self._alphas: torch.Tensor | None = None  # ᾱ of the schedule, computed once
        D, p = hidden_size, patch_size
        self.patch_embed = nn.Conv2d(3, D, kernel_size=p, stride=p)
        self.time_embed = nn.Sequential(nn.Linear(256, D), nn.SiLU(), nn.Linear(D, D))
        self.blocks = nn.ModuleList([_Block(D, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm_out = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.out_modulation = nn.Linear(D, 2 * D)
        self.proj_out = nn.Linear(D, p * p)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's initialisation: Xavier-uniform linears, zero biases, N(0, 0.02) time MLP, and
        zero modulation and output layers (adaLN-Zero)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for layer in (self.time_embed[0], self.time_embed[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for layer in (*(b.adaln_modulation for b in self.blocks), self.out_modulation,
                      self.proj_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def settings(self) -> SynthDiTSettings:
        """The model's settings (from its config)."""
        from cxrkit.modelfiles import settings_from_config

        return settings_from_config(self.config, SynthDiTSettings)

    @classmethod
    def new(cls, settings: SynthDiTSettings, *, generator: torch.Generator) -> SynthDiT:
        """A freshly initialised model, weights drawn from ``generator`` (the global RNG is
        seeded from it for the call only and restored afterwards)."""
        from cxrkit.modelfiles import seeded_init

        with seeded_init(generator):
            return cls(**asdict(settings))

    def forward(self, x_t: torch.Tensor, context: torch.Tensor, mask: torch.Tensor,
                t: torch.Tensor) -> torch.Tensor:
        """The predicted clean patch.

        Args:
            x_t: ``(B, 1, H, W)`` noisy patch, model scale; ``H, W`` multiples of
                ``patch_size``.
            context: ``(B, 1, H, W)`` the clean patch with the mask's support set to 0.
            mask: ``(B, 1, H, W)`` in [0, 1] (binary or soft).
            t: ``(B,)`` timesteps.

        Returns:
            ``(B, 1, H, W)`` predicted ``x₀``, float32 (with ``prediction="v"`` computed from
            the network's v and ``x_t``; ``t`` must then be integer timesteps of the schedule).
        """
        p = self.config.patch_size
        B, _, H, W = x_t.shape
        if H % p or W % p:
            raise InputError(f"patch sides {H}x{W} must be multiples of {p}")
        dtype = self.patch_embed.weight.dtype
        inputs = torch.cat([x_t, context, mask], dim=1).to(dtype)
        tokens = self.patch_embed(inputs).flatten(2).transpose(1, 2)  # (B, N, D)
        pos = sincos_2d(H // p, W // p, self.config.hidden_size).to(tokens)
        x = tokens + pos[None]
        c = self.time_embed(timestep_features(t.reshape(-1).expand(B)).to(dtype))  # (B, D)
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.out_modulation(F.silu(c))[:, None].chunk(2, dim=-1)
        x = self.proj_out(self.norm_out(x) * (1 + scale) + shift)  # (B, N, p²)
        x = x.view(B, H // p, W // p, p, p).permute(0, 1, 3, 2, 4).reshape(B, 1, H, W)
        x = x.float()
        if self.config.prediction == "v":
            alphas = self.alphas_cumprod().to(x.device)[t.reshape(-1).expand(B).long()]
            alphas = alphas.view(B, 1, 1, 1)
            x = alphas.sqrt() * x_t.float() - (1 - alphas).sqrt() * x
        return x

    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_t of the training schedule, ``(T,)`` float32 on the CPU (computed once; the
        training losses and the v parameterisation read it)."""
        if self._alphas is None:
            from cxrkit.diffusion import train_alphas_cumprod

            self._alphas = train_alphas_cumprod(self.settings.scheduler_config())
        return self._alphas

    @classmethod
    def load(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> SynthDiT:
        """Load a model folder written by ``save_pretrained`` (safetensors only), frozen, in
        eval mode.

        Raises:
            ModelError: not a folder, another kind of model, or missing/unfit weights.
        """
        from cxrkit.modelfiles import read_config, settings_values

        folder = Path(directory)
        settings_values(read_config(folder, SYNTH_DIT_KIND), SynthDiTSettings, folder)
        if not (folder / WEIGHTS_NAME).is_file():
            raise ModelError(f"the synthesis model has no {WEIGHTS_NAME}", path=str(folder),
                             hint="weights are read from safetensors only (never pickles)")
        try:
            model = cls.from_pretrained(folder, use_safetensors=True, low_cpu_mem_usage=False)
        except (OSError, ValueError, RuntimeError, TypeError) as exc:
            raise ModelError(f"cannot load the synthesis model: {exc}"[:300],
                             path=str(folder)) from exc
        return model.to(device).eval().requires_grad_(False)
