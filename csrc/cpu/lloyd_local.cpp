// Cluster-local labels for lloyd_native (lloyd_cpu.cpp), "auto"'s labeler from K >
// kLloydPanelMaxK: a row labelled a at the last assign can only move to a center within twice
// its distance to c_a, so each cluster's rows meet, in assign's GEMM tile, only those centers.
//
// For the rows of cluster a (labelled a by the last assign), R_a >= ||x_i - c_a|| now: the
// largest upper bound on a row's distance to c_a at that assign plus c_a's drift since (the
// triangle inequality). A center j with ||c_a - c_j|| / 2 > R_a is strictly farther from every
// such row than c_a (||x - c_j|| >= ||c_a - c_j|| - ||x - c_a|| > ||x - c_a||), so it can
// neither win nor tie; the others form C_a (a included), packed into 16-center panels once per
// assign. Every row of a then takes assign's candidate rule over C_a: the e_j formed by
// dist_tile, the candidates within 2 B_i of their minimum (the true argmin is among them, as it
// is among C_a), several decided by resolve_candidates_f32 (the reference's float64 distances,
// ties to the lowest index): exactly km.assign's labels. A row whose expansion could overflow
// takes the exact path over all K, as assign's. Before that, a row whose bound u_i (+ drift)
// is below half the distance from c_a to its nearest other center keeps its label unread
// (Hamerly's test, Elkan's step 1). Where the clusters' tiles would form more than kWholeWork
// of a whole pass's panels (no cluster structure: C_a ~ all K), the assign is one whole pass
// (C = all K, rows in index order), which is also the first assign.
//
// Unlike Elkan's bounds (lloyd_elkan.cpp) nothing is kept per (row, center), only u_i: every
// row not kept by Hamerly's test is read and meets its C_a, as a dense tile. On the bench's
// blobs (N = 70,000, d = K = 100: ten centers per blob) C_a is the ~10 centers of a's blob,
// one panel of 16 where a whole pass forms 7, while Elkan's row-by-row decisions (3.4
// distances formed per row, a bound test per group and center) cost more per row than that
// panel. 20 iterations from the same k-means++ centers, N = 70,000, 2 threads of this 2-core
// Xeon, min of 3-4 alternated calls, elkan vs local (ms): the bench's blobs (10 blobs, d = 100)
// K=17 66 vs 78, K=24 82 vs 86, K=32 92 vs 88, K=64 118 vs 97, K=100 140 vs 99, K=256 335 vs
// 146; 100 separated blobs d = 32 K=100 32 vs 28; uniform d = 16 K=100 250 vs 63, d = 4 K=64 64
// vs 36; Gaussian d = 32 K=64 220 vs 67, d = 100 K=100 490 vs 204, d = 100 K=256 1,167 vs 354
// (a whole pass each iteration; km.minibatch_step_ + km.assign per iteration: 376).
#include "lloyd_cpu.h"
#include "prefetch.h"
#include "avx2_reduce.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>

namespace kmgan_ext {
namespace cpu {
namespace {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define KMGAN_AVX2 __attribute__((target("avx2,fma")))

// xr = fl(x - s) and the float sum of its squares (in lanes: any order is within the bound
// lo that the callers take off it, as for assign's tile).
KMGAN_AVX2 float shift_row(const float* xi, const float* s, int64_t d, float* xr) {
  __m256 acc = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= d; j += 8) {
    const __m256 v = _mm256_sub_ps(_mm256_loadu_ps(xi + j), _mm256_loadu_ps(s + j));
    _mm256_storeu_ps(xr + j, v);
    acc = _mm256_fmadd_ps(v, v, acc);
  }
  float n2 = hsum(acc);
  for (; j < d; ++j) {
    xr[j] = xi[j] - s[j];
    n2 += xr[j] * xr[j];
  }
  return n2;
}

// Bit l set where e[l] <= thr, for the 16 e of one panel.
KMGAN_AVX2 inline unsigned panel_below(const float* e, float thr) {
  const __m256 t = _mm256_set1_ps(thr);
  const unsigned lo = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(e), t, _CMP_LE_OQ)));
  const unsigned hi = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(e + 8), t, _CMP_LE_OQ)));
  return lo | hi << 8;
}
#undef KMGAN_AVX2
#else
float shift_row(const float* xi, const float* s, int64_t d, float* xr) {
  float n2 = 0.0f;
  for (int64_t j = 0; j < d; ++j) {
    xr[j] = xi[j] - s[j];
    n2 += xr[j] * xr[j];
  }
  return n2;
}
inline unsigned panel_below(const float* e, float thr) {
  unsigned bits = 0;
  for (int l = 0; l < 16; ++l) bits |= static_cast<unsigned>(e[l] <= thr) << l;
  return bits;
}
#endif

