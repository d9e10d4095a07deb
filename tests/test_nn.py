"""fastnas.nn against a straightforward PC-DARTS search model, the reference.

The reference (``Ref*``, tests/reference_pcdarts.py, shared with benchmarks/bench_search.py) is
PC-DARTS's model_search.py / operations.py written plainly: every op runs its own ReLU, ``none`` is
``x.mul(0.)``, the mixed op stacks, cats and channel-shuffles, nodes are Python sums weighted by the
per-node softmax of the betas. Its module names equal fastnas's, so one state dict loads into both
(strictly); logits, every weight gradient, every architecture gradient and the BatchNorm running
statistics must then agree.
"""

import pytest
import torch
import torch.nn as nn

import fastnas.nn.mixed as mixed_module
from fastnas.nn import NetworkCIFAR, PartialChannelMixedOp, SearchNetwork, search_op
from fastnas.nn.search_cells import NB201SearchCell
from fastnas.ops import channel_shuffle_ref
from fastnas.spaces import NB201_PRIMITIVES, PRIMITIVES, Genotype, parse_arch, validate_genotype
from reference_pcdarts import (RefNetwork, load_fastnas_state, reference_like, reference_optimizers,
                               reference_search_step)


# --------------------------------------------------------------------------------------------------
# Equivalence
# --------------------------------------------------------------------------------------------------
def _build_pair(C, layers, K, edge_norm, backend, dtype, seed=0):
    torch.manual_seed(seed)
    net = SearchNetwork("darts", C=C, num_classes=10, layers=layers, partial_channels=K, edge_norm=edge_norm,
                        backend=backend)
    ref = RefNetwork(C, 10, layers, K, edge_norm)
    # Non-trivial arch parameters (1e-3 * randn makes every softmax nearly uniform).
    with torch.no_grad():
        for p in net.arch_parameters():
            p.copy_(torch.randn_like(p))
    arch_names = [n for n in ("alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce") if hasattr(net, n)]
    net = net.to(dtype)
    ref = ref.to(dtype)
    load_fastnas_state(ref, net)  # same module names: a one-to-one mapping (strict)
    net.train()
    ref.train()
    return net, ref, arch_names


def _run(model, x, g, arch):
    logits = model(x)
    params = [p for p in model.parameters() if p.requires_grad] + arch
    grads = torch.autograd.grad((logits * g).sum(), params, allow_unused=True)
    return logits, grads


