"""Exact stable rank of convolution ops, and the MSR-DARTS derivation (method ``"msr-darts"``).

MSR-DARTS (Machida et al., "MSR-DARTS: Minimum Stable Rank of Differentiable Architecture Search",
IJCNN 2022) trains the supernet weights as DARTS does and then derives the architecture from the
weights instead of the architecture parameters: on every edge it keeps the convolution op whose
operator, written as a matrix A, has the smallest stable rank

    stable_rank(A) = sum_i sigma_i^2 / max_i sigma_i^2 = ||A||_F^2 / ||A||_2^2.

The operator of an op is its linear part: the chain of its ``Conv2d`` layers in module order, ReLUs
taken as the identity, every BatchNorm folded as its eval-mode per-channel scale
``gamma / sqrt(running_var + eps)`` and every bias dropped (biases and BN shifts are not linear).

Why a circular boundary: with periodic (circular) padding a stride-1 convolution is block-diagonalised
by the 2-D DFT (Sedghi, Gupta, Long, "The Singular Values of Convolutional Layers", ICLR 2019), so all
``c * H * W`` singular values come from ``H * W`` small ``c_out x c_in`` SVDs instead of one SVD of a
``c_out H W x c_in H W`` matrix (16,384 x 16,384 for 16 channels at 32 x 32). The zero-padded operator
that the network actually runs differs from the circular one only in the rows of output pixels whose
receptive field crosses the image edge (within ``p`` pixels of the border, per stage): a perturbation
of rank at most ``c_out`` times that many pixels, which shrinks relative to the whole as H, W grow.

Conventions (one 2-D axis written; both axes alike, sizes may differ per axis). A stage is
``y[i] = scale * sum_k W[k] x[(i * s + k * d - p) mod n]`` for ``i < n / s``. With the unitary DFT
``X[f] = n^-1/2 sum_j x[j] exp(-2 pi i f j / n)`` a stride-1 stage is ``Y[f] = M(f) X[f]`` with

    M(f) = sum_k W[k] exp(+2 pi i f (k d - p) / n)        (c_out, c_in): grouped weights expanded
                                                            to the full block-diagonal matrix

and subsampling by ``s`` maps ``Y`` on the n-grid to ``Z[g] = s^-1/2 sum_{a<s} Y[g + a n/s]``. Hence
for a chain whose last output grid is ``m`` (per axis), every output frequency ``g`` sees the input
frequencies ``f = g (mod m)``, with the block ``P(f) = prod_l D_l M_l(f mod n_l) / sqrt(prod_l s_l)``
(later stages on the left, ``n_l`` the input grid of stage l, ``D_l`` its channel scale), and the
operator's singular values are the union over ``g`` of those of the ``c_out x (c_in * #aliases)``
matrix ``[P(f)]_{f = g mod m}``.

Padding is a circular shift of a stage's input; a shift commutes with the (strided) convs and is
unitary, so it never changes the singular values. It is kept in both constructions so that they
describe the same operator entry by entry.

Cost of :func:`edge_stable_ranks` at ``image_size=32``, measured with ``OMP_NUM_THREADS=1`` (one thread)
on this project's CPU box (AMD EPYC, 2 cores shared with other work, torch 2.13 CPU; float64 /
complex128; median of 5 runs after a warm-up; about 2x more while the other core was busy):

* DARTS ``SearchNetwork("darts", C=16, layers=8, partial_channels=4)``: 8 cells x 14 edges x 4 conv
  ops = 448 chains on 4..16 channels at 32..8 pixels: 0.72 s.
* NB201 ``SearchNetwork("nb201", C=16, partial_channels=1, edge_norm=False)``: 15 cells x 6 edges x 2
  conv ops = 180 chains on 16..64 channels at 32..8 pixels: 2.1 s (mostly the batched complex SVDs).
"""
from __future__ import annotations

import math
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from fastnas.nn.operations import FactorizedReduce, Identity, ResNetBasicblock, Zero
from fastnas.nn.search_cells import DartsSearchCell, NB201SearchCell
from fastnas.spaces import Genotype, arch_to_str, node_edge_slices, num_edges

