"""LoRA adapter files: one ``.safetensors`` per adapter in the layout diffusers'
``save_lora_adapter`` writes, read back with its header validated before any tensor is loaded.

Layout (docs/research lora.md §3):

* tensors ``<module>.lora_A.weight`` (``r × d_in``, peft's down projection) and
  ``<module>.lora_B.weight`` (``d_out × r``, the up projection), ``<module>`` the dotted name of the
  targeted linear in the backbone, e.g. ``transformer_blocks.0.attn1.to_q``;
* safetensors metadata ``lora_adapter_metadata``: the peft ``LoraConfig`` as JSON (as diffusers
  writes it: sets as lists, keys sorted), ``cxrkit``: cxrkit's own fields as JSON (characteristic,
  polarity, alpha_train, alpha_map, backbone_sha256, seed, data hashes, version, command; for a
  merge also method, weights and sources), ``format``: ``pt``.

The update of one layer is ``ΔW = scale · B @ A`` with peft's scaling: ``lora_alpha / r``, or
``lora_alpha / sqrt(r)`` with rsLoRA, where ``lora_alpha`` and ``r`` are the config's values after
its ``alpha_pattern`` / ``rank_pattern`` (matched as peft matches them). Files written by peft's
``save_pretrained`` (keys prefixed ``base_model.model.``, the config in ``adapter_config.json``
beside the file) and by diffusers (optionally prefixed ``transformer.``) load too. Weights are never
read from a pickle.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrkit.errors import ModelError, OutputError

if TYPE_CHECKING:
    from torch import Tensor

CONFIG_KEY = "lora_adapter_metadata"
"""The safetensors metadata key of the peft LoraConfig (diffusers' LORA_ADAPTER_METADATA_KEY)."""
CXRKIT_KEY = "cxrkit"
"""The safetensors metadata key of cxrkit's own fields."""
MAX_HEADER_BYTES = 16 << 20
"""A larger safetensors header is refused before it is read."""
MAX_RANK = 4096
"""A larger LoRA rank is refused (no adapter worth the name has one; a hostile file might)."""
MAX_DIM = 1 << 17
"""A layer wider than this is refused."""
MAX_LAYERS = 100_000
_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
_PREFIXES = ("base_model.model.", "transformer.")
_KEY = re.compile(r"(?P<module>[A-Za-z0-9_][A-Za-z0-9_.]*)\.lora_(?P<part>[AB])"
                  r"(?:\.default)?\.weight")
_UNSUPPORTED = {"use_dora": "DoRA", "lora_bias": "a LoRA bias", "fan_in_fan_out": "fan_in_fan_out"}


@dataclass
class LoraLayer:
    """One targeted linear's adapter: ``ΔW = scale · b @ a``."""

    a: Tensor  # (r, d_in), peft lora_A
    b: Tensor  # (d_out, r), peft lora_B
    scale: float  # peft scaling: lora_alpha/r, or lora_alpha/sqrt(r) with rsLoRA

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])


@dataclass
class Adapter:
    """A LoRA adapter: its layers, its peft config and cxrkit's metadata.

    ``sha256`` is the file's hash when the adapter was loaded from (or saved to) a file.
    """

    layers: dict[str, LoraLayer]  # module name, e.g. "transformer_blocks.0.attn1.to_q"
    config: dict  # the peft LoraConfig fields (r, lora_alpha, target_modules, use_rslora, ...)
    meta: dict  # cxrkit fields: characteristic, polarity, alpha_train, ..., method, sources
    sha256: str | None = field(default=None, compare=False)


# ---- peft's scaling ------------------------------------------------------------------------------

