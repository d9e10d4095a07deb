// CUDA kernels of the fused shuffle-mix (semantics: docs/kernel_interface.md; design: README.md here).
// CUDA headers only (no torch): the torch side is mix_cuda.cpp, the interface mix_kernels.h.
//
// Notation: concatenated channel c in [0, C) (mixed for c < Cm, bypass for c >= Cm) lands at output
// channel o(c) = (c % Cg) * g + c / Cg with Cg = C / g. Every kernel walks (b, c), so the mixed /
// bypass decision is taken once per row (or per contiguous channel range), never per element.
//
// Two layouts per direction, picked on the host from the strides of the tensors the call touches:
//  * rows:     one work row = (b, c), the inner loop runs over s (coalesced when stride(2) == 1;
//              128-bit loads/stores when every touched tensor allows it: VEC = 16 / sizeof(T)).
//  * channels: one work row = (b, s), the inner loop runs over c (coalesced when stride(1) == 1, i.e.
//              channels_last after flatten(2)).
// Blocks are always kThreads threads shaped (tx, ty): tx threads along the inner dimension (the
// smallest power of two >= its extent, at most kThreads), ty = kThreads / tx rows per block. Every
// loop is a grid-stride loop, so any size fits the grid limits (gridDim.y <= 65535).
//
// The op lists travel in the kernel parameters (by value, __grid_constant__, indexed at run time) and
// are processed in chunks of kOpChunk independent loads, which keeps kOpChunk loads in flight per
// thread without unrolling all kMaxOps ops (code size, compile time, registers).
//
// Backward dots: every thread accumulates its share in its own column of shared memory (A = float, or
// double for double data); at the end the block reduces each column set in a fixed order into one row
// of n_ops + 1 partials, and reduce_partials_kernel sums the rows in a fixed order. The result depends
// only on the launch configuration (shapes, strides, alignment), never on timing: no atomics.
#include "mix_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdint.h>

// Kernel parameters that are indexed at run time must not be copied to local memory: __grid_constant__
// (CUDA >= 11.7, sm_70+) lets the kernel read them in place.
#if defined(__CUDACC_VER_MAJOR__) && \
    (__CUDACC_VER_MAJOR__ > 11 || (__CUDACC_VER_MAJOR__ == 11 && __CUDACC_VER_MINOR__ >= 7)) && \
    (!defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 700)
#define FASTNAS_GRID_CONSTANT __grid_constant__
#else
#define FASTNAS_GRID_CONSTANT
#endif

