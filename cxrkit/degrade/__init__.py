"""X-ray-aware degradations: make low-quality radiographs from good ones, with recorded parameters.

Images are display radiographs: ``(H, W)`` float32 in [0, 1], rows top to bottom, bone bright (see
:mod:`cxrkit.io`). The package has three parts:

- :mod:`cxrkit.degrade.operators`: one small operator per degradation, with physical parameters
  (registry :data:`DEGRADATIONS`; the physics model is in that module's docstring);
- :mod:`cxrkit.degrade.presets`: named chains of operators and the random high-order pipeline
  (registry :data:`PRESETS`);
- here: :func:`degrade`, which runs a preset and records every drawn parameter, and
  :data:`METHODS`, the ways of degrading. ``physics`` is this hand-made model; learned degraders
  (MUNIT-LQ, DDPM-LQ) are further entries, registered by module path (:class:`LearnedMethod`),
  built from a model directory and called the same way (see :class:`Degrader`).

Example:
    >>> rng = np.random.default_rng(7)
    >>> result = degrade(image, "low-dose", scale=2, generator=rng)  # image: (1024, 1024)
    >>> result.image.shape, [step["name"] for step in result.params]
    ((512, 512), ['quantum-noise', 'detector-blur', 'resize'])
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cxrkit.degrade.operators import (
    DEFAULT_PIXEL_MM,
    DEGRADATIONS,
    RESIZE_KERNELS,
    Operator,
    Params,
    gaussian_sigma,
)
from cxrkit.degrade.presets import PRESETS, Chain, HighOrderPipeline, Mixture, RandomChain
from cxrkit.errors import InputError

__all__ = [
    "DEFAULT_PIXEL_MM",
    "DEGRADATIONS",
    "METHODS",
    "PRESETS",
    "RESIZE_KERNELS",
    "DegradeResult",
    "Degrader",
    "LearnedMethod",
    "PhysicsDegrader",
    "degrade",
    "gaussian_sigma",
]


@dataclass(frozen=True)
class DegradeResult:
    """A degraded image and how it was made.

    Attributes:
        image: ``(H // scale, W // scale)`` float32 in [0, 1], bone bright.
        params: the steps applied, in order, as ``{"name": operator name, "params": {...}}`` with
            every drawn value; JSON-serialisable. Replaying them through
            ``DEGRADATIONS[name]().apply`` reproduces ``image`` exactly when no step draws noise.
    """

    image: np.ndarray
    params: list[dict[str, Any]]


class Degrader(Protocol):
    """What every entry of :data:`METHODS` builds: a callable that degrades one image."""

    def __call__(self, image: np.ndarray, *, scale: int = 1, pixel_mm: float = DEFAULT_PIXEL_MM,
                 generator: np.random.Generator) -> DegradeResult: ...


@dataclass(frozen=True)
class PhysicsDegrader:
    """The hand-made degradation method: a preset, optionally with some parameters fixed.

    Attributes:
        preset: a key of :data:`PRESETS`, or None for an explicit chain of the operators named in
            ``overrides``, in their order.
        overrides: ``{operator name: {param: value}}``; these values replace the drawn ones (in
            every step of that operator). Names and parameters are checked.

    Raises:
        InputError: an unknown preset, operator or parameter.
    """

    preset: str | None = "bicubic"
    overrides: Mapping[str, Params] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in PRESETS:
            raise InputError(f"unknown degradation preset {self.preset!r}",
                             hint=f"use one of {list(PRESETS)}")
        unknown = [name for name in self.overrides if name not in DEGRADATIONS]
        if unknown:
            raise InputError(f"unknown degradation {unknown[0]!r}",
                             hint=f"use one of {list(DEGRADATIONS)}")
        possible = self.pipeline().names()
        absent = [name for name in self.overrides if name not in possible]
        if absent:
            raise InputError(f"preset {self.preset!r} has no {absent[0]!r} step",
                             hint=f"it runs {sorted(possible)}; or use no preset")
        for name, values in self.overrides.items():
            if not isinstance(values, Mapping):
                raise InputError(f"overrides of {name!r} must be a mapping of parameter values")

    def pipeline(self) -> Chain | RandomChain | HighOrderPipeline | Mixture:
        """The preset, or the explicit chain when ``preset`` is None."""
        if self.preset is None:
            operators = tuple(DEGRADATIONS[name]() for name in self.overrides)
            return Chain("explicit chain", operators=operators)
        return PRESETS[self.preset]

    def __call__(self, image: np.ndarray, *, scale: int = 1, pixel_mm: float = DEFAULT_PIXEL_MM,
                 generator: np.random.Generator) -> DegradeResult:
        """Degrade ``image`` ``(H, W)`` of pitch ``pixel_mm``; see :func:`degrade`."""
        image = _checked_image(image)
        if not pixel_mm > 0:
            raise InputError(f"pixel_mm must be > 0, got {pixel_mm}")
        out_shape = _output_shape(image.shape, scale)
        steps = self.pipeline().sample(generator, image.shape, out_shape, pixel_mm)
        applied = []
        for operator, drawn in steps:
            params = _override(operator, drawn, self.overrides.get(operator.name))
            image = operator.apply(image, params, generator)
            applied.append({"name": operator.name, "params": params})
        return DegradeResult(image, applied)


class LearnedMethod:
    """A learned degradation method, registered by module path and imported on use.

    ``degrade`` sits below the model families (docs/architecture.md): it never imports them at
    import time, so naming a family here forms no import circle. Calling the entry imports
    ``module`` and calls its ``build_degrader(model_dir=…, style_reference=…, strength=…,
    device=…)``.

    Args:
        module: the family module holding ``build_degrader`` (e.g. ``cxrkit.munit.degrader``).
        doc: one line for ``cxrkit degrade --list`` (the entry's ``__doc__``).
    """

    def __init__(self, module: str, doc: str) -> None:
        self.module = module
        self.__doc__ = doc

    def __call__(self, *, model_dir: str | Path, style_reference: np.ndarray | None = None,
                 strength: float | None = None, device: str = "cpu") -> Degrader:
        """A :class:`Degrader` from a model folder of this method's family, on ``device``."""
        builder = importlib.import_module(self.module).build_degrader
        degrader: Degrader = builder(model_dir=model_dir, style_reference=style_reference,
                                     strength=strength, device=device)
        return degrader

    def __repr__(self) -> str:
        return f"LearnedMethod({self.module!r})"


METHODS: dict[str, Callable[..., Degrader]] = {
    "physics": PhysicsDegrader,
    "munit": LearnedMethod("cxrkit.munit.degrader", "MUNIT-LQ (learned, unpaired): HQ → DRR-style "
                           "LQ; a model from cxrkit train-munit."),
    "ddpm": LearnedMethod("cxrkit.ddpm_lq.degrader", "DDPM-LQ (learned): HQ noised and denoised "
                          "by a DRR diffusion model; cxrkit train-ddpm-lq."),
}
"""Ways of degrading; ``METHODS[name](**options)`` builds a :class:`Degrader`. ``physics`` takes
``preset`` and ``overrides``; the learned methods (``munit``, ``ddpm``) take ``model_dir`` and
optionally ``style_reference`` (munit: an ``(H, W)`` LQ image) or ``strength`` (ddpm), and
``device`` (a resolved torch device, see :func:`cxrkit.device.resolve_device`)."""


def degrade(
    image: np.ndarray,
    preset: str | None = "bicubic",
    *,
    scale: int = 1,
    pixel_mm: float = DEFAULT_PIXEL_MM,
    overrides: Mapping[str, Params] | None = None,
    generator: np.random.Generator,
) -> DegradeResult:
    """Degrade one radiograph with a physics preset and record every drawn parameter.

    The preset runs at the input resolution, then the image is resized to ``(H, W) // scale``
    (antialiased; the preset's kernel, bicubic unless stated). The same generator state gives
    the same bytes.

    Args:
        image: ``(H, W)`` float32 display image in [0, 1], bone bright.
        preset: a key of :data:`PRESETS`, or None for an explicit chain of the operators named in
            ``overrides`` (see :class:`PhysicsDegrader`).
        scale: integer reduction factor ≥ 1 (2 makes 512² from 1024²).
        pixel_mm: pixel pitch of ``image`` in mm (square pixels).
        overrides: ``{operator name: {param: value}}`` fixing some drawn parameters.
        generator: the only source of randomness.

    Returns:
        The degraded ``(H // scale, W // scale)`` image and the steps applied.

    Raises:
        InputError: a bad image, scale, preset, operator or parameter.

    Example:
        >>> degrade(image, None, overrides={"gamma": {"gamma": 1.3}},
        ...         generator=np.random.default_rng(0)).params
        [{'name': 'gamma', 'params': {'gamma': 1.3}}]
    """
    degrader = PhysicsDegrader(preset, overrides or {})
    return degrader(image, scale=scale, pixel_mm=pixel_mm, generator=generator)


def _checked_image(image: np.ndarray) -> np.ndarray:
    """``image`` as float32 after checking it is a finite ``(H, W)`` array in [0, 1]."""
    if not isinstance(image, np.ndarray) or image.ndim != 2 or image.size == 0:
        raise InputError(f"degrade needs a non-empty (H, W) array, got shape {np.shape(image)}")
    if not np.issubdtype(image.dtype, np.floating):
        raise InputError(f"degrade needs a float image in [0, 1], got {image.dtype}",
                         hint="divide integer pixels by their maximum value first")
    if not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
        raise InputError("degrade needs a display image with finite values in [0, 1]")
    return image.astype(np.float32, copy=False)


def _output_shape(shape: tuple[int, ...], scale: int) -> tuple[int, int]:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise InputError(f"scale must be an integer ≥ 1, got {scale!r}")
    if min(shape) < scale:
        raise InputError(f"scale {scale} is larger than the image {tuple(shape)}")
    return (shape[0] // scale, shape[1] // scale)


def _override(operator: Operator, drawn: Params, fixed: Params | None) -> Params:
    """``drawn`` with the ``fixed`` values put in, after checking their names."""
    if not fixed:
        return drawn
    allowed = set(drawn) | ({"factor", "size"} if operator.name == "resize" else set())
    unknown = sorted(set(fixed) - allowed)
    if unknown:
        raise InputError(f"{operator.name} has no parameter {unknown[0]!r}",
                         hint=f"its parameters are {sorted(drawn)}")
    return {**drawn, **fixed}

