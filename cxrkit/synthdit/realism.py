"""How real do generated nodules look? Measures that compare generated nodule patches with real
projected ones painted into the same backgrounds with the same masks (issue #20's proof; the
source had radiologists, who judged 80 % of its synthetic nodules real).

- :func:`nodule_contrast`: mean inside the nodule's support minus the mean of a ring of
  surrounding pixels, per patch (the nodule-minus-surroundings contrast);
- :func:`interior_texture`: the fine texture's SD inside the nodule over the SD outside it, per
  patch (a painted interior smoother than the radiograph's grain shows here first);
- :func:`seam_ratio`: inside the masks, the mean step between neighbouring pixels across the
  boundaries of a token grid over the mean step within tokens (1: no grid; a transformer that
  writes each ``p × p`` block from one token shows > 1);
- :func:`two_sample_test`: a classifier two-sample test (Lopez-Paz & Oquab 2017,
  https://arxiv.org/abs/1610.06545): a small CNN learns to tell generated from real patches in
  k folds split by background patient, and its out-of-fold accuracy and AUC are reported; near
  chance (0.5) means it cannot tell them apart;
- :func:`contact_sheet`: real and generated patches side by side, for looking at.

Used by ``repro/synth_realism.py``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrkit.errors import InputError
from cxrkit.synthdit.data import support

CLASSIFIER_DEFINITION = (
    "classifier two-sample test: a 3-stage CNN (inputs: the patch minus the smooth interpolation "
    "of its surroundings into the mask, its fine texture, both over the texture's SD outside "
    "the mask, and the mask) trained to tell "
    "generated from real nodule patches; k folds split by background patient (a real patch and "
    "its generated twin are always in the same fold); accuracy at p = 0.5 and AUC of the "
    "out-of-fold probabilities, AUC CI by bootstrap over pairs; 0.5 = indistinguishable")
TEXTURE_DEFINITION = (
    "texture = SD of the fine texture (patch minus its 1 px Gaussian blur) inside the mask's "
    "support over its SD outside it, per patch at the model's pitch; 1 = the radiograph's grain")
CONTRAST_DEFINITION = (
    "contrast = mean inside the mask's support minus mean of the ring 2-6 px outside it, display "
    "units [0, 1] at the model's pitch")


def nodule_contrast(patches: torch.Tensor, masks: torch.Tensor, ring: tuple[int, int] = (2, 6)
                    ) -> np.ndarray:
    """Nodule-minus-surroundings contrast of each patch.

    Args:
        patches: ``(B, 1, h, w)`` display pixels.
        masks: ``(B, 1, h, w)`` binary or soft masks (support ``> MASK_FLOOR``).
        ring: inner and outer distance (px) of the surrounding ring from the support.

    Returns:
        ``(B,)`` float64 contrasts (NaN where the ring is empty).
    """
    inside = support(masks)
    near = F.max_pool2d(inside.float(), 2 * ring[0] + 1, stride=1, padding=ring[0]) > 0
    far = F.max_pool2d(inside.float(), 2 * ring[1] + 1, stride=1, padding=ring[1]) > 0
    around = far & ~near
    out = np.full(len(patches), np.nan)
    for i in range(len(patches)):
        if inside[i].any() and around[i].any():
            out[i] = float(patches[i][inside[i]].mean() - patches[i][around[i]].mean())
    return out


def interior_texture(patches: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Fine-texture SD inside each patch's mask support over the SD outside it.

    Args:
        patches: ``(B, 1, h, w)`` display pixels.
        masks: ``(B, 1, h, w)`` binary or soft masks (support ``> MASK_FLOOR``).

    Returns:
        ``(B,)`` float64 ratios (NaN where either side is empty or flat).
    """
    from scipy import ndimage

    inside = support(masks)
    out = np.full(len(patches), np.nan)
    for i in range(len(patches)):
        image = patches[i, 0].double().numpy()
        fine = image - ndimage.gaussian_filter(image, 1.0, mode="nearest")
        where = inside[i, 0].numpy()
        if where.sum() > 1 and (~where).sum() > 1:
            outside = fine[~where].std()
            if outside > 0:
                out[i] = float(fine[where].std() / outside)
    return out


