// km.assign(x, centers, k=k) on CPU: the k nearest centers of every row, ascending, exact.
//
// Each thread takes tiles of rows; per tile and block of centers a GEMM forms the distances
// (distance_tile.h) into a per-thread buffer, and each row folds the block into a running
// list of its L = k + kSlack smallest computed distances (sorted; a block's entry that does
// not beat the list's last is one comparison). The (N, K) matrix never exists beyond a tile.
//
// Exactness: every computed distance is within E_i (DistanceTiles::bound) of the exact one.
// Let T = (k-th smallest computed) + 2 E_i. A center whose computed distance exceeds T has an
// exact distance above that of each of the k listed centers, so it is not in the top k. When
// the list holds every center with a computed distance <= T (it is not full, or its last
// entry exceeds T), those candidates are re-scored in float64 exactly as the reference
// (canonical_dist2) and sorted by (distance, index): the answer is the float64 reference's.
// Otherwise (more than kSlack near-ties at the k-th place), and for rows whose expansion may
// overflow or that hold NaN/Inf, the row is scored in float64 over all K. Order: NaN
// distances first (lowest index first, torch.argmin's rule for column 0), then ascending,
// ties to the lowest index. dist2 is the float64 distance rounded (clamped at 0).
#include <algorithm>
#include <numeric>

#include "assign_cpu.h"
#include "distance_tile.h"

namespace kmgan_ext {
namespace cpu {
namespace {

constexpr int64_t kSlack = 8;

// a before b: NaN first, then the smaller distance, then the lower index.
inline bool exact_before(double da, int64_t ia, double db, int64_t ib) {
  const bool na = std::isnan(da), nb = std::isnan(db);
  if (na != nb) return na;
  if (!na && da != db) return da < db;
  return ia < ib;
}

// Sorts the candidate centers cand (re-scored into dist) and writes the first k.
template <typename acc>
void write_sorted(std::vector<int64_t>& cand, std::vector<double>& dist, int64_t k, int64_t* lab,
                  acc* d2) {
  std::vector<int64_t> order(cand.size());
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int64_t a, int64_t b) {
    return exact_before(dist[a], cand[a], dist[b], cand[b]);
  });
  for (int64_t j = 0; j < k; ++j) {
    const double v = dist[order[j]];
    lab[j] = cand[order[j]];
    d2[j] = static_cast<acc>(v > 0.0 ? v : (v == v ? 0.0 : v));
  }
}

template <typename scalar_t>
void topk_kernel(const scalar_t* x, int64_t n, int64_t d, const scalar_t* c, int64_t kc,
                 int64_t k, int64_t* labels, acc_t<scalar_t>* dist2) {
  using acc = acc_t<scalar_t>;
  const DistanceTiles<scalar_t> dt(c, kc, d);
  const int64_t L = std::min(kc, k + kSlack);
  const int64_t tile_rows = tile_rows_for(kc);
  const int64_t kb_max = std::min(kc, kTileCenterBlock);
  const int64_t tiles = (n + tile_rows - 1) / tile_rows;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 22) / std::max<int64_t>(1, tile_rows * kc * std::max<int64_t>(d, 1)));
  at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
    c10::InferenceMode no_autograd;
    std::vector<acc> xt(tile_rows * d), xn2(tile_rows), buf(tile_rows * kb_max);
    std::vector<acc> lv(tile_rows * L);       // each row's list: values ascending
    std::vector<int64_t> li(tile_rows * L);   // and their centers
    std::vector<int64_t> cnt(tile_rows);
    std::vector<int64_t> cand;
    std::vector<double> cd;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = t * tile_rows, nr = std::min(tile_rows, n - r0);
      dt.shift_rows(x + r0 * d, nr, xt.data(), xn2.data());
      std::fill(cnt.begin(), cnt.begin() + nr, 0);
      for (int64_t k0 = 0; k0 < kc; k0 += kb_max) {
        const int64_t kb = std::min(kb_max, kc - k0);
        dt.block(xt.data(), xn2.data(), nr, k0, kb, buf.data());
        for (int64_t r = 0; r < nr; ++r) {
          const acc* e = buf.data() + r * kb;
          acc* v = lv.data() + r * L;
          int64_t* ix = li.data() + r * L;
          int64_t m = cnt[r];
          for (int64_t q = 0; q < kb; ++q) {
            const acc val = e[q];
            // Centers arrive in increasing index: strict < keeps the lower index on ties.
            if (m == L && !(val < v[L - 1])) continue;
            if (val != val) continue;  // such a row is rescored over all K below
            int64_t p = m < L ? m++ : L - 1;
            while (p > 0 && val < v[p - 1]) {
              v[p] = v[p - 1];
              ix[p] = ix[p - 1];
              --p;
            }
            v[p] = val;
            ix[p] = k0 + q;
          }
          cnt[r] = m;
        }
      }
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t i = r0 + r;
        const scalar_t* xi = x + i * d;
        const acc* v = lv.data() + r * L;
        const int64_t* ix = li.data() + r * L;
        cand.clear();
        const bool safe = dt.safe(xn2[r]) && cnt[r] >= k;
        if (safe) {
          const double thr = static_cast<double>(v[k - 1]) + 2.0 * dt.bound(xn2[r]);
          const bool complete = cnt[r] < L || L == kc || static_cast<double>(v[L - 1]) > thr;
          if (complete) {
            for (int64_t j = 0; j < cnt[r] && static_cast<double>(v[j]) <= thr; ++j) cand.push_back(ix[j]);
          }
        }
        if (cand.empty()) {  // the float64 path over all K
          cand.resize(kc);
          std::iota(cand.begin(), cand.end(), 0);
        }
        cd.resize(cand.size());
        for (size_t j = 0; j < cand.size(); ++j) cd[j] = canonical_dist2(xi, c + cand[j] * d, d);
        write_sorted(cand, cd, k, labels + i * k, dist2 + i * k);
      }
    }
  });
}

