"""Build fastnas and its compiled extension ``fastnas._C``.

The extension is compiled against the torch that is installed *now*, so install torch first and then
build without pip's build isolation (an isolated build would pull a second, newer torch into a
temporary environment and the module would fail to import under yours)::

    pip install torch
    pip install --no-build-isolation .

Sources are found by globbing ``csrc/`` (the same globs as ``CMakeLists.txt``), so no second list of
sources can drift. CUDA kernels are built when torch is a CUDA build and ``nvcc`` is found, or when
``FASTNAS_FORCE_CUDA=1``; ``FASTNAS_SKIP_CUDA_BUILD=1`` skips them. ``TORCH_CUDA_ARCH_LIST`` is
honoured by torch's extension machinery.
"""
import glob
import os
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - build-time message
    sys.exit(
        "fastnas: torch must be installed before building, and the build must see it:\n"
        "    pip install torch && pip install --no-build-isolation .\n"
    )

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _sources(pattern: str) -> list:
    # Relative paths: setuptools refuses absolute source paths in sdists/wheels.
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _want_cuda() -> tuple:
    if _flag("FASTNAS_SKIP_CUDA_BUILD"):
        return False, "FASTNAS_SKIP_CUDA_BUILD is set"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is not a CUDA build"
    if cpp_extension.CUDA_HOME is None:
        return False, "nvcc / CUDA_HOME not found"
    if _flag("FASTNAS_FORCE_CUDA") or torch.cuda.is_available():
        return True, ""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return True, ""  # cross-compiling for named architectures without a visible GPU
    return False, "no GPU visible (set FASTNAS_FORCE_CUDA=1 or TORCH_CUDA_ARCH_LIST to build anyway)"


def _extension():
    with_cuda, why_not = _want_cuda()
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    cxx = ["-O3", "-std=c++17", "-fopenmp", "-DFASTNAS_TORCH_VERSION=\"" + torch.__version__ + "\""]
    link = ["-fopenmp"]
    if sys.platform == "darwin":  # Apple clang has no -fopenmp without libomp
        cxx.remove("-fopenmp")
        link = []
    if with_cuda:
        sources += _sources("csrc/cuda/*.cpp") + _sources("csrc/cuda/*.cu")
        cxx.append("-DFASTNAS_WITH_CUDA")
        nvcc = ["-O3", "-std=c++17", "-lineinfo", "--use_fast_math", "-DFASTNAS_WITH_CUDA"]
        print("fastnas: building the CPU and CUDA kernels", file=sys.stderr)
        return cpp_extension.CUDAExtension(
            "fastnas._C", sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=link,
        )
    print(f"fastnas: building the CPU kernels only; CUDA skipped ({why_not})", file=sys.stderr)
    return cpp_extension.CppExtension(
        "fastnas._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link
    )


setup(
    # kernels/ (the Triton kernels) installs as fastnas.kernels: a top-level `kernels` would squat a generic name
    packages=find_packages(include=["fastnas", "fastnas.*"]) + ["fastnas.kernels"],
    package_dir={"fastnas.kernels": "kernels"},
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
