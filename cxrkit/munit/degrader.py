"""Inference: the ``munit`` method of ``cxrkit degrade`` (HQ radiograph → DRR-style LQ)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cxrkit.data.images import resize, resize_short_side
from cxrkit.errors import InputError
from cxrkit.munit.model import WEIGHTS_NAME, Munit


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
        from cxrkit.files import file_sha256

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


def build_degrader(*, model_dir: str | Path, style_reference: np.ndarray | None = None,
                   strength: float | None = None, device: str = "cpu") -> MunitDegrader:
    """The ``munit`` entry of :data:`cxrkit.degrade.METHODS` (registered there by module path).

    Raises:
        InputError: a ``strength`` (the munit method takes none).
        ModelError: the folder is not a MUNIT-LQ model.
    """
    if strength is not None:
        raise InputError("the munit method takes no strength", hint="drop --strength")
    return MunitDegrader(model_dir, style_reference=style_reference, device=device)