// Rows per tile of one cluster: a multiple of the AVX-512 kernel's 12 rows and of the AVX2
// kernel's 6; the rows' x' (47 KB at d = 100) and their e stay in L2.
constexpr int64_t kLocalRows = 120;
// A whole pass instead where the clusters' tiles would form more than this share of its panels.
constexpr double kWholeWork = 0.75;

}  // namespace

LocalLabels::LocalLabels(const float* x, int64_t n, int64_t d, int64_t k)
    : x_(x), n_(n), d_(d), k_(k), labels_(n), u_(n), radius_(k, 0.0), drift_(k, 0.0) {}

void LocalLabels::moved(const std::vector<double>& drift) {
  drift_ = drift;
  first_ = false;
}

// half[a * K + j] <= ||c_a - c_j|| / 2, from assign's GEMM tile over the shifted centers
// themselves (rows x' = cs_a, as fl(c_a - s) is for a row of x) and its error bound, as Elkan's
// first pass bounds a row's distances (lloyd_elkan.cpp): ||c_a - s||^2 + e_j - sub. Formed per
// iteration; the K^2 / 2 float64 distances it replaced (their triangle split unevenly over the
// threads) weighed where the rows are few: 20 iterations at N = 2,560, K = 256, d = 100
// Gaussian 14.8 -> 11.0 ms, N = 20,000, K = 1,000 834 -> 678 ms.
std::vector<double> LocalLabels::half_distances(const std::vector<float>& cs, const std::vector<float>& packed,
                                                const std::vector<float>& pbias, double cmax) const {
  const int64_t k = k_, d = d_, panels = (k + kPanel - 1) / kPanel, kw = panels * kPanel;
  std::vector<float> e(static_cast<size_t>(k * kw)), pmin(static_cast<size_t>(k * panels));
  dist_tile(cs.data(), k, d, packed.data(), pbias.data(), panels, e.data(), kw, pmin.data(), panels);
  const double uf = std::ldexp(1.0, -24);
  std::vector<double> half(static_cast<size_t>(k * k));
  for (int64_t a = 0; a < k; ++a) {
    const float* ca = cs.data() + a * d;
    double n2 = 0.0;
    for (int64_t j = 0; j < d; ++j) n2 += static_cast<double>(ca[j]) * ca[j];
    const double xn = std::sqrt(n2);
    // ||c_a - s||^2 >= bias_a rounded down (formed in double, rounded to float once)
    const double xs2 = static_cast<double>(pbias[a]) * (1.0 - 2.0 * uf);
    const double sub = candidate_bound2_f32(xn, cmax, d) / 2.0 * (1.0 + 4.0 * uf) +
                       4.0 * uf * (xs2 + (xn + cmax) * (xn + cmax));
    for (int64_t j = 0; j < k; ++j)
      half[a * k + j] = 0.5 * std::sqrt(std::max(0.0, (xs2 + static_cast<double>(e[a * kw + j])) - sub)) * kLloydDown;
  }
  return half;
}

