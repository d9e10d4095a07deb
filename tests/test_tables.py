"""fastnas.tables: NB201 ground-truth tables from CSV (synthetic files in tmp_path and the real extract
in shared/data), the nats_bench reader (its ImportError path, and a fake API object), and errors."""
import sys
from pathlib import Path

import numpy as np
import pytest

from fastnas.spaces import all_archs, arch_to_str, parse_arch
from fastnas.tables import NB201Table, load_nb201_table

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NB201_DEV = SHARED_DATA / "nb201_dev.csv"
BEST_ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"

A0 = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
A1 = "|skip_connect~0|+|nor_conv_1x1~0|nor_conv_3x3~1|+|avg_pool_3x3~0|none~1|skip_connect~2|"
A2 = BEST_ARCH
A3 = "|nor_conv_1x1~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|"


def _write(tmp_path, text, name="t.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.fixture
def small(tmp_path):
    text = ("idx,arch,cifar10_valid,cifar10_test,note\n"
            f"10,{A0},10.0,10.5,a\n"
            f"11,{A1},80.25,85.0,b\n"
            f"12,{A2},91.5,94.36,c\n"
            f"13,{A3},90.0,,d\n")  # an empty cell -> NaN
    return NB201Table.from_csv(_write(tmp_path, text))


# ---------------------------------------------------------------------------------------------------
# Synthetic CSV: the API
# ---------------------------------------------------------------------------------------------------
def test_from_csv_columns_and_len(small):
    assert len(small) == 4
    assert small.columns == ["cifar10_valid", "cifar10_test"]  # idx kept apart, text column 'note' ignored
    assert small.has_idx
    assert small.archs == [A0, A1, A2, A3]
    assert list(small) == small.archs


def test_lookup_by_string_and_tuple(small):
    row = small.lookup(A1)
    assert row == {"idx": 11, "cifar10_valid": 80.25, "cifar10_test": 85.0}
    assert isinstance(row["idx"], int) and isinstance(row["cifar10_test"], float)
    assert small.lookup(parse_arch(A1)) == row
    assert small.lookup(list(parse_arch(A1))) == row
    assert small[A1] == row
    assert small.lookup("  " + A2 + "\n")["cifar10_test"] == 94.36  # surrounding whitespace as read from a file
    assert np.isnan(small.lookup(A3)["cifar10_test"])
    # What a search records: an empty cell as None (strict JSON), an arch not in the table as None.
    assert small.row_or_none(A3)["cifar10_test"] is None and small.row_or_none(A3)["idx"] == small.lookup(A3)["idx"]
    assert small.row_or_none(A1) == row
    assert small.row_or_none("|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|avg_pool_3x3~2|") is None


def test_lookup_unknown_arch_is_keyerror(small):
    missing = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
    with pytest.raises(KeyError, match="not among the 4 archs"):
        small.lookup(missing)
    with pytest.raises(KeyError):
        small.lookup(parse_arch(missing))


def test_lookup_invalid_arch_is_parse_arch_valueerror(small):
    bad = "|conv_7x7~0|+|none~0|none~1|+|none~0|none~1|none~2|"
    with pytest.raises(ValueError) as exc:
        small.lookup(bad)
    with pytest.raises(ValueError) as ref:
        parse_arch(bad)
    assert str(exc.value) == str(ref.value)
    with pytest.raises(ValueError):
        small.lookup(("none",) * 5)  # 5 ops, not 6


def test_lookup_is_exact_not_isomorphic(tmp_path):
    # Node 1 is disconnected from the output in both (every edge out of it is 'none'), so these cells
    # compute the same function; the table still matches strings only.
    iso_a = "|skip_connect~0|+|nor_conv_3x3~0|none~1|+|nor_conv_3x3~0|none~1|nor_conv_1x1~2|"
    iso_b = "|avg_pool_3x3~0|+|nor_conv_3x3~0|none~1|+|nor_conv_3x3~0|none~1|nor_conv_1x1~2|"
    t = NB201Table.from_csv(_write(tmp_path, f"arch,acc\n{iso_a},90\n"))
    assert iso_a in t and iso_b not in t
    with pytest.raises(KeyError):
        t.lookup(iso_b)


def test_contains(small):
    assert A0 in small and parse_arch(A2) in small
    assert "not an arch" not in small  # invalid input: False, not an exception
    assert 42 not in small
    assert "|none~0|+|none~0|none~1|+|none~0|none~1|skip_connect~2|" not in small


def test_column(small):
    c = small.column("cifar10_valid")
    assert c.dtype == np.float64 and c.tolist() == [10.0, 80.25, 91.5, 90.0]
    c[0] = -1.0  # a copy: the table is not changed
    assert small.lookup(A0)["cifar10_valid"] == 10.0
    assert small.column("idx").tolist() == [10, 11, 12, 13]
    with pytest.raises(KeyError, match="cifar10_valid"):
        small.column("cifar100_test")


def test_sample(small):
    s = small.sample(3, seed=1)
    assert len(s) == 3 and len(set(s)) == 3 and set(s) <= set(small.archs)
    assert s == small.sample(3, seed=1)  # deterministic
    assert sorted(small.sample(4, seed=5)) == sorted(small.archs)
    assert small.sample(0) == []
    with pytest.raises(ValueError, match="4"):
        small.sample(5)
    with pytest.raises(ValueError):
        small.sample(-1)


def test_sample_seeds_differ(tmp_path):
    archs = [arch_to_str(a) for a, _ in zip(all_archs(), range(50))]
    t = NB201Table(archs, {"acc": np.arange(50.0)})
    assert t.sample(10, seed=0) != t.sample(10, seed=1)


def test_best(small):
    assert small.best("cifar10_test") == A2  # NaN in A3's row is ignored
    assert small.best("cifar10_valid") == A2
    with pytest.raises(KeyError):
        small.best("nope")


def test_best_ties_go_to_first(tmp_path):
    t = NB201Table.from_csv(_write(tmp_path, f"arch,acc\n{A0},5\n{A1},7\n{A3},7\n"))
    assert t.best("acc") == A1
    assert not t.has_idx and t.columns == ["acc"]
    assert "idx" not in t.lookup(A1)


def test_load_nb201_table_and_repr(tmp_path):
    p = _write(tmp_path, f"arch,acc\n{A0},1.5\n")
    t = load_nb201_table(p)
    assert t.lookup(A0) == {"acc": 1.5}
    assert "1 archs" in repr(t)
    assert load_nb201_table(str(p)).archs == [A0]


def test_constructor_validates():
    with pytest.raises(ValueError, match="duplicate"):
        NB201Table([A0, parse_arch(A0)], {"acc": [1, 2]})
    with pytest.raises(ValueError, match="values"):
        NB201Table([A0, A1], {"acc": [1]})
    with pytest.raises(ValueError):
        NB201Table([A0], {})


# ---------------------------------------------------------------------------------------------------
# Synthetic CSV: errors
# ---------------------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    p = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        NB201Table.from_csv(p)


def test_no_arch_column_names_columns(tmp_path):
    p = _write(tmp_path, f"idx,genotype,acc\n1,{A0},3\n")
    with pytest.raises(ValueError, match=r"no 'arch' column.*'idx', 'genotype', 'acc'"):
        NB201Table.from_csv(p)


def test_duplicate_arch_rows(tmp_path):
    p = _write(tmp_path, f"arch,acc\n{A0},1\n{A1},2\n{A0},3\n")
    with pytest.raises(ValueError, match="duplicate arch.*lines 2 and 4"):
        NB201Table.from_csv(p)


def test_invalid_arch_in_file(tmp_path):
    p = _write(tmp_path, f"arch,acc\n{A0},1\n|bad~0|,2\n")
    with pytest.raises(ValueError, match="line 3"):
        NB201Table.from_csv(p)


def test_no_numeric_column(tmp_path):
    p = _write(tmp_path, f"arch,note\n{A0},x\n")
    with pytest.raises(ValueError, match="no numeric column"):
        NB201Table.from_csv(p)


def test_empty_and_header_only(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        NB201Table.from_csv(_write(tmp_path, "", "e.csv"))
    with pytest.raises(ValueError, match="no data rows"):
        NB201Table.from_csv(_write(tmp_path, "arch,acc\n", "h.csv"))


def test_ragged_row(tmp_path):
    p = _write(tmp_path, f"arch,acc,acc2\n{A0},1,2\n{A1},3\n")
    with pytest.raises(ValueError, match="line 3"):
        NB201Table.from_csv(p)


def test_bad_idx(tmp_path):
    with pytest.raises(ValueError, match="idx"):
        NB201Table.from_csv(_write(tmp_path, f"idx,arch,acc\n1.5,{A0},1\n", "a.csv"))
    with pytest.raises(ValueError, match="duplicate idx"):
        NB201Table.from_csv(_write(tmp_path, f"idx,arch,acc\n7,{A0},1\n7,{A1},2\n", "b.csv"))


def test_blank_lines_and_header_whitespace(tmp_path):
    p = _write(tmp_path, f" arch , acc \n{A0},1\n\n{A1},2\n")
    t = NB201Table.from_csv(p)
    assert len(t) == 2 and t.columns == ["acc"]


# ---------------------------------------------------------------------------------------------------
# nats_bench
# ---------------------------------------------------------------------------------------------------
def test_from_nats_bench_without_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "nats_bench", None)  # makes `import nats_bench` fail
    with pytest.raises(ImportError, match="pip install nats_bench"):
        NB201Table.from_nats_bench(tmp_path / "NATS-tss-v1_0-3ffb9-simple")


def test_from_nats_bench_argument_errors():
    with pytest.raises(ValueError, match="unknown NATS-Bench dataset"):
        NB201Table.from_nats_bench("x", dataset="mnist")
    with pytest.raises(ValueError, match="hp"):
        NB201Table.from_nats_bench("x", hp="100")
    with pytest.raises(TypeError):
        NB201Table.from_nats_bench(42)


class _FakeNatsApi:
    """What from_nats_bench uses of a nats_bench topology API: len, arch(i), get_more_info."""

    archs = [A0, A1, A2]

    def __init__(self):
        self.calls = []

    def __len__(self):
        return len(self.archs)

    def arch(self, index):
        return self.archs[index]

    def get_more_info(self, index, dataset, iepoch=None, hp="12", is_random=True):
        self.calls.append((index, dataset, hp, is_random))
        base = 50.0 + 10 * index
        if dataset == "cifar10-valid":
            return {"train-accuracy": 99.0, "valid-accuracy": base, "test-accuracy": base + 0.5}
        if dataset == "cifar10":
            return {"train-accuracy": 99.0, "test-accuracy": base + 1}
        return {"valid-accuracy": base - 20, "test-accuracy": base - 19, "valtest-accuracy": base - 18}


def test_from_nats_bench_with_api_object():
    api = _FakeNatsApi()
    t = NB201Table.from_nats_bench(api, dataset=["cifar10-valid", "cifar10", "cifar100"], hp=200)
    assert t.columns == ["cifar10_valid", "cifar10_test", "cifar100_valid", "cifar100_test"]
    assert t.lookup(A2) == {"idx": 2, "cifar10_valid": 70.0, "cifar10_test": 71.0,
                            "cifar100_valid": 50.0, "cifar100_test": 51.0}
    assert all(hp == "200" and is_random is False for _, _, hp, is_random in api.calls)  # mean over seeds
    t2 = NB201Table.from_nats_bench(_FakeNatsApi(), dataset="imagenet16-120", indices=[1])
    assert t2.archs == [A1] and t2.columns == ["imagenet16_valid", "imagenet16_test"]
    assert t2.lookup(A1)["idx"] == 1


# The official file formats, read by the real nats_bench package: a topology benchmark of 3 archs written
# with nats_bench's own classes (ArchResults / ResultsCount state dicts, bz2 pickles), as the released
# NATS-tss-v1_0-3ffb9.pickle.pbz2 file and the NATS-tss-v1_0-3ffb9-simple folder hold them.
NATS_SEEDS = (777, 888)
# eval sets each NATS-Bench dataset records (api_topology.get_more_info reads them)
NATS_EVAL_SETS = {"cifar10-valid": ("x-valid", "ori-test"), "cifar10": ("ori-test",),
                  "cifar100": ("x-valid", "x-test", "ori-test"),
                  "ImageNet16-120": ("x-valid", "x-test", "ori-test")}


def _nats_accuracy(index: int, dataset: str, eval_set: str, seed: int, hp: str) -> float:
    """A distinct accuracy per (arch, dataset, eval set, seed, hp), last epoch."""
    d = list(NATS_EVAL_SETS).index(dataset)
    e = ("x-valid", "x-test", "ori-test").index(eval_set)
    return 40.0 + 10 * index + 2 * d + 0.5 * e + (0.25 if seed == 888 else 0.0) + (1.0 if hp == "200" else 0.0)


def _nats_arch_results(nats_bench, index: int, arch: str, hp: str):
    epochs = 2
    results = nats_bench.ArchResults(index, arch)
    for dataset, eval_sets in NATS_EVAL_SETS.items():
        for seed in NATS_SEEDS:
            arch_config = {"name": "infer.tiny", "C": 16, "N": 5, "arch_str": arch, "class_num": 10}
            run = nats_bench.ResultsCount(dataset, None, {e: 50.0 + e for e in range(epochs)},
                                          {e: 1.0 for e in range(epochs)}, 0.4, 50.0, arch_config, seed,
                                          epochs, None)
            accs, losses, times = {}, {}, {}
            for eval_set in eval_sets:
                for e in range(epochs):
                    key = f"{eval_set}@{e}"
                    last = _nats_accuracy(index, dataset, eval_set, seed, hp)
                    accs[key], losses[key], times[key] = last - (epochs - 1 - e), 1.0, 0.1
            run.update_eval(accs, losses, times)
            results.update(dataset, seed, run)
    return results.state_dict()


def _write_nats_tss(tmp_path, archs, simple: bool) -> Path:
    """nats_bench.pickle_save appends ".pbz2" to the path it is given."""
    nats_bench = pytest.importorskip("nats_bench", reason="nats_bench is not installed (pip install nats_bench)")
    per_arch = {i: {hp: _nats_arch_results(nats_bench, i, a, hp) for hp in ("12", "200")}
                for i, a in enumerate(archs)}
    if simple:
        folder = tmp_path / "NATS-tss-v1_0-3ffb9-simple"
        folder.mkdir()
        nats_bench.pickle_save({"meta_archs": list(archs)}, str(folder / "meta.pickle"))
        for i, hps in per_arch.items():
            nats_bench.pickle_save(hps, str(folder / f"{i:06d}.pickle"))
        return folder
    path = tmp_path / "NATS-tss-v1_0-3ffb9.pickle.pbz2"
    nats_bench.pickle_save({"meta_archs": list(archs), "arch2infos": per_arch,
                            "evaluated_indexes": list(per_arch)}, str(path)[:-len(".pbz2")])
    return path


@pytest.mark.parametrize("simple", [True, False], ids=["simple-folder", "full-file"])
def test_from_nats_bench_official_format(tmp_path, simple):
    path = _write_nats_tss(tmp_path, [A0, A1, A2], simple)
    t = NB201Table.from_nats_bench(path, dataset=["cifar10-valid", "cifar10", "cifar100", "ImageNet16-120"])
    assert t.archs == [A0, A1, A2]
    assert t.columns == ["cifar10_valid", "cifar10_test", "cifar100_valid", "cifar100_test", "imagenet16_valid",
                         "imagenet16_test"]

    def mean(index, dataset, eval_set, hp="200"):     # is_random=False: the mean over the seeds
        return float(np.mean([_nats_accuracy(index, dataset, eval_set, s, hp) for s in NATS_SEEDS]))

    for i, arch in enumerate([A0, A1, A2]):
        row = t.lookup(arch)
        assert row["idx"] == i
        assert row["cifar10_valid"] == pytest.approx(mean(i, "cifar10-valid", "x-valid"))
        assert row["cifar10_test"] == pytest.approx(mean(i, "cifar10", "ori-test"))
        assert row["cifar100_valid"] == pytest.approx(mean(i, "cifar100", "x-valid"))
        assert row["cifar100_test"] == pytest.approx(mean(i, "cifar100", "x-test"))
        assert row["imagenet16_valid"] == pytest.approx(mean(i, "ImageNet16-120", "x-valid"))
        assert row["imagenet16_test"] == pytest.approx(mean(i, "ImageNet16-120", "x-test"))
    short = NB201Table.from_nats_bench(path, dataset="cifar10", hp="12", indices=[2, 0])
    assert short.archs == [A2, A0]
    assert short.lookup(A2) == {"idx": 2, "cifar10_test": pytest.approx(mean(2, "cifar10", "ori-test", "12"))}


@pytest.mark.parametrize("simple", [True, False], ids=["simple-folder", "full-file"])
def test_a_nats_bench_path_is_a_table_everywhere(tmp_path, simple, capsys):
    """load_nb201_table, `fastnas score --table` and a search's nb201_table take a NATS-Bench path."""
    import fastnas
    from fastnas.cli import main

    path = _write_nats_tss(tmp_path, [A0, A1, A2], simple)
    t = load_nb201_table(path)
    assert t.archs == [A0, A1, A2] and len(t.columns) == 6
    assert t.lookup(A1)["cifar10_test"] == pytest.approx(np.mean([_nats_accuracy(1, "cifar10", "ori-test", s, "200")
                                                                   for s in NATS_SEEDS]))
    assert main(["score", "--table", str(path), "--proxies", "params", "--device", "cpu", "--quiet"]) == 0
    report = capsys.readouterr().out
    assert "3 archs" in report and "imagenet16_valid" in report
    result = fastnas.search(space="nb201", method="random", proxy="params", cycles=3, nb201_table=str(path),
                            dataset="synthetic", init_channels=4, layers=1, device="cpu",
                            out_dir=str(tmp_path / "run"), quiet=True)
    assert result.arch in (A0, A1, A2)
    assert result.table_accuracy["cifar10_test"] == pytest.approx(t.lookup(result.arch)["cifar10_test"])


def test_from_nats_bench_folder_keeps_no_arch_cached(tmp_path, monkeypatch):
    """Read from the -simple folder, the API's per-arch cache is emptied as the table is read."""
    nats_bench = pytest.importorskip("nats_bench", reason="nats_bench is not installed (pip install nats_bench)")
    path = _write_nats_tss(tmp_path, [A0, A1, A2], simple=True)
    created, create = [], nats_bench.create
    monkeypatch.setattr(nats_bench, "create", lambda *a, **k: created.append(create(*a, **k)) or created[-1])
    t = NB201Table.from_nats_bench(path, dataset="cifar10")
    assert len(t) == 3 and created[0].fast_mode and len(created[0].arch2infos_dict) == 0


def test_from_nats_bench_missing_path(tmp_path):
    pytest.importorskip("nats_bench", reason="nats_bench is not installed (pip install nats_bench)")
    with pytest.raises(FileNotFoundError, match="NATS-Bench topology benchmark not found"):
        NB201Table.from_nats_bench(tmp_path / "NATS-tss-v1_0-3ffb9-simple")


# ---------------------------------------------------------------------------------------------------
# The real extract: shared/data/nb201_dev.csv
# ---------------------------------------------------------------------------------------------------
needs_dev = pytest.mark.skipif(not NB201_DEV.is_file(),
                               reason=f"real NB201 data not present: {NB201_DEV} (shared/data is not part of the repo)")


@pytest.fixture(scope="module")
def dev():
    return NB201Table.from_csv(NB201_DEV)


@needs_dev
def test_dev_table_shape(dev):
    assert len(dev) == 2000
    assert dev.columns == ["cifar10_valid", "cifar10_test", "cifar100_test", "imagenet16_test"]
    assert dev.has_idx
    idx = dev.column("idx")
    assert len(np.unique(idx)) == 2000 and idx.min() >= 0 and idx.max() < 15625
    for name in dev.columns:
        c = dev.column(name)
        assert np.isfinite(c).all() and 0 < c.min() and c.max() < 100
    # Every string survives the strict parser round trip.
    assert all(arch_to_str(parse_arch(a)) == a for a in dev.archs)


@needs_dev
def test_dev_known_row(dev):
    # First data row of the file.
    row = dev.lookup("|avg_pool_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|avg_pool_3x3~0|avg_pool_3x3~1|avg_pool_3x3~2|")
    assert row["idx"] == 2
    assert row["cifar10_valid"] == pytest.approx(81.910667)
    assert row["cifar10_test"] == pytest.approx(85.74)
    assert row["cifar100_test"] == pytest.approx(54.866667)
    assert row["imagenet16_test"] == pytest.approx(27.255556)


@needs_dev
def test_dev_best_arch(dev):
    # NB201's global best on CIFAR-10 test (index 9930) reaches 94.36 (shared/data/README.md); the file
    # stores 6 decimals. The 2,000-arch extract need not contain it: if it does, best() must find it,
    # otherwise nothing in the table may beat it.
    best = dev.best("cifar10_test")
    best_acc = dev.lookup(best)["cifar10_test"]
    if BEST_ARCH in dev:
        row = dev.lookup(BEST_ARCH)
        assert row["cifar10_test"] == pytest.approx(94.36, abs=5e-3)
        assert row["idx"] == 9930
        assert best == BEST_ARCH
    else:
        assert best_acc <= 94.36 + 5e-3
        assert 9930 not in dev.column("idx")
    assert best_acc == dev.column("cifar10_test").max()


@needs_dev
def test_dev_sample_lookup_roundtrip(dev):
    for a in dev.sample(20, seed=3):
        row = dev.lookup(parse_arch(a))
        assert set(row) == {"idx", *dev.columns}
