"""epsinas (Gracheva, "Trainless model performance estimation based on random weights initialisations",
2021; code github.com/egracheva/epsinas), evaluated without underflow.

The published protocol (``compute_epsinas`` in ``NAS-Bench-201/epsinas_utils.py``):

1. every module with a ``weight`` (conv, linear, and *affine* batch norms too) gets all weights equal to
   one constant ``w``; every bias, BN shifts included, is 0;
2. one forward of a batch of real images (256 on NB201) with batch norm on batch statistics (the
   published NB201 network builds every BN with ``track_running_stats=False``); the output is the
   logits, flattened over (images, classes), min-max normalised: ``p = (y - min y) / (max y - min y)``;
3. steps 1-2 for ``w1 = 1e-7`` and ``w2 = 1``, then with the exact zeros of ``p1, p2`` (each vector's
   minimum) taken out: ``score = nanmean(|p1 - p2|) / nanmean([p1; p2])``. Higher is better.

The published network has one output (``num_classes=1``). With constant weights and zero biases every
class row of a linear classifier is the same, so every class logit equals that one output and fastnas
scores the first logit column. Flattening all the classes instead would make the exclusion of exact
zeros depend on rounding: the copies tie only up to the GEMM's summation order (measured on NB201, C=8,
16 images, float64: 2 of the 10 copies of the minimum exactly 0 in one evaluation, 8 in another, and
the score moved from 0.416 to 0.429).

Why the published code returns NaN: at ``w = 1e-7`` a conv + BN pair multiplies the signal by about
``w * fan_in * w / sqrt(eps)``: the conv by ``w * fan_in`` and the BN, whose input variance is then far
below its ``eps = 1e-5``, by ``w / sqrt(eps)`` (~5e-10 per pair with fan_in 144). In NB201 the
logits are dominated by the shortest path from input to output; when every path through a cell has a
conv (no skip/pooling path), 15 cells take the logits below float32's 1e-45 and they are exactly 0:
min-max normalisation is then 0/0. Measured: 118 of 300 NB201 archs (seed 0, batch 256), mostly good
ones (all-conv cells). float64 only moves the wall: a cell whose shortest conv path has 3 convs costs
~30 decades, 15 of them ~450 decades, below float64's 1e-308.

The fix, exact: min-max normalisation is invariant to a positive scale of its input, so only the logits'
*shape* matters, never their absolute size. The network is evaluated in block floating point: every
activation is a float64 mantissa tensor ``m`` (largest |element| in [0.5, 1)) times ``2**e`` with the
exponent ``e`` a Python float of unbounded range (:class:`ScaledTensor`). The ops of these networks are

- positively homogeneous, ``f(2**e m) = 2**e f(m)`` (conv and linear without bias, ReLU, pooling, views,
  slicing, ``x * 0``): applied to the mantissa, exponent kept;
- sums and concatenations: operands aligned to the largest exponent (``m_i * 2**(e_i - e_max)``, an exact
  power-of-2 shift), so an operand is flushed only where it is below float64 precision next to the
  largest one, which is exactly what float64 with unbounded exponent would round it to;
- batch norm ``g (x - mean) / sqrt(var + eps) + b`` on batch statistics: with ``x = 2**e m``, ``mean`` and
  ``var`` are those of ``m`` scaled by ``2**e`` and ``4**e``, and ``sqrt(var_m 4**e + eps)`` is formed as
  ``2 ** (0.5 * logaddexp2(log2 var_m + 2e, log2 eps))``, so the output is
  ``g (m - mean_m) * 2**(e - 0.5 logaddexp2(...))``: the same number, its exponent kept in a Python float;
- a bias: added as an aligned sum.

So each op returns the value infinite-range float64 arithmetic would (to float64 rounding), and the
min-max normalised logits, hence the score, are those of the formula evaluated with unbounded exponent
range. Where the naive float64 forward does not underflow the two agree to float64 rounding (tested).
Any other op raises: the evaluation is exact only for ops whose scaling rule is known.

Known shortfall (measured, NB201, batch 64, CIFAR-10 test accuracy, 100 archs): the exact scores agree
with the published ones wherever those are finite (Spearman 0.79 on those 57 archs, both), but the archs
the published code leaves NaN (43 of 100, mean accuracy 91.7 vs 87.0) score low (median 0.22 vs 0.38),
so the Spearman over all 100 archs is only 0.32. Exactness fixes the NaN, not the ranking.

Degenerate outputs: a network whose logits do not vary over the batch at one of the weights (e.g. all
``none`` edges: the logits are the classifier bias, 0, for every image) makes min-max normalisation 0/0.
Such an output carries no information about its input; it is scored 0, the score of two identical
normalised outputs and the lowest a score can be. Likewise 0 when no entry is non-zero in both
normalised vectors (possible only for a batch of 1-2 images or ties).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn

from fastnas.proxies._layers import check_images, logits_of
from fastnas.proxies.registry import register_proxy

__all__ = ["epsinas", "epsinas_score", "constant_init_", "ScaledTensor", "scaled_forward",
           "EPSINAS_NB201_WEIGHTS"]

# The constants the paper uses on NAS-Bench-201 (found by its ``search_weights`` on NB201).
EPSINAS_NB201_WEIGHTS: Tuple[float, float] = (1e-7, 1.0)


# --------------------------------------------------------------------------------------------------
# block floating point: a mantissa tensor and an unbounded base-2 exponent
# --------------------------------------------------------------------------------------------------
# A mantissa is renormalised (by an exact power-of-2 shift) only when its largest |element| leaves
# [2**-_WINDOW, 2**_WINDOW]: every shift is a full pass over the tensor, and inside the window float32
# keeps full precision (its normal range is 2**-126 .. 2**128). Alignment flushes an operand only where
# it is below 2**(-126 + 2 * _WINDOW) = 2**-86 of the other: far under float32's 2**-24 precision.
_WINDOW = 20


def _pow2(m: torch.Tensor, k: float) -> torch.Tensor:
    """``m * 2**k`` for any ``k <= 0`` or integer ``k`` (exact unless the result leaves float range)."""
    if k == 0.0:
        return m
    if k < -2200.0:
        return torch.zeros_like(m)
    while abs(k) > 1000.0:      # 2.0 ** k overflows a Python float beyond +-1023
        step = math.copysign(1000.0, k)
        m, k = m * 2.0 ** step, k - step
    return m * 2.0 ** k


def _split(x) -> Tuple[torch.Tensor, float]:
    """(mantissa, exponent) of a ScaledTensor, a plain tensor or a Python number (zero: exponent -inf)."""
    if not isinstance(x, ScaledTensor):
        x = ScaledTensor.of(x if isinstance(x, torch.Tensor) else torch.tensor(float(x)))
    return x.mantissa, x.exp


class ScaledTensor(torch.Tensor):
    """A tensor whose value is ``mantissa * 2**exp``: ``exp`` a Python float of unbounded range, ``-inf``
    exactly when the tensor is all zeros; the mantissa's largest |element| lies in [2**-20, 2**20].
    Shape and dtype are the mantissa's. Torch functions on it follow the rules of the module docstring;
    a function without a rule raises NotImplementedError."""

    exp: float

    @staticmethod
    def of(m: torch.Tensor, exp: float = 0.0, same_peak: bool = False) -> "ScaledTensor":
        """``m * 2**exp``, renormalised. ``same_peak``: ``m`` holds the same values as a ScaledTensor of
        exponent ``exp`` (a view or a copy), so the renormalisation is skipped."""
        with torch._C.DisableTorchFunctionSubclass():
            if not same_peak:
                lo, hi = torch.aminmax(m) if m.numel() else (m.new_zeros(()), m.new_zeros(()))
                peak = max(-float(lo), float(hi))
                if not math.isfinite(peak):
                    raise FloatingPointError(f"epsinas: a mantissa reached {peak}: a single op left the "
                                             f"{m.dtype} range (weights too large?)")
                if peak == 0.0 or exp == -math.inf:
                    m, exp = torch.zeros_like(m), -math.inf
                else:
                    k = math.frexp(peak)[1]            # peak = f * 2**k with f in [0.5, 1)
                    if abs(k) > _WINDOW:
                        m, exp = _pow2(m, -k), exp + k
            out = m.as_subclass(ScaledTensor)
        out.exp = exp
        return out

    @property
    def mantissa(self) -> torch.Tensor:
        with torch._C.DisableTorchFunctionSubclass():
            return self.as_subclass(torch.Tensor)

    def value(self) -> torch.Tensor:
        """The plain tensor ``mantissa * 2**exp`` (it under- or overflows where the dtype does)."""
        return _pow2(self.mantissa, self.exp) if self.exp != -math.inf else torch.zeros_like(self.mantissa)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        with torch._C.DisableTorchFunctionSubclass():
            if name in _METADATA:
                out = func(*_mantissas(args), **_mantissas(kwargs))
                if isinstance(out, torch.Tensor) and out.is_floating_point():  # .data, .T: views
                    return ScaledTensor.of(out, args[0].exp, same_peak=True)
                return out
            rule = _RULES.get(name)
            if rule is None:
                raise NotImplementedError(
                    f"epsinas evaluates the network in block floating point and knows no scaling rule for "
                    f"torch function {name or func!r}; supported: positively homogeneous ops "
                    f"({', '.join(sorted(_HOMOGENEOUS | _SAME_PEAK))}), sums and concatenations, batch norm "
                    f"on batch statistics, conv/linear biases")
            return rule(func, args, kwargs)


def _mantissas(obj):
    """``obj`` with every ScaledTensor inside (tuples, lists, dicts) replaced by its mantissa."""
    if isinstance(obj, ScaledTensor):
        return obj.mantissa
    if isinstance(obj, (tuple, list)):
        return type(obj)(_mantissas(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _mantissas(v) for k, v in obj.items()}
    return obj


def _wrap(out, exp: float, same_peak: bool = False):
    """Floating tensors in ``out`` (a tensor or a tuple of them) -> ScaledTensors of exponent ``exp``;
    integer tensors (pooling indices) and non-tensors are returned as they are."""
    if isinstance(out, torch.Tensor):
        return ScaledTensor.of(out, exp, same_peak) if out.is_floating_point() else out
    if isinstance(out, (tuple, list)):
        return type(out)(_wrap(o, exp, same_peak) for o in out)
    return out


def _check_constants(func, args, kwargs) -> None:
    if any(isinstance(a, ScaledTensor) for a in list(args[1:]) + list(kwargs.values())):
        raise NotImplementedError(f"epsinas: {func.__name__} of two scaled operands has no scaling rule")


def _homogeneous(func, args, kwargs):
    """``f(2**e m) = 2**e f(m)``: the first argument is the scaled one, the others plain constants."""
    _check_constants(func, args, kwargs)
    return _wrap(func(args[0].mantissa, *args[1:], **kwargs), args[0].exp)


def _same_peak(func, args, kwargs):
    """Views and copies (reshape, permute, ...): same values, so same exponent and no renormalisation."""
    _check_constants(func, args, kwargs)
    return _wrap(func(args[0].mantissa, *args[1:], **kwargs), args[0].exp, same_peak=True)


def _product(func, args, kwargs):
    """mul / div: a plain factor is a constant; two scaled operands multiply (divide) their exponents."""
    a, b = args[0], args[1]
    divide = "div" in func.__name__
    if not isinstance(b, ScaledTensor):
        return _wrap(func(a.mantissa, b, **kwargs), a.exp)
    if not isinstance(a, ScaledTensor):
        if divide:
            raise NotImplementedError("epsinas: division by a scaled tensor has no scaling rule")
        return _wrap(func(a, b.mantissa, **kwargs), b.exp)
    return _wrap(func(a.mantissa, b.mantissa, **kwargs), a.exp - b.exp if divide else a.exp + b.exp)


def _aligned(operands) -> Tuple[list, float]:
    """The mantissas of ``operands`` shifted to their largest exponent, and that exponent."""
    parts = [_split(o) for o in operands]
    top = max(e for _, e in parts)
    if top == -math.inf:
        return [m for m, _ in parts], -math.inf
    return [_pow2(m, e - top) if e != -math.inf else m for m, e in parts], top


def _sum(func, args, kwargs):
    """add / sub, reflected and in-place forms too (computed out of place): aligned operands. The shift
    of the smaller operand rides in ``torch.add``'s ``alpha`` (one pass instead of two)."""
    if kwargs.get("alpha", 1) != 1:
        raise NotImplementedError("epsinas: add/sub with alpha has no scaling rule")
    (ma, ea), (mb, eb) = _split(args[0]), _split(args[1])
    sign = -1.0 if "sub" in func.__name__ else 1.0
    if ea == -math.inf and eb == -math.inf:
        return ScaledTensor.of(ma + mb)
    if ea >= eb:        # 2**-inf and 2**-1100 are 0.0: a negligible operand is flushed, not an error
        return ScaledTensor.of(torch.add(ma, mb, alpha=sign * 2.0 ** (eb - ea)), ea)
    out = torch.add(mb, ma, alpha=sign * 2.0 ** (ea - eb))      # b +- a 2**(ea - eb)
    return ScaledTensor.of(out if sign > 0 else -out, eb)


