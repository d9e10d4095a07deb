"""Zero-shot searches (fastnas.search.zero_shot) and their operators (fastnas.search.evolution).

Fast: the proxies are test-only ones registered here (a parameter count, a table lookup), the networks
are shrunk with ``init_channels``/``layers`` where only the arch matters, and budgets are tiny. The
one statistical test (evolution beats random sampling on the NB201 table) replaces the scorer with a
table lookup, since 3,200 network builds would take a minute.
"""
import json
import os
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import fastnas
import fastnas.search.zero_shot as zero_shot
from fastnas.proxies import PROXIES, register_proxy
from fastnas.search.config import SearchConfig
from fastnas.search.evolution import DartsOperators, NB201Operators, TableOperators, hamming
from fastnas.search.zero_shot import CHECKPOINT_EVERY, ZeroShotSearcher
from fastnas.spaces import NB201_EDGES, NB201_PRIMITIVES, arch_to_str, parse_arch, validate_genotype
from fastnas.tables import NB201Table

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NB201_DEV = SHARED_DATA / "nb201_dev.csv"
needs_table = pytest.mark.skipif(
    not NB201_DEV.is_file(), reason=f"real NB201 data not present: {NB201_DEV} (shared/data is not part of the repo)")

# -- test-only proxies -------------------------------------------------------------------------------
PARAMS = "_test_zero_shot_params"      # parameter count, higher is better
FEWER = "_test_zero_shot_fewer"        # parameter count, lower is better
BATCH = "_test_zero_shot_batch"        # records the batch it receives
SLOW = "_test_zero_shot_slow"          # sleeps
TABLE = "_test_zero_shot_table"        # NB201 table accuracy + deterministic per-arch noise
BATCHES_SEEN = []
TABLE_ACC = {}


def _n_params(model) -> float:
    return float(sum(p.numel() for p in model.parameters()))


def _table_fitness(key: str, noise: float) -> float:
    """cifar10_test of the arch plus N(0, noise) drawn from the arch string (so each arch has one value)."""
    return TABLE_ACC[key] + noise * np.random.default_rng(zlib.crc32(key.encode())).standard_normal()


if PARAMS not in PROXIES:
    register_proxy(PARAMS, higher_is_better=True, uses_labels=False, batch_size=1)(
        lambda model, images, labels=None: _n_params(model))
    register_proxy(FEWER, higher_is_better=False, uses_labels=False, batch_size=1)(
        lambda model, images, labels=None: _n_params(model))

    @register_proxy(BATCH, higher_is_better=True, uses_labels=True, batch_size=7)
    def _batch(model, images, labels=None, *, scale=1.0):
        BATCHES_SEEN.append((tuple(images.shape), tuple(labels.shape), scale))
        return scale * _n_params(model)

    @register_proxy(SLOW, higher_is_better=True, uses_labels=False, batch_size=1)
    def _slow(model, images, labels=None):
        time.sleep(0.05)
        return _n_params(model)

    @register_proxy(TABLE, higher_is_better=True, uses_labels=False, batch_size=1)
    def _table(model, images, labels=None, *, noise=0.3):
        return _table_fitness(arch_to_str(model.arch), noise)


@pytest.fixture(scope="module")
def table():
    if not NB201_DEV.is_file():
        pytest.skip(f"real NB201 data not present: {NB201_DEV}")
    t = NB201Table.from_csv(NB201_DEV)
    TABLE_ACC.update(zip(t.archs, t.column("cifar10_test").tolist()))
    return t


def config(tmp_path, name="run", **kw):
    """A small, fast search: NB201 cells of 4 channels, 1 cell per stage (only the arch matters to the
    test proxies), synthetic data, 30 archs."""
    base = dict(space="nb201", method="swap-evolution", proxy=PARAMS, dataset="synthetic", cycles=30, seed=0,
                quiet=True, init_channels=4, layers=1, out_dir=str(tmp_path / name))
    base.update(kw)
    return SearchConfig(**base)


