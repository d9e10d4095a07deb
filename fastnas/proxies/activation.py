"""Activation-pattern proxies: SWAP, regularised SWAP and NWOT.

All three read only which ReLU units are active on a batch of images, through per-module forward hooks
that reduce each layer on the spot (SWAP: packed into a pattern bitmap, NWOT: added into an (S, S)
matrix), so no layer's activations outlive its hook.

Shared trick: in an NB201 cell every conv edge starts with its own ReLU, and the 3 edges leaving node 0
(2 leaving node 1) apply it to the same tensor, so up to half of the hooked ReLUs see an input that an
earlier ReLU of the same pass already saw. A ReLU whose input is the very same tensor object at the same
version (``_version``: no in-place write since) produces the same output, so its contribution is taken
from the first one (:class:`_SameInputs`) instead of being recomputed. This is exact.

Degenerate networks (``none`` edges everywhere): every score is still finite; see each proxy.
"""
from __future__ import annotations

import math
import weakref
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn as nn

from fastnas import _ext
from fastnas.proxies._layers import idle_parameter_ids
from fastnas.proxies.packing import PatternCounter
from fastnas.proxies.registry import register_proxy

__all__ = ["swap", "reg_swap", "nwot", "swap_count", "swap_counts_batched", "nwot_kernel", "sign_agreement", "gaussian_init_", "count_parameters_k",
           "REG_SWAP_MU", "REG_SWAP_SIGMA", "SWAP_DARTS_NETWORK"]

# SWAP scores a DARTS genotype in a 3-channel, 1-cell NetworkCIFAR without a stem, as the SWAP code does
# (``Network(3, 10, 1, genotype)`` in pym1024/SWAP src/search_space/networks.py: the one reduction cell's
# preprocessing reads the image): at C=16 and 8 cells, 16 images already show all 2**16 patterns
# (65535 measured for every genotype tried), so the count could not rank anything.
SWAP_DARTS_NETWORK = {"darts_channels": 3, "darts_layers": 1, "darts_stem": False}

# Regularised SWAP's (mu, sigma) for NB201 (C=16, N=5) CIFAR-10. The published code takes them as
# arguments and its repository sets no NB201 values, so they were chosen here on data: a grid
# (mu 200..2500 k step 100, sigma 1e4..8e6) on 150 NB201 archs (seeded draw from the NAS-Bench-Suite-Zero
# archs of shared/data, real CIFAR-10 images, 4 repeats), maximising Spearman with cifar10_test. Best:
# mu = 1000 k, sigma = 1e6 (0.908; plain SWAP 0.811, #params 0.857), on a flat ridge (the 12 best cells,
# 0.906-0.908, run from mu 900 / sigma 5e5 to mu 2400 / sigma 4e6). On 110 other archs (disjoint, same
# protocol): reg_swap 0.902, swap 0.809, #params 0.804.
REG_SWAP_MU = 1000.0
REG_SWAP_SIGMA = 1.0e6


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def _check_images(images: torch.Tensor, name: str) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name}: images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() < 2 or images.shape[0] < 1:
        raise ValueError(f"{name}: images must be a batch (B >= 1, ...), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{name}: images must be floating point (normalised), got {images.dtype}")


def _relus(model: nn.Module) -> List[nn.ReLU]:
    return [m for m in model.modules() if isinstance(m, nn.ReLU)]


