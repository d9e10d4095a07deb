"""Variation operators of the zero-shot searches: random architectures, mutation, crossover, neighbours.

Pure functions of an architecture and a ``numpy.random.Generator``: no network, no proxy, no I/O, so
a search is reproducible from its seed and its generator's state alone.

- NB201 (:class:`NB201Operators`): an arch is a tuple of 6 op names in ``NB201_EDGES`` order; every
  one of the 5 ops (``none`` included: a legal, benchmarked NB201 edge) may sit on every edge, so the
  space is the 15,625 archs of the benchmark. Mutation changes the op of one edge; crossover takes each
  edge's op from one parent or the other.
- DARTS (:class:`DartsOperators`): an arch is a :class:`~fastnas.spaces.Genotype`. Per cell (normal,
  reduce) and intermediate node ``i`` (state ``i + 2``): 2 ``(op, source)`` pairs with distinct sources
  in ``0 .. i + 1`` and ops from ``PRIMITIVES`` without ``none``, i.e. the genotypes a DARTS search can
  derive; concat ``[2, 3, 4, 5]``. A node's pairs are kept sorted by source, so one network has one
  genotype (and one cache key). Mutation changes one op or one input of one node of one cell;
  crossover takes each node of each cell, whole, from one parent or the other.
- A table (:class:`TableOperators`): NB201 restricted to the archs of an :class:`~fastnas.tables.NB201Table`
  (``table_only``), so every arch a search scores has a ground truth. Random archs are drawn from the
  table; an operator's output outside the table is projected onto a table arch at minimum Hamming
  distance (number of edges whose op differs), ties broken by the generator. Mutation excludes its own
  parent from the projection, so it always changes the arch (a mutant at distance 1 from its parent
  would otherwise often project straight back onto it).

Every operator set has the same methods: ``random(rng)``, ``mutate(arch, rng)``, ``crossover(a, b,
rng)``, ``key(arch) -> str`` (the cache key and the printed form) and ``parse(key)``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from fastnas.spaces import (NB201_EDGES, NB201_PRIMITIVES, PRIMITIVES, STEPS, Genotype, arch_to_str, parse_arch,
                            parse_genotype, validate_genotype)

__all__ = ["NB201Operators", "DartsOperators", "TableOperators", "hamming"]

NB201Arch = Tuple[str, ...]


class NB201Operators:
    """Operators on NB201 archs (tuples of 6 op names)."""

    space = "nb201"
    ops = NB201_PRIMITIVES

    def random(self, rng: np.random.Generator) -> NB201Arch:
        """Uniform over the 5**6 archs."""
        return tuple(self.ops[i] for i in rng.integers(len(self.ops), size=len(NB201_EDGES)))

    def mutate(self, arch: NB201Arch, rng: np.random.Generator) -> NB201Arch:
        """One uniformly chosen edge gets one of the 4 other ops (uniformly): the result is one of
        :meth:`neighbours`, each with probability 1/24."""
        edge = int(rng.integers(len(NB201_EDGES)))
        others = [op for op in self.ops if op != arch[edge]]
        child = list(arch)
        child[edge] = others[int(rng.integers(len(others)))]
        return tuple(child)

    def crossover(self, a: NB201Arch, b: NB201Arch, rng: np.random.Generator) -> NB201Arch:
        """Uniform crossover: each edge's op from ``a`` or ``b`` with probability 1/2."""
        take_a = rng.random(len(NB201_EDGES)) < 0.5
        return tuple(x if t else y for x, y, t in zip(a, b, take_a))

    def neighbours(self, arch: NB201Arch) -> List[NB201Arch]:
        """The 6 * 4 = 24 archs one :meth:`mutate` away."""
        return [arch[:e] + (op,) + arch[e + 1:] for e in range(len(NB201_EDGES)) for op in self.ops
                if op != arch[e]]

    def key(self, arch: NB201Arch) -> str:
        return arch_to_str(arch)

    def parse(self, key: str) -> NB201Arch:
        return parse_arch(key)


# --------------------------------------------------------------------------------------------------
# DARTS
# --------------------------------------------------------------------------------------------------
Node = Tuple[Tuple[str, int], Tuple[str, int]]
CELLS = ("normal", "reduce")


