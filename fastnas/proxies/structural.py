"""Structural proxies: the size of a network, read from its modules, no training and no data values.

- ``params``: trainable parameters (``requires_grad``), in millions, as NAS-Bench-Suite-Zero reports them
  (its values for NB201 equal ``sum(p.numel() for p in model.parameters()) / 1e6`` exactly: BN affine
  parameters and biases included).
- ``flops``: multiply-accumulates of one forward on one image, in millions, of the conv and linear
  layers only, as NAS-Bench-201 counts its ``flops`` column (AutoDL's ``compute_average_flops_cost`` sums
  the hooks of ``nn.Conv2d`` and ``nn.Linear`` alone; it also adds one per output element for a bias, 10
  for the NB201 classifier, which a MAC count leaves out). A conv costs ``out elements x in-channels per
  group x kernel size``, a linear ``out elements x in_features``, read by forward hooks on every conv
  (1-3d, transposed too) and ``nn.Linear`` module (subclasses included), so any ``nn.Module`` is
  counted, whatever its forward does around them. Batch norm, ReLU, pooling, sums and biases are not
  counted, nor convolutions called functionally outside a module.
  NAS-Bench-Suite-Zero's ``flops`` (tensorwatch's ModelStats) also counts BN, ReLU and pooling: for
  ``|avg_pool_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|none~0|skip_connect~1|nor_conv_1x1~2|`` it
  reports 49.415872 where the conv + linear count is 47.10464; the ranks agree (Spearman 0.99+, see
  tests/test_proxies_structural.py).

Both are higher-is-better, as their correlations with accuracy are reported.
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch
import torch.nn as nn
from torch.nn.modules.conv import _ConvNd

from fastnas.proxies._layers import check_images
from fastnas.proxies.registry import register_proxy

__all__ = ["params", "flops", "count_parameters", "count_macs"]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _conv_macs(m: _ConvNd, inputs, output: torch.Tensor) -> int:
    """MACs of one conv call for the whole batch: every output element of a conv sums
    ``in_channels / groups x kernel`` products; every *input* element of a transposed conv is spread
    over ``out_channels / groups x kernel`` outputs."""
    kernel = math.prod(m.kernel_size)
    if m.transposed:
        return inputs[0].numel() * (m.out_channels // m.groups) * kernel
    return output.numel() * (m.in_channels // m.groups) * kernel


def count_macs(model: nn.Module, images: torch.Tensor) -> int:
    """Conv + linear multiply-accumulates of ``model(images)`` per image, images (B, C, H, W); a module
    called twice counts twice. Runs the forward in eval mode under ``no_grad``."""
    total: List[int] = [0]

    def conv_hook(m, inputs, output):
        total[0] += _conv_macs(m, inputs, output)

    def linear_hook(m, inputs, output):
        total[0] += output.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, _ConvNd):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    if not handles:
        raise ValueError(f"flops: {type(model).__name__} has no conv or nn.Linear module to count")
    try:
        with torch.no_grad():
            model.eval()(images)    # eval: a BN over a 1-image batch of 1x1 maps would refuse train mode
    finally:
        for h in handles:
            h.remove()
    return total[0] // images.shape[0]


@register_proxy("params", higher_is_better=True, uses_labels=False, batch_size=1,
                paper="NAS-Bench-Suite-Zero (Krishnakumar et al. 2022), #params")
def params(model: nn.Module, images: Optional[torch.Tensor] = None, labels=None) -> float:
    """Trainable parameters of ``model``, in millions. ``images`` are not read."""
    return count_parameters(model) / 1e6


@register_proxy("flops", higher_is_better=True, uses_labels=False, batch_size=1,
                paper="NAS-Bench-201 (Dong & Yang 2020) flops: conv + linear multiply-accumulates")
def flops(model: nn.Module, images: torch.Tensor, labels=None) -> float:
    """Conv + linear multiply-accumulates of one forward of one image shaped like ``images[0]``, in
    millions (module docstring). Only the first image is run."""
    check_images("flops", images)
    return count_macs(model, images[:1]) / 1e6
