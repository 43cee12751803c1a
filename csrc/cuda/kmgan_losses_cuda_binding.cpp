// CUDA bindings of kmgan_ext::kmgan_losses_native / kmgan_losses_backward_native.
//
// Forward, composed of launchers (the fused forward is the Triton backend, which auto prefers
// for this op): assign x3 (3 launches), kmgan_pulls (1), center_loss (3 launches + 2 memsets):
// 7 kernels. Backward: one kernel (kmgan_losses_cuda.cu).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "binding.h"
#include "kmgan_losses_cuda.h"

namespace kmgan_cuda {
namespace {

constexpr const char* kForward = "kmgan_ext::kmgan_losses_native";
constexpr const char* kBackward = "kmgan_ext::kmgan_losses_backward_native";

using Outputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                           at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Outputs kmgan_losses_cuda(const at::Tensor& f_real_in, const at::Tensor& f_fake_in,
                          const at::Tensor& centers_real_in, const at::Tensor& centers_fake_in,
                          c10::string_view reduction) {
  const Reduction red = parse_reduction(kForward, reduction);
  check_features(kForward, "f_real", f_real_in);
  check_like_x(kForward, "f_fake", f_fake_in, f_real_in, "f_real");
  check_centers(kForward, "centers_real", centers_real_in, f_real_in, "f_real");
  check_centers(kForward, "centers_fake", centers_fake_in, f_real_in, "f_real");
  const c10::cuda::CUDAGuard guard(f_real_in.device());
  const at::Tensor fr = f_real_in.contiguous(), ff = f_fake_in.contiguous();
  const at::Tensor cr = centers_real_in.contiguous(), cf = centers_fake_in.contiguous();
  const int64_t nr = fr.size(0), nf = ff.size(0), d = fr.size(1);
  const int64_t kr = cr.size(0), kf = cf.size(0);
  const Dtype dt = dtype_of(kForward, fr);
  const cudaStream_t stream = current_stream();
  const auto acc = fr.options().dtype(acc_dtype(fr));
  const auto i64 = fr.options().dtype(at::kLong);

  at::Tensor lr = at::empty({nr}, i64), lf = at::empty({nf}, i64), lh = at::empty({nf}, i64);
  at::Tensor dist_r = at::empty({nr}, acc), dist_f = at::empty({nf}, acc);
  at::Tensor dist_h = at::empty({nf}, acc);  // assign writes it; only the labels are used
  C10_CUDA_CHECK(assign_launch(dt, fr.const_data_ptr(), cr.const_data_ptr(), nr, kr, d,
                               lr.mutable_data_ptr<int64_t>(), dist_r.mutable_data_ptr(), stream));
  C10_CUDA_CHECK(assign_launch(dt, ff.const_data_ptr(), cr.const_data_ptr(), nf, kr, d,
                               lf.mutable_data_ptr<int64_t>(), dist_f.mutable_data_ptr(), stream));
  C10_CUDA_CHECK(assign_launch(dt, ff.const_data_ptr(), cf.const_data_ptr(), nf, kf, d,
                               lh.mutable_data_ptr<int64_t>(), dist_h.mutable_data_ptr(), stream));

  at::Tensor loss_d = at::empty({}, acc), loss_g = at::empty({}, acc), loss_c = at::empty({}, acc);
  at::Tensor pulls = at::empty({2}, acc), u_diff = at::empty({d}, acc);
  at::Tensor n_r = at::empty({kr}, i64), n_h = at::empty({kf}, i64);
  C10_CUDA_CHECK(kmgan_pulls_launch(
      dt, red, fr.const_data_ptr(), lr.const_data_ptr<int64_t>(), dist_r.const_data_ptr(), nr,
      ff.const_data_ptr(), lf.const_data_ptr<int64_t>(), dist_f.const_data_ptr(), nf,
      cr.const_data_ptr(), kr, d, pulls.mutable_data_ptr(), loss_d.mutable_data_ptr(),
      loss_g.mutable_data_ptr(), stream));
  C10_CUDA_CHECK(center_loss_launch(
      dt, fr.const_data_ptr(), lr.const_data_ptr<int64_t>(), cr.const_data_ptr(), nr, kr,
      ff.const_data_ptr(), lh.const_data_ptr<int64_t>(), cf.const_data_ptr(), nf, kf, d,
      loss_c.mutable_data_ptr(), u_diff.mutable_data_ptr(), n_r.mutable_data_ptr<int64_t>(),
      n_h.mutable_data_ptr<int64_t>(), stream));
  return {loss_d, loss_g, loss_c, lr, lf, lh, pulls, u_diff, n_r, n_h};
}

// A present upstream gradient as a one-element acc tensor; undefined for None (counts as 0).
at::Tensor upstream(const char* name, const std::optional<at::Tensor>& g, const at::Tensor& x) {
  if (!g.has_value() || !g->defined()) return at::Tensor();
  check_scalar(kBackward, name, *g, x);
  return g->to(acc_dtype(x)).contiguous();
}

const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }

void check_counts(const char* name, const at::Tensor& t, const at::Tensor& x) {
  check_same_device(kBackward, name, t, x, "f_real");
  TORCH_CHECK(t.scalar_type() == at::kLong && t.dim() == 1 && t.size(0) >= 1, kBackward, ": ",
              name, " must be a non-empty int64 vector (K,), got ", t.scalar_type(), " of shape ",
              t.sizes());
}

std::tuple<at::Tensor, at::Tensor> kmgan_losses_backward_cuda(
    const std::optional<at::Tensor>& grad_d, const std::optional<at::Tensor>& grad_g,
    const std::optional<at::Tensor>& grad_center, const at::Tensor& f_real_in,
    const at::Tensor& f_fake_in, const at::Tensor& centers_real_in,
    const at::Tensor& labels_real_in, const at::Tensor& labels_fake_in,
    const at::Tensor& labels_fake_hat_in, const at::Tensor& pulls_in, const at::Tensor& u_diff_in,
    const at::Tensor& counts_real_in, const at::Tensor& counts_fake_in,
    c10::string_view reduction) {
  const Reduction red = parse_reduction(kBackward, reduction);
  check_features(kBackward, "f_real", f_real_in);
  check_like_x(kBackward, "f_fake", f_fake_in, f_real_in, "f_real");
  check_centers(kBackward, "centers_real", centers_real_in, f_real_in, "f_real");
  const int64_t nr = f_real_in.size(0), nf = f_fake_in.size(0), d = f_real_in.size(1);
  check_int64_vector(kBackward, "labels_real", labels_real_in, nr, f_real_in, "f_real");
  check_int64_vector(kBackward, "labels_fake", labels_fake_in, nf, f_real_in, "f_real");
  check_int64_vector(kBackward, "labels_fake_hat", labels_fake_hat_in, nf, f_real_in, "f_real");
  check_counts("counts_real", counts_real_in, f_real_in);
  check_counts("counts_fake", counts_fake_in, f_real_in);
  check_same_device(kBackward, "pulls", pulls_in, f_real_in, "f_real");
  TORCH_CHECK(pulls_in.numel() == 2, kBackward, ": pulls must hold 2 values, got shape ",
              pulls_in.sizes());
  check_same_device(kBackward, "u_diff", u_diff_in, f_real_in, "f_real");
  TORCH_CHECK(u_diff_in.dim() == 1 && u_diff_in.size(0) == d, kBackward,
              ": u_diff must have shape (", d, ",), got ", u_diff_in.sizes());

  const c10::cuda::CUDAGuard guard(f_real_in.device());
  const at::Tensor gd = upstream("grad_d", grad_d, f_real_in);
  const at::Tensor gg = upstream("grad_g", grad_g, f_real_in);
  const at::Tensor gc = upstream("grad_center", grad_center, f_real_in);
  const at::Tensor fr = f_real_in.contiguous(), ff = f_fake_in.contiguous();
  const at::Tensor cr = centers_real_in.contiguous();
  const at::Tensor lr = labels_real_in.contiguous(), lf = labels_fake_in.contiguous();
  const at::Tensor lh = labels_fake_hat_in.contiguous();
  const at::Tensor pulls = pulls_in.to(acc_dtype(fr)).contiguous();
  const at::Tensor u_diff = u_diff_in.to(acc_dtype(fr)).contiguous();
  const at::Tensor n_r = counts_real_in.contiguous(), n_h = counts_fake_in.contiguous();
  at::Tensor grad_real = at::empty({nr, d}, fr.options());
  at::Tensor grad_fake = at::empty({nf, d}, ff.options());
  C10_CUDA_CHECK(kmgan_losses_backward_launch(
      dtype_of(kBackward, fr), red, ptr_or_null(gd), ptr_or_null(gg), ptr_or_null(gc),
      fr.const_data_ptr(), ff.const_data_ptr(), cr.const_data_ptr(), cr.size(0),
      lr.const_data_ptr<int64_t>(), lf.const_data_ptr<int64_t>(), lh.const_data_ptr<int64_t>(),
      pulls.const_data_ptr(), u_diff.const_data_ptr(), n_r.const_data_ptr<int64_t>(),
      n_h.const_data_ptr<int64_t>(), n_h.size(0), nr, nf, d, grad_real.mutable_data_ptr(),
      grad_fake.mutable_data_ptr(), current_stream()));
  return {grad_real, grad_fake};
}

}  // namespace
}  // namespace kmgan_cuda

TORCH_LIBRARY_IMPL(kmgan_ext, CUDA, m) {
  m.impl("kmgan_losses_native", &kmgan_cuda::kmgan_losses_cuda);
  m.impl("kmgan_losses_backward_native", &kmgan_cuda::kmgan_losses_backward_cuda);
}
