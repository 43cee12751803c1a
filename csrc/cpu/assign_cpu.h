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
// The k largest cosines of every row (assign(k=...) with metric="cosine"): labels (N, k)
// int64 and dist2 (N, k) = 2 - 2 cos, ordered as reference.assign_topk(cosine=True) orders
// them (the exact float64 key descending, NaN first, ties to the lowest index).
void assign_cosine_topk_into(const Tensor& x, const Tensor& centers, int64_t k,
                             const Tensor& labels, const Tensor& dist2);
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
// dist_tile_avx2's results, bit for bit, from the AVX-512 kernel (assign_avx512.cpp) where
// use_avx512(), else from dist_tile_avx2. Call after use_avx2().
void dist_tile(const float* x, int64_t rows, int64_t d, const float* packed, const float* bias,
               int64_t panels, float* e, int64_t lde, float* pmin, int64_t ldm);
// use_avx2() and AVX-512F here, unless KMGAN_EXT_CPU_NO_AVX512=1 asks for the AVX2 tile. One
// choice per process.
bool use_avx512();

// ||a - b||^2 accumulated in double.
double exact_dist2_avx2(const float* a, const float* b, int64_t d);

// ---- shared with the small-K kernel (assign_small_k.cpp), defined in assign_cpu.cpp
// Candidates of a row: more near-tied ones than this send the row to exact distances to all K.
constexpr int kMaxCandidates = 8;

// Twice B_i, the bound on the rounding error of e_k = ||c'_k||^2 - 2 x'.c'_k in float for a
// row with ||x'|| = xn (assign_cpu.cpp explains it): centers whose computed e_k is within it of
// the row's minimum stay candidates.
double candidate_bound2_f32(double xn, double cmax, int64_t d);

// The float32 centers shifted by their mean s, as assign_kernel uses them: s (d,),
// cs = fl(c - s) (K, d) row-major, bias_k = ||c_k - s||^2 (formed in double, rounded),
// cmax = max_k ||c_k - s||; false where a center is not finite (the caller falls back).
bool shifted_centers_f32(const float* c, int64_t k, int64_t d, std::vector<float>& s,
                         std::vector<float>& cs, std::vector<float>& bias, double& cmax);

// The label of a row from its candidate list cand[0..count) (increasing k), decided by exact
// float64 distances as the reference forms them; count > kMaxCandidates: exact over all K with
// torch.argmin's NaN rule. dist receives the winner's exact distance.
int64_t resolve_candidates_f32(const float* xi, const float* c, int64_t k, int64_t d,
                               const int64_t* cand, int count, double& dist);

// cs (K, d) packed panel by panel for dist_tile_avx2: packed[p][j][l] = cs[p * kPanel + l][j],
// 0 past K; ceil(K / kPanel) * kPanel * d floats.
std::vector<float> pack_panels(const float* cs, int64_t k, int64_t d);

// The small-K path of assign for float32 (assign_small_k.cpp): true where it took the call
// (AVX2 + FMA, 2 <= K <= kSmallK, finite centers); false leaves everything to assign_kernel.
constexpr int64_t kSmallK = 12;
bool assign_small_k_f32(const float* x, int64_t n, int64_t d, const float* c, int64_t k,
                        int64_t* labels, float* dist2);

}  // namespace cpu
}  // namespace kmgan_ext
