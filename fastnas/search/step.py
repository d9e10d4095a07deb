"""One differentiable-search step: an architecture step (optional), then a weight step.

The order and the optimizers are PC-DARTS's ``train_search.py``: for each weight batch, first update the
architecture on an architecture batch (from the epoch ``warmup_epochs`` on), then update the weights.

What differs from the reference, on purpose:

- The first-order architecture step differentiates the loss with respect to the architecture
  parameters ONLY (``loss.backward(inputs=arch_params)``). The reference calls ``loss.backward()``,
  which computes every weight gradient only to discard it: autograd then prunes the weight-gradient half
  of every convolution backward (DESIGN.md section 3 measured 1.54 s -> 1.02 s for forward+backward of
  the reference model at B=32 on a 2-core CPU). ``backward(inputs=...)`` rather than
  ``torch.autograd.grad`` so that a ``GradScaler`` and the optimizer's ``.grad`` protocol work unchanged.
- Metrics stay on the device: the step returns the loss and the number of correct predictions as
  0-d tensors; nothing in the step reads a value back to the host (no ``.item()``), so a CUDA step
  launches without synchronising. The caller reads them every N steps.
- The second-order (unrolled) step reuses the model in place instead of deep-copying it (DARTS builds a
  new network per step): weights are swapped to w', w + R v and w - R v and restored, BatchNorm buffers
  are restored after the extra forwards so the unrolled passes leave no trace in the running stats.
"""
from __future__ import annotations

import contextlib
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SearchStep", "classification_loss", "AMP_DTYPES"]

AMP_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}

LossFn = Callable[[nn.Module, torch.Tensor, Optional[torch.Tensor]], Tuple[torch.Tensor, Optional[torch.Tensor]]]


def classification_loss(model: nn.Module, x: torch.Tensor, y: Optional[torch.Tensor]):
    """Cross-entropy of ``model(x)`` against ``y``: returns (loss 0-d, logits (B, classes))."""
    if y is None:
        raise ValueError("the classification loss needs labels; this dataset has none")
    logits = model(x)
    # half-precision logits (autocast) are upcast for the softmax; float64 stays float64
    wide = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    return F.cross_entropy(wide, y), logits


