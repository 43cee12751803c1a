// assign's GEMM tile (dist_tile_avx2, assign_avx2.cpp) with AVX-512 where the CPU has it: the
// same e and panel minima bit for bit, twice the lanes per instruction.
//
// Why: on the Xeons of issue 15 (2 FMA units of 16 lanes) the AVX2 tile ran at ~160 GFLOP/s
// on 2 cores at K = 1,000 (52% of the measured sgemm roofline) and FAISS's BLAS at ~185; the
// GEMM is also most of km.kmeans' first Lloyd pass. Every lane still forms its dot product as
// the AVX2 kernel does, one FMA per column in column order, and the epilogue is the same
// fnmadd and the same minimum tree over the two 8-lane halves, so the results do not depend
// on which kernel ran (the labels never do: they are exact either way, assign_cpu.cpp).
//
// Compiled for AVX-512F through the function target attribute (no -march flag), and used only
// after the runtime check of use_avx512(); KMGAN_EXT_CPU_NO_AVX512=1 keeps the AVX2 tile (to
// test it on such CPUs: tests/test_assign_avx512.py).
#include "assign_cpu.h"
#include "avx2_reduce.h"

#include <limits>
#include <tuple>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define KMGAN_HAVE_AVX512_KERNEL 1
#endif

namespace kmgan_ext {
namespace cpu {

#ifdef KMGAN_HAVE_AVX512_KERNEL

namespace {

#define KMGAN_AVX512 __attribute__((target("avx512f,avx2,fma")))

// One row of a panel pair: e = bias - 2 dot (one rounding, as finish_row in assign_avx2.cpp),
// stored, and the panel's minimum by hmin over the minimum of its two 8-lane halves.
// (GCC 12's -Wuninitialized flags the undefined pass-through operand inside its own
// _mm512_shuffle_f32x4: a false positive, silenced here only.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
KMGAN_AVX512 inline void finish_row16(__m512 acc, __m512 b, float* e, float* pmin) {
  const __m512 v = _mm512_fnmadd_ps(_mm512_set1_ps(2.0f), acc, b);
  _mm512_storeu_ps(e, v);
  // lanes 0-7: min(lanes j, lanes j + 8), the operands in _mm256_min_ps(lo, hi)'s order
  const __m512 m = _mm512_min_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(3, 2, 3, 2)));
  *pmin = hmin(_mm512_castps512_ps256(m));
}
#pragma GCC diagnostic pop

// 12 rows of x' against two panels of 16 centers: 24 accumulators + 2 center vectors + 1
// broadcast of the 32 zmm registers, named as in kernel_6x16 (assign_avx2.cpp says why).
KMGAN_AVX512 void kernel_12x32(const float* x, int64_t d, const float* panel, const float* bias, float* e,
                               int64_t lde, float* pmin, int64_t ldm) {
  const float* panel1 = panel + d * kPanel;
  __m512 a0l = _mm512_setzero_ps(), a0h = a0l, a1l = a0l, a1h = a0l, a2l = a0l, a2h = a0l, a3l = a0l,
         a3h = a0l, a4l = a0l, a4h = a0l, a5l = a0l, a5h = a0l, a6l = a0l, a6h = a0l, a7l = a0l, a7h = a0l,
         a8l = a0l, a8h = a0l, a9l = a0l, a9h = a0l, a10l = a0l, a10h = a0l, a11l = a0l, a11h = a0l;
  for (int64_t j = 0; j < d; ++j) {
    const __m512 bl = _mm512_loadu_ps(panel + j * kPanel);
    const __m512 bh = _mm512_loadu_ps(panel1 + j * kPanel);
#define KMGAN_ROW(i)                                   \
  {                                                    \
    const __m512 a = _mm512_set1_ps(x[(i) * d + j]);   \
    a##i##l = _mm512_fmadd_ps(a, bl, a##i##l);         \
    a##i##h = _mm512_fmadd_ps(a, bh, a##i##h);         \
  }
    KMGAN_ROW(0) KMGAN_ROW(1) KMGAN_ROW(2) KMGAN_ROW(3) KMGAN_ROW(4) KMGAN_ROW(5)
    KMGAN_ROW(6) KMGAN_ROW(7) KMGAN_ROW(8) KMGAN_ROW(9) KMGAN_ROW(10) KMGAN_ROW(11)
#undef KMGAN_ROW
  }
  const __m512 bl = _mm512_loadu_ps(bias), bh = _mm512_loadu_ps(bias + kPanel);
#define KMGAN_FINISH(i)                                                              \
  finish_row16(a##i##l, bl, e + (i) * lde, pmin + (i) * ldm);                        \
  finish_row16(a##i##h, bh, e + (i) * lde + kPanel, pmin + (i) * ldm + 1);
  KMGAN_FINISH(0) KMGAN_FINISH(1) KMGAN_FINISH(2) KMGAN_FINISH(3) KMGAN_FINISH(4) KMGAN_FINISH(5)
  KMGAN_FINISH(6) KMGAN_FINISH(7) KMGAN_FINISH(8) KMGAN_FINISH(9) KMGAN_FINISH(10) KMGAN_FINISH(11)
#undef KMGAN_FINISH
}

// The same for one panel (the odd last one): 12 accumulators.
KMGAN_AVX512 void kernel_12x16(const float* x, int64_t d, const float* panel, const float* bias, float* e,
                               int64_t lde, float* pmin, int64_t ldm) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0,
         a9 = a0, a10 = a0, a11 = a0;
  for (int64_t j = 0; j < d; ++j) {
    const __m512 b = _mm512_loadu_ps(panel + j * kPanel);
#define KMGAN_ROW(i) a##i = _mm512_fmadd_ps(_mm512_set1_ps(x[(i) * d + j]), b, a##i);
    KMGAN_ROW(0) KMGAN_ROW(1) KMGAN_ROW(2) KMGAN_ROW(3) KMGAN_ROW(4) KMGAN_ROW(5)
    KMGAN_ROW(6) KMGAN_ROW(7) KMGAN_ROW(8) KMGAN_ROW(9) KMGAN_ROW(10) KMGAN_ROW(11)
#undef KMGAN_ROW
  }
  const __m512 b = _mm512_loadu_ps(bias);
#define KMGAN_FINISH(i) finish_row16(a##i, b, e + (i) * lde, pmin + (i) * ldm);
  KMGAN_FINISH(0) KMGAN_FINISH(1) KMGAN_FINISH(2) KMGAN_FINISH(3) KMGAN_FINISH(4) KMGAN_FINISH(5)
  KMGAN_FINISH(6) KMGAN_FINISH(7) KMGAN_FINISH(8) KMGAN_FINISH(9) KMGAN_FINISH(10) KMGAN_FINISH(11)
#undef KMGAN_FINISH
}

#undef KMGAN_AVX512

bool avx512_available() {
  static const bool ok = avx2_kernels_available() && __builtin_cpu_supports("avx512f");
  return ok;
}

// dist_tile_avx2's arguments and results. Rows in twelves against panel pairs (and the odd
// last panel alone); the rows past the last twelve go to the AVX2 tile (the same bits).
void dist_tile_avx512(const float* x, int64_t rows, int64_t d, const float* packed, const float* bias,
                      int64_t panels, float* e, int64_t lde, float* pmin, int64_t ldm) {
  int64_t r = 0;
  for (; r + 12 <= rows; r += 12) {
    int64_t p = 0;
    for (; p + 2 <= panels; p += 2) {
      kernel_12x32(x + r * d, d, packed + p * d * kPanel, bias + p * kPanel, e + r * lde + p * kPanel, lde,
                   pmin + r * ldm + p, ldm);
    }
    if (p < panels) {
      kernel_12x16(x + r * d, d, packed + p * d * kPanel, bias + p * kPanel, e + r * lde + p * kPanel, lde,
                   pmin + r * ldm + p, ldm);
    }
  }
  if (r < rows) dist_tile_avx2(x + r * d, rows - r, d, packed, bias, panels, e + r * lde, lde, pmin + r * ldm, ldm);
}

}  // namespace

bool use_avx512() {
  static const bool use = use_avx2() && avx512_available() && not_switched_off("KMGAN_EXT_CPU_NO_AVX512");
  return use;
}

void dist_tile(const float* x, int64_t rows, int64_t d, const float* packed, const float* bias, int64_t panels,
               float* e, int64_t lde, float* pmin, int64_t ldm) {
  if (use_avx512()) {
    dist_tile_avx512(x, rows, d, packed, bias, panels, e, lde, pmin, ldm);
  } else {
    dist_tile_avx2(x, rows, d, packed, bias, panels, e, lde, pmin, ldm);
  }
}

namespace {

// dist_tile_native (csrc/kmgan_ext.cpp): the tile of float32 rows x (n, d) against centers c
// (K, d) with bias (K,), padded to whole panels as assign pads them (centers 0, bias +inf).
std::tuple<Tensor, Tensor> dist_tile_native(const Tensor& x_in, const Tensor& c_in, const Tensor& bias_in,
                                            bool avx512) {
  check_features("x", x_in);
  check_centers("centers", c_in, "x", x_in);
  TORCH_CHECK_TYPE(x_in.scalar_type() == at::kFloat, "x must be float32, got ", x_in.scalar_type());
  TORCH_CHECK_VALUE(bias_in.dim() == 1 && bias_in.size(0) == c_in.size(0) && bias_in.scalar_type() == at::kFloat,
                    "bias must be a float32 vector of one value per center");
  TORCH_CHECK(use_avx2(), "dist_tile_native needs the AVX2 kernels (use_avx2)");
  TORCH_CHECK(!avx512 || use_avx512(), "dist_tile_native: no AVX-512 kernel here (use_avx512)");
  const Tensor x = x_in.contiguous(), c = c_in.contiguous();
  const int64_t n = x.size(0), d = x.size(1), k = c.size(0), panels = (k + kPanel - 1) / kPanel;
  const std::vector<float> packed = pack_panels(c.data_ptr<float>(), k, d);
  std::vector<float> bias(bias_in.data_ptr<float>(), bias_in.data_ptr<float>() + k);
  bias.resize(panels * kPanel, std::numeric_limits<float>::infinity());
  Tensor e = at::empty({n, panels * kPanel}, x.options()), pmin = at::empty({n, panels}, x.options());
  (avx512 ? dist_tile_avx512 : dist_tile_avx2)(x.data_ptr<float>(), n, d, packed.data(), bias.data(), panels,
                                               e.data_ptr<float>(), panels * kPanel, pmin.data_ptr<float>(), panels);
  return {e, pmin};
}

}  // namespace

TORCH_LIBRARY_IMPL(kmgan_ext, CPU, m) { m.impl("dist_tile_native", &dist_tile_native); }

#else  // not x86-64 with GCC/Clang: no AVX2 tile either (assign uses at::mm)

bool use_avx512() { return false; }

void dist_tile(const float* x, int64_t rows, int64_t d, const float* packed, const float* bias, int64_t panels,
               float* e, int64_t lde, float* pmin, int64_t ldm) {
  dist_tile_avx2(x, rows, d, packed, bias, panels, e, lde, pmin, ldm);
}

#endif

}  // namespace cpu
}  // namespace kmgan_ext
