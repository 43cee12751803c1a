// km.pairwise_l1 on CUDA (KM-GAN Eq. 7, docs/ops.md): O(N log N d) through sorting. The
// binding sorts each feature column with torch's sort; the kernels here take the sorted columns.
//
// Forward, one block per feature column, as a sum over the gaps between consecutive sorted
// values: the gap z[t+1] - z[t] is crossed by every pair with one value at positions <= t and
// the other above, so
//   within a batch:  sum_{i != j} |v_i - v_j| = sum_t (z[t+1] - z[t]) * 2 (t + 1) (N - t - 1),
//   between batches (a and b sorted together): pairs crossing gap t are
//                    A_t (n_b - B_t) + B_t (n_a - A_t), A_t / B_t = rows of a / b at <= t.
// Every term is >= 0: no cancellation (the textbook sum_j (2j - N + 1) z[j] cancels large
// terms of both signs). Ties give zero gaps. A_t is a block-wide prefix count of a's rows.
// A second launch sums the per-column totals in one block; all sums have a fixed order.
//
// Backward, one launch per gradient: a value's gradient is #(sorted < v) - #(sorted > v), two
// binary searches (ties count on neither side: autograd's sign(0) = 0).
#include "common.cuh"

namespace kmgan_cuda {
namespace {

constexpr int kGapThreads = 256;

// Inclusive prefix sum of v over the 1-D block; *total receives the block's sum.
__device__ __forceinline__ int block_inclusive_scan(int v, int* total) {
  __shared__ int warp_sums[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int other = __shfl_up_sync(kFullMask, v, offset);
    if (lane >= offset) v += other;
  }
  __syncthreads();  // the previous call's readers are done with warp_sums
  if (lane == 31) warp_sums[warp] = v;
  __syncthreads();
  int before = 0, all = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) {
    const int s = warp_sums[w];
    if (w < warp) before += s;
    all += s;
  }
  *total = all;
  return v + before;
}

template <typename T, bool kCross>
__global__ void __launch_bounds__(kGapThreads)
    l1_gap_sum_kernel(const T* __restrict__ sorted, const int64_t* __restrict__ source,
                      int64_t len, int64_t n_a, int64_t n_b, acc_t<T>* __restrict__ col_sums) {
  using A = acc_t<T>;
  const int64_t col = blockIdx.x;
  const T* z = sorted + col * len;
  A mine = 0;
  int64_t a_before = 0;  // kCross: rows of a at positions < base
  // Gaps t = 0 .. len - 2, blockDim.x at a time (the bound is the same for the whole block).
  for (int64_t base = 0; base + 1 < len; base += blockDim.x) {
    const int64_t t = base + threadIdx.x;
    int64_t a_upto = 0;  // kCross: rows of a at positions <= t
    if (kCross) {
      const int is_a = (t < len && source[col * len + t] < n_a) ? 1 : 0;
      int block_total;
      a_upto = a_before + block_inclusive_scan(is_a, &block_total);
      a_before += block_total;
    }
    if (t + 1 < len) {
      const A gap = to_acc(z[t + 1]) - to_acc(z[t]);
      int64_t pairs;
      if (kCross) {
        const int64_t b_upto = (t + 1) - a_upto;
        pairs = a_upto * (n_b - b_upto) + b_upto * (n_a - a_upto);
      } else {
        pairs = 2 * (t + 1) * (len - t - 1);
      }
      mine += gap * static_cast<A>(pairs);
    }
  }
  const A total = block_sum(mine);
  if (threadIdx.x == 0) col_sums[col] = total;
}

constexpr int kRankThreads = 256;

// Positions in the ascending row[0, m) of the first value >= v (strict = false) or > v (true).
template <typename T, typename A>
__device__ __forceinline__ int64_t search_sorted(const T* __restrict__ row, int64_t m, A v,
                                                 bool strict) {
  int64_t lo = 0, hi = m;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    const A r = to_acc(row[mid]);
    if (r < v || (strict && r == v))
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// Elements walked column by column (e = j * n + i) so that a warp searches one sorted row:
// the first levels of its binary searches hit the same addresses.
template <typename T>
__global__ void __launch_bounds__(kRankThreads)
    rank_grad_kernel(const acc_t<T>* __restrict__ grad, acc_t<T> factor,
                     const T* __restrict__ values, int64_t n, int64_t d,
                     const T* __restrict__ sorted, int64_t m, T* __restrict__ out) {
  using A = acc_t<T>;
  const A scale = factor * grad[0];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n * d;
       e += stride) {
    const int64_t j = e / n, i = e - j * n;
    const A v = to_acc(values[i * d + j]);
    const T* row = sorted + j * m;
    const int64_t below = search_sorted(row, m, v, false);
    const int64_t above = m - search_sorted(row, m, v, true);
    out[i * d + j] = from_acc<T>(scale * static_cast<A>(below - above));
  }
}

}  // namespace

cudaError_t pairwise_l1_launch(Dtype dtype, const void* sorted, const int64_t* source,
                               int64_t n_a, int64_t n_b, int64_t d, void* col_sums, void* out,
                               cudaStream_t stream) {
  const bool cross = source != nullptr;
  const int64_t len = cross ? n_a + n_b : n_a;
  if (d > INT32_MAX) return cudaErrorInvalidValue;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    cudaError_t err;
    if (d > 0) {
      const T* z = static_cast<const T*>(sorted);
      A* sums = static_cast<A*>(col_sums);
      if (cross)
        KMGAN_LAUNCH(static_cast<unsigned>(d), kGapThreads, 0, stream, l1_gap_sum_kernel<T, true>)(
            z, source, len, n_a, n_b, sums);
      else
        KMGAN_LAUNCH(static_cast<unsigned>(d), kGapThreads, 0, stream, l1_gap_sum_kernel<T, false>)(
            z, nullptr, len, n_a, 0, sums);
      if ((err = cudaGetLastError()) != cudaSuccess) return err;
    }
    KMGAN_LAUNCH(1, kFinishThreads, 0, stream, finish_sum_kernel<A>)(
        static_cast<const A*>(col_sums), d, false, A(1), static_cast<A*>(out));
    return cudaGetLastError();
  });
}

cudaError_t pairwise_l1_rank_grad_launch(Dtype dtype, const void* grad, double factor,
                                         const void* values, int64_t n, int64_t d,
                                         const void* sorted, int64_t m, void* out,
                                         cudaStream_t stream) {
  if (n == 0 || d == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    KMGAN_LAUNCH(grid_for(n * d, kRankThreads), kRankThreads, 0, stream, rank_grad_kernel<T>)(
        static_cast<const A*>(grad), static_cast<A>(factor), static_cast<const T*>(values), n,
        d, static_cast<const T*>(sorted), m, static_cast<T*>(out));
    return cudaGetLastError();
  });
}

}  // namespace kmgan_cuda
