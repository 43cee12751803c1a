// The float32 row loops of KM-GAN's center loss (center_loss_cpu.cpp) on x86-64 CPUs with AVX2,
// called after the runtime CPU check (use_avx2), as segment_sums_f32_avx2 is.
//
// Why: without a -march flag the portable loops compile to SSE2, 2 doubles per operation
// (issue 15: the forward took 5.1 ms for the bench's two 65,536 x 256 sides on an EPYC, where
// reading them takes 3.9 ms). The backward only writes: with plain stores each line of the
// gradient is read from memory before it is overwritten, which on a 2-core Xeon made it
// 10.0 ms for the two 64 MB gradients; streaming stores take 3.5 ms there.
//
// Same bits as the portable loops: multiply and add in separate double operations (compiled
// without FMA and with -ffp-contract=off, so they are not contracted), then one rounding to
// float.
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
  // The row a few ahead is requested into L2 while this one is added (prefetch.h).
  constexpr int64_t kPrefetchRows = 8;
  for (int64_t i = i0; i < i1; ++i) {
    const float* xi = x + i * d;
    if (i + kPrefetchRows < i1) prefetch_range_l2(xi + kPrefetchRows * d, xi + (kPrefetchRows + 1) * d);
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

// Eight columns per step: two vectors of 4 doubles, each multiplied by the row's weight,
// rounded to float and stored past the caches (the caller checked d % 8 == 0 and alignment).
template <typename index_t>
__attribute__((target("avx2"))) void grad_rows_stream(float* out, const index_t* labels,
                                                      const int64_t* n, const double* sgn,
                                                      int64_t d, double g, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) {
    const __m256d w = _mm256_set1_pd(g / (1.0 + static_cast<double>(n[labels[i]])));
    float* oi = out + i * d;
    for (int64_t j = 0; j < d; j += 8) {
      const __m128 lo = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_loadu_pd(sgn + j), w));
      const __m128 hi = _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_loadu_pd(sgn + j + 4), w));
      _mm256_stream_ps(oi + j, _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1));
    }
  }
  // Streaming stores are weakly ordered: make them visible before the caller's join.
  _mm_sfence();
}

}  // namespace

void center_loss_grad_rows_f32_avx2(float* out, const int64_t* labels, const int64_t* n,
                                    const double* sgn, int64_t d, double g, int64_t i0, int64_t i1) {
  grad_rows_stream(out, labels, n, sgn, d, g, i0, i1);
}
void center_loss_grad_rows_f32_avx2(float* out, const int32_t* labels, const int64_t* n,
                                    const double* sgn, int64_t d, double g, int64_t i0, int64_t i1) {
  grad_rows_stream(out, labels, n, sgn, d, g, i0, i1);
}

void center_loss_rows_f32_avx2(const float* x, const int64_t* labels, const double* w, int64_t i0,
                               int64_t i1, int64_t d, double* acc) {
  weighted_rows(x, labels, w, i0, i1, d, acc);
}
void center_loss_rows_f32_avx2(const float* x, const int32_t* labels, const double* w, int64_t i0,
                               int64_t i1, int64_t d, double* acc) {
  weighted_rows(x, labels, w, i0, i1, d, acc);
}

#else  // not x86-64 with GCC/Clang: use_avx2() is false and these are never called

void center_loss_grad_rows_f32_avx2(float*, const int64_t*, const int64_t*, const double*, int64_t,
                                    double, int64_t, int64_t) {
  TORCH_CHECK(false, "center_loss_grad_rows_f32_avx2 is not compiled on this platform");
}
void center_loss_grad_rows_f32_avx2(float*, const int32_t*, const int64_t*, const double*, int64_t,
                                    double, int64_t, int64_t) {
  TORCH_CHECK(false, "center_loss_grad_rows_f32_avx2 is not compiled on this platform");
}

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
