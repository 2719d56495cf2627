"""Training of the characteristic adapters (``cxrkit train-lora``) and ZipLoRA mergers.

**Characteristics** (:data:`CHARACTERISTICS`) are read from the LIDC labels that ``cxrkit synth``
records keep (``nodule.characteristics``: ``calcified``, ``border_irregular``, ``inhomogeneous``,
``subtlety``), whatever made the nodule: a real LUNA16/LIDC patch (``--source luna16``) or the
parametric generator (``--source parametric``: its spec implies the labels, e.g. a calcification
pattern → ``calcified=1``, lobulated or spiculated → ``border_irregular=1``; its ``subtlety`` is
the one ``synth --subtlety`` drew). An adapter trains on the nodule windows
(:func:`cxrkit.synthdit.nodule_patches`) whose label has its trait (the positives); the counts by
source are recorded.

**Joint training** of several adapters, each on its own characteristic's data: every sample is
drawn for one adapter (uniformly), from that adapter's positives; the adapters **active** on it
are all trained ones whose trait the sample has (a calcified, irregular nodule trains both the
calcified and the irregular adapter together, so neither has to explain the other's trait;
mutually exclusive polarities are never active together). Each step's loss is the sum over the
groups of samples with the same active set of the mask-weighted x₀ loss
(:func:`cxrkit.synthdit.synth_loss`) with exactly those adapters on (the others at scale 0, so
they get no gradient from it), weighted by the group's share of the batch — a sum of losses
rather than batch alternation, so every step moves every adapter with data in the batch and the
orthogonality term acts on all pairs every step. Plus ``λ · Σ_{i<j} L̃_ij``
(:func:`cxrkit.lora.algebra.adapters_orth_penalty` on the live peft parameters: the normalised
``‖ΔW_iΔW_jᵀ‖²_F / (‖ΔW_i‖²‖ΔW_j‖²)`` summed over shared layers, exact from r×r products).

**Subtlety** is a slider: at inference its adapter's weight is ``α(s)/α_train`` (``α`` the
``--alpha-map``, default the source's ``22+s``; ``α_train`` the ``--alpha``). It is trained the
same way (Concept Sliders, arXiv:2311.12092, trains a slider at +scale toward the "high" and
−scale toward the "low" examples; here every subtlety level is its own target): a sample of
subtlety ``s`` is trained with the adapter's weight ``α(s)/α_train``, so the strength the
sampler sets for ``s`` is the one that learnt to paint subtlety-``s`` nodules. With a map
that changes sign (``4*(s-3)``) this is exactly the ± slider; with ``22+s`` the weights span
only 23/α..27/α.

The frozen backbone is never copied (the shared loop's EMA shares frozen parameters, its
checkpoints leave them out); only adapter parameters are optimised.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from cxrkit.data.seeds import item_seed
from cxrkit.errors import InputError
from cxrkit.synthdit.adapters import (
    activate,
    add_trainable,
    alpha_map,
    backbone_sha256,
    check_targets,
    live_layers,
    set_weights,
    to_adapter,
)
from cxrkit.synthdit.data import NodulePatch, _tensor, nodule_patches, support
from cxrkit.synthdit.inference import inpaint_patches
from cxrkit.synthdit.model import SynthDiT
from cxrkit.synthdit.training import HeldOut, masked_mse, synth_loss
from cxrkit.train import Phase, unwrap_model

if TYPE_CHECKING:
    from cxrkit.lora.files import Adapter
    from cxrkit.train import TrainConfig, TrainResult

DEFAULT_ALPHA_MAP = "22+s"
ADAPTER_KIND = "synth-dit-lora"


@dataclass(frozen=True)
class Characteristic:
    """A trait an adapter paints: ``label == value`` of the nodule's characteristics.

    Attributes:
        name: the adapter's name (``calcified``, ``border_regular``, …).
        label: the key in ``nodule.characteristics``.
        value: the value that makes a positive (None: any subtlety 1..5, the slider).
    """

    name: str
    label: str
    value: int | None

    @property
    def slider(self) -> bool:
        """Whether the adapter's weight follows the subtlety (``α(s)/α_train``)."""
        return self.value is None

    @property
    def polarity(self) -> str:
        """The selection as text (``border_irregular==0``; ``subtlety in 1..5``)."""
        return f"{self.label} in 1..5" if self.slider else f"{self.label}=={self.value}"

    def matches(self, labels: dict[str, Any]) -> bool:
        """Whether a nodule with these characteristics is a positive."""
        value = labels.get(self.label)
        if not isinstance(value, (int, float)) or isinstance(value, bool) \
                or not math.isfinite(value):
            return False
        if self.slider:
            return 1 <= round(value) <= 5
        return round(value) == self.value


