"""Input validation shared by the fused ops.

Every check runs before anything is computed or written, so a rejected call leaves ``out`` untouched.
Errors name the problem: ``TypeError`` for wrong types and dtypes, ``ValueError`` for shapes, sizes and
divisibility, ``RuntimeError`` for tensors on different devices.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch


def tensor(value, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def floating_4d(value, name: str) -> torch.Tensor:
    tensor(value, name)
    if value.dim() != 4:
        raise ValueError(f"{name} must be 4-D (B, C, H, W), got shape {tuple(value.shape)}")
    if not value.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value


def groups(value, channels: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"groups must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"groups must be >= 1, got {value}")
    if channels % value != 0:
        raise ValueError(f"{what} ({channels}) is not divisible by groups ({value})")
    return value


def same_device_and_dtype(reference: torch.Tensor, ref_name: str, others: Sequence) -> None:
    """``others``: (name, tensor-or-None) pairs that must share ``reference``'s device and dtype."""
    for name, t in others:
        if t is None:
            continue
        if t.device != reference.device:
            raise RuntimeError(f"{name} is on {t.device} but {ref_name} is on {reference.device}: "
                               "all tensors must be on one device")
        if t.dtype != reference.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has dtype {reference.dtype}: "
                            "data tensors must share one dtype")


def mixing_weights(weights, count: int, device: torch.device, name: str = "weights") -> torch.Tensor:
    tensor(weights, name)
    if weights.dim() != 1 or weights.numel() != count:
        raise ValueError(f"{name} must have shape ({count},) (one weight per op output), "
                         f"got shape {tuple(weights.shape)}")
    if not weights.dtype.is_floating_point:
        raise TypeError(f"{name} must be floating-point, got dtype {weights.dtype}")
    if weights.device != device:
        raise RuntimeError(f"{name} is on {weights.device} but the data is on {device}")
    return weights


def edge_weight(value, device: torch.device, data_dtype: torch.dtype) -> Optional[torch.Tensor]:
    """A 0-d tensor: a Python number becomes one in the data's accumulation precision (float64 for
    float64 data, else float32), and a one-element tensor of any shape is viewed as 0-d, so that the
    result has the data's shape and dtype on every backend (a (1,)-shaped float64 factor would
    otherwise promote the reference's output to float64 while the fused kernels keep the data dtype)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        precision = torch.float64 if data_dtype == torch.float64 else torch.float32
        return torch.tensor(float(value), dtype=precision, device=device)
    tensor(value, "edge_weight")
    if value.numel() != 1:
        raise ValueError(f"edge_weight must hold one element, got shape {tuple(value.shape)}")
    if not value.dtype.is_floating_point:
        raise TypeError(f"edge_weight must be floating-point, got dtype {value.dtype}")
    if value.device != device:
        raise RuntimeError(f"edge_weight is on {value.device} but the data is on {device}")
    return value.reshape(())


def _storage_ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def out_tensor(out, shape, reference: torch.Tensor, inputs: Sequence) -> Optional[torch.Tensor]:
    """``out`` must have ``shape``, the data's device and dtype, and share no memory with the inputs."""
    if out is None:
        return None
    floating_4d(out, "out")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out must have shape {tuple(shape)}, got {tuple(out.shape)}")
    same_device_and_dtype(reference, "the inputs", [("out", out)])
    if torch.is_grad_enabled() and out.requires_grad:
        # the in-place update would fail only after the fused kernel had written into out
        if out.is_leaf:
            raise ValueError("out is a leaf tensor that requires grad; it cannot be accumulated into in place")
        if out._base is not None and out._base.is_leaf:
            raise ValueError("out is a view of a leaf tensor that requires grad; it cannot be accumulated "
                             "into in place")
    if out.numel() and any(t is not None and t.numel() and _storage_ptr(t) == _storage_ptr(out) for t in inputs):
        raise ValueError("out shares memory with an input; pass a separate accumulator")
    if any(st == 0 and n > 1 for st, n in zip(out.stride(), out.shape)):
        # Several elements at one address: every backend would race or refuse (torch and cpu raise, the
        # triton kernel would load-add-store the same address from several programs).
        raise ValueError(f"out has overlapping elements (stride 0 along a dimension of size > 1, e.g. an expanded "
                         f"tensor; strides {tuple(out.stride())}); it is written to, so pass a tensor of its own")
    return out
