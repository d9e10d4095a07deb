"""Baselines and inputs of the kernel microbenchmarks.

The baseline of every benchmark is the plain-PyTorch code that PC-DARTS itself runs (model_search.py of
the reference implementation): ``mul``/``add`` through Python's ``sum``, ``cat``, ``view``, ``transpose``,
``contiguous``, with autograd for the backward. fastnas's ``torch`` backend is essentially the same
formula (``fastnas.ops.*_ref``); the baseline is written out here anyway so that what every backend is
compared against is visible in the benchmark itself and cannot change when the library does.

Sizes are those of the PC-DARTS CIFAR search network (DESIGN.md section 3): C = 16 / 32 / 64 channels at
32x32 / 16x16 / 8x8, K = 4, eight candidate ops of which `none` is omitted (7 op outputs + a None,
weights for 8), an edge weight (the edge-normalization factor) present; batch 32..64 on CPU, 256 on GPU.

Every callable built here takes no argument (ready for pytest-benchmark, torch.utils.benchmark and
triton.testing.do_bench); inputs are allocated once per case, outside the timed region.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

OPS = ("partial_channel_mix", "channel_shuffle", "edge_normalize")
DIRECTIONS = ("fwd", "bwd", "fwd+bwd")  # bwd = backward only, on a graph built once and retained
BASELINE = "baseline"

# DARTS op order; the op outputs of index 0 (`none`) is None and index 3 (`skip_connect`) is the sampled
# channels x[:, :C // K] themselves, a strided view, exactly as in PC-DARTS.
PRIMITIVES = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
              "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
SKIP_INDEX = 3


# ----------------------------------------------------------------------------------------------------
# The baselines: PC-DARTS code, verbatim in structure.
# ----------------------------------------------------------------------------------------------------

def channel_shuffle_formula(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W); ``channel_shuffle`` of PC-DARTS (model_search.py)."""
    batchsize, num_channels, height, width = x.data.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    x = x.view(batchsize, -1, height, width)
    return x


