"""Proxy evaluation against ground truth: score a sample of a benchmark table and rank-correlate.

``fastnas score --space nb201 --table nb201_dev.csv --archs 200 --data ../shared/data`` runs
:func:`evaluate` and prints :func:`format_report`: the signed Spearman and Kendall correlation of every
proxy with every accuracy column, and the time each proxy took.
"""
from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from fastnas.proxies.score import ScoreTable, correlations, score

__all__ = ["load_truth", "evaluate", "format_report"]


def _read_darts_table(path: Path) -> Tuple[List[str], Dict[str, np.ndarray]]:
    """A CSV with a ``genotype`` column (DARTS reprs) and numeric accuracy columns."""
    from fastnas.spaces import parse_genotype

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "genotype" not in rows[0]:
        raise ValueError(f"{path}: a DARTS table needs a 'genotype' column (and accuracy columns)")
    archs = [repr(parse_genotype(r["genotype"])) for r in rows]
    truth = {}
    for col in rows[0]:
        if col == "genotype":
            continue
        try:
            truth[col] = np.array([float(r[col]) if r[col].strip() else np.nan for r in rows])
        except ValueError:
            continue  # a text column
    if not truth:
        raise ValueError(f"{path}: no numeric accuracy column")
    return archs, truth


def load_truth(path, space: str = "nb201") -> Tuple[List[str], Dict[str, np.ndarray]]:
    """Archs (NB201 strings or Genotype reprs) and their ground-truth columns (name -> float64 array)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"table {path} not found")
    if space == "darts":
        return _read_darts_table(path)
    if space != "nb201":
        raise ValueError(f"unknown space {space!r}; expected 'nb201' or 'darts'")
    from fastnas.tables import NB201Table

    table = NB201Table.from_csv(path)
    return table.archs, {c: table.column(c) for c in table.columns}


def evaluate(table_path, space: str = "nb201", n_archs: Optional[int] = None, proxies=None, data: Any = "synthetic",
             root=None, seed: int = 0, sample_seed: Optional[int] = None, device: Optional[str] = None,
             batch_size: Optional[int] = None, settings: Optional[Mapping[str, Mapping[str, Any]]] = None,
             progress: bool = False) -> Tuple[ScoreTable, List[Dict[str, Any]], float]:
    """Scores ``n_archs`` archs drawn from the table (all when None) and correlates them with its columns.

    ``sample_seed`` (default ``seed``) draws the archs; ``seed`` initialises the networks and the batch.
    Returns (scores, correlation rows as :func:`fastnas.proxies.correlations` gives them, wall seconds).
    """
    archs, truth = load_truth(table_path, space)
    if n_archs is not None:
        if not 0 < n_archs <= len(archs):
            raise ValueError(f"--archs {n_archs}: the table holds {len(archs)} archs")
        pick = np.sort(np.random.default_rng(seed if sample_seed is None else sample_seed)
                       .choice(len(archs), size=n_archs, replace=False))
        archs = [archs[i] for i in pick]
        truth = {c: v[pick] for c, v in truth.items()}
    t0 = time.perf_counter()
    scores = score(archs, proxies, data=data, root=root, batch_size=batch_size, device=device, seed=seed,
                   settings=settings, progress=progress)
    wall = time.perf_counter() - t0
    return scores, correlations(scores, truth), wall


def format_report(scores: ScoreTable, rows: Sequence[Mapping[str, Any]], wall: float) -> str:
    """A plain-text table: one line per proxy, Spearman/Kendall per column, archs per second."""
    columns = list(dict.fromkeys(r["column"] for r in rows))
    by = {(r["proxy"], r["column"]): r for r in rows}
    head = f"{'proxy':<10} {'sign':>4} " + " ".join(f"{c + ' rho/tau':>24}" for c in columns) + f" {'archs/s':>8}"
    lines = [f"{len(scores)} archs, {wall:.1f} s wall; signed rank correlations (sign: + = higher is better)",
             head, "-" * len(head)]
    for p in scores.proxies:
        cells = " ".join(f"{by[p, c]['spearman']:>+11.3f} /{by[p, c]['kendall']:>+10.3f} " for c in columns)
        sign = "+" if scores.higher_is_better.get(p, True) else "-"
        lines.append(f"{p:<10} {sign:>4} {cells} {scores.archs_per_second(p):>8.2f}")
    return "\n".join(lines)
