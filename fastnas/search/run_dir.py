"""The run folder of a search, written so that a kill at any instant loses nothing already written.

Layout::

    out_dir/
      config.json        the resolved settings (written once, at the start)
      prune.json         with ``prune``: the kept ops, every round's op scores, the memory saved
      prune_progress.json  with ``prune``: every pruning evaluation so far (a resumed run's pruning
                         reads them back: :mod:`fastnas.search.prune_progress`)
      checkpoint.pt      model, optimizers, scheduler, loaders, RNG states, history (every epoch)
      metrics.jsonl      one JSON object per epoch (appended, flushed and fsync'ed)
      genotype.txt       the current result: a DARTS ``Genotype(...)`` repr or an NB201 arch string
      arch_epoch_NNN.png heatmap of the architecture weights after each epoch
      result.json        the final result (written at the end)

Every file except metrics.jsonl is replaced atomically: written to a temporary file in the same folder,
fsync'ed, then ``os.replace``d over the old one, so a reader (or a resume) sees either the previous
complete file or the new complete file, never a torn one. metrics.jsonl is rewritten from the
checkpoint's history on resume, so lines appended after the last checkpoint by a killed run are not
duplicated.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

import torch

from fastnas._io import PathLike, atomic_write_bytes, atomic_write_text
from fastnas.search.prune_progress import PROGRESS_NAME

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_torch_save", "RunDir", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` with the atomicity of :func:`atomic_write_bytes`."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


class RunDir:
    """Paths and writers of one run folder (see the module docstring)."""

    def __init__(self, root: PathLike):
        self.root = Path(root)

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT_NAME

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def genotype(self) -> Path:
        return self.root / "genotype.txt"

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    def heatmap(self, epoch: int) -> Path:
        return self.root / f"arch_epoch_{epoch:03d}.png"

    def has_checkpoint(self) -> bool:
        return self.checkpoint.is_file()

    def holds_a_run(self) -> bool:
        """True when the folder already has this kind of output (so a new run would overwrite it)."""
        return any(p.exists() for p in (self.checkpoint, self.metrics, self.genotype, self.result,
                                         self.root / PROGRESS_NAME))

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def write_json(self, path: Path, obj: Dict[str, Any]) -> None:
        atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")

    def append_metrics(self, row: Dict[str, Any]) -> None:
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def rewrite_metrics(self, rows: Iterable[Dict[str, Any]]) -> None:
        atomic_write_text(self.metrics, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))

    def save_checkpoint(self, state: Dict[str, Any]) -> None:
        atomic_torch_save(state, self.checkpoint)

    def load_checkpoint(self, path: Optional[PathLike] = None) -> Dict[str, Any]:
        path = Path(path) if path is not None else self.checkpoint
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint to resume from at {path}")
        # weights_only=False: the checkpoint holds RNG states and plain Python containers we wrote
        # ourselves; never resume from a checkpoint you did not produce.
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # truncated, garbage, another pickle: torch raises many kinds
            detail = str(e).splitlines()[0] if str(e) else ""
            raise ValueError(f"cannot resume: {path} is not a readable fastnas checkpoint ({type(e).__name__}: "
                             f"{detail[:200]}); it may be truncated or damaged: resume from another copy, or "
                             "start again in a new out_dir (or without --resume after removing the folder)") from None
        if not isinstance(ckpt, dict) or "version" not in ckpt or "config" not in ckpt:
            raise ValueError(f"cannot resume: {path} is not a fastnas checkpoint (it holds a "
                             f"{type(ckpt).__name__}, not a search's saved state)")
        return ckpt

    def find_checkpoint(self, resume, say=lambda msg: None) -> Optional[Dict[str, Any]]:
        """The checkpoint a ``resume`` setting points at: None for False; this folder's for True (None,
        with a message through ``say``, when there is none yet); a folder's or a file's for a path."""
        if not resume:
            return None
        if resume is True:
            if not self.has_checkpoint():
                say(f"fastnas: no checkpoint in {self.root} yet: starting from the beginning")
                return None
            return self.load_checkpoint()
        p = Path(resume).expanduser()
        return self.load_checkpoint(p / CHECKPOINT_NAME if p.is_dir() else p)
