// Shared pieces of the CPU kernels (csrc/cpu/*_cpu.cpp): argument checks with named
// messages, the dtype dispatch, and the deterministic segmented sum that minibatch_update,
// ema_update and the centre gradients of assign/assigned_distance all use.
//
// Determinism: every reduction here has a fixed order that does not depend on the number
// of threads (column blocks are split across threads, or one task sums every row, and rows
// are always visited in index order; totals over rows go through fixed-size chunks combined
// in chunk order), so the CPU results are bitwise reproducible run to run and across
// torch.set_num_threads.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <cstdlib>
#include <type_traits>
#include <vector>

namespace kmgan_ext {
namespace cpu {

using at::Tensor;

// float for float32/float16/bfloat16, double for float64 (docs/ops.md: accumulation dtype).
template <typename scalar_t>
using acc_t = at::opmath_type<scalar_t>;

// Float32 outputs (dist2, losses), float64 for float64 inputs.
inline at::ScalarType out_dtype(const Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

#define KMGAN_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// Labels given as input are int64 or int32 (docs/ops.md: int32 read as they are, never
// copied to int64); the body sees their C type as index_t. Offsets such as labels[i] * d
// promote to int64_t with d, so an int32 label never overflows them.
#define KMGAN_DISPATCH_LABELS(TYPE, NAME, ...) AT_DISPATCH_INDEX_TYPES(TYPE, NAME, __VA_ARGS__)

// ----------------------------------------------------------------------------- checks
// The Python layer validates everything before calling a native op; these repeat the
// shape/dtype/device checks because the native ops are public (torch.ops.kmgan_ext.*_native)
// and a wrong index would read or write out of bounds.

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

inline void check_cpu(const char* name, const Tensor& t) {
  TORCH_CHECK(t.defined(), name, " must be a tensor, got an undefined tensor");
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got a tensor on ", t.device());
}

// (N, d) float32/float16/bfloat16/float64.
inline void check_features(const char* name, const Tensor& t) {
  check_cpu(name, t);
  TORCH_CHECK_VALUE(t.dim() == 2, name, " must be 2-D (N, d), got shape ", t.sizes());
  TORCH_CHECK_TYPE(is_supported_float(t.scalar_type()), name,
              " must be float32, float16, bfloat16 or float64, got ", t.scalar_type());
}

// Same dtype as ref and the same number of columns.
inline void check_like(const char* name, const Tensor& t, const char* ref_name, const Tensor& ref) {
  check_features(name, t);
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), name, " must have dtype ", ref.scalar_type(),
              " (as ", ref_name, "), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.size(1) == ref.size(1), name, " must have ", ref.size(1), " columns (", ref_name,
              ".shape[1]), got shape ", t.sizes());
}

inline void check_centers(const char* name, const Tensor& c, const char* x_name, const Tensor& x) {
  check_like(name, c, x_name, x);
  TORCH_CHECK_VALUE(c.size(0) >= 1, name, " must hold at least one center (K >= 1), got K = 0");
}

// 1-D int64 of length n.
inline void check_index(const char* name, const Tensor& t, int64_t n) {
  check_cpu(name, t);
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, name, " must be int64, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == n, name, " must have shape (", n, ",), got ",
              t.sizes());
}

// Labels as input: 1-D int64 or int32 of length n.
inline void check_labels(const char* name, const Tensor& t, int64_t n) {
  check_cpu(name, t);
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, name,
                   " must be int64 or int32, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == n, name, " must have shape (", n, ",), got ",
              t.sizes());
}

// Labels in [0, K): checked before any output is written (docs/ops.md, Bad input).
template <typename index_t>
inline void check_label_values(const char* name, const index_t* labels, int64_t n, int64_t k) {
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(labels[i] >= 0 && labels[i] < k, name, " must lie in [0, ", k, ") (K), found ",
                labels[i], " at position ", i);
  }
}

