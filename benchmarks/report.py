"""Turns results files (JSON lines, benchmarks/results.py) into Markdown tables.

    python benchmarks/report.py results/ops_cpu.jsonl [more.jsonl ...] [-o report.md]

Per run (device + timestamp): a header with the environment, then one table per dtype with the ratios
first (baseline median / backend median: > 1 means faster than the baseline), then the medians; on
runs that recorded them, a second table with achieved bandwidth (byte model in results.py), its
fraction of the measured copy bandwidth, and peak memory.
"""
from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import BASELINE, read_rows  # noqa: E402

_DIR_ORDER = {"fwd": 0, "bwd": 1, "fwd+bwd": 2}
_OP_ORDER = {"partial_channel_mix": 0, "channel_shuffle": 1, "edge_normalize": 2}


def _fmt(value, spec: str, none: str = "–") -> str:
    return none if value is None else format(value, spec)


def _ratio(value) -> str:
    if value is None:
        return "–"
    text = f"{value:.2f}x"
    return f"**{text}**" if value >= 1.0 else text


def _backends(rows: List[Dict]) -> List[str]:
    seen = OrderedDict()
    for preferred in ("cpu", "cuda", "triton", "torch"):
        if any(r["backend"] == preferred for r in rows):
            seen[preferred] = None
    for r in rows:
        if r["backend"] != BASELINE:
            seen.setdefault(r["backend"], None)
    return list(seen)


def _header(row: Dict) -> str:
    parts = [
        f"device: {row.get('device')}",
        f"torch {row.get('torch')}" + (f" (CUDA {row['cuda']})" if row.get("cuda") else ""),
        f"triton {row.get('triton')}",
        f"python {row.get('python')}",
        f"fastnas {row.get('fastnas')}",
        f"commit {row.get('commit')}",
        f"threads: torch {row.get('torch_threads')}, OpenMP {row.get('openmp_threads')}",
        f"timer: {row.get('timer')}",
        f"{row.get('timestamp')}",
    ]
    if row.get("copy_bandwidth_GBps"):
        parts.append(f"copy bandwidth {row['copy_bandwidth_GBps']:.0f} GB/s (read+write)")
    return "; ".join(parts)


def _sort_key(case_order):
    def key(k):
        op, direction, case = k
        return (_OP_ORDER.get(op, 9), op, _DIR_ORDER.get(direction, 9), case_order.get(case, 0))
    return key


def render_run(rows: List[Dict]) -> str:
    out = [f"### {rows[0].get('device_type', '?')} run {rows[0].get('run_id', '')}", "", _header(rows[0]), ""]
    loads = [r["load_1m"] for r in rows if r.get("load_1m") is not None]
    if loads and rows[0].get("device_type") == "cpu":
        out += [f"1-minute load average during the run: {min(loads):.1f} to {max(loads):.1f} "
                f"(this benchmark itself: up to {rows[0].get('torch_threads')}); more means another process "
                "shared the CPUs and absolute times are noisy.", ""]
    backends = _backends(rows)
    case_order = {}  # sizes in the order they were measured (small to large, judged case last)
    for r in rows:
        case_order.setdefault(r["case"], len(case_order))
    for dtype in OrderedDict((r["dtype"], None) for r in rows):
        sub = [r for r in rows if r["dtype"] == dtype]
        cells: Dict = OrderedDict()
        for r in sub:
            cells.setdefault((r["op"], r["direction"], r["case"]), {})[r["backend"]] = r
        keys = sorted(cells, key=_sort_key(case_order))
        cols = ["op", "dir", "case"] + [f"{b} ×" for b in backends] + [f"{BASELINE} ms"] + [f"{b} ms" for b in backends]
        out += [f"**{dtype}**: speed-up vs the baseline (baseline median / backend median; > 1 is faster), "
                "then medians", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for k in keys:
            c = cells[k]
            line = [k[0], k[1], k[2]]
            line += [_ratio(c[b]["ratio_vs_baseline"]) if b in c else "" for b in backends]
            line += [_fmt(c[BASELINE]["median_ms"], ".3f") if BASELINE in c else ""]
            line += [_fmt(c[b]["median_ms"], ".3f") if b in c else "" for b in backends]
            out.append("| " + " | ".join(line) + " |")
        out.append("")
        if any(r.get("peak_mem_bytes") is not None for r in sub):
            entries = [BASELINE] + backends
            cols = ["op", "dir", "case", "MB moved"] + [f"{e} GB/s (% copy)" for e in entries] + \
                   [f"{e} peak MB" for e in entries]
            out += [f"**{dtype}**: achieved bandwidth (byte model: benchmarks/results.py) and peak memory "
                    "allocated above the inputs", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            for k in keys:
                c = cells[k]
                any_row = next(iter(c.values()))
                line = [k[0], k[1], k[2], f"{any_row['bytes_moved'] / 1e6:.1f}"]
                for e in entries:
                    r = c.get(e)
                    if r is None or r.get("bandwidth_GBps") is None:
                        line.append("")
                    else:
                        frac = r.get("bw_fraction_of_copy")
                        line.append(f"{r['bandwidth_GBps']:.0f}" + (f" ({100 * frac:.0f}%)" if frac else ""))
                for e in entries:
                    r = c.get(e)
                    pm = None if r is None else r.get("peak_mem_bytes")
                    line.append("" if pm is None else f"{pm / 2**20:.1f}")
                out.append("| " + " | ".join(line) + " |")
            out.append("")
    return "\n".join(out)


def render(rows: List[Dict]) -> str:
    runs: Dict = OrderedDict()
    for r in rows:
        runs.setdefault(r.get("run_id"), []).append(r)
    return "\n".join(render_run(rs) for rs in runs.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="results files (JSON lines)")
    parser.add_argument("-o", "--output", help="write the Markdown here (default: stdout)")
    args = parser.parse_args(argv)
    parts = []
    for f in args.files:
        if not Path(f).exists():
            print(f"report.py: {f} does not exist; skipped", file=sys.stderr)
            continue
        rows = read_rows(f)
        parts.append(f"## {f}\n\n" + (render(rows) if rows else "(empty)\n"))
    text = "\n".join(parts)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
    else:
        print(text)
    return 0 if parts else 1


if __name__ == "__main__":
    sys.exit(main())
