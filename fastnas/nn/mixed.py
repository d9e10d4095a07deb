"""The partial-channel mixed op of one edge (PC-DARTS; plain DARTS when K = 1), on the fused kernel.

Per edge (DESIGN.md section 2)::

    xs     = x[:, :C//K]                          a view, no copy
    bypass = x[:, C//K:]  (stride 1) | max_pool2d(x[:, C//K:], 2, 2)  (stride 2)   (None when K = 1)
    out   (+)= edge_weight * channel_shuffle(cat([sum_i w_i * op_i(xs), bypass]), K)

in ONE :func:`fastnas.ops.partial_channel_mix` call that accumulates straight into the node tensor.
Savings that are exact algebra, not approximations: ``none`` gives no tensor (None), stride-1
``skip_connect`` is ``xs`` itself, and every op that starts with a ReLU shares one ``relu(xs)`` (an
``nn.ReLU`` module, so that activation hooks such as the SWAP and NWOT proxies' see it).

Ops pruned before the search (``active``, zero-shot pruning) are built as ``Zero``: no parameters, no
compute, no tensor; :meth:`PartialChannelMixedOp.set_active` switches ops off without rebuilding (used
while pruning scores the supernet with and without each op).
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
import torch.nn as nn

from fastnas.nn.operations import FactorizedReduce, Identity, ReLUFirst, Zero, search_op
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
        active: one bool per primitive (default all True); an inactive op is built as ``Zero`` and
            contributes nothing (its weight must be zero: the network masks its softmax).
        aux_skip: DARTS-'s auxiliary skip connection: ``forward(..., aux_weight=beta)`` adds
            ``beta * skip(x)`` on all C channels (identity; a FactorizedReduce for stride 2), outside the
            architecture weights.

    Module ``_ops`` (ModuleList, one per primitive, ``none`` included) and ``mp`` are named as in
    PC-DARTS's ``MixedOp`` so state dicts map one to one.
    """

    def __init__(self, C: int, stride: int, primitives: Sequence[str], partial_channels: int = 4,
                 op_factory: Optional[Callable[[str, int, int], nn.Module]] = None, backend: Optional[str] = None,
                 active: Optional[Sequence[bool]] = None, aux_skip: bool = False):
        super().__init__()
        K = int(partial_channels)
        if K < 1 or C % K:
            raise ValueError(f"channels C={C} must be divisible by the partial-channel factor K={K}")
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.C, self.stride, self.k, self.backend = C, stride, K, backend
        self.primitives = tuple(primitives)
        factory = op_factory or search_op
        active = self._check_active(active)
        self._ops = nn.ModuleList(factory(p, C // K, stride) if a else Zero(stride)
                                  for p, a in zip(self.primitives, active))
        self.mp = nn.MaxPool2d(2, 2)
        self.relu = nn.ReLU()
        self.aux = (FactorizedReduce(C, C, affine=False) if stride == 2 else Identity()) if aux_skip else None
        self.set_active(active)

    def _check_active(self, active: Optional[Sequence[bool]]):
        if active is None:
            return (True,) * len(self.primitives)
        active = tuple(bool(a) for a in active)
        if len(active) != len(self.primitives):
            raise ValueError(f"active needs one flag per primitive ({len(self.primitives)}), got {len(active)}")
        return active

    def set_active(self, active: Optional[Sequence[bool]] = None) -> None:
        """Switches ops on/off (default: all on); an off op is treated as ``none``."""
        active = self._check_active(active)
        self.active = active
        self._kinds = tuple(_kind(op) if a else _NONE for op, a in zip(self._ops, active))
        if all(k == _NONE for k in self._kinds):
            raise ValueError("a mixed op needs at least one active op other than 'none'")

    def idle_modules(self) -> List[nn.Module]:
        """The candidate ops switched off by :meth:`set_active`: built, never run. Parameter counts leave
        their parameters out (:func:`fastnas.proxies._layers.idle_parameter_ids`)."""
        return [op for op, a in zip(self._ops, self.active) if not a]

    def forward(self, x: torch.Tensor, weights: torch.Tensor, edge_weight: Optional[torch.Tensor] = None,
                out: Optional[torch.Tensor] = None, aux_weight: float = 0.0) -> torch.Tensor:
        """x (B, C, H, W), weights (n_ops,), edge_weight scalar or None, out (B, C, H/s, W/s) or None,
        aux_weight: DARTS-'s beta (needs ``aux_skip``; 0 skips the auxiliary path).

        Returns ``out`` after accumulation (a new tensor when ``out`` is None, or when the auxiliary
        path adds to it).
        """
        mixed = self._mix(x, weights, edge_weight, out)
        if aux_weight and self.aux is not None:
            mixed = mixed + aux_weight * self.aux(x)
        return mixed

    def _mix(self, x, weights, edge_weight, out):
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
                    relu_xs = self.relu(xs)
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
