// km.assign on CUDA (docs/ops.md, Assignment): fused squared distance + argmin, and its backward.
//
// Forward: a block owns kRows rows of x and streams tiles of kCenters centers through shared
// memory, kDims features at a time. Each thread keeps a 4x4 register tile of partial sums of
// (x - c)^2 (direct differences: no ||x||^2 - 2xc + ||c||^2 cancellation). After a center
// tile, each row's best (distance, index) and second-best distance are merged across the 16
// threads that share the row with shuffles, ordering by distance and then by index, so ties go
// to the lowest k and every run gives the same bits. The (N, K) matrix is never written.
//
// Exactness (the label contract every backend keeps: the float64 argmin, ties to the lowest k,
// NaN propagates; docs/ops.md): the float32 sum of d squares of rounded differences is within
// a relative (d + 2) 2^-24 of the exact distance (all terms are >= 0), plus an absolute
// d 2^-149 for subnormal terms. When the second-best distance lies within twice that of the
// best, or any distance of the row is not finite (NaN / inf inputs, or squares that overflow
// float32: contract 2), the row's 16 threads recompute all K distances in double from the
// inputs and take the argmin under the reference's rule: the lowest k whose distance is NaN if
// any, else the lowest k among the minima. Random rows almost never take that path; near-tie
// rows do, and then cost one extra pass over the centers.
//
// Plain FFMA tiling: simple. Tuning left for a GPU session: a tensor-core (3xTF32 or BF16)
// path for large K*d under the same re-check, split-K over blocks when N / kRows is below the
// SM count, and 16-byte vector loads.
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

// Relative rounding bound of a computed distance (sum of d squares of rounded differences,
// accumulated with fma in A), and the matching absolute bound for subnormal terms.
template <typename A>
__device__ __forceinline__ A distance_rel_error(int64_t d);
template <>
__device__ __forceinline__ float distance_rel_error<float>(int64_t d) {
  return static_cast<float>(d + 2) * 5.9604645e-8f;  // 2^-24
}
template <>
__device__ __forceinline__ double distance_rel_error<double>(int64_t d) {
  return static_cast<double>(d + 2) * 1.1102230246251565e-16;  // 2^-53
}
template <typename A>
__device__ __forceinline__ A distance_abs_error(int64_t d);
template <>
__device__ __forceinline__ float distance_abs_error<float>(int64_t d) {
  return static_cast<float>(d + 1) * 1.4e-45f;  // 2^-149
}
template <>
__device__ __forceinline__ double distance_abs_error<double>(int64_t d) {
  return static_cast<double>(d + 1) * 4.9406564584124654e-324;  // 2^-1074
}

// a before b in the reference's order: NaN first (lowest index among NaNs), then smaller
// distance, then lower index.
__device__ __forceinline__ bool exact_before(double a, int ia, double b, int ib) {
  const bool a_nan = isnan(a), b_nan = isnan(b);
  if (a_nan != b_nan) return a_nan;
  if (!a_nan && a != b) return a < b;
  return ia < ib;
}

