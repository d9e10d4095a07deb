"""The gradient-based proxies (fastnas/proxies/gradient.py): closed forms on tiny networks, equality with
the paper-style references (benchmarks/reference_gradient_proxies.py) on NB201 networks, degenerate
architectures, determinism, hook cleanup, bad input, and (slow) rank parity with NAS-Bench-Suite-Zero.
"""
import copy
import csv
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from fastnas.nn.networks import NB201Network
from fastnas.proxies import gradient as G
from fastnas.proxies.registry import get_proxy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from reference_gradient_proxies import REFERENCE_PROXIES  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NAMES = ["synflow", "snip", "grasp", "fisher", "jacov", "grad_norm"]
K = G.JACOV_K
LN3 = math.log(3.0)

ALL_NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
MIXED = "|nor_conv_3x3~0|+|avg_pool_3x3~0|nor_conv_1x1~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def _nb201(arch, seed=0):
    torch.manual_seed(seed)
    return NB201Network(arch, C=8, N=1).train()


# --------------------------------------------------------------------------------------------------
# Closed forms
# --------------------------------------------------------------------------------------------------
def test_synflow_two_layer_linear_closed_form():
    # R = 1^T |W2| |W1| 1 on an all-ones input; each weight's |theta dR/dtheta| is one path's product, and
    # each path crosses both layers, so the score is 2R. |W1| row sums 6 and 4, |W2| = (0.5, 2): R = 11.
    # The BN between the layers (weight 5, bias 3) must be bypassed, the input values ignored.
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False), nn.BatchNorm1d(2), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, -2.0, 0.0, 3.0], [-1.0, 1.0, 1.0, 1.0]]))
        model[2].weight.fill_(5.0)
        model[2].bias.fill_(3.0)
        model[3].weight.copy_(torch.tensor([[0.5, -2.0]]))
    assert G.synflow(model, torch.randn(3, 1, 2, 2), None) == pytest.approx(22.0, rel=1e-14)


def _linear_model():
    # logits = W x with W = [[ln 3, 0], [0, 0]] and x = (1, 1): softmax p = (3/4, 1/4); label 1 gives
    # dL/dz = p - e_1 = (3/4, -3/4) and g = dL/dW = (p - e_1) x^T = [[3/4, 3/4], [-3/4, -3/4]].
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[LN3, 0.0], [0.0, 0.0]]))
    return model, torch.ones(1, 1, 1, 2), torch.tensor([1])


@pytest.mark.parametrize("name, expected", [
    ("snip", 0.75 * LN3),                 # sum |g * W|
    ("grad_norm", 1.5),                   # ||g||_F = sqrt(4 * 9/16)
    # Hg = ||x||^2 (diag p - p p^T)(p - e_1) x^T = 2 * (9/32, -9/32)^T (1, 1); -sum W * Hg = -9/16 ln 3
    ("grasp", -9.0 / 16.0 * LN3),
    # a = z = (ln 3, 0), dL/da = (3/4, -3/4): F = 0.5 * (3/4 ln 3)^2 on channel 0, times weight[0].numel() = 2
    ("fisher", (0.75 * LN3) ** 2),
], ids=lambda v: v if isinstance(v, str) else "")
def test_one_layer_linear_closed_form(name, expected):
    model, x, y = _linear_model()
    assert getattr(G, name)(model, x, y) == pytest.approx(expected, rel=1e-6)


def test_grasp_temperature_closed_form():
    """L = CE(W x / T): g = (p - e) x^T / T and Hg = ||x||^2 / T^3 (diag p - p p^T)(p - e) x^T, p = softmax(W x / T);
    grasp = -sum W * Hg. T = 1 is the test above; T = 2 (the GraSP paper's T is 200)."""
    model, x, y = _linear_model()
    T = 2.0
    W = model[1].weight.detach().double()
    xv = x.flatten().double()
    p = torch.softmax(W @ xv / T, 0)
    e = torch.nn.functional.one_hot(y, 2)[0].double()
    hg = (xv @ xv) / T ** 3 * torch.outer((torch.diag(p) - torch.outer(p, p)) @ (p - e), xv)
    assert G.grasp(model, x, y, T=T) == pytest.approx(float(-(W * hg).sum()), rel=1e-6)
    assert G.grasp(model, x, y, T=1) == pytest.approx(-9.0 / 16.0 * LN3, rel=1e-6)
    for bad in (0.0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match="grasp: T must be a positive finite number"):
            G.grasp(model, x, y, T=bad)