// A 0-d result of dtype `type` (float32 or float64) from a double, rounded as a cast rounds
// (inf past float32's range, as the reference's .to(float32)): at::full and fill_ refuse a
// finite double that float32 cannot hold instead.
inline double round_to(double v, at::ScalarType type) {
  return type == at::kFloat ? static_cast<double>(static_cast<float>(v)) : v;
}
inline Tensor scalar_result(double v, const at::TensorOptions& opts) {
  return at::full({}, round_to(v, c10::typeMetaToScalarType(opts.dtype())), opts);
}

// A contiguous tensor, uninitialised as at::empty, for a large output written once in full
// (the gradients of x of center_loss / assigned_distance backward). Outputs of 8 MB and more
// come from a small cache of 2 MB-aligned huge-page blocks (output_pool.cpp) that a freed
// output returns to, so a training loop's next backward reuses mapped memory instead of
// faulting in fresh pages the kernel must zero first (issue 15).
Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& opts);
// An output of at least this size written once in full goes to memory with streaming stores
// where a kernel has them: far larger than a core's L2, its lines would otherwise each be read
// from memory before being overwritten (center_loss's backward: 10.0 -> 3.5 ms for two 64 MB
// gradients on 2 cores of a Xeon).
constexpr int64_t kStreamOutputBytes = int64_t(8) << 20;

// A 0-d (or one-element) gradient as a double.
inline double scalar_grad(const char* name, const Tensor& g) {
  check_cpu(name, g);
  TORCH_CHECK(g.numel() == 1, name, " must hold one element, got shape ", g.sizes());
  return g.item<double>();
}

// ----------------------------------------------------------------------------- layout
// Columns are split across threads in blocks of 16, and every (cluster, column) sums its rows
// in index order whatever the thread count. Two threads' columns of one row of a shared
// (K, d) array still meet mid cache line unless each row is a whole number of 64-byte lines
// and the array starts on one (d = 100 doubles: 800 bytes, 12.5 lines): passes adding rows
// into such an array use for_accumulator_blocks.
constexpr int64_t kColumnBlock = 16;

// Work below this many elements runs on the calling thread (a parallel region costs ~10us).
constexpr int64_t kParallelElems = 1 << 15;

// parallel_for over column blocks of a (n, d) pass; fn(j0, j1) handles columns [j0, j1).
template <typename F>
inline void for_column_blocks(int64_t n, int64_t d, const F& fn) {
  const int64_t blocks = (d + kColumnBlock - 1) / kColumnBlock;
  const int64_t grain = n * d < kParallelElems ? blocks : 1;
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    fn(b0 * kColumnBlock, std::min(d, b1 * kColumnBlock));
  });
}

