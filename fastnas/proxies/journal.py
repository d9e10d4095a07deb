"""The score journal: a long ``fastnas.score`` run keeps every finished score on disk and resumes.

Scoring all 15,625 NAS-Bench-201 archs with every proxy takes days on a CPU (100 archs: 1,210 s), so a
kill must not lose what was scored. A score depends only on the architecture, the proxy, its settings,
the data, the batch size, the seed and the network options (:mod:`fastnas.proxies.score`), never on
what else is scored or in which order; so a journal of finished (arch, proxy) scores can be replayed
into a later run of the same job and that run scores only the rest, ending with the same table.

Format: JSON Lines.

- line 1, the header: ``{"fastnas_score_journal": 1, "fingerprint": {...}, "archs": [labels]}``; the
  fingerprint holds everything a score depends on (the images and labels by their SHA-256), plus the
  device type and the fastnas / torch versions, which move scores by rounding. It is written
  atomically with the first score, so the file either does not exist or starts with a complete header
  (a job that fails before its first score, e.g. on a misspelt setting, leaves no file);
- one line per finished score: ``{"i": arch index, "arch": label, "proxy": name, "score": float,
  "seconds": float}``, appended and flushed as soon as the score exists (a killed process loses at most
  the score it was computing) and fsync'ed at most once a second and at the end (an OS crash loses at
  most the last second: one fsync per score would cost more than a params/flops score).

A kill can leave the last record torn (it ends without its newline): it is dropped and the file
truncated to the last complete line before appending. A damaged complete line, or a header whose fingerprint
differs from the job's, is an error that names the difference: a journal is never silently mixed with
another job's scores. (A journal without any score holds nothing to lose and is simply replaced.)

One job writes a journal at a time: the writer holds an exclusive ``flock`` on it (released when the job
ends or dies), and checks that the file is still the one it read; a second job on the same path is
refused with a ValueError before it writes a byte (tested with jobs started before and during another).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import torch

from fastnas._io import PathLike, atomic_write_text, try_lock

__all__ = ["ScoreJournal", "JOURNAL_VERSION", "data_digest", "environment_fingerprint"]

JOURNAL_VERSION = 1
_FSYNC_EVERY_S = 1.0


def data_digest(images: torch.Tensor, labels: Optional[torch.Tensor]) -> str:
    """SHA-256 of the images' float32 bytes (and the labels' int64 bytes): identifies a proxy batch."""
    h = hashlib.sha256()
    h.update(repr(tuple(images.shape)).encode())
    h.update(images.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    if labels is not None:
        h.update(labels.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


def environment_fingerprint(device) -> Dict[str, Any]:
    """What moves a score by rounding, beyond the job's own settings: the device type, the fastnas and
    torch versions and, on the CPU, torch's thread count (its reductions split work by thread: nwot
    measured 191.68225607 with 1 thread and 191.68225254 with 2)."""
    import fastnas

    env: Dict[str, Any] = {"device": torch.device(device).type, "fastnas": fastnas.__version__,
                           "torch": torch.__version__}
    if env["device"] == "cpu":
        env["cpu_threads"] = torch.get_num_threads()
    return env


def _jsonable(obj: Any) -> Any:
    """``obj`` with what JSON cannot hold (tuples, numpy scalars, other objects) made comparable text."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if hasattr(obj, "item") and callable(obj.item):       # numpy / torch scalars
        try:
            return _jsonable(obj.item())
        except (TypeError, ValueError):
            pass
    return repr(obj)


def _first_difference(theirs: List[Any], ours: List[str]) -> str:
    """Says how the journal's arch list differs from the job's, for the refusal message."""
    if sorted(map(str, theirs)) == sorted(ours):
        return (f"the same {len(ours)} archs in another order; a journal resumes the order it was started "
                f"in")
    for n, (a, b) in enumerate(zip(theirs, ours), start=1):
        if a != b:
            return f"arch {n}: journal {str(a)[:60]!r}, now {b[:60]!r}"
    return f"{len(theirs)} archs in the journal, {len(ours)} now"


