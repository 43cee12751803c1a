// The raw-pointer interface between the torch bindings (csrc/cuda/<op>_cuda_binding.cpp: host
// compiler, torch headers) and the kernels (csrc/cuda/<op>_cuda.cu: nvcc, no torch headers, so
// they build several times faster, STYLE.md rule 5). The bindings are not <op>_cuda.cpp because
// torch's ninja build names objects by file stem: <op>_cuda.cpp and <op>_cuda.cu would both
// produce <op>_cuda.o.
//
// Conventions for every launcher:
//  * T is the storage dtype named by `dtype` (x and centers always share it); "acc" buffers are
//    float32, float64 when T is float64 (the accumulation type, also the dtype of dist2, of the
//    losses and of u_diff).
//  * Tensors are contiguous, row-major, on the current device; labels are int64 in [0, K)
//    (validated by the Python layer; a kernel skips an out-of-range label rather than write
//    out of bounds).
//  * Everything is enqueued on `stream`; nothing synchronises. The return value is the first
//    CUDA error met (cudaSuccess otherwise); the binding turns it into an exception.
//  * A launcher with no work (N = 0, d = 0) returns without launching.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace kmgan_cuda {

enum class Dtype : int { kFloat32, kFloat16, kBFloat16, kFloat64 };

// ------------------------------------------------------------------------------ assign
// labels[i] = argmin_k ||x_i - c_k||^2 (ties to the lowest k), dist2[i] (acc) = that minimum.
// batch > 1: that many independent problems, x (batch, n, d), centers (batch, k, d), labels and
// dist2 (batch, n), in one launch (the problem is blockIdx.y; 65535 problems a launch).
cudaError_t assign_launch(Dtype dtype, const void* x, const void* centers, int64_t n, int64_t k,
                          int64_t d, int64_t* labels, void* dist2, cudaStream_t stream,
                          int64_t batch = 1);

// grad_x[i] = 2 grad_dist2[i] (x_i - c_{l_i}) in T; when grad_centers_acc (K, d, double) is
// not null it receives the negated segment sum (zeroed here first; double atomics).
cudaError_t assign_backward_launch(Dtype dtype, const void* grad_dist2, const void* x,
                                   const void* centers, const int64_t* labels, int64_t n,
                                   int64_t k, int64_t d, void* grad_x, void* grad_centers_acc,
                                   cudaStream_t stream);

// ------------------------------------------------------------------------------ top-k assign
// Length L of each row's running list (min(K, k + slack)); list_val (N, L) double and
// list_idx (N, L) int64 are the launcher's workspace. labels (N, k) int64 and dist2 (N, k) acc:
// the k nearest centers ascending (ties to the lowest index, NaN distances first), exact.
// unit not null: metric="cosine", the k largest cosines (reference.assign_topk's order) with
// dist2 = 2 - 2 cos; unit is a K x d float workspace (the unit centers).
// batch > 1: that many independent problems, x (batch, n, d), centers (batch, kc, d), labels
// and dist2 (batch, n, k), workspaces (batch * n, L) and unit (batch * kc, d), in one launch
// (two with cosine: the unit centers, then the problems on blockIdx.y; 65535 problems a launch).
int64_t assign_topk_list_len(int64_t k, int64_t kc);
cudaError_t assign_topk_launch(Dtype dtype, const void* x, const void* centers, int64_t n,
                               int64_t kc, int64_t d, int64_t k, double* list_val,
                               int64_t* list_idx, int64_t* labels, void* dist2,
                               cudaStream_t stream, float* unit = nullptr, int64_t batch = 1);

// ------------------------------------------------------------------------------ soft assign
// q (N, K) acc = softmax_k(s(D_ik)), s = -(alpha+1)/2 log1p(D/alpha) (student_t) or -D/T.
cudaError_t soft_assign_launch(Dtype dtype, const void* x, const void* centers, int64_t n,
                               int64_t kc, int64_t d, bool student_t, double alpha,
                               double temperature, void* q, cudaStream_t stream);

// grad_q, q: (N, K) acc. Workspaces: r_work (N) acc, row_work (N, d) double. grad_x (N, d) T;
// grad_centers_acc (K, d) double (may be null: no centers' gradient), written, not added to.
cudaError_t soft_assign_backward_launch(Dtype dtype, const void* grad_q, const void* q,
                                        const void* x, const void* centers, int64_t n,
                                        int64_t kc, int64_t d, bool student_t, double alpha,
                                        double temperature, void* r_work, double* row_work,
                                        void* grad_x, double* grad_centers_acc,
                                        cudaStream_t stream);

