"""pytest configuration of the CPU microbenchmarks (benchmarks/test_ops_cpu.py).

Each benchmark records its median in a session-wide list; at the end of the session the list is written
as a results file (default ``results/ops_cpu.jsonl``, or ``$FASTNAS_RESULTS``) with
``ratio_vs_baseline = baseline median / backend median`` for the same op, direction, dtype and size.
Nothing here queries a GPU.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # formulas, results, report

_ROWS_KEY = pytest.StashKey[list]()


def pytest_configure(config):
    config.stash[_ROWS_KEY] = []


@pytest.fixture
def record_result(request):
    """Callable(row) appending one results row (see results.make_row) for the session-end writer."""
    return request.config.stash[_ROWS_KEY].append


def pytest_sessionfinish(session, exitstatus):
    rows = session.config.stash.get(_ROWS_KEY, [])
    if not rows:
        return
    import results
    import report

    env = results.environment("cpu", timer="pytest-benchmark (pedantic, median)")
    copy_bw = results.measure_copy_bandwidth("cpu")
    for r in rows:
        r["copy_bandwidth_GBps"] = copy_bw / 1e9
        r["bw_fraction_of_copy"] = (r["bandwidth_GBps"] * 1e9 / copy_bw) if r["bandwidth_GBps"] else None
        r.update(env)
    results.add_ratios(rows)
    path = results.write_rows(results.default_path("cpu"), rows)
    session.config.stash[_ROWS_KEY] = []
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    text = report.render(rows)
    if reporter is not None:
        reporter.write_sep("=", f"fastnas results: {len(rows)} rows -> {path}")
        reporter.write_line(text)
    else:  # pragma: no cover
        print(text)