def trajectory(history):
    """What must be reproducible (times are not)."""
    return [(r["step"], r["arch"], r["origin"], r["fitness"], r["best_arch"]) for r in history]


# ====================================================================================================
# Operators
# ====================================================================================================
def test_nb201_random_is_valid_and_covers_every_op():
    ops, rng = NB201Operators(), np.random.default_rng(0)
    seen = [Counter() for _ in NB201_EDGES]
    for _ in range(2000):
        a = ops.random(rng)
        assert parse_arch(ops.key(a)) == a
        for e, op in enumerate(a):
            seen[e][op] += 1
    assert all(set(c) == set(NB201_PRIMITIVES) for c in seen)


def test_nb201_mutation_changes_exactly_one_edge():
    ops, rng = NB201Operators(), np.random.default_rng(1)
    for _ in range(500):
        parent = ops.random(rng)
        child = ops.mutate(parent, rng)
        assert sum(x != y for x, y in zip(parent, child)) == 1
        assert child in ops.neighbours(parent)
    parent = ("nor_conv_3x3",) * 6
    neighbours = ops.neighbours(parent)
    assert len(neighbours) == len(set(neighbours)) == 6 * 4 and parent not in neighbours
    # every one-edge change is reachable: 2,000 draws over 24 outcomes
    assert {ops.mutate(parent, rng) for _ in range(2000)} == set(neighbours)


def test_nb201_crossover_takes_each_edge_from_a_parent():
    ops, rng = NB201Operators(), np.random.default_rng(2)
    a, b = ("nor_conv_3x3",) * 6, ("none",) * 6
    from_a = np.zeros(6)
    for _ in range(400):
        child = ops.crossover(a, b, rng)
        assert all(c in (x, y) for c, x, y in zip(child, a, b))
        from_a += [c == "nor_conv_3x3" for c in child]
    assert ((from_a > 120) & (from_a < 280)).all()  # each edge from either parent, about half the time
    assert ops.crossover(a, a, rng) == a


def _check_darts(g, ops=DartsOperators()):
    validate_genotype(g)
    assert g.normal_concat == g.reduce_concat == [2, 3, 4, 5]
    for cell in (g.normal, g.reduce):
        for i in range(4):
            (op1, s1), (op2, s2) = cell[2 * i], cell[2 * i + 1]
            assert "none" not in (op1, op2)
            assert 0 <= s1 < s2 < i + 2, f"node {i}: sources must be distinct and sorted, got {s1}, {s2}"
    assert ops.parse(ops.key(g)) == g


def test_darts_random_is_valid():
    ops, rng = DartsOperators(), np.random.default_rng(3)
    genotypes = [ops.random(rng) for _ in range(500)]
    for g in genotypes:
        _check_darts(g)
    assert len({ops.key(g) for g in genotypes}) == 500
    assert {op for g in genotypes for op, _ in g.normal} == set(ops.ops)  # all 7 non-none ops appear


def _node_changes(parent, child):
    """[(cell, node, removed pairs, added pairs)] of the nodes that differ."""
    out = []
    for cell in ("normal", "reduce"):
        p, c = getattr(parent, cell), getattr(child, cell)
        for i in range(4):
            before, after = Counter(p[2 * i:2 * i + 2]), Counter(c[2 * i:2 * i + 2])
            if before != after:
                out.append((cell, i, list((before - after).elements()), list((after - before).elements())))
    return out


def test_darts_mutation_changes_one_op_or_one_input():
    ops, rng = DartsOperators(), np.random.default_rng(4)
    kinds = Counter()
    for _ in range(400):
        parent = ops.random(rng)
        child = ops.mutate(parent, rng)
        _check_darts(child)
        assert child in ops.neighbours(parent)
        changes = _node_changes(parent, child)
        assert len(changes) == 1, changes
        _, node, [(op_a, src_a)], [(op_b, src_b)] = changes[0]
        assert (op_a != op_b) != (src_a != src_b), "exactly one of op and input changes"
        kinds["op" if op_a != op_b else "input"] += 1
        if src_a != src_b:
            assert node >= 1  # node 0 reads both cell inputs: it has no free input
    assert kinds["op"] > 150 and kinds["input"] > 150  # half and half


