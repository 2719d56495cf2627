"""Characteristic adapters on the synthesis DiT: peft LoRA layers, their files, and how several
are composed while sampling.

An adapter is a :class:`cxrkit.lora.files.Adapter` (one ``(A, B, scale)`` per targeted linear,
keyed by the module's name, e.g. ``blocks.0.attn1.to_q``) stored in one safetensors file. On a
:class:`~cxrkit.synthdit.model.SynthDiT` it lives as a peft LoRA layer (``PeftAdapterMixin``,
``LoraConfig(target_modules=…)`` restricted to :data:`~cxrkit.synthdit.model.LORA_TARGETS`: never
the adaLN modulation, the embedders or the output layer).

**Exact scales.** peft computes ``h = W₀x + Σ_i scaling_i · B_i A_i x`` over the active adapters of
a layer. :func:`attach` sets ``scaling_i = w_i · s_i`` for every layer, ``s_i`` the layer's own
scale from the file and ``w_i`` the user's weight, so the model is exactly the one with weights
``W₀ + Σ w_i s_i B_i A_i`` (no √-weighting as peft's ``add_weighted_adapter`` does, lora.md §4).
The file's scale is used as is (``α/r`` or ``α/√r``): a merged file with concatenated ranks is
loaded like any other.

**Runtime compositions** (:class:`Composition`, ``synth --compose``): each sets the per-layer
scalings before every sampler step (:func:`cxrkit.synthdit.inpaint_patches`' ``on_step``):

- ``sum``: every adapter at its weight on every step (exact multi-adapter);
- ``switch``: LoRA Switch (Zhong et al. 2024, arXiv:2402.16843): at step ``k`` only adapter
  ``⌊k/τ⌋ mod N`` is active (``τ`` = ``switch_every``);
- ``klora``: K-LoRA (Ouyang et al. 2025, arXiv:2502.18461), exactly two adapters: per layer
  ``S_i`` = the sum of the ``K`` largest ``|ΔW_i|`` (precomputed once, not at every forward as
  the reference code does), ``γ`` = the mean over layers of ``Σ|ΔW₁| / Σ|ΔW₂|``; at the fraction
  ``τ`` of sampling done the layer uses ``ΔW₁`` if ``S₁/γ > (aτ + b)·S₂`` else ``ΔW₂``
  (``a = 1.5``, ``b = 0.5``, ``K = 64``), so the second adapter wins more layers late in
  sampling, when detail is painted. The order matters: the first adapter is the shape-setting
  one.

The backbone hash of an adapter is the sha256 of the model's weights file, the same digest
``synth -e diffusion`` records as ``model_sha256``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cxrkit.errors import InputError, ModelError
from cxrkit.synthdit.model import LORA_TARGETS, WEIGHTS_NAME, SynthDiT

if TYPE_CHECKING:
    from cxrkit.lora.files import Adapter, LoraLayer

COMPOSITIONS = ("sum", "switch", "klora")
ADAPTERS_DIR = Path(__file__).resolve().parent.parent / "models" / "synthdit" / "adapters"
"""Where the shipped characteristic adapters live (``<name>.safetensors``)."""
BASE_SCALE = "_cxrkit_base_scale"
"""Attribute of each peft LoRA module: ``{adapter: its own scale s_i}`` (the file's, or
``lora_alpha / r`` of a trained one), which :func:`set_weights` multiplies by a weight."""
KLORA_K = 64
KLORA_A, KLORA_B = 1.5, 0.5


def backbone_sha256(folder: str | Path) -> str:
    """The sha256 of a model folder's weights file (``model_sha256`` of synth records)."""
    from cxrkit.files import file_sha256

    return file_sha256(Path(folder) / WEIGHTS_NAME)


def check_targets(targets: Sequence[str]) -> tuple[str, ...]:
    """The targets, each one of :data:`LORA_TARGETS` (an InputError otherwise)."""
    bad = [t for t in targets if t not in LORA_TARGETS]
    if bad or not targets:
        raise InputError(f"adapter targets must be among {', '.join(LORA_TARGETS)}; got "
                         f"{', '.join(bad) or 'none'}")
    return tuple(dict.fromkeys(targets))


