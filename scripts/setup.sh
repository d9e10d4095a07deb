#!/usr/bin/env bash
# Sets up a fresh machine for fastnas: a virtual environment in .venv (or $FASTNAS_VENV) with torch,
# the test/benchmark tools, and fastnas built against that torch. Safe to re-run; it reuses what is there.
#
#   FASTNAS_TORCH_SPEC  torch requirement to install when the venv has none (default torch==2.13.0, the
#                       CPU build; an unpinned `torch` would pull a multi-GB CUDA build)
#   FASTNAS_VENV        where the venv lives (default .venv in the checkout)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${FASTNAS_VENV:-.venv}"
TORCH_SPEC="${FASTNAS_TORCH_SPEC:-torch==2.13.0}"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$(cd "$VENV" && pwd)/bin/python"
"$PY" -m pip install -q --upgrade pip setuptools wheel
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "$TORCH_SPEC"
fi
"$PY" -m pip install -q ninja numpy triton pytest pytest-benchmark scipy tqdm matplotlib nats_bench
# The extension must be compiled against the torch installed above: no build isolation (an isolated
# build would compile against a second, newer torch and fail to import under this one).
"$PY" -m pip install -q --no-build-isolation --no-deps .
# `python -m` puts the working directory first on sys.path: run it from a new empty folder, so that
# neither this checkout's fastnas/ nor a stray module in a shared folder (a /tmp/nt.py shadows the
# `nt` module that ntpath tries, and broke `import torch` that way) is imported instead.
INFO_DIR="$(mktemp -d)"
(cd "$INFO_DIR" && "$PY" -m fastnas.info)
rmdir "$INFO_DIR"
