"""Fast checks of the benchmark tooling itself (no timing): `pytest benchmarks/test_tools.py`.

The byte model, the ratios, the report, the do_bench signature handling (Triton 2.x / 3.0-3.1 / 3.2+),
and that every available backend agrees with the baseline formula on a small case.
"""
from __future__ import annotations

import sys
import types

import pytest
import torch

import formulas
import report
import results
import timing
from fastnas.ops import available_backends


def test_byte_model_judged_case():
    s = formulas.JUDGED  # B=64 C=64 16x16 K=4, 7 op outputs
    N, e = 64 * 16 * 16, 4
    shapes = s.shapes("partial_channel_mix")
    assert results.bytes_moved("partial_channel_mix", "fwd", shapes, torch.float32) == e * N * (7 * 16 + 48 + 64)
    assert results.bytes_moved("partial_channel_mix", "bwd", shapes, torch.float32) == e * N * (64 + 2 * (7 * 16 + 48))
    cs = s.shapes("channel_shuffle")
    assert results.bytes_moved("channel_shuffle", "fwd+bwd", cs, torch.bfloat16) == 2 * N * 4 * 64
    es = s.shapes("edge_normalize")
    assert results.bytes_moved("edge_normalize", "fwd", es, torch.float16) == 2 * N * 64 * 5


def test_ratios_pair_rows_of_the_same_case():
    sh = formulas.JUDGED.shapes("channel_shuffle")
    env = {"run_id": "r"}
    rows = [results.make_row("channel_shuffle", "fwd", b, torch.float32, "c", sh, t, env=env)
            for b, t in (("baseline", 2e-3), ("cpu", 1e-3), ("torch", 4e-3))]
    rows.append(results.make_row("channel_shuffle", "bwd", "cpu", torch.float32, "c", sh, 1e-3, env=env))
    results.add_ratios(rows)
    assert [r["ratio_vs_baseline"] for r in rows] == [1.0, 2.0, 0.5, None]
    text = report.render(rows)
    assert "**2.00x**" in text and "0.50x" in text


def test_git_fields_present():
    g = results.git_commit()
    assert set(g) == {"commit", "dirty"} and isinstance(g["commit"], str)


@pytest.mark.parametrize("flavour", ["3.2+", "3.0", "2.x"])
def test_cuda_median_handles_do_bench_signatures(monkeypatch, flavour):
    calls = {}

    def new(fn, warmup=25, rep=100, grad_to_none=None, quantiles=None, return_mode="mean"):
        calls.update(return_mode=return_mode, quantiles=quantiles)
        return 1.5

    def old(fn, warmup=25, rep=100, grad_to_none=None, quantiles=None, fast_flush=True, return_mode="mean"):
        calls.update(return_mode=return_mode, fast_flush=fast_flush)
        return 1.5

    def ancient(fn, warmup=25, rep=100, grad_to_none=None, percentiles=[0.2, 0.8]):  # noqa: B006
        return (1.5, 1.0, 2.0)

    fake = types.ModuleType("triton.testing")
    fake.do_bench = {"3.2+": new, "3.0": old, "2.x": ancient}[flavour]
    monkeypatch.setitem(sys.modules, "triton.testing", fake)
    assert timing.cuda_median_ms(lambda: None) == 1.5
    if flavour != "2.x":
        assert calls["return_mode"] == "median"


@pytest.mark.parametrize("op", formulas.OPS)
def test_backends_agree_with_baseline(op):
    case = formulas.make_case(op, formulas.Size(B=2, C=16, H=5, W=5), torch.float32, "cpu")
    for entry in available_backends("cpu", torch.float32):
        if entry != "triton":
            formulas.check_against_baseline(case, entry)
        for direction in formulas.DIRECTIONS:
            case.callable(entry, direction)()


def test_cpu_interleaved_returns_every_entry():
    out = timing.cpu_interleaved({"a": lambda: None, "b": lambda: sum(range(100))}, min_run_time=0.01)
    assert set(out) == {"a", "b"} and all(len(v) >= 3 for v in out.values())


