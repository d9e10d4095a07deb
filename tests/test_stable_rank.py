"""Exact stable rank of conv ops and the MSR-DARTS derivation (fastnas.search.stable_rank).

The FFT singular values are checked against the SVD of the explicitly unrolled operator (built by
running the convs on every basis image, independently of the Fourier derivation); the op -> chain
extraction is checked against the op module's own forward (ReLUs removed, zero padding); the
supernet scores against per-op calls at the resolutions the network runs them; the derivations on
hand-built weights and scores whose answer is known.
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastnas.nn import SearchNetwork
from fastnas.nn.operations import (FactorizedReduce, Identity, ReLUConvBN, SepConv, Zero, DilConv, nb201_op,
                                   search_op)
from fastnas.search.stable_rank import (ConvStage, conv_chain_singular_values, derive_by_stable_rank,
                                        derive_darts_cell_by_rank, derive_nb201_by_rank, edge_stable_ranks,
                                        explicit_conv_chain_matrix, op_conv_chain, op_stable_rank, stable_rank)
from fastnas.spaces import NB201_PRIMITIVES, PRIMITIVES, parse_arch, parse_genotype

D = torch.float64
CONV_OPS = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")


def _w(*shape, seed):
    return torch.randn(*shape, dtype=D, generator=torch.Generator().manual_seed(seed))


def _explicit_sv(convs, size):
    return torch.linalg.svdvals(explicit_conv_chain_matrix(convs, size))


def _assert_same_sv(convs, size):
    fft = conv_chain_singular_values(convs, size).sort().values
    ref = _explicit_sv(convs, size).sort().values
    assert fft.dtype == D and fft.shape == ref.shape
    torch.testing.assert_close(fft, ref, atol=1e-9, rtol=0)


# --------------------------------------------------------------------------------------------------
# FFT singular values == explicit matrix
# --------------------------------------------------------------------------------------------------
CHAINS = {
    "plain_3x3": ([ConvStage(_w(4, 3, 3, 3, seed=0), 1, 1, 1, 1)], 6),
    "dw_pw_stride2": ([ConvStage(_w(3, 1, 3, 3, seed=1), 2, 1, 1, 3), ConvStage(_w(5, 3, 1, 1, seed=2))], 8),
    "dilation2_pad2": ([ConvStage(_w(3, 1, 3, 3, seed=3), 1, 2, 2, 3), ConvStage(_w(2, 3, 1, 1, seed=4))], 8),
    "conv_5x5": ([ConvStage(_w(2, 3, 5, 5, seed=5), 1, 2, 1, 1)], 6),
    "channel_scale": ([ConvStage(_w(4, 2, 3, 3, seed=6), 1, 1, 1, 1, torch.rand(4, dtype=D) + 0.1),
                       ConvStage(_w(4, 2, 3, 3, seed=7), 2, 1, 1, 2, torch.tensor([3.0, 0.5, 1.0, 2.0], dtype=D))],
                      8),
    # Per-axis strides/kernels on a rectangular grid (the shape of DARTS's conv_7x1_1x7).
    "rectangular": ([ConvStage(_w(2, 3, 1, 3, seed=8), (1, 2), (0, 1)), ConvStage(_w(3, 2, 3, 1, seed=9), (2, 1),
                                                                                 (1, 0))], (8, 6)),
    # A dilated 5x5 on a 2x2 grid: taps wrap around several times (deep DARTS cells at small images).
    "kernel_wider_than_grid": ([ConvStage(_w(2, 1, 5, 5, seed=10), 2, 4, 2, 2), ConvStage(_w(3, 2, 1, 1, seed=11))],
                               4),
    "two_strides": ([ConvStage(_w(2, 2, 3, 3, seed=12), 2, 1), ConvStage(_w(2, 2, 3, 3, seed=13), 2, 1)], 8),
}


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_fft_singular_values_match_explicit_matrix(name):
    convs, size = CHAINS[name]
    _assert_same_sv(convs, size)


def test_explicit_matrix_is_the_circular_convolution():
    """The reference matrix itself is the circular conv (F.pad circular + unpadded conv): applied to x it
    gives what F.conv2d gives on the circularly padded x."""
    w = _w(4, 3, 3, 3, seed=20)
    x = _w(3, 6, 6, seed=21)
    A = explicit_conv_chain_matrix([ConvStage(w, 2, 1)], 6)
    ref = F.conv2d(F.pad(x[None], (1, 1, 1, 1), mode="circular"), w, stride=2)[0]
    torch.testing.assert_close((A @ x.reshape(-1)).reshape(ref.shape), ref, atol=1e-12, rtol=0)


# --------------------------------------------------------------------------------------------------
# Ops
# --------------------------------------------------------------------------------------------------
def _randomize(op: nn.Module, seed: int) -> nn.Module:
    """Random conv weights and biases, BN running stats (positive variances) and affine parameters; eval."""
    g = torch.Generator().manual_seed(seed)
    op = op.to(D)
    for m in op.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data = torch.randn(m.weight.shape, dtype=D, generator=g)
            if m.bias is not None:
                m.bias.data = torch.randn(m.bias.shape, dtype=D, generator=g)
        elif isinstance(m, nn.BatchNorm2d):
            if m.running_var is not None:
                m.running_var.copy_(torch.rand(m.num_features, dtype=D, generator=g) * 3 + 0.2)
                m.running_mean.copy_(torch.randn(m.num_features, dtype=D, generator=g))
            if m.affine:
                m.weight.data = torch.randn(m.num_features, dtype=D, generator=g)
                m.bias.data = torch.randn(m.num_features, dtype=D, generator=g)
    return op.eval()


OP_CASES = {
    "SepConv_C4_k3_s2": (lambda: SepConv(4, 4, 3, 2, 1, affine=False), 8),
    "SepConv_affine_k5": (lambda: SepConv(3, 3, 5, 1, 2, affine=True), 6),
    "DilConv_5x5_s2": (lambda: DilConv(3, 3, 5, 2, 4, 2, affine=False), 8),
    "ReLUConvBN_1x1": (lambda: ReLUConvBN(3, 4, 1, 1, 0, affine=False), 6),
    "conv_7x1_1x7_s2": (lambda: search_op("conv_7x1_1x7", 3, 2), 8),
    # NB201 conv with a bias (affine=False) and tracked BN statistics.
    "nb201_nor_conv_3x3": (lambda: nb201_op("nor_conv_3x3", 3, 1, affine=False, track_running_stats=True), 6),
}


@pytest.mark.parametrize("name", sorted(OP_CASES))
def test_op_stable_rank_matches_explicit_matrix_of_its_chain(name):
    factory, size = OP_CASES[name]
    op = _randomize(factory(), seed=30)
    chain = op_conv_chain(op)
    ref = stable_rank(_explicit_sv(chain, size))
    assert op_stable_rank(op, size) == pytest.approx(ref, rel=1e-10)
    _assert_same_sv(chain, size)


@pytest.mark.parametrize("op, size, seen", [
    (lambda: SepConv(4, 4, 3, 1, 1, affine=True), 8, 8 * 8),
    (lambda: SepConv(4, 4, 5, 2, 2, affine=True), 8, 4 * 4),     # the 1x1 runs after the stride-2 conv
    (lambda: DilConv(3, 3, 3, 2, 2, 2, affine=False), 12, 6 * 6),
])
def test_last_conv_operator_is_the_final_pointwise_conv_unscaled(op, size, seen):
    """The authors' operator: the op's last conv alone (a 1x1 here), without the BatchNorm after it. A 1x1
    conv repeats its c_out x c_in matrix W at every pixel, so its stable rank is pixels * sr(W)."""
    op = _randomize(op(), seed=32)
    W = op_conv_chain(op)[-1].weight.detach().double().flatten(1)
    expected = seen * stable_rank(torch.linalg.svdvals(W))
    assert op_stable_rank(op, size, operator="last_conv") == pytest.approx(expected, rel=1e-10)
    bn = [m for m in op.modules() if isinstance(m, nn.BatchNorm2d)][-1]
    bn.running_var.mul_(torch.linspace(0.1, 10.0, bn.num_features))   # changes the chain, not the last conv
    assert op_stable_rank(op, size, operator="last_conv") == pytest.approx(expected, rel=1e-10)
    assert op_stable_rank(op, size, operator="chain") != pytest.approx(expected, rel=1e-3)
    with pytest.raises(ValueError, match="operator must be one of last_conv, chain"):
        op_stable_rank(op, size, operator="first")


@pytest.mark.parametrize("name", sorted(OP_CASES))
def test_op_conv_chain_is_the_linear_part_of_the_op(name):
    """With the ReLUs removed, op(x) - op(0) (which drops biases, BN means and betas) is the chain applied
    with the op's own zero padding: the chain has the right convs, order, strides and BN scales."""
    factory, _ = OP_CASES[name]
    op = _randomize(factory(), seed=31)
    for parent in op.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, child_name, nn.Identity())
    c_in = next(m for m in op.modules() if isinstance(m, nn.Conv2d)).in_channels
    x = _w(2, c_in, 8, 8, seed=32)
    y = x
    for stage in op_conv_chain(op):
        y = F.conv2d(y, stage.weight, stride=stage.stride, padding=stage.padding, dilation=stage.dilation,
                     groups=stage.groups)
        if stage.scale is not None:
            y = y * stage.scale[:, None, None]
    with torch.no_grad():
        torch.testing.assert_close(op(x) - op(torch.zeros_like(x)), y, atol=1e-10, rtol=1e-10)


