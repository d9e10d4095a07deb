"""B-DARTS's confident learning rate (CLR) on the standard supernets."""

import pytest
import torch

import fastnas
from fastnas.nn import SearchNetwork
from fastnas.search import SearchStep
from fastnas.search.schedules import confidence


def test_confidence_schedule():
    assert [confidence(e, 4, 2.0) for e in range(4)] == pytest.approx([1 / 16, 4 / 16, 9 / 16, 1.0])
    assert confidence(0, 5, 0.0) == 1.0
    with pytest.raises(ValueError, match="outside"):
        confidence(4, 4)
    with pytest.raises(ValueError, match="power"):
        confidence(0, 4, -1.0)


def _net():
    torch.manual_seed(0)
    return SearchNetwork("nb201", C=8, num_classes=10, layers=1, partial_channels=1, edge_norm=False)


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)


def test_first_order_scales_the_architecture_learning_rate():
    a, b = _net(), _net()
    step_clr = SearchStep(a, arch_learning_rate=6e-4)
    step_clr.confidence = 0.25
    step_small = SearchStep(b, arch_learning_rate=6e-4 * 0.25)
    for seed in range(3):
        x_w, y_w = _batch(seed)
        x_a, y_a = _batch(100 + seed)
        step_clr.arch_step(x_w, y_w, x_a, y_a)
        step_small.arch_step(x_w, y_w, x_a, y_a)
    torch.testing.assert_close(a.alphas, b.alphas, rtol=0, atol=1e-12)
    assert not torch.equal(a.alphas, _net().alphas)


def test_second_order_scales_the_unrolled_validation_loss():
    """The unrolled gradient of c * L_val is c times that of L_val: R = eps / ||c v|| makes the finite
    difference perturb the weights by the same amount and divide by a c-times smaller 2R."""
    net = _net()
    step = SearchStep(net, unrolled=True)
    x_w, y_w = _batch(0)
    x_a, y_a = _batch(1)
    step._unrolled_grads(x_w, y_w, x_a, y_a)
    plain = [p.grad.clone() for p in step.arch_params]
    step.confidence = 0.3
    step._unrolled_grads(x_w, y_w, x_a, y_a)
    for g, p in zip(plain, step.arch_params):
        torch.testing.assert_close(p.grad, 0.3 * g, rtol=1e-4, atol=1e-10)


def test_search_logs_the_confidence(tmp_path):
    result = fastnas.search(space="nb201", method="darts", dataset="synthetic", dataset_options={"n": 64},
                            batch_size=8, init_channels=8, layers=1, epochs=2, warmup_epochs=0, device="cpu",
                            quiet=True, hessian_iters=0, clr_power=2.0, out_dir=str(tmp_path / "clr"))
    assert [r["confidence"] for r in result.history] == pytest.approx([0.25, 1.0])
    with pytest.raises(ValueError, match="clr_power"):
        fastnas.search(space="nb201", method="darts", dataset="synthetic", clr_power=-1.0, quiet=True,
                       out_dir=str(tmp_path / "bad"))
