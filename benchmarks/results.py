"""Results files of the kernel microbenchmarks: one JSON object per line, one line per measurement.

A row holds what was measured (op, direction, backend, dtype, shapes), how long it took (median, with
the spread), the ratio to the baseline measured in the same run, the byte model and achieved bandwidth,
peak memory on GPU, and where it ran (device, versions, commit, timestamp). ``report.py`` turns a file
into Markdown tables; ``docs/benchmarks.md`` documents the fields.

Byte model (``bytes_moved``): the bytes a perfect fused kernel must read plus write from/to memory for
the call, counting every data tensor once per pass (weights, betas and dots are a few bytes and are
ignored); e = element size of the data dtype, N = B*H*W, Cm = C // K op-output channels, Cb = C - Cm
bypass channels, n = op outputs that are tensors (`none` omitted), E = edges:

    partial_channel_mix  fwd  e*N*(n*Cm + Cb  +  C)          read the op outputs and bypass, write out
                         bwd  e*N*(C + n*Cm + Cb  +  n*Cm + Cb)
                                read grad, re-read op outputs and bypass (the dot products that give the
                                gradients of the weights and of the edge weight), write their gradients
    channel_shuffle      fwd  e*N*(C + C)                      read x, write y
                         bwd  e*N*(C + C)                      read grad, write grad_x
    edge_normalize       fwd  e*N*C*(E + 1)                    read E edges, write the node
                         bwd  e*N*C*(1 + E + E)                read grad, re-read the edges (beta
                                                               gradients), write E edge gradients
    fwd+bwd = fwd + bwd (two passes: nothing stays on chip between them at these sizes)

achieved bandwidth = bytes_moved / median time; ``bw_fraction`` divides it by the device copy bandwidth
measured once per run (a large device-to-device ``copy_``, bytes read + written / time). The unfused
baseline moves more bytes than this model (intermediates, cat, contiguous copies), so its "achieved"
bandwidth is an effective figure, directly comparable across backends: same numerator, different times.
On CPU the figures are indicative only (part of the data sits in caches).
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
BASELINE = "baseline"


# ----------------------------------------------------------------------------------------------------
# Byte model
# ----------------------------------------------------------------------------------------------------

def bytes_moved(op: str, direction: str, shapes: Dict[str, object], dtype: torch.dtype) -> int:
    """Compulsory bytes of one call (see the module docstring); ``shapes`` as written by formulas.Size."""
    e = torch.empty((), dtype=dtype).element_size()
    N = int(shapes["B"]) * int(shapes["H"]) * int(shapes["W"])
    C = int(shapes["C"])
    if op == "partial_channel_mix":
        cm, cb, n = int(shapes["Cm"]), int(shapes["Cb"]), int(shapes["op_outputs"])
        fwd = n * cm + cb + C
        bwd = C + 2 * (n * cm + cb)
    elif op == "channel_shuffle":
        fwd = bwd = 2 * C
    elif op == "edge_normalize":
        E = int(shapes["edges"])
        fwd = C * (E + 1)
        bwd = C * (2 * E + 1)
    else:
        raise ValueError(f"no byte model for op {op!r}")
    per_elem = {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[direction]
    return e * N * per_elem


# ----------------------------------------------------------------------------------------------------
# Environment
# ----------------------------------------------------------------------------------------------------

def _git(*args: str) -> Optional[str]:
    try:
        done = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit() -> Dict[str, object]:
    """``{"commit": sha or 'unknown', "dirty": bool or None}``; a dirty tree's commit gets '+dirty'."""
    sha = _git("rev-parse", "HEAD")
    if not sha:
        # Not a checkout, or a repository without commits yet: still say whether it has local changes.
        status = _git("status", "--porcelain", "--untracked-files=no")
        return {"commit": "unknown", "dirty": None if status is None else bool(status)}
    status = _git("status", "--porcelain", "--untracked-files=no")
    dirty = bool(status) if status is not None else None
    return {"commit": sha + ("+dirty" if dirty else ""), "dirty": dirty}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return f"{_cpu_name()} ({os.cpu_count()} logical CPUs)"


def _version(package: str) -> Optional[str]:
    try:
        from importlib.metadata import version
        return version(package)
    except Exception:
        return None


