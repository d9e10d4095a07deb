"""The reference PC-DARTS search model and search step, written plainly (no fastnas code on the path).

``RefNetwork`` is PC-DARTS's model_search.py / operations.py: every op runs its own ReLU, ``none`` is
``x.mul(0.)``, the mixed op stacks, cats and channel-shuffles, nodes are Python sums weighted by the
per-node softmax of the betas, and the architecture parameters are plain tensors (not registered on the
module, so ``model.parameters()`` are the weights alone and ``.to()`` does not move them).
``RefNB201Network`` is NAS-Bench-201's ``TinyNetworkDarts`` (AutoDL-Projects) with the same PC-DARTS
mixed op on its edges. Module names equal fastnas's, so one state dict loads into both (strictly):
:func:`load_fastnas_state`.

:func:`reference_search_step` is one step of PC-DARTS's train_search.py with the first-order
architect.py: an architecture step (``loss.backward()``, every weight gradient computed and discarded),
then a weight step (SGD, gradient clipping). Used by tests/test_nn.py (equivalence of fastnas.nn) and by
benchmarks/bench_search.py (the baseline of the end-to-end step timing); both put tests/ on sys.path
and ``import reference_pcdarts``.
"""
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastnas.spaces import NB201_EDGES, NB201_NODES, NB201_PRIMITIVES, PRIMITIVES

__all__ = [
    "RefReLUConvBN", "RefDilConv", "RefSepConv", "RefIdentity", "RefZero", "RefFactorizedReduce", "REF_OPS",
    "ref_channel_shuffle", "RefMixedOp", "RefCell", "RefNetwork",
    "RefNB201ReLUConvBN", "RefNB201Pooling", "RefResNetBasicblock", "REF_NB201_OPS", "RefNB201MixedOp",
    "RefNB201Cell", "RefNB201Network",
    "ARCH_NAMES", "reference_like", "load_fastnas_state", "reference_optimizers", "reference_search_step",
]


# --------------------------------------------------------------------------------------------------
# DARTS space: PC-DARTS operations.py and model_search.py
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
        # Plain tensors that require grad, as PC-DARTS keeps them (``Variable(..., requires_grad=True)``,
        # not registered on the module).
        self.alphas_normal = (1e-3 * torch.randn(14, len(PRIMITIVES))).requires_grad_(True)
        self.alphas_reduce = (1e-3 * torch.randn(14, len(PRIMITIVES))).requires_grad_(True)
        self.betas_normal = (1e-3 * torch.randn(14)).requires_grad_(True)
        self.betas_reduce = (1e-3 * torch.randn(14)).requires_grad_(True)

    def arch_parameters(self):
        """PC-DARTS's ``_arch_parameters`` (the betas only with edge normalization); a None attribute
        (set so by a caller that has no such parameter) is left out."""
        names = ARCH_NAMES["darts"] if self.edge_norm else ARCH_NAMES["darts"][:2]
        return [t for t in (getattr(self, n) for n in names) if t is not None]

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
# NAS-Bench-201 space: AutoDL-Projects cell_operations.py, search_cells.py, search_model_darts.py
# --------------------------------------------------------------------------------------------------
class RefNB201ReLUConvBN(nn.Module):
    def __init__(self, C_in, C_out, k, stride, padding, dilation=1, affine=True, track_running_stats=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, k, stride=stride, padding=padding, dilation=dilation, bias=not affine),
            nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats))

    def forward(self, x):
        return self.op(x)


class RefNB201Pooling(nn.Module):
    def __init__(self, C_in, C_out, stride, affine=True, track_running_stats=True):
        super().__init__()
        self.preprocess = None if C_in == C_out else RefNB201ReLUConvBN(C_in, C_out, 1, 1, 0, 1, affine,
                                                                         track_running_stats)
        self.op = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)

    def forward(self, x):
        return self.op(x if self.preprocess is None else self.preprocess(x))


