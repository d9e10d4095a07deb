"""Candidate operations of the DARTS and NAS-Bench-201 spaces (DARTS / PC-DARTS / NB201 code layouts).

Module and parameter names follow the reference code (``op.1.weight``, ``conv_1``, ``bn``, ...) so that
state dicts map one to one. Every op whose DARTS definition starts with a ReLU (:class:`ReLUConvBN`,
:class:`DilConv`, :class:`SepConv`, :class:`FactorizedReduce`) is a :class:`ReLUFirst`: its forward takes
``pre_relu_applied=True`` to skip that leading ReLU, so a mixed op can compute ``relu(x)`` once and feed
every conv op of the edge (the ReLU module stays in place: names and ordering are unchanged).

Shapes: every op maps (B, C_in, H, W) to (B, C_out, H / stride, W / stride).
"""
from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.nn as nn

__all__ = [
    "BatchNorm2d", "ReLUFirst", "ReLUConvBN", "DilConv", "SepConv", "Identity", "Zero", "FactorizedReduce",
    "OPS", "search_op", "NB201ReLUConvBN", "NB201Pooling", "ResNetBasicblock", "NB201_OPS", "nb201_op",
]


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same parameters, buffers and results) that runs narrow channels_last inputs in
    NCHW.

    On the CPU, torch's channels_last batch norm is slow for very few channels: forward + backward of
    (32, 4, 32, 32) measured 1.18 ms channels_last against 0.44 ms for copy to NCHW, batch norm, copy back
    (2 cores, torch 2.13); at 8 channels the two were even (0.29 ms) and at 16 the copies lose (0.09
    vs 0.18 ms). PC-DARTS ops see C // K channels, 4 in the first cells (C=16, K=4), so the DARTS
    supernet's step runs ~220 such batch norms per pass. Elsewhere the input goes through unchanged.
    """

    NCHW_MAX_CHANNELS = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dim() == 4 and x.device.type == "cpu" and x.shape[1] <= self.NCHW_MAX_CHANNELS
                and _is_strictly_channels_last(x)):
            return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return super().forward(x)


def _is_strictly_channels_last(x: torch.Tensor) -> bool:
    """channels_last and not also contiguous. False inside ``torch.func.vmap`` (SWAP's batched repeats),
    where a batched tensor's memory format cannot be queried."""
    try:
        return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    except RuntimeError:
        return False


class ReLUFirst(nn.Module):
    """An op whose first layer is ``self.op[0] = ReLU``; ``forward(x, pre_relu_applied=True)`` skips it."""

    def forward(self, x: torch.Tensor, pre_relu_applied: bool = False) -> torch.Tensor:
        if not pre_relu_applied:
            return self.op(x)
        for i, m in enumerate(self.op):
            if i:
                x = m(x)
        return x


class ReLUConvBN(ReLUFirst):
    """ReLU -> Conv2d(k, stride, padding, bias=False) -> BatchNorm2d (DARTS ``ReLUConvBN``)."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            BatchNorm2d(C_out, affine=affine),
        )


class DilConv(ReLUFirst):
    """ReLU -> depthwise dilated conv -> pointwise conv -> BN (DARTS ``DilConv``)."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, dilation=dilation, groups=C_in,
                      bias=False),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=False),
            BatchNorm2d(C_out, affine=affine),
        )


class SepConv(ReLUFirst):
    """Two stacked (ReLU -> depthwise -> pointwise -> BN), the first with the stride (DARTS ``SepConv``)."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, kernel_size=1, padding=0, bias=False),
            BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=1, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=False),
            BatchNorm2d(C_out, affine=affine),
        )


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    """``none``: zeros of the output shape. Mixed ops never call it (they pass None to the fused op);
    it exists for discrete networks and for parity with the reference module lists."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(ReLUFirst):
    """ReLU -> two 1x1 stride-2 convs (the second shifted by one pixel), concatenated -> BN."""

    def __init__(self, C_in, C_out, affine=True):
        super().__init__()
        assert C_out % 2 == 0, "FactorizedReduce needs an even C_out"
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = BatchNorm2d(C_out, affine=affine)

    def forward(self, x, pre_relu_applied: bool = False):
        if not pre_relu_applied:
            x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


# The DARTS op table (DARTS operations.py), ``OPS[name](C, stride, affine)``.
OPS: Dict[str, Callable[[int, int, bool], nn.Module]] = {
    "none": lambda C, stride, affine: Zero(stride),
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "skip_connect": lambda C, stride, affine: Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine=affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine=affine),
    "sep_conv_7x7": lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine=affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine=affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine=affine),
    "conv_7x1_1x7": lambda C, stride, affine: nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
        nn.Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
        BatchNorm2d(C, affine=affine),
    ),
}