def _concat(func, args, kwargs):
    """cat / stack of a sequence of tensors: aligned operands."""
    ms, top = _aligned(args[0])
    return ScaledTensor.of(func(ms, *args[1:], **kwargs), top)


def _with_bias(func, args, kwargs):
    """conv / linear: the bias-free op is homogeneous; a non-zero bias is then added as an aligned sum
    (over the channel dimension, 1, or the last one for linear)."""
    x, weight = args[0], args[1]
    bias = args[2] if len(args) > 2 else kwargs.pop("bias", None)
    out = ScaledTensor.of(func(x.mantissa, weight, None, *args[3:], **kwargs), x.exp)
    if bias is None or not bool(bias.any()):
        return out
    shape = (-1,) if func.__name__ == "linear" else (-1,) + (1,) * (out.dim() - 2)
    (mo, mb), top = _aligned([out, bias.detach().reshape(shape)])
    return ScaledTensor.of(mo + mb, top)


def _batch_norm(func, args, kwargs):
    """``F.batch_norm`` on batch statistics, ``w (x - mean) / sqrt(var + eps) + b`` per channel (dim 1).

    With ``x = 2**e m``: ``w (m - mean_m) 2**e / sqrt(var_m 4**e + eps)``. torch's own batch norm with
    ``eps = tiny`` (one fused pass, 2.5x faster than ``torch.var_mean`` here) gives ``(m - mean_m) * invstd``
    and ``invstd = 1 / sqrt(var_m + tiny)``; one per-channel multiply by
    ``w 2**e / (invstd sqrt(var_m 4**e + eps))``, its exponent formed in log space, finishes it.
    """
    names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    p = {**dict(zip(names, args)), **kwargs}
    x, weight, bias, eps = p["input"], p.get("weight"), p.get("bias"), p.get("eps", 1e-5)
    if not p.get("training", False) and p.get("running_mean") is not None:
        raise NotImplementedError("epsinas runs batch norm on batch statistics (train mode); got an eval-mode "
                                  "batch norm with running statistics")
    m, e = x.mantissa, x.exp
    view = [1, -1] + [1] * (m.dim() - 2)
    if e == -math.inf:
        out = ScaledTensor.of(torch.zeros_like(m))
    else:
        tiny = torch.finfo(m.dtype).tiny
        xhat, _, invstd = torch.native_batch_norm(m, None, None, None, None, True, 0.0, tiny)
        invstd = invstd.double()
        var = (invstd.reciprocal() ** 2 - tiny).clamp_min(0.0)
        # log2 of 2**e / (invstd * sqrt(var * 4**e + eps)), per channel; var * 4**e may be 4**-3000
        log2_factor = e - torch.log2(invstd) - 0.5 * torch.logaddexp2(torch.log2(var) + 2.0 * e,
                                                                     var.new_tensor(math.log2(eps)))
        sign = torch.ones_like(log2_factor)
        if weight is not None:
            w = weight.detach().double()
            log2_factor, sign = log2_factor + torch.log2(w.abs()), torch.sign(w)
        top = float(log2_factor.max())
        factor = sign * torch.exp2(log2_factor - top)
        # a factor that is 1 on every channel (a constant-weight network: every channel alike) is all
        # in the exponent already: skip the pass over the tensor
        out = ScaledTensor.of(xhat if bool((factor == 1.0).all()) else xhat * factor.to(m.dtype).view(view), top)
    if bias is None or not bool(bias.any()):
        return out
    (mo, mb), top = _aligned([out, bias.detach().view(view)])
    return ScaledTensor.of(mo + mb, top)


