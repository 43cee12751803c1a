// km.minibatch_update_ / minibatch_step_ / ema_update_ on CUDA (docs/ops.md, Center updates): one
// segmented-sum stage (per-cluster sums S_k in double and row counts m_k of the batch), then
// per-cluster kernels with the update rule, in double. Two ways to get the sums:
//
//  * fast (default): atomics. A block takes tiles of kFlushRows rows, one warp per row; when
//    the (K, d) partials fit in shared memory (32 KB) the tile is summed there in float32
//    (float64 for float64 x) and then added to the double sums, one global atomic per (k, j)
//    per tile: at the paper's K = 10, d = 100 that is 1000 atomics per 256 rows instead of
//    25600. Otherwise each row is added to the double sums directly. A float32 partial never
//    holds more than kFlushRows rows, so the error of S_k does not grow with N (contract 3: a
//    mean of 10^6 rows at offset 1e4 is within a few ulps). Last bits may vary run to run.
//
//  * deterministic: rows sorted stably by label (torch's sort, in the binding), cut into chunks
//    of kSortedChunkRows sorted positions. One thread per (chunk, feature) walks its chunk in
//    order, in double; a cluster lying inside one chunk has its sum written directly; for a
//    cluster that crosses chunk boundaries the chunk's first and last runs are kept as pieces,
//    and the update kernels add them in chunk order. No float atomics, memory O(N d + K d),
//    bitwise identical run to run.
//
// metric="cosine" (issue 12, spherical k-means): a first kernel writes each row's norm ||x_i||
// (double, N values: never a normalised copy of x), the sums add x_i / ||x_i|| (a zero row
// adds 0 but counts), and the centers the rule updates are renormalised to unit length (a zero
// result stays zero) from their double values.
//
// sample_weight (issue 12; `weights` not null, N doubles): every summand is multiplied by its
// row's weight (in double) and each cluster's batch weight w_k replaces its row count: in fast
// mode summed with double atomics into batch_weights (no float32 shared partials), in
// deterministic mode by the update kernels over the cluster's sorted rows, in a fixed order.
// Sculley's rule is then scikit-learn's: for w_k > 0, c_k <- (c_k W_k + S_k) * (1 / (W_k +
// w_k)) and W_k += w_k, W = counts as float64 cumulative weights.
//
// Batched EMA problems (`problems` P > 1: centers (P, K, d), x (P, N, d), labels (P, N) in
// [0, K) of each problem, the state and workspaces P times one problem's, the deterministic
// sort done per problem): every kernel below maps its blocks to (problem, its own work), with
// each problem's rows, chunks and clusters cut exactly as in its own call, so a problem's
// result in the deterministic mode is bitwise its own call's, its smoothing takes its own
// total, and P problems take the launches of one. Sculley's updates are one problem.
#include "common.cuh"

