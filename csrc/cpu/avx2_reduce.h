// Horizontal reductions of one __m256, shared by the AVX2 + FMA kernels (assign_avx2.cpp,
// assign_small_k.cpp, lloyd_elkan.cpp). Compiled with the target attribute, as those kernels
// are, so no file needs -mavx2 and the caller checks the CPU before it runs them.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

namespace kmgan_ext {
namespace cpu {

// Sum of the 8 lanes.
__attribute__((target("avx2,fma"))) inline float hsum(__m256 v) {
  __m128 m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_add_ps(m, _mm_movehl_ps(m, m));
  m = _mm_add_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

// Smallest of the 8 lanes.
__attribute__((target("avx2,fma"))) inline float hmin(__m256 v) {
  __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_min_ps(m, _mm_movehl_ps(m, m));
  m = _mm_min_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

}  // namespace cpu
}  // namespace kmgan_ext
#endif
