"""End-to-end search step: fastnas against the reference PC-DARTS model, same run, same weights, same data.

    python benchmarks/bench_search.py --device cpu                 # DARTS, B=32, K=4, 8 layers (~2 min, 2 cores)
    python benchmarks/bench_search.py --device cuda                # B=256, with torch.compile of the reference
    python benchmarks/bench_search.py --device cpu --quick         # smoke run (seconds)

One search step = an architecture step (first order) + a weight step, as PC-DARTS's train_search.py does
per batch. Variants, all started from ONE initial state (the fastnas supernet's state dict, loaded into
the reference) and fed the same random CIFAR-shaped batches (B, 3, 32, 32), 10 classes:

* ``fastnas``: ``fastnas.nn.SearchNetwork`` + ``fastnas.search.SearchStep``;
* ``reference``: ``RefNetwork`` (tests/reference_pcdarts.py, PC-DARTS's model written plainly) +
  ``reference_search_step`` (``loss.backward()`` in the architecture step, as architect.py);
* ``reference-compile``: the same with ``torch.compile(reference)``; its first step (the compilation)
  is reported separately as ``first_step_ms``. On by default on CUDA, off on CPU (compiling the
  reference takes > 20 min on a 2-core CPU): ``--compile`` / ``--no-compile``;
* ``reference-nhwc`` (``--nhwc-reference``): the reference with channels_last activations, to separate
  what the memory layout alone gives from what fastnas's step does. fastnas itself runs in the layout
  ``fastnas search`` uses on the device (channels_last on CPU, contiguous on CUDA; ``--channels-last``).

Time per step: the median over ``--steps`` steps after ``--warmup`` steps. CPU: the variants are timed
in one process, INTERLEAVED step by step (the order rotated every round), so load from other processes
hits all of them alike; GPU: variant after variant, CUDA events around every step.

Peak memory of a step (``peak_mem_bytes``): what a steady-state step allocates on top of what persists
between steps (model, data, optimizer state, the last gradients; on CPU also the code pages and caches
the warm-up brought in, ~200 MiB here). Those are the same for every variant (same parameters) or fixed
costs; leaving them out keeps the ratio about the step itself. ``peak_total_bytes`` is the absolute peak.

* CUDA: ``max_memory_allocated()`` over ``MEM_STEPS`` steps after the warm-up (peak statistics reset)
  minus ``memory_allocated()`` just before them.
* CPU: every variant in its own subprocess; the peak resident set (VmHWM, /proc/self/status) of
  ``MEM_STEPS`` steps after the warm-up minus the resident set (VmRSS) just before them. VmHWM is reset
  after the warm-up by writing "5" to /proc/self/clear_refs, and glibc's heap is trimmed first
  (``malloc_trim``) so that memory freed earlier does not count. Where clear_refs is unavailable, VmHWM
  counts from the process start and the base is the resident set after building the model and data
  (``model_data_bytes``); the row's ``mem_method`` says which.

Ratios are fastnas (or compile) / reference eager: < 1 is better. A step's loss must agree between the
variants (same state, same data) and every variant must move its architecture parameters; otherwise
the run fails (exit 1). Results: JSON lines (benchmarks/results.py fields, ``benchmark: search_step``)
to ``--out`` (default ``$FASTNAS_RESULTS``, else ``results/search_<device>.jsonl``) and a Markdown table
next to it (``--md``; ``--no-md`` writes none); the fields are :func:`make_row`'s plus the environment
fields of benchmarks/results.py.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))                 # results, report, timing
sys.path.insert(0, str(REPO_ROOT / "tests"))       # reference_pcdarts (the reference model)

import report  # noqa: E402
import results  # noqa: E402
import timing  # noqa: E402

VARIANTS = ("fastnas", "fastnas-graph", "reference", "reference-compile", "reference-nhwc")
# fastnas-graph (CUDA only): the same step captured in a CUDA graph (fastnas.search.graphs) after
# GRAPH_WARMUP eager steps; the bench's warm-up runs at least GRAPH_WARMUP + 1 steps so that timing
# starts on replays.
GRAPH_WARMUP = 3
REFERENCE = "reference"
MEM_STEPS = 2  # measured steps of the memory runs: the peak of a steady-state step

# Acceptance targets (ratio to the reference eager step; time and memory), for the judged configuration
# only: DARTS space, C=16, 8 layers, K=4, the device's default batch.
TARGETS = {
    "cpu": {"batch_size": 32, "time": 0.75, "memory": 0.8},
    "cuda": {"batch_size": 256, "time": 1 / 3, "memory": 0.5},
}

StepFn = Callable[[], Tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Config:
    device: str
    space: str
    batch_size: int
    partial_channels: int
    layers: int
    init_channels: int
    steps: int
    warmup: int
    compile: bool
    seed: int = 0
    image_size: int = 32
    num_classes: int = 10
    # fastnas's activation layout: None = what `fastnas search` does on the device (channels_last on the
    # CPU, contiguous on CUDA; fastnas.search.SearchConfig.channels_last). The reference stays NCHW, as
    # PC-DARTS runs; --nhwc-reference adds a channels_last reference to show what the layout alone gives.
    channels_last: Optional[bool] = None
    nhwc_reference: bool = False

    @property
    def fastnas_channels_last(self) -> bool:
        return torch.device(self.device).type == "cpu" if self.channels_last is None else self.channels_last

    def case(self) -> str:
        return (f"{self.space} B={self.batch_size} K={self.partial_channels} layers={self.layers} "
                f"C={self.init_channels} {self.image_size}x{self.image_size}, fastnas "
                f"{'channels_last' if self.fastnas_channels_last else 'contiguous'}")

    def judged(self) -> bool:
        t = TARGETS.get(torch.device(self.device).type)
        return bool(t) and (self.space, self.init_channels, self.layers, self.partial_channels, self.batch_size) == \
            ("darts", 16, 8, 4, t["batch_size"])


# ----------------------------------------------------------------------------------------------------
# Models, data, steps
# ----------------------------------------------------------------------------------------------------

def build_supernet(cfg: Config) -> torch.nn.Module:
    """The fastnas supernet (train mode) every variant starts from: seeded, so every process builds the
    same weights and architecture parameters."""
    from fastnas.nn import SearchNetwork

    torch.manual_seed(cfg.seed)
    net = SearchNetwork(cfg.space, C=cfg.init_channels, num_classes=cfg.num_classes, layers=cfg.layers,
                        partial_channels=cfg.partial_channels, edge_norm=True)
    return net.to(cfg.device).train()


def make_batches(cfg: Config) -> Tuple[torch.Tensor, ...]:
    """(x_w, y_w, x_a, y_a): a weight batch and an architecture batch, x (B, 3, S, S) float32 ~ N(0, 1)
    (normalised CIFAR), y (B,) int64 in [0, num_classes). Drawn on the CPU from a fixed seed, so every
    process and device sees the same numbers."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    shape = (cfg.batch_size, 3, cfg.image_size, cfg.image_size)
    out = []
    for _ in range(2):
        out.append(torch.randn(shape, generator=g).to(cfg.device))
        out.append(torch.randint(0, cfg.num_classes, (cfg.batch_size,), generator=g).to(cfg.device))
    return tuple(out)