def test_darts_neighbours_count():
    ops = DartsOperators()
    g = ops.random(np.random.default_rng(5))
    neighbours = ops.neighbours(g)
    # per cell: 8 pairs x 6 other ops + inputs: node i >= 1 has i free states for each of its 2 pairs
    assert len(neighbours) == 2 * (8 * 6 + 2 * (1 + 2 + 3)) == 120
    assert len({ops.key(n) for n in neighbours}) == 120 and g not in neighbours
    for n in neighbours:
        _check_darts(n)


def test_darts_crossover_takes_each_node_from_a_parent():
    ops, rng = DartsOperators(), np.random.default_rng(6)
    a, b = ops.random(rng), ops.random(rng)
    from_a = Counter()
    for _ in range(300):
        child = ops.crossover(a, b, rng)
        _check_darts(child)
        for cell in ("normal", "reduce"):
            for i in range(4):
                node = getattr(child, cell)[2 * i:2 * i + 2]
                node_a, node_b = getattr(a, cell)[2 * i:2 * i + 2], getattr(b, cell)[2 * i:2 * i + 2]
                assert node in (node_a, node_b)
                from_a[cell, i] += node == node_a and node_a != node_b
    differing = [k for k in from_a if any(getattr(a, k[0])[2 * k[1] + j] != getattr(b, k[0])[2 * k[1] + j]
                                          for j in range(2))]
    assert differing and all(90 < from_a[k] < 210 for k in differing)


def test_hamming_hand_checked():
    codes = np.array([[0, 1, 2, 3, 4, 0], [0, 0, 0, 0, 0, 0], [4, 4, 4, 4, 4, 4]], dtype=np.int8)
    assert hamming(codes, np.array([0, 1, 0, 0, 0, 0], dtype=np.int8)).tolist() == [3, 1, 6]


def test_table_projection_nearest_and_ties():
    skip = ("skip_connect",) * 6
    conv0 = ("nor_conv_3x3",) + skip[1:]
    conv1 = skip[:1] + ("nor_conv_3x3",) + skip[2:]
    none = ("none",) * 6
    ops = TableOperators([arch_to_str(a) for a in (conv0, conv1, none)])
    rng = np.random.default_rng(0)
    assert ops.project(conv1, rng) == conv1                      # in the table: itself
    assert ops.project(("none",) * 5 + ("skip_connect",), rng) == none   # distance 1 vs 5
    # all-skip is at distance 1 from conv0 and conv1: ties go both ways, seeded
    picks = [ops.project(skip, rng) for _ in range(200)]
    assert set(picks) == {conv0, conv1} and 60 < picks.count(conv0) < 140
    again = [ops.project(skip, np.random.default_rng(0)) for _ in range(3)]
    assert len(set(again)) == 1
    # excluding conv0 (a mutant's parent) leaves conv1 as the nearest
    assert all(ops.project(skip, rng, exclude=conv0) == conv1 for _ in range(20))
    with pytest.raises(ValueError, match="only arch"):
        TableOperators([arch_to_str(none)]).mutate(none, rng)


def test_table_operators_stay_in_the_table(table):
    ops, rng = TableOperators(table.archs), np.random.default_rng(7)
    for _ in range(300):
        a, b = ops.random(rng), ops.random(rng)
        assert a in table and b in table
        child = ops.mutate(a, rng)
        assert child in table and child != a
        assert ops.crossover(a, b, rng) in table


