"""Zero-shot pruning of the supernet before a one-shot search ("Half Search Space is All You Need").

Each op ``o`` of each edge gets the score, summed over the pruning proxies ``r``::

    score(o) = sum_r  sign_r * (r(N) - r(N without o)) / |r(N)|

where ``N`` is the supernet with the ops still kept (uniform architecture weights: for a Dirichlet
supernet, DrNAS's, the mean at zero alphas, never a random draw) and ``sign_r`` is +1
for a proxy where higher is better, -1 otherwise: an op whose removal lowers the proxy most matters
most. Every round removes the lowest-scoring op of every edge that still holds more than its quota,
then scores again, until every edge keeps ``ceil(keep * n_ops)`` of its ``n_ops`` ops other than
``none``. ``none`` is never pruned and takes no place in the quota: it costs nothing (no tensor, no
parameters) and the DARTS derivation ignores it, while as a softmax sink it takes part in the search.
(Scored like the others, it was kept on every edge of the DARTS supernet by reg_swap: removing it
rescales the op half of every partial-channel edge against its bypass half, which moves activation
patterns; a slot spent on it saves no memory.) Every evaluation runs on a copy of one seeded supernet
with the RNG reseeded, so ``N`` and ``N without o`` differ only by ``o``, not by their initialisation.

Every evaluation is a pure function of the op mask it scores, so a :class:`PruneProgress` given as
``progress`` keeps them on disk and a resumed pruning looks them up instead of scoring them again
(:mod:`fastnas.search.prune_progress`); it replays the same rounds to the same masks.

The one-shot search then builds the supernet with the mask: pruned ops are not constructed at all
(:class:`fastnas.nn.SearchNetwork` ``op_mask``), so they cost no parameters, compute or activations.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from fastnas.search.prune_progress import PruneProgress, mask_key

__all__ = ["PruneReport", "prune_supernet", "saved_activation_bytes", "ops_to_keep", "PRUNE_SETTINGS",
           "NOT_FOR_SUPERNETS", "SupernetCopy"]

# Proxy settings pruning uses unless the caller gives others. Every evaluation of a round scores a copy
# of one supernet with the RNG reseeded, so N and N without o see the same re-initialisation: the
# comparison is paired and one SWAP draw ranks the ops; the 32 draws of the scoring protocol would cost
# 32x (measured on this 2-core CPU: ~1 s per DARTS-supernet evaluation at one draw, 224 evaluations in
# the first round, so ~4 min per round instead of ~2 h).
PRUNE_SETTINGS = {"swap": {"repeats": 1}, "reg_swap": {"repeats": 1}}


# Proxies that cannot score a supernet, and why: pruning refuses them before it starts.
NOT_FOR_SUPERNETS = {
    "epsinas": "it evaluates the network in block floating point, op by op, and the supernet's fused "
               "partial-channel mixed op has no such rule (it runs on plain tensors)",
}


def ops_to_keep(n_ops: int, keep: float) -> int:
    """Ops (other than ``none``) each edge keeps: ``ceil(keep * n_ops)``, at least 1 (the 7 DARTS ops at
    0.5 -> 4; the 4 NB201 ops -> 2)."""
    return max(1, math.ceil(keep * n_ops - 1e-9))


def saved_activation_bytes(model: nn.Module, images: torch.Tensor) -> int:
    """Bytes of the tensors one training forward saves for backward (parameters excluded), each storage
    counted once: the activation memory of a step, on any device (CPU RSS cannot isolate it)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: Dict[int, int] = {}

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(images)
    del out
    return sum(seen.values())


@dataclass
class PruneReport:
    """What pruning kept and what it saves.

    masks: ``{kind: (E, n_ops) bool}`` of the kept ops. kept: ``{kind: [[op names] per edge]}``.
    rounds: per round, ``{kind: (E, n_ops) scores}`` (NaN for ops already pruned) as nested lists.
    """

    masks: Dict[str, torch.Tensor]
    kept: Dict[str, List[List[str]]]
    proxies: List[str]
    keep: float
    rounds: List[Dict[str, List[List[float]]]] = field(default_factory=list)
    evaluations: int = 0
    reused_evaluations: int = 0
    seconds: float = 0.0
    memory: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {"proxies": self.proxies, "keep": self.keep, "kept": self.kept,
                "masks": {k: m.int().tolist() for k, m in self.masks.items()}, "rounds": self.rounds,
                "evaluations": self.evaluations,
                "reused_evaluations": self.reused_evaluations, "seconds": self.seconds, "memory": self.memory}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PruneReport":
        return cls({k: torch.tensor(m, dtype=torch.bool) for k, m in d["masks"].items()}, d["kept"],
                   list(d["proxies"]), d["keep"], d.get("rounds", []), d.get("evaluations", 0),
                   d.get("reused_evaluations", 0), d.get("seconds", 0.0), d.get("memory", {}))


