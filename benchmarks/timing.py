"""Timers of the plain benchmark script: triton.testing.do_bench on GPU, torch.utils.benchmark on CPU.

Neither touches CUDA at import time.
"""
from __future__ import annotations

import inspect
import statistics
from typing import Callable, Dict, List, Sequence

import torch


def cuda_median_ms(fn: Callable[[], object], warmup: int = 25, rep: int = 100) -> float:
    """Median milliseconds of ``fn`` by ``triton.testing.do_bench`` (L2 flushed before every run).

    The signature moved between Triton releases: 3.0/3.1 take ``fast_flush`` (removed in 3.2) and
    compute the summary with torch (``torch.median`` of an even count is the lower middle); 3.2+
    (3.6 on the GPU image, 3.9 here) take ``return_mode`` in {min, max, mean, median, all} and summarise
    in Python (``statistics.median``). 2.x has ``percentiles`` and returns (median, p20, p80). We pass
    only the arguments the installed version declares, so none of them warns or fails.
    """
    from triton.testing import do_bench

    params = inspect.signature(do_bench).parameters
    kwargs = {"warmup": warmup, "rep": rep}
    if "return_mode" in params:
        kwargs["return_mode"] = "median"
    elif "quantiles" in params:
        kwargs["quantiles"] = [0.5]
    result = do_bench(fn, **kwargs)
    if isinstance(result, (list, tuple)):  # 2.x: (median, p20, p80); quantiles=[0.5] may give [median]
        result = result[0]
    return float(result)


def cpu_interleaved(fns: Dict[str, Callable[[], object]], min_run_time: float = 0.3,
                    max_rounds: int = 60, min_rounds: int = 7, max_time: float = None) -> Dict[str, List[float]]:
    """Per-call seconds of every callable, measured INTERLEAVED with ``torch.utils.benchmark.Timer``.

    On a shared CPU the load changes from second to second; timing every entry of a case in the same
    rounds (entry order rotated each round) spreads such drift over all of them evenly, so the ratios
    to the baseline survive it even when absolute times do not. Each round times a block of calls sized
    to ~5 ms per entry (timer overhead negligible). Rounds stop after ``max_time`` seconds (default
    4 x min_run_time, at least 1 s) once 3 are done: under a load burst the blocks sized from the warm-up
    estimate can take 50x longer, and a benchmark must still end. Returns
    ``{name: [per-call seconds per round]}``.
    """
    import time
    from torch.utils.benchmark import Timer

    threads = torch.get_num_threads()
    timers = {k: Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads) for k, fn in fns.items()}
    per_call: Dict[str, float] = {}
    for name, t in timers.items():  # warm up and size the blocks
        t.timeit(2)
        est = min(t.timeit(1).median, t.timeit(1).median)
        per_call[name] = max(est, 1e-7)
    numbers = {k: max(1, int(5e-3 / v)) for k, v in per_call.items()}
    round_cost = sum(numbers[k] * per_call[k] for k in fns)
    rounds = int(min(max_rounds, max(min_rounds, min_run_time / max(round_cost, 1e-9))))
    names: Sequence[str] = list(fns)
    out: Dict[str, List[float]] = {k: [] for k in names}
    deadline = time.perf_counter() + (max_time if max_time is not None else max(1.0, 4 * min_run_time))
    for r in range(rounds):
        if r >= 3 and time.perf_counter() > deadline:
            break
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order:
            m = timers[k].timeit(numbers[k])
            out[k].append(m.median)  # one block: mean per call over the block
    return out


def summary(times: List[float]) -> Dict[str, float]:
    """median / IQR / min of per-call seconds."""
    s = sorted(times)
    if len(s) >= 4:
        q = statistics.quantiles(s, n=4)
        iqr = q[2] - q[0]
    else:
        iqr = 0.0
    return {"median": statistics.median(s), "iqr": iqr, "min": s[0], "rounds": len(s)}
