"""The NAS-Bench-201 cell space: ops, edges, arch strings, enumeration, derivation.

A cell has 4 nodes: node 0 is the input, nodes 1..3 each sum one edge from every earlier node, so
there are 6 edges, kept in this fixed order throughout fastnas (the order of the arch string)::

    edge:    0       1       2       3       4       5
    (to, from): (1,0)  (2,0)  (2,1)  (3,0)  (3,1)  (3,2)

An architecture is a tuple of 6 op names in that edge order, or its arch string
``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` (edges into node 1, then node 2, then node 3; ``~j`` is the
source node), or the structured form used by NAS-Bench-201's ``CellStructure``: per node 1..3, a tuple
of ``(op, source)`` pairs. Alphas are (6, 5) tensors, row = edge, column = ``NB201_PRIMITIVES`` index.
This module is a pure description: it imports no network code.
"""
from __future__ import annotations

import itertools
from typing import Iterator, Sequence, Tuple

from fastnas.spaces._checks import as_float64_tensor, check_alphas_finite

__all__ = [
    "NB201_PRIMITIVES",
    "NB201_NODES",
    "NB201_EDGES",
    "NB201_NUM_ARCHS",
    "parse_arch",
    "arch_to_str",
    "nb201_macro_layout",
    "arch_to_nodes",
    "nodes_to_arch",
    "all_archs",
    "arch_ordinal",
    "arch_from_ordinal",
    "derive_arch",
]

NB201_PRIMITIVES: Tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NB201_NODES = 4  # including the input node 0
# (to, from) of each edge, in the arch-string order.
NB201_EDGES: Tuple[Tuple[int, int], ...] = tuple((i, j) for i in range(1, NB201_NODES) for j in range(i))
NB201_NUM_ARCHS = len(NB201_PRIMITIVES) ** len(NB201_EDGES)  # 5 ** 6 = 15,625


def nb201_macro_layout(C: int = 16, N: int = 5):
    """The NB201 macro skeleton: ``[(channels, is_reduction), ...]`` for 3 stages of N cells (C, 2C, 4C)
    joined by stride-2 ResNet blocks. Shared by the search supernet and the discrete network."""
    channels = [C] * N + [2 * C] + [2 * C] * N + [4 * C] + [4 * C] * N
    reductions = [False] * N + [True] + [False] * N + [True] + [False] * N
    return list(zip(channels, reductions))

Arch = Tuple[str, ...]  # 6 op names, NB201_EDGES order


def _check_arch(arch) -> Arch:
    """Validates a 6-sequence of op names; returns it as a tuple."""
    if isinstance(arch, str):
        raise ValueError("expected a sequence of 6 op names, got a string (use parse_arch for arch strings)")
    try:
        arch = tuple(arch)
    except TypeError:
        raise TypeError(f"expected an NB201 arch (a sequence of {len(NB201_EDGES)} op names), got "
                        f"{type(arch).__name__} {arch!r}") from None
    if len(arch) != len(NB201_EDGES):
        raise ValueError(f"an NB201 arch has {len(NB201_EDGES)} edges, got {len(arch)} ops")
    for e, op in enumerate(arch):
        if op not in NB201_PRIMITIVES:
            raise ValueError(f"edge {e} {NB201_EDGES[e]}: unknown op {op!r}; known ops: {list(NB201_PRIMITIVES)}")
    return arch


def parse_arch(text: str) -> Arch:
    """Parses an arch string into a tuple of 6 op names in ``NB201_EDGES`` order.

    Strict: node groups must be ``|...|`` joined by ``+``, node i must list exactly its i inputs with
    sources ``~0 .. ~i-1`` in that order (the form NAS-Bench-201 prints), so that
    ``arch_to_str(parse_arch(s)) == s`` holds for every accepted ``s`` (surrounding whitespace, as
    read from a file, is stripped first; none is allowed inside). Raises ``ValueError``.
    """
    if not isinstance(text, str):
        raise ValueError(f"parse_arch expects a string, got {type(text).__name__}")
    s = text.strip()
    groups = s.split("+")
    if len(groups) != NB201_NODES - 1:
        raise ValueError(f"an NB201 arch string has {NB201_NODES - 1} '+'-separated node groups, got {len(groups)}: {text!r}")
    ops = []
    for node, group in enumerate(groups, start=1):
        if len(group) < 2 or not (group.startswith("|") and group.endswith("|")):
            raise ValueError(f"node {node} group {group!r} must be enclosed in '|': {text!r}")
        items = group[1:-1].split("|")
        if len(items) != node:
            raise ValueError(f"node {node} must have {node} input edge(s), got {len(items)} in {group!r}")
        for j, item in enumerate(items):
            op, sep, src = item.partition("~")
            if not sep:
                raise ValueError(f"edge {item!r} into node {node} is not of the form op~source")
            if src != str(j):
                raise ValueError(f"edge {item!r} into node {node}: expected source ~{j} (sources listed 0..{node - 1} in order)")
            if op not in NB201_PRIMITIVES:
                raise ValueError(f"edge {item!r} into node {node}: unknown op {op!r}; known ops: {list(NB201_PRIMITIVES)}")
            ops.append(op)
    return tuple(ops)