def _nhwc(batches):
    return tuple(t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for t in batches)


def make_step(variant: str, net: torch.nn.Module, batches, cfg: Optional[Config] = None
              ) -> Tuple[StepFn, List[torch.Tensor]]:
    """A zero-argument full search step of ``variant`` on its own copy of ``net``'s state, and that
    copy's architecture parameters (to check that the step moves them)."""
    x_w, y_w, x_a, y_a = batches
    if variant == "fastnas":
        from fastnas.search import SearchStep

        model = copy.deepcopy(net)
        if cfg is not None and cfg.fastnas_channels_last:
            model = model.to(memory_format=torch.channels_last)
            x_w, y_w, x_a, y_a = _nhwc(batches)
        step = SearchStep(model)  # PC-DARTS's optimizers and gradient clipping (defaults)
        return (lambda: step(x_w, y_w, x_a, y_a, update_arch=True)), model.arch_parameters()
    if variant == "fastnas-graph":
        from fastnas.search import SearchStep
        from fastnas.search.graphs import GraphedStep

        model = copy.deepcopy(net)
        graphed = GraphedStep(SearchStep(model, capturable=True), warmup_steps=GRAPH_WARMUP)
        return (lambda: graphed(x_w, y_w, x_a, y_a, update_arch=True)), model.arch_parameters()
    from reference_pcdarts import reference_like, reference_optimizers, reference_search_step

    model = reference_like(net)
    if variant == "reference-nhwc":
        model = model.to(memory_format=torch.channels_last)
        x_w, y_w, x_a, y_a = _nhwc(batches)
        variant = REFERENCE
    arch = model.arch_parameters()
    w_opt, a_opt = reference_optimizers(model)
    if variant == "reference-compile":
        model = torch.compile(model)
    elif variant != REFERENCE:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    return (lambda: reference_search_step(model, w_opt, a_opt, x_w, y_w, x_a, y_a)), arch


