"""cxrkit.lora: adapter files (peft's scaling, the diffusers layout, validation), the exact r×r
algebra, merges and the interference report, on tiny tensors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from cxrkit.errors import ModelError, OutputError  # noqa: E402
from cxrkit.lora import algebra  # noqa: E402
from cxrkit.lora.files import (  # noqa: E402
    Adapter,
    LoraLayer,
    adapter_scale,
    from_state_dict,
    load_adapter,
    read_header,
    save_adapter,
    unit_scale_config,
)


class Tiny(torch.nn.Module):
    """Two blocks with diffusers-style names: attn1.to_q (6→5) and ff.net.2 (5→7)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.transformer_blocks = torch.nn.ModuleList(
            torch.nn.ModuleDict({"attn1": torch.nn.ModuleDict({"to_q": torch.nn.Linear(6, 5)}),
                                 "ff": torch.nn.ModuleDict({"net": torch.nn.Sequential(
                                     torch.nn.Identity(), torch.nn.Identity(),
                                     torch.nn.Linear(5, 7))})})
            for _ in range(2))

    def forward(self, x):  # pragma: no cover - not used
        return x


def _peft_model(**kw):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(target_modules=["to_q", "ff.net.2"], init_lora_weights=False, **kw)
    torch.manual_seed(1)
    return get_peft_model(Tiny(), cfg), cfg


def _base_weights() -> dict[str, torch.Tensor]:
    return {n.removesuffix(".weight"): p.detach().clone() for n, p in Tiny().named_parameters()
            if n.endswith(".weight")}


@pytest.mark.parametrize("kw", [
    {"r": 3, "lora_alpha": 5},
    {"r": 4, "lora_alpha": 7, "use_rslora": True},
    {"r": 3, "lora_alpha": 5, "rank_pattern": {"transformer_blocks.1.ff.net.2": 2},
     "alpha_pattern": {"to_q": 11}},
])
def test_deltas_equal_what_peft_merges_into_the_weights(kw) -> None:
    from peft import get_peft_model_state_dict

    model, cfg = _peft_model(**kw)
    adapter = from_state_dict(get_peft_model_state_dict(model), cfg)
    assert len(adapter.layers) == 4
    base = _base_weights()
    merged = {n.removesuffix(".weight"): p.detach() for n, p in
              model.merge_and_unload().named_parameters() if n.endswith(".weight")}
    for name, layer in adapter.layers.items():
        want = merged[name] - base[name]
        assert torch.allclose(algebra.delta(layer), want, atol=1e-6), name
    if kw.get("rank_pattern"):
        layer = adapter.layers["transformer_blocks.1.ff.net.2"]
        assert layer.rank == 2 and layer.scale == pytest.approx(5 / 2)
        assert adapter.layers["transformer_blocks.0.attn1.to_q"].scale == pytest.approx(11 / 3)


