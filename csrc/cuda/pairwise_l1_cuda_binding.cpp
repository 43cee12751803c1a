// CUDA bindings of kmgan_ext::pairwise_l1_native / pairwise_l1_backward_native (kernels in
// pairwise_l1_cuda.cu). The feature columns are sorted here with torch's sort (a segmented
// radix sort on CUDA), on a transposed copy so that each column is one contiguous row.
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "binding.h"

namespace kmgan_cuda {
namespace {

constexpr const char* kForward = "kmgan_ext::pairwise_l1_native";
constexpr const char* kBackward = "kmgan_ext::pairwise_l1_backward_native";

// (d, n): row j is feature j of t's rows, ascending.
at::Tensor sorted_columns(const at::Tensor& t) {
  return std::get<0>(at::sort(t.t().contiguous(), /*dim=*/1)).contiguous();
}

void check_args(const char* op, const at::Tensor& a, const std::optional<at::Tensor>& b) {
  check_features(op, "a", a);
  if (b.has_value()) check_like_x(op, "b", *b, a, "a");
}

at::Tensor pairwise_l1_cuda(const at::Tensor& a_in, const std::optional<at::Tensor>& b_in) {
  check_args(kForward, a_in, b_in);
  const c10::cuda::CUDAGuard guard(a_in.device());
  const at::Tensor a = a_in.contiguous();
  const int64_t n_a = a.size(0), d = a.size(1);
  const auto acc = a.options().dtype(acc_dtype(a));
  const Dtype dtype = dtype_of(kForward, a);
  if (!b_in.has_value()) {
    if (n_a < 2 || d == 0) return at::zeros({}, acc);  // no pair of distinct rows
    const at::Tensor sorted = sorted_columns(a);
    at::Tensor col_sums = at::empty({d}, acc);
    at::Tensor out = at::empty({}, acc);
    C10_CUDA_CHECK(pairwise_l1_launch(dtype, sorted.const_data_ptr(), nullptr, n_a, 0, d,
                                      col_sums.mutable_data_ptr(), out.mutable_data_ptr(),
                                      current_stream()));
    return out;
  }
  const at::Tensor b = b_in->contiguous();
  const int64_t n_b = b.size(0);
  if (n_a == 0 || n_b == 0 || d == 0) return at::zeros({}, acc);
  // Both batches sorted together; the sort's indices tell a's values (index < n_a) from b's.
  at::Tensor sorted, source;
  std::tie(sorted, source) = at::sort(at::cat({a, b}, 0).t().contiguous(), /*dim=*/1);
  sorted = sorted.contiguous();
  source = source.contiguous();
  at::Tensor col_sums = at::empty({d}, acc);
  at::Tensor out = at::empty({}, acc);
  C10_CUDA_CHECK(pairwise_l1_launch(dtype, sorted.const_data_ptr(),
                                    source.const_data_ptr<int64_t>(), n_a, n_b, d,
                                    col_sums.mutable_data_ptr(), out.mutable_data_ptr(),
                                    current_stream()));
  return out;
}

// out (n, d) = factor * grad * (#below - #above) of each value of `values` among the
// columns of `others`; zeros when `others` has no rows.
at::Tensor rank_grad(const at::Tensor& grad, double factor, const at::Tensor& values,
                     const at::Tensor& others) {
  const int64_t n = values.size(0), d = values.size(1), m = others.size(0);
  if (m == 0 || n == 0 || d == 0) return at::zeros({n, d}, values.options());
  const at::Tensor sorted = sorted_columns(others);
  at::Tensor out = at::empty({n, d}, values.options());
  C10_CUDA_CHECK(pairwise_l1_rank_grad_launch(dtype_of(kBackward, values), grad.const_data_ptr(),
                                              factor, values.const_data_ptr(), n, d,
                                              sorted.const_data_ptr(), m, out.mutable_data_ptr(),
                                              current_stream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor> pairwise_l1_backward_cuda(
    const at::Tensor& grad_in, const at::Tensor& a_in, const std::optional<at::Tensor>& b_in) {
  check_args(kBackward, a_in, b_in);
  check_scalar(kBackward, "grad", grad_in, a_in);
  const c10::cuda::CUDAGuard guard(a_in.device());
  const at::Tensor a = a_in.contiguous();
  const at::Tensor grad = grad_in.to(acc_dtype(a)).contiguous();
  if (!b_in.has_value()) {
    // Ordered pairs (i, j) and (j, i) both contain a_i: twice the rank count.
    return {rank_grad(grad, 2.0, a, a), at::empty({0}, a.options())};
  }
  const at::Tensor b = b_in->contiguous();
  return {rank_grad(grad, 1.0, a, b), rank_grad(grad, 1.0, b, a)};
}

}  // namespace
}  // namespace kmgan_cuda

TORCH_LIBRARY_IMPL(kmgan_ext, CUDA, m) {
  m.impl("pairwise_l1_native", &kmgan_cuda::pairwise_l1_cuda);
  m.impl("pairwise_l1_backward_native", &kmgan_cuda::pairwise_l1_backward_cuda);
}
