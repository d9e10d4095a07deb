"""Spectral normalisation of a convolution as an operator (MSR-DARTS's candidate convs).

MSR-DARTS's code (``machida-k-3136/msrdarts``, ``operations_spectral_norm.py``) wraps every conv of its
candidate ops so that, at every training forward, the weight is divided by the largest singular value
of the conv *as an operator* on its input (Gouk et al. 2018; the invertible-ResNet formulation), found
by power iteration with the conv and its transpose: ``W / (sigma + 1e-5)``, 5 iterations, coefficient 1.
That is not :func:`torch.nn.utils.parametrizations.spectral_norm`, which normalises the reshaped
``(c_out, c_in k k)`` weight matrix: for a k x k conv the operator's norm differs from it.

Here it is a parametrization (:mod:`torch.nn.utils.parametrize`): the vectors ``u`` (output) and ``v``
(input) are buffers, so they are checkpointed with the model and a resumed search continues the same
power iteration. They advance only in training forwards with grad enabled (a forward under
``no_grad``, e.g. reading the weight to take its stable rank, or an eval forward, uses them as they are).
The authors redraw ``u`` and ``v`` at random before every forward of a grouped (depthwise) conv; here they
persist for every conv, so the estimate converges instead of restarting (a documented difference).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

__all__ = ["OperatorSpectralNorm", "operator_spectral_norm"]


def _pair(v) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class OperatorSpectralNorm(nn.Module):
    """Parametrization ``W -> W / (sigma(W) + eps_scale)`` of a Conv2d's weight, sigma the largest singular
    value of the conv as an operator on inputs of shape ``input_shape`` = (C_in, H, W) (zero padding,
    as the network runs it), estimated by ``n_power_iterations`` steps of power iteration per training
    forward."""

    def __init__(self, conv: nn.Conv2d, input_shape: Sequence[int], n_power_iterations: int = 5,
                 eps: float = 1e-12, eps_scale: float = 1e-5):
        super().__init__()
        if not isinstance(conv, nn.Conv2d) or isinstance(conv.padding, str):
            raise TypeError(f"OperatorSpectralNorm takes an nn.Conv2d with numeric padding, got {conv!r}")
        c, h, w = (int(v) for v in input_shape)
        if c != conv.in_channels:
            raise ValueError(f"input_shape has {c} channels, the conv takes {conv.in_channels}")
        if n_power_iterations < 1:
            raise ValueError(f"n_power_iterations must be >= 1, got {n_power_iterations}")
        self.stride, self.padding = _pair(conv.stride), _pair(conv.padding)
        self.dilation, self.groups = _pair(conv.dilation), conv.groups
        self.n_power_iterations, self.eps, self.eps_scale = n_power_iterations, eps, eps_scale
        self.input_shape = (1, c, h, w)
        k = conv.weight.shape[-2:]
        out_hw = [(n + 2 * p - d * (kk - 1) - 1) // s + 1
                  for n, p, d, kk, s in zip((h, w), self.padding, self.dilation, k, self.stride)]
        if min(out_hw) < 1:
            raise ValueError(f"a {h}x{w} input is too small for the conv {conv}")
        self.output_shape = (1, conv.out_channels, *out_hw)
        # conv_transpose2d must give back the input's size exactly
        self.output_padding = tuple(n - ((o - 1) * s - 2 * p + d * (kk - 1) + 1)
                                    for n, o, s, p, d, kk in zip((h, w), out_hw, self.stride, self.padding,
                                                                 self.dilation, k))
        weight = conv.weight.detach()
        self.register_buffer("u", F.normalize(torch.randn(self.output_shape, device=weight.device,
                                                          dtype=weight.dtype).flatten(), dim=0, eps=eps))
        self.register_buffer("v", F.normalize(torch.randn(self.input_shape, device=weight.device,
                                                          dtype=weight.dtype).flatten(), dim=0, eps=eps))

    def _conv(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x.view(self.input_shape), weight, None, self.stride, self.padding, self.dilation, self.groups)

    def _conv_t(self, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(y.view(self.output_shape), weight, None, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with torch.autocast(weight.device.type, enabled=False):
            if self.training and torch.is_grad_enabled():
                with torch.no_grad():
                    u, v = self.u, self.v
                    for _ in range(self.n_power_iterations):
                        v = F.normalize(self._conv_t(u, weight).flatten(), dim=0, eps=self.eps)
                        u = F.normalize(self._conv(v, weight).flatten(), dim=0, eps=self.eps)
                    self.u.copy_(u)
                    self.v.copy_(v)
            sigma = torch.dot(self.u, self._conv(self.v, weight).flatten())
            return weight / (sigma + self.eps_scale)

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape[1:]}, n_power_iterations={self.n_power_iterations}"


def operator_spectral_norm(conv: nn.Conv2d, input_shape: Sequence[int], n_power_iterations: int = 5) -> nn.Conv2d:
    """Registers :class:`OperatorSpectralNorm` on ``conv.weight`` (in place); returns ``conv``."""
    parametrize.register_parametrization(conv, "weight", OperatorSpectralNorm(conv, input_shape, n_power_iterations))
    return conv
