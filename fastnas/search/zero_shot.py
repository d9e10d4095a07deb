"""Zero-shot searches: architectures ranked by a zero-cost proxy, nothing trained.

``method="swap-evolution"`` is the evolutionary search of SWAP-NAS (Peng et al., ICLR 2024) with the
regularised SWAP-Score (``proxy="reg_swap"``) as the fitness; ``method="random"`` is its baseline,
``cycles`` uniformly random architectures. Both return the best-fitness architecture ever scored.

The evolution. SWAP-NAS's repository (pym1024/SWAP) publishes the metric and the correlation script,
not the search, and the paper's text we could read names the ingredients (population, parent
selection, crossover, mutation, removal) without their numbers. So the loop is ageing ("regularized")
evolution (Real et al., AAAI 2019) with a crossover step, and the defaults (population 10, tournament
3, 200 architectures) are NAS-Bench-201's regularized-evolution baseline (D-X-Y/AutoDL-Projects
``R-EA.sh``: ``--ea_population 10 --ea_sample_size 3 --ea_cycles 200``), not SWAP-NAS's own numbers:

1. the first ``population_size`` architectures are random;
2. then, each cycle: two parents, each the fittest of ``sample_size`` members drawn without
   replacement from the population (tournaments); child = mutate(crossover(parent_a, parent_b)) (see
   :mod:`fastnas.search.evolution`: uniform crossover, then one op or input change); the child is
   scored and joins the population, and the oldest member (``removal="oldest"``) or the least fit
   (``"worst"``, the oldest of equals) leaves it.

Every architecture is scored once: fitness is cached per architecture (an NB201 arch string or a
Genotype repr), and a proposal already scored is discarded and redrawn, so ``cycles`` counts distinct
architectures scored (population included). After ``MAX_PROPOSALS`` consecutive proposals that were
all scored before (a small table, or ``cycles`` beyond the space), the search stops early
(``stop_reason="exhausted"``). With ``time_budget``, it stops after the first arch whose scoring ends
past that many seconds (``"time_budget"``; at least one arch is scored, the overshoot is one score).

Fitness is the proxy's score, negated for a proxy whose ``higher_is_better`` is False, computed by
:func:`fastnas.proxies.score_one` with ``seed=config.seed``: a fresh network seeded the same way for
every architecture, and the same image batch (drawn once, with ``seed``, from ``dataset``). The batch
holds the proxy's own protocol batch size (``Proxy.batch_size``, e.g. SWAP's 16 images), NOT
``batch_size`` (the differentiable methods' 256); ``proxy_settings={"batch_size": n}`` overrides it,
``{"repeats": r}`` averages r draws (:func:`fastnas.proxies.score_one`; the data then holds r batches),
the other keys of ``proxy_settings`` are the proxy's settings. The scored network is the discrete one
of :func:`fastnas.proxies.build_network`; ``init_channels``/``layers`` size it when set, else the proxy's
protocol network is used (NB201 ``TinyNetwork(16, N=5)``; DARTS ``NetworkCIFAR(16, layers=8)``, except
SWAP's ``NetworkCIFAR(3, layers=1)``). ``FITNESS_SETTINGS`` lowers SWAP's re-initialisations to 4.

``table_only`` (NB201, on by default when ``nb201_table`` is given): the search only visits the
table's architectures, so every result has a ground truth. Random architectures are drawn from the
table; a child outside it is projected onto a table architecture at minimum Hamming distance (ties
broken by the search's generator); see :class:`fastnas.search.evolution.TableOperators`.

Determinism and resume: the search's randomness is one ``numpy.random.Generator`` seeded with
``seed``; its state, the population, the history (which is the fitness cache) and the elapsed time are
checkpointed atomically every ``CHECKPOINT_EVERY`` scored architectures and at the end, so a killed run
resumed with ``resume=True`` finishes with the same history and result as an uninterrupted one (with
the same proxy scores: bit-identical on the same machine and thread count). ``time_budget`` counts the
seconds spent in :meth:`ZeroShotSearcher.run` over all sessions of a run.

The run folder is the differentiable engine's (:mod:`fastnas.search.run_dir`): ``config.json``,
``metrics.jsonl`` (one row per scored architecture), ``genotype.txt`` (the best so far),
``checkpoint.pt``, ``result.json``.
"""
from __future__ import annotations

import hashlib
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np

from fastnas.devices import resolve_device
from fastnas.proxies import get_proxy, images_needed, load_proxy_data, score_one
from fastnas.search.config import ZERO_SHOT_METHODS, SearchConfig
from fastnas.search.engine import Searcher, load_search_dataset
from fastnas.search.evolution import DartsOperators, NB201Operators, TableOperators
from fastnas.search.result import SearchResult
from fastnas.search.run_dir import RunDir, atomic_write_text

