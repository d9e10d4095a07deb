"""The ``fastnas`` command line: ``fastnas search ...`` and ``fastnas info``.

``fastnas search`` takes every :class:`fastnas.search.SearchConfig` setting as an option, spelled as on
the PC-DARTS command line (``--batch_size``, ``--learning_rate``, ``--arch_learning_rate``, ...) or with
dashes (``--batch-size``). It prints the result summary (``--quiet``: only the genotype / arch string, on
stdout, for scripts) and exits 0; bad settings exit 2 with the error message.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import sys
from typing import List, Optional

__all__ = ["main", "build_parser"]

# Settings with a hand-made option (the rest are generated from the dataclass fields).
_HELP = {
    "space": "search space: darts | nb201",
    "method": "pc-darts (default) | darts | darts-2nd",
    "dataset": "cifar10 | cifar100 | cifar10_sample | synthetic | PATH.npz",
    "data": "data folder (cifar10/100 pickle folders; for cifar10_sample the .npz or its folder)",
    "device": "cpu | cuda | cuda:N (default: cuda when available)",
    "layers": "cells (darts, default 8) or cells per stage (nb201, default 5)",
    "partial_channels": "partial-channel factor K (default: 4 for pc-darts, 1 for darts)",
    "warmup_epochs": "architecture steps start at this epoch (PC-DARTS: 15)",
    "steps_per_epoch": "cap on weight steps per epoch (default: one pass over the weight half)",
    "backend": "fused-op backend: torch | cpu | cuda | triton (default: automatic)",
    "report_freq": "read loss/accuracy back from the device every N steps",
    "out_dir": "run folder (default fastnas-runs/SPACE-METHOD-TIME)",
    "nb201_table": "CSV with 'arch' and accuracy columns: report the found arch's accuracies",
}


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _dataset_option(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--dataset-option expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), _literal(value.strip())


def _add_search_options(p: argparse.ArgumentParser) -> None:
    from fastnas.search.config import METHODS, SPACES, SearchConfig

    defaults = SearchConfig()
    for f in dataclasses.fields(SearchConfig):
        name = f.name
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        default = getattr(defaults, name)
        help_ = _HELP.get(name, "")
        if name == "space":
            p.add_argument(*flags, choices=SPACES, default=default, help=help_)
        elif name == "method":
            p.add_argument(*flags, choices=tuple(METHODS), default=default, help=help_)
        elif name == "dataset_options":
            p.add_argument("--dataset-option", "--dataset_option", dest=name, type=_dataset_option, action="append",
                           default=[], metavar="KEY=VALUE", help="extra dataset argument, e.g. n=2048 (synthetic)")
        elif name == "resume":
            p.add_argument(*flags, nargs="?", const=True, default=False, metavar="PATH",
                           help="continue the run in --out_dir (or the run folder / checkpoint PATH)")
        elif name == "arch_betas":
            p.add_argument(*flags, type=float, nargs=2, default=default, metavar=("B1", "B2"),
                           help="Adam betas of the architecture optimizer")
        elif name == "amp":
            p.add_argument(*flags, choices=("bf16", "fp16"), default=None, help="autocast dtype (CUDA; bf16 on CPU)")
        elif name in ("edge_norm", "unrolled", "channels_last"):
            p.add_argument(*flags, action=argparse.BooleanOptionalAction, default=None,
                           help={"edge_norm": "edge normalisation (default: on for pc-darts)",
                                 "unrolled": "second-order architecture step (default: on for darts-2nd)",
                                 "channels_last": "NHWC activations (default: on for the CPU, off on CUDA)"}[name])
        elif isinstance(default, bool):
            p.add_argument(*flags, action="store_true", default=default, help=help_)
        elif name in ("layers", "partial_channels", "steps_per_epoch"):
            p.add_argument(*flags, type=int, default=default, help=help_)
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
    sub.add_parser("info", help="versions, built backends and the backend each device uses")
    return parser


def _run_search(args: argparse.Namespace) -> int:
    from fastnas.search import SearchConfig, search

    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(SearchConfig)}
    settings["dataset_options"] = dict(settings["dataset_options"])
    settings["arch_betas"] = tuple(settings["arch_betas"])
    result = search(**settings)
    print(result.arch if args.quiet else str(result))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "info":
        from fastnas import info
        info.main()
        return 0
    try:
        return _run_search(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as e:
        print(f"fastnas search: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastnas search: interrupted; continue with --resume (the last finished epoch is checkpointed)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
