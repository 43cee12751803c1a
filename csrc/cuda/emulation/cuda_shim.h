// CUDA on CPU threads: just enough of the CUDA runtime and device API for csrc/cuda/*.cu to
// compile with the host C++ compiler (g++ >= 12, -std=c++20) and run on std::threads, so the
// kernels execute in CI without a GPU (issue 11, section 1). Used only by the test harness
// (kmgan_ext/_cuda_emulated.py builds it); nvcc never sees this file.
//
// Model (stricter than a GPU where it matters for correctness):
//  * every GPU thread of a block is its own execution context (a fiber with its own stack, on
//    the block's runner thread: runtime.cpp); a thread runs until it reaches a barrier, a warp
//    shuffle or its end, then the next runs, in forward, reverse or seeded-random order. So
//    threads of a warp are NOT in lockstep: code that relies on implicit warp-synchronous
//    execution reads stale data and fails;
//  * __syncthreads() waits for every live thread of the block; __shfl_*_sync exchange through
//    a per-warp slot array and wait for every lane the mask names;
//  * blocks run in forward, reverse or seeded-random order, several in flight at once, each on
//    its own OS thread; `__shared__` variables are thread_local statics of that runner thread,
//    so blocks in flight never share them, as on a GPU;
//  * atomics through std::atomic_ref; __half / __nv_bfloat16 are 16-bit storage types with
//    round-to-nearest-even conversions (torch's .to(dtype) rounding).
// Built with -fsanitize=thread, the fibers are announced to ThreadSanitizer as threads with no
// ordering between them except the barriers and shuffles, so it reports shared-memory races
// inside a block as well as global-memory races between blocks.
#pragma once

#include <math.h>  // the C++ wrapper: float overloads of fma/sqrt/fabs in the global namespace

#include <atomic>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>

#define KMGAN_CUDA_EMULATION 1

// ------------------------------------------------------------------------------ qualifiers
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define __align__(n) alignas(n)
#define __constant__ static const

// ------------------------------------------------------------------------------ runtime types
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
using cudaError = cudaError_t;
struct CUstream_st;
using cudaStream_t = CUstream_st*;
enum cudaDeviceAttr : int { cudaDevAttrMultiProcessorCount = 16 };

struct uint3 {
  unsigned int x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
      : x(x_), y(y_), z(z_) {}
};

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t err);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream = nullptr);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, int kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);

// ------------------------------------------------------------------------------ thread indices
namespace kmgan_emu {
struct BlockContext;  // runtime.cpp
extern thread_local uint3 t_thread_idx, t_block_idx;
extern thread_local dim3 t_block_dim, t_grid_dim;
extern thread_local BlockContext* t_block;
void syncthreads();
uint64_t shfl_exchange(unsigned mask, uint64_t bits, int src_lane);
}  // namespace kmgan_emu

#define threadIdx (::kmgan_emu::t_thread_idx)
#define blockIdx (::kmgan_emu::t_block_idx)
#define blockDim (::kmgan_emu::t_block_dim)
#define gridDim (::kmgan_emu::t_grid_dim)
constexpr int warpSize = 32;

inline void __syncthreads() { ::kmgan_emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::kmgan_emu::shfl_exchange(mask, 0, 0); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

// ------------------------------------------------------------------------------ warp shuffles
namespace kmgan_emu {
template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of <= 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}
inline int lane_id() { return static_cast<int>(t_thread_idx.x & 31u); }
}  // namespace kmgan_emu

// width = 32 only (the kernels use the full warp); the source lane wraps as on the GPU.
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  (void)width;
  return ::kmgan_emu::from_bits<T>(
      ::kmgan_emu::shfl_exchange(mask, ::kmgan_emu::to_bits(v), src_lane & 31));
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  (void)width;
  return __shfl_sync(mask, v, ::kmgan_emu::lane_id() ^ lane_mask);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  (void)width;
  const int lane = ::kmgan_emu::lane_id();
  const int src = lane - static_cast<int>(delta);
  const T other = __shfl_sync(mask, v, src < 0 ? lane : src);
  return src < 0 ? v : other;  // lanes below delta keep their own value
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  (void)width;
  const int lane = ::kmgan_emu::lane_id();
  const int src = lane + static_cast<int>(delta);
  const T other = __shfl_sync(mask, v, src > 31 ? lane : src);
  return src > 31 ? v : other;
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  // Every lane publishes its predicate; the ballot is read lane by lane through the exchange.
  unsigned out = 0;
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    const uint64_t b = ::kmgan_emu::shfl_exchange(mask, predicate != 0, l);
    out |= static_cast<unsigned>(b != 0) << l;
  }
  return out;
}

