"""Second derivatives through the fused ops inside whole supernets (float64, against the torch backend)."""
import pytest
import torch
import torch.nn.functional as F

from fastnas.nn import SearchNetwork

@pytest.mark.parametrize("space, K", [("nb201", 1), ("nb201", 2), ("darts", 1), ("darts", 2)])
def test_hessian_vector_products_match_the_plain_formula(space, K):
    """d/d(alpha) of (dL/dw . v) through the fused ops equals the torch backend's, float64: the fused
    backward is itself differentiable (DARTS exact Hessians, Hessian-eigenvalue collapse monitoring)."""
    def hvp(backend):
        torch.manual_seed(0)
        layers = 1 if space == "nb201" else 3
        m = SearchNetwork(space, C=8, num_classes=10, layers=layers, partial_channels=K, backend=backend).double()
        g = torch.Generator().manual_seed(1)
        x = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
        y = torch.randint(0, 10, (4,), generator=g)
        W, A = m.weight_parameters(), m.arch_parameters()
        gw = torch.autograd.grad(F.cross_entropy(m(x), y), W, create_graph=True)
        v = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in W]
        return torch.autograd.grad(sum((a * b).sum() for a, b in zip(gw, v)), A)

    for got, want in zip(hvp(None), hvp("torch")):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
