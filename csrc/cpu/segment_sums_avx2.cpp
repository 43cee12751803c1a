// The float32 segmented sum with double accumulators (common.h segment_sums) on x86-64 CPUs
// with AVX2: 8 floats widened to two vectors of 4 doubles per step. Without a -march flag the
// portable loop compiles to SSE2 (2 doubles per add) and ran 3x slower than a float32 sum at
// 4096 x 512; this keeps the double accumulation within ~1.5x of it. Compiled for AVX2 only
// through the function's target attribute and called after the runtime CPU check
// (avx2_kernels_available, assign_avx2.cpp), as assign's kernels are.
#include "assign_cpu.h"
#include "prefetch.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define KMGAN_HAVE_AVX2_SEGMENT_SUMS 1
#endif

namespace kmgan_ext {
namespace cpu {

#ifdef KMGAN_HAVE_AVX2_SEGMENT_SUMS

namespace {

// int64 or int32 labels (docs/ops.md: int32 labels are read as they are).
template <typename index_t>
__attribute__((target("avx2"))) void segment_sums_avx2_impl(const float* x, int64_t n, int64_t d,
                                                            const index_t* labels, double* acc,
                                                            int64_t ld, int64_t j0, int64_t j1) {
  // The row kPrefetchRows ahead is requested now (prefetch.h says why).
  constexpr int64_t kPrefetchRows = 4;
  const int64_t w = j1 - j0;
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * d + j0;  // xi[j], s[j]: column j0 + j
    double* s = acc + labels[i] * ld;
    if (i + kPrefetchRows < n) prefetch_range(xi + kPrefetchRows * d, xi + kPrefetchRows * d + w);
    int64_t j = 0;
    for (; j + 8 <= w; j += 8) {
      const __m256 v = _mm256_loadu_ps(xi + j);
      _mm256_storeu_pd(s + j, _mm256_add_pd(_mm256_loadu_pd(s + j), _mm256_cvtps_pd(_mm256_castps256_ps128(v))));
      _mm256_storeu_pd(s + j + 4,
                       _mm256_add_pd(_mm256_loadu_pd(s + j + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))));
    }
    for (; j < w; ++j) s[j] += static_cast<double>(xi[j]);
  }
}

}  // namespace

void segment_sums_f32_avx2(const float* x, int64_t n, int64_t d, const int64_t* labels,
                           double* acc, int64_t ld, int64_t j0, int64_t j1) {
  segment_sums_avx2_impl(x, n, d, labels, acc, ld, j0, j1);
}
void segment_sums_f32_avx2(const float* x, int64_t n, int64_t d, const int32_t* labels,
                           double* acc, int64_t ld, int64_t j0, int64_t j1) {
  segment_sums_avx2_impl(x, n, d, labels, acc, ld, j0, j1);
}

#else

void segment_sums_f32_avx2(const float*, int64_t, int64_t, const int64_t*, double*, int64_t,
                           int64_t, int64_t) {
  TORCH_CHECK(false, "segment_sums_f32_avx2 is not compiled on this platform");
}
void segment_sums_f32_avx2(const float*, int64_t, int64_t, const int32_t*, double*, int64_t,
                           int64_t, int64_t) {
  TORCH_CHECK(false, "segment_sums_f32_avx2 is not compiled on this platform");
}

#endif

}  // namespace cpu
}  // namespace kmgan_ext