class SearchStep:
    """Optimizers and the update rule of a differentiable search on one supernet.

    Args:
        model: a supernet with ``arch_parameters()`` and ``weight_parameters()``
            (:class:`fastnas.nn.SearchNetwork`).
        learning_rate, momentum, weight_decay, grad_clip: weight SGD (PC-DARTS: 0.1, 0.9, 3e-4, 5).
        arch_learning_rate, arch_weight_decay, arch_betas: architecture Adam (6e-4, 1e-3, (0.5, 0.999)).
        unrolled: DARTS second order (finite-difference Hessian-vector product, R = hessian_eps / ||v||;
            DARTS's r = 0.01. That step is coarse: on a tiny float64 supernet the difference quotient
            with r = 0.01 was off by ~3x from the exact product, r = 1e-6 matched it to 1e-10; we keep
            DARTS's value as the default to reproduce its searches).
        amp: None, ``"bf16"`` or ``"fp16"``: autocast of the forward passes (fp16 adds gradient scalers).
        loss_fn: ``(model, x, y) -> (loss, logits or None)``; default :func:`classification_loss`.
        capturable: the architecture Adam keeps its state on the device (for CUDA-graph capture,
            :class:`fastnas.search.graphs.GraphedStep`).

    Call: ``step(x_w, y_w, x_a, y_a, update_arch=True)`` with weight batch (B, 3, H, W), (B,) and
    architecture batch likewise; returns ``(loss, correct)`` of the weight batch as detached 0-d device
    tensors (``correct`` is 0 when the loss gives no logits).
    """

    def __init__(self, model: nn.Module, *, learning_rate: float = 0.1, momentum: float = 0.9,
                 weight_decay: float = 3e-4, grad_clip: Optional[float] = 5.0, arch_learning_rate: float = 6e-4,
                 arch_weight_decay: float = 1e-3, arch_betas: Sequence[float] = (0.5, 0.999),
                 unrolled: bool = False, hessian_eps: float = 0.01, amp: Optional[str] = None,
                 loss_fn: Optional[LossFn] = None, capturable: bool = False):
        self.model = model
        self.arch_params: List[nn.Parameter] = list(model.arch_parameters())
        self.weight_params: List[nn.Parameter] = list(model.weight_parameters())
        if not self.arch_params:
            raise ValueError("the model has no architecture parameters")
        self.grad_clip, self.unrolled, self.hessian_eps = grad_clip, unrolled, hessian_eps
        self.momentum, self.weight_decay = momentum, weight_decay
        self.loss_fn = loss_fn or classification_loss
        self.w_optimizer = torch.optim.SGD(self.weight_params, learning_rate, momentum=momentum,
                                           weight_decay=weight_decay)
        # capturable: Adam's step count lives on the device, so a CUDA graph can replay the update
        # (fastnas.search.graphs); the same arithmetic otherwise.
        self.a_optimizer = torch.optim.Adam(self.arch_params, lr=arch_learning_rate, betas=tuple(arch_betas),
                                            weight_decay=arch_weight_decay, capturable=capturable)
        if amp is not None and amp not in AMP_DTYPES:
            raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
        self.amp_dtype = AMP_DTYPES.get(amp) if amp else None
        device_type = next(model.parameters()).device.type
        if self.amp_dtype is torch.float16 and device_type != "cuda":
            raise ValueError("amp='fp16' needs a CUDA device; use amp='bf16' on the CPU")
        if self.amp_dtype is not None and unrolled:
            raise ValueError("amp is not supported with the unrolled (second-order) step: the finite "
                             "differences of R = 0.01 / ||v|| drown in half-precision rounding")
        self.device_type = device_type
        # B-DARTS's confident learning rate (set per epoch by the engine): first order scales the
        # architecture learning rate by it, second order the unrolled validation loss. 1.0: off.
        self.confidence = 1.0
        self.arch_learning_rate = arch_learning_rate
        fp16 = self.amp_dtype is torch.float16
        self.w_scaler = torch.amp.GradScaler(device_type, enabled=fp16)
        self.a_scaler = torch.amp.GradScaler(device_type, enabled=fp16)

    # -- helpers ----------------------------------------------------------------------------------
    def autocast(self):
        """The autocast context of the forward passes (a no-op without amp)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.amp_dtype)

    def _loss(self, x, y):
        with self.autocast():
            return self.loss_fn(self.model, x, y)

    def _regularised(self, loss: torch.Tensor) -> torch.Tensor:
        """The architecture loss plus the model's architecture regulariser, if it has one (DrNAS)."""
        regularizer = getattr(self.model, "arch_regularizer", None)
        reg = regularizer() if regularizer is not None else None
        return loss if reg is None else loss + reg

    @property
    def lr(self) -> float:
        return self.w_optimizer.param_groups[0]["lr"]

    # -- the step -----------------------------------------------------------------------------------
    def __call__(self, x_w, y_w, x_a=None, y_a=None, update_arch: bool = True):
        if update_arch:
            if x_a is None:
                raise ValueError("an architecture step needs an architecture batch")
            self.arch_step(x_w, y_w, x_a, y_a)
        return self.weight_step(x_w, y_w)

    @contextlib.contextmanager
    def _architecture_frozen(self):
        """The architecture parameters stop requiring grad for the weight step's forward: the fused mixed
        op then keeps no op outputs for the alphas' gradient and its backward skips those dot products
        (the weights' gradients are the same bits; ``backward(inputs=...)`` alone would still have
        recorded them)."""
        flags = [p.requires_grad for p in self.arch_params]
        for p in self.arch_params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, flag in zip(self.arch_params, flags):
                p.requires_grad_(flag)

    def weight_step(self, x, y):
        """SGD step on the weights (gradient clipping as PC-DARTS). Returns (loss, correct) on the device."""
        self.w_optimizer.zero_grad(set_to_none=True)
        with self._architecture_frozen():
            loss, logits = self._loss(x, y)
        self.w_scaler.scale(loss).backward(inputs=self.weight_params)
        if self.grad_clip:
            self.w_scaler.unscale_(self.w_optimizer)
            nn.utils.clip_grad_norm_(self.weight_params, self.grad_clip)
        self.w_scaler.step(self.w_optimizer)
        self.w_scaler.update()
        loss = loss.detach()
        if logits is None or y is None:
            return loss, torch.zeros((), dtype=torch.int64, device=loss.device)
        return loss, (logits.detach().argmax(1) == y).sum()

    def arch_step(self, x_w, y_w, x_a, y_a) -> torch.Tensor:
        """Adam step on the architecture parameters. Returns the architecture loss (detached)."""
        self.a_optimizer.zero_grad(set_to_none=True)
        if self.unrolled:
            loss = self._unrolled_grads(x_w, y_w, x_a, y_a)
        else:
            for group in self.a_optimizer.param_groups:
                group["lr"] = self.arch_learning_rate * self.confidence
            loss, _ = self._loss(x_a, y_a)
            loss = self._regularised(loss)
            self.a_scaler.scale(loss).backward(inputs=self.arch_params)
        self.a_scaler.step(self.a_optimizer)
        self.a_scaler.update()
        return loss.detach()

    # -- DARTS second order -------------------------------------------------------------------------
    @torch.no_grad()
    def _set_weights(self, tensors):
        for p, t in zip(self.weight_params, tensors):
            p.copy_(t)

    def _unrolled_grads(self, x_w, y_w, x_a, y_a) -> torch.Tensor:
        """Sets ``.grad`` of the architecture parameters to DARTS's second-order gradient

            dL_val(w', a)/da - eta * (dL_train(w+, a)/da - dL_train(w-, a)/da) / (2R)

        with w' = w - eta * (momentum * buf + dL_train(w)/dw + wd * w), v = dL_val(w', a)/dw',
        w+- = w +- R v, R = hessian_eps / ||v||; eta is the current weight learning rate.
        """
        eta = self.lr
        weights = self.weight_params
        saved_w = [p.detach().clone() for p in weights]
        saved_buffers = [b.detach().clone() for b in self.model.buffers()]
        try:
            # w' (one step of the weight optimizer's update rule, without touching its state)
            loss_t, _ = self._loss(x_w, y_w)
            g_t = torch.autograd.grad(loss_t, weights, allow_unused=True)
            with torch.no_grad():
                for p, g in zip(weights, g_t):
                    d = self.weight_decay * p
                    if g is not None:
                        d = d + g
                    buf = self.w_optimizer.state.get(p, {}).get("momentum_buffer")
                    if buf is not None:
                        d = d + self.momentum * buf
                    p.sub_(eta * d)
            loss_v, _ = self._loss(x_a, y_a)
            loss_v = self._regularised(loss_v)
            if self.confidence != 1.0:
                loss_v = self.confidence * loss_v
            grads = torch.autograd.grad(loss_v, self.arch_params + weights, allow_unused=True)
            d_alpha = grads[:len(self.arch_params)]
            v = [torch.zeros_like(p) if g is None else g for p, g in zip(weights, grads[len(self.arch_params):])]
            R = self.hessian_eps / torch.cat([t.reshape(-1) for t in v]).norm()
            implicit = []
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    for p, w0, vi in zip(weights, saved_w, v):
                        p.copy_(w0 + sign * R * vi)
                loss_p, _ = self._loss(x_w, y_w)
                implicit.append(torch.autograd.grad(loss_p, self.arch_params, allow_unused=True))
            for a, da, gp, gm in zip(self.arch_params, d_alpha, implicit[0], implicit[1]):
                g = torch.zeros_like(a) if da is None else da.detach().clone()
                if gp is not None and gm is not None:
                    g.sub_(eta * (gp - gm) / (2 * R))
                a.grad = g
            return loss_v.detach()
        finally:
            self._set_weights(saved_w)
            with torch.no_grad():
                for b, s in zip(self.model.buffers(), saved_buffers):
                    b.copy_(s)

    # -- checkpointing ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"w_optimizer": self.w_optimizer.state_dict(), "a_optimizer": self.a_optimizer.state_dict(),
                "w_scaler": self.w_scaler.state_dict(), "a_scaler": self.a_scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.w_optimizer.load_state_dict(state["w_optimizer"])
        self.a_optimizer.load_state_dict(state["a_optimizer"])
        self.w_scaler.load_state_dict(state["w_scaler"])
        self.a_scaler.load_state_dict(state["a_scaler"])