def _dropout(func, args, kwargs):
    p = {**dict(zip(("input", "p", "training", "inplace"), args)), **kwargs}
    if p.get("training", True) and p.get("p", 0.5) > 0:
        raise NotImplementedError("epsinas: active dropout makes the forward random; use p=0 or eval mode")
    return p["input"]


_HOMOGENEOUS = {
    "relu", "relu_", "avg_pool2d", "max_pool2d", "_max_pool2d", "max_pool2d_with_indices", "adaptive_avg_pool2d",
    "adaptive_max_pool2d", "_adaptive_max_pool2d", "adaptive_max_pool2d_with_indices", "__getitem__", "mean",
    "sum", "pad", "narrow", "chunk", "split",
}
_SAME_PEAK = {"view", "reshape", "flatten", "contiguous", "permute", "transpose", "squeeze", "unsqueeze",
              "expand", "clone", "detach", "neg", "__neg__"}
_RULES = {
    **{n: _homogeneous for n in _HOMOGENEOUS},
    **{n: _same_peak for n in _SAME_PEAK},
    **{n: _product for n in ("mul", "mul_", "__mul__", "__rmul__", "__imul__", "div", "div_", "__truediv__",
                             "__itruediv__")},
    **{n: _sum for n in ("add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__isub__")},
    "__rsub__": lambda func, args, kwargs: _sum(torch.sub, (args[1], args[0]), kwargs),
    "cat": _concat, "concat": _concat, "stack": _concat,
    "conv1d": _with_bias, "conv2d": _with_bias, "conv3d": _with_bias, "linear": _with_bias,
    "batch_norm": _batch_norm, "dropout": _dropout,
    # casts keep the mantissa dtype the proxy chose
    **{n: (lambda func, args, kwargs: args[0]) for n in ("to", "float", "double", "cpu")},
}
# Functions that read metadata (shape, device, ...) or print: answered from the mantissa.
_METADATA = {"size", "dim", "numel", "__len__", "__get__", "is_contiguous", "stride", "element_size",
             "__repr__", "__format__", "__bool__", "data_ptr", "__hash__"}