__all__ = ["ZeroShotSearcher", "CHECKPOINT_EVERY", "MAX_PROPOSALS"]

CHECKPOINT_VERSION = 1
CHECKPOINT_KIND = "zero-shot"
# A checkpoint (torch.save of the history, fsync, rename) measured 1.7 ms at 200 rows; building one
# NB201 network alone measured ~50 ms (one core) and scoring it takes longer. Every 10 archs the
# checkpoints cost < 0.1 % of the run and a kill loses at most 10 scores.
CHECKPOINT_EVERY = 10
# Proposals in a row that may all hit the cache before the search calls its neighbourhood exhausted.
# With a 2,000-arch table, population 10 and mutation + projection, a fresh arch comes in the first
# few tries; 100 misses in a row means the space near the population is (nearly) used up.
MAX_PROPOSALS = 100


# Fitness settings the search uses unless proxy_settings says otherwise. SWAP's scoring protocol averages
# 32 re-initialisations; a search that ranks hundreds of archs screens with 4. Measured on this 2-core
# CPU (NB201 table, CIFAR-10 sample, 200 archs, seeds 0-4): ~35 s per search and found archs averaging
# 93.38 CIFAR-10 test accuracy; with 32 draws one search took ~7 s per arch (~24 min for 200 archs with
# a second job on the machine), over the 10-minute budget such a search is meant for. reg_swap at 4
# draws still ranks 110 held-out NB201 archs at Spearman 0.90.
FITNESS_SETTINGS = {"swap": {"repeats": 4}, "reg_swap": {"repeats": 4}}