def _search_rows(device="cpu", batch=32, times=(("fastnas", 1.5), ("reference", 3.0), ("reference-compile", 2.0))):
    import bench_search

    cfg = bench_search.Config(device=device, space="darts", batch_size=batch, partial_channels=4, layers=8,
                              init_channels=16, steps=3, warmup=1, compile=True)
    env = {"run_id": "r", "device_type": torch.device(device).type}
    rows = []
    for variant, t in times:
        mem = {"peak_mem_bytes": int(t * 2**20), "mem_method": "test"}
        rows.append(bench_search.make_row(cfg, variant, env, times=[t * 1e-3] * 3, mem=mem))
    return bench_search.add_ratios(rows)


def test_search_rows_ratios_targets_and_report():
    rows = _search_rows()
    by = {r["variant"]: r for r in rows}
    assert by["fastnas"]["time_ratio_vs_reference"] == 0.5 and by["fastnas"]["mem_ratio_vs_reference"] == 0.5
    assert by["fastnas"]["target_time_ratio"] == 0.75  # the judged CPU case: B=32 DARTS K=4 8 layers
    text = report.render(rows)
    assert "0.50x (target <= 0.75x: met)" in text and "0.67x (target <= 0.80x" not in text
    assert "fastnas / torch.compile(reference): 0.75x time (target < 1x: met)" in text
    slow = report.render(_search_rows(times=(("fastnas", 2.7), ("reference", 3.0))))
    assert "**MISSED**" in slow
    other = _search_rows(batch=8)
    assert other[0]["target_time_ratio"] is None and "target" not in report.render(other)


