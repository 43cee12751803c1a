// km.soft_assign on CPU: (N, K) responsibilities q, fused with an online normaliser.
//
// Forward: per tile of rows and block of centers, a GEMM forms the distances D
// (distance_tile.h) in a per-thread buffer; the scores s = -D / T (softmax) or
// -(alpha + 1) / 2 log1p(D / alpha) (Student-t, in log space: (1 + D/alpha)^-(alpha+1)/2
// underflows to 0 for large D, the log does not) are written into q itself, while each row
// keeps a running max m and sum Z = sum exp(s - m) (rescaled when m grows): q holds
// exp(s - its block's max), so a last pass over the row only multiplies each block by
// exp(block max - m) / Z (one exp per entry, not two: with two the forward took 2.0x torch's
// softmax of cdist, with one 1.4x, 1 thread, N=16384 K=256 d=64, load ~10; Student-t below).
// Only q and one tile hold (N, K) values.
// A row whose scores are all equal gets exp(0) / K, uniform, whatever their size. Rows whose
// expansion may overflow (or holding NaN/Inf) are scored in float64 from the inputs.
//
// Backward: with W = dL/dD = q (G - rowsum(G q)) s'(D), s' = -1/T or -(alpha+1)/(2(alpha+D)),
// grad_x = 2 (rowsum(W) x' - W c') and grad_c = -2 (W^T x' - colsum(W) c') (x' = x - shift,
// c' = c - shift: the same differences). W is formed a tile at a time (D recomputed by the
// GEMM for Student-t, not stored); grad_x by row tiles, grad_c by blocks of centers over all
// rows in index order into double sums: bitwise the same for any thread count. Rows whose
// expansion may overflow (not dt.safe, as in the forward) are done in float64 by direct
// differences from the inputs.
#include "distance_tile.h"

#include <string_view>

