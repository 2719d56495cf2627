"""The domain classifier network and its model folder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from cxrkit import __version__
from cxrkit.errors import InputError
from cxrkit.modelfiles import load_weights, read_config, settings_values

DOMAIN_KIND = "domain-classifier"
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class DomainSettings:
    """The classifier's architecture and input.

    Attributes:
        pixel_mm: the pitch every image is resampled to before its patches are cut, mm.
        patch_px: patch side, px (at ``pixel_mm``).
        width: channels of the first convolution (doubling twice).
    """

    pixel_mm: float = 1.0
    patch_px: int = 64
    width: int = 12

    def __post_init__(self) -> None:
        if not 0.05 <= self.pixel_mm <= 10:
            raise InputError(f"pixel_mm must be in [0.05, 10], got {self.pixel_mm}")
        if not 16 <= self.patch_px <= 512 or self.patch_px % 8:
            raise InputError(f"patch_px must be a multiple of 8 in [16, 512], got {self.patch_px}")
        if not 2 <= self.width <= 256:
            raise InputError(f"width must be in [2, 256], got {self.width}")


class DomainClassifier(nn.Module):
    """Patch → logit of P(real radiograph).

    Each patch has its own mean removed (so the global tone of an image is not the cue; its
    contrast and texture are), then four 3×3 convolutions (the last three with stride 2,
    channels w, 2w, 4w, 4w, SiLU), global average pooling and a linear layer.
    """

    def __init__(self, settings: DomainSettings) -> None:
        super().__init__()
        self.settings = settings
        w = settings.width
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(((1, w), (w, 2 * w), (2 * w, 4 * w), (4 * w, 4 * w))):
            layers += [nn.Conv2d(cin, cout, 3, stride=1 if i == 0 else 2, padding=1), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(4 * w, 1)

    @classmethod
    def new(cls, settings: DomainSettings, *, seed: int) -> DomainClassifier:
        """A freshly initialised classifier (weights from ``seed``)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(settings)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """``(B, 1, P, P)`` display patches → ``(B,)`` logits."""
        x = patches - patches.mean(dim=(2, 3), keepdim=True)
        return self.head(self.features(x * 8.0).mean(dim=(2, 3))).squeeze(1)

    def save(self, folder: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_NAME))
        config = {"kind": DOMAIN_KIND, "cxrkit_version": __version__, **asdict(self.settings)}
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path, *, device: str | torch.device = "cpu") -> DomainClassifier:
        """A model folder written by :meth:`save` (safetensors only), frozen, in eval mode.

        Raises:
            ModelError: not a domain classifier folder, or weights that do not fit.
        """
        folder = Path(folder)
        raw = read_config(folder, DOMAIN_KIND)
        model = cls(DomainSettings(**settings_values(raw, DomainSettings, folder)))
        load_weights(model, folder / WEIGHTS_NAME, what="domain classifier")
        return model.to(device).eval().requires_grad_(False)

