"""Characteristic adapters on the synthesis DiT (cxrkit.synthdit.adapters, .lora_training,
``synth -e diffusion --adapter``): peft LoRA on the allowed linears, exact per-adapter scales,
training that beats the base on held-out patches with the backbone untouched, joint training
with the orthogonality penalty, files bound to their backbone, runtime compositions, ZipLoRA,
and synth records that list the adapters."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrkit.errors import InputError, ModelError
from cxrkit.synthdit import SynthDiT, SynthDiTSettings
from cxrkit.synthdit.adapters import (
    Composition,
    add_trainable,
    alpha_map,
    attach,
    backbone_sha256,
    lora_modules,
    parse_adapter_spec,
    resolve_adapter,
)
from cxrkit.synthdit.data import NodulePatch
from cxrkit.synthdit.lora_training import (
    CHARACTERISTICS,
    LabelledPatch,
    characteristic,
    init_seed,
    train_adapters,
    train_ziplora,
)
from cxrkit.synthdit.training import HeldOut
from cxrkit.train import TrainConfig

torch.set_num_threads(1)
TINY = SynthDiTSettings(patch_px=16, pixel_mm=1.0, patch_size=4, hidden_size=32, depth=2,
                        num_heads=2, default_steps=3)


def _model(seed: int = 0) -> SynthDiT:
    """A tiny model with every parameter nudged (zero-initialised layers would hide adapters)."""
    model = SynthDiT.new(TINY, generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dit") / "dit"
    _model().save_pretrained(folder)
    return folder


def _disc(rng: np.random.Generator, radius: float) -> tuple[np.ndarray, tuple[float, float]]:
    yy, xx = np.mgrid[0:16, 0:16]
    cy, cx = 7.5 + rng.uniform(-1.5, 1.5, 2)
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2).astype(np.float32), (cy, cx)


def _patches(count: int, seed: int) -> list[LabelledPatch]:
    """Windows of two kinds: calcified (a bright, flat disc) and irregular (a dark striped one),
    backgrounds smooth, ten patients."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:16, 0:16] / 16.0
    out = []
    for i in range(count):
        calcified = i % 2 == 0
        mask, _ = _disc(rng, rng.uniform(3, 5))
        background = 0.35 + 0.1 * np.sin(3 * xx + rng.uniform(0, 6)) * np.cos(2 * yy)
        inside = 0.95 if calcified else 0.2 + 0.15 * np.sin(6 * xx * np.pi)
        patch = np.where(mask > 0, inside, background).astype(np.float32)
        labels = {"calcified": int(calcified), "border_irregular": int(not calcified),
                  "inhomogeneous": int(not calcified), "subtlety": float(1 + i % 5)}
        out.append(LabelledPatch(NodulePatch(patch, mask, labels, f"{i // 4:05d}", f"r{i}"),
                                 "parametric" if i % 3 else "luna16", "blend"))
    return out


def _config(out: Path, steps: int, **extra: object) -> TrainConfig:
    settings = {"batch_size": 8, "lr": 5e-3, "warmup_steps": 2, "ema_decay": 0.0,
                "checkpoint_every": 0, "validate_every": 0, "device": "cpu", "log_every": 1}
    return TrainConfig(output_dir=str(out), steps=steps, **{**settings, **extra})  # type: ignore


def _x(seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 1, 16, 16, generator=gen)
    return x, x, (x > 0.5).float(), torch.tensor([300, 700])


def test_lora_on_to_q_changes_the_output_and_a_zero_b_does_not() -> None:
    model = _model()
    before = model(*_x())
    add_trainable(model, "calcified", rank=4, alpha=4, targets=["to_q"], seed=0)
    assert sorted(lora_modules(model)) == [f"blocks.{i}.attn1.to_q" for i in range(TINY.depth)]
    assert torch.equal(model(*_x()), before)  # B starts at zero
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)  # the backbone is frozen
    with torch.no_grad():
        for module in lora_modules(model).values():
            module.lora_B["calcified"].weight.normal_()
    assert not torch.allclose(model(*_x()), before)
    with pytest.raises(InputError, match="targets"):
        add_trainable(model, "x", rank=4, alpha=4, targets=["adaln_modulation"], seed=0)