namespace kmgan_ext {
namespace cpu {
namespace {

struct SoftParams {
  bool student_t;
  double alpha, temperature;
  template <typename T>
  T score(T dist) const {
    const T dd = dist > T(0) ? dist : (dist == dist ? T(0) : dist);
    return student_t ? T(-0.5 * (alpha + 1.0)) * std::log1p(dd / T(alpha)) : -dd / T(temperature);
  }
  // ds/dD
  template <typename T>
  T slope(T dist) const {
    const T dd = dist > T(0) ? dist : T(0);
    return student_t ? T(-0.5 * (alpha + 1.0)) / (T(alpha) + dd) : T(-1.0 / temperature);
  }
};

SoftParams parse(std::string_view kind, double alpha, double temperature) {
  TORCH_CHECK_VALUE(kind == "student_t" || kind == "softmax",
                    "kind must be 'student_t' or 'softmax', got '", kind, "'");
  TORCH_CHECK_VALUE(alpha > 0.0 && std::isfinite(alpha), "alpha must be a finite float > 0, got ", alpha);
  TORCH_CHECK_VALUE(temperature > 0.0 && std::isfinite(temperature),
                    "temperature must be a finite float > 0, got ", temperature);
  return {kind == "student_t", alpha, temperature};
}

template <typename scalar_t>
void soft_forward(const scalar_t* x, int64_t n, int64_t d, const scalar_t* c, int64_t kc,
                  const SoftParams& p, acc_t<scalar_t>* q) {
  using acc = acc_t<scalar_t>;
  const DistanceTiles<scalar_t> dt(c, kc, d);
  const int64_t tile_rows = tile_rows_for(kc), kb_max = std::min(kc, kTileCenterBlock);
  const int64_t tiles = (n + tile_rows - 1) / tile_rows;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 22) / std::max<int64_t>(1, tile_rows * kc * std::max<int64_t>(d, 1)));
  at::parallel_for(0, tiles, grain, [&](int64_t t0, int64_t t1) {
    c10::InferenceMode no_autograd;
    std::vector<acc> xt(tile_rows * d), xn2(tile_rows), buf(tile_rows * kb_max);
    std::vector<acc> m(tile_rows);
    std::vector<double> z(tile_rows);
    const int64_t nblocks = (kc + kb_max - 1) / kb_max;
    std::vector<acc> block_max(tile_rows * nblocks);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = t * tile_rows, nr = std::min(tile_rows, n - r0);
      dt.shift_rows(x + r0 * d, nr, xt.data(), xn2.data());
      std::fill(m.begin(), m.begin() + nr, -std::numeric_limits<acc>::infinity());
      std::fill(z.begin(), z.begin() + nr, 0.0);
      for (int64_t b = 0, k0 = 0; k0 < kc; ++b, k0 += kb_max) {
        const int64_t kb = std::min(kb_max, kc - k0);
        dt.block(xt.data(), xn2.data(), nr, k0, kb, buf.data());
        for (int64_t r = 0; r < nr; ++r) {
          if (!dt.safe(xn2[r])) continue;  // scored in float64 below
          const acc* e = buf.data() + r * kb;
          acc* qr = q + (r0 + r) * kc + k0;
          // One exp (or one division) per entry: q holds the block's terms relative to the
          // block's largest, exp(s - bm); once the row's max and sum are known, one multiply
          // rescales each block. Student-t in ratio form: with t = 1 + D / alpha and tb the
          // block's smallest t, exp(s - bm) = (tb / t)^((alpha + 1) / 2), a division for DEC's
          // alpha = 1: forward 94 ms against 421 ms with log1p + exp and torch's 116 ms
          // (N=16384 K=256 d=64, 1 thread, load ~13 on 2 cores: ratios only).
          acc bm = -std::numeric_limits<acc>::infinity();
          double sb = 0.0;
          if (p.student_t) {
            const acc inv_a = acc(1.0 / p.alpha), pw = acc(0.5 * (p.alpha + 1.0));
            acc tb = std::numeric_limits<acc>::infinity();
            for (int64_t j = 0; j < kb; ++j) {
              const acc dd = e[j] > acc(0) ? e[j] : (e[j] == e[j] ? acc(0) : e[j]);
              qr[j] = acc(1) + dd * inv_a;  // NaN stays NaN
              tb = qr[j] < tb ? qr[j] : tb;
            }
            bm = -pw * std::log(tb);
            block_max[r * nblocks + b] = bm;
            if (bm == -std::numeric_limits<acc>::infinity()) {
              std::fill(qr, qr + kb, acc(0));
              continue;
            }
            const bool unit = p.alpha == 1.0;
            for (int64_t j = 0; j < kb; ++j) {
              const acc ratio = tb / qr[j];
              qr[j] = unit ? ratio : std::pow(ratio, pw);
              sb += static_cast<double>(qr[j]);
            }
          } else {
            for (int64_t j = 0; j < kb; ++j) {
              qr[j] = p.score(e[j]);
              bm = qr[j] > bm ? qr[j] : bm;
            }
            // A block whose scores are all -inf (-D / T past the float range) holds zeros
            // and leaves m and z alone.
            block_max[r * nblocks + b] = bm;
            if (bm == -std::numeric_limits<acc>::infinity()) {
              std::fill(qr, qr + kb, acc(0));
              continue;
            }
            for (int64_t j = 0; j < kb; ++j) {
              qr[j] = std::exp(qr[j] - bm);
              sb += static_cast<double>(qr[j]);
            }
          }
          const acc base = bm;
          const acc nm = base > m[r] ? base : m[r];
          z[r] = z[r] * static_cast<double>(std::exp(m[r] - nm)) + sb * static_cast<double>(std::exp(base - nm));
          m[r] = nm;
        }
      }
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t i = r0 + r;
        acc* qr = q + i * kc;
        if (!dt.safe(xn2[r])) {  // float64 from the inputs' own values
          double mm = -std::numeric_limits<double>::infinity(), zz = 0.0;
          std::vector<double> sc(kc);
          for (int64_t j = 0; j < kc; ++j) {
            sc[j] = p.score(canonical_dist2(x + i * d, c + j * d, d));
            mm = sc[j] > mm ? sc[j] : mm;
          }
          for (int64_t j = 0; j < kc; ++j) zz += std::exp(sc[j] - mm);
          for (int64_t j = 0; j < kc; ++j) qr[j] = static_cast<acc>(std::exp(sc[j] - mm) / zz);
          continue;
        }
        for (int64_t b = 0, k0 = 0; k0 < kc; ++b, k0 += kb_max) {
          const int64_t kb = std::min(kb_max, kc - k0);
          const acc f = static_cast<acc>(static_cast<double>(std::exp(block_max[r * nblocks + b] - m[r])) / z[r]);
          for (int64_t j = 0; j < kb; ++j) qr[k0 + j] *= f;
        }
      }
    }
  });
}

