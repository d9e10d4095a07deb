"""Reference implementations of the gradient-based proxies, written the way the papers' code does them.

These follow SamsungLabs/zero-cost-nas ``foresight/pruners/measures`` (as NASLib's
``naslib/predictors/pruners/measures`` reuses it) step for step: a ``copy.deepcopy`` of the network per
measure, BN bypassed by patching its ``forward``, synflow's sign linearisation with ``torch.sign``,
snip's all-ones weight masks, grasp's two forward passes and ``z.backward()``, fisher's dummy identity
after every conv/linear with a backward hook, per-layer metric lists summed at the end, jacov through
``np.corrcoef`` and ``np.linalg.eig``. They are slow on purpose: they are what fastnas's
:mod:`fastnas.proxies.gradient` is checked against (tests) and timed against (benchmarks).

``REFERENCE_PROXIES[name](model, images, labels) -> float``: the model is left unchanged (each measure
works on a deep copy). Two departures, neither changing a value: fisher's hook is a full backward hook
(``register_full_backward_hook``; the deprecated ``register_backward_hook`` the paper code uses fires on
the conv's autograd node and receives the same dL/d(output)); and the per-layer sums accumulate in
float64. Unlike fastnas, jacov returns NaN where ``np.corrcoef`` does (a zero-variance Jacobian row).
"""
from __future__ import annotations

import copy
import types
from typing import Callable, Dict, List

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["REFERENCE_PROXIES", "synflow_ref", "snip_ref", "grasp_ref", "fisher_ref", "jacov_ref", "grad_norm_ref"]