def gaussian_init_(model: nn.Module) -> nn.Module:
    """SWAP's ``network_weight_gaussian_init``: Conv2d and Linear weights ~ N(0, 1), their biases 0;
    BatchNorm2d / GroupNorm weight 1, bias 0. Draws from torch's global RNG, in ``model.modules()`` order.

    One pass over the modules. The published ``network.apply(network_weight_gaussian_init)`` re-runs the
    init on every module's subtree, drawing each weight once per ancestor and keeping the root's draw:
    the same N(0, 1) weights in distribution, ~depth x the RNG work, other draws."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    return model


def count_parameters_k(model: nn.Module) -> float:
    """Parameters in thousands, those named ``auxiliary`` excluded (SWAP's ``count_parameters``), and those
    of switched-off ops (:func:`fastnas.proxies._layers.idle_parameter_ids`): pruning compares the supernet
    with and without an op, and with them counted the regularisation factor would cancel out."""
    idle = idle_parameter_ids(model)
    return sum(p.numel() for n, p in model.named_parameters() if "auxiliary" not in n and id(p) not in idle) / 1e3


class _SameInputs:
    """Remembers, within one forward pass, the tensors that hooked ReLUs received and what each yielded.

    ``lookup(x)`` returns the stored value when ``x`` is the very object seen before and was not written
    in place since (same ``_version``), else None. Weak references: nothing here keeps a tensor alive,
    and a dead entry can never match a new tensor that reuses its ``id``.
    """

    def __init__(self):
        self._entries: Dict[int, Tuple[weakref.ref, int, object]] = {}

    def lookup(self, x: torch.Tensor):
        entry = self._entries.get(id(x))
        if entry is not None and entry[0]() is x and entry[1] == x._version:
            return entry[2]
        return None

    def store(self, x: torch.Tensor, value) -> None:
        self._entries[id(x)] = (weakref.ref(x), x._version, value)


def _forward_with_hooks(model: nn.Module, images: torch.Tensor, hook: Callable) -> None:
    """One no-grad forward with ``hook(module, inputs, output)`` on every nn.ReLU; handles always removed."""
    handles = [m.register_forward_hook(hook) for m in _relus(model)]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()


# --------------------------------------------------------------------------------------------------
# SWAP
# --------------------------------------------------------------------------------------------------
def swap_count(model: nn.Module, images: torch.Tensor) -> int:
    """Distinct sample-wise activation patterns of one forward pass of ``model`` on images (S, ...).

    Every nn.ReLU whose input is 4-D contributes its output, flattened per sample to (S, units); the
    count is over the union of all those units (= unique columns of the concatenated sign matrix).
    0 when no ReLU with a 4-D input runs. The model is used as it is (weights, BN mode).
    """
    S = images.shape[0]
    counter = PatternCounter(S, images.device)
    same = _SameInputs()

    def hook(module, inputs, output):
        x = inputs[0]
        if x.dim() != 4 or same.lookup(x) is not None:   # same input -> same patterns, already counted
            return
        counter.add(output.reshape(S, -1))
        same.store(x, True)

    _forward_with_hooks(model, images, hook)
    return counter.count()


def _mean_swap(model: nn.Module, images: torch.Tensor, repeats: int, gaussian_init: bool,
               batch_repeats=None) -> float:
    if int(repeats) < 1:
        raise ValueError(f"swap: repeats must be >= 1, got {repeats}")
    model.train()      # BN normalises with batch statistics, as in the SWAP code (fresh nets are in train mode)
    # Without re-initialisation (or without weights to re-initialise) every repeat is the same network.
    has_weights = any(True for _ in model.parameters())
    repeats = int(repeats) if gaussian_init and has_weights else 1
    chunk = _repeat_chunk(batch_repeats, repeats, images, model)
    total, done = 0, 0
    while done < repeats:
        n = min(chunk, repeats - done)
        if n == 1:
            if gaussian_init:
                gaussian_init_(model)
            total += swap_count(model, images)
        else:
            total += sum(swap_counts_batched(model, images, n))
        done += n
    return total / repeats


def _repeat_chunk(batch_repeats, repeats: int, images: torch.Tensor, model: nn.Module) -> int:
    """Re-initialisations per forward. ``batch_repeats`` None: all of them on CUDA (one forward instead
    of ``repeats`` small ones; not yet measured on a GPU) and on the CPU for small networks, else 1.

    Measured on the CPU (2 cores, 16 images, 32 repeats, float32): SWAP's DARTS protocol network (C=3,
    1 cell, 2.2 k parameters for the first genotype of darts_archs_dev.csv) 0.157 -> 0.090 s batched,
    where the per-forward overhead dominates; an NB201 network (C=16, N=5, 1.29 M parameters for a
    3x3-heavy cell, 73 k for all-none) 2.07 -> 3.66 s, where the convolutions are compute-bound and the
    vmapped ones run as grouped convolutions (0.63 -> 0.53 s at 8 repeats).

    Batching needs the bitmap counter (S <= 24 samples); otherwise 1. A chunk is capped so that the
    packed codes of one forward (chunk x units int32) stay under ``BATCHED_MAX_BYTES``.
    """
    if batch_repeats is None:
        small = sum(p.numel() for p in model.parameters()) <= CPU_BATCH_MAX_PARAMS
        batch_repeats = repeats if images.device.type == "cuda" or small else 1
    if isinstance(batch_repeats, bool) or not isinstance(batch_repeats, int) or batch_repeats < 1:
        raise ValueError(f"swap: batch_repeats must be a positive integer or None, got {batch_repeats!r}")
    if images.shape[0] > BATCHED_MAX_SAMPLES or batch_repeats == 1:
        return 1
    return max(1, min(batch_repeats, BATCHED_MAX_BYTES // max(1, 4 * _relu_units(model, images))))


def _relu_units(model: nn.Module, images: torch.Tensor) -> int:
    """Units per sample over the hooked ReLUs, from one no-grad forward on a single image (BN in eval
    mode there, so a batch of one is fine and no running statistic changes)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if inputs[0].dim() == 4:
            total += output[0].numel()

    was_training = model.training
    model.eval()
    try:
        _forward_with_hooks(model, images[:1], hook)
    finally:
        model.train(was_training)
    return total


