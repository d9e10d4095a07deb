"""CUDA-graph capture of the search step (cuda_graph=True): the settings it refuses, with the reason
(these run everywhere), and on a GPU: replays equal eager steps, and a graphed search runs and resumes."""
import copy

import pytest
import torch

import fastnas
from fastnas.nn import SearchNetwork
from fastnas.search import SearchStep
from fastnas.search.graphs import GraphedStep, check_graph_settings
from helpers import search_killed_then_resumed

TINY = dict(space="nb201", dataset="synthetic", dataset_options={"n": 128, "image_size": 16}, batch_size=16,
            init_channels=8, layers=1, epochs=2, warmup_epochs=0, quiet=True, hessian_iters=1, hessian_batch=8)


@pytest.mark.parametrize("settings, message", [
    (dict(device="cpu"), "cuda_graph=True needs a CUDA device"),
])
def test_needs_cuda(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        fastnas.search(**dict(TINY, **settings), cuda_graph=True, out_dir=str(tmp_path / "r"))


def test_refused_settings_name_the_reason():
    cuda = torch.device("cuda")
    with pytest.raises(ValueError, match="unrolled"):
        check_graph_settings(cuda, unrolled=True, amp=None)
    with pytest.raises(ValueError, match="amp='fp16'"):
        check_graph_settings(cuda, unrolled=False, amp="fp16")
    check_graph_settings(cuda, unrolled=False, amp="bf16")  # accepted


def test_cli_has_the_option():
    from fastnas.cli import build_parser
    args = build_parser().parse_args(["search", "--cuda_graph"])
    assert args.cuda_graph is True


@pytest.mark.gpu
@pytest.mark.parametrize("space, mixing", [("nb201", "softmax"), ("darts", "softmax")])
def test_replayed_steps_equal_eager_steps(space, mixing):
    torch.manual_seed(0)
    net = SearchNetwork(space, C=8, layers=1 if space == "nb201" else 3, partial_channels=2, mixing=mixing).cuda()
    twin = copy.deepcopy(net)
    eager = SearchStep(net, capturable=True)
    graphed = GraphedStep(SearchStep(twin, capturable=True), warmup_steps=2)
    g = torch.Generator(device="cuda").manual_seed(1)
    for i in range(6):  # 2 eager warm-up steps, the capture, 3 replays
        x_w, x_a = (torch.randn(8, 3, 16, 16, device="cuda", generator=g) for _ in range(2))
        y_w, y_a = (torch.randint(0, 10, (8,), device="cuda", generator=g) for _ in range(2))
        a = eager(x_w, y_w, x_a, y_a)
        b = graphed(x_w, y_w, x_a, y_a)
        torch.testing.assert_close(b[0], a[0], rtol=1e-5, atol=1e-6, msg=f"loss of step {i}")
    assert graphed.captures == 1 and graphed.failed is None
    for (name, p), q in zip(net.named_parameters(), twin.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["pc-darts", "drnas", "mae"])
def test_graphed_search_runs_and_resumes(tmp_path, monkeypatch, method):
    kw = dict(TINY, method=method, device="cuda", cuda_graph=True,
              **({"init_channels": 12, "epochs": 2} if method == "drnas" else {}))
    full = fastnas.search(**kw, out_dir=str(tmp_path / "full"))
    assert all(h["cuda_graph"] for h in full.history), [h.get("cuda_graph") for h in full.history]
    resumed = search_killed_then_resumed(monkeypatch, 1, tmp_path / "killed", **kw)
    # GPU kernels (atomics in some backward passes) need not be bit-deterministic: the resumed run must
    # finish every epoch with graphs, not reproduce the arch bit for bit
    assert resumed.epochs == full.epochs and all(h["cuda_graph"] for h in resumed.history)


# -- the wrapper's logic on the CPU, with an emulated graph ---------------------------------------------
class _EmulatedGraph:
    """Stands in for torch.cuda.CUDAGraph on the CPU: capture records the step without running it (the
    state it changed is restored), replay runs it on the static inputs and writes into the outputs."""

    current = None

    def __init__(self):
        self.fn = None
        self.outputs = None

    def replay(self):
        for static, fresh in zip(self.outputs, self.fn()):
            static.copy_(fresh)


class _Capture:
    def __init__(self, graph):
        self.graph = graph

    def __enter__(self):
        step = _EmulatedGraph.current
        self.saved = (copy.deepcopy(step.model.state_dict()), copy.deepcopy(step.w_optimizer.state_dict()),
                      copy.deepcopy(step.a_optimizer.state_dict()))
        return self

    def __exit__(self, *exc):
        step = _EmulatedGraph.current
        step.model.load_state_dict(self.saved[0])
        step.w_optimizer.load_state_dict(self.saved[1])
        step.a_optimizer.load_state_dict(self.saved[2])
        return False


class _NoStream:
    def wait_stream(self, other):
        pass


def _emulate_cuda(monkeypatch, graphed):
    import contextlib

    def graph_ctx(g):
        # the step called inside the capture: remember how to run it again on the static inputs
        statics, update_arch = graphed._pending
        g.fn = lambda: graphed.step(*statics, update_arch=update_arch)
        return _Capture(g)

    monkeypatch.setattr(torch.cuda, "CUDAGraph", _EmulatedGraph)
    monkeypatch.setattr(torch.cuda, "graph", graph_ctx)
    monkeypatch.setattr(torch.cuda, "Stream", _NoStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: _NoStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())


def test_wrapper_warms_up_captures_once_per_epoch_and_replays_the_eager_trajectory(monkeypatch):
    torch.manual_seed(0)
    net = SearchNetwork("nb201", C=8, layers=1, partial_channels=2)
    twin = copy.deepcopy(net)
    eager = SearchStep(net)
    graphed = GraphedStep(SearchStep(twin), warmup_steps=2)
    _EmulatedGraph.current = graphed.step
    original_capture = graphed._capture

    def capture(inputs, update_arch, key):
        graphed._pending = (tuple(None if t is None else t.clone() for t in inputs), update_arch)
        ok = original_capture(inputs, update_arch, key)
        # the emulated graph runs on the wrapper's static inputs, as the real one does
        graphed._graph.fn = lambda: graphed.step(*graphed._static_in, update_arch=update_arch)
        graphed._graph.outputs = graphed._static_out
        return ok

    graphed._capture = capture
    _emulate_cuda(monkeypatch, graphed)
    g = torch.Generator().manual_seed(1)
    for epoch in range(2):
        graphed.new_epoch()
        for i in range(5):  # 2 eager, then the capture + replay, then 2 replays
            x_w, x_a = (torch.randn(8, 3, 16, 16, generator=g) for _ in range(2))
            y_w, y_a = (torch.randint(0, 10, (8,), generator=g) for _ in range(2))
            a = eager(x_w, y_w, x_a, y_a)
            b = graphed(x_w, y_w, x_a, y_a)
            assert graphed.replaying == (i >= 2), (epoch, i)
            torch.testing.assert_close(b[0], a[0], rtol=1e-6, atol=1e-7, msg=f"epoch {epoch} step {i}")
        # a batch of another shape runs eagerly, the graph stays
        b = graphed(x_w[:4], y_w[:4], x_a[:4], y_a[:4])
        eager(x_w[:4], y_w[:4], x_a[:4], y_a[:4])
        assert graphed.replaying
    assert graphed.captures == 2 and graphed.failed is None
    for (name, p), q in zip(net.named_parameters(), twin.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7, msg=name)


def test_a_failed_capture_falls_back_to_eager_with_a_warning(monkeypatch):
    torch.manual_seed(0)
    graphed = GraphedStep(SearchStep(SearchNetwork("nb201", C=8, layers=1, partial_channels=2)), warmup_steps=0)

    def broken_graph(g):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "CUDAGraph", _EmulatedGraph)
    monkeypatch.setattr(torch.cuda, "graph", broken_graph)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    with pytest.warns(UserWarning, match="capture of the search step failed"):
        loss, _ = graphed(x, y, x, y)
    assert torch.isfinite(loss) and graphed.failed.startswith("RuntimeError") and not graphed.replaying
    graphed.new_epoch()
    graphed(x, y, x, y)  # stays eager, no second warning
