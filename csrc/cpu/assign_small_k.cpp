// km.assign's float32 path for a few centers (2 <= K <= kSmallK) on AVX2 + FMA CPUs: one sweep
// over x, each row read once from memory (issue 15: at K = 10 the blocked GEMM of
// assign_kernel pads K to a panel of 16 and stages x' in a buffer; here the limit is reading x).
//
// Per row, the dot products x'.c'_k are vectorised along d (8 columns per FMA, the row's
// x' = fl(x - s) formed in registers as it is loaded), reduced to one vector of up to 8
// centers, and e_k = ||c'_k||^2 - 2 x'.c'_k ranks the centers as in assign_cpu.cpp, with the
// same shift s, the same candidate bound (candidate_bound2_f32: valid for any summation
// order, FMA included) and the same exact float64 re-check of near ties
// (resolve_candidates_f32), so labels and dist2 are those of assign_kernel: the float64
// argmin, dist2 the winner's distance formed from differences in double. Rows that could
// overflow float32 or hold NaN/Inf take the exact path over all K there too; calls whose
// centers are not all finite are left to assign_kernel.
#include "assign_cpu.h"
#include "avx2_reduce.h"
#include "prefetch.h"

#include <cmath>
#include <limits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define KMGAN_HAVE_SMALL_K_KERNEL 1
#endif

namespace kmgan_ext {
namespace cpu {

#ifdef KMGAN_HAVE_SMALL_K_KERNEL

namespace {

#define KMGAN_AVX2 __attribute__((target("avx2,fma")))

// ||xi - c||^2 in double, c given in double (exact: the float32 center widened) and zero-padded
// to whole vectors (the masked tail of xi reads 0 there).
KMGAN_AVX2 inline void add_sq8(__m256 xv, const double* c, __m256d& s0, __m256d& s1) {
  const __m256d t0 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(xv)), _mm256_loadu_pd(c));
  const __m256d t1 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(xv, 1)), _mm256_loadu_pd(c + 4));
  s0 = _mm256_fmadd_pd(t0, t0, s0);
  s1 = _mm256_fmadd_pd(t1, t1, s1);
}

// Four accumulators: the row's label is known only now, so this chain is the row's latency.
KMGAN_AVX2 inline double exact_dist2_row(const float* xi, const double* c, int64_t d, __m256i tail) {
  __m256d s0 = _mm256_setzero_pd(), s1 = s0, s2 = s0, s3 = s0;
  int64_t j = 0;
  for (; j + 16 <= d; j += 16) {
    add_sq8(_mm256_loadu_ps(xi + j), c + j, s0, s1);
    add_sq8(_mm256_loadu_ps(xi + j + 8), c + j + 8, s2, s3);
  }
  if (j + 8 <= d) {
    add_sq8(_mm256_loadu_ps(xi + j), c + j, s0, s1);
    j += 8;
  }
  if (j < d) add_sq8(_mm256_maskload_ps(xi + j, tail), c + j, s2, s3);
  const __m256d t = _mm256_add_pd(_mm256_add_pd(s0, s1), _mm256_add_pd(s2, s3));
  const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(t), _mm256_extractf128_pd(t, 1));
  return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}

// Lane q of the result = the sum of the 8 lanes of a_q.
KMGAN_AVX2 inline __m256 reduce8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5,
                                 __m256 a6, __m256 a7) {
  const __m256 h01 = _mm256_hadd_ps(a0, a1), h23 = _mm256_hadd_ps(a2, a3);
  const __m256 h45 = _mm256_hadd_ps(a4, a5), h67 = _mm256_hadd_ps(a6, a7);
  const __m256 q0123 = _mm256_hadd_ps(h01, h23), q4567 = _mm256_hadd_ps(h45, h67);
  // q0123 = [s0 s1 s2 s3 | s0' s1' s2' s3'] (low / high 128-bit halves of the inputs)
  const __m256 lo = _mm256_permute2f128_ps(q0123, q4567, 0x20);
  const __m256 hi = _mm256_permute2f128_ps(q0123, q4567, 0x31);
  return _mm256_add_ps(lo, hi);
}

