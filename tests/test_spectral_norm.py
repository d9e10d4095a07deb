"""Spectral normalisation of convolutions as operators (MSR-DARTS's candidate convs): the normalised
conv's largest singular value, as the zero-padded operator the network runs, is 1; the power iteration
advances only in training forwards with grad; the stable rank does not see the normalisation."""
import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from fastnas.nn.operations import DilConv, SepConv
from fastnas.nn.spectral_norm import OperatorSpectralNorm, operator_spectral_norm
from fastnas.search.stable_rank import op_conv_chain, op_stable_rank

D = torch.float64


def _operator_matrix(conv: nn.Conv2d, c: int, h: int, w: int) -> torch.Tensor:
    """The conv (zero padding, no bias) as an explicit (out numel, in numel) matrix, column by column."""
    basis = torch.eye(c * h * w, dtype=D).view(-1, c, h, w)
    with torch.no_grad():
        out = nn.functional.conv2d(basis, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return out.flatten(1).T


CONVS = {
    "3x3": (lambda: nn.Conv2d(2, 3, 3, 1, 1, bias=False), (2, 5, 5)),
    "depthwise_5x5_s2": (lambda: nn.Conv2d(3, 3, 5, 2, 2, groups=3, bias=False), (3, 8, 8)),
    "depthwise_5x5_s2_odd": (lambda: nn.Conv2d(3, 3, 5, 2, 2, groups=3, bias=False), (3, 7, 9)),
    "dilated_3x3_s2": (lambda: nn.Conv2d(2, 2, 3, 2, 2, dilation=2, groups=2, bias=False), (2, 8, 6)),
    "pointwise": (lambda: nn.Conv2d(4, 3, 1, bias=False), (4, 5, 5)),
}


@pytest.mark.parametrize("name", sorted(CONVS))
def test_normalised_conv_has_operator_norm_one(name):
    factory, shape = CONVS[name]
    torch.manual_seed(0)
    conv = factory().to(D)
    sv = torch.linalg.svdvals(_operator_matrix(conv, *shape))
    assert abs(sv[0] - 1) > 0.1   # the test means something
    # power iteration converges as (sv[1] / sv[0])^2 per step: the cases keep that below 0.96^2
    assert sv[1] / sv[0] < 0.98 or sv[1] == sv[0]
    operator_spectral_norm(conv, shape, n_power_iterations=5)
    for _ in range(40):            # 200 power iterations, as 40 training forwards would run them
        conv.weight
    top = torch.linalg.svdvals(_operator_matrix(conv, *shape))[0]
    torch.testing.assert_close(top, torch.tensor(1.0, dtype=D), atol=1e-4, rtol=0)
    x = torch.randn(2, *shape, dtype=D)
    assert conv(x).shape[1:] == nn.functional.conv2d(x, conv.parametrizations.weight.original, None, conv.stride,
                                                     conv.padding, conv.dilation, conv.groups).shape[1:]


def test_power_iteration_advances_only_in_training_forwards_with_grad():
    torch.manual_seed(1)
    conv = operator_spectral_norm(nn.Conv2d(2, 2, 3, 1, 1, bias=False), (2, 5, 5))
    sn = conv.parametrizations.weight[0]
    u0 = sn.u.clone()
    with torch.no_grad():
        conv.weight
    assert torch.equal(sn.u, u0)
    conv.eval()
    conv.weight
    assert torch.equal(sn.u, u0)
    conv.train()
    conv.weight
    assert not torch.equal(sn.u, u0)


def test_gradient_reaches_the_original_weight_through_sigma():
    """d/dW of (W / sigma(W)) . G: sigma depends on W, so the gradient is not G / sigma alone."""
    torch.manual_seed(2)
    conv = operator_spectral_norm(nn.Conv2d(2, 3, 3, 1, 1, bias=False).to(D), (2, 4, 4), n_power_iterations=50)
    conv.weight  # converge
    sn = conv.parametrizations.weight[0]
    original = conv.parametrizations.weight.original
    g = torch.randn_like(original)
    with torch.no_grad():
        u, v = sn.u.clone(), sn.v.clone()
    conv.eval()   # no further power iteration: u, v fixed, as the closed form below assumes
    (conv.weight * g).sum().backward()

    def f(w):
        sigma = torch.dot(u, nn.functional.conv2d(v.view(1, 2, 4, 4), w, None, 1, 1).flatten())
        return (w / (sigma + 1e-5) * g).sum()

    expected = torch.autograd.functional.jacobian(f, original.detach())
    torch.testing.assert_close(original.grad, expected)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="input_shape has 3 channels, the conv takes 2"):
        OperatorSpectralNorm(nn.Conv2d(2, 2, 3), (3, 5, 5))
    with pytest.raises(ValueError, match="too small"):
        OperatorSpectralNorm(nn.Conv2d(2, 2, 5), (2, 3, 3))
    with pytest.raises(TypeError, match="numeric padding"):
        OperatorSpectralNorm(nn.Conv2d(2, 2, 3, padding="same"), (2, 5, 5))


@pytest.mark.parametrize("operator", ["last_conv", "chain"])
def test_stable_rank_is_blind_to_the_normalisation(operator):
    """The stable rank is scale-free: a normalised op scores as the op does, and the chain read from a
    parametrized op is its normalised convs in order."""
    torch.manual_seed(3)
    for op, size in ((SepConv(4, 4, 3, 2, 1, affine=False), 8), (DilConv(3, 3, 5, 1, 4, 2, affine=True), 8)):
        op = op.to(D).train()
        for m in op.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data.normal_()
            elif isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.0   # the training forward below must not move the folded BN scales
        plain = op_stable_rank(op, size, operator)
        h = size
        for conv in [m for m in op.modules() if isinstance(m, nn.Conv2d)]:
            operator_spectral_norm(conv, (conv.in_channels, h, h))
            h //= conv.stride[0]
        c_in = next(m for m in op.modules() if isinstance(m, nn.Conv2d)).in_channels
        op(torch.randn(2, c_in, size, size, dtype=D))   # a training forward: the weights are now normalised
        chain = op_conv_chain(op)
        assert len(chain) == sum(isinstance(m, nn.Conv2d) for m in op.modules())
        assert all(parametrize.is_parametrized(m) for m in op.modules() if isinstance(m, nn.Conv2d))
        assert op_stable_rank(op, size, operator) == pytest.approx(plain, rel=1e-9)
