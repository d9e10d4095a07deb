"""fastnas.nn against a straightforward PC-DARTS search model kept here as the reference.

The reference (``Ref*`` below) is PC-DARTS's model_search.py / operations.py written plainly: every op
runs its own ReLU, ``none`` is ``x.mul(0.)``, the mixed op stacks, cats and channel-shuffles, nodes are
Python sums weighted by the per-node softmax of the betas. Its module names equal fastnas's, so one
state dict loads into both (strictly); logits, every weight gradient, every architecture gradient and
the BatchNorm running statistics must then agree.
"""
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fastnas.nn.mixed as mixed_module
from fastnas.nn import PartialChannelMixedOp, SearchNetwork, search_op
from fastnas.nn.search_cells import NB201SearchCell
from fastnas.ops import channel_shuffle_ref
from fastnas.spaces import NB201_PRIMITIVES, PRIMITIVES, Genotype, parse_arch, validate_genotype


# --------------------------------------------------------------------------------------------------
# Reference: PC-DARTS, plainly
# --------------------------------------------------------------------------------------------------
class RefReLUConvBN(nn.Module):
    def __init__(self, C_in, C_out, k, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(C_in, C_out, k, stride, padding, bias=False),
                                nn.BatchNorm2d(C_out, affine=affine))

    def forward(self, x):
        return self.op(x)


class RefDilConv(RefReLUConvBN):
    def __init__(self, C_in, C_out, k, stride, padding, dilation, affine=True):
        nn.Module.__init__(self)
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, k, stride, padding, dilation=dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, padding=0, bias=False), nn.BatchNorm2d(C_out, affine=affine))


class RefSepConv(RefReLUConvBN):
    def __init__(self, C_in, C_out, k, stride, padding, affine=True):
        nn.Module.__init__(self)
        self.op = nn.Sequential(
            nn.ReLU(inplace=False), nn.Conv2d(C_in, C_in, k, stride, padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, 1, padding=0, bias=False), nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False), nn.Conv2d(C_in, C_in, k, 1, padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, padding=0, bias=False), nn.BatchNorm2d(C_out, affine=affine))


class RefIdentity(nn.Module):
    def forward(self, x):
        return x


class RefZero(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.)
        return x[:, :, ::self.stride, ::self.stride].mul(0.)


class RefFactorizedReduce(nn.Module):
    def __init__(self, C_in, C_out, affine=True):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


REF_OPS = {
    'none': lambda C, stride, affine: RefZero(stride),
    'avg_pool_3x3': lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    'max_pool_3x3': lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    'skip_connect': lambda C, stride, affine: RefIdentity() if stride == 1 else RefFactorizedReduce(C, C, affine),
    'sep_conv_3x3': lambda C, stride, affine: RefSepConv(C, C, 3, stride, 1, affine=affine),
    'sep_conv_5x5': lambda C, stride, affine: RefSepConv(C, C, 5, stride, 2, affine=affine),
    'dil_conv_3x3': lambda C, stride, affine: RefDilConv(C, C, 3, stride, 2, 2, affine=affine),
    'dil_conv_5x5': lambda C, stride, affine: RefDilConv(C, C, 5, stride, 4, 2, affine=affine),
}


def ref_channel_shuffle(x, groups):
    batchsize, num_channels, height, width = x.data.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, -1, height, width)


