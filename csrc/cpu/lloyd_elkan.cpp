// Elkan's bounds for lloyd_native (lloyd_cpu.cpp), labeler="elkan" (it was "auto"'s choice
// from K > kLloydPanelMaxK until the cluster-local tiles of lloyd_local.cpp, faster on every
// shape measured there but the bench's blobs at K = 17-24): at K = 100 on the bench's blobs
// only 2-9% of the (row, center) distances can change a label after the first iteration
// (issue 15), so most are not formed again.
//
// Bounds, for every row i with label a_i at iteration t:
//   u_i      >= ||x_i - c_{a_i}||                       (one double per row)
//   lb_{i,j} <= ||x_i - c_j||  for j != a_i             (one float per (row, center))
// After an update moving center j by drift_j, u grows by drift_{a_i} and lb_{i,j} shrinks by
// drift_j (the triangle inequality). Rewriting all N K bounds every iteration would cost more
// than the distances saved, so they are stored against the drift summed since the first
// iteration, S_j(t): the stored value is lb + S_j(t written) (rounded down), the bound now is
// stored - S_j(now) (rounded down again), and only the bounds of the distances formed are
// written; u likewise (u - S_a, rounded up).
//
// The centers are split into ~K/10 groups of close initial centers (Yinyang k-means, Ding et
// al. 2015); a row also keeps gl_{i,g} <= min over g's centers j != a_i of ||x_i - c_j||,
// shrinking by the largest drift in g, and the bounds of a row are laid out group by group.
// Per row and iteration:
//   1. u_i < s(a_i) = min_{j != a} ||c_a - c_j|| / 2: the label stays (Hamerly's test; x not read)
//   2. else u_i is tightened to the distance to a_i and test 1 repeated; then every group with
//      gl_{i,g} <= u_i is looked into (usually only the label's), and its centers j != a_i with
//      lb_{i,j} <= u_i and ||c_a - c_j|| / 2 <= u_i are listed;
//   3. none listed: the label stays; else the listed distances are formed. Every center not
//      listed is strictly farther than a_i (the triangle inequality), so the exact argmin is
//      unique and unchanged in 1 and 3, and lies among a_i and the listed centers otherwise.
// On the bench's blobs (N = 70,000, d = 100, K = 100) ~1 group of 10 is looked into per row
// and 1.8-9% of the (row, center) distances are formed; nearly every row still needs step 2.
//
// Exactness: the distances formed here are float sums of squares of fl(x - c), whose relative
// error is at most gamma = 2 (d + 4) 2^-24 (all terms non-negative: no cancellation, whatever
// the order; plus eta for underflow), so each gives an interval [lo, hi] holding the true
// squared distance. Centers whose lo is within the smallest hi (with the 1e-9 margins of
// kLloydUp/kLloydDown, far above the float64 reference's rounding) are the candidates; several
// are decided by resolve_candidates_f32 (assign's float64 rule: the reference's distances,
// ties to the lowest index), so labels are km.assign's. All bounds are rounded outward. A row
// whose float distances overflow takes the exact path over all K (float64 distances). The first
// iteration forms every distance with assign's GEMM tile (dist_tile) and its error bound.
#include "lloyd_cpu.h"
#include "prefetch.h"
#include "avx2_reduce.h"

#include <cmath>
#include <limits>
#include <utility>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define KMGAN_ELKAN_AVX2 1
#endif

namespace kmgan_ext {
namespace cpu {
namespace {

constexpr int64_t kTileRows = 128;
constexpr float kBig = std::numeric_limits<float>::max();
// A float bound scaled by this after one rounded float operation stays below the true value:
// the rounding of the operation and of the product, each relative 2^-24, stay below the 2^-20
// taken off (a subnormal difference is exact).
constexpr float kShrink = 1.0f - 0x1p-20f;

// A float not above v / not below v.
inline float round_down(double v) {
  float f = static_cast<float>(v);
  if (static_cast<double>(f) > v) f = std::nextafter(f, -std::numeric_limits<float>::infinity());
  return f;
}
inline float round_up(double v) {
  float f = static_cast<float>(v);
  if (static_cast<double>(f) < v) f = std::nextafter(f, std::numeric_limits<float>::infinity());
  return f;
}

// round_down / round_up for v >= 0 without nextafter (per computed distance): a float within
// 2^-24 of v (1 -+ 2^-22) is below / above v; below 1e-30 (near float's subnormals) 0 / 1e-30.
inline float fast_down(double v) { return v > 1e-30 ? static_cast<float>(v * (1.0 - 0x1p-22)) : 0.0f; }
inline float fast_up(double v) { return v > 1e-30 ? static_cast<float>(v * (1.0 + 0x1p-22)) : 1e-30f; }

#ifdef KMGAN_ELKAN_AVX2
#define KMGAN_AVX2 __attribute__((target("avx2,fma")))

KMGAN_AVX2 inline __m256i tail_mask(int64_t rem) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(rem)), idx);
}