class RefResNetBasicblock(nn.Module):
    def __init__(self, inplanes, planes, stride, affine=True):
        super().__init__()
        self.conv_a = RefNB201ReLUConvBN(inplanes, planes, 3, stride, 1, 1, affine)
        self.conv_b = RefNB201ReLUConvBN(planes, planes, 3, 1, 1, 1, affine)
        if stride == 2:
            self.downsample = nn.Sequential(nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
                                            nn.Conv2d(inplanes, planes, kernel_size=1, stride=1, padding=0,
                                                      bias=False))
        elif inplanes != planes:
            self.downsample = RefNB201ReLUConvBN(inplanes, planes, 1, 1, 0, 1, affine)
        else:
            self.downsample = None

    def forward(self, x):
        basicblock = self.conv_b(self.conv_a(x))
        residual = x if self.downsample is None else self.downsample(x)
        return residual + basicblock


# Search ops: BatchNorm without affine and without running statistics (what fastnas builds).
REF_NB201_OPS = {
    'none': lambda C: RefZero(1),
    'skip_connect': lambda C: RefIdentity(),
    'nor_conv_1x1': lambda C: RefNB201ReLUConvBN(C, C, 1, 1, 0, 1, False, False),
    'nor_conv_3x3': lambda C: RefNB201ReLUConvBN(C, C, 3, 1, 1, 1, False, False),
    'avg_pool_3x3': lambda C: RefNB201Pooling(C, C, 1, False, False),
}


