"""Structural proxies: the size of a network, read from its modules, no training and no data values.

- ``params``: trainable parameters (``requires_grad``), in millions, as NAS-Bench-Suite-Zero reports them
  (its values for NB201 equal ``sum(p.numel() for p in model.parameters()) / 1e6`` exactly: BN affine
  parameters and biases included).
- ``flops``: in millions, for one forward of one image. Two conventions (the ``count`` setting):

  - ``count="nb201"`` (default): multiply-accumulates of the conv and linear layers only, as
    NAS-Bench-201 counts its ``flops`` column (AutoDL's ``compute_average_flops_cost`` sums the hooks of
    ``nn.Conv2d`` and ``nn.Linear`` alone; it also adds one per output element for a bias, 10 for the
    NB201 classifier, which a MAC count leaves out). A conv costs ``out elements x in-channels per group
    x kernel size``, a linear ``out elements x in_features``, read by forward hooks on every conv (1-3d,
    transposed too) and ``nn.Linear`` module (subclasses included), so any ``nn.Module`` is counted,
    whatever its forward does around them. Batch norm, ReLU, pooling, sums and biases are not counted,
    nor convolutions called functionally outside a module.
  - ``count="suite-zero"``: NAS-Bench-Suite-Zero's ``flops`` column, which is tensorwatch's
    ``ModelStats`` ``Flops``: the conv and linear MACs above plus one per output element for a conv bias,
    plus batch norm (its input elements, twice when affine), ReLU-family activations (input elements),
    pooling (output elements x kernel area) and adaptive pooling (per output cell, its window grown
    by one in each direction: an 8x8 -> 1x1 average costs 81 per channel, tensorwatch's formula). It
    reproduces every one of the 1,191 NB201 values of ``nb201_zc_cifar10_dev.csv`` exactly (tested);
    for ``|avg_pool_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|none~0|skip_connect~1|nor_conv_1x1~2|``
    49.415872 where the NB201 count is 47.10464. (tensorwatch keeps the last call of a module called
    twice; fastnas counts every call, the same on NB201 and DARTS networks, which call each module once.)

  The two rank NB201 archs alike (Spearman 0.98-0.99); the NB201 count correlates better with CIFAR-10
  test accuracy (0.800 / 0.783 against 0.777 / 0.743 on two draws of 100 archs, docs/proxies.md).

Both are higher-is-better, as their correlations with accuracy are reported.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from fastnas.proxies._layers import check_images, idle_parameter_ids
from fastnas.proxies.registry import register_proxy

__all__ = ["params", "flops", "count_parameters", "count_macs", "count_suite_zero_flops", "FLOPS_COUNTS"]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (shared parameters counted once), those of switched-off ops left out
    (:func:`fastnas.proxies._layers.idle_parameter_ids`)."""
    idle = idle_parameter_ids(model)
    return sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in idle)


def _conv_macs(m: _ConvNd, inputs, output: torch.Tensor) -> int:
    """MACs of one conv call for the whole batch: every output element of a conv sums
    ``in_channels / groups x kernel`` products; every *input* element of a transposed conv is spread
    over ``out_channels / groups x kernel`` outputs."""
    kernel = math.prod(m.kernel_size)
    if m.transposed:
        return inputs[0].numel() * (m.out_channels // m.groups) * kernel
    return output.numel() * (m.in_channels // m.groups) * kernel


def _count_per_image(model: nn.Module, images: torch.Tensor, counted: Tuple[type, ...],
                     cost: Callable[[nn.Module, tuple, torch.Tensor], int]) -> int:
    """Sum of ``cost(module, inputs, output)`` over every call of a module of the ``counted`` types in
    ``model(images)``, per image, images (B, C, H, W); a module called twice counts twice. Runs the
    forward in eval mode under ``no_grad``; ValueError when the model has no conv or linear module."""
    if not any(isinstance(m, (_ConvNd, nn.Linear)) for m in model.modules()):
        raise ValueError(f"flops: {type(model).__name__} has no conv or nn.Linear module to count")
    total: List[int] = [0]

    def hook(m, inputs, output):
        total[0] += cost(m, inputs, output)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, counted)]
    try:
        with torch.no_grad():
            model.eval()(images)    # eval: a BN over a 1-image batch of 1x1 maps would refuse train mode
    finally:
        for h in handles:
            h.remove()
    return total[0] // images.shape[0]