def _pattern_value(patterns: dict[str, Any] | None, module: str) -> Any:
    """The value of the first pattern that matches ``module`` as peft's ``get_pattern_key`` does
    (``re.match(rf"(.*\\.)?({key})$", module)``), or None."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return None


def config_rank(config: dict, module: str) -> int:
    """The rank peft gives ``module`` under ``config`` (``rank_pattern`` first, then ``r``)."""
    r = _pattern_value(config.get("rank_pattern"), module)
    return int(r if r is not None else config.get("r", 8))


def adapter_scale(config: dict, module: str, rank: int | None = None) -> float:
    """peft's scaling of ``module``'s adapter under ``config``: ``lora_alpha / r``, or
    ``lora_alpha / sqrt(r)`` with ``use_rslora``, ``lora_alpha`` and ``r`` after the
    ``alpha_pattern`` / ``rank_pattern`` (``rank`` overrides the config's rank: the tensors')."""
    r = config_rank(config, module) if rank is None else int(rank)
    alpha = _pattern_value(config.get("alpha_pattern"), module)
    alpha = float(alpha if alpha is not None else config.get("lora_alpha", 8))
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def unit_scale_config(ranks: dict[str, int], *, base: dict | None = None) -> dict:
    """A LoraConfig dict under which every layer's scale is exactly 1 (``lora_alpha == r`` per
    layer, no rsLoRA): the config of a merged adapter whose scale is folded into its factors.
    ``base`` supplies the other fields (``lora_dropout``, ...); ``target_modules`` becomes the
    exact module names."""
    r = max(ranks.values()) if ranks else 1
    config = {k: v for k, v in (base or {}).items()
              if k not in ("rank_pattern", "alpha_pattern", "use_rslora", "r", "lora_alpha",
                           "target_modules", "use_dora", "lora_bias")}
    config.update({
        "peft_type": "LORA", "r": r, "lora_alpha": r, "use_rslora": False,
        "target_modules": sorted(ranks), "use_dora": False, "lora_bias": False,
        "fan_in_fan_out": False, "bias": "none",
        "rank_pattern": {m: k for m, k in sorted(ranks.items()) if k != r},
        "alpha_pattern": {m: k for m, k in sorted(ranks.items()) if k != r},
    })
    return config


def _config_dict(config: Any) -> dict:
    """A JSON-able dict of a LoraConfig (an object with ``to_dict``, or a dict)."""
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    out = {}
    for key, value in raw.items():
        if isinstance(value, set | frozenset | tuple):
            value = sorted(value) if all(isinstance(v, str) for v in value) else list(value)
        if hasattr(value, "value") and isinstance(value.value, str):  # PeftType enum
            value = value.value
        out[key] = value
    return out


def _check_config(config: dict, path: str | None) -> None:
    for key, what in _UNSUPPORTED.items():
        if config.get(key):
            raise ModelError(f"the adapter uses {what}, which cxrkit does not support", path=path,
                             hint="train a plain LoRA (use_dora/lora_bias/fan_in_fan_out off)")
    if config.get("peft_type", "LORA") not in ("LORA", None):
        raise ModelError(f"not a LoRA adapter (peft_type {config.get('peft_type')!r})", path=path)
    for key in ("r", "lora_alpha"):
        value = config.get(key)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)
                                  or not math.isfinite(value) or value <= 0):
            raise ModelError(f"the adapter config's {key} is invalid ({value!r})", path=path)


# ---- state dicts ---------------------------------------------------------------------------------

def module_of(key: str) -> tuple[str, str] | None:
    """``(module, "A" | "B")`` of a LoRA weight key, prefixes ``base_model.model.`` /
    ``transformer.`` removed; None for a key that is not a LoRA factor."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    match = _KEY.fullmatch(key)
    return (match["module"], match["part"]) if match else None


def from_state_dict(state_dict: dict[str, Tensor], config: Any, meta: dict | None = None, *,
                    path: str | None = None) -> Adapter:
    """An :class:`Adapter` from peft/diffusers LoRA weights and their LoraConfig (a dict or a peft
    ``LoraConfig``). Each layer's scale is peft's for the config and the tensors' rank.

    Raises:
        ModelError: a key that is no LoRA factor, a factor without its partner, inconsistent
            shapes, a rank the config contradicts, or an unsupported config (DoRA, bias).
    """
    config = _config_dict(config)
    _check_config(config, path)
    parts: dict[str, dict[str, Tensor]] = {}
    for key, tensor in state_dict.items():
        found = module_of(key)
        if found is None:
            raise ModelError(f"unexpected tensor {key!r} in a LoRA adapter", path=path,
                             hint="only <module>.lora_A.weight / lora_B.weight are supported")
        module, part = found
        if part in parts.setdefault(module, {}):
            raise ModelError(f"two lora_{part} tensors for {module}", path=path)
        parts[module][part] = tensor
    layers = {}
    for module in sorted(parts):
        pair = parts[module]
        if set(pair) != {"A", "B"}:
            missing = "B" if "A" in pair else "A"
            raise ModelError(f"{module} has no lora_{missing}", path=path)
        a, b = pair["A"], pair["B"]
        _check_shapes(module, tuple(a.shape), tuple(b.shape), path)
        rank = int(a.shape[0])
        if config.get("rank_pattern") or "r" in config:
            expected = config_rank(config, module)
            if expected != rank:
                raise ModelError(f"{module} has rank {rank} but its config says {expected}",
                                 path=path)
        layers[module] = LoraLayer(a=a, b=b, scale=adapter_scale(config, module, rank))
    if not layers:
        raise ModelError("the adapter has no LoRA layers", path=path)
    return Adapter(layers=layers, config=config, meta=dict(meta or {}))


