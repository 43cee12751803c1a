// The float32 forward row loop of KM-GAN's center loss (center_loss_cpu.cpp) on x86-64 CPUs
// with AVX2, called after the runtime CPU check (use_avx2), as segment_sums_f32_avx2 is.
//
// Why: without a -march flag the portable loop compiles to SSE2, 2 doubles per operation
// (issue 15: 5.1 ms for the bench's two 65,536 x 256 sides, where reading them takes 3.9 ms).
// The backward only writes, and the portable loop already runs at the write bandwidth
// (5.0 ms for the two 64 MB gradients; a plain 2-thread store loop takes 5.4 ms; streaming
// stores measured no faster on the bench machine).
//
// Same bits as the portable loop: multiply and add in separate double operations (compiled
// without FMA and with -ffp-contract=off, so they are not contracted).
#include "common.h"
#include "prefetch.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define KMGAN_HAVE_AVX2_CENTER_LOSS 1
#endif

namespace kmgan_ext {
namespace cpu {

#ifdef KMGAN_HAVE_AVX2_CENTER_LOSS

namespace {

template <typename index_t>
__attribute__((target("avx2"))) void weighted_rows(const float* x, const index_t* labels,
                                                   const double* w, int64_t i0, int64_t i1,
                                                   int64_t d, double* acc) {
  // The row a few ahead is requested while this one is added (prefetch.h).
  constexpr int64_t kPrefetchRows = 4;
  for (int64_t i = i0; i < i1; ++i) {
    const float* xi = x + i * d;
    if (i + kPrefetchRows < i1) prefetch_range(xi + kPrefetchRows * d, xi + (kPrefetchRows + 1) * d);
    const double wi = w[labels[i]];
    const __m256d wv = _mm256_set1_pd(wi);
    int64_t j = 0;
    for (; j + 8 <= d; j += 8) {
      const __m256 v = _mm256_loadu_ps(xi + j);
      const __m256d lo = _mm256_mul_pd(wv, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
      const __m256d hi = _mm256_mul_pd(wv, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
      _mm256_storeu_pd(acc + j, _mm256_add_pd(_mm256_loadu_pd(acc + j), lo));
      _mm256_storeu_pd(acc + j + 4, _mm256_add_pd(_mm256_loadu_pd(acc + j + 4), hi));
    }
    for (; j < d; ++j) acc[j] += wi * static_cast<double>(xi[j]);
  }
}

}  // namespace

void center_loss_rows_f32_avx2(const float* x, const int64_t* labels, const double* w, int64_t i0,
                               int64_t i1, int64_t d, double* acc) {
  weighted_rows(x, labels, w, i0, i1, d, acc);
}
void center_loss_rows_f32_avx2(const float* x, const int32_t* labels, const double* w, int64_t i0,
                               int64_t i1, int64_t d, double* acc) {
  weighted_rows(x, labels, w, i0, i1, d, acc);
}

#else  // not x86-64 with GCC/Clang: use_avx2() is false and these are never called

void center_loss_rows_f32_avx2(const float*, const int64_t*, const double*, int64_t, int64_t,
                               int64_t, double*) {
  TORCH_CHECK(false, "center_loss_rows_f32_avx2 is not compiled on this platform");
}
void center_loss_rows_f32_avx2(const float*, const int32_t*, const double*, int64_t, int64_t,
                               int64_t, double*) {
  TORCH_CHECK(false, "center_loss_rows_f32_avx2 is not compiled on this platform");
}

#endif

}  // namespace cpu
}  // namespace kmgan_ext