// for_column_blocks for a pass adding n rows into a (k, d) array of doubles a, and b (the
// compensation of a 2Sum; null when there is none): fn(j0, j1, pa, pb, ld) adds into
// pa[q * ld + (j - j0)] for cluster q and column j in [j0, j1) (pb likewise). Where the pass
// is split across threads, the rows outnumber the clusters and the array is at most 32 MB,
// pa and pb are private copies of the block's columns, written back when it is done: in a
// shared (k, d) array one thread's columns of a row start or end mid cache line unless d * 8
// is a multiple of 64 and the array 64-byte aligned, and two threads adding rows of one
// cluster wrote that line in turn (issue 15: the segment sums of 70,000 x 100 rows took
// 2.3-2.9 ms on 2 threads against 2.0-2.4 ms on 1). Every element sees the same additions in
// the same order: the same bits.
template <typename F>
inline void for_accumulator_blocks(int64_t n, int64_t d, int64_t k, double* a, double* b,
                                   const F& fn) {
  const int64_t blocks = (d + kColumnBlock - 1) / kColumnBlock;
  const bool split = blocks > 1 && n * d >= kParallelElems && at::get_num_threads() > 1;
  // The copies cost 2 k (j1 - j0) element moves against the pass's n (j1 - j0) additions,
  // and k d doubles of memory in all (above 32 MB the pass adds into the shared array).
  const bool copy = split && n >= 4 * k && k * d <= (int64_t(1) << 22);
  for_column_blocks(n, d, [&](int64_t j0, int64_t j1) {
    if (!copy || a == nullptr) {  // a null: nothing is summed (fn only reads)
      fn(j0, j1, a != nullptr ? a + j0 : nullptr, b != nullptr ? b + j0 : nullptr, d);
      return;
    }
    const int64_t w = j1 - j0;
    std::vector<double> pa(static_cast<size_t>(k * w)), pb(b != nullptr ? static_cast<size_t>(k * w) : 0);
    for (int64_t q = 0; q < k; ++q) {
      std::copy(a + q * d + j0, a + q * d + j1, pa.begin() + q * w);
      if (b != nullptr) std::copy(b + q * d + j0, b + q * d + j1, pb.begin() + q * w);
    }
    fn(j0, j1, pa.data(), b != nullptr ? pb.data() : nullptr, w);
    for (int64_t q = 0; q < k; ++q) {
      std::copy(pa.begin() + q * w, pa.begin() + (q + 1) * w, a + q * d + j0);
      if (b != nullptr) std::copy(pb.begin() + q * w, pb.begin() + (q + 1) * w, b + q * d + j0);
    }
  });
}

// Sum over i in [0, n) of term(i), in double, through fixed chunks of rows combined in chunk
// order: the same bits for any thread count.
template <typename F>
inline double ordered_row_sum(int64_t n, int64_t d, const F& term) {
  constexpr int64_t kChunk = 256;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(chunks, 0.0);
  const int64_t grain = std::max<int64_t>(1, kParallelElems / (kChunk * std::max<int64_t>(1, d)));
  at::parallel_for(0, chunks, grain, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double s = 0.0;
      for (int64_t i = c * kChunk, e = std::min(n, (c + 1) * kChunk); i < e; ++i) s += term(i);
      partial[c] = s;
    }
  });
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

// ----------------------------------------------------------------------------- segment sums
// m[k] = number of rows labelled k (k < K), with the label range checked first.
template <typename index_t>
inline std::vector<int64_t> label_counts(const char* name, const index_t* labels, int64_t n,
                                         int64_t k) {
  check_label_values(name, labels, n, k);
  std::vector<int64_t> m(k, 0);
  for (int64_t i = 0; i < n; ++i) ++m[labels[i]];
  return m;
}

// label_counts of a contiguous int64 or int32 labels tensor.
inline std::vector<int64_t> label_counts(const char* name, const Tensor& labels, int64_t k) {
  std::vector<int64_t> m;
  KMGAN_DISPATCH_LABELS(labels.scalar_type(), "label_counts", [&] {
    m = label_counts(name, labels.data_ptr<index_t>(), labels.numel(), k);
  });
  return m;
}

// check_label_values of a contiguous int64 or int32 labels tensor.
inline void check_label_values(const char* name, const Tensor& labels, int64_t k) {
  KMGAN_DISPATCH_LABELS(labels.scalar_type(), "check_label_values", [&] {
    check_label_values(name, labels.data_ptr<index_t>(), labels.numel(), k);
  });
}

