"""MUNIT-LQ networks: settings, content and style encoders, AdaIN decoder, discriminators.

Architecture as in the paper's configs (``NVlabs/MUNIT`` ``configs/*.yaml``; the code is written
here, not copied):

- content encoder: 7×7 conv → ``downsamples`` strided 4×4 convs (width doubling) → residual
  blocks, all with instance norm and ReLU;
- style encoder: 7×7 conv → 2 width-doubling strided convs → ``style_downsamples - 2`` more →
  global average pool → 1×1 conv to ``style_dim``; no normalisation;
- decoder: AdaIN residual blocks → ``downsamples`` × (nearest ×2 upsample, 5×5 conv, layer
  norm, ReLU) → 7×7 conv → tanh; a 3-layer MLP maps ``s`` to every AdaIN (γ, β);
- discriminators: ``disc_scales`` PatchGANs on an average-pooled image pyramid, 4×4 stride-2
  convs with LeakyReLU(0.2) and no normalisation, least-squares GAN (LSGAN) objective.

Images inside the networks are ``(B, 1, H, W)`` in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from cxrkit.errors import InputError

MUNIT_KIND = "munit-lq"
DISC_INITS = {
    "kaiming": "He-normal for LeakyReLU(0.2): scores of order 1 at any width",
    "gaussian": "MUNIT's N(0, 0.02): sized for the paper's width 64",
}
"""Initialisations of the discriminators' convs (:attr:`MunitSettings.disc_init`)."""