def to_state_dict(adapter: Adapter) -> dict[str, Tensor]:
    """``{<module>.lora_A.weight: A, <module>.lora_B.weight: B}`` (contiguous CPU tensors)."""
    out = {}
    for module in sorted(adapter.layers):
        layer = adapter.layers[module]
        out[f"{module}.lora_A.weight"] = layer.a.detach().cpu().contiguous()
        out[f"{module}.lora_B.weight"] = layer.b.detach().cpu().contiguous()
    return out


def _check_shapes(module: str, a: tuple[int, ...], b: tuple[int, ...], path: str | None) -> None:
    if len(a) != 2 or len(b) != 2:
        raise ModelError(f"{module}: LoRA factors must be matrices (got {a} and {b})", path=path,
                         hint="only adapters on linear layers are supported")
    rank, d_in = a
    d_out, rank_b = b
    if rank != rank_b:
        raise ModelError(f"{module}: lora_A is {a} but lora_B is {b} (ranks differ)", path=path)
    if not 1 <= rank <= MAX_RANK:
        raise ModelError(f"{module}: rank {rank} outside 1..{MAX_RANK}", path=path)
    if not (1 <= d_in <= MAX_DIM and 1 <= d_out <= MAX_DIM):
        raise ModelError(f"{module}: layer size {d_out}×{d_in} outside 1..{MAX_DIM}", path=path)


# ---- writing -------------------------------------------------------------------------------------

def save_adapter(path: str | Path, adapter: Adapter, *, overwrite: bool = False) -> str:
    """Write ``adapter`` as one ``.safetensors`` (atomically; without ``overwrite`` the name is
    created exclusively) and return the file's sha256.

    Every layer's scale must be the one its config gives (peft would load it with that scale):
    build merged adapters' configs with :func:`unit_scale_config`.

    Raises:
        ModelError: a layer's scale or rank disagrees with the config, or a factor is not finite.
        OutputError: the file exists and ``overwrite`` is False.
    """
    import torch
    from safetensors.torch import save_file

    from cxrkit import __version__
    from cxrkit.files import atomic_path, file_sha256, to_json

    path = Path(path)
    if path.suffix != ".safetensors":
        raise OutputError("an adapter file must end in .safetensors", path=str(path))
    config = _config_dict(adapter.config)
    _check_config(config, str(path))
    if not adapter.layers:
        raise ModelError("the adapter has no LoRA layers", path=str(path))
    for module, layer in adapter.layers.items():
        if module_of(f"{module}.lora_A.weight") != (module, "A"):
            raise ModelError(f"bad module name {module!r}", path=str(path))
        _check_shapes(module, tuple(layer.a.shape), tuple(layer.b.shape), str(path))
        expected = adapter_scale(config, module, layer.rank)
        if not math.isclose(float(layer.scale), expected, rel_tol=1e-6):
            raise ModelError(f"{module}: scale {layer.scale} but the config gives {expected}",
                             path=str(path), hint="fold the scale into the factors and use "
                             "unit_scale_config (peft would load the config's scale)")
        if not (torch.isfinite(layer.a).all() and torch.isfinite(layer.b).all()):
            raise ModelError(f"{module}: the factors are not finite", path=str(path))
    meta = dict(adapter.meta)
    meta.setdefault("version", __version__)
    metadata = {"format": "pt", CONFIG_KEY: json.dumps(config, indent=2, sort_keys=True),
                CXRKIT_KEY: to_json(meta)}
    with atomic_path(path, overwrite=overwrite) as tmp:
        save_file(to_state_dict(adapter), str(tmp), metadata=metadata)
    adapter.sha256 = file_sha256(path)
    return adapter.sha256


# ---- reading -------------------------------------------------------------------------------------