// Per-cluster sums whose error does not grow with N (docs/ops.md, issue 16 item 1): a
// float32 running sum of 10^5 rows at offset 1e4 drifts by ~7 standard deviations.
// WideSum accumulates in double; for float32/float16/bfloat16 terms (24 significant bits) the
// double rounding error, at most N 2^-53 of sum |x|, stays below a float32 ulp of the result
// up to N ~ 2^29 rows. Float64 terms are summed with a compensated 2Sum (Knuth), whose error is
// ~2 ulps of the result plus N 2^-106 of sum |x|, independent of N in practice.
// (-ffp-contract=off and no -ffast-math in setup.py keep the 2Sum exact.)
template <typename scalar_t>
struct WideSum {
  static constexpr bool compensated = std::is_same<scalar_t, double>::value;
  std::vector<double> sum, comp;  // comp is empty unless compensated
  explicit WideSum(int64_t size)
      : sum(static_cast<size_t>(size), 0.0), comp(compensated ? static_cast<size_t>(size) : 0, 0.0) {}
  // Adds v to the sum s with compensation c (not read unless compensated).
  static inline void add_to(double& s, double& c, double v) {
    if constexpr (compensated) {
      const double t = s + v, bp = t - s;
      c += (s - (t - bp)) + (v - bp);
      s = t;
    } else {
      s += v;
    }
  }
  // Adds v to element e of the sums s with compensations c (null unless compensated).
  static inline void add_at(double* s, double* c, int64_t e, double v) {
    if constexpr (compensated) {
      add_to(s[e], c[e], v);
    } else {
      s[e] += v;
    }
  }
  // Adds v to element e.
  inline void add(int64_t e, double v) { add_at(sum.data(), comp.data(), e, v); }
  inline double value(int64_t e) const { return compensated ? sum[e] + comp[e] : sum[e]; }
};

// AVX2 + runtime check (segment_sums_avx2.cpp, assign_avx2.cpp): acc[l_i * ld + j - j0] +=
// x[i, j] for the columns [j0, j1), in double, rows in index order (for_accumulator_blocks).
bool avx2_kernels_available();
// Whether the environment variable `name` leaves a kernel on: unset, empty or starting with '0'
// (KMGAN_EXT_CPU_NO_AVX2, KMGAN_EXT_CPU_NO_AVX512; read once by use_avx2 / use_avx512).
inline bool not_switched_off(const char* name) {
  const char* off = std::getenv(name);
  return off == nullptr || off[0] == '\0' || off[0] == '0';
}
// avx2_kernels_available() unless KMGAN_EXT_CPU_NO_AVX2=1 asks for the portable paths
// (assign_cpu.cpp); every kernel with a portable twin decides through it.
bool use_avx2();
void segment_sums_f32_avx2(const float* x, int64_t n, int64_t d, const int64_t* labels,
                           double* acc, int64_t ld, int64_t j0, int64_t j1);
void segment_sums_f32_avx2(const float* x, int64_t n, int64_t d, const int32_t* labels,
                           double* acc, int64_t ld, int64_t j0, int64_t j1);

// S[k, :] = sum of the rows of x labelled k, as a WideSum over (K, d). Labels must be in
// range. Rows in index order for every (k, column): deterministic for any thread count.
template <typename scalar_t, typename index_t>
WideSum<scalar_t> segment_sums(const scalar_t* x, int64_t n, int64_t d, const index_t* labels,
                               int64_t k) {
  WideSum<scalar_t> sums(k * d);
  double* cp = WideSum<scalar_t>::compensated ? sums.comp.data() : nullptr;
  if constexpr (std::is_same<scalar_t, float>::value) {
    if (avx2_kernels_available()) {
      for_accumulator_blocks(n, d, k, sums.sum.data(), nullptr,
                             [&](int64_t j0, int64_t j1, double* a, double*, int64_t ld) {
                               segment_sums_f32_avx2(x, n, d, labels, a, ld, j0, j1);
                             });
      return sums;
    }
  }
  for_accumulator_blocks(n, d, k, sums.sum.data(), cp, [&](int64_t j0, int64_t j1, double* a, double* b, int64_t ld) {
    const int64_t w = j1 - j0;
    for (int64_t i = 0; i < n; ++i) {
      const scalar_t* __restrict__ xi = x + i * d + j0;
      double* __restrict__ s = a + labels[i] * ld;
      if constexpr (WideSum<scalar_t>::compensated) {
        double* __restrict__ e = b + labels[i] * ld;
#pragma omp simd
        for (int64_t j = 0; j < w; ++j) {
          const double v = static_cast<double>(xi[j]), t = s[j] + v, bp = t - s[j];
          e[j] += (s[j] - (t - bp)) + (v - bp);
          s[j] = t;
        }
      } else {
#pragma omp simd
        for (int64_t j = 0; j < w; ++j) s[j] += static_cast<double>(xi[j]);
      }
    }
  });
  return sums;
}

