"""The nodule detector: a Swin Transformer encoder with three heads (nodule presence, five
characteristics, a segmentation decoder), written here in plain torch.

**Why an own Swin.** Swin needs three pieces (window attention with a relative position bias,
cyclically shifted windows with their attention mask, patch merging), about 200 lines. The
libraries that have it cost more than they give on a CPU torch install: ``timm`` hard-requires
``torchvision`` (imported at ``import timm``), and the ``torchvision`` wheel does not import
beside the CPU torch wheel (``operator torchvision::nms does not exist``); MONAI would add a
large dependency for one class, and its 2-D ``SwinTransformer`` adds a fifth merging stage (the
Swin-T configuration has 32 M parameters there, not the paper's 28 M) and needs sides divisible
by 32; ``transformers.SwinModel`` pulls the whole of transformers for a backbone whose weights
could not be used anyway (no pretrained weights are downloaded: the model trains from scratch).
Own code also lets every size be configuration and any input size work (padding to the window).

Architecture (Liu et al. 2021, https://arxiv.org/abs/2103.14030):

- patch embedding: a ``p × p`` stride-``p`` convolution of the 1-channel image to ``embed_dim``
  channels, then LayerNorm; the image is zero-padded to a multiple of ``p``. Before it, a
  convolutional stem (``stem_channels`` > 0, the default): a 3×3 convolution to that many
  channels and GELU at full resolution. Why: with one grey channel, a flat patch of brightness
  ``c`` embeds as ``c·u + b`` (``u`` = the kernel's sum), and the LayerNorm that follows maps
  that to nearly the same token for every ``c`` once ``c·u`` outweighs ``b`` — while a nodule
  is mostly a smooth brightness bump. The nonlinearity makes brightness a direction of the
  token, which normalisation keeps ("early convolutions", Xiao et al. 2021, also ease
  optimisation). ``stem_channels`` 0 gives Swin's plain embedding;
- stages ``i = 0..S-1`` of ``depths[i]`` blocks at width ``embed_dim·2^i`` with ``heads[i]``
  heads; blocks alternate regular and shifted windows (shift ``window // 2``). A feature map
  whose sides are not multiples of ``window`` is zero-padded before partitioning (padded tokens
  are attended to as zeros, as Swin's detection code does) and cropped after; a map no larger
  than one window is not shifted. The shifted blocks mask attention between tokens that the
  cyclic shift brought together from different image regions (−100 before the softmax);
- window attention: ``softmax(q·kᵀ/√d + B)·v`` with ``B`` read from a learned
  ``(2w−1)² × heads`` table by the relative position of the two tokens;
- patch merging between stages: the 2×2 neighbours concatenated (``4C``), LayerNorm, a linear
  to ``2C`` (an odd side is padded by one);
- each stage's output is layer-normalised and kept as a feature map ``(B, C_i, H/p/2^i, …)``.

Heads:

- segmentation: an FPN-style decoder (1×1 lateral convolutions to ``decoder_dim`` channels,
  top-down nearest upsampling and addition, a 3×3 convolution + GELU on the finest map at stride
  ``p``, a 1×1 convolution to one logit), bilinearly upsampled to the input size;
- presence, read from the segmentation: ``a · mean(top-k mask logits) + b`` over the stride-``p``
  map (``k`` = ``presence_topk``; ``a``, ``b`` learned, starting at 1 and 0), so "is there a
  nodule" is "is there a nodule *somewhere*", the same question on a 128² training crop and on
  a whole radiograph. (A head on globally pooled features, tried first, stayed at chance: an 11
  px nodule barely moves a pooled 512² map, and the pooled answer does not carry from crops to
  whole images.) An image-level label alone (a real radiograph) trains the mask through this
  top-k pooling, as multiple-instance learning;
- characteristics: the decoder's finest features averaged with weights ``softmax(mask logits)``
  (where the model sees the nodule), LayerNorm, one linear to the five logits of
  :data:`CHARACTERISTICS`.

:class:`Detector` is a diffusers ``ModelMixin``/``ConfigMixin``: ``save_pretrained`` writes
``config.json`` (``"kind": "nodule-detector"``) and ``diffusion_pytorch_model.safetensors``;
:meth:`Detector.load` checks the kind and reads safetensors only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from cxrkit.errors import InputError, ModelError

DETECTOR_KIND = "nodule-detector"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
MODEL_PARTS = ("config.json", WEIGHTS_NAME)
"""The files that decide a detector's output (hashed by :func:`model_sha256`)."""
CHARACTERISTICS = ("calcified", "border_regular", "border_irregular", "texture_homogeneous",
                   "texture_inhomogeneous")
