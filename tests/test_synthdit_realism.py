"""The realism measures of generated nodules (cxrkit.synthdit.realism)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cxrkit.errors import InputError  # noqa: E402
from cxrkit.synthdit.realism import (  # noqa: E402
    contact_sheet,
    contrast_summary,
    nodule_contrast,
    two_sample_test,
)


def _set(n: int, seed: int, *, blob: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy 16² backgrounds with a disc mask, bright inside when ``blob``."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    patches, masks = [], []
    for _ in range(n):
        cy, cx = 8 + torch.randint(-2, 3, (2,), generator=g).float()
        r = 2.5 + 1.5 * torch.rand((), generator=g)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2).float()
        img = 0.4 + 0.05 * torch.randn(16, 16, generator=g)
        if blob:
            img = img + 0.25 * disc
        patches.append(img.clamp(0, 1))
        masks.append(disc)
    return torch.stack(patches)[:, None], torch.stack(masks)[:, None]


def test_contrast_of_a_known_disc() -> None:
    patch = torch.full((1, 1, 24, 24), 0.3)
    mask = torch.zeros_like(patch)
    mask[..., 8:16, 8:16] = 1
    patch[mask > 0] = 0.7
    assert nodule_contrast(patch, mask)[0] == pytest.approx(0.4)
    summary = contrast_summary(np.array([0.1, 0.2, 0.3]), np.array([0.1, 0.2, 0.3]))
    assert summary["ks_statistic"] == 0 and summary["pearson_r"] == pytest.approx(1)


def test_two_sample_test_finds_fakes_and_not_twins() -> None:
    real, masks = _set(48, 0, blob=True)
    twins = _noise_again(real, masks)
    empty = torch.where(masks > 0, torch.full_like(real, 0.4), real)  # the nodule removed
    groups = [f"p{i % 6}" for i in range(48)]
    kwargs = {"folds": 3, "steps": 80, "batch_size": 32, "n_boot": 0}
    same = two_sample_test(real, twins, masks, groups, **kwargs)
    fake = two_sample_test(real, empty, masks, groups, **kwargs)
    assert fake["auc"] > 0.9 and fake["accuracy"] > 0.8
    assert abs(same["auc"] - 0.5) < 0.2
    with pytest.raises(InputError):
        two_sample_test(real, twins, masks, groups, folds=20)


def _noise_again(real: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``real`` with its background noise drawn again (same blob, same mask)."""
    g = torch.Generator().manual_seed(5)
    base = 0.4 + 0.05 * torch.randn(real.shape, generator=g) + 0.25 * masks
    return base.clamp(0, 1)


def test_contact_sheet_writes_a_png(tmp_path) -> None:
    from PIL import Image

    real, masks = _set(3, 1, blob=True)
    contact_sheet([("real", real), ("again", real)], masks, tmp_path / "s.png", count=3, scale=2)
    with Image.open(tmp_path / "s.png") as im:
        assert im.size == (3 * (16 * 2 + 4), 3 * (16 * 2 + 4))


def test_interior_texture_and_token_seams() -> None:
    from cxrkit.synthdit.realism import interior_texture, seam_ratio

    g = torch.Generator().manual_seed(0)
    grain = 0.5 + 0.05 * torch.randn(8, 1, 32, 32, generator=g)
    masks = torch.zeros_like(grain)
    masks[..., 8:24, 8:24] = 1
    ratio = interior_texture(grain, masks)
    assert np.all(np.abs(ratio - 1) < 0.25)  # the same grain inside and out
    smooth = torch.where(masks > 0, torch.full_like(grain, 0.5), grain)
    assert np.all(interior_texture(smooth, masks) < 0.5)  # grain from the rim only
    assert abs(seam_ratio(grain, masks, 4) - 1) < 0.1
    # each 4x4 block one value plus a little grain: steps across block boundaries dominate
    blocks = torch.randn(8, 1, 8, 8, generator=g).repeat_interleave(4, -1).repeat_interleave(4, -2)
    tiled = torch.where(masks > 0, 0.5 + 0.05 * blocks + 0.005 * torch.randn(
        grain.shape, generator=g), grain)
    assert seam_ratio(tiled, masks, 4) > 3
    assert np.isnan(seam_ratio(grain, torch.zeros_like(masks), 4))
    with pytest.raises(InputError):
        seam_ratio(grain, masks, 1)
