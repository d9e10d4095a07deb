"""Image datasets as plain tensors: CIFAR-10/100, ``.npz`` arrays, user tensors, torch Datasets, synthetic.

Everything ends up as one :class:`ImageData`: ``images`` uint8 (N, C, H, W) and ``labels`` int64 (N,).
A search keeps the whole set resident on its device (50k CIFAR images are 150 MiB as uint8) and augments
there (:mod:`fastnas.data.device_loader`), so no per-sample Python object survives loading: the loaders
here run once, not in the training loop.

Images stay uint8 until the device loader normalises them: 4x less memory and transfer than float32,
and the zero padding of the random crop is then the black pixel that torchvision's ``RandomCrop(32,
padding=4)`` pads a PIL image with, before ``ToTensor``/``Normalize``.
"""
from __future__ import annotations

import inspect
import math
import numbers
import pickle
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from fastnas.data.download import ChecksumError, download_and_extract, md5sum

__all__ = [
    "ImageData", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD",
    "channel_stats", "read_cifar_batch", "load_cifar", "load_npz", "load_cifar10_sample",
    "from_tensors", "from_torch_dataset", "make_synthetic", "load_dataset", "same_dataset_options",
]

# The constants DARTS/PC-DARTS normalise with (population statistics of the 50k training images).
CIFAR10_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR10_STD = (0.24703233, 0.24348505, 0.26158768)
CIFAR100_MEAN = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
CIFAR100_STD = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)

ArrayLike = Union[torch.Tensor, np.ndarray]


# Labels without a class count give num_classes = max + 1; beyond this it is a mistake (ids, not classes),
# and the classifier alone would take gigabytes (2**40 classes asked the allocator for 140 TB).
MAX_INFERRED_CLASSES = 1_000_000


def _check_class_indices(y: torch.Tensor, what: str) -> None:
    """Labels whose class count is inferred (max + 1): non-negative, and not ids of absurd size."""
    lo, hi = int(y.min()), int(y.max())
    if lo < 0:
        raise ValueError(f"{what}labels are class indices and must be >= 0, got [{lo}, {hi}]")
    if hi >= MAX_INFERRED_CLASSES:
        raise ValueError(f"{what}labels go up to {hi}, which would make a classifier of {hi + 1} outputs; "
                         f"labels must be class indices 0..C-1 (at most {MAX_INFERRED_CLASSES:,} classes)")


