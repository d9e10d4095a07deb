// CPU (OpenMP via at::parallel_for) implementation of the fused shuffle-mix kernels.
// Semantics: docs/kernel_interface.md. The binding (csrc/binding.cpp) has already validated shapes,
// devices and dtypes; the asserts below only guard the assumptions this file itself relies on.
//
// Two paths per direction:
//  * fast path, every tensor has stride(2) == 1 (contiguous or channel-sliced NCHW): one work item is
//    one (b, channel) plane, or a chunk of kChunk elements of it when S is large, so the inner loop runs
//    over contiguous memory and vectorises; every input element is read once and every output element
//    written once.
//  * general path, any strides (e.g. channels_last, where stride(1) == 1): one work item is a block of
//    kRowBlock spatial positions of one sample, the inner loops run over channels, which are the
//    contiguous dimension for channels_last (when a tensor's channel stride is 1 the row reuses the
//    vectorised loops of the fast path; other strides fall back to plain strided loops).
// Backward reductions (dots) are deterministic: every work item writes its partial sums into its own
// slot of a buffer indexed by the work item (the partition into items does not depend on the thread
// count), and the buffer is then reduced by one thread in a fixed (pairwise) order. No atomics.
#include "../mix.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace fastnas {

// Everything below is internal to this translation unit: the anonymous namespace keeps the
// template instantiations out of the extension's exported symbols (no clashes with the CUDA objects
// or other extensions linked into the same process).
namespace {

// S elements handled by one work item in the fast path. Large enough that the per-item overhead is
// negligible, small enough that the forward's accumulation buffer (kChunk values of A, 16 KiB for
// double) stays in L1 and that planes with a huge S still split into several parallel items.
constexpr int64_t kChunk = 2048;
// Spatial positions handled by one work item in the general (strided) path.
constexpr int64_t kRowBlock = 8;
// Target amount of elementwise work per parallel task: below this, threading costs more than it saves.
constexpr int64_t kGrainWork = 32768;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kGrainWork / std::max<int64_t>(1, work_per_item));
}

// Channel geometry of one call: the shuffle maps between concatenated channels c and output channels o.
struct Geometry {
  int64_t B, C, S, Cm, Cb, g, Cg;
  // output channel o reads concatenated channel c(o)
  int64_t c_of(int64_t o) const { return (o % g) * Cg + o / g; }
  // concatenated channel c lands at output channel o(c)
  int64_t o_of(int64_t c) const { return (c % Cg) * g + c / Cg; }
};

// A (B, channels, S) tensor as a raw pointer plus its three strides (in elements).
template <typename T>
struct View {
  T* data = nullptr;
  int64_t sb = 0, sc = 0, ss = 0;
  View() = default;
  explicit View(const at::Tensor& t)
      : data(t.data_ptr<std::remove_const_t<T>>()), sb(t.stride(0)), sc(t.stride(1)), ss(t.stride(2)) {}
  T* plane(int64_t b, int64_t c) const { return data + b * sb + c * sc; }
  T& at(int64_t b, int64_t c, int64_t s) const { return data[b * sb + c * sc + s * ss]; }
};

// Fixed-order pairwise sum of x[0], x[stride], ..., x[(n-1)*stride]: deterministic, and with an
// O(log n) error growth instead of O(n) for the plain loop (matters for float dots over many items).
template <typename acc_t>
acc_t pairwise_sum(const acc_t* x, int64_t n, int64_t stride) {
  if (n <= 32) {
    acc_t s = acc_t(0);
    for (int64_t i = 0; i < n; ++i) s += x[i * stride];
    return s;
  }
  const int64_t h = n / 2;
  return pairwise_sum(x, h, stride) + pairwise_sum(x + h * stride, n - h, stride);
}

bool last_dim_contiguous(const at::Tensor& t) { return t.size(2) <= 1 || t.stride(2) == 1; }

// ------------------------------------------------------------------------------------------------
// Forward
// ------------------------------------------------------------------------------------------------

