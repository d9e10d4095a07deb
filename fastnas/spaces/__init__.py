"""Search spaces as pure descriptions: op lists, edge layouts, genotypes / arch strings, derivation.

Nothing here imports a network (``fastnas.nn``), the search loop or the proxies: those depend on the
spaces, never the reverse (DESIGN.md section 1).
"""
from fastnas.spaces.darts import (
    DARTS_EDGES,
    NUM_EDGES,
    PRIMITIVES,
    STEPS,
    Genotype,
    derive_genotype,
    edge_node_source,
    node_edge_slices,
    num_edges,
    parse_genotype,
    validate_genotype,
)
from fastnas.spaces.nb201 import (
    NB201_EDGES,
    NB201_NODES,
    NB201_NUM_ARCHS,
    NB201_PRIMITIVES,
    all_archs,
    arch_from_ordinal,
    arch_ordinal,
    arch_to_nodes,
    arch_to_str,
    nb201_macro_layout,
    derive_arch,
    nodes_to_arch,
    parse_arch,
)

__all__ = [
    # DARTS cell space
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
    # NAS-Bench-201 space
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
