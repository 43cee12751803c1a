// Greedy k-means++ on CPU (km.kmeans_plusplus, backend "cpu"; docs/ops.md, Seeding): the same draws
// as the torch loop (kmgan_ext/seeding/kmeans_plusplus.py), at most one pass over x per center.
//
// The torch loop reads x twice per center, or keeps an (N, trials) block of the candidates'
// distances, because the running minimum can only take the chosen candidate's column once
// every candidate's potential is summed. Here the pass for center j does both jobs at once:
// each row's dot products with the trials candidates of center j AND with the center chosen
// at j - 1 (one more column of the same small GEMM), so it first folds center j - 1 into the
// running minimum and then evaluates center j's candidates against it. The draws for center
// j + 1 need the cumulative sum of the potential terms of center j's winner before that
// winner is folded in: they use the per-tile sums the pass wrote (float64), find the tile a
// draw lands in, and recompute that one tile's terms (the same code, so the same bits).
//
// Exactness: the cumulative sum of the draws is offset_T + (sum of the tile's terms from its
// first row), offset_T the sum of the earlier tiles' sums, all in float64: monotone, equal
// to the total at the end, and within a few float64 ulps of the torch loop's sequential
// cumsum (a draw can differ only where u * total falls within ~1e-16 relative of a row's
// boundary). Potentials are float64 sums of the compute-dtype terms w_i min(D_i, d2_it),
// tiles combined in tile order: their error does not grow with N, and the result is the
// same for any thread count. Distances are the torch loop's matmul form,
// (||x_i||^2 - 2 x_i . c) + ||c||^2 clamped to [0, D_i], in the compute dtype.
//
// Rows a pass cannot change are not read. Row i's D_i was formed against a center a_i; with
// e_i a bound on the rounding error of any matmul-form distance of row i, the exact
// ||x_i - a_i|| is at most sqrt(D_i + e_i). A column c (a candidate or the pending winner)
// with ||c - a_i|| >= 2 sqrt(D_i + e_i) is then, by the triangle inequality, at least
// sqrt(D_i + e_i) from x_i, so its computed distance is at least D_i and min(D_i, d2_ic) is
// D_i. When that holds for every column of the pass (the least column distance to each
// center is formed once per pass, in float64 from the differences, with a margin for its
// rounding), the pass adds the row's terms w_i D_i without its dot products: the same
// values in the same order, so the same bits as reading it. On clustered data the rows of
// clusters far from every column are skipped (10 blobs, K = 100: about half of them).
#include "common.h"
#include "prefetch.h"

#include <cmath>
#include <limits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define KMGAN_KPP_AVX2 1
#endif

