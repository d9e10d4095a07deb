"""NAS-Bench-201 ground-truth tables: the accuracy each NB201 architecture reached when trained.

An :class:`NB201Table` maps NB201 arch strings to a few numeric columns (accuracies in %, or any other
per-arch number, e.g. zero-cost proxy values) and, when the source has one, the benchmark's ``idx``.
It is read from a CSV (:meth:`NB201Table.from_csv`, e.g. the 2,000-arch extract
``shared/data/nb201_dev.csv`` with columns ``idx, arch, cifar10_valid, cifar10_test, cifar100_test,
imagenet16_test``) or, where the ``nats_bench`` package and the NATS-Bench topology files are
installed, from the full benchmark (:meth:`NB201Table.from_nats_bench`); :func:`load_nb201_table`
takes either path.

Lookup is by exact arch string. NB201 strings are not canonicalised: two isomorphic cells (e.g. ones
that differ only on an edge that a ``none`` op disconnects from the output) have different strings,
the benchmark trained and lists each of them separately, and so does a table. An arch is found only
if its own string (or 6-op tuple, printed with :func:`fastnas.spaces.arch_to_str`) is in the table;
no isomorphic substitute is looked for.

This module needs numpy and the pure description :mod:`fastnas.spaces.nb201`; it imports no network.
"""
from __future__ import annotations

import csv
import math
import os
import pickle
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from fastnas.spaces.nb201 import arch_to_str, parse_arch

__all__ = ["NB201Table", "load_nb201_table", "is_nats_bench_path", "NATS_DATASET_COLUMNS"]

PathLike = Union[str, "os.PathLike[str]"]

# NATS-Bench dataset name -> {get_more_info key: column name}. Column names follow the CSV extract
# (cifar10_valid, cifar10_test, cifar100_test, imagenet16_test). For 'cifar10-valid' NATS-Bench trains
# on the train half and reports the held-out valid half; for 'cifar10' it trains on train+valid and
# reports the official test set; for cifar100 and ImageNet16-120 'test-accuracy' is the benchmark's
# x-test split (its 'valid-accuracy' the x-valid split).
NATS_DATASET_COLUMNS: Dict[str, Dict[str, str]] = {
    "cifar10-valid": {"valid-accuracy": "cifar10_valid"},
    "cifar10": {"test-accuracy": "cifar10_test"},
    "cifar100": {"valid-accuracy": "cifar100_valid", "test-accuracy": "cifar100_test"},
    "ImageNet16-120": {"valid-accuracy": "imagenet16_valid", "test-accuracy": "imagenet16_test"},
}

_NATS_HINT = (
    "NB201Table.from_nats_bench needs the NATS-Bench API and its data files: `pip install nats_bench`, "
    "then download the topology benchmark (NATS-tss-v1_0-3ffb9-simple, a folder, or the full "
    "NATS-tss-v1_0-3ffb9.pickle.pbz2) from https://github.com/D-X-Y/NATS-Bench and pass its path. "
    "Without them, export the columns you need to a CSV and use NB201Table.from_csv."
)


def _normalise_arch(arch) -> str:
    """Arch string or sequence of 6 op names -> the NB201 arch string. Raises ValueError if invalid."""
    if isinstance(arch, str):
        return arch_to_str(parse_arch(arch))
    return arch_to_str(arch)