@dataclass
class ImageData:
    """A labelled (or unlabelled) image set held as tensors.

    images: uint8 (N, C, H, W). labels: int64 (N,) or None. mean/std: per channel, on the [0, 1] scale.
    """

    images: torch.Tensor
    labels: Optional[torch.Tensor]
    num_classes: Optional[int]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    classes: Optional[Tuple[str, ...]] = None
    name: str = ""

    def __post_init__(self):
        x, y = self.images, self.labels
        if not (isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.dim() == 4):
            raise TypeError(f"ImageData.images must be a uint8 tensor (N, C, H, W), got "
                            f"{getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}")
        if len(self.mean) != x.shape[1] or len(self.std) != x.shape[1]:
            raise ValueError(f"mean/std need {x.shape[1]} entries (one per channel), got "
                             f"{len(self.mean)}/{len(self.std)}")
        _check_mean_std(self.mean, self.std, f"dataset {self.name!r}" if self.name else "ImageData")
        if y is None:
            return
        if not (isinstance(y, torch.Tensor) and y.dtype == torch.int64 and y.shape == (x.shape[0],)):
            raise TypeError(f"ImageData.labels must be int64 of shape ({x.shape[0]},), got "
                            f"{getattr(y, 'dtype', type(y))} {tuple(getattr(y, 'shape', ()))}")
        if not y.numel():
            return
        what = f"dataset {self.name!r}: " if self.name else ""
        lo, hi = int(y.min()), int(y.max())
        if self.num_classes is None:
            _check_class_indices(y, what)
        elif lo < 0 or hi >= self.num_classes:
            raise ValueError(f"{what}labels must lie in [0, {self.num_classes}), got [{lo}, {hi}]")

    def __len__(self) -> int:
        return self.images.shape[0]


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images (N, C, H, W), on the [0, 1] scale.

    Sums in float64 over chunks of ``chunk`` images: a float64 copy of all of CIFAR would take 1.2 GiB.
    """
    n, c = images.shape[:2]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for i in range(0, n, chunk):
        part = images[i:i + chunk].transpose(0, 1).reshape(c, -1).to(torch.float64)
        s += part.sum(1).cpu()
        s2 += (part * part).sum(1).cpu()
    count = max(n * images.shape[2] * images.shape[3], 1)
    mean = s / count
    std = (s2 / count - mean * mean).clamp_min(0).sqrt()
    return tuple((mean / 255).tolist()), tuple((std / 255).tolist())


def _check_mean_std(mean: Sequence[float], std: Sequence[float], where: str) -> None:
    """Normalisation divides by ``std``: every entry must be a finite number > 0 (and ``mean`` finite)."""
    for i, (m, s) in enumerate(zip(mean, std)):
        try:
            m, s = float(m), float(s)
        except (TypeError, ValueError):
            raise TypeError(f"{where}: mean/std of channel {i} must be numbers, got {m!r} and {s!r}") from None
        if not (math.isfinite(m) and math.isfinite(s) and s > 0):
            raise ValueError(f"{where}: channel {i} has mean {m!r} and std {s!r}; the images are normalised as "
                             "(x - mean) / std, so std must be a finite number > 0 and mean a finite number")


def _image_stats(images: torch.Tensor, where: str, need_std: bool = True
                 ) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """:func:`channel_stats` of images that are to be normalised with them.

    ValueError when there is no pixel to average or (``need_std``) a channel is constant: its std is 0
    and normalising would divide by zero (NaN/inf network inputs).
    """
    if images.numel() == 0:
        raise ValueError(f"{where}: no pixels to compute the per-channel mean/std from "
                         f"(images of shape {tuple(images.shape)})")
    mean, std = channel_stats(images)
    flat = [i for i, s in enumerate(std) if not s > 0]
    if need_std and flat:
        chans = ", ".join(f"channel {i} (every pixel is {round(mean[i] * 255)})" for i in flat)
        raise ValueError(f"{where}: the images are constant in {chans}: the standard deviation of "
                         f"{'that channel is' if len(flat) == 1 else 'those channels is'} 0, so normalising by it "
                         "would divide by zero; use images that vary in every channel or give std= explicitly "
                         "(e.g. fastnas.data.from_tensors(images, labels, std=...))")
    return mean, std


# ---------------------------------------------------------------------------------------------------
# Conversions shared by every source
# ---------------------------------------------------------------------------------------------------
def _to_uint8_nchw(x: Any, layout: str = "auto", where: str = "images") -> torch.Tensor:
    """Any image batch -> uint8 (N, C, H, W).

    x: (N, H, W) grayscale, (N, C, H, W) or (N, H, W, C) with C in {1, 3}; uint8, or floats in [0, 1]
    (scaled by 255 and rounded). ``layout`` is 'auto', 'nchw' or 'nhwc'; 'auto' decides by which axis has
    1 or 3 entries and refuses to guess when both do (e.g. (N, 3, 8, 3)). ``where`` names the source
    in error messages. NaN/inf pixel values are refused (they would turn into arbitrary uint8 values).
    """
    x = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x.detach().cpu()
    if x.dim() == 3:
        x = x.unsqueeze(1)
        layout = "nchw"
    if x.dim() != 4:
        raise ValueError(f"{where}: images must be 4-D (N, C, H, W) or (N, H, W, C), got shape {tuple(x.shape)}")
    if layout == "auto":
        c_first, c_last = x.shape[1] in (1, 3), x.shape[3] in (1, 3)
        if c_first == c_last:
            raise ValueError(f"{where}: cannot tell the channel axis of images with shape {tuple(x.shape)}; "
                             "pass layout='nchw' or layout='nhwc'")
        layout = "nchw" if c_first else "nhwc"
    if layout == "nhwc":
        x = x.permute(0, 3, 1, 2)
    elif layout != "nchw":
        raise ValueError(f"layout must be 'auto', 'nchw' or 'nhwc', got {layout!r}")
    if x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{where}: images must be uint8, integers in [0, 255] or floats in [0, 1], got {x.dtype}")
    if x.dtype.is_floating_point:
        n_bad = int((~torch.isfinite(x)).sum()) if x.numel() else 0
        if n_bad:
            raise ValueError(f"{where}: {n_bad} of {x.numel()} pixel values are not finite (NaN or inf); "
                             "images must hold finite values (floats in [0, 1] or integers in [0, 255])")
        # Floats are accepted only on the [0, 1] scale (ToTensor output); normalised images would be
        # silently clipped into garbage, so they are refused.
        if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
            raise ValueError(f"{where}: float images must lie in [0, 1] (they are stored as uint8); got values in "
                             f"[{float(x.min()):.3g}, {float(x.max()):.3g}] - pass uint8 or unnormalised images")
        x = (x * 255).round().to(torch.uint8)
    elif x.dtype != torch.uint8:
        if x.numel() and (int(x.min()) < 0 or int(x.max()) > 255):
            raise ValueError(f"{where}: integer images must lie in [0, 255], got values in "
                             f"[{int(x.min())}, {int(x.max())}] (dtype {x.dtype})")
        x = x.to(torch.uint8)
    return x.contiguous()


def _to_labels(y: Any, n: int, where: str = "labels") -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        arr = np.asarray(y)
        if arr.dtype.kind not in "iub":  # strings, objects (dicts, lists of varying length), ...
            raise TypeError(f"{where}: labels must be integers, got an array of {arr.dtype} "
                            f"(first: {arr.reshape(-1)[:1].tolist()!r})")
        y = torch.as_tensor(arr)
    else:
        y = y.detach().cpu()
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"{where}: labels must be integers, got {y.dtype}")
    y = y.reshape(-1).to(torch.int64)
    if y.shape[0] != n:
        raise ValueError(f"{where}: got {n} images but {y.shape[0]} labels")
    return y.contiguous()


def from_tensors(images: ArrayLike, labels: Optional[ArrayLike] = None, num_classes: Optional[int] = None,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 layout: str = "auto", name: str = "tensors", classes: Optional[Sequence[str]] = None) -> ImageData:
    """User arrays -> :class:`ImageData`. images: see :func:`_to_uint8_nchw`; labels: (N,) ints or None.

    ``num_classes`` defaults to ``max(label) + 1``; mean/std default to the statistics of the images
    (ValueError if a channel is constant: its std would be 0).
    """
    return _build(images, labels, num_classes, mean, std, layout, name, classes, f"dataset {name!r}")


def _build(images, labels, num_classes, mean, std, layout, name, classes, where: str) -> ImageData:
    """:func:`from_tensors` with ``where`` (a dataset name or a file path) naming the source in errors."""
    x = _to_uint8_nchw(images, layout, where)
    y = None if labels is None else _to_labels(labels, x.shape[0], where)
    if y is not None and num_classes is None:
        if y.numel():
            _check_class_indices(y, f"{where}: ")
        num_classes = int(y.max()) + 1 if y.numel() else 0
    if mean is None or std is None:
        m, s = _image_stats(x, where, need_std=std is None)
        mean, std = (m if mean is None else mean), (s if std is None else std)
    _check_mean_std(mean, std, where)
    return ImageData(x, y, num_classes, tuple(float(v) for v in mean), tuple(float(v) for v in std),
                     tuple(classes) if classes is not None else None, name)


def from_torch_dataset(dataset, num_classes: Optional[int] = None, layout: str = "auto", **kw) -> ImageData:
    """Materialises a torch Dataset once: each item is ``(image, label)`` or ``image`` alone.

    Images may be tensors (C, H, W) (uint8, or floats in [0, 1] as ``ToTensor`` gives), arrays or PIL
    images (H, W, C). Random transforms on the dataset are applied once and frozen; give it only
    deterministic ones and let :class:`~fastnas.data.DeviceLoader` augment.
    """
    items = [dataset[i] for i in range(len(dataset))] if hasattr(dataset, "__len__") else list(dataset)
    if not items:
        raise ValueError("the dataset is empty")
    labelled = isinstance(items[0], (tuple, list))
    name = kw.pop("name", type(dataset).__name__)
    imgs = []
    for i, it in enumerate(items):
        if labelled and not (isinstance(it, (tuple, list)) and len(it) == 2):
            raise TypeError(f"dataset {name!r}, item {i}: expected (image, label), got "
                            f"{type(it).__name__} of length {len(it) if hasattr(it, '__len__') else '?'}")
        im = it[0] if labelled else it
        if isinstance(im, dict):
            raise TypeError(f"dataset {name!r}, item {i}: expected an image (tensor, array or PIL image) or "
                            f"(image, label), got a dict with keys {sorted(im)[:5]}")
        if isinstance(im, torch.Tensor):
            im = im.detach().cpu()                         # torch convention: (C, H, W)
        else:
            im = torch.as_tensor(np.asarray(im))           # PIL / numpy convention: (H, W, C)
            if im.dim() == 3 and layout == "auto":
                im = im.permute(2, 0, 1)
        imgs.append(im.unsqueeze(0) if im.dim() == 2 else im)
        if tuple(imgs[-1].shape) != tuple(imgs[0].shape):
            raise ValueError(f"dataset {name!r}: item {i}'s image has shape {tuple(imgs[-1].shape)}, item 0's "
                             f"{tuple(imgs[0].shape)}; every image must have the same size (resize them first)")
    x = torch.stack(imgs)
    y = None
    if labelled:
        y = []
        for i, it in enumerate(items):
            try:
                y.append(int(it[1]))
            except (TypeError, ValueError):
                raise TypeError(f"dataset {name!r}, item {i}: the label must be an integer, got "
                                f"{type(it[1]).__name__} {it[1]!r:.60}") from None
    return from_tensors(x, y, num_classes=num_classes, layout="nchw" if layout == "auto" else layout,
                        name=name, **kw)


# ---------------------------------------------------------------------------------------------------
# CIFAR (python pickle format)
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _CifarSpec:
    name: str
    title: str
    folder: str
    url: str
    filename: str
    md5: str
    train: Tuple[str, ...]
    test: Tuple[str, ...]
    label_key: str
    meta: str
    names_key: str
    num_classes: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]


_CIFAR = {
    "cifar10": _CifarSpec("cifar10", "CIFAR-10", "cifar-10-batches-py",
                          "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
                          "c58f30108f718f92721af3b95e74349a", tuple(f"data_batch_{i}" for i in range(1, 6)),
                          ("test_batch",), "labels", "batches.meta", "label_names", 10, CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": _CifarSpec("cifar100", "CIFAR-100", "cifar-100-python",
                           "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python.tar.gz",
                           "eb9058c3a382ffc7106e4002c42a8d85", ("train",), ("test",), "fine_labels", "meta",
                           "fine_label_names", 100, CIFAR100_MEAN, CIFAR100_STD),
}


class CifarFormatError(ValueError, pickle.UnpicklingError):
    """A file that should be a CIFAR python pickle is not one (a ValueError and an UnpicklingError)."""


class _CifarUnpickler(pickle.Unpickler):
    """Loads only what CIFAR pickles contain (dicts, lists, strings and numpy arrays).

    A pickle can run arbitrary code on load and these files may come from a download: anything that
    is not a numpy array reconstructor is refused.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise CifarFormatError(f"refusing to load {module}.{name} from a CIFAR pickle")
        return super().find_class(module, name)


