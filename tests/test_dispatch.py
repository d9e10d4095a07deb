"""The one dispatch point: explicit choices fail loudly, automatic choices fall back quietly."""
import subprocess
import sys

import pytest
import torch

from fastnas.ops import BackendUnavailableError, available_backends, channel_shuffle, resolve
from fastnas.ops.backends import BACKENDS


def test_torch_backend_is_always_available():
    assert "torch" in available_backends("cpu")
    assert resolve("torch", torch.device("cpu"), torch.float16) == "torch"


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="unknown fastnas backend 'fast'"):
        channel_shuffle(torch.randn(1, 4, 2, 2), 2, backend="fast")


def test_explicit_cuda_on_cpu_raises_with_reason():
    with pytest.raises(BackendUnavailableError, match="cuda"):
        channel_shuffle(torch.randn(1, 4, 2, 2), 2, backend="cuda")


def test_explicit_cpu_backend_rejects_half_precision():
    if BACKENDS["cpu"].why_not(torch.device("cpu"), torch.float32):
        pytest.skip("cpu extension not built")
    with pytest.raises(BackendUnavailableError, match="float16"):
        channel_shuffle(torch.randn(1, 4, 2, 2).half(), 2, backend="cpu")


def test_automatic_choice_falls_back_for_half_precision_on_cpu():
    assert resolve(None, torch.device("cpu"), torch.float16) == "torch"
    y = channel_shuffle(torch.randn(1, 4, 2, 2).half(), 2)
    assert y.dtype == torch.float16


def test_environment_variable_overrides_and_is_explicit(monkeypatch):
    monkeypatch.setenv("FASTNAS_BACKEND", "torch")
    assert resolve(None, torch.device("cpu"), torch.float32) == "torch"
    monkeypatch.setenv("FASTNAS_BACKEND", "cuda")
    with pytest.raises(BackendUnavailableError, match="FASTNAS_BACKEND=cuda"):
        resolve(None, torch.device("cpu"), torch.float32)
    # the argument wins over the variable
    assert resolve("torch", torch.device("cpu"), torch.float32) == "torch"


def test_automatic_choice_on_cpu_prefers_the_cpu_extension():
    expected = "torch" if BACKENDS["cpu"].why_not(torch.device("cpu"), torch.float32) else "cpu"
    assert resolve(None, torch.device("cpu"), torch.float32) == expected


def test_missing_extension_does_not_break_import_and_names_the_build_command(tmp_path):
    code = (
        "import sys; sys.modules['fastnas._C'] = None\n"  # makes `from fastnas import _C` fail
        "import torch, fastnas\n"
        "from fastnas.ops import channel_shuffle, BackendUnavailableError\n"
        "x = torch.randn(1, 4, 2, 2)\n"
        "assert torch.equal(channel_shuffle(x, 2), fastnas.ops.channel_shuffle_ref(x, 2))\n"
        "try:\n"
        "    channel_shuffle(x, 2, backend='cpu')\n"
        "except BackendUnavailableError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path).stdout  # not the checkout: import the installed package
    assert "pip install --no-build-isolation ." in out


def test_channel_shuffle_prefers_the_plain_copy_on_cpu():
    """Measured: the fused cpu shuffle is slower than aten's copy (see AUTO_ORDER_BY_OP)."""
    assert resolve(None, torch.device("cpu"), torch.float32, op="channel_shuffle") == "torch"


def test_more_ops_than_the_cuda_kernels_take_go_to_another_backend(monkeypatch):
    """The CUDA kernels take at most 16 op outputs (csrc/mix.h); with more, automatic dispatch on a CUDA
    device picks the next backend and an explicit backend="cuda" says why it cannot. Checked here with a
    stand-in for a CUDA build of the extension (no GPU on the CPU test machines)."""
    import re
    from pathlib import Path

    import fastnas._ext as ext
    from fastnas.ops.backends import MAX_OPS_CUDA

    header = (Path(__file__).resolve().parents[1] / "csrc" / "mix.h").read_text()
    assert int(re.search(r"kMaxOpsCuda = (\d+);", header).group(1)) == MAX_OPS_CUDA

    class CudaBuild:
        @staticmethod
        def cuda_built():
            return True

    monkeypatch.setattr(ext, "load", lambda: (CudaBuild, None))
    cuda = torch.device("cuda")
    assert BACKENDS["cuda"].why_not(cuda, torch.float32, n_ops=MAX_OPS_CUDA) == ""
    assert "at most 16 op outputs" in BACKENDS["cuda"].why_not(cuda, torch.float32, n_ops=MAX_OPS_CUDA + 1)
    assert resolve(None, cuda, torch.float32, n_ops=MAX_OPS_CUDA) == "cuda"
    assert resolve(None, cuda, torch.float32, n_ops=MAX_OPS_CUDA + 1) != "cuda"
    with pytest.raises(BackendUnavailableError, match="at most 16 op outputs .* got 17"):
        resolve("cuda", cuda, torch.float32, n_ops=MAX_OPS_CUDA + 1)
