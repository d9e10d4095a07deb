"""The partial-channel mixed op of one edge (PC-DARTS; plain DARTS when K = 1), on the fused kernel.

Per edge (DESIGN.md section 2)::

    xs     = x[:, :C//K]                          a view, no copy
    bypass = x[:, C//K:]  (stride 1) | max_pool2d(x[:, C//K:], 2, 2)  (stride 2)   (None when K = 1)
    out   (+)= edge_weight * channel_shuffle(cat([sum_i w_i * op_i(xs), bypass]), K)

in ONE :func:`fastnas.ops.partial_channel_mix` call that accumulates straight into the node tensor.
Savings that are exact algebra, not approximations: ``none`` gives no tensor (None), stride-1
``skip_connect`` is ``xs`` itself, and every op that starts with a ReLU shares one ``relu(xs)``.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastnas.nn.operations import Identity, ReLUFirst, Zero, search_op
from fastnas.ops import partial_channel_mix

__all__ = ["PartialChannelMixedOp"]

_NONE, _SKIP, _RELU, _PLAIN = 0, 1, 2, 3


def _kind(op: nn.Module) -> int:
    if isinstance(op, Zero):
        return _NONE
    if isinstance(op, (Identity, nn.Identity)):
        return _SKIP
    if isinstance(op, ReLUFirst):
        return _RELU
    return _PLAIN


class PartialChannelMixedOp(nn.Module):
    """One edge: candidate ops on the first ``C // K`` channels, the rest bypassed, fused mix.

    Args:
        C: input (= output) channels of the edge; must be divisible by ``partial_channels``.
        stride: 1 or 2 (a reduction edge).
        primitives: op names, in the column order of the edge's weights.
        partial_channels: K (1 = plain DARTS: every channel goes through the ops, no bypass).
        op_factory: ``(primitive, C_op, stride) -> nn.Module``; default the DARTS search ops.
        backend: forwarded to :func:`partial_channel_mix`.

    Module ``_ops`` (ModuleList, one per primitive, ``none`` included) and ``mp`` are named as in
    PC-DARTS's ``MixedOp`` so state dicts map one to one.
    """

    def __init__(self, C: int, stride: int, primitives: Sequence[str], partial_channels: int = 4,
                 op_factory: Optional[Callable[[str, int, int], nn.Module]] = None, backend: Optional[str] = None):
        super().__init__()
        K = int(partial_channels)
        if K < 1 or C % K:
            raise ValueError(f"channels C={C} must be divisible by the partial-channel factor K={K}")
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.C, self.stride, self.k, self.backend = C, stride, K, backend
        self.primitives = tuple(primitives)
        factory = op_factory or search_op
        self._ops = nn.ModuleList(factory(p, C // K, stride) for p in self.primitives)
        self.mp = nn.MaxPool2d(2, 2)
        self._kinds = tuple(_kind(op) for op in self._ops)
        if all(k == _NONE for k in self._kinds):
            raise ValueError("a mixed op needs at least one op other than 'none'")

    def forward(self, x: torch.Tensor, weights: torch.Tensor, edge_weight: Optional[torch.Tensor] = None,
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, C, H, W), weights (n_ops,), edge_weight scalar or None, out (B, C, H/s, W/s) or None.

        Returns ``out`` after accumulation (a new tensor when ``out`` is None).
        """
        cp = x.shape[1] // self.k
        xs = x[:, :cp] if self.k > 1 else x
        relu_xs = None
        outputs = []
        for kind, op in zip(self._kinds, self._ops):
            if kind == _NONE:
                outputs.append(None)
            elif kind == _SKIP:
                outputs.append(xs)
            elif kind == _RELU:
                if relu_xs is None:  # one ReLU for all the conv ops of the edge
                    relu_xs = F.relu(xs)
                outputs.append(op(relu_xs, pre_relu_applied=True))
            else:
                outputs.append(op(xs))
        bypass = None
        if self.k > 1:
            bypass = x[:, cp:]
            if self.stride == 2:
                bypass = self.mp(bypass)
        return partial_channel_mix(outputs, weights, bypass, self.k, edge_weight=edge_weight, out=out,
                                   backend=self.backend)

    def extra_repr(self) -> str:
        return f"C={self.C}, stride={self.stride}, K={self.k}"
