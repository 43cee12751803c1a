// km.assign on CUDA (DESIGN.md 4.1): fused squared distance + argmin, and its backward.
//
// Forward: a block owns kRows rows of x and streams tiles of kCenters centers through shared
// memory, kDims features at a time. Each thread keeps a 4x4 register tile of partial sums of
// (x - c)^2 (direct differences: no ||x||^2 - 2xc + ||c||^2 cancellation, so the float32 sums
// are as exact as the reference's formula allows). After a center tile, each row's best
// (distance, index) is merged across the 16 threads that share the row with shuffles, ordering
// by distance and then by index, so ties go to the lowest k without atomics and every run
// gives the same bits. The (N, K) matrix is never written.
//
// Plain FFMA tiling: exact and simple. Tuning left for a GPU session: a tensor-core (3xTF32 or
// BF16 + fp32 re-check of the top candidates) path for large K*d, split-K over blocks when
// N / kRows is below the SM count, and 16-byte vector loads.
#include "common.cuh"

namespace kmgan_cuda {
namespace {

constexpr int kRows = 64;     // rows of x per block
constexpr int kCenters = 64;  // centers per tile
constexpr int kDims = 32;     // features per shared-memory stage
constexpr int kThreads = 256;  // 16 x 16; each thread: 4 rows x 4 centers
constexpr int kLanes = 16;    // threads sharing one row (a half warp)
constexpr int kPerThread = 4;
static_assert(kLanes * kPerThread == kRows && kLanes * kPerThread == kCenters, "tile shape");
static_assert(kThreads == kLanes * kLanes, "16 x 16 threads");
static_assert((kRows * kDims) % kThreads == 0 && (kCenters * kDims) % kThreads == 0, "loads");

// Loads a (rows x kDims) tile of a row-major (n_rows, d) matrix, transposed into tile[kDims][.]
// and converted to A; out-of-range rows and features read as 0. Zero features add 0 to every
// distance; out-of-range centers are masked when merging, out-of-range rows never written.
template <typename T, typename A, int kTileRows>
__device__ __forceinline__ void load_tile_transposed(A (*tile)[kTileRows + 1],
                                                     const T* __restrict__ src, int64_t n_rows,
                                                     int64_t d, int64_t row0, int64_t d0) {
#pragma unroll
  for (int s = 0; s < kTileRows * kDims / kThreads; ++s) {
    const int idx = threadIdx.x + s * kThreads;
    const int r = idx / kDims;  // a warp reads 32 consecutive features of one row: coalesced
    const int c = idx % kDims;
    const int64_t row = row0 + r, col = d0 + c;
    // +1 padding: the 32 lanes write tile[c][r] for c = 0..31 into 32 different banks.
    tile[c][r] = (row < n_rows && col < d) ? to_acc(src[row * d + col]) : A(0);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    assign_kernel(const T* __restrict__ x, const T* __restrict__ centers, int64_t n, int k,
                  int64_t d, int64_t* __restrict__ labels, acc_t<T>* __restrict__ dist2) {
  using A = acc_t<T>;
  __shared__ A xs[kDims][kRows + 1];
  __shared__ A cs[kDims][kCenters + 1];

  const int tx = threadIdx.x % kLanes;  // centers tx + 16 j
  const int ty = threadIdx.x / kLanes;  // rows ty + 16 i; lanes 0-15 / 16-31 of a warp share ty
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;

  // Running best per row over the center tiles seen so far. Index 0 with +inf stands for "no
  // finite distance yet": if every distance is +inf (overflow), label 0 is the lowest tie.
  A run_best[kPerThread];
  int run_idx[kPerThread];
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    run_best[i] = static_cast<A>(INFINITY);
    run_idx[i] = 0;
  }

  for (int k0 = 0; k0 < k; k0 += kCenters) {
    A acc[kPerThread][kPerThread];
#pragma unroll
    for (int i = 0; i < kPerThread; ++i)
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) acc[i][j] = 0;

    for (int64_t d0 = 0; d0 < d; d0 += kDims) {
      __syncthreads();  // the previous stage's reads are done before it is overwritten
      load_tile_transposed<T, A, kRows>(xs, x, n, d, row0, d0);
      load_tile_transposed<T, A, kCenters>(cs, centers, k, d, k0, d0);
      __syncthreads();
#pragma unroll 8
      for (int dd = 0; dd < kDims; ++dd) {
        A xv[kPerThread], cv[kPerThread];
#pragma unroll
        for (int i = 0; i < kPerThread; ++i) xv[i] = xs[dd][ty + kLanes * i];  // broadcast
#pragma unroll
        for (int j = 0; j < kPerThread; ++j) cv[j] = cs[dd][tx + kLanes * j];  // 16 banks
#pragma unroll
        for (int i = 0; i < kPerThread; ++i)
#pragma unroll
          for (int j = 0; j < kPerThread; ++j) {
            const A diff = xv[i] - cv[j];
            acc[i][j] = fma(diff, diff, acc[i][j]);
          }
      }
    }

#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      // This thread's candidates come in increasing k, so a strict < keeps the lowest on ties.
      A best = static_cast<A>(INFINITY);
      int idx = INT32_MAX;  // no valid candidate in this thread (k0 + tx >= K)
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) {
        const int kk = k0 + tx + kLanes * j;
        if (kk < k && (acc[i][j] < best || idx == INT32_MAX)) {
          best = acc[i][j];
          idx = kk;
        }
      }
      // Merge across the half warp: smaller distance wins, the smaller index on equal ones.
      // The order is total, so all 16 lanes end with the same (best, idx).
#pragma unroll
      for (int offset = kLanes / 2; offset > 0; offset >>= 1) {
        const A other_best = __shfl_xor_sync(kFullMask, best, offset);
        const int other_idx = __shfl_xor_sync(kFullMask, idx, offset);
        if (other_best < best || (other_best == best && other_idx < idx)) {
          best = other_best;
          idx = other_idx;
        }
      }
      // Every index of this tile exceeds those of earlier tiles: strict < keeps the lowest.
      if (best < run_best[i]) {
        run_best[i] = best;
        run_idx[i] = idx;
      }
    }
  }