// out[q] = float sum_l fl(x_l - c_{js[q], l})^2 for q < m, four centers per pass over x.
KMGAN_AVX2 void diff_dist2(const float* x, const float* c, int64_t d, const int32_t* js, int64_t m,
                           float* out) {
  const int64_t full = d / 8 * 8;
  const __m256i mask = tail_mask(d - full);
  int64_t q = 0;
  for (; q + 4 <= m; q += 4) {
    const float *c0 = c + js[q] * d, *c1 = c + js[q + 1] * d, *c2 = c + js[q + 2] * d, *c3 = c + js[q + 3] * d;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t l = 0; l < full; l += 8) {
      const __m256 xv = _mm256_loadu_ps(x + l);
      const __m256 t0 = _mm256_sub_ps(xv, _mm256_loadu_ps(c0 + l));
      const __m256 t1 = _mm256_sub_ps(xv, _mm256_loadu_ps(c1 + l));
      const __m256 t2 = _mm256_sub_ps(xv, _mm256_loadu_ps(c2 + l));
      const __m256 t3 = _mm256_sub_ps(xv, _mm256_loadu_ps(c3 + l));
      a0 = _mm256_fmadd_ps(t0, t0, a0);
      a1 = _mm256_fmadd_ps(t1, t1, a1);
      a2 = _mm256_fmadd_ps(t2, t2, a2);
      a3 = _mm256_fmadd_ps(t3, t3, a3);
    }
    if (full < d) {
      const __m256 xv = _mm256_maskload_ps(x + full, mask);
      const __m256 t0 = _mm256_sub_ps(xv, _mm256_maskload_ps(c0 + full, mask));
      const __m256 t1 = _mm256_sub_ps(xv, _mm256_maskload_ps(c1 + full, mask));
      const __m256 t2 = _mm256_sub_ps(xv, _mm256_maskload_ps(c2 + full, mask));
      const __m256 t3 = _mm256_sub_ps(xv, _mm256_maskload_ps(c3 + full, mask));
      a0 = _mm256_fmadd_ps(t0, t0, a0);
      a1 = _mm256_fmadd_ps(t1, t1, a1);
      a2 = _mm256_fmadd_ps(t2, t2, a2);
      a3 = _mm256_fmadd_ps(t3, t3, a3);
    }
    out[q] = hsum(a0);
    out[q + 1] = hsum(a1);
    out[q + 2] = hsum(a2);
    out[q + 3] = hsum(a3);
  }
  for (; q < m; ++q) {
    // two accumulators: the chain of dependent FMAs, not the loads, bounds one center
    const float* c0 = c + js[q] * d;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    int64_t l = 0;
    for (; l + 16 <= full; l += 16) {
      const __m256 t0 = _mm256_sub_ps(_mm256_loadu_ps(x + l), _mm256_loadu_ps(c0 + l));
      const __m256 t1 = _mm256_sub_ps(_mm256_loadu_ps(x + l + 8), _mm256_loadu_ps(c0 + l + 8));
      a0 = _mm256_fmadd_ps(t0, t0, a0);
      a1 = _mm256_fmadd_ps(t1, t1, a1);
    }
    for (; l < full; l += 8) {
      const __m256 t0 = _mm256_sub_ps(_mm256_loadu_ps(x + l), _mm256_loadu_ps(c0 + l));
      a0 = _mm256_fmadd_ps(t0, t0, a0);
    }
    a0 = _mm256_add_ps(a0, a1);
    if (full < d) {
      const __m256 t0 = _mm256_sub_ps(_mm256_maskload_ps(x + full, mask), _mm256_maskload_ps(c0 + full, mask));
      a0 = _mm256_fmadd_ps(t0, t0, a0);
    }
    out[q] = hsum(a0);
  }
}

