#!/usr/bin/env bash
# The main job: set up, report the build, and run a short PC-DARTS search (DARTS space, the PC-DARTS
# supernet: 8 cells, C=16, K=4) on the synthetic dataset, which needs no download: one epoch of weight
# steps, one with architecture steps too; 70-80 s of search (after set-up; measured 2026-11-23/24 with
# the per-epoch Hessian monitor) on a 2-core CPU. The run folder (genotype.txt, metrics.jsonl, heatmaps,
# collapse.png, checkpoint) lands in runs/.
# Extra arguments go to `fastnas search` (e.g. --dataset cifar10 --data ~/data --epochs 50).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${FASTNAS_VENV:-.venv}"
# The installed console script, not `python -m fastnas`: -m would put this checkout first on sys.path
# and import its fastnas/ (no compiled extension there) instead of the installed package.
exec "$VENV/bin/fastnas" search --space darts --method pc-darts --dataset synthetic \
  --batch_size 32 --epochs 2 --warmup_epochs 1 --out_dir "runs/main-$(date +%Y%m%d-%H%M%S)" "$@"