def test_bn_without_running_stats_folds_gamma_only():
    op = nb201_op("nor_conv_1x1", 3, 1, affine=True, track_running_stats=False)
    op.op[2].weight.data = torch.tensor([2.0, 3.0, 4.0])
    assert op_conv_chain(op)[0].scale.tolist() == [2.0, 3.0, 4.0]
    op = nb201_op("nor_conv_1x1", 3, 1, affine=False, track_running_stats=False)
    assert op_conv_chain(op)[0].scale.tolist() == [1.0, 1.0, 1.0]


def test_stable_rank_of_known_matrices():
    diag = torch.diag(torch.tensor([3.0, 1.0, 1.0], dtype=D))
    assert stable_rank(torch.linalg.svdvals(diag)) == pytest.approx((9 + 1 + 1) / 9)
    assert stable_rank(torch.tensor([2.0, 2.0, 2.0, 2.0])) == pytest.approx(4.0)
    assert math.isnan(stable_rank(torch.zeros(3)))


def test_rank_one_conv_has_stable_rank_one():
    """u v^T (x) all-ones 3x3 on a 3x3 grid: every tap sums the whole (periodic) image, so the operator
    is (u v^T) (x) (1 1^T / ...): rank 1. A rank-1 pointwise conv is W (x) I: stable rank n^2."""
    u, v = _w(2, seed=40), _w(3, seed=41)
    w = (u[:, None] * v[None, :])[:, :, None, None] * torch.ones(3, 3, dtype=D)
    sv = conv_chain_singular_values([ConvStage(w, 1, 1)], 3)
    assert (sv > 1e-9).sum() == 1
    assert stable_rank(sv) == pytest.approx(1.0, abs=1e-12)
    pw = (u[:, None] * v[None, :])[:, :, None, None]
    assert stable_rank(conv_chain_singular_values([ConvStage(pw)], 4)) == pytest.approx(16.0, rel=1e-12)