namespace {

constexpr int kMaxOps = FASTNAS_CUDA_MAX_OPS;
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kOpChunk = 4;                // op loads issued together per thread
constexpr int64_t kMaxGridX = 2147483647;  // 2^31 - 1
constexpr int64_t kMaxGridY = 65535;
// Upper bound on the backward grid when dots are wanted: bounds the partials (kBwdMaxBlocks * 17
// values) and the final reduction, while leaving several waves of blocks on any GPU.
constexpr int64_t kBwdMaxBlocks = 4096;

// ------------------------------------------------------------------------------------------------
// Types: data T, accumulation A, vector width (16 bytes) and conversions.
// ------------------------------------------------------------------------------------------------

template <typename T>
struct TypeInfo;
template <>
struct TypeInfo<float> {
  using acc = float;
};
template <>
struct TypeInfo<double> {
  using acc = double;
};
template <>
struct TypeInfo<__half> {
  using acc = float;
};
template <>
struct TypeInfo<__nv_bfloat16> {
  using acc = float;
};
template <typename T>
using acc_t = typename TypeInfo<T>::acc;
template <typename T>
constexpr int vec_width() {
  return static_cast<int>(16 / sizeof(T));
}

// Explicit intrinsics only: torch builds with __CUDA_NO_HALF_CONVERSIONS__ / __CUDA_NO_BFLOAT16_CONVERSIONS__.
__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_acc(acc_t<T> v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ double from_acc<double>(double v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// N consecutive elements, aligned to their total size (16 bytes for N = vec_width): one LDG/STG.128.
template <typename T, int N>
struct alignas(sizeof(T) * N) VecT {
  T v[N];
};

// a[k] = p[k] for k < N, converted to A. N > 1 only where the host checked stride(2) == 1 and 16-byte
// alignment of every row start.
template <int N, typename T>
__device__ __forceinline__ void load_acc(const T* p, acc_t<T> (&a)[N]) {
  if constexpr (N == 1) {
    a[0] = to_acc(*p);
  } else {
    const VecT<T, N> v = *reinterpret_cast<const VecT<T, N>*>(p);
#pragma unroll
    for (int k = 0; k < N; ++k) a[k] = to_acc(v.v[k]);
  }
}

template <int N, typename T>
__device__ __forceinline__ void store_acc(T* p, const acc_t<T> (&a)[N]) {
  if constexpr (N == 1) {
    *p = from_acc<T>(a[0]);
  } else {
    VecT<T, N> v;
#pragma unroll
    for (int k = 0; k < N; ++k) v.v[k] = from_acc<T>(a[k]);
    *reinterpret_cast<VecT<T, N>*>(p) = v;
  }
}

// q = a / d, r = a % d for 0 <= a, 0 < d; 32-bit division when both fit (the common case).
__device__ __forceinline__ void divmod(int64_t a, int64_t d, int64_t& q, int64_t& r) {
  if ((static_cast<uint64_t>(a) | static_cast<uint64_t>(d)) <= 0xffffffffull) {
    const uint32_t q32 = static_cast<uint32_t>(a) / static_cast<uint32_t>(d);
    q = q32;
    r = a - static_cast<int64_t>(q32) * d;
  } else {
    q = a / d;
    r = a - q * d;
  }
}

// A (B, channels, S) tensor inside a kernel: pointer and strides in elements.
template <typename T>
struct KView {
  T* p;
  int64_t sb, sc, ss;
  // Element (b, c, s); N > 1 (vector paths) implies ss == 1, so the multiply disappears there.
  template <int N>
  __device__ __forceinline__ T* at(int64_t b, int64_t c, int64_t s) const {
    return p + b * sb + c * sc + (N > 1 ? s : s * ss);
  }
};

// Shuffle geometry. C < 2^31 (checked on the host), so channel indices are 32-bit in o_of.
struct Geo {
  int64_t B, S;
  int32_t C, Cm, g, Cg;
  // concatenated channel c lands at output channel o(c)
  __device__ __forceinline__ int64_t o_of(int64_t c) const {
    const uint32_t uc = static_cast<uint32_t>(c), ucg = static_cast<uint32_t>(Cg);
    const uint32_t q = uc / ucg;
    return static_cast<int64_t>((uc - q * ucg) * static_cast<uint32_t>(g) + q);
  }
};

template <typename T>
struct FwdParams {
  Geo geo;
  int n_ops;
  int accumulate;
  KView<T> out;
  KView<const T> ops[kMaxOps];
  int32_t widx[kMaxOps];
  const acc_t<T>* weights;
  const acc_t<T>* ew;  // nullptr: no edge weight
  KView<const T> byp;  // p == nullptr when Cb == 0
};

template <typename T>
struct BwdParams {
  Geo geo;
  int n_ops;       // ops (read for the dots only)
  int n_g;         // grad_ops that are not None, compacted into gops[0 .. n_g)
  int mixed_work;  // 1 when mixed rows have anything to do
  int byp_work;    // 1 when bypass rows have anything to do
  KView<const T> grad;
  KView<const T> ops[kMaxOps];
  KView<T> gops[kMaxOps];
  int32_t gidx[kMaxOps];  // weight index of gops[j]
  const acc_t<T>* weights;
  const acc_t<T>* ew;
  KView<const T> byp;  // p == nullptr: no bypass dot
  KView<T> gbyp;       // p == nullptr: grad_bypass is None
  acc_t<T>* partial;   // nullptr: no dots; else gridDim.x * gridDim.y rows of n_ops + 1
};

static_assert(sizeof(BwdParams<double>) <= 4000, "kernel parameters must stay below 4 KiB");

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;  // complete in lane 0
}

__device__ __forceinline__ int thread_id() { return static_cast<int>(threadIdx.y * blockDim.x + threadIdx.x); }

// ------------------------------------------------------------------------------------------------
// Forward
// ------------------------------------------------------------------------------------------------

// v[k] = ((w0 * x0[k] + w1 * x1[k]) + w2 * x2[k]) + ... in A (the order of the interface), 0 without
// ops; x_i = ops[i][b, c, s + k]. Loads are issued kOpChunk ops at a time.
template <int VEC, typename T>
__device__ __forceinline__ void mix_ops(const FwdParams<T>& p, const acc_t<T>* w, int64_t b, int64_t c,
                                        int64_t s, acc_t<T> (&v)[VEC]) {
  using A = acc_t<T>;
#pragma unroll
  for (int k = 0; k < VEC; ++k) v[k] = A(0);
#pragma unroll 1
  for (int i0 = 0; i0 < p.n_ops; i0 += kOpChunk) {
    A t[kOpChunk][VEC];
#pragma unroll
    for (int j = 0; j < kOpChunk; ++j) {
      if (i0 + j < p.n_ops) load_acc<VEC>(p.ops[i0 + j].template at<VEC>(b, c, s), t[j]);
    }
#pragma unroll
    for (int j = 0; j < kOpChunk; ++j) {
      const int i = i0 + j;
      if (i < p.n_ops) {
        const A wi = w[i];
        if (i == 0) {
#pragma unroll
          for (int k = 0; k < VEC; ++k) v[k] = wi * t[j][k];
        } else {
#pragma unroll
          for (int k = 0; k < VEC; ++k) v[k] = v[k] + wi * t[j][k];
        }
      }
    }
  }
}

// y = (accumulate ? y : 0) + v * ew, added in A (ew == 1 without edge weight: v * 1 == v exactly).
template <int VEC, typename T>
__device__ __forceinline__ void store_out(T* y, acc_t<T> (&v)[VEC], acc_t<T> ew, bool accumulate) {
  if (accumulate) {
    acc_t<T> old[VEC];
    load_acc<VEC>(static_cast<const T*>(y), old);
#pragma unroll
    for (int k = 0; k < VEC; ++k) v[k] = old[k] + v[k] * ew;
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) v[k] = v[k] * ew;
  }
  store_acc<VEC>(y, v);
}

// s_w[i] = weights[widx[i]]; returns the edge weight (1 when None). Ends with __syncthreads().
template <typename T>
__device__ __forceinline__ acc_t<T> fwd_prologue(const FwdParams<T>& p, acc_t<T>* s_w) {
  const int tid = thread_id();
  if (tid < p.n_ops) s_w[tid] = p.weights[p.widx[tid]];
  __syncthreads();
  return p.ew != nullptr ? *p.ew : acc_t<T>(1);
}

// Rows layout: row r = (b, c); the threads of a row step over S in vectors of VEC elements.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) fwd_rows_kernel(const FASTNAS_GRID_CONSTANT FwdParams<T> p) {
  using A = acc_t<T>;
  __shared__ A s_w[kMaxOps];
  const A ew = fwd_prologue(p, s_w);
  const Geo& g = p.geo;
  const bool accumulate = p.accumulate != 0;
  const int64_t rows = g.B * g.C;
  const int64_t nvec = g.S / VEC;  // VEC > 1 only when S % VEC == 0
  const int64_t v0 = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const int64_t vstep = static_cast<int64_t>(gridDim.y) * blockDim.x;
  const int64_t rstep = static_cast<int64_t>(gridDim.x) * blockDim.y;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; r < rows; r += rstep) {
    int64_t b, c;
    divmod(r, g.C, b, c);
    const int64_t o = g.o_of(c);
    if (c < g.Cm) {
      for (int64_t v = v0; v < nvec; v += vstep) {
        const int64_t s = v * VEC;
        A acc[VEC];
        mix_ops<VEC>(p, s_w, b, c, s, acc);
        store_out<VEC>(p.out.template at<VEC>(b, o, s), acc, ew, accumulate);
      }
    } else {
      const int64_t cb = c - g.Cm;
      for (int64_t v = v0; v < nvec; v += vstep) {
        const int64_t s = v * VEC;
        A acc[VEC];
        load_acc<VEC>(p.byp.template at<VEC>(b, cb, s), acc);
        store_out<VEC>(p.out.template at<VEC>(b, o, s), acc, ew, accumulate);
      }
    }
  }
}

