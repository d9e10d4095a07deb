"""DrNAS (method "drnas"): Dirichlet mixing weights and the concentration regulariser."""
import pytest
import torch
import torch.nn.functional as F

import fastnas
from fastnas.search import SearchConfig, Searcher
from fastnas.nn import SearchNetwork
from fastnas.spaces import PRIMITIVES, parse_arch
from helpers import search_killed_then_resumed


def _net(**kw):
    torch.manual_seed(0)
    return SearchNetwork("nb201", C=8, num_classes=10, layers=1, partial_channels=2, edge_norm=False,
                         mixing="dirichlet", **kw)


def test_samples_lie_on_the_simplex_and_their_gradient_reaches_alpha():
    net = _net()
    with torch.no_grad():
        net.alphas.normal_(0, 1)
    w = net._softmax("cell")  # training mode: a reparameterised Dirichlet sample
    assert w.shape == (6, 5) and (w > 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(6))
    (w * torch.arange(5.0)).sum().backward()
    assert net.alphas.grad is not None and net.alphas.grad.abs().sum() > 0
    assert not torch.equal(net._softmax("cell"), net._softmax("cell"))  # a new sample each forward


def test_eval_mode_uses_the_dirichlet_mean():
    net = _net().eval()
    with torch.no_grad():
        net.alphas.normal_(0, 1)
    c = F.elu(net.alphas) + 1
    torch.testing.assert_close(net._softmax("cell"), c / c.sum(-1, keepdim=True))
    torch.testing.assert_close(net.arch_weights()["cell"], (c / c.sum(-1, keepdim=True)).detach())


def test_kl_regulariser_equals_the_closed_form():
    net = _net(reg_type="kl", reg_scale=0.5)
    with torch.no_grad():
        net.alphas.normal_(0, 1)
    a = F.elu(net.alphas.detach().double()) + 1   # concentration; prior Dirichlet(1) on 5 ops
    a0 = a.sum(-1)
    k = a.shape[-1]
    # KL(Dir(a) || Dir(1)) = lgamma(a0) - sum lgamma(a_i) - lgamma(k) + sum (a_i - 1)(digamma(a_i) - digamma(a0))
    kl = (torch.lgamma(a0) - torch.lgamma(a).sum(-1) - torch.lgamma(torch.tensor(float(k), dtype=torch.float64))
          + ((a - 1) * (torch.digamma(a) - torch.digamma(a0)[:, None])).sum(-1))
    assert float(net.arch_regularizer().detach()) == pytest.approx(0.5 * float(kl.sum()), rel=1e-5)
    assert _net(reg_type="l2", reg_scale=0.5).arch_regularizer() is None   # l2 is the optimiser's weight decay
    assert _net(reg_type="kl", reg_scale=0.0).arch_regularizer() is None
    assert SearchNetwork("nb201", C=8, layers=1, partial_channels=1).arch_regularizer() is None


def _kl_closed_form(a):
    a0, k = a.sum(-1), a.shape[-1]
    return (torch.lgamma(a0) - torch.lgamma(a).sum(-1) - torch.lgamma(torch.tensor(float(k), dtype=torch.float64))
            + ((a - 1) * (torch.digamma(a) - torch.digamma(a0)[:, None])).sum(-1))


def test_kl_regulariser_runs_over_the_ops_of_drnas_space():
    """The KL of an edge is over the ops ``reg_columns`` marks (default: the op mask; DrNAS's DARTS
    space has no 'none'), a later stage's dropped ops included (DrNAS's prune resets their alphas to 0)."""
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[:, 3] = False
    mask[0, 1] = False  # edge 0 holds 3 ops, the others 4
    net = _net(reg_type="kl", reg_scale=1.0, op_mask={"cell": mask})
    with torch.no_grad():
        net.alphas.normal_(0, 1)
    a = F.elu(net.alphas.detach().double()) + 1
    expected = sum(float(_kl_closed_form(a[e][mask[e]][None]).sum()) for e in range(6))
    assert float(net.arch_regularizer().detach()) == pytest.approx(expected, rel=1e-5)
    stage2 = _net(reg_type="kl", reg_scale=1.0, op_mask={"cell": mask}, reg_columns={"cell": torch.ones(6, 5)})
    with torch.no_grad():
        stage2.alphas.copy_(net.alphas)
    assert float(stage2.arch_regularizer().detach()) == pytest.approx(float(_kl_closed_form(a).sum()), rel=1e-5)


def test_pruning_scores_a_dirichlet_supernet_at_uniform_weights_not_a_draw():
    """Zero alphas: the Dirichlet mean is uniform, as the softmax is; one random draw is not."""
    from fastnas.search.pruning import prune_supernet

    x = torch.randn(16, 3, 8, 8)

    def build(mixing):
        return lambda masks=None: SearchNetwork("nb201", C=8, num_classes=10, layers=1, partial_channels=1,
                                                edge_norm=False, mixing=mixing, op_mask=masks)

    reports = [prune_supernet(build(m), ["swap"], x, None, keep=0.5) for m in ("softmax", "dirichlet")]
    assert reports[0].rounds == reports[1].rounds
    assert all(torch.equal(reports[0].masks[k], reports[1].masks[k]) for k in reports[0].masks)


def test_drnas_darts_supernet_never_holds_none(tmp_path):
    """DrNAS's DARTS space has no 'none', with or without progressive stages (and before pruning)."""
    for progressive in (True, False):
        s = Searcher(SearchConfig(space="darts", method="drnas", dataset="synthetic", dataset_options={"n": 32},
                                  batch_size=8, init_channels=12, layers=3, epochs=2, warmup_epochs=0,
                                  device="cpu", quiet=True, drnas_progressive=progressive,
                                  out_dir=str(tmp_path / str(progressive))))
        for kind, m in s.model.op_masks().items():
            assert not m[:, 0].any() and m[:, 1:].all(), (progressive, kind)
        s.run_dir.unlock()