@pytest.mark.slow
def test_bench_search_quick_cpu_writes_rows(tmp_path):
    """The search-step benchmark end to end (--quick: B=8, 3 layers, 2 steps; ~30 s on 2 cores): rows for
    fastnas and the reference with positive times and memory. No timing assertion: timings never decide
    a test."""
    import json
    import subprocess
    from pathlib import Path

    out = tmp_path / "search.jsonl"
    script = Path(__file__).resolve().parent / "bench_search.py"
    proc = subprocess.run([sys.executable, str(script), "--quick", "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = {r["variant"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"fastnas", "reference"}
    for r in rows.values():
        assert r["benchmark"] == "search_step" and r["error"] is None
        assert r["median_ms"] > 0 and r["first_step_ms"] > 0 and r["peak_mem_bytes"] > 0
        assert r["time_ratio_vs_reference"] > 0 and r["mem_ratio_vs_reference"] > 0 and r["commit"]
    assert "| fastnas |" in out.with_suffix(".md").read_text()


# -- bench_methods --------------------------------------------------------------------------------------
def test_bench_methods_table_accuracy_is_exact_or_the_nearest_mean():
    import bench_methods
    from fastnas.tables import NB201Table

    a = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    b = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|none~2|"
    c = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
    table = NB201Table([a, b, c], {"cifar10_test": [94.0, 90.0, 10.0], "cifar100_test": [70.0, 60.0, 1.0]})
    exact = bench_methods.nearest_table_accuracy(a, table)
    assert exact["table_exact"] and exact["cifar10_test"] == 94.0
    # one edge from a and from b (distance 1 to both): the mean of the two
    d = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|avg_pool_3x3~2|"
    near = bench_methods.nearest_table_accuracy(d, table)
    assert (near["table_exact"], near["table_distance"], near["table_neighbours"]) == (False, 1, 2)
    assert near["cifar10_test"] == pytest.approx(92.0) and near["cifar100_test"] == pytest.approx(65.0)
    assert bench_methods.cell_ops(c) == ["none"] * 6


def test_bench_methods_summary_gives_mean_and_std():
    import bench_methods

    rows = [{"method": "darts", "seed": s, "cifar10_test": v, "table_exact": s == 0, "skips": s, "param_free": 2,
             "search_time_s": 10.0, "peak_rss_bytes": 2**30} for s, v in enumerate([90.0, 92.0])]
    md = bench_methods.summarise(rows + [{"method": "drnas", "seed": 0, "error": ["boom"]}], ["darts", "drnas"])
    assert "| darts | 2 | 91.00 ± 1.41 |" in md and "1/2" in md and "1024" in md
    assert "drnas" not in md  # a failed method gets no row (the run reports it and exits 1)


def test_epsinas_weights_marks_published_nan_and_scores_exactly(tmp_path):
    """3 real archs: the float32 forward at 1e-7 underflows for the all-conv one (published NaN), and
    the exact score is finite for all three."""
    from pathlib import Path

    import epsinas_weights

    data = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (data / "nb201_dev.csv").exists() or not (data / "cifar10_sample.npz").exists():
        pytest.skip(f"needs the NB201 table and the CIFAR-10 sample in {data}")
    from fastnas.proxies.score import load_proxy_data

    images = load_proxy_data(str(data), n=256, seed=0).images[:256]
    all_conv = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_1x1~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    with_skip = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    scores = {}
    for arch in (all_conv, with_skip):
        y = epsinas_weights.float32_first_logits(arch, images[:32], [1e-7, 1.0])
        scores[arch] = epsinas_weights.published_score(y[1e-7], y[1.0])
    assert scores[all_conv] != scores[all_conv] and scores[with_skip] > 0   # NaN, finite

    out = tmp_path / "rows.jsonl"
    assert epsinas_weights.main(["--archs", "3", "--weights", "1e-7", "1", "--exact", "--out", str(out)]) == 0
    rows = results.read_rows(out)
    assert len(rows) == 1 and rows[0]["low"] == 1e-7 and rows[0]["high"] == 1.0
    assert 0.0 <= rows[0]["nan_fraction"] <= 1.0 and "spearman_exact_all" in rows[0] and rows[0]["commit"]


def test_proxy_correlation_writes_correlation_and_published_rows(tmp_path):
    """4 real archs, two structural proxies: a correlation row per (proxy, column) and, for the
    published proxies, a same-archs comparison row whose parity with NAS-Bench-Suite-Zero's params is 1."""
    from pathlib import Path

    import proxy_correlation

    data = Path(__file__).resolve().parents[2] / "shared" / "data"
    needed = ("nb201_dev.csv", "nb201_zc_cifar10_dev.csv", "cifar10_sample.npz")
    if not all((data / f).exists() for f in needed):
        pytest.skip(f"needs {', '.join(needed)} in {data}")
    out = tmp_path / "rows.jsonl"
    assert proxy_correlation.main(["--archs", "12", "--sample-seed", "3", "--proxies", "params,flops",
                                   "--set", "params.repeats=2", "--out", str(out)]) == 0
    rows = results.read_rows(out)
    corr = [r for r in rows if r["kind"] == "correlation"]
    pub = [r for r in rows if r["kind"] == "published"]
    assert {(r["proxy"], r["column"]) for r in corr} >= {("params", "cifar10_test"), ("flops", "cifar10_test")}
    assert all(r["archs"] == 12 and r["commit"] and r["n"] == 12 for r in corr)
    assert all(r["settings"] == {"params": {"repeats": 2}} for r in rows)
    params = next(r for r in pub if r["proxy"] == "params" and r["column"] == "cifar10_test")
    assert 3 <= params["n"] <= params["covered"] <= 12 and params["parity"] == pytest.approx(1.0)
    assert params["difference"] == pytest.approx(params["fastnas"] - params["published"])
    out = tmp_path / "covered.jsonl"
    assert proxy_correlation.main(["--covered", "--archs", "5", "--proxies", "params", "--out", str(out)]) == 0
    params = next(r for r in results.read_rows(out) if r["kind"] == "published" and r["column"] == "cifar10_test")
    assert params["covered"] == params["n"] == 5 and params["covered_only"] is True