CHARACTERISTICS: dict[str, Characteristic] = {c.name: c for c in (
    Characteristic("calcified", "calcified", 1),
    Characteristic("border_regular", "border_irregular", 0),
    Characteristic("border_irregular", "border_irregular", 1),
    Characteristic("texture_homogeneous", "inhomogeneous", 0),
    Characteristic("texture_inhomogeneous", "inhomogeneous", 1),
    Characteristic("subtlety", "subtlety", None),
)}


def characteristic(name: str) -> Characteristic:
    """The :data:`CHARACTERISTICS` entry (an InputError for another name)."""
    if name not in CHARACTERISTICS:
        raise InputError(f"unknown characteristic {name!r}; choose from "
                         f"{', '.join(CHARACTERISTICS)}")
    return CHARACTERISTICS[name]


def traits(meta: dict[str, Any]) -> list[tuple[str, int]]:
    """The ``(label, value)`` pairs an adapter file paints, from its cxrkit metadata: its
    ``characteristic`` (``a+b`` for a merge), and those of its ``characteristics`` or merge
    ``sources`` entries (the subtlety slider and unknown names give none)."""
    names = str(meta.get("characteristic") or "").split("+")
    for key in ("characteristics", "sources"):
        for entry in meta.get(key) or []:
            if isinstance(entry, dict) and entry.get("weight", 1) != 0:
                names.append(str(entry.get("characteristic") or ""))
    out = []
    for name in dict.fromkeys(names):
        c = CHARACTERISTICS.get(name)
        if c is not None and not c.slider:
            out.append((c.label, int(c.value)))  # type: ignore[arg-type]
    return out


@dataclass(frozen=True)
class LabelledPatch:
    """A nodule window with where it came from.

    Attributes:
        patch: the window (:class:`~cxrkit.synthdit.data.NodulePatch`).
        source: the nodule's origin (``luna16``, ``parametric``, ``mask``, …).
        engine: the synth engine that made the record (``blend``, ``ct``, …).
    """

    patch: NodulePatch
    source: str = "unknown"
    engine: str = "unknown"


def labelled_patches(records: Sequence[dict[str, Any]], patch_px: int,
                     pixel_mm: float) -> list[LabelledPatch]:
    """The nodule windows of synth ``records`` with their source and engine (records of
    several runs may share ids: each window is matched to its record by position)."""
    from dataclasses import replace

    numbered = [{**r, "id": str(i)} for i, r in enumerate(records)]
    out = []
    for p in nodule_patches(numbered, patch_px, pixel_mm):
        record = records[int(p.source)]
        nodule = record.get("nodule") or {}
        out.append(LabelledPatch(
            replace(p, source=str(record.get("id", ""))),
            str((nodule.get("source") or {}).get("kind", "unknown")),
            str((record.get("synth") or {}).get("engine", "unknown"))))
    return out


