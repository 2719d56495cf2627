"""The nodule detector (cxrkit.detector, cxrkit.data.nih, `cxrkit train-detect`, `cxrkit detect`)
on tiny synthetic images: shapes at any size, the shifted-window mask, learning on a toy set
(loss falls, held-out AUC beats chance), exact boxes from a known mask, records that eval
reads, model-folder checks, determinism and usage errors."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cxrkit.detector import (
    ARCHS,
    CHARACTERISTICS,
    Detector,
    DetectorSettings,
    HeldOut,
    Letterbox,
    boxes_from_mask,
    detect,
    items_from_records,
    letterbox,
    parameter_count,
    train_detect,
)
from cxrkit.detector.model import SwinBlock
from cxrkit.errors import InputError, ModelError
from cxrkit.io import Radiograph, write_radiograph
from cxrkit.train import TrainConfig
from tests.test_cli import run_cli

TINY = DetectorSettings(image_px=64, embed_dim=16, depths=(1, 1), num_heads=(1, 2), window=4,
                        decoder_dim=16)
TINY_ARGS = ("--image-px", "64", "--embed-dim", "16", "--depths", "1,1", "--heads", "1,2",
             "--window", "4", "--decoder-dim", "16")
FAST = ("--batch-size", "8", "--checkpoint-every", "0", "--validate-every", "0",
        "--warmup-steps", "5", "--ema", "0")


def blob_records(folder: Path, count: int = 40, shape: tuple[int, int] = (48, 56)
                 ) -> list[dict]:
    """``count`` noisy images of ``count`` patients, every other one with a bright disk (its
    exact mask, box and characteristics), written as a synth command would."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        image = (0.3 + 0.1 * rng.random(shape)).astype(np.float32)
        mask = np.zeros(shape, np.float32)
        boxes: list[dict] = []
        if i % 2 == 0:
            r, c, rad = rng.integers(8, shape[0] - 8), rng.integers(8, shape[1] - 8), \
                rng.integers(3, 6)
            yy, xx = np.ogrid[: shape[0], : shape[1]]
            disk = (yy - r) ** 2 + (xx - c) ** 2 <= rad**2
            image[disk] += 0.4
            mask[disk] = 1
            ys, xs = np.nonzero(disk)
            boxes = [{"x1": int(xs.min()), "y1": int(ys.min()), "x2": int(xs.max() + 1),
                      "y2": int(ys.max() + 1), "label": "nodule", "origin": "synth"}]
        path = folder / f"{i:08d}_000.png"
        mask_path = folder / f"{i:08d}_000.mask.png"
        write_radiograph(path, Radiograph(np.clip(image, 0, 1), (0.5, 0.5), "display"))
        write_radiograph(mask_path, Radiograph(mask, (0.5, 0.5), "mask"))
        nodule = {"characteristics": {"calcified": i % 4 == 0, "border_irregular": 0,
                                      "texture": "solid", "inhomogeneous": None}}
        records.append({"id": path.stem, "path": str(path), "source": str(path),
                        "mask": str(mask_path), "boxes": boxes,
                        "nodule": nodule if boxes else None})
    return records


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    folder = tmp_path_factory.mktemp("blobs")
    records = blob_records(folder / "img")
    jsonl = folder / "blobs.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    return jsonl, records


