"""Merging LoRA adapters into one adapter: tensor code over each layer's (A, B) pairs.

Each source layer's update is ``ΔWᵢ = sᵢ·Bᵢ·Aᵢ`` with peft's scale ``sᵢ`` (rsLoRA included), and
``wᵢ`` is the user's weight. Every result stores its scale inside its factors (scale 1, the config
of :func:`cxrkit.lora.files.unit_scale_config`), so peft, diffusers and cxrkit load it alike.
A layer that only some sources target counts as a zero update in the others.

Exact methods (the merged ``ΔW`` equals ``Σ wᵢΔWᵢ`` to float precision):

* ``cat`` — peft's ``cat``, without its rsLoRA bug (peft issue #3761): ``A = [w₁s₁A₁; w₂s₂A₂; …]``
  (rows stacked), ``B = [B₁ B₂ …]`` (columns); rank ``Σ rᵢ``, every source's factors kept as they
  are (only ``A`` is scaled).
* ``linear`` — the same sum at its numerical rank: the concatenation is re-factored through
  its small core (QR of ``B`` and ``Aᵀ``, SVD of the ``Σr × Σr`` core ``R_B R_Aᵀ``), singular
  values below ``Σr · eps · σ_max`` dropped, the rest split evenly (``B = Q_B U √S``,
  ``A = √S Vᵀ Q_Aᵀ``). Equal to ``cat`` up to rounding; smaller when the sources share
  directions or ``Σr`` exceeds the layer's width. (peft's ``linear`` is *not* this: it adds the
  factors, ``(Σ√(wᵢsᵢ)Bᵢ)(Σ√(wᵢsᵢ)Aᵢ)``, cross terms and all: research lora.md §4, a relative
  error of 0.97.)

Compressed methods (rank ``rank``, default the largest source rank as in peft):

* ``svd`` — the best rank-k approximation of ``Σ wᵢΔWᵢ``, from the same small core (no
  ``d_out × d_in`` SVD); exact when ``k`` reaches the numerical rank.
* ``magnitude`` — ``Σ wᵢ·prune(ΔWᵢ)``, prune keeping the ``density`` fraction of entries largest in
  ``|·|`` (peft's ``magnitude_prune``), then rank k.
* ``ties`` — TIES as peft computes it: trim each ``ΔWᵢ`` to its top ``density``, elect the sign per
  entry from the trimmed updates (``majority="total"``: the sign of their sum; ``"frequency"``: of
  their signs), then the disjoint mean ``Σ wᵢτᵢ·[sign τᵢ = γ] / max(1, Σ [sign τᵢ = γ])``, rank k.
* ``dare_linear`` / ``dare_ties`` — DARE: keep each entry with probability ``density`` and divide by
  it (seeded per layer and source from ``seed``, so a merge repeats exactly), then a weighted sum or
  TIES' sign election and disjoint mean, rank k.
* ``do`` — an orthogonalised merge after DO-Merging (Zheng et al., arXiv:2505.15875), as far as
  its published summary states it (the method section could not be read; the details below are
  this module's choices): (1) per layer, the sources' factors are nudged towards mutual
  orthogonality by ``do_steps`` gradient steps on
  ``Σ_{i≠j} ‖ÂᵢÂⱼᵀ‖²_F + γ Σᵢ ‖Âᵢ − Aᵢ‖²_F`` (and likewise ``B̂ᵢᵀB̂ⱼ`` for B), each factor
  normalised to unit Frobenius norm for the descent so γ = ``do_gamma`` is scale-free;
  (2) each ``ΔŴᵢ = sᵢB̂ᵢÂᵢ`` is decoupled into per-output-row magnitudes ``mᵢ`` (peft's DoRA
  norm) and unit-row directions ``Dᵢ``; (3) magnitudes merge as ``Σ wᵢmᵢ`` and directions as the
  renormalised ``Σ wᵢDᵢ``; (4) the product is compressed to rank k. With one source it returns
  ``w₁ΔW₁`` (to rank k).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cxrkit.errors import InputError, ModelError
from cxrkit.lora.files import Adapter, LoraLayer, unit_scale_config

if TYPE_CHECKING:
    from torch import Tensor

EXACT = ("linear", "cat")
COMPRESSED = ("svd", "ties", "dare_linear", "dare_ties", "magnitude", "do")
METHODS = EXACT + COMPRESSED
"""Every method :func:`merge_adapters` knows, exact ones first."""


def _check_sources(adapters: Sequence[Adapter], weights: Sequence[float]) -> str | None:
    """The sources' one backbone hash (None when none records one)."""
    if not adapters:
        raise InputError("no adapters to merge")
    if len(weights) != len(adapters):
        raise InputError(f"{len(weights)} weights for {len(adapters)} adapters")
    hashes = {a.meta.get("backbone_sha256") for a in adapters}
    if len(hashes) > 1:
        shown = ", ".join(sorted((h or "none")[:12] for h in hashes))
        raise ModelError(f"the adapters were trained on different backbones ({shown})",
                         hint="merge only adapters of one backbone model")
    return hashes.pop()