__all__ = [
    "ConvStage", "conv_chain_singular_values", "explicit_conv_chain_matrix", "stable_rank", "op_conv_chain",
    "op_stable_rank", "edge_stable_ranks", "derive_darts_cell_by_rank", "derive_nb201_by_rank",
    "derive_by_stable_rank", "OPERATORS", "candidate_op_mask", "set_mixing_from_stable_ranks", "apply_spectral_norm",
]

Size = Union[int, Tuple[int, int]]


class ConvStage(NamedTuple):
    """One 2-D convolution of a chain: ``weight`` (c_out, c_in / groups, kh, kw); ``stride``, ``padding``,
    ``dilation`` ints or (h, w) pairs; ``groups``; ``scale`` (c_out,) per-output-channel multiplier
    applied after the conv (a folded BatchNorm) or None (= 1). Plain 6-tuples in this order work too."""

    weight: torch.Tensor
    stride: Union[int, Tuple[int, int]] = 1
    padding: Union[int, Tuple[int, int]] = 0
    dilation: Union[int, Tuple[int, int]] = 1
    groups: int = 1
    scale: Optional[torch.Tensor] = None


def _pair(v) -> Tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


class _Stage(NamedTuple):
    """A validated stage: float64 weight expanded to (c_out, c_in, kh, kw), per-axis pairs, scale or None."""

    weight: torch.Tensor
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]
    groups: int
    scale: Optional[torch.Tensor]


def _expand_groups(w: torch.Tensor, groups: int) -> torch.Tensor:
    """(c_out, c_in / groups, kh, kw) -> (c_out, c_in, kh, kw), the block-diagonal full weight."""
    if groups == 1:
        return w
    c_out, cig, kh, kw = w.shape
    cog = c_out // groups
    full = w.new_zeros(groups, cog, groups, cig, kh, kw)
    idx = torch.arange(groups)
    full[idx, :, idx] = w.reshape(groups, cog, cig, kh, kw)  # group g: rows g*cog.., columns g*cig..
    return full.reshape(c_out, groups * cig, kh, kw)


