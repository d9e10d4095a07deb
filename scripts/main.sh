#!/usr/bin/env bash
# The main job: set up, report the build, and run the kernel microbenchmarks of the fused ops against
# the plain-PyTorch formula on this machine's CPU (results in results/ops_cpu.jsonl, table printed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${FASTNAS_VENV:-.venv}"
exec "$VENV/bin/python" benchmarks/bench_ops.py --device cpu "$@"