// Channels layout: row r = (b, s); the threads of a row step over the concatenated channels c.
template <typename T>
__global__ void __launch_bounds__(kThreads) fwd_channels_kernel(const FASTNAS_GRID_CONSTANT FwdParams<T> p) {
  using A = acc_t<T>;
  __shared__ A s_w[kMaxOps];
  const A ew = fwd_prologue(p, s_w);
  const Geo& g = p.geo;
  const bool accumulate = p.accumulate != 0;
  const int64_t rows = g.B * g.S;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const int64_t cstep = static_cast<int64_t>(gridDim.y) * blockDim.x;
  const int64_t rstep = static_cast<int64_t>(gridDim.x) * blockDim.y;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; r < rows; r += rstep) {
    int64_t b, s;
    divmod(r, g.S, b, s);
    for (int64_t c = c0; c < g.C; c += cstep) {
      A acc[1];
      if (c < g.Cm) {
        mix_ops<1>(p, s_w, b, c, s, acc);
      } else {
        load_acc<1>(p.byp.template at<1>(b, c - g.Cm, s), acc);
      }
      store_out<1>(p.out.template at<1>(b, g.o_of(c), s), acc, ew, accumulate);
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Backward
// ------------------------------------------------------------------------------------------------

// Shared state of a backward block: the grad_ops scales and one column of dot accumulators per thread
// (s_dot[i][tid]: dots 0 .. n_ops - 1 of the ops, n_ops of the bypass; conflict-free, no registers
// indexed at run time).
template <typename T>
struct BwdShared {
  acc_t<T> scale[kMaxOps];  // ew * weights[gidx[j]] for the compacted grad_ops
  acc_t<T> dot[kMaxOps + 1][kThreads];
};

// Fills the scales and zeroes this thread's dot column; returns ew. Ends with __syncthreads().
template <typename T>
__device__ __forceinline__ acc_t<T> bwd_prologue(const BwdParams<T>& p, BwdShared<T>& sh) {
  using A = acc_t<T>;
  const int tid = thread_id();
  const A ew = p.ew != nullptr ? *p.ew : A(1);
  if (tid < p.n_g) sh.scale[tid] = ew * p.weights[p.gidx[tid]];
  if (p.partial != nullptr) {
    for (int i = 0; i <= p.n_ops; ++i) sh.dot[i][tid] = A(0);
  }
  __syncthreads();
  return ew;
}

// One vector of a mixed row (b, c) at s: grad_ops[j] = scale_j * gs; dot[i] += gs . ops[i].
template <int VEC, typename T>
__device__ __forceinline__ void bwd_mixed_step(const BwdParams<T>& p, BwdShared<T>& sh, const acc_t<T> (&gs)[VEC],
                                               int64_t b, int64_t c, int64_t s, bool dots, int tid) {
  using A = acc_t<T>;
#pragma unroll 4
  for (int j = 0; j < p.n_g; ++j) {
    const A sc = sh.scale[j];
    A t[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) t[k] = sc * gs[k];
    store_acc<VEC>(p.gops[j].template at<VEC>(b, c, s), t);
  }
  if (dots) {
#pragma unroll 1
    for (int i0 = 0; i0 < p.n_ops; i0 += kOpChunk) {
      A t[kOpChunk][VEC];
#pragma unroll
      for (int j = 0; j < kOpChunk; ++j) {
        if (i0 + j < p.n_ops) load_acc<VEC>(p.ops[i0 + j].template at<VEC>(b, c, s), t[j]);
      }
#pragma unroll
      for (int j = 0; j < kOpChunk; ++j) {
        if (i0 + j < p.n_ops) {
          A d = gs[0] * t[j][0];
#pragma unroll
          for (int k = 1; k < VEC; ++k) d += gs[k] * t[j][k];
          sh.dot[i0 + j][tid] += d;
        }
      }
    }
  }
}

// Block reduction of the dot columns into partial[block][0 .. n_ops] in a fixed order: warp w takes
// dots w, w + kWarps, ...; lane l sums the columns l, l + 32, ... in order, then the warp tree-sums.
// Every thread of the block must call it.
template <typename T>
__device__ __forceinline__ void write_partials(const BwdParams<T>& p, BwdShared<T>& sh) {
  using A = acc_t<T>;
  __syncthreads();
  const int tid = thread_id();
  const int lane = tid & 31, warp = tid >> 5;
  const int nd = p.n_ops + 1;
  const int64_t blk = static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x;
  for (int i = warp; i < nd; i += kWarps) {  // warp-uniform
    A sum = A(0);
#pragma unroll
    for (int k = 0; k < kThreads / 32; ++k) sum += sh.dot[i][lane + 32 * k];
    sum = warp_sum(sum);
    if (lane == 0) p.partial[blk * nd + i] = sum;
  }
}

// Rows layout: row r = (b, c) of the concatenated channels; gs is row o(c) of grad.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) bwd_rows_kernel(const FASTNAS_GRID_CONSTANT BwdParams<T> p) {
  using A = acc_t<T>;
  __shared__ BwdShared<T> sh;
  const A ew = bwd_prologue(p, sh);
  const Geo& g = p.geo;
  const int tid = thread_id();
  const bool dots = p.partial != nullptr;
  const bool byp_grad = p.gbyp.p != nullptr;
  const bool byp_dot = p.byp.p != nullptr;  // only set with dots
  const int64_t rows = g.B * g.C;
  const int64_t nvec = g.S / VEC;
  const int64_t v0 = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const int64_t vstep = static_cast<int64_t>(gridDim.y) * blockDim.x;
  const int64_t rstep = static_cast<int64_t>(gridDim.x) * blockDim.y;
  A dot_byp = A(0);
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; r < rows; r += rstep) {
    int64_t b, c;
    divmod(r, g.C, b, c);
    const int64_t o = g.o_of(c);
    if (c < g.Cm) {
      if (!p.mixed_work) continue;
      for (int64_t v = v0; v < nvec; v += vstep) {
        const int64_t s = v * VEC;
        A gs[VEC];
        load_acc<VEC>(p.grad.template at<VEC>(b, o, s), gs);
        bwd_mixed_step<VEC>(p, sh, gs, b, c, s, dots, tid);
      }
    } else {
      if (!p.byp_work) continue;
      const int64_t cb = c - g.Cm;
      // One branch per row picks a loop without branches.
      if (byp_grad) {
        for (int64_t v = v0; v < nvec; v += vstep) {
          const int64_t s = v * VEC;
          A gs[VEC], t[VEC];
          load_acc<VEC>(p.grad.template at<VEC>(b, o, s), gs);
#pragma unroll
          for (int k = 0; k < VEC; ++k) t[k] = ew * gs[k];
          store_acc<VEC>(p.gbyp.template at<VEC>(b, cb, s), t);
          if (byp_dot) {
            load_acc<VEC>(p.byp.template at<VEC>(b, cb, s), t);
#pragma unroll
            for (int k = 0; k < VEC; ++k) dot_byp += gs[k] * t[k];
          }
        }
      } else {
        for (int64_t v = v0; v < nvec; v += vstep) {  // byp_work without byp_grad: the dot only
          const int64_t s = v * VEC;
          A gs[VEC], t[VEC];
          load_acc<VEC>(p.grad.template at<VEC>(b, o, s), gs);
          load_acc<VEC>(p.byp.template at<VEC>(b, cb, s), t);
#pragma unroll
          for (int k = 0; k < VEC; ++k) dot_byp += gs[k] * t[k];
        }
      }
    }
  }
  if (dots) {  // uniform over the grid
    sh.dot[p.n_ops][tid] = dot_byp;
    write_partials(p, sh);
  }
}

