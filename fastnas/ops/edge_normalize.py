"""Edge normalization of PC-DARTS (DESIGN.md section 2): ``sum_e softmax(betas)[e] * edge_outputs[e]``.

One fused pass over the edge outputs forward; one pass backward that writes every edge gradient and
the dot products ``<grad, y_e>`` from which the betas' gradient follows through the (tiny) softmax.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from fastnas.ops import _checks, _dispatch
from fastnas.ops.shuffle_mix import accumulation_dtype, shuffle_mix


def edge_normalize_ref(edge_outputs: Sequence[torch.Tensor], betas: torch.Tensor) -> torch.Tensor:
    """edge_outputs: E tensors (B, C, H, W); betas: (E,). Returns (B, C, H, W)."""
    weights = torch.softmax(betas, dim=0)
    result = weights[0] * edge_outputs[0]
    for e in range(1, len(edge_outputs)):
        result = result + weights[e] * edge_outputs[e]
    return result


def edge_normalize(edge_outputs: Sequence[torch.Tensor], betas: torch.Tensor,
                   backend: Optional[str] = None) -> torch.Tensor:
    """``sum_e softmax(betas)[e] * edge_outputs[e]``; edge_outputs: E >= 1 tensors (B, C, H, W), betas (E,)."""
    if not isinstance(edge_outputs, (list, tuple)) or not edge_outputs:
        raise ValueError("edge_outputs must be a non-empty list or tuple of tensors")
    first = _checks.floating_4d(edge_outputs[0], "edge_outputs[0]")
    for e, t in enumerate(edge_outputs[1:], start=1):
        _checks.floating_4d(t, f"edge_outputs[{e}]")
        if t.shape != first.shape:
            raise ValueError(f"edge outputs must share one shape: edge_outputs[0] is {tuple(first.shape)} "
                             f"but edge_outputs[{e}] is {tuple(t.shape)}")
    _checks.same_device_and_dtype(first, "edge_outputs[0]",
                                  [(f"edge_outputs[{e}]", t) for e, t in enumerate(edge_outputs)])
    _checks.mixing_weights(betas, len(edge_outputs), first.device, name="betas")
    name = _dispatch.resolve(backend, first.device, first.dtype, n_ops=len(edge_outputs))
    if name == "torch":
        return edge_normalize_ref(edge_outputs, betas)
    weights = torch.softmax(betas.to(accumulation_dtype(first.dtype)), dim=0)
    return shuffle_mix(name, list(edge_outputs), tuple(range(len(edge_outputs))), weights, None,
                       first.shape[1], 1, None, None)