def test_each_characteristic_starts_from_its_own_a() -> None:
    """Adapters trained in separate runs must not share A at the start (a shared A makes their
    deltas overlap by construction); the same name and seed start alike."""
    seeds = {name: init_seed(0, name) for name in CHARACTERISTICS}
    assert len(set(seeds.values())) == len(seeds)
    assert init_seed(0, "calcified") == seeds["calcified"] != init_seed(1, "calcified")

    def a_of(name: str) -> torch.Tensor:
        model = _model()
        add_trainable(model, name, rank=4, alpha=4, targets=["to_q"], seed=init_seed(0, name))
        return next(iter(lora_modules(model).values())).lora_A[name].weight.detach()

    assert torch.equal(a_of("calcified"), a_of("calcified"))
    assert not torch.allclose(a_of("calcified"), a_of("border_irregular"))


def _random_adapter(model: SynthDiT, rank: int, scale: float, seed: int) -> object:
    from cxrkit.lora.files import Adapter, LoraLayer

    gen = torch.Generator().manual_seed(seed)
    layers = {}
    for name, module in model.named_modules():
        if name.endswith(("attn1.to_q", "attn1.to_v", "ff.net.2")):
            d_out, d_in = module.weight.shape
            layers[name] = LoraLayer(torch.randn(rank, d_in, generator=gen) * 0.1,
                                     torch.randn(d_out, rank, generator=gen) * 0.1, scale)
    return Adapter(layers, {"r": rank, "lora_alpha": scale * rank},
                   {"characteristic": "calcified"})


def test_per_adapter_scales_are_exact() -> None:
    model = _model()
    first, second = _random_adapter(model, 4, 0.5, 1), _random_adapter(model, 8, 2.0, 2)
    s1, s2 = 0.7, -1.3
    reference = _model()
    with torch.no_grad():
        modules = dict(reference.named_modules())
        for key in first.layers:  # type: ignore[attr-defined]
            x, y = first.layers[key], second.layers[key]  # type: ignore[attr-defined]
            modules[key].weight += s1 * x.scale * x.b @ x.a + s2 * y.scale * y.b @ y.a
    attach(model, [("a", first, s1), ("b", second, s2)])
    torch.testing.assert_close(model(*_x()), reference(*_x()), atol=1e-5, rtol=1e-5)
    switch = Composition(model, {"a": s1, "b": s2}, "switch")
    switch.on_step(1, 4)  # only b
    only_b = _model()
    with torch.no_grad():
        modules = dict(only_b.named_modules())
        for key, y in second.layers.items():  # type: ignore[attr-defined]
            modules[key].weight += s2 * y.scale * y.b @ y.a
    torch.testing.assert_close(model(*_x()), only_b(*_x()), atol=1e-5, rtol=1e-5)
    klora = Composition(model, {"a": s1, "b": s2}, "klora")
    early, late = klora.klora_choice(0.0), klora.klora_choice(1.0)
    assert set(early) == set(first.layers)  # type: ignore[attr-defined]
    # the second adapter's threshold only rises: whatever a picks late it picked early
    assert all(early[k] == "a" for k, v in late.items() if v == "a")
    with pytest.raises(InputError, match="exactly two"):
        Composition(model, {"a": 1.0}, "klora")


