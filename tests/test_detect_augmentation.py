"""repro/detect_augmentation.py without training: its patient splits (NIH stratified by the
Nodule label, LUNA16 train/test patients expressed as ``synth --where``), the nested arms, the
commands it composes, its table, curve and ``--fail-under`` gates, and its refusal to mix two
configurations in one work folder. The end-to-end smoke run (real data, a few minutes) is
marked slow."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from cxrkit.data.nih import NihEntry
from cxrkit.nodules.where import parse_where

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "repro" / "detect_augmentation.py"
DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="module")
def recipe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("repro_detect_augmentation", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def entries(patients: int = 60, positives: int = 10) -> list[NihEntry]:
    """Two images per patient; the first ``positives`` patients have a Nodule image."""
    out = []
    for p in range(patients):
        for i in range(2):
            out.append(NihEntry(f"{p:08d}_{i:03d}.png", ("Nodule",) if p < positives and i == 0
                                else (), str(p), p < positives and i == 0))
    return out


def test_nih_split_by_patient_stratified_and_seeded(recipe: ModuleType) -> None:
    data = entries()
    train, test = recipe.split_nih(data, 0.35, 0.5, seed=0)
    assert sorted(train + test) == sorted(e.image for e in data)
    patient = {e.image: e.patient_id for e in data}
    assert not {patient[n] for n in train} & {patient[n] for n in test}
    nodule = {e.image for e in data if e.nodule}
    assert sum(n in nodule for n in test) == 5  # half of the 10 Nodule patients
    others = {patient[n] for n in test} - {str(p) for p in range(10)}
    assert len(others) == 18  # ceil(0.35 · 50)
    assert recipe.split_nih(data, 0.35, 0.5, seed=0) == (train, test)
    assert recipe.split_nih(data, 0.35, 0.5, seed=1) != (train, test)


def test_nih_split_keeps_a_training_positive(recipe: ModuleType) -> None:
    """Even asking for all positives in the test, one Nodule patient stays to train on."""
    train, _ = recipe.split_nih(entries(20, 2), 0.3, 0.99, seed=3)
    assert sum(n.endswith("_000.png") and int(n[:8]) < 2 for n in train) == 1


def test_luna_split_and_where_select_disjoint_patients(recipe: ModuleType) -> None:
    rows = [{"patient_id": f"LIDC-IDRI-{i % 40:04d}", "n": str(i)} for i in range(100)]
    train, test = recipe.split_luna([r["patient_id"] for r in rows], 0.3, seed=0)
    assert len(test) == 12 and len(train) == 28 and not set(train) & set(test)
    for side in (train, test):
        chosen = parse_where(recipe.where_patients(side), columns=rows[0].keys())
        assert {r["patient_id"] for r in rows if chosen(r)} == set(side)
    with pytest.raises(ValueError, match="quote"):
        recipe.where_patients(["a'b"])
    with pytest.raises(ValueError, match="no LUNA16 patient"):
        recipe.where_patients([])


def test_arms_take_nested_round_robin_positives(recipe: ModuleType, tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    records = [{"id": f"bg{b}_s{s}", "boxes": [{"x1": 0}], "synth": {"sample": s}}
               for b in range(5) for s in range(3)]
    pool.write_text("".join(json.dumps(r) + "\n" for r in records))
    small = recipe.arm_records(tmp_path, "blend", 5, pool).read_text().splitlines()
    large = recipe.arm_records(tmp_path, "blend", 8, pool).read_text().splitlines()
    assert [json.loads(x)["id"] for x in small] == [f"bg{b}_s0" for b in range(5)]
    assert large[:5] == small  # nested: the larger arm holds the smaller one's nodules
    with pytest.raises(SystemExit):
        recipe.arm_records(tmp_path, "blend", 16, pool)
    s = recipe.Settings(ks=(0, 200, 500), engines=("blend", "diffusion"))
    assert [a.name for a in recipe.arms_of(s)] == ["real", "blend-200", "blend-500",
                                                    "diffusion-200", "diffusion-500"]


def test_every_arm_gets_the_same_budget(recipe: ModuleType, tmp_path: Path) -> None:
    s = recipe.Settings()
    nih = tmp_path / "nih"
    real = recipe.train_command(tmp_path, s, recipe.Arm(None, 0), 0, nih, [], tmp_path / "a")
    blend = recipe.train_command(tmp_path, s, recipe.Arm("blend", 500), 0, nih,
                                 [tmp_path / "pos.jsonl", tmp_path / "neg.jsonl"],
                                 tmp_path / "b")
    assert "--records" not in real and blend.count("--records") == 2

    def options(command: list[str]) -> dict[str, str]:
        keep = ("--arch", "--image-px", "--steps", "--batch-size", "--lr", "--seed",
                "--warmup-steps", "--lr-schedule", "--weight-decay",
                "--images", "--nih-labels", "--val-fraction")
        return {o: command[command.index(o) + 1] for o in keep}

    assert options(real) == options(blend)
    assert options(real)["--steps"] == str(s.steps) and "--resume" not in real
    # windows need masks: the synthetic arms train on them, the real arm on whole images
    assert blend[blend.index("--crop-px") + 1] == str(s.crop_px) and "--crop-px" not in real
    (tmp_path / "a" / "checkpoint-50").mkdir(parents=True)
    (tmp_path / "a" / "checkpoint-50" / "trainer_state.json").write_text("{}")
    again = recipe.train_command(tmp_path, s, recipe.Arm(None, 0), 0, nih, [], tmp_path / "a")
    assert again[-2:] == ["--resume", "latest"]


def test_train_and_test_nodules_come_from_disjoint_patients(
        recipe: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(recipe, "run", lambda command, **_: seen.append(command) or "")
    splits = {"luna16": {"train": {"patients": ["LIDC-IDRI-0001", "LIDC-IDRI-0002"]},
                         "test": {"patients": ["LIDC-IDRI-0003"]}}}
    recipe.synth_pool(tmp_path, "diffusion", 3, splits, tmp_path / "luna", 0, tmp_path / "dit",
                      recipe.Settings())
    recipe.synth_test(tmp_path, recipe.Settings(), splits, tmp_path / "luna", 0)
    pool, test = seen

    def value(command: list[str], option: str) -> str:
        return command[command.index(option) + 1]

    assert value(pool, "-e") == "diffusion" and value(pool, "--model") == str(tmp_path / "dit")
    assert value(pool, "-n") == "3" and "--negatives" not in pool
    assert value(test, "-e") == "blend" and "--negatives" in test
    assert value(pool, "--seed") != value(test, "--seed")
    assert "0003" not in value(pool, "--where") and "0001" not in value(test, "--where")
    # the blend test nodules get the recipe's display gain; the diffusion engine has none
    assert value(test, "--intensity-scale") == str(recipe.Settings().intensity_scale)
    assert "--intensity-scale" not in pool


def test_a_larger_pool_serves_smaller_k(recipe: ModuleType, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Synth seeds each (input, sample), so a pool of 13 per background holds a pool of 3:
    a rerun with a larger K makes a new pool, one with a smaller K reuses the larger."""
    seen: list[list[str]] = []
    monkeypatch.setattr(recipe, "run", lambda command, **_: seen.append(command) or "")
    splits = {"luna16": {"train": {"patients": ["LIDC-IDRI-0001"]}}}
    (tmp_path / "synth").mkdir()
    (tmp_path / "synth" / "blend-train-n3.jsonl").write_text("")
    s = recipe.Settings()
    assert recipe.synth_pool(tmp_path, "blend", 2, splits, tmp_path, 0, None, s).name \
        == "blend-train-n3.jsonl" and not seen
    made = recipe.synth_pool(tmp_path, "blend", 13, splits, tmp_path, 0, None, s)
    assert made.name == "blend-train-n13.jsonl" and seen[0][seen[0].index("-n") + 1] == "13"


