"""Per-architecture reference implementations of epsinas, zen, params and flops, written the way the
published code computes them: the oracles of tests/test_proxies_structural.py and the baselines a
benchmark of fastnas.proxies.{epsinas,zen,structural} compares against.

* epsinas (github.com/egracheva/epsinas, ``NAS-Bench-201/epsinas_utils.py::compute_epsinas``): ``net.apply``
  sets every ``weight`` (not of a non-affine BN) to the constant and every ``bias`` to 0, one float32
  forward, numpy min-max normalisation of the flattened logits, ``preds[preds == 0] = nan`` and
  ``nanmean(|p1 - p2|) / nanmean(preds)``. It returns NaN whenever an output underflows to a constant
  (0/0 in the normalisation): that is the point of keeping it, see fastnas/proxies/epsinas.py.
* zen (NASLib ``predictors/utils/pruners/measures/zen.py``): Gaussian init, two N(0, 1) inputs, the input
  of the (single) ``nn.AdaptiveAvgPool2d`` via a hook as NASLib's NB201 ``forward_before_global_avg_pool``,
  ``log(mean_b sum |f(x) - f(x + 0.01 eps)|) + sum log sqrt(mean running_var)`` over ``nn.BatchNorm2d``.
* params: ``sum(p.numel() for p in model.parameters()) / 1e6`` (NAS-Bench-Suite-Zero's unit).
* flops: AutoDL-Projects' counter (NAS-Bench-201's ``flops``): hooks on ``nn.Conv2d`` and ``nn.Linear``,
  ``kernel x in x out / groups x output positions``, plus one per output for a bias, in millions.

``REFERENCE_PROXIES[name](model, images, labels) -> float``, defaults as fastnas's registered proxies.
"""
from __future__ import annotations

import warnings
from typing import Callable, Dict, Sequence

import numpy as np
import torch
import torch.nn as nn

__all__ = ["REFERENCE_PROXIES", "epsinas_ref", "zen_ref", "params_ref", "flops_ref"]


def _logits(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def epsinas_ref(model: nn.Module, images: torch.Tensor, labels=None,
                weights: Sequence[float] = (1e-7, 1.0)) -> float:
    preds = []
    for weight in weights:
        def initialize_weights(m):
            fill_bias = False
            if hasattr(m, "bias"):
                if m.bias is not None:
                    fill_bias = True
            if fill_bias:
                torch.nn.init.constant_(m.bias, 0)
            fill_weight = False
            if hasattr(m, "weight"):
                fill_weight = True
            if hasattr(m, "affine"):
                if not m.affine:
                    fill_weight = False
            if fill_weight:
                torch.nn.init.constant_(m.weight, weight)

        model.apply(initialize_weights)
        model.train()
        with torch.no_grad():
            y_pred = _logits(model(images))
        pred = y_pred.cpu().detach().numpy().flatten()
        with np.errstate(invalid="ignore", divide="ignore"):
            pred_min = np.nanmin(pred)
            pred_max = np.nanmax(pred)
            pred_norm = (pred - pred_min) / (pred_max - pred_min)
        preds.append(pred_norm)
    preds = np.array(preds)
    preds[np.where(preds == 0.0)] = np.nan
    mae = np.abs(preds[0, :] - preds[1, :])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # nanmean of all-NaN: the published NaN
        return float(np.nanmean(mae) / np.nanmean(preds))


def network_weight_gaussian_init(net: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight)
                if hasattr(m, "bias") and m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                if m.weight is None:
                    continue
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight)
                if hasattr(m, "bias") and m.bias is not None:
                    nn.init.zeros_(m.bias)
    return net


def _forward_before_global_avg_pool(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    outputs = []

    def hook_fn(module, inputs, output_t):
        outputs.append(inputs[0])

    handles = [m.register_forward_hook(hook_fn) for m in net.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    net(x)
    for h in handles:
        h.remove()
    assert len(outputs) == 1
    return outputs[0]


def zen_ref(model: nn.Module, images: torch.Tensor, labels=None, repeat: int = 1, mixup_gamma: float = 1e-2) -> float:
    nas_score_list = []
    model.train()
    with torch.no_grad():
        for _ in range(repeat):
            network_weight_gaussian_init(model)
            input = torch.randn(size=list(images.shape), device=images.device, dtype=images.dtype)
            input2 = torch.randn(size=list(images.shape), device=images.device, dtype=images.dtype)
            mixup_input = input + mixup_gamma * input2
            output = _forward_before_global_avg_pool(model, input)
            mixup_output = _forward_before_global_avg_pool(model, mixup_input)
            nas_score = torch.sum(torch.abs(output - mixup_output), dim=[1, 2, 3])
            nas_score = torch.mean(nas_score)
            log_bn_scaling_factor = 0.0
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    bn_scaling_factor = torch.sqrt(torch.mean(m.running_var))
                    log_bn_scaling_factor += torch.log(bn_scaling_factor)
            nas_score = torch.log(nas_score) + log_bn_scaling_factor
            nas_score_list.append(float(nas_score))
    return float(np.mean(nas_score_list))


def params_ref(model: nn.Module, images=None, labels=None) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def flops_ref(model: nn.Module, images: torch.Tensor, labels=None) -> float:
    flops = []

    def conv_flops_counter_hook(conv_module, inputs, output):
        batch_size = inputs[0].size(0)
        output_height, output_width = output.shape[2:]
        kernel_height, kernel_width = conv_module.kernel_size
        conv_per_position_flops = (kernel_height * kernel_width * conv_module.in_channels
                                   * conv_module.out_channels / conv_module.groups)
        active_elements_count = batch_size * output_height * output_width
        overall_flops = conv_per_position_flops * active_elements_count
        if conv_module.bias is not None:
            overall_flops += conv_module.out_channels * active_elements_count
        flops.append(overall_flops)

    def fc_flops_counter_hook(fc_module, inputs, output):
        batch_size = inputs[0].size(0)
        overall_flops = batch_size * fc_module.in_features * fc_module.out_features
        if fc_module.bias is not None:
            overall_flops += batch_size * fc_module.out_features
        flops.append(overall_flops)

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_flops_counter_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(fc_flops_counter_hook))
    model.eval()
    with torch.no_grad():
        model(images[:1])
    for h in handles:
        h.remove()
    return sum(flops) / 1e6


REFERENCE_PROXIES: Dict[str, Callable[..., float]] = {
    "epsinas": epsinas_ref,
    "zen": zen_ref,
    "params": params_ref,
    "flops": flops_ref,
}