namespace kmgan_ext {
namespace cpu {
namespace {

// Columns per packed panel of candidates (one ymm of float).
constexpr int64_t kLanes = 8;
// Rows per tile: the unit of the per-tile sums, of a parallel task and of the recomputation
// a draw costs (256 rows x d x one center).
constexpr int64_t kTileRows = 256;

// ----------------------------------------------------------------------------- dot products
// out[r * P + l] = x_r . panel column l for rows r < rows, panels of kLanes columns packed as
// panel[p][j][l], P = panels * kLanes. Every (row, column) product is accumulated over j in
// index order in one lane, whatever the row's position in the block and the column's in the
// panel: a tile recomputed for a draw gets the same bits as in the pass.
template <typename T>
void panel_dots_portable(const T* const* x, int64_t rows, int64_t d, const T* packed, int64_t panels,
                         T* out) {
  const int64_t width = panels * kLanes;
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x[r];
    for (int64_t p = 0; p < panels; ++p) {
      const T* panel = packed + p * d * kLanes;
      T acc[kLanes] = {};
      for (int64_t j = 0; j < d; ++j) {
        const T xv = xr[j];
        const T* pj = panel + j * kLanes;
#pragma omp simd
        for (int64_t l = 0; l < kLanes; ++l) acc[l] += xv * pj[l];
      }
      for (int64_t l = 0; l < kLanes; ++l) out[r * width + p * kLanes + l] = acc[l];
    }
  }
}

#ifdef KMGAN_KPP_AVX2
#define KMGAN_AVX2 __attribute__((target("avx2,fma")))

// Rows a pass skips (the skip test below) leave gaps in the stream of rows it reads; the
// hardware prefetcher stops following such a stream, so the kernels ask for the rows
// kPrefetchRows ahead themselves.
constexpr int64_t kPrefetchRows = 16;
template <typename T>
inline void prefetch_rows(const T* const* x, int64_t r0, int64_t r1, int64_t d) {
  for (int64_t r = r0; r < r1; ++r) prefetch_range(x[r], x[r] + d);
}

// 8 rows x 8 float columns per step: 8 accumulators, the panel row and a broadcast.
KMGAN_AVX2 void panel_dots_f32_avx2(const float* const* x, int64_t rows, int64_t d,
                                    const float* packed, int64_t panels, float* out) {
  const int64_t width = panels * kLanes;
  int64_t r = 0;
  for (; r + 8 <= rows; r += 8) {
    prefetch_rows(x, r + kPrefetchRows, std::min(rows, r + kPrefetchRows + 8), d);
    const float *x0 = x[r], *x1 = x[r + 1], *x2 = x[r + 2], *x3 = x[r + 3], *x4 = x[r + 4],
                *x5 = x[r + 5], *x6 = x[r + 6], *x7 = x[r + 7];
    for (int64_t p = 0; p < panels; ++p) {
      const float* panel = packed + p * d * kLanes;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
      for (int64_t j = 0; j < d; ++j) {
        const __m256 b = _mm256_loadu_ps(panel + j * kLanes);
        a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(x0 + j), b, a0);
        a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(x1 + j), b, a1);
        a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(x2 + j), b, a2);
        a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(x3 + j), b, a3);
        a4 = _mm256_fmadd_ps(_mm256_broadcast_ss(x4 + j), b, a4);
        a5 = _mm256_fmadd_ps(_mm256_broadcast_ss(x5 + j), b, a5);
        a6 = _mm256_fmadd_ps(_mm256_broadcast_ss(x6 + j), b, a6);
        a7 = _mm256_fmadd_ps(_mm256_broadcast_ss(x7 + j), b, a7);
      }
      float* o = out + r * width + p * kLanes;
      _mm256_storeu_ps(o, a0);
      _mm256_storeu_ps(o + width, a1);
      _mm256_storeu_ps(o + 2 * width, a2);
      _mm256_storeu_ps(o + 3 * width, a3);
      _mm256_storeu_ps(o + 4 * width, a4);
      _mm256_storeu_ps(o + 5 * width, a5);
      _mm256_storeu_ps(o + 6 * width, a6);
      _mm256_storeu_ps(o + 7 * width, a7);
    }
  }
  for (; r < rows; ++r) {  // the same per-lane sequence, one row at a time
    const float* xr = x[r];
    for (int64_t p = 0; p < panels; ++p) {
      const float* panel = packed + p * d * kLanes;
      __m256 a = _mm256_setzero_ps();
      for (int64_t j = 0; j < d; ++j) {
        a = _mm256_fmadd_ps(_mm256_broadcast_ss(xr + j), _mm256_loadu_ps(panel + j * kLanes), a);
      }
      _mm256_storeu_ps(out + r * width + p * kLanes, a);
    }
  }
}