CASES = [
    pytest.param(1, True, id="K1-edgenorm"),
    pytest.param(1, False, id="K1-plain-darts"),
    pytest.param(4, True, id="K4-edgenorm"),
    pytest.param(4, False, id="K4-no-edgenorm"),
    pytest.param(2, True, id="K2-edgenorm"),
]


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("K,edge_norm", CASES)
def test_search_network_matches_pcdarts_reference_float64(K, edge_norm, backend):
    # layers=3: cell 0 normal, cells 1 and 2 reduction (cell 2 also with a FactorizedReduce preprocess0).
    net, ref, arch_names = _build_pair(C=8, layers=3, K=K, edge_norm=edge_norm, backend=backend,
                                       dtype=torch.float64)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    g = torch.randn(2, 10, dtype=torch.float64)
    ref_arch = [getattr(ref, n) for n in arch_names]
    y_ref, g_ref = _run(ref, x, g, ref_arch)
    net_arch = [getattr(net, n) for n in arch_names]
    net_weights = dict(net.named_weight_parameters())
    logits = net(x)
    names = list(net_weights) + arch_names
    g_net = torch.autograd.grad((logits * g).sum(), list(net_weights.values()) + net_arch, allow_unused=True)
    torch.testing.assert_close(logits, y_ref, atol=1e-10, rtol=1e-10)
    assert len(g_net) == len(g_ref) == len(names)
    for name, a, b in zip(names, g_net, g_ref):
        if b is None:
            assert a is None or torch.count_nonzero(a) == 0, name
            continue
        assert a is not None, f"no gradient for {name}"
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8, msg=lambda m: f"{name}: {m}")
    # BatchNorm running statistics saw the same batches.
    ref_buffers = dict(ref.named_buffers())
    for name, buf in net.named_buffers():
        torch.testing.assert_close(buf, ref_buffers[name], atol=1e-12, rtol=1e-10, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("K", [1, 4])
def test_search_network_matches_reference_float32(K):
    net, ref, arch_names = _build_pair(C=16, layers=5, K=K, edge_norm=True, backend=None, dtype=torch.float32,
                                       seed=3)
    torch.manual_seed(4)
    x = torch.randn(2, 3, 32, 32)
    g = torch.randn(2, 10)
    y_ref, g_ref = _run(ref, x, g, [getattr(ref, n) for n in arch_names])
    logits = net(x)
    weights = net.weight_parameters()
    g_net = torch.autograd.grad((logits * g).sum(), weights + net.arch_parameters(), allow_unused=True)
    torch.testing.assert_close(logits, y_ref, atol=1e-5, rtol=1e-4)
    for a, b in zip(g_net, g_ref):
        if b is None:
            continue
        scale = b.abs().max().clamp_min(1e-6)
        assert (a - b).abs().max() <= 1e-4 * scale + 1e-6


# --------------------------------------------------------------------------------------------------
# Structure of the mixed op and the parameters
# --------------------------------------------------------------------------------------------------
def test_arch_parameters_registered_and_excluded_from_weights():
    net = SearchNetwork(C=8, layers=3)
    arch = net.arch_parameters()
    assert [tuple(p.shape) for p in arch] == [(14, 8), (14, 8), (14,), (14,)]
    assert all(isinstance(p, nn.Parameter) for p in arch)
    ids = {id(p) for p in arch}
    assert ids <= {id(p) for p in net.parameters()}
    assert not ids & {id(p) for p in net.weight_parameters()}
    assert len(net.weight_parameters()) + 4 == len(list(net.parameters()))
    assert set(net.state_dict()) >= {"alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce"}
    assert all(p.abs().max() < 0.05 for p in arch)  # 1e-3 * randn
    plain = SearchNetwork(C=8, layers=3, partial_channels=1, edge_norm=False)
    assert [tuple(p.shape) for p in plain.arch_parameters()] == [(14, 8), (14, 8)]


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("K", [1, 4])
def test_mixed_op_passes_none_and_views(monkeypatch, stride, K):
    seen = {}
    real = mixed_module.partial_channel_mix

    def spy(op_outputs, weights, bypass, groups, **kw):
        seen.update(outputs=list(op_outputs), bypass=bypass, groups=groups, **kw)
        return real(op_outputs, weights, bypass, groups, **kw)

    monkeypatch.setattr(mixed_module, "partial_channel_mix", spy)
    relus = []
    op = PartialChannelMixedOp(16, stride, PRIMITIVES, K)
    op.relu.register_forward_hook(lambda *args: relus.append(1))
    x = torch.randn(2, 16, 8, 8)
    y = op(x, torch.softmax(torch.randn(8), 0), torch.tensor(0.5))
    assert y.shape == (2, 16, 8 // stride, 8 // stride)
    outs = seen["outputs"]
    assert outs[PRIMITIVES.index("none")] is None
    skip = outs[PRIMITIVES.index("skip_connect")]
    if stride == 1:
        assert skip.data_ptr() == x.data_ptr() and skip.shape[1] == 16 // K  # xs itself: no copy
    else:
        assert skip.shape == (2, 16 // K, 4, 4)
    if K == 1:
        assert seen["bypass"] is None
    else:
        assert seen["bypass"].shape == (2, 16 - 16 // K, 8 // stride, 8 // stride)
    assert seen["groups"] == K
    assert len(relus) == 1  # one shared ReLU for the edge's conv ops


def test_relu_first_ops_skip_leading_relu():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8)
    for name in ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"):
        for stride in (1, 2):
            op = search_op(name, 4, stride)
            torch.testing.assert_close(op(torch.relu(x), pre_relu_applied=True), op(x))
    fr = search_op("skip_connect", 4, 2)
    torch.testing.assert_close(fr(torch.relu(x), pre_relu_applied=True), fr(x))


def test_bad_partial_channels():
    with pytest.raises(ValueError, match="divisible"):
        PartialChannelMixedOp(10, 1, PRIMITIVES, 4)
    with pytest.raises(ValueError, match="space"):
        SearchNetwork("nope")


def test_darts_genotype_from_network():
    net = SearchNetwork(C=8, layers=3)
    with torch.no_grad():
        net.alphas_normal.zero_()
        net.alphas_reduce.zero_()
        net.alphas_normal[:, PRIMITIVES.index("sep_conv_3x3")] = 5.0
        net.alphas_reduce[:, PRIMITIVES.index("max_pool_3x3")] = 5.0
        net.betas_normal.zero_()
        net.betas_reduce.zero_()
        net.betas_normal[0] = 3.0  # node 0: edge from state 0 first
    geno = net.genotype()
    assert isinstance(geno, Genotype)
    validate_genotype(geno)
    assert geno.normal[0] == ("sep_conv_3x3", 0) and geno.normal[1] == ("sep_conv_3x3", 1)
    assert all(op == "sep_conv_3x3" for op, _ in geno.normal)
    assert all(op == "max_pool_3x3" for op, _ in geno.reduce)
    assert geno.normal_concat == [2, 3, 4, 5]
    # A cell that concatenates its last 3 nodes derives concat [3, 4, 5], as DARTS's genotype().
    geno3 = SearchNetwork(C=8, layers=3, multiplier=3).genotype()
    assert geno3.normal_concat == geno3.reduce_concat == [3, 4, 5]
    x = torch.randn(2, 3, 8, 8)
    assert NetworkCIFAR(8, 10, 3, False, geno3)(x)[0].shape == (2, 10)


# --------------------------------------------------------------------------------------------------
# NAS-Bench-201
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("K,edge_norm", [(1, False), (4, True)])
def test_nb201_network_shapes_grads_genotype(K, edge_norm):
    torch.manual_seed(0)
    net = SearchNetwork("nb201", C=16, num_classes=10, layers=5, partial_channels=K, edge_norm=edge_norm)
    n_cells = sum(isinstance(c, NB201SearchCell) for c in net.cells)
    assert n_cells == 15 and len(net.cells) == 17
    assert tuple(net.alphas.shape) == (6, 5)
    assert len(net.arch_parameters()) == (2 if edge_norm else 1)
    x = torch.randn(2, 3, 32, 32)
    y = net(x)
    assert y.shape == (2, 10)
    y.square().sum().backward()
    for p in net.arch_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.weight_parameters())
    with torch.no_grad():
        net.alphas.zero_()
        for e, op in enumerate(["nor_conv_3x3", "skip_connect", "nor_conv_1x1", "avg_pool_3x3", "none",
                                "nor_conv_3x3"]):
            net.alphas[e, NB201_PRIMITIVES.index(op)] = 1.0
    s = net.genotype()
    assert s == "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|"
    assert parse_arch(s)


@pytest.mark.parametrize("K,edge_norm", [(1, False), (2, True), (4, True)])
def test_nb201_cell_matches_plain_formula(K, edge_norm):
    torch.manual_seed(0)
    C = 8
    cell = NB201SearchCell(C, NB201_PRIMITIVES, K).double().train()
    x = torch.randn(2, C, 8, 8, dtype=torch.float64, requires_grad=True)
    a = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    w = torch.softmax(a, -1)
    ew = torch.cat([torch.softmax(b[s], 0) for s in (slice(0, 1), slice(1, 3), slice(3, 6))]) if edge_norm else None
    y = cell(x, w, ew)

    def edge(key, h, we):
        ops = cell.edges[key]._ops
        cp = C // K
        mixed = sum(wi * op(h[:, :cp]) for wi, op in zip(we, ops))
        return channel_shuffle_ref(torch.cat([mixed, h[:, cp:]], 1), K)

    nodes, e = [x], 0
    for i in range(1, 4):
        s = 0
        for j in range(i):
            t = edge(f"{i}<-{j}", nodes[j], w[e])
            s = s + (t if ew is None else ew[e] * t)
            e += 1
        nodes.append(s)
    torch.testing.assert_close(y, nodes[-1], atol=1e-10, rtol=1e-10)
    g = torch.randn_like(y)
    inputs = [x, a, b] if edge_norm else [x, a]
    ga = torch.autograd.grad((y * g).sum(), inputs, retain_graph=True)
    gb = torch.autograd.grad((nodes[-1] * g).sum(), inputs)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, atol=1e-10, rtol=1e-8)



def _arch_randn_(net):
    with torch.no_grad():
        for p in net.arch_parameters():
            p.copy_(torch.randn_like(p))


@pytest.mark.parametrize("K,edge_norm", [(1, False), (4, True)])
def test_nb201_network_matches_reference(K, edge_norm):
    torch.manual_seed(0)
    net = SearchNetwork("nb201", C=8, num_classes=10, layers=1, partial_channels=K, edge_norm=edge_norm).double()
    _arch_randn_(net)
    ref = reference_like(net)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    g = torch.randn(2, 10, dtype=torch.float64)
    y_ref, g_ref = _run(ref, x, g, ref.arch_parameters())
    y_net, g_net = _run(net, x, g, [])  # net.parameters() already holds its arch parameters, last
    torch.testing.assert_close(y_net, y_ref, atol=1e-10, rtol=1e-10)
    assert len(g_net) == len(g_ref)
    order = list(net.weight_parameters()) + net.arch_parameters()  # ref's order: weights, then arch
    by_id = {id(p): gr for p, gr in zip((p for p in net.parameters() if p.requires_grad), g_net)}
    for p, b in zip(order, g_ref):
        torch.testing.assert_close(by_id[id(p)], b, atol=1e-10, rtol=1e-8)


def test_reference_search_step_matches_fastnas_step():
    from fastnas.search import SearchStep

    torch.manual_seed(0)
    net = SearchNetwork("darts", C=8, num_classes=10, layers=3, partial_channels=4, edge_norm=True).double()
    _arch_randn_(net)
    ref = reference_like(net)
    assert len(ref.arch_parameters()) == 4 and not {id(t) for t in ref.arch_parameters()} & \
        {id(p) for p in ref.parameters()}
    step = SearchStep(net)
    w_opt, a_opt = reference_optimizers(ref)
    x_w, x_a = torch.randn(2, 2, 3, 16, 16, dtype=torch.float64)
    y_w, y_a = torch.randint(0, 10, (2, 2))
    for _ in range(2):
        loss, correct = step(x_w, y_w, x_a, y_a, update_arch=True)
        ref_loss, ref_correct = reference_search_step(ref, w_opt, a_opt, x_w, y_w, x_a, y_a)
        # fastnas takes the cross-entropy of float32 logits (mixed-precision safe): float32 tolerances
        torch.testing.assert_close(loss.double(), ref_loss, atol=1e-6, rtol=1e-6)
        assert int(correct) == int(ref_correct)
    for n, t in zip(("alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce"), ref.arch_parameters()):
        torch.testing.assert_close(getattr(net, n).detach(), t.detach(), atol=1e-6, rtol=1e-5, msg=n)
    ref_weights = dict(ref.named_parameters())
    for n, p in net.named_weight_parameters():
        torch.testing.assert_close(p.detach(), ref_weights[n].detach(), atol=1e-6, rtol=1e-5, msg=n)

# --------------------------------------------------------------------------------------------------
# Discrete networks
# --------------------------------------------------------------------------------------------------
PCDARTS_GENOTYPE = ("Genotype(normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), "
                    "('dil_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), "
                    "('dil_conv_3x3', 1)], normal_concat=range(2, 6), reduce=[('sep_conv_5x5', 1), "
                    "('max_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_5x5', 2), ('sep_conv_3x3', 0), "
                    "('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2)], reduce_concat=range(2, 6))")


@pytest.mark.parametrize("auxiliary", [False, True])
def test_network_cifar_from_genotype(auxiliary):
    from fastnas.nn import NetworkCIFAR

    torch.manual_seed(0)
    net = NetworkCIFAR(8, 10, 5, auxiliary, PCDARTS_GENOTYPE, drop_path_prob=0.2).train()
    x = torch.randn(2, 3, 32, 32)
    logits, aux = net(x)
    assert logits.shape == (2, 10)
    assert (aux is not None) == auxiliary
    if auxiliary:
        assert aux.shape == (2, 10)
    (logits.sum() + (aux.sum() if aux is not None else 0)).backward()
    assert all(p.grad is not None for p in net.parameters())
    net.eval()
    assert net(x)[1] is None


def test_network_cifar_from_derived_genotype():
    from fastnas.nn import NetworkCIFAR

    search = SearchNetwork(C=8, layers=3)
    net = NetworkCIFAR(8, 10, 3, False, search.genotype())
    assert net(torch.randn(2, 3, 16, 16))[0].shape == (2, 10)


def test_nb201_discrete_network():
    from fastnas.nn import NB201Network

    torch.manual_seed(0)
    s = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    net = NB201Network(s, C=16, N=5)
    y = net(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 10)
    y.sum().backward()
    # NAS-Bench-201 (CIFAR-10, C=16, N=5) spans 0.07 M to 1.53 M parameters: all-none to all-nor_conv_3x3.
    def count(arch):
        return sum(p.numel() for p in NB201Network(arch).parameters()) / 1e6

    assert abs(count(["nor_conv_3x3"] * 6) - 1.5315) < 1e-3
    assert abs(count(["none"] * 6) - 0.0733) < 1e-3
    search = SearchNetwork("nb201", C=8, layers=1)
    assert NB201Network(search.genotype(), C=8, N=1)(torch.randn(1, 3, 16, 16)).shape == (1, 10)



@pytest.mark.parametrize("channels", [3, 4, 8])
def test_layout_aware_batchnorm_equals_batchnorm(channels):
    """fastnas.nn.BatchNorm2d runs narrow channels_last inputs through NCHW: same output (in channels_last),
    gradients and running statistics as nn.BatchNorm2d."""
    from fastnas.nn.operations import BatchNorm2d

    torch.manual_seed(0)
    x = torch.randn(4, channels, 5, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    ours, plain = BatchNorm2d(channels, affine=False).double(), nn.BatchNorm2d(channels, affine=False).double()
    y, y_ref = ours(x), plain(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(y)
    gx, = torch.autograd.grad(y, x, g)
    gx_ref, = torch.autograd.grad(y_ref, x, g)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(ours.running_mean, plain.running_mean)
    torch.testing.assert_close(ours.running_var, plain.running_var)


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_search_network_channels_last_equals_contiguous(space):
    torch.manual_seed(0)
    layers = 3 if space == "darts" else 1
    a = SearchNetwork(space, C=16, layers=layers, partial_channels=4).double()
    b = SearchNetwork(space, C=16, layers=layers, partial_channels=4).double()
    b.load_state_dict(a.state_dict())
    b = b.to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    ya, yb = a(x), b(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(ya, yb)
    ga = torch.autograd.grad(ya.square().sum(), list(a.parameters()))
    gb = torch.autograd.grad(yb.square().sum(), list(b.parameters()))
    for p, q in zip(ga, gb):
        torch.testing.assert_close(p, q)
