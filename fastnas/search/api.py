"""``fastnas.search(...)``: the one-call entry point of the search engine."""
from __future__ import annotations

import dataclasses
import difflib
from typing import Optional

from fastnas.search.config import ZERO_SHOT_METHODS, SearchConfig
from fastnas.search.engine import Searcher
from fastnas.search.result import SearchResult

__all__ = ["search"]

_FIELDS = tuple(f.name for f in dataclasses.fields(SearchConfig))


def search(config: Optional[SearchConfig] = None, /, **settings) -> SearchResult:
    """Runs a differentiable architecture search and returns a :class:`SearchResult`.

    Settings are the fields of :class:`SearchConfig`, named as on the PC-DARTS command line, e.g.::

        result = fastnas.search(space="darts", method="pc-darts", dataset="cifar10", data="~/data",
                                batch_size=256, learning_rate=0.1, arch_learning_rate=6e-4, epochs=50,
                                init_channels=16, layers=8, train_portion=0.5, partial_channels=4,
                                device="cuda", seed=2, out_dir="runs/pcdarts", resume=True)
        print(result.genotype)   # Genotype(normal=[...], normal_concat=[2, 3, 4, 5], reduce=[...], ...)

    ``space``: ``"darts"`` | ``"nb201"``. ``method``: ``"pc-darts"`` (default) | ``"darts"`` |
    ``"darts-2nd"`` | ``"darts-minus"`` | ``"drnas"`` | ``"msr-darts"`` | ``"b-darts"`` (DARTS space) |
    ``"mae"`` (unsupervised, on ``mae_base``) (one-shot; ``prune="reg_swap", keep=0.5`` prunes the
    supernet with zero-cost proxies first) | ``"swap-evolution"`` | ``"random"`` (zero-shot:
    architectures ranked by the proxy ``proxy``, nothing is trained). docs/methods.md describes each. ``dataset``: ``"cifar10"``, ``"cifar100"`` (python-pickle folders under ``data``;
    ``download=True`` fetches them), ``"cifar10_sample"`` (``data`` = the .npz or its folder), a ``.npz``
    path, ``"synthetic"``, an ``(images, labels)`` pair, an :class:`fastnas.data.ImageData` or a torch
    Dataset. ``config`` may be given instead of (or as the base for) the keywords.
    """
    unknown = [k for k in settings if k not in _FIELDS]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, _FIELDS, n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise TypeError(f"fastnas.search() got unknown settings {', '.join(hints)}; valid settings: "
                        f"{', '.join(_FIELDS)}")
    base = config if config is not None else SearchConfig()
    cfg = dataclasses.replace(base, **settings)
    if cfg.method in ZERO_SHOT_METHODS:
        from fastnas.search.zero_shot import ZeroShotSearcher

        return ZeroShotSearcher(cfg).run()
    return Searcher(cfg).run()
