"""``fastnas.score``: zero-cost proxies of many architectures as one table.

Every (architecture, proxy) pair gets a freshly built network, initialised from ``torch.manual_seed(seed)``
just before it is built, and the same batch of images (the first ``batch_size`` of one seeded draw). So a
score depends only on the architecture, the proxy, its settings, the data and the seed: never on which
other architectures are scored with it or in which order (the papers' loops reseed once per run, which
makes an architecture's score depend on its position in the list).

A proxy scored with ``repeats`` R > 1 (the ``repeats`` setting of any proxy that has none of its own,
default 1, the papers' one draw) averages R such draws: draw r builds the network from the seed :func:`draw_seed` ``(seed, r)`` and reads
the r-th ``batch_size`` images of the draw, so draw 0 is the single-draw score.
"""
from __future__ import annotations

import copy
import csv
import io
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from fastnas.devices import resolve_device
from fastnas.proxies.registry import Proxy, available_proxies, get_proxy

__all__ = ["ScoreTable", "ProxyData", "score", "score_one", "correlations", "build_network", "arch_label",
           "load_proxy_data", "draws_of", "draw_seed", "images_needed"]

Arch = Any  # an NB201 arch string or 6 op names, a DARTS Genotype (or its repr), an nn.Module


class _Logits(nn.Module):
    """Returns the logits of a network whose forward returns ``(logits, aux)`` (the DARTS networks)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        out = self.net(x)
        logits = out[0] if isinstance(out, (tuple, list)) and out else out
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"the scored {type(self.net).__name__} returned a {type(out).__name__}; a proxy needs "
                            f"logits: a tensor (B, classes), or a tuple or list whose first item is one")
        return logits


def arch_label(arch: Arch) -> str:
    """The text that names ``arch`` in a table: the NB201 string, the Genotype repr, or the module's class."""
    from fastnas.spaces import Genotype, arch_to_str

    if isinstance(arch, str):
        return arch.strip()
    if isinstance(arch, Genotype):
        return repr(arch)
    if isinstance(arch, nn.Module):
        return type(arch).__name__
    if isinstance(arch, (tuple, list)) and all(isinstance(a, str) for a in arch):
        return arch_to_str(arch)
    raise TypeError(f"cannot score {type(arch).__name__}: give an NB201 arch string (or its 6 op names), a DARTS "
                    f"Genotype (or its repr) or an nn.Module")


def build_network(arch: Arch, num_classes: int = 10, nb201_channels: int = 16, nb201_cells: int = 5,
                  darts_channels: int = 16, darts_layers: int = 8, darts_stem: bool = True) -> nn.Module:
    """The discrete network a proxy scores, returning logits.

    ``arch``: an NB201 arch string or 6 op names -> ``NB201Network(C=16, N=5)`` (NAS-Bench-201's
    TinyNetwork, as every NB201 proxy paper scores); a DARTS ``Genotype`` or its repr ->
    ``NetworkCIFAR(C=16, layers=8)`` without auxiliary head (``darts_stem=False``: without its stem, the
    cells reading the image); an ``nn.Module`` -> a deep copy of it (the proxies change the weights of
    what they are given).
    """
    from fastnas.nn.networks import NB201Network, NetworkCIFAR
    from fastnas.spaces import Genotype, parse_genotype

    if isinstance(arch, nn.Module):
        return _Logits(copy.deepcopy(arch))
    if isinstance(arch, str) and arch.strip().startswith("Genotype("):
        arch = parse_genotype(arch)
    if isinstance(arch, Genotype):
        return _Logits(NetworkCIFAR(darts_channels, num_classes, darts_layers, False, arch, stem=darts_stem))
    if isinstance(arch, str) or (isinstance(arch, (tuple, list)) and all(isinstance(a, str) for a in arch)):
        return NB201Network(arch, C=nb201_channels, N=nb201_cells, num_classes=num_classes)
    raise TypeError(f"cannot score {type(arch).__name__}: give an NB201 arch string, a DARTS Genotype (or its "
                    f"repr) or an nn.Module")


