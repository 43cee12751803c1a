// CUDA binding of kmgan_ext::assign_topk_native (kernel in assign_topk_cuda.cu).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>

#include "binding.h"

namespace kmgan_cuda {
namespace {

constexpr const char* kOp = "kmgan_ext::assign_topk_native";

std::tuple<at::Tensor, at::Tensor> assign_topk_cuda(const at::Tensor& x_in,
                                                    const at::Tensor& centers_in, int64_t k,
                                                    bool cosine) {
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
