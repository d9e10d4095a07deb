"""The CUDA kernels of csrc/cuda/mix_kernels.cu run on the CPU through tests/cuda_emulator.py.

test_kernel_interface.py runs every interface case on them (backend ``cuda-emu``). This file checks
what is specific to the emulation: that the rewrite covers the whole source, the launchers' own
refusals, 16-bit rounding bit for bit, and - so that passing means something - that the emulation
catches the bugs it is meant to catch, on mutants of the real source: a missing __syncthreads(), a
vector path taken at a misaligned address, a broken warp reduction.
"""
import ctypes
import re

import pytest
import torch

import cuda_emulator as emu

CU = emu.CUDA_SRC.read_text()


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    try:
        return emu.build(str(tmp_path_factory.mktemp("cuda_emu")))
    except FileNotFoundError as exc:
        pytest.skip(f"cannot build the emulated CUDA kernels: {exc}")


def _mutant(tmp_path, old: str, new: str):
    assert CU.count(old) >= 1, f"mutation site not found: {old!r}"
    try:
        return emu.EmulatedCuda(emu.build(str(tmp_path), source=CU.replace(old, new, 1)))
    except FileNotFoundError as exc:
        pytest.skip(f"cannot build the emulated CUDA kernels: {exc}")


def _reference_forward(ops, weights, bypass, groups, edge_weight):
    mixed = sum(float(w) * o.double() for w, o in zip(weights, ops))
    cat = torch.cat([mixed, bypass.double()], 1)
    B, C, S = cat.shape
    shuffled = cat.view(B, groups, C // groups, S).transpose(1, 2).reshape(B, C, S)
    return shuffled * float(edge_weight)


def _pc_inputs(S=49, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ops = [torch.randn(2, 6, S, generator=gen).to(dtype) for _ in range(3)]
    bypass = torch.randn(2, 18, S, generator=gen).to(dtype)
    weights = torch.rand(3, generator=gen) + 0.1
    edge = torch.rand(1, generator=gen) + 0.5
    return ops, bypass, weights, edge


def test_rewrite_covers_the_source():
    out = emu.rewrite(CU)
    assert CU.count("<<<") >= 5 and CU.count("__shared__") >= 4 and "reinterpret_cast<" in CU
    for left in ("<<<", ">>>", "__shared__", "reinterpret_cast<"):
        assert left not in out, left
    assert out.count("::emu::launch(") == CU.count("<<<")
    with pytest.raises(RuntimeError, match="kernel launches"):
        emu.rewrite("(k)<<<1, 2>>>(x);")  # a launch the pattern does not understand must not slip through


def test_emulated_forward_matches_reference(lib):
    cuda = emu.EmulatedCuda(lib)
    ops, bypass, weights, edge = _pc_inputs()
    out = torch.full((2, 24, 49), float("nan"))
    cuda.mix_forward(out, ops, weights, [0, 1, 2], bypass, 6, 4, edge, False)
    torch.testing.assert_close(out.double(), _reference_forward(ops, weights, bypass, 4, edge), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_16bit_outputs_are_rounded_once_to_nearest_even(lib, dtype):
    """out = D(A(w) * A(x)): one float32 product rounded once, bit-equal to torch's (RNE) conversion."""
    cuda = emu.EmulatedCuda(lib)
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 8, 64, generator=gen) * 100).to(dtype)
    w = torch.tensor([1.0 / 3.0])
    out = torch.empty_like(x)
    cuda.mix_forward(out, [x], w, [0], None, 8, 1, None, False)
    expected = (w * x.float()).to(dtype)
    assert torch.equal(out.view(torch.int16), expected.view(torch.int16))


def _fwd_args(**kw):
    a = emu._FwdArgs()
    a.dtype, a.n_ops, a.B, a.C, a.S, a.mixed, a.groups = 0, 1, 1, 8, 4, 8, 1
    for k, v in kw.items():
        setattr(a, k, v)
    return a


@pytest.mark.parametrize("bad", [dict(n_ops=17), dict(groups=3), dict(mixed=9), dict(dtype=7), dict(B=-1),
                                 dict(groups=0)],
                         ids=["17_ops", "groups_not_dividing_C", "mixed_gt_C", "unknown_dtype", "negative_B",
                              "groups_0"])
def test_launchers_refuse_bad_geometry(lib, bad):
    """The .cu checks its own arguments (cudaErrorInvalidValue) before touching any pointer."""
    assert lib.fastnas_cuda_mix_forward(ctypes.byref(_fwd_args(**bad)), None) == 1
    b = emu._BwdArgs()
    b.dtype, b.n_ops, b.B, b.C, b.S, b.mixed, b.groups = 0, 1, 1, 8, 4, 8, 1
    for k, v in bad.items():
        setattr(b, k, v)
    assert lib.fastnas_cuda_mix_backward(ctypes.byref(b), None, 0, None) == 1
    assert lib.fastnas_cuda_mix_backward_workspace(ctypes.byref(b)) == 0
    assert b"invalid argument" in lib.fastnas_cuda_error_string(1)


def test_backward_refuses_a_short_workspace(lib):
    ops, bypass, weights, edge = _pc_inputs()
    grad = torch.randn(2, 24, 49)
    a = emu._BwdArgs()
    a.dtype, a.n_ops, a.B, a.C, a.S, a.mixed, a.groups = 0, 3, 2, 24, 49, 6, 4
    a.grad = emu._view(grad)
    for i, o in enumerate(ops):
        a.ops[i], a.grad_ops[i], a.weight_index[i] = emu._view(o), emu._view(torch.empty_like(o)), i
    a.weights, a.bypass, a.edge_weight = weights.data_ptr(), emu._view(bypass), edge.data_ptr()
    dots = torch.zeros(4)
    a.dots = dots.data_ptr()
    need = lib.fastnas_cuda_mix_backward_workspace(ctypes.byref(a))
    assert need >= 4
    short = torch.empty(need - 1)
    assert lib.fastnas_cuda_mix_backward(ctypes.byref(a), short.data_ptr(), need - 1, None) == 1


# ---- mutants: the emulation must catch these bugs ----------------------------------------------

def test_catches_a_missing_syncthreads(tmp_path):
    """Without the barrier after the weights are staged in shared memory, threads read it unwritten:
    on a GPU garbage, here NaN (shared memory is poisoned per block)."""
    prologue = re.search(r"if \(tid < p\.n_ops\) s_w\[tid\] = p\.weights\[p\.widx\[tid\]\];\s*__syncthreads\(\);", CU)
    assert prologue, "fwd_prologue changed: update this mutant"
    cuda = _mutant(tmp_path, prologue[0], "if (tid < p.n_ops) s_w[tid] = p.weights[p.widx[tid]];")
    ops, bypass, weights, edge = _pc_inputs()
    out = torch.zeros(2, 24, 49)
    cuda.mix_forward(out, ops, weights, [0, 1, 2], bypass, 6, 4, edge, False)
    assert torch.isnan(out).any()


def test_catches_a_misaligned_vector_path(tmp_path):
    """A layout choice that ignores alignment takes 128-bit accesses at addresses that are not multiples
    of 16 bytes: the GPU faults with a misaligned address, and so does the emulation."""
    cuda = _mutant(tmp_path, "l.vec = ok;", "l.vec = S % vec == 0;")
    base = torch.randn(2, 8, 65)
    x = base[..., 1:]  # S = 64, starts 4 bytes into the buffer, channel stride 65
    out = torch.empty(2, 8, 64)
    with pytest.raises(RuntimeError, match="misaligned address"):
        cuda.mix_forward(out, [x], torch.ones(1), [0], None, 8, 1, None, False)
    # the real source refuses the vector path there and computes the right thing
    ok = emu.EmulatedCuda(emu.build(str(tmp_path / "real")))
    ok.mix_forward(out, [x], torch.ones(1), [0], None, 8, 1, None, False)
    assert torch.equal(out, x)


def test_catches_a_broken_warp_reduction(tmp_path):
    """Half a warp shuffle tree (lanes 16-31 never summed) loses part of every dot product."""
    cuda = _mutant(tmp_path, "for (int off = 16; off > 0; off >>= 1)", "for (int off = 8; off > 0; off >>= 1)")
    ops, bypass, weights, edge = _pc_inputs(S=1024)
    grad = torch.randn(2, 24, 1024)
    dots = torch.full((4,), float("nan"))
    cuda.mix_backward(grad, ops, weights, [0, 1, 2], bypass, 6, 4, edge, [None] * 3, None, dots)
    inverse = [(c % 6) * 4 + c // 6 for c in range(24)]
    gs = grad.double()[:, inverse]
    expected = torch.stack([(gs[:, :6] * o.double()).sum() for o in ops] + [(gs[:, 6:] * bypass.double()).sum()])
    assert not torch.allclose(dots.double(), expected, rtol=1e-4, atol=1e-3)
