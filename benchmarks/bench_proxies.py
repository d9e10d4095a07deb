"""Zero-cost proxies: architectures scored per second, fastnas against the papers' code, same run.

    python benchmarks/bench_proxies.py --device cpu --archs 8                    # every proxy with a reference
    python benchmarks/bench_proxies.py --device cpu --archs 8 --proxies swap reg_swap nwot --swap-repeats 4
    python benchmarks/bench_proxies.py --device cuda --archs 50 --proxies nwot
    python benchmarks/bench_proxies.py --data synthetic ...    # no shared data (e.g. on a GPU machine)

Architectures: ``--archs`` NB201 archs sampled (``--seed``) from shared/data/nb201_dev.csv; images: the
real CIFAR-10 sample (shared/data/cifar10_sample.npz), one seeded draw, normalised, each proxy given the
first ``batch_size`` of them (its registered protocol). ``--data synthetic``: archs drawn uniformly from
the 15,625 of NB201 and synthetic images instead (throughput barely depends on the images; every row
records which data it used). References: benchmarks/reference_proxies.py
(swap, reg_swap, nwot) and every other benchmarks/reference_*proxies.py present; a proxy is measured
when it is both registered in fastnas and in a reference table.

Per (arch, proxy) both sides get a network built from the same ``torch.manual_seed`` and the same RNG
state for their own draws; network building is not timed. The two sides alternate which goes first
from one arch to the next, so load from other processes on a shared machine hits both alike. CUDA:
synchronised before and after every call.

Output: a table (archs/s each side, ratio = fastnas / reference archs/s, > 1 is faster, and the largest
relative difference between the two sides' scores: ~1e-16 for NWOT; for SWAP the two sides draw their
N(0, 1) re-initialisations differently (see reference_proxies.published_reinit), so their scores agree
in distribution only, +-10-20 % per arch at 4 repeats) and one JSON row per proxy in
``results/proxies_<device type>.jsonl`` (``--out``), with the environment fields of
benchmarks/results.py (device, versions, commit).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
sys.path.insert(0, str(BENCH_DIR))

import results  # noqa: E402

SWAP_PROXIES = ("swap", "reg_swap")


def reference_table() -> Dict[str, Callable[..., float]]:
    """Union of the REFERENCE_PROXIES dicts of benchmarks/reference_*proxies.py (reference_proxies.py,
    and the gradient and structural proxies' modules where they exist)."""
    table: Dict[str, Callable[..., float]] = {}
    for path in sorted(BENCH_DIR.glob("reference_*proxies.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        table.update(module.REFERENCE_PROXIES)
    return table


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], float], device: torch.device):
    _sync(device)
    t = time.perf_counter()
    value = fn()
    _sync(device)
    return float(value), time.perf_counter() - t


def bench_proxy(name: str, reference: Callable[..., float], archs: List[str], data, device: torch.device,
                settings: Dict[str, object], seed: int) -> Dict[str, object]:
    """Times ``name`` over ``archs`` on both sides; returns seconds per side and the scores."""
    from fastnas.nn.networks import NB201Network
    from fastnas.proxies import get_proxy

    proxy = get_proxy(name)
    images, labels = data.batch(proxy.batch_size) if proxy.batch_size else (data.images[:1], data.labels[:1])
    labels = labels if proxy.uses_labels else None
    seconds = {"fastnas": 0.0, "reference": 0.0}
    scores = {"fastnas": [], "reference": []}
    for i, arch in enumerate(archs):
        sides = ("fastnas", "reference") if i % 2 == 0 else ("reference", "fastnas")
        for side in sides:
            torch.manual_seed(seed)
            net = NB201Network(arch, num_classes=data.num_classes).to(device)
            fn = proxy if side == "fastnas" else reference
            torch.manual_seed(seed + 1)
            value, dt = _timed(lambda: fn(net, images, labels, **settings), device)
            seconds[side] += dt
            scores[side].append(value)
    return {"seconds": seconds, "scores": scores}


