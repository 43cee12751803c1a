// The float32 dot-product tile of assign on x86-64 CPUs with AVX2 + FMA.
//
// Only this file's functions are compiled for AVX2/FMA (function target attributes, not a
// -march flag), and assign calls them only after a runtime CPU check, so the extension still
// loads and runs on any x86-64 CPU (and builds elsewhere, where dot_tile_avx2_available() is
// false and assign uses at::mm).
//
// Why not at::mm: for assign's skinny shapes (tile rows x d x K block) MKL on this AMD EPYC
// (Zen 3) ran at 45-55 GFLOP/s per core in CPU time against a measured FMA peak of 83-93,
// and each call pays the dispatcher. Whole assign, N = 100k, d = 100, one thread, float32,
// best CPU time of 3 x 7 runs: K = 10 17.7 ms vs 26.2 ms with at::mm tiles
// (KMGAN_EXT_CPU_NO_AVX2=1), K = 100 42.8 vs 47.0, K = 1000 287 vs 305.
#include "assign_cpu.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define KMGAN_HAVE_AVX2_KERNEL 1
#endif

namespace kmgan_ext {
namespace cpu {

#ifdef KMGAN_HAVE_AVX2_KERNEL

bool dot_tile_avx2_available() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

namespace {

// out[i, 0:16] = x_i . panel for 6 rows of x against one panel of 16 centers: 12 accumulators
// + 2 center vectors + 1 broadcast = 15 of the 16 ymm registers. The accumulators are named
// variables: GCC 12 keeps an array of __m256 in registers but also stores it to the stack
// on every iteration, which made the kernel 2.5x slower than at::mm.
__attribute__((target("avx2,fma"))) inline void kernel_6x16(const float* x, int64_t d,
                                                             const float* panel, float* out,
                                                             int64_t ldo) {
  __m256 a0l = _mm256_setzero_ps(), a0h = a0l, a1l = a0l, a1h = a0l, a2l = a0l, a2h = a0l;
  __m256 a3l = a0l, a3h = a0l, a4l = a0l, a4h = a0l, a5l = a0l, a5h = a0l;
  const float *x0 = x, *x1 = x + d, *x2 = x + 2 * d, *x3 = x + 3 * d, *x4 = x + 4 * d, *x5 = x + 5 * d;
  for (int64_t j = 0; j < d; ++j) {
    const __m256 bl = _mm256_loadu_ps(panel + j * kPanel);
    const __m256 bh = _mm256_loadu_ps(panel + j * kPanel + 8);
#define KMGAN_ROW(i)                                  \
  {                                                   \
    const __m256 a = _mm256_broadcast_ss(x##i + j);   \
    a##i##l = _mm256_fmadd_ps(a, bl, a##i##l);        \
    a##i##h = _mm256_fmadd_ps(a, bh, a##i##h);        \
  }
    KMGAN_ROW(0) KMGAN_ROW(1) KMGAN_ROW(2) KMGAN_ROW(3) KMGAN_ROW(4) KMGAN_ROW(5)
#undef KMGAN_ROW
  }
#define KMGAN_STORE(i)                                   \
  _mm256_storeu_ps(out + i * ldo, a##i##l);              \
  _mm256_storeu_ps(out + i * ldo + 8, a##i##h);
  KMGAN_STORE(0) KMGAN_STORE(1) KMGAN_STORE(2) KMGAN_STORE(3) KMGAN_STORE(4) KMGAN_STORE(5)
#undef KMGAN_STORE
}

// One row against one panel (the last rows % 6 of a tile).
__attribute__((target("avx2,fma"))) inline void kernel_1x16(const float* x, int64_t d,
                                                             const float* panel, float* out) {
  __m256 lo = _mm256_setzero_ps(), hi = lo;
  for (int64_t j = 0; j < d; ++j) {
    const __m256 a = _mm256_broadcast_ss(x + j);
    lo = _mm256_fmadd_ps(a, _mm256_loadu_ps(panel + j * kPanel), lo);
    hi = _mm256_fmadd_ps(a, _mm256_loadu_ps(panel + j * kPanel + 8), hi);
  }
  _mm256_storeu_ps(out, lo);
  _mm256_storeu_ps(out + 8, hi);
}

}  // namespace

__attribute__((target("avx2,fma"))) void dot_tile_avx2(const float* x, int64_t rows, int64_t d,
                                                        const float* packed, int64_t panels,
                                                        float* out, int64_t ldo) {
  int64_t r = 0;
  for (; r + 6 <= rows; r += 6) {
    for (int64_t p = 0; p < panels; ++p) {
      kernel_6x16(x + r * d, d, packed + p * d * kPanel, out + r * ldo + p * kPanel, ldo);
    }
  }
  for (; r < rows; ++r) {
    for (int64_t p = 0; p < panels; ++p) {
      kernel_1x16(x + r * d, d, packed + p * d * kPanel, out + r * ldo + p * kPanel);
    }
  }
}

#else  // not x86-64 with GCC/Clang: assign uses at::mm

bool dot_tile_avx2_available() { return false; }

void dot_tile_avx2(const float*, int64_t, int64_t, const float*, int64_t, float*, int64_t) {
  TORCH_CHECK(false, "dot_tile_avx2 is not compiled on this platform");
}

#endif

}  // namespace cpu
}  // namespace kmgan_ext