// One problem: x (N, d), centers (K, d) contiguous -> labels, dist2 (N, k).
void topk_into(const Tensor& x, const Tensor& centers, int64_t k, bool cosine, const Tensor& labels,
               const Tensor& dist2) {
  const int64_t n = x.size(0);
  if (n == 0) return;
  if (cosine) {  // metric="cosine" (assign_cosine_cpu.cpp)
    assign_cosine_topk_into(x, centers, k, labels, dist2);
    return;
  }
  KMGAN_DISPATCH_FLOATING(x.scalar_type(), "assign_topk_native", [&] {
    topk_kernel(x.data_ptr<scalar_t>(), n, x.size(1), centers.data_ptr<scalar_t>(), centers.size(0),
                k, labels.data_ptr<int64_t>(), dist2.data_ptr<acc_t<scalar_t>>());
  });
}

// B independent problems, x (B, N, d) with centers (B, K, d) -> (B, N, k), each problem
// exactly as the 2-D call computes it alone, parallel as assign_batched_native (assign_cpu.cpp):
// one parallel region over the problems when B >= threads, else each problem's row tiles over
// every thread in turn.
std::tuple<Tensor, Tensor> assign_topk_batched_native(const Tensor& x_in, const Tensor& centers_in,
                                                      int64_t k, bool cosine) {
  check_cpu("x", x_in);
  check_cpu("centers", centers_in);
  TORCH_CHECK_VALUE(x_in.dim() == 3 && centers_in.dim() == 3 && x_in.size(0) == centers_in.size(0),
                    "batched problems need x (B, N, d) and centers (B, K, d) with the same B, got ",
                    x_in.sizes(), " and ", centers_in.sizes());
  const int64_t b = x_in.size(0), n = x_in.size(1), kc = centers_in.size(1), d = x_in.size(2);
  TORCH_CHECK_VALUE(k >= 1 && k <= kc, "k must lie in [1, K] = [1, ", kc,
                    "] (centers.shape[1]), got k = ", k);
  Tensor labels = at::empty({b, n, k}, x_in.options().dtype(at::kLong));
  Tensor dist2 = at::empty({b, n, k}, x_in.options().dtype(out_dtype(x_in)));
  if (b == 0) return {labels, dist2};
  check_centers("centers", centers_in[0], "x", x_in[0]);
  if (n == 0) return {labels, dist2};
  const Tensor x = x_in.contiguous(), centers = centers_in.contiguous();
  auto one = [&](int64_t p) { topk_into(x[p], centers[p], k, cosine, labels[p], dist2[p]); };
  if (b >= at::get_num_threads()) {
    const int64_t work = std::max<int64_t>(1, n * kc * std::max<int64_t>(d, 1));
    const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 22) / work);
    at::parallel_for(0, b, grain, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) one(p);
    });
  } else {
    for (int64_t p = 0; p < b; ++p) one(p);
  }
  return {labels, dist2};
}

std::tuple<Tensor, Tensor> assign_topk_native(const Tensor& x_in, const Tensor& centers_in, int64_t k,
                                              bool cosine) {
  if (x_in.dim() == 3) return assign_topk_batched_native(x_in, centers_in, k, cosine);
  check_features("x", x_in);
  check_centers("centers", centers_in, "x", x_in);
  TORCH_CHECK_VALUE(k >= 1 && k <= centers_in.size(0), "k must lie in [1, K] = [1, ",
                    centers_in.size(0), "] (centers.shape[0]), got k = ", k);
  const Tensor x = x_in.contiguous(), centers = centers_in.contiguous();
  const int64_t n = x.size(0);
  Tensor labels = at::empty({n, k}, x.options().dtype(at::kLong));
  Tensor dist2 = at::empty({n, k}, x.options().dtype(out_dtype(x)));
  topk_into(x, centers, k, cosine, labels, dist2);
  return {labels, dist2};
}

}  // namespace

TORCH_LIBRARY_IMPL(kmgan_ext, CPU, m) { m.impl("assign_topk_native", &assign_topk_native); }

}  // namespace cpu
}  // namespace kmgan_ext
