"""MUNIT-LQ: unpaired HQ radiograph → DRR-style LQ translation with a content/style split.

MUNIT (Huang, Liu, Belongie & Kautz, ECCV 2018, https://arxiv.org/abs/1804.04732) encodes an
image of domain ``d`` into a *content* code ``c`` (a spatial map, shared by both domains) and a
*style* code ``s`` (an 8-d vector, per domain), and decodes ``(c, s)`` with AdaIN residual blocks
whose affine parameters an MLP computes from ``s``. Translation HQ → LQ is
``G_lq(E_c^hq(x_hq), s)`` with ``s ~ N(0, I)`` (diversity) or ``s = E_s^lq(x_ref)`` (the look of a
reference DRR). The content code keeps the anatomy, so HQ and LQ stay aligned: a training pair.

Domain ``hq`` is real radiographs, domain ``lq`` real DRRs. Architecture as in the paper's
configs (``NVlabs/MUNIT`` ``configs/*.yaml``; the code is written here, not copied):

- content encoder: 7×7 conv → ``downsamples`` strided 4×4 convs (width doubling) → residual
  blocks, all with instance norm and ReLU;
- style encoder: 7×7 conv → 2 width-doubling strided convs → ``style_downsamples - 2`` more →
  global average pool → 1×1 conv to ``style_dim``; no normalisation;
- decoder: AdaIN residual blocks → ``downsamples`` × (nearest ×2 upsample, 5×5 conv, layer
  norm, ReLU) → 7×7 conv → tanh; a 3-layer MLP maps ``s`` to every AdaIN (γ, β);
- discriminators: ``disc_scales`` PatchGANs on an average-pooled image pyramid, 4×4 stride-2
  convs with LeakyReLU(0.2) and no normalisation, least-squares GAN (LSGAN) objective.

Losses (MUNIT eq. 5, its default weights): ``gan_weight·L_GAN + recon_image_weight·L1(x, x̂) +
recon_style_weight·L1(s, ŝ) + recon_content_weight·L1(c, ĉ)`` in both directions, plus an optional
cycle term (MUNIT's ``recon_x_cyc_w``, 0 by default). Widths default to a quarter of the paper's
so that CPU training is possible; the paper's values are given per field.

Images inside the networks are ``(B, 1, H, W)`` in [-1, 1]; the public functions take display
radiographs ``(H, W)`` float32 in [0, 1], bone bright.

A model directory::

    config.json         MunitSettings (with "kind": "munit-lq")
    model.safetensors   the two generators (the discriminators are training-only)
    run.json            how it was trained (written by :mod:`cxrkit.train`)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrkit.errors import InputError, ModelError

if TYPE_CHECKING:
    from cxrkit.train import TrainConfig, TrainResult

MUNIT_KIND = "munit-lq"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DOMAINS = ("hq", "lq")


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
        gan_weight: weight of the LSGAN term (paper: 1).
        recon_image_weight: weight of the within-domain L1 image reconstruction (paper: 10).
        recon_style_weight: weight of the style-code reconstruction (paper: 1).
        recon_content_weight: weight of the content-code reconstruction (paper: 1).
        recon_cycle_weight: weight of the explicit cycle reconstruction (paper: 0).
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
    gan_weight: float = 1.0
    recon_image_weight: float = 10.0
    recon_style_weight: float = 1.0
    recon_content_weight: float = 1.0
    recon_cycle_weight: float = 0.0
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


# ---- the model -----------------------------------------------------------------------------------


class Munit(nn.Module):
    """MUNIT-LQ: generators and (for training) discriminators of the ``hq`` and ``lq`` domains.

    ``forward`` is the training objective, so that one call goes through DDP; see
    :func:`munit_loss` for how the generator and discriminator updates share one backward pass.

    Args:
        settings: architecture and loss weights.
        discriminators: build the discriminators (False for inference).
    """

    def __init__(self, settings: MunitSettings, *, discriminators: bool = True) -> None:
        super().__init__()
        self.settings = settings
        self.gen = nn.ModuleDict({d: Generator(settings) for d in DOMAINS})
        self.dis = nn.ModuleDict({d: MultiScaleDiscriminator(settings) for d in DOMAINS}
                                 if discriminators else {})

    @classmethod
    def new(cls, settings: MunitSettings, *, generator: torch.Generator) -> Munit:
        """Freshly initialised weights from ``generator``: Kaiming-normal convs and linears in the
        generators, N(0, 0.02) in the discriminators (MUNIT's ``kaiming`` / ``gaussian`` init)."""
        model = cls(settings)
        for part, std in ((model.gen, None), (model.dis, 0.02)):
            for module in part.modules():
                if isinstance(module, nn.Conv2d | nn.Linear):
                    if std is None:
                        nn.init.kaiming_normal_(module.weight, generator=generator)
                    else:
                        nn.init.normal_(module.weight, 0.0, std, generator=generator)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
        return model

    def forward(self, hq: torch.Tensor, lq: torch.Tensor, style_hq: torch.Tensor,
                style_lq: torch.Tensor) -> dict[str, torch.Tensor]:
        """All loss terms of one step.

        Args:
            hq, lq: ``(B, 1, h, w)`` unpaired crops in [-1, 1].
            style_hq, style_lq: ``(B, style_dim)`` random style codes, N(0, I).

        Returns:
            ``generator`` and ``discriminator`` (the weighted totals) and the unweighted terms
            ``recon_image``, ``recon_style``, ``recon_content``, ``gan``, scalars.
        """
        s = self.settings
        gen = {d: self.generator(d) for d in DOMAINS}
        c_hq, s_hq = gen["hq"].encode(hq)
        c_lq, s_lq = gen["lq"].encode(lq)
        recon_image = (F.l1_loss(gen["hq"].decoder(c_hq, s_hq), hq)
                       + F.l1_loss(gen["lq"].decoder(c_lq, s_lq), lq))
        fake_lq = gen["lq"].decoder(c_hq, style_lq)  # HQ anatomy, LQ look
        fake_hq = gen["hq"].decoder(c_lq, style_hq)
        c_hq2, s_lq2 = gen["lq"].encode(fake_lq)
        c_lq2, s_hq2 = gen["hq"].encode(fake_hq)
        recon_style = F.l1_loss(s_lq2, style_lq) + F.l1_loss(s_hq2, style_hq)
        recon_content = F.l1_loss(c_hq2, c_hq) + F.l1_loss(c_lq2, c_lq)
        gan = _lsgan(self._frozen("lq", fake_lq), 1.0) + _lsgan(self._frozen("hq", fake_hq), 1.0)
        generator = (s.gan_weight * gan + s.recon_image_weight * recon_image
                     + s.recon_style_weight * recon_style
                     + s.recon_content_weight * recon_content)
        if s.recon_cycle_weight > 0:
            cycle = (F.l1_loss(gen["hq"].decoder(c_hq2, s_hq), hq)
                     + F.l1_loss(gen["lq"].decoder(c_lq2, s_lq), lq))
            generator = generator + s.recon_cycle_weight * cycle
        discriminator = (_lsgan(self.dis["lq"](fake_lq.detach()), 0.0)
                         + _lsgan(self.dis["lq"](lq), 1.0)
                         + _lsgan(self.dis["hq"](fake_hq.detach()), 0.0)
                         + _lsgan(self.dis["hq"](hq), 1.0))
        return {"generator": generator, "discriminator": discriminator,
                "recon_image": recon_image, "recon_style": recon_style,
                "recon_content": recon_content, "gan": gan}

    def _frozen(self, domain: str, x: torch.Tensor) -> list[torch.Tensor]:
        """The discriminator's scores with its weights detached: the generator's adversarial
        term sends gradients to the generator only."""
        from torch.func import functional_call

        dis = self.dis[domain]
        weights = {k: v.detach() for k, v in dis.named_parameters()}
        return functional_call(dis, weights, (x,))  # type: ignore[no-any-return]

    def translate(self, image: torch.Tensor, style: torch.Tensor, *, source: str = "hq",
                  target: str = "lq") -> torch.Tensor:
        """``G_target(E_c^source(image), style)``.

        Args:
            image: ``(B, 1, H, W)`` in [-1, 1], ``H, W`` multiples of ``settings.multiple``.
            style: ``(B, style_dim)`` style code of the target domain.

        Returns:
            ``(B, 1, H, W)`` in [-1, 1].
        """
        return self.generator(target).decoder(self.generator(source).content(image), style)

    def generator(self, domain: str) -> Generator:
        """The generator of ``domain`` (``hq`` or ``lq``)."""
        return cast(Generator, self.gen[domain])

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` (generators only)."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().float().contiguous() for k, v in self.gen.state_dict().items()}
        save_file(state, out / WEIGHTS_NAME, metadata={"format": "pt", "kind": MUNIT_KIND})
        (out / CONFIG_NAME).write_text(json.dumps(asdict(self.settings), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device = "cpu"
                        ) -> Munit:
        """Load a model directory written by :meth:`save_pretrained` (safetensors only).

        Raises:
            ModelError: not a folder, another kind of model, no safetensors weights, or weights
                that do not fit the settings.
        """
        from safetensors.torch import load_file

        folder = Path(directory)
        settings = MunitSettings(**_settings_values(read_config(folder, MUNIT_KIND),
                                                    MunitSettings, folder))
        weights = folder / WEIGHTS_NAME
        if not weights.is_file():
            raise ModelError(f"MUNIT-LQ model has no {WEIGHTS_NAME}", path=str(folder),
                             hint="weights are read from safetensors only (never pickles)")
        model = cls(settings, discriminators=False)
        try:
            model.gen.load_state_dict(load_file(weights))
        except (RuntimeError, OSError) as exc:
            raise ModelError(f"cannot load the MUNIT-LQ weights: {exc}"[:300],
                             path=str(weights)) from exc
        return model.to(device).eval().requires_grad_(False)


def unwrap_munit(model: nn.Module) -> Munit:
    """The :class:`Munit` inside ``model`` (itself, or the module a DDP wrapper holds)."""
    inner = getattr(model, "module", model)
    if not isinstance(inner, Munit):
        raise ModelError(f"expected a Munit, got {type(inner).__name__}")
    return inner


def _lsgan(scores: Sequence[torch.Tensor], target: float) -> torch.Tensor:
    """Least-squares GAN loss summed over scales: ``Σ mean((D - target)²)``."""
    return torch.stack([torch.mean((d - target) ** 2) for d in scores]).sum()


def read_config(folder: Path, kind: str) -> dict[str, Any]:
    """The ``config.json`` of a cxrkit model folder, checked to be of ``kind``.

    Raises:
        ModelError: not a folder, no readable ``config.json``, or another kind of model.
    """
    if not folder.is_dir():
        raise ModelError("no such model folder", path=str(folder))
    meta = folder / CONFIG_NAME
    found = meta if meta.is_file() else folder / "enhancer.json"
    if not found.is_file():
        raise ModelError(f"not a cxrkit {kind} model (no {CONFIG_NAME})", path=str(folder))
    try:
        raw = json.loads(found.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"unreadable {found.name}: {exc}", path=str(found)) from exc
    actual = raw.get("kind") if isinstance(raw, dict) else None
    if actual != kind:
        raise ModelError(f"model is of kind {actual!r}, not {kind!r}", path=str(folder),
                         hint=f"give a folder written by the {kind} training command")
    return raw  # type: ignore[no-any-return]


def _settings_values(raw: dict[str, Any], cls: type, folder: Path) -> dict[str, Any]:
    known = {f.name for f in fields(cls)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in known}
    try:
        cls(**values)
    except (InputError, TypeError) as exc:
        raise ModelError(f"bad {CONFIG_NAME}: {exc}", path=str(folder)) from exc
    return values


# ---- training (wired to cxrkit.train.train by `cxrkit train-munit`) -----------------------------


def munit_loss(model: nn.Module, batch: dict[str, torch.Tensor],
               generators: Sequence[torch.Generator]) -> torch.Tensor:
    """The scalar the engine minimises: generator objective + discriminator objective.

    :func:`cxrkit.train.train` runs one optimizer over all parameters and one backward pass. The
    GAN's two players still get their own gradients: the generator's adversarial term scores the
    fakes with *detached* discriminator weights, and the discriminator scores *detached* fakes,
    so ``∂/∂θ_G`` of the sum is the generator's gradient and ``∂/∂θ_D`` is the discriminator's.
    The players are updated simultaneously rather than alternately (MUNIT alternates D then G on
    each batch).

    Args:
        model: a :class:`Munit` (possibly DDP-wrapped).
        batch: ``hq`` and ``lq``, each ``(B, 1, h, w)`` float32 in [0, 1] (unpaired).
        generators: one CPU generator per sample, for its random style codes.

    Returns:
        The scalar loss.
    """
    dim = unwrap_munit(model).settings.style_dim
    styles = torch.stack([torch.randn(2, dim, generator=g) for g in generators])  # (B, 2, dim)
    styles = styles.to(batch["hq"].device)
    terms = model(2 * batch["hq"] - 1, 2 * batch["lq"] - 1, styles[:, 0], styles[:, 1])
    return terms["generator"] + terms["discriminator"]


@dataclass(frozen=True)
class UnpairedCrops:
    """Unpaired random crops of the two domains (a :class:`cxrkit.train.TrainData`).

    Attributes:
        hq: HQ images ``(H, W)`` float32 in [0, 1], already at the training resolution.
        lq: LQ images, likewise.
        crop: crop side in px (a multiple of the model's ``multiple``).
        flip: also flip each crop left-right with probability 1/2.
    """

    hq: Sequence[np.ndarray]
    lq: Sequence[np.ndarray]
    crop: int
    flip: bool = False

    def __post_init__(self) -> None:
        if not self.hq or not self.lq:
            raise InputError("MUNIT-LQ needs images of both domains")
        small = min(min(im.shape) for im in (*self.hq, *self.lq))
        if small < self.crop:
            raise InputError(f"crop {self.crop} is larger than the smallest image ({small} px)")

    def sample(self, generator: np.random.Generator) -> dict[str, torch.Tensor]:
        """``hq`` and ``lq``: ``(1, crop, crop)`` float32 in [0, 1], independent images."""
        return {"hq": _random_crop(self.hq, self.crop, generator, self.flip),
                "lq": _random_crop(self.lq, self.crop, generator, self.flip)}


def _random_crop(images: Sequence[np.ndarray], crop: int, generator: np.random.Generator,
                 flip: bool) -> torch.Tensor:
    image = images[int(generator.integers(len(images)))]
    y = int(generator.integers(0, image.shape[0] - crop + 1))
    x = int(generator.integers(0, image.shape[1] - crop + 1))
    patch = image[y : y + crop, x : x + crop]
    if flip and generator.random() < 0.5:
        patch = patch[:, ::-1]
    return torch.from_numpy(np.ascontiguousarray(patch, np.float32))[None]  # (1, c, c)


def resize_short_side(image: np.ndarray, size: int) -> np.ndarray:
    """Antialiased bicubic resize of ``(H, W)`` so the shorter side is ``size``; clipped to [0, 1].

    Returns:
        ``(h, w)`` float32 with ``min(h, w) == size``.
    """
    H, W = image.shape
    scale = size / min(H, W)
    shape = (max(size, round(H * scale)), max(size, round(W * scale)))
    return resize(image, shape)


def resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Antialiased bicubic resize of ``(H, W)`` float in [0, 1] to ``shape``, float32 in [0, 1]."""
    if tuple(image.shape) == tuple(shape):
        return image.astype(np.float32, copy=False)
    x = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None]
    out = F.interpolate(x, size=shape, mode="bicubic", antialias=True, align_corners=False)
    return out[0, 0].clamp(0, 1).numpy()


def load_display(paths: Sequence[str | Path]) -> list[np.ndarray]:
    """Read display radiographs into ``(H, W)`` float32 arrays in [0, 1].

    Raises:
        InputError: a file that is not a display image (e.g. a line-integral DRR).
    """
    from cxrkit.io import read_radiograph

    images = []
    for p in paths:
        rg = read_radiograph(p)
        if rg.kind != "display":
            raise InputError(f"learned degraders train on display images, not {rg.kind!r}",
                             path=str(p), hint="render DRRs with cxrkit project --kind display")
        images.append(np.clip(rg.pixels, 0, 1).astype(np.float32))
    return images


def train_munit(hq_paths: Sequence[str | Path], lq_paths: Sequence[str | Path],
                settings: MunitSettings, config: TrainConfig, *, crop: int = 128,
                command: str = "",
                on_log: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train MUNIT-LQ with :func:`cxrkit.train.train` and write its model directory.

    Both domains are brought to ``settings.image_size`` (short side, antialiased bicubic), as
    MUNIT's data loader does, then random ``crop`` × ``crop`` patches are drawn, unpaired.
    Validation (centre crops of the images :func:`holdout` keeps out of training) reports the
    within-domain reconstruction L1 and the L1 between the content codes of an HQ crop and of its
    translation.

    Args:
        hq_paths: real radiographs (domain ``hq``).
        lq_paths: real DRRs (domain ``lq``), e.g. from ``repro/make_lq_domain.py``.
        settings: architecture and loss weights.
        config: the training loop's settings (``config.output_dir`` receives the model).
        crop: training crop side in px (a multiple of ``settings.multiple``; paper: 256).
        command: the exact command line (for ``run.json``).
        on_log: progress callback (see :func:`cxrkit.train.train`).

    Returns:
        The training result; the model directory is ``config.output_dir``.

    Raises:
        InputError: a crop that is not a multiple of ``settings.multiple``, or bad images.
    """
    from cxrkit.diffusion.training import files_sha256
    from cxrkit.train import train

    if crop % settings.multiple:
        raise InputError(f"crop {crop} must be a multiple of {settings.multiple}")
    hq = [resize_short_side(im, settings.image_size) for im in load_display(hq_paths)]
    lq = [resize_short_side(im, settings.image_size) for im in load_display(lq_paths)]
    (hq, val_hq_images), (lq, val_lq_images) = holdout(hq), holdout(lq)
    data = UnpairedCrops(hq, lq, crop, flip=False)
    val_hq = torch.stack([_center(im, crop) for im in val_hq_images])  # (n, 1, c, c)
    val_lq = torch.stack([_center(im, crop) for im in val_lq_images])

    def validate(model: nn.Module) -> dict[str, float]:
        inner = unwrap_munit(model)
        device = next(inner.parameters()).device
        x_hq, x_lq = val_hq.to(device) * 2 - 1, val_lq.to(device) * 2 - 1
        c_hq, s_hq = inner.generator("hq").encode(x_hq)
        c_lq, s_lq = inner.generator("lq").encode(x_lq)
        style = torch.randn(len(x_hq), settings.style_dim,
                            generator=torch.Generator().manual_seed(config.seed)).to(device)
        fake = inner.generator("lq").decoder(c_hq, style)
        return {"recon_l1_hq": float(F.l1_loss(inner.generator("hq").decoder(c_hq, s_hq), x_hq)),
                "recon_l1_lq": float(F.l1_loss(inner.generator("lq").decoder(c_lq, s_lq), x_lq)),
                "content_l1": float(F.l1_loss(inner.generator("lq").content(fake), c_hq))}

    model = Munit.new(settings, generator=torch.Generator().manual_seed(config.seed))
    run_info = {
        "command": command, "kind": MUNIT_KIND, "munit": asdict(settings), "crop": crop,
        "parameters": {"generators": sum(p.numel() for p in model.gen.parameters()),
                       "discriminators": sum(p.numel() for p in model.dis.parameters())},
        "data": {"hq": files_sha256(hq_paths), "lq": files_sha256(lq_paths)},
        "optimizer_note": "one AdamW over G and D, simultaneous updates (see munit_loss)",
    }

    def save(trained: nn.Module, folder: Path) -> None:
        unwrap_munit(trained).save_pretrained(folder)

    return train(model, munit_loss, data, config, validate=validate, save_model=save,
                 run_info=run_info, on_log=on_log)


def holdout(images: Sequence[np.ndarray], count: int = 4
            ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``(train, validation)``: the last ``min(count, len // 5)`` images are held out; with
    fewer than 5 images nothing is, and validation uses the first ``count`` training images."""
    held = min(count, len(images) // 5)
    train = list(images[: len(images) - held])
    return train, list(images[len(images) - held :]) if held else train[:count]


def _center(image: np.ndarray, crop: int) -> torch.Tensor:
    """The centred ``(1, crop, crop)`` patch of ``(H, W)``, float32."""
    y, x = (image.shape[0] - crop) // 2, (image.shape[1] - crop) // 2
    return torch.from_numpy(np.ascontiguousarray(image[y : y + crop, x : x + crop]))[None]


# ---- inference: the `munit` degradation method ---------------------------------------------------


def _to_multiple(image: torch.Tensor, m: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad ``(1, 1, H, W)`` to multiples of ``m``; returns the padded image and (H, W)."""
    H, W = image.shape[-2:]
    pad = (0, (-W) % m, 0, (-H) % m)
    return (F.pad(image, pad, mode="reflect") if any(pad) else image), (H, W)


@dataclass
class MunitDegrader:
    """The ``munit`` method of ``cxrkit degrade``: HQ radiograph → DRR-style LQ with MUNIT-LQ.

    The input is resized so its short side is the model's ``image_size`` (the resolution it was
    trained at), translated with ``G_lq(E_c^hq(x), s)``, and resized to ``(H, W) // scale``.

    Args:
        model_dir: a folder written by ``cxrkit train-munit``.
        style_reference: an LQ image ``(h, w)`` float32 in [0, 1] whose style code ``E_s^lq`` is
            used for every image; None draws ``s ~ N(0, I)`` per image from the generator.
        device: torch device.

    Raises:
        ModelError: the folder is not a MUNIT-LQ model.
    """

    model_dir: str | Path
    style_reference: np.ndarray | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        from cxrkit.pipe import file_sha256

        self.model = Munit.from_pretrained(self.model_dir, device=self.device)
        self.model_sha256 = file_sha256(Path(self.model_dir) / WEIGHTS_NAME)
        self._style: torch.Tensor | None = None
        if self.style_reference is not None:
            ref = self._prepare(self.style_reference)
            with torch.inference_mode():
                self._style = self.model.generator("lq").style(ref)  # (1, style_dim)

    def _prepare(self, image: np.ndarray) -> torch.Tensor:
        work = resize_short_side(_checked(image), self.model.settings.image_size)
        return torch.from_numpy(work)[None, None].to(self.device) * 2 - 1  # (1, 1, h, w)

    def __call__(self, image: np.ndarray, *, scale: int = 1, pixel_mm: float = 0.35,
                 generator: np.random.Generator) -> Any:
        """Degrade one ``(H, W)`` display image; returns a ``DegradeResult`` ``(H//s, W//s)``."""
        from cxrkit.degrade import DegradeResult

        out_shape = _out_shape(image.shape, scale)
        x, (h, w) = _to_multiple(self._prepare(image), self.model.settings.multiple)
        if self._style is None:
            code = generator.standard_normal(self.model.settings.style_dim)
            style = torch.from_numpy(code.astype(np.float32))[None].to(self.device)
            source = "random"
        else:
            style, source = self._style, "reference"
        with torch.inference_mode():
            y = self.model.translate(x, style)[0, 0, :h, :w]  # (h, w) in [-1, 1]
        lq = resize(((y.cpu().numpy() + 1) / 2).clip(0, 1), out_shape)
        params = {"style": [round(float(v), 6) for v in style[0].cpu()], "style_from": source,
                  "work_size": [h, w], "pixel_mm": pixel_mm, "model_sha256": self.model_sha256}
        return DegradeResult(lq, [{"name": "munit", "params": params}])


def _checked(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 2 or min(image.shape) < 8:
        raise InputError(f"MUNIT-LQ needs an (H, W) image of at least 8 px, got {np.shape(image)}")
    return np.clip(image.astype(np.float32, copy=False), 0, 1)


def _out_shape(shape: tuple[int, ...], scale: int) -> tuple[int, int]:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise InputError(f"scale must be an integer ≥ 1, got {scale!r}")
    return (shape[0] // scale, shape[1] // scale)
