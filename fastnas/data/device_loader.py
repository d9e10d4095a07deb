"""A data loader whose whole dataset lives on the device and is augmented there.

The DARTS reference feeds the search through a CPU ``DataLoader`` (PIL crop/flip/ToTensor per image),
which becomes the bottleneck once the network runs fast, and builds a new validation iterator every
step. Here the uint8 images (CIFAR-10: 150 MiB) are moved to the device once; each batch is one index
gather, one batched crop+flip gather and one fused scale/shift: a handful of kernel launches, no host
work, no host-device copy.

Augmentation matches torchvision's ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()`` followed by
``ToTensor`` + ``Normalize``: zero (black) padding applied to the uint8 image, a crop offset uniform in
``[0, 2 * padding]`` per axis, a flip with probability 0.5.

All randomness comes from one ``torch.Generator`` on the loader's device, so a fixed seed gives the same
batches on the same device type, and :meth:`DeviceLoader.state_dict` (position, permutation, generator
state) lets a search resume with exactly the batches it would have seen. CPU and CUDA generators produce
different streams: a seed reproduces runs per device type, not across them.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterator, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from fastnas.data.datasets import ImageData, _check_mean_std, _image_stats

__all__ = ["random_crop_flip", "DeviceLoader", "split_train"]

Batch = Tuple[torch.Tensor, Optional[torch.Tensor]]


def random_crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """Batched random crop (zero padding) and horizontal flip, as one gather.

    x: (B, C, H, W), any dtype. offsets: (B, 2) int64, (top, left) of the crop window in the padded image,
    each in ``[0, 2 * padding]``. flips: (B,) bool. Returns (B, C, H, W), contiguous:
    ``out[b] = pad(x[b])[:, top:top + H, left:left + W]``, reversed along W where ``flips[b]``.
    The flip costs nothing extra: it only reverses the column indices of the gather.
    """
    b, c, h, w = x.shape
    p = padding
    xp = F.pad(x.contiguous(), (p, p, p, p)) if p > 0 else x.contiguous()
    wp = w + 2 * p
    dev = x.device
    offsets = offsets.to(device=dev, dtype=torch.int64)
    rows = offsets[:, :1] + torch.arange(h, device=dev)                       # (B, H)
    cols = offsets[:, 1:] + torch.arange(w, device=dev)                       # (B, W)
    cols = torch.where(flips.to(dev).view(b, 1), cols.flip(1), cols)
    idx = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w)       # (B, 1, H*W) into the padded plane
    return xp.reshape(b, c, -1).gather(2, idx.expand(b, c, h * w)).view(b, c, h, w)


class DeviceLoader:
    """Yields ``(images, labels)`` batches from a dataset resident on ``device``.

    images: uint8 (N, C, H, W) (moved to ``device`` once); labels: int64 (N,) or None (then the second
    element of each batch is None). Batches: images (B, C, H, W) in ``dtype``, normalised with
    ``mean``/``std`` (per channel, [0, 1] scale; computed from the images when omitted), optionally
    ``channels_last``; labels (B,) int64.

    Modes:
      - epoch (default): ``for x, y in loader`` runs one pass (a fresh permutation each pass);
      - ``infinite=True``: ``next(loader)`` forever, one persistent iterator that reshuffles at each pass
        boundary. Meant for the architecture batches of a search (DARTS rebuilt an iterator each step).

    ``drop_last=True`` drops the tail so every batch has ``batch_size`` rows (steady shapes, no
    recompilation, BatchNorm never sees a tiny batch). Randomness: ``generator`` (a ``torch.Generator`` on
    ``device``) or ``seed``; with neither, the seed is drawn from torch's global RNG, so
    ``torch.manual_seed`` still makes runs repeatable.

    The last batch's choices are kept in ``last_indices`` (B,), ``last_offsets`` (B, 2) and
    ``last_flips`` (B,) (None without augmentation), for tests and debugging.
    """

    def __init__(self, images: torch.Tensor, labels: Optional[torch.Tensor], batch_size: int,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 augment: bool = True, shuffle: bool = True, drop_last: bool = True,
                 generator: Optional[torch.Generator] = None, seed: Optional[int] = None,
                 device: Union[str, torch.device, None] = None, infinite: bool = False,
                 channels_last: bool = False, dtype: torch.dtype = torch.float32, padding: int = 4):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise TypeError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        n = images.shape[0]
        if labels is not None and tuple(labels.shape) != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if batch_size > n and (drop_last or infinite):
            raise ValueError(
                f"batch_size={batch_size} is larger than the dataset ({n} images): with drop_last=True "
                "(or infinite=True) no full batch can be formed. Use a smaller batch_size or more data"
                + (" (with train_portion splitting, each half has only part of the images)" if n else ""))
        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device)
        self.labels = None if labels is None else labels.to(self.device, torch.int64)
        self.batch_size = int(batch_size)
        self.augment, self.shuffle, self.drop_last = augment, shuffle, drop_last
        self.infinite, self.channels_last, self.dtype, self.padding = infinite, channels_last, dtype, padding
        if mean is None or std is None:
            m, s = _image_stats(images, "DeviceLoader", need_std=std is None)
            mean, std = (m if mean is None else mean), (s if std is None else std)
        c = images.shape[1]
        if len(mean) != c or len(std) != c:
            raise ValueError(f"DeviceLoader: mean/std need {c} entries (one per channel), got {len(mean)}/{len(std)}")
        _check_mean_std(mean, std, "DeviceLoader")
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, c, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, c, 1, 1)
        # (x / 255 - mean) / std == x * scale + shift: one multiply-add on the uint8 values.
        self._scale = (1.0 / (255.0 * std_t)).to(self.device)
        self._shift = (-mean_t / std_t).to(self.device)
        if generator is None:
            if seed is None:
                seed = int(torch.randint(0, 2**62, (1,)).item())
            generator = torch.Generator(device=self.device).manual_seed(seed)
        elif generator.device.type != self.device.type:
            raise ValueError(f"generator is on {generator.device} but the loader runs on {self.device}")
        self.generator = generator
        # Position: the permutation of the pass in progress (None between passes) and the next row in it.
        self.epoch = 0
        self._perm: Optional[torch.Tensor] = None
        self._pos = 0
        self._resume = False
        self.last_indices = self.last_offsets = self.last_flips = None

    @classmethod
    def from_data(cls, data: ImageData, batch_size: int, **kw) -> "DeviceLoader":
        """A loader over an :class:`ImageData`, normalised with its mean/std unless given in ``kw``."""
        kw.setdefault("mean", data.mean)
        kw.setdefault("std", data.std)
        return cls(data.images, data.labels, batch_size, **kw)

    def __len__(self) -> int:
        """Batches per pass."""
        n = self.images.shape[0]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    # -- iteration ------------------------------------------------------------------------------------
    def _start_pass(self) -> None:
        n = self.images.shape[0]
        if self.shuffle:
            self._perm = torch.randperm(n, generator=self.generator, device=self.device)
        else:
            self._perm = torch.arange(n, device=self.device)
        self._pos = 0

    def _next_batch(self) -> Batch:
        n, bs = self.images.shape[0], self.batch_size
        idx = self._perm[self._pos:self._pos + bs]
        self._pos += idx.shape[0]
        # Close the pass as soon as its last batch is cut (not on the next call), so a state_dict taken
        # right after the last batch resumes into the next pass rather than into an empty remainder.
        if self._pos >= n or (self.drop_last and self._pos + bs > n):
            self._perm, self._pos = None, 0
            self.epoch += 1
        x = self.images.index_select(0, idx)
        y = None if self.labels is None else self.labels.index_select(0, idx)
        self.last_indices, self.last_offsets, self.last_flips = idx, None, None
        if self.augment:
            b = idx.shape[0]
            offsets = torch.randint(0, 2 * self.padding + 1, (b, 2), generator=self.generator, device=self.device)
            flips = torch.rand(b, generator=self.generator, device=self.device) < 0.5
            x = random_crop_flip(x, offsets, flips, self.padding)
            self.last_offsets, self.last_flips = offsets, flips
        # Normalise in float32 even for half outputs: the scale is ~1/60, and the cast comes last.
        x = torch.addcmul(self._shift, x.to(torch.float32), self._scale)
        if self.dtype != torch.float32:
            x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def _pass(self) -> Iterator[Batch]:
        if not (self._resume and self._perm is not None):
            self._start_pass()
        self._resume = False
        while self._perm is not None:
            yield self._next_batch()

    def __iter__(self):
        """Epoch mode: a generator over one pass (resuming a pass cut short by :meth:`load_state_dict`).
        Infinite mode: the loader itself."""
        return self if self.infinite else self._pass()

    def __next__(self) -> Batch:
        if not self.infinite:
            raise TypeError("next(loader) needs infinite=True; in epoch mode iterate with `for x, y in loader`")
        if self._perm is None:
            self._start_pass()
        return self._next_batch()

    # -- checkpointing --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Position and RNG state: loading it into a loader over the same data gives the same following
        batches. Tensors are on the CPU (the permutation is N int64: 400 KiB for CIFAR-10)."""
        return {
            "epoch": self.epoch,
            "pos": self._pos,
            "perm": None if self._perm is None else self._perm.cpu(),
            "generator": self.generator.get_state(),
            "num_images": self.images.shape[0],
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict) -> None:
        n = self.images.shape[0]
        if state["num_images"] != n or state["batch_size"] != self.batch_size:
            raise ValueError(f"state is for {state['num_images']} images in batches of {state['batch_size']}, "
                             f"this loader has {n} in batches of {self.batch_size}")
        self.epoch = int(state["epoch"])
        self._pos = int(state["pos"])
        self._perm = None if state["perm"] is None else state["perm"].to(self.device)
        self.generator.set_state(state["generator"])
        self._resume = True