// Inputs of the forward, resolved once per call into raw pointers (the per-op loop then has no
// tensor bookkeeping in it). On the CPU the accumulation dtype A equals scalar_t (float or double).
template <typename scalar_t>
struct FwdArgs {
  Geometry geo;
  View<scalar_t> out;
  std::vector<View<const scalar_t>> ops;
  std::vector<scalar_t> w;  // weights[weight_index[i]]
  View<const scalar_t> byp;
  bool has_ew;
  scalar_t ew;
  bool accumulate;
};

// buf[s] = ((buf[s] + w0*x0[s]) + w1*x1[s]) + ... for k ops (k <= 4), or buf[s] = w0*x0[s] + ... when
// `init`. Several ops per pass keep buf in registers longer; the left-to-right association is exactly
// the sequential sum of the interface, so the result does not depend on the grouping.
template <typename scalar_t>
inline void accumulate_ops(scalar_t* __restrict__ buf, const scalar_t* const* x, const scalar_t* w,
                           int k, bool init, int64_t n) {
  const scalar_t* __restrict__ x0 = x[0];
  const scalar_t w0 = w[0];
  switch (k) {
    case 1:
      if (init) {
#pragma omp simd
        for (int64_t s = 0; s < n; ++s) buf[s] = w0 * x0[s];
      } else {
#pragma omp simd
        for (int64_t s = 0; s < n; ++s) buf[s] = buf[s] + w0 * x0[s];
      }
      return;
    case 2: {
      const scalar_t* __restrict__ x1 = x[1];
      const scalar_t w1 = w[1];
      if (init) {
#pragma omp simd
        for (int64_t s = 0; s < n; ++s) buf[s] = w0 * x0[s] + w1 * x1[s];
      } else {
#pragma omp simd
        for (int64_t s = 0; s < n; ++s) buf[s] = (buf[s] + w0 * x0[s]) + w1 * x1[s];
      }
      return;
    }
    case 3: {
      const scalar_t* __restrict__ x1 = x[1];
      const scalar_t* __restrict__ x2 = x[2];
      const scalar_t w1 = w[1], w2 = w[2];
      if (init) {
#pragma omp simd
        for (int64_t s = 0; s < n; ++s) buf[s] = (w0 * x0[s] + w1 * x1[s]) + w2 * x2[s];
      } else {
#pragma omp simd
        for (int64_t s = 0; s < n; ++s) buf[s] = ((buf[s] + w0 * x0[s]) + w1 * x1[s]) + w2 * x2[s];
      }
      return;
    }
    default: {
      const scalar_t* __restrict__ x1 = x[1];
      const scalar_t* __restrict__ x2 = x[2];
      const scalar_t* __restrict__ x3 = x[3];
      const scalar_t w1 = w[1], w2 = w[2], w3 = w[3];
      if (init) {
#pragma omp simd
        for (int64_t s = 0; s < n; ++s)
          buf[s] = ((w0 * x0[s] + w1 * x1[s]) + w2 * x2[s]) + w3 * x3[s];
      } else {
#pragma omp simd
        for (int64_t s = 0; s < n; ++s)
          buf[s] = (((buf[s] + w0 * x0[s]) + w1 * x1[s]) + w2 * x2[s]) + w3 * x3[s];
      }
      return;
    }
  }
}

// y[s] = (accumulate ? y[s] : 0) + v[s] * ew (ew only when present). The flags are template
// parameters so that each variant is a branch-free vectorisable loop.
template <typename scalar_t, bool kEw, bool kAcc>
inline void store_plane(scalar_t* __restrict__ y, const scalar_t* __restrict__ v, scalar_t ew, int64_t n) {
#pragma omp simd
  for (int64_t s = 0; s < n; ++s) {
    scalar_t t = v[s];
    if (kEw) t = t * ew;
    y[s] = kAcc ? y[s] + t : t;
  }
}

template <typename scalar_t>
inline void store_plane(scalar_t* y, const scalar_t* v, bool has_ew, scalar_t ew, bool acc, int64_t n) {
  if (has_ew) {
    acc ? store_plane<scalar_t, true, true>(y, v, ew, n) : store_plane<scalar_t, true, false>(y, v, ew, n);
  } else {
    acc ? store_plane<scalar_t, false, true>(y, v, ew, n) : store_plane<scalar_t, false, false>(y, v, ew, n);
  }
}

