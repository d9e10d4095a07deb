"""Runs the CUDA shuffle-mix kernels of csrc/cuda/mix_kernels.cu on the CPU, without a GPU.

``build()`` compiles the unchanged .cu source with the host C++ compiler against the emulation header
``tests/cuda_emu/emu.h`` (CUDA threads as fibers with real barriers and warp shuffles, blocks in
sequence, shared memory poisoned, misaligned vector accesses reported), after the textual rewrites of
``rewrite()``. The result is a shared library with the plain C launchers of ``csrc/cuda/mix_kernels.h``.

``EmulatedCuda`` calls them on CPU tensors the way ``csrc/cuda/mix_cuda.cpp`` (the torch side) calls
them on CUDA tensors: the same argument structs, the same workspace query and allocation, an error
code turned into a RuntimeError. So the kernels' indexing, layout choice (rows / channels / 128-bit
vectors), grid-stride loops, shuffle, dot reductions and 16-bit conversions are tested against the
reference in tests/test_kernel_interface.py before any GPU session. What it cannot show: speed, races
between blocks, and device-side faults other than wrong values (an out-of-view write is caught by the
NaN-poisoned buffers of those tests).
"""
from __future__ import annotations

import ctypes
import functools
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
CUDA_SRC = ROOT / "csrc" / "cuda" / "mix_kernels.cu"
EMU_INCLUDE = Path(__file__).resolve().parent / "cuda_emu" / "include"
MAX_OPS = 16  # FASTNAS_CUDA_MAX_OPS

# `name<targs><<<cfg>>>(` with template arguments free of <, >, ; and parentheses (as in the .cu)
_LAUNCH = re.compile(r"([A-Za-z_]\w*(?:<[^<>;()]*>)?)\s*<<<([^;]*?)>>>\s*\(")
# `__shared__ TYPE NAME[DIMS];` (TYPE may be a template-id)
_SHARED = re.compile(r"__shared__\s+([^;]+?)\s+([A-Za-z_]\w*)\s*((?:\[[^\];]*\])*)\s*;")

_DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
SUPPORTED_DTYPES = tuple(_DTYPE_CODE)


class _View(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("sb", ctypes.c_int64), ("sc", ctypes.c_int64), ("ss", ctypes.c_int64)]


class _FwdArgs(ctypes.Structure):
    _fields_ = [
        ("dtype", ctypes.c_int), ("n_ops", ctypes.c_int),
        ("B", ctypes.c_int64), ("C", ctypes.c_int64), ("S", ctypes.c_int64),
        ("mixed", ctypes.c_int64), ("groups", ctypes.c_int64), ("accumulate", ctypes.c_int),
        ("out", _View), ("ops", _View * MAX_OPS), ("weight_index", ctypes.c_int64 * MAX_OPS),
        ("weights", ctypes.c_void_p), ("bypass", _View), ("edge_weight", ctypes.c_void_p),
    ]


class _BwdArgs(ctypes.Structure):
    _fields_ = [
        ("dtype", ctypes.c_int), ("n_ops", ctypes.c_int),
        ("B", ctypes.c_int64), ("C", ctypes.c_int64), ("S", ctypes.c_int64),
        ("mixed", ctypes.c_int64), ("groups", ctypes.c_int64),
        ("grad", _View), ("ops", _View * MAX_OPS), ("grad_ops", _View * MAX_OPS),
        ("weight_index", ctypes.c_int64 * MAX_OPS), ("weights", ctypes.c_void_p),
        ("bypass", _View), ("grad_bypass", _View), ("edge_weight", ctypes.c_void_p), ("dots", ctypes.c_void_p),
    ]


def rewrite(source: str) -> str:
    """The .cu source as C++ for tests/cuda_emu/emu.h:

    * ``k<<<g, b, m, s>>>(args)`` -> ``::emu::launch(g, b, m, s, k, args)``;
    * ``__shared__ T name[dims];`` -> a per-block buffer poisoned with NaN (``::emu::shared_at``);
    * ``reinterpret_cast<`` -> ``::emu::device_cast<`` (reports misaligned vector accesses).

    Every occurrence must be rewritten, or this raises (extend the patterns).
    """
    out, n = _LAUNCH.subn(lambda m: f"::emu::launch({m[2]}, {m[1]}, ", source)
    if n != source.count("<<<"):
        raise RuntimeError(f"cuda_emulator: rewrote {n} of {source.count('<<<')} kernel launches")
    out, n = _SHARED.subn(lambda m: (f"static char emu_site_{m[2]}; "
                                     f"auto& {m[2]} = ::emu::shared_at<{m[1]}{m[3]}>(&emu_site_{m[2]});"), out)
    if n != source.count("__shared__"):
        raise RuntimeError(f"cuda_emulator: rewrote {n} of {source.count('__shared__')} __shared__ declarations")
    return out.replace("reinterpret_cast<", "::emu::device_cast<")