def row(arm: str, k: int, real: float | None, synth: float, iou: float, seed: int = 0,
        calcified: float | None = 0.6) -> dict[str, Any]:
    return {"arm": arm, "engine": "none" if arm == "real" else arm.split("-")[0], "k": k,
            "seed": seed, "real_auc": real, "real_auc_ci95": [0.4, 0.8] if real else None,
            "synth_auc": synth, "synth_auc_ci95": [synth - 0.1, min(1.0, synth + 0.1)],
            "iou": iou, "characteristics": {c: calcified if c == "calcified" else 0.5
                                            for c in ("calcified", "border_regular",
                                                      "border_irregular",
                                                      "texture_homogeneous",
                                                      "texture_inhomogeneous")}}


ROWS = [row("real", 0, 0.60, 0.55, 0.0), row("blend-200", 200, 0.62, 0.80, 0.30),
        row("blend-200", 200, 0.66, 0.84, 0.34, seed=1), row("blend-500", 500, 0.58, 0.90, 0.40)]


def test_gates_take_the_best_arm_gain_or_one_arm(recipe: ModuleType) -> None:
    values = recipe.gate_values(ROWS)
    assert values["real_auc@blend-200"] == pytest.approx(0.64)  # mean over the seeds
    assert values["real_auc"] == pytest.approx(0.64) and values["synth_auc"] == 0.90
    assert values["real_auc_gain"] == pytest.approx(0.04)
    assert values["synth_auc_gain"] == pytest.approx(0.35)
    assert values["calcified_auc"] == pytest.approx(0.6)
    assert recipe.gates(ROWS, {"real_auc": 0.6, "iou@blend-500": 0.4, "synth_auc_gain": 0.3}) \
        == []
    failed = recipe.gates(ROWS, {"real_auc_gain": 0.05, "real_auc@blend-500": 0.6,
                                 "froc": 0.1})
    assert len(failed) == 3 and failed[0].startswith("real_auc_gain = 0.04 < 0.05")
    assert "unknown or not measured" in failed[2]
    unmeasured = [row("real", 0, None, 0.5, 0.0)]
    assert recipe.gates(unmeasured, {"real_auc": 0.0})  # not measured fails


