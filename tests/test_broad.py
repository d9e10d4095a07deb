"""BroadSearchNetwork (B-DARTS, fastnas/nn/broad.py): layout, shared architecture weights, fusion, masks."""
import pytest
import torch
import torch.nn.functional as F

from fastnas.nn.broad import BroadSearchNetwork
from fastnas.nn.operations import FactorizedReduce, ReLUConvBN, Zero
from fastnas.nn.search_cells import DartsSearchCell
from fastnas.spaces import PRIMITIVES, Genotype, parse_genotype


def _net(seed=0, **kw):
    torch.manual_seed(seed)
    kw.setdefault("C", 8)
    return BroadSearchNetwork(**kw)


def _loss(net, x, seed=1):
    y = torch.randint(0, net._num_classes, (x.shape[0],), generator=torch.Generator().manual_seed(seed))
    return F.cross_entropy(net(x), y)


# --------------------------------------------------------------------------------------------------
# Layout and shapes
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("C,conv_blocks,enhancement_cells,hw", [
    (16, 2, 2, 32), (16, 2, 2, 16), (8, 3, 1, 16), (8, 1, 2, 16), (8, 2, 0, 16)])
def test_shapes(C, conv_blocks, enhancement_cells, hw):
    net = _net(C=C, num_classes=7, conv_blocks=conv_blocks, enhancement_cells=enhancement_cells)
    x = torch.randn(2, 3, hw, hw)
    blocks = net.stage_outputs(x)
    expected = [(2, 4 * C * 2 ** (b + 1), hw // 2 ** (b + 1), hw // 2 ** (b + 1)) for b in range(conv_blocks)]
    if enhancement_cells:
        expected.append((2, 4 * C * 2 ** conv_blocks, hw // 2 ** conv_blocks, hw // 2 ** conv_blocks))
    assert [tuple(h.shape) for h in blocks] == expected
    assert net.block_channels == tuple(e[1] for e in expected)
    assert net.block_reductions == tuple(list(range(1, conv_blocks + 1)) + [conv_blocks] * bool(enhancement_cells))
    C_fuse = 4 * C * 2 ** conv_blocks // 2
    assert net.fuse_channels == C_fuse
    last = hw // 2 ** conv_blocks
    assert tuple(net.fuse(blocks).shape) == (2, len(expected) * C_fuse, last, last)
    # one FactorizedReduce per halving down to the coarsest resolution
    assert [len(d) for d in net.fuse_down] == [conv_blocks - 1 - b for b in range(conv_blocks)] + (
        [0] if enhancement_cells else [])
    assert all(isinstance(m, FactorizedReduce) for d in net.fuse_down for m in d)
    assert all(isinstance(p, ReLUConvBN) for p in net.fuse_proj)
    assert net.classifier.in_features == len(expected) * C_fuse
    assert tuple(net(x).shape) == (2, 7)


def test_documented_channels_for_C16():
    net = BroadSearchNetwork()
    assert net.stem[0].out_channels == 48
    assert net.block_channels == (128, 256, 256)
    assert net.fuse_channels == 128 and net.classifier.in_features == 384
    assert [c._ops[0].C for c in net.cells] == [32, 64, 64, 64]  # C_curr of each cell


def test_cells_and_chain():
    net = _net(conv_blocks=3, enhancement_cells=2)
    assert len(net.cells) == 5 and net._layers == 5
    assert all(isinstance(c, DartsSearchCell) for c in net.cells)
    assert [c.reduction for c in net.cells] == [True, True, True, False, False]
    # reduction_prev: every cell right after a reduction cell factorizes its s0 down
    assert [isinstance(c.preprocess0, FactorizedReduce) for c in net.cells] == [False, True, True, True, False]
    # reduction edges (from the two inputs) have stride 2, the rest stride 1
    strides = [op.stride for op in net.cells[0]._ops]
    assert strides[:2] == [2, 2] and strides[2:4] == [2, 2] and strides[4] == 1
    assert all(op.stride == 1 for op in net.cells[3]._ops)


# --------------------------------------------------------------------------------------------------
# Architecture weights
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("edge_norm", [True, False])
def test_arch_parameters_are_the_four_shared_tensors(edge_norm):
    net = _net(conv_blocks=3, edge_norm=edge_norm)
    names = [n for n, _ in net.named_arch_parameters()]
    expected = ["alphas_normal", "alphas_reduce"] + (["betas_normal", "betas_reduce"] if edge_norm else [])
    assert names == expected
    assert net.alphas_normal.shape == net.alphas_reduce.shape == (14, len(PRIMITIVES))
    arch = {id(p) for p in net.arch_parameters()}
    assert len(arch) == len(expected)
    assert not arch & {id(p) for p in net.weight_parameters()}
    assert not any("alpha" in n or "beta" in n for n, _ in net.cells.named_parameters())


def test_loss_gradient_reaches_arch_weights_from_every_cell():
    net = _net(conv_blocks=3, enhancement_cells=2)
    seen = []

    def pre_hook(cell, args):
        s0, s1, w, ew, aux = args
        w, ew = w.clone(), ew.clone()  # a per-cell copy of the shared weights, to see each cell's gradient
        w.retain_grad()
        ew.retain_grad()
        seen.append((cell, w, ew))
        return s0, s1, w, ew, aux

    handles = [c.register_forward_pre_hook(pre_hook) for c in net.cells]
    _loss(net, torch.randn(2, 3, 16, 16)).backward()
    for h in handles:
        h.remove()
    assert [c for c, _, _ in seen] == list(net.cells)
    for cell, w, ew in seen:
        assert w.grad is not None and w.grad.abs().sum() > 0, f"no weight gradient from cell {cell.reduction}"
        assert ew.grad is not None and ew.grad.abs().sum() > 0
    reduce_grads = [w.grad for c, w, _ in seen if c.reduction]
    assert len(reduce_grads) == 3
    # the shared alphas_reduce collects the three conv blocks' gradients (through the softmax)
    for p in net.arch_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_perturbing_shared_alphas_reduce_changes_output():
    net = _net(conv_blocks=2, enhancement_cells=1).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = net(x)
        blocks_before = net.stage_outputs(x)
        net.alphas_reduce.add_(torch.randn_like(net.alphas_reduce))
        after = net(x)
        blocks_after = net.stage_outputs(x)
    assert not torch.allclose(before, after)
    assert all(not torch.allclose(a, b) for a, b in zip(blocks_before, blocks_after))


def test_genotype_parses_back():
    net = _net()
    with torch.no_grad():
        net.alphas_normal.normal_()
        net.alphas_reduce.normal_()
    g = net.genotype()
    assert isinstance(g, Genotype)
    assert parse_genotype(repr(g)) == g
    assert parse_genotype(str(g)) == g
    assert g.normal_concat == g.reduce_concat == [2, 3, 4, 5] and len(g.normal) == len(g.reduce) == 8


def test_no_enhancement_cells():
    net = _net(conv_blocks=2, enhancement_cells=0)
    assert [c.reduction for c in net.cells] == [True, True]
    assert len(net.stage_outputs(torch.randn(2, 3, 16, 16))) == 2
    _loss(net, torch.randn(2, 3, 16, 16)).backward()
    assert net.alphas_reduce.grad.abs().sum() > 0 and net.betas_reduce.grad.abs().sum() > 0
    assert net.alphas_normal.grad is None and net.betas_normal.grad is None  # documented: not searched
    assert isinstance(net.genotype(), Genotype)
    mask = {"normal": torch.ones(14, 8, dtype=torch.bool), "reduce": torch.ones(14, 8, dtype=torch.bool)}
    mask["reduce"][:, 5] = False
    net.set_op_mask(mask)
    assert net.arch_weights()["reduce"][:, 5].eq(0).all()
    assert BroadSearchNetwork(C=8, enhancement_cells=0, op_mask=mask).op_masks()["reduce"].equal(mask["reduce"])


# --------------------------------------------------------------------------------------------------
# Op masks, mixing variants, state dict
# --------------------------------------------------------------------------------------------------
def test_op_mask_prunes_ops_in_every_cell():
    pruned = {"reduce": ["sep_conv_5x5", "dil_conv_5x5"], "normal": ["sep_conv_3x3"]}
    mask = {k: torch.ones(14, len(PRIMITIVES), dtype=torch.bool) for k in ("normal", "reduce")}
    for kind, ops in pruned.items():
        for op in ops:
            mask[kind][:, PRIMITIVES.index(op)] = False
    mask["normal"][3, PRIMITIVES.index("max_pool_3x3")] = False  # one edge only
    full = _net(conv_blocks=2, enhancement_cells=2)
    net = _net(conv_blocks=2, enhancement_cells=2, op_mask=mask)
    for cell in net.cells:
        m = mask["reduce" if cell.reduction else "normal"]
        for e, edge in enumerate(cell._ops):
            for k, op in enumerate(edge._ops):
                if not m[e, k]:
                    assert isinstance(op, Zero) and not list(op.parameters())
                elif PRIMITIVES[k].startswith(("sep", "dil")):
                    assert list(op.parameters())
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in full.parameters())
    w = net.arch_weights()
    for kind in ("normal", "reduce"):
        assert w[kind][~mask[kind]].eq(0).all() and w[kind][mask[kind]].gt(0).all()
        assert net.op_masks()[kind].equal(mask[kind])
    g = net.genotype()
    assert not any(op in pruned["normal"] for op, _ in g.normal)
    assert not any(op in pruned["reduce"] for op, _ in g.reduce)
    _loss(net, torch.randn(2, 3, 16, 16)).backward()
    assert net.alphas_reduce.grad[~mask["reduce"]].eq(0).all()
    # switching ops off later reaches every cell of the kind
    full.set_op_mask(mask)
    for cell in full.cells:
        m = mask["reduce" if cell.reduction else "normal"]
        assert all(edge.active[k] == bool(m[e, k]) for e, edge in enumerate(cell._ops) for k in range(len(m[e])))


def test_op_mask_needs_both_kinds():
    with pytest.raises(ValueError, match="op_mask"):
        _net(op_mask={"reduce": torch.ones(14, len(PRIMITIVES), dtype=torch.bool)})


def test_dirichlet_mixing_and_aux_skip():
    net = _net(mixing="dirichlet", reg_type="kl", aux_skip=True)
    net.aux_skip_weight = 1.0
    loss = _loss(net, torch.randn(2, 3, 16, 16)) + net.arch_regularizer()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.arch_parameters())
    assert all(edge.aux is not None for c in net.cells for edge in c._ops)


def test_state_dict_round_trip():
    a, b = _net(seed=0).eval(), _net(seed=1).eval()
    x = torch.randn(2, 3, 16, 16)
    assert not torch.allclose(a(x), b(x))
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(x), b(x))


# --------------------------------------------------------------------------------------------------
# Fusion
# --------------------------------------------------------------------------------------------------
def test_fusion_uses_every_block():
    net = _net(conv_blocks=3, enhancement_cells=1)
    x = torch.randn(2, 3, 16, 16)
    blocks = net.stage_outputs(x)
    assert len(blocks) == 4
    for i in range(len(blocks)):
        # only block i is differentiable: any gradient must come through its fusion branch
        inputs = [h if j == i else h.detach() for j, h in enumerate(blocks)]
        (g,) = torch.autograd.grad(net.classify(inputs).square().sum(), blocks[i], retain_graph=True)
        assert g.abs().sum() > 0, f"block {i} does not reach the logits through the fusion"
    net.zero_grad()
    _loss(net, x).backward()
    for proj in net.fuse_proj:
        assert proj.op[1].weight.grad.abs().sum() > 0
    for down in net.fuse_down:
        for fr in down:
            assert fr.conv_1.weight.grad.abs().sum() > 0 and fr.conv_2.weight.grad.abs().sum() > 0


def test_classify_needs_every_block():
    net = _net()
    blocks = net.stage_outputs(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="stage_outputs"):
        net.classify(blocks[-1])
    with pytest.raises(ValueError, match="3 tensors"):
        net.classify(blocks[1:])


# --------------------------------------------------------------------------------------------------
# Bad arguments
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,name", [
    (dict(conv_blocks=0), "conv_blocks"), (dict(conv_blocks=-1), "conv_blocks"), (dict(conv_blocks=1.5), "conv_blocks"),
    (dict(conv_blocks=True), "conv_blocks"), (dict(enhancement_cells=-1), "enhancement_cells"),
    (dict(enhancement_cells="2"), "enhancement_cells"), (dict(layers=8), "layers"),
    (dict(multiplier=5), "multiplier"), (dict(mixing="gumbel"), "mixing"), (dict(partial_channels=3), "partial"),
])
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        _net(**kwargs)