def _out(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def _no_op(self, x):
    return x


def _prunable_copy(net: nn.Module, bn: bool) -> nn.Module:
    """zero-cost-nas ``copynet``: a deep copy, BN forwards patched to the identity when ``bn`` is False."""
    net = copy.deepcopy(net)
    if not bn:
        for layer in net.modules():
            if isinstance(layer, (nn.BatchNorm2d, nn.BatchNorm1d)):
                layer.forward = types.MethodType(_no_op, layer)
    return net


def _layer_metric(net: nn.Module, metric) -> List[torch.Tensor]:
    return [metric(layer) for layer in net.modules() if isinstance(layer, (nn.Conv2d, nn.Linear))]


def _sum(arr: List[torch.Tensor]) -> float:
    return float(sum(torch.sum(a.detach().double()) for a in arr))


def synflow_ref(model, images, labels=None) -> float:
    net = _prunable_copy(model, bn=False).double()

    @torch.no_grad()
    def linearize(net):
        signs = {}
        for name, param in net.state_dict().items():
            signs[name] = torch.sign(param)
            param.abs_()
        return signs

    @torch.no_grad()
    def nonlinearize(net, signs):
        for name, param in net.state_dict().items():
            param.mul_(signs[name])

    signs = linearize(net)
    net.zero_grad()
    inputs = torch.ones([1] + list(images[0].shape), dtype=torch.float64, device=images.device)
    torch.sum(_out(net.forward(inputs))).backward()

    def synflow(layer):
        if layer.weight.grad is not None:
            return torch.abs(layer.weight * layer.weight.grad)
        return torch.zeros_like(layer.weight)

    grads_abs = _layer_metric(net, synflow)
    nonlinearize(net, signs)
    return _sum(grads_abs)


def _snip_forward_conv2d(self, x):
    return F.conv2d(x, self.weight * self.weight_mask, self.bias, self.stride, self.padding, self.dilation,
                    self.groups)


def _snip_forward_linear(self, x):
    return F.linear(x, self.weight * self.weight_mask, self.bias)


def snip_ref(model, images, labels) -> float:
    net = _prunable_copy(model, bn=True)
    for layer in net.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            layer.weight_mask = nn.Parameter(torch.ones_like(layer.weight))
            layer.weight.requires_grad = False
        if isinstance(layer, nn.Conv2d):
            layer.forward = types.MethodType(_snip_forward_conv2d, layer)
        if isinstance(layer, nn.Linear):
            layer.forward = types.MethodType(_snip_forward_linear, layer)
    net.train()
    net.zero_grad()
    F.cross_entropy(_out(net.forward(images)), labels).backward()

    def snip(layer):
        if layer.weight_mask.grad is not None:
            return torch.abs(layer.weight_mask.grad)
        return torch.zeros_like(layer.weight)

    return _sum(_layer_metric(net, snip))


def grad_norm_ref(model, images, labels) -> float:
    net = _prunable_copy(model, bn=True)
    net.zero_grad()
    F.cross_entropy(_out(net.forward(images)), labels).backward()
    return _sum(_layer_metric(net, lambda l: l.weight.grad.norm() if l.weight.grad is not None
                              else torch.zeros_like(l.weight)))


def grasp_ref(model, images, labels) -> float:
    net = _prunable_copy(model, bn=True)
    weights = []
    for layer in net.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            weights.append(layer.weight)
            layer.weight.requires_grad_(True)
    net.zero_grad()
    # pass 1: g, no graph kept
    loss = F.cross_entropy(_out(net.forward(images)), labels)
    grad_w = list(torch.autograd.grad(loss, weights, allow_unused=True))
    # pass 2: the gradient with its graph, dotted with g, differentiated again: Hg in weight.grad
    loss = F.cross_entropy(_out(net.forward(images)), labels)
    grad_f = torch.autograd.grad(loss, weights, create_graph=True, allow_unused=True)
    z = 0
    for gw, gf in zip(grad_w, grad_f):
        if gw is not None:
            z += (gw.data * gf).sum()
    z.backward()

    def grasp(layer):
        if layer.weight.grad is not None:
            return -layer.weight.data * layer.weight.grad  # -theta * Hg
        return torch.zeros_like(layer.weight)

    return _sum(_layer_metric(net, grasp))


def _fisher_forward_conv2d(self, x):
    x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
    self.act = self.dummy(x)
    return self.act


def _fisher_forward_linear(self, x):
    x = F.linear(x, self.weight, self.bias)
    self.act = self.dummy(x)
    return self.act


def fisher_ref(model, images, labels) -> float:
    net = _prunable_copy(model, bn=True)
    net.train()
    for layer in net.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            layer.fisher = None
            layer.act = 0.0
            layer.dummy = nn.Identity()
            if isinstance(layer, nn.Conv2d):
                layer.forward = types.MethodType(_fisher_forward_conv2d, layer)
            else:
                layer.forward = types.MethodType(_fisher_forward_linear, layer)

            def hook_factory(layer):
                def hook(module, grad_input, grad_output):
                    act = layer.act.detach()
                    grad = grad_output[0].detach()
                    g_nk = torch.sum(act * grad, list(range(2, act.dim()))) if act.dim() > 2 else act * grad
                    del_k = g_nk.pow(2).mean(0).mul(0.5)
                    layer.fisher = del_k if layer.fisher is None else layer.fisher + del_k
                    del layer.act
                return hook

            layer.dummy.register_full_backward_hook(hook_factory(layer))
    net.zero_grad()
    F.cross_entropy(_out(net(images)), labels).backward()

    def fisher(layer):
        if layer.fisher is not None:
            return torch.abs(layer.fisher.detach())
        return torch.zeros(layer.weight.shape[0])

    per_channel = _layer_metric(net, fisher)
    shapes = _layer_metric(net, lambda l: l.weight.shape[1:])
    # broadcast each channel's value over that channel's weights, as the reference's reshape_elements
    return _sum([torch.stack([torch.full(tuple(sh), float(v)) for v in e]) for e, sh in zip(per_channel, shapes)])


def jacov_ref(model, images, labels=None) -> float:
    net = _prunable_copy(model, bn=True)
    net.zero_grad()
    x = images.detach().clone().requires_grad_(True)
    y = _out(net(x))
    y.backward(torch.ones_like(y))
    jacob = x.grad.detach().reshape(x.shape[0], -1).cpu().numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        corrs = np.corrcoef(jacob)
        if not np.isfinite(corrs).all():
            return float("nan")
        v, _ = np.linalg.eig(corrs)
        k = 1e-5
        return float(np.real(-np.sum(np.log(v + k) + 1.0 / (v + k))))


REFERENCE_PROXIES: Dict[str, Callable[..., float]] = {
    "synflow": synflow_ref,
    "snip": snip_ref,
    "grasp": grasp_ref,
    "fisher": fisher_ref,
    "jacov": jacov_ref,
    "grad_norm": grad_norm_ref,
}
