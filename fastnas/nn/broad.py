"""The B-DARTS broad supernet: BNAS-v2's broad convolutional network searched with DARTS cells.

After Ding et al., "Memory-efficient and performance-collapse-prevented broad neural architecture
search" (BNAS-v2): a shallow, wide network of a few convolution blocks (one reduction cell each, all
sharing one set of reduction architecture weights), one enhancement block of normal cells, and a
multi-scale fusion of every block's output into the classifier. Few cells make the search cheap; the
cells are ordinary :class:`fastnas.nn.search_cells.DartsSearchCell` s, so everything of
:class:`fastnas.nn.search_network.SearchNetwork` (architecture parameters, derivation, op masks,
Dirichlet mixing, the auxiliary skip path) works unchanged.
"""
from __future__ import annotations

import numbers
from typing import List, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from fastnas.nn.operations import FactorizedReduce, ReLUConvBN
from fastnas.nn.search_cells import DartsSearchCell
from fastnas.nn.search_network import SearchNetwork
from fastnas.spaces import Genotype, num_edges

__all__ = ["BroadSearchNetwork", "bnas_genotype"]


def bnas_genotype(genotype: Genotype) -> Genotype:
    """A b-darts Genotype in BNAS-v2's convention, for its ``train_b.py``: there the convolution-block
    cells (the stride-2 ones too) are built from ``genotype.normal`` and the enhancement cells from
    ``genotype.reduce`` (BNASv2CLR/model_b.py, ``Cell(..., enhancement=True)``). fastnas's own Genotype
    is DARTS's (normal = the stride-1 enhancement cell, reduce = the convolution-block cell), which
    DARTS-style training scripts take; this swaps the two halves."""
    return Genotype(normal=list(genotype.reduce), normal_concat=list(genotype.reduce_concat),
                    reduce=list(genotype.normal), reduce_concat=list(genotype.normal_concat))


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class BroadSearchNetwork(SearchNetwork):
    """B-DARTS: the broad convolutional network of BNAS-v2 as a DARTS search supernet (space "darts").

    Layout (input (B, 3, H, W); ``m = multiplier``; ``n = conv_blocks``; ``H`` divisible by ``2 ** n``)::

        stem            conv3x3(3 -> stem_multiplier*C) + BN                (stem_multiplier*C, H, W)
        conv block b    ONE reduction DartsSearchCell, C_curr = C * 2**(b+1)       (m*C*2**(b+1), H/2**(b+1))
          (b = 0..n-1)  every conv-block cell reads alphas_reduce / betas_reduce (shared)
        enhancement     ``enhancement_cells`` normal (stride-1) cells, C_curr = C * 2**n,
                        reading alphas_normal / betas_normal                      (m*C*2**n, H/2**n)
        fusion          per block: ReLUConvBN(c_block, C_fuse, 1x1) then one FactorizedReduce(C_fuse,
                        C_fuse) per halving down to H/2**n; concat on channels     (n_blocks*C_fuse, H/2**n)
                        with C_fuse = (m * C * 2**n) // 2, half the last block's channels
        head            global average pool + Linear(n_blocks * C_fuse, num_classes)

    The cells chain as in DARTS: each takes the two previous outputs (s0, s1), the first takes the stem
    twice; a cell after a reduction cell (every conv block but the first, and the first enhancement
    cell) preprocesses s0 with a FactorizedReduce (``reduction_prev``). ``self.cells`` holds the
    ``conv_blocks`` reduction cells then the ``enhancement_cells`` normal cells, nothing else.

    Channels for C=16 (m=4, stem 48 channels), conv_blocks=2, enhancement_cells=2, 32x32 input:
    conv block 0 -> (128, 16, 16), conv block 1 -> (256, 8, 8), enhancement block -> (256, 8, 8);
    C_fuse = 128, fused map (384, 8, 8), classifier Linear(384, 10).

    Size and speed, measured here on the CPU (torch 2.13, OMP_NUM_THREADS=1, cpu backend, float32,
    partial_channels=4), one forward + backward of the cross-entropy at batch 32 of 32x32, median of 5
    after 2 warm-ups: this network (defaults, C=16) 328,918 parameters (328,666 weights + 252 arch)
    and 0.74 s; ``SearchNetwork("darts", C=16, layers=8, partial_channels=4)`` 299,830 parameters
    (299,578 weights) and 1.99 s, so ~2.7x faster per step for 10% more parameters (repeated while
    other jobs loaded the 2 shared cores: 1.2 s vs 3.3 s). The broad net has 4 cells instead of 8 and
    none at 32x32 (the DARTS supernet runs 2 normal cells there); its extra parameters are wider
    cells (64-channel nodes in 3 of 4 cells: 224 k) and the fusion (1x1 projections 83 k,
    FactorizedReduce 17 k).

    Arguments are SearchNetwork's (``space`` is fixed to "darts"), plus ``conv_blocks`` (>= 1) and
    ``enhancement_cells`` (>= 0). ``layers`` means nothing here: passing it raises ValueError (use
    ``conv_blocks`` / ``enhancement_cells``); ``self._layers`` is the total number of cells.

    ``enhancement_cells=0`` is allowed (a network of convolution blocks only): the normal cell is then
    not searched: ``alphas_normal`` / ``betas_normal`` still exist (so :meth:`genotype` still gives a
    full DARTS Genotype and ``op_mask`` still takes both keys) but get no gradient from the loss (their
    ``.grad`` stays None; only DrNAS's regulariser touches ``alphas_normal``), and the normal half of
    the genotype is derived from their initial values.

    :meth:`stage_outputs` gives the block outputs, finest first (conv blocks, then the enhancement
    block when there is one); :meth:`classify` takes that whole list (the fusion needs every block),
    not a single tensor as SearchNetwork's does; ``forward(x) = classify(stage_outputs(x))``.
    """

    def __init__(self, C: int = 16, num_classes: int = 10, partial_channels: int = 4, edge_norm: bool = True,
                 conv_blocks: int = 2, enhancement_cells: int = 2, steps: int = 4, multiplier: int = 4,
                 stem_multiplier: int = 3, primitives: Optional[Sequence[str]] = None,
                 backend: Optional[str] = None, op_mask: Optional[Mapping[str, torch.Tensor]] = None,
                 aux_skip: bool = False, mixing: str = "softmax", reg_type: str = "l2", reg_scale: float = 1e-3,
                 *, layers: Optional[int] = None):
        if layers is not None:
            raise ValueError(f"layers={layers!r} means nothing for BroadSearchNetwork: its depth is set by "
                             "conv_blocks and enhancement_cells")
        # Plain attributes may be set before nn.Module.__init__; _build_darts (called from the base
        # __init__) reads them.
        self._conv_blocks = _check_count("conv_blocks", conv_blocks, 1)
        self._enhancement_cells = _check_count("enhancement_cells", enhancement_cells, 0)
        _check_count("C", C, 1)
        _check_count("steps", steps, 1)
        _check_count("multiplier", multiplier, 1)
        _check_count("stem_multiplier", stem_multiplier, 1)
        if multiplier > steps:
            raise ValueError(f"multiplier={multiplier} must be <= steps={steps} (a cell concatenates its last "
                             "`multiplier` nodes)")
        super().__init__("darts", C=C, num_classes=num_classes, layers=None, partial_channels=partial_channels,
                         edge_norm=edge_norm, steps=steps, multiplier=multiplier, stem_multiplier=stem_multiplier,
                         primitives=primitives, backend=backend, op_mask=op_mask, aux_skip=aux_skip,
                         mixing=mixing, reg_type=reg_type, reg_scale=reg_scale)

    # ---------------------------------------------------------------------------------------------
    def _build_darts(self, C, num_classes, layers, steps, multiplier, stem_multiplier, backend):
        # ``layers`` (the base class's 8 default) is ignored: the depth is conv_blocks + enhancement_cells.
        n_conv, n_enh = self._conv_blocks, self._enhancement_cells
        self._layers, self._steps, self._multiplier = n_conv + n_enh, steps, multiplier
        C_stem = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem))
        E = num_edges(steps)
        self.cells = nn.ModuleList()
        C_prev_prev, C_prev, reduction_prev = C_stem, C_stem, False
        block_channels, block_halvings = [], []
        for b in range(n_conv):
            C_curr = C * 2 ** (b + 1)
            self.cells.append(DartsSearchCell(steps, multiplier, C_prev_prev, C_prev, C_curr, True, reduction_prev,
                                              self.primitives, self.k, backend, self._mask_arg("reduce", E),
                                              self.aux_skip))
            C_prev_prev, C_prev, reduction_prev = C_prev, multiplier * C_curr, True
            block_channels.append(C_prev)
            block_halvings.append(n_conv - 1 - b)
        C_curr = C * 2 ** n_conv
        for _ in range(n_enh):
            self.cells.append(DartsSearchCell(steps, multiplier, C_prev_prev, C_prev, C_curr, False, reduction_prev,
                                              self.primitives, self.k, backend, self._mask_arg("normal", E),
                                              self.aux_skip))
            C_prev_prev, C_prev, reduction_prev = C_prev, multiplier * C_curr, False
        if n_enh:
            block_channels.append(C_prev)
            block_halvings.append(0)
        self.block_channels = tuple(block_channels)
        self.block_reductions = tuple(n_conv - h for h in block_halvings)  # log2 of each block's stride
        self.fuse_channels = C_fuse = (multiplier * C * 2 ** n_conv) // 2
        if C_fuse < 2 or C_fuse % 2:
            raise ValueError(f"the fusion width multiplier*C*2**conv_blocks//2 = {C_fuse} must be even and >= 2")
        self.fuse_proj = nn.ModuleList(ReLUConvBN(c, C_fuse, 1, 1, 0) for c in block_channels)
        self.fuse_down = nn.ModuleList(nn.Sequential(*[FactorizedReduce(C_fuse, C_fuse) for _ in range(h)])
                                       for h in block_halvings)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(len(block_channels) * C_fuse, num_classes)
        self._init_darts_arch_parameters(steps)

    # ---------------------------------------------------------------------------------------------
    def stage_outputs(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The block outputs, finest first: conv block b (B, m*C*2**(b+1), H/2**(b+1), W/2**(b+1)) for
        b < conv_blocks, then the enhancement block's (B, m*C*2**conv_blocks, H/2**conv_blocks, ...)
        when enhancement_cells > 0. Channels are ``self.block_channels``."""
        w_reduce = self._softmax("reduce")
        e_reduce = self._edge_weights(getattr(self, "betas_reduce", None))
        if self._enhancement_cells:
            w_normal = self._softmax("normal")
            e_normal = self._edge_weights(getattr(self, "betas_normal", None))
        s0 = s1 = self.stem(x)
        blocks = []
        for cell in self.cells:
            if cell.reduction:
                s0, s1 = s1, cell(s0, s1, w_reduce, e_reduce, self.aux_skip_weight)
                blocks.append(s1)
            else:
                s0, s1 = s1, cell(s0, s1, w_normal, e_normal, self.aux_skip_weight)
        if self._enhancement_cells:
            blocks.append(s1)
        return blocks

    def fuse(self, blocks: Sequence[torch.Tensor]) -> torch.Tensor:
        """Multi-scale fusion: every block output projected to ``fuse_channels`` (1x1 ReLU-conv-BN),
        brought down to the coarsest resolution (FactorizedReduce per halving), concatenated:
        (B, n_blocks * fuse_channels, H/2**conv_blocks, W/2**conv_blocks)."""
        if isinstance(blocks, torch.Tensor) or len(blocks) != len(self.fuse_proj):
            got = "one tensor" if isinstance(blocks, torch.Tensor) else f"{len(blocks)} tensors"
            raise ValueError(f"BroadSearchNetwork's head fuses every block output: it needs the list of "
                             f"{len(self.fuse_proj)} tensors from stage_outputs(x), got {got}")
        return torch.cat([down(proj(h)) for h, proj, down in zip(blocks, self.fuse_proj, self.fuse_down)], dim=1)

    def classify(self, blocks: Sequence[torch.Tensor]) -> torch.Tensor:
        """The head: the list of block outputs (:meth:`stage_outputs`) -> logits (B, num_classes)."""
        out = self.global_pooling(self.fuse(blocks))
        return self.classifier(out.view(out.size(0), -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits (B, num_classes); H and W divisible by 2 ** conv_blocks."""
        return self.classify(self.stage_outputs(x))