// Channels layout: row r = (b, s); threads step over the concatenated channels c (the mixed range
// [0, Cm) and the bypass range [Cm, C) are contiguous, so at most one warp per row diverges).
template <typename T>
__global__ void __launch_bounds__(kThreads) bwd_channels_kernel(const FASTNAS_GRID_CONSTANT BwdParams<T> p) {
  using A = acc_t<T>;
  __shared__ BwdShared<T> sh;
  const A ew = bwd_prologue(p, sh);
  const Geo& g = p.geo;
  const int tid = thread_id();
  const bool dots = p.partial != nullptr;
  const bool byp_grad = p.gbyp.p != nullptr;
  const bool byp_dot = p.byp.p != nullptr;
  const int64_t rows = g.B * g.S;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const int64_t cstep = static_cast<int64_t>(gridDim.y) * blockDim.x;
  const int64_t rstep = static_cast<int64_t>(gridDim.x) * blockDim.y;
  A dot_byp = A(0);
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; r < rows; r += rstep) {
    int64_t b, s;
    divmod(r, g.S, b, s);
    for (int64_t c = c0; c < g.C; c += cstep) {
      const bool mixed = c < g.Cm;
      if (!(mixed ? p.mixed_work : p.byp_work)) continue;
      A gs[1];
      load_acc<1>(p.grad.template at<1>(b, g.o_of(c), s), gs);
      if (mixed) {
        bwd_mixed_step<1>(p, sh, gs, b, c, s, dots, tid);
      } else {
        const int64_t cb = c - g.Cm;
        if (byp_grad) {
          const A t[1] = {ew * gs[0]};
          store_acc<1>(p.gbyp.template at<1>(b, cb, s), t);
        }
        if (byp_dot) {
          A t[1];
          load_acc<1>(p.byp.template at<1>(b, cb, s), t);
          dot_byp += gs[0] * t[0];
        }
      }
    }
  }
  if (dots) {
    sh.dot[p.n_ops][tid] = dot_byp;
    write_partials(p, sh);
  }
}

