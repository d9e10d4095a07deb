"""Datasets as tensors and an on-device loader with on-device augmentation.

Depends only on torch, numpy and the standard library (never on fastnas.nn/search/proxies).

    >>> from fastnas.data import load_dataset, DeviceLoader, split_train
    >>> data = load_dataset("cifar10", root="~/data", download=True)    # ImageData, uint8 (50000, 3, 32, 32)
    >>> w_half, a_half = split_train(data, train_portion=0.5)           # as the PC-DARTS search splits
    >>> train = DeviceLoader.from_data(w_half, 256, device="cuda")      # one pass per `for`
    >>> arch = DeviceLoader.from_data(a_half, 256, device="cuda", infinite=True)   # next(arch) forever
"""
from fastnas.data.datasets import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    ImageData,
    channel_stats,
    from_tensors,
    from_torch_dataset,
    load_cifar,
    load_cifar10_sample,
    load_dataset,
    load_npz,
    make_synthetic,
    read_cifar_batch,
)
from fastnas.data.device_loader import DeviceLoader, random_crop_flip, split_train
from fastnas.data.download import ChecksumError, download_and_extract, download_url, md5sum, safe_extract

__all__ = [
    "ImageData", "load_dataset", "load_cifar", "load_cifar10_sample", "load_npz", "from_tensors",
    "from_torch_dataset", "make_synthetic", "read_cifar_batch", "channel_stats",
    "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD",
    "DeviceLoader", "random_crop_flip", "split_train",
    "ChecksumError", "download_and_extract", "download_url", "md5sum", "safe_extract",
]
