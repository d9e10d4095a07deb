"""Tests for fastnas.spaces: DARTS genotypes (repr, parsing, derivation) and NAS-Bench-201 arch strings.

Derivation cases use hand-made alphas written as log-probabilities, so softmax(alpha) is exactly the
probability vector written in the test and each expected genotype can be checked on paper.
"""
import ast
import csv
import math
import pickle
import sys
from pathlib import Path

import pytest
import torch

from fastnas.spaces import (
    DARTS_EDGES,
    NB201_NUM_ARCHS,
    NB201_PRIMITIVES,
    NUM_EDGES,
    PRIMITIVES,
    Genotype,
    all_archs,
    arch_from_ordinal,
    arch_ordinal,
    arch_to_nodes,
    arch_to_str,
    derive_arch,
    derive_genotype,
    edge_node_source,
    node_edge_slices,
    nodes_to_arch,
    parse_arch,
    parse_genotype,
    validate_genotype,
)

DATA = Path(__file__).parents[1] / ".." / "shared" / "data"
SPACES_DIR = Path(__file__).parents[1] / "fastnas" / "spaces"


def _csv_rows(name):
    path = DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (real third-party data lives in ../shared/data, outside the repo)")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------------------
# DARTS space layout
# --------------------------------------------------------------------------------------------------
def test_darts_layout():
    assert PRIMITIVES == ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                          "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
    assert NUM_EDGES == 14
    assert node_edge_slices() == [slice(0, 2), slice(2, 5), slice(5, 9), slice(9, 14)]
    assert DARTS_EDGES[:2] == ((0, 0), (0, 1)) and DARTS_EDGES[9:] == tuple((3, j) for j in range(5))
    assert edge_node_source(8) == (2, 3)
    with pytest.raises(ValueError, match="out of range"):
        edge_node_source(14)


def test_spaces_import_no_network_code():
    """A space never imports a network: only stdlib, torch, numpy and fastnas.spaces itself."""
    if not hasattr(sys, "stdlib_module_names"):
        pytest.skip("sys.stdlib_module_names needs Python >= 3.10")
    allowed = {"torch", "numpy", "fastnas"}
    for path in SPACES_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top in allowed or top in sys.stdlib_module_names, f"{path.name}: {name}"
                if top == "fastnas":
                    assert name.startswith("fastnas.spaces"), f"{path.name} imports {name}"


# --------------------------------------------------------------------------------------------------
# Genotype repr and parsing
# --------------------------------------------------------------------------------------------------
# PC-DARTS's published CIFAR-10 genotype, as written in its genotypes.py (concat as range(2, 6)) ...
PCDARTS_SRC = (
    "Genotype(normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), ('dil_conv_3x3', 1), "
    "('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), ('dil_conv_3x3', 1)], normal_concat=range(2, 6), "
    "reduce=[('sep_conv_5x5', 1), ('max_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_5x5', 2), ('sep_conv_3x3', 0), "
    "('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2)], reduce_concat=range(2, 6))"
)
# ... and as the DARTS/PC-DARTS search scripts print a derived genotype (concat as a list).
PCDARTS_PRINTED = PCDARTS_SRC.replace("range(2, 6)", "[2, 3, 4, 5]")


def test_genotype_repr_is_darts_format():
    g = parse_genotype(PCDARTS_SRC)
    assert repr(g) == PCDARTS_PRINTED
    assert str(g) == PCDARTS_PRINTED
    assert g.normal[0] == ("sep_conv_3x3", 1) and g.reduce_concat == [2, 3, 4, 5]


@pytest.mark.parametrize("text", [PCDARTS_SRC, PCDARTS_PRINTED], ids=["range-concat", "list-concat"])
def test_genotype_round_trip(text):
    g = parse_genotype(text)
    assert parse_genotype(repr(g)) == g
    assert repr(parse_genotype(repr(g))) == PCDARTS_PRINTED


def test_genotype_normalizes_construction():
    """Built from tuples/ranges (as DARTS code does) it equals, and prints as, the list form."""
    g = Genotype(normal=tuple(parse_genotype(PCDARTS_SRC).normal), normal_concat=range(2, 6),
                 reduce=[list(p) for p in parse_genotype(PCDARTS_SRC).reduce], reduce_concat=range(2, 6))
    assert g == parse_genotype(PCDARTS_PRINTED)
    assert repr(g) == PCDARTS_PRINTED
    assert repr(g._replace(normal_concat=range(2, 6))) == PCDARTS_PRINTED
    assert pickle.loads(pickle.dumps(g)) == g
    assert g._fields == ("normal", "normal_concat", "reduce", "reduce_concat")


