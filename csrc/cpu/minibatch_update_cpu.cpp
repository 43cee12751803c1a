// Center updates on CPU (docs/ops.md): minibatch_update_, minibatch_step_, ema_update_.
//
// All three form the per-cluster sums S_k (segment_sums, common.h: double accumulation, so the
// error does not grow with N) and counts m_k, then apply the update per cluster in double.
// The order is fixed (rows in index order for every (k, column), columns split across
// threads), so the CPU result is bitwise identical run to run and for any thread count: the
// `deterministic` flag asks for nothing more here. Labels and counts are checked before
// anything is written, so a failed call leaves every argument unchanged.
#include "assign_cpu.h"

#include <cmath>
#include <limits>

namespace kmgan_ext {
namespace cpu {
namespace {

void check_update_args(const Tensor& centers, const Tensor& x) {
  check_features("x", x);
  check_centers("centers", centers, "x", x);
}

// In-place arguments may be non-contiguous when an op is called directly: work on a
// contiguous copy and write it back.
Tensor contiguous_work(const Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }
void write_back(const Tensor& work, const Tensor& t) {
  if (!work.is_same(t)) t.copy_(work);
}

// counts_k >= 0, and counts_k + m_k representable: a count near 2^63 would wrap negative.
void check_counts(const int64_t* counts, const std::vector<int64_t>& m) {
  for (size_t q = 0; q < m.size(); ++q) {
    TORCH_CHECK_VALUE(counts[q] >= 0, "counts must be non-negative, found ", counts[q],
                      " at position ", q);
    TORCH_CHECK_VALUE(counts[q] <= std::numeric_limits<int64_t>::max() - m[q],
                      "counts would overflow int64: counts[", q, "] = ", counts[q], " plus ",
                      m[q], " new rows");
  }
}

// Sculley / scikit-learn: counts_k += m_k; c_k += (S_k - m_k c_k) / counts_k for m_k > 0.
// cosine (spherical k-means, issue 12): the rows enter as x_i / ||x_i|| and every updated
// center is renormalised to unit length (a zero result stays zero).
template <typename scalar_t, typename index_t>
void sculley_update(scalar_t* c, int64_t* counts, const scalar_t* x, const index_t* labels,
                    int64_t n, int64_t d, int64_t k, const std::vector<int64_t>& m,
                    bool cosine = false) {
  const WideSum<scalar_t> sums =
      cosine ? unit_segment_sums(x, n, d, labels, k) : segment_sums(x, n, d, labels, k);
  std::vector<double> row(cosine ? d : 0);
  for (int64_t q = 0; q < k; ++q) {
    if (m[q] == 0) continue;
    counts[q] += m[q];
    const double mq = static_cast<double>(m[q]);
    const double total = static_cast<double>(counts[q]);
    scalar_t* cq = c + q * d;
    if (cosine) {
      for (int64_t j = 0; j < d; ++j) {
        const double cj = static_cast<double>(cq[j]);
        row[j] = cj + (sums.value(q * d + j) - mq * cj) / total;
      }
      normalize_in_place(row.data(), d);
      for (int64_t j = 0; j < d; ++j) cq[j] = static_cast<scalar_t>(row[j]);
      continue;
    }
    for (int64_t j = 0; j < d; ++j) {
      const double cj = static_cast<double>(cq[j]);
      cq[j] = static_cast<scalar_t>(cj + (sums.value(q * d + j) - mq * cj) / total);
    }
  }
}

// sample_weight (issue 12): S[k, :] = sum of w_i x_i over the rows labelled k, each term formed
// in double as the reference does ((x_i / ||x_i||) w_i under cosine, a zero row adding 0), rows
// in index order for every (k, column) as segment_sums (deterministic for any thread count),
// and wsum[k] = sum of their w_i (double, index order). The column loops are written as
// segment_sums' so that they vectorise (float32, N=65536 d=64 K=64: 1.5x the unweighted
// AVX2 sum, measured; 5.7x with a per-element WideSum::add).
template <typename scalar_t, typename index_t>
WideSum<scalar_t> weighted_segment_sums(const scalar_t* x, int64_t n, int64_t d,
                                        const index_t* labels, int64_t k, const double* w,
                                        bool cosine, std::vector<double>& wsum) {
  const std::vector<double> norm = cosine ? row_norms(x, n, d) : std::vector<double>();
  wsum.assign(static_cast<size_t>(k), 0.0);
  for (int64_t i = 0; i < n; ++i) wsum[labels[i]] += w[i];
  WideSum<scalar_t> sums(k * d);
  double* cp = WideSum<scalar_t>::compensated ? sums.comp.data() : nullptr;
  for_accumulator_blocks(n, d, k, sums.sum.data(), cp, [&](int64_t j0, int64_t j1, double* a, double* b, int64_t ld) {
    const int64_t w_cols = j1 - j0;
    for (int64_t i = 0; i < n; ++i) {
      if (cosine && norm[i] == 0.0) continue;
      const scalar_t* __restrict__ xi = x + i * d + j0;
      double* __restrict__ s = a + labels[i] * ld;
      const double wi = w[i], nrm = cosine ? norm[i] : 1.0;
      if constexpr (WideSum<scalar_t>::compensated) {
        double* __restrict__ e = b + labels[i] * ld;
#pragma omp simd
        for (int64_t j = 0; j < w_cols; ++j) {
          const double v = (cosine ? static_cast<double>(xi[j]) / nrm : static_cast<double>(xi[j])) * wi;
          const double t = s[j] + v, bp = t - s[j];
          e[j] += (s[j] - (t - bp)) + (v - bp);
          s[j] = t;
        }
      } else if (cosine) {
#pragma omp simd
        for (int64_t j = 0; j < w_cols; ++j) s[j] += static_cast<double>(xi[j]) / nrm * wi;
      } else {
#pragma omp simd
        for (int64_t j = 0; j < w_cols; ++j) s[j] += static_cast<double>(xi[j]) * wi;
      }
    }
  });
  return sums;
}

// sample_weight (issue 12): (N,) floating, finite and >= 0, read in double (N values).
Tensor checked_weights(const c10::optional<Tensor>& sample_weight, const Tensor& x) {
  const Tensor& w = *sample_weight;
  check_cpu("sample_weight", w);
  TORCH_CHECK_TYPE(at::isFloatingType(w.scalar_type()), "sample_weight must be a floating tensor, got ",
                   w.scalar_type());
  TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == x.size(0), "sample_weight must have shape (",
                    x.size(0), ",), got ", w.sizes());
  Tensor wd = w.to(at::kDouble).contiguous();
  const double* wp = wd.data_ptr<double>();
  for (int64_t i = 0; i < wd.numel(); ++i)
    TORCH_CHECK_VALUE(std::isfinite(wp[i]) && wp[i] >= 0.0,
                      "sample_weight must be finite and non-negative, found ", wp[i],
                      " at position ", i);
  return wd;
}

// scikit-learn's _minibatch_update_dense with sample_weight, transcribed: for every k whose
// batch weight w_k > 0, c_k <- (c_k W_k + sum_{l_i = k} w_i x_i) * (1 / (W_k + w_k)) and
// W_k += w_k, in double (W = counts, float64 cumulative weights). cosine: the weighted rows
// enter as w_i x_i / ||x_i|| and each updated center is renormalised.
template <typename scalar_t, typename index_t>
void weighted_sculley_update(scalar_t* c, double* counts, const scalar_t* x,
                             const index_t* labels, int64_t n, int64_t d, int64_t k,
                             const double* w, bool cosine) {
  std::vector<double> wsum;
  const WideSum<scalar_t> sums = weighted_segment_sums(x, n, d, labels, k, w, cosine, wsum);
  std::vector<double> row(d);
  for (int64_t q = 0; q < k; ++q) {
    if (!(wsum[q] > 0.0)) continue;
    const double before = counts[q];
    counts[q] = before + wsum[q];
    const double alpha = 1.0 / counts[q];
    scalar_t* cq = c + q * d;
    for (int64_t j = 0; j < d; ++j)
      row[j] = (static_cast<double>(cq[j]) * before + sums.value(q * d + j)) * alpha;
    if (cosine) normalize_in_place(row.data(), d);
    for (int64_t j = 0; j < d; ++j) cq[j] = static_cast<scalar_t>(row[j]);
  }
}

void weighted_update_contiguous(const Tensor& centers, const Tensor& counts, const Tensor& x,
                                const Tensor& labels, const Tensor& w, bool cosine) {
  const int64_t n = x.size(0), d = x.size(1), k = centers.size(0);
  check_label_values("labels", labels, k);
  const double* cp = counts.data_ptr<double>();
  for (int64_t q = 0; q < k; ++q)
    TORCH_CHECK_VALUE(std::isfinite(cp[q]) && cp[q] >= 0.0,
                      "counts must be finite and non-negative, found ", cp[q], " at position ", q);
  if (n == 0) return;
  KMGAN_DISPATCH_FLOATING(x.scalar_type(), "minibatch_update_native_", [&] {
  KMGAN_DISPATCH_LABELS(labels.scalar_type(), "minibatch_update_native_", [&] {
    weighted_sculley_update(centers.data_ptr<scalar_t>(), counts.data_ptr<double>(),
                            x.data_ptr<scalar_t>(), labels.data_ptr<index_t>(), n, d, k,
                            w.data_ptr<double>(), cosine);
  });
  });
}

// counts: int64 row counts, or float64 cumulative weights with sample_weight.
void check_counts_tensor(const Tensor& counts, int64_t k, bool weighted) {
  if (!weighted) {
    check_index("counts", counts, k);
    return;
  }
  check_cpu("counts", counts);
  TORCH_CHECK_TYPE(counts.scalar_type() == at::kDouble,
                   "counts must be float64 (cumulative weights) with sample_weight, got ",
                   counts.scalar_type());
  TORCH_CHECK_VALUE(counts.dim() == 1 && counts.size(0) == k, "counts must have shape (", k,
                    ",), got ", counts.sizes());
}

void update_contiguous(const Tensor& centers, const Tensor& counts, const Tensor& x,
                       const Tensor& labels, bool cosine = false) {
  const int64_t n = x.size(0), d = x.size(1), k = centers.size(0);
  const std::vector<int64_t> m = label_counts("labels", labels, k);
  check_counts(counts.data_ptr<int64_t>(), m);
  if (n == 0) return;
  KMGAN_DISPATCH_FLOATING(x.scalar_type(), "minibatch_update_native_", [&] {
  KMGAN_DISPATCH_LABELS(labels.scalar_type(), "minibatch_update_native_", [&] {
    sculley_update(centers.data_ptr<scalar_t>(), counts.data_ptr<int64_t>(),
                   x.data_ptr<scalar_t>(), labels.data_ptr<index_t>(), n, d, k, m, cosine);
  });
  });
}

void minibatch_update_native_(Tensor& centers, Tensor& counts, const Tensor& x_in,
                              const Tensor& labels_in, bool /*deterministic: always*/,
                              bool cosine, const c10::optional<Tensor>& sample_weight) {
  check_update_args(centers, x_in);
  check_counts_tensor(counts, centers.size(0), sample_weight.has_value());
  check_labels("labels", labels_in, x_in.size(0));
  const Tensor x = x_in.contiguous(), labels = labels_in.contiguous();
  const Tensor w = sample_weight.has_value() ? checked_weights(sample_weight, x) : Tensor();
  const Tensor c = contiguous_work(centers), cnt = contiguous_work(counts);
  if (w.defined()) {
    weighted_update_contiguous(c, cnt, x, labels, w, cosine);
  } else {
    update_contiguous(c, cnt, x, labels, cosine);
  }
  write_back(c, centers);
  write_back(cnt, counts);
}

Tensor minibatch_step_native_(Tensor& centers, Tensor& counts, const Tensor& x_in,
                              bool /*deterministic: always*/, bool cosine,
                              const c10::optional<Tensor>& sample_weight) {
  check_update_args(centers, x_in);
  check_counts_tensor(counts, centers.size(0), sample_weight.has_value());
  const Tensor x = x_in.contiguous();
  const Tensor w = sample_weight.has_value() ? checked_weights(sample_weight, x) : Tensor();
  if (w.defined()) {  // the counts' values, before the assign (nothing written on failure)
    const double* cp = counts.contiguous().data_ptr<double>();
    for (int64_t q = 0; q < counts.numel(); ++q)
      TORCH_CHECK_VALUE(std::isfinite(cp[q]) && cp[q] >= 0.0,
                        "counts must be finite and non-negative, found ", cp[q], " at position ", q);
  }
  const Tensor c = contiguous_work(centers), cnt = contiguous_work(counts);
  Tensor labels = at::empty({x.size(0)}, x.options().dtype(at::kLong));
  // Labels against the centers before the update; no distances needed.
  if (cosine) {
    assign_cosine_into(x, c, labels, Tensor());
  } else {
    assign_into(x, c, labels, Tensor());
  }
  if (w.defined()) {
    weighted_update_contiguous(c, cnt, x, labels, w, cosine);
  } else {
    update_contiguous(c, cnt, x, labels, cosine);
  }
  write_back(c, centers);
  write_back(cnt, counts);
  return labels;
}

// The EMA state: float32, float64 for float64 centers (docs/ops.md, Center updates).
void check_ema_state(const char* name, const Tensor& t, at::IntArrayRef shape,
                     const Tensor& centers) {
  check_cpu(name, t);
  const auto want = centers.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK_TYPE(t.scalar_type() == want, name, " must be ", want, " (the EMA state for ",
                   centers.scalar_type(), " centers), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
}

// N_k = decay N_k + (1 - decay) n_k; M_k = decay M_k + (1 - decay) S_k (every k); then from
// the stored state n = sum N, N'_k = (N_k + eps) / (n + K eps) n, c_k = M_k / N'_k where
// N'_k != 0. All in double, rounded once to the state's / centers' dtype.
// m: the row counts, or with sample_weight the batch weights and sums the weighted sums.
template <typename scalar_t, typename state_t>
void ema_apply(scalar_t* c, state_t* size, state_t* embed, const WideSum<scalar_t>& sums,
               int64_t d, int64_t k, const std::vector<double>& m, double decay, double eps,
               bool cosine = false) {
  std::vector<double> row(cosine ? d : 0);
  const double take = 1.0 - decay;
  double total = 0.0;
  for (int64_t q = 0; q < k; ++q) {
    size[q] = static_cast<state_t>(decay * static_cast<double>(size[q]) + take * m[q]);
    total += static_cast<double>(size[q]);
    for (int64_t j = 0; j < d; ++j) {
      const int64_t e = q * d + j;
      embed[e] = static_cast<state_t>(decay * static_cast<double>(embed[e]) + take * sums.value(e));
    }
  }
  const double denom = total + static_cast<double>(k) * eps;
  for (int64_t q = 0; q < k; ++q) {
    const double smoothed = (static_cast<double>(size[q]) + eps) / denom * total;
    if (smoothed == 0.0) continue;  // nothing ever assigned: keep the center (never NaN)
    if (cosine) {  // spherical: the EMA mean renormalised to unit length
      for (int64_t j = 0; j < d; ++j) row[j] = static_cast<double>(embed[q * d + j]) / smoothed;
      normalize_in_place(row.data(), d);
      for (int64_t j = 0; j < d; ++j) c[q * d + j] = static_cast<scalar_t>(row[j]);
      continue;
    }
    for (int64_t j = 0; j < d; ++j) {
      c[q * d + j] = static_cast<scalar_t>(static_cast<double>(embed[q * d + j]) / smoothed);
    }
  }
}

// One problem's EMA on contiguous tensors: c (K, d), size (K,), embed (K, d), x (N, d),
// labels (N,) in [0, K), w (N,) double or undefined.
void ema_problem(const Tensor& c, const Tensor& size, const Tensor& embed, const Tensor& x,
                 const Tensor& labels, const Tensor& w, double decay, double eps, bool cosine) {
  const int64_t n = x.size(0), d = x.size(1), k = c.size(0);
  const std::vector<int64_t> counts = label_counts("labels", labels, k);
  KMGAN_DISPATCH_FLOATING(x.scalar_type(), "ema_update_native_", [&] {
  KMGAN_DISPATCH_LABELS(labels.scalar_type(), "ema_update_native_", [&] {
    const index_t* lp = labels.data_ptr<index_t>();
    using state_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    std::vector<double> m(counts.begin(), counts.end());
    const WideSum<scalar_t> sums =
        w.defined() ? weighted_segment_sums(xp, n, d, lp, k, w.data_ptr<double>(), cosine, m)
        : cosine    ? unit_segment_sums(xp, n, d, lp, k)
                    : segment_sums(xp, n, d, lp, k);
    ema_apply(c.data_ptr<scalar_t>(), size.data_ptr<state_t>(), embed.data_ptr<state_t>(), sums,
              d, k, m, decay, eps, cosine);
  });
  });
}

// Batched problems (docs/ops.md, Input forms): centers (B, K, d), cluster_size (B, K),
// embed_sum (B, K, d), x (B, N, d), labels (B, N) in [0, K), sample_weight (B, N). Each
// problem is ema_problem on its slices, exactly its own 2-D call (its own total n); every
// argument of every problem is checked before the first write.
void check_batched_ema_args(const Tensor& centers, const Tensor& x, const Tensor& labels) {
  check_cpu("x", x);
  check_cpu("centers", centers);
  TORCH_CHECK_VALUE(x.dim() == 3 && centers.size(0) == x.size(0),
                    "batched problems need x (B, N, d) and centers (B, K, d) with the same B, "
                    "got x ", x.sizes(), " and centers ", centers.sizes());
  TORCH_CHECK_TYPE(is_supported_float(x.scalar_type()) && x.scalar_type() == centers.scalar_type(),
                   "x and centers must share one floating dtype, got ", x.scalar_type(), " and ",
                   centers.scalar_type());
  TORCH_CHECK_VALUE(centers.size(2) == x.size(2), "centers must have ", x.size(2),
                    " features (as x), got ", centers.size(2));
  TORCH_CHECK_VALUE(centers.size(1) >= 1, "centers must hold at least one center (K >= 1)");
  check_cpu("labels", labels);
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong || labels.scalar_type() == at::kInt,
                   "labels must be int64 or int32, got ", labels.scalar_type());
  TORCH_CHECK_VALUE(labels.dim() == 2 && labels.size(0) == x.size(0) && labels.size(1) == x.size(1),
                    "labels must have shape (", x.size(0), ", ", x.size(1), "), got ",
                    labels.sizes());
}

void ema_update_native_(Tensor& centers, Tensor& cluster_size, Tensor& embed_sum,
                        const Tensor& x_in, const Tensor& labels_in, double decay, double eps,
                        bool /*deterministic: always*/, bool cosine,
                        const c10::optional<Tensor>& sample_weight) {
  const bool batched = centers.dim() == 3;
  if (batched) {
    check_batched_ema_args(centers, x_in, labels_in);
  } else {
    check_update_args(centers, x_in);
    check_labels("labels", labels_in, x_in.size(0));
  }
  const int64_t d = x_in.size(-1), k = centers.size(-2), n = x_in.size(-2);
  const int64_t b = batched ? centers.size(0) : 1;
  check_ema_state("cluster_size", cluster_size,
                  batched ? std::vector<int64_t>{b, k} : std::vector<int64_t>{k}, centers);
  check_ema_state("embed_sum", embed_sum,
                  batched ? std::vector<int64_t>{b, k, d} : std::vector<int64_t>{k, d}, centers);
  TORCH_CHECK_VALUE(decay >= 0.0 && decay <= 1.0, "decay must lie in [0, 1], got ", decay);
  TORCH_CHECK_VALUE(eps >= 0.0 && eps < std::numeric_limits<double>::infinity(),
                    "eps must be a finite float >= 0, got ", eps);
  // The B problems' rows and labels as (B*N, d) and (B*N,): the checks read them flat.
  const Tensor x = x_in.contiguous().view({b * n, d}), labels = labels_in.contiguous().view({b * n});
  Tensor w;
  if (sample_weight.has_value()) {
    const Tensor& sw = *sample_weight;
    TORCH_CHECK_VALUE(!batched || sw.sizes() == labels_in.sizes(), "sample_weight must have shape ",
                      labels_in.sizes(), " (B, N), got ", sw.sizes());
    w = checked_weights(batched ? sw.reshape({-1}) : sw, x);
  }
  check_label_values("labels", labels, k);
  const Tensor c = contiguous_work(centers), size = contiguous_work(cluster_size),
               embed = contiguous_work(embed_sum);
  for (int64_t p = 0; p < b; ++p) {
    const int64_t r0 = p * n;
    ema_problem(batched ? c[p] : c, batched ? size[p] : size, batched ? embed[p] : embed,
                x.narrow(0, r0, n), labels.narrow(0, r0, n),
                w.defined() ? w.narrow(0, r0, n) : Tensor(), decay, eps, cosine);
  }
  write_back(c, centers);
  write_back(size, cluster_size);
  write_back(embed, embed_sum);
}

}  // namespace

TORCH_LIBRARY_IMPL(kmgan_ext, CPU, m) {
  m.impl("minibatch_update_native_", &minibatch_update_native_);
  m.impl("minibatch_step_native_", &minibatch_step_native_);
  m.impl("ema_update_native_", &ema_update_native_);
}

}  // namespace cpu
}  // namespace kmgan_ext