@pytest.fixture(scope="module")
def trained(blobs: tuple[Path, list[dict]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny detector trained 60 steps by the command on the blob set."""
    out = tmp_path_factory.mktemp("model") / "det"
    result = run_cli("train-detect", "--records", str(blobs[0]), *TINY_ARGS, *FAST,
                     "--steps", "60", "--lr", "2e-3", "--val-fraction", "0.3", "-o", str(out))
    assert result.returncode == 0, result.stderr.decode()
    return out


# ---- the model ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (9, 11), (130, 70)])
def test_outputs_have_the_input_size_for_any_shape(shape: tuple[int, int]) -> None:
    model = Detector.new(TINY, generator=torch.Generator().manual_seed(0)).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, *shape))
    assert out["presence"].shape == (2,)
    assert out["characteristics"].shape == (2, len(CHARACTERISTICS))
    assert out["mask"].shape == (2, 1, *shape)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_swin_t_has_the_source_parameter_count() -> None:
    swin_t = ARCHS["swin-t"]
    assert (swin_t.embed_dim, swin_t.depths, swin_t.num_heads, swin_t.window) == (
        96, (2, 2, 6, 2), (3, 6, 12, 24), 7)
    assert 27e6 < parameter_count(swin_t) < 29e6  # Swin-T's 28 M (no classifier) + heads
    assert parameter_count(ARCHS["default"]) < 5e6  # the shipped CPU model stays small


def test_shifted_windows_do_not_mix_regions_the_roll_brought_together() -> None:
    """In a shifted block, the top-left token and the bottom-right one share a window after the
    cyclic roll; only the mask keeps them apart (without it, changing one changes the other)."""
    torch.manual_seed(0)
    block = SwinBlock(8, 2, 4, 2, 2.0).eval()
    x = torch.randn(1, 8, 8, 8)
    y = x.clone()
    y[0, 0, 0, 0] += 5.0  # one channel (LayerNorm removes a shift of all)
    with torch.no_grad():
        a, b = block(x), block(y)
    assert not torch.allclose(a[0, 0, 0], b[0, 0, 0])
    assert torch.allclose(a[0, -1, -1], b[0, -1, -1], atol=1e-6)
    block._masks.clear()
    block._mask = lambda *args: torch.zeros(4, 16, 16)  # type: ignore[method-assign]
    with torch.no_grad():
        c, d = block(x), block(y)
    assert not torch.allclose(c[0, -1, -1], d[0, -1, -1], atol=1e-6)


def test_settings_are_checked() -> None:
    with pytest.raises(InputError, match="heads"):
        DetectorSettings(embed_dim=30, num_heads=(4, 2, 4, 8))
    with pytest.raises(InputError, match="stage"):
        DetectorSettings(depths=(2, 2), num_heads=(1, 2, 4))


# ---- letterbox and boxes --------------------------------------------------------------------

def test_letterbox_keeps_the_aspect_and_maps_back_exactly() -> None:
    image = np.zeros((100, 50), np.float32)
    image[10:30, 5:25] = 1
    square, box = letterbox(image, 64)
    assert square.shape == (64, 64) and box.inner == (64, 32) and box.scale == 0.64
    assert square[:, 32:].max() == 0  # the padding
    back = box.to_input(torch.from_numpy(square)).numpy()
    assert back.shape == (100, 50)
    assert Letterbox.of((512, 512), 512).scale == 1.0


def test_boxes_from_a_known_mask_are_exact() -> None:
    prob = np.zeros((40, 60), np.float32)
    prob[5:9, 10:20] = 0.9  # a 4 x 10 box
    prob[30:35, 50:52] = 0.6
    prob[20, 30] = 0.4  # below the threshold
    boxes = boxes_from_mask(prob, 0.5)
    assert boxes == [{"x1": 10, "y1": 5, "x2": 20, "y2": 9, "score": 0.9},
                     {"x1": 50, "y1": 30, "x2": 52, "y2": 35, "score": 0.6}]
    scored = boxes_from_mask(prob, 0.5, presence=0.4)
    assert scored[0]["score"] == pytest.approx(np.sqrt(0.9 * 0.4), abs=1e-6)
    assert boxes_from_mask(np.zeros((8, 8)), 0.5) == []
    faint = np.zeros((20, 20), np.float32)
    faint[3:6, 4:9], faint[4, 6] = 0.1, 0.2  # below 0.5: only the peak's box, if asked
    faint[15, 15] = 0.05
    assert boxes_from_mask(faint, 0.5) == []
    assert boxes_from_mask(faint, 0.5, peak_box=True) == [
        {"x1": 4, "y1": 3, "x2": 9, "y2": 6, "score": 0.2}]
    assert boxes_from_mask(np.zeros((8, 8)), 0.5, peak_box=True) == []
    diagonal = np.eye(6, dtype=np.float32)  # 8-connected: one component
    assert len(boxes_from_mask(diagonal, 0.5)) == 1


def test_boxes_of_detect_are_in_input_pixels() -> None:
    """A model whose mask logit is the input itself (so the probability is high exactly on a
    bright square) gives that square's box in the input's pixels, through the letterbox."""
    model = Detector.new(TINY, generator=torch.Generator().manual_seed(0)).eval()

    def forward(image: torch.Tensor) -> dict[str, torch.Tensor]:
        b = image.shape[0]
        return {"presence": torch.zeros(b), "characteristics": torch.zeros(b, 5),
                "mask": (image - 0.5) * 40}

    model.forward = forward  # type: ignore[method-assign]
    image = np.zeros((200, 120), np.float32)
    image[40:80, 20:60] = 1  # survives the 200 → 64 resize as a 4-pixel-aligned block
    found = detect(model, image)
    assert found.probability.shape == (200, 120)
    (box,) = found.detections
    assert abs(box["x1"] - 20) <= 3 and abs(box["x2"] - 60) <= 3
    assert abs(box["y1"] - 40) <= 3 and abs(box["y2"] - 80) <= 3


# ---- data -----------------------------------------------------------------------------------

def test_items_from_synth_records(blobs: tuple[Path, list[dict]]) -> None:
    items = items_from_records(blobs[1])
    assert [it.label for it in items[:4]] == [1, 0, 1, 0]
    first = dict(zip(CHARACTERISTICS, zip(items[0].characteristics, items[0].known,
                                          strict=True), strict=True))
    assert first["calcified"] == (1.0, 1.0)  # i = 0: calcified
    assert first["border_regular"] == (1.0, 1.0) and first["border_irregular"] == (0.0, 1.0)
    assert first["texture_inhomogeneous"][1] == 0.0  # None: unknown, out of the loss
    assert items[1].known == (0.0,) * 5 and items[1].mask is not None  # a negative's empty mask
    with pytest.raises(InputError, match="boxes"):
        items_from_records([{"path": "x.png"}])


def test_nih_labels_and_boxes(tmp_path: Path) -> None:
    from cxrkit.data.nih import nodule_boxes, read_boxes, read_labels

    labels = tmp_path / "labels.csv"
    labels.write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
        "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
        "00000100_000.png,Atelectasis|Nodule,0,100,60,M,PA,2500,2048,0.171,0.171\n"
        "00000427_000.png,No Finding,0,427,77,F,PA,2830,2889,0.143,0.143\n")
    entries = read_labels(labels)
    assert [(e.image, e.nodule, e.patient_id, e.findings) for e in entries] == [
        ("00000100_000.png", True, "100", ("Atelectasis", "Nodule")),
        ("00000427_000.png", False, "427", ())]
    boxes = tmp_path / "boxes.csv"  # the official file: split header, trailing empty columns
    boxes.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,,,\n"
                     "00000100_000.png,Nodule,10.5,20,30,40,,,\n"
                     "00000427_000.png,Mass,1,2,3,4,,,\n")
    assert nodule_boxes(read_boxes(boxes)) == {"00000100_000.png": [
        {"x1": 10.5, "y1": 20.0, "x2": 40.5, "y2": 60.0, "label": "Nodule"}]}
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="Image Index"):
        read_labels(tmp_path / "bad.csv")


def test_augmentation_keeps_the_mask_on_the_nodule(blobs: tuple[Path, list[dict]]) -> None:
    from cxrkit.detector import DetectionData

    data = DetectionData(items_from_records(blobs[1][:2]), 64)
    for seed in range(8):
        s = data.sample(np.random.default_rng(seed))
        if s["label"] == 1:
            inside = s["image"][s["mask"] > 0.5].mean()
            outside = s["image"][(s["mask"] == 0) & (s["image"] > 0)].mean()
            assert inside > outside + 0.2
    again = data.sample(np.random.default_rng(3))
    assert torch.equal(again["image"], data.sample(np.random.default_rng(3))["image"])


def test_windows_hold_their_nodule_and_negatives_none(blobs: tuple[Path, list[dict]]) -> None:
    from cxrkit.detector import DetectionData

    data = DetectionData(items_from_records(blobs[1][:8]), 64, crop=32)
    labels = []
    for seed in range(40):
        s = data.sample(np.random.default_rng(seed))
        assert s["image"].shape == s["mask"].shape == (1, 32, 32)
        assert bool(s["label"]) == bool(s["mask"].sum() > 0.5)
        if s["label"] == 1:  # the nodule's disk is in the window, brighter than around it
            assert s["image"][s["mask"] > 0.5].mean() > s["image"][s["mask"] == 0].mean() + 0.2
        else:
            assert not s["known"].any()
        labels.append(int(s["label"]))
    assert 10 <= sum(labels) <= 30  # balanced


def test_presence_is_the_top_k_mask_logits() -> None:
    from dataclasses import replace

    model = Detector.new(replace(TINY, presence_topk=1), generator=torch.Generator().manual_seed(0))
    seen = {}
    model.mask_out.register_forward_hook(lambda m, i, o: seen.setdefault("coarse", o))
    image = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        out = model(image)
    coarse = seen["coarse"].flatten(1)
    assert torch.allclose(out["presence"], coarse.amax(1))  # scale 1, bias 0 at the start
    assert torch.allclose(out["mask"].amax((1, 2, 3)), coarse.amax(1), atol=0.05)


# ---- learning -------------------------------------------------------------------------------

def _train_blobs(records: list[dict], tmp_path: Path, crop: int | None = None) -> Any:
    """60 steps of the tiny detector on the blob set, 30 % of the patients held out."""
    config = TrainConfig(output_dir=str(tmp_path / "m"), steps=60, batch_size=8, lr=2e-3,
                         warmup_steps=5, ema_decay=0.0, checkpoint_every=0, validate_every=0,
                         device="cpu")
    return train_detect(TINY, config, items_from_records(records),
                        held_out=HeldOut(fraction=0.3), crop=crop)


def test_the_loss_falls_and_heldout_auc_beats_chance(blobs: tuple[Path, list[dict]],
                                                     tmp_path: Path) -> None:
    result = _train_blobs(blobs[1], tmp_path)
    first, last = np.mean(result.losses[:5]), np.mean(result.losses[-5:])
    assert last < 0.8 * first
    m = result.metrics
    assert m["images"] == 12 and m["positives"] >= 4  # 30 % of 40 patients held out
    assert m["auc"] >= 0.8  # chance: 0.5
    assert m["dice"] > 0.2  # an all-empty mask scores 0
    run = json.loads((tmp_path / "m" / "run.json").read_text())
    assert run["kind"] == "nodule-detector" and run["validation"]["auc"] == m["auc"]
    assert run["crop_px"] is None
    assert run["data"]["validation"]["patients"] == 12
    assert not run["data"]["validation_on_training_data"]


def test_windows_train_a_whole_image_detector(blobs: tuple[Path, list[dict]],
                                              tmp_path: Path) -> None:
    result = _train_blobs(blobs[1], tmp_path, crop=32)
    assert result.metrics["auc"] >= 0.8  # measured on whole held-out images; chance 0.5
    run = json.loads((tmp_path / "m" / "run.json").read_text())
    assert run["crop_px"] == 32 and "windows" in run["data"]["sampling"]


# ---- model folders --------------------------------------------------------------------------

def test_model_folder_round_trip_and_only_safetensors(trained: Path, tmp_path: Path) -> None:
    assert {"config.json", "diffusion_pytorch_model.safetensors", "run.json"} <= {
        p.name for p in trained.iterdir()}
    assert not list(trained.glob("*.bin")) and not list(trained.glob("*.pt"))
    model = Detector.load(trained)
    assert model.settings == DetectorSettings(**{**asdict(TINY)})
    no_weights = tmp_path / "noweights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((trained / "config.json").read_text())
    torch.save({}, no_weights / "diffusion_pytorch_model.bin")  # a pickle is never read
    with pytest.raises(ModelError, match="safetensors"):
        Detector.load(no_weights)


def test_another_kind_of_model_folder_is_a_clear_error(tmp_path: Path) -> None:
    other = tmp_path / "dit"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"kind": "synth-dit"}))
    with pytest.raises(ModelError, match="kind 'synth-dit', not 'nodule-detector'"):
        Detector.load(other)


# ---- the commands ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def detected(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes]:
    """``(stdin, stdout)`` of one ``cxrkit detect`` run on six new 50 x 70 blob records."""
    folder = tmp_path_factory.mktemp("detected")
    test = blob_records(folder / "test", count=6, shape=(50, 70))
    stdin = "".join(json.dumps(r) + "\n" for r in test)
    result = run_cli("detect", "--model", str(trained), "--threshold", "0.3", "-o",
                     str(folder / "det/"), stdin=stdin)
    assert result.returncode == 0, result.stderr.decode()
    return stdin, result.stdout


def test_detect_records_round_trip_through_eval(detected: tuple[str, bytes]) -> None:
    from cxrkit.io import read_radiograph
    from cxrkit.metrics.records import detection_summary

    test = [json.loads(line) for line in detected[0].splitlines()]
    records = [json.loads(line) for line in detected[1].decode().splitlines()]
    assert [r["id"] for r in records] == [r["id"] for r in test]
    for rec, src in zip(records, test, strict=True):
        assert rec["boxes"] == src["boxes"] and rec["mask"] == src["mask"]  # carried through
        assert 0 <= rec["nodule_probability"] <= 1
        assert set(rec["characteristics_probability"]) == set(CHARACTERISTICS)
        prob = read_radiograph(rec["prediction_mask"])
        assert prob.pixels.shape == (50, 70) and rec["pred_mask"] == rec["prediction_mask"]
        for box in rec["detections"]:
            assert 0 <= box["x1"] < box["x2"] <= 70 and 0 <= box["y1"] < box["y2"] <= 50
        assert rec["detect"]["model"] and rec["detect"]["options"]["device"] == "cpu"
    metrics, _ = detection_summary(records, n_boot=20)
    assert metrics["n_images"] == 6 and metrics["auc"] > 0.5
    evaluated = run_cli("eval", "--json", stdin=detected[1])
    assert evaluated.returncode == 0, evaluated.stderr.decode()
    summary = json.loads(evaluated.stdout)
    assert "auc" in summary["detection"] and "iou_mean_pos" in summary["segmentation"]


def test_detect_is_deterministic(trained: Path, detected: tuple[str, bytes],
                                 tmp_path: Path) -> None:
    from cxrkit.io import read_radiograph

    again = run_cli("detect", "--model", str(trained), "--threshold", "0.3", "-o",
                    str(tmp_path / "again/"), stdin=detected[0])
    assert again.returncode == 0, again.stderr.decode()
    for a, b in zip(detected[1].decode().splitlines(), again.stdout.decode().splitlines(),
                    strict=True):
        first, second = json.loads(a), json.loads(b)
        for key in ("nodule_probability", "characteristics_probability", "detections"):
            assert first[key] == second[key]
        assert np.array_equal(read_radiograph(first["prediction_mask"]).pixels,
                              read_radiograph(second["prediction_mask"]).pixels)


def test_detect_nih_labels(trained: Path, blobs: tuple[Path, list[dict]], tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("Image Index,Finding Labels,Patient ID\n"
                      f"{Path(blobs[1][0]['path']).name},Nodule|Mass,0\n"
                      f"{Path(blobs[1][1]['path']).name},No Finding,1\n")
    result = run_cli("detect", "--model", str(trained), "--nih-labels", str(labels),
                     blobs[1][0]["path"], blobs[1][1]["path"], blobs[1][2]["path"],
                     "-o", str(tmp_path / "o/"))
    assert result.returncode == 0, result.stderr.decode()
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [r.get("label") for r in records] == [1, 0, None]


@pytest.mark.parametrize(("args", "message"), [
    (("train-detect", "--arch", "swin-s", "--records", "x.jsonl"), "--arch"),
    (("train-detect", "--images", "."), "--nih-labels"),
    (("train-detect", "--steps", "1"), "--records"),
    (("train-detect", "--records", "x.jsonl", "--depths", "2,a"), "--depths"),
    (("detect", "--threshold", "2", "x.png"), "--threshold"),
    (("detect", "x.png", "-o", "out.png"), "-o"),
])
def test_usage_errors_are_one_line_exit_2(args: tuple[str, ...], message: str) -> None:
    result = run_cli(*args)
    err = result.stderr.decode().strip()
    assert result.returncode == 2, err
    assert len(err.splitlines()) == 1 and message in err


def test_detect_without_a_shipped_model_says_so(tmp_path: Path) -> None:
    import cxrkit.detector as detector_pkg
    from cxrkit.cli.detect import SHIPPED

    folder = detector_pkg.default_model_dir()
    assert folder == SHIPPED
    if (folder / "config.json").is_file():
        pytest.skip("a detector is shipped in this tree")
    path = tmp_path / "cxr.png"
    write_radiograph(path, Radiograph(np.full((32, 32), 0.5, np.float32), None, "display"))
    result = run_cli("detect", str(path), "-o", str(tmp_path / "o/"))
    assert result.returncode == 1
    assert "no detector is shipped" in result.stderr.decode()


@pytest.mark.slow
def test_two_processes_train_as_one(blobs: tuple[Path, list[dict]], tmp_path: Path) -> None:
    """``accelerate launch`` with 2 CPU processes (gloo) gives the one-process losses."""
    import os
    import subprocess

    args = ("--records", str(blobs[0]), *TINY_ARGS, *FAST, "--steps", "10", "--lr", "2e-3",
            "--val-fraction", "0.3", "--cpu")
    one = run_cli("train-detect", *args, "-o", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr.decode()
    # `--cpu --num_processes 2` starts ONE process; --multi_gpu without CUDA runs gloo
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
              "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "-m", "cxrkit"]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    two = subprocess.run([*launch, "train-detect", *args, "-o", str(tmp_path / "two")],
                         capture_output=True, env=env, cwd=root, timeout=300, check=False)
    assert two.returncode == 0, two.stderr.decode()[-2000:]
    runs = [json.loads((tmp_path / n / "run.json").read_text()) for n in ("one", "two")]
    assert runs[1]["num_processes"] == 2
    assert runs[0]["final_loss"] == pytest.approx(runs[1]["final_loss"], rel=1e-4)
