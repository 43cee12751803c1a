// CUDA bindings of kmgan_ext::minibatch_update_native_, minibatch_step_native_ and
// ema_update_native_ (kernels in minibatch_update_cuda.cu; step also uses assign_cuda.cu).
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "binding.h"

namespace kmgan_cuda {
namespace {

constexpr const char* kUpdate = "kmgan_ext::minibatch_update_native_";
constexpr const char* kStep = "kmgan_ext::minibatch_step_native_";
constexpr const char* kEma = "kmgan_ext::ema_update_native_";

// Segmented sums of x by labels and the rule, in place on centers_work (and counts_work for
// kSculley), all contiguous. Workspaces come from torch's caching allocator.
void update_contiguous(const char* op, UpdateRule rule, at::Tensor& centers_work,
                       at::Tensor* counts_work, double decay, const at::Tensor& x,
                       const at::Tensor& labels, bool deterministic) {
  const int64_t n = x.size(0), k = centers_work.size(0), d = x.size(1);
  if (n == 0) return;
  const auto acc = x.options().dtype(acc_dtype(x));
  at::Tensor sums = at::empty({k, d}, acc);
  at::Tensor batch_counts, sorted_labels, perm, pieces;
  if (deterministic) {
    // Stable: rows of one cluster keep their order, so each sum has one fixed order. The
    // std::optional is spelled out: a plain `true` would select sort(self, dim, descending).
    std::tie(sorted_labels, perm) =
        at::sort(labels, /*stable=*/std::optional<bool>(true), /*dim=*/0, /*descending=*/false);
    pieces = at::empty({cluster_pieces_elems(n, d)}, acc);
  } else {
    batch_counts = at::empty({k}, x.options().dtype(at::kLong));
  }
  C10_CUDA_CHECK(cluster_update_launch(
      dtype_of(op, x), rule, centers_work.mutable_data_ptr(),
      counts_work ? counts_work->mutable_data_ptr<int64_t>() : nullptr, decay, x.const_data_ptr(),
      labels.const_data_ptr<int64_t>(),
      deterministic ? sorted_labels.const_data_ptr<int64_t>() : nullptr,
      deterministic ? perm.const_data_ptr<int64_t>() : nullptr, n, k, d, sums.mutable_data_ptr(),
      deterministic ? nullptr : batch_counts.mutable_data_ptr<int64_t>(),
      deterministic ? pieces.mutable_data_ptr() : nullptr, current_stream()));
}

void check_update_args(const char* op, const at::Tensor& centers, const at::Tensor* counts,
                       const at::Tensor& x) {
  check_features(op, "x", x);
  check_centers(op, "centers", centers, x);
  if (counts) check_int64_vector(op, "counts", *counts, centers.size(0), x);
}

void minibatch_update_cuda(at::Tensor& centers, at::Tensor& counts, const at::Tensor& x_in,
                           const at::Tensor& labels_in, bool deterministic) {
  check_update_args(kUpdate, centers, &counts, x_in);
  check_int64_vector(kUpdate, "labels", labels_in, x_in.size(0), x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), labels = labels_in.contiguous();
  at::Tensor centers_work = centers.contiguous(), counts_work = counts.contiguous();
  update_contiguous(kUpdate, UpdateRule::kSculley, centers_work, &counts_work, 0.0, x, labels,
                    deterministic);
  write_back(centers_work, centers);
  write_back(counts_work, counts);
}

at::Tensor minibatch_step_cuda(at::Tensor& centers, at::Tensor& counts, const at::Tensor& x_in,
                               bool deterministic) {
  check_update_args(kStep, centers, &counts, x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor centers_work = centers.contiguous(), counts_work = counts.contiguous();
  const int64_t n = x.size(0), k = centers_work.size(0), d = x.size(1);
  at::Tensor labels = at::empty({n}, x.options().dtype(at::kLong));
  if (n == 0) return labels;
  // Labels against the centers before the update (same stream: the update runs after).
  at::Tensor dist2 = at::empty({n}, x.options().dtype(acc_dtype(x)));
  C10_CUDA_CHECK(assign_launch(dtype_of(kStep, x), x.const_data_ptr(),
                               centers_work.const_data_ptr(), n, k, d,
                               labels.mutable_data_ptr<int64_t>(), dist2.mutable_data_ptr(),
                               current_stream()));
  update_contiguous(kStep, UpdateRule::kSculley, centers_work, &counts_work, 0.0, x, labels,
                    deterministic);
  write_back(centers_work, centers);
  write_back(counts_work, counts);
  return labels;
}

void ema_update_cuda(at::Tensor& centers, const at::Tensor& x_in, const at::Tensor& labels_in,
                     double decay, bool deterministic) {
  check_update_args(kEma, centers, nullptr, x_in);
  check_int64_vector(kEma, "labels", labels_in, x_in.size(0), x_in);
  TORCH_CHECK(decay >= 0.0 && decay <= 1.0, kEma, ": decay must lie in [0, 1], got ", decay);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), labels = labels_in.contiguous();
  at::Tensor centers_work = centers.contiguous();
  update_contiguous(kEma, UpdateRule::kEma, centers_work, nullptr, decay, x, labels,
                    deterministic);
  write_back(centers_work, centers);
}

}  // namespace
}  // namespace kmgan_cuda

TORCH_LIBRARY_IMPL(kmgan_ext, CUDA, m) {
  m.impl("minibatch_update_native_", &kmgan_cuda::minibatch_update_cuda);
  m.impl("minibatch_step_native_", &kmgan_cuda::minibatch_step_cuda);
  m.impl("ema_update_native_", &kmgan_cuda::ema_update_cuda);
}