def test_table_markdown_json_and_html_with_the_curve(recipe: ModuleType) -> None:
    splits = {"nih": {"train": {"images": 89, "patients": 89, "nodule_images": 10,
                                "backgrounds": 79},
                      "test": {"images": 54, "patients": 54, "nodule_images": 11,
                               "backgrounds": 43}},
              "luna16": {"train": {"patients": ["a"] * 112, "nodules": 218},
                         "test": {"patients": ["b"] * 48, "nodules": 92}}}
    from dataclasses import asdict

    table = {"rows": ROWS, "settings": asdict(recipe.Settings()), "splits": splits,
             "gates": recipe.gate_values(ROWS)}
    md = recipe.markdown(table)
    assert "| blend-500 | blend | 500 | 0 | 0.580 [0.400, 0.800] | 0.900 [0.800, 1.000] |" in md
    assert "11 with 'Nodule'" in md and "real_auc_gain +0.040" in md
    assert "| blend-200 | 2 | 0.640 | 0.820 | 0.320 |" in md  # the mean over seeds
    png = recipe.curve_png(ROWS)
    assert png.startswith(b"\x89PNG")
    page = recipe.html_report(table, png)
    assert "data:image/png;base64," in page and 'href="reports/blend-200-seed1-synth.html"' in page
    assert page.count("<tr>") == len(ROWS) + 1 + 1 + 3 and page.count("<table>") == 2
    json.dumps(table)  # serialisable