// The bound now of a stored bound L: fl(fl(L - sup) kShrink) <= L - sup (kShrink).
inline float shrunk(float L, float sup) { return (L - sup) * kShrink; }

// The centers j != a with shrunk(L[j], sup[j]) <= uf and H[j] <= uf, in increasing j, into js;
// returns how many.
// The last k % 8 lanes are read with a masked load (a scalar loop there cost as much as the
// vector part for the ~10-center groups of K = 100); lanes past k compare false (NaN).
KMGAN_AVX2 int64_t needed(const float* L, const float* sup, const float* H, int64_t k, int64_t a, float uf,
                          int32_t* js) {
  const __m256 uv = _mm256_set1_ps(uf), s = _mm256_set1_ps(kShrink);
  int64_t m = 0;
  for (int64_t j = 0; j < k; j += 8) {
    __m256 lv, sv, hv;
    if (j + 8 <= k) {
      lv = _mm256_loadu_ps(L + j);
      sv = _mm256_loadu_ps(sup + j);
      hv = _mm256_loadu_ps(H + j);
    } else {
      const __m256i mask = tail_mask(k - j);
      const __m256 nan = _mm256_set1_ps(std::numeric_limits<float>::quiet_NaN());
      lv = _mm256_blendv_ps(nan, _mm256_maskload_ps(L + j, mask), _mm256_castsi256_ps(mask));
      sv = _mm256_maskload_ps(sup + j, mask);
      hv = _mm256_maskload_ps(H + j, mask);
    }
    const __m256 ok = _mm256_and_ps(_mm256_cmp_ps(_mm256_mul_ps(_mm256_sub_ps(lv, sv), s), uv, _CMP_LE_OQ),
                                    _mm256_cmp_ps(hv, uv, _CMP_LE_OQ));
    unsigned bits = static_cast<unsigned>(_mm256_movemask_ps(ok));
    if (a >= j && a < j + 8) bits &= ~(1u << (a - j));
    while (bits) {
      js[m++] = static_cast<int32_t>(j + __builtin_ctz(bits));
      bits &= bits - 1;
    }
  }
  return m;
}

KMGAN_AVX2 float min_of(const float* L, int64_t k) {
  __m256 mv = _mm256_set1_ps(kBig);
  int64_t j = 0;
  for (; j + 8 <= k; j += 8) mv = _mm256_min_ps(mv, _mm256_loadu_ps(L + j));
  __m128 m = _mm_min_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
  m = _mm_min_ps(m, _mm_movehl_ps(m, m));
  m = _mm_min_ss(m, _mm_shuffle_ps(m, m, 1));
  float r = _mm_cvtss_f32(m);
  for (; j < k; ++j) r = std::min(r, L[j]);
  return r;
}

// min over p < k, p != skip of shrunk(L[p], sup[p]), at least 0 (big when there is none).
// (The last k % 8 lanes masked as in needed.)
KMGAN_AVX2 float group_min(const float* L, const float* sup, int64_t k, int64_t skip) {
  const __m256 s = _mm256_set1_ps(kShrink), big = _mm256_set1_ps(kBig);
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256 mv = big;
  for (int64_t j = 0; j < k; j += 8) {
    __m256 v;
    __m256i own = _mm256_cmpeq_epi32(idx, _mm256_set1_epi32(static_cast<int>(skip - j)));
    if (j + 8 <= k) {
      v = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(L + j), _mm256_loadu_ps(sup + j)), s);
    } else {
      const __m256i mask = tail_mask(k - j);
      v = _mm256_mul_ps(_mm256_sub_ps(_mm256_maskload_ps(L + j, mask), _mm256_maskload_ps(sup + j, mask)), s);
      own = _mm256_or_si256(own, _mm256_xor_si256(mask, _mm256_set1_epi32(-1)));
    }
    mv = _mm256_min_ps(mv, _mm256_blendv_ps(v, big, _mm256_castsi256_ps(own)));
  }
  __m128 m = _mm_min_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
  m = _mm_min_ps(m, _mm_movehl_ps(m, m));
  m = _mm_min_ss(m, _mm_shuffle_ps(m, m, 1));
  return std::max(_mm_cvtss_f32(m), 0.0f);
}

