// CUDA bindings of kmgan_ext::minibatch_update_native_, minibatch_step_native_ and
// ema_update_native_ (kernels in minibatch_update_cuda.cu; step also uses assign_cuda.cu).
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <torch/library.h>

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
  // The sorted labels keep the labels' type L (int64 or int32).
  template <typename L>
  const L* sorted() const {
    return sorted_labels.defined() ? sorted_labels.const_data_ptr<L>() : nullptr;
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

Workspace workspace(const at::Tensor& x, const at::Tensor& labels, int64_t k,
                    bool deterministic, bool cosine, const at::Tensor& weights) {
  const int64_t n = x.size(0), d = x.size(1);
  Workspace w;
  if (weights.defined()) {
    w.weights = weights;
    w.batch_weights = at::empty({k}, x.options().dtype(at::kDouble));
  }
  w.sums = at::empty({k, d}, x.options().dtype(at::kDouble));
  w.batch_counts = at::empty({k}, x.options().dtype(at::kLong));
  if (cosine) w.row_norms = at::empty({n}, x.options().dtype(at::kDouble));
  if (deterministic && n > 0) {
    // Stable: rows of one cluster keep their order, so each sum has one fixed order. The
    // std::optional is spelled out: a plain `true` would select sort(self, dim, descending).
    std::tie(w.sorted_labels, w.perm) =
        at::sort(labels, /*stable=*/std::optional<bool>(true), /*dim=*/0, /*descending=*/false);
    w.pieces = at::empty({cluster_pieces_elems(n, d)}, x.options().dtype(at::kDouble));
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
  with_labels(labels, [&](auto lp) {
    using L = label_t<decltype(lp)>;
    C10_CUDA_CHECK(minibatch_update_launch(
        dtype_of(op, x), centers_work.mutable_data_ptr(), counts_work.mutable_data_ptr(),
        x.const_data_ptr(), lp, w.sorted<L>(), w.permutation(), n, k, d,
        w.sums.mutable_data_ptr<double>(), w.batch_counts.mutable_data_ptr<int64_t>(),
        w.piece_ptr(), w.norms_ptr(), w.weights_ptr(), w.batch_weights_ptr(), current_stream()));
  });
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
  check_labels(kUpdate, "labels", labels_in, x_in.size(0), x_in);
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

void ema_update_cuda(at::Tensor& centers, at::Tensor& cluster_size, at::Tensor& embed_sum,
                     const at::Tensor& x_in, const at::Tensor& labels_in, double decay,
                     double eps, bool deterministic, bool cosine,
                     const c10::optional<at::Tensor>& sample_weight) {
  check_update_args(kEma, centers, nullptr, x_in);
  const int64_t n = x_in.size(0), k = centers.size(0), d = x_in.size(1);
  check_labels(kEma, "labels", labels_in, n, x_in);
  check_ema_state("cluster_size", cluster_size, {k}, centers);
  check_ema_state("embed_sum", embed_sum, {k, d}, centers);
  TORCH_CHECK_VALUE(decay >= 0.0 && decay <= 1.0, kEma, ": decay must lie in [0, 1], got ",
                    decay);
  TORCH_CHECK_VALUE(eps >= 0.0 && eps < std::numeric_limits<double>::infinity(), kEma,
                    ": eps must be a finite float >= 0, got ", eps);
  const at::Tensor weights = checked_weights(kEma, sample_weight, x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), labels = labels_in.contiguous();
  at::Tensor centers_work = centers.contiguous(), size_work = cluster_size.contiguous();
  at::Tensor embed_work = embed_sum.contiguous();
  Workspace w = workspace(x, labels, k, deterministic, cosine, weights);
  at::Tensor total = at::empty({1}, x.options().dtype(at::kDouble));
  with_labels(labels, [&](auto lp) {
    using L = label_t<decltype(lp)>;
    C10_CUDA_CHECK(ema_update_launch(
        dtype_of(kEma, x), centers_work.mutable_data_ptr(), size_work.mutable_data_ptr(),
        embed_work.mutable_data_ptr(), decay, eps, x.const_data_ptr(), lp, w.sorted<L>(),
        w.permutation(), n, k, d, w.sums.mutable_data_ptr<double>(),
        w.batch_counts.mutable_data_ptr<int64_t>(), w.piece_ptr(),
        total.mutable_data_ptr<double>(), w.norms_ptr(), w.weights_ptr(), w.batch_weights_ptr(),
        current_stream()));
  });
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
