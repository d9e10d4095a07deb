"""The one dispatch point: which backend runs a fused op.

Order of precedence: the ``backend=`` argument, then the ``FASTNAS_BACKEND`` environment variable, then
an automatic choice by device and dtype. An explicit choice (argument or variable) that cannot run
raises :class:`BackendUnavailableError` saying why and how to get it; the automatic choice falls back
quietly to the next backend and finally to ``torch`` (the pure-PyTorch reference, always there).
"""
from __future__ import annotations

import os
from typing import Dict, List

import torch

from fastnas.ops.backends import BACKENDS, Backend

ENV_VAR = "FASTNAS_BACKEND"

# Automatic preference per device type. On CUDA the hand-written CUDA kernels come first
# (no JIT warm-up, lowest launch overhead); Triton is the fallback when the extension was built
# without CUDA.
AUTO_ORDER: Dict[str, List[str]] = {
    "cpu": ["cpu", "torch"],
    "cuda": ["cuda", "triton", "torch"],
}


# Per-op exceptions to AUTO_ORDER, from measurements. channel_shuffle alone is one memory-bound copy,
# which aten's strided copy already does at full speed on the CPU; the fused cpu backend only adds
# per-call overhead there: 0.63x fwd, 0.79x fwd+bwd of the plain formula at B=64, C=64, 16x16
# (results/ops_cpu.md). It stays available with backend="cpu".
AUTO_ORDER_BY_OP: Dict[tuple, List[str]] = {
    ("channel_shuffle", "cpu"): ["torch"],
}


class BackendUnavailableError(ValueError, RuntimeError):
    """An explicitly requested backend cannot run the call. A ValueError (a setting the caller chose: the
    command line exits 2 with the message) and, as before, a RuntimeError."""


def backend_names() -> List[str]:
    return list(BACKENDS)


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown fastnas backend {name!r}; choose one of {sorted(BACKENDS)} or 'auto'"
        ) from None


def available_backends(device="cpu", dtype: torch.dtype = torch.float32) -> List[str]:
    """Backends that can run a call on ``device`` with data of ``dtype``, best first."""
    device = torch.device(device)
    names = AUTO_ORDER.get(device.type, []) + [n for n in BACKENDS if n not in AUTO_ORDER.get(device.type, [])]
    return [n for n in names if not BACKENDS[n].why_not(device, dtype)]


def resolve(requested, device: torch.device, dtype: torch.dtype, op: str = "", n_ops: int = 0) -> str:
    """Name of the backend that runs ``op`` on ``device``/``dtype`` mixing ``n_ops`` tensors (see the module
    docstring)."""
    name = requested if requested is not None else os.environ.get(ENV_VAR, "auto")
    name = name.strip().lower() or "auto"
    if name == "auto":
        order = AUTO_ORDER_BY_OP.get((op, device.type)) or AUTO_ORDER.get(device.type, [])
        for candidate in order:
            if not BACKENDS[candidate].why_not(device, dtype, n_ops):
                return candidate
        return "torch"
    reason = get_backend(name).why_not(device, dtype, n_ops)
    if reason:
        source = "backend=" if requested is not None else f"{ENV_VAR}="
        raise BackendUnavailableError(f"fastnas backend {name!r} (from {source}{name}) cannot run here: {reason}")
    return name