def test_one_adapter_learns_its_characteristic_and_leaves_the_backbone(
        model_dir: Path, tmp_path: Path) -> None:
    from cxrkit.lora.files import load_adapter

    backbone = {k: v.clone() for k, v in SynthDiT.load(model_dir).state_dict().items()}
    result = train_adapters(model_dir, _patches(40, 0), ["calcified"], _config(tmp_path, 60),
                            rank=4, alpha=4, held_out=HeldOut(fraction=0.2, samples=8))
    losses = result.losses
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    m = result.metrics
    assert m["calcified/loss"] < 0.8 * m["calcified/loss_base"]  # held-out patients
    assert m["calcified/mse_1step"] < m["calcified/mse_1step_base"]
    state = result.model.state_dict()
    for key, value in backbone.items():  # bit for bit (peft keeps it as base_layer)
        live = state.get(key, state.get(key.replace(".weight", ".base_layer.weight").replace(
            ".bias", ".base_layer.bias")))
        assert live is not None and torch.equal(live, value), key
    run = json.loads((tmp_path / "run.json").read_text())
    info = run["data"]["adapters"]["calcified"]
    assert info["train"] + info["validation"] == 20 and "parametric/blend" in \
        info["train_by_source"]
    assert run["trainable_parameters"] == sum(
        p.numel() for n, p in result.model.named_parameters() if ".lora_" in n)
    sha = backbone_sha256(model_dir)
    adapter = load_adapter(tmp_path / "calcified.safetensors", backbone_sha256=sha)
    assert adapter.meta["characteristic"] == "calcified"
    assert adapter.meta["polarity"] == "calcified==1" and adapter.meta["backbone_sha256"] == sha
    assert adapter.meta["validation"]["loss"] == pytest.approx(m["calcified/loss"])
    other = tmp_path / "other"
    _model(seed=5).save_pretrained(other)
    with pytest.raises(ModelError):
        load_adapter(tmp_path / "calcified.safetensors", backbone_sha256=backbone_sha256(other))


def test_joint_training_with_the_penalty_is_more_orthogonal(model_dir: Path,
                                                             tmp_path: Path) -> None:
    penalties = []
    for weight in (0.0, 0.01):  # 8 layers: the summed penalty is in [0, 8]
        out = tmp_path / f"w{weight}"
        train_adapters(model_dir, _patches(40, 1), ["calcified", "border_irregular"],
                       _config(out, 30), rank=4, alpha=4, ortho_weight=weight,
                       held_out=HeldOut(fraction=0.2, samples=4))
        run = json.loads((out / "run.json").read_text())
        assert sorted(run["adapters"]) == ["border_irregular", "calcified"]
        assert (out / "border_irregular.safetensors").is_file()
        penalties.append(run["orth_penalty_final"])
        for name in ("calcified", "border_irregular"):  # both still learn their trait
            v = run["validation"]
            assert v[f"{name}/loss"] < 0.9 * v[f"{name}/loss_base"]
    assert penalties[1] < 0.3 * penalties[0]  # measured 3.6 → 0.38


def test_the_subtlety_slider_trains_at_alpha_of_s(model_dir: Path, tmp_path: Path) -> None:
    from cxrkit.synthdit.lora_training import AdapterPatches

    chars = [characteristic("subtlety")]
    patches = _patches(10, 2)
    data = AdapterPatches(chars, [patches], lambda s: alpha_map("22+s")(s) / 8)
    for i in range(10):
        sample = data.sample(np.random.default_rng(i))
        assert float(sample["weights"][0]) in {(22 + s) / 8 for s in range(1, 6)}
    assert alpha_map("4*(s-3)")(1) == -8 and alpha_map("22+s")(5) == 27
    with pytest.raises(InputError):
        alpha_map("__import__('os')")
    from cxrkit.synthdit.lora_training import traits

    merged = {"characteristic": "calcified+texture_homogeneous", "sources": [
        {"characteristic": "calcified", "weight": 1.0},
        {"characteristic": "texture_homogeneous", "weight": 0.5}]}
    assert traits(merged) == [("calcified", 1), ("inhomogeneous", 0)]
    assert traits({"characteristic": "subtlety"}) == []
    assert CHARACTERISTICS["border_regular"].matches({"border_irregular": 0})
    assert not CHARACTERISTICS["border_regular"].matches({"border_irregular": None})


