"""Test configuration.

Triton kernels run on the CPU through the interpreter; TRITON_INTERPRET must be set before triton is
first imported, so it is set here, at collection start, when no CUDA device is visible.
``torch.cuda.is_available()`` asks the driver for a device count without creating a context.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none visible)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