class SupernetCopy:
    """Hands out the supernet ``template`` afresh for every evaluation: one working copy, restored in
    place (parameter and buffer values, ``requires_grad``, gradients dropped, training flags) instead of
    deep-copied. On the 8-cell DARTS supernet (C=16) ``copy.deepcopy`` took 0.50 s of the 0.92 s an
    evaluation with reg_swap took (2-core CPU): it rebuilds ~1,000 modules in Python.

    A proxy may change more than values (synflow moves the network to float64, a proxy may replace a
    parameter or leave a hook or change a module setting): :meth:`get` compares the copy's signature
    (names, dtypes, shapes and devices of every tensor, module types, their scalar settings, hook counts)
    with the template's and deep-copies anew when they differ, so what a proxy sees is always exactly
    the template. The template itself is only read.
    """

    def __init__(self, template: nn.Module):
        self.template = template
        self._signature = _signature(template)
        self._net: Optional[nn.Module] = None

    def get(self) -> nn.Module:
        if self._net is None or _signature(self._net) != self._signature:
            self._net = copy.deepcopy(self.template)
            return self._net
        with torch.no_grad():
            for (_, mine), (_, theirs) in zip(self._net.named_parameters(), self.template.named_parameters()):
                mine.copy_(theirs)
                mine.grad = None
                mine.requires_grad_(theirs.requires_grad)
            for (_, mine), (_, theirs) in zip(self._net.named_buffers(), self.template.named_buffers()):
                mine.copy_(theirs)
        for mine, theirs in zip(self._net.modules(), self.template.modules()):
            mine.training = theirs.training
        return self._net


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _signature(net: nn.Module):
    """What a value restore cannot put back: the tensors' names, dtypes, shapes, devices and hooks; the
    modules' types and scalar settings (BN eps, momentum, ...; ``training`` is restored) and hooks."""
    tensors = tuple((n, t.dtype, t.shape, t.device, bool(getattr(t, "_backward_hooks", None)))
                    for named in (net.named_parameters(), net.named_buffers()) for n, t in named)
    modules = tuple((type(m), tuple(sorted((k, v) for k, v in vars(m).items()
                                           if k != "training" and isinstance(v, (bool, int, float, str, type(None))))),
                     tuple(len(getattr(m, d, ()) or ()) for d in _HOOK_DICTS))
                    for m in net.modules())
    return tensors, modules


def _evaluate(supernet: SupernetCopy, masks, proxies, images, labels, seed, settings,
              progress: Optional[PruneProgress] = None) -> List[float]:
    """The pruning proxies' values on the supernet with the op ``masks`` (looked up in ``progress``
    when it holds them, recorded there when not)."""
    key = None
    if progress is not None:
        key = mask_key(masks)
        if key in progress.evaluations:
            progress.hits += 1
            return list(progress.evaluations[key])
    values = []
    for proxy in proxies:
        net = supernet.get()
        net.set_op_mask(masks)
        torch.manual_seed(seed)
        values.append(proxy(net, *proxy_batch(proxy, images, labels), **settings.get(proxy.name, {})))
    if progress is not None:
        progress.record(key, values)
    return values


def proxy_batch(proxy, images, labels):
    n = proxy.batch_size or 1
    if n > images.shape[0]:
        raise ValueError(f"pruning proxy {proxy.name!r} needs {n} images, the data holds {images.shape[0]}")
    return images[:n], (labels[:n] if proxy.uses_labels else None)