@dataclass(frozen=True)
class AdapterPatches:
    """Samples for (jointly) training adapters (module docstring).

    ``sample`` draws an adapter uniformly, one of its positives, flips it horizontally with
    probability ½, and returns ``patch``, ``mask`` and ``weights`` ``(N,)``: each adapter's
    weight on this sample (0 when inactive; a slider's ``α(s)/α_train``).

    Attributes:
        characteristics: one per adapter, in order.
        positives: each adapter's patches.
        slider_weight: ``s → α(s)/α_train`` for a slider.
    """

    characteristics: Sequence[Characteristic]
    positives: Sequence[Sequence[LabelledPatch]]
    slider_weight: Callable[[float], float] = lambda s: 1.0

    def __post_init__(self) -> None:
        empty = [c.name for c, p in zip(self.characteristics, self.positives, strict=True)
                 if not p]
        if empty:
            raise InputError(f"no training nodule with {', '.join(empty)}",
                             hint="give synth records whose nodules have the trait (e.g. "
                                  "cxrkit synth -e blend --calcification all, or --source "
                                  "luna16 --where 'calcified==1')")

    def weights(self, labels: dict[str, Any], chosen: int) -> torch.Tensor:
        """Each adapter's weight on a nodule drawn for adapter ``chosen``."""
        out = []
        for i, c in enumerate(self.characteristics):
            if i != chosen and not c.matches(labels):
                out.append(0.0)
            elif c.slider:
                out.append(float(self.slider_weight(float(labels["subtlety"]))))
            else:
                out.append(1.0)
        return torch.tensor(out, dtype=torch.float32)

    def sample(self, generator: np.random.Generator) -> dict[str, torch.Tensor]:
        """One sample (class docstring)."""
        chosen = int(generator.integers(len(self.characteristics)))
        pool = self.positives[chosen]
        item = pool[int(generator.integers(len(pool)))].patch
        patch, mask = item.patch, item.mask
        if generator.random() < 0.5:
            patch, mask = patch[:, ::-1], mask[:, ::-1]
        return {"patch": _tensor(patch), "mask": _tensor(mask),
                "weights": self.weights(item.attributes, chosen)}


def grouped_loss(model: nn.Module, names: Sequence[str], batch: dict[str, torch.Tensor],
                 generators: Sequence[torch.Generator]) -> torch.Tensor:
    """The batch's x₀ loss with each sample's adapter weights (``batch["weights"]``): one
    forward per distinct weight row, weighted by its share of the batch."""
    inner = unwrap_model(model, SynthDiT)
    rows, inverse = torch.unique(batch["weights"].cpu(), dim=0, return_inverse=True)
    total = torch.zeros((), device=batch["patch"].device)
    B = len(inverse)
    for g, row in enumerate(rows):
        idx = (inverse == g).nonzero().flatten()
        set_weights(inner, dict(zip(names, row.tolist(), strict=True)))
        sub = {k: batch[k][idx.to(batch[k].device)] for k in ("patch", "mask")}
        total = total + synth_loss(inner, sub, [generators[int(i)] for i in idx]) * len(idx) / B
    set_weights(inner, dict.fromkeys(names, 1.0))
    return total


def orth_term(model: nn.Module, names: Sequence[str]) -> torch.Tensor:
    """``Σ_{i<j}`` of the normalised orthogonality penalty of adapters ``i`` and ``j`` over their
    shared layers (:func:`cxrkit.lora.algebra.adapters_orth_penalty`, differentiable)."""
    from cxrkit.lora.algebra import adapters_orth_penalty

    layers = [live_layers(model, n) for n in names]
    terms = [adapters_orth_penalty(layers[i], layers[j])
             for i in range(len(names)) for j in range(i + 1, len(names))]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def adapter_validator(names: Sequence[str], data: AdapterPatches, samples: int, seed: int,
                      last: dict[str, float]) -> Callable[[nn.Module], dict[str, float]]:
    """``model → metrics`` on fixed held-out samples of each adapter's characteristic:
    ``<name>/loss`` (x₀ loss at fixed timesteps and noises) and ``<name>/mse_1step`` (masked MSE
    of the one-step estimate) with the adapters as trained, and ``…_base`` with every adapter off;
    the last result is also kept in ``last``."""
    fixed = []
    for i, name in enumerate(names):
        pool = data.positives[i]
        items = [pool[int(j)].patch for j in np.random.default_rng([seed, 7, i]).integers(
            len(pool), size=samples)]
        fixed.append((name, {"patch": torch.stack([_tensor(p.patch) for p in items]),
                             "mask": torch.stack([_tensor(p.mask) for p in items]),
                             "weights": torch.stack([data.weights(p.attributes, i)
                                                     for p in items])}))

    def one_step(inner: SynthDiT, batch: dict[str, torch.Tensor]) -> float:
        rows, inverse = torch.unique(batch["weights"], dim=0, return_inverse=True)
        out = torch.empty_like(batch["patch"])
        for g, row in enumerate(rows):
            idx = (inverse == g).nonzero().flatten()
            set_weights(inner, dict(zip(names, row.tolist(), strict=True)))
            out[idx] = inpaint_patches(inner, batch["patch"][idx], batch["mask"][idx], steps=1,
                                       sampler="ddim",
                                       generator=torch.Generator().manual_seed(seed)).cpu()
        return masked_mse(out, batch["patch"], batch["mask"])

    def validate(model: nn.Module) -> dict[str, float]:
        inner = unwrap_model(model, SynthDiT)
        device = next(inner.parameters()).device
        metrics: dict[str, float] = {}
        for name, batch in fixed:
            on = {k: v.to(device) for k, v in batch.items()}
            off = {**on, "weights": torch.zeros_like(on["weights"])}
            for key, which in ((f"{name}/loss", on), (f"{name}/loss_base", off)):
                gens = [torch.Generator().manual_seed(seed + k)
                        for k in range(len(batch["patch"]))]
                metrics[key] = float(grouped_loss(inner, names, which, gens))
            off = {**batch, "weights": torch.zeros_like(batch["weights"])}
            metrics[f"{name}/mse_1step"] = one_step(inner, batch)
            metrics[f"{name}/mse_1step_base"] = one_step(inner, off)
        set_weights(inner, dict.fromkeys(names, 1.0))
        last.clear()
        last.update(metrics)
        return metrics

    return validate