template <typename scalar_t>
void soft_backward(const acc_t<scalar_t>* g, const acc_t<scalar_t>* q, const scalar_t* x, int64_t n,
                   int64_t d, const scalar_t* c, int64_t kc, const SoftParams& p, scalar_t* gx,
                   scalar_t* gc) {
  using acc = acc_t<scalar_t>;
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<acc>::value);
  const DistanceTiles<scalar_t> dt(c, kc, d);
  const int64_t tile_rows = tile_rows_for(kc), kb_max = std::min(kc, kTileCenterBlock);
  const int64_t tiles = (n + tile_rows - 1) / tile_rows;
  const acc* cs = dt.cs.template data_ptr<acc>();
  // r_i = sum_j G_ij q_ij, in double.
  std::vector<double> rsum(n);
  at::parallel_for(0, n, std::max<int64_t>(1, kParallelElems / kc), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      double s = 0.0;
      for (int64_t j = 0; j < kc; ++j) s += static_cast<double>(g[i * kc + j]) * static_cast<double>(q[i * kc + j]);
      rsum[i] = s;
    }
  });
  // W for rows [r0, r0 + nr) and centers [k0, k0 + kb) into w (nr, kb); 0 for the rows that
  // are not dt.safe (their expanded D may overflow): those take direct_w below.
  auto form_w = [&](const acc* xt, const acc* xn2, int64_t r0, int64_t nr, int64_t k0, int64_t kb, acc* w) {
    if (p.student_t) dt.block(xt, xn2, nr, k0, kb, w);
    for (int64_t r = 0; r < nr; ++r) {
      const int64_t i = r0 + r;
      if (!dt.safe(xn2[r])) {
        std::fill(w + r * kb, w + (r + 1) * kb, acc(0));
        continue;
      }
      for (int64_t j = 0; j < kb; ++j) {
        const int64_t e = i * kc + k0 + j;
        const double ds = static_cast<double>(q[e]) * (static_cast<double>(g[e]) - rsum[i]);
        w[r * kb + j] = static_cast<acc>(ds * static_cast<double>(p.slope(p.student_t ? w[r * kb + j] : acc(0))));
      }
    }
  };
  // W_ij in float64 from the inputs' own values (D by direct differences), for a row that is
  // not dt.safe: its float32 D overflows (or holds NaN/Inf), and W ~ 1 / D (Student-t) then
  // underflows float32 where the float64 reference's gradient, ~ W (x - c), is finite.
  auto direct_w = [&](int64_t i, int64_t j) {
    const int64_t e = i * kc + j;
    const double ds = static_cast<double>(q[e]) * (static_cast<double>(g[e]) - rsum[i]);
    return ds * p.slope(p.student_t ? canonical_dist2(x + i * d, c + j * d, d) : 0.0);
  };
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    c10::InferenceMode no_autograd;
    std::vector<acc> xt(tile_rows * d), xn2(tile_rows), w(tile_rows * kb_max), wc(tile_rows * d);
    std::vector<double> rw(tile_rows);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = t * tile_rows, nr = std::min(tile_rows, n - r0);
      dt.shift_rows(x + r0 * d, nr, xt.data(), xn2.data());
      std::vector<double> acc_wc(nr * d, 0.0);
      std::fill(rw.begin(), rw.begin() + nr, 0.0);
      for (int64_t k0 = 0; k0 < kc; k0 += kb_max) {
        const int64_t kb = std::min(kb_max, kc - k0);
        form_w(xt.data(), xn2.data(), r0, nr, k0, kb, w.data());
        for (int64_t r = 0; r < nr; ++r)
          for (int64_t j = 0; j < kb; ++j) rw[r] += static_cast<double>(w[r * kb + j]);
        if (d > 0) {
          Tensor out = at::from_blob(wc.data(), {nr, d}, opts);
          at::mm_out(out, at::from_blob(w.data(), {nr, kb}, opts), dt.cs.narrow(0, k0, kb));
          for (int64_t e = 0; e < nr * d; ++e) acc_wc[e] += static_cast<double>(wc[e]);
        }
      }
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t i = r0 + r;
        if (!dt.safe(xn2[r])) {  // grad_x_i = 2 sum_j W_ij (x_i - c_j), all in float64
          std::vector<double> acc_gx(d, 0.0);
          for (int64_t j = 0; j < kc; ++j) {
            const double w_ij = direct_w(i, j);
            for (int64_t l = 0; l < d; ++l)
              acc_gx[l] += w_ij * (static_cast<double>(x[i * d + l]) - static_cast<double>(c[j * d + l]));
          }
          for (int64_t l = 0; l < d; ++l) gx[i * d + l] = static_cast<scalar_t>(2.0 * acc_gx[l]);
          continue;
        }
        for (int64_t j = 0; j < d; ++j)
          gx[i * d + j] = static_cast<scalar_t>(
              2.0 * (rw[r] * static_cast<double>(xt[r * d + j]) - acc_wc[r * d + j]));
      }
    }
  });
  if (gc == nullptr) return;
  // Narrow blocks of centers, so that K = 256 still gives every thread work; each block
  // visits all rows (for Student-t its GEMM columns sum to one full distance GEMM).
  const int64_t gb = std::min<int64_t>(kc, 32);
  const int64_t blocks = (kc + gb - 1) / gb;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    c10::InferenceMode no_autograd;
    std::vector<acc> xt(tile_rows * d), xn2(tile_rows), w(tile_rows * gb), wx(gb * d);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t k0 = b * gb, kb = std::min(gb, kc - k0);
      // direct: sum over the rows that are not dt.safe of W_ij (c_j - x_i), in float64
      std::vector<double> sx(kb * d, 0.0), cw(kb, 0.0), direct(kb * d, 0.0);
      for (int64_t t = 0; t < tiles; ++t) {  // rows in index order: deterministic
        const int64_t r0 = t * tile_rows, nr = std::min(tile_rows, n - r0);
        dt.shift_rows(x + r0 * d, nr, xt.data(), xn2.data());
        form_w(xt.data(), xn2.data(), r0, nr, k0, kb, w.data());
        for (int64_t r = 0; r < nr; ++r) {
          if (!dt.safe(xn2[r])) {
            const int64_t i = r0 + r;
            for (int64_t j = 0; j < kb; ++j) {
              const double w_ij = direct_w(i, k0 + j);
              for (int64_t l = 0; l < d; ++l)
                direct[j * d + l] += w_ij * (static_cast<double>(c[(k0 + j) * d + l]) -
                                             static_cast<double>(x[i * d + l]));
            }
            // its x' may be Inf, and its W of 0 would make the GEMM's 0 * Inf NaN
            std::fill(xt.begin() + r * d, xt.begin() + (r + 1) * d, acc(0));
            continue;
          }
          for (int64_t j = 0; j < kb; ++j) cw[j] += static_cast<double>(w[r * kb + j]);
        }
        if (d > 0) {
          Tensor out = at::from_blob(wx.data(), {kb, d}, opts);
          at::mm_out(out, at::from_blob(w.data(), {nr, kb}, opts).t(), at::from_blob(xt.data(), {nr, d}, opts));
          for (int64_t e = 0; e < kb * d; ++e) sx[e] += static_cast<double>(wx[e]);
        }
      }
      // cw = 0 where no row was dt.safe, and then c' may be Inf (every row is unsafe when a
      // center's c' overflows): 0 * Inf would be NaN.
      for (int64_t j = 0; j < kb; ++j)
        for (int64_t l = 0; l < d; ++l) {
          const double safe_part = cw[j] == 0.0 ? -sx[j * d + l]
                                                : cw[j] * static_cast<double>(cs[(k0 + j) * d + l]) - sx[j * d + l];
          gc[(k0 + j) * d + l] = static_cast<scalar_t>(2.0 * (safe_part + direct[j * d + l]));
        }
    }
  });
}