// Fast path: every tensor has stride(2) == 1. Work item = (b, output channel o, S-chunk).
template <typename scalar_t>
void forward_planes(const FwdArgs<scalar_t>& a) {
  const Geometry& g = a.geo;
  const int nops = static_cast<int>(a.ops.size());
  const int64_t chunk = std::min(g.S, kChunk);
  const int64_t nch = ceil_div(g.S, chunk);
  const int64_t items = g.B * g.C * nch;
  at::parallel_for(0, items, grain_for(chunk * (nops + 2)), [&](int64_t begin, int64_t end) {
    // Accumulation buffer for one chunk of a mixed plane: the ops are summed here (in L1) and the
    // output is written once.
    alignas(64) scalar_t buf[kChunk];
    std::vector<const scalar_t*> xs(std::max(nops, 1));
    for (int64_t it = begin; it < end; ++it) {
      const int64_t ch = it % nch;
      const int64_t plane = it / nch;
      const int64_t b = plane / g.C, o = plane % g.C;
      const int64_t c = g.c_of(o);
      const int64_t s0 = ch * chunk;
      const int64_t n = std::min(chunk, g.S - s0);
      scalar_t* y = a.out.plane(b, o) + s0;
      if (c < g.Cm) {
        if (nops == 0) {
          std::fill(buf, buf + n, scalar_t(0));  // empty sum (mixed channels but no ops)
        } else {
          for (int i = 0; i < nops; ++i) xs[i] = a.ops[i].plane(b, c) + s0;
          for (int i = 0; i < nops; i += 4) {
            accumulate_ops(buf, xs.data() + i, a.w.data() + i, std::min(4, nops - i), i == 0, n);
          }
        }
        store_plane(y, buf, a.has_ew, a.ew, a.accumulate, n);
      } else {
        store_plane(y, a.byp.plane(b, c - g.Cm) + s0, a.has_ew, a.ew, a.accumulate, n);
      }
    }
  });
}

// General path: any strides. Work item = (b, block of kRowBlock spatial positions); for each position
// the inner loops run over channels (contiguous for channels_last).
template <typename scalar_t>
void forward_rows(const FwdArgs<scalar_t>& a) {
  const Geometry& g = a.geo;
  const int nops = static_cast<int>(a.ops.size());
  const int64_t nblk = ceil_div(g.S, kRowBlock);
  const int64_t items = g.B * nblk;
  std::vector<int64_t> cmap(g.C);
  for (int64_t o = 0; o < g.C; ++o) cmap[o] = g.c_of(o);
  bool ops_unit = true;
  for (const auto& x : a.ops) ops_unit = ops_unit && (x.sc == 1 || g.Cm <= 1);
  at::parallel_for(0, items, grain_for(kRowBlock * g.C * (nops + 2)), [&](int64_t begin, int64_t end) {
    // One row of concatenated channels: the mixed channels accumulated in A, then the bypass ones.
    std::vector<scalar_t> row(g.C);
    scalar_t* __restrict__ r = row.data();
    std::vector<const scalar_t*> xs(std::max(nops, 1));
    for (int64_t it = begin; it < end; ++it) {
      const int64_t b = it / nblk;
      const int64_t s_begin = (it % nblk) * kRowBlock;
      const int64_t s_end = std::min(g.S, s_begin + kRowBlock);
      for (int64_t s = s_begin; s < s_end; ++s) {
        if (nops == 0) {
          std::fill(r, r + g.Cm, scalar_t(0));
        } else {
          // Same association as the fast path: ((w0*x0 + w1*x1) + w2*x2) + ..., so both paths give
          // bit-identical outputs.
          if (ops_unit) {
            // Channels are contiguous in every op (channels_last): the vectorised kernel of the fast
            // path, run along the channel row.
            for (int i = 0; i < nops; ++i) xs[i] = a.ops[i].data + b * a.ops[i].sb + s * a.ops[i].ss;
            for (int i = 0; i < nops; i += 4) {
              accumulate_ops(r, xs.data() + i, a.w.data() + i, std::min(4, nops - i), i == 0, g.Cm);
            }
          } else {
            for (int i = 0; i < nops; ++i) {
              const View<const scalar_t>& x = a.ops[i];
              const scalar_t* __restrict__ xp = x.data + b * x.sb + s * x.ss;
              const int64_t xst = x.sc;
              const scalar_t wi = a.w[i];
              if (i == 0) {
                for (int64_t c = 0; c < g.Cm; ++c) r[c] = wi * xp[c * xst];
              } else {
                for (int64_t c = 0; c < g.Cm; ++c) r[c] = r[c] + wi * xp[c * xst];
              }
            }
          }
        }
        if (g.Cb > 0) {
          const scalar_t* __restrict__ bp = a.byp.data + b * a.byp.sb + s * a.byp.ss;
          for (int64_t c = 0; c < g.Cb; ++c) r[g.Cm + c] = bp[c * a.byp.sc];
        }
        scalar_t* __restrict__ yp = a.out.data + b * a.out.sb + s * a.out.ss;
        const int64_t ys = a.out.sc;
        for (int64_t o = 0; o < g.C; ++o) {
          scalar_t v = r[cmap[o]];
          if (a.has_ew) v = v * a.ew;
          yp[o * ys] = a.accumulate ? yp[o * ys] + v : v;
        }
      }
    }
  });
}

