"""Proxy evaluation against ground truth: score a sample of a benchmark table and rank-correlate.

``fastnas score --space nb201 --table nb201_dev.csv --archs 200 --data ../shared/data`` runs
:func:`evaluate` and prints :func:`format_report`: the signed Spearman and Kendall correlation of every
proxy with every accuracy column, and the time each proxy took. With ``--published FILE`` (a CSV of
published proxy values, e.g. NAS-Bench-Suite-Zero's, in ``nb201_zc_cifar10_dev.csv`` format) it also
prints :func:`format_published`: on the sampled archs the file covers, each proxy's correlation from
fastnas's scores next to the one from the published values. A correlation over 100 archs moves by
up to 0.16 from one sample to the next (published grasp with CIFAR-10 test over the 58-67 covered archs
of eight 100-arch draws of nb201_dev.csv: 0.40 to 0.65), so "within 0.05 of the published value" is
only meaningful on the same archs.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Collection, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from fastnas.proxies.score import ScoreTable, correlations, score

# Spearman / Kendall over fewer than 3 archs are undefined (NaN) or trivially +-1.
_MIN_ARCHS = 3

__all__ = ["load_truth", "truth_of", "evaluate", "format_report", "load_published", "compare_with_published",
           "format_published"]


def _read_darts_table(path: Path) -> Tuple[List[str], Dict[str, np.ndarray]]:
    """A CSV with a ``genotype`` column (DARTS reprs) and numeric accuracy columns.

    Read like an NB201 table (:meth:`fastnas.tables.NB201Table.from_csv`): UTF-8 (a byte-order mark is
    accepted), blank lines skipped; a row with more or fewer fields than the header, an invalid or
    duplicate genotype, or a non-number cell in a numeric column is a ValueError naming the file and line.
    A column in which no cell is a number is a text column and ignored; empty cells are NaN.
    """
    from fastnas.spaces import parse_genotype
    from fastnas.tables import _parse_numeric, _read_csv

    header, rows = _read_csv(path, "genotype")
    if not rows:
        raise ValueError(f"{path}: the DARTS table has a header but no data rows")
    g_col = header.index("genotype")
    archs: List[str] = []
    seen: Dict[str, int] = {}
    for line, row in rows:
        try:
            a = repr(parse_genotype(row[g_col]))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}, line {line}: invalid genotype {row[g_col][:80]!r}: {e}") from None
        if a in seen:
            raise ValueError(f"{path}: duplicate genotype on lines {seen[a]} and {line}; each genotype must "
                             "appear once")
        seen[a] = line
        archs.append(a)
    truth = {}
    lines = [line for line, _ in rows]
    for c, col in enumerate(header):
        if col == "genotype":
            continue
        values = _parse_numeric([row[c] for _, row in rows], lines, path, col)
        if values is not None:            # None: a text column
            truth[col] = np.array(values, dtype=np.float64)
    if not truth:
        raise ValueError(f"{path}: no numeric accuracy column besides genotype; columns found: {header}")
    return archs, truth


def load_truth(path, space: str = "nb201") -> Tuple[List[str], Dict[str, np.ndarray]]:
    """Archs (NB201 strings or Genotype reprs) and their ground-truth columns (name -> float64 array)."""
    from fastnas.tables import is_nats_bench_path, load_nb201_table

    path = Path(path)
    if space not in ("nb201", "darts"):
        raise ValueError(f"unknown space {space!r}; expected 'nb201' or 'darts'")
    if not (path.is_file() or (space == "nb201" and is_nats_bench_path(path) and path.exists())):
        raise FileNotFoundError(f"table {path} not found")
    if space == "darts":
        return _read_darts_table(path)
    table = load_nb201_table(path)      # a CSV, or a NATS-Bench topology benchmark (folder / .pickle.pbz2)
    return table.archs, {c: table.column(c) for c in table.columns}


def truth_of(table_path, archs: Sequence[str], space: str = "nb201") -> Dict[str, np.ndarray]:
    """The table's ground-truth columns for ``archs`` (e.g. a ScoreTable's), in their order."""
    all_archs, truth = load_truth(table_path, space)
    where = {a: i for i, a in enumerate(all_archs)}
    missing = [a for a in archs if a not in where]
    if missing:
        raise ValueError(f"{table_path}: {len(missing)} of the archs are not in the table, e.g. {missing[0]!r}")
    rows = [where[a] for a in archs]
    return {c: v[rows] for c, v in truth.items()}


def evaluate(table_path, space: str = "nb201", n_archs: Optional[int] = None, proxies=None, data: Any = None,
             root=None, seed: int = 0, sample_seed: Optional[int] = None, device: Optional[str] = None,
             batch_size: Optional[int] = None, settings: Optional[Mapping[str, Mapping[str, Any]]] = None,
             progress: bool = False, among: Optional[Collection[str]] = None, checkpoint=None
             ) -> Tuple[ScoreTable, List[Dict[str, Any]], float]:
    """Scores ``n_archs`` archs drawn from the table (all when None) and correlates them with its columns.

    ``sample_seed`` (default ``seed``) draws the archs; ``seed`` initialises the networks and the batch.
    ``among``: draw only from the table's archs in this collection (e.g. those a file of published
    values covers); the draw is then not the one of the whole table.
    ``checkpoint``: a score journal path (:func:`fastnas.proxies.score`): a killed evaluation rerun with
    it scores only what is missing. ``data`` as :func:`fastnas.proxies.score` takes it (None: synthetic
    images, with a warning).
    Returns (scores, correlation rows as :func:`fastnas.proxies.correlations` gives them, wall seconds).
    """
    archs, truth = load_truth(table_path, space)
    if among is not None:
        among = set(among)
        keep = [i for i, a in enumerate(archs) if a in among]
        if not keep:
            raise ValueError(f"{table_path}: none of its archs is among the {len(among)} given")
        archs = [archs[i] for i in keep]
        truth = {c: v[keep] for c, v in truth.items()}
    if n_archs is not None:
        if isinstance(n_archs, bool) or not isinstance(n_archs, (int, np.integer)):
            raise TypeError(f"--archs must be an integer, got {type(n_archs).__name__} {n_archs!r}")
        if n_archs < 1:
            raise ValueError(f"--archs must be >= 1 (archs to sample from the table), got {n_archs}")
        if n_archs > len(archs):
            raise ValueError(f"--archs {n_archs}: the table holds {len(archs)} archs")
    n = len(archs) if n_archs is None else n_archs
    if n < _MIN_ARCHS:
        what = "the table holds" if n_archs is None else "--archs is"
        raise ValueError(f"a rank correlation needs at least {_MIN_ARCHS} archs; {what} {n}")
    if n_archs is not None:
        draw_seed = seed if sample_seed is None else sample_seed
        if isinstance(draw_seed, bool) or not isinstance(draw_seed, (int, np.integer)) or draw_seed < 0:
            named = "--sample-seed" if sample_seed is not None else "--seed (which draws the archs without --sample-seed)"
            raise ValueError(f"{named} must be an integer >= 0, got {draw_seed!r}")
        pick = np.sort(np.random.default_rng(draw_seed).choice(len(archs), size=n_archs, replace=False))
        archs = [archs[i] for i in pick]
        truth = {c: v[pick] for c, v in truth.items()}
    t0 = time.perf_counter()
    scores = score(archs, proxies, data=data, root=root, batch_size=batch_size, device=device, seed=seed,
                   settings=settings, progress=progress, checkpoint=checkpoint)
    wall = time.perf_counter() - t0
    return scores, correlations(scores, truth), wall


def format_report(scores: ScoreTable, rows: Sequence[Mapping[str, Any]], wall: float) -> str:
    """A plain-text table: one line per proxy, Spearman/Kendall per column, archs per second."""
    columns = list(dict.fromkeys(r["column"] for r in rows))
    by = {(r["proxy"], r["column"]): r for r in rows}
    head = f"{'proxy':<10} {'sign':>4} " + " ".join(f"{c + ' rho/tau':>24}" for c in columns) + f" {'archs/s':>8}"
    lines = [f"{len(scores)} archs, {wall:.1f} s wall; signed rank correlations (sign: + = higher is better)",
             head, "-" * len(head)]
    def cell(v, width):  # a constant column (or proxy) has no rank correlation
        return f"{'n/a':>{width}}" if v is None or not np.isfinite(v) else f"{v:>+{width}.3f}"

    for p in scores.proxies:
        cells = " ".join(f"{cell(by[p, c]['spearman'], 11)} /{cell(by[p, c]['kendall'], 10)} " for c in columns)
        sign = "+" if scores.higher_is_better.get(p, True) else "-"
        lines.append(f"{p:<10} {sign:>4} {cells} {scores.archs_per_second(p):>8.2f}")
    return "\n".join(lines)


def load_published(path, proxies: Sequence[str], space: str = "nb201") -> Tuple[List[str], Dict[str, np.ndarray]]:
    """Published proxy values: (NB201 arch strings, {proxy: values}) for the ``proxies`` the file has.

    ``path``: a CSV with an ``arch`` column and one numeric column per published proxy
    (``nb201_zc_cifar10_dev.csv`` format); columns that are not among ``proxies`` (e.g. ``val_acc``) are
    dropped. Raises ValueError when the space is not nb201 or when no column is one of ``proxies``:
    call it before scoring, so that a wrong file fails in a second, not after the scoring.
    """
    if space != "nb201":
        raise ValueError(f"--published compares NB201 archs by arch string; not available for space {space!r}")
    archs, values = load_truth(path, "nb201")
    kept = {p: values[p] for p in proxies if p in values}
    if not kept:
        raise ValueError(f"{path}: none of the proxies to compare ({', '.join(proxies)}) is a column of the file "
                         f"(its columns: {', '.join(values)})")
    return archs, kept


def compare_with_published(scores: ScoreTable, truth: Mapping[str, Sequence[float]],
                           published: Tuple[Sequence[str], Mapping[str, np.ndarray]]
                           ) -> Tuple[List[Dict[str, Any]], int]:
    """fastnas's correlations next to the published values' on the same archs.

    ``truth``: column name -> values aligned with ``scores.archs``. ``published``: what
    :func:`load_published` returns; archs are matched by exact NB201 string. For every proxy of
    ``scores`` that it has, and every ``truth`` column, over the archs of ``scores`` that it covers (and
    whose truth and both values are finite): ``fastnas`` and ``published``, the Spearman correlation
    of each with the truth column (raw sign, as :func:`fastnas.proxies.correlations`), ``difference``
    = fastnas - published, and ``parity``, the Spearman correlation between the two sets of values.
    Returns (rows, number of the scored archs it covers).
    """
    from scipy import stats

    archs, values = published
    where = {a: i for i, a in enumerate(archs)}
    mine = [i for i, a in enumerate(scores.archs) if a in where]
    theirs = [where[scores.archs[i]] for i in mine]

    def rho(a, b):
        return float(stats.spearmanr(a, b).statistic) if len(a) > 2 else float("nan")

    rows = []
    for p in (p for p in scores.proxies if p in values):
        s, pub = scores[p][mine], np.asarray(values[p], dtype=np.float64)[theirs]
        for col, t in truth.items():
            y = np.asarray(t, dtype=np.float64)[mine]
            ok = np.isfinite(s) & np.isfinite(pub) & np.isfinite(y)
            f, g = rho(s[ok], y[ok]), rho(pub[ok], y[ok])
            rows.append({"proxy": p, "column": col, "n": int(ok.sum()), "fastnas": f, "published": g,
                         "difference": f - g, "parity": rho(s[ok], pub[ok])})
    return rows, len(mine)


def format_published(rows: Sequence[Mapping[str, Any]], covered: int, total: int, source) -> str:
    """A plain-text table of :func:`compare_with_published`: one line per proxy and truth column."""
    lines = [f"published values from {source}: {covered} of the {total} scored archs covered; Spearman on "
             f"those archs (fastnas / published, difference; parity = fastnas vs published values)",
             f"{'proxy':<10} {'column':<16} {'n':>4} {'fastnas':>8} {'published':>9} {'diff':>7} {'parity':>7}"]
    lines.append("-" * len(lines[-1]))
    for r in rows:
        lines.append(f"{r['proxy']:<10} {r['column']:<16} {r['n']:>4} {r['fastnas']:>+8.3f} {r['published']:>+9.3f} "
                     f"{r['difference']:>+7.3f} {r['parity']:>+7.3f}")
    return "\n".join(lines)
