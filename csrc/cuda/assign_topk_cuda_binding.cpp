// CUDA binding of kmgan_ext::assign_topk_native (kernel in assign_topk_cuda.cu).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>

#include "binding.h"

namespace kmgan_cuda {
namespace {

constexpr const char* kOp = "kmgan_ext::assign_topk_native";

// B independent problems: x (B, N, d), centers (B, K, d) -> (B, N, k), one launch (two with
// cosine: the unit centers of every problem, then the problems).
std::tuple<at::Tensor, at::Tensor> assign_topk_batched_cuda(const at::Tensor& x_in,
                                                            const at::Tensor& centers_in,
                                                            int64_t k, bool cosine) {
  TORCH_CHECK(x_in.dim() == 3 && centers_in.dim() == 3 && x_in.size(0) == centers_in.size(0),
              kOp, ": batched problems need x (B, N, d) and centers (B, K, d) with the same B, got ",
              x_in.sizes(), " and ", centers_in.sizes());
  const int64_t b = x_in.size(0), n = x_in.size(1), kc = centers_in.size(1), d = x_in.size(2);
  TORCH_CHECK_VALUE(k >= 1 && k <= kc, kOp, ": k must lie in [1, K] = [1, ", kc,
                    "] (centers.shape[1]), got k = ", k);
  at::Tensor labels = at::empty({b, n, k}, x_in.options().dtype(at::kLong));
  if (b == 0) return {labels, at::empty({b, n, k}, x_in.options().dtype(acc_dtype(x_in)))};
  check_features(kOp, "x", x_in[0]);
  check_centers(kOp, "centers", centers_in[0], x_in[0]);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), centers = centers_in.contiguous();
  at::Tensor dist2 = at::empty({b, n, k}, x.options().dtype(acc_dtype(x)));
  if (n == 0) return {labels, dist2};
  const int64_t cap = assign_topk_list_len(k, kc);
  at::Tensor list_val = at::empty({b * n, cap}, x.options().dtype(at::kDouble));
  at::Tensor list_idx = at::empty({b * n, cap}, x.options().dtype(at::kLong));
  at::Tensor unit = cosine ? at::empty({b * kc, d}, x.options().dtype(at::kFloat)) : at::Tensor();
  C10_CUDA_CHECK(assign_topk_launch(dtype_of(kOp, x), x.const_data_ptr(), centers.const_data_ptr(),
                                    n, kc, d, k, list_val.mutable_data_ptr<double>(),
                                    list_idx.mutable_data_ptr<int64_t>(),
                                    labels.mutable_data_ptr<int64_t>(), dist2.mutable_data_ptr(),
                                    current_stream(),
                                    cosine ? unit.mutable_data_ptr<float>() : nullptr, b));
  return {labels, dist2};
}

std::tuple<at::Tensor, at::Tensor> assign_topk_cuda(const at::Tensor& x_in,
                                                    const at::Tensor& centers_in, int64_t k,
                                                    bool cosine) {
  if (x_in.dim() == 3) return assign_topk_batched_cuda(x_in, centers_in, k, cosine);
  check_features(kOp, "x", x_in);
  check_centers(kOp, "centers", centers_in, x_in);
  TORCH_CHECK_VALUE(k >= 1 && k <= centers_in.size(0), kOp, ": k must lie in [1, K] = [1, ",
                    centers_in.size(0), "] (centers.shape[0]), got k = ", k);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), centers = centers_in.contiguous();
  const int64_t n = x.size(0), kc = centers.size(0), d = x.size(1);
  at::Tensor labels = at::empty({n, k}, x.options().dtype(at::kLong));
  at::Tensor dist2 = at::empty({n, k}, x.options().dtype(acc_dtype(x)));
  if (n == 0) return {labels, dist2};
  const int64_t cap = assign_topk_list_len(k, kc);
  at::Tensor list_val = at::empty({n, cap}, x.options().dtype(at::kDouble));
  at::Tensor list_idx = at::empty({n, cap}, x.options().dtype(at::kLong));
  // metric="cosine": the unit centers' workspace
  at::Tensor unit = cosine ? at::empty({kc, d}, x.options().dtype(at::kFloat)) : at::Tensor();
  C10_CUDA_CHECK(assign_topk_launch(dtype_of(kOp, x), x.const_data_ptr(), centers.const_data_ptr(),
                                    n, kc, d, k, list_val.mutable_data_ptr<double>(),
                                    list_idx.mutable_data_ptr<int64_t>(),
                                    labels.mutable_data_ptr<int64_t>(), dist2.mutable_data_ptr(),
                                    current_stream(),
                                    cosine ? unit.mutable_data_ptr<float>() : nullptr));
  return {labels, dist2};
}

}  // namespace
}  // namespace kmgan_cuda

TORCH_LIBRARY_IMPL(kmgan_ext, CUDA, m) { m.impl("assign_topk_native", &kmgan_cuda::assign_topk_cuda); }
