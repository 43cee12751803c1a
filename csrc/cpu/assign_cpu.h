// The CPU assignment routine, shared by assign_native and minibatch_step_native_.
#pragma once

#include "common.h"

namespace kmgan_ext {
namespace cpu {

// labels (N,) int64 = argmin_k ||x_i - c_k||^2 (lowest k on exact ties); when dist2 is
// defined ((N,) float32, float64 for float64 x) it receives ||x_i - c_{labels_i}||^2.
// x (N, d) and centers (K, d) contiguous, same dtype, K >= 1.
void assign_into(const Tensor& x, const Tensor& centers, const Tensor& labels, const Tensor& dist2);

// Centers per packed panel of the AVX2 dot-product kernel.
constexpr int64_t kPanel = 16;

// True on x86-64 CPUs with AVX2 and FMA (checked at run time), where dot_tile_avx2 runs.
bool dot_tile_avx2_available();

// out[i, p * 16 + l] = x_i . c_{p * 16 + l} for i < rows, p < panels, with x (rows, d) row-major
// and the centers packed panel by panel as packed[p][j][l] (d x 16 floats per panel).
void dot_tile_avx2(const float* x, int64_t rows, int64_t d, const float* packed, int64_t panels,
                   float* out, int64_t ldo);

}  // namespace cpu
}  // namespace kmgan_ext