def _load_pickle(path: Path) -> dict:
    with open(path, "rb") as f:
        # latin1: the files were written by Python 2; it maps bytes 1:1, so the uint8 data survives.
        try:
            d = _CifarUnpickler(f, encoding="latin1").load()
        except CifarFormatError as e:
            raise CifarFormatError(f"{path}: {e}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
                ImportError) as e:
            raise CifarFormatError(f"{path} is not a CIFAR python pickle ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise CifarFormatError(f"{path} is not a CIFAR python pickle: it holds a {type(d).__name__}, not a dict")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def read_cifar_batch(path, label_key: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reads one CIFAR python pickle (``data_batch_1``, ``test_batch``, ``train``, ...).

    Returns images uint8 (N, 3, 32, 32) and labels int64 (N,). Each row of ``data`` holds the 1024 red,
    then green, then blue values row-major, so a plain reshape gives NCHW with no transpose.
    ``label_key`` defaults to ``labels`` (CIFAR-10) or else ``fine_labels`` (CIFAR-100).
    """
    d = _load_pickle(Path(path))
    key = label_key or ("labels" if "labels" in d else "fine_labels")
    if "data" not in d or key not in d:
        raise ValueError(f"{path} is not a CIFAR batch: keys {sorted(d)}; expected 'data' and {key!r}")
    data = np.asarray(d["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    x = torch.from_numpy(np.ascontiguousarray(data.reshape(-1, 3, 32, 32)))
    return x, _to_labels(d[key], x.shape[0], str(path))


def _missing_message(spec: _CifarSpec, root: Path, missing) -> str:
    folder = root / spec.folder
    return (
        f"{spec.title} not found: missing {', '.join(str(folder / m) for m in missing)}. "
        f"Either pass download=True, or download {spec.url} (md5 {spec.md5}) yourself and put it in "
        f"{root} (it is unpacked automatically) or unpack it there (tar -xzf {spec.filename} -C {root}), "
        f"so that {folder}/ holds {', '.join(spec.train + spec.test)}."
    )


def load_cifar(name: str = "cifar10", root=None, split: str = "train", download: bool = False,
               timeout: float = 60.0) -> ImageData:
    """CIFAR-10 or CIFAR-100 from the python-pickle folder under ``root``.

    ``root`` holds ``cifar-10-batches-py/`` (or ``cifar-100-python/``). Missing files are fetched with
    ``download=True`` (checksummed, atomic; see :mod:`fastnas.data.download`) or unpacked from the
    archive if it already sits in ``root``; otherwise a FileNotFoundError says what to put where.
    split: 'train' (50k) or 'test' (10k). Returns images (N, 3, 32, 32) uint8 with the standard constants.
    """
    spec = _CIFAR[name]
    if root is None:
        raise ValueError(f"{spec.title} needs its folder (root=, or --data on the command line): the folder "
                         f"that holds (or will hold) {spec.folder}/")
    if split not in ("train", "test"):
        raise ValueError(f"{spec.title} split must be 'train' or 'test', got {split!r}")
    root = Path(root).expanduser()
    folder = root / spec.folder
    files = spec.train if split == "train" else spec.test
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        archive = root / spec.filename
        if download:
            try:
                download_and_extract(spec.url, root, spec.filename, spec.md5, timeout=timeout)
            except OSError as e:  # URLError is an OSError: offline, DNS, proxy, refused connection
                raise FileNotFoundError(f"{_missing_message(spec, root, missing)} "
                                        f"(the download from {spec.url} failed: {e})") from e
        elif archive.is_file():
            if md5sum(archive) != spec.md5:
                raise ChecksumError(f"{archive} has the wrong MD5 (expected {spec.md5}): it is corrupt or "
                                    "incomplete; delete it, or pass download=True to replace it")
            download_and_extract(spec.url, root, spec.filename, spec.md5)
        else:
            raise FileNotFoundError(_missing_message(spec, root, missing))
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{spec.filename} was unpacked but did not contain the expected files. "
                                    + _missing_message(spec, root, missing))
    parts = [read_cifar_batch(folder / f, spec.label_key) for f in files]
    x = torch.cat([p[0] for p in parts])
    y = torch.cat([p[1] for p in parts])
    classes = None
    if (folder / spec.meta).is_file():
        classes = tuple(_load_pickle(folder / spec.meta).get(spec.names_key, ())) or None
    return ImageData(x, y, spec.num_classes, spec.mean, spec.std, classes, f"{name}-{split}")


# ---------------------------------------------------------------------------------------------------
# .npz arrays and the shared real sample
# ---------------------------------------------------------------------------------------------------
_SPLIT_CODES = {"train": 0, "test": 1}


def load_npz(path, split: Optional[str] = None, layout: str = "auto", num_classes: Optional[int] = None,
             mean=None, std=None, name: Optional[str] = None) -> ImageData:
    """An ``.npz`` with ``x`` (N, H, W, C) or (N, C, H, W) uint8 and optionally ``y`` (N,) labels.

    If it has a ``split`` key (0 = train, 1 = test), ``split='train'|'test'`` selects those rows;
    ``None``/'all' keeps every row. Asking for 'test' from a file without ``split`` is an error rather
    than a silent return of the training rows. ``classes`` (names), when present, is kept.
    """
    path = Path(path)
    if split not in (None, "all") and split not in _SPLIT_CODES:
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    z, keys = _read_npz(path)
    if "x" not in z:
        raise ValueError(f"{path} has no 'x' array (keys: {keys}); expected {_NPZ_CONTENT}")
    x, y = z["x"], z.get("y")
    sel = None
    if split not in (None, "all"):
        if "split" in z:
            s = z["split"]
            if s.shape != (len(x),) or s.dtype.kind not in "iub":
                raise ValueError(f"{path}: 'split' must hold one integer (0 = train, 1 = test) per image, "
                                 f"got {s.dtype} {s.shape} for {len(x)} images")
            sel = s == _SPLIT_CODES[split]
        elif split != "train":
            raise ValueError(f"{path} has no 'split' array, so split={split!r} cannot be selected")
    classes = tuple(str(c) for c in np.atleast_1d(z["classes"])) if "classes" in z else None
    if sel is not None:
        if y is not None and len(y) != len(x):
            raise ValueError(f"{path}: got {len(x)} images but {len(y)} labels")
        x, y = x[sel], (None if y is None else y[sel])
    if num_classes is None and classes is not None:
        num_classes = len(classes)
    return _build(x, y, num_classes, mean, std, layout, name or path.stem, classes,
                  str(path) + (f" (split {split!r})" if sel is not None else ""))


_NPZ_CONTENT = ("an .npz archive written by numpy.savez with 'x': images (N, H, W, C) or (N, C, H, W), uint8 or "
                "floats in [0, 1]; optionally 'y': integer labels (N,), 'split': 0 = train / 1 = test per image, "
                "'classes': class names")


def _read_npz(path: Path) -> Tuple[dict, List[str]]:
    """The arrays 'x', 'y', 'split', 'classes' that the .npz at ``path`` holds, and all its keys; ValueError naming the file
    and what it should contain when it is not a readable .npz (a .npy, text, a corrupt zip, object arrays)."""
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, FileNotFoundError):
            raise
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if isinstance(e, ValueError) and "pickle" in str(e):  # numpy's guess for a file of neither format
            why = "it is neither a zip archive (.npz) nor a .npy file"
        raise ValueError(f"{path} is not a readable .npz archive ({why}); expected {_NPZ_CONTENT}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} holds a single array (a .npy), not an .npz archive; expected {_NPZ_CONTENT}")
    out = {}
    with z:
        for key in ("x", "y", "split", "classes"):
            if key not in z.files:
                continue
            try:
                out[key] = z[key]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
                raise ValueError(f"{path}: cannot read array {key!r} ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''}); expected {_NPZ_CONTENT}") from None
    return out, list(z.files)


def load_cifar10_sample(path, split: str = "train") -> ImageData:
    """The real CIFAR-10 sample shipped in ``shared/data/cifar10_sample.npz`` (4,000 train + 1,000 test).

    path: the ``.npz`` file or the folder holding it. split: 'train', 'test' or 'all'. Normalised with the
    standard CIFAR-10 constants (the images are CIFAR-10 images; a search on them should see the same
    input scale as one on the full set).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "cifar10_sample.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the CIFAR-10 sample lives in shared/data/cifar10_sample.npz")
    return load_npz(path, split=split, num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                    name=f"cifar10_sample-{split}")