# ====================================================================================================
# The searcher
# ====================================================================================================
def test_evolution_nb201_result_files_and_population(tmp_path):
    searcher = ZeroShotSearcher(config(tmp_path, cycles=30, population_size=8, sample_size=3))
    r = searcher.run()
    h = r.history
    assert len(h) == 30 and len({row["arch"] for row in h}) == 30           # each arch scored once
    assert [row["origin"] for row in h] == ["init"] * 8 + ["child"] * 22
    parse_arch(r.genotype)
    fitness = [row["fitness"] for row in h]
    assert r.extras["fitness"] == max(fitness)
    assert r.genotype == h[int(np.argmax(fitness))]["arch"]                # the best ever, first of equals
    assert [row["best_fitness"] for row in h] == np.maximum.accumulate(fitness).tolist()
    assert r.arch_parameters == {} and r.table_accuracy is None
    assert r.extras["archs_scored"] == 30 and r.extras["stop_reason"] == "cycles" and r.extras["archs_per_s"] > 0
    # removal="oldest": the population is the last population_size archs scored
    assert searcher.population == [row["arch"] for row in h[-8:]]
    # run folder
    out = Path(r.out_dir)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == h
    assert (out / "genotype.txt").read_text().strip() == r.genotype
    assert json.loads((out / "config.json").read_text())["method"] == "swap-evolution"
    result_json = json.loads((out / "result.json").read_text())
    assert result_json["genotype"] == r.genotype and result_json["archs_scored"] == 30


def test_removal_worst_keeps_the_fittest(tmp_path):
    searcher = ZeroShotSearcher(config(tmp_path, removal="worst", population_size=6, sample_size=2, cycles=25))
    h = searcher.run().history
    top = sorted(h, key=lambda row: -row["fitness"])[:6]
    assert sorted(searcher.fitness[k] for k in searcher.population) == sorted(row["fitness"] for row in top)


def test_random_method(tmp_path):
    searcher = ZeroShotSearcher(config(tmp_path, method="random", cycles=20))
    r = searcher.run()
    assert [row["origin"] for row in r.history] == ["random"] * 20 and searcher.population == []
    assert r.extras["fitness"] == max(row["fitness"] for row in r.history)


def test_lower_is_better_proxy_is_minimised(tmp_path):
    r = ZeroShotSearcher(config(tmp_path, proxy=FEWER, method="random", cycles=15)).run()
    scores = [row["score"] for row in r.history]
    assert all(row["fitness"] == -row["score"] for row in r.history)
    assert r.extras["score"] == min(scores) and r.genotype == r.history[int(np.argmin(scores))]["arch"]


def test_proxy_batch_is_the_protocols_unless_set(tmp_path):
    BATCHES_SEEN.clear()
    ZeroShotSearcher(config(tmp_path, name="a", proxy=BATCH, method="random", cycles=2)).run()
    assert BATCHES_SEEN == [((7, 3, 32, 32), (7,), 1.0)] * 2   # the proxy's 7, not batch_size=256
    BATCHES_SEEN.clear()
    ZeroShotSearcher(config(tmp_path, name="b", proxy=BATCH, method="random", cycles=2,
                            proxy_settings={"batch_size": 3, "scale": 2.0})).run()
    assert BATCHES_SEEN == [((3, 3, 32, 32), (3,), 2.0)] * 2
    BATCHES_SEEN.clear()                     # repeats: two draws per arch, each on its own 7 images
    ZeroShotSearcher(config(tmp_path, name="c", proxy=BATCH, method="random", cycles=2,
                            proxy_settings={"repeats": 2})).run()
    assert BATCHES_SEEN == [((7, 3, 32, 32), (7,), 1.0)] * 4


def test_evolution_darts(tmp_path):
    # NetworkCIFAR with 4 channels and 3 cells (reductions at cells 1 and 2): the arch is what matters
    searcher = ZeroShotSearcher(config(tmp_path, space="darts", cycles=8, population_size=4, sample_size=2,
                                       layers=3))
    r = searcher.run()
    _check_darts(r.genotype)
    for row in r.history:
        _check_darts(searcher.operators.parse(row["arch"]))
    assert r.arch == r.history[int(np.argmax([row["fitness"] for row in r.history]))]["arch"]


