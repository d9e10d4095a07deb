"""Zero-shot pruning before a one-shot search: op masks in the supernet, the pruning rounds, the engine."""
import json

import pytest
import torch
import torch.nn as nn

import fastnas
from fastnas.nn import SearchNetwork
from fastnas.proxies.registry import PROXIES, register_proxy
from fastnas.search import Searcher
from fastnas.search.pruning import ops_to_keep, prune_supernet, saved_activation_bytes
from fastnas.spaces import NB201_PRIMITIVES, PRIMITIVES
from helpers import search_killed_then_resumed

original_prune = Searcher._prune

# A test proxy with a known answer: the sum of a fixed importance over the active ops of the network.
# Removing op o lowers it by importance[o] exactly, so pruning must keep each edge's most important ops.
_IMPORTANCE = {"cell": torch.tensor([[0.5, 3.0, 1.0, 4.0, 2.0]] * 6, dtype=torch.float64)}
_IMPORTANCE["cell"][2] = torch.tensor([5.0, 1.0, 4.0, 0.25, 3.0])  # edge 2 ranks differently


def _importance_proxy(model, images, labels=None):
    masks = model.op_masks()
    return float(sum((_IMPORTANCE[k] * masks[k].double()).sum() for k in masks)) + 1.0


if "test_importance" not in PROXIES:
    register_proxy("test_importance", higher_is_better=True, uses_labels=False, batch_size=2)(_importance_proxy)


def _nb201(**kw):
    return SearchNetwork("nb201", C=8, num_classes=10, layers=1, partial_channels=1, edge_norm=False, **kw)


@pytest.mark.parametrize("n_ops,keep,expected", [(7, 0.5, 4), (4, 0.5, 2), (7, 0.25, 2), (4, 0.01, 1), (7, 0.99, 7)])
def test_ops_to_keep(n_ops, keep, expected):
    assert ops_to_keep(n_ops, keep) == expected


def test_saved_activation_bytes_counts_saved_tensors_not_parameters():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    x = torch.randn(2, 4)
    # Linear saves its input (2x4 fp32 = 32 B; its weight is a parameter), ReLU its output (2x3 = 24 B).
    assert saved_activation_bytes(model, x) == 32 + 24


def test_masked_supernet_builds_no_pruned_ops_and_matches_the_full_one_with_the_mask():
    torch.manual_seed(0)
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[:, NB201_PRIMITIVES.index("nor_conv_3x3")] = False
    mask[1, NB201_PRIMITIVES.index("avg_pool_3x3")] = False
    full = _nb201()
    pruned = _nb201(op_mask={"cell": mask})
    n_full = sum(p.numel() for p in full.weight_parameters())
    n_pruned = sum(p.numel() for p in pruned.weight_parameters())
    assert n_pruned < n_full  # the 3x3 convs are not built
    missing, unexpected = pruned.load_state_dict(full.state_dict(), strict=False)
    assert not unexpected or all("nor_conv" in k or "_ops.3" in k for k in unexpected)
    full.set_op_mask({"cell": mask})
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(pruned(x), full(x))
    w = pruned.arch_weights()["cell"]
    assert (w[~mask] == 0).all() and torch.allclose(w.sum(1), torch.ones(6))
    with torch.no_grad():
        pruned.alphas[:, NB201_PRIMITIVES.index("nor_conv_3x3")] = 100.0  # a pruned op can never be derived
    assert "nor_conv_3x3" not in pruned.genotype()


def test_parameter_counts_leave_out_the_ops_a_mask_switches_off():
    """reg_swap's factor and the params proxy read the parameter count: pruning compares N with N
    without o by switching o off, so the count must be that of a supernet built without o."""
    from fastnas.proxies import get_proxy
    from fastnas.proxies.activation import count_parameters_k

    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[:, NB201_PRIMITIVES.index("nor_conv_3x3")] = False
    switched = _nb201()
    full_k = count_parameters_k(switched)
    switched.set_op_mask({"cell": mask})
    built = _nb201(op_mask={"cell": mask})
    assert count_parameters_k(switched) == count_parameters_k(built) < full_k
    params = get_proxy("params")
    x = torch.randn(16, 3, 8, 8)
    assert params(switched, x) == params(built, x)
    # reg_swap's relative change is no longer swap's: the factor moves with the count.
    settings = dict(repeats=1, mu=10.0, sigma=100.0)
    on = _nb201()
    scores = {}
    for name in ("swap", "reg_swap"):
        kw = {"repeats": 1} if name == "swap" else settings
        values = []
        for m in (None, {"cell": mask}):
            on.set_op_mask(m)
            torch.manual_seed(0)
            values.append(get_proxy(name)(on, x, **kw))
        scores[name] = (values[0] - values[1]) / values[0]
    assert abs(scores["reg_swap"] - scores["swap"]) > 1e-3