def test_ziplora_mergers_reproduce_both_adapters_exactly_as_a_cat_adapter() -> None:
    model = _model()
    first, second = _random_adapter(model, 4, 1.0, 3), _random_adapter(model, 4, 1.0, 4)
    patches = [p.patch for p in _patches(8, 3)]
    merged, summary = train_ziplora(model, first, second, (patches[::2], patches[1::2]),
                                    steps=15, batch_size=4, lr=0.05)
    assert summary["loss_last"] < summary["loss_first"]
    assert summary["mean_abs_cos_after"] <= summary["mean_abs_cos_before"]
    for key, layer in merged.layers.items():  # exactly [s1 A1 diag(m1); s2 A2 diag(m2)], [B1 B2]
        x, y = first.layers[key], second.layers[key]  # type: ignore[attr-defined]
        assert layer.a.shape[0] == 8 and layer.scale == 1.0
        assert torch.equal(layer.b, torch.cat([x.b, y.b], dim=1))
        for part, src in ((layer.a[:4], x), (layer.a[4:], y)):
            m = part / (src.scale * src.a)  # one merger value per column
            torch.testing.assert_close(m, m[:1].expand_as(m), atol=1e-5, rtol=1e-5)
    # m = 1 would be the plain sum: the learnt mergers moved away from it
    key = next(iter(merged.layers))
    x, y = first.layers[key], second.layers[key]  # type: ignore[attr-defined]
    plain = x.b @ x.a + y.b @ y.a
    assert not torch.allclose(merged.layers[key].b @ merged.layers[key].a, plain)


def test_adapter_specs_and_the_shipped_name_resolver(tmp_path: Path) -> None:
    assert parse_adapter_spec("a/b.safetensors:0.8") == ("a/b.safetensors", 0.8)
    assert parse_adapter_spec("calcified") == ("calcified", 1.0)
    with pytest.raises(InputError, match="no adapter file 'nonesuch'"):
        resolve_adapter("nonesuch")
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"")
    assert resolve_adapter(str(path)) == path


def test_characteristic_names_match_the_cli() -> None:
    from cxrkit.cli.train_lora import CHARACTERISTIC_NAMES

    assert tuple(CHARACTERISTICS) == CHARACTERISTIC_NAMES
    assert asdict(CHARACTERISTICS["calcified"]) == {"name": "calcified", "label": "calcified",
                                                    "value": 1}