// metric="cosine" (issue 12, assign_cosine_cuda.cu): labels[i] = argmax_k cos(x_i, c_k) as the
// float64 reference decides it (ties to the lowest k, NaN as torch.argmin on -key), dist2[i]
// (acc) = 2 - 2 cos there, clamped at 0. unit: batch x K x d floats of workspace (the unit
// centers). batch > 1: independent problems as assign_launch's, one launch for all.
cudaError_t assign_cosine_launch(Dtype dtype, const void* x, const void* centers, int64_t n,
                                 int64_t k, int64_t d, float* unit, int64_t* labels, void* dist2,
                                 cudaStream_t stream, int64_t batch = 1);

// unit (k x d floats) = c / ||c|| per center, 0 for a zero center, NaN for a NaN/Inf one or a
// norm past double's range (assign_cosine_cuda.cu; also used by the cosine top-k).
cudaError_t unit_centers_launch(Dtype dtype, const void* centers, int64_t k, int64_t d,
                                float* unit, cudaStream_t stream);

// The cosine backward: grad_x (T) and, when grad_centers_acc (K, d, double) is not null, the
// centers' segment sum (zeroed here first; double atomics). docs/ops.md gives the formulas.
cudaError_t assign_cosine_backward_launch(Dtype dtype, const void* grad_dist2, const void* x,
                                          const void* centers, const int64_t* labels, int64_t n,
                                          int64_t k, int64_t d, void* grad_x,
                                          void* grad_centers_acc, cudaStream_t stream);

// ------------------------------------------------------------------------------ center updates
// Both updates form the batch's per-cluster sums S_k in double (error independent of N:
// contract 3) and row counts m_k, in one of two modes:
//   fast (sorted_labels == nullptr): sums (K, d) and batch_counts (K) are zeroed here and
//     accumulated with atomics: each block sums tiles of kFlushRows rows in float32 shared
//     memory (float64 for float64 x) and adds each tile's partials to the double sums, or,
//     when (K, d) does not fit in shared memory, adds every row there directly. The last bits
//     may vary run to run.
//   deterministic: sorted_labels / perm are labels sorted stably and the permutation that
//     sorts them (N each); pieces holds cluster_pieces_elems(n, d) doubles; sums is written
//     without atomics and summed in a fixed order: bitwise identical run to run.
//     batch_counts is unused.
// metric="cosine": row_norms (N doubles of workspace) not null; the sums add x_i / ||x_i|| and
// the centers the rule writes are renormalised to unit length (a zero one stays zero).
// Rows per chunk of the deterministic segmented sum (see minibatch_update_cuda.cu).
constexpr int64_t kSortedChunkRows = 32;

// Elements (double) of the deterministic mode's piece workspace: a first and a last piece of
// every chunk of kSortedChunkRows sorted rows, each d wide.
inline int64_t cluster_pieces_elems(int64_t n, int64_t d) {
  return 2 * ((n + kSortedChunkRows - 1) / kSortedChunkRows) * d;
}

// Sculley's mini-batch k-means (docs/ops.md, Center updates), in place: counts_k += m_k;
// c_k += (S_k - m_k c_k) / counts_k in double for every k with m_k > 0 (others untouched).
// weights (sample_weight, N doubles) may be null; when given, counts is double (cumulative
// weights, scikit-learn's weight_sums) instead of int64, and batch_weights is K doubles of
// workspace (fast mode).
cudaError_t minibatch_update_launch(Dtype dtype, void* centers, void* counts, const void* x,
                                    const int64_t* labels, const int64_t* sorted_labels,
                                    const int64_t* perm, int64_t n, int64_t k, int64_t d,
                                    double* sums, int64_t* batch_counts, double* pieces,
                                    double* row_norms, const double* weights,
                                    double* batch_weights, cudaStream_t stream);

