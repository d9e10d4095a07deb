"""Device strings as the user gives them (``--device``, ``device=``), checked once, with errors that name them.

:func:`resolve_device` is the one place that turns a device setting into a :class:`torch.device`:
``None`` picks cuda when torch sees a GPU, else cpu; ``"cpu"``, ``"cuda"`` and ``"cuda:N"`` (or a
``torch.device`` of those) are accepted; anything else (an unknown type such as ``"tpu"`` or ``"meta"``,
a malformed index such as ``"cuda:x"``, cuda without a GPU, an index past the last GPU, a value that is
not a string) raises ``ValueError`` / ``TypeError`` naming the setting and the accepted forms, instead of
torch's RuntimeError from deep inside the first tensor operation.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

__all__ = ["resolve_device", "ACCEPTED_DEVICES"]

ACCEPTED_DEVICES = "'cpu', 'cuda' or 'cuda:N'"


def resolve_device(device: Optional[Union[str, torch.device]], name: str = "device") -> torch.device:
    """``device`` (None: cuda when available, else cpu) as a torch.device that exists here.

    Raises ``TypeError`` when ``device`` is not a string / torch.device / None, ``ValueError`` naming
    ``name`` and the value otherwise (unknown device type, malformed string, no CUDA, index too large).
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"{name} must be a string such as {ACCEPTED_DEVICES} (or None for automatic), got "
                        f"{type(device).__name__} {device!r}")
    try:
        dev = torch.device(device.strip() if isinstance(device, str) else device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name} {device!r} is not a device: use {ACCEPTED_DEVICES}") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ValueError(f"{name} {device!r}: fastnas runs on {ACCEPTED_DEVICES}, not {dev.type!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"{name} {device!r}: no CUDA GPU is visible (torch {torch.__version__} sees no CUDA "
                         f"device); use {name}='cpu'")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{name} {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible "
                         f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    return dev
