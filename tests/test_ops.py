"""Every fused backend against the pure-PyTorch reference, forward and every gradient.

Inputs are drawn in float64, cast to the dtype under test; the reference runs in float64 on the same
(cast) values, and both receive the same random upstream gradient.
"""
from dataclasses import dataclass, field
from typing import Tuple

import pytest
import torch

from fastnas.ops import (channel_shuffle, channel_shuffle_ref, edge_normalize, edge_normalize_ref,
                         partial_channel_mix, partial_channel_mix_ref)
from helpers import FUSED, assert_close, require_backend


@dataclass(frozen=True)
class MixCase:
    B: int = 2
    C: int = 16
    H: int = 8
    W: int = 8
    K: int = 4                      # shuffle groups = partial-channel factor
    n_ops: int = 8
    omitted: Tuple[int, ...] = (0,)  # op outputs passed as None (`none`)
    edge_weight: bool = True
    accumulate: bool = False        # pass `out`
    layout: str = "contiguous"      # contiguous | channels_last | sliced | transposed
    out_layout: str = "contiguous"  # contiguous | strided (H, W not mergeable)
    mixed: int = field(default=0)   # op-output channels; 0 -> C // K (PC-DARTS)


MIX_CASES = [
    pytest.param(MixCase(), id="pcdarts-k4-n8"),
    pytest.param(MixCase(B=1, C=24, H=7, W=7), id="b1-c24-hw7-k4"),
    pytest.param(MixCase(K=1, n_ops=8), id="k1-plain-darts"),
    pytest.param(MixCase(K=2, n_ops=2, omitted=()), id="k2-n2"),
    pytest.param(MixCase(C=24, K=8, n_ops=5, omitted=(1, 3), accumulate=True), id="k8-n5-out"),
    pytest.param(MixCase(C=24, H=7, W=7, n_ops=3, omitted=(1,), edge_weight=False), id="k4-n3-omit-middle-no-ew"),
    pytest.param(MixCase(n_ops=4, omitted=(0, 1, 2, 3), accumulate=True), id="all-omitted-out"),
    pytest.param(MixCase(B=3, C=24, H=5, W=5, layout="channels_last", accumulate=True), id="channels-last"),
    pytest.param(MixCase(C=24, H=7, W=7, layout="sliced"), id="sliced-inputs"),
    pytest.param(MixCase(C=16, H=6, W=5, layout="transposed", n_ops=6), id="transposed-views"),
    pytest.param(MixCase(C=12, K=3, H=4, W=4, out_layout="strided", accumulate=True), id="strided-out"),
    pytest.param(MixCase(C=20, K=4, mixed=7, H=3, W=9, n_ops=7), id="general-cm7-cb13"),
    pytest.param(MixCase(C=32, K=8, H=2, W=2, n_ops=8, omitted=()), id="k8-hw2"),
]


def _layout(t, layout):
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":  # H and W swapped in memory: flatten(2) cannot be a view
        return t.transpose(2, 3).contiguous().transpose(2, 3)
    if layout == "sliced":  # a channel slice of a bigger tensor, like x[:, :C//K] in PC-DARTS
        big = torch.zeros(t.shape[0], t.shape[1] + 3, *t.shape[2:], dtype=t.dtype)
        big[:, 2:2 + t.shape[1]] = t
        return big[:, 2:2 + t.shape[1]]
    return t