// 4 rows x 8 double columns (two ymm each) per step.
KMGAN_AVX2 void panel_dots_f64_avx2(const double* const* x, int64_t rows, int64_t d,
                                    const double* packed, int64_t panels, double* out) {
  const int64_t width = panels * kLanes;
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    prefetch_rows(x, r + kPrefetchRows, std::min(rows, r + kPrefetchRows + 4), d);
    const double *x0 = x[r], *x1 = x[r + 1], *x2 = x[r + 2], *x3 = x[r + 3];
    for (int64_t p = 0; p < panels; ++p) {
      const double* panel = packed + p * d * kLanes;
      __m256d a0l = _mm256_setzero_pd(), a0h = a0l, a1l = a0l, a1h = a0l, a2l = a0l, a2h = a0l,
              a3l = a0l, a3h = a0l;
      for (int64_t j = 0; j < d; ++j) {
        const __m256d bl = _mm256_loadu_pd(panel + j * kLanes);
        const __m256d bh = _mm256_loadu_pd(panel + j * kLanes + 4);
#define KMGAN_ROW(i)                                          \
  {                                                           \
    const __m256d a = _mm256_broadcast_sd(x##i + j);          \
    a##i##l = _mm256_fmadd_pd(a, bl, a##i##l);                \
    a##i##h = _mm256_fmadd_pd(a, bh, a##i##h);                \
  }
        KMGAN_ROW(0) KMGAN_ROW(1) KMGAN_ROW(2) KMGAN_ROW(3)
#undef KMGAN_ROW
      }
      double* o = out + r * width + p * kLanes;
      _mm256_storeu_pd(o, a0l), _mm256_storeu_pd(o + 4, a0h);
      _mm256_storeu_pd(o + width, a1l), _mm256_storeu_pd(o + width + 4, a1h);
      _mm256_storeu_pd(o + 2 * width, a2l), _mm256_storeu_pd(o + 2 * width + 4, a2h);
      _mm256_storeu_pd(o + 3 * width, a3l), _mm256_storeu_pd(o + 3 * width + 4, a3h);
    }
  }
  for (; r < rows; ++r) {
    const double* xr = x[r];
    for (int64_t p = 0; p < panels; ++p) {
      const double* panel = packed + p * d * kLanes;
      __m256d al = _mm256_setzero_pd(), ah = al;
      for (int64_t j = 0; j < d; ++j) {
        const __m256d a = _mm256_broadcast_sd(xr + j);
        al = _mm256_fmadd_pd(a, _mm256_loadu_pd(panel + j * kLanes), al);
        ah = _mm256_fmadd_pd(a, _mm256_loadu_pd(panel + j * kLanes + 4), ah);
      }
      _mm256_storeu_pd(out + r * width + p * kLanes, al);
      _mm256_storeu_pd(out + r * width + p * kLanes + 4, ah);
    }
  }
}
// ||v||^2 as panel_dots forms x . x in one lane (an FMA chain over j in index order), so that
// a row equal to a center gets (||x||^2 - 2 x.x) + ||x||^2 = 0 exactly, as the torch loop does.
template <typename T>
KMGAN_AVX2 T norm2_fma(const T* v, int64_t d) {
  T s = 0;
  for (int64_t j = 0; j < d; ++j) s = __builtin_fma(v[j], v[j], s);
  return s;
}
template <>
KMGAN_AVX2 float norm2_fma<float>(const float* v, int64_t d) {
  float s = 0;
  for (int64_t j = 0; j < d; ++j) s = __builtin_fmaf(v[j], v[j], s);
  return s;
}
#undef KMGAN_AVX2
#endif

// One choice per process (the CPU does not change), so the pass and every recomputation
// run the same code. KMGAN_EXT_CPU_NO_AVX2=1 asks for the portable path, as in assign.
bool kpp_use_avx2() {
#ifdef KMGAN_KPP_AVX2
  return use_avx2();
#else
  return false;
#endif
}

template <typename T>
void panel_dots(const T* const* x, int64_t rows, int64_t d, const T* packed, int64_t panels, T* out) {
#ifdef KMGAN_KPP_AVX2
  if (kpp_use_avx2()) {
    if constexpr (std::is_same<T, float>::value) {
      panel_dots_f32_avx2(x, rows, d, packed, panels, out);
      return;
    } else {
      panel_dots_f64_avx2(x, rows, d, packed, panels, out);
      return;
    }
  }
#endif
  panel_dots_portable(x, rows, d, packed, panels, out);
}

// ||v||^2 in the compute dtype with the arithmetic of panel_dots' lanes (see norm2_fma).
template <typename T>
T norm2(const T* v, int64_t d) {
#ifdef KMGAN_KPP_AVX2
  if (kpp_use_avx2()) return norm2_fma(v, d);
#endif
  T s = 0;
  for (int64_t j = 0; j < d; ++j) s += v[j] * v[j];
  return s;
}

// ----------------------------------------------------------------------------- the loop
// The columns of one pass: rows of x (by index) packed into panels, with their norms.
template <typename T>
struct Columns {
  int64_t count = 0, panels = 0;
  std::vector<T> packed;  // panels x d x kLanes, zero past count
  std::vector<T> sq;      // (count,)

  void set(const T* x, int64_t d, const int64_t* rows, int64_t m) {
    count = m;
    panels = (m + kLanes - 1) / kLanes;
    packed.assign(static_cast<size_t>(panels * d * kLanes), T(0));
    sq.resize(m);
    for (int64_t q = 0; q < m; ++q) {
      const T* src = x + rows[q] * d;
      T* dst = packed.data() + (q / kLanes) * d * kLanes + q % kLanes;
      for (int64_t j = 0; j < d; ++j) dst[j * kLanes] = src[j];
      sq[q] = norm2(src, d);
    }
  }
};

