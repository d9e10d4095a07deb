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
from fastnas.ops.backends import BACKENDS
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
    weights_layout: str = "contiguous"  # contiguous | strided (a column of a matrix) | expanded (stride 0)


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
    pytest.param(MixCase(omitted=(2,), weights_layout="strided"), id="strided-weights"),
    pytest.param(MixCase(C=24, H=7, W=7, n_ops=5, accumulate=True, weights_layout="expanded"),
                 id="expanded-weights"),
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
    if case.weights_layout == "strided":  # e.g. softmax(alphas, 0)[:, edge]: stride 3
        matrix = torch.zeros(case.n_ops, 3, dtype=w_t.dtype, device=device)
        matrix[:, 1] = w_t.detach()
        w_t = matrix.requires_grad_()[:, 1]
    elif case.weights_layout == "expanded":  # one shared weight, stride 0
        w_t = w_t.detach()[:1].clone().requires_grad_().expand(case.n_ops)
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


@pytest.mark.parametrize("create_graph", [False, True], ids=["fused-backward", "double-backward-path"])
@pytest.mark.parametrize("backend,device", FUSED)
def test_an_omitted_ops_weight_takes_no_part(backend, device, create_graph):
    """An omitted op's weight may be anything, inf included: like the reference, no value or gradient
    depends on it (the edge weight's gradient once summed ``0 * inf`` into NaN)."""
    require_backend(backend, device)

    def run(backend):
        g = torch.Generator().manual_seed(3)
        ops = [None, torch.randn(2, 4, 4, 4, generator=g), None, torch.randn(2, 4, 4, 4, generator=g)]
        ops = [None if o is None else o.to(device).requires_grad_() for o in ops]
        bypass = torch.randn(2, 12, 4, 4, generator=g).to(device).requires_grad_()
        weights = torch.tensor([float("inf"), 0.3, float("nan"), 0.5], device=device, requires_grad=True)
        ew = torch.tensor(0.7, device=device, requires_grad=True)
        y = partial_channel_mix(ops, weights, bypass, 4, edge_weight=ew, backend=backend)
        leaves = [ops[1], ops[3], bypass, weights, ew]
        grads = torch.autograd.grad(y, leaves, torch.ones_like(y), create_graph=create_graph,
                                    materialize_grads=True)
        return y, grads

    y, grads = run(backend)
    y_ref, grads_ref = run("torch")
    assert_close(y.detach().cpu(), y_ref.detach(), torch.float32, "forward")
    for name, g, g_ref in zip(["op1", "op3", "bypass", "weights", "edge_weight"], grads, grads_ref):
        assert torch.isfinite(g).all(), name
        assert_close(g.detach().cpu(), g_ref.detach(), torch.float32, f"grad {name}")


@pytest.mark.parametrize("backend,device", [pytest.param("torch", "cpu", id="torch")] + FUSED)
def test_edge_weight_forms_give_the_data_shape_and_dtype(backend, device):
    """A Python number is taken at the data's precision; a one-element tensor of any shape or float
    dtype scales like a 0-d one: the result keeps the data's shape and dtype on every backend."""
    require_backend(backend, device)
    g = torch.Generator().manual_seed(4)
    ops = [torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64).to(device) for _ in range(2)]
    bypass = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64).to(device)
    weights = torch.tensor([0.25, 0.75], dtype=torch.float64, device=device)
    if BACKENDS[backend].why_not(torch.device(device), torch.float64) == "":
        exact = partial_channel_mix(ops, weights, bypass, 2, edge_weight=0.1, backend=backend)
        want = partial_channel_mix_ref(ops, weights, bypass, 2, torch.tensor(0.1, dtype=torch.float64))
        assert exact.dtype == torch.float64
        assert torch.equal(exact.cpu(), want.cpu()), "0.1 was not taken in float64"
    ops32, bypass32, weights32 = [o.float() for o in ops], bypass.float(), weights.float()
    want = partial_channel_mix_ref(ops32, weights32, bypass32, 2, torch.tensor(0.5))
    for shape in [(1,), (1, 1, 1, 1, 1)]:
        for ew_dtype in [torch.float32, torch.float64]:
            ew = torch.full(shape, 0.5, dtype=ew_dtype, device=device, requires_grad=True)
            y = partial_channel_mix(ops32, weights32, bypass32, 2, edge_weight=ew, backend=backend)
            assert (tuple(y.shape), y.dtype) == ((2, 8, 3, 3), torch.float32), (shape, ew_dtype)
            assert_close(y.detach().cpu(), want, torch.float32, f"edge weight {shape} {ew_dtype}")
            (grad,) = torch.autograd.grad(y.sum(), ew)
            assert grad.shape == ew.shape and grad.dtype == ew_dtype


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend,device", FUSED)
def test_without_weight_gradients_the_op_outputs_are_not_kept(backend, device, layout):
    """Fixed mixing weights (e.g. the search's weight step, which freezes the architecture): the op
    outputs and the bypass are read by no gradient, so the node keeps none of them, an in-place change
    to them afterwards is harmless (as in the reference), and every gradient still matches."""
    require_backend(backend, device)

    def run(backend):
        g = torch.Generator().manual_seed(5)
        x = _layout(torch.randn(2, 16, 5, 5, generator=g), layout).to(device).requires_grad_()
        ops = [None, x[:, :4] * 2, torch.relu(x[:, :4]), x[:, :4].sigmoid()]
        weights = torch.softmax(torch.randn(4, generator=g), 0).to(device)
        y = partial_channel_mix(ops, weights, x[:, 4:] * 1.0, 4, edge_weight=0.5, backend=backend)
        ops[1].mul_(3)          # the reference keeps no op output for these weights either
        kept = len(y.grad_fn.saved_tensors) if backend != "torch" else None
        upstream = torch.randn(y.shape, generator=g).to(device)
        return y, torch.autograd.grad(y, x, upstream)[0], kept

    y, grad, kept = run(backend)
    assert kept == 3, "only the weights, no bypass, and the edge weight"
    y_ref, grad_ref, _ = run("torch")
    assert_close(y.detach().cpu(), y_ref.detach(), torch.float32, "forward")
    assert_close(grad.cpu(), grad_ref, torch.float32, "grad x")
