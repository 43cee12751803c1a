// km.assign(..., metric="cosine") on CPU (issue 12): the largest cosine similarity, exact.
//
// labels[i] = argmax_k cos(x_i, c_k), cos = x.c / (||x|| ||c||), 0 where ||x|| ||c|| == 0
// (a zero row or a zero center is orthogonal to everything); dist2[i] = 2 - 2 cos of that
// center (= ||x/||x|| - c/||c||||^2), clamped at 0. Ties go to the lowest k; NaN propagates
// as torch.argmin's rule reads on -cos (the lowest k whose cosine is NaN).
//
// Per tile of rows a GEMM forms s_k = x . u_k with u_k = c_k / ||c_k|| (the unit centers, K x d,
// formed once; x is never normalised or copied beyond the per-tile acc conversion of 16-bit
// rows). ||x_i|| > 0 is the same for every k, so argmax s_k = argmax cos. Rounding can reorder
// near-ties: |computed s_k - ||x|| cos_k| <= (gamma_d + 2u) ||x|| (the dot product over
// sum |x_j u_j| <= ||x||, plus the rounding of u_k), and the float64 reference's own key
// (cos |cos|, reference.cosine_keys) misplaces cos by at most (d + 5) 2^-53. Every center
// within twice the sum of both bounds of the best s stays a candidate; when more than one
// does, their keys are recomputed exactly as the reference forms them (canonical_key) and
// decide. So the label is the float64 reference's for any rounding of the GEMM, as in
// assign_cpu.cpp.
//
// A row (or center set) that is not finite, or whose norm could overflow the GEMM's acc
// (||x|| past max / 16), takes the exact path over all K.
#include "assign_cpu.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>

namespace kmgan_ext {
namespace cpu {
namespace {

// sum_j a_j^2 in double, j in index order, each step rounded (no FMA: -ffp-contract=off):
// the reference's squared norms (reference._norms2).
template <typename scalar_t>
double canonical_norm2(const scalar_t* a, int64_t d) {
  double s = 0.0;
  for (int64_t j = 0; j < d; ++j) {
    const double t = static_cast<double>(a[j]);
    s += t * t;
  }
  return s;
}

// The cosine, dot (index order) / (||a|| ||b||), 0 where that product is 0: dist2's value.
template <typename scalar_t>
double canonical_cosine(const scalar_t* a, double na, const scalar_t* b, double nb, int64_t d) {
  double dot = 0.0;
  for (int64_t j = 0; j < d; ++j) dot += static_cast<double>(a[j]) * static_cast<double>(b[j]);
  const double den = na * nb;
  return den == 0.0 ? 0.0 : dot / den;
}

// The label-deciding key exactly as reference.cosine_keys forms it: dot |dot| / (||a||^2
// ||b||^2), 0 where the denominator is 0; sums in index order, no square root (torch's sqrt
// is not correctly rounded, this one would be: the key avoids it on both sides).
template <typename scalar_t>
double canonical_key(const scalar_t* a, double na2, const scalar_t* b, double nb2, int64_t d) {
  double dot = 0.0;
  for (int64_t j = 0; j < d; ++j) dot += static_cast<double>(a[j]) * static_cast<double>(b[j]);
  const double den2 = na2 * nb2;
  return den2 == 0.0 ? 0.0 : dot * std::fabs(dot) / den2;
}

// The first NaN (NaN propagates), else the first maximum of the key: torch.argmin's rule on
// -key. `keys` lists the centers to compare in increasing k (all K when null).
template <typename scalar_t>
int64_t exact_argmax(const scalar_t* xi, double nx2, const scalar_t* c, const double* cn2,
                     const int64_t* keys, int64_t m, int64_t d) {
  int64_t label = -1;
  double best = -std::numeric_limits<double>::infinity();
  for (int64_t t = 0; t < m; ++t) {
    const int64_t q = keys ? keys[t] : t;
    const double s = canonical_key(xi, nx2, c + q * d, cn2[q], d);
    if (std::isnan(s)) return q;
    if (s > best || label < 0) {
      best = s;
      label = q;
    }
  }
  return label;
}

// The unit centers u_k = c_k / ||c_k|| in acc, the centers' norms as the reference forms them,
// and the window of the score comparisons: shared by the label (cosine_kernel) and the top-k
// (cosine_topk_kernel) kernels.
template <typename scalar_t>
struct CosineScores {
  using acc = acc_t<scalar_t>;
  const scalar_t* c;
  int64_t k, d;
  std::vector<double> cn2, cn;
  Tensor unit;
  bool centers_finite = true;
  double tau, ref_tau, floor_err, key_floor, safe_norm;

