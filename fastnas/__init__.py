"""fastnas: kernel-optimized neural architecture search.

Importing fastnas never fails because a compiled extension is missing: ``python -m fastnas.info``
says which backends are built and which one each device uses.
"""
try:
    from importlib.metadata import version as _version

    __version__ = _version("fastnas")
except Exception:  # pragma: no cover - running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from fastnas import ops  # noqa: E402
from fastnas import search  # noqa: E402  (a callable module: fastnas.search(...))



def score(archs, proxies=None, **kwargs):
    """Zero-cost proxy scores of architectures: see :func:`fastnas.proxies.score` (imported on first use)."""
    from fastnas.proxies import score as _score

    return _score(archs, proxies, **kwargs)


__all__ = ["ops", "search", "score", "__version__"]