// metric="cosine" (issue 12): S[k, :] = sum of x_i / ||x_i|| over the rows labelled k (a zero
// row adds 0), in the same fixed order as segment_sums; ||x_i|| is formed in double, and the
// rows are scaled as they are summed (no normalised copy of x).
// ||x_i|| in double for every row (metric="cosine").
template <typename scalar_t>
std::vector<double> row_norms(const scalar_t* x, int64_t n, int64_t d) {
  std::vector<double> norm(n);
  at::parallel_for(0, n, std::max<int64_t>(1, kParallelElems / std::max<int64_t>(1, d)),
                   [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      double s = 0.0;
      for (int64_t j = 0; j < d; ++j) s += static_cast<double>(x[i * d + j]) * static_cast<double>(x[i * d + j]);
      norm[i] = std::sqrt(s);
    }
  });
  return norm;
}

template <typename scalar_t, typename index_t>
WideSum<scalar_t> unit_segment_sums(const scalar_t* x, int64_t n, int64_t d,
                                    const index_t* labels, int64_t k) {
  const std::vector<double> norm = row_norms(x, n, d);
  WideSum<scalar_t> sums(k * d);
  double* cp = WideSum<scalar_t>::compensated ? sums.comp.data() : nullptr;
  for_accumulator_blocks(n, d, k, sums.sum.data(), cp, [&](int64_t j0, int64_t j1, double* a, double* b, int64_t ld) {
    for (int64_t i = 0; i < n; ++i) {
      if (norm[i] == 0.0) continue;
      for (int64_t j = j0; j < j1; ++j)
        WideSum<scalar_t>::add_at(a, b, labels[i] * ld + (j - j0), static_cast<double>(x[i * d + j]) / norm[i]);
    }
  });
  return sums;
}

// v / ||v|| in place (double), a zero vector left as it is.
inline void normalize_in_place(double* v, int64_t d) {
  double s = 0.0;
  for (int64_t j = 0; j < d; ++j) s += v[j] * v[j];
  const double nrm = std::sqrt(s);
  if (nrm == 0.0) return;
  for (int64_t j = 0; j < d; ++j) v[j] /= nrm;
}

// The 16 partial sums of assigned_distance_cpu.cpp's row_sq (s[q]: the columns j with
// j % 16 == q) added in one fixed order: u_q = (s_q + s_{q+8}) + (s_{q+4} + s_{q+12}), then
// (u_0 + u_1) + (u_2 + u_3) (the lane-wise vector additions of 4 doubles, then the lanes).
inline double row_sq_combine(const double* s) {
  double u[4];
  for (int q = 0; q < 4; ++q) u[q] = (s[q] + s[q + 8]) + (s[q + 4] + s[q + 12]);
  return (u[0] + u[1]) + (u[2] + u[3]);
}
// AVX2 + runtime check (row_sq_avx2.cpp): ||x_i - c||^2 in double for float32 rows, in the
// order of assigned_distance_cpu.cpp's row_sq (the same bits).
double row_sq_f32_avx2(const float* xi, const float* ci, int64_t d);

// AVX2 + runtime check (center_loss_avx2.cpp): center_loss_cpu.cpp's float32 row loop, same
// bits: acc[j] += w[l_i] * x[i, j] for rows [i0, i1).
void center_loss_rows_f32_avx2(const float* x, const int64_t* labels, const double* w, int64_t i0,
                               int64_t i1, int64_t d, double* acc);
