// Torch side of the CUDA shuffle-mix kernels (semantics: docs/kernel_interface.md).
//
// Compiled by the host C++ compiler in CUDA builds (FASTNAS_WITH_CUDA). It includes NO CUDA and no
// c10/cuda header, so it compiles against any torch (CPU builds included): the device is set with the
// generic c10::DeviceGuard, the current stream comes from the CUDA DeviceGuardImpl registered by
// libtorch_cuda at run time, and the kernels are reached through the plain C launchers of
// mix_kernels.h (implemented in mix_kernels.cu with CUDA headers only).
//
// binding.cpp (and the Python layer before it) validate shapes, dtypes and devices; the checks here
// only cover what this file relies on for memory safety, cheaply.
#ifdef FASTNAS_WITH_CUDA

#include "../mix.h"
#include "mix_kernels.h"

#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/Stream.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <cstdint>
#include <limits>
#include <string>

namespace fastnas {
namespace {

static_assert(kMaxOpsCuda == FASTNAS_CUDA_MAX_OPS, "mix.h and mix_kernels.h disagree on the op limit");

at::ScalarType acc_type(at::ScalarType d) { return d == at::kDouble ? at::kDouble : at::kFloat; }

int dtype_code(at::ScalarType t, const char* fn) {
  switch (t) {
    case at::kFloat: return FASTNAS_DTYPE_FLOAT32;
    case at::kDouble: return FASTNAS_DTYPE_FLOAT64;
    case at::kHalf: return FASTNAS_DTYPE_FLOAT16;
    case at::kBFloat16: return FASTNAS_DTYPE_BFLOAT16;
    default: break;
  }
  TORCH_CHECK(false, fn, ": the CUDA kernels support float32, float64, float16 and bfloat16, got ", t);
  return -1;
}

fastnas_view view_of(const at::Tensor& t) {
  fastnas_view v;
  v.data = t.data_ptr();
  v.sb = t.stride(0);
  v.sc = t.stride(1);
  v.ss = t.stride(2);
  return v;
}

fastnas_view no_view() {
  fastnas_view v;
  v.data = nullptr;
  v.sb = v.sc = v.ss = 0;
  return v;
}

void check_device(const at::Tensor& t, const at::Device& dev, const char* fn, const std::string& name) {
  TORCH_CHECK(t.device() == dev, fn, ": ", name, " is on ", t.device(), " but the output is on ", dev,
              " (all tensors of one call must be on the same CUDA device)");
}

// weights / edge_weight / dots: dtype A, contiguous, on the device.
void check_acc(const at::Tensor& t, at::ScalarType acc, const at::Device& dev, const char* fn,
               const std::string& name) {
  check_device(t, dev, fn, name);
  TORCH_CHECK(t.scalar_type() == acc, fn, ": ", name, " must have dtype ", acc, ", got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), fn, ": ", name, " must be contiguous");
}

// Checks shared by forward and backward; `ref` is out (forward) or grad (backward).
void check_common(const char* fn, const at::Tensor& ref, const std::vector<at::Tensor>& ops,
                  const at::Tensor& weights, const std::vector<int64_t>& weight_index, const OptTensor& bypass,
                  int64_t mixed_channels, const OptTensor& edge_weight) {
  TORCH_CHECK(ref.is_cuda(), fn, ": the CUDA kernels need CUDA tensors, got ", ref.device());
  TORCH_CHECK(ref.dim() == 3, fn, ": expected (B, C, S) tensors, got shape ", ref.sizes());
  TORCH_CHECK(static_cast<int64_t>(ops.size()) <= kMaxOpsCuda, fn, ": the CUDA kernels take at most ",
              kMaxOpsCuda, " ops per call, got ", ops.size(),
              " (split them over several calls with accumulate=True)");
  TORCH_CHECK(weight_index.size() == ops.size(), fn, ": len(weight_index) = ", weight_index.size(),
              " must equal len(ops) = ", ops.size());
  TORCH_CHECK(ref.size(1) <= std::numeric_limits<int32_t>::max(), fn,
              ": the CUDA kernels take at most 2^31 - 1 channels, got ", ref.size(1));
  const at::Device dev = ref.device();
  const at::ScalarType acc = acc_type(ref.scalar_type());
  for (size_t i = 0; i < ops.size(); ++i) check_device(ops[i], dev, fn, "ops[" + std::to_string(i) + "]");
  check_acc(weights, acc, dev, fn, "weights");
  for (size_t i = 0; i < weight_index.size(); ++i) {
    TORCH_CHECK(weight_index[i] >= 0 && weight_index[i] < weights.numel(), fn, ": weight_index[", i, "] = ",
                weight_index[i], " is out of range for ", weights.numel(), " weights");
  }
  if (bypass.has_value()) {
    check_device(*bypass, dev, fn, "bypass");
  } else {
    TORCH_CHECK(ref.size(1) == mixed_channels, fn, ": bypass is None, so mixed_channels must equal C = ",
                ref.size(1), ", got ", mixed_channels);
  }
  if (edge_weight.has_value()) {
    check_acc(*edge_weight, acc, dev, fn, "edge_weight");
    TORCH_CHECK(edge_weight->numel() == 1, fn, ": edge_weight must have exactly 1 element");
  }
}

// The current CUDA stream of `dev`, without CUDA headers (c10::Stream::native_handle() is the
// cudaStream_t for CUDA streams).
void* current_stream(const at::Device& dev) {
  return c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(dev).native_handle();
}

void check_launch(int code, const char* fn) {
  TORCH_CHECK(code == 0, fn, ": fastnas CUDA kernel failed: ", fastnas_cuda_error_string(code), " (error ", code,
              ")");
}

}  // namespace

void mix_forward_cuda(const at::Tensor& out, const std::vector<at::Tensor>& ops, const at::Tensor& weights,
                      const std::vector<int64_t>& weight_index, const OptTensor& bypass, int64_t mixed_channels,
                      int64_t groups, const OptTensor& edge_weight, bool accumulate) {
  const char* fn = "mix_forward";
  check_common(fn, out, ops, weights, weight_index, bypass, mixed_channels, edge_weight);
  const at::Device dev = out.device();
  c10::DeviceGuard guard(dev);

  fastnas_mix_fwd_args a{};
  a.dtype = dtype_code(out.scalar_type(), fn);
  a.n_ops = static_cast<int>(ops.size());
  a.B = out.size(0);
  a.C = out.size(1);
  a.S = out.size(2);
  a.mixed = mixed_channels;
  a.groups = groups;
  a.accumulate = accumulate ? 1 : 0;
  a.out = view_of(out);
  for (int i = 0; i < FASTNAS_CUDA_MAX_OPS; ++i) {
    a.ops[i] = i < a.n_ops ? view_of(ops[i]) : no_view();
    a.weight_index[i] = i < a.n_ops ? weight_index[i] : 0;
  }
  a.weights = weights.data_ptr();
  a.bypass = bypass.has_value() ? view_of(*bypass) : no_view();
  a.edge_weight = edge_weight.has_value() ? edge_weight->data_ptr() : nullptr;
  check_launch(fastnas_cuda_mix_forward(&a, current_stream(dev)), fn);
}

void mix_backward_cuda(const at::Tensor& grad, const std::vector<at::Tensor>& ops, const at::Tensor& weights,
                       const std::vector<int64_t>& weight_index, const OptTensor& bypass, int64_t mixed_channels,
                       int64_t groups, const OptTensor& edge_weight, const std::vector<OptTensor>& grad_ops,
                       const OptTensor& grad_bypass, const OptTensor& dots) {
  const char* fn = "mix_backward";
  check_common(fn, grad, ops, weights, weight_index, bypass, mixed_channels, edge_weight);
  TORCH_CHECK(grad_ops.size() == ops.size(), fn, ": len(grad_ops) = ", grad_ops.size(), " must equal len(ops) = ",
              ops.size());
  const at::Device dev = grad.device();
  const at::ScalarType acc = acc_type(grad.scalar_type());
  for (size_t i = 0; i < grad_ops.size(); ++i) {
    if (grad_ops[i].has_value()) check_device(*grad_ops[i], dev, fn, "grad_ops[" + std::to_string(i) + "]");
  }
  if (grad_bypass.has_value()) check_device(*grad_bypass, dev, fn, "grad_bypass");
  if (dots.has_value()) {
    check_acc(*dots, acc, dev, fn, "dots");
    TORCH_CHECK(dots->numel() == static_cast<int64_t>(ops.size()) + 1, fn, ": dots must have len(ops) + 1 = ",
                ops.size() + 1, " elements, got ", dots->numel());
  }
  c10::DeviceGuard guard(dev);

  fastnas_mix_bwd_args a{};
  a.dtype = dtype_code(grad.scalar_type(), fn);
  a.n_ops = static_cast<int>(ops.size());
  a.B = grad.size(0);
  a.C = grad.size(1);
  a.S = grad.size(2);
  a.mixed = mixed_channels;
  a.groups = groups;
  a.grad = view_of(grad);
  for (int i = 0; i < FASTNAS_CUDA_MAX_OPS; ++i) {
    const bool used = i < a.n_ops;
    a.ops[i] = used ? view_of(ops[i]) : no_view();
    a.grad_ops[i] = used && grad_ops[i].has_value() ? view_of(*grad_ops[i]) : no_view();
    a.weight_index[i] = used ? weight_index[i] : 0;
  }
  a.weights = weights.data_ptr();
  a.bypass = bypass.has_value() ? view_of(*bypass) : no_view();
  a.grad_bypass = grad_bypass.has_value() ? view_of(*grad_bypass) : no_view();
  a.edge_weight = edge_weight.has_value() ? edge_weight->data_ptr() : nullptr;
  a.dots = dots.has_value() ? dots->data_ptr() : nullptr;

  // Per-block partial dot products (deterministic two-pass reduction), allocated through torch's
  // caching allocator on the current stream; the launcher says how many values of dtype A it needs.
  const int64_t ws = fastnas_cuda_mix_backward_workspace(&a);
  at::Tensor workspace;
  void* ws_ptr = nullptr;
  if (ws > 0) {
    workspace = at::empty({ws}, grad.options().dtype(acc));
    ws_ptr = workspace.data_ptr();
  }
  check_launch(fastnas_cuda_mix_backward(&a, ws_ptr, ws, current_stream(dev)), fn);
}

}  // namespace fastnas

#endif  // FASTNAS_WITH_CUDA