@pytest.mark.parametrize("op", [
    Identity(), Zero(1), Zero(2), nn.Identity(), FactorizedReduce(4, 4, affine=False),
    search_op("skip_connect", 4, 1), search_op("skip_connect", 4, 2), search_op("max_pool_3x3", 4, 1),
    search_op("avg_pool_3x3", 4, 2), search_op("none", 4, 1),
    nb201_op("skip_connect", 4), nb201_op("avg_pool_3x3", 4), nb201_op("none", 4),
], ids=lambda op: type(op).__name__)
def test_op_without_conv_chain_has_no_score(op):
    assert op_conv_chain(op) is None
    assert op_stable_rank(op, 8) is None


def test_not_a_chain_raises_naming_the_op():
    class Weird(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(2, 2, 3, padding=1)
            self.pool = nn.MaxPool2d(3, 1, 1)
            self.b = nn.Conv2d(2, 2, 3, padding=1)

    with pytest.raises(NotImplementedError, match="Weird"):
        op_stable_rank(Weird(), 8)
    with pytest.raises(NotImplementedError, match="Sequential"):  # BN before any conv
        op_stable_rank(nn.Sequential(nn.BatchNorm2d(2), nn.Conv2d(2, 2, 1)), 4)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"size \(7, 7\).*stride \(2, 2\)"):
        conv_chain_singular_values([ConvStage(_w(2, 2, 3, 3, seed=50), 2, 1)], 7)
    with pytest.raises(ValueError, match="stride"):
        explicit_conv_chain_matrix([ConvStage(_w(2, 2, 3, 3, seed=50), 2, 1)], 7)
    with pytest.raises(ValueError, match="stride"):  # the second stride does not divide 6 / 2 = 3
        conv_chain_singular_values([ConvStage(_w(2, 2, 1, 1, seed=51), 2), ConvStage(_w(2, 2, 1, 1, seed=52), 2)], 6)
    with pytest.raises(ValueError, match="channels"):
        conv_chain_singular_values([ConvStage(_w(3, 2, 1, 1, seed=53)), ConvStage(_w(2, 2, 1, 1, seed=54))], 4)
    with pytest.raises(ValueError, match="stride"):
        op_stable_rank(SepConv(2, 2, 3, 2, 1), 5)


