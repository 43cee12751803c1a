// CUDA bindings of kmgan_ext::minibatch_update_native_, minibatch_step_native_ and
// ema_update_native_ (kernels in minibatch_update_cuda.cu; step also uses assign_cuda.cu).
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <tuple>

#include "binding.h"

namespace kmgan_cuda {
namespace {

constexpr const char* kUpdate = "kmgan_ext::minibatch_update_native_";
constexpr const char* kStep = "kmgan_ext::minibatch_step_native_";
constexpr const char* kEma = "kmgan_ext::ema_update_native_";

// The segmented-sum workspaces of one update (launchers.h): double sums, the batch counts,
// in deterministic mode the stable sort of the labels and the chunk pieces, and under
// metric="cosine" the rows' norms (N doubles).
struct Workspace {
  at::Tensor sums, batch_counts, sorted_labels, perm, pieces, row_norms, weights, batch_weights;
  const int64_t* sorted() const {
    return sorted_labels.defined() ? sorted_labels.const_data_ptr<int64_t>() : nullptr;
  }
  const int64_t* permutation() const {
    return perm.defined() ? perm.const_data_ptr<int64_t>() : nullptr;
  }
  double* piece_ptr() { return pieces.defined() ? pieces.mutable_data_ptr<double>() : nullptr; }
  double* norms_ptr() {
    return row_norms.defined() ? row_norms.mutable_data_ptr<double>() : nullptr;
  }
  const double* weights_ptr() const {
    return weights.defined() ? weights.const_data_ptr<double>() : nullptr;
  }
  double* batch_weights_ptr() {
    return batch_weights.defined() ? batch_weights.mutable_data_ptr<double>() : nullptr;
  }
};

// sample_weight (issue 12): (N,) floating on x's device, read as N doubles. Its values (finite,
// >= 0) are checked by the Python routing layer with a device-side assert (no host sync).
at::Tensor checked_weights(const char* op, const c10::optional<at::Tensor>& sample_weight,
                           const at::Tensor& x) {
  if (!sample_weight.has_value()) return at::Tensor();
  const at::Tensor& w = *sample_weight;
  check_same_device(op, "sample_weight", w, x, "x");
  TORCH_CHECK_TYPE(at::isFloatingType(w.scalar_type()), op,
                   ": sample_weight must be a floating tensor, got ", w.scalar_type());
  TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == x.size(0), op,
                    ": sample_weight must have shape (", x.size(0), ",), got ", w.sizes());
  return w.to(at::kDouble).contiguous();
}

// problems P > 1 (batched EMA): x and labels hold P problems' rows one after the other and k
// is P times one problem's K; the sort and the pieces are each problem's own.
Workspace workspace(const at::Tensor& x, const at::Tensor& labels, int64_t k,
                    bool deterministic, bool cosine, const at::Tensor& weights,
                    int64_t problems = 1) {
  const int64_t n = x.size(0), d = x.size(1);
  Workspace w;
  if (weights.defined()) {
    w.weights = weights;
    w.batch_weights = at::empty({k}, x.options().dtype(at::kDouble));
  }
  w.sums = at::empty({k, d}, x.options().dtype(at::kDouble));
  w.batch_counts = at::empty({k}, x.options().dtype(at::kLong));
  // At least one element: the launchers read metric="cosine" from a non-null row_norms, and
  // an empty tensor's pointer may be null (N = 0: the EMA still renormalises its centers).
  if (cosine) w.row_norms = at::empty({std::max<int64_t>(n, 1)}, x.options().dtype(at::kDouble));
  if (deterministic && n > 0) {
    // Stable: rows of one cluster keep their order, so each sum has one fixed order. The
    // std::optional is spelled out: a plain `true` would select sort(self, dim, descending).
    std::tie(w.sorted_labels, w.perm) =
        at::sort(labels.view({problems, n / problems}), /*stable=*/std::optional<bool>(true),
                 /*dim=*/1, /*descending=*/false);
    w.pieces = at::empty({problems * cluster_pieces_elems(n / problems, d)},
                         x.options().dtype(at::kDouble));
  }
  return w;
}

// Sculley's update in place on centers_work / counts_work (contiguous).
// counts: int64 row counts, or float64 cumulative weights when weights are given.
void sculley_contiguous(const char* op, at::Tensor& centers_work, at::Tensor& counts_work,
                        const at::Tensor& x, const at::Tensor& labels, bool deterministic,
                        bool cosine, const at::Tensor& weights) {
  const int64_t n = x.size(0), k = centers_work.size(0), d = x.size(1);
  if (n == 0) return;
  Workspace w = workspace(x, labels, k, deterministic, cosine, weights);
  C10_CUDA_CHECK(minibatch_update_launch(
      dtype_of(op, x), centers_work.mutable_data_ptr(), counts_work.mutable_data_ptr(),
      x.const_data_ptr(), labels.const_data_ptr<int64_t>(), w.sorted(), w.permutation(), n, k,
      d, w.sums.mutable_data_ptr<double>(), w.batch_counts.mutable_data_ptr<int64_t>(),
      w.piece_ptr(), w.norms_ptr(), w.weights_ptr(), w.batch_weights_ptr(), current_stream()));
}

void check_update_args(const char* op, const at::Tensor& centers, const at::Tensor* counts,
                       const at::Tensor& x, bool weighted = false) {
  check_features(op, "x", x);
  check_centers(op, "centers", centers, x);
  if (!counts) return;
  if (!weighted) {
    check_int64_vector(op, "counts", *counts, centers.size(0), x);
    return;
  }
  check_same_device(op, "counts", *counts, x, "x");
  TORCH_CHECK_TYPE(counts->scalar_type() == at::kDouble, op,
                   ": counts must be float64 (cumulative weights) with sample_weight, got ",
                   counts->scalar_type());
  TORCH_CHECK_VALUE(counts->dim() == 1 && counts->size(0) == centers.size(0), op,
                    ": counts must have shape (", centers.size(0), ",), got ", counts->sizes());
}

void minibatch_update_cuda(at::Tensor& centers, at::Tensor& counts, const at::Tensor& x_in,
                           const at::Tensor& labels_in, bool deterministic, bool cosine,
                           const c10::optional<at::Tensor>& sample_weight) {
  check_update_args(kUpdate, centers, &counts, x_in, sample_weight.has_value());
  check_int64_vector(kUpdate, "labels", labels_in, x_in.size(0), x_in);
  const at::Tensor weights = checked_weights(kUpdate, sample_weight, x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), labels = labels_in.contiguous();
  at::Tensor centers_work = centers.contiguous(), counts_work = counts.contiguous();
  sculley_contiguous(kUpdate, centers_work, counts_work, x, labels, deterministic, cosine,
                     weights);
  write_back(centers_work, centers);
  write_back(counts_work, counts);
}

at::Tensor minibatch_step_cuda(at::Tensor& centers, at::Tensor& counts, const at::Tensor& x_in,
                               bool deterministic, bool cosine,
                               const c10::optional<at::Tensor>& sample_weight) {
  check_update_args(kStep, centers, &counts, x_in, sample_weight.has_value());
  const at::Tensor weights = checked_weights(kStep, sample_weight, x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor centers_work = centers.contiguous(), counts_work = counts.contiguous();
  const int64_t n = x.size(0), k = centers_work.size(0), d = x.size(1);
  at::Tensor labels = at::empty({n}, x.options().dtype(at::kLong));
  if (n == 0) return labels;
  // Labels against the centers before the update (same stream: the update runs after).
  at::Tensor dist2 = at::empty({n}, x.options().dtype(acc_dtype(x)));
  if (cosine) {
    at::Tensor unit = at::empty({k, d}, x.options().dtype(at::kFloat));
    C10_CUDA_CHECK(assign_cosine_launch(dtype_of(kStep, x), x.const_data_ptr(),
                                        centers_work.const_data_ptr(), n, k, d,
                                        unit.mutable_data_ptr<float>(),
                                        labels.mutable_data_ptr<int64_t>(),
                                        dist2.mutable_data_ptr(), current_stream()));
  } else {
    C10_CUDA_CHECK(assign_launch(dtype_of(kStep, x), x.const_data_ptr(),
                                 centers_work.const_data_ptr(), n, k, d,
                                 labels.mutable_data_ptr<int64_t>(), dist2.mutable_data_ptr(),
                                 current_stream()));
  }
  sculley_contiguous(kStep, centers_work, counts_work, x, labels, deterministic, cosine, weights);
  write_back(centers_work, centers);
  write_back(counts_work, counts);
  return labels;
}

// The EMA state: float32 (float64 for float64 centers), on the centers' device, of `shape`.
void check_ema_state(const char* name, const at::Tensor& t, at::IntArrayRef shape,
                     const at::Tensor& centers) {
  check_same_device(kEma, name, t, centers, "centers");
  const at::ScalarType want = acc_dtype(centers);
  TORCH_CHECK_TYPE(t.scalar_type() == want, kEma, ": ", name, " must be ", want,
                   " (the EMA state dtype for ", centers.scalar_type(), " centers), got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.sizes() == shape, kEma, ": ", name, " must have shape ", shape, ", got ",
                    t.sizes());
}

// Batched problems (docs/ops.md, Input forms): centers (B, K, d), x (B, N, d), labels (B, N),
// sample_weight (B, N); returns B (1 for 2-D centers, after the 2-D checks).
int64_t check_ema_problems(const at::Tensor& centers, const at::Tensor& x,
                           const at::Tensor& labels, const c10::optional<at::Tensor>& weights) {
  if (centers.dim() != 3) {
    check_update_args(kEma, centers, nullptr, x);
    check_int64_vector(kEma, "labels", labels, x.size(0), x);
    return 1;
  }
  check_cuda(kEma, "x", x);
  check_same_device(kEma, "centers", centers, x, "x");
  dtype_of(kEma, x);
  TORCH_CHECK(x.dim() == 3 && x.size(0) == centers.size(0) && x.size(2) == centers.size(2), kEma,
              ": batched problems need x (B, N, d) and centers (B, K, d) with the same B and d, "
              "got x ", x.sizes(), " and centers ", centers.sizes());
  TORCH_CHECK(x.scalar_type() == centers.scalar_type(), kEma, ": centers must have dtype ",
              x.scalar_type(), " (as x), got ", centers.scalar_type());
  TORCH_CHECK(centers.size(1) >= 1, kEma, ": centers must hold at least one center (K >= 1)");
  check_same_device(kEma, "labels", labels, x, "x");
  TORCH_CHECK(labels.scalar_type() == at::kLong, kEma, ": labels must be int64, got ",
              labels.scalar_type());
  TORCH_CHECK(labels.dim() == 2 && labels.size(0) == x.size(0) && labels.size(1) == x.size(1),
              kEma, ": labels must have shape (", x.size(0), ", ", x.size(1), "), got ",
              labels.sizes());
  if (weights.has_value())
    TORCH_CHECK(weights->sizes() == labels.sizes(), kEma, ": sample_weight must have shape ",
                labels.sizes(), " (B, N), got ", weights->sizes());
  return centers.size(0);
}

void ema_update_cuda(at::Tensor& centers, at::Tensor& cluster_size, at::Tensor& embed_sum,
                     const at::Tensor& x_in, const at::Tensor& labels_in, double decay,
                     double eps, bool deterministic, bool cosine,
                     const c10::optional<at::Tensor>& sample_weight) {
  const bool batched = centers.dim() == 3;
  const int64_t b = check_ema_problems(centers, x_in, labels_in, sample_weight);
  const int64_t n = x_in.size(-2), k = centers.size(-2), d = x_in.size(-1);
  check_ema_state("cluster_size", cluster_size,
                  batched ? std::vector<int64_t>{b, k} : std::vector<int64_t>{k}, centers);
  check_ema_state("embed_sum", embed_sum,
                  batched ? std::vector<int64_t>{b, k, d} : std::vector<int64_t>{k, d}, centers);
  TORCH_CHECK_VALUE(decay >= 0.0 && decay <= 1.0, kEma, ": decay must lie in [0, 1], got ",
                    decay);
  TORCH_CHECK_VALUE(eps >= 0.0 && eps < std::numeric_limits<double>::infinity(), kEma,
                    ": eps must be a finite float >= 0, got ", eps);
  // The B problems' rows as (B*N, d), their labels and weights as (B*N,).
  const at::Tensor x = x_in.contiguous().view({b * n, d}), labels = labels_in.contiguous().view({b * n});
  const at::Tensor weights = checked_weights(
      kEma, batched && sample_weight.has_value() ? c10::optional<at::Tensor>(sample_weight->reshape({-1}))
                                                 : sample_weight,
      x);
  if (b == 0) return;
  const c10::cuda::CUDAGuard guard(x_in.device());
  at::Tensor centers_work = centers.contiguous(), size_work = cluster_size.contiguous();
  at::Tensor embed_work = embed_sum.contiguous();
  Workspace w = workspace(x, labels, b * k, deterministic, cosine, weights, b);
  at::Tensor total = at::empty({b}, x.options().dtype(at::kDouble));
  C10_CUDA_CHECK(ema_update_launch(
      dtype_of(kEma, x), centers_work.mutable_data_ptr(), size_work.mutable_data_ptr(),
      embed_work.mutable_data_ptr(), decay, eps, x.const_data_ptr(),
      labels.const_data_ptr<int64_t>(), w.sorted(), w.permutation(), n, k, d,
      w.sums.mutable_data_ptr<double>(), w.batch_counts.mutable_data_ptr<int64_t>(),
      w.piece_ptr(), total.mutable_data_ptr<double>(), w.norms_ptr(), w.weights_ptr(),
      w.batch_weights_ptr(), current_stream(), b));
  write_back(centers_work, centers);
  write_back(size_work, cluster_size);
  write_back(embed_work, embed_sum);
}

}  // namespace
}  // namespace kmgan_cuda

TORCH_LIBRARY_IMPL(kmgan_ext, CUDA, m) {
  m.impl("minibatch_update_native_", &kmgan_cuda::minibatch_update_cuda);
  m.impl("minibatch_step_native_", &kmgan_cuda::minibatch_step_cuda);
  m.impl("ema_update_native_", &kmgan_cuda::ema_update_cuda);
}