def test_pruned_ops_get_no_weight_under_dirichlet_mixing():
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[:, 3] = False
    torch.manual_seed(0)
    net = SearchNetwork("nb201", C=8, layers=1, partial_channels=2, mixing="dirichlet", op_mask={"cell": mask})
    w = net._softmax("cell")
    assert (w[:, 3] == 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(6))


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_drnas_search_runs_and_resumes_identically(tmp_path, monkeypatch, space):
    # init_channels 12: divisible by the K of both DARTS stages (6, 4) and of both NB201 stages (4, 2).
    kw = dict(space=space, method="drnas", dataset="synthetic", dataset_options={"n": 64}, batch_size=8,
              init_channels=12, layers=1 if space == "nb201" else 3, epochs=3, warmup_epochs=0, device="cpu",
              quiet=True, hessian_iters=2, hessian_batch=4)
    full = fastnas.search(**kw, out_dir=str(tmp_path / "full"))
    if space == "nb201":
        parse_arch(full.arch)
    # The collapse monitor differentiates the Dirichlet mean (a draw has no second derivatives in torch).
    assert all(isinstance(r["hessian_eigenvalue"], float) and r["hessian_eigenvalue"] != 0.0 for r in full.history)
    resumed = search_killed_then_resumed(monkeypatch, 2, tmp_path / "crashed", **kw)
    for name, p in full.arch_parameters.items():
        assert torch.equal(resumed.arch_parameters[name], p), name
    assert resumed.arch == full.arch


@pytest.mark.parametrize("reg, decay, has_term", [("l2", 0.25, False), ("kl", 0.0, True)])
def test_the_regulariser_is_drnas_architects(tmp_path, reg, decay, has_term):
    """DrNAS's architect.py: "l2" is the architecture Adam's weight decay (reg_scale) on alpha, with no
    loss term; "kl" is a KL term in the architecture loss and no weight decay. arch_weight_decay does
    not apply."""
    s = Searcher(SearchConfig(space="nb201", method="drnas", dataset="synthetic", dataset_options={"n": 64},
                              batch_size=8, init_channels=8, layers=1, epochs=2, warmup_epochs=0, device="cpu",
                              quiet=True, drnas_reg=reg, drnas_reg_scale=0.25, arch_weight_decay=0.5,
                              out_dir=str(tmp_path / "r")))
    assert [g["weight_decay"] for g in s.step.a_optimizer.param_groups] == [decay]
    assert (s.model.arch_regularizer() is not None) == has_term


def test_drnas_defaults_are_drnas_scripts():
    darts = SearchConfig(method="drnas", space="darts").resolved()
    assert (darts.batch_size, darts.learning_rate, darts.learning_rate_min, darts.arch_learning_rate, darts.epochs,
            darts.warmup_epochs, darts.init_channels, darts.layers, darts.drnas_reg) == \
        (64, 0.1, 0.0, 6e-4, 50, 10, 36, 20, "l2")
    nb201 = SearchConfig(method="drnas", space="nb201").resolved()
    assert (nb201.batch_size, nb201.learning_rate, nb201.learning_rate_min, nb201.arch_learning_rate,
            nb201.epochs, nb201.warmup_epochs, nb201.init_channels) == (64, 0.025, 0.001, 3e-4, 100, 10, 16)
    assert SearchConfig(method="drnas", space="darts", drnas_stages=((8, 7), (4, 4))).resolved().init_channels == 40


def test_every_drnas_stage_starts_with_weight_only_epochs(tmp_path):
    """DrNAS's train(..., e) counts e within the stage: warmup_epochs weight-only epochs open every stage,
    also the one after the pruning and widening."""
    result = fastnas.search(space="nb201", method="drnas", dataset="synthetic", dataset_options={"n": 64},
                            batch_size=8, init_channels=8, layers=1, epochs=6, warmup_epochs=2, device="cpu",
                            quiet=True, hessian_iters=0, steps_per_epoch=1, out_dir=str(tmp_path / "r"))
    assert [row["arch_step"] for row in result.history] == [False, False, True, False, False, True]
    assert [row["stage"] for row in result.history] == [1, 1, 1, 2, 2, 2]


def test_drnas_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="drnas_reg"):
        fastnas.search(space="nb201", method="drnas", dataset="synthetic", drnas_reg="l1", quiet=True,
                       out_dir=str(tmp_path / "bad"))


def test_drnas_darts_pools_have_no_batchnorm_unless_asked(tmp_path):
    """DrNAS's DARTS-space MixedOp has the pooling BatchNorm of PC-DARTS commented out."""
    def pools(**kw):
        s = Searcher(SearchConfig(space="darts", dataset="synthetic", dataset_options={"n": 32}, batch_size=8,
                                  init_channels=12, layers=3, epochs=2, warmup_epochs=0, device="cpu", quiet=True,
                                  out_dir=str(tmp_path / str(len(list(tmp_path.iterdir())))), **kw))
        s.run_dir.unlock()
        op = s.model.cells[0]._ops[0]._ops[PRIMITIVES.index("avg_pool_3x3")]
        return [type(m).__name__ for m in op.modules() if m is not op] or [type(op).__name__]

    assert pools(method="drnas") == ["AvgPool2d"]
    assert "BatchNorm2d" in pools(method="drnas", drnas_pool_bn=True)
    assert "BatchNorm2d" in pools(method="pc-darts")
    with pytest.raises(ValueError, match="drnas_pool_bn applies"):
        SearchConfig(space="nb201", method="drnas", drnas_pool_bn=True).resolved()