def variants_of(cfg: Config) -> List[str]:
    return (["fastnas"] + (["fastnas-graph"] if torch.device(cfg.device).type == "cuda" else []) + [REFERENCE]
            + (["reference-compile"] if cfg.compile else []) + (["reference-nhwc"] if cfg.nhwc_reference else []))


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class Deadline:
    """``with Deadline(seconds):`` raises TimeoutError in the main thread after ``seconds`` (SIGALRM;
    0: no limit). Used to give up compiling the reference when a time budget (gpu_check.sh) is spent.
    torch.compile may wrap the TimeoutError raised inside it in its own exception type: ``expired``
    tells the caller that the alarm is what ended the call."""

    def __init__(self, seconds: float):
        self.seconds = seconds if hasattr(signal, "SIGALRM") else 0
        self.expired = False

    def _on_alarm(self, signum, frame):
        self.expired = True
        raise TimeoutError(f"more than {self.seconds:.0f} s")

    def __enter__(self):
        if self.seconds:
            self._old = signal.signal(signal.SIGALRM, self._on_alarm)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc):
        if self.seconds:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old)
        return False


@dataclass
class Warm:
    """What the warm-up of one variant gave: its step, the time of its first step (the compilation for
    reference-compile), the weight-batch loss of every warm-up step, whether its arch parameters moved."""
    step: StepFn
    first_step_s: float
    losses: List[float]
    arch_moved: bool


def warm_up(variant: str, net, batches, cfg: Config, compile_timeout: float = 0) -> Warm:
    """Builds ``variant``'s step and runs ``cfg.warmup`` (>= 1) steps; the first one is timed alone."""
    step, arch = make_step(variant, net, batches, cfg)
    before = [a.detach().clone() for a in arch]
    losses = []
    limit = compile_timeout if variant == "reference-compile" else 0
    for i in range(max(1, cfg.warmup, GRAPH_WARMUP + 1 if variant == "fastnas-graph" else 0)):
        sync(cfg.device)
        t0 = time.perf_counter()
        with Deadline(limit if i == 0 else 0) as alarm:
            try:
                loss, _ = step()
                sync(cfg.device)
            except Exception as exc:
                if alarm.expired:
                    raise TimeoutError(f"the first step (compilation) took more than {limit:.0f} s") from exc
                raise
        if i == 0:
            first = time.perf_counter() - t0
        losses.append(float(loss))
    moved = all(bool((a.detach() != b).any()) for a, b in zip(arch, before))
    return Warm(step, first, losses, moved)


# ----------------------------------------------------------------------------------------------------
# Time
# ----------------------------------------------------------------------------------------------------

def time_interleaved(steps: Dict[str, StepFn], n: int) -> Dict[str, List[float]]:
    """CPU: seconds per step of every variant, the variants alternating step by step (order rotated
    every round) so that load from other processes falls on all of them alike."""
    names = list(steps)
    out: Dict[str, List[float]] = {k: [] for k in names}
    for r in range(n):
        for k in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            steps[k]()
            out[k].append(time.perf_counter() - t0)
    return out


def time_cuda(step: StepFn, n: int) -> List[float]:
    """GPU: seconds per step from CUDA events around every step (the step's host-side launch time
    included: a stream that waits for the host shows up between the events)."""
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for start, end in events:
        start.record()
        step()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) * 1e-3 for start, end in events]


