// Greedy k-means++ on CPU (km.kmeans_plusplus, backend "cpu"; docs/ops.md, Seeding): the same draws
// as the torch loop (kmgan_ext/seeding/kmeans_plusplus.py), one pass over x per center.
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
#include "common.h"

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
void panel_dots_portable(const T* x, int64_t rows, int64_t d, const T* packed, int64_t panels,
                         T* out) {
  const int64_t width = panels * kLanes;
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * d;
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

// 8 rows x 8 float columns per step: 8 accumulators, the panel row and a broadcast.
KMGAN_AVX2 void panel_dots_f32_avx2(const float* x, int64_t rows, int64_t d, const float* packed,
                                    int64_t panels, float* out) {
  const int64_t width = panels * kLanes;
  int64_t r = 0;
  for (; r + 8 <= rows; r += 8) {
    const float* x0 = x + r * d;
    for (int64_t p = 0; p < panels; ++p) {
      const float* panel = packed + p * d * kLanes;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
      for (int64_t j = 0; j < d; ++j) {
        const __m256 b = _mm256_loadu_ps(panel + j * kLanes);
        a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(x0 + j), b, a0);
        a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(x0 + d + j), b, a1);
        a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(x0 + 2 * d + j), b, a2);
        a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(x0 + 3 * d + j), b, a3);
        a4 = _mm256_fmadd_ps(_mm256_broadcast_ss(x0 + 4 * d + j), b, a4);
        a5 = _mm256_fmadd_ps(_mm256_broadcast_ss(x0 + 5 * d + j), b, a5);
        a6 = _mm256_fmadd_ps(_mm256_broadcast_ss(x0 + 6 * d + j), b, a6);
        a7 = _mm256_fmadd_ps(_mm256_broadcast_ss(x0 + 7 * d + j), b, a7);
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
    const float* xr = x + r * d;
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
KMGAN_AVX2 void panel_dots_f64_avx2(const double* x, int64_t rows, int64_t d, const double* packed,
                                    int64_t panels, double* out) {
  const int64_t width = panels * kLanes;
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    const double* x0 = x + r * d;
    for (int64_t p = 0; p < panels; ++p) {
      const double* panel = packed + p * d * kLanes;
      __m256d a0l = _mm256_setzero_pd(), a0h = a0l, a1l = a0l, a1h = a0l, a2l = a0l, a2h = a0l,
              a3l = a0l, a3h = a0l;
      for (int64_t j = 0; j < d; ++j) {
        const __m256d bl = _mm256_loadu_pd(panel + j * kLanes);
        const __m256d bh = _mm256_loadu_pd(panel + j * kLanes + 4);
#define KMGAN_ROW(i)                                          \
  {                                                           \
    const __m256d a = _mm256_broadcast_sd(x0 + (i) * d + j);  \
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
    const double* xr = x + r * d;
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
void panel_dots(const T* x, int64_t rows, int64_t d, const T* packed, int64_t panels, T* out) {
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

  Seeder(const T* x_, const T* w_, int64_t n_, int64_t d_)
      : x(x_), w(w_), n(n_), d(d_), tiles((n_ + kTileRows - 1) / kTileRows) {
    // At least ~64k multiply-adds per task: small problems stay on one thread.
    grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, kTileRows * d * kLanes));
    sq.resize(n);
    closest.resize(n);
  }

  inline double term(int64_t i, T dist) const {
    return static_cast<double>(w == nullptr ? dist : static_cast<T>(w[i] * dist));
  }

  // closest_i = d2(x_i, x_first); part = tile sums of the terms. False if x holds NaN/Inf.
  bool first_pass(int64_t first) {
    one.set(x, d, &first, 1);
    part.assign(static_cast<size_t>(tiles), 0.0);
    std::vector<char> ok(static_cast<size_t>(tiles), 1);
    at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
      std::vector<T> dots(kTileRows * kLanes);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r0 = t * kTileRows, nr = std::min(kTileRows, n - r0);
        const T* xt = x + r0 * d;
        bool finite = true;
        for (int64_t e = 0; e < nr * d; ++e) finite &= std::isfinite(xt[e]);
        ok[t] = finite;
        panel_dots(xt, nr, d, one.packed.data(), 1, dots.data());
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
    panel_dots(x + r0 * d, nr, d, one.packed.data(), 1, dots.data());
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
  // w_i min(closest_i, d2_iq). Returns the first candidate of least potential.
  int64_t evaluate(const int64_t* cand, int64_t trials, std::vector<double>& pot) {
    const int64_t off = pending >= 0 ? 1 : 0;
    std::vector<int64_t> rows(static_cast<size_t>(trials + off));
    if (off) rows[0] = pending;
    for (int64_t q = 0; q < trials; ++q) rows[off + q] = cand[q];
    cols.set(x, d, rows.data(), trials + off);
    const int64_t width = cols.panels * kLanes;
    part.assign(static_cast<size_t>(tiles * trials), 0.0);
    at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
      std::vector<T> dots(kTileRows * width);
      std::vector<double> s(trials);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r0 = t * kTileRows, nr = std::min(kTileRows, n - r0);
        panel_dots(x + r0 * d, nr, d, cols.packed.data(), cols.panels, dots.data());
        std::fill(s.begin(), s.end(), 0.0);
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t i = r0 + r;
          const T* dr = dots.data() + r * width;
          T ci = closest[i];
          if (off) {
            const T v = form_d2(sq[i], dr[0], cols.sq[0]);
            if (v < ci) closest[i] = ci = v;
          }
          for (int64_t q = 0; q < trials; ++q) {
            const T v = form_d2(sq[i], dr[off + q], cols.sq[off + q]);
            s[q] += term(i, v < ci ? v : ci);
          }
        }
        std::copy(s.begin(), s.end(), part.begin() + t * trials);
      }
    });
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
                 int64_t trials, int64_t first, int64_t* indices, bool& finite) {
  Seeder<T> s(x, w, n, d);
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
  return potential;
}

// (indices (k,) int64, potential float64 0-d, finite bool 0-d). x (N, d) float32/float64;
// weights (N,) of x's dtype or None; u (k, trials) float64 (kmeans_plusplus.uniforms); first
// the index of the first center. When x holds NaN/Inf, finite is False and nothing else is
// meaningful.
std::tuple<Tensor, Tensor, Tensor> kmeans_plusplus_native(const Tensor& x_in,
                                                          const c10::optional<Tensor>& weights_in,
                                                          const Tensor& u_in, int64_t first) {
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
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "kmeans_plusplus_native", [&] {
    potential = seed_loop<scalar_t>(x.data_ptr<scalar_t>(), w.defined() ? w.data_ptr<scalar_t>() : nullptr,
                                    n, d, u.data_ptr<double>(), k, trials, first,
                                    indices.data_ptr<int64_t>(), finite);
  });
  return {indices, at::full({}, potential, x.options().dtype(at::kDouble)),
          at::full({}, finite, x.options().dtype(at::kBool))};
}

}  // namespace

TORCH_LIBRARY_IMPL(kmgan_ext, CPU, m) { m.impl("kmeans_plusplus_native", &kmeans_plusplus_native); }

}  // namespace cpu
}  // namespace kmgan_ext
