"""Every fused backend of the shuffle-mix kernel pair against a pure-PyTorch reference of
docs/kernel_interface.md (computed in float64).

Backends (the first part of every test id):

* ``cpu``: ``fastnas._C.mix_forward`` / ``mix_backward`` on CPU tensors (float32, float64).
* ``triton``: ``fastnas.kernels.shuffle_mix`` (kernels/shuffle_mix.py). Without a CUDA GPU the kernels run
  on CPU tensors through the Triton interpreter (TRITON_INTERPRET=1, set here and in conftest.py before
  triton is imported); with one they run compiled, on CUDA tensors (float32, float16, bfloat16).
* ``cuda``: the same ``fastnas._C`` functions on CUDA tensors (float32, float16, bfloat16, float64);
  marked ``gpu``.
* ``cuda-emu``: the CUDA kernels of csrc/cuda/mix_kernels.cu, unchanged, compiled for the CPU against an
  emulation of the CUDA runtime (tests/cuda_emulator.py: threads, barriers, warp shuffles, 16-bit
  conversions) and called as csrc/cuda/mix_cuda.cpp calls them, on CPU tensors (all four dtypes). It
  runs everywhere a C++17 compiler is found, so the CUDA kernels' arithmetic and indexing are tested
  before any GPU session; skipped without a compiler.

A dtype a backend does not support is skipped for that backend, with the backend's reason. A missing
``fastnas._C`` skips the cuda backend, and fails the cpu backend unless FASTNAS_ALLOW_NO_EXTENSION=1
(a broken build must not pass quietly). A missing triton skips the triton backend only.

Outputs are pre-filled with NaN (and, when they are views of a bigger buffer, the rest of that buffer
too), so an element left unwritten, or written outside its view, fails.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of triton

import cuda_emulator  # noqa: E402
from fastnas import _ext  # noqa: E402
from fastnas.ops.backends import BACKENDS  # noqa: E402
from helpers import require_backend  # noqa: E402


# --------------------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------------------
DEVICES = {
    "cpu": torch.device("cpu"),
    "triton": torch.device("cuda" if HAS_CUDA else "cpu"),
    "cuda": torch.device("cuda"),
    "cuda-emu": torch.device("cpu"),
}
_MARKS = {
    "cpu": [],
    "triton": [pytest.mark.triton] + ([pytest.mark.gpu] if HAS_CUDA else []),
    "cuda": [pytest.mark.gpu],
    "cuda-emu": [],
}
BACKEND_NAMES = ("cpu", "triton", "cuda", "cuda-emu")
CUDA_MAX_OPS = 16  # FASTNAS_MAX_OPS of the CUDA path (docs/kernel_interface.md)


@functools.lru_cache(maxsize=None)
def _triton_kernels():
    """The installed ``fastnas.kernels.shuffle_mix`` (TRITON_INTERPRET is set before triton's import)."""
    try:
        return importlib.import_module("fastnas.kernels.shuffle_mix")
    except ImportError as exc:  # triton installed but unusable
        pytest.skip(f"the Triton kernels cannot be imported: {exc}")


class Fused:
    """One backend: where its tensors live and how to call its two entry points."""

    def __init__(self, name: str):
        self.name = name
        self.device = DEVICES[name]
        self.is_triton = name == "triton"
        self.is_emulated = name == "cuda-emu"
        # the exceptions bad arguments raise: the Triton launcher's ValueError, TORCH_CHECK's RuntimeError
        self.errors = (ValueError,) if self.is_triton else (ValueError, RuntimeError)
        if self.is_triton:
            self._impl = _triton_kernels()
        elif self.is_emulated:
            self._impl = cuda_emulator.EmulatedCuda(_emulated_cuda_library())
        else:
            self._impl = _ext.extension()

    def supports(self, dtype) -> bool:
        if self.is_emulated:
            return dtype in cuda_emulator.SUPPORTED_DTYPES
        return BACKENDS[self.name].why_not(self.device, dtype) == ""

    @staticmethod
    def _blocks_kw(blocks):
        return {} if blocks is None else {"block_r": blocks[0], "block_s": blocks[1]}

    def mix_forward(self, *args, blocks: Optional[Tuple[int, int]] = None):
        """``blocks`` = (block_r, block_s) is a Triton launch knob; the other backends ignore it."""
        self._impl.mix_forward(*args, **(self._blocks_kw(blocks) if self.is_triton else {}))

    def mix_backward(self, *args, blocks: Optional[Tuple[int, int]] = None):
        self._impl.mix_backward(*args, **(self._blocks_kw(blocks) if self.is_triton else {}))


@functools.lru_cache(maxsize=None)
def _emulated_cuda_library():
    """The emulated CUDA kernels, compiled once per session (a skip without a C++ compiler; a compile
    error is a failure)."""
    try:
        return cuda_emulator.build()
    except FileNotFoundError as exc:
        pytest.skip(f"cannot build the emulated CUDA kernels: {exc}")


def get_backend(name: str, dtype=torch.float32) -> Fused:
    """The backend, or a skip with its reason (a failure for a missing cpu extension, see above)."""
    if name == "cuda-emu":
        if dtype not in cuda_emulator.SUPPORTED_DTYPES:
            pytest.skip(f"the CUDA kernels do not support {dtype}")
        return Fused(name)
    require_backend(name, str(DEVICES[name]), dtype)
    return Fused(name)


def accumulation_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


BACKEND_PARAMS = [pytest.param(name, id=name, marks=_MARKS[name]) for name in BACKEND_NAMES]

H = W = 7
TOL = {  # (rtol, atol) of kernel outputs in D against the float64 reference
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    # 1 ulp of bf16 is 2^-8 relative; the interpreter rounds float32 -> bfloat16 toward zero (GPUs
    # round to nearest even), so allow a little more than one ulp.
    torch.bfloat16: (1.6e-2, 1.6e-2),
}
DOT_TOL = {  # (rtol, atol) of dots, by accumulation dtype A, for at most a few thousand products
    torch.float32: (1e-4, 1e-3),
    torch.float64: (1e-12, 1e-12),
}


# --------------------------------------------------------------------------------------------------
# reference (docs/kernel_interface.md, computed in float64)
# --------------------------------------------------------------------------------------------------
def shuffle_index(C: int, g: int) -> list:
    """c(o) for every output channel o."""
    return [(o % g) * (C // g) + o // g for o in range(C)]


def inverse_shuffle_index(C: int, g: int) -> list:
    """o(c) for every concatenated channel c."""
    return [(c % (C // g)) * g + c // (C // g) for c in range(C)]


def ref_forward(out_before, ops, weights, weight_index, bypass, Cm, g, edge_weight, accumulate):
    B, C, S = out_before.shape
    w = weights.double()
    mixed = torch.zeros(B, Cm, S, dtype=torch.float64, device=out_before.device)
    for o, i in zip(ops, weight_index):
        mixed = mixed + w[i] * o.double()
    cat = mixed if bypass is None else torch.cat([mixed, bypass.double()], 1)
    v = cat[:, shuffle_index(C, g)]
    if edge_weight is not None:
        v = v * edge_weight.double()[0]
    if accumulate:
        v = out_before.double() + v
    return v


def ref_backward(grad, ops, weights, weight_index, bypass, Cm, g, edge_weight):
    B, C, S = grad.shape
    gs = grad.double()[:, inverse_shuffle_index(C, g)]
    ew = 1.0 if edge_weight is None else edge_weight.double()[0]
    w = weights.double()
    grad_ops = [ew * w[i] * gs[:, :Cm] for i in weight_index]
    grad_bypass = ew * gs[:, Cm:]
    dots = [(gs[:, :Cm] * o.double()).sum() for o in ops]
    dots.append((gs[:, Cm:] * bypass.double()).sum() if bypass is not None
                else torch.zeros((), dtype=torch.float64, device=grad.device))
    return grad_ops, grad_bypass, torch.stack(dots)


# --------------------------------------------------------------------------------------------------
# tensors in assorted layouts: (B, ch, S) views built the way the Python layer builds them
# --------------------------------------------------------------------------------------------------
LAYOUTS = ("contig", "cl", "sliced", "bt", "sstride")


def _view(base: torch.Tensor, layout: str, B: int, ch: int) -> torch.Tensor:
    if layout == "contig":  # (B, ch, H, W) contiguous
        v = base
    elif layout == "cl":  # channels_last
        v = base.permute(0, 3, 1, 2)
    elif layout == "sliced":  # x[:, 2:2+ch] of a (B, ch+5, H, W) tensor: nonzero offset, bigger batch stride
        v = base[:, 2:2 + ch]
    elif layout == "bt":  # batch-transposed storage (ch, B, H, W)
        v = base.transpose(0, 1)
    elif layout == "sstride":  # every other column of a (B, ch, H, 2W) tensor: spatial stride 2
        v = base[..., ::2]
    else:
        raise ValueError(layout)
    assert v.shape == (B, ch, H, W), (layout, v.shape)
    flat = v.flatten(2)
    assert flat.data_ptr() == v.data_ptr() and flat._base is not None, f"{layout}: flatten(2) copied"
    return flat


def _base_shape(layout: str, B: int, ch: int) -> Tuple[int, ...]:
    return {
        "contig": (B, ch, H, W), "cl": (B, H, W, ch), "sliced": (B, ch + 5, H, W),
        "bt": (ch, B, H, W), "sstride": (B, ch, H, 2 * W),
    }[layout]


def _randn(shape, gen: torch.Generator, dtype, device) -> torch.Tensor:
    # float64 data are drawn in float64 (not float32 values widened), so that a kernel computing in
    # float32 inside cannot pass the tight float64 tolerance; the other dtypes round float32 draws.
    draw = torch.float64 if dtype == torch.float64 else torch.float32
    return torch.randn(shape, generator=gen, dtype=draw).to(dtype=dtype, device=device)


class Buf:
    """A (B, ch, S) view of a bigger base tensor, with a mask of the base elements the view covers."""

    def __init__(self, layout: str, B: int, ch: int, dtype, fill: str, gen: torch.Generator, device):
        shape = _base_shape(layout, B, ch)
        if fill == "nan":
            self.base = torch.full(shape, float("nan"), dtype=dtype, device=device)
        else:
            self.base = _randn(shape, gen, dtype, device)
        self.view = _view(self.base, layout, B, ch)
        covered = torch.zeros(shape, dtype=torch.bool, device=device)
        _view(covered, layout, B, ch).fill_(True)
        self.covered = covered

    def assert_outside_untouched(self, what: str):
        outside = self.base[~self.covered]
        assert torch.isnan(outside).all(), f"{what}: the kernel wrote outside its view"


# --------------------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    Cm: int
    Cb: int
    groups: int
    n_ops: int
    B: int = 2
    weight_index: Optional[Sequence[int]] = None  # default range(n_ops)
    n_w: Optional[int] = None  # default n_ops (at least 1)
    edge_weight: bool = False
    accumulate: bool = False
    op_layouts: Sequence[str] = ("contig",)  # cycled over the ops
    bypass_layout: str = "contig"
    out_layout: str = "contig"  # out (forward) and grad (backward)
    grad_layouts: Sequence[str] = ("contig",)  # grad_ops / grad_bypass, cycled
    blocks: Optional[Tuple[int, int]] = None  # Triton only: (block_r, block_s) or the launcher's default
    grad_ops_pattern: str = "all"  # all | alternate (every other None) | none
    grad_bypass: bool = True
    dots: bool = True
    dtypes: Tuple = (torch.float32,)  # float64 is added to every case (cpu and cuda run it)
    extra: dict = field(default_factory=dict)

    @property
    def widx(self):
        return list(self.weight_index) if self.weight_index is not None else list(range(self.n_ops))

    @property
    def nw(self):
        return self.n_w if self.n_w is not None else max(1, self.n_ops)


HALF = (torch.float32, torch.float16, torch.bfloat16)

CASES = [
    # partial_channel_mix (PC-DARTS, K=4): Cm = C/4 mixed, the rest bypassed, shuffled
    Case("pc_g4_8ops", Cm=6, Cb=18, groups=4, n_ops=8, dtypes=HALF),
    Case("pc_g4_8ops_ew_acc", Cm=6, Cb=18, groups=4, n_ops=8, edge_weight=True, accumulate=True, dtypes=HALF),
    Case("pc_g2_3ops_widx", Cm=12, Cb=12, groups=2, n_ops=3, weight_index=(4, 0, 2), n_w=5, edge_weight=True),
    Case("pc_g8_2ops_repeated_widx", Cm=8, Cb=16, groups=8, n_ops=2, weight_index=(1, 1), n_w=3),
    Case("pc_g1_1op", Cm=6, Cb=18, groups=1, n_ops=1),
    Case("pc_g4_5ops_B1", Cm=6, Cb=18, groups=4, n_ops=5, B=1, accumulate=True),
    Case("pc_g4_bypass_wider_than_op", Cm=4, Cb=20, groups=4, n_ops=4, edge_weight=True),
    # layouts: sliced (x[:, :Cp] of a bigger tensor), channels_last, batch-transposed, spatial stride,
    # and every op in its own layout
    Case("pc_sliced", Cm=6, Cb=18, groups=4, n_ops=3, op_layouts=("sliced",), bypass_layout="sliced",
         out_layout="sliced", grad_layouts=("sliced",), dtypes=HALF),
    Case("pc_channels_last", Cm=6, Cb=18, groups=4, n_ops=3, op_layouts=("cl",), bypass_layout="cl",
         out_layout="cl", grad_layouts=("cl",), edge_weight=True, dtypes=(torch.float32, torch.bfloat16)),
    Case("pc_mixed_layouts", Cm=6, Cb=18, groups=2, n_ops=5, op_layouts=LAYOUTS, bypass_layout="sliced",
         out_layout="cl", grad_layouts=("bt", "sstride", "cl", "contig", "sliced"), edge_weight=True,
         accumulate=True),
    Case("pc_mixed_layouts_g8", Cm=8, Cb=16, groups=8, n_ops=4, op_layouts=("cl", "bt", "sstride", "sliced"),
         bypass_layout="bt", out_layout="sstride", grad_layouts=("sliced", "cl")),
    # edge_normalize: all channels mixed, groups 1, no bypass
    Case("edge_norm_8ops", Cm=24, Cb=0, groups=1, n_ops=8, dtypes=HALF),
    Case("edge_norm_7ops_acc", Cm=24, Cb=0, groups=1, n_ops=7, accumulate=True, op_layouts=("contig", "sliced")),
    Case("edge_norm_2ops_ew_cl", Cm=24, Cb=0, groups=1, n_ops=2, edge_weight=True, op_layouts=("cl",),
         out_layout="cl", grad_layouts=("cl",)),
    # channel_shuffle: no ops, bypass only
    Case("shuffle_g1", Cm=0, Cb=24, groups=1, n_ops=0),
    Case("shuffle_g2", Cm=0, Cb=24, groups=2, n_ops=0),
    Case("shuffle_g4_half", Cm=0, Cb=24, groups=4, n_ops=0, dtypes=HALF),
    Case("shuffle_g8_ew_acc", Cm=0, Cb=24, groups=8, n_ops=0, edge_weight=True, accumulate=True),
    Case("shuffle_g4_cl", Cm=0, Cb=24, groups=4, n_ops=0, bypass_layout="cl", out_layout="cl",
         grad_layouts=("cl",)),
    # degenerate: mixed channels but no op outputs (empty sum = 0)
    Case("mixed_channels_no_ops", Cm=8, Cb=16, groups=4, n_ops=0, edge_weight=True),
    # small tiles (Triton): many programs, ragged row and column tails, several partial sums per dot;
    # the other backends run these shapes with their own partition
    Case("tiles_4x16", Cm=6, Cb=18, groups=4, n_ops=3, blocks=(4, 16), edge_weight=True),
    Case("tiles_2x32_acc", Cm=12, Cb=12, groups=2, n_ops=2, B=1, blocks=(2, 32), accumulate=True,
         op_layouts=("cl", "contig")),
    Case("tiles_16x1", Cm=6, Cb=18, groups=8, n_ops=2, B=1, blocks=(16, 1)),
    # which gradients are wanted
    Case("grads_alternate_no_bypass_grad", Cm=6, Cb=18, groups=4, n_ops=4, grad_ops_pattern="alternate",
         grad_bypass=False, edge_weight=True),
    Case("grads_dots_only", Cm=6, Cb=18, groups=4, n_ops=3, grad_ops_pattern="none", grad_bypass=False),
    Case("grads_no_dots", Cm=6, Cb=18, groups=4, n_ops=3, dots=False, edge_weight=True),
    # more than 16 ops (the cuda backend takes at most 16 per call: skipped there, see
    # test_rejects_mismatched_arguments)
    Case("many_ops_17", Cm=6, Cb=18, groups=4, n_ops=17, blocks=(8, 64)),
]


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


PARAMS = [pytest.param(name, case, dtype, id=f"{name}-{case.id}-{_dtype_name(dtype)}", marks=_MARKS[name])
          for name in BACKEND_NAMES for case in CASES for dtype in case.dtypes + (torch.float64,)]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _case_backend(name: str, case: Case, dtype) -> Fused:
    be = get_backend(name, dtype)
    if name in ("cuda", "cuda-emu") and case.n_ops > CUDA_MAX_OPS:
        pytest.skip(f"the cuda backend takes at most FASTNAS_MAX_OPS = {CUDA_MAX_OPS} ops per call")
    return be


def _inputs(case: Case, dtype, gen, device):
    B, Cm, Cb = case.B, case.Cm, case.Cb
    acc = accumulation_dtype(dtype)
    ops = [Buf(case.op_layouts[k % len(case.op_layouts)], B, Cm, dtype, "rand", gen, device)
           for k in range(case.n_ops)]
    bypass = Buf(case.bypass_layout, B, Cb, dtype, "rand", gen, device) if Cb else None
    weights = (torch.rand(case.nw, generator=gen, dtype=acc) + 0.1).to(device)
    edge_weight = (torch.rand(1, generator=gen, dtype=acc) + 0.5).to(device) if case.edge_weight else None
    return ops, bypass, weights, edge_weight


def _close(actual, expected, dtype, what):
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


# --------------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,case,dtype", PARAMS)
def test_mix_forward(backend: str, case: Case, dtype):
    be = _case_backend(backend, case, dtype)
    dev = be.device
    gen = _gen(1)
    ops, bypass, weights, edge_weight = _inputs(case, dtype, gen, dev)
    C = case.Cm + case.Cb
    out = Buf(case.out_layout, case.B, C, dtype, "nan", gen, dev)
    if case.accumulate:
        out.view.copy_(_randn(out.view.shape, gen, dtype, dev))
    before = out.view.clone()
    op_views = [o.view for o in ops]
    bp_view = bypass.view if bypass is not None else None

    be.mix_forward(out.view, op_views, weights, case.widx, bp_view, case.Cm, case.groups, edge_weight,
                   case.accumulate, blocks=case.blocks)

    expected = ref_forward(before, op_views, weights, case.widx, bp_view, case.Cm, case.groups, edge_weight,
                           case.accumulate)
    # What the kernel must produce: the result in A rounded once to D.
    _close(out.view, expected.to(dtype), dtype, "out")
    assert not torch.isnan(out.view).any()
    out.assert_outside_untouched("out")


@pytest.mark.parametrize("backend,case,dtype", PARAMS)
def test_mix_backward(backend: str, case: Case, dtype):
    be = _case_backend(backend, case, dtype)
    dev = be.device
    acc = accumulation_dtype(dtype)
    gen = _gen(2)
    ops, bypass, weights, edge_weight = _inputs(case, dtype, gen, dev)
    C = case.Cm + case.Cb
    grad = Buf(case.out_layout, case.B, C, dtype, "rand", gen, dev)
    layouts = case.grad_layouts

    def want(k):
        return case.grad_ops_pattern == "all" or (case.grad_ops_pattern == "alternate" and k % 2 == 0)

    grad_ops = [Buf(layouts[k % len(layouts)], case.B, case.Cm, dtype, "nan", gen, dev) if want(k) else None
                for k in range(case.n_ops)]
    grad_bypass = (Buf(layouts[case.n_ops % len(layouts)], case.B, case.Cb, dtype, "nan", gen, dev)
                   if (bypass is not None and case.grad_bypass) else None)
    dots = torch.full((case.n_ops + 1,), float("nan"), dtype=acc, device=dev) if case.dots else None
    op_views = [o.view for o in ops]
    bp_view = bypass.view if bypass is not None else None

    be.mix_backward(grad.view, op_views, weights, case.widx, bp_view, case.Cm, case.groups, edge_weight,
                    [g.view if g is not None else None for g in grad_ops],
                    grad_bypass.view if grad_bypass is not None else None, dots, blocks=case.blocks)

    exp_ops, exp_bypass, exp_dots = ref_backward(grad.view, op_views, weights, case.widx, bp_view, case.Cm,
                                                 case.groups, edge_weight)
    for k, g in enumerate(grad_ops):
        if g is not None:
            _close(g.view, exp_ops[k].to(dtype), dtype, f"grad_ops[{k}]")
            g.assert_outside_untouched(f"grad_ops[{k}]")
    if grad_bypass is not None:
        _close(grad_bypass.view, exp_bypass.to(dtype), dtype, "grad_bypass")
        grad_bypass.assert_outside_untouched("grad_bypass")
    if dots is not None:
        assert dots.dtype == acc
        rtol, atol = DOT_TOL[acc]
        torch.testing.assert_close(dots.double(), exp_dots, rtol=rtol, atol=atol, msg=lambda m: f"dots: {m}")


@pytest.mark.parametrize("channels_last", [False, True], ids=["contig", "cl"])
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_backward_dots_deterministic(backend, channels_last):
    be = get_backend(backend)
    dev = be.device
    if be.is_triton and dev.type == "cpu":
        # the interpreter is slow: a small shape, cut into many small tiles
        B, Cm, Cb, Hs, blocks = 2, 6, 18, 7, (4, 32)
    else:
        # big enough that the work is split over several threads / programs
        B, Cm, Cb, Hs, blocks = 4, 16, 48, 32, None
    n_ops = 3
    gen = _gen(3)

    def mk(ch):
        t = torch.randn(B, ch, Hs, Hs, generator=gen).to(dev)
        return (t.to(memory_format=torch.channels_last) if channels_last else t).flatten(2)

    ops = [mk(Cm) for _ in range(n_ops)]
    bypass = mk(Cb)
    grad = mk(Cm + Cb)
    weights = (torch.rand(n_ops, generator=gen) + 0.1).to(dev)
    edge_weight = (torch.rand(1, generator=gen) + 0.5).to(dev)
    results = []
    for _ in range(3):
        dots = torch.full((n_ops + 1,), float("nan"), device=dev)
        be.mix_backward(grad, ops, weights, list(range(n_ops)), bypass, Cm, 4, edge_weight, [None] * n_ops, None,
                        dots, blocks=blocks)
        results.append(dots)
    assert not torch.isnan(results[0]).any()
    for r in results[1:]:
        assert torch.equal(results[0], r), (results[0].tolist(), r.tolist())


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_dots_overwritten_not_accumulated(backend):
    be = get_backend(backend)
    dev = be.device
    gen = _gen(4)
    ops = [torch.randn(1, 8, 5, generator=gen).to(dev)]
    bypass = torch.randn(1, 16, 5, generator=gen).to(dev)
    grad = torch.randn(1, 24, 5, generator=gen).to(dev)
    weights = torch.ones(1, device=dev)
    first = torch.zeros(2, device=dev)
    be.mix_backward(grad, ops, weights, [0], bypass, 8, 4, None, [None], None, first)
    dots = torch.full((2,), 1e6, device=dev)
    be.mix_backward(grad, ops, weights, [0], bypass, 8, 4, None, [None], None, dots)
    assert torch.equal(dots, first)


@pytest.mark.parametrize("B,Cm,Cb,S", [(0, 6, 18, 49), (2, 6, 18, 0), (2, 0, 0, 49)],
                         ids=["batch0", "spatial0", "channels0"])
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_zero_size(backend, B, Cm, Cb, S):
    be = get_backend(backend)
    dev = be.device
    n_ops = 2 if Cm else 0
    ops = [torch.randn(B, Cm, S, device=dev) for _ in range(n_ops)]
    bypass = torch.randn(B, Cb, S, device=dev) if Cb else None
    weights = torch.rand(max(n_ops, 1), device=dev)
    ew = torch.ones(1, device=dev)
    out = torch.full((B, Cm + Cb, S), float("nan"), device=dev)
    be.mix_forward(out, ops, weights, list(range(n_ops)), bypass, Cm, 2, ew, True)
    be.mix_forward(out, ops, weights, list(range(n_ops)), bypass, Cm, 2, None, False)
    grad = torch.randn(B, Cm + Cb, S, device=dev)
    grad_ops = [torch.empty_like(o) for o in ops]
    grad_bypass = torch.empty_like(bypass) if bypass is not None else None
    dots = torch.full((n_ops + 1,), float("nan"), device=dev)
    be.mix_backward(grad, ops, weights, list(range(n_ops)), bypass, Cm, 2, ew, grad_ops, grad_bypass, dots)
    assert torch.equal(dots, torch.zeros_like(dots))
    be.mix_backward(grad, ops, weights, list(range(n_ops)), bypass, Cm, 2, ew, grad_ops, grad_bypass, None)


@pytest.mark.triton
def test_launch_config_is_sane():
    get_backend("triton")
    sm = _triton_kernels()
    # wide spatial tiles for contiguous data, one-column tiles of many rows for channels_last data
    br, bs, nw, nt, npg = sm._launch_config(64 * 16, 32 * 32, None, None, False)
    assert (bs, nt) == (1024, 1) and br * bs <= 1024 and nw == 4 and npg == 64 * 16
    br, bs, nw, nt, npg = sm._launch_config(24, 49, None, None, False)
    assert bs == 64 and br == 16 and npg == 2
    br, bs, nw, nt, npg = sm._launch_config(64 * 16, 1024, None, None, True)
    assert bs == 1 and br == 1024 and npg == 1024
    cl = torch.empty(2, 8, 3, 3).to(memory_format=torch.channels_last).flatten(2)
    assert sm._channels_fast([cl, cl, torch.empty(2, 8, 9)])
    assert not sm._channels_fast([torch.empty(2, 8, 9), cl[:, :4], torch.empty(2, 4, 9)])
    with pytest.raises(ValueError):
        sm._launch_config(8, 8, 3, None, False)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_rejects_mismatched_arguments(backend):
    if backend == "cuda-emu":
        pytest.skip("argument checks live in the torch side (binding.cpp, mix_cuda.cpp), not in the emulated "
                    "kernels; the launchers' own refusals: tests/test_cuda_emulated.py")
    be = get_backend(backend)
    dev = be.device
    ops = [torch.randn(1, 4, 5, device=dev)]
    out = torch.empty(1, 8, 5, device=dev)
    with pytest.raises(be.errors):  # 1 op but 2 weight indices
        be.mix_forward(out, ops, torch.ones(2, device=dev), [0, 1], None, 4, 1, None, False)
    with pytest.raises(be.errors):  # 4 channels unaccounted for
        be.mix_forward(out, ops, torch.ones(1, device=dev), [0], None, 4, 1, None, False)
    # float64 data: unsupported by Triton; for the _C backends the float32 weights are not of the
    # accumulation dtype float64
    with pytest.raises(be.errors):
        be.mix_forward(out.double(), [o.double() for o in ops], torch.ones(1, device=dev), [0],
                       torch.empty(1, 4, 5, device=dev).double(), 4, 1, None, False)
    if backend == "cpu":
        with pytest.raises(be.errors):  # float16 on the CPU
            be.mix_forward(out.half(), [o.half() for o in ops], torch.ones(1, device=dev), [0],
                           torch.empty(1, 4, 5, device=dev).half(), 4, 1, None, False)
    if backend == "cuda":
        n = CUDA_MAX_OPS + 1
        with pytest.raises(be.errors, match=f"at most {CUDA_MAX_OPS}"):
            be.mix_forward(torch.empty(1, 4, 5, device=dev), ops * n, torch.ones(n, device=dev), list(range(n)),
                           None, 4, 1, None, False)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_large_contiguous_and_channels_last(backend):
    # Shapes big enough for full 1024-element tiles and vectorised accesses (GPU), several threads and
    # S-chunks (cpu), in both layouts, in every dtype the backend supports.
    be = get_backend(backend)
    dev = be.device
    if be.is_triton and dev.type == "cpu":
        pytest.skip("too large for the Triton interpreter; runs on a CUDA GPU")
    gen = _gen(5)
    B, Cm, Cb, g, Hs = 8, 16, 48, 4, 32
    dtypes = [d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64) if be.supports(d)]
    for dtype in dtypes:
        acc = accumulation_dtype(dtype)
        for cl in (False, True):
            def mk(ch):
                t = _randn((B, ch, Hs, Hs), gen, dtype, dev)
                return (t.to(memory_format=torch.channels_last) if cl else t).flatten(2)
            ops = [mk(Cm) for _ in range(8)]
            bypass = mk(Cb)
            weights = torch.rand(8, generator=gen, dtype=acc).to(dev)
            ew = torch.rand(1, generator=gen, dtype=acc).to(dev)
            out = mk(Cm + Cb).fill_(float("nan"))
            be.mix_forward(out, ops, weights, list(range(8)), bypass, Cm, g, ew, False)
            expected = ref_forward(out, ops, weights, list(range(8)), bypass, Cm, g, ew, False)
            what = f"({_dtype_name(dtype)}, channels_last={cl})"
            _close(out, expected.to(dtype), dtype, f"out {what}")
            grad = mk(Cm + Cb)
            grad_ops = [torch.full_like(o, float("nan")) for o in ops]
            grad_bypass = torch.full_like(bypass, float("nan"))
            dots = torch.full((9,), float("nan"), dtype=acc, device=dev)
            be.mix_backward(grad, ops, weights, list(range(8)), bypass, Cm, g, ew, grad_ops, grad_bypass, dots)
            exp_ops, exp_bypass, exp_dots = ref_backward(grad, ops, weights, list(range(8)), bypass, Cm, g, ew)
            for k in range(8):
                _close(grad_ops[k], exp_ops[k].to(dtype), dtype, f"grad_ops[{k}] {what}")
            _close(grad_bypass, exp_bypass.to(dtype), dtype, f"grad_bypass {what}")
            rtol, atol = (1e-4, 1e-2) if acc == torch.float32 else (1e-12, 1e-10)
            torch.testing.assert_close(dots.double(), exp_dots, rtol=rtol, atol=atol,
                                       msg=lambda m: f"dots {what}: {m}")


def test_cpu_streaming_backward_matches_the_cached_path_bit_for_bit():
    """From 4 MiB of gradients on, the cpu backward writes them with non-temporal stores (a separate
    SSE loop with the same lanes and association). Its gradients must be exactly scale * unshuffled
    grad, and its dots the bits of the cached path's (taken by a call that writes no gradient)."""
    be = get_backend("cpu")
    gen = _gen(6)
    B, Cm, Cb, g, S, n_ops = 8, 16, 48, 4, 1024 + 5, 7  # 5.8 MiB of gradients; a ragged tail per plane
    ops = [torch.randn(B, Cm, S, generator=gen) for _ in range(n_ops)]
    bypass = torch.randn(B, Cb, S, generator=gen)
    grad = torch.randn(B, Cm + Cb, S, generator=gen)
    weights = torch.rand(n_ops, generator=gen) + 0.1
    ew = torch.rand(1, generator=gen) + 0.5
    widx = list(range(n_ops))
    grad_ops = [torch.full_like(o, float("nan")) for o in ops]
    grad_bypass = torch.full_like(bypass, float("nan"))
    streamed = torch.full((n_ops + 1,), float("nan"))
    be.mix_backward(grad, ops, weights, widx, bypass, Cm, g, ew, grad_ops, grad_bypass, streamed)
    cached = torch.full((n_ops + 1,), float("nan"))
    be.mix_backward(grad, ops, weights, widx, bypass, Cm, g, ew, [None] * n_ops, None, cached)
    assert torch.equal(streamed, cached), (streamed.tolist(), cached.tolist())
    u = grad[:, inverse_shuffle_index(Cm + Cb, g)]
    for k in range(n_ops):
        assert torch.equal(grad_ops[k], (ew[0] * weights[k]) * u[:, :Cm]), k
    assert torch.equal(grad_bypass, ew[0] * u[:, Cm:])