# ---------------------------------------------------------------------------------------------------
# Synthetic data for smoke tests
# ---------------------------------------------------------------------------------------------------
def make_synthetic(n: int = 512, num_classes: int = 10, image_size: int = 32, channels: int = 3,
                   seed: int = 0, split: str = "train", noise: float = 48.0,
                   sample_seed: Optional[int] = None) -> ImageData:
    """Random images whose class shows as a mean colour: (n, channels, image_size, image_size) uint8.

    Each class gets a fixed colour (drawn from ``seed``); an image is that colour plus Gaussian pixel
    noise of std ``noise`` (in 0-255 units). A network can learn it quickly and crops/flips keep it, so a
    smoke search sees its loss fall. Train and test (``split``) share the colours but not the samples.
    Labels are balanced (``i % num_classes``, shuffled). ``sample_seed`` (default: derived from ``seed``
    and ``split``) seeds the samples alone: more samples of the same classes.
    """
    for name, v in (("n", n), ("num_classes", num_classes), ("image_size", image_size), ("channels", channels),
                    ("seed", seed), ("sample_seed", sample_seed)):
        if not (isinstance(v, numbers.Integral) and not isinstance(v, bool)) and not (name == "sample_seed" and v is None):
            raise TypeError(f"synthetic data: {name} must be an integer, got {type(v).__name__} {v!r}")
    if not (isinstance(noise, numbers.Real) and not isinstance(noise, bool) and math.isfinite(noise) and noise >= 0):
        raise ValueError(f"synthetic data: noise must be a finite number >= 0, got {noise!r}")
    if n <= 0 or num_classes <= 0 or image_size <= 0 or channels <= 0:
        raise ValueError(f"need n, num_classes, image_size and channels > 0, got n={n}, num_classes={num_classes}, "
                         f"image_size={image_size}, channels={channels}")
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(num_classes, channels, generator=g) * 160 + 48  # away from 0/255: noise not clipped away
    g.manual_seed(seed * 2 + (0 if split == "train" else 1) + 1_000_003 if sample_seed is None else sample_seed)
    try:
        y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
        x = centres[y][:, :, None, None] + noise * torch.randn(n, channels, image_size, image_size, generator=g)
    except RuntimeError as e:
        if "allocate" not in str(e):
            raise
        need = n * channels * image_size * image_size * 4 / 2**30
        raise ValueError(f"synthetic data of n={n} images of {channels}x{image_size}x{image_size} needs about "
                         f"{need:,.1f} GiB while it is made; this machine could not allocate it: ask for fewer") from None
    x = x.round_().clamp_(0, 255).to(torch.uint8)
    mean, std = _image_stats(x, f"synthetic data (noise={noise})")
    return ImageData(x, y, num_classes, mean, std, None, f"synthetic-{split}")


