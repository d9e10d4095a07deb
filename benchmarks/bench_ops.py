"""Kernel microbenchmarks of the fused ops, as a plain script (no pytest).

    python benchmarks/bench_ops.py --device cpu  [--quick | --sizes network|default|full] [--results FILE]
    python benchmarks/bench_ops.py --device cuda [--quick] [--dtypes float32,bfloat16] [--backends cuda,triton]

For every op (partial_channel_mix, channel_shuffle, edge_normalize), direction (fwd, bwd = backward only,
fwd+bwd), dtype and size it times the baseline (the PC-DARTS formula, benchmarks/formulas.py) and every
backend ``fastnas.ops.available_backends(device, dtype)`` returns, checks each backend against the
baseline first, writes one JSON line per measurement (benchmarks/results.py; default
results/ops_<device>.jsonl or $FASTNAS_RESULTS) and prints the Markdown table (benchmarks/report.py).

CPU: torch.utils.benchmark timers, the entries of a case INTERLEAVED round by round (a shared machine's
load drift then hits them alike; see timing.cpu_interleaved), median per entry. ``triton`` is not
timed on CPU (there it is the Triton interpreter, a test tool).
GPU: triton.testing.do_bench medians (L2 flushed before each run), peak memory of one call above what
was allocated before it (torch.cuda.max_memory_allocated), achieved bandwidth against the copy
bandwidth measured once at start; float32, float16 and bfloat16 where a backend supports them.

Exit status: 0, or 1 when a case failed (error, or a backend disagreeing with the baseline): the other
cases still run and are written.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

_DIRECTIONS = ["fwd", "bwd", "fwd+bwd"]
_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "half": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16", "float64": "float64", "fp64": "float64"}


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true", help="a few sizes, float32 only, short timings")
    p.add_argument("--sizes", choices=("quick", "network", "default", "full"), default=None,
                   help="size set (formulas.cpu_sizes / gpu_sizes); --quick implies quick")
    p.add_argument("--batch", type=int, default=None, help="batch of the size set (default 32 CPU, 256 GPU); "
                                                           "the judged case B=64 C=64 16x16 is always added")
    p.add_argument("--dtypes", default=None, help="comma list (default: float32 on CPU; float32,float16,bfloat16 "
                                                  "on GPU; --quick: float32)")
    p.add_argument("--ops", default=None, help="comma list of ops (default: all)")
    p.add_argument("--backends", default=None, help="comma list of backends to time besides the baseline "
                                                    "(default: every available one)")
    p.add_argument("--directions", default="fwd,bwd,fwd+bwd")
    p.add_argument("--results", default=None, help="results file (default $FASTNAS_RESULTS or "
                                                   "results/ops_<device>.jsonl)")
    p.add_argument("--append", action="store_true", help="append to the results file instead of replacing it")
    p.add_argument("--report", default=None, help="also write the Markdown table to this file")
    p.add_argument("--min-run-time", type=float, default=None, help="CPU: seconds of interleaved rounds per case "
                                                                    "and direction, all entries together (default 0.25, --quick 0.1)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    if args.device == "cuda" and os.environ.pop("TRITON_INTERPRET", None):
        print("bench_ops: TRITON_INTERPRET was set; unset for the GPU run (it would time the interpreter)",
              file=sys.stderr)

    import torch
    import formulas
    import report
    import results
    import timing
    from fastnas.ops import available_backends

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("bench_ops: --device cuda but torch sees no CUDA device "
              f"(torch {torch.__version__}, CUDA {torch.version.cuda})", file=sys.stderr)
        return 2
    mode = "quick" if args.quick else (args.sizes or "default")
    if device == "cpu":
        if mode == "full":
            print("bench_ops: --sizes full is the GPU grid; on the CPU the whole grid is --sizes default",
                  file=sys.stderr)
            return 2
        sizes = formulas.cpu_sizes(mode, batch=args.batch or 32)
        dtype_names = (args.dtypes or "float32").split(",")
    else:
        sizes = formulas.gpu_sizes(mode, batch=args.batch or 256)
        dtype_names = (args.dtypes or ("float32" if args.quick else "float32,float16,bfloat16")).split(",")
    ops = [o.strip() for o in args.ops.split(",")] if args.ops else list(formulas.OPS)
    directions = [d.strip() for d in args.directions.split(",")]
    wanted = {b.strip() for b in args.backends.split(",")} if args.backends else None
    from fastnas.ops.backends import BACKENDS

    # a typo must not run an empty benchmark and replace the results file with nothing
    for what, given, known in (("--ops", ops, list(formulas.OPS)), ("--directions", directions, _DIRECTIONS),
                               ("--dtypes", [d.strip().lower() for d in dtype_names], list(_DTYPES)),
                               ("--backends", sorted(wanted or ()), [b for b in BACKENDS if b != "torch"])):
        bad = [g for g in given if g not in known]
        if bad:
            print(f"bench_ops: {what}: unknown {bad}; choose from {', '.join(known)}", file=sys.stderr)
            return 2
    if args.batch is not None and args.batch < 1:
        print(f"bench_ops: --batch must be >= 1, got {args.batch}", file=sys.stderr)
        return 2
    dtypes = [getattr(torch, _DTYPES[d.strip().lower()]) for d in dtype_names if d.strip()]
    min_run_time = args.min_run_time or (0.1 if args.quick else 0.25)
    warmup_ms, rep_ms = (10, 40) if args.quick else (25, 100)

    timer = ("triton.testing.do_bench (median, L2 flushed)" if device == "cuda" else
             "torch.utils.benchmark.Timer, entries interleaved (median of rounds)")
    env = results.environment(device, timer)
    copy_bw = results.measure_copy_bandwidth(device)
    print(f"bench_ops: {env['device']}; torch {env['torch']}, triton {env['triton']}, fastnas {env['fastnas']} "
          f"({env['fastnas_path']}); copy bandwidth {copy_bw / 1e9:.0f} GB/s", file=sys.stderr)

    rows, errors = [], []
    started = time.time()
    for dtype in dtypes:
        entries = [formulas.BASELINE] + [b for b in available_backends(device, dtype)
                                         if not (device == "cpu" and b == "triton")
                                         and (wanted is None or b in wanted)]
        print(f"bench_ops: {dtype}: timing {', '.join(entries)}", file=sys.stderr)
        for size in sizes:
            for op in ops:
                try:
                    case = formulas.make_case(op, size, dtype, device)
                except Exception as exc:  # e.g. out of memory
                    errors.append(f"{op} {size.id} {dtype}: inputs: {exc!r}")
                    continue
                good = []
                for entry in entries:
                    try:
                        formulas.check_against_baseline(case, entry)
                        good.append(entry)
                    except Exception as exc:
                        errors.append(f"{op} {size.id} {dtype} {entry}: {exc}")
                        print(f"bench_ops: SKIPPED {entry}: {exc}", file=sys.stderr)
                for direction in directions:
                    try:
                        rows += _measure(case, good, direction, device, env, copy_bw, min_run_time,
                                         warmup_ms, rep_ms, timing, results)
                    except Exception as exc:
                        errors.append(f"{op} {direction} {size.id} {dtype}: {exc!r}")
                        traceback.print_exc()
                del case
                if device == "cuda":
                    torch.cuda.empty_cache()
                done = [r for r in rows if r["case"] == size.id and r["op"] == op and r["dtype"] == str(dtype)[6:]]
                print(f"bench_ops: {time.time() - started:6.1f}s {op:<20} {size.id:<18} {str(dtype)[6:]:<9} "
                      + " ".join(f"{r['direction']}/{r['backend']}={r['median_ms']:.3f}ms" for r in done),
                      file=sys.stderr)

    results.add_ratios(rows)
    path = Path(args.results) if args.results else results.default_path(device)
    if not rows:
        print(f"bench_ops: no case produced a row; {path} is left as it was:\n  " + "\n  ".join(errors),
              file=sys.stderr)
        return 1
    results.write_rows(path, rows, append=args.append)
    text = report.render(rows)
    print(text)
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(text)
    print(f"bench_ops: {len(rows)} rows -> {path} ({time.time() - started:.0f}s)", file=sys.stderr)
    if errors:
        print(f"bench_ops: {len(errors)} case(s) FAILED:\n  " + "\n  ".join(errors), file=sys.stderr)
        return 1
    return 0


def _measure(case, entries, direction, device, env, copy_bw, min_run_time, warmup_ms, rep_ms, timing, results):
    import torch

    size, op = case.size, case.op
    shapes = size.shapes(op)
    rows = []
    if device == "cpu":
        fns = {e: case.callable(e, direction) for e in entries}
        per_call = timing.cpu_interleaved(fns, min_run_time=min_run_time)
        for e in entries:
            s = timing.summary(per_call[e])
            rows.append(results.make_row(op, direction, e, case.dtype, size.id, shapes, s["median"],
                                         iqr_s=s["iqr"], min_s=s["min"], rounds=s["rounds"], copy_bw=copy_bw,
                                         env=env))
        return rows
    for e in entries:
        fn = case.callable(e, direction)  # bwd: runs the forward once here, outside the timing
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        del out
        ms = timing.cuda_median_ms(fn, warmup=warmup_ms, rep=rep_ms)
        rows.append(results.make_row(op, direction, e, case.dtype, size.id, shapes, ms * 1e-3,
                                     peak_mem_bytes=peak, copy_bw=copy_bw, env=env))
        del fn
    return rows


if __name__ == "__main__":
    sys.exit(main())
