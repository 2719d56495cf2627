#!/usr/bin/env bash
# Create the peer-renderer environment for benchmarks/bench_project.py.
#
# The peers (DiffDRR, nanodrr) are kept OUT of cxrkit's own environment: diffdrr pulls torchvision,
# which pins a different torch. They go into a separate venv outside the repository, and
# plastimatch comes from Debian.
#
# Usage: bash benchmarks/setup_peers.sh [VENV_DIR]     (default /work/bench-venv)
set -euo pipefail

venv="${1:-/work/bench-venv}"
python="${PYTHON:-python3}"

if ! command -v plastimatch >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -q && apt-get install -y -q plastimatch
    else
        echo "setup_peers: plastimatch missing; run: sudo apt-get install plastimatch" >&2
    fi
fi

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/pip" install -q --upgrade pip
# torch/torchvision first (pinned pair; they install from the local wheel mirror where there is one).
"$venv/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
"$venv/bin/pip" install -q diffdrr==0.6.1 nanodrr==0.1.7
"$venv/bin/python" -c "import diffdrr, nanodrr, torch; print('peers ok: torch', torch.__version__)"
