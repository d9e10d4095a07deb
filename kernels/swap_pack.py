"""Triton kernel of SWAP's sign packing (fastnas.proxies.packing).

One program owns ``BLOCK_V`` units (columns) of an (S, V) activation block with arbitrary strides. It
walks the S samples (``tl.static_range``, S <= 63, unrolled), ORs ``(x > 0) << s`` into an int64 code
per unit, then either

* stores the codes (``pack_signs``: the S > 24 path, whose distinct codes torch.unique sorts), or
* marks ``seen[code] = 1`` in a 2**S-byte bitmap (``pack_mark``: S <= 24, SWAP's default S = 16).

Why fuse the marking: the codes never go to memory. The unfused path writes 8 bytes per unit and the
scatter reads them back, next to the 2*S bytes (fp16) .. 4*S bytes (fp32) per unit that packing reads;
so fused saves ~1/9 of the traffic at S = 16 fp32, ~1/3 in fp16, and one launch plus one V-sized
allocation per hooked layer (80 layers per NB201 network). Concurrent programs may store the same
``1`` to the same byte: every writer stores the same value, so the race is benign.

Entry points take CUDA tensors; on the CPU they run only under the Triton interpreter
(``TRITON_INTERPRET=1``, set before triton is imported), which is how the tests run them without a GPU.
This module imports triton but never touches a GPU at import time.
"""
from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

__all__ = ["pack_signs", "pack_mark", "MAX_SAMPLES", "MAX_MARK_SAMPLES", "SUPPORTED_DTYPES"]

MAX_SAMPLES = 63            # one int64 word per unit, sign bit clear
MAX_MARK_SAMPLES = 24       # the bitmap of pack_mark has 2**S entries (16 MiB at 24)
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# Up to 1024 units x 4 warps: each sample row is one coalesced 4 KiB (fp32) load per program; S loads
# per program keep enough bytes in flight for a memory-bound kernel without a tuning sweep. The S loads
# are unrolled and issued together, so a thread holds S * (BLOCK_V / 128) * itemsize bytes of them:
# compiled for sm_80 by tests/triton_aot.py (triton 3.6), 1024 units at S = 63 in float64 needed a
# 4272-byte stack frame (spills), in float16 255 registers. BLOCK_V therefore shrinks so that a
# thread's loads stay within _LOAD_BYTES_PER_THREAD (SWAP's S = 16 in fp32 keeps 1024).
_MAX_BLOCK_V = 1024
_MIN_BLOCK_V = 128
_NUM_WARPS = 4
_LOAD_BYTES_PER_THREAD = 512


def _block_v(samples: int, itemsize: int) -> int:
    """Units per program: the largest power of two <= 1024 whose unrolled loads fit the budget."""
    per_thread = max(1, _LOAD_BYTES_PER_THREAD // (samples * itemsize))  # elements per thread
    block = _MIN_BLOCK_V
    while block * 2 <= _MAX_BLOCK_V and (block * 2) // (32 * _NUM_WARPS) <= per_thread:
        block *= 2
    return block


@triton.jit
def _pack_signs_kernel(acts_ptr, stride_s, stride_v, codes_ptr, seen_ptr, V,
                       S: tl.constexpr, MARK: tl.constexpr, BLOCK_V: tl.constexpr):
    pid = tl.program_id(0)
    v = pid.to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    ok = v < V
    ptrs = acts_ptr + v * stride_v
    code = tl.zeros([BLOCK_V], dtype=tl.int64)
    for s in tl.static_range(S):
        x = tl.load(ptrs, mask=ok, other=0.0)
        code = code | ((x > 0).to(tl.int64) << s)
        ptrs += stride_s
    if MARK:
        tl.store(seen_ptr + code, tl.full([BLOCK_V], 1, tl.uint8), mask=ok)
    else:
        tl.store(codes_ptr + v, code, mask=ok)


def _check(acts: torch.Tensor, max_samples: int) -> None:
    if acts.dim() != 2:
        raise ValueError(f"activations must be 2-D (samples S, units V), got shape {tuple(acts.shape)}")
    if not 1 <= acts.shape[0] <= max_samples:
        raise ValueError(f"S = {acts.shape[0]} samples: this kernel takes 1 <= S <= {max_samples}")
    if acts.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"activations of dtype {acts.dtype} are not supported; use one of {SUPPORTED_DTYPES}")
    if not acts.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"activations are on {acts.device}: the Triton kernel needs a CUDA tensor "
                         f"(CPU tensors only under TRITON_INTERPRET=1, set before triton is imported)")


def _launch(acts, codes, seen, mark: bool) -> None:
    S, V = acts.shape
    if V == 0:
        return
    block_v = _block_v(S, acts.element_size())
    grid = (triton.cdiv(V, block_v),)
    with torch.cuda.device(acts.device) if acts.is_cuda else contextlib.nullcontext():
        _pack_signs_kernel[grid](acts, acts.stride(0), acts.stride(1), codes, seen, V,
                                 S=S, MARK=mark, BLOCK_V=block_v, num_warps=_NUM_WARPS,
                                 enable_fp_fusion=False)  # no float arithmetic; explicit: no warning


def pack_signs(acts: torch.Tensor) -> torch.Tensor:
    """acts (S, V), S <= 63, any strides -> int64 codes (V,), bit s of code v = ``acts[s, v] > 0``."""
    _check(acts, MAX_SAMPLES)
    codes = torch.empty(acts.shape[1], dtype=torch.int64, device=acts.device)
    _launch(acts, codes, codes, mark=False)
    return codes


def pack_mark(acts: torch.Tensor, seen: torch.Tensor) -> None:
    """Marks the patterns of acts (S, V), S <= 24, in ``seen``: bool (2**S,) on acts' device, in place."""
    _check(acts, MAX_MARK_SAMPLES)
    n = 1 << acts.shape[0]
    if seen.dtype != torch.bool or seen.shape != (n,) or not seen.is_contiguous():
        raise ValueError(f"seen must be a contiguous bool tensor of shape ({n},), got {seen.dtype} "
                         f"{tuple(seen.shape)}")
    if seen.device != acts.device:
        raise ValueError(f"seen is on {seen.device}, the activations on {acts.device}")
    seen_bytes = seen.view(torch.uint8)
    _launch(acts, seen_bytes, seen_bytes, mark=True)
