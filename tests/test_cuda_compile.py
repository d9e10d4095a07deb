"""Compile checks of the CUDA sources that need no GPU (and no CUDA build of torch).

* every ``csrc/cuda/*.cu`` goes through ``nvcc -c`` for sm_90 and sm_80, with the flags of setup.py and
  torch's extension flags (``__CUDA_NO_HALF_CONVERSIONS__`` ...); those files include CUDA headers only;
* every ``csrc/cuda/*.cpp`` and ``csrc/binding.cpp`` goes through ``c++ -fsyntax-only
  -DFASTNAS_WITH_CUDA`` against the installed torch's headers: the torch side of the CUDA kernels
  includes no CUDA header, so this works with a CPU-only torch.

All compilers run concurrently (started by one fixture for the selected tests); the wall time is
dominated by parsing ``torch/extension.h`` (pulled in by csrc/mix.h). Skipped when nvcc, resp. a C++
compiler, cannot be found.
"""
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
CU_SOURCES = sorted(CUDA_DIR.glob("*.cu"))
HOST_SOURCES = sorted(CUDA_DIR.glob("*.cpp")) + [p for p in [ROOT / "csrc" / "binding.cpp"] if p.exists()]
ARCHS = ("sm_90", "sm_80")
# Flags of setup.py's nvcc list (minus -lineinfo, irrelevant here).
NVCC_FLAGS = ["-std=c++17", "-O3", "--use_fast_math", "-DFASTNAS_WITH_CUDA", "-Xcompiler", "-fPIC"]
# torch.utils.cpp_extension.COMMON_NVCC_FLAGS, as a fallback when torch does not export it.
TORCH_NVCC_FLAGS = [
    "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__", "--expt-relaxed-constexpr",
]
TIMEOUT_S = 600


def _rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


def _find_nvcc():
    found = shutil.which("nvcc")
    if found:
        return found
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.access(os.path.join(home, "bin", "nvcc"), os.X_OK):
            return os.path.join(home, "bin", "nvcc")
    return None


def _find_cxx():
    cxx = os.environ.get("CXX")
    if cxx and shutil.which(cxx):
        return shutil.which(cxx)
    for name in ("c++", "g++", "clang++"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _torch_nvcc_flags():
    try:
        from torch.utils import cpp_extension

        return list(getattr(cpp_extension, "COMMON_NVCC_FLAGS", TORCH_NVCC_FLAGS))
    except Exception:  # pragma: no cover - torch import problems are reported by other tests
        return list(TORCH_NVCC_FLAGS)


def _host_includes():
    from torch.utils import cpp_extension

    dirs = list(cpp_extension.include_paths()) + [sysconfig.get_paths()["include"]]
    # -isystem: warnings from torch's own headers are not ours.
    return [flag for d in dirs for flag in ("-isystem", d)]


def _nvcc_cmd(nvcc, src: Path, outdir: Path):
    gencode = []
    for arch in ARCHS:
        gencode += ["-gencode", f"arch=compute_{arch[3:]},code={arch}"]
    return ([nvcc] + NVCC_FLAGS + _torch_nvcc_flags() + gencode +
            ["--threads", "0", "-Xptxas", "-v", "-c", str(src), "-o", str(outdir / (src.stem + ".o"))])


def _host_cmd(cxx, src: Path):
    return ([cxx, "-std=c++17", "-fsyntax-only", "-Wall", "-DFASTNAS_WITH_CUDA", "-DTORCH_EXTENSION_NAME=_C",
             '-DFASTNAS_TORCH_VERSION="compile-check"'] + _host_includes() + [str(src)])


# (id, kind, source); ids are explicit and stable: "nvcc-<file>" / "cxx-<file>".
NVCC_CASES = [pytest.param(src, id=f"nvcc-{src.name}") for src in CU_SOURCES]
HOST_CASES = [pytest.param(src, id=f"cxx-{_rel(src).replace('/', '-')}") for src in HOST_SOURCES]


class _Job:
    def __init__(self, cmd):
        self.cmd = cmd
        self.start = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._result = None

    def result(self):
        if self._result is None:
            try:
                out, _ = self.proc.communicate(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, _ = self.proc.communicate()
                out += f"\n[killed after {TIMEOUT_S} s]"
            self._result = (self.proc.returncode, out, time.monotonic() - self.start)
        return self._result


@pytest.fixture(scope="module")
def jobs(request, tmp_path_factory):
    """Starts every selected compilation at once; maps source path -> _Job (None: tool missing)."""
    wanted = set()
    for item in request.session.items:
        if item.module is request.module and hasattr(item, "callspec"):
            wanted.update(str(v) for v in item.callspec.params.values())
    outdir = tmp_path_factory.mktemp("cuda_objects")
    nvcc, cxx = _find_nvcc(), _find_cxx()
    started = {}
    for src in CU_SOURCES:
        if str(src) in wanted and nvcc:
            started[str(src)] = _Job(_nvcc_cmd(nvcc, src, outdir))
    for src in HOST_SOURCES:
        if str(src) in wanted and cxx:
            started[str(src)] = _Job(_host_cmd(cxx, src))
    yield started
    for job in started.values():  # a test that failed early must not leave a compiler running
        if job.proc.poll() is None:
            job.proc.kill()
            job.proc.communicate()


def _check(job, what):
    rc, out, seconds = job.result()
    cmd = " ".join(job.cmd)
    assert rc == 0, f"{what} failed (exit {rc}, {seconds:.1f} s)\n$ {cmd}\n{out}"
    return out


def test_sources_are_found():
    assert CU_SOURCES, f"no .cu file under {_rel(CUDA_DIR)}"
    assert (CUDA_DIR / "mix_cuda.cpp").exists()


@pytest.mark.parametrize("src", NVCC_CASES)
def test_nvcc_compiles(src, jobs):
    if _find_nvcc() is None:
        pytest.skip("nvcc not found on PATH (nor in $CUDA_HOME/bin): cannot compile the CUDA kernels")
    out = _check(jobs[str(src)], f"nvcc on {_rel(src)} ({', '.join(ARCHS)})")
    # ptxas -v: local memory in a kernel (spills, or kernel parameters copied to the stack) costs a
    # lot of bandwidth in these memory-bound kernels; report it without failing (toolkit dependent).
    frames = [int(n) for n in re.findall(r"(\d+) bytes stack frame", out)]
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill stores", out)]
    if any(frames) or any(spills):
        warnings.warn(f"{_rel(src)}: ptxas reports local memory use (stack frames {max(frames)} bytes, "
                      f"spill stores {max(spills)} bytes); check `nvcc -Xptxas -v`")


@pytest.mark.parametrize("src", HOST_CASES)
def test_host_compiler_accepts(src, jobs):
    if _find_cxx() is None:
        pytest.skip("no C++ compiler (c++, g++, clang++ or $CXX) on PATH")
    pytest.importorskip("torch")
    _check(jobs[str(src)], f"c++ -fsyntax-only -DFASTNAS_WITH_CUDA on {_rel(src)}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