@dataclass(frozen=True)
class MunitSettings:
    """Architecture and loss weights of MUNIT-LQ (stored as ``config.json``).

    Attributes:
        width: channels of the first conv (paper: 64).
        downsamples: strided convs of the content encoder / upsamplings of the decoder (paper: 2).
        residual_blocks: residual blocks in the content encoder and decoder (paper: 4).
        style_dim: length of the style code (paper: 8).
        style_downsamples: strided convs of the style encoder (paper: 4).
        mlp_width: hidden width of the style → AdaIN MLP (paper: 256).
        disc_width: channels of the first discriminator conv (paper: 64).
        disc_layers: strided convs per discriminator (paper: 4).
        disc_scales: image scales judged by the multi-scale discriminator (paper: 3).
        disc_init: initial discriminator weights, a key of :data:`DISC_INITS`: ``kaiming``
            (He-normal for LeakyReLU(0.2), scaled for any width) or ``gaussian`` (MUNIT's
            N(0, 0.02), which suits only the paper's width: at width 16 the scores start at ~0
            and the discriminators barely learn).
        disc_lr_ratio: discriminator learning rate ÷ generator learning rate (two time-scale
            update rule, Heusel et al. 2017; paper: 1).
        gan_weight: weight of the LSGAN term (paper: 1).
        recon_image_weight: weight of the within-domain L1 image reconstruction (paper: 10).
        recon_style_weight: weight of the style-code reconstruction (paper: 1).
        recon_content_weight: weight of the content-code reconstruction (paper: 1).
        recon_cycle_weight: weight of the explicit cycle reconstruction (paper: 0).
        tone_weight: weight of a tone-keeping term, not in MUNIT (0: off): the L1 between each
            translation and its source after both are averaged over ``tone_pool``-px blocks, so
            a translation keeps the local mean brightness (the anatomy's tone) and may change
            only what is finer (texture, noise, sharpness).
        tone_pool: block side (px, at the training resolution) of the tone-keeping term.
        image_size: side (px) the images were brought to for training (short side resized to it);
            translation runs at this resolution.
        kind: always ``munit-lq``; loading checks it.
    """

    width: int = 16
    downsamples: int = 2
    residual_blocks: int = 2
    style_dim: int = 8
    style_downsamples: int = 4
    mlp_width: int = 64
    disc_width: int = 16
    disc_layers: int = 3
    disc_scales: int = 3
    disc_init: str = "kaiming"
    disc_lr_ratio: float = 4.0
    gan_weight: float = 1.0
    recon_image_weight: float = 10.0
    recon_style_weight: float = 1.0
    recon_content_weight: float = 1.0
    recon_cycle_weight: float = 0.0
    tone_weight: float = 0.0
    tone_pool: int = 8
    image_size: int = 256
    kind: str = field(default=MUNIT_KIND)

    def __post_init__(self) -> None:
        counts = (self.width, self.downsamples, self.residual_blocks, self.style_dim,
                  self.style_downsamples, self.mlp_width, self.disc_width, self.disc_layers,
                  self.disc_scales, self.image_size)
        if min(counts) < 1:
            raise InputError("MUNIT widths, depths and sizes must all be ≥ 1")
        if self.style_downsamples < 2:
            raise InputError("the style encoder needs at least 2 downsamplings")
        if self.disc_init not in DISC_INITS:
            raise InputError(f"disc_init must be one of {tuple(DISC_INITS)}, not "
                             f"{self.disc_init!r}")
        if self.tone_weight < 0 or self.tone_pool < 1:
            raise InputError(f"tone_weight must be ≥ 0 and tone_pool ≥ 1, got "
                             f"{self.tone_weight} and {self.tone_pool}")
        if self.disc_lr_ratio <= 0:
            raise InputError(f"disc_lr_ratio must be > 0, got {self.disc_lr_ratio}")
        if self.kind != MUNIT_KIND:
            raise InputError(f"MUNIT settings must have kind {MUNIT_KIND!r}, got {self.kind!r}")

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this (the content encoder's total downsampling)."""
        return 2**self.downsamples


# ---- building blocks ----------------------------------------------------------------------------


class _Conv(nn.Sequential):
    """Reflection pad → conv → optional norm → optional activation (MUNIT's ``Conv2dBlock``)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, *,
                 norm: str = "none", act: str = "relu") -> None:
        pad = kernel // 2 if kernel % 2 else 1  # 4×4 stride 2 with pad 1: H → H/2
        layers: list[nn.Module] = [nn.ReflectionPad2d(pad), nn.Conv2d(c_in, c_out, kernel, stride)]
        if norm == "in":
            layers.append(nn.InstanceNorm2d(c_out))
        elif norm == "ln":
            layers.append(_LayerNorm(c_out))
        if act == "relu":
            layers.append(nn.ReLU())
        elif act == "lrelu":
            layers.append(nn.LeakyReLU(0.2))
        elif act == "tanh":
            layers.append(nn.Tanh())
        super().__init__(*layers)


class _LayerNorm(nn.Module):
    """Layer norm over (C, H, W) with a per-channel affine, as MUNIT's decoder uses."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) / (std + 1e-5)
        return x * self.gamma.view(1, -1, 1, 1) + self.beta.view(1, -1, 1, 1)


class _ResBlock(nn.Module):
    """``x + conv(norm(relu(conv(norm(x)))))`` with instance norm (content encoder)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_Conv(channels, channels, 3, norm="in"),
                                  _Conv(channels, channels, 3, norm="in", act="none"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def adain(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Adaptive instance normalisation (Huang & Belongie 2017): ``γ·IN(x) + β``.

    Args:
        x: ``(B, C, H, W)`` features.
        gamma, beta: ``(B, C)`` per-sample affine parameters.

    Returns:
        ``(B, C, H, W)``.
    """
    normed = F.instance_norm(x, eps=1e-5)
    return normed * gamma[..., None, None] + beta[..., None, None]


class _AdainResBlock(nn.Module):
    """Residual block whose two normalisations are AdaIN with parameters from the style MLP."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _Conv(channels, channels, 3, norm="none", act="none")
        self.conv2 = _Conv(channels, channels, 3, norm="none", act="none")

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        g1, b1, g2, b2 = params.chunk(4, dim=1)  # each (B, C)
        h = F.relu(adain(self.conv1(x), 1 + g1, b1))
        return x + adain(self.conv2(h), 1 + g2, b2)


# ---- encoders, decoder, generator, discriminator -----------------------------------------------


class ContentEncoder(nn.Module):
    """``(B, 1, H, W)`` image → ``(B, w·2^n, H/2^n, W/2^n)`` content code (instance-normalised)."""

    def __init__(self, settings: MunitSettings) -> None:
        super().__init__()
        w = settings.width
        layers: list[nn.Module] = [_Conv(1, w, 7, norm="in")]
        for _ in range(settings.downsamples):
            layers.append(_Conv(w, 2 * w, 4, 2, norm="in"))
            w *= 2
        layers += [_ResBlock(w) for _ in range(settings.residual_blocks)]
        self.net = nn.Sequential(*layers)
        self.out_channels = w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class StyleEncoder(nn.Module):
    """``(B, 1, H, W)`` image → ``(B, style_dim)`` style code (no normalisation, global pool)."""

    def __init__(self, settings: MunitSettings) -> None:
        super().__init__()
        w = settings.width
        layers: list[nn.Module] = [_Conv(1, w, 7)]
        for i in range(settings.style_downsamples):
            grow = 2 if i < 2 else 1
            layers.append(_Conv(w, w * grow, 4, 2))
            w *= grow
        layers += [nn.AdaptiveAvgPool2d(1), nn.Conv2d(w, settings.style_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)  # (B, style_dim)


class Decoder(nn.Module):
    """``(content, style)`` → ``(B, 1, H, W)`` image in [-1, 1]."""

    def __init__(self, settings: MunitSettings, channels: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_AdainResBlock(channels) for _ in range(
            settings.residual_blocks))
        ups: list[nn.Module] = []
        w = channels
        for _ in range(settings.downsamples):
            ups += [nn.Upsample(scale_factor=2, mode="nearest"), _Conv(w, w // 2, 5, norm="ln")]
            w //= 2
        ups.append(_Conv(w, 1, 7, act="tanh"))
        self.up = nn.Sequential(*ups)
        self.mlp = nn.Sequential(
            nn.Linear(settings.style_dim, settings.mlp_width), nn.ReLU(),
            nn.Linear(settings.mlp_width, settings.mlp_width), nn.ReLU(),
            nn.Linear(settings.mlp_width, 4 * channels * settings.residual_blocks))

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        params = self.mlp(style).chunk(len(self.blocks), dim=1)  # each (B, 4C)
        x = content
        for block, p in zip(self.blocks, params, strict=True):
            x = block(x, p)
        return self.up(x)


class Generator(nn.Module):
    """One domain's auto-encoder: content encoder, style encoder and AdaIN decoder."""

    def __init__(self, settings: MunitSettings) -> None:
        super().__init__()
        self.content = ContentEncoder(settings)
        self.style = StyleEncoder(settings)
        self.decoder = Decoder(settings, self.content.out_channels)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 1, H, W)`` → content ``(B, C', H', W')`` and style ``(B, style_dim)``."""
        return self.content(x), self.style(x)


class MultiScaleDiscriminator(nn.Module):
    """LSGAN PatchGANs on ``disc_scales`` average-pooled scales; outputs one map per scale."""

    def __init__(self, settings: MunitSettings) -> None:
        super().__init__()
        nets = []
        for _ in range(settings.disc_scales):
            w = settings.disc_width
            layers: list[nn.Module] = [_Conv(1, w, 4, 2, act="lrelu")]
            for _ in range(settings.disc_layers - 1):
                layers.append(_Conv(w, 2 * w, 4, 2, act="lrelu"))
                w *= 2
            layers.append(nn.Conv2d(w, 1, 1))
            nets.append(nn.Sequential(*layers))
        self.nets = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for net in self.nets:
            outputs.append(net(x))  # (B, 1, h, w) real/fake scores
            x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
        return outputs