template <typename scalar_t>
void forward_impl(const at::Tensor& out, const std::vector<at::Tensor>& ops, const at::Tensor& weights,
                  const std::vector<int64_t>& weight_index, const OptTensor& bypass, const Geometry& geo,
                  const OptTensor& edge_weight, bool accumulate) {
  FwdArgs<scalar_t> a;
  a.geo = geo;
  a.out = View<scalar_t>(out);
  const scalar_t* wp = weights.data_ptr<scalar_t>();
  for (size_t i = 0; i < ops.size(); ++i) {
    a.ops.emplace_back(ops[i]);
    a.w.push_back(wp[weight_index[i]]);
  }
  if (bypass.has_value() && geo.Cb > 0) a.byp = View<const scalar_t>(*bypass);
  a.has_ew = edge_weight.has_value();
  a.ew = a.has_ew ? edge_weight->data_ptr<scalar_t>()[0] : scalar_t(1);
  a.accumulate = accumulate;

  bool fast = last_dim_contiguous(out);
  for (const auto& t : ops) fast = fast && last_dim_contiguous(t);
  if (geo.Cb > 0) fast = fast && last_dim_contiguous(*bypass);
  fast ? forward_planes(a) : forward_rows(a);
}

// ------------------------------------------------------------------------------------------------
// Backward
// ------------------------------------------------------------------------------------------------

template <typename scalar_t>
struct BwdArgs {
  Geometry geo;
  View<const scalar_t> grad;
  std::vector<View<const scalar_t>> ops;
  std::vector<View<scalar_t>> gops;  // data == nullptr where grad_ops[i] is None
  std::vector<scalar_t> scale;        // ew * weights[weight_index[i]]
  View<const scalar_t> byp;           // only used for the dots
  View<scalar_t> gbyp;                // data == nullptr when grad_bypass is None
  scalar_t ew;
  bool want_dots;
};

// go[s] = sc * gs[s] and/or returns sum_s gs[s] * x[s] (0 when !kDot). The dot keeps kLanes
// independent partial sums (several vector registers): a single accumulator would serialise the loop on
// the latency of the vector add. The partial sums are combined in a fixed order at the end, so the
// result depends only on the data, never on the thread that computed it.
constexpr int64_t kLanes = 16;

template <typename scalar_t, bool kGrad, bool kDot>
inline scalar_t grad_and_dot(scalar_t* __restrict__ go, const scalar_t* __restrict__ gs,
                             const scalar_t* __restrict__ x, scalar_t sc, int64_t n) {
  scalar_t part[kLanes] = {};
  int64_t s = 0;
  for (; s + kLanes <= n; s += kLanes) {
#pragma omp simd
    for (int64_t k = 0; k < kLanes; ++k) {
      const scalar_t gv = gs[s + k];
      if (kGrad) go[s + k] = sc * gv;
      if (kDot) part[k] += gv * x[s + k];
    }
  }
  for (int64_t k = 0; s < n; ++s, ++k) {
    const scalar_t gv = gs[s];
    if (kGrad) go[s] = sc * gv;
    if (kDot) part[k] += gv * x[s];
  }
  if (!kDot) return scalar_t(0);
  for (int64_t w = kLanes / 2; w > 0; w /= 2) {
    for (int64_t k = 0; k < w; ++k) part[k] += part[k + w];
  }
  return part[0];
}

