"""Every search method on NAS-Bench-201 with the same short budget: found architectures, their table
accuracies over seeds, search time and peak memory.

    python benchmarks/bench_methods.py --data ../shared/data                 # CPU, 3 seeds (~20 min, 2 jobs)
    python benchmarks/bench_methods.py --data ../shared/data --methods darts drnas --seeds 0
    python benchmarks/bench_methods.py --data ../shared/data --device cuda --epochs 50 --steps-per-epoch 0 \\
        --init-channels 16 --layers 5 --batch-size 64                        # the papers' scale, on a GPU

Budget (the defaults, identical for every one-shot method): the NB201 supernet at C=8 with 2 cells per
stage, ``--epochs`` 10 epochs of ``--steps-per-epoch`` 20 steps of 32 images from the real CIFAR-10
images of ``cifar10_sample.npz`` (4,000 training images: 2,000 for the weights, 2,000 for the
architecture), architecture steps from the first epoch (``warmup_epochs=0``), each method's own other
defaults (DrNAS: its two progressive stages; DARTS-: linear decay of the auxiliary skip; MAE: on
pc-darts; MSR-DARTS: weights only). The zero-shot methods (``swap-evolution``, ``random``) score
``--cycles`` architectures of the table (``table_only``: their results are always in the table).
b-darts is not run: its broad supernet is a DARTS-space macro-architecture.

Every (method, seed) runs in its own subprocess with one thread (``OMP_NUM_THREADS=1``; ``--jobs``
processes at a time), which reports the found architecture, the search time the engine measured, and
the peak resident set of the process (VmHWM, /proc/self/status: the interpreter, torch, the images,
the model and the search's activations; a zero-shot run, which trains nothing, peaks at ~270 MiB).

Table accuracy: ``nb201_dev.csv`` holds 2,000 of the 15,625 NB201 architectures, so a one-shot result
is often not in it. Then the row gives the mean accuracy of the table's architectures nearest to it
(Hamming distance over the 6 edges) and that distance, marked as an estimate (``table_exact`` false).
``skips`` and ``param_free`` count the skip connections and the parameter-free ops (skip, pools,
none) of the found cell: the collapse signal, known exactly with or without the table.

Results: JSON lines to ``--out`` (default ``results/methods_nb201_<device>.jsonl``), one per
(method, seed), with the environment fields of benchmarks/results.py, and a Markdown summary next to it
(mean +- std over the seeds).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

METHODS = ["darts", "darts-2nd", "pc-darts", "darts-minus", "drnas", "msr-darts", "mae", "swap-evolution", "random"]
ACCURACY_COLUMNS = ("cifar10_test", "cifar100_test", "imagenet16_test")
PARAM_FREE = ("skip_connect", "avg_pool_3x3", "none")


def settings_for(method: str, seed: int, args) -> Dict[str, object]:
    common = dict(space="nb201", method=method, dataset="cifar10_sample", data=str(args.data), seed=seed,
                  device=args.device, quiet=True, nb201_table=str(args.table))
    if method in ("swap-evolution", "random"):
        return dict(common, cycles=args.cycles)
    one_shot = dict(common, batch_size=args.batch_size, init_channels=args.init_channels, layers=args.layers,
                    epochs=args.epochs, warmup_epochs=0, hessian_iters=args.hessian_iters, hessian_batch=32)
    if args.steps_per_epoch:
        one_shot["steps_per_epoch"] = args.steps_per_epoch
    return one_shot


def _peak_rss_bytes() -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def worker(settings: Dict[str, object], out_dir: Path) -> Dict[str, object]:
    """Runs one search in this process; returns what the row needs."""
    import fastnas

    t0 = time.perf_counter()
    result = fastnas.search(**settings, out_dir=str(out_dir))
    wall = time.perf_counter() - t0
    history = result.history
    return {"arch": result.arch, "search_time_s": result.search_time_s, "wall_s": wall,
            "peak_rss_bytes": _peak_rss_bytes(),
            "hessian_eigenvalue": [h.get("hessian_eigenvalue") for h in history] if "epoch" in (history[0] if history else {}) else None,
            "skip_history": [h.get("skip_connects") for h in history] if history and "skip_connects" in history[0] else None}


def nearest_table_accuracy(arch: str, table) -> Dict[str, object]:
    """Exact table row, or the mean over the table's archs at minimum Hamming distance (6 edges)."""
    from fastnas.spaces import parse_arch

    try:
        row = table.lookup(arch)
        return {"table_exact": True, "table_distance": 0, **{k: row[k] for k in ACCURACY_COLUMNS if k in row}}
    except KeyError:
        pass
    target = parse_arch(arch)
    best, rows = 7, []
    for candidate in table.archs:
        d = sum(a != b for a, b in zip(parse_arch(candidate), target))
        if d < best:
            best, rows = d, [candidate]
        elif d == best:
            rows.append(candidate)
    looked = [table.lookup(a) for a in rows]
    return {"table_exact": False, "table_distance": best, "table_neighbours": len(rows),
            **{k: statistics.fmean(r[k] for r in looked) for k in ACCURACY_COLUMNS if k in looked[0]}}


