// ||x_i - c||^2 in double for a float32 row (assigned_distance_cpu.cpp's row_sq) on x86-64
// CPUs with AVX2, called after the runtime CPU check (use_avx2), as segment_sums_f32_avx2 is.
//
// Why: without a -march flag the portable loop compiles to SSE2, 2 doubles per operation, and
// assigned_distance's forward ran at half the read bandwidth (issue 15: 4.6 ms for 65,536 x
// 256 rows, where reading them takes 2.1 ms; torch.compile's float32 loop took 2.9 ms).
//
// The same bits as the portable loop: column j into partial sum j % 16, the difference,
// square and sum as separate double operations (no FMA in this target, -ffp-contract=off),
// the tail columns and the final additions (row_sq_combine) in the portable order.
#include "common.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define KMGAN_HAVE_AVX2_ROW_SQ 1
#endif

namespace kmgan_ext {
namespace cpu {

#ifdef KMGAN_HAVE_AVX2_ROW_SQ

namespace {

__attribute__((target("avx2"))) inline __m256d sq_diff4(const float* x, const float* c) {
  // 4 floats per conversion straight from memory: no 128-bit extracts (a shuffle each).
  const __m256d t = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(x)), _mm256_cvtps_pd(_mm_loadu_ps(c)));
  return _mm256_mul_pd(t, t);
}

__attribute__((target("avx2"))) double row_sq_impl(const float* xi, const float* ci, int64_t d) {
  // Partial sum q (of column j with j % 16 == q) is lane q % 4 of a_{q / 4}: four independent
  // chains, so a row's latency is d / 16 additions, not d / 4.
  __m256d a0 = _mm256_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;
  int64_t j = 0;
  for (; j + 16 <= d; j += 16) {
    a0 = _mm256_add_pd(a0, sq_diff4(xi + j, ci + j));
    a1 = _mm256_add_pd(a1, sq_diff4(xi + j + 4, ci + j + 4));
    a2 = _mm256_add_pd(a2, sq_diff4(xi + j + 8, ci + j + 8));
    a3 = _mm256_add_pd(a3, sq_diff4(xi + j + 12, ci + j + 12));
  }
  double s[16];
  _mm256_storeu_pd(s, a0);
  _mm256_storeu_pd(s + 4, a1);
  _mm256_storeu_pd(s + 8, a2);
  _mm256_storeu_pd(s + 12, a3);
  for (; j < d; ++j) {
    const double t = static_cast<double>(xi[j]) - static_cast<double>(ci[j]);
    s[j % 16] += t * t;
  }
  return row_sq_combine(s);
}

}  // namespace

double row_sq_f32_avx2(const float* xi, const float* ci, int64_t d) { return row_sq_impl(xi, ci, d); }

#else  // not x86-64 with GCC/Clang: use_avx2() is false and this is never called

double row_sq_f32_avx2(const float*, const float*, int64_t) {
  TORCH_CHECK(false, "row_sq_f32_avx2 is not compiled on this platform");
}

#endif

}  // namespace cpu
}  // namespace kmgan_ext
