"""Partial-channel mixed op of PC-DARTS, fused (DESIGN.md section 2).

``y = edge_weight * channel_shuffle(cat([sum_i w[i] * op_outputs[i], bypass], 1), groups)``, written
straight to the shuffled positions of ``out`` (accumulated into it when given): no stacked copy, no cat,
no shuffle copy, no separate scale or node sum. An op output may be None (the ``none`` op: it
contributes nothing and costs nothing).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from fastnas.ops import _checks, _dispatch
from fastnas.ops.channel_shuffle import channel_shuffle_ref
from fastnas.ops.shuffle_mix import shuffle_mix


def partial_channel_mix_ref(op_outputs: Sequence[Optional[torch.Tensor]], weights: torch.Tensor,
                            bypass: Optional[torch.Tensor], groups: int, edge_weight=None,
                            out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The plain PyTorch formula (mul / add / cat / view / transpose / reshape); the ground truth.

    Shapes: op_outputs[i] (B, Cm, H, W) or None; weights (len(op_outputs),); bypass (B, Cb, H, W) or
    None; returns (B, Cm + Cb, H, W) (``out`` after ``out += y`` when given).
    """
    mixed = None
    for i, o in enumerate(op_outputs):
        if o is not None:
            term = weights[i] * o
            mixed = term if mixed is None else mixed + term
    if mixed is None:  # every op is `none`: the sampled channels are zero
        reference = bypass if bypass is not None else out
        cm = (out.shape[1] if out is not None else 0) - (bypass.shape[1] if bypass is not None else 0)
        mixed = reference.new_zeros((reference.shape[0], cm, reference.shape[2], reference.shape[3]))
    y = channel_shuffle_ref(torch.cat([mixed, bypass], 1) if bypass is not None else mixed, groups)
    if edge_weight is not None:
        y = edge_weight * y
    return y if out is None else out.add_(y)


def _validate(op_outputs, weights, bypass, groups, edge_weight, out):
    if not isinstance(op_outputs, (list, tuple)):
        raise TypeError(f"op_outputs must be a list or tuple of tensors (or None), got {type(op_outputs).__name__}")
    present = []
    for i, o in enumerate(op_outputs):
        if o is not None:
            present.append((i, _checks.floating_4d(o, f"op_outputs[{i}]")))
    if bypass is not None:
        _checks.floating_4d(bypass, "bypass")
    reference = present[0][1] if present else bypass if bypass is not None else out
    if reference is None or (not present and out is None):
        raise ValueError("partial_channel_mix needs at least one op output, or `out` to tell the channel count")
    if not isinstance(reference, torch.Tensor):
        raise TypeError(f"out must be a torch.Tensor, got {type(reference).__name__}")
    _checks.floating_4d(reference, "out")
    for i, o in present[1:]:
        if o.shape != present[0][1].shape:
            raise ValueError(f"op outputs must share one shape: op_outputs[{present[0][0]}] is "
                             f"{tuple(present[0][1].shape)} but op_outputs[{i}] is {tuple(o.shape)}")
    _checks.same_device_and_dtype(reference, "op_outputs", [(f"op_outputs[{i}]", o) for i, o in present]
                                  + [("bypass", bypass)])
    B, _, H, W = reference.shape
    cb = bypass.shape[1] if bypass is not None else 0
    if present:
        cm = present[0][1].shape[1]
        if bypass is not None and (bypass.shape[0], bypass.shape[2], bypass.shape[3]) != (B, H, W):
            raise ValueError(f"bypass must have shape ({B}, Cb, {H}, {W}) to match the op outputs, "
                             f"got {tuple(bypass.shape)}")
    else:
        cm = out.shape[1] - cb
        if cm < 0:
            raise ValueError(f"out has {out.shape[1]} channels, fewer than the bypass ({cb})")
    _checks.groups(groups, cm + cb, f"channels (op outputs {cm} + bypass {cb})")
    _checks.mixing_weights(weights, len(op_outputs), reference.device)
    edge_weight = _checks.edge_weight(edge_weight, reference.device, reference.dtype)
    inputs = [o for _, o in present] + [bypass, weights, edge_weight]
    _checks.out_tensor(out, (B, cm + cb, H, W), reference, inputs)
    return present, reference, cm, edge_weight


def partial_channel_mix(op_outputs: Sequence[Optional[torch.Tensor]], weights: torch.Tensor,
                        bypass: Optional[torch.Tensor], groups: int, edge_weight=None,
                        out: Optional[torch.Tensor] = None, backend: Optional[str] = None) -> torch.Tensor:
    """``out (+)= edge_weight * channel_shuffle(cat([sum_i weights[i] * op_outputs[i], bypass], 1), groups)``.

    Args:
        op_outputs: sequence of (B, Cm, H, W) tensors, or None for ops that contribute nothing.
        weights: (len(op_outputs),) mixing weights (e.g. softmax of the edge's alphas).
        bypass: (B, Cb, H, W) channels that skip the ops, or None (Cb = 0, e.g. K = 1).
        groups: the shuffle groups (the partial-channel factor K); Cm + Cb must be divisible by it.
        edge_weight: scalar scaling the result, or None: a tensor of one element (any shape, any float
            dtype; the result keeps the data's shape and dtype) or a Python number (taken in float64
            for float64 data, else float32).
        out: (B, Cm + Cb, H, W) accumulator updated in place (and returned), or None for a new tensor.
        backend: None (default: ``$FASTNAS_BACKEND`` when set, else automatic), 'auto', 'torch', 'cpu',
            'cuda' or 'triton'; see :mod:`fastnas.ops._dispatch`.

    Returns (B, Cm + Cb, H, W). Gradients flow to every op output, the weights, the bypass, the edge
    weight and the previous value of ``out``.
    """
    present, reference, cm, edge_weight = _validate(op_outputs, weights, bypass, groups, edge_weight, out)
    name = _dispatch.resolve(backend, reference.device, reference.dtype, n_ops=len(present))
    if name == "torch":
        return partial_channel_mix_ref(op_outputs, weights, bypass, groups, edge_weight, out)
    return shuffle_mix(name, [o for _, o in present], tuple(i for i, _ in present), weights, bypass, cm,
                       groups, edge_weight, out)