def read_header(path: str | Path) -> dict[str, Any]:
    """The safetensors header of ``path`` (tensor entries and ``__metadata__``), validated:
    its size, every entry's dtype (a float), shape and byte range inside the file.

    Raises:
        ModelError: missing file, not a safetensors file, or an entry that does not check out.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ModelError("not a safetensors file (too short)", path=str(path))
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or n + 8 > size:
                raise ModelError(f"safetensors header of {n} bytes refused", path=str(path))
            header = json.loads(fh.read(n))
    except FileNotFoundError:
        raise ModelError("no such adapter file", path=str(path)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read the adapter: {exc}"[:200], path=str(path)) from exc
    if not isinstance(header, dict):
        raise ModelError("not a safetensors header", path=str(path))
    data_size = size - 8 - n
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if len(entries) > 2 * MAX_LAYERS:
        raise ModelError(f"{len(entries)} tensors: too many for an adapter", path=str(path))
    for key, entry in entries.items():
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            count = math.prod(int(d) for d in shape)
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"malformed header entry {key!r}", path=str(path)) from None
        if dtype not in _DTYPES:
            raise ModelError(f"{key}: dtype {dtype} (LoRA factors must be float)", path=str(path))
        if any(int(d) < 0 for d in shape) or not 0 <= start <= end <= data_size or \
                end - start != count * _DTYPES[dtype]:
            raise ModelError(f"{key}: shape {shape} does not match its bytes", path=str(path))
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ModelError("malformed safetensors metadata", path=str(path))
    return header


def _json_field(meta: dict[str, str], key: str, path: Path) -> dict | None:
    if key not in meta:
        return None
    try:
        value = json.loads(meta[key])
    except json.JSONDecodeError:
        raise ModelError(f"the file's {key} metadata is not JSON", path=str(path)) from None
    if not isinstance(value, dict):
        raise ModelError(f"the file's {key} metadata is not an object", path=str(path))
    return value


def load_adapter(path: str | Path, *, backbone_sha256: str | None = None) -> Adapter:
    """Read an adapter file: the header is validated (:func:`read_header`; pairs and shapes
    checked) before the tensors are loaded, never a pickle.

    The config comes from the file's ``lora_adapter_metadata``, else from an
    ``adapter_config.json`` beside it (peft's ``save_pretrained``), else every layer gets
    scale 1 (``lora_alpha = r``, as diffusers assumes without alphas).

    Args:
        backbone_sha256: the hash of the backbone the adapter will be put on; an adapter that
            records another backbone is refused.

    Raises:
        ModelError: an invalid or unsupported file, or an adapter for another backbone.
    """
    import torch
    from safetensors.torch import load_file

    from cxrkit.files import file_sha256

    path = Path(path)
    header = read_header(path)
    meta_raw = header.get("__metadata__") or {}
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, entry in entries.items():
        found = module_of(key)
        if found is None:
            raise ModelError(f"unexpected tensor {key!r} in a LoRA adapter", path=str(path),
                             hint="only <module>.lora_A.weight / lora_B.weight are supported")
        shapes.setdefault(found[0], {})[found[1]] = tuple(entry["shape"])
    for module, pair in shapes.items():
        if set(pair) != {"A", "B"}:
            missing = "B" if "A" in pair else "A"
            raise ModelError(f"{module} has no lora_{missing}", path=str(path))
        _check_shapes(module, pair["A"], pair["B"], str(path))
    meta = _json_field(meta_raw, CXRKIT_KEY, path) or {}
    recorded = meta.get("backbone_sha256")
    if backbone_sha256 is not None and recorded and recorded != backbone_sha256:
        raise ModelError(f"the adapter was trained on another backbone ({recorded[:12]}…, this "
                         f"one is {backbone_sha256[:12]}…)", path=str(path),
                         hint="use an adapter trained on this model, or the model it names")
    config = _json_field(meta_raw, CONFIG_KEY, path)
    if config is None:
        beside = path.with_name("adapter_config.json")
        if beside.is_file() and beside.stat().st_size < (1 << 20):
            try:
                config = json.loads(beside.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ModelError(f"cannot read {beside.name}: {exc}"[:200],
                                 path=str(beside)) from exc
        else:
            config = unit_scale_config({m: p["A"][0] for m, p in shapes.items()})
    try:
        tensors = load_file(str(path))
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelError(f"cannot load the adapter: {exc}"[:300], path=str(path)) from exc
    for key, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise ModelError(f"{key} holds values that are not finite", path=str(path))
    adapter = from_state_dict(tensors, config, meta, path=str(path))
    adapter.sha256 = file_sha256(path)
    return adapter
