"""What a search returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from fastnas.spaces import Genotype

__all__ = ["SearchResult"]


@dataclass
class SearchResult:
    """The outcome of :func:`fastnas.search`.

    genotype: a DARTS :class:`~fastnas.spaces.Genotype` (``space="darts"``) or the NB201 arch string.
    arch_parameters: name -> raw architecture parameter (CPU tensors: alphas (E, n_ops), betas (E,)).
    history: one dict per epoch, as in ``metrics.jsonl``.
    table_accuracy: NB201 only, with ``nb201_table``: the table's row for the found arch (None when
    the arch is not in the table or no table was given).
    """

    space: str
    method: str
    genotype: Union[Genotype, str]
    arch_parameters: Dict[str, torch.Tensor]
    history: List[Dict[str, Any]]
    config: Dict[str, Any]
    out_dir: Optional[Path] = None
    table_accuracy: Optional[Dict[str, float]] = None
    search_time_s: float = 0.0
    extras: Dict[str, Any] = field(default_factory=dict)

    @property
    def arch(self) -> str:
        """The result as text: ``repr(Genotype)`` for DARTS, the arch string for NB201."""
        return self.genotype if isinstance(self.genotype, str) else repr(self.genotype)

    @property
    def epochs(self) -> int:
        return len(self.history)

    def __str__(self) -> str:
        if "archs_scored" in self.extras:  # a zero-shot search: rows are scored archs, not epochs
            lines = [f"fastnas {self.method} search on {self.space}: {self.extras['archs_scored']} archs scored by "
                     f"{self.extras['proxy']} in {self.search_time_s:.1f} s", f"  result: {self.arch}",
                     f"  fitness {self.extras['fitness']:.6g} (arch {self.extras['best_step']}), stopped by "
                     f"{self.extras['stop_reason']}"]
        else:
            lines = [f"fastnas {self.method} search on {self.space}: {self.epochs} epochs, {self.search_time_s:.1f} s",
                     f"  result: {self.arch}"]
            if "bnas_genotype" in self.extras:
                lines.append(f"  for BNAS-v2's train_b.py (normal/reduce swapped): {self.extras['bnas_genotype']!r}")
        if self.history and "train_loss" in self.history[-1]:
            last = self.history[-1]
            lines.append(f"  last epoch: train loss {last['train_loss']:.4f}"
                         + (f", train acc {last['train_acc']:.2f}%" if last.get("train_acc") is not None else "")
                         + (f", valid loss {last['valid_loss']:.4f}" if last.get("valid_loss") is not None else "")
                         + (f", valid acc {last['valid_acc']:.2f}%" if last.get("valid_acc") is not None else ""))
        if self.table_accuracy:
            acc = ", ".join(f"{k} {'n/a' if v is None else format(v, '.2f')}" for k, v in self.table_accuracy.items()
                            if k != "idx")
            lines.append(f"  NB201 table: {acc}")
        if self.out_dir is not None:
            lines.append(f"  run folder: {self.out_dir}")
        return "\n".join(lines)
