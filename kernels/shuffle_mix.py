"""Triton kernels of the fused shuffle-mix pair (docs/kernel_interface.md).

``mix_forward`` / ``mix_backward`` implement the interface exactly, on 3-D ``(B, channels, S)`` tensors
with arbitrary, per-tensor strides, data in float32 / float16 / bfloat16, accumulation in float32.

Design
------
* Both kernels tile the ``(B * C, S)`` plane with ``BLOCK_R x BLOCK_S`` tiles on a 1-D grid (row
  tiles major, S tiles minor), so small spatial sizes (7x7, 8x8) still fill a program with several
  rows. The forward walks OUTPUT rows ``o`` and gathers concatenated channel ``c(o)``; the backward
  walks CONCATENATED rows ``c`` and gathers the upstream gradient row ``o(c)``; every program writes
  its own elements only, so there is no atomic and no race.
* When most tensors are channels_last-like (channel stride 1, spatial stride not 1) the tiles are one
  column of many rows instead, so that a warp walks consecutive channels.
* A row is either an op row (``c < Cm``) or a bypass row; inside a tile the choice is made with
  masked loads/stores (masked-off lanes issue no memory traffic) and ``tl.where``.
* The variable number of ops is a ``tl.static_range(N_OPS)`` loop over tuple arguments (pointers,
  strides, weight indices), so one compiled kernel serves every call with the same number of ops
  and the same constexpr flags. Weights are read on the device (no host<->device synchronisation).
* The backward dot products are reduced per program into a ``(num_programs, n_ops + 1)`` float32
  buffer, then summed over programs by ``torch.sum`` (fixed order: deterministic), and copied into
  ``dots``. That buffer is the only allocation besides the caller's outputs, so both launchers are
  CUDA-graph capturable.
* Offsets are computed in int64. Pointers and strides are kernel parameters (by value): the number
  of ops is bounded only by the kernel-parameter space (dozens of ops; tested up to 17).
* FP contraction (FMA) is enabled explicitly, independent of the Triton version's default.

This module imports triton but never touches a GPU at import time.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

__all__ = ["mix_forward", "mix_backward"]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Launch heuristics (memory-bound kernels): up to 1024 elements along S per tile, about 1024 elements
# per program, 4 warps for full tiles.
_MAX_BLOCK_S = 1024
_TILE_ELEMS = 1024
_MAX_WARPS = 4
_MAX_PROGRAMS = 2**31 - 1  # CUDA grid x-dimension limit
# Explicit, so that the result does not depend on the Triton version's default (which changes in 3.10
# and warns in 3.9 when left unset): multiply-adds may contract to FMAs.
_FP_FUSION = True


# --------------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------------
@triton.jit
def _shuffle_mix_fwd_kernel(
    out_ptr, out_s0, out_s1, out_s2,
    ops_ptrs, ops_s0, ops_s1, ops_s2,  # tuples, one entry per op (a dummy entry when N_OPS == 0)
    w_ptr, w_idx,  # weights (n_w,) float32; tuple of ints
    bp_ptr, bp_s0, bp_s1, bp_s2,
    ew_ptr,
    R, C, Cm, CPG, G, S, n_tiles_s,
    N_OPS: tl.constexpr, HAS_BYPASS: tl.constexpr, HAS_EW: tl.constexpr, ACCUMULATE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_r = pid // n_tiles_s
    pid_s = pid - pid_r * n_tiles_s

    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)  # flattened output rows b * C + o
    cols = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    row_ok = rows < R
    col_ok = cols < S
    b = rows // C
    o = rows - b * C
    c = (o % G) * CPG + o // G  # concatenated channel read by output channel o
    b64 = b.to(tl.int64)
    c64 = c.to(tl.int64)
    s64 = cols.to(tl.int64)
    mask = row_ok[:, None] & col_ok[None, :]
    is_op = c < Cm

    acc = tl.zeros([BLOCK_R, BLOCK_S], dtype=tl.float32)
    if N_OPS > 0:
        op_mask = mask & is_op[:, None]
        for i in tl.static_range(N_OPS):
            w = tl.load(w_ptr + w_idx[i]).to(tl.float32)
            row_off = b64 * ops_s0[i] + c64 * ops_s1[i]
            x = tl.load(ops_ptrs[i] + (row_off[:, None] + s64[None, :] * ops_s2[i]), mask=op_mask, other=0.0)
            acc += w * x.to(tl.float32)
    if HAS_BYPASS:
        bp_mask = mask & (c >= Cm)[:, None]
        row_off = b64 * bp_s0 + (c64 - Cm) * bp_s1
        x = tl.load(bp_ptr + (row_off[:, None] + s64[None, :] * bp_s2), mask=bp_mask, other=0.0)
        acc = tl.where(is_op[:, None], acc, x.to(tl.float32))
    if HAS_EW:
        acc = acc * tl.load(ew_ptr).to(tl.float32)

    o64 = o.to(tl.int64)
    out_off = (b64 * out_s0 + o64 * out_s1)[:, None] + s64[None, :] * out_s2
    if ACCUMULATE:
        acc = tl.load(out_ptr + out_off, mask=mask, other=0.0).to(tl.float32) + acc
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _shuffle_mix_bwd_kernel(
    g_ptr, g_s0, g_s1, g_s2,
    ops_ptrs, ops_s0, ops_s1, ops_s2,  # tuples (dummy entry when N_OPS == 0)
    gops_ptrs, gops_s0, gops_s1, gops_s2,  # tuples; entries whose GOPS_MASK bit is 0 are dummies
    w_ptr, w_idx,
    bp_ptr, bp_s0, bp_s1, bp_s2,
    gbp_ptr, gbp_s0, gbp_s1, gbp_s2,
    ew_ptr, part_ptr,
    R, C, Cm, CPG, G, S, n_tiles_s,
    N_OPS: tl.constexpr, GOPS_MASK: tl.constexpr, HAS_BYPASS: tl.constexpr, HAS_GBP: tl.constexpr,
    HAS_EW: tl.constexpr, HAS_DOTS: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_r = pid // n_tiles_s
    pid_s = pid - pid_r * n_tiles_s

    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)  # flattened concatenated rows b * C + c
    cols = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    row_ok = rows < R
    col_ok = cols < S
    b = rows // C
    c = rows - b * C
    o = (c % CPG) * G + c // CPG  # output channel the concatenated channel c landed on
    b64 = b.to(tl.int64)
    c64 = c.to(tl.int64)
    o64 = o.to(tl.int64)
    s64 = cols.to(tl.int64)
    mask = row_ok[:, None] & col_ok[None, :]
    is_op = c < Cm
    op_mask = mask & is_op[:, None]
    bp_mask = mask & (c >= Cm)[:, None]

    g_off = (b64 * g_s0 + o64 * g_s1)[:, None] + s64[None, :] * g_s2
    gs = tl.load(g_ptr + g_off, mask=mask, other=0.0).to(tl.float32)
    if HAS_EW:
        ew = tl.load(ew_ptr).to(tl.float32)

    for i in tl.static_range(N_OPS):
        if (GOPS_MASK >> i) & 1:
            scale = tl.load(w_ptr + w_idx[i]).to(tl.float32)
            if HAS_EW:
                scale = ew * scale
            go_off = (b64 * gops_s0[i] + c64 * gops_s1[i])[:, None] + s64[None, :] * gops_s2[i]
            tl.store(gops_ptrs[i] + go_off, (scale * gs).to(gops_ptrs[i].dtype.element_ty), mask=op_mask)
        if HAS_DOTS:
            x_off = (b64 * ops_s0[i] + c64 * ops_s1[i])[:, None] + s64[None, :] * ops_s2[i]
            x = tl.load(ops_ptrs[i] + x_off, mask=op_mask, other=0.0).to(tl.float32)
            prod = tl.where(op_mask, gs * x, 0.0)
            tl.store(part_ptr + pid * (N_OPS + 1) + i, tl.sum(tl.sum(prod, axis=1), axis=0))

    if HAS_GBP:
        gb = gs
        if HAS_EW:
            gb = ew * gs
        gb_off = (b64 * gbp_s0 + (c64 - Cm) * gbp_s1)[:, None] + s64[None, :] * gbp_s2
        tl.store(gbp_ptr + gb_off, gb.to(gbp_ptr.dtype.element_ty), mask=bp_mask)
    if HAS_DOTS:
        if HAS_BYPASS:
            bp_off = (b64 * bp_s0 + (c64 - Cm) * bp_s1)[:, None] + s64[None, :] * bp_s2
            x = tl.load(bp_ptr + bp_off, mask=bp_mask, other=0.0).to(tl.float32)
            prod = tl.where(bp_mask, gs * x, 0.0)
            tl.store(part_ptr + pid * (N_OPS + 1) + N_OPS, tl.sum(tl.sum(prod, axis=1), axis=0))
        else:
            tl.store(part_ptr + pid * (N_OPS + 1) + N_OPS, 0.0)


# --------------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------------
def _channels_fast(tensors: Sequence[Optional[torch.Tensor]]) -> bool:
    """True when most tensors are channels_last-like (channel stride 1, spatial stride not 1)."""
    tensors = [t for t in tensors if t is not None]
    n_cl = sum(1 for t in tensors if t.stride(1) == 1 and t.stride(2) != 1)
    n_sp = sum(1 for t in tensors if t.stride(2) == 1)
    return n_cl > n_sp


def _launch_config(rows: int, S: int, block_r: Optional[int], block_s: Optional[int], channels_fast: bool):
    """(BLOCK_R, BLOCK_S, num_warps, n_tiles_s, n_programs) for a (rows, S) plane.

    Spatially contiguous data gets wide S tiles (coalesced, vectorised along S); channels_last-like data
    gets single-column tiles of many rows, so that a warp reads consecutive channels.
    """
    if block_s is None:
        block_s = 1 if (channels_fast and S > 1) else min(triton.next_power_of_2(S), _MAX_BLOCK_S)
    if block_r is None:
        block_r = max(1, min(_TILE_ELEMS // block_s, triton.next_power_of_2(rows)))
    for name, v in (("block_r", block_r), ("block_s", block_s)):
        if v < 1 or (v & (v - 1)) != 0:
            raise ValueError(f"{name} must be a power of two, got {v}")
    num_warps = max(1, min(_MAX_WARPS, (block_r * block_s) // 256))
    n_tiles_s = triton.cdiv(S, block_s)
    n_programs = triton.cdiv(rows, block_r) * n_tiles_s
    if n_programs > _MAX_PROGRAMS:
        raise ValueError(f"shuffle-mix: {n_programs} programs exceed the grid limit; use larger blocks")
    return block_r, block_s, num_warps, n_tiles_s, n_programs


def _strides(t: torch.Tensor) -> Tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _check3d(name: str, t: Optional[torch.Tensor], B: int, channels: Optional[int], S: int, dtype) -> None:
    if t is None:
        return
    if t.dim() != 3 or t.shape[0] != B or t.shape[2] != S or (channels is not None and t.shape[1] != channels):
        raise ValueError(f"shuffle-mix: {name} has shape {tuple(t.shape)}, expected ({B}, {channels}, {S})")
    if t.dtype != dtype:
        raise ValueError(f"shuffle-mix: {name} has dtype {t.dtype}, expected {dtype}")


def _op_tuples(tensors: Sequence[Optional[torch.Tensor]], dummy: torch.Tensor):
    """Pointer and stride tuples for the kernels; a None (or an empty list) becomes a dummy entry."""
    filled = [dummy if t is None else t for t in tensors] or [dummy]
    strides = [_strides(t) for t in filled]
    return (tuple(filled), tuple(s[0] for s in strides), tuple(s[1] for s in strides),
            tuple(s[2] for s in strides))


class _DeviceGuard:
    """``torch.cuda.device(t.device)`` for CUDA tensors (Triton launches on the current device)."""

    def __init__(self, t: torch.Tensor):
        self._ctx = torch.cuda.device(t.device) if t.is_cuda else None

    def __enter__(self):
        if self._ctx is not None:
            self._ctx.__enter__()

    def __exit__(self, *exc):
        if self._ctx is not None:
            return self._ctx.__exit__(*exc)
        return False


def mix_forward(out: torch.Tensor, ops: Sequence[torch.Tensor], weights: torch.Tensor,
                weight_index: Sequence[int], bypass: Optional[torch.Tensor], mixed_channels: int,
                groups: int, edge_weight: Optional[torch.Tensor], accumulate: bool,
                *, block_r: Optional[int] = None, block_s: Optional[int] = None) -> None:
    """``out (+)= ew * shuffle(cat([sum_i weights[weight_index[i]] * ops[i], bypass], 1), groups)``.

    Fills ``out`` (B, C, S) in place; see docs/kernel_interface.md. ``block_r`` / ``block_s`` (powers of
    two) override the tile shape, for tests and tuning.
    """
    ops = list(ops)
    weight_index = [int(i) for i in weight_index]
    if len(weight_index) != len(ops):
        raise ValueError(f"shuffle-mix: {len(ops)} ops but {len(weight_index)} weight indices")
    if out.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"shuffle-mix (triton): unsupported dtype {out.dtype}")
    B, C, S = out.shape
    Cm = int(mixed_channels)
    groups = int(groups)
    Cb = C - Cm
    for k, t in enumerate(ops):
        _check3d(f"ops[{k}]", t, B, Cm, S, out.dtype)
    _check3d("bypass", bypass, B, Cb, S, out.dtype)
    if bypass is None and Cb != 0:
        raise ValueError(f"shuffle-mix: out has {C} channels but mixed_channels={Cm} and no bypass")
    if groups < 1 or C % groups != 0:
        raise ValueError(f"shuffle-mix: {C} channels are not divisible by groups={groups}")
    if B * C * S == 0:
        return

    rows = B * C
    block_r, block_s, num_warps, n_tiles_s, n_programs = _launch_config(
        rows, S, block_r, block_s, _channels_fast([out, bypass, *ops]))
    ops_t, ops_s0, ops_s1, ops_s2 = _op_tuples(ops, out)
    w_idx = tuple(weight_index) or (0,)
    bp = out if bypass is None else bypass
    ew = weights if edge_weight is None else edge_weight
    with _DeviceGuard(out):
        _shuffle_mix_fwd_kernel[(n_programs,)](
            out, *_strides(out),
            ops_t, ops_s0, ops_s1, ops_s2,
            weights, w_idx,
            bp, *_strides(bp),
            ew,
            rows, C, Cm, C // groups, groups, S, n_tiles_s,
            N_OPS=len(ops), HAS_BYPASS=bypass is not None, HAS_EW=edge_weight is not None,
            ACCUMULATE=bool(accumulate), BLOCK_R=block_r, BLOCK_S=block_s, num_warps=num_warps,
            enable_fp_fusion=_FP_FUSION,
        )


def mix_backward(grad: torch.Tensor, ops: Sequence[torch.Tensor], weights: torch.Tensor,
                 weight_index: Sequence[int], bypass: Optional[torch.Tensor], mixed_channels: int,
                 groups: int, edge_weight: Optional[torch.Tensor],
                 grad_ops: Sequence[Optional[torch.Tensor]], grad_bypass: Optional[torch.Tensor],
                 dots: Optional[torch.Tensor],
                 *, block_r: Optional[int] = None, block_s: Optional[int] = None) -> None:
    """Backward of :func:`mix_forward`: fills ``grad_ops[i]`` (not None), ``grad_bypass`` (not None)
    and overwrites ``dots`` (not None) with the per-op / bypass dot products, per
    docs/kernel_interface.md. The dot products are reduced deterministically.
    """
    ops = list(ops)
    grad_ops = list(grad_ops) if grad_ops is not None else [None] * len(ops)
    weight_index = [int(i) for i in weight_index]
    if len(weight_index) != len(ops) or len(grad_ops) != len(ops):
        raise ValueError(f"shuffle-mix: {len(ops)} ops, {len(weight_index)} weight indices, "
                         f"{len(grad_ops)} grad_ops")
    if grad.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"shuffle-mix (triton): unsupported dtype {grad.dtype}")
    B, C, S = grad.shape
    Cm = int(mixed_channels)
    groups = int(groups)
    Cb = C - Cm
    for k, t in enumerate(ops):
        _check3d(f"ops[{k}]", t, B, Cm, S, grad.dtype)
    for k, t in enumerate(grad_ops):
        _check3d(f"grad_ops[{k}]", t, B, Cm, S, grad.dtype)
    _check3d("bypass", bypass, B, Cb, S, grad.dtype)
    _check3d("grad_bypass", grad_bypass, B, Cb, S, grad.dtype)
    if bypass is None and Cb != 0:
        raise ValueError(f"shuffle-mix: grad has {C} channels but mixed_channels={Cm} and no bypass")
    if groups < 1 or C % groups != 0:
        raise ValueError(f"shuffle-mix: {C} channels are not divisible by groups={groups}")
    if dots is not None and dots.numel() != len(ops) + 1:
        raise ValueError(f"shuffle-mix: dots has {dots.numel()} elements, expected {len(ops) + 1}")
    if B * C * S == 0:
        if dots is not None:
            dots.zero_()
        return

    rows = B * C
    block_r, block_s, num_warps, n_tiles_s, n_programs = _launch_config(
        rows, S, block_r, block_s, _channels_fast([grad, bypass, *ops, grad_bypass, *grad_ops]))
    has_dots = dots is not None
    partials = (torch.empty((n_programs, len(ops) + 1), dtype=torch.float32, device=grad.device)
                if has_dots else weights)
    ops_t, ops_s0, ops_s1, ops_s2 = _op_tuples(ops, grad)
    gops_t, gops_s0, gops_s1, gops_s2 = _op_tuples(grad_ops, grad)
    gops_mask = sum(1 << k for k, t in enumerate(grad_ops) if t is not None)
    w_idx = tuple(weight_index) or (0,)
    bp = grad if bypass is None else bypass
    gbp = grad if grad_bypass is None else grad_bypass
    ew = weights if edge_weight is None else edge_weight
    with _DeviceGuard(grad):
        _shuffle_mix_bwd_kernel[(n_programs,)](
            grad, *_strides(grad),
            ops_t, ops_s0, ops_s1, ops_s2,
            gops_t, gops_s0, gops_s1, gops_s2,
            weights, w_idx,
            bp, *_strides(bp),
            gbp, *_strides(gbp),
            ew, partials,
            rows, C, Cm, C // groups, groups, S, n_tiles_s,
            N_OPS=len(ops), GOPS_MASK=gops_mask, HAS_BYPASS=bypass is not None,
            HAS_GBP=grad_bypass is not None, HAS_EW=edge_weight is not None, HAS_DOTS=has_dots,
            BLOCK_R=block_r, BLOCK_S=block_s, num_warps=num_warps, enable_fp_fusion=_FP_FUSION,
        )
    if has_dots:
        dots.copy_(torch.sum(partials, dim=0))