// The argmin of row `row` over all k centers in double, by the 16 lanes of this half warp
// (`mask`), lane `tx` taking centers tx, tx + 16, ...; every lane returns the result.
template <typename T>
__device__ void exact_row_argmin(const T* __restrict__ x, const T* __restrict__ centers,
                                 int64_t row, int k, int64_t d, int tx, unsigned mask,
                                 double* best_out, int* idx_out) {
  double best = 0.0;
  int idx = INT32_MAX;  // none yet
  const T* xr = x + row * d;
  for (int kk = tx; kk < k; kk += kLanes) {
    const T* cr = centers + static_cast<int64_t>(kk) * d;
    double s = 0.0;
    for (int64_t j = 0; j < d; ++j) {
      const double t = static_cast<double>(to_acc(xr[j])) - static_cast<double>(to_acc(cr[j]));
      s = fma(t, t, s);
    }
    if (idx == INT32_MAX || exact_before(s, kk, best, idx)) {
      best = s;
      idx = kk;
    }
  }
  for (int offset = kLanes / 2; offset > 0; offset >>= 1) {
    const double other_best = __shfl_xor_sync(mask, best, offset);
    const int other_idx = __shfl_xor_sync(mask, idx, offset);
    const bool other_wins = other_idx != INT32_MAX &&
                            (idx == INT32_MAX || exact_before(other_best, other_idx, best, idx));
    if (other_wins) {
      best = other_best;
      idx = other_idx;
    }
  }
  *best_out = best;
  *idx_out = idx;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    assign_kernel(const T* __restrict__ x, const T* __restrict__ centers, int64_t n, int k,
                  int64_t d, int64_t* __restrict__ labels, acc_t<T>* __restrict__ dist2) {
  using A = acc_t<T>;
  __shared__ A xs[kDims][kRows + 1];
  __shared__ A cs[kDims][kCenters + 1];

  // Batched problems: blockIdx.y is the problem, every pointer below its own slice.
  const int64_t problem = blockIdx.y;
  x += problem * n * d;
  centers += problem * k * d;
  labels += problem * n;
  dist2 += problem * n;
  const int tx = threadIdx.x % kLanes;  // centers tx + 16 j
  const int ty = threadIdx.x / kLanes;  // rows ty + 16 i; lanes 0-15 / 16-31 of a warp: 2 ty
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const A inf = static_cast<A>(INFINITY);

  // Per row over the center tiles seen so far: the best distance and its index, the second
  // best distance, and whether any distance was not finite.
  A run_best[kPerThread], run_second[kPerThread];
  int run_idx[kPerThread];
  bool run_special[kPerThread];
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    run_best[i] = inf;
    run_second[i] = inf;
    run_idx[i] = 0;
    run_special[i] = false;
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
      A best = inf, second = inf;
      int idx = INT32_MAX;  // no valid candidate in this thread (k0 + tx >= K)
      int special = 0;
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) {
        const int kk = k0 + tx + kLanes * j;
        if (kk >= k) continue;
        const A v = acc[i][j];
        if (!isfinite(v)) special = 1;  // decided by the exact pass; keep the merge total
        if (idx == INT32_MAX || v < best) {
          second = best;
          best = v;
          idx = kk;
        } else if (v < second) {
          second = v;
        }
      }
      // Merge across the half warp: smaller distance wins, the smaller index on equal ones;
      // the loser's best competes for second. The order is total on finite values, so all 16
      // lanes end with the same (best, idx, second); a non-finite one sets `special`.
#pragma unroll
      for (int offset = kLanes / 2; offset > 0; offset >>= 1) {
        const A other_best = __shfl_xor_sync(kFullMask, best, offset);
        const int other_idx = __shfl_xor_sync(kFullMask, idx, offset);
        const A other_second = __shfl_xor_sync(kFullMask, second, offset);
        special |= __shfl_xor_sync(kFullMask, special, offset);
        const bool other_wins =
            other_idx != INT32_MAX &&
            (idx == INT32_MAX || other_best < best || (other_best == best && other_idx < idx));
        const A loser = other_wins ? best : other_best;
        second = fmin(fmin(second, other_second), loser);
        if (other_wins) {
          best = other_best;
          idx = other_idx;
        }
      }
      // Every index of this tile exceeds those of earlier tiles: strict < keeps the lowest.
      if (best < run_best[i]) {
        run_second[i] = fmin(run_best[i], second);
        run_best[i] = best;
        run_idx[i] = idx;
      } else {
        run_second[i] = fmin(run_second[i], best);
      }
      run_special[i] = run_special[i] || special != 0;
    }
  }

  const int half = (threadIdx.x & 31) / kLanes;
  const unsigned half_mask = 0xffffu << (kLanes * half);
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int64_t row = row0 + ty + kLanes * i;
    if (row >= n) continue;  // the same for the 16 lanes of the row
    // Uniform over the half warp too: every lane holds the merged values.
    const A window = run_best[i] * (A(2) * distance_rel_error<A>(d)) + distance_abs_error<A>(d);
    const bool recheck = run_special[i] || !(run_second[i] > run_best[i] + window);
    if (recheck) {
      double best;
      int idx;
      exact_row_argmin(x, centers, row, k, d, tx, half_mask, &best, &idx);
      if (tx == 0) {
        labels[row] = idx;
        dist2[row] = static_cast<A>(best);  // NaN stays NaN; past float32's range: inf
      }
    } else if (tx == 0) {
      labels[row] = run_idx[i];
      dist2[row] = run_best[i] > A(0) ? run_best[i] : A(0);  // a sum of squares; clamp anyway
    }
  }
}