// First iteration: L[j] = sqrt(max(0, (xs2 + e_j) - sub)) kShrink for j < k, where xs2 <=
// ||x - s||^2, |e_j - exact e_j| <= B and sub covers B and the two float roundings.
KMGAN_AVX2 void bounds_from_e(const float* e, int64_t k, float xs2, float sub, float* L) {
  const __m256 xv = _mm256_set1_ps(xs2), sv = _mm256_set1_ps(sub), s = _mm256_set1_ps(kShrink),
               z = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= k; j += 8) {
    const __m256 v = _mm256_max_ps(z, _mm256_sub_ps(_mm256_add_ps(xv, _mm256_loadu_ps(e + j)), sv));
    _mm256_storeu_ps(L + j, _mm256_mul_ps(_mm256_sqrt_ps(v), s));
  }
  for (; j < k; ++j) L[j] = std::sqrt(std::max(0.0f, (xs2 + e[j]) - sub)) * kShrink;
}

#undef KMGAN_AVX2
#endif

}  // namespace

ElkanLabels::ElkanLabels(const float* x, int64_t n, int64_t d, int64_t k)
    : x_(x), n_(n), d_(d), k_(k), labels_(n),
      lb_store_(empty_output({n * k}, at::TensorOptions().dtype(at::kFloat))),
      lb_(lb_store_.data_ptr<float>()),
      u_(n) {
  travel_.emplace_back(k, 0.0);
}

void ElkanLabels::moved(const std::vector<double>& drift) {
  std::vector<double> next = travel_.back(), gnext = gtravel_.back();
  for (int64_t q = 0; q < k_; ++q) next[q] += drift[q];
  for (int64_t g = 0; g < groups_; ++g) {
    double mx = 0.0;
    for (int64_t p = gstart_[g]; p < gstart_[g + 1]; ++p) mx = std::max(mx, drift[perm_[p]]);
    gnext[g] += mx;
  }
  travel_.push_back(std::move(next));
  gtravel_.push_back(std::move(gnext));
}

// Groups from a few Lloyd iterations over the initial centers (Ding et al.: G = K / 10),
// seeded farthest-first from center 0; only the speed depends on them.
void ElkanLabels::make_groups(const float* c) {
  const int64_t k = k_, d = d_, G = std::max<int64_t>(1, (k + 5) / 10);
  std::vector<int64_t> seed{0};
  std::vector<double> near(k, std::numeric_limits<double>::infinity());
  while (static_cast<int64_t>(seed.size()) < G) {
    int64_t far = 0;
    for (int64_t q = 0; q < k; ++q) {
      near[q] = std::min(near[q], exact_dist2_avx2(c + q * d, c + seed.back() * d, d));
      if (near[q] > near[far]) far = q;
    }
    seed.push_back(far);
  }
  std::vector<double> gc(static_cast<size_t>(G * d));
  for (int64_t g = 0; g < G; ++g)
    for (int64_t j = 0; j < d; ++j) gc[g * d + j] = c[seed[g] * d + j];
  group_of_.assign(k, 0);
  for (int iter = 0; iter < 6; ++iter) {
    for (int64_t q = 0; q < k; ++q) {
      double best = std::numeric_limits<double>::infinity();
      for (int64_t g = 0; g < G; ++g) {
        double s = 0.0;
        for (int64_t j = 0; j < d; ++j) {
          const double t = c[q * d + j] - gc[g * d + j];
          s += t * t;
        }
        if (s < best) {
          best = s;
          group_of_[q] = g;
        }
      }
    }
    std::vector<double> cnt(G, 0.0);
    std::fill(gc.begin(), gc.end(), 0.0);
    for (int64_t q = 0; q < k; ++q) {
      cnt[group_of_[q]] += 1.0;
      for (int64_t j = 0; j < d; ++j) gc[group_of_[q] * d + j] += c[q * d + j];
    }
    for (int64_t g = 0; g < G; ++g)
      for (int64_t j = 0; j < d; ++j) gc[g * d + j] = cnt[g] > 0 ? gc[g * d + j] / cnt[g] : gc[g * d + j];
  }
  groups_ = G;
  gstart_.assign(G + 1, 0);
  for (int64_t q = 0; q < k; ++q) ++gstart_[group_of_[q] + 1];
  for (int64_t g = 0; g < G; ++g) gstart_[g + 1] += gstart_[g];
  perm_.assign(k, 0);
  pos_.assign(k, 0);
  std::vector<int64_t> fill(gstart_.begin(), gstart_.end() - 1);
  for (int64_t q = 0; q < k; ++q) {
    pos_[q] = fill[group_of_[q]]++;
    perm_[pos_[q]] = q;
  }
  gl_.assign(static_cast<size_t>(n_ * G), 0.0f);
  gtravel_.assign(1, std::vector<double>(G, 0.0));
}

