// Sign-agreement Gram matrix over bit-packed codes: the counting core of NWOT (Mellor et al. 2021).
// The CPU implementation lives in csrc/cpu/sign_gram_cpu.cpp; binding.cpp validates the arguments.
#pragma once

#include <ATen/core/Tensor.h>

namespace fastnas {

// x: (S, U) float32 or float64 on the CPU, unit stride along U (any row stride).
// Returns int64 (S, S): entry (i, j) = number of units u where (x[i, u] > 0) == (x[j, u] > 0).
// NaN counts as "not > 0". Each row is packed to ceil(U / 64) words, then every pair costs
// ceil(U / 64) XOR + popcount instructions.
at::Tensor sign_agreement_cpu(const at::Tensor& x);

}  // namespace fastnas