# ---------------------------------------------------------------------------------------------------
# One entry point
# ---------------------------------------------------------------------------------------------------
_NAMES = ("cifar10", "cifar100", "cifar10_sample", "synthetic", "<file>.npz")


def _load_folder(path: Path, split: str, **kw) -> ImageData:
    """A folder that holds a dataset: the CIFAR-10 sample, or CIFAR-10/100's pickle folder (or is one)."""
    if (path / "cifar10_sample.npz").is_file():
        return load_cifar10_sample(path, split)
    for name in ("cifar10", "cifar100"):
        folder = _CIFAR[name].folder
        if (path / folder).is_dir():
            return load_cifar(name, path, split, **kw)
        if path.name == folder:
            return load_cifar(name, path.parent, split, **kw)
    raise ValueError(f"{path} is a folder without a dataset fastnas reads: expected cifar10_sample.npz, "
                     f"{_CIFAR['cifar10'].folder}/ or {_CIFAR['cifar100'].folder}/ in it")


def load_dataset(name_or_obj, root=None, split: str = "train", **kw) -> ImageData:
    """Loads anything this module knows into an :class:`ImageData`.

    name_or_obj:
      - ``'cifar10'`` / ``'cifar100'``: pickle folders under ``root`` (kw: ``download``, ``timeout``);
      - ``'cifar10_sample'``: the shared real sample; ``root`` is the file or its folder;
      - ``'synthetic'``: kw ``n``, ``num_classes``, ``image_size``, ``seed``;
      - a path to an ``.npz`` (str or Path);
      - an :class:`ImageData` (returned as is), an image array, an ``(images, labels)`` pair, or a torch
        Dataset (kw: ``num_classes``, ``layout``, ``mean``, ``std``). ``split`` is ignored for these.
    """
    obj = name_or_obj
    if isinstance(obj, ImageData):
        return obj
    if isinstance(obj, (str, Path)):
        key = str(obj).lower().replace("-", "").replace("_", "")
        if isinstance(obj, str) and key in ("cifar10", "cifar100"):
            return load_cifar(key, root, split, **kw)
        if isinstance(obj, str) and key == "cifar10sample":
            if root is None:
                raise ValueError("cifar10_sample needs its location (root=, or --data on the command line): "
                                 "shared/data or the .npz file")
            return load_cifar10_sample(root, split)
        if isinstance(obj, str) and key == "synthetic":
            return make_synthetic(split=split, **kw)
        path = Path(obj) if root is None or Path(obj).is_absolute() else Path(root) / obj
        if path.suffix == ".npz":
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found")
            return load_npz(path, split=split, **kw)
        if path.is_dir():
            return _load_folder(path, split, **kw)
        if len(path.parts) > 1 or str(obj).startswith(("~", ".")):
            raise FileNotFoundError(f"{path} not found (a dataset is one of {', '.join(_NAMES)}, or a folder "
                                    f"holding one of them)")
        raise ValueError(f"unknown dataset {obj!r}: known names are {', '.join(_NAMES)}")
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return from_tensors(obj[0], obj[1], **kw)
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return from_tensors(obj, None, **kw)
    if isinstance(obj, Dataset) or hasattr(obj, "__getitem__"):
        return from_torch_dataset(obj, **kw)
    raise TypeError(f"cannot load a dataset from {type(obj).__name__}")


# Options that change how a dataset is fetched, not the images it yields.
_FETCH_OPTIONS = ("download", "timeout")


def _option_defaults(name) -> Dict[str, Any]:
    """The keyword defaults ``load_dataset(name, ...)`` fills in for the options left out."""
    key = str(name).lower().replace("-", "").replace("_", "")
    if key == "synthetic":
        loader, positional = make_synthetic, ("split",)
    elif key in ("cifar10", "cifar100"):
        loader, positional = load_cifar, ("name", "root", "split")
    elif str(name).endswith(".npz"):
        loader, positional = load_npz, ("path", "split")
    else:
        return {}
    return {k: p.default for k, p in inspect.signature(loader).parameters.items()
            if k not in positional and p.default is not inspect.Parameter.empty}


def same_dataset_options(name, a: Optional[Dict[str, Any]], b: Optional[Dict[str, Any]]) -> bool:
    """Whether the options ``a`` and ``b`` load the same data from dataset ``name``: an option spelled
    out at its default equals one left out, and the fetch options (download, timeout) do not count."""
    defaults = _option_defaults(name)

    def effective(options):
        full = dict(defaults, **(options or {}))
        return {k: v for k, v in full.items() if k not in _FETCH_OPTIONS}

    return effective(a) == effective(b)