Tensor soft_assign_native(const Tensor& x_in, const Tensor& centers_in, c10::string_view kind,
                          double alpha, double temperature) {
  check_features("x", x_in);
  check_centers("centers", centers_in, "x", x_in);
  const SoftParams p = parse(std::string_view(kind.data(), kind.size()), alpha, temperature);
  const Tensor x = x_in.contiguous(), centers = centers_in.contiguous();
  Tensor q = at::empty({x.size(0), centers.size(0)}, x.options().dtype(out_dtype(x)));
  if (x.size(0) == 0) return q;
  KMGAN_DISPATCH_FLOATING(x.scalar_type(), "soft_assign_native", [&] {
    soft_forward(x.data_ptr<scalar_t>(), x.size(0), x.size(1), centers.data_ptr<scalar_t>(),
                 centers.size(0), p, q.data_ptr<acc_t<scalar_t>>());
  });
  return q;
}

std::tuple<Tensor, Tensor> soft_assign_backward_native(const Tensor& grad_q, const Tensor& q_in,
                                                       const Tensor& x_in, const Tensor& centers_in,
                                                       c10::string_view kind, double alpha,
                                                       double temperature, bool centers_grad) {
  check_features("x", x_in);
  check_centers("centers", centers_in, "x", x_in);
  const SoftParams p = parse(std::string_view(kind.data(), kind.size()), alpha, temperature);
  const int64_t n = x_in.size(0), kc = centers_in.size(0);
  for (const auto& [name, t] : {std::pair<const char*, const Tensor&>{"grad_q", grad_q}, {"q", q_in}}) {
    check_cpu(name, t);
    TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == n && t.size(1) == kc, name, " must have shape (",
                      n, ", ", kc, "), got ", t.sizes());
    TORCH_CHECK_TYPE(t.is_floating_point(), name, " must be floating, got ", t.scalar_type());
  }
  const Tensor x = x_in.contiguous(), centers = centers_in.contiguous();
  Tensor gx = at::empty_like(x);
  Tensor gc = centers_grad ? at::empty_like(centers) : at::empty({0}, centers.options());
  if (n == 0) {
    if (centers_grad) gc.zero_();
    return {gx, gc};
  }
  const auto acc_type = out_dtype(x);
  const Tensor g = grad_q.to(acc_type).contiguous(), q = q_in.to(acc_type).contiguous();
  KMGAN_DISPATCH_FLOATING(x.scalar_type(), "soft_assign_backward_native", [&] {
    using acc = acc_t<scalar_t>;
    soft_backward<scalar_t>(g.data_ptr<acc>(), q.data_ptr<acc>(), x.data_ptr<scalar_t>(), n, x.size(1),
                            centers.data_ptr<scalar_t>(), kc, p, gx.data_ptr<scalar_t>(),
                            centers_grad ? gc.data_ptr<scalar_t>() : nullptr);
  });
  return {gx, gc};
}

}  // namespace

TORCH_LIBRARY_IMPL(kmgan_ext, CPU, m) {
  m.impl("soft_assign_native", &soft_assign_native);
  m.impl("soft_assign_backward_native", &soft_assign_backward_native);
}

}  // namespace cpu
}  // namespace kmgan_ext
