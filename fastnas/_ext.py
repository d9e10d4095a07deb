"""Loading of the compiled extension ``fastnas._C``.

Importing fastnas never fails because the extension is missing or stale: this module records *why* it
is unusable, and the backends that need it report that reason (with the command that builds it) only
when they are asked for explicitly.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch

BUILD_COMMAND = "pip install --no-build-isolation .   (from a fastnas checkout, after installing torch)"


@functools.lru_cache(maxsize=None)
def load() -> Tuple[Optional[object], str]:
    """Returns ``(module, "")`` when ``fastnas._C`` is usable, else ``(None, reason)``."""
    try:
        from fastnas import _C  # noqa: WPS433 (import inside function: optional extension)
    except ImportError as exc:  # not built, or built against another torch (undefined symbols)
        return None, f"fastnas._C could not be imported ({exc}); build it with: {BUILD_COMMAND}"
    built_for = getattr(_C, "torch_version", "unknown")
    if built_for != torch.__version__:
        return None, (
            f"fastnas._C was compiled against torch {built_for} but torch {torch.__version__} is "
            f"running; rebuild it with: {BUILD_COMMAND}"
        )
    return _C, ""


def extension():
    """The extension module or None."""
    return load()[0]
