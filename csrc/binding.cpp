// pybind11 module fastnas._C: validates the arguments of the fused shuffle-mix kernels and dispatches
// on the device (docs/kernel_interface.md). The Python layer (fastnas/ops/) validates first; the checks
// here are defence in depth so that a direct call with bad input raises a RuntimeError naming the
// problem instead of reading or writing out of bounds.
#include "mix.h"
#include "sign_gram.h"

#include <torch/extension.h>

#include <ATen/MemoryOverlap.h>

#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef FASTNAS_TORCH_VERSION
#define FASTNAS_TORCH_VERSION "unknown"
#endif

namespace fastnas {
namespace {

// The accumulation dtype A for data dtype D: float64 for float64 data, float32 otherwise.
at::ScalarType acc_type(at::ScalarType d) { return d == at::kDouble ? at::kDouble : at::kFloat; }

std::string shape_str(int64_t b, int64_t c, int64_t s) {
  return "(" + std::to_string(b) + ", " + std::to_string(c) + ", " + std::to_string(s) + ")";
}

// Common checks of one (B, channels, S) data tensor against the reference tensor (out / grad).
void check_data(const at::Tensor& t, const std::string& name, const at::Tensor& ref, int64_t channels,
                bool is_output) {
  TORCH_CHECK(t.defined(), name, " is an undefined tensor");
  TORCH_CHECK(t.layout() == at::kStrided, name, " must be a strided (dense) tensor, got layout ",
              t.layout());
  TORCH_CHECK(t.dim() == 3, name, " must be 3-D (B, channels, S), got ", t.dim(), "-D with shape ",
              t.sizes());
  TORCH_CHECK(t.device() == ref.device(), name, " is on ", t.device(), " but the output is on ",
              ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " has dtype ", t.scalar_type(),
              " but the output has dtype ", ref.scalar_type());
  TORCH_CHECK(t.size(0) == ref.size(0) && t.size(1) == channels && t.size(2) == ref.size(2), name,
              " must have shape ", shape_str(ref.size(0), channels, ref.size(2)), ", got ", t.sizes());
  if (is_output) {
    // Written elementwise in parallel: an output whose elements share memory (expand()) would race.
    TORCH_CHECK(at::has_internal_overlap(t) != at::MemOverlap::Yes, name,
                " has overlapping elements (e.g. an expanded tensor); it is written to");
  }
}

// Checks of a small dtype-A tensor (weights, edge_weight, dots).
void check_acc(const at::Tensor& t, const std::string& name, const at::Tensor& ref) {
  TORCH_CHECK(t.defined(), name, " is an undefined tensor");
  TORCH_CHECK(t.layout() == at::kStrided, name, " must be a strided (dense) tensor");
  TORCH_CHECK(t.device() == ref.device(), name, " is on ", t.device(), " but the output is on ",
              ref.device());
  const at::ScalarType a = acc_type(ref.scalar_type());
  TORCH_CHECK(t.scalar_type() == a, name, " must have the accumulation dtype ", a, " (data dtype ",
              ref.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// Validates everything shared by forward and backward; `ref` is out (forward) or grad (backward).
void check_common(const char* fn, const at::Tensor& ref, const char* ref_name,
                  const std::vector<at::Tensor>& ops, const at::Tensor& weights,
                  const std::vector<int64_t>& weight_index, const OptTensor& bypass,
                  int64_t mixed_channels, int64_t groups, const OptTensor& edge_weight, bool ref_written) {
  const std::string pre = std::string(fn) + ": ";
  TORCH_CHECK(ref.defined(), pre, ref_name, " is an undefined tensor");
  TORCH_CHECK(ref.layout() == at::kStrided, pre, ref_name, " must be a strided (dense) tensor");
  TORCH_CHECK(ref.dim() == 3, pre, ref_name, " must be 3-D (B, C, S), got ", ref.dim(),
              "-D with shape ", ref.sizes());
  // The data dtype first, so that an unsupported one is named as such (and not reported as a
  // mismatching weights dtype).
  const at::ScalarType d = ref.scalar_type();
  if (ref.is_cpu()) {
    TORCH_CHECK(d == at::kFloat || d == at::kDouble, pre, "the CPU kernels support float32 and float64, got ",
                d, " (", ref_name, ".dtype)");
  } else {
    TORCH_CHECK(d == at::kFloat || d == at::kDouble || d == at::kHalf || d == at::kBFloat16, pre,
                "unsupported dtype ", d, " (", ref_name, ".dtype); expected float32, float64, float16 or bfloat16");
  }
  if (ref_written) {
    TORCH_CHECK(at::has_internal_overlap(ref) != at::MemOverlap::Yes, pre, ref_name,
                " has overlapping elements (e.g. an expanded tensor); it is written to");
  }
  const int64_t C = ref.size(1);
  TORCH_CHECK(groups >= 1, pre, "groups must be >= 1, got ", groups);
  TORCH_CHECK(C % groups == 0, pre, "the channel count C = ", C, " of ", ref_name,
              " is not divisible by groups = ", groups);
  TORCH_CHECK(mixed_channels >= 0 && mixed_channels <= C, pre, "mixed_channels = ", mixed_channels,
              " must lie in [0, C = ", C, "]");
  const int64_t Cb = C - mixed_channels;
  if (bypass.has_value()) {
    check_data(*bypass, pre + "bypass", ref, Cb, false);
  } else {
    TORCH_CHECK(Cb == 0, pre, "bypass is None, so ", ref_name, " must have mixed_channels = ",
                mixed_channels, " channels, got C = ", C);
  }
  for (size_t i = 0; i < ops.size(); ++i) {
    check_data(ops[i], pre + "ops[" + std::to_string(i) + "]", ref, mixed_channels, false);
  }
  TORCH_CHECK(weight_index.size() == ops.size(), pre, "len(weight_index) = ", weight_index.size(),
              " must equal len(ops) = ", ops.size());
  check_acc(weights, pre + "weights", ref);
  TORCH_CHECK(weights.dim() == 1, pre, "weights must be 1-D, got shape ", weights.sizes());
  const int64_t n_w = weights.size(0);
  for (size_t i = 0; i < weight_index.size(); ++i) {
    TORCH_CHECK(weight_index[i] >= 0 && weight_index[i] < n_w, pre, "weight_index[", i, "] = ",
                weight_index[i], " is out of range for ", n_w, " weights");
  }
  if (edge_weight.has_value()) {
    check_acc(*edge_weight, pre + "edge_weight", ref);
    TORCH_CHECK(edge_weight->numel() == 1, pre, "edge_weight must have exactly 1 element, got shape ",
                edge_weight->sizes());
  }
}

#ifndef FASTNAS_WITH_CUDA
void no_cuda(const char* fn) {
  TORCH_CHECK(false, fn,
              ": fastnas._C was built without CUDA; rebuild on a CUDA machine: "
              "pip install --no-build-isolation .");
}
#endif

void mix_forward(const at::Tensor& out, const std::vector<at::Tensor>& ops, const at::Tensor& weights,
                 const std::vector<int64_t>& weight_index, const OptTensor& bypass, int64_t mixed_channels,
                 int64_t groups, const OptTensor& edge_weight, bool accumulate) {
  check_common("mix_forward", out, "out", ops, weights, weight_index, bypass, mixed_channels, groups,
               edge_weight, true);
  if (out.is_cpu()) {
    mix_forward_cpu(out, ops, weights, weight_index, bypass, mixed_channels, groups, edge_weight,
                    accumulate);
  } else if (out.is_cuda()) {
#ifdef FASTNAS_WITH_CUDA
    TORCH_CHECK(static_cast<int64_t>(ops.size()) <= kMaxOpsCuda, "mix_forward: the CUDA kernels take at most ",
                kMaxOpsCuda, " ops per call, got ", ops.size());
    mix_forward_cuda(out, ops, weights, weight_index, bypass, mixed_channels, groups, edge_weight,
                     accumulate);
#else
    no_cuda("mix_forward");
#endif
  } else {
    TORCH_CHECK(false, "mix_forward: unsupported device ", out.device(), " (fastnas._C supports cpu and cuda)");
  }
}

void mix_backward(const at::Tensor& grad, const std::vector<at::Tensor>& ops, const at::Tensor& weights,
                  const std::vector<int64_t>& weight_index, const OptTensor& bypass, int64_t mixed_channels,
                  int64_t groups, const OptTensor& edge_weight, const std::vector<OptTensor>& grad_ops,
                  const OptTensor& grad_bypass, const OptTensor& dots) {
  const char* fn = "mix_backward";
  const std::string pre = std::string(fn) + ": ";
  check_common(fn, grad, "grad", ops, weights, weight_index, bypass, mixed_channels, groups, edge_weight,
               false);
  TORCH_CHECK(grad_ops.size() == ops.size(), pre, "len(grad_ops) = ", grad_ops.size(),
              " must equal len(ops) = ", ops.size());
  for (size_t i = 0; i < grad_ops.size(); ++i) {
    if (grad_ops[i].has_value()) {
      check_data(*grad_ops[i], pre + "grad_ops[" + std::to_string(i) + "]", grad, mixed_channels, true);
    }
  }
  if (grad_bypass.has_value()) {
    check_data(*grad_bypass, pre + "grad_bypass", grad, grad.size(1) - mixed_channels, true);
  }
  if (dots.has_value()) {
    check_acc(*dots, pre + "dots", grad);
    TORCH_CHECK(dots->numel() == static_cast<int64_t>(ops.size()) + 1, pre, "dots must have len(ops) + 1 = ",
                ops.size() + 1, " elements, got shape ", dots->sizes());
  }
  if (grad.is_cpu()) {
    mix_backward_cpu(grad, ops, weights, weight_index, bypass, mixed_channels, groups, edge_weight, grad_ops,
                     grad_bypass, dots);
  } else if (grad.is_cuda()) {
#ifdef FASTNAS_WITH_CUDA
    TORCH_CHECK(static_cast<int64_t>(ops.size()) <= kMaxOpsCuda, pre, "the CUDA kernels take at most ",
                kMaxOpsCuda, " ops per call, got ", ops.size());
    mix_backward_cuda(grad, ops, weights, weight_index, bypass, mixed_channels, groups, edge_weight,
                      grad_ops, grad_bypass, dots);
#else
    no_cuda(fn);
#endif
  } else {
    TORCH_CHECK(false, pre, "unsupported device ", grad.device(), " (fastnas._C supports cpu and cuda)");
  }
}

bool cuda_built() {
#ifdef FASTNAS_WITH_CUDA
  return true;
#else
  return false;
#endif
}

int openmp_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 0;
#endif
}

at::Tensor sign_agreement(const at::Tensor& x) {
  TORCH_CHECK(x.defined(), "sign_agreement: x is an undefined tensor");
  TORCH_CHECK(x.layout() == at::kStrided, "sign_agreement: x must be a strided (dense) tensor");
  TORCH_CHECK(x.is_cpu(), "sign_agreement: x must be on the CPU, got ", x.device());
  TORCH_CHECK(x.dim() == 2, "sign_agreement: x must be 2-D (samples S, units U), got shape ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "sign_agreement: x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.size(0) >= 1, "sign_agreement: x holds no sample (S = 0)");
  TORCH_CHECK(x.size(1) <= 1 || x.stride(1) == 1,
              "sign_agreement: x must have unit stride along the units (dim 1), got strides ", x.strides());
  return sign_agreement_cpu(x);
}

}  // namespace
}  // namespace fastnas

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.doc() = "fastnas compiled kernels: the fused shuffle-mix forward/backward (docs/kernel_interface.md) and the sign-agreement Gram of NWOT";
  // The GIL is released while the kernels run (arguments are converted before, errors are translated
  // after it is re-acquired), so other Python threads can progress during long CPU calls.
  m.def("mix_forward", &fastnas::mix_forward, "Fused shuffle-mix forward: fills out (see docs/kernel_interface.md)",
        py::arg("out"), py::arg("ops"), py::arg("weights"), py::arg("weight_index"), py::arg("bypass"),
        py::arg("mixed_channels"), py::arg("groups"), py::arg("edge_weight"), py::arg("accumulate"),
        py::call_guard<py::gil_scoped_release>());
  m.def("mix_backward", &fastnas::mix_backward,
        "Fused shuffle-mix backward: fills grad_ops, grad_bypass and dots (see docs/kernel_interface.md)",
        py::arg("grad"), py::arg("ops"), py::arg("weights"), py::arg("weight_index"), py::arg("bypass"),
        py::arg("mixed_channels"), py::arg("groups"), py::arg("edge_weight"), py::arg("grad_ops"),
        py::arg("grad_bypass"), py::arg("dots"), py::call_guard<py::gil_scoped_release>());
  m.def("sign_agreement", &fastnas::sign_agreement,
        "int64 (S, S) count of units where two samples' signs (x > 0) agree, over bit-packed codes",
        py::arg("x"), py::call_guard<py::gil_scoped_release>());
  m.def("cuda_built", &fastnas::cuda_built, "Whether the CUDA kernels were compiled in");
  m.def("openmp_threads", &fastnas::openmp_threads,
        "omp_get_max_threads() of the CPU kernels, or 0 when built without OpenMP");
  m.attr("torch_version") = FASTNAS_TORCH_VERSION;
}