void center_loss_rows_f32_avx2(const float* x, const int32_t* labels, const double* w, int64_t i0,
                               int64_t i1, int64_t d, double* acc);
// AVX2 + runtime check (center_loss_avx2.cpp): center_loss_cpu.cpp's float32 gradient rows,
// same bits, out[i, j] = float(sgn[j] * (g / (1 + n[l_i]))) for rows [i0, i1), written with
// streaming stores. Only for outputs of at least kStreamOutputBytes, d a multiple of 8 and
// out 32-byte aligned.
void center_loss_grad_rows_f32_avx2(float* out, const int64_t* labels, const int64_t* n,
                                    const double* sgn, int64_t d, double g, int64_t i0, int64_t i1);
void center_loss_grad_rows_f32_avx2(float* out, const int32_t* labels, const int64_t* n,
                                    const double* sgn, int64_t d, double g, int64_t i0, int64_t i1);

// AVX2 + runtime check (scaled_diff_grad_avx2.cpp): scaled_diff_rows for float32, same bits;
// int64 or int32 labels.
void scaled_diff_rows_f32_avx2(const float* x, const float* c, const int64_t* labels, int64_t d,
                               const double* scale, int64_t i0, int64_t i1, float* gx,
                               double* sums);
void scaled_diff_rows_f32_avx2(const float* x, const float* c, const int32_t* labels, int64_t d,
                               const double* scale, int64_t i0, int64_t i1, float* gx,
                               double* sums);

// Rows [i0, i1) in index order, all columns: gx_i when gx is not null, and -g added to the
// rows of sums when sums is not null.
template <typename scalar_t, typename index_t>
void scaled_diff_rows(const scalar_t* x, const scalar_t* c, const index_t* labels, int64_t d,
                      const double* scale, int64_t i0, int64_t i1, scalar_t* gx,
                      WideSum<scalar_t>* sums) {
  using acc = acc_t<scalar_t>;
  if constexpr (std::is_same<scalar_t, float>::value) {
    if (use_avx2()) {
      scaled_diff_rows_f32_avx2(x, c, labels, d, scale, i0, i1, gx,
                                sums != nullptr ? sums->sum.data() : nullptr);
      return;
    }
  }
  for (int64_t i = i0; i < i1; ++i) {
    const scalar_t* __restrict__ xi = x + i * d;
    const scalar_t* __restrict__ ci = c + labels[i] * d;
    const double s = scale[i];
    if (sums == nullptr) {
      scalar_t* __restrict__ gi = gx + i * d;
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) {
        const double g = s * (static_cast<double>(xi[j]) - static_cast<double>(ci[j]));
        gi[j] = static_cast<scalar_t>(static_cast<acc>(g));
      }
      continue;
    }
    const int64_t base = static_cast<int64_t>(labels[i]) * d;
    if constexpr (!WideSum<scalar_t>::compensated) {
      // Plain double sums through restrict pointers, so the loop vectorises (issue 15: the
      // method call per element ran at a tenth of the bandwidth).
      double* __restrict__ sp = sums->sum.data() + base;
      if (gx != nullptr) {
        scalar_t* __restrict__ gi = gx + i * d;
#pragma omp simd
        for (int64_t j = 0; j < d; ++j) {
          const double g = s * (static_cast<double>(xi[j]) - static_cast<double>(ci[j]));
          gi[j] = static_cast<scalar_t>(static_cast<acc>(g));
          sp[j] += -g;
        }
      } else {
#pragma omp simd
        for (int64_t j = 0; j < d; ++j) {
          sp[j] += -(s * (static_cast<double>(xi[j]) - static_cast<double>(ci[j])));
        }
      }
    } else {
      for (int64_t j = 0; j < d; ++j) {
        const double g = s * (static_cast<double>(xi[j]) - static_cast<double>(ci[j]));
        if (gx != nullptr) gx[i * d + j] = static_cast<scalar_t>(static_cast<acc>(g));
        sums->add(base + j, -g);
      }
    }
  }
}

