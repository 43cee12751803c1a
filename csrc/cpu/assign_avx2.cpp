// assign's float32 inner loops on x86-64 CPUs with AVX2 + FMA: the tile of e_k = bias_k -
// 2 x'.c'_k with per-panel minima, and the exact squared distance in double.
//
// Only this file's functions are compiled for AVX2/FMA (function target attributes, not a
// -march flag), and assign calls them only after a runtime CPU check, so the extension still
// loads and runs on any x86-64 CPU (and builds elsewhere, where avx2_kernels_available() is
// false and assign uses at::mm and plain loops).
//
// Why not at::mm: for assign's skinny shapes (tile rows x d x K block) MKL on this AMD EPYC
// (Zen 3) ran at 45-55 GFLOP/s per core in CPU time against a measured FMA peak of 83-93, each
// call pays the dispatcher, and the argmin then needs its own pass over the tile; here the
// epilogue writes e and each panel's minimum while the accumulators are in registers.
#include "assign_cpu.h"
#include "avx2_reduce.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define KMGAN_HAVE_AVX2_KERNEL 1
#endif

namespace kmgan_ext {
namespace cpu {

#ifdef KMGAN_HAVE_AVX2_KERNEL

bool avx2_kernels_available() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

namespace {

#define KMGAN_AVX2 __attribute__((target("avx2,fma")))

// Epilogue of one row of a panel: e = bias - 2 dot (one rounding, as the scalar path),
// stored, and the panel's minimum.
KMGAN_AVX2 inline void finish_row(__m256 lo, __m256 hi, __m256 bl, __m256 bh, float* e, float* pmin) {
  const __m256 two = _mm256_set1_ps(2.0f);
  const __m256 el = _mm256_fnmadd_ps(two, lo, bl);
  const __m256 eh = _mm256_fnmadd_ps(two, hi, bh);
  _mm256_storeu_ps(e, el);
  _mm256_storeu_ps(e + 8, eh);
  *pmin = hmin(_mm256_min_ps(el, eh));
}

// 6 rows of x' against one panel of 16 centers: 12 accumulators + 2 center vectors + 1
// broadcast = 15 of the 16 ymm registers. The accumulators are named variables: GCC 12 keeps
// an array of __m256 in registers but also stores it to the stack on every iteration, which
// made the kernel 2.5x slower than at::mm.
KMGAN_AVX2 inline void kernel_6x16(const float* x, int64_t d, const float* panel, const float* bias,
                                   float* e, int64_t lde, float* pmin, int64_t ldm) {
  __m256 a0l = _mm256_setzero_ps(), a0h = a0l, a1l = a0l, a1h = a0l, a2l = a0l, a2h = a0l;
  __m256 a3l = a0l, a3h = a0l, a4l = a0l, a4h = a0l, a5l = a0l, a5h = a0l;
  const float *x0 = x, *x1 = x + d, *x2 = x + 2 * d, *x3 = x + 3 * d, *x4 = x + 4 * d, *x5 = x + 5 * d;
  for (int64_t j = 0; j < d; ++j) {
    const __m256 bl = _mm256_loadu_ps(panel + j * kPanel);
    const __m256 bh = _mm256_loadu_ps(panel + j * kPanel + 8);
#define KMGAN_ROW(i)                                \
  {                                                 \
    const __m256 a = _mm256_broadcast_ss(x##i + j); \
    a##i##l = _mm256_fmadd_ps(a, bl, a##i##l);      \
    a##i##h = _mm256_fmadd_ps(a, bh, a##i##h);      \
  }
    KMGAN_ROW(0) KMGAN_ROW(1) KMGAN_ROW(2) KMGAN_ROW(3) KMGAN_ROW(4) KMGAN_ROW(5)
#undef KMGAN_ROW
  }
  const __m256 bl = _mm256_loadu_ps(bias), bh = _mm256_loadu_ps(bias + 8);
  finish_row(a0l, a0h, bl, bh, e, pmin);
  finish_row(a1l, a1h, bl, bh, e + lde, pmin + ldm);
  finish_row(a2l, a2h, bl, bh, e + 2 * lde, pmin + 2 * ldm);
  finish_row(a3l, a3h, bl, bh, e + 3 * lde, pmin + 3 * ldm);
  finish_row(a4l, a4h, bl, bh, e + 4 * lde, pmin + 4 * ldm);
  finish_row(a5l, a5h, bl, bh, e + 5 * lde, pmin + 5 * ldm);
}

// One row against one panel (the last rows % 6 of a tile).
KMGAN_AVX2 inline void kernel_1x16(const float* x, int64_t d, const float* panel, const float* bias,
                                   float* e, float* pmin) {
  __m256 lo = _mm256_setzero_ps(), hi = lo;
  for (int64_t j = 0; j < d; ++j) {
    const __m256 a = _mm256_broadcast_ss(x + j);
    lo = _mm256_fmadd_ps(a, _mm256_loadu_ps(panel + j * kPanel), lo);
    hi = _mm256_fmadd_ps(a, _mm256_loadu_ps(panel + j * kPanel + 8), hi);
  }
  finish_row(lo, hi, _mm256_loadu_ps(bias), _mm256_loadu_ps(bias + 8), e, pmin);
}

}  // namespace

KMGAN_AVX2 void dist_tile_avx2(const float* x, int64_t rows, int64_t d, const float* packed,
                               const float* bias, int64_t panels, float* e, int64_t lde,
                               float* pmin, int64_t ldm) {
  int64_t r = 0;
  for (; r + 6 <= rows; r += 6) {
    for (int64_t p = 0; p < panels; ++p) {
      kernel_6x16(x + r * d, d, packed + p * d * kPanel, bias + p * kPanel, e + r * lde + p * kPanel,
                  lde, pmin + r * ldm + p, ldm);
    }
  }
  for (; r < rows; ++r) {
    for (int64_t p = 0; p < panels; ++p) {
      kernel_1x16(x + r * d, d, packed + p * d * kPanel, bias + p * kPanel, e + r * lde + p * kPanel,
                  pmin + r * ldm + p);
    }
  }
}

KMGAN_AVX2 double exact_dist2_avx2(const float* a, const float* b, int64_t d) {
  __m256d s0 = _mm256_setzero_pd(), s1 = s0;
  int64_t j = 0;
  for (; j + 8 <= d; j += 8) {
    const __m256 fa = _mm256_loadu_ps(a + j), fb = _mm256_loadu_ps(b + j);
    const __m256d t0 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(fa)),
                                     _mm256_cvtps_pd(_mm256_castps256_ps128(fb)));
    const __m256d t1 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(fa, 1)),
                                     _mm256_cvtps_pd(_mm256_extractf128_ps(fb, 1)));
    s0 = _mm256_fmadd_pd(t0, t0, s0);
    s1 = _mm256_fmadd_pd(t1, t1, s1);
  }
  const __m256d s = _mm256_add_pd(s0, s1);
  const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
  double total = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
  for (; j < d; ++j) {
    const double t = static_cast<double>(a[j]) - static_cast<double>(b[j]);
    total += t * t;
  }
  return total;
}

#undef KMGAN_AVX2

#else  // not x86-64 with GCC/Clang: assign uses at::mm and plain loops

bool avx2_kernels_available() { return false; }

void dist_tile_avx2(const float*, int64_t, int64_t, const float*, const float*, int64_t, float*,
                    int64_t, float*, int64_t) {
  TORCH_CHECK(false, "dist_tile_avx2 is not compiled on this platform");
}

double exact_dist2_avx2(const float*, const float*, int64_t) {
  TORCH_CHECK(false, "exact_dist2_avx2 is not compiled on this platform");
}

#endif

}  // namespace cpu
}  // namespace kmgan_ext
