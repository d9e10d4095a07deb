"""CUDA-graph capture of the search step (``cuda_graph=True``).

One search step launches a few thousand small kernels (every edge's ops, the fused mix, their
backward, two optimizer updates); at the DARTS supernet's sizes many of them run for microseconds, so
the CPU launching them can be the bottleneck. A CUDA graph records the whole step once and replays it
with one launch.

What makes the step capturable: the step never reads a value back to the host (metrics stay on the
device, ``fastnas.search.step``); the architecture Adam keeps its step count on the device
(``capturable=True``); the inputs are copied into static buffers before each replay; the
random draws of the step (DrNAS's Dirichlet samples, MAE's masks) use the CUDA generator, which graphs
support. What a graph cannot follow is baked in at capture: the learning rates, B-DARTS's confidence and
DARTS-'s auxiliary-skip weight are Python floats that change once per epoch, so the step is captured
again at the start of every epoch (:meth:`GraphedStep.new_epoch`), after ``warmup_steps`` eager steps
(on a side stream, as torch's capture recipe asks: lazy initialisations such as cuBLAS handles and the
optimizers' state happen there, not in the graph). Those eager steps are real steps of the search.

Not capturable, refused up front: the unrolled (second-order) step (it swaps weights in and out
between several autograd passes) and fp16 autocast (the gradient scaler decides on the host whether
to skip a step). Capture failing for another reason (an op that synchronises) warns once and the
search continues eagerly.

Status: written and tested on CPU-only machines for its checks; the capture itself has not yet run on
a GPU (tests/test_cuda_graph.py's GPU tests and ``benchmarks/gpu_check.sh`` will).
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import torch

from fastnas.search.step import SearchStep

__all__ = ["GraphedStep", "check_graph_settings"]


def check_graph_settings(device: torch.device, unrolled: bool, amp: Optional[str]) -> None:
    """ValueError naming why the step cannot be captured with these settings."""
    if device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a CUDA device, the search runs on {device}")
    if unrolled:
        raise ValueError("cuda_graph=True does not support the unrolled (second-order) step: it swaps weights "
                         "between several autograd passes; use a first-order method")
    if amp in ("fp16", "float16"):
        raise ValueError("cuda_graph=True does not support amp='fp16': the gradient scaler decides on the host "
                         "whether to skip a step; use amp='bf16'")


class GraphedStep:
    """Drop-in for :class:`SearchStep`'s call: ``step(x_w, y_w, x_a, y_a, update_arch) -> (loss, correct)``.

    Per epoch (:meth:`new_epoch`): ``warmup_steps`` eager steps, then the step is captured on the
    current batch's shapes and replayed for every later batch (the batch is copied into the graph's
    static inputs). Returns the graph's static outputs: read (or accumulate) them before the next call.
    A batch of another shape, or a change of ``update_arch``, runs eagerly.
    """

    def __init__(self, step: SearchStep, warmup_steps: int = 3):
        self.step = step
        self.warmup_steps = int(warmup_steps)
        self.failed: Optional[str] = None
        self.captures = 0
        self.new_epoch()

    def new_epoch(self) -> None:
        """Drops the graph: the next calls warm up and capture again (learning rates and the per-epoch
        schedules are baked into a capture)."""
        self._graph: Optional[torch.cuda.CUDAGraph] = None
        self._static_in: Tuple = ()
        self._static_out: Tuple = ()
        self._key = None
        self._warm = 0

    @property
    def replaying(self) -> bool:
        """True when this epoch's step was captured (later calls of the same shapes replay it)."""
        return self._graph is not None and self.failed is None

    @staticmethod
    def _signature(tensors, update_arch):
        return tuple(None if t is None else (tuple(t.shape), t.dtype, t.stride()) for t in tensors) + (update_arch,)

    def __call__(self, x_w, y_w, x_a=None, y_a=None, update_arch: bool = True):
        inputs = (x_w, y_w, x_a, y_a) if update_arch else (x_w, y_w, None, None)
        key = self._signature(inputs, update_arch)
        if self.failed is not None or (self._graph is not None and key != self._key):
            return self.step(*inputs, update_arch=update_arch)
        if self._graph is None:
            if self._warm < self.warmup_steps:
                self._warm += 1
                return self._eager_on_side_stream(inputs, update_arch)
            if not self._capture(inputs, update_arch, key):
                return self.step(*inputs, update_arch=update_arch)
        for static, t in zip(self._static_in, inputs):
            if static is not None:
                static.copy_(t, non_blocking=True)
        self._graph.replay()
        return self._static_out

    def _eager_on_side_stream(self, inputs, update_arch):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = self.step(*inputs, update_arch=update_arch)
        torch.cuda.current_stream().wait_stream(side)
        return out

    def _capture(self, inputs, update_arch, key) -> bool:
        static_in = tuple(None if t is None else t.clone() for t in inputs)
        graph = torch.cuda.CUDAGraph()
        self.step.w_optimizer.zero_grad(set_to_none=True)
        self.step.a_optimizer.zero_grad(set_to_none=True)
        try:
            with torch.cuda.graph(graph):
                out = self.step(*static_in, update_arch=update_arch)
        except Exception as e:  # an op that synchronises or allocates on the host: run eagerly instead
            self.failed = f"{type(e).__name__}: {e}"
            warnings.warn(f"fastnas: CUDA-graph capture of the search step failed ({self.failed}); "
                          "continuing without graphs")
            return False
        self._graph, self._static_in, self._static_out, self._key = graph, static_in, out, key
        self.captures += 1
        return True
