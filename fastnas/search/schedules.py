"""Per-epoch schedules of the search methods.

DARTS- (Chu et al., ICLR 2021): the auxiliary skip connection's weight decays from ``beta0`` at the first
epoch to 0 at the last, linearly (the paper's default) or along a half cosine.

B-DARTS's confident learning rate (Ding et al., BNAS-v2): the architecture is trusted more as the
weights train, ``confidence = ((epoch + 1) / epochs) ** p``.
"""
from __future__ import annotations

import math

__all__ = ["AUX_SKIP_SCHEDULES", "aux_skip_beta", "confidence"]

AUX_SKIP_SCHEDULES = ("linear", "cosine")


def aux_skip_beta(epoch: int, epochs: int, beta0: float = 1.0, schedule: str = "linear") -> float:
    """The auxiliary skip weight of epoch ``epoch`` (0-based) of ``epochs``: ``beta0 * f(t)`` with
    ``t = epoch / (epochs - 1)`` and f(t) = 1 - t (linear) or (1 + cos(pi t)) / 2 (cosine), so epoch 0
    gets beta0 and the last epoch 0. A one-epoch search gets beta0."""
    if schedule not in AUX_SKIP_SCHEDULES:
        raise ValueError(f"unknown aux_skip_schedule {schedule!r}; choose one of {', '.join(AUX_SKIP_SCHEDULES)}")
    if not 0 <= epoch < epochs:
        raise ValueError(f"epoch {epoch} is outside 0..{epochs - 1}")
    if epochs == 1:
        return float(beta0)
    t = epoch / (epochs - 1)
    f = 1.0 - t if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * t))
    return float(beta0) * f


def confidence(epoch: int, epochs: int, power: float = 2.0) -> float:
    """B-DARTS's confidence of epoch ``epoch`` (0-based) of ``epochs``: ``((epoch + 1) / epochs) ** power``
    (1 at the last epoch; ``1 / epochs ** power`` at the first)."""
    if not 0 <= epoch < epochs:
        raise ValueError(f"epoch {epoch} is outside 0..{epochs - 1}")
    if not power >= 0:
        raise ValueError(f"the confidence power must be >= 0, got {power}")
    return ((epoch + 1) / epochs) ** power