def _mix_inputs(case: MixCase, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    cm = case.mixed or case.C // case.K
    cb = case.C - cm
    shape = (case.B, cm, case.H, case.W)
    ops = [None if i in case.omitted else torch.randn(shape, generator=g, dtype=torch.float64)
           for i in range(case.n_ops)]
    weights = torch.softmax(torch.randn(case.n_ops, generator=g, dtype=torch.float64), 0)
    bypass = torch.randn(case.B, cb, case.H, case.W, generator=g, dtype=torch.float64) if cb else None
    ew = torch.rand((), generator=g, dtype=torch.float64) + 0.5 if case.edge_weight else None
    out = torch.randn(case.B, case.C, case.H, case.W, generator=g, dtype=torch.float64) if case.accumulate else None
    grad = torch.randn(case.B, case.C, case.H, case.W, generator=g, dtype=torch.float64)

    def make(t, layout=case.layout, leaf=True):
        if t is None:
            return None
        t = _layout(t.to(dtype).to(device), layout)
        return t.requires_grad_() if leaf else t

    ops_t = [make(o) for o in ops]
    w_t = weights.float().to(device).requires_grad_()  # fp32 weights, as under autocast
    if dtype == torch.float64:
        w_t = weights.to(device).requires_grad_()
    bypass_t = make(bypass)
    ew_t = ew.to(w_t.dtype).to(device).requires_grad_() if ew is not None else None
    out_t = None
    if out is not None:
        out_leaf = out.to(dtype).to(device).requires_grad_()
        if case.out_layout == "strided":  # a window of a padded tensor: H and W cannot be merged
            out_t = torch.nn.functional.pad(out_leaf, (0, 1, 0, 1))[:, :, :case.H, :case.W]
        else:
            out_t = _layout(out_leaf * 1.0, case.layout)  # non-leaf accumulator that carries a gradient
    else:
        out_leaf = None
    return ops_t, w_t, bypass_t, ew_t, out_t, out_leaf, grad.to(dtype).to(device)


def _leaves(ops, w, bypass, ew, out_leaf):
    return [o for o in ops if o is not None] + [w] + [t for t in (bypass, ew, out_leaf) if t is not None]


def _run_mix(case, backend, dtype, device):
    ops, w, bypass, ew, out, out_leaf, grad = _mix_inputs(case, dtype, device)
    y = partial_channel_mix(ops, w, bypass, case.K, edge_weight=ew, out=out, backend=backend)
    if out is not None:
        assert y is out, "the accumulator must be returned"
    leaves = _leaves(ops, w, bypass, ew, out_leaf)
    # all-omitted case: the reference never touches the weights, so their gradient is a zero
    grads = torch.autograd.grad(y, leaves, grad, allow_unused=True, materialize_grads=True)
    return y.detach(), grads


@pytest.mark.parametrize("case", MIX_CASES)
@pytest.mark.parametrize("backend,device", FUSED)
def test_partial_channel_mix_matches_reference(case, backend, device):
    require_backend(backend, device)
    y, grads = _run_mix(case, backend, torch.float32, device)
    y_ref, grads_ref = _run_mix(case, "torch", torch.float64, "cpu")
    assert_close(y.cpu(), y_ref, torch.float32, "forward")
    names = [f"op{i}" for i in range(case.n_ops) if i not in case.omitted] + ["weights", "bypass", "edge_weight", "out"]
    for name, g, g_ref in zip(names, grads, grads_ref):
        assert_close(g.cpu(), g_ref, torch.float32, f"grad {name}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", [MIX_CASES[0], MIX_CASES[7]])
@pytest.mark.parametrize("backend,device", [p for p in FUSED if p.values[1] == "cuda"] + [FUSED[1]])
def test_partial_channel_mix_half_precision(case, backend, device, dtype):
    require_backend(backend, device, dtype)
    y, grads = _run_mix(case, backend, dtype, device)
    y_ref, grads_ref = _run_mix(case, "torch", torch.float64, "cpu")
    assert y.dtype == dtype
    assert_close(y.cpu(), y_ref, dtype, "forward")
    for g, g_ref in zip(grads, grads_ref):
        assert_close(g.cpu().float(), g_ref, dtype, "grad")


def test_reference_matches_the_design_formula():
    """The reference equals DESIGN.md's literal formula (view/transpose shuffle of a cat)."""
    torch.manual_seed(0)
    B, C, H, W, K = 2, 16, 3, 3, 4
    ops = [torch.randn(B, C // K, H, W) for _ in range(3)]
    w = torch.softmax(torch.randn(3), 0)
    x = torch.randn(B, C, H, W)
    mixed = sum(w[i] * ops[i] for i in range(3))
    cat = torch.cat([mixed, x[:, C // K:]], 1)
    expected = cat.view(B, K, C // K, H, W).transpose(1, 2).contiguous().view(B, C, H, W)
    torch.testing.assert_close(partial_channel_mix_ref(ops, w, x[:, C // K:], K), expected)
    # output channel j*K + r holds input channel r*(C//K) + j: the op channels land at stride K
    torch.testing.assert_close(expected[:, ::K], mixed)


SHUFFLE_CASES = [
    pytest.param((2, 16, 4, 4, 4, "contiguous"), id="c16-g4"),
    pytest.param((1, 24, 7, 7, 8, "contiguous"), id="b1-c24-g8"),
    pytest.param((2, 12, 3, 5, 1, "contiguous"), id="g1-identity"),
    pytest.param((2, 12, 3, 5, 12, "channels_last"), id="g12-channels-last"),
    pytest.param((3, 18, 4, 4, 3, "sliced"), id="g3-sliced"),
    pytest.param((2, 8, 4, 6, 2, "transposed"), id="g2-transposed"),
]


@pytest.mark.parametrize("shape", SHUFFLE_CASES)
@pytest.mark.parametrize("backend,device", FUSED)
def test_channel_shuffle_matches_reference(shape, backend, device):
    require_backend(backend, device)
    B, C, H, W, g, layout = shape
    base = torch.randn(B, C, H, W, dtype=torch.float64)
    grad = torch.randn(B, C, H, W, dtype=torch.float64)
    x = _layout(base.float().to(device), layout).requires_grad_()
    y = channel_shuffle(x, g, backend=backend)
    (gx,) = torch.autograd.grad(y, x, grad.float().to(device))
    x_ref = base.clone().requires_grad_()
    y_ref = channel_shuffle_ref(x_ref, g)
    (gx_ref,) = torch.autograd.grad(y_ref, x_ref, grad)
    assert_close(y.detach().cpu(), y_ref.detach(), torch.float32, "forward")
    assert_close(gx.cpu(), gx_ref, torch.float32, "grad x")
    # backward is the inverse shuffle: shuffling by C // g undoes shuffling by g
    torch.testing.assert_close(channel_shuffle_ref(y_ref.detach(), C // g), base)


NORM_CASES = [
    pytest.param((2, 16, 4, 4, 2, "contiguous"), id="e2"),
    pytest.param((1, 24, 7, 7, 5, "contiguous"), id="b1-c24-e5"),
    pytest.param((2, 8, 3, 3, 4, "channels_last"), id="e4-channels-last"),
    pytest.param((2, 8, 3, 5, 3, "sliced"), id="e3-sliced"),
    pytest.param((2, 4, 3, 3, 1, "contiguous"), id="e1"),
]


@pytest.mark.parametrize("shape", NORM_CASES)
@pytest.mark.parametrize("backend,device", FUSED)
def test_edge_normalize_matches_reference(shape, backend, device):
    require_backend(backend, device)
    B, C, H, W, E, layout = shape
    xs = [torch.randn(B, C, H, W, dtype=torch.float64) for _ in range(E)]
    betas = torch.randn(E, dtype=torch.float64)
    grad = torch.randn(B, C, H, W, dtype=torch.float64)
    xs_t = [_layout(x.float().to(device), layout).requires_grad_() for x in xs]
    b_t = betas.float().to(device).requires_grad_()
    y = edge_normalize(xs_t, b_t, backend=backend)
    grads = torch.autograd.grad(y, xs_t + [b_t], grad.float().to(device))
    xs_r = [x.clone().requires_grad_() for x in xs]
    b_r = betas.clone().requires_grad_()
    y_r = edge_normalize_ref(xs_r, b_r)
    grads_r = torch.autograd.grad(y_r, xs_r + [b_r], grad)
    assert_close(y.detach().cpu(), y_r.detach(), torch.float32, "forward")
    for i, (g, g_r) in enumerate(zip(grads, grads_r)):
        assert_close(g.cpu(), g_r, torch.float32, f"grad {i}")


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_gradcheck_float64(backend):
    require_backend(backend, "cpu", torch.float64)
    torch.manual_seed(0)
    B, C, H, W, K = 2, 8, 3, 3, 4
    ops = [torch.randn(B, C // K, H, W, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    bypass = torch.randn(B, C - C // K, H, W, dtype=torch.float64, requires_grad=True)
    ew = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    acc = torch.randn(B, C, H, W, dtype=torch.float64, requires_grad=True)

    def mix(o0, o1, o2, w, bypass, ew, acc):
        return partial_channel_mix([o0, None, o1, o2], w, bypass, K, edge_weight=ew, out=acc * 1.0, backend=backend)

    assert torch.autograd.gradcheck(mix, (*ops, w, bypass, ew, acc))
    x = torch.randn(B, C, H, W, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: channel_shuffle(x, 4, backend=backend), (x,))
    betas = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c, betas: edge_normalize([a, b, c], betas, backend=backend),
                                    (*ops, betas))


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_gradgradcheck_float64(backend):
    """Double backward (DARTS's exact Hessian-vector products, the Hessian eigenvalue of collapse
    monitoring) through every input, with an accumulated ``out`` and an omitted op."""
    require_backend(backend, "cpu", torch.float64)
    torch.manual_seed(0)
    B, C, H, W, K = 2, 4, 2, 3, 2
    ops = [torch.randn(B, C // K, H, W, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    bypass = torch.randn(B, C - C // K, H, W, dtype=torch.float64, requires_grad=True)
    ew = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    acc = torch.randn(B, C, H, W, dtype=torch.float64, requires_grad=True)

    def mix(o0, o1, w, bypass, ew, acc):
        return partial_channel_mix([o0, None, o1], w, bypass, K, edge_weight=ew, out=acc * 1.0, backend=backend)

    assert torch.autograd.gradgradcheck(mix, (*ops, w, bypass, ew, acc))
    betas = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a, b, betas: edge_normalize([a, b], betas, backend=backend),
                                        (*ops, betas))


@pytest.mark.parametrize("backend,device", FUSED)
def test_double_backward_with_dependent_op_outputs(backend, device):
    """One op output computed from another (a skip op's tensor and a conv of it, as in a cell): the
    second derivatives must not add the paths between the op outputs. An earlier version differentiated
    a recomputed forward and got the first-order gradients wrong under create_graph."""
    dtype = torch.float64 if backend == "cpu" else torch.float32
    require_backend(backend, device, dtype)
    torch.manual_seed(0)
    a = torch.randn(2, 2, dtype=dtype, device=device, requires_grad=True)
    kernel = torch.randn(4, 4, 1, 1, dtype=dtype, device=device, requires_grad=True)
    x = torch.randn(2, 4, 3, 3, dtype=dtype, device=device)

    def second_derivative(name):
        w = torch.softmax(a, -1)
        n1 = partial_channel_mix([x, torch.nn.functional.conv2d(x, kernel)], w[0], None, 1, backend=name)
        n2 = partial_channel_mix([n1, torch.nn.functional.conv2d(n1, kernel)], w[1], None, 1, backend=name)
        g, = torch.autograd.grad((n2.tanh() ** 2).sum(), [kernel], create_graph=True)
        return g.detach(), torch.autograd.grad((g ** 2).sum(), [a])[0]

    (g, h), (g_ref, h_ref) = second_derivative(backend), second_derivative("torch")
    assert_close(g, g_ref, dtype, "first-order gradient under create_graph")
    assert_close(h, h_ref, dtype, "second derivative")


@pytest.mark.parametrize("backend,device", FUSED[:1] + FUSED[2:3])
def test_accumulating_a_node_over_edges(backend, device):
    """The search-engine pattern: a node accumulated over several edges with per-edge weights."""
    require_backend(backend, device)
    torch.manual_seed(1)
    B, C, H, W, K = 2, 16, 4, 4, 4
    xs = [torch.randn(B, C, H, W, device=device, requires_grad=True) for _ in range(3)]
    betas = torch.randn(3, device=device, requires_grad=True)
    alphas = torch.randn(3, 4, device=device, requires_grad=True)

    def node(backend):
        edge_w = torch.softmax(betas, 0)
        total = None
        for e, x in enumerate(xs):
            ops = [None, x[:, :C // K] * 2, torch.relu(x[:, :C // K]), x[:, :C // K]]
            total = partial_channel_mix(ops, torch.softmax(alphas[e], 0), x[:, C // K:], K,
                                        edge_weight=edge_w[e], out=total, backend=backend)
        return total

    grad = torch.randn(B, C, H, W, device=device)
    y = node(backend)
    got = torch.autograd.grad(y, xs + [betas, alphas], grad)
    y_ref = node("torch")
    want = torch.autograd.grad(y_ref, xs + [betas, alphas], grad)
    assert_close(y.detach(), y_ref.detach(), torch.float32, "node")
    for g, g_ref in zip(got, want):
        assert_close(g, g_ref, torch.float32, "grad")
