"""The search loop: data resident on the device, the step, per-epoch results, checkpoints and resume.

One epoch (PC-DARTS ``train_search.py``): ``steps`` weight batches from the weight half of the training
set; before each weight step, from epoch ``warmup_epochs`` on, an architecture step on the next batch of
the architecture half (one persistent iterator, never rebuilt). Then, with no gradient, the accuracy on
the architecture half, the derived architecture, the run-folder files and an atomic checkpoint.

Resume: the checkpoint holds everything that decides the rest of the run (weights, BatchNorm buffers,
both optimizers, the learning-rate schedule, both loaders' positions and generators, the global RNG
state, the history), so a resumed run repeats exactly the batches and updates of an uninterrupted one;
on the CPU with the deterministic fused kernels the final architecture parameters are bit-identical
(tested). Besides the checkpoint at every epoch end, one is taken inside an epoch whenever
``checkpoint_every_s`` seconds (default 600) have passed since the last: it adds the step reached and the
epoch's running loss/accuracy sums, and a run resumed from it goes on with the next step.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from fastnas import _ext
from fastnas.data import DeviceLoader, load_dataset, split_train
from fastnas.devices import resolve_device
from fastnas.nn import BroadSearchNetwork, SearchNetwork, bnas_genotype
from fastnas.nn.search_network import mixing_by_mean
from fastnas.nn.mae import MAESearchModel, mae_loss
from fastnas.ops import BackendUnavailableError, resolve
from fastnas.ops._dispatch import ENV_VAR
from fastnas.search.config import RESULT_FIELDS, SearchConfig
from fastnas.search.graphs import GraphedStep, check_graph_settings
from fastnas.search.monitor import dominant_hessian_eigenvalue
from fastnas.search.progressive import (combine_masks, initial_op_mask, stage_of, stage_plan, top_ops_mask,
                                        widen_state_dict)
from fastnas.search.prune_progress import PROGRESS_NAME, PruneProgress
from fastnas.search.pruning import PruneReport, prune_supernet, saved_activation_bytes
from fastnas.search.result import SearchResult
from fastnas.search.run_dir import RunDir, atomic_write_text
from fastnas.search.schedules import aux_skip_beta, confidence
from fastnas.search.step import SearchStep
from fastnas.spaces import NB201_EDGES, NB201_PRIMITIVES, PRIMITIVES, Genotype

__all__ = ["Searcher", "run_search", "count_skips"]

CHECKPOINT_VERSION = 1


def count_skips(genotype) -> int:
    """skip_connect ops in the derived normal cell (DARTS) or in the arch (NB201): the collapse signal."""
    if isinstance(genotype, Genotype):
        return sum(op == "skip_connect" for op, _ in genotype.normal)
    return str(genotype).count("skip_connect")


def load_search_dataset(cfg: SearchConfig):
    """The training split of ``cfg.dataset`` (with ``dataset_options``) as an ImageData; a dataset that
    does not take an option raises TypeError naming it."""
    options = dict(cfg.dataset_options, **({"download": True} if cfg.download else {}))
    try:
        return load_dataset(cfg.dataset, root=cfg.data, split="train", **options)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        raise TypeError(f"dataset {cfg.dataset!r} does not take the dataset_options {options}: {e}") from None


def check_backend(backend: Optional[str], device: torch.device, amp: Optional[str] = None) -> Optional[str]:
    """The fused-op backend a search will run on ``device``; an explicit ``backend`` (or FASTNAS_BACKEND)
    that cannot run there raises ValueError naming it and why, before anything is written (the ops would
    raise BackendUnavailableError, a RuntimeError, only at the first fused call)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "", torch.float32)
    try:
        return resolve(backend, device, dtype, "partial_channel_mix")
    except BackendUnavailableError as e:
        fix = ("leave backend unset (automatic)" if backend is not None
               else f"unset the {ENV_VAR} environment variable")
        raise ValueError(f"backend={backend if backend is not None else os.environ.get(ENV_VAR)!r} cannot run "
                         f"on device {device} with amp={amp!r}: {e}; {fix}") from None