// Dot products of the row x' = fl(xi - s) with G (<= 12) shifted centers cs[q * dp ..]: lanes
// 0..7 of lo and 0..3 of hi, the rest 0; and *norm = ||x'||^2 (float). s and
// cs are zero past d (dp = d rounded up to 8), and the last d % 8 columns of xi are read with a
// mask, so the padding contributes exact zeros.
// 12 accumulators, x', ||x'||^2 and a center vector: 15 of the 16 ymm registers (named
// variables: GCC keeps an array of __m256 in memory, assign_avx2.cpp).
template <int G>
KMGAN_AVX2 inline void dots_row(const float* xi, const float* s, const float* cs, int64_t d,
                                int64_t dp, __m256i tail, __m256& lo, __m256& hi, float& norm) {
  static_assert(G >= 2 && G <= 12, "2 to 12 centers");
  const __m256 z = _mm256_setzero_ps();
  __m256 a0 = z, a1 = z, a2 = z, a3 = z, a4 = z, a5 = z, a6 = z, a7 = z, nn = z;
  __m256 a8 = z, a9 = z, a10 = z, a11 = z;
#define KMGAN_STEP(XV, J)                                                     \
  {                                                                           \
    const __m256 xs = _mm256_sub_ps(XV, _mm256_loadu_ps(s + (J)));            \
    nn = _mm256_fmadd_ps(xs, xs, nn);                                         \
    a0 = _mm256_fmadd_ps(xs, _mm256_loadu_ps(cs + (J)), a0);                  \
    if (G > 1) a1 = _mm256_fmadd_ps(xs, _mm256_loadu_ps(cs + dp + (J)), a1);     \
    if (G > 2) a2 = _mm256_fmadd_ps(xs, _mm256_loadu_ps(cs + 2 * dp + (J)), a2); \
    if (G > 3) a3 = _mm256_fmadd_ps(xs, _mm256_loadu_ps(cs + 3 * dp + (J)), a3); \
    if (G > 4) a4 = _mm256_fmadd_ps(xs, _mm256_loadu_ps(cs + 4 * dp + (J)), a4); \
    if (G > 5) a5 = _mm256_fmadd_ps(xs, _mm256_loadu_ps(cs + 5 * dp + (J)), a5); \
    if (G > 6) a6 = _mm256_fmadd_ps(xs, _mm256_loadu_ps(cs + 6 * dp + (J)), a6); \
    if (G > 7) a7 = _mm256_fmadd_ps(xs, _mm256_loadu_ps(cs + 7 * dp + (J)), a7); \
    if (G > 8) a8 = _mm256_fmadd_ps(xs, _mm256_loadu_ps(cs + 8 * dp + (J)), a8); \
    if (G > 9) a9 = _mm256_fmadd_ps(xs, _mm256_loadu_ps(cs + 9 * dp + (J)), a9); \
    if (G > 10) a10 = _mm256_fmadd_ps(xs, _mm256_loadu_ps(cs + 10 * dp + (J)), a10); \
    if (G > 11) a11 = _mm256_fmadd_ps(xs, _mm256_loadu_ps(cs + 11 * dp + (J)), a11); \
  }
  int64_t j = 0;
  for (; j + 8 <= d; j += 8) KMGAN_STEP(_mm256_loadu_ps(xi + j), j)
  if (j < d) KMGAN_STEP(_mm256_maskload_ps(xi + j, tail), j)
#undef KMGAN_STEP
  norm = hsum(nn);
  lo = reduce8(a0, a1, a2, a3, a4, a5, a6, a7);
  if (G > 8) hi = reduce8(a8, a9, a10, a11, z, z, z, z);
}

