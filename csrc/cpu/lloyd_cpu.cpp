// Lloyd's iterations over all rows on CPU for km.kmeans (issue 15): float32 rows, AVX2 + FMA.
// Labelers ("auto"'s choice): up to K = kLloydPanelMaxK (16) the Yinyang bounds on the GEMM's
// 16-center panels below (~2x faster than an assign + update per iteration at K = 10); above,
// the cluster-local tiles (lloyd_local.cpp: each cluster's rows against only the centers within
// reach, no bounds per (row, center)). Elkan's per-center bounds behind Yinyang groups
// (lloyd_elkan.cpp) stay available by name (labeler="elkan"); the local tiles replaced them as
// "auto"'s choice (lloyd_local.cpp has the measurements). km.kmeans' choice of this kernel:
// kmgan_ext/seeding/kmeans.py, _BOUNDED_MAX_K.
//
// Each iteration is km.assign (exact labels) followed by the mean of every cluster from float64
// segment sums, as km.kmeans' per-iteration km.minibatch_step_ computes it: the same labels,
// the same sums (common.h segment_sums), the same update formula, hence bitwise the same
// centers. What changes is how the labels are found. At K = 100 the assignment GEMM is ~90% of
// an iteration, and after a few iterations most centers hardly move, so most distances need
// not be formed again (Yinyang k-means, Ding et al. 2015, with the groups the 16-center panels
// of the GEMM):
//   u_i      >= ||x_i - c_{a_i}||        (an upper bound on the distance to the row's center)
//   lb_{i,p} <= ||x_i - c_k|| for every k != a_i of panel p
// After an update moving center k by delta_k, u_i grows by delta_{a_i} and lb_{i,p} shrinks by
// the largest delta of panel p (triangle inequality). A row with u_i < lb_{i,p} for every p
// keeps its label: every other center is strictly farther, so the exact argmin is unique and
// unchanged. Otherwise u_i is tightened to the exact distance, and only the panels with
// lb_{i,p} <= u_i (plus the label's own panel) get their distances formed; every center of the
// other panels is strictly farther than the label, so the label is decided among the computed
// centers with assign's candidate rule (assign_cpu.cpp): candidates within 2 B_i of the computed
// minimum, exact float64 distances (canonical_dist2) among several. The bounds are kept
// conservative by construction: lower bounds come from the computed e_k minus B_i (the bound
// on e's rounding error that assign's exactness rests on) and are rounded down, upper bounds
// from exact float64 distances rounded up, each with a 1e-9 relative margin.
//
// A row whose expansion could overflow takes the exact path over all K and gets zero lower
// bounds (it is re-examined every iteration). An update that leaves a cluster empty stops the
// loop before that update: the caller relocates (kmgan_ext/seeding/kmeans.py) and calls again.
// The panels' bounds (N x panels floats) and Elkan's (N x K) are refused above kMaxBoundBytes
// (those labelers by name raise; "auto" takes the local tiles, which keep two numbers per row).
#include "lloyd_cpu.h"

#include <cmath>
#include <cstring>
#include <limits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define KMGAN_LLOYD_AVX2 1
#endif

