"""Search cells: the DARTS/PC-DARTS cell (14 mixed edges, 4 nodes) and the NAS-Bench-201 cell (6 edges).

Each intermediate node is built by accumulation: its first incoming edge creates the node tensor and
every further edge adds into it in place (``out=``), inside the fused kernel, so a node costs no stack,
no separate weighting and no sum.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch
import torch.nn as nn

from fastnas.nn.mixed import PartialChannelMixedOp
from fastnas.nn.operations import FactorizedReduce, ReLUConvBN, nb201_op, search_op
from fastnas.spaces import NB201_EDGES, NB201_NODES, PRIMITIVES

__all__ = ["DartsSearchCell", "NB201SearchCell"]


class DartsSearchCell(nn.Module):
    """PC-DARTS ``Cell``: preprocess0/1, ``steps`` nodes, output = concat of the last ``multiplier`` nodes.

    Shapes: s0 (B, C_prev_prev, H0, W0), s1 (B, C_prev, H, W) -> (B, multiplier * C, H / s, W / s) with
    s = 2 for a reduction cell. ``weights`` (n_edges, n_ops); ``edge_weights`` (n_edges,) or None.
    ``op_mask`` (n_edges, n_ops) bool: the ops kept (pruned ones are not built). ``pool_bn``: the
    pooling ops' BatchNorm (PC-DARTS, DARTS); False as DrNAS.
    """

    def __init__(self, steps: int, multiplier: int, C_prev_prev: int, C_prev: int, C: int, reduction: bool,
                 reduction_prev: bool, primitives: Sequence[str] = PRIMITIVES, partial_channels: int = 4,
                 backend: Optional[str] = None, op_mask: Optional[torch.Tensor] = None, aux_skip: bool = False,
                 pool_bn: bool = True):
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self._steps, self._multiplier = steps, multiplier
        self._ops = nn.ModuleList()
        factory = None if pool_bn else functools.partial(search_op, pool_bn=False)
        for i in range(steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                active = None if op_mask is None else op_mask[len(self._ops)].tolist()
                self._ops.append(PartialChannelMixedOp(C, stride, primitives, partial_channels, backend=backend,
                                                       active=active, aux_skip=aux_skip, op_factory=factory))

    def forward(self, s0, s1, weights: torch.Tensor, edge_weights: Optional[torch.Tensor] = None,
                aux_weight: float = 0.0):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self._steps):
            node = None
            for j, h in enumerate(states):
                e = offset + j
                node = self._ops[e](h, weights[e], None if edge_weights is None else edge_weights[e], out=node,
                                    aux_weight=aux_weight)
            offset += len(states)
            states.append(node)
        return torch.cat(states[-self._multiplier:], dim=1)


class NB201SearchCell(nn.Module):
    """NAS-Bench-201 ``SearchCell`` (stride 1, C_in = C_out): node i = sum over j < i of edge (i, j).

    ``weights`` (6, n_ops) in ``NB201_EDGES`` order; ``edge_weights`` (6,) or None. Module ``edges`` is a
    ModuleDict keyed ``'{i}<-{j}'`` as in NB201. ``op_mask`` (6, n_ops) bool: ops kept (pruned ones are
    not built).
    """

    def __init__(self, C: int, primitives: Sequence[str], partial_channels: int = 1,
                 affine: bool = False, track_running_stats: bool = False, backend: Optional[str] = None,
                 op_mask: Optional[torch.Tensor] = None, aux_skip: bool = False):
        super().__init__()

        def factory(p, c, stride):
            return nb201_op(p, c, stride, affine, track_running_stats)

        self.edges = nn.ModuleDict()
        for e, (i, j) in enumerate(NB201_EDGES):
            active = None if op_mask is None else op_mask[e].tolist()
            self.edges[f"{i}<-{j}"] = PartialChannelMixedOp(C, 1, primitives, partial_channels, op_factory=factory,
                                                            backend=backend, active=active, aux_skip=aux_skip)
        self.edge_keys = [f"{i}<-{j}" for i, j in NB201_EDGES]
        self.in_dim = self.out_dim = C

    def forward(self, x, weights: torch.Tensor, edge_weights: Optional[torch.Tensor] = None,
                aux_weight: float = 0.0):
        nodes = [x]
        e = 0
        for i in range(1, NB201_NODES):
            node = None
            for j in range(i):
                node = self.edges[self.edge_keys[e]](nodes[j], weights[e],
                                                     None if edge_weights is None else edge_weights[e], out=node,
                                                     aux_weight=aux_weight)
                e += 1
            nodes.append(node)
        return nodes[-1]