def _mac_cost(m: nn.Module, inputs, output: torch.Tensor) -> int:
    if isinstance(m, _ConvNd):
        return _conv_macs(m, inputs, output)
    return output.numel() * m.in_features        # nn.Linear


def count_macs(model: nn.Module, images: torch.Tensor) -> int:
    """Conv + linear multiply-accumulates of ``model(images)`` per image, images (B, C, H, W); a module
    called twice counts twice. Runs the forward in eval mode under ``no_grad``."""
    return _count_per_image(model, images, (_ConvNd, nn.Linear), _mac_cost)


def _adaptive_pool_window_sum(size_in: Sequence[int], size_out: Sequence[int]) -> int:
    """tensorwatch's adaptive-pool count for one channel: per output cell, its window (floor / ceil
    bounds, as adaptive pooling takes them) grown by one in each of the two directions."""
    (h, w), (oh, ow) = size_in, size_out
    rows = sum(math.ceil((i + 1) * h / oh) - math.floor(i * h / oh) + 1 for i in range(oh))
    cols = sum(math.ceil((j + 1) * w / ow) - math.floor(j * w / ow) + 1 for j in range(ow))
    return rows * cols


_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.PReLU, nn.ELU, nn.LeakyReLU)


def _suite_zero_cost(m: nn.Module, inputs, output: torch.Tensor) -> int:
    """One call of ``m`` for the whole batch, as tensorwatch's ``compute_flops`` counts it (0 for the
    module types it does not know)."""
    x = inputs[0]
    if isinstance(m, _ConvNd):
        bias = output.numel() if m.bias is not None else 0
        return _mac_cost(m, inputs, output) + bias
    if isinstance(m, nn.Linear):
        return _mac_cost(m, inputs, output)
    if isinstance(m, _BatchNorm):
        return x.numel() * (2 if m.affine else 1)
    if isinstance(m, _ACTIVATIONS):
        return x.numel()
    if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)):
        kernel = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * 2
        return output.numel() * math.prod(kernel)
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return x.shape[0] * x.shape[1] * _adaptive_pool_window_sum(x.shape[-2:], output.shape[-2:])
    return 0


def count_suite_zero_flops(model: nn.Module, images: torch.Tensor) -> int:
    """NAS-Bench-Suite-Zero's (tensorwatch's) operation count of ``model(images)`` per image, images
    (B, C, H, W): conv + linear MACs, conv biases, batch norm, ReLU-family activations and pooling
    (module docstring); a module called twice counts twice. Eval mode, ``no_grad``."""
    counted = (_ConvNd, nn.Linear, _BatchNorm, nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d,
               nn.AdaptiveMaxPool2d) + _ACTIVATIONS
    return _count_per_image(model, images, counted, _suite_zero_cost)


@register_proxy("params", higher_is_better=True, uses_labels=False, batch_size=1,
                paper="NAS-Bench-Suite-Zero (Krishnakumar et al. 2022), #params")
def params(model: nn.Module, images: Optional[torch.Tensor] = None, labels=None) -> float:
    """Trainable parameters of ``model``, in millions. ``images`` are not read."""
    return count_parameters(model) / 1e6


FLOPS_COUNTS = ("nb201", "suite-zero")


@register_proxy("flops", higher_is_better=True, uses_labels=False, batch_size=1,
                paper="NAS-Bench-201 (Dong & Yang 2020) flops: conv + linear multiply-accumulates")
def flops(model: nn.Module, images: torch.Tensor, labels=None, *, count: str = "nb201") -> float:
    """Operations of one forward of one image shaped like ``images[0]``, in millions, counted as
    ``count`` says (``"nb201"`` or ``"suite-zero"``; module docstring). Only the first image is run."""
    if count not in FLOPS_COUNTS:
        raise ValueError(f"flops: count must be one of {FLOPS_COUNTS}, got {count!r}")
    check_images("flops", images)
    counter = count_macs if count == "nb201" else count_suite_zero_flops
    return counter(model, images[:1]) / 1e6