# The packed codes of one batched forward (repeats x units int32) stay under this.
BATCHED_MAX_BYTES = 256 << 20

# CPU: batch the repeats of networks up to this size (see _repeat_chunk's measurements).
CPU_BATCH_MAX_PARAMS = 100_000

# Batched repeats pack each unit's signs into an int32 inside the vmapped forward and mark them in a
# (repeats, 2**S) bitmap: S <= 24 keeps both small (the bitmap counter's own limit).
BATCHED_MAX_SAMPLES = 24


def swap_counts_batched(model: nn.Module, images: torch.Tensor, repeats: int) -> List[int]:
    """SWAP counts of ``repeats`` Gaussian re-initialisations of ``model`` from ONE forward, vmapped
    over the stacked weight sets (:func:`torch.func.functional_call`), instead of ``repeats`` forwards.

    The weights are drawn exactly as the sequential loop draws them (``gaussian_init_(model)`` once per
    repeat, from torch's global RNG), so the counts equal those of ``repeats`` calls of
    :func:`swap_count` after ``gaussian_init_`` (tested in float64; in float32 a pre-activation within
    rounding of 0 can flip sign between the two convolution paths). The model keeps the last draw; its
    BN buffers are not updated. Images (S <= 24, ...); returns one count per repeat.
    """
    from torch.func import functional_call, vmap

    S = images.shape[0]
    if S > BATCHED_MAX_SAMPLES:
        raise ValueError(f"swap: batched repeats need <= {BATCHED_MAX_SAMPLES} samples, got {S}")
    draws = []
    for _ in range(repeats):
        gaussian_init_(model)
        draws.append({n: t.detach().clone() for n, t in model.named_parameters()})
    params = {n: torch.stack([d[n] for d in draws]) for n in draws[0]}
    buffers = {n: b.detach().unsqueeze(0).expand(repeats, *b.shape).clone() for n, b in model.named_buffers()}
    bits = (1 << torch.arange(S, device=images.device, dtype=torch.int32)).view(S, 1)
    relus = _relus(model)

    def packed_patterns(p, b):
        codes, seen_inputs = [], {}

        def hook(module, inputs, output):
            x = inputs[0]
            # same input object -> same patterns, already counted (the dict holds the inputs, so no id
            # is recycled during the pass)
            if x.dim() != 4 or seen_inputs.get(id(x)) is x:
                return
            seen_inputs[id(x)] = x
            codes.append(((output.reshape(S, -1) > 0).to(torch.int32) * bits).sum(0, dtype=torch.int32))

        handles = [m.register_forward_hook(hook) for m in relus]
        try:
            functional_call(model, (p, b), (images,))
        finally:
            for h in handles:
                h.remove()
        return torch.cat(codes) if codes else torch.zeros(0, dtype=torch.int32, device=images.device)

    with torch.no_grad():
        codes = vmap(packed_patterns, randomness="different")(params, buffers)   # (repeats, units)
    if codes.shape[1] == 0:
        return [0] * repeats
    seen = torch.zeros(1 << S, dtype=torch.bool, device=codes.device)
    counts = []
    for r in range(repeats):   # one 2**S bitmap reused: repeats x 2**S bools would be 512 MiB at S=24
        seen.zero_()
        seen[codes[r].long()] = True
        counts.append(seen.sum())
    return torch.stack(counts).tolist()


