"""The DARTS cell search space: candidate ops, edge layout, genotypes, derivation.

A cell has 2 inputs (states 0 and 1: the outputs of the two previous cells) and ``STEPS = 4``
intermediate nodes (states 2..5). Intermediate node ``i`` (0-based) takes one edge from each of the
``i + 2`` states before it, so the cell has 2 + 3 + 4 + 5 = 14 edges, numbered as in DARTS:

    node 0: edges 0-1    (sources 0, 1)
    node 1: edges 2-4    (sources 0, 1, 2)
    node 2: edges 5-8    (sources 0..3)
    node 3: edges 9-13   (sources 0..4)

Architecture parameters are ``alphas`` of shape (14, n_ops) (one row per edge, one column per
primitive) and, for PC-DARTS edge normalization, ``betas`` of shape (14,) (one weight per edge,
softmax-normalized over the incoming edges of each node).

A derived architecture is a :class:`Genotype`, which prints exactly as the DARTS/PC-DARTS code prints
one, so that the line can be pasted into their ``genotypes.py`` and used by their training scripts
unchanged. This module is a pure description: it imports no network code.
"""
from __future__ import annotations

import ast
from collections import namedtuple
from typing import List, Optional, Sequence, Tuple

import torch

from fastnas.spaces._checks import as_float64_tensor, check_alphas_finite

__all__ = [
    "PRIMITIVES",
    "STEPS",
    "NUM_EDGES",
    "DARTS_EDGES",
    "num_edges",
    "node_edge_slices",
    "edge_node_source",
    "Genotype",
    "validate_genotype",
    "parse_genotype",
    "derive_genotype",
]

# PC-DARTS order (DESIGN.md section 3). Column k of an alpha tensor is PRIMITIVES[k].
PRIMITIVES: Tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

STEPS = 4  # intermediate nodes per cell


def num_edges(steps: int = STEPS) -> int:
    """Edges of a cell with ``steps`` intermediate nodes: sum_{i<steps} (i + 2) (= 14 for 4 nodes)."""
    return steps * (steps + 3) // 2


NUM_EDGES = num_edges(STEPS)


def node_edge_slices(steps: int = STEPS) -> List[slice]:
    """Per intermediate node, the slice of edge rows that feed it.

    For 4 nodes: ``[slice(0, 2), slice(2, 5), slice(5, 9), slice(9, 14)]``; ``alphas[s]`` then has
    shape (i + 2, n_ops) for node i, with row j the edge from state j.
    """
    slices, start = [], 0
    for i in range(steps):
        slices.append(slice(start, start + i + 2))
        start += i + 2
    return slices


def edge_node_source(edge: int, steps: int = STEPS) -> Tuple[int, int]:
    """Maps an edge index to ``(node, source)``: node is 0-based among intermediate nodes (state
    ``node + 2``), source the state the edge reads (0 and 1 are the cell inputs)."""
    for node, s in enumerate(node_edge_slices(steps)):
        if s.start <= edge < s.stop:
            return node, edge - s.start
    raise ValueError(f"edge index {edge} out of range for a cell of {steps} nodes ({num_edges(steps)} edges)")


# (node, source) of every edge, in edge order.
DARTS_EDGES: Tuple[Tuple[int, int], ...] = tuple(edge_node_source(e) for e in range(NUM_EDGES))


# --------------------------------------------------------------------------------------------------
# Genotype
# --------------------------------------------------------------------------------------------------
_GenotypeBase = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")


def _as_pairs(cell):
    # Lists of tuples, so that repr prints [('op', j), ...] whatever sequence types came in.
    if isinstance(cell, (list, tuple)):
        return [tuple(p) if isinstance(p, (list, tuple)) else p for p in cell]
    return cell


_MAX_CONCAT = 64


def _as_list(concat):
    # range(2, 6) (the DARTS source form) becomes [2, 3, 4, 5] (the printed form); equal genotypes
    # then compare equal whichever form they were written in.
    if isinstance(concat, range) and len(concat) > _MAX_CONCAT:
        raise ValueError(f"Genotype concat range() of {len(concat)} states; a cell concatenates at most a few "
                         "of its states")
    if isinstance(concat, (range, list, tuple)):
        return list(concat)
    return concat


