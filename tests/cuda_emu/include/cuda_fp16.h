// Shim of <cuda_fp16.h> for the CPU emulation of the CUDA kernels (tests/cuda_emu/emu.h).
#pragma once
#include "../emu.h"