def test_parse_genotype_variants():
    positional = PCDARTS_PRINTED.replace("normal=", "").replace("normal_concat=", "").replace(
        "reduce=", "").replace("reduce_concat=", "")
    assert parse_genotype(positional) == parse_genotype(PCDARTS_SRC)
    assert parse_genotype("genotypes." + PCDARTS_SRC) == parse_genotype(PCDARTS_SRC)
    assert parse_genotype("\n  " + PCDARTS_SRC + "  \n") == parse_genotype(PCDARTS_SRC)


def test_parse_all_dev_genotypes():
    rows = _csv_rows("darts_archs_dev.csv")
    assert len(rows) == 200
    for r in rows:
        g = parse_genotype(r["genotype"])
        assert repr(g) == r["genotype"]  # the file's strings are in the printed DARTS format
        assert len(g.normal) == len(g.reduce) == 8


_BAD_GENOTYPES = [
    ("unknown-op", PCDARTS_PRINTED.replace("('skip_connect', 0)", "('conv_7x7', 0)"), "unknown op 'conv_7x7'"),
    ("too-few-edges", PCDARTS_PRINTED.replace("('sep_conv_3x3', 1), ('skip_connect', 0), ", "('sep_conv_3x3', 1), "),
     "has 7 edges.*2 per node"),
    ("too-many-edges", PCDARTS_PRINTED.replace("('skip_connect', 0), ", "('skip_connect', 0), ('skip_connect', 0), "),
     "has 9 edges"),
    ("source-too-large", PCDARTS_PRINTED.replace("('skip_connect', 0)", "('skip_connect', 2)"),
     r"normal\[1\]: source 2 out of range for node 0"),
    ("source-negative", PCDARTS_PRINTED.replace("('sep_conv_5x5', 2)", "('sep_conv_5x5', -1)"), "source -1 out of range"),
    ("source-float", PCDARTS_PRINTED.replace("('sep_conv_5x5', 2)", "('sep_conv_5x5', 2.0)"),
     "source 2.0 must be an integer state index, got float"),
    ("concat-float", PCDARTS_PRINTED.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=[2, 3, 4, 5.0]"),
     "state 5.0 must be an integer state index"),
    ("source-not-int", PCDARTS_PRINTED.replace("('skip_connect', 0)", "('skip_connect', '0')"), "source '0'"),
    ("not-a-pair", PCDARTS_PRINTED.replace("('skip_connect', 0)", "('skip_connect',)"), "not an \\(op, source\\) pair"),
    ("concat-out-of-range", PCDARTS_PRINTED.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=[2, 3, 4, 6]"),
     "normal_concat: state 6"),
    ("eval-injection", PCDARTS_PRINTED.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=__import__('os').getcwd()"),
     "only literals and range"),
    ("range-not-literal", PCDARTS_SRC.replace("range(2, 6)", "range(2, n)", 1), "integer literals"),
    ("name-not-literal", PCDARTS_PRINTED.replace("[2, 3, 4, 5]", "concat", 1), "not a literal"),
    ("missing-field", PCDARTS_PRINTED.replace(", reduce_concat=[2, 3, 4, 5]", ""), "missing field"),
    ("unknown-field", PCDARTS_PRINTED.replace("reduce_concat=", "reduce_cat="), "unknown Genotype field"),
    ("duplicate-field", PCDARTS_PRINTED[:-1] + ", normal_concat=[2, 3, 4, 5])", "given twice"),
    ("not-genotype", "Foo(normal=[], normal_concat=[], reduce=[], reduce_concat=[])", "expected Genotype"),
    ("syntax-error", PCDARTS_PRINTED[:-1], "not a Genotype"),
    ("empty", "", "not a Genotype"),
    ("huge-range", "Genotype(normal=[], normal_concat=range(100000000), reduce=[], reduce_concat=[])",
     "range\\(\\) of 100000000 states"),
    ("zero-step", "Genotype(normal=[], normal_concat=range(2, 6, 0), reduce=[], reduce_concat=[])",
     "step must not be zero"),
]


@pytest.mark.parametrize("text, match", [pytest.param(t, m, id=i) for i, t, m in _BAD_GENOTYPES])
def test_parse_genotype_rejects(text, match):
    with pytest.raises(ValueError, match=match):
        parse_genotype(text)