"""The characteristic heads, in logit order after the presence logit (the source's five)."""
MASK_BIAS = -100.0
"""Added to the attention logits of token pairs a shifted window must not relate."""


@dataclass(frozen=True)
class DetectorSettings:
    """Architecture of a detector (stored in ``config.json``).

    Attributes:
        image_px: side of the square the model works at; inputs are resized with their aspect
            kept so the longer side is ``image_px``, and padded (see
            :func:`cxrkit.detector.data.letterbox`).
        patch_size: patch embedding stride ``p`` (the finest feature map is at ``1/p``).
        embed_dim: width of the first stage (doubles at every stage).
        depths: Swin blocks per stage.
        num_heads: attention heads per stage (each must divide its stage's width).
        window: attention window side in tokens.
        mlp_ratio: MLP width over the block width.
        decoder_dim: channels of the segmentation decoder.
        presence_topk: the stride-``p`` mask cells whose mean logit gives the presence.
        stem_channels: channels of the 3×3 convolution + GELU before the patch embedding (0:
            Swin's plain linear patch embedding).
        kind: always ``nodule-detector``; loading checks it.
    """

    image_px: int = 512
    patch_size: int = 4
    embed_dim: int = 32
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (1, 2, 4, 8)
    window: int = 7
    mlp_ratio: float = 4.0
    decoder_dim: int = 32
    presence_topk: int = 4
    stem_channels: int = 16
    kind: str = field(default=DETECTOR_KIND)

    def __post_init__(self) -> None:
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "num_heads", tuple(int(h) for h in self.num_heads))
        if not self.depths or len(self.depths) != len(self.num_heads) or len(self.depths) > 6:
            raise InputError("depths and heads need one entry per stage (1 to 6 stages)")
        if min(self.depths) < 1 or min(self.num_heads) < 1:
            raise InputError("every stage needs at least one block and one head")
        for i, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2 ** i) % heads:
                raise InputError(f"stage {i + 1}: width {self.embed_dim * 2 ** i} does not "
                                 f"split into {heads} heads")
        if not 1 <= self.patch_size <= 32 or not 1 <= self.window <= 32:
            raise InputError("patch size and window must be in 1..32")
        if not 32 <= self.image_px <= 4096:
            raise InputError(f"image_px must be in 32..4096, got {self.image_px}")
        if self.embed_dim < 4 or self.decoder_dim < 4 or self.mlp_ratio <= 0:
            raise InputError("embed_dim and decoder_dim ≥ 4, mlp_ratio > 0")
        if not 1 <= self.presence_topk <= 4096:
            raise InputError("presence_topk must be in 1..4096")
        if not 0 <= self.stem_channels <= 1024:
            raise InputError("stem_channels must be in 0..1024")
        if self.kind != DETECTOR_KIND:
            raise InputError(f"detector settings must have kind {DETECTOR_KIND!r}")


ARCHS: dict[str, DetectorSettings] = {
    "default": DetectorSettings(),
    "swin-t": DetectorSettings(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                               window=7, decoder_dim=64),
}
"""Named architectures: ``default`` (the small CPU detector) and ``swin-t`` (the source's
Swin-Tiny: embed 96, depths 2-2-6-2, heads 3-6-12-24, window 7; about 28 M parameters)."""


