"""DARTS- (method "darts-minus"): the auxiliary skip connection and its decaying weight."""
import json
import math

import pytest
import torch

import fastnas
from fastnas.nn import SearchNetwork
from fastnas.nn.mixed import PartialChannelMixedOp
from fastnas.search.schedules import aux_skip_beta
from fastnas.spaces import PRIMITIVES, parse_arch
from helpers import search_killed_then_resumed


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedules_hit_their_end_points_and_decay(schedule):
    betas = [aux_skip_beta(e, 10, 0.7, schedule) for e in range(10)]
    assert betas[0] == pytest.approx(0.7) and betas[-1] == pytest.approx(0.0, abs=1e-15)
    assert all(a > b for a, b in zip(betas, betas[1:]))
    mid = aux_skip_beta(5, 11, 1.0, schedule)  # t = 0.5
    assert mid == pytest.approx(0.5)  # both schedules cross 1/2 half way
    quarter = aux_skip_beta(1, 5, 1.0, schedule)  # t = 0.25
    assert quarter == pytest.approx(0.75 if schedule == "linear" else (1 + math.cos(math.pi / 4)) / 2)


def test_schedule_errors_and_one_epoch():
    assert aux_skip_beta(0, 1, 0.3) == 0.3
    with pytest.raises(ValueError, match="aux_skip_schedule"):
        aux_skip_beta(0, 5, 1.0, "step")
    with pytest.raises(ValueError, match="outside"):
        aux_skip_beta(5, 5)


@pytest.mark.parametrize("stride", [1, 2])
def test_auxiliary_skip_adds_beta_times_the_skip_path(stride):
    torch.manual_seed(0)
    plain = PartialChannelMixedOp(8, stride, PRIMITIVES, 2)
    aux = PartialChannelMixedOp(8, stride, PRIMITIVES, 2, aux_skip=True)
    aux.load_state_dict(plain.state_dict(), strict=False)  # same candidate ops; aux's own path extra
    x = torch.randn(2, 8, 6, 6)
    w = torch.softmax(torch.randn(len(PRIMITIVES)), 0)
    base = plain(x, w)
    torch.testing.assert_close(aux(x, w, aux_weight=0.0), base)
    skip = x if stride == 1 else aux.aux(x)
    torch.testing.assert_close(aux(x, w, aux_weight=0.3), base + 0.3 * skip)


def test_the_auxiliary_path_stays_out_of_the_architecture_and_the_derivation():
    torch.manual_seed(0)
    net = SearchNetwork("nb201", C=8, layers=1, partial_channels=1, edge_norm=False, aux_skip=True)
    plain_names = {n for n, _ in SearchNetwork("nb201", C=8, layers=1, partial_channels=1,
                                               edge_norm=False).named_arch_parameters()}
    assert {n for n, _ in net.named_arch_parameters()} == plain_names
    x = torch.randn(2, 3, 8, 8)
    net.aux_skip_weight = 0.0
    off = net(x)
    net.aux_skip_weight = 1.0
    assert not torch.allclose(net(x), off)
    genotype = net.genotype()
    net.aux_skip_weight = 0.0
    assert net.genotype() == genotype


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_darts_minus_search_runs_with_the_schedule_in_its_log(tmp_path, space):
    result = fastnas.search(space=space, method="darts-minus", dataset="synthetic", dataset_options={"n": 64},
                            batch_size=8, init_channels=8, layers=1 if space == "nb201" else 3, epochs=3,
                            warmup_epochs=0, device="cpu", quiet=True, hessian_iters=0, aux_skip_beta0=0.5,
                            aux_skip_schedule="cosine", out_dir=str(tmp_path / space))
    betas = [r["aux_skip_beta"] for r in result.history]
    assert betas == pytest.approx([0.5, 0.25, 0.0])
    rows = [json.loads(line) for line in (tmp_path / space / "metrics.jsonl").read_text().splitlines()]
    assert [r["aux_skip_beta"] for r in rows] == pytest.approx(betas)
    if space == "nb201":
        parse_arch(result.arch)
    else:
        assert result.genotype.normal_concat == [2, 3, 4, 5]


def test_darts_minus_settings_are_checked_and_reach_the_cli(tmp_path, capsys):
    with pytest.raises(ValueError, match="aux_skip_schedule"):
        fastnas.search(space="nb201", method="darts-minus", dataset="synthetic", aux_skip_schedule="step",
                       quiet=True, out_dir=str(tmp_path / "bad"))
    from fastnas.cli import main
    assert main(["search", "--space", "nb201", "--method", "darts-minus", "--dataset", "synthetic",
                 "--dataset-option", "n=64", "--batch_size", "8", "--init_channels", "8", "--layers", "1",
                 "--epochs", "2", "--warmup_epochs", "0", "--device", "cpu", "--hessian_iters", "0",
                 "--aux_skip_schedule", "cosine", "--out_dir", str(tmp_path / "cli"), "--quiet"]) == 0
    parse_arch(capsys.readouterr().out.strip())


def test_darts_minus_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    kw = dict(space="nb201", method="darts-minus", dataset="synthetic", dataset_options={"n": 64}, batch_size=8,
              init_channels=8, layers=1, epochs=3, warmup_epochs=0, device="cpu", quiet=True, hessian_iters=0)
    full = fastnas.search(**kw, out_dir=str(tmp_path / "full"))
    resumed = search_killed_then_resumed(monkeypatch, 2, tmp_path / "crashed", **kw)
    assert [r["aux_skip_beta"] for r in resumed.history] == [r["aux_skip_beta"] for r in full.history]
    for name, p in full.arch_parameters.items():
        assert torch.equal(resumed.arch_parameters[name], p), name