@needs_table
def test_table_only_search_stays_in_the_table(tmp_path, table):
    r = fastnas.search(config(tmp_path, proxy=TABLE, nb201_table=str(NB201_DEV), cycles=40))
    assert r.config["table_only"] is True
    assert all(row["arch"] in table for row in r.history)
    assert r.table_accuracy == table.lookup(r.genotype)
    assert all(row["table_cifar10_test"] == TABLE_ACC[row["arch"]] for row in r.history)


@needs_table
def test_evolution_beats_random_sampling_on_the_table(tmp_path, table, monkeypatch):
    """Same budget (200 archs, the default), 8 seeds, fitness = cifar10_test + N(0, 0.3) per arch.
    Measured: seeds 0-7 (these) evolution 93.71 vs random 93.57 mean cifar10_test; seeds 0-19 93.82 vs
    93.64, and each of their four disjoint 5-seed groups favours evolution."""
    monkeypatch.setattr(zero_shot, "score_one", lambda arch, *a, **k: _table_fitness(arch_to_str(arch), 0.3))
    # 3,200 metrics rows and 320 checkpoints: fsync (not under test here) would take most of the time
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    found = {}
    for method in ("swap-evolution", "random"):
        found[method] = [TABLE_ACC[ZeroShotSearcher(config(tmp_path, name=f"{method}-{seed}", method=method,
                                                           seed=seed, cycles=200, nb201_table=str(NB201_DEV)))
                                   .run().genotype] for seed in range(8)]
    evolution, random = np.mean(found["swap-evolution"]), np.mean(found["random"])
    print(f"mean cifar10_test found: evolution {evolution:.3f}, random {random:.3f}")
    assert evolution > random + 0.05, found