@dataclass
class ProxyData:
    """The one batch every architecture is scored on: float32 normalised images (N, 3, H, W), labels (N,)."""

    images: torch.Tensor
    labels: Optional[torch.Tensor]
    num_classes: int
    name: str = ""

    def batch(self, n: int, index: int = 0) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The ``index``-th batch of ``n`` images: images[index * n:(index + 1) * n] and their labels."""
        lo, hi = index * n, (index + 1) * n
        if hi > self.images.shape[0]:
            what = f"a batch of {n} images" if index == 0 else f"batch {index} of {n} images (images {lo}..{hi - 1})"
            raise ValueError(f"a proxy asks for {what} but the data holds {self.images.shape[0]}")
        return self.images[lo:hi], None if self.labels is None else self.labels[lo:hi]


def load_proxy_data(data: Any = "synthetic", root=None, n: int = 128, seed: int = 0,
                    device: Union[str, torch.device] = "cpu", split: str = "train") -> ProxyData:
    """Draws ``n`` images (without replacement, seeded) from anything :func:`fastnas.data.load_dataset`
    reads, or takes a :class:`ProxyData` as is. ``data`` may also be the path of an ``.npz``/folder of
    the CIFAR-10 sample. Images are normalised with the dataset's mean/std; no augmentation."""
    from fastnas.data import load_dataset

    if isinstance(data, ProxyData):
        return data
    if isinstance(data, (str, Path)) and root is None:
        p = Path(data)
        if p.is_dir() and (p / "cifar10_sample.npz").is_file():
            data, root = "cifar10_sample", p
        elif p.suffix == ".npz" and p.name == "cifar10_sample.npz":
            data, root = "cifar10_sample", p
    if isinstance(data, str) and data == "synthetic":
        ds, pick = _synthetic_pool(n, seed, split)
    else:
        ds = load_dataset(data, root=root, split=split)
        if len(ds) < n:
            raise ValueError(f"{ds.name or 'the data'} holds {len(ds)} images, a proxy batch needs {n}")
        g = torch.Generator().manual_seed(seed)
        pick = torch.randperm(len(ds), generator=g)[:n]
    x = ds.images[pick].float().div_(255)
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    x = ((x - mean) / std).to(device)
    y = None if ds.labels is None else ds.labels[pick].to(device)
    num_classes = ds.num_classes or (int(ds.labels.max()) + 1 if ds.labels is not None else 10)
    return ProxyData(x, y, num_classes, ds.name)


_SYNTHETIC_CHUNK = 512


