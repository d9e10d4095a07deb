"""The fused shuffle-mix autograd Function shared by the three ops.

``partial_channel_mix``, ``channel_shuffle`` and ``edge_normalize`` are all instances of one fused pass
(docs/kernel_interface.md)::

    out (+)= edge_weight * channel_shuffle(cat([sum_i w[weight_index[i]] * ops[i], bypass], 1), groups)

so one forward and one backward kernel per backend serve all three, and their gradients come from one
place. This module owns the autograd logic; backends only fill the tensors they are handed. Callers
validate their inputs first (``fastnas.ops._checks``).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from fastnas.ops.backends import BACKENDS


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Kernels accumulate half and single precision in float32, double in float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def memory_format_of(t: Optional[torch.Tensor]) -> torch.memory_format:
    """channels_last when ``t`` is stored that way, else contiguous: outputs follow their inputs."""
    if t is not None and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _bcs(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """(B, C, H, W) -> (B, C, H*W); a view for contiguous, channels_last and channel-sliced tensors."""
    return None if t is None else t.flatten(2)


def _writable_bcs(t: torch.Tensor) -> Optional[torch.Tensor]:
    """A (B, C, H*W) *view* of ``t`` that writes reach, or None when H and W cannot be merged."""
    try:
        return t.view(t.shape[0], t.shape[1], t.shape[2] * t.shape[3])
    except RuntimeError:
        return None


def _scatter_dots(dots: torch.Tensor, weight_index: Sequence[int], num_weights: int) -> torch.Tensor:
    """Per-weight sums of ``dots[:len(weight_index)]`` without an index tensor (no host-to-device copy).

    The common cases cost one view (every op present) or one stack of selects (some ops omitted);
    per-call Python overhead is a visible share of a CPU step at PC-DARTS sizes.
    """
    if tuple(weight_index) == tuple(range(num_weights)):
        return dots[:num_weights]
    columns = [[] for _ in range(num_weights)]
    for position, index in enumerate(weight_index):
        columns[index].append(position)
    zero = None
    parts = []
    for col in columns:
        if len(col) == 1:
            parts.append(dots[col[0]])
        elif col:
            parts.append(dots[col].sum())
        else:
            zero = dots.new_zeros(()) if zero is None else zero
            parts.append(zero)
    return torch.stack(parts)


def _present_dot(dots: torch.Tensor, weights: torch.Tensor, weight_index: Sequence[int]) -> torch.Tensor:
    """``sum_i dots[i] * weights[weight_index[i]]`` over the ops present (no index tensor)."""
    n = len(weight_index)
    if n == 0:
        return dots.new_zeros(())
    if tuple(weight_index) == tuple(range(weights.shape[0])):
        return (dots[:n] * weights).sum()
    return (dots[:n] * torch.stack([weights[i] for i in weight_index])).sum()


def _stand_in(grad: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """A zero-stride tensor of ``shape`` over one element, for an input the backward did not keep: the
    kernels check its shape and read it only for the dots (docs/kernel_interface.md)."""
    return grad.new_zeros((), dtype=dtype).expand(shape)


class ShuffleMixFn(torch.autograd.Function):
    """Fused ``out (+)= ew * shuffle(cat([sum_i w_i * o_i, bypass]), groups)``.

    Args (forward): backend name; weight_index (tuple of int, one per op); mixed_channels Cm;
    groups; out (B, C, H, W) accumulated into in place, or None; weights (n_w,) in the accumulation
    dtype; bypass (B, Cb, H, W) or None; edge_weight (1,) in the accumulation dtype or None;
    *ops (B, Cm, H, W) each. Returns (B, C, H, W) with C = Cm + Cb.
    """

    @staticmethod
    def forward(ctx, backend, weight_index, mixed_channels, groups, out, weights, bypass, edge_weight, *ops):
        first = ops[0] if ops else bypass if bypass is not None else out
        B, _, H, W = first.shape
        C = mixed_channels + (bypass.shape[1] if bypass is not None else 0)
        kernels = BACKENDS[backend]
        args = ([o.flatten(2) for o in ops], weights, list(weight_index), _bcs(bypass), mixed_channels, groups,
                edge_weight)
        if out is None:
            result = torch.empty((B, C, H, W), dtype=first.dtype, device=first.device,
                                 memory_format=memory_format_of(first))
            kernels.mix_forward(result.flatten(2), *args, False)
        else:
            target = _writable_bcs(out)
            if target is not None:
                kernels.mix_forward(target, *args, True)
            else:  # e.g. a strided slice of a bigger tensor: compute apart, then add
                partial = torch.empty((B, C, H, W), dtype=out.dtype, device=out.device)
                kernels.mix_forward(partial.flatten(2), *args, False)
                out.add_(partial)
            ctx.mark_dirty(out)
            result = out
        ctx.backend, ctx.weight_index, ctx.mixed_channels, ctx.groups = backend, weight_index, mixed_channels, groups
        # The op outputs and the bypass are read only by the weights' and edge weight's gradients (the
        # dots): without those, keeping them would hold every op output of the supernet until backward.
        ctx.keeps_data = ctx.needs_input_grad[5] or ctx.needs_input_grad[7]
        if ctx.keeps_data:
            ctx.save_for_backward(weights, bypass, edge_weight, *ops)
        else:
            ctx.save_for_backward(weights, None, edge_weight)
            ctx.data_meta = ([(o.shape, o.dtype) for o in ops],
                             None if bypass is None else (bypass.shape, bypass.dtype))
        # gradients follow their inputs' layout (contiguous or channels_last)
        ctx.formats = ([memory_format_of(o) for o in ops], memory_format_of(bypass))
        return result

    @staticmethod
    def backward(ctx, grad):
        weights, bypass, edge_weight, *ops = ctx.saved_tensors
        if not ctx.keeps_data:  # no dots: stand-ins of the right shapes, never read
            op_meta, bypass_meta = ctx.data_meta
            ops = [_stand_in(grad, *meta) for meta in op_meta]
            bypass = None if bypass_meta is None else _stand_in(grad, *bypass_meta)
        needs = ctx.needs_input_grad
        need_out, need_weights, need_bypass, need_edge = needs[4], needs[5], needs[6], needs[7]
        need_ops = needs[8:]
        need_dots = need_weights or need_edge
        if torch.is_grad_enabled():
            # backward(create_graph=True): the gradients must themselves be differentiable (DARTS's
            # exact Hessian-vector products, the Hessian eigenvalue of collapse monitoring), which the
            # fused kernels are not. ``once_differentiable`` would not do: its error node is not linked
            # to the incoming gradient's graph, so second derivatives through it came out silently
            # wrong (measured: 0.017 instead of 0.074) rather than failing.
            terms = _differentiable_terms
        else:
            terms = _fused_terms
        grad_ops, grad_bypass, dots = terms(ctx, grad, weights, bypass, edge_weight, ops, need_ops,
                                            need_bypass and bypass is not None, need_dots)
        grad_weights = grad_edge = None
        if dots is not None:
            per_weight = _scatter_dots(dots, ctx.weight_index, weights.shape[0])  # sum gs * o_i, no ew
            if need_weights:
                grad_weights = per_weight if edge_weight is None else per_weight * edge_weight
            if need_edge:  # over the ops present: an omitted op's weight (even inf) takes no part
                grad_edge = (_present_dot(dots, weights, ctx.weight_index) + dots[-1]).reshape(edge_weight.shape)
        return (None, None, None, None, grad if need_out else None, grad_weights, grad_bypass, grad_edge, *grad_ops)


def _fused_terms(ctx, grad, weights, bypass, edge_weight, ops, need_ops, need_bypass, need_dots):
    """The backend's fused backward: (grad_ops (None where not needed), grad_bypass, dots or None)."""

    op_formats, bypass_format = ctx.formats

    def like(t, memory_format):  # contiguous or channels_last, never a layout whose H, W cannot be flattened
        return torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=memory_format)

    grad_ops: List[Optional[torch.Tensor]] = [like(o, f) if n else None for o, n, f in zip(ops, need_ops, op_formats)]
    grad_bypass = like(bypass, bypass_format) if need_bypass else None
    dots = torch.empty(len(ops) + 1, dtype=weights.dtype, device=weights.device) if need_dots else None
    if any(g is not None for g in grad_ops) or grad_bypass is not None or dots is not None:
        BACKENDS[ctx.backend].mix_backward(
            grad.flatten(2), [o.flatten(2) for o in ops], weights, list(ctx.weight_index), _bcs(bypass),
            ctx.mixed_channels, ctx.groups, edge_weight, [_bcs(g) for g in grad_ops], _bcs(grad_bypass), dots,
        )
    return grad_ops, grad_bypass, dots


