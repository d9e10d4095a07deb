"""Search supernets: the DARTS/PC-DARTS network (``space="darts"``) and the NAS-Bench-201 one (``"nb201"``).

Architecture parameters are real ``nn.Parameter``s registered on the module (so ``DataParallel`` /
DDP replicate them and ``state_dict`` saves them), returned by :meth:`SearchNetwork.arch_parameters`
and excluded from :meth:`SearchNetwork.weight_parameters`.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastnas.nn.operations import ResNetBasicblock
from fastnas.nn.search_cells import DartsSearchCell, NB201SearchCell
from fastnas.spaces import (NB201_EDGES, NB201_NODES, NB201_PRIMITIVES, PRIMITIVES, arch_to_str, derive_arch,
                            derive_genotype, nb201_macro_layout, node_edge_slices, num_edges)

__all__ = ["SearchNetwork", "node_softmax", "mixing_by_mean"]

ARCH_NAMES = ("alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce", "alphas", "betas")


def node_softmax(betas: torch.Tensor, slices: Sequence[slice]) -> torch.Tensor:
    """Edge normalization weights: softmax of ``betas`` within each node's slice of edges, concatenated."""
    return torch.cat([F.softmax(betas[s], dim=-1) for s in slices])


def _nb201_slices() -> List[slice]:
    slices, start = [], 0
    for i in range(1, NB201_NODES):
        slices.append(slice(start, start + i))
        start += i
    return slices


