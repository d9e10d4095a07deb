"""The proxy registry: one table of every zero-cost proxy fastnas knows, with its protocol and sign.

A proxy is a function ``fn(model, images, labels, **settings) -> float``:

- ``model``: a freshly built network (default PyTorch initialisation, on the scoring device, float32).
  The proxy owns it: it may re-initialise it, change its weights, switch BN modes or cast it (synflow
  works in float64), so the caller builds a new one per (architecture, proxy).
- ``images``: float32 (B, 3, H, W), normalised, on the model's device; ``B`` is the proxy's
  ``batch_size`` setting (the caller slices the batch it passes). ``labels``: int64 (B,) or None for
  proxies that read none.
- ``settings``: the keyword settings of the proxy's protocol (``defaults`` below), overridable by the user.
- returns a finite Python float; ``higher_is_better`` says which way is good.

``repeats``: how many draws :func:`fastnas.proxies.score_one` averages, each a freshly initialised network
on its own batch (draw 0 is the single-draw score). A proxy with a ``repeats`` setting of its own (SWAP
re-initialises inside one call, on one batch) is called once; for every other proxy ``repeats`` is a
setting the caller takes out before the call.

Registering::

    @register_proxy("nwot", higher_is_better=True, uses_labels=False, batch_size=128,
                    paper="Mellor et al. 2021, Neural Architecture Search without Training")
    def nwot(model, images, labels=None, *, bn_train=True): ...
"""
from __future__ import annotations

import difflib
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np

__all__ = ["Proxy", "PROXIES", "register_proxy", "get_proxy", "available_proxies"]


@dataclass(frozen=True)
class Proxy:
    """One registered proxy. ``defaults`` are the keyword settings of ``fn`` (its paper's protocol)."""

    name: str
    fn: Callable[..., float]
    higher_is_better: bool
    uses_labels: bool
    batch_size: int                      # images per call, the paper's protocol (0: needs no data)
    paper: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    # build_network options this proxy's protocol scores with (e.g. SWAP scores DARTS cells in a
    # 3-channel, 1-cell network); a caller's network_options override them.
    network: Mapping[str, Any] = field(default_factory=dict)
    repeats: int = 1                     # draws score_one averages (module docstring)

    def check_settings(self, settings: Mapping[str, Any]) -> None:
        """Names and types of setting overrides, checked against ``defaults`` before anything runs: a
        bool setting takes True/False only (the string 'false' would count as true), an int setting an
        integer (2.5 would be truncated), a float setting a real number, a str setting a str, a tuple
        setting a list or tuple. Settings whose default is None are the proxy's to check."""
        unknown = sorted(set(settings) - set(self.defaults))
        if unknown:
            raise TypeError(f"proxy {self.name!r} has no setting(s) {unknown}; its settings: "
                            f"{sorted(self.defaults) or 'none'}")
        for name, value in settings.items():
            expected = _expected_type(self.defaults[name])
            if expected is not None and not _is_a(value, expected):
                raise TypeError(f"proxy {self.name!r}: setting {name!r} must be {expected}, got "
                                f"{type(value).__name__} {value!r}")

    def __call__(self, model, images, labels=None, **settings) -> float:
        self.check_settings(settings)
        return float(self.fn(model, images, labels, **{**self.defaults, **settings}))


def _expected_type(default: Any) -> Optional[str]:
    """What a setting with this default accepts, in words (None: anything)."""
    if isinstance(default, bool):
        return "True or False"
    if isinstance(default, numbers.Integral):
        return "an integer"
    if isinstance(default, numbers.Real):
        return "a number"
    if isinstance(default, str):
        return "a string"
    if isinstance(default, (tuple, list)):
        return "a list or tuple"
    return None


def _is_a(value: Any, expected: str) -> bool:
    if expected == "True or False":
        return isinstance(value, (bool, np.bool_))
    if isinstance(value, (bool, np.bool_)):
        return False
    if expected == "an integer":
        return isinstance(value, numbers.Integral)
    if expected == "a number":
        return isinstance(value, numbers.Real)
    if expected == "a string":
        return isinstance(value, str)
    return isinstance(value, (tuple, list))


PROXIES: Dict[str, Proxy] = {}


def _keyword_defaults(fn: Callable) -> Dict[str, Any]:
    import inspect

    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty}


def register_proxy(name: str, *, higher_is_better: bool, uses_labels: bool, batch_size: int, paper: str = "",
                   network: Optional[Mapping[str, Any]] = None, repeats: int = 1):
    """Decorator: registers ``fn`` under ``name``; its keyword-only arguments are the settings."""

    def wrap(fn: Callable[..., float]) -> Callable[..., float]:
        if name in PROXIES:
            raise ValueError(f"proxy {name!r} is registered twice")
        PROXIES[name] = Proxy(name, fn, higher_is_better, uses_labels, batch_size, paper, _keyword_defaults(fn),
                              dict(network or {}), repeats)
        return fn

    return wrap


def get_proxy(name: str) -> Proxy:
    """The registered proxy ``name``; an unknown name raises ValueError with the closest known names."""
    if name not in PROXIES:
        close = difflib.get_close_matches(name, list(PROXIES), n=2)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        raise ValueError(f"unknown proxy {name!r}{hint}; known proxies: {', '.join(available_proxies())}")
    return PROXIES[name]


def available_proxies() -> List[str]:
    return list(PROXIES)
