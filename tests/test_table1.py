"""repro/table1.py without running it: every scale has both DDPM-LQ routes with their budgets,
the commands it composes (launcher, records as file arguments), its tables and its refusal to run
as several processes. (The recipe itself needs ../shared/data; run it with --scale tiny.)"""

from __future__ import annotations

import importlib.util
import sys
import time
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


def value_of(command: list[str], option: str) -> str:
    return command[command.index(option) + 1]


@pytest.mark.parametrize("scale", ["tiny", "small", "full"])
def test_ddpm_routes_train_with_their_scale_budgets(table1: ModuleType, calls: list[dict[str, Any]],
                                                tmp_path: Path, scale: str) -> None:
    s = table1.SCALES[scale]
    assert {"ddpm", "ddpm-two-stage"} <= set(s.sources)
    launcher = ["accelerate", "launch", "-m"]
    options = {src: table1.train_degrader(tmp_path, s, src, tmp_path / "hq",
                                          tmp_path / "lq.jsonl", 0, launcher)
               for src in s.sources}
    assert options["ddpm-two-stage"] == ["--method", "ddpm", "--model",
                                         str(tmp_path / "models" / "ddpm-two-stage")]
    assert options["bicubic"] == ["--preset", "bicubic"]
    assert len(calls) == len(set(s.sources) & set(table1.LEARNED))  # the learned sources only
    by_model = {c["command"][c["command"].index("-o") + 1]: c for c in calls}
    munit = by_model[str(tmp_path / "models" / "munit")]["command"]
    assert "--tone-weight" not in munit and int(value_of(munit, "--steps")) == s.munit_steps
    if "munit-tone" in s.sources:  # the same training plus the tone-keeping term
        tone = by_model[str(tmp_path / "models" / "munit-tone")]["command"]
        assert float(value_of(tone, "--tone-weight")) == table1.TONE_WEIGHT
        assert options["munit-tone"][:2] == ["--method", "munit"]
        rest = tone[:]
        del rest[rest.index("--tone-weight"):rest.index("--tone-weight") + 2]
        assert [x.replace("munit-tone", "munit") for x in rest] == munit
    img2img = by_model[str(tmp_path / "models" / "ddpm")]["command"]
    two = by_model[str(tmp_path / "models" / "ddpm-two-stage")]["command"]

    def value(command: list[str], option: str) -> int:
        return int(value_of(command, option))

    assert value(img2img, "--steps") == s.ddpm_steps
    assert (value(two, "--steps"), value(two, "--stage2-steps")) == s.two_stage_steps
    if scale == "full":  # the same budget for both routes where neither is starved
        assert sum(s.two_stage_steps) == s.ddpm_steps
    assert two[two.index("--route") + 1] == "two-stage"
    assert all(c["launcher"] == launcher and c["command"][0] == "cxrkit" for c in calls)
    assert all("--resume" not in c["command"] for c in calls)


def test_enhancers_read_their_pairs_as_a_file_argument(table1: ModuleType,
                                                       calls: list[dict[str, Any]],
                                                       tmp_path: Path) -> None:
    s = table1.SCALES["tiny"]
    for source in s.sources:
        table1.train_enhancer(tmp_path, s, source, tmp_path / f"{source}.jsonl", 0,
                              ["accelerate", "launch", "-m"])
    assert len(calls) == len(s.sources)
    for call, source in zip(calls, s.sources, strict=True):
        assert call["command"][:3] == ["cxrkit", "train-enhance", str(tmp_path / f"{source}.jsonl")]
        assert call.get("stdin") is None  # stdin reaches one process of a launcher only


def test_a_stopped_training_is_resumed_and_a_finished_one_skipped(
        table1: ModuleType, calls: list[dict[str, Any]], tmp_path: Path) -> None:
    s = table1.SCALES["tiny"]
    out = tmp_path / "enhancers" / "bicubic"
    (out / "checkpoints" / "checkpoint-20").mkdir(parents=True)
    (out / "checkpoints" / "checkpoint-20" / "trainer_state.json").write_text("{}")
    (out / "run.json").write_text('{"stopped": "SIGTERM"}')
    table1.train_enhancer(tmp_path, s, "bicubic", tmp_path / "p.jsonl", 0, [])
    assert calls[-1]["command"][-2:] == ["--resume", "latest"]
    (out / "run.json").write_text('{"stopped": null}')
    table1.train_enhancer(tmp_path, s, "bicubic", tmp_path / "p.jsonl", 0, [])
    assert len(calls) == 1


def test_parallel_steps_keep_their_order_and_get_a_share_of_the_cores(
        table1: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table1, "_threads", 1)
    probe = [sys.executable, "-c", "import os; print(os.environ['OMP_NUM_THREADS'])"]
    outs = table1.in_parallel([lambda: table1.run(probe)] * 3 + [lambda: "last"], 2)
    assert outs == ["1\n", "1\n", "1\n", "last"]