  CosineScores(const scalar_t* c_, int64_t k_, int64_t d_) : c(c_), k(k_), d(d_), cn2(k_), cn(k_) {
    unit = at::empty({k, d}, at::TensorOptions().dtype(c10::CppTypeToScalarType<acc>::value));
    acc* up = unit.template data_ptr<acc>();
    for (int64_t q = 0; q < k; ++q) {
      const scalar_t* cq = c + q * d;
      cn2[q] = canonical_norm2(cq, d);
      cn[q] = std::sqrt(cn2[q]);
      centers_finite = centers_finite && std::isfinite(cn[q]);
      for (int64_t j = 0; j < d; ++j) {
        up[q * d + j] = cn[q] > 0.0 ? static_cast<acc>(static_cast<double>(cq[j]) / cn[q]) : acc(0);
      }
    }
    const double u = std::numeric_limits<acc>::epsilon() / 2;
    tau = 2.0 * (static_cast<double>(d) + 4.0) * u;
    ref_tau = (static_cast<double>(d) + 6.0) * std::ldexp(1.0, -53);
    // Products that underflow lose up to denorm_min each, whatever ||x|| is (and the key's
    // dot |dot| may underflow in double: 1e-150 of ||x|| covers it).
    floor_err = 2.0 * static_cast<double>(d) * static_cast<double>(std::numeric_limits<acc>::denorm_min());
    key_floor = 1e-150;
    safe_norm = static_cast<double>(std::numeric_limits<acc>::max()) / 16.0;
  }

  // Twice the bound on |computed s_k - ||x|| cos_k| plus the reference key's misplacement: a
  // center whose score is more than this below another's cannot rank above it exactly.
  double window(double nx) const { return 2.0 * ((tau + ref_tau + key_floor) * nx + floor_err); }

  // fn(scratch, i, nx2, nx, s) for every row i, with s its K computed scores, or null where
  // the row must be decided exactly over all K (NaN/Inf anywhere, or a norm past max / 16).
  // Scratch is default-constructed once per chunk of tiles (per thread).
  template <typename Scratch, typename F>
  void for_rows(const scalar_t* x, int64_t n, F fn) const {
    const auto acc_type = c10::CppTypeToScalarType<acc>::value;
    const int64_t tile_rows = std::min<int64_t>(512, std::max<int64_t>(1, (int64_t(1) << 16) / k));
    const int64_t tiles = (n + tile_rows - 1) / tile_rows;
    const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 22) / std::max<int64_t>(1, tile_rows * k * d));
    at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
      c10::InferenceMode no_autograd;
      std::vector<acc> xbuf(std::is_same<acc, scalar_t>::value ? 0 : tile_rows * d);
      std::vector<acc> scores(tile_rows * k);
      Scratch scratch;
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r0 = t * tile_rows;
        const int64_t nr = std::min(tile_rows, n - r0);
        const acc* xt;
        if constexpr (std::is_same<acc, scalar_t>::value) {
          xt = x + r0 * d;
        } else {
          for (int64_t e = 0; e < nr * d; ++e) xbuf[e] = static_cast<acc>(x[r0 * d + e]);
          xt = xbuf.data();
        }
        const Tensor xt_t = at::from_blob(const_cast<acc*>(xt), {nr, d}, at::TensorOptions().dtype(acc_type));
        Tensor out = at::from_blob(scores.data(), {nr, k}, at::TensorOptions().dtype(acc_type));
        at::mm_out(out, xt_t, unit.t());
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t i = r0 + r;
          const double nx2 = canonical_norm2(x + i * d, d), nx = std::sqrt(nx2);
          const bool exact = !(centers_finite && nx < safe_norm);
          fn(scratch, i, nx2, nx, exact ? nullptr : scores.data() + r * k);
        }
      }
    });
  }
};

struct CosineScratch {
  std::vector<int64_t> keys;
};

