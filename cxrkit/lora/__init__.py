"""LoRA adapters as data: files, exact algebra, merges and the interference report.

A floor below the model families (pure torch + safetensors; it imports no model family), so the
synthesis DiT's trainer and ``synth`` load, save, penalise and merge adapters with one code:

* :mod:`cxrkit.lora.files` — :class:`LoraLayer`, :class:`Adapter`, :func:`save_adapter`,
  :func:`load_adapter` (diffusers ``save_lora_adapter`` layout, header validated first),
  :func:`adapter_scale` (peft's scaling, rsLoRA and patterns included);
* :mod:`cxrkit.lora.algebra` — :func:`delta`, :func:`orth_penalty` (L_orth from r×r products),
  :func:`adapters_orth_penalty`, :func:`olora_penalty`, norms, inner products, cosines;
* :mod:`cxrkit.lora.merge` — exact and pruning merges over each layer's (A, B) pairs;
* :mod:`cxrkit.lora.report` — the per-layer interference report and its plot.

Importing this package imports no torch (the modules import it inside functions or for types).
"""

from cxrkit.lora.files import (
    Adapter,
    LoraLayer,
    adapter_scale,
    from_state_dict,
    load_adapter,
    save_adapter,
    to_state_dict,
    unit_scale_config,
)

__all__ = ["Adapter", "LoraLayer", "adapter_scale", "from_state_dict", "load_adapter",
           "save_adapter", "to_state_dict", "unit_scale_config"]
