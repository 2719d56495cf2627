"""Exact LoRA algebra from r×r products: no d_out×d_in matrix is formed except by :func:`delta`.

For layers ``ΔWᵢ = sᵢ·Bᵢ·Aᵢ`` (``Aᵢ``: r×d_in, ``Bᵢ``: d_out×r), with ``Gᵢ = BᵢᵀBᵢ`` and
``M = A₁A₂ᵀ`` (research lora.md §5):

* ``‖ΔW₁ΔW₂ᵀ‖²_F = s₁²s₂²·tr(G₁ M G₂ Mᵀ)`` — zero exactly when the updates' row spaces (the input
  directions they read) are orthogonal: the paper's L_orth;
* ``‖ΔW₁ᵀΔW₂‖²_F = s₁²s₂²·tr((A₁A₁ᵀ) N (A₂A₂ᵀ) Nᵀ)``, ``N = B₁ᵀB₂`` — shared output directions;
* ``‖ΔWᵢ‖²_F = sᵢ²·tr(Gᵢ AᵢAᵢᵀ)`` and ``⟨ΔW₁, ΔW₂⟩_F = s₁s₂·tr((B₁ᵀB₂)(A₂A₁ᵀ))``.

Cost O((d_in + d_out)·r²) per layer, and everything is differentiable: the trainer calls
:func:`orth_penalty` on live peft parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from cxrkit.errors import ModelError
from cxrkit.lora.files import Adapter, LoraLayer

if TYPE_CHECKING:
    from torch import Tensor

SPACES = ("row", "column")


def delta(layer: LoraLayer) -> Tensor:
    """The layer's full update ``scale · B @ A`` (d_out × d_in)."""
    return layer.scale * (layer.b @ layer.a)


def _same_shape(x: LoraLayer, y: LoraLayer) -> None:
    if x.a.shape[1] != y.a.shape[1] or x.b.shape[0] != y.b.shape[0]:
        raise ModelError(f"the layers differ in size ({tuple(x.b.shape[:1]) + tuple(x.a.shape[1:])}"
                         f" and {tuple(y.b.shape[:1]) + tuple(y.a.shape[1:])})")


def norm2(x: LoraLayer) -> Tensor:
    """``‖ΔW‖²_F`` from r×r products."""
    return x.scale ** 2 * ((x.b.T @ x.b) * (x.a @ x.a.T)).sum()


def inner(x: LoraLayer, y: LoraLayer) -> Tensor:
    """``⟨ΔW₁, ΔW₂⟩_F = s₁s₂·tr((B₁ᵀB₂)(A₂A₁ᵀ))`` from r×r products."""
    _same_shape(x, y)
    return x.scale * y.scale * ((x.b.T @ y.b) * (x.a @ y.a.T)).sum()


def cosine(x: LoraLayer, y: LoraLayer) -> Tensor:
    """The cosine of the flattened updates (0 when either is zero)."""
    return _ratio(inner(x, y), norm2(x).sqrt(), norm2(y).sqrt())


def cross_norm2(x: LoraLayer, y: LoraLayer, *, space: str = "row") -> Tensor:
    """``‖ΔW₁ΔW₂ᵀ‖²_F`` (``space="row"``) or ``‖ΔW₁ᵀΔW₂‖²_F`` (``"column"``), exactly, from
    r×r products."""
    _same_shape(x, y)
    if space == "row":
        g1, g2, m = x.b.T @ x.b, y.b.T @ y.b, x.a @ y.a.T
    elif space == "column":
        g1, g2, m = x.a @ x.a.T, y.a @ y.a.T, x.b.T @ y.b
    else:
        raise ModelError(f"unknown space {space!r} (one of {', '.join(SPACES)})")
    # tr(G1 M G2 Mᵀ) = Σ (G1 M) ⊙ (M G2)  (G1, G2 symmetric)
    return (x.scale * y.scale) ** 2 * ((g1 @ m) * (m @ g2)).sum()


def _ratio(num: Tensor, *dens: Tensor) -> Tensor:
    """``num / Π dens``, 0 where a denominator is below √tiny of its dtype, with finite
    gradients everywhere (at peft's initialisation B = 0 the updates are exactly zero)."""
    import torch

    out = num
    for den in dens:
        ok = den > torch.finfo(den.dtype).tiny ** 0.5
        out = torch.where(ok, out / torch.where(ok, den, torch.ones_like(den)),
                          torch.zeros_like(out))
    return out


def orth_penalty(x: LoraLayer, y: LoraLayer, *, normalise: bool = True,
                 space: str = "row") -> Tensor:
    """The orthogonality penalty of two adapters on one layer: ``‖ΔW₁ΔW₂ᵀ‖²_F``, with
    ``normalise`` divided by ``‖ΔW₁‖²_F·‖ΔW₂‖²_F`` (a value in [0, 1] that shrinking either
    adapter cannot lower; 0 when either update is zero). Differentiable in every factor.

    ``space="column"`` penalises shared output directions instead (``‖ΔW₁ᵀΔW₂‖²_F``)."""
    value = cross_norm2(x, y, space=space)
    return _ratio(value, norm2(x), norm2(y)) if normalise else value


def olora_penalty(x: LoraLayer, y: LoraLayer, *, normalise: bool = True) -> Tensor:
    """O-LoRA's variant: ``‖A₁A₂ᵀ‖²_F`` (normalised by ``‖A₁‖²_F‖A₂‖²_F``). Zero implies the
    full penalty is zero (``ΔW₁ΔW₂ᵀ = s₁s₂B₁(A₁A₂ᵀ)B₂ᵀ``); it ignores B and the scales."""
    if x.a.shape[1] != y.a.shape[1]:
        raise ModelError("the layers' inputs differ in size")
    value = ((x.a @ y.a.T) ** 2).sum()
    return _ratio(value, (x.a ** 2).sum(), (y.a ** 2).sum()) if normalise else value


def _layers(x: Adapter | Mapping[str, LoraLayer]) -> Mapping[str, LoraLayer]:
    return x.layers if isinstance(x, Adapter) else x


def shared_layers(x: Adapter | Mapping[str, LoraLayer],
                  y: Adapter | Mapping[str, LoraLayer]) -> list[str]:
    """The module names both adapters target, sorted."""
    return sorted(set(_layers(x)) & set(_layers(y)))


def adapters_orth_penalty(x: Adapter | Mapping[str, LoraLayer],
                          y: Adapter | Mapping[str, LoraLayer], *, normalise: bool = True,
                          space: str = "row", reduction: str = "sum",
                          variant: str = "full") -> Tensor:
    """:func:`orth_penalty` (``variant="full"``) or :func:`olora_penalty` (``"olora"``) summed
    (``reduction="sum"``) or averaged (``"mean"``) over the layers both adapters target.

    Raises:
        ModelError: the adapters share no layer, or an unknown reduction or variant.
    """
    lx, ly = _layers(x), _layers(y)
    names = shared_layers(lx, ly)
    if not names:
        raise ModelError("the two adapters target no common layer")
    if variant == "full":
        terms = [orth_penalty(lx[n], ly[n], normalise=normalise, space=space) for n in names]
    elif variant == "olora":
        terms = [olora_penalty(lx[n], ly[n], normalise=normalise) for n in names]
    else:
        raise ModelError(f"unknown penalty variant {variant!r} (full or olora)")
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / len(terms)
    raise ModelError(f"unknown reduction {reduction!r} (sum or mean)")