def prune_supernet(build: Callable[[], nn.Module], proxies: Sequence[str], images: torch.Tensor,
                   labels: Optional[torch.Tensor], keep: float = 0.5, seed: int = 0,
                   settings: Optional[Mapping[str, Mapping[str, Any]]] = None, progress_bar: bool = False,
                   progress: Optional[PruneProgress] = None,
                   initial_masks: Optional[Mapping[str, torch.Tensor]] = None) -> PruneReport:
    """Prunes the ops of every edge of the supernet ``build()`` returns (a :class:`SearchNetwork`).

    images (B, 3, H, W) float32 normalised and labels (B,), on the supernet's device; B at least the
    largest proxy batch. settings: per-proxy setting overrides (default :data:`PRUNE_SETTINGS`).
    progress: the evaluations of an earlier, interrupted pruning of the same supernet (looked up, not
    repeated) and the store of this one's (saved when pruning ends). initial_masks: ``{kind: (E, n_ops)
    bool}``, ops the method's supernet never holds (DrNAS's DARTS space has no ``none``): off from the
    start, outside the pruning. Returns a :class:`PruneReport`.
    """
    from fastnas.nn import SearchNetwork

    from fastnas.proxies import get_proxy

    chosen = [get_proxy(p.strip()) for p in proxies]
    for proxy in chosen:
        if proxy.name in NOT_FOR_SUPERNETS:
            raise ValueError(f"proxy {proxy.name!r} cannot prune a supernet: {NOT_FOR_SUPERNETS[proxy.name]}")
    settings = {k: dict(v) for k, v in {**PRUNE_SETTINGS, **(settings or {})}.items()}
    for proxy in chosen:
        if "repeats" in settings.get(proxy.name, {}) and "repeats" not in proxy.defaults:
            raise ValueError(f"pruning proxy {proxy.name!r}: 'repeats' averages unpaired draws, and pruning compares "
                             f"N with N without o on one paired draw; drop the setting")
        proxy.check_settings(settings.get(proxy.name, {}))  # before the first evaluation, not at it
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    template = build().train()
    with torch.no_grad():  # uniform architecture weights: every kept op counts alike
        for p in template.arch_parameters():
            p.zero_()
    for m in template.modules():  # a Dirichlet supernet mixes by its mean (uniform here), not a random draw
        if isinstance(m, SearchNetwork):
            m.mean_mixing = True
    # Every op on, through the same call that masks the copies: the template then holds the mask
    # buffers the copies hold, so restoring a copy finds the same tensors.
    template.set_op_mask(None)
    supernet = SupernetCopy(template)
    kinds = template.cell_kinds()
    primitives = list(template.primitives)
    masks = {k: torch.ones(len(template.masked_alphas()[k]), len(primitives), dtype=torch.bool) for k in kinds}
    if initial_masks is not None:
        for k in kinds:
            initial = torch.as_tensor(initial_masks[k], dtype=torch.bool).cpu()
            if initial.shape != masks[k].shape:
                raise ValueError(f"initial_masks[{k!r}] must have shape {tuple(masks[k].shape)}, "
                                 f"got {tuple(initial.shape)}")
            masks[k] &= initial
    real = [o for o, p in enumerate(primitives) if p != "none"]
    target = ops_to_keep(len(real), keep)
    report = PruneReport(masks, {}, [p.name for p in chosen], keep)
    n_rounds = len(real) - target
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm
        bar = tqdm(desc=f"pruning to {target}/{len(primitives)} ops per edge", unit="eval")
    for _ in range(n_rounds):
        base = _evaluate(supernet, masks, chosen, images, labels, seed, settings, progress)
        report.evaluations += 1
        for r, value in zip(chosen, base):
            if value == 0:
                raise ValueError(f"proxy {r.name!r} is 0 on the supernet: its relative change cannot rank ops")
        round_scores = {}
        for kind in kinds:
            scores = torch.full(masks[kind].shape, float("nan"), dtype=torch.float64)
            for e in range(masks[kind].shape[0]):
                alive = [o for o in real if masks[kind][e, o]]
                if len(alive) <= target:
                    continue
                for o in alive:
                    trial = {k: m.clone() for k, m in masks.items()}
                    trial[kind][e, o] = False
                    without = _evaluate(supernet, trial, chosen, images, labels, seed, settings, progress)
                    report.evaluations += 1
                    scores[e, o] = sum((1.0 if r.higher_is_better else -1.0) * (b - w) / abs(b)
                                       for r, b, w in zip(chosen, base, without))
                    if bar is not None:
                        bar.update(1)
            round_scores[kind] = scores
        for kind in kinds:  # remove after scoring everything: one round sees one supernet
            for e in range(masks[kind].shape[0]):
                row = round_scores[kind][e]
                if not torch.isnan(row).all():
                    masks[kind][e, int(torch.nan_to_num(row, nan=float("inf")).argmin())] = False
        report.rounds.append({k: [[None if math.isnan(v) else v for v in r] for r in s.tolist()]
                              for k, s in round_scores.items()})
    if bar is not None:
        bar.close()
    if progress is not None:
        progress.save()
        report.reused_evaluations = progress.hits
    report.kept = {k: [[primitives[o] for o in row.nonzero().flatten().tolist()] for row in m]
                   for k, m in masks.items()}
    report.seconds = time.perf_counter() - t0
    return report
