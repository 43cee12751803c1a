// Torch-side helpers of the CUDA bindings (csrc/cuda/<op>_cuda_binding.cpp, host compiler
// only): input checks with named messages, the launcher dtype of a tensor, the current stream. The Python
// layer validates everything before a backend runs; these checks make the *_native ops safe to
// call directly (a wrong shape or device would otherwise read out of bounds on the GPU).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <string_view>
#include <type_traits>

#include "launchers.h"

namespace kmgan_cuda {

inline Dtype dtype_of(const char* op, const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return Dtype::kFloat32;
    case at::kHalf:
      return Dtype::kFloat16;
    case at::kBFloat16:
      return Dtype::kBFloat16;
    case at::kDouble:
      return Dtype::kFloat64;
    default:
      break;
  }
  TORCH_CHECK(false, op, ": expected float32, float16, bfloat16 or float64, got ",
              t.scalar_type());
  return Dtype::kFloat32;  // not reached
}

// dist2, losses and u_diff: float32, float64 for float64 inputs (docs/ops.md, Conventions).
inline at::ScalarType acc_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

inline void check_cuda(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got one on ", t.device());
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t,
                              const at::Tensor& ref, const char* ref_name) {
  check_cuda(op, name, t);
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on ", ref.device(), " (as ",
              ref_name, "), got ", t.device());
}

// (N, d) floating CUDA tensor.
inline void check_features(const char* op, const char* name, const at::Tensor& t) {
  check_cuda(op, name, t);
  TORCH_CHECK(t.dim() == 2, op, ": ", name, " must be 2-D (N, d), got shape ", t.sizes());
  dtype_of(op, t);
}

// Same dtype, device and number of columns as x (x checked first).
inline void check_like_x(const char* op, const char* name, const at::Tensor& t,
                         const at::Tensor& x, const char* x_name = "x") {
  check_same_device(op, name, t, x, x_name);
  TORCH_CHECK(t.dim() == 2 && t.size(1) == x.size(1), op, ": ", name, " must have shape (*, ",
              x.size(1), ") (", x_name, ".shape[1]), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " must have dtype ",
              x.scalar_type(), " (as ", x_name, "), got ", t.scalar_type());
}

// (K, d) centers with 1 <= K < 2^31 - 64 (K fits the kernels' 32-bit cluster index, with room
// for the assign kernel's last 64-center tile).
inline void check_centers(const char* op, const char* name, const at::Tensor& c,
                          const at::Tensor& x, const char* x_name = "x") {
  check_like_x(op, name, c, x, x_name);
  constexpr int64_t kMaxCenters = INT32_MAX - 64;
  TORCH_CHECK(c.size(0) >= 1 && c.size(0) <= kMaxCenters, op, ": ", name,
              " must hold between 1 and ", kMaxCenters, " centers, got K = ", c.size(0));
}

inline void check_int64_vector(const char* op, const char* name, const at::Tensor& t,
                               int64_t len, const at::Tensor& x, const char* x_name = "x") {
  check_same_device(op, name, t, x, x_name);
  TORCH_CHECK(t.scalar_type() == at::kLong, op, ": ", name, " must be int64, got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == len, op, ": ", name, " must have shape (", len,
              ",), got ", t.sizes());
}

// Labels as input: 1-D int64 or int32 of length len (docs/ops.md: int32 read as they are).
inline void check_labels(const char* op, const char* name, const at::Tensor& t, int64_t len,
                         const at::Tensor& x, const char* x_name = "x") {
  check_same_device(op, name, t, x, x_name);
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, op, ": ", name,
                   " must be int64 or int32, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == len, op, ": ", name, " must have shape (", len,
                    ",), got ", t.sizes());
}

// f(p) with p the data pointer of contiguous int64 or int32 labels in their own type
// (const int64_t* or const int32_t*): the launchers are templates on it (launchers.h).
template <typename F>
decltype(auto) with_labels(const at::Tensor& labels, F&& f) {
  if (labels.scalar_type() == at::kInt) return f(labels.const_data_ptr<int32_t>());
  return f(labels.const_data_ptr<int64_t>());
}

// The label type L of a `const L*` that with_labels passes.
template <typename P>
using label_t = std::remove_cv_t<std::remove_pointer_t<P>>;

// A gradient or saved output that must be a single value (0-d or one element).
inline void check_scalar(const char* op, const char* name, const at::Tensor& t,
                         const at::Tensor& x) {
  check_same_device(op, name, t, x, "x");
  TORCH_CHECK(t.numel() == 1, op, ": ", name, " must hold one value, got shape ", t.sizes());
}

// In-place ops work on a contiguous tensor; a non-contiguous argument gets the result copied
// back when the work is done.
// The reduction argument of assigned_distance and kmgan_losses.
inline Reduction parse_reduction(const char* op, std::string_view reduction) {
  if (reduction == "fro") return Reduction::kFro;
  if (reduction == "mean") return Reduction::kMean;
  if (reduction == "sq_sum") return Reduction::kSqSum;
  TORCH_CHECK(false, op, ": reduction must be one of 'fro', 'mean', 'sq_sum', got '", reduction,
              "'");
  return Reduction::kFro;  // not reached
}

inline void write_back(const at::Tensor& work, at::Tensor& original) {
  if (!work.is_same(original)) original.copy_(work);
}

}  // namespace kmgan_cuda
