/* Plain C interface of the CUDA shuffle-mix kernels (semantics: docs/kernel_interface.md).
 *
 * mix_kernels.cu implements it with CUDA headers only; mix_cuda.cpp (torch side, no CUDA headers) fills
 * the argument structs from tensors and calls the launchers. Everything here is raw pointers and int64
 * sizes/strides (strides in ELEMENTS, as torch reports them), so this header compiles in both worlds.
 *
 * Every launcher returns 0 (cudaSuccess) or a cudaError_t value: cudaErrorInvalidValue (1) for
 * arguments it refuses, otherwise the result of cudaGetLastError() after its launches.
 * fastnas_cuda_error_string() turns a code into text.
 */
#ifndef FASTNAS_CSRC_CUDA_MIX_KERNELS_H_
#define FASTNAS_CSRC_CUDA_MIX_KERNELS_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Most ops per launch (== fastnas::kMaxOpsCuda in mix.h; they travel as kernel arguments by value). */
#define FASTNAS_CUDA_MAX_OPS 16

/* The data dtype D. The accumulation dtype A (weights, edge_weight, dots, workspace) is double for
 * FASTNAS_DTYPE_FLOAT64 and float otherwise. */
enum {
  FASTNAS_DTYPE_FLOAT32 = 0,
  FASTNAS_DTYPE_FLOAT64 = 1,
  FASTNAS_DTYPE_FLOAT16 = 2,
  FASTNAS_DTYPE_BFLOAT16 = 3
};

/* A (B, channels, S) tensor: data pointer (NULL = absent / None) and its strides in elements. */
typedef struct fastnas_view {
  void* data;
  int64_t sb, sc, ss;
} fastnas_view;

typedef struct fastnas_mix_fwd_args {
  int dtype;            /* FASTNAS_DTYPE_* of out, ops, bypass */
  int n_ops;            /* 0 .. FASTNAS_CUDA_MAX_OPS */
  int64_t B, C, S;      /* out is (B, C, S) */
  int64_t mixed;        /* Cm = mixed_channels; the bypass has C - Cm channels */
  int64_t groups;       /* C % groups == 0 */
  int accumulate;       /* out += v instead of out = v */
  fastnas_view out;
  fastnas_view ops[FASTNAS_CUDA_MAX_OPS];      /* (B, Cm, S) each, first n_ops used */
  int64_t weight_index[FASTNAS_CUDA_MAX_OPS];  /* op i is scaled by weights[weight_index[i]] */
  const void* weights;                         /* dtype A, contiguous */
  fastnas_view bypass;                         /* (B, C - Cm, S); data may be NULL when C == Cm */
  const void* edge_weight;                     /* dtype A, 1 element, or NULL (None) */
} fastnas_mix_fwd_args;

typedef struct fastnas_mix_bwd_args {
  int dtype;
  int n_ops;
  int64_t B, C, S;      /* grad is (B, C, S) */
  int64_t mixed;
  int64_t groups;
  fastnas_view grad;
  fastnas_view ops[FASTNAS_CUDA_MAX_OPS];       /* read only for the dots */
  fastnas_view grad_ops[FASTNAS_CUDA_MAX_OPS];  /* data NULL where grad_ops[i] is None */
  int64_t weight_index[FASTNAS_CUDA_MAX_OPS];
  const void* weights;
  fastnas_view bypass;                          /* read only for dots[-1]; NULL = None */
  fastnas_view grad_bypass;                     /* NULL = None */
  const void* edge_weight;                      /* NULL = None */
  void* dots;                                   /* n_ops + 1 values of dtype A, or NULL (no dots) */
} fastnas_mix_bwd_args;

/* Forward: fills args->out. Launches nothing when B * C * S == 0. */
int fastnas_cuda_mix_forward(const fastnas_mix_fwd_args* args, void* stream);

/* Number of dtype-A elements of device scratch memory ("partials": one row of n_ops + 1 per block)
 * that fastnas_cuda_mix_backward needs for these arguments; 0 when args->dots is NULL or nothing is
 * launched. Depends only on the sizes, strides, dtype and pointer alignment in args. */
int64_t fastnas_cuda_mix_backward_workspace(const fastnas_mix_bwd_args* args);

/* Backward: fills grad_ops, grad_bypass and OVERWRITES dots (deterministic two-pass reduction through
 * `workspace`, which must hold at least fastnas_cuda_mix_backward_workspace(args) elements of dtype A
 * on the same device; it may be NULL when that is 0). When B * C * S == 0 it only zeroes dots
 * (cudaMemsetAsync). */
int fastnas_cuda_mix_backward(const fastnas_mix_bwd_args* args, void* workspace, int64_t workspace_elems,
                              void* stream);

/* Text of a code returned above (cudaGetErrorString). */
const char* fastnas_cuda_error_string(int code);

#ifdef __cplusplus
}  /* extern "C" */
#endif

#endif /* FASTNAS_CSRC_CUDA_MIX_KERNELS_H_ */
