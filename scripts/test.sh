#!/usr/bin/env bash
# The test command: set up (scripts/setup.sh) and run the whole test suite on this machine.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k cpu -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${FASTNAS_VENV:-.venv}"
# `pytest` (not `python -m pytest`) keeps the checkout off sys.path, so the tests import the installed
# package, extension included, exactly as a user gets it.
exec "$VENV/bin/pytest" tests benchmarks/test_tools.py -q "$@"