namespace kmgan_cuda {
namespace {

constexpr int kSumThreads = 256;
constexpr int kSumWarps = kSumThreads / 32;
// Rows a block sums in shared memory before adding them to the double sums.
constexpr int64_t kFlushRows = 256;
// Largest shared-memory footprint of the fast kernel's per-block partials (sums + counts):
// below the 48 KB a block gets without opting in, leaving room for two blocks per SM.
constexpr int64_t kSharedPartialsBytes = 32 * 1024;

// double -> storage type. float16 / bfloat16 round through float (double rounding: at most
// one unit in the last place of the 16-bit result, on values exactly between two of them).
template <typename T>
__device__ __forceinline__ T from_wide(double v) {
  return from_acc<T>(static_cast<acc_t<T>>(v));
}

// row_norms[i] = ||x_i|| in double, one warp per row (metric="cosine").
template <typename T>
__global__ void __launch_bounds__(kSumThreads)
    row_norms_kernel(const T* __restrict__ x, int64_t n, int64_t d, double* __restrict__ norms) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kSumWarps + (threadIdx.x >> 5);
  for (int64_t i = warp; i < n; i += static_cast<int64_t>(gridDim.x) * kSumWarps) {
    double v = 0;
    for (int64_t j = lane; j < d; j += 32) {
      const double t = to_acc(x[i * d + j]);
      v += t * t;
    }
    v = warp_sum(v);
    if (lane == 0) norms[i] = sqrt(v);
  }
}

// x[i, j] as summed: divided by the row's norm under metric="cosine" (norms not null; a zero
// row gives 0, a NaN row NaN), else as is.
// Times the row's weight when weights are given (sample_weight).
template <typename T>
__device__ __forceinline__ double summand(const T* x, const double* norms, int64_t i, int64_t d,
                                          int64_t j, const double* weights = nullptr) {
  double v = to_acc(x[i * d + j]);
  if (norms != nullptr) {
    const double nrm = norms[i];
    v = nrm == 0.0 ? 0.0 : v / nrm;
  }
  return weights == nullptr ? v : v * weights[i];
}

// The tile's rows [begin, end) of cluster e / d, feature e % d, summed in double: the rescan of
// a float32 tile partial that is not finite (it passed 3.4e38 where the double sum may fit,
// contract 2; an inf or NaN input gives the same non-finite sum again). Rare: one thread.
template <typename T>
__device__ double tile_sum_wide(const T* __restrict__ x, const int64_t* __restrict__ labels,
                                const double* __restrict__ norms, int64_t begin, int64_t end,
                                int64_t d, int64_t e) {
  const int64_t l = e / d, j = e % d;
  double s = 0;
  for (int64_t i = begin; i < end; ++i)
    if (labels[i] == l) s += summand(x, norms, i, d, j);
  return s;
}

// Fast mode: sums (P*K, d) and batch_counts (P*K) must be zero on entry. A tile never mixes
// two problems: problem p's tiles are its own call's.
template <typename T>
__global__ void __launch_bounds__(kSumThreads)
    cluster_sums_atomic_kernel(const T* __restrict__ x_all, const int64_t* __restrict__ labels_all,
                               int64_t n, int64_t k, int64_t d, double* __restrict__ sums_all,
                               int64_t* __restrict__ counts_all, bool shared_partials,
                               const double* __restrict__ norms_all,
                               const double* __restrict__ weights_all,
                               double* __restrict__ batch_weights_all, int64_t problems) {
  using A = acc_t<T>;
  KMGAN_DYNAMIC_SHARED(unsigned char, shared_raw);
  A* s_sums = reinterpret_cast<A*>(shared_raw);                      // k * d, when shared
  unsigned* s_counts = reinterpret_cast<unsigned*>(s_sums + k * d);  // k

  if (shared_partials) {
    for (int64_t e = threadIdx.x; e < k * d; e += blockDim.x) s_sums[e] = 0;
    for (int64_t e = threadIdx.x; e < k; e += blockDim.x) s_counts[e] = 0;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t tiles = (n + kFlushRows - 1) / kFlushRows;
  for (int64_t t = blockIdx.x; t < problems * tiles; t += gridDim.x) {  // uniform in the block
    const int64_t p = t / tiles, tile = t % tiles;
    const T* x = x_all + p * n * d;
    const int64_t* labels = labels_all + p * n;
    const double* norms = norms_all != nullptr ? norms_all + p * n : nullptr;
    const double* weights = weights_all != nullptr ? weights_all + p * n : nullptr;
    double* batch_weights = batch_weights_all != nullptr ? batch_weights_all + p * k : nullptr;
    double* sums = sums_all + p * k * d;
    int64_t* batch_counts = counts_all + p * k;
    if (shared_partials) __syncthreads();  // zeroed (first tile) or flushed (later ones)
    const int64_t end = (tile + 1) * kFlushRows < n ? (tile + 1) * kFlushRows : n;
    for (int64_t i = tile * kFlushRows + warp; i < end; i += kSumWarps) {
      const int64_t l = labels[i];
      if (l < 0 || l >= k) continue;  // validated upstream; never write out of bounds
      if (shared_partials) {
        if (lane == 0) atomicAdd(&s_counts[l], 1u);
        for (int64_t j = lane; j < d; j += 32)
          atomicAdd(&s_sums[l * d + j], static_cast<A>(summand(x, norms, i, d, j)));
      } else if (weights != nullptr) {  // sample_weight: never shared_partials
        // The row count too: cluster_sum reads a cluster without rows as 0.
        if (lane == 0) {
          atomicAdd(&batch_weights[l], weights[i]);
          atomicAdd(reinterpret_cast<unsigned long long*>(&batch_counts[l]), 1ull);
        }
        for (int64_t j = lane; j < d; j += 32)
          atomicAdd(&sums[l * d + j], summand(x, norms, i, d, j, weights));
      } else {
        if (lane == 0) atomicAdd(reinterpret_cast<unsigned long long*>(&batch_counts[l]), 1ull);
        for (int64_t j = lane; j < d; j += 32)
          atomicAdd(&sums[l * d + j], summand(x, norms, i, d, j));
      }
    }
    if (shared_partials) {
      __syncthreads();  // the tile's partials are complete
      for (int64_t e = threadIdx.x; e < k * d; e += blockDim.x) {
        const A v = s_sums[e];
        if (v != A(0)) {  // clusters this tile never saw stay untouched
          atomicAdd(&sums[e], isfinite(v) ? static_cast<double>(v)
                                          : tile_sum_wide(x, labels, norms, tile * kFlushRows, end, d,
                                                          e));
          s_sums[e] = 0;
        }
      }
      for (int64_t e = threadIdx.x; e < k; e += blockDim.x) {
        const unsigned c = s_counts[e];
        if (c != 0) {
          atomicAdd(reinterpret_cast<unsigned long long*>(&batch_counts[e]),
                    static_cast<unsigned long long>(c));
          s_counts[e] = 0;
        }
      }
    }
  }
}

constexpr int kPieceThreads = 128;

// Deterministic mode, first pass: thread (chunk, j) sums feature j over the chunk's sorted rows,
// run by run (a run = consecutive equal labels), in double. A run that is a whole cluster goes
// to sums; the chunk's first and last runs also go to first_piece / last_piece (chunk, d),
// which the update kernels use for clusters that cross a chunk boundary. Batched problems: the
// blocks of problem p follow those of p - 1, its chunks its own (pointers offset below).
template <typename T>
__global__ void __launch_bounds__(kPieceThreads)
    sorted_piece_sums_kernel(const T* __restrict__ x, const int64_t* __restrict__ sorted_labels,
                             const int64_t* __restrict__ perm, int64_t n, int64_t k, int64_t d,
                             int64_t col_blocks, double* __restrict__ sums,
                             double* __restrict__ first_piece, double* __restrict__ last_piece,
                             const double* __restrict__ norms,
                             const double* __restrict__ weights) {
  const int64_t chunks = (n + kSortedChunkRows - 1) / kSortedChunkRows;
  const int64_t p = blockIdx.x / (chunks * col_blocks), block = blockIdx.x % (chunks * col_blocks);
  const int64_t chunk = block / col_blocks;
  const int64_t j = (block % col_blocks) * kPieceThreads + threadIdx.x;
  if (j >= d) return;
  x += p * n * d;
  sorted_labels += p * n;
  perm += p * n;
  sums += p * k * d;
  first_piece += p * chunks * d;
  last_piece += p * chunks * d;
  if (norms != nullptr) norms += p * n;
  if (weights != nullptr) weights += p * n;
  const int64_t begin = chunk * kSortedChunkRows;
  const int64_t end = begin + kSortedChunkRows < n ? begin + kSortedChunkRows : n;

  double acc = 0;
  int64_t run_start = begin;
  for (int64_t s = begin; s < end; ++s) {
    const int64_t l = sorted_labels[s];
    acc += summand(x, norms, perm[s], d, j, weights);
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

// Where the segmented-sum stage left cluster kk's sum and row count.
struct ClusterSums {
  const double* sums;
  const int64_t* batch_counts;   // fast mode
  const int64_t* sorted_labels;  // deterministic mode (else null)
  const double* first_piece;
  const double* last_piece;
  int64_t n, d;
  const double* weights = nullptr;        // sample_weight (N), else null
  const double* batch_weights = nullptr;  // fast mode with weights: w_k
  const int64_t* perm = nullptr;          // deterministic mode: sorted position -> row
};

// Problem p's part of a batched problems' ClusterSums (k clusters each).
__device__ __forceinline__ ClusterSums problem_sums(ClusterSums s, int64_t p, int64_t k) {
  const int64_t chunks = (s.n + kSortedChunkRows - 1) / kSortedChunkRows;
  s.sums += p * k * s.d;
  if (s.batch_counts != nullptr) s.batch_counts += p * k;
  if (s.sorted_labels != nullptr) s.sorted_labels += p * s.n;
  if (s.first_piece != nullptr) s.first_piece += p * chunks * s.d;
  if (s.last_piece != nullptr) s.last_piece += p * chunks * s.d;
  if (s.weights != nullptr) s.weights += p * s.n;
  if (s.batch_weights != nullptr) s.batch_weights += p * k;
  if (s.perm != nullptr) s.perm += p * s.n;
  return s;
}

struct ClusterSlice {
  int64_t m = 0;  // rows labelled kk
  int64_t chunk_first = 0, chunk_last = 0;
  bool spans_chunks = false;
};

__device__ __forceinline__ ClusterSlice cluster_slice(const ClusterSums& s, int64_t kk) {
  ClusterSlice c;
  if (s.sorted_labels != nullptr) {
    const int64_t first = lower_bound(s.sorted_labels, s.n, kk);
    c.m = lower_bound(s.sorted_labels, s.n, kk + 1) - first;
    if (c.m > 0) {
      c.chunk_first = first / kSortedChunkRows;
      c.chunk_last = (first + c.m - 1) / kSortedChunkRows;
      c.spans_chunks = c.chunk_first != c.chunk_last;
    }
  } else if (s.batch_counts != nullptr) {
    c.m = s.batch_counts[kk];
  }
  return c;
}

// sample_weight: the batch weight w_kk of the cluster (every thread of the block gets it; all
// of them must call). Fast mode: the atomics' total. Deterministic mode: the block sums the
// weights of the cluster's sorted rows, strided then a fixed tree (block_sum): bitwise
// repeatable.
__device__ double cluster_weight(const ClusterSums& s, const ClusterSlice& c, int64_t kk) {
  if (s.batch_weights != nullptr) return s.batch_weights[kk];
  __shared__ double shared_w;
  double part = 0;
  if (c.m > 0) {
    const int64_t first = lower_bound(s.sorted_labels, s.n, kk);
    for (int64_t r = threadIdx.x; r < c.m; r += blockDim.x) part += s.weights[s.perm[first + r]];
  }
  const double total = block_sum(part);
  if (threadIdx.x == 0) shared_w = total;
  __syncthreads();
  const double w = shared_w;
  __syncthreads();  // every thread has read it before a later call rewrites it
  return w;
}

// S_kk[j]; 0 for a cluster without rows.
__device__ __forceinline__ double cluster_sum(const ClusterSums& s, const ClusterSlice& c,
                                              int64_t kk, int64_t j) {
  if (c.m == 0) return 0.0;
  if (!c.spans_chunks) return s.sums[kk * s.d + j];
  // The cluster's rows: the tail run of chunk_first, whole middle chunks, the head run of
  // chunk_last (a whole chunk's first run is the chunk). Fixed order: deterministic.
  double v = s.last_piece[c.chunk_first * s.d + j];
  for (int64_t ch = c.chunk_first + 1; ch <= c.chunk_last; ++ch) v += s.first_piece[ch * s.d + j];
  return v;
}

constexpr int kApplyThreads = 128;

// 1 / ||v|| over v(0..d-1) (a block's threads stride over j; every thread gets it), 1 for a
// zero v (a zero result stays zero): metric="cosine"'s renormalisation.
template <typename F>
__device__ double inverse_norm(F&& v, int64_t d) {
  __shared__ double norm;
  double part = 0;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const double t = v(j);
    part += t * t;
  }
  const double total = block_sum(part);
  if (threadIdx.x == 0) norm = sqrt(total);
  __syncthreads();
  const double r = norm == 0.0 ? 1.0 : 1.0 / norm;
  __syncthreads();  // everyone has read `norm` before a later call rewrites it
  return r;
}

// One block per cluster; clusters without rows are left untouched.
template <typename T>
__global__ void __launch_bounds__(kApplyThreads)
    sculley_apply_kernel(T* __restrict__ centers, int64_t* __restrict__ counts, ClusterSums s,
                         bool cosine) {
  const int64_t kk = blockIdx.x;
  const ClusterSlice c = cluster_slice(s, kk);
  if (c.m == 0) return;  // the same for the whole block
  const int64_t new_count = counts[kk] + c.m;
  __syncthreads();  // every thread has read counts[kk] before thread 0 overwrites it
  if (threadIdx.x == 0) counts[kk] = new_count;
  const double m = static_cast<double>(c.m), total = static_cast<double>(new_count);
  auto updated = [&](int64_t j) {
    const double cj = static_cast<double>(to_acc(centers[kk * s.d + j]));
    return cj + (cluster_sum(s, c, kk, j) - m * cj) / total;
  };
  const double scale = cosine ? inverse_norm(updated, s.d) : 1.0;
  __syncthreads();  // every thread has read the old center before any overwrites it
  for (int64_t j = threadIdx.x; j < s.d; j += blockDim.x) {
    centers[kk * s.d + j] = from_wide<T>(updated(j) * scale);
  }
}

// sample_weight: scikit-learn's weighted rule (counts = float64 cumulative weights W); one
// block per cluster, clusters whose batch weight is 0 are left untouched.
template <typename T>
__global__ void __launch_bounds__(kApplyThreads)
    weighted_sculley_apply_kernel(T* __restrict__ centers, double* __restrict__ counts,
                                  ClusterSums s, bool cosine) {
  const int64_t kk = blockIdx.x;
  const ClusterSlice c = cluster_slice(s, kk);
  const double wk = cluster_weight(s, c, kk);
  if (!(wk > 0.0)) return;  // the same for the whole block
  const double before = counts[kk], total = before + wk, alpha = 1.0 / total;
  __syncthreads();  // every thread has read counts[kk] before thread 0 overwrites it
  if (threadIdx.x == 0) counts[kk] = total;
  auto updated = [&](int64_t j) {
    const double cj = static_cast<double>(to_acc(centers[kk * s.d + j]));
    return (cj * before + cluster_sum(s, c, kk, j)) * alpha;
  };
  const double scale = cosine ? inverse_norm(updated, s.d) : 1.0;
  __syncthreads();  // every thread has read the old center before any overwrites it
  for (int64_t j = threadIdx.x; j < s.d; j += blockDim.x) {
    centers[kk * s.d + j] = from_wide<T>(updated(j) * scale);
  }
}

// EMA, first kernel (one block per cluster of every problem): the decayed state, stored.
template <typename S>
__global__ void __launch_bounds__(kApplyThreads)
    ema_state_kernel(S* __restrict__ cluster_size, S* __restrict__ embed_sum, double decay,
                     ClusterSums all, int64_t k) {
  const int64_t p = blockIdx.x / k, kk = blockIdx.x % k;
  const ClusterSums s = problem_sums(all, p, k);
  cluster_size += p * k;
  embed_sum += p * k * s.d;
  const ClusterSlice c = cluster_slice(s, kk);
  const double take = 1.0 - decay;
  const double mk = s.weights != nullptr ? cluster_weight(s, c, kk) : static_cast<double>(c.m);
  if (threadIdx.x == 0) {
    cluster_size[kk] = static_cast<S>(decay * static_cast<double>(cluster_size[kk]) + take * mk);
  }
  for (int64_t j = threadIdx.x; j < s.d; j += blockDim.x) {
    const int64_t e = kk * s.d + j;
    embed_sum[e] = static_cast<S>(decay * static_cast<double>(embed_sum[e]) +
                                  take * cluster_sum(s, c, kk, j));
  }
}

// EMA, second kernel (one block per problem p): total[p] = sum_k cluster_size_k of problem p
// as stored, fixed order.
template <typename S>
__global__ void __launch_bounds__(kFinishThreads)
    ema_total_kernel(const S* __restrict__ cluster_size, int64_t k, double* __restrict__ total) {
  cluster_size += static_cast<int64_t>(blockIdx.x) * k;
  total += blockIdx.x;
  double v = 0;
  for (int64_t q = threadIdx.x; q < k; q += blockDim.x) v += static_cast<double>(cluster_size[q]);
  v = block_sum(v);
  if (threadIdx.x == 0) total[0] = v;
}

// EMA, third kernel (one block per cluster of every problem): c_k = M_k / N'_k from the
// stored state, with the cluster's own problem's total.
template <typename T, typename S>
__global__ void __launch_bounds__(kApplyThreads)
    ema_centers_kernel(T* __restrict__ centers, const S* __restrict__ cluster_size,
                       const S* __restrict__ embed_sum, const double* __restrict__ total,
                       double eps, int64_t k, int64_t d, bool cosine) {
  const int64_t p = blockIdx.x / k, kk = blockIdx.x % k;
  centers += p * k * d;
  cluster_size += p * k;
  embed_sum += p * k * d;
  const double n = total[p];
  const double smoothed =
      (static_cast<double>(cluster_size[kk]) + eps) / (n + static_cast<double>(k) * eps) * n;
  if (smoothed == 0.0) return;  // nothing ever assigned: keep the center (never NaN)
  auto value = [&](int64_t j) { return static_cast<double>(embed_sum[kk * d + j]) / smoothed; };
  const double scale = cosine ? inverse_norm(value, d) : 1.0;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) centers[kk * d + j] = from_wide<T>(value(j) * scale);
}

// The segmented-sum stage of both updates (of `problems` problems of n rows and k clusters
// each); fills `out` for the update kernels (problem 0's view: see problem_sums).
template <typename T>
cudaError_t cluster_sums_stage(const void* x, const int64_t* labels,
                               const int64_t* sorted_labels, const int64_t* perm, int64_t n,
                               int64_t k, int64_t d, double* sums, int64_t* batch_counts,
                               double* pieces, double* row_norms, const double* weights,
                               double* batch_weights, cudaStream_t stream, ClusterSums* out,
                               int64_t problems = 1) {
  using A = acc_t<T>;
  cudaError_t err;
  if (row_norms != nullptr && n > 0) {  // metric="cosine": the rows' norms first
    KMGAN_LAUNCH(grid_for(problems * n, kSumWarps), kSumThreads, 0, stream, row_norms_kernel<T>)(
        static_cast<const T*>(x), problems * n, d, row_norms);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  const bool deterministic = sorted_labels != nullptr && n > 0;
  *out = ClusterSums{sums, nullptr, nullptr, nullptr, nullptr, n, d};
  out->weights = weights;
  if (deterministic) {
    if (perm == nullptr) return cudaErrorInvalidValue;
    out->sorted_labels = sorted_labels;
    out->perm = perm;
    double* const last_pieces = pieces + problems * (cluster_pieces_elems(n, d) / 2);
    out->first_piece = pieces;
    out->last_piece = last_pieces;
    const int64_t col_blocks = ceil_div(d, kPieceThreads);
    const int64_t blocks = problems * ceil_div(n, kSortedChunkRows) * col_blocks;
    if (blocks > INT32_MAX) return cudaErrorInvalidValue;
    if (blocks > 0) {  // d = 0: no sums to form; the update kernels still count rows
      KMGAN_LAUNCH(static_cast<unsigned>(blocks), kPieceThreads, 0, stream,
                   sorted_piece_sums_kernel<T>)(
          static_cast<const T*>(x), sorted_labels, perm, n, k, d, col_blocks, sums,
          pieces, last_pieces, row_norms, weights);
      if ((err = cudaGetLastError()) != cudaSuccess) return err;
    }
    return cudaSuccess;
  }
  out->batch_counts = batch_counts;
  if (weights != nullptr) {
    if (batch_weights == nullptr) return cudaErrorInvalidValue;
    out->batch_weights = batch_weights;
    if ((err = cudaMemsetAsync(batch_weights, 0, sizeof(double) * problems * k, stream)) !=
        cudaSuccess)
      return err;
  }
  if (k * d > 0 &&
      (err = cudaMemsetAsync(sums, 0, sizeof(double) * problems * k * d, stream)) != cudaSuccess)
    return err;
  if ((err = cudaMemsetAsync(batch_counts, 0, sizeof(int64_t) * problems * k, stream)) !=
      cudaSuccess)
    return err;
  if (n == 0) return cudaSuccess;
  const int64_t shared_bytes = k * d * static_cast<int64_t>(sizeof(A)) + k * 4;
  // Weighted rows go to the double sums directly: a float32 partial of w_i x_i would round
  // each product.
  const bool shared_partials = shared_bytes <= kSharedPartialsBytes && weights == nullptr;
  const int blocks = shared_partials ? grid_for(problems * ceil_div(n, kFlushRows), 1, 2)
                                     : grid_for(problems * n, kSumWarps);
  KMGAN_LAUNCH(blocks, kSumThreads, shared_partials ? static_cast<size_t>(shared_bytes) : 0,
               stream, cluster_sums_atomic_kernel<T>)(
      static_cast<const T*>(x), labels, n, k, d, sums, batch_counts, shared_partials, row_norms,
      weights, batch_weights, problems);
  return cudaGetLastError();
}

}  // namespace

cudaError_t minibatch_update_launch(Dtype dtype, void* centers, void* counts, const void* x,
                                    const int64_t* labels, const int64_t* sorted_labels,
                                    const int64_t* perm, int64_t n, int64_t k, int64_t d,
                                    double* sums, int64_t* batch_counts, double* pieces,
                                    double* row_norms, const double* weights,
                                    double* batch_weights, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;  // no rows: every cluster is untouched
  if (k <= 0 || k > INT32_MAX) return cudaErrorInvalidValue;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    ClusterSums s;
    cudaError_t err = cluster_sums_stage<T>(x, labels, sorted_labels, perm, n, k, d, sums,
                                            batch_counts, pieces, row_norms, weights,
                                            batch_weights, stream, &s);
    if (err != cudaSuccess) return err;
    if (weights != nullptr) {
      KMGAN_LAUNCH(static_cast<unsigned>(k), kApplyThreads, 0, stream,
                   weighted_sculley_apply_kernel<T>)(
          static_cast<T*>(centers), static_cast<double*>(counts), s, row_norms != nullptr);
    } else {
      KMGAN_LAUNCH(static_cast<unsigned>(k), kApplyThreads, 0, stream, sculley_apply_kernel<T>)(
          static_cast<T*>(centers), static_cast<int64_t*>(counts), s, row_norms != nullptr);
    }
    return cudaGetLastError();
  });
}