// Gradients written by one backward call from this many bytes on go out with non-temporal stores (fast
// path, float32): they skip the read-for-ownership of every line they overwrite, a third of the
// backward's memory traffic. Measured on the 2-core EPYC (L3 32 MiB), B=64 C=64 K=4 16x16 with 7 op
// outputs (10 MiB of gradients), four alternating runs of bench_ops.py: backward 0.56-1.22 ms instead
// of 0.73-1.50 ms, forward+backward 2.3-3.8x the PC-DARTS formula instead of 2.1-2.7x. Below the
// threshold the gradients stay in cache for the ops' backward that reads them next.
constexpr int64_t kStreamBytes = int64_t(4) << 20;

#if defined(__SSE2__)
// float32 with a 16-byte-aligned output: the same lanes and association as the generic loop (part[k]
// += g * x in lane k of four 4-wide accumulators, same tree at the end: identical bits), but the
// gradient is written with non-temporal stores. The caller issues _mm_sfence() before its results are
// read by another thread.
template <bool kDot>
inline float grad_and_dot_stream(float* __restrict__ go, const float* __restrict__ gs, const float* __restrict__ x,
                                 float sc, int64_t n) {
  const __m128 vsc = _mm_set1_ps(sc);
  __m128 p0 = _mm_setzero_ps(), p1 = _mm_setzero_ps(), p2 = _mm_setzero_ps(), p3 = _mm_setzero_ps();
  int64_t s = 0;
  for (; s + kLanes <= n; s += kLanes) {
    const __m128 g0 = _mm_loadu_ps(gs + s), g1 = _mm_loadu_ps(gs + s + 4), g2 = _mm_loadu_ps(gs + s + 8),
                 g3 = _mm_loadu_ps(gs + s + 12);
    _mm_stream_ps(go + s, _mm_mul_ps(vsc, g0));
    _mm_stream_ps(go + s + 4, _mm_mul_ps(vsc, g1));
    _mm_stream_ps(go + s + 8, _mm_mul_ps(vsc, g2));
    _mm_stream_ps(go + s + 12, _mm_mul_ps(vsc, g3));
    if (kDot) {
      p0 = _mm_add_ps(p0, _mm_mul_ps(g0, _mm_loadu_ps(x + s)));
      p1 = _mm_add_ps(p1, _mm_mul_ps(g1, _mm_loadu_ps(x + s + 4)));
      p2 = _mm_add_ps(p2, _mm_mul_ps(g2, _mm_loadu_ps(x + s + 8)));
      p3 = _mm_add_ps(p3, _mm_mul_ps(g3, _mm_loadu_ps(x + s + 12)));
    }
  }
  alignas(16) float part[kLanes];
  _mm_store_ps(part, p0);
  _mm_store_ps(part + 4, p1);
  _mm_store_ps(part + 8, p2);
  _mm_store_ps(part + 12, p3);
  for (int64_t k = 0; s < n; ++s, ++k) {
    const float gv = gs[s];
    go[s] = sc * gv;
    if (kDot) part[k] += gv * x[s];
  }
  if (!kDot) return 0.f;
  for (int64_t w = kLanes / 2; w > 0; w /= 2) {
    for (int64_t k = 0; k < w; ++k) part[k] += part[k + w];
  }
  return part[0];
}
#endif

template <typename scalar_t>
inline scalar_t grad_and_dot(scalar_t* go, const scalar_t* gs, const scalar_t* x, scalar_t sc, bool dot,
                             int64_t n, bool stream = false) {
#if defined(__SSE2__)
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (stream && go != nullptr && reinterpret_cast<uintptr_t>(go) % 16 == 0 && n >= kLanes) {
      return dot ? grad_and_dot_stream<true>(go, gs, x, sc, n) : grad_and_dot_stream<false>(go, gs, x, sc, n);
    }
  }
