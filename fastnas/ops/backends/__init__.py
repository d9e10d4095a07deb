"""The backends of the fused shuffle-mix kernel pair (docs/kernel_interface.md).

Each backend answers ``why_not(device, dtype, n_ops)`` (empty string when it can run the call) and, except for
``torch``, implements ``mix_forward`` / ``mix_backward`` on 3-D ``(B, channels, S)`` tensors. ``torch`` is
the pure-PyTorch reference: the functionals call their ``*_ref`` formula directly and autograd
differentiates it, so it is the independent ground truth of every test.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Dict

import torch

from fastnas import _ext

_FLOAT = (torch.float32, torch.float64)
_GPU_FLOAT = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_TRITON_FLOAT = (torch.float32, torch.float16, torch.bfloat16)


def _triton_interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# csrc/mix.h kMaxOpsCuda: the CUDA kernels keep per-op pointers and scales in fixed-size kernel arguments.
MAX_OPS_CUDA = 16


class Backend:
    name = ""
    fused = True

    def why_not(self, device: torch.device, dtype: torch.dtype, n_ops: int = 0) -> str:
        """Why this backend cannot run a call on ``device``/``dtype`` mixing ``n_ops`` tensors ("" if it can)."""
        raise NotImplementedError

    def mix_forward(self, *args, **kwargs):
        raise NotImplementedError

    def mix_backward(self, *args, **kwargs):
        raise NotImplementedError


class TorchBackend(Backend):
    """Plain PyTorch formula differentiated by autograd; runs anywhere torch does."""

    name = "torch"
    fused = False

    def why_not(self, device, dtype, n_ops=0):
        return "" if dtype.is_floating_point else f"dtype {dtype} is not a floating-point dtype"


class CpuBackend(Backend):
    """C++/OpenMP kernels of ``fastnas._C`` (csrc/cpu/)."""

    name = "cpu"

    def why_not(self, device, dtype, n_ops=0):
        module, reason = _ext.load()
        if module is None:
            return reason
        if device.type != "cpu":
            return f"the cpu backend runs on CPU tensors, got device {device}"
        if dtype not in _FLOAT:
            return f"the cpu backend supports float32 and float64, got {dtype}"
        return ""

    def mix_forward(self, *args, **kwargs):
        _ext.extension().mix_forward(*args, **kwargs)

    def mix_backward(self, *args, **kwargs):
        _ext.extension().mix_backward(*args, **kwargs)


class CudaBackend(CpuBackend):
    """CUDA kernels of ``fastnas._C`` (csrc/cuda/), present when built on a CUDA machine."""

    name = "cuda"

    def why_not(self, device, dtype, n_ops=0):
        module, reason = _ext.load()
        if module is None:
            return reason
        if not module.cuda_built():
            return (f"fastnas._C was built without CUDA; on a machine with a CUDA build of torch and "
                    f"nvcc rebuild it with: {_ext.BUILD_COMMAND}")
        if device.type != "cuda":
            return f"the cuda backend runs on CUDA tensors, got device {device}"
        if dtype not in _GPU_FLOAT:
            return f"the cuda backend supports {', '.join(map(str, _GPU_FLOAT))}, got {dtype}"
        if n_ops > MAX_OPS_CUDA:
            return f"the CUDA kernels take at most {MAX_OPS_CUDA} op outputs (or edges) per call, got {n_ops}"
        return ""


class TritonBackend(Backend):
    """Triton kernels (kernels/shuffle_mix.py, installed as ``fastnas.kernels``).

    On CPU tensors they run only under the Triton interpreter (``TRITON_INTERPRET=1`` set before
    triton is imported), which is for tests: it is orders of magnitude slower than the cpu backend.
    """

    name = "triton"
    _module = None

    def why_not(self, device, dtype, n_ops=0):
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed: pip install triton"
        if device.type == "cpu" and not _triton_interpreter():
            return "Triton kernels run on CPU tensors only with TRITON_INTERPRET=1 (set before triton is imported)"
        if device.type not in ("cpu", "cuda"):
            return f"the triton backend does not run on device {device}"
        if dtype not in _TRITON_FLOAT:
            return f"the triton backend supports {', '.join(map(str, _TRITON_FLOAT))}, got {dtype}"
        return ""

    def _kernels(self):
        if TritonBackend._module is None:  # imported on first use: importing triton costs ~1 s
            TritonBackend._module = importlib.import_module("fastnas.kernels.shuffle_mix")
        return TritonBackend._module

    def mix_forward(self, *args, **kwargs):
        self._kernels().mix_forward(*args, **kwargs)

    def mix_backward(self, *args, **kwargs):
        self._kernels().mix_backward(*args, **kwargs)


BACKENDS: Dict[str, Backend] = {b.name: b for b in (TorchBackend(), CpuBackend(), CudaBackend(), TritonBackend())}