def cell_ops(arch: str) -> List[str]:
    return [token.split("~")[0] for token in arch.split("|") if "~" in token]


def run_one(method: str, seed: int, args) -> Dict[str, object]:
    out_dir = Path(args.runs) / f"{method}-seed{seed}"
    if out_dir.exists():
        import shutil
        shutil.rmtree(out_dir)
    job = {"settings": settings_for(method, seed, args), "out_dir": str(out_dir)}
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True,
                          env=env, cwd=str(ROOT))
    if proc.returncode != 0:
        return {"method": method, "seed": seed, "error": proc.stderr.strip().splitlines()[-1:]}
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    ops = cell_ops(got["arch"])
    print(f"{method:15s} seed {seed}: {got['arch']}  {got['search_time_s']:.1f} s", file=sys.stderr, flush=True)
    return {"method": method, "seed": seed, **got, "skips": ops.count("skip_connect"),
            "param_free": sum(op in PARAM_FREE for op in ops), "settings": job["settings"]}


def summarise(rows: List[Dict[str, object]], methods: List[str]) -> str:
    def cell(values, fmt="{:.2f}"):
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        if len(values) == 1:
            return fmt.format(values[0])
        return f"{fmt.format(statistics.fmean(values))} ± {fmt.format(statistics.stdev(values))}"

    lines = ["| method | seeds | CIFAR-10 test | CIFAR-100 test | ImageNet16 test | in table | skips | param-free ops | "
             "search time (s) | peak RSS (MiB) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for m in methods:
        rs = [r for r in rows if r["method"] == m and "error" not in r]
        if not rs:
            continue
        lines.append(" | ".join([
            f"| {m}", str(len(rs)), *(cell([r.get(k) for r in rs]) for k in ACCURACY_COLUMNS),
            f"{sum(bool(r['table_exact']) for r in rs)}/{len(rs)}", cell([r["skips"] for r in rs], "{:.1f}"),
            cell([r["param_free"] for r in rs], "{:.1f}"), cell([r["search_time_s"] for r in rs], "{:.0f}"),
            cell([r["peak_rss_bytes"] / 2**20 for r in rs if r["peak_rss_bytes"]], "{:.0f}")]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--table", type=Path, default=None, help="NB201 CSV (default: DATA/nb201_dev.csv)")
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--device", default="cpu")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--steps-per-epoch", type=int, default=20, help="0: a full pass over the weight half")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--init-channels", type=int, default=8)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hessian-iters", type=int, default=5)
    p.add_argument("--cycles", type=int, default=100)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--runs", type=Path, default=Path("/tmp/fastnas-bench-methods"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        print(json.dumps(worker(job["settings"], Path(job["out_dir"]))))
        return 0
    args.table = args.table or args.data / "nb201_dev.csv"
    for path in (args.data / "cifar10_sample.npz", args.table):
        if not path.exists():
            print(f"bench_methods: {path} is missing (see ../shared/data/README.md)", file=sys.stderr)
            return 2
    from fastnas.tables import NB201Table
    from results import environment

    table = NB201Table.from_csv(args.table)
    jobs = [(m, s) for s in args.seeds for m in args.methods]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(lambda ms: run_one(ms[0], ms[1], args), jobs))
    env = environment(args.device, "engine epoch_time_s sum (search_time_s)")
    for r in rows:
        if "error" not in r:
            r.update(nearest_table_accuracy(r["arch"], table))
        # the searches ran in workers with one thread each (not this process's setting)
        r.update(env, benchmark="methods_nb201", torch_threads=1, openmp_threads=1, jobs=args.jobs)
    out = args.out or ROOT / "results" / f"methods_nb201_{args.device}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    md = summarise(rows, args.methods)
    out.with_suffix(".md").write_text(md + "\n")
    print(md)
    failed = [r for r in rows if "error" in r]
    for r in failed:
        print(f"FAILED {r['method']} seed {r['seed']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
