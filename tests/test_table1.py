"""repro/table1.py without running it: every scale has both DDPM-LQ routes with one budget, the
commands it composes (launcher, records as file arguments), its tables and its refusal to run
as several processes. (The recipe itself needs ../shared/data; run it with --scale tiny.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "repro" / "table1.py"


@pytest.fixture(scope="module")
def table1() -> ModuleType:
    spec = importlib.util.spec_from_file_location("repro_table1", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def calls(table1: ModuleType, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The commands the recipe would run (``run`` replaced by a recorder)."""
    seen: list[dict[str, Any]] = []

    def record(command: list[str], **kwargs: Any) -> str:
        seen.append({"command": command, **kwargs})
        return ""

    monkeypatch.setattr(table1, "run", record)
    return seen


@pytest.mark.parametrize("scale", ["tiny", "small", "full"])
def test_both_ddpm_routes_train_with_one_budget(table1: ModuleType, calls: list[dict[str, Any]],
                                                tmp_path: Path, scale: str) -> None:
    s = table1.SCALES[scale]
    assert {"ddpm", "ddpm-two-stage"} <= set(s.sources)
    launcher = ["accelerate", "launch", "-m"]
    options = table1.train_degraders(tmp_path, s, tmp_path / "hq", tmp_path / "lq.jsonl", 0,
                                     launcher)
    assert options["ddpm-two-stage"] == ["--method", "ddpm", "--model",
                                         str(tmp_path / "models" / "ddpm-two-stage")]
    by_model = {c["command"][c["command"].index("-o") + 1]: c for c in calls}
    img2img = by_model[str(tmp_path / "models" / "ddpm")]["command"]
    two = by_model[str(tmp_path / "models" / "ddpm-two-stage")]["command"]

    def value(command: list[str], option: str) -> int:
        return int(command[command.index(option) + 1])

    assert value(img2img, "--steps") == s.ddpm_steps
    assert value(two, "--steps") + value(two, "--stage2-steps") == s.ddpm_steps
    assert two[two.index("--route") + 1] == "two-stage"
    assert all(c["launcher"] == launcher and c["command"][0] == "cxrkit" for c in calls)


def test_enhancers_read_their_pairs_as_a_file_argument(table1: ModuleType,
                                                       calls: list[dict[str, Any]],
                                                       tmp_path: Path) -> None:
    s = table1.SCALES["tiny"]
    pairs = {(src, "train"): tmp_path / f"{src}.jsonl" for src in s.sources}
    table1.train_enhancers(tmp_path, s, pairs, 0, ["accelerate", "launch", "-m"])
    assert len(calls) == len(s.sources)
    for call, source in zip(calls, s.sources, strict=True):
        assert call["command"][:3] == ["cxrkit", "train-enhance", str(pairs[(source, "train")])]
        assert call.get("stdin") is None  # stdin reaches one process of a launcher only


def test_run_uses_this_python_without_a_launcher(table1: ModuleType) -> None:
    out = table1.run(["cxrkit", "--version"])
    assert out.strip()


def test_table_and_gates_have_a_row_per_source(table1: ModuleType) -> None:
    sources = ("bicubic", "ddpm", "ddpm-two-stage")
    drr = {"cnr_before": 1.0, "cnr_after": 1.2, "noise_sigma_before": 0.01,
           "noise_sigma_after": 0.005, "mean_gradient_before": 0.02,
           "mean_gradient_after": 0.03, "cnr_ratio": 1.2}
    table = {"bicubic-upsampling": {k: {"psnr": 30.0, "ssim": 0.8} for k in sources},
             "enhancers": {s: {**{k: {"psnr": 31.0, "ssim": 0.85} for k in sources},
                               "real-drr": drr} for s in sources}}
    text = table1.markdown(table, "tiny", sources)
    assert "| enhancer trained on ddpm-two-stage | 31.00 / 0.850" in text
    assert table1.gates(table, {"psnr_gain": 0.5, "cnr_ratio": 1.0}) == []
    assert table1.gates(table, {"psnr_gain": 2.0}) == ["psnr_gain = 1 < 2"]


def test_refuses_to_run_as_several_processes(table1: ModuleType,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exc:
        table1.main(["--scale", "tiny"])
    assert exc.value.code == 2 and "--launcher" in capsys.readouterr().err