def test_save_writes_the_diffusers_layout_and_peft_loads_it_back(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from peft.utils import set_peft_model_state_dict
    from safetensors import safe_open

    model, cfg = _peft_model(r=4, lora_alpha=6, use_rslora=True)
    adapter = from_state_dict(get_peft_model_state_dict(model), cfg,
                              {"characteristic": "calcified", "backbone_sha256": "ab" * 32})
    path = tmp_path / "calc.safetensors"
    digest = save_adapter(path, adapter)
    assert len(digest) == 64 and adapter.sha256 == digest
    with safe_open(str(path), "pt") as fh:
        keys = set(fh.keys())
        meta = fh.metadata()
    assert "transformer_blocks.0.attn1.to_q.lora_A.weight" in keys
    assert "transformer_blocks.1.ff.net.2.lora_B.weight" in keys
    config = json.loads(meta["lora_adapter_metadata"])
    assert config["use_rslora"] is True and config["r"] == 4
    assert json.loads(meta["cxrkit"])["characteristic"] == "calcified"
    with pytest.raises(OutputError):
        save_adapter(path, adapter)  # exclusive creation
    save_adapter(path, adapter, overwrite=True)

    # what diffusers does with the metadata: LoraConfig(**config), inject, load the state dict
    from safetensors.torch import load_file

    fields = set(LoraConfig.__dataclass_fields__)
    fresh = inject_adapter_in_model(LoraConfig(**{k: v for k, v in config.items()
                                                  if k in fields}), Tiny())
    set_peft_model_state_dict(fresh, load_file(str(path)))
    reloaded = load_adapter(path)
    for name, layer in adapter.layers.items():
        module = fresh.get_submodule(name)
        got = module.scaling["default"] * module.lora_B["default"].weight @ \
            module.lora_A["default"].weight
        assert torch.allclose(got, algebra.delta(layer), atol=1e-6)
        assert torch.equal(reloaded.layers[name].a, layer.a)
        assert reloaded.layers[name].scale == pytest.approx(layer.scale)
    assert reloaded.meta["characteristic"] == "calcified" and reloaded.sha256 == adapter.sha256


def test_load_checks_the_backbone_and_accepts_peft_prefixes(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model, cfg = _peft_model(r=2, lora_alpha=4)
    from peft import get_peft_model_state_dict

    sd = get_peft_model_state_dict(model)
    adapter = from_state_dict(sd, cfg, {"backbone_sha256": "a" * 64})
    path = tmp_path / "a.safetensors"
    save_adapter(path, adapter)
    load_adapter(path, backbone_sha256="a" * 64)
    with pytest.raises(ModelError, match="another backbone"):
        load_adapter(path, backbone_sha256="b" * 64)
    # peft save_pretrained: base_model.model. prefix, config in adapter_config.json beside it
    folder = tmp_path / "peft"
    model.save_pretrained(str(folder))
    loaded = load_adapter(folder / "adapter_model.safetensors")
    assert set(loaded.layers) == set(adapter.layers)
    assert loaded.layers["transformer_blocks.0.attn1.to_q"].scale == pytest.approx(2.0)
    # diffusers' "transformer." prefix, no metadata: scale 1
    bare = tmp_path / "bare.safetensors"
    save_file({"transformer." + k: v.contiguous() for k, v in sd.items()}, str(bare))
    loaded = load_adapter(bare)
    assert set(loaded.layers) == set(adapter.layers)
    assert all(layer.scale == 1.0 for layer in loaded.layers.values())


def _write_raw(path: Path, header: dict, data: bytes = b"") -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


@pytest.mark.parametrize(("header", "data", "match"), [
    ({"m.lora_A.weight": {"dtype": "I64", "shape": [1, 1], "data_offsets": [0, 8]},
      "m.lora_B.weight": {"dtype": "F32", "shape": [1, 1], "data_offsets": [8, 12]}}, 12, "float"),
    ({"m.lora_A.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}, 24,
     "no lora_B"),
    ({"m.lora_A.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
      "m.lora_B.weight": {"dtype": "F32", "shape": [4, 3], "data_offsets": [24, 72]}}, 72,
     "ranks differ"),
    ({"m.lora_A.weight": {"dtype": "F32", "shape": [1 << 20, 1], "data_offsets": [0, 4 << 20]},
      "m.lora_B.weight": {"dtype": "F32", "shape": [1, 1 << 20], "data_offsets": [0, 4]}}, 8,
     "does not match"),
    ({"m.lora_magnitude_vector": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, 4,
     "unexpected"),
])
def test_load_validates_the_header_before_loading(tmp_path: Path, header, data, match) -> None:
    path = tmp_path / "bad.safetensors"
    _write_raw(path, header, b"\0" * data)
    with pytest.raises(ModelError, match=match):
        load_adapter(path)


def test_load_refuses_a_huge_header_and_dora(tmp_path: Path) -> None:
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(ModelError, match="header"):
        read_header(path)
    layer = LoraLayer(torch.ones(1, 2), torch.ones(2, 1), 1.0)
    with pytest.raises(ModelError, match="DoRA"):
        save_adapter(tmp_path / "d.safetensors",
                     Adapter({"m": layer}, {"r": 1, "lora_alpha": 1, "use_dora": True}, {}))
    with pytest.raises(ModelError, match="scale"):  # a scale the config would not give
        save_adapter(tmp_path / "s.safetensors",
                     Adapter({"m": LoraLayer(layer.a, layer.b, 2.0)}, {"r": 1, "lora_alpha": 1},
                             {}))


def test_unit_scale_config_gives_scale_one_for_mixed_ranks() -> None:
    config = unit_scale_config({"a.to_q": 4, "a.to_k": 2, "b.to_k": 4})
    for name, r in {"a.to_q": 4, "a.to_k": 2, "b.to_k": 4}.items():
        assert adapter_scale(config, name, r) == 1.0
    assert config["rank_pattern"] == {"a.to_k": 2}


# ---- algebra -------------------------------------------------------------------------------------

def _layer(r: int, d_in: int = 12, d_out: int = 9, scale: float = 0.7, seed: int = 0,
           dtype=torch.float64) -> LoraLayer:
    g = torch.Generator().manual_seed(seed)
    return LoraLayer(torch.randn(r, d_in, generator=g, dtype=dtype),
                     torch.randn(d_out, r, generator=g, dtype=dtype), scale)


def test_fast_forms_equal_the_direct_products() -> None:
    x, y = _layer(3, seed=1), _layer(5, scale=1.9, seed=2)
    d1, d2 = algebra.delta(x), algebra.delta(y)
    direct = {
        "row": (d1 @ d2.T).pow(2).sum(), "column": (d1.T @ d2).pow(2).sum(),
        "norm": d1.pow(2).sum(), "inner": (d1 * d2).sum(),
    }
    assert algebra.cross_norm2(x, y).item() == pytest.approx(direct["row"].item(), rel=1e-6)
    assert algebra.cross_norm2(x, y, space="column").item() == pytest.approx(
        direct["column"].item(), rel=1e-6)
    assert algebra.norm2(x).item() == pytest.approx(direct["norm"].item(), rel=1e-6)
    assert algebra.inner(x, y).item() == pytest.approx(direct["inner"].item(), rel=1e-6)
    normalised = direct["row"] / (d1.pow(2).sum() * d2.pow(2).sum())
    assert algebra.orth_penalty(x, y).item() == pytest.approx(normalised.item(), rel=1e-6)
    assert 0 < algebra.orth_penalty(x, y).item() <= 1
    # shrinking an adapter cannot lower the normalised penalty
    small = LoraLayer(x.a, x.b * 1e-3, x.scale)
    assert algebra.orth_penalty(small, y).item() == pytest.approx(
        algebra.orth_penalty(x, y).item(), rel=1e-6)
    assert algebra.olora_penalty(x, y, normalise=False).item() == pytest.approx(
        (x.a @ y.a.T).pow(2).sum().item(), rel=1e-9)


def test_penalty_is_zero_for_orthogonal_row_spaces_and_gradients_flow() -> None:
    q, _ = torch.linalg.qr(torch.randn(12, 8, dtype=torch.float64))
    x = LoraLayer(q[:, :4].T.clone(), torch.randn(9, 4, dtype=torch.float64), 1.0)
    y = LoraLayer(q[:, 4:].T.clone() * 3, torch.randn(9, 4, dtype=torch.float64), 2.0)
    assert algebra.orth_penalty(x, y).item() == pytest.approx(0, abs=1e-20)
    assert algebra.olora_penalty(x, y).item() == pytest.approx(0, abs=1e-20)
    # gradients reach every factor of both (live parameters, as the trainer passes them)
    params = [torch.nn.Parameter(t.clone()) for t in (_layer(2, seed=3).a, _layer(2, seed=3).b,
                                                      _layer(3, seed=4).a, _layer(3, seed=4).b)]
    a1, b1, a2, b2 = params
    loss = algebra.adapters_orth_penalty({"m": LoraLayer(a1, b1, 0.5)},
                                         {"m": LoraLayer(a2, b2, 2.0), "other": x})
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    # at B = 0 (peft's initialisation) the penalty is 0 with finite gradients
    zb = torch.nn.Parameter(torch.zeros(9, 2, dtype=torch.float64))
    za = torch.nn.Parameter(torch.randn(2, 12, dtype=torch.float64))
    value = algebra.orth_penalty(LoraLayer(za, zb, 1.0), _layer(3, seed=5))
    value.backward()
    assert value.item() == 0 and torch.isfinite(zb.grad).all()
    with pytest.raises(ModelError, match="no common layer"):
        algebra.adapters_orth_penalty({"a": x}, {"b": y})


# ---- merges --------------------------------------------------------------------------------------

def _adapter(seed: int, ranks: dict[str, int], *, rslora: bool = False, alpha: float = 6.0,
             backbone: str | None = "f" * 64, characteristic: str = "x") -> Adapter:
    """An adapter with random factors on layers of size 9×12 (d_out × d_in)."""
    config = {"r": max(ranks.values()), "lora_alpha": alpha, "use_rslora": rslora,
              "rank_pattern": {n: r for n, r in ranks.items() if r != max(ranks.values())}}
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for name, r in ranks.items():
        a = torch.randn(r, 12, generator=g, dtype=torch.float64)
        b = torch.randn(9, r, generator=g, dtype=torch.float64)
        layers[name] = LoraLayer(a, b, adapter_scale(config, name, r))
    return Adapter(layers, config, {"backbone_sha256": backbone,
                                    "characteristic": characteristic}, sha256=f"{seed:064x}")


def _sources():
    return [_adapter(1, {"blocks.0.to_q": 3, "blocks.0.to_k": 2}),
            _adapter(2, {"blocks.0.to_q": 4, "blocks.1.to_q": 4}, rslora=True, alpha=5.0),
            _adapter(3, {"blocks.0.to_q": 2, "blocks.0.to_k": 2}, alpha=1.0)]


@pytest.mark.parametrize("method", ["linear", "cat"])
def test_exact_merges_equal_the_weighted_sum_of_deltas(method: str) -> None:
    from cxrkit.lora.merge import merge_adapters, relative_error, weighted_sum

    sources, weights = _sources(), [1.0, -0.7, 2.5]
    merged = merge_adapters(sources, weights, method=method)
    assert set(merged.layers) == {"blocks.0.to_q", "blocks.0.to_k", "blocks.1.to_q"}
    for name, layer in merged.layers.items():
        want = sum(w * s.layers[name].scale * s.layers[name].b @ s.layers[name].a
                   for s, w in zip(sources, weights, strict=True) if name in s.layers)
        got = algebra.delta(layer)
        assert layer.scale == 1.0
        assert float((got - want).norm() / want.norm()) <= 1e-6, name
    assert relative_error(merged, weighted_sum(sources, weights)) <= 1e-6
    q = merged.layers["blocks.0.to_q"]
    assert q.rank == (3 + 4 + 2 if method == "cat" else 9)  # linear: capped by d_out = 9
    assert merged.meta["method"] == method and merged.meta["weights"] == weights
    assert [s["sha256"] for s in merged.meta["sources"]] == [s.sha256 for s in sources]
    assert merged.meta["backbone_sha256"] == "f" * 64


def test_svd_is_exact_at_full_rank_and_the_best_approximation_below() -> None:
    from cxrkit.lora.merge import merge_adapters, relative_error, weighted_sum

    sources = _sources()[:2]
    ref = weighted_sum(sources)
    assert relative_error(merge_adapters(sources, method="svd", rank=12), ref) <= 1e-6
    low = merge_adapters(sources, method="svd", rank=2)
    assert all(layer.rank <= 2 for layer in low.layers.values())
    # equals the truncated SVD of the exact sum (Eckart-Young error)
    d = ref["blocks.0.to_q"]
    s = torch.linalg.svdvals(d)
    got = algebra.delta(low.layers["blocks.0.to_q"])
    assert float((got - d).norm()) == pytest.approx(float(s[2:].norm()), rel=1e-6)
    assert merge_adapters(sources, method="svd").meta["options"]["rank"] == 4


def test_pruning_merges_follow_their_definitions() -> None:
    from cxrkit.lora.merge import merge_adapters, weighted_sum

    x, y = _adapter(4, {"m": 3}), _adapter(5, {"m": 3})
    dx, dy = (algebra.delta(a.layers["m"]) for a in (x, y))
    full = 12  # rank ≥ min(9, 12): the SVD keeps the pruned sum exactly

    def top(d, density):
        k = int(density * d.numel())
        keep = torch.zeros(d.numel(), dtype=d.dtype)
        keep[d.abs().reshape(-1).topk(k).indices] = 1
        return d * keep.reshape(d.shape)

    mag = merge_adapters([x, y], [1.0, 0.5], method="magnitude", density=0.3, rank=full)
    want = top(dx, 0.3) + 0.5 * top(dy, 0.3)
    assert torch.allclose(algebra.delta(mag.layers["m"]), want, atol=1e-9)

    ties = merge_adapters([x, y], [1.0, 0.5], method="ties", density=0.5, rank=full)
    tx, ty = top(dx, 0.5), top(dy, 0.5)
    sign = torch.where(tx + ty >= 0, 1.0, -1.0).to(tx.dtype)
    agree = torch.stack([tx.sign() == sign, ty.sign() == sign]).to(tx.dtype)
    want = (agree[0] * tx + agree[1] * 0.5 * ty) / agree.sum(0).clamp(min=1)
    assert torch.allclose(algebra.delta(ties.layers["m"]), want, atol=1e-9)

    a = merge_adapters([x, y], method="dare_linear", density=0.5, seed=3, rank=full)
    b = merge_adapters([x, y], method="dare_linear", density=0.5, seed=3, rank=full)
    c = merge_adapters([x, y], method="dare_linear", density=0.5, seed=4, rank=full)
    da = algebra.delta(a.layers["m"])
    assert torch.equal(da, algebra.delta(b.layers["m"]))  # seeded: repeats exactly
    assert not torch.allclose(da, algebra.delta(c.layers["m"]))
    # each source keeps each entry with probability density, divided by it, then they add up
    from cxrkit.lora.merge import _dare, _layer_seed

    kept = [_dare(d, 0.5, _layer_seed(3, "m", i)) for i, d in enumerate((dx, dy))]
    for d, k in zip((dx, dy), kept, strict=True):
        nonzero = k != 0
        assert 0.3 < float(nonzero.double().mean()) < 0.7
        assert torch.allclose(k[nonzero], d[nonzero] / 0.5)
    assert torch.allclose(da, kept[0] + kept[1], atol=1e-9)
    ref = weighted_sum([x, y])["m"]
    assert float((da - ref).norm() / ref.norm()) > 0.1
    dt = merge_adapters([x, y], method="dare_ties", density=0.9, seed=3, rank=2)
    assert dt.layers["m"].rank == 2 and dt.meta["options"]["seed"] == 3


def test_do_merge_keeps_one_source_and_lowers_the_interference() -> None:
    from cxrkit.lora.merge import _orthogonalise, merge_adapters

    x = _adapter(6, {"m": 3})
    one = merge_adapters([x], [0.5], method="do", rank=3)
    assert torch.allclose(algebra.delta(one.layers["m"]), 0.5 * algebra.delta(x.layers["m"]),
                          atol=1e-9)
    y = _adapter(7, {"m": 3})
    before = float((x.layers["m"].a @ y.layers["m"].a.T).norm()
                   / (x.layers["m"].a.norm() * y.layers["m"].a.norm()))
    ax, ay = _orthogonalise([x.layers["m"].a, y.layers["m"].a], 50, 1.0, 0.1)
    after = float((ax @ ay.T).norm() / (ax.norm() * ay.norm()))
    assert after < 0.8 * before
    merged = merge_adapters([x, y], method="do", rank=4)
    assert merged.meta["options"]["do_steps"] == 50 and merged.layers["m"].rank == 4


def test_merge_refuses_mixed_backbones_and_bad_options() -> None:
    from cxrkit.errors import InputError
    from cxrkit.lora.merge import merge_adapters

    x, y = _adapter(1, {"m": 2}), _adapter(2, {"m": 2}, backbone="e" * 64)
    with pytest.raises(ModelError, match="different backbones"):
        merge_adapters([x, y])
    with pytest.raises(InputError, match="unknown merge method"):
        merge_adapters([x], method="average")
    with pytest.raises(InputError, match="weights"):
        merge_adapters([x], [1.0, 2.0])


def test_a_merged_adapter_saves_and_peft_loads_it_at_scale_one(tmp_path: Path) -> None:
    from cxrkit.lora.merge import merge_adapters

    merged = merge_adapters(_sources(), [1.0, 0.5, 1.0], method="cat")
    merged = Adapter({n: LoraLayer(la.a.float(), la.b.float(), la.scale)
                      for n, la in merged.layers.items()}, merged.config, merged.meta)
    path = tmp_path / "m.safetensors"
    save_adapter(path, merged)
    back = load_adapter(path, backbone_sha256="f" * 64)
    for name, layer in merged.layers.items():
        assert back.layers[name].scale == 1.0
        assert torch.equal(back.layers[name].b, layer.b)
    assert back.meta["method"] == "cat"


# ---- the interference report ---------------------------------------------------------------------

def test_the_report_equals_a_direct_computation() -> None:
    from cxrkit.lora.report import format_table, interference_report

    sources = _sources()
    report = interference_report(sources, ["a", "b", "c"], threshold=0.5)
    rows = {(p.first, p.second, p.layer): p for p in report.pairs}
    assert set(rows) == {("a", "b", "blocks.0.to_q"), ("a", "c", "blocks.0.to_q"),
                         ("a", "c", "blocks.0.to_k"), ("b", "c", "blocks.0.to_q")}
    for (first, second, layer), row in rows.items():
        x = sources["abc".index(first)].layers[layer]
        y = sources["abc".index(second)].layers[layer]
        d1, d2 = algebra.delta(x), algebra.delta(y)
        cross = float((d1 @ d2.T).norm())
        assert row.cross == pytest.approx(cross, rel=1e-6)
        assert row.cross_normalised == pytest.approx(cross / float(d1.norm() * d2.norm()),
                                                     rel=1e-6)
        cos = float((d1 * d2).sum() / (d1.norm() * d2.norm()))
        assert row.cosine == pytest.approx(cos, rel=1e-6, abs=1e-12)
        # overlap: projector traces, tr(P₁P₂) / min(r₁, r₂), P the projector onto A's row space
        p1 = x.a.T @ torch.linalg.pinv(x.a.T)
        p2 = y.a.T @ torch.linalg.pinv(y.a.T)
        assert row.overlap == pytest.approx(float(torch.trace(p1 @ p2)) / min(x.rank, y.rank),
                                            rel=1e-6)
    for stats, source in zip(report.adapters, sources, strict=True):
        deltas = [algebra.delta(la).abs() for la in source.layers.values()]
        n = sum(d.numel() for d in deltas)
        assert stats.sparsity == pytest.approx(sum(int((d < 0.5).sum()) for d in deltas) / n)
        assert stats.sparsity_relative == pytest.approx(
            sum(int((d < 0.5 * d.max()).sum()) for d in deltas) / n)
    summary = report.pair_summary()
    assert [(p["first"], p["second"], p["layers"]) for p in summary] == [
        ("a", "b", 1), ("a", "c", 2), ("b", "c", 1)]
    json.dumps(report.records())
    assert "a × c" in format_table(report)


def test_the_report_plot_and_page_render() -> None:
    pytest.importorskip("matplotlib")
    from cxrkit.lora.report import interference_html, interference_report, plot_interference

    report = interference_report(_sources()[:2])
    assert len(plot_interference(report).axes) == 3
    page = interference_html(report)
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page


# ---- the command line ----------------------------------------------------------------------------

def test_cli_merge_lora_writes_an_exact_merge_and_reports(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cxrkit.cli import app
    from cxrkit.lora.merge import relative_error, weighted_sum

    paths = []
    for i, source in enumerate(_sources()[:2]):
        paths.append(tmp_path / f"s{i}.safetensors")
        save_adapter(paths[-1], source)
    out = tmp_path / "merged.safetensors"
    html_page = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["merge-lora", str(paths[0]), f"{paths[1]}:0.5", "-o",
                                      str(out), "--report", "--report-html", str(html_page)])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.strip().splitlines()[-1])
    entry = record["merge_lora"]
    assert record["path"] == str(out) and entry["options"]["weights"] == [1.0, 0.5]
    assert entry["relative_error"] < 1e-6 and len(entry["inputs"]) == 2
    assert {p["first"] for p in entry["interference"]["pairs"]} == {"s0", "s1"}
    assert "s0 × s1" in result.stderr and html_page.stat().st_size > 1000
    sources = [load_adapter(p) for p in paths]
    merged = load_adapter(out)
    assert relative_error(merged, weighted_sum(sources, [1.0, 0.5])) < 1e-6
    assert merged.meta["sources"][1]["path"] == str(paths[1])
    from tests.test_cli import run_cli

    again = run_cli("merge-lora", str(paths[0]), "-o", str(out))  # the real entry point
    assert again.returncode == 1 and again.stderr.decode().count("\n") == 1
    assert "merge-lora: error: output exists" in again.stderr.decode()
    bad = CliRunner().invoke(app, ["merge-lora", str(paths[0]), "-o", str(out), "-m", "mean"])
    assert bad.exit_code == 2
    bad = CliRunner().invoke(app, ["merge-lora", str(paths[0]), "-r", "4", "-o",
                                   str(tmp_path / "x.safetensors")])
    assert bad.exit_code == 2 and "exact" in bad.output
    evaluated = CliRunner().invoke(app, ["eval", str(paths[0]), str(paths[1]), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    data = json.loads(evaluated.stdout)
    assert [a["name"] for a in data["adapters"]] == ["s0", "s1"] and data["layers"]


def test_peft_loads_a_mixed_rank_merge_and_applies_the_exact_sum(tmp_path: Path) -> None:
    """A merge with different ranks per layer (rank_pattern) loads into peft as written, and
    peft's merged weights are the base plus Σ wᵢΔWᵢ of the peft-trained sources."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    from cxrkit.lora.merge import merge_adapters

    sources = []
    for seed, kw in ((1, {"r": 3, "lora_alpha": 5}), (2, {"r": 2, "lora_alpha": 7,
                                                          "use_rslora": True})):
        torch.manual_seed(seed)
        model, cfg = _peft_model(**kw)
        sources.append(from_state_dict(get_peft_model_state_dict(model), cfg))
    # drop one layer from the second source: that layer's merged rank differs from the others'
    del sources[1].layers["transformer_blocks.1.ff.net.2"]
    merged = merge_adapters(sources, [0.6, -1.5], method="linear")
    ranks = {n: layer.rank for n, layer in merged.layers.items()}
    assert len(set(ranks.values())) > 1
    path = tmp_path / "merged.safetensors"
    save_adapter(path, Adapter({n: LoraLayer(la.a.float(), la.b.float(), la.scale)
                                for n, la in merged.layers.items()}, merged.config, merged.meta))
    config = json.loads(read_header(path)["__metadata__"]["lora_adapter_metadata"])
    fields = set(LoraConfig.__dataclass_fields__)
    fresh = inject_adapter_in_model(LoraConfig(**{k: v for k, v in config.items()
                                                  if k in fields}), Tiny())
    set_peft_model_state_dict(fresh, load_file(str(path)))
    base = _base_weights()
    for name in merged.layers:
        module = fresh.get_submodule(name)
        assert module.scaling["default"] == 1.0 and module.r["default"] == ranks[name]
        got = module.get_delta_weight("default").detach()
        want = sum(w * algebra.delta(s.layers[name]).detach()
                   for s, w in zip(sources, [0.6, -1.5], strict=True) if name in s.layers)
        assert float((got - want).norm() / want.norm()) < 1e-6, name
        assert module.base_layer.weight.shape == base[name].shape


def test_diffusers_round_trip_on_the_synthesis_dit(tmp_path: Path) -> None:
    """What synth does: an adapter saved by diffusers' save_lora_adapter loads here with peft's
    deltas, and a merged file loads back through diffusers' load_lora_adapter at scale 1."""
    pytest.importorskip("diffusers")
    from peft import LoraConfig

    from cxrkit.lora.merge import merge_adapters
    from cxrkit.synthdit.model import LORA_TARGETS, SynthDiT

    def dit() -> SynthDiT:
        torch.manual_seed(0)
        return SynthDiT(patch_px=16, patch_size=4, hidden_size=24, depth=1, num_heads=2)

    model = dit()
    model.add_adapter(LoraConfig(r=2, lora_alpha=3, target_modules=list(LORA_TARGETS),
                                 init_lora_weights=False), adapter_name="calc")
    model.save_lora_adapter(str(tmp_path), adapter_name="calc", weight_name="calc.safetensors")
    adapter = load_adapter(tmp_path / "calc.safetensors")
    assert len(adapter.layers) == 6
    with torch.no_grad():
        for name, layer in adapter.layers.items():
            assert torch.allclose(model.get_submodule(name).get_delta_weight("calc"),
                                  algebra.delta(layer), atol=1e-6), name
        merged = merge_adapters([adapter, adapter], [0.5, 0.25], method="cat")
        save_adapter(tmp_path / "m.safetensors", merged)
        fresh = dit()
        fresh.load_lora_adapter(str(tmp_path / "m.safetensors"), prefix=None, adapter_name="m")
        for name, layer in adapter.layers.items():
            module = fresh.get_submodule(name)
            want = 0.75 * algebra.delta(layer)
            assert module.scaling["m"] == 1.0
            assert float((module.get_delta_weight("m") - want).norm() / want.norm()) < 1e-6