template <typename scalar_t>
void cosine_kernel(const scalar_t* x, int64_t n, int64_t d, const scalar_t* c, int64_t k,
                   int64_t* labels, acc_t<scalar_t>* dist2) {
  using acc = acc_t<scalar_t>;
  const CosineScores<scalar_t> cs(c, k, d);
  cs.template for_rows<CosineScratch>(x, n, [&](CosineScratch& sc, int64_t i, double nx2, double nx,
                                                const acc* s) {
    const scalar_t* xi = x + i * d;
    int64_t label;
    if (s == nullptr) {  // NaN/Inf or huge: exact over all K
      label = exact_argmax(xi, nx2, c, cs.cn2.data(), nullptr, k, d);
    } else if (nx == 0.0) {  // orthogonal to every center: all cosines 0
      label = 0;
    } else {
      acc top = s[0];
      for (int64_t q = 1; q < k; ++q) top = s[q] > top ? s[q] : top;
      const double thr = static_cast<double>(top) - cs.window(nx);
      sc.keys.resize(k);
      int64_t m = 0;
      for (int64_t q = 0; q < k; ++q) {
        if (static_cast<double>(s[q]) >= thr) sc.keys[m++] = q;
      }
      label = m == 1 ? sc.keys[0] : exact_argmax(xi, nx2, c, cs.cn2.data(), sc.keys.data(), m, d);
    }
    labels[i] = label;
    if (dist2 != nullptr) {
      const double dist = 2.0 - 2.0 * canonical_cosine(xi, nx, c + label * d, cs.cn[label], d);
      dist2[i] = static_cast<acc>(dist > 0.0 ? dist : (dist == dist ? 0.0 : dist));
    }
  });
}

// (key, index) a before b in the top-k order: NaN first, then the larger key, then the lower
// index (torch.sort of -key, NaN mapped first, stable: reference.assign_topk).
inline bool key_before(double ka, int64_t ia, double kb, int64_t ib) {
  const bool na = std::isnan(ka), nb = std::isnan(kb);
  if (na != nb) return na;
  if (!na && ka != kb) return ka > kb;
  return ia < ib;
}

struct TopkScratch {
  std::vector<double> vals, key;
  std::vector<int64_t> cand, order;
};

// The k largest cosines of every row. Let v be the k-th largest computed score of a row: a
// center whose score is below v - window(||x||) is exactly below each of the k centers scored
// >= v, so it is not in the top k. The others are re-keyed exactly as the reference
// (canonical_key) and sorted by key_before: the reference's answer for any GEMM rounding.
// Rows that cannot be scored (see for_rows) and zero rows are keyed over all K.
template <typename scalar_t>
void cosine_topk_kernel(const scalar_t* x, int64_t n, int64_t d, const scalar_t* c, int64_t kc,
                        int64_t k, int64_t* labels, acc_t<scalar_t>* dist2) {
  using acc = acc_t<scalar_t>;
  const CosineScores<scalar_t> cs(c, kc, d);
  cs.template for_rows<TopkScratch>(x, n, [&](TopkScratch& sc, int64_t i, double nx2, double nx,
                                              const acc* s) {
    const scalar_t* xi = x + i * d;
    sc.cand.clear();
    if (s != nullptr && nx > 0.0) {
      sc.vals.assign(s, s + kc);
      std::nth_element(sc.vals.begin(), sc.vals.begin() + (k - 1), sc.vals.end(),
                       std::greater<double>());
      const double thr = sc.vals[k - 1] - cs.window(nx);
      for (int64_t q = 0; q < kc; ++q) {
        if (static_cast<double>(s[q]) >= thr) sc.cand.push_back(q);
      }
    } else {
      sc.cand.resize(kc);
      std::iota(sc.cand.begin(), sc.cand.end(), 0);
    }
    const int64_t m = static_cast<int64_t>(sc.cand.size());
    sc.key.resize(m);
    for (int64_t t = 0; t < m; ++t) {
      sc.key[t] = canonical_key(xi, nx2, c + sc.cand[t] * d, cs.cn2[sc.cand[t]], d);
    }
    sc.order.resize(m);
    std::iota(sc.order.begin(), sc.order.end(), 0);
    std::partial_sort(sc.order.begin(), sc.order.begin() + k, sc.order.end(), [&](int64_t a, int64_t b) {
      return key_before(sc.key[a], sc.cand[a], sc.key[b], sc.cand[b]);
    });
    for (int64_t j = 0; j < k; ++j) {
      const int64_t q = sc.cand[sc.order[j]];
      labels[i * k + j] = q;
      const double dist = 2.0 - 2.0 * canonical_cosine(xi, nx, c + q * d, cs.cn[q], d);
      dist2[i * k + j] = static_cast<acc>(dist > 0.0 ? dist : (dist == dist ? 0.0 : dist));
    }
  });
}

}  // namespace