def environment(device: str, timer: str) -> Dict[str, object]:
    """Fields shared by every row of one run."""
    import fastnas
    from fastnas import _ext

    module = _ext.extension()
    env = {
        "device_type": torch.device(device).type,
        "device": device_name(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _version("triton"),
        "fastnas": getattr(fastnas, "__version__", None),
        "fastnas_path": str(Path(fastnas.__file__).resolve().parent),
        "extension": getattr(module, "torch_version", None) and "fastnas._C (torch " + module.torch_version + ")",
        "torch_threads": torch.get_num_threads(),
        "openmp_threads": module.openmp_threads() if module is not None else None,
        "hostname": platform.node(),
        "timer": timer,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **git_commit(),
    }
    env["run_id"] = f"{env['timestamp']}-{os.getpid()}"
    return env


# ----------------------------------------------------------------------------------------------------
# Copy bandwidth
# ----------------------------------------------------------------------------------------------------

def measure_copy_bandwidth(device: str, nbytes: int = 1 << 30) -> Optional[float]:
    """Bytes read + written per second of a large device-to-device ``copy_`` (median of several)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        from timing import cuda_median_ms
        src = torch.empty(nbytes // 4, dtype=torch.float32, device=dev).fill_(1.0)
        dst = torch.empty_like(src)
        ms = cuda_median_ms(lambda: dst.copy_(src), warmup=25, rep=200)
        del src, dst
        torch.cuda.empty_cache()
        return 2 * nbytes / (ms * 1e-3)
    import time
    nbytes = min(nbytes, 256 << 20)  # CPU: 256 MiB is far past the caches and quick on 2 cores
    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    times = []
    for _ in range(7):
        t = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t)
    return 2 * nbytes / statistics.median(times[1:])


# ----------------------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------------------

def make_row(op: str, direction: str, backend: str, dtype: torch.dtype, size_id: str, shapes: Dict[str, object],
             median_s: float, *, iqr_s: Optional[float] = None, min_s: Optional[float] = None,
             rounds: Optional[int] = None, peak_mem_bytes: Optional[int] = None,
             copy_bw: Optional[float] = None, env: Optional[Dict[str, object]] = None) -> Dict[str, object]:
    """One measurement; ``ratio_vs_baseline`` is filled in by :func:`add_ratios`."""
    moved = bytes_moved(op, direction, shapes, dtype)
    bandwidth = moved / median_s if median_s > 0 else None
    row = {
        "op": op,
        "direction": direction,
        "backend": backend,
        "dtype": str(dtype).replace("torch.", ""),
        "case": size_id,
        "shapes": shapes,
        "median_ms": median_s * 1e3,
        "iqr_ms": None if iqr_s is None else iqr_s * 1e3,
        "min_ms": None if min_s is None else min_s * 1e3,
        "rounds": rounds,
        "ratio_vs_baseline": None,
        "peak_mem_bytes": peak_mem_bytes,
        "bytes_moved": moved,
        "bandwidth_GBps": None if bandwidth is None else bandwidth / 1e9,
        "copy_bandwidth_GBps": None if copy_bw is None else copy_bw / 1e9,
        "bw_fraction_of_copy": None if (bandwidth is None or not copy_bw) else bandwidth / copy_bw,
        # 1-minute load average when the row was taken: on a shared CPU, rows taken under others' load
        # are noise (the benchmark itself accounts for up to torch_threads of it).
        "load_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if env:
        row.update(env)
    return row


def _key(row: Dict[str, object]):
    return (row.get("run_id"), row["op"], row["direction"], row["dtype"], row["case"])


def add_ratios(rows: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """ratio_vs_baseline = baseline median / row median for the same run, op, direction, dtype and case
    (> 1: faster than the baseline). Rows without a baseline keep None."""
    base = {_key(r): r["median_ms"] for r in rows if r["backend"] == BASELINE}
    for r in rows:
        b = base.get(_key(r))
        r["ratio_vs_baseline"] = (b / r["median_ms"]) if (b and r["median_ms"]) else None
    return rows


def default_path(device: str) -> Path:
    """$FASTNAS_RESULTS, else results/ops_<device type>.jsonl in the checkout."""
    env = os.environ.get("FASTNAS_RESULTS")
    if env:
        return Path(env)
    return REPO_ROOT / "results" / f"ops_{torch.device(device).type}.jsonl"


def _strict_json(obj):
    """``obj`` with NaN / inf floats as None: the rows stay standard JSON (strict parsers reject NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict_json(v) for v in obj]
    return obj


def write_rows(path, rows: Iterable[Dict[str, object]], append: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a" if append else "w") as f:
        for r in rows:
            f.write(json.dumps(_strict_json(r), sort_keys=False, allow_nan=False) + "\n")
    return path


def read_rows(path) -> List[Dict[str, object]]:
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


if __name__ == "__main__":  # pragma: no cover - prints this machine's environment fields
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    print(json.dumps(environment("cpu", "none"), indent=2))