def test_synth_with_adapters_is_seeded_and_records_them(model_dir: Path, tmp_path: Path
                                                        ) -> None:
    from typer.testing import CliRunner

    from cxrkit.cli import app
    from cxrkit.files import file_sha256
    from cxrkit.io import Radiograph, read_radiograph, write_radiograph
    from cxrkit.lora.files import save_adapter

    base = _model()
    sha = backbone_sha256(model_dir)
    files = []
    for i, (name, label, value) in enumerate((("calcified", "calcified", 1),
                                              ("border_irregular", "border_irregular", 1))):
        adapter = _random_adapter(base, 4, 1.0, 10 + i)
        adapter.meta = {"characteristic": name, "polarity": f"{label}=={value}",  # type: ignore
                        "label": label, "value": value, "backbone_sha256": sha}
        files.append(tmp_path / f"{name}.safetensors")
        save_adapter(files[-1], adapter)
    yy, xx = np.mgrid[0:96, 0:96] / 96.0
    lungs = ((xx - 0.3) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 <= 1
    cxr = tmp_path / "cxr.png"
    write_radiograph(cxr, Radiograph(np.where(lungs, 0.3, 0.7).astype(np.float32), (1.0, 1.0),
                                     "display"))
    runner = CliRunner()

    def run(*extra: str, out: str) -> tuple[int, list[dict], str]:
        result = runner.invoke(app, ["synth", "-e", "diffusion", str(cxr), "--model",
                                     str(model_dir), "--diameter-mm", "6:8", "--shape", "sphere",
                                     "--texture", "solid", "--steps", "2", "--seed", "3",
                                     "-o", str(tmp_path / out), *extra])
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        lines = [json.loads(x) for x in result.stdout.splitlines() if x.strip()]
        return result.exit_code, lines, result.stderr

    adapters = ("--adapter", str(files[0]), "--adapter", f"{files[1]}:0.5")
    code, recs, err = run(*adapters, out="a")
    assert code == 0, err
    _, again, _ = run(*adapters, out="b")
    _, plain, _ = run(out="c")
    image = read_radiograph(recs[0]["path"]).pixels
    assert np.array_equal(image, read_radiograph(again[0]["path"]).pixels)  # seeded
    assert not np.array_equal(image, read_radiograph(plain[0]["path"]).pixels)  # steered
    options = recs[0]["synth"]["options"]
    assert [a["sha256"] for a in options["adapters"]] == [file_sha256(f) for f in files]
    assert [a["weight"] for a in options["adapters"]] == [1.0, 0.5]
    assert options["compose"] == {"method": "sum"}
    labels = recs[0]["nodule"]["characteristics"]
    assert labels["calcified"] == 1 and labels["border_irregular"] == 1  # asked, not sphere's
    code, recs, err = run(*adapters, "--compose", "klora", out="d")
    assert code == 0 and recs[0]["synth"]["options"]["compose"]["method"] == "klora"
    slider = _random_adapter(base, 4, 1.0, 12)
    slider.meta = {"characteristic": "subtlety", "polarity": "subtlety in 1..5",  # type: ignore
                   "label": "subtlety", "value": None, "slider": True, "alpha_train": 8.0,
                   "alpha_map": "22+s", "backbone_sha256": sha}
    save_adapter(tmp_path / "subtlety.safetensors", slider)
    code, _, err = run("--adapter", str(tmp_path / "subtlety.safetensors"), out="g")
    assert code == 2 and "--subtlety" in err  # a slider needs the sample's subtlety
    for s in (2, 5):
        code, recs, err = run("--adapter", str(tmp_path / "subtlety.safetensors"),
                              "--subtlety", str(s), out=f"s{s}")
        assert code == 0, err
        entry = recs[0]["synth"]["options"]["adapters"][0]
        assert entry["scale"] == pytest.approx((22 + s) / 8) and entry["subtlety"] == s
        assert recs[0]["nodule"]["characteristics"]["subtlety"] == s
    code, _, err = run("--adapter", "no_such_adapter", out="e")
    assert code == 2 and "shipped" in err
    other = tmp_path / "other"
    _model(seed=9).save_pretrained(other)
    result = runner.invoke(app, ["synth", "-e", "diffusion", str(cxr), "--model", str(other),
                                 "--adapter", str(files[0]), "-o", str(tmp_path / "f")])
    assert result.exit_code == 1


def test_checkpoints_and_ema_hold_only_the_adapter_and_resume(model_dir: Path,
                                                              tmp_path: Path) -> None:
    from safetensors import safe_open

    patches = _patches(20, 4)
    whole = train_adapters(model_dir, patches, ["calcified"],
                           _config(tmp_path / "a", 4, ema_decay=0.9), rank=2, alpha=2,
                           held_out=HeldOut(fraction=0.2, samples=2))
    train_adapters(model_dir, patches, ["calcified"],
                   _config(tmp_path / "b", 4, ema_decay=0.9, checkpoint_every=2,
                           stop_at_step=2), rank=2, alpha=2,
                   held_out=HeldOut(fraction=0.2, samples=2))
    ckpt = tmp_path / "b" / "checkpoints" / "checkpoint-2"
    for name in ("model.safetensors", "ema.safetensors"):
        with safe_open(str(ckpt / name), "pt") as f:
            keys = [k for k in f.keys() if k != "__updates__"]  # noqa: SIM118
        assert keys and all(".lora_" in k for k in keys), name  # no backbone copy
    resumed = train_adapters(model_dir, patches, ["calcified"],
                             _config(tmp_path / "b", 4, ema_decay=0.9, checkpoint_every=2,
                                     resume="latest"), rank=2, alpha=2,
                             held_out=HeldOut(fraction=0.2, samples=2))
    np.testing.assert_allclose(resumed.losses, whole.losses[2:], rtol=1e-5)
    for (name, a), (_, b) in zip(whole.model.named_parameters(),
                                 resumed.model.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


def test_train_lora_command_on_synth_records(model_dir: Path, tmp_path: Path) -> None:
    """Parametric blend records → one adapter per trait, then a ZipLoRA merge of two."""
    from typer.testing import CliRunner

    from cxrkit.cli import app
    from cxrkit.io import Radiograph, write_radiograph

    runner = CliRunner()
    yy, xx = np.mgrid[0:96, 0:96] / 96.0
    lungs = (((xx - 0.3) / 0.16) ** 2 + ((yy - 0.5) / 0.32) ** 2 <= 1) | (
        ((xx - 0.7) / 0.16) ** 2 + ((yy - 0.5) / 0.32) ** 2 <= 1)
    for i in range(2):
        write_radiograph(tmp_path / "cxr" / f"0000{i}_000.png", Radiograph(
            np.where(lungs, 0.3, 0.7).astype(np.float32) + 0.02 * i, (1.0, 1.0), "display"))
    made = runner.invoke(app, ["synth", "-e", "blend", str(tmp_path / "cxr"), "--diameter-mm",
                               "5:8", "--shape", "sphere,spiculated", "--calcification", "all",
                               "--spicule-length-mm", "1:2", "-n", "6", "-o",
                               str(tmp_path / "blend")])
    assert made.exit_code == 0, made.stderr
    (tmp_path / "r.jsonl").write_text(made.stdout)
    out = tmp_path / "adapters"
    records = [json.loads(x) for x in made.stdout.splitlines() if x.strip()]
    # the file twice: records of two runs share ids, each window keeps its own record's source
    (tmp_path / "s.jsonl").write_text("".join(
        json.dumps({**r, "nodule": {**r["nodule"], "source": {"kind": "other"}}}) + "\n"
        for r in records))
    args = ["train-lora", "--model", str(model_dir), "--records", str(tmp_path / "r.jsonl"),
            "--records", str(tmp_path / "s.jsonl"),
            "--rank", "2", "--alpha", "2", "--steps", "3", "--batch-size", "4",
            "--warmup-steps", "1", "--val-samples", "2", "--device", "cpu"]
    result = runner.invoke(app, [*args, "-c", "calcified", "-c", "border_irregular",
                                 "--ortho-weight", "0.1", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["command"].startswith("cxrkit train-lora --model ")  # this call's, not pytest's
    assert run["joint"] and run["ortho_weight"] == 0.1
    counts = run["data"]["adapters"]["calcified"]
    assert counts["train"] + counts["validation"] >= 1
    assert set(counts["train_by_source"]) <= {"parametric/blend", "other/blend"}
    assert run["data"]["by_source"] == {"other/blend": 12, "parametric/blend": 12}
    assert run["data"]["images_sha256"]
    files = [str(out / "calcified.safetensors"), str(out / "border_irregular.safetensors")]
    merged = runner.invoke(app, [*args, "--ziplora", files[0], "--ziplora", files[1],
                                 "-o", str(tmp_path / "zip")])
    assert merged.exit_code == 0, merged.stderr
    from cxrkit.lora.files import load_adapter

    zipped = load_adapter(tmp_path / "zip" / "calcified+border_irregular.safetensors",
                          backbone_sha256=backbone_sha256(model_dir))
    assert zipped.meta["merge"] == "ziplora" and len(zipped.meta["sources"]) == 2
    bad = runner.invoke(app, [*args, "-c", "spiky", "-o", str(tmp_path / "x")])
    assert bad.exit_code == 2


def test_an_adapter_with_a_rank_per_layer_loads_exactly() -> None:
    """Merged files (merge-lora svd, cat) may have another rank in each layer."""
    from cxrkit.lora.files import Adapter, LoraLayer

    model, reference = _model(), _model()
    gen = torch.Generator().manual_seed(0)
    modules = dict(reference.named_modules())
    layers = {}
    for key, rank in (("blocks.0.attn1.to_q", 4), ("blocks.1.attn1.to_q", 8),
                      ("blocks.1.ff.net.2", 3)):
        weight = modules[key].weight
        a = 0.1 * torch.randn(rank, weight.shape[1], generator=gen)
        b = 0.1 * torch.randn(weight.shape[0], rank, generator=gen)
        layers[key] = LoraLayer(a, b, 1.0)
        with torch.no_grad():
            weight += 0.5 * b @ a
    attach(model, [("x", Adapter(layers, {}, {}), 0.5)])
    torch.testing.assert_close(model(*_x()), reference(*_x()), atol=1e-5, rtol=1e-5)
    with pytest.raises(ModelError, match="does not allow"):
        attach(_model(), [("y", Adapter({"blocks.0.adaln_modulation": layers[
            "blocks.0.attn1.to_q"]}, {}, {}), 1.0)])