// dots[j] = sum over blocks k (fixed order) of partial[k * nd + j]; one block per dot.
template <typename A>
__global__ void __launch_bounds__(kThreads) reduce_partials_kernel(const A* partial, int64_t nblocks, int nd,
                                                                    A* dots) {
  __shared__ A red[kWarps];
  const int j = blockIdx.x;
  A sum = A(0);
  for (int64_t k = threadIdx.x; k < nblocks; k += kThreads) sum += partial[k * nd + j];
  sum = warp_sum(sum);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    A total = A(0);
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total += red[w];
    dots[j] = total;
  }
}

// ------------------------------------------------------------------------------------------------
// Host side: validation, layout choice, launch configuration.
// ------------------------------------------------------------------------------------------------

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

struct LaunchCfg {
  dim3 grid, block;
  int64_t blocks() const { return static_cast<int64_t>(grid.x) * grid.y; }
};

// rows >= 0 work rows of `inner` >= 0 items each (vectors along S, or channels); the grid has at most
// max_blocks blocks (>= 1), the loops in the kernels cover the rest.
LaunchCfg make_cfg(int64_t rows, int64_t inner, int64_t max_blocks) {
  int64_t tx = 1;
  while (tx < inner && tx < kThreads) tx <<= 1;
  const int64_t ty = kThreads / tx;
  const int64_t gy = max64(1, min64(min64(ceil_div(inner, tx), kMaxGridY), max_blocks));
  const int64_t gx = max64(1, min64(min64(ceil_div(rows, ty), kMaxGridX), max64(1, max_blocks / gy)));
  LaunchCfg cfg;
  cfg.block = dim3(static_cast<unsigned>(tx), static_cast<unsigned>(ty), 1);
  cfg.grid = dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy), 1);
  return cfg;
}