// The gradient of sum_i f_i(||x_i - c_{l_i}||) shapes used by assign_backward and
// assigned_distance_backward: gx_i = scale_i (x_i - c_{l_i}) and, when gc is not null,
// gc_k = -sum_{l_i = k} gx_i (a WideSum of the unrounded terms, rows in index order).
// Scales, differences and products in double, each gx rounded once: a float32 difference of
// two values near float32 max overflows, and a scale 1 / ||.|| past 1e38 is subnormal in float32,
// where the double product fits (contract 2).
//
// Work split (issue 15): with gc, one task (the owner) adds every row's terms to the sums, in
// index order, so each (centre, column) sum has the same bits for any thread count; the
// other tasks write gx for whole chunks of rows taken from the end, and the owner writes gx
// only for the chunks it reaches first (which task writes a chunk changes no bit). Splitting
// the columns across threads instead (each thread reading and writing part of every row, as
// this did before) was slow on the 2-core machine: at N = 65,536, d = 256, K = 1,024 each of
// the 2 threads spent ~17 ms of CPU time where one thread does the whole fused pass in
// 9-10 ms (a standalone copy of both loops, per-thread CPU time, load ~7). The cost: the
// pass is bounded by how fast one core reads x (not measured on more than 2 cores).
template <typename scalar_t, typename index_t>
void scaled_diff_grad(const scalar_t* x, const scalar_t* c, const index_t* labels, int64_t n,
                      int64_t d, int64_t k, const double* scale, scalar_t* gx, scalar_t* gc) {
  using acc = acc_t<scalar_t>;
  const int64_t chunk = std::max<int64_t>(1, kParallelElems / std::max<int64_t>(1, d));
  if (gc == nullptr) {
    at::parallel_for(0, n, chunk, [&](int64_t i0, int64_t i1) {
      scaled_diff_rows<scalar_t, index_t>(x, c, labels, d, scale, i0, i1, gx, nullptr);
    });
    return;
  }
  WideSum<scalar_t> sums(k * d);
  const int64_t chunks = (n + chunk - 1) / chunk;
  // taken[ch]: chunk ch's gx is written (or being written) by the task that set it.
  std::unique_ptr<std::atomic<bool>[]> taken(
      new std::atomic<bool>[static_cast<size_t>(std::max<int64_t>(1, chunks))]);
  for (int64_t ch = 0; ch < chunks; ++ch) taken[ch].store(false, std::memory_order_relaxed);
  std::atomic<int64_t> next_from_end{chunks};
  const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), chunks));
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      if (t == 0) {
        for (int64_t ch = 0; ch < chunks; ++ch) {
          const bool write_gx = !taken[ch].exchange(true, std::memory_order_relaxed);
          scaled_diff_rows<scalar_t, index_t>(x, c, labels, d, scale, ch * chunk,
                                              std::min(n, (ch + 1) * chunk),
                                              write_gx ? gx : nullptr, &sums);
        }
        continue;
      }
      for (;;) {
        // Chunks are taken from the end down; once one is the owner's, so are all below it.
        const int64_t ch = next_from_end.fetch_sub(1, std::memory_order_relaxed) - 1;
        if (ch < 0 || taken[ch].exchange(true, std::memory_order_relaxed)) break;
        scaled_diff_rows<scalar_t, index_t>(x, c, labels, d, scale, ch * chunk,
                                            std::min(n, (ch + 1) * chunk), gx, nullptr);
      }
    }
  });
  at::parallel_for(0, k * d, kParallelElems, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e) {
      gc[e] = static_cast<scalar_t>(static_cast<acc>(sums.value(e)));
    }
  });
}

}  // namespace cpu
}  // namespace kmgan_ext
