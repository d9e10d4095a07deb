"""Discrete (derived) networks: DARTS's ``NetworkCIFAR`` from a Genotype, NAS-Bench-201's ``TinyNetwork``
from an arch string. Layouts and module names follow DARTS model.py and NB201's ``InferCell``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from fastnas.nn.operations import OPS, NB201_OPS, FactorizedReduce, Identity, ReLUConvBN, ResNetBasicblock
from fastnas.spaces import (Genotype, arch_to_nodes, nb201_macro_layout, parse_arch, parse_genotype,
                            validate_genotype)

__all__ = ["drop_path", "Cell", "AuxiliaryHeadCIFAR", "NetworkCIFAR", "NB201InferCell", "NB201Network"]


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Per-sample path dropout (DARTS): zero whole samples with probability ``drop_prob``, rescale the rest.
    Out of place (DARTS's in-place ``div_``/``mul_`` breaks when the op output is needed for backward)."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * (mask / keep)


class Cell(nn.Module):
    """A DARTS evaluation cell: 2 ops per node from ``genotype``, output = concat of ``*_concat`` states."""

    def __init__(self, genotype: Genotype, C_prev_prev: int, C_prev: int, C: int, reduction: bool,
                 reduction_prev: bool):
        super().__init__()
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        pairs, concat = (genotype.reduce, genotype.reduce_concat) if reduction else (genotype.normal,
                                                                                     genotype.normal_concat)
        op_names, indices = zip(*pairs)
        self.reduction = reduction
        self._steps = len(op_names) // 2
        self._concat = list(concat)
        self.multiplier = len(concat)
        self._ops = nn.ModuleList(OPS[name](C, 2 if reduction and index < 2 else 1, True)
                                  for name, index in zip(op_names, indices))
        self._indices = indices

    def forward(self, s0, s1, drop_prob: float = 0.0):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self._steps):
            op1, op2 = self._ops[2 * i], self._ops[2 * i + 1]
            h1 = op1(states[self._indices[2 * i]])
            h2 = op2(states[self._indices[2 * i + 1]])
            if self.training and drop_prob > 0.0:
                if not isinstance(op1, Identity):
                    h1 = drop_path(h1, drop_prob)
                if not isinstance(op2, Identity):
                    h2 = drop_path(h2, drop_prob)
            states.append(h1 + h2)
        return torch.cat([states[i] for i in self._concat], dim=1)


class AuxiliaryHeadCIFAR(nn.Module):
    """DARTS's auxiliary classifier, for an 8x8 input (after the second reduction at 32x32)."""

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),  # 8x8 -> 2x2
            nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        x = self.features(x)
        return self.classifier(x.view(x.size(0), -1))


class NetworkCIFAR(nn.Module):
    """DARTS's ``NetworkCIFAR(C, num_classes, layers, auxiliary, genotype)``; 36/20 for the DARTS eval.

    ``genotype``: a :class:`Genotype` or its printed string. ``forward`` returns ``(logits, logits_aux)``
    like DARTS (``logits_aux`` None unless ``auxiliary`` and training). Set ``drop_path_prob`` per epoch.
    ``stem=False``: no stem convolution, the cells read the (B, 3, H, W) image directly, as the SWAP code's
    ``Network`` scores DARTS cells.
    """

    def __init__(self, C: int, num_classes: int, layers: int, auxiliary: bool, genotype: Union[Genotype, str],
                 drop_path_prob: float = 0.0, stem: bool = True):
        super().__init__()
        genotype = parse_genotype(genotype) if isinstance(genotype, str) else validate_genotype(genotype)
        self._layers, self._auxiliary, self.drop_path_prob = layers, auxiliary, drop_path_prob
        if stem:
            C_curr = 3 * C
            self.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        else:  # the SWAP code's Network: the first cell's preprocessing reads the RGB image itself
            C_curr = 3
            self.stem = nn.Identity()
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        C_to_auxiliary = C_prev
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            cell = Cell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            reduction_prev = reduction
            self.cells.append(cell)
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == 2 * layers // 3:
                C_to_auxiliary = C_prev
        if auxiliary:
            self.auxiliary_head = AuxiliaryHeadCIFAR(C_to_auxiliary, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        logits_aux = None
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == 2 * self._layers // 3 and self._auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        out = self.global_pooling(s1)
        return self.classifier(out.view(out.size(0), -1)), logits_aux


class NB201InferCell(nn.Module):
    """NAS-Bench-201 ``InferCell`` (stride 1): node i = sum of its edges' ops; ``none`` edges included
    as zeros (as in NB201, so every benchmarked arch, even a disconnected one, builds)."""

    def __init__(self, arch: Sequence[str], C: int, affine: bool = True, track_running_stats: bool = True):
        super().__init__()
        self.layers = nn.ModuleList()
        self.node_IN = []
        self.node_IX = []
        for node in arch_to_nodes(arch):
            ins, ixs = [], []
            for op_name, src in node:
                ixs.append(len(self.layers))
                ins.append(src)
                self.layers.append(NB201_OPS[op_name](C, C, 1, affine, track_running_stats))
            self.node_IN.append(ins)
            self.node_IX.append(ixs)

    def forward(self, x):
        nodes = [x]
        for ins, ixs in zip(self.node_IN, self.node_IX):
            nodes.append(sum(self.layers[k](nodes[j]) for j, k in zip(ins, ixs)))
        return nodes[-1]


class NB201Network(nn.Module):
    """NAS-Bench-201 ``TinyNetwork``: stem, 3 stages of N cells (C, 2C, 4C) joined by ResNet blocks,
    BN + ReLU, global pool, classifier. ``arch``: an arch string or 6 op names. Returns logits."""

    def __init__(self, arch: Union[str, Sequence[str]], C: int = 16, N: int = 5, num_classes: int = 10):
        super().__init__()
        arch = parse_arch(arch) if isinstance(arch, str) else tuple(arch)
        self.arch = arch
        self.stem = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        self.cells = nn.ModuleList()
        C_prev = C
        for C_curr, reduction in nb201_macro_layout(C, N):
            self.cells.append(ResNetBasicblock(C_prev, C_curr, 2, True) if reduction else NB201InferCell(arch, C_curr))
            C_prev = C_curr
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x):
        h = self.stem(x)
        for cell in self.cells:
            h = cell(h)
        out = self.global_pooling(self.lastact(h))
        return self.classifier(out.view(out.size(0), -1))