// Rows [i0, i1) against G centers; cd: the centers in double, dp columns each.
template <int G>
KMGAN_AVX2 void assign_rows(const float* x, int64_t i0, int64_t i1, int64_t d, const float* c,
                            const double* cd, const float* s, const float* cs, int64_t dp,
                            const float* bias, double cmax, int64_t* labels, float* dist2) {
  const int rem = static_cast<int>(d % 8);
  const __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32(rem), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  // Padding lanes: bias +inf, so e there is +inf and never a candidate.
  const __m256 bias_lo = _mm256_loadu_ps(bias), bias_hi = _mm256_loadu_ps(bias + 8);
  const __m256 two = _mm256_set1_ps(2.0f);
  const double safe_square = static_cast<double>(std::numeric_limits<float>::max()) / 16.0;
  // The row kAhead ahead is requested now (prefetch.h): without it the first load of each row
  // stalled on memory (issue 15: K = 10, 200,000 x 100 on 2 cores, 9.7 -> 6.9 ms on a Xeon).
  constexpr int64_t kAhead = 4;
  for (int64_t i = i0; i < i1; ++i) {
    const float* xi = x + i * d;
    if (i + kAhead < i1) prefetch_range(xi + kAhead * d, xi + (kAhead + 1) * d);
    __m256 lo, hi = _mm256_setzero_ps();
    float n2;
    dots_row<G>(xi, s, cs, d, dp, tail, lo, hi, n2);
    // e = bias - 2 dot, one rounding (as assign_avx2.cpp's epilogue).
    const __m256 e_lo = _mm256_fnmadd_ps(two, lo, bias_lo);
    const __m256 e_hi = _mm256_fnmadd_ps(two, hi, bias_hi);
    const double xn = std::sqrt(static_cast<double>(n2));
    // NaN-safe: a NaN/Inf row fails the comparison and takes the exact path.
    const bool safe = (xn + cmax) * (xn + cmax) < safe_square;
    int64_t cand[kMaxCandidates];
    int count = kMaxCandidates + 1;
    if (safe) {
      const float best = hmin(_mm256_min_ps(e_lo, e_hi));
      const float thr = best + static_cast<float>(candidate_bound2_f32(xn, cmax, d));
      const __m256 t = _mm256_set1_ps(thr);
      unsigned mask = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(e_lo, t, _CMP_LE_OQ))) |
                      (static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(e_hi, t, _CMP_LE_OQ))) << 8);
      const int m = __builtin_popcount(mask);
      if (m >= 1 && m <= kMaxCandidates) {
        count = 0;
        for (; mask != 0; mask &= mask - 1) cand[count++] = __builtin_ctz(mask);
      }
    }
    double dist = -1.0;
    const int64_t label = count == 1 ? cand[0] : resolve_candidates_f32(xi, c, G, d, cand, count, dist);
    labels[i] = label;
    if (dist2 != nullptr) {
      if (dist < 0.0) dist = exact_dist2_row(xi, cd + label * dp, d, tail);
      dist2[i] = static_cast<float>(dist > 0.0 ? dist : (dist == dist ? 0.0 : dist));
    }
  }
}

using RowsFn = void (*)(const float*, int64_t, int64_t, int64_t, const float*, const double*, const float*,
                        const float*, int64_t, const float*, double, int64_t*, float*);

RowsFn rows_fn(int64_t k) {
  switch (k) {
    case 2: return &assign_rows<2>;
    case 3: return &assign_rows<3>;
    case 4: return &assign_rows<4>;
    case 5: return &assign_rows<5>;
    case 6: return &assign_rows<6>;
    case 7: return &assign_rows<7>;
    case 8: return &assign_rows<8>;
    case 9: return &assign_rows<9>;
    case 10: return &assign_rows<10>;
    case 11: return &assign_rows<11>;
    default: return &assign_rows<12>;
  }
}

#undef KMGAN_AVX2

}  // namespace

bool assign_small_k_f32(const float* x, int64_t n, int64_t d, const float* c, int64_t k,
                        int64_t* labels, float* dist2) {
  if (k < 2 || k > kSmallK || !avx2_kernels_available()) return false;
  std::vector<float> s, cs, bias;
  double cmax = 0.0;
  if (!shifted_centers_f32(c, k, d, s, cs, bias, cmax)) return false;
  // Zero-padded to whole vectors of 8 columns, bias to 16 lanes with +inf; the centers also in
  // double for the winner's exact distance.
  const int64_t dp = (d + 7) / 8 * 8;
  std::vector<float> s_pad(dp, 0.0f), cs_pad(k * dp, 0.0f);
  std::vector<double> cd(k * dp, 0.0);
  std::copy(s.begin(), s.end(), s_pad.begin());
  for (int64_t q = 0; q < k; ++q) {
    std::copy(cs.begin() + q * d, cs.begin() + (q + 1) * d, cs_pad.begin() + q * dp);
    for (int64_t j = 0; j < d; ++j) cd[q * dp + j] = static_cast<double>(c[q * d + j]);
  }
  bias.resize(16, std::numeric_limits<float>::infinity());
  const RowsFn fn = rows_fn(k);
  // At least ~4M multiply-adds per task (as assign_kernel): small problems stay on one thread.
  const int64_t grain = std::max<int64_t>(256, (int64_t(1) << 22) / std::max<int64_t>(1, k * d));
  at::parallel_for(0, n, grain, [&](int64_t i0, int64_t i1) {
    fn(x, i0, i1, d, c, cd.data(), s_pad.data(), cs_pad.data(), dp, bias.data(), cmax, labels, dist2);
  });
  return true;
}

#else  // not x86-64 with GCC/Clang: assign_kernel handles every K

bool assign_small_k_f32(const float*, int64_t, int64_t, const float*, int64_t, int64_t*, float*) {
  return false;
}

#endif

}  // namespace cpu
}  // namespace kmgan_ext