@register_proxy("swap", higher_is_better=True, uses_labels=False, batch_size=16,
                paper="Peng et al. 2024, SWAP-NAS: Sample-Wise Activation Patterns for Ultra-fast NAS (ICLR)",
                network=SWAP_DARTS_NETWORK)
def swap(model: nn.Module, images: torch.Tensor, labels=None, *, repeats: int = 32,
         gaussian_init: bool = True, batch_repeats=None) -> float:
    """SWAP score: the mean over ``repeats`` N(0, 1) re-initialisations (:func:`gaussian_init_`) of the
    number of distinct activation patterns of the batch (16 images, BN in train mode), as the published
    ``correlation.py`` (``--repeats 32 --input_samples 16``).

    Re-initialisations draw from torch's global RNG in sequence, so ``torch.manual_seed(s)`` before the
    call fixes the score. Finite always: a network with no 4-D ReLU scores 0. ``batch_repeats``: how
    many re-initialisations run in one vmapped forward (:func:`swap_counts_batched`; None: all on
    CUDA and, on the CPU, for networks up to ``CPU_BATCH_MAX_PARAMS`` parameters, else one at a time);
    the score is the same either way.
    """
    _check_images(images, "swap")
    return _mean_swap(model, images, repeats, gaussian_init, batch_repeats)


@register_proxy("reg_swap", higher_is_better=True, uses_labels=False, batch_size=16,
                paper="Peng et al. 2024, SWAP-NAS: Sample-Wise Activation Patterns for Ultra-fast NAS (ICLR)",
                network=SWAP_DARTS_NETWORK)
def reg_swap(model: nn.Module, images: torch.Tensor, labels=None, *, repeats: int = 32,
             gaussian_init: bool = True, mu: float = REG_SWAP_MU, sigma: float = REG_SWAP_SIGMA,
             batch_repeats=None) -> float:
    """Regularised SWAP: ``swap * exp(-(P - mu)**2 / sigma)``, P the parameter count in thousands
    (:func:`count_parameters_k`), exactly the published ``cal_regular_factor``.

    Defaults mu = 1000 (thousand parameters), sigma = 1e6: chosen for NB201 CIFAR-10 on a tuning set
    (:data:`REG_SWAP_MU`); other spaces or datasets need their own. The factor depends only on the
    parameter count; it underflows to 0 for a P far from mu (score 0, finite).
    """
    _check_images(images, "reg_swap")
    if not sigma > 0:
        raise ValueError(f"reg_swap: sigma must be > 0, got {sigma}")
    factor = math.exp(-((count_parameters_k(model) - mu) ** 2) / sigma)
    return _mean_swap(model, images, repeats, gaussian_init, batch_repeats) * factor


# --------------------------------------------------------------------------------------------------
# NWOT
# --------------------------------------------------------------------------------------------------
# float32 sums of 0/1 products are exact up to 2**24 terms; longer rows are reduced in chunks.
_EXACT_F32_TERMS = 1 << 24


def _hamming_kernel(codes: torch.Tensor) -> torch.Tensor:
    """codes: bool (S, U) -> float64 (S, S), ``c c^T + (1 - c)(1 - c)^T`` with c = codes as 0/1.

    The portable path of :func:`sign_agreement` (GPUs, and CPUs without the extension). Entry (i, j)
    counts the units where samples i and j agree, U - hamming(c_i, c_j). With n = c 1 (active units per
    sample) and G = c c^T: ``(1 - c)(1 - c)^T = U - n_i - n_j + G``, so the sum is
    ``2 G - n 1^T - 1 n^T + U``, and n is G's diagonal: one matrix product instead of the two (and the
    two (S, U) float copies) of the published code. Exact: G's entries are integers < 2**24 per chunk in
    float32, combined in float64.
    """
    S, U = codes.shape
    gram = torch.zeros(S, S, dtype=torch.float64, device=codes.device)
    for chunk in codes.split(_EXACT_F32_TERMS, dim=1):
        c = chunk.to(torch.float32)
        gram += (c @ c.T).to(torch.float64)
    n = gram.diagonal()
    return 2 * gram - n[:, None] - n[None, :] + U