// The VQ-VAE codebook EMA (contract 4), in place, every k (also m_k = 0):
//   N_k <- decay N_k + (1 - decay) m_k ;  M_k <- decay M_k + (1 - decay) S_k   (stored)
//   n = sum_k N_k (as stored) ;  N'_k = (N_k + eps) / (n + K eps) n ;  c_k = M_k / N'_k,
// c_k unchanged where N'_k == 0. cluster_size N (K) and embed_sum M (K, d) are float32
// (float64 when dtype is float64); arithmetic in double. total: one double of workspace.
// N = 0 is valid (the state decays).
// problems P > 1: P independent problems, each of n rows and k clusters (labels in [0, k) of
// each problem), every buffer P times one problem's and laid out problem after problem;
// sorted_labels / perm are each problem's own stable sort (positions within the problem);
// total is P doubles. Each problem gets its own total n; the launches are one problem's.
cudaError_t ema_update_launch(Dtype dtype, void* centers, void* cluster_size, void* embed_sum,
                              double decay, double eps, const void* x, const int64_t* labels,
                              const int64_t* sorted_labels, const int64_t* perm, int64_t n,
                              int64_t k, int64_t d, double* sums, int64_t* batch_counts,
                              double* pieces, double* total, double* row_norms,
                              const double* weights, double* batch_weights,
                              cudaStream_t stream, int64_t problems = 1);

// ------------------------------------------------------------------------------ center loss
// counts_* (int64) = rows per cluster; u_diff (d, acc) = u_real - u_fake with
// u = sum_m c_m / (1 + n_m) + sum_i x_i / (1 + n_{l_i}); loss (acc scalar) = ||u_diff||_1.
cudaError_t center_loss_launch(Dtype dtype, const void* x_real, const int64_t* labels_real,
                               const void* centers_real, int64_t n_real, int64_t k_real,
                               const void* x_fake, const int64_t* labels_fake,
                               const void* centers_fake, int64_t n_fake, int64_t k_fake, int64_t d,
                               void* loss, void* u_diff, int64_t* counts_real,
                               int64_t* counts_fake, cudaStream_t stream);

// grad_real[i, j] = g sign(u_diff_j) / (1 + counts_real[l_i]); grad_fake the negation with the
// fake side's counts. grad (acc scalar) and u_diff (acc) are read on the device.
cudaError_t center_loss_backward_launch(Dtype dtype, const void* grad, const void* u_diff,
                                        const int64_t* labels_real, const int64_t* counts_real,
                                        int64_t n_real, int64_t k_real,
                                        const int64_t* labels_fake, const int64_t* counts_fake,
                                        int64_t n_fake, int64_t k_fake, int64_t d, void* grad_real,
                                        void* grad_fake, cudaStream_t stream);

// ------------------------------------------------------------------------------ assigned distance
enum class Reduction : int {
  kFro,    // sqrt(sum_i r_i)
  kMean,   // sum_i sqrt(r_i) / N
  kSqSum,  // 0.5 sum_i r_i
};  // with r_i = ||x_i - c_{l_i}||^2

// Blocks of the forward's first pass, hence the double elements of its partials workspace
// (float64 partials: a float32 sum of squares may pass 3.4e38 while the result fits).
int64_t assigned_distance_num_partials(int64_t n);

cudaError_t assigned_distance_launch(Dtype dtype, Reduction reduction, const void* x,
                                     const int64_t* labels, const void* centers, int64_t n,
                                     int64_t k, int64_t d, void* partials, void* out,
                                     cudaStream_t stream);

// grad and out are acc scalars on the device; grad_centers_acc (K, d, double; double atomics)
// may be null.
cudaError_t assigned_distance_backward_launch(Dtype dtype, Reduction reduction, const void* grad,
                                              const void* out, const void* x,
                                              const int64_t* labels, const void* centers,
                                              int64_t n, int64_t k, int64_t d, void* grad_x,
                                              void* grad_centers_acc, cudaStream_t stream);

// ------------------------------------------------------------------------------ pairwise L1
// sorted: (d, L) each row one feature column sorted ascending. Within one batch (source ==
// nullptr, L = n_a, n_b = 0) out = sum_{i != j} ||a_i - a_j||_1; between two batches source
// (d, L, int64) holds each value's index in cat([a, b]) (L = n_a + n_b, an index < n_a is a
// row of a) and out = sum_{i, j} ||a_i - b_j||_1. col_sums: d acc of workspace.
cudaError_t pairwise_l1_launch(Dtype dtype, const void* sorted, const int64_t* source,
                               int64_t n_a, int64_t n_b, int64_t d, void* col_sums, void* out,
                               cudaStream_t stream);

// out[i, j] = factor * grad * (#{t: sorted[j, t] < v} - #{t: sorted[j, t] > v}), v = values[i, j];
// values (n, d) T, sorted (d, m) T, grad an acc scalar on the device, out (n, d) T.
cudaError_t pairwise_l1_rank_grad_launch(Dtype dtype, const void* grad, double factor,
                                         const void* values, int64_t n, int64_t d,
                                         const void* sorted, int64_t m, void* out,
                                         cudaStream_t stream);

}  // namespace kmgan_cuda
