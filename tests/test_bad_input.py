"""Bad input gets a clear error naming the problem, and a rejected call writes nothing to `out`."""
import pytest
import torch

from fastnas.ops import channel_shuffle, edge_normalize, partial_channel_mix

B, C, H, W, K = 2, 16, 4, 4, 4
CP = C // K


def _good():
    ops = [None] + [torch.randn(B, CP, H, W) for _ in range(3)]
    return dict(op_outputs=ops, weights=torch.softmax(torch.randn(4), 0),
                bypass=torch.randn(B, C - CP, H, W), groups=K)


def _with(**changes):
    kwargs = _good()
    kwargs.update(changes)
    return kwargs


BAD_MIX = [
    pytest.param(_with(groups=3), ValueError, "not divisible by groups", id="channels-not-divisible"),
    pytest.param(_with(groups=0), ValueError, "groups must be >= 1", id="groups-zero"),
    pytest.param(_with(groups=2.0), TypeError, "groups must be an int", id="groups-float"),
    pytest.param(_with(op_outputs=[torch.randn(B, CP, H, W), torch.randn(B, CP, H, W + 1)]), ValueError,
                 "share one shape", id="op-shapes-differ"),
    pytest.param(_with(weights=torch.ones(3)), ValueError, r"weights must have shape \(4,\)", id="weights-length"),
    pytest.param(_with(weights=torch.ones(2, 2)), ValueError, "weights must have shape", id="weights-2d"),
    pytest.param(_with(weights=torch.ones(4, dtype=torch.int64)), TypeError, "floating-point", id="weights-int"),
    pytest.param(_with(bypass=torch.randn(B, C - CP, H + 1, W)), ValueError, "bypass must have shape",
                 id="bypass-spatial"),
    pytest.param(_with(bypass=torch.randn(B + 1, C - CP, H, W)), ValueError, "bypass must have shape",
                 id="bypass-batch"),
    pytest.param(_with(bypass=torch.randn(B, C - CP, H)), ValueError, "bypass must be 4-D", id="bypass-3d"),
    pytest.param(_with(bypass=torch.randn(B, C - CP, H, W).double()), TypeError, "dtype", id="mixed-dtypes"),
    pytest.param(_with(op_outputs=[torch.randn(B, CP, H, W), torch.randn(B, CP, H, W).half()]), TypeError,
                 "dtype", id="op-dtypes-differ"),
    pytest.param(_with(op_outputs=[torch.randn(B, CP, H, W), torch.randn(B, CP, H, W, device="meta")]),
                 RuntimeError, "one device", id="mixed-devices"),
    pytest.param(_with(op_outputs=[torch.ones(B, CP, H, W, dtype=torch.int32)]), TypeError, "floating-point",
                 id="integer-data"),
    pytest.param(_with(op_outputs=torch.randn(3, B, CP, H, W)), TypeError, "list or tuple", id="ops-not-a-list"),
    pytest.param(_with(op_outputs=[None, None]), ValueError, "at least one op output", id="all-none-no-out"),
    pytest.param(_with(op_outputs=["x"]), TypeError, "must be a torch.Tensor", id="op-not-a-tensor"),
    pytest.param(_with(edge_weight=torch.ones(2)), ValueError, "edge_weight must hold one element",
                 id="edge-weight-shape"),
]


@pytest.mark.parametrize("backend", ["torch", None])
@pytest.mark.parametrize("kwargs,error,message", BAD_MIX)
def test_partial_channel_mix_rejects(kwargs, error, message, backend):
    with pytest.raises(error, match=message):
        partial_channel_mix(**kwargs, backend=backend)


@pytest.mark.parametrize("backend", ["torch", None])
@pytest.mark.parametrize("out,message", [
    pytest.param(torch.zeros(B, C + 1, H, W), "out must have shape", id="out-channels"),
    pytest.param(torch.zeros(B, C, H, W, dtype=torch.float64), "dtype", id="out-dtype"),
    pytest.param(torch.zeros(B, C, H, W, requires_grad=True), "leaf tensor that requires grad", id="out-leaf"),
    pytest.param(torch.zeros(B, C, H, W, requires_grad=True)[:, :], "view of a leaf tensor", id="out-view-of-leaf"),
    pytest.param(torch.zeros(1, C, H, W).expand(B, C, H, W), "out has overlapping elements", id="out-expanded"),
])
def test_rejected_call_leaves_out_untouched(out, message, backend):
    before = out.detach().clone()
    with pytest.raises((ValueError, TypeError), match=message):
        partial_channel_mix(**_with(out=out), backend=backend)
    assert torch.equal(out.detach(), before)


@pytest.mark.parametrize("backend", ["torch", None])
def test_a_leaf_out_is_accumulated_into_under_no_grad(backend):
    """As torch allows ``leaf.add_(...)`` under no_grad; the accumulator itself is returned."""
    kwargs = _good()
    want = partial_channel_mix(**kwargs, backend="torch") + 1
    out = torch.ones(B, C, H, W, requires_grad=True)
    with torch.no_grad():
        y = partial_channel_mix(**kwargs, out=out, backend=backend)
    assert y is out
    torch.testing.assert_close(out.detach(), want)


def test_out_aliasing_an_input_is_rejected():
    kwargs = _good()
    out = torch.zeros(B, C, H, W)
    kwargs["bypass"] = out[:, CP:]
    with pytest.raises(ValueError, match="shares memory"):
        partial_channel_mix(**kwargs, out=out)


def test_channel_shuffle_rejects():
    with pytest.raises(ValueError, match=r"channels of x \(6\) is not divisible by groups \(4\)"):
        channel_shuffle(torch.randn(1, 6, 2, 2), 4)
    with pytest.raises(ValueError, match="4-D"):
        channel_shuffle(torch.randn(6, 2, 2), 2)
    with pytest.raises(TypeError, match="torch.Tensor"):
        channel_shuffle([1, 2], 2)


def test_edge_normalize_rejects():
    x = torch.randn(1, 4, 2, 2)
    with pytest.raises(ValueError, match="non-empty"):
        edge_normalize([], torch.ones(0))
    with pytest.raises(ValueError, match=r"betas must have shape \(2,\)"):
        edge_normalize([x, x], torch.ones(3))
    with pytest.raises(ValueError, match="share one shape"):
        edge_normalize([x, torch.randn(1, 4, 2, 3)], torch.ones(2))
    with pytest.raises(TypeError, match="dtype"):
        edge_normalize([x, x.double()], torch.ones(2))