def test_validate_genotype_custom_primitives():
    g = parse_genotype(PCDARTS_SRC)
    with pytest.raises(ValueError, match="unknown op 'max_pool_3x3'"):
        validate_genotype(g, primitives=[p for p in PRIMITIVES if p != "max_pool_3x3"])
    assert validate_genotype(g) is g


# --------------------------------------------------------------------------------------------------
# Genotype derivation on hand-made alphas / betas
# --------------------------------------------------------------------------------------------------
def _row(probs, primitives=PRIMITIVES, rest=None):
    """An alpha row whose softmax is exactly ``probs`` ({op: p}); ops not named share the remainder."""
    free = [p for p in primitives if p not in probs]
    share = (1.0 - sum(probs.values())) / len(free) if free else 0.0
    return [math.log(probs.get(p, share)) for p in primitives]


UNIFORM = {}  # every op 1/8


def _alphas(rows):
    assert len(rows) == 14
    return torch.tensor([_row(r) for r in rows], dtype=torch.float32)


# Normal cell, worked out by hand (p = softmax(alpha); edge strength = max non-none p):
#   node 0 (edges 0-1, both kept): e0 sep_conv_3x3 .5; e1 none .6 but skip .3 -> skip_connect
#   node 1 (edges 2-4): e2 uniform .125; e3 dil_conv_3x3 .4; e4 max_pool .7        -> e4, e3
#   node 2 (edges 5-8): e5 none .9 (others ~.014, dropped though its none is the largest weight of all);
#                       e6 avg_pool .3; e7 uniform .125; e8 sep_conv_5x5 .35          -> e8, e6
#   node 3 (edges 9-13): e9 dil_conv_5x5 .5; e10 uniform; e11 none .95; e12 skip .45; e13 uniform -> e9, e12
NORMAL_ROWS = [
    {"sep_conv_3x3": 0.5}, {"none": 0.6, "skip_connect": 0.3},
    UNIFORM, {"dil_conv_3x3": 0.4}, {"max_pool_3x3": 0.7},
    {"none": 0.9}, {"avg_pool_3x3": 0.3}, UNIFORM, {"sep_conv_5x5": 0.35},
    {"dil_conv_5x5": 0.5}, UNIFORM, {"none": 0.95}, {"skip_connect": 0.45}, UNIFORM,
]
NORMAL_EXPECTED = [("sep_conv_3x3", 0), ("skip_connect", 1),
                   ("max_pool_3x3", 2), ("dil_conv_3x3", 1),
                   ("sep_conv_5x5", 3), ("avg_pool_3x3", 1),
                   ("dil_conv_5x5", 0), ("skip_connect", 3)]

# Reduce cell: node 1 has e2 sep_conv_3x3 .5, e3 sep_conv_5x5 .4, e4 dil_conv_3x3 .3. Alone, alpha keeps
# e2, e3. With betas softmax over node 1 = (.2, .2, .6): W = .1, .08, .18 -> e4 then e2.
# Node 3: e9 .6 (sep_conv_3x3), e13 .5 (skip): alpha alone keeps e9, e13; betas (.1, .3, .3, .2, .1)
# [written as logs] -> W: .06, .3*.125=.0375, .3*.125, .2*.125=.025, .05 -> e9, e13 unchanged.
REDUCE_ROWS = [
    {"max_pool_3x3": 0.6}, {"avg_pool_3x3": 0.55},
    {"sep_conv_3x3": 0.5}, {"sep_conv_5x5": 0.4}, {"dil_conv_3x3": 0.3},
    UNIFORM, UNIFORM, {"dil_conv_5x5": 0.2}, UNIFORM,
    {"sep_conv_3x3": 0.6}, UNIFORM, UNIFORM, UNIFORM, {"skip_connect": 0.5},
]
REDUCE_EXPECTED_ALPHA_ONLY = [("max_pool_3x3", 0), ("avg_pool_3x3", 1),
                              ("sep_conv_3x3", 0), ("sep_conv_5x5", 1),
                              ("dil_conv_5x5", 2), ("max_pool_3x3", 0),
                              ("sep_conv_3x3", 0), ("skip_connect", 4)]
REDUCE_BETAS = torch.tensor([0.0, 0.0] + [math.log(p) for p in (0.2, 0.2, 0.6)] + [0.0] * 4
                            + [math.log(p) for p in (0.1, 0.3, 0.3, 0.2, 0.1)])