# ----------------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------------

def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    if m is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(m.group(1)) * 1024


def _trim_heap() -> None:
    """Returns glibc's free heap pages to the kernel, so the resident set is what is live."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _reset_peak_rss() -> bool:
    """Resets VmHWM to the current resident set (Linux >= 4.0: "5" to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _proc_status_bytes("VmHWM") <= _proc_status_bytes("VmRSS") + (1 << 20)


def cpu_memory_worker(cfg: Config, variant: str) -> Dict[str, object]:
    """In a fresh process: the peak resident bytes of ``MEM_STEPS`` steady-state steps above the
    resident set between steps (model, data, optimizer state, last gradients, code and caches that
    the warm-up paged in: equal or fixed costs, left out so the figure is what the step allocates)."""
    net, batches = build_supernet(cfg), make_batches(cfg)
    _trim_heap()
    built = _proc_status_bytes("VmRSS")
    warm = warm_up(variant, net, batches, cfg)
    _trim_heap()
    if _reset_peak_rss():
        base = _proc_status_bytes("VmRSS")
        method = ("VmHWM of the measured steps (reset after the warm-up via /proc/self/clear_refs) minus VmRSS "
                  "before them")
    else:  # VmHWM counts from the process start: the warm-up's peak is in it too
        base = built
        method = "VmHWM since the process start (clear_refs unavailable) minus VmRSS after building model and data"
    for _ in range(MEM_STEPS):
        warm.step()
    peak = _proc_status_bytes("VmHWM")
    return {"variant": variant, "peak_mem_bytes": peak - base, "peak_total_bytes": peak, "base_mem_bytes": base,
            "model_data_bytes": built, "mem_method": method}


def cpu_memory(cfg: Config, variant: str, argv: List[str]) -> Dict[str, object]:
    """Runs :func:`cpu_memory_worker` for ``variant`` in a subprocess (this script, same options)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--memory-worker", variant]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"memory run of {variant} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cuda_memory(step: StepFn, n: int) -> Dict[str, object]:
    """Peak bytes allocated by ``n`` steady-state steps above what is allocated before them (model,
    data, optimizer state, last gradients)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(n):
        step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return {"peak_mem_bytes": peak - base, "peak_total_bytes": peak, "base_mem_bytes": base,
            "mem_method": "max_memory_allocated of the measured steps minus memory_allocated before them"}


# ----------------------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------------------

def make_row(cfg: Config, variant: str, env: Dict[str, object], times: Optional[List[float]] = None,
             warm: Optional[Warm] = None, mem: Optional[Dict[str, object]] = None,
             error: Optional[str] = None) -> Dict[str, object]:
    """One variant's results row (ratios filled in by :func:`add_ratios`)."""
    s = timing.summary(times) if times else None
    row = {
        "benchmark": "search_step",
        "variant": variant,
        "case": cfg.case(),
        **{k: v for k, v in asdict(cfg).items() if k not in ("device", "compile")},
        "dtype": "float32",
        "median_ms": s and s["median"] * 1e3,
        "iqr_ms": s and s["iqr"] * 1e3,
        "min_ms": s and s["min"] * 1e3,
        "rounds": s and s["rounds"],
        "step_ms": times and [t * 1e3 for t in times],  # in the order taken (CPU: round by round)
        "first_step_ms": warm and warm.first_step_s * 1e3,
        "warmup_losses": warm and warm.losses,
        "peak_mem_bytes": None, "peak_total_bytes": None, "base_mem_bytes": None, "model_data_bytes": None,
        "mem_method": None,
        "time_ratio_vs_reference": None,
        "paired_time_ratio": None,
        "mem_ratio_vs_reference": None,
        "target_time_ratio": None,
        "target_mem_ratio": None,
        "error": error,
        "load_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    row.update({k: v for k, v in (mem or {}).items() if k != "variant"})
    if cfg.judged():
        t = TARGETS[torch.device(cfg.device).type]
        row["target_time_ratio"], row["target_mem_ratio"] = t["time"], t["memory"]
    row.update(env)
    return row


def add_ratios(rows: List[Dict[str, object]], paired: bool = False) -> List[Dict[str, object]]:
    """Time (medians) and memory ratio of every row to the reference eager row: < 1 is faster / smaller.
    ``paired`` (interleaved timing): also the median over rounds of the ratio of the two steps taken in
    the same round, which cancels load that drifts from round to round."""
    ref = next((r for r in rows if r["variant"] == REFERENCE), None)
    for r in rows:
        for field, ratio in (("median_ms", "time_ratio_vs_reference"), ("peak_mem_bytes", "mem_ratio_vs_reference")):
            a, b = r.get(field), ref and ref.get(field)
            r[ratio] = a / b if (a is not None and b) else None
        if paired and ref and r.get("step_ms") and ref.get("step_ms"):
            r["paired_time_ratio"] = statistics.median(a / b for a, b in zip(r["step_ms"], ref["step_ms"]))
    return rows


def check(rows: List[Dict[str, object]], warms: Dict[str, Warm], device: str) -> List[str]:
    """Problems that make the run fail: a variant whose warm-up losses differ from fastnas's (same state,
    same data: they must agree to float32 rounding; TF32 convolutions on GPU), or that left its
    architecture parameters unchanged."""
    tol = 1e-2 if torch.device(device).type == "cuda" else 1e-3
    problems = []  # rows with an ``error`` are compilations given up at --compile-timeout: not failures
    base = warms.get("fastnas")
    for name, w in warms.items():
        if not w.arch_moved:
            problems.append(f"{name}: the architecture step did not change every architecture parameter")
        if base is not None:
            for i, (a, b) in enumerate(zip(w.losses, base.losses)):
                if abs(a - b) > tol * max(abs(b), 1e-6):
                    problems.append(f"{name}: warm-up step {i} loss {a:.6f} differs from fastnas's {b:.6f}")
    return problems


# ----------------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------------

def run_cpu(cfg: Config, argv: List[str], env, compile_timeout: float) -> Tuple[List[Dict], Dict[str, Warm]]:
    """Every variant warmed up, then timed interleaved, in this process; then each variant's peak
    memory in a subprocess of its own (the resident set is per process)."""
    net, batches = build_supernet(cfg), make_batches(cfg)
    warms: Dict[str, Warm] = {}
    errors: Dict[str, str] = {}
    for v in variants_of(cfg):
        print(f"warm-up: {v}", flush=True)
        try:
            warms[v] = warm_up(v, net, batches, cfg, compile_timeout)
        except TimeoutError as exc:  # a spent budget, not a failure of the variant
            errors[v] = str(exc)
    print(f"timing {cfg.steps} steps per variant, interleaved", flush=True)
    times = time_interleaved({v: w.step for v, w in warms.items()}, cfg.steps)
    rows = []
    for v in variants_of(cfg):
        if v in errors:
            rows.append(make_row(cfg, v, env, error=errors[v]))
            continue
        warms[v].step = None  # free this process's copy before the memory runs
        print(f"peak memory: {v} (subprocess)", flush=True)
        rows.append(make_row(cfg, v, env, times[v], warms[v], cpu_memory(cfg, v, argv)))
    return add_ratios(rows, paired=True), warms


def run_cuda(cfg: Config, env, save, compile_timeout: float) -> Tuple[List[Dict], Dict[str, Warm]]:
    """Variant after variant: warm-up (first step = compilation), peak memory, CUDA-event timing. The
    rows are saved after every variant, so a run killed while compiling keeps the eager results."""
    net, batches = build_supernet(cfg), make_batches(cfg)
    rows, warms = [], {}
    for v in variants_of(cfg):
        print(f"{v}: warm-up, peak memory, timing", flush=True)
        try:
            warms[v] = warm = warm_up(v, net, batches, cfg, compile_timeout)
        except TimeoutError as exc:  # a spent budget, not a failure of the variant
            rows.append(make_row(cfg, v, env, error=str(exc)))
            continue
        mem = cuda_memory(warm.step, MEM_STEPS)
        times = time_cuda(warm.step, cfg.steps)
        rows.append(make_row(cfg, v, env, times, warm, mem))
        save(add_ratios(rows))
        warm.step = None  # free the variant's model and optimizer state before the next one
        torch.cuda.empty_cache()
    return add_ratios(rows), warms


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------

def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    p.add_argument("--space", choices=("darts", "nb201"), default="darts")
    p.add_argument("--batch-size", type=int, help="default 32 on CPU, 256 on CUDA (--quick: 8)")
    p.add_argument("--partial-channels", type=int, default=4, help="K (default 4)")
    p.add_argument("--layers", type=int, help="cells: default 8 (darts) / N = 5 per stage (nb201); --quick: 3 / 1")
    p.add_argument("--init-channels", type=int, default=16)
    p.add_argument("--steps", type=int, help="timed steps per variant (default 6 on CPU, 20 on CUDA; --quick 2)")
    p.add_argument("--warmup", type=int, help="untimed steps first, >= 1 (default 1 on CPU, 3 on CUDA)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="also time torch.compile(reference) (default: on for CUDA, off for CPU and --quick)")
    p.add_argument("--compile-timeout", type=float, default=0,
                   help="give up compiling after this many seconds (0: never); the row records it")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="fastnas's layout (default: as `fastnas search`: channels_last on CPU, not on CUDA)")
    p.add_argument("--nhwc-reference", action="store_true",
                   help="also time the reference with channels_last activations")
    p.add_argument("--quick", action="store_true", help="smoke run: B=8, 3 layers (nb201: 1), 2 steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="results file (JSON lines; default $FASTNAS_RESULTS, else "
                                 "results/search_<device>.jsonl)")
    p.add_argument("--md", help="Markdown summary (default: the results file with .md)")
    p.add_argument("--no-md", action="store_true", help="write no Markdown file")
    p.add_argument("--memory-worker", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: one CPU memory run
    return p.parse_args(argv)


def config_from(args: argparse.Namespace) -> Config:
    cuda = torch.device(args.device).type == "cuda"

    def pick(value, quick, gpu, cpu):
        return value if value is not None else (quick if args.quick else (gpu if cuda else cpu))

    return Config(
        device=args.device, space=args.space,
        batch_size=pick(args.batch_size, 8, 256, 32),
        partial_channels=args.partial_channels,
        layers=pick(args.layers, *((3, 8, 8) if args.space == "darts" else (1, 5, 5))),
        init_channels=args.init_channels,
        steps=pick(args.steps, 2, 20, 6),
        warmup=max(1, pick(args.warmup, 1, 3, 1)),
        compile=pick(args.compile, False, True, False),
        seed=args.seed,
        channels_last=args.channels_last,
        nhwc_reference=args.nhwc_reference,
    )


def output_paths(args, device: str) -> Tuple[Path, Optional[Path]]:
    env = os.environ.get("FASTNAS_RESULTS")
    out = Path(args.out or env or REPO_ROOT / "results" / f"search_{torch.device(device).type}.jsonl")
    md = None if args.no_md else Path(args.md) if args.md else out.with_suffix(".md")
    return out, md


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    cfg = config_from(args)
    if args.memory_worker:
        print(json.dumps(cpu_memory_worker(cfg, args.memory_worker)))
        return 0
    cuda = torch.device(cfg.device).type == "cuda"
    if cuda and not torch.cuda.is_available():
        print("bench_search.py: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 1
    out, md = output_paths(args, cfg.device)

    def save(rows):
        results.write_rows(out, rows)
        if md is not None:
            md.write_text(f"## {out.name}\n\n" + report.render(rows))

    env = results.environment(cfg.device, timer="CUDA events per step, median" if cuda else
                              "perf_counter per step, variants interleaved, median")
    print(f"search step: {cfg.case()}, variants {variants_of(cfg)}, device {env['device']}", flush=True)
    if cuda:
        rows, warms = run_cuda(cfg, env, save, args.compile_timeout)
    else:
        rows, warms = run_cpu(cfg, argv, env, args.compile_timeout)
    save(rows)
    print(report.render(rows))
    print(f"results: {out}" + (f", {md}" if md else ""))
    problems = check(rows, warms, cfg.device)
    for p in problems:
        print(f"FAILED: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
