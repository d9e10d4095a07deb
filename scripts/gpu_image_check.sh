#!/usr/bin/env bash
# Builds and tests fastnas, on this machine (no GPU needed), against the GPU image's versions:
# torch 2.11.0 (the PyPI build for CUDA 13.0) and triton 3.6.0, with the full CUDA extension.
#
#   bash scripts/gpu_image_check.sh            # ~3 min once the wheels are cached; needs nvcc
#
# Why: the GPU sessions are rare and short; whatever breaks there should break here first. The main
# venv has newer torch/triton and a CPU-only torch, which cannot compile the torch side of the CUDA
# kernels (no CUDA headers). This venv has the GPU image's torch, whose headers and libraries let
#   (a) setup.py build the whole extension with FASTNAS_FORCE_CUDA=1 for sm_80 and sm_90 (nvcc + the
#       host compiler on csrc/cuda/*.cpp, csrc/binding.cpp with -DFASTNAS_WITH_CUDA, and the link);
#   (b) the built module import and report its CUDA kernels (`python -m fastnas.info`);
#   (c) every Triton kernel compile for sm_90 and sm_80 with triton 3.6 (tests/test_triton_compile.py),
#       the .cu compile checks, and the kernel tests run on the CPU under torch 2.11 (the Triton ones
#       through the 3.6 interpreter).
#
# Knobs: FASTNAS_GPU_IMAGE_VENV (default .venv-gpu-image), FASTNAS_GPU_IMAGE_TORCH (default
# torch==2.11.0), FASTNAS_GPU_IMAGE_TRITON (default triton==3.6.0).
# Exit status: 0 passed, or skipped with a message when nvcc or the torch wheel cannot be had (no
# registry); 1 when the build or a test failed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
VENV="${FASTNAS_GPU_IMAGE_VENV:-.venv-gpu-image}"
TORCH_SPEC="${FASTNAS_GPU_IMAGE_TORCH:-torch==2.11.0}"
TRITON_SPEC="${FASTNAS_GPU_IMAGE_TRITON:-triton==3.6.0}"

NVCC="$(command -v nvcc || true)"
if [ -z "$NVCC" ]; then
  echo "gpu_image_check: SKIPPED: nvcc not found, the CUDA extension cannot be built here"
  exit 0
fi
# CUDA_HOME: the toolkit folder that has both bin/nvcc and the CUDA runtime library. Here
# /usr/local/bin/nvcc is a wrapper script around /usr/local/cuda-13.0/bin/nvcc, from which torch guesses
# /usr/local, where libcudart is not; nvcc's dry run names the folder it really runs from.
if [ -z "${CUDA_HOME:-}" ]; then
  probe="$(mktemp -d)"
  : > "$probe/e.cu"
  top="$("$NVCC" --dryrun -c "$probe/e.cu" -o "$probe/e.o" 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)"
  rm -rf "$probe"
  if [ -n "$top" ]; then CUDA_HOME="$(cd "$top" && pwd)"; else CUDA_HOME="$(dirname "$(dirname "$NVCC")")"; fi
fi
export CUDA_HOME

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$(cd "$VENV" && pwd)/bin/python"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('${TORCH_SPEC#torch==}') else 1)" 2>/dev/null; then
  "$PY" -m pip install -q --upgrade pip setuptools wheel
  if ! "$PY" -m pip install -q "$TORCH_SPEC" "$TRITON_SPEC"; then
    echo "gpu_image_check: SKIPPED: could not install $TORCH_SPEC $TRITON_SPEC (no package registry?)"
    exit 0
  fi
fi
"$PY" -m pip install -q ninja numpy pytest scipy tqdm matplotlib "$TRITON_SPEC"
"$PY" -c "import torch, triton; print('gpu_image_check: torch', torch.__version__, '(CUDA', torch.version.cuda, ') triton', triton.__version__)"

# (a) Build from a copy of the tracked sources: the checkout's build/ belongs to the main venv's torch.
SRC="$(mktemp -d)"
trap 'rm -rf "$SRC"' EXIT
# tracked and untracked-but-not-ignored files, as they are in the working tree (deleted ones skipped)
git -C "$ROOT" ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$ROOT/$f" ] && printf '%s\0' "$f"
done | (cd "$ROOT" && xargs -0 -r cp --parents -t "$SRC")
echo "gpu_image_check: building with FASTNAS_FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST='8.0;9.0' CUDA_HOME=$CUDA_HOME"
(cd "$SRC" && FASTNAS_FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="8.0;9.0" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
  "$PY" -m pip install -q --no-build-isolation --no-deps . )

# (b) The installed module has the CUDA kernels, built against this torch.
(cd "$SRC" && "$PY" -P -m fastnas.info)
"$PY" -P -c "
import fastnas._C as C, torch
assert C.cuda_built(), 'fastnas._C was built without its CUDA kernels'
assert C.torch_version == torch.__version__, (C.torch_version, torch.__version__)
print('gpu_image_check: fastnas._C has CUDA kernels, built against torch', C.torch_version)"

# (c) Compile checks and the kernel tests under the GPU image's torch and triton (installed package:
# the tests run from the copy, whose fastnas/ has no extension, so pytest's script keeps it off sys.path).
cd "$SRC"
"$(dirname "$PY")/pytest" -q -p no:cacheprovider tests/test_triton_compile.py tests/test_cuda_compile.py \
  tests/test_build.py tests/test_ops.py tests/test_kernel_interface.py tests/test_dispatch.py \
  tests/test_bad_input.py tests/test_proxies_activation.py
echo "gpu_image_check: passed"
