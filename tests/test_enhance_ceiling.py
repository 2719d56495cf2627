"""repro/enhance_ceiling.py: its oracle linear restorer is a least-squares fit (no data needed)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
from scipy import ndimage

SCRIPT = Path(__file__).resolve().parents[1] / "repro" / "enhance_ceiling.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("repro_enhance_ceiling", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_oracle_linear_filter_recovers_an_affine_change_and_undoes_blur() -> None:
    ceiling = _load()
    rng = np.random.default_rng(0)
    hq = np.clip(ndimage.gaussian_filter(rng.random((96, 96)), 1.5) * 2 - 0.3, 0, 1)
    hq = hq.astype(np.float32)
    affine = (0.5 * hq + 0.2).astype(np.float32)  # a 1x1 kernel and an offset undo it exactly
    assert np.abs(ceiling.oracle_linear(affine, hq, 3, samples=4000) - hq).max() < 1e-4
    blurred = ndimage.gaussian_filter(hq, (2.0, 0.5)).astype(np.float32)
    restored = ceiling.oracle_linear(blurred, hq, 9, samples=4000)
    assert np.abs(restored - hq).mean() < 0.5 * np.abs(blurred - hq).mean()
