// CUDA bindings of kmgan_ext::assigned_distance_native / assigned_distance_backward_native
// (kernels in assigned_distance_cuda.cu).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>

#include "binding.h"

namespace kmgan_cuda {
namespace {

constexpr const char* kForward = "kmgan_ext::assigned_distance_native";
constexpr const char* kBackward = "kmgan_ext::assigned_distance_backward_native";

void check_args(const char* op, const at::Tensor& x, const at::Tensor& labels,
                const at::Tensor& centers) {
  check_features(op, "x", x);
  check_centers(op, "centers", centers, x);
  check_labels(op, "labels", labels, x.size(0), x);
}

at::Tensor assigned_distance_cuda(const at::Tensor& x_in, const at::Tensor& labels_in,
                                  const at::Tensor& centers_in, c10::string_view reduction) {
  check_args(kForward, x_in, labels_in, centers_in);
  const Reduction red = parse_reduction(kForward, reduction);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), labels = labels_in.contiguous();
  const at::Tensor centers = centers_in.contiguous();
  const int64_t n = x.size(0), k = centers.size(0), d = x.size(1);
  const auto acc = x.options().dtype(acc_dtype(x));
  at::Tensor out = at::empty({}, acc);
  at::Tensor partials = at::empty({assigned_distance_num_partials(n)}, acc.dtype(at::kDouble));
  with_labels(labels, [&](auto lp) {
    C10_CUDA_CHECK(assigned_distance_launch(dtype_of(kForward, x), red, x.const_data_ptr(), lp,
                                            centers.const_data_ptr(), n, k, d,
                                            partials.mutable_data_ptr(), out.mutable_data_ptr(),
                                            current_stream()));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> assigned_distance_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& out_in, const at::Tensor& x_in,
    const at::Tensor& labels_in, const at::Tensor& centers_in, c10::string_view reduction,
    bool centers_grad) {
  check_args(kBackward, x_in, labels_in, centers_in);
  check_scalar(kBackward, "grad", grad_in, x_in);
  check_scalar(kBackward, "out", out_in, x_in);
  const Reduction red = parse_reduction(kBackward, reduction);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), labels = labels_in.contiguous();
  const at::Tensor centers = centers_in.contiguous();
  const at::Tensor grad = grad_in.to(acc_dtype(x)).contiguous();
  const at::Tensor out = out_in.to(acc_dtype(x)).contiguous();
  const int64_t n = x.size(0), k = centers.size(0), d = x.size(1);
  at::Tensor grad_x = at::empty({n, d}, x.options());
  at::Tensor grad_c_acc =
      centers_grad ? at::empty({k, d}, x.options().dtype(at::kDouble)) : at::Tensor();
  with_labels(labels, [&](auto lp) {
    C10_CUDA_CHECK(assigned_distance_backward_launch(
        dtype_of(kBackward, x), red, grad.const_data_ptr(), out.const_data_ptr(),
        x.const_data_ptr(), lp, centers.const_data_ptr(), n, k, d, grad_x.mutable_data_ptr(),
        centers_grad ? grad_c_acc.mutable_data_ptr() : nullptr, current_stream()));
  });
  if (!centers_grad) return {grad_x, at::empty({0}, centers.options())};
  return {grad_x, grad_c_acc.to(centers.scalar_type())};  // summed in double
}

}  // namespace
}  // namespace kmgan_cuda

TORCH_LIBRARY_IMPL(kmgan_ext, CUDA, m) {
  m.impl("assigned_distance_native", &kmgan_cuda::assigned_distance_cuda);
  m.impl("assigned_distance_backward_native", &kmgan_cuda::assigned_distance_backward_cuda);
}
