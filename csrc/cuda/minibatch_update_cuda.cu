// km.minibatch_update_ / minibatch_step_ / ema_update_ on CUDA (DESIGN.md 4.2): one
// segmented-sum stage (per-cluster sums S_k and row counts m_k of the batch), then one apply
// kernel with the update rule. Two ways to get the sums:
//
//  * fast (default): float atomics. A block accumulates its rows into shared memory when the
//    (K, d) sums fit there (32 KB), then adds its partials to global memory: at the paper's
//    K = 10, d = 100 that is one global atomic per (k, j) per block instead of one per row.
//    Otherwise each row is added straight to global memory. Last bits may vary run to run.
//
//  * deterministic: rows sorted stably by label (torch's sort, in the binding), cut into chunks
//    of kSortedChunkRows sorted positions. One thread per (chunk, feature) walks its chunk in
//    order; a cluster lying inside one chunk has its sum written directly; for a cluster that
//    crosses chunk boundaries the chunk's first and last runs are kept as pieces, and the apply
//    kernel adds them in chunk order. No float atomics, memory O(N d + K d), bitwise identical
//    run to run, and each S_k is summed in the rows' original order.
#include "common.cuh"

namespace kmgan_cuda {
namespace {

constexpr int kSumThreads = 256;
constexpr int kSumWarps = kSumThreads / 32;
// Largest shared-memory footprint of the fast kernel's per-block partials (sums + counts):
// below the 48 KB a block gets without opting in, leaving room for two blocks per SM.
constexpr int64_t kSharedPartialsBytes = 32 * 1024;
// Rows a block should cover before its shared partials pay for their flush.
constexpr int64_t kRowsPerSharedBlock = 256;

// Fast mode: sums (K, d) and batch_counts (K) must be zero on entry. One warp per row.
template <typename T>
__global__ void __launch_bounds__(kSumThreads)
    cluster_sums_atomic_kernel(const T* __restrict__ x, const int64_t* __restrict__ labels,
                               int64_t n, int64_t k, int64_t d, acc_t<T>* __restrict__ sums,
                               int64_t* __restrict__ batch_counts, bool shared_partials) {
  using A = acc_t<T>;
  KMGAN_DYNAMIC_SHARED(unsigned char, shared_raw);
  A* s_sums = reinterpret_cast<A*>(shared_raw);                // k * d, when shared_partials
  unsigned* s_counts = reinterpret_cast<unsigned*>(s_sums + k * d);  // k

  if (shared_partials) {
    for (int64_t e = threadIdx.x; e < k * d; e += blockDim.x) s_sums[e] = 0;
    for (int64_t e = threadIdx.x; e < k; e += blockDim.x) s_counts[e] = 0;
    __syncthreads();
  }

  const int lane = threadIdx.x & 31;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kSumWarps + (threadIdx.x >> 5);
  const int64_t warp_stride = static_cast<int64_t>(gridDim.x) * kSumWarps;
  for (int64_t i = warp; i < n; i += warp_stride) {
    const int64_t l = labels[i];
    if (l < 0 || l >= k) continue;  // validated upstream; never write out of bounds
    if (lane == 0) {
      if (shared_partials)
        atomicAdd(&s_counts[l], 1u);
      else
        atomicAdd(reinterpret_cast<unsigned long long*>(&batch_counts[l]), 1ull);
    }
    A* dst = shared_partials ? s_sums : sums;
    for (int64_t j = lane; j < d; j += 32) atomicAdd(&dst[l * d + j], to_acc(x[i * d + j]));
  }

  if (shared_partials) {
    __syncthreads();
    for (int64_t e = threadIdx.x; e < k * d; e += blockDim.x) {
      const A v = s_sums[e];
      if (v != A(0)) atomicAdd(&sums[e], v);  // clusters this block never saw stay untouched
    }
    for (int64_t e = threadIdx.x; e < k; e += blockDim.x) {
      const unsigned c = s_counts[e];
      if (c != 0) atomicAdd(reinterpret_cast<unsigned long long*>(&batch_counts[e]),
                            static_cast<unsigned long long>(c));
    }
  }
}

constexpr int kPieceThreads = 128;

// Deterministic mode, first pass: thread (chunk, j) sums feature j over the chunk's sorted rows,
// run by run (a run = consecutive equal labels). A run that is a whole cluster goes to sums;
// the chunk's first and last runs also go to first_piece / last_piece (chunk, d), which the
// apply kernel uses for clusters that cross a chunk boundary.
template <typename T>
__global__ void __launch_bounds__(kPieceThreads)
    sorted_piece_sums_kernel(const T* __restrict__ x, const int64_t* __restrict__ sorted_labels,
                             const int64_t* __restrict__ perm, int64_t n, int64_t k, int64_t d,
                             int64_t col_blocks, acc_t<T>* __restrict__ sums,
                             acc_t<T>* __restrict__ first_piece,
                             acc_t<T>* __restrict__ last_piece) {
  using A = acc_t<T>;
  const int64_t chunk = blockIdx.x / col_blocks;
  const int64_t j = (blockIdx.x % col_blocks) * kPieceThreads + threadIdx.x;
  if (j >= d) return;
  const int64_t begin = chunk * kSortedChunkRows;
  const int64_t end = begin + kSortedChunkRows < n ? begin + kSortedChunkRows : n;

  A acc = 0;
  int64_t run_start = begin;
  for (int64_t s = begin; s < end; ++s) {
    const int64_t l = sorted_labels[s];
    acc += to_acc(x[perm[s] * d + j]);
    const bool chunk_ends = s + 1 == end;
    if (chunk_ends || sorted_labels[s + 1] != l) {  // the run [run_start, s] ends here
      if (run_start == begin) first_piece[chunk * d + j] = acc;
      if (chunk_ends) last_piece[chunk * d + j] = acc;
      const bool from_before = run_start == begin && begin > 0 && sorted_labels[begin - 1] == l;
      const bool into_after = chunk_ends && end < n && sorted_labels[end] == l;
      if (!from_before && !into_after && l >= 0 && l < k) sums[l * d + j] = acc;
      acc = 0;
      run_start = s + 1;
    }
  }
}

// First position of a value >= v in the ascending a[0, n).
__device__ __forceinline__ int64_t lower_bound(const int64_t* __restrict__ a, int64_t n,
                                               int64_t v) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (a[mid] < v)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

constexpr int kApplyThreads = 128;

// One block per cluster k. m_k comes from batch_counts (fast) or from the sorted labels
// (deterministic: m_k = rows between the two binary-search bounds). Clusters with m_k = 0 are
// left untouched.
template <typename T, UpdateRule kRule>
__global__ void __launch_bounds__(kApplyThreads)
    cluster_apply_kernel(T* __restrict__ centers, int64_t* __restrict__ counts,
                         acc_t<T> decay, const acc_t<T>* __restrict__ sums,
                         const int64_t* __restrict__ batch_counts,
                         const int64_t* __restrict__ sorted_labels,
                         const acc_t<T>* __restrict__ first_piece,
                         const acc_t<T>* __restrict__ last_piece, int64_t n, int64_t d) {
  using A = acc_t<T>;
  const int64_t kk = blockIdx.x;
  int64_t m, first = 0;
  if (sorted_labels != nullptr) {
    first = lower_bound(sorted_labels, n, kk);
    m = lower_bound(sorted_labels, n, kk + 1) - first;
  } else {
    m = batch_counts[kk];
  }
  if (m == 0) return;  // the same for the whole block

  int64_t new_count = 0;
  if (kRule == UpdateRule::kSculley) {
    new_count = counts[kk] + m;
    __syncthreads();  // every thread has read counts[kk] before thread 0 overwrites it
    if (threadIdx.x == 0) counts[kk] = new_count;
  }

  const int64_t chunk_first = first / kSortedChunkRows;
  const int64_t chunk_last = (first + m - 1) / kSortedChunkRows;
  const bool spans_chunks = sorted_labels != nullptr && chunk_first != chunk_last;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    A s;
    if (spans_chunks) {
      // The cluster's rows: the tail run of chunk_first, whole middle chunks, the head run of
      // chunk_last (a whole chunk's first run is the chunk). Fixed order: deterministic.
      s = last_piece[chunk_first * d + j];
      for (int64_t c = chunk_first + 1; c <= chunk_last; ++c) s += first_piece[c * d + j];
    } else {
      s = sums[kk * d + j];
    }
    const A c = to_acc(centers[kk * d + j]);
    A updated;
    if (kRule == UpdateRule::kSculley)
      updated = c + (s - static_cast<A>(m) * c) / static_cast<A>(new_count);
    else
      updated = decay * c + (A(1) - decay) * (s / static_cast<A>(m));
    centers[kk * d + j] = from_acc<T>(updated);
  }
}

template <typename T, UpdateRule kRule>
cudaError_t launch_apply(void* centers, int64_t* counts, double decay, const void* sums,
                         const int64_t* batch_counts, const int64_t* sorted_labels,
                         const void* pieces, int64_t n, int64_t k, int64_t d,
                         cudaStream_t stream) {
  using A = acc_t<T>;
  const A* first_piece = static_cast<const A*>(pieces);
  const A* last_piece =
      first_piece == nullptr ? nullptr : first_piece + cluster_pieces_elems(n, d) / 2;
  KMGAN_LAUNCH(static_cast<unsigned>(k), kApplyThreads, 0, stream, cluster_apply_kernel<T, kRule>)(
      static_cast<T*>(centers), counts, static_cast<A>(decay), static_cast<const A*>(sums),
      batch_counts, sorted_labels, first_piece, last_piece, n, d);
  return cudaGetLastError();
}

}  // namespace

