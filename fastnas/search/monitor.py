"""Collapse monitoring: the dominant eigenvalue of the validation-loss Hessian w.r.t. the architecture.

DARTS's collapse (to parameter-free ops, skip connections first) goes with a sharp validation loss in
architecture space: the dominant Hessian eigenvalue grows along the search (Zela et al., "Understanding
and Robustifying Differentiable Architecture Search", ICLR 2020). It is computed here by power iteration
on Hessian-vector products (double backward, which the fused ops support), never forming the Hessian:
``iters`` products of the cost of about two backward passes each.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

__all__ = ["dominant_hessian_eigenvalue"]


def dominant_hessian_eigenvalue(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor],
                                iters: int = 20, tol: float = 1e-4,
                                generator: torch.Generator = None) -> float:
    """The eigenvalue of largest magnitude of d^2 loss / d params^2 (power iteration).

    loss_fn: computes the scalar loss (called once: the gradient graph is kept for the products).
    params: the tensors (requires_grad) the Hessian is taken over, as one flattened vector.
    iters: at most this many Hessian-vector products; stops when the Rayleigh quotient changes by less
        than ``tol`` relative. generator: draws the start vector (CPU), so the result is reproducible
        without touching the global RNG.

    Returns the Rayleigh quotient ``v^T H v`` of the last unit vector (a float; 0.0 when H v = 0).
    """
    params = list(params)
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    # A parameter the loss does not reach (e.g. the normal-cell alphas of a network with only reduction
    # cells) has zero Hessian rows and columns: it cannot change the dominant eigenvalue.
    used = [(p, g) for p, g in zip(params, grads) if g is not None]
    if not used:
        return 0.0
    params, grads = [p for p, _ in used], [g for _, g in used]
    v = [torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p) for p in params]
    norm = torch.sqrt(sum((x * x).sum() for x in v))
    v = [x / norm for x in v]
    eigenvalue = 0.0
    for i in range(iters):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True, allow_unused=True)
        hv = [torch.zeros_like(p) if h is None else h for p, h in zip(params, hv)]
        rayleigh = float(sum((h * x).sum() for h, x in zip(hv, v)))
        norm = torch.sqrt(sum((h * h).sum() for h in hv))
        if float(norm) == 0.0:
            return 0.0
        v = [h / norm for h in hv]
        converged = i > 0 and abs(rayleigh - eigenvalue) <= tol * max(abs(rayleigh), 1e-12)
        eigenvalue = rayleigh
        if converged:
            break
    return eigenvalue