def _compiler() -> Optional[str]:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


_PROBE = """#include <ucontext.h>
int main() { _Float16 h = static_cast<_Float16>(1.5f); ucontext_t c; getcontext(&c);
             return static_cast<float>(h) == 1.5f ? 0 : 1; }
"""


@functools.lru_cache(maxsize=None)
def _compiler_problem(cxx: str) -> str:
    """"" when ``cxx`` has what the emulation needs (C++17, _Float16, <ucontext.h>: GCC >= 12 or clang on
    x86-64 / aarch64 Linux), else its error output. Probed once per compiler, not per build."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.cpp"
        probe.write_text(_PROBE)
        proc = subprocess.run([cxx, "-std=c++17", str(probe), "-o", str(Path(tmp) / "probe")],
                              capture_output=True, text=True)
    return "" if proc.returncode == 0 else proc.stderr[-1500:] or f"exit {proc.returncode}"


def _check_compiler(cxx: str) -> None:
    """A compiler without what the emulation needs is a reason to skip, not a failure of the kernels."""
    problem = _compiler_problem(cxx)
    if problem:
        raise FileNotFoundError(f"{cxx} cannot build the emulation (needs C++17, _Float16, ucontext.h):\n{problem}")


def build(workdir: Optional[str] = None, source: Optional[str] = None) -> ctypes.CDLL:
    """Compiles the emulated kernels (~5 s) and loads them. ``source`` replaces the .cu text (the tests
    build mutants to show that the emulation catches their bugs). FileNotFoundError without a suitable
    C++ compiler (a skip); RuntimeError with the compiler's output when compiling the kernels fails."""
    cxx = _compiler()
    if cxx is None:
        raise FileNotFoundError("no C++ compiler (g++, c++, clang++ or $CXX) on PATH")
    out_dir = Path(workdir or tempfile.mkdtemp(prefix="fastnas_cuda_emu_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_compiler(cxx)
    src = out_dir / "mix_kernels_emu.cpp"
    src.write_text(f'#line 1 "{CUDA_SRC}"\n' + rewrite(source if source is not None else CUDA_SRC.read_text()))
    lib = out_dir / "libmix_kernels_emu.so"
    cmd = [cxx, "-std=c++17", "-O1", "-g", "-fPIC", "-shared", "-Wall", "-Wno-unknown-pragmas",
           "-I", str(EMU_INCLUDE), "-I", str(CUDA_SRC.parent), str(src), "-o", str(lib)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"cuda_emulator: compiling the emulated kernels failed\n$ {' '.join(cmd)}\n"
                           f"{proc.stdout}{proc.stderr}")
    dll = ctypes.CDLL(str(lib))
    dll.fastnas_cuda_mix_forward.argtypes = [ctypes.POINTER(_FwdArgs), ctypes.c_void_p]
    dll.fastnas_cuda_mix_forward.restype = ctypes.c_int
    dll.fastnas_cuda_mix_backward_workspace.argtypes = [ctypes.POINTER(_BwdArgs)]
    dll.fastnas_cuda_mix_backward_workspace.restype = ctypes.c_int64
    dll.fastnas_cuda_mix_backward.argtypes = [ctypes.POINTER(_BwdArgs), ctypes.c_void_p, ctypes.c_int64,
                                              ctypes.c_void_p]
    dll.fastnas_cuda_mix_backward.restype = ctypes.c_int
    dll.fastnas_cuda_error_string.argtypes = [ctypes.c_int]
    dll.fastnas_cuda_error_string.restype = ctypes.c_char_p
    return dll


def _view(t: Optional[torch.Tensor]) -> _View:
    if t is None:
        return _View(None, 0, 0, 0)
    return _View(t.data_ptr(), t.stride(0), t.stride(1), t.stride(2))


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


class EmulatedCuda:
    """``mix_forward`` / ``mix_backward`` with the signatures of ``fastnas._C``, on CPU tensors, through
    the emulated CUDA launchers; the checks are those of csrc/cuda/mix_cuda.cpp that guard memory."""

    def __init__(self, dll: ctypes.CDLL):
        self.dll = dll

    def _check_common(self, fn, ref, ops, weights, weight_index, bypass, mixed, edge_weight):
        if ref.dtype not in _DTYPE_CODE:
            raise RuntimeError(f"{fn}: the CUDA kernels support float32, float64, float16 and bfloat16, "
                               f"got {ref.dtype}")
        if ref.dim() != 3:
            raise RuntimeError(f"{fn}: expected (B, C, S) tensors, got shape {tuple(ref.shape)}")
        if len(ops) > MAX_OPS:
            raise RuntimeError(f"{fn}: the CUDA kernels take at most {MAX_OPS} ops per call, got {len(ops)}")
        if len(weight_index) != len(ops):
            raise RuntimeError(f"{fn}: len(weight_index) = {len(weight_index)} must equal len(ops) = {len(ops)}")
        acc = _acc_dtype(ref.dtype)
        if weights.dtype != acc or not weights.is_contiguous():
            raise RuntimeError(f"{fn}: weights must be contiguous {acc}")
        if any(not 0 <= i < weights.numel() for i in weight_index):
            raise RuntimeError(f"{fn}: weight_index {list(weight_index)} out of range for {weights.numel()} weights")
        if bypass is None and ref.shape[1] != mixed:
            raise RuntimeError(f"{fn}: bypass is None, so mixed_channels must equal C = {ref.shape[1]}")
        if edge_weight is not None and (edge_weight.dtype != acc or edge_weight.numel() != 1):
            raise RuntimeError(f"{fn}: edge_weight must be one {acc} element")

    def _check(self, fn, code):
        if code != 0:
            msg = self.dll.fastnas_cuda_error_string(code).decode()
            raise RuntimeError(f"{fn}: fastnas CUDA kernel failed: {msg} (error {code})")

    def mix_forward(self, out, ops: Sequence[torch.Tensor], weights, weight_index, bypass, mixed_channels,
                    groups, edge_weight, accumulate) -> None:
        self._check_common("mix_forward", out, ops, weights, weight_index, bypass, mixed_channels, edge_weight)
        a = _FwdArgs()
        a.dtype = _DTYPE_CODE[out.dtype]
        a.n_ops = len(ops)
        a.B, a.C, a.S = out.shape
        a.mixed, a.groups, a.accumulate = mixed_channels, groups, int(bool(accumulate))
        a.out = _view(out)
        for i in range(len(ops)):
            a.ops[i] = _view(ops[i])
            a.weight_index[i] = int(weight_index[i])
        a.weights = weights.data_ptr()
        a.bypass = _view(bypass)
        a.edge_weight = edge_weight.data_ptr() if edge_weight is not None else None
        self._check("mix_forward", self.dll.fastnas_cuda_mix_forward(ctypes.byref(a), None))

    def mix_backward(self, grad, ops, weights, weight_index, bypass, mixed_channels, groups, edge_weight,
                     grad_ops, grad_bypass, dots) -> None:
        self._check_common("mix_backward", grad, ops, weights, weight_index, bypass, mixed_channels, edge_weight)
        if len(grad_ops) != len(ops):
            raise RuntimeError(f"mix_backward: len(grad_ops) = {len(grad_ops)} must equal len(ops) = {len(ops)}")
        acc = _acc_dtype(grad.dtype)
        if dots is not None and (dots.dtype != acc or not dots.is_contiguous() or dots.numel() != len(ops) + 1):
            raise RuntimeError(f"mix_backward: dots must be {len(ops) + 1} contiguous {acc} elements")
        a = _BwdArgs()
        a.dtype = _DTYPE_CODE[grad.dtype]
        a.n_ops = len(ops)
        a.B, a.C, a.S = grad.shape
        a.mixed, a.groups = mixed_channels, groups
        a.grad = _view(grad)
        for i in range(len(ops)):
            a.ops[i] = _view(ops[i])
            a.grad_ops[i] = _view(grad_ops[i])
            a.weight_index[i] = int(weight_index[i])
        a.weights = weights.data_ptr()
        a.bypass = _view(bypass)
        a.grad_bypass = _view(grad_bypass)
        a.edge_weight = edge_weight.data_ptr() if edge_weight is not None else None
        a.dots = dots.data_ptr() if dots is not None else None
        ws = self.dll.fastnas_cuda_mix_backward_workspace(ctypes.byref(a))
        # NaN-filled: a partial the reduction reads but no block wrote shows up in the dots
        workspace = torch.full((ws,), float("nan"), dtype=acc) if ws > 0 else None
        self._check("mix_backward", self.dll.fastnas_cuda_mix_backward(
            ctypes.byref(a), workspace.data_ptr() if workspace is not None else None, ws, None))