def _differentiable_terms(ctx, grad, weights, bypass, edge_weight, ops, need_ops, need_bypass, need_dots):
    """The same terms as :func:`_fused_terms`, written with differentiable torch ops (double backward).

    With u = unshuffle(grad) (the inverse channel shuffle) split into u_m (first Cm channels) and u_b:
    grad_ops[i] = ew * w[idx_i] * u_m;  grad_bypass = ew * u_b;  dots = [<u_m, ops[i]>..., <u_b, bypass>].
    (Not autograd of a recomputed forward: ops may depend on one another, e.g. a skip op's tensor feeds
    another op of the same call, and autograd.grad would then add the paths between them.)
    """
    b, c, h, w = grad.shape
    g = ctx.groups
    u = grad.reshape(b, c // g, g, h, w).transpose(1, 2).reshape(b, c, h, w)
    u_m, u_b = u[:, :ctx.mixed_channels], u[:, ctx.mixed_channels:]
    scale = (lambda t: t) if edge_weight is None else (lambda t: edge_weight * t)
    grad_ops = [scale(weights[i] * u_m) if n else None for i, n in zip(ctx.weight_index, need_ops)]
    grad_bypass = scale(u_b) if need_bypass else None
    dots = None
    if need_dots:
        acc = weights.dtype  # the fused kernels' accumulation dtype (float32 for half data)
        bypass_dot = (u_b * bypass).sum(dtype=acc) if bypass is not None else weights.new_zeros(())
        dots = torch.stack([(u_m * o).sum(dtype=acc) for o in ops] + [bypass_dot])
    return grad_ops, grad_bypass, dots


def shuffle_mix(backend: str, ops: Sequence[torch.Tensor], weight_index: Tuple[int, ...], weights: torch.Tensor,
                bypass: Optional[torch.Tensor], mixed_channels: int, groups: int,
                edge_weight: Optional[torch.Tensor], out: Optional[torch.Tensor]) -> torch.Tensor:
    """Runs :class:`ShuffleMixFn` on a fused backend after casting the weights to the accumulation dtype."""
    dtype = accumulation_dtype((ops[0] if ops else bypass if bypass is not None else out).dtype)
    weights = weights.to(dtype).contiguous()  # kernels index weights[weight_index[i]] densely
    if edge_weight is not None:
        edge_weight = edge_weight.reshape(1).to(dtype)
    result = ShuffleMixFn.apply(backend, tuple(weight_index), mixed_channels, groups, out, weights, bypass,
                                edge_weight, *ops)
    if out is not None and not torch.is_grad_enabled():
        # under no_grad, apply hands back a new alias of a dirtied tensor that requires grad; the
        # caller's accumulator is what was updated and what the reference returns
        return out
    return result
