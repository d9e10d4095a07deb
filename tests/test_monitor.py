"""Collapse monitoring: the dominant Hessian eigenvalue (power iteration on Hessian-vector products)."""
import json

import pytest
import torch
import torch.nn.functional as F

import fastnas
from fastnas.nn import SearchNetwork
from fastnas.search.monitor import dominant_hessian_eigenvalue


def _quadratic(eigenvalues):
    """loss(x) = 0.5 x^T A x with A = Q diag(eigenvalues) Q^T: its Hessian is A."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
    x = torch.randn(len(eigenvalues), generator=g, dtype=torch.float64, requires_grad=True)
    return (lambda: 0.5 * x @ a @ x), x


@pytest.mark.parametrize("eigenvalues,expected", [([5.0, -2.0, 1.0, 0.5], 5.0), ([1.0, -7.0, 2.0], -7.0)])
def test_power_iteration_finds_the_eigenvalue_of_largest_magnitude(eigenvalues, expected):
    loss, x = _quadratic(eigenvalues)
    got = dominant_hessian_eigenvalue(loss, [x], iters=500, tol=1e-12, generator=torch.Generator().manual_seed(1))
    assert got == pytest.approx(expected, rel=1e-6)


def test_zero_hessian_is_zero_and_bad_iters_raise():
    x = torch.randn(3, requires_grad=True)
    assert dominant_hessian_eigenvalue(lambda: (2 * x).sum() + (x * 0).pow(2).sum(), [x], iters=3) == 0.0
    with pytest.raises(ValueError, match="iters"):
        dominant_hessian_eigenvalue(lambda: x.pow(2).sum(), [x], iters=0)


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_matches_the_explicit_hessian_of_a_search_network(space):
    """Power iteration over the architecture parameters of a real (tiny) supernet, through the fused ops'
    double backward, against the eigenvalues of the explicit Hessian (torch.autograd.functional)."""
    torch.manual_seed(0)
    net = SearchNetwork(space, C=8, num_classes=10, layers=1 if space == "nb201" else 2,
                        partial_channels=2 if space == "darts" else 1, edge_norm=space == "darts").double()
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_(0, 0.5)
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (6,))
    params = net.arch_parameters()
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def loss_of(flat):
        chunks = torch.split(flat, sizes)
        swapped = {n: c.view(s) for (n, _), c, s in zip(net.named_arch_parameters(), chunks, shapes)}
        return F.cross_entropy(torch.func.functional_call(net, swapped, (x,)), y)

    flat = torch.cat([p.detach().flatten() for p in params])
    hessian = torch.autograd.functional.hessian(loss_of, flat)
    eig = torch.linalg.eigvalsh(hessian)
    expected = float(eig[eig.abs().argmax()])
    got = dominant_hessian_eigenvalue(lambda: F.cross_entropy(net(x), y), params, iters=1000, tol=1e-12,
                                      generator=torch.Generator().manual_seed(3))
    assert got == pytest.approx(expected, rel=1e-5)


def test_a_dirichlet_supernet_is_differentiated_through_its_mean():
    """DrNAS: torch's Dirichlet rsample backward is once_differentiable, so a Hessian through a draw
    loses the draw's second derivatives. Inside mixing_by_mean the supernet mixes by the Dirichlet mean
    (training-mode BN kept) and the monitor matches the explicit Hessian of that function."""
    from fastnas.nn.search_network import mixing_by_mean

    torch.manual_seed(0)
    net = SearchNetwork("nb201", C=8, num_classes=10, layers=1, partial_channels=1, edge_norm=False,
                        mixing="dirichlet").double().train()
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_(0, 0.5).abs_()  # alpha > 0: elu is linear there, so only the mixing is curved
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (6,))
    (alphas,) = net.arch_parameters()

    def loss_of(a):
        return F.cross_entropy(torch.func.functional_call(net, {"alphas": a.view(alphas.shape)}, (x,)), y)

    with mixing_by_mean(net):
        hessian = torch.autograd.functional.hessian(loss_of, alphas.detach().flatten())
        got = dominant_hessian_eigenvalue(lambda: F.cross_entropy(net(x), y), [alphas], iters=1000, tol=1e-12,
                                          generator=torch.Generator().manual_seed(3))
    eig = torch.linalg.eigvalsh(hessian)
    expected = float(eig[eig.abs().argmax()])
    assert expected != 0.0 and got == pytest.approx(expected, rel=1e-5)
    assert not net.mean_mixing  # restored: the search samples again


def test_search_logs_the_eigenvalue_and_plots_the_collapse_signals(tmp_path):
    common = dict(space="nb201", method="darts", dataset="synthetic", dataset_options={"n": 64}, batch_size=8,
                  init_channels=8, layers=1, epochs=2, warmup_epochs=0, device="cpu", quiet=True, seed=1)
    result = fastnas.search(**common, out_dir=str(tmp_path / "on"), hessian_iters=5, hessian_batch=4)
    rows = [json.loads(line) for line in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
    assert all(isinstance(r["hessian_eigenvalue"], float) and r["skip_connects"] >= 0 for r in rows)
    assert (tmp_path / "on" / "collapse.png").stat().st_size > 0
    # The monitor changes nothing in the search: the same run without it ends with the same alphas.
    off = fastnas.search(**common, out_dir=str(tmp_path / "off"), hessian_iters=0)
    assert all(r["hessian_eigenvalue"] is None for r in off.history)
    for name, value in result.arch_parameters.items():
        assert torch.equal(off.arch_parameters[name], value), name
    with pytest.raises(ValueError, match="hessian_iters"):
        fastnas.search(**common, out_dir=str(tmp_path / "bad"), hessian_iters=-1)
