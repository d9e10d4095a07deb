"""CPU microbenchmarks of the fused ops (pytest-benchmark): op x direction x backend x size.

    PYTHONPATH=. pytest benchmarks/test_ops_cpu.py          # from a checkout; or with fastnas installed
    FASTNAS_BENCH_SIZES=quick|network|default pytest benchmarks/test_ops_cpu.py

Entries per case: ``baseline`` (the PC-DARTS formula of benchmarks/formulas.py) and every backend that
``fastnas.ops.available_backends('cpu', float32)`` returns, except ``triton`` (on CPU tensors it runs only
in the Triton interpreter, a test tool thousands of times slower). Entries of one case run back to back
so that load drift on a shared machine hits them alike; the results file (results/ops_cpu.jsonl or
$FASTNAS_RESULTS) gets ratio = baseline median / backend median per case (conftest.py).

Rounds: each benchmark runs ~``FASTNAS_BENCH_TIME`` seconds (default 0.25) of rounds, at least 7,
after one warm-up round. The default set (10 sizes x 3 ops x 2 directions x 3 entries) takes ~2 minutes
on 2 cores.
"""
from __future__ import annotations

import os
import statistics
import time

import pytest
import torch

import formulas
import results
from fastnas.ops import available_backends

DTYPE = torch.float32
SIZES = formulas.cpu_sizes(os.environ.get("FASTNAS_BENCH_SIZES", "default"),
                           batch=int(os.environ.get("FASTNAS_BENCH_BATCH", "32")))
DIRECTIONS = ("fwd", "fwd+bwd")
TARGET_S = float(os.environ.get("FASTNAS_BENCH_TIME", "0.25"))
ENTRIES = [formulas.BASELINE] + [b for b in available_backends("cpu", DTYPE) if b != "triton"]


def _params():
    # Entry innermost: the baseline and the backends of one case are measured one after another.
    for size in SIZES:
        for op in formulas.OPS:
            for direction in DIRECTIONS:
                for entry in ENTRIES:
                    yield pytest.param(op, direction, entry, size,
                                       id=f"{op}-{direction.replace('+', '_')}-{entry}-{size.id}")


_CASES = {}
_CHECKED = set()


def _case(op, size):
    key = (op, size)
    if key not in _CASES:
        _CASES.clear()  # keep only the current size's inputs alive
        _CASES[key] = formulas.make_case(op, size, DTYPE, "cpu")
    return _CASES[key]


def _plan(fn):
    """(rounds, iterations): ~1 ms or more per round, ~TARGET_S per benchmark, >= 7 rounds."""
    fn()
    samples = []
    for _ in range(3):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    per_call = max(statistics.median(samples), 1e-7)
    iterations = max(1, int(1e-3 / per_call))
    rounds = int(min(200, max(7, TARGET_S / (per_call * iterations))))
    return rounds, iterations


@pytest.mark.parametrize("op, direction, entry, size", list(_params()))
def test_op(benchmark, record_result, op, direction, entry, size):
    case = _case(op, size)
    if (op, size, entry) not in _CHECKED:  # a wrong result is not worth timing
        formulas.check_against_baseline(case, entry)
        _CHECKED.add((op, size, entry))
    fn = case.callable(entry, direction)
    rounds, iterations = _plan(fn)
    benchmark.group = f"{op} {direction} {size.id}"
    benchmark.extra_info.update(op=op, direction=direction, backend=entry, case=size.id)
    benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=1)
    if benchmark.stats is None:  # --benchmark-disable: ran once, nothing measured
        return
    s = benchmark.stats.stats
    record_result(results.make_row(op, direction, entry, DTYPE, size.id, size.shapes(op), s.median,
                                   iqr_s=s.iqr, min_s=s.min, rounds=s.rounds))