void LocalLabels::assign(const float* c, float* dist2) {
  const int64_t n = n_, d = d_, k = k_;
  std::vector<float> s, cs, bias;
  double cmax = 0.0;
  TORCH_CHECK(shifted_centers_f32(c, k, d, s, cs, bias, cmax), "lloyd_native: non-finite centers");
  // All K centers packed as dist_tile wants them (the padding's bias +inf): for the centers'
  // half distances and for a whole pass.
  const int64_t all_panels = (k + kPanel - 1) / kPanel;
  bias.resize(all_panels * kPanel, std::numeric_limits<float>::infinity());
  const std::vector<float> all_packed = pack_panels(cs.data(), k, d);
  // The rows to look at (all at the first assign) and C_a for each cluster, in increasing
  // index (resolve's order); or one whole pass (C = all K, index order) where the clusters'
  // tiles would form more than kWholeWork of its panels.
  std::vector<int64_t> count(k, 0), cstart(k + 1, 0), members;
  std::vector<char> look(n, 1);
  std::vector<double> kept(k, 0.0);  // the largest bound of a cluster's rows kept unread
  bool whole = first_;
  if (!first_) {
    const std::vector<double> half = half_distances(cs, all_packed, bias, cmax);
    std::vector<double> sep(k, std::numeric_limits<double>::infinity());  // min_{j != a} half
    for (int64_t a = 0; a < k; ++a)
      for (int64_t j = 0; j < k; ++j)
        if (j != a) sep[a] = std::min(sep[a], half[a * k + j]);
    // u_i + drift_a >= ||x_i - c_a|| now; below sep_a every other center is strictly farther
    // (Hamerly's test, Elkan's step 1): the row keeps its label unread (not when the exact
    // distances are asked for).
    for (int64_t i = 0; i < n; ++i) {
      const int64_t a = labels_[i];
      const double un = (u_[i] + drift_[a]) * kLloydUp;
      if (dist2 == nullptr && un < sep[a]) {
        look[i] = 0;
        u_[i] = un;
        kept[a] = std::max(kept[a], un);
      } else {
        ++count[a];
      }
    }
    double work = 0.0;
    for (int64_t a = 0; a < k; ++a) {
      cstart[a] = static_cast<int64_t>(members.size());
      if (count[a] == 0) continue;  // no rows: no panel
      // R_a >= ||x - c_a|| for a's rows; c_j with ||c_a - c_j|| / 2 > R_a is strictly farther
      // than c_a from each of them (NaN-free: finite centers)
      const double reach = (radius_[a] + drift_[a]) * kLloydUp;
      for (int64_t j = 0; j < k; ++j)
        if (j == a || !(half[a * k + j] > reach)) members.push_back(j);
      const int64_t m = static_cast<int64_t>(members.size()) - cstart[a];
      work += static_cast<double>(count[a]) * static_cast<double>((m + kPanel - 1) / kPanel);
    }
    cstart[k] = static_cast<int64_t>(members.size());
    whole = work > kWholeWork * static_cast<double>(n) * static_cast<double>((k + kPanel - 1) / kPanel);
  }
  if (whole) {
    count.assign(1, 0);
    for (int64_t i = 0; i < n; ++i) count[0] += look[i];
    cstart = {0, k};
    members.resize(k);
    for (int64_t j = 0; j < k; ++j) members[j] = j;
  }
  const int64_t clusters = whole ? 1 : k;
  // Each cluster's centers packed as dist_tile wants them, the padding's bias +inf (a whole
  // pass: all_packed).
  std::vector<int64_t> pstart(clusters + 1, 0);
  for (int64_t a = 0; a < clusters; ++a) pstart[a + 1] = pstart[a] + (cstart[a + 1] - cstart[a] + kPanel - 1) / kPanel;
  std::vector<float> packed(whole ? 0 : static_cast<size_t>(pstart[clusters] * kPanel * d)),
      pbias(whole ? 0 : static_cast<size_t>(pstart[clusters] * kPanel), std::numeric_limits<float>::infinity());
  if (!whole) {
    at::parallel_for(0, clusters, 1, [&](int64_t a0, int64_t a1) {
      std::vector<float> sub;
      for (int64_t a = a0; a < a1; ++a) {
        const int64_t m = cstart[a + 1] - cstart[a];
        if (m == 0) continue;
        sub.resize(static_cast<size_t>(m * d));
        for (int64_t q = 0; q < m; ++q) {
          const int64_t j = members[cstart[a] + q];
          std::copy(cs.data() + j * d, cs.data() + (j + 1) * d, sub.data() + q * d);
          pbias[pstart[a] * kPanel + q] = bias[j];
        }
        const std::vector<float> p = pack_panels(sub.data(), m, d);
        std::copy(p.begin(), p.end(), packed.data() + pstart[a] * kPanel * d);
      }
    });
  }
  const float* const panels_of = whole ? all_packed.data() : packed.data();
  const float* const bias_of = whole ? bias.data() : pbias.data();
  // The rows cluster by cluster (index order within one), in tiles of at most kLocalRows.
  std::vector<int64_t> rstart(clusters + 1, 0);
  for (int64_t a = 0; a < clusters; ++a) rstart[a + 1] = rstart[a] + count[a];
  std::vector<int64_t> order(rstart[clusters]);
  {
    std::vector<int64_t> fill(rstart.begin(), rstart.end() - 1);
    for (int64_t i = 0; i < n; ++i)
      if (look[i]) order[fill[whole ? 0 : labels_[i]]++] = i;
  }
  struct Tile {
    int64_t a, r0, rows;
  };
  std::vector<Tile> tiles;
  for (int64_t a = 0; a < clusters; ++a) {
    // near-equal tiles of whole 12-row blocks (the AVX-512 kernel's; rows past them go to the
    // slower AVX2 tile), the cluster's last na % 12 rows in its last tile: 130 rows are 60 + 70
    const int64_t na = count[a], blocks = na / 12, nt = std::max<int64_t>(1, (na + kLocalRows - 1) / kLocalRows);
    for (int64_t t = 0; t < nt; ++t) {
      const int64_t b = 12 * (blocks * t / nt), e = t + 1 == nt ? na : 12 * (blocks * (t + 1) / nt);
      TORCH_INTERNAL_ASSERT(e - b <= kLocalRows + 11);
      if (e > b) tiles.push_back({a, rstart[a] + b, e - b});
    }
  }
  const double safe_square = static_cast<double>(std::numeric_limits<float>::max()) / 16.0;
  const double uf = std::ldexp(1.0, -24);
  // ||x - s||^2 <= n2 (1 + 2 lo): n2 the float sum of the squares of fl(x - s)
  const double lo = 2.0 * (static_cast<double>(d) + 4.0) * uf;
  std::vector<double> radius(k, 0.0);
  std::mutex merge;
  at::parallel_for(0, static_cast<int64_t>(tiles.size()), 1, [&](int64_t t0, int64_t t1) {
    const int64_t wmax = (k + kPanel - 1) / kPanel * kPanel;
    // a tile holds at most kLocalRows rows in whole 12-row blocks plus its cluster's last 11
    constexpr int64_t cap = kLocalRows + 11;
    std::vector<float> xs(cap * d), e(cap * wmax), pmin(cap * (wmax / kPanel)), xn2(cap);
    std::vector<double> far(k, 0.0);
    constexpr int64_t kAhead = 4;  // rows gathered by label: the hardware prefetcher cannot guess them
    for (int64_t t = t0; t < t1; ++t) {
      const Tile& tile = tiles[t];
      const int64_t* rows = order.data() + tile.r0;
      const int64_t nr = tile.rows, a = tile.a;
      const int64_t panels = pstart[a + 1] - pstart[a], kw = panels * kPanel;
      const int64_t* cm = members.data() + cstart[a];
      const int64_t m = cstart[a + 1] - cstart[a];
      for (int64_t r = 0; r < nr; ++r) {
        if (r + kAhead < nr) prefetch_range(x_ + rows[r + kAhead] * d, x_ + (rows[r + kAhead] + 1) * d);
        xn2[r] = shift_row(x_ + rows[r] * d, s.data(), d, xs.data() + r * d);
      }
      dist_tile(xs.data(), nr, d, panels_of + pstart[a] * kPanel * d, bias_of + pstart[a] * kPanel, panels,
                e.data(), kw, pmin.data(), panels);
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t i = rows[r];
        const float* xi = x_ + i * d;
        const double xn = std::sqrt(static_cast<double>(xn2[r]));
        double dist = -1.0;
        int64_t label;
        int64_t cand[kMaxCandidates], local[kMaxCandidates];
        int ncand = 0;
        const double bound2 = candidate_bound2_f32(xn, cmax, d);
        if (!((xn + cmax) * (xn + cmax) < safe_square)) {
          ncand = kMaxCandidates + 1;  // the exact path over all K
        } else {
          const float* er = e.data() + r * kw;
          const float* pm = pmin.data() + r * panels;
          float best = std::numeric_limits<float>::infinity();
          for (int64_t p = 0; p < panels; ++p) best = std::min(best, pm[p]);
          const float thr = best + static_cast<float>(bound2);
          // (the padding's e is +inf: never a candidate)
          for (int64_t p = 0; p < panels && ncand <= kMaxCandidates; ++p) {
            if (!(pm[p] <= thr)) continue;
            for (unsigned bits = panel_below(er + p * kPanel, thr); bits != 0; bits &= bits - 1) {
              const int64_t q = p * kPanel + __builtin_ctz(bits);
              if (ncand < kMaxCandidates) {
                cand[ncand] = cm[q];
                local[ncand] = q;
              }
              if (++ncand > kMaxCandidates) break;
            }
          }
        }
        label = ncand == 1 ? cand[0] : resolve_candidates_f32(xi, c, k, d, cand, ncand, dist);
        labels_[i] = label;
        if (dist2 != nullptr && dist < 0.0) dist = exact_dist2_avx2(xi, c + label * d, d);
        if (dist2 != nullptr) dist2[i] = static_cast<float>(dist);
        if (dist < 0.0) {
          // An upper bound on ||x - c_label||^2 from the tile, without reading x again:
          // ||x - s||^2 + exact e <= n2 (1 + 2 lo) + e + B (assign_cpu.cpp's B_i bounds e's
          // error, half the candidate bound; lo n2's), widened by 8u for the double sums here
          // and by float's smallest normal (underflow).
          const int64_t q = local[0];  // the single candidate
          const double b = bound2 / 2.0;
          dist = (static_cast<double>(xn2[r]) * (1.0 + 2.0 * lo) + static_cast<double>(e[r * kw + q]) + b) *
                     (1.0 + 8.0 * uf) +
                 std::numeric_limits<float>::min();
        }
        far[label] = std::max(far[label], dist);
        u_[i] = std::sqrt(dist) * kLloydUp;
      }
    }
    std::lock_guard<std::mutex> hold(merge);
    for (int64_t q = 0; q < k; ++q) radius[q] = std::max(radius[q], far[q]);
  });
  for (int64_t q = 0; q < k; ++q) radius_[q] = std::max(std::sqrt(radius[q]) * kLloydUp, kept[q]);
}

}  // namespace cpu
}  // namespace kmgan_ext