class RefNB201MixedOp(RefMixedOp):
    """One NB201 edge (stride 1) with PC-DARTS's partial channels: RefMixedOp's forward on NB201 ops."""

    def __init__(self, C, k):
        nn.Module.__init__(self)
        self._ops = nn.ModuleList(REF_NB201_OPS[p](C // k) for p in NB201_PRIMITIVES)
        self.mp = nn.MaxPool2d(2, 2)
        self.k = k


class RefNB201Cell(nn.Module):
    def __init__(self, C, k):
        super().__init__()
        self.edges = nn.ModuleDict({f"{i}<-{j}": RefNB201MixedOp(C, k) for i, j in NB201_EDGES})

    def forward(self, x, weights, weights2):
        nodes, e = [x], 0
        for i in range(1, NB201_NODES):
            inter_nodes = []
            for j in range(i):
                h = self.edges[f"{i}<-{j}"](nodes[j], weights[e])
                inter_nodes.append(h if weights2 is None else weights2[e] * h)
                e += 1
            nodes.append(sum(inter_nodes))
        return nodes[-1]


class RefNB201Network(nn.Module):
    def __init__(self, C, num_classes, N, k, edge_norm):
        super().__init__()
        self.edge_norm = edge_norm
        self.stem = nn.Sequential(nn.Conv2d(3, C, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(C))
        layer_channels = [C] * N + [C * 2] + [C * 2] * N + [C * 4] + [C * 4] * N
        layer_reductions = [False] * N + [True] + [False] * N + [True] + [False] * N
        self.cells = nn.ModuleList()
        C_prev = C
        for C_curr, reduction in zip(layer_channels, layer_reductions):
            self.cells.append(RefResNetBasicblock(C_prev, C_curr, 2) if reduction else RefNB201Cell(C_curr, k))
            C_prev = C_curr
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        self.alphas = (1e-3 * torch.randn(len(NB201_EDGES), len(NB201_PRIMITIVES))).requires_grad_(True)
        self.betas = (1e-3 * torch.randn(len(NB201_EDGES))).requires_grad_(True)

    def arch_parameters(self):
        names = ARCH_NAMES["nb201"] if self.edge_norm else ARCH_NAMES["nb201"][:1]
        return [t for t in (getattr(self, n) for n in names) if t is not None]

    def _weights2(self):
        # softmax of the betas within each node's incoming edges: node 1 has 1 edge, node 2 2, node 3 3
        parts, start = [], 0
        for i in range(1, NB201_NODES):
            parts.append(F.softmax(self.betas[start:start + i], dim=-1))
            start += i
        return torch.cat(parts)

    def forward(self, x):
        weights = F.softmax(self.alphas, dim=-1)
        weights2 = self._weights2() if self.edge_norm else None
        feature = self.stem(x)
        for cell in self.cells:
            feature = cell(feature, weights, weights2) if isinstance(cell, RefNB201Cell) else cell(feature)
        out = self.global_pooling(self.lastact(feature))
        return self.classifier(out.view(out.size(0), -1))


# --------------------------------------------------------------------------------------------------
# One state for fastnas and the reference
# --------------------------------------------------------------------------------------------------
ARCH_NAMES = {"darts": ("alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce"),
              "nb201": ("alphas", "betas")}


def reference_like(net: nn.Module) -> nn.Module:
    """A reference network of the same space and shape as the fastnas ``SearchNetwork`` ``net``, holding
    the same weights, buffers and architecture parameters (on net's device and dtype), in train mode."""
    if net.space == "darts":
        ref = RefNetwork(net._C, net._num_classes, net._layers, net.k, net.edge_norm, steps=net._steps,
                         multiplier=net._multiplier,
                         stem_multiplier=net.stem[0].out_channels // net._C)
    else:
        ref = RefNB201Network(net._C, net._num_classes, net._layers, net.k, net.edge_norm)
    p = next(net.parameters())
    ref = ref.to(device=p.device, dtype=p.dtype)
    load_fastnas_state(ref, net)
    return ref.train(net.training)


def load_fastnas_state(ref: nn.Module, net: nn.Module) -> None:
    """Loads fastnas ``net``'s weights and buffers into ``ref`` (strictly: the names map one to one) and
    sets ref's architecture tensors to detached copies of net's that require grad; an architecture
    parameter net does not have (no edge normalization) becomes None on ref."""
    names = ARCH_NAMES["nb201" if isinstance(ref, RefNB201Network) else "darts"]
    present = [n for n in names if isinstance(getattr(net, n, None), nn.Parameter)]
    ref.load_state_dict({k: v for k, v in net.state_dict().items() if k not in present}, strict=True)
    for n in names:
        setattr(ref, n, getattr(net, n).detach().clone().requires_grad_(True) if n in present else None)


# --------------------------------------------------------------------------------------------------
# The search step: PC-DARTS train_search.py + architect.py (first order)
# --------------------------------------------------------------------------------------------------
def reference_optimizers(model: nn.Module, learning_rate: float = 0.1, momentum: float = 0.9,
                         weight_decay: float = 3e-4, arch_learning_rate: float = 6e-4,
                         arch_weight_decay: float = 1e-3) -> Tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """(w_optimizer, a_optimizer) as PC-DARTS builds them: SGD on ``model.parameters()`` (the weights
    alone: the architecture tensors are not registered) and Adam(betas (0.5, 0.999)) on
    ``model.arch_parameters()``."""
    w_optimizer = torch.optim.SGD(model.parameters(), learning_rate, momentum=momentum, weight_decay=weight_decay)
    a_optimizer = torch.optim.Adam(model.arch_parameters(), lr=arch_learning_rate, betas=(0.5, 0.999),
                                   weight_decay=arch_weight_decay)
    return w_optimizer, a_optimizer


def reference_search_step(model: nn.Module, w_optimizer: torch.optim.Optimizer, a_optimizer: torch.optim.Optimizer,
                          x_w: torch.Tensor, y_w: torch.Tensor, x_a: torch.Tensor, y_a: torch.Tensor,
                          grad_clip: float = 5.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """One PC-DARTS search step: architect.step (first order), then the weight update.

    x_w, x_a (B, 3, H, W); y_w, y_a (B,) int64. ``model`` may be a ``torch.compile``d reference (its
    ``parameters()`` and ``arch_parameters`` reach the original module). Returns the weight batch's
    (loss, correct) as detached 0-d device tensors; like fastnas's SearchStep it reads nothing back to
    the host (PC-DARTS's ``.item()`` per step is bookkeeping, left out of both).
    """
    # architect.step -> _backward_step: the loss gradient of EVERY leaf (weights included) is computed;
    # only the architecture's is used (the weight gradients are zeroed below before the weight step).
    a_optimizer.zero_grad()
    loss = F.cross_entropy(model(x_a), y_a)
    loss.backward()
    a_optimizer.step()
    # train(): the weight step; its backward also accumulates architecture gradients, which the next
    # architecture step zeroes.
    w_optimizer.zero_grad()
    logits = model(x_w)
    loss = F.cross_entropy(logits, y_w)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    w_optimizer.step()
    return loss.detach(), (logits.detach().argmax(1) == y_w).sum()
