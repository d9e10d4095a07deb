"""Gradient-based zero-cost proxies: synflow, snip, grasp, fisher, jacov, grad_norm.

Protocol: "Zero-Cost Proxies for Lightweight NAS" (Abdelfattah et al., ICLR 2021; code
SamsungLabs/zero-cost-nas ``foresight/pruners/measures``), as NAS-Bench-Suite-Zero re-ran it (NASLib
``naslib/predictors/pruners``): the network as built (default PyTorch init), BN in train mode, one batch
of 64 training images (synflow: one all-ones image), mean cross-entropy, and a per-weight metric over the
weights of every ``nn.Conv2d`` / ``nn.Linear`` summed into one number. The batch size 64 is read off the
published jacov values: jacov <= -B, and the 1,191 NB201 values in ``nb201_zc_cifar10_dev.csv`` lie in
[-86367, -64.98] with median -67.7: B <= 64, and the bunching just below -64 points to
B = 64 (at B = 32 a typical net would have to sit 2x above the bound).

Where this module computes a value differently from that code, the value is the same:

- gradients come from ``torch.autograd.grad`` on exactly the tensors a metric reads (weights; for fisher
  the layer outputs; for jacov the input), never ``.backward()`` into every parameter;
- snip's weight masks: dL/dmask at mask = 1 is g * theta, so no mask is built;
- grasp runs one forward instead of two: the forward is a pure function of the weights and the batch
  (train-mode BN normalises with the batch's statistics and never reads the running ones it updates),
  so both passes of the reference compute the same g.

Measured against benchmarks/reference_gradient_proxies.py (the paper code's steps) on NB201 C=16 N=5,
B=64, one thread of a shared 2-core CPU, mean of 4 archs, fastnas vs reference in s/arch: synflow 0.028
vs 0.131, snip 0.48 vs 0.56, grad_norm 0.46 vs 0.58, fisher 0.39 vs 0.50, jacov 0.41 vs 0.61, grasp
1.46 vs 2.13; the values agree bit for bit (synflow, snip, grasp, jacov) or to 3e-8 relative.

NASLib post-processes two proxies when it stores them: synflow as ``log(score)``, and any NaN/inf as
-1e8. Here synflow is the plain sum (ranks are the same) and no proxy returns a non-finite value.
"""
from __future__ import annotations

import math
from itertools import chain
from typing import List

import torch
import torch.nn as nn

from fastnas.proxies._layers import (bypass_batchnorm, check_images, check_labels, cross_entropy, logits_of,
                                     scored_layers, sum64)
from fastnas.proxies.registry import register_proxy

__all__ = ["synflow", "snip", "grasp", "fisher", "jacov", "grad_norm", "jacov_from_jacobian", "JACOV_K"]

_ZC = "as a NAS proxy: Abdelfattah et al. 2021, Zero-Cost Proxies for Lightweight NAS"
JACOV_K = 1e-5  # Mellor et al.'s regulariser of the correlation eigenvalues


def _weights(layers: List[nn.Module]) -> List[torch.Tensor]:
    return [m.weight for m in layers]


def _labelled_grads(proxy: str, model: nn.Module, images, labels, bn_train: bool, create_graph: bool = False,
                    temperature: float = 1.0):
    """(weights, dL/dweights) of the mean cross-entropy on the batch (logits / ``temperature``); a weight
    the loss does not reach gets None (the reference scores it 0)."""
    check_images(proxy, images)
    check_labels(proxy, labels, images)
    model.train(bn_train)
    weights = _weights(scored_layers(proxy, model))
    loss = cross_entropy(proxy, model, images, labels, temperature)
    return weights, torch.autograd.grad(loss, weights, create_graph=create_graph, allow_unused=True)


@register_proxy("synflow", higher_is_better=True, uses_labels=False, batch_size=1,
                paper="Tanaka et al. 2020, Pruning neural networks without any data by iteratively conserving "
                      f"synaptic flow; {_ZC}")
