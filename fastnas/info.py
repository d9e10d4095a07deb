"""``python -m fastnas.info``: versions, built backends and the backend each device uses."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys

import torch

import fastnas
from fastnas import _ext
from fastnas.ops import _dispatch
from fastnas.ops.backends import BACKENDS


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _devices():
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices += [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return devices


def report() -> str:
    module, reason = _ext.load()
    lines = [
        f"fastnas        {fastnas.__version__}",
        f"python         {platform.python_version()} ({sys.executable})",
        f"torch          {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
        f"triton         {_version('triton')}",
        f"extension      {'fastnas._C built against torch ' + module.torch_version if module else 'unusable: ' + reason}",
    ]
    if module is not None:
        lines.append(f"  cpu kernels  built (OpenMP threads: {module.openmp_threads() or 'built without OpenMP'})")
        lines.append(f"  cuda kernels {'built' if module.cuda_built() else 'not built (CPU-only build)'}")
    env = os.environ.get(_dispatch.ENV_VAR)
    lines.append(f"{_dispatch.ENV_VAR} {env!r}" if env else f"{_dispatch.ENV_VAR} not set (automatic choice)")
    if not torch.cuda.is_available():
        lines.append("CUDA devices   none visible")
    for device in _devices():
        label = str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})"
        for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            try:
                chosen = _dispatch.resolve(None, device, dtype)
            except (ValueError, _dispatch.BackendUnavailableError) as exc:
                chosen = f"error: {exc}"
            usable = ", ".join(_dispatch.available_backends(device, dtype))
            lines.append(f"{label:<14} {str(dtype).replace('torch.', ''):<9} uses {chosen:<7} (usable: {usable})")
    for name, backend in BACKENDS.items():
        device = torch.device("cuda" if name in ("cuda", "triton") else "cpu")
        why = backend.why_not(device, torch.float32)
        if why:
            lines.append(f"backend {name:<7}not usable on {device.type}: {why}")
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