def seam_ratio(patches: torch.Tensor, masks: torch.Tensor, period: int) -> float:
    """Mean absolute step between horizontal and vertical neighbours inside the masks' support
    where the pair straddles a boundary of a ``period``-pixel grid (from pixel 0), over the
    mean step of the other pairs; NaN where either set is empty.

    Args:
        patches: ``(B, 1, h, w)`` display pixels.
        masks: ``(B, 1, h, w)`` binary or soft masks.
        period: the grid's period in pixels (the model's ``patch_size``), ≥ 2.
    """
    if period < 2:
        raise InputError(f"period must be at least 2, got {period}")
    inside = support(masks)[:, 0]
    x = patches[:, 0].double()
    at_sum = within_sum = 0.0
    at_n = within_n = 0
    for axis in (-1, -2):
        n = x.shape[axis]
        step = (x.narrow(axis, 1, n - 1) - x.narrow(axis, 0, n - 1)).abs()
        both = inside.narrow(axis, 1, n - 1) & inside.narrow(axis, 0, n - 1)
        boundary = torch.arange(1, n) % period == 0
        boundary = boundary.view(-1, 1) if axis == -2 else boundary.view(1, -1)
        at, within = both & boundary, both & ~boundary
        at_sum += float(step[at].sum())
        at_n += int(at.sum())
        within_sum += float(step[within].sum())
        within_n += int(within.sum())
    if not at_n or not within_n or not within_sum:
        return float("nan")
    return (at_sum / at_n) / (within_sum / within_n)


def patch_classifier(generator: torch.Generator, channels: int = 3, outputs: int = 1
                     ) -> nn.Module:
    """A small untrained CNN for patch classifiers (weights drawn from ``generator``, not the
    global RNG): three stages of two 3×3 convolutions (the second of stride 2) at widths 16, 32,
    64 with GELU, global average pooling, one linear to ``outputs`` logits; inputs
    ``(N, channels, h, w)``. Used by the two-sample test here and by
    :mod:`cxrkit.synthdit.attributes`."""
    layers: list[nn.Module] = []
    for width in (16, 32, 64):
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.GELU(),
                   nn.Conv2d(width, width, 3, padding=1, stride=2), nn.GELU()]
        channels = width
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(channels, outputs))
    with torch.no_grad():
        for p in net.parameters():  # seeded initialisation independent of the global RNG
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=generator) * (2.0 / p[0].numel()) ** 0.5)
            else:
                p.zero_()
    return net


