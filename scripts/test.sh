#!/usr/bin/env bash
# Run the test suite on a fresh clone: creates .venv, installs cxrkit with its test extras, lints,
# and runs pytest (real-data tests use ../shared/data when present). Extra arguments go to pytest.
source "$(dirname "$0")/_env.sh"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
ruff check cxrkit tests benchmarks scripts
python -m pytest "$@"
