// Device-side helpers shared by csrc/cuda/*.cu: accumulation type and conversions per storage
// dtype, the dtype switch, fixed-order warp/block sums, and the one-block "finish" kernel that
// turns per-block partials into a scalar. No torch headers here (STYLE.md rule 5).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "launchers.h"

// A kernel launch both compilers accept: KMGAN_LAUNCH(grid, block, shared_bytes, stream,
// kernel)(args...) is kernel<<<grid, block, shared_bytes, stream>>>(args...) under nvcc, and a
// run of the CPU block runner under the test harness (emulation/cuda_shim.h, issue 11), which
// compiles these same sources with the host compiler. The kernel comes last so that template
// arguments with commas need no extra parentheses.
#ifdef KMGAN_CUDA_EMULATION
#define KMGAN_LAUNCH(grid, block, shared_bytes, stream, ...) \
  ::kmgan_emu::make_launch(grid, block, shared_bytes, stream, &__VA_ARGS__)
// The block's dynamic shared memory (the launch's shared_bytes) as `type* name`.
#define KMGAN_DYNAMIC_SHARED(type, name) \
  type* name = static_cast<type*>(::kmgan_emu::dynamic_shared())
#else
#define KMGAN_LAUNCH(grid, block, shared_bytes, stream, ...) \
  __VA_ARGS__<<<grid, block, shared_bytes, stream>>>
#define KMGAN_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#endif

namespace kmgan_cuda {

// ------------------------------------------------------------------------------ dtypes
// Accumulate in float32, in float64 for float64 storage (docs/ops.md, Conventions).
template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccOf<T>::type;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

// Round-to-nearest-even, as torch's .to(dtype).
template <typename T>
__device__ __forceinline__ T from_acc(acc_t<T> v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>{}) with the storage type named by `dtype`; f returns a cudaError_t.
template <typename F>
cudaError_t dispatch_dtype(Dtype dtype, F&& f) {
  switch (dtype) {
    case Dtype::kFloat32:
      return f(TypeTag<float>{});
    case Dtype::kFloat16:
      return f(TypeTag<__half>{});
    case Dtype::kBFloat16:
      return f(TypeTag<__nv_bfloat16>{});
    case Dtype::kFloat64:
      return f(TypeTag<double>{});
  }
  return cudaErrorInvalidValue;
}

// ------------------------------------------------------------------------------ launch helpers
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Grid of a grid-stride kernel: enough blocks to fill the GPU a few times over, never more
// than the work needs. Only the block count depends on the device, never a result: every
// kernel using this reduces in an order fixed by the data's indices or uses atomics anyway.
inline int grid_for(int64_t work_items, int items_per_block, int blocks_per_sm = 4) {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    sms = 132;  // an H100 SXM; the caller's launch check reports the real error
  }
  const int64_t need = ceil_div(work_items, items_per_block);
  const int64_t cap = static_cast<int64_t>(sms) * blocks_per_sm;
  return static_cast<int>(need < cap ? (need > 0 ? need : 1) : cap);
}

// ------------------------------------------------------------------------------ reductions
constexpr unsigned kFullMask = 0xffffffffu;

// Butterfly sum: every lane ends with the same bits (IEEE addition is commutative, and each
// step pairs the same two partial sums on both lanes), so the order is fixed run to run.
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// Sum over a 1-D block (blockDim.x a multiple of 32, at most 1024) in a fixed order; the result
// is valid in thread 0. Safe to call repeatedly (the first barrier protects the scratch).
template <typename A>
__device__ A block_sum(A v) {
  __shared__ A warp_totals[32];
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) warp_totals[warp] = v;
  __syncthreads();
  A total = 0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) total += warp_totals[w];
  }
  return total;
}

constexpr int kFinishThreads = 256;

// out[0] = (take_sqrt ? sqrt(sum) : sum) / divisor over n partials, summed in a fixed order
// in A and rounded once to Out (float64 partials of a float32 result: a sum past 3.4e38 whose
// finish fits stays finite). One block of kFinishThreads.
template <typename A, typename Out = A>
__global__ void __launch_bounds__(kFinishThreads)
    finish_sum_kernel(const A* __restrict__ partials, int64_t n, bool take_sqrt, A divisor,
                      Out* __restrict__ out) {
  A s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += partials[i];
  s = block_sum(s);
  if (threadIdx.x == 0) out[0] = static_cast<Out>((take_sqrt ? sqrt(s) : s) / divisor);
}

// ------------------------------------------------------------------------------ cosine keys
// metric="cosine" (assign_cosine_cuda.cu, assign_topk_cuda.cu): the label-deciding key is the
// float64 reference's (reference.cosine_keys), reproduced bitwise: every product and sum
// rounded on its own, in index order.

// a * b and a + b each rounded to double, never fused into an FMA.
__device__ __forceinline__ double mul_rn(double a, double b) {
#ifdef KMGAN_CUDA_EMULATION
  return a * b;  // the harness compiles with -ffp-contract=off
#else
  return __dmul_rn(a, b);
#endif
}
__device__ __forceinline__ double add_rn(double a, double b) {
#ifdef KMGAN_CUDA_EMULATION
  return a + b;
#else
  return __dadd_rn(a, b);
#endif
}

// sum_j a_j b_j in double, index order, each step rounded (reference._cosine_parts).
template <typename T>
__device__ double canonical_dot(const T* a, const T* b, int64_t d) {
  double s = 0.0;
  for (int64_t j = 0; j < d; ++j) {
    s = add_rn(s, mul_rn(static_cast<double>(to_acc(a[j])), static_cast<double>(to_acc(b[j]))));
  }
  return s;
}

// dot |dot| / (||x||^2 ||c||^2), 0 where the denominator is 0; nx2 = canonical_dot(x, x, d).
template <typename T>
__device__ double cosine_key(const T* x, double nx2, const T* c, int64_t d) {
  const double dot = canonical_dot(x, c, d);
  const double den2 = mul_rn(nx2, canonical_dot(c, c, d));
  return den2 == 0.0 ? 0.0 : mul_rn(dot, fabs(dot)) / den2;
}

// 2 - 2 cos(x, c) (0 cos where ||x|| ||c|| = 0), clamped at 0, NaN kept: dist2 of the cosine ops.
template <typename T>
__device__ double cosine_dist2(const T* x, const T* c, int64_t d) {
  const double den = sqrt(canonical_dot(x, x, d)) * sqrt(canonical_dot(c, c, d));
  const double cs = den == 0.0 ? 0.0 : canonical_dot(x, c, d) / den;
  const double dist = 2.0 - 2.0 * cs;
  return dist > 0.0 ? dist : (dist == dist ? 0.0 : dist);
}

// (key, k) a before (key, k) b in the reference's order: NaN first (lowest k among NaNs),
// then the larger key, then the lower k.
__device__ __forceinline__ bool key_before(double a, int64_t ia, double b, int64_t ib) {
  const bool a_nan = isnan(a), b_nan = isnan(b);
  if (a_nan != b_nan) return a_nan;
  if (!a_nan && a != b) return a > b;
  return ia < ib;
}

}  // namespace kmgan_cuda