def synflow(model: nn.Module, images: torch.Tensor, labels=None) -> float:
    """sum over conv/linear weights of |theta * dR/dtheta|, R = sum of the logits of an all-ones input.

    The network runs in float64 with every parameter and buffer replaced by its absolute value and every
    BN replaced by an identity (:func:`bypass_batchnorm`); only ``images.shape[1:]`` is read. float64 is
    required: R grows geometrically with depth; over the 64 NB201 archs built from skip_connect and
    nor_conv_3x3 (which hold the most paths) the largest score, all nor_conv_3x3, is 7.0e49 = e^114.8,
    past float32's e^88.7 and far below float64's e^709. A network whose logits do not
    depend on its scored weights (NB201 all-``none`` cells) scores 0.
    """
    check_images("synflow", images)
    bypass_batchnorm(model)
    model.double()
    with torch.no_grad():
        for t in chain(model.parameters(), model.buffers()):
            if t.is_floating_point():
                t.abs_()
    weights = _weights(scored_layers("synflow", model))
    ones = torch.ones((1, *images.shape[1:]), dtype=torch.float64, device=images.device)
    r = logits_of(model(ones)).sum()
    grads = torch.autograd.grad(r, weights, allow_unused=True)
    return sum64((w * g).abs() for w, g in zip(weights, grads) if g is not None)


@register_proxy("snip", higher_is_better=True, uses_labels=True, batch_size=64,
                paper=f"Lee et al. 2019, SNIP: Single-shot Network Pruning based on Connection Sensitivity; {_ZC}")
def snip(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, bn_train: bool = True) -> float:
    """sum |g * theta|, g = dL/dtheta of the mean cross-entropy on (images (B, 3, H, W), labels (B,))."""
    weights, grads = _labelled_grads("snip", model, images, labels, bn_train)
    return sum64((w * g).abs() for w, g in zip(weights, grads) if g is not None)


@register_proxy("grad_norm", higher_is_better=True, uses_labels=True, batch_size=64, paper=_ZC)
def grad_norm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, bn_train: bool = True) -> float:
    """sum over conv/linear layers of ||dL/dW||_2 (one L2 norm per weight tensor, not squared)."""
    _, grads = _labelled_grads("grad_norm", model, images, labels, bn_train)
    return sum64(g.double().norm() for g in grads if g is not None)


@register_proxy("grasp", higher_is_better=True, uses_labels=True, batch_size=64,
                paper=f"Wang et al. 2020, Picking Winning Tickets Before Training by Preserving Gradient Flow; {_ZC}")
def grasp(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, bn_train: bool = True,
          T: float = 1.0) -> float:
    """sum over conv/linear weights of -theta * (H g), H the Hessian of the loss, g its gradient.

    ``T``: the loss is the cross-entropy of logits / T, as zero-cost-nas's and NASLib's ``grasp.py``
    (default 1, theirs; the GraSP paper prunes with T = 200).

    Sign: GraSP prunes the weights with the *lowest* theta * Hg; zero-cost-nas returns -theta * Hg and
    reports it as higher-is-better, because accuracy correlates negatively with sum theta * Hg. The
    published values follow that sign (Spearman +0.55 with NB201 CIFAR-10 test accuracy over the 1,191
    archs of ``nb201_zc_cifar10_dev.csv``).
    Hg = d(g_const . g)/dtheta: one double backward through the gradient graph.
    """
    if isinstance(T, bool) or not isinstance(T, (int, float)) or not (math.isfinite(T) and T > 0):
        raise ValueError(f"grasp: T must be a positive finite number, got {T!r}")
    weights, grads = _labelled_grads("grasp", model, images, labels, bn_train, create_graph=True,
                                     temperature=float(T))
    used = [(w, g) for w, g in zip(weights, grads) if g is not None]
    z = sum((g.detach() * g).sum() for _, g in used) if used else None
    if z is None or not z.requires_grad:
        return 0.0  # no gradient depends on a weight: Hg = 0 (the reference's weight.grad stays None)
    hg = torch.autograd.grad(z, [w for w, _ in used], allow_unused=True)
    return -sum64(w.detach() * h for (w, _), h in zip(used, hg) if h is not None)


@register_proxy("fisher", higher_is_better=True, uses_labels=True, batch_size=64,
                paper=f"Theis et al. 2018, Faster gaze prediction with dense networks and Fisher pruning; {_ZC}")