def sign_agreement(acts: torch.Tensor, use_extension: bool = True) -> torch.Tensor:
    """acts: (S, U) real -> float64 (S, S): entry (i, j) = number of units u where
    ``acts[i, u] > 0`` and ``acts[j, u] > 0`` agree (both or neither). NaN counts as not active.

    On the CPU, for float32/float64, the compiled kernel ``fastnas._C.sign_agreement`` packs each
    sample's signs 64 to a word and sums ``popcount(a_i XOR a_j)`` over the words: the Hamming kernel
    as one "matrix product" over the packed codes, measured 0.48 ms for a (128, 16384) input against
    3.8 ms for the float GEMM of :func:`_hamming_kernel` (2-core CPU). Elsewhere, or with
    ``use_extension=False``, the GEMM path. Both are exact integers and equal (tested).
    """
    if use_extension and acts.device.type == "cpu" and acts.dtype in (torch.float32, torch.float64):
        ext = _ext.extension()
        if ext is not None:
            if acts.shape[1] > 1 and acts.stride(1) != 1:
                acts = acts.contiguous()
            return ext.sign_agreement(acts).to(torch.float64)
    return _hamming_kernel(acts > 0)


def _per_sample_units(x: torch.Tensor) -> torch.Tensor:
    """(S, ...) -> (S, units) without a copy where possible. Agreement counts do not depend on the
    order of the units, so a channels_last (S, C, H, W) tensor is flattened in its memory order,
    (S, H, W, C), which is a view."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
    return x.reshape(x.shape[0], -1)


def nwot_kernel(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """NWOT's K (S, S) float64 for one forward pass: the sum over every nn.ReLU call of
    ``c c^T + (1 - c)(1 - c)^T``, c = 1[ReLU input > 0] flattened per sample (S, units).

    ``relu(x) > 0`` exactly when ``x > 0``, so an in-place ReLU (whose hook sees its input already
    rectified) yields the same codes. The model is used as it is.
    """
    S = images.shape[0]
    K = torch.zeros(S, S, dtype=torch.float64, device=images.device)
    same = _SameInputs()

    def hook(module, inputs, output):
        nonlocal K
        x = inputs[0]
        k = same.lookup(x)
        if k is None:
            k = sign_agreement(_per_sample_units(x))
            same.store(x, k)
        K += k

    _forward_with_hooks(model, images, hook)
    return K


@register_proxy("nwot", higher_is_better=True, uses_labels=False, batch_size=128,
                paper="Mellor et al. 2021, Neural Architecture Search without Training (ICML)")
def nwot(model: nn.Module, images: torch.Tensor, labels=None, *, bn_train: bool = True,
         channels_last: bool = True) -> float:
    """NWOT: ``log |det K|`` of :func:`nwot_kernel` on a batch of 128 images (the paper), default
    initialisation, BN in train mode (``bn_train``; the published code runs the fresh network as is).

    ``channels_last``: feed 4-D images in channels_last memory format (the model is not touched), so
    that convolutions run in the faster NHWC kernels: the forward pass, most of NWOT's cost, measured
    1.8x faster on the 2-core CPU (8 NB201 archs, batch 128: 2.11 -> 1.18 s). The kernel's different
    summation order moves pre-activations by rounding only, which flips the sign of a handful of
    near-zero units; measured on 8 NB201 archs the score moved by at most 1e-7 relative (tested
    within 1e-5 of the published code's value). ``channels_last=False`` takes the images as given; with
    contiguous images that reproduces the published code's K bit for bit.

    Degenerate K: K is a sum of Gram matrices of 0/1 codes, so it is a positive semi-definite integer
    matrix, and a non-singular one has det >= 1, log det >= 0. A singular K (two samples with identical
    codes in every layer, or no ReLU at all) scores 0.0, the floor of every non-singular network (the
    published code returns -inf there). The same floor catches a numerically non-positive determinant.
    """
    _check_images(images, "nwot")
    model.train(bn_train)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    sign, logdet = torch.linalg.slogdet(nwot_kernel(model, images))
    logdet = float(logdet)
    return max(logdet, 0.0) if float(sign) > 0 and math.isfinite(logdet) else 0.0