  if (tx == 0) {
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int64_t row = row0 + ty + kLanes * i;
      if (row < n) {
        labels[row] = run_idx[i];
        dist2[row] = run_best[i] > A(0) ? run_best[i] : A(0);  // a sum of squares; clamp anyway
      }
    }
  }
}

// grad_x[i, :] = 2 g_i (x_i - c_{l_i}); grad_c[l_i, :] -= the same (float atomics). One warp
// per row, lanes over features (coalesced), rows grid-strided.
constexpr int kBackwardThreads = 256;
constexpr int kWarpsPerBlock = kBackwardThreads / 32;

template <typename T>
__global__ void __launch_bounds__(kBackwardThreads)
    assign_backward_kernel(const acc_t<T>* __restrict__ grad_dist2, const T* __restrict__ x,
                           const T* __restrict__ centers, const int64_t* __restrict__ labels,
                           int64_t n, int64_t k, int64_t d, T* __restrict__ grad_x,
                           acc_t<T>* __restrict__ grad_c) {
  using A = acc_t<T>;
  const int lane = threadIdx.x & 31;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  const int64_t warp_stride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t i = warp; i < n; i += warp_stride) {
    const int64_t l = labels[i];
    const bool label_ok = l >= 0 && l < k;
    const A scale = A(2) * grad_dist2[i];
    for (int64_t j = lane; j < d; j += 32) {
      const A c = label_ok ? to_acc(centers[l * d + j]) : A(0);
      const A g = scale * (to_acc(x[i * d + j]) - c);
      grad_x[i * d + j] = from_acc<T>(g);
      if (grad_c != nullptr && label_ok) atomicAdd(&grad_c[l * d + j], -g);
    }
  }
}

}  // namespace

cudaError_t assign_launch(Dtype dtype, const void* x, const void* centers, int64_t n, int64_t k,
                          int64_t d, int64_t* labels, void* dist2, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  // k0 + kCenters must not overflow the kernel's int center index.
  if (k <= 0 || k > INT32_MAX - kCenters || ceil_div(n, kRows) > INT32_MAX)
    return cudaErrorInvalidValue;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const unsigned blocks = static_cast<unsigned>(ceil_div(n, kRows));
    KMGAN_LAUNCH(blocks, kThreads, 0, stream, assign_kernel<T>)(
        static_cast<const T*>(x), static_cast<const T*>(centers), n, static_cast<int>(k), d,
        labels, static_cast<acc_t<T>*>(dist2));
    return cudaGetLastError();
  });
}

cudaError_t assign_backward_launch(Dtype dtype, const void* grad_dist2, const void* x,
                                   const void* centers, const int64_t* labels, int64_t n,
                                   int64_t k, int64_t d, void* grad_x, void* grad_centers_acc,
                                   cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    if (grad_centers_acc != nullptr && k * d > 0) {
      const cudaError_t err = cudaMemsetAsync(grad_centers_acc, 0, sizeof(A) * k * d, stream);
      if (err != cudaSuccess) return err;
    }
    if (n == 0 || d == 0) return cudaSuccess;
    const int blocks = grid_for(n, kWarpsPerBlock);
    KMGAN_LAUNCH(blocks, kBackwardThreads, 0, stream, assign_backward_kernel<T>)(
        static_cast<const A*>(grad_dist2), static_cast<const T*>(x),
        static_cast<const T*>(centers), labels, n, k, d, static_cast<T*>(grad_x),
        static_cast<A*>(grad_centers_acc));
    return cudaGetLastError();
  });
}

}  // namespace kmgan_cuda
