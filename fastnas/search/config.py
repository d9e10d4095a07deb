"""Search settings: one dataclass whose field names follow the PC-DARTS command line.

A PC-DARTS user reads ``batch_size``, ``learning_rate``, ``learning_rate_min``, ``momentum``,
``weight_decay``, ``epochs``, ``init_channels``, ``layers``, ``grad_clip``, ``train_portion``,
``unrolled``, ``arch_learning_rate``, ``arch_weight_decay``, ``report_freq``, ``seed`` and ``data`` (the data
folder) with the meaning and the defaults of ``train_search.py`` (DESIGN.md section 3). Added: ``space``,
``method``, ``dataset``, ``device``, ``out_dir``, ``resume`` and the fastnas options below.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
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
    # B-DARTS (BNAS-v2-CLR, Ding et al.): the broad supernet (fastnas.nn.BroadSearchNetwork) on full
    # channels with the confident learning rate (clr_power 2), as BNASv2CLR/train_search_b_confidence.py.
    # DARTS space. (BNAS-v2-PC is K=4 with edge normalisation and no confident learning rate.)
    "b-darts": (False, 1, False),
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
RESULT_FIELDS = ("out_dir", "resume", "quiet", "report_freq", "nb201_table", "data", "download",
                 "checkpoint_every_s")
# Seeds feed torch.manual_seed, numpy.random.seed and numpy.random.default_rng (all take [0, 2**32)).
SEED_LIMIT = 2 ** 32
# Methods whose one-shot search takes no architecture step (warmup_epochs does not apply to them).
NO_ARCH_STEP_METHODS = ("msr-darts",)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _type_name(v) -> str:
    return f"{type(v).__name__} {v!r}"


def _same_setting(name: str, a: Any, b: Any, dataset: Any = None) -> bool:
    """Equal settings; ``device`` compared as resolved here (None, automatic, is 'cpu' on a machine
    without a GPU, so a resume that spells it out is the same run); ``dataset_options`` compared as the
    data they load from ``dataset`` (an option spelled out at its default is the same run)."""
    if name == "dataset_options" and a != b:
        from fastnas.data.datasets import same_dataset_options

        return isinstance(a, dict) and isinstance(b, dict) and same_dataset_options(dataset, a, b)
    if name == "device" and a != b:
        from fastnas.devices import resolve_device

        try:
            return resolve_device(a) == resolve_device(b)
        except (TypeError, ValueError):
            return False
    return a == b


# Settings that belong to one method, by name prefix (see _recorded_setting).
_METHOD_FIELD_PREFIXES = {"msr_": "msr-darts", "drnas_": "drnas", "mae_": "mae", "aux_skip_": "darts-minus"}


def _recorded_setting(recorded: Dict[str, Any], name: str) -> Any:
    """Setting ``name`` of a checkpoint's config. One written before the setting existed ran with its
    default, so that is what it records; except a setting of the checkpoint's own method, which did not
    exist when that method ran differently (None: a resume is refused, naming it)."""
    if name in recorded:
        return recorded[name]
    owner = next((m for prefix, m in _METHOD_FIELD_PREFIXES.items() if name.startswith(prefix)), None)
    if owner is not None and recorded.get("method") == owner:
        return None
    f = SearchConfig.__dataclass_fields__.get(name)
    if f is None:
        return None
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


# The optimiser and schedule defaults each method's own code uses (settings left None take them).
# PC-DARTS (DESIGN.md section 3) is the default for every method not listed.
PCDARTS_DEFAULTS: Dict[str, Any] = dict(batch_size=256, learning_rate=0.1, learning_rate_min=0.0, epochs=50,
                                        warmup_epochs=15, arch_learning_rate=6e-4, train_portion=0.5)
# DARTS's train_search.py: batch 64, lr 0.025 annealed to 0.001, arch lr 3e-4, the architecture updated
# from the first step. DARTS- runs on DARTS's code and settings (plus its auxiliary skip).
_DARTS_DEFAULTS = dict(batch_size=64, learning_rate=0.025, learning_rate_min=0.001, arch_learning_rate=3e-4,
                       warmup_epochs=0)
# DrNAS's train_search.py (DARTS space: 20 cells of 36 channels, K 6 then 4, 25 + 25 epochs) and
# 201-space/train_search_progressive.py (50 + 50 epochs): batch 64, 10 weight-only epochs at the start
# of every stage.
METHOD_DEFAULTS: Dict[str, Dict[str, Dict[str, Any]]] = {
    "darts": {"darts": _DARTS_DEFAULTS, "nb201": _DARTS_DEFAULTS},
    "darts-2nd": {"darts": _DARTS_DEFAULTS, "nb201": _DARTS_DEFAULTS},
    "darts-minus": {"darts": _DARTS_DEFAULTS, "nb201": _DARTS_DEFAULTS},
    "drnas": {"darts": dict(batch_size=64, learning_rate=0.1, learning_rate_min=0.0, arch_learning_rate=6e-4,
                            epochs=50, warmup_epochs=10, init_channels=36, layers=20),
              "nb201": dict(batch_size=64, learning_rate=0.025, learning_rate_min=0.001, arch_learning_rate=3e-4,
                            epochs=100, warmup_epochs=10)},
    # BNASv2CLR/train_search_b_confidence.py: batch 256, lr 0.1 annealed to 0 (PC-DARTS's), arch lr 3e-4,
    # architecture steps from the first epoch (--started_epoch 0).
    "b-darts": {"darts": dict(arch_learning_rate=3e-4, warmup_epochs=0)},
    # MSR-DARTS's train_search_cifar.py: batch 128, lr 0.025 annealed to 0.001, 80% of the training set
    # for the weights (the rest only reports validation: there is no architecture step).
    "msr-darts": {space: dict(batch_size=128, learning_rate=0.025, learning_rate_min=0.001, train_portion=0.8)
                  for space in ("darts", "nb201")},
}


def method_defaults(method: str, space: str, mae_base: str = "pc-darts") -> Dict[str, Any]:
    """The defaults ``method`` fills in on ``space`` (MAE takes its base method's)."""
    base = mae_base if method == "mae" else method
    return {**PCDARTS_DEFAULTS, **METHOD_DEFAULTS.get(base, {}).get(space, {})}


@dataclass
class SearchConfig:
    """Everything a search needs; defaults are PC-DARTS's on CIFAR-10 (DESIGN.md section 3), except the
    optimiser and schedule settings left None, which take the method's own (:data:`METHOD_DEFAULTS`).

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
    # None: the method's own default (METHOD_DEFAULTS; PC-DARTS's 256, 0.1, 0.0, 50, 15, 6e-4 otherwise)
    batch_size: Optional[int] = None
    learning_rate: Optional[float] = None
    learning_rate_min: Optional[float] = None
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    epochs: Optional[int] = None
    # architecture steps from this epoch on (PC-DARTS: 15); DrNAS: from this epoch of every stage on
    warmup_epochs: Optional[int] = None
    init_channels: Optional[int] = None   # None: 16 (DrNAS on darts: 36, or the next multiple of its stages' K)
    layers: Optional[int] = None
    train_portion: Optional[float] = None  # None: the method's (0.5; MSR-DARTS 0.8)
    partial_channels: Optional[int] = None
    edge_norm: Optional[bool] = None
    unrolled: Optional[bool] = None
    arch_learning_rate: Optional[float] = None
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
    # A checkpoint inside an epoch once this many seconds have passed since the last one (0: at epoch
    # ends only). A CPU epoch of a full search takes tens of minutes; a kill loses at most this much.
    checkpoint_every_s: float = 600.0
    out_dir: Optional[str] = None
    resume: Any = False                   # True / a run folder / a checkpoint file
    quiet: bool = False
    nb201_table: Optional[str] = None
    # DARTS- (method "darts-minus"): the auxiliary skip's weight at the first epoch, and its decay to 0.
    aux_skip_beta0: float = 1.0
    aux_skip_schedule: str = "linear"      # "linear" (the paper's) | "cosine"
    # DrNAS (method "drnas"): the regulariser of the Dirichlet concentrations and its scale.
    # "l2": the architecture Adam's weight decay is drnas_reg_scale (DrNAS's default); "kl": a KL term
    # to Dirichlet(1) times drnas_reg_scale in the architecture loss, and no weight decay (DrNAS's
    # architect.py). Either replaces arch_weight_decay.
    drnas_reg: str = "l2"
    drnas_reg_scale: float = 1e-3
    # DrNAS's progressive scheme: stages of (K, ops kept per edge), the epochs split evenly between
    # them; None: DrNAS's (darts ((6, 7), (4, 4)), nb201 ((4, 5), (2, 3))). Off: one stage, all ops.
    drnas_progressive: bool = True
    drnas_stages: Optional[Tuple[Tuple[int, int], ...]] = None
    # BatchNorm(affine=False) after the DARTS supernet's pooling ops, as PC-DARTS and DARTS have it; off
    # for DrNAS, whose DARTS-space MixedOp has it commented out (NB201 pools have none in either code).
    drnas_pool_bn: bool = False
    # B-DARTS's confident learning rate on any differentiable method: confidence = ((epoch + 1) /
    # epochs) ** clr_power (first order: times the architecture lr; second order: times the unrolled
    # validation loss). None: off.
    clr_power: Optional[float] = None
    # B-DARTS's broad supernet: convolution blocks (one shared-weight reduction cell each) and the
    # normal cells of its enhancement block (``layers`` does not apply to it).
    conv_blocks: int = 2
    enhancement_cells: int = 2
    # MSR-DARTS (method "msr-darts"): what the "operator" of an op is whose stable rank is taken:
    # "last_conv" (the authors' code: its last convolution) or "chain" (all its convs, BN folded).
    msr_operator: str = "last_conv"
    # ... and whether its candidate convs are spectrally normalised as operators at every training
    # forward (the authors' code: 5 power iterations, norm 1; fastnas.nn.spectral_norm).
    msr_spectral_norm: bool = True
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
        for name in ("dataset_options", "proxy_settings"):
            if not isinstance(getattr(self, name), dict):
                raise TypeError(f"{name} must be a dict of settings, got {_type_name(getattr(self, name))}")
        c = dataclasses.replace(self, dataset_options=dict(self.dataset_options),
                                proxy_settings=dict(self.proxy_settings))
        for taken in ("split", "root"):
            if taken in c.dataset_options:
                raise ValueError(f"dataset option {taken!r} is the search's own (it reads the training split of "
                                 f"data); drop it from dataset_options (--dataset-option {taken}=...)")
        if c.space not in SPACES:
            raise ValueError(f"unknown space {c.space!r}; choose one of {', '.join(SPACES)}")
        if c.method not in ALL_METHODS:
            raise ValueError(f"unknown method {c.method!r}; choose one of {', '.join(ALL_METHODS)}")
        base = c.mae_base if isinstance(c.mae_base, str) else "pc-darts"
        for name, value in method_defaults(c.method, c.space, base).items():
            # DrNAS's progressive stages size init_channels for their K's (_resolve_drnas_stages)
            if getattr(c, name) is None and not (name == "init_channels" and c.method == "drnas"
                                                 and c.drnas_progressive):
                setattr(c, name, value)
        c._check_common()
        if c.method in ZERO_SHOT_METHODS:
            return c._resolved_zero_shot()
        if c.method in SPACE_ONLY and c.space != SPACE_ONLY[c.method][0]:
            space, why = SPACE_ONLY[c.method]
            raise ValueError(f"method {c.method!r} searches the {space!r} space only, not {c.space!r}: {why}")
        c._check_hyperparameters()
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
            c._check_real("mae_mask_ratio", lo=0.0, hi=1.0, lo_open=True, hi_open=True)
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
        if c.space == "darts" and c.layers is not None and c.layers < 3:
            # reductions sit at layers // 3 and 2 * layers // 3: with 1 or 2 layers every cell reduces
            raise ValueError(f"layers={c.layers}: the DARTS supernet places reduction cells at layers // 3 and "
                             f"2 * layers // 3, so with fewer than 3 layers it has no normal cell and the normal "
                             f"half of the Genotype would not be searched; use layers >= 3 (default 8)")
        if c.method == "darts-minus":
            from fastnas.search.schedules import AUX_SKIP_SCHEDULES

            if c.aux_skip_schedule not in AUX_SKIP_SCHEDULES:
                raise ValueError(f"unknown aux_skip_schedule {c.aux_skip_schedule!r}; choose one of "
                                 f"{', '.join(AUX_SKIP_SCHEDULES)}")
            c._check_real("aux_skip_beta0", lo=0.0)
        if c.method == "msr-darts":
            from fastnas.search.stable_rank import OPERATORS

            if c.msr_operator not in OPERATORS:
                raise ValueError(f"unknown msr_operator {c.msr_operator!r}; choose one of {', '.join(OPERATORS)}")
            if c.prune is not None:
                raise ValueError("prune does not apply to msr-darts: its supernet holds only the convolution ops "
                                 "(the candidates of its stable-rank selection), and zero-shot pruning ranks all "
                                 "of an edge's ops")
        if c.drnas_reg not in ("kl", "l2"):
            raise ValueError(f"drnas_reg must be 'kl' or 'l2', got {c.drnas_reg!r}")
        if c.drnas_pool_bn and (c.method != "drnas" or c.space != "darts"):
            raise ValueError("drnas_pool_bn applies to method='drnas' on the DARTS space (the other methods' DARTS "
                             "supernets always have the BatchNorm after pooling; NB201's pools never have it)")
        c._check_real("drnas_reg_scale", lo=0.0)
        c._check_real("clr_power", lo=0.0, none_ok=True)
        c._check_int("hessian_iters", lo=0, what="hessian_iters (0 turns the Hessian monitor off)")
        c._check_int("hessian_batch", lo=1)
        if c.init_channels % c.partial_channels:
            raise ValueError(f"init_channels={c.init_channels} is not divisible by partial_channels="
                             f"{c.partial_channels}: every edge samples C // K channels")
        c._check_warmup_leaves_architecture_steps()
        if c.amp not in (None, "bf16", "fp16"):
            raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {c.amp!r}")
        if c.prune is not None:
            from fastnas.proxies import get_proxy

            if not isinstance(c.prune, str):
                raise TypeError(f"prune must be a proxy name (or comma-separated names), got {_type_name(c.prune)}")
            from fastnas.search.pruning import NOT_FOR_SUPERNETS

            pruners = [get_proxy(name.strip()) for name in c.prune.split(",")]  # ValueError naming an unknown one
            twice = sorted({p.name for p in pruners if [q.name for q in pruners].count(p.name) > 1})
            if twice:
                raise ValueError(f"prune={c.prune!r} lists {', '.join(twice)} twice; each proxy counts once")
            for proxy in pruners:
                if proxy.name in NOT_FOR_SUPERNETS:
                    raise ValueError(f"prune={proxy.name!r}: this proxy cannot prune a supernet: "
                                     f"{NOT_FOR_SUPERNETS[proxy.name]}")
            c._check_real("keep", lo=0.0, hi=1.0, lo_open=True, hi_open=True,
                          what="keep (the fraction of ops kept by pruning)")
            if c.proxy_settings:
                if len(pruners) > 1:
                    raise ValueError(f"proxy_settings are the settings of one proxy; with prune={c.prune!r} "
                                     f"they would be ignored (pruning runs each proxy at its defaults)")
                if "repeats" in c.proxy_settings and "repeats" not in pruners[0].defaults:
                    raise ValueError("proxy_settings['repeats']: pruning compares N with N without an op on one "
                                     "paired draw; averaging unpaired draws does not apply, drop the setting")
                pruners[0].check_settings(c.proxy_settings)
        elif c.proxy_settings:
            raise ValueError(f"proxy_settings are the settings of a zero-shot method's fitness proxy or of the "
                             f"pruning proxy; method {c.method!r} without prune would ignore them")
        return c

    # -- checks ------------------------------------------------------------------------------------
    def _check_common(self) -> None:
        """Settings every method reads: types first, so a string or a float where an integer belongs
        raises TypeError naming the setting rather than a comparison error deep in the search."""
        self._check_int("seed", lo=0, hi=SEED_LIMIT)
        for f in dataclasses.fields(self):  # "false" or 0 for a switch would silently mean True / False
            if f.type in ("bool", "Optional[bool]"):
                v = getattr(self, f.name)
                if not isinstance(v, bool) and not (v is None and f.type == "Optional[bool]"):
                    raise TypeError(f"{f.name} must be True or False{' (or None for the default)' if f.type != 'bool' else ''}, "
                                    f"got {_type_name(v)}")
        if self.device is not None and not isinstance(self.device, str):
            import torch

            if not isinstance(self.device, torch.device):
                raise TypeError(f"device must be a string such as 'cpu', 'cuda' or 'cuda:N' (or None for "
                                f"automatic), got {_type_name(self.device)}")
        if self.backend is not None and not isinstance(self.backend, str):
            raise TypeError(f"backend must be a backend name (e.g. 'torch', 'cpu', 'cuda', 'triton') or None "
                            f"for automatic, got {_type_name(self.backend)}")
        for name in ("out_dir", "data", "nb201_table"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, (str, os.PathLike)):
                raise TypeError(f"{name} must be a path (str or os.PathLike) or None, got {_type_name(v)}")
            if v is not None and not str(os.fspath(v)).strip():   # Path("") is the current folder
                raise ValueError(f"{name} is an empty path; give a path, or None for the default")
        if not isinstance(self.resume, (bool, str, os.PathLike)) and self.resume is not None:
            raise TypeError(f"resume must be True/False or the path of a run folder or checkpoint, got "
                            f"{_type_name(self.resume)}")
        self.arch_betas = self._checked_arch_betas()

    def _checked_arch_betas(self) -> Tuple[float, float]:
        betas = self.arch_betas
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2 \
                or not all(_is_real(b) for b in betas):
            raise TypeError(f"arch_betas must be a pair of numbers (beta1, beta2) for the architecture's Adam, "
                            f"e.g. (0.5, 0.999); got {_type_name(betas)}")
        betas = tuple(float(b) for b in betas)
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"arch_betas must both lie in [0, 1) (Adam's beta1, beta2), got {betas}")
        return betas

    def _check_hyperparameters(self) -> None:
        """The one-shot methods' optimizer and schedule settings: real numbers, finite, in range."""
        self._check_int("epochs", lo=1)
        self._check_int("warmup_epochs", lo=0)
        self._check_int("steps_per_epoch", lo=1, none_ok=True)
        self._check_real("learning_rate", lo=0.0, lo_open=True)
        self._check_real("learning_rate_min", lo=0.0)
        if self.learning_rate_min > self.learning_rate:
            raise ValueError(f"learning_rate_min={self.learning_rate_min} is larger than learning_rate="
                             f"{self.learning_rate}: the cosine schedule anneals from learning_rate down to "
                             "learning_rate_min, so it would raise the learning rate instead")
        self._check_real("momentum", lo=0.0, hi=1.0, hi_open=True)
        self._check_real("weight_decay", lo=0.0)
        self._check_real("grad_clip", none_ok=True)
        if self.grad_clip is not None and self.grad_clip < 0:
            raise ValueError(f"grad_clip must be > 0 (the largest gradient norm kept), or 0 / None to turn "
                             f"clipping off, got {self.grad_clip!r}: a negative max norm flips the gradients' sign")
        self._check_real("arch_learning_rate", lo=0.0, lo_open=True)
        self._check_real("arch_weight_decay", lo=0.0)
        self._check_real("train_portion", lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        self._check_real("checkpoint_every_s", lo=0.0)

    def _check_warmup_leaves_architecture_steps(self) -> None:
        """warmup_epochs >= epochs would end the search before its first architecture step: the result
        would be the random initial architecture, silently. Methods without architecture steps are exempt."""
        if self.method in NO_ARCH_STEP_METHODS or self.warmup_epochs < self.epochs:
            return
        suggest = min(self.epochs - 1, round(0.3 * self.epochs))  # PC-DARTS: 15 of 50 epochs
        raise ValueError(f"warmup_epochs={self.warmup_epochs} >= epochs={self.epochs}: method {self.method!r} "
                         "takes architecture steps only from epoch warmup_epochs on, so this search would never "
                         "take one and would return its random initial architecture; use warmup_epochs < "
                         f"{self.epochs} (e.g. --warmup_epochs {suggest}; the default is 15, for 50 epochs)")

    def _check_int(self, name: str, lo: Optional[int] = None, hi: Optional[int] = None, none_ok: bool = False,
                   what: Optional[str] = None) -> None:
        """TypeError unless setting ``name`` is an integer (or None with ``none_ok``); ValueError unless it
        lies in [lo, hi). Numpy integers are stored back as ints."""
        v, what = getattr(self, name), what or name
        if v is None and none_ok:
            return
        if not _is_int(v):
            raise TypeError(f"{what} must be an integer{' or None' if none_ok else ''}, got {_type_name(v)}")
        if (lo is not None and v < lo) or (hi is not None and v >= hi):
            span = ("a positive integer" if lo == 1 and hi is None else f"an integer >= {lo}" if hi is None
                    else f"an integer in [{lo}, {hi})")
            raise ValueError(f"{what} must be {span}, got {v!r}")
        setattr(self, name, int(v))

    def _check_real(self, name: str, lo: Optional[float] = None, hi: Optional[float] = None, lo_open: bool = False,
                    hi_open: bool = False, none_ok: bool = False, finite: bool = True,
                    what: Optional[str] = None) -> None:
        """TypeError unless setting ``name`` is a real number (or None with ``none_ok``); ValueError if it
        is NaN, infinite (with ``finite``) or outside the interval given by lo/hi (open or closed ends)."""
        v, what = getattr(self, name), what or name
        if v is None and none_ok:
            return
        if not _is_real(v):
            raise TypeError(f"{what} must be a number{' or None' if none_ok else ''}, got {_type_name(v)}")
        if math.isnan(v) or (finite and math.isinf(v)):
            raise ValueError(f"{what} must be a finite number, got {v!r}")
        low_bad = lo is not None and (v <= lo if lo_open else v < lo)
        high_bad = hi is not None and (v >= hi if hi_open else v > hi)
        if low_bad or high_bad:
            if hi is None:
                span = f"be {'>' if lo_open else '>='} {lo:g}"
            elif lo is None:
                span = f"be {'<' if hi_open else '<='} {hi:g}"
            else:
                span = f"lie in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
            raise ValueError(f"{what} must {span}, got {v!r}")

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
            preferred = method_defaults("drnas", self.space).get("init_channels", 16)
            self.init_channels = default_init_channels(stages, preferred)
        bad = [k for k, _ in stages if self.init_channels % k]
        if bad:
            raise ValueError(f"init_channels={self.init_channels} is not divisible by the K {bad} of drnas_stages "
                             f"{stages}: every edge samples C // K channels")
        self._check_positive_ints("epochs")
        if self.epochs < len(stages):
            raise ValueError(f"epochs={self.epochs} cannot hold the {len(stages)} stages of drnas_stages")
        from fastnas.search.progressive import stage_plan

        for stage in stage_plan(stages, self.epochs):
            if self.warmup_epochs >= stage.epochs:
                raise ValueError(f"warmup_epochs={self.warmup_epochs}: DrNAS trains only the weights for the first "
                                 f"warmup_epochs epochs of every stage, and stage {stage.index + 1} has "
                                 f"{stage.epochs}, so it would take no architecture step (its op pruning would "
                                 f"rank untrained alphas); use warmup_epochs < {stage.epochs} (DrNAS: 10 of 25)")
        self.drnas_stages = stages
        return stages[0][0]

    def _check_positive_ints(self, *names: str) -> None:
        """ValueError naming the first of ``names`` (and ``layers``, which may be None) that is not a
        positive integer."""
        for name in names + (("layers",) if self.layers is not None else ()):
            v = getattr(self, name)
            if not _is_int(v):
                raise TypeError(f"{name} must be a positive integer, got {_type_name(v)}")
            if v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
            setattr(self, name, int(v))

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
        proxy.check_settings({k: v for k, v in self.proxy_settings.items()
                              if k != "batch_size" and (k != "repeats" or "repeats" in proxy.defaults)})
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
        self._check_real("time_budget", none_ok=True, finite=False)
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
        theirs = {k: _recorded_setting(other, k) for k in mine}
        return {k: (theirs[k], v) for k, v in mine.items()
                if k not in RESULT_FIELDS and not _same_setting(k, theirs[k], v, mine["dataset"])}
