"""Channel shuffle (ShuffleNet / PC-DARTS), fused: one gather pass forward, the inverse gather backward.

Output channel ``j * g + r`` is input channel ``r * (C // g) + j``. It runs on the shared shuffle-mix
kernels (no op outputs, the whole input as the bypass).
"""
from __future__ import annotations

from typing import Optional

import torch

from fastnas.ops import _checks, _dispatch
from fastnas.ops.shuffle_mix import accumulation_dtype, shuffle_mix


def channel_shuffle_ref(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W): ``x.view(B, g, C // g, H, W).transpose(1, 2).reshape(B, C, H, W)``."""
    B, C, H, W = x.shape
    return x.reshape(B, groups, C // groups, H, W).transpose(1, 2).reshape(B, C, H, W)


def channel_shuffle(x: torch.Tensor, groups: int, backend: Optional[str] = None) -> torch.Tensor:
    """Shuffles the channels of ``x`` (B, C, H, W) in ``groups`` groups; C must be divisible by groups."""
    _checks.floating_4d(x, "x")
    _checks.groups(groups, x.shape[1], "channels of x")
    name = _dispatch.resolve(backend, x.device, x.dtype, op="channel_shuffle")
    if name == "torch":
        return channel_shuffle_ref(x, groups)
    no_weights = torch.empty(0, dtype=accumulation_dtype(x.dtype), device=x.device)
    return shuffle_mix(name, [], (), no_weights, x, 0, groups, None, None)


class ChannelShuffle(torch.nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
