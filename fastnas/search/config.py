"""Search settings: one dataclass whose field names follow the PC-DARTS command line.

A PC-DARTS user reads ``batch_size``, ``learning_rate``, ``learning_rate_min``, ``momentum``,
``weight_decay``, ``epochs``, ``init_channels``, ``layers``, ``grad_clip``, ``train_portion``,
``unrolled``, ``arch_learning_rate``, ``arch_weight_decay``, ``report_freq``, ``seed`` and ``data`` (the data
folder) with the meaning and the defaults of ``train_search.py`` (DESIGN.md section 3). Added: ``space``,
``method``, ``dataset``, ``device``, ``out_dir``, ``resume`` and the fastnas options below.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

__all__ = ["SearchConfig", "METHODS", "SPACE_ONLY", "MAE_BASES", "ZERO_SHOT_METHODS", "ALL_METHODS", "SPACES", "RESULT_FIELDS"]

SPACES = ("darts", "nb201")
# method -> (second order?, default partial-channel factor K, edge normalisation by default?)
METHODS: Dict[str, Tuple[bool, int, bool]] = {
    "pc-darts": (False, 4, True),
    "darts": (False, 1, False),
    "darts-2nd": (True, 1, False),
    # DARTS- (Chu et al., ICLR 2021): DARTS plus an auxiliary skip connection on every edge whose
    # weight decays from aux_skip_beta0 to 0 over the search (aux_skip_schedule).
    "darts-minus": (False, 1, False),
    # DrNAS (Chen et al., ICLR 2021): Dirichlet-sampled mixing weights on the partial-channel supernet,
    # KL (or L2) regularised concentrations, progressive stages (fastnas.search.progressive) whose first
    # stage sets K.
    "drnas": (False, 4, False),
    # B-DARTS (BNAS-v2, Ding et al.): the broad supernet (fastnas.nn.BroadSearchNetwork) with PC-DARTS's
    # partial channels and edge normalisation, and the confident learning rate (clr_power 2). DARTS space.
    "b-darts": (False, 4, True),
    # MSR-DARTS (Machida et al., IJCNN 2022): the DARTS supernet's weights are trained, no architecture
    # step; every edge keeps its conv op of minimum stable rank (fastnas.search.stable_rank).
    "msr-darts": (False, 1, False),
    # MAE-based unsupervised search: masked-image reconstruction (fastnas.nn.mae) replaces the labelled
    # loss of the base method mae_base (pc-darts, darts or darts-2nd); no label is read.
    "mae": (False, 4, True),
}
MAE_BASES = ("pc-darts", "darts", "darts-2nd")
# Methods bound to one space, and why the other does not apply.
SPACE_ONLY = {"b-darts": ("darts", "the broad supernet is a DARTS-space macro-architecture (reduction cells "
                                   "as convolution blocks); NB201's macro skeleton is fixed by the benchmark, "
                                   "so there is nothing broad to search. Use clr_power with another method "
                                   "for the confident learning rate on NB201")}
# Searches that train nothing: they rank architectures by a zero-cost proxy (fastnas.proxies).
ZERO_SHOT_METHODS = ("swap-evolution", "random")
ALL_METHODS = tuple(METHODS) + ZERO_SHOT_METHODS

# Fields that change nothing in the search's arithmetic: they may differ between a run and its resume.
RESULT_FIELDS = ("out_dir", "resume", "quiet", "report_freq", "nb201_table", "data", "download")


@dataclass
class SearchConfig:
    """Everything a search needs; defaults are PC-DARTS's on CIFAR-10 (DESIGN.md section 3).

    ``partial_channels``, ``edge_norm`` and ``unrolled`` default (None) to what ``method`` implies:
    pc-darts K=4 with edge normalisation; darts K=1, none, first order; darts-2nd the same, unrolled.
    ``layers`` None means 8 cells (DARTS space) or 5 cells per stage (NB201).
    """

    space: str = "darts"
    method: str = "pc-darts"
    dataset: Any = "cifar10"
    data: Optional[str] = None            # the data folder (PC-DARTS --data); for cifar10_sample the .npz
    download: bool = False
    dataset_options: Dict[str, Any] = field(default_factory=dict)
    device: Optional[str] = None          # None: cuda when available, else cpu
    seed: int = 2
    batch_size: int = 256
    learning_rate: float = 0.1
    learning_rate_min: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    epochs: int = 50
    warmup_epochs: int = 15               # architecture steps from this epoch on (PC-DARTS: 15)
    init_channels: Optional[int] = None   # None: 16 (24 for DrNAS's progressive DARTS stages, K 6 and 4)
    layers: Optional[int] = None
    train_portion: float = 0.5
    partial_channels: Optional[int] = None
    edge_norm: Optional[bool] = None
    unrolled: Optional[bool] = None
    arch_learning_rate: float = 6e-4
    arch_weight_decay: float = 1e-3
    arch_betas: Tuple[float, float] = (0.5, 0.999)
    steps_per_epoch: Optional[int] = None  # cap on weight steps per epoch (smoke runs, projections)
    amp: Optional[str] = None             # None | "bf16" | "fp16"
    # None: on for the CPU (the DARTS supernet's step at B=32 measured 2.8 s vs 3.2 s contiguous on
    # 2 cores, oneDNN's depthwise convolutions prefer NHWC); off on CUDA until measured there.
    channels_last: Optional[bool] = None
    backend: Optional[str] = None         # fused-op backend (None: automatic)
    # CUDA: capture the step in a CUDA graph, recaptured every epoch (fastnas.search.graphs); first order,
    # amp None or bf16.
    cuda_graph: bool = False
    report_freq: int = 50                 # read metrics back from the device every N steps
    out_dir: Optional[str] = None
    resume: Any = False                   # True / a run folder / a checkpoint file
    quiet: bool = False
    nb201_table: Optional[str] = None
    # DARTS- (method "darts-minus"): the auxiliary skip's weight at the first epoch, and its decay to 0.
    aux_skip_beta0: float = 1.0
    aux_skip_schedule: str = "linear"      # "linear" (the paper's) | "cosine"
    # DrNAS (method "drnas"): the regulariser of the Dirichlet concentrations and its scale.
    drnas_reg: str = "kl"                  # "kl" (to Dirichlet(1)) | "l2"
    drnas_reg_scale: float = 1e-3
    # DrNAS's progressive scheme: stages of (K, ops kept per edge), the epochs split evenly between
    # them; None: DrNAS's (darts ((6, 7), (4, 4)), nb201 ((4, 5), (2, 3))). Off: one stage, all ops.
    drnas_progressive: bool = True
    drnas_stages: Optional[Tuple[Tuple[int, int], ...]] = None
    # B-DARTS's confident learning rate on any differentiable method: confidence = ((epoch + 1) /
    # epochs) ** clr_power (first order: times the architecture lr; second order: times the unrolled
    # validation loss). None: off.
    clr_power: Optional[float] = None
    # B-DARTS's broad supernet: convolution blocks (one shared-weight reduction cell each) and the
    # normal cells of its enhancement block (``layers`` does not apply to it).
    conv_blocks: int = 2
    enhancement_cells: int = 2
    # MAE-based unsupervised search (method "mae"): the differentiable method it runs, the patch size
    # and the fraction of patches hidden, and the width of the multi-scale decoder.
    mae_base: str = "pc-darts"
    mae_patch_size: int = 4
    mae_mask_ratio: float = 0.5
    mae_decoder_channels: int = 64
    # Collapse monitoring: power-iteration steps for the dominant eigenvalue of the validation-loss
    # Hessian w.r.t. the architecture, per epoch, on the first hessian_batch validation images (0: off).
    hessian_iters: int = 10
    hessian_batch: int = 64
    # Zero-shot pruning before a one-shot search ("Half Search Space is All You Need"): proxy name(s),
    # comma-separated, and the fraction of each edge's ops kept.
    prune: Optional[str] = None
    keep: float = 0.5
    # Zero-shot methods (swap-evolution, random): the fitness proxy and the evolution's budget.
    proxy: str = "reg_swap"
    proxy_settings: Dict[str, Any] = field(default_factory=dict)  # + "batch_size", "repeats" (score_one)
    population_size: int = 10
    sample_size: int = 3                  # tournament size (NB201 REA: population 10, sample 3, 200 cycles)
    cycles: int = 200                     # architectures scored in total (population included)
    time_budget: Optional[float] = None   # seconds; stops the zero-shot search early
    removal: str = "oldest"               # "oldest" (ageing evolution) | "worst"
    table_only: Optional[bool] = None     # None: search only the table's archs when nb201_table is given

    # ---------------------------------------------------------------------------------------------
    def resolved(self) -> "SearchConfig":
        """A copy with the method's defaults filled in, validated: raises ValueError naming the problem."""
        c = dataclasses.replace(self, dataset_options=dict(self.dataset_options),
                                proxy_settings=dict(self.proxy_settings), arch_betas=tuple(self.arch_betas))
        if c.space not in SPACES:
            raise ValueError(f"unknown space {c.space!r}; choose one of {', '.join(SPACES)}")
        if c.method not in ALL_METHODS:
            raise ValueError(f"unknown method {c.method!r}; choose one of {', '.join(ALL_METHODS)}")
        if c.method in ZERO_SHOT_METHODS:
            return c._resolved_zero_shot()
        if c.method in SPACE_ONLY and c.space != SPACE_ONLY[c.method][0]:
            space, why = SPACE_ONLY[c.method]
            raise ValueError(f"method {c.method!r} searches the {space!r} space only, not {c.space!r}: {why}")
        if c.method == "b-darts":
            if c.layers is not None:
                raise ValueError("layers does not apply to b-darts's broad supernet; size it with conv_blocks "
                                 "and enhancement_cells")
            if c.clr_power is None:
                c.clr_power = 2.0  # BNAS-v2's confident learning rate, p = 2
            c._check_positive_ints("conv_blocks")
            if not isinstance(c.enhancement_cells, int) or c.enhancement_cells < 0:
                raise ValueError(f"enhancement_cells must be an integer >= 0, got {c.enhancement_cells!r}")
        if c.method == "mae":
            if c.mae_base not in MAE_BASES:
                raise ValueError(f"mae_base must be one of {', '.join(MAE_BASES)}, got {c.mae_base!r}")
            c._check_positive_ints("mae_patch_size", "mae_decoder_channels")
            if not 0.0 < c.mae_mask_ratio < 1.0:
                raise ValueError(f"mae_mask_ratio must lie in (0, 1), got {c.mae_mask_ratio}")
        second, k, edge_norm = METHODS[c.mae_base if c.method == "mae" else c.method]
        if c.unrolled is None:
            c.unrolled = second
        if c.method == "drnas" and c.drnas_progressive:
            k = c._resolve_drnas_stages()
        elif c.drnas_stages is not None:
            raise ValueError("drnas_stages applies to method='drnas' with drnas_progressive=True")
        if c.init_channels is None:
            c.init_channels = 16
        if c.partial_channels is None:
            c.partial_channels = k
        if c.edge_norm is None:
            c.edge_norm = edge_norm
        c._check_positive_ints("batch_size", "epochs", "init_channels", "partial_channels", "report_freq")
        if c.method == "darts-minus":
            from fastnas.search.schedules import AUX_SKIP_SCHEDULES

            if c.aux_skip_schedule not in AUX_SKIP_SCHEDULES:
                raise ValueError(f"unknown aux_skip_schedule {c.aux_skip_schedule!r}; choose one of "
                                 f"{', '.join(AUX_SKIP_SCHEDULES)}")
            if not c.aux_skip_beta0 >= 0:
                raise ValueError(f"aux_skip_beta0 must be >= 0, got {c.aux_skip_beta0}")
        if c.drnas_reg not in ("kl", "l2"):
            raise ValueError(f"drnas_reg must be 'kl' or 'l2', got {c.drnas_reg!r}")
        if not c.drnas_reg_scale >= 0:
            raise ValueError(f"drnas_reg_scale must be >= 0, got {c.drnas_reg_scale}")
        if c.clr_power is not None and not c.clr_power >= 0:
            raise ValueError(f"clr_power must be >= 0 or None, got {c.clr_power}")
        if not isinstance(c.hessian_iters, int) or c.hessian_iters < 0:
            raise ValueError(f"hessian_iters must be >= 0 (0 turns the Hessian monitor off), got {c.hessian_iters!r}")
        if not isinstance(c.hessian_batch, int) or c.hessian_batch < 1:
            raise ValueError(f"hessian_batch must be a positive integer, got {c.hessian_batch!r}")
        if c.steps_per_epoch is not None and c.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be positive or None, got {c.steps_per_epoch!r}")
        if not 0 <= c.warmup_epochs:
            raise ValueError(f"warmup_epochs must be >= 0, got {c.warmup_epochs}")
        if c.init_channels % c.partial_channels:
            raise ValueError(f"init_channels={c.init_channels} is not divisible by partial_channels="
                             f"{c.partial_channels}: every edge samples C // K channels")
        if not 0.0 < c.train_portion < 1.0:
            raise ValueError(f"train_portion must lie in (0, 1), got {c.train_portion}")
        for name in ("learning_rate", "arch_learning_rate"):
            if not getattr(c, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(c, name)}")
        if c.amp not in (None, "bf16", "fp16"):
            raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {c.amp!r}")
        if c.prune is not None:
            from fastnas.proxies import get_proxy

            for name in str(c.prune).split(","):
                get_proxy(name.strip())  # ValueError naming the unknown proxy
            if not 0.0 < c.keep < 1.0:
                raise ValueError(f"keep (the fraction of ops kept by pruning) must lie in (0, 1), got {c.keep}")
        return c

    def _resolve_drnas_stages(self) -> int:
        """Validates (and defaults) ``drnas_stages``; returns the first stage's K."""
        from fastnas.search.progressive import DRNAS_STAGES, default_init_channels

        stages = DRNAS_STAGES[self.space] if self.drnas_stages is None else self.drnas_stages
        try:
            stages = tuple((int(k), int(n)) for k, n in stages)
        except (TypeError, ValueError):
            raise ValueError(f"drnas_stages must be (K, ops) pairs, e.g. ((6, 7), (4, 4)), got {self.drnas_stages!r}")
        n_ops = 8 if self.space == "darts" else 5
        if not stages:
            raise ValueError("drnas_stages is empty")
        for i, (k, n) in enumerate(stages):
            if k < 1 or not 1 <= n <= n_ops:
                raise ValueError(f"drnas_stages[{i}] = ({k}, {n}): K must be >= 1 and ops per edge in 1..{n_ops}")
            if i and n > stages[i - 1][1]:
                raise ValueError(f"drnas_stages: stage {i + 1} keeps {n} ops, more than stage {i} ({stages[i - 1][1]}); "
                                 "a stage can only prune")
            if i and k > stages[i - 1][0]:
                raise ValueError(f"drnas_stages: stage {i + 1} has K={k}, more than stage {i} (K={stages[i - 1][0]}); "
                                 "the stages widen the sampled channels (K shrinks), never narrow them")
            if i and n < 2:
                raise ValueError(f"drnas_stages: stage {i + 1} keeps {n} op per edge; keep at least 2 (one could be "
                                 "'none', and an edge needs a real op)")
        if stages[0][1] < n_ops - 1:
            raise ValueError(f"drnas_stages: the first stage keeps all {n_ops} ops or all but 'none' "
                             f"({n_ops - 1}), not {stages[0][1]}")
        if self.partial_channels is not None and self.partial_channels != stages[0][0]:
            raise ValueError(f"partial_channels={self.partial_channels} conflicts with drnas_stages {stages}: the "
                             "progressive stages set K per stage (pass drnas_progressive=False for one K)")
        if self.init_channels is None:
            self.init_channels = default_init_channels(stages)
        bad = [k for k, _ in stages if self.init_channels % k]
        if bad:
            raise ValueError(f"init_channels={self.init_channels} is not divisible by the K {bad} of drnas_stages "
                             f"{stages}: every edge samples C // K channels")
        self._check_positive_ints("epochs")
        if self.epochs < len(stages):
            raise ValueError(f"epochs={self.epochs} cannot hold the {len(stages)} stages of drnas_stages")
        from fastnas.search.progressive import stage_plan

        second = stage_plan(stages, self.epochs)[1:2]
        if second and self.warmup_epochs >= second[0].first_epoch:
            raise ValueError(f"warmup_epochs={self.warmup_epochs} leaves DrNAS's first stage (epochs 1-"
                             f"{second[0].first_epoch}) without an architecture step, so its op pruning would rank "
                             f"untrained alphas; use warmup_epochs < {second[0].first_epoch} (DrNAS: 0)")
        self.drnas_stages = stages
        return stages[0][0]

    def _check_positive_ints(self, *names: str) -> None:
        """ValueError naming the first of ``names`` (and ``layers``, which may be None) that is not a
        positive integer."""
        for name in names + (("layers",) if self.layers is not None else ()):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")

    def _resolved_zero_shot(self) -> "SearchConfig":
        from fastnas.proxies import draws_of, get_proxy

        proxy = get_proxy(self.proxy)
        # proxy_settings: the proxy's keyword settings, plus "batch_size" (images per proxy call; default
        # the proxy's protocol, e.g. 16 for SWAP: NOT this config's batch_size, the one-shot methods' 256)
        # and "repeats" (draws averaged, fastnas.proxies.score_one).
        unknown = sorted(set(self.proxy_settings) - set(proxy.defaults) - {"batch_size", "repeats"})
        if unknown:
            raise ValueError(f"proxy_settings {unknown} are not settings of proxy {proxy.name!r}; its settings: "
                             f"{sorted(proxy.defaults) or 'none'}, 'batch_size' and 'repeats'")
        draws_of(proxy, self.proxy_settings)  # a bad 'repeats' fails here, not at the first arch
        n = self.proxy_settings.get("batch_size")
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise ValueError(f"proxy_settings['batch_size'] must be a positive integer, got {n!r}")
        self._check_positive_ints("population_size", "sample_size", "cycles", "batch_size",
                                  *(("init_channels",) if self.init_channels is not None else ()))
        if self.nb201_table is not None and self.space != "nb201":
            raise ValueError(f"nb201_table applies to space='nb201', not {self.space!r}")
        if self.sample_size > self.population_size:
            raise ValueError(f"sample_size={self.sample_size} exceeds population_size={self.population_size}")
        if self.removal not in ("oldest", "worst"):
            raise ValueError(f"removal must be 'oldest' or 'worst', got {self.removal!r}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(f"time_budget must be positive seconds or None, got {self.time_budget!r}")
        if self.prune is not None:
            raise ValueError(f"prune applies to one-shot methods, not to {self.method!r}")
        if self.drnas_stages is not None:
            raise ValueError(f"drnas_stages applies to method='drnas', not to {self.method!r}")
        if self.table_only is None:
            self.table_only = self.nb201_table is not None
        if self.table_only and self.nb201_table is None:
            raise ValueError("table_only=True needs nb201_table")
        return self

    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly form (a dataset object is recorded by its type name)."""
        d = dataclasses.asdict(self)
        if not isinstance(d["dataset"], (str, type(None))):
            d["dataset"] = f"<{type(self.dataset).__name__}>"
        d["arch_betas"] = list(d["arch_betas"])
        d["proxy_settings"] = dict(d["proxy_settings"])
        if d["drnas_stages"] is not None:
            d["drnas_stages"] = [list(s) for s in d["drnas_stages"]]
        d["resume"] = str(d["resume"]) if not isinstance(d["resume"], bool) else d["resume"]
        for k in ("out_dir", "data", "nb201_table"):
            if d[k] is not None:
                d[k] = str(d[k])
        return d

    def differences(self, other: Dict[str, Any]) -> Dict[str, Tuple[Any, Any]]:
        """Fields (other than RESULT_FIELDS) whose values differ from ``other`` (a to_dict()):
        name -> (other's value, this value)."""
        mine = self.to_dict()
        return {k: (other.get(k), v) for k, v in mine.items()
                if k not in RESULT_FIELDS and other.get(k) != v}