def test_a_failed_step_stops_the_running_ones(table1: ModuleType) -> None:
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    failing = [sys.executable, "-c", "import time; time.sleep(0.5); raise SystemExit(5)"]
    began = time.monotonic()
    with pytest.raises(SystemExit, match=r"failed \(5\)"):
        table1.in_parallel([lambda: table1.run(sleeper), lambda: table1.run(failing),
                            lambda: table1.run(sleeper)], 2)
    assert time.monotonic() - began < 30  # the sleeper got SIGTERM; the third never started
    assert not table1._running and not table1._stopping.is_set()


def test_sampling_steps_reach_every_enhance_command_and_keep_their_own_outputs(
        table1: ModuleType, calls: list[dict[str, Any]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table1, "_metrics", lambda text: {"psnr": 1.0, "ssim": 0.5})
    monkeypatch.setattr(table1, "drr_measures", lambda before, after: {"cnr_ratio": 1.0})
    s = table1.SCALES["tiny"]
    pairs = {k: {"test": tmp_path / f"{k}.jsonl"} for k in s.sources}
    table1.evaluate_enhancer(tmp_path, s, "bicubic", tmp_path / "m", pairs, tmp_path / "d.jsonl",
                             0, 1)
    enhance = [c["command"] for c in calls if c["command"][1] == "enhance"]
    assert len(enhance) == len(s.sources) + 1  # every test kind and the real DRRs
    for command in enhance:
        assert command[command.index("--steps") + 1] == "1"
        assert str(tmp_path / "enhanced-steps1" / "bicubic") in command[-1]
    assert "1 DDIM step" in table1.markdown(
        {"bicubic-upsampling": {}, "enhancers": {}}, "tiny", (), 1)


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
    table["enhancers"]["ddpm"]["ddpm"] = {"psnr": 29.0, "ssim": 0.7}
    assert table1.gates(table, {"psnr_gain@ddpm-two-stage": 0.5}) == []
    assert table1.gates(table, {"psnr_gain@ddpm": 0.0}) == ["psnr_gain@ddpm = -1 < 0"]
    assert table1.gates(table, {"psnr_gain": 0.0}) == ["psnr_gain = -1 < 0"]
    assert table1.gates(table, {"ssim@munit": 0.5})[0].startswith("ssim@munit: unknown gate")
    table["lq_texture"] = {s: {"hf_ratio": 0.5, "noise_ratio": 2.0} for s in sources}
    assert "| ddpm | 0.50 | 2.00 |" in table1.markdown(table, "tiny", sources)


def test_lq_texture_is_relative_to_the_real_drrs(table1: ModuleType, tmp_path: Path) -> None:
    import json

    import numpy as np

    from cxrkit.io import Radiograph, write_radiograph

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64] / 64.0
    smooth = (0.3 + 0.4 * yy * xx).astype(np.float32)  # a DRR-like ramp, little fine texture

    def records(name: str, images: list[np.ndarray]) -> Path:
        lines = []
        for i, im in enumerate(images):
            path = tmp_path / f"{name}-{i}.tiff"
            write_radiograph(path, Radiograph(im, (1.0, 1.0)))
            lines.append(json.dumps({"id": f"{name}-{i}", "path": str(path)}))
        out = tmp_path / f"{name}.jsonl"
        out.write_text("\n".join(lines) + "\n")
        return out

    noisy = [np.clip(smooth + rng.normal(0, 0.05, smooth.shape), 0, 1).astype(np.float32)
             for _ in range(3)]
    drrs = records("drr", [np.clip(smooth + rng.normal(0, 0.01, smooth.shape), 0, 1)
                           .astype(np.float32) for _ in range(3)])
    same = table1.lq_texture(drrs, table1.texture(drrs))
    assert same == {"hf_ratio": 1.0, "noise_ratio": 1.0}
    rough = table1.lq_texture(records("lq", noisy), table1.texture(drrs))
    assert rough["hf_ratio"] > 10 and 3 < rough["noise_ratio"] < 7  # σ 0.05 against 0.01


def test_refuses_to_run_as_several_processes(table1: ModuleType,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exc:
        table1.main(["--scale", "tiny"])
    assert exc.value.code == 2 and "--launcher" in capsys.readouterr().err


def test_sources_picks_the_rows_and_refuses_unknown_ones(table1: ModuleType,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str],
                                                         tmp_path: Path) -> None:
    assert "munit-tone" not in table1.SCALES["small"].sources  # keeps small under the hour
    assert "munit-tone" in table1.SOURCES and "portable" in table1.SOURCES
    seen: list[Any] = []

    class StopError(Exception):
        pass

    def prepare_hq(work: Path, scale: Any, seed: int) -> None:
        seen.append(scale)
        raise StopError

    monkeypatch.setattr(table1, "prepare_hq", prepare_hq)
    with pytest.raises(StopError):
        table1.main(["--scale", "small", "--work", str(tmp_path),
                     "--sources", "drr-like, munit-tone,drr-like"])
    assert seen[0].sources == ("drr-like", "munit-tone")
    assert seen[0].munit_steps == table1.SCALES["small"].munit_steps  # the budgets stay
    for bad in ("drr-like,nope", ","):
        with pytest.raises(SystemExit) as exc:
            table1.main(["--scale", "tiny", "--work", str(tmp_path), "--sources", bad])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "--sources" in err and "munit-tone" in err
    assert len(seen) == 1