class Genotype(_GenotypeBase):
    """``Genotype(normal, normal_concat, reduce, reduce_concat)``, the DARTS genotype.

    ``normal`` / ``reduce``: 2 pairs per intermediate node, ``(op_name, source_state)``, nodes in
    order (8 pairs for 4 nodes); ``*_concat``: the states concatenated into the cell output.

    A namedtuple like DARTS's, normalized at construction: pairs become tuples, concats become lists.
    ``repr`` is therefore exactly what the DARTS search scripts print, e.g.
    ``Genotype(normal=[('sep_conv_3x3', 1), ...], normal_concat=[2, 3, 4, 5], reduce=[...],
    reduce_concat=[2, 3, 4, 5])``. Construction does not validate (see :func:`validate_genotype`).
    """

    __slots__ = ()

    def __new__(cls, normal, normal_concat, reduce, reduce_concat):
        return super().__new__(cls, _as_pairs(normal), _as_list(normal_concat), _as_pairs(reduce), _as_list(reduce_concat))

    @classmethod
    def _make(cls, iterable):  # namedtuple's _make (and so _replace) bypasses __new__
        return cls(*iterable)


def validate_genotype(genotype: Genotype, primitives: Sequence[str] = PRIMITIVES, steps: int = STEPS) -> Genotype:
    """Checks a genotype against the space; returns it unchanged or raises ``ValueError``.

    Checks: 2 pairs per node (``2 * steps`` in all), each pair ``(op, source)`` with ``op`` in
    ``primitives`` and ``0 <= source < node + 2``, concat a non-empty list of states in
    ``[0, steps + 2)``. Repeated sources within a node and ``none`` ops are allowed: the DARTS training
    code accepts them, and published random/sampled genotypes contain both.
    """
    missing = [f for f in _GenotypeBase._fields if not hasattr(genotype, f)]
    if missing:
        raise TypeError(f"validate_genotype expects a Genotype(normal, normal_concat, reduce, reduce_concat), got "
                        f"{type(genotype).__name__} {str(genotype)[:80]!r} (no {', '.join(missing)}); "
                        "parse_genotype reads one from its text")
    for cell_name in ("normal", "reduce"):
        cell = getattr(genotype, cell_name)
        if not isinstance(cell, list):
            raise ValueError(f"Genotype.{cell_name} must be a list of (op, source) pairs, got {type(cell).__name__}")
        if len(cell) != 2 * steps:
            raise ValueError(
                f"Genotype.{cell_name} has {len(cell)} edges; a cell of {steps} nodes needs 2 per node "
                f"({2 * steps} in all)"
            )
        for k, pair in enumerate(cell):
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise ValueError(f"Genotype.{cell_name}[{k}] = {pair!r} is not an (op, source) pair")
            op, src = pair
            if not isinstance(op, str) or op not in primitives:
                raise ValueError(f"Genotype.{cell_name}[{k}]: unknown op {op!r}; known ops: {list(primitives)}")
            node = k // 2
            if isinstance(src, bool) or not isinstance(src, int):
                raise TypeError(f"Genotype.{cell_name}[{k}]: source {src!r} must be an integer state index, got "
                                f"{type(src).__name__}")
            if not 0 <= src < node + 2:
                raise ValueError(
                    f"Genotype.{cell_name}[{k}]: source {src!r} out of range for node {node} "
                    f"(state {node + 2}), which reads states 0..{node + 1}"
                )
        concat = getattr(genotype, cell_name + "_concat")
        if not isinstance(concat, list) or not concat:
            raise ValueError(f"Genotype.{cell_name}_concat must be a non-empty list of states, got {concat!r}")
        for c in concat:
            if isinstance(c, bool) or not isinstance(c, int):
                raise TypeError(f"Genotype.{cell_name}_concat: state {c!r} must be an integer state index, got "
                                f"{type(c).__name__}")
            if not 0 <= c < steps + 2:
                raise ValueError(f"Genotype.{cell_name}_concat: state {c!r} out of range 0..{steps + 1}")
            if c < 2:
                raise ValueError(f"Genotype.{cell_name}_concat = {concat!r}: state {c} is a cell input; the cell "
                                 f"output concatenates intermediate states 2..{steps + 1} (DARTS: "
                                 f"{list(range(2, steps + 2))})")
        if len(set(concat)) != len(concat):
            raise ValueError(f"Genotype.{cell_name}_concat = {concat!r} repeats a state; list each intermediate "
                             f"state once (DARTS: {list(range(2, steps + 2))})")
    return genotype


