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