#endif
  if (go != nullptr) {
    return dot ? grad_and_dot<scalar_t, true, true>(go, gs, x, sc, n)
               : grad_and_dot<scalar_t, true, false>(go, gs, x, sc, n);
  }
  return dot ? grad_and_dot<scalar_t, false, true>(go, gs, x, sc, n) : scalar_t(0);
}

// Fast path: every tensor has stride(2) == 1. Work item = (b, concatenated channel c, S-chunk): the
// upstream gradient plane o(c) is read once (and stays in L1 while every op of the plane uses it).
// Partial dots go to mpart[i * n_mixed_items + item] / bpart[item]; the caller reduces them.
template <typename scalar_t>
void backward_planes(const BwdArgs<scalar_t>& a, scalar_t* dots) {
  const Geometry& g = a.geo;
  const int nops = static_cast<int>(a.ops.size());
  const int64_t chunk = std::min(g.S, kChunk);
  const int64_t nch = ceil_div(g.S, chunk);
  const int64_t n_mixed = g.B * g.Cm * nch;  // mixed items, indexed ((b * Cm + c) * nch + ch)
  const int64_t n_byp = g.B * g.Cb * nch;    // bypass items, indexed ((b * Cb + c') * nch + ch)
  const bool dot_byp = a.want_dots && a.byp.data != nullptr;
  std::vector<scalar_t> mpart(a.want_dots ? n_mixed * nops : 0);
  std::vector<scalar_t> bpart(dot_byp ? n_byp : 0);
  const int64_t items = g.B * g.C * nch;
  int64_t grad_planes = a.gbyp.data != nullptr ? g.Cb : 0;
  for (const auto& go : a.gops) grad_planes += go.data != nullptr ? g.Cm : 0;
  const bool stream = grad_planes * g.B * g.S * static_cast<int64_t>(sizeof(scalar_t)) >= kStreamBytes;
  at::parallel_for(0, items, grain_for(chunk * (nops + 2)), [&](int64_t begin, int64_t end) {
    for (int64_t it = begin; it < end; ++it) {
      const int64_t ch = it % nch;
      const int64_t plane = it / nch;
      const int64_t b = plane / g.C, c = plane % g.C;
      const int64_t s0 = ch * chunk;
      const int64_t n = std::min(chunk, g.S - s0);
      const scalar_t* gs = a.grad.plane(b, g.o_of(c)) + s0;
      if (c < g.Cm) {
        const int64_t idx = (b * g.Cm + c) * nch + ch;
        for (int i = 0; i < nops; ++i) {
          scalar_t* go = a.gops[i].data != nullptr ? a.gops[i].plane(b, c) + s0 : nullptr;
          const scalar_t* x = a.ops[i].plane(b, c) + s0;
          const scalar_t d = grad_and_dot(go, gs, x, a.scale[i], a.want_dots, n, stream);
          if (a.want_dots) mpart[i * n_mixed + idx] = d;
        }
      } else {
        const int64_t cb = c - g.Cm;
        const int64_t idx = (b * g.Cb + cb) * nch + ch;
        scalar_t* go = a.gbyp.data != nullptr ? a.gbyp.plane(b, cb) + s0 : nullptr;
        const scalar_t* x = dot_byp ? a.byp.plane(b, cb) + s0 : nullptr;
        const scalar_t d = grad_and_dot(go, gs, x, a.ew, dot_byp, n, stream);
        if (dot_byp) bpart[idx] = d;
      }
    }
#if defined(__SSE2__)
    if (stream) _mm_sfence();  // non-temporal stores are weakly ordered: publish them before the join
#endif
  });
  if (a.want_dots) {
    // Single-threaded fixed-order reduction: the same bits whatever the thread count.
    for (int i = 0; i < nops; ++i) dots[i] = pairwise_sum(mpart.data() + i * n_mixed, n_mixed, 1);
    dots[nops] = dot_byp ? pairwise_sum(bpart.data(), n_byp, 1) : scalar_t(0);
  }
}