class SearchNetwork(nn.Module):
    """A differentiable-search supernet.

    ``space="darts"``: PC-DARTS ``Network`` (model_search.py): stem conv3x3 + BN to ``stem_multiplier * C``,
    ``layers`` cells with reductions at ``layers // 3`` and ``2 * layers // 3``, global average pool,
    linear classifier. Arch parameters ``alphas_normal``/``alphas_reduce`` (14, n_ops) and, with
    ``edge_norm``, ``betas_normal``/``betas_reduce`` (14,), all ``1e-3 * randn``.

    ``space="nb201"``: NAS-Bench-201 ``TinyNetworkDarts``: stem conv3x3 + BN to C, 3 stages of N = ``layers``
    search cells (C, 2C, 4C) joined by ResNet basic blocks (stride 2), BN + ReLU, pool, classifier.
    Arch parameters ``alphas`` (6, 5) and, with ``edge_norm``, ``betas`` (6,). ``layers`` defaults to 5
    there (``layers=None``, the default, means 8 for DARTS and 5 for NB201); ``steps``, ``multiplier``,
    ``stem_multiplier`` are unused.

    ``op_mask``: the ops kept by zero-shot pruning, ``{"normal": (14, n_ops), "reduce": (14, n_ops)}``
    (DARTS) or ``{"cell": (6, n_ops)}`` (NB201) bool tensors. Pruned ops are not built (no parameters,
    no compute, no activations) and their softmax weight is exactly 0 (their alphas are masked to -inf
    before every softmax and the derivation); the masks are buffers (``mask_normal``, ``mask_reduce`` /
    ``mask_cell``), saved with the state dict.

    ``mixing``: ``"softmax"`` (DARTS) or ``"dirichlet"`` (DrNAS): the mixing weights of an edge are a
    reparameterised sample of Dirichlet(elu(alpha) + 1) in training mode and its mean in eval mode (or
    inside :func:`mixing_by_mean`);
    :meth:`arch_regularizer` gives DrNAS's ``reg_scale`` times the KL divergence to Dirichlet(1) for
    ``reg_type="kl"``, over the ops ``reg_columns`` marks (``{kind: (E, n_ops) bool}``; default the
    ``op_mask``, or every op): DrNAS's space, its progressive stages' pruned ops included (their alphas
    reset to 0, as DrNAS's ``prune`` does); DrNAS's ``"l2"`` is the architecture optimiser's weight
    decay (none here).

    ``pool_bn`` (DARTS space): the pooling ops' ``BatchNorm2d(affine=False)`` of PC-DARTS's and DARTS's
    ``MixedOp``; False: bare pooling, as DrNAS's ``MixedOp``.

    ``aux_skip``: DARTS-'s auxiliary skip connection on every edge, weighted by the attribute
    ``aux_skip_weight`` (a float the search sets every epoch; 0 turns the path off) outside the
    architecture weights, so the derivation never sees it.

    Input (B, 3, H, W) -> logits (B, num_classes).
    """

    def __init__(self, space: str = "darts", C: int = 16, num_classes: int = 10, layers: Optional[int] = None,
                 partial_channels: int = 4, edge_norm: bool = True, steps: int = 4, multiplier: int = 4,
                 stem_multiplier: int = 3, primitives: Optional[Sequence[str]] = None,
                 backend: Optional[str] = None, op_mask: Optional[Mapping[str, torch.Tensor]] = None,
                 aux_skip: bool = False, mixing: str = "softmax", reg_type: str = "l2", reg_scale: float = 1e-3,
                 reg_columns: Optional[Mapping[str, torch.Tensor]] = None, pool_bn: bool = True):
        super().__init__()
        if mixing not in ("softmax", "dirichlet"):
            raise ValueError(f"mixing must be 'softmax' or 'dirichlet', got {mixing!r}")
        if reg_type not in ("kl", "l2"):
            raise ValueError(f"reg_type must be 'kl' or 'l2', got {reg_type!r}")
        self.mixing, self.reg_type, self.reg_scale = mixing, reg_type, reg_scale
        # True: a Dirichlet supernet mixes by the Dirichlet mean in training mode too (mixing_by_mean).
        self.mean_mixing = False
        self.space = space
        self.pool_bn = pool_bn
        self.aux_skip, self.aux_skip_weight = aux_skip, 0.0
        self._op_mask = None if op_mask is None else {k: torch.as_tensor(v, dtype=torch.bool).cpu()
                                                      for k, v in op_mask.items()}
        self._C, self._num_classes, self.k, self.edge_norm = C, num_classes, partial_channels, edge_norm
        if space == "darts":
            self.primitives = tuple(primitives) if primitives is not None else PRIMITIVES
            self._build_darts(C, num_classes, 8 if layers is None else layers, steps, multiplier, stem_multiplier,
                              backend)
        elif space == "nb201":
            self.primitives = tuple(primitives) if primitives is not None else NB201_PRIMITIVES
            unknown = [p for p in self.primitives if p not in NB201_PRIMITIVES]
            if unknown:
                raise ValueError(f"unknown NB201 ops {unknown}; known ops: {list(NB201_PRIMITIVES)}")
            self._build_nb201(C, num_classes, 5 if layers is None else layers, backend)
        else:
            raise ValueError(f"unknown space {space!r}; expected 'darts' or 'nb201'")
        if op_mask is not None:
            self.set_op_mask(op_mask)
        del self._op_mask
        # The ops DrNAS's KL runs over (non-persistent buffers: the search passes them to every stage).
        columns = reg_columns if reg_columns is not None else op_mask
        for kind in (self.cell_kinds() if mixing == "dirichlet" else ()):
            alphas = self._alphas(kind)
            c = (torch.ones_like(alphas, dtype=torch.bool) if columns is None
                 else torch.as_tensor(columns[kind], dtype=torch.bool).to(alphas.device).clone())
            if c.shape != alphas.shape:
                raise ValueError(f"reg_columns[{kind!r}] must have shape {tuple(alphas.shape)}, got {tuple(c.shape)}")
            self.register_buffer(f"reg_columns_{kind}", c, persistent=False)
            # The KL's gather indices, fixed here so the architecture step never reads the mask back to
            # the host: per group of edges that keep the same number n of ops, their rows and
            # (rows, n) columns. None: every op of every edge.
            groups = None
            if not bool(c.all()):
                counts = c.sum(-1)
                groups = []
                for g, n in enumerate(counts.unique().tolist()):
                    rows = (counts == n).nonzero().flatten()
                    self.register_buffer(f"reg_rows_{kind}_{g}", rows, persistent=False)
                    self.register_buffer(f"reg_cols_{kind}_{g}", c[rows].nonzero()[:, 1].view(-1, n), persistent=False)
                    groups.append(g)
            setattr(self, f"_reg_groups_{kind}", groups)

    def _mask_arg(self, kind: str, n_edges: int) -> Optional[torch.Tensor]:
        """The construction-time mask of ``kind``, validated; None without masks."""
        if self._op_mask is None:
            return None
        kinds = self.cell_kinds()
        if set(self._op_mask) != set(kinds):
            raise ValueError(f"op_mask needs the keys {kinds} for space {self.space!r}, got {sorted(self._op_mask)}")
        m = self._op_mask[kind]
        if m.shape != (n_edges, len(self.primitives)):
            raise ValueError(f"op_mask[{kind!r}] must have shape ({n_edges}, {len(self.primitives)}), got "
                             f"{tuple(m.shape)}")
        return m

    # ---------------------------------------------------------------------------------------------
    def _build_darts(self, C, num_classes, layers, steps, multiplier, stem_multiplier, backend):
        self._layers, self._steps, self._multiplier = layers, steps, multiplier
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            cell = DartsSearchCell(steps, multiplier, C_prev_prev, C_prev, C_curr, reduction, reduction_prev,
                                   self.primitives, self.k, backend,
                                   self._mask_arg("reduce" if reduction else "normal", num_edges(steps)),
                                   self.aux_skip, self.pool_bn)
            reduction_prev = reduction
            self.cells.append(cell)
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        self._init_darts_arch_parameters(steps)

    def _init_darts_arch_parameters(self, steps: int) -> None:
        """``alphas_normal``/``alphas_reduce`` (E, n_ops) and, with edge_norm, ``betas_*`` (E,), all
        ``1e-3 * randn`` as in PC-DARTS (drawn in this order, after the modules)."""
        E, n_ops = num_edges(steps), len(self.primitives)
        self._slices = node_edge_slices(steps)
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(E, n_ops))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(E, n_ops))
        if self.edge_norm:
            self.betas_normal = nn.Parameter(1e-3 * torch.randn(E))
            self.betas_reduce = nn.Parameter(1e-3 * torch.randn(E))

    def _build_nb201(self, C, num_classes, N, backend):
        self._layers = N
        self.stem = nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        self.cells = nn.ModuleList()
        C_prev = C
        for C_curr, reduction in nb201_macro_layout(C, N):
            if reduction:
                self.cells.append(ResNetBasicblock(C_prev, C_curr, 2))
            else:
                self.cells.append(NB201SearchCell(C_curr, self.primitives, self.k, backend=backend,
                                                  op_mask=self._mask_arg("cell", len(NB201_EDGES)),
                                                  aux_skip=self.aux_skip))
            C_prev = C_curr
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        self._slices = _nb201_slices()
        self.alphas = nn.Parameter(1e-3 * torch.randn(len(NB201_EDGES), len(self.primitives)))
        if self.edge_norm:
            self.betas = nn.Parameter(1e-3 * torch.randn(len(NB201_EDGES)))

    # ---------------------------------------------------------------------------------------------
    def named_arch_parameters(self) -> List[Tuple[str, nn.Parameter]]:
        return [(n, getattr(self, n)) for n in ARCH_NAMES if isinstance(getattr(self, n, None), nn.Parameter)]

    def arch_parameters(self) -> List[nn.Parameter]:
        return [p for _, p in self.named_arch_parameters()]

    def named_weight_parameters(self) -> Iterator[Tuple[str, nn.Parameter]]:
        arch = {id(p) for p in self.arch_parameters()}
        return ((n, p) for n, p in self.named_parameters() if id(p) not in arch)

    def weight_parameters(self) -> List[nn.Parameter]:
        return [p for _, p in self.named_weight_parameters()]

    def _edge_weights(self, betas: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if betas is None else node_softmax(betas, self._slices)

    # -- zero-shot pruning masks ------------------------------------------------------------------------
    def cell_kinds(self) -> Tuple[str, ...]:
        """The cell kinds that own architecture weights: ("normal", "reduce") or ("cell",)."""
        return ("cell",) if self.space == "nb201" else ("normal", "reduce")

    def _alphas(self, kind: str) -> nn.Parameter:
        return self.alphas if kind == "cell" else getattr(self, f"alphas_{kind}")

    def op_masks(self) -> Optional[Dict[str, torch.Tensor]]:
        """``{kind: (E, n_ops) bool}`` of the kept ops, or None when nothing is pruned."""
        if getattr(self, "mask_cell", None) is None and getattr(self, "mask_normal", None) is None:
            return None
        return {k: getattr(self, f"mask_{k}").clone() for k in self.cell_kinds()}

    def set_op_mask(self, op_mask: Optional[Mapping[str, torch.Tensor]]) -> None:
        """Switches ops off (False) without rebuilding: their weights become 0 and their modules idle.
        ``None`` switches every op back on (ops pruned at construction stay ``none``)."""
        for kind in self.cell_kinds():
            alphas = self._alphas(kind)
            # A copy, never the caller's tensor: a mask the caller edits later would otherwise change this
            # buffer behind the modules' on/off flags (and a restore of the buffer would edit the caller's).
            m = (torch.ones_like(alphas, dtype=torch.bool) if op_mask is None
                 else torch.as_tensor(op_mask[kind], dtype=torch.bool).to(alphas.device).clone())
            if m.shape != alphas.shape:
                raise ValueError(f"op_mask[{kind!r}] must have shape {tuple(alphas.shape)}, got {tuple(m.shape)}")
            self.register_buffer(f"mask_{kind}", m)
            for e, op in enumerate(self._mixed_ops(kind)):
                op.set_active(m[e].tolist())

    def _mixed_ops(self, kind: str) -> List["_Edge"]:
        """Per edge index e: edge e of every cell of ``kind`` (they share the mask row e)."""
        if kind == "cell":
            cells = [c for c in self.cells if isinstance(c, NB201SearchCell)]
            return [_Edge([c.edges[key] for c in cells]) for key in cells[0].edge_keys]
        cells = [c for c in self.cells if c.reduction == (kind == "reduce")]
        if not cells:  # e.g. no normal cell (a broad supernet without enhancement cells)
            return []
        return [_Edge([c._ops[e] for c in cells]) for e in range(len(cells[0]._ops))]

    def _softmax(self, kind: str, sample: Optional[bool] = None) -> torch.Tensor:
        """The mixing weights (E, n_ops) of ``kind``: softmax(alpha), or for ``mixing="dirichlet"`` a
        Dirichlet sample (``sample``, default: in training mode) or the Dirichlet mean; pruned ops 0."""
        alphas = self._alphas(kind)
        mask = getattr(self, f"mask_{kind}", None)
        if self.mixing == "dirichlet":
            concentration = F.elu(alphas) + 1
            if (self.training and not self.mean_mixing) if sample is None else sample:
                # validate_args=False: the argument check reads a value back to the host, which a CUDA
                # graph cannot capture (concentration = elu + 1 > 0 always holds)
                w = torch.distributions.Dirichlet(concentration, validate_args=False).rsample()
            else:
                w = concentration / concentration.sum(-1, keepdim=True)
            if mask is not None:
                w = w * mask
                w = w / w.sum(-1, keepdim=True)
            return w
        if mask is not None:
            alphas = alphas.masked_fill(~mask, float("-inf"))
        return F.softmax(alphas, dim=-1)

    def arch_regularizer(self) -> Optional[torch.Tensor]:
        """DrNAS's KL regulariser of the Dirichlet concentrations, ``reg_scale * sum KL(Dir(elu(alpha) + 1)
        || Dir(1))`` over every edge (``reg_type="kl"``). None for softmax mixing, scale 0 or ``"l2"``:
        DrNAS's L2 is the architecture optimiser's weight decay on alpha (its architect.py), which the
        search step sets (``fastnas.search.engine.Searcher._arch_weight_decay``)."""
        if self.mixing != "dirichlet" or not self.reg_scale or self.reg_type != "kl":
            return None
        total = 0.0
        for kind in self.cell_kinds():
            concentration = F.elu(self._alphas(kind)) + 1
            # Over the ops of DrNAS's space (reg_columns): not over 'none', which its DARTS space lacks.
            groups = getattr(self, f"_reg_groups_{kind}")
            rows = [concentration] if groups is None else [
                concentration[getattr(self, f"reg_rows_{kind}_{g}")[:, None], getattr(self, f"reg_cols_{kind}_{g}")]
                for g in groups]
            for c in rows:
                prior = torch.distributions.Dirichlet(torch.ones_like(c), validate_args=False)
                total = total + torch.distributions.kl_divergence(
                    torch.distributions.Dirichlet(c, validate_args=False), prior).sum()
        return self.reg_scale * total

    def masked_alphas(self) -> Dict[str, torch.Tensor]:
        """``{kind: alphas}`` (detached) with pruned ops at -inf: what the derivation ranks."""
        out = {}
        for kind in self.cell_kinds():
            a = self._alphas(kind).detach()
            mask = getattr(self, f"mask_{kind}", None)
            out[kind] = a if mask is None else a.masked_fill(~mask, float("-inf"))
        return out

    def arch_weights(self) -> Dict[str, torch.Tensor]:
        """``{kind: softmax(alphas)}`` as float32 CPU tensors (pruned ops 0): what heatmaps and logs show."""
        with torch.no_grad():
            return {k: self._softmax(k, sample=False).float().cpu() for k in self.cell_kinds()}

    # ---------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits (B, num_classes)."""
        return self.classify(self.stage_outputs(x)[-1])

    def stage_outputs(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The feature map at the end of every resolution stage, finest first: DARTS, the output of the
        cell before each reduction cell and of the last cell, (B, 4C, H, W), (B, 8C, H/2, W/2),
        (B, 16C, H/4, W/4) for the default 8 cells; NB201, the output of each stage of N cells, (B, C, H,
        W), (B, 2C, H/2, W/2), (B, 4C, H/4, W/4). The last one is what :meth:`classify` reads; MAE's
        multi-scale decoder reads them all."""
        if self.space == "nb201":
            return self._stages_nb201(x)
        # The softmaxes are taken once per forward, not once per cell as in PC-DARTS (same values and
        # gradients, 2 softmaxes instead of 2 * layers).
        w_normal = self._softmax("normal")
        w_reduce = self._softmax("reduce")
        e_normal = self._edge_weights(getattr(self, "betas_normal", None))
        e_reduce = self._edge_weights(getattr(self, "betas_reduce", None))
        s0 = s1 = self.stem(x)
        stages = []
        for cell in self.cells:
            if cell.reduction:
                stages.append(s1)
                s0, s1 = s1, cell(s0, s1, w_reduce, e_reduce, self.aux_skip_weight)
            else:
                s0, s1 = s1, cell(s0, s1, w_normal, e_normal, self.aux_skip_weight)
        return stages + [s1]

    def _stages_nb201(self, x):
        w = self._softmax("cell")
        ew = self._edge_weights(getattr(self, "betas", None))
        h = self.stem(x)
        stages = []
        for cell in self.cells:
            if isinstance(cell, NB201SearchCell):
                h = cell(h, w, ew, self.aux_skip_weight)
            else:
                stages.append(h)
                h = cell(h)
        return stages + [h]

    def classify(self, h: torch.Tensor) -> torch.Tensor:
        """The head: the last stage's features (B, C_last, h, w) -> logits (B, num_classes)."""
        if self.space == "nb201":
            h = self.lastact(h)
        out = self.global_pooling(h)
        return self.classifier(out.view(out.size(0), -1))

    # ---------------------------------------------------------------------------------------------
    def genotype(self):
        """DARTS: a :class:`fastnas.spaces.Genotype` (weights alpha x beta). NB201: the arch string."""
        alphas = self.masked_alphas()
        if self.space == "nb201":
            # Edge normalization scales every op of an edge alike: the per-edge argmax is alpha's alone.
            return arch_to_str(self._nb201_full_arch(alphas["cell"]))
        return derive_genotype(alphas["normal"], alphas["reduce"], getattr(self, "betas_normal", None),
                               getattr(self, "betas_reduce", None), self.primitives, self._multiplier)

    def _nb201_full_arch(self, alphas: torch.Tensor):
        if self.primitives == NB201_PRIMITIVES:
            return derive_arch(alphas)
        a = alphas.tolist()
        return tuple(self.primitives[max(range(len(r)), key=r.__getitem__)] for r in a)


@contextlib.contextmanager
def mixing_by_mean(model: nn.Module):
    """Within the block every :class:`SearchNetwork` in ``model`` that mixes by Dirichlet samples (DrNAS)
    mixes by the Dirichlet mean instead, in training mode too (BN keeps its batch statistics).

    For what needs the mixing as a deterministic, twice-differentiable function of the alphas: torch's
    Dirichlet ``rsample`` backward is ``once_differentiable``, so a Hessian taken through a draw silently
    loses every second-derivative term of the draw (the collapse monitor read 0.0 on a DrNAS supernet
    whose Hessian, through the mean, is -0.02); and zero-shot pruning scores the supernet with uniform
    architecture weights, which for zero alphas is the mean, not one random draw.
    """
    nets = [m for m in model.modules() if isinstance(m, SearchNetwork)]
    before = [n.mean_mixing for n in nets]
    for n in nets:
        n.mean_mixing = True
    try:
        yield model
    finally:
        for n, b in zip(nets, before):
            n.mean_mixing = b


class _Edge:
    """The mixed ops that share one row of a mask (edge e of every cell of a kind)."""

    def __init__(self, ops):
        self.ops = ops

    def set_active(self, active) -> None:
        for op in self.ops:
            op.set_active(active)
