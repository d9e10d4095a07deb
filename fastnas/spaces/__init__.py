"""Search spaces as pure descriptions: op lists, edge layouts, genotypes / arch strings, derivation.

Nothing here imports a network (``fastnas.nn``), the search loop or the proxies: those depend on the
spaces, never the reverse (DESIGN.md section 1).
"""
from fastnas.spaces import darts as _darts, nb201 as _nb201
from fastnas.spaces.darts import *  # noqa: F401,F403  (the names listed in darts.__all__)
from fastnas.spaces.nb201 import *  # noqa: F401,F403  (the names listed in nb201.__all__)

__all__ = _darts.__all__ + _nb201.__all__