// General path: any strides. Work item = (b, block of kRowBlock spatial positions); per position the
// upstream gradient row is gathered (inverse shuffle) into a buffer of C values, then every op and the
// bypass run over channels. Partial dots go to part[item * (nops + 1) + i].
template <typename scalar_t>
void backward_rows(const BwdArgs<scalar_t>& a, scalar_t* dots) {
  const Geometry& g = a.geo;
  const int nops = static_cast<int>(a.ops.size());
  const int64_t nblk = ceil_div(g.S, kRowBlock);
  const int64_t items = g.B * nblk;
  const int64_t nd = nops + 1;
  const bool dot_byp = a.want_dots && a.byp.data != nullptr;
  std::vector<scalar_t> part(a.want_dots ? items * nd : 0);
  std::vector<int64_t> omap(g.C);
  for (int64_t c = 0; c < g.C; ++c) omap[c] = g.o_of(c);
  at::parallel_for(0, items, grain_for(kRowBlock * g.C * (nops + 2)), [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> row(g.C);
    scalar_t* __restrict__ r = row.data();
    for (int64_t it = begin; it < end; ++it) {
      const int64_t b = it / nblk;
      const int64_t s_begin = (it % nblk) * kRowBlock;
      const int64_t s_end = std::min(g.S, s_begin + kRowBlock);
      scalar_t* pd = a.want_dots ? part.data() + it * nd : nullptr;
      if (pd != nullptr) std::fill(pd, pd + nd, scalar_t(0));
      for (int64_t s = s_begin; s < s_end; ++s) {
        const scalar_t* __restrict__ gp = a.grad.data + b * a.grad.sb + s * a.grad.ss;
        for (int64_t c = 0; c < g.C; ++c) r[c] = gp[omap[c] * a.grad.sc];
        for (int i = 0; i < nops; ++i) {
          const View<scalar_t>& go = a.gops[i];
          const View<const scalar_t>& x = a.ops[i];
          scalar_t* gop = go.data != nullptr ? go.data + b * go.sb + s * go.ss : nullptr;
          const scalar_t* xp = x.data + b * x.sb + s * x.ss;
          const scalar_t sc = a.scale[i];
          if ((gop == nullptr || go.sc == 1 || g.Cm <= 1) && (pd == nullptr || x.sc == 1 || g.Cm <= 1)) {
            // Channels contiguous (channels_last): the vectorised multi-accumulator kernel of the fast path.
            const scalar_t d = grad_and_dot(gop, r, xp, sc, pd != nullptr, g.Cm);
            if (pd != nullptr) pd[i] += d;
            continue;
          }
          if (gop != nullptr) {
            for (int64_t c = 0; c < g.Cm; ++c) gop[c * go.sc] = sc * r[c];
          }
          if (pd != nullptr) {
            scalar_t acc = scalar_t(0);
            for (int64_t c = 0; c < g.Cm; ++c) acc += r[c] * xp[c * x.sc];
            pd[i] += acc;
          }
        }
        if (g.Cb > 0) {
          const scalar_t* rb = r + g.Cm;
          scalar_t* gbp = a.gbyp.data != nullptr ? a.gbyp.data + b * a.gbyp.sb + s * a.gbyp.ss : nullptr;
          const scalar_t* bp = dot_byp ? a.byp.data + b * a.byp.sb + s * a.byp.ss : nullptr;
          if ((gbp == nullptr || a.gbyp.sc == 1 || g.Cb <= 1) && (bp == nullptr || a.byp.sc == 1 || g.Cb <= 1)) {
            const scalar_t d = grad_and_dot(gbp, rb, bp, a.ew, dot_byp, g.Cb);
            if (dot_byp) pd[nops] += d;
          } else {
            if (gbp != nullptr) {
              for (int64_t c = 0; c < g.Cb; ++c) gbp[c * a.gbyp.sc] = a.ew * rb[c];
            }
            if (dot_byp) {
              scalar_t acc = scalar_t(0);
              for (int64_t c = 0; c < g.Cb; ++c) acc += rb[c] * bp[c * a.byp.sc];
              pd[nops] += acc;
            }
          }
        }
      }
    }
  });
  if (a.want_dots) {
    for (int64_t i = 0; i < nd; ++i) dots[i] = pairwise_sum(part.data() + i, items, nd);
  }
}

