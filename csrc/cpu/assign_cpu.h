// The CPU assignment routine, shared by assign_native and minibatch_step_native_.
#pragma once

#include "common.h"

namespace kmgan_ext {
namespace cpu {

// labels (N,) int64 = argmin_k ||x_i - c_k||^2 (lowest k on exact ties); when dist2 is
// defined ((N,) float32, float64 for float64 x) it receives ||x_i - c_{labels_i}||^2.
// x (N, d) and centers (K, d) contiguous, same dtype, K >= 1.
void assign_into(const Tensor& x, const Tensor& centers, const Tensor& labels, const Tensor& dist2);

}  // namespace cpu
}  // namespace kmgan_ext