// grad_x[i, :] = 2 g_i (x_i - c_{l_i}); grad_c[l_i, :] -= the same (double atomics). One warp
// per row, lanes over features (coalesced), rows grid-strided.
constexpr int kBackwardThreads = 256;
constexpr int kWarpsPerBlock = kBackwardThreads / 32;

template <typename T>
__global__ void __launch_bounds__(kBackwardThreads)
    assign_backward_kernel(const acc_t<T>* __restrict__ grad_dist2, const T* __restrict__ x,
                           const T* __restrict__ centers, const int64_t* __restrict__ labels,
                           int64_t n, int64_t k, int64_t d, T* __restrict__ grad_x,
                           double* __restrict__ grad_c) {
  using A = acc_t<T>;
  const int lane = threadIdx.x & 31;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  const int64_t warp_stride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t i = warp; i < n; i += warp_stride) {
    const int64_t l = labels[i];
    const bool label_ok = l >= 0 && l < k;
    const double scale = 2.0 * static_cast<double>(grad_dist2[i]);
    for (int64_t j = lane; j < d; j += 32) {
      // double, rounded once: a float32 difference near float32 max overflows (contract 2)
      const double c = label_ok ? static_cast<double>(to_acc(centers[l * d + j])) : 0.0;
      const double g = scale * (static_cast<double>(to_acc(x[i * d + j])) - c);
      grad_x[i * d + j] = from_acc<T>(static_cast<A>(g));
      // double: the per-cluster sum's error does not grow with N (contract 3)
      if (grad_c != nullptr && label_ok) atomicAdd(&grad_c[l * d + j], -g);
    }
  }
}

}  // namespace

cudaError_t assign_launch(Dtype dtype, const void* x, const void* centers, int64_t n, int64_t k,
                          int64_t d, int64_t* labels, void* dist2, cudaStream_t stream,
                          int64_t batch) {
  if (n == 0 || batch == 0) return cudaSuccess;
  if (batch < 0) return cudaErrorInvalidValue;
  // k0 + kCenters must not overflow the kernel's int center index.
  if (k <= 0 || k > INT32_MAX - kCenters || ceil_div(n, kRows) > INT32_MAX)
    return cudaErrorInvalidValue;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const unsigned blocks = static_cast<unsigned>(ceil_div(n, kRows));
    // Problems on grid y, at most kMaxGridY a launch (one launch up to that many problems).
    constexpr int64_t kMaxGridY = 65535;
    for (int64_t b0 = 0; b0 < batch; b0 += kMaxGridY) {
      const dim3 grid(blocks, static_cast<unsigned>(batch - b0 < kMaxGridY ? batch - b0 : kMaxGridY));
      KMGAN_LAUNCH(grid, kThreads, 0, stream, assign_kernel<T>)(
          static_cast<const T*>(x) + b0 * n * d, static_cast<const T*>(centers) + b0 * k * d, n,
          static_cast<int>(k), d, labels + b0 * n, static_cast<acc_t<T>*>(dist2) + b0 * n);
      const cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
    return cudaSuccess;
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
      const cudaError_t err =
          cudaMemsetAsync(grad_centers_acc, 0, sizeof(double) * k * d, stream);
      if (err != cudaSuccess) return err;
    }
    if (n == 0 || d == 0) return cudaSuccess;
    const int blocks = grid_for(n, kWarpsPerBlock);
    KMGAN_LAUNCH(blocks, kBackwardThreads, 0, stream, assign_backward_kernel<T>)(
        static_cast<const A*>(grad_dist2), static_cast<const T*>(x),
        static_cast<const T*>(centers), labels, n, k, d, static_cast<T*>(grad_x),
        static_cast<double*>(grad_centers_acc));
    return cudaGetLastError();
  });
}

}  // namespace kmgan_cuda