def scaled_forward(model: nn.Module, images: torch.Tensor) -> ScaledTensor:
    """The output of ``model`` on ``images`` (B, C, H, W) in block floating point: the logits (the first
    element of a tuple output) as a :class:`ScaledTensor`, (B, classes). The mantissa has the images'
    dtype (give the model's). Nothing under- or overflows, whatever the depth (module docstring)."""
    with torch.no_grad():
        out = logits_of(model(ScaledTensor.of(images.detach().clone())))
    if not isinstance(out, ScaledTensor):
        raise TypeError(f"epsinas: {type(model).__name__} returned a {type(out).__name__} that is not computed "
                        f"from its input by torch ops; it cannot be evaluated in block floating point")
    return out


# --------------------------------------------------------------------------------------------------
# the proxy
# --------------------------------------------------------------------------------------------------
def constant_init_(model: nn.Module, weight: float) -> nn.Module:
    """The published ``initialize_weights``: every module's ``weight`` = ``weight`` (affine BNs too, not
    BNs without affine), every module's ``bias`` = 0. Other parameters are left as they are."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(getattr(m, "weight", None), torch.Tensor):
                m.weight.fill_(weight)
            if isinstance(getattr(m, "bias", None), torch.Tensor):
                m.bias.zero_()
    return model


def epsinas_score(y1: torch.Tensor, y2: torch.Tensor) -> float:
    """The epsinas formula on two outputs of the same shape (any positive scale each).

    ``p_i = (y_i - min y_i) / (max y_i - min y_i)``; entries where ``p_i == 0`` are left out (the
    published ``preds[preds == 0] = nan``); ``score = mean |p1 - p2| (over entries non-zero in both) /
    mean (non-zero entries of p1 and p2)``. A constant ``y_i`` (no min-max normalisation exists), or no entry
    non-zero in both, gives 0 (see the module docstring).
    """
    if y1.shape != y2.shape:
        raise ValueError(f"epsinas: outputs of different shapes {tuple(y1.shape)} and {tuple(y2.shape)}")
    ps = []
    for y in (y1, y2):
        y = y.detach().reshape(-1).to(torch.float64)
        if not bool(torch.isfinite(y).all()):
            raise ValueError("epsinas: an output holds inf/NaN (evaluate it with scaled_forward)")
        lo, hi = y.min(), y.max()
        if not bool(hi > lo):
            return 0.0
        ps.append((y - lo) / (hi - lo))
    p1, p2 = ps
    both = (p1 != 0) & (p2 != 0)
    if not bool(both.any()):
        return 0.0
    nonzero = torch.cat([p1[p1 != 0], p2[p2 != 0]])
    return float((p1[both] - p2[both]).abs().mean() / nonzero.mean())


_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@register_proxy("epsinas", higher_is_better=True, uses_labels=False, batch_size=256,
                paper="Gracheva 2021, Trainless model performance estimation based on random weights "
                      "initialisations (epsinas)")
def epsinas(model: nn.Module, images: torch.Tensor, labels: Optional[torch.Tensor] = None, *,
            weights: Sequence[float] = EPSINAS_NB201_WEIGHTS, precision: str = "float32") -> float:
    """epsinas of ``model`` on ``images`` (B, 3, H, W): two constant-weight forwards, the normalised
    difference of their min-max normalised logits (module docstring). Higher is better.

    ``weights``: the two constants. ``precision``: the mantissa dtype, ``"float32"`` (the published
    rounding) or ``"float64"`` (6x slower on the CPU: a NB201 forward pair at batch 256 measured 6.2 s
    float32, 39.7 s float64, one thread). The model is cast to it, put in train mode (batch statistics in
    every BN, as published) and its weights overwritten.
    """
    check_images("epsinas", images)
    if images.shape[0] < 3:  # min-max normalised over the batch, 1 or 2 outputs always score 0
        raise ValueError(f"epsinas min-max normalises the outputs over the batch: it needs a batch of at "
                         f"least 3 images, got {images.shape[0]}")
    if (not isinstance(weights, (tuple, list)) or len(weights) != 2
            or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and 0 < w < math.inf
                       for w in weights)):
        raise ValueError(f"epsinas: weights must be two positive finite constants, got {weights!r}")
    if precision not in _DTYPES:
        raise ValueError(f"epsinas: precision must be one of {sorted(_DTYPES)}, got {precision!r}")
    dtype = _DTYPES[precision]
    if max(weights) > torch.finfo(dtype).max:
        raise ValueError(f"epsinas: weights {tuple(weights)} do not fit in {precision}")
    model = model.to(dtype).train()
    outputs = []
    for w in weights:
        constant_init_(model, w)
        logits = scaled_forward(model, images.to(dtype)).mantissa
        outputs.append(logits[:, 0] if logits.dim() == 2 else logits)    # one output: module docstring
    return epsinas_score(*outputs)