void assign_cosine_into(const Tensor& x, const Tensor& centers, const Tensor& labels,
                        const Tensor& dist2) {
  const int64_t n = x.size(0), d = x.size(1), k = centers.size(0);
  if (n == 0) return;
  KMGAN_DISPATCH_FLOATING(x.scalar_type(), "assign_native", [&] {
    using acc = acc_t<scalar_t>;
    cosine_kernel(x.data_ptr<scalar_t>(), n, d, centers.data_ptr<scalar_t>(), k,
                  labels.data_ptr<int64_t>(), dist2.defined() ? dist2.data_ptr<acc>() : nullptr);
  });
}

void assign_cosine_topk_into(const Tensor& x, const Tensor& centers, int64_t k,
                             const Tensor& labels, const Tensor& dist2) {
  const int64_t n = x.size(0), d = x.size(1), kc = centers.size(0);
  if (n == 0) return;
  KMGAN_DISPATCH_FLOATING(x.scalar_type(), "assign_topk_native", [&] {
    using acc = acc_t<scalar_t>;
    cosine_topk_kernel(x.data_ptr<scalar_t>(), n, d, centers.data_ptr<scalar_t>(), kc, k,
                       labels.data_ptr<int64_t>(), dist2.data_ptr<acc>());
  });
}

void assign_cosine_backward_into(const Tensor& grad_dist2, const Tensor& x, const Tensor& centers,
                                 const Tensor& labels, const Tensor& gx, const Tensor& gc) {
  const int64_t n = x.size(0), d = x.size(1), k = centers.size(0);
  KMGAN_DISPATCH_FLOATING(x.scalar_type(), "assign_backward_native", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* cp = centers.data_ptr<scalar_t>();
    const int64_t* lp = labels.data_ptr<int64_t>();
    const Tensor g = grad_dist2.to(at::kDouble).contiguous();
    const double* gp = g.data_ptr<double>();
    // dist2 = 2 - 2 cos: d/dx = -2 (c / (|x||c|) - cos x / |x|^2), d/dc = -2 (x / (|x||c|) -
    // cos c / |c|^2), times the upstream gradient; 0 where |x||c| == 0 (cos is 0 there).
    std::vector<double> a(n), bx(n), bc(n);
    at::parallel_for(0, n, std::max<int64_t>(1, kParallelElems / std::max<int64_t>(1, d)),
                     [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const scalar_t* xi = xp + i * d;
        const scalar_t* cl = cp + lp[i] * d;
        const double nx = std::sqrt(canonical_norm2(xi, d)), nc = std::sqrt(canonical_norm2(cl, d));
        const double den = nx * nc;
        if (den == 0.0) {
          a[i] = bx[i] = bc[i] = 0.0;
          continue;
        }
        const double cs = canonical_cosine(xi, nx, cl, nc, d);
        a[i] = -2.0 * gp[i] / den;          // on c (for gx) and on x (for gc)
        bx[i] = 2.0 * gp[i] * cs / (nx * nx);  // on x (for gx)
        bc[i] = 2.0 * gp[i] * cs / (nc * nc);  // on c (for gc)
      }
    });
    scalar_t* gxp = gx.data_ptr<scalar_t>();
    scalar_t* gcp = gc.defined() ? gc.data_ptr<scalar_t>() : nullptr;
    WideSum<scalar_t> sums(gcp ? k * d : 0);
    double* sc = gcp && WideSum<scalar_t>::compensated ? sums.comp.data() : nullptr;
    for_accumulator_blocks(n, d, gcp ? k : 0, sums.sum.data(), sc,
                           [&](int64_t j0, int64_t j1, double* s, double* e, int64_t ld) {
      for (int64_t i = 0; i < n; ++i) {
        const scalar_t* xi = xp + i * d;
        const scalar_t* cl = cp + lp[i] * d;
        for (int64_t j = j0; j < j1; ++j) {
          const double xv = static_cast<double>(xi[j]), cv = static_cast<double>(cl[j]);
          gxp[i * d + j] = static_cast<scalar_t>(a[i] * cv + bx[i] * xv);
          if (gcp) WideSum<scalar_t>::add_at(s, e, lp[i] * ld + (j - j0), a[i] * xv + bc[i] * cv);
        }
      }
    });
    if (gcp) {
      for (int64_t e = 0; e < k * d; ++e) gcp[e] = static_cast<scalar_t>(sums.value(e));
    }
  });
}

}  // namespace cpu
}  // namespace kmgan_ext
