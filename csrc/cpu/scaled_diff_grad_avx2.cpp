// The float32 rows of scaled_diff_grad (common.h) on x86-64 CPUs with AVX2: 8 columns per
// step, widened to two vectors of 4 doubles, the same double operations per element as the
// portable loop (scale * (x - c), rounded once to float32; the centres' sum minus that
// double), so both paths give the same bits. Without a -march flag the portable loop compiles
// to SSE2 (2 doubles per operation). Compiled for AVX2 through the function target attribute
// and called after the runtime CPU check (use_avx2), as segment_sums_f32_avx2 is.
#include "common.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define KMGAN_HAVE_AVX2_SCALED_DIFF 1
#endif

namespace kmgan_ext {
namespace cpu {

#ifdef KMGAN_HAVE_AVX2_SCALED_DIFF

namespace {

// kGx: write gx_i; kSums: subtract the unrounded gradient from the centre's row of sums.
template <bool kGx, bool kSums, typename index_t>
__attribute__((target("avx2"))) void rows(const float* x, const float* c, const index_t* labels,
                                          int64_t d, const double* scale, int64_t i0, int64_t i1,
                                          float* gx, double* sums) {
  for (int64_t i = i0; i < i1; ++i) {
    const float* xi = x + i * d;
    const float* ci = c + labels[i] * d;
    float* gi = kGx ? gx + i * d : nullptr;
    double* sp = kSums ? sums + labels[i] * d : nullptr;
    const double s = scale[i];
    const __m256d sv = _mm256_set1_pd(s);
    int64_t j = 0;
    for (; j + 8 <= d; j += 8) {
      const __m256 xv = _mm256_loadu_ps(xi + j), cv = _mm256_loadu_ps(ci + j);
      const __m256d g0 = _mm256_mul_pd(
          sv, _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(xv)),
                            _mm256_cvtps_pd(_mm256_castps256_ps128(cv))));
      const __m256d g1 = _mm256_mul_pd(
          sv, _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(xv, 1)),
                            _mm256_cvtps_pd(_mm256_extractf128_ps(cv, 1))));
      if constexpr (kGx) {
        _mm256_storeu_ps(gi + j, _mm256_set_m128(_mm256_cvtpd_ps(g1), _mm256_cvtpd_ps(g0)));
      }
      if constexpr (kSums) {
        // s - g is s + (-g) bit for bit (IEEE 754 defines subtraction so).
        _mm256_storeu_pd(sp + j, _mm256_sub_pd(_mm256_loadu_pd(sp + j), g0));
        _mm256_storeu_pd(sp + j + 4, _mm256_sub_pd(_mm256_loadu_pd(sp + j + 4), g1));
      }
    }
    for (; j < d; ++j) {
      const double g = s * (static_cast<double>(xi[j]) - static_cast<double>(ci[j]));
      if constexpr (kGx) gi[j] = static_cast<float>(g);
      if constexpr (kSums) sp[j] += -g;
    }
  }
}

template <typename index_t>
void dispatch(const float* x, const float* c, const index_t* labels, int64_t d,
              const double* scale, int64_t i0, int64_t i1, float* gx, double* sums) {
  if (gx != nullptr && sums != nullptr) {
    rows<true, true>(x, c, labels, d, scale, i0, i1, gx, sums);
  } else if (gx != nullptr) {
    rows<true, false>(x, c, labels, d, scale, i0, i1, gx, sums);
  } else if (sums != nullptr) {
    rows<false, true>(x, c, labels, d, scale, i0, i1, gx, sums);
  }
}

}  // namespace

void scaled_diff_rows_f32_avx2(const float* x, const float* c, const int64_t* labels, int64_t d,
                               const double* scale, int64_t i0, int64_t i1, float* gx,
                               double* sums) {
  dispatch(x, c, labels, d, scale, i0, i1, gx, sums);
}
void scaled_diff_rows_f32_avx2(const float* x, const float* c, const int32_t* labels, int64_t d,
                               const double* scale, int64_t i0, int64_t i1, float* gx,
                               double* sums) {
  dispatch(x, c, labels, d, scale, i0, i1, gx, sums);
}

#else

void scaled_diff_rows_f32_avx2(const float*, const float*, const int64_t*, int64_t,
                               const double*, int64_t, int64_t, float*, double*) {
  TORCH_CHECK(false, "scaled_diff_rows_f32_avx2 is not compiled on this platform");
}
void scaled_diff_rows_f32_avx2(const float*, const float*, const int32_t*, int64_t,
                               const double*, int64_t, int64_t, float*, double*) {
  TORCH_CHECK(false, "scaled_diff_rows_f32_avx2 is not compiled on this platform");
}

#endif

}  // namespace cpu
}  // namespace kmgan_ext