// ------------------------------------------------------------------------------ atomics
template <typename T>
inline T atomicAdd(T* address, T val) {
  if constexpr (std::is_floating_point_v<T>) {
    // A compare-and-swap loop on the bits (as CUDA's own fallback for double atomics): a
    // plain integer atomic, which ThreadSanitizer models exactly.
    using Bits = std::conditional_t<sizeof(T) == 8, uint64_t, uint32_t>;
    std::atomic_ref<Bits> bits(*reinterpret_cast<Bits*>(address));
    Bits old = bits.load(std::memory_order_relaxed);
    while (!bits.compare_exchange_weak(old, std::bit_cast<Bits>(std::bit_cast<T>(old) + val),
                                       std::memory_order_relaxed)) {
    }
    return std::bit_cast<T>(old);
  } else {
    return std::atomic_ref<T>(*address).fetch_add(val, std::memory_order_relaxed);
  }
}
template <typename T>
inline T atomicSub(T* address, T val) {
  return std::atomic_ref<T>(*address).fetch_sub(val, std::memory_order_relaxed);
}
template <typename T>
inline T atomicMin(T* address, T val) {
  std::atomic_ref<T> a(*address);
  T old = a.load(std::memory_order_relaxed);
  while (val < old && !a.compare_exchange_weak(old, val, std::memory_order_relaxed)) {
  }
  return old;
}
template <typename T>
inline T atomicMax(T* address, T val) {
  std::atomic_ref<T> a(*address);
  T old = a.load(std::memory_order_relaxed);
  while (old < val && !a.compare_exchange_weak(old, val, std::memory_order_relaxed)) {
  }
  return old;
}
template <typename T>
inline T atomicCAS(T* address, T compare, T val) {
  std::atomic_ref<T>(*address).compare_exchange_strong(compare, val, std::memory_order_relaxed);
  return compare;  // the old value either way
}
template <typename T>
inline T atomicExch(T* address, T val) {
  return std::atomic_ref<T>(*address).exchange(val, std::memory_order_relaxed);
}

// ------------------------------------------------------------------------------ 16-bit floats
// Storage layout of torch's at::Half / at::BFloat16 (one uint16_t).
struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};

// _Float16 conversions are IEEE round-to-nearest-even (g++ 12 on x86-64, libgcc/F16C).
inline float __half2float(__half h) {
  _Float16 f;
  std::memcpy(&f, &h.bits, 2);
  return static_cast<float>(f);
}
inline __half __float2half_rn(float v) {
  const _Float16 f = static_cast<_Float16>(v);
  __half h;
  std::memcpy(&h.bits, &f, 2);
  return h;
}
inline __half __float2half(float v) { return __float2half_rn(v); }
inline float __bfloat162float(__nv_bfloat16 b) {
  return std::bit_cast<float>(static_cast<uint32_t>(b.bits) << 16);
}
inline __nv_bfloat16 __float2bfloat16_rn(float v) {
  const uint32_t u = std::bit_cast<uint32_t>(v);
  __nv_bfloat16 b;
  if (std::isnan(v)) {
    b.bits = static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet, sign kept
  } else {
    const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);  // ties to even
    b.bits = static_cast<uint16_t>((u + rounding) >> 16);
  }
  return b;
}
inline __nv_bfloat16 __float2bfloat16(float v) { return __float2bfloat16_rn(v); }

// ------------------------------------------------------------------------------ launches
namespace kmgan_emu {
// Runs grid x block GPU threads of `thunk(record)` (see KMGAN_LAUNCH in common.cuh); returns
// the launch error (also recorded for cudaGetLastError).
using Thunk = void (*)(const void* record);
cudaError_t launch(dim3 grid, dim3 block, size_t shared_bytes, Thunk thunk, const void* record);
void* dynamic_shared();

template <typename... P>
struct KernelLaunch {
  void (*kernel)(P...);
  dim3 grid, block;
  size_t shared_bytes;

  struct Record {
    void (*kernel)(P...);
    std::tuple<P...> args;
  };

  static void thunk(const void* r) {
    const Record& rec = *static_cast<const Record*>(r);
    std::apply(rec.kernel, rec.args);
  }

  cudaError_t operator()(P... args) const {
    const Record rec{kernel, std::tuple<P...>(args...)};
    return launch(grid, block, shared_bytes, &thunk, &rec);
  }
};

template <typename... P>
KernelLaunch<P...> make_launch(dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t,
                               void (*kernel)(P...)) {
  return KernelLaunch<P...>{kernel, grid, block, shared_bytes};
}
}  // namespace kmgan_emu