# --------------------------------------------------------------------------------------------------
# Supernets
# --------------------------------------------------------------------------------------------------
def _darts(**kw):
    torch.manual_seed(0)
    return SearchNetwork("darts", C=8, layers=3, partial_channels=2, **kw).to(D)


def _nb201(**kw):
    torch.manual_seed(0)
    return SearchNetwork("nb201", C=8, layers=1, partial_channels=1, edge_norm=False, **kw).to(D)


def test_darts_edge_scores_shapes_nan_pattern_and_resolutions():
    model = _darts()
    scores = edge_stable_ranks(model, image_size=8)
    assert set(scores) == {"normal", "reduce"}
    conv = torch.tensor([p in CONV_OPS for p in PRIMITIVES])
    for kind, s in scores.items():
        assert s.shape == (14, len(PRIMITIVES)) and s.dtype == D
        assert torch.isnan(s[:, ~conv]).all() and torch.isfinite(s[:, conv]).all()
    # layers=3: cell 0 normal (8 px), cells 1 and 2 reduce with inputs at 8 and 4 px; a reduction cell's
    # edges from its inputs (stride 2) run at the input resolution, those from its nodes at half of it.
    cells = model.cells
    o = PRIMITIVES.index("dil_conv_5x5")
    assert [c.reduction for c in cells] == [False, True, True]
    assert scores["normal"][3, o] == pytest.approx(op_stable_rank(cells[0]._ops[3]._ops[o], 8), rel=1e-12)
    from_input = (op_stable_rank(cells[1]._ops[0]._ops[o], 8) + op_stable_rank(cells[2]._ops[0]._ops[o], 4)) / 2
    from_node = (op_stable_rank(cells[1]._ops[4]._ops[o], 4) + op_stable_rank(cells[2]._ops[4]._ops[o], 2)) / 2
    assert scores["reduce"][0, o] == pytest.approx(from_input, rel=1e-12)
    assert scores["reduce"][4, o] == pytest.approx(from_node, rel=1e-12)


