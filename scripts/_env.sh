# Sourced by scripts/demo.sh and scripts/test.sh: make ./.venv with cxrkit installed, once.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"   # libgomp spin-waiting slows shared CPUs 3-10x
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "cxrkit: creating .venv with $($PY --version)" >&2
  "$PY" -m venv .venv
fi
# Reinstall only when the dependencies changed (the stamp holds a hash of pyproject.toml).
stamp=.venv/.cxrkit-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)-${CXRKIT_EXTRAS:-test}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "cxrkit: installing (torch is the CPU wheel; a few minutes the first time)" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip >&2
  .venv/bin/python -m pip install --quiet -e ".[${CXRKIT_EXTRAS:-test}]" >&2
  echo "$want" > "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"
