// CUDA bindings of kmgan_ext::center_loss_native / center_loss_backward_native (kernels in
// center_loss_cuda.cu).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>

#include "binding.h"

namespace kmgan_cuda {
namespace {

constexpr const char* kForward = "kmgan_ext::center_loss_native";
constexpr const char* kBackward = "kmgan_ext::center_loss_backward_native";

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> center_loss_cuda(
    const at::Tensor& x_real_in, const at::Tensor& labels_real_in,
    const at::Tensor& centers_real_in, const at::Tensor& x_fake_in,
    const at::Tensor& labels_fake_in, const at::Tensor& centers_fake_in) {
  check_features(kForward, "x_real", x_real_in);
  check_like_x(kForward, "x_fake", x_fake_in, x_real_in, "x_real");
  check_centers(kForward, "centers_real", centers_real_in, x_real_in, "x_real");
  check_centers(kForward, "centers_fake", centers_fake_in, x_real_in, "x_real");
  const int64_t n_real = x_real_in.size(0), n_fake = x_fake_in.size(0), d = x_real_in.size(1);
  const int64_t k_real = centers_real_in.size(0), k_fake = centers_fake_in.size(0);
  check_labels(kForward, "labels_real", labels_real_in, n_real, x_real_in, "x_real");
  check_labels(kForward, "labels_fake", labels_fake_in, n_fake, x_real_in, "x_real");

  const c10::cuda::CUDAGuard guard(x_real_in.device());
  const at::Tensor x_real = x_real_in.contiguous(), x_fake = x_fake_in.contiguous();
  const at::Tensor labels_real = labels_real_in.contiguous();
  const at::Tensor labels_fake = labels_fake_in.contiguous();
  const at::Tensor centers_real = centers_real_in.contiguous();
  const at::Tensor centers_fake = centers_fake_in.contiguous();

  const auto acc = x_real.options().dtype(acc_dtype(x_real));
  const auto i64 = x_real.options().dtype(at::kLong);
  at::Tensor loss = at::empty({}, acc);
  at::Tensor u_diff = at::empty({d}, acc);
  at::Tensor counts_real = at::empty({k_real}, i64);
  at::Tensor counts_fake = at::empty({k_fake}, i64);
  with_labels(labels_real, [&](auto lr) {
    with_labels(labels_fake, [&](auto lf) {
      C10_CUDA_CHECK(center_loss_launch(
          dtype_of(kForward, x_real), x_real.const_data_ptr(), lr, centers_real.const_data_ptr(),
          n_real, k_real, x_fake.const_data_ptr(), lf, centers_fake.const_data_ptr(), n_fake,
          k_fake, d, loss.mutable_data_ptr(), u_diff.mutable_data_ptr(),
          counts_real.mutable_data_ptr<int64_t>(), counts_fake.mutable_data_ptr<int64_t>(),
          current_stream()));
    });
  });
  return {loss, u_diff, counts_real, counts_fake};
}

std::tuple<at::Tensor, at::Tensor> center_loss_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& u_diff_in, const at::Tensor& x_real,
    const at::Tensor& labels_real_in, const at::Tensor& counts_real_in, const at::Tensor& x_fake,
    const at::Tensor& labels_fake_in, const at::Tensor& counts_fake_in) {
  check_features(kBackward, "x_real", x_real);
  check_like_x(kBackward, "x_fake", x_fake, x_real, "x_real");
  const int64_t n_real = x_real.size(0), n_fake = x_fake.size(0), d = x_real.size(1);
  check_scalar(kBackward, "grad", grad_in, x_real);
  check_same_device(kBackward, "u_diff", u_diff_in, x_real, "x_real");
  TORCH_CHECK(u_diff_in.dim() == 1 && u_diff_in.size(0) == d, kBackward,
              ": u_diff must have shape (", d, ",), got ", u_diff_in.sizes());
  check_labels(kBackward, "labels_real", labels_real_in, n_real, x_real, "x_real");
  check_labels(kBackward, "labels_fake", labels_fake_in, n_fake, x_real, "x_real");
  for (const auto* c : {&counts_real_in, &counts_fake_in}) {
    const char* name = c == &counts_real_in ? "counts_real" : "counts_fake";
    check_same_device(kBackward, name, *c, x_real, "x_real");
    TORCH_CHECK(c->scalar_type() == at::kLong && c->dim() == 1 && c->size(0) >= 1, kBackward,
                ": ", name, " must be a non-empty int64 vector (K,), got ", c->scalar_type(),
                " of shape ", c->sizes());
  }

  const c10::cuda::CUDAGuard guard(x_real.device());
  const at::Tensor grad = grad_in.to(acc_dtype(x_real)).contiguous();
  const at::Tensor u_diff = u_diff_in.to(acc_dtype(x_real)).contiguous();
  const at::Tensor labels_real = labels_real_in.contiguous();
  const at::Tensor labels_fake = labels_fake_in.contiguous();
  const at::Tensor counts_real = counts_real_in.contiguous();
  const at::Tensor counts_fake = counts_fake_in.contiguous();
  at::Tensor grad_real = at::empty({n_real, d}, x_real.options());
  at::Tensor grad_fake = at::empty({n_fake, d}, x_fake.options());
  with_labels(labels_real, [&](auto lr) {
    with_labels(labels_fake, [&](auto lf) {
      C10_CUDA_CHECK(center_loss_backward_launch(
          dtype_of(kBackward, x_real), grad.const_data_ptr(), u_diff.const_data_ptr(), lr,
          counts_real.const_data_ptr<int64_t>(), n_real, counts_real.size(0), lf,
          counts_fake.const_data_ptr<int64_t>(), n_fake, counts_fake.size(0), d,
          grad_real.mutable_data_ptr(), grad_fake.mutable_data_ptr(), current_stream()));
    });
  });
  return {grad_real, grad_fake};
}

}  // namespace
}  // namespace kmgan_cuda

TORCH_LIBRARY_IMPL(kmgan_ext, CUDA, m) {
  m.impl("center_loss_native", &kmgan_cuda::center_loss_cuda);
  m.impl("center_loss_backward_native", &kmgan_cuda::center_loss_backward_cuda);
}
