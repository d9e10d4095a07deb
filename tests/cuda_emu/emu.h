// A CPU emulation of the CUDA subset csrc/cuda/mix_kernels.cu uses, so that its kernels RUN (not only
// compile) on machines without a GPU: tests/cuda_emulator.py compiles the unchanged .cu source with the
// host C++ compiler against this header and calls the extern "C" launchers. Three textual rewrites
// make it C++: launches `k<<<grid, block, smem, stream>>>(args)` become
// `::emu::launch(grid, block, smem, stream, k, args)`, `__shared__ T name;` becomes a per-block buffer
// (emu::shared_at) and `reinterpret_cast` becomes the alignment-checking emu::device_cast.
//
// Execution model, faithful where the kernels depend on it:
//  * every CUDA thread of a block is a fiber with its own stack, so __syncthreads() is a real barrier
//    (no thread passes it before all have arrived) and __shfl_down_sync a real exchange among the 32
//    lanes of a warp; blocks run one after another, so __shared__ (a function-local static) is private
//    to the running block;
//  * a thread that returns leaves the block's and its warp's barriers, so an early return cannot hang
//    the emulation; a barrier no live thread can complete aborts with a message (a deadlock);
//  * the launch configuration is validated as the driver does (block <= 1024 threads, grid.x < 2^31,
//    grid.y/z <= 65535): a bad one sets cudaErrorInvalidConfiguration for cudaGetLastError();
//  * __shared__ memory starts as 0xff bytes (NaN) in every block, so reading it before writing it
//    shows up; a pointer cast to a vector type at an address it is not aligned for reports
//    cudaErrorMisalignedAddress, as the GPU would fault;
//  * __half / __nv_bfloat16 convert with round-to-nearest-even (_Float16 / explicit bit arithmetic).
// Not emulated: concurrency between blocks, memory ordering beyond the barriers, warp-synchronous code
// without __sync intrinsics, performance.
#pragma once

#include <ucontext.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};

inline uint3 threadIdx{0, 0, 0};  // of the running fiber (emulated threads share one OS thread)
inline uint3 blockIdx{0, 0, 0};
inline dim3 blockDim;
inline dim3 gridDim;

// ---- runtime API subset ------------------------------------------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorMisalignedAddress = 716,
};
typedef struct CUstream_st* cudaStream_t;

namespace emu {
inline cudaError_t last_error = cudaSuccess;
}

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = emu::last_error;
  emu::last_error = cudaSuccess;
  return e;
}
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorMisalignedAddress: return "misaligned address";
  }
  return "unknown error";
}
inline cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}

// ---- 16-bit floats -----------------------------------------------------------------------------
struct __half {
  uint16_t x;
};
struct __nv_bfloat16 {
  uint16_t x;
};
static_assert(sizeof(__half) == 2 && sizeof(__nv_bfloat16) == 2, "16-bit types must be 2 bytes");

inline float __half2float(__half h) {
  _Float16 f;
  std::memcpy(&f, &h.x, 2);
  return static_cast<float>(f);
}
inline __half __float2half_rn(float v) {
  const _Float16 f = static_cast<_Float16>(v);  // IEEE conversion: round to nearest even
  __half h;
  std::memcpy(&h.x, &f, 2);
  return h;
}
inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t bits = static_cast<uint32_t>(h.x) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  __nv_bfloat16 h;
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    h.x = static_cast<uint16_t>((bits >> 16) | 0x0040u);  // NaN stays a (quiet) NaN
  } else {
    h.x = static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);  // nearest even
  }
  return h;
}

// ---- blocks, barriers, warps -------------------------------------------------------------------
// Every CUDA thread of a block is a fiber (ucontext) on the calling OS thread; a scheduler runs them
// round-robin, each until it waits at a barrier or returns. One OS thread and no locks: 256 OS threads
// per block with real barriers were ~50x slower on a 2-core machine (kernel context switches).
namespace emu {

constexpr size_t kStackBytes = 256 * 1024;

struct Barrier {
  int participants = 0, arrived = 0;
  unsigned long generation = 0;
  void arrive() {
    if (++arrived >= participants) release();
  }
  void drop() {  // a returned thread leaves; the others may now be complete
    --participants;
    if (arrived > 0 && arrived >= participants) release();
  }
  void release() {
    arrived = 0;
    ++generation;
  }
};

struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  uint3 tid;
  unsigned linear = 0;
  bool finished = false;
  const Barrier* waiting = nullptr;  // runnable again once waiting->generation != wait_generation
  unsigned long wait_generation = 0;
};

struct Block {
  Barrier bar;
  std::map<const void*, std::unique_ptr<unsigned char[]>> shared;  // per __shared__ declaration
  std::vector<Barrier> warps;
  Fiber* running = nullptr;
  ucontext_t scheduler;
  std::function<void()> body;
};

inline Block* block = nullptr;
inline unsigned linear_tid = 0;
alignas(16) inline unsigned char warp_slots[32][32][16];  // [warp][lane][bytes]

inline void fiber_main() {
  Block* b = block;
  b->body();
  Fiber* f = b->running;
  f->finished = true;
  b->warps[f->linear / 32].drop();
  b->bar.drop();
  // returning resumes uc_link, the scheduler
}