def test_row_of_reads_cxrkit_eval_json(recipe: ModuleType) -> None:
    real = {"classification": {"auc": 0.7, "auc_ci95": [0.5, 0.9], "n_positive": 11,
                               "n_negative": 43}}
    synth = {"classification": {"auc": 0.9, "auc_ci95": [0.8, 1.0], "n_positive": 86,
                                "n_negative": 43},
             "segmentation": {"iou_mean_pos": 0.31, "dice_mean_pos": 0.45},
             "characteristics": {"calcified": {"auc": None, "note": "skipped"},
                                 "border_irregular": {"auc": 0.62}}}
    got = recipe.row_of(real, synth)
    assert (got["real_auc"], got["real_n"], got["synth_auc"], got["iou"]) == (0.7, [11, 43],
                                                                            0.9, 0.31)
    assert got["characteristics"]["calcified"] is None
    assert got["characteristics"]["border_irregular"] == 0.62


def test_a_work_folder_keeps_its_settings(recipe: ModuleType, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    recipe.check_settings(tmp_path, recipe.Settings(), parser)
    recipe.check_settings(tmp_path, recipe.Settings(ks=(0, 50), seeds=(0, 1)), parser)  # grows
    with pytest.raises(SystemExit):
        recipe.check_settings(tmp_path, recipe.Settings(steps=7), parser)


def test_options_parse_into_settings(recipe: ModuleType) -> None:
    parser = argparse.ArgumentParser()
    args = argparse.Namespace(quick=True, k="0,8,8,4", seeds=None, engines="blend,diffusion",
                              image_px=None, background_px=None, steps=12, batch_size=None,
                              lr=None, arch=None, synth_test_n=None, bootstrap=None,
                              device=None, test_fraction=None, test_positive_fraction=0.4,
                              luna_test_fraction=None, crop_px=None, intensity_scale=0.3)
    s = recipe.settings_from(args, parser)
    assert s.crop_px == recipe.QUICK.crop_px and s.intensity_scale == 0.3
    assert s.ks == (0, 8, 4) and s.engines == ("blend", "diffusion") and s.steps == 12
    assert s.image_px == recipe.QUICK.image_px and s.test_positive_fraction == 0.4
    with pytest.raises(SystemExit):
        recipe.settings_from(argparse.Namespace(**{**vars(args), "engines": "ct"}), parser)
    with pytest.raises(SystemExit):
        recipe.settings_from(argparse.Namespace(**{**vars(args), "k": "-1"}), parser)


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "nih-cxr14" / "labels.csv").is_file()
                    or not (DATA / "luna16-nodules" / "nodules.csv").is_file(),
                    reason="needs ../shared/data (NIH ChestX-ray14 and LUNA16 nodules)")
def test_quick_recipe_end_to_end(tmp_path: Path) -> None:
    """The smallest configuration, real data, every step (a few minutes on one core); a rerun
    runs no command and writes the same table."""
    work = tmp_path / "work"
    command = [sys.executable, str(SCRIPT), "--quick", "--k", "0,4", "--steps", "3",
               "--bootstrap", "20", "--work", str(work), "--fail-under", "real_auc=0",
               "--fail-under", "synth_auc=0"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    first = subprocess.run(command, capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    table = json.loads((work / "augmentation.json").read_text())
    assert [r["arm"] for r in table["rows"]] == ["real", "blend-4"]
    assert all(0 <= r["real_auc"] <= 1 and 0 <= r["synth_auc"] <= 1 for r in table["rows"])
    assert table["splits"]["nih"]["test"]["nodule_images"] >= 5
    assert "data:image/png;base64," in (work / "augmentation.html").read_text()
    log = (work / "commands.log").read_text()
    assert log.count("train-detect") == 2
    again = subprocess.run(command, capture_output=True, text=True, env=env)
    assert again.returncode == 0 and "+ " not in again.stderr
    assert (work / "commands.log").read_text() == log
    fail = subprocess.run([*command, "--fail-under", "real_auc=1.01"], capture_output=True,
                          text=True, env=env)
    assert fail.returncode == 8 and "real_auc" in fail.stderr