def _max_rel_diff(a: List[float], b: List[float]) -> Optional[float]:
    diffs = [abs(x - y) / max(abs(y), 1e-30) for x, y in zip(a, b) if x == x and y == y and abs(y) != float("inf")]
    return max(diffs) if diffs else None


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    p.add_argument("--archs", type=int, default=8, help="NB201 archs per proxy (default 8)")
    p.add_argument("--proxies", nargs="+", help="default: every proxy with a reference")
    p.add_argument("--swap-repeats", type=int,
                   help="SWAP re-initialisations per arch, both sides (default: the protocol's 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=str(SHARED_DATA), help="folder of cifar10_sample.npz and nb201_dev.csv, "
                                                            "or 'synthetic' (random NB201 archs, synthetic images)")
    p.add_argument("--out", help="results file (default results/proxies_<device type>.jsonl)")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from fastnas.devices import resolve_device

    try:
        device = resolve_device(args.device, "--device")
    except (TypeError, ValueError) as e:
        print(f"bench_proxies: {e}", file=sys.stderr)
        return 2
    if args.archs < 1:
        print(f"bench_proxies: --archs must be >= 1, got {args.archs}", file=sys.stderr)
        return 2
    synthetic = args.data == "synthetic"
    data_dir = Path(args.data)
    for needed in () if synthetic else ("cifar10_sample.npz", "nb201_dev.csv"):
        if not (data_dir / needed).is_file():
            print(f"bench_proxies: {data_dir / needed} is missing (the real data this benchmark scores; "
                  f"--data synthetic runs without it)", file=sys.stderr)
            return 2
    from fastnas.proxies import available_proxies, get_proxy
    from fastnas.proxies.score import load_proxy_data
    from fastnas.tables import NB201Table

    refs = reference_table()
    names = args.proxies or [n for n in refs if n in available_proxies()]
    missing = [n for n in names if n not in refs or n not in available_proxies()]
    if missing:
        print(f"bench_proxies: no fastnas proxy or no reference for {missing}; measurable: "
              f"{[n for n in refs if n in available_proxies()]}", file=sys.stderr)
        return 2
    batch = max(get_proxy(n).batch_size for n in names)
    if synthetic:
        from fastnas.spaces import NB201_NUM_ARCHS, arch_from_ordinal, arch_to_str

        picks = np.random.default_rng(args.seed).choice(NB201_NUM_ARCHS, size=args.archs, replace=False)
        archs = [arch_to_str(arch_from_ordinal(int(i))) for i in picks]
        data = load_proxy_data("synthetic", n=max(batch, 1), seed=args.seed, device=device)
    else:
        archs = NB201Table.from_csv(data_dir / "nb201_dev.csv").sample(args.archs, seed=args.seed)
        data = load_proxy_data("cifar10_sample", root=data_dir, n=max(batch, 1), seed=args.seed, device=device)
    env = results.environment(str(device), timer="time.perf_counter per arch, summed" +
                              (", CUDA synchronised" if device.type == "cuda" else ""))

    rows = []
    print(f"{'proxy':<12}{'archs':>6}{'fastnas archs/s':>17}{'reference archs/s':>19}{'ratio':>8}{'max rel diff':>14}")
    for name in names:
        settings = {"repeats": args.swap_repeats} if (name in SWAP_PROXIES and args.swap_repeats) else {}
        out = bench_proxy(name, refs[name], archs, data, device, settings, args.seed)
        fast = len(archs) / out["seconds"]["fastnas"]
        ref = len(archs) / out["seconds"]["reference"]
        diff = _max_rel_diff(out["scores"]["fastnas"], out["scores"]["reference"])
        print(f"{name:<12}{len(archs):>6}{fast:>17.3f}{ref:>19.3f}{fast / ref:>8.2f}"
              f"{'-' if diff is None else f'{diff:.2e}':>14}")
        rows.append({
            "benchmark": "proxies",
            "proxy": name,
            "archs": len(archs),
            "space": "nb201",
            "data": "synthetic" if synthetic else "cifar10_sample",
            "batch_size": get_proxy(name).batch_size,
            "settings": {**dict(get_proxy(name).defaults), **settings},
            "archs_per_s_fastnas": fast,
            "archs_per_s_reference": ref,
            "ratio": fast / ref,
            "max_rel_score_diff": diff,
            "seconds_fastnas": out["seconds"]["fastnas"],
            "seconds_reference": out["seconds"]["reference"],
            **env,
        })
    out_path = Path(args.out) if args.out else REPO_ROOT / "results" / f"proxies_{device.type}.jsonl"
    results.write_rows(out_path, rows)
    print(f"wrote {len(rows)} rows to {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