// A tensor the call touches, for the layout decisions.
struct Touched {
  const void* p;
  int64_t sb, sc, ss, channels;
};

Touched touched(const fastnas_view& v, int64_t channels) { return Touched{v.data, v.sb, v.sc, v.ss, channels}; }

struct Layout {
  bool channels;  // channels layout (else rows)
  bool vec;       // rows layout with VEC = 16 / elem_size
};

Layout choose_layout(const Touched* t, int n, int64_t B, int64_t C, int64_t S, int elem_size) {
  Layout l{false, false};
  // Channels layout when more touched tensors are contiguous along channels than along S.
  int s_fast = 0, c_fast = 0;
  for (int i = 0; i < n; ++i) {
    if (t[i].ss == 1) {
      ++s_fast;
    } else if (t[i].sc == 1) {
      ++c_fast;
    }
  }
  l.channels = S > 1 && C > 1 && c_fast > s_fast;
  if (l.channels) return l;
  // 128-bit vectors: S a multiple of the width, stride(2) == 1 and every row start 16-byte aligned
  // (strides of size-1 dimensions never matter).
  const int64_t vec = 16 / elem_size;
  bool ok = S % vec == 0;
  for (int i = 0; i < n && ok; ++i) {
    ok = t[i].ss == 1 && reinterpret_cast<uintptr_t>(t[i].p) % 16 == 0 && (B <= 1 || t[i].sb % vec == 0) &&
         (t[i].channels <= 1 || t[i].sc % vec == 0);
  }
  l.vec = ok;
  return l;
}

int elem_size_of(int dtype) {
  switch (dtype) {
    case FASTNAS_DTYPE_FLOAT32: return 4;
    case FASTNAS_DTYPE_FLOAT64: return 8;
    case FASTNAS_DTYPE_FLOAT16: return 2;
    case FASTNAS_DTYPE_BFLOAT16: return 2;
    default: return 0;
  }
}

bool geometry_ok(int dtype, int n_ops, int64_t B, int64_t C, int64_t S, int64_t Cm, int64_t groups) {
  return elem_size_of(dtype) != 0 && n_ops >= 0 && n_ops <= kMaxOps && B >= 0 && C >= 0 && S >= 0 &&
         C <= 2147483647 && groups >= 1 && C % groups == 0 && Cm >= 0 && Cm <= C;
}

Geo make_geo(int64_t B, int64_t C, int64_t S, int64_t Cm, int64_t groups) {
  Geo g;
  g.B = B;
  g.S = S;
  g.C = static_cast<int32_t>(C);
  g.Cm = static_cast<int32_t>(Cm);
  g.g = static_cast<int32_t>(groups);
  g.Cg = static_cast<int32_t>(C / groups);
  return g;
}

template <typename T>
KView<T> kview(const fastnas_view& v) {
  return KView<T>{static_cast<T*>(v.data), v.sb, v.sc, v.ss};
}
template <typename T>
KView<T> kview_none() {
  return KView<T>{nullptr, 0, 0, 0};
}

// ---- forward ----

