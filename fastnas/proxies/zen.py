"""Zen-score (Lin et al., "Zen-NAS: A Zero-Shot NAS for High-Performance Image Recognition", ICCV 2021),
as NAS-Bench-Suite-Zero computes it (NASLib ``predictors/utils/pruners/measures/zen.py``, a copy of
Zen-NAS's ``compute_zen_score``):

1. Gaussian init: conv and linear weights ~ N(0, 1), their biases 0; BN/GroupNorm weight 1, bias 0;
2. ``x ~ N(0, 1)`` and ``eps ~ N(0, 1)`` of the images' shape (the images themselves are not read), in
   that order from torch's global RNG after the init;
3. the pre-GAP feature maps ``f(x)`` and ``f(x + gamma eps)`` (``gamma`` = ``mixup_gamma`` = 0.01) with
   BN in train mode; ``delta = mean over images of sum |f(x) - f(x + gamma eps)|`` (an L1 norm per
   image, as the code does, where the paper writes the Frobenius norm);
4. ``score = log(delta) + sum over BN layers of log sqrt(mean(running_var))``, the running variances as
   the two forwards left them (momentum updates from their state on entry: 1 for a fresh network);
5. repeated ``repeats`` times (NASLib: 1; Zen-NAS's paper: 32) and averaged; the running statistics are
   not reset between repeats, as in the published loop.

The pre-GAP feature map is the input of the global pooling: that of the model's module named
``global_pooling`` (NB201 and DARTS networks; NASLib hooks its NB201 graph's ``AdaptiveAvgPool2d`` input
the same way) if there is one, else of the last ``nn.AdaptiveAvgPool2d`` in ``model.modules()``.
BN layers without running statistics (``track_running_stats=False``) carry no running variance and add
nothing to step 4.

Degenerate networks: when the features do not depend on the input (all ``none`` edges: every cell
outputs 0), ``delta = 0`` and ``log(delta) = -inf``. The score then uses ``log`` of float64's smallest
normal number (-708.4) instead, so it is finite and below every network whose features respond to the
input (published NB201 Zen-scores lie around +30 to +110). Higher is better.
"""
from __future__ import annotations

import math


import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from fastnas.proxies._layers import check_images
from fastnas.proxies.activation import gaussian_init_
from fastnas.proxies.registry import register_proxy

__all__ = ["zen", "pre_gap_module", "bn_log_scale", "LOG_DELTA_FLOOR"]

# log of the smallest positive normal float64: the stand-in for log(0) of an input-independent network.
LOG_DELTA_FLOOR = math.log(torch.finfo(torch.float64).tiny)


def pre_gap_module(model: nn.Module) -> nn.Module:
    """The global pooling whose input is the pre-GAP feature map: the module named ``global_pooling``
    (at any depth), else the last ``nn.AdaptiveAvgPool2d``. Raises ValueError if there is neither."""
    pools = [m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] == "global_pooling"]
    if not pools:
        pools = [m for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    if not pools:
        raise ValueError(f"zen: {type(model).__name__} has no 'global_pooling' module and no "
                         f"nn.AdaptiveAvgPool2d: the pre-GAP feature map cannot be found")
    return pools[-1]


def bn_log_scale(model: nn.Module) -> float:
    """sum over BN layers with running statistics of ``log sqrt(mean(running_var))`` (float64)."""
    total = 0.0
    for m in model.modules():
        if isinstance(m, _BatchNorm) and m.running_var is not None:
            total += 0.5 * math.log(float(m.running_var.double().mean()))
    return total


def _pre_gap_features(model: nn.Module, pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input of ``pool`` during ``model(x)``, (B, C, H, W)."""
    seen = []
    handle = pool.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    try:
        model(x)
    finally:
        handle.remove()
    if len(seen) != 1:
        raise ValueError(f"zen: the global pooling ran {len(seen)} times in one forward, expected once")
    return seen[0]


@register_proxy("zen", higher_is_better=True, uses_labels=False, batch_size=64,
                paper="Lin et al. ICCV 2021, Zen-NAS (NAS-Bench-Suite-Zero's zen)")
def zen(model: nn.Module, images: torch.Tensor, labels=None, *, mixup_gamma: float = 1e-2,
        repeats: int = 1) -> float:
    """Zen-score of ``model`` for inputs shaped like ``images`` (B, C, H, W): only their shape, dtype and
    device are used (module docstring). Draws from torch's global RNG."""
    check_images("zen", images)
    if not 0 < mixup_gamma < math.inf:
        raise ValueError(f"zen: mixup_gamma must be a positive finite number, got {mixup_gamma}")
    if repeats < 1:
        raise ValueError(f"zen: repeats must be >= 1, got {repeats}")
    pool = pre_gap_module(model)
    model.train()
    scores = []
    with torch.no_grad():
        for _ in range(repeats):
            gaussian_init_(model)
            x = torch.randn(images.shape, dtype=images.dtype, device=images.device)
            eps = torch.randn(images.shape, dtype=images.dtype, device=images.device)
            f = _pre_gap_features(model, pool, x)
            f_mix = _pre_gap_features(model, pool, x + mixup_gamma * eps)
            delta = float((f - f_mix).abs().flatten(1).sum(1).mean(dtype=torch.float64))
            log_delta = math.log(delta) if delta > 0 else LOG_DELTA_FLOOR
            scores.append(log_delta + bn_log_scale(model))
    return sum(scores) / len(scores)
