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


def _installed_elsewhere() -> str:
    """A hint when the imported fastnas is a source tree while an installed copy has the extension.

    ``python -m fastnas ...`` run inside a checkout puts the checkout first on sys.path, so its
    ``fastnas/`` (no compiled module there after a non-editable install) shadows the installed package.
    """
    try:
        from importlib import metadata
        from pathlib import Path

        here = Path(__file__).resolve().parent
        # every fastnas distribution on sys.path (a checkout also carries a fastnas.egg-info of its own)
        for dist in metadata.distributions():
            if (dist.metadata["Name"] or "").lower() != "fastnas":
                continue
            for f in dist.files or ():
                parts = Path(str(f)).parts
                if len(parts) == 2 and parts[0] == "fastnas" and parts[1].startswith("_C"):
                    installed = Path(str(dist.locate_file(f))).resolve().parent
                    if installed != here and (installed / parts[1]).exists():
                        return (f"; note: this fastnas is imported from {here}, but the installed one at "
                                f"{installed} has the extension (`python -m` inside a checkout imports the "
                                f"checkout: run from another folder, or use the `fastnas` command)")
    except Exception:  # noqa: BLE001 - a hint only; never let it break the import
        return ""
    return ""


@functools.lru_cache(maxsize=None)
def load() -> Tuple[Optional[object], str]:
    """Returns ``(module, "")`` when ``fastnas._C`` is usable, else ``(None, reason)``."""
    try:
        from fastnas import _C  # noqa: WPS433 (import inside function: optional extension)
    except ImportError as exc:  # not built, or built against another torch (undefined symbols)
        return None, (f"fastnas._C could not be imported ({exc}); build it with: {BUILD_COMMAND}"
                      f"{_installed_elsewhere()}")
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