def test_darts_mask_keys_and_shapes_are_checked():
    with pytest.raises(ValueError, match="keys"):
        SearchNetwork("darts", C=8, layers=2, op_mask={"cell": torch.ones(14, 8, dtype=torch.bool)})
    with pytest.raises(ValueError, match="shape"):
        SearchNetwork("darts", C=8, layers=2, op_mask={"normal": torch.ones(14, 7, dtype=torch.bool),
                                                       "reduce": torch.ones(14, 8, dtype=torch.bool)})
    m = torch.ones(14, len(PRIMITIVES), dtype=torch.bool)
    m[:, 1:] = False  # only 'none' left on every edge
    with pytest.raises(ValueError, match="other than 'none'"):
        SearchNetwork("darts", C=8, layers=2, op_mask={"normal": m, "reduce": m})


def test_pruning_keeps_the_ops_whose_removal_costs_the_proxy_most():
    x = torch.randn(4, 3, 8, 8)
    report = prune_supernet(_nb201, ["test_importance"], x, None, keep=0.5)
    target = ops_to_keep(4, 0.5)  # the 4 NB201 ops other than 'none'
    for e in range(6):
        real = _IMPORTANCE["cell"][e, 1:]  # column 0 is 'none': never pruned, outside the quota
        top = [0] + (torch.topk(real, target).indices + 1).sort().values.tolist()
        assert report.masks["cell"][e].nonzero().flatten().tolist() == top
        assert report.kept["cell"][e] == [NB201_PRIMITIVES[o] for o in top]
    assert len(report.rounds) == 4 - target
    # Round 1 scores are the relative drops: importance / proxy(N); 'none' is not scored (NaN -> None).
    total = float(_IMPORTANCE["cell"].sum()) + 1.0
    first = report.rounds[0]["cell"]
    assert all(row[0] is None for row in first)
    torch.testing.assert_close(torch.tensor([row[1:] for row in first], dtype=torch.float64),
                               _IMPORTANCE["cell"][:, 1:] / total)


def test_none_is_never_pruned_even_when_it_scores_lowest():
    x = torch.randn(4, 3, 8, 8)
    _IMPORTANCE["cell"][0] = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4])
    try:
        report = prune_supernet(_nb201, ["test_importance"], x, None, keep=0.2)
    finally:
        _IMPORTANCE["cell"][0] = torch.tensor([0.5, 3.0, 1.0, 4.0, 2.0])
    assert report.kept["cell"][0] == ["none", "avg_pool_3x3"]  # the best real op, and 'none'
    assert all(len(ops) == 2 and ops[0] == "none" for ops in report.kept["cell"])


def test_search_with_pruning_runs_saves_memory_and_resumes(tmp_path, monkeypatch):
    common = dict(space="nb201", method="darts", dataset="synthetic", dataset_options={"n": 64}, batch_size=8,
                  init_channels=8, layers=1, epochs=2, warmup_epochs=0, device="cpu", quiet=True,
                  prune="test_importance", keep=0.5, seed=3)
    result = fastnas.search(**common, out_dir=str(tmp_path / "run"))
    prune = json.loads((tmp_path / "run" / "prune.json").read_text())
    kept = prune["kept"]["cell"]
    assert all(len(ops) == 3 and ops[0] == "none" for ops in kept)  # 'none' + 2 of the 4 real ops
    # Every derived op is a kept op of its edge.
    from fastnas.spaces import parse_arch
    assert all(op in kept[e] for e, op in enumerate(parse_arch(result.arch)))
    mem = result.extras["prune"]["memory"]
    assert 0 < mem["activation_saving"] < 1 and mem["params_pruned"] < mem["params_full"]
    # Killed in epoch 2, resumed: the masks come from the checkpoint (no second pruning), same result.
    monkeypatch.setattr(Searcher, "_prune", lambda *a: pytest.fail("a resumed search must not prune again")
                        if (tmp_path / "r2" / "checkpoint.pt").is_file() else original_prune(*a))
    resumed = search_killed_then_resumed(monkeypatch, 1, tmp_path / "r2", **common)
    assert resumed.arch == result.arch
    for name, value in result.arch_parameters.items():
        assert torch.equal(resumed.arch_parameters[name], value), name


