// The CPU assignment routine, shared by assign_native and minibatch_step_native_.
#pragma once

#include "common.h"

namespace kmgan_ext {
namespace cpu {

// labels (N,) int64 = argmin_k ||x_i - c_k||^2 (lowest k on exact ties); when dist2 is
// defined ((N,) float32, float64 for float64 x) it receives ||x_i - c_{labels_i}||^2.
// x (N, d) and centers (K, d) contiguous, same dtype, K >= 1.
void assign_into(const Tensor& x, const Tensor& centers, const Tensor& labels, const Tensor& dist2);

// metric="cosine" (assign_cosine_cpu.cpp): labels = argmax_k cos(x_i, c_k) (lowest k on exact
// ties; cos 0 where ||x|| ||c|| == 0), dist2 (when defined) = 2 - 2 cos, clamped at 0.
void assign_cosine_into(const Tensor& x, const Tensor& centers, const Tensor& labels,
                        const Tensor& dist2);
// The gradient of that dist2 (gc undefined: no centers' gradient). Contiguous inputs.
void assign_cosine_backward_into(const Tensor& grad_dist2, const Tensor& x, const Tensor& centers,
                                 const Tensor& labels, const Tensor& gx, const Tensor& gc);

// Centers per packed panel of the AVX2 kernel (and per chunk of the argmin scan).
constexpr int64_t kPanel = 16;

// True on x86-64 CPUs with AVX2 and FMA (checked at run time), where the *_avx2 functions
// below run (assign_avx2.cpp).
bool avx2_kernels_available();

// For rows i < rows of x' (rows, d) row-major and panels p of 16 centers packed as
// packed[p][j][l] (d x 16 floats per panel): e[i, 16p + l] = bias[16p + l] - 2 x'_i . c'_{16p+l}
// and pmin[i, p] = min_l e[i, 16p + l] (leading dimensions lde and ldm).
void dist_tile_avx2(const float* x, int64_t rows, int64_t d, const float* packed,
                    const float* bias, int64_t panels, float* e, int64_t lde, float* pmin,
                    int64_t ldm);

// ||a - b||^2 accumulated in double.
double exact_dist2_avx2(const float* a, const float* b, int64_t d);

}  // namespace cpu
}  // namespace kmgan_ext