def test_deterministic_for_a_seed(tmp_path):
    runs = [ZeroShotSearcher(config(tmp_path, name=f"r{i}", seed=seed)).run() for i, seed in enumerate((3, 3, 4))]
    assert trajectory(runs[0].history) == trajectory(runs[1].history)
    assert [r["arch"] for r in runs[0].history] != [r["arch"] for r in runs[2].history]


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    cycles, killed_at = 37, 24        # checkpoints after 10 and 20 archs; archs 21-23 only in metrics.jsonl
    assert CHECKPOINT_EVERY == 10
    reference = ZeroShotSearcher(config(tmp_path, name="reference", cycles=cycles)).run()

    real = zero_shot.score_one
    calls = []

    def dies(*args, **kwargs):
        calls.append(1)
        if len(calls) == killed_at:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(zero_shot, "score_one", dies)
    with pytest.raises(KeyboardInterrupt):
        ZeroShotSearcher(config(tmp_path, name="killed", cycles=cycles)).run()
    out = tmp_path / "killed"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == killed_at - 1
    monkeypatch.setattr(zero_shot, "score_one", real)

    resumed_searcher = ZeroShotSearcher(config(tmp_path, name="killed", cycles=cycles, resume=True))
    assert len(resumed_searcher.history) == 20
    resumed = resumed_searcher.run()
    assert trajectory(resumed.history) == trajectory(reference.history)
    assert resumed.genotype == reference.genotype and resumed.extras["fitness"] == reference.extras["fitness"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert trajectory(rows) == trajectory(reference.history)   # the 3 rows after the checkpoint not twice

    # resuming the finished run scores nothing and gives the same result
    monkeypatch.setattr(zero_shot, "score_one", lambda *a, **k: pytest.fail("a finished run was re-scored"))
    again = ZeroShotSearcher(config(tmp_path, name="killed", cycles=cycles, resume=True)).run()
    assert again.genotype == reference.genotype and len(again.history) == cycles


def test_refuses_an_occupied_folder_and_changed_settings(tmp_path):
    ZeroShotSearcher(config(tmp_path, cycles=5)).run()
    with pytest.raises(FileExistsError, match="already holds a search"):
        ZeroShotSearcher(config(tmp_path, cycles=5))
    with pytest.raises(ValueError, match="population_size: checkpoint 10, now 12"):
        ZeroShotSearcher(config(tmp_path, cycles=5, population_size=12, resume=True))


def test_a_second_search_on_a_folder_in_use_is_refused(tmp_path):
    first = ZeroShotSearcher(config(tmp_path, cycles=3))
    with pytest.raises(FileExistsError, match="in use by another fastnas search"):
        ZeroShotSearcher(config(tmp_path, cycles=3, resume=True))
    first.run()
    assert ZeroShotSearcher(config(tmp_path, cycles=3, resume=True)).run().history


@needs_table
def test_resume_refuses_another_table(tmp_path):
    lines = NB201_DEV.read_text().splitlines()
    (tmp_path / "a.csv").write_text("\n".join(lines[:101]) + "\n")
    (tmp_path / "moved.csv").write_text("\n".join(lines[:101]) + "\n")
    (tmp_path / "b.csv").write_text("\n".join(lines[:1] + lines[101:201]) + "\n")
    ZeroShotSearcher(config(tmp_path, cycles=5, nb201_table=str(tmp_path / "a.csv"))).run()
    # the same archs under another path resume (nb201_table is a RESULT_FIELD) ...
    ZeroShotSearcher(config(tmp_path, cycles=5, nb201_table=str(tmp_path / "moved.csv"), resume=True))
    # ... other archs do not: with table_only they are the search space
    with pytest.raises(ValueError, match="does not hold the archs of the run's table"):
        ZeroShotSearcher(config(tmp_path, cycles=5, nb201_table=str(tmp_path / "b.csv"), resume=True))


def test_time_budget_stops_after_the_first_arch_past_it(tmp_path):
    r = ZeroShotSearcher(config(tmp_path, proxy=SLOW, method="random", cycles=100, time_budget=0.3)).run()
    times = [row["time_s"] for row in r.history]
    assert r.extras["stop_reason"] == "time_budget" and 2 <= len(times) < 100
    assert times[-1] >= 0.3 > times[-2]


@pytest.mark.parametrize("settings, match", [
    (dict(proxy="no_such_proxy"), "unknown proxy 'no_such_proxy'"),
    (dict(proxy_settings={"bogus": 1}), r"proxy_settings \['bogus'\] are not settings of proxy"),
    (dict(proxy_settings={"batch_size": 0}), r"proxy_settings\['batch_size'\] must be a positive integer"),
    (dict(proxy_settings={"repeats": 0}), "repeats must be an integer >= 1"),
    (dict(population_size=4, sample_size=5), "sample_size=5 exceeds population_size=4"),
    (dict(removal="best"), "removal must be 'oldest' or 'worst'"),
    (dict(time_budget=0), "time_budget must be positive"),
    (dict(cycles=0), "cycles must be a positive integer"),
    (dict(table_only=True), "table_only=True needs nb201_table"),
    (dict(space="darts", nb201_table="table.csv"), "nb201_table applies to space='nb201'"),
    (dict(method="pc-darts"), "ZeroShotSearcher runs swap-evolution, random"),
], ids=["proxy", "proxy-setting", "proxy-batch", "proxy-repeats", "sample-size", "removal", "time-budget", "cycles",
        "table-only", "table-darts", "method"])
def test_bad_settings_are_refused_clearly(tmp_path, settings, match):
    with pytest.raises(ValueError, match=match):
        ZeroShotSearcher(config(tmp_path, **settings))
    assert not (tmp_path / "run").exists()   # nothing written


def test_fastnas_search_dispatches_zero_shot_methods(tmp_path):
    r = fastnas.search(space="nb201", method="random", proxy=PARAMS, dataset="synthetic", cycles=3, quiet=True,
                       init_channels=4, layers=1, out_dir=str(tmp_path / "api"))
    assert r.method == "random" and len(r.history) == 3 and r.extras["archs_scored"] == 3