REDUCE_EXPECTED_WITH_BETAS = [("max_pool_3x3", 0), ("avg_pool_3x3", 1),
                              ("dil_conv_3x3", 2), ("sep_conv_3x3", 0),
                              ("dil_conv_5x5", 2), ("max_pool_3x3", 0),
                              ("sep_conv_3x3", 0), ("skip_connect", 4)]
# Node 2 of the reduce cell above: e5, e6, e8 are uniform (.125 each) and e7 has dil_conv_5x5 .2; the
# tie between e5, e6 and e8 goes to the lowest source (e5, source 0), on which all non-none ops tie
# and the first one in PRIMITIVES order (max_pool_3x3) wins, as in DARTS's _parse.


def test_derive_top2_and_none_excluded():
    g = derive_genotype(_alphas(NORMAL_ROWS), _alphas(REDUCE_ROWS))
    assert g.normal == NORMAL_EXPECTED
    assert g.reduce == REDUCE_EXPECTED_ALPHA_ONLY
    assert g.normal_concat == g.reduce_concat == [2, 3, 4, 5]
    assert all(op != "none" for op, _ in g.normal + g.reduce)
    assert validate_genotype(g) is g


def test_derive_betas_change_edge_choice():
    alphas_n, alphas_r = _alphas(NORMAL_ROWS), _alphas(REDUCE_ROWS)
    g = derive_genotype(alphas_n, alphas_r, betas_normal=torch.zeros(14), betas_reduce=REDUCE_BETAS)
    assert g.reduce == REDUCE_EXPECTED_WITH_BETAS
    assert g.normal == NORMAL_EXPECTED  # uniform betas scale each node's edges equally: no change
    # Betas shifted by a constant per node leave every per-node softmax, so the genotype, unchanged.
    shift = torch.cat([torch.full((s.stop - s.start,), float(c)) for c, s in zip((3, -2, 7, 1), node_edge_slices())])
    assert derive_genotype(alphas_n, alphas_r, shift, REDUCE_BETAS + shift) == g


def test_derive_ties_follow_darts():
    """All-zero alphas: every edge ties, so each node keeps sources 0 and 1 with the first non-none op."""
    z = torch.zeros(14, 8)
    g = derive_genotype(z, z)
    assert g.normal == g.reduce == [("max_pool_3x3", 0), ("max_pool_3x3", 1)] * 4


def test_derive_primitives_subset_without_none():
    prims = ("skip_connect", "sep_conv_3x3", "dil_conv_5x5")
    a = torch.zeros(14, 3, dtype=torch.float64)
    a[0, 1] = 2.0  # node 0: e0 sep_conv_3x3 e^2/(e^2+2) = .79 > e1 dil_conv_5x5 e/(e+2) = .58
    a[1, 2] = 1.0
    a[4, 0] = 3.0  # node 1: e4 skip .91 > e2 dil_conv_5x5 .58 > e3 uniform 1/3
    a[2, 2] = 1.0
    a[8, 1] = 1.0  # node 2: e8 sep_conv_3x3 .58, then the tie e5/e6/e7 -> e5 with the first op (skip)
    g = derive_genotype(a, a.numpy(), primitives=prims)  # numpy arrays are accepted too
    assert g.normal == g.reduce == [("sep_conv_3x3", 0), ("dil_conv_5x5", 1),
                                    ("skip_connect", 2), ("dil_conv_5x5", 0),
                                    ("sep_conv_3x3", 3), ("skip_connect", 0),
                                    ("skip_connect", 0), ("skip_connect", 1)]


def test_derive_primitives_subset_none_not_first():
    prims = ("sep_conv_3x3", "none", "skip_connect")
    a = torch.zeros(14, 3)
    a[0] = torch.tensor([0.0, 5.0, 1.0])  # e0: none dominates; best non-none = skip e/(1+e^5+e) = .018 < 1/3
    g = derive_genotype(a, a, primitives=prims)
    assert g.normal[:2] == [("sep_conv_3x3", 1), ("skip_connect", 0)]
    assert g.normal[2:] == [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)] * 3


def test_derive_accepts_parameters():
    a = torch.nn.Parameter(_alphas(NORMAL_ROWS))
    assert derive_genotype(a, a, torch.nn.Parameter(torch.zeros(14)), None).normal == NORMAL_EXPECTED


