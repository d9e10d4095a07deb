"""Fused PC-DARTS ops with interchangeable backends (torch reference, C++ cpu, Triton, CUDA).

>>> y = partial_channel_mix(op_outputs, softmax(alpha), x[:, C // K:], groups=K)
"""
from fastnas.ops._dispatch import BackendUnavailableError, available_backends, backend_names, resolve
from fastnas.ops.channel_shuffle import ChannelShuffle, channel_shuffle, channel_shuffle_ref
from fastnas.ops.edge_normalize import edge_normalize, edge_normalize_ref
from fastnas.ops.partial_channel_mix import partial_channel_mix, partial_channel_mix_ref

__all__ = [
    "BackendUnavailableError", "available_backends", "backend_names", "resolve",
    "ChannelShuffle", "channel_shuffle", "channel_shuffle_ref",
    "edge_normalize", "edge_normalize_ref",
    "partial_channel_mix", "partial_channel_mix_ref",
]