// The squared distance of the matmul form, clamped at 0 as the torch loop clamps it.
template <typename T>
inline T form_d2(T row_sq, T dot, T col_sq) {
  const T v = (row_sq - T(2) * dot) + col_sq;
  return v < T(0) ? T(0) : v;
}

// ||a - b||^2 of two rows of x, in float64 from the differences (relative error under
// (d + 2) 2^-53, where the matmul form's is relative to the norms).
template <typename T>
double diff_d2(const T* a, const T* b, int64_t d) {
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
  int64_t j = 0;
  for (; j + 4 <= d; j += 4) {
    const double e0 = double(a[j]) - double(b[j]), e1 = double(a[j + 1]) - double(b[j + 1]);
    const double e2 = double(a[j + 2]) - double(b[j + 2]), e3 = double(a[j + 3]) - double(b[j + 3]);
    s0 += e0 * e0, s1 += e1 * e1, s2 += e2 * e2, s3 += e3 * e3;
  }
  for (; j < d; ++j) {
    const double e = double(a[j]) - double(b[j]);
    s0 += e * e;
  }
  return (s0 + s1) + (s2 + s3);
}

// Pointers to the rows [r0, r0 + nr) of x.
template <typename T>
void row_pointers(const T* x, int64_t d, int64_t r0, int64_t nr, std::vector<const T*>& out) {
  out.resize(static_cast<size_t>(nr));
  for (int64_t r = 0; r < nr; ++r) out[r] = x + (r0 + r) * d;
}

template <typename T>
struct Seeder {
  const T* x;
  const T* w;  // (n,) or nullptr
  int64_t n, d, tiles, grain;
  std::vector<T> sq, closest;
  // Per-tile float64 sums of the potential terms of every candidate of the last pass:
  // tiles x cand_count, row major.
  std::vector<double> part;
  Columns<T> cols;       // [pending winner of the previous center,] the candidates
  Columns<T> one;        // a single column: the pending winner, for the draws' recomputation
  int64_t pending = -1;  // row index of the winner not yet folded into `closest`, or -1

  // The skip test (see the header). folded: the rows of x folded into `closest`, in order;
  // near_i: the slot in `folded` of the center closest_i was formed against; reach_i:
  // 4 (closest_i + e_i), e_i bounding the rounding error of any matmul-form distance of row i.
  std::vector<int64_t> folded;
  std::vector<int32_t> near;
  std::vector<double> reach;
  // e_i = err_scale (||x_i|| + norm_max)^2 + err_floor (norm_max: the largest norm of a row).
  double err_scale = 0.0, err_floor = 0.0, norm_max = 0.0;
  // Per folded center a: a lower bound on min over the pass's columns c of ||c - a||^2.
  std::vector<double> far2;
  bool skip;                // whether passes use the skip test (False: every row is read)
  int64_t rows_read = 0;    // rows whose dot products the passes formed, the first pass's too

