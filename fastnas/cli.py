"""The ``fastnas`` command line: ``fastnas search ...``, ``fastnas score ...`` and ``fastnas info``.

``fastnas search`` takes every :class:`fastnas.search.SearchConfig` setting as an option, spelled as on
the PC-DARTS command line (``--batch_size``, ``--learning_rate``, ``--arch_learning_rate``, ...) or with
dashes (``--batch-size``). It prints the result summary (``--quiet``: only the genotype / arch string, on
stdout, for scripts) and exits 0; bad settings exit 2 with the error message.

``fastnas score`` scores architectures with zero-cost proxies and writes the table as CSV (``--output``,
default stdout); with ``--table`` it samples ``--archs N`` architectures of a benchmark table and prints
the Spearman and Kendall correlation of every proxy with every accuracy column. Every finished score
goes to a journal (``--checkpoint``, or ``OUTPUT.journal.jsonl`` with ``--output``): a killed run, rerun
with the same command, scores only what it lacks (:mod:`fastnas.proxies.journal`).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import sys
from pathlib import Path
from typing import List, Optional

__all__ = ["main", "build_parser"]

# Settings with a hand-made option (the rest are generated from the dataclass fields).
_HELP = {
    "space": "search space: darts | nb201",
    "method": "pc-darts (default) | darts | darts-2nd | darts-minus | drnas | b-darts | msr-darts | mae | "
              "swap-evolution | random",
    "dataset": "cifar10 | cifar100 | cifar10_sample | synthetic | PATH.npz",
    "data": "data folder (cifar10/100 pickle folders; for cifar10_sample the .npz or its folder)",
    "device": "cpu | cuda | cuda:N (default: cuda when available)",
    "layers": "cells (darts, default 8; drnas 20) or cells per stage (nb201, default 5)",
    "partial_channels": "partial-channel factor K (default: the method's; 4 for pc-darts, 1 for darts, b-darts "
                        "and msr-darts, mae as its mae_base, drnas its first stage's: 6 on darts, 4 on nb201)",
    "warmup_epochs": "architecture steps start at this epoch (default: the method's; PC-DARTS 15, DARTS 0; "
                     "drnas: at this epoch of every stage, 10)",
    "batch_size": "images per step (default: the method's; PC-DARTS 256, DARTS and DrNAS 64, MSR-DARTS 128)",
    "train_portion": "fraction of the training set for the weight step, the rest for the architecture step "
                     "(default: the method's; 0.5, MSR-DARTS 0.8)",
    "msr_spectral_norm": "msr-darts: spectrally normalise the candidate convs as operators at every training "
                         "forward (the authors' code; --no-msr-spectral-norm: plain convs)",
    "drnas_progressive": "drnas: progressive stages (--no-drnas-progressive: one stage, all ops)",
    "msr_operator": "msr-darts: the operator whose stable rank is taken: last_conv (the authors' code: an "
                    "op's last convolution) | chain (all its convolutions, BatchNorm folded)",
    "epochs": "search epochs (default: the method's; 50, drnas on nb201 100)",
    "learning_rate": "weight SGD learning rate (default: the method's; PC-DARTS 0.1, DARTS 0.025)",
    "learning_rate_min": "end of the cosine schedule (default: the method's; PC-DARTS 0, DARTS 0.001)",
    "arch_learning_rate": "architecture Adam learning rate (default: the method's; PC-DARTS 6e-4, DARTS 3e-4)",
    "steps_per_epoch": "cap on weight steps per epoch (default: one pass over the weight half)",
    "backend": "fused-op backend: torch | cpu | cuda | triton (default: automatic)",
    "cuda_graph": "CUDA: capture the search step in a CUDA graph (first order; amp none or bf16)",
    "report_freq": "read loss/accuracy back from the device every N steps",
    "checkpoint_every_s": "also checkpoint inside an epoch when this many seconds have passed since the last "
                          "checkpoint (0: at epoch ends only)",
    "out_dir": "run folder (default fastnas-runs/SPACE-METHOD-TIME)",
    "nb201_table": "CSV with 'arch' and accuracy columns, or a NATS-Bench topology benchmark (folder or "
                   ".pickle.pbz2): report the found arch's accuracies",
    "aux_skip_beta0": "darts-minus: the auxiliary skip's weight at the first epoch (decays to 0)",
    "aux_skip_schedule": "darts-minus: linear | cosine decay of the auxiliary skip's weight",
    "drnas_reg": "drnas: l2 (the architecture Adam's weight decay, DrNAS's default) | kl (to Dirichlet(1)); "
                 "either replaces --arch_weight_decay",
    "drnas_reg_scale": "drnas: the regulariser's scale",
    "drnas_pool_bn": "drnas, DARTS space: BatchNorm after the pooling ops as PC-DARTS (default off, as DrNAS's code)",
    "drnas_stages": "drnas: progressive stages as K:OPS pairs, e.g. 6:7,4:4 (default: DrNAS's for the space)",
    "init_channels": "supernet channels C (default 16; drnas on darts 36, with 20 layers)",
    "clr_power": "confident learning rate ((epoch+1)/epochs)**p on the architecture step (default: 2 for "
                 "b-darts, off otherwise)",
    "conv_blocks": "b-darts: convolution blocks of the broad supernet (one shared-weight reduction cell each)",
    "enhancement_cells": "b-darts: normal cells of the broad supernet's enhancement block",
    "mae_base": "mae: the differentiable method it runs: pc-darts | darts | darts-2nd",
    "mae_patch_size": "mae: side of the square patches hidden",
    "mae_mask_ratio": "mae: fraction of the patches hidden",
    "mae_decoder_channels": "mae: width of the multi-scale decoder",
    "hessian_iters": "collapse monitor: power-iteration steps per epoch (0: off)",
    "hessian_batch": "collapse monitor: validation images the Hessian is taken on",
    "prune": "one-shot methods: prune the supernet first with these proxies (comma-separated, e.g. reg_swap)",
    "keep": "with --prune: the fraction of each edge's ops kept",
    "proxy": "zero-shot methods: the fitness proxy",
    "cycles": "zero-shot methods: architectures scored in total",
    "time_budget": "zero-shot methods: stop after this many seconds",
    "removal": "swap-evolution: remove the oldest (ageing) or the worst member",
    "table_only": "zero-shot NB201 search over the table's archs only (default: on when --nb201_table is given)",
}


def _literal(text: str):
    """A Python literal (3, 2.5, [1e-7, 1], 'x'), true/false/none in any case, else the text itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _dataset_option(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), _literal(value.strip())