def test_pc_darts_pruning_also_reports_the_darts_supernet(tmp_path):
    """With partial channels, prune.json also holds the activation memory of DARTS's supernet (K=1, every
    op), the one-shot baseline without partial channels, measured the same way."""
    common = dict(space="nb201", dataset="synthetic", dataset_options={"n": 32}, batch_size=8, init_channels=8,
                  layers=1, epochs=1, steps_per_epoch=1, warmup_epochs=0, device="cpu", quiet=True,
                  prune="test_importance", keep=0.5, seed=3)
    pc = fastnas.search(**common, method="pc-darts", partial_channels=2, out_dir=str(tmp_path / "pc"))
    darts = fastnas.search(**common, method="darts", out_dir=str(tmp_path / "darts"))
    mem_pc, mem_darts = pc.extras["prune"]["memory"], darts.extras["prune"]["memory"]
    assert "activation_bytes_per_image_darts" not in mem_darts          # K=1 is the baseline itself
    # the same seed prunes the same ops: the K=1 unpruned supernet is the DARTS run's "full" one
    assert pc.extras["prune"]["kept"] == darts.extras["prune"]["kept"]
    assert mem_pc["activation_bytes_per_image_darts"] == mem_darts["activation_bytes_per_image_full"]
    assert mem_pc["activation_bytes_per_image_full"] < mem_pc["activation_bytes_per_image_darts"]
    assert mem_pc["activation_saving_vs_darts"] == pytest.approx(
        1 - mem_pc["activation_bytes_per_image_pruned"] / mem_darts["activation_bytes_per_image_full"])
    assert mem_pc["activation_saving_vs_darts"] > mem_pc["activation_saving"]
    on_disk = json.loads((tmp_path / "pc" / "prune.json").read_text())["memory"]
    assert on_disk["activation_saving_vs_darts"] == mem_pc["activation_saving_vs_darts"]


def test_prune_settings_are_validated():
    with pytest.raises(ValueError, match="unknown proxy"):
        fastnas.search(space="nb201", method="darts", dataset="synthetic", prune="not_a_proxy", quiet=True)
    with pytest.raises(ValueError, match="keep"):
        fastnas.search(space="nb201", method="darts", dataset="synthetic", prune="test_importance", keep=1.5,
                       quiet=True)


def test_a_proxy_that_cannot_score_a_supernet_is_refused_up_front():
    with pytest.raises(ValueError, match="prune='epsinas': this proxy cannot prune a supernet: it evaluates"):
        fastnas.search(space="nb201", method="darts", dataset="synthetic", prune="nwot,epsinas", quiet=True)
    x = torch.zeros(4, 3, 8, 8)
    with pytest.raises(ValueError, match="proxy 'epsinas' cannot prune a supernet"):
        prune_supernet(lambda: pytest.fail("built before the proxies were checked"), ["epsinas"], x, None)


def test_pruning_refuses_unpaired_repeats():
    x, y = torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="'repeats' averages unpaired draws"):
        prune_supernet(lambda: pytest.fail("built before the settings were checked"), ["grasp"], x, y,
                       settings={"grasp": {"repeats": 2}})