def init_seed(seed: int, name: str) -> int:
    """The seed of adapter ``name``'s initial A under the run's ``seed``: one per characteristic,
    so adapters trained in separate runs start from different A (a shared A correlates their
    updates by construction, which the interference report then measures), and an adapter
    starts alike alone or in a joint run."""
    return item_seed(seed, f"lora-A:{name}", bits=63)


def train_adapters(model_dir: str | Path, patches: Sequence[LabelledPatch],
                   characteristics: Sequence[str], config: TrainConfig, *,
                   rank: int = 8, alpha: float = 8.0, targets: Sequence[str] = (
                       "to_q", "to_k", "to_v", "to_out.0"),
                   ortho_weight: float = 0.0, alpha_map_expr: str = DEFAULT_ALPHA_MAP,
                   held_out: HeldOut | None = None, data_info: dict[str, Any] | None = None,
                   command: str = "",
                   on_log: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """Train one adapter per characteristic on the frozen model of ``model_dir`` (jointly when
    several, with ``ortho_weight · Σ L̃``) with :func:`cxrkit.train.train`; writes
    ``<characteristic>.safetensors`` per adapter and ``run.json`` into ``config.output_dir``.

    Args:
        model_dir: a synthesis model folder (``cxrkit train-synth``).
        patches: the nodule windows (:func:`labelled_patches`), split by patient here.
        characteristics: names of :data:`CHARACTERISTICS`, one adapter each.
        config: the loop's settings (one process).
        rank, alpha, targets: the LoRA (scale ``alpha/rank``; targets of :data:`LORA_TARGETS`).
        ortho_weight: λ of the orthogonality penalty (joint training only).
        alpha_map_expr: the subtlety map ``α(s)`` (recorded in every adapter).
        held_out: patients held out and samples measured per characteristic.
        data_info: extra ``data`` fields for ``run.json`` and the adapters (record hashes).
        command: the command line.
        on_log: progress callback.

    Raises:
        InputError: bad options, a characteristic twice or without data, several processes.
    """
    from cxrkit import __version__
    from cxrkit.data.splits import split_groups
    from cxrkit.device import accelerate_local_rank
    from cxrkit.lora.files import save_adapter
    from cxrkit.train import train

    if accelerate_local_rank() is not None:
        raise InputError("train-lora runs in one process (not under accelerate launch)")
    chars = [characteristic(c) for c in characteristics]
    names = [c.name for c in chars]
    if not names or len(set(names)) != len(names):
        raise InputError(f"give each characteristic once, got {list(characteristics)}")
    if ortho_weight < 0:
        raise InputError(f"the orthogonality weight must be ≥ 0, got {ortho_weight}")
    targets = check_targets(targets)
    held_out = held_out or HeldOut()
    amap = alpha_map(alpha_map_expr)
    folder = Path(model_dir)
    model = SynthDiT.load(folder)
    sha = backbone_sha256(folder)
    for name in names:
        add_trainable(model, name, rank=rank, alpha=alpha, targets=targets,
                      seed=init_seed(config.seed, name))
    activate(model, names)
    model.requires_grad_(False)
    for pname, p in model.named_parameters():
        if ".lora_A." in pname or ".lora_B." in pname:
            p.requires_grad_(True)
    model.train()

    train_idx, val_idx = split_groups([p.patch.group for p in patches], held_out.fraction,
                                      seed=config.seed, keep_one=True)

    def pools(indices: Sequence[int]) -> list[list[LabelledPatch]]:
        return [[patches[i] for i in indices if c.matches(patches[i].patch.attributes)]
                for c in chars]

    def slider(s: float) -> float:
        return amap(s) / alpha

    data = AdapterPatches(chars, pools(train_idx), slider)
    held = pools(val_idx)  # a characteristic without held-out nodules validates on training's
    on_train = [c.name for c, pool in zip(chars, held, strict=True) if not pool]
    check = AdapterPatches(chars, [pool or data.positives[i] for i, pool in enumerate(held)],
                           slider)

    def counts(pool: Sequence[LabelledPatch]) -> dict[str, int]:
        return dict(sorted(Counter(f"{p.source}/{p.engine}" for p in pool).items()))

    per_adapter = {c.name: {"characteristic": c.name, "polarity": c.polarity,
                            "train": len(data.positives[i]), "validation": len(check.positives[i]),
                            "train_by_source": counts(data.positives[i]),
                            "validation_by_source": counts(check.positives[i])}
                   for i, c in enumerate(chars)}

    def loss(model: nn.Module, batch: dict[str, torch.Tensor],
             generators: Sequence[torch.Generator]) -> torch.Tensor:
        value = grouped_loss(model, names, batch, generators)
        if ortho_weight and len(names) > 1:
            value = value + ortho_weight * orth_term(unwrap_model(model, SynthDiT), names
                                                     ).to(value.device)
        return value

    phase = Phase("adapters", loss,
                  lambda m: [p for p in m.parameters() if p.requires_grad])
    last: dict[str, float] = {}
    lora = {"rank": rank, "alpha_train": alpha, "targets": list(targets),
            "scale": alpha / rank, "use_rslora": False}
    info: dict[str, Any] = {
        "command": command, "kind": ADAPTER_KIND, "backbone": {"path": str(folder),
                                                              "sha256": sha},
        "characteristics": names, "lora": lora, "alpha_map": alpha_map_expr,
        "ortho_weight": ortho_weight if len(names) > 1 else 0.0,
        "joint": len(names) > 1,
        "batch": "each sample drawn for one adapter (uniform), active: every trained "
                 "characteristic it has; loss summed over active-set groups",
        "held_out": asdict(held_out),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "data": {**(data_info or {}), "patches": len(patches),
                 "adapters": per_adapter, "split": "by patient (file-name prefix before '_')",
                 "validation_on_training_data": on_train},
        "adapters": {}}

    def save(trained: nn.Module, out: Path) -> None:
        inner = unwrap_model(trained, SynthDiT)
        out.mkdir(parents=True, exist_ok=True)
        if len(names) > 1:
            info["orth_penalty_final"] = float(orth_term(inner, names).detach())
        for c in chars:
            meta = {"kind": ADAPTER_KIND, "characteristic": c.name, "polarity": c.polarity,
                    "label": c.label, "value": c.value, "slider": c.slider,
                    "alpha_train": alpha, "alpha_map": alpha_map_expr if c.slider else None,
                    "rank": rank, "targets": list(targets), "backbone_sha256": sha,
                    "seed": config.seed, "steps": config.steps,
                    "joint_with": [n for n in names if n != c.name],
                    "ortho_weight": info["ortho_weight"],
                    "data": {**(data_info or {}), **per_adapter[c.name]},
                    "validation": {k.split("/", 1)[1]: v for k, v in last.items()
                                   if k.startswith(c.name + "/")},
                    "version": __version__, "command": command}
            peft_config = {"r": rank, "lora_alpha": alpha, "target_modules": list(targets),
                           "lora_dropout": 0.0, "use_rslora": False, "bias": "none"}
            adapter = to_adapter(inner, c.name, config=peft_config, meta=meta)
            path = out / f"{c.name}.safetensors"
            info["adapters"][c.name] = {"path": str(path),
                                        "sha256": save_adapter(path, adapter,
                                                               overwrite=True)}

    return train(model, [phase], data, config,
                 validate=adapter_validator(names, check, held_out.samples, config.seed, last),
                 save_model=save, run_info=info, on_log=on_log)


def train_lora(model_dir: str | Path, records: Sequence[dict[str, Any]],
               characteristics: Sequence[str], config: TrainConfig, **kwargs: Any
               ) -> TrainResult:
    """:func:`train_adapters` on the nodules of synth ``records`` (their image hashes and the
    counts by source are recorded)."""
    from cxrkit.data.splits import files_sha256

    model = SynthDiT.load(model_dir)
    s = model.settings
    del model
    patches = labelled_patches(records, s.patch_px, s.pixel_mm)
    paths = sorted({str(r["path"]) for r in records if r.get("nodule")})
    info = {"records": len(records), "images_sha256": files_sha256(paths),
            "by_source": dict(sorted(Counter(f"{p.source}/{p.engine}"
                                             for p in patches).items()))}
    return train_adapters(model_dir, patches, characteristics, config, data_info=info,
                          **kwargs)


# ---- ZipLoRA ------------------------------------------------------------------------------


def _noisy(model: SynthDiT, batch: dict[str, torch.Tensor],
           generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, ...]:
    """The model inputs ``(x_t, context, mask, t)`` of :func:`synth_loss` for ``batch``."""
    s = model.settings
    x0 = 2 * batch["patch"] - 1
    mask = batch["mask"]
    t = torch.stack([torch.randint(0, s.num_train_timesteps, (), generator=g)
                     for g in generators])
    noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in generators])
    alphas = model.alphas_cumprod()[t].view(-1, 1, 1, 1)
    x_t = alphas.sqrt() * x0 + (1 - alphas).sqrt() * noise
    context = torch.where(support(mask), torch.zeros_like(x0), x0)
    return x_t, context, mask, t