def _pcdarts_reference(alphas, betas):
    """Transcription of PC-DARTS's model_search.Network.genotype()/_parse for one cell (numpy)."""
    weights = torch.softmax(alphas, dim=-1).numpy()
    n, start = 3, 2
    weights2 = torch.softmax(betas[0:2], dim=-1)
    for _ in range(3):
        end = start + n
        weights2 = torch.cat([weights2, torch.softmax(betas[start:end], dim=-1)], dim=0)
        start, n = end, n + 1
    weights2 = weights2.numpy()
    gene, n, start = [], 2, 0
    none = PRIMITIVES.index("none")
    for i in range(4):
        end = start + n
        W, W2 = weights[start:end].copy(), weights2[start:end].copy()
        for j in range(n):
            W[j, :] = W[j, :] * W2[j]
        edges = sorted(range(i + 2), key=lambda x: -max(W[x][k] for k in range(len(W[x])) if k != none))[:2]
        for j in edges:
            k_best = None
            for k in range(len(W[j])):
                if k != none and (k_best is None or W[j][k] > W[j][k_best]):
                    k_best = k
            gene.append((PRIMITIVES[k_best], j))
        start, n = end, n + 1
    return gene


@pytest.mark.parametrize("seed", [0, 1, 2, 3], ids=lambda s: f"seed{s}")
def test_derive_matches_pcdarts_parse(seed):
    g = torch.Generator().manual_seed(seed)
    an, ar = torch.randn(14, 8, generator=g, dtype=torch.float64), torch.randn(14, 8, generator=g, dtype=torch.float64)
    bn, br = torch.randn(14, generator=g, dtype=torch.float64), torch.randn(14, generator=g, dtype=torch.float64)
    got = derive_genotype(an, ar, bn, br)
    assert got.normal == _pcdarts_reference(an, bn) and got.reduce == _pcdarts_reference(ar, br)


_Z = torch.zeros(14, 8)
_BAD_DERIVE = [
    ("alphas-1d", dict(alphas_normal=torch.zeros(14), alphas_reduce=_Z), "shape"),
    ("wrong-n-ops", dict(alphas_normal=torch.zeros(14, 7), alphas_reduce=torch.zeros(14, 7)), r"\(n_edges, 8\)"),
    ("not-a-cell", dict(alphas_normal=torch.zeros(13, 8), alphas_reduce=torch.zeros(13, 8)), "do not form a DARTS cell"),
    ("shape-mismatch", dict(alphas_normal=_Z, alphas_reduce=torch.zeros(9, 8)), "differ in shape"),
    ("betas-shape", dict(alphas_normal=_Z, alphas_reduce=_Z, betas_normal=torch.zeros(4, 4)), r"betas_normal must have shape \(14,\)"),
    ("nan-alphas", dict(alphas_normal=torch.full((14, 8), float("nan")), alphas_reduce=_Z), "NaN"),
    ("only-none", dict(alphas_normal=torch.zeros(14, 1), alphas_reduce=torch.zeros(14, 1), primitives=("none",)), "only 'none'"),
]


@pytest.mark.parametrize("kwargs, match", [pytest.param(k, m, id=i) for i, k, m in _BAD_DERIVE])
def test_derive_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        derive_genotype(**kwargs)


# --------------------------------------------------------------------------------------------------
# NAS-Bench-201
# --------------------------------------------------------------------------------------------------
BEST_NB201 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
BEST_OPS = ("nor_conv_3x3", "nor_conv_3x3", "nor_conv_3x3", "skip_connect", "nor_conv_3x3", "nor_conv_3x3")


def test_nb201_parse_known():
    assert parse_arch(BEST_NB201) == BEST_OPS
    assert arch_to_str(BEST_OPS) == BEST_NB201
    assert arch_to_nodes(BEST_OPS) == (
        (("nor_conv_3x3", 0),),
        (("nor_conv_3x3", 0), ("nor_conv_3x3", 1)),
        (("skip_connect", 0), ("nor_conv_3x3", 1), ("nor_conv_3x3", 2)),
    )
    assert nodes_to_arch(arch_to_nodes(BEST_OPS)) == BEST_OPS
    assert arch_ordinal(BEST_OPS) == 3 * 5**5 + 3 * 5**4 + 3 * 5**3 + 1 * 5**2 + 3 * 5 + 3  # 11668


def test_nb201_all_archs_round_trip():
    archs = list(all_archs())
    assert len(archs) == len(set(archs)) == NB201_NUM_ARCHS == 15625
    assert archs[0] == ("none",) * 6 and archs[1] == ("none",) * 5 + ("skip_connect",)
    assert archs[-1] == ("avg_pool_3x3",) * 6
    for i, a in enumerate(archs):
        s = arch_to_str(a)
        assert parse_arch(s) == a
        assert arch_to_str(parse_arch(s)) == s
        assert arch_ordinal(a) == i and arch_from_ordinal(i) == a
        assert nodes_to_arch(arch_to_nodes(a)) == a


