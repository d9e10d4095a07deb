// Shim of <cuda_runtime.h> for the CPU emulation of the CUDA kernels (tests/cuda_emu/emu.h).
#pragma once
#include "../emu.h"