void ElkanLabels::store_row(int64_t i, const float* row, int64_t label, const double* slow,
                            const double* gslow) {
  float* L = lb_ + i * k_;
  float* Gi = gl_.data() + i * groups_;
  for (int64_t g = 0; g < groups_; ++g) {
    float mn = kBig;
    for (int64_t p = gstart_[g]; p < gstart_[g + 1]; ++p) {
      const int64_t j = perm_[p];
      L[p] = slow ? fast_down(static_cast<double>(row[j]) + slow[j]) : row[j];
      if (j != label) mn = std::min(mn, row[j]);
    }
    Gi[g] = gslow ? fast_down(static_cast<double>(mn) + gslow[g]) : mn;
  }
}

#ifdef KMGAN_ELKAN_AVX2

namespace {

// The exact path of a row (float distances may overflow): float64 distances to all K into
// row (lower bounds now), the label by resolve_candidates_f32's exact rule. Returns the
// label; dist its exact distance.
int64_t exact_row(const float* xi, const float* c, int64_t k, int64_t d, float* row, double& dist) {
  for (int64_t j = 0; j < k; ++j) row[j] = round_down(std::sqrt(exact_dist2_avx2(xi, c + j * d, d)) * kLloydDown);
  const int64_t none[kMaxCandidates] = {};  // not read: count > kMaxCandidates means all K
  return resolve_candidates_f32(xi, c, k, d, none, kMaxCandidates + 1, dist);
}

}  // namespace