def partial_channel_mix_formula(op_outputs: Sequence[Optional[torch.Tensor]], weights: torch.Tensor,
                                bypass: torch.Tensor, groups: int,
                                edge_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``MixedOp.forward`` of PC-DARTS followed by the edge weight of ``Cell.forward``.

    op_outputs: (B, C/K, H, W) each, None for `none` (skipped: the reference's ``x.mul(0.)`` is waste
    fastnas removes, so the baseline does not pay it either); weights (n_ops,); bypass (B, C - C/K, H, W).
    """
    temp1 = sum(w * o for w, o in zip(weights, op_outputs) if o is not None)
    ans = torch.cat([temp1, bypass], dim=1)
    ans = channel_shuffle_formula(ans, groups)
    if edge_weight is not None:  # Cell.forward: weights2[offset + j] * self._ops[offset + j](h, weights)
        ans = edge_weight * ans
    return ans


def edge_normalize_formula(edge_outputs: Sequence[torch.Tensor], betas: torch.Tensor) -> torch.Tensor:
    """``Cell.forward`` of PC-DARTS: ``sum(softmax(betas)[j] * y_j)``; edge_outputs (B, C, H, W) each."""
    weights2 = F.softmax(betas, dim=-1)
    return sum(weights2[j] * h for j, h in enumerate(edge_outputs))


# ----------------------------------------------------------------------------------------------------
# Sizes
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Size:
    """One problem size. ``K`` is the partial-channel factor (= shuffle groups); ``omitted`` are the op
    indices passed as None; ``edges`` is the number of incoming edges for edge_normalize."""

    B: int
    C: int
    H: int
    W: int
    K: int = 4
    n_ops: int = 8
    omitted: Tuple[int, ...] = (0,)
    edges: int = 4

    @property
    def id(self) -> str:
        return f"B{self.B}-C{self.C}-{self.H}x{self.W}-K{self.K}"

    @property
    def Cm(self) -> int:  # op-output (sampled) channels
        return self.C // self.K

    @property
    def Cb(self) -> int:  # bypass channels
        return self.C - self.Cm

    @property
    def present(self) -> int:  # op outputs that are tensors
        return self.n_ops - len(self.omitted)

    def shapes(self, op: str) -> Dict[str, object]:
        """What a results row records about the problem (plain JSON)."""
        base = {"B": self.B, "C": self.C, "H": self.H, "W": self.W}
        if op == "partial_channel_mix":
            return {**base, "K": self.K, "n_ops": self.n_ops, "op_outputs": self.present, "Cm": self.Cm,
                    "Cb": self.Cb, "edge_weight": True,
                    "tensors": f"{self.present}x({self.B},{self.Cm},{self.H},{self.W}) + bypass "
                               f"({self.B},{self.Cb},{self.H},{self.W})"}
        if op == "channel_shuffle":
            return {**base, "groups": self.K, "tensors": f"({self.B},{self.C},{self.H},{self.W})"}
        if op == "edge_normalize":
            return {**base, "edges": self.edges,
                    "tensors": f"{self.edges}x({self.B},{self.C},{self.H},{self.W})"}
        raise ValueError(f"unknown op {op!r}")


# The case the project is judged on: B=64, C=64, K=4, 8 ops (none omitted), 16x16. Always measured.
JUDGED = Size(B=64, C=64, H=16, W=16)

# (C, resolution) pairs a PC-DARTS CIFAR search network actually runs: C=16 cells at 32x32, C=32 after
# the first reduction at 16x16, C=64 after the second at 8x8.
NETWORK_PAIRS = ((16, 32), (32, 16), (64, 8))
GRID_PAIRS = tuple((c, r) for c in (16, 32, 64) for r in (32, 16, 8))


def _with_judged(sizes: List[Size]) -> List[Size]:
    return sizes + ([JUDGED] if JUDGED not in sizes else [])


def cpu_sizes(mode: str = "default", batch: int = 32) -> List[Size]:
    """quick: the network's first cell size + the judged case; default: the full C x resolution grid
    at ``batch`` + the judged case; network: only the three pairs the network runs + the judged case."""
    if mode not in ("quick", "network", "default"):   # a typo must not run (and record) the full grid
        raise ValueError(f"CPU sizes {mode!r}: choose quick, network or default")
    if mode == "quick":
        return _with_judged([Size(batch, 16, 32, 32)])
    pairs = NETWORK_PAIRS if mode == "network" else GRID_PAIRS
    return _with_judged([Size(batch, c, r, r) for c, r in pairs])


def gpu_sizes(mode: str = "default", batch: int = 256) -> List[Size]:
    """quick: the judged case and its B=256 twin; default: the network pairs at ``batch``, the
    C=64 16x16 case at ``batch`` and the judged case; full: the whole grid at ``batch`` + judged."""
    if mode == "quick":
        return _with_judged([Size(batch, 64, 16, 16)])
    if mode == "full":
        return _with_judged([Size(batch, c, r, r) for c, r in GRID_PAIRS])
    return _with_judged([Size(batch, c, r, r) for c, r in NETWORK_PAIRS] + [Size(batch, 64, 16, 16)])


# ----------------------------------------------------------------------------------------------------
# Inputs and callables
# ----------------------------------------------------------------------------------------------------

def weight_dtype(dtype: torch.dtype) -> torch.dtype:
    """Architecture weights stay float32 under mixed precision (float64 for float64 data)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass
class Case:
    """Inputs of one (op, size, dtype, device). ``diff`` are the tensors gradients are taken for (the
    op's direct inputs: leaves or views such as the bypass slice; autograd stops there), ``grad_out`` the
    upstream gradient (fixed random, same for every entry)."""

    op: str
    size: Size
    dtype: torch.dtype
    device: torch.device
    args: Dict[str, object] = field(default_factory=dict)
    diff: List[torch.Tensor] = field(default_factory=list)
    grad_out: Optional[torch.Tensor] = None

    def forward(self, entry: str) -> Callable[[], torch.Tensor]:
        """The forward callable of ``entry`` ('baseline' or a fastnas backend name)."""
        a = self.args
        if self.op == "partial_channel_mix":
            if entry == BASELINE:
                return lambda: partial_channel_mix_formula(a["op_outputs"], a["weights"], a["bypass"], a["K"],
                                                           a["edge_weight"])
            from fastnas.ops import partial_channel_mix
            return lambda: partial_channel_mix(a["op_outputs"], a["weights"], a["bypass"], a["K"],
                                               edge_weight=a["edge_weight"], backend=entry)
        if self.op == "channel_shuffle":
            if entry == BASELINE:
                return lambda: channel_shuffle_formula(a["x"], a["K"])
            from fastnas.ops import channel_shuffle
            return lambda: channel_shuffle(a["x"], a["K"], backend=entry)
        if self.op == "edge_normalize":
            if entry == BASELINE:
                return lambda: edge_normalize_formula(a["edge_outputs"], a["betas"])
            from fastnas.ops import edge_normalize
            return lambda: edge_normalize(a["edge_outputs"], a["betas"], backend=entry)
        raise ValueError(f"unknown op {self.op!r}")

    def callable(self, entry: str, direction: str) -> Callable[[], object]:
        """A no-argument callable timing ``direction`` of ``entry``.

        fwd: the forward with inputs that require grad (as in a search step: the graph is recorded).
        fwd+bwd: forward, then ``torch.autograd.grad`` for every input (no ``.grad`` accumulation).
        bwd: the forward runs ONCE here; the callable replays only the backward (``retain_graph``).
        """
        fwd = self.forward(entry)
        if direction == "fwd":
            return fwd
        diff, g = self.diff, self.grad_out
        if direction == "fwd+bwd":
            return lambda: torch.autograd.grad(fwd(), diff, g)
        if direction == "bwd":
            y = fwd()
            return lambda: torch.autograd.grad(y, diff, g, retain_graph=True)
        raise ValueError(f"unknown direction {direction!r}")


def make_case(op: str, size: Size, dtype: torch.dtype = torch.float32, device="cpu", seed: int = 0) -> Case:
    """Builds the inputs of ``op`` at ``size``; see the module docstring for the layout."""
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    wdt = weight_dtype(dtype)

    def data(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    def arch(n):  # softmax-normalised architecture weights, a leaf as the alphas' softmax would feed
        return torch.softmax(torch.randn(n, generator=gen, dtype=torch.float64), 0).to(device=device, dtype=wdt)

    s = size
    case = Case(op, s, dtype, device)
    if op == "partial_channel_mix":
        x = data(s.B, s.C, s.H, s.W).requires_grad_()        # the edge input
        xs, bypass = x[:, :s.Cm], x[:, s.Cm:]               # PC-DARTS: first C/K channels sampled
        op_outputs: List[Optional[torch.Tensor]] = []
        for i in range(s.n_ops):
            if i in s.omitted:
                op_outputs.append(None)
            elif i == SKIP_INDEX:
                op_outputs.append(xs)                        # skip_connect is xs itself
            else:
                op_outputs.append(data(s.B, s.Cm, s.H, s.W).requires_grad_())  # a candidate op's output
        weights = arch(s.n_ops).requires_grad_()
        edge_weight = arch(s.edges)[0].clone().requires_grad_()  # 0-d, one entry of softmax(beta)
        case.args = dict(op_outputs=op_outputs, weights=weights, bypass=bypass, K=s.K, edge_weight=edge_weight)
        case.diff = [o for o in op_outputs if o is not None] + [bypass, weights, edge_weight]
        out_shape = (s.B, s.C, s.H, s.W)
    elif op == "channel_shuffle":
        x = data(s.B, s.C, s.H, s.W).requires_grad_()
        case.args = dict(x=x, K=s.K)
        case.diff = [x]
        out_shape = tuple(x.shape)
    elif op == "edge_normalize":
        edge_outputs = [data(s.B, s.C, s.H, s.W).requires_grad_() for _ in range(s.edges)]
        betas = (torch.randn(s.edges, generator=gen) * 1e-3).to(device=device, dtype=wdt).requires_grad_()
        case.args = dict(edge_outputs=edge_outputs, betas=betas)
        case.diff = edge_outputs + [betas]
        out_shape = tuple(edge_outputs[0].shape)
    else:
        raise ValueError(f"unknown op {op!r}; choose from {OPS}")
    case.grad_out = data(*out_shape)
    return case


# Relative-to-scale tolerances of the sanity check below (kernels accumulate in float32 / float64).
_TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def check_against_baseline(case: Case, entry: str) -> None:
    """Raises AssertionError when ``entry`` disagrees with the baseline (forward and every gradient):
    a benchmark of a wrong result is meaningless. Runs once per case, outside the timed region."""
    if entry == BASELINE:
        return
    want = [case.forward(BASELINE)()] + list(case.callable(BASELINE, "fwd+bwd")())
    got = [case.forward(entry)()] + list(case.callable(entry, "fwd+bwd")())
    names = ["output"] + [f"grad[{i}]" for i in range(len(case.diff))]
    tol = _TOL.get(case.dtype, 1e-2)
    for name, w, g in zip(names, want, got):
        w, g = w.detach().double(), g.detach().double()
        scale = max(w.abs().max().item(), 1e-30)
        err = (w - g).abs().max().item() / scale
        assert err <= tol, (f"{case.op} {case.size.id} {case.dtype}: backend {entry!r} {name} differs from the "
                            f"baseline by {err:.3g} (relative to max |value|; tolerance {tol})")
