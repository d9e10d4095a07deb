"""Shared plumbing of the gradient-based proxies: input checks, the scored layers, the loss, BN bypass.

The zero-cost-nas measures (Abdelfattah et al. 2021) define every per-weight metric over the weights of
the ``nn.Conv2d`` and ``nn.Linear`` modules (subclasses included) and sum it into one number; BN
parameters, biases and every other parameter are left out.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["logits_of", "scored_layers", "check_images", "check_labels", "cross_entropy", "bypass_batchnorm",
           "sum64", "idle_parameter_ids"]


def logits_of(output) -> torch.Tensor:
    """The logits of a forward: the output itself, or its first element for ``(logits, aux)`` networks."""
    return output[0] if isinstance(output, (tuple, list)) else output


def idle_parameter_ids(model: nn.Module) -> set:
    """``id``s of the parameters of modules that are built but switched off: every module that has an
    ``idle_modules()`` method (a supernet's mixed op, :meth:`fastnas.nn.PartialChannelMixedOp.idle_modules`)
    names them. They never run, so a count of the network's parameters leaves them out: zero-shot pruning
    scores ``N without o`` by switching o off, and the count must drop with it."""
    ids = set()
    for m in model.modules():
        idle = getattr(m, "idle_modules", None)
        if callable(idle):
            for sub in idle():
                ids.update(id(p) for p in sub.parameters())
    return ids


def scored_layers(proxy: str, model: nn.Module) -> List[nn.Module]:
    """Every ``nn.Conv2d`` / ``nn.Linear`` of ``model`` in ``model.modules()`` order, with its weight made
    to require grad (the proxy owns the model; a frozen weight would make ``autograd.grad`` fail)."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not layers:
        raise ValueError(f"{proxy}: {type(model).__name__} has no nn.Conv2d or nn.Linear layer to score")
    for m in layers:
        m.weight.requires_grad_(True)
    return layers


def check_images(proxy: str, images, min_batch: int = 1) -> None:
    """images: a floating (B, C, H, W) tensor with B >= ``min_batch``."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{proxy}: images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"{proxy}: images must be a floating (B, C, H, W) tensor, got {images.dtype} "
                         f"of shape {tuple(images.shape)}")
    if images.shape[0] < min_batch:
        raise ValueError(f"{proxy}: needs a batch of at least {min_batch} images, got {images.shape[0]}")


def check_labels(proxy: str, labels, images: torch.Tensor) -> None:
    """labels: int64 (B,) on the images' device, one per image."""
    if labels is None:
        raise ValueError(f"{proxy}: needs labels (int64, one per image), got None")
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.dim() != 1:
        raise ValueError(f"{proxy}: labels must be an int64 (B,) tensor, got "
                         f"{getattr(labels, 'dtype', type(labels).__name__)} of shape "
                         f"{tuple(getattr(labels, 'shape', ()))}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{proxy}: {labels.shape[0]} labels for {images.shape[0]} images")
    if labels.device != images.device:
        raise ValueError(f"{proxy}: labels on {labels.device}, images on {images.device}")


def cross_entropy(proxy: str, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                  temperature: float = 1.0) -> torch.Tensor:
    """Mean cross-entropy of ``model`` on the batch (the zero-cost-nas loss) of its logits divided by
    ``temperature``; labels must index the logits."""
    logits = logits_of(model(images))
    if logits.dim() != 2:
        raise ValueError(f"{proxy}: the model must return (B, classes) logits, got shape {tuple(logits.shape)}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= logits.shape[1]:
        raise ValueError(f"{proxy}: labels span [{lo}, {hi}] but the model has {logits.shape[1]} classes")
    return F.cross_entropy(logits / temperature if temperature != 1.0 else logits, labels)


def bypass_batchnorm(model: nn.Module) -> int:
    """Replaces every BatchNorm (any ``_BatchNorm`` subclass) in ``model`` by ``nn.Identity``; returns how many.

    zero-cost-nas runs synflow on a copy whose BN ``forward`` is patched to return its input: the same
    function. Swapping the module is used instead of an identity *mode* because none exists for every BN:
    eval mode with zeroed running statistics is the identity only when the BN tracks running stats and
    ``eps`` is 0, while NAS-Bench-201 search cells use ``track_running_stats=False``.
    """
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _BatchNorm):
                setattr(parent, name, nn.Identity())
                replaced += 1
    return replaced


def sum64(terms) -> float:
    """Sums per-layer tensors in float64 (the zero-cost-nas code sums float32 per-layer sums)."""
    total: Optional[torch.Tensor] = None
    for t in terms:
        s = t.detach().sum(dtype=torch.float64)
        total = s if total is None else total + s
    return 0.0 if total is None else float(total)
