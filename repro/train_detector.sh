#!/usr/bin/env bash
# Train the default nodule detector (`cxrkit detect` without --model) on the shared data:
#
#   1. backgrounds: the NIH ChestX-ray14 radiographs whose labels.csv findings do not include
#      "Nodule" (a synthetic image made from a radiograph with a real nodule would have a mask
#      that misses it; train-detect also leaves such records out by itself);
#   2. synthetic positives: real LUNA16 nodules projected and blended into them by
#      `cxrkit synth -e blend` (N_SYNTH per radiograph, exact masks and LIDC characteristics),
#      with --negatives: each background once without a nodule (boxes [], an empty mask);
#   3. train-detect on those records plus every NIH radiograph with its image-level "Nodule"
#      label (presence loss only), patients split 85/15, positives and negatives balanced.
#
# run.json holds the held-out validation: auc (presence, all held-out images), auc_real (the
# held-out real radiographs against the NIH label: few images here, so a wide interval),
# auc_synth, iou/dice of the mask, auc_<characteristic>. Then a check: `cxrkit detect` on the
# held-out synthetic records, read by `cxrkit eval` (AUC, FROC, IoU).
#
# A finished run is skipped when rerun; a run stopped by TIME_LIMIT continues with
# --resume latest. SHIP=1 copies the model (config.json, weights, run.json: about 9 MB) into
# cxrkit/models/detector, the default of `cxrkit detect`.
#
# Time on this 2-core CPU (2026-12-06, default model, 512², batch 8, 2 threads): 2.7 s per
# optimizer step at load average 3 (forward, backward, AdamW), 9.3 s measured while the machine
# was saturated (load 7-8); so the default 2000 steps take 1.5-5 h (TIME_LIMIT=3h stops
# cleanly, a rerun continues), or minutes with `--device cuda` (edit the train-detect line).
# N_SYNTH=4 makes 488 synthetic positives and 122 negatives from the 122 nodule-free NIH
# radiographs (about 2 min).
#
# What to expect (measured 2026-12-06, CPU, 256² to save time, batch 8): 300 steps (2,400
# samples) leave the held-out presence AUC at chance (0.49-0.51) both on these LUNA16 nodules and
# on 15-30 mm parametric ones, and the training-set AUC too (0.52): the blended nodules are
# subtle (mean excess over their surroundings 0.00-0.06 of the display range, about one local
# standard deviation), and a Swin trained from scratch needs far more than that; the mask head
# starts to move (Dice 0.02). Budget thousands of steps at 512² (a GPU: minutes), and read
# auc_synth, dice and auc_real in run.json before shipping.
#
# Usage (repository root): repro/train_detector.sh [WORK_DIR] [NIH_DIR] [LUNA16_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-detector-work}"
NIH="${2:-../shared/data/nih-cxr14}"
LUNA="${3:-../shared/data/luna16-nodules}"
STEPS="${STEPS:-2000}"
N_SYNTH="${N_SYNTH:-4}"
TIME_LIMIT="${TIME_LIMIT:-0}"
ARCH="${ARCH:-default}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
PY=python
[[ -x .venv/bin/python ]] && PY=.venv/bin/python
CXRKIT=("$PY" -m cxrkit)
mkdir -p "$WORK"

finished() { [[ -f "$1/run.json" ]] && ! grep -q '"stopped": "' "$1/run.json"; }
resume() { [[ -d "$1/checkpoints" ]] && echo --resume latest; }

if [[ ! -s "$WORK/backgrounds.txt" ]]; then
  "$PY" - "$NIH" > "$WORK/backgrounds.txt" <<'EOF'
import sys
from pathlib import Path
from cxrkit.data.nih import read_labels
root = Path(sys.argv[1])
for e in read_labels(root / "labels.csv"):
    if not e.nodule and (root / "images" / e.image).is_file():
        print(root / "images" / e.image)
EOF
fi
if [[ ! -s "$WORK/synth.jsonl" ]]; then
  # shellcheck disable=SC2046
  "${CXRKIT[@]}" synth -e blend $(cat "$WORK/backgrounds.txt") --source luna16 \
      --luna16-dir "$LUNA" -n "$N_SYNTH" --negatives --seed 0 --keep-going \
      -o "$WORK/synth" > "$WORK/synth.jsonl.part" || [[ $? -eq 3 ]]  # 3: some failed
  mv "$WORK/synth.jsonl.part" "$WORK/synth.jsonl"
fi
if ! finished "$WORK/detector"; then
  # shellcheck disable=SC2046
  "${CXRKIT[@]}" train-detect --records "$WORK/synth.jsonl" --images "$NIH/images" \
      --nih-labels "$NIH/labels.csv" --arch "$ARCH" --steps "$STEPS" --batch-size 8 \
      --lr 5e-4 --warmup-steps 100 --lr-schedule cosine --weight-decay 0.05 --ema 0.999 \
      --checkpoint-every 250 --validate-every 500 --val-fraction 0.15 --seed 0 \
      --time-limit "$TIME_LIMIT" $(resume "$WORK/detector") -o "$WORK/detector" \
      || [[ $? -eq 3 ]]  # 3: stopped at the time limit; rerun to continue
fi
finished "$WORK/detector" || { echo "repro/train_detector.sh: stopped early; rerun to resume" >&2; exit 3; }

# the check: detect on the held-out synthetic records (validation patients), then eval
"$PY" - "$WORK" > "$WORK/heldout.jsonl" <<'EOF'
import json, sys
from pathlib import Path
from cxrkit.detector.data import record_patient
work = Path(sys.argv[1])
held = set(json.loads((work / "detector" / "run.json").read_text())["data"]["validation_patients"])
for line in (work / "synth.jsonl").read_text().splitlines():
    if line.strip() and record_patient(json.loads(line)) in held:
        print(line)
EOF
"${CXRKIT[@]}" detect --model "$WORK/detector" "$WORK/heldout.jsonl" --overwrite \
    -o "$WORK/check/" > "$WORK/check.jsonl"
"${CXRKIT[@]}" eval "$WORK/check.jsonl" --json > "$WORK/check-eval.json"
if [[ "${SHIP:-0}" == 1 ]]; then
  mkdir -p cxrkit/models/detector
  cp "$WORK/detector/config.json" "$WORK/detector/diffusion_pytorch_model.safetensors" \
     "$WORK/detector/run.json" cxrkit/models/detector/
fi
echo "repro/train_detector.sh: model in $WORK/detector (validation in run.json); held-out" \
     "synthetic check in $WORK/check-eval.json" >&2
