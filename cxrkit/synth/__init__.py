"""Nodule synthesis: put a nodule with known characteristics into a radiograph, with exact labels.

An **engine** turns one input (a CT or a radiograph) into samples. Every engine has the same
three methods, so ``cxrkit synth`` and any Python caller drive them alike (:class:`Engine`):

- ``prepare(data, lung=None) -> scene``: load-once work per input (lung mask, base image);
- ``insert(scene, nodule, generator) -> Sample``: one radiograph with one nodule;
- ``negative(scene) -> Sample``: the same input without a nodule, processed the same way.

Engines (:data:`ENGINES`; the registry imports no numpy, torch or scipy, so the CLI can list it):

- ``ct`` (:mod:`cxrkit.synth.ct`): insert the 3-D nodule into the CT inside the lungs and render
  the DRR with :func:`cxrkit.drr.project` (the nodule, its mask and its label are consistent by
  construction);
- ``blend`` (:mod:`cxrkit.synth.blend`): project the nodule alone with the same physics and add it
  to a real radiograph in the attenuation (log) domain inside its lung field (NODE21-style);
- ``diffusion`` (:mod:`cxrkit.synth.diffusion`): project and place the nodule as ``blend`` does,
  then paint it inside its silhouette with the synthesis DiT (:mod:`cxrkit.synthdit`), its
  projected thickness map as the (soft) condition; pixels outside the mask stay exactly as they
  were. It takes the same :class:`~cxrkit.nodules.Nodule` and returns the same
  :class:`~cxrkit.synth.sampling.Sample`, so the records do not change (the characteristic
  adapters of the next issue will pick by its labels).

**Subtlety** (LIDC convention: 1 = extremely subtle … 5 = obvious) maps to one physical knob, the
nodule's density excess over lung parenchyma, ``HU' = −850 + c(s) · (HU + 850)`` with the monotone
:data:`SUBTLETY_CONTRAST` ``c(s)``; shape, mask and the other labels are kept.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np

    from cxrkit.geometry import Geometry
    from cxrkit.nodules import Nodule
    from cxrkit.synth.sampling import Sample

SUBTLETY_CONTRAST: dict[int, float] = {1: 0.2, 2: 0.35, 3: 0.5, 4: 0.7, 5: 1.0}
"""Subtlety 1..5 → factor on the nodule's density excess over lung (−850 HU); 5 keeps it."""


@dataclass(frozen=True)
class SynthConfig:
    """Settings shared by the engines (each reads the ones it needs).

    Attributes:
        geometry: ``ct``: the acquisition (:class:`cxrkit.geometry.Geometry`); ``blend`` uses its
            ``sid_mm``, and its ``pixel_mm`` when a radiograph does not state its pixel size.
            None is the default PA geometry.
        kev: effective energy for HU → μ (both engines), keV.
        kind: ``ct`` output kind: ``display``, ``line_integral`` or ``intensity``.
        quality: renderer quality, ``fast`` or ``exact`` (see :func:`cxrkit.drr.project`); with
            ``exact`` the image minus the nodule-free image equals Δμ times the thickness map to
            float precision, with ``fast`` up to sub-voxel shifts at the nodule's edge.
        center_mm: ``ct``: put the nodule centre here (LPS mm) instead of sampling it.
        center_px: ``blend``: put the nodule centre at this ``(col, row)`` pixel.
        nodule_depth_mm: ``blend``: distance from the nodule to the detector, mm (sets the
            magnification ``sid / (sid − depth)``).
        intensity_scale: ``blend``: display units per unit of line integral; None estimates it
            (see :func:`cxrkit.synth.blend.intensity_scale`).
        max_tries: random placements tried before giving up.
        device: ``ct``, ``diffusion``: the torch device the renderer or model runs on
            (resolved, e.g. ``cuda:0``; see :func:`cxrkit.device.resolve_device`).
        model: ``diffusion``: the synthesis model folder (``cxrkit train-synth``).
        steps: ``diffusion``: sampler steps (None: the model's default).
        sampler: ``diffusion``: ``ddim``, ``dpmpp`` or ``ddpm`` (None: the model's default).
        soft_mask: ``diffusion``: condition on the projected thickness map (True) or on the
            binary silhouette.
        adapters: ``diffusion``: characteristic adapter files and their weights
            (``(path, weight)``, see :mod:`cxrkit.synthdit.adapters`).
        compose: ``diffusion``: how several adapters combine while sampling: ``sum``,
            ``switch`` or ``klora``.
        switch_every: ``diffusion``, ``switch``: steps each adapter stays active.
    """

    geometry: Geometry | None = None
    kev: float = 60.0
    kind: str = "display"
    quality: str = "fast"
    center_mm: tuple[float, float, float] | None = None
    center_px: tuple[int, int] | None = None
    nodule_depth_mm: float = 150.0
    intensity_scale: float | None = None
    max_tries: int = 2000
    device: str = "cpu"
    model: str | None = None
    steps: int | None = None
    sampler: str | None = None
    soft_mask: bool = True
    adapters: tuple[tuple[str, float], ...] = ()
    compose: str = "sum"
    switch_every: int = 1


class Engine(Protocol):
    """What every engine provides (see the module docstring)."""

    def prepare(self, data: Any, lung: Any = None) -> Any:
        """Load-once work for one input; ``lung`` is an optional lung mask (bool array)."""

    def insert(self, scene: Any, nodule: Nodule, generator: np.random.Generator) -> Sample:
        """One sample with ``nodule`` placed (at a random lung location unless configured)."""

    def negative(self, scene: Any) -> Sample:
        """The input without a nodule, processed like the samples."""


@dataclass(frozen=True)
class EngineInfo:
    """A registry entry: what an engine reads, and where its class lives (imported on use).

    Attributes:
        name: the ``--engine`` value.
        reads: ``ct`` (CT volumes) or ``radiograph``.
        description: one line for ``--help``.
        module: the module under :mod:`cxrkit.synth` holding ``ENGINE``, the class.
    """

    name: str
    reads: str
    description: str
    module: str

    def create(self, config: SynthConfig) -> Engine:
        """An engine instance for ``config``."""
        module = importlib.import_module(f"cxrkit.synth.{self.module}")
        engine: Engine = module.ENGINE(config)
        return engine


ENGINES: dict[str, EngineInfo] = {
    "ct": EngineInfo("ct", "ct", "insert into each CT volume inside the lungs, then render the "
                                 "DRR", "ct"),
    "blend": EngineInfo("blend", "radiograph",
                        "project the nodule alone and add it to each radiograph's lung field "
                        "in the log domain", "blend"),
    "diffusion": EngineInfo("diffusion", "radiograph",
                            "paint the nodule into each radiograph's lung field with a trained "
                            "synthesis DiT (--model), inside its projected mask", "diffusion"),
}
"""The synthesis engines by name (one source of truth for ``--engine``)."""
