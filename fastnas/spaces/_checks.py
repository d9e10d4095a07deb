"""Input checks shared by the spaces' derivation functions (private: not part of fastnas.spaces)."""
from __future__ import annotations

import torch


def as_float64_tensor(values, name: str) -> torch.Tensor:
    """``values`` (a tensor, array or nested list of numbers) as a float64 CPU tensor; TypeError naming
    ``name`` for anything else (None, strings, ragged lists)."""
    if values is None or isinstance(values, (str, bytes)):
        raise TypeError(f"{name} must be a tensor or array of numbers, got {type(values).__name__} {values!r}")
    try:
        t = torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name} must be a tensor or array of numbers, got {type(values).__name__} "
                        f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not (t.dtype.is_floating_point or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    return t.detach().to("cpu", torch.float64)


def check_alphas_finite(a: torch.Tensor, name: str) -> None:
    """ValueError for NaN or +inf architecture parameters, or a row (edge) whose every op is -inf.
    -inf alone is legal: it marks an op pruned from the edge (``SearchNetwork.masked_alphas``)."""
    if torch.isnan(a).any():
        raise ValueError(f"{name} contain NaN")
    if (a == float("inf")).any():
        raise ValueError(f"{name} contain +inf: the argmax of an edge with an infinite weight is meaningless "
                         "(a diverged search?); only -inf, marking a pruned op, is accepted")
    dead = (a == float("-inf")).all(dim=-1).nonzero().flatten().tolist()
    if dead:
        raise ValueError(f"{name}: edge(s) {dead} have every op at -inf (all pruned): there is no op to derive")