def _add_adapter(model: SynthDiT, config: Any, name: str) -> None:
    """``model.add_adapter`` without peft's warning that the model already has adapters (it
    has, by design, when several are attached)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Already found a `peft_config`.*")
        model.add_adapter(config, adapter_name=name)


def lora_modules(model: nn.Module) -> dict[str, Any]:
    """The peft LoRA layers of ``model`` by module name."""
    from peft.tuners.lora import LoraLayer as PeftLoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, PeftLoraLayer)}


def add_trainable(model: SynthDiT, name: str, *, rank: int, alpha: float,
                  targets: Sequence[str], seed: int) -> None:
    """Inject a fresh adapter ``name`` (A Kaiming-uniform from ``seed``, B = 0, so the model is
    unchanged) on ``targets``; the backbone is frozen, the adapter trainable, its scale
    ``alpha / rank``.

    Raises:
        InputError: bad rank, alpha or targets.
    """
    from peft import LoraConfig

    if rank < 1 or not alpha > 0:
        raise InputError(f"rank must be ≥ 1 and alpha > 0, got {rank} and {alpha}")
    targets = check_targets(targets)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets),
                        lora_dropout=0.0, init_lora_weights=True, use_rslora=False)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        _add_adapter(model, config, name)
    finally:
        torch.random.set_rng_state(state)
    for module in lora_modules(model).values():
        if name in module.lora_A:
            getattr(module, BASE_SCALE, None) or setattr(module, BASE_SCALE, {})
            getattr(module, BASE_SCALE)[name] = alpha / rank
    model.requires_grad_(False)
    for pname, p in model.named_parameters():
        if f".lora_A.{name}." in pname or f".lora_B.{name}." in pname:
            p.requires_grad_(True)


def live_layers(model: nn.Module, name: str) -> dict[str, LoraLayer]:
    """Adapter ``name``'s layers as :class:`cxrkit.lora.files.LoraLayer` over the model's own
    parameters (differentiable: the orthogonality penalty of joint training uses them)."""
    from cxrkit.lora.files import LoraLayer

    out = {}
    for key, module in lora_modules(model).items():
        if name in module.lora_A:
            out[key] = LoraLayer(module.lora_A[name].weight, module.lora_B[name].weight,
                                 float(getattr(module, BASE_SCALE)[name]))
    if not out:
        raise ModelError(f"the model has no adapter {name!r}")
    return out


def to_adapter(model: nn.Module, name: str, *, config: dict[str, Any],
               meta: dict[str, Any]) -> Adapter:
    """Adapter ``name`` of ``model`` as a detached CPU :class:`~cxrkit.lora.files.Adapter`."""
    from cxrkit.lora.files import Adapter, LoraLayer

    layers = {k: LoraLayer(v.a.detach().float().cpu().clone(),
                           v.b.detach().float().cpu().clone(), v.scale)
              for k, v in live_layers(model, name).items()}
    return Adapter(layers, dict(config), dict(meta))


def _load_one(model: SynthDiT, name: str, adapter: Adapter) -> None:
    """Inject ``adapter`` as peft adapter ``name`` with its exact tensors and scales."""
    from peft import LoraConfig

    modules = dict(model.named_modules())
    for key, layer in adapter.layers.items():
        target = modules.get(key)
        if not any(key.endswith(t) for t in LORA_TARGETS) or target is None:
            raise ModelError(f"the adapter has a layer {key!r} this model does not allow "
                             f"adapters on", hint=f"targets: {', '.join(LORA_TARGETS)}")
        weight = getattr(target, "base_layer", target).weight
        if tuple(layer.a.shape[1:]) != (weight.shape[1],) \
                or tuple(layer.b.shape) != (weight.shape[0], layer.a.shape[0]):
            raise ModelError(f"adapter layer {key!r} has A {tuple(layer.a.shape)} and B "
                             f"{tuple(layer.b.shape)}, the model's linear "
                             f"{tuple(weight.shape)}")
    ranks = {k: int(v.a.shape[0]) for k, v in adapter.layers.items()}
    common = max(set(ranks.values()), key=list(ranks.values()).count)
    config = LoraConfig(r=common, lora_alpha=common, target_modules=sorted(ranks),
                        rank_pattern={"^" + re.escape(k) + "$": r for k, r in ranks.items()
                                      if r != common},
                        lora_dropout=0.0, init_lora_weights=False, use_rslora=False)
    _add_adapter(model, config, name)
    found = lora_modules(model)
    for key, layer in adapter.layers.items():
        module = found[key]
        with torch.no_grad():
            if module.lora_A[name].weight.shape != layer.a.shape:
                raise ModelError(f"peft made a rank {module.lora_A[name].weight.shape[0]} layer "
                                 f"for {key!r}, the file has rank {layer.a.shape[0]}")
            module.lora_A[name].weight.copy_(layer.a)
            module.lora_B[name].weight.copy_(layer.b)
        getattr(module, BASE_SCALE, None) or setattr(module, BASE_SCALE, {})
        getattr(module, BASE_SCALE)[name] = float(layer.scale)
    model.requires_grad_(False)


def attach(model: SynthDiT, adapters: Sequence[tuple[str, Adapter, float]]) -> None:
    """Load several adapters onto ``model`` (``(name, adapter, weight)``), all active, layer
    scalings ``weight · scale`` (exactly ``W₀ + Σ wᵢ sᵢ BᵢAᵢ``).

    Raises:
        ModelError: a layer the model lacks or may not adapt, or mismatched shapes.
        InputError: duplicate names.
    """
    names = [n for n, _, _ in adapters]
    if len(set(names)) != len(names):
        raise InputError(f"adapter names must differ: {names}")
    for name, adapter, _ in adapters:
        _load_one(model, name, adapter)
    activate(model, names)
    set_weights(model, {n: w for n, _, w in adapters})


def activate(model: nn.Module, names: Sequence[str]) -> None:
    """Make ``names`` the active adapters of every LoRA layer that has them."""
    for module in lora_modules(model).values():
        module.set_adapter([n for n in names if n in module.lora_A])


def set_weights(model: nn.Module, weights: Mapping[str, float],
                per_layer: Mapping[str, Mapping[str, float]] | None = None) -> None:
    """Set each adapter's scaling to ``weight · its own scale`` in every layer
    (``per_layer[layer][adapter]`` overrides the weight in one layer)."""
    for key, module in lora_modules(model).items():
        base = getattr(module, BASE_SCALE, {})
        override = (per_layer or {}).get(key, {})
        for name, weight in weights.items():
            if name in module.lora_A:
                module.scaling[name] = float(override.get(name, weight)) * float(base[name])


def delta_weight(module: Any, name: str) -> torch.Tensor:
    """``s · B A`` of adapter ``name`` in one peft LoRA layer (its own scale, weight 1)."""
    a, b = module.lora_A[name].weight, module.lora_B[name].weight
    return float(getattr(module, BASE_SCALE)[name]) * (b.float() @ a.float())


@dataclass
class Composition:
    """How the attached adapters are combined while sampling (module docstring).

    Attributes:
        model: the model with the adapters attached (:func:`attach`).
        weights: ``{adapter name: weight}`` in the user's order.
        method: one of :data:`COMPOSITIONS`.
        switch_every: ``switch``: steps each adapter stays active (τ).
    """

    model: nn.Module
    weights: dict[str, float]
    method: str = "sum"
    switch_every: int = 1

    def __post_init__(self) -> None:
        if self.method not in COMPOSITIONS:
            raise InputError(f"composition must be one of {COMPOSITIONS}, got {self.method!r}")
        if self.switch_every < 1:
            raise InputError("switch_every must be ≥ 1")
        if self.method == "klora":
            if len(self.weights) != 2:
                raise InputError(f"klora composes exactly two adapters, got {len(self.weights)}")
            self._klora = self._klora_scores()
        if self.method == "switch" and not self.weights:
            raise InputError("switch needs at least one adapter")

    @torch.no_grad()
    def _klora_scores(self) -> tuple[dict[str, tuple[float, float]], float]:
        """Per layer ``(S₁, S₂)`` (top-K sums of ``|wᵢ ΔWᵢ|``) and ``γ``."""
        first, second = self.weights
        scores, ratios = {}, []
        for key, module in lora_modules(self.model).items():
            if first not in module.lora_A or second not in module.lora_A:
                continue
            d1 = (self.weights[first] * delta_weight(module, first)).abs().flatten()
            d2 = (self.weights[second] * delta_weight(module, second)).abs().flatten()
            k = min(KLORA_K, d1.numel())
            scores[key] = (float(d1.topk(k).values.sum()), float(d2.topk(k).values.sum()))
            if float(d2.sum()) > 0:
                ratios.append(float(d1.sum()) / float(d2.sum()))
        gamma = sum(ratios) / len(ratios) if ratios else 1.0
        return scores, gamma if gamma > 0 else 1.0

    def klora_choice(self, fraction: float) -> dict[str, str]:
        """``{layer: adapter}`` K-LoRA picks at ``fraction`` of sampling done."""
        first, second = self.weights
        scores, gamma = self._klora
        factor = KLORA_A * fraction + KLORA_B
        return {key: first if s1 / gamma > factor * s2 else second
                for key, (s1, s2) in scores.items()}

    def on_step(self, index: int, total: int) -> None:
        """Set the scalings for sampler step ``index`` of ``total`` (before the model runs)."""
        names = list(self.weights)
        if self.method == "sum":
            set_weights(self.model, self.weights)
        elif self.method == "switch":
            active = names[(index // self.switch_every) % len(names)]
            set_weights(self.model, {n: (w if n == active else 0.0)
                                     for n, w in self.weights.items()})
        else:
            fraction = index / max(1, total - 1)
            choice = self.klora_choice(fraction)
            per_layer = {key: {n: (self.weights[n] if n == pick else 0.0) for n in names}
                         for key, pick in choice.items()}
            set_weights(self.model, self.weights, per_layer)

    def record(self) -> dict[str, Any]:
        """The composition for a record."""
        out: dict[str, Any] = {"method": self.method}
        if self.method == "switch":
            out["switch_every"] = self.switch_every
        if self.method == "klora":
            out.update(k=KLORA_K, a=KLORA_A, b=KLORA_B, gamma=round(self._klora[1], 6))
        return out


def resolve_adapter(spec: str) -> Path:
    """A file for an ``--adapter`` value: an existing path, or a short name of a shipped adapter
    (``calcified`` → ``cxrkit/models/synthdit/adapters/calcified.safetensors``).

    Raises:
        InputError: neither a file nor a shipped adapter.
    """
    path = Path(spec)
    if path.is_file():
        return path
    if re.fullmatch(r"[A-Za-z0-9_\-]+", spec):
        shipped = ADAPTERS_DIR / f"{spec}.safetensors"
        if shipped.is_file():
            return shipped
        have = sorted(p.stem for p in ADAPTERS_DIR.glob("*.safetensors")) \
            if ADAPTERS_DIR.is_dir() else []
        raise InputError(f"no adapter file {spec!r} and no shipped adapter of that name",
                         hint=f"shipped: {', '.join(have)}" if have else
                         "no adapters ship with this install yet: train them with cxrkit "
                         "train-lora (repro/train_lora.sh) and give the .safetensors path")
    raise InputError(f"no adapter file {spec}", path=spec)


def parse_adapter_spec(spec: str) -> tuple[str, float]:
    """``path[:weight]`` → ``(path, weight)`` (weight 1 when not given)."""
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            return head, float(tail)
        except ValueError:
            pass
    return spec, 1.0


def alpha_map(expression: str) -> Callable[[float], float]:
    """The subtlety map ``α(s)``: an expression in ``s`` of numbers, ``+ - * /`` and parentheses
    (``22+s``, the source's; ``4*(s-3)``, a centred slider). Nothing is executed.

    Raises:
        InputError: anything else.
    """
    import ast

    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise InputError(f"alpha map {expression!r} is not an expression in s") from exc
    ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
           ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}

    def value(node: ast.AST, s: float) -> float:
        if isinstance(node, ast.Expression):
            return value(node.body, s)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
                and not isinstance(node.value, bool):
            return float(node.value)
        if isinstance(node, ast.Name) and node.id == "s":
            return s
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = value(node.operand, s)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](value(node.left, s), value(node.right, s))
        raise InputError(f"alpha map {expression!r}: only numbers, s, + - * / and "
                         "parentheses")

    for s in (1, 2, 3, 4, 5):
        try:
            value(tree, float(s))
        except ZeroDivisionError as exc:
            raise InputError(f"alpha map {expression!r} divides by zero at s={s}") from exc
    return lambda s: value(tree, float(s))