template <typename T>
void launch_forward(const fastnas_mix_fwd_args& a, cudaStream_t stream) {
  using A = acc_t<T>;
  constexpr int kVec = vec_width<T>();
  FwdParams<T> p;
  p.geo = make_geo(a.B, a.C, a.S, a.mixed, a.groups);
  p.n_ops = a.n_ops;
  p.accumulate = a.accumulate != 0;
  p.out = kview<T>(a.out);
  Touched t[kMaxOps + 2];
  int nt = 0;
  t[nt++] = touched(a.out, a.C);
  for (int i = 0; i < kMaxOps; ++i) {
    if (i < a.n_ops) {
      p.ops[i] = kview<const T>(a.ops[i]);
      p.widx[i] = static_cast<int32_t>(a.weight_index[i]);
      if (a.mixed > 0) t[nt++] = touched(a.ops[i], a.mixed);
    } else {
      p.ops[i] = kview_none<const T>();
      p.widx[i] = 0;
    }
  }
  p.weights = static_cast<const A*>(a.weights);
  p.ew = static_cast<const A*>(a.edge_weight);
  const int64_t Cb = a.C - a.mixed;
  p.byp = Cb > 0 ? kview<const T>(a.bypass) : kview_none<const T>();
  if (Cb > 0) t[nt++] = touched(a.bypass, Cb);

  const Layout l = choose_layout(t, nt, a.B, a.C, a.S, static_cast<int>(sizeof(T)));
  const int64_t no_cap = kMaxGridX * kMaxGridY;
  if (l.channels) {
    const LaunchCfg cfg = make_cfg(a.B * a.S, a.C, no_cap);
    fwd_channels_kernel<T><<<cfg.grid, cfg.block, 0, stream>>>(p);
  } else if (l.vec) {
    const LaunchCfg cfg = make_cfg(a.B * a.C, a.S / kVec, no_cap);
    fwd_rows_kernel<T, kVec><<<cfg.grid, cfg.block, 0, stream>>>(p);
  } else {
    const LaunchCfg cfg = make_cfg(a.B * a.C, a.S, no_cap);
    fwd_rows_kernel<T, 1><<<cfg.grid, cfg.block, 0, stream>>>(p);
  }
}

// ---- backward ----

// Everything the backward launch needs, computed identically for the workspace query and the launch.
template <typename T>
struct BwdPlan {
  BwdParams<T> p;
  Layout layout;
  LaunchCfg cfg;
  bool dots;
  bool launch;  // false: nothing to compute (dots, if wanted, are all zero)
};

template <typename T>
BwdPlan<T> plan_backward(const fastnas_mix_bwd_args& a) {
  using A = acc_t<T>;
  constexpr int kVec = vec_width<T>();
  BwdPlan<T> plan;
  BwdParams<T>& p = plan.p;
  plan.dots = a.dots != nullptr;
  const int64_t Cb = a.C - a.mixed;
  p.geo = make_geo(a.B, a.C, a.S, a.mixed, a.groups);
  p.n_ops = a.n_ops;
  p.grad = kview<const T>(a.grad);
  p.weights = static_cast<const A*>(a.weights);
  p.ew = static_cast<const A*>(a.edge_weight);
  p.partial = nullptr;  // set at launch
  Touched t[2 * kMaxOps + 3];
  int nt = 0;
  t[nt++] = touched(a.grad, a.C);
  for (int i = 0; i < kMaxOps; ++i) {
    p.ops[i] = kview_none<const T>();
    p.gops[i] = kview_none<T>();
    p.gidx[i] = 0;
  }
  int ng = 0;
  for (int i = 0; i < a.n_ops; ++i) {
    p.ops[i] = kview<const T>(a.ops[i]);
    if (plan.dots && a.mixed > 0) t[nt++] = touched(a.ops[i], a.mixed);
    if (a.grad_ops[i].data != nullptr) {
      p.gops[ng] = kview<T>(a.grad_ops[i]);
      p.gidx[ng] = static_cast<int32_t>(a.weight_index[i]);
      if (a.mixed > 0) t[nt++] = touched(a.grad_ops[i], a.mixed);
      ++ng;
    }
  }
  p.n_g = ng;
  const bool byp_dot = plan.dots && Cb > 0 && a.bypass.data != nullptr;
  const bool byp_grad = Cb > 0 && a.grad_bypass.data != nullptr;
  p.byp = byp_dot ? kview<const T>(a.bypass) : kview_none<const T>();
  p.gbyp = byp_grad ? kview<T>(a.grad_bypass) : kview_none<T>();
  if (byp_dot) t[nt++] = touched(a.bypass, Cb);
  if (byp_grad) t[nt++] = touched(a.grad_bypass, Cb);
  p.mixed_work = a.mixed > 0 && (ng > 0 || (plan.dots && a.n_ops > 0));
  p.byp_work = byp_dot || byp_grad;
  plan.launch = a.B > 0 && a.C > 0 && a.S > 0 && (p.mixed_work || p.byp_work);

  plan.layout = choose_layout(t, nt, a.B, a.C, a.S, static_cast<int>(sizeof(T)));
  const int64_t max_blocks = plan.dots ? kBwdMaxBlocks : kMaxGridX * kMaxGridY;
  if (plan.layout.channels) {
    plan.cfg = make_cfg(a.B * a.S, a.C, max_blocks);
  } else {
    plan.cfg = make_cfg(a.B * a.C, plan.layout.vec ? a.S / kVec : a.S, max_blocks);
  }
  return plan;
}