void ElkanLabels::first_pass(const float* c, float* dist2) {
  const int64_t n = n_, d = d_, k = k_;
  std::vector<float> s, cs, bias;
  double cmax = 0.0;
  TORCH_CHECK(shifted_centers_f32(c, k, d, s, cs, bias, cmax), "lloyd_native: non-finite centers");
  make_groups(c);
  const int64_t panels = (k + kPanel - 1) / kPanel, kw = panels * kPanel;
  bias.resize(kw, std::numeric_limits<float>::infinity());
  const std::vector<float> packed = pack_panels(cs.data(), k, d);
  const double safe_square = static_cast<double>(std::numeric_limits<float>::max()) / 16.0;
  const double uf = std::ldexp(1.0, -24);
  // ||x - s||^2 >= n2 (1 - lo): n2 the float sum of the squares of fl(x - s)
  const double lo = 2.0 * (static_cast<double>(d) + 4.0) * uf;
  const int64_t tiles = (n + kTileRows - 1) / kTileRows;
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> xs(kTileRows * d), e(kTileRows * kw), pmin(kTileRows * panels), xn2(kTileRows), row(k);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = t * kTileRows, nr = std::min(kTileRows, n - r0);
      for (int64_t r = 0; r < nr; ++r) {
        const float* xi = x_ + (r0 + r) * d;
        float* xr = xs.data() + r * d;
        const float* sp = s.data();
        float n2 = 0.0f;
        // In lanes, as assign's tile (assign_cpu.cpp): one chain of dependent float additions
        // cost ~4 cycles per column, ~10% of this pass (any order is within n2's error bound).
#pragma omp simd reduction(+ : n2)
        for (int64_t j = 0; j < d; ++j) {
          xr[j] = xi[j] - sp[j];
          n2 += xr[j] * xr[j];
        }
        xn2[r] = n2;
      }
      dist_tile(xs.data(), nr, d, packed.data(), bias.data(), panels, e.data(), kw, pmin.data(), panels);
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t i = r0 + r;
        const float* xi = x_ + i * d;
        const double xn = std::sqrt(static_cast<double>(xn2[r]));
        double dist = -1.0;
        int64_t label;
        if (!((xn + cmax) * (xn + cmax) < safe_square)) {
          label = exact_row(xi, c, k, d, row.data(), dist);
        } else {
          const float* er = e.data() + r * kw;
          const double bound2 = candidate_bound2_f32(xn, cmax, d);
          float best = std::numeric_limits<float>::infinity();
          for (int64_t p = 0; p < panels; ++p) best = std::min(best, pmin[r * panels + p]);
          const float thr = best + static_cast<float>(bound2);
          int64_t cand[kMaxCandidates];
          int count = 0;
          for (int64_t p = 0; p < panels && count <= kMaxCandidates; ++p) {
            if (!(pmin[r * panels + p] <= thr)) continue;
            for (int64_t q = p * kPanel; q < std::min(k, (p + 1) * kPanel); ++q) {
              if (er[q] <= thr) {
                if (count < kMaxCandidates) cand[count] = q;
                if (++count > kMaxCandidates) break;
              }
            }
          }
          label = count == 1 ? cand[0] : resolve_candidates_f32(xi, c, k, d, cand, count, dist);
          // (xs2 + e) - sub >= the true squared distance's lower bound: B for e's error, and
          // 4u of the operands' size for the float sum and difference.
          const double xs2 = static_cast<double>(xn2[r]) * (1.0 - lo);
          const double sub = bound2 / 2.0 * (1.0 + 4.0 * uf) + 4.0 * uf * (xs2 + (xn + cmax) * (xn + cmax));
          bounds_from_e(er, k, round_down(xs2), round_up(sub), row.data());
        }
        if (dist < 0.0) dist = exact_dist2_avx2(xi, c + label * d, d);
        labels_[i] = label;
        u_[i] = std::sqrt(dist) * kLloydUp;
        if (dist2 != nullptr) dist2[i] = static_cast<float>(dist);
        store_row(i, row.data(), label, nullptr, nullptr);
      }
    }
  });
}

