"""The attribute classifier that judges the adapters (cxrkit.synthdit.attributes) and the
patient split of repro/lora_proof.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cxrkit.errors import InputError  # noqa: E402
from cxrkit.synthdit.attributes import (  # noqa: E402
    ATTRIBUTES,
    AttributeJudge,
    attribute_inputs,
    attribute_labels,
    cross_validate,
    held_out_summary,
    train_classifier,
    youden_thresholds,
)


def _nodules(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Noisy 16² backgrounds, a disc nodule in each; ``calcified`` ones have a bright core,
    ``inhomogeneous`` ones a checkered inside, ``border_irregular`` is a coin flip (no signal)."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    checker = ((yy.long() + xx.long()) % 2).float() - 0.5
    patches, masks, labels = [], [], []
    for _ in range(n):
        cy, cx = 8 + torch.randint(-1, 2, (2,), generator=g).float()
        r = 3.5 + torch.rand((), generator=g)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        disc = (d2 < r**2).float()
        calc, irregular, inhom = (int(v) for v in rng.integers(0, 2, 3))
        img = 0.4 + 0.02 * torch.randn(16, 16, generator=g) + 0.08 * disc
        if calc:
            img = img + 0.3 * (d2 < 2.0).float()
        if inhom:
            img = img + 0.12 * checker * disc
        patches.append(img.clamp(0, 1))
        masks.append(disc)
        labels.append({"calcified": calc, "border_irregular": irregular,
                       "inhomogeneous": inhom})
    return (torch.stack(patches)[:, None], torch.stack(masks)[:, None],
            attribute_labels(labels))


def test_labels_keep_unknowns_out() -> None:
    y = attribute_labels([{"calcified": 1, "border_irregular": 0, "inhomogeneous": True},
                          {"calcified": 3, "texture": "solid"}])
    assert y.shape == (2, len(ATTRIBUTES))
    assert y[0, 0] == 1 and y[0, 1] == 0
    assert np.isnan(y[0, 2]) and np.isnan(y[1]).all()  # a bool and a 3 are not labels


def test_youden_threshold_separates() -> None:
    prob = np.array([[0.1], [0.2], [0.6], [0.9]])
    y = np.array([[0.0], [0.0], [1.0], [1.0]])
    assert youden_thresholds(prob, y)[0] == pytest.approx(0.6)


def test_classifier_learns_visible_traits_only() -> None:
    patches, masks, y = _nodules(96, 0)
    x = attribute_inputs(patches, masks)
    assert x.shape == (96, 2, 16, 16)
    groups = [f"p{i % 8}" for i in range(96)]
    prob, nets = cross_validate(x, y, groups, folds=3, steps=120, seed=0)
    thresholds = youden_thresholds(prob, y)
    held = held_out_summary(prob, y, thresholds, groups, n_boot=20)
    assert held["calcified"]["auc"] > 0.9
    assert held["inhomogeneous"]["auc"] > 0.8
    assert held["border_irregular"]["auc"] < 0.8  # no signal: no skill out of fold
    judge = AttributeJudge(nets, thresholds)
    new, new_masks, new_y = _nodules(40, 1)
    found = judge.found(new, new_masks, ("calcified", 1))
    absent = judge.found(new, new_masks, ("calcified", 0))
    assert (found == ~absent).all()
    truth = new_y[:, 0] == 1
    assert found[truth].mean() > 0.8 and found[~truth].mean() < 0.2
    with pytest.raises(InputError):
        judge.found(new, new_masks, ("subtlety", 1))


def test_classifier_needs_both_classes() -> None:
    patches, masks, y = _nodules(12, 2)
    y[:, 0] = 0
    with pytest.raises(InputError, match="calcified 0"):
        train_classifier(attribute_inputs(patches, masks), y, steps=1)


def test_proof_split_is_disjoint_and_stratified() -> None:
    path = Path(__file__).resolve().parent.parent / "repro" / "lora_proof.py"
    spec = importlib.util.spec_from_file_location("lora_proof", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    records = [{"nodule": {"source": {"patient_id": f"P{i:02d}"},
                           "characteristics": {"calcified": int(i < 6)}}} for i in range(20)]
    split = module.split_patients(records + records[:3], seed=21)
    adapter, classifier = set(split["adapter"]), set(split["classifier"])
    assert not adapter & classifier and len(adapter | classifier) == 20
    calcified = {f"P{i:02d}" for i in range(6)}
    assert len(adapter & calcified) == 3 and len(classifier & calcified) == 3
    assert split == module.split_patients(records, seed=21)