def train_ziplora(model: SynthDiT, first: Adapter, second: Adapter,
                  data: tuple[Sequence[NodulePatch], Sequence[NodulePatch]], *,
                  steps: int = 100, batch_size: int = 8, lr: float = 1e-2,
                  similarity_weight: float = 0.01, seed: int = 0,
                  device: str | torch.device = "cpu") -> tuple[Adapter, dict[str, Any]]:
    """ZipLoRA (Shah et al. 2023, arXiv:2311.13600): learn one merger vector per adapter and
    layer, ``m_i ∈ R^{d_in}`` (initialised to 1), so that ``ΔW = ΔW₁ diag(m₁) + ΔW₂ diag(m₂)``
    reproduces each adapter's prediction on its own data:

    ``L = ‖f_{W₀+ΔW}(x¹) − f_{W₀+ΔW₁}(x¹)‖² + ‖f_{W₀+ΔW}(x²) − f_{W₀+ΔW₂}(x²)‖²
    + λ Σ_ℓ |cos(m₁ˡ, m₂ˡ)|``

    (the |cosine| form of the merger-similarity penalty, lora.md §4), Adam on the mergers only,
    the backbone and both adapters fixed. The result is exact as one adapter of rank r₁+r₂
    (``A = [s₁ A₁ diag(m₁); s₂ A₂ diag(m₂)]``, ``B = [B₁ B₂]``, scale 1): a file ``synth`` loads
    like any other.

    Args:
        model: the synthesis model without adapters (frozen).
        first, second: the adapters, on the same layers.
        data: each adapter's training windows (its characteristic's positives).
        steps, batch_size, lr: the optimisation (the source: ~100 steps).
        similarity_weight: λ.
        seed: the data order and noises.
        device: where the model runs.

    Returns:
        The merged adapter (``meta`` and ``config`` to be filled by the caller) and a summary
        (losses, the mean |cos| of the mergers before and after).

    Raises:
        InputError: adapters on different layers, or no data for one.
    """
    from torch.func import functional_call

    from cxrkit.lora.files import Adapter, LoraLayer

    if set(first.layers) != set(second.layers):
        raise InputError("ZipLoRA needs two adapters on the same layers")
    if not data[0] or not data[1]:
        raise InputError("ZipLoRA needs training windows of both characteristics")
    model = model.to(device).eval().requires_grad_(False)
    keys = sorted(first.layers)
    params = dict(model.named_parameters())
    weight_of = {k: f"{k}.weight" for k in keys}
    missing = [k for k in keys if weight_of[k] not in params]
    if missing:
        raise InputError(f"the model has no layer {missing[0]!r} of the adapters")
    d1 = {k: (first.layers[k].scale * first.layers[k].b.float() @ first.layers[k].a.float()
              ).to(device) for k in keys}
    d2 = {k: (second.layers[k].scale * second.layers[k].b.float() @ second.layers[k].a.float()
              ).to(device) for k in keys}
    mergers = {k: (torch.ones(d1[k].shape[1], device=device, requires_grad=True),
                   torch.ones(d2[k].shape[1], device=device, requires_grad=True)) for k in keys}
    optimizer = torch.optim.Adam([m for pair in mergers.values() for m in pair], lr=lr)

    def weights(deltas: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        if deltas is None:
            return {weight_of[k]: params[weight_of[k]] + d1[k] * mergers[k][0]
                    + d2[k] * mergers[k][1] for k in keys}
        return {weight_of[k]: params[weight_of[k]] + deltas[k] for k in keys}

    def similarity() -> torch.Tensor:
        return torch.stack([torch.nn.functional.cosine_similarity(m1, m2, dim=0).abs()
                            for m1, m2 in mergers.values()]).sum()

    rng = np.random.default_rng(seed)
    before = float(similarity()) / len(keys)
    losses = []
    for step in range(steps):
        total = similarity_weight * similarity()
        for pool, teacher in ((data[0], d1), (data[1], d2)):
            items = [pool[int(i)] for i in rng.integers(len(pool), size=batch_size)]
            batch = {"patch": torch.stack([_tensor(p.patch) for p in items]),
                     "mask": torch.stack([_tensor(p.mask) for p in items])}
            gens = [torch.Generator().manual_seed(seed * 100003 + step * batch_size + i)
                    for i in range(batch_size)]
            inputs = tuple(v.to(device) for v in _noisy(model, batch, gens))
            with torch.no_grad():
                target = functional_call(model, weights(teacher), inputs)
            pred = functional_call(model, weights(None), inputs)
            inside = support(batch["mask"]).float()
            total = total + (((pred - target) ** 2) * inside).sum() / inside.sum().clamp(min=1)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(float(total.detach()))
    layers = {}
    with torch.no_grad():
        for k in keys:
            x, y = first.layers[k], second.layers[k]
            m1, m2 = (m.cpu() for m in mergers[k])
            a = torch.cat([x.scale * x.a.float() * m1[None], y.scale * y.a.float() * m2[None]])
            layers[k] = LoraLayer(a.contiguous(), torch.cat([x.b.float(), y.b.float()], dim=1
                                                            ).contiguous(), 1.0)
    summary = {"steps": steps, "batch_size": batch_size, "lr": lr,
               "similarity_weight": similarity_weight, "seed": seed,
               "loss_first": losses[0] if losses else None,
               "loss_last": losses[-1] if losses else None,
               "mean_abs_cos_before": before,
               "mean_abs_cos_after": float(similarity().detach()) / len(keys)}
    return Adapter(layers, {}, {}), summary


__all__ = ["ADAPTER_KIND", "CHARACTERISTICS", "DEFAULT_ALPHA_MAP", "AdapterPatches",
           "Characteristic", "LabelledPatch", "adapter_validator", "characteristic",
           "grouped_loss", "init_seed", "labelled_patches", "orth_term", "train_adapters",
           "train_lora", "train_ziplora", "traits"]