void ElkanLabels::assign(const float* c, float* dist2) {
  const int64_t now = static_cast<int64_t>(travel_.size()) - 1;
  if (now == 0) {
    first_pass(c, dist2);
    return;
  }
  const int64_t n = n_, d = d_, k = k_, G = groups_;
  for (int64_t q = 0; q < k * d; ++q)
    TORCH_CHECK(std::isfinite(c[q]), "lloyd_native: non-finite centers");
  // S_j(now), the drift of center j summed over the updates so far, bracketed: slow <= S <= sup
  // (the double running sum's rounding, ~now 2^-53 S, is far inside the margins); supp the
  // float sup in group order, for the stored bounds; the same for the groups' summed largest drift.
  auto bracket = [&](const std::vector<double>& v, std::vector<double>& lo, std::vector<double>& hi) {
    lo.resize(v.size());
    hi.resize(v.size());
    for (size_t q = 0; q < v.size(); ++q) {
      lo[q] = v[q] * kLloydDown - v[q] * 0x1p-50;
      hi[q] = v[q] * kLloydUp + v[q] * 0x1p-50;
    }
  };
  std::vector<double> slow, sup, gslow, gsup;
  bracket(travel_[now], slow, sup);
  bracket(gtravel_[now], gslow, gsup);
  std::vector<float> supp(k), gsupf(G);
  for (int64_t p = 0; p < k; ++p) supp[p] = round_up(sup[perm_[p]]);
  for (int64_t g = 0; g < G; ++g) gsupf[g] = round_up(gsup[g]);
  // Hp[a][p] <= ||c_a - c_{perm p}|| / 2 (big for the center itself), sh[a] = its minimum.
  std::vector<float> Hp(static_cast<size_t>(k * k), kBig);
  for (int64_t a = 0; a < k; ++a) {
    for (int64_t j = a + 1; j < k; ++j) {
      const float h = round_down(0.5 * std::sqrt(exact_dist2_avx2(c + a * d, c + j * d, d)) * kLloydDown);
      Hp[a * k + pos_[j]] = Hp[j * k + pos_[a]] = h;
    }
  }
  std::vector<double> sh(k);
  for (int64_t a = 0; a < k; ++a) sh[a] = min_of(Hp.data() + a * k, k);
  // The float distances' error: relative gamma (sum of d non-negative rounded terms, each
  // fl(x - c)^2 with two more roundings), absolute eta for underflow, a factor 2 of margin.
  const double uf = std::ldexp(1.0, -24);
  const double gamma = 2.0 * (static_cast<double>(d) + 4.0) * uf;
  const double eta = 2.0 * (static_cast<double>(d) + 2.0) * std::ldexp(1.0, -149);
  // true squared distance in [(comp - eta) / (1 + gamma), (comp + eta) / (1 - gamma)]
  const double hi_scale = kLloydUp * kLloydUp / (1.0 - gamma), lo_scale = kLloydDown * kLloydDown / (1.0 + gamma);
  // comp_j <= eta + (comp_min + eta) near  <=>  lo_j kDown <= hi_min kUp (the 1e-12: rounding)
  const double near = hi_scale / lo_scale * (1.0 + 1e-12);
  auto upper = [&](float comp) { return std::sqrt((static_cast<double>(comp) + eta) * hi_scale); };
  at::parallel_for(0, n, 1024, [&](int64_t i0, int64_t i1) {
    std::vector<int32_t> ps(k + 1), js(k + 1);
    std::vector<float> comp(k + 1), row(k);
    std::vector<int64_t> seen(G + 2);
    std::vector<int32_t> grp(G);
    const std::vector<float> zeros(G, 0.0f);
    // A row reads the bounds of its label's group (1 or 2 cache lines of its K): requested
    // kAhead rows early, as the stride defeats the hardware prefetcher. Its x row too: the
    // stream of rows, interleaved with the bounds' lines, went 3-6% faster so (20 iterations
    // at N = 70,000, d = 100, K = 100, paired in one process, 7 of 10 pairs).
    constexpr int64_t kAhead = 8;
    for (int64_t i = i0; i < i1; ++i) {
      if (i + kAhead < i1) {
        const int64_t ga = group_of_[labels_[i + kAhead]];
        const float* pl = lb_ + (i + kAhead) * k;
        __builtin_prefetch(pl + gstart_[ga]);
        __builtin_prefetch(pl + gstart_[ga + 1] - 1);
        prefetch_range(x_ + (i + kAhead) * d, x_ + (i + kAhead + 1) * d);
      }
      const float* xi = x_ + i * d;
      const int64_t a = labels_[i];
      const float* ca = c + a * d;
      // u_ is stored as u - S_a (rounded up): the bound now adds S_a(now) back, rounded up.
      const double ust = u_[i];
      double un = ust + sup[a];
      un += 0x1p-50 * (std::fabs(ust) + sup[a]);
      float* L = lb_ + i * k;
      float* Gi = gl_.data() + i * G;
      const float* Ha = Hp.data() + a * k;
      const int64_t pa = pos_[a];
      if (un < sh[a]) {  // Hamerly: every other center is farther than a (x not read)
        if (dist2 != nullptr) dist2[i] = static_cast<float>(exact_dist2_avx2(xi, ca, d));
        continue;
      }
      int32_t a32 = static_cast<int32_t>(a);
      float ca2;
      diff_dist2(xi, c, d, &a32, 1, &ca2);
      double dist = -1.0;
      int64_t label = a;
      bool exact = !std::isfinite(ca2);
      int64_t ng = 0;
      double ubest = 0.0;
      if (!exact) {
        // u tightened to the distance to a; the centers still within it, group by group
        un = upper(ca2);
        ubest = un;
        int64_t m = 0;
        if (!(un < sh[a])) {
          const float ufl = fast_up(un);
          // the groups whose bound does not exceed u (every center of another is farther than a)
          const int64_t open = needed(Gi, gsupf.data(), zeros.data(), G, -1, ufl, grp.data());
          for (int64_t t = 0; t < open; ++t) {
            const int64_t g = grp[t];
            seen[ng++] = g;
            const int64_t p0 = gstart_[g];
            const int64_t got = needed(L + p0, supp.data() + p0, Ha + p0, gstart_[g + 1] - p0, pa - p0, ufl, ps.data() + m);
            for (int64_t q = m; q < m + got; ++q) js[q] = static_cast<int32_t>(perm_[ps[q] + p0]);
            m += got;
          }
        }
        if (m == 0) {
          if (dist2 != nullptr) dist2[i] = static_cast<float>(exact_dist2_avx2(xi, ca, d));
          u_[i] = (un - slow[a]) + 0x1p-50 * (un + slow[a]);
          continue;
        }
        diff_dist2(xi, c, d, js.data(), m, comp.data());
        js[m] = a32;
        comp[m] = ca2;
        float cmin = std::numeric_limits<float>::infinity();
        for (int64_t q = 0; q <= m; ++q) cmin = std::min(cmin, comp[q]);
        for (int64_t q = 0; q <= m && !exact; ++q) exact = !std::isfinite(comp[q]);
        if (!exact) {
          // candidates: lo_j kDown <= hi_min kUp, i.e. comp_j <= thr
          const double thr = eta + (static_cast<double>(cmin) + eta) * near;
          int64_t cand[kMaxCandidates];
          int count = 0, win = 0;
          for (int64_t q = 0; q <= m; ++q) {
            const int64_t j = js[q];
            const double cq = static_cast<double>(comp[q]);
            L[pos_[j]] = fast_down(std::sqrt(std::max(0.0, (cq - eta) * lo_scale)) + slow[j]);
            if (cq <= thr) {
              if (count < kMaxCandidates) cand[count] = j;
              win = static_cast<int>(q);
              ++count;
            }
          }
          if (count == 1) {
            label = cand[0];
            ubest = upper(comp[win]);
          } else {
            // in increasing k, as assign's rule needs (more than kMaxCandidates: all K)
            for (int q = 1; q < std::min(count, kMaxCandidates); ++q)
              for (int r = q; r > 0 && cand[r - 1] > cand[r]; --r) std::swap(cand[r - 1], cand[r]);
            label = resolve_candidates_f32(xi, c, k, d, cand, std::min(count, kMaxCandidates + 1), dist);
          }
        }
      }
      if (exact) {
        label = exact_row(xi, c, k, d, row.data(), dist);
        store_row(i, row.data(), label, slow.data(), gslow.data());
      } else {
        // The group bounds of the groups looked into, of a's (a may have left the label) and
        // of the label's, from their centers' bounds now; each group once (a's is usually
        // among those looked into, and group_min was ~6% of an iteration).
        for (const int64_t g : {group_of_[a], group_of_[label]}) {
          bool have = false;
          for (int64_t q = 0; q < ng && !have; ++q) have = seen[q] == g;
          if (!have) seen[ng++] = g;
        }
        const int64_t pl = pos_[label];
        for (int64_t q = 0; q < ng; ++q) {
          const int64_t g = seen[q], p0 = gstart_[g];
          const float mn = group_min(L + p0, supp.data() + p0, gstart_[g + 1] - p0, pl - p0);
          Gi[g] = fast_down(static_cast<double>(mn) + gslow[g]);
        }
      }
      if (dist >= 0.0) ubest = std::sqrt(dist) * kLloydUp;
      if (dist2 != nullptr) {
        if (dist < 0.0) dist = exact_dist2_avx2(xi, c + label * d, d);
        dist2[i] = static_cast<float>(dist);
      }
      labels_[i] = label;
      u_[i] = (ubest - slow[label]) + 0x1p-50 * (ubest + slow[label]);
    }
  });
}

#else  // no AVX2 kernels here: lloyd_native never builds an ElkanLabels

void ElkanLabels::first_pass(const float*, float*) { TORCH_CHECK(false, "ElkanLabels needs AVX2"); }
void ElkanLabels::assign(const float*, float*) { TORCH_CHECK(false, "ElkanLabels needs AVX2"); }

#endif

}  // namespace cpu
}  // namespace kmgan_ext