def _inputs(patches: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """What the classifier sees: the nodule's own signal, amplified. Channel 0: the patch minus
    the smooth interpolation of its surroundings into the mask (:func:`blur_fill`; 0 outside
    the mask), channel 1: the patch's fine texture (minus a 2 px Gaussian blur), both divided
    by the texture's standard deviation outside the mask; channel 2: the mask. Blended
    nodules are a few grey levels deep, so the raw pixels would hide them under the anatomy."""
    from scipy import ndimage

    from cxrkit.synthdit.training import blur_fill

    residual = patches.float() - blur_fill(patches.float(), masks)
    out = torch.empty((len(patches), 3, *patches.shape[-2:]))
    outside = ~support(masks)
    for i in range(len(patches)):
        image = patches[i, 0].double().numpy()
        fine = torch.from_numpy(image - ndimage.gaussian_filter(image, 2.0, mode="nearest"))
        scale = float(fine[outside[i, 0]].std()) if outside[i].any() else 1.0
        scale = max(scale, 1e-4)
        out[i, 0] = residual[i, 0] / scale
        out[i, 1] = fine.float() / scale
        out[i, 2] = masks[i, 0].float()
    return out


def random_flips(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``batch`` flipped left-right, then up-down, each with probability ½ from ``generator``
    (one draw each, in that order: the whole batch flips together)."""
    if torch.rand((), generator=generator) < 0.5:
        batch = batch.flip(-1)
    if torch.rand((), generator=generator) < 0.5:
        batch = batch.flip(-2)
    return batch


def fold_of(groups: Sequence[Hashable], folds: int, seed: int) -> np.ndarray:
    """The fold of each item: its group's (groups shuffled by ``seed``, dealt in turn)."""
    names = sorted({str(g) for g in groups})
    order = np.random.default_rng(seed).permutation(len(names))
    fold = {names[j]: k % folds for k, j in enumerate(order)}
    return np.array([fold[str(g)] for g in groups])


def two_sample_test(real: torch.Tensor, fake: torch.Tensor, masks: torch.Tensor,
                    groups: Sequence[Hashable], *, folds: int = 5, steps: int = 400,
                    batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                    n_boot: int = 1000) -> dict[str, Any]:
    """Can a small CNN tell ``fake`` patches from their ``real`` twins?

    Args:
        real: ``(N, 1, h, w)`` real patches (display pixels in [0, 1]).
        fake: ``(N, 1, h, w)`` generated patches, ``fake[i]`` made with ``masks[i]`` in the
            background of ``real[i]``.
        masks: ``(N, 1, h, w)`` the masks (also an input of the classifier, so it knows where
            to look).
        groups: ``N`` background patient ids; folds never split a patient.
        folds: cross-validation folds (at least 2, at most the number of patients).
        steps, batch_size, lr: the classifier's training per fold (Adam, random flips).
        seed: seed of the folds, the initialisation and the batches.
        n_boot: bootstrap resamples of the AUC CI (0: none).

    Returns:
        ``accuracy``, ``auc``, ``auc_ci95``, ``pairs``, ``folds``, ``definition``.

    Raises:
        InputError: mismatched shapes or too few patients for ``folds``.
    """
    from cxrkit.metrics import auc, bootstrap_ci

    if not real.shape == fake.shape == masks.shape or real.ndim != 4 or len(groups) != len(real):
        raise InputError("real, fake and masks must be (N, 1, h, w) with N groups")
    if not 2 <= folds <= len(set(map(str, groups))):
        raise InputError(f"{folds} folds need at least {folds} background patients")
    fold = fold_of(groups, folds, seed)
    n = len(real)
    x = torch.cat([_inputs(real, masks), _inputs(fake, masks)])
    y = torch.cat([torch.zeros(n), torch.ones(n)])
    pair = np.r_[np.arange(n), np.arange(n)]
    prob = np.zeros(2 * n)
    for k in range(folds):
        test = torch.from_numpy(fold[pair] == k)
        train_x, train_y = x[~test], y[~test]
        gen = torch.Generator().manual_seed(seed * 1000 + k)
        net = patch_classifier(gen)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        for _ in range(steps):
            idx = torch.randint(len(train_x), (min(batch_size, len(train_x)),), generator=gen)
            xb = random_flips(train_x[idx], gen)
            loss = F.binary_cross_entropy_with_logits(net(xb).squeeze(1), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            prob[test.numpy()] = torch.sigmoid(net(x[test]).squeeze(1)).numpy()
    labels = y.numpy().astype(int)
    result: dict[str, Any] = {
        "accuracy": float(np.mean((prob >= 0.5) == labels)),
        "auc": float(auc(prob, labels)), "pairs": n, "folds": folds,
        "definition": CLASSIFIER_DEFINITION}
    if n_boot > 0:
        result["auc_ci95"] = list(bootstrap_ci(
            np.arange(n), seed, n_boot,
            statistic=lambda i: auc(np.r_[prob[i], prob[n + i]],
                                    np.r_[labels[i], labels[n + i]])))
    return result


def contrast_summary(real: np.ndarray, fake: np.ndarray) -> dict[str, Any]:
    """Distributions of paired contrasts (see :func:`nodule_contrast`): quantiles of each, the
    two-sample Kolmogorov-Smirnov statistic and the correlation of the pairs."""
    from scipy import stats

    keep = np.isfinite(real) & np.isfinite(fake)
    r, f = real[keep], fake[keep]

    def describe(v: np.ndarray) -> dict[str, float]:
        q = np.quantile(v, [0.1, 0.25, 0.5, 0.75, 0.9])
        return {"mean": float(v.mean()), "sd": float(v.std()),
                **{f"q{int(p * 100)}": float(x) for p, x in zip((0.1, 0.25, 0.5, 0.75, 0.9), q,
                                                               strict=True)}}

    return {"real": describe(r), "generated": describe(f), "pairs": int(keep.sum()),
            "ks_statistic": float(stats.ks_2samp(r, f).statistic),
            "pearson_r": float(np.corrcoef(r, f)[0, 1]) if len(r) > 2 else float("nan"),
            "definition": CONTRAST_DEFINITION}


def contact_sheet(rows: Sequence[tuple[str, torch.Tensor]], masks: torch.Tensor, path: Path, *,
                  count: int = 12, scale: int = 3) -> None:
    """A PNG of ``count`` examples: one column per named set of patches (e.g. real, generated),
    one row per example, each patch enlarged ``scale`` times with the mask's outline in the
    column to its right."""
    from PIL import Image

    count = min(count, len(masks))
    h, w = masks.shape[-2:]
    gap = 4
    cols = len(rows) + 1
    sheet = np.full((count * (h * scale + gap), cols * (w * scale + gap)), 255, dtype=np.uint8)
    for i in range(count):
        top = i * (h * scale + gap)
        tiles = [patches[i, 0].numpy() for _, patches in rows]
        tiles.append(support(masks[i, 0]).numpy().astype(np.float32))
        for j, tile in enumerate(tiles):
            big = np.kron(np.clip(tile, 0, 1), np.ones((scale, scale)))
            left = j * (w * scale + gap)
            sheet[top:top + h * scale, left:left + w * scale] = np.round(big * 255)
    Image.fromarray(sheet).save(path)
