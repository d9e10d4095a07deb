"""The differentiable search engine: the step, the loop, the run folder, and :func:`fastnas.search`.

This package is itself callable: ``fastnas.search(...)`` runs :func:`fastnas.search.api.search`, while
``from fastnas.search import SearchStep`` still reaches the parts. (A function named ``search`` in
``fastnas/__init__.py`` would shadow this package's name on the ``fastnas`` module instead.)
"""
import sys as _sys
import types as _types

from fastnas.search.config import METHODS, SPACES, SearchConfig
from fastnas.search.engine import Searcher, count_skips, run_search
from fastnas.search.result import SearchResult
from fastnas.search.run_dir import RunDir
from fastnas.search.step import AMP_DTYPES, SearchStep, classification_loss
from fastnas.search.api import search

__all__ = ["search", "SearchConfig", "SearchResult", "Searcher", "SearchStep", "RunDir", "run_search",
           "classification_loss", "count_skips", "METHODS", "SPACES", "AMP_DTYPES"]


class _CallableModule(_types.ModuleType):
    def __call__(self, *args, **kwargs):
        return search(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