class ScoreJournal:
    """An open journal at ``path`` for one scoring job: :meth:`open` resumes or starts it,
    :meth:`done` gives the scores already there, :meth:`record` appends one."""

    def __init__(self, path: Path, fingerprint: Dict[str, Any], archs: List[str],
                 done: Dict[Tuple[int, str], Tuple[float, float]], good_bytes: Optional[int],
                 read_size: Optional[int] = None):
        self.path = path
        self._read_size = read_size         # the file's size when it was read (None: no file then)
        self.fingerprint = fingerprint
        self.archs = archs
        self._done = done
        self._good_bytes = good_bytes       # None: no journal of this job on disk yet
        self._file = None
        self._last_sync = time.monotonic()

    # -- opening -----------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: PathLike, fingerprint: Mapping[str, Any], archs: Iterable[str]) -> "ScoreJournal":
        """The journal at ``path`` for the job ``(fingerprint, archs)``: its scores when the file is this
        job's journal, none when there is no file. Raises ValueError when the file is not a journal, is
        damaged, or records another job's scores. Nothing is written before the first :meth:`record`,
        so a job that fails before scoring anything leaves no file; a journal that holds no score (only
        a header, of any job) is replaced then."""
        path = Path(path)
        fingerprint = _jsonable(dict(fingerprint))
        archs = [str(a) for a in archs]
        if path.is_dir():
            raise ValueError(f"score journal {path} is a folder; give a file path (e.g. {path / 'scores.journal.jsonl'})")
        if not path.exists():
            return cls(path, fingerprint, archs, {}, None)
        size = path.stat().st_size
        done, good_bytes = cls._read(path, fingerprint, archs)
        return cls(path, fingerprint, archs, done, good_bytes, read_size=size)

    @staticmethod
    def _read(path: Path, fingerprint: Dict[str, Any], archs: List[str]
              ) -> Tuple[Dict[Tuple[int, str], Tuple[float, float]], Optional[int]]:
        """(the scores, the byte length of the complete lines, None for a header-only journal of another
        job) of the journal at ``path``."""
        lines = path.read_bytes().split(b"\n")
        # ``lines[-1]`` is what follows the last newline: empty for a clean file, a torn record otherwise;
        # it is left out of ``good_bytes``, so the first :meth:`record` truncates it away.
        complete = lines[:-1]
        try:
            header = json.loads(complete[0]) if complete else None
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or header.get("fastnas_score_journal") != JOURNAL_VERSION:
            raise ValueError(f"{path} is not a fastnas score journal (version {JOURNAL_VERSION}); delete it or "
                             f"give another path")
        has_records = any(line.strip() for line in complete[1:])
        if header.get("archs") != archs:
            if not has_records:
                return {}, None
            theirs = header.get("archs") or []
            raise ValueError(f"cannot resume the score journal {path}: it is for another list of architectures "
                             f"({_first_difference(theirs, archs)}); give another path or delete it")
        recorded = header.get("fingerprint") or {}
        diff = {k: (recorded.get(k), fingerprint.get(k)) for k in sorted(set(recorded) | set(fingerprint))
                if recorded.get(k) != fingerprint.get(k)}
        if diff:
            if not has_records:
                return {}, None
            detail = "; ".join(f"{k}: journal {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"cannot resume the score journal {path}: the job differs from the one it "
                             f"records ({detail}); give another path or delete it")
        done: Dict[Tuple[int, str], Tuple[float, float]] = {}
        good_bytes = len(complete[0]) + 1
        for n, line in enumerate(complete[1:], start=2):
            try:
                rec = json.loads(line)
                key = (int(rec["i"]), str(rec["proxy"]))
                value, seconds = float(rec["score"]), float(rec["seconds"])
                ok = (0 <= key[0] < len(archs) and archs[key[0]] == rec["arch"] and key[1] in fingerprint["proxies"]
                      and math.isfinite(value))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"score journal {path}, line {n}: not a score record of this job "
                                 f"({line[:80]!r}); the file is damaged: delete it or give another path")
            done[key] = (value, seconds)
            good_bytes += len(line) + 1
        return done, good_bytes

    def _start_writing(self) -> None:
        """Opens the file for appending: a new journal gets its header (atomically: the file is whole or
        absent), a resumed one loses a torn last record. The open file holds an exclusive ``flock`` until
        :meth:`close` (or the process ends), and the file must be the one this job read: a second job
        writing the same journal is refused before it changes a byte of it."""
        if self._good_bytes is None:
            header = json.dumps({"fastnas_score_journal": JOURNAL_VERSION, "fingerprint": self.fingerprint,
                                 "archs": self.archs}) + "\n"
            try:
                # A journal that holds only another job's header is replaced; none is created exclusively.
                atomic_write_text(self.path, header, exclusive=self._read_size is None)
            except FileExistsError:
                raise self._in_use("was created by another job after this one looked") from None
            expected_size = len(header.encode("utf-8"))
        else:
            expected_size = self._read_size
        f = open(self.path, "a", encoding="utf-8")
        try:
            self._lock(f)
            if os.fstat(f.fileno()).st_ino != os.stat(self.path).st_ino:
                raise self._in_use("was replaced by another job")
            if os.fstat(f.fileno()).st_size != expected_size:
                raise self._in_use("was written by another job after this one read it")
            if self._good_bytes is not None and self._good_bytes < expected_size:
                f.truncate(self._good_bytes)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            f.close()
            raise
        self._file = f

    def _lock(self, f) -> None:
        # Without flock (Windows, some network mounts) the size and inode checks still catch most collisions.
        if try_lock(f.fileno()) is False:
            raise self._in_use("is being written by another job that is still running")

    def _in_use(self, what: str) -> ValueError:
        return ValueError(f"score journal {self.path} {what}; two jobs cannot share one journal: wait for the "
                          f"other to end and run this one again (it resumes), or give another path")

    # -- use ---------------------------------------------------------------------------------------
    def done(self) -> Dict[Tuple[int, str], Tuple[float, float]]:
        """{(arch index, proxy): (score, seconds)} of the scores the journal holds."""
        return dict(self._done)

    def record(self, i: int, proxy: str, value: float, seconds: float) -> None:
        """Appends the score of arch ``i`` for ``proxy`` (flushed now, fsync'ed within a second)."""
        if self._file is None:
            self._start_writing()
        rec = {"i": i, "arch": self.archs[i], "proxy": proxy, "score": float(value), "seconds": float(seconds)}
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        self._done[(i, proxy)] = (float(value), float(seconds))
        now = time.monotonic()
        if now - self._last_sync >= _FSYNC_EVERY_S:
            os.fsync(self._file.fileno())
            self._last_sync = now

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def __enter__(self) -> "ScoreJournal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