def _nodes(cell: Sequence[Tuple[str, int]]) -> List[Node]:
    return [(cell[2 * i], cell[2 * i + 1]) for i in range(len(cell) // 2)]


def _sorted_node(p: Tuple[str, int], q: Tuple[str, int]) -> Node:
    return (p, q) if p[1] <= q[1] else (q, p)


class DartsOperators:
    """Operators on DARTS genotypes whose nodes read 2 distinct states through non-``none`` ops."""

    space = "darts"
    ops = tuple(p for p in PRIMITIVES if p != "none")
    steps = STEPS

    def _genotype(self, normal: Sequence[Node], reduce: Sequence[Node]) -> Genotype:
        concat = list(range(2, 2 + self.steps))
        return Genotype([p for node in normal for p in node], concat, [p for node in reduce for p in node], concat)

    def _random_node(self, i: int, rng: np.random.Generator) -> Node:
        s, t = sorted(int(x) for x in rng.choice(i + 2, size=2, replace=False))
        o, u = rng.integers(len(self.ops), size=2)
        return (self.ops[int(o)], s), (self.ops[int(u)], t)

    def random(self, rng: np.random.Generator) -> Genotype:
        """Per cell and node: 2 distinct sources uniformly, an op for each uniformly (ops may repeat)."""
        cells = [[self._random_node(i, rng) for i in range(self.steps)] for _ in CELLS]
        return self._genotype(*cells)

    def mutate(self, g: Genotype, rng: np.random.Generator) -> Genotype:
        """With probability 1/2 an op change, else an input change, of one uniformly chosen cell, node
        and pair. An op change picks one of the 6 other ops; an input change moves the pair to a state
        the node does not read yet (node 0 reads both cell inputs and has none free, so input changes
        pick among nodes 1..steps-1). The result is one of :meth:`neighbours`."""
        cells = [_nodes(g.normal), _nodes(g.reduce)]
        c = int(rng.integers(len(CELLS)))
        change_input = rng.random() < 0.5
        i = int(rng.integers(1, self.steps) if change_input else rng.integers(self.steps))
        k = int(rng.integers(2))
        pair, other = cells[c][i][k], cells[c][i][1 - k]
        if change_input:
            free = [s for s in range(i + 2) if s not in (pair[1], other[1])]
            pair = (pair[0], free[int(rng.integers(len(free)))])
        else:
            alternatives = [op for op in self.ops if op != pair[0]]
            pair = (alternatives[int(rng.integers(len(alternatives)))], pair[1])
        cells[c][i] = _sorted_node(pair, other)
        return self._genotype(*cells)

    def crossover(self, a: Genotype, b: Genotype, rng: np.random.Generator) -> Genotype:
        """Per cell and node, both pairs from ``a`` or both from ``b`` (probability 1/2): a node's two
        inputs stay together, so the child's nodes read distinct states as the parents' do."""
        cells = []
        for name in CELLS:
            na, nb = _nodes(getattr(a, name)), _nodes(getattr(b, name))
            take_a = rng.random(self.steps) < 0.5
            cells.append([x if t else y for x, y, t in zip(na, nb, take_a)])
        return self._genotype(*cells)

    def neighbours(self, g: Genotype) -> List[Genotype]:
        """Every genotype one :meth:`mutate` away: per cell, 8 pairs x 6 other ops, plus for node i >= 1
        each of its 2 pairs moved to one of its i free states (2 * (1 + 2 + 3) = 12 for 4 nodes):
        2 * (48 + 12) = 120 for the default space."""
        out = []
        for c in range(len(CELLS)):
            for i in range(self.steps):
                for k in range(2):
                    for pair in self._pair_changes(_nodes(getattr(g, CELLS[c]))[i], k, i):
                        cells = [_nodes(g.normal), _nodes(g.reduce)]
                        cells[c][i] = _sorted_node(pair, cells[c][i][1 - k])
                        out.append(self._genotype(*cells))
        return out

    def _pair_changes(self, node: Node, k: int, i: int) -> List[Tuple[str, int]]:
        (op, src), other = node[k], node[1 - k]
        return ([(o, src) for o in self.ops if o != op]
                + [(op, s) for s in range(i + 2) if s not in (src, other[1])])

    def key(self, g: Genotype) -> str:
        return repr(g)

    def parse(self, key: str) -> Genotype:
        return validate_genotype(parse_genotype(key))


# --------------------------------------------------------------------------------------------------
# NB201 restricted to a table's archs
# --------------------------------------------------------------------------------------------------
def hamming(codes: np.ndarray, arch_codes: np.ndarray) -> np.ndarray:
    """Edges whose op differs: codes (N, E) int, arch_codes (E,) int -> (N,) int."""
    return (codes != arch_codes[None, :]).sum(axis=1)


class TableOperators(NB201Operators):
    """NB201 operators whose outputs are archs of a table (``archs``: NB201 arch strings)."""

    def __init__(self, archs: Sequence[str]):
        if not archs:
            raise ValueError("a table-only search needs a table with at least one arch")
        self.archs: List[NB201Arch] = [parse_arch(a) for a in archs]
        index = {op: k for k, op in enumerate(self.ops)}
        # (N, 6) op indices: a projection is one vectorised comparison against all N archs (2,000 x 6
        # int8 compares, microseconds), not a loop over the table.
        self.codes = np.array([[index[op] for op in a] for a in self.archs], dtype=np.int8)
        self._index = index
        self._position = {a: n for n, a in enumerate(self.archs)}

    def __contains__(self, arch: NB201Arch) -> bool:
        return tuple(arch) in self._position

    def random(self, rng: np.random.Generator) -> NB201Arch:
        """Uniform over the table's archs."""
        return self.archs[int(rng.integers(len(self.archs)))]

    def project(self, arch: NB201Arch, rng: np.random.Generator, exclude: Optional[NB201Arch] = None) -> NB201Arch:
        """``arch`` itself when the table holds it (and it is not ``exclude``), else a table arch at
        minimum Hamming distance from it, chosen uniformly among the nearest (never ``exclude``)."""
        arch = tuple(arch)
        if arch in self._position and arch != exclude:
            return arch
        d = hamming(self.codes, np.array([self._index[op] for op in arch], dtype=np.int8))
        if exclude is not None and exclude in self._position:
            if len(self.archs) == 1:
                raise ValueError("cannot move away from the only arch of the table")
            d[self._position[exclude]] = np.iinfo(d.dtype).max
        nearest = np.flatnonzero(d == d.min())
        return self.archs[int(nearest[int(rng.integers(len(nearest)))])]

    def mutate(self, arch: NB201Arch, rng: np.random.Generator) -> NB201Arch:
        """A one-edge mutant, projected onto the table (never onto ``arch`` itself)."""
        return self.project(super().mutate(arch, rng), rng, exclude=tuple(arch))

    def crossover(self, a: NB201Arch, b: NB201Arch, rng: np.random.Generator) -> NB201Arch:
        """A uniform crossover, projected onto the table."""
        return self.project(super().crossover(a, b, rng), rng)