def test_pruned_ops_have_no_score():
    mask = {k: torch.ones(14, len(PRIMITIVES), dtype=torch.bool) for k in ("normal", "reduce")}
    mask["normal"][2, PRIMITIVES.index("sep_conv_3x3")] = False
    built = edge_stable_ranks(_darts(op_mask=mask), 8)  # pruned at construction: built as Zero
    assert torch.isnan(built["normal"][2, PRIMITIVES.index("sep_conv_3x3")])
    assert torch.isfinite(built["normal"][2, PRIMITIVES.index("sep_conv_5x5")])
    model = _darts()
    model.set_op_mask(mask)  # switched off: the module is there, inactive
    assert torch.isnan(edge_stable_ranks(model, 8)["normal"][2, PRIMITIVES.index("sep_conv_3x3")])


def test_nb201_edge_scores_shapes_nan_pattern_and_resolutions():
    model = _nb201()
    scores = edge_stable_ranks(model, image_size=16)
    s = scores["cell"]
    assert set(scores) == {"cell"} and s.shape == (6, 5) and s.dtype == D
    conv = torch.tensor(["conv" in p for p in NB201_PRIMITIVES])
    assert torch.isnan(s[:, ~conv]).all() and torch.isfinite(s[:, conv]).all()
    # Cells at 16, 8, 4 px, one per stage, joined by ResNet blocks.
    search_cells = [c for c in model.cells if hasattr(c, "edges")]
    o = NB201_PRIMITIVES.index("nor_conv_3x3")
    ref = sum(op_stable_rank(c.edges["2<-1"]._ops[o], r) for c, r in zip(search_cells, (16, 8, 4))) / 3
    assert s[2, o] == pytest.approx(ref, rel=1e-12)
    with pytest.raises(ValueError, match="image size 6x6 is not divisible"):
        edge_stable_ranks(model, image_size=6)


def _set_rank_one(op: nn.Module):
    """Low-pass, rank-1 channel mixing: depthwise kernels all ones, pointwise convs zero but for output
    channel 0 (dense convs: u v^T (x) all-ones)."""
    with torch.no_grad():
        for m in op.modules():
            if isinstance(m, nn.Conv2d):
                if m.groups > 1:
                    m.weight.fill_(1.0)
                else:
                    m.weight[1:] = 0.0
                    if m.kernel_size != (1, 1):
                        m.weight.copy_(m.weight.sum((2, 3), keepdim=True).expand_as(m.weight))


