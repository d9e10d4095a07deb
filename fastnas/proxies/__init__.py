"""Zero-cost proxies: score architectures without training.

    >>> import fastnas
    >>> table = fastnas.score(["|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"],
    ...                       proxies=["nwot", "reg_swap"], data="cifar10_sample", root="../shared/data")
    >>> table["nwot"]

One registry (:mod:`fastnas.proxies.registry`) holds every proxy with its paper's protocol and sign.
"""
from fastnas.proxies.registry import PROXIES, Proxy, available_proxies, get_proxy, register_proxy
from fastnas.proxies.score import (ProxyData, ScoreTable, arch_label, build_network, correlations, draws_of,
                                   images_needed, load_proxy_data, score, score_one)

# Importing the proxy modules registers them (in this order: the order of available_proxies()):
# swap, reg_swap, nwot | epsinas | synflow, snip, grad_norm, grasp, fisher, jacov | params, flops | zen.
from fastnas.proxies import activation, epsinas, gradient, structural, zen  # noqa: E402

PROXY_MODULES = (activation, epsinas, gradient, zen, structural)

__all__ = ["score", "score_one", "correlations", "ScoreTable", "ProxyData", "load_proxy_data", "build_network",
           "arch_label", "draws_of", "images_needed", "Proxy", "PROXIES", "register_proxy", "get_proxy",
           "available_proxies"]
