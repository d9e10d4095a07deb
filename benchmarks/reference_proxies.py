"""Per-architecture reference implementations of SWAP, regularised SWAP and NWOT, written the way the
papers' published code computes them. They are the baselines of benchmarks/bench_proxies.py and the
oracles of tests/test_proxies_activation.py.

* SWAP (github.com/pym1024/SWAP, ``src/metrics/swap.py`` + ``correlation.py``): a forward hook on every
  nn.ReLU stores the output of those with a 4-D input; after the pass the outputs are flattened per
  sample, ``torch.cat`` along units, ``torch.sign``, transposed to (units, samples) and counted with
  ``torch.unique(dim=0)``. The network is re-initialised with ``network_weight_gaussian_init`` before
  each of the repeats (global RNG, ``net.apply(init)``: see :func:`published_reinit`; ``reinit=`` swaps in
  fastnas's one-pass init so the tests can compare the two draw for draw) and the counts are averaged; regularised SWAP multiplies by
  ``exp(-(P - mu)**2 / sigma)``, P = parameters / 1e3.
* NWOT (github.com/BayesWatch/nas-without-training, v2 ``score_networks.py``; NASLib's ``nwot``): a
  forward hook on every nn.ReLU binarises its input, ``K += x @ x.t() + (1 - x) @ (1 - x.t())`` as
  numpy float64, and the score is ``np.linalg.slogdet(K)[1]`` (``-inf`` for a singular K). Before
  that forward the published loop runs ``get_batch_jacobian`` (a forward and a backward of the batch,
  whose backward hooks mark the ReLUs as visited), so one score costs two forwards and a backward;
  :func:`nwot_ref` does the same (with BN on batch statistics the extra pass does not change K).

``REFERENCE_PROXIES[name](model, images, labels) -> float`` with the same defaults as fastnas's
registered proxies (SWAP: 32 repeats; reg_swap: fastnas's mu and sigma), so both sides of a benchmark
score the same thing.
"""
from __future__ import annotations

from typing import Callable, Dict

import numpy as np
import torch
import torch.nn as nn

from fastnas.proxies.activation import REG_SWAP_MU, REG_SWAP_SIGMA

__all__ = ["REFERENCE_PROXIES", "swap_ref", "reg_swap_ref", "nwot_ref", "swap_count_ref", "network_weight_gaussian_init"]


def network_weight_gaussian_init(net: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight)
                if hasattr(m, "bias") and m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight)
                if hasattr(m, "bias") and m.bias is not None:
                    nn.init.zeros_(m.bias)
    return net


def count_parameters(model: nn.Module) -> float:
    return np.sum([np.prod(v.size()) for name, v in model.named_parameters() if "auxiliary" not in name]) / 1e3


def swap_count_ref(model: nn.Module, images: torch.Tensor) -> int:
    """One SWAP pass as the published code: store, cat, sign, transpose, unique(dim=0)."""
    features = []

    def hook(module, inputs, output):
        if isinstance(inputs, tuple) and len(inputs[0].size()) == 4:
            features.append(output.detach())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            model.forward(images)
            if not features:
                return 0
            activations = torch.cat([f.view(images.size(0), -1) for f in features], 1)
            activations = torch.sign(activations).T
            return torch.unique(activations, dim=0).size(0)
    finally:
        for h in handles:
            h.remove()


def published_reinit(model: nn.Module) -> None:
    """``network.apply(network_weight_gaussian_init)`` as correlation.py: apply() calls the init on every
    module and the init walks that module's whole subtree, so each weight is drawn once per ancestor
    (the root's draw, the last, is kept). Same N(0, 1) distribution as one pass, other draws."""
    model.apply(network_weight_gaussian_init)


def swap_ref(model, images, labels=None, repeats: int = 32, reinit: Callable = published_reinit) -> float:
    model.train()
    scores = []
    for _ in range(repeats):
        reinit(model)
        scores.append(swap_count_ref(model, images))
    return float(np.mean(scores))


def reg_swap_ref(model, images, labels=None, repeats: int = 32, mu: float = REG_SWAP_MU,
                 sigma: float = REG_SWAP_SIGMA, reinit: Callable = published_reinit) -> float:
    factor = torch.exp(-(torch.pow(torch.as_tensor(count_parameters(model)) - mu, 2) / sigma)).item()
    return swap_ref(model, images, labels, repeats, reinit) * factor


def _batch_jacobian(net, x):
    """nas-without-training's ``get_batch_jacobian``: d(sum of outputs)/d(input), one forward + backward."""
    net.zero_grad()
    x = x.clone().requires_grad_(True)
    y = net(x)
    y.backward(torch.ones_like(y))
    return x.grad.detach()


def nwot_ref(model, images, labels=None) -> float:
    batch_size = images.size(0)
    K = np.zeros((batch_size, batch_size))

    def counting_forward_hook(module, inp, out):
        nonlocal K
        inp = inp[0].view(inp[0].size(0), -1)
        x = (inp > 0).float()
        K = K + (x @ x.t()).cpu().numpy() + ((1.0 - x) @ (1.0 - x.t())).cpu().numpy()

    model.train()
    _batch_jacobian(model, images)  # score_networks.py: get_batch_jacobian(network, x, ...) first
    handles = [m.register_forward_hook(counting_forward_hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()
    return float(np.linalg.slogdet(K)[1])


REFERENCE_PROXIES: Dict[str, Callable[..., float]] = {
    "swap": swap_ref,
    "reg_swap": reg_swap_ref,
    "nwot": nwot_ref,
}