cudaError_t ema_update_launch(Dtype dtype, void* centers, void* cluster_size, void* embed_sum,
                              double decay, double eps, const void* x, const int64_t* labels,
                              const int64_t* sorted_labels, const int64_t* perm, int64_t n,
                              int64_t k, int64_t d, double* sums, int64_t* batch_counts,
                              double* pieces, double* total, double* row_norms,
                              const double* weights, double* batch_weights, cudaStream_t stream,
                              int64_t problems) {
  if (problems == 0) return cudaSuccess;
  if (k <= 0 || problems < 0 || k > INT32_MAX / problems) return cudaErrorInvalidValue;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using S = acc_t<T>;  // the state: float32, float64 for float64 centers
    ClusterSums s;
    cudaError_t err = cluster_sums_stage<T>(x, labels, sorted_labels, perm, n, k, d, sums,
                                            batch_counts, pieces, row_norms, weights,
                                            batch_weights, stream, &s, problems);
    if (err != cudaSuccess) return err;
    const unsigned blocks = static_cast<unsigned>(problems * k);
    KMGAN_LAUNCH(blocks, kApplyThreads, 0, stream, ema_state_kernel<S>)(
        static_cast<S*>(cluster_size), static_cast<S*>(embed_sum), decay, s, k);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    KMGAN_LAUNCH(static_cast<unsigned>(problems), kFinishThreads, 0, stream, ema_total_kernel<S>)(
        static_cast<const S*>(cluster_size), k, total);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    if (d == 0) return cudaSuccess;
    KMGAN_LAUNCH(blocks, kApplyThreads, 0, stream, ema_centers_kernel<T, S>)(
        static_cast<T*>(centers), static_cast<const S*>(cluster_size),
        static_cast<const S*>(embed_sum), total, eps, k, d, row_norms != nullptr);
    return cudaGetLastError();
  });
}

}  // namespace kmgan_cuda