def _synthetic_pool(n: int, seed: int, split: str):
    """(synthetic ImageData, pick) whose first k picked images are the same for every ``n >= k``.

    ``n`` is the most images any proxy of a :func:`score` call reads; were the pool drawn at that size,
    a score would change with the other proxies of the call. So the pool grows in chunks of 512 with
    seeds of their own and one set of class colours, normalised with the first chunk's statistics;
    the first chunk is picked in a seeded random order, the rest in order (their samples are random).
    """
    from fastnas.data import ImageData, make_synthetic

    chunks = [make_synthetic(n=_SYNTHETIC_CHUNK, seed=seed, split=split,
                             sample_seed=None if c == 0 else draw_seed(seed, c))
              for c in range(max(1, -(-n // _SYNTHETIC_CHUNK)))]
    first = chunks[0]
    pool = ImageData(torch.cat([c.images for c in chunks]), torch.cat([c.labels for c in chunks]),
                     first.num_classes, first.mean, first.std, None, first.name)
    g = torch.Generator().manual_seed(seed)
    pick = torch.cat([torch.randperm(_SYNTHETIC_CHUNK, generator=g),
                      torch.arange(_SYNTHETIC_CHUNK, len(pool))])[:n]
    return pool, pick


@dataclass
class ScoreTable:
    """Scores: one row per architecture, one column per proxy (float64 arrays), plus timing.

    ``seconds[p]``: wall time spent in proxy ``p`` over all architectures (network building included).
    ``higher_is_better[p]``: the proxy's sign.
    """

    archs: List[str]
    scores: Dict[str, np.ndarray]
    seconds: Dict[str, float] = field(default_factory=dict)
    higher_is_better: Dict[str, bool] = field(default_factory=dict)

    @property
    def proxies(self) -> List[str]:
        return list(self.scores)

    def __len__(self) -> int:
        return len(self.archs)

    def __getitem__(self, proxy: str) -> np.ndarray:
        return self.scores[proxy]

    def column(self, proxy: str) -> np.ndarray:
        return self.scores[proxy]

    def rows(self) -> List[Dict[str, Any]]:
        return [{"arch": a, **{p: float(v[i]) for p, v in self.scores.items()}} for i, a in enumerate(self.archs)]

    def archs_per_second(self, proxy: str) -> float:
        return len(self.archs) / self.seconds[proxy] if self.seconds.get(proxy) else float("nan")

    def to_csv(self, path) -> Path:
        """Writes ``arch,<proxy>...`` (full float precision) and returns the path."""
        from fastnas._io import atomic_write_text

        buf = io.StringIO(newline="")
        w = csv.writer(buf)
        w.writerow(["arch", *self.scores])
        for i, a in enumerate(self.archs):
            w.writerow([a, *(repr(float(v[i])) for v in self.scores.values())])
        return atomic_write_text(path, buf.getvalue())     # a kill never leaves a half-written table

    def __repr__(self) -> str:
        return f"ScoreTable({len(self.archs)} archs x {len(self.scores)} proxies: {', '.join(self.scores)})"


def _proxy_list(proxies) -> List[Proxy]:
    if proxies is None:
        names = available_proxies()
    elif isinstance(proxies, str):
        names = [p.strip() for p in proxies.split(",") if p.strip()]
    else:
        names = list(proxies)
    if not names:
        raise ValueError("no proxies given")
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise TypeError(f"proxy names must be strings, got {type(bad[0]).__name__} {bad[0]!r}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"proxies listed more than once: {twice} (a table has one column per proxy)")
    return [get_proxy(n) for n in names]


# Every network fastnas builds (NB201 TinyNetwork, DARTS NetworkCIFAR) halves the resolution twice;
# measured: 3x3 .. 32x32 inputs, sides that are not multiples of 4 (5, 6, 7, 10, 14) fail inside a
# reduction (a residual or factorized-reduce branch of another size).
_SIDE_MULTIPLE = 4
# Synthetic data stands in for CIFAR-10; more images than its training set is a typo, not a batch
# (10**6 images would allocate ~24 GB before the first score).
_MAX_SYNTHETIC_IMAGES = 50_000
_NETWORK_OPTIONS = ("num_classes", "nb201_channels", "nb201_cells", "darts_channels", "darts_layers", "darts_stem")


def _check_int(name: str, value, lo: int, hi: Optional[int] = None, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < lo or (hi is not None and value >= hi):
        span = f">= {lo}" if hi is None else f"in [{lo}, {hi})"
        raise ValueError(f"{name} must be {span}, got {value}")


def _check_score_args(batch_size, seed, settings, network_options) -> None:
    """Argument errors of :func:`score` named before anything is loaded or built."""
    _check_int("batch_size", batch_size, 1, none_ok=True)
    _check_int("seed", seed, 0, 2**63)
    for name, value in settings.items():
        if not isinstance(value, Mapping):
            raise TypeError(f"settings[{name!r}] must be a mapping of setting names to values (e.g. "
                            f"{{'repeats': 3}}), got {type(value).__name__} {value!r}")
    for key, value in (network_options or {}).items():
        if key not in _NETWORK_OPTIONS:
            raise TypeError(f"unknown network option {key!r}; the options are {', '.join(_NETWORK_OPTIONS)}")
        if key == "darts_stem":
            if not isinstance(value, bool):
                raise TypeError(f"network_options['darts_stem'] must be True or False, got {type(value).__name__} "
                                f"{value!r}")
            continue
        _check_int(f"network_options[{key!r}]", value, 1)


def _check_images_fit_the_networks(images: torch.Tensor) -> None:
    """The networks fastnas builds take (B, 3, H, W) images with H and W multiples of 4."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"the NB201 / DARTS networks take RGB images (B, 3, H, W); the data is "
                         f"{tuple(images.shape)} (score an nn.Module of your own for other inputs)")
    h, w = images.shape[-2:]
    if h % _SIDE_MULTIPLE or w % _SIDE_MULTIPLE or h == 0 or w == 0:
        raise ValueError(f"the NB201 / DARTS networks halve the resolution twice: image height and width must "
                         f"be multiples of {_SIDE_MULTIPLE}, the data is {h}x{w}")


def draws_of(proxy: Proxy, settings: Optional[Mapping[str, Any]] = None) -> int:
    """How many (initialisation, batch) draws :func:`score_one` averages for ``proxy``: the ``repeats``
    setting, default ``proxy.repeats``. 1 for a proxy whose own ``repeats`` setting re-initialises
    inside one call (swap, reg_swap)."""
    if "repeats" in proxy.defaults:
        return 1
    draws = (settings or {}).get("repeats", proxy.repeats)
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 1:
        raise ValueError(f"proxy {proxy.name!r}: repeats must be an integer >= 1, got {draws!r}")
    return int(draws)


def draw_seed(seed: int, r: int) -> int:
    """The initialisation seed of draw ``r``: ``seed`` itself for draw 0 (so one draw is the plain score),
    else a SeedSequence child of (seed, r), which no small user seed collides with."""
    if r == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2**64, r]).generate_state(1, dtype=np.uint64)[0] % 2**63)


def images_needed(proxy: Proxy, batch_size: Optional[int] = None,
                  settings: Optional[Mapping[str, Any]] = None) -> int:
    """Images :func:`score_one` reads for ``proxy``: its batch times its draws."""
    return (batch_size or proxy.batch_size or 1) * draws_of(proxy, settings)


def score_one(arch: Arch, proxy: Union[str, Proxy], data: ProxyData, seed: int = 0,
              batch_size: Optional[int] = None, settings: Optional[Mapping[str, Any]] = None,
              network_options: Optional[Mapping[str, Any]] = None) -> float:
    """One proxy of one architecture: the mean over :func:`draws_of` draws (module docstring for the
    seeding); ``data`` must hold :func:`images_needed` images."""
    proxy = get_proxy(proxy) if isinstance(proxy, str) else proxy
    settings = dict(settings or {})
    draws = draws_of(proxy, settings)
    if "repeats" not in proxy.defaults:
        settings.pop("repeats", None)
    n = batch_size or proxy.batch_size or 1
    if proxy.uses_labels and data.labels is None:
        raise ValueError(f"proxy {proxy.name!r} needs labels and the data has none")
    if n * draws > data.images.shape[0]:
        raise ValueError(f"proxy {proxy.name!r} averages {draws} draws of {n} images: it needs {n * draws} "
                         f"images, the data holds {data.images.shape[0]}")
    total = 0.0
    device = data.images.device
    # the caller's random state is theirs: seeding here must not reset the sampling of their own loop
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for r in range(draws):
            torch.manual_seed(draw_seed(seed, r))
            model = build_network(arch, **{"num_classes": data.num_classes, **proxy.network,
                                           **(network_options or {})})
            model = model.to(device).float().train()
            images, labels = data.batch(n, r)
            try:
                value = proxy(model, images, labels if proxy.uses_labels else None, **settings)
            except (RuntimeError, ValueError, TypeError) as e:
                if not isinstance(arch, nn.Module):
                    raise
                # A module of the user's: say which and on what input; errors name its class, not the wrapper.
                name = type(arch).__name__
                raise type(e)(f"proxy {proxy.name!r} on the {name} given, images {tuple(images.shape)}: "
                              f"{str(e).replace(_Logits.__name__, name)}") from None
            if not np.isfinite(value):
                if settings:
                    raise ValueError(f"proxy {proxy.name!r} returned {value} for {arch_label(arch)} with the "
                                     f"settings {settings}: they take it out of the float range")
                raise RuntimeError(f"proxy {proxy.name!r} returned {value} for {arch_label(arch)}: every proxy "
                                   f"must return a finite score (this is a bug)")
            total += value
    return total / draws


def _is_op_names(x) -> bool:
    """True for one NB201 arch given as its 6 op names; any other list of strings is a list of archs
    (``["hello"]`` is one bad arch string, named as such, not an arch of 1 op)."""
    from fastnas.spaces import NB201_PRIMITIVES

    return (isinstance(x, (tuple, list)) and len(x) == 6 and all(isinstance(a, str) for a in x)
            and all(a.strip() in NB201_PRIMITIVES for a in x))


def _checked_labels(archs: Sequence[Arch]) -> List[str]:
    """The archs' labels, after parsing every arch string: a typo in arch 17 is an error before arch 1
    is scored, naming the arch."""
    from fastnas.spaces import parse_arch, parse_genotype

    labels = []
    for i, arch in enumerate(archs):
        try:
            label = arch_label(arch)
            if isinstance(arch, str):
                parse_genotype(label) if label.startswith("Genotype(") else parse_arch(label)
        except (ValueError, TypeError, SyntaxError) as e:
            shown = (arch if isinstance(arch, str) else repr(list(arch)) if isinstance(arch, (list, tuple))
                     else type(arch).__name__)
            raise type(e)(f"arch {i + 1} of {len(archs)} ({str(shown)[:80]!r}): {e}") from None
        labels.append(label)
    return labels


def score(archs: Union[Arch, Iterable[Arch]], proxies=None, data: Any = None, root=None,
          batch_size: Optional[int] = None, device: Optional[str] = None, seed: int = 0,
          settings: Optional[Mapping[str, Mapping[str, Any]]] = None,
          network_options: Optional[Mapping[str, Any]] = None, progress: bool = False,
          checkpoint=None) -> ScoreTable:
    """Scores architectures with zero-cost proxies, without training.

    Args:
        archs: NB201 arch strings, DARTS ``Genotype``s (or their reprs), ``nn.Module``s, or one of them.
        proxies: names (a list or a comma-separated string); None: every registered proxy
            (:func:`fastnas.proxies.available_proxies`).
        data: images to score on: ``"synthetic"``, ``"cifar10_sample"`` (``root`` = shared/data), a path
            to the sample's ``.npz`` or folder, ``"cifar10"`` (``root`` = the pickle folder), an
            ``ImageData``, an ``(images, labels)`` pair, or a :class:`ProxyData`. None: synthetic images,
            with a warning when a proxy reads images (the papers score on a batch of real training
            images; ``data="synthetic"`` asks for them without the warning).
        batch_size: images per proxy call for every proxy; None: each proxy's paper protocol.
        device: None = cuda when available, else cpu.
        seed: initialisation and data-draw seed; a fixed seed gives identical tables.
        settings: per-proxy setting overrides, e.g. ``{"swap": {"repeats": 3}}``.
        network_options: :func:`build_network` options (``darts_layers``, ``nb201_channels``, ...).
        progress: a tqdm bar.
        checkpoint: a file path: every finished score is appended to this journal
            (:mod:`fastnas.proxies.journal`) as soon as it exists, and a run given an existing journal of
            the same job (same archs, proxies, settings, data, seed, device, versions) scores only what
            it lacks, so a killed run loses at most the score it was computing. Archs must be strings or
            Genotypes (an ``nn.Module`` has no name that identifies it across runs).

    Returns:
        a :class:`ScoreTable` (rows in the order given).
    """
    from fastnas.spaces import Genotype

    if isinstance(archs, (str, Genotype, nn.Module)) or _is_op_names(archs):
        archs = [archs]
    archs = list(archs)
    if not archs:
        raise ValueError("no architectures to score")
    chosen = _proxy_list(proxies)
    if settings is not None and not isinstance(settings, Mapping):
        raise TypeError(f"settings must be a mapping proxy -> {{setting: value}}, got {type(settings).__name__}")
    settings = dict(settings or {})
    unknown = sorted(set(settings) - {p.name for p in chosen})
    if unknown:
        raise ValueError(f"settings given for proxies that are not scored: {unknown}")
    _check_score_args(batch_size, seed, settings, network_options)
    for p in chosen:
        own = {k: v for k, v in settings.get(p.name, {}).items() if k != "repeats" or "repeats" in p.defaults}
        p.check_settings(own)
    labels = _checked_labels(archs)
    device = resolve_device(device)
    if data is None:
        readers = [p.name for p in chosen if p.batch_size > 1]   # params, flops, synflow read no images
        if readers:
            warnings.warn(f"no data given: {', '.join(readers)} will score on synthetic images; their papers score "
                          f"on a batch of real training images: pass data= (e.g. data='../shared/data' for the "
                          f"CIFAR-10 sample), or data='synthetic' to mean it", UserWarning, stacklevel=2)
        data = "synthetic"
    n_needed = max(images_needed(p, batch_size, settings.get(p.name)) for p in chosen)
    if isinstance(data, str) and data == "synthetic" and n_needed > _MAX_SYNTHETIC_IMAGES:
        raise ValueError(f"synthetic data: the proxies ask for {n_needed} images (batch_size x repeats); "
                         f"synthetic data stands in for CIFAR-10 and holds at most {_MAX_SYNTHETIC_IMAGES}")
    data = load_proxy_data(data, root=root, n=n_needed, seed=seed, device=device)
    if not all(isinstance(a, nn.Module) for a in archs):
        _check_images_fit_the_networks(data.images)
    need_labels = [p.name for p in chosen if p.uses_labels]
    if need_labels and data.labels is None:
        raise ValueError(f"the data has no labels and {', '.join(map(repr, need_labels))} "
                         f"{'needs' if len(need_labels) == 1 else 'need'} labels")
    table = ScoreTable(labels, {p.name: np.empty(len(archs)) for p in chosen}, {p.name: 0.0 for p in chosen},
                       {p.name: p.higher_is_better for p in chosen})
    journal = None
    if checkpoint is not None:
        journal = _open_journal(checkpoint, archs, labels, chosen, data, seed, batch_size, settings,
                                network_options, device)
    done = journal.done() if journal is not None else {}
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(archs) * len(chosen), initial=len(done), desc="scoring", unit="score")
        if done:
            bar.write(f"resuming from the score journal {journal.path}: {len(done)} of {bar.total} scores "
                      f"already there", file=sys.stderr)     # stdout may be the CSV
    try:
        for p in chosen:
            for i, arch in enumerate(archs):
                if (i, p.name) in done:
                    table.scores[p.name][i], seconds = done[i, p.name]
                    table.seconds[p.name] += seconds
                    continue
                t0 = time.perf_counter()
                value = score_one(arch, p, data, seed, batch_size, settings.get(p.name), network_options)
                seconds = time.perf_counter() - t0
                table.scores[p.name][i] = value
                table.seconds[p.name] += seconds
                if journal is not None:
                    journal.record(i, p.name, value, seconds)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if journal is not None:
            journal.close()
    return table


def _open_journal(path, archs: Sequence[Arch], labels: List[str], chosen: Sequence[Proxy], data: ProxyData,
                  seed: int, batch_size: Optional[int], settings: Mapping[str, Any],
                  network_options: Optional[Mapping[str, Any]], device):
    """The :class:`~fastnas.proxies.journal.ScoreJournal` of this scoring job at ``path``."""
    from fastnas.proxies.journal import ScoreJournal, data_digest, environment_fingerprint

    modules = [i for i, a in enumerate(archs) if isinstance(a, nn.Module)]
    if modules:
        raise ValueError(f"a score checkpoint needs architectures named by NB201 strings or DARTS Genotypes; "
                         f"arch {modules[0]} is an nn.Module ({labels[modules[0]]}), which no name identifies "
                         f"across runs")
    fingerprint = {
        "proxies": [p.name for p in chosen], "settings": {p.name: dict(settings.get(p.name) or {}) for p in chosen},
        "batch_size": batch_size, "seed": seed, "network_options": dict(network_options or {}),
        "data": {"name": data.name, "images": list(data.images.shape), "num_classes": data.num_classes,
                 "sha256": data_digest(data.images, data.labels)},
        **environment_fingerprint(device),
    }
    protocol_networks = {p.name: dict(p.network) for p in chosen if p.network}
    if protocol_networks:  # the network a proxy's protocol scores on (SWAP's DARTS network lost its stem)
        fingerprint["protocol_networks"] = protocol_networks
    return ScoreJournal.open(path, fingerprint, labels)


def correlations(table: ScoreTable, truth: Mapping[str, Sequence[float]]) -> List[Dict[str, Any]]:
    """Signed Spearman and Kendall correlations of every proxy with every ground-truth column.

    truth: column name -> values aligned with ``table.archs``. Rows with a NaN truth are skipped.
    Returns one dict per (proxy, column): proxy, column, n, spearman, kendall, higher_is_better.
    """
    from scipy import stats

    out = []
    for p, s in table.scores.items():
        for col, values in truth.items():
            y = np.asarray(values, dtype=np.float64)
            ok = np.isfinite(y) & np.isfinite(s)
            rho = stats.spearmanr(s[ok], y[ok]).statistic if ok.sum() > 2 else float("nan")
            tau = stats.kendalltau(s[ok], y[ok]).statistic if ok.sum() > 2 else float("nan")
            out.append({"proxy": p, "column": col, "n": int(ok.sum()), "spearman": float(rho),
                        "kendall": float(tau), "higher_is_better": table.higher_is_better.get(p, True)})
    return out