class NB201Table:
    """Per-arch numeric columns of NAS-Bench-201 architectures, looked up by arch string.

    ``NB201Table(archs, data, idx=None, source=None)``: ``archs`` a sequence of arch strings or 6-op
    tuples (validated and normalised; duplicates are an error), ``data`` a mapping column name ->
    sequence of numbers (one per arch, NaN allowed for a missing value), ``idx`` the optional NB201
    benchmark index of each arch. Usually built by :meth:`from_csv` or :meth:`from_nats_bench`.

    Lookup is by exact arch string: isomorphic cells are distinct entries (see the module docstring).
    """

    def __init__(self, archs: Sequence, data: Mapping[str, Sequence[float]], idx: Optional[Sequence[int]] = None,
                 source: Optional[str] = None):
        self._archs: List[str] = [_normalise_arch(a) for a in archs]
        self._pos: Dict[str, int] = {}
        for i, a in enumerate(self._archs):
            if a in self._pos:
                raise ValueError(f"duplicate arch {a!r} (entries {self._pos[a]} and {i}); each arch must appear once")
            self._pos[a] = i
        n = len(self._archs)
        if not isinstance(data, Mapping):
            raise TypeError(f"data must be a mapping column name -> values, got {type(data).__name__}")
        if not data:
            raise ValueError("an NB201Table needs at least one numeric column")
        self._data: Dict[str, np.ndarray] = {}
        for name, values in data.items():
            if name in ("arch", "idx"):
                raise ValueError(f"{name!r} is reserved and cannot be an accuracy column")
            col = np.asarray(values, dtype=np.float64).reshape(-1)
            if col.shape[0] != n:
                raise ValueError(f"column {name!r} has {col.shape[0]} values for {n} archs")
            if np.isinf(col).any():
                i = int(np.flatnonzero(np.isinf(col))[0])
                raise ValueError(f"column {name!r} holds {col[i]} for arch {self._archs[i]!r}; values must be finite "
                                 "(NaN for a missing one)")
            col.setflags(write=False)
            self._data[str(name)] = col
        self._idx: Optional[np.ndarray] = None
        if idx is not None:
            ix = np.asarray(idx)
            if ix.shape != (n,):
                raise ValueError(f"idx has shape {ix.shape}, expected ({n},)")
            if ix.dtype.kind not in "iu":
                raise ValueError(f"idx must hold integers, got dtype {ix.dtype}")
            ix = ix.astype(np.int64)
            if len(np.unique(ix)) != n:
                vals, counts = np.unique(ix, return_counts=True)
                raise ValueError(f"duplicate idx values: {vals[counts > 1][:5].tolist()}")
            ix.setflags(write=False)
            self._idx = ix
        self.source = source

    # ----------------------------------------------------------------------------------------------
    # Readers
    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_csv(cls, path: PathLike) -> "NB201Table":
        """Reads a CSV with a header row, an ``arch`` column (NB201 arch strings) and numeric columns.

        The file is read as UTF-8 (a leading byte-order mark is accepted). Every column other than
        ``arch`` and ``idx`` whose non-empty cells parse as numbers is an accuracy column (empty cells
        become NaN); a column in which no cell parses is a text column and is ignored, one in which some
        cells parse and others do not is an error. An ``idx`` column, if present, must hold distinct
        integers and is kept as the benchmark index.

        Raises ``FileNotFoundError`` (missing file), ``ValueError`` (not UTF-8 text, no ``arch`` column,
        no numeric column, no rows, a ragged row, an invalid or duplicate arch, a non-number or infinite cell in a
        numeric column, a non-integer or duplicate idx), each naming the file and, where it applies, the
        line.
        """
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"NB201 table CSV not found: {str(p)!r}")
        header, rows = _read_csv(p, "arch")
        if not rows:
            raise ValueError(f"{p}: no data rows")

        a_col = header.index("arch")
        archs, seen = [], {}
        for line, row in rows:
            try:
                a = _normalise_arch(row[a_col])
            except ValueError as e:
                raise ValueError(f"{p}, line {line}: invalid arch string {row[a_col]!r}: {e}") from None
            if a in seen:
                raise ValueError(f"{p}: duplicate arch {a!r} on lines {seen[a]} and {line}; each arch must appear once")
            seen[a] = line
            archs.append(a)

        data: Dict[str, List[float]] = {}
        idx = None
        for c, name in enumerate(header):
            if name == "arch":
                continue
            values = _parse_numeric([row[c] for _, row in rows], [line for line, _ in rows], p, name)
            if name == "idx":
                bad = next((i for i, v in enumerate(values or []) if math.isnan(v) or v != int(v)), None)
                if values is None or bad is not None:
                    where = (f", line {rows[bad][0]}: 'idx' holds {rows[bad][1][c].strip()!r}" if bad is not None
                             else ": the 'idx' column holds no number")
                    raise ValueError(f"{p}{where}; the 'idx' column must hold an integer in every row")
                idx = [int(v) for v in values]
                ix, counts = np.unique(idx, return_counts=True)
                if (counts > 1).any():
                    raise ValueError(f"{p}: duplicate idx values {ix[counts > 1][:5].tolist()}")
            elif values is not None:
                data[name] = values
        if not data:
            raise ValueError(f"{p}: no numeric column besides arch/idx; columns found: {header}")
        return cls(archs, data, idx=idx, source=str(p))

    @classmethod
    def from_nats_bench(cls, path_or_api, dataset: Union[str, Sequence[str]] = "cifar10", hp: str = "200",
                        indices: Optional[Sequence[int]] = None) -> "NB201Table":
        """Reads the NATS-Bench topology benchmark (= NAS-Bench-201) through the ``nats_bench`` API.

        ``path_or_api``: the benchmark path (the ``NATS-tss-v1_0-3ffb9-simple`` folder, read with
        ``fast_mode=True``, or the full ``.pickle.pbz2`` file) or an API object already created with
        ``nats_bench.create(path, 'tss', ...)``. ``dataset``: one or several of ``'cifar10-valid'``,
        ``'cifar10'``, ``'cifar100'``, ``'ImageNet16-120'``; the columns they give are listed in
        :data:`NATS_DATASET_COLUMNS` (``'cifar10'`` -> ``cifar10_test``, ``'cifar10-valid'`` ->
        ``cifar10_valid``, ...). ``hp``: ``'200'`` (200-epoch schedule) or ``'12'``. Accuracies are
        the mean over the benchmark's seeds (``get_more_info(..., is_random=False)``), in %.
        ``indices``: benchmark indices to read (default all 15,625; reading all of them in fast mode
        loads one file per arch and takes a while).

        Raises ``ImportError`` (with install hints) when a path is given and ``nats_bench`` is not
        installed, ``FileNotFoundError`` for a missing path, ``ValueError`` for an unknown dataset/hp.
        """
        datasets = [dataset] if isinstance(dataset, str) else list(dataset)
        if not datasets:
            raise ValueError("from_nats_bench: give at least one dataset")
        by_lower = {k.lower(): k for k in NATS_DATASET_COLUMNS}
        names = []
        for d in datasets:
            if not isinstance(d, str) or d.lower() not in by_lower:
                raise ValueError(f"unknown NATS-Bench dataset {d!r}; known: {list(NATS_DATASET_COLUMNS)}")
            names.append(by_lower[d.lower()])
        hp = str(hp)
        if hp not in ("12", "200"):
            raise ValueError(f"hp must be '12' or '200' (training epochs of the schedule), got {hp!r}")

        if isinstance(path_or_api, (str, os.PathLike)):
            try:
                from nats_bench import create
            except ImportError as e:
                raise ImportError(_NATS_HINT) from e
            p = Path(path_or_api)
            if not p.exists():
                raise FileNotFoundError(f"NATS-Bench topology benchmark not found: {str(p)!r}. {_NATS_HINT}")
            if p.is_dir() and not (p / "meta.pickle.pbz2").is_file():
                raise ValueError(
                    f"{p} is a folder but not a NATS-Bench topology benchmark folder: it has no meta.pickle.pbz2 "
                    "(the NATS-tss-v1_0-3ffb9-simple folder holds meta.pickle.pbz2 and one 000000.pickle.pbz2 "
                    "... 015624.pickle.pbz2 per arch); for a CSV table, give the .csv file")
            try:
                api = create(str(p), "tss", fast_mode=p.is_dir(), verbose=False)
            except _NATS_READ_ERRORS as e:
                raise ValueError(f"{p} is not a NATS-Bench topology benchmark {'folder' if p.is_dir() else 'file'} "
                                 f"(reading it failed with {type(e).__name__}: {e}); expected the "
                                 "NATS-tss-v1_0-3ffb9-simple folder or NATS-tss-v1_0-3ffb9.pickle.pbz2") from None
            source = str(p)
        elif hasattr(path_or_api, "get_more_info") and hasattr(path_or_api, "arch"):
            api = path_or_api
            source = f"nats_bench API {type(api).__name__}"
        else:
            raise TypeError(f"path_or_api must be a path or a nats_bench API object, got {type(path_or_api).__name__}")

        # In fast mode the API keeps every arch it has read from its folder; a table of all 15,625 would
        # hold them all. The table keeps only its numbers, so an arch it has read is dropped again
        # (the API re-reads it from the folder if asked).
        drop_read = isinstance(path_or_api, (str, os.PathLike)) and getattr(api, "fast_mode", False) \
            and isinstance(getattr(api, "arch2infos_dict", None), dict)
        index_list = list(range(len(api))) if indices is None else [int(i) for i in indices]
        archs: List[str] = []
        data: Dict[str, List[float]] = {col: [] for d in names for col in NATS_DATASET_COLUMNS[d].values()}
        for i in index_list:
            try:
                archs.append(api.arch(i))
                infos = [api.get_more_info(i, d, hp=hp, is_random=False) for d in names]
            except _NATS_READ_ERRORS as e:
                if not isinstance(path_or_api, (str, os.PathLike)):
                    raise
                raise ValueError(f"{source}: reading arch {i} of the NATS-Bench benchmark failed "
                                 f"({type(e).__name__}: {e}); the benchmark folder/file is incomplete or corrupt"
                                 ) from None
            for d, info in zip(names, infos):
                for key, col in NATS_DATASET_COLUMNS[d].items():
                    v = info.get(key)
                    data[col].append(float("nan") if v is None else float(v))
            if drop_read:
                api.arch2infos_dict.pop(i, None)
        return cls(archs, data, idx=index_list, source=f"{source} (hp={hp})")

    # ----------------------------------------------------------------------------------------------
    # Queries
    # ----------------------------------------------------------------------------------------------
    def _key(self, arch) -> str:
        a = _normalise_arch(arch)  # ValueError from parse_arch / arch_to_str on invalid input
        if a not in self._pos:
            src = f" (from {self.source})" if self.source else ""
            raise KeyError(
                f"arch {a!r} is not among the {len(self)} archs of this table{src}; "
                "lookup is by exact arch string, isomorphic cells are not matched")
        return a

    def lookup(self, arch) -> Dict[str, float]:
        """The row of ``arch`` (an NB201 arch string or a tuple of 6 op names): ``{column: float}``,
        plus ``'idx': int`` when the table has benchmark indices. ``ValueError`` for an invalid arch,
        ``KeyError`` for a valid one that the table does not hold."""
        i = self._pos[self._key(arch)]
        row: Dict[str, float] = {}
        if self._idx is not None:
            row["idx"] = int(self._idx[i])
        for name, col in self._data.items():
            row[name] = float(col[i])
        return row

    def __getitem__(self, arch) -> Dict[str, float]:
        return self.lookup(arch)

    def row_or_none(self, arch) -> Optional[Dict[str, Optional[float]]]:
        """:meth:`lookup` for a search's records: None when the table does not hold ``arch``, and an
        empty (NaN) cell as None, so the JSON files written from it stay strict JSON (no bare NaN)."""
        try:
            row = self.lookup(arch)
        except KeyError:
            return None
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}

    def __contains__(self, arch) -> bool:
        try:
            return _normalise_arch(arch) in self._pos
        except (ValueError, TypeError):
            return False

    def __len__(self) -> int:
        return len(self._archs)

    def __iter__(self):
        return iter(list(self._archs))

    def __repr__(self) -> str:
        src = f", source={self.source!r}" if self.source else ""
        return f"NB201Table({len(self)} archs, columns={self.columns}{', with idx' if self.has_idx else ''}{src})"

    @property
    def archs(self) -> List[str]:
        """The arch strings, in table (file) order."""
        return list(self._archs)

    @property
    def columns(self) -> List[str]:
        """The accuracy (numeric) column names, in file order; ``idx`` is not among them."""
        return list(self._data)

    @property
    def has_idx(self) -> bool:
        return self._idx is not None

    def column(self, name: str) -> np.ndarray:
        """A copy of column ``name`` as a float64 array aligned with :attr:`archs` (``'idx'`` gives the
        int64 benchmark indices when present). ``KeyError`` for an unknown column."""
        if name == "idx" and self._idx is not None:
            return self._idx.copy()
        if name not in self._data:
            raise KeyError(f"no column {name!r}; columns: {self.columns}{' (and idx)' if self.has_idx else ''}")
        return self._data[name].copy()

    def sample(self, n: int, seed: int = 0) -> List[str]:
        """``n`` distinct arch strings drawn uniformly without replacement, deterministic in ``seed``
        (numpy ``default_rng``). ``ValueError`` if ``n`` is negative or larger than the table."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"n must be an int, got {type(n).__name__}")
        if not 0 <= n <= len(self):
            raise ValueError(f"cannot sample {n} archs without replacement from a table of {len(self)}")
        picks = np.random.default_rng(seed).choice(len(self), size=int(n), replace=False)
        return [self._archs[int(i)] for i in picks]

    def best(self, column: str) -> str:
        """The arch string with the highest value of ``column`` (NaNs ignored; ties go to the first in
        table order). Its values: ``table.lookup(table.best(column))``."""
        if column == "idx":
            raise ValueError("best() ranks accuracy columns, not idx")
        col = self.column(column)
        if np.isnan(col).all():
            raise ValueError(f"column {column!r} has no values (all NaN)")
        return self._archs[int(np.nanargmax(col))]


# What reading a NATS-Bench file that is not one raises (bz2: OSError "Invalid data stream", EOFError;
# pickle; the API's own ValueError/AssertionError on a wrong layout).
_NATS_READ_ERRORS = (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError,
                     AttributeError, AssertionError)


def _read_csv(p: Path, key: str) -> Tuple[List[str], List[Tuple[int, List[str]]]]:
    """Header (stripped names) and the non-blank rows ``(line number, cells)`` of the CSV at ``p``.

    UTF-8, a leading byte-order mark accepted (Excel writes one). ValueError naming the file (and line)
    for: not UTF-8 text, a malformed CSV, an empty file, no ``key`` column, duplicate column names, a
    row with more or fewer fields than the header. No rows is left to the caller.
    """
    reader = None
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                raise ValueError(f"{p}: empty file (expected a header row with the column {key!r})") from None
            rows = []
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue  # blank line
                if len(row) != len(header):
                    raise ValueError(f"{p}, line {line}: {len(row)} field{'' if len(row) == 1 else 's'}, "
                                     f"the header has {len(header)}")
                rows.append((line, row))
    except UnicodeDecodeError as e:
        raise ValueError(f"{p}: not a UTF-8 text CSV (byte {e.object[e.start:e.start + 1]!r} cannot be decoded: "
                         f"{e.reason}); a table is a CSV file with a header row") from None
    except csv.Error as e:
        raise ValueError(f"{p}, line {reader.line_num if reader else 1}: not a valid CSV: {e}") from None
    if key not in header:
        raise ValueError(f"{p}: no {key!r} column; columns found: {header}")
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise ValueError(f"{p}: duplicate column names {dup}")
    return header, rows


def _parse_numeric(cells: Sequence[str], lines: Sequence[int], source, column: str) -> Optional[List[float]]:
    """Floats of one column's cells (empty -> NaN), or None for a text column: one whose non-empty cells
    (if any) all fail to parse, or whose cells are all empty.

    A column whose cells partly parse is an error, not a text column: ValueError naming ``source``, the
    line (``lines[i]`` is the file line of ``cells[i]``), the column and the first bad cell. (Dropping the
    column silently would, e.g., remove an accuracy column from a correlation report because one cell
    says "N/A" or "90%".)
    """
    out: List[float] = []
    first_number = first_bad = None
    for i, c in enumerate(cells):
        s = c.strip()
        if not s:
            out.append(float("nan"))
            continue
        try:
            value = float(s)
        except ValueError:
            value = None
        if value is not None:
            if math.isinf(value):
                raise ValueError(f"{source}, line {lines[i]}: column {column!r} holds {s!r}, which is not a finite "
                                 "number; leave the cell empty for a missing value")
            out.append(value)
            if first_number is None:
                first_number = i
        else:
            out.append(float("nan"))
            if first_bad is None:
                first_bad = i
    if first_number is None:
        return None
    if first_bad is not None:
        raise ValueError(
            f"{source}, line {lines[first_bad]}: column {column!r} holds {cells[first_bad].strip()!r}, which is not a "
            f"number, while other cells of the column are numbers (e.g. {cells[first_number].strip()!r} on line "
            f"{lines[first_number]}); write a plain number (no '%' or thousands separator) or leave the cell "
            "empty for a missing value")
    return out


def is_nats_bench_path(path: PathLike) -> bool:
    """Whether ``path`` names a NATS-Bench topology benchmark (a folder, the ``-simple`` release, or a
    ``.pickle.pbz2`` file) rather than a CSV."""
    p = Path(path)
    return p.is_dir() or p.name.endswith(".pickle.pbz2")


def load_nb201_table(path: PathLike) -> NB201Table:
    """The table at ``path``: a CSV (:meth:`NB201Table.from_csv`) or a NATS-Bench topology benchmark
    (:func:`is_nats_bench_path`; :meth:`NB201Table.from_nats_bench` with all four datasets, 200-epoch
    schedule: columns cifar10_valid, cifar10_test, cifar100_valid, cifar100_test, imagenet16_valid,
    imagenet16_test)."""
    if is_nats_bench_path(path):
        return NB201Table.from_nats_bench(path, dataset=list(NATS_DATASET_COLUMNS))
    return NB201Table.from_csv(path)