template <typename T>
int64_t workspace_of(const fastnas_mix_bwd_args& a) {
  if (a.dots == nullptr) return 0;
  const BwdPlan<T> plan = plan_backward<T>(a);
  return plan.launch ? plan.cfg.blocks() * (a.n_ops + 1) : 0;
}

template <typename T>
cudaError_t launch_backward(const fastnas_mix_bwd_args& a, void* workspace, int64_t workspace_elems,
                            cudaStream_t stream) {
  using A = acc_t<T>;
  constexpr int kVec = vec_width<T>();
  BwdPlan<T> plan = plan_backward<T>(a);
  const int nd = a.n_ops + 1;
  if (!plan.launch) {
    // Empty sums (or nothing needed at all): dots are overwritten with zeros (all-zero bits == 0.0).
    return plan.dots ? cudaMemsetAsync(a.dots, 0, sizeof(A) * nd, stream) : cudaSuccess;
  }
  const LaunchCfg& cfg = plan.cfg;
  if (plan.dots) {
    if (workspace == nullptr || workspace_elems < cfg.blocks() * nd) return cudaErrorInvalidValue;
    plan.p.partial = static_cast<A*>(workspace);
  }
  if (plan.layout.channels) {
    bwd_channels_kernel<T><<<cfg.grid, cfg.block, 0, stream>>>(plan.p);
  } else if (plan.layout.vec) {
    bwd_rows_kernel<T, kVec><<<cfg.grid, cfg.block, 0, stream>>>(plan.p);
  } else {
    bwd_rows_kernel<T, 1><<<cfg.grid, cfg.block, 0, stream>>>(plan.p);
  }
  if (plan.dots) {
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    reduce_partials_kernel<A><<<nd, kThreads, 0, stream>>>(plan.p.partial, cfg.blocks(), nd,
                                                          static_cast<A*>(a.dots));
  }
  return cudaGetLastError();
}

}  // namespace

extern "C" int fastnas_cuda_mix_forward(const fastnas_mix_fwd_args* a, void* stream) {
  if (a == nullptr || !geometry_ok(a->dtype, a->n_ops, a->B, a->C, a->S, a->mixed, a->groups)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (a->B == 0 || a->C == 0 || a->S == 0) return static_cast<int>(cudaSuccess);  // nothing to write
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (a->dtype) {
    case FASTNAS_DTYPE_FLOAT32: launch_forward<float>(*a, s); break;
    case FASTNAS_DTYPE_FLOAT64: launch_forward<double>(*a, s); break;
    case FASTNAS_DTYPE_FLOAT16: launch_forward<__half>(*a, s); break;
    case FASTNAS_DTYPE_BFLOAT16: launch_forward<__nv_bfloat16>(*a, s); break;
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
  return static_cast<int>(cudaGetLastError());
}

extern "C" int64_t fastnas_cuda_mix_backward_workspace(const fastnas_mix_bwd_args* a) {
  if (a == nullptr || !geometry_ok(a->dtype, a->n_ops, a->B, a->C, a->S, a->mixed, a->groups)) return 0;
  switch (a->dtype) {
    case FASTNAS_DTYPE_FLOAT32: return workspace_of<float>(*a);
    case FASTNAS_DTYPE_FLOAT64: return workspace_of<double>(*a);
    case FASTNAS_DTYPE_FLOAT16: return workspace_of<__half>(*a);
    case FASTNAS_DTYPE_BFLOAT16: return workspace_of<__nv_bfloat16>(*a);
    default: return 0;
  }
}

extern "C" int fastnas_cuda_mix_backward(const fastnas_mix_bwd_args* a, void* workspace, int64_t workspace_elems,
                                         void* stream) {
  if (a == nullptr || !geometry_ok(a->dtype, a->n_ops, a->B, a->C, a->S, a->mixed, a->groups)) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  cudaError_t err = cudaErrorInvalidValue;
  switch (a->dtype) {
    case FASTNAS_DTYPE_FLOAT32: err = launch_backward<float>(*a, workspace, workspace_elems, s); break;
    case FASTNAS_DTYPE_FLOAT64: err = launch_backward<double>(*a, workspace, workspace_elems, s); break;
    case FASTNAS_DTYPE_FLOAT16: err = launch_backward<__half>(*a, workspace, workspace_elems, s); break;
    case FASTNAS_DTYPE_BFLOAT16: err = launch_backward<__nv_bfloat16>(*a, workspace, workspace_elems, s); break;
    default: break;
  }
  return static_cast<int>(err);
}

extern "C" const char* fastnas_cuda_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}
