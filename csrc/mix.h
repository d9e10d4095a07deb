// Shared declarations of the fused shuffle-mix kernels (see docs/kernel_interface.md).
// The CPU implementation lives in csrc/cpu/, the CUDA one in csrc/cuda/ (compiled only when the
// extension is built with CUDA: FASTNAS_WITH_CUDA). binding.cpp dispatches on the device.
#pragma once

#include <ATen/core/Tensor.h>  // not torch/extension.h: keeps the compile-only CUDA check fast (~3 s, not ~27 s)

#include <optional>
#include <vector>

namespace fastnas {

// Most op outputs one CUDA launch takes (they travel as kernel arguments by value).
constexpr int64_t kMaxOpsCuda = 16;

using OptTensor = std::optional<at::Tensor>;

// Tensors are (B, channels, S) with arbitrary strides; see docs/kernel_interface.md.
void mix_forward_cpu(const at::Tensor& out, const std::vector<at::Tensor>& ops,
                     const at::Tensor& weights, const std::vector<int64_t>& weight_index,
                     const OptTensor& bypass, int64_t mixed_channels, int64_t groups,
                     const OptTensor& edge_weight, bool accumulate);

void mix_backward_cpu(const at::Tensor& grad, const std::vector<at::Tensor>& ops,
                      const at::Tensor& weights, const std::vector<int64_t>& weight_index,
                      const OptTensor& bypass, int64_t mixed_channels, int64_t groups,
                      const OptTensor& edge_weight, const std::vector<OptTensor>& grad_ops,
                      const OptTensor& grad_bypass, const OptTensor& dots);

#ifdef FASTNAS_WITH_CUDA
void mix_forward_cuda(const at::Tensor& out, const std::vector<at::Tensor>& ops,
                      const at::Tensor& weights, const std::vector<int64_t>& weight_index,
                      const OptTensor& bypass, int64_t mixed_channels, int64_t groups,
                      const OptTensor& edge_weight, bool accumulate);

void mix_backward_cuda(const at::Tensor& grad, const std::vector<at::Tensor>& ops,
                       const at::Tensor& weights, const std::vector<int64_t>& weight_index,
                       const OptTensor& bypass, int64_t mixed_channels, int64_t groups,
                       const OptTensor& edge_weight, const std::vector<OptTensor>& grad_ops,
                       const OptTensor& grad_bypass, const OptTensor& dots);
#endif

}  // namespace fastnas