def _set_identity(op: nn.Module):
    """Center tap only, identity channel mixing: the op is the identity (times a uniform BN scale), whose
    stable rank is the largest possible, c * n^2."""
    with torch.no_grad():
        for m in op.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
                kh, kw = m.kernel_size
                cin_g = m.weight.shape[1]
                for c in range(m.out_channels):
                    m.weight[c, c % cin_g, kh // 2, kw // 2] = 1.0


def _valid_darts_genotype(g):
    parse_genotype(repr(g))
    for cell in (g.normal, g.reduce):
        for node in range(4):
            (op_a, src_a), (op_b, src_b) = cell[2 * node: 2 * node + 2]
            assert src_a != src_b
            assert op_a in CONV_OPS and op_b in CONV_OPS


def test_darts_derivation_picks_the_rank_one_op():
    model = _darts()
    target = "dil_conv_5x5"
    for cell in model.cells:
        if not cell.reduction:
            for k, p in enumerate(PRIMITIVES):
                if p in CONV_OPS:
                    (_set_rank_one if p == target else _set_identity)(cell._ops[0]._ops[k])
    genotype, scores = derive_by_stable_rank(model, image_size=8)
    _valid_darts_genotype(genotype)
    row = scores["normal"][0]
    assert row.nan_to_num(math.inf).argmin().item() == PRIMITIVES.index(target)
    assert row[PRIMITIVES.index("sep_conv_3x3")].item() == pytest.approx(4 * 8 * 8)  # identity: c n^2
    assert (target, 0) in genotype.normal[:2]


def test_darts_cell_derivation_top2_per_node_and_fallback():
    nan = math.nan
    prims = ("none", "skip_connect", "conv_a", "conv_b")
    scores = torch.full((5, 4), nan, dtype=D)  # steps = 2: node 0 edges 0-1, node 1 edges 2-4
    scores[0, 2:] = torch.tensor([5.0, 4.0])
    scores[1, 2:] = torch.tensor([1.0, 9.0])
    scores[2, 2:] = torch.tensor([7.0, 6.0])
    # edge 3: nothing scored (conv ops pruned) -> fallback to alphas, ranked last
    scores[4, 2:] = torch.tensor([2.0, 3.0])
    alphas = torch.zeros(5, 4, dtype=D)
    alphas[3] = torch.tensor([9.0, 1.0, -math.inf, -math.inf])  # 'none' is never derived in DARTS
    alphas[2] = torch.tensor([0.0, 0.0, 5.0, 0.0])
    gene = derive_darts_cell_by_rank(scores, alphas, prims)
    assert gene == [("conv_a", 1), ("conv_b", 0), ("conv_a", 2), ("conv_b", 0)]
    scores[2] = nan
    scores[4] = nan
    gene = derive_darts_cell_by_rank(scores, alphas, prims)
    assert gene[2:] == [("conv_a", 0), ("skip_connect", 1)]  # all three unscored: source order


def test_nb201_derivation_picks_the_rank_one_op_and_falls_back_to_alphas():
    model = _nb201()
    o1, o3 = NB201_PRIMITIVES.index("nor_conv_1x1"), NB201_PRIMITIVES.index("nor_conv_3x3")
    for cell in model.cells:
        if hasattr(cell, "edges"):
            _set_rank_one(cell.edges["1<-0"]._ops[o1])  # a rank-1 1x1 conv: stable rank n^2
            _set_identity(cell.edges["1<-0"]._ops[o3])  # the identity: c n^2
    arch, scores = derive_by_stable_rank(model, image_size=16)
    ops = parse_arch(arch)
    assert ops[0] == "nor_conv_1x1"
    assert all(op in ("nor_conv_1x1", "nor_conv_3x3") for op in ops)
    assert scores["cell"][0, o1].item() == pytest.approx((16 ** 2 + 8 ** 2 + 4 ** 2) / 3)
    # c n^2 with the stage widths C, 2C, 4C = 8, 16, 32
    assert scores["cell"][0, o3].item() == pytest.approx((8 * 16 ** 2 + 16 * 8 ** 2 + 32 * 4 ** 2) / 3)
    # An edge left with parameter-free ops only: argmax of its masked alphas ('none' included in NB201).
    scores_cell = scores["cell"].clone()
    scores_cell[5] = math.nan
    alphas = torch.zeros(6, 5, dtype=D)
    alphas[5] = torch.tensor([0.5, 0.1, -math.inf, -math.inf, 2.0])
    assert derive_nb201_by_rank(scores_cell, alphas, NB201_PRIMITIVES)[5] == "avg_pool_3x3"


def test_derivation_with_edges_pruned_to_parameter_free_ops():
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[4, 2:4] = False  # edge 3<-1 keeps none, skip, pool
    model = _nb201(op_mask={"cell": mask})
    with torch.no_grad():
        model.alphas[4] = torch.tensor([0.0, 3.0, 1.0, 1.0, 2.0], dtype=D)
    arch, scores = derive_by_stable_rank(model, image_size=8)
    assert torch.isnan(scores["cell"][4]).all()
    assert parse_arch(arch)[4] == "skip_connect"