def test_nb201_dev_strings_round_trip():
    rows = _csv_rows("nb201_dev.csv")
    assert len(rows) == 2000
    for r in rows:
        a = parse_arch(r["arch"])
        assert arch_to_str(a) == r["arch"]
        assert all(op in NB201_PRIMITIVES for op in a)
    assert len({r["arch"] for r in rows}) == len(rows)  # distinct archs: no duplicated or mangled rows


_BAD_ARCH_STRINGS = [
    ("empty", "", "3 '\\+'-separated node groups"),
    ("two-nodes", "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|", "got 2"),
    ("missing-bar", "nor_conv_3x3~0|+" + BEST_NB201.split("+", 1)[1], "enclosed in '\\|'"),
    ("edge-count", "|nor_conv_3x3~0|+|nor_conv_3x3~0|+" + BEST_NB201.split("+")[2], "node 2 must have 2 input edge"),
    ("wrong-source", BEST_NB201.replace("skip_connect~0", "skip_connect~1"), "expected source ~0"),
    ("sources-out-of-order", BEST_NB201.replace("|nor_conv_3x3~0|nor_conv_3x3~1|", "|nor_conv_3x3~1|nor_conv_3x3~0|"),
     "expected source ~0"),
    ("no-tilde", BEST_NB201.replace("skip_connect~0", "skip_connect"), "not of the form op~source"),
    ("unknown-op", BEST_NB201.replace("skip_connect", "sep_conv_3x3"), "unknown op 'sep_conv_3x3'"),
    ("inner-space", BEST_NB201.replace("skip_connect~0", "skip_connect ~0"), "unknown op 'skip_connect '"),
]


@pytest.mark.parametrize("text, match", [pytest.param(t, m, id=i) for i, t, m in _BAD_ARCH_STRINGS])
def test_nb201_parse_rejects(text, match):
    with pytest.raises(ValueError, match=match):
        parse_arch(text)


@pytest.mark.parametrize(
    "call, match",
    [
        pytest.param(lambda: arch_to_str(BEST_OPS[:5]), "has 6 edges, got 5", id="five-ops"),
        pytest.param(lambda: arch_to_str(BEST_OPS[:5] + ("conv",)), "unknown op 'conv'", id="unknown-op"),
        pytest.param(lambda: arch_to_str(BEST_NB201), "got a string", id="string-to-printer"),
        pytest.param(lambda: parse_arch(None), "expects a string", id="parse-none"),
        pytest.param(lambda: arch_from_ordinal(15625), "ordinal must be", id="ordinal-too-large"),
        pytest.param(lambda: arch_from_ordinal(-1), "ordinal must be", id="ordinal-negative"),
        pytest.param(lambda: nodes_to_arch(((("skip_connect", 1),),) * 3), "sources 0..0", id="nodes-bad-source"),
        pytest.param(lambda: derive_arch(torch.zeros(6, 4)), r"shape \(6, 5\)", id="derive-shape"),
        pytest.param(lambda: derive_arch(torch.full((6, 5), float("nan"))), "NaN", id="derive-nan"),
    ],
)
def test_nb201_rejects(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_nb201_derive_arch():
    # Rows: edge 0 nor_conv_3x3; edge 1 none largest, avg_pool second; edge 2 skip; edge 3 all tied;
    # edge 4 nor_conv_1x1; edge 5 none largest, nor_conv_3x3 second.
    a = torch.tensor([
        [0.1, 0.2, 0.3, 0.9, 0.0],
        [2.0, 0.1, 0.2, 0.3, 1.0],
        [0.0, 1.5, 0.2, 0.3, 0.4],
        [0.5, 0.5, 0.5, 0.5, 0.5],
        [0.0, 0.1, 0.8, 0.3, 0.2],
        [1.0, 0.0, 0.2, 0.7, 0.1],
    ])
    assert derive_arch(a) == ("nor_conv_3x3", "none", "skip_connect", "none", "nor_conv_1x1", "none")
    assert derive_arch(a, exclude_none=True) == (
        "nor_conv_3x3", "avg_pool_3x3", "skip_connect", "skip_connect", "nor_conv_1x1", "nor_conv_3x3")
    assert derive_arch(torch.softmax(a, -1)) == derive_arch(a)  # softmax is monotonic