class ZeroShotSearcher:
    """Builds a zero-shot search from a :class:`SearchConfig` (``method`` in ``ZERO_SHOT_METHODS``)
    and :meth:`run` s it.

    Attributes: ``config`` (resolved), ``proxy``, ``operators`` (the space's
    :mod:`~fastnas.search.evolution` operators), ``table`` (NB201Table or None), ``run_dir``,
    ``history`` (one row per scored arch), ``population`` (cache keys, oldest first), ``rng``.
    """

    def __init__(self, config: SearchConfig):
        self.config = cfg = config.resolved()
        if cfg.method not in ZERO_SHOT_METHODS:
            raise ValueError(f"ZeroShotSearcher runs {', '.join(ZERO_SHOT_METHODS)}, not {cfg.method!r}; "
                             "use fastnas.search() or Searcher for differentiable methods")
        self.device = resolve_device(cfg.device)
        self._say = (lambda *a: None) if cfg.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.proxy = get_proxy(cfg.proxy)
        settings = {**FITNESS_SETTINGS.get(cfg.proxy, {}), **cfg.proxy_settings}
        self.proxy_batch = settings.pop("batch_size", None) or self.proxy.batch_size or 1
        self.proxy_settings = settings
        self.table = Searcher._load_table(cfg)
        self.operators = self._operators(cfg)
        # The proxy's protocol network unless the user sized it (SWAP scores DARTS cells in a 3-channel,
        # 1-cell network: see fastnas.proxies.activation.SWAP_DARTS_NETWORK).
        self.network_options = None
        if cfg.layers is not None or cfg.init_channels is not None:
            self.network_options = (
                {"darts_channels": cfg.init_channels or 16, "darts_layers": cfg.layers or 8, "darts_stem": True}
                if cfg.space == "darts"
                else {"nb201_channels": cfg.init_channels or 16, "nb201_cells": cfg.layers or 5})
        # Data before the run folder: a missing dataset fails before anything is written.
        self.data = self._load_data(cfg)
        self.run_dir: RunDir = Searcher._prepare_run_dir(cfg)
        try:
            self._start(cfg)
        except BaseException:
            self.run_dir.unlock()   # a failed start leaves the folder free for the next try
            raise

    def _start(self, cfg) -> None:
        """Everything after the run folder is locked: resume or a fresh start."""
        checkpoint = self._find_checkpoint(cfg)

        self.rng = np.random.default_rng(cfg.seed)
        self.history: List[Dict[str, Any]] = []
        self.population: List[str] = []
        self.fitness: Dict[str, float] = {}   # the cache: arch key -> fitness
        self.elapsed_s = 0.0
        self.stop_reason: Optional[str] = None
        if checkpoint is not None:
            self.run_dir.adopt(cfg.to_dict())
            self._load_state(checkpoint)
            self._say(f"fastnas: resuming {self.run_dir.root} after {len(self.history)} of {cfg.cycles} archs")
        else:
            self.run_dir.write_json(self.run_dir.config, cfg.to_dict())
            self.run_dir.rewrite_metrics([])  # a resume=True start without a checkpoint drops stale rows

    # -- construction -------------------------------------------------------------------------------
    def _operators(self, cfg):
        if cfg.space == "darts":
            return DartsOperators()
        if cfg.table_only:
            return TableOperators(self.table.archs)
        return NB201Operators()

    def _load_data(self, cfg):
        n = images_needed(self.proxy, self.proxy_batch, self.proxy_settings)
        return load_proxy_data(load_search_dataset(cfg), n=n, seed=cfg.seed, device=self.device)

    def _find_checkpoint(self, cfg) -> Optional[Dict[str, Any]]:
        ckpt = self.run_dir.find_checkpoint(cfg.resume, self._say)
        if ckpt is None:
            return None
        if ckpt.get("kind") != CHECKPOINT_KIND or ckpt.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"cannot resume {self.run_dir.root}: the checkpoint is not a zero-shot search's "
                             f"(kind {ckpt.get('kind')!r}, version {ckpt.get('version')!r}; expected "
                             f"{CHECKPOINT_KIND!r}, {CHECKPOINT_VERSION})")
        diff = self.config.differences(ckpt["config"])
        if diff:
            detail = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"cannot resume {self.run_dir.root}: the settings differ from the checkpoint's ({detail})")
        if ckpt["table_archs"] != self._table_archs():
            # nb201_table may move (it is a RESULT_FIELD), but with table_only its archs are the search space
            raise ValueError(f"cannot resume {self.run_dir.root}: the table {cfg.nb201_table} does not hold the "
                             f"archs of the run's table ({ckpt['config'].get('nb201_table')})")
        return ckpt

    def _table_archs(self) -> Optional[str]:
        """A digest of the searched table's archs in table order (random draws index it), else None."""
        if not isinstance(self.operators, TableOperators):
            return None
        return hashlib.sha256("\n".join(self.table.archs).encode()).hexdigest()

    # -- checkpoint state ---------------------------------------------------------------------------
    def _state(self) -> Dict[str, Any]:
        return {"kind": CHECKPOINT_KIND, "version": CHECKPOINT_VERSION, "config": self.config.to_dict(),
                "table_archs": self._table_archs(), "rng": self.rng.bit_generator.state,
                "population": list(self.population),
                "history": self.history, "elapsed_s": self.elapsed_s, "stop_reason": self.stop_reason}

    def _load_state(self, ckpt: Dict[str, Any]) -> None:
        self.rng.bit_generator.state = ckpt["rng"]
        self.population = list(ckpt["population"])
        self.history = list(ckpt["history"])
        self.fitness = {row["arch"]: row["fitness"] for row in self.history}
        self.elapsed_s = float(ckpt["elapsed_s"])
        self.stop_reason = ckpt["stop_reason"]
        # Rows a killed run appended after its last checkpoint would otherwise appear twice.
        self.run_dir.rewrite_metrics(self.history)

    def _checkpoint(self) -> None:
        if self.history:
            atomic_write_text(self.run_dir.genotype, self.history[-1]["best_arch"] + "\n")
        self.run_dir.save_checkpoint(self._state())

    # -- the loop -----------------------------------------------------------------------------------
    def run(self) -> SearchResult:
        """Scores archs until the cycles or the time budget run out; the run folder's lock is released at
        the end, however it ends."""
        try:
            return self._run()
        finally:
            self.run_dir.unlock()

    def _run(self) -> SearchResult:
        cfg = self.config
        bar = self._progress()
        start = time.perf_counter() - self.elapsed_s
        while self.stop_reason is None and len(self.history) < cfg.cycles:
            proposal = self._propose()
            if proposal is None:
                self.stop_reason = "exhausted"
                self._say(f"fastnas: {MAX_PROPOSALS} proposals in a row were archs already scored: stopping "
                          f"after {len(self.history)} archs")
                break
            arch, origin = proposal
            t0 = time.perf_counter()
            score = score_one(arch, self.proxy, self.data, seed=cfg.seed, batch_size=self.proxy_batch,
                              settings=self.proxy_settings, network_options=self.network_options)
            t1 = time.perf_counter()
            self.elapsed_s = t1 - start
            self._record(arch, origin, score, t1 - t0)
            if len(self.history) % CHECKPOINT_EVERY == 0:
                self._checkpoint()
            if bar is not None:
                bar.set_postfix(best=f"{self.history[-1]['best_fitness']:.4g}", refresh=False)
                bar.update(1)
            if cfg.time_budget is not None and self.elapsed_s >= cfg.time_budget:
                self.stop_reason = "time_budget"
        if bar is not None:
            bar.close()
        self.elapsed_s = time.perf_counter() - start
        if self.stop_reason is None:
            self.stop_reason = "cycles"
        self._checkpoint()
        return self.result()

    def _progress(self):
        if self.config.quiet:
            return None
        from tqdm.auto import tqdm
        return tqdm(total=self.config.cycles, initial=len(self.history), unit="arch", leave=False, file=sys.stderr,
                    desc=f"{self.config.method} on {self.config.space}", dynamic_ncols=True)

    def _propose(self):
        """(arch, origin) of an arch not scored yet, or None after MAX_PROPOSALS misses in a row."""
        cfg, ops = self.config, self.operators
        for _ in range(MAX_PROPOSALS):
            if cfg.method == "random":
                arch, origin = ops.random(self.rng), "random"
            elif len(self.history) < cfg.population_size:
                arch, origin = ops.random(self.rng), "init"
            else:
                a, b = self._tournament(), self._tournament()
                arch, origin = ops.mutate(ops.crossover(a, b, self.rng), self.rng), "child"
            if ops.key(arch) not in self.fitness:
                return arch, origin
        return None

    def _tournament(self):
        """The fittest of ``sample_size`` population members drawn without replacement (ties: the
        first drawn)."""
        picks = self.rng.choice(len(self.population), size=self.config.sample_size, replace=False)
        key = max((self.population[int(i)] for i in picks), key=self.fitness.__getitem__)
        return self.operators.parse(key)

    def _record(self, arch, origin: str, score: float, score_s: float) -> None:
        cfg = self.config
        key = self.operators.key(arch)
        fitness = score if self.proxy.higher_is_better else -score
        self.fitness[key] = fitness
        if cfg.method == "swap-evolution":
            self.population.append(key)
            if len(self.population) > cfg.population_size:
                if cfg.removal == "oldest":
                    self.population.pop(0)
                else:  # the least fit; min() keeps the first (oldest) of equals
                    self.population.remove(min(self.population, key=self.fitness.__getitem__))
        previous = self.history[-1] if self.history else None
        best = (key, fitness) if previous is None or fitness > previous["best_fitness"] else \
            (previous["best_arch"], previous["best_fitness"])
        row = {"step": len(self.history) + 1, "arch": key, "origin": origin, "score": score, "fitness": fitness,
               "best_arch": best[0], "best_fitness": best[1], "score_time_s": score_s, "time_s": self.elapsed_s}
        if self.table is not None:
            row.update({f"table_{k}": v for k, v in (self._table_row(key) or {}).items() if k != "idx"})
        self.history.append(row)
        self.run_dir.append_metrics(row)

    def _table_row(self, key: str) -> Optional[Dict[str, Optional[float]]]:
        return self.table.row_or_none(key)

    # -- the result ---------------------------------------------------------------------------------
    def result(self) -> SearchResult:
        """The best-fitness arch ever scored (the first of equals)."""
        cfg = self.config
        if not self.history:
            raise RuntimeError("no architecture scored yet: call run() first")
        last = self.history[-1]
        key, fitness = last["best_arch"], last["best_fitness"]
        best_row = next(r for r in self.history if r["arch"] == key)
        genotype = self.operators.parse(key) if cfg.space == "darts" else key
        table_row = self._table_row(key) if self.table is not None else None
        if self.table is not None and table_row is None:
            self._say(f"fastnas: {key} is not in the NB201 table {cfg.nb201_table} ({len(self.table)} archs)")
        n = len(self.history)
        extras = {"proxy": cfg.proxy, "fitness": fitness, "score": best_row["score"], "best_step": best_row["step"],
                  "archs_scored": n, "archs_per_s": n / self.elapsed_s if self.elapsed_s > 0 else float("nan"),
                  "stop_reason": self.stop_reason}
        result = SearchResult(space=cfg.space, method=cfg.method, genotype=genotype, arch_parameters={},
                              history=list(self.history), config=cfg.to_dict(), out_dir=self.run_dir.root,
                              table_accuracy=table_row, search_time_s=self.elapsed_s, extras=extras)
        self.run_dir.write_json(self.run_dir.result, {
            "space": cfg.space, "method": cfg.method, "genotype": key, "table_accuracy": table_row,
            "search_time_s": self.elapsed_s, **extras})
        self._say(f"fastnas: {cfg.method} on {cfg.space}: {n} archs scored by {cfg.proxy} in {self.elapsed_s:.1f} s "
                  f"({extras['archs_per_s']:.2f} archs/s), stopped by {self.stop_reason}; best fitness "
                  f"{fitness:.6g} (arch {best_row['step']}): {key}"
                  + (f"  NB201 cifar10_test {table_row['cifar10_test']:.2f}"
                     if table_row and table_row.get("cifar10_test") is not None else ""))
        return result