def window_partition(x: torch.Tensor, w: int) -> torch.Tensor:
    """``(B, H, W, C)`` with ``H, W`` multiples of ``w`` → ``(B·nW, w·w, C)`` windows, row-major."""
    B, H, W, C = x.shape
    x = x.view(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, C)


def window_merge(windows: torch.Tensor, w: int, B: int, H: int, W: int) -> torch.Tensor:
    """The inverse of :func:`window_partition`: ``(B·nW, w·w, C)`` → ``(B, H, W, C)``."""
    C = windows.shape[-1]
    x = windows.view(B, H // w, W // w, w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, H, W, C)


def relative_position_index(w: int) -> torch.Tensor:
    """``(w², w²)`` index into the ``(2w−1)²`` bias table of each pair of tokens of a window:
    ``(Δrow + w − 1)·(2w − 1) + Δcol + w − 1``."""
    rows, cols = torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()])  # (2, w²)
    rel = coords[:, :, None] - coords[:, None, :] + (w - 1)  # (2, w², w²), each in 0..2w-2
    return rel[0] * (2 * w - 1) + rel[1]


def shift_mask(H: int, W: int, w: int, s: int, device: torch.device) -> torch.Tensor:
    """``(nW, w², w²)`` additive mask of the shifted windows of an ``H × W`` map (multiples of
    ``w``, shifted by ``s``): 0 between tokens of the same region before the cyclic shift,
    :data:`MASK_BIAS` between tokens the roll brought together from different regions."""
    region = torch.zeros(1, H, W, 1, device=device)
    n = 0
    for rows in (slice(0, -w), slice(-w, -s), slice(-s, None)):
        for cols in (slice(0, -w), slice(-w, -s), slice(-s, None)):
            region[:, rows, cols, :] = n
            n += 1
    ids = window_partition(region, w).squeeze(-1)  # (nW, w²)
    diff = ids[:, None, :] - ids[:, :, None]
    return torch.where(diff != 0, MASK_BIAS, 0.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ``w × w`` windows with a relative position bias."""

    def __init__(self, dim: int, heads: int, w: int) -> None:
        super().__init__()
        self.heads, self.w = heads, w
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * w - 1) ** 2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        self.register_buffer("bias_index", relative_position_index(w), persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``x`` ``(B·nW, w², C)``; ``mask`` ``(nW, w², w²)`` or None."""
        N, T, C = x.shape
        q, k, v = self.qkv(x).view(N, T, 3, self.heads, C // self.heads) \
            .permute(2, 0, 3, 1, 4).unbind(0)  # each (N, heads, T, d)
        bias = self.bias_table[self.bias_index.view(-1)].view(T, T, -1).permute(2, 0, 1)
        bias = bias[None].to(q.dtype)  # (1, heads, T, T)
        if mask is not None:
            nW = mask.shape[0]
            bias = (bias[None] + mask[None, :, None].to(q.dtype)) \
                .expand(N // nW, nW, self.heads, T, T).reshape(N, self.heads, T, T)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(N, T, C))


class SwinBlock(nn.Module):
    """``x += attn(LN(x))`` in (shifted) windows, then ``x += MLP(LN(x))``."""

    def __init__(self, dim: int, heads: int, w: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        self.w, self.shift = w, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, w)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self._masks: dict[tuple[int, int, int, str], torch.Tensor] = {}

    def _mask(self, H: int, W: int, s: int, device: torch.device) -> torch.Tensor:
        key = (H, W, s, str(device))
        if key not in self._masks:
            self._masks[key] = shift_mask(H, W, self.w, s, device)
        return self._masks[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, H, W, C)`` → same shape."""
        B, H, W, _ = x.shape
        w = self.w
        shift = self.shift if max(H, W) > w else 0
        y = self.norm1(x)
        ph, pw = (-H) % w, (-W) % w
        if ph or pw:
            y = F.pad(y, (0, 0, 0, pw, 0, ph))
        Hp, Wp = H + ph, W + pw
        mask = None
        if shift:
            y = torch.roll(y, (-shift, -shift), dims=(1, 2))
            mask = self._mask(Hp, Wp, shift, x.device)
        y = window_merge(self.attn(window_partition(y, w), mask), w, B, Hp, Wp)
        if shift:
            y = torch.roll(y, (shift, shift), dims=(1, 2))
        x = x + y[:, :H, :W]
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2×2 neighbours → one token of twice the width:
    ``(B, H, W, C)`` → ``(B, ⌈H/2⌉, ⌈W/2⌉, 2C)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[1:3]
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                      dim=-1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """Optional patch merging, then ``depth`` blocks alternating regular and shifted windows."""

    def __init__(self, dim: int, depth: int, heads: int, w: int, mlp_ratio: float,
                 merge_from: int | None) -> None:
        super().__init__()
        self.merge = PatchMerging(merge_from) if merge_from else None
        self.blocks = nn.ModuleList([SwinBlock(dim, heads, w, 0 if i % 2 == 0 else w // 2,
                                               mlp_ratio) for i in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens for the next stage, normalised feature map (B, C, H, W))``."""
        if self.merge is not None:
            x = self.merge(x)
        for block in self.blocks:
            x = block(x)
        return x, self.norm(x).permute(0, 3, 1, 2)


class Detector(ModelMixin, ConfigMixin):
    """The Swin detector (module docstring). Every argument is a field of
    :class:`DetectorSettings`; :attr:`settings` gives them back.

    ``forward(image)`` takes ``(B, 1, H, W)`` in [0, 1] (any ``H, W``) and returns
    ``{"presence": (B,), "characteristics": (B, 5), "mask": (B, 1, H, W)}`` logits (float32).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, image_px: int = 512, patch_size: int = 4, embed_dim: int = 32,
                 depths: tuple[int, ...] = (2, 2, 2, 2), num_heads: tuple[int, ...] = (1, 2, 4, 8),
                 window: int = 7, mlp_ratio: float = 4.0, decoder_dim: int = 32,
                 presence_topk: int = 4, stem_channels: int = 16,
                 kind: str = DETECTOR_KIND) -> None:
        super().__init__()
        s = DetectorSettings(image_px, patch_size, embed_dim, tuple(depths), tuple(num_heads),
                             window, mlp_ratio, decoder_dim, presence_topk, stem_channels, kind)
        C, D = s.embed_dim, s.decoder_dim
        widths = [C * 2 ** i for i in range(len(s.depths))]
        self.stem = (nn.Sequential(nn.Conv2d(1, s.stem_channels, 3, padding=1), nn.GELU())
                     if s.stem_channels else nn.Identity())
        self.patch_embed = nn.Conv2d(s.stem_channels or 1, C, kernel_size=s.patch_size,
                                     stride=s.patch_size)
        self.embed_norm = nn.LayerNorm(C)
        self.stages = nn.ModuleList([
            SwinStage(widths[i], s.depths[i], s.num_heads[i], s.window, s.mlp_ratio,
                      widths[i - 1] if i else None) for i in range(len(widths))])
        self.laterals = nn.ModuleList([nn.Conv2d(c, D, 1) for c in widths])
        self.smooth = nn.Conv2d(D, D, 3, padding=1)
        self.mask_out = nn.Conv2d(D, 1, 1)
        self.presence_scale = nn.Parameter(torch.ones(1))
        self.presence_bias = nn.Parameter(torch.zeros(1))
        self.head_norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, len(CHARACTERISTICS))
        self.apply(self._init)
        nn.init.constant_(self.mask_out.bias, -4.0)  # start near "no nodule anywhere" (p ≈ 0.02)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @property
    def settings(self) -> DetectorSettings:
        """The model's settings (from its config)."""
        from cxrkit.modelfiles import settings_from_config

        return settings_from_config(self.config, DetectorSettings)

    @classmethod
    def new(cls, settings: DetectorSettings, *, generator: torch.Generator) -> Detector:
        """A freshly initialised model, weights drawn from ``generator`` (the global RNG is
        seeded from it for the call only and restored afterwards)."""
        from cxrkit.modelfiles import seeded_init

        with seeded_init(generator):
            return cls(**asdict(settings))

    def features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The stages' normalised feature maps, finest first."""
        p = self.config.patch_size
        H, W = image.shape[-2:]
        x = image.to(self.patch_embed.weight.dtype)
        if H % p or W % p:
            x = F.pad(x, (0, (-W) % p, 0, (-H) % p))
        x = self.embed_norm(self.patch_embed(self.stem(x)).permute(0, 2, 3, 1))  # (B, h, w, C)
        maps = []
        for stage in self.stages:
            x, fmap = stage(x)
            maps.append(fmap)
        return maps

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if image.ndim != 4 or image.shape[1] != 1:
            raise InputError(f"the detector takes (B, 1, H, W) images, got {tuple(image.shape)}")
        H, W = image.shape[-2:]
        maps = self.features(image)
        top = self.laterals[-1](maps[-1])
        for fmap, lateral in zip(reversed(maps[:-1]), reversed(self.laterals[:-1]), strict=True):
            top = lateral(fmap) + F.interpolate(top, size=fmap.shape[-2:], mode="nearest")
        fine = F.gelu(self.smooth(top))  # (B, D, h, w) at stride p
        coarse = self.mask_out(fine).float()  # (B, 1, h, w) mask logits
        cells = coarse.flatten(1)
        k = min(self.config.presence_topk, cells.shape[1])
        presence = self.presence_scale * cells.topk(k, dim=1).values.mean(1) + self.presence_bias
        where = torch.softmax(cells, dim=1).to(fine.dtype)  # (B, h·w): where the nodule is
        pooled = torch.einsum("bdn,bn->bd", fine.flatten(2), where)
        characteristics = self.head(self.head_norm(pooled)).float()
        p = self.config.patch_size
        h, w = -(-H // p) * p, -(-W // p) * p  # the padded input's size, then cropped
        mask = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
        return {"presence": presence.float(), "characteristics": characteristics,
                "mask": mask[:, :, :H, :W]}

    @classmethod
    def load(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> Detector:
        """Load a model folder written by ``save_pretrained`` (safetensors only), frozen, in
        eval mode.

        Raises:
            ModelError: not a folder, another kind of model, or missing/unfit weights.
        """
        from cxrkit.modelfiles import read_config, settings_values

        folder = Path(directory)
        settings_values(read_config(folder, DETECTOR_KIND), DetectorSettings, folder)
        if not (folder / WEIGHTS_NAME).is_file():
            raise ModelError(f"the detector has no {WEIGHTS_NAME}", path=str(folder),
                             hint="weights are read from safetensors only (never pickles)")
        try:
            model = cls.from_pretrained(folder, use_safetensors=True, low_cpu_mem_usage=False)
        except (OSError, ValueError, RuntimeError, TypeError) as exc:
            raise ModelError(f"cannot load the detector: {exc}"[:300], path=str(folder)) from exc
        return model.to(device).eval().requires_grad_(False)


def model_sha256(folder: str | Path) -> str:
    """One sha256 over the files that decide a detector's output (:data:`MODEL_PARTS`)."""
    from cxrkit.modelfiles import parts_sha256

    return parts_sha256(folder, MODEL_PARTS)


def parameter_count(settings: DetectorSettings) -> int:
    """Parameters of a detector with ``settings`` (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = Detector(**asdict(settings))
    return sum(p.numel() for p in model.parameters())


def describe(settings: DetectorSettings) -> dict[str, Any]:
    """``settings`` as JSON-ready values, with the parameter count."""
    return {**asdict(settings), "depths": list(settings.depths),
            "num_heads": list(settings.num_heads), "parameters": parameter_count(settings)}
