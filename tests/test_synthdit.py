"""The synthesis DiT (cxrkit.synthdit): model layout, save/load, adapters by name, the loss falling
and beating a fill-in baseline, and the inpainting sampler's guarantees (outside the mask bit for
bit, inside changed, seeded, soft and binary masks)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cxrkit.errors import InputError, ModelError
from cxrkit.synthdit import (
    LORA_TARGETS,
    HeldOut,
    RadiographPatches,
    SynthDiT,
    SynthDiTSettings,
    inpaint_patches,
    masked_mse,
    mean_fill,
    paint,
    random_nodule_mask,
    synth_loss,
)
from cxrkit.synthdit.training import validator
from cxrkit.train import TrainConfig, train

TINY = SynthDiTSettings(patch_px=32, pixel_mm=1.0, patch_size=4, hidden_size=64, depth=2,
                        num_heads=2, default_steps=4)


def smooth_images(count: int, size: int, seed: int) -> list[np.ndarray]:
    """Smooth test images: a random tilt plus a low-frequency wave, in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(count):
        a, b, c = rng.uniform(-0.6, 0.6, 3)
        image = 0.5 + a * (xx - 0.5) + b * (yy - 0.5) + 0.15 * np.sin(
            4 * np.pi * (c * xx + rng.uniform() * yy))
        out.append(np.clip(image, 0, 1).astype(np.float32))
    return out


def _train_tiny(settings: SynthDiTSettings, out: Path) -> tuple[SynthDiT, dict, list[float]]:
    """A tiny model trained 500 steps on smooth images (about 10 s on one core), its held-out
    metrics and its losses."""
    data = RadiographPatches(smooth_images(8, 80, 0), 32, 1.0, diameter_mm=(6, 16))
    held = RadiographPatches(smooth_images(4, 80, 1), 32, 1.0, diameter_mm=(6, 16))
    config = TrainConfig(output_dir=str(out), steps=500, batch_size=8, lr=1e-3, warmup_steps=10,
                         ema_decay=0, checkpoint_every=0, validate_every=0, device="cpu")
    model = SynthDiT.new(settings, generator=torch.Generator().manual_seed(0))
    result = train(model, synth_loss, data, config,
                   validate=validator(held, HeldOut(samples=16), 0))
    return result.model.eval(), result.metrics, result.losses


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[SynthDiT, dict, list[float]]:
    """The tiny x0-predicting model, trained (:func:`_train_tiny`)."""
    return _train_tiny(TINY, tmp_path_factory.mktemp("dit"))


def test_layout_names_zero_init_and_non_square() -> None:
    model = SynthDiT.new(SynthDiTSettings(), generator=torch.Generator().manual_seed(0))
    assert 3e6 < sum(p.numel() for p in model.parameters()) < 6e6  # a few million
    names = {n for n, _ in model.named_modules()}
    for i in range(6):
        for target in LORA_TARGETS:
            assert f"blocks.{i}.attn1.{target}" in names or f"blocks.{i}.{target}" in names
    # one timestep embedder for all blocks
    assert sum(1 for n in names if n.endswith("time_embed")) == 1
    # adaLN-Zero: modulation and output start at zero, so the fresh model outputs zeros
    for name, p in model.named_parameters():
        if "adaln_modulation" in name or "out_modulation" in name or "proj_out" in name:
            assert not p.any(), name
    x = torch.randn(2, 1, 48, 64)  # not square
    out = model(x, x, torch.rand_like(x), torch.tensor([3, 900]))
    assert out.shape == (2, 1, 48, 64) and not out.any()
    with pytest.raises(InputError, match="multiples"):
        model(x[..., :30], x[..., :30], x[..., :30], torch.tensor([1, 1]))


def test_save_pretrained_round_trip(tmp_path: Path) -> None:
    model = _perturbed(SynthDiT.new(TINY, generator=torch.Generator().manual_seed(1)))
    model.save_pretrained(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {
        "config.json", "diffusion_pytorch_model.safetensors"}
    loaded = SynthDiT.load(tmp_path / "m")
    assert loaded.settings == TINY
    for (ka, a), (kb, b) in zip(model.state_dict().items(), loaded.state_dict().items(),
                                strict=True):
        assert ka == kb and torch.equal(a, b)
    x = torch.rand(1, 1, 32, 32)
    assert torch.equal(model.eval()(x, x, x, torch.tensor([5])), loaded(x, x, x, torch.tensor([5])))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"kind": "ddpm-lq"}')
    with pytest.raises(ModelError, match="synth-dit"):
        SynthDiT.load(tmp_path / "bad")


