// CUDA bindings of kmgan_ext::soft_assign_native / soft_assign_backward_native (kernels in
// soft_assign_cuda.cu).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <string_view>
#include <tuple>

#include "binding.h"

namespace kmgan_cuda {
namespace {

constexpr const char* kForward = "kmgan_ext::soft_assign_native";
constexpr const char* kBackward = "kmgan_ext::soft_assign_backward_native";

bool parse_kind(const char* op, c10::string_view kind, double alpha, double temperature) {
  const std::string_view k(kind.data(), kind.size());
  TORCH_CHECK_VALUE(k == "student_t" || k == "softmax", op,
                    ": kind must be 'student_t' or 'softmax', got '", k, "'");
  TORCH_CHECK_VALUE(alpha > 0.0 && std::isfinite(alpha), op, ": alpha must be a finite float > 0, got ",
                    alpha);
  TORCH_CHECK_VALUE(temperature > 0.0 && std::isfinite(temperature), op,
                    ": temperature must be a finite float > 0, got ", temperature);
  return k == "student_t";
}

at::Tensor soft_assign_cuda(const at::Tensor& x_in, const at::Tensor& centers_in,
                            c10::string_view kind, double alpha, double temperature) {
  check_features(kForward, "x", x_in);
  check_centers(kForward, "centers", centers_in, x_in);
  const bool student_t = parse_kind(kForward, kind, alpha, temperature);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), centers = centers_in.contiguous();
  const int64_t n = x.size(0), kc = centers.size(0), d = x.size(1);
  at::Tensor q = at::empty({n, kc}, x.options().dtype(acc_dtype(x)));
  C10_CUDA_CHECK(soft_assign_launch(dtype_of(kForward, x), x.const_data_ptr(),
                                    centers.const_data_ptr(), n, kc, d, student_t, alpha,
                                    temperature, q.mutable_data_ptr(), current_stream()));
  return q;
}

std::tuple<at::Tensor, at::Tensor> soft_assign_backward_cuda(
    const at::Tensor& grad_q_in, const at::Tensor& q_in, const at::Tensor& x_in,
    const at::Tensor& centers_in, c10::string_view kind, double alpha, double temperature,
    bool centers_grad) {
  check_features(kBackward, "x", x_in);
  check_centers(kBackward, "centers", centers_in, x_in);
  const bool student_t = parse_kind(kBackward, kind, alpha, temperature);
  const int64_t n = x_in.size(0), kc = centers_in.size(0), d = x_in.size(1);
  for (const auto* name : {"grad_q", "q"}) {
    const at::Tensor& t = name[0] == 'g' ? grad_q_in : q_in;
    check_same_device(kBackward, name, t, x_in, "x");
    TORCH_CHECK(t.dim() == 2 && t.size(0) == n && t.size(1) == kc, kBackward, ": ", name,
                " must have shape (", n, ", ", kc, "), got ", t.sizes());
  }
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), centers = centers_in.contiguous();
  const at::Tensor g = grad_q_in.to(acc_dtype(x)).contiguous();
  const at::Tensor q = q_in.to(acc_dtype(x)).contiguous();
  at::Tensor grad_x = at::empty({n, d}, x.options());
  at::Tensor r_work = at::empty({n}, x.options().dtype(acc_dtype(x)));
  at::Tensor row_work = at::empty({n, d}, x.options().dtype(at::kDouble));
  at::Tensor grad_c_acc =
      centers_grad ? at::empty({kc, d}, x.options().dtype(at::kDouble)) : at::Tensor();
  C10_CUDA_CHECK(soft_assign_backward_launch(
      dtype_of(kBackward, x), g.const_data_ptr(), q.const_data_ptr(), x.const_data_ptr(),
      centers.const_data_ptr(), n, kc, d, student_t, alpha, temperature,
      r_work.mutable_data_ptr(), row_work.mutable_data_ptr<double>(), grad_x.mutable_data_ptr(),
      centers_grad ? grad_c_acc.mutable_data_ptr<double>() : nullptr, current_stream()));
  if (!centers_grad) return {grad_x, at::empty({0}, centers.options())};
  return {grad_x, grad_c_acc.to(centers.scalar_type())};  // summed in double
}

}  // namespace
}  // namespace kmgan_cuda

TORCH_LIBRARY_IMPL(kmgan_ext, CUDA, m) {
  m.impl("soft_assign_native", &kmgan_cuda::soft_assign_cuda);
  m.impl("soft_assign_backward_native", &kmgan_cuda::soft_assign_backward_cuda);
}
