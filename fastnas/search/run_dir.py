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

While a search runs it holds an exclusive lock on its folder (``flock`` on the folder itself, so no lock
file is left behind and a killed run's lock goes with its process): a second search given the same
``out_dir`` is refused instead of writing over the first one's files.

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
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import torch

from fastnas._io import PathLike, atomic_write_bytes, atomic_write_text, try_lock
from fastnas.search.prune_progress import PROGRESS_NAME

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_torch_save", "RunDir", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save`` with the atomicity of :func:`atomic_write_bytes`."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


# What a run writes besides the files that mark a folder as holding a run (RunDir.holds_a_run): a new
# run never replaces a user's file of one of these names.
_ALSO_WRITTEN = ("config.json", "prune.json", "collapse.png", "arch_epoch_*.png")


class RunDir:
    """Paths and writers of one run folder (see the module docstring).

    ``forked_from``: for a run resumed from another folder's checkpoint (``resume=PATH`` with an
    ``out_dir`` elsewhere), that folder; :meth:`adopt` then copies the run into this one.
    """

    def __init__(self, root: PathLike):
        self.root = Path(root)
        self.forked_from: Optional[Path] = None
        self.checkpoint_source: Optional[Path] = None   # the checkpoint file a resume read
        self._lock_fd: Optional[int] = None

    def lock(self) -> None:
        """Takes the folder's exclusive lock (the folder must exist); FileExistsError when another search
        holds it. Held until :meth:`unlock` or the end of the process. Where the file system has no locks
        (some network mounts) the run goes on unlocked, with a warning."""
        if self._lock_fd is not None:
            return
        fd = os.open(self.root, os.O_RDONLY)
        taken = try_lock(fd)
        if taken:
            self._lock_fd = fd
            return
        os.close(fd)
        if taken is False:
            raise FileExistsError(f"{self.root} is in use by another fastnas search that is still running; "
                                  "wait for it to end, or choose another out_dir")
        warnings.warn(f"cannot lock the run folder {self.root} (no flock here): nothing stops a second search "
                      "from writing into it at the same time", stacklevel=3)

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)   # closing the descriptor releases the flock
            self._lock_fd = None

    def __del__(self):
        try:
            self.unlock()
        except Exception:  # at interpreter shutdown os may already be gone; the OS releases the lock anyway
            pass

    @classmethod
    def create_unique(cls, parent: Path, name: str) -> "RunDir":
        """A new folder ``parent/name`` (``name-2``, ``name-3``, ... when taken): created with an exclusive
        mkdir, so two runs started in the same second never share one."""
        parent.mkdir(parents=True, exist_ok=True)
        for n in range(1, 10_000):
            root = parent / (name if n == 1 else f"{name}-{n}")
            try:
                root.mkdir()
            except FileExistsError:
                continue
            run_dir = cls(root)
            run_dir.lock()
            return run_dir
        raise FileExistsError(f"no free run folder name {name}-N under {parent}")

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

    def files_in_the_way(self) -> List[str]:
        """Names of files here that a new run would overwrite, other than a run's own (holds_a_run)."""
        found = []
        for pattern in _ALSO_WRITTEN:
            found += sorted(p.name for p in self.root.glob(pattern)
                            if not (p.name == self.config.name and self._is_a_search_config(p)))
        return found

    def recorded_config(self) -> Optional[Dict[str, Any]]:
        """The settings in this folder's config.json when a search wrote it, else None."""
        if not self._is_a_search_config(self.config):
            return None
        return json.loads(self.config.read_text(encoding="utf-8"))

    @staticmethod
    def _is_a_search_config(path: Path) -> bool:
        """A config.json a search wrote (a run killed before its first checkpoint leaves only that):
        starting again over it loses nothing."""
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(obj, dict) and {"space", "method", "seed", "out_dir"} <= set(obj)

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def adopt(self, config: Dict[str, Any]) -> None:
        """Makes this folder a copy of the run ``forked_from``: its checkpoint (the file the resume
        read) and the files it had written (config, genotype, pruning, plots); config.json is written from
        ``config`` when the source had none (a checkpoint kept outside its run folder)."""
        if self.forked_from is not None:
            if self.checkpoint_source is not None:
                atomic_write_bytes(self.checkpoint, self.checkpoint_source.read_bytes())
            names = [self.config.name, self.genotype.name, "prune.json", PROGRESS_NAME, "collapse.png"]
            sources = [self.forked_from / n for n in names] + sorted(self.forked_from.glob("arch_epoch_*.png"))
            for src in sources:
                if src.is_file():
                    atomic_write_bytes(self.root / src.name, src.read_bytes())
        if not self.config.exists():
            self.write_json(self.config, config)

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
        self.checkpoint_source = p / CHECKPOINT_NAME if p.is_dir() else p
        return self.load_checkpoint(self.checkpoint_source)