def fisher(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, bn_train: bool = True) -> float:
    """Per output channel c of every conv/linear output a (B, C, *spatial) with gradient dL/da:
    F_c = 0.5 * mean_b (sum_spatial a * dL/da)^2; the layer scores sum_c F_c * (weight[c].numel()).

    The factor weight[c].numel() (C_in * kh * kw for a conv) is the reference's: it broadcasts each
    channel's value over that channel's weights before summing. a is the layer's output, before BN, as
    zero-cost-nas hooks a dummy identity placed right after the conv/linear. Forward hooks collect the
    outputs (removed before returning); ``autograd.grad`` on them returns dL/da without computing a single
    weight gradient, which the reference's ``loss.backward()`` computes and throws away. A layer called
    several times adds one term per call.
    """
    check_images("fisher", images)
    check_labels("fisher", labels, images)
    model.train(bn_train)
    layers = scored_layers("fisher", model)
    outputs: List[tuple] = []  # (layer index, output tensor)
    handles = [m.register_forward_hook(lambda mod, inp, out, i=i: outputs.append((i, out)))
               for i, m in enumerate(layers)]
    try:
        loss = cross_entropy("fisher", model, images, labels)
    finally:
        for h in handles:
            h.remove()
    outputs = [(i, a) for i, a in outputs if a.requires_grad]
    if not outputs:
        return 0.0
    grads = torch.autograd.grad(loss, [a for _, a in outputs], allow_unused=True)
    terms = []
    for (i, a), g in zip(outputs, grads):
        if g is None:
            continue
        s = a.detach() * g
        if s.dim() > 2:
            s = s.sum(dim=tuple(range(2, s.dim())))          # (B, C)
        terms.append(s.double().pow(2).mean(0).sum() * (0.5 * layers[i].weight[0].numel()))
    return sum64(terms)


def jacov_from_jacobian(jacobian: torch.Tensor, k: float = JACOV_K) -> float:
    """Mellor et al.'s score of per-sample Jacobians (B, D): -sum_i (log(v_i + k) + 1 / (v_i + k)) over the
    eigenvalues v of the B x B correlation matrix of the rows. Higher is better; at most -B (every
    eigenvalue 1: uncorrelated Jacobians).

    Degenerate input: a row with zero variance (a sample whose Jacobian is constant, e.g. 0 when the
    logits do not depend on the input) or a non-finite entry leaves the correlation undefined (the
    reference's ``np.corrcoef`` gives NaN, NASLib then stores -1e8). Such a batch gets the worst score a
    correlation matrix can reach, that of B perfectly correlated rows (eigenvalues B, 0, ..., 0): the
    network tells no input apart. It ranks below every non-degenerate network of the same batch size.
    """
    if jacobian.dim() != 2 or jacobian.shape[0] < 2:
        raise ValueError(f"jacov: needs a (B, D) Jacobian with B >= 2, got shape {tuple(jacobian.shape)}")
    j = jacobian.double()
    b = j.shape[0]
    centred = j - j.mean(dim=1, keepdim=True)
    norms = centred.norm(dim=1)
    if not bool(torch.isfinite(j).all()) or bool((norms == 0).any()):
        return -(math.log(b + k) + 1.0 / (b + k)) - (b - 1) * (math.log(k) + 1.0 / k)
    unit = centred / norms[:, None]
    # A correlation matrix is positive semi-definite; eigvalsh returns its zero eigenvalues as +-1e-16
    # noise, clamped so that log(v + k) stays defined whatever the rank.
    v = torch.linalg.eigvalsh(unit @ unit.T).clamp_min(0.0)
    return float(-(torch.log(v + k) + 1.0 / (v + k)).sum())


@register_proxy("jacov", higher_is_better=True, uses_labels=False, batch_size=64,
                paper="Mellor et al. 2020, Neural Architecture Search without Training (v1: Jacobian covariance)")
def jacov(model: nn.Module, images: torch.Tensor, labels=None, *, bn_train: bool = True, k: float = JACOV_K) -> float:
    """:func:`jacov_from_jacobian` of J = d(sum of logits)/d(images), (B, 3*H*W): row b is the gradient of
    sample b's summed logits (samples do not mix in the sum, but do through train-mode BN, as in the
    reference). Needs B >= 2. ``k``: the eigenvalue regulariser (Mellor et al.'s 1e-5)."""
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not (math.isfinite(k) and k > 0):
        raise ValueError(f"jacov: k must be a positive finite number, got {k!r}")
    check_images("jacov", images, min_batch=2)
    model.train(bn_train)
    x = images.detach().requires_grad_(True)
    (j,) = torch.autograd.grad(logits_of(model(x)).sum(), x, allow_unused=True)
    if j is None:  # the logits ignore the input: J = 0, the degenerate case
        j = torch.zeros_like(x)
    return jacov_from_jacobian(j.reshape(j.shape[0], -1), float(k))
