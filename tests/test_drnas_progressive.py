"""DrNAS's progressive stages: the plan, the op pruning between stages, the widening of the weights,
and searches that change K and the op count as specified and resume across a stage boundary."""
import pytest
import torch

import fastnas
from fastnas.search import SearchConfig, Searcher
from fastnas.search.progressive import (DRNAS_STAGES, combine_masks, default_init_channels, initial_op_mask,
                                        stage_of, stage_plan, top_ops_mask, widen_state_dict)
from fastnas.spaces import PRIMITIVES
from helpers import search_killed_then_resumed

TINY = dict(method="drnas", dataset="synthetic", dataset_options={"n": 64}, batch_size=8, warmup_epochs=0,
            device="cpu", quiet=True, hessian_iters=0)


def test_defaults_are_drnas_settings():
    assert DRNAS_STAGES == {"darts": ((6, 7), (4, 4)), "nb201": ((4, 5), (2, 3))}
    c = SearchConfig(method="drnas").resolved()
    assert c.drnas_stages == ((6, 7), (4, 4)) and c.partial_channels == 6 and c.init_channels == 36
    c = SearchConfig(method="drnas", space="nb201").resolved()
    assert c.drnas_stages == ((4, 5), (2, 3)) and c.partial_channels == 4 and c.init_channels == 16
    assert SearchConfig(method="drnas", drnas_progressive=False).resolved().partial_channels == 4
    assert SearchConfig(method="pc-darts").resolved().init_channels == 16


def test_stage_plan_splits_the_epochs():
    plan = stage_plan(((6, 7), (4, 4)), 50)
    assert [(s.first_epoch, s.epochs, s.partial_channels, s.ops_per_edge) for s in plan] == [(0, 25, 6, 7), (25, 25, 4, 4)]
    plan = stage_plan(((4, 5), (2, 3)), 3)
    assert [(s.first_epoch, s.epochs) for s in plan] == [(0, 1), (1, 2)]
    assert [stage_of(plan, e).index for e in range(3)] == [0, 1, 1]
    with pytest.raises(ValueError, match="epochs=1"):
        stage_plan(((4, 5), (2, 3)), 1)


def test_default_init_channels():
    assert default_init_channels(((6, 7), (4, 4))) == 24
    assert default_init_channels(((4, 5), (2, 3))) == 16
    assert default_init_channels(((5, 5), (2, 3))) == 20


def test_initial_mask_leaves_out_none_only():
    m = initial_op_mask(PRIMITIVES, 7, {"normal": (14, 8), "reduce": (14, 8)})
    assert m["normal"].shape == (14, 8) and (~m["normal"][:, PRIMITIVES.index("none")]).all()
    assert m["reduce"].sum() == 14 * 7
    assert initial_op_mask(PRIMITIVES, 8, {"normal": (14, 8)}) is None
    with pytest.raises(ValueError, match="all but 'none'"):
        initial_op_mask(PRIMITIVES, 5, {"normal": (14, 8)})


def test_top_ops_mask_keeps_the_largest_active_ops():
    a = torch.tensor([[0.5, 3.0, -1.0, 2.0, float("-inf")],
                      [float("-inf"), float("-inf"), float("-inf"), 1.0, 0.0]])
    m = top_ops_mask({"cell": a}, 2)["cell"]
    assert m.tolist() == [[False, True, False, True, False], [False, False, False, True, True]]
    m3 = top_ops_mask({"cell": a}, 3)["cell"]
    assert m3[1].sum() == 2  # an edge with fewer active ops keeps them all, never a pruned one
    both = combine_masks({"cell": m3}, {"cell": torch.tensor([[True] * 5, [False] * 4 + [True]])})
    assert both["cell"].tolist() == [m3[0].tolist(), [False, False, False, False, True]]