def split_train(images, labels=None, train_portion: float = 0.5, shuffle: bool = False, seed: int = 0):
    """Splits a training set into the weight half and the architecture half, as the PC-DARTS search does.

    DARTS samples weight batches from ``indices[:split]`` and architecture batches from
    ``indices[split:]`` with ``split = floor(train_portion * N)`` and no shuffle of ``indices``; the
    same is done here (``shuffle=True`` permutes with ``seed`` first).

    images: uint8 (N, C, H, W) and labels (N,) or None -> ``((x_w, y_w), (x_a, y_a))``; or an
    :class:`ImageData` -> two ImageData with the parent's mean/std (slices: views, no copy when unshuffled).
    """
    data = images if isinstance(images, ImageData) else None
    if data is not None and labels is not None:
        # split_train(data, 0.8) would otherwise take 0.8 as the labels and split at the default 0.5.
        raise TypeError(f"split_train: an ImageData carries its labels; the second argument must be left out "
                        f"(got {type(labels).__name__} {labels!r}): pass train_portion=... by keyword")
    x = data.images if data is not None else images
    y = data.labels if data is not None else labels
    n = x.shape[0]
    if not 0.0 < train_portion < 1.0:
        raise ValueError(f"train_portion must lie in (0, 1), got {train_portion}")
    split = int(math.floor(train_portion * n))
    if split == 0 or split == n:
        raise ValueError(f"train_portion={train_portion} of {n} images leaves one half empty")
    if shuffle:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(x.device)
        x = x[perm]
        y = None if y is None else y[perm.to(y.device)]
    halves = [(x[:split], None if y is None else y[:split]), (x[split:], None if y is None else y[split:])]
    if data is None:
        return tuple(halves)
    return tuple(dataclasses.replace(data, images=hx, labels=hy, name=f"{data.name}[{tag}]")
                 for (hx, hy), tag in zip(halves, ("weights", "arch")))
