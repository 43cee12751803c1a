// CUDA bindings of kmgan_ext::assign_native / assign_backward_native (kernels in assign_cuda.cu).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>

#include "binding.h"

namespace kmgan_cuda {
namespace {

constexpr const char* kAssign = "kmgan_ext::assign_native";
constexpr const char* kAssignBackward = "kmgan_ext::assign_backward_native";

// B independent problems: x (B, N, d), centers (B, K, d) -> (B, N), one launch.
std::tuple<at::Tensor, at::Tensor> assign_batched_cuda(const at::Tensor& x_in,
                                                       const at::Tensor& centers_in, bool cosine) {
  TORCH_CHECK(x_in.dim() == 3 && centers_in.dim() == 3 && x_in.size(0) == centers_in.size(0),
              kAssign, ": batched problems need x (B, N, d) and centers (B, K, d) with the same B, got ",
              x_in.sizes(), " and ", centers_in.sizes());
  const int64_t b = x_in.size(0), n = x_in.size(1), k = centers_in.size(1), d = x_in.size(2);
  at::Tensor labels = at::empty({b, n}, x_in.options().dtype(at::kLong));
  if (b == 0) return {labels, at::empty({b, n}, x_in.options().dtype(acc_dtype(x_in)))};
  check_features(kAssign, "x", x_in[0]);
  check_centers(kAssign, "centers", centers_in[0], x_in[0]);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), centers = centers_in.contiguous();
  at::Tensor dist2 = at::empty({b, n}, x.options().dtype(acc_dtype(x)));
  if (n == 0) return {labels, dist2};
  if (cosine) {  // metric="cosine": the unit centers of every problem (assign_cosine_cuda.cu)
    at::Tensor unit = at::empty({b * k, d}, x.options().dtype(at::kFloat));
    C10_CUDA_CHECK(assign_cosine_launch(dtype_of(kAssign, x), x.const_data_ptr(),
                                        centers.const_data_ptr(), n, k, d,
                                        unit.mutable_data_ptr<float>(),
                                        labels.mutable_data_ptr<int64_t>(),
                                        dist2.mutable_data_ptr(), current_stream(), b));
    return {labels, dist2};
  }
  C10_CUDA_CHECK(assign_launch(dtype_of(kAssign, x), x.const_data_ptr(), centers.const_data_ptr(),
                               n, k, d, labels.mutable_data_ptr<int64_t>(),
                               dist2.mutable_data_ptr(), current_stream(), b));
  return {labels, dist2};
}

std::tuple<at::Tensor, at::Tensor> assign_cuda(const at::Tensor& x_in,
                                               const at::Tensor& centers_in, bool cosine) {
  if (x_in.dim() == 3) return assign_batched_cuda(x_in, centers_in, cosine);
  check_features(kAssign, "x", x_in);
  check_centers(kAssign, "centers", centers_in, x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), centers = centers_in.contiguous();
  const int64_t n = x.size(0), k = centers.size(0), d = x.size(1);
  at::Tensor labels = at::empty({n}, x.options().dtype(at::kLong));
  at::Tensor dist2 = at::empty({n}, x.options().dtype(acc_dtype(x)));
  if (n == 0) return {labels, dist2};
  if (cosine) {  // metric="cosine" (assign_cosine_cuda.cu): the unit centers' workspace
    at::Tensor unit = at::empty({k, d}, x.options().dtype(at::kFloat));
    C10_CUDA_CHECK(assign_cosine_launch(dtype_of(kAssign, x), x.const_data_ptr(),
                                        centers.const_data_ptr(), n, k, d,
                                        unit.mutable_data_ptr<float>(),
                                        labels.mutable_data_ptr<int64_t>(),
                                        dist2.mutable_data_ptr(), current_stream()));
    return {labels, dist2};
  }
  C10_CUDA_CHECK(assign_launch(dtype_of(kAssign, x), x.const_data_ptr(), centers.const_data_ptr(),
                               n, k, d, labels.mutable_data_ptr<int64_t>(),
                               dist2.mutable_data_ptr(), current_stream()));
  return {labels, dist2};
}

std::tuple<at::Tensor, at::Tensor> assign_backward_cuda(const at::Tensor& grad_dist2_in,
                                                        const at::Tensor& x_in,
                                                        const at::Tensor& centers_in,
                                                        const at::Tensor& labels_in,
                                                        bool centers_grad, bool cosine) {
  check_features(kAssignBackward, "x", x_in);
  check_centers(kAssignBackward, "centers", centers_in, x_in);
  const int64_t n = x_in.size(0), k = centers_in.size(0), d = x_in.size(1);
  check_int64_vector(kAssignBackward, "labels", labels_in, n, x_in);
  check_same_device(kAssignBackward, "grad_dist2", grad_dist2_in, x_in, "x");
  TORCH_CHECK(grad_dist2_in.dim() == 1 && grad_dist2_in.size(0) == n, kAssignBackward,
              ": grad_dist2 must have shape (", n, ",), got ", grad_dist2_in.sizes());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), centers = centers_in.contiguous();
  const at::Tensor labels = labels_in.contiguous();
  const at::Tensor grad_dist2 = grad_dist2_in.to(acc_dtype(x)).contiguous();

  at::Tensor grad_x = at::empty({n, d}, x.options());
  at::Tensor grad_c_acc =
      centers_grad ? at::empty({k, d}, x.options().dtype(at::kDouble)) : at::Tensor();
  C10_CUDA_CHECK((cosine ? assign_cosine_backward_launch : assign_backward_launch)(
      dtype_of(kAssignBackward, x), grad_dist2.const_data_ptr(), x.const_data_ptr(),
      centers.const_data_ptr(), labels.const_data_ptr<int64_t>(), n, k, d,
      grad_x.mutable_data_ptr(), centers_grad ? grad_c_acc.mutable_data_ptr() : nullptr,
      current_stream()));
  if (!centers_grad) return {grad_x, at::empty({0}, centers.options())};
  return {grad_x, grad_c_acc.to(centers.scalar_type())};  // summed in double
}

}  // namespace
}  // namespace kmgan_cuda

TORCH_LIBRARY_IMPL(kmgan_ext, CUDA, m) {
  m.impl("assign_native", &kmgan_cuda::assign_cuda);
  m.impl("assign_backward_native", &kmgan_cuda::assign_backward_cuda);
}