def search_op(primitive: str, C: int, stride: int, pool_bn: bool = True) -> nn.Module:
    """A search-time candidate op as PC-DARTS's ``MixedOp`` builds it: ``affine=False``, and pooling
    followed by ``BatchNorm2d(C, affine=False)`` (module ``Sequential(pool, bn)``); ``pool_bn=False``:
    the bare pooling, as DrNAS's ``MixedOp``."""
    if primitive not in OPS:
        raise ValueError(f"unknown DARTS op {primitive!r}; known ops: {sorted(OPS)}")
    op = OPS[primitive](C, stride, False)
    if "pool" in primitive and pool_bn:
        op = nn.Sequential(op, BatchNorm2d(C, affine=False))
    return op


# --------------------------------------------------------------------------------------------------
# NAS-Bench-201 (AutoDL-Projects cell_operations.py)
# --------------------------------------------------------------------------------------------------
class NB201ReLUConvBN(ReLUFirst):
    """ReLU -> Conv2d(bias = not affine) -> BN, as NAS-Bench-201's ``ReLUConvBN``."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation=1, affine=True, track_running_stats=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=not affine),
            BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats),
        )


class NB201Pooling(nn.Module):
    """3x3 average pooling (stride 1 or 2), preceded by a 1x1 ReLUConvBN when C_in != C_out."""

    def __init__(self, C_in, C_out, stride, affine=True, track_running_stats=True):
        super().__init__()
        self.preprocess = None if C_in == C_out else NB201ReLUConvBN(C_in, C_out, 1, 1, 0, 1, affine,
                                                                      track_running_stats)
        self.op = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)

    def forward(self, x):
        return self.op(x if self.preprocess is None else self.preprocess(x))


class ResNetBasicblock(nn.Module):
    """The residual block between NB201 stages: two 3x3 ReLUConvBN, shortcut avgpool + 1x1 conv."""

    def __init__(self, inplanes, planes, stride, affine=True):
        super().__init__()
        assert stride in (1, 2), f"invalid stride {stride}"
        self.conv_a = NB201ReLUConvBN(inplanes, planes, 3, stride, 1, 1, affine)
        self.conv_b = NB201ReLUConvBN(planes, planes, 3, 1, 1, 1, affine)
        if stride == 2:
            self.downsample = nn.Sequential(
                nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
                nn.Conv2d(inplanes, planes, kernel_size=1, stride=1, padding=0, bias=False),
            )
        elif inplanes != planes:
            self.downsample = NB201ReLUConvBN(inplanes, planes, 1, 1, 0, 1, affine)
        else:
            self.downsample = None
        self.in_dim, self.out_dim, self.stride = inplanes, planes, stride

    def forward(self, x):
        y = self.conv_b(self.conv_a(x))
        return (x if self.downsample is None else self.downsample(x)) + y


def _nb201_skip(C_in, C_out, stride, affine, track):
    if stride == 1 and C_in == C_out:
        return Identity()
    return FactorizedReduce(C_in, C_out, affine=affine)


# ``NB201_OPS[name](C_in, C_out, stride, affine, track_running_stats)``.
NB201_OPS: Dict[str, Callable[..., nn.Module]] = {
    "none": lambda C_in, C_out, stride, affine, track: Zero(stride),
    "skip_connect": _nb201_skip,
    "nor_conv_1x1": lambda C_in, C_out, stride, affine, track: NB201ReLUConvBN(C_in, C_out, 1, stride, 0, 1,
                                                                                affine, track),
    "nor_conv_3x3": lambda C_in, C_out, stride, affine, track: NB201ReLUConvBN(C_in, C_out, 3, stride, 1, 1,
                                                                                affine, track),
    "avg_pool_3x3": lambda C_in, C_out, stride, affine, track: NB201Pooling(C_in, C_out, stride, affine, track),
}


def nb201_op(primitive: str, C: int, stride: int = 1, affine: bool = False, track_running_stats: bool = False):
    """An NB201 candidate op on C channels (search defaults: no affine BN, no running stats)."""
    if primitive not in NB201_OPS:
        raise ValueError(f"unknown NB201 op {primitive!r}; known ops: {sorted(NB201_OPS)}")
    return NB201_OPS[primitive](C, C, stride, affine, track_running_stats)