def test_widening_keeps_the_old_channels_and_splits_replicated_inputs():
    torch.manual_seed(0)
    conv = torch.randn(3, 3, 3, 3)       # (out, in, kh, kw): 3 -> 5 channels both ways
    bn = torch.rand(3) + 0.5
    old = {"op.conv.weight": conv, "op.bn.running_var": bn, "stem.weight": torch.randn(4, 3, 3, 3),
           "mask_cell": torch.zeros(2, 2, dtype=torch.bool), "pruned.weight": torch.randn(2)}
    template = {"op.conv.weight": torch.zeros(5, 5, 3, 3), "op.bn.running_var": torch.zeros(5),
                "stem.weight": torch.zeros(4, 3, 3, 3), "mask_cell": torch.ones(2, 2, dtype=torch.bool)}
    new = widen_state_dict(old, template, seed=0, keep_fresh=("mask_",))
    assert set(new) == set(template)
    assert torch.equal(new["stem.weight"], old["stem.weight"])
    assert new["mask_cell"].all()                                  # the new stage's mask, not the old one
    w = new["op.conv.weight"]
    # the out-channel map equals the BN's: channel j of both copies the same old channel
    idx = [int((bn == v).nonzero()) for v in new["op.bn.running_var"]]
    assert idx[:3] == [0, 1, 2]
    for j, src in enumerate(idx):
        # summed over the new input channels, each new out channel carries its source's total weight
        torch.testing.assert_close(w[j].sum(0), conv[src].sum(0))
    counts = torch.bincount(torch.tensor(idx), minlength=3)
    torch.testing.assert_close(w[:3, :3], conv / counts.view(1, 3, 1, 1).float())
    with pytest.raises(ValueError, match="cannot widen"):
        widen_state_dict({"a": torch.zeros(5)}, {"a": torch.zeros(3)}, seed=0)


def test_factorized_reduce_bn_follows_its_two_convs():
    """A FactorizedReduce's BN channels are conv_1's outputs then conv_2's: each half is widened by the
    map of its conv, not by the full-width map."""
    from fastnas.nn.operations import FactorizedReduce

    torch.manual_seed(0)
    old, new = FactorizedReduce(4, 4, affine=False), FactorizedReduce(6, 6, affine=False)
    with torch.no_grad():
        old.bn.running_mean.copy_(torch.arange(4.0))       # channel c carries the value c
        old.conv_1.weight.copy_(torch.arange(2.0).view(2, 1, 1, 1).expand(2, 4, 1, 1))
        old.conv_2.weight.copy_(torch.arange(2.0, 4.0).view(2, 1, 1, 1).expand(2, 4, 1, 1))
    state = widen_state_dict(old.state_dict(), new.state_dict(), seed=3)
    mean = state["bn.running_mean"]
    # conv_k's out channel j was filled with its source channel's value v over 4 inputs; the widened
    # input copies still sum to 4 v, so sum / 4 names the source, whose BN channel must be mean[j]
    source_1 = state["conv_1.weight"].sum(1)[:, 0, 0] / 4
    source_2 = state["conv_2.weight"].sum(1)[:, 0, 0] / 4
    torch.testing.assert_close(mean[:3], source_1)
    torch.testing.assert_close(mean[3:], source_2)
    assert set(source_2.round().tolist()) <= {2.0, 3.0}


def _mixed_ops(model):
    from fastnas.nn.mixed import PartialChannelMixedOp
    return [m for m in model.modules() if isinstance(m, PartialChannelMixedOp)]


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_advancing_a_stage_changes_k_and_ops_and_carries_weights(tmp_path, space):
    s = Searcher(SearchConfig(space=space, init_channels=12, layers=1 if space == "nb201" else 3, epochs=2,
                              out_dir=str(tmp_path / "run"), **TINY))
    first, second = s.stages
    n_ops = len(s.model.primitives)
    assert all(op.k == first.partial_channels for op in _mixed_ops(s.model))
    assert all(sum(op.active) == first.ops_per_edge for op in _mixed_ops(s.model))
    with torch.no_grad():  # distinct alphas so the kept ops are known
        for p in s.model.arch_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn_like(p))
    expected = top_ops_mask(s.model.masked_alphas(), second.ops_per_edge)
    stem = s.model.stem[0].weight.detach().clone()
    alphas = [p.detach().clone() for p in s.model.arch_parameters()]
    s._advance_stage(second)
    ops = _mixed_ops(s.model)
    assert all(op.k == second.partial_channels for op in ops)
    assert all(sum(op.active) == second.ops_per_edge for op in ops)
    for kind, m in s.model.op_masks().items():
        assert torch.equal(m, expected[kind]) and m.shape[1] == n_ops
    assert torch.equal(s.model.stem[0].weight, stem)
    # Kept ops' alphas carried over, dropped ones reset to 0 (DrNAS's prune); DrNAS's KL keeps running
    # over the first stage's ops.
    for kind, a, b in zip(s.model.cell_kinds(), s.model.arch_parameters(), alphas):
        m = s.model.op_masks()[kind]
        assert torch.equal(a[m], b[m]) and (a[~m] == 0).all()
        first_ops = getattr(s.model, f"reg_columns_{kind}")
        assert int(first_ops[0].sum()) == first.ops_per_edge
    assert s.step.model is s.model and s.supernet_spec["stage"] == 1
    # pruned ops own no parameters any more; kept conv ops do
    for op in ops:
        for primitive, module, active in zip(op.primitives, op._ops, op.active):
            n = sum(p.numel() for p in module.parameters())
            assert (n == 0) if not active else (n > 0 or "conv" not in primitive), (primitive, active, n)