namespace kmgan_ext {
namespace cpu {
namespace {

constexpr int64_t kTileRows = 256;
// Relative margins of the bounds: far above the float64 rounding of the quantities bounded.
constexpr double kUp = kLloydUp, kDown = kLloydDown;
// The lower bounds are stored as float (N x panels; N x K for Elkan's): at most this many
// bytes, else those labelers are refused ("auto" labels by the local tiles).
constexpr int64_t kMaxBoundBytes = int64_t(512) << 20;

// A float not above v (the bounds must stay lower bounds after rounding to float).
inline float round_down(double v) {
  float f = static_cast<float>(v);
  if (static_cast<double>(f) > v) f = std::nextafter(f, -std::numeric_limits<float>::infinity());
  return f;
}

#ifdef KMGAN_LLOYD_AVX2
#define KMGAN_AVX2 __attribute__((target("avx2,fma")))
// For the rows given by pointers (the rows of a tile that need this panel), panel packed as
// panel[j][l] (d x 16): out[r][l] = bias[l] - 2 rows[r] . panel column l, out[r] = e + slots[r] *
// lde, and pmin[slots[r] * ldm] = min_l out[r][l].
KMGAN_AVX2 inline void store_row(float* o, float* pm, __m256 lo, __m256 hi) {
  _mm256_storeu_ps(o, lo);
  _mm256_storeu_ps(o + 8, hi);
  __m256 m = _mm256_min_ps(lo, hi);
  __m128 h = _mm_min_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_min_ps(h, _mm_movehl_ps(h, h));
  h = _mm_min_ss(h, _mm_shuffle_ps(h, h, 1));
  *pm = _mm_cvtss_f32(h);
}

KMGAN_AVX2 void panel_e_rows(const float* const* rows, const int64_t* slots, int64_t nr, int64_t d,
                             const float* panel, const float* bias, float* e, int64_t lde,
                             float* pmin, int64_t ldm) {
  const __m256 bl = _mm256_loadu_ps(bias), bh = _mm256_loadu_ps(bias + 8);
  const __m256 m2 = _mm256_set1_ps(-2.0f);
  int64_t r = 0;
  // 6 rows x 16 centers: 12 accumulators, as assign's kernel_6x16 (assign_avx2.cpp).
  for (; r + 6 <= nr; r += 6) {
    const float *x0 = rows[r], *x1 = rows[r + 1], *x2 = rows[r + 2], *x3 = rows[r + 3],
                *x4 = rows[r + 4], *x5 = rows[r + 5];
    __m256 a0l = _mm256_setzero_ps(), a0h = a0l, a1l = a0l, a1h = a0l, a2l = a0l, a2h = a0l,
           a3l = a0l, a3h = a0l, a4l = a0l, a4h = a0l, a5l = a0l, a5h = a0l;
    for (int64_t j = 0; j < d; ++j) {
      const __m256 pl = _mm256_loadu_ps(panel + j * 16), ph = _mm256_loadu_ps(panel + j * 16 + 8);
#define KMGAN_ROW(i)                                \
  {                                                 \
    const __m256 b = _mm256_broadcast_ss(x##i + j); \
    a##i##l = _mm256_fmadd_ps(b, pl, a##i##l);      \
    a##i##h = _mm256_fmadd_ps(b, ph, a##i##h);      \
  }
      KMGAN_ROW(0) KMGAN_ROW(1) KMGAN_ROW(2) KMGAN_ROW(3) KMGAN_ROW(4) KMGAN_ROW(5)
#undef KMGAN_ROW
    }
    store_row(e + slots[r] * lde, pmin + slots[r] * ldm, _mm256_fmadd_ps(m2, a0l, bl), _mm256_fmadd_ps(m2, a0h, bh));
    store_row(e + slots[r + 1] * lde, pmin + slots[r + 1] * ldm, _mm256_fmadd_ps(m2, a1l, bl), _mm256_fmadd_ps(m2, a1h, bh));
    store_row(e + slots[r + 2] * lde, pmin + slots[r + 2] * ldm, _mm256_fmadd_ps(m2, a2l, bl), _mm256_fmadd_ps(m2, a2h, bh));
    store_row(e + slots[r + 3] * lde, pmin + slots[r + 3] * ldm, _mm256_fmadd_ps(m2, a3l, bl), _mm256_fmadd_ps(m2, a3h, bh));
    store_row(e + slots[r + 4] * lde, pmin + slots[r + 4] * ldm, _mm256_fmadd_ps(m2, a4l, bl), _mm256_fmadd_ps(m2, a4h, bh));
    store_row(e + slots[r + 5] * lde, pmin + slots[r + 5] * ldm, _mm256_fmadd_ps(m2, a5l, bl), _mm256_fmadd_ps(m2, a5h, bh));
  }
  for (; r < nr; ++r) {
    const float* x0 = rows[r];
    __m256 al = _mm256_setzero_ps(), ah = al;
    for (int64_t j = 0; j < d; ++j) {
      const __m256 b = _mm256_broadcast_ss(x0 + j);
      al = _mm256_fmadd_ps(b, _mm256_loadu_ps(panel + j * 16), al);
      ah = _mm256_fmadd_ps(b, _mm256_loadu_ps(panel + j * 16 + 8), ah);
    }
    store_row(e + slots[r] * lde, pmin + slots[r] * ldm, _mm256_fmadd_ps(m2, al, bl), _mm256_fmadd_ps(m2, ah, bh));
  }
}
#undef KMGAN_AVX2
#endif

bool lloyd_avx2() {
#ifdef KMGAN_LLOYD_AVX2
  return use_avx2();
#else
  return false;
#endif
}

struct Bounded {
  const float* x;
  int64_t n, d, k, panels, kw;
  std::vector<int64_t> labels_;
  std::vector<double> u;      // (n,) upper bounds
  std::vector<float> lb;      // (n, panels) lower bounds
  std::vector<double> drift;  // (k,) how far each center moved in the last update
  std::vector<double> pdrift; // (panels,) the largest drift of each panel
  bool valid = false;         // the bounds hold for the current centers

  const std::vector<int64_t>& labels() const { return labels_; }
  void moved(const std::vector<double>& d) {
    drift = d;
    std::fill(pdrift.begin(), pdrift.end(), 0.0);
    for (int64_t q = 0; q < k; ++q) pdrift[q / kPanel] = std::max(pdrift[q / kPanel], drift[q]);
  }

  Bounded(const float* x_, int64_t n_, int64_t d_, int64_t k_)
      : x(x_), n(n_), d(d_), k(k_), panels((k_ + kPanel - 1) / kPanel), kw(panels * kPanel),
        labels_(n_), u(n_), lb(static_cast<size_t>(n_ * panels)), drift(k_, 0.0), pdrift(panels, 0.0) {}

  // labels against centers c (K, d); dist2 (n,) when not null: the exact distance to the label.
  void assign(const float* c, float* dist2) {
    std::vector<float> s, cs, bias;
    double cmax = 0.0;
    TORCH_CHECK(shifted_centers_f32(c, k, d, s, cs, bias, cmax), "lloyd_native: non-finite centers");
    bias.resize(kw, std::numeric_limits<float>::infinity());
    const std::vector<float> packed = pack_panels(cs.data(), k, d);
    const double safe_square = static_cast<double>(std::numeric_limits<float>::max()) / 16.0;
    const int64_t tiles = (n + kTileRows - 1) / kTileRows;
    at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
      std::vector<float> xs(kTileRows * d), e(kTileRows * kw), pmin(kTileRows * panels);
      std::vector<double> xs2(kTileRows), bound2(kTileRows);
      std::vector<int64_t> row_of(kTileRows), slots(kTileRows);
      std::vector<char> need(kTileRows * panels), safe(kTileRows);
      std::vector<const float*> ptrs(kTileRows);
      // ||x - s||^2 >= n2 (1 - lo): n2 is the float sum of the squares of x' = fl(x - s)
      const double lo = 2.0 * (static_cast<double>(d) + 4.0) * std::ldexp(1.0, -24);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r0 = t * kTileRows, nr = std::min(kTileRows, n - r0);
        int64_t dirty = 0;
        for (int64_t i = r0; i < r0 + nr; ++i) {
          const float* xi = x + i * d;
          float* L = lb.data() + i * panels;
          double lmin = std::numeric_limits<double>::infinity();
          if (valid) {
            u[i] = (u[i] + drift[labels_[i]]) * kUp;
            for (int64_t p = 0; p < panels; ++p) {
              const double v = static_cast<double>(L[p]) - pdrift[p];
              L[p] = round_down(v * (v > 0.0 ? kDown : kUp));
              lmin = std::min(lmin, static_cast<double>(L[p]));
            }
            if (u[i] < lmin && dist2 == nullptr) continue;
            const double da = exact_dist2_avx2(xi, c + labels_[i] * d, d);
            u[i] = std::sqrt(da) * kUp;
            if (u[i] < lmin) {
              if (dist2 != nullptr) dist2[i] = static_cast<float>(da);
              continue;
            }
          }
          // x' = x - s as assign forms it, and ||x'|| for the bound.
          const int64_t q = dirty++;
          row_of[q] = i;
          float* xr = xs.data() + q * d;
          const float* sp = s.data();
          float n2 = 0.0f;
#pragma omp simd reduction(+ : n2)
          for (int64_t j = 0; j < d; ++j) {
            xr[j] = xi[j] - sp[j];
            n2 += xr[j] * xr[j];
          }
          const double xn = std::sqrt(static_cast<double>(n2));
          xs2[q] = static_cast<double>(n2) * (1.0 - lo);
          bound2[q] = candidate_bound2_f32(xn, cmax, d);
          safe[q] = (xn + cmax) * (xn + cmax) < safe_square;
          char* nd = need.data() + q * panels;
          for (int64_t p = 0; p < panels; ++p) nd[p] = !valid || !safe[q] || static_cast<double>(L[p]) <= u[i];
          if (valid) nd[labels_[i] / kPanel] = 1;
        }
        // The distances each panel is needed for.
        for (int64_t p = 0; p < panels; ++p) {
          int64_t m = 0;
          for (int64_t q = 0; q < dirty; ++q) {
            if (need[q * panels + p]) {
              ptrs[m] = xs.data() + q * d;
              slots[m++] = q;
            }
          }
          if (m == 0) continue;
#ifdef KMGAN_LLOYD_AVX2
          panel_e_rows(ptrs.data(), slots.data(), m, d, packed.data() + p * d * kPanel, bias.data() + p * kPanel,
                       e.data() + p * kPanel, kw, pmin.data() + p, panels);
#endif
        }
        for (int64_t q = 0; q < dirty; ++q) {
          const int64_t i = row_of[q];
          const float* xi = x + i * d;
          const float* er = e.data() + q * kw;
          const float* pm = pmin.data() + q * panels;
          const char* nd = need.data() + q * panels;
          int64_t cand[kMaxCandidates];
          int count = 0;
          if (safe[q]) {
            // Every center of a panel not formed is strictly farther than the row's label: the
            // argmin lies among the formed ones, where assign's candidate rule applies.
            float best = std::numeric_limits<float>::infinity();
            for (int64_t p = 0; p < panels; ++p)
              if (nd[p]) best = pm[p] < best ? pm[p] : best;
            const float thr = best + static_cast<float>(bound2[q]);
            for (int64_t p = 0; p < panels && count <= kMaxCandidates; ++p) {
              if (!nd[p] || !(pm[p] <= thr)) continue;
              for (int64_t c_k = p * kPanel; c_k < std::min(k, (p + 1) * kPanel); ++c_k) {
                if (er[c_k] <= thr) {
                  if (count < kMaxCandidates) cand[count] = c_k;
                  if (++count > kMaxCandidates) break;
                }
              }
            }
          } else {
            count = kMaxCandidates + 1;  // the exact path over all K
          }
          double dist = -1.0;
          const int64_t label = count == 1 ? cand[0] : resolve_candidates_f32(xi, c, k, d, cand, count, dist);
          if (dist < 0.0) dist = exact_dist2_avx2(xi, c + label * d, d);
          labels_[i] = label;
          u[i] = std::sqrt(dist) * kUp;
          if (dist2 != nullptr) dist2[i] = static_cast<float>(dist);
          float* L = lb.data() + i * panels;
          const double half = bound2[q] / 2.0;
          for (int64_t p = 0; p < panels; ++p) {
            if (!safe[q]) {
              L[p] = 0.0f;
              continue;
            }
            if (!nd[p]) continue;  // not formed: the bound carried over still holds
            float mn = pm[p];
            if (p == label / kPanel) {  // the other centers of the label's panel
              mn = std::numeric_limits<float>::infinity();
              for (int64_t c_k = p * kPanel; c_k < std::min(k, (p + 1) * kPanel); ++c_k)
                if (c_k != label) mn = er[c_k] < mn ? er[c_k] : mn;
            }
            if (std::isinf(mn)) {
              L[p] = std::numeric_limits<float>::infinity();
              continue;
            }
            const double v = xs2[q] + static_cast<double>(mn) - half - 1e-9 * (xs2[q] + std::fabs(mn));
            L[p] = v > 0.0 ? round_down(std::sqrt(v) * kDown) : 0.0f;
          }
        }
      }
    });
    valid = true;
  }
};

// (centers, labels, dist2, done): up to niter iterations from centers_in; done < niter where
// the update of iteration `done` would leave a cluster empty (centers are then those before
// it, labels/dist2 undefined); done == niter: labels and dist2 against the returned centers.
// done == -1: no AVX2 here (the caller takes the per-iteration path).
// labeler: "auto" (the panels' bounds up to kLloydPanelMaxK where they fit in kMaxBoundBytes,
// cluster-local labels otherwise), or one of "panels", "elkan", "local" (tests/test_lloyd_cpu.py
// runs each; Elkan's per-center bounds are no longer "auto"'s choice, see lloyd_local.cpp).
std::tuple<Tensor, Tensor, Tensor, int64_t> lloyd_native(const Tensor& x_in, const Tensor& centers_in,
                                                         int64_t niter, c10::string_view labeler) {
  check_features("x", x_in);
  check_centers("centers", centers_in, "x", x_in);
  TORCH_CHECK_TYPE(x_in.scalar_type() == at::kFloat, "x must be float32, got ", x_in.scalar_type());
  TORCH_CHECK_VALUE(niter >= 0, "niter must be >= 0, got ", niter);
  const int64_t n = x_in.size(0), d = x_in.size(1), k = centers_in.size(0);
  TORCH_CHECK_VALUE(n >= 1 && k >= 1, "x and centers need at least one row");
  Tensor centers = centers_in.contiguous().clone();
  Tensor labels = at::empty({n}, x_in.options().dtype(at::kLong));
  Tensor dist2 = at::empty({n}, x_in.options());
  const int64_t panels = (k + kPanel - 1) / kPanel;
  TORCH_CHECK_VALUE(labeler == "auto" || labeler == "panels" || labeler == "elkan" || labeler == "local",
                    "labeler must be 'auto', 'panels', 'elkan' or 'local', got '", labeler, "'");
  const bool elkan_fits = ElkanLabels::bound_bytes(n, k) <= kMaxBoundBytes;
  const bool panels_fit = n * panels * 4 <= kMaxBoundBytes;
  TORCH_CHECK_VALUE(labeler != "elkan" || elkan_fits, "labeler='elkan': its bounds would take ",
                    ElkanLabels::bound_bytes(n, k), " bytes, over the ", kMaxBoundBytes, " allowed");
  TORCH_CHECK_VALUE(labeler != "panels" || panels_fit, "labeler='panels': its bounds would take ", n * panels * 4,
                    " bytes, over the ", kMaxBoundBytes, " allowed");
  if (!lloyd_avx2()) return {centers, labels, dist2, -1};
  const Tensor x = x_in.contiguous();
  const float* xp = x.data_ptr<float>();
  float* c = centers.data_ptr<float>();
  std::vector<float> next(static_cast<size_t>(k * d)), before(static_cast<size_t>(k * d));
  std::vector<double> drift(k);
  // The iterations with either labeler: assign(c, dist2), labels(), moved(drift).
  auto iterate = [&](auto& b) -> int64_t {
    for (int64_t it = 0; it <= niter; ++it) {
      if (it == niter) {
        b.assign(c, dist2.data_ptr<float>());
        break;
      }
      b.assign(c, nullptr);
      const int64_t* lab = b.labels().data();
      const std::vector<int64_t> m = label_counts("labels", lab, n, k);
      for (int64_t q = 0; q < k; ++q)
        if (m[q] == 0) return it;
      // The mean as km.minibatch_step_ forms it from zero counts (minibatch_update_cpu.cpp,
      // sculley_update): c + (S - m c) / m in double, rounded once.
      const WideSum<float> sums = segment_sums(xp, n, d, lab, k);
      for (int64_t q = 0; q < k; ++q) {
        const double mq = static_cast<double>(m[q]);
        double moved = 0.0;
        for (int64_t j = 0; j < d; ++j) {
          const double cj = static_cast<double>(c[q * d + j]);
          const float v = static_cast<float>(cj + (sums.value(q * d + j) - mq * cj) / mq);
          next[q * d + j] = v;
          const double t = static_cast<double>(v) - cj;
          moved += t * t;
        }
        drift[q] = std::sqrt(moved) * kUp;
      }
      // An iteration is a deterministic function of the centers (the same centers give the
      // same labels, and those the same update): centers it leaves bit for bit as they were
      // stay so, and a 2-cycle (next == the centers before c) alternates, next being the
      // result when an even number of iterations is left (kmeans.py's _cycle_ends). Straight
      // to the final labels then: the result is bitwise that of all niter iterations.
      const size_t bytes = next.size() * sizeof(float);
      const bool ends = std::memcmp(next.data(), c, bytes) == 0 ||
                        (it > 0 && (niter - it - 1) % 2 == 0 && std::memcmp(next.data(), before.data(), bytes) == 0);
      std::copy(c, c + k * d, before.begin());
      std::copy(next.begin(), next.end(), c);
      b.moved(drift);
      if (ends) it = niter - 1;
    }
    std::copy(b.labels().begin(), b.labels().end(), labels.data_ptr<int64_t>());
    return niter;
  };
  int64_t done;
  if (labeler == "elkan") {
    ElkanLabels b(xp, n, d, k);
    done = iterate(b);
  } else if (labeler == "panels" || (labeler == "auto" && k <= kLloydPanelMaxK && panels_fit)) {
    Bounded b(xp, n, d, k);
    done = iterate(b);
  } else {
    LocalLabels b(xp, n, d, k);
    done = iterate(b);
  }
  return {centers, labels, dist2, done};
}

}  // namespace

TORCH_LIBRARY_IMPL(kmgan_ext, CPU, m) { m.impl("lloyd_native", &lloyd_native); }

}  // namespace cpu
}  // namespace kmgan_ext
