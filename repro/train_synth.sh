#!/usr/bin/env bash
# Retrain the synthesis DiT that cxrkit ships (cxrkit/models/synthdit, used by
# `cxrkit synth -e diffusion` without --model) from scratch on the shared data, in the two
# stages of the source, with the exact commands of the shipped run (its run.json has them):
#
#   1. pretrain: random 64 px crops (0.75 mm pixels) of the NIH ChestX-ray14 radiographs with
#      random nodule-like masks (10 % of the patients held out for validation); a 4000-step
#      cosine schedule, stopped at step 3266 (the shipped run was stopped there: the held-out
#      masked MSE had been flat since step 2000: 0.00103 → 0.00099, blur-fill 0.00108);
#   2. blend records: real LUNA16 nodules projected and blended into the same radiographs by
#      `cxrkit synth -e blend` (8 per radiograph, 1144 records), the stage-2 data with exact
#      thickness maps and LIDC characteristics;
#   3. finetune: from stage 1, 800 steps on windows around those nodules (EMA 0.99: a short run);
#   4. realism: repro/synth_realism.py on the held-out patients' radiographs (a classifier
#      two-sample test of generated vs real projected nodules, contrast distributions, a contact
#      sheet), added to stage 2's run.json;
#   5. ship: WORK_DIR/ship holds the stage-2 model with fp16 weights (8 MB), config.json and
#      run.json: copy it over cxrkit/models/synthdit to ship it.
#
# A finished stage is skipped when rerun; a stage stopped by --time-limit continues with
# --resume latest. Times on this 2-core CPU (OMP_NUM_THREADS=2, 4.2 M parameters): about 1 s per
# step at batch 16 when the machine is otherwise idle (stage 1 ≈ 55 min, stage 2 ≈ 15 min).
#
# The session-12 variants (not shipped; README has their realism): PREDICTION=v with
# STEPS1=2000 STOP1=2000 (and WEIGHTING=v for the v-weighted loss; the default is x0) in a
# WORK_DIR of their own.
#
# Usage (repository root): repro/train_synth.sh [WORK_DIR] [NIH_IMAGES_DIR] [LUNA16_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-synth-work}"
NIH="${2:-../shared/data/nih-cxr14/images/}"
LUNA="${3:-../shared/data/luna16-nodules}"
STEPS1="${STEPS1:-4000}"
STOP1="${STOP1:-3266}"
STEPS2="${STEPS2:-800}"
PREDICTION="${PREDICTION:-x0}"
weighting=(); [[ -n ${WEIGHTING:-} ]] && weighting=(--loss-weighting "$WEIGHTING")
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
PYTHON=(python)
[[ -x .venv/bin/python ]] && PYTHON=(.venv/bin/python)
CXRKIT=("${PYTHON[@]}" -m cxrkit)
mkdir -p "$WORK"
common=(--batch-size 16 --lr-schedule cosine --val-samples 32 --seed 0)

finished() {  # finished DIR [STOP]: the run ended, or stopped where it was told to (STOP)
    [[ -f "$1/run.json" ]] || return 1
    ! grep -q '"stopped": "' "$1/run.json" || { [[ -n ${2:-} ]] && grep -q "\"stopped\": \"step $2\"" "$1/run.json"; }
}
resume() { [[ -d "$1/checkpoints" ]] && echo --resume latest; }

if ! finished "$WORK/stage1" "$STOP1"; then
  # shellcheck disable=SC2046
  "${CXRKIT[@]}" train-synth --stage pretrain --images "$NIH" --steps "$STEPS1" \
      --stop-at-step "$STOP1" --lr 3e-4 --warmup-steps 200 --ema 0.999 --checkpoint-every 250 \
      --validate-every 250 --prediction "$PREDICTION" "${weighting[@]}" "${common[@]}" \
      $(resume "$WORK/stage1") -o "$WORK/stage1" \
      || finished "$WORK/stage1" "$STOP1"  # a --stop-at-step run ends with exit 3 by design
fi
if [[ ! -s "$WORK/blend.jsonl" ]]; then
  "${CXRKIT[@]}" synth -e blend "$NIH" --source luna16 --luna16-dir "$LUNA" -n 8 --seed 0 \
      --keep-going -o "$WORK/blend" > "$WORK/blend.jsonl.part" || [[ $? -eq 3 ]]  # 3: some failed
  mv "$WORK/blend.jsonl.part" "$WORK/blend.jsonl"
fi
if ! finished "$WORK/stage2"; then
  # shellcheck disable=SC2046
  "${CXRKIT[@]}" train-synth --stage finetune --records "$WORK/blend.jsonl" \
      --init "$WORK/stage1" --steps "$STEPS2" --lr 1e-4 --warmup-steps 50 --ema 0.99 \
      --checkpoint-every 200 --validate-every 200 "${weighting[@]}" "${common[@]}" \
      $(resume "$WORK/stage2") \
      -o "$WORK/stage2"
fi
if [[ ! -s "$WORK/realism/realism.json" ]]; then
  "${PYTHON[@]}" repro/synth_realism.py --model "$WORK/stage2" --records "$WORK/blend.jsonl" \
      --out "$WORK/realism" --update-run-json
fi
rm -rf "$WORK/ship" && mkdir -p "$WORK/ship"
cp "$WORK/stage2/config.json" "$WORK/stage2/run.json" "$WORK/ship/"
"${PYTHON[@]}" - "$WORK/stage2" "$WORK/ship" <<'PY'
import sys
from safetensors.torch import load_file, save_file
src, dst = sys.argv[1:]
weights = load_file(f"{src}/diffusion_pytorch_model.safetensors")
save_file({k: v.half().contiguous() for k, v in weights.items()},
          f"{dst}/diffusion_pytorch_model.safetensors", metadata={"format": "pt"})
PY
first_two=$(find "$NIH" -name '*.png' | sort | head -2)
# shellcheck disable=SC2086
"${CXRKIT[@]}" synth -e diffusion $first_two --model "$WORK/ship" --source luna16 \
    --luna16-dir "$LUNA" --where 'diameter_mm<=30' -n 4 --negatives --overwrite \
    --keep-going -o "$WORK/check" > "$WORK/check.jsonl" || [[ $? -eq 3 ]]
echo "repro/train_synth.sh: model in $WORK/ship (validation and realism in run.json; copy it over cxrkit/models/synthdit to ship it); samples in $WORK/check" >&2