def _literal(node: ast.expr, field: str):
    """Value of one Genotype argument: a literal, or ``range(a[, b[, c]])`` with integer literals."""
    if isinstance(node, ast.Call):
        # The only call allowed is range(...) with literal ints: DARTS's genotypes.py writes concats so.
        if not (isinstance(node.func, ast.Name) and node.func.id == "range") or node.keywords:
            raise ValueError(f"Genotype field {field!r}: only literals and range(...) are accepted")
        try:
            args = [ast.literal_eval(a) for a in node.args]
        except ValueError as err:
            raise ValueError(f"Genotype field {field!r}: range() arguments must be integer literals") from err
        if not 1 <= len(args) <= 3 or not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
            raise ValueError(f"Genotype field {field!r}: range() takes 1 to 3 integer literals")
        if len(args) == 3 and args[2] == 0:
            raise ValueError(f"Genotype field {field!r}: range() step must not be zero")
        r = range(*args)
        if len(r) > _MAX_CONCAT:  # a concat lists a cell's states: a handful, never millions to expand
            raise ValueError(f"Genotype field {field!r}: range() of {len(r)} states; a cell concatenates at most "
                             f"a few of its states")
        return r
    try:
        return ast.literal_eval(node)
    except ValueError as err:
        raise ValueError(f"Genotype field {field!r} is not a literal: {ast.dump(node)[:80]}") from err


