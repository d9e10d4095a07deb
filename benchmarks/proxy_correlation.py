"""Zero-cost proxies against NAS-Bench-201 ground truth, recorded as a results file.

    python benchmarks/proxy_correlation.py --archs 100 --sample-seed 2026             # every proxy, ~20 min
    python benchmarks/proxy_correlation.py --archs 100 --sample-seed 7 --proxies grasp,snip
    python benchmarks/proxy_correlation.py --covered --proxies grasp,snip    # every arch the published file has
    python benchmarks/proxy_correlation.py --covered --archs 600 --sample-seed 1 --proxies grasp --set grasp.repeats=3

What ``fastnas score --space nb201 --table ../shared/data/nb201_dev.csv --archs N --sample-seed S
--data ../shared/data --published ../shared/data/nb201_zc_cifar10_dev.csv`` prints, written as rows:

- one ``"kind": "correlation"`` row per (proxy, accuracy column): signed Spearman and Kendall over the N
  sampled archs (real CIFAR-10 images, every proxy at its registered protocol), the proxy's archs/s;
- one ``"kind": "published"`` row per (proxy, accuracy column) for the proxies NAS-Bench-Suite-Zero
  published (``nb201_zc_cifar10_dev.csv``): on the sampled archs that file covers, the Spearman of
  fastnas's score and of the published value with the column, their difference, and the Spearman
  between the two (parity).

Rows go to ``results/proxy_correlation_cpu.jsonl`` (``--out``) with the environment fields of
benchmarks/results.py (device, versions, commit), the sample seed and the arch count. The sample is the
draw of ``fastnas score --table`` (:func:`fastnas.proxies.evaluate.evaluate`), so a row can be re-made
with that command. ``--covered`` draws only among the archs the published file covers (all of them
without ``--archs``): the comparison with the published values then has all its archs, the standard
error of a Spearman correlation over the 1,191 of them is about 0.02 instead of 0.1 over 59.
``--checkpoint FILE`` journals the scores (:mod:`fastnas.proxies.journal`) so that a killed run resumes.
Skips (exit 0, saying why) when ../shared/data is absent.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
SHARED_DATA = BENCH_DIR.parent.parent / "shared" / "data"
sys.path.insert(0, str(BENCH_DIR))

import results  # noqa: E402
from fastnas.cli import _setting  # noqa: E402  (the parser of fastnas score --set)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", type=int, default=None, help="archs to sample (default: 100; all with --covered)")
    p.add_argument("--covered", action="store_true",
                   help="sample only among the archs nb201_zc_cifar10_dev.csv covers")
    p.add_argument("--sample-seed", type=int, default=2026)
    p.add_argument("--seed", type=int, default=0, help="initialisations and image draw")
    p.add_argument("--proxies", default=None, help="comma-separated (default: every registered proxy)")
    p.add_argument("--set", dest="settings", type=_setting, action="append", default=[], metavar="PROXY.KEY=VALUE",
                   help="a proxy setting, as fastnas score --set takes it (e.g. grasp.repeats=3)")
    p.add_argument("--data", default=str(SHARED_DATA))
    p.add_argument("--out", default=str(BENCH_DIR.parent / "results" / "proxy_correlation_cpu.jsonl"))
    p.add_argument("--checkpoint", default=None,
                   help="score journal: a killed run rerun with the same arguments scores only what it lacks")
    args = p.parse_args(argv)

    data = Path(args.data)
    table_path, published_path = data / "nb201_dev.csv", data / "nb201_zc_cifar10_dev.csv"
    for f in (table_path, published_path, data / "cifar10_sample.npz"):
        if not f.is_file():
            print(f"skipped: {f} not found (the shared NAS-Bench-201 / CIFAR-10 data is not on this machine)")
            return 0

    from fastnas.proxies import available_proxies
    from fastnas.proxies.evaluate import (compare_with_published, evaluate, format_published, format_report,
                                          load_published, truth_of)

    proxies = args.proxies.split(",") if args.proxies else available_proxies()
    settings = {}
    for proxy, name, value in args.settings:
        settings.setdefault(proxy, {})[name] = value
    published = load_published(published_path, proxies)
    n_archs = args.archs if args.archs is not None or args.covered else 100
    scores, rows, wall = evaluate(table_path, "nb201", n_archs, proxies, data=str(data), seed=args.seed,
                                  sample_seed=args.sample_seed, device="cpu", progress=True, settings=settings,
                                  among=published[0] if args.covered else None, checkpoint=args.checkpoint)
    print(format_report(scores, rows, wall))
    cmp_rows, covered = compare_with_published(scores, truth_of(table_path, scores.archs), published)
    print(format_published(cmp_rows, covered, len(scores), published_path))

    env = results.environment("cpu", timer="time.perf_counter (wall, whole proxy over all archs)")
    common = {"bench": "proxy_correlation", "table": table_path.name, "covered_only": args.covered,
              "sample_seed": args.sample_seed,
              "seed": args.seed, "archs": len(scores), "settings": settings, **env}
    out = [{**common, "kind": "correlation", **r, "archs_per_second": scores.archs_per_second(r["proxy"])}
           for r in rows]
    out += [{**common, "kind": "published", "published_file": published_path.name, "covered": covered, **r}
            for r in cmp_rows]
    for r in out:  # NaN is not JSON
        for k, v in r.items():
            if isinstance(v, float) and not np.isfinite(v):
                r[k] = None
    print(f"{len(out)} rows appended to {results.write_rows(args.out, out, append=True)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