def test_progressive_search_records_the_stages_and_resumes_across_the_boundary(tmp_path, monkeypatch):
    kw = dict(TINY, space="nb201", init_channels=8, layers=1, epochs=3)
    full = fastnas.search(**kw, out_dir=str(tmp_path / "full"))
    assert [(h["stage"], h["partial_channels"], h["ops_per_edge"]) for h in full.history] == \
        [(1, 4, 5), (2, 2, 3), (2, 2, 3)]
    for kill in (1, 2):  # before the switch (checkpoint of stage 1) and after it (checkpoint of stage 2)
        resumed = search_killed_then_resumed(monkeypatch, kill, tmp_path / f"killed{kill}", **kw)
        for name, p in full.arch_parameters.items():
            assert torch.equal(resumed.arch_parameters[name], p), (kill, name)
        assert resumed.arch == full.arch


@pytest.mark.parametrize("settings, message", [
    (dict(init_channels=16), "not divisible by the K \\[6\\]"),
    (dict(partial_channels=2, init_channels=24), "conflicts with drnas_stages"),
    (dict(drnas_stages=((6, 5), (4, 4)), init_channels=24), "first stage keeps all 8 ops"),
    (dict(drnas_stages=((6, 7), (4, 8)), init_channels=24), "a stage can only prune"),
    (dict(drnas_stages=((6, 7), (4, 0)), init_channels=24), "ops per edge in 1..8"),
    (dict(drnas_stages="67", init_channels=24), "pairs"),
    (dict(epochs=1, init_channels=24), "epochs=1"),
    (dict(drnas_stages=((2, 7), (4, 4)), init_channels=24), "more than stage 1 \\(K=2\\)"),
    (dict(drnas_stages=((6, 7), (4, 1)), init_channels=24), "keep at least 2"),
    (dict(init_channels=24, epochs=20, warmup_epochs=10), "warmup_epochs=10: DrNAS trains only the weights for "
                                                          "the first warmup_epochs epochs of every stage, and stage 1 has 10"),
])
def test_bad_stage_settings_name_the_problem(settings, message):
    with pytest.raises(ValueError, match=message):
        SearchConfig(method="drnas", **{"warmup_epochs": 0, **settings}).resolved()


def test_stages_only_apply_to_drnas():
    with pytest.raises(ValueError, match="drnas_stages applies"):
        SearchConfig(method="pc-darts", drnas_stages=((4, 8),)).resolved()
    with pytest.raises(ValueError, match="drnas_stages applies"):
        SearchConfig(method="drnas", drnas_progressive=False, drnas_stages=((4, 8),)).resolved()


def test_cli_takes_the_stages(tmp_path, capsys):
    from fastnas.cli import main

    out = tmp_path / "cli"
    code = main(["search", "--space", "nb201", "--method", "drnas", "--dataset", "synthetic", "--dataset-option",
                 "n=64", "--batch_size", "8", "--init_channels", "8", "--layers", "1", "--epochs", "2",
                 "--warmup_epochs", "0", "--device", "cpu", "--quiet", "--hessian_iters", "0",
                 "--drnas_stages", "2:5,1:2", "--out_dir", str(out)])
    assert code == 0
    import json
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["partial_channels"], r["ops_per_edge"]) for r in rows] == [(2, 5), (1, 2)]
    with pytest.raises(SystemExit) as exit_:
        main(["search", "--method", "drnas", "--drnas_stages", "6-7"])
    assert exit_.value.code == 2 and "K:OPS" in capsys.readouterr().err
