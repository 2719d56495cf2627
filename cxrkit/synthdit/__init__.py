"""The synthesis DiT: a mask-conditioned pixel-space Diffusion Transformer that paints a nodule
into a masked region of a real radiograph and leaves every other pixel as it was (DESIGN.md §1,
``synth``; the host of the characteristic adapters).

- :mod:`~cxrkit.synthdit.model`: :class:`SynthDiTSettings`, :class:`SynthDiT` (adaLN-Zero DiT,
  x₀ prediction, diffusers ``ModelMixin``/``ConfigMixin``/``PeftAdapterMixin``: a model folder is
  ``config.json`` (``"kind": "synth-dit"``) + ``diffusion_pytorch_model.safetensors`` +
  ``run.json``), :data:`LORA_TARGETS`;
- :mod:`~cxrkit.synthdit.data`: stage-1 radiograph crops with random nodule-like masks, stage-2
  nodule windows of ``cxrkit synth`` records (with their characteristics), and the
  :class:`Window` that maps a radiograph region to the model's pitch and back;
- :mod:`~cxrkit.synthdit.training`: the mask-weighted x₀ loss, :func:`train_synth` and its
  validation against mean-fill and blur-fill baselines;
- :mod:`~cxrkit.synthdit.inference`: :func:`inpaint_patches` and :func:`paint`, the sampler on
  the shared diffusion floor's schedulers that re-imposes the known context at every step and
  returns the pixels outside the mask exactly.

Importing this package imports torch and diffusers (the CLI imports it inside command bodies).
"""

from cxrkit.synthdit.data import (
    ATTRIBUTE_KEYS,
    NodulePatch,
    NodulePatches,
    RadiographPatches,
    Window,
    load_radiographs,
    nodule_patches,
    random_nodule_mask,
    support,
)
from cxrkit.synthdit.inference import inpaint_patches, paint
from cxrkit.synthdit.model import LORA_TARGETS, SYNTH_DIT_KIND, SynthDiT, SynthDiTSettings
from cxrkit.synthdit.training import (
    HeldOut,
    blur_fill,
    masked_mse,
    mean_fill,
    synth_loss,
    train_synth,
)

__all__ = [
    "ATTRIBUTE_KEYS", "LORA_TARGETS", "SYNTH_DIT_KIND", "HeldOut", "NodulePatch", "NodulePatches",
    "RadiographPatches", "SynthDiT", "SynthDiTSettings", "Window", "blur_fill", "inpaint_patches",
    "load_radiographs", "masked_mse", "mean_fill", "nodule_patches", "paint",
    "random_nodule_mask", "support", "synth_loss", "train_synth",
]
