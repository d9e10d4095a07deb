"""Compiles every Triton kernel of fastnas for a CUDA target, on a machine without a GPU.

Run as a script (``python tests/triton_aot.py --arch 90``) in a process where ``TRITON_INTERPRET`` is
not set: the test ``tests/test_triton_compile.py`` starts it. The Triton interpreter, which runs the
kernels in the CPU tests, accepts code that the real compiler rejects (dtype mismatches in ``tl.where``
or stores, tuple arguments, constexpr branches that do not type-check, register-hungry tiles); this
script sends the launchers' real calls through the real compiler (Triton IR -> PTX -> cubin with the
ptxas that ships with triton), so such code cannot rot unseen between GPU sessions.

How, without a GPU: the active Triton driver is replaced by one that reports the requested target
(``GPUTarget("cuda", arch, 32)``) and device 0, and each kernel's ``run`` is wrapped so that the launch
becomes a warm-up (compile, no launch). The launchers are then called exactly as the library calls
them, with CPU tensors of the right dtypes and strides. Nothing is launched, nothing is read.

Output: one JSON line per compiled kernel variant (kernel, case, constexprs, cubin bytes, registers,
local memory and spill bytes from the bundled ``cuobjdump --dump-resource-usage``), then a summary line.
Exit status: 0 when every case compiled, 1 when one failed (its error is printed), 77 when this
triton's internals are not the ones this script drives (too old / too new): the test skips then.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import traceback

EXIT_UNSUPPORTED = 77


def _install_fake_driver(arch: int):
    """Makes triton believe a CUDA device of compute capability ``arch`` is current."""
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver

    class _CompileOnlyDriver:
        def __init__(self, target):
            self.target = target

        def get_current_target(self):
            return self.target

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def is_active(self):
            return True

    driver.set_active(_CompileOnlyDriver(GPUTarget("cuda", arch, 32)))


def _compile_only(kernel, sink: list):
    """Wraps ``kernel.run`` (what ``kernel[grid](...)`` calls) so that a launch only compiles."""
    from triton.runtime.jit import JITFunction

    def run(*args, grid, warmup, **kwargs):
        compiled = JITFunction.run(kernel, *args, grid=grid, warmup=True, **kwargs)
        sink.append(compiled)
        return compiled

    kernel.run = run


_RESOURCE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


_SPILLS = re.compile(r"(\d+) bytes spill stores")


def _nvidia_tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def _resources(compiled, arch: int, tmpdir: str) -> dict:
    """Registers / stack frame / local bytes of a compiled kernel (the cuobjdump that ships with triton)
    and, when it has a stack frame, its spill stores (ptxas -v on its PTX: a stack frame alone can be
    harmless, e.g. a few bytes for call parameters)."""
    tool = _nvidia_tool("cuobjdump")
    if not os.access(tool, os.X_OK):
        return {}
    path = os.path.join(tmpdir, "k.cubin")
    with open(path, "wb") as f:
        f.write(compiled.asm["cubin"])
    out = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True).stdout
    m = _RESOURCE.search(out)
    if not m:
        return {}
    res = {"registers": int(m[1]), "stack_bytes": int(m[2]), "local_bytes": int(m[4])}
    ptxas = _nvidia_tool("ptxas")
    if res["stack_bytes"] and "ptx" in compiled.asm and os.access(ptxas, os.X_OK):
        ptx = os.path.join(tmpdir, "k.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        suffix = "a" if arch >= 90 else ""  # triton compiles sm_90 kernels for sm_90a
        log = subprocess.run([ptxas, f"-arch=sm_{arch}{suffix}", "-v", ptx, "-o", os.devnull],
                             capture_output=True, text=True)
        spills = [int(n) for n in _SPILLS.findall(log.stdout + log.stderr)]
        if spills:
            res["spill_store_bytes"] = max(spills)
    return res


def _mix_cases():
    """(id, kwargs) for the shuffle-mix launchers: every constexpr flag, op counts, dtypes, layouts."""
    import torch

    cases = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        d = str(dtype).replace("torch.", "")
        for n_ops, bypass, ew, acc, dots, gops in (
            (0, True, False, False, True, ""),        # only `none` ops: bypass only
            (1, False, False, False, False, "1"),     # K = 1 (DARTS), no dots
            (3, True, True, True, True, "101"),       # some op gradients not needed
            (7, True, True, False, True, "1111111"),  # PC-DARTS edge: 7 ops + bypass + edge weight
            (8, False, False, True, True, "11111111"),
        ):
            for layout in ("contiguous", "channels_last"):
                cases.append((f"{d}-ops{n_ops}-bp{int(bypass)}-ew{int(ew)}-acc{int(acc)}-dots{int(dots)}"
                              f"-g{gops or 'none'}-{layout}",
                              dict(dtype=dtype, n_ops=n_ops, bypass=bypass, ew=ew, acc=acc, dots=dots,
                                   gops=gops, channels_last=layout == "channels_last")))
    return cases


def _run_mix_case(shuffle_mix, dtype, n_ops, bypass, ew, acc, dots, gops, channels_last):
    import torch

    B, C, H, W, groups = 2, 16, 7, 7, 4
    Cm = C // 2 if bypass else C

    def t(channels):
        x = torch.empty(B, channels, H, W, dtype=dtype)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        return x.flatten(2)

    out = t(C)
    ops = [t(Cm) for _ in range(n_ops)]
    weights = torch.empty(max(n_ops, 1), dtype=torch.float32)
    index = list(range(n_ops))
    bp = t(C - Cm) if bypass else None
    edge = torch.empty(1, dtype=torch.float32) if ew else None
    shuffle_mix.mix_forward(out, ops, weights, index, bp, Cm, groups, edge, acc)
    grad_ops = [t(Cm) if gops[i] == "1" else None for i in range(n_ops)]
    shuffle_mix.mix_backward(out, ops, weights, index, bp, Cm, groups, edge, grad_ops,
                             t(C - Cm) if bypass else None,
                             torch.empty(n_ops + 1, dtype=torch.float32) if dots else None)


def _pack_cases():
    import torch

    cases = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        d = str(dtype).replace("torch.", "")
        for samples, mark in ((1, True), (16, True), (24, True), (16, False), (63, False)):
            cases.append((f"{d}-S{samples}-{'mark' if mark else 'codes'}",
                          dict(dtype=dtype, samples=samples, mark=mark)))
    return cases


def _run_pack_case(swap_pack, dtype, samples, mark):
    import torch

    acts = torch.empty(samples, 4099, dtype=dtype)
    if mark:
        seen = torch.empty(1 << samples, dtype=torch.uint8)
        swap_pack._launch(acts, seen, seen, mark=True)
    else:
        codes = torch.empty(acts.shape[1], dtype=torch.int64)
        swap_pack._launch(acts, codes, codes, mark=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100, 80: A100)")
    parser.add_argument("-k", default="", help="only cases whose id contains this string")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("triton_aot: TRITON_INTERPRET=1 is set; this check needs the real compiler", file=sys.stderr)
        return 2
    try:
        import triton
        from triton.runtime.jit import JITFunction

        _install_fake_driver(args.arch)
    except (ImportError, AttributeError, TypeError) as exc:
        print(f"triton_aot: unsupported triton for this check: {exc!r}", file=sys.stderr)
        return EXIT_UNSUPPORTED
    import tempfile

    from fastnas.kernels import shuffle_mix, swap_pack  # not guarded: a broken install must fail

    compiled: list = []
    for kernel in (shuffle_mix._shuffle_mix_fwd_kernel, shuffle_mix._shuffle_mix_bwd_kernel,
                   swap_pack._pack_signs_kernel):
        if not isinstance(kernel, JITFunction):
            print(f"triton_aot: {kernel!r} is not a JITFunction (TRITON_INTERPRET leaked?)", file=sys.stderr)
            return 2
        _compile_only(kernel, compiled)

    jobs = [("shuffle_mix", cid, kw, lambda kw=kw: _run_mix_case(shuffle_mix, **kw)) for cid, kw in _mix_cases()]
    jobs += [("swap_pack", cid, kw, lambda kw=kw: _run_pack_case(swap_pack, **kw)) for cid, kw in _pack_cases()]
    failures = 0
    n_kernels = 0
    with tempfile.TemporaryDirectory() as tmp:
        for module, cid, kw, call in jobs:
            if args.k and args.k not in f"{module}-{cid}":
                continue
            before = len(compiled)
            try:
                call()
            except Exception:  # noqa: BLE001 - report every failing case, then fail
                failures += 1
                print(json.dumps({"module": module, "case": cid, "ok": False,
                                  "error": traceback.format_exc(limit=3)[-4000:]}), flush=True)
                continue
            for ck in compiled[before:]:
                n_kernels += 1
                cubin = ck.asm.get("cubin", b"")
                row = {"module": module, "case": cid, "ok": bool(cubin), "kernel": ck.metadata.name,
                       "arch": args.arch, "cubin_bytes": len(cubin), "num_warps": ck.metadata.num_warps}
                row.update(_resources(ck, args.arch, tmp))
                failures += not cubin
                print(json.dumps(row), flush=True)
    print(json.dumps({"summary": True, "arch": args.arch, "triton": triton.__version__,
                      "kernels_compiled": n_kernels, "failures": failures}), flush=True)
    return 1 if failures or n_kernels == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