class RefMixedOp(nn.Module):
    def __init__(self, C, stride, k):
        super().__init__()
        self._ops = nn.ModuleList()
        self.mp = nn.MaxPool2d(2, 2)
        self.k = k
        for primitive in PRIMITIVES:
            op = REF_OPS[primitive](C // k, stride, False)
            if 'pool' in primitive:
                op = nn.Sequential(op, nn.BatchNorm2d(C // k, affine=False))
            self._ops.append(op)

    def forward(self, x, weights):
        dim_2 = x.shape[1]
        xtemp = x[:, :dim_2 // self.k, :, :]
        xtemp2 = x[:, dim_2 // self.k:, :, :]
        temp1 = sum(w * op(xtemp) for w, op in zip(weights, self._ops))
        if self.k == 1:  # plain DARTS MixedOp (PC-DARTS's code max-pools an empty tensor here and fails)
            return temp1
        if temp1.shape[2] == x.shape[2]:
            ans = torch.cat([temp1, xtemp2], dim=1)
        else:
            ans = torch.cat([temp1, self.mp(xtemp2)], dim=1)
        return ref_channel_shuffle(ans, self.k)


class RefCell(nn.Module):
    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev, k):
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0 = RefFactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = RefReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = RefReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self._steps, self._multiplier = steps, multiplier
        self._ops = nn.ModuleList()
        for i in range(self._steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self._ops.append(RefMixedOp(C, stride, k))

    def forward(self, s0, s1, weights, weights2):
        s0 = self.preprocess0(s0)
        s1 = self.preprocess1(s1)
        states = [s0, s1]
        offset = 0
        for i in range(self._steps):
            if weights2 is None:
                s = sum(self._ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            else:
                s = sum(weights2[offset + j] * self._ops[offset + j](h, weights[offset + j])
                        for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self._multiplier:], dim=1)


class RefNetwork(nn.Module):
    def __init__(self, C, num_classes, layers, k, edge_norm, steps=4, multiplier=4, stem_multiplier=3):
        super().__init__()
        self._steps, self.edge_norm = steps, edge_norm
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            if i in [layers // 3, 2 * layers // 3]:
                C_curr *= 2
                reduction = True
            else:
                reduction = False
            cell = RefCell(steps, multiplier, C_prev_prev, C_prev, C_curr, reduction, reduction_prev, k)
            reduction_prev = reduction
            self.cells += [cell]
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        # Plain tensors, as PC-DARTS keeps them (not registered on the module).
        self.alphas_normal = 1e-3 * torch.randn(14, len(PRIMITIVES))
        self.alphas_reduce = 1e-3 * torch.randn(14, len(PRIMITIVES))
        self.betas_normal = 1e-3 * torch.randn(14)
        self.betas_reduce = 1e-3 * torch.randn(14)

    def _weights2(self, betas):
        n, start = 3, 2
        weights2 = F.softmax(betas[0:2], dim=-1)
        for i in range(self._steps - 1):
            end = start + n
            tw2 = F.softmax(betas[start:end], dim=-1)
            start = end
            n += 1
            weights2 = torch.cat([weights2, tw2], dim=0)
        return weights2

    def forward(self, input):
        s0 = s1 = self.stem(input)
        for i, cell in enumerate(self.cells):
            if cell.reduction:
                weights = F.softmax(self.alphas_reduce, dim=-1)
                weights2 = self._weights2(self.betas_reduce) if self.edge_norm else None
            else:
                weights = F.softmax(self.alphas_normal, dim=-1)
                weights2 = self._weights2(self.betas_normal) if self.edge_norm else None
            s0, s1 = s1, cell(s0, s1, weights, weights2)
        out = self.global_pooling(s1)
        return self.classifier(out.view(out.size(0), -1))


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
    weights = {n: p for n, p in net.state_dict().items()}
    arch_names = [n for n in ("alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce") if n in weights]
    ref_state = {n: t for n, t in weights.items() if n not in arch_names}
    ref.load_state_dict(ref_state, strict=True)  # same module names: a one-to-one mapping
    net = net.to(dtype)
    ref = ref.to(dtype)
    for n in ("alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce"):
        if n in arch_names:
            setattr(ref, n, getattr(net, n).detach().clone().requires_grad_(True))
        else:
            setattr(ref, n, None)
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
    monkeypatch.setattr(mixed_module, "F", SimpleNamespace(relu=lambda t: relus.append(1) or torch.relu(t)))
    op = PartialChannelMixedOp(16, stride, PRIMITIVES, K)
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
