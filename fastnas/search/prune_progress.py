"""Pruning progress on disk: a search killed while it prunes resumes its pruning, not restarts it.

Pruning the DARTS supernet takes minutes on a CPU (every evaluation ~1 s on this 2-core machine, 224
of them in the first round alone), and its result only reaches ``checkpoint.pt`` at the end of the
first epoch. Each pruning evaluation is a pure function of the op mask it scores (the supernet is one
seeded template, copied and reseeded per evaluation: :mod:`fastnas.search.pruning`), so the proxy values
of the masks already scored are kept in ``prune_progress.json`` and a resumed run looks them up instead
of scoring them again: it replays the same rounds and ends with the same masks.

Format: one JSON object, replaced atomically (so it is whole or the previous version, never torn)::

    {"fastnas_prune_progress": 1,
     "fingerprint": {"config": the search's settings, "data_sha256": the pruning batch,
                     "device": "cpu", "fastnas": version, "torch": version},
     "evaluations": {mask key: [value per pruning proxy]}}

It is saved at most every :data:`SAVE_EVERY_S` seconds and when pruning ends: a kill loses at most that
much work (one save measured ~2 ms at 300 evaluations, one DARTS-supernet evaluation ~1 s). A file
whose fingerprint differs from the run's is refused, naming the difference.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping

import torch

from fastnas._io import atomic_write_text

__all__ = ["PruneProgress", "PROGRESS_NAME", "PROGRESS_VERSION", "SAVE_EVERY_S", "mask_key"]

PROGRESS_NAME = "prune_progress.json"
PROGRESS_VERSION = 1
SAVE_EVERY_S = 5.0


def mask_key(masks: Mapping[str, torch.Tensor]) -> str:
    """A text key of the op masks ``{kind: (E, n_ops) bool}``: ``"normal:1101...;reduce:..."``."""
    return ";".join(f"{k}:" + "".join("1" if b else "0" for b in masks[k].flatten().tolist()) for k in sorted(masks))


class PruneProgress:
    """The proxy values of the op masks already evaluated (:attr:`evaluations`), saved to ``path``."""

    def __init__(self, path: Path, fingerprint: Dict[str, Any], evaluations: Dict[str, List[float]]):
        self.path = path
        self.fingerprint = fingerprint
        self.evaluations = evaluations
        self.hits = 0                   # evaluations looked up instead of computed (counted by the user)
        self._last_save = time.monotonic()
        self._unsaved = False

    @classmethod
    def open(cls, path: Path, fingerprint: Mapping[str, Any], resume: bool) -> "PruneProgress":
        """The progress at ``path`` when ``resume`` and the file records this run (fingerprint), else an
        empty one (written on the first :meth:`save`). Raises ValueError for a damaged file or one of
        another run."""
        fingerprint = json.loads(json.dumps(dict(fingerprint)))  # the form it will have when read back
        if not resume or not path.is_file():
            return cls(path, fingerprint, {})
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            ok = isinstance(saved, dict) and saved.get("fastnas_prune_progress") == PROGRESS_VERSION
            evaluations = {str(k): [float(v) for v in vals] for k, vals in saved["evaluations"].items()} if ok else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise ValueError(f"cannot resume the pruning: {path} is not a readable fastnas pruning progress file "
                             f"(version {PROGRESS_VERSION}); delete it to prune again from the start")
        recorded = saved.get("fingerprint") or {}
        diff = _differences(recorded, fingerprint)
        if diff:
            detail = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"cannot resume the pruning in {path.parent}: {path.name} records another run "
                             f"({detail}); resume with the same settings, or delete it to prune again")
        return cls(path, fingerprint, evaluations)

    def record(self, key: str, values: List[float]) -> None:
        """Keeps the values of one evaluation; saves when the last save is :data:`SAVE_EVERY_S` old."""
        self.evaluations[key] = [float(v) for v in values]
        self._unsaved = True
        if time.monotonic() - self._last_save >= SAVE_EVERY_S:
            self.save()

    def save(self) -> None:
        if not self._unsaved and self.path.is_file():
            return
        doc = {"fastnas_prune_progress": PROGRESS_VERSION, "fingerprint": self.fingerprint,
               "evaluations": self.evaluations}  # json writes and reads back NaN/inf as NaN/Infinity
        atomic_write_text(self.path, json.dumps(doc, sort_keys=True) + "\n")
        self._last_save = time.monotonic()
        self._unsaved = False


def _differences(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> Dict[str, Any]:
    """{field: (recorded, now)} of the fingerprint fields that differ; the settings one by one."""
    diff: Dict[str, Any] = {}
    for key in sorted(set(recorded) | set(now)):
        a, b = recorded.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diff.update({f"{key}.{k}": (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)})
        elif a != b:
            diff[key] = (a, b)
    return diff