class _HalfSquare(nn.Module):
    """logit = 0.5 * sum(x^2) per sample: the Jacobian of a sample is the sample itself."""

    def forward(self, x):
        return 0.5 * x.pow(2).flatten(1).sum(1, keepdim=True)


def test_jacov_known_jacobians():
    uncorrelated = torch.tensor([[1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0]]).view(2, 1, 2, 2)
    # (1,-1,1,-1) and (2,0,0,-2): both zero-mean, dot 4, norms 2 and 2 sqrt 2: correlation 1/sqrt 2
    correlated = torch.tensor([[1.0, -1.0, 1.0, -1.0], [2.0, 0.0, 0.0, -2.0]]).view(2, 1, 2, 2)
    # zero-mean orthogonal rows: correlation I, eigenvalues (1, 1)
    assert G.jacov(_HalfSquare(), uncorrelated) == pytest.approx(-2 * (math.log(1 + K) + 1 / (1 + K)), rel=1e-12)
    r = 1 / math.sqrt(2)
    assert np.corrcoef(correlated.view(2, -1).numpy())[0, 1] == pytest.approx(r, rel=1e-12)
    want = -sum(math.log(v + K) + 1 / (v + K) for v in (1 + r, 1 - r))
    assert G.jacov(_HalfSquare(), correlated) == pytest.approx(want, rel=1e-10)
    k = 0.1   # the regulariser is a setting
    assert G.jacov(_HalfSquare(), uncorrelated, k=k) == pytest.approx(-2 * (math.log(1 + k) + 1 / (1 + k)), rel=1e-12)
    with pytest.raises(ValueError, match="jacov: k must be a positive finite number"):
        G.jacov(_HalfSquare(), uncorrelated, k=0.0)


def test_jacov_degenerate_rows_score_as_fully_correlated():
    b = 4
    worst = -(math.log(b + K) + 1 / (b + K)) - (b - 1) * (math.log(K) + 1 / K)
    same = torch.randn(1, 6).expand(b, 6)               # identical rows: correlation all ones
    assert G.jacov_from_jacobian(same) == pytest.approx(worst, rel=1e-9)
    one_flat = torch.randn(b, 6)
    one_flat[2] = 7.0                                   # a constant row: correlation undefined
    assert G.jacov_from_jacobian(one_flat) == worst
    assert G.jacov_from_jacobian(torch.zeros(b, 6)) == worst
    with_nan = torch.randn(b, 6)
    with_nan[0, 0] = float("nan")
    assert G.jacov_from_jacobian(with_nan) == worst


# --------------------------------------------------------------------------------------------------
# Equality with the paper-style references
# --------------------------------------------------------------------------------------------------
# Measured relative differences (C=8 N=1 and the full C=16 N=5 network, B=8 and 64): 0 (bit-identical)
# for synflow, snip, grasp and jacov, which run the same ops in the same order; <= 2.2e-8 for grad_norm
# and fisher, where fastnas takes the norm / squares in float64 and the reference in float32 (eps 1.2e-7).
REF_RTOL = {"synflow": 1e-12, "snip": 1e-12, "grasp": 1e-12, "jacov": 1e-12, "grad_norm": 1e-6, "fisher": 1e-6}


@pytest.mark.parametrize("arch", [MIXED, ALL_SKIP], ids=["mixed", "all_skip"])
@pytest.mark.parametrize("name", NAMES)
def test_matches_reference(name, arch):
    x, y = _batch()
    model = _nb201(arch)
    want = REFERENCE_PROXIES[name](copy.deepcopy(model), x, y)
    got = getattr(G, name)(model, x, y)
    assert got == pytest.approx(want, rel=REF_RTOL[name], abs=1e-12)


# --------------------------------------------------------------------------------------------------
# Degenerate archs, determinism, hooks, the registry, bad input
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", [ALL_NONE, ALL_SKIP], ids=["all_none", "all_skip"])
@pytest.mark.parametrize("name", NAMES)
def test_finite_on_degenerate_archs(name, arch):
    x, y = _batch()
    value = getattr(G, name)(_nb201(arch), x, y)
    assert math.isfinite(value)


