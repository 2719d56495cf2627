#!/usr/bin/env bash
# Train the characteristic adapters of the synthesis DiT (cxrkit train-lora) and ship them under
# cxrkit/models/synthdit/adapters/ so `cxrkit synth -e diffusion --adapter calcified` works:
#
#   1. data: cxrkit synth -e blend records on the NIH radiographs of
#      a. real LUNA16 nodules (LIDC labels: calcified, border_irregular, inhomogeneous, subtlety),
#      b. parametric nodules with every calcification pattern, shape and texture and a subtlety
#         drawn from 1..5 (labels implied by the spec: a calcification pattern is calcified,
#         lobulated/spiculated is irregular, non-solid texture is inhomogeneous);
#      the train/validation split is by patient of the background radiograph;
#   2. one adapter per characteristic (calcified, border_regular, border_irregular,
#      texture_homogeneous, texture_inhomogeneous, and the subtlety slider), each trained alone on
#      the positives of both sources (run.json and the file's metadata count them by source) ->
#      the shipped adapters. The slider is centred: alpha(s) = 8*(s-3), alpha_train 8, so its
#      weight is s - 3 (-2..2, 0 at s = 3: the base model). With the source's alpha(s) = 22 + s
#      (alpha_train 25: weights 0.92..1.08) an adapter sees every nodule at about the same weight
#      and learns no direction in s: 2026-12-07, held-out x0 loss 0.001322 against the base's
#      0.001288 (worse), painted CNR 0.447 -> 0.436 for s = 1..5 (falling); centred: 0.001206,
#      and CNR 0.340 / 0.428 / 0.518 / 0.586 / 0.609 (repro/lora_proof.py);
#   3. the source's composition pairs trained jointly with the orthogonality penalty
#      (calcified + border_irregular, calcified + texture_homogeneous,
#      border_irregular + texture_homogeneous; lambda = $ORTHO) and without it (lambda = 0), for
#      the composition study; and a ZipLoRA merge of the separately trained calcified and
#      border_irregular adapters.
#
# The shipped adapters (2026-12-07, each characteristic's A from its own seed) are step 2's
# runs at the defaults below: 200 steps of batch 8 each (about 2-3 min per adapter on this
# 2-core CPU, one thread): a short run; their run.json reports the held-out gain over the base
# model on each characteristic's windows. repro/lora_proof.py measures controllability,
# composition and the slider. STEPS=2000 trains them longer.
#
# A finished step is skipped when rerun. Each run writes run.json with the held-out x0 loss and
# masked MSE of each characteristic's patches with and without its adapter.
#
# Usage (repository root): repro/train_lora.sh [WORK_DIR] [MODEL_DIR] [NIH_IMAGES_DIR] [LUNA16_DIR]
# MODEL_DIR: the synthesis DiT the adapters are bound to (its weights' sha256 is recorded; an
# adapter refuses any other model), default the shipped one.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-lora-work}"
MODEL="${2:-cxrkit/models/synthdit}"
NIH="${3:-../shared/data/nih-cxr14/images/}"
LUNA="${4:-../shared/data/luna16-nodules}"
STEPS="${STEPS:-200}"
ORTHO="${ORTHO:-0.01}"
SHIP="${SHIP:-cxrkit/models/synthdit/adapters}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
CXRKIT=(python -m cxrkit)
[[ -x .venv/bin/python ]] && CXRKIT=(.venv/bin/python -m cxrkit)
mkdir -p "$WORK"
common=(--model "$MODEL" --records "$WORK/real.jsonl" --records "$WORK/param.jsonl"
        --rank 8 --targets to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2
        --batch-size 8 --lr 1e-3 --warmup-steps 20 --lr-schedule cosine --steps "$STEPS" --ema 0
        --checkpoint-every 100 --validate-every "$STEPS" --val-samples 32 --seed 0)

finished() { [[ -f "$1/run.json" ]] && ! grep -q '"stopped": "' "$1/run.json"; }
resume() { [[ -d "$1/checkpoints" ]] && echo --resume latest; }
records() {  # records FILE synth-options...: cxrkit synth -e blend into $WORK/<name>/
  local file="$1"; shift
  if [[ ! -s "$file" ]]; then
    "${CXRKIT[@]}" synth -e blend "$NIH" -n 8 --seed 0 --keep-going \
        -o "${file%.jsonl}" "$@" > "$file.part" || [[ $? -eq 3 ]]  # 3: some samples failed
    mv "$file.part" "$file"
  fi
}

records "$WORK/real.jsonl" --source luna16 --luna16-dir "$LUNA"  # = repro/train_synth.sh's
records "$WORK/param.jsonl" --source parametric --diameter-mm 5:25 --shape all --texture all \
    --calcification all --spicule-length-mm 2:6 --subtlety 1:5

for c in calcified border_regular border_irregular texture_homogeneous texture_inhomogeneous; do
  if ! finished "$WORK/$c"; then
    # shellcheck disable=SC2046
    "${CXRKIT[@]}" train-lora "${common[@]}" -c "$c" --alpha 8 $(resume "$WORK/$c") -o "$WORK/$c"
  fi
done
if ! finished "$WORK/subtlety"; then
  # shellcheck disable=SC2046
  "${CXRKIT[@]}" train-lora "${common[@]}" -c subtlety --alpha 8 --alpha-map '8*(s-3)' \
      $(resume "$WORK/subtlety") -o "$WORK/subtlety"
fi

for pair in calcified,border_irregular calcified,texture_homogeneous \
            border_irregular,texture_homogeneous; do
  a="${pair%,*}" b="${pair#*,}"
  for lam in 0 "$ORTHO"; do
    out="$WORK/joint-$a+$b-l$lam"
    if ! finished "$out"; then
      # shellcheck disable=SC2046
      "${CXRKIT[@]}" train-lora "${common[@]}" -c "$a" -c "$b" --alpha 8 --ortho-weight "$lam" \
          $(resume "$out") -o "$out"
    fi
  done
done
if [[ ! -f "$WORK/ziplora/run.json" ]]; then
  "${CXRKIT[@]}" train-lora --model "$MODEL" --records "$WORK/real.jsonl" \
      --records "$WORK/param.jsonl" --ziplora "$WORK/calcified/calcified.safetensors" \
      --ziplora "$WORK/border_irregular/border_irregular.safetensors" --steps 100 \
      --batch-size 8 --lr 1e-2 --seed 0 -o "$WORK/ziplora"
fi

mkdir -p "$SHIP"
for c in calcified border_regular border_irregular texture_homogeneous texture_inhomogeneous \
         subtlety; do
  cp "$WORK/$c/$c.safetensors" "$SHIP/$c.safetensors"
  cp "$WORK/$c/run.json" "$SHIP/$c.run.json"
done
echo "repro/train_lora.sh: adapters shipped in $SHIP (run.json beside each); joint pairs and" \
     "the ZipLoRA merge in $WORK" >&2
