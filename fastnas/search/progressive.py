"""DrNAS's progressive scheme: search stages with a growing channel fraction and fewer ops per edge.

DrNAS (Chen et al., ICLR 2021, section 3.3) searches the partial-channel supernet in stages. Stage 1
trains a narrow supernet (each edge's ops see C / K channels, K large) over many ops; at the end of a
stage every edge keeps only its ``n`` ops of largest Dirichlet concentration, and the next stage
samples more channels (smaller K), which the pruned op set pays for in memory. The defaults are the
paper's: DARTS space K 6 -> 4 with 7 -> 4 ops per edge (stage 1 leaves ``none`` out), 25 + 25 epochs of a
50-epoch search; NB201 K 4 -> 2 with 5 -> 3 ops.

Moving to the next stage rebuilds the supernet with the new K and the kept ops, and carries every
weight over. Tensors whose shape does not depend on K (stem, cell preprocessing, classifier, BatchNorm
of the cells) are copied; an op's channel dimensions grow from C / K_old to C / K_new by the Net2Wider
rule (Chen et al., ICLR 2016), which DrNAS's ``wider`` also follows: new channel j copies old channel
``idx[j]`` (idx = the old channels, then random old channels), and along a convolution's input-channel
dimension the copies are divided by how often their source was replicated, so a widened layer sums the
same total weight per source channel. The architecture parameters keep their shape (pruned ops get
-inf in the derivation), so their Adam state carries over; the weight optimizer restarts its momentum
at the current point of the cosine schedule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

__all__ = ["DRNAS_STAGES", "Stage", "stage_plan", "stage_of", "initial_op_mask", "top_ops_mask",
           "widen_state_dict", "combine_masks", "default_init_channels"]

# space -> ((K, ops per edge) per stage): DrNAS's progressive settings.
DRNAS_STAGES: Dict[str, Tuple[Tuple[int, int], ...]] = {"darts": ((6, 7), (4, 4)), "nb201": ((4, 5), (2, 3))}


@dataclass(frozen=True)
class Stage:
    """One stage: its index, its first epoch (0-based), its epoch count, K and the ops kept per edge."""

    index: int
    first_epoch: int
    epochs: int
    partial_channels: int
    ops_per_edge: int


def stage_plan(stages: Sequence[Tuple[int, int]], epochs: int) -> List[Stage]:
    """Splits ``epochs`` evenly over ``stages`` ((K, ops) pairs), the remainder going to the last stages
    (50 epochs, 2 stages: 25 + 25; 3 epochs: 1 + 2). ValueError when there are fewer epochs than stages."""
    n = len(stages)
    if epochs < n:
        raise ValueError(f"epochs={epochs} cannot hold {n} progressive stages (one epoch each at least)")
    base, extra = divmod(epochs, n)
    plan, first = [], 0
    for i, (k, ops) in enumerate(stages):
        length = base + (1 if i >= n - extra else 0)
        plan.append(Stage(i, first, length, int(k), int(ops)))
        first += length
    return plan


def stage_of(plan: Sequence[Stage], epoch: int) -> Stage:
    """The stage that runs ``epoch`` (0-based)."""
    for stage in reversed(plan):
        if epoch >= stage.first_epoch:
            return stage
    return plan[0]


def initial_op_mask(primitives: Sequence[str], ops_per_edge: int,
                    shapes: Mapping[str, Tuple[int, int]]) -> Optional[Dict[str, torch.Tensor]]:
    """The first stage's mask: every op (``ops_per_edge == len(primitives)``: None) or every op but
    ``none`` (``len(primitives) - 1``, DrNAS's DARTS stage 1). ``shapes``: ``{kind: (E, n_ops)}``."""
    n = len(primitives)
    if ops_per_edge == n:
        return None
    if ops_per_edge == n - 1 and "none" in primitives:
        keep = torch.tensor([p != "none" for p in primitives])
        return {kind: keep.expand(shape).clone() for kind, shape in shapes.items()}
    raise ValueError(f"the first progressive stage keeps all {n} ops or all but 'none' ({n - 1}), not {ops_per_edge}")


def combine_masks(*masks: Optional[Mapping[str, torch.Tensor]]) -> Optional[Dict[str, torch.Tensor]]:
    """Elementwise AND of the given masks (None = everything kept)."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = {k: v.clone().bool() for k, v in present[0].items()}
    for m in present[1:]:
        for k in out:
            out[k] &= m[k].bool()
    return out


def top_ops_mask(masked_alphas: Mapping[str, torch.Tensor], n: int) -> Dict[str, torch.Tensor]:
    """Per edge, the ``n`` ops of largest alpha among the active ones (pruned ops carry -inf and are
    never kept back): ``{kind: (E, n_ops) bool}``. DrNAS ranks by concentration elu(alpha) + 1, which
    is monotonic in alpha. An edge with fewer than ``n`` active ops keeps them all."""
    out = {}
    for kind, a in masked_alphas.items():
        a = a.detach().cpu().double()
        order = torch.argsort(a, dim=-1, descending=True)[:, :n]
        keep = torch.zeros_like(a, dtype=torch.bool).scatter_(1, order, True)
        out[kind] = keep & torch.isfinite(a)
    return out


def _channel_map(old: int, new: int, generator: torch.Generator, cache: Dict[Tuple[int, int], torch.Tensor]):
    """(new,) int64: the old channels in order, then ``new - old`` random old channels; one map per
    (old, new) pair so the out-channels of one layer and the in-channels of the next agree."""
    key = (old, new)
    if key not in cache:
        extra = torch.randint(0, old, (new - old,), generator=generator)
        cache[key] = torch.cat([torch.arange(old), extra])
    return cache[key]


def _halves_map(old: int, new: int, generator, cache) -> torch.Tensor:
    """The channel map of a concat of two halves each widened by the (old/2 -> new/2) map: what a
    FactorizedReduce's BatchNorm sees (its channels are conv_1's outputs, then conv_2's)."""
    half = _channel_map(old // 2, new // 2, generator, cache)
    return torch.cat([half, half + old // 2])


def _widen(t: torch.Tensor, shape: torch.Size, generator, cache, halves: bool = False) -> torch.Tensor:
    out = t
    for dim, (o, n) in enumerate(zip(t.shape, shape)):
        if o == n:
            continue
        if n < o or t.dim() != len(shape):
            raise ValueError(f"cannot widen a tensor of shape {tuple(t.shape)} to {tuple(shape)}")
        idx = _halves_map(o, n, generator, cache) if halves else _channel_map(o, n, generator, cache)
        out = out.index_select(dim, idx.to(t.device))
        if t.dim() == 4 and dim == 1:  # a convolution's input channels: Net2Wider divides the copies
            counts = torch.bincount(idx, minlength=o)[idx].to(out)
            out = out / counts.view(1, -1, 1, 1)
    return out


def widen_state_dict(old: Mapping[str, torch.Tensor], template: Mapping[str, torch.Tensor],
                     seed: int, keep_fresh: Sequence[str] = ()) -> Dict[str, torch.Tensor]:
    """The state of the next stage's supernet: ``template`` (its fresh state dict) with every entry
    that also exists in ``old`` replaced by the old value, widened (Net2Wider, see the module
    docstring) where the op channels grew. Entries only in ``template`` (none expected: the next stage
    prunes, never adds ops) keep their fresh values; entries only in ``old`` (pruned ops) are dropped.
    Entries whose last name component starts with one of ``keep_fresh`` (the op masks) keep the
    template's value."""
    generator = torch.Generator().manual_seed(seed)
    cache: Dict[Tuple[int, int], torch.Tensor] = {}
    # FactorizedReduce (stride-2 skip_connect): its BN's channels are the concat of conv_1's and
    # conv_2's outputs, each widened by the half-size map
    factorized = {name[:-len("conv_1.weight")] for name in template if name.endswith("conv_1.weight")}
    out = {}
    for name, fresh in template.items():
        value = old.get(name)
        if value is None or name.rsplit(".", 1)[-1].startswith(tuple(keep_fresh)):
            out[name] = fresh
        elif value.shape == fresh.shape:
            out[name] = value.clone()
        else:
            halves = any(name.startswith(prefix + "bn.") for prefix in factorized)
            out[name] = _widen(value, fresh.shape, generator, cache, halves=halves).to(fresh.dtype)
    return out


def default_init_channels(stages: Sequence[Tuple[int, int]], preferred: int = 16) -> int:
    """``preferred`` if every stage's K divides it, else the smallest multiple of their lcm above it
    (DrNAS's DARTS stages K 6 and 4: 24)."""
    lcm = math.lcm(*(int(k) for k, _ in stages))
    return preferred if preferred % lcm == 0 else lcm * math.ceil(preferred / lcm)