def parse_genotype(text: str, primitives: Sequence[str] = PRIMITIVES, steps: int = STEPS) -> Genotype:
    """Parses a DARTS genotype string, e.g. ``"Genotype(normal=[('sep_conv_3x3', 0), ...],
    normal_concat=[2, 3, 4, 5], reduce=[...], reduce_concat=range(2, 6))"``.

    Safe: the text is parsed with :mod:`ast` and only literals and ``range(...)`` of integer literals
    are evaluated (no ``eval``). Arguments may be positional or keyword. The result is validated
    (:func:`validate_genotype`); any problem raises ``ValueError``.
    """
    if not isinstance(text, str):
        raise ValueError(f"parse_genotype expects a string, got {type(text).__name__}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(f"not a Genotype(...) expression: {err.msg}: {text[:80]!r}") from err
    call = tree.body
    func = getattr(call, "func", None)
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    if not isinstance(call, ast.Call) or name != "Genotype":
        raise ValueError(f"expected Genotype(...), got {text[:80]!r}")
    fields = Genotype._fields
    if len(call.args) > len(fields):
        raise ValueError(f"Genotype takes {len(fields)} fields, got {len(call.args)} positional arguments")
    values = {f: _literal(a, f) for f, a in zip(fields, call.args)}
    for kw in call.keywords:
        if kw.arg not in fields:
            raise ValueError(f"unknown Genotype field {kw.arg!r}; fields are {list(fields)}")
        if kw.arg in values:
            raise ValueError(f"Genotype field {kw.arg!r} given twice")
        values[kw.arg] = _literal(kw.value, kw.arg)
    missing = [f for f in fields if f not in values]
    if missing:
        raise ValueError(f"Genotype is missing field(s) {missing}")
    try:
        return validate_genotype(Genotype(**values), primitives, steps)
    except TypeError as e:  # a float where a state index belongs: in text, a bad value like any other
        raise ValueError(str(e)) from None


# --------------------------------------------------------------------------------------------------
# Derivation
# --------------------------------------------------------------------------------------------------
def _steps_for(n_edges: int) -> int:
    steps = 0
    while num_edges(steps) < n_edges:
        steps += 1
    if num_edges(steps) != n_edges:
        raise ValueError(f"{n_edges} edges do not form a DARTS cell (2 + 3 + ... edges: 2, 5, 9, 14, ...)")
    return steps


def _edge_weights(alphas, betas, primitives: Sequence[str], what: str) -> torch.Tensor:
    """(E, n_ops) float64 weights: softmax(alpha_e) * softmax(beta over the node's edges)[e]."""
    a = as_float64_tensor(alphas, f"alphas_{what}")
    if a.dim() != 2 or a.shape[1] != len(primitives):
        raise ValueError(f"alphas_{what} must have shape (n_edges, {len(primitives)}), got {tuple(a.shape)}")
    check_alphas_finite(a, f"alphas_{what}")
    steps = _steps_for(a.shape[0])
    w = torch.softmax(a, dim=-1)
    if betas is not None:
        b = as_float64_tensor(betas, f"betas_{what}")
        if b.shape != (a.shape[0],):
            raise ValueError(f"betas_{what} must have shape ({a.shape[0]},), got {tuple(b.shape)}")
        if not torch.isfinite(b).all():
            raise ValueError(f"betas_{what} contain NaN or infinite values: {b.tolist()}")
        # Edge normalization: the softmax runs per node, over that node's incoming edges only.
        nb = torch.cat([torch.softmax(b[s], dim=0) for s in node_edge_slices(steps)])
        w = w * nb[:, None]
    return w


def _derive_cell(w: torch.Tensor, primitives: Sequence[str]) -> List[Tuple[str, int]]:
    """Top-2 edges per node by their best non-``none`` weight, argmax non-``none`` op on each.

    Ties follow DARTS's ``_parse``: a stable sort keeps the lower source first, and the first op in
    primitive order wins. Pairs within a node are listed strongest edge first, as DARTS prints them.
    """
    keep = [k for k, p in enumerate(primitives) if p != "none"]
    if not keep:
        raise ValueError("primitives contain only 'none': there is no op to derive")
    steps = _steps_for(w.shape[0])
    gene = []
    for node, s in enumerate(node_edge_slices(steps)):
        wn = w[s][:, keep].tolist()  # (node + 2, len(keep)) python floats: exact, order-stable ties
        edges = sorted(range(node + 2), key=lambda j: -max(wn[j]))[:2]
        for j in edges:
            best = max(range(len(keep)), key=lambda k: (wn[j][k], -k))  # first op among equal maxima
            gene.append((primitives[keep[best]], j))
    return gene


def derive_genotype(
    alphas_normal,
    alphas_reduce,
    betas_normal=None,
    betas_reduce=None,
    primitives: Sequence[str] = PRIMITIVES,
    multiplier: Optional[int] = None,
) -> Genotype:
    """Derives the discrete DARTS genotype from architecture parameters (DESIGN.md section 3).

    Args:
        alphas_normal, alphas_reduce: (14, n_ops) tensors (or arrays), columns in ``primitives`` order.
        betas_normal, betas_reduce: optional (14,) edge-normalization parameters (PC-DARTS); plain
            DARTS has none, which is the same as uniform betas.
        primitives: the op names of the alpha columns; may omit ``none`` (e.g. a pruned op subset).
        multiplier: the nodes the cell concatenates, its last ones (default: every node, DARTS's 4).

    Per edge ``W = softmax(alpha_edge) * softmax(beta_node)[edge]`` (the alpha softmax includes
    ``none``, as in DARTS); per node the 2 incoming edges with the largest non-``none`` weight are
    kept, each with its argmax non-``none`` op. ``concat``: the last ``multiplier`` nodes, as DARTS's
    ``range(2 + steps - multiplier, steps + 2)`` (``[2, 3, 4, 5]`` for 4 steps).
    """
    primitives = tuple(primitives)
    wn = _edge_weights(alphas_normal, betas_normal, primitives, "normal")
    wr = _edge_weights(alphas_reduce, betas_reduce, primitives, "reduce")
    if wn.shape != wr.shape:
        raise ValueError(f"alphas_normal {tuple(wn.shape)} and alphas_reduce {tuple(wr.shape)} differ in shape")
    steps = _steps_for(wn.shape[0])
    multiplier = steps if multiplier is None else multiplier
    if not 1 <= multiplier <= steps:
        raise ValueError(f"multiplier={multiplier} must be in 1..{steps} (the cell's nodes)")
    concat = list(range(2 + steps - multiplier, 2 + steps))
    return Genotype(_derive_cell(wn, primitives), concat, _derive_cell(wr, primitives), concat)
