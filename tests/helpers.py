"""Shared test helpers: backend/device combinations and tolerances."""
import importlib.util
import os

import pytest
import torch

from fastnas.ops.backends import BACKENDS

# (backend, device) pairs that run fused kernels. GPU pairs carry the gpu mark (skipped without a GPU);
# Triton on CPU runs through the interpreter (TRITON_INTERPRET=1, set in conftest.py).
FUSED = [
    pytest.param("cpu", "cpu", id="cpu"),
    pytest.param("triton", "cpu", id="triton-interp", marks=pytest.mark.triton),
    pytest.param("cuda", "cuda", id="cuda", marks=pytest.mark.gpu),
    pytest.param("triton", "cuda", id="triton-gpu", marks=[pytest.mark.gpu, pytest.mark.triton]),
]

# Relative-to-scale tolerances per data dtype (the kernels accumulate in float32 / float64).
TOLERANCE = {
    torch.float64: dict(atol=1e-11, rtol=1e-11),
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float16: dict(atol=4e-3, rtol=4e-3),
    torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
}


def require_backend(backend: str, device: str, dtype=torch.float32):
    """Skips when a backend cannot run here, except the cpu backend, whose absence is a build failure
    (test_build.py fails for it) rather than something to skip silently."""
    if backend == "triton" and importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    why = BACKENDS[backend].why_not(torch.device(device), dtype)
    if why and backend == "cpu" and "fastnas._C" in why and os.environ.get("FASTNAS_ALLOW_NO_EXTENSION") != "1":
        pytest.fail(f"the cpu extension is not usable: {why}")
    if why:
        pytest.skip(why)


def assert_close(actual, expected, dtype, what=""):
    assert actual is not None, f"{what}: missing"
    assert not torch.isnan(actual).any(), f"{what}: NaN in result (unwritten element?)"
    torch.testing.assert_close(actual.double(), expected.double(), **TOLERANCE[dtype], msg=lambda m: f"{what}: {m}")


def search_killed_then_resumed(monkeypatch, kill_epoch: int, out_dir, **settings):
    """Runs ``fastnas.search(**settings)`` into ``out_dir``, killed (KeyboardInterrupt) at the start of
    epoch ``kill_epoch`` (0-based), then resumes it with ``resume=True``; returns the resumed result."""
    import fastnas
    from fastnas.search import Searcher

    original = Searcher._train_epoch

    def killed(self, epoch):
        if epoch == kill_epoch:
            raise KeyboardInterrupt("killed")
        return original(self, epoch)

    with monkeypatch.context() as m:
        m.setattr(Searcher, "_train_epoch", killed)
        with pytest.raises(KeyboardInterrupt):
            fastnas.search(**settings, out_dir=str(out_dir))
    return fastnas.search(**settings, out_dir=str(out_dir), resume=True)


class Killed(BaseException):
    """A simulated kill (a BaseException, as KeyboardInterrupt is, so no ``except Exception`` stops it; not
    KeyboardInterrupt itself, which pytest takes as the user stopping the whole session)."""


def search_killed_in_step_then_resumed(monkeypatch, kill_step: int, out_dir, **settings):
    """Runs ``fastnas.search(**settings)`` into ``out_dir``, killed inside search step ``kill_step``
    (1-based, counted over the whole run), then resumes it with ``resume=True``; returns (the resumed
    result, the checkpoint the kill left, the steps the resumed run took)."""
    import fastnas
    from fastnas.search.step import SearchStep

    original = SearchStep.__call__
    calls = {"n": 0, "kill": kill_step}

    def counted(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == calls["kill"]:
            raise Killed(f"killed in step {kill_step}")
        return original(self, *a, **k)

    monkeypatch.setattr(SearchStep, "__call__", counted)
    with pytest.raises(Killed):
        fastnas.search(**settings, out_dir=str(out_dir))
    left = torch.load(os.path.join(out_dir, "checkpoint.pt"), map_location="cpu", weights_only=False)
    calls.update(n=0, kill=None)
    resumed = fastnas.search(**settings, out_dir=str(out_dir), resume=True)
    monkeypatch.setattr(SearchStep, "__call__", original)
    return resumed, left, calls["n"]