def _stages(text: str):
    """``6:7,4:4`` -> ((6, 7), (4, 4))."""
    try:
        return tuple(tuple(int(v) for v in pair.split(":")) for pair in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K:OPS pairs separated by commas (e.g. 6:7,4:4), got {text!r}")


def _add_search_options(p: argparse.ArgumentParser) -> None:
    from fastnas.search.config import ALL_METHODS, SPACES, SearchConfig

    defaults = SearchConfig()
    for f in dataclasses.fields(SearchConfig):
        name = f.name
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        default = getattr(defaults, name)
        help_ = _HELP.get(name, "")
        if default is None and "default" in help_:
            help_ += "%(default).0s"   # the help says the default; argparse would append "(default: None)"
        if name == "space":
            p.add_argument(*flags, choices=SPACES, default=default, help=help_)
        elif name == "method":
            p.add_argument(*flags, choices=ALL_METHODS, default=default, help=help_)
        elif name == "dataset_options":
            p.add_argument("--dataset-option", "--dataset_option", dest=name, type=_dataset_option, action="append",
                           default=[], metavar="KEY=VALUE", help="extra dataset argument, e.g. n=2048 (synthetic)")
        elif name == "proxy_settings":
            p.add_argument("--proxy-setting", "--proxy_setting", dest=name, type=_dataset_option, action="append",
                           default=[], metavar="KEY=VALUE", help="a setting of the fitness proxy, e.g. repeats=3")
        elif name == "resume":
            p.add_argument(*flags, nargs="?", const=True, default=False, metavar="PATH",
                           help="continue the run in --out_dir (or the run folder / checkpoint PATH)")
        elif name == "arch_betas":
            p.add_argument(*flags, type=float, nargs=2, default=default, metavar=("B1", "B2"),
                           help="Adam betas of the architecture optimizer")
        elif name == "amp":
            p.add_argument(*flags, choices=("bf16", "fp16"), default=None, help="autocast dtype (CUDA; bf16 on CPU)")
        elif name == "drnas_stages":
            p.add_argument(*flags, type=_stages, default=None, metavar="K:OPS,...", help=help_)
        elif name in ("edge_norm", "unrolled", "channels_last", "table_only"):
            p.add_argument(*flags, action=argparse.BooleanOptionalAction, default=None,
                           help={"edge_norm": "edge normalisation (default: the method's; on for pc-darts and for mae on pc-darts)",
                                 "unrolled": "second-order architecture step (default: on for darts-2nd)",
                                 "channels_last": "NHWC activations (default: on for the CPU, off on CUDA)",
                                 "table_only": _HELP["table_only"]}[name])
        elif isinstance(default, bool):
            # a setting on by default needs its --no- form, or the command line could never turn it off
            p.add_argument(*flags, action=argparse.BooleanOptionalAction if default else "store_true",
                           default=default, help=help_)
        elif name in ("layers", "partial_channels", "steps_per_epoch", "init_channels", "batch_size", "epochs",
                      "warmup_epochs"):
            p.add_argument(*flags, type=int, default=default, help=help_)
        elif name in ("learning_rate", "learning_rate_min", "arch_learning_rate", "train_portion"):
            p.add_argument(*flags, type=float, default=default, help=help_)
        elif name in ("time_budget", "clr_power"):
            p.add_argument(*flags, type=float, default=default, help=help_)
        elif isinstance(default, (int, float)):
            p.add_argument(*flags, type=type(default), default=default, help=help_ or f"default {default}")
        else:
            p.add_argument(*flags, default=default, help=help_)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastnas", description="Kernel-optimized neural architecture search")
    sub = parser.add_subparsers(dest="command", required=True)
    p_search = sub.add_parser("search", help="run a differentiable architecture search",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_search_options(p_search)
    _add_score_parser(sub)
    sub.add_parser("info", help="versions, built backends and the backend each device uses")
    return parser


def _setting(text: str):
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise argparse.ArgumentTypeError(f"--set expects PROXY.KEY=VALUE (e.g. swap.repeats=3), got {text!r}")
    key, value = text.split("=", 1)
    proxy, name = key.strip().split(".", 1)
    return proxy, name, _literal(value.strip())


def _add_score_parser(sub) -> None:
    p = sub.add_parser("score", help="score architectures with zero-cost proxies (and evaluate them on a table)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--space", choices=("nb201", "darts"), default=None,
                   help="the archs' space: with --table, how to read it (default nb201); with --arch/--archs-file, "
                        "every arch is checked to be of it (default: any)")
    p.add_argument("--arch", action="append", default=[], help="an arch string / Genotype repr (repeatable)")
    p.add_argument("--archs-file", "--archs_file", default=None, help="a file with one arch per line")
    p.add_argument("--table", default=None, help="benchmark CSV (nb201: arch + accuracy columns; darts: genotype "
                                                  "+ accuracy columns), or for nb201 a NATS-Bench topology "
                                                  "benchmark (folder or .pickle.pbz2; needs nats_bench): score "
                                                  "its archs and correlate")
    p.add_argument("--archs", type=int, default=None, help="with --table: score N archs sampled from it (all if unset)")
    p.add_argument("--published", default=None,
                   help="with --table (nb201): a CSV of published proxy values (arch + one column per proxy, e.g. "
                        "nb201_zc_cifar10_dev.csv); also print, on the sampled archs it covers, fastnas's "
                        "correlations next to the published values' ones")
    p.add_argument("--proxies", default=None, help="comma-separated proxy names (default: all)")
    p.add_argument("--data", default=None, help="cifar10_sample.npz or its folder, a .npz, or the folder that "
                                                 "holds cifar-10-batches-py/ (or cifar-100-python/)")
    p.add_argument("--dataset", default=None, help="cifar10 | cifar100 | cifar10_sample | synthetic | PATH.npz "
                                                    "(default: inferred from --data; synthetic without it)")
    p.add_argument("--batch-size", "--batch_size", type=int, default=None,
                   help="images per proxy call for every proxy (default: each paper's protocol)")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-seed", "--sample_seed", type=int, default=None,
                   help="seed of the table sample (default: --seed)")
    p.add_argument("--set", dest="settings", type=_setting, action="append", default=[], metavar="PROXY.KEY=VALUE",
                   help="a proxy setting, e.g. swap.repeats=3")
    p.add_argument("--output", "-o", default=None, help="CSV file for the scores (default: stdout)")
    p.add_argument("--checkpoint", default=None,
                   help="journal file of the finished scores, appended as each one is done; rerun the same "
                        "command to continue a killed run (default with --output: OUTPUT.journal.jsonl, "
                        "deleted once the CSV is written; without either, nothing is kept)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_search(args: argparse.Namespace) -> int:
    from fastnas.search import SearchConfig, search

    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(SearchConfig)}
    settings["dataset_options"] = dict(settings["dataset_options"])
    settings["proxy_settings"] = dict(settings["proxy_settings"])
    settings["arch_betas"] = tuple(settings["arch_betas"])
    result = search(**settings)
    print(result.arch if args.quiet else str(result))
    return 0


def score_journal_path(args: argparse.Namespace) -> Optional[Path]:
    """Where ``fastnas score`` journals its scores: ``--checkpoint``, else ``OUTPUT.journal.jsonl`` with
    ``--output``, else nowhere (None)."""
    if args.checkpoint is not None:
        return Path(args.checkpoint)
    if args.output is not None:
        return Path(str(args.output) + ".journal.jsonl")
    return None


def _drop_default_journal(args: argparse.Namespace, journal: Optional[Path]) -> None:
    """Removes the journal ``--output`` implied once the CSV holds every score (an explicit
    ``--checkpoint`` is the user's file and stays)."""
    if args.checkpoint is None and journal is not None:
        journal.unlink(missing_ok=True)


def _check_space(archs: List[str], space: str) -> None:
    """Every arch of ``--arch``/``--archs-file`` is of ``--space``: a DARTS Genotype repr for darts, an
    NB201 arch string for nb201 (either would otherwise be scored in its own space without a word)."""
    for n, arch in enumerate(archs, start=1):
        is_darts = arch.strip().startswith("Genotype(")
        if is_darts != (space == "darts"):
            kind = "a DARTS Genotype" if is_darts else "not a DARTS Genotype (an NB201 arch string?)"
            raise ValueError(f"--space {space}: arch {n} is {kind}: {arch[:60]!r}")


# --dataset names that read files, and what --data must then be
_DATASET_NEEDS_DATA = {"cifar10": "the folder that holds cifar-10-batches-py/",
                       "cifar100": "the folder that holds cifar-100-python/",
                       "cifar10sample": "cifar10_sample.npz or its folder"}


def _check_score_options(args: argparse.Namespace) -> None:
    """Option combinations that would otherwise be ignored or misread, named before anything runs."""
    if args.table is None:
        for option, value in (("--archs", args.archs), ("--sample-seed", args.sample_seed)):
            if value is not None:
                raise ValueError(f"{option} samples archs from --table; without --table, give the archs with "
                                 f"--arch or --archs-file")
    if args.dataset is not None:
        key = args.dataset.lower().replace("-", "").replace("_", "")
        if key == "synthetic" and args.data is not None:
            raise ValueError("--dataset synthetic makes its own images and takes no --data")
        if key in _DATASET_NEEDS_DATA and args.data is None:
            raise ValueError(f"--dataset {args.dataset} needs --data: {_DATASET_NEEDS_DATA[key]}")
    names = set(_DATASET_NEEDS_DATA) | {"synthetic"}
    if (args.data is not None and args.dataset is None and not Path(args.data).exists()
            and args.data.lower().replace("-", "").replace("_", "") not in names):
        raise FileNotFoundError(f"--data {args.data}: not found")
    if (args.output is not None and args.checkpoint is not None
            and Path(args.output).resolve() == Path(args.checkpoint).resolve()):
        raise ValueError("--output and --checkpoint name the same file; the journal needs a file of its own")
    # The files the scores are written to must not be the ones they are read from.
    inputs = {"--table": args.table, "--archs-file": getattr(args, "archs_file", None), "--published": args.published,
              "--data": args.data}
    for what, path in (("--output", args.output), ("--checkpoint", args.checkpoint)):
        for source, given in inputs.items():
            if path is not None and given is not None and Path(path).resolve() == Path(given).resolve():
                raise ValueError(f"{what} {path} is the {source} file: writing the scores there would destroy "
                                 f"it; give another path")


def _reads_images(proxies: Optional[str]) -> bool:
    """Whether any of the ``--proxies`` (default: all) reads images (params, flops, synflow do not)."""
    from fastnas.proxies.registry import PROXIES

    names = [n.strip() for n in proxies.split(",")] if proxies else list(PROXIES)
    return any(PROXIES[n].batch_size > 1 for n in names if n in PROXIES) or not all(n in PROXIES for n in names)


def _run_score(args: argparse.Namespace) -> int:
    from fastnas.proxies import score
    from fastnas.proxies.evaluate import evaluate, format_report

    _check_score_options(args)
    settings = {}
    for proxy, name, value in args.settings:
        settings.setdefault(proxy, {})[name] = value
    data, root = args.dataset, None
    if data is None:
        data = args.data if args.data is not None else "synthetic"
        if args.data is None and not args.quiet and _reads_images(args.proxies):
            print("fastnas: no --data: the proxies that read images score on synthetic ones; their papers score on "
                  "real training images (--data ../shared/data for the CIFAR-10 sample)", file=sys.stderr)
    else:
        root = args.data
    journal = score_journal_path(args)
    for what, path in (("--output", args.output), ("--checkpoint", args.checkpoint)):
        if path is not None and Path(path).is_dir():
            raise ValueError(f"{what} {path} is a folder; give a file path (e.g. {Path(path) / 'scores.csv'})")
    common = dict(data=data, root=root, batch_size=args.batch_size, device=args.device, seed=args.seed,
                  settings=settings, progress=not args.quiet, checkpoint=journal)
    published = None
    if args.table is not None:
        args.space = args.space or "nb201"
    if args.published is not None:
        if args.table is None:
            raise ValueError("--published needs --table (the accuracies to correlate with)")
        if args.space != "nb201":
            raise ValueError("--published compares NB201 archs by arch string; it is not available for --space darts")
        from fastnas.proxies import available_proxies
        from fastnas.proxies.evaluate import load_published

        names = [p.strip() for p in args.proxies.split(",")] if args.proxies else available_proxies()
        published = load_published(args.published, names)
    if args.table is not None:
        if args.arch or args.archs_file:
            raise ValueError("give either --table (to sample and evaluate) or --arch/--archs-file, not both")
        table, rows, wall = evaluate(args.table, args.space, args.archs, args.proxies, sample_seed=args.sample_seed,
                                     **common)
        print(format_report(table, rows, wall))
        if args.published is not None:
            from fastnas.proxies.evaluate import compare_with_published, format_published, truth_of

            truth = truth_of(args.table, table.archs, args.space)
            cmp_rows, covered = compare_with_published(table, truth, published)
            print(format_published(cmp_rows, covered, len(table), args.published))
        if args.output is not None:
            print(f"scores written to {table.to_csv(args.output)}")
            _drop_default_journal(args, journal)
        return 0
    archs = list(args.arch)
    if args.archs_file:
        if Path(args.archs_file).is_dir():
            raise ValueError(f"--archs-file {args.archs_file} is a folder; give a text file with one arch per line")
        try:
            with open(args.archs_file, encoding="utf-8-sig") as f:
                archs += [line.strip() for line in f if line.strip() and not line.strip().startswith("#")]
        except UnicodeDecodeError as e:
            raise ValueError(f"--archs-file {args.archs_file}: not a UTF-8 text file ({e.reason} at byte "
                             f"{e.start}); give one arch per line") from None
    if not archs:
        raise ValueError("nothing to score: give --arch, --archs-file or --table")
    if args.space is not None:
        _check_space(archs, args.space)
    table = score(archs, args.proxies, **common)
    if args.output is not None:
        print(f"scores written to {table.to_csv(args.output)}", file=sys.stderr)
        _drop_default_journal(args, journal)
        return 0
    import csv

    w = csv.writer(sys.stdout)
    w.writerow(["arch", *table.proxies])
    for row in table.rows():
        w.writerow([row["arch"], *(repr(row[p]) for p in table.proxies)])
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "info":
        from fastnas import info
        info.main()
        return 0
    try:
        return _run_score(args) if args.command == "score" else _run_search(args)
    except (ValueError, TypeError, OSError, FloatingPointError) as e:
        # OSError: missing and existing files, and a folder that cannot be written (read-only, full disk).
        print(f"fastnas {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command == "score":
            journal = score_journal_path(args)
            kept = (f"; the finished scores are in {journal}: rerun the same command to continue"
                    if journal is not None and journal.exists() else "")
            print(f"fastnas score: interrupted{kept}", file=sys.stderr)
            return 130
        print("fastnas search: interrupted; continue with --resume (the last finished epoch is checkpointed)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