// Waits at `bar` (arrival already counted): back to the scheduler until the barrier releases.
inline void wait_at(Barrier& bar, unsigned long generation) {
  if (bar.generation != generation) return;  // this arrival completed it
  Fiber* f = block->running;
  f->waiting = &bar;
  f->wait_generation = generation;
  swapcontext(&f->ctx, &block->scheduler);
}

inline void sync(Barrier& bar) {
  const unsigned long g = bar.generation;
  bar.arrive();
  wait_at(bar, g);
}

template <typename... KArgs, typename... Args>
void launch(dim3 grid, dim3 blk, size_t /*smem*/, cudaStream_t /*stream*/, void (*kernel)(KArgs...),
            Args&&... args) {
  const unsigned long long threads = 1ull * blk.x * blk.y * blk.z;
  if (threads == 0 || threads > 1024 || blk.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.x > 2147483647u || grid.y > 65535u || grid.z > 65535u) {
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  gridDim = grid;
  blockDim = blk;
  const unsigned n = static_cast<unsigned>(threads);
  std::vector<Fiber> fibers(n);
  for (unsigned t = 0; t < n; ++t) {
    fibers[t].stack.reset(new char[kStackBytes]);
    fibers[t].tid = uint3{t % blk.x, (t / blk.x) % blk.y, t / (blk.x * blk.y)};
    fibers[t].linear = t;
  }
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        Block b;
        b.bar.participants = static_cast<int>(n);
        b.warps.resize((n + 31) / 32);
        for (unsigned w = 0; w < b.warps.size(); ++w) {
          b.warps[w].participants = static_cast<int>(n - 32 * w < 32 ? n - 32 * w : 32);
        }
        b.body = [&] { kernel(args...); };  // by value, as kernel parameters are
        block = &b;
        blockIdx = uint3{x, y, z};
        for (Fiber& f : fibers) {
          f.finished = false;
          f.waiting = nullptr;
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = f.stack.get();
          f.ctx.uc_stack.ss_size = kStackBytes;
          f.ctx.uc_link = &b.scheduler;
          makecontext(&f.ctx, fiber_main, 0);
        }
        for (;;) {
          bool progressed = false, all_done = true;
          for (Fiber& f : fibers) {
            if (f.finished) continue;
            all_done = false;
            if (f.waiting != nullptr && f.waiting->generation == f.wait_generation) continue;
            f.waiting = nullptr;
            b.running = &f;
            threadIdx = f.tid;
            linear_tid = f.linear;
            swapcontext(&b.scheduler, &f.ctx);
            progressed = true;
          }
          if (all_done) break;
          if (!progressed) {
            std::fprintf(stderr, "emu: deadlock in block (%u, %u, %u): every live thread waits at a barrier "
                                 "that cannot complete\n", x, y, z);
            std::abort();
          }
        }
        block = nullptr;
      }
    }
  }
}

}  // namespace emu

inline void __syncthreads() { emu::sync(emu::block->bar); }

// Lanes exchange through their warp's slots between two warp barriers; a lane whose source lane is
// past the warp gets its own value back, as on the GPU.
template <typename T>
T __shfl_down_sync(unsigned /*mask: the kernels use full warps*/, T v, int delta) {
  static_assert(sizeof(T) <= 16, "shuffle of a type wider than 16 bytes");
  const unsigned warp = emu::linear_tid / 32;
  const int lane = static_cast<int>(emu::linear_tid % 32);
  emu::Barrier& bar = emu::block->warps[warp];
  std::memcpy(emu::warp_slots[warp][lane], &v, sizeof(T));
  emu::sync(bar);
  T r = v;
  if (lane + delta < bar.participants) std::memcpy(&r, emu::warp_slots[warp][lane + delta], sizeof(T));
  emu::sync(bar);
  return r;
}

namespace emu {

// `__shared__ T name;` is rewritten to `auto& name = ::emu::shared_at<T>(&site)`: one buffer per
// declaration and block, filled with 0xff bytes (NaN in every float type) when the block starts using
// it, so a read before any thread wrote shows up in the results as it would as garbage on a GPU.
template <typename T>
T& shared_at(const void* site) {
  std::unique_ptr<unsigned char[]>& buf = block->shared[site];
  if (!buf) {
    buf.reset(new unsigned char[sizeof(T)]);
    std::memset(buf.get(), 0xff, sizeof(T));
  }
  return *reinterpret_cast<T*>(buf.get());
}

// `reinterpret_cast<To>(p)` is rewritten to this: a pointer cast to a type whose alignment the address
// does not have (a 128-bit vector access at an address that is not a multiple of 16) faults on a GPU
// with cudaErrorMisalignedAddress; here the access still happens (x86 tolerates it) and the launch
// reports that error.
template <typename To, typename From>
To device_cast(From p) {
  if constexpr (std::is_pointer_v<To> && std::is_pointer_v<From>) {
    using Pointee = std::remove_cv_t<std::remove_pointer_t<To>>;
    if constexpr (!std::is_void_v<Pointee>) {
      if (reinterpret_cast<uintptr_t>(p) % alignof(Pointee) != 0) last_error = cudaErrorMisalignedAddress;
    }
  }
  return reinterpret_cast<To>(p);
}

}  // namespace emu
