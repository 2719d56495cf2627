#!/usr/bin/env bash
# Train the synthesis DiT that `cxrkit synth -e diffusion --model DIR` paints with, at small scale
# on the shared data, in the two stages of the source:
#
#   1. pretrain: random 64 px crops (0.75 mm pixels) of the NIH ChestX-ray14 radiographs with
#      random nodule-like masks (10 % of the patients held out for validation);
#   2. blend records: real LUNA16 nodules projected and blended into the same radiographs by
#      `cxrkit synth -e blend` (8 per radiograph), the stage-2 data with exact thickness maps and
#      LIDC characteristics;
#   3. finetune: from stage 1, on windows around those nodules.
#
# Then a check: `synth -e diffusion` with the result on two radiographs, read by `cxrkit eval`.
# Each stage writes run.json (command, data hashes, validation: held-out masked MSE of the model
# against mean-fill and blur-fill baselines). A finished stage is skipped when rerun; a stage
# stopped by --time-limit continues with --resume latest. Times on this 2-core CPU: about 1 s
# per step at batch 16 for the default model (4.2 M parameters; 2026-12-06, OMP_NUM_THREADS=2),
# so stage 1 takes about 70 min and stage 2 about 25 min.
#
# Usage (repository root): repro/train_synth.sh [WORK_DIR] [NIH_IMAGES_DIR] [LUNA16_DIR]
# No weights are committed; a default model to ship is future work (issue #20).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-synth-work}"
NIH="${2:-../shared/data/nih-cxr14/images/}"
LUNA="${3:-../shared/data/luna16-nodules}"
STEPS1="${STEPS1:-4000}"
STEPS2="${STEPS2:-1500}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
CXRKIT=(python -m cxrkit)
[[ -x .venv/bin/python ]] && CXRKIT=(.venv/bin/python -m cxrkit)
mkdir -p "$WORK"
common=(--batch-size 16 --lr 3e-4 --warmup-steps 200 --lr-schedule cosine --ema 0.999
        --checkpoint-every 500 --validate-every 500 --val-samples 32 --seed 0)

finished() { [[ -f "$1/run.json" ]] && ! grep -q '"stopped": "' "$1/run.json"; }
resume() { [[ -d "$1/checkpoints" ]] && echo --resume latest; }

if ! finished "$WORK/stage1"; then
  # shellcheck disable=SC2046
  "${CXRKIT[@]}" train-synth --stage pretrain --images "$NIH" --steps "$STEPS1" "${common[@]}" \
      $(resume "$WORK/stage1") -o "$WORK/stage1"
fi
if [[ ! -s "$WORK/blend.jsonl" ]]; then
  "${CXRKIT[@]}" synth -e blend "$NIH" --source luna16 --luna16-dir "$LUNA" -n 8 --seed 0 \
      --keep-going -o "$WORK/blend" > "$WORK/blend.jsonl.part" || [[ $? -eq 3 ]]  # 3: some failed
  mv "$WORK/blend.jsonl.part" "$WORK/blend.jsonl"
fi
if ! finished "$WORK/stage2"; then
  # shellcheck disable=SC2046
  "${CXRKIT[@]}" train-synth --stage finetune --records "$WORK/blend.jsonl" \
      --init "$WORK/stage1" --steps "$STEPS2" "${common[@]}" $(resume "$WORK/stage2") \
      -o "$WORK/stage2"
fi
first_two=$(find "$NIH" -name '*.png' | sort | head -2)
# shellcheck disable=SC2086
"${CXRKIT[@]}" synth -e diffusion $first_two --model "$WORK/stage2" --source luna16 \
    --luna16-dir "$LUNA" --where 'diameter_mm<=30' -n 4 --negatives --overwrite \
    --keep-going -o "$WORK/check" > "$WORK/check.jsonl" || [[ $? -eq 3 ]]
echo "repro/train_synth.sh: model in $WORK/stage2 (validation in run.json); samples in $WORK/check" >&2
