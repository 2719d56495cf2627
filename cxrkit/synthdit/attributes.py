"""Which radiological traits does a nodule patch show? A small multi-label CNN on the synthesis
model's nodule windows, the judge of the characteristic adapters' controllability (issue #21's
proof, ``repro/lora_proof.py``; the source had three radiologists).

- :data:`ATTRIBUTES`: the traits judged (``calcified``, ``border_irregular``,
  ``inhomogeneous``), 0/1 in a record's nodule characteristics (LIDC labels for real nodules);
  an adapter's trait is one of them present (polarity 1) or absent (polarity 0);
- :func:`attribute_labels`: the ``(N, 3)`` label matrix of characteristics dicts (NaN where
  unknown);
- :func:`attribute_inputs`: what the CNN sees, as the realism test's classifier sees it: the
  nodule's residual over the smooth interpolation of its surroundings and the fine texture, both
  over the texture's SD outside the mask (no mask channel: a generated nodule and its unsteered
  twin share their mask, so only what is painted can differ);
- :func:`cross_validate`: out-of-fold probabilities in k folds split by patient (the classifier's
  own held-out AUC per attribute) and the k fold models;
- :func:`youden_thresholds`: one threshold per attribute from the out-of-fold probabilities;
- :class:`AttributeJudge`: the fold models' mean probability and those thresholds, applied to new
  patches (:meth:`AttributeJudge.found`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrkit.errors import InputError
from cxrkit.synthdit.realism import fold_of, patch_classifier, random_flips

ATTRIBUTES = ("calcified", "border_irregular", "inhomogeneous")
"""The judged traits (keys of a nodule's characteristics, 1 = present)."""

DEFINITION = (
    "attribute classifier: a 3-stage CNN (16-32-64 channels) on the central 40 px (30 mm) of "
    "the model's nodule windows (inputs: the nodule's residual over the smooth fill of its "
    "surroundings and the fine texture, both over the texture's SD outside the mask), one "
    "logit per attribute (calcified, border_irregular, inhomogeneous), BCE with positive "
    "weights neg/pos, batch 32, Adam 1e-3, random flips and 90° turns; held-out AUC out of "
    "fold (k folds split by patient); a trait is found when the fold models' mean probability "
    "reaches the attribute's Youden threshold on the out-of-fold probabilities")


def attribute_labels(characteristics: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """``(N, len(ATTRIBUTES))`` float labels (1/0; NaN where a value is missing or not 0/1)."""
    out = np.full((len(characteristics), len(ATTRIBUTES)), np.nan)
    for i, c in enumerate(characteristics):
        for j, key in enumerate(ATTRIBUTES):
            value = c.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value in (0, 1):
                out[i, j] = float(value)
    return out


CROP_PX = 40
"""The classifier sees the central ``CROP_PX`` pixels of each window (30 mm at the model's
0.75 mm): the nodule and its border; the normalisation uses the whole window."""


def attribute_inputs(patches: torch.Tensor, masks: torch.Tensor, *,
                     crop_px: int = CROP_PX) -> torch.Tensor:
    """``(N, 2, c, c)`` classifier inputs of ``(N, 1, h, w)`` patches and masks (module
    docstring), ``c = min(crop_px, h, w)`` central pixels."""
    from cxrkit.synthdit.realism import _inputs

    if patches.shape != masks.shape or patches.ndim != 4 or patches.shape[1] != 1:
        raise InputError(f"patches {tuple(patches.shape)} and masks {tuple(masks.shape)} must "
                         "both be (N, 1, h, w)")
    x = _inputs(patches, masks)[:, :2]
    h, w = x.shape[-2:]
    ch, cw = min(crop_px, h), min(crop_px, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top:top + ch, left:left + cw].contiguous()


def classifier_network(generator: torch.Generator, channels: int = 2) -> nn.Module:
    """The untrained CNN (weights drawn from ``generator``): inputs ``(N, channels, c, c)``,
    one logit per :data:`ATTRIBUTES` entry (:func:`~cxrkit.synthdit.realism.patch_classifier`)."""
    return patch_classifier(generator, channels, len(ATTRIBUTES))


def train_classifier(x: torch.Tensor, y: np.ndarray, *, steps: int = 400, batch_size: int = 32,
                     lr: float = 1e-3, seed: int = 0) -> nn.Module:
    """Train one classifier on inputs ``x`` (:func:`attribute_inputs`) and labels ``y``
    (:func:`attribute_labels`; NaN entries are left out of the loss).

    Raises:
        InputError: mismatched sizes, or an attribute without both classes.
    """
    if len(x) != len(y) or y.ndim != 2 or y.shape[1] != len(ATTRIBUTES):
        raise InputError(f"{len(x)} inputs and labels of shape {y.shape}")
    known = ~np.isnan(y)
    pos = np.nansum(y, axis=0)
    neg = known.sum(axis=0) - pos
    if (pos == 0).any() or (neg == 0).any():
        raise InputError("every attribute needs positive and negative training examples: "
                         + ", ".join(f"{a} {int(p)}+/{int(n)}-"
                                     for a, p, n in zip(ATTRIBUTES, pos, neg, strict=True)))
    weight = torch.tensor(neg / pos, dtype=torch.float32)
    target = torch.from_numpy(np.nan_to_num(y)).float()
    valid = torch.from_numpy(known).float()
    gen = torch.Generator().manual_seed(seed)
    net = classifier_network(gen, x.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(len(x), (min(batch_size, len(x)),), generator=gen)
        xb = random_flips(x[idx], gen)
        xb = torch.rot90(xb, int(torch.randint(4, (), generator=gen)), (-2, -1))
        loss = F.binary_cross_entropy_with_logits(net(xb), target[idx], pos_weight=weight,
                                                  reduction="none")
        loss = (loss * valid[idx]).sum() / valid[idx].sum().clamp_min(1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def predict(nets: Sequence[nn.Module], x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """``(N, len(ATTRIBUTES))`` mean probability of the models ``nets`` on inputs ``x``."""
    out = []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        out.append(torch.stack([torch.sigmoid(n(xb)) for n in nets]).mean(0))
    return torch.cat(out).numpy().astype(np.float64)


def cross_validate(x: torch.Tensor, y: np.ndarray, groups: Sequence[Hashable], *,
                   folds: int = 5, steps: int = 400, seed: int = 0
                   ) -> tuple[np.ndarray, list[nn.Module]]:
    """Out-of-fold probabilities ``(N, len(ATTRIBUTES))`` (folds split by ``groups``: a patient
    is never in its own model's training set) and the fold models.

    Raises:
        InputError: fewer groups than folds, or a fold whose training part lacks a class.
    """
    if not 2 <= folds <= len({str(g) for g in groups}):
        raise InputError(f"{folds} folds need at least {folds} patients")
    fold = fold_of(groups, folds, seed)
    prob = np.zeros(y.shape)
    nets = []
    for k in range(folds):
        test = fold == k
        net = train_classifier(x[torch.from_numpy(~test)], y[~test], steps=steps,
                               seed=seed * 1000 + k)
        prob[test] = predict([net], x[torch.from_numpy(test)])
        nets.append(net)
    return prob, nets


def youden_thresholds(prob: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per attribute, the probability threshold maximising sensitivity + specificity on the
    labelled rows (ties: the lowest such threshold)."""
    out = np.full(prob.shape[1], 0.5)
    for j in range(prob.shape[1]):
        known = ~np.isnan(y[:, j])
        p, t = prob[known, j], y[known, j] > 0.5
        if not t.any() or t.all():
            continue
        best = -1.0
        for c in np.unique(p):
            j_stat = float((p[t] >= c).mean() + (p[~t] < c).mean())
            if j_stat > best + 1e-12:
                best, out[j] = j_stat, float(c)
    return out


def held_out_summary(prob: np.ndarray, y: np.ndarray, thresholds: np.ndarray,
                     groups: Sequence[Hashable], *, seed: int = 0, n_boot: int = 1000
                     ) -> dict[str, Any]:
    """Per attribute: out-of-fold AUC (with a bootstrap CI over patients), positives and
    negatives, and sensitivity/specificity at its threshold."""
    from cxrkit.metrics import auc

    out: dict[str, Any] = {}
    group_arr = np.array([str(g) for g in groups])
    names = np.unique(group_arr)
    rng = np.random.default_rng(seed)
    for j, key in enumerate(ATTRIBUTES):
        known = ~np.isnan(y[:, j])
        p, t = prob[known, j], (y[known, j] > 0.5).astype(int)
        g = group_arr[known]
        entry: dict[str, Any] = {"positives": int(t.sum()), "negatives": int((1 - t).sum()),
                                 "positive_patients": len(set(g[t == 1]))}
        if 0 < t.sum() < len(t):
            entry["auc"] = float(auc(p, t))
            boots = []
            for _ in range(n_boot):
                pick = rng.choice(names, len(names))
                idx = np.concatenate([np.flatnonzero(g == n) for n in pick])
                if 0 < t[idx].sum() < len(idx):
                    boots.append(float(auc(p[idx], t[idx])))
            if boots:
                entry["auc_ci95"] = [float(np.quantile(boots, 0.025)),
                                     float(np.quantile(boots, 0.975))]
            entry["threshold"] = float(thresholds[j])
            entry["sensitivity"] = float((p[t == 1] >= thresholds[j]).mean())
            entry["specificity"] = float((p[t == 0] < thresholds[j]).mean())
        out[key] = entry
    return out


@dataclass
class AttributeJudge:
    """The trained judge: fold models and per-attribute thresholds."""

    nets: list[nn.Module]
    thresholds: np.ndarray

    def probabilities(self, patches: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
        """``(N, len(ATTRIBUTES))`` mean probabilities of the patches."""
        return predict(self.nets, attribute_inputs(patches, masks))

    def found(self, patches: torch.Tensor, masks: torch.Tensor,
              trait: tuple[str, int]) -> np.ndarray:
        """Whether each patch shows ``trait`` = ``(attribute, value)``: value 1 means the
        probability reaches the threshold, value 0 that it stays below."""
        key, value = trait
        if key not in ATTRIBUTES:
            raise InputError(f"no classifier for {key!r}; judged: {ATTRIBUTES}")
        j = ATTRIBUTES.index(key)
        present = self.probabilities(patches, masks)[:, j] >= self.thresholds[j]
        return present if value else ~present