template <typename scalar_t>
void backward_impl(const at::Tensor& grad, const std::vector<at::Tensor>& ops, const at::Tensor& weights,
                   const std::vector<int64_t>& weight_index, const OptTensor& bypass, const Geometry& geo,
                   const OptTensor& edge_weight, const std::vector<OptTensor>& grad_ops,
                   const OptTensor& grad_bypass, const OptTensor& dots) {
  BwdArgs<scalar_t> a;
  a.geo = geo;
  a.grad = View<const scalar_t>(grad);
  a.ew = edge_weight.has_value() ? edge_weight->data_ptr<scalar_t>()[0] : scalar_t(1);
  a.want_dots = dots.has_value();
  const scalar_t* wp = weights.data_ptr<scalar_t>();
  bool fast = last_dim_contiguous(grad);
  for (size_t i = 0; i < ops.size(); ++i) {
    a.ops.emplace_back(ops[i]);
    // The ops are read for the dots only: without dots they may be zero-stride stand-ins
    // (shuffle_mix's _stand_in), which must not send the whole backward to the row path (8.5x slower).
    if (a.want_dots) fast = fast && last_dim_contiguous(ops[i]);
    if (grad_ops[i].has_value()) {
      a.gops.emplace_back(*grad_ops[i]);
      fast = fast && last_dim_contiguous(*grad_ops[i]);
    } else {
      a.gops.emplace_back();
    }
    a.scale.push_back(a.ew * wp[weight_index[i]]);
  }
  if (geo.Cb > 0) {
    if (bypass.has_value() && a.want_dots) {
      a.byp = View<const scalar_t>(*bypass);
      fast = fast && last_dim_contiguous(*bypass);
    }
    if (grad_bypass.has_value()) {
      a.gbyp = View<scalar_t>(*grad_bypass);
      fast = fast && last_dim_contiguous(*grad_bypass);
    }
  }
  scalar_t* dp = a.want_dots ? dots->data_ptr<scalar_t>() : nullptr;
  fast ? backward_planes(a, dp) : backward_rows(a, dp);
}

Geometry make_geometry(const at::Tensor& t, int64_t mixed_channels, int64_t groups) {
  Geometry g;
  g.B = t.size(0);
  g.C = t.size(1);
  g.S = t.size(2);
  g.Cm = mixed_channels;
  g.Cb = g.C - mixed_channels;
  g.g = groups;
  g.Cg = g.C / groups;
  return g;
}

void check_cpu_dtype(const at::Tensor& t, const at::Tensor& weights, const char* fn) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, fn,
              ": the CPU kernels support float32 and float64, got ", t.scalar_type());
  TORCH_CHECK(weights.scalar_type() == t.scalar_type(), fn, ": weights must be ", t.scalar_type(),
              " for ", t.scalar_type(), " data on the CPU, got ", weights.scalar_type());
}

}  // namespace

void mix_forward_cpu(const at::Tensor& out, const std::vector<at::Tensor>& ops, const at::Tensor& weights,
                     const std::vector<int64_t>& weight_index, const OptTensor& bypass,
                     int64_t mixed_channels, int64_t groups, const OptTensor& edge_weight, bool accumulate) {
  check_cpu_dtype(out, weights, "mix_forward");
  const Geometry geo = make_geometry(out, mixed_channels, groups);
  if (geo.B * geo.C * geo.S == 0) return;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "mix_forward_cpu", [&] {
    forward_impl<scalar_t>(out, ops, weights, weight_index, bypass, geo, edge_weight, accumulate);
  });
}

void mix_backward_cpu(const at::Tensor& grad, const std::vector<at::Tensor>& ops, const at::Tensor& weights,
                      const std::vector<int64_t>& weight_index, const OptTensor& bypass,
                      int64_t mixed_channels, int64_t groups, const OptTensor& edge_weight,
                      const std::vector<OptTensor>& grad_ops, const OptTensor& grad_bypass,
                      const OptTensor& dots) {
  check_cpu_dtype(grad, weights, "mix_backward");
  const Geometry geo = make_geometry(grad, mixed_channels, groups);
  if (geo.B * geo.C * geo.S == 0) {
    if (dots.has_value()) dots->zero_();  // dots are overwritten: empty sums are 0
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "mix_backward_cpu", [&] {
    backward_impl<scalar_t>(grad, ops, weights, weight_index, bypass, geo, edge_weight, grad_ops,
                            grad_bypass, dots);
  });
}

}  // namespace fastnas