def _perturbed(model: SynthDiT) -> SynthDiT:
    """The model with every parameter nudged (so zero-initialised layers do something)."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def test_loss_falls_and_beats_mean_fill(trained: tuple[SynthDiT, dict, list[float]]) -> None:
    _check_learned(*trained[1:])


def test_a_v_predicting_model_learns_too(tmp_path: Path) -> None:
    from dataclasses import replace

    model, metrics, losses = _train_tiny(replace(TINY, prediction="v"), tmp_path)
    _check_learned(metrics, losses)
    patches, masks = _patches(2, True)
    out = inpaint_patches(model, patches, masks, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[masks <= 0.02], patches[masks <= 0.02])


def _check_learned(metrics: dict, losses: list[float]) -> None:
    assert np.mean(losses[-20:]) < 0.2 * np.mean(losses[:5])
    # held-out patches: the one-step estimate beats filling the mask with its surroundings' mean
    assert metrics["mse_1step"] < metrics["mse_mean_fill"]
    assert metrics["mse_sampled"] < metrics["mse_mean_fill"]


def _patches(count: int, soft: bool, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    images = smooth_images(count, 32, seed)
    rng = np.random.default_rng(seed)
    masks = [random_nodule_mask((32, 32), (6, 14), rng, soft=soft) for _ in range(count)]
    return (torch.from_numpy(np.stack(images))[:, None],
            torch.from_numpy(np.stack(masks))[:, None])


@pytest.mark.parametrize("soft", [False, True])
def test_inpainting_keeps_outside_changes_inside_and_is_seeded(
        trained: tuple[SynthDiT, dict, list[float]], soft: bool) -> None:
    model, _, _ = trained
    patches, masks = _patches(4, soft)
    if soft:
        assert ((masks > 0) & (masks < 1)).any()
    else:
        assert set(masks.unique().tolist()) == {0.0, 1.0}
    outs = [inpaint_patches(model, patches, masks, generator=torch.Generator().manual_seed(s))
            for s in (0, 0, 1)]
    inside = masks > 0.02
    assert torch.equal(outs[0][~inside], patches[~inside])  # bit for bit outside
    assert not torch.equal(outs[0][inside], patches[inside])  # painted inside
    assert torch.equal(outs[0], outs[1])  # same seed, same output
    assert not torch.equal(outs[0], outs[2])
    assert outs[0].min() >= 0 and outs[0].max() <= 1
    assert masked_mse(outs[0], patches, masks) < masked_mse(mean_fill(patches, masks), patches,
                                                            masks) * 3


@pytest.mark.parametrize("sampler", ["dpmpp", "ddpm"])
def test_other_samplers(trained: tuple[SynthDiT, dict, list[float]], sampler: str) -> None:
    model, _, _ = trained
    patches, masks = _patches(2, True)
    out = inpaint_patches(model, patches, masks, steps=3, sampler=sampler,
                          generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[masks <= 0.02], patches[masks <= 0.02])
    assert torch.isfinite(out).all()


def test_paint_on_a_radiograph_keeps_every_other_pixel(
        trained: tuple[SynthDiT, dict, list[float]]) -> None:
    model, _, _ = trained
    image = smooth_images(1, 90, 5)[0][:, :70]  # non-square, 0.5 mm pixels: window 64 px
    yy, xx = np.mgrid[0:90, 0:70]
    mask = np.clip(1 - ((yy - 40) ** 2 + (xx - 30) ** 2) / 81.0, 0, 1).astype(np.float32)
    out = paint(model, image, mask, (40, 30), (0.5, 0.5),
                generator=torch.Generator().manual_seed(0))
    assert np.array_equal(out[mask == 0], image[mask == 0])
    assert not np.array_equal(out[mask > 0], image[mask > 0])
    big = np.ones_like(mask)
    with pytest.raises(InputError, match="does not fit"):
        paint(model, image, big, (40, 30), (0.5, 0.5), generator=torch.Generator())


class _LowRank(nn.Module):
    """A hand-made LoRA: ``base(x) + B(A(x))`` with ``B`` zero at first."""

    def __init__(self, base: nn.Linear, rank: int = 2) -> None:
        super().__init__()
        self.base = base
        self.A = nn.Linear(base.in_features, rank, bias=False)
        self.B = nn.Linear(rank, base.out_features, bias=False)
        nn.init.zeros_(self.B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.B(self.A(x))


def test_adapter_targets_by_name_only_hit_the_attention_and_mlp() -> None:
    model = _perturbed(SynthDiT.new(TINY, generator=torch.Generator().manual_seed(2)))
    hit = [n for n, m in model.named_modules()
           if isinstance(m, nn.Linear) and any(n == t or n.endswith("." + t)
                                               for t in LORA_TARGETS)]
    assert len(hit) == TINY.depth * len(LORA_TARGETS)
    assert not any(k in n for n in hit for k in ("modulation", "time_embed", "proj_out"))
    x = torch.rand(1, 1, 32, 32)
    t = torch.tensor([400])
    before = model(x, x, x, t)
    for name in [n for n in hit if n.endswith("to_q")]:
        parent, _, child = name.rpartition(".")
        module = model.get_submodule(parent)
        setattr(module, child, _LowRank(getattr(module, child)))
    assert torch.equal(model(x, x, x, t), before)  # B = 0: unchanged
    with torch.no_grad():
        model.blocks[0].attn1.to_q.B.weight.normal_()
    assert not torch.allclose(model(x, x, x, t), before)


def test_peft_lora_on_to_q() -> None:
    peft = pytest.importorskip("peft")
    model = _perturbed(SynthDiT.new(TINY, generator=torch.Generator().manual_seed(2)))
    x = torch.rand(1, 1, 32, 32)
    t = torch.tensor([400])
    before = model(x, x, x, t)
    model.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, target_modules=["to_q"]), "calc")
    wrapped = [n for n, m in model.named_modules() if hasattr(m, "lora_A")]
    assert len(wrapped) == TINY.depth and all(n.endswith("attn1.to_q") for n in wrapped)
    assert torch.equal(model(x, x, x, t), before)  # peft starts B at zero
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    assert not torch.allclose(model(x, x, x, t), before)


def test_settings_are_checked() -> None:
    with pytest.raises(InputError, match="multiple"):
        SynthDiTSettings(patch_px=30, patch_size=4)
    with pytest.raises(InputError, match="heads"):
        SynthDiTSettings(hidden_size=64, num_heads=3)
    assert SynthDiT(**asdict(TINY)).settings == TINY


def test_random_masks_are_nodule_like() -> None:
    rng = np.random.default_rng(0)
    for soft in (False, True):
        for _ in range(20):
            mask = random_nodule_mask((64, 64), (4, 40), rng, soft=soft)
            assert mask.shape == (64, 64) and mask.min() >= 0 and mask.max() == 1
            assert (mask > 0).sum() >= 1
            assert not (mask[0].any() and mask[-1].any() and mask[:, 0].any()
                        and mask[:, -1].any())
    data = RadiographPatches(smooth_images(2, 80, 0), 32, 1.0)
    sample = data.sample(np.random.default_rng(1))
    assert sample["patch"].shape == sample["mask"].shape == (1, 32, 32)
    assert torch.isnan(sample["attributes"]).all()


def test_timestep_weightings() -> None:
    from cxrkit.diffusion import train_alphas_cumprod
    from cxrkit.synthdit.training import V_WEIGHT_CAP, timestep_weights

    alphas = train_alphas_cumprod(TINY.scheduler_config())
    assert torch.equal(timestep_weights(alphas, "x0"), torch.ones_like(alphas))
    v = timestep_weights(alphas, "v")
    assert v.mean().item() == pytest.approx(1, rel=1e-5)
    assert bool((v[1:] <= v[:-1]).all())  # low noise weighs most
    assert v[0] / v[-1] > 50 and v.max() / v.min() <= V_WEIGHT_CAP
    with pytest.raises(InputError, match="weighting"):
        timestep_weights(alphas, "eps")
    model = _perturbed(SynthDiT.new(TINY, generator=torch.Generator().manual_seed(4)))
    patches, masks = _patches(2, False)
    batch = {"patch": patches, "mask": masks}

    def loss(weighting: str) -> float:
        gens = [torch.Generator().manual_seed(i) for i in range(2)]
        return float(synth_loss(model, batch, gens, weighting=weighting))

    assert loss("x0") == float(synth_loss(model, batch, [torch.Generator().manual_seed(i)
                                                         for i in range(2)]))
    assert loss("v") != loss("x0")


def test_v_prediction_returns_x0_through_the_skip() -> None:
    from dataclasses import replace

    from cxrkit.diffusion import train_alphas_cumprod

    settings = replace(TINY, prediction="v")
    model = _perturbed(SynthDiT.new(settings, generator=torch.Generator().manual_seed(5)))
    fresh = SynthDiT.new(settings, generator=torch.Generator().manual_seed(5)).eval()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    ctx, mask = torch.zeros_like(x), torch.ones_like(x)
    t = torch.tensor([0, 999])
    # a fresh network predicts v = 0: the model returns sqrt(alpha_bar) x_t, x_t at t = 0
    alphas = train_alphas_cumprod(settings.scheduler_config())
    out = fresh(x, ctx, mask, t)
    assert torch.allclose(out[0], alphas[0].sqrt() * x[0]) and out[1].abs().max() < 0.05
    # x0 = sqrt(a) x_t - sqrt(1 - a) v for a trained-looking network too
    plain = SynthDiT.new(TINY, generator=torch.Generator().manual_seed(5))
    plain.load_state_dict(model.state_dict())
    v = plain.eval()(x, ctx, mask, t)
    a = alphas[t].view(2, 1, 1, 1)
    assert torch.allclose(model(x, ctx, mask, t), a.sqrt() * x - (1 - a).sqrt() * v, atol=1e-6)
    with pytest.raises(InputError, match="prediction"):
        SynthDiTSettings(prediction="eps")