def _shapes(adapters: Sequence[Adapter]) -> dict[str, tuple[int, int]]:
    shapes: dict[str, tuple[int, int]] = {}
    for adapter in adapters:
        for name, layer in adapter.layers.items():
            shape = (int(layer.b.shape[0]), int(layer.a.shape[1]))
            if shapes.setdefault(name, shape) != shape:
                raise ModelError(f"{name}: the adapters disagree on the layer's size "
                                 f"({shapes[name]} and {shape})")
    return shapes


def _layer_seed(seed: int, name: str, index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{name}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _factor_core(bs: Sequence[Tensor], as_: Sequence[Tensor], rank: int | None) -> tuple[
        Tensor, Tensor]:
    """``(B, A)`` of ``Σ Bᵢ Aᵢ`` (scales already in ``Aᵢ``) through the small core: truncated to
    ``rank``, or (None) to the numerical rank."""
    import torch

    b = torch.cat(list(bs), dim=1)
    a = torch.cat(list(as_), dim=0)
    qb, rb = torch.linalg.qr(b)
    qa, ra = torch.linalg.qr(a.T)
    u, s, vh = torch.linalg.svd(rb @ ra.T)
    if rank is None:
        keep = int((s > s[0] * s.numel() * torch.finfo(s.dtype).eps).sum()) if s.numel() and \
            s[0] > 0 else 0
    else:
        keep = min(rank, s.numel())
    keep = max(keep, 1)
    root = s[:keep].sqrt()
    return (qb @ u[:, :keep]) * root, root[:, None] * (vh[:keep] @ qa.T)


def _factor_full(delta: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """``(B, A)`` of the best rank-``rank`` approximation of a full update."""
    import torch

    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    keep = max(1, min(rank, s.numel()))
    root = s[:keep].sqrt()
    return u[:, :keep] * root, root[:, None] * vh[:keep]


def _top_density(t: Tensor, density: float) -> Tensor:
    """``t`` with all but its ``int(density·numel)`` largest-magnitude entries zeroed (peft's
    magnitude pruning; found with ``kthvalue``, 4× faster than peft's ``topk``: entries equal to
    the threshold are all kept, which differs only where non-zero magnitudes tie exactly)."""
    import torch

    if density >= 1:
        return t
    k = int(density * t.numel())
    if k <= 0:
        return torch.zeros_like(t)
    magnitude = t.abs()
    threshold = torch.kthvalue(magnitude.reshape(-1).cpu(), t.numel() - k + 1).values
    return t * (magnitude >= threshold.to(t.device))


def _dare(t: Tensor, density: float, seed: int) -> Tensor:
    import torch

    if density >= 1:
        return t
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(t.shape, generator=g) < density
    return t * keep.to(t.device, t.dtype) / density


def _ties_merge(taus: Tensor, weights: Tensor, majority: str) -> Tensor:
    """peft's TIES sign election and disjoint mean over stacked (already trimmed) updates."""
    import torch

    sign = taus.sign()
    if majority == "total":
        elect = taus.sum(dim=0)
    elif majority == "frequency":
        elect = sign.sum(dim=0)
    else:
        raise InputError(f"unknown majority sign method {majority!r} (total or frequency)")
    agree = sign == torch.where(elect >= 0, 1.0, -1.0).to(taus.dtype)
    weighted = taus * weights.reshape(-1, 1, 1)
    return (weighted * agree).sum(dim=0) / agree.sum(dim=0).clamp(min=1)


def _orthogonalise(mats: list[Tensor], steps: int, gamma: float, lr: float) -> list[Tensor]:
    """Factors ``Xᵢ`` (rows r×d, or ``Bᵢᵀ``) nudged towards ``XᵢXⱼᵀ = 0`` for ``i ≠ j``: gradient
    descent on ``Σ_{i≠j}‖X̂ᵢX̂ⱼᵀ‖²_F + γΣ‖X̂ᵢ − Xᵢ‖²_F`` over unit-norm copies (the gradient in
    closed form, ``4Σ_{j≠i}(X̂ᵢX̂ⱼᵀ)X̂ⱼ + 2γ(X̂ᵢ − Xᵢ)``, r×r products only), norms restored."""
    import torch

    if len(mats) < 2 or steps <= 0:
        return mats
    norms = [m.norm().clamp_min(torch.finfo(m.dtype).tiny) for m in mats]
    start = [m / n for m, n in zip(mats, norms, strict=True)]
    xs = [x.clone() for x in start]
    for _ in range(steps):
        grads = []
        for i, x in enumerate(xs):
            g = 2 * gamma * (x - start[i])
            for j, y in enumerate(xs):
                if j != i:
                    g = g + 4 * ((x @ y.T) @ y)
            grads.append(g)
        xs = [x - lr * g for x, g in zip(xs, grads, strict=True)]
    return [x * n for x, n in zip(xs, norms, strict=True)]


def _do_merge(pairs: list[tuple[Tensor, Tensor]], weights: Tensor, steps: int, gamma: float,
              lr: float) -> Tensor:
    """The DO-style merged full update of one layer from ``(sᵢBᵢ, Aᵢ)`` pairs."""
    import torch

    a_hat = _orthogonalise([a for _, a in pairs], steps, gamma, lr)
    b_hat = [bt.T for bt in _orthogonalise([b.T for b, _ in pairs], steps, gamma, lr)]
    direction = None
    magnitude = None
    for w, b, a in zip(weights, b_hat, a_hat, strict=True):
        full = b @ a
        m = full.norm(dim=1, keepdim=True)
        unit = full / torch.where(m > 0, m, torch.ones_like(m))
        direction = w * unit if direction is None else direction + w * unit
        magnitude = w * m if magnitude is None else magnitude + w * m
    norm = direction.norm(dim=1, keepdim=True)
    return magnitude * direction / torch.where(norm > 0, norm, torch.ones_like(norm))


def merge_adapters(adapters: Sequence[Adapter], weights: Sequence[float] | None = None, *,
                   method: str = "linear", rank: int | None = None, density: float = 0.5,
                   seed: int = 0, majority: str = "total", do_steps: int = 50,
                   do_gamma: float = 1.0, do_lr: float = 0.1,
                   device: Any = None) -> Adapter:
    """Merge ``adapters`` (weights ``weights``, default 1 each) with ``method`` (see the module
    docstring) into one adapter whose layers have scale 1; its meta records the method, the
    weights, the options, the sources (hash, characteristic, rank) and their backbone hash.

    ``device`` (a torch device or name) is where the arithmetic runs (float64); the result's
    tensors are on the CPU, in the sources' promoted dtype.

    Raises:
        InputError: an unknown method, bad weights, rank or density.
        ModelError: sources of different backbones, or disagreeing layer sizes.
    """
    import torch

    with torch.no_grad():  # sources may be live parameters: no graph through a merge
        return _merge(adapters, weights, method=method, rank=rank, density=density, seed=seed,
                      majority=majority, do_steps=do_steps, do_gamma=do_gamma, do_lr=do_lr,
                      device=device)


def _merge(adapters: Sequence[Adapter], weights: Sequence[float] | None, *, method: str,
           rank: int | None, density: float, seed: int, majority: str, do_steps: int,
           do_gamma: float, do_lr: float, device: Any) -> Adapter:
    import torch

    weights = [1.0] * len(adapters) if weights is None else [float(w) for w in weights]
    backbone = _check_sources(adapters, weights)
    if method not in METHODS:
        raise InputError(f"unknown merge method {method!r} (one of {', '.join(METHODS)})")
    if rank is not None and rank < 1:
        raise InputError(f"--rank must be at least 1 (got {rank})")
    if not 0 < density <= 1:
        raise InputError(f"--density must be in (0, 1] (got {density})")
    shapes = _shapes(adapters)
    k = rank if rank is not None else max(layer.rank for a in adapters
                                          for layer in a.layers.values())
    dtype = adapters[0].layers[next(iter(adapters[0].layers))].a.dtype
    for adapter in adapters:
        for layer in adapter.layers.values():
            dtype = torch.promote_types(dtype, torch.promote_types(layer.a.dtype, layer.b.dtype))
    work = torch.float64
    where = torch.device(device) if device is not None else torch.device("cpu")
    layers: dict[str, LoraLayer] = {}
    for name in sorted(shapes):
        present = [(i, LoraLayer(a.layers[name].a.to(where), a.layers[name].b.to(where),
                                 a.layers[name].scale))
                   for i, a in enumerate(adapters) if name in a.layers]
        w = [weights[i] for i, _ in present]
        if method == "cat":
            b = torch.cat([layer.b.to(dtype) for _, layer in present], dim=1)
            a = torch.cat([(wi * layer.scale * layer.a.to(work)).to(dtype)
                           for wi, (_, layer) in zip(w, present, strict=True)], dim=0)
        elif method in ("linear", "svd"):
            b, a = _factor_core([layer.b.to(work) for _, layer in present],
                                [wi * layer.scale * layer.a.to(work)
                                 for wi, (_, layer) in zip(w, present, strict=True)],
                                None if method == "linear" else k)
        else:
            full_dtype = torch.promote_types(dtype, torch.float32)  # lossy anyway: no float64
            wt = torch.tensor(w, dtype=full_dtype, device=where)
            if method == "do":
                full = _do_merge([(layer.scale * layer.b.to(full_dtype),
                                   layer.a.to(full_dtype))
                                  for _, layer in present], wt, do_steps, do_gamma, do_lr)
            else:
                deltas = [layer.scale * (layer.b.to(full_dtype) @ layer.a.to(full_dtype))
                          for _, layer in present]
                if method in ("dare_linear", "dare_ties"):
                    taus = torch.stack([_dare(d, density, _layer_seed(seed, name, i))
                                        for (i, _), d in zip(present, deltas, strict=True)])
                else:
                    taus = torch.stack([_top_density(d, density) for d in deltas])
                if method in ("ties", "dare_ties"):
                    full = _ties_merge(taus, wt, majority)
                else:
                    full = (taus * wt.reshape(-1, 1, 1)).sum(dim=0)
            b, a = _factor_full(full, k)
        layers[name] = LoraLayer(a=a.to("cpu", dtype).contiguous(),
                                 b=b.to("cpu", dtype).contiguous(), scale=1.0)
    base = next((dict(a.config) for a in adapters), {})
    config = unit_scale_config({n: layer.rank for n, layer in layers.items()}, base=base)
    options: dict[str, Any] = {}
    if method not in EXACT:
        options["rank"] = k
    if method in ("ties", "dare_linear", "dare_ties", "magnitude"):
        options["density"] = density
    if method in ("dare_linear", "dare_ties"):
        options["seed"] = seed
    if method in ("ties", "dare_ties"):
        options["majority"] = majority
    if method == "do":
        options.update(do_steps=do_steps, do_gamma=do_gamma, do_lr=do_lr)
    meta = {
        "method": method, "weights": weights, "options": options, "backbone_sha256": backbone,
        "characteristic": "+".join(str(a.meta.get("characteristic") or "?") for a in adapters),
        "sources": [{"sha256": a.sha256, "characteristic": a.meta.get("characteristic"),
                     "polarity": a.meta.get("polarity"), "weight": w,
                     "rank": max(layer.rank for layer in a.layers.values())}
                    for a, w in zip(adapters, weights, strict=True)],
    }
    return Adapter(layers=layers, config=config, meta=meta)


def weighted_sum(adapters: Sequence[Adapter], weights: Sequence[float] | None = None
                 ) -> dict[str, Tensor]:
    """The exact ``Σ wᵢ sᵢ Bᵢ Aᵢ`` of every layer (float64, full matrices): the reference the
    tests and the benchmark measure merges against."""
    import torch

    weights = [1.0] * len(adapters) if weights is None else list(weights)
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for adapter, w in zip(adapters, weights, strict=True):
            for name, layer in adapter.layers.items():
                d = w * layer.scale * (layer.b.to(torch.float64) @ layer.a.to(torch.float64))
                out[name] = out[name] + d if name in out else d
    return out


def relative_error(adapter: Adapter, reference: dict[str, Tensor]) -> float:
    """``‖ΔW_merged − ΔW_ref‖_F / ‖ΔW_ref‖_F`` over all layers together."""
    import torch

    num = den = 0.0
    for name, ref in reference.items():
        ref = ref.detach()
        layer = adapter.layers.get(name)
        got = torch.zeros_like(ref) if layer is None else \
            layer.scale * (layer.b.detach().double() @ layer.a.detach().double())
        num += float(((got - ref) ** 2).sum())
        den += float((ref ** 2).sum())
    return (num / den) ** 0.5 if den > 0 else float(num > 0)