def test_cli_search_takes_the_pruning_and_zero_shot_options(tmp_path, capsys):
    from fastnas.cli import main

    out = tmp_path / "pruned"
    assert main(["search", "--space", "nb201", "--method", "darts", "--dataset", "synthetic",
                 "--dataset-option", "n=64", "--batch_size", "8", "--init_channels", "8", "--layers", "1",
                 "--epochs", "1", "--warmup_epochs", "0", "--device", "cpu", "--prune", "test_importance",
                 "--keep", "0.4", "--out_dir", str(out), "--quiet"]) == 0
    kept = json.loads((out / "prune.json").read_text())["kept"]["cell"]
    assert all(len(ops) == 3 for ops in kept)  # 'none' + ceil(0.4 * 4) real ops
    capsys.readouterr()
    assert main(["search", "--space", "nb201", "--method", "random", "--proxy", "params", "--cycles", "5",
                 "--dataset", "synthetic", "--device", "cpu", "--out_dir", str(tmp_path / "random"), "--quiet"]) == 0
    from fastnas.spaces import parse_arch
    parse_arch(capsys.readouterr().out.strip())  # --quiet prints the arch string only
    assert main(["search", "--method", "random", "--proxy", "no_such_proxy", "--dataset", "synthetic",
                 "--out_dir", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "unknown proxy" in capsys.readouterr().err


# -- resume of an interrupted pruning ------------------------------------------------------------------
# The importance proxy again, counting its calls and "killing the process" at call ``kill_at`` (raising
# _Killed, a BaseException like KeyboardInterrupt, which pytest would take as the user stopping the whole
# session): how many evaluations a resumed pruning repeats is observable.
_CALLS = {"n": 0, "kill_at": None}


class _Killed(BaseException):
    pass


def _counted_importance_proxy(model, images, labels=None):
    _CALLS["n"] += 1
    if _CALLS["kill_at"] is not None and _CALLS["n"] >= _CALLS["kill_at"]:
        _CALLS["kill_at"] = None
        raise _Killed("killed while pruning")
    return _importance_proxy(model, images, labels)


if "test_importance_counted" not in PROXIES:
    register_proxy("test_importance_counted", higher_is_better=True, uses_labels=False,
                   batch_size=2)(_counted_importance_proxy)


def _count_calls(kill_at=None):
    _CALLS.update(n=0, kill_at=kill_at)


def test_prune_supernet_reads_back_the_evaluations_of_an_interrupted_pruning(tmp_path, monkeypatch):
    from fastnas.search import prune_progress
    from fastnas.search.prune_progress import PruneProgress

    monkeypatch.setattr(prune_progress, "SAVE_EVERY_S", 0.0)  # save after every evaluation
    x = torch.randn(4, 3, 8, 8)
    fingerprint = {"config": {"seed": 0}}
    _count_calls()
    whole = prune_supernet(_nb201, ["test_importance_counted"], x, None, keep=0.25)
    total = _CALLS["n"]
    assert total == whole.evaluations > 20  # 3 rounds over 6 edges

    path = tmp_path / "prune_progress.json"
    _count_calls(kill_at=11)
    with pytest.raises(_Killed):
        prune_supernet(_nb201, ["test_importance_counted"], x, None, keep=0.25,
                       progress=PruneProgress.open(path, fingerprint, resume=False))
    assert len(json.loads(path.read_text())["evaluations"]) == 10  # the 11th died before its value existed

    _count_calls()
    resumed = prune_supernet(_nb201, ["test_importance_counted"], x, None, keep=0.25,
                             progress=PruneProgress.open(path, fingerprint, resume=True))
    assert _CALLS["n"] == total - 10 and resumed.reused_evaluations == 10
    assert resumed.kept == whole.kept and resumed.rounds == whole.rounds
    assert all(torch.equal(resumed.masks[k], whole.masks[k]) for k in whole.masks)
    assert len(json.loads(path.read_text())["evaluations"]) == total

    _count_calls()  # a finished pruning replays from the file alone
    again = prune_supernet(_nb201, ["test_importance_counted"], x, None, keep=0.25,
                           progress=PruneProgress.open(path, fingerprint, resume=True))
    assert _CALLS["n"] == 0 and again.kept == whole.kept and again.reused_evaluations == total
    # resume=False starts afresh (the engine refuses such a folder before it gets here)
    assert PruneProgress.open(path, fingerprint, resume=False).evaluations == {}


def test_pruning_progress_of_another_run_or_a_damaged_file_is_refused(tmp_path):
    from fastnas.search.prune_progress import PruneProgress

    path = tmp_path / "prune_progress.json"
    progress = PruneProgress.open(path, {"config": {"seed": 0, "keep": 0.5}, "torch": "2.0"}, resume=False)
    progress.record("cell:1111", [1.5])
    progress.save()
    assert PruneProgress.open(path, {"config": {"seed": 0, "keep": 0.5}, "torch": "2.0"}, True).evaluations == {
        "cell:1111": [1.5]}
    with pytest.raises(ValueError, match=r"records another run \(config.seed: saved 0, now 1\)"):
        PruneProgress.open(path, {"config": {"seed": 1, "keep": 0.5}, "torch": "2.0"}, resume=True)
    with pytest.raises(ValueError, match=r"torch: saved '2.0', now '2.1'"):
        PruneProgress.open(path, {"config": {"seed": 0, "keep": 0.5}, "torch": "2.1"}, resume=True)
    for damaged in ("", "{\"fastnas_prune_progress\": 1, \"evaluations\": {\"k\": [\"x\"]}}", "[1, 2]",
                    path.read_text()[:40]):
        path.write_text(damaged)
        with pytest.raises(ValueError, match="not a readable fastnas pruning progress file"):
            PruneProgress.open(path, {"config": {}}, resume=True)


def test_search_killed_while_pruning_resumes_the_pruning(tmp_path, monkeypatch):
    """A search killed in the middle of its pruning, resumed with resume=True, scores only the
    evaluations it had not saved and ends with the masks, prune.json and result of an uninterrupted run."""
    from fastnas.search import prune_progress

    monkeypatch.setattr(prune_progress, "SAVE_EVERY_S", 0.0)
    common = dict(space="nb201", method="darts", dataset="synthetic", dataset_options={"n": 64}, batch_size=8,
                  init_channels=8, layers=1, epochs=1, warmup_epochs=0, device="cpu", quiet=True,
                  prune="test_importance_counted", keep=0.25, seed=5)
    _count_calls()
    whole = fastnas.search(**common, out_dir=str(tmp_path / "whole"))
    total = _CALLS["n"]

    run = tmp_path / "run"
    _count_calls(kill_at=15)
    with pytest.raises(_Killed):
        fastnas.search(**common, out_dir=str(run))
    assert not (run / "prune.json").exists() and (run / "prune_progress.json").is_file()
    with pytest.raises(FileExistsError, match="pruning progress"):  # not silently thrown away
        fastnas.search(**common, out_dir=str(run))
    with pytest.raises(ValueError, match=r"config.keep: saved 0.25, now 0.5"):
        fastnas.search(**{**common, "keep": 0.5}, out_dir=str(run), resume=True)

    _count_calls()
    resumed = fastnas.search(**common, out_dir=str(run), resume=True)
    assert _CALLS["n"] == total - 14
    a, b = (json.loads((d / "prune.json").read_text()) for d in (tmp_path / "whole", run))
    assert b["reused_evaluations"] == 14 and a["reused_evaluations"] == 0
    for key in ("kept", "masks", "rounds", "evaluations", "memory"):
        assert a[key] == b[key], key
    assert resumed.arch == whole.arch
    for name, value in whole.arch_parameters.items():
        assert torch.equal(resumed.arch_parameters[name], value), name


# -- the working copy pruning scores, restored in place instead of deep-copied ------------------------
def _masks_sequence(net):
    """All ops on, then two different single-op removals, then all on again."""
    full = {k: torch.ones(len(a), len(net.primitives), dtype=torch.bool) for k, a in net.masked_alphas().items()}
    seq = [full]
    for e, o in ((0, 1), (1, 2)):
        m = {k: v.clone() for k, v in full.items()}
        kind = next(iter(m))
        m[kind][e, o] = False
        seq.append(m)
    return seq + [full]


@pytest.mark.parametrize("space", ["nb201", pytest.param("darts", marks=pytest.mark.slow)])
def test_supernet_copy_gives_every_proxy_exactly_what_a_deep_copy_gives(space):
    """Every registered proxy, evaluated on a sequence of masks through one restored working copy, scores
    exactly (==) what it scores on a fresh deep copy each time: whatever a proxy changed in the copy
    (weights re-initialised or made absolute, float64, BN statistics, gradients, train/eval) is undone."""
    import copy

    from fastnas.proxies.registry import available_proxies, get_proxy
    from fastnas.search.pruning import SupernetCopy, _evaluate

    torch.manual_seed(0)
    template = SearchNetwork(space, C=8, num_classes=10, layers=1 if space == "nb201" else 3, partial_channels=1,
                             edge_norm=False).train()
    template.set_op_mask(None)
    before = {k: v.clone() for k, v in template.state_dict().items()}
    from fastnas.search.pruning import NOT_FOR_SUPERNETS

    # fastnas's own proxies (other test files register test proxies of their own, e.g. table lookups)
    names = [n for n in available_proxies()
             if get_proxy(n).fn.__module__.startswith("fastnas.") and n not in NOT_FOR_SUPERNETS]
    assert len(names) >= 12
    settings = {"swap": {"repeats": 1}, "reg_swap": {"repeats": 1}}
    chosen = [get_proxy(n) for n in names]
    x_n = max(p.batch_size or 1 for p in chosen)
    x, y = torch.randn(x_n, 3, 8, 8), torch.randint(0, 10, (x_n,))

    class DeepCopies:
        def get(self):
            return copy.deepcopy(template)

    restored = SupernetCopy(template)
    for masks in _masks_sequence(template):
        for proxy in chosen:
            a = _evaluate(restored, masks, [proxy], x, y, 3, settings)
            b = _evaluate(DeepCopies(), masks, [proxy], x, y, 3, settings)
            assert a == b or (a != a and b != b), (proxy.name, a, b)
    after = template.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the template is only read


def test_pruning_with_the_restored_copy_equals_pruning_with_deep_copies(monkeypatch):
    import copy

    from fastnas.search import pruning

    x, y = torch.randn(64, 3, 8, 8), torch.randint(0, 10, (64,))
    fast = prune_supernet(_nb201, ["reg_swap", "synflow"], x, y, keep=0.5, seed=1)
    monkeypatch.setattr(pruning.SupernetCopy, "get", lambda self: copy.deepcopy(self.template))
    slow = prune_supernet(_nb201, ["reg_swap", "synflow"], x, y, keep=0.5, seed=1)
    assert fast.rounds == slow.rounds and fast.kept == slow.kept


@pytest.mark.parametrize("damage", ["eval", "values", "grads", "requires_grad", "bn_stats", "double", "hook",
                                    "bn_momentum", "module_swapped"])
def test_supernet_copy_undoes_what_was_done_to_the_previous_copy(damage):
    """Whatever was done to the copy :meth:`SupernetCopy.get` handed out, the next one equals the
    template: values, gradients and flags restored in place; a changed dtype, hook, module setting or
    module answered with a new deep copy."""
    from fastnas.search.pruning import SupernetCopy

    torch.manual_seed(0)
    template = _nb201().train()
    template.set_op_mask(None)
    supernet = SupernetCopy(template)
    net = supernet.get()
    bn = next(m for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    first_param = next(net.parameters())
    if damage == "eval":
        net.eval()
    elif damage == "values":
        with torch.no_grad():
            for p in net.parameters():
                p.add_(1.0)
    elif damage == "grads":
        net(torch.randn(2, 3, 8, 8)).sum().backward()
    elif damage == "requires_grad":
        first_param.requires_grad_(False)
    elif damage == "bn_stats":
        net.train()(torch.randn(4, 3, 8, 8) * 5)
    elif damage == "double":
        net.double()
    elif damage == "hook":
        bn.register_forward_hook(lambda *a: None)
    elif damage == "bn_momentum":
        bn.momentum = 0.5
    elif damage == "module_swapped":
        net.stem = nn.Identity()
    again = supernet.get()
    mine, theirs = again.state_dict(), template.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(mine[k].dtype == theirs[k].dtype and torch.equal(mine[k], theirs[k]) for k in mine)
    assert [m.training for m in again.modules()] == [m.training for m in template.modules()]
    assert all(p.grad is None and p.requires_grad for p in again.parameters())
    assert all(not m._forward_hooks for m in again.modules())
    assert all(getattr(m, "momentum", 0.1) == 0.1 for m in again.modules())
    assert [type(m) for m in again.modules()] == [type(m) for m in template.modules()]
