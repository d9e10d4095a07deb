"""epsinas on NAS-Bench-201: which archs the published float32 evaluation leaves NaN, and how each
pair of constants ranks the rest. Backs the "not 0.84" analysis in docs/proxies.md.

    python benchmarks/epsinas_weights.py --archs 90 --sample-seed 11            # float32 table, ~7 min
    python benchmarks/epsinas_weights.py --archs 90 --sample-seed 11 --exact    # + fastnas's exact score

For ``--archs`` NB201 archs sampled (``--sample-seed``, :meth:`fastnas.tables.NB201Table.sample`, the draw
of ``fastnas score --table``) from shared/data/nb201_dev.csv, one batch of 256
real CIFAR-10 images (the protocol's), the network (num_classes=10, BN on batch statistics) is run in
plain float32 with every weight set to each constant of ``--weights`` (biases 0), as the published
code does. For every pair (low, high) of constants the published formula
(:func:`fastnas.proxies.epsinas.epsinas_score`) is applied to the first logit column; a pair is NaN for
an arch when either forward is not finite or has no spread (what makes the published code return NaN).
Printed per pair: the NaN fraction, Spearman with CIFAR-10 test accuracy over the finite archs (what
the published correlation is computed over: its ``compute_stats`` drops NaN), and over all archs with
NaN ranked lowest. ``--exact`` also scores every arch with the registered ``epsinas`` (block floating
point, finite everywhere) and reports its Spearman over all archs and within
the two groups. Rows go to ``results/epsinas_weights_cpu.jsonl`` with the environment fields.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

BENCH_DIR = Path(__file__).resolve().parent
SHARED_DATA = BENCH_DIR.parent.parent / "shared" / "data"
sys.path.insert(0, str(BENCH_DIR))

import results  # noqa: E402


def float32_first_logits(arch: str, images: torch.Tensor, weights):
    """{w: (B,) float64 first-logit column of the plain float32 forward at constant weight w}."""
    from fastnas.nn.networks import NB201Network
    from fastnas.proxies.epsinas import constant_init_

    net = NB201Network(arch, num_classes=10).train()
    out = {}
    for w in weights:
        constant_init_(net, w)
        with torch.no_grad():
            logits = net(images)
        out[w] = (logits[0] if isinstance(logits, tuple) else logits)[:, 0].double()
    return out


def published_score(y1: torch.Tensor, y2: torch.Tensor) -> float:
    """The formula on float32 outputs, NaN where the published code gets NaN (non-finite or flat)."""
    from fastnas.proxies.epsinas import epsinas_score

    for y in (y1, y2):
        if not bool(torch.isfinite(y).all()) or float(y.max() - y.min()) == 0.0:
            return math.nan
    return epsinas_score(y1, y2)


def _fmt(value) -> str:
    """A number to 3 decimals, or n/a (a group with no arch, or too few to rank)."""
    return "n/a" if value is None or value != value else f"{value:.3f}"


def spearman(x, y) -> float:
    return float(spearmanr(x, y)[0]) if len(x) > 2 else math.nan


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", type=int, default=90)
    p.add_argument("--sample-seed", type=int, default=11)
    p.add_argument("--weights", type=float, nargs="+", default=[1e-7, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    p.add_argument("--exact", action="store_true", help="also score with fastnas's exact epsinas (slow)")
    p.add_argument("--data", default=str(SHARED_DATA))
    p.add_argument("--out", default=str(BENCH_DIR.parent / "results" / "epsinas_weights_cpu.jsonl"))
    args = p.parse_args(argv)

    from fastnas.nn.networks import NB201Network
    from fastnas.proxies import get_proxy
    from fastnas.proxies.score import load_proxy_data
    from fastnas.tables import NB201Table

    path = Path(args.data) / "nb201_dev.csv"
    if not path.exists():
        print(f"skipped: {path} not found (needs ../shared/data)")
        return 0
    table = NB201Table.from_csv(path)
    pick = table.sample(args.archs, seed=args.sample_seed)
    images = load_proxy_data(args.data, n=256, seed=0).images[:256]
    acc = np.array([table.lookup(arch)["cifar10_test"] for arch in pick])

    t0 = time.perf_counter()
    outputs = [float32_first_logits(arch, images, args.weights) for arch in pick]
    exact = None
    if args.exact:
        proxy = get_proxy("epsinas")
        exact = np.array([proxy(NB201Network(arch, num_classes=10), images) for arch in pick])
    seconds = time.perf_counter() - t0

    env = results.environment("cpu", "perf_counter")
    out_rows = []
    print(f"{args.archs} NB201 archs (sample seed {args.sample_seed}), batch 256, {seconds:.0f} s")
    print(f"{'low':>8} {'high':>8} {'NaN':>6} {'rho finite':>11} {'rho all (NaN lowest)':>21}")
    for i, lo in enumerate(args.weights):
        for hi in args.weights[i + 1:]:
            s = np.array([published_score(o[lo], o[hi]) for o in outputs])
            finite = np.isfinite(s)
            row = {"benchmark": "epsinas_weights", "archs": args.archs, "sample_seed": args.sample_seed,
                   "batch_size": 256, "low": lo, "high": hi, "nan_fraction": float(np.mean(~finite)),
                   "spearman_finite": spearman(s[finite], acc[finite]),
                   "spearman_all_nan_lowest": spearman(np.where(finite, s, -1.0), acc),
                   "mean_acc_nan": float(acc[~finite].mean()) if (~finite).any() else None,
                   "mean_acc_finite": float(acc[finite].mean()) if finite.any() else None}
            if exact is not None and (lo, hi) == (1e-7, 1.0):
                row.update({"spearman_exact_all": spearman(exact, acc),
                            "spearman_exact_finite_group": spearman(exact[finite], acc[finite]),
                            "spearman_exact_nan_group": spearman(exact[~finite], acc[~finite]),
                            "median_exact_nan_group": float(np.median(exact[~finite])) if (~finite).any() else None,
                            "median_exact_finite_group": float(np.median(exact[finite])) if finite.any() else None})
            out_rows.append({**row, **env})
            print(f"{lo:8.0e} {hi:8.0e} {row['nan_fraction']:6.2f} {row['spearman_finite']:11.3f} "
                  f"{row['spearman_all_nan_lowest']:21.3f}")
    for row in out_rows:
        if "spearman_exact_all" in row:
            f = {k: _fmt(v) for k, v in row.items() if k.startswith(("spearman", "median", "mean_acc"))}
            print(f"fastnas exact (1e-7, 1): Spearman over all {f['spearman_exact_all']}; within the published-finite "
                  f"archs {f['spearman_exact_finite_group']}, within the published-NaN archs "
                  f"{f['spearman_exact_nan_group']}; median score {f['median_exact_finite_group']} (finite) vs "
                  f"{f['median_exact_nan_group']} (NaN); mean accuracy {f['mean_acc_finite']} vs {f['mean_acc_nan']}")
    print(f"wrote {len(out_rows)} rows to {results.write_rows(args.out, out_rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