  Seeder(const T* x_, const T* w_, int64_t n_, int64_t d_, bool skip_)
      : x(x_), w(w_), n(n_), d(d_), tiles((n_ + kTileRows - 1) / kTileRows), skip(skip_) {
    // At least ~64k multiply-adds per task: small problems stay on one thread.
    grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, kTileRows * d * kLanes));
    sq.resize(n);
    closest.resize(n);
    near.resize(n);
    reach.resize(n);
    // A d-term dot product or sum of squares (FMA chain or not) errs by at most
    // gamma_d = d u / (1 - d u) of the sum of |terms|; the form (||x||^2 - 2 x.c) + ||c||^2
    // adds two roundings. Its error is under (d + 3) u (||x|| + ||c||)^2 with ||x|| and ||c||
    // the exact norms: twice that covers the norms taken from the computed squares and
    // gamma_d's denominator. err_floor covers underflow (d + 3 operations, each off by at
    // most half the least subnormal, far under the least normal).
    const double u = std::numeric_limits<T>::epsilon() / 2;
    err_scale = 2.0 * static_cast<double>(d + 8) * u;
    err_floor = static_cast<double>(d + 8) * static_cast<double>(std::numeric_limits<T>::min());
  }

  inline double term(int64_t i, T dist) const {
    return static_cast<double>(w == nullptr ? dist : static_cast<T>(w[i] * dist));
  }

  // 4 (c + e_i) for row i at computed distance c from its nearest folded center. Evaluated
  // in float64; the margin on far2 covers its rounding. Inf (never skipped) when the norms
  // overflow.
  inline double reach_of(int64_t i, T c) const {
    const double r = std::sqrt(static_cast<double>(sq[i])) + norm_max;
    return 4.0 * (static_cast<double>(c) + (err_scale * r * r + err_floor));
  }

  // far2[a] for every folded center a against the columns `rows` of this pass.
  void set_far2(const std::vector<int64_t>& rows) {
    const int64_t m = static_cast<int64_t>(folded.size());
    far2.assign(static_cast<size_t>(m), std::numeric_limits<double>::infinity());
    // diff_d2's relative error, and reach_of's (a few float64 roundings), with room to spare.
    const double keep = 1.0 - static_cast<double>(4 * d + 64) * std::ldexp(1.0, -53);
    at::parallel_for(0, m, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, d * int64_t(rows.size()))),
                     [&](int64_t a0, int64_t a1) {
                       for (int64_t a = a0; a < a1; ++a) {
                         const T* ca = x + folded[a] * d;
                         double lo = std::numeric_limits<double>::infinity();
                         for (int64_t c : rows) lo = std::min(lo, diff_d2(x + c * d, ca, d));
                         far2[a] = lo * keep;
                       }
                     });
  }

  // closest_i = d2(x_i, x_first); part = tile sums of the terms. False if x holds NaN/Inf.
  bool first_pass(int64_t first) {
    one.set(x, d, &first, 1);
    part.assign(static_cast<size_t>(tiles), 0.0);
    std::vector<char> ok(static_cast<size_t>(tiles), 1);
    at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
      std::vector<T> dots(kTileRows * kLanes);
      std::vector<const T*> ptr;
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r0 = t * kTileRows, nr = std::min(kTileRows, n - r0);
        const T* xt = x + r0 * d;
        bool finite = true;
        for (int64_t e = 0; e < nr * d; ++e) finite &= std::isfinite(xt[e]);
        ok[t] = finite;
        row_pointers(x, d, r0, nr, ptr);
        panel_dots(ptr.data(), nr, d, one.packed.data(), 1, dots.data());
        double s = 0.0;
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t i = r0 + r;
          sq[i] = norm2(x + i * d, d);
          closest[i] = form_d2(sq[i], dots[r * kLanes], one.sq[0]);
          s += term(i, closest[i]);
        }
        part[t] = s;
      }
    });
    for (char f : ok)
      if (!f) return false;
    T sq_max = 0;
    for (T v : sq) sq_max = std::max(sq_max, v);
    norm_max = std::sqrt(static_cast<double>(sq_max));
    folded.assign(1, first);
    rows_read = n;
    at::parallel_for(0, n, 4096, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        near[i] = 0;
        reach[i] = reach_of(i, closest[i]);
      }
    });
    return true;
  }

  // The terms of one tile under the current draw distribution: w_i min(closest_i, d2 to the
  // pending winner), exactly as the pass that summed them formed them.
  void tile_terms(int64_t t, std::vector<T>& dots, std::vector<double>& out) const {
    const int64_t r0 = t * kTileRows, nr = std::min(kTileRows, n - r0);
    out.resize(nr);
    if (pending < 0) {
      for (int64_t r = 0; r < nr; ++r) out[r] = term(r0 + r, closest[r0 + r]);
      return;
    }
    std::vector<const T*> ptr;
    row_pointers(x, d, r0, nr, ptr);
    panel_dots(ptr.data(), nr, d, one.packed.data(), 1, dots.data());
    for (int64_t r = 0; r < nr; ++r) {
      const int64_t i = r0 + r;
      const T v = form_d2(sq[i], dots[r * kLanes], one.sq[0]);
      out[r] = term(i, v < closest[i] ? v : closest[i]);
    }
  }

  // Draws `trials` candidates: the first row whose cumulative term sum reaches u * total.
  // `sums` (tiles,) are the tile sums of the current distribution.
  void draw(const double* u, int64_t trials, const std::vector<double>& sums, int64_t* cand) const {
    std::vector<double> end(tiles);
    double acc = 0.0;
    for (int64_t t = 0; t < tiles; ++t) end[t] = acc = acc + sums[t];
    const double total = acc;
    std::vector<T> dots(kTileRows * kLanes);
    std::vector<double> terms;
    for (int64_t q = 0; q < trials; ++q) {
      const double v = u[q] * total;
      const int64_t t = std::lower_bound(end.begin(), end.end(), v) - end.begin();
      if (t == tiles) {  // only past the total (NaN): torch's searchsorted + clamp
        cand[q] = n - 1;
        continue;
      }
      const double start = t == 0 ? 0.0 : end[t - 1];
      tile_terms(t, dots, terms);
      const int64_t r0 = t * kTileRows, nr = static_cast<int64_t>(terms.size());
      int64_t pick = r0 + nr - 1;
      double prefix = 0.0;
      for (int64_t r = 0; r < nr; ++r) {
        prefix += terms[r];
        if (start + prefix >= v) {
          pick = r0 + r;
          break;
        }
      }
      cand[q] = pick;
    }
  }

  // One pass: fold the pending winner into closest, then each candidate's per-tile sums of
  // w_i min(closest_i, d2_iq). Returns the first candidate of least potential. A row that the
  // skip test proves no column can come nearer to is not read: its terms are closest_i, as
  // the comparison would have left them, added in the same order.
  int64_t evaluate(const int64_t* cand, int64_t trials, std::vector<double>& pot) {
    const int64_t off = pending >= 0 ? 1 : 0;
    std::vector<int64_t> rows(static_cast<size_t>(trials + off));
    if (off) rows[0] = pending;
    for (int64_t q = 0; q < trials; ++q) rows[off + q] = cand[q];
    cols.set(x, d, rows.data(), trials + off);
    set_far2(rows);
    const int32_t slot = static_cast<int32_t>(folded.size());  // the pending winner's
    const int64_t width = cols.panels * kLanes;
    part.assign(static_cast<size_t>(tiles * trials), 0.0);
    std::vector<int64_t> read_in_tile(static_cast<size_t>(tiles));
    at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
      std::vector<T> dots(kTileRows * width);
      std::vector<double> s(trials);
      std::vector<const T*> ptr(kTileRows);
      std::vector<char> read(kTileRows);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r0 = t * kTileRows, nr = std::min(kTileRows, n - r0);
        int64_t m = 0;
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t i = r0 + r;
          // Not (far2 <= reach): NaN or an overflowed reach reads the row.
          read[r] = !skip || !(far2[near[i]] > reach[i]);
          if (read[r]) ptr[m++] = x + i * d;
        }
        read_in_tile[t] = m;
        panel_dots(ptr.data(), m, d, cols.packed.data(), cols.panels, dots.data());
        std::fill(s.begin(), s.end(), 0.0);
        const T* dr = dots.data();
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t i = r0 + r;
          T ci = closest[i];
          if (!read[r]) {
            const double v = term(i, ci);
            for (int64_t q = 0; q < trials; ++q) s[q] += v;
            continue;
          }
          if (off) {
            const T v = form_d2(sq[i], dr[0], cols.sq[0]);
            if (v < ci) {
              closest[i] = ci = v;
              near[i] = slot;
              reach[i] = reach_of(i, v);
            }
          }
          for (int64_t q = 0; q < trials; ++q) {
            const T v = form_d2(sq[i], dr[off + q], cols.sq[off + q]);
            s[q] += term(i, v < ci ? v : ci);
          }
          dr += width;
        }
        std::copy(s.begin(), s.end(), part.begin() + t * trials);
      }
    });
    if (off) folded.push_back(pending);
    for (int64_t m : read_in_tile) rows_read += m;
    pot.assign(trials, 0.0);
    for (int64_t t = 0; t < tiles; ++t)
      for (int64_t q = 0; q < trials; ++q) pot[q] += part[t * trials + q];
    int64_t best = 0;  // the first minimum, as torch.argmin / numpy's argmin
    for (int64_t q = 1; q < trials; ++q)
      if (pot[q] < pot[best]) best = q;
    return best;
  }
};