def test_all_none_values():
    # No cell reaches the logits: synflow, snip, grad_norm and grasp see no weight gradient except the
    # classifier's, whose input is 0; jacov's Jacobian is 0 (degenerate: the worst score for B = 8).
    x, y = _batch()
    for name in ("synflow", "snip", "grad_norm", "grasp"):
        assert getattr(G, name)(_nb201(ALL_NONE), x, y) == 0.0, name
    worst = -(math.log(8 + K) + 1 / (8 + K)) - 7 * (math.log(K) + 1 / K)
    assert G.jacov(_nb201(ALL_NONE), x) == worst


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_manual_seed(name):
    x, y = _batch()
    a = getattr(G, name)(_nb201(MIXED, seed=3), x, y)
    b = getattr(G, name)(_nb201(MIXED, seed=3), x, y)
    c = getattr(G, name)(_nb201(MIXED, seed=4), x, y)
    assert a == b
    assert a != c


@pytest.mark.parametrize("name", NAMES)
def test_no_hooks_left(name):
    x, y = _batch()
    model = _nb201(MIXED)
    getattr(G, name)(model, x, y)
    for m in model.modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            assert not getattr(m, attr), f"{type(m).__name__}.{attr} left behind"


def test_registered_with_protocol():
    for name, batch, labels in [("synflow", 1, False), ("snip", 64, True), ("grasp", 64, True),
                                ("fisher", 64, True), ("jacov", 64, False), ("grad_norm", 64, True)]:
        p = get_proxy(name)
        assert (p.batch_size, p.uses_labels, p.higher_is_better) == (batch, labels, True), name


def test_bad_input():
    x, y = _batch()
    with pytest.raises(ValueError, match="needs labels"):
        G.snip(_nb201(MIXED), x, None)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        G.grad_norm(_nb201(MIXED), x[0], y)
    with pytest.raises(ValueError, match="3 labels for 8 images"):
        G.fisher(_nb201(MIXED), x, y[:3])
    too_big = y.clone()
    too_big[0] = 10
    with pytest.raises(ValueError, match=r"labels span \[\d+, 10\] but the model has 10 classes"):
        G.grasp(_nb201(MIXED), x, too_big)
    with pytest.raises(ValueError, match="int64"):
        G.snip(_nb201(MIXED), x, y.float())
    with pytest.raises(ValueError, match="at least 2 images"):
        G.jacov(_nb201(MIXED), x[:1])
    with pytest.raises(ValueError, match="no nn.Conv2d or nn.Linear"):
        G.synflow(nn.Sequential(nn.Flatten()), x, None)


# --------------------------------------------------------------------------------------------------
# Rank parity with the published NAS-Bench-Suite-Zero values (real data)
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_rank_parity_with_nas_bench_suite_zero():
    from scipy.stats import spearmanr

    from fastnas.data import load_cifar10_sample

    zc_path = DATA / "nb201_zc_cifar10_dev.csv"
    if not (zc_path.is_file() and (DATA / "cifar10_sample.npz").is_file()):
        pytest.skip(f"real data not found in {DATA} (needs nb201_zc_cifar10_dev.csv and cifar10_sample.npz)")
    rows = list(csv.DictReader(open(zc_path)))[:100]
    d = load_cifar10_sample(DATA, "train")
    # 16 images, not the protocol's 64, keep the test at ~35 s on one core. Measured Spearman with the
    # published values on these 100 archs at B=16: synflow 0.999, snip 0.982, grad_norm 0.983 (at B=64
    # over 220 archs: 1.000, 0.986, 0.988); two seeds of the B=64 protocol agree at 0.991 / 0.988 (snip /
    # grad_norm, 80 archs), so 0.9 leaves room for batch and seed noise.
    b = 16
    x = ((d.images[:b].float() / 255) - torch.tensor(d.mean)[:, None, None]) / torch.tensor(d.std)[:, None, None]
    y = d.labels[:b]
    for name in ("synflow", "snip", "grad_norm"):
        ours = []
        for r in rows:
            torch.manual_seed(0)
            ours.append(getattr(G, name)(NB201Network(r["arch"]).train(), x, y))
        rho = spearmanr(ours, [float(r[name]) for r in rows])[0]
        assert rho >= 0.9, f"{name}: Spearman {rho:.3f} with the published values over {len(rows)} archs"
