// Launchers of the KM-GAN loss block's own CUDA kernels (kmgan_losses_cuda.cu), called by
// kmgan_losses_cuda_binding.cpp together with the single ops' launchers (launchers.h). Same
// conventions as launchers.h: raw pointers, contiguous row-major tensors on the current device,
// "acc" = float32 (float64 for float64 storage), everything enqueued on `stream`.
#pragma once

#include "launchers.h"

namespace kmgan_cuda {

// From the squared distances of each row to its chosen center (acc, as assign_launch writes
// them; a row whose dist2 overflowed to inf is recomputed in double from f, its label and
// centers_real): pulls = (pull_real, pull_fake) with the reduction's finish ("fro": sqrt of
// the sum, "mean": mean of the square roots, "sq_sum": half the sum), loss_d = pull_real -
// pull_fake, loss_g = pull_fake. One block, fixed-order sums in double, each rounded once.
cudaError_t kmgan_pulls_launch(Dtype dtype, Reduction reduction, const void* f_real,
                               const int64_t* labels_real, const void* dist2_real, int64_t n_real,
                               const void* f_fake, const int64_t* labels_fake,
                               const void* dist2_fake, int64_t n_fake, const void* centers_real,
                               int64_t k_real, int64_t d, void* pulls, void* loss_d, void* loss_g,
                               cudaStream_t stream);

// grad_real_i = g_d s_r(i) (x_i - c_{l_i}) + g_c sign(u_diff) / (1 + counts_real[l_i])
// grad_fake_i = (g_g - g_d) s_f(i) (y_i - c_{m_i}) - g_c sign(u_diff) / (1 + counts_fake[m^_i])
// with s the pull's scale (1/pull "fro", 1/(N r_i) "mean", 1 "sq_sum"; 0 at distance 0).
// grad_d/grad_g/grad_center are acc scalars on the device, or null for 0. ONE launch.
cudaError_t kmgan_losses_backward_launch(
    Dtype dtype, Reduction reduction, const void* grad_d, const void* grad_g,
    const void* grad_center, const void* f_real, const void* f_fake, const void* centers_real,
    int64_t k_real, const int64_t* labels_real, const int64_t* labels_fake,
    const int64_t* labels_fake_hat, const void* pulls, const void* u_diff,
    const int64_t* counts_real, const int64_t* counts_fake, int64_t k_fake, int64_t n_real,
    int64_t n_fake, int64_t d, void* grad_real, void* grad_fake, cudaStream_t stream);

}  // namespace kmgan_cuda