def _min_side(cfg: SearchConfig) -> int:
    """The multiple of which the image height and width must be for ``cfg``'s supernet: 2 ** (the
    number of times it halves the resolution). NB201: 2 residual reduction blocks; DARTS: reduction
    cells at layers // 3 and 2 * layers // 3 (one cell when they coincide, layers = 1)."""
    if cfg.space == "nb201":
        return 4
    layers = 8 if cfg.layers is None else cfg.layers
    return 2 ** len({layers // 3, 2 * layers // 3})


def _check_out_dir(root: Path) -> None:
    """out_dir must be a folder or a path whose existing part is a folder: a file there (or above it)
    raises FileExistsError naming out_dir, before anything is created."""
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"out_dir {str(root)!r} is a file, not a folder: out_dir is the run folder "
                              "(config.json, checkpoint.pt, ...); choose a folder path")
    for parent in root.parents:
        if parent.exists():
            if not parent.is_dir():
                raise FileExistsError(f"out_dir {str(root)!r} cannot be created: {str(parent)!r} is a file, "
                                      "not a folder")
            break


class Searcher:
    """Builds everything a search needs from a :class:`SearchConfig`, then :meth:`run` s it.

    Attributes after construction: ``model`` (:class:`fastnas.nn.SearchNetwork`), ``step``
    (:class:`SearchStep`), ``scheduler``, ``w_loader`` / ``a_loader`` (:class:`DeviceLoader`, infinite),
    ``run_dir`` (:class:`RunDir`), ``start_epoch`` (> 0 after a resume), ``history``.
    """

    def __init__(self, config: SearchConfig):
        self.config = cfg = config.resolved()
        self.device = resolve_device(cfg.device)
        check_backend(cfg.backend, self.device, cfg.amp)
        if cfg.cuda_graph:
            check_graph_settings(self.device, cfg.unrolled, cfg.amp)
        self._graphed: Optional[GraphedStep] = None
        if cfg.channels_last is None:
            cfg.channels_last = self.device.type == "cpu"
        self._say = (lambda *a: None) if cfg.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
        if cfg.method == "b-darts" and cfg.enhancement_cells == 0:
            warnings.warn("enhancement_cells=0: the broad supernet has no normal cell, so the normal half of the "
                          "Genotype is not searched (it is derived from the initial architecture weights)",
                          stacklevel=2)
        self.table = self._load_table(cfg)
        # Data first: a missing dataset or a batch larger than the data fails before the run folder exists.
        self._build_data(cfg)
        self.run_dir = self._prepare_run_dir(cfg)
        try:
            self._start(cfg)
        except BaseException:
            self.run_dir.unlock()   # a failed start leaves the folder free for the next try
            raise

    def _start(self, cfg: SearchConfig) -> None:
        """Everything after the run folder is locked: resume, pruning, the model, the optimisers."""
        checkpoint = self._find_checkpoint(cfg)
        if checkpoint is not None:
            self._check_resumable(checkpoint)
            self.run_dir.adopt(cfg.to_dict())

        # DrNAS's progressive stages (None: one stage). The checkpoint records the supernet it holds
        # (stage, K, op mask), so a run resumed in a later stage rebuilds that stage's supernet.
        self.stages = (stage_plan(cfg.drnas_stages, cfg.epochs)
                       if cfg.method == "drnas" and cfg.drnas_progressive else None)
        self.prune_report = None
        if cfg.prune is not None:
            self.prune_report = (PruneReport.from_dict(checkpoint["prune"]) if checkpoint is not None
                                 else self._prune(cfg))
        self._seed_everything(cfg.seed)
        self.supernet_spec = ((checkpoint or {}).get("supernet") or self._initial_supernet_spec())
        self.model = self._build_model(self.supernet_spec)
        self.fused_backend = self._report_fused_backend(cfg)
        self._check_image_size()
        self.step = self._make_step()
        self.scheduler = self._make_scheduler()
        self.steps_per_epoch = len(self.w_loader) if cfg.steps_per_epoch is None else cfg.steps_per_epoch
        self.start_epoch = 0
        self.history: List[Dict[str, Any]] = []
        self.elapsed_s = 0.0
        # Where a checkpoint taken inside an epoch left it (None: at an epoch end); see _checkpoint_in_epoch.
        self._in_epoch: Optional[Dict[str, Any]] = None
        self._last_checkpoint = time.monotonic()
        self._epoch_t0 = time.perf_counter()
        if checkpoint is None and cfg.method == "msr-darts":
            self._derive()   # the first epoch mixes by the stable ranks of the initial weights
        if checkpoint is not None:
            self._load_state(checkpoint)
            where = (f"step {self._in_epoch['steps_done']} of epoch {self.start_epoch + 1}" if self._in_epoch
                     else f"epoch {self.start_epoch}")
            self._say(f"fastnas: resuming {self.run_dir.root} after {where} of {cfg.epochs}")
        else:
            self.run_dir.write_json(self.run_dir.config, cfg.to_dict())
            if self.run_dir.metrics.exists():  # a resume=True restart drops the rows of its killed first epoch
                self.run_dir.rewrite_metrics([])

    # -- construction -------------------------------------------------------------------------------
    def _report_fused_backend(self, cfg: SearchConfig) -> Optional[str]:
        """The backend the fused ops will run on (said at the start, recorded in result.json): a search
        that silently ran on the pure-PyTorch reference because the extension did not import would
        otherwise look like a slow machine."""
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp or "", torch.float32)
        try:
            name = resolve(cfg.backend, self.device, dtype, "partial_channel_mix")
        except (BackendUnavailableError, ValueError):
            return None  # an explicit backend that cannot run raises at the first fused call, saying why
        note = ""
        module, why_not = _ext.load()
        if name == "torch" and self.device.type == "cpu" and module is None:
            note = f" (the C++ extension is not usable: {why_not})"
        self._say(f"fastnas: fused ops on {self.device.type}: backend {name}{note}")
        return name

    @staticmethod
    def _check_images(cfg, shape, name) -> None:
        """Before anything is written: the supernets take RGB images (their stem is a 3-channel conv)
        whose sides halve exactly at every reduction (a side that does not fails inside a residual or
        factorized-reduce branch, or rounds to nothing on tiny images)."""
        if len(shape) != 4 or shape[1] != 3:
            raise ValueError(f"dataset {name!r}: the search networks take RGB images (N, 3, H, W), the data is "
                             f"{shape}; convert grayscale images to 3 channels (e.g. repeat the channel)")
        h, w = shape[2:]
        if cfg.method == "b-darts":
            m, why = 2 ** cfg.conv_blocks, (f"2**conv_blocks = {2 ** cfg.conv_blocks}: the broad supernet's fusion "
                                            "reduces every block's output to the last block's resolution")
        else:
            m = _min_side(cfg)
            why = (f"{m}: the {cfg.space} supernet halves the resolution {m.bit_length() - 1} time(s) and needs "
                   f"every halving exact (the smallest images it takes are {m}x{m})")
        if h < 1 or w < 1 or h % m or w % m:
            raise ValueError(f"image size {h}x{w} is not divisible by {why}; dataset {name!r} has images of shape "
                             f"{shape}: resize or crop them")

    def _check_image_size(self) -> None:
        """Before any training: the sizes the methods need exactly (ValueError naming the size)."""
        cfg = self.config
        if cfg.method == "msr-darts":
            from fastnas.search.stable_rank import check_image_size
            check_image_size(self.model, self.image_size)
        if cfg.method == "b-darts" and any(v % 2 ** cfg.conv_blocks for v in self.image_size):
            raise ValueError(f"image size {self.image_size[0]}x{self.image_size[1]} is not divisible by "
                             f"2**conv_blocks = {2 ** cfg.conv_blocks}: the broad supernet's fusion reduces every "
                             "block's output to the last block's resolution")

    def _make_step(self) -> SearchStep:
        cfg = self.config
        return SearchStep(self.model, learning_rate=cfg.learning_rate, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
                          arch_learning_rate=cfg.arch_learning_rate, arch_weight_decay=self._arch_weight_decay(),
                          arch_betas=cfg.arch_betas, unrolled=cfg.unrolled, amp=cfg.amp,
                          loss_fn=mae_loss if cfg.method == "mae" else None, capturable=cfg.cuda_graph)

    def _arch_weight_decay(self) -> float:
        """The architecture Adam's weight decay: arch_weight_decay, except for DrNAS, whose regulariser
        sets it (architect.py: reg_scale for "l2", 0 for "kl", whose KL term is in the loss instead)."""
        cfg = self.config
        if cfg.method != "drnas":
            return cfg.arch_weight_decay
        return cfg.drnas_reg_scale if cfg.drnas_reg == "l2" else 0.0

    def _make_scheduler(self):
        """PC-DARTS's cosine schedule of the weight learning rate over ``epochs``, stepped after each epoch:
        epoch e trains at the value for e. (PC-DARTS's and DARTS's scripts step it at the top of each
        epoch, which did the same under the torch they were written for, before 1.1; under torch >= 1.1
        their epoch e trains at the value for e + 1.)"""
        cfg = self.config
        return torch.optim.lr_scheduler.CosineAnnealingLR(self.step.w_optimizer, float(cfg.epochs),
                                                          eta_min=cfg.learning_rate_min)

    def _mask_shapes(self):
        """The space's primitives and ``{kind: (E, n_ops)}`` of its op masks."""
        primitives = PRIMITIVES if self.config.space == "darts" else NB201_PRIMITIVES
        shapes = ({"normal": (14, len(primitives)), "reduce": (14, len(primitives))} if self.config.space == "darts"
                  else {"cell": (len(NB201_EDGES), len(primitives))})
        return primitives, shapes

    def _method_op_mask(self) -> Optional[Dict[str, torch.Tensor]]:
        """The ops the method's own supernet holds, before any pruning (None: every op). DrNAS: its first
        stage's; on the DARTS space every op but ``none``, with or without progressive stages, as DrNAS's
        DARTS space has no ``none``. MSR-DARTS: the conv ops, the selection's candidates."""
        cfg = self.config
        primitives, shapes = self._mask_shapes()
        if cfg.method == "drnas":
            ops = (self.stages[0].ops_per_edge if self.stages is not None
                   else len(primitives) - (cfg.space == "darts"))
            return initial_op_mask(primitives, ops, shapes)
        if cfg.method == "msr-darts":
            from fastnas.search.stable_rank import candidate_op_mask

            return candidate_op_mask(primitives, shapes)
        return None

    def _initial_supernet_spec(self) -> Dict[str, Any]:
        """The first supernet: K and op mask (the method's own, and zero-shot pruning's)."""
        masks = None if self.prune_report is None else self.prune_report.masks
        return {"stage": 0, "partial_channels": self.config.partial_channels,
                "op_mask": combine_masks(masks, self._method_op_mask())}

    def _build_model(self, spec: Dict[str, Any]) -> SearchNetwork:
        cfg = self.config
        # DrNAS's KL runs over the first stage's ops in every stage (its pruned ops' alphas reset to 0).
        first_stage = None
        if self.stages is not None:
            first_stage = self._initial_supernet_spec()["op_mask"] or {
                kind: torch.ones(shape, dtype=torch.bool) for kind, shape in self._mask_shapes()[1].items()}
        model = self._supernet(spec["op_mask"], spec["partial_channels"], reg_columns=first_stage)
        if cfg.method == "msr-darts" and cfg.msr_spectral_norm:  # the authors' spectrally normalised convs
            from fastnas.search.stable_rank import apply_spectral_norm

            apply_spectral_norm(model, self.image_size)
        if cfg.method == "mae":  # the supernet encodes, a multi-scale decoder reconstructs the hidden patches
            model = MAESearchModel(model, image_size=self.image_size, patch_size=cfg.mae_patch_size,
                                   mask_ratio=cfg.mae_mask_ratio, decoder_channels=cfg.mae_decoder_channels,
                                   in_channels=self.image_channels)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _advance_stage(self, stage) -> None:
        """DrNAS: the next progressive stage. Keeps each edge's ``stage.ops_per_edge`` ops of largest
        concentration, rebuilds the supernet with ``stage.partial_channels`` and carries the weights over
        (widened, :mod:`fastnas.search.progressive`), the architecture optimizer's state and the point of
        the learning-rate schedule."""
        cfg = self.config
        old_model, old_step, old_scheduler = self.model, self.step, self.scheduler
        masks = combine_masks(old_model.op_masks(), top_ops_mask(old_model.masked_alphas(), stage.ops_per_edge))
        spec = {"stage": stage.index, "partial_channels": stage.partial_channels, "op_mask": masks}
        model = self._build_model(spec)
        model.load_state_dict(widen_state_dict(old_model.state_dict(), model.state_dict(),
                                               seed=cfg.seed * 1000 + stage.index, keep_fresh=("mask_",)))
        with torch.no_grad():  # DrNAS's prune(): the alphas of the ops a stage drops are reset to 0
            for kind in model.cell_kinds():
                alphas = model._alphas(kind)
                alphas[~masks[kind].to(alphas.device)] = 0.0
        self.model, self.supernet_spec = model, spec
        self.step = self._make_step()
        self.step.a_optimizer.load_state_dict(old_step.a_optimizer.state_dict())
        self.step.a_scaler.load_state_dict(old_step.a_scaler.state_dict())
        self.scheduler = self._make_scheduler()
        self.scheduler.load_state_dict(old_scheduler.state_dict())
        for group in self.step.w_optimizer.param_groups:
            group["lr"] = self.scheduler.get_last_lr()[0]
        kept = {k: int(m.sum(-1).max()) for k, m in masks.items()}
        self._say(f"fastnas: DrNAS stage {stage.index + 1}/{len(self.stages)}: K={stage.partial_channels}, "
                  f"{stage.ops_per_edge} ops per edge (kept per kind: {kept})")

    def _supernet(self, op_mask=None, partial_channels: Optional[int] = None,
                  edge_norm: Optional[bool] = None, reg_columns=None) -> SearchNetwork:
        cfg = self.config
        K = cfg.partial_channels if partial_channels is None else partial_channels
        edge_norm = cfg.edge_norm if edge_norm is None else edge_norm
        common = dict(C=cfg.init_channels, num_classes=self.num_classes, partial_channels=K, edge_norm=edge_norm,
                      backend=cfg.backend, op_mask=op_mask, aux_skip=cfg.method == "darts-minus",
                      mixing="dirichlet" if cfg.method == "drnas" else "softmax", reg_type=cfg.drnas_reg,
                      reg_scale=cfg.drnas_reg_scale)
        if cfg.method == "drnas":  # DrNAS's KL columns and, on DARTS, its pools without BatchNorm
            common["reg_columns"] = reg_columns
            if cfg.space == "darts":
                common["pool_bn"] = cfg.drnas_pool_bn
        if cfg.method == "b-darts":
            net = BroadSearchNetwork(conv_blocks=cfg.conv_blocks, enhancement_cells=cfg.enhancement_cells, **common)
        else:
            net = SearchNetwork(cfg.space, layers=cfg.layers, **common)
        return net.to(self.device)

    def _prune(self, cfg) -> PruneReport:
        """Zero-shot pruning on a batch of the weight half; writes ``prune.json``; see fastnas.search.pruning."""
        from fastnas.proxies import get_proxy, load_proxy_data

        names = [n.strip() for n in cfg.prune.split(",")]
        n = max(get_proxy(name).batch_size or 1 for name in names)
        data = load_proxy_data(self._w_half, n=n, seed=cfg.seed, device=self.device)
        settings = {names[0]: cfg.proxy_settings} if len(names) == 1 and cfg.proxy_settings else {}
        self._say(f"fastnas: pruning the {cfg.space} supernet with {', '.join(names)} to keep {cfg.keep:.0%} of the ops")
        progress = self._prune_progress(cfg, data)
        report = prune_supernet(self._supernet, names, data.images, data.labels, cfg.keep, cfg.seed, settings,
                                progress_bar=not cfg.quiet, progress=progress, initial_masks=self._method_op_mask())
        if report.reused_evaluations:
            self._say(f"fastnas: pruning resumed: {report.reused_evaluations} of {report.evaluations} evaluations "
                      f"read back from {progress.path.name}")
        # Activation memory of a training forward, full vs pruned supernet, per image (it is linear in B).
        b = min(cfg.batch_size, 8)
        x = data.images[:b]
        torch.manual_seed(cfg.seed)
        full_net, pruned_net = self._supernet(), self._supernet(report.masks)
        full = saved_activation_bytes(full_net, x) / b
        pruned = saved_activation_bytes(pruned_net, x) / b
        params_full = sum(p.numel() for p in full_net.weight_parameters())
        params_pruned = sum(p.numel() for p in pruned_net.weight_parameters())
        report.memory = {"activation_bytes_per_image_full": full, "activation_bytes_per_image_pruned": pruned,
                         "activation_saving": 1.0 - pruned / full, "params_full": params_full,
                         "params_pruned": params_pruned, "params_saving": 1.0 - params_pruned / params_full}
        vs_darts = ""
        if cfg.partial_channels > 1:
            # The one-shot baseline without partial channels either: this supernet at K=1, without edge
            # normalisation and unpruned (for pc-darts, DARTS's supernet).
            darts = saved_activation_bytes(self._supernet(partial_channels=1, edge_norm=False), x) / b
            report.memory.update(activation_bytes_per_image_darts=darts, activation_saving_vs_darts=1.0 - pruned / darts)
            vs_darts = f"; {darts / 2**20:.2f} MiB at K=1 unpruned (DARTS's supernet): {1.0 - pruned / darts:.0%} less"
        self.run_dir.write_json(self.run_dir.root / "prune.json", report.to_dict())
        self._say(f"fastnas: pruning kept {report.kept} in {report.seconds:.1f} s; activation memory per image "
                  f"{pruned / 2**20:.2f} MiB vs {full / 2**20:.2f} MiB unpruned ({report.memory['activation_saving']:.0%} "
                  f"less){vs_darts}, parameters {params_pruned:,} vs {params_full:,}")
        return report

    def _prune_progress(self, cfg, data) -> PruneProgress:
        """The pruning evaluations of an interrupted run of this search (``resume=True``), else none;
        this run's are saved to the run folder as they are made (:mod:`fastnas.search.prune_progress`)."""
        from fastnas.proxies.journal import data_digest, environment_fingerprint

        fingerprint = {"config": {k: v for k, v in cfg.to_dict().items() if k not in RESULT_FIELDS},
                       "data_sha256": data_digest(data.images, data.labels), **environment_fingerprint(self.device)}
        return PruneProgress.open(self.run_dir.root / PROGRESS_NAME, fingerprint, resume=cfg.resume is True)

    @staticmethod
    def _load_table(cfg):
        if cfg.nb201_table is None:
            return None
        if cfg.space != "nb201":
            raise ValueError(f"nb201_table applies to space='nb201', not {cfg.space!r}")
        from fastnas.tables import load_nb201_table  # fails here, before any training, when the file is bad
        return load_nb201_table(cfg.nb201_table)

    @staticmethod
    def _prepare_run_dir(cfg) -> RunDir:
        """The run folder: ``out_dir``; else the folder ``resume=PATH`` points at; else a new
        ``fastnas-runs/<space>-<method>-<time>`` (made exclusively). A new run, or a resume into another
        folder than the checkpoint's, refuses a folder that holds a run or files a run writes."""
        source = None
        if cfg.resume not in (False, True, None):
            p = Path(cfg.resume).expanduser()
            source = p if p.is_dir() else p.parent
        if cfg.out_dir is None and source is None:
            if cfg.resume is True:
                raise ValueError("resume=True (--resume) continues the run in out_dir, and no out_dir is given "
                                 "(a new run folder never holds a checkpoint); pass out_dir (--out_dir) or the "
                                 "run folder / checkpoint itself (--resume PATH)")
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            return RunDir.create_unique(Path("fastnas-runs"), f"{cfg.space}-{cfg.method}-{stamp}")
        run_dir = RunDir(Path(cfg.out_dir).expanduser() if cfg.out_dir is not None else source)
        _check_out_dir(run_dir.root)
        if source is not None and os.path.realpath(source) != os.path.realpath(run_dir.root):
            run_dir.forked_from = source
        try:
            run_dir.create()
        except OSError as e:
            raise ValueError(f"cannot create the run folder out_dir={str(run_dir.root)!r}: {e}") from None
        # Locked before the checks: of two searches started together on one out_dir, only the lock's
        # holder may look at (and then write) the folder. A folder that did not exist passes the checks.
        run_dir.lock()
        try:
            if not cfg.resume or run_dir.forked_from is not None:
                Searcher._check_nothing_in_the_way(run_dir, source)
            elif cfg.resume is True and not run_dir.has_checkpoint():
                Searcher._check_restart(run_dir, cfg)
        except FileExistsError:
            run_dir.unlock()
            raise
        return run_dir

    @staticmethod
    def _check_restart(run_dir: RunDir, cfg) -> None:
        """resume=True on a folder without a checkpoint starts the run from the beginning, over what this
        same run left before its first checkpoint (its own config.json, same settings: metrics, genotype,
        pruning, plots); never over a finished run's result, another run's outputs or the user's files."""
        if run_dir.result.exists():
            raise FileExistsError(f"{run_dir.root} holds a finished search (result.json) but no checkpoint to resume "
                                  "from; starting afresh would overwrite it: choose another out_dir")
        leftovers = [p.name for p in (run_dir.metrics, run_dir.genotype) if p.exists()] + run_dir.files_in_the_way()
        if not leftovers:
            return
        recorded = run_dir.recorded_config()
        if recorded is not None and not cfg.differences(recorded):
            return
        whose = ("a search with other settings" if recorded is not None
                 else "no search config.json there (they are not this run's)")
        raise FileExistsError(f"{run_dir.root} has no checkpoint to resume from, and starting afresh would overwrite "
                              f"{', '.join(leftovers)} ({whose}); choose another out_dir")

    @staticmethod
    def _check_nothing_in_the_way(run_dir: RunDir, source: Optional[Path]) -> None:
        """A new run, or a resume into another folder than the checkpoint's, needs a folder with no run
        and no file a run writes."""
        fork = (f"resuming {source} into it would mix two runs; " if run_dir.forked_from is not None
                else "pass resume=True (--resume) to continue it, or ")
        if run_dir.holds_a_run():
            raise FileExistsError(f"{run_dir.root} already holds a search (checkpoint, metrics, result or "
                                  f"pruning progress); {fork}choose another out_dir")
        in_the_way = run_dir.files_in_the_way()
        if in_the_way:
            raise FileExistsError(f"{run_dir.root} already has {', '.join(in_the_way)}, which a run writes "
                                  f"there; choose a new or empty out_dir")

    def _find_checkpoint(self, cfg) -> Optional[Dict[str, Any]]:
        return self.run_dir.find_checkpoint(cfg.resume, self._say)

    def _check_resumable(self, ckpt) -> None:
        if ckpt.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint version {ckpt.get('version')} is not {CHECKPOINT_VERSION}")
        diff = self.config.differences(ckpt["config"])
        if diff:
            detail = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"cannot resume {self.run_dir.root}: the settings differ from the checkpoint's ({detail})")

    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _build_data(self, cfg) -> None:
        data = load_search_dataset(cfg)
        self.image_channels, self.image_size = data.images.shape[1], tuple(data.images.shape[2:])
        self._check_images(cfg, tuple(data.images.shape), data.name or cfg.dataset)
        if cfg.method == "mae":
            # Unsupervised: the labels are dropped here, so no loader, loss or metric can read them.
            # The supernet's classifier is unused (its size does not matter).
            data = dataclasses.replace(data, labels=None)
            self.num_classes = data.num_classes or 10
        elif data.labels is None:
            raise ValueError(f"dataset {data.name or cfg.dataset!r} has no labels; method {cfg.method!r} "
                             "trains a classifier (method 'mae' searches without labels)")
        else:
            self.num_classes = data.num_classes or int(data.labels.max()) + 1
        w_half, a_half = split_train(data, train_portion=cfg.train_portion)
        self._w_half = w_half
        smaller = min(len(w_half), len(a_half))
        if cfg.batch_size > smaller:
            raise ValueError(f"batch_size={cfg.batch_size} is larger than the data: {len(data)} images split by "
                             f"train_portion={cfg.train_portion} into {len(w_half)} for the weights and "
                             f"{len(a_half)} for the architecture; use batch_size <= {smaller}")
        dev = self.device
        # Seeds of the two loaders derive from the run's seed, so the batches do not depend on the
        # global RNG (whatever else consumed it) and a resume restores them exactly.
        common = dict(device=dev, channels_last=cfg.channels_last, infinite=True)
        self.w_loader = DeviceLoader.from_data(w_half, cfg.batch_size, seed=cfg.seed * 1000 + 1, **common)
        self.a_loader = DeviceLoader.from_data(a_half, cfg.batch_size, seed=cfg.seed * 1000 + 2, **common)
        # Accuracy on the architecture half without augmentation, in a fixed order, every epoch (PC-DARTS's
        # infer() reads it through the training transform, and only at the last epoch).
        self.eval_loader = DeviceLoader.from_data(a_half, cfg.batch_size, augment=False, shuffle=False,
                                                  drop_last=False, device=dev, channels_last=cfg.channels_last,
                                                  seed=0)

    # -- checkpoint state ------------------------------------------------------------------------------
    def _state(self, epoch: int) -> Dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "epoch": epoch,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "step": self.step.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "w_loader": self.w_loader.state_dict(),
            "a_loader": self.a_loader.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None},
            "history": self.history,
            "elapsed_s": self.elapsed_s,
            "prune": None if self.prune_report is None else self.prune_report.to_dict(),
            "supernet": self.supernet_spec,
        }

    def _load_state(self, ckpt: Dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.step.load_state_dict(ckpt["step"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.w_loader.load_state_dict(ckpt["w_loader"])
        self.a_loader.load_state_dict(ckpt["a_loader"])
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng.get("cuda") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.start_epoch = int(ckpt["epoch"])
        self.history = list(ckpt["history"])
        self.elapsed_s = float(ckpt.get("elapsed_s", 0.0))
        self._in_epoch = ckpt.get("in_epoch")
        # Lines a killed run appended after its last checkpoint would otherwise appear twice.
        self.run_dir.rewrite_metrics(self.history)

    # -- the loop ---------------------------------------------------------------------------------------
    def run(self) -> SearchResult:
        """Runs the remaining epochs; the run folder's lock is released at the end, however it ends."""
        try:
            return self._run()
        finally:
            self.run_dir.unlock()

    def _run(self) -> SearchResult:
        cfg = self.config
        for epoch in range(self.start_epoch, cfg.epochs):
            # A run resumed inside this epoch counts the seconds the killed run had spent in it.
            self._epoch_t0 = time.perf_counter() - (self._in_epoch["seconds"] if self._in_epoch else 0.0)
            if self.stages is not None and stage_of(self.stages, epoch).index > self.supernet_spec["stage"]:
                self._advance_stage(stage_of(self.stages, epoch))
            row = self._train_epoch(epoch)
            row.update(self._evaluate())
            row["hessian_eigenvalue"] = self._hessian_eigenvalue(epoch)
            row["epoch_time_s"] = time.perf_counter() - self._epoch_t0
            self.elapsed_s += row["epoch_time_s"]
            self._finish_epoch(epoch, row)
        return self.result()

    def _train_epoch(self, epoch: int) -> Dict[str, Any]:
        cfg = self.config
        self.model.train()
        if cfg.clr_power is not None:  # B-DARTS's confident learning rate
            self.step.confidence = confidence(epoch, cfg.epochs, cfg.clr_power)
        if self.model.aux_skip:  # DARTS-: this epoch's auxiliary skip weight (evaluation uses it too)
            self.model.aux_skip_weight = aux_skip_beta(epoch, cfg.epochs, cfg.aux_skip_beta0, cfg.aux_skip_schedule)
        lr = self.step.lr
        # MSR-DARTS replaces the architecture step by its stable-rank selection: weights only.
        # DrNAS's stages each start with warmup_epochs weight-only epochs (its train(..., e) per stage).
        stage_epoch = epoch - stage_of(self.stages, epoch).first_epoch if self.stages is not None else epoch
        update_arch = stage_epoch >= cfg.warmup_epochs and cfg.method != "msr-darts"
        n = self.steps_per_epoch
        # Sums stay on the device; they are read every report_freq steps (one synchronisation), not
        # every step.
        step = self._graphed_step() if cfg.cuda_graph else self.step
        done = self._in_epoch or {"steps_done": 0, "loss_sum": 0.0, "correct": 0, "seen": 0}
        self._in_epoch = None
        loss_sum = torch.tensor(done["loss_sum"], dtype=torch.float64, device=self.device)
        correct = torch.tensor(done["correct"], dtype=torch.int64, device=self.device)
        seen = done["seen"]
        bar = self._progress(epoch, n)
        if bar is not None and done["steps_done"]:
            bar.update(done["steps_done"])
        for i in range(done["steps_done"], n):
            x_w, y_w = next(self.w_loader)
            x_a, y_a = next(self.a_loader) if update_arch else (None, None)
            loss, right = step(x_w, y_w, x_a, y_a, update_arch=update_arch)
            loss_sum += loss.double() * x_w.shape[0]
            correct += right
            seen += x_w.shape[0]
            if (cfg.checkpoint_every_s and i + 1 < n
                    and time.monotonic() - self._last_checkpoint >= cfg.checkpoint_every_s):
                self._checkpoint_in_epoch(epoch, i + 1, loss_sum, correct, seen)
            if bar is not None:
                if (i + 1) % cfg.report_freq == 0 or i + 1 == n:
                    acc = {} if cfg.method == "mae" else {"acc": f"{100.0 * correct.item() / seen:.1f}%"}
                    bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", **acc, refresh=False)
                bar.update(1)
        if bar is not None:
            bar.close()
        self.scheduler.step()
        train_loss = loss_sum.item() / seen
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"the training loss became {train_loss} in epoch {epoch + 1}; lower "
                                     "learning_rate or disable amp")
        row = {"epoch": epoch + 1, "lr": lr, "arch_step": update_arch, "steps": n, "train_loss": train_loss,
               "train_acc": None if cfg.method == "mae" else 100.0 * correct.item() / seen}
        if self.model.aux_skip:
            row["aux_skip_beta"] = self.model.aux_skip_weight
        if cfg.clr_power is not None:
            row["confidence"] = self.step.confidence
        if cfg.cuda_graph:
            row["cuda_graph"] = step.replaying  # this epoch's steps after the warm-up were graph replays
        if self.stages is not None:
            stage = self.stages[self.supernet_spec["stage"]]
            row.update(stage=stage.index + 1, partial_channels=stage.partial_channels, ops_per_edge=stage.ops_per_edge)
        return row

    def _checkpoint_in_epoch(self, epoch: int, steps_done: int, loss_sum, correct, seen: int) -> None:
        """A checkpoint after step ``steps_done`` of ``epoch``: the state of every epoch-end checkpoint
        (the loaders' positions, the RNG states and the optimizers are mid-epoch now) plus the epoch's
        running sums, so a resumed run takes step ``steps_done + 1`` next and ends the epoch with the
        numbers of an uninterrupted one. (Reading the sums synchronises a GPU: once per checkpoint.)"""
        state = self._state(epoch)
        state["in_epoch"] = {"epoch": epoch, "steps_done": steps_done, "loss_sum": loss_sum.item(),
                             "correct": int(correct.item()), "seen": seen,
                             "seconds": time.perf_counter() - self._epoch_t0}
        self.run_dir.save_checkpoint(state)
        self._last_checkpoint = time.monotonic()

    def _graphed_step(self) -> GraphedStep:
        """The CUDA-graph runner of this epoch (a new one when the step was rebuilt, e.g. by a DrNAS
        stage); its graph is captured again because the learning rates changed."""
        if self._graphed is None or self._graphed.step is not self.step:
            failed = None if self._graphed is None else self._graphed.failed
            self._graphed = GraphedStep(self.step)
            self._graphed.failed = failed
        self._graphed.new_epoch()
        return self._graphed

    def _progress(self, epoch: int, n: int):
        if self.config.quiet:
            return None
        from tqdm.auto import tqdm
        return tqdm(total=n, desc=f"epoch {epoch + 1}/{self.config.epochs}", leave=False, file=sys.stderr,
                    dynamic_ncols=True)

    def _validation_loss(self, x, y, generator_seed: int):
        """The search objective on a validation batch: (loss, logits or None). MAE draws its patch mask
        from a generator seeded with ``generator_seed``, so repeated calls see the same mask."""
        if self.config.method == "mae":
            generator = torch.Generator(device=x.device).manual_seed(generator_seed)
            return self.model.reconstruction_loss(x, generator=generator)
        logits = self.model(x).float()
        return F.cross_entropy(logits, y), logits

    @torch.no_grad()
    def _evaluate(self) -> Dict[str, Any]:
        """Loss and accuracy on the architecture half (eval mode, no augmentation), capped at
        ``steps_per_epoch`` batches when that is set. MAE: the reconstruction loss on hidden patches
        (the mask of batch i drawn from seed i, so epochs compare) and no accuracy."""
        self.model.eval()
        loss_sum, correct, seen = 0.0, 0, 0
        limit = self.config.steps_per_epoch
        try:
            for i, (x, y) in enumerate(self.eval_loader):
                if limit is not None and i >= limit:
                    break
                with self.step.autocast():
                    loss, logits = self._validation_loss(x, y, generator_seed=i)
                loss_sum += float(loss) * x.shape[0]
                if logits is not None:
                    correct += int((logits.argmax(1) == y).sum())
                seen += x.shape[0]
        finally:
            self.model.train()
        accuracy = None if self.config.method == "mae" else 100.0 * correct / seen
        return {"valid_loss": loss_sum / seen, "valid_acc": accuracy}

    def _hessian_eigenvalue(self, epoch: int) -> Optional[float]:
        """Dominant eigenvalue of the validation-loss Hessian w.r.t. the architecture parameters
        (:mod:`fastnas.search.monitor`) on the first ``hessian_batch`` validation images, train-mode BN as
        in the architecture step; BN buffers restored afterwards and the start vector drawn from its own
        generator, so the search itself is unchanged. None when ``hessian_iters`` is 0."""
        cfg = self.config
        if not cfg.hessian_iters:
            return None
        x, y = next(iter(self.eval_loader))
        x, y = x[:cfg.hessian_batch], None if y is None else y[:cfg.hessian_batch]
        saved = [b.detach().clone() for b in self.model.buffers()]
        generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        # A sampling supernet (DrNAS) draws from the global RNG: fork it so the search's stream is unchanged.
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            # A DrNAS supernet is differentiated through its Dirichlet mean (mixing_by_mean says why).
            with torch.random.fork_rng(devices=devices), mixing_by_mean(self.model):
                return dominant_hessian_eigenvalue(lambda: self._validation_loss(x, y, generator_seed=epoch)[0],
                                                   self.model.arch_parameters(), iters=cfg.hessian_iters,
                                                   generator=generator)
        finally:
            with torch.no_grad():
                for b, s in zip(self.model.buffers(), saved):
                    b.copy_(s)

    def _arch_weights(self) -> Dict[str, torch.Tensor]:
        """Softmaxed alphas per cell kind, pruned ops 0 (what the heatmaps and the log show)."""
        return self.model.arch_weights()

    def _derive(self, row: Optional[Dict[str, Any]] = None):
        """The discrete architecture: the supernet's ``genotype()`` (argmax of the architecture weights),
        or for MSR-DARTS the minimum-stable-rank ops (their stable ranks go into ``row``, and become the
        mixing weights of the next epoch: the authors refresh them before every epoch)."""
        if self.config.method != "msr-darts":
            return self.model.genotype()
        from fastnas.search.stable_rank import derive_by_stable_rank, set_mixing_from_stable_ranks

        genotype, scores = derive_by_stable_rank(self.model, image_size=self.image_size,
                                                 operator=self.config.msr_operator)
        set_mixing_from_stable_ranks(self.model, scores)
        if row is not None:
            row["stable_rank"] = {k: [[None if v != v else round(v, 4) for v in r] for r in t.tolist()]
                                  for k, t in scores.items()}
        return genotype

    def _finish_epoch(self, epoch: int, row: Dict[str, Any]) -> None:
        genotype = self._derive(row)
        arch_text = genotype if isinstance(genotype, str) else repr(genotype)
        row["genotype"] = arch_text
        row["skip_connects"] = count_skips(genotype)
        weights = self._arch_weights()
        row["arch_weights"] = {k: [[round(v, 6) for v in r] for r in w.tolist()] for k, w in weights.items()}
        if self.table is not None:
            row.update({f"table_{k}": v for k, v in (self._table_row(arch_text) or {}).items() if k != "idx"})
        self.history.append(row)
        self.run_dir.append_metrics(row)
        atomic_write_text(self.run_dir.genotype, arch_text + "\n")
        self._heatmap(epoch, weights)
        self._collapse_plot()
        self.run_dir.save_checkpoint(self._state(epoch + 1))
        self._last_checkpoint = time.monotonic()
        accuracy = ("" if row["train_acc"] is None else
                    f"acc {row['train_acc']:.2f}%  valid acc {row['valid_acc']:.2f}%  ")
        self._say(f"epoch {epoch + 1}/{self.config.epochs}  lr {row['lr']:.4g}  train loss {row['train_loss']:.4f}  "
                  f"valid loss {row['valid_loss']:.4f}  {accuracy}"
                  f"{row['epoch_time_s']:.1f} s  skips {row['skip_connects']}"
                  + (f"  hessian eig {row['hessian_eigenvalue']:.4g}" if row.get("hessian_eigenvalue") is not None
                     else "") + f"  {arch_text}")

    def _table_row(self, arch: str) -> Optional[Dict[str, Optional[float]]]:
        return self.table.row_or_none(arch)

    def _heatmap(self, epoch: int, weights: Dict[str, torch.Tensor]) -> None:
        from fastnas.search.plots import edge_labels_darts, edge_labels_nb201, save_arch_heatmap

        rows = edge_labels_nb201() if self.model.space == "nb201" else edge_labels_darts()
        try:
            save_arch_heatmap(self.run_dir.heatmap(epoch + 1), {k: v.numpy() for k, v in weights.items()}, rows,
                              list(self.model.primitives),
                              f"{self.config.method} on {self.config.space}: epoch {epoch + 1}")
        except ImportError as e:  # matplotlib is a dependency, but a search must not die for a picture
            self._warn_once(f"no heatmaps: {e}")

    def _collapse_plot(self) -> None:
        from fastnas.search.plots import save_collapse_plot

        try:
            save_collapse_plot(self.run_dir.root / "collapse.png", self.history,
                               f"{self.config.method} on {self.config.space}: collapse signals")
        except ImportError as e:
            self._warn_once(f"no plots: {e}")

    _warned = False

    def _warn_once(self, msg: str) -> None:
        if not self._warned:
            warnings.warn(msg)
            self._warned = True

    # -- the result ---------------------------------------------------------------------------------
    def result(self) -> SearchResult:
        genotype = self._derive()
        arch_text = genotype if isinstance(genotype, str) else repr(genotype)
        table_row = self._table_row(arch_text) if self.table is not None else None
        if self.table is not None and table_row is None:
            self._say(f"fastnas: {arch_text} is not in the NB201 table {self.config.nb201_table} "
                      f"({len(self.table)} archs)")
        result = SearchResult(space=self.config.space, method=self.config.method, genotype=genotype,
                              arch_parameters={n: p.detach().cpu().clone()
                                               for n, p in self.model.named_arch_parameters()},
                              history=list(self.history), config=self.config.to_dict(), out_dir=self.run_dir.root,
                              table_accuracy=table_row, search_time_s=self.elapsed_s,
                              extras={} if self.prune_report is None else {"prune": self.prune_report.to_dict()})
        if self.config.method == "b-darts":
            result.extras["bnas_genotype"] = bnas_genotype(genotype)
        self.run_dir.write_json(self.run_dir.result, {
            "space": result.space, "method": result.method, "genotype": arch_text,
            **({"bnas_genotype": repr(result.extras["bnas_genotype"])} if "bnas_genotype" in result.extras else {}),
            "table_accuracy": table_row, "search_time_s": result.search_time_s, "epochs": result.epochs,
            "fused_backend": self.fused_backend,
            "arch_parameters": {k: v.tolist() for k, v in result.arch_parameters.items()},
        })
        return result


def run_search(config: SearchConfig) -> SearchResult:
    return Searcher(config).run()