def _check_chain(convs: Sequence, size: Size) -> Tuple[List[_Stage], List[Tuple[int, int]]]:
    """Validates a chain and the grid: returns the stages and the input grid (h, w) of every stage plus
    the output grid (len(convs) + 1 grids). Raises ValueError on inconsistent channels or a grid that a
    stride does not divide."""
    if len(convs) == 0:
        raise ValueError("an empty conv chain has no operator")
    grid = _pair(size)
    if min(grid) < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    stages, grids, c_prev = [], [grid], None
    for i, conv in enumerate(convs):
        w, stride, padding, dilation, groups, scale = ConvStage(*conv)
        w = torch.as_tensor(w).detach().to("cpu", torch.float64)
        groups = int(groups)
        if w.dim() != 4 or groups < 1 or w.shape[0] % groups:
            raise ValueError(f"conv {i}: weight must be (c_out, c_in/groups, kh, kw) with c_out divisible by "
                             f"groups={groups}, got {tuple(w.shape)}")
        c_in = w.shape[1] * groups
        if c_prev is not None and c_in != c_prev:
            raise ValueError(f"conv {i} takes {c_in} channels but the previous conv gives {c_prev}")
        if scale is not None:
            scale = torch.as_tensor(scale).detach().to("cpu", torch.float64).reshape(-1)
            if scale.numel() != w.shape[0]:
                raise ValueError(f"conv {i}: channel scale has {scale.numel()} entries for {w.shape[0]} channels")
        s = _pair(stride)
        for axis in range(2):
            if s[axis] < 1 or grid[axis] % s[axis]:
                raise ValueError(f"size {tuple(_pair(size))} does not fit the chain: conv {i} has stride {s} but "
                                 f"its input grid is {grid} (each size must be divisible by the strides)")
        grid = (grid[0] // s[0], grid[1] // s[1])
        grids.append(grid)
        stages.append(_Stage(_expand_groups(w, groups), s, _pair(padding), _pair(dilation), groups, scale))
        c_prev = w.shape[0]
    return stages, grids


def _phases(n: int, k: int, d: int, p: int) -> torch.Tensor:
    """(n, k) complex128 ``exp(+2 pi i f (k d - p) / n)``: one axis of the DFT of a kernel's taps (taps
    that wrap onto the same pixel of a small grid simply add up, as in the circular operator)."""
    offsets = torch.arange(k, dtype=torch.float64) * d - p
    return torch.exp(2j * math.pi * torch.outer(torch.arange(n, dtype=torch.float64), offsets) / n)


def _transfer(stage: _Stage, grid: Tuple[int, int]) -> torch.Tensor:
    """M(f) of one stage, channel scale folded in, on its input grid: (n_h, n_w, c_out, c_in) complex128.

    Separable: one (n, k) phase matrix per axis, two einsums (batched GEMMs), cheaper than an FFT of
    the zero-embedded kernel for the small kernels of NAS ops (measured 3x at 16 channels, 32 x 32)."""
    w = stage.weight.to(torch.complex128)
    kh, kw = w.shape[-2:]
    (nh, nw), (dh, dw), (ph, pw) = grid, stage.dilation, stage.padding
    m = torch.einsum("ak,oikl->aoil", _phases(nh, kh, dh, ph), w)
    m = torch.einsum("bl,aoil->aboi", _phases(nw, kw, dw, pw), m)
    if stage.scale is not None:
        m = m * stage.scale.to(m.dtype)[:, None]
    return m


def _conjugate_representatives(gh: int, gw: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """For the frequencies of a (gh, gw) grid, flattened: the indices g with g <= -g (mod the grid) and
    their multiplicities (1 when g = -g, else 2). A real operator has T(-g) = conj(T(g)) up to a column
    permutation, with the same singular values, so only these need an SVD."""
    g = torch.arange(gh * gw)
    neg = ((-(g // gw)) % gh) * gw + (-(g % gw)) % gw
    keep = g <= neg
    return g[keep], torch.where(g[keep] == neg[keep], 1, 2)


def conv_chain_singular_values(convs: Sequence, size: Size) -> torch.Tensor:
    """All singular values (float64, 1-D, ``min(c_out h w, c_in H W)`` of them, unsorted) of the
    circular-boundary operator of a chain of 2-D convolutions applied in order to (c_in, H, W) inputs.

    Args:
        convs: a sequence of :class:`ConvStage` (or 6-tuples ``(weight, stride, padding, dilation, groups,
            scale)``); consecutive stages must agree in channels.
        size: H = W (an int) or (H, W); every stage's input grid must be divisible by its stride.

    Exact up to float64 rounding (see the module docstring for the derivation); raises ValueError on
    a size that a stride does not divide.
    """
    stages, grids = _check_chain(convs, size)
    H, W = grids[0]
    gh, gw = grids[-1]
    with torch.no_grad():
        P = None
        for stage, (nh, nw) in zip(stages, grids[:-1]):
            # Stage l sees input frequency f of the original grid as f mod n_l.
            m = _transfer(stage, (nh, nw))[torch.arange(H) % nh][:, torch.arange(W) % nw]  # (H, W, co, ci)
            P = m if P is None else m @ P
        sh, sw = H // gh, W // gw  # aliases per axis: prod of the strides
        c_out, c_in = P.shape[-2:]
        # f = a * g_grid + g: group the aliases a of each output frequency g side by side (columns).
        T = P.reshape(sh, gh, sw, gw, c_out, c_in).permute(1, 3, 4, 0, 2, 5).reshape(gh * gw, c_out, sh * sw * c_in)
        reps, mult = _conjugate_representatives(gh, gw)
        sv = torch.linalg.svdvals(T[reps]) / math.sqrt(sh * sw)  # (len(reps), min(c_out, sh sw c_in))
    return sv.repeat_interleave(mult, dim=0).reshape(-1)


def explicit_conv_chain_matrix(convs: Sequence, size: Size) -> torch.Tensor:
    """The unrolled circular-boundary operator of a conv chain, (c_out * h * w, c_in * H * W) float64,
    column j = the chain applied to the j-th basis image (flattened (c, H, W) order, as the rows).

    Built independently of the FFT: each stage pads circularly (by index wrap-around, which is
    ``F.pad(x, (p, p, p, p), mode="circular")`` for a 'same' conv and also works when the pad exceeds
    the grid), then runs ``F.conv2d`` with padding 0 and the stage's stride, dilation and groups, then
    the channel scale, so ``y[i] = sum_k W[k] x[(i s + k d - p) mod n]``.

    For tests and small cases only: the matrix has ``c_out h w * c_in H W`` entries (its SVD is cubic).
    """
    stages, grids = _check_chain(convs, size)
    c_in = stages[0].weight.shape[1]
    H, W = grids[0]
    x = torch.eye(c_in * H * W, dtype=torch.float64).reshape(-1, c_in, H, W)
    with torch.no_grad():
        for i, (conv, stage, (nh, nw)) in enumerate(zip(convs, stages, grids[:-1])):
            x = _circular_pad(x, stage, (nh, nw))
            w = torch.as_tensor(ConvStage(*conv).weight).detach().to("cpu", torch.float64)
            x = F.conv2d(x, w, stride=stage.stride, dilation=stage.dilation, groups=stage.groups)
            assert x.shape[-2:] == grids[i + 1], (x.shape, grids[i + 1])
            if stage.scale is not None:
                x = x * stage.scale[:, None, None]
    return x.reshape(x.shape[0], -1).T.contiguous()


def _circular_pad(x: torch.Tensor, stage: _Stage, grid: Tuple[int, int]) -> torch.Tensor:
    """Pads (N, C, n_h, n_w) to ``n + d (k - 1)`` per axis with ``x_pad[j] = x[(j - p) mod n]``, so that an
    unpadded conv yields exactly ``n / s`` outputs per axis."""
    kh, kw = stage.weight.shape[-2:]
    (nh, nw), (dh, dw), (ph, pw) = grid, stage.dilation, stage.padding
    rows = (torch.arange(nh + dh * (kh - 1)) - ph) % nh
    cols = (torch.arange(nw + dw * (kw - 1)) - pw) % nw
    return x[:, :, rows][:, :, :, cols]


def stable_rank(sv: torch.Tensor) -> float:
    """``sum sv^2 / max sv^2`` of a vector of singular values (any shape; NaN when all are 0, the zero
    operator having no stable rank)."""
    sq = torch.as_tensor(sv, dtype=torch.float64).reshape(-1) ** 2
    top = sq.max() if sq.numel() else torch.tensor(0.0, dtype=torch.float64)
    return float(sq.sum() / top) if top > 0 else float("nan")


# --------------------------------------------------------------------------------------------------
# Ops -> conv chains
# --------------------------------------------------------------------------------------------------
# Modules that may sit between the convs of a chain: activations (their linear part is taken as the
# identity) and identities. Anything else (a pool, a Zero, a linear layer) next to a conv means the op
# is not a plain conv chain.
_PASS_THROUGH = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Identity, Identity, nn.Dropout)


def _bn_scale(bn: nn.BatchNorm2d) -> torch.Tensor:
    """Eval-mode per-channel scale (C,) of a BatchNorm: gamma / sqrt(running_var + eps), gamma = 1 without
    affine; without running statistics the batch variance is unknown and only gamma is kept."""
    C = bn.num_features
    gamma = (bn.weight.detach().to("cpu", torch.float64) if bn.affine and bn.weight is not None
             else torch.ones(C, dtype=torch.float64))
    if bn.running_var is None:
        return gamma
    return gamma / torch.sqrt(bn.running_var.detach().to("cpu", torch.float64) + bn.eps)


def _layers(op: nn.Module) -> List[nn.Module]:
    """The op's layers in definition order: its leaf modules, a parametrized conv (e.g. spectrally
    normalised) counted as one layer and its parametrization modules left out."""
    hidden = {id(sub) for m in op.modules() if parametrize.is_parametrized(m) for sub in m.parametrizations.modules()}
    return [m for m in op.modules()
            if id(m) not in hidden and (isinstance(m, nn.Conv2d) or not list(m.children()))]


def op_conv_chain(op: nn.Module) -> Optional[List[ConvStage]]:
    """The linear part of an op as a conv chain: its ``Conv2d`` layers in ``modules()`` order, each
    BatchNorm folded into the scale of the conv before it, ReLUs as identity, conv biases dropped.

    Returns None for ops without a conv (``none``/``Zero``, skip, pools) and for ``FactorizedReduce``
    (two parallel stride-2 convs concatenated, not a chain; it is the stride-2 ``skip_connect``, not a
    candidate conv op). Raises NotImplementedError, naming the op type, when the op has convs but is not
    a plain chain (other layers among them, a BatchNorm before the first conv, channel mismatches).
    Parallel branches inside a custom ``forward`` cannot be seen from the modules: only
    ``FactorizedReduce`` is recognised.
    """
    if any(isinstance(m, FactorizedReduce) for m in op.modules()):
        return None
    layers = _layers(op)
    if not any(isinstance(m, nn.Conv2d) for m in layers):
        return None
    name = type(op).__name__
    chain: List[ConvStage] = []
    for m in layers:
        if isinstance(m, nn.Conv2d):
            if isinstance(m.padding, str):
                raise NotImplementedError(f"{name}: conv padding {m.padding!r} is not supported (give numbers)")
            if chain and chain[-1].weight.shape[0] != m.in_channels:
                raise NotImplementedError(f"{name} is not a plain conv chain: a conv on {m.in_channels} channels "
                                          f"follows one with {chain[-1].weight.shape[0]} outputs")
            chain.append(ConvStage(m.weight.detach(), m.stride, m.padding, m.dilation, m.groups, None))
        elif isinstance(m, nn.BatchNorm2d):
            if not chain or chain[-1].weight.shape[0] != m.num_features:
                raise NotImplementedError(f"{name} is not a plain conv chain: BatchNorm2d({m.num_features}) does "
                                          "not follow a conv of as many channels")
            s = _bn_scale(m)
            prev = chain[-1]
            chain[-1] = prev._replace(scale=s if prev.scale is None else prev.scale * s)
        elif not isinstance(m, _PASS_THROUGH):
            raise NotImplementedError(f"{name} is not a plain conv chain: it contains {type(m).__name__}")
    return chain


# What "the operator of an op" is (``operator=``):
#   "last_conv": its last Conv2d alone, unscaled, at the resolution that conv sees: the MSR-DARTS
#                authors' code (msrdarts model_search.py, MixedOp.calc_stable_ranks); for the DARTS
#                conv ops that is the final 1x1 pointwise conv.
#   "chain":     the whole linear part (op_conv_chain: every conv, BatchNorm scales folded).
OPERATORS = ("last_conv", "chain")


def op_stable_rank(op: nn.Module, size: Size, operator: str = "chain") -> Optional[float]:
    """Stable rank of an op's operator (see :data:`OPERATORS`) as a circular-boundary operator on inputs
    of spatial size ``size``; None when the op has no conv chain (see :func:`op_conv_chain`)."""
    if operator not in OPERATORS:
        raise ValueError(f"operator must be one of {', '.join(OPERATORS)}, got {operator!r}")
    chain = op_conv_chain(op)
    if chain is None:
        return None
    if operator == "last_conv":
        h, w = _pair(size)
        for stage in chain[:-1]:   # the last conv sees the input after the earlier convs' strides
            sh, sw = _pair(stage.stride)
            if h % sh or w % sw:
                raise ValueError(f"{type(op).__name__}: size {h}x{w} does not divide by a conv's stride {sh}x{sw}")
            h, w = h // sh, w // sw
        chain, size = [chain[-1]._replace(scale=None)], (h, w)
    return stable_rank(conv_chain_singular_values(chain, size))


# --------------------------------------------------------------------------------------------------
# Supernets
# --------------------------------------------------------------------------------------------------
def _mixed_op_ranks(mixed: nn.Module, size: int, operator: str) -> torch.Tensor:
    """(n_ops,) float64 stable ranks of one PartialChannelMixedOp's ops; NaN for inactive ops and ops
    without a conv. The ops act on C // K channels: they are scored as built."""
    out = torch.full((len(mixed._ops),), float("nan"), dtype=torch.float64)
    for o, (op, active) in enumerate(zip(mixed._ops, mixed.active)):
        if active and not isinstance(op, Zero):
            r = op_stable_rank(op, size, operator)
            if r is not None:
                out[o] = r
    return out


def edge_stable_ranks(model: nn.Module, image_size: Union[int, Tuple[int, int]] = 32,
                      operator: str = "chain") -> Dict[str, torch.Tensor]:
    """Stable ranks of every candidate op of a :class:`fastnas.nn.SearchNetwork` ("darts" or "nb201");
    ``operator``: what an op's operator is (:data:`OPERATORS`).

    Returns ``{kind: (E, n_ops) float64}`` for kind in ``model.cell_kinds()`` (("normal", "reduce") for
    DARTS, ("cell",) for NB201): entry [e, o] is the mean over the cells of that kind of the stable rank
    of op o on edge e at the resolution its input has in the network when the images are
    ``image_size`` x ``image_size`` (or (H, W)); NaN where the op has no conv (none, skip, pools,
    FactorizedReduce) or is pruned/inactive.

    Resolutions: DARTS halves at every reduction cell (its edges from the two cell inputs run at the
    cell's input resolution with stride 2, its edges from intermediate nodes at half of it, stride 1);
    NB201 halves at every ResNet block.
    """
    if model.space not in ("darts", "nb201"):
        raise ValueError(f"edge_stable_ranks supports the 'darts' and 'nb201' spaces, got {model.space!r}")
    alphas = model.masked_alphas()
    per_kind: Dict[str, List[torch.Tensor]] = {k: [] for k in model.cell_kinds()}
    with torch.no_grad():   # reading a spectrally normalised weight must not advance its power iteration
        for kind, edges in _cell_edges(model, check_image_size(model, image_size)):
            per_kind[kind].append(torch.stack([_mixed_op_ranks(mixed, size, operator) for mixed, size in edges]))
    nan = float("nan")
    return {k: torch.stack(v).nanmean(0) if v else torch.full(alphas[k].shape, nan, dtype=torch.float64)
            for k, v in per_kind.items()}


def _cell_edges(model: nn.Module, res: Tuple[int, int]):
    """Yields ``(kind, [(mixed op, (H, W) of its input), ...])`` for every search cell of ``model`` in
    order, edges in the cell's edge order; ``res`` is the first cell's input resolution."""
    for cell in model.cells:
        if isinstance(cell, NB201SearchCell):
            yield "cell", [(cell.edges[k], res) for k in cell.edge_keys]
        elif isinstance(cell, DartsSearchCell):
            yield "reduce" if cell.reduction else "normal", _darts_cell_edges(cell, res)
        if isinstance(cell, ResNetBasicblock) or getattr(cell, "reduction", False):
            res = (res[0] // 2, res[1] // 2)


def check_image_size(model: nn.Module, image_size: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    """(H, W) of ``image_size`` (an int or a pair); ValueError unless both halve exactly at every
    reduction of ``model`` (the stable ranks are taken at each cell's exact resolution)."""
    res = (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(int(v) for v in image_size)
    if len(res) != 2 or min(res) < 1:
        raise ValueError(f"image_size must be an int or (H, W), got {image_size!r}")
    halvings = sum(1 for c in model.cells if isinstance(c, ResNetBasicblock) or getattr(c, "reduction", False))
    if any(v % (2 ** halvings) for v in res):
        raise ValueError(f"image size {res[0]}x{res[1]} is not divisible by 2**{halvings}: the network halves "
                         f"it {halvings} times, and the stable ranks need every resolution exact")
    return res


def _darts_cell_edges(cell: DartsSearchCell, res: Tuple[int, int]) -> List[Tuple[nn.Module, Tuple[int, int]]]:
    """[(mixed op, (H, W) of its input)] in edge order for one DARTS cell whose inputs are res = (H, W)."""
    edges, e = [], 0
    for node in range(cell._steps):
        for src in range(2 + node):
            # Reduction cells: edges from the inputs (stride 2) see res, edges from nodes see res / 2.
            edges.append((cell._ops[e], (res[0] // 2, res[1] // 2) if cell.reduction and src >= 2 else res))
            e += 1
    return edges


# --------------------------------------------------------------------------------------------------
# Derivation
# --------------------------------------------------------------------------------------------------
def _argmin_scored(row: List[float]) -> Optional[int]:
    """Index of the smallest non-NaN entry (first of equal minima), None when none is scored."""
    scored = [k for k, v in enumerate(row) if v == v]
    return min(scored, key=lambda k: (row[k], k)) if scored else None


def _argmax_first(row: List[float], allowed: Sequence[int]) -> int:
    return max(allowed, key=lambda k: (row[k], -k))


def derive_darts_cell_by_rank(scores: torch.Tensor, alphas: torch.Tensor,
                              primitives: Sequence[str]) -> List[Tuple[str, int]]:
    """One DARTS cell: scores (E, n_ops) stable ranks (NaN = unscored), alphas (E, n_ops) masked alphas
    (pruned -inf) -> the 2 * steps ``(op, source)`` pairs of a Genotype cell.

    Per edge the op is the argmin stable rank; per node the 2 incoming edges with the smallest such
    minimum are kept, smallest first (ties: the lower source, the first op). An edge with no scored op
    (all its conv ops pruned) falls back to the argmax of its alphas over the non-``none`` ops and ranks
    after every scored edge of its node.
    """
    s = torch.as_tensor(scores, dtype=torch.float64).tolist()
    a = torch.as_tensor(alphas, dtype=torch.float64).tolist()
    steps = next(k for k in range(len(s) + 1) if num_edges(k) >= len(s))
    if num_edges(steps) != len(s):
        raise ValueError(f"{len(s)} edges do not form a DARTS cell (2, 5, 9, 14, ... edges)")
    not_none = [k for k, p in enumerate(primitives) if p != "none"]
    choice, value = [], []
    for e in range(len(s)):
        o = _argmin_scored(s[e])
        choice.append(o if o is not None else _argmax_first(a[e], not_none))
        value.append(s[e][o] if o is not None else math.inf)
    gene = []
    for node, sl in enumerate(node_edge_slices(steps)):
        kept = sorted(range(node + 2), key=lambda j: value[sl.start + j])[:2]  # stable: lower source first
        gene.extend((primitives[choice[sl.start + j]], j) for j in kept)
    return gene


def derive_nb201_by_rank(scores: torch.Tensor, alphas: torch.Tensor, primitives: Sequence[str]) -> Tuple[str, ...]:
    """NB201: per edge the op with the smallest stable rank; an edge with no scored op falls back to the
    argmax of its masked alphas over all ops (``none`` included, as NB201's own derivation does).
    scores, alphas (6, n_ops) -> 6 op names in edge order."""
    s = torch.as_tensor(scores, dtype=torch.float64).tolist()
    a = torch.as_tensor(alphas, dtype=torch.float64).tolist()
    ops = []
    for e in range(len(s)):
        o = _argmin_scored(s[e])
        ops.append(primitives[o if o is not None else _argmax_first(a[e], range(len(primitives)))])
    return tuple(ops)


def derive_by_stable_rank(model: nn.Module, image_size: Union[int, Tuple[int, int]] = 32, operator: str = "chain"
                          ) -> Tuple[Union[Genotype, str], Dict[str, torch.Tensor]]:
    """The MSR-DARTS derivation of a trained supernet: ``(genotype, scores)``.

    DARTS: a :class:`fastnas.spaces.Genotype` (per edge the argmin-stable-rank op, per node the 2 edges
    with the smallest minimum, concat [2 .. steps + 1]; see :func:`derive_darts_cell_by_rank`). NB201:
    the arch string (:func:`derive_nb201_by_rank`). ``scores`` is :func:`edge_stable_ranks`'s dict.
    Edges without any scored op fall back to the argmax of the masked alphas.
    """
    scores = edge_stable_ranks(model, image_size, operator)
    alphas = model.masked_alphas()
    primitives = tuple(model.primitives)
    if model.space == "nb201":
        return arch_to_str(derive_nb201_by_rank(scores["cell"], alphas["cell"], primitives)), scores
    normal = derive_darts_cell_by_rank(scores["normal"], alphas["normal"], primitives)
    reduce = derive_darts_cell_by_rank(scores["reduce"], alphas["reduce"], primitives)
    concat = list(range(2, 2 + len(normal) // 2))
    return Genotype(normal, concat, reduce, concat), scores


# --------------------------------------------------------------------------------------------------
# The MSR-DARTS supernet
# --------------------------------------------------------------------------------------------------
def candidate_op_mask(primitives: Sequence[str], shapes: Dict[str, Tuple[int, int]]) -> Dict[str, torch.Tensor]:
    """``{kind: (E, n_ops) bool}`` keeping only the convolution ops, the only ops MSR-DARTS's supernet
    has (the authors' ``PRIMITIVES_SPECTRAL``: sep_conv_3x3/5x5, dil_conv_3x3/5x5; on NB201, fastnas's
    extension, nor_conv_1x1/3x3)."""
    keep = torch.tensor(["conv" in p for p in primitives])
    return {kind: keep.expand(shape).clone() for kind, shape in shapes.items()}


@torch.no_grad()
def set_mixing_from_stable_ranks(model: nn.Module, scores: Dict[str, torch.Tensor]) -> None:
    """MSR-DARTS's mixing weights: each edge mixes its ops by ``softmax(-stable_rank)`` (the authors'
    ``MixedOp.forward``), refreshed before every epoch. The alphas become ``-scores`` (ops without a score
    keep 0; they are masked out). Stable ranks are in the hundreds to thousands and differ by tens, so
    the softmax is in effect one-hot: each epoch trains mostly the current minimum-stable-rank op."""
    for kind in model.cell_kinds():
        alpha = model._alphas(kind)
        s = scores[kind].to(alpha.device)
        alpha.copy_(torch.where(torch.isnan(s), torch.zeros_like(s), -s).to(alpha.dtype))


def apply_spectral_norm(model: nn.Module, image_size: Union[int, Tuple[int, int]],
                        n_power_iterations: int = 5) -> int:
    """MSR-DARTS's spectral normalisation (:mod:`fastnas.nn.spectral_norm`) on every conv of every active
    candidate op of ``model``, each at the shape of the input it really sees (the cell's resolution,
    after the op's earlier strides). Returns the number of convs wrapped."""
    from fastnas.nn.spectral_norm import operator_spectral_norm

    n = 0
    for _, edges in _cell_edges(model, check_image_size(model, image_size)):
        for mixed, size in edges:
            for op, active in zip(mixed._ops, mixed.active):
                if not active or isinstance(op, Zero) or op_conv_chain(op) is None:
                    continue
                h, w = size
                for conv in [m for m in op.modules() if isinstance(m, nn.Conv2d)]:
                    operator_spectral_norm(conv, (conv.in_channels, h, w), n_power_iterations)
                    n += 1
                    sh, sw = _pair(conv.stride)
                    h, w = h // sh, w // sw
    return n