def arch_to_str(arch: Sequence[str]) -> str:
    """Prints a 6-op arch (``NB201_EDGES`` order) as an NB201 arch string."""
    arch = _check_arch(arch)
    groups, e = [], 0
    for node in range(1, NB201_NODES):
        groups.append("|" + "|".join(f"{arch[e + j]}~{j}" for j in range(node)) + "|")
        e += node
    return "+".join(groups)


def arch_to_nodes(arch: Sequence[str]) -> Tuple[Tuple[Tuple[str, int], ...], ...]:
    """Structured form: per node 1..3, its ``(op, source)`` pairs, e.g.
    ``((('nor_conv_3x3', 0),), (('nor_conv_3x3', 0), ('nor_conv_3x3', 1)), (...3 pairs...))``."""
    arch = _check_arch(arch)
    nodes, e = [], 0
    for node in range(1, NB201_NODES):
        nodes.append(tuple((arch[e + j], j) for j in range(node)))
        e += node
    return tuple(nodes)


def nodes_to_arch(nodes) -> Arch:
    """Inverse of :func:`arch_to_nodes`; validates the layout (node i lists sources 0..i-1)."""
    nodes = tuple(nodes)
    if len(nodes) != NB201_NODES - 1:
        raise ValueError(f"expected {NB201_NODES - 1} nodes, got {len(nodes)}")
    ops = []
    for node, pairs in enumerate(nodes, start=1):
        pairs = tuple(pairs)
        if [p[1] if isinstance(p, (tuple, list)) and len(p) == 2 else None for p in pairs] != list(range(node)):
            raise ValueError(f"node {node} must list (op, source) pairs with sources 0..{node - 1}, got {pairs!r}")
        ops.extend(p[0] for p in pairs)
    return _check_arch(ops)


def all_archs() -> Iterator[Arch]:
    """All 15,625 archs, in lexicographic order over ``NB201_PRIMITIVES`` indices with edge 0 (1<-0)
    the most significant digit and edge 5 (3<-2) the least: ordinal ``sum_e op_index[e] * 5**(5-e)``.

    This is the order of NAS-Bench-201's ``CellStructure.gen_all``. It is NOT the benchmark's ``arch
    index`` (e.g. the best CIFAR-10 arch is benchmark index 9930 but ordinal 11668 here): that index
    follows the benchmark file's own order and can only be looked up in the benchmark's tables.
    """
    return itertools.product(NB201_PRIMITIVES, repeat=len(NB201_EDGES))


def arch_ordinal(arch: Sequence[str]) -> int:
    """Position of ``arch`` in :func:`all_archs` (0 .. 15,624)."""
    idx = 0
    for op in _check_arch(arch):
        idx = idx * len(NB201_PRIMITIVES) + NB201_PRIMITIVES.index(op)
    return idx


def arch_from_ordinal(ordinal: int) -> Arch:
    """The arch at position ``ordinal`` of :func:`all_archs`."""
    if isinstance(ordinal, bool) or not isinstance(ordinal, int) or not 0 <= ordinal < NB201_NUM_ARCHS:
        raise ValueError(f"ordinal must be an int in [0, {NB201_NUM_ARCHS}), got {ordinal!r}")
    n = len(NB201_PRIMITIVES)
    digits = []
    for _ in NB201_EDGES:
        ordinal, d = divmod(ordinal, n)
        digits.append(NB201_PRIMITIVES[d])
    return tuple(reversed(digits))


def derive_arch(alphas, exclude_none: bool = False) -> Arch:
    """Derives the discrete arch from (6, 5) alphas: per edge the argmax op.

    By default the argmax runs over all 5 ops, ``none`` included, as the NAS-Bench-201 DARTS-family
    baselines do (their ``genotype()`` takes ``alphas[e].argmax()``): in NB201 a ``none`` edge is a
    legal, benchmarked architecture, and every node keeps all its edges (there is no top-k as in the
    DARTS space). ``exclude_none=True`` restricts the argmax to the other 4 ops. Ties go to the first
    op in ``NB201_PRIMITIVES`` order. Softmax is monotonic, so raw alphas and their softmax agree.
    """
    a = as_float64_tensor(alphas, "NB201 alphas")
    shape = (len(NB201_EDGES), len(NB201_PRIMITIVES))
    if tuple(a.shape) != shape:
        raise ValueError(f"NB201 alphas must have shape {shape}, got {tuple(a.shape)}")
    if a.isnan().any():
        raise ValueError("NB201 alphas contain NaN")
    start = 1 if exclude_none else 0  # 'none' is column 0
    check_alphas_finite(a[:, start:], "NB201 alphas" + (" (without 'none')" if exclude_none else ""))
    rows = a[:, start:].tolist()
    # max() over indices keeps the first of equal maxima (torch.argmax does not promise that).
    return tuple(NB201_PRIMITIVES[start + max(range(len(r)), key=r.__getitem__)] for r in rows)