template <typename T>
double seed_loop(const T* x, const T* w, int64_t n, int64_t d, const double* u, int64_t k,
                 int64_t trials, int64_t first, bool skip, int64_t* indices, bool& finite,
                 int64_t& rows_read) {
  Seeder<T> s(x, w, n, d, skip);
  indices[0] = first;
  finite = s.first_pass(first);
  if (!finite) return std::numeric_limits<double>::quiet_NaN();
  std::vector<double> sums = s.part, pot;
  double potential = 0.0;
  for (double v : sums) potential += v;
  std::vector<int64_t> cand(trials);
  for (int64_t j = 1; j < k; ++j) {
    s.draw(u + j * trials, trials, sums, cand.data());
    const int64_t best = s.evaluate(cand.data(), trials, pot);
    indices[j] = cand[best];
    potential = pot[best];
    for (int64_t t = 0; t < s.tiles; ++t) sums[t] = s.part[t * trials + best];
    s.pending = cand[best];
    s.one.set(x, d, &s.pending, 1);
  }
  rows_read = s.rows_read;
  return potential;
}

// (indices (k,) int64, potential float64 0-d, finite bool 0-d, rows_read int64 0-d). x (N, d)
// float32/float64; weights (N,) of x's dtype or None; u (k, trials) float64
// (kmeans_plusplus.uniforms); first the index of the first center; skip: whether passes leave
// out the rows they cannot change (the same answer either way; False is for the tests that
// show it). rows_read: the rows whose distances the passes formed, the first pass's N
// included (at most k N). When x holds NaN/Inf, finite is False and nothing else is
// meaningful.
std::tuple<Tensor, Tensor, Tensor, Tensor> kmeans_plusplus_native(
    const Tensor& x_in, const c10::optional<Tensor>& weights_in, const Tensor& u_in, int64_t first,
    bool skip) {
  check_features("x", x_in);
  TORCH_CHECK_TYPE(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble,
                   "x must be float32 or float64, got ", x_in.scalar_type());
  const int64_t n = x_in.size(0), d = x_in.size(1);
  TORCH_CHECK_VALUE(n >= 1 && d >= 1, "x must have at least one row and one column, got shape ",
                    x_in.sizes());
  check_cpu("u", u_in);
  TORCH_CHECK_TYPE(u_in.scalar_type() == at::kDouble, "u must be float64, got ", u_in.scalar_type());
  TORCH_CHECK_VALUE(u_in.dim() == 2 && u_in.size(0) >= 1 && u_in.size(1) >= 1,
                    "u must have shape (k, trials) with k, trials >= 1, got ", u_in.sizes());
  const int64_t k = u_in.size(0), trials = u_in.size(1);
  TORCH_CHECK_VALUE(k <= n, "k (u.shape[0] = ", k, ") must be <= the number of rows of x (", n, ")");
  TORCH_CHECK_VALUE(first >= 0 && first < n, "first must lie in [0, ", n, "), got ", first);
  // Seeder::near holds a center's slot in int32 (half the bytes per row of an int64).
  TORCH_CHECK_VALUE(k <= std::numeric_limits<int32_t>::max(), "k (u.shape[0] = ", k,
                    ") must be < 2^31");
  const Tensor x = x_in.contiguous(), u = u_in.contiguous();
  Tensor w;
  if (weights_in.has_value() && weights_in->defined()) {
    check_cpu("weights", *weights_in);
    TORCH_CHECK_TYPE(weights_in->scalar_type() == x.scalar_type(), "weights must have dtype ",
                     x.scalar_type(), " (as x), got ", weights_in->scalar_type());
    TORCH_CHECK_VALUE(weights_in->dim() == 1 && weights_in->size(0) == n,
                      "weights must have shape (", n, ",), got ", weights_in->sizes());
    w = weights_in->contiguous();
  }
  Tensor indices = at::empty({k}, x.options().dtype(at::kLong));
  double potential = 0.0;
  bool finite = true;
  int64_t rows_read = 0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "kmeans_plusplus_native", [&] {
    potential = seed_loop<scalar_t>(x.data_ptr<scalar_t>(), w.defined() ? w.data_ptr<scalar_t>() : nullptr,
                                    n, d, u.data_ptr<double>(), k, trials, first, skip,
                                    indices.data_ptr<int64_t>(), finite, rows_read);
  });
  return {indices, at::full({}, potential, x.options().dtype(at::kDouble)),
          at::full({}, finite, x.options().dtype(at::kBool)),
          at::full({}, rows_read, x.options().dtype(at::kLong))};
}

}  // namespace

TORCH_LIBRARY_IMPL(kmgan_ext, CPU, m) { m.impl("kmeans_plusplus_native", &kmeans_plusplus_native); }

}  // namespace cpu
}  // namespace kmgan_ext