cudaError_t cluster_update_launch(Dtype dtype, UpdateRule rule, void* centers, int64_t* counts,
                                  double decay, const void* x, const int64_t* labels,
                                  const int64_t* sorted_labels, const int64_t* perm, int64_t n,
                                  int64_t k, int64_t d, void* sums, int64_t* batch_counts,
                                  void* pieces, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;  // no rows: every cluster is untouched
  if (k <= 0 || k > INT32_MAX) return cudaErrorInvalidValue;
  const bool deterministic = sorted_labels != nullptr;
  if (deterministic && perm == nullptr) return cudaErrorInvalidValue;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    cudaError_t err;
    if (deterministic) {
      const int64_t col_blocks = ceil_div(d, kPieceThreads);
      const int64_t blocks = ceil_div(n, kSortedChunkRows) * col_blocks;
      if (blocks > INT32_MAX) return cudaErrorInvalidValue;
      if (blocks > 0) {  // d = 0: no sums to form; the apply kernel still updates counts
        A* first_piece = static_cast<A*>(pieces);
        A* last_piece = first_piece + cluster_pieces_elems(n, d) / 2;
        KMGAN_LAUNCH(static_cast<unsigned>(blocks), kPieceThreads, 0, stream,
            sorted_piece_sums_kernel<T>)(
            static_cast<const T*>(x), sorted_labels, perm, n, k, d, col_blocks,
            static_cast<A*>(sums), first_piece, last_piece);
        if ((err = cudaGetLastError()) != cudaSuccess) return err;
      }
    } else {
      if (k * d > 0 && (err = cudaMemsetAsync(sums, 0, sizeof(A) * k * d, stream)) != cudaSuccess)
        return err;
      if ((err = cudaMemsetAsync(batch_counts, 0, sizeof(int64_t) * k, stream)) != cudaSuccess)
        return err;
      const int64_t shared_bytes = k * d * static_cast<int64_t>(sizeof(A)) + k * 4;
      const bool shared_partials = shared_bytes <= kSharedPartialsBytes;
      const int blocks = shared_partials ? grid_for(n, kRowsPerSharedBlock, 2)
                                         : grid_for(n, kSumWarps);
      KMGAN_LAUNCH(blocks, kSumThreads, shared_partials ? static_cast<size_t>(shared_bytes) : 0,
                   stream, cluster_sums_atomic_kernel<T>)(
          static_cast<const T*>(x), labels, n, k, d, static_cast<A*>(sums), batch_counts,
          shared_partials);
      if ((err = cudaGetLastError()) != cudaSuccess) return err;
    }
    if (rule == UpdateRule::kSculley)
      return launch_apply<T, UpdateRule::kSculley>(centers, counts, decay, sums, batch_counts,
                                                    sorted_labels, pieces, n, k, d, stream);
    return launch_apply<T, UpdateRule::kEma>(centers, counts, decay, sums, batch_counts,
                                              sorted_labels, pieces, n, k, d, stream);
  });
}

}  // namespace kmgan_cuda
